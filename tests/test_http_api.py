"""The HTTP API: in-process against the WSGI application, and a contract set
against three live deployments (the embedded server, lighttpd and Apache).

Every test runs against the ``wsgi`` deployment (inprocess.py): rrcloud's
WSGI application called in this process over a real store folder, with real
runner processes and real tools.  Tests marked ``LIVE`` run on every live
deployment too (deploy.py): a real server on a free loopback port, running
the repo's rrcloud.py (as CGI under the two web servers, from their configs
in lighttpd/ and apache/).  They are what a server in front of rrcloud
changes: the CGI environment, URL parsing, bodies and headers passed on,
process groups, long requests, many connections (docs/TESTING.md).  Tests
share one deployment per kind and look only at the tasks they created; HTTP
goes through ``server.session`` and ``server.request_raw``.

Test services (written into the store's services/ before the server starts):
``sh`` runs its first input as a shell script with the other inputs and the
output file as arguments, so one service gives quick, slow, chatty and
multi-input tasks.
"""
import concurrent.futures
import http.server
import json
import os
import queue
import re
import shlex
import threading
import time
import uuid

import pytest
import requests

import deploy
from conftest import DATA
from helpers import SH_INPUTS_SERVICE, plain_session, wait_for
from rrc.store import parse_record

ID_RE = re.compile(r'\A[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}\Z')
KEY_RE = re.compile(r'\A[A-Za-z][A-Za-z0-9_]*\Z')
INPUT_RE = re.compile(r'\Atasks/in/[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}(\.[A-Za-z0-9]+)?\Z')
UNKNOWN_ID = '1795841292-04767-953464'
FORMATS = ('text', 'json')
SPEC_INFO_FIELDS = {'client', 'cmd', 'ctime', 'etime', 'id', 'in', 'out', 'pid', 'server',
                    'service', 'status'}
META_FIELDS = {'cpuLoad', 'maxDataRetention', 'serverName', 'services', 'tasks', 'timeout',
               'uptime', 'version', 'busy', 'queued', 'maxTasks', 'sandbox', 'instance', 'events',
               'limits', 'maxMemory', 'maxProcesses', 'maxOutputSize', 'maxLogSize', 'maxSuspend',
               'toolVersions'}
BROWSER = 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'

# sh (SH_INPUTS_SERVICE), and the same with a result named by extension: sh_png writes ID.png, and so on.
RESULT_EXTENSIONS = ('png', 'stl', 'gcode')
TEST_SERVICES = dict({'sh': SH_INPUTS_SERVICE}, **{
    f'sh_{ext}': SH_INPUTS_SERVICE.replace('output = $fileOut', f'fileOut = $id.{ext}\noutput = $fileOut')
    for ext in RESULT_EXTENSIONS})
SERVER_NAME = 'rrcloud-test-node'
# The notifier listener of the tests runs on this machine, which rrcloud
# refuses as a notifier target unless told otherwise.
TEST_CONFIG = f'notifierAllow = 127.0.0.0/8\nserverName = {SERVER_NAME}\n'

# Writes its arguments and the inputs they name into the output (the last argument).
MULTI_SCRIPT = """\
n=$#
i=1
for a in "$@"; do last=$a; done
for a in "$@"; do
  [ "$i" -eq "$n" ] && break
  printf 'arg %s\\n' "$a"
  case $a in --data=*) cat "${a#--data=}" ;; *) cat "$a" ;; esac
  i=$((i + 1))
done > "$last"
"""


def sleep_script(seconds, result='done'):
    return f'sleep {seconds}\nprintf %s {shlex.quote(result)} > "$1"\n'


###############################################################################
# Fixtures
###############################################################################

def deployed(kind, config):
    """A deployment of ``kind`` with the test services, started for a ``with``."""
    return deploy.running(deploy.deployment(kind, config=config, services=TEST_SERVICES))


@pytest.fixture(scope='module', params=['wsgi'])
def server(request):
    """One deployment per kind, shared by the tests of this module: ``wsgi`` (the
    application in-process) unless a test asks for the live ones (LIVE, LIVE_ONLY)."""
    with deployed(request.param, TEST_CONFIG) as deployment:
        yield deployment


# The contract set: what a real server in front of rrcloud changes (the CGI
# environment, URL parsing, bodies, headers passed on, process groups,
# connections) runs on every live deployment too; LIVE_ONLY where the test
# needs a server process or a socket.
LIVE = pytest.mark.parametrize('server', deploy.ALL_KINDS, indirect=True)
LIVE_ONLY = pytest.mark.parametrize('server', deploy.KINDS, indirect=True)


@pytest.fixture(params=['wsgi'])
def one_slot_server(request):
    """A deployment of its own with ``maxTasks = 1``."""
    with deployed(request.param, TEST_CONFIG + 'maxTasks = 1\n') as deployment:
        yield deployment


@pytest.fixture
def listener():
    """An HTTP server on 127.0.0.1 that records the paths of the GETs it receives."""
    received = queue.Queue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            received.put(self.path)
            self.send_response(200)
            self.send_header('Content-Length', '2')
            self.end_headers()
            self.wfile.write(b'ok')

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.received = received
    yield httpd
    httpd.shutdown()
    httpd.server_close()


###############################################################################
# Helpers: what a client sees
###############################################################################

def parse_text_record(text):
    """A spec ``key: value`` answer as a dict; every line must be such a pair."""
    assert text.endswith('\n'), repr(text)
    record = {}
    for line in text[:-1].split('\n'):
        key, sep, value = line.partition(': ')
        assert sep and KEY_RE.match(key), f'not a "key: value" line: {line!r} in {text!r}'
        assert key not in record, f'{key} twice in {text!r}'
        record[key] = value
    return record


def parse_text_records(text):
    """The text listing of all tasks: records separated by blank lines."""
    if text == '':
        return []
    return [parse_text_record(block if block.endswith('\n') else block + '\n')
            for block in text.split('\n\n')]


def check_cors(response):
    assert response.headers.get('Access-Control-Allow-Origin') == '*', dict(response.headers)


def answer_of(response, fmt):
    """The record of a 200 answer in the asked format."""
    assert response.status_code == 200, (response.status_code, response.text)
    check_cors(response)
    if fmt == 'json':
        assert response.headers['Content-Type'].startswith('application/json')
        record = json.loads(response.text)
        assert isinstance(record, dict), record
        assert all(isinstance(v, str) for v in record.values()), record
        return record
    assert response.headers['Content-Type'].startswith('text/plain')
    return parse_text_record(response.text)


def records_of(response, fmt):
    """All records of an info-of-all answer in the asked format."""
    assert response.status_code == 200, (response.status_code, response.text)
    check_cors(response)
    if fmt == 'json':
        assert response.headers['Content-Type'].startswith('application/json')
        records = json.loads(response.text)
        assert isinstance(records, list)
        return records
    assert response.headers['Content-Type'].startswith('text/plain')
    return parse_text_records(response.text)


def error_of(response, status):
    """The one-line reason of an error answer with ``status`` (text format)."""
    assert response.status_code == status, (response.status_code, response.text)
    check_cors(response)
    assert response.headers['Content-Type'].startswith('text/plain')
    text = response.text
    assert text.startswith('error: ') and text.endswith('\n') and text.count('\n') == 1, repr(text)
    return text[len('error: '):-1]


def with_format(fields, fmt):
    return dict(fields, format='json') if fmt == 'json' else dict(fields)


def submit(server, fields, files=None, fmt='text', **kwargs):
    """POST / (urlencoded, or multipart when ``files`` is given); the response."""
    return server.session.post(f'{server.url}/', data=with_format(fields, fmt), files=files,
                         timeout=30, **kwargs)


def start(server, script_or_content, service='sh', fmt='text'):
    """Start a task whose fileIn0 is content; returns its record (asserting a busy answer)."""
    record = answer_of(submit(server, {'service': service, 'fileIn0': script_or_content}, fmt=fmt), fmt)
    assert ID_RE.match(record['id']), record
    assert record['status'] == 'busy', record
    return record


def info(server, task_id, fmt='text', wait=None):
    params = with_format({'service': 'info', 'id': task_id}, fmt)
    if wait is not None:
        params['wait'] = str(wait)
    return server.session.get(f'{server.url}/', params=params, timeout=90)


def wait_done(server, task_id, timeout=60):
    """Long-poll a task until it leaves busy; returns its record."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        record = answer_of(info(server, task_id, 'json', wait=max(0, min(20, int(left)))), 'json')
        if record['status'] != 'busy':
            return record
        if time.monotonic() >= deadline:
            raise AssertionError(f'{server.kind}: task {task_id} still busy after {timeout} s: {record}')


def all_records(server, ids):
    """The records of ``ids`` from the info-of-all answer, by id."""
    answer = server.session.get(f'{server.url}/', params={'service': 'info', 'format': 'json'}, timeout=60)
    return {r['id']: r for r in records_of(answer, 'json') if r['id'] in ids}


def meta(server, fmt='json'):
    return answer_of(server.session.get(f'{server.url}/', params=with_format({'service': 'meta'}, fmt),
                                  timeout=30), fmt)


def wait_idle(server, timeout=60):
    """Until no task of this deployment runs or waits (other tests' leftovers),
    and no runner is left tidying up after its task ended (its running marker
    and work folder go only then)."""
    deadline = time.monotonic() + timeout
    while True:
        now = meta(server)
        tidying = [p for p in server.store_files() if p.startswith(('running/', 'work/'))]
        if now['busy'] == '0' and now['queued'] == '0' and not tidying:
            return
        assert time.monotonic() < deadline, f'{server.kind} still busy: {now}, {tidying}'
        time.sleep(0.1)


def kill(server, task_id, fmt='text'):
    return server.session.get(f'{server.url}/', params=with_format({'service': 'kill', 'id': task_id}, fmt),
                        timeout=30)


def kill_quietly(server, task_id):
    try:
        kill(server, task_id)
    except requests.RequestException:
        pass


def raw_get(server, path, headers=None):
    """GET ``path`` exactly as written (no client-side normalising of '..' or escapes)."""
    status, response_headers, body = server.request_raw('GET', path, headers=headers, timeout=30)
    return status, {k.lower(): v for k, v in response_headers}, body


def download(server, relative):
    return server.session.get(f'{server.url}/{relative}', timeout=30)


def wait_runner_gone(server, task_id):
    """Until the runner of a task (named in its record in the store) has exited."""
    record = parse_record((server.store / 'tasks' / 'info' / task_id).read_text())
    if record.get('runner', '').isdigit():
        wait_for(lambda: not process_alive(int(record['runner'])), f'{server.kind}: the runner of {task_id} exits')


def process_alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f'/proc/{pid}/stat', 'rb') as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b')') + 2:][:1] not in (b'Z', b'X')


###############################################################################
# Submitting: multipart upload, multipart string, urlencoded -- text and JSON
###############################################################################

@LIVE  # uploads and forms through the web server; REMOTE_ADDR as the client
@pytest.mark.parametrize('fmt', FORMATS)
@pytest.mark.parametrize('how', ['upload', 'multipart-string', 'urlencoded'])
def test_post_answers_the_busy_record_and_the_task_completes(server, how, fmt):
    content = f'echo input {uuid.uuid4()} via {how}\n'
    if how == 'upload':
        response = submit(server, {'service': 'echo'},
                          files={'fileIn0': ('model.dat', content.encode(), 'application/octet-stream')},
                          fmt=fmt)
        ext = '.dat'
    elif how == 'multipart-string':
        response = submit(server, {'service': 'echo'}, files={'fileIn0': (None, content)}, fmt=fmt)
        ext = '.txt'  # echo's inputExt
        assert response.request.headers['Content-Type'].startswith('multipart/form-data')
    else:
        response = submit(server, {'service': 'echo', 'fileIn0': content}, fmt=fmt)
        ext = '.txt'
        assert response.request.headers['Content-Type'] == 'application/x-www-form-urlencoded'
    record = answer_of(response, fmt)
    task_id = record['id']
    assert ID_RE.match(task_id), record
    assert record['status'] == 'busy'
    assert record['service'] == 'echo'
    assert record['client'] == '127.0.0.1'
    assert INPUT_RE.match(record['in']) and record['in'].endswith(ext), record
    assert record['out'] == f'tasks/out/{task_id}'
    assert record['cmd'] == f'cp {record["in"]} tasks/out/{task_id}'
    assert float(record['ctime']) > 0
    assert record['sizeIn'] == str(len(content.encode()))

    done = wait_done(server, task_id)
    assert done['status'] == 'complete', done
    result = download(server, done['out'])
    assert result.status_code == 200
    assert result.content == content.encode()


###############################################################################
# A RepRapCloud 0.019 client: its synchronous wrappers and its async path
###############################################################################

BAD_SCAD = 'cube(10;\n'  # a syntax error: openscad fails
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def client_0_019_name(path):
    """The name a 0.019 client gives its own copy of an input: tasks/in/<uniq>.<ext>."""
    now = time.time()
    ext = os.path.splitext(str(path))[1]
    return f'tasks/in/{int(now)}-{int(now % 1 * 100_000):05d}-{uuid.uuid4().int % 1_000_000:06d}{ext}'


def client_0_019_post(server, service, inputs, in_as_upload=False):
    """The POST of a 0.019 ``SERVICE.cloud`` (curl -F): ``service``, ``fileInN``
    uploads of its local copies (``preargN`` for an argInput input such as
    slic3r's --load=) and ``in``, the comma-separated list of those local
    paths.  ``inputs`` is a list of (prearg, path).  With ``in_as_upload`` the
    ``in`` part is a file, as curl sends ``-F in=@PATH`` when PATH exists."""
    parts, local = [('service', (None, service))], []
    for number, (prearg, path) in enumerate(inputs):
        name = client_0_019_name(path)
        local.append(name)
        parts.append((f'fileIn{number}', (os.path.basename(name), path.read_bytes())))
        if prearg:
            parts.append((f'prearg{number}', (None, prearg)))
    in_part = (os.path.basename(local[0]), inputs[0][1].read_bytes()) if in_as_upload else (None, ','.join(local))
    parts.append(('in', in_part))
    return server.session.post(f'{server.url}/', files=parts, timeout=120)


def client_0_019_sync(server, service, inputs, in_as_upload=False):
    """A 0.019 synchronous wrapper against ``server``, step by step: the POST,
    then ONE ``?service=info&id=ID`` read that must show the task ended (0.019
    gives up otherwise: "doesn't run RepRapCloud"), then the result (when
    complete) and the log.  Returns (record, result bytes or None, log text)."""
    posted = client_0_019_post(server, service, inputs, in_as_upload)
    task_id = answer_of(posted, 'text')['id']
    read = server.session.get(f'{server.url}/?service=info&id={task_id}', timeout=30)
    record = answer_of(read, 'text')
    assert record['status'] in ('complete', 'failed'), \
        f'{server.kind}: a 0.019 client would give up on {record}'
    result = download(server, record['out']).content if record['status'] == 'complete' else None
    return record, result, download(server, f'tasks/log/{task_id}').text


def test_a_0_019_wrapper_gets_an_ended_task(server, tmp_path):
    notes = tmp_path / 'notes.txt'
    notes.write_text(f'notes {uuid.uuid4()}\n')

    record, result, _ = client_0_019_sync(server, 'echo', [('', notes)])

    assert record['status'] == 'complete', record
    assert INPUT_RE.match(record['in']) and record['in'].endswith('.txt'), record
    assert result == notes.read_bytes()


@LIVE  # a POST held until its task ends: a long request through the CGI
def test_a_0_019_wrapper_gets_a_slow_task_ended(server, tmp_path):
    # Two seconds of work: the one read after the POST sees the end only if the POST waited for it.
    job = tmp_path / 'job.sh'
    job.write_text(sleep_script(2, 'slow result'))

    record, result, _ = client_0_019_sync(server, 'sh', [('', job)])

    assert record['status'] == 'complete', record
    assert result == b'slow result'


def test_a_0_019_wrapper_gets_a_failed_model_with_its_log(server, tmp_path):
    model = tmp_path / 'broken.scad'
    model.write_text(BAD_SCAD)

    record, result, log = client_0_019_sync(server, 'openscad', [('', model)])

    assert record['status'] == 'failed', record
    assert result is None
    assert 'error' in log.lower(), log


def check_stl(data):
    assert data.startswith(b'solid') or len(data) > 84, data[:80]


def check_gcode(data):
    assert b'\nG1 ' in data, data[:200]


def check_png(data):
    assert data.startswith(PNG_SIGNATURE), data[:16]


def check_same_as(name):
    def check(data):
        assert data == (DATA / name).read_bytes()
    return check


# Every service with an output, as its 0.019 wrapper sends it: (service, inputs, check of the result).
SERVICES_0_019 = [
    ('openscad', [('', 'cube.scad')], check_stl),
    ('openjscad', [('', 'cube.jscad')], check_stl),
    ('slic3r', [('--load=', 'slic3r.ini'), ('', 'cube.stl')], check_gcode),
    ('povray', [('', 'scene.pov')], check_png),
    ('echo', [('', 'cube.stl')], check_same_as('cube.stl')),
]


@pytest.mark.parametrize('service, inputs, check', SERVICES_0_019, ids=[s[0] for s in SERVICES_0_019])
def test_a_0_019_wrapper_gets_each_services_result(server, service, inputs, check):
    record, result, _ = client_0_019_sync(server, service, [(prearg, DATA / name) for prearg, name in inputs])

    assert record['status'] == 'complete', record
    assert record['service'] == service
    assert all(INPUT_RE.match(p) for p in record['in'].split(',')), record
    if service == 'slic3r':
        assert ' --load=tasks/in/' in record['cmd'], record
    check(result)


@pytest.mark.parametrize('in_as', ['text', 'upload'])
def test_the_in_field_names_nothing_on_the_server(server, tmp_path, in_as):
    # A hostile `in` list: read, written or answered back, any of these would show.
    notes = tmp_path / 'notes.txt'
    notes.write_text(f'notes {uuid.uuid4()}\n')
    wait_idle(server)
    before = server.store_files()
    parts = [('service', (None, 'echo')), ('fileIn0', ('notes.txt', notes.read_bytes()))]
    hostile = '../../rrcloudrc,/etc/passwd,tasks/info,../app/rrcloud.py'
    parts.append(('in', ('passwd', b'root:x:0:0\n') if in_as == 'upload' else (None, hostile)))

    response = server.session.post(f'{server.url}/', files=parts, timeout=60)

    record = answer_of(response, 'text')
    assert record['status'] == 'complete', record
    assert INPUT_RE.match(record['in']), record
    for secret in (deploy.CONFIG_MARKER, 'root:x:0:0', 'def run_mode', hostile):
        assert secret not in response.text
    assert download(server, record['out']).content == notes.read_bytes()
    new_inputs = {p for p in server.store_files() - before if p.startswith('in/')}
    assert new_inputs == {record['in'][len('tasks/'):]}, new_inputs


def test_a_0_019_async_client_gets_the_id_at_once_and_asks_later(server):
    # `rrcloud openscad part.scad` then `rrcloud info ID`: no `in`, and 0.019's
    # info is a multipart POST too.
    posted = server.session.post(f'{server.url}/', files=[('service', (None, 'sh')),
                                                    ('fileIn0', ('job.sh', sleep_script(2, 'later').encode()))],
                           timeout=30)
    first = answer_of(posted, 'text')
    assert first['status'] == 'busy', first
    deadline = time.monotonic() + 60
    while True:
        asked = server.session.post(f'{server.url}/', files=[('service', (None, 'info')), ('id', (None, first['id']))],
                              timeout=30)
        record = answer_of(asked, 'text')
        if record['status'] != 'busy' or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert record['status'] == 'complete', record
    assert download(server, record['out']).content == b'later'


###############################################################################
# wait= on a POST: the answer is held like wait= on info
###############################################################################

@LIVE  # a held POST (long-poll) through the server
@pytest.mark.parametrize('fmt', FORMATS)
def test_post_with_wait_answers_the_ended_task(server, fmt):
    response = submit(server, {'service': 'sh', 'fileIn0': sleep_script(1, 'held'), 'wait': '30'}, fmt=fmt)

    record = answer_of(response, fmt)
    assert record['status'] == 'complete', record
    assert 'etime' in record
    assert download(server, record['out']).content == b'held'


@LIVE  # a held POST (long-poll) through the server
def test_post_with_wait_answers_busy_when_the_time_is_up(server):
    record = answer_of(submit(server, {'service': 'sh', 'fileIn0': sleep_script(30), 'wait': '1'}), 'text')
    try:
        assert record['status'] == 'busy', record
    finally:
        kill_quietly(server, record['id'])


###############################################################################
# info: one task, all tasks, long-poll
###############################################################################

@pytest.mark.parametrize('fmt', FORMATS)
def test_info_of_one_task_has_the_spec_fields(server, fmt):
    task_id = start(server, 'info content', service='echo')['id']
    wait_done(server, task_id)
    record = answer_of(info(server, task_id, fmt), fmt)
    assert SPEC_INFO_FIELDS <= set(record), record
    assert record['id'] == task_id
    assert record['status'] == 'complete'
    assert float(record['ctime']) <= float(record['etime'])
    assert record['pid'].isdigit()
    assert record['server'] != ''


@pytest.mark.parametrize('fmt', FORMATS)
def test_info_of_all_lists_every_task(server, fmt):
    ids = {start(server, f'all {n}', service='echo')['id'] for n in range(3)}
    for task_id in ids:
        wait_done(server, task_id)
    answer = server.session.get(f'{server.url}/', params=with_format({'service': 'info'}, fmt), timeout=30)
    records = records_of(answer, fmt)
    ours = {r['id']: r for r in records if r['id'] in ids}
    assert set(ours) == ids
    assert all(r['status'] == 'complete' and r['service'] == 'echo' for r in ours.values())
    assert all(ID_RE.match(r['id']) for r in records)
    assert len({r['id'] for r in records}) == len(records)


@LIVE  # long-poll through the server
@pytest.mark.parametrize('fmt', FORMATS)
def test_wait_returns_as_soon_as_the_task_completes(server, fmt):
    task_id = start(server, sleep_script(1))['id']
    began = time.monotonic()
    record = answer_of(info(server, task_id, fmt, wait=30), fmt)
    elapsed = time.monotonic() - began
    assert record['status'] == 'complete', record
    assert elapsed < 15, f'wait=30 answered after {elapsed:.1f} s for a 1 s task'


@LIVE  # long-poll through the server
def test_wait_answers_busy_when_the_time_is_up(server):
    task_id = start(server, sleep_script(30))['id']
    try:
        began = time.monotonic()
        record = answer_of(info(server, task_id, wait=1), 'text')
        elapsed = time.monotonic() - began
        assert record['status'] == 'busy'
        assert 0.9 <= elapsed < 10
    finally:
        kill_quietly(server, task_id)


###############################################################################
# meta
###############################################################################

@pytest.mark.parametrize('fmt', FORMATS)
def test_meta(server, fmt):
    record = meta(server, fmt)
    assert set(record) == META_FIELDS, record
    assert record['version'].startswith('RepRapCloud 0.019')
    services = record['services'].split(',')
    assert {'echo', 'sh', 'openscad', 'slic3r'} <= set(services)
    assert services == sorted(services)
    assert record['maxTasks'] == str(os.cpu_count())
    assert record['timeout'] == '1800'
    assert record['maxDataRetention'] == '24'
    for key in ('tasks', 'busy', 'queued'):
        assert record[key].isdigit(), (key, record)
    float(record['cpuLoad'])
    assert re.match(r'\A[0-9]+d [0-9]{2}h [0-9]{2}m [0-9]{2}s\Z', record['uptime']), record
    assert record['serverName'] == SERVER_NAME, 'the configured name'


def uptime_seconds(text):
    """``0d 06h 00m 52s`` in seconds."""
    days, hours, minutes, seconds = (int(part[:-1]) for part in text.split())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@LIVE_ONLY  # the server process's age; under CGI, the web server's
def test_meta_uptime_is_the_servers_not_the_machines(server):
    import psutil
    started = psutil.Process(server.process.pid).create_time()  # the web server (or rrcloud serve)
    while time.time() - started < 3:  # old enough to tell its uptime from a fresh process's 0 s
        time.sleep(0.1)
    with open('/proc/uptime') as handle:
        machine = float(handle.read().split()[0])

    served = uptime_seconds(meta(server)['uptime'])
    age = time.time() - started

    # Under CGI every request is a new process: the uptime must still be the
    # web server's, not the request's, and not the machine's (booted earlier).
    assert 2 <= served <= age + 1, (served, age)
    assert served < machine - 1, (served, machine)


def test_meta_counts_tasks(server):
    before = int(meta(server)['tasks'])
    wait_done(server, start(server, 'count me', service='echo')['id'])
    assert int(meta(server)['tasks']) >= before + 1


###############################################################################
# kill
###############################################################################

@LIVE  # kill through the server: the task is not in its process group
@pytest.mark.parametrize('fmt', FORMATS)
def test_kill_stops_a_long_task(server, fmt):
    task_id = start(server, sleep_script(60, 'late'))['id']
    try:
        deadline = time.monotonic() + 20
        while 'pid' not in (record := answer_of(info(server, task_id, 'json'), 'json')):
            assert time.monotonic() < deadline, f'no pid recorded: {record}'
            time.sleep(0.05)
        pid = int(record['pid'])
        assert process_alive(pid)

        killed = answer_of(kill(server, task_id, fmt), fmt)
        assert killed['id'] == task_id
        assert killed['status'] == 'failed'
        assert killed['error'] == 'killed'

        deadline = time.monotonic() + 15
        while process_alive(pid):
            assert time.monotonic() < deadline, f'tool {pid} still runs after kill'
            time.sleep(0.05)
        time.sleep(0.5)
        after = answer_of(info(server, task_id, fmt), fmt)
        assert after['status'] == 'failed' and after['error'] == 'killed', after
        assert download(server, f'tasks/out/{task_id}').status_code == 404

        again = error_of(kill(server, task_id), 400)
        assert 'not running' in again
    finally:
        kill_quietly(server, task_id)


def test_kill_of_an_unknown_task_is_404(server):
    assert task_id_unknown_error(kill(server, UNKNOWN_ID))


def task_id_unknown_error(response):
    reason = error_of(response, 404)
    assert UNKNOWN_ID in reason
    return reason


def test_info_of_an_unknown_task_is_404(server):
    assert task_id_unknown_error(info(server, UNKNOWN_ID))


###############################################################################
# The browser page and the curl listing
###############################################################################

def test_browser_gets_the_pages_shell_and_its_script(server):
    """A browser's GET / is the page's shell: it loads its script from /ui/
    and every record from the API, so the HTML itself names no task (the
    rows, their sizes and links are the browser tests', tests/test_page.py)."""
    task_id = start(server, 'shown in the page', service='echo')['id']
    wait_done(server, task_id)
    answer = server.session.get(f'{server.url}/', headers={'User-Agent': BROWSER}, timeout=30)
    assert answer.status_code == 200
    check_cors(answer)
    assert answer.headers['Content-Type'].startswith('text/html')
    page = answer.text
    assert task_id not in page
    assert '<script type="module" src="/ui/js/main.js"></script>' in page
    assert '<meta http-equiv="refresh"' not in page, 'the list updates itself: no reload'
    script = download(server, 'ui/js/main.js')
    assert script.status_code == 200 and script.headers['Content-Type'].startswith('text/javascript')
    # What the page links to for a task works.
    assert download(server, f'tasks/out/{task_id}').content == b'shown in the page'
    assert download(server, f'tasks/log/{task_id}').status_code == 200


def test_browser_page_holds_nothing_a_client_sent(server):
    evil = 'http://127.0.0.1:9/<script>alert(1)</script>?"><img/src=x/onerror=alert(2)>'
    response = submit(server, {'service': 'echo', 'fileIn0': '<script>alert(3)</script>', 'notifier': evil})
    task_id = answer_of(response, 'text')['id']
    wait_done(server, task_id)
    page = server.session.get(f'{server.url}/', headers={'User-Agent': BROWSER}, timeout=30).text
    assert task_id not in page
    assert 'alert(' not in page
    assert '<img' not in page.lower()


@pytest.mark.parametrize('agent', ['curl/8.5.0', 'Wget/1.21.4'])
def test_curl_and_wget_get_the_text_listing(server, agent):
    task_id = start(server, 'listed', service='echo')['id']
    wait_done(server, task_id)
    answer = server.session.get(f'{server.url}/', headers={'User-Agent': agent}, timeout=30)
    records = records_of(answer, 'text')
    assert task_id in {r['id'] for r in records}


def test_browser_asking_for_json_gets_json(server):
    task_id = start(server, 'json listing', service='echo')['id']
    answer = server.session.get(f'{server.url}/?format=json', headers={'User-Agent': BROWSER}, timeout=30)
    assert task_id in {r['id'] for r in records_of(answer, 'json')}


###############################################################################
# Downloads and what cannot be downloaded
###############################################################################

@LIVE  # files streamed through the server
def test_result_and_log_downloads(server):
    marker = f'log-line-{uuid.uuid4()}'
    task_id = start(server, f'echo {marker}\nprintf result-bytes > "$1"\n')['id']
    record = wait_done(server, task_id)
    assert record['status'] == 'complete', record
    result = download(server, f'tasks/out/{os.path.basename(record["out"])}')
    assert result.status_code == 200
    check_cors(result)
    assert result.content == b'result-bytes'
    log = download(server, f'tasks/log/{task_id}')
    assert log.status_code == 200
    check_cors(log)
    assert log.headers['Content-Type'].startswith('text/plain')
    assert marker in log.text


@LIVE  # Content-Type and nosniff as the server passes them on
@pytest.mark.parametrize('ext, content_type', [
    ('png', 'image/png'), ('stl', 'model/stl'), ('gcode', 'text/x-gcode'), ('', 'text/plain')])
def test_results_are_served_with_the_type_their_name_says(server, ext, content_type):
    record = wait_done(server, start(server, 'printf result > "$1"\n', service=f'sh_{ext}' if ext else 'sh')['id'])
    name = os.path.basename(record['out'])
    assert name.endswith(f'.{ext}') if ext else '.' not in name

    result = download(server, f'tasks/out/{name}')
    log = download(server, f'tasks/log/{record["id"]}')

    assert result.status_code == 200 and result.content == b'result'
    assert result.headers['Content-Type'].split(';')[0] == content_type, dict(result.headers)
    assert result.headers['X-Content-Type-Options'] == 'nosniff', 'never sniffed into HTML'
    assert log.headers['Content-Type'] == 'text/plain; charset=utf-8'
    assert log.headers['X-Content-Type-Options'] == 'nosniff'


@LIVE  # REMOTE_ADDR as the server passes it
def test_a_killed_tasks_log_says_it_was_killed_and_by_whom(server):
    task_id = start(server, sleep_script(60))['id']
    try:
        answer_of(kill(server, task_id), 'text')
    finally:
        kill_quietly(server, task_id)

    log = download(server, f'tasks/log/{task_id}').text
    assert f'task {task_id} killed by 127.0.0.1 (HTTP)' in log, log


def test_unknown_result_and_log_are_404(server):
    error_of(download(server, f'tasks/out/{UNKNOWN_ID}'), 404)
    error_of(download(server, f'tasks/log/{UNKNOWN_ID}'), 404)


@pytest.fixture(scope='module')
def secrets(server):
    """One finished task plus files a client must never get, with what they hold."""
    content = f'private input {uuid.uuid4()}'
    record = start(server, content, service='echo')
    task_id = record['id']
    wait_done(server, task_id)
    in_name = os.path.basename(record['in'])
    # A result that is a link to the config (as a hostile tool could leave it).
    link = server.store / 'tasks' / 'out' / f'link-{uuid.uuid4().hex[:8]}'
    os.symlink('../../rrcloudrc', link)
    return {
        'id': task_id, 'in_name': in_name, 'link': link.name,
        'contents': [deploy.CONFIG_MARKER, content, 'cmd = cp', 'cmd = sh', 'def run_mode',
                     f'service: echo', 'root:x:0:0', 'import rrcloud', 'server.modules',
                     'ScriptAlias'],
    }


DENIED_PATHS = [
    '/rrcloudrc',
    '/store/rrcloudrc',
    '/services/echo.conf',
    '/services/sh.conf',
    '/tasks/in/{in_name}',
    '/tasks/info/{id}',
    '/tasks/in/',
    '/tasks/info/',
    '/tasks/out/',
    '/tasks/',
    '/rrcloud.py',
    '/bin/index.cgi',
    '/index.cgi/rrcloudrc',
    '/lighttpd/rrcloud.conf',
    '/apache/rrcloud.conf',
    '/tasks/out/../rrcloudrc',
    '/tasks/out/../../rrcloudrc',
    '/tasks/out/%2e%2e%2frrcloudrc',
    '/tasks/out/%2e%2e%2f%2e%2e%2frrcloudrc',
    '/tasks/out/..%2f..%2frrcloudrc',
    '/tasks/out/%2e%2e/%2e%2e/rrcloudrc',
    '/tasks/log/..%2finfo%2f{id}',
    '/tasks/log/../info/{id}',
    '/tasks/out/..%2fin%2f{in_name}',
    '/tasks/out/{link}',
    '/tasks/log/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd',
    '/tasks/out/%2fetc%2fpasswd',
]


@LIVE  # '..', %2F and escapes in paths: the server parses the URL first
@pytest.mark.parametrize('template', DENIED_PATHS)
def test_denied_paths_never_give_the_content(server, secrets, template):
    path = template.format(**secrets)
    status, headers, body = raw_get(server, path)
    assert status in (403, 404), (path, status, body[:300])
    text = body.decode('utf-8', 'replace')
    for secret in secrets['contents']:
        assert secret not in text, (path, secret)


###############################################################################
# Access-Control-Allow-Origin on every answer
###############################################################################

CORS_REQUESTS = [
    ('GET', '/?service=meta'),
    ('GET', '/?service=meta&format=json'),
    ('GET', '/?service=info'),
    ('GET', '/?service=info&id=' + UNKNOWN_ID),
    ('GET', '/?service=info&id=..%2F..%2Fetc%2Fpasswd'),
    ('GET', '/?service=info&id=x&format=json'),
    ('GET', '/?service=echo'),
    ('GET', '/?status=complete'),
    ('GET', '/tasks/out/' + UNKNOWN_ID),
    ('GET', '/tasks/log/' + UNKNOWN_ID),
    ('GET', '/nothing/here'),
    ('GET', '/rrcloudrc'),
    ('GET', '/tasks/out/../rrcloudrc'),
    ('GET', '/tasks/out/%2e%2e%2frrcloudrc'),
    ('PUT', '/'),
    ('DELETE', '/'),
    ('OPTIONS', '/'),
    ('POST', '/'),
]


@LIVE  # CORS on error answers, some made by the server itself
@pytest.mark.parametrize('method, path', CORS_REQUESTS)
def test_every_answer_allows_any_origin(server, method, path):
    body = b'service=nosuch&fileIn0=x' if method in ('POST', 'PUT') else None
    headers = {'Content-Type': 'application/x-www-form-urlencoded'} if body else {}
    status, response_headers, _ = server.request_raw(method, path, body=body, headers=headers, timeout=30)
    # As http.client's getheader: several headers of the name joined by ', '.
    allowed = ', '.join(v for k, v in response_headers if k.lower() == 'access-control-allow-origin') or None
    assert allowed == '*', (method, path, status, response_headers)


###############################################################################
# Several inputs with a prearg
###############################################################################

def test_several_inputs_with_a_prearg(server):
    part_a = b'first data file\n'
    part_b = b'second data file\n'
    response = submit(server, {'service': 'sh', 'fileIn0': MULTI_SCRIPT, 'prearg1': '--data='},
                      files={'fileIn1': ('part-a.txt', part_a), 'fileIn2': ('part-b.dat', part_b)})
    record = answer_of(response, 'text')
    task_id = record['id']
    inputs = record['in'].split(',')
    assert len(inputs) == 3 and all(INPUT_RE.match(p) for p in inputs), record
    assert inputs[0].endswith('.sh') and inputs[1].endswith('.txt') and inputs[2].endswith('.dat')
    assert record['cmd'] == shlex.join(['sh', inputs[0], '--data=' + inputs[1], inputs[2],
                                        f'tasks/out/{task_id}'])
    done = wait_done(server, task_id)
    assert done['status'] == 'complete', done
    result = download(server, done['out']).content
    assert result == (f'arg --data={inputs[1]}\n'.encode() + part_a
                      + f'arg {inputs[2]}\n'.encode() + part_b)


###############################################################################
# Scheduling, detachment, restarts
###############################################################################

def test_with_one_slot_the_second_task_waits_for_the_first(one_slot_server):
    server = one_slot_server
    first = start(server, sleep_script(2, 'first'))
    second = start(server, 'second', service='echo')
    assert 'queued' not in first, first
    assert second.get('queued'), second
    now = answer_of(info(server, second['id']), 'text')
    assert now['status'] == 'busy' and now.get('queued'), now
    load = meta(server)
    assert (load['busy'], load['queued'], load['maxTasks']) == ('1', '1', '1'), load

    first_done = wait_done(server, first['id'])
    second_done = wait_done(server, second['id'])
    assert first_done['status'] == 'complete', first_done
    assert second_done['status'] == 'complete', second_done
    assert 'queued' not in second_done
    assert float(second_done['stime']) >= float(first_done['etime'])
    assert download(server, second_done['out']).content == b'second'


@LIVE  # the answer is not held by the runner's inherited descriptors
@pytest.mark.parametrize('fmt', FORMATS)
def test_post_of_a_long_task_is_answered_at_once(server, fmt):
    began = time.monotonic()
    response = submit(server, {'service': 'sh', 'fileIn0': sleep_script(5, 'slow')}, fmt=fmt)
    elapsed = time.monotonic() - began
    record = answer_of(response, fmt)
    assert record['status'] == 'busy'
    assert elapsed < 2, f'the POST of a 5 s task took {elapsed:.1f} s'
    done = wait_done(server, record['id'])
    assert done['status'] == 'complete', done
    assert float(done['etime']) - float(done['ctime']) >= 4.5
    assert download(server, done['out']).content == b'slow'


@LIVE  # a restart of the web server and its process group
def test_a_task_survives_a_restart_of_the_server(server):
    record = start(server, sleep_script(4, 'survivor'))
    server.restart()
    assert answer_of(info(server, record['id']), 'text')['status'] == 'busy'
    done = wait_done(server, record['id'])
    assert done['status'] == 'complete', done
    assert download(server, done['out']).content == b'survivor'


###############################################################################
# Notifier
###############################################################################

@pytest.mark.parametrize('fmt', FORMATS)
def test_notifier_is_called_with_the_id(server, listener, fmt):
    port = listener.server_address[1]
    notifier = f'http://$myip:{port}/done?id=$id&fmt={fmt}'
    response = submit(server, {'service': 'echo', 'fileIn0': 'notify me', 'notifier': notifier}, fmt=fmt)
    record = answer_of(response, fmt)
    assert record['notifier'] == notifier
    task_id = record['id']
    try:
        path = listener.received.get(timeout=30)
    except queue.Empty:
        raise AssertionError(f'{server.kind}: no notifier GET within 30 s') from None
    assert path == f'/done?id={task_id}&fmt={fmt}'
    done = wait_done(server, task_id)
    assert done['status'] == 'complete', done
    # The runner appends the notifier's outcome to the log after the record
    # says complete (rrc/notifier.py): the log is whole once the runner is gone.
    wait_runner_gone(server, task_id)
    log = download(server, f'tasks/log/{task_id}').text
    assert f'http://127.0.0.1:{port}/done?id={task_id}&fmt={fmt}' in log


###############################################################################
# Bad input: a clear 4xx, nothing written, nothing run
###############################################################################

def canary_script(token):
    """A task that, if it ever ran, leaves store/canary-TOKEN behind."""
    return f'touch canary-{token}\nprintf x > "$1"\n'


# (name, method, path or None, form fields, expected status, words the reason holds)
# {canary} in a field is replaced by a canary script.
BAD_REQUESTS = [
    ('id ../../etc/passwd (info)', 'GET', '/?service=info&id=../../etc/passwd', None, 400, ['bad task id']),
    ('id %2e%2e%2f (info)', 'GET', '/?service=info&id=%2e%2e%2f', None, 400, ['bad task id']),
    ('id %252e%252e%252f (info)', 'GET', '/?service=info&id=%252e%252e%252f', None, 400, ['bad task id']),
    ('id NUL (info)', 'GET', '/?service=info&id=%00', None, 400, ['bad task id']),
    ('id NUL after a good id (info)', 'GET', f'/?service=info&id={UNKNOWN_ID}%00', None, 400, ['bad task id']),
    ('id ../../etc/passwd (kill)', 'GET', '/?service=kill&id=..%2F..%2Fetc%2Fpasswd', None, 400, ['bad task id']),
    ('id %2e%2e%2f (kill)', 'GET', '/?service=kill&id=%2e%2e%2f', None, 400, ['bad task id']),
    ('id NUL (kill)', 'GET', '/?service=kill&id=%00', None, 400, ['bad task id']),
    ('id ../../etc/passwd (POST info)', 'POST', None,
     {'service': 'info', 'id': '../../etc/passwd'}, 400, ['bad task id']),
    ('kill without id', 'GET', '/?service=kill', None, 400, ['missing id']),
    ('wait too long', 'GET', f'/?service=info&id={UNKNOWN_ID}&wait=61', None, 400, ['wait']),
    ('wait not a number', 'GET', f'/?service=info&id={UNKNOWN_ID}&wait=soon', None, 400, ['wait']),
    ('wait too long (POST)', 'POST', None, {'service': 'sh', 'fileIn0': '{canary}', 'wait': '61'}, 400, ['wait']),
    ('wait not a number (POST)', 'POST', None, {'service': 'sh', 'fileIn0': '{canary}', 'wait': 'soon'}, 400,
     ['wait']),
    ('CR/LF in in', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'in': 'tasks/in/x.sh\r\nstatus: complete'}, 400, ['field in ']),
    ('in too long', 'POST', None, {'service': 'sh', 'fileIn0': '{canary}', 'in': 'x' * 5000}, 400, ['field in ']),
    ('service ../x', 'POST', None, {'service': '../x', 'fileIn0': '{canary}'}, 400, ['service', '../x']),
    ('unknown service', 'POST', None, {'service': 'nosuchservice', 'fileIn0': '{canary}'}, 400,
     ['unknown service', 'nosuchservice']),
    ('prearg ;rm -rf /', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'prearg0': ';rm -rf /'}, 400, ['prearg', ';rm -rf /']),
    ('prearg ;touch', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'fileIn1': 'x', 'prearg1': '--data=;touch canary-{token};'},
     400, ['prearg']),
    ('prearg without its input', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'prearg1': '--data='}, 400, ['prearg1']),
    ('native argument not allowed', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'nativeArgs': '-c'}, 400, ['-c']),
    ('CR/LF in notifier', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'notifier': 'http://127.0.0.1/\r\nstatus: complete'},
     400, ['notifier']),
    ('LF in notifier', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'notifier': 'http://127.0.0.1/x\nerror: forged'}, 400, ['notifier']),
    ('notifier not http', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'notifier': 'file:///etc/passwd'}, 400, ['notifier']),
    ('CR/LF in nativeArgs', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'nativeArgs': '\r\nstatus: complete'}, 400, ['nativeArgs']),
    ('CR/LF in arg0', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'arg0': 'x\r\nstatus: complete'}, 400, ['arg0']),
    ('CR/LF in prearg', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'fileIn1': 'x', 'prearg1': '--data=\r\nstatus: complete'},
     400, ['prearg1']),
    ('CR/LF in format', 'POST', None,
     {'service': 'sh', 'fileIn0': '{canary}', 'format': 'text\r\nstatus: complete'}, 400, ['format']),
    ('CR/LF in service', 'POST', None,
     {'service': 'sh\r\nstatus: complete', 'fileIn0': '{canary}'}, 400, ['service']),
    ('field out', 'POST', None, {'service': 'sh', 'fileIn0': '{canary}', 'out': '../../rrcloudrc'}, 400, ['out']),
    ('field status', 'POST', None, {'service': 'sh', 'fileIn0': '{canary}', 'status': 'complete'}, 400, ['status']),
    ('field pid', 'POST', None, {'service': 'sh', 'fileIn0': '{canary}', 'pid': '1'}, 400, ['pid']),
    ('field status in the query', 'POST', '/?status=complete',
     {'service': 'sh', 'fileIn0': '{canary}'}, 400, ['status']),
    ('field given twice', 'POST', '/?service=sh', {'service': 'sh', 'fileIn0': '{canary}'}, 400, ['service']),
    ('missing input', 'POST', None, {'service': 'sh'}, 400, ['missing input']),
    ('GET with service=echo', 'GET', '/?service=echo&fileIn0=x', None, 405, ['POST']),
    ('PUT', 'PUT', None, {'service': 'sh', 'fileIn0': '{canary}'}, 405, ['PUT']),
    ('DELETE', 'DELETE', '/?service=info', None, 405, ['DELETE']),
]


def bad_cases(in_query):
    return [pytest.param(*case[1:], encoding, id=f'{case[0]} ({encoding})')
            for case in BAD_REQUESTS if (case[3] is None) == in_query
            for encoding in (('query',) if case[3] is None else ('urlencoded', 'multipart'))]


@LIVE  # a query goes through the server's URL parsing first (%00, %2F)
@pytest.mark.parametrize('method, path, fields, status, words, encoding', bad_cases(in_query=True))
def test_bad_query_is_refused_with_nothing_written_or_run(server, method, path, fields, status, words, encoding):
    check_bad_input(server, method, path, fields, status, words, encoding)


@pytest.mark.parametrize('method, path, fields, status, words, encoding', bad_cases(in_query=False))
def test_bad_input_is_refused_with_nothing_written_or_run(server, method, path, fields, status, words, encoding):
    check_bad_input(server, method, path, fields, status, words, encoding)


def check_bad_input(server, method, path, fields, status, words, encoding):
    """A clear 4xx; the store as before; no canary: nothing was written or run."""
    token = uuid.uuid4().hex
    wait_idle(server)
    before = server.store_files()
    url = server.url + (path or '/')
    if fields is None:
        response = server.session.request(method, url, timeout=30)
    else:
        form = {k: v.replace('{canary}', canary_script(token)).replace('{token}', token)
                for k, v in fields.items()}
        if encoding == 'multipart':
            response = server.session.request(method, url, files={k: (None, v) for k, v in form.items()},
                                              timeout=30)
        else:
            response = server.session.request(method, url, data=form, timeout=30)
    reason = error_of(response, status)
    for word in words:
        assert word in reason, (reason, word)
    if fields is not None:
        time.sleep(0.3)  # a task that was started after all would have left a trace by now
    assert server.store_files() == before, sorted(server.store_files() - before)
    assert not list(server.store.glob('canary-*')), 'a refused request ran its task'
    assert not any(p.startswith('info/') for p in server.store_files() - before)


@pytest.mark.parametrize('fields', [
    {'service': 'info', 'id': '../../etc/passwd'},
    {'service': 'nosuchservice', 'fileIn0': 'x'},
    {'service': 'echo'},
], ids=['bad id', 'unknown service', 'missing input'])
def test_errors_in_json(server, fields):
    response = submit(server, fields, fmt='json')
    assert response.status_code == 400
    check_cors(response)
    assert response.headers['Content-Type'].startswith('application/json')
    answer = json.loads(response.text)
    assert set(answer) == {'error'} and answer['error'] and '\n' not in answer['error']


@LIVE  # %2F in the query string as the server passes it
def test_bad_id_in_a_get_answers_json_when_asked(server):
    response = server.session.get(f'{server.url}/?service=info&id=..%2F..%2Fetc%2Fpasswd&format=json', timeout=30)
    assert response.status_code == 400
    check_cors(response)
    answer = json.loads(response.text)
    assert 'bad task id' in answer['error']
    assert 'root:x:0:0' not in response.text


###############################################################################
# Many clients at once
###############################################################################

@pytest.mark.slow
@LIVE_ONLY  # many connections at once: the server, not the application
def test_100_concurrent_posts(server):
    contents = [f'concurrent {n} {uuid.uuid4()}' for n in range(100)]

    def post(content):
        # 16 clients at a time, each closing its connection when answered
        # (a kept Response would keep its connection open).
        with submit(server, {'service': 'echo', 'fileIn0': content}) as response:
            return response.status_code, response.text, response.headers.get('Content-Type', '')

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(post, contents))
    assert [status for status, _, _ in answers] == [200] * 100, \
        [(status, text) for status, text, _ in answers if status != 200][:5]
    assert all(kind.startswith('text/plain') for _, _, kind in answers), \
        [(kind, text) for _, text, kind in answers if not kind.startswith('text/plain')][:3]
    records = [parse_text_record(text) for _, text, _ in answers]
    ids = [r['id'] for r in records]
    assert len(set(ids)) == 100
    # Busy as a rule; a quick task may already be complete when a loaded server answers.
    assert all(r['status'] in ('busy', 'complete') for r in records), \
        [r for r in records if r['status'] not in ('busy', 'complete')][:3]

    deadline = time.monotonic() + 120
    while True:
        found = all_records(server, set(ids))
        assert set(found) == set(ids), f'{len(set(ids) - set(found))} tasks missing from info'
        if all(r['status'] != 'busy' for r in found.values()):
            break
        assert time.monotonic() < deadline, \
            f'{sum(r["status"] == "busy" for r in found.values())} tasks still busy after 120 s'
        time.sleep(0.5)
    assert all(r['status'] == 'complete' for r in found.values()), \
        [r for r in found.values() if r['status'] != 'complete'][:3]
    for record, content in zip(records, contents):
        assert download(server, record['out']).content == content.encode()


###############################################################################
# Results and logs as the client named its files (rrc/inputnames.py)
###############################################################################

# Writes "made by $0 from $1" to its log and a result: the log names its input paths.
NAMING_SCRIPT = 'echo "made by $0"\necho made > "$1"\n'


@pytest.mark.parametrize('service, filename, disposition', [
    ('sh_stl', 'cube.scad', 'attachment; filename="cube.stl"'),
    ('sh_stl', 'my part v2.scad', 'attachment; filename="my part v2.stl"'),
    ('sh_stl', 'C:\\models\\cube.scad', 'attachment; filename="cube.stl"'),
    ('sh_stl', '../../etc/passwd', 'attachment; filename="passwd.stl"'),
    ('sh_stl', '.profile', 'attachment; filename="profile.stl"'),
    ('sh_stl', 'würfel.scad', 'attachment; filename="w_rfel.stl"; filename*=UTF-8\'\'w%C3%BCrfel.stl'),
    ('sh_stl', '50%.scad', 'attachment; filename="50_.stl"; filename*=UTF-8\'\'50%25.stl'),
    ('sh_png', 'scene.pov', 'inline; filename="scene.png"'),
    ('sh_gcode', 'part.stl', 'attachment; filename="part.gcode"'),
    ('sh', 'notes.txt', 'inline; filename="notes.txt"'),  # echo-like: no extension of its own
])
def test_a_result_is_saved_under_its_input_s_name(server, service, filename, disposition):
    record = answer_of(submit(server, {'service': service}, files={'fileIn0': (filename, NAMING_SCRIPT)}), 'text')
    assert wait_done(server, record['id'])['status'] == 'complete'

    for method in ('GET', 'HEAD'):
        answer = server.session.request(method, f'{server.url}/{record["out"]}', timeout=30)

        assert answer.status_code == 200, answer.text
        assert answer.headers['Content-Disposition'] == disposition
        check_cors(answer)


def test_a_result_of_content_or_of_an_unknown_task_keeps_its_own_name(server):
    record = answer_of(submit(server, {'service': 'sh_stl', 'fileIn0': NAMING_SCRIPT}), 'text')
    assert wait_done(server, record['id'])['status'] == 'complete'
    name = record['out'].rsplit('/', 1)[1]
    (server.store / 'tasks' / 'out' / 'stray.stl').write_bytes(b'solid x\n')

    assert download(server, record['out']).headers['Content-Disposition'] == f'attachment; filename="{name}"'
    assert download(server, 'tasks/out/stray.stl').headers['Content-Disposition'] == 'attachment; filename="stray.stl"'


def test_the_log_names_the_client_s_files_never_the_store_s(server):
    files = {'fileIn0': ('build.sh', 'echo "made by $0 with $1"\necho made > "$2"\n'),
             'fileIn1': ('pla settings.ini', 'x = 1\n')}
    record = answer_of(submit(server, {'service': 'sh', 'prearg1': '--data='}, files=files, fmt='json'), 'json')
    assert wait_done(server, record['id'])['status'] == 'complete'

    log = download(server, f'tasks/log/{record["id"]}')

    assert log.status_code == 200
    assert 'made by build.sh with --data=pla settings.ini' in log.text, log.text
    assert 'tasks/in/' not in log.text
    assert int(log.headers['Content-Length']) == len(log.content)
    head = server.session.head(f'{server.url}/tasks/log/{record["id"]}', timeout=30)
    assert head.headers['Content-Length'] == log.headers['Content-Length'] and head.content == b''
    # The record still says where the inputs are stored (0.019 clients read it), and their names.
    assert record['in'].startswith('tasks/in/') and record['inputNames'] == 'build.sh/pla settings.ini'


###############################################################################
# meta names each tool as installed (rrc/toolversions.py)
###############################################################################

def installed_version(argv, pattern):
    """What the test itself reads from a tool's own --version."""
    import subprocess
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return re.search(pattern, done.stdout + done.stderr).group(1)


def test_a_server_asks_its_tools_their_versions_as_it_starts_not_at_its_first_meta(tmp_path, monkeypatch):
    """Node's WASM engine and Slic3r take a second or more to say their
    versions: ``rrcloud serve`` asks them in a thread as it starts
    (``warm_tool_versions``), so a client's pipe check or load probe never
    waits for that.  No meta is asked here."""
    from rrc.config import load_config
    from rrc.node import Node
    from rrc.services import load_services
    from rrc.web.embedded import warm_tool_versions
    (tmp_path / 'services').mkdir()
    (tmp_path / 'services' / 'echo.conf').write_text('cmd = echo\nnoOutput = yes\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('RRCLOUD_CONFIG', str(tmp_path / 'rrcloudrc'))
    (tmp_path / 'rrcloudrc').write_text('')
    node = Node(load_config())
    asked = tmp_path / 'asked'
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'faketool').write_text(COUNTING_TOOL.format(count=asked, version='4.2.1'))
    (tmp_path / 'bin' / 'faketool').chmod(0o755)
    (tmp_path / 'services' / 'fake.conf').write_text(f'path = {tmp_path / "bin"}\ncmd = faketool\n')

    warm_tool_versions(node)
    wait_for(asked.exists, 'the tool asked its version at the start, with no meta')
    store_before = sorted(path.name for path in (tmp_path / 'tasks').iterdir()) if (tmp_path / 'tasks').exists() else []
    versions = node.tool_versions.of_services(load_services(str(tmp_path))[0])  # the first meta's question

    assert versions['fake'] == 'FakeTool 4.2.1' and asked.read_text() == 'asked\n'  # asked once, at the start
    assert '.toolversions' not in store_before  # the start wrote nothing into the store


@pytest.mark.parametrize('fmt', FORMATS)
def test_meta_names_each_service_s_tool_version(server, fmt):
    meta = answer_of(server.session.get(f'{server.url}/', params=with_format({'service': 'meta'}, fmt),
                                        timeout=30), fmt)

    versions = dict(pair.split('=', 1) for pair in meta['toolVersions'].split(','))
    assert set(versions) == set(meta['services'].split(','))
    # both of OpenSCAD's engines: the native one and the Manifold build make install puts beside it
    native = installed_version(['openscad', '--version'], r'version (\S+)')
    assert re.fullmatch(rf'OpenSCAD {re.escape(native)} \(CGAL\) \+ OpenSCAD 2025\.01\.\d+ \(Manifold [\d.]+\)',
                        versions['openscad']), versions['openscad']
    assert versions['povray'] == 'POV-Ray ' + installed_version(['povray', '--version'], r'POV-Ray (\d[\d.]*\d)')
    assert versions['slic3r'] == 'slic3r ' + installed_version(['slic3r', '--version'], r'(\d[\d.]*)')
    assert versions['openjscad'] == 'OpenJSCAD ' + installed_version(['openjscad', '-v'], r'OpenJSCAD (\S+)')
    assert versions['printrun'].startswith('rrcloud ')  # the built-in sender
    assert META_FIELDS <= set(meta)  # what 0.019 clients read is all still there


# A tool that counts how often it is asked its version.
COUNTING_TOOL = '#!/bin/sh\necho asked >> "{count}"\necho "FakeTool {version} (built today)"\n'


def test_a_tool_is_asked_its_version_once_per_binary_across_processes(embedded_server, tmp_path):
    count, tool = tmp_path / 'asked', tmp_path / 'bin' / 'faketool'
    tool.parent.mkdir()
    tool.write_text(COUNTING_TOOL.format(count=count, version='4.2.1'))
    tool.chmod(0o755)
    server = embedded_server('maxTasks = 1\n', {'fake': f'path = {tool.parent}\ncmd = faketool\n'})

    def fake_version():
        meta = plain_session().get(server.url, params={'service': 'meta', 'format': 'json'}, timeout=30).json()
        return dict(pair.split('=', 1) for pair in meta['toolVersions'].split(','))['fake']

    assert [fake_version(), fake_version()] == ['FakeTool 4.2.1'] * 2
    server.stop()
    server.start()  # a new process (as each CGI request is): the store's cache answers
    assert fake_version() == 'FakeTool 4.2.1'
    assert count.read_text() == 'asked\n'

    tool.write_text(COUNTING_TOOL.format(count=count, version='4.3.0'))  # upgraded: another binary
    assert fake_version() == 'FakeTool 4.3.0'
    assert count.read_text() == 'asked\nasked\n'


def test_a_job_s_result_is_named_after_its_first_step_s_input(server):
    # sh_stl writes a script as its "model"; sh_gcode runs it: cube.scad -> cube.stl -> cube.gcode.
    files = {'step1.fileIn0': ('cube.scad', 'printf "echo slicing \\$0\\necho sliced > \\"\\$1\\"\\n" > "$1"\n')}
    answer = server.session.post(f'{server.url}/', data={'service': 'pipe', 'step1': 'sh_stl', 'step2': 'sh_gcode',
                                                         'wait': '60', 'format': 'json'}, files=files, timeout=90)
    job = answer_of(answer, 'json')
    assert job['status'] == 'complete', job

    result = download(server, job['out'])

    assert result.content == b'sliced\n'
    assert result.headers['Content-Disposition'] == 'attachment; filename="cube.gcode"'
    second = job['step2'].split()[0]  # "ID SERVICE STATUS"
    assert download(server, f'tasks/log/{second}').text == 'slicing cube.stl\n'


@LIVE
def test_every_deployment_passes_the_result_s_name_and_the_log_s_names_on(server):
    files = {'fileIn0': ('würfel.scad', 'echo "made by $0"\necho made > "$1"\n')}
    record = answer_of(submit(server, {'service': 'sh_stl'}, files=files, fmt='json'), 'json')
    assert wait_done(server, record['id'])['status'] == 'complete'

    result, log = download(server, record['out']), download(server, f'tasks/log/{record["id"]}')

    assert result.headers['Content-Disposition'] == \
        'attachment; filename="w_rfel.stl"; filename*=UTF-8\'\'w%C3%BCrfel.stl'
    assert log.text.startswith('made by würfel.scad\n'), log.text
