"""The cost of the queue's order (issue 13): dispatch with a long queue.

A store with QUEUED queued echo tasks (records and queue markers as a
submission writes them, none started) and every slot of the node held by
this process, as while runners run.  Measured, as CPU time of this process
(the best of 7 rounds of 50 calls; the machine is shared):

- ``dispatch`` with every slot busy: what each submission pays while the
  queue is long (it reads no record);
- choosing the task that starts next when a slot frees (``queue_order``
  plus reading that task's record), with none, 10 or all of the queued
  tasks carrying a priority (marked in ``tasks/order``, so their records are read).

    .venv/bin/python bench/bench_queue.py [QUEUED]
"""
import fcntl
import os
import shutil
import sys
import tempfile
import time

from common import REPO  # puts the repository on sys.path
from rrc.config import Config
from rrc.order import mark_placed, queue_order
from rrc.store import Store, marked
from rrc.queue import _queued_here, dispatch, queue_task, slot_folder
from rrc.settings import task_settings


def queued_store(queued, placed):
    """A store with ``queued`` queued tasks, the first ``placed`` with a priority."""
    root = tempfile.mkdtemp(prefix='rrcloud-bench-queue-')
    store = Store(root)
    store.ensure()
    config = Config()
    config.dir, config.maxTasks = root, 2
    for number in range(queued):
        fields = {'service': 'echo', 'status': 'busy', 'queued': 'yes', 'ctime': f'{time.time():.5f}',
                  'cmd': 'cp tasks/in/1764480000-12345-123456.txt tasks/out/x', 'out': 'tasks/out/x',
                  'in': 'tasks/in/1764480000-12345-123456.txt', 'client': '127.0.0.1', 'sizeIn': '12',
                  'node': store.node.name, 'server': 'bench'}
        if number < placed:
            fields['priority'] = str(number % 7 + 1)
        record = store.create_task(lambda task_id: fields)
        if number < placed:
            mark_placed(store, record['id'])
        queue_task(store, record['id'], task_settings(config))
    return store, config


def hold_every_slot(store, config):
    folder = slot_folder(store)
    os.makedirs(folder, exist_ok=True)
    held = []
    for number in range(config.maxTasks):
        fd = os.open(os.path.join(folder, str(number)), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    return held


def best_cpu_ms(function, rounds=7, calls=50):
    times = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            function()
        times.append((time.process_time() - started) / calls)
    return min(times) * 1000


def main():
    queued = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f'{REPO}: {queued} queued tasks, maxTasks 2, every slot busy; CPU ms per call (best of 7 x 50)')
    print('| marked (with a priority) | dispatch, every slot busy | choosing the next to start |')
    print('| ---: | ---: | ---: |')
    for placed in (0, 10, queued):
        store, config = queued_store(queued, placed)
        held = hold_every_slot(store, config)
        try:
            busy = best_cpu_ms(lambda: dispatch(store, config))
            markers = marked(store, 'queue')
            with store.lock():
                choose = best_cpu_ms(lambda: _queued_here(store, queue_order(store, markers)[0]))
        finally:
            for fd in held:
                os.close(fd)
            shutil.rmtree(store.root)
        print(f'| {placed} | {busy:.2f} | {choose:.2f} |')


if __name__ == '__main__':
    main()
