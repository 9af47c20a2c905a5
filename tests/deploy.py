"""Live rrcloud deployments for the HTTP tests: the embedded server, lighttpd and Apache.

Each deployment is a throw-away folder under /tmp (the web servers run as
www-data, which cannot read /root):

    DEPLOY/app/        copies of rrcloud.py, bin/ (links kept), services/, www/,
                       lighttpd/, apache/ -- what a real installation holds
    DEPLOY/store/      the store root (owned by www-data), with test services
                       in store/services/ and the rrcloudrc in store/rrcloudrc
    DEPLOY/log/        the web server's pid file, error log and sockets
    DEPLOY/server.conf the top config that includes the repo's own config

The server listens on a free loopback port; ``stop()`` and ``start()`` can be
called again (a restart keeps the port, the store and the running tasks).

Tests speak HTTP through ``deployment.session`` (a requests session) and
``deployment.request_raw()`` (a request target exactly as written), so the
same test runs against ``deployment('wsgi')`` too: the application called
in-process over a store laid out the same way (inprocess.py).  ``with
running(deployment('wsgi', config=...)) as server:`` starts one and stops
and removes it at the end, also when it failed to start.

The ``embedded`` kind is ``rrcloud serve`` as installed: as www-data, from
the app copy.  It is for the live contract matrix (``KINDS``: the same test
on the embedded server, lighttpd and Apache) and for a test that must not
run as root (the kernel lets root past RLIMIT_NPROC and file permissions).
Any other test starts ``rrcloud serve`` with the ``embedded_server`` fixture
(conftest.py, servers.EmbeddedServer): in its own store, as this user.
"""
import contextlib
import http.client
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from helpers import CACHE_OFF, free_port, plain_session, wait_port_free

REPO = Path(__file__).resolve().parent.parent
WEB_PYTHON = '/opt/rrcloud/venv/bin/python'
WEB_PATH = '/usr/local/bin:/usr/bin:/bin'
# The live deployments: a real server in front of rrcloud.
KINDS = ('embedded', 'lighttpd', 'apache')
# Plus ``wsgi``: the application called in-process (inprocess.py), no server.
ALL_KINDS = ('wsgi',) + KINDS
APP_PARTS = ('rrcloud.py', 'rrc', 'bin', 'services', 'www', 'lighttpd', 'apache')
# A line in the rrcloudrc that must never show up in an answer.
CONFIG_MARKER = 'rrcloud-test-config-marker-5b1f0e'


def copy_vendor_files(www, to):
    """The page's libraries from www/node_modules, and nothing else of it
    (34 MB, thousands of files): the five files rrc/web/assets.VENDOR serves."""
    from rrc.web.assets import VENDOR
    for _, below in VENDOR:
        source = www / 'node_modules' / below
        if source.exists():
            (to / 'node_modules' / below).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / 'node_modules' / below)


def find_program(name):
    """Absolute path of a web server's program (they live in /usr/sbin)."""
    path = shutil.which(name, path='/usr/local/sbin:/usr/sbin:/sbin:' + os.environ.get('PATH', ''))
    if path is None:
        raise RuntimeError(f'{name} is not installed (make test installs it)')
    return path


def www_data():
    """(uid, gid) of the web servers' user."""
    entry = pwd.getpwnam('www-data')
    return entry.pw_uid, entry.pw_gid


def chown_tree(path, uid, gid):
    """chown a folder and everything in it."""
    os.chown(path, uid, gid)
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, gid, follow_symlinks=False)


def lay_out_store(deployment, config, services):
    """A deployment's store folder (its test services in store/services), log
    folder and rrcloudrc (with the marker line no answer may show)."""
    deployment.store.mkdir(mode=0o755)
    deployment.log.mkdir(mode=0o755)
    (deployment.store / 'services').mkdir(mode=0o755)
    for name, text in services.items():
        (deployment.store / 'services' / f'{name}.conf').write_text(text)
    deployment.rrcloudrc.write_text(f'# {CONFIG_MARKER}\ndir = {deployment.store}\n{CACHE_OFF}{config}')


class Deployment:
    """One rrcloud server of one ``kind`` with its own app copy and store."""

    def __init__(self, kind, config='', services=None):
        if kind not in ALL_KINDS:
            raise ValueError(f'unknown deployment kind {kind!r}')
        self.kind = kind
        self.root = Path(tempfile.mkdtemp(prefix=f'rrcloud-{kind}-', dir='/tmp'))
        os.chmod(self.root, 0o755)
        self.app = self.root / 'app'
        self.store = self.root / 'store'
        self.log = self.root / 'log'
        self.rrcloudrc = self.store / 'rrcloudrc'
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.process = None
        self.session = plain_session()
        self._build(config, services or {})

    # -- the folder ---------------------------------------------------------

    def _build(self, config, services):
        self.app.mkdir(mode=0o755)
        for part in APP_PARTS:
            source = REPO / part
            if source.is_dir():
                shutil.copytree(source, self.app / part, symlinks=True,
                                ignore=shutil.ignore_patterns('node_modules', '__pycache__'))
            else:
                shutil.copy2(source, self.app / part)
        copy_vendor_files(REPO / 'www', self.app / 'www')
        lay_out_store(self, config, services)
        uid, gid = www_data()
        chown_tree(self.store, uid, gid)
        chown_tree(self.log, uid, gid)
        self.conf = self.root / 'server.conf'
        self.conf.write_text(getattr(self, f'_{self.kind}_conf')())

    def _lighttpd_conf(self):
        return (f'var.rrcloud_app    = "{self.app}"\n'
                f'var.rrcloud_python = "{WEB_PYTHON}"\n'
                f'var.rrcloud_config = "{self.rrcloudrc}"\n'
                f'var.rrcloud_path   = "{WEB_PATH}"\n'
                f'server.port        = {self.port}\n'
                f'server.bind        = "127.0.0.1"\n'
                f'server.username    = "www-data"\n'
                f'server.groupname   = "www-data"\n'
                f'server.pid-file    = "{self.log}/lighttpd.pid"\n'
                f'server.errorlog    = "{self.log}/error.log"\n'
                f'server.breakagelog = "{self.log}/cgi-error.log"\n'
                f'include "{self.app}/lighttpd/rrcloud.conf"\n')

    def _apache_conf(self):
        # Like apache/httpd.conf, with this deployment's port and folders;
        # Listen comes from the included rrcloud.conf.
        original = (REPO / 'apache' / 'httpd.conf').read_text()
        replaced = {
            'Define RRCLOUD_PORT': f'Define RRCLOUD_PORT {self.port}',
            'Define RRCLOUD_APP': f'Define RRCLOUD_APP {self.app}',
            'Define RRCLOUD_PYTHON_BIN': f'Define RRCLOUD_PYTHON_BIN {os.path.dirname(WEB_PYTHON)}',
            'Define RRCLOUD_CONFIG': f'Define RRCLOUD_CONFIG {self.rrcloudrc}',
            'PidFile': f'PidFile {self.log}/apache.pid',
            'ScriptSock': f'ScriptSock {self.log}/cgid.sock',
            'ErrorLog': f'ErrorLog {self.log}/error.log',
            'Include': 'Include ${RRCLOUD_APP}/apache/rrcloud.conf',
        }
        lines = []
        for line in original.splitlines():
            for start, replacement in replaced.items():
                if line.split(' ', 1)[0] == start.split(' ')[0] and line.startswith(start + ' '):
                    line = replacement
                    break
            lines.append(line)
        text = '\n'.join(lines) + '\n'
        for must in replaced.values():
            assert must in text, f'apache/httpd.conf changed: no line for {must!r}'
        return f'DefaultRuntimeDir {self.log}\nMutex file:{self.log} default\n' + text

    def _embedded_conf(self):
        return ''

    # -- the server ---------------------------------------------------------

    def command(self):
        if self.kind == 'lighttpd':
            return [find_program('lighttpd'), '-D', '-f', str(self.conf)], {}
        if self.kind == 'apache':
            return [find_program('apache2'), '-f', str(self.conf), '-DFOREGROUND'], {}
        # The embedded server runs as www-data too, like the CGI deployments.
        return ([WEB_PYTHON, str(self.app / 'rrcloud.py'), 'serve', '--bind', '127.0.0.1',
                 '--port', str(self.port)],
                {'user': 'www-data', 'group': 'www-data', 'cwd': str(self.store)})

    def start(self, timeout=20):
        """Start the server and wait until ``GET /?service=meta`` answers."""
        argv, extra = self.command()
        env = {'PATH': WEB_PATH, 'LANG': 'C.UTF-8', 'HOME': str(self.store),
               'RRCLOUD_CONFIG': str(self.rrcloudrc)}
        self.output = open(self.log / f'{self.kind}.out', 'ab')
        self.process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self.output, stderr=subprocess.STDOUT,
                                        start_new_session=True, **extra)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                answer = requests.get(f'{self.url}/?service=meta', timeout=5)
                if self.is_ready(answer):
                    return self
            except requests.RequestException:  # refused, or a first CGI answer slower than 5 s: again
                pass
            time.sleep(0.05)
        log = self.server_log()
        self.stop()
        raise RuntimeError(f'{self.kind} did not start on port {self.port}:\n{log}')

    def is_ready(self, answer):
        """The readiness probe's answer says the server is up."""
        return answer.status_code == 200

    def stop(self):
        """Stop the server (its whole process group); running tasks are left alone."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        # Leftovers of the group (cgid children) go too.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        self.output.close()
        self._wait_port_free()

    def _wait_port_free(self, timeout=10):
        wait_port_free(self.port, timeout)

    def restart(self):
        self.stop()
        return self.start()

    def request_raw(self, method, target, body=None, headers=None, timeout=60):
        """One request with ``target`` exactly as written (no normalising of '..' or
        escapes); (status, [(header, value)] as sent, body bytes)."""
        connection = http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)
        try:
            connection.request(method, target, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def server_log(self):
        """The server's own output and error log (for failure messages)."""
        text = ''
        for name in (f'{self.kind}.out', 'error.log'):
            path = self.log / name
            if path.exists():
                text += f'--- {name}\n' + path.read_text(errors='replace')[-4000:]
        return text

    # -- tasks ----------------------------------------------------------------

    def task_processes(self):
        """Pids of processes working in the store (runners and tools run there)."""
        pids = []
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink(f'/proc/{entry}/cwd')
            except OSError:
                continue
            if cwd == str(self.store) or cwd.startswith(str(self.store) + '/'):
                pids.append(int(entry))
        return pids

    def task_groups(self):
        """Process groups of runners and tools working in the store (not the server's, not ours)."""
        if self.process is not None:
            server_group = os.getpgid(self.process.pid) if self.process.poll() is None else None
        else:
            server_group = None
        groups = set()
        for pid in self.task_processes():
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if group not in (server_group, os.getpgrp()):
                groups.add(group)
        return groups

    def kill_tasks(self):
        """Kill the process groups of whatever still runs in the store."""
        for group in self.task_groups():
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self):
        """Stop the server, kill leftover tasks, remove the folder."""
        self.stop()
        self.kill_tasks()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- looking at the store -------------------------------------------------

    def store_files(self):
        """Relative paths of every file and folder under store/tasks except locks and slots."""
        found = set()
        tasks = self.store / 'tasks'
        for folder, dirs, files in os.walk(tasks):
            relative = os.path.relpath(folder, tasks)
            if relative.split(os.sep)[0] == 'slots':
                continue
            for name in dirs + files:
                if name == '.lock' or (relative == '.' and name == 'slots'):
                    continue
                found.add(os.path.normpath(os.path.join(relative, name)))
        return found


def deployment(kind, config='', services=None):
    """A deployment of ``kind`` (not started): a live one, or ``wsgi`` in-process."""
    if kind == 'wsgi':
        from inprocess import WSGIDeployment
        return WSGIDeployment(kind, config=config, services=services)
    return Deployment(kind, config=config, services=services)


@contextlib.contextmanager
def running(built):
    """Start ``built`` (a deployment not started yet) and yield it; at the end,
    or when it did not start, stop it, kill its leftover tasks and remove its folder."""
    try:
        yield built.start()
    finally:
        built.close()
