"""Shared fixtures: a fresh store root per test, rrcloud run in-process or as
a real process, embedded servers, a one-slot store whose slot is held.

The helpers (test services, submitting and reading tasks, waiting) are in
helpers.py; the servers' classes in servers.py (``rrcloud serve``, fake
servers) and deploy.py (deployments: in-process, embedded as www-data,
lighttpd, Apache).
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (DATA, QUEUE_CONFIG, REPO, SH_SERVICE, gated_script, process_gone,  # noqa: F401
    tool_started, wait_until_done)  # (REPO, DATA, wait_until_done: imported from here by tests)
from servers import EmbeddedServer
import browser as _browser

import rrcloud  # noqa: E402
from rrc.procs import process_is  # noqa: E402
from rrc.store import Store  # noqa: E402


class Result:
    """What a user sees of one command: exit code, stdout, stderr."""

    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f'Result(code={self.code!r}, out={self.out!r}, err={self.err!r})'


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh, empty store root as the current folder, with no user config."""
    home = tmp_path / 'home'
    home.mkdir()
    work = tmp_path / 'work'
    work.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.delenv('RRCLOUD_CONFIG', raising=False)
    monkeypatch.delenv('GATEWAY_INTERFACE', raising=False)
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def cli(workdir, capsys):
    """Run rrcloud's main() in-process under a program name; returns a Result."""
    def run(*args, prog='rrcloud'):
        code = rrcloud.main([prog, *args])
        out, err = capsys.readouterr()
        return Result(code, out, err)
    return run


@pytest.fixture
def proc(workdir):
    """Run rrcloud as a real process (through bin/<prog> for wrappers); returns a Result."""
    def run(*args, prog='rrcloud', timeout=120, env=None):
        exe = REPO / 'rrcloud.py' if prog == 'rrcloud' else REPO / 'bin' / prog
        done = subprocess.run([sys.executable, str(exe), *args] if prog == 'rrcloud' else [str(exe), *args],
                              cwd=workdir, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))
        return Result(done.returncode, done.stdout, done.stderr)
    return run


@pytest.fixture(scope='module')
def _module_servers():
    """The embedded servers a module's tests share, by (rrcloudrc, services);
    stopped after the module's last test (see ``embedded_server``)."""
    shared = {}
    yield shared
    for server in shared.values():
        if server.running:
            server.stop()


@pytest.fixture
def embedded_server(tmp_path, tmp_path_factory, _module_servers):
    """Start real ``rrcloud serve`` processes (servers.EmbeddedServer), each on
    a free loopback port in its own store, run as this user.  Returns a
    function:

        embedded_server(config='maxTasks = 1\n', services=None)

    gives a started server with this rrcloudrc and these service confs
    ({name: conf text}, written to its store's services/).  Every server it
    started is stopped, with the runners and tools its records name, when
    the test ends (a test may stop one earlier; a stopped one is left alone).

    ``root=FOLDER`` puts the store there (default: ``server0``, ``server1``,
    ... under the test's tmp_path); ``start=False`` returns it unstarted,
    for a test that lays out its store or edits its rrcloudrc first (it calls
    ``server.start()``).  ``scope='module'``: the one server the module's
    tests share for this rrcloudrc and services, started by the first test
    that asks and stopped after the module's last.

    A test that must not run its server as root (the kernel lets root past
    RLIMIT_NPROC and file permissions) uses ``deploy.Deployment('embedded')``
    instead: the server as installed, as www-data.
    """
    started = []

    def start(config='maxTasks = 1\n', services=None, *, root=None, start=True, scope='function'):
        if scope == 'module':
            assert root is None and start, 'a shared server is started at once, in a folder of its own'
            key = (config, tuple(sorted((services or {}).items())))
            if key not in _module_servers:
                _module_servers[key] = EmbeddedServer(tmp_path_factory.mktemp('server'), config, services).start()
            return _module_servers[key]
        assert scope == 'function', scope
        server = EmbeddedServer(root or tmp_path / f'server{len(started)}', config, services)
        started.append(server)
        return server.start() if start else server
    yield start
    for server in started:
        if server.running:
            server.stop()


@pytest.fixture(scope='module')
def browser():
    """One headless Chromium (a selenium WebDriver, tests/browser.py) for the
    module's tests, quit after its last; each test starts at the desktop
    size with the console's log drained.  ``browser.severe_console(driver)``
    reads its errors, ``browser.screenshot(driver, name)`` writes
    build/screenshots/NAME.png."""
    import shutil
    profile = _browser.fresh_profile()
    driver = _browser.start_browser(profile)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser):
    """The module's browser for one test: desktop size, no console messages
    nor requests logged before."""
    _browser.set_size(browser, _browser.DESKTOP)
    browser.get_log('browser')
    browser.get_log('performance')
    return browser


@pytest.fixture
def held_slot(cli, workdir):
    """A store with ``QUEUE_CONFIG`` (one slot) whose slot a gated task holds:
    (its id, the gate to open).  The gate opens at the end."""
    write_config(workdir, QUEUE_CONFIG)
    make_service(workdir, 'gate', SH_SERVICE)
    gate = workdir.parent / 'gate-open'
    (workdir / 'gate.sh').write_text(gated_script(gate))
    task_id = task_id_of(cli('gate', 'gate.sh').out)
    assert 'queued' not in Store(workdir).read_task(task_id)  # dispatched by its submission
    tool_started(workdir, task_id)
    yield task_id, gate
    gate.touch()


@pytest.fixture
def no_leftover_processes(workdir):
    """After the test, stop what its tasks left running (only those, by pid
    and start time), and the processes whose pids a tool wrote into
    ``tool.pid`` and ``grandchild.pid`` (TOOL_WITH_GRANDCHILD)."""
    yield
    store = Store(workdir)
    for task_id in store.task_ids():
        record = store.read_task(task_id)
        for pid_key, start_key in (('pid', 'pidStart'), ('runner', 'runnerStart')):
            pid = record.get(pid_key)
            if pid and process_is(pid, record.get(start_key)):
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for pidfile in ('tool.pid', 'grandchild.pid'):
        path = workdir / pidfile
        if path.is_file() and path.read_text().strip().isdigit():
            pid = int(path.read_text())
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


def write_config(folder, text, name='rrcloudrc'):
    """Write an rrcloudrc into ``folder``; returns its path."""
    path = Path(folder) / name
    path.write_text(text)
    return path


def task_id_of(output):
    """The id from an ``id: ID`` line."""
    for line in output.splitlines():
        if line.startswith('id: '):
            return line[4:].strip()
    raise AssertionError(f'no "id: " line in {output!r}')


def make_service(root, name, text):
    """Write ``ROOT/services/NAME.conf`` (store-root services win over the defaults)."""
    folder = Path(root) / 'services'
    folder.mkdir(exist_ok=True)
    (folder / f'{name}.conf').write_text(text)


def pytest_collection_modifyitems(config, items):
    """Slow tests first, one at the head of each worker's share.

    Under pytest-xdist's ``worksteal`` each worker starts with a contiguous
    share of the collection (the others steal from its tail later), so a slow
    test placed at the head of every share starts at once and none is left to
    the end of the run; the other tests keep their order (a module's servers
    stay shared).  Without xdist slow tests simply come first.  Every worker
    computes the same order, as xdist requires.
    """
    slow = [item for item in items if item.get_closest_marker('slow')]
    if not slow:
        return
    rest = [item for item in items if not item.get_closest_marker('slow')]
    workers = getattr(config, 'workerinput', {}).get('workercount', 1)
    if workers <= 1 or config.getoption('dist', 'no') != 'worksteal':
        items[:] = slow + rest
        return
    # worksteal's first split: share i holds remaining // (workers - i) items.
    sizes, remaining = [], len(items)
    for i in range(workers):
        sizes.append(remaining // (workers - i))
        remaining -= sizes[-1]
    heads = [slow[i::workers] for i in range(workers)]
    ordered, taken = [], 0
    for size, head in zip(sizes, heads):
        fill = max(0, size - len(head))
        ordered += head + rest[taken:taken + fill]
        taken += fill
    items[:] = ordered + rest[taken:]
