"""Node identity: several nodes on one store folder, each judging only its own tasks.

Real store folders, real processes (live and dead pids, real runners, real
``rrcloud serve`` servers); no mocks.  A second machine cannot run here: a
node of another machine is played by records and temp files that name
another node and another boot, which is all a node ever sees of it.
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rrc.config import Config, load_config
from rrc.errors import ConfigError
from rrc.identity import NodeIdentity, boot_id, boot_tag, default_node_name, is_node_name
from rrc.procs import process_start_time
from rrc.recovery import TEMP_FILE_MAX_AGE, recover_store
from rrc.states import get_task, list_tasks, queue_is_full, still_running
from rrc.store import Store, format_record, mark, new_unique_name, parse_record, temp_writer
from rrc.queue import acquire_slot, dispatch
from rrc.control import kill_task
from conftest import make_service, write_config
from helpers import SH_SERVICE, dead_pid, gated_script, plain_session, submit, wait_for

OTHER_BOOT = '0123abcd-0000-4000-8000-000000000000'


def here(root, name='alpha'):
    """The store as node ``name`` of this machine sees it."""
    store = Store(root, NodeIdentity(name, boot_id()))
    store.ensure()
    return store


def plant(store, **fields):
    """A busy record written straight to disk, as some node left it; returns (id, its bytes)."""
    task_id = new_unique_name()
    time.sleep(0.001)
    past = f'{time.time() - 600:.5f}'
    record = dict({'id': task_id, 'service': 'echo', 'status': 'busy', 'ctime': past, 'stime': past,
                   'in': 'tasks/in/x.txt', 'out': f'tasks/out/{task_id}'}, **fields)
    data = format_record(record).encode()
    Path(store.info_path(task_id)).write_bytes(data)
    return task_id, data


def raw(store, task_id):
    return Path(store.info_path(task_id)).read_bytes()


@pytest.fixture
def sleeper():
    """A live process in its own group, with its pid and kernel start time; killed afterwards."""
    process = subprocess.Popen(['sleep', '300'], start_new_session=True)
    try:
        yield process, str(process.pid), process_start_time(process.pid)
    finally:
        process.kill()
        process.wait()


###############################################################################
# Identity and config
###############################################################################

def test_node_name_defaults_to_the_host_name_and_is_checked(workdir):
    assert Config().nodeName == default_node_name()
    assert is_node_name(default_node_name())
    write_config(workdir, 'nodeName = pi-3.shelf_2\n')
    assert load_config().nodeName == 'pi-3.shelf_2'
    for bad in ('..', '.hidden', '-x', 'a/b', 'x' * 65, 'a b'):
        write_config(workdir, f'nodeName = {bad}\n')
        with pytest.raises(ConfigError, match='nodeName'):
            load_config()


def test_temp_file_names_carry_the_writers_pid_and_boot():
    assert temp_writer() == f'{os.getpid()}@{boot_tag()}'
    assert len(boot_tag()) == 8 and boot_tag() in boot_id().replace('-', '')


###############################################################################
# Liveness and reconcile: only one's own tasks
###############################################################################

def test_another_nodes_busy_task_is_shown_as_its_record_says(tmp_path):
    store = here(tmp_path)
    gone = dead_pid()
    task_id, before = plant(store, node='beta', nodeBoot=boot_id(), runner=str(gone), runnerStart='1')
    mark(store, 'running', task_id)

    assert get_task(store, task_id)['status'] == 'busy'
    assert still_running(store, task_id)
    assert [r['id'] for r in list_tasks(store, Config())] == [task_id]
    assert raw(store, task_id) == before
    assert (tmp_path / 'tasks' / 'running' / task_id).exists()


def test_a_record_without_a_node_is_this_nodes_own(tmp_path):
    """Stores written before nodes had names keep working: their tasks are reconciled."""
    store = here(tmp_path)
    task_id, _ = plant(store, runner=str(dead_pid()), runnerStart='1')

    record = get_task(store, task_id)

    assert record['status'] == 'failed' and record['error'] == 'interrupted'


def test_own_busy_task_with_a_dead_runner_is_reconciled(tmp_path):
    store = here(tmp_path)
    task_id, _ = plant(store, node='alpha', nodeBoot=boot_id(), runner=str(dead_pid()), runnerStart='1')

    assert get_task(store, task_id)['error'] == 'interrupted'


def test_after_a_reboot_old_runners_are_gone_and_their_pids_are_never_signalled(tmp_path, sleeper):
    """A pid and start time of an earlier boot may name an unrelated live process now."""
    process, pid, start = sleeper
    store = here(tmp_path)
    task_id, _ = plant(store, node='alpha', nodeBoot=OTHER_BOOT, runner=pid, runnerStart=start,
                       pid=pid, pidStart=start)
    mark(store, 'running', task_id)

    assert not still_running(store, task_id)
    record = store.read_task(task_id)
    assert record['status'] == 'failed' and record['error'] == 'interrupted'
    assert process.poll() is None, 'a process of this boot was signalled for a task of the last one'
    assert not (tmp_path / 'tasks' / 'running' / task_id).exists()


def test_the_same_boot_still_judges_by_pid_and_start_time(tmp_path, sleeper):
    _, pid, start = sleeper
    store = here(tmp_path)
    task_id, before = plant(store, node='alpha', nodeBoot=boot_id(), runner=pid, runnerStart=start)
    mark(store, 'running', task_id)

    assert still_running(store, task_id)
    assert raw(store, task_id) == before


def test_expiry_removes_only_this_nodes_finished_tasks(tmp_path):
    store = here(tmp_path)
    old = {'status': 'complete', 'etime': f'{time.time() - 7200:.5f}'}
    theirs, theirs_bytes = plant(store, node='beta', **old)
    ours, _ = plant(store, node='alpha', **old)
    legacy, _ = plant(store, **old)
    config = Config()
    config.maxDataRetention = 1.0

    kept = list_tasks(store, config)

    assert [r['id'] for r in kept] == [theirs]
    assert raw(store, theirs) == theirs_bytes
    assert store.task_ids() == [theirs]


def test_killing_another_nodes_task_goes_through_its_record_only(tmp_path, sleeper):
    """Its runner sees the final state and stops the tool; this node signals no pid of another node."""
    process, pid, start = sleeper
    store = here(tmp_path)
    task_id, _ = plant(store, node='beta', nodeBoot=boot_id(), runner=pid, runnerStart=start,
                       pid=pid, pidStart=start)

    record = kill_task(store, task_id, 'test')

    assert record['status'] == 'failed' and record['error'] == 'killed'
    assert store.read_task(task_id)['status'] == 'failed'
    time.sleep(0.2)
    assert process.poll() is None


###############################################################################
# Queue, slots, recovery
###############################################################################

def test_dispatch_leaves_another_nodes_queued_tasks_alone(tmp_path):
    store = here(tmp_path)
    task_id, before = plant(store, node='beta', queued='yes')
    (tmp_path / 'tasks' / 'queue' / task_id).write_text('maxTasks = 1\n')
    config = Config()
    config.dir = str(tmp_path)

    dispatch(store, config)

    assert raw(store, task_id) == before
    assert (tmp_path / 'tasks' / 'queue' / task_id).read_text() == 'maxTasks = 1\n'
    assert not list((tmp_path / 'tasks' / 'running').iterdir())


def test_another_nodes_queued_tasks_do_not_fill_this_nodes_queue(tmp_path):
    store = here(tmp_path)
    for node in ('beta', 'beta', 'alpha'):
        task_id, _ = plant(store, node=node, queued='yes')
        (tmp_path / 'tasks' / 'queue' / task_id).write_text('')

    assert not queue_is_full(store, 2)
    assert queue_is_full(store, 1)
    assert queue_is_full(here(tmp_path, 'beta'), 2)


def test_each_node_has_its_own_slots(tmp_path):
    alpha, beta = here(tmp_path, 'alpha'), here(tmp_path, 'beta')
    held = acquire_slot(alpha, 1)
    try:
        assert held is not None
        assert acquire_slot(alpha, 1) is None  # alpha's one slot is taken ...
        other = acquire_slot(beta, 1)          # ... beta's is not
        assert other is not None
        os.close(other)
    finally:
        os.close(held)
    assert sorted(os.listdir(tmp_path / 'tasks' / 'slots')) == ['alpha', 'beta']


def test_recovery_judges_temp_files_only_by_writers_it_can_see(tmp_path):
    store = here(tmp_path)
    info, inputs = tmp_path / 'tasks' / 'info', tmp_path / 'tasks' / 'in'
    gone, tag = dead_pid(), boot_tag()
    # This boot's writer is dead: left over.  Another boot's (another machine's)
    # writer cannot be judged here: its upload in flight stays until it is old.
    ours_dead = info / f'.{new_unique_name()}.{gone}@{tag}.{new_unique_name()}.tmp'
    ours_live = inputs / f'.{new_unique_name()}.{os.getpid()}@{tag}.part'
    theirs_in_flight = inputs / f'.{new_unique_name()}.{gone}@0123abcd.part'
    theirs_stale = info / f'.{new_unique_name()}.{gone}@0123abcd.{new_unique_name()}.tmp'
    for path in (ours_dead, ours_live, theirs_in_flight, theirs_stale):
        path.write_text('partial')
    stale = time.time() - TEMP_FILE_MAX_AGE - 60
    os.utime(theirs_stale, (stale, stale))
    config = Config()
    config.dir = str(tmp_path)

    recover_store(store, config)

    assert not ours_dead.exists() and not theirs_stale.exists()
    assert ours_live.exists() and theirs_in_flight.exists()


def test_recovery_leaves_another_nodes_work_folders(tmp_path):
    store = here(tmp_path)
    theirs_busy, _ = plant(store, node='beta', runner=str(dead_pid()), runnerStart='1')
    theirs_done, _ = plant(store, node='beta', status='complete', etime=f'{time.time():.5f}')
    ours_done, _ = plant(store, node='alpha', status='complete', etime=f'{time.time():.5f}')
    work = tmp_path / 'tasks' / 'work'
    for task_id in (theirs_busy, theirs_done, ours_done, '1796000000-00000-000009'):
        (work / task_id).mkdir(parents=True)
    config = Config()
    config.dir = str(tmp_path)

    recover_store(store, config)

    assert sorted(os.listdir(work)) == sorted([theirs_busy, theirs_done])


def test_meta_counts_this_nodes_tasks(tmp_path, sleeper):
    from rrc.node import meta_record
    _, pid, start = sleeper
    store = here(tmp_path)
    for node in ('alpha', 'beta', 'beta'):
        task_id, _ = plant(store, node=node, nodeBoot=boot_id(), runner=pid, runnerStart=start)
        mark(store, 'running', task_id)
    for node in ('alpha', 'alpha', 'beta'):
        task_id, _ = plant(store, node=node, queued='yes')
        (tmp_path / 'tasks' / 'queue' / task_id).write_text('')
    config = Config()
    config.dir = str(tmp_path)

    meta = meta_record(store, config, {})

    assert (meta['busy'], meta['queued'], meta['tasks']) == ('1', '2', '6')


###############################################################################
# Two live servers on one store folder
###############################################################################

def records(shared):
    """Every record of the shared store as written, read without reconciling."""
    folder = shared / 'tasks' / 'info'
    return {p.name: parse_record(p.read_text()) for p in folder.iterdir() if not p.name.startswith('.')}


def listing(server):
    """The server's ``info`` of every task, by id."""
    return {record['id']: record for record in server.list_tasks()}


def job(server, gate):
    """A ``job`` task on ``server`` that runs until ``gate`` exists (its tool
    runs unsandboxed to see it: ``sandbox = no``); its id."""
    return submit(server, 'job', gated_script(gate), 'job.sh')


def test_two_servers_on_one_store_never_harm_each_others_tasks(tmp_path, embedded_server):
    shared = tmp_path / 'shared'
    shared.mkdir()
    make_service(shared, 'job', SH_SERVICE)
    gate = tmp_path / 'gate'
    config = f'dir = {shared}\nmaxTasks = 2\nsandbox = no\n'
    servers = {name: embedded_server(config + f'nodeName = {name}\n', root=tmp_path / name, start=False)
               for name in ('alpha', 'beta')}
    # A third node that crashed (another machine, gone): its busy task, its upload in flight.
    store = here(shared, 'alpha')
    gamma_task, gamma_bytes = plant(store, node='gamma', nodeBoot=OTHER_BOOT, runner=str(dead_pid()),
                                    runnerStart='1')
    gamma_upload = shared / 'tasks' / 'in' / f'.{new_unique_name()}.{os.getpid()}@0123abcd.part'
    gamma_upload.write_text('half an upload')
    try:
        for server in servers.values():
            server.start()
        ours = {name: [job(server, gate) for _ in range(3)] for name, server in servers.items()}

        # Each node runs two (its own slots) and queues its third: four run at once.
        def started(name):
            found = records(shared)
            return [t for t in ours[name] if found[t].get('runner') and found[t]['status'] == 'busy']
        wait_for(lambda: len(started('alpha')) == 2 and len(started('beta')) == 2, 'two tasks running on each node')
        assert {(m['busy'], m['queued']) for m in (server.meta() for server in servers.values())} == {('2', '1')}
        runners = {t: records(shared)[t]['runner'] for name in ours for t in started(name)}

        # Listings, restarts and the recovery each restart runs: nobody's tasks are harmed.
        for name in ('beta', 'alpha', 'beta'):
            servers[name].restart()
            for server in servers.values():
                listed = listing(server)
                assert all(listed[t]['status'] == 'busy' for t in ours['alpha'] + ours['beta']), listed
                assert listed[gamma_task]['status'] == 'busy'
        found = records(shared)
        assert {t: found[t]['runner'] for t in runners} == runners  # nobody restarted or took over a task
        assert all(found[t]['node'] == name for name in ours for t in ours[name])
        assert raw(store, gamma_task) == gamma_bytes and gamma_upload.exists()

        gate.touch()
        for name, server in servers.items():
            for task_id in ours[name]:
                assert server.wait_done(task_id)['status'] == 'complete'
        found = records(shared)
        for name in ours:
            for task_id in ours[name]:  # the node that starts a task writes its name: never the other's
                assert found[task_id]['node'] == name and found[task_id]['nodeBoot'] == boot_id()
                assert (shared / found[task_id]['out']).read_text() == 'done\n'
        assert raw(store, gamma_task) == gamma_bytes and gamma_upload.exists()
        assert sorted(os.listdir(shared / 'tasks' / 'slots')) == ['alpha', 'beta']
    finally:
        gate.touch()
        for server in servers.values():
            server.stop()
        for record in records(shared).values():
            for key in ('runner', 'pid'):
                if record.get(key, '').isdigit() and record.get('node') != 'gamma':
                    try:
                        os.killpg(int(record[key]), signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


def test_a_kill_through_one_node_stops_the_others_task(tmp_path, embedded_server):
    """The record is the channel: the owner's runner sees the final state and ends its tool."""
    shared = tmp_path / 'shared'
    shared.mkdir()
    make_service(shared, 'job', SH_SERVICE)
    gate = tmp_path / 'gate'
    config = f'dir = {shared}\nmaxTasks = 1\nsandbox = no\n'
    alpha = embedded_server(config + 'nodeName = alpha\n', root=tmp_path / 'alpha', start=False)
    beta = embedded_server(config + 'nodeName = beta\n', root=tmp_path / 'beta', start=False)
    try:
        alpha.start()
        beta.start()
        running = job(beta, gate)
        waiting = job(beta, gate)
        wait_for(lambda: records(shared)[running].get('pid'), 'the tool of the first task runs')
        tool = int(records(shared)[running]['pid'])

        answer = plain_session().get(alpha.url, params={'service': 'kill', 'id': running}, timeout=30)
        assert answer.status_code == 200, answer.text

        assert beta.wait_done(running)['error'] == 'killed'
        wait_for(lambda: process_start_time(tool) is None, "beta's runner stops the killed task's tool")
        wait_for(lambda: records(shared)[waiting].get('runner'), "beta starts its next task in the freed slot")
        assert records(shared)[waiting]['node'] == 'beta'
        gate.touch()
        assert beta.wait_done(waiting)['status'] == 'complete'
    finally:
        gate.touch()
        for server in (alpha, beta):
            server.stop()
