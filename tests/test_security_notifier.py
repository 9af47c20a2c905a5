"""The notifier cannot be turned into a request forger (issue 6, item 3).

A notifier is one best-effort GET to an http(s) URL when a task ends.  These
tests hold rrcloud to its promises about it:

- only http and https are accepted, at submission (CLI exit 2, HTTP 400);
- loopback, link-local and unspecified targets are refused in every spelling
  (names, decimal, hex, octal, IPv4-mapped IPv6, ...) unless ``notifierAllow``
  names them, at submission (CLI exit 2, HTTP 400 with the reason), and
  again at the call (a name may resolve elsewhere by then): that refusal goes
  to the task's log and the task still completes;
- a redirect is not followed, a listener that never answers (or answers a byte
  at a time) cannot hold the runner for long, the answer never changes the
  task's status;
- proxies from the environment are ignored;
- the name is resolved once and the checked address is the one connected to.

Everything is real: tasks run through the CLI (in-process ``main()`` or a real
process) with their detached runners, and the "targets" are raw TCP listeners
on 127.0.0.1 (and on [::1] at the same port, so an IPv6 loopback spelling
would reach them too).  A listener that "receives nothing" accepted no TCP
connection at all.  Where a test calls rrcloud's functions in-process it
watches the real socket calls through Python's audit hooks, not mocks.
"""
import errno
import ipaddress
import socket
import sys
import threading
import time

import pytest

from rrc.errors import UsageError
from rrc.notifier import NOTIFIER_TIMEOUT, notifier_get, resolve_notifier_host
from rrc.store import Store
from conftest import task_id_of, wait_until_done, write_config
from helpers import SH_SERVICE, plain_session

DEADLINE = 60  # generous: waiting is fine
# How long after the connection a silent listener may keep the runner: the
# runner's notifier timeout plus slack for a loaded machine.
TIMEOUT_SLACK = 10.0
ALLOW_LOOPBACK = 'notifierAllow = 127.0.0.0/8\n'
CONTENT = 'hi there'
CANARY_SCRIPT = 'touch canary\necho ran > "$1"\n'


###############################################################################
# Listeners: raw TCP on 127.0.0.1:PORT and [::1]:PORT
###############################################################################

class Connection:
    """One accepted TCP connection and the bytes the client sent."""

    def __init__(self, family):
        self.family = family
        self.accepted = time.monotonic()
        self.data = b''

    @property
    def request_line(self):
        return self.data.split(b'\r\n', 1)[0].decode('latin-1')

    @property
    def headers(self):
        head = self.data.split(b'\r\n\r\n', 1)[0].decode('latin-1').split('\r\n')[1:]
        return dict(line.split(': ', 1) for line in head if ': ' in line)


def http_head_complete(data):
    return b'\r\n\r\n' in data


def tls_record_complete(data):
    """A whole TLS record (the ClientHello) has arrived."""
    return len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], 'big')


def answer_with(status, *headers):
    """An answer function: ``HTTP/1.1 STATUS`` with the given header lines and no body."""
    def answer(conn, connection, stopping):
        lines = [f'HTTP/1.1 {status} Whatever', 'Content-Length: 0', 'Connection: close', *headers]
        conn.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode())
    return answer


def hold_silently(conn, connection, stopping):
    """Accept, read the request, never answer (until the test ends)."""
    stopping.wait(120)


def trickle(conn, connection, stopping):
    """Answer a status line, then one header byte a second for 40 s."""
    conn.sendall(b'HTTP/1.1 200 OK\r\nX-Slow: ')
    for _ in range(40):
        if stopping.wait(1.0):
            return
        try:
            conn.sendall(b'a')
        except OSError:
            return
    conn.sendall(b'\r\nContent-Length: 0\r\n\r\n')


def hang_up(conn, connection, stopping):
    """Close as soon as the request (or ClientHello) is in."""


class Listener:
    """A TCP listener recording every connection; ``answer`` says how it replies."""

    def __init__(self, answer=None, complete=http_head_complete):
        self.answer = answer or answer_with(200)
        self.complete = complete
        self.connections = []
        self.stopping = threading.Event()
        self.sockets = self._bind()
        self.port = self.sockets[0].getsockname()[1]
        self.url = f'http://127.0.0.1:{self.port}/'
        self.threads = []
        for sock in self.sockets:
            sock.listen(64)
            sock.settimeout(0.1)
            self._thread(self._accept, sock)

    @staticmethod
    def _bind():
        """127.0.0.1:P, plus [::1]:P (same P) where this machine has IPv6 loopback."""
        for _ in range(50):
            v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            v4.bind(('127.0.0.1', 0))
            port = v4.getsockname()[1]
            try:
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            except OSError:
                return [v4]
            try:
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(('::1', port))
                return [v4, v6]
            except OSError as exc:
                v6.close()
                if exc.errno != errno.EADDRINUSE:
                    return [v4]  # no IPv6 loopback here
                v4.close()
        raise RuntimeError('no port free on both 127.0.0.1 and ::1')

    def _thread(self, target, *args):
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self, sock):
        while not self.stopping.is_set():
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            connection = Connection(sock.family)
            self.connections.append(connection)
            self._thread(self._serve, conn, connection)

    def _serve(self, conn, connection):
        conn.settimeout(0.1)
        try:
            while not self.complete(connection.data) and not self.stopping.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    return
                connection.data += chunk
            if not self.stopping.is_set():
                self.answer(conn, connection, self.stopping)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopping.set()
        for sock in self.sockets:
            sock.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture
def listen():
    """Start listeners: ``listen(answer=..., complete=...)`` -> Listener; all stopped at the end."""
    started = []

    def start(answer=None, complete=http_head_complete):
        listener = Listener(answer, complete)
        started.append(listener)
        return listener
    yield start
    for listener in started:
        listener.stop()


###############################################################################
# Helpers
###############################################################################

def submit(cli, url):
    """``rrcloud --notifier=URL echo "hi there"`` as a local task; returns its id."""
    result = cli(f'--notifier={url}', 'echo', CONTENT)
    assert result.code == 0, result
    assert result.err == '', result
    return task_id_of(result.out)


def notifier_line(root, task_id, timeout=DEADLINE):
    """The runner's ``rrcloud: notifier URL: OUTCOME`` log line, once it is written."""
    path = root / 'tasks' / 'log' / task_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in (path.read_text().splitlines() if path.exists() else [])
                 if line.startswith('rrcloud: notifier ')]
        if lines:
            assert len(lines) == 1, lines  # called once, never retried
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f'no notifier line in the log of {task_id} within {timeout} s')


def assert_complete(root, task_id):
    """The task ended complete, with its end time and output, whatever its notifier did."""
    record = wait_until_done(root, task_id)
    assert record['status'] == 'complete', record
    assert record['exitCode'] == '0', record
    assert float(record['etime']) >= float(record['ctime']), record
    assert 'error' not in record, record
    assert (root / record['out']).read_text() == CONTENT
    return record


def first_address(host, port):
    """What getaddrinfo answers first for ``host`` (what rrcloud checks), or None."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        return None


def local_records(root):
    folder = root / 'tasks' / 'info'
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith('.')) if folder.is_dir() else []


def stored_inputs(root):
    folder = root / 'tasks' / 'in'
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# -- socket calls of this thread, seen through audit hooks (real calls, no mocks)

_AUDIT = {'thread': None, 'events': None}


def _audit_hook(event, args):
    if _AUDIT['events'] is not None and threading.get_ident() == _AUDIT['thread'] \
            and event in ('socket.getaddrinfo', 'socket.connect'):
        _AUDIT['events'].append((event, args[0] if event == 'socket.getaddrinfo' else args[1]))


sys.addaudithook(_audit_hook)


class socket_calls:
    """``with socket_calls() as calls:`` -> [(event, host or address), ...] of this thread."""

    def __enter__(self):
        _AUDIT['thread'], _AUDIT['events'] = threading.get_ident(), []
        return _AUDIT['events']

    def __exit__(self, *exc):
        _AUDIT['thread'], _AUDIT['events'] = None, None


def is_ip_literal(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


###############################################################################
# 1. http and https only, checked at submission
###############################################################################

NOT_HTTP = [
    'file:///etc/passwd',
    'ftp://example.org/x?id=$id',
    'gopher://127.0.0.1:70/_GET%20/',
    'javascript:alert(1)',
    'data:text/plain,hello',
    'dict://127.0.0.1:11211/stats',
    'httpx://example.org/',
    '//example.org/x',
    'http://',
    'http:/example.org/',
    ' http://example.org/',
    'http://example.org/a b',
    'http://example.org/\u2028status: complete',
]


@pytest.mark.parametrize('url', NOT_HTTP)
def test_cli_refuses_a_notifier_that_is_not_http(cli, workdir, url):
    result = cli(f'--notifier={url}', 'echo', CONTENT)

    assert result.code == 2, result
    assert result.out == ''
    assert result.err.startswith('rrcloud: error: ') and 'notifier' in result.err, result
    assert len(result.err.splitlines()) == 1, result
    assert local_records(workdir) == []
    assert stored_inputs(workdir) == []


# The real ``rrcloud.py serve`` the module's HTTP tests share: the default
# notifier policy and a canary service.
HTTP_SERVER = {'config': 'maxTasks = 2\n', 'services': {'sh': SH_SERVICE}, 'scope': 'module'}


@pytest.mark.parametrize('encoding', ['urlencoded', 'multipart'])
@pytest.mark.parametrize('url', NOT_HTTP)
def test_http_refuses_a_notifier_that_is_not_http(embedded_server, url, encoding):
    http_server = embedded_server(**HTTP_SERVER)
    records_before = sorted(http_server.records())
    inputs_before = stored_inputs(http_server.root)
    fields = {'service': 'sh', 'fileIn0': CANARY_SCRIPT, 'notifier': url}
    if encoding == 'urlencoded':
        answer = plain_session().post(http_server.url, data=fields, timeout=30)
    else:
        answer = plain_session().post(http_server.url, files={k: (None, v) for k, v in fields.items()},
                                      timeout=30)

    assert answer.status_code == 400, answer.text
    assert 'notifier' in answer.text, answer.text
    assert answer.headers['Access-Control-Allow-Origin'] == '*'
    time.sleep(0.3)  # a task wrongly started would have touched its canary by now
    assert sorted(http_server.records()) == records_before
    assert stored_inputs(http_server.root) == inputs_before
    assert not (http_server.root / 'canary').exists()


###############################################################################
# 2. Forbidden targets, every spelling: refused, logged, task complete
###############################################################################

def forbidden_urls():
    """(url template, host as getaddrinfo sees it) for every refused spelling."""
    urls = [
        ('http://127.0.0.1:{port}/x?id=$id', '127.0.0.1'),
        ('http://localhost:{port}/x?id=$id', 'localhost'),
        ('http://$myip:{port}/done?id=$id', 'localhost'),  # a CLI task's client is localhost
        ('http://127.1:{port}/', '127.1'),
        ('http://2130706433:{port}/', '2130706433'),
        ('http://0x7f000001:{port}/', '0x7f000001'),
        ('http://0177.0.0.1:{port}/', '0177.0.0.1'),
        ('http://0x7f.1:{port}/', '0x7f.1'),
        ('http://017700000001:{port}/', '017700000001'),
        ('http://[::1]:{port}/', '::1'),
        ('http://[::ffff:127.0.0.1]:{port}/', '::ffff:127.0.0.1'),
        ('http://[::ffff:7f00:1]:{port}/', '::ffff:7f00:1'),
        ('http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/', '0:0:0:0:0:ffff:127.0.0.1'),
        ('http://0.0.0.0:{port}/', '0.0.0.0'),
        ('http://0:{port}/', '0'),
        ('http://[::]:{port}/', '::'),
        ('http://[::ffff:0.0.0.0]:{port}/', '::ffff:0.0.0.0'),
        ('http://user:secret@127.0.0.1:{port}/', '127.0.0.1'),
        ('http://example.org@127.0.0.1:{port}/', '127.0.0.1'),
        ('https://127.0.0.1:{port}/', '127.0.0.1'),
        ('https://localhost:{port}/', 'localhost'),
        ('http://169.254.169.254/latest/meta-data/', '169.254.169.254'),
        ('http://[::ffff:169.254.169.254]/latest/meta-data/', '::ffff:169.254.169.254'),
        ('http://[fe80::1]/', 'fe80::1'),
    ]
    name = socket.gethostname()
    address = first_address(name, 80)
    if address and ipaddress.ip_address(address).is_loopback:  # this machine's own name
        urls.append((f'http://{name}:{{port}}/', name))
    return urls


def refused_at_submission(cli, url):
    """``rrcloud --notifier=URL echo`` refused before anything is stored: its error line."""
    result = cli(f'--notifier={url}', 'echo', CONTENT)
    assert result.code == 2, result
    assert result.out == '', result
    return result.err


@pytest.mark.parametrize('template, host', forbidden_urls(), ids=[u for u, _ in forbidden_urls()])
def test_forbidden_target_is_refused_when_the_task_is_submitted(cli, workdir, listen, template, host):
    listener = listen()
    url = template.format(port=listener.port)

    error = refused_at_submission(cli, url)

    assert listener.connections == [], f'{url} reached the listener'
    assert not (workdir / 'tasks' / 'info').exists() or not list((workdir / 'tasks' / 'info').iterdir())
    address = first_address(host, 80)
    if address is not None:  # the libc resolves this spelling: the refusal names the address
        assert error == (f'rrcloud: error: the server will not call this notifier: '
                         f'address {address} of {host!r} is refused (see notifierAllow)\n'), error
    else:  # a name that does not resolve yet may later: taken, and checked again at the call
        pytest.skip(f'{host!r} does not resolve here')


def test_allowing_loopback_allows_only_loopback_v4(cli, workdir, listen):
    # notifierAllow = 127.0.0.0/8 is about IPv4 loopback; ::1 and 169.254/16 stay refused.
    write_config(workdir, ALLOW_LOOPBACK)
    listener = listen()
    for url in (f'http://[::1]:{listener.port}/', 'http://169.254.169.254/'):
        assert 'is refused' in refused_at_submission(cli, url)
    assert listener.connections == []


def test_a_target_refused_at_the_call_is_logged_and_the_task_completes(cli, workdir, listen):
    # A name that resolved to an allowed address at submission may point at a
    # refused one when the task ends (DNS rebinding): the call checks again.
    write_config(workdir, ALLOW_LOOPBACK)
    listener = listen()
    url = f'http://127.0.0.1:{listener.port}/x?id=$id'
    task_id = submit(cli, url)
    assert_complete(workdir, task_id)
    store = Store(str(workdir))
    from rrc.config import Config
    from rrc.notifier import notify
    config = Config()  # the defaults: loopback refused, as the rule the call sees now

    notify(store, config, dict(store.read_task(task_id), id=task_id))

    lines = (workdir / 'tasks' / 'log' / task_id).read_text().splitlines()
    assert lines[-1] == (f'rrcloud: notifier http://127.0.0.1:{listener.port}/x?id={task_id}: '
                         f"not called: address 127.0.0.1 of '127.0.0.1' is refused (see notifierAllow)")


@pytest.mark.parametrize('fmt', ['text', 'json'])
def test_server_refuses_a_loopback_notifier_at_submission(embedded_server, listen, fmt):
    http_server = embedded_server(**HTTP_SERVER)
    # The same refusal for a task submitted over HTTP to a server with the
    # defaults: 400 with the reason, nothing stored, never called.
    listener = listen()
    records_before, inputs_before = sorted(http_server.records()), stored_inputs(http_server.root)
    for url in (f'http://127.0.0.1:{listener.port}/done?id=$id', f'http://$myip:{listener.port}/done'):
        answer = plain_session().post(http_server.url, data={'service': 'echo', 'fileIn0': CONTENT,
                                                             'notifier': url, 'format': fmt}, timeout=30)

        assert answer.status_code == 400, answer.text
        reason = ("the server will not call this notifier: address 127.0.0.1 of '127.0.0.1' "
                  "is refused (see notifierAllow)")
        assert (answer.json() == {'error': reason}) if fmt == 'json' else answer.text == f'error: {reason}\n'
    assert sorted(http_server.records()) == records_before
    assert stored_inputs(http_server.root) == inputs_before
    assert listener.connections == []


###############################################################################
# 3. Allowed targets: one GET, $id filled in, redirects not followed
###############################################################################

def test_allowed_loopback_gets_exactly_one_get_with_the_id(cli, workdir, listen):
    write_config(workdir, ALLOW_LOOPBACK)
    listener = listen()
    url = f'http://127.0.0.1:{listener.port}/done?id=$id&x=1'

    task_id = submit(cli, url)

    line = notifier_line(workdir, task_id)
    assert_complete(workdir, task_id)
    assert line == f'rrcloud: notifier http://127.0.0.1:{listener.port}/done?id={task_id}&x=1: HTTP 200'
    (call,) = listener.connections  # one connection, one request
    assert call.request_line == f'GET /done?id={task_id}&x=1 HTTP/1.1'
    assert call.data.count(b'HTTP/1.1') == 1
    assert call.headers['Host'] == f'127.0.0.1:{listener.port}'
    assert call.data.endswith(b'\r\n\r\n')  # a GET without a body


def test_redirect_to_loopback_is_not_followed(cli, workdir, listen):
    write_config(workdir, ALLOW_LOOPBACK)
    inner = listen()
    outer = listen(answer_with(302, f'Location: http://127.0.0.1:{inner.port}/steal'))

    task_id = submit(cli, f'http://127.0.0.1:{outer.port}/done?id=$id')

    line = notifier_line(workdir, task_id)
    assert_complete(workdir, task_id)
    assert line.endswith(': HTTP 302'), line
    assert len(outer.connections) == 1
    assert outer.connections[0].request_line == f'GET /done?id={task_id} HTTP/1.1'
    assert inner.connections == []


@pytest.mark.parametrize('status', [301, 307, 308])
def test_no_redirect_is_followed_in_process(listen, status):
    inner = listen()
    outer = listen(answer_with(status, f'Location: http://127.0.0.1:{inner.port}/steal'))

    assert notifier_get(f'http://127.0.0.1:{outer.port}/x', ['127.0.0.0/8']) == status
    assert len(outer.connections) == 1
    time.sleep(0.2)
    assert inner.connections == []


###############################################################################
# 4. A notifier cannot hold the runner or change the task's status
###############################################################################

def test_silent_listener_times_out_and_the_task_completes(cli, workdir, listen):
    write_config(workdir, ALLOW_LOOPBACK)
    listener = listen(hold_silently)

    task_id = submit(cli, f'http://127.0.0.1:{listener.port}/done?id=$id')

    line = notifier_line(workdir, task_id, timeout=NOTIFIER_TIMEOUT + DEADLINE)
    logged = time.monotonic()
    record = assert_complete(workdir, task_id)
    assert 'etime' in record
    (call,) = listener.connections
    assert call.request_line == f'GET /done?id={task_id} HTTP/1.1'
    assert 'not called: timed out' in line, line
    assert logged - call.accepted <= NOTIFIER_TIMEOUT + TIMEOUT_SLACK


def test_trickling_listener_cannot_hold_the_runner(cli, workdir, listen):
    # One header byte a second: every single read is quick, so only a deadline
    # over the whole GET ends it.  A runner stuck here holds its task slot.
    write_config(workdir, ALLOW_LOOPBACK)
    listener = listen(trickle)

    task_id = submit(cli, f'http://127.0.0.1:{listener.port}/done?id=$id')

    wait_until_done(workdir, task_id)
    deadline = time.monotonic() + DEADLINE
    while not listener.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    (call,) = listener.connections
    limit = NOTIFIER_TIMEOUT + TIMEOUT_SLACK
    try:
        line = notifier_line(workdir, task_id, timeout=limit - (time.monotonic() - call.accepted))
    except AssertionError:
        raise AssertionError(f'the notifier GET still runs {limit:g} s after it connected '
                             f'(the listener trickles one byte a second)') from None
    assert 'not called' in line, line
    assert_complete(workdir, task_id)


@pytest.mark.parametrize('status', [500, 404, 403])
def test_error_answer_does_not_change_the_status(cli, workdir, listen, status):
    write_config(workdir, ALLOW_LOOPBACK)
    listener = listen(answer_with(status))

    task_id = submit(cli, f'http://127.0.0.1:{listener.port}/done?id=$id')

    line = notifier_line(workdir, task_id)
    assert line.endswith(f': HTTP {status}'), line
    record = assert_complete(workdir, task_id)
    assert len(listener.connections) == 1
    assert Store(workdir).read_task(task_id) == record


def test_notifier_of_a_failed_task_is_called_and_the_task_stays_failed(cli, workdir, listen):
    write_config(workdir, ALLOW_LOOPBACK)
    (workdir / 'services').mkdir()
    (workdir / 'services' / 'sh.conf').write_text(SH_SERVICE)
    (workdir / 'fail.sh').write_text('exit 3\n')
    listener = listen()

    result = cli(f'--notifier=http://127.0.0.1:{listener.port}/done?id=$id', 'sh', 'fail.sh')
    assert result.code == 0, result
    task_id = task_id_of(result.out)

    line = notifier_line(workdir, task_id)
    assert line.endswith(': HTTP 200'), line
    record = wait_until_done(workdir, task_id)
    assert record['status'] == 'failed', record
    assert record['error'] == 'exit code 3', record
    assert listener.connections[0].request_line == f'GET /done?id={task_id} HTTP/1.1'


###############################################################################
# 5. Proxies from the environment are ignored
###############################################################################

PROXY_VARIABLES = ('HTTP_PROXY', 'http_proxy', 'HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')


def proxy_environment(proxy):
    env = {name: f'http://127.0.0.1:{proxy.port}' for name in PROXY_VARIABLES}
    env.update(NO_PROXY='', no_proxy='')
    return env


def test_cli_process_with_proxy_variables_goes_direct(proc, workdir, listen):
    write_config(workdir, ALLOW_LOOPBACK)
    target = listen()
    proxy = listen()  # would answer 200 to anything, as a proxy would

    result = proc(f'--notifier=http://127.0.0.1:{target.port}/done?id=$id', 'echo', CONTENT,
                  env=proxy_environment(proxy))
    assert result.code == 0, result
    task_id = task_id_of(result.out)

    line = notifier_line(workdir, task_id)
    assert_complete(workdir, task_id)
    assert line.endswith(': HTTP 200'), line
    assert proxy.connections == []
    (call,) = target.connections
    assert call.request_line == f'GET /done?id={task_id} HTTP/1.1'


def test_notifier_get_ignores_proxy_variables(monkeypatch, listen):
    # In-process, with the variables really set: the runner's own environment
    # allowlist would hide a client that honours them, this test does not.
    target = listen()
    proxy = listen()
    for name, value in proxy_environment(proxy).items():
        monkeypatch.setenv(name, value)

    assert notifier_get(f'http://127.0.0.1:{target.port}/done?id=1', ['127.0.0.0/8']) == 200
    assert proxy.connections == []
    (call,) = target.connections
    assert call.request_line == 'GET /done?id=1 HTTP/1.1'


def test_https_notifier_ignores_proxy_variables(monkeypatch, listen):
    # A proxy-honouring client would send CONNECT to the proxy; rrcloud opens
    # TLS straight to the target (which hangs up after the ClientHello).
    target = listen(hang_up, complete=tls_record_complete)
    proxy = listen()
    for name, value in proxy_environment(proxy).items():
        monkeypatch.setenv(name, value)

    with pytest.raises(OSError):
        notifier_get(f'https://127.0.0.1:{target.port}/done', ['127.0.0.0/8'])
    assert proxy.connections == []
    (call,) = target.connections
    assert call.data[:1] == b'\x16'  # a TLS handshake record, not "CONNECT"


###############################################################################
# 6. Resolved once, checked, then used (the DNS-rebinding guard)
###############################################################################

@pytest.mark.parametrize('host', ['localhost', '127.1', '127.0.0.1', '::1', '0.0.0.0', '169.254.169.254',
                                  '::ffff:127.0.0.1', 'fe80::1'])
def test_resolve_refuses_forbidden_hosts(host):
    with socket_calls() as calls:
        with pytest.raises(ValueError, match='refused'):
            resolve_notifier_host(host, 80, [])
    assert [event for event, _ in calls] == ['socket.getaddrinfo']  # looked up, never connected


@pytest.mark.parametrize('host', ['localhost', '127.1'])
def test_resolve_refuses_loopback_when_other_networks_are_allowed(host):
    with pytest.raises(ValueError, match='refused'):
        resolve_notifier_host(host, 80, ['10.0.0.0/8', '192.168.0.0/16'])


@pytest.mark.parametrize('host', ['192.168.1.10', '10.1.2.3', '172.16.0.9', 'fd00::10'])
def test_resolve_returns_a_lan_literal_unchanged(host):
    with socket_calls() as calls:
        assert resolve_notifier_host(host, 80, []) == host
    assert [event for event, _ in calls] == ['socket.getaddrinfo']


def test_resolve_honours_notifier_allow():
    assert resolve_notifier_host('127.1', 80, ['127.0.0.0/8']) == '127.0.0.1'
    assert ipaddress.ip_address(resolve_notifier_host('localhost', 80, ['127.0.0.0/8', '::1/128'])) \
        .is_loopback


def test_notifier_get_looks_the_name_up_once_and_connects_to_that_address(listen):
    listener = listen()
    allowed = ['127.0.0.0/8', '::1/128']
    address = resolve_notifier_host('localhost', listener.port, allowed)

    with socket_calls() as calls:
        status = notifier_get(f'http://localhost:{listener.port}/x?id=1', allowed)

    assert status == 200
    names = [host for event, host in calls if event == 'socket.getaddrinfo' and not is_ip_literal(host)]
    assert names == ['localhost'], calls  # the one DNS lookup
    assert all(host == address for event, host in calls
               if event == 'socket.getaddrinfo' and is_ip_literal(host)), calls
    connects = [target for event, target in calls if event == 'socket.connect']
    assert [target[:2] for target in connects] == [(address, listener.port)], calls
    (call,) = listener.connections
    assert call.headers['Host'] == f'localhost:{listener.port}'  # the name still goes in Host


def test_https_notifier_connects_to_the_checked_address_and_sends_the_name_as_sni(listen):
    listener = listen(hang_up, complete=tls_record_complete)
    allowed = ['127.0.0.0/8', '::1/128']
    address = resolve_notifier_host('localhost', listener.port, allowed)

    with socket_calls() as calls:
        with pytest.raises(OSError):
            notifier_get(f'https://localhost:{listener.port}/x', allowed)

    names = [host for event, host in calls if event == 'socket.getaddrinfo' and not is_ip_literal(host)]
    assert names == ['localhost'], calls
    connects = [target for event, target in calls if event == 'socket.connect']
    assert [target[:2] for target in connects] == [(address, listener.port)], calls
    (call,) = listener.connections
    assert call.data[:1] == b'\x16' and b'localhost' in call.data  # TLS, server name = the URL's host


def test_refused_notifier_makes_no_connection_in_process(listen):
    listener = listen()
    with socket_calls() as calls:
        with pytest.raises(ValueError, match='refused'):
            notifier_get(f'http://localhost:{listener.port}/x', [])
    assert not [c for c in calls if c[0] == 'socket.connect'], calls
    assert listener.connections == []


def test_scheme_is_checked_again_at_call_time():
    # A record written by an older version (or by hand) cannot smuggle a scheme in.
    for url in ('file:///etc/passwd', 'ftp://127.0.0.1/', 'gopher://127.0.0.1:70/_x'):
        with socket_calls() as calls:
            with pytest.raises(UsageError):
                notifier_get(url, ['0.0.0.0/0', '::/0'])
        assert calls == []

