"""A front-end's side of a farm's work (``backend = rq``): what it tells and
takes from the workers that run its tasks.

A worker has no store: it claims a task (the front-end moves it to running
and names the worker in it, ``worker``), fetches the task's inputs, sends
its log and progress as they come (each answer tells it whether the task
was killed or suspended meanwhile), and hands back how it ended with its
result.  The front-end's store stays the one truth: the state machine moves
the task, the pipeline moves its job on, the notifier is called from here.

A run is numbered by the front-end (``attempt``): after a lost worker RQ
runs the task again, the front-end gives that claim the next number only
when the lost run has been silent for ``LOST_SECONDS`` (and never for a
task that runs once, a print), and whatever the lost run still says is
refused.  A worker's task is alive while its worker talks: every update
touches the task's running marker.  ``sweep`` (recovery's minute, and every
few seconds in ``rrcloud serve``) asks Redis about the silent ones: RQ ran
it again, or it failed ``worker lost``; and ends the ones a kill ended.
"""

import os
import sys
import time

from .errors import NotFound, RRCloudError, UsageError
from .events import NOTE, PROGRESS, append_event, checked_progress
from .identity import is_node_name
from .schema import YES, Field, TaskStatus
from .states import State, move_locked, state_of
from .store import ORDER_FOLDER, append_log, is_marked, unmark

# A worker's task whose worker said nothing for this long is asked about in
# Redis (a worker says something every half second while it runs a task).
LOST_SECONDS = 5.0
# A worker's task heard from this recently runs: a second claim of it is refused.
ALIVE_SECONDS = 2.0
# The kinds of events a worker's runner wrote that the front-end's log takes.
FORWARDED_EVENTS = (PROGRESS, NOTE)
# What a worker's runner needs of a task's settings; the notifier's (its
# secret above all) stay with the front-end, which calls it.
WORKER_SETTINGS = ('timeout', 'sandbox', 'maxOutputSize', 'maxMemory', 'maxProcesses', 'maxLogSize', 'maxSuspend')


class StaleRun(RRCloudError):
    """A run of a task that is not the task's current one (409): its worker stops."""
    http_status = 409


class NotYet(RRCloudError):
    """A claim of a task whose worker fell silent but is not judged lost yet
    (503): the worker asks again (a refusal would end its job for good)."""
    http_status = 503


class BrokenRecord(RRCloudError):
    """A task whose record is torn (422): no worker can run it, RQ moves its
    job aside (failed), the record is left for its owner to look at."""
    http_status = 422


def running_marker(store, task_id):
    return os.path.join(store.folder('running'), task_id)


def claim(store, config, task_id, worker, tool_versions=''):
    """A worker takes a task: queued (run 1), or running under a lost worker
    (the next run); the same worker asking again (its answer was lost) gets
    the same run.  Returns what its worker is told of the record, and the
    settings its runner needs.

    ``tool_versions`` (``SERVICE=VERSION,...``, the worker's): a queued task
    whose key with its worker's version hits the result cache is complete
    from it here, and the worker is told it is not there to take (StaleRun:
    it runs nothing); else the key goes into the record, and the result the
    worker hands back into the cache."""
    from .queue import queued_settings
    from .settings import read_settings
    from .farmqueue import FarmQueue
    if not is_node_name(worker):
        raise UsageError('a worker is named by 1 to 64 letters, digits or ._-')
    # A task claimed again runs with what its first run did (the running marker keeps it).
    settings = queued_settings(store, task_id) or read_settings(running_marker(store, task_id))
    cached = claim_cache_fields(store, config, task_id, tool_versions)
    try:
        moved, lost = _claim_under_lock(store, config, task_id, worker, settings, cached)
    except StaleRun:  # e.g. killed while it waited: its place in the queue's order goes too
        FarmQueue(store, config).forget(store.read_task(task_id))
        raise
    if lost == worker:  # its own claim again: nothing new to say
        return for_its_worker(moved), worker_settings(settings)
    FarmQueue(store, config).forget(moved)  # its place in the queue's order is no longer needed
    if lost:
        append_log(store, task_id, f'rrcloud: task {task_id} runs again on worker {worker} '
                                   f'(run {moved[Field.ATTEMPT]}): worker {lost} was lost')
    else:
        moved = with_input_gcode(store, moved)
        call_started_notifier(store, config, moved)
    return for_its_worker(moved), worker_settings(settings)


def claim_cache_fields(store, config, task_id, tool_versions):
    """A task claimed by a worker with these tool versions: the record's cache
    fields for this run, keyed with this worker's version ({} for a task not
    cached).  A queued one whose key hits is served from the result cache
    (StaleRun, the worker runs nothing); a run again after a lost worker is
    only keyed anew (its first worker's key would file this worker's result
    under the other's tool version)."""
    from .cache import is_cacheable, key_of_task, note_farm_version, parse_versions
    from .services import find_service, load_services
    record = store.read_task(task_id)
    state = state_of(record)
    if state not in (State.QUEUED, State.RUNNING, State.SUSPENDED):
        return {}
    try:
        service = find_service(*load_services(store.root), record.get(Field.SERVICE, ''))
    except RRCloudError:
        return {}
    version = parse_versions(tool_versions).get(service.name, '')
    if not version or not is_cacheable(config, service, record):
        return {}
    try:
        note_farm_version(store, service.name, version)
        key = key_of_task(store, config, service, record, version)
        served = bool(key) and state == State.QUEUED and served_from_cache(store, config, record, key)
    except OSError:  # the cache only saves time: the worker runs the task
        return {}
    if served:
        raise StaleRun(f'task {task_id} was served from the result cache: nothing to run')
    return {Field.CACHE_KEY: key, Field.TOOL_VERSION: version} if key else {}


def served_from_cache(store, config, record, key):
    """A queued task complete from the cache at its claim: out of the queue
    and its order, its job moved on, its notifier called.  False on a miss."""
    from .cache import finish_from_cache
    from .farmqueue import FarmQueue
    final = finish_from_cache(store, record, key)
    if not final:
        return False
    for folder in ('queue', ORDER_FOLDER):
        unmark(store, folder, final[Field.ID])
    FarmQueue(store, config).forget(final)
    move_on(store, config, final)
    return True


def with_input_gcode(store, record):
    """A claimed task that receives G-code (a print): what the file says of
    its print goes into the record, as a runner here records it before its
    tool starts (its worker's runner then judges the time left from
    ``gcodePrintSeconds``).  Unreadable: a line in its log, never its failure."""
    from .gcodemeta import gcode_fields, is_gcode_name
    from .records import stored_inputs
    try:
        inputs = [path for _, path in stored_inputs(record) if is_gcode_name(path)]
        fields = gcode_fields(store.path_of(inputs[0])) if inputs and not record.get(Field.GCODE_LINES) else {}
    except Exception as exc:  # the metadata only describes: a print is never lost to it
        from .errors import reason_without_paths
        append_log(store, record[Field.ID], f'rrcloud: cannot read the G-code metadata: {reason_without_paths(exc)}')
        return record
    return store.update_task(record[Field.ID], fields) if fields else record


def _claim_under_lock(store, config, task_id, worker, settings, cached=None):
    """The claim's record moves, under the store's lock: (the record, the
    worker it had).  The same worker again: the record as it is."""
    from .queue import QUEUE_MARKER_MODE
    from .store import write_file_atomically
    with store.lock():
        record = store.read_task(task_id)
        if record.get(Field.ID) != task_id or not state_of(record):
            raise BrokenRecord(f'task {task_id} has a broken record: no worker can run it')
        lost = record.get(Field.WORKER)
        if lost == worker and record.get(Field.STATUS) == TaskStatus.BUSY:
            return record, lost
        moved = _claim_locked(store, config, record, worker, cached)
        # The running marker keeps the settings (0600: they may hold a secret);
        # its age is how long the worker has been silent.
        write_file_atomically(running_marker(store, task_id), settings.encode(), mode=QUEUE_MARKER_MODE)
        for folder in ('queue', ORDER_FOLDER):  # under the lock: no sweep pushes a claimed task again
            unmark(store, folder, task_id)
    return moved, lost


# What a worker is not told of a task: whom to call, and who asked.
NOT_FOR_WORKERS = (Field.NOTIFIER, Field.NOTIFIER_EVENTS, Field.CLIENT)


def for_its_worker(record):
    """A task's record as its worker gets it."""
    return {key: value for key, value in record.items() if key not in NOT_FOR_WORKERS}


def call_started_notifier(store, config, record):
    """``notifierEvents=started``: called here, as a worker takes the task,
    before the worker hears back (a CGI has no thread that outlives its
    answer; the call is bounded by the notifier's own timeout).  A run again
    after a lost worker calls it no second time, as one server's runner."""
    from .notifier import STARTED, notifier_events_of, notify
    if record.get(Field.NOTIFIER) and STARTED in notifier_events_of(record):
        notify(store, config, record, STARTED)


def _claim_locked(store, config, record, worker, cached=None):
    state = state_of(record)
    if state == State.QUEUED:
        check_printer_free(store, record)
        return move_locked(store, record, State.RUNNING, {Field.WORKER: worker, Field.ATTEMPT: 1,
                                                          Field.STIME: f'{time.time():.5f}', **(cached or {})},
                           expect=State.QUEUED)
    if state in (State.RUNNING, State.SUSPENDED):
        check_lost_run(store, config, record)
        record.update({Field.WORKER: worker, Field.ATTEMPT: str(int(record.get(Field.ATTEMPT) or 1) + 1)})
        # the lost run's key named its worker's tool version: this run's result is keyed by its own, or not kept
        for field in (Field.CACHE_KEY, Field.TOOL_VERSION):
            record.pop(field, None)
        record.update(cached or {})
        store.write_task(record)
        return record
    raise StaleRun(f'task {record[Field.ID]} is not there to take (it is {state or record.get(Field.STATUS)})')


def check_printer_free(store, record):
    """A print on a named printer is claimed only while no other print of the
    store is busy on it (its turn in Redis already says so; this holds when
    Redis lost the turn): StaleRun otherwise, and it waits queued."""
    from .farmqueue import busy_prints, farm_printer
    printer = farm_printer(record)
    busy = busy_prints(store, printer, but=record[Field.ID]) if printer else []
    if busy:
        raise StaleRun(f'printer {printer} is printing task {busy[0]}: task {record[Field.ID]} waits its turn')


def check_lost_run(store, config, record):
    """A running task another worker may take: its service may run twice (a
    print never does; StaleRun) and its worker fell silent LOST_SECONDS ago.
    A run heard from a moment ago is alive (StaleRun: a second job of it
    ends); one silent a while but not yet that long: NotYet, ask again."""
    from .services import find_service, load_services
    try:
        service = find_service(*load_services(store.root), record.get(Field.SERVICE, ''))
    except RRCloudError:
        raise StaleRun(f'task {record[Field.ID]} is of a service this front-end no longer has') from None
    if service.runs_once:
        raise StaleRun(f'task {record[Field.ID]} runs once: it is never run again')
    silent = silent_for(store, record)
    if silent < ALIVE_SECONDS:
        raise StaleRun(f'task {record[Field.ID]} runs on worker {record.get(Field.WORKER)}')
    if silent < LOST_SECONDS:
        raise NotYet(f'task {record[Field.ID]}: its worker has been silent {silent:.1f} s; ask again')


def worker_settings(settings):
    """The lines of a task's settings a worker gets."""
    from .keyvalue import parse_key_value_text
    return ''.join(f'{key} = {value}\n' for _, key, value in parse_key_value_text(settings, 'settings')
                   if key in WORKER_SETTINGS)


def current_run(store, task_id, attempt):
    """The record of a busy task whose current run is ``attempt``; StaleRun otherwise."""
    record = store.read_task(task_id)
    if record.get(Field.STATUS) != TaskStatus.BUSY or int(record.get(Field.ATTEMPT) or 0) != attempt:
        raise StaleRun(f'run {attempt} of task {task_id} is not its current one')
    return record


def updated_run(store, task_id, attempt):
    """The record of a task whose current run is ``attempt`` and still goes
    on: busy, or ended by a kill while its worker still stops it (its
    running marker is there until the worker's ``workdone``: a print's
    cancel takes up to its grace, and all that while its printer is taken;
    its updates keep the marker fresh, so the sweep does not end it first).
    StaleRun otherwise."""
    record = store.read_task(task_id)
    if int(record.get(Field.ATTEMPT) or 0) != attempt or (
            record.get(Field.STATUS) != TaskStatus.BUSY and not is_marked(store, 'running', task_id)):
        raise StaleRun(f'run {attempt} of task {task_id} is not its current one')
    return record


def input_of_run(store, task_id, attempt, path):
    """The file of one of the inputs of a task's current run; the run is
    alive while its worker fetches them (before its updates begin)."""
    path = input_file(store, current_run(store, task_id, attempt), path)
    touch(running_marker(store, task_id))
    return path


def touch(marker):
    """A worker's task's marker says it was heard from now (gone: no matter)."""
    try:
        os.utime(marker)
    except FileNotFoundError:
        pass


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


def take_update(store, config, task_id, attempt, log_bytes, events, sender=False):
    """A worker's news of a running task: its log's new bytes (the log kept
    within twice ``maxLogSize``, whatever a worker sends), its new progress
    and notes, and (``sender``) that a print's sender runs, which opens it
    to pause, cancel and stop.  The record as it is now (a kill, a
    suspension, a print's cancel or stop)."""
    record = updated_run(store, task_id, attempt)
    if sender and record.get(Field.SENDER) != YES and record.get(Field.STATUS) == TaskStatus.BUSY:
        record = sender_runs(store, task_id, attempt) or record
    log_path = store.log_path(task_id)
    room = 2 * config.maxLogSize - (os.path.getsize(log_path) if os.path.exists(log_path) else 0)
    if log_bytes and room > 0:
        with open(log_path, 'ab') as log:
            log.write(log_bytes[:room])
    for kind, data in events:
        if kind == PROGRESS:
            data = checked_progress(data)  # the bar a client draws: numbers and a stage's name
        if kind in FORWARDED_EVENTS and data:
            append_event(store, task_id, kind, data)
    touch(running_marker(store, task_id))  # it is alive
    return record


def sender_runs(store, task_id, attempt):
    """A worker's print says its sender runs: ``sender: yes`` in the record (a
    service whose tool is rrcloud's own sender only: a worker's word opens
    nothing else to pause, which would be a SIGSTOP; its current run only,
    under the store lock)."""
    with store.lock():
        record = store.read_task(task_id)
        if (record.get(Field.STATUS) != TaskStatus.BUSY or int(record.get(Field.ATTEMPT) or 0) != attempt
                or not runs_builtin_sender(store, record)):
            return None
        record[Field.SENDER] = YES
        store.write_task(record)
        return record


def runs_builtin_sender(store, record):
    """True for a task of a print service whose tool is ``rrcloud print``."""
    from .printers import PRINT_SERVICES
    from .services import find_service, load_services
    if record.get(Field.SERVICE) not in PRINT_SERVICES:
        return False
    try:
        service = find_service(*load_services(store.root), record[Field.SERVICE])
    except RRCloudError:
        return False
    return service.cmd[:2] == ['rrcloud', 'print']


def parse_events(text):
    """(kind, data) of each JSON line of a worker's events."""
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


# What a worker may say of how a task ended (an OpenSCAD task: its engine).
ENDING_FIELDS = (Field.ERROR, Field.EXIT_CODE, Field.PROGRESS, Field.ENGINE)


def ending_fields(ending):
    """The fields of a task's end a worker sent (others are ignored), each one
    line; an engine only by one of its names."""
    from .engines import ENGINES
    from .names import is_single_line
    fields = {key: str(ending[key])[:1000] for key in ENDING_FIELDS
              if ending.get(key) not in (None, '') and is_single_line(str(ending[key]))}
    if fields.get(Field.ENGINE, ENGINES[0]) not in ENGINES:
        del fields[Field.ENGINE]
    return fields


def finish(store, config, task_id, attempt, status, fields, result):
    """A worker's word on how a task ended, with its result (a file object or
    None): the result stored (a complete task of a service with output has a
    non-empty one, or it failed), the task moved to its final state, then
    ``ended``.  A task a kill ended first is only ended here.  The final record."""
    from .gcodemeta import gcode_fields, is_gcode_name
    from .states import finish_task
    record = store.read_task(task_id)
    if int(record.get(Field.ATTEMPT) or 0) != attempt:
        raise StaleRun(f'run {attempt} of task {task_id} is not its current one')
    if record.get(Field.STATUS) == TaskStatus.BUSY and status == TaskStatus.COMPLETE and record.get(Field.OUT):
        if not store_result(store, config, record, result):
            status, fields = TaskStatus.FAILED, dict(fields, error='no output')
        elif is_gcode_name(record[Field.OUT]):  # a slice: what its G-code says, as a runner here records it
            fields = dict(fields, **gcode_fields(store.path_of(record[Field.OUT])))
    final = finish_task(store, task_id, status, **fields) or store.read_task(task_id)
    if final.get(Field.CACHE_KEY) and final.get(Field.STATUS) == TaskStatus.COMPLETE:
        keep_in_cache(store, config, final)
    ended(store, config, final)
    return final


def keep_in_cache(store, config, final):
    """A worker's complete result into the front-end's cache, under the key
    its claim recorded (with its worker's tool version)."""
    from .cache import put
    try:
        put(store, config, final[Field.CACHE_KEY], final)
    except OSError as exc:  # the cache only saves time
        from .errors import reason_without_paths
        append_log(store, final[Field.ID], f'rrcloud: the result was not kept in the cache: '
                                           f'{reason_without_paths(exc)}')


def store_result(store, config, record, result):
    """The result a worker sent, streamed where the record says (atomically,
    at most ``maxOutputSize``); False for none, an empty or a too large one."""
    import shutil
    if result is None:
        return False
    from .store import new_unique_name, temp_writer, unlink_quietly
    destination = store.path_of(record[Field.OUT])
    folder, name = os.path.split(destination)
    temp = os.path.join(folder, f'.{name}.{temp_writer()}.{new_unique_name()}.part')  # recovery's kind of name
    try:
        with open(temp, 'xb') as sink:
            shutil.copyfileobj(result, sink)
            size = sink.tell()
        if not 0 < size <= config.maxOutputSize:
            return False
        os.replace(temp, destination)
        return True
    finally:
        unlink_quietly(temp)


def ended(store, config, final):
    """After a worker's task ended (or a kill ended it): its running marker
    goes, its job moves on, the notifier is called; once, by whoever
    removes the marker."""
    try:
        os.unlink(running_marker(store, final[Field.ID]))
    except FileNotFoundError:
        return
    from .farmqueue import FarmQueue, farm_printer
    if farm_printer(final):  # its printer's next print goes
        FarmQueue(store, config).printer_done(final)
    move_on(store, config, final)


def move_on(store, config, final):
    """After a task of the farm ended: its job moves on, its notifier is called."""
    from .notifier import TaskNotifier
    if final.get(Field.JOB):
        from .pipeline import after_step
        try:
            after_step(store, config, final)
        except RRCloudError as exc:  # Redis away: settle_job moves the job on later
            from .events import note
            note(store, final[Field.ID], f'could not move job {final[Field.JOB]} on: {exc}')
    TaskNotifier(store, config, final).ended(final)


def control_fields(record):
    """What a worker's runner must know of its task now: killed (ended),
    suspended (a print: paused), a print's cancel or stop."""
    return {Field.STATUS: record.get(Field.STATUS, ''), Field.SUSPENDED: record.get(Field.SUSPENDED, ''),
            Field.PRINT_CONTROL: record.get(Field.PRINT_CONTROL, '')}


def is_farm_task(record):
    """True for a busy task a worker runs."""
    return bool(record.get(Field.WORKER)) and record.get(Field.STATUS) == TaskStatus.BUSY


def silent_for(store, record, now=None):
    """Seconds since the worker of a task last said something about it."""
    try:
        touched = os.path.getmtime(running_marker(store, record[Field.ID]))
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
    final = final or store.read_task(record[Field.ID])
    ended(store, config, final)
    return final


def sweep(store, config):
    """Every worker's task looked at: a silent worker's asked after in
    Redis, an ended one (a kill, while its worker was gone) ended here.  A
    task that cannot be looked at (a torn record) is said and passed over."""
    from .store import marked
    for task_id in marked(store, 'running'):
        try:
            sweep_task(store, config, task_id)
        except (RRCloudError, KeyError, ValueError) as exc:
            print(f'rrcloud: farm sweep: task {task_id}: {exc}', file=sys.stderr, flush=True)


def sweep_task(store, config, task_id):
    try:
        record = store.read_task(task_id)
    except NotFound:
        return
    if not record.get(Field.WORKER):
        return
    if record.get(Field.STATUS) == TaskStatus.BUSY:
        reconcile_farm_task(store, config, record)
    elif silent_for(store, record) >= LOST_SECONDS:
        ended(store, config, record)


# How often ``rrcloud serve`` of a farm sweeps (a CGI sweeps in recovery's minute).
SWEEP_SECONDS = 2.0


def keep_sweeping(store, config, stopped):
    """``rrcloud serve`` of a farm: every SWEEP_SECONDS, push again what Redis
    lost and ``sweep`` the workers' tasks, until ``stopped`` (an Event) is set."""
    from .backends import task_queue
    while not stopped.wait(SWEEP_SECONDS):
        for step in (task_queue(store, config).dispatch, lambda: sweep(store, config)):
            try:  # one step failing (Redis away) never keeps the other from its turn
                step()
            except Exception as exc:  # the next sweep tries again
                print(f'rrcloud: farm sweep: {exc}', file=sys.stderr, flush=True)
