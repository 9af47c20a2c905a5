"""Removing ended tasks on request: ``rrcloud rm ID…``, ``rrcloud clean
--older-than=DAYS`` and their HTTP routes (``service=remove``, ``service=clean``).

Only an ended task (complete or failed) is removed, and only by the node
that owns it: a live task is killed first, another node's is its own
business.  Each removal is judged and done under the store lock, on the
record as it is then, and removes only the files the record names as its
own (``Store.remove_task``: its inputs under ``tasks/in/``, its result under
``tasks/out/``, its log, events and markers).  A pipeline's job goes with
its steps (its result is its last step's), and a step alone is refused
while its job is there.  ``maxDataRetention`` does the same on its own
(``states.expire_tasks``).
"""

import math
import time

from .errors import NotFound, UsageError
from .names import check_task_id
from .schema import Field
from .states import FINAL, process_here, state_of

# The most days --older-than takes (beyond it every task is younger anyway).
MAX_DAYS = 100_000


def remove_ended_task(store, task_id):
    """Remove one ended task of this node (a job with its steps); returns the
    ids removed.  UsageError for a live task, another node's, or a step of a
    job still there; NotFound for an unknown id."""
    check_task_id(task_id)
    with store.lock():
        record = store.read_task(task_id)
        refusal = why_not_removable(store, record)
        if refusal:
            raise UsageError(f'task {task_id} {refusal}')
        return _remove_locked(store, record)


def clean_ended_tasks(store, older_than_days, now=None):
    """Remove this node's tasks that ended more than ``older_than_days`` ago
    (a job with its steps); returns the ids removed, oldest first."""
    cutoff = (now or time.time()) - parse_days(older_than_days) * 86400
    removed = []
    with store.lock():
        for task_id in store.task_ids():
            try:  # a job's step removed with it a moment ago is gone
                record = store.read_task(task_id)
            except NotFound:
                continue
            if ended_before(record, cutoff) and not why_not_removable(store, record):
                removed += _remove_locked(store, record)
    return removed


def parse_days(text):
    """``--older-than`` / ``olderThan``: days, a number from 0 (fractions too: 0.5 is 12 hours)."""
    try:
        days = float(text)
    except (TypeError, ValueError):
        days = math.nan
    if not 0 <= days <= MAX_DAYS:  # NaN fails this too
        raise UsageError(f'--older-than takes a number of days from 0 to {MAX_DAYS}, not {str(text)[:32]!r}')
    return days


def ended_before(record, cutoff):
    """True for a task that ended before the Unix time ``cutoff``."""
    try:
        return state_of(record) in FINAL and float(record.get(Field.ETIME) or 'nan') < cutoff
    except ValueError:
        return False


def why_not_removable(store, record):
    """Why this node may not remove the task ('' when it may)."""
    if state_of(record) not in FINAL:
        return f'has not ended (status {record.get(Field.STATUS, "?")}): rrcloud kill it first'
    if not store.node.owns(record):  # (a farm's worker's task keeps its front-ends' node name)
        return f'belongs to node {record.get(Field.NODE, "?")}, which removes it itself'
    if process_here(store, record, Field.RUNNER, Field.RUNNER_START):
        # Its runner still frees its slot and calls the notifier, whose outcome goes to the log.
        return 'has just ended and its runner is still tidying up: try again in a moment'
    job_id = record.get(Field.JOB)
    if job_id and _exists(store, job_id):
        return f'is step {record.get(Field.STEP, "?")} of job {job_id}: removing the job removes its steps'
    return ''


def _remove_locked(store, record):
    """Remove a task (a job: its ended steps first) under the store lock the caller holds; the ids removed."""
    removed = []
    for step_id in filter(None, record.get(Field.STEPS, '').split(',')):
        try:
            step = store.read_task(check_task_id(step_id))
        except (NotFound, UsageError):
            continue
        if state_of(step) in FINAL and step.get(Field.JOB) == record[Field.ID]:
            store.remove_task(step)
            removed.append(step_id)
    store.remove_task(record)
    return removed + [record[Field.ID]]


def _exists(store, task_id):
    try:
        store.read_task(check_task_id(task_id))
        return True
    except (NotFound, UsageError):
        return False
