"""A front-end's side of a farm's work (``backend = rq``): what it tells and
takes from the workers that run its tasks.

A worker has no store: it claims a task (the front-end moves it to running
under the worker's name and answers what it runs with), fetches the task's
inputs, sends its log and progress as they come (each answer tells it
whether the task was killed or suspended meanwhile), and hands back how it
ended with its result.  The front-end's store stays the one truth: the
state machine moves the task, the pipeline moves its job on, the notifier
is called from here.  A run is numbered (``attempt``): after a lost worker
RQ runs the task again, and whatever the lost run still says is refused.

A worker's task is alive while its worker talks: every update touches the
task's running marker.  One silent for ``LOST_SECONDS`` is asked about in
Redis (``reconcile_farm_task``): RQ ran it again, or it failed ``worker lost``.
"""

import os
import time

from .errors import NotFound, RRCloudError, UsageError
from .events import NOTE, PROGRESS, append_event
from .identity import is_node_name
from .schema import YES, Field, TaskStatus
from .states import State, move_locked, state_of
from .store import ORDER_FOLDER, append_log, unmark

# A worker's task whose worker said nothing for this long is asked about in Redis.
LOST_SECONDS = 10.0
# The kinds of events a worker's runner wrote that the front-end's log takes.
FORWARDED_EVENTS = (PROGRESS, NOTE)


class StaleRun(RRCloudError):
    """A run of a task that is not the task's current one (409): its worker stops."""
    http_status = 409


def claim(store, task_id, worker, attempt):
    """A worker takes a task: queued (or running under an earlier attempt,
    RQ runs it again) -> running under the worker's name.  Returns the
    record and the settings it runs with (its queue marker's)."""
    from .queue import QUEUE_MARKER_MODE, queued_settings
    from .settings import read_settings
    from .store import write_file_atomically
    if not is_node_name(worker):
        raise UsageError('a worker is named by 1 to 64 letters, digits or ._-')
    running = os.path.join(store.folder('running'), task_id)
    # A task claimed again (its worker was lost) runs with what its first run did.
    settings = queued_settings(store, task_id) or read_settings(running)
    with store.lock():
        record = store.read_task(task_id)
        lost = record.get(Field.WORKER)
        moved = _claim_locked(store, record, worker, attempt)
        # The running marker keeps the settings (0600: they may hold a secret);
        # its age is how long the worker has been silent.
        write_file_atomically(running, settings.encode(), mode=QUEUE_MARKER_MODE)
    for folder in ('queue', ORDER_FOLDER):
        unmark(store, folder, task_id)
    if lost:
        append_log(store, task_id, f'rrcloud: task {task_id} runs again on worker {worker} (run {attempt}): '
                                   f'worker {lost} was lost')
    return moved, worker_settings(settings)


# What a worker's runner needs of a task's settings; the notifier's (its
# secret above all) stay with the front-end, which calls it.
WORKER_SETTINGS = ('timeout', 'sandbox', 'maxOutputSize', 'maxMemory', 'maxProcesses', 'maxLogSize', 'maxSuspend')


def worker_settings(settings):
    """The lines of a task's settings a worker gets."""
    from .keyvalue import parse_key_value_text
    return ''.join(f'{key} = {value}\n' for _, key, value in parse_key_value_text(settings, 'settings')
                   if key in WORKER_SETTINGS)


def _claim_locked(store, record, worker, attempt):
    fields = {Field.NODE: worker, Field.WORKER: worker, Field.ATTEMPT: attempt}
    state = state_of(record)
    if state == State.QUEUED:
        return move_locked(store, record, State.RUNNING, dict(fields, **{Field.STIME: f'{time.time():.5f}'}),
                           expect=State.QUEUED)
    if state in (State.RUNNING, State.SUSPENDED) and int(record.get(Field.ATTEMPT) or 0) < attempt:
        record.update({key: str(value) for key, value in fields.items()})
        store.write_task(record)
        return record
    raise StaleRun(f'task {record[Field.ID]} is not there to take (it is {state})')


def current_run(store, task_id, attempt):
    """The record of a task whose current run is ``attempt``; StaleRun otherwise."""
    record = store.read_task(task_id)
    if record.get(Field.STATUS) != TaskStatus.BUSY or int(record.get(Field.ATTEMPT) or 0) != attempt:
        raise StaleRun(f'run {attempt} of task {task_id} is not its current one')
    return record


def input_file(store, record, path):
    """The file of one of a task's inputs (``tasks/in/NAME``, or a file in its
    project folder), for its worker; NotFound for anything else."""
    tops = {'/'.join(p.split('/')[:3]) for p in record.get(Field.IN, '').split(',') if p}
    parts = path.split('/')
    if '/'.join(parts[:3]) not in tops or '..' in parts or '' in parts:
        raise NotFound(f'{path[:80]!r} is not an input of task {record[Field.ID]}')
    full = store.path_of(path)
    if not os.path.isfile(full) or os.path.islink(full):
        raise NotFound(f'{path[:80]!r} is not an input of task {record[Field.ID]}')
    return full


def input_files(store, record):
    """Every file of a task's inputs, as ``tasks/in/...`` paths (a project: all its files)."""
    found = []
    for path in (p for p in record.get(Field.IN, '').split(',') if p):
        parts = path.split('/')
        top = store.path_of('/'.join(parts[:3]))
        if len(parts) > 3 and os.path.isdir(top):
            found += [os.path.relpath(os.path.join(folder, name), store.root)
                      for folder, _, names in os.walk(top) for name in names]
        else:
            found.append(path)
    return sorted(set(found))


def take_update(store, task_id, attempt, log_bytes, events):
    """A worker's news of a running task: its log's new bytes and its new
    progress and notes.  The record as it is now (a kill, a suspension)."""
    record = current_run(store, task_id, attempt)
    if log_bytes:
        with open(store.log_path(task_id), 'ab') as log:
            log.write(log_bytes)
    for kind, data in events:
        if kind in FORWARDED_EVENTS:
            append_event(store, task_id, kind, data)
    os.utime(os.path.join(store.folder('running'), task_id))  # it is alive
    return record


def parse_events(text):
    """(kind, data) of each JSON line of a worker's events (bounded by the field's length)."""
    import json
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get('data'), dict):
            events.append((str(event.get('kind', '')), event['data']))
    return events


def finish(store, config, task_id, attempt, status, fields, result):
    """A worker's word on how a task ended, with its result (a file object or
    None): the result stored, the task moved to its final state, the job moved
    on, the notifier called.  The final record."""
    from .states import finish_task
    record = current_run(store, task_id, attempt)
    if status == TaskStatus.COMPLETE and result is not None and record.get(Field.OUT):
        store_result(store, record, result)
    final = finish_task(store, task_id, status, **fields) or store.read_task(task_id)
    ended(store, config, final)
    return final


# What a worker may say of how a task ended.
ENDING_FIELDS = (Field.ERROR, Field.EXIT_CODE, Field.PROGRESS)


def ending_fields(ending):
    """The fields of a task's end a worker sent (others are ignored), each one line."""
    from .names import is_single_line
    return {key: str(ending[key])[:1000] for key in ENDING_FIELDS
            if ending.get(key) not in (None, '') and is_single_line(str(ending[key]))}


def store_result(store, record, result):
    """The result a worker sent, written where the record says (atomically)."""
    from .store import write_file_atomically
    write_file_atomically(store.path_of(record[Field.OUT]), result.read())
    store.update_task(record[Field.ID], {Field.SIZE_OUT: os.path.getsize(store.path_of(record[Field.OUT]))})


def ended(store, config, final):
    """After a worker's task ended: its marker goes, its job moves on, the notifier is called."""
    from .notifier import TaskNotifier
    unmark(store, 'running', final[Field.ID])
    if final.get(Field.JOB):
        from .pipeline import after_step
        after_step(store, config, final)
    TaskNotifier(store, config, final).ended(final)


def control_fields(record):
    """What a worker's runner must know of its task now: killed (ended), or suspended."""
    return {Field.STATUS: record.get(Field.STATUS, ''), Field.SUSPENDED: record.get(Field.SUSPENDED, '')}


def is_farm_task(record):
    """True for a task a worker runs."""
    return bool(record.get(Field.WORKER)) and record.get(Field.STATUS) == TaskStatus.BUSY


def silent_for(store, record, now=None):
    """Seconds since the worker of a task last said something about it."""
    try:
        touched = os.path.getmtime(os.path.join(store.folder('running'), record[Field.ID]))
    except OSError:
        return float('inf')
    return (now or time.time()) - touched


def reconcile_farm_task(store, config, record):
    """A worker's task whose worker fell silent: RQ runs it again (it stays
    running until a worker claims it), or it fails ``worker lost`` (a print
    always: it runs at most once).  The record as it is then."""
    if not is_farm_task(record) or silent_for(store, record) < LOST_SECONDS:
        return record
    from .farmqueue import FarmQueue
    if FarmQueue(store, config).job_alive(record):
        return record
    from .states import finish_task
    final = finish_task(store, record[Field.ID], TaskStatus.FAILED, error='worker lost')
    if final is None:
        return store.read_task(record[Field.ID])
    ended(store, config, final)
    return final


def suspended_yes(record):
    """True when the record says the task is suspended."""
    return record.get(Field.SUSPENDED) == YES
