"""What the task sandbox costs: submission to the tool's start, and a small
OpenSCAD render end to end, each with the sandbox on and off, run in pairs
(on, off, on, off ...) so that the machine's drift hits both alike.

    .venv/bin/python bench/bench_sandbox.py [RUNS]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, VENV_BIN, table

from rrc.config import load_config
from rrc.services import load_services
from rrc.store import Store
from rrc.submission import Input, submit_task
from rrc.waits import wait_for_task

# A tool that writes the moment it started (the wall clock is the same inside).
STAMP_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n'
STAMP_SCRIPT = b'date +%s.%N > "$1"\n'


def make_root(sandbox):
    """A store root whose rrcloudrc turns the sandbox on or off."""
    root = Path(tempfile.mkdtemp(prefix=f'rrcloud-bench-sandbox-{sandbox}-'))
    (root / 'rrcloudrc').write_text(f'sandbox = {sandbox}\nmaxTasks = 1\n')
    (root / 'services').mkdir()
    (root / 'services' / 'stamp.conf').write_text(STAMP_SERVICE)
    for name in ('cube.scad',):
        (root / name).write_bytes((DATA / name).read_bytes())
    return root


def submit_to_start(root):
    """Seconds from the call that submits a task to its tool's first instruction."""
    os.environ['RRCLOUD_CONFIG'] = str(root / 'rrcloudrc')
    config = load_config()
    config.dir = str(root)
    store = Store(root)
    service = load_services(store.root)[0]['stamp']
    submitted = time.time()
    record = submit_task(store, config, service, [Input(STAMP_SCRIPT, 'stamp.sh')])
    record = wait_for_task(store, record['id'], timeout=60)
    assert record['status'] == 'complete', record
    return float((root / record['out']).read_text()) - submitted


def render(root):
    """Seconds of ``openscad.cloud cube.scad -ocube.stl`` as a user runs it (local)."""
    env = dict(os.environ, RRCLOUD_CONFIG=str(root / 'rrcloudrc'))
    started = time.perf_counter()
    subprocess.run([str(VENV_BIN / 'openscad.cloud'), 'cube.scad', '-ocube.stl'], cwd=root, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def paired(measure, runs):
    """Medians of ``measure`` with the sandbox on and off, taken in turns."""
    roots = {'yes': make_root('yes'), 'no': make_root('no')}
    for root in roots.values():
        measure(root)  # warm-up: caches, bytecode
    times = {'yes': [], 'no': []}
    for _ in range(runs):
        for mode in ('yes', 'no'):
            times[mode].append(measure(roots[mode]))
    return statistics.median(times['yes']), statistics.median(times['no'])


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rows = []
    for what, measure in (('submission to the tool\'s start', submit_to_start),
                          ('openscad.cloud cube.scad, end to end', render)):
        on, off = paired(measure, runs)
        rows.append([what, runs, f'{off * 1000:.1f}', f'{on * 1000:.1f}',
                     f'+{(on - off) * 1000:.1f}', f'{on / off:.2f}x'])
    print(table(rows, ['measure', 'runs', 'sandbox off, ms (baseline)', 'sandbox on, ms',
                       'added, ms', 'ratio']))


if __name__ == '__main__':
    main()
