"""The page's API with 10,000 tasks in the store, in-process (the WSGI app,
tests/inprocess.py: no server, no network): the median time of

- ``service=tasks&format=json``, the first page (50 of 10,000): it reads
  only the records it shows (ids sort by time);
- the same filtered by a status no task has (it reads at most 2,000
  records, then answers ``more`` and where to go on);
- one look of ``service=changes`` at a changed info folder (a stat of each
  of 10,000 records, their (inode, mtime, size) compared; no record
  changed, so none is read) and at an unchanged one (one stat);
- ``service=info`` of all 10,000, the old list, for comparison.

Run: .venv/bin/python bench/bench_page_api.py [COUNT] [REPEAT]
"""
import sys
import time

from common import median_seconds, table

import deploy  # noqa: E402
from rrc.store import Store  # noqa: E402


def fill(store, count):
    """``count`` ended echo tasks, written with the store's API (each an fsync'ed record)."""
    now = time.time()
    for number in range(count):
        store.create_task(lambda task_id: {
            'service': 'echo', 'status': 'failed' if number == 0 else 'complete', 'ctime': f'{now:.5f}',
            'etime': f'{now:.5f}', 'client': '127.0.0.1', 'in': 'tasks/in/x.txt', 'out': f'tasks/out/{task_id}',
            'sizeIn': '5', 'sizeOut': '5', 'exitCode': '0'})


def get(deployment, query):
    status, _, body = deployment.request_raw('GET', f'/?{query}')
    assert status == 200, body[:200]
    return body


def measure(count, repeat):
    with deploy.running(deploy.deployment('wsgi', config='maxDataRetention = 100000\n')) as running:
        store = Store(running.store)
        started = time.monotonic()
        fill(store, count)
        filled = time.monotonic() - started
        from rrc.web.changes import ChangesStream
        stream = ChangesStream(running.application, '127.0.0.1', None)  # folder_changes: as if it changed
        rows = [
            ['tasks, first page (50)', median_seconds(lambda: get(running, 'service=tasks&format=json'), repeat)],
            ['tasks, status=waiting (none: 2,000 read)',
             median_seconds(lambda: get(running, 'service=tasks&format=json&status=waiting'), repeat)],
            ['changes, a look at a changed folder', median_seconds(stream.folder_changes, repeat)],
            ['changes, a look at an unchanged folder', median_seconds(stream.folder_changed, repeat)],
            [f'info, all {count:,}', median_seconds(lambda: get(running, 'service=info&format=json'),
                                                    max(3, repeat // 10))],
        ]
    return filled, [[name, f'{seconds * 1000:.3f}'] for name, seconds in rows]


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    filled, rows = measure(count, repeat)
    print(f'{count:,} tasks written in {filled:.1f} s')
    print(table(rows, ['request (in-process)', 'median ms']))


if __name__ == '__main__':
    main()
