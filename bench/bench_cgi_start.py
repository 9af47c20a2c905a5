"""CGI start-up against a baseline checkout: one CGI ``meta`` request as a
process (the web servers' Python running ``bin/index.cgi``, as lighttpd
starts it), this checkout and the baseline taking turns, with 10,000 finished
tasks in the store.  Each pair gives a ratio, so a comparison holds while the
machine's speed drifts; the median ratio is printed.

Run: .venv/bin/python bench/bench_cgi_start.py BASELINE_CHECKOUT [PAIRS]
     (e.g. git worktree add /tmp/baseline bc6b597, the last commit before the split)
"""
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, table

from deploy import WEB_PYTHON  # noqa: E402
from bench_http import fill_store  # noqa: E402


def cgi_meta(checkout, rrcloudrc):
    """Seconds of one CGI meta request of ``checkout``, start to exit."""
    env = {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
           'QUERY_STRING': 'service=meta', 'REMOTE_ADDR': '127.0.0.1', 'SCRIPT_NAME': '/index.cgi',
           'RRCLOUD_CONFIG': str(rrcloudrc)}
    start = time.perf_counter()
    done = subprocess.run([WEB_PYTHON, str(Path(checkout) / 'bin' / 'index.cgi')], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
    seconds = time.perf_counter() - start
    assert done.stdout.startswith(b'Status: 200'), done.stdout[:200]
    return seconds


def compile_checkout(checkout):
    """Bytecode for the web servers' Python, as `make install` leaves it."""
    subprocess.run([WEB_PYTHON, '-m', 'compileall', '-q', str(checkout)], check=True,
                   stdout=subprocess.DEVNULL)


def main():
    baseline = Path(sys.argv[1]).resolve()
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    store = Path(tempfile.mkdtemp(prefix='rrcloud-bench-cgi-'))
    rrcloudrc = store / 'rrcloudrc'
    rrcloudrc.write_text(f'dir = {store}\nmaxDataRetention = 1000\n')
    fill_store(store, 10000)
    (store / 'tasks' / '.recovered').touch()  # the 59 requests of a minute that do not recover
    for checkout in (REPO, baseline):
        compile_checkout(checkout)
        cgi_meta(checkout, rrcloudrc)  # warm up
    ours, theirs = [], []
    for _ in range(pairs):
        ours.append(cgi_meta(REPO, rrcloudrc))
        theirs.append(cgi_meta(baseline, rrcloudrc))
    ratios = [a / b for a, b in zip(ours, theirs)]
    print(table([['this checkout', pairs, f'{statistics.median(ours) * 1000:.1f}',
                  f'{statistics.median(theirs) * 1000:.1f}', f'{statistics.median(ratios):.2f}x']],
                ['CGI meta', 'pairs', 'median, ms', f'baseline ({baseline.name}), ms', 'median ratio']))


if __name__ == '__main__':
    main()
