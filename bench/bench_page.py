"""The browser page (issue 23) in headless Chromium: time to first useful
paint with 1,000 and 10,000 tasks in the store, and the latency from a
task's status change to the page showing it.

    .venv/bin/python bench/bench_page.py [ROUNDS] [--baseline=DIR]

First useful paint: from the navigation's start to the first task's row in
the list (``li.task``), read in the page itself (a MutationObserver set up
before the page's own scripts run, ``performance.now()``).  The baseline,
measured in the same rounds on the same stores, is the page of a checkout
before this work (``--baseline=DIR``, e.g. ``git archive 5342545 | tar -x -C
DIR``): a table of every task rendered by the server, its first row.

Status latency: a running task is killed through the API; the time from its
record's end (``etime``, written with the status) to the page's row showing
``failed``, both on this machine's clock.
"""
import statistics
import sys
import time

import requests

from common import CheckoutServer, EmbeddedServer, fill_store, table

from browser import fresh_profile, start_browser  # tests/ is on sys.path (common)
from helpers import SH_SERVICE, submit


# Set up before any script of the page runs: the first row's time, and each
# task row's state changes on the wall clock.
OBSERVER = """
window.__bench = {firstRow: null, seen: {}};
new MutationObserver(() => {
  const row = document.querySelector('li.task, table tr td');
  if (row && window.__bench.firstRow === null) window.__bench.firstRow = performance.now();
  for (const li of document.querySelectorAll('li.task[data-state="failed"]')) {
    if (!(li.dataset.id in window.__bench.seen)) window.__bench.seen[li.dataset.id] = Date.now() / 1000;
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
"""


def first_useful_paint(driver, url):
    """Milliseconds from navigation start to the first task row."""
    driver.get(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = driver.execute_script('return window.__bench && window.__bench.firstRow')
        if found is not None:
            return found
        time.sleep(0.01)
    raise AssertionError(f'no task row at {url} within 60 s')


def status_latency(driver, server):
    """Seconds from a killed task's record end to its row showing failed."""
    task_id = submit(server, 'job', 'sleep 30\n', 'sleeper.sh')
    deadline = time.monotonic() + 60
    while not driver.execute_script(f'return !!document.querySelector(\'li.task[data-id="{task_id}"]\')'):
        if time.monotonic() > deadline:
            raise AssertionError('the new task never showed')
        time.sleep(0.01)
    killed = requests.post(server.url, data={'service': 'kill', 'id': task_id}, timeout=30)
    assert killed.status_code == 200, killed.text
    etime = float(server.wait_done(task_id)['etime'])
    while True:
        seen = driver.execute_script(f'return window.__bench.seen["{task_id}"]')
        if seen is not None:
            return seen - etime
        if time.monotonic() > deadline:
            row = driver.execute_script(f'const li = document.querySelector(\'li.task[data-id="{task_id}"]\'); '
                                        'return li && li.dataset.state')
            note = driver.execute_script('return document.body.innerText.slice(0, 400)')
            raise AssertionError(f'the kill never showed: the row says {row!r}; the page: {note!r}')
        time.sleep(0.01)


def main(argv):
    rounds = int(next((a for a in argv if a.isdigit()), '3'))
    baseline = next((a.split('=', 1)[1] for a in argv if a.startswith('--baseline=')), None)
    driver = start_browser(fresh_profile())
    driver.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument', {'source': OBSERVER})
    rows, latencies = [], []
    try:
        for count in (1000, 10000):
            with EmbeddedServer('maxTasks = 2\n', {'job': SH_SERVICE}) as server:
                fill_store(server.root, count)
                old = CheckoutServer(baseline) if baseline else None
                if old:
                    fill_store(old.root, count)
                ours, theirs = [], []
                try:
                    for _ in range(rounds):
                        ours.append(first_useful_paint(driver, server.url))
                        if old:
                            theirs.append(first_useful_paint(driver, old.url))
                    if count == 1000:
                        driver.get(server.url)
                        first_useful_paint(driver, server.url)
                        latencies = [status_latency(driver, server) for _ in range(rounds)]
                finally:
                    if old:
                        old.stop()
                rows.append([f'{count:,} tasks: this page, first row (ms)', rounds,
                             f'{statistics.median(ours):.0f}', f'{min(ours):.0f}-{max(ours):.0f}', ''])
                if theirs:
                    ratio = statistics.median(a / b for a, b in zip(ours, theirs))
                    rows.append([f'{count:,} tasks: baseline page, first row (ms)', rounds,
                                 f'{statistics.median(theirs):.0f}', f'{min(theirs):.0f}-{max(theirs):.0f}',
                                 f'{ratio:.2f}x'])
        rows.append(['status change to the page (ms)', rounds, f'{1000 * statistics.median(latencies):.0f}',
                     f'{1000 * min(latencies):.0f}-{1000 * max(latencies):.0f}', ''])
    finally:
        driver.quit()
    print(table(rows, ['measure', 'rounds', 'median', 'range', 'this / baseline (pairs)']))


if __name__ == '__main__':
    main(sys.argv[1:])
