"""Priorities and moves in a node's queue; the queue across restarts and reboots.

Every test has ``maxTasks = 1`` and one task holding the slot: a shell job
that runs until a gate file exists (unsandboxed, to see the gate).  The
tasks queued behind it are echo tasks; once the gate opens they run one at
a time, so the order they started in is the order of their ``stime``.  No
timing is asserted.  A reboot cannot happen here: it is played by what a
node sees of one, records naming another boot and processes that are gone.
"""
import os
import signal
import time
from pathlib import Path

import pytest

import deploy
from conftest import make_service, task_id_of, wait_until_done, write_config
from helpers import kill_group, plain_session, wait_for
from rrc.config import load_config
from rrc.events import read_events
from rrc.identity import NodeIdentity, boot_id
from rrc.cli.commands import user_name
from rrc.procs import process_is, process_start_time
from rrc.recovery import recover_store
from rrc.states import get_task, reconcile_task
from rrc.store import Store, format_record, mark, parse_record
from servers import EmbeddedServer

SH_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n'
QUEUE_CONFIG = 'maxTasks = 1\nsandbox = no\n'
OTHER_BOOT = '0123abcd-0000-4000-8000-000000000000'
UNKNOWN_ID = '1796000000-00000-000001'


def gated_script(gate):
    """A task that runs until ``gate`` exists."""
    return f'while [ ! -e {gate} ]; do sleep 0.05; done\necho done > "$1"\n'


@pytest.fixture
def gated(cli, workdir):
    """A store with maxTasks = 1 whose slot a gated task holds: (its id, the gate to open)."""
    write_config(workdir, QUEUE_CONFIG)
    make_service(workdir, 'gate', SH_SERVICE)
    gate = workdir.parent / 'gate-open'
    (workdir / 'gate.sh').write_text(gated_script(gate))
    task_id = task_id_of(cli('gate', 'gate.sh').out)
    assert 'queued' not in Store(workdir).read_task(task_id)  # dispatched by its submission
    tool_started(workdir, task_id)
    yield task_id, gate
    gate.touch()


def tool_started(root, task_id):
    """The record of a running task once its runner started the tool (and wrote its log)."""
    store = Store(root)
    return wait_for(lambda: store.read_task(task_id).get('pid') and store.read_task(task_id), 'the tool to start')


def start_order(root, task_ids, timeout=60):
    """The ids in the order their tasks started, once all of them ended complete."""
    records = {task_id: wait_until_done(root, task_id, timeout=timeout) for task_id in task_ids}
    assert all(r['status'] == 'complete' for r in records.values()), records
    return sorted(task_ids, key=lambda task_id: float(records[task_id]['stime']))


def files_of(root):
    """Every file under the store's tasks folder but the locks (what a refused request must not change)."""
    found = {}
    for folder, _, names in os.walk(Path(root) / 'tasks'):
        for name in names:
            path = Path(folder) / name
            if name != '.lock' and 'slots' not in path.parts:
                found[str(path.relative_to(root))] = path.read_bytes()
    return found


###############################################################################
# The order: priority, then submission
###############################################################################

def test_queued_tasks_start_by_priority_then_in_submission_order(cli, workdir, gated):
    gate_id, gate = gated
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


def test_a_wrapper_takes_the_priority_too(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE + 'fileOut = $id.txt\noutput = -o $fileOut\n')
    (workdir / 'job.sh').write_text('echo done > "$2"\n')  # sh job.sh -o OUT

    result = cli('job.sh', '--priority=9', '-oout.txt', prog='job.cloud')

    assert result.code == 0, result
    assert (workdir / 'out.txt').read_text() == 'done\n'
    (record,) = [parse_record(path.read_text()) for path in (workdir / 'tasks' / 'info').iterdir()]
    assert (record['priority'], record['status']) == ('9', 'complete')
    assert '--priority=N' in cli('--help', prog='job.cloud').out


###############################################################################
# Moves
###############################################################################

def test_move_front_and_back_reorder_the_queue(cli, workdir, gated):
    _, gate = gated
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


def test_bad_priorities_and_moves_are_refused_with_nothing_changed(cli, workdir, gated):
    gate_id, _ = gated
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
# HTTP
###############################################################################

@pytest.fixture
def server():
    """The WSGI application in-process, maxTasks = 1, with the gate service."""
    deployment = deploy.deployment('wsgi', config=QUEUE_CONFIG, services={'gate': SH_SERVICE})
    deployment.start()
    yield deployment
    (deployment.root / 'gate-open').touch()
    deployment.close()


def post(server, service, content, filename='in.txt', **fields):
    return server.session.post(server.url, data=dict(service=service, **fields),
                               files={'fileIn0': (filename, content)}, timeout=30)


def test_priority_and_move_over_http(server):
    gate = post(server, 'gate', gated_script(server.root / 'gate-open'), filename='gate.sh', format='json')
    assert gate.status_code == 200, gate.text
    tool_started(server.store, gate.json()['id'])
    low = post(server, 'echo', 'low', format='json').json()
    high = post(server, 'echo', 'high', priority='7', format='json').json()
    assert (high['priority'], high['queued']) == ('7', 'yes')

    def move(task_id, to, **headers):
        return server.session.get(server.url, params={'service': 'move', 'id': task_id, 'to': to, 'format': 'json'},
                                  headers=headers, timeout=30)
    before = files_of(server.store)
    foreign = move(low['id'], 'front', Origin='http://evil.example')
    refusals = [(move(low['id'], 'sideways'), 400, 'to must be front or back'),
                (move(gate.json()['id'], 'front'), 400, 'it is running (only a queued task can)'),
                (move(UNKNOWN_ID, 'front'), 404, f'no such task: {UNKNOWN_ID}'),
                (move('../x', 'front'), 400, 'bad task id')]
    for bad in ('101', 'x', '', '2.0'):
        refusals.append((post(server, 'echo', 'never', priority=bad, format='json'), 400, 'bad priority'))

    assert foreign.status_code == 403
    for answer, status, reason in refusals:
        assert answer.status_code == status, answer.text
        assert reason in answer.json()['error']
    assert files_of(server.store) == before

    moved = move(low['id'], 'front')
    assert moved.status_code == 200, moved.text
    assert moved.json()['queuePosition'] == '-1'
    assert 'moved to the front of the queue by 127.0.0.1 (HTTP)' in (server.store / 'tasks' / 'log' / low['id']).read_text()
    (server.root / 'gate-open').touch()
    assert start_order(server.store, [low['id'], high['id']]) == [low['id'], high['id']]


###############################################################################
# Restarts and reboots
###############################################################################

def test_the_queue_survives_a_restart_of_the_server_and_starts_in_order(cli, workdir, tmp_path):
    """Submitted through the command line with --priority and moved through it:
    the server keeps both; stopped while they wait, started again, it starts them in order."""
    gate = tmp_path / 'gate-open'
    server = EmbeddedServer(tmp_path / 'server', config=QUEUE_CONFIG, services={'gate': SH_SERVICE}).start()
    try:
        held = plain_session().post(server.url, data={'service': 'gate'},
                                    files={'fileIn0': ('gate.sh', gated_script(gate))}, timeout=30)
        assert held.status_code == 200, held.text
        local = {}
        for name, priority in [('low', '-5'), ('mid', '0'), ('high', '5'), ('moved', '-50')]:
            result = cli(f'--s={server.address}', f'--priority={priority}', 'echo', name)
            assert result.code == 0, result
            local[name] = task_id_of(result.out)
        remote = {name: Store(workdir).read_task(task_id)['remoteId'] for name, task_id in local.items()}
        assert server.records()[remote['high']]['priority'] == '5'
        assert 'priority' not in server.records()[remote['mid']]

        to_front = cli('move', local['moved'], 'front')  # the local record of a remote task: moved at its server
        to_back = cli(f'--s={server.address}', 'move', remote['high'], 'back')
        assert to_front.code == 0 and to_front.out.endswith(f'server: {server.url}\n'), to_front
        assert to_back.code == 0 and 'queuePosition: 1\n' in to_back.out, to_back

        server.stop()  # the server, the gated task's runner and tool: killed; the queue stays
        assert sorted(os.listdir(server.root / 'tasks' / 'queue')) == sorted(remote.values())
        server.start()

        order = start_order(server.root, list(remote.values()))
        assert order == [remote['moved'], remote['mid'], remote['low'], remote['high']]
        assert server.records()[parse_record(held.text)['id']]['error'] == 'interrupted'
    finally:
        gate.touch()
        server.stop()


def test_the_queue_survives_a_reboot(cli, workdir, gated):
    """After a reboot the gated task's processes are gone (it is interrupted);
    the queued tasks stay queued, even one whose record names the earlier
    boot, and the start-up recovery starts them in order."""
    gate_id, gate = gated
    store = Store(workdir)
    low = task_id_of(cli('--priority=-1', 'echo', 'low').out)
    high = task_id_of(cli('--priority=1', 'echo', 'high').out)
    waiting = plant_waiting_step(store)
    running = store.read_task(gate_id)
    for key in ('runner', 'pid'):  # what a power cut does to them
        kill_group(int(running[key]), signal.SIGKILL)
    wait_for(lambda: not process_start_time(int(running['runner'])), 'the runner to be gone')
    for task_id in (gate_id, high):  # written in the boot before
        record = dict(store.read_task(task_id), nodeBoot=OTHER_BOOT)
        (workdir / 'tasks' / 'info' / task_id).write_text(format_record(record))
    waiting_before = (workdir / 'tasks' / 'info' / waiting).read_bytes()
    assert get_task(store, high)['queued'] == 'yes'  # a reader after the reboot leaves it queued

    recover_store(store, load_config())  # what `rrcloud serve` does at start
    gate.touch()

    assert get_task(store, gate_id)['error'] == 'interrupted'
    assert start_order(workdir, [low, high]) == [high, low]
    assert (workdir / 'tasks' / 'info' / waiting).read_bytes() == waiting_before


def plant_waiting_step(store):
    """A pipeline step waiting for its input, written in the boot before: no process, no queue marker."""
    task_id = '1796000000-00000-000002'
    record = {'id': task_id, 'service': 'echo', 'status': 'busy', 'waiting': 'yes', 'ctime': f'{time.time() - 600:.5f}',
              'node': store.node.name, 'nodeBoot': OTHER_BOOT, 'in': 'tasks/in/x.txt', 'out': f'tasks/out/{task_id}'}
    Path(store.info_path(task_id)).write_text(format_record(record))
    return task_id


def test_a_reader_of_a_task_dispatch_just_started_leaves_it_running(workdir):
    """A record read while queued, judged after dispatch took its marker: reconcile
    looks again under the store lock instead of failing a task that runs."""
    import subprocess
    store = Store(workdir, NodeIdentity.of())
    store.ensure()
    sleeper = subprocess.Popen(['sleep', '300'], start_new_session=True)
    try:
        old = f'{time.time() - 600:.5f}'
        stale = {'id': UNKNOWN_ID, 'service': 'echo', 'status': 'busy', 'queued': 'yes', 'ctime': old,
                 'node': store.node.name}
        now = dict(stale, stime=f'{time.time():.5f}', runner=str(sleeper.pid),
                   runnerStart=str(process_start_time(sleeper.pid)), nodeBoot=boot_id())
        del now['queued']
        Path(store.info_path(UNKNOWN_ID)).write_text(format_record(now))

        judged = reconcile_task(store, stale)

        assert judged['status'] == 'busy' and 'queued' not in judged and 'error' not in judged
        assert parse_record(Path(store.info_path(UNKNOWN_ID)).read_text()) == now
    finally:
        sleeper.kill()
        sleeper.wait()


###############################################################################
# What a server is sent
###############################################################################

def test_a_priority_goes_to_a_server_only_when_given(cli, workdir):
    from servers import FakeServer
    answer = 'id: 1796000000-000001\nstatus: busy\n'
    fake = FakeServer(lambda request: (200, 'text/plain', answer)).start()
    try:
        assert cli(f'--s={fake.address}', 'echo', 'plain').code == 0
        assert cli(f'--s={fake.address}', '--priority=-7', 'echo', 'urgent').code == 0
    finally:
        fake.stop()
    plain, urgent = [request.body for request in fake.of('POST')]
    assert b'name="priority"' not in plain
    assert b'name="priority"\r\n\r\n-7\r\n' in urgent
