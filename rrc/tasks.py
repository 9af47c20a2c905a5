"""Submitting tasks: inputs, records, the queue, dispatch to a free slot, kill and wait."""

import os
import sys
import time

from .config import Config
from .events import EventFollower, STATUS, progress_text, status_changed
from .errors import ConfigError, NotFound, UsageError, reason_without_paths
from .keyvalue import parse_key_value_text
from .names import check_task_id, is_extension
from .notifier import check_notifier_url, notifier_events_field
from .order import mark_placed, parse_priority, queue_order
from .procs import kill_process_group, process_start_time, spawn_runner
from .projects import is_project_name, unpack_project
from .schema import Field, TaskStatus
from .services import check_native_args, check_output_ext, check_params, check_prearg, compose_argv
from .states import (IllegalMove, State, get_task, initial_fields, may_move, move_locked, process_here,
                     state_of)
from .store import ORDER_FOLDER, append_log, mark, marked, to_json, unmark, write_file_atomically


class Input:
    """One input of a submission: bytes or an open file, plus the name it came with."""

    def __init__(self, data, filename='', prearg='', shown=''):
        self.data = data
        self.filename = filename
        self.prearg = prearg
        # How the user named it, for the tool's messages: a file's path, a
        # project's folder ('' or 'job/'), '' for content.
        self.shown = shown

    def extension(self, service):
        """The extension to keep (tools need it), from the filename or the service."""
        base = os.path.basename(self.filename or '')
        if '.' in base:
            ext = base.rsplit('.', 1)[1]
            if is_extension(ext):
                return ext
        return service.input_ext


def input_size(store, path):
    """Bytes of one stored input; a project counts all its files."""
    parts = path.split('/')
    if len(parts) > 3:
        folder = os.path.join(store.folder('in'), parts[2])
        return sum(os.path.getsize(os.path.join(top, name))
                   for top, _, names in os.walk(folder) for name in names)
    return os.path.getsize(store.path_of(path))


def store_input(store, service, item):
    """Copy one input into the store: a file, or a project archive unpacked."""
    if is_project_name(item.filename):
        return unpack_project(store, item.data)
    return store.add_input(item.data, item.extension(service))


def submit_task(store, config, service, inputs, native_args=(), notifier='', client='localhost', args='',
                params=(), out_ext='', notifier_events='', priority=0):
    """Validate, store inputs and record, queue the task and start what can start.

    ``params``: (option, value) pairs of ``paramArgs``; ``out_ext``: the
    output format asked for, one of ``outputExts`` ('' for the default);
    ``notifier_events``: when the notifier is called (``started,ended``; ''
    for the default, ended); ``priority``: its place in this node's queue,
    -100 to 100 (rrc/order.py).
    """
    priority = parse_priority(priority)
    record = create_task_record(store, config, service, inputs, native_args, notifier, client, args,
                                params, out_ext, notifier_events=notifier_events,
                                fields={Field.PRIORITY: priority} if priority else None)
    if priority:  # before its queue marker: dispatch reads the record of a marked task
        mark_placed(store, record[Field.ID])
    queue_task(store, record[Field.ID], task_settings(config, service.name))
    dispatch(store, config)
    return store.read_task(record[Field.ID])


def create_task_record(store, config, service, inputs, native_args=(), notifier='', client='localhost',
                       args='', params=(), out_ext='', state=State.QUEUED, fields=None, notifier_events=''):
    """Check a task, store its inputs and create its record in ``state``
    (queued, or waiting: a pipeline step whose main input comes later) with
    ``fields`` added; nothing is stored when a check fails."""
    for item in inputs:
        check_prearg(service, item.prearg)
    check_native_args(service, list(native_args))
    check_params(service, params)
    check_output_ext(service, out_ext)
    if not inputs and state != State.WAITING:
        raise UsageError('missing input: give at least one input file or content')
    if notifier:
        check_notifier_url(notifier)
    events = notifier_events_field(notifier, notifier_events)
    inputs = [filter_config_input(service, item) for item in inputs]
    stored = []
    try:
        for item in inputs:
            stored.append((item.prearg, store_input(store, service, item)))
            check_input_kind(service, *stored[-1])
        size_in = sum(input_size(store, path) for _, path in stored)
        record = store.create_task(lambda task_id: dict(_new_record(
            service, task_id, stored, native_args, notifier, client, args, size_in, params, out_ext, state),
            server=config.serverName, **{Field.NODE: store.node.name}, **events, **(fields or {})))
    except BaseException as exc:
        for _, path in stored:
            store.remove_input(path)
        if isinstance(exc, ValueError):  # a field that cannot be a record value
            raise UsageError(str(exc)) from None
        raise
    return status_changed(store, record)


def check_input_kind(service, prearg, path):
    """A main input (no prearg) of a service with ``inputExts`` must be of one of those kinds."""
    if not prearg and not service.accepts_input(path):
        raise UsageError(f'{service.name} takes {input_kinds(service)} files, '
                         f'not {os.path.basename(path).rpartition(".")[2]!r}')


def input_kinds(service):
    """The kinds of main input a service takes, for messages: ``.gcode, .gco, .g``."""
    return ', '.join(f'.{ext}' for ext in service.input_exts or [service.input_ext] if ext) or 'any'


def _new_record(service, task_id, stored, native_args, notifier, client, args, size_in, params, out_ext,
                state=State.QUEUED):
    record = {
        Field.SERVICE: service.name,
        **initial_fields(state),
        Field.CTIME: f'{time.time():.5f}',
        Field.CMD: shown_command(service, task_id, stored, native_args, params, out_ext),
        Field.IN: ','.join(path for _, path in stored),
        Field.OUT: '' if service.no_output else 'tasks/out/' + service.output_name(task_id, out_ext),
        Field.CLIENT: client,
        Field.SIZE_IN: size_in,
    }
    # What the runner composes the argv from (it never runs ``cmd``, which is
    # only shown): the checked native arguments and each input's prearg.
    if native_args:
        record[Field.NATIVE_ARGS] = ' '.join(native_args)
    if params:  # JSON: a value may hold spaces ("a label"), one line all the same
        record[Field.PARAMS] = to_json([list(pair) for pair in params])
    if out_ext:
        record[Field.OUT_EXT] = out_ext
    if any(prearg for prearg, _ in stored):
        record[Field.PREARGS] = ','.join(prearg for prearg, _ in stored)
    if notifier:
        record[Field.NOTIFIER] = notifier
    if args:
        record[Field.ARGS] = args
    return record


def record_params(record):
    """The (option, value) pairs of a record's ``params`` field; UsageError when it is not such a list."""
    if not record.get(Field.PARAMS):
        return []
    import json
    try:
        pairs = json.loads(record[Field.PARAMS])
    except ValueError:
        pairs = None
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) for w in p) for p in pairs):
        raise UsageError('its params are not a list of (option, value) pairs')
    return [tuple(pair) for pair in pairs]


def stored_inputs(record):
    """(prearg, store path) of each input of a record, in order ('' for no
    prearg); UsageError when the two lists do not match."""
    paths = [path for path in record.get(Field.IN, '').split(',') if path]
    preargs = record[Field.PREARGS].split(',') if record.get(Field.PREARGS) else [''] * len(paths)
    if len(preargs) != len(paths):
        raise UsageError('its inputs and preargs do not match')
    return list(zip(preargs, paths))


def shown_command(service, task_id, stored, native_args, params, out_ext):
    """The record's ``cmd``: the tool's command line as a shell would show it
    (only shown; the runner composes the argv anew)."""
    import shlex
    return shlex.join(compose_argv(service, task_id, stored, native_args, params, out_ext))


CONFIG_INPUT_MAX_BYTES = 1024 * 1024


def filter_config_input(service, item):
    """A config input (given with an argInput prefix, e.g. slic3r's --load=) of a
    service with ``configKeys``: only ``key = value`` lines of listed keys go on.

    A key not on the list is refused by name (``post_process`` runs a program,
    ``output_filename_format`` names a path); an empty value is dropped, as the
    tool would ignore it; comments and blank lines are dropped.
    """
    if not item.prearg or service.config_keys is None:
        return item
    data = item.data if isinstance(item.data, bytes) else item.data.read(CONFIG_INPUT_MAX_BYTES + 1)
    if len(data) > CONFIG_INPUT_MAX_BYTES:
        raise UsageError(f'{service.name} config is larger than {CONFIG_INPUT_MAX_BYTES} bytes')
    kept = [f'{key} = {value}\n' for key, value in config_pairs(service, data)]
    return Input(''.join(kept).encode('utf-8'), item.filename, item.prearg)


def config_pairs(service, data):
    """(key, value) of each setting of a config input, every key checked against the list."""
    pairs = []
    for number, line in enumerate(data.decode('utf-8', 'replace').splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(('#', ';')):
            continue
        key, sep, value = line.partition('=')
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f'{service.name} config line {number}: expected "key = value"')
        if not value:
            continue  # an unset key (exports write "post_process = ") sets nothing
        if key not in service.config_keys:
            raise UsageError(f'{service.name} config: key {key[:64]!r} is not allowed '
                             f'(not a print setting rrcloud passes on; it may name a program or path)')
        pairs.append((key, value))
    return pairs


# What a task's runner works with, fixed when the task is submitted: the
# rrcloudrc files may change or vanish before the task starts or while it runs.
# ``notifierSecret`` makes a marker a secret: markers are written 0600 (queue_task).
TASK_SETTINGS = ('timeout', 'maxTasks', 'sandbox', 'maxOutputSize', 'maxMemory', 'maxProcesses',
                 'maxLogSize', 'maxSuspend', 'notifierAllow', 'notifierSecret')
TASK_SETTINGS_MAX_BYTES = 4096


def task_settings(config, service=''):
    """The runner's settings of ``config`` as rrcloudrc lines (read back by task_config),
    the limits those of ``service``; ``notifierSecret`` only when one is set."""
    values = {'timeout': repr(config.timeout), 'maxTasks': str(config.maxTasks),
              'sandbox': 'yes' if config.sandbox else 'no', 'maxOutputSize': str(config.maxOutputSize),
              'maxMemory': str(config.limit_for(service, 'maxMemory')),
              'maxProcesses': str(config.limit_for(service, 'maxProcesses')),
              'maxLogSize': str(config.maxLogSize), 'maxSuspend': repr(config.maxSuspend),
              'notifierAllow': ', '.join(config.notifierAllow), 'notifierSecret': config.notifierSecret}
    return ''.join(f'{key} = {values[key]}\n' for key in TASK_SETTINGS
                   if values[key] or key != 'notifierSecret')


def task_config(text, store, allowed=TASK_SETTINGS):
    """The Config a runner works with: defaults, then the task's settings.

    They came through files and processes other than the runner's own, so
    they are checked as an rrcloudrc is, and only the ``allowed`` keys (the
    task settings; a forwarder's add its own) are taken.
    """
    if not text:
        raise ConfigError('its settings are missing')
    config = Config()
    config.dir = store.root
    for number, key, value in parse_key_value_text(text, 'settings'):
        if key not in allowed:
            raise ConfigError(f'settings:{number}: {key!r} is not a task setting')
        config._apply('settings', number, key, value, store.root)
    return config


# A queue marker may hold notifierSecret: readable by the store's user only
# (the server's, which also runs every runner; docs/SECURITY.md).
QUEUE_MARKER_MODE = 0o600


def queue_task(store, task_id, settings):
    """Queue a task: its marker in ``tasks/queue`` holds the settings it runs with."""
    write_file_atomically(os.path.join(store.folder('queue'), check_task_id(task_id)), settings.encode(),
                          mode=QUEUE_MARKER_MODE)


def queued_settings(store, task_id):
    """The settings in a task's queue marker ('' for a marker without any, or
    one another user wrote: markers are 0600, and a marker this dispatcher
    cannot read must not stop the queue; the task gets the dispatcher's settings)."""
    try:
        return read_settings(os.path.join(store.folder('queue'), check_task_id(task_id)))
    except PermissionError:
        return ''


def read_settings(path):
    """The settings in a marker (a queue marker, a waiting step's); '' when it is gone."""
    try:
        with open(path, 'rb') as handle:
            return handle.read(TASK_SETTINGS_MAX_BYTES).decode('utf-8', 'replace')
    except FileNotFoundError:
        return ''


def dispatch(store, config):
    """Start this node's queued tasks in queue order while a slot of ``maxTasks`` is free.

    The order (``order.queue_order``: a move to the front or back, then
    priority, then submission) is decided here, under the store lock, from
    the records.  A slot is taken first: while every slot is busy no record
    is read, so a node with a long queue pays one listing per submission.

    A slot is an flock on ``tasks/slots/NODE/N`` handed to the runner, so it
    frees itself when the runner ends however it ends; no resident process is
    needed (CGI).  Each node has its own slots: nodes sharing a store never
    take each other's.
    """
    store.ensure()
    with store.lock():
        markers = marked(store, 'queue')
        slot = acquire_slot(store, config.maxTasks) if markers else None
        if slot is None:
            return
        try:
            for task_id in queue_order(store, markers):
                if slot is None:
                    slot = acquire_slot(store, config.maxTasks)
                    if slot is None:
                        return
                if not _queued_here(store, task_id):
                    continue
                try:
                    _start_queued(store, config, task_id, slot)
                finally:
                    os.close(slot)
                    slot = None
        finally:
            if slot is not None:
                os.close(slot)


def _queued_here(store, task_id):
    """True for a queue marker of this node's task (or of no task: _start_queued removes it)."""
    try:
        return store.node.owns(store.read_task(task_id))
    except NotFound:
        return True


def slot_folder(store):
    """``tasks/slots/NODE``: this node's slot locks."""
    return os.path.join(store.folder('slots'), store.node.name)


def acquire_slot(store, max_tasks):
    """An fd holding the flock of one of this node's free slots, or None when all are taken."""
    import fcntl
    folder = slot_folder(store)
    os.makedirs(folder, exist_ok=True)
    for number in range(max_tasks):
        fd = os.open(os.path.join(folder, str(number)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


def _start_queued(store, config, task_id, slot_fd):
    """Spawn the runner of one queued task (called under the store lock).

    It runs with the settings its submission wrote into the queue marker; a
    marker without any (written by hand) gets the dispatcher's.
    """
    settings = queued_settings(store, task_id) or task_settings(config)
    if config.sandbox:  # a marker is a file in the store: it never turns this node's sandbox off
        settings += 'sandbox = yes\n'
    unmark(store, 'queue', task_id)
    unmark(store, ORDER_FOLDER, task_id)
    try:
        record = store.read_task(task_id)
        # A resume is not a dispatch: only a queued task leaves the queue.
        if not may_move(record, State.RUNNING, expect=State.QUEUED):  # False: it ended meanwhile (killed)
            return
    except NotFound:
        return
    except IllegalMove:  # a marker rrcloud did not write: never a second run
        print(f'rrcloud: refused a queue marker for task {task_id}, which is not queued', file=sys.stderr)
        return
    started = f'{time.time():.5f}'
    try:
        pid = spawn_runner(store, task_id, slot_fd, settings)
    except OSError as exc:  # the log and the record are the client's to read: no path of the server's
        reason = reason_without_paths(exc)
        append_log(store, task_id, f'rrcloud: task {task_id} cannot start: no runner: {reason}')
        move_locked(store, record, State.FAILED, {Field.STIME: started, Field.ETIME: started,
                                                  Field.ERROR: f'cannot start runner: {reason}'})
        return
    # The runner's pid means something only on this node and in this boot: the record says which.
    move_locked(store, record, State.RUNNING, {Field.STIME: started, Field.RUNNER: pid,
                                               Field.RUNNER_START: process_start_time(pid) or '',
                                               **store.node.fields()}, expect=State.QUEUED)
    mark(store, 'running', task_id)


def kill_task(store, task_id, by):
    """Stop a busy task: status failed, error killed; the tool's group gets SIGTERM.

    ``by`` says who asked (a client's address, the command line): the task's
    log keeps it, so a killed task's log tells why it ended.  Another node's
    task is killed through its record alone: its runner sees the final state
    and stops its tool (a pid means nothing outside its node).
    """
    store.read_task(task_id)  # NotFound before anything is created
    with store.lock():
        record = store.read_task(task_id)
        killed = mark_killed_locked(store, record)
        if killed is None:
            raise UsageError(f'task {task_id} is not running (status {record.get(Field.STATUS)})')
    stop_killed_tool(store, record, by)
    return killed


def mark_killed_locked(store, record):
    """The state part of a kill, under the store lock the caller holds: failed,
    ``killed``, out of the queue.  None when the task had ended."""
    killed = move_locked(store, record, State.FAILED, {Field.ERROR: 'killed', Field.ETIME: f'{time.time():.5f}'})
    if killed is not None:
        unmark(store, 'queue', record[Field.ID])
        unmark(store, ORDER_FOLDER, record[Field.ID])
    return killed


def stop_killed_tool(store, record, by):
    """The rest of a kill, after the lock: the log says who, the tool's group
    (when it runs on this node) gets SIGTERM."""
    task_id = record[Field.ID]
    append_log(store, task_id, f'rrcloud: task {task_id} killed by {by}')
    if process_here(store, record, Field.PID, Field.PID_START):
        import signal
        kill_process_group(int(record[Field.PID]), signal.SIGTERM)
        if state_of(record) == State.SUSPENDED:  # a stopped process acts on SIGTERM once continued
            kill_process_group(int(record[Field.PID]), signal.SIGCONT)


def suspend_task(store, task_id, by):
    """Stop a running task's tool (SIGSTOP to its group): state suspended, and
    the time it stays so does not count against its timeout."""
    return _pause_or_continue(store, task_id, State.SUSPENDED, by)


def resume_task(store, task_id, by):
    """Continue a suspended task's tool (SIGCONT): state running again."""
    return _pause_or_continue(store, task_id, State.RUNNING, by)


def _pause_or_continue(store, task_id, to, by):
    """Move a task between running and suspended and signal its tool; the
    move and the signal happen under the store lock, so a kill or the end of
    the task cannot come between them."""
    import signal
    verb, expect = ('suspend', State.RUNNING) if to == State.SUSPENDED else ('resume', State.SUSPENDED)
    store.read_task(task_id)  # NotFound before anything is locked
    with store.lock():
        record = store.read_task(task_id)
        current = state_of(record)
        if current != expect:
            raise UsageError(f'task {task_id} cannot {verb}: it is {current or record.get(Field.STATUS)}'
                             + (' (only a running task can)' if verb == 'suspend' else ''))
        if not process_here(store, record, Field.PID, Field.PID_START):
            raise UsageError(f'task {task_id} cannot {verb}: its tool is not running on this node '
                             f'(not started yet, or it runs on node {record.get(Field.NODE, "?")})')
        moved = move_locked(store, record, to, expect=expect)
        kill_process_group(int(record[Field.PID]), signal.SIGSTOP if to == State.SUSPENDED else signal.SIGCONT)
    append_log(store, task_id, f'rrcloud: task {task_id} {verb}{"ed" if verb == "suspend" else "d"} by {by}')
    return moved


# A runner that died writes no event, and a task of an older rrcloud writes
# none: the record itself is looked at (and reconciled) this often anyway.
WAIT_RECHECK_SECONDS = 1.0
# How often ``on_poll`` hears of a task that sends nothing (a terminal's
# progress line counts the seconds).
WAIT_POLL_SECONDS = 0.25


def wait_for_task(store, task_id, timeout=None, on_poll=None):
    """Block until the task leaves busy (or ``timeout``); returns its record.

    It wakes on the task's events (a status event: the record is read again;
    progress goes to ``on_poll`` as the record's ``progress``) instead of
    reading the record every few milliseconds.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    events = EventFollower(store, task_id, at_end=True)  # before the read: no event falls between
    while True:
        record = get_task(store, task_id)
        if record.get(Field.STATUS) != TaskStatus.BUSY:
            return record
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return record
        follow_until_status(events, record, min(now + WAIT_RECHECK_SECONDS, deadline or float('inf')), on_poll)


def follow_until_status(events, record, until, on_poll):
    """Follow a busy task's events until a status event or ``until``; ``on_poll``
    sees ``record`` with the newest progress event's ``DONE/TOTAL``."""
    while True:
        if on_poll:
            on_poll(record)
        left = until - time.monotonic()
        if left <= 0:
            return
        news = events.wait(min(left, WAIT_POLL_SECONDS) if on_poll else left)
        progress = progress_text(news)
        if progress:
            record = dict(record, progress=progress)
        if any(event.kind == STATUS for event in news):
            return
