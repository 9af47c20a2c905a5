"""Shared fixtures: a fresh store root per test, rrcloud run in-process or as a real process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import DATA, REPO, wait_until_done  # noqa: F401 (REPO, DATA, wait_until_done: imported from here by tests)

import rrcloud  # noqa: E402


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
