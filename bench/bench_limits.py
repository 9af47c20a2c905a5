"""What a task's limits cost (issue 18): a task end to end, this checkout
against a baseline checkout from before the limits, and the sandbox alone
with and without prlimit as its first program.  Each pair runs in turns
(this, baseline, this, baseline ...) so the machine's drift hits both alike.

    git worktree add /tmp/rrcloud-baseline f94a103   # issue 18's config keys, no limits yet
    .venv/bin/python bench/bench_limits.py /tmp/rrcloud-baseline [RUNS]

Rows:
- ``rrcloud --sync sh`` of a script that writes one line: the whole task as a
  user waits for it on one machine (CLI, submission, runner, sandbox, tool,
  the log through the runner's pipe, the result);
- the same script printing 10 MB: the log's way through the pipe (the
  baseline's tool writes its log file directly);
- ``bwrap … -- true`` against ``bwrap … -- prlimit … -- true``: the one
  program the limits add to every task.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, table

from rrc.limits import ToolLimits
from rrc.sandbox import Sandbox

SH_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\noutput = $fileOut\n'
SMALL = 'echo done > "$1"\n'
CHATTY = 'head -c 10000000 /dev/zero | tr "\\0" "x" | fold -w 99\necho done > "$1"\n'


def store_root(name, script):
    """A store root with the sh service, its script and an rrcloudrc of defaults."""
    root = Path(tempfile.mkdtemp(prefix=f'rrcloud-bench-limits-{name}-'))
    (root / 'rrcloudrc').write_text('maxTasks = 1\n')
    (root / 'services').mkdir()
    (root / 'services' / 'sh.conf').write_text(SH_SERVICE)
    (root / 'job.sh').write_text(script)
    return root


def task_seconds(checkout, root):
    """Wall seconds of ``rrcloud --sync sh job.sh`` run from ``checkout`` in ``root``."""
    env = dict(os.environ, RRCLOUD_CONFIG=str(root / 'rrcloudrc'))
    started = time.perf_counter()
    subprocess.run([sys.executable, str(Path(checkout) / 'rrcloud.py'), '--sync', 'sh', 'job.sh'],
                   cwd=root, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def sandbox_seconds(argv):
    """Wall seconds of one sandboxed program."""
    folder = tempfile.mkdtemp(prefix='rrcloud-bench-limits-out-')
    command = Sandbox([], folder).command(argv)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    os.rmdir(folder)
    return elapsed


def paired(this, baseline, runs):
    """Medians of two measurements taken in turns, after one warm-up each."""
    this(), baseline()
    times = ([], [])
    for _ in range(runs):
        times[0].append(this())
        times[1].append(baseline())
    return statistics.median(times[0]), statistics.median(times[1])


def main():
    baseline = sys.argv[1]
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    rows = []
    for what, script in (('a task, end to end (--sync sh)', SMALL),
                         ('a task printing 10 MB, end to end', CHATTY)):
        roots = store_root('this', script), store_root('baseline', script)
        try:
            limited, free = paired(lambda: task_seconds(REPO, roots[0]),
                                   lambda: task_seconds(baseline, roots[1]), runs)
        finally:
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)
        rows.append([what, runs, f'{free * 1000:.1f}', f'{limited * 1000:.1f}',
                     f'{(limited - free) * 1000:+.1f}', f'{limited / free:.3f}x'])
    prlimit = ToolLimits(1 << 30, 64, 1 << 30, 10 << 20).rlimit_argv()
    limited, free = paired(lambda: sandbox_seconds(prlimit + ['/usr/bin/true']),
                           lambda: sandbox_seconds(['/usr/bin/true']), runs)
    rows.append(['the sandbox of /usr/bin/true, with prlimit', runs, f'{free * 1000:.1f}',
                 f'{limited * 1000:.1f}', f'{(limited - free) * 1000:+.1f}', f'{limited / free:.3f}x'])
    print(table(rows, ['what', 'runs', 'baseline ms', 'with limits ms', 'difference ms', 'ratio']))


if __name__ == '__main__':
    main()
