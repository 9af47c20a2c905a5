"""Waiting for a task to end: following its event log, reading its record
again on each status event (long-polls, ``--sync``, held POSTs)."""

import time

from .events import PROGRESS, STATUS, EventFollower, last_progress_event, progress_text
from .schema import Field, TaskStatus
from .states import get_task


# A runner that died writes no event, and a task of an older rrcloud writes
# none: the record itself is looked at (and reconciled) this often anyway.
WAIT_RECHECK_SECONDS = 1.0


# How often ``on_poll`` hears of a task that sends nothing (a terminal's
# progress line counts the seconds).
WAIT_POLL_SECONDS = 0.25


def wait_for_task(store, task_id, timeout=None, on_poll=None, read=get_task):
    """Block until the task leaves busy (or ``timeout``); returns its record.

    It wakes on the task's events (a status event: the record is read again;
    progress goes to ``on_poll(record, event)`` as the record's ``progress``
    and as the newest progress event itself) instead of
    reading the record every few milliseconds.  ``read(store, task_id)``
    reads and judges the record (a farm's front-end also asks after a
    silent worker).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    events = EventFollower(store, task_id, at_end=True)  # before the read: no event falls between
    newest = last_progress_event(store, task_id) if on_poll else None  # the tool may have begun
    record = read(store, task_id)
    events.fast_while_young(task_created(record))
    while True:
        if record.get(Field.STATUS) != TaskStatus.BUSY:
            return record
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return record
        newest = follow_until_status(events, record, min(now + WAIT_RECHECK_SECONDS, deadline or float('inf')),
                                     on_poll, newest)
        record = read(store, task_id)


def task_created(record):
    """When a task was submitted (Unix time; now for a record that does not say)."""
    try:
        return float(record.get(Field.CTIME) or time.time())
    except ValueError:
        return time.time()


def follow_until_status(events, record, until, on_poll, newest=None):
    """Follow a busy task's events until a status event or ``until``; ``on_poll``
    sees ``record`` with the newest progress event's ``DONE/TOTAL`` (or stage),
    and that event (``newest``: the one before, None: none yet).  Returns the
    newest progress event."""
    while True:
        if on_poll:
            on_poll(record, newest)
        left = until - time.monotonic()
        if left <= 0:
            return newest
        news = events.wait(min(left, WAIT_POLL_SECONDS) if on_poll else left)
        progress = progress_text(news)
        if progress:
            record = dict(record, progress=progress)
            newest = [event for event in news if event.kind == PROGRESS][-1]
        if any(event.kind == STATUS for event in news):
            return newest
