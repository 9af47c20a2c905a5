"""Priorities and moves through the wrappers and HTTP; the queue across
restarts and reboots; a priority sent to a server.  The order itself
(priority, submission, moves) is in test_order.py.

A queue has ``maxTasks = 1`` and one task holding the slot: a shell job
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
from conftest import make_service, task_id_of
from helpers import (QUEUE_CONFIG, SH_SERVICE, files_of, gated_script, kill_group, plain_session, post_task,
    start_order, tool_started, wait_for)
from rrc.config import load_config
from rrc.identity import NodeIdentity, boot_id
from rrc.procs import process_start_time
from rrc.recovery import recover_store
from rrc.states import get_task, reconcile_task
from rrc.store import Store, format_record, parse_record

OTHER_BOOT = '0123abcd-0000-4000-8000-000000000000'
UNKNOWN_ID = '1796000000-00000-000001'


###############################################################################
# The command line's wrappers
###############################################################################

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
# HTTP
###############################################################################

@pytest.fixture
def server():
    """The WSGI application in-process, maxTasks = 1, with the gate service."""
    with deploy.running(deploy.deployment('wsgi', config=QUEUE_CONFIG, services={'gate': SH_SERVICE})) as deployment:
        yield deployment
        (deployment.root / 'gate-open').touch()


def test_priority_and_move_over_http(server):
    gate = post_task(server, 'gate', gated_script(server.root / 'gate-open'), filename='gate.sh', format='json')
    assert gate.status_code == 200, gate.text
    tool_started(server.store, gate.json()['id'])
    low = post_task(server, 'echo', 'low', format='json').json()
    high = post_task(server, 'echo', 'high', priority='7', format='json').json()
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
        refusals.append((post_task(server, 'echo', 'never', priority=bad, format='json'), 400, 'bad priority'))

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

def test_the_queue_survives_a_restart_of_the_server_and_starts_in_order(cli, workdir, tmp_path, embedded_server):
    """Submitted through the command line with --priority and moved through it:
    the server keeps both; stopped while they wait, started again, it starts them in order."""
    gate = tmp_path / 'gate-open'
    server = embedded_server(QUEUE_CONFIG, {'gate': SH_SERVICE})
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


def test_the_queue_survives_a_reboot(cli, workdir, held_slot):
    """After a reboot the gated task's processes are gone (it is interrupted);
    the queued tasks stay queued, even one whose record names the earlier
    boot, and the start-up recovery starts them in order."""
    gate_id, gate = held_slot
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
