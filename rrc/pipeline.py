"""Pipelines: a job of steps, each step a task, the output of one the main input of the next.

A job is a record of its own (``service: pipe``, ``steps: ID1,ID2,...``);
each step is an ordinary task whose record names its job and its place
(``job``, ``step``).  Every step is created at submission, ``waiting``, with
its own inputs (a slicer's config) stored and checked; nothing waits in a
process.  When a step ends, whoever saw it end (its runner, the forwarder of
a remote step, or ``settle_job`` after a crash) moves the job on:

- complete: the next step gets the output as its main input and is queued
  here, or forwarded to its server (``rrc.forward``); after the last step the
  job completes with the last step's result;
- failed: the job fails with the reason ("step 1 (openscad) failed: exit
  code 1") and the steps after it are cancelled.

A step runs on another server only when that server is in this node's
configuration (``servers`` or ``SERVICE.servers``): a request names a server,
the node sends to its own entry for it.  Whoever holds the job chooses the
token its steps' servers get, and says so with ``token_for``: a server its
``Config.server_token_for`` (``HOST.token`` only: never the token its own
clients present), a client (``rrcloud pipe`` holding the job here) its
``Config.client_token_for``.  A waiting step's runner settings (and, for a
remote step, that token) wait in ``tasks/waiting/ID``, readable by the
server's user only, until the step ends: everything said about the step to
its server later (follow, fetch, kill, by a forwarder, the web or the
command line) sends that token and no other (``step_token_for``).
"""

import os
import time

from .errors import ConfigError, NotFound, UsageError
from .projects import is_project_name
from .schema import GCODE_FIELDS, JOB_SERVICE, Field, TaskStatus
from .states import FINAL, State, initial_fields, move_locked, move_task, process_here, state_of
from .store import append_log, unlink_quietly, write_file_atomically


# Settings a forwarder runs with: a runner's, plus what it needs to reach its server.
FORWARD_SETTINGS = ('reconnectTimeout', 'maxResultSize', 'token')
WAITING_FOLDER = 'waiting'


class StepSpec:
    """One step as asked for: its service and arguments, its own inputs (for
    a step after the first, only inputs with a prearg: its main input is the
    step before's output), and the server it should run on ('' here)."""

    def __init__(self, service, inputs=(), native=(), params=(), out_ext='', server=''):
        self.service, self.inputs, self.native = service, list(inputs), list(native)
        self.params, self.out_ext, self.server = list(params), out_ext, server

    def shown(self):
        """How the job's ``cmd`` names this step: ``slic3r`` or ``printrun@pi.local``."""
        return self.service.name + (f'@{self.server}' if self.server else '')


# -- checks ---------------------------------------------------------------------------------------

def step_service(services, errors, number, name):
    """The service of step ``number``; a pipe is no step's service."""
    from .services import find_service
    if name == JOB_SERVICE:
        raise UsageError(f'step {number} (pipe): a pipe cannot contain a pipe')
    return find_service(services, errors, name)


def check_steps(store, config, steps, also_allowed=()):
    """Every check that needs no network: count, services, inputs, a print's
    printer (``printers/NAME.conf`` of ``store``), the chain of formats,
    servers in this node's list (or ``also_allowed``: the ones a user named on
    the command line).  UsageError (400 / exit 2) naming the step."""
    if not steps:
        raise UsageError('a pipe needs at least one step')
    if len(steps) > config.maxSteps:
        raise UsageError(f'a pipe has at most {config.maxSteps} steps (maxSteps), not {len(steps)}')
    for number, step in enumerate(steps, 1):
        where = f'step {number} ({step.service.name})'
        if number == 1 and not step.inputs:
            raise UsageError(f'{where}: the first step needs an input')
        if number > 1 and any(not item.prearg for item in step.inputs):
            raise UsageError(f'{where} takes its input from step {number - 1}: give it only '
                             f'inputs with a prefix such as --load=')
        check_arguments(store, where, step)
        if number < len(steps):
            check_chain(where, step, steps[number], number)
        step.server = configured_server(config, step.server, where, also_allowed)
        if step.server and any(is_project_name(item.filename) for item in step.inputs):
            raise UsageError(f'{where}: a project (a folder of files) cannot be sent on to a server; '
                             f'send the pipe to that server instead')


def check_arguments(store, where, step):
    """A step's own arguments, as a task's are checked (again when its record is made)."""
    from .services import check_native_args, check_output_ext, check_params, check_prearg
    try:
        for item in step.inputs:
            check_prearg(step.service, item.prearg)
        check_native_args(step.service, step_native_words(store, step))
        check_params(step.service, step.params)
        check_output_ext(step.service, step.out_ext)
    except (UsageError, ConfigError) as exc:
        raise exc.__class__(f'{where}: {exc}') from None


def step_native_words(store, step):
    """A step's native words as its task runs with them: a print that names
    its printer (``printrun mk3``) on that printer's port, as a direct print
    (``submission.create_task_record`` resolves it again into the record's
    ``printer``); an unknown printer or a bad conf is an error now."""
    from .printers import names_a_printer, resolve_printer
    if not names_a_printer(step.service, step.native):
        return step.native
    if step.server:  # this node's printers/ says nothing of another server's
        raise UsageError(f'a printer\'s name ({step.native[0]}) is looked up by the server that holds the job, '
                         f'not passed on to {step.server}: give the port there, or send the whole pipe to it')
    return resolve_printer(store.root, step.service, step.native)[0]


def check_chain(where, step, following, number):
    """A step that hands its output on must have one, of a kind the next step takes."""
    if step.service.no_output:
        raise UsageError(f'{where} has no output for step {number + 1} ({following.service.name})')
    ext = output_ext(step)
    if not following.service.accepts_input(f'output.{ext}'):
        from .submission import input_kinds
        raise UsageError(f'step {number + 1} ({following.service.name}) takes {input_kinds(following.service)} '
                         f'files, not the .{ext} output of {where}')


def output_ext(step):
    """The extension of a step's output: the format asked for, or its service's default."""
    name = step.service.output_name('x', step.out_ext)
    return name.rpartition('.')[2] if '.' in name else ''


def configured_server(config, name, where, also_allowed=()):
    """The URL of this node's entry for server ``name`` ('' for none); UsageError
    when no entry of its ``servers`` lists names it: a node never sends a step
    to a host only the request names."""
    if not name:
        return ''
    from .remote import server_url
    wanted = server_url(name, config.port)
    listed = config.servers + [s for servers in config.service_servers.values() for s in servers]
    for entry in listed + list(also_allowed):
        if server_url(entry, config.port) == wanted:
            return wanted
    raise UsageError(f'{where}: server {name!r} is not in this node\'s servers list')


def check_remote_steps(store, steps, token_for):
    """Ask each step's server, once, whether it answers, offers the step's
    service and is not this node itself (a step sent to itself would loop)."""
    from .remote import CONNECT_TIMEOUT, STEP_CHECK_TIMEOUT, http_session, parse_answer
    session = http_session(token_for)
    from .identity import instance_id
    me = instance_id(store.node, store.root)
    for number, step in enumerate(steps, 1):
        if not step.server:
            continue
        where = f'step {number} ({step.service.name})'
        try:
            answer = session.get(step.server, params={'service': 'meta'}, timeout=(CONNECT_TIMEOUT, STEP_CHECK_TIMEOUT))
        except OSError as exc:  # requests' errors are OSErrors
            raise UsageError(f'{where}: server {step.server} does not answer ({exc.__class__.__name__})') from None
        meta = parse_answer(answer)
        if answer.status_code != 200:
            raise UsageError(f'{where}: server {step.server} refused this node (HTTP {answer.status_code}: '
                             f'{meta.get("error") or "see its allow and token"})')
        if meta.get('instance') == me:
            raise UsageError(f'{where}: server {step.server} is this node itself (a loop)')
        if step.service.name not in meta.get('services', '').split(','):
            raise UsageError(f'{where}: server {step.server} does not offer {step.service.name}')


# -- submission -----------------------------------------------------------------------------------

def submit_pipe(store, config, steps, token_for, client='localhost', notifier='', args='', also_allowed=()):
    """Check a pipe, create its job and every step (waiting), start the first;
    returns the job's record.  Nothing is created when a check fails.
    ``token_for`` chooses the token each step's server gets (module docstring)."""
    from .backends import task_queue
    check_steps(store, config, steps, also_allowed)
    if any(step.server for step in steps):
        check_remote_steps(store, steps, token_for)
    task_queue(store, config).check()  # a farm's Redis down: refused before anything is written
    job = create_job(store, config, steps, client, args)
    created = []
    try:
        for number, step in enumerate(steps, 1):
            settings = step_settings(config, step, token_for)
            created.append(create_step(store, config, job, number, step, notifier, client, settings))
    except BaseException:
        for record in created + [job]:
            unlink_quietly(waiting_marker(store, record[Field.ID]))
            store.remove_task(record)
        raise
    job = store.update_task(job[Field.ID], {Field.STEPS: ','.join(r[Field.ID] for r in created)})
    start_step(store, config, created[0][Field.ID])
    chain_steps(store, config, created)  # after the first: a job depending on one RQ lacks would run at once
    return store.read_task(job[Field.ID])


def chain_steps(store, config, steps):
    """Each step that runs here waits on the one before in the node's queue
    (a farm's: an RQ job depending on the step before; ``backend = local``:
    nothing, the step is queued when the one before ends)."""
    from .backends import task_queue
    queue = task_queue(store, config)
    for before, step in zip(steps, steps[1:]):
        if not step.get(Field.STEP_SERVER) and not before.get(Field.STEP_SERVER):
            queue.wait_on(step, before[Field.ID])


def create_job(store, config, steps, client, args):
    """The job's record: running from the start (its steps say what runs)."""
    from .events import status_changed
    now = f'{time.time():.5f}'
    record = {Field.SERVICE: JOB_SERVICE, **initial_fields(State.RUNNING), Field.CTIME: now, Field.STIME: now,
              Field.CMD: ' | '.join(step.shown() for step in steps), Field.CLIENT: client,
              Field.OUT: '', Field.STEPS: '', Field.SERVER: config.serverName, Field.NODE: store.node.name}
    if args:
        record[Field.ARGS] = args
    return status_changed(store, store.create_task(lambda task_id: record))


def create_step(store, config, job, number, step, notifier, client, settings):
    """One step's record, waiting, and its ``settings`` in ``tasks/waiting/ID``."""
    from .submission import create_task_record
    fields = {Field.JOB: job[Field.ID], Field.STEP: number}
    if step.server:
        fields[Field.STEP_SERVER] = step.server
    record = create_task_record(store, config, step.service, step.inputs, step.native, notifier, client,
                                params=step.params, out_ext=step.out_ext, state=State.WAITING, fields=fields)
    write_file_atomically(waiting_marker(store, record[Field.ID]), settings.encode(), mode=0o600)
    return record


def step_settings(config, step, token_for):
    """A step's settings: a runner's (the limits of its service), and for a
    step on another server its forwarder's too."""
    from .settings import task_settings
    return task_settings(config, step.service.name) + (
        forward_settings(config, step.server, token_for) if step.server else '')


def forward_settings(config, url, token_for):
    """What a forwarder needs beyond a runner's settings: how long to wait for
    a lost server, the most it takes of the step's result (``maxResultSize``)
    and the token ``token_for`` chose for that server (its forwarder sends
    that one and no other: ``forward.forwarder_config``)."""
    token = token_for(url)
    return (f'reconnectTimeout = {config.reconnectTimeout!r}\nmaxResultSize = {config.maxResultSize}\n'
            + (f'token = {token}\n' if token else ''))


def waiting_marker(store, task_id):
    from .names import check_task_id
    return os.path.join(store.folder(WAITING_FOLDER), check_task_id(task_id))


def waiting_settings(store, task_id):
    """A waiting step's settings ('' when its marker is gone: cancelled, or ended)."""
    from .settings import read_settings
    return read_settings(waiting_marker(store, task_id))


def step_token_for(store, step_id):
    """``token_for`` of everything said to a step's server about the step
    (follow, fetch, kill), whoever says it: the token chosen for that server
    when the pipe was submitted, in the step's marker (kept until the step
    ends), '' without one.  So the command line on a server machine, which
    reads the server's own rrcloudrc, never sends the server's ``token``."""
    from .keyvalue import parse_key_value_text
    pairs = parse_key_value_text(waiting_settings(store, step_id), 'settings')
    token = next((value for _, key, value in pairs if key == 'token'), '')
    return lambda url: token


# -- moving a job on ------------------------------------------------------------------------------

def start_step(store, config, step_id, previous=None, inline=False):
    """Give a waiting step its main input (``previous``'s output: the step
    before) and start it: queued here, or sent to its server by a forwarder.
    With ``inline`` the caller is that forwarder (the runner of the step
    before, once it has tidied up): the step's id is returned; otherwise a
    new forwarder process is started.  The input is handed on once, under
    the store lock (``inputFrom`` names the step it came from), whoever else
    tries at the same time."""
    record = store.read_task(step_id)
    if state_of(record) != State.WAITING:
        return None  # cancelled, or another process started it first
    changes = {}
    if previous is not None and not record.get(Field.INPUT_FROM):
        changes = with_main_input(store, record, previous)
    if not record.get(Field.STEP_SERVER):
        return queue_waiting_step(store, config, step_id, changes)
    if changes and not hand_input_on(store, step_id, changes):
        return None
    if inline:
        return step_id
    from .procs import spawn_internal
    spawn_internal(store, '_forward', step_id)
    return None


def with_main_input(store, record, previous):
    """A step's record fields once ``previous``'s output, copied into the
    store's inputs, is its first input."""
    from .services import find_service, load_services
    from .submission import input_size, shown_command
    from .records import record_native, record_params, stored_inputs
    main_input = previous.get(Field.OUT, '')
    ext = main_input.rpartition('.')[2] if '.' in os.path.basename(main_input) else ''
    with open(store.path_of(main_input), 'rb') as handle:
        path = store.add_input(handle, ext)
    stored = [('', path)] + stored_inputs(record)
    service = find_service(*load_services(store.root), record[Field.SERVICE])
    changes = {Field.IN: ','.join(p for _, p in stored), Field.INPUT_FROM: previous[Field.ID],
               Field.SIZE_IN: sum(input_size(store, p) for _, p in stored),
               Field.CMD: shown_command(service, record[Field.ID], stored, record_native(record),
                                        record_params(record), record.get(Field.OUT_EXT, ''))}
    if any(prearg for prearg, _ in stored):
        changes[Field.PREARGS] = ','.join(prearg for prearg, _ in stored)
    # The handed-on file is named after the step before's own (cube.scad -> cube.stl -> cube.gcode).
    from .inputnames import client_names, download_name, input_names_field
    handed_on = download_name(previous, os.path.basename(main_input))
    changes.update(input_names_field([handed_on] + [name for _, name in client_names(record)]))
    return changes


def takes_input_locked(store, current, changes):
    """True when a waiting step may take ``changes`` (its main input, or none);
    otherwise the copy made for it is removed.  Under the store lock."""
    if state_of(current) == State.WAITING and not (changes and current.get(Field.INPUT_FROM)):
        return True
    if changes:
        store.remove_input(changes[Field.IN].split(',')[0])
    return False


def hand_input_on(store, step_id, changes):
    """A step for another server gets its main input (its forwarder sends it)."""
    with store.lock():
        current = store.read_task(step_id)
        if not takes_input_locked(store, current, changes):
            return False
        store.write_task(dict(current, **{key: str(value) for key, value in changes.items()}))
        return True


def queue_waiting_step(store, config, step_id, changes):
    """A local step: waiting -> queued with its settings in the queue, then
    taken by the node's queue (its slots, or a farm's Redis)."""
    from .backends import task_queue
    from .queue import queue_task
    from .settings import task_settings
    settings = waiting_settings(store, step_id) or task_settings(config)
    with store.lock():
        current = store.read_task(step_id)
        if not takes_input_locked(store, current, changes):
            return None
        queue_task(store, step_id, settings)
        move_locked(store, current, State.QUEUED, changes, expect=State.WAITING)
    unlink_quietly(waiting_marker(store, step_id))
    task_queue(store, config).take(step_id)
    return None


def after_step(store, config, step, inline=False):
    """A step ended: start the next, or end the job.  Called by whoever saw it
    end; safe to call twice (every move is checked under the store lock).
    Returns the id of a next step this caller must forward (``inline``), or None."""
    if not step.get(Field.JOB) or state_of(step) not in FINAL:
        return
    unlink_quietly(waiting_marker(store, step[Field.ID]))
    try:
        job = store.read_task(step[Field.JOB])
    except NotFound:
        return
    steps = job_steps(job)
    number = int(step.get(Field.STEP) or 0)
    if state_of(step) == State.FAILED:
        reason = f'step {number} ({step.get(Field.SERVICE)}) failed: {step.get(Field.ERROR) or "failed"}'
        return fail_job(store, job, reason, step.get(Field.EXIT_CODE, ''))
    keep_gcode_fields(store, job, step)
    if number < len(steps):
        return start_step(store, config, steps[number], previous=step, inline=inline)
    complete_job(store, job, step)


def keep_gcode_fields(store, job, step):
    """A step that made or printed G-code: its job's record shows what the
    file says of the print too (``Field.GCODE_*``, the last such step's)."""
    fields = {key: step[key] for key in GCODE_FIELDS if step.get(key)}
    if fields:
        store.update_task(job[Field.ID], fields)
        job.update(fields)


def next_step_runs_elsewhere(store, step):
    """True when the step after ``step`` runs on another server (its runner
    will send it there)."""
    try:
        following = job_steps(store.read_task(step[Field.JOB]))[int(step.get(Field.STEP) or 0):]
        return bool(following and store.read_task(following[0]).get(Field.STEP_SERVER))
    except (NotFound, ValueError):
        return False


def job_steps(job):
    return [step_id for step_id in job.get(Field.STEPS, '').split(',') if step_id]


def complete_job(store, job, last):
    """The last step completed: so did the job, with its result."""
    changes = {Field.OUT: last.get(Field.OUT, ''), Field.ETIME: f'{time.time():.5f}', Field.EXIT_CODE: 0}
    if last.get(Field.SIZE_OUT):
        changes[Field.SIZE_OUT] = last[Field.SIZE_OUT]
    move_task(store, job[Field.ID], State.COMPLETE, changes)


def fail_job(store, job, reason, exit_code=''):
    """The job fails with ``reason`` (the first reason wins) and its waiting steps are cancelled."""
    changes = {Field.ERROR: reason, Field.ETIME: f'{time.time():.5f}'}
    if str(exit_code).lstrip('-').isdigit():
        changes[Field.EXIT_CODE] = exit_code
    if state_of(store.read_task(job[Field.ID])) in FINAL:
        return  # killed, or failed by another step's end first: that reason stays
    # The steps first: a watcher of the job's events stops at the job's final status.
    cancel_waiting_steps(store, job, f'cancelled: {reason}')
    move_task(store, job[Field.ID], State.FAILED, changes)


def cancel_waiting_steps(store, job, reason):
    """Fail every waiting step of a job.  A forwarder that is sending one reads
    its record before each try, and one whose upload got through kills it at
    its server when it finds the step ended (``forward.hand_over``)."""
    with store.lock():
        for step_id in job_steps(job):
            step = read_or_none(store, step_id)
            if step and state_of(step) == State.WAITING:
                cancel_locked(store, step, reason)


def forwarder_alive(store, step):
    """True while a forwarder process works on this step (it ends the step itself)."""
    return process_here(store, step, Field.RUNNER, Field.RUNNER_START)


def kill_job(store, config, job_id, by):
    """Kill a job: its running step is killed (here or at its server, asked
    with the step's own token: ``step_token_for``), the steps after it are cancelled,
    then the job fails ``killed``; finished steps keep their results.  All of it is one move under the store lock,
    the job last, so a watcher of the job's events sees every step end
    before the job does, and the killed step's runner finds the job ended
    (nothing to move on)."""
    from .control import mark_killed_locked
    store.read_task(job_id)  # NotFound before anything is locked
    with store.lock():
        job = store.read_task(job_id)
        if state_of(job) in FINAL:
            raise UsageError(f'task {job_id} is not running (status {job.get(Field.STATUS)})')
        steps = [step for step in (read_or_none(store, step_id) for step_id in job_steps(job)) if step]
        running = [step for step in steps if step.get(Field.STATUS) == TaskStatus.BUSY
                   and state_of(step) != State.WAITING]
        tokens = {step[Field.ID]: step_token_for(store, step[Field.ID]) for step in running}
        killed = [step for step in running if mark_killed_locked(store, step)]
        for step in steps:
            if state_of(step) == State.WAITING:
                cancel_locked(store, step, 'cancelled: the job was killed')
        append_log(store, job_id, f'rrcloud: job {job_id} killed by {by}')
        job = mark_killed_locked(store, job)
    for step in killed:
        stop_killed_step(store, step, by, tokens[step[Field.ID]])
    return job


def read_or_none(store, task_id):
    try:
        return store.read_task(task_id)
    except NotFound:
        return None


def cancel_locked(store, step, reason):
    """A waiting step that will never run (under the store lock)."""
    move_locked(store, step, State.FAILED, {Field.ERROR: reason, Field.ETIME: f'{time.time():.5f}'})
    unlink_quietly(waiting_marker(store, step[Field.ID]))


def stop_killed_step(store, step, by, token_for):
    """After a killed step's record says so: stop its tool, here or at its
    server (asked with its own token: ``token_for`` from ``step_token_for``)."""
    from .errors import RRCloudError
    from .events import note
    from .control import stop_killed_tool
    if not step.get(Field.REMOTE_ID):
        return stop_killed_tool(store, step, by)
    from .remote import kill_remote
    try:
        kill_remote(store, step, token_for)
    except RRCloudError as exc:
        note(store, step[Field.ID], f'the job was killed; its server did not kill this step: {exc}')


def kill_job_or_step(store, config, record, by):
    """``kill`` of a job's record or of one of its steps' records."""
    if record.get(Field.JOB):
        return kill_step(store, config, record[Field.ID], by)
    return kill_job(store, config, record[Field.ID], by)


def kill_step(store, config, step_id, by):
    """Kill one step of a job (``kill STEP``): here or at its server; its job
    fails with the reason and the steps after it are cancelled."""
    from .control import mark_killed_locked
    with store.lock():
        step = store.read_task(step_id)
        token_for = step_token_for(store, step_id)  # before its marker goes
        killed = mark_killed_locked(store, step)
        if killed is None:
            raise UsageError(f'task {step_id} is not running (status {step.get(Field.STATUS)})')
    unlink_quietly(waiting_marker(store, step_id))
    if state_of(step) != State.WAITING:
        stop_killed_step(store, step, by, token_for)
    after_step(store, config, killed)
    return killed


# A step that ended this long ago while the next one still waits, or a job
# this old without its steps, was left by a process that died: whoever
# looks (recovery, ``info``) moves it on.  Until then its own process may
# still be about to (a runner calls the notifier before it forwards).
STALLED_SECONDS = 30.0


def settle_job(store, config, job, now=None):
    """Move a busy job on from what its steps' records say, when the process
    that should have is gone (a crash, a restart).  Returns the job's record.

    A step ended unseen moves the job on; a waiting step whose step before
    ended ``STALLED_SECONDS`` ago starts; a step a dead forwarder had claimed
    is failed, never sent again (it may have reached its server: a print
    must not run twice); a step a dead forwarder was following is followed
    again; a job that never got its steps fails.
    """
    if state_of(job) in FINAL or job.get(Field.SERVICE) != JOB_SERVICE or not store.node.owns(job):
        return job
    now = now or time.time()
    steps = job_steps(job)
    if not steps and stalled(job, now):
        fail_job(store, job, 'interrupted before its steps were created')
    before = job
    for step_id in steps:
        step = read_or_none(store, step_id)
        if step is None:
            fail_job(store, job, f'step {step_id} is gone')
            break
        if state_of(step) == State.COMPLETE:
            before = step
            continue
        settle_step(store, config, job, step, before, now)
        break
    else:
        if steps:
            complete_job(store, job, before)
    return store.read_task(job[Field.ID])


def settle_step(store, config, job, step, before, now):
    """settle_job for the first step that has not completed."""
    state = state_of(step)
    if state == State.FAILED:
        after_step(store, config, step)
    elif state == State.WAITING and not forwarder_alive(store, step) and stalled(before, now):
        if step.get(Field.RUNNER):  # claimed by a forwarder that died: maybe sent
            after_step(store, config, fail_step(store, step[Field.ID], 'interrupted while being sent to its server; '
                                                                        'not sent again'))
        else:
            start_step(store, config, step[Field.ID], previous=before if before is not job else None)
    elif step.get(Field.REMOTE_ID) and step.get(Field.STEP_SERVER) and not forwarder_alive(store, step):
        from .procs import spawn_internal
        spawn_internal(store, '_forward', step[Field.ID])


def fail_step(store, step_id, reason):
    """The step failed here (unless it had ended already); its record."""
    return (move_task(store, step_id, State.FAILED, {Field.ERROR: reason, Field.ETIME: f'{time.time():.5f}'})
            or store.read_task(step_id))


def stalled(record, now):
    """True when ``record`` (a step that ended, or a job) is older than STALLED_SECONDS."""
    return now - float(record.get(Field.ETIME) or record.get(Field.CTIME) or 0) > STALLED_SECONDS


def settle_jobs(store, config, records):
    """settle_job for every busy job among ``records``, and cancel a waiting
    step whose job has ended or is gone (recovery)."""
    now = time.time()
    for record in records:
        if record.get(Field.STATUS) != TaskStatus.BUSY or not store.node.owns(record):
            continue
        if record.get(Field.SERVICE) == JOB_SERVICE:
            settle_job(store, config, record, now)
        elif state_of(record) == State.WAITING and record.get(Field.JOB) and stalled(record, now):
            job = read_or_none(store, record[Field.JOB])
            if job is None or state_of(job) in FINAL:
                with store.lock():
                    cancel_locked(store, store.read_task(record[Field.ID]), 'cancelled: its job has ended')


def job_view(store, job):
    """A job's record as ``info`` shows it: one ``stepN`` line per step,
    ``ID SERVICE STATE`` (and the server it runs on)."""
    view = dict(job)
    for number, step_id in enumerate(job_steps(job), 1):
        try:
            step = store.read_task(step_id)
        except NotFound:
            view[f'step{number}'] = f'{step_id} ? gone'
            continue
        where = f' {step[Field.STEP_SERVER]}' if step.get(Field.STEP_SERVER) else ''
        view[f'step{number}'] = f'{step_id} {step.get(Field.SERVICE)} {state_of(step)}{where}'
    return view
