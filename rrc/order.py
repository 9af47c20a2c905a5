"""The order of a node's queue: priorities, moves to the front or the back.

When every ``maxTasks`` slot of a node is taken, its queued tasks wait;
``dispatch`` starts them in this order, decided under the store lock from
their records:

1. ``queuePosition`` ascending.  A task never moved has none (0).  ``move
   front`` gives a task a position below every other queued task's (-1,
   -2, ...): it starts next, before every task queued now, whatever their
   priority, and before tasks submitted later, until another task is moved
   to the front.  ``move back`` gives it one above every other (1, 2, ...):
   it starts after every task queued now and submitted later, until another
   is moved to the back.
2. ``priority`` descending: -100 to 100, absent meaning 0.
3. The id: submission order (an id starts with its creation time).

A big queue stays cheap.  Dispatch reads no record while every slot is
taken, and when one frees it reads only the records of tasks marked in
``tasks/order/`` (a task submitted with a priority other than 0, or moved):
every other queued task has position 0 and priority 0, so its marker's name
tells its place.  A mark there is a hint to read the record, never the
order itself: it is written before the record says anything the order
depends on, and a stale one (its task left the queue) is skipped.
"""

import os

from .errors import NotFound, UsageError
from .names import DIGITS
from .schema import Field
from .states import State, state_of
from .store import ORDER_FOLDER, append_log, mark, marked

PRIORITY_MIN, PRIORITY_MAX = -100, 100
MOVES = ('front', 'back')
UNPLACED = (0, 0)  # (queuePosition, -priority) of a task that has neither


def parse_priority(text):
    """A priority as a client writes it: an integer from -100 to 100
    (``-5``, ``0``, ``100``; no sign but ``-``, no spaces); else UsageError."""
    text = str(text)
    digits = text[1:] if text.startswith('-') else text
    if not 0 < len(digits) <= 3 or not DIGITS.issuperset(digits) or not PRIORITY_MIN <= int(text) <= PRIORITY_MAX:
        raise UsageError(f'bad priority {text[:32]!r}: an integer from {PRIORITY_MIN} to {PRIORITY_MAX}')
    return int(text)


def mark_placed(store, task_id):
    """Mark a queued task whose record sets its place (dispatch reads its record)."""
    mark(store, ORDER_FOLDER, task_id)


def place_of(record):
    """(queuePosition, -priority) of a record: the first two keys of the order.
    A value no rrcloud wrote (a record edited by hand) counts as absent."""
    return (_number(record.get(Field.QUEUE_POSITION)), -_number(record.get(Field.PRIORITY)))


def _number(value):
    try:
        return int(value or 0)
    except ValueError:
        return 0


def queue_order(store, markers):
    """The ids of ``markers`` (queue markers, sorted by id) in the order they start.

    The caller holds the store lock.  Only the records of marked tasks are read.
    """
    places = _places(store, markers)
    if not places:
        return markers
    # Only the few placed tasks are sorted; the rest keep the markers' (id) order between them.
    ahead = sorted((place, task_id) for task_id, place in places.items() if place < UNPLACED)
    behind = sorted((place, task_id) for task_id, place in places.items() if place > UNPLACED)
    level = [task_id for task_id in markers if places.get(task_id, UNPLACED) == UNPLACED]
    return [task_id for _, task_id in ahead] + level + [task_id for _, task_id in behind]


def _places(store, markers):
    """{id: place} of the queued tasks marked in ``tasks/order``."""
    queued = set(markers)
    places = {}
    for task_id in marked(store, ORDER_FOLDER):
        if task_id in queued:
            try:
                places[task_id] = place_of(store.read_task(task_id))
            except NotFound:  # removed meanwhile: dispatch skips its marker
                continue
    return places


def move_in_queue(store, task_id, to, by):
    """Move a queued task of this node to the ``front`` or the ``back`` of its
    queue (see the module's docstring); returns its record.

    ``by`` says who asked: the task's log and event log keep it.  A task that
    is not queued here is refused (UsageError) and nothing changes.
    """
    if to not in MOVES:
        raise UsageError(f'to must be front or back, not {str(to)[:32]!r}')
    store.read_task(task_id)  # NotFound before anything is locked
    store.ensure()
    with store.lock():
        record = store.read_task(task_id)
        _check_movable(store, record)
        mark_placed(store, task_id)  # first: dispatch must read the record once it says more
        record[Field.QUEUE_POSITION] = str(_new_position(store, to))
        store.write_task(record)  # under the lock, as store.update_task would (status unchanged)
    append_log(store, task_id, f'rrcloud: task {task_id} moved to the {to} of the queue by {by}')
    return record


def _check_movable(store, record):
    """UsageError unless ``record`` is this node's task waiting in the queue."""
    task_id = record[Field.ID]
    state = state_of(record)
    waiting = os.path.exists(os.path.join(store.folder('queue'), task_id))
    if state != State.QUEUED or not waiting:
        shown = state or record.get(Field.STATUS) or 'unknown'
        raise UsageError(f'task {task_id} cannot move: it is {shown if state != State.QUEUED else "starting"} '
                         f'(only a queued task can)')
    if not store.node.owns(record):
        raise UsageError(f'task {task_id} cannot move: it is queued on node {record.get(Field.NODE)}, '
                         f'not on this one ({store.node.name})')


def _new_position(store, to):
    """A queuePosition before (front) or after (back) every queued task's."""
    positions = [position for position, _ in _places(store, marked(store, 'queue')).values()]
    return min(positions + [0]) - 1 if to == 'front' else max(positions + [0]) + 1
