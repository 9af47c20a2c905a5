"""The task state machine (rrc/states.py): the table, the one writer of status, races.

Real store folders, real processes racing for the store lock; no mocks.
"""
import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrc.config import Config
from rrc.schema import YES, Field, TaskStatus
from rrc.states import (FINAL, INITIAL, STATES, TRANSITIONS, WIRE, IllegalMove, State, finish_task,
                        initial_fields, move_task, state_of, wire_fields)
from rrc.store import Store, format_record, parse_record
from rrc.queue import dispatch
from conftest import REPO

TASK_ID = '1796000000-00000-000001'
# In the table's own order (a frozenset's order changes from process to process,
# and parallel test workers must collect the same list).
ALLOWED = [(a, b) for a, moves in TRANSITIONS.items() for b in STATES if b in moves]
FORBIDDEN = [(a, b) for a, b in itertools.product(STATES, STATES) if b not in TRANSITIONS[a]]


def plant(root, state, **fields):
    """A record in ``state`` written straight to disk; returns its path."""
    store = Store(root)
    store.ensure()
    record = {Field.ID: TASK_ID, 'service': 'echo', Field.CTIME: f'{time.time():.5f}',
              **wire_fields(state), **fields}
    path = Path(store.info_path(TASK_ID))
    path.write_text(format_record(record))
    return path


def test_the_table_names_every_state_and_only_states():
    assert set(TRANSITIONS) == set(STATES) == set(WIRE)
    assert all(set(moves) <= set(STATES) for moves in TRANSITIONS.values())
    assert FINAL == {State.COMPLETE, State.FAILED}
    assert State.SUSPENDED in TRANSITIONS[State.RUNNING] and State.QUEUED in TRANSITIONS[State.WAITING]


@pytest.mark.parametrize('state', list(STATES))
def test_every_state_shows_a_spec_word_and_reads_back(state):
    fields = wire_fields(state)
    assert fields[Field.STATUS] in ('busy', 'complete', 'failed')
    assert state_of(fields) == state
    assert (fields[Field.STATUS] == 'busy') == (state not in FINAL)


def test_queued_is_busy_with_queued_yes_on_the_wire():
    assert wire_fields(State.QUEUED) == {'status': 'busy', 'queued': 'yes'}
    assert wire_fields(State.RUNNING) == {'status': 'busy'}


@pytest.mark.parametrize('current, to', ALLOWED, ids=[f'{a}->{b}' for a, b in ALLOWED])
def test_every_allowed_transition_works(tmp_path, current, to):
    plant(tmp_path, current, note='kept')

    moved = move_task(Store(tmp_path), TASK_ID, to, {Field.ERROR: 'why'} if to == State.FAILED else None)

    on_disk = parse_record(Path(Store(tmp_path).info_path(TASK_ID)).read_text())
    assert moved == on_disk
    assert state_of(on_disk) == to
    assert on_disk[Field.STATUS] == WIRE[to][0]
    flags = {f for f in (Field.QUEUED, Field.SUSPENDED, Field.WAITING) if f in on_disk}
    assert flags == ({WIRE[to][1]} if WIRE[to][1] else set())
    assert all(on_disk[flag] == YES for flag in flags)
    assert on_disk['note'] == 'kept'


@pytest.mark.parametrize('current, to', FORBIDDEN, ids=[f'{a}->{b}' for a, b in FORBIDDEN])
def test_every_other_transition_is_refused_and_writes_nothing(tmp_path, current, to):
    path = plant(tmp_path, current)
    before = path.read_bytes()

    if current in FINAL:  # someone ended it first: a lost race, not an error
        assert move_task(Store(tmp_path), TASK_ID, to) is None
    else:
        with pytest.raises(IllegalMove, match=f'cannot go from {current} to {to}'):
            move_task(Store(tmp_path), TASK_ID, to)

    assert path.read_bytes() == before


def test_a_move_that_expects_another_state_is_refused(tmp_path):
    path = plant(tmp_path, State.SUSPENDED)
    before = path.read_bytes()

    with pytest.raises(IllegalMove, match='cannot go from suspended to running'):
        move_task(Store(tmp_path), TASK_ID, State.RUNNING, expect=State.QUEUED)
    assert path.read_bytes() == before
    assert state_of(move_task(Store(tmp_path), TASK_ID, State.RUNNING, expect=State.SUSPENDED)) == State.RUNNING


@pytest.mark.parametrize('state', [State.RUNNING, State.SUSPENDED, State.WAITING])
def test_dispatch_starts_only_queued_tasks(tmp_path, capfd, state):
    """A queue marker of a task in any other state (written by hand) starts nothing."""
    path = plant(tmp_path, state)
    before = path.read_bytes()
    (tmp_path / 'tasks' / 'queue' / TASK_ID).write_text('')
    config = Config()
    config.dir = str(tmp_path)

    dispatch(Store(tmp_path), config)

    assert path.read_bytes() == before
    assert not (tmp_path / 'tasks' / 'queue' / TASK_ID).exists()
    assert not list((tmp_path / 'tasks' / 'running').iterdir())
    assert 'refused a queue marker' in capfd.readouterr().err


def test_a_status_word_the_machine_never_writes_is_left_alone(tmp_path):
    path = plant(tmp_path, State.RUNNING, status='comp')
    before = path.read_bytes()

    assert state_of(parse_record(before.decode())) is None
    assert move_task(Store(tmp_path), TASK_ID, State.FAILED) is None
    assert path.read_bytes() == before


def test_a_queued_flag_of_another_value_is_not_queued():
    """Only ``queued: yes`` queues (a marker for anything else never starts a second run)."""
    assert state_of({'status': 'busy', 'queued': 'no'}) == State.RUNNING


@pytest.mark.parametrize('state', list(STATES))
def test_records_are_created_only_in_initial_states(state):
    if state in INITIAL:
        assert initial_fields(state) == wire_fields(state)
    else:
        with pytest.raises(ValueError):
            initial_fields(state)


def test_update_task_refuses_to_write_status(tmp_path):
    path = plant(tmp_path, State.RUNNING)
    before = path.read_bytes()
    store = Store(tmp_path)

    for changes, remove in (({'status': 'complete'}, ()), ({'progress': '1/2'}, ('status',))):
        with pytest.raises(ValueError, match='move_task'):
            store.update_task(TASK_ID, changes, remove=remove)

    assert path.read_bytes() == before
    assert store.update_task(TASK_ID, {'progress': '1/2'})['progress'] == '1/2'


def test_finish_task_stamps_the_end_and_the_output_size(tmp_path):
    plant(tmp_path, State.RUNNING, out=f'tasks/out/{TASK_ID}.txt')
    (tmp_path / 'tasks' / 'out' / f'{TASK_ID}.txt').write_text('12345')

    record = finish_task(Store(tmp_path), TASK_ID, TaskStatus.COMPLETE, exitCode=0)

    assert record['status'] == 'complete' and record['exitCode'] == '0'
    assert record['sizeOut'] == '5' and float(record['etime']) <= time.time()
    assert finish_task(Store(tmp_path), TASK_ID, TaskStatus.FAILED, error='late') is None
    assert Store(tmp_path).read_task(TASK_ID)['status'] == 'complete'


# One racer: waits for the start signal, then tries its final state; prints what it got.
RACER = '''
import os, sys, time
sys.path.insert(0, sys.argv[1])
from rrc.states import finish_task
from rrc.store import Store
root, task_id, status, name, go = sys.argv[2:7]
while not os.path.exists(go):
    time.sleep(0.001)
won = finish_task(Store(root), task_id, status, error=name, exitCode=name)
print('won' if won else 'lost')
'''


@pytest.mark.parametrize('start', [State.QUEUED, State.RUNNING])
def test_concurrent_finishers_leave_exactly_one_final_state(tmp_path, start):
    racers = 12
    plant(tmp_path, start)
    go = tmp_path / 'go'
    processes = [subprocess.Popen(
        [sys.executable, '-c', RACER, str(REPO), str(tmp_path), TASK_ID,
         'failed' if number % 2 or start == State.QUEUED else 'complete', f'racer{number}', str(go)],
        stdout=subprocess.PIPE, text=True) for number in range(racers)]
    time.sleep(0.5)  # let them all start and wait
    go.touch()
    results = {f'racer{number}': p.communicate(timeout=60)[0].strip() for number, p in enumerate(processes)}

    assert all(p.returncode == 0 for p in processes), results
    winners = [name for name, result in results.items() if result == 'won']
    assert len(winners) == 1 and sorted(results.values()).count('lost') == racers - 1, results
    record = Store(tmp_path).read_task(TASK_ID)
    assert record['exitCode'] == winners[0]
    assert record['error'] == winners[0]
    assert state_of(record) in FINAL and 'queued' not in record


@pytest.mark.parametrize('state, counted', [(State.RUNNING, True), (State.COMPLETE, False)])
def test_meta_counts_a_live_runner_busy_only_while_its_task_runs(tmp_path, state, counted):
    """Between its final state and its exit a runner frees its slot and calls
    the notifier: the task has ended, and meta must not call it busy."""
    import os
    from rrc.node import meta_record
    from rrc.procs import process_start_time
    from rrc.store import mark
    me = os.getpid()  # a live process stands for the runner
    plant(tmp_path, state, **{Field.RUNNER: str(me), Field.RUNNER_START: process_start_time(me)})
    store = Store(tmp_path)
    mark(store, 'running', TASK_ID)

    meta = meta_record(store, Config(), services={})

    assert meta['busy'] == ('1' if counted else '0')
