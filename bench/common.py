"""Shared pieces of the benchmarks: embedded servers on loopback, timing, tables.

Ports, servers and waits come from the test suite's helpers (tests/helpers.py,
tests/servers.py, tests/deploy.py): importing this module puts tests/ on sys.path.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / '.venv' / 'bin'
for _folder in (REPO / 'tests', REPO):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from helpers import DATA, free_port, wait_for_url  # noqa: E402,F401 (re-exported for the benchmarks)
from servers import EmbeddedServer as _EmbeddedServer  # noqa: E402


class EmbeddedServer(_EmbeddedServer):
    """``rrcloud serve`` on a free loopback port with its own store (a fresh folder) and rrcloudrc,
    started at once; a context manager that stops it."""

    def __init__(self, config='', services=None):
        super().__init__(tempfile.mkdtemp(prefix='rrcloud-bench-'), config=config, services=services)
        self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class CheckoutServer:
    """``rrcloud.py serve`` of one checkout (this one, or a baseline's) on a
    free loopback port, its own store and an empty rrcloudrc (the defaults)."""

    def __init__(self, checkout):
        self.root = Path(tempfile.mkdtemp(prefix='rrcloud-bench-checkout-'))
        (self.root / 'rrcloudrc').write_text('')
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}/'
        env = dict(os.environ, RRCLOUD_CONFIG=str(self.root / 'rrcloudrc'))
        self.process = subprocess.Popen(
            [sys.executable, str(Path(checkout) / 'rrcloud.py'), 'serve', '--bind', '127.0.0.1',
             '--port', str(self.port)], cwd=self.root, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_url(f'{self.url}?service=meta', 20, process=self.process)

    def stop(self):
        """Kill the server's process group."""
        os.killpg(self.process.pid, 9)
        self.process.wait()


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
