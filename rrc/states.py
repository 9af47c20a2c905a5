"""The task lifecycle: the state machine, the only writer of a record's
``status``; liveness, reconcile, finish, expire.

A task is in one state.  On the wire ``status`` keeps the 0.019 spec's three
words, so an old client always reads one it knows; the busy states beside
running are told apart by a flag field set to ``yes``:

| state       | status   | flag             | entered from                  | by                                         |
| ----------- | -------- | ---------------- | ----------------------------- | ------------------------------------------ |
| `queued`    | busy     | `queued: yes`    | created; `waiting`            | `submit_task`                              |
| `running`   | busy     |                  | `queued`, `suspended`, `waiting`; created | `dispatch`; a remote task's local record; a job; a step forwarded to a server |
| `suspended` | busy     | `suspended: yes` | `running`                     | `suspend_task` (SIGSTOP; resume: SIGCONT)  |
| `waiting`   | busy     | `waiting: yes`   | created                       | a pipeline step waits for its input (`rrc.pipeline`) |
| `complete`  | complete |                  | `running`                     | the runner (exit 0, output); a server said so |
| `failed`    | failed   |                  | any state but the final two   | kill, timeout, runner, reconcile, a server  |

``complete`` and ``failed`` are final: nothing leaves them.  ``TRANSITIONS``
below is the table every move is checked against; ``move_task`` (or
``move_locked`` under a store lock the caller holds) is the one function
that writes a new state.  A move from a final state is a lost race (another
writer ended the task first; the first final state wins) and returns None; a
move the table does not allow from a live state raises ``IllegalMove``.
A move to a final state appends the task's line to the history file
(``rrc/ledger.py``) under the same lock: every end passes through here, once.

A suspended task keeps its runner (liveness is judged as for a running
one; ``control.suspend_task`` stops its tool).  A waiting step has no process
and no queue marker yet (its settings wait in ``tasks/waiting/ID``), so
reconcile leaves it alone; the step before it moves it on (``rrc.pipeline``).
A job's record has no process of its own either: its state follows its
steps, and reconcile leaves it to ``pipeline.settle_job``.  A queued task
has no process either: while its queue marker is there it stays queued
across a restart of the server and a reboot of the machine (its record may
name an earlier boot), and the start-up dispatch starts it.  Reconcile
interrupts only a task whose processes are gone.

Liveness is judged only for this node's tasks (``store.node``): a task of
another node sharing the store is shown as its record says.
"""

import os
import time

from .errors import NotFound, RRCloudError
from .events import status_changed, with_live_progress
from .ledger import record_ended
from .procs import kill_process_group, process_is
from .schema import YES, Field, TaskStatus
from .store import marked, unmark


class State:
    """The states of a task (the wire shows them through ``status`` and a
    flag).  Plain strings, as TaskStatus."""
    QUEUED = 'queued'
    RUNNING = 'running'
    SUSPENDED = 'suspended'
    WAITING = 'waiting'
    COMPLETE = 'complete'
    FAILED = 'failed'


STATES = (State.QUEUED, State.RUNNING, State.SUSPENDED, State.WAITING, State.COMPLETE, State.FAILED)


# state: (status word on the wire, flag field set to "yes" or None)
WIRE = {
    State.QUEUED: (TaskStatus.BUSY, Field.QUEUED),
    State.RUNNING: (TaskStatus.BUSY, None),
    State.SUSPENDED: (TaskStatus.BUSY, Field.SUSPENDED),
    State.WAITING: (TaskStatus.BUSY, Field.WAITING),
    State.COMPLETE: (TaskStatus.COMPLETE, None),
    State.FAILED: (TaskStatus.FAILED, None),
}
FLAGS = tuple(flag for _, flag in WIRE.values() if flag)

TRANSITIONS = {
    State.WAITING: frozenset({State.QUEUED, State.RUNNING, State.FAILED}),
    State.QUEUED: frozenset({State.RUNNING, State.FAILED}),
    State.RUNNING: frozenset({State.COMPLETE, State.FAILED, State.SUSPENDED}),
    State.SUSPENDED: frozenset({State.RUNNING, State.FAILED}),
    State.COMPLETE: frozenset(),
    State.FAILED: frozenset(),
}
FINAL = frozenset(state for state, moves in TRANSITIONS.items() if not moves)
# The states a record may be created in (a remote task's local record starts running).
INITIAL = frozenset({State.QUEUED, State.RUNNING, State.WAITING})
# The states whose liveness is judged: a runner runs, or a queue marker waits for a slot.
LIVE = frozenset({State.QUEUED, State.RUNNING, State.SUSPENDED})

ORPHAN_GRACE_SECONDS = 30.0


class IllegalMove(RRCloudError):
    """A move the state machine does not allow from the task's current state."""

    def __init__(self, task_id, current, to):
        super().__init__(f'task {task_id} cannot go from {current} to {to}')
        self.task_id, self.current, self.to = task_id, current, to


def state_of(record):
    """The state a record is in; None for a status word the machine never writes."""
    status = record.get(Field.STATUS)
    if status != TaskStatus.BUSY:
        return {TaskStatus.COMPLETE: State.COMPLETE, TaskStatus.FAILED: State.FAILED}.get(status)
    for state in (State.QUEUED, State.SUSPENDED, State.WAITING):
        if record.get(WIRE[state][1]) == YES:
            return state
    return State.RUNNING


def wire_fields(state):
    """The ``status`` and flag fields that show ``state``."""
    status, flag = WIRE[state]
    return {Field.STATUS: status, **({flag: YES} if flag else {})}


def initial_fields(state):
    """The state fields of a record created in ``state``."""
    if state not in INITIAL:
        raise ValueError(f'a task is never created {state}')
    return wire_fields(state)


def may_move(record, to, expect=None):
    """True when the task may move to ``to``; False when it already ended
    (a lost race); IllegalMove when the table forbids the move, or when the
    task is not in the state ``expect`` that the caller's move starts from."""
    current = state_of(record)
    if current is None or current in FINAL:
        return False
    if to not in TRANSITIONS[current] or expect not in (None, current):
        raise IllegalMove(record.get(Field.ID, '?'), current, to)
    return True


def move_locked(store, record, to, changes=None, remove=(), expect=None):
    """Move a task to state ``to``: the one writer of ``status``.

    The caller holds ``store.lock()`` and read ``record`` under it.  Returns
    the record as written, or None when the task had already ended.
    """
    if not may_move(record, to, expect):
        return None
    moved = {key: value for key, value in record.items() if key not in FLAGS and key not in remove}
    moved.update({key: str(value) for key, value in (changes or {}).items()})
    moved.update(wire_fields(to))
    store.write_task(moved)
    if to in FINAL:  # the one place a task ends: its history line is written once, by whoever ends it
        record_ended(store, moved)
    return status_changed(store, moved)  # the event log: every status change, in order


def move_task(store, task_id, to, changes=None, remove=(), expect=None):
    """Move a task to state ``to`` under the store lock (see move_locked)."""
    with store.lock():
        return move_locked(store, store.read_task(task_id), to, changes, remove, expect)


def finish_task(store, task_id, status, **fields):
    """Write a task's final state unless another final state was written first."""
    with store.lock():
        return finish_locked(store, store.read_task(task_id), status, **fields)


def finish_locked(store, record, status, **fields):
    """finish_task under a store lock the caller holds, ``record`` read under it."""
    to = State.COMPLETE if status == TaskStatus.COMPLETE else State.FAILED
    changes = dict(fields, **{Field.ETIME: f'{time.time():.5f}'})
    out = record.get(Field.OUT, '')
    if out.startswith('tasks/out/'):
        try:
            changes[Field.SIZE_OUT] = os.path.getsize(store.path_of(out))
        except OSError:
            changes[Field.SIZE_OUT] = 0
    return move_locked(store, record, to, changes)


def reconcile_task(store, record, now=None):
    """Report a busy task of this node whose runner is gone as failed/interrupted.

    A task of another node, or a remote task's local record, is shown as its
    record says: only the node that runs a task can see its processes.  A
    queued task waits for its slot across restarts of the server and of the
    machine; a waiting one (not in LIVE) is never judged here.
    """
    if not _judged_here(store, record) or _alive(store, record, now):
        return record
    with store.lock():
        # Judged again on the record as it is now: ``record`` may have been
        # read just before dispatch started the task (its queue marker gone,
        # its runner not yet in the record read).
        record = store.read_task(record[Field.ID])
        if not _judged_here(store, record) or _alive(store, record, now):
            return record
        if process_here(store, record, Field.PID, Field.PID_START):  # never after a reboot: pids are anyone's
            kill_process_group(int(record[Field.PID]))
        finished = finish_locked(store, record, TaskStatus.FAILED, error='interrupted')
    unmark(store, 'running', record[Field.ID])
    return finished or store.read_task(record[Field.ID])


def _judged_here(store, record):
    """True for a live task this node runs (not a remote task's local record,
    not a job, not a task a farm's worker runs: ``farmwork`` judges those)."""
    return (state_of(record) in LIVE and Field.REMOTE_ID not in record and Field.STEPS not in record
            and Field.WORKER not in record and store.node.owns(record))


def process_here(store, record, pid_field, start_field):
    """True when the record's process (``pid_field`` plus its start time) is
    alive on this node in this boot: only then is the pid that process, and
    only then may it get a signal."""
    return bool(record.get(pid_field) and store.node.owns(record) and not store.node.rebooted_since(record)
                and process_is(record[pid_field], record.get(start_field)))


def _alive(store, record, now=None):
    """True while a live task of this node waits in the queue, or still has (or
    is about to have) a live runner.

    A queued task with its queue marker has no process to lose: it waits,
    whatever boot its record names (a reboot leaves its marker, the start-up
    dispatch starts it).  Only a task that had processes is interrupted by a
    reboot: they all ended with the earlier boot, and their pids may be
    another process's now.
    """
    if record.get(Field.QUEUED) and os.path.exists(os.path.join(store.folder('queue'), record[Field.ID])):
        return True
    if store.node.rebooted_since(record):
        return False
    if record.get(Field.RUNNER):
        return process_here(store, record, Field.RUNNER, Field.RUNNER_START)
    started = float(record.get(Field.STIME) or record.get(Field.CTIME) or 0)
    return (now or time.time()) - started < ORPHAN_GRACE_SECONDS


def expire_tasks(store, records, max_hours, now=None):
    """Remove this node's finished tasks whose end is older than ``max_hours``;
    returns the rest (another node's retention is its own business)."""
    now = now or time.time()
    kept = []
    for record in records:
        etime = record.get(Field.ETIME)
        if (state_of(record) in FINAL and etime and now - float(etime) > max_hours * 3600
                and store.node.owns(record)):
            store.remove_task(record)
        else:
            kept.append(record)
    return kept


def list_tasks(store, config):
    """All tasks, reconciled and with expired ones removed (as the original does)."""
    records = []
    for task_id in store.task_ids():
        try:
            records.append(reconcile_task(store, store.read_task(task_id, checked=True)))
        except NotFound:
            continue
    return [with_live_progress(store, r) for r in expire_tasks(store, records, config.maxDataRetention)]


def get_task(store, task_id, record=None):
    """One task, reconciled, with its live progress (``record``: as it was just read)."""
    if record is None:
        record = store.read_task(task_id)
    return with_live_progress(store, reconcile_task(store, record))


# A folder changed less than this long ago may change again within the same
# mtime tick, unseen: its count is not cached ("racy" timestamps, as git has).
COUNT_CACHE_SETTLE_NS = 100_000_000  # mtime ticks are a few ms


def count_tasks(store):
    """How many records ``tasks/info`` holds.  Listing 10,000 names costs 3 ms,
    so a resident server's store keeps the count until the folder's mtime changes."""
    folder = store.folder('info')
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return 0
    key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)
    if store.count_cache and store.count_cache[0] == key:
        return store.count_cache[1]
    count = sum(1 for name in os.listdir(folder) if name[0] != '.')  # ids, and dotted temp files
    if time.time_ns() - stat.st_mtime_ns > COUNT_CACHE_SETTLE_NS:
        store.count_cache = (key, count)
    return count


def still_running(store, task_id):
    """True when a running marker belongs to a live runner (reconciles it otherwise).

    Another node's marker is left alone: its task counts as running while
    its record says busy.
    """
    return _running_record(store, task_id) is not None


def running_here(store, marked_ids):
    """The ids of ``marked_ids`` (running markers) that are this node's live tasks."""
    return [task_id for task_id in marked_ids if _ours(store, _running_record(store, task_id))]


def queued_here(store, marked_ids):
    """The ids of ``marked_ids`` (queue markers) whose task this node will start."""
    return [task_id for task_id in marked_ids if _ours(store, _record_or_none(store, task_id))]


def queue_is_full(store, max_queued):
    """True when ``max_queued`` of this node's tasks wait (records are read only
    when the shared queue holds that many markers at all)."""
    markers = marked(store, 'queue')
    return len(markers) >= max_queued and len(queued_here(store, markers)) >= max_queued


def _running_record(store, task_id):
    """The record behind a running marker while its task runs; None (and the
    marker removed) once this node's runner is gone."""
    try:  # reconciled, without the progress a reader of the record wants
        record = reconcile_task(store, store.read_task(task_id))
    except NotFound:
        unmark(store, 'running', task_id)
        return None
    if not store.node.owns(record) or record.get(Field.WORKER):  # another node's, or a farm's worker's
        return record if record.get(Field.STATUS) == TaskStatus.BUSY else None
    if process_here(store, record, Field.RUNNER, Field.RUNNER_START):
        # An ended task's runner is only tidying up (its slot, the notifier),
        # and removes the marker itself.
        return record if record.get(Field.STATUS) == TaskStatus.BUSY else None
    unmark(store, 'running', task_id)
    return None


def _ours(store, record):
    return record is not None and store.node.owns(record)


def _record_or_none(store, task_id):
    try:
        return store.read_task(task_id)
    except NotFound:
        return None
