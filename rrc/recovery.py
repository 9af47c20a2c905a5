"""What a server does at start and now and then: recover temp files, orphan inputs and idle work folders."""

import os
import time

from .events import remove_orphan_events
from .names import LazyPattern
from .procs import pid_alive
from .schema import TaskStatus
from .states import list_tasks, still_running
from .store import marked, remove_tree
from .tasks import dispatch


# Temp files of interrupted writes carry their writer's pid: .NAME.PID[.UNIQUE].(tmp|new|part)
TEMP_FILE_RE = LazyPattern(r'\A\..+?\.([0-9]+)(\.[0-9-]+)?\.(tmp|new|part)\Z')
TEMP_FILE_MAX_AGE = 3600.0
RECOVERY_INTERVAL = 60.0


def recover_store(store, config):
    """After a crash: remove temp files of interrupted writes, fail tasks whose runner is gone.

    Orphaned tool groups that are provably a task's (pid plus start time) are
    killed by reconcile_task.  A print is never restarted.
    """
    now = time.time()
    for name in ('info', 'in', 'out', 'log', 'queue'):
        folder = store.folder(name)
        for entry in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, entry)
            match = TEMP_FILE_RE.match(entry)
            try:
                if match and (not pid_alive(int(match.group(1)))
                              or now - os.lstat(path).st_mtime > TEMP_FILE_MAX_AGE):
                    os.unlink(path)
            except FileNotFoundError:
                pass
    for task_id in marked(store, 'running'):
        still_running(store, task_id)
    records = list_tasks(store, config)
    remove_orphan_inputs(store, records, now)
    remove_idle_work_folders(store, records)
    remove_orphan_events(store)
    dispatch(store, config)


def remove_idle_work_folders(store, records):
    """Remove sandbox work folders that no busy task owns (left by a crashed runner)."""
    busy = {record['id'] for record in records if record.get('status') == TaskStatus.BUSY}
    folder = store.folder('work')
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry not in busy:
            remove_tree(os.path.join(folder, entry))


def remove_orphan_inputs(store, records, now):
    """Remove inputs no record names (left by a crash between storing an input
    and writing its record) once they are older than any upload in progress."""
    named = {path.split('/')[2] for record in records for path in record.get('in', '').split(',')
             if path.startswith('tasks/in/') and len(path.split('/')) > 2}
    folder = store.folder('in')
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry in named or entry.startswith('.'):  # dotted: temp files, handled above
            continue
        path = os.path.join(folder, entry)
        try:
            if now - os.lstat(path).st_mtime <= TEMP_FILE_MAX_AGE:
                continue
        except FileNotFoundError:
            continue
        is_folder = os.path.isdir(path) and not os.path.islink(path)
        store.remove_input(f'tasks/in/{entry}/' if is_folder else f'tasks/in/{entry}')


def recover_now_and_then(store, config):
    """Run recover_store at most once a minute (CGI: no process stays to do it)."""
    stamp = os.path.join(store.tasks, '.recovered')
    try:
        if time.time() - os.stat(stamp).st_mtime < RECOVERY_INTERVAL:
            return
    except FileNotFoundError:
        if not os.path.isdir(store.tasks):
            return
    os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT, 0o644))
    os.utime(stamp)
    recover_store(store, config)
