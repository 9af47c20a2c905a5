"""A farm's speed (issue 19): throughput with 1, 2, 4 and 8 workers, the
engine's own cost per task against ``backend = local`` in the same run, and
how long a killed worker's task takes to run again.

Everything real, on loopback, as tests/farm.py builds it: ``redis-server``,
one front-end (``rrcloud serve``, ``backend = rq``), workers as www-data.

    .venv/bin/python bench/bench_farm.py [TASKS] [ROUNDS]

- throughput: TASKS (60) tasks that each sleep one second (a real process
  that waits, so two cores are not what limits it), submitted at once;
  the time from the first submission to the last end; speed-up against
  one worker, in the same run;
- the engine's cost: ROUNDS (30) instant tasks (echo), each submitted and
  waited for before the next, on the farm with one worker and on a
  ``backend = local`` server (same machine, same sandbox); the median
  time per task of each and the difference;
- a lost worker: a task that runs five seconds; its worker is killed once
  it runs; the time until another worker has taken it again.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import table

from farm import RedisServer, Worker, front_end
from helpers import SH_SERVICE, plain_session, wait_for
from servers import EmbeddedServer

SLEEPER = 'sleep 1; echo slept > "$1"\n'
CONFS = {'sh': SH_SERVICE}


def submit(session, url, service, content):
    answer = session.post(url, data={'service': service, 'format': 'json'},
                          files={'fileIn0': ('task.sh' if service == 'sh' else 'a.txt', content)}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()['id']


def ended(session, url, task_id):
    while True:
        record = session.get(url, params={'service': 'info', 'id': task_id, 'wait': '30', 'format': 'json'},
                             timeout=60).json()
        if record['status'] != 'busy':
            assert record['status'] == 'complete', record
            return record


def throughput(redis, front, workers, tasks):
    """Seconds for ``tasks`` one-second tasks with ``workers`` workers."""
    started = [Worker(redis, front.url, services=['sh'], confs=CONFS).start() for _ in range(workers)]
    try:
        session = plain_session()
        begin = time.monotonic()
        ids = [submit(session, front.url, 'sh', SLEEPER) for _ in range(tasks)]
        for task_id in ids:
            ended(session, front.url, task_id)
        return time.monotonic() - begin
    finally:
        for worker in started:
            worker.stop()


def per_task(url, rounds):
    """Median seconds of an instant task, submitted and waited for."""
    session = plain_session()
    times = []
    for number in range(rounds + 1):
        begin = time.monotonic()
        ended(session, url, submit(session, url, 'echo', f'hello {number}\n'))
        times.append(time.monotonic() - begin)
    return statistics.median(times[1:])  # the first warms up


def rerun_seconds(redis, front):
    """Seconds from a worker's kill to its task being taken again by another."""
    first, second = (Worker(redis, front.url, services=['sh'], confs=CONFS).start() for _ in range(2))
    try:
        session = plain_session()
        task_id = submit(session, front.url, 'sh', 'echo started; sleep 5; echo done > "$1"\n')
        name = wait_for(lambda: front.info(task_id).get('worker'), 'claimed', timeout=60)
        victim = first if first.name() == name else second
        wait_for(lambda: b'started' in session.get(f'{front.url}tasks/log/{task_id}', timeout=10).content,
                 'running', timeout=60)
        victim.kill()
        killed = time.monotonic()
        wait_for(lambda: front.info(task_id).get('attempt') == '2', 'taken again', timeout=120, interval=0.05)
        taken = time.monotonic() - killed
        ended(session, front.url, task_id)
        return taken
    finally:
        first.stop()
        second.stop()


def main():
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    redis = RedisServer().start()
    front = front_end(Path(tempfile.mkdtemp(prefix='rrcloud-bench-farm-')), redis, 'front1', CONFS).start()
    local = EmbeddedServer(tempfile.mkdtemp(prefix='rrcloud-bench-local-'), config='maxTasks = 1\n').start()
    try:
        print(table(throughput_rows(redis, front, tasks),
                    ['workers', 'tasks', 'seconds', 'tasks/s', 'speed-up', 'speed-up / workers']))
        print(table([engine_cost_row(redis, front, local, rounds)],
                    ['instant tasks', 'backend = local, ms', 'backend = rq, ms', 'the engine\'s cost, ms', 'ratio']))
        print(table([[f'{rerun_seconds(redis, front):.1f}']], ['a killed worker\'s task taken again after, s']))
    finally:
        front.stop()
        local.stop()
        redis.stop()


def throughput_rows(redis, front, tasks):
    """One row per number of workers: the time, and the speed-up against one."""
    rows, one = [], None
    for workers in (1, 2, 4, 8):
        seconds = throughput(redis, front, workers, tasks)
        one = one or seconds
        rows.append([workers, tasks, f'{seconds:.1f}', f'{tasks / seconds:.2f}', f'{one / seconds:.2f}x',
                     f'{one / seconds / workers:.2f}'])
    return rows


def engine_cost_row(redis, front, local, rounds):
    """Instant tasks through the farm (one worker) and through a local server, in turn."""
    worker = Worker(redis, front.url, services=['echo']).start()
    try:
        farm_seconds, local_seconds = per_task(front.url, rounds), per_task(local.url, rounds)
    finally:
        worker.stop()
    return [rounds, f'{local_seconds * 1000:.0f}', f'{farm_seconds * 1000:.0f}',
            f'{(farm_seconds - local_seconds) * 1000:+.0f}', f'{farm_seconds / local_seconds:.2f}x']


if __name__ == '__main__':
    main()
