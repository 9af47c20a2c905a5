"""Live events: the latency from a progress write to the event arriving at a
Server-Sent Events client of the embedded server (issue 13: aim under 0.1 s).

One ``rrcloud serve`` on loopback; one busy task in its store.  This process
appends progress events to the task's event log (``append_event``, as the
runner's ProgressEvents does), at random intervals of 50 to 150 ms, each
carrying the time it was written.  Two readers see the same writes at the
same time:

- an SSE client (requests, ``stream=True``) of ``GET /?service=events&id=ID``;
- the baseline: an EventFollower reading the event file directly in this
  process (what ``wait_for_task`` and a local ``rrcloud watch`` do).

    .venv/bin/python bench/bench_sse.py [EVENTS]
"""
import json
import os
import random
import statistics
import sys
import threading
import time

from common import EmbeddedServer, table

from helpers import plain_session
from rrc.events import EventFollower, append_event
from rrc.procs import process_start_time
from rrc.store import Store

TASK_ID = '1796000000-00000-000001'
RECORD = {'id': TASK_ID, 'service': 'printrun', 'status': 'busy', 'ctime': '1796000000.00000',
          'cmd': 'rrcloud print /dev/ttyUSB0 tasks/in/1796000000-00000-000000.gcode',
          'in': 'tasks/in/1796000000-00000-000000.gcode', 'out': '', 'client': '127.0.0.1'}


def sse_reader(url, count, seen, ready):
    """Read the stream; the latency of each progress event as it arrives."""
    response = plain_session().get(url, params={'service': 'events', 'id': TASK_ID},
                                   stream=True, timeout=(5, 60))
    ready.set()
    pending = b''
    with response:
        while len(seen) < count:
            chunk = response.raw.read1(65536)
            if not chunk:
                return
            arrived = time.time()
            pending += chunk
            *lines, pending = pending.split(b'\n')
            for line in lines:
                if line.startswith(b'data: ') and b'"progress"' in line:
                    seen.append(arrived - json.loads(line[6:])['data']['sent'])


def follower_reader(store, count, seen, ready):
    """The baseline: the event file followed directly."""
    follower = EventFollower(store, TASK_ID, at_end=True)
    ready.set()
    while len(seen) < count:
        for event in follower.wait(5.0):
            if event.kind == 'progress':
                seen.append(time.time() - event.data['sent'])


def measure(count):
    with EmbeddedServer() as server:
        store = Store(str(server.root))
        # After the start (recovery would fail a task without a runner); this
        # process stands in for its runner, so the task stays alive while followed.
        store.write_task(dict(RECORD, runner=str(os.getpid()), runnerStart=process_start_time(os.getpid())))
        sse, direct = [], []
        readies = [threading.Event(), threading.Event()]
        threads = [threading.Thread(target=sse_reader, args=(server.url, count, sse, readies[0]), daemon=True),
                   threading.Thread(target=follower_reader, args=(store, count, direct, readies[1]), daemon=True)]
        for thread in threads:
            thread.start()
        for ready in readies:
            ready.wait(10)
        time.sleep(0.3)  # the stream's opening has arrived
        random.seed(count)
        for number in range(1, count + 1):
            time.sleep(random.uniform(0.05, 0.15))
            append_event(store, TASK_ID, 'progress', {'done': number, 'total': count, 'sent': time.time()})
        for thread in threads:
            thread.join(10)
    return sse, direct


def summary(values):
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], ordered[-1]


def main(argv):
    count = int(argv[1]) if len(argv) > 1 else 200
    sse, direct = measure(count)
    if len(sse) != count or len(direct) != count:
        print(f'lost events: SSE saw {len(sse)}, the follower {len(direct)} of {count}')
        return 1
    rows = []
    for name, values in (('SSE client of the embedded server', sse), ('EventFollower on the file (baseline)', direct)):
        median, p95, worst = summary(values)
        rows.append([name, f'{median * 1000:.1f} ms', f'{p95 * 1000:.1f} ms', f'{worst * 1000:.1f} ms'])
    ratio = statistics.median(sse) / statistics.median(direct)
    print(f'{count} progress events, written 50-150 ms apart\n')
    print(table(rows, ['reader', 'median', 'p95', 'max']))
    print(f'\nSSE / baseline (medians): {ratio:.2f}x; aim: SSE p95 under 100 ms: '
          f'{"met" if summary(sse)[1] < 0.1 else "NOT met"}')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
