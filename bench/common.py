"""Shared pieces of the benchmarks: embedded servers on loopback, timing, tables."""
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / 'tests' / 'data'
VENV_BIN = REPO / '.venv' / 'bin'
sys.path.insert(0, str(REPO))


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def wait_for(url, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return answer.read()
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f'{url} did not answer')


class EmbeddedServer:
    """``rrcloud serve`` on a free loopback port with its own store and rrcloudrc."""

    def __init__(self, config='', services=None):
        self.root = Path(tempfile.mkdtemp(prefix='rrcloud-bench-'))
        (self.root / 'rrcloudrc').write_text(config)
        for name, text in (services or {}).items():
            (self.root / 'services').mkdir(exist_ok=True)
            (self.root / 'services' / f'{name}.conf').write_text(text)
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}/'
        env = dict(os.environ, RRCLOUD_CONFIG=str(self.root / 'rrcloudrc'))
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / 'rrcloud.py'), 'serve', '--bind', '127.0.0.1', '--port', str(self.port)],
            cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        wait_for(self.url + '?service=meta')

    def stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def median_seconds(function, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def table(rows, header):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)
