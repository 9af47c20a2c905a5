"""The order of a node's queue (rrc/order.py): priorities, moves to the front
or the back, the order dispatch starts tasks in.

Through the command line: a store with ``maxTasks = 1`` whose slot a task
holds until a gate file exists (the ``held_slot`` fixture); the tasks queued
behind it are echo tasks, and once the gate opens they run one at a time, so
the order they started in is the order of their ``stime``.  No timing is
asserted.  The functions themselves on a real store: records and queue
markers written as a submission writes them, nothing started.  Priorities
over HTTP, across restarts and reboots, and sent to servers are in
test_priority.py.
"""
import os

import pytest

from conftest import task_id_of
from helpers import files_of, start_order, wait_for, wait_until_done
from rrc.cli.commands import user_name
from rrc.errors import NotFound, UsageError
from rrc.events import read_events
from rrc.order import ORDER_FOLDER, parse_priority, place_of, queue_order, move_in_queue
from rrc.procs import process_is
from rrc.store import Store, format_record, mark, marked

UNKNOWN_ID = '1796000000-00000-000001'
# No task of ``queued_store``'s has this id.
STALE_ID = '1796000000-00000-000999'


###############################################################################
# The order: priority, then submission
###############################################################################

def test_queued_tasks_start_by_priority_then_in_submission_order(cli, workdir, held_slot):
    gate_id, gate = held_slot
    submitted = {}
    for name, options in [('a0', []), ('b5', ['--priority=5']), ('c-3', ['--priority', '-3']),
                          ('d5', ['--priority=5']), ('e0', ['--priority=0']), ('f100', ['--priority=100'])]:
        result = cli(*options, 'echo', name)
        assert result.code == 0, result
        submitted[name] = task_id_of(result.out)

    info = cli('info', submitted['b5']).out
    assert 'priority: 5\n' in info and 'queued: yes\n' in info
    assert 'priority' not in Store(workdir).read_task(submitted['e0'])  # 0 is the default: not written
    gate.touch()

    order = start_order(workdir, list(submitted.values()))

    assert [name for task_id in order for name, i in submitted.items() if i == task_id] == \
        ['f100', 'b5', 'd5', 'a0', 'e0', 'c-3']
    assert wait_until_done(workdir, gate_id)['status'] == 'complete'
    assert os.listdir(workdir / 'tasks' / 'order') == []  # the hints went with their tasks


###############################################################################
# Moves
###############################################################################

def test_move_front_and_back_reorder_the_queue(cli, workdir, held_slot):
    _, gate = held_slot
    a = task_id_of(cli('echo', 'a').out)
    b = task_id_of(cli('--priority=50', 'echo', 'b').out)
    c = task_id_of(cli('echo', 'c').out)
    d = task_id_of(cli('--priority=-10', 'echo', 'd').out)

    front = cli('move', d, 'front')
    back = cli('move', b, 'back')
    again = cli('move', c, 'front')

    assert front.code == 0, front
    assert front.out == f'id: {d}\nstatus: busy\nqueued: yes\npriority: -10\nqueuePosition: -1\n'
    assert back.out == f'id: {b}\nstatus: busy\nqueued: yes\npriority: 50\nqueuePosition: 1\n'
    assert again.out.endswith('queuePosition: -2\n'), again
    log = (workdir / 'tasks' / 'log' / d).read_text()
    assert f'rrcloud: task {d} moved to the front of the queue by the command line (user ' in log
    notes = [e.data['text'] for e in read_events(Store(workdir), b) if e.kind == 'note']
    assert notes == [f'task {b} moved to the back of the queue by the command line (user {user_name()})']
    late = task_id_of(cli('--priority=100', 'echo', 'late').out)  # after the front, before the back
    gate.touch()

    assert start_order(workdir, [a, b, c, d, late]) == [c, d, late, a, b]


def test_bad_priorities_and_moves_are_refused_with_nothing_changed(cli, workdir, held_slot):
    gate_id, _ = held_slot
    queued = task_id_of(cli('echo', 'waits').out)
    done_store = Store(workdir)
    before = files_of(workdir)

    for bad in ('101', '-101', 'high', '1.5', '+5', ' 5', '5_0', '٣', '1e2'):
        result = cli(f'--priority={bad}', 'echo', 'x')
        assert (result.code, result.err) == (2, f'rrcloud: error: bad priority {bad!r}: an integer '
                                                f'from -100 to 100\n'), result
    assert cli('--priority=', 'echo', 'x').code == 2
    assert cli('--priority=5', 'info').err == \
        'rrcloud: error: --priority goes with a task to start (rrcloud move reorders a queued one)\n'
    for args in ([queued, 'sideways'], [queued], [queued, 'front', 'back'], ['not-an-id', 'front']):
        assert cli('move', *args).code == 2, args
    running = cli('move', gate_id, 'front')
    assert (running.code, running.err) == (
        2, f'rrcloud: error: task {gate_id} cannot move: it is running (only a queued task can)\n')
    unknown = cli('move', UNKNOWN_ID, 'back')
    assert (unknown.code, unknown.err) == (3, f'rrcloud: error: no such task: {UNKNOWN_ID}\n')

    assert files_of(workdir) == before
    assert done_store.read_task(queued)['queued'] == 'yes'


def test_a_finished_or_another_nodes_task_is_not_moved(cli, workdir):
    finished = task_id_of(cli('echo', 'quick').out)
    ended = wait_until_done(workdir, finished)
    wait_for(lambda: not process_is(ended['runner'], ended['runnerStart']), 'its runner to tidy up and end')
    store = Store(workdir)
    record = dict(store.read_task(finished), id=UNKNOWN_ID, status='busy', queued='yes', node='beta')
    (workdir / 'tasks' / 'info' / UNKNOWN_ID).write_text(format_record(record))
    mark(store, 'queue', UNKNOWN_ID)
    before = files_of(workdir)

    done = cli('move', finished, 'front')
    other = cli('move', UNKNOWN_ID, 'front')

    assert (done.code, done.err) == (
        2, f'rrcloud: error: task {finished} cannot move: it is complete (only a queued task can)\n')
    assert other.code == 2 and f'task {UNKNOWN_ID} cannot move: it is queued on node beta' in other.err
    assert files_of(workdir) == before


###############################################################################
# The functions on a real store (nothing started)
###############################################################################

def queued_store(root, places):
    """A store of this node with one queued echo task per entry of ``places``
    (``{'priority': ..., 'queuePosition': ...}``, empty for neither), ids in
    submission order, with their queue markers; a task with a place is marked
    in tasks/order as a submission or a move marks it.  Returns (store, ids)."""
    store = Store(root)
    store.ensure()
    ids = []
    for number, fields in enumerate(places, 1):
        task_id = f'1796000000-00000-{number:06d}'
        record = {'id': task_id, 'service': 'echo', 'status': 'busy', 'queued': 'yes',
                  'ctime': '1796000000.00000', 'node': store.node.name, **fields}
        (root / 'tasks' / 'info' / task_id).write_text(format_record(record))
        mark(store, 'queue', task_id)
        if fields:
            mark(store, ORDER_FOLDER, task_id)
        ids.append(task_id)
    return store, ids


def test_queue_order_is_position_then_priority_then_submission(tmp_path):
    store, ids = queued_store(tmp_path, [
        {},                                            # 1: level
        {'priority': '5'},                             # 2
        {'queuePosition': '1'},                        # 3: at the back
        {'priority': '5'},                             # 4: as 2, submitted later
        {'queuePosition': '-1', 'priority': '-9'},     # 5: at the front, whatever its priority
        {},                                            # 6: level
        {'queuePosition': '-2'},                       # 7: moved to the front after 5
        {'priority': '-3'},                            # 8
        {'queuePosition': '1', 'priority': '7'},       # 9: at the back with 3, its priority first
        {'priority': '0', 'queuePosition': '0'},       # 10: marked, but level: its id's place
    ])

    order = queue_order(store, marked(store, 'queue'))

    assert [ids.index(task_id) + 1 for task_id in order] == [7, 5, 2, 4, 1, 6, 10, 8, 9, 3]


def test_queue_order_reads_only_the_marked_records_and_skips_what_left_the_queue(tmp_path):
    # Unmarked tasks keep their markers' order even when their records (written
    # by hand here) say otherwise: only the marks send dispatch to a record.
    store, ids = queued_store(tmp_path, [{}, {}, {'priority': '9'}, {}])
    unmarked = store.read_task(ids[1])
    (tmp_path / 'tasks' / 'info' / ids[1]).write_text(format_record(dict(unmarked, priority='50')))
    mark(store, ORDER_FOLDER, STALE_ID)            # a stale mark: no such task
    mark(store, ORDER_FOLDER, ids[3])              # marked, then its record went (removed meanwhile)
    os.unlink(tmp_path / 'tasks' / 'info' / ids[3])

    assert queue_order(store, marked(store, 'queue')) == [ids[2], ids[0], ids[1], ids[3]]
    assert queue_order(store, ids[:2]) == ids[:2]  # the markers asked about, no others


@pytest.mark.parametrize('fields, place', [
    ({}, (0, 0)),
    ({'priority': '7'}, (0, -7)),
    ({'priority': '-100', 'queuePosition': '3'}, (3, 100)),
    ({'priority': 'high', 'queuePosition': '1.5'}, (0, 0)),   # edited by hand: counts as absent
    ({'priority': '', 'queuePosition': ''}, (0, 0)),
], ids=['none', 'priority', 'both', 'not-numbers', 'empty'])
def test_place_of_a_record(fields, place):
    assert place_of(dict({'id': UNKNOWN_ID}, **fields)) == place


@pytest.mark.parametrize('text, value', [
    ('-100', -100), ('100', 100), ('0', 0), ('-0', 0), ('-5', -5), ('007', 7), (42, 42),
])
def test_parse_priority_takes_integers_from_minus_100_to_100(text, value):
    assert parse_priority(text) == value


@pytest.mark.parametrize('text', ['101', '-101', '1000', '-1000', '', '-', '--5', '+5', ' 5', '5 ',
                                  '٣', '1e2', '0x10', '5_0', '1.0'])
def test_parse_priority_refuses_anything_else_naming_it(text):
    with pytest.raises(UsageError) as refused:
        parse_priority(text)
    assert str(refused.value) == f'bad priority {text!r}: an integer from -100 to 100'


def test_a_long_bad_priority_is_named_by_its_start():
    with pytest.raises(UsageError) as refused:
        parse_priority('9' * 100)
    assert str(refused.value) == f"bad priority '{'9' * 32}': an integer from -100 to 100"


def test_a_move_is_placed_against_the_tasks_queued_now(tmp_path):
    """Front is one before every queued task's position, back one after:
    a task that left the queue (dispatched) no longer counts."""
    store, (first, second, third) = queued_store(tmp_path, [{}, {}, {}])

    assert move_in_queue(store, first, 'front', 'a test')['queuePosition'] == '-1'
    assert move_in_queue(store, second, 'front', 'a test')['queuePosition'] == '-2'
    assert move_in_queue(store, third, 'back', 'a test')['queuePosition'] == '1'
    os.unlink(tmp_path / 'tasks' / 'queue' / second)  # dispatch took it: its -2 no longer counts
    assert move_in_queue(store, third, 'front', 'a test')['queuePosition'] == '-2'

    assert queue_order(store, marked(store, 'queue')) == [third, first]
    assert (tmp_path / 'tasks' / 'log' / third).read_text().splitlines() == [
        f'rrcloud: task {third} moved to the back of the queue by a test',
        f'rrcloud: task {third} moved to the front of the queue by a test']


def test_a_move_that_is_refused_changes_nothing(tmp_path):
    store, (queued,) = queued_store(tmp_path, [{}])
    before = files_of(tmp_path)

    with pytest.raises(UsageError, match="to must be front or back, not 'top'"):
        move_in_queue(store, queued, 'top', 'a test')
    with pytest.raises(NotFound):
        move_in_queue(store, STALE_ID, 'front', 'a test')
    os.unlink(tmp_path / 'tasks' / 'queue' / queued)  # its record still says queued: dispatch is starting it
    with pytest.raises(UsageError, match=f'task {queued} cannot move: it is starting'):
        move_in_queue(store, queued, 'front', 'a test')

    assert files_of(tmp_path) == {name: data for name, data in before.items() if name != f'tasks/queue/{queued}'}
