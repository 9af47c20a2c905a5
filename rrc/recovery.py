"""What a server does at start and now and then: recover temp files, orphan inputs and idle work folders.

Several nodes may share the store: a node reconciles and starts only its own
tasks (``states``), judges a temp file's writer only when it wrote in this
machine's boot, and leaves another node's work folders to that node.
"""

import os
import sys
import time

from .backends import task_queue
from .errors import NotFound, RRCloudError
from .events import remove_orphan_events
from .identity import boot_tag
from .names import LazyPattern, is_task_id
from .pipeline import settle_jobs
from .procs import pid_alive
from .schema import Field, TaskStatus
from .states import list_tasks, still_running
from .store import marked
from .trees import remove_tree, shown_left


# Temp files of interrupted writes carry their writer's pid and boot:
# .NAME.PID[@BOOTTAG][.UNIQUE].(tmp|new|part) (no tag: written before tags, this boot's).
TEMP_FILE_RE = LazyPattern(r'\A\..+?\.([0-9]+)(?:@([0-9a-f]+))?(\.[0-9-]+)?\.(tmp|new|part)\Z')
TEMP_FILE_MAX_AGE = 3600.0


def recover_store(store, config):
    """After a crash: remove temp files of interrupted writes, fail tasks whose runner is gone.

    Orphaned tool groups that are provably a task's (pid plus start time) are
    killed by reconcile_task.  A print is never restarted.
    """
    now = time.time()
    remove_left_over_temp_files(store, now)
    remove_cache_orphans(store)
    for task_id in marked(store, 'running'):
        still_running(store, task_id)
    records = list_tasks(store, config)
    try:
        settle_jobs(store, config, records)  # a step that ended (or was interrupted) unseen moves its job on
    except RRCloudError as exc:  # a farm's Redis away while a job is moved on: the next recovery tries again
        print(f'rrcloud: warning: {exc}', file=sys.stderr)
    remove_orphan_inputs(store, records, now)
    remove_idle_work_folders(store, records)
    remove_orphan_events(store)
    try:
        task_queue(store, config).dispatch()
        if config.backend == 'rq':
            from .farmwork import sweep
            sweep(store, config)
    except RRCloudError as exc:  # a farm's Redis away: the next recovery tries again
        print(f'rrcloud: warning: {exc}', file=sys.stderr)


def remove_left_over_temp_files(store, now):
    """Remove temp files whose writer is gone, or that are older than any write in progress."""
    tag = boot_tag()
    # '': tasks/ itself, where meta's tool versions are kept (tasks/.toolversions);
    # cache: the result cache's entries (rrc/cache.py), cache/versions: its farm's tool versions
    for name in ('', 'info', 'in', 'out', 'log', 'queue', 'cache', os.path.join('cache', 'versions')):
        folder = store.folder(name)
        for entry in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, entry)
            match = TEMP_FILE_RE.match(entry)
            try:
                if match and (not writer_alive(match, tag) or now - os.lstat(path).st_mtime > TEMP_FILE_MAX_AGE):
                    os.unlink(path)
            except FileNotFoundError:
                pass


def remove_cache_orphans(store):
    """The result cache's files without their entry's facts (rrc/cache.py)."""
    from .cache import remove_orphans
    try:
        remove_orphans(store)
    except OSError as exc:  # a read-only store: the next recovery tries again
        print(f'rrcloud: warning: the result cache: {exc.strerror}', file=sys.stderr)


def writer_alive(match, tag):
    """False only when a temp file's writer provably ended: its pid is gone from
    this boot.  A writer of another boot (another machine on a shared store, or
    this one before a reboot) cannot be judged here; its file goes by age."""
    writer_tag = match.group(2)
    if writer_tag and writer_tag != tag:
        return True
    return pid_alive(int(match.group(1)))


def remove_idle_work_folders(store, records):
    """Remove sandbox work folders that no busy task owns (left by a crashed
    runner); the server's log names what could not be removed."""
    busy = {record[Field.ID] for record in records if record.get(Field.STATUS) == TaskStatus.BUSY}
    folder = store.folder('work')
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry not in busy and not work_folder_in_use(store, entry):
            left = remove_tree(os.path.join(folder, entry))
            if left:
                print(f'rrcloud: recovery could not remove {shown_left(left, store.root)}', file=sys.stderr)


def work_folder_in_use(store, entry):
    """True when ``tasks/work/ENTRY`` belongs to a task that started after the
    listing, or to another node's task (that node cleans up after its runners)."""
    if not is_task_id(entry):
        return False
    try:
        record = store.read_task(entry)
    except NotFound:
        return False
    return record.get(Field.STATUS) == TaskStatus.BUSY or not store.node.owns(record)


def remove_orphan_inputs(store, records, now):
    """Remove inputs no record names (left by a crash between storing an input
    and writing its record) once they are older than any upload in progress."""
    named = {path.split('/')[2] for record in records for path in record.get(Field.IN, '').split(',')
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

