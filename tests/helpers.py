"""Test helpers shared by the suite and bench/: ports, sessions, waiting,
test services, tasks submitted and read, processes.

One place for what several test files (and the benchmarks) need:

- ``free_port()``: a loopback port nothing listens on;
- ``plain_session()``: a requests session that ignores proxy settings;
- ``wait_for(condition, what)``: poll until something holds, fail naming it;
- ``wait_for_url(url)``: until an HTTP server answers (any status);
- ``wait_port_free(port)``: until a port can be bound again;
- ``wait_until_done(store_root, task_id)``: until a task leaves busy (read from the store);
- ``kill_group(pgid)``: SIGKILL a process group that may be gone already;
- test services and scripts: ``SH_SERVICE`` (the task's tool is a shell
  script), ``SH_NO_OUTPUT_SERVICE``, ``SH_INPUTS_SERVICE`` (the HTTP tests'),
  ``PTY_PRINTRUN_CONF`` (printing to a pty), ``CACHE_OFF`` (test servers' result cache), ``write_printer`` (a named printer's conf), ``QUEUE_CONFIG`` (one slot), ``gated_script(gate)`` (a task that runs
  until a file exists), ``TOOL_WITH_GRANDCHILD``;
- a store's tasks: ``submit_script`` (a script as a task, through the command
  line), ``cli_info`` (``rrcloud info ID`` as a user reads it),
  ``records``/``read_record`` (records as written), ``tool_started``,
  ``start_order``, ``files_of``;
- a server's tasks over HTTP (an ``EmbeddedServer`` or a deployment):
  ``post_task``, ``submit``, ``wait_done``;
- processes: ``process_gone``, ``wait_gone``, ``dead_pid``, ``pid_from``,
  ``sandboxed_pid``, ``wait_for_tool``;
- ``one_line_error(result)``: the one line a failed command printed;
- a pipe whose step is forwarded to a listener: ``step_forwarded_to_a_listener``,
  ``tokens_sent`` (test_forward.py and test_pipeline.py);
- a simulated printer's lines (tests/printer_sim.py): ``file_lines`` (the
  numbered ones: the file's), ``after_line`` (the unnumbered ones after a
  line: pause, resume, cancel G-code), each from a mark on (a printer that
  prints several files);
- ``HeaderTrickle``: slow clients that never finish their request head, and
  ``raise_open_files(count)`` for the sockets they need (the slow-client test
  and bench/bench_slow_clients.py).

The fixtures (a store root, rrcloud in-process or as a process, embedded
servers) are in conftest.py.  bench/*.py put this folder on sys.path and
import from here too.
"""
import contextlib
import os
import pty
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / 'tests' / 'data'
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# How long a poll sleeps between looks.
POLL_INTERVAL = 0.05


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def plain_session():
    """A requests session that ignores proxy settings (the servers are on loopback)."""
    import requests
    session = requests.Session()
    session.trust_env = False
    return session


def wait_for(condition, what, timeout=60, interval=POLL_INTERVAL):
    """Poll ``condition()`` until it is true (returns its value); fail naming ``what`` after ``timeout``.

    ``condition`` is looked at once more after the deadline, so a slow machine
    never fails a condition that did come true.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f'{what}: not within {timeout} s')
        time.sleep(interval)


def wait_for_url(url, timeout=20, process=None, session=None):
    """Until ``url`` gives any HTTP answer; returns it.  Fails early when ``process`` exits."""
    import requests
    session = session or plain_session()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f'the server exited with {process.returncode} before {url} answered')
        try:
            return session.get(url, timeout=max(1, min(5, deadline - time.monotonic())))
        except requests.RequestException:
            time.sleep(POLL_INTERVAL)
    raise RuntimeError(f'{url} did not answer within {timeout} s')


def wait_port_free(port, timeout=10):
    """Until 127.0.0.1:``port`` can be bound (a stopped server has let go of it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(('127.0.0.1', port))
                return
            except OSError:
                time.sleep(POLL_INTERVAL)


def wait_until_done(store_root, task_id, timeout=60):
    """Poll a task's record until it leaves busy; returns the record."""
    from rrc.states import get_task
    from rrc.store import Store
    store = Store(store_root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = get_task(store, task_id)
        if record['status'] != 'busy':
            return record
        time.sleep(POLL_INTERVAL)
    raise AssertionError(f'task {task_id} still busy after {timeout} s')



def tidied(root, task_id):
    """Until a task has ended and its runner is gone too (it frees its slot
    and calls the notifier after the end: rm and clean refuse the task until then)."""
    from rrc.procs import process_is
    record = wait_until_done(root, task_id)
    if record.get('runner'):
        wait_for(lambda: not process_is(record['runner'], record.get('runnerStart')),
                 f'the runner of {task_id} to end')
    return record


def kill_group(pgid, sig=signal.SIGKILL):
    """Signal a process group; one that is gone (or not ours) is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


###############################################################################
# Test services and scripts
###############################################################################

# A service running a shell script: argv is ``sh tasks/in/X.sh tasks/out/ID``
# (the script is the input, the output path its last argument, $1), so a test
# controls exactly what "the tool" does.
SH_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n'
# The same without an output file: argv is ``sh tasks/in/X.sh``.
SH_NO_OUTPUT_SERVICE = SH_SERVICE + 'noOutput = yes\n'
# The HTTP tests' sh: the script is input 0; later inputs (as --data=FILE) and
# the output file are its arguments.
SH_INPUTS_SERVICE = """\
# sh: runs input 0 as a shell script; later inputs and the output file are its arguments
path = /usr/bin:/bin
cmd = sh
argInput = --data=$fileIn
output = $fileOut
inputExt = sh
"""
# The printrun service as an admin who has a printer on a pty would write it:
# the built-in sender, ports on /dev/pts/ (the shipped conf allows USB ports only).
PTY_PRINTRUN_CONF = """\
# printrun for the tests: the built-in sender, ports on /dev/pts/
cmd = rrcloud print
noOutput = yes
inputExt = gcode
nativeArgs = /dev/pts/, --timeout=
runsOnce = yes
"""


def write_printer(root, name, text):
    """Write a named printer's conf, ``ROOT/printers/NAME.conf``."""
    folder = Path(root) / 'printers'
    folder.mkdir(exist_ok=True)
    (folder / f'{name}.conf').write_text(text)


# The result cache off: the test servers (deploy.py's deployments, servers.py's
# EmbeddedServer) start with it, so a test that repeats a task sees its tool
# run again; a later line of a test's own config turns it on (test_cache.py).
CACHE_OFF = 'cacheSize = 0\n'
# One slot, tools unsandboxed (a gated task must see its gate): a queue forms at once.
QUEUE_CONFIG = 'maxTasks = 1\nsandbox = no\n'
# A tool that starts a grandchild, writes both pids, and waits for it.
TOOL_WITH_GRANDCHILD = (
    'echo $$ > tool.pid\n'
    'sleep 300 &\n'
    'echo $! > grandchild.pid\n'
    'wait\n'
)


def gated_script(gate, then='echo done > "$1"'):
    """A task's script that runs until ``gate`` exists, then ``then`` (by
    default it writes ``done``).  Its tool must see the gate: unsandboxed, or
    the gate's folder in the service's ``readPaths``."""
    return f'while [ ! -e {gate} ]; do sleep 0.05; done\n{then}\n'


###############################################################################
# A store's tasks
###############################################################################

def submit_script(cli, root, script, service='job', name='job.sh'):
    """Write ``script`` to ``ROOT/NAME`` and start it as a task of ``service``
    with the command line (``cli``: the conftest fixture); returns the id."""
    from conftest import task_id_of
    (Path(root) / name).write_text(script)
    result = cli(service, name)
    assert result.code == 0, result
    return task_id_of(result.out)


def cli_info(cli, task_id):
    """``rrcloud info ID`` parsed into a dict, as a user reads it."""
    result = cli('info', task_id)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0] == f'=== id: {task_id}', result.out
    return dict(line.split(': ', 1) for line in lines[1:] if line)


def one_line_error(result):
    """The single ``rrcloud: error: ...`` line a failed command printed."""
    assert result.err.endswith('\n') and result.err.count('\n') == 1, result
    assert result.err.startswith('rrcloud: error: '), result
    return result.err


def records(root):
    """All task records of a store, as written (not reconciled)."""
    from rrc.store import Store
    store = Store(root)
    return [store.read_task(task_id) for task_id in store.task_ids()]


def read_record(root, task_id):
    """``tasks/info/ID`` of a store as written, without reconciling."""
    from rrc.store import Store
    return Store(str(root)).read_task(task_id)


def tool_started(root, task_id):
    """The record of a running task once its runner started the tool (and wrote its log)."""
    return wait_for(lambda: read_record(root, task_id).get('pid') and read_record(root, task_id),
                    'the tool to start')


def wait_for_tool(root, task_id):
    """The tool's pid, once the runner has recorded it."""
    return int(tool_started(root, task_id)['pid'])


def start_order(root, task_ids, timeout=60):
    """The ids in the order their tasks started, once all of them ended complete."""
    done = {task_id: wait_until_done(root, task_id, timeout=timeout) for task_id in task_ids}
    assert all(r['status'] == 'complete' for r in done.values()), done
    return sorted(task_ids, key=lambda task_id: float(done[task_id]['stime']))


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
# A server's tasks over HTTP (servers.EmbeddedServer, or a deploy.Deployment)
###############################################################################

def _root_url(server):
    """``http://HOST:PORT/`` of a server (an EmbeddedServer's url ends in /, a deployment's not)."""
    return server.url.rstrip('/') + '/'


def _session_of(server, session=None):
    """The session to speak to ``server`` with: a deployment's own (in-process
    for ``wsgi``), else a new proxy-free one."""
    return session or getattr(server, 'session', None) or plain_session()


def post_task(server, service, content, filename='input.txt', session=None, timeout=30, **fields):
    """POST one task whose first input is ``content``, uploaded as ``filename``
    (multipart), with ``fields``; the requests response."""
    return _session_of(server, session).post(_root_url(server), data=dict(fields, service=service),
                                             files={'fileIn0': (filename, content)}, timeout=timeout)


def submit(server, service, content, filename='input.txt', **fields):
    """``post_task`` answered in JSON, which must be 200: the new task's id."""
    answer = post_task(server, service, content, filename, format='json', **fields)
    assert answer.status_code == 200, answer.text
    return answer.json()['id']


def wait_done(server, task_id, timeout=60):
    """Long-poll ``?service=info&id=ID&wait=S`` until the task leaves busy;
    its record (JSON).  Fails after ``timeout`` seconds."""
    session = _session_of(server)
    deadline = time.monotonic() + timeout
    while True:
        wait = min(20, max(1, int(deadline - time.monotonic())))
        answer = session.get(_root_url(server), timeout=wait + 10,
                             params={'service': 'info', 'id': task_id, 'wait': str(wait), 'format': 'json'})
        answer.raise_for_status()
        record = answer.json()
        if record['status'] != 'busy':
            return record
        if time.monotonic() >= deadline:
            raise AssertionError(f'task {task_id} still busy on {server.url} after {timeout} s: {record}')


###############################################################################
# Processes
###############################################################################

def process_gone(pid):
    """True when ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except (FileNotFoundError, ProcessLookupError):  # reaped between the two looks (a read then gives ESRCH)
        return True
    return stat[stat.rfind(')') + 2] in 'ZX'


def wait_gone(pid, what):
    """Until ``pid`` no longer runs; fail naming ``what``."""
    wait_for(lambda: process_gone(pid), f'{what} (pid {pid}) still running')


def dead_pid():
    """The pid of a process that has really run and ended (and been reaped)."""
    child = subprocess.Popen(['true'])
    child.wait()
    assert process_gone(child.pid)
    return child.pid


def pid_from(path):
    """The pid a script wrote into ``path``, once it is there."""
    def read():
        try:
            text = Path(path).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None
    return wait_for(read, f'{path} written')


def sandboxed_pid(root, task_id, first_words):
    """The host pid of a task's process whose command line starts with
    ``first_words``: a sandboxed tool sees only its own PID namespace, so it
    cannot write its host pid for us; the runner's record names the sandbox."""
    import psutil

    def find():
        pid = read_record(root, task_id).get('pid')
        try:
            children = psutil.Process(int(pid)).children(recursive=True) if pid else []
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                words = child.cmdline()
                if [os.path.basename(words[0])] + words[1:len(first_words)] == first_words:
                    return child.pid
            except psutil.Error:
                continue
        return None
    return wait_for(find, f'{" ".join(first_words)} of task {task_id} running')


###############################################################################
# A pipe whose second step a server forwards to a listener
###############################################################################

SERVERS_OWN_TOKEN = 'own-clients-token-0123456789'  # what the server's own clients must present
LISTENER_STEP_ID = '1700000000-12345-123456'  # the listener's id for the step it took


def next_server_of_a_pipe(request):
    """A FakeServer handler playing the next server of a pipe: it takes the
    step and keeps it busy until asked to kill it (nothing real can hold a
    step on cue and show every header it was sent)."""
    if request.query.get('service') == 'meta':
        return 200, 'text/plain', 'version: RepRapCloud 0.019 (fake)\nservices: echo\ninstance: listener\n'
    if request.method == 'POST':
        return 200, 'text/plain', f'id: {LISTENER_STEP_ID}\nstatus: busy\n'
    if request.query.get('service') == 'kill':
        return 200, 'text/plain', f'id: {LISTENER_STEP_ID}\nstatus: failed\nerror: killed\n'
    return 200, 'text/plain', f'id: {LISTENER_STEP_ID}\nstatus: busy\n'


def tokens_sent(request):
    """Every token a request carries, whichever way it is sent."""
    headers = {key.lower(): value for key, value in request.headers.items()}
    sent = [headers.get('x-rrcloud-token', '')]
    kind, _, value = headers.get('authorization', '').partition(' ')
    return [token for token in sent + [value if kind.lower() == 'bearer' else headers.get('authorization', '')]
            if token]


@contextlib.contextmanager
def step_forwarded_to_a_listener(embedded_server, host_token=''):
    """A server (from the ``embedded_server`` fixture) whose clients need
    ``SERVERS_OWN_TOKEN`` holds a two-step pipe and forwards step 2 to a
    listener (``next_server_of_a_pipe``), with ``HOST.token = host_token``
    for it when given; yields (the server, a session with the server's token,
    the listener, the job's id) once step 2 is followed there.  Both are
    stopped at the end."""
    from servers import FakeServer
    fake = FakeServer(next_server_of_a_pipe).start()
    server = embedded_server(f'token = {SERVERS_OWN_TOKEN}\nservers = {fake.address}\n' +
                             (f'127.0.0.1.token = {host_token}\n' if host_token else ''), start=False)
    session = plain_session()
    session.headers['Authorization'] = f'Bearer {SERVERS_OWN_TOKEN}'
    try:
        with server.start():
            answer = session.post(server.url, data={
                'service': 'pipe', 'format': 'json', 'step1': 'echo', 'step2': 'echo', 'step2.server': fake.address},
                files={'step1.fileIn0': ('a.txt', b'hello\n')}, timeout=30)
            assert answer.status_code == 200, answer.text
            wait_for(lambda: fake.of('GET', 'info'), 'the forwarder to follow step 2 there', timeout=30)
            yield server, session, fake, answer.json()['id']
    finally:
        fake.stop()


@contextlib.contextmanager
def rrcloud_on_a_terminal(cwd, *args, env=None, stdout_too=False, columns=None):
    """``rrcloud ARGS`` with its stderr on a pseudo-terminal (where a progress
    line is drawn; ``stdout_too``: its stdout as well, as ``watch`` draws
    there; ``columns``: the terminal's width, else the pty's own 0, which
    rrcloud takes for 80); yields (the process, the terminal's master side).
    At the end a process still running is killed with its group."""
    master, terminal = pty.openpty()
    try:
        if columns:
            import fcntl
            import struct
            import termios
            fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 24, columns, 0, 0))
        client = subprocess.Popen([sys.executable, str(REPO / 'rrcloud.py'), *args], cwd=cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=terminal if stdout_too else subprocess.DEVNULL,
                                  stderr=terminal,
                                  start_new_session=True)
    finally:
        os.close(terminal)
    try:
        yield client, master
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        os.close(master)


def read_terminal_until(master, pattern, client, timeout=60):
    """What a client wrote to its terminal, read until ``pattern`` shows up in it."""
    seen = b''
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not re.search(pattern, seen.decode('utf-8', 'replace')):
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                seen += os.read(master, 4096)
            except OSError:  # the client closed its terminal
                break
        elif client.poll() is not None:
            break
    return seen.decode('utf-8', 'replace')


def raise_open_files(count):
    """Let this process (and the servers it starts after) open ``count`` files,
    up to the hard limit; returns the limit now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = wanted
    return soft


class HeaderTrickle:
    """Slow clients (a "slowloris"): ``count`` connections from the loopback
    address ``source`` to 127.0.0.1:``port``, each sending a request line and
    then, at each ``trickle()``, one more header line, never ending its head.
    A connection the server closed (end of file or a reset) is dropped and
    counted in ``closed``; ``connect()`` opens again up to ``count``.
    A context manager: every socket is closed at the end."""

    REQUEST_LINE = b'GET /?service=meta HTTP/1.1\r\nHost: 127.0.0.1\r\n'

    def __init__(self, port, count, source='127.0.0.2'):
        self.port, self.count, self.source = port, count, source
        self.sockets = []  # open, in the order they were connected
        self.closed = 0
        self.lines = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def connect(self):
        """Open connections up to ``count``, each with its request line sent."""
        while len(self.sockets) < self.count:
            self.sockets.append(self._open_one())
        return self

    def _open_one(self):
        sock = socket.socket()
        try:
            sock.bind((self.source, 0))  # Linux routes all of 127/8 to lo
            sock.settimeout(10)
            sock.connect(('127.0.0.1', self.port))
            sock.setblocking(False)
            sock.send(self.REQUEST_LINE)
        except BlockingIOError:
            pass
        except ConnectionError:  # closed at once: sweep() counts it
            pass
        except BaseException:
            sock.close()
            raise
        return sock

    def trickle(self):
        """One more header line on every open connection; returns how many are open."""
        self.lines += 1
        for sock in self.sweep():
            try:
                sock.send(b'X-Trickle-%d: a slow client\r\n' % self.lines)
            except OSError:  # closed meanwhile: the next sweep counts it
                pass
        return len(self.sockets)

    def sweep(self):
        """Drop (and count) the connections the server has closed; the open ones."""
        still = []
        for sock in self.sockets:
            if is_closed_by_peer(sock):
                sock.close()
                self.closed += 1
            else:
                still.append(sock)
        self.sockets = still
        return still

    def close(self):
        """Close every connection still open."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []


def is_closed_by_peer(sock):
    """True when a non-blocking socket reads end of file or a reset."""
    try:
        return sock.recv(4096) == b''
    except BlockingIOError:
        return False
    except OSError:
        return True


# -- the documented notifier receiver ---------------------------------------------

RECEIVER = REPO / 'docs' / 'notifier_receiver.py'


def load_receiver():
    """docs/notifier_receiver.py as a module: the documented code, not a copy."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('notifier_receiver', RECEIVER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Receiver:
    """The documented receiver on 127.0.0.1, remembering each request and each accepted call."""

    def __init__(self, secret):
        self.requests, self.calls = [], []
        self.hold_started = None  # an Event: a started call waits for it before it is answered
        receiver = self
        example = load_receiver()

        class Handler(example.NotifierReceiver):
            def do_GET(self):
                receiver.requests.append((self.command, self.path, dict(self.headers)))
                if receiver.hold_started and self.headers.get('X-RRCloud-Event') == 'started':
                    receiver.hold_started.wait(60)
                super().do_GET()

            def received(self, task_id, event):
                receiver.calls.append((task_id, event))

            def log_message(self, *args):
                pass

        self.server = example.ReceiverServer(('127.0.0.1', 0), Handler, secret)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f'http://127.0.0.1:{self.port}/done?id=$id'
        import threading
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={'poll_interval': 0.05},
                                       daemon=True)
        self.thread.start()

    def get(self, target, headers):
        """One GET sent to the receiver as a client would; its status."""
        import http.client
        connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=10)
        try:
            connection.request('GET', target, headers=headers)
            return connection.getresponse().status
        finally:
            connection.close()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


###############################################################################
# A simulated printer's lines (tests/printer_sim.py)

def file_lines(sim, since=0):
    """The numbered lines the printer accepted (the file's, without probes and
    pokes), from its ``since``-th accepted command on."""
    return [code for number, code in sim.received_numbered[since:] if number is not None]


def after_line(sim, line, since=0):
    """The unnumbered commands the printer accepted after numbered line ``line``
    (the first such line from ``since`` on), up to the next numbered one."""
    received = sim.received_numbered[since:]
    start = next(i for i, (number, _) in enumerate(received) if number == line)
    found = []
    for number, code in received[start + 1:]:
        if number is not None:
            break
        found.append(code)
    return found


def stl_solid(path):
    """(volume, (min x, y, z), (max x, y, z)) of an STL file (ASCII or binary),
    read here: the signed volume of its triangles' tetrahedra from the origin."""
    import struct
    data = Path(path).read_bytes()
    if data[:5] == b'solid' and b'facet' in data[:400]:
        points = [tuple(map(float, line.split()[1:4])) for line in data.decode().splitlines()
                  if line.strip().startswith('vertex')]
    else:
        (count,) = struct.unpack('<I', data[80:84])
        points = [tuple(struct.unpack('<12f', data[84 + 50 * i:132 + 50 * i])[3 + 3 * k:6 + 3 * k])
                  for i in range(count) for k in range(3)]
    volume = 0.0
    for a, b, c in zip(points[0::3], points[1::3], points[2::3]):
        volume += (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                   + a[2] * (b[0] * c[1] - b[1] * c[0])) / 6
    low = tuple(min(p[i] for p in points) for i in range(3))
    high = tuple(max(p[i] for p in points) for i in range(3))
    return volume, low, high


def same_solid(first, second, tolerance=1e-4):
    """True when two (volume, low, high) agree: volume within ``tolerance``
    relative, each corner of the box within 1e-3 mm."""
    (v1, low1, high1), (v2, low2, high2) = first, second
    corners = all(abs(x - y) < 1e-3 for x, y in zip(low1 + high1, low2 + high2))
    return corners and abs(v1 - v2) <= tolerance * max(abs(v1), abs(v2))


@contextlib.contextmanager
def gates_folder():
    """A folder under /tmp that a task's user (www-data too) can read: a test
    holds a task at a gate there and opens it (``(folder / NAME).touch()``)
    when it has seen what it waits for, instead of racing a sleep.  The
    task's service needs ``readPaths = FOLDER`` (its sandbox shows it)."""
    import shutil
    import tempfile
    from pathlib import Path
    folder = Path(tempfile.mkdtemp(prefix='rrcloud-gates-', dir='/tmp'))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
