"""The answers of the HTTP API's services: one handler ``answer_NAME(app,
request)`` per route of rrc/web/routes.py, which declares each one's facts
(methods, state, token, streaming); the router (rrc/web/app.py) and the
access checks read those, so a handler checks only its own fields.

Submission (``rrc.submission``: inputs, projects, the notifier check, the queue) is imported
by the handlers that change something: a CGI read loads none of it (each
module costs a CGI request about 0.3 ms, see docs/BENCHMARKS.md)."""

from ..errors import HTTPError
from ..names import DIGITS, check_task_id
from ..procs import KILL_GRACE_SECONDS
from ..schema import Field
from ..services import find_service, load_services
from ..states import list_tasks, queue_is_full
from ..store import format_record, to_json
from .access import check_host
from .request import MAX_WAIT_SECONDS, Response, check_field


def answer_page(app, request):
    """``GET /`` from a browser: the page, under a name this server knows; it
    needs no token (routes.PAGE), so it is a shell without task data, which
    the page asks the API for with the token (rrc/web/page.py, www/).
    Under another name the page's own requests would be refused: the browser
    says so at once, naming allowHosts."""
    check_host(request, app.config)
    from .page import html_page  # here: its hashing (the CSP) is the page's alone, never a CGI read's
    return html_page()


def answer_meta(app, request):
    """``service=meta``: what this node offers."""
    services, _ = load_services(app.store.root)
    return answer_record(app.node.meta(services), request.format)


def answer_kill(app, request):
    """``service=kill&id=ID``: stop a task (a GET works too, as in 0.019); a
    job: its running step is killed and the steps after it cancelled; a step:
    killed here or at its server, and its job fails."""
    task_id, by = _form_task_id(request), f'{request.client} (HTTP)'
    record = app.store.read_task(task_id)
    if record.get(Field.STEPS) is not None or record.get(Field.JOB):
        from ..pipeline import kill_job_or_step
        # The server asks a step's server on its own behalf: HOST.token only.
        record = kill_job_or_step(app.store, app.config, record, by)
    else:
        from ..control import kill_task
        record = kill_task(app.store, task_id, by=by)
    return answer_record(client_view(record, request.client), request.format)


def _answer_control(app, request, control):
    """A task's record after ``control`` (suspend, resume, pause, cancel, stop) moved it for this client."""
    record = control(app.store, _form_task_id(request), by=f'{request.client} (HTTP)')
    return answer_record(client_view(record, request.client), request.format)


def answer_suspend(app, request):
    """``service=suspend&id=ID``: stop a running task's tool until it is resumed."""
    from ..control import suspend_task
    return _answer_control(app, request, suspend_task)


def answer_resume(app, request):
    """``service=resume&id=ID``: continue a suspended task."""
    from ..control import resume_task
    return _answer_control(app, request, resume_task)


def answer_pause(app, request):
    """``service=pause&id=ID``: pause a print (``suspend`` of a print does the same)."""
    from ..control import pause_task
    return _answer_control(app, request, pause_task)


def answer_cancel(app, request):
    """``service=cancel&id=ID``: cancel a print: its cancel G-code, then failed ``cancelled``."""
    from ..control import cancel_task
    return _answer_control(app, request, cancel_task)


def answer_stop(app, request):
    """``service=stop&id=ID``: emergency stop of a print (M112 at once)."""
    from ..control import stop_task
    return _answer_control(app, request, stop_task)


def answer_events(app, request):
    """``service=events&id=ID``: the task's live events (Server-Sent Events).
    Its module is imported by this route alone."""
    from .sse import answer_events as stream_events
    return stream_events(app, request, _form_task_id(request))


def answer_move(app, request):
    """``service=move&id=ID&to=front|back``: reorder a queued task (rrc/order.py)."""
    from ..backends import move_waiting_task
    record = move_waiting_task(app.store, app.config, _form_task_id(request), request.form.get('to', ''),
                               by=f'{request.client} (HTTP)')
    return answer_record(client_view(record, request.client), request.format)


def answer_remove(app, request):
    """``service=remove&id=ID``: remove an ended task of this node and its own
    files (a job with its steps); a live task is refused (400), an unknown one 404."""
    from ..cleanup import remove_ended_task
    task_id = _form_task_id(request)
    removed = remove_ended_task(app.store, task_id)
    return answer_record({Field.ID: task_id, 'removed': ','.join(removed)}, request.format)


def answer_clean(app, request):
    """``service=clean&olderThan=DAYS``: remove this node's tasks that ended
    more than DAYS days ago; answers their ids and how many."""
    from ..cleanup import clean_ended_tasks
    if 'olderThan' not in request.form:
        raise HTTPError(400, 'missing olderThan (days)')
    removed = clean_ended_tasks(app.store, request.form['olderThan'])
    return answer_record({'removed': ','.join(removed), 'count': str(len(removed))}, request.format)


def answer_history(app, request):
    """``service=history[&since=DAYS]``: per service and per printer, what the
    tasks that ended (in the last DAYS days) did; a read, from the history
    file that outlives the tasks' records (rrc/ledger.py)."""
    from ..ledger import history_report, report_blocks
    report = history_report(app.store, request.form.get('since'))
    if request.format == 'json':
        return Response(to_json(report, sort_keys=True) + '\n', 200, 'application/json')
    return Response('\n'.join(format_record(block) for block in report_blocks(report)))


def answer_printers(app, request):
    """``service=printers``: every named printer (``printers/NAME.conf``): its
    port, state, current task and temperatures; a read (rrc/printerlist.py)."""
    from ..printerlist import list_printers
    printers = list_printers(app.store, farm=app.config.backend == 'rq')
    if request.format == 'json':
        return Response(to_json(printers, sort_keys=True) + '\n', 200, 'application/json')
    return Response('\n'.join(format_record(printer) for printer in printers))


def answer_submit(app, request):
    """``POST service=NAME ...``: start a task; held until it ends for a 0.019
    client or ``wait=S``."""
    hold = post_wait_seconds(app.config, request)  # before the task starts: a bad wait starts nothing
    record = submit_from_form(app.store, app.config, request)
    if hold:  # counted with the long-polls: held answers never take every thread
        record = held_wait(app, request, record[Field.ID], hold)
    return answer_record(record, request.format)


def _form_task_id(request):
    if 'id' not in request.form:
        raise HTTPError(400, 'missing id')
    return check_task_id(request.form['id'])


def answer_record(record, fmt):
    """One record as ``key: value`` lines or a JSON object."""
    if fmt == 'json':
        return Response(to_json(record, sort_keys=True) + '\n', 200, 'application/json')
    return Response(format_record(record))


def answer_info(app, request):
    """``service=info``: one task (optionally long-polled) or all of them."""
    if 'id' in request.form:
        task_id = _form_task_id(request)
        wait = _wait_seconds(request.form.get('wait', '0'))
        record = held_wait(app, request, task_id, wait) if wait else app.read_task(app.store, task_id)
        if record.get(Field.STEPS) is not None:
            record = job_info(app, record)
        return answer_record(client_view(record, request.client), request.format)
    records = [client_view(r, request.client) for r in list_tasks(app.store, app.config)]
    if request.format == 'json':
        return Response(to_json(records, sort_keys=True) + '\n', 200, 'application/json')
    return Response('\n'.join(format_record(r) for r in records))


def job_info(app, job):
    """A job as ``info`` shows it: moved on if its steps ended unseen, one line per step."""
    from ..pipeline import job_view, settle_job
    return job_view(app.store, settle_job(app.store, app.config, job))


def answer_pipe(app, request):
    """``POST service=pipe step1=SERVICE step1.fileIn0=... step2=SERVICE ...``:
    start a job of steps, each step's fields those of a task with ``stepN.``
    before them, plus ``stepN.server`` (a server of this node's list)."""
    hold = _wait_seconds(request.form['wait']) if 'wait' in request.form else 0
    steps = form_steps(app, request)
    if queue_is_full(app.store, app.config.maxQueued):
        raise HTTPError(503, f'the queue is full ({app.config.maxQueued} tasks wait)',
                        headers=[('Retry-After', '30')])
    from ..pipeline import submit_pipe
    # This server holds the job: its steps' servers get HOST.token only, never
    # the token this server's own clients present (app.config.token).
    job = submit_pipe(app.store, app.config, steps, app.config.server_token_for, client=request.client,
                      notifier=request.form.get('notifier', ''))
    if hold:
        job = held_wait(app, request, job[Field.ID], hold)
    return answer_record(job_info(app, job), request.format)


# The fields of one step of a pipe (after ``stepN.``); numbered ones end in digits.
STEP_FIELDS = ('fileIn', 'prearg', 'arg', 'param', 'nativeArgs', 'outExt', 'server')
PIPE_FIELDS = ('service', 'notifier', 'wait', 'format', 'token')


def form_steps(app, request):
    """The steps of a pipe's form, in order, as pipeline.StepSpec (checked by submit_pipe)."""
    from ..pipeline import StepSpec, step_service
    numbers = step_numbers(request)
    services, errors = load_services(app.store.root)
    steps, total_inputs = [], 0
    for number in numbers:
        part = StepForm(request, f'step{number}.')
        for key, value in part.form.items():
            if not key.startswith('fileIn'):
                check_field(f'step{number}.{key}', value, app.config)
        service = step_service(services, errors, number, request.form[f'step{number}'])
        inputs = form_inputs(part, service, required=False)
        total_inputs += len(inputs)
        native, params = form_arguments(part.form)
        steps.append(StepSpec(service, inputs, native, params, part.form.get('outExt', ''),
                              part.form.get('server', '')))
    if total_inputs > app.config.maxInputs:
        raise HTTPError(400, f'too many input files (at most {app.config.maxInputs})')
    return steps


def step_numbers(request):
    """1, 2, ... n from the ``stepN`` fields: numbered from 1 without gaps, and
    every other field a pipe's own or a step's."""
    numbers = []
    for key in list(request.form) + list(request.files):
        name, dot, field = key.partition('.')
        if key in PIPE_FIELDS:
            continue
        number = name[4:] if name.startswith('step') else ''
        if not number.isdigit() or len(number) > 3 or (dot and not field.startswith(STEP_FIELDS)):
            raise HTTPError(400, f'unknown field in a pipe: {key[:64]!r}')
        if not dot:
            numbers.append(int(number))
    numbers.sort()
    if not numbers:
        raise HTTPError(400, 'a pipe needs steps: step1=SERVICE, step2=SERVICE, ...')
    if numbers != list(range(1, len(numbers) + 1)):
        raise HTTPError(400, 'pipe steps are numbered step1, step2, ... without gaps')
    for key in list(request.form) + list(request.files):
        if '.' in key and int(key.partition('.')[0][4:]) not in numbers:
            raise HTTPError(400, f'{key[:64]!r} names no step')
    return numbers


class StepForm:
    """The fields of one step of a pipe's form, without their ``stepN.`` prefix."""

    def __init__(self, request, prefix):
        self.form = {k[len(prefix):]: v for k, v in request.form.items() if k.startswith(prefix)}
        self.files = {k[len(prefix):]: v for k, v in request.files.items() if k.startswith(prefix)}


def held_wait(app, request, task_id, wait):
    """Long-poll a task, unless ``maxWaits`` others already wait in this server
    or this client holds its share (``maxWaitsPerClient``): then the current
    record at once, so waits never hold every thread, nor one client all of them."""
    slots = app.wait_slots()
    from .slots import NoSlot  # loaded by wait_slots already
    try:
        slot = slots.take(request.client)
    except NoSlot:
        return app.read_task(app.store, task_id)
    with slot:
        from ..waits import wait_for_task
        return wait_for_task(app.store, task_id, timeout=wait, read=app.read_task)


def client_view(record, client):
    """A record as ``client`` may see it: another client's inputs show as file
    names only, without the store path a tool could use to reach them."""
    if record.get(Field.CLIENT) == client or not record.get(Field.IN):
        return record
    paths = record[Field.IN].split(',')
    view = dict(record, **{'in': ','.join(p.rsplit('/', 1)[-1] for p in paths)})
    if view.get(Field.CMD):
        for path in paths:
            view[Field.CMD] = view[Field.CMD].replace(path, path.rsplit('/', 1)[-1])
    return view


def _wait_seconds(text):
    try:
        wait = float(text)
    except ValueError:
        raise HTTPError(400, f'bad wait: {text[:32]!r}') from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise HTTPError(400, f'wait must be between 0 and {MAX_WAIT_SECONDS} seconds')
    return wait


# A POST held for a 0.019 client outlasts its task's timeout by the time the
# runner needs to stop the tool and record the end.
HOLD_GRACE_SECONDS = KILL_GRACE_SECONDS + 5


def post_wait_seconds(config, request):
    """How long a POST holds its answer for the task to end: ``wait=S``, or,
    when 0.019's ``in`` field is there, as long as the task may run.

    0.019's synchronous client reads the task once right after the POST and
    gives up unless it has ended (its CGI answered only then).
    """
    if 'wait' in request.form:
        return _wait_seconds(request.form['wait'])
    if 'in' in request.form or 'in' in request.files:
        return config.timeout + HOLD_GRACE_SECONDS
    return 0


def submit_from_form(store, config, request):
    """``POST service=NAME fileIn0.. prearg0.. nativeArgs arg0.. notifier notifierEvents``: start a task."""
    for key, value in request.form.items():
        if not key.startswith('fileIn'):
            check_field(key, value, config)
    priority = form_priority(request)
    cache = form_cache(request)
    services, errors = load_services(store.root)
    service = find_service(services, errors, request.form.get('service', ''))
    inputs = form_inputs(request, service)
    if len(inputs) > config.maxInputs:
        raise HTTPError(400, f'too many input files (at most {config.maxInputs})')
    if queue_is_full(store, config.maxQueued):
        raise HTTPError(503, f'the queue is full ({config.maxQueued} tasks wait)',
                        headers=[('Retry-After', '30')])
    native, params = form_arguments(request.form)
    from ..submission import submit_task
    return submit_task(store, config, service, inputs, native,
                       notifier=request.form.get('notifier', ''), client=request.client,
                       params=params, out_ext=request.form.get('outExt', ''),
                       notifier_events=request.form.get('notifierEvents', ''), priority=priority, cache=cache)


def form_cache(request):
    """``cache=no``: neither served from the result cache nor stored there;
    ``cache=yes`` (the default) or nothing: both."""
    value = request.form.get('cache', 'yes')
    if 'cache' in request.files or value not in ('yes', 'no'):
        raise HTTPError(400, 'cache is yes or no')
    return value == 'yes'


def form_priority(request):
    """``priority=N``: -100 to 100, 0 without the field (checked before anything is stored)."""
    if 'priority' in request.files:
        raise HTTPError(400, 'priority is a number, not a file')
    if 'priority' not in request.form:
        return 0
    from ..order import parse_priority
    return parse_priority(request.form['priority'])


def form_arguments(form):
    """(native arguments, params) of a task's fields: ``nativeArgs`` then
    ``arg0..N``; ``param0..N`` as (option, value) pairs."""
    numbered = sorted(form, key=_field_number)
    native = form.get('nativeArgs', '').split() + [form[k] for k in numbered if k.startswith('arg')]
    return native, [form_param(form[k]) for k in numbered if k.startswith('param')]


def form_param(text):
    """``paramN=OPTION VALUE`` (``-D size=20``) -> (option, value), checked by check_params."""
    option, sep, value = text.partition(' ')
    if not sep or not value:
        raise HTTPError(400, f'a param field is "OPTION VALUE", got {text[:64]!r}')
    return option, value


def _field_number(key):
    return int(''.join(c for c in key if c in DIGITS) or 0)


def form_inputs(request, service, required=True):
    """The ``fileInN`` fields in order: uploads or content strings, with their preargs."""
    names = sorted((k for k in list(request.form) + list(request.files) if k.startswith('fileIn')),
                   key=_field_number)
    for key in request.form:
        if key.startswith('prearg') and f'fileIn{key[6:]}' not in names:
            raise HTTPError(400, f'{key} without fileIn{key[6:]}')
    from ..submission import Input
    inputs = []
    for name in names:
        prearg = request.form.get(f'prearg{name[6:]}', '')
        if name in request.files:
            part = request.files[name]
            part.file.seek(0)
            inputs.append(Input(part.file, filename=part.filename or '', prearg=prearg))
        else:
            inputs.append(Input(request.form[name].encode('utf-8'), prearg=prearg))
    if not inputs and required:
        raise HTTPError(400, 'missing input: no fileIn0')
    return inputs
