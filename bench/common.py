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
from deploy import WEB_PYTHON, chown_tree, www_data  # noqa: E402


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


# A bare CGI of each language under lighttpd: the floor under any CGI's time.
FLOORS = {'python': (WEB_PYTHON, 'print("Content-Type: text/plain\\r\\n\\r\\nok", end="")\n'),
          'perl': ('/usr/bin/perl', 'print "Content-Type: text/plain\\r\\n\\r\\nok";\n')}


def start_cgi_lighttpd(folder, document_root, interpreter, extra=''):
    """lighttpd on a free loopback port, as www-data, running ``.cgi`` files of
    ``document_root`` with ``interpreter`` (its conf and error log in ``folder``;
    ``extra``: more conf lines): (its process, its port)."""
    port = free_port()
    conf = Path(folder) / 'lighttpd.conf'
    conf.write_text('server.modules += ( "mod_cgi" )\n'
                    f'server.document-root = "{document_root}"\n'
                    f'server.port = {port}\nserver.bind = "127.0.0.1"\n'
                    'server.username = "www-data"\nserver.groupname = "www-data"\n'
                    f'server.errorlog = "{folder}/error.log"\n'
                    f'cgi.assign = ( ".cgi" => "{interpreter}" )\n{extra}')
    return subprocess.Popen(['lighttpd', '-D', '-f', str(conf)], start_new_session=True), port


class FloorServer:
    """lighttpd serving one bare CGI of ``language`` on a free port."""

    def __init__(self, language):
        import requests
        interpreter, script = FLOORS[language]
        self.folder = Path(tempfile.mkdtemp(prefix=f'rrcloud-bench-floor-{language}-'))
        os.chmod(self.folder, 0o755)
        (self.folder / 'floor.cgi').write_text(script)
        uid, gid = www_data()
        chown_tree(self.folder, uid, gid)  # lighttpd, as www-data, writes its error log here
        self.process, self.port = start_cgi_lighttpd(self.folder, self.folder, interpreter)
        self.url = f'http://127.0.0.1:{self.port}/floor.cgi'
        for _ in range(100):
            try:
                if requests.get(self.url, timeout=2).text == 'ok':
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f'the {language} floor did not start')

    def stop(self):
        self.process.terminate()
        self.process.wait()


def fill_store(root, count):
    """``count`` finished echo tasks written straight into the store at ``root``; their ids."""
    from rrc.store import Store
    store = Store(str(root))
    now = time.time()
    for _ in range(count):
        store.create_task(lambda task_id: {
            'service': 'echo', 'status': 'complete', 'ctime': f'{now:.5f}', 'etime': f'{now:.5f}',
            'cmd': f'cp tasks/in/x.txt tasks/out/{task_id}', 'in': 'tasks/in/x.txt',
            'out': f'tasks/out/{task_id}', 'client': '127.0.0.1', 'server': 'bench',
            'sizeIn': '5', 'sizeOut': '5', 'exitCode': '0'})
    return store.task_ids()
