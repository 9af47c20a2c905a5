"""Servers for the remote-relay tests: embedded rrcloud servers and fake ones.

``EmbeddedServer`` is a real ``rrcloud.py serve`` process on a free loopback
port, with its own store folder and rrcloudrc (passed in RRCLOUD_CONFIG),
run as this user (root here).  Its tasks run detached in their own
sessions, so ``stop()`` kills the server's process group and then the
groups of every runner and tool named in the store's records.  Tests start
one with the ``embedded_server`` fixture (tests/conftest.py), which stops
every server it started when the test (or, for a shared one, the module)
ends; bench/common.py builds on the class too.  The same server as a
deployment installs it (www-data, an app copy under /tmp) is
``deploy.Deployment('embedded')``: for the live contract matrix and where a
test must not run as root.

``FakeServer`` is an ``http.server`` in a thread on 127.0.0.1: a test gives
it a handler and it records every request.  It stands in for servers no
real part can play here: one answering garbage, a hostile one, a 0.019
server that only answers text and ignores ``wait=``.
"""
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from helpers import (CACHE_OFF, free_port, kill_group as _kill_group, plain_session, wait_done,  # noqa: F401 (free_port: for tests)
    wait_for_url)

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20


class EmbeddedServer:
    """``rrcloud.py serve --bind 127.0.0.1 --port P`` in its own store folder."""

    def __init__(self, root, config='maxTasks = 1\n', services=None, config_name='rrcloudrc'):
        """``config_name``: its rrcloudrc's name in the store folder (servers
        sharing one store, as a farm's front-ends do, each have their own)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = self.root / config_name
        self.config.write_text(CACHE_OFF + config)  # a test's own cacheSize line wins
        for name, text in (services or {}).items():
            (self.root / 'services').mkdir(exist_ok=True)
            (self.root / 'services' / f'{name}.conf').write_text(text)
        self.port = free_port()
        self.address = f'127.0.0.1:{self.port}'
        self.url = f'http://{self.address}/'
        self.process = None
        self.log = self.root / 'server.log'
        # Started and not stopped since (a server killed alone still has its tasks to stop).
        self.running = False

    def start(self):
        """Start the server and wait until it answers."""
        env = dict(os.environ, RRCLOUD_CONFIG=str(self.config))
        env.pop('GATEWAY_INTERFACE', None)
        with open(self.log, 'ab') as log:
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / 'rrcloud.py'), 'serve', '--bind', '127.0.0.1',
                 '--port', str(self.port)],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        self.running = True
        try:  # any answer will do: a server with a token answers 401
            wait_for_url(f'{self.url}?service=meta', START_TIMEOUT, process=self.process)
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f'server on port {self.port}: {exc}: {self.log.read_text()}') from None
        return self

    def __enter__(self):  # ``with server.start():`` stops it at the end
        return self

    def __exit__(self, *exc):
        self.stop()

    def records(self):
        """Every task record of this server's store, as written (key: value lines)."""
        folder = self.root / 'tasks' / 'info'
        found = {}
        for path in sorted(folder.glob('[0-9]*')) if folder.is_dir() else []:
            record = {}
            for line in path.read_text().splitlines():
                key, sep, value = line.partition(': ')
                if sep:
                    record[key] = value
            found[path.name] = record
        return found

    def info(self, task_id, wait=0):
        """``GET ?service=info&id=ID[&wait=S]`` as a dict (the server's own answer)."""
        params = {'service': 'info', 'id': task_id, 'format': 'json'}
        if wait:
            params['wait'] = str(wait)
        answer = plain_session().get(self.url, params=params, timeout=wait + 10)
        answer.raise_for_status()
        return answer.json()

    def list_tasks(self):
        """``GET ?service=info``: every task (the server expires old ones as it lists)."""
        answer = plain_session().get(self.url, params={'service': 'info', 'format': 'json'}, timeout=10)
        answer.raise_for_status()
        return answer.json()

    def wait_done(self, task_id, timeout=60):
        """Long-poll the server until the task leaves busy; returns its record."""
        return wait_done(self, task_id, timeout)

    def meta(self):
        """``GET ?service=meta`` as a dict."""
        answer = plain_session().get(self.url, params={'service': 'meta', 'format': 'json'}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def kill_server(self):
        """Kill only the server process: its tasks run on, detached, as after a crash."""
        if self.process and self.process.poll() is None:
            _kill_group(self.process.pid)
            self.process.wait(timeout=10)

    def restart(self, pause=1.0):
        """Kill the server process and start it again on the same port, store and config."""
        self.kill_server()
        time.sleep(pause)  # clients find nothing listening meanwhile
        return self.start()

    def stop(self):
        """Kill the server's group, then every task group it started."""
        if self.process and self.process.poll() is None:
            _kill_group(self.process.pid)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for record in self.records().values():
            for key in ('runner', 'pid'):
                if record.get(key, '').isdigit():
                    _kill_group(int(record[key]))
        self.running = False


class Request:
    """One request a fake server received."""

    def __init__(self, method, path, query, body, headers, connection=None):
        self.method, self.path, self.query, self.body, self.headers = method, path, query, body, headers
        self.connection = connection  # the client's (address, port): one per connection

    def __repr__(self):
        return f'Request({self.method} {self.path} {self.query})'


class FakeServer:
    """An http.server on 127.0.0.1 answering with ``handler(request) -> (status, content_type, body)``;
    ``protocol='HTTP/1.1'`` keeps connections alive, as rrcloud's servers do."""

    def __init__(self, handler, protocol='HTTP/1.0'):
        self.handler = handler
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol

            def log_message(self, *args):
                pass

            def _answer(self):
                parts = urlsplit(self.path)
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else b''
                query = dict(parse_qsl(parts.query, keep_blank_values=True))
                request = Request(self.command, parts.path, query, body, dict(self.headers), self.client_address)
                fake.requests.append(request)
                status, content_type, data = fake.handler(request)
                data = data.encode() if isinstance(data, str) else data
                self.send_response(status)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _answer

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.address = f'127.0.0.1:{self.port}'
        self.url = f'http://{self.address}/'
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                       daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def of(self, method=None, service=None):
        """Requests received, filtered by method and by the ``service`` query field."""
        return [r for r in self.requests
                if (method is None or r.method == method)
                and (service is None or r.query.get('service') == service)]
