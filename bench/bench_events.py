"""What the event log costs and gains against what it replaced, both measured
in the same run, in alternation, on the same disk:

1. one progress update: an event appended (rrc/events.py) against the old
   way, the whole record rewritten with fsync under the store lock;
2. a progress update from a writer process to a reader that follows the
   task: the event follower (a stat of the event file, 5 ms then every
   50 ms) against the old wait loop (the record re-read every 5 to 25 ms),
   and what the reader's CPU pays per second of following;
3. a real task's end to ``wait_for_task`` returning, against the old loop.

    .venv/bin/python bench/bench_events.py [ROUNDS]
"""
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, table

from rrc.config import load_config
from rrc.events import EventFollower, append_event
from rrc.services import load_services
from rrc.states import get_task
from rrc.store import Store
from rrc.submission import Input, submit_task
from rrc.waits import wait_for_task

TASK_ID = '1796000000-00000-000001'
RECORD = {'id': TASK_ID, 'service': 'printrun', 'status': 'busy', 'ctime': '1796000000.00000',
          'cmd': 'rrcloud print /dev/ttyUSB0 tasks/in/1796000000-00000-000000.gcode',
          'in': 'tasks/in/1796000000-00000-000000.gcode', 'out': '', 'client': '127.0.0.1',
          'sizeIn': '1234567', 'server': 'pi', 'stime': '1796000000.10000', 'runner': '4242',
          'runnerStart': '123456', 'pid': '4243', 'pidStart': '123457'}


def fresh_store():
    root = Path(tempfile.mkdtemp(prefix='rrcloud-bench-events-', dir=os.environ.get('BENCH_DIR')))
    store = Store(root)
    store.ensure()
    store.write_task(dict(RECORD))
    return store


# -- 1. the cost of one progress update -------------------------------------

def update_costs(rounds):
    """Median seconds of one update, (event append, record rewrite)."""
    store = fresh_store()
    appends, rewrites = [], []
    for number in range(rounds):
        data = {'done': number, 'total': rounds, 'percent': round(100 * number / rounds, 1), 'eta': 12.5}
        start = time.perf_counter()
        append_event(store, TASK_ID, 'progress', data)
        appends.append(time.perf_counter() - start)
        start = time.perf_counter()
        store.update_task(TASK_ID, {'progress': f'{number}/{rounds}'})
        rewrites.append(time.perf_counter() - start)
    event_bytes = os.path.getsize(os.path.join(store.folder('events'), TASK_ID)) / rounds
    record_bytes = os.path.getsize(store.info_path(TASK_ID))
    return statistics.median(appends), statistics.median(rewrites), event_bytes, record_bytes


# -- 2. writer process to following reader ----------------------------------

WRITER = '''
import random, sys, time
sys.path.insert(0, sys.argv[1])
from rrc.events import append_event
from rrc.store import Store
store, how, count = Store(sys.argv[2]), sys.argv[3], int(sys.argv[4])
random.seed(count)
time.sleep(0.3)
for number in range(1, count + 1):
    time.sleep(random.uniform(0.05, 0.25))
    if how == 'events':
        append_event(store, sys.argv[5], 'progress', {'done': number, 'total': count, 'sent': time.time()})
    else:
        store.update_task(sys.argv[5], {'progress': f'{number}/{count}', 'sent': repr(time.time())})
'''


def follow_events(store, count):
    """Latencies seen by an event follower, as wait_for_task follows."""
    follower, seen = EventFollower(store, TASK_ID, at_end=True), []
    while len(seen) < count:
        for event in follower.wait(5.0):
            if event.kind == 'progress':
                seen.append(time.time() - event.data['sent'])
    return seen


def follow_record(store, count):
    """Latencies seen by the old wait loop: the record re-read, 5 ms growing to 25 ms."""
    seen, last, delay = [], None, 0.005
    while len(seen) < count:
        record = get_task(store, TASK_ID)
        if record.get('progress') != last:
            last = record['progress']
            seen.append(time.time() - float(record['sent']))
        time.sleep(delay)
        delay = min(delay * 1.5, 0.025)
    return seen


def follow(how, count):
    """(latencies, reader CPU seconds per second of following) with a writer process."""
    store = fresh_store()
    writer = subprocess.Popen([sys.executable, '-c', WRITER, str(REPO), store.root, how, str(count), TASK_ID])
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    seen = (follow_events if how == 'events' else follow_record)(store, count)
    elapsed = time.monotonic() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    writer.wait()
    return seen, (used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime) / elapsed


# -- 3. a real task's end to wait returning ---------------------------------

def old_wait(store, task_id):
    """wait_for_task as it was: the record re-read every 5 ms growing to 25 ms."""
    delay = 0.005
    while True:
        record = get_task(store, task_id)
        if record.get('status') != 'busy':
            return record
        time.sleep(delay)
        delay = min(delay * 1.5, 0.025)


def task_end_to_wait(how):
    root = Path(tempfile.mkdtemp(prefix='rrcloud-bench-wait-', dir=os.environ.get('BENCH_DIR')))
    (root / 'rrcloudrc').write_text(f'maxTasks = 2\ndir = {root}\n')
    (root / 'services').mkdir()
    (root / 'services' / 'job.conf').write_text('path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    os.environ['RRCLOUD_CONFIG'] = str(root / 'rrcloudrc')
    config = load_config()
    store = Store(config.dir)
    services, _ = load_services(store.root)
    record = submit_task(store, config, services['job'], [Input(b'sleep 0.4; echo x > "$1"\n', 'job.sh')])
    final = wait_for_task(store, record['id'], timeout=60) if how == 'events' else old_wait(store, record['id'])
    returned = time.time()
    assert final['status'] == 'complete', final
    return returned - float(final['etime'])


def ms(seconds):
    return f'{seconds * 1000:.2f} ms'


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    append, rewrite, event_bytes, record_bytes = update_costs(rounds)
    print(f'## One progress update ({rounds} of each, alternating; median)\n')
    print(table([['event appended (no fsync)', ms(append), f'{event_bytes:.0f} B', '1.00'],
                 ['record rewritten + fsync (before)', ms(rewrite), f'{record_bytes} B',
                  f'{rewrite / append:.1f}']],
                ['update', 'time', 'bytes written', 'x the append']))

    count = max(20, rounds // 10)
    new, new_cpu = follow('events', count)
    old, old_cpu = follow('record', count)
    p95 = lambda values: sorted(values)[int(0.95 * (len(values) - 1))]  # noqa: E731
    print(f'\n## A progress update, writer process to following reader ({count} updates each)\n')
    print(table([['event follower', ms(statistics.median(new)), ms(p95(new)), f'{new_cpu * 100:.2f} %'],
                 ['record polling (before)', ms(statistics.median(old)), ms(p95(old)), f'{old_cpu * 100:.2f} %']],
                ['reader', 'median latency', 'p95 latency', 'reader CPU']))
    print(f'\nlatency ratio (median, after/before): {statistics.median(new) / statistics.median(old):.2f}; '
          f'reader CPU ratio: {new_cpu / old_cpu:.2f}')

    waits = {'events': [], 'record': []}
    for _ in range(max(5, rounds // 40)):
        for how in ('events', 'record'):
            waits[how].append(task_end_to_wait(how))
    print(f'\n## A real task\'s end (record etime) to wait returning ({len(waits["events"])} tasks each)\n')
    print(table([['wait_for_task (events)', ms(statistics.median(waits['events'])), ms(max(waits['events']))],
                 ['old loop (record polling)', ms(statistics.median(waits['record'])), ms(max(waits['record']))]],
                ['wait', 'median', 'max']))


if __name__ == '__main__':
    main()
