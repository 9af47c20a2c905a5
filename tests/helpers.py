"""Test helpers shared by the suite and bench/: ports, sessions, waiting.

One place for what several test files (and the benchmarks) need:

- ``free_port()``: a loopback port nothing listens on;
- ``plain_session()``: a requests session that ignores proxy settings;
- ``wait_for(condition, what)``: poll until something holds, fail naming it;
- ``wait_for_url(url)``: until an HTTP server answers (any status);
- ``wait_port_free(port)``: until a port can be bound again;
- ``wait_until_done(store_root, task_id)``: until a task leaves busy (read from the store);
- ``kill_group(pgid)``: SIGKILL a process group that may be gone already;
- ``HeaderTrickle``: slow clients that never finish their request head, and
  ``raise_open_files(count)`` for the sockets they need (the slow-client test
  and bench/bench_slow_clients.py).

bench/*.py put this folder on sys.path and import from here too.
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


def kill_group(pgid, sig=signal.SIGKILL):
    """Signal a process group; one that is gone (or not ours) is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def rrcloud_on_a_terminal(cwd, *args, env=None):
    """``rrcloud ARGS`` with its stderr on a pseudo-terminal (where a progress
    line is drawn); yields (the process, the terminal's master side).  At
    the end a process still running is killed with its group."""
    master, terminal = pty.openpty()
    try:
        client = subprocess.Popen([sys.executable, str(REPO / 'rrcloud.py'), *args], cwd=cwd, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal,
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
