"""The task lifecycle: the only writer of a record's ``status``; liveness, reconcile, finish, expire."""

import os
import time

from .errors import NotFound
from .events import status_changed, with_live_progress
from .procs import kill_process_group, process_is
from .schema import TaskStatus
from .store import unmark


ORPHAN_GRACE_SECONDS = 30.0


def reconcile_task(store, record, now=None):
    """Report a busy task whose runner is gone as failed/interrupted."""
    if record.get('status') != TaskStatus.BUSY or 'remoteId' in record or _runner_expected(store, record, now):
        return record
    if record.get('pid') and process_is(record['pid'], record.get('pidStart')):
        kill_process_group(int(record['pid']))
    finished = finish_task(store, record['id'], TaskStatus.FAILED, error='interrupted')
    unmark(store, 'running', record['id'])
    return finished or store.read_task(record['id'])


def _runner_expected(store, record, now=None):
    """True while a busy task still has (or is about to have) a live runner."""
    if record.get('runner'):
        return process_is(record['runner'], record.get('runnerStart'))
    if record.get('queued') and os.path.exists(os.path.join(store.folder('queue'), record['id'])):
        return True
    started = float(record.get('stime') or record.get('ctime') or 0)
    return (now or time.time()) - started < ORPHAN_GRACE_SECONDS


def finish_task(store, task_id, status, **fields):
    """Write a task's final state unless another final state was written first."""
    changes = dict(fields, status=status.value, etime=f'{time.time():.5f}')
    out = store.read_task(task_id).get('out', '')
    if out.startswith('tasks/out/'):
        try:
            changes['sizeOut'] = os.path.getsize(store.path_of(out))
        except OSError:
            changes['sizeOut'] = 0
    return status_changed(store, store.update_task(task_id, changes, only_if_busy=True, remove=('queued',)))


def expire_tasks(store, records, max_hours, now=None):
    """Remove finished tasks whose end is older than ``max_hours``; returns the rest."""
    now = now or time.time()
    kept = []
    for record in records:
        etime = record.get('etime')
        if record.get('status') != TaskStatus.BUSY and etime and now - float(etime) > max_hours * 3600:
            store.remove_task(record)
        else:
            kept.append(record)
    return kept


def list_tasks(store, config):
    """All tasks, reconciled and with expired ones removed (as the original does)."""
    records = []
    for task_id in store.task_ids():
        try:
            records.append(reconcile_task(store, store.read_task(task_id)))
        except NotFound:
            continue
    return [with_live_progress(store, r) for r in expire_tasks(store, records, config.maxDataRetention)]


def get_task(store, task_id):
    """One task, reconciled."""
    return with_live_progress(store, reconcile_task(store, store.read_task(task_id)))


# A folder changed less than this long ago may change again within the same
# mtime tick, unseen: its count is not cached ("racy" timestamps, as git has).
COUNT_CACHE_SETTLE_NS = 100_000_000  # mtime ticks are a few ms


def count_tasks(store):
    """How many records ``tasks/info`` holds.  Listing 10,000 names costs 3 ms,
    so a resident server's store keeps the count until the folder's mtime changes."""
    folder = store.folder('info')
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return 0
    key = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)
    if store.count_cache and store.count_cache[0] == key:
        return store.count_cache[1]
    count = sum(1 for name in os.listdir(folder) if name[0] != '.')  # ids, and dotted temp files
    if time.time_ns() - stat.st_mtime_ns > COUNT_CACHE_SETTLE_NS:
        store.count_cache = (key, count)
    return count


def still_running(store, task_id):
    """True when a running marker belongs to a live runner (reconciles it otherwise)."""
    try:
        record = get_task(store, task_id)
    except NotFound:
        unmark(store, 'running', task_id)
        return False
    if record.get('runner') and process_is(record['runner'], record.get('runnerStart')):
        return True
    unmark(store, 'running', task_id)
    return False
