"""How long a service's tasks usually take on this node: the median run time
of its latest complete tasks, read from their records.

A tool that names only its stages (Slic3r, OpenSCAD) gives no time left of
its own; this is the estimate of it.  It is read once, when a task's tool
starts, and bounded: the newest HISTORY_RECORDS records at most (task ids
begin with their creation time), a median of the last HISTORY_TASKS runs.

The history of every ended task, which outlives its record (``rrcloud
history``), is ``rrc/ledger.py``.
"""

from .errors import NotFound
from .ledger import median
from .schema import Field, TaskStatus

# Records read at most, newest first (a busy store of other services' tasks
# costs a runner no more than this).
HISTORY_RECORDS = 200
# The runs one estimate is the median of: recent enough to follow a changed
# machine, enough that one odd model does not decide it.
HISTORY_TASKS = 9


def usual_run_time(store, service, skip=None):
    """The median seconds of this node's latest complete tasks of ``service``
    (``skip``: a task id not to count, the one starting); None without any."""
    times = []
    for task_id in reversed(store.task_ids()[-HISTORY_RECORDS:]):
        seconds = run_time(store, task_id, service) if task_id != skip else None
        if seconds is not None:
            times.append(seconds)
            if len(times) == HISTORY_TASKS:
                break
    return median(times) if times else None


def run_time(store, task_id, service):
    """Seconds from start to end of a complete task of ``service`` run by this
    node; None for any other record (or one that cannot be read now; or one
    served from the result cache: its tool never ran)."""
    try:
        record = store.read_task(task_id)
        if record.get(Field.SERVICE) != service or record.get(Field.STATUS) != TaskStatus.COMPLETE \
                or not store.node.owns(record) or record.get(Field.REMOTE_ID) or record.get(Field.CACHE) == 'hit':
            return None
        seconds = float(record[Field.ETIME]) - float(record[Field.STIME])
    except (NotFound, OSError, KeyError, ValueError):  # gone meanwhile, torn, without its times: no history
        return None
    return seconds if seconds >= 0 else None

