"""The WSGI application: routes and their answers."""

import os
import sys
import time

from .. import VERSION_STRING
from ..errors import DISK_FULL_ERRORS, HTTPError, RRCloudError
from ..names import DIGITS, check_task_id
from ..procs import KILL_GRACE_SECONDS, format_uptime, system_uptime
from ..services import find_service, load_services
from ..states import count_tasks, get_task, list_tasks, still_running
from ..store import format_record, marked, to_json
from ..tasks import Input, kill_task, submit_task, wait_for_task
from .access import check_access
from .context import _APP_CONTEXT, app_context
from .files import serve_log, serve_result
from .page import html_page
from .request import MAX_WAIT_SECONDS, Request, Response, STATUS_LINES, check_field


def meta_record(store, config, services, started=None):
    """What this machine offers: the spec's meta fields plus load for schedulers.

    ``uptime`` counts from ``started`` (when the serving process started), or,
    without a server (``rrcloud meta`` on the command line), from boot.
    """
    running = [t for t in marked(store, 'running') if still_running(store, t)]
    tasks = count_tasks(store)
    return {
        'busy': str(len(running)),
        'cpuLoad': f'{os.getloadavg()[0]:.2f}',
        'maxDataRetention': f'{config.maxDataRetention:g}',
        'maxTasks': str(config.maxTasks),
        'queued': str(len(marked(store, 'queue'))),
        'sandbox': 'bwrap' if config.sandbox else 'off',
        'serverName': config.serverName,
        'services': ','.join(sorted(services)),
        'tasks': str(tasks),
        'timeout': f'{config.timeout:g}',
        'uptime': format_uptime(time.time() - started if started else system_uptime()),
        'version': VERSION_STRING,
    }


def application(environ, start_response):
    """The WSGI application: the whole HTTP API of rrcloud."""
    request = None
    try:
        request = Request(environ)
        check_access(request, app_context()[0])
        response = route(request)
    except RRCloudError as exc:
        status = getattr(exc, 'http_status', 500)
        response = error_response(status, str(exc), request.format if request else 'text')
        response.headers += getattr(exc, 'headers', [])
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRORS:
            raise
        response = error_response(507, f'the server cannot store this: {exc.strerror}',
                                  request.format if request else 'text')
    except Exception as exc:  # one line to the client, never a traceback
        print(f'rrcloud: internal error: {exc!r}', file=environ.get('wsgi.errors', sys.stderr))
        response = error_response(500, 'internal error', request.format if request else 'text')
    start_response(STATUS_LINES.get(response.status, f'{response.status} Error'), response.headers)
    if hasattr(response.body, 'read'):
        wrapper = environ.get('wsgi.file_wrapper')
        return wrapper(response.body, 65536) if wrapper else iter(lambda: response.body.read(65536), b'')
    return [response.body]


def error_response(status, message, fmt):
    """An error answer: status code plus a one-line reason in the asked format."""
    message = ' '.join(message.split())
    if fmt == 'json':
        return Response(to_json({'error': message}), status, 'application/json')
    return Response(f'error: {message}\n', status)


def route(request):
    """Dispatch by path and method."""
    if request.path.startswith('/tasks/out/'):
        return serve_result(request, request.path[len('/tasks/out/'):])
    if request.path.startswith('/tasks/log/'):
        return serve_log(request, request.path[len('/tasks/log/'):])
    if request.path not in ('/', '/index.cgi'):
        raise HTTPError(404, 'not found')
    if request.method == 'OPTIONS':
        return Response(b'', 204, headers=[('Access-Control-Allow-Methods', 'GET, POST, OPTIONS'),
                                           ('Access-Control-Allow-Headers', 'Content-Type')])
    if request.method == 'POST':
        if not request.parsed:
            request.read_form(app_context()[0])
    elif request.method not in ('GET', 'HEAD'):
        raise HTTPError(405, f'method {request.method} not allowed')
    return route_service(request)


def route_service(request):
    """``service=`` decides: info, meta, kill, or a task to start."""
    config, store = app_context()
    service = request.form.get('service', '')
    if service == 'info' or (not service and request.method != 'POST'):
        if not service and request.browser and 'format' not in request.form:
            return html_page(store, config, request)
        return answer_info(store, config, request)
    if service == 'meta':
        services, _ = load_services(store.root)
        return answer_record(meta_record(store, config, services, _APP_CONTEXT.get('started')),
                             request.format)
    if service == 'kill':
        record = kill_task(store, _form_task_id(request), by=f'{request.client} (HTTP)')
        return answer_record(client_view(record, request.client), request.format)
    if request.method != 'POST':
        raise HTTPError(405, f'a task of {service!r} is started with POST')
    hold = post_wait_seconds(config, request)  # before the task starts: a bad wait starts nothing
    record = submit_from_form(store, config, request)
    if hold:  # counted with the long-polls: held answers never take every thread
        record = held_wait(store, config, record['id'], hold)
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


def answer_info(store, config, request):
    """``service=info``: one task (optionally long-polled) or all of them."""
    if 'id' in request.form:
        task_id = _form_task_id(request)
        wait = _wait_seconds(request.form.get('wait', '0'))
        record = held_wait(store, config, task_id, wait) if wait else get_task(store, task_id)
        return answer_record(client_view(record, request.client), request.format)
    records = [client_view(r, request.client) for r in list_tasks(store, config)]
    if request.format == 'json':
        return Response(to_json(records, sort_keys=True) + '\n', 200, 'application/json')
    return Response('\n'.join(format_record(r) for r in records))


def held_wait(store, config, task_id, wait):
    """Long-poll a task, unless ``maxWaits`` others already wait in this server:
    then the current record at once, so waits never hold every thread."""
    slots = wait_slots(config)
    if not slots.acquire(blocking=False):
        return get_task(store, task_id)
    try:
        return wait_for_task(store, task_id, timeout=wait)
    finally:
        slots.release()


def wait_slots(config):
    """The semaphore counting this process's long-polls (one per server process)."""
    if 'waits' not in _APP_CONTEXT:
        import threading
        _APP_CONTEXT.setdefault('waits', threading.BoundedSemaphore(config.maxWaits))
    return _APP_CONTEXT['waits']


def client_view(record, client):
    """A record as ``client`` may see it: another client's inputs show as file
    names only, without the store path a tool could use to reach them."""
    if record.get('client') == client or not record.get('in'):
        return record
    paths = record['in'].split(',')
    view = dict(record, **{'in': ','.join(p.rsplit('/', 1)[-1] for p in paths)})
    if view.get('cmd'):
        for path in paths:
            view['cmd'] = view['cmd'].replace(path, path.rsplit('/', 1)[-1])
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
    """``POST service=NAME fileIn0.. prearg0.. nativeArgs arg0.. notifier``: start a task."""
    for key, value in request.form.items():
        if not key.startswith('fileIn'):
            check_field(key, value, config)
    services, errors = load_services(store.root)
    service = find_service(services, errors, request.form.get('service', ''))
    inputs = form_inputs(request, service)
    if len(inputs) > config.maxInputs:
        raise HTTPError(400, f'too many input files (at most {config.maxInputs})')
    if len(marked(store, 'queue')) >= config.maxQueued:
        raise HTTPError(503, f'the queue is full ({config.maxQueued} tasks wait)',
                        headers=[('Retry-After', '30')])
    native = request.form.get('nativeArgs', '').split()
    native += [request.form[k] for k in sorted(request.form, key=_field_number) if k.startswith('arg')]
    params = [form_param(request.form[k])
              for k in sorted(request.form, key=_field_number) if k.startswith('param')]
    return submit_task(store, config, service, inputs, native,
                       notifier=request.form.get('notifier', ''), client=request.client,
                       params=params, out_ext=request.form.get('outExt', ''))


def form_param(text):
    """``paramN=OPTION VALUE`` (``-D size=20``) -> (option, value), checked by check_params."""
    option, sep, value = text.partition(' ')
    if not sep or not value:
        raise HTTPError(400, f'a param field is "OPTION VALUE", got {text[:64]!r}')
    return option, value


def _field_number(key):
    return int(''.join(c for c in key if c in DIGITS) or 0)


def form_inputs(request, service):
    """The ``fileInN`` fields in order: uploads or content strings, with their preargs."""
    names = sorted((k for k in list(request.form) + list(request.files) if k.startswith('fileIn')),
                   key=_field_number)
    for key in request.form:
        if key.startswith('prearg') and f'fileIn{key[6:]}' not in names:
            raise HTTPError(400, f'{key} without fileIn{key[6:]}')
    inputs = []
    for name in names:
        prearg = request.form.get(f'prearg{name[6:]}', '')
        if name in request.files:
            part = request.files[name]
            part.file.seek(0)
            inputs.append(Input(part.file, filename=part.filename or '', prearg=prearg))
        else:
            inputs.append(Input(request.form[name].encode('utf-8'), prearg=prearg))
    if not inputs:
        raise HTTPError(400, 'missing input: no fileIn0')
    return inputs
