"""The queue of one node (``backend = local``): queue markers in
``tasks/queue``, one flock per ``maxTasks`` slot in ``tasks/slots/NODE``,
and dispatch, which starts the first queued task in order
(``rrc/order.py``) whenever a slot is free."""

import os
import sys
import time

from .errors import NotFound, reason_without_paths
from .names import check_task_id
from .order import queue_order
from .printers import print_targets
from .procs import process_start_time, spawn_runner
from .schema import Field
from .settings import read_settings, task_settings
from .states import IllegalMove, State, may_move, move_locked
from .store import ORDER_FOLDER, append_log, mark, marked, unmark, write_file_atomically


# A queue marker may hold notifierSecret: readable by the store's user only
# (the server's, which also runs every runner; docs/SECURITY.md).
QUEUE_MARKER_MODE = 0o600


def queue_task(store, task_id, settings):
    """Queue a task: its marker in ``tasks/queue`` holds the settings it runs with."""
    write_file_atomically(os.path.join(store.folder('queue'), check_task_id(task_id)), settings.encode(),
                          mode=QUEUE_MARKER_MODE)


def queued_settings(store, task_id):
    """The settings in a task's queue marker ('' for a marker without any, or
    one another user wrote: markers are 0600, and a marker this dispatcher
    cannot read must not stop the queue; the task gets the dispatcher's settings)."""
    try:
        return read_settings(os.path.join(store.folder('queue'), check_task_id(task_id)))
    except PermissionError:
        return ''


def dispatch(store, config):
    """Start this node's queued tasks in queue order while a slot of ``maxTasks`` is free.

    The order (``order.queue_order``: a move to the front or back, then
    priority, then submission) is decided here, under the store lock, from
    the records.  A slot is taken first: while every slot is busy no record
    is read, so a node with a long queue pays one listing per submission.

    A slot is an flock on ``tasks/slots/NODE/N`` handed to the runner, so it
    frees itself when the runner ends however it ends; no resident process is
    needed (CGI).  Each node has its own slots: nodes sharing a store never
    take each other's.
    """
    store.ensure()
    with store.lock():
        markers = marked(store, 'queue')
        slot = acquire_slot(store, config.maxTasks) if markers else None
        if slot is None:
            return
        busy_printers = BusyPrinters(store)
        try:
            for task_id in queue_order(store, markers):
                if slot is None:
                    slot = acquire_slot(store, config.maxTasks)
                    if slot is None:
                        return
                if not _queued_here(store, task_id) or not busy_printers.claim(task_id):
                    continue
                try:
                    _start_queued(store, config, task_id, slot)
                finally:
                    os.close(slot)
                    slot = None
        finally:
            if slot is not None:
                os.close(slot)


def _queued_here(store, task_id):
    """True for a queue marker of this node's task (or of no task: _start_queued removes it)."""
    try:
        return store.node.owns(store.read_task(task_id))
    except NotFound:
        return True


class BusyPrinters:
    """The printers (names and ports) this dispatch finds printing: one print
    per printer at a time, the others wait in the queue for it.  Read only
    when a queued print asks, once per dispatch."""

    def __init__(self, store):
        self.store, self.busy = store, None

    def claim(self, task_id):
        """True when the task may start: it is no print, or its printer is
        free (then it is busy for the rest of this dispatch)."""
        targets = print_targets(_record_or_empty(self.store, task_id))
        if not targets:
            return True
        if self.busy is None:
            self.busy = set()
            for running_id in marked(self.store, 'running'):
                self.busy |= print_targets(_record_or_empty(self.store, running_id))
        if targets & self.busy:
            return False
        self.busy |= targets
        return True


def _record_or_empty(store, task_id):
    try:
        return store.read_task(task_id)
    except NotFound:
        return {}


def slot_folder(store):
    """``tasks/slots/NODE``: this node's slot locks."""
    return os.path.join(store.folder('slots'), store.node.name)


def acquire_slot(store, max_tasks):
    """An fd holding the flock of one of this node's free slots, or None when all are taken."""
    import fcntl
    folder = slot_folder(store)
    os.makedirs(folder, exist_ok=True)
    for number in range(max_tasks):
        fd = os.open(os.path.join(folder, str(number)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


def _start_queued(store, config, task_id, slot_fd):
    """Spawn the runner of one queued task (called under the store lock).

    It runs with the settings its submission wrote into the queue marker; a
    marker without any (written by hand) gets the dispatcher's.
    """
    settings = queued_settings(store, task_id) or task_settings(config)
    if config.sandbox:  # a marker is a file in the store: it never turns this node's sandbox off
        settings += 'sandbox = yes\n'
    unmark(store, 'queue', task_id)
    unmark(store, ORDER_FOLDER, task_id)
    try:
        record = store.read_task(task_id)
        # A resume is not a dispatch: only a queued task leaves the queue.
        if not may_move(record, State.RUNNING, expect=State.QUEUED):  # False: it ended meanwhile (killed)
            return
    except NotFound:
        return
    except IllegalMove:  # a marker rrcloud did not write: never a second run
        print(f'rrcloud: refused a queue marker for task {task_id}, which is not queued', file=sys.stderr)
        return
    started = f'{time.time():.5f}'
    try:
        pid = spawn_runner(store, task_id, slot_fd, settings)
    except OSError as exc:  # the log and the record are the client's to read: no path of the server's
        reason = reason_without_paths(exc)
        append_log(store, task_id, f'rrcloud: task {task_id} cannot start: no runner: {reason}')
        move_locked(store, record, State.FAILED, {Field.STIME: started, Field.ETIME: started,
                                                  Field.ERROR: f'cannot start runner: {reason}'})
        return
    # The runner's pid means something only on this node and in this boot: the record says which.
    move_locked(store, record, State.RUNNING, {Field.STIME: started, Field.RUNNER: pid,
                                               Field.RUNNER_START: process_start_time(pid) or '',
                                               **store.node.fields()}, expect=State.QUEUED)
    mark(store, 'running', task_id)


class LocalQueue:
    """``backend = local``, the default: a node's own queue markers and slots.
    What submission and the runner ask of a queue: take a task, start what
    can start."""

    name = 'local'

    def __init__(self, store, config):
        self.store, self.config = store, config

    def check(self):
        """Nothing to check: the store is the queue."""

    def enqueue(self, task_id, settings):
        """Queue a task that runs with ``settings``; start it if a slot is free."""
        queue_task(self.store, task_id, settings)
        self.take(task_id)

    def take(self, task_id):
        """A task's marker is written: start what can start."""
        self.dispatch()

    def place(self, record):
        """A task moved in the queue: dispatch reads its place from its record."""

    def wait_on(self, record, before_id):
        """A pipeline step waits on the step before: queued when that one ends
        (``pipeline.after_step``)."""

    def dispatch(self):
        """Start queued tasks while slots are free."""
        dispatch(self.store, self.config)

