"""A real farm on this machine, for the farm tests (loopback only).

- ``RedisServer``: ``redis-server`` on a free loopback port, with a password,
  nothing saved; ``stop()`` loses its data, as a crash without persistence does.
- ``front_end(...)``: ``rrcloud serve`` with ``backend = rq``; two of them
  share one store folder (each with its own rrcloudrc and node name).
- ``HAProxy``: ``haproxy`` in the foreground with the project's own
  ``haproxy/haproxy.cfg``, its listening port and back-ends put in.
- ``Worker``: ``rrcloud worker --server=URL`` as www-data (as a farm's
  workers run), in an empty folder of its own under /tmp with its rrcloudrc,
  service confs and the confs of the named printers it serves (``--printer``):
  it cannot read the front-ends' store (a root-only folder) and has nothing
  but Redis and HTTP.

Every process is started in its own process group and stopped (with its
group) by the one who started it.
"""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from deploy import WEB_PATH, WEB_PYTHON
from helpers import REPO, free_port, kill_group, plain_session, wait_for, wait_port_free
from servers import EmbeddedServer

WORKER_TOKEN = 'farm-worker-token-5b1f0e9a7c3d'
REDIS_PASSWORD = 'farm-redis-password-0c4e'
NOTIFIER_SECRET = 'farm-notifier-secret-77aa21'


class RedisServer:
    """A throw-away ``redis-server`` on 127.0.0.1 (it keeps its port across restarts)."""

    def __init__(self):
        self.port = free_port()
        self.url = f'redis://:{REDIS_PASSWORD}@127.0.0.1:{self.port}/0'
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ['redis-server', '--port', str(self.port), '--bind', '127.0.0.1', '--save', '',
             '--appendonly', 'no', '--requirepass', REDIS_PASSWORD, '--protected-mode', 'yes'],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        wait_for(self.answers, 'redis-server to answer', timeout=20)
        return self

    def answers(self):
        import redis
        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
        except redis.RedisError:
            return False

    def worker_names(self):
        """The names of the workers RQ knows here."""
        import redis
        from rq import Worker as RQWorker
        return [worker.name for worker in RQWorker.all(connection=redis.Redis.from_url(self.url))]

    def stop(self):
        """Gone, and its data with it."""
        if self.process is not None:
            kill_group(self.process.pid)
            self.process.wait()
            self.process = None
            wait_port_free(self.port)


def front_end_config(redis, name, extra=''):
    """The rrcloudrc of a farm's front-end: the farm's front-ends are one node
    (any of them moves, kills or pushes again what waits), each with its own serverName."""
    return (f'backend = rq\nredis = {redis.url}\nworkerToken = {WORKER_TOKEN}\nnodeName = farm\n'
            f'serverName = {name}\ntrustedProxies = 127.0.0.1/32\nnotifierAllow = 127.0.0.0/8\n'
            f'notifierSecret = {NOTIFIER_SECRET}\n{extra}')


def front_end(store, redis, name, services=None, extra=''):
    """``rrcloud serve`` of a farm (not started) over the store folder ``store``."""
    return EmbeddedServer(store, front_end_config(redis, name, extra), services, config_name=f'rrcloudrc-{name}')


class HAProxy:
    """``haproxy -db`` with the project's haproxy/haproxy.cfg in front of ``servers``."""

    def __init__(self, folder, servers):
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}/'
        self.address = f'127.0.0.1:{self.port}'
        self.config = Path(folder) / 'haproxy.cfg'
        self.config.write_text(haproxy_config(self.port, servers))
        self.process = None

    def start(self):
        self.process = subprocess.Popen(['haproxy', '-db', '-f', str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        wait_for(lambda: self.meta_answers(), 'haproxy to pass requests on', timeout=20)
        return self

    def meta_answers(self):
        try:
            return plain_session().get(self.url, params={'service': 'meta'}, timeout=2).status_code == 200
        except OSError:
            return False

    def stop(self):
        if self.process is not None:
            kill_group(self.process.pid, signal.SIGTERM)
            self.process.wait()
            self.process = None


def haproxy_config(port, servers):
    """haproxy/haproxy.cfg with this listening port and these back-ends (loopback)."""
    lines = []
    for line in (REPO / 'haproxy' / 'haproxy.cfg').read_text().splitlines():
        words = line.split()
        if words[:1] == ['bind']:
            line = f'    bind 127.0.0.1:{port}'
        elif words[:1] == ['server']:
            if servers:
                server = servers.pop(0)
                line = f'    server {words[1]} {server.address} check inter 500ms fall 2 rise 1'
            else:
                continue
        lines.append(line)
    assert not servers, 'haproxy/haproxy.cfg names fewer back-ends than the test runs'
    return '\n'.join(lines) + '\n'


def www_data():
    entry = pwd.getpwnam('www-data')
    return entry.pw_uid, entry.pw_gid


class Worker:
    """``rrcloud worker`` as www-data in an empty folder of its own."""

    def __init__(self, redis, server_url, services=None, confs=None, extra='', printers=None):
        self.folder = Path(tempfile.mkdtemp(prefix='rrcloud-worker-', dir='/tmp'))
        self.folder.chmod(0o755)
        (self.folder / 'rrcloudrc').write_text(f'backend = rq\nredis = {redis.url}\nworkerToken = {WORKER_TOKEN}\n'
                                               f'{extra}')
        (self.folder / 'services').mkdir()
        for name, text in (confs or {}).items():
            (self.folder / 'services' / f'{name}.conf').write_text(text)
        # The named printers it serves (--printer): NAME -> its printers/NAME.conf (None: no conf).
        self.printers = dict(printers or {})
        if self.printers:
            (self.folder / 'printers').mkdir()
        for name, text in self.printers.items():
            if text is not None:
                (self.folder / 'printers' / f'{name}.conf').write_text(text)
        uid, gid = www_data()
        for path in [self.folder] + list(self.folder.rglob('*')):
            os.chown(path, uid, gid)
        self.redis, self.server_url, self.services = redis, server_url, services
        self.log = self.folder / 'worker.log'
        self.process = None

    def command(self):
        argv = [WEB_PYTHON, str(REPO / 'rrcloud.py'), 'worker', f'--server={self.server_url}']
        return (argv + ([f'--services={",".join(self.services)}'] if self.services else [])
                + [f'--printer={name}' for name in self.printers])

    def start(self, wait=True):
        env = {'PATH': WEB_PATH, 'LANG': 'C.UTF-8', 'HOME': str(self.folder),
               'RRCLOUD_CONFIG': str(self.folder / 'rrcloudrc')}
        with open(self.log, 'ab') as log:
            self.process = subprocess.Popen(self.command(), cwd=self.folder, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, user='www-data', group='www-data',
                                            start_new_session=True)
        if wait:  # until RQ lists it (it says its name a moment before)
            wait_for(lambda: self.name() in self.redis.worker_names() or self.process.poll() is not None,
                     'the worker to start', timeout=30)
            assert self.process.poll() is None, self.log.read_text()
        return self

    def refused(self):
        """Start a worker that must refuse to: (its exit code, its log); stopped either way."""
        try:
            self.start(wait=False)
            code = self.process.wait(timeout=60)
            return code, self.log.read_text()
        finally:
            self.stop()

    def name(self):
        """The worker's name, from the line it prints as it starts (None before)."""
        for line in self.log.read_text(errors='replace').splitlines():
            if line.startswith('rrcloud: worker ') and ' for ' in line:
                return line.split()[2]
        return None

    def kill(self):
        """``kill -9`` of the worker alone (its job's child dies with it)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self):
        """Stop it and everything it started; remove its folder."""
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(self.process.pid)
                self.process.wait()
        kill_group(self.process.pid) if self.process else None
        shutil.rmtree(self.folder, ignore_errors=True)

