"""Every task runs in its sandbox: the attacks of a LAN client through the tools.

Real tools (POV-Ray, OpenJSCAD on Node, Slic3r, OpenSCAD) run the hostile
inputs a client could send; each test checks what the tool could reach from
the outside: nothing appears in the store, nothing runs, no other task's
input, no system file, no network.
"""
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from rrc.config import load_config
from rrc.notifier import own_addresses, resolve_notifier_host
from rrc.store import Store
from rrc.queue import dispatch
from conftest import DATA, REPO, make_service, task_id_of, wait_until_done, write_config
from helpers import SH_SERVICE, plain_session, submit

FORGED_ID = '1795999999-00000-000000'
STORE_MARKER = 'rrcloud-sandbox-store-marker-9c1d'


@pytest.fixture
def store_root(workdir):
    """The store root, holding an rrcloudrc a tool must never see."""
    write_config(workdir, f'# {STORE_MARKER}\nmaxTasks = 2\n')
    return workdir


def run_sync(proc, *args):
    """``rrcloud --sync ARGS`` as a real process; the finished record as a dict."""
    result = proc('--sync', '--format=json', *args)
    return result, (json.loads(result.out) if result.out.strip().startswith('{') else {})


def submit_and_wait(proc, workdir, *args):
    """Start a task in the background, wait for its end; (record, log text)."""
    result = proc(*args)
    assert result.code == 0, result
    task_id = task_id_of(result.out)
    record = wait_until_done(workdir, task_id, timeout=120)
    log = workdir / 'tasks' / 'log' / task_id
    return record, log.read_text(errors='replace') if log.exists() else ''


def store_files(root):
    """Every path under the store root, relative."""
    return {str(p.relative_to(root)) for p in Path(root).rglob('*')}


# -- POV-Ray writes files where a scene says ---------------------------------

FORGING_SCENE = f'''
#fopen Forged "tasks/info/{FORGED_ID}" write
#write (Forged, "cmd: sh -c 'touch pwned'\\nservice: echo\\nstatus: busy\\nqueued: yes\\n")
#fclose Forged
#fopen Marker "tasks/queue/{FORGED_ID}" write
#fclose Marker
#fopen Fake "tasks/out/fake-result.stl" write
#fclose Fake
camera {{ location <0, 0, -3> look_at 0 }}
light_source {{ <0, 0, -5> rgb 1 }}
sphere {{ 0, 1 pigment {{ rgb 1 }} }}
'''


def test_povray_scene_cannot_write_a_record_or_queue_marker_into_the_store(proc, store_root):
    (store_root / 'forge.pov').write_text(FORGING_SCENE)

    record, log = submit_and_wait(proc, store_root, 'povray', 'forge.pov')
    time.sleep(0.5)  # a forged marker would be dispatched by the runner's last act

    info = store_root / 'tasks' / 'info'
    assert not (info / FORGED_ID).exists()
    assert not (store_root / 'tasks' / 'queue' / FORGED_ID).exists()
    assert not (store_root / 'tasks' / 'out' / 'fake-result.stl').exists()
    assert not list(store_root.rglob('pwned'))
    assert sorted(p.name for p in info.iterdir() if not p.name.startswith('.')) == [record['id']]


PLANTING_SCENE = '''
#fopen Ini "povray.ini" write
#write (Ini, "Include_Header=/etc/passwd\\n")
#fclose Ini
camera { location <0, 0, -3> look_at 0 }
light_source { <0, 0, -5> rgb 1 }
sphere { 0, 1 pigment { rgb 1 } }
'''


def test_povray_ini_planted_by_a_scene_never_reaches_the_next_render(proc, store_root):
    (store_root / 'plant.pov').write_text(PLANTING_SCENE)
    submit_and_wait(proc, store_root, 'povray', 'plant.pov')

    assert not list(store_root.rglob('povray.ini'))
    record, log = submit_and_wait(proc, store_root, 'povray', str(DATA / 'scene.pov'))
    assert record['status'] == 'complete', log
    assert 'root:' not in log


def test_povray_include_of_a_system_file_shows_nothing_of_it(proc, store_root):
    (store_root / 'peek.pov').write_text('#include "/etc/passwd"\nsphere { 0, 1 }\n')

    record, log = submit_and_wait(proc, store_root, 'povray', 'peek.pov')

    assert record['status'] == 'failed'
    assert 'root:x:0:0' not in log and 'nologin' not in log
    assert 'passwd' in log  # POV-Ray says it cannot open it


def test_povray_log_opens_without_a_complaint_about_its_conf(proc, store_root):
    # POV-Ray reads the povray.conf of services/povray.sandbox in its sandbox
    # (system's and user's): no "cannot open the user configuration file" line.
    record, log = submit_and_wait(proc, store_root, 'povray', str(DATA / 'scene.pov'))

    assert record['status'] == 'complete', log
    assert 'povray.conf' not in log and 'configuration file' not in log
    assert log.startswith('Persistence of Vision'), log[:200]


def test_povray_with_its_conf_still_cannot_read_a_file_of_the_server(proc, store_root):
    # The store's own rrcloudrc, by its absolute path: outside the sandbox.
    (store_root / 'peek.pov').write_text(f'#include "{store_root / "rrcloudrc"}"\nsphere {{ 0, 1 }}\n')

    record, log = submit_and_wait(proc, store_root, 'povray', 'peek.pov')

    assert record['status'] == 'failed'
    assert STORE_MARKER not in log
    assert 'rrcloudrc' in log  # POV-Ray says it cannot open it


# -- OpenJSCAD scripts are Node programs -------------------------------------

def hostile_jscad(store, port, other_input):
    """A V1 script that, loaded through Node's require, runs programs and looks around."""
    return f'''
const cp = require('child_process');
const fs = require('fs');
const seen = [];
const tryIt = (label, act) => {{ try {{ act(); seen.push('YES ' + label); }} catch (e) {{ seen.push('NO ' + label); }} }};
seen.push('ID ' + cp.execSync('id').toString().trim());
seen.push('ROOT ' + fs.readdirSync('/').sort().join(','));
tryIt('read-rrcloudrc', () => fs.readFileSync({json.dumps(str(store / 'rrcloudrc'))}));
tryIt('list-records', () => fs.readdirSync({json.dumps(str(store / 'tasks' / 'info'))}));
tryIt('read-other-input', () => fs.readFileSync({json.dumps(str(other_input))}));
tryIt('read-code', () => fs.readFileSync({json.dumps(str(REPO / 'rrcloud.py'))}));
tryIt('write-store', () => fs.writeFileSync({json.dumps(str(store / 'pwned'))}, 'x'));
tryIt('write-tmp', () => fs.writeFileSync('/tmp/rrcloud-sandbox-probe', 'x'));
tryIt('network', () => cp.execSync("python3 -c 'import socket; socket.create_connection((\\"127.0.0.1\\", {port}), 2)'", {{stdio: 'ignore'}}));
console.log(seen.join('\\n'));
function main() {{ return CSG.cube(); }}
module.exports = {{ main }};
'''


def test_openjscad_script_runs_but_sees_no_store_no_network_no_other_task(proc, store_root):
    secret = store_root / 'secret.txt'
    secret.write_text('another client\'s model\n')
    other, _ = submit_and_wait(proc, store_root, 'echo', 'secret.txt')
    other_input = store_root / other['in']
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(5)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    (store_root / 'evil.jscad').write_text(hostile_jscad(store_root, port, other_input))
    Path('/tmp/rrcloud-sandbox-probe').unlink(missing_ok=True)

    record, log = submit_and_wait(proc, store_root, 'openjscad', 'evil.jscad')

    assert 'ID uid=65534' in log, log  # it ran, as nobody
    for refused in ('read-rrcloudrc', 'list-records', 'read-other-input', 'read-code',
                    'write-store', 'network'):
        assert f'NO {refused}' in log, (refused, log)
    assert 'YES write-tmp' in log  # its private /tmp ...
    assert not Path('/tmp/rrcloud-sandbox-probe').exists()  # ... vanished with the sandbox
    assert not (store_root / 'pwned').exists()
    assert STORE_MARKER not in log
    with pytest.raises(socket.timeout):
        listener.accept()
    listener.close()


# -- Slic3r configs name programs --------------------------------------------

def test_slic3r_config_with_post_process_is_refused_naming_the_key(cli, store_root):
    (store_root / 'evil.ini').write_text('layer_height = 0.3\npost_process = /usr/bin/id\n')
    (store_root / 'cube.stl').write_bytes((DATA / 'cube.stl').read_bytes())

    result = cli('--sync', 'slic3r', '--load=evil.ini', 'cube.stl')

    assert result.code == 2
    assert "'post_process' is not allowed" in result.err
    assert not (store_root / 'tasks' / 'info').exists() or not os.listdir(store_root / 'tasks' / 'info')


@pytest.mark.parametrize('line', ['output_filename_format = /etc/cron.d/x.gcode',
                                  'print_host = printer.local', 'unknown_key = 1'])
def test_slic3r_config_keys_off_the_list_are_refused(cli, store_root, line):
    (store_root / 'bad.ini').write_text(f'layer_height = 0.3\n{line}\n')
    (store_root / 'cube.stl').write_bytes((DATA / 'cube.stl').read_bytes())

    result = cli('--sync', 'slic3r', '--load=bad.ini', 'cube.stl')

    assert result.code == 2
    assert f"'{line.split(' ')[0]}' is not allowed" in result.err


def test_slic3r_config_as_exported_with_empty_program_keys_slices(proc, store_root):
    """An exported config names post_process with no value: that sets nothing."""
    config = (DATA / 'slic3r.ini').read_text() + 'post_process = \nnotes = \n; a comment\n'
    (store_root / 'exported.ini').write_text(config)
    (store_root / 'cube.stl').write_bytes((DATA / 'cube.stl').read_bytes())

    result = proc('--sync', 'slic3r', '--load=exported.ini', 'cube.stl', '--output=cube.gcode')

    assert result.code == 0, result
    assert 'layer_height = 0.3' in (store_root / 'cube.gcode').read_text()


def test_slic3r_config_over_http_with_post_process_is_400_naming_the_key(embedded_server):
    server = embedded_server()
    answer = plain_session().post(server.url, data={'service': 'slic3r', 'prearg0': '--load='},
                                  files={'fileIn0': ('evil.ini', b'post_process = /usr/bin/id\n'),
                                         'fileIn1': ('cube.stl', (DATA / 'cube.stl').read_bytes())})
    assert answer.status_code == 400
    assert 'post_process' in answer.text
    assert not server.records()


# -- OpenSCAD reads other clients' models ------------------------------------

def test_openscad_cannot_include_another_tasks_input_or_import_an_absolute_path(embedded_server):
    server = embedded_server()
    victim = server.wait_done(submit(server, 'openscad', 'cube(42);\n', 'secret.scad'))
    assert victim['status'] == 'complete'
    stored = server.records()[victim['id']]['in']  # what a listing used to show everyone
    for name, model in {
        'relative.scad': f'include <{stored}>\n',
        'climbing.scad': f'include <../../{stored}>\n',
        'absolute.scad': f'include <{server.root / stored}>\n',
        'imported.scad': f'import("{server.root / victim["out"]}");\n',
    }.items():
        record = server.wait_done(submit(server, 'openscad', model, name))

        assert record['status'] == 'failed', (name, record)
        out = server.root / 'tasks' / 'out' / f'{record["id"]}.stl'
        assert not out.exists(), name


def test_service_conf_read_paths_show_a_library_read_only(proc, store_root, tmp_path):
    library = tmp_path / 'library'
    library.mkdir()
    (library / 'parts.scad').write_text('module part() { cube(3); }\n')
    (store_root / 'uses.scad').write_text(f'use <{library}/parts.scad>\npart();\n')
    conf = (REPO / 'services' / 'openscad.conf').read_text()

    without, _ = submit_and_wait(proc, store_root, 'openscad', 'uses.scad')
    make_service(store_root, 'openscad', conf + f'readPaths = {library}\n')
    with_library, log = submit_and_wait(proc, store_root, 'openscad', 'uses.scad')

    assert without['status'] == 'failed'
    assert with_library['status'] == 'complete', log


# -- a record is data, never code ---------------------------------------------

def forge(root, fields):
    """Write a record and a queue marker as a hostile tool (or user) could."""
    info = Path(root) / 'tasks' / 'info'
    info.mkdir(parents=True, exist_ok=True)
    record = dict({'id': FORGED_ID, 'status': 'busy', 'queued': 'yes', 'service': 'echo',
                   'ctime': f'{time.time():.5f}'}, **fields)
    (info / FORGED_ID).write_text(''.join(f'{k}: {v}\n' for k, v in sorted(record.items())))
    queue = Path(root) / 'tasks' / 'queue'
    queue.mkdir(parents=True, exist_ok=True)
    (queue / FORGED_ID).touch()


def test_forged_record_with_a_cmd_runs_only_what_its_service_composes(cli, store_root):
    (store_root / 'note.txt').write_text('kept\n')
    cli('--sync', 'echo', 'note.txt')  # a real input to point at
    store = Store(store_root)
    real_input = next(p for p in os.listdir(store.folder('in')) if not p.startswith('.'))
    forge(store_root, {'cmd': "sh -c 'touch pwned'", 'in': f'tasks/in/{real_input}',
                       'out': f'tasks/out/{FORGED_ID}'})

    dispatch(store, load_config())
    record = wait_until_done(store_root, FORGED_ID)

    assert not list(store_root.rglob('pwned'))
    assert (store_root / 'tasks' / 'out' / FORGED_ID).read_text() == 'kept\n'  # cp, composed anew


@pytest.mark.parametrize('fields', [
    {'in': '/etc/passwd'},
    {'in': 'tasks/in/../../rrcloudrc'},
    {'in': 'tasks/in/1795999999-00000-000001.txt', 'nativeArgs': '--evil'},
    {'in': 'tasks/in/1795999999-00000-000001.txt', 'preargs': '--load='},
    {'in': ''},
])
def test_forged_record_that_does_not_check_is_refused_and_logged(cli, store_root, fields):
    forge(store_root, dict(fields, cmd="sh -c 'touch pwned'"))
    store = Store(store_root)

    dispatch(store, load_config())
    record = wait_until_done(store_root, FORGED_ID)

    assert record['status'] == 'failed'
    assert record['error'].startswith('refused: the record does not check')
    assert 'refused' in (store_root / 'tasks' / 'log' / FORGED_ID).read_text()
    assert not list(store_root.rglob('pwned'))
    assert not (store_root / 'tasks' / 'out' / FORGED_ID).exists()


def test_queue_marker_for_a_task_that_is_not_queued_starts_nothing(cli, store_root):
    forge(store_root, {'in': 'tasks/in/1795999999-00000-000001.txt'})
    record_path = store_root / 'tasks' / 'info' / FORGED_ID
    record_path.write_text(record_path.read_text().replace('queued: yes\n', ''))
    store = Store(store_root)

    dispatch(store, load_config())

    assert 'runner' not in Store(store_root).read_task(FORGED_ID)
    assert not (store_root / 'tasks' / 'queue' / FORGED_ID).exists()


# -- the sandbox itself ---------------------------------------------------------

# argv: sh -c SCRIPT lister PORT INPUT OUT (native arguments come before the inputs)
DEVICE_LISTER = ('path = /usr/bin:/bin\ncmd = sh -c \'ls /dev /dev/pts > "$3"\' lister\n'
                 'nativeArgs = /dev/pts/\n')


def test_a_printer_port_is_the_only_device_beside_the_basic_ones(proc, store_root):
    import pty
    master, slave = pty.openpty()
    port = os.ttyname(slave)
    make_service(store_root, 'lister', DEVICE_LISTER)
    (store_root / 'any.txt').write_text('an input\n')
    try:
        record, log = submit_and_wait(proc, store_root, 'lister', 'any.txt', port)
    finally:
        os.close(master)
        os.close(slave)
    assert record['status'] == 'complete', log
    listed = (store_root / record['out']).read_text().split()
    assert os.path.basename(port) in listed
    assert sorted(n for n in listed if not n.endswith(':') and n != os.path.basename(port)) == \
        sorted(['full', 'null', 'pts', 'random', 'urandom', 'zero'])


def run_script(proc, root, script):
    """Run ``script`` as a task's tool (its output path is $1); (record, log)."""
    make_service(root, 'job', SH_SERVICE)
    (root / 'job.sh').write_text(script)
    return submit_and_wait(proc, root, 'job', 'job.sh')


def test_tool_output_that_is_a_link_is_not_followed(proc, store_root):
    record, log = run_script(proc, store_root, 'ln -s /etc/hostname "$1"\n')

    assert record['status'] == 'failed'
    assert record['error'] == 'the output is not a regular file'
    assert not (store_root / record['out']).exists()


def test_output_over_max_output_size_is_not_taken(proc, store_root):
    write_config(store_root, 'maxOutputSize = 1000\n')

    record, log = run_script(proc, store_root, 'head -c 5000 /dev/zero > "$1"\n')

    assert record['status'] == 'failed'
    # Stopped while it wrote (RLIMIT_FSIZE), no longer only refused afterwards.
    assert record['error'] == 'a file it wrote passed maxOutputSize (1000 bytes)'
    assert not (store_root / record['out']).exists()
    assert not os.listdir(store_root / 'tasks' / 'work')


def test_sandbox_off_takes_an_explicit_setting_that_meta_reports_and_the_log_warns(embedded_server):
    on = embedded_server()
    off = embedded_server(config='sandbox = no\n')

    assert on.info  # started
    meta_on = plain_session().get(on.url, params={'service': 'meta', 'format': 'json'}).json()
    meta_off = plain_session().get(off.url, params={'service': 'meta', 'format': 'json'}).json()
    assert meta_on['sandbox'] == 'bwrap'
    assert meta_off['sandbox'] == 'off'
    assert 'sandbox = no' in off.log.read_text()
    assert 'warning' not in on.log.read_text()


# -- cross-site requests -------------------------------------------------------

def post_echo(url, headers):
    return plain_session().post(url, data={'service': 'echo', 'fileIn0': 'hello there'},
                                headers=headers, timeout=30)


@pytest.mark.parametrize('headers', [{'Origin': 'http://evil.example'},
                                     {'Origin': 'null'},
                                     {'Sec-Fetch-Site': 'cross-site'}])
def test_cross_origin_post_is_refused_before_anything_is_written(embedded_server, headers):
    server = embedded_server()
    answer = post_echo(server.url, headers)

    assert answer.status_code == 403
    assert answer.headers['Access-Control-Allow-Origin'] == '*'
    assert 'origin' in answer.text
    assert not server.records()


def test_cross_origin_kill_is_refused(embedded_server):
    server = embedded_server()
    task_id = post_echo(server.url, {}).text.split('id: ', 1)[1].split('\n', 1)[0]
    answer = plain_session().get(server.url, params={'service': 'kill', 'id': task_id},
                                 headers={'Origin': 'http://evil.example'})
    assert answer.status_code == 403


def test_same_origin_post_from_the_servers_own_page_is_accepted(embedded_server):
    server = embedded_server()
    answer = post_echo(server.url, {'Origin': f'http://{server.address}', 'Sec-Fetch-Site': 'same-origin'})

    assert answer.status_code == 200, answer.text
    assert len(server.records()) == 1


def test_allow_origins_lets_a_named_web_app_post(embedded_server):
    running = embedded_server(config='allowOrigins = http://app.local:8080\n')

    assert post_echo(running.url, {'Origin': 'http://app.local:8080'}).status_code == 200
    assert post_echo(running.url, {'Origin': 'http://other.local:8080'}).status_code == 403


def test_cross_origin_reads_still_answer_with_cors(embedded_server):
    server = embedded_server()
    answer = plain_session().get(server.url, params={'service': 'meta'},
                                 headers={'Origin': 'http://evil.example'})
    assert answer.status_code == 200
    assert answer.headers['Access-Control-Allow-Origin'] == '*'


# -- clients see their own inputs only ----------------------------------------

def get_from(server, source, params):
    """A GET from another loopback address (another client, as the server sees it)."""
    connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=10,
                                            source_address=(source, 0))
    query = '&'.join(f'{k}={v}' for k, v in params.items())
    connection.request('GET', f'/?{query}')
    return connection.getresponse().read().decode()


def test_info_for_another_client_shows_inputs_without_their_store_path(embedded_server):
    server = embedded_server()
    task_id = post_echo(server.url, {}).text.split('id: ', 1)[1].split('\n', 1)[0]
    stored = server.records()[task_id]['in']
    assert stored.startswith('tasks/in/')

    own = get_from(server, '127.0.0.1', {'service': 'info', 'id': task_id, 'format': 'json'})
    other = get_from(server, '127.0.0.2', {'service': 'info', 'id': task_id, 'format': 'json'})
    listing = get_from(server, '127.0.0.2', {'service': 'info'})

    assert json.loads(own)['in'] == stored
    assert json.loads(other)['in'] == stored.rsplit('/', 1)[1]
    assert 'tasks/in/' not in other and 'tasks/in/' not in listing


# -- smaller holes --------------------------------------------------------------

def archive_bomb():
    """A small .tgz whose GNU long-name header declares 400 MiB of name."""
    header = tarfile.TarInfo('././@LongLink')
    header.type = tarfile.GNUTYPE_LONGNAME
    header.size = 400 * 1024 * 1024
    raw = io.BytesIO()
    import gzip
    with gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=9) as packed:
        packed.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(400):
            packed.write(b'a' * (1024 * 1024))
    return raw.getvalue()


# The child's own peak memory is VmHWM of its address space: ru_maxrss would
# count the memory of the (large) test process it was forked from as well.
UNPACK_IN_A_CHILD = '''
import sys
sys.path.insert(0, sys.argv[1])
from rrc.errors import UsageError
from rrc.projects import unpack_project
from rrc.store import Store
try:
    unpack_project(Store(sys.argv[2]), open(sys.argv[3], 'rb').read())
    print('unpacked')
except UsageError as exc:
    print('refused:', exc)
print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')))
'''


def test_archive_bomb_is_refused_with_bounded_memory(tmp_path):
    bomb = tmp_path / 'bomb.scad.tgz'
    bomb.write_bytes(archive_bomb())
    assert bomb.stat().st_size < 1024 * 1024

    done = subprocess.run([sys.executable, '-c', UNPACK_IN_A_CHILD, str(REPO), str(tmp_path), str(bomb)],
                          capture_output=True, text=True, timeout=60)

    outcome, peak_kib = done.stdout.strip().splitlines()
    assert outcome.startswith('refused: project archive: a header of 419430400 bytes')
    assert int(peak_kib) < 100 * 1024  # the 400 MiB were never read
    assert not os.listdir(tmp_path / 'tasks' / 'in')


def test_long_polls_beyond_max_waits_answer_at_once(embedded_server):
    running = embedded_server(config='maxWaits = 1\n',
                              services={'slow': 'path = /usr/bin:/bin\ncmd = sh\nnoOutput = yes\n'})
    answer = plain_session().post(running.url, data={'service': 'slow', 'fileIn0': 'sleep 5'})
    task_id = answer.text.split('id: ', 1)[1].split('\n', 1)[0]
    first = {}
    holder = threading.Thread(target=lambda: first.update(running.info(task_id, wait=20)))
    holder.start()
    time.sleep(0.5)  # the first long-poll holds the one wait slot

    second = running.info(task_id, wait=20)

    assert second['status'] == 'busy'  # answered at once, not held until the end
    holder.join()
    assert first['status'] == 'complete'


@pytest.mark.parametrize('address', ['100.100.100.200', 'fd00:ec2::254', '168.63.129.16',
                                     '169.254.169.254'])
def test_notifier_refuses_cloud_metadata_addresses(address):
    with pytest.raises(ValueError, match='refused'):
        resolve_notifier_host(address, 80, [])


def test_notifier_refuses_every_address_of_the_servers_own_interfaces():
    own = [n.split('/')[0] for n in own_addresses()]
    assert own
    for address in own:
        with pytest.raises(ValueError, match='refused'):
            resolve_notifier_host(address, 80, [])


def test_token_in_the_query_string_is_refused(embedded_server):
    token = 'a-token-of-sixteen-chars'
    running = embedded_server(config=f'token = {token}\n')

    in_url = plain_session().get(running.url, params={'service': 'meta', 'token': token})
    in_header = plain_session().get(running.url, params={'service': 'meta'},
                                    headers={'Authorization': f'Bearer {token}'})
    assert in_url.status_code == 400
    assert 'token in the URL is refused' in in_url.text
    assert in_header.status_code == 200


def test_a_queue_marker_cannot_turn_the_sandbox_off(cli, store_root):
    """A task's settings travel in its queue marker, a file in the store: one that
    says "sandbox = no" still runs sandboxed where the dispatching node has it on."""
    write_config(store_root, 'maxTasks = 1\n')
    make_service(store_root, 'job', SH_SERVICE)
    (store_root / 'hold.sh').write_text('sleep 30\n')
    (store_root / 'whoami.sh').write_text('id -u > "$1"\n')
    holder = task_id_of(cli('job', 'hold.sh').out)
    queued = task_id_of(cli('job', 'whoami.sh').out)
    marker = store_root / 'tasks' / 'queue' / queued
    assert marker.exists()
    marker.write_text(marker.read_text().replace('sandbox = yes', 'sandbox = no'))

    assert cli('kill', holder).code == 0  # frees the slot: the queued task starts
    record = wait_until_done(store_root, queued)

    assert record['status'] == 'complete'
    assert (store_root / record['out']).read_text().strip() == '65534'
