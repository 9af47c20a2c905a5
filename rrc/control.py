"""Stopping, pausing and continuing a task's tool: kill, suspend, resume;
and a print's pause, resume, cancel and emergency stop.

The state moves under the store lock (``states``), the signal goes to the
tool's process group on the node that runs it; a print gets no signal: its
record says what is asked (``suspended``, ``printControl``) and its runner
tells the sender.  The task's log says who asked.
"""

import time

from .errors import UsageError
from .procs import kill_process_group
from .schema import YES, Field
from .states import State, move_locked, process_here, state_of
from .store import ORDER_FOLDER, append_log, is_marked, unmark


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
    (when it runs on this node) gets SIGTERM.  Not a print whose runner
    lives: the runner sees the kill and has its sender cancel the print (the
    cancel G-code, heaters off); a signal would leave the heaters on."""
    task_id = record[Field.ID]
    append_log(store, task_id, f'rrcloud: task {task_id} killed by {by}')
    if is_print(record) and process_here(store, record, Field.RUNNER, Field.RUNNER_START):
        return
    if process_here(store, record, Field.PID, Field.PID_START):
        import signal
        kill_process_group(int(record[Field.PID]), signal.SIGTERM)
        if state_of(record) == State.SUSPENDED:  # a stopped process acts on SIGTERM once continued
            kill_process_group(int(record[Field.PID]), signal.SIGCONT)


def suspend_task(store, task_id, by):
    """Stop a running task's tool (SIGSTOP to its group): state suspended, and
    the time it stays so does not count against its timeout.  A print is
    paused instead (``pause_task``)."""
    return _pause_or_continue(store, task_id, State.SUSPENDED, by)


def resume_task(store, task_id, by):
    """Continue a suspended task's tool (SIGCONT), or a paused print: state running again."""
    return _pause_or_continue(store, task_id, State.RUNNING, by)


def pause_task(store, task_id, by):
    """Pause a print: its sender stops after the line in flight and runs the
    pause G-code.  The record is suspended (0.019 clients: busy, ``suspended: yes``)."""
    return _pause_or_continue(store, task_id, State.SUSPENDED, by, print_only=True)


def cancel_task(store, task_id, by):
    """Cancel a print: its sender runs the cancel G-code and the task ends failed, ``cancelled``."""
    return _ask_sender(store, task_id, 'cancel', by)


def stop_task(store, task_id, by, runner_alive=False):
    """Emergency stop of a print: its sender sends M112 at once; the task ends
    failed.  ``runner_alive``: the caller runs the print's runner itself (a
    farm's worker), so a killed print is still being cancelled."""
    return _ask_sender(store, task_id, 'stop', by, runner_alive)


def is_print(record):
    """True for a task whose built-in G-code sender runs (it takes pause, cancel, stop)."""
    return record.get(Field.SENDER) == YES


def _not_a_print(task_id, verb, record):
    return UsageError(f'task {task_id} cannot {verb}: it is not a print whose sender runs '
                      f'(status {state_of(record) or record.get(Field.STATUS)}); '
                      f'only a running print can {verb}')


def _ask_sender(store, task_id, word, by, runner_alive=False):
    """Write a cancel or stop into a running (or paused) print's record: its
    runner hands it to the sender.  A stop is never taken back: the runner
    reads the record only every half second, and a cancel written over a
    stop in between would leave the printer running until the line in
    flight (maybe a long heat-up) is done.  A stop is taken too while a
    killed (or timed-out) print is being cancelled: its record is final,
    but its runner lives and still hands a stop to the sender
    (``supervise.Ending``), and an emergency stop must not wait for the cancel."""
    store.read_task(task_id)  # NotFound before anything is locked
    with store.lock():
        record = store.read_task(task_id)
        if not is_print(record) or not (state_of(record) in (State.RUNNING, State.SUSPENDED)
                                        or (word == 'stop' and _being_cancelled(store, record, runner_alive))):
            raise _not_a_print(task_id, word, record)
        if record.get(Field.PRINT_CONTROL) == 'stop':
            return record
        record = dict(record, **{Field.PRINT_CONTROL: word})
        store.write_task(record)
    append_log(store, task_id, f'rrcloud: task {task_id}: {"cancel" if word == "cancel" else "emergency stop"} '
                               f'asked by {by}')
    return record


def _being_cancelled(store, record, runner_alive=False):
    """True for an ended print whose runner still lives: its sender is
    cancelling it (``supervise.Ending``), within the runner's grace.  Its
    runner is here, or the caller's own (``runner_alive``), or on a farm's
    worker that has not yet said it is done (the running marker is there
    until its ``workdone``)."""
    if state_of(record) != State.FAILED:
        return False
    return (runner_alive or process_here(store, record, Field.RUNNER, Field.RUNNER_START)
            or (bool(record.get(Field.WORKER)) and is_marked(store, 'running', record[Field.ID])))


def _pause_or_continue(store, task_id, to, by, print_only=False):
    """Move a task between running and suspended and signal its tool; the
    move and the signal happen under the store lock, so a kill or the end of
    the task cannot come between them."""
    import signal
    verb, expect = ('suspend', State.RUNNING) if to == State.SUSPENDED else ('resume', State.SUSPENDED)
    store.read_task(task_id)  # NotFound before anything is locked
    with store.lock():
        record = store.read_task(task_id)
        current = state_of(record)
        printing = is_print(record)
        if print_only and not printing:
            raise _not_a_print(task_id, 'pause', record)
        if printing:
            verb = 'pause' if to == State.SUSPENDED else 'resume'
        if current != expect:
            raise UsageError(f'task {task_id} cannot {verb}: it is {current or record.get(Field.STATUS)}'
                             + (' (only a running task can)' if verb == 'suspend' else ''))
        # A farm's worker learns it from its next update and signals its tool itself.
        by_worker = bool(record.get(Field.WORKER))
        if not by_worker and not process_here(store, record, Field.PID, Field.PID_START):
            raise UsageError(f'task {task_id} cannot {verb}: its tool is not running on this node '
                             f'(not started yet, or it runs on node {record.get(Field.NODE, "?")})')
        moved = move_locked(store, record, to, expect=expect)
        if not by_worker and not printing:  # a print's sender is told by its runner: never SIGSTOP
            kill_process_group(int(record[Field.PID]), signal.SIGSTOP if to == State.SUSPENDED else signal.SIGCONT)
    append_log(store, task_id, f'rrcloud: task {task_id} {verb}{"d" if verb.endswith("e") else "ed"} by {by}')
    return moved
