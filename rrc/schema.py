"""The task record: its status values (the state machine in ``states`` moves between them)."""

import enum


class TaskStatus(str, enum.Enum):
    """The spec's three states; other facts live in their own fields."""
    BUSY = 'busy'
    COMPLETE = 'complete'
    FAILED = 'failed'
