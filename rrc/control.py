"""Stopping, pausing and continuing a task's tool: kill, suspend, resume.

The state moves under the store lock (``states``), the signal goes to the
tool's process group on the node that runs it; the task's log says who asked.
"""

import time

from .errors import UsageError
from .procs import kill_process_group
from .schema import Field
from .states import State, move_locked, process_here, state_of
from .store import ORDER_FOLDER, append_log, unmark


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
        # A farm's worker learns it from its next update and signals its tool itself.
        by_worker = bool(record.get(Field.WORKER))
        if not by_worker and not process_here(store, record, Field.PID, Field.PID_START):
            raise UsageError(f'task {task_id} cannot {verb}: its tool is not running on this node '
                             f'(not started yet, or it runs on node {record.get(Field.NODE, "?")})')
        moved = move_locked(store, record, to, expect=expect)
        if not by_worker:
            kill_process_group(int(record[Field.PID]), signal.SIGSTOP if to == State.SUSPENDED else signal.SIGCONT)
    append_log(store, task_id, f'rrcloud: task {task_id} {verb}{"ed" if verb == "suspend" else "d"} by {by}')
    return moved
