"""Remote relay, the client side: choose a server, send work, wait or come back later, fail over.

Real embedded servers (``rrcloud.py serve``, the ``embedded_server``
fixture) run on free loopback ports, each in its own store folder.  The
client runs in the ``workdir`` fixture, in-process through main() or as a real process (the
``*.cloud`` wrappers, Ctrl-C).  Fake servers (http.server in a thread) stand
in only where the test is about a server no real part can play: one that
answers garbage, a hostile one, a 0.019 server that only answers text and
ignores ``wait=``, one that hangs, one that claims to be idle.
"""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
from stl import mesh

from rrc.errors import ExitCode
from rrc.store import Store
from conftest import DATA, REPO, make_service, task_id_of, write_config
from helpers import SH_SERVICE, cli_info, one_line_error, process_gone, records, wait_for
from servers import FakeServer, free_port

SLEEP1_SCRIPT = 'sleep 1\necho done > "$1"\n'
SLOW_SCRIPT = 'sleep 20\necho done > "$1"\n'
CONTENT = 'some content'
DEADLINE = 60  # generous: waiting is fine, timing is never asserted


###############################################################################
# Fixtures and helpers
###############################################################################

@pytest.fixture
def fake():
    """Start fake servers: ``fake(handler)`` -> FakeServer."""
    started = []

    def start(handler, protocol='HTTP/1.0'):
        server = FakeServer(handler, protocol).start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


@pytest.fixture
def garbage(fake):
    """A server answering 200 'hello' to everything: not an rrcloud server."""
    return fake(lambda request: (200, 'text/plain', 'hello'))


@pytest.fixture
def down():
    """host:port of a loopback port nothing listens on."""
    return f'127.0.0.1:{free_port()}'


def local_openscad(source, tmp_path):
    """The bytes a local ``openscad SOURCE -oOUT.stl`` writes."""
    out = tmp_path / 'local-reference.stl'
    subprocess.run(['openscad', str(source), f'-o{out}'], check=True, capture_output=True, timeout=120)
    return out.read_bytes()


def all_files(root):
    """Every file below ``root`` (relative paths)."""
    return {str(p.relative_to(root)) for p in Path(root).rglob('*') if p.is_file() or p.is_symlink()}


def spawn_client(workdir, *args, **options):
    """The rrcloud client as a real process in its own group (a terminal's Ctrl-C reaches its group)."""
    return subprocess.Popen([sys.executable, str(REPO / 'rrcloud.py'), *args], cwd=workdir,
                            stdin=subprocess.DEVNULL, start_new_session=True, **options)


###############################################################################
# 1. Sync: the wrapper and --sync feel like the local tool
###############################################################################

def test_openscad_wrapper_renders_through_the_only_live_server(proc, workdir, tmp_path, embedded_server, down,
                                                               garbage):
    server = embedded_server()
    write_config(workdir, f'servers = {down}, {garbage.address}, {server.address}\n')
    (workdir / 'tests').mkdir()
    (workdir / 'tests' / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())

    result = proc('tests/cube.scad', '-otests/cube.stl', prog='openscad.cloud')

    assert result.code == 0, result
    assert '\r' not in result.err and '\x1b' not in result.err  # no progress line off a terminal
    stl = (workdir / 'tests' / 'cube.stl').read_bytes()
    assert stl.startswith(b'solid')
    assert stl == local_openscad(DATA / 'cube.scad', tmp_path)
    volume = mesh.Mesh.from_file(str(workdir / 'tests' / 'cube.stl')).get_mass_properties()[0]
    assert numpy.isclose(volume, 1000)
    (record,) = records(workdir)
    assert record['status'] == 'complete'
    assert record['server'] == server.url
    assert record['remoteId'] in server.records()
    assert garbage.of('POST') == []  # the garbage server was asked for meta only


def test_sync_echo_through_a_server(cli, workdir, embedded_server):
    server = embedded_server()

    result = cli('--sync', f'--s={server.address}', 'echo', CONTENT)

    assert result.code == 0, result
    (record,) = records(workdir)
    assert record['status'] == 'complete'
    assert record['server'] == server.url
    assert (workdir / record['out']).read_text() == CONTENT
    assert (workdir / 'tasks' / 'log' / record['id']).exists()
    (remote,) = server.records().values()
    assert remote['status'] == 'complete' and remote['service'] == 'echo'


def test_failing_openscad_wrapper_mirrors_its_exit_code_and_log(proc, workdir, embedded_server, down):
    server = embedded_server()
    write_config(workdir, f'servers = {down}, {server.address}\n')
    (workdir / 'bad.scad').write_text('cube(10;\n')

    result = proc('bad.scad', '-obad.stl', prog='openscad.cloud')

    assert result.code == 1, result  # openscad's own exit code
    assert 'Parser error' in result.err or 'syntax error' in result.err, result
    (record,) = records(workdir)
    assert result.err.splitlines()[-1] == f'rrcloud: error: task {record["id"]} failed: exit code 1'
    assert not (workdir / 'bad.stl').exists()
    assert list((workdir / 'tasks' / 'out').iterdir()) == []


def test_sync_mirrors_a_remote_tools_exit_code(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text('echo "it went wrong" >&2\nexit 3\n')

    result = cli('--sync', f'--s={server.address}', 'job', 'job.sh')

    assert result.code == 3, result
    assert 'it went wrong\n' in result.err


def test_multi_file_project_through_a_server(cli, workdir, tmp_path, embedded_server):
    server = embedded_server()
    write_config(workdir, f'servers = {server.address}\n')
    (workdir / 'main.scad').write_text('include <parts/part.scad>\npart();\n')
    (workdir / 'parts').mkdir()
    (workdir / 'parts' / 'part.scad').write_text('module part() { cube(10); }\n')

    result = cli('main.scad', '-omain.stl', prog='openscad.cloud')

    assert result.code == 0, result
    assert (workdir / 'main.stl').read_bytes() == local_openscad(workdir / 'main.scad', tmp_path)


def test_slic3r_wrapper_sends_its_config_file_and_native_args(cli, workdir, embedded_server):
    server = embedded_server()
    write_config(workdir, f'slic3r.servers = {server.address}\n')
    (workdir / 'slic3r.ini').write_bytes((DATA / 'slic3r.ini').read_bytes())
    (workdir / 'cube.stl').write_bytes((DATA / 'cube.stl').read_bytes())

    result = cli('--load=slic3r.ini', 'cube.stl', '--layer-height=0.2', '--output=cube.gcode',
                 prog='slic3r.cloud')

    assert result.code == 0, result
    gcode = (workdir / 'cube.gcode').read_text()
    assert '\n; layer_height = 0.2\n' in gcode  # the native argument
    assert '\n; first_layer_height = 0.3\n' in gcode  # the --load= config file
    assert '\nG1 ' in gcode
    (remote,) = server.records().values()
    assert ' --load=tasks/in/' in remote['cmd'] and ' --layer-height=0.2 ' in remote['cmd']


TOKEN = 'test-token-0123456789abcdef'


def test_token_protected_server(cli, workdir, embedded_server):
    server = embedded_server(config=f'maxTasks = 1\ntoken = {TOKEN}\n')
    write_config(workdir, f'servers = {server.address}\n127.0.0.1.token = {TOKEN}\n')

    result = cli('--sync', 'echo', CONTENT)

    assert result.code == 0, result
    (record,) = records(workdir)
    assert (workdir / record['out']).read_text() == CONTENT
    assert (workdir / 'tasks' / 'log' / record['id']).exists()


def test_token_protected_server_without_a_token_refuses(cli, workdir, embedded_server):
    server = embedded_server(config=f'maxTasks = 1\ntoken = {TOKEN}\n')

    result = cli('--sync', f'--s={server.address}', 'echo', CONTENT)

    assert result.code != 0, result
    assert 'token' in one_line_error(result)
    assert records(workdir) == [] and server.records() == {}


def test_a_client_sends_its_own_token_to_a_server_without_a_host_token(cli, workdir, fake):
    """A client's ``token`` is its default for every server (a server's is
    not: test_pipeline's forwarding tests): submit, follow and kill carry it."""
    busy = fake(lambda r: (200, 'text/plain', f'id: {HOSTILE_ID}\nstatus: busy\n'))
    write_config(workdir, f'servers = {busy.address}\ntoken = {TOKEN}\n')

    task_id = task_id_of(cli('echo', CONTENT).out)
    cli('info', task_id)
    cli('kill', task_id)

    assert busy.of('POST') and busy.of('GET', 'info') and busy.of('GET', 'kill'), busy.requests
    assert {r.headers.get('Authorization') for r in busy.requests} == {f'Bearer {TOKEN}'}


###############################################################################
# 2. Async: id at once, `rrcloud info` brings the result home
###############################################################################

def test_async_echo_then_info_pulls_result_and_log(cli, workdir, embedded_server):
    server = embedded_server()

    result = cli(f'--s={server.address}', 'echo', CONTENT)

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    assert result.out == f'id: {task_id}\n'
    remote_id = records(workdir)[0]['remoteId']
    server.wait_done(remote_id)
    shown = cli_info(cli, task_id)
    assert shown['status'] == 'complete'
    assert shown['server'] == server.url
    assert shown['out'].startswith('tasks/out/')
    assert (workdir / shown['out']).read_text() == CONTENT
    assert (workdir / 'tasks' / 'log' / task_id).read_bytes() == \
        (server.root / 'tasks' / 'log' / remote_id).read_bytes()


def test_async_openscad_result_is_the_same_stl_as_a_local_run(cli, workdir, tmp_path, embedded_server):
    server = embedded_server()
    write_config(workdir, f'servers = {server.address}\n')
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())

    result = cli('openscad', 'cube.scad')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    server.wait_done(records(workdir)[0]['remoteId'])
    shown = cli_info(cli, task_id)
    assert shown['status'] == 'complete'
    assert shown['out'] == f'tasks/out/{task_id}.stl'
    stl = (workdir / shown['out']).read_bytes()
    assert stl.startswith(b'solid')
    assert stl == local_openscad(DATA / 'cube.scad', tmp_path)


def test_async_failing_openscad_info_shows_failed_with_its_log(cli, workdir, embedded_server):
    server = embedded_server()
    (workdir / 'bad.scad').write_text('cube(10;\n')

    task_id = task_id_of(cli(f'--s={server.address}', 'openscad', 'bad.scad').out)
    server.wait_done(records(workdir)[0]['remoteId'])
    shown = cli_info(cli, task_id)

    assert shown['status'] == 'failed'
    assert shown['exitCode'] == '1'
    assert 'Parser error' in (workdir / 'tasks' / 'log' / task_id).read_text()
    assert list((workdir / 'tasks' / 'out').iterdir()) == []


def test_info_without_id_pulls_every_finished_remote_task(cli, workdir, embedded_server):
    first, second = embedded_server(), embedded_server()
    ids = [task_id_of(cli(f'--s={s.address}', 'echo', f'{CONTENT} {n}').out)
           for n, s in enumerate((first, second))]
    for record in records(workdir):
        (first if record['server'] == first.url else second).wait_done(record['remoteId'])

    result = cli('info')

    assert result.code == 0, result
    assert result.out.count('status: complete\n') == 2, result.out
    for n, task_id in enumerate(ids):
        record = Store(workdir).read_task(task_id)
        assert record['status'] == 'complete'
        assert (workdir / record['out']).read_text() == f'{CONTENT} {n}'


def test_info_of_a_busy_task_on_a_lost_server_warns_and_stays_busy(cli, workdir, embedded_server):
    server = embedded_server(services={'slow': SH_SERVICE})
    make_service(workdir, 'slow', SH_SERVICE)
    (workdir / 'slow.sh').write_text(SLOW_SCRIPT)
    task_id = task_id_of(cli(f'--s={server.address}', 'slow', 'slow.sh').out)
    server.stop()

    result = cli('info', task_id)

    assert result.code == 0, result
    assert 'status: busy\n' in result.out
    assert result.err.startswith('rrcloud: warning: ') and result.err.count('\n') == 1, result


def test_a_task_the_server_no_longer_knows_is_failed_not_busy_forever(cli, workdir, embedded_server):
    # maxDataRetention = 0: the server drops a finished task the next time it lists its tasks.
    server = embedded_server(config='maxTasks = 1\nmaxDataRetention = 0\n')
    task_id = task_id_of(cli(f'--s={server.address}', 'echo', CONTENT).out)
    remote_id = records(workdir)[0]['remoteId']
    server.wait_done(remote_id)
    server.list_tasks()
    assert remote_id not in server.records()

    shown = cli_info(cli, task_id)

    assert shown['status'] == 'failed', shown


def test_sync_wait_for_a_task_the_server_does_not_know_ends(proc, workdir, fake):
    lost = fake(lambda r: (200, 'text/plain', f'id: {HOSTILE_ID}\nstatus: busy\n') if r.method == 'POST'
                else (404, 'text/plain', f'error: no such task: {HOSTILE_ID}\n'))

    result = proc('--sync', f'--s={lost.address}', 'echo', CONTENT, timeout=15)

    assert result.code == 1, result
    assert result.err.splitlines()[-1].startswith('rrcloud: error: '), result


def test_the_same_remote_id_twice_gets_two_local_records(cli, workdir, fake):
    same = fake(lambda r: (200, 'text/plain', f'id: {HOSTILE_ID}\nstatus: busy\n'))

    first = task_id_of(cli(f'--s={same.address}', 'echo', CONTENT).out)
    second = task_id_of(cli(f'--s={same.address}', 'echo', CONTENT).out)

    assert first != second
    assert [r['remoteId'] for r in records(workdir)] == [HOSTILE_ID, HOSTILE_ID]


###############################################################################
# 3. Choosing a server and failing over
###############################################################################

def test_first_server_down_the_task_goes_to_the_next(cli, workdir, embedded_server, down):
    server = embedded_server()
    write_config(workdir, f'servers = {down}, {server.address}\n')

    result = cli('--sync', 'echo', CONTENT)

    assert result.code == 0, result
    (record,) = records(workdir)
    assert record['server'] == server.url
    assert (workdir / record['out']).read_text() == CONTENT


def test_all_servers_down_is_one_error_line_naming_each(cli, workdir, down, garbage):
    other_down = f'127.0.0.1:{free_port()}'
    write_config(workdir, f'servers = {down}, {other_down}, {garbage.address}\n')

    result = cli('echo', CONTENT)

    assert result.code == 5, result  # ExitCode.NO_SERVER
    line = one_line_error(result)
    for address in (down, other_down, garbage.address):
        assert address in line
    assert result.out == ''
    assert records(workdir) == []


@pytest.mark.parametrize('kind', ['down', 'garbage'])
def test_the_only_server_named_with_s_not_answering_is_no_server(cli, workdir, down, garbage, kind):
    address = down if kind == 'down' else garbage.address

    result = cli('--sync', f'--s={address}', 'echo', CONTENT)

    assert result.code == 5, result
    assert address in one_line_error(result)
    assert records(workdir) == []


def test_a_server_that_refuses_the_upload_is_skipped(cli, workdir, embedded_server, fake):
    server = embedded_server()
    # Claims to be idle and unloaded (it ranks first), then fails the upload.
    liar = fake(lambda r: (503, 'text/plain', 'error: out of disk\n') if r.method == 'POST' else
                (200, 'text/plain', 'busy: 0\ncpuLoad: 0.00\nmaxTasks: 64\nqueued: 0\n'
                                    'version: RepRapCloud 0.019\n'))
    write_config(workdir, f'servers = {liar.address}, {server.address}\n')

    result = cli('--sync', 'echo', CONTENT)

    assert result.code == 0, result
    assert len(liar.of('POST')) == 1
    (record,) = records(workdir)
    assert record['server'] == server.url


def test_a_server_that_hangs_is_skipped(cli, workdir, embedded_server, fake):
    server = embedded_server()

    def hang(request):
        time.sleep(8)
        return 200, 'text/plain', 'version: RepRapCloud 0.019\n'
    sleeper = fake(hang)
    write_config(workdir, f'servers = {sleeper.address}, {server.address}\n')

    result = cli('echo', CONTENT)

    assert result.code == 0, result
    (record,) = records(workdir)
    assert record['server'] == server.url
    assert sleeper.of('POST') == []


def test_s_option_wins_over_rrcloudrc(cli, workdir, embedded_server, down):
    server = embedded_server()
    write_config(workdir, f'servers = {down}\n')

    result = cli('--sync', f'--s=http://{server.address}', 'echo', CONTENT)

    assert result.code == 0, result
    assert records(workdir)[0]['server'] == server.url


def test_service_servers_win_over_servers(cli, workdir, embedded_server, down):
    server = embedded_server()
    write_config(workdir, f'servers = {down}\necho.servers = {server.address}\n')

    result = cli('--sync', 'echo', CONTENT)

    assert result.code == 0, result
    assert records(workdir)[0]['server'] == server.url


def test_local_forces_local_work(cli, workdir, down):
    write_config(workdir, f'servers = {down}\n')

    result = cli('--local', '--sync', 'echo', CONTENT)

    assert result.code == 0, result
    (record,) = records(workdir)
    assert 'remoteId' not in record
    assert record['status'] == 'complete'
    assert (workdir / record['out']).read_text() == CONTENT


def test_least_loaded_server_by_meta_with_one_probe_each(cli, workdir, fake):
    def server(meta):
        def handler(request):
            if request.method == 'POST':
                return 200, 'text/plain', 'id: 1795842096-66057-537746\nstatus: busy\n'
            return 200, 'text/plain', meta + 'version: RepRapCloud 0.019\n'
        return fake(handler)
    full = server('busy: 1\nqueued: 0\nmaxTasks: 1\ncpuLoad: 0.00\n')
    queue = server('busy: 2\nqueued: 2\nmaxTasks: 2\ncpuLoad: 0.00\n')
    idle_loaded = server('busy: 0\nqueued: 0\nmaxTasks: 4\ncpuLoad: 3.50\n')
    idle = server('busy: 0\nqueued: 0\nmaxTasks: 4\ncpuLoad: 0.20\n')
    fakes = (full, queue, idle_loaded, idle)
    write_config(workdir, 'servers = ' + ', '.join(f.address for f in fakes) + '\n')

    result = cli('echo', CONTENT)

    assert result.code == 0, result
    assert [len(f.of('POST')) for f in fakes] == [0, 0, 0, 1]
    assert [len(f.of('GET')) for f in fakes] == [1, 1, 1, 1]
    assert records(workdir)[0]['server'] == idle.url


def test_twelve_tasks_spread_over_three_servers(cli, workdir, embedded_server):
    trio = [embedded_server(config='maxTasks = 1\n', services={'sleep1': SH_SERVICE}) for _ in range(3)]
    make_service(workdir, 'sleep1', SH_SERVICE)
    (workdir / 'job.sh').write_text(SLEEP1_SCRIPT)
    write_config(workdir, 'servers = ' + ', '.join(s.address for s in trio) + '\n')

    ids = []
    for _ in range(12):
        result = cli('sleep1', 'job.sh')
        assert result.code == 0, result
        ids.append(task_id_of(result.out))

    by_server = {s.url: 0 for s in trio}
    for record in records(workdir):
        by_server[record['server']] += 1
    assert sum(by_server.values()) == 12
    assert all(1 <= count <= 6 for count in by_server.values()), by_server
    for record in records(workdir):
        next(s for s in trio if s.url == record['server']).wait_done(record['remoteId'])
    assert cli('info').code == 0
    for task_id in ids:
        record = Store(workdir).read_task(task_id)
        assert record['status'] == 'complete', record
        assert (workdir / record['out']).read_text() == 'done\n'


###############################################################################
# 4. Notifier from the CLI, end to end
###############################################################################

def test_notifier_reaches_a_listener_with_id_and_ip_filled_in(cli, workdir, embedded_server, fake):
    # A server refuses loopback notifier targets unless its notifierAllow names them.
    server = embedded_server(config='maxTasks = 1\nnotifierAllow = 127.0.0.0/8\n')
    listener = fake(lambda request: (200, 'text/plain', 'ok\n'))
    notifier = f'http://$myip:{listener.port}/done?id=$id'

    result = cli(f'--notifier={notifier}', f'--s={server.address}', 'echo', CONTENT)

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    remote_id = records(workdir)[0]['remoteId']
    wait_for(lambda: listener.of('GET'), 'the notifier GET')
    (call,) = listener.of('GET')
    assert call.path == '/done'
    assert call.query == {'id': remote_id}
    assert remote_id == task_id  # our own server's id is kept locally
    assert server.info(remote_id)['notifier'] == notifier


###############################################################################
# 5. Ctrl-C and lost servers during a sync wait
###############################################################################

def start_slow_sync(workdir, server, **options):
    """A real client running ``--sync slow slow.sh`` (a 20-second task); returns (client, remote record)."""
    make_service(workdir, 'slow', SH_SERVICE)
    (workdir / 'slow.sh').write_text(SLOW_SCRIPT)
    client = spawn_client(workdir, '--sync', f'--s={server.address}', 'slow', 'slow.sh', **options)
    remote = wait_for(lambda: [r for r in server.records().values() if r.get('pid')],
                      'the remote tool started')[0]
    wait_for(lambda: records(workdir), 'the local record')
    time.sleep(0.5)  # the client is in its wait now
    return client, remote


def test_ctrl_c_during_a_sync_wait_kills_the_remote_task(cli, workdir, embedded_server):
    server = embedded_server(services={'slow': SH_SERVICE})
    client, remote = start_slow_sync(workdir, server, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    os.killpg(client.pid, signal.SIGINT)
    out, err = client.communicate(timeout=30)

    assert client.returncode == 130, err
    answer = server.info(remote['id'])
    assert answer['status'] == 'failed'
    assert answer['error'] == 'killed'
    wait_for(lambda: process_gone(int(remote['pid'])), 'the remote tool gone', timeout=15)
    (local,) = records(workdir)
    assert cli_info(cli, local['id'])['status'] == 'failed'
    assert list((workdir / 'tasks' / 'out').glob('*')) == []


def test_server_lost_during_a_sync_wait_is_no_server_naming_the_task(cli, workdir, embedded_server):
    write_config(workdir, 'reconnectTimeout = 1\n')
    server = embedded_server(services={'slow': SH_SERVICE})
    client, _ = start_slow_sync(workdir, server, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    server.stop()
    out, err = client.communicate(timeout=60)

    assert client.returncode == 5, err
    assert err.count('\n') == 1 and err.startswith('rrcloud: error: ') and server.address in err, err
    (local,) = records(workdir)
    assert f'rrcloud info {local["id"]}' in err, 'how to fetch the result later'
    assert local['status'] == 'busy', 'not pretended failed: it may still finish there'


def test_a_sync_wait_survives_a_restart_of_the_server(workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text('sleep 4\necho survived > "$1"\n')
    client = spawn_client(workdir, '--sync', f'--s={server.address}', 'job', 'job.sh',
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: [r for r in server.records().values() if r.get('pid')], 'the remote tool started')
    # The POST is held up to a second (wait=1); the client knows the task's id once it is answered.
    wait_for(lambda: records(workdir), 'the local record: the client waits with the id')

    server.restart()
    out, err = client.communicate(timeout=DEADLINE)

    assert client.returncode == 0, err
    assert err == ''
    (local,) = records(workdir)
    assert local['status'] == 'complete'
    assert f'out: {local["out"]}\n' in out, out
    assert (workdir / local['out']).read_text() == 'survived\n'


def start_remote_job(cli, workdir, server, script='sleep 300\n'):
    """``rrcloud --s=SERVER job job.sh`` (asynchronous); returns (local id, the server's record with its pid)."""
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text(script)
    result = cli(f'--s={server.address}', 'job', 'job.sh')
    assert result.code == 0, result
    remote = wait_for(lambda: [r for r in server.records().values() if r.get('pid')], 'the remote tool started')[0]
    return task_id_of(result.out), remote


def tool_processes_of(pid):
    """The sandboxed tool's processes below the pid the server recorded (the group)."""
    import psutil
    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_kill_of_a_task_sent_to_a_server_kills_it_there(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    task_id, remote = start_remote_job(cli, workdir, server)
    tools = tool_processes_of(int(remote['pid']))
    assert tools, 'the tool runs on the server'

    result = cli('kill', task_id)

    assert result.code == 0, result
    assert result.out == f'id: {task_id}\nstatus: failed\nerror: killed\nserver: {server.url}\n', result
    answer = server.info(remote['id'])
    assert (answer['status'], answer['error']) == ('failed', 'killed')
    for pid in tools:
        wait_for(lambda: process_gone(pid), f'tool process {pid} gone on the server', timeout=15)
    shown = cli_info(cli, task_id)
    assert (shown['status'], shown['error']) == ('failed', 'killed')
    assert 'killed by 127.0.0.1 (HTTP)' in (workdir / 'tasks' / 'log' / task_id).read_text(), \
        "the server's log, fetched: it says who killed the task"


def test_kill_of_a_remote_task_whose_server_is_down_says_so_and_keeps_it_busy(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    task_id, remote = start_remote_job(cli, workdir, server)
    server.kill_server()  # the task runs on there; its server does not answer

    result = cli('kill', task_id)

    assert result.code == ExitCode.NO_SERVER, result
    error = one_line_error(result)
    assert f'cannot reach {server.address} (connection refused): is rrcloud serve running there?' in error
    assert 'may still run' in error, error
    assert records(workdir)[0]['status'] == 'busy', 'not pretended killed'
    assert not process_gone(int(remote['pid'])), 'it does still run'


def test_kill_of_a_remote_task_that_ended_there_fetches_it_and_says_so(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    task_id, remote = start_remote_job(cli, workdir, server, script='sleep 1\necho done > "$1"\n')
    server.wait_done(remote['id'])

    result = cli('kill', task_id)

    assert result.code == ExitCode.USAGE, result
    assert 'not running (status complete)' in one_line_error(result)
    assert records(workdir)[0]['status'] == 'complete'


def test_s_asks_that_server_for_meta_info_and_ls(cli, workdir, embedded_server):
    server = embedded_server(config='maxTasks = 1\nserverName = farm-node-3\n')
    remote_id = server.info(requests_post_echo(server, 'made on the server'))['id']
    server.wait_done(remote_id)

    meta = cli(f'--s={server.address}', 'meta')
    one = cli(f'--s={server.address}', 'info', remote_id)
    listing = cli('info', f'--s={server.address}')
    short = cli('ls', f'--s={server.address}')
    json_meta = cli('--format=json', f'--s={server.address}', 'meta')

    assert meta.code == 0, meta
    assert 'serverName: farm-node-3\n' in meta.out and 'version: RepRapCloud' in meta.out
    assert json.loads(json_meta.out)['serverName'] == 'farm-node-3'
    assert one.code == 0 and one.out.startswith(f'=== id: {remote_id}\n') and 'status: complete\n' in one.out
    assert listing.code == 0 and f'=== id: {remote_id}\n' in listing.out
    assert short.code == 0 and short.out.split()[:3] == [remote_id, 'echo', 'complete'], short
    assert not (workdir / 'tasks').exists(), 'the local store is not asked, nor created'


def test_s_info_of_a_task_the_server_does_not_know_is_not_found(cli, workdir, embedded_server, down):
    server = embedded_server()

    unknown = cli(f'--s={server.address}', 'info', '1795841292-04767-953464')
    silent = cli(f'--s={down}', 'meta')

    assert unknown.code == ExitCode.NOT_FOUND, unknown
    assert server.url in one_line_error(unknown)
    assert silent.code == ExitCode.NO_SERVER and down in one_line_error(silent)


def requests_post_echo(server, text):
    """POST an echo task to ``server`` as curl would; returns its id."""
    from servers import plain_session
    answer = plain_session().post(server.url, data={'service': 'echo', 'fileIn0': text, 'format': 'json'},
                                  timeout=30)
    answer.raise_for_status()
    return answer.json()['id']


def test_progress_line_on_a_terminal_while_waiting(workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text('sleep 4\necho done > "$1"\n')
    master, slave = pty.openpty()
    client = spawn_client(workdir, '--sync', f'--s={server.address}', 'job', 'job.sh',
                          stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b''
    deadline = time.monotonic() + 3.0  # the task takes 4 s: this is while it waits
    try:
        while time.monotonic() < deadline and b'busy' not in seen:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                seen += os.read(master, 4096)
        assert client.wait(timeout=30) == 0
    finally:
        os.close(master)
    text = seen.decode('utf-8', 'replace')
    assert server.url in text and 'busy' in text, text


###############################################################################
# 6. Compatibility: a 0.019 server that only answers text and ignores wait=
###############################################################################

OLD_ID = '1361787153-093541'


@pytest.fixture
def old_server(fake):
    """A RepRapCloud 0.019 server: text only, no wait=, complete on the third info call."""
    calls = {'info': 0}
    record = (f'client: 127.0.0.1\ncmd: cp tasks/in/1361787152-863093.txt tasks/out/{OLD_ID}\n'
              f'ctime: 1361787153.89647\nid: {OLD_ID}\nin: tasks/in/1361787152-863093.txt\n'
              f'out: tasks/out/{OLD_ID}\npid: 32744\nserver: old.local\nservice: echo\n')

    def handler(request):
        if request.method == 'POST':
            return 200, 'text/plain', record + 'status: busy\n'
        if request.path == f'/tasks/out/{OLD_ID}':
            return 200, 'text/plain', CONTENT
        if request.path == f'/tasks/log/{OLD_ID}':
            return 200, 'text/plain', 'copied\n'
        if request.query.get('service') == 'meta':
            return 200, 'text/plain', ('cpuLoad: 0.10\nmaxDataRetention: 24\nserverName: old.local\n'
                                       'services: echo,openscad\ntasks: 0\ntimeout: 1800\n'
                                       'uptime: 0d 06h 00m 52s\nversion: RepRapCloud 0.019\n')
        if request.query.get('service') == 'info' and request.query.get('id') == OLD_ID:
            calls['info'] += 1
            status = 'complete' if calls['info'] > 2 else 'busy'
            return 200, 'text/plain', record + (f'etime: 1361787155.0\nstatus: {status}\n')
        return 404, 'text/plain', 'not found\n'
    return fake(handler)


def test_sync_against_a_0_019_server(cli, workdir, old_server, down):
    write_config(workdir, f'servers = {down}, {old_server.address}\n')

    result = cli('--sync', 'echo', CONTENT)

    assert result.code == 0, result
    (post,) = old_server.of('POST')
    assert b'name="service"' in post.body and b'name="fileIn0"' in post.body and CONTENT.encode() in post.body
    assert len(old_server.of('GET', 'info')) == 3
    (record,) = records(workdir)
    assert record['status'] == 'complete'
    assert record['remoteId'] == OLD_ID
    assert (workdir / record['out']).read_text() == CONTENT
    assert (workdir / 'tasks' / 'log' / record['id']).read_text() == 'copied\n'


def test_async_against_a_0_019_server(cli, workdir, old_server):
    result = cli(f'--s={old_server.address}', 'echo', CONTENT)

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    assert [cli_info(cli, task_id)['status'] for _ in range(3)] == ['busy', 'busy', 'complete']
    shown = cli_info(cli, task_id)
    assert task_id != OLD_ID and shown['remoteId'] == OLD_ID  # an old-style id is not ours
    assert (workdir / shown['out']).read_text() == CONTENT
    assert len(old_server.of('GET', 'info')) == 3  # a finished task is not asked about again


###############################################################################
# 7. A hostile server: its answer is data, never a path to write to
###############################################################################

HOSTILE_ID = '1795842096-66057-537746'
PWNED = b'written where it must not be\n'


def hostile_outs(tmp_path):
    return {
        'dotdot': '../../x',
        'store-dotdot': 'tasks/out/../../x',
        'absolute': str(tmp_path / 'victim' / 'x'),
        'etc-passwd': '/etc/passwd',
    }


@pytest.fixture(params=['dotdot', 'store-dotdot', 'absolute', 'etc-passwd'])
def hostile(request, fake, tmp_path):
    """A server that takes the task, then names a result path outside the store."""
    (tmp_path / 'victim').mkdir()
    out = hostile_outs(tmp_path)[request.param]
    passwd = Path('/etc/passwd').read_bytes()

    def handler(req):
        if req.method == 'POST':
            return 200, 'text/plain', f'id: {HOSTILE_ID}\nstatus: busy\n'
        if req.query.get('service') == 'info':
            return 200, 'text/plain', f'id: {HOSTILE_ID}\nstatus: complete\nout: {out}\n'
        if req.query.get('service') == 'meta':
            return 200, 'text/plain', 'version: RepRapCloud 0.019\n'
        # Any file it is asked for (result or log): the passwd case gets the
        # file's own bytes, so even a client that wrote there changes nothing.
        return 200, 'application/octet-stream', passwd if 'passwd' in out else PWNED
    server = fake(handler)
    server.out = out
    return server


def assert_nothing_outside_the_store(workdir, tmp_path, before, passwd_stat):
    after = all_files(tmp_path)
    new = {p for p in after - before if not p.startswith('work/tasks/')}
    assert new == set(), new
    for folder in (workdir, workdir / 'tasks', tmp_path, tmp_path.parent, tmp_path / 'victim'):
        assert not (folder / 'x').exists(), folder
    stat = os.stat('/etc/passwd')
    assert (stat.st_ino, stat.st_mtime_ns) == (passwd_stat.st_ino, passwd_stat.st_mtime_ns)
    for path in (workdir / 'tasks').rglob('*'):
        if path.is_file():
            assert path.read_bytes() != PWNED or path.parent.name == 'log', path


def test_hostile_out_path_async_info(cli, workdir, tmp_path, hostile):
    before, passwd_stat = all_files(tmp_path), os.stat('/etc/passwd')

    result = cli(f'--s={hostile.address}', 'echo', CONTENT)
    assert result.code == 0, result
    task_id = task_id_of(result.out)
    shown = cli_info(cli, task_id)

    assert shown['status'] != 'complete'
    assert shown.get('out', '') != hostile.out and '..' not in shown.get('out', '')
    assert_nothing_outside_the_store(workdir, tmp_path, before, passwd_stat)


def test_hostile_out_path_sync(cli, workdir, tmp_path, hostile):
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())
    before, passwd_stat = all_files(tmp_path), os.stat('/etc/passwd')

    result = cli('--sync', f'--s={hostile.address}', 'openscad', 'cube.scad', '-ocube.stl')

    assert result.code != 0, result
    assert result.err.splitlines()[-1].startswith('rrcloud: error: '), result
    assert not (workdir / 'cube.stl').exists()
    (record,) = records(workdir)
    assert record['status'] != 'complete'
    assert_nothing_outside_the_store(workdir, tmp_path, before, passwd_stat)


@pytest.mark.parametrize('answer', [
    'id: ../../x\nstatus: busy\n',
    'id: 1795842096-66057-537746/../../x\nstatus: busy\n',
    'status: busy\n',
])
def test_a_bad_id_from_a_server_is_refused(cli, workdir, tmp_path, fake, answer):
    server = fake(lambda request: (200, 'text/plain', answer))
    before = all_files(tmp_path)

    result = cli(f'--s={server.address}', 'echo', CONTENT)

    assert result.code == 5, result
    assert server.address in one_line_error(result)
    assert records(workdir) == []
    assert {p for p in all_files(tmp_path) - before if not p.startswith('work/tasks/')} == set()


###############################################################################
# 8. The light relay: a synchronous task in one POST, one connection, no requests
###############################################################################

LIGHT_ID = '1795842096-66057-537747'


def held_post_server(fake):
    """An rrcloud-like server (HTTP/1.1, kept alive) that answers a POST with
    the ended task, as ``wait=`` makes a real one do for a short task."""
    record = (f'client: 127.0.0.1\nexitCode: 0\nid: {LIGHT_ID}\nout: tasks/out/{LIGHT_ID}\n'
              'service: echo\nstatus: complete\n')

    def handler(request):
        if request.method == 'POST':
            return 200, 'text/plain', record
        if request.path == f'/tasks/out/{LIGHT_ID}':
            return 200, 'text/plain', CONTENT
        if request.path == f'/tasks/log/{LIGHT_ID}':
            return 200, 'text/plain', 'copied\n'
        return 404, 'text/plain', 'not found\n'
    return fake(handler, protocol='HTTP/1.1')


def test_a_sync_task_that_ended_in_time_is_one_post_then_result_and_log_on_one_connection(workdir, fake):
    server = held_post_server(fake)

    client = spawn_client(workdir, '--sync', f'--s={server.address}', 'echo', CONTENT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = client.communicate(timeout=DEADLINE)

    assert client.returncode == 0, err
    assert out == CONTENT + '\n'
    (post,) = server.of('POST')
    assert b'name="wait"\r\n\r\n1\r\n' in post.body, 'the POST asks the server to hold its answer'
    assert [(r.method, r.path) for r in server.requests] == [
        ('POST', '/'), ('GET', f'/tasks/out/{LIGHT_ID}'), ('GET', f'/tasks/log/{LIGHT_ID}')], 'no info, no meta'
    assert len({r.connection for r in server.requests}) == 1, 'one connection for all three'
    (record,) = records(workdir)
    assert record['status'] == 'complete' and record['remoteId'] == LIGHT_ID
    assert (workdir / 'tasks' / 'log' / record['id']).read_text() == 'copied\n'


def test_a_real_servers_held_post_answers_the_ended_task(cli, workdir, embedded_server, monkeypatch):
    from rrc import lighthttp
    server = embedded_server(scope='module')
    sent = []
    real_head = lighthttp.LightSession._head

    def counted(session, target, method, path, headers):
        sent.append((method, path.partition('?')[0]))
        return real_head(session, target, method, path, headers)
    monkeypatch.setattr(lighthttp.LightSession, '_head', counted)

    result = cli('--sync', f'--s={server.address}', 'echo', CONTENT)

    assert result.code == 0, result
    assert result.out == CONTENT + '\n'
    (record,) = records(workdir)
    assert sent == [('POST', '/'), ('GET', f'/{record["out"].replace(record["id"], record["remoteId"])}'),
                    ('GET', f'/tasks/log/{record["remoteId"]}')], sent


def test_a_sync_task_still_busy_after_the_held_post_is_followed_to_its_end(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text('sleep 2\necho later > "$1"\n')

    result = cli('--sync', f'--s={server.address}', 'job', 'job.sh')

    assert result.code == 0, result
    (record,) = records(workdir)
    assert record['status'] == 'complete'
    assert (workdir / record['out']).read_text() == 'later\n'


def test_progress_line_on_a_terminal_against_a_0_019_server(workdir, old_server):
    master, slave = pty.openpty()
    client = spawn_client(workdir, '--sync', f'--s={old_server.address}', 'echo', CONTENT,
                          stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b''
    try:
        while client.poll() is None or select.select([master], [], [], 0.2)[0]:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        out, _ = client.communicate(timeout=30)
    finally:
        os.close(master)
    assert client.returncode == 0, seen
    assert out == (CONTENT + '\n').encode()
    text = seen.decode('utf-8', 'replace')
    assert old_server.url in text and 'busy' in text, text
    (post,) = old_server.of('POST')
    assert b'name="wait"' in post.body, 'sent; a 0.019 server ignores it'
    assert len(old_server.of('GET', 'info')) == 3, 'followed by info as before'


def test_ctrl_c_while_the_post_is_held_kills_the_task_once_its_id_comes(workdir, embedded_server):
    server = embedded_server(services={'slow': SH_SERVICE})
    make_service(workdir, 'slow', SH_SERVICE)
    (workdir / 'slow.sh').write_text(SLOW_SCRIPT)
    client = spawn_client(workdir, '--sync', f'--s={server.address}', 'slow', 'slow.sh',
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    remote = wait_for(lambda: [r for r in server.records().values() if r.get('pid')], 'the remote tool started')[0]

    os.killpg(client.pid, signal.SIGINT)  # most likely within the held second: the client has no id yet
    out, err = client.communicate(timeout=30)

    assert client.returncode == 130, err
    answer = server.info(remote['id'])
    assert answer['status'] == 'failed' and answer['error'] == 'killed', answer
    (local,) = records(workdir)
    assert local['status'] == 'failed'


def render_cube_through(workdir, first, second):
    """``openscad.cloud cube.scad -ocube.stl`` in its own session (so a test
    can send its group a Ctrl-C) with the servers ``first, second``; the process."""
    write_config(workdir, f'servers = {first.address}, {second.address}\n')
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())
    return subprocess.Popen([str(REPO / 'bin' / 'openscad.cloud'), 'cube.scad', '-ocube.stl'], cwd=workdir,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_ctrl_c_while_a_held_post_fails_tries_no_other_server(workdir, embedded_server, fake):
    import threading
    second = embedded_server()
    posted, release = threading.Event(), threading.Event()

    def holds_then_loses_the_answer(request):
        if request.method != 'POST':  # idle and unloaded: it ranks first
            return 200, 'text/plain', 'busy: 0\ncpuLoad: 0.00\nmaxTasks: 64\nqueued: 0\nversion: RepRapCloud 0.019\n'
        posted.set()
        release.wait(DEADLINE)
        # http.server closes the connection without an answer, as a server that dies holding it
        raise ConnectionAbortedError('the held answer is lost')
    first = fake(holds_then_loses_the_answer)
    client = render_cube_through(workdir, first, second)
    try:
        assert posted.wait(DEADLINE), 'the POST reached the first server'
        os.killpg(client.pid, signal.SIGINT)
        stopping = client.stderr.readline()  # the Ctrl-C is heard while the first server holds the POST
    finally:
        release.set()
    out, err = client.communicate(timeout=DEADLINE)

    assert second.records() == {}, 'the second server was never sent the task'
    assert stopping == (f'rrcloud: stopping: waiting for {first.address} to answer, to kill the task there '
                        '(Ctrl-C again to leave it)\n')
    assert client.returncode == 130, err
    assert err.strip().splitlines() == [
        f'rrcloud: warning: the task may still run at {first.address} (its answer never came; no other server '
        f'was tried); `rrcloud ls --s={first.address}` finds it']
    assert len(first.of('POST')) == 1
    assert records(workdir) == []
    assert not (workdir / 'cube.stl').exists()


###############################################################################
# 6. A result's size: the client's own bound (maxResultSize)
###############################################################################

def test_a_result_larger_than_max_result_size_is_refused_and_the_users_file_is_untouched(proc, cli, workdir,
                                                                                         embedded_server):
    server = embedded_server()
    write_config(workdir, f'servers = {server.address}\nmaxResultSize = 1K\n')  # a cube's STL is about 3 KiB
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())
    (workdir / 'cube.stl').write_bytes(b'the old cube\n')

    result = proc('cube.scad', '-ocube.stl', prog='openscad.cloud')

    assert result.code == 1, result
    (record,) = records(workdir)
    remote_id = record['remoteId']
    remote = server.info(remote_id)
    assert remote['status'] == 'complete'  # it is the client that refused it
    assert result.err.splitlines()[-1] == (
        f'rrcloud: error: task {record["id"]} failed: {server.url}{remote["out"]} is larger than maxResultSize '
        f'(1 KiB), the most this client takes of one download; nothing of it was kept; it stays at '
        f'{server.address}: with a larger maxResultSize, `rrcloud get --s={server.address} {remote_id}` fetches it')
    assert record['status'] == 'failed'
    assert (workdir / 'cube.stl').read_bytes() == b'the old cube\n'
    assert sorted(p.name for p in workdir.iterdir()) == ['cube.scad', 'cube.stl', 'rrcloudrc', 'tasks']
    assert all_files(workdir / 'tasks' / 'out') == set()

    refused = cli('get', f'--s={server.address}', remote_id, '-o', 'cube.stl')

    assert refused.code == 1, refused
    assert 'is larger than maxResultSize (1 KiB)' in one_line_error(refused)
    assert (workdir / 'cube.stl').read_bytes() == b'the old cube\n'
    assert sorted(p.name for p in workdir.iterdir()) == ['cube.scad', 'cube.stl', 'rrcloudrc', 'tasks']

    write_config(workdir, f'servers = {server.address}\n')  # the default, 4 GiB: the way the error names
    fetched = cli('get', f'--s={server.address}', remote_id, '-o', 'cube.stl')

    assert fetched.code == 0, fetched
    assert (workdir / 'cube.stl').read_bytes().startswith(b'solid')


REMOTE_ID = '1795842096-66057-537746'
INFO_OF_A_COMPLETE_TASK = (f'id: {REMOTE_ID}\nstatus: complete\nout: tasks/out/{REMOTE_ID}.stl\n'
                           'version: RepRapCloud 0.019\n').encode()


def chunked(*pieces):
    """An HTTP/1.1 answer sent in chunks: no Content-Length says its size before it comes."""
    body = b''.join(b'%x\r\n%s\r\n' % (len(piece), piece) for piece in pieces) + b'0\r\n\r\n'
    return b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' + body


@pytest.mark.parametrize('kind', ['chunked past maxResultSize', 'connection lost midway'])
def test_a_download_that_fails_leaves_no_file_under_the_users_name(cli, workdir, kind):
    from test_lighthttp import ScriptedServer, plain
    if kind == 'connection lost midway':
        result = (b'HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n' + b's' * 5000, True)
    else:
        result = (chunked(*[b's' * 1000] * 4), False)
    server = ScriptedServer([(plain(INFO_OF_A_COMPLETE_TASK), True), result])
    address = server.url.removeprefix('http://').rstrip('/')
    write_config(workdir, 'maxResultSize = 2K\n' if kind.startswith('chunked') else '')
    (workdir / 'part.stl').write_bytes(b'the old part\n')

    fetched = cli('get', f'--s={address}', REMOTE_ID, '-o', 'part.stl')
    server.stop()

    error = one_line_error(fetched)
    if kind == 'connection lost midway':
        assert fetched.code == 5 and f'cannot reach {address}' in error, fetched
    else:
        assert fetched.code == 1 and 'is larger than maxResultSize (2 KiB)' in error, fetched
    assert (workdir / 'part.stl').read_bytes() == b'the old part\n'
    assert sorted(p.name for p in workdir.iterdir()) == ['part.stl', 'rrcloudrc']


def test_ctrl_c_while_servers_are_probed_sends_the_task_nowhere(workdir, embedded_server, fake):
    import threading
    second = embedded_server()
    probed, release = threading.Event(), threading.Event()

    def slow_meta(request):
        probed.set()
        release.wait(DEADLINE)
        return 200, 'text/plain', 'busy: 0\ncpuLoad: 0.00\nmaxTasks: 64\nqueued: 0\nversion: RepRapCloud 0.019\n'
    first = fake(slow_meta)
    client = render_cube_through(workdir, first, second)
    try:
        assert probed.wait(DEADLINE), 'the client asked the first server for its load'
        os.killpg(client.pid, signal.SIGINT)
        out, err = client.communicate(timeout=DEADLINE)
    finally:
        release.set()

    assert client.returncode == 130, err
    assert err == ''  # nothing was sent: nothing to wait for, nothing that may run
    assert second.records() == {} and first.of('POST') == []
    assert records(workdir) == []
