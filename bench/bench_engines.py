"""OpenSCAD's engines side by side: the native openscad (CGAL) against
OpenSCAD 2025.01 with Manifold (npm's WASM build), and against the
``openscad`` service's own choice, on the test models and a heavier one.

Every figure is a whole ``openscad.cloud MODEL -oOUT.stl`` run on this machine
(local store, sandbox on, as a user runs it), the variants taking turns within
each round so the machine's drift hits all alike; ratios are taken pair by
pair within a round, then their median:

- ``openscad``: the native tool run directly, no rrcloud (for reference);
- ``cgal``: ``--backend=cgal``; ``manifold``: ``--backend=manifold``;
- ``picked, first``: no choice, in a fresh store: the race (CGAL alone for
  0.3 s, then Manifold beside it, the first to succeed wins);
- ``picked, again``: no choice, in a store that rendered the model before:
  straight to the remembered winner.

    /work/main/.venv/bin/python bench/bench_engines.py [ROUNDS]
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import DATA, REPO, table

from rrc.store import Store

MODELS = [DATA / 'engines' / 'light.scad', DATA / 'engines' / 'booleans.scad',
          DATA / 'engines' / 'heavy.scad', REPO / 'bench' / 'models' / 'heavier.scad']
WRAPPER = REPO / 'bin' / 'openscad.cloud'
VARIANTS = ('openscad', 'cgal', 'manifold', 'picked, first', 'picked, again')


def store_with(model):
    """A fresh store root (no rrcloudrc: the defaults, local) holding ``model``."""
    root = Path(tempfile.mkdtemp(prefix='rrcloud-bench-engines-'))
    shutil.copy(model, root / model.name)
    return root


def run(root, argv):
    """Seconds one command takes in ``root``; it must succeed."""
    env = dict(os.environ, HOME=str(root))
    env.pop('RRCLOUD_CONFIG', None)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=env, capture_output=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f'{argv} failed in {root}: {done.stderr.decode()[-500:]}')
    return seconds


def last_engine(root):
    """The engine of the newest task of a store."""
    store = Store(str(root))
    newest = max((store.read_task(i) for i in store.task_ids()), key=lambda r: float(r.get('etime', 0)))
    return newest.get('engine', '?')


def one_round(model, warm, times, engines):
    """Each variant once on ``model``: its seconds into ``times``, the engine picked into ``engines``."""
    name, out = model.name, '-oout.stl'
    cloud = [str(WRAPPER), name, out]
    times['openscad'].append(run(warm, ['openscad', name, out]))
    times['cgal'].append(run(warm, cloud + ['--backend=cgal']))
    times['manifold'].append(run(warm, cloud + ['--backend=manifold']))
    fresh = store_with(model)
    times['picked, first'].append(run(fresh, cloud))
    engines['picked, first'].add(last_engine(fresh))
    shutil.rmtree(fresh)
    times['picked, again'].append(run(warm, cloud))
    engines['picked, again'].add(last_engine(warm))


def pairwise(times, a, b, how):
    """The median over rounds of ``how(a's time, b's time)``."""
    return statistics.median(how(x, y) for x, y in zip(times[a], times[b]))


def bench_model(model, rounds):
    """The row of one model."""
    warm = store_with(model)
    run(warm, [str(WRAPPER), model.name, '-oout.stl'])  # the warm-up: the store remembers the winner
    times, engines = {v: [] for v in VARIANTS}, {'picked, first': set(), 'picked, again': set()}
    for _ in range(rounds):
        one_round(model, warm, times, engines)
    shutil.rmtree(warm)
    medians = [f'{statistics.median(times[v]):.2f}' for v in VARIANTS]
    return [model.name] + medians + [
        f'{pairwise(times, "cgal", "manifold", lambda x, y: x / y):.1f}x',
        f'{pairwise(times, "cgal", "picked, again", lambda x, y: x / y):.1f}x',
        f'{pairwise(times, "picked, first", "cgal", lambda x, y: x - y):+.2f}',
        f'{pairwise(times, "picked, again", "cgal", lambda x, y: x - y):+.2f}',
        '/'.join(sorted(engines['picked, first'])), '/'.join(sorted(engines['picked, again']))]


def main(rounds=3):
    rows = [bench_model(model, rounds) for model in MODELS]
    header = ['model'] + [f'{v} s' for v in VARIANTS] + [
        'cgal/manifold', 'cgal/picked again', 'picked first - cgal s', 'picked again - cgal s',
        'first picks', 'again picks']
    print(f'{rounds} rounds, medians; ratios and differences pair by pair within a round')
    print(table(rows, header))


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
