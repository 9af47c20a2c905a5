"""One task as the process working on it holds it, the way RQ's ``Job`` or
Supervisor's ``Subprocess`` carries one: its id, its store, its record (read
once; ``refresh()`` reads it again, on purpose) and the Config it runs with.

The runner passes a Task around instead of ``(store, task_id)`` and repeated
reads of the record; so does a farm's worker (``workrun``).
"""

from .names import check_task_id
from .states import finish_task
from .store import append_log


class Task:
    """A task's id, store, record and settings (``config``) for one process."""

    def __init__(self, store, task_id, config=None, record=None):
        self.store, self.id, self.config = store, check_task_id(task_id), config
        self.record = record if record is not None else store.read_task(self.id)

    def get(self, key, default=''):
        """A field of the record as it was last read."""
        return self.record.get(key, default)

    def refresh(self):
        """The record as it is now (a kill or a suspension shows there); kept."""
        self.record = self.store.read_task(self.id)
        return self.record

    def update(self, fields):
        """Write ``fields`` into the record (never its status) and keep them."""
        self.store.update_task(self.id, fields)
        self.record = dict(self.record, **{key: str(value) for key, value in fields.items()})

    def finish(self, status, **fields):
        """Move the task to its final ``status`` (the first final state wins,
        a kill's say); the record as it ended."""
        self.record = finish_task(self.store, self.id, status, **fields) or self.refresh()
        return self.record

    def log(self, line):
        """A line of rrcloud's own into the task's log (and a note event)."""
        append_log(self.store, self.id, line)

    @property
    def log_path(self):
        """The task's log file."""
        return self.store.log_path(self.id)
