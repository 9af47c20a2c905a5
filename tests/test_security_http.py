"""Hardening of the HTTP side (issue 6): every case in-process against the WSGI
application (the ``wsgi`` deployment, inprocess.py: a real store, real task
processes), and the cases marked ``on_live``/``live_only`` also against live
deployments: the embedded server, lighttpd and Apache (see deploy.py), each
running as www-data on a free loopback port.  Those are what a server in
front of rrcloud changes (docs/TESTING.md): URL parsing (%2F, NUL, line
breaks), bodies it reads or discards, headers it passes on (Authorization,
HTTP_* for a CGI), framing on the socket.

Areas: who may use a server (``allow``, ``token``, the names it answers to
and the web pages that may change anything), limits (request size,
inputs, field length, queue), ids and paths, services and arguments,
uploads, and the answers themselves (headers, HTML, JSON).

Every case asserts what a client sees -- the status and a one-line reason --
*and* that the request changed nothing it should not have:

- the store's whole file tree (every file's bytes, size and mtime, every
  folder's mtime, every link's target; only ``tasks/.lock`` and
  ``tasks/.recovered`` are left out) is the same before and after a refused
  request, and an accepted one adds only its own task's files;
- a canary file under /tmp that a successful injection would create never
  exists;
- the record of an earlier complete task (the *witness*) is byte-identical
  afterwards.

Two answers are not rrcloud's own, by design of what sits in front of it:
a URL the web server itself finds malformed (an encoded slash or NUL under
Apache, a control byte under lighttpd) gets that server's error page, and an
over-long body at the embedded server gets waitress's 413
(``max_request_body_size``, checked before the application runs).  The
status is still asserted; the reason is the page's title or first line.

"Nothing is read from the body" of a refused client cannot be observed from
outside: waitress and lighttpd buffer a body before the application runs and
Apache streams it to the CGI.  What a client can see is asserted instead: a
20 MB POST from outside ``allow`` gets its 403 (the answer arrives) and
nothing is written.

Deployments are shared per module and kind: ``server`` (default limits and
``allow``, plus test services), ``walled`` (``allow = 10.0.0.0/8``: loopback is
outside), ``guarded`` (a ``token``), ``limited`` (small limits, one slot, a
queue of one) and ``named`` (``serverName``, ``allowHosts``, ``allowOrigins``).

Test services (in the store's services/ folder):
``loader`` copies the input given as ``--load=FILE`` (argInput) to the output;
``envdump`` writes the environment its tool (bash) sees to the output;
``slow`` sleeps 30 s, then copies its input.  None of them ever runs what a
client sent, so a canary can only appear through an injection.
"""
import base64
import contextlib
import hashlib
import http.client
import json
import os
import re
import shlex
import socket
import stat
import time
import uuid
from urllib.parse import urlencode

import pytest
import requests

import deploy
from rrc.procs import TASK_ENV_ALLOWLIST, process_is
from rrc.store import Store, parse_record

ID_RE = re.compile(r'\A[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}\Z')
INPUT_RE = re.compile(r'\Atasks/in/[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}(\.[A-Za-z0-9]{1,12})?\Z')
UNKNOWN_ID = '1795841292-04767-953464'
BROWSER = 'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0'
TOKEN = 'rrcloud-test-token-7c41f0d2a9b8e356'
# What the store may hold that no answer may ever show.
SECRETS = (deploy.CONFIG_MARKER, 'root:x:0:0', 'cmd: cp ', 'HIDDEN-MARKER-3f9a')

LOADER_SERVICE = """\
# loader: copies the input given as --load=FILE to the output
path = /usr/bin:/bin
cmd = sh -c 'cp "$(printf %s "$1" | cut -c8-)" "$2"' loader
argInput = --load=$fileIn
output = $fileOut
inputExt = txt
"""
ENVDUMP_SERVICE = """\
# envdump: bash writes the environment it was given to the output (the last argument)
path = /usr/bin:/bin
cmd = bash -c 'for a in "$@"; do out=$a; done; env > "$out"' envdump
output = $fileOut
inputExt = txt
"""
SLOW_SERVICE = """\
# slow: sleeps 30 s, then copies its input to the output (the last argument)
path = /usr/bin:/bin
cmd = sh -c 'sleep 30; for a in "$@"; do out=$a; done; cp "$1" "$out"' slow
output = $fileOut
inputExt = txt
"""
TEST_SERVICES = {'loader': LOADER_SERVICE, 'envdump': ENVDUMP_SERVICE, 'slow': SLOW_SERVICE}
LIMITS_CONFIG = 'maxRequestSize = 100000\nmaxInputs = 2\nmaxFieldLength = 100\nmaxQueued = 1\nmaxTasks = 1\n'


###############################################################################
# Deployments
###############################################################################

class GuardedDeployment(deploy.Deployment):
    """A deployment that refuses the readiness probe (allow or token): any HTTP answer means up."""

    def is_ready(self, answer):
        return True


def deployed(kind, config='', guarded=False):
    """One deployment with the test services (``wsgi``: in-process), started for a ``with``."""
    if kind == 'wsgi':
        deployment = deploy.deployment(kind, config=config, services=TEST_SERVICES)
    else:
        cls = GuardedDeployment if guarded else deploy.Deployment
        deployment = cls(kind, config=config, services=TEST_SERVICES)
    return deploy.running(deployment)


def settle_recovery(deployment, headers=None):
    """One request, so a CGI's first recovery pass (it stamps tasks/.recovered) is behind us."""
    deployment.session.get(f'{deployment.url}/?service=meta', headers=headers or {}, timeout=30)


def adopt_witness(deployment, task_id):
    """Remember a finished task whose record no later request may change."""
    record = read_record(deployment, task_id)
    assert record['status'] == 'complete', record
    deployment.witness = {'id': task_id, 'in': record['in'], 'out': record['out'],
                          'bytes': info_path(deployment, task_id).read_bytes()}


def submitted_witness(deployment, headers=None):
    """An echo task submitted over HTTP and finished."""
    response = deployment.session.post(f'{deployment.url}/', data={'service': 'echo', 'fileIn0': 'witness content'},
                             headers=headers or {}, timeout=30)
    assert response.status_code == 200, (deployment.kind, response.status_code, response.text)
    task_id = parse_text_record(response.text)['id']
    wait_finished(deployment, task_id)
    wait_quiet(deployment)
    adopt_witness(deployment, task_id)


def planted_witness(deployment):
    """A complete echo task written straight into the store (nobody may submit to a walled server)."""
    store = Store(str(deployment.store))
    store.ensure()
    stored = store.add_input(b'witness content', 'txt')
    now = time.time()

    def build(task_id):
        return {'service': 'echo', 'status': 'complete', 'ctime': f'{now:.5f}', 'etime': f'{now:.5f}',
                'cmd': f'cp {stored} tasks/out/{task_id}', 'in': stored, 'out': f'tasks/out/{task_id}',
                'client': '127.0.0.1', 'server': 'witness', 'exitCode': '0', 'sizeIn': '15', 'sizeOut': '15'}
    record = store.create_task(build)
    (deployment.store / record['out']).write_bytes(b'witness content')
    (deployment.store / 'tasks' / 'log' / record['id']).write_bytes(b'')
    deploy.chown_tree(deployment.store / 'tasks', *deploy.www_data())
    adopt_witness(deployment, record['id'])


@pytest.fixture(scope='module', params=['wsgi'])
def server(request):
    """Defaults (allow, limits) plus the test services; a witness task and a hidden file in tasks/out."""
    with deployed(request.param) as deployment:
        submitted_witness(deployment)
        hidden = deployment.store / 'tasks' / 'out' / '.hidden'
        hidden.write_text('HIDDEN-MARKER-3f9a\n')
        settle_recovery(deployment)
        yield deployment


@pytest.fixture(scope='module', params=['wsgi'])
def walled(request):
    """``allow = 10.0.0.0/8``: this loopback client is outside."""
    with deployed(request.param, 'allow = 10.0.0.0/8\n', guarded=True) as deployment:
        planted_witness(deployment)
        settle_recovery(deployment)
        yield deployment


@pytest.fixture(scope='module', params=['wsgi'])
def guarded(request):
    """``token = TOKEN``."""
    with deployed(request.param, f'token = {TOKEN}\n', guarded=True) as deployment:
        submitted_witness(deployment, headers=bearer(TOKEN))
        settle_recovery(deployment, headers=bearer(TOKEN))
        yield deployment


@contextlib.contextmanager
def witnessed(kind, config):
    """A deployment of ``config`` with its witness task and recovery settled; closed afterwards."""
    with deployed(kind, config) as deployment:
        submitted_witness(deployment)
        settle_recovery(deployment)
        yield deployment


@pytest.fixture(scope='module', params=['wsgi'])
def limited(request):
    """Small limits: 100000-byte requests, 2 inputs, 100-character fields, one slot, a queue of one."""
    with witnessed(request.param, LIMITS_CONFIG) as deployment:
        yield deployment


def on_live(fixture):
    """Run on every live deployment too (and in-process): what a server in front of rrcloud changes."""
    return pytest.mark.parametrize(fixture, deploy.ALL_KINDS, indirect=True)


def live_only(fixture):
    """Only on the live deployments: the test speaks to a socket."""
    return pytest.mark.parametrize(fixture, deploy.KINDS, indirect=True)


@pytest.fixture
def canary():
    """A path a successful injection would create; it must never exist."""
    path = f'/tmp/rrcloud-canary-{uuid.uuid4().hex}'
    yield path
    exists = os.path.lexists(path)
    if exists:
        os.unlink(path)
    assert not exists, f'the canary {path} was created: something ran that must not'


def bearer(token):
    return {'Authorization': f'Bearer {token}'}


def hostile_headers(canary_path):
    """Shellshock-style header payloads (CGI hands headers on as HTTP_* variables)."""
    payload = f'() {{ :; }}; /usr/bin/touch {canary_path}'
    return {'X-Foo': payload, 'Referer': payload}


###############################################################################
# The store: records, quiet, snapshots
###############################################################################

def info_path(deployment, task_id):
    return deployment.store / 'tasks' / 'info' / task_id


def read_record(deployment, task_id):
    return parse_record(info_path(deployment, task_id).read_text())


def _names(folder):
    try:
        return [n for n in os.listdir(folder) if not n.startswith('.')]
    except FileNotFoundError:
        return []


def wait_finished(deployment, task_id, timeout=60):
    """Until a task's record leaves busy (read from the store); returns the record."""
    deadline = time.monotonic() + timeout
    while True:
        record = read_record(deployment, task_id)
        if record.get('status') != 'busy':
            return record
        assert time.monotonic() < deadline, f'{deployment.kind}: {task_id} still busy: {record}'
        time.sleep(0.02)


# A node's slot locks: tasks/slots/NODE/N (the folder of a node, and a slot in it).
SLOT_PATH_RE = re.compile(r'\Atasks/slots/[A-Za-z0-9][A-Za-z0-9._-]{0,63}(/[0-9]+)?\Z')


def wait_quiet(deployment, timeout=60):
    """Until no task waits or runs and no runner is left to write (looked at under the store lock)."""
    import fcntl
    tasks = deployment.store / 'tasks'
    deadline = time.monotonic() + timeout
    while True:
        lock = tasks / '.lock'
        fd = os.open(lock, os.O_RDONLY) if lock.exists() else None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            busy = _names(tasks / 'queue') + _names(tasks / 'running')
            if not busy:  # every record is read only when nothing is queued or running
                busy = [n for n in _names(tasks / 'info')
                        if ID_RE.match(n) and read_record(deployment, n).get('status') == 'busy']
        finally:
            if fd is not None:
                os.close(fd)
        if not busy:  # a runner may still write after its record left busy (a notifier's line in the log)
            busy = [f'process group {g}' for g in deployment.task_groups()]
        if not busy:
            return
        assert time.monotonic() < deadline, f'{deployment.kind}: still busy after {timeout} s: {busy}'
        time.sleep(0.02)


def snapshot(deployment):
    """Every path under the store with what it is: file bytes, size and mtime; folder mtime; link target."""
    found = {}
    root = str(deployment.store)
    for folder, dirs, files in os.walk(root):
        for name in [''] + dirs + files if folder == root else dirs + files:
            path = os.path.join(folder, name) if name else folder
            relative = os.path.relpath(path, root)
            if relative in ('tasks/.lock', 'tasks/.recovered'):
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[relative] = ('link', os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[relative] = ('dir', info.st_mtime_ns)
            else:
                with open(path, 'rb') as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                found[relative] = ('file', info.st_size, info.st_mtime_ns, digest)
    return found


def snapshot_diff(before, after):
    """A readable list of what changed between two snapshots."""
    changes = [f'+ {p}' for p in sorted(set(after) - set(before))]
    changes += [f'- {p}' for p in sorted(set(before) - set(after))]
    changes += [f'~ {p}: {before[p]} -> {after[p]}' for p in sorted(set(before) & set(after))
                if before[p] != after[p]]
    return changes


# The history file grows by a line when a task ends (rrc/ledger.py).
HISTORY_PATHS = {'tasks/history', 'tasks/history.1'}


def history_ids(deployment):
    """The ids of the store's history lines, in order."""
    from rrc.ledger import read_entries
    return [entry['id'] for entry in read_entries(Store(str(deployment.store)))]


class Watch:
    """The store, the witness and the canary around one request."""

    def __init__(self, deployment, canary_path=None):
        self.deployment = deployment
        self.canary = canary_path
        wait_quiet(deployment)
        self.before = snapshot(deployment)
        self.history_before = history_ids(deployment)

    def witness_unchanged(self):
        witness = self.deployment.witness
        now = info_path(self.deployment, witness['id']).read_bytes()
        assert now == witness['bytes'], f'{self.deployment.kind}: the witness record changed:\n{now!r}'

    def canary_absent(self):
        if self.canary:
            assert not os.path.lexists(self.canary), f'{self.deployment.kind}: the canary was created'

    def nothing_written(self, settle=0.0):
        """The store is exactly as before; the witness is untouched; no canary."""
        if settle:
            time.sleep(settle)
        wait_quiet(self.deployment)
        after = snapshot(self.deployment)
        assert after == self.before, \
            f'{self.deployment.kind}: a refused request wrote to the store:\n' + \
            '\n'.join(snapshot_diff(self.before, after))
        self.witness_unchanged()
        self.canary_absent()

    def only_tasks_added(self, task_ids):
        """What was there is untouched (folders may gain entries); new paths are these tasks' own files."""
        wait_quiet(self.deployment)
        after = snapshot(self.deployment)
        changed = [p for p in set(self.before) & set(after)
                   if self.before[p] != after[p] and not (self.before[p][0] == 'dir' == after[p][0])
                   and p not in HISTORY_PATHS]
        assert not changed, f'{self.deployment.kind}: existing files changed: ' + \
            '\n'.join(snapshot_diff({p: self.before[p] for p in changed}, {p: after[p] for p in changed}))
        assert not set(self.before) - set(after), f'{self.deployment.kind}: files vanished: ' \
            f'{sorted(set(self.before) - set(after))}'
        allowed = set()
        for task_id in task_ids:
            record = read_record(self.deployment, task_id)
            allowed |= {f'tasks/info/{task_id}', f'tasks/log/{task_id}', f'tasks/events/{task_id}',
                        record.get('out', '')}
            allowed |= {p for p in record.get('in', '').split(',') if INPUT_RE.match(p)}
        stray = [p for p in set(after) - set(self.before)
                 if p not in allowed | HISTORY_PATHS and not SLOT_PATH_RE.match(p)]
        assert not stray, f'{self.deployment.kind}: unexpected new paths: {sorted(stray)}'
        history = history_ids(self.deployment)  # only lines appended, each of a new task that ended, once
        added = history[len(self.history_before):]
        assert history[:len(self.history_before)] == self.history_before
        assert set(added) <= set(task_ids) and len(added) == len(set(added)), (added, task_ids)
        self.witness_unchanged()
        self.canary_absent()


###############################################################################
# Answers as a client sees them
###############################################################################

class Answer:
    """Status, headers (in order, as sent) and body of one HTTP answer."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = list(headers)
        self.body = body

    def header(self, name):
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    @property
    def text(self):
        return self.body.decode('utf-8', 'replace')

    def __repr__(self):
        return f'Answer({self.status}, {self.headers!r}, {self.body[:300]!r})'


def send(deployment, method, path, body=None, headers=None, timeout=60):
    """One request with the path exactly as written (no normalising of '..' or escapes)."""
    try:
        return Answer(*deployment.request_raw(method, path, body=body, headers=headers, timeout=timeout))
    except (http.client.HTTPException, ConnectionError) as exc:
        raise AssertionError(f'{deployment.kind}: no complete answer to {method} {path[:80]}: {exc!r}') from None


def post(deployment, data=None, files=None, path='/', headers=None, timeout=60):
    """POST a form the way curl and requests do (urlencoded, or multipart with ``files``)."""
    try:
        response = deployment.session.post(deployment.url + path, data=data, files=files,
                                           headers=headers or {}, timeout=timeout)
    except requests.RequestException as exc:
        raise AssertionError(f'{deployment.kind}: no complete answer to a POST: {exc!r}') from None
    return Answer(response.status_code, response.headers.items(), response.content)


def multipart(parts, boundary='rrcloud-test-boundary-91c3'):
    """A multipart/form-data body written by hand: ``parts`` is a list of (header bytes, content bytes)."""
    body = b''
    for header, content in parts:
        body += b'--' + boundary.encode() + b'\r\n' + header + b'\r\n\r\n' + content + b'\r\n'
    return body + b'--' + boundary.encode() + b'--\r\n', f'multipart/form-data; boundary={boundary}'


def field(name):
    return f'Content-Disposition: form-data; name="{name}"'.encode()


def file_field(name, filename):
    return f'Content-Disposition: form-data; name="{name}"; filename="'.encode() + filename + b'"'


def raw_exchange(deployment, data, read=True, timeout=30):
    """Send bytes on a fresh connection; the bytes answered until the server closes (or b'')."""
    sock = socket.create_connection(('127.0.0.1', deployment.port), timeout=timeout)
    try:
        sock.sendall(data)
        if not read:
            return b''
        answer = b''
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return answer
            answer += chunk
    finally:
        sock.close()


def parse_raw_answer(raw):
    """Status and headers of the first answer in raw bytes (the body is not needed here)."""
    head, _, body = raw.partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    status = int(lines[0].split(' ')[1])
    headers = [tuple(part.strip() for part in line.split(':', 1)) for line in lines[1:]]
    return Answer(status, headers, body)


def reason_of(deployment, answer, status, front_may_answer=False):
    """The one-line reason of an error answer with ``status``.

    rrcloud answers ``error: REASON`` (text) or ``{"error": REASON}`` (JSON),
    always with ``Access-Control-Allow-Origin: *``.  With ``front_may_answer``
    the web server in front may refuse a malformed URL itself (its own page:
    the reason is the page's title).
    """
    kind = deployment.kind
    assert answer.status == status, f'{kind}: expected {status}, got {answer!r}'
    content_type = answer.header('Content-Type') or ''
    if front_may_answer and content_type.startswith('text/html'):
        title = re.search(r'<title>([^<\n]*)</title>', answer.text)
        assert title and str(status) in title.group(1), f'{kind}: {answer!r}'
        return title.group(1)
    assert answer.header('Access-Control-Allow-Origin') == '*', f'{kind}: {answer!r}'
    if content_type.startswith('application/json'):
        error = json.loads(answer.text)
        assert set(error) == {'error'} and isinstance(error['error'], str), f'{kind}: {answer!r}'
        assert error['error'] and '\n' not in error['error'], f'{kind}: {answer!r}'
        return error['error']
    assert content_type.startswith('text/plain'), f'{kind}: {answer!r}'
    text = answer.text
    assert text.startswith('error: ') and text.endswith('\n') and text.count('\n') == 1, \
        f'{kind}: not a one-line reason: {text!r}'
    return text[len('error: '):-1]


def no_secrets(deployment, answer, *more):
    for secret in SECRETS + more:
        assert secret not in answer.text, f'{deployment.kind}: {secret!r} leaked: {answer!r}'


def parse_text_record(text):
    """A ``key: value`` answer; every line must be such a pair."""
    assert text.endswith('\n'), repr(text)
    record = {}
    for line in text[:-1].split('\n'):
        key, sep, value = line.partition(': ')
        assert sep and re.match(r'\A[A-Za-z][A-Za-z0-9_]*\Z', key), f'not a key: value line: {line!r}'
        assert key not in record, f'{key} twice in {text!r}'
        record[key] = value
    return record


def accepted(deployment, answer):
    """The busy record of a 200 answer to a submission."""
    assert answer.status == 200, f'{deployment.kind}: {answer!r}'
    record = parse_text_record(answer.text)
    assert ID_RE.match(record['id']), record
    return record


def result_of(deployment, task_id):
    """GET the result of a finished task."""
    answer = send(deployment, 'GET', f'/tasks/out/{os.path.basename(read_record(deployment, task_id)["out"])}')
    assert answer.status == 200, f'{deployment.kind}: {answer!r}'
    return answer.body


###############################################################################
# 1. Who may use a server: allow
###############################################################################

BIG = 20 * 1024 * 1024


def walled_request(deployment, what, canary_path):
    payload = f'$(touch {canary_path})\n'.encode()
    witness = deployment.witness
    headers = hostile_headers(canary_path)
    if what == 'meta':
        return send(deployment, 'GET', '/?service=meta', headers=headers)
    if what == 'meta-json':
        return send(deployment, 'GET', '/?service=meta&format=json', headers=headers)
    if what == 'result':
        return send(deployment, 'GET', '/' + witness['out'], headers=headers)
    if what == 'info':
        return send(deployment, 'GET', f'/?service=info&id={witness["id"]}', headers=headers)
    if what == 'history':
        return send(deployment, 'GET', '/?service=history&format=json', headers=headers)
    if what == 'browser-page':
        return send(deployment, 'GET', '/', headers=dict(headers, **{'User-Agent': BROWSER}))
    if what == 'small-post':
        return post(deployment, data={'service': 'echo', 'fileIn0': payload})
    if what == '20MB-urlencoded':
        # The bytes requests would send for data={'service': 'echo', 'fileIn0': payload + b'x' * BIG},
        # without percent-encoding 20 MB of 'x' in Python on every run.
        body = urlencode({'service': 'echo', 'fileIn0': payload}).encode() + b'x' * BIG
        return post(deployment, data=body, headers={'Content-Type': 'application/x-www-form-urlencoded'})
    if what == '20MB-multipart':
        return post(deployment, data={'service': 'echo'},
                    files={'fileIn0': ('model.txt', payload + b'x' * BIG, 'application/octet-stream')})
    raise AssertionError(what)


@on_live('walled')  # a refused 20 MB body is discarded by the CGI or the server; CORS on the 403
@pytest.mark.parametrize('what', ['meta', 'meta-json', 'result', 'info', 'history', 'browser-page', 'small-post',
                                  '20MB-urlencoded', '20MB-multipart'])
def test_a_client_outside_allow_gets_403_and_nothing_is_read_or_written(walled, what, canary):
    watch = Watch(walled, canary)
    answer = walled_request(walled, what, canary)
    reason = reason_of(walled, answer, 403)
    assert 'allow' in reason, reason
    no_secrets(walled, answer, walled.witness['id'], 'witness content', 'echo', 'serverName', 'RepRapCloud')
    watch.nothing_written()


def test_the_default_allow_admits_loopback(server):
    assert 'allow' not in server.rrcloudrc.read_text()
    answer = send(server, 'GET', '/?service=meta')
    assert answer.status == 200, answer
    assert parse_text_record(answer.text)['version'].startswith('RepRapCloud 0.019')


@pytest.fixture(scope='module', params=['wsgi'])
def proxied(request):
    """Behind a trusted proxy (this loopback client plays it) that forwards clients of 10.0.0.0/8 only."""
    with deployed(request.param, 'trustedProxies = 127.0.0.1/32\nallow = 10.0.0.0/8\n', guarded=True) as deployment:
        yield deployment


FORWARDED = {  # X-Forwarded-For as the proxy passes it on -> admitted?
    'a client inside allow': ('10.1.2.3', True),
    'a client outside allow': ('198.51.100.9', False),
    'a forged first address, the proxy\'s last': ('10.1.2.3, 198.51.100.9', False),
    'the proxy\'s own word after a forged one': ('198.51.100.9, 10.1.2.3', True),
    'no address at all': ('not-an-address', False),
}


@pytest.mark.parametrize('case', list(FORWARDED))
def test_a_trusted_proxys_client_is_the_last_address_it_forwards(proxied, case):
    forwarded, admitted = FORWARDED[case]

    answer = send(proxied, 'GET', '/?service=meta', headers={'X-Forwarded-For': forwarded})

    if admitted:
        assert answer.status == 200, answer
    else:
        assert 'allow' in reason_of(proxied, answer, 403)


def test_a_trusted_proxys_client_is_the_tasks_client(proxied):
    answer = post(proxied, data={'service': 'echo', 'fileIn0': 'from behind a proxy', 'format': 'json'},
                  headers={'X-Forwarded-For': '10.1.2.3'})

    assert answer.status == 200, answer
    assert json.loads(answer.text)['client'] == '10.1.2.3'


def test_x_forwarded_for_from_a_peer_not_trusted_is_ignored(walled):
    answer = send(walled, 'GET', '/?service=meta', headers={'X-Forwarded-For': '10.1.2.3'})

    assert 'allow' in reason_of(walled, answer, 403)


###############################################################################
# 1. Who may use a server: token
###############################################################################

def _multipart_token(deployment, token, service='meta'):
    return post(deployment, files={'service': (None, service), 'token': (None, token)})


BASIC_AUTH = 'Basic ' + base64.b64encode(f'user:{TOKEN}'.encode()).decode()
REFUSED_TOKENS = {  # case: (path, headers); h = hostile headers
    'no token': ('/?service=meta', {}),
    'no token, json': ('/?service=meta&format=json', {}),
    'wrong bearer': ('/?service=meta', bearer('x' + TOKEN)),
    'bearer of a prefix': ('/?service=meta', bearer(TOKEN[:-1])),
    'bearer with more': ('/?service=meta', bearer(TOKEN + 'x')),
    'empty bearer': ('/?service=meta', {'Authorization': 'Bearer '}),
    'basic auth': ('/?service=meta', {'Authorization': BASIC_AUTH}),
    'wrong X-RRCloud-Token': ('/?service=meta', {'X-RRCloud-Token': TOKEN[::-1]}),
    'wrong form token': (None, {}),
    'token as a cookie': ('/?service=meta', {'Cookie': f'token={TOKEN}'}),
    'info listing': ('/?service=info', {}),
    'info of the witness': ('/?service=info&id={witness}', {}),
    'result of the witness': ('/{witness_out}', {}),
    'log of the witness': ('/tasks/log/{witness}', {}),
    'task list': ('/?service=tasks&format=json', {}),
    'changes stream': ('/?service=changes', {}),
    'task list, from a browser': ('/?service=tasks&format=json', {'User-Agent': BROWSER}),
    'kill of the witness': ('/?service=kill&id={witness}', {}),
    'pause of the witness': ('/?service=pause&id={witness}', {}),
    'cancel of the witness': ('/?service=cancel&id={witness}', {}),
    'stop of the witness': ('/?service=stop&id={witness}', {}),
}


@on_live('guarded')  # Authorization passed through to the CGI; CORS on the 401
@pytest.mark.parametrize('case', list(REFUSED_TOKENS))
def test_without_the_right_token_401_and_nothing_leaks(guarded, case, canary):
    path, headers = REFUSED_TOKENS[case]
    watch = Watch(guarded, canary)
    if path is None:
        answer = _multipart_token(guarded, TOKEN[::-1])
    else:
        path = path.format(witness=guarded.witness['id'], witness_out=guarded.witness['out'])
        answer = send(guarded, 'GET', path, headers=dict(hostile_headers(canary), **headers))
    reason = reason_of(guarded, answer, 401)
    assert 'token' in reason, reason
    assert (answer.header('WWW-Authenticate') or '').startswith('Bearer'), answer
    no_secrets(guarded, answer, guarded.witness['id'], 'witness content', 'serverName', 'services',
               'RepRapCloud', TOKEN)
    watch.nothing_written()


@on_live('guarded')
def test_without_the_token_the_pages_shell_and_files_load_and_show_no_task(guarded, canary):
    """The page needs no token (it must load to ask for it): it holds no task
    data, which comes from the API with the token (issue 23; www/index.html
    is a shell, rrc/web/page.py fills in no record)."""
    watch = Watch(guarded, canary)
    answer = send(guarded, 'GET', '/', headers=dict(hostile_headers(canary), **{'User-Agent': BROWSER}))
    assert answer.status == 200 and answer.header('Content-Type').startswith('text/html'), answer
    no_secrets(guarded, answer, guarded.witness['id'], 'witness content', TOKEN)
    for path in ('/ui/js/main.js', '/ui/app.css'):
        answer = send(guarded, 'GET', path, headers=dict(hostile_headers(canary), **{'User-Agent': BROWSER}))
        assert answer.status == 200, answer
        no_secrets(guarded, answer, guarded.witness['id'], 'witness content', TOKEN)
    watch.nothing_written()


@on_live('guarded')  # the unread body of a refused POST
@pytest.mark.parametrize('how', ['no token', 'wrong bearer', 'wrong X-RRCloud-Token', 'wrong form token'])
def test_a_submission_without_the_right_token_is_refused(guarded, how, canary):
    watch = Watch(guarded, canary)
    form = {'service': 'echo', 'fileIn0': f'$(touch {canary})'}
    if how == 'wrong form token':
        answer = post(guarded, files={k: (None, v) for k, v in dict(form, token=TOKEN[::-1]).items()})
    else:
        headers = {'no token': {}, 'wrong bearer': bearer(TOKEN[::-1]),
                   'wrong X-RRCloud-Token': {'X-RRCloud-Token': TOKEN[::-1]}}[how]
        answer = post(guarded, data=form, headers=headers)
    assert 'token' in reason_of(guarded, answer, 401)
    watch.nothing_written()


@pytest.mark.parametrize('token', [TOKEN, TOKEN[::-1]], ids=['right', 'wrong'])
def test_a_token_in_the_url_is_refused_right_or_wrong(guarded, token, canary):
    """URLs end up in web-server logs: a token there is refused, never accepted."""
    watch = Watch(guarded, canary)
    answer = send(guarded, 'GET', f'/?service=meta&token={token}', headers=hostile_headers(canary))
    assert 'token in the URL is refused' in reason_of(guarded, answer, 400)
    no_secrets(guarded, answer, guarded.witness['id'], 'witness content', 'serverName', 'services',
               'RepRapCloud', TOKEN)
    watch.nothing_written()


ACCEPTED_TOKENS = {
    'Authorization: Bearer': lambda d: send(d, 'GET', '/?service=meta', headers=bearer(TOKEN)),
    'X-RRCloud-Token': lambda d: send(d, 'GET', '/?service=meta', headers={'X-RRCloud-Token': TOKEN}),
    'form field token (multipart)': lambda d: _multipart_token(d, TOKEN),
}


@on_live('guarded')  # Authorization passed through (Apache: CGIPassAuth)
@pytest.mark.parametrize('case', list(ACCEPTED_TOKENS))
def test_the_right_token_opens_meta(guarded, case):
    """Under Apache the Authorization header reaches the CGI (CGIPassAuth On)."""
    watch = Watch(guarded)
    answer = ACCEPTED_TOKENS[case](guarded)
    assert answer.status == 200, f'{guarded.kind}: {answer!r}'
    record = parse_text_record(answer.text)
    assert record['version'].startswith('RepRapCloud 0.019')
    assert 'echo' in record['services'].split(',')
    assert TOKEN not in answer.text
    watch.nothing_written()


@on_live('guarded')  # Authorization passed through, the task runs
@pytest.mark.parametrize('how', ['Authorization: Bearer', 'X-RRCloud-Token', 'form field token (multipart)'])
def test_a_submission_with_the_token_runs_and_the_token_is_not_recorded(guarded, how):
    watch = Watch(guarded)
    content = f'submitted with {how}'
    if how == 'form field token (multipart)':
        answer = post(guarded, files={'service': (None, 'echo'), 'fileIn0': (None, content), 'token': (None, TOKEN)})
    else:
        headers = bearer(TOKEN) if how == 'Authorization: Bearer' else {'X-RRCloud-Token': TOKEN}
        answer = post(guarded, data={'service': 'echo', 'fileIn0': content}, headers=headers)
    record = accepted(guarded, answer)
    done = wait_finished(guarded, record['id'])
    assert done['status'] == 'complete', done
    assert TOKEN not in info_path(guarded, record['id']).read_text()
    assert TOKEN not in answer.text
    result = send(guarded, 'GET', '/' + done['out'], headers=bearer(TOKEN))
    assert result.status == 200 and result.body == content.encode(), result
    watch.only_tasks_added([record['id']])


###############################################################################
# 1. Who may use a server: the names it answers to, the pages that may ask
###############################################################################

# A web page whose name its owner pointed at the server's address (DNS
# rebinding): its requests carry its own name in Host, and its own Origin.
REBOUND = 'evil.example'
HOST_NAME = os.uname().nodename.lower()
SERVER_NAME = 'rrcloud-test-node'
ALIAS = 'printserver.example.org'
# Another port of this host, e.g. a printer's web UI: same-site to a browser.
PRINTER_UI = 'http://127.0.0.1:8080'
NAMED_CONFIG = f'serverName = {SERVER_NAME}\nallowHosts = {ALIAS}\nallowOrigins = {PRINTER_UI}\n'


@pytest.fixture(scope='module', params=['wsgi'])
def named(request):
    """``serverName``, ``allowHosts`` and ``allowOrigins`` (the printer's web UI) set."""
    with witnessed(request.param, NAMED_CONFIG) as deployment:
        yield deployment


def rebound(deployment, origin=True):
    """The headers of the rebound page's request (``origin=False``: curl with its name in Host)."""
    host = f'{REBOUND}:{deployment.port}'
    return dict({'Host': host}, **({'Origin': f'http://{host}'} if origin else {}))


def same_site(origin=None):
    """The headers of a request a page on another port of this host makes a browser send."""
    return dict({'Sec-Fetch-Site': 'same-site'}, **({'Origin': origin} if origin else {}))


def refused_for_its_name(deployment, answer, name=REBOUND):
    """A 403 whose one line names the refused name and allowHosts."""
    reason = reason_of(deployment, answer, 403)
    assert f"name '{name}'" in reason and 'allowHosts' in reason, f'{deployment.kind}: {reason}'


def hi_txt(deployment, headers):
    """curl -F service=echo -F fileIn0=@hi.txt, with ``headers``."""
    return post(deployment, data={'service': 'echo'}, files={'fileIn0': ('hi.txt', b'hi\n')}, headers=headers)


@on_live('server')  # the Host and Origin headers as each server hands them on
@pytest.mark.parametrize('origin', [True, False], ids=['page (with its Origin)', 'curl (no Origin)'])
def test_a_rebound_name_cannot_start_a_task(server, origin, canary):
    """The issue's request: Host evil.example with a matching Origin starts nothing (nor without Origin)."""
    watch = Watch(server, canary)
    answer = hi_txt(server, rebound(server, origin))
    refused_for_its_name(server, answer)
    no_secrets(server, answer, server.witness['id'], 'witness content')
    watch.nothing_written()


def interface_address():
    """An IPv4 address of this machine's interfaces other than loopback."""
    import psutil
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith('127.'):
                return address.address
    pytest.skip('this machine has no IPv4 address besides loopback')


def local_addresses():
    import psutil
    return {a.address.split('%')[0] for found in psutil.net_if_addrs().values() for a in found}


def name_of(host):
    """The name of a Host header as the server's refusal shows it."""
    return host[1:].partition(']')[0] if host.startswith('[') else host.partition(':')[0]


# case: (a Host the server knows as its own, a look-alike it does not)
KNOWN_HOSTS = {
    'localhost': ('localhost:{port}', 'localhost.evil.example:{port}'),
    'localhost, upper case with a final dot': ('LOCALHOST.:{port}', 'evil-localhost:{port}'),
    '127.0.0.1': ('127.0.0.1:{port}', '127.0.0.1.evil.example:{port}'),
    'another loopback address': ('127.3.2.1:{port}', '127.3.2.1.nip.example:{port}'),
    'IPv6 loopback': ('[::1]:{port}', '[::2]:{port}'),
    'the host name': (HOST_NAME, f'{HOST_NAME}.evil.example'),
    'the host name .local': (f'{HOST_NAME}.local:{{port}}', f'{HOST_NAME}.local.evil.example:{{port}}'),
    'serverName': (SERVER_NAME, f'{SERVER_NAME}.evil.example'),
    'a name of allowHosts': (f'{ALIAS}:{{port}}', f'evil.{ALIAS}:{{port}}'),
    'an interface address': ('{interface}:{port}', '203.0.113.9:{port}'),
}


@pytest.mark.parametrize('case', list(KNOWN_HOSTS))
def test_curl_is_answered_under_each_name_the_server_knows_and_no_look_alike(named, case):
    """curl and 0.019 clients (no Origin) go on working under the names they use."""
    known, look_alike = (h.format(port=named.port, interface='{interface}') for h in KNOWN_HOSTS[case])
    if '{interface}' in known:
        known = known.format(interface=interface_address())
        assert '203.0.113.9' not in local_addresses()
    watch = Watch(named)
    record = accepted(named, hi_txt(named, {'Host': known}))
    assert wait_finished(named, record['id'])['status'] == 'complete'
    watch.only_tasks_added([record['id']])
    watch = Watch(named)
    refused_for_its_name(named, hi_txt(named, {'Host': look_alike}), name_of(look_alike))
    watch.nothing_written()


# A foreign name; addresses the kernel lets a socket bind that are no
# server's (unspecified, multicast, broadcast); addresses of no interface
# here; no name at all.
FOREIGN_HOSTS = ['evil.example:{port}', 'evil.example', '0.0.0.0:{port}', '[::]:{port}', '224.0.0.1:{port}',
                 '[ff02::1]:{port}', '255.255.255.255:{port}', '203.0.113.9:{port}', '[2001:db8::7]:{port}',
                 ':{port}', '[::ffff:203.0.113.9]:{port}']


@pytest.mark.parametrize('host', FOREIGN_HOSTS)
def test_a_post_naming_another_host_is_refused_to_curl_too(named, host, canary):
    host = host.format(port=named.port)
    watch = Watch(named, canary)
    answer = post(named, data={'service': 'echo', 'fileIn0': f'$(touch {canary})'}, headers={'Host': host})
    refused_for_its_name(named, answer, name_of(host))
    watch.nothing_written()


def in_process(deployment, method, target, headers, body=None, **environ):
    """One request to the in-process app with more CGI variables in its environ (SERVER_ADDR)."""
    from inprocess import build_environ, call_app
    built = build_environ(method, target, headers, body, '127.0.0.1', deployment.port)
    status, _, answer_headers, data = call_app(deployment.application, dict(built, **environ))
    return Answer(status, answer_headers, data)


def test_the_address_a_request_came_in_on_is_the_servers_own(server):
    """SERVER_ADDR (a CGI's) names this server: no lookup of the interfaces."""
    address = '198.51.100.7'
    assert address not in local_addresses()
    headers = [('Host', f'{address}:{server.port}'), ('Content-Type', 'application/x-www-form-urlencoded')]
    watch = Watch(server)
    answer = in_process(server, 'POST', '/', headers, b'service=echo&fileIn0=came+in+on')
    refused_for_its_name(server, answer, address)
    watch.nothing_written()
    answer = in_process(server, 'POST', '/', headers, b'service=echo&fileIn0=came+in+on', SERVER_ADDR=address)
    record = accepted(server, answer)
    assert wait_finished(server, record['id'])['status'] == 'complete'
    watch.only_tasks_added([record['id']])


def test_the_browser_page_answers_only_under_a_known_name(server):
    watch = Watch(server)
    page = send(server, 'GET', '/', headers={'User-Agent': BROWSER, 'Host': f'{REBOUND}:{server.port}'})
    refused_for_its_name(server, page)
    assert 'RepRapCloud' not in page.text and server.witness['id'] not in page.text
    page = send(server, 'GET', '/', headers={'User-Agent': BROWSER, 'Host': f'localhost:{server.port}'})
    assert page.status == 200 and page.header('Content-Type').startswith('text/html'), page
    assert '/ui/js/main.js' in page.text and server.witness['id'] not in page.text, 'a shell: its data comes by the API'
    watch.nothing_written()


READS = {
    'info of all': '/?service=info',
    'info of the witness': '/?service=info&id={witness}',
    'meta': '/?service=meta',
    'meta as JSON': '/?service=meta&format=json',
    'the result': '/{witness_out}',
    'the log': '/tasks/log/{witness}',
    'the events': '/?service=events&id={witness}',
}


@pytest.mark.parametrize('what', list(READS))
def test_reads_answer_any_name_with_open_cors_but_it_changes_nothing(server, what):
    """0.019's CORS stays open for reads (a rebound page may read as any page may); the same
    page's POST is refused."""
    path = READS[what].format(witness=server.witness['id'], witness_out=server.witness['out'])
    watch = Watch(server)
    answer = send(server, 'GET', path, headers=rebound(server))
    assert answer.status == 200, answer
    assert answer.header('Access-Control-Allow-Origin') == '*', answer
    if what == 'the result':
        assert answer.body == b'witness content'
    refused_for_its_name(server, hi_txt(server, rebound(server)))
    watch.nothing_written()


def test_a_same_site_page_cannot_kill_a_task_unless_its_origin_is_allowed(named):
    """A page on another port of this host (a printer's web UI) makes the browser
    send a GET of kill: no Origin, Sec-Fetch-Site: same-site.  Refused, and the
    task runs on; from the origin listed in allowOrigins, accepted."""
    task = accepted(named, post(named, data={'service': 'slow', 'fileIn0': 'runs on'}))
    try:
        wait_for_pid(named, task['id'])
        kill = f'/?service=kill&id={task["id"]}'
        answer = send(named, 'GET', kill, headers=same_site())
        assert 'allowOrigins' in reason_of(named, answer, 403)
        time.sleep(0.5)
        record = read_record(named, task['id'])
        assert record['status'] == 'busy' and 'error' not in record, record
        assert process_is(record['pid'], record['pidStart']), record
        answer = send(named, 'GET', kill, headers=same_site(PRINTER_UI))
        assert answer.status == 200, answer
        assert wait_finished(named, task['id'])['error'] == 'killed'
    finally:
        send(named, 'GET', f'/?service=kill&id={task["id"]}')
    wait_quiet(named)


def wait_for_pid(deployment, task_id, timeout=20):
    """Until the runner has recorded its pid (its last write before the tool runs)."""
    deadline = time.monotonic() + timeout
    while 'pid' not in read_record(deployment, task_id):
        assert time.monotonic() < deadline, read_record(deployment, task_id)
        time.sleep(0.02)


# Every request that starts, stops, reorders or removes work: GETs (as 0.019's kill),
# the same as POSTs, a task and a pipe.
STATE_CHANGES = {
    'kill': ('GET', '/?service=kill&id={witness}', None),
    'suspend': ('GET', '/?service=suspend&id={witness}', None),
    'resume': ('GET', '/?service=resume&id={witness}', None),
    'move': ('GET', '/?service=move&id={witness}&to=front', None),
    'kill as a POST': ('POST', '/', {'service': 'kill', 'id': '{witness}'}),
    'suspend as a POST': ('POST', '/', {'service': 'suspend', 'id': '{witness}'}),
    'resume as a POST': ('POST', '/', {'service': 'resume', 'id': '{witness}'}),
    'move as a POST': ('POST', '/', {'service': 'move', 'id': '{witness}', 'to': 'back'}),
    'remove': ('GET', '/?service=remove&id={witness}', None),
    'clean': ('GET', '/?service=clean&olderThan=0', None),
    'remove as a POST': ('POST', '/', {'service': 'remove', 'id': '{witness}'}),
    'clean as a POST': ('POST', '/', {'service': 'clean', 'olderThan': '0'}),
    # a print's control: pause (a print's suspend), cancel, emergency stop
    'pause': ('GET', '/?service=pause&id={witness}', None),
    'cancel': ('GET', '/?service=cancel&id={witness}', None),
    'stop': ('GET', '/?service=stop&id={witness}', None),
    'pause as a POST': ('POST', '/', {'service': 'pause', 'id': '{witness}'}),
    'cancel as a POST': ('POST', '/', {'service': 'cancel', 'id': '{witness}'}),
    'stop as a POST': ('POST', '/', {'service': 'stop', 'id': '{witness}'}),
    'a task': ('POST', '/', {'service': 'echo', 'fileIn0': 'started'}),
    'a pipe': ('POST', '/', {'service': 'pipe', 'step1': 'echo', 'step1.fileIn0': 'piped'}),
    # a farm's worker routes (a page has no worker token, but the name and the origin come first)
    'a worker\'s claim': ('POST', '/', {'service': 'workclaim', 'id': '{witness}', 'attempt': '1', 'worker': 'w'}),
    'a worker\'s update': ('POST', '/', {'service': 'workupdate', 'id': '{witness}', 'attempt': '1'}),
    'a worker\'s end': ('POST', '/', {'service': 'workdone', 'id': '{witness}', 'attempt': '1'}),
}
# The services that only read; every other one must be walked above.
READ_SERVICES = {'info', 'meta', 'events', 'workinput', 'history', 'printers', 'tasks', 'changes'}
ATTACKS = {'rebound name': rebound, 'same-site page': lambda deployment: same_site()}


@pytest.mark.parametrize('attack', list(ATTACKS))
@pytest.mark.parametrize('change', list(STATE_CHANGES))
def test_every_state_changing_request_refuses_a_rebound_name_and_a_same_site_page(server, change, attack):
    """kill, suspend, resume, move, remove, clean, pause, cancel, stop (GET or POST), a task, a pipe:
    each refused, nothing written."""
    from rrc.web.routes import SERVICES as SERVICE_ROUTES
    walked = {form['service'] if form else path.split('service=')[1].split('&')[0]
              for _, path, form in STATE_CHANGES.values()}
    assert set(SERVICE_ROUTES) - READ_SERVICES <= walked, 'a new service: walk it here, or list it as a read'
    method, path, form = STATE_CHANGES[change]
    witness = server.witness['id']
    watch = Watch(server)
    headers = ATTACKS[attack](server)
    if method == 'GET':
        answer = send(server, 'GET', path.format(witness=witness), headers=headers)
    else:
        answer = post(server, data={k: v.format(witness=witness) for k, v in form.items()}, headers=headers)
    if attack == 'rebound name':
        refused_for_its_name(server, answer)
    else:
        assert 'allowOrigins' in reason_of(server, answer, 403)
    watch.nothing_written()


###############################################################################
# 2. Limits
###############################################################################

def waitress_413(deployment, answer):
    """The embedded server's 413 comes from waitress itself (max_request_body_size), before rrcloud."""
    assert answer.status == 413, f'{deployment.kind}: {answer!r}'
    assert 'exceeds max_body of 100000' in answer.text, answer
    return answer.text.splitlines()[0]


def too_large(deployment, answer):
    if deployment.kind == 'embedded' and answer.header('Access-Control-Allow-Origin') is None:
        return waitress_413(deployment, answer)
    reason = reason_of(deployment, answer, 413)
    assert '100000' in reason, reason
    return reason


@on_live('limited')  # the body limit: waitress's own, the CGI's discard
@pytest.mark.parametrize('how', ['urlencoded', 'multipart upload', 'multipart string'])
def test_a_request_over_max_request_size_is_413(limited, how, canary):
    watch = Watch(limited, canary)
    content = f'$(touch {canary})\n'.encode() + b'x' * 200000
    if how == 'urlencoded':
        answer = post(limited, data={'service': 'echo', 'fileIn0': content})
    elif how == 'multipart upload':
        answer = post(limited, data={'service': 'echo'}, files={'fileIn0': ('big.txt', content)})
    else:
        answer = post(limited, files={'service': (None, 'echo'), 'fileIn0': (None, content)})
    too_large(limited, answer)
    watch.nothing_written()


@on_live('limited')  # a chunked body as each server hands it on
def test_a_chunked_body_over_max_request_size_is_413(limited, canary):
    """No Content-Length: the limit holds while the body streams in."""
    watch = Watch(limited, canary)

    def body():
        yield f'service=echo&fileIn0=$(touch {canary})'.encode()
        for _ in range(20):
            yield b'x' * 10000
    answer = post(limited, data=body(), headers={'Content-Type': 'application/x-www-form-urlencoded'})
    too_large(limited, answer)
    watch.nothing_written()


def test_a_request_under_the_limits_is_accepted(limited):
    """The limits refuse what is over them, not everything: 50 KB of content, a 150-character input."""
    watch = Watch(limited)
    ids = []
    for content in ('y' * 50000, 'z' * 150):
        record = accepted(limited, post(limited, data={'service': 'echo', 'fileIn0': content}))
        assert wait_finished(limited, record['id'])['status'] == 'complete'
        assert result_of(limited, record['id']) == content.encode()
        ids.append(record['id'])
    watch.only_tasks_added(ids)


@pytest.mark.parametrize('how', ['urlencoded', 'multipart'])
def test_more_inputs_than_max_inputs_is_400(limited, how, canary):
    watch = Watch(limited, canary)
    form = {'service': 'echo', 'fileIn0': f'$(touch {canary})', 'fileIn1': 'b', 'fileIn2': 'c'}
    if how == 'urlencoded':
        answer = post(limited, data=form)
    else:
        answer = post(limited, data={'service': 'echo'},
                      files={k: (f'{k}.txt', v.encode()) for k, v in form.items() if k != 'service'})
    reason = reason_of(limited, answer, 400)
    assert 'too many input files' in reason and '2' in reason, reason
    watch.nothing_written()


LONG_FIELDS = {  # 200 characters each
    'notifier': 'http://10.1.2.3/' + 'a' * 184,
    'nativeArgs': ' '.join(['--render'] * 22) + ' --',
    'arg0': '--render' + 'x' * 192,
    'prearg0': '--load=' + 'p' * 193,
    'format': 'json' + 'x' * 196,
    'service': 'e' * 200,
    'in': 'tasks/in/' + 'i' * 191,
}


@pytest.mark.parametrize('where', ['urlencoded', 'multipart', 'query of the POST'])
@pytest.mark.parametrize('name', list(LONG_FIELDS))
def test_a_field_over_max_field_length_is_400(limited, name, where, canary):
    value = LONG_FIELDS[name]
    assert len(value) == 200
    form = {'service': 'echo', 'fileIn0': f'$(touch {canary})', name: value}
    watch = Watch(limited, canary)
    if where == 'urlencoded':
        answer = post(limited, data=form)
    elif where == 'multipart':
        answer = post(limited, files={k: (None, v) for k, v in form.items()})
    else:
        answer = post(limited, path='/?' + urlencode({name: value}),
                      data={k: v for k, v in form.items() if k != name})
    reason = reason_of(limited, answer, 400)
    assert name in reason and '100' in reason, reason
    watch.nothing_written()


def test_a_full_queue_answers_503_with_retry_after(limited, canary):
    """maxTasks = 1, maxQueued = 1: one runs, one waits, the third is refused."""
    wait_quiet(limited)
    running = accepted(limited, post(limited, data={'service': 'slow', 'fileIn0': 'first'}))
    waiting = accepted(limited, post(limited, data={'service': 'slow', 'fileIn0': 'second'}))
    try:
        assert waiting.get('queued') == 'yes', waiting
        deadline = time.monotonic() + 20
        while 'pid' not in read_record(limited, running['id']):  # the runner's last write before the sleep
            assert time.monotonic() < deadline, read_record(limited, running['id'])
            time.sleep(0.02)
        time.sleep(0.2)
        before = snapshot(limited)
        for fmt in ('text', 'json'):
            form = {'service': 'echo', 'fileIn0': f'$(touch {canary})'}
            answer = post(limited, data=dict(form, format='json') if fmt == 'json' else form)
            reason = reason_of(limited, answer, 503)
            assert 'queue is full' in reason, reason
            assert (answer.header('Retry-After') or '').isdigit(), answer
        after = snapshot(limited)
        assert after == before, '\n'.join(snapshot_diff(before, after))
        assert not os.path.lexists(canary)
        assert info_path(limited, limited.witness['id']).read_bytes() == limited.witness['bytes']
    finally:
        for task in (waiting, running):
            send(limited, 'GET', f'/?service=kill&id={task["id"]}')
    wait_quiet(limited)


###############################################################################
# 3. Ids and paths
###############################################################################

BAD_IDS = {
    '../../etc/passwd': '../../etc/passwd',
    '..%2F..%2Fetc%2Fpasswd': '..%2F..%2Fetc%2Fpasswd',
    '%2e%2e%2f': '%2e%2e%2f',
    '%252e%252e%252f': '%252e%252e%252f',
    '/etc/passwd': '/etc/passwd',
    '%2Fetc%2Fpasswd': '%2Fetc%2Fpasswd',
    'NUL': '%00',
    'witness id + NUL': '{witness}%00',
    'witness id + LF': '{witness}%0a',
    'witness id + space': '{witness}%20',
    'witness id via ../info/': '..%2Finfo%2F{witness}',
    'glob': '*',
    '500 digits': '1' * 500,
    'id shape, 500 chars': '1795841292-04767-' + '9' * 483,
    'unicode digits': '%D9%A1' * 10,
    '$(touch CANARY)': '%24(touch%20{canary})',
    ';touch CANARY': '%3Btouch%20{canary}',
    'witness id;touch CANARY': '{witness}%3Btouch%20{canary}',
}


@on_live('server')  # %2F, NUL and LF in the URL: the server parses it first
@pytest.mark.parametrize('service', ['info', 'kill'])
@pytest.mark.parametrize('name', list(BAD_IDS))
def test_a_bad_id_is_400_before_a_file_is_touched(server, name, service, canary):
    query = BAD_IDS[name].replace('{witness}', server.witness['id']).replace('{canary}', canary)
    watch = Watch(server, canary)
    answer = send(server, 'GET', f'/?service={service}&id={query}', headers=hostile_headers(canary))
    reason = reason_of(server, answer, 400, front_may_answer=True)
    assert answer.header('Content-Type').startswith('text/html') or 'bad task id' in reason, reason
    no_secrets(server, answer, 'witness content')
    watch.nothing_written()


@pytest.mark.parametrize('service', ['info', 'kill'])
def test_a_bad_id_in_a_posted_form_is_400(server, service, canary):
    watch = Watch(server, canary)
    answer = post(server, files={'service': (None, service), 'id': (None, f'../../etc/passwd;touch {canary}'),
                                 'format': (None, 'json')})
    assert 'bad task id' in reason_of(server, answer, 400)
    watch.nothing_written()


DENIED_PATHS = {
    '/tasks/out/..%2f..%2frrcloudrc': {404},
    '/tasks/out/%2e%2e/rrcloudrc': {404},
    '/tasks/out/%2e%2e%2f%2e%2e%2frrcloudrc': {404},
    '/tasks/out/../../rrcloudrc': {404},
    '/tasks/log/../info/{witness}': {404},
    '/tasks/log/..%2finfo%2f{witness}': {404},
    '/tasks/out/..%2fin%2f{witness_in}': {404},
    '/tasks/out/.hidden': {404},
    '/tasks/out/%2ehidden': {404},
    '/tasks/out/.': {404},
    '/tasks/out/..': {404},
    '/tasks/out/': {404},
    '/tasks/out/{witness}/..%2f..%2f..%2frrcloudrc': {404},
    '/tasks/out/%2fetc%2fpasswd': {404},
    '/tasks/out//etc/passwd': {404},
    '/tasks/log/{witness}%00': {400, 404},
    '/tasks/out/{witness}%00.stl': {400, 404},
    '/tasks/info/{witness}': {404},
    '/tasks/in/{witness_in}': {404},
    '/rrcloudrc': {404},
    '/tasks/out/$(touch%20{canary})': {404},
    '/tasks/log/;touch%20{canary}': {404},
    '/tasks/out/%60touch%20{canary}%60': {404},
}


@on_live('server')  # '..', %2F and control characters in paths
@pytest.mark.parametrize('template', list(DENIED_PATHS))
def test_a_path_outside_the_results_is_404_and_never_the_content(server, template, canary):
    path = template.format(witness=server.witness['id'], witness_in=os.path.basename(server.witness['in']),
                           canary=canary)
    watch = Watch(server, canary)
    answer = send(server, 'GET', path, headers=hostile_headers(canary))
    statuses = DENIED_PATHS[template]
    assert answer.status in statuses, f'{server.kind}: {path}: {answer!r}'
    reason_of(server, answer, answer.status, front_may_answer=True)
    no_secrets(server, answer, 'witness content')
    watch.nothing_written()


@pytest.mark.parametrize('method', ['GET', 'HEAD'])
def test_links_planted_in_the_store_are_not_followed(server, method):
    """A link in tasks/out (to a file or a folder outside) or in tasks/log (named like a task) is never served."""
    token = uuid.uuid4().hex[:12]
    marker = f'OUTSIDE-MARKER-{token}'
    outside = f'/tmp/rrcloud-outside-{token}'
    os.mkdir(outside, 0o755)
    with open(f'{outside}/secret.txt', 'w') as handle:
        handle.write(marker + '\n')
    os.chmod(f'{outside}/secret.txt', 0o644)  # www-data could read it, if it were followed
    out, log = server.store / 'tasks' / 'out', server.store / 'tasks' / 'log'
    links = {out / f'link-{token}': f'{outside}/secret.txt', out / f'dirlink-{token}': outside,
             out / f'{UNKNOWN_ID}.stl': f'{outside}/secret.txt', log / UNKNOWN_ID: f'{outside}/secret.txt'}
    try:
        for link, target in links.items():
            os.symlink(target, link)
        watch = Watch(server)
        for path in (f'/tasks/out/link-{token}', f'/tasks/out/dirlink-{token}/secret.txt',
                     f'/tasks/out/{UNKNOWN_ID}.stl', f'/tasks/log/{UNKNOWN_ID}'):
            answer = send(server, method, path)
            assert answer.status == 404, f'{server.kind}: {method} {path}: {answer!r}'
            if method == 'GET':
                reason_of(server, answer, 404)
            assert marker not in answer.text
        watch.nothing_written()
    finally:
        for link in links:
            if os.path.lexists(link):
                os.unlink(link)
        for name in os.listdir(outside):
            os.unlink(os.path.join(outside, name))
        os.rmdir(outside)


###############################################################################
# 4. Services and arguments
###############################################################################

BAD_SERVICES = ['../x', '../../bin/sh', 'echo;id', 'echo;touch {canary}', '$(touch {canary})',
                '`touch {canary}`', 'echo|touch {canary}', 'echo&&touch {canary}', 'ECHO', 'echo ', ' echo',
                'echo\t', 'echo.conf', 'services/echo', 'nosuchservice', 'x' * 40, '', '-h', 'info;id']


@pytest.mark.parametrize('name', BAD_SERVICES, ids=[repr(n) for n in BAD_SERVICES])
def test_a_bad_or_unknown_service_is_400(server, name, canary):
    watch = Watch(server, canary)
    service = name.replace('{canary}', canary)
    answer = post(server, data={'service': service, 'fileIn0': f'$(touch {canary})'})
    reason = reason_of(server, answer, 400)
    assert 'bad service name' in reason or 'unknown service' in reason, reason
    watch.nothing_written()


PREFIX_PREARGS = ['--loa', '--load', '--lo', '-', '--load=x', '--load==', '--LOAD=', ' --load=', '--load= ',
                  '--load=$(touch {canary})', ';--load=', '--load=;touch {canary};', '--load=`touch {canary}`',
                  '-o', '--load=../../']


@pytest.mark.parametrize('prearg', PREFIX_PREARGS, ids=[repr(p) for p in PREFIX_PREARGS])
def test_a_prearg_that_is_not_exactly_the_allowed_one_is_400(server, prearg, canary):
    watch = Watch(server, canary)
    answer = post(server, data={'service': 'loader', 'fileIn0': f'$(touch {canary})',
                                'prearg0': prearg.replace('{canary}', canary)})
    assert 'prearg' in reason_of(server, answer, 400)
    watch.nothing_written()


def test_the_exact_prearg_is_accepted(server):
    """The positive control of the prearg refusals: ``--load=`` itself works."""
    watch = Watch(server)
    record = accepted(server, post(server, data={'service': 'loader', 'fileIn0': 'loaded', 'prearg0': '--load='}))
    argv = shlex.split(record['cmd'])
    assert argv[-2] == '--load=' + record['in'] and INPUT_RE.match(record['in']), record
    assert wait_finished(server, record['id'])['status'] == 'complete'
    assert result_of(server, record['id']) == b'loaded'
    watch.only_tasks_added([record['id']])


PAYLOADS = ['; touch {canary}', '$(touch {canary})', '$(touch${IFS}{canary})', '`touch {canary}`',
            '|touch {canary}', '&& touch {canary}', "'; touch {canary}; '", '\\"; touch {canary}; \\"']
# Where a payload can go.  Switches, names and ids must be refused; a notifier
# or a format may be taken (as data); a file's name and content are data and
# must be taken, stored and never run.
PAYLOAD_FIELDS = ['service', 'prearg0', 'nativeArgs', 'arg0', 'id', 'wait', 'notifier', 'format',
                  'in', 'fileIn0 filename', 'fileIn0 content', 'fileIn0 content via --load=']
MAY_TAKE = ('notifier', 'format')
# `in` (a 0.019 client's own input paths) is taken and never used.
MUST_TAKE = ('in', 'fileIn0 filename', 'fileIn0 content', 'fileIn0 content via --load=')


def submit_with_payload(deployment, where, payload):
    form = {'service': 'echo', 'fileIn0': 'plain content'}
    files = None
    if where == 'fileIn0 filename':
        files = {'fileIn0': (payload + '.txt', b'plain content')}
        form = {'service': 'echo'}
    elif where == 'fileIn0 content':
        form['fileIn0'] = payload
    elif where == 'fileIn0 content via --load=':
        form = {'service': 'loader', 'fileIn0': payload, 'prearg0': '--load='}
    elif where == 'notifier':
        form['notifier'] = 'http://notifier.invalid:9/' + payload  # taken: a name that does not resolve yet
    elif where == 'id':
        form = {'service': 'info', 'id': payload}
    elif where == 'wait':
        form = {'service': 'info', 'id': deployment.witness['id'], 'wait': payload}
    else:
        form[where] = payload
    return post(deployment, data=form, files=files)


@pytest.mark.parametrize('payload', PAYLOADS, ids=[repr(p) for p in PAYLOADS])
@pytest.mark.parametrize('where', PAYLOAD_FIELDS)
def test_shell_payloads_in_every_field_are_refused_or_stored_as_data(server, where, payload, canary):
    payload = payload.replace('{canary}', canary)
    watch = Watch(server, canary)
    answer = submit_with_payload(server, where, payload)
    if where not in MUST_TAKE and not (where in MAY_TAKE and answer.status == 200):
        reason_of(server, answer, 400)
        watch.nothing_written()
        return
    record = accepted(server, answer)
    done = wait_finished(server, record['id'])
    assert done['status'] == 'complete', done
    content = payload.encode() if where.startswith('fileIn0 content') else b'plain content'
    assert result_of(server, record['id']) == content
    if where == 'notifier':
        assert done['notifier'] == 'http://notifier.invalid:9/' + payload, done
    assert INPUT_RE.match(done['in']), done
    assert canary not in done['cmd'], done
    prearg = '--load=' if where.endswith('--load=') else ''
    assert shlex.split(done['cmd'])[-2:] == [prearg + done['in'], done['out']], done
    watch.only_tasks_added([record['id']])


@pytest.mark.parametrize('how', ['urlencoded', 'multipart string', 'upload named like an option'])
def test_content_that_looks_like_an_option_stays_content(server, how):
    """fileIn0 = '-o/tmp/rrcloud-pwn-…' for openscad is a file's content, never an argument."""
    pwn = f'/tmp/rrcloud-pwn-{uuid.uuid4().hex}'
    content = f'-o{pwn}.stl'
    watch = Watch(server)
    if how == 'urlencoded':
        answer = post(server, data={'service': 'openscad', 'fileIn0': content})
    elif how == 'multipart string':
        answer = post(server, files={'service': (None, 'openscad'), 'fileIn0': (None, content)})
    else:
        answer = post(server, data={'service': 'openscad'}, files={'fileIn0': (content + '.scad', content.encode())})
    record = accepted(server, answer)
    argv = shlex.split(record['cmd'])
    assert argv[0] == 'openscad' and argv[1] == record['in'] and INPUT_RE.match(argv[1]), record
    assert argv[2] == f'-otasks/out/{record["id"]}.stl' and len(argv) == 3, record
    assert pwn not in record['cmd']
    done = wait_finished(server, record['id'])
    assert done['status'] in ('complete', 'failed'), done
    assert not any(os.path.lexists(p) for p in (pwn, pwn + '.stl')), f'{server.kind}: {pwn} was written'
    watch.only_tasks_added([record['id']])


@pytest.mark.parametrize('where', ['arg0', 'nativeArgs', 'prearg0'])
def test_an_output_option_as_an_argument_is_refused(server, where):
    pwn = f'/tmp/rrcloud-pwn-{uuid.uuid4().hex}'
    watch = Watch(server)
    value = {'arg0': f'-o{pwn}.stl', 'nativeArgs': f'--render -o {pwn}.stl', 'prearg0': f'-o{pwn}'}[where]
    answer = post(server, data={'service': 'openscad', 'fileIn0': 'cube(1);', where: value})
    reason = reason_of(server, answer, 400)
    assert ('not allowed' in reason) and (where == 'prearg0') == ('prearg' in reason), reason
    watch.nothing_written()
    assert not any(os.path.lexists(p) for p in (pwn, pwn + '.stl'))


SHELLSHOCK = '() { :; }; /usr/bin/touch {canary}'


@on_live('server')  # the CGI environment: headers as HTTP_* variables
def test_shellshock_headers_reach_no_child(server, canary):
    """Header payloads (CGI turns headers into HTTP_* variables) never reach a task's environment."""
    payload = SHELLSHOCK.replace('{canary}', canary)
    headers = {'User-Agent': payload, 'X-Foo': payload, 'Referer': payload, 'Cookie': f'a={payload}',
               'Accept-Language': payload, 'Proxy': 'http://127.0.0.1:9/', 'Display': ':0'}
    watch = Watch(server, canary)
    answer = post(server, data={'service': 'envdump', 'fileIn0': 'dump'}, headers=headers)
    record = accepted(server, answer)
    done = wait_finished(server, record['id'])
    assert done['status'] == 'complete', done
    dumped = result_of(server, record['id']).decode()
    names = {line.split('=', 1)[0] for line in dumped.splitlines() if '=' in line and not line.startswith(' ')}
    assert 'PATH' in names, dumped  # it is the environment
    assert not {n for n in names if n.startswith('HTTP_')}, dumped
    assert not names & {'DISPLAY', 'GATEWAY_INTERFACE', 'REMOTE_ADDR', 'SERVER_SOFTWARE', 'QUERY_STRING',
                        'CONTENT_TYPE', 'RRCLOUD_CONFIG', 'RRCLOUD_CONFIG_FILES', 'RRCLOUD_SLOT_FD'}, dumped
    allowed = set(TASK_ENV_ALLOWLIST) | {'PATH', 'PWD', 'SHLVL', '_', 'OLDPWD'}
    assert names <= allowed, f'{server.kind}: unexpected variables {sorted(names - allowed)}'
    assert '() {' not in dumped and canary not in dumped
    log = send(server, 'GET', f'/tasks/log/{record["id"]}')
    assert log.status == 200 and canary not in log.text
    watch.only_tasks_added([record['id']])


###############################################################################
# 5. Uploads
###############################################################################

HOSTILE_NAMES = {
    '../../x.scad': b'../../rrcloud-up-{token}.scad',
    '/etc/passwd': b'/etc/passwd',
    'absolute in /tmp': b'/tmp/rrcloud-up-{token}.txt',
    '..': b'..',
    '.htaccess': b'.htaccess',
    'backslashes': b'..\\..\\rrcloud-up-{token}.txt',
    'newline inside': b'evil\nrrcloud-up-{token}.txt',
    'CR LF header inside': b'evil\r\nX-Evil: 1\r\n\r\nrrcloud-up-{token}.txt',
    'percent-encoded newline': b'evil%0A%0Drrcloud-up-{token}.txt',
    'NUL inside': b'rrcloud-up-{token}.txt\x00.scad',
    'shell': b'$(touch {canary}).txt',
    'bad extension': b'x.$(touch {canary})',
    '1000 characters': b'A' * 1000 + b'.txt',
    '5000 characters': b'A' * 5000 + b'.txt',
}
MAY_BE_REFUSED = ('5000 characters', 'CR LF header inside')


@pytest.mark.parametrize('name', list(HOSTILE_NAMES))
def test_hostile_upload_names_are_replaced_by_generated_ones(server, name, canary):
    token = uuid.uuid4().hex[:12]
    filename = HOSTILE_NAMES[name].replace(b'{token}', token.encode()).replace(b'{canary}', canary.encode())
    content = f'uploaded as {name}\n'.encode()
    body, content_type = multipart([(field('service'), b'echo'), (file_field('fileIn0', filename), content)])
    watch = Watch(server, canary)
    answer = send(server, 'POST', '/', body=body, headers={'Content-Type': content_type})
    if name in MAY_BE_REFUSED and answer.status != 200:
        # refused as a whole is safe too: a part header over the parser's 4 KB line limit,
        # or a header block ended inside the name
        assert answer.status in (400, 413), f'{server.kind}: {answer!r}'
        reason_of(server, answer, answer.status)
        watch.nothing_written()
        return
    record = accepted(server, answer)
    assert INPUT_RE.match(record['in']) and '..' not in record['in'], record
    done = wait_finished(server, record['id'])
    assert done['status'] == 'complete', done
    if b'\r\n' not in filename:  # else the part's header ended inside the name: the rest is content
        assert result_of(server, record['id']) == content
    for leak in (f'/tmp/rrcloud-up-{token}.scad', f'/tmp/rrcloud-up-{token}.txt',
                 str(server.root / f'rrcloud-up-{token}.scad'), str(server.store / f'rrcloud-up-{token}.scad')):
        assert not os.path.lexists(leak), leak
    assert 'X-Evil' not in [k for k, _ in answer.headers]
    watch.only_tasks_added([record['id']])


BOUNDARY_TYPE = 'multipart/form-data; boundary=rrcloud-test-boundary-91c3'


def _form(content, *more):
    """service=echo and fileIn0=content (plus more parts), as a hand-written multipart body."""
    return multipart([(field('service'), b'echo'), (field('fileIn0'), content), *more])


MALFORMED_UPLOADS = {  # case: content -> (body, Content-Type)
    '300 parts': lambda content: _form(content, *[(field(f'arg{n}'), b'--render') for n in range(298)]),
    '100 KB part header': lambda content: _form(
        content, (file_field('fileIn1', b'a.txt') + b'\r\nX-Big: ' + b'a' * 100000, b'x')),
    '100 headers in a part': lambda content: _form(
        content, (file_field('fileIn1', b'a.txt') + b''.join(b'\r\nX-H%d: v' % n for n in range(100)), b'x')),
    'no boundary': lambda content: (_form(content)[0], 'multipart/form-data'),
    'empty boundary': lambda content: (_form(content)[0], 'multipart/form-data; boundary='),
    'boundary not in the body': lambda content: (_form(content)[0], 'multipart/form-data; boundary=elsewhere'),
    'no closing boundary': lambda content: (_form(content)[0].rsplit(b'--rrcloud', 1)[0], BOUNDARY_TYPE),
    'part without a name': lambda content: _form(content, (b'Content-Disposition: form-data', b'x')),
    'unknown charset': lambda content: (_form(content)[0], BOUNDARY_TYPE + '; charset=x-evil'),
}


@pytest.mark.parametrize('case', list(MALFORMED_UPLOADS))
def test_malformed_multipart_is_refused(server, case, canary):
    body, content_type = MALFORMED_UPLOADS[case](f'$(touch {canary})'.encode())
    watch = Watch(server, canary)
    answer = send(server, 'POST', '/?format=json', body=body, headers={'Content-Type': content_type})
    assert answer.status in (400, 413), f'{server.kind}: {answer!r}'
    reason_of(server, answer, answer.status)
    watch.nothing_written()


def _truncated(variant, canary_path):
    body, content_type = multipart([(field('service'), b'echo'),
                                    (file_field('fileIn0', b'a.txt'), f'$(touch {canary_path})'.encode())])
    sent = body[:len(body) // 2] if variant == 'cut inside a part' else body
    head = (f'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n'
            f'Content-Length: {len(body) + 1000}\r\nConnection: close\r\n\r\n').encode()
    return head + sent


@live_only('server')  # request framing on a socket
@pytest.mark.parametrize('variant', ['cut inside a part', 'whole form, but 1000 bytes short'])
def test_a_truncated_body_records_no_task_and_the_server_answers_on(server, variant, canary):
    watch = Watch(server, canary)
    raw_exchange(server, _truncated(variant, canary), read=False)
    time.sleep(1.0)  # a CGI started for it would have written by now
    watch.nothing_written()
    answer = send(server, 'GET', '/?service=meta')
    assert answer.status == 200, answer


@live_only('server')  # request framing on a socket
@pytest.mark.parametrize('encoding', ['urlencoded', 'multipart'])
def test_a_content_length_smaller_than_the_body(server, encoding, canary):
    """The server reads the declared bytes only: a refusal, or a task of just those bytes."""
    if encoding == 'urlencoded':
        declared = b'service=echo&fileIn0=declared'
        body, content_type = declared + f'$(touch {canary})'.encode(), 'application/x-www-form-urlencoded'
        length = len(declared)
    else:
        body, content_type = multipart([(field('service'), b'echo'), (file_field('fileIn0', b'a.txt'), b'declared')])
        length = len(body) - 20
        body += f'$(touch {canary})'.encode()
    head = (f'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n'
            f'Content-Length: {length}\r\nConnection: close\r\n\r\n').encode()
    watch = Watch(server, canary)
    answer = parse_raw_answer(raw_exchange(server, head + body))
    if answer.status == 200:
        record = parse_text_record(_body_of(answer))
        assert wait_finished(server, record['id'])['status'] == 'complete'
        assert result_of(server, record['id']) == b'declared'
        watch.only_tasks_added([record['id']])
    else:
        assert 400 <= answer.status < 500, f'{server.kind}: {answer!r}'
        watch.nothing_written()
    assert send(server, 'GET', '/?service=meta').status == 200


def _body_of(answer):
    """The body of a raw answer (plain or chunked)."""
    if (answer.header('Transfer-Encoding') or '').lower() == 'chunked':
        data, body = answer.body, b''
        while True:
            size, _, rest = data.partition(b'\r\n')
            size = int(size, 16)
            if size == 0:
                return body.decode()
            body, data = body + rest[:size], rest[size + 2:]
    return answer.body[:int(answer.header('Content-Length'))].decode()


###############################################################################
# 6. Answers: headers, HTML, JSON
###############################################################################

# A header and a blank line (the end of the headers), then a shell payload.
INJECT = '%0d%0aX-Injected:%201%0d%0a%0d%0a%24(touch%20{canary})'
INJECT_RAW = '\r\nX-Injected: 1\r\n\r\n$(touch {canary})'
CRLF_REQUESTS = {  # case: (method, path, form or None)
    'id in info': ('GET', f'/?service=info&id=x{INJECT}', None),
    'id in info (json)': ('GET', f'/?service=info&id=x{INJECT}&format=json', None),
    'id in kill': ('GET', f'/?service=kill&id=x{INJECT}', None),
    'LF only in id': ('GET', '/?service=info&id=x%0aX-Injected:%201%0a%0a%24(touch%20{canary})', None),
    'service': ('GET', f'/?service=x{INJECT}', None),
    'format': ('GET', f'/?service=info&id=x&format=json{INJECT}', None),
    'wait': ('GET', f'/?service=info&id={{witness}}&wait=1{INJECT}', None),
    'result path': ('GET', f'/tasks/out/x{INJECT}', None),
    'log path': ('GET', f'/tasks/log/x{INJECT}', None),
    'notifier (POST)': ('POST', '/', {'service': 'echo', 'fileIn0': 'x', 'notifier': 'http://127.0.0.1:9/' + INJECT_RAW}),
    'notifier with a status line (POST)': ('POST', '/', {
        'service': 'echo', 'fileIn0': 'x', 'notifier': 'http://127.0.0.1:9/\r\nstatus: complete\r\n$(touch {canary})'}),
    'id (POST)': ('POST', '/', {'service': 'info', 'id': 'x' + INJECT_RAW}),
    'format (POST)': ('POST', '/', {'service': 'echo', 'fileIn0': 'x', 'format': 'json' + INJECT_RAW}),
    'service (POST)': ('POST', '/', {'service': 'echo' + INJECT_RAW, 'fileIn0': 'x'}),
    'arg0 (POST)': ('POST', '/', {'service': 'echo', 'fileIn0': 'x', 'arg0': INJECT_RAW}),
}


@on_live('server')  # control characters in the URL; headers as the server sends them
@pytest.mark.parametrize('case', list(CRLF_REQUESTS))
def test_cr_lf_in_a_value_adds_no_header_and_no_record_key(server, case, canary):
    method, path, form = CRLF_REQUESTS[case]
    path = path.replace('{witness}', server.witness['id']).replace('{canary}', canary)
    if form is not None:
        form = {k: v.replace('{canary}', canary) for k, v in form.items()}
    watch = Watch(server, canary)
    if form is None:
        answer = send(server, method, path)
    else:
        body = urlencode(form)
        answer = send(server, method, path, body=body.encode(),
                      headers={'Content-Type': 'application/x-www-form-urlencoded'})
    names = [k.lower() for k, _ in answer.headers]
    assert 'x-injected' not in names, f'{server.kind}: {answer!r}'
    assert all(re.match(r'\A[A-Za-z0-9-]+\Z', k) and '\n' not in v and '\r' not in v for k, v in answer.headers)
    assert 400 <= answer.status < 500, f'{server.kind}: {answer!r}'
    reason_of(server, answer, answer.status, front_may_answer=form is None)
    watch.nothing_written()


LINE_BREAKS = {'NEL': '\x85', 'LINE SEPARATOR': '\u2028', 'PARAGRAPH SEPARATOR': '\u2029',
               'VT': '\x0b', 'FF': '\x0c', 'FS': '\x1c', 'NUL': '\x00', 'CR': '\r'}


@pytest.mark.parametrize('brk', list(LINE_BREAKS))
@pytest.mark.parametrize('where', ['notifier', 'nativeArgs', 'arg0', 'format', 'in'])
def test_any_line_break_in_a_field_is_refused(server, where, brk, canary):
    """No kind of line break (as the record reader sees them) can start a forged key."""
    value = {'notifier': 'http://127.0.0.1:9/x', 'nativeArgs': '--render', 'arg0': '--render',
             'format': 'text', 'in': 'tasks/in/x.txt'}[where] + LINE_BREAKS[brk] + 'status: complete'
    watch = Watch(server, canary)
    answer = post(server, files={'service': (None, 'echo'), 'fileIn0': (None, f'$(touch {canary})'),
                                 where: (None, value)})
    reason = reason_of(server, answer, 400)
    assert where in reason, reason
    watch.nothing_written()


SCRIPT = '<script>alert(1)</script>'


def _plant(deployment, record):
    store = Store(str(deployment.store))
    return store.create_task(lambda task_id: record)['id']


def test_the_browser_page_holds_no_value_and_json_keeps_it(server):
    """Records with <script> in every field the page shows (as a hostile peer or a bug could leave
    them), and a real task with <script> in its notifier: none of it in the page's HTML (a shell that
    shows records as text: tests/test_page.py), verbatim in JSON."""
    now = f'{time.time():.5f}'
    hostile = {
        'status': 'failed', 'service': SCRIPT, 'client': SCRIPT, 'error': SCRIPT, 'notifier': SCRIPT,
        'args': SCRIPT, 'cmd': SCRIPT, 'server': SCRIPT, 'in': '', 'out': '', 'ctime': now, 'etime': now,
    }
    complete = {
        'status': 'complete', 'service': 'echo', 'client': '127.0.0.1', 'in': '', 'cmd': 'cp',
        'out': f'tasks/out/"><script>alert(1)</script>', 'ctime': now, 'etime': now, 'server': 'x',
    }
    quoted = {'status': 'x" onmouseover="alert(1)', 'service': 'echo', 'client': '127.0.0.1', 'in': '',
              'out': '', 'cmd': 'cp', 'ctime': now, 'etime': now, 'server': 'x'}
    planted = [_plant(server, r) for r in (hostile, complete, quoted)]
    try:
        real = accepted(server, post(server, data={'service': 'echo', 'fileIn0': SCRIPT,
                                                   'notifier': 'http://notifier.invalid:9/' + SCRIPT}))
        wait_finished(server, real['id'])
        wait_quiet(server)
        page = send(server, 'GET', '/', headers={'User-Agent': BROWSER})
        assert page.status == 200 and page.header('Content-Type').startswith('text/html'), page
        text = page.text
        for task_id in planted + [real['id']]:
            assert task_id not in text
        assert 'alert(' not in text, f'{server.kind}: a record\'s value in the page'
        assert 'onmouseover' not in text
        listing = send(server, 'GET', '/?service=info&format=json')
        records = {r['id']: r for r in json.loads(listing.text)}
        assert records[planted[0]]['error'] == SCRIPT and records[planted[0]]['service'] == SCRIPT
        assert records[real['id']]['notifier'] == 'http://notifier.invalid:9/' + SCRIPT
        one = json.loads(send(server, 'GET', f'/?service=info&id={planted[2]}&format=json').text)
        assert one['status'] == quoted['status']
    finally:
        for task_id in planted:
            os.unlink(info_path(server, task_id))


JSON_REQUESTS = {
    'info of all': ('GET', '/?service=info&format=json', None, 200),
    'info of the witness': ('GET', '/?service=info&id={witness}&format=json', None, 200),
    'info with wait': ('GET', '/?service=info&id={witness}&wait=1&format=json', None, 200),
    'meta': ('GET', '/?service=meta&format=json', None, 200),
    'browser asking json': ('GET', '/?format=json', None, 200),
    'unknown id': ('GET', f'/?service=info&id={UNKNOWN_ID}&format=json', None, 404),
    'kill of an unknown id': ('GET', f'/?service=kill&id={UNKNOWN_ID}&format=json', None, 404),
    'kill of a finished task': ('GET', '/?service=kill&id={witness}&format=json', None, 400),
    'bad id': ('GET', '/?service=info&id=..%2F..%2Fetc%2Fpasswd&format=json', None, 400),
    'bad id with quotes and backslashes': ('GET', '/?service=info&id=%22%5C%22%7D%5D&format=json', None, 400),
    'bad id in unicode': ('GET', '/?service=info&id=%E2%80%AE%F0%9F%92%A5&format=json', None, 400),
    'bad id, invalid UTF-8': ('POST', '/?format=json', ('application/x-www-form-urlencoded',
                                                      b'service=info&id=%ff%fe%c0'), 400),
    'bad wait': ('GET', '/?service=info&id={witness}&wait=soon&format=json', None, 400),
    'unknown result': ('GET', f'/tasks/out/{UNKNOWN_ID}?format=json', None, 404),
    'unknown log': ('GET', f'/tasks/log/{UNKNOWN_ID}?format=json', None, 404),
    'unknown path': ('GET', '/nothing/here?format=json', None, 404),
    'GET of a task': ('GET', '/?service=echo&format=json', None, 405),
    'PUT': ('PUT', '/?format=json', b'x', 405),
    'unknown service': ('POST', '/?format=json', {'service': 'nosuch', 'fileIn0': 'x'}, 400),
    'missing input': ('POST', '/?format=json', {'service': 'echo'}, 400),
    'notifier not http': ('POST', '/?format=json', {'service': 'echo', 'fileIn0': 'x', 'notifier': 'file:///etc/passwd'}, 400),
    'field twice': ('POST', '/?format=json&service=echo', {'service': 'echo', 'fileIn0': 'x'}, 400),
    'no boundary': ('POST', '/?format=json', ('multipart/form-data', b'--x\r\n'), 400),
    'bad Content-Type': ('POST', '/?format=json', ('text/evil', b'service=echo'), 400),
    'a task': ('POST', '/', {'service': 'echo', 'fileIn0': 'json "quoted" \\ \u2603', 'format': 'json'}, 200),
}


@pytest.mark.parametrize('case', list(JSON_REQUESTS))
def test_every_json_answer_parses(server, case):
    method, path, body, status = JSON_REQUESTS[case]
    path = path.replace('{witness}', server.witness['id'])
    watch = Watch(server)
    if isinstance(body, dict):
        answer = post(server, data=body, path=path)
    elif isinstance(body, tuple):
        answer = send(server, method, path, body=body[1], headers={'Content-Type': body[0]})
    else:
        answer = send(server, method, path, body=body)
    assert answer.status == status, f'{server.kind}: {answer!r}'
    assert answer.header('Content-Type').startswith('application/json'), f'{server.kind}: {answer!r}'
    value = json.loads(answer.text)
    if status == 200:
        records = value if isinstance(value, list) else [value]
        assert all(isinstance(r, dict) and all(isinstance(v, str) for v in r.values()) for r in records), value
    else:
        reason_of(server, answer, status)
    if case == 'a task':
        assert wait_finished(server, value['id'])['status'] == 'complete'
        watch.only_tasks_added([value['id']])
    else:
        watch.nothing_written()
