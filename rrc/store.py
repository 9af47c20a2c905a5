"""The flat-file store under ``tasks/``: records, markers, logs, atomic writes and the store lock."""

import os
import time

from .errors import NotFound
from .events import EVENTS_FOLDER, note, remove_events
from .identity import NodeIdentity, boot_tag
from .names import check_task_id, is_record_key, is_single_line, is_task_id
from .removals import note_removed
from .schema import Field
from .trees import remove_tree


# work/ID: a sandboxed tool's private output folder while it runs;
# events/ID: the task's event log (rrc/events.py).
# order/ID: a queued task whose record sets its place in the queue (rrc/order.py).
ORDER_FOLDER = 'order'
STORE_FOLDERS = ('in', 'out', 'log', 'info', 'queue', 'waiting', 'running', 'slots', 'work', ORDER_FOLDER,
                 EVENTS_FOLDER)


def to_json(value, **options):
    """JSON text (json is imported on demand: a CGI text answer never needs it)."""
    import json
    return json.dumps(value, **options)


def new_unique_name():
    """A fresh name of the task-id shape (uniqueness comes from exclusive create)."""
    now = time.time()
    fraction = int((now - int(now)) * 100000)
    # os.urandom, not secrets: importing secrets (hmac, hashlib, random) cost
    # every runner and every CGI submission 10 ms; the bias of % is 2**-12.
    return f'{int(now)}-{fraction:05d}-{int.from_bytes(os.urandom(4), "big") % 1000000:06d}'


# The keys rrcloud writes: checked once here, not once per line of every
# record a listing reads (``info`` of 1,000 tasks checks 26,000 keys).
KNOWN_KEYS = frozenset(value for name, value in vars(Field).items()
                       if name.isupper() and isinstance(value, str) and is_record_key(value))


def format_record(record):
    """Serialize a record as sorted ``key: value`` lines; refuse anything forgeable."""
    lines = []
    for key in sorted(record):
        value = str(record[key])
        if key not in KNOWN_KEYS and not is_record_key(key):
            raise ValueError(f'bad record key: {key!r}')
        # printable text holds no line break and no NUL: the full check only for the rest
        if not value.isprintable() and not is_single_line(value):
            raise ValueError(f'record value of {key} holds a line break or NUL')
        if value != value.strip():
            raise ValueError(f'record value of {key} has surrounding whitespace')
        lines.append(f'{key}: {value}\n')
    return ''.join(lines)


def parse_record(text):
    """Parse ``key: value`` lines into a dict (the inverse of format_record)."""
    record = {}
    for line in text.split('\n'):
        key, sep, value = line.partition(': ')
        if not sep:
            key, sep, value = line.partition(':')
        if sep and (key in KNOWN_KEYS or is_record_key(key)):
            record[key] = value.strip()
    return record


def read_small_file(path):
    """A file's bytes read with os.read: a listing reads a thousand records,
    and a buffered text file object costs each as much as the parse."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b''.join(chunks)
    finally:
        os.close(descriptor)


def temp_writer():
    """``PID@BOOTTAG``: who writes a temp file, as recovery reads it back from
    the name.  The boot tag lets any node of this machine judge the pid, and
    tells a node of another machine (same store on NFS) that it cannot."""
    tag = boot_tag()
    return f'{os.getpid()}@{tag}' if tag else str(os.getpid())


def write_file_atomically(path, data, mode=0o644):
    """Write bytes to ``path`` via a temp file in the same folder, fsync, rename.

    ``mode`` is the file's from its creation on: a 0600 file is never readable
    by others, not even for a moment."""
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f'.{name}.{temp_writer()}.{new_unique_name()}.tmp')
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        unlink_quietly(temp)
        raise


def unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Store:
    """The flat-file task store: ``ROOT/tasks/{in,out,log,info}``, as one node sees it.

    ``node`` (a NodeIdentity; default: this host under its host name) says
    which tasks are this process's to judge, reconcile and start.
    """

    def __init__(self, root, node=None):
        self.root = os.path.abspath(root)
        self.node = node or NodeIdentity.of()
        self.tasks = os.path.join(self.root, 'tasks')
        self.count_cache = None  # (info folder's dev, inode, mtime), its record count

    def folder(self, name):
        """Absolute path of one store folder (in, out, log, info, queue, slots)."""
        return os.path.join(self.tasks, name)

    def ensure(self):
        """Create the store folders on demand."""
        for name in STORE_FOLDERS:
            os.makedirs(self.folder(name), exist_ok=True)

    def info_path(self, task_id):
        return os.path.join(self.folder('info'), check_task_id(task_id))

    def log_path(self, task_id):
        return os.path.join(self.folder('log'), check_task_id(task_id))

    def lock(self):
        """An exclusive lock over record updates, queue and slots."""
        return StoreLock(os.path.join(self.tasks, '.lock'))

    # -- records ------------------------------------------------------------

    def create_task(self, build, preferred_id=None):
        """Store the record ``build(id)`` under a fresh id; exclusive, never overwrites.

        ``preferred_id`` (a valid id, e.g. a server's) is tried first.
        """
        self.ensure()
        while True:
            task_id, preferred_id = preferred_id or new_unique_name(), None
            record = dict(build(task_id), id=task_id)
            temp = os.path.join(self.folder('info'), f'.{task_id}.{temp_writer()}.new')
            write_file_atomically(temp, format_record(record).encode())
            try:
                os.link(temp, self.info_path(task_id))  # fails if the id is taken
                return record
            except FileExistsError:
                continue
            finally:
                unlink_quietly(temp)

    def read_task(self, task_id, checked=False):
        """The record of one task, or NotFound (``checked``: the id is one of
        ``task_ids``).  A file that holds no record of this id (not UTF-8,
        empty: a disk error or another program, for rrcloud writes each
        record whole by rename) is no task either: every reader, a list
        above all, goes on without it."""
        path = os.path.join(self.folder('info'), task_id) if checked else self.info_path(task_id)
        try:
            record = parse_record(read_small_file(path).decode('utf-8'))
        except FileNotFoundError:
            raise NotFound(f'no such task: {task_id}') from None
        except UnicodeDecodeError:
            record = {}
        if record.get(Field.ID) != task_id:
            raise NotFound(f'no readable record of task {task_id}')
        return record

    def write_task(self, record):
        """Replace a task's record atomically."""
        write_file_atomically(self.info_path(record[Field.ID]), format_record(record).encode())

    def update_task(self, task_id, changes, remove=()):
        """Apply ``changes`` under the store lock; returns the new record.

        ``status`` is not among them: ``states.move_task`` is its one writer.
        """
        if Field.STATUS in changes or Field.STATUS in remove:
            raise ValueError('status is written by states.move_task only')
        with self.lock():
            record = self.read_task(task_id)
            record.update({k: str(v) for k, v in changes.items()})
            for key in remove:
                record.pop(key, None)
            self.write_task(record)
            return record

    def task_ids(self):
        """All task ids, oldest first."""
        try:
            names = os.listdir(self.folder('info'))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_task_id(n))

    def remove_task(self, record):
        """Delete a task and all its files (inputs, result, log, record)."""
        task_id = check_task_id(record[Field.ID])
        for path in record.get(Field.IN, '').split(','):
            self.remove_input(path)
        out_name = os.path.basename(record.get(Field.OUT, ''))
        if record.get(Field.OUT, '').startswith('tasks/out/') and out_name:
            unlink_quietly(os.path.join(self.folder('out'), out_name))
        for folder in ('queue', 'waiting', 'running', ORDER_FOLDER):
            unlink_quietly(os.path.join(self.folder(folder), task_id))
        unlink_quietly(self.log_path(task_id))
        remove_events(self, task_id)
        self.note_removed(task_id)
        unlink_quietly(self.info_path(task_id))

    def note_removed(self, task_id):
        """Say in ``tasks/removed`` that a record goes (rrc/removals.py): a
        page's list that comes back later is told.  Never fails the removal."""
        try:
            note_removed(self.tasks, task_id, time.time_ns())
        except OSError as exc:
            import sys
            print(f'rrcloud: warning: the removals log cannot be written: {exc.strerror}', file=sys.stderr)

    # -- inputs -------------------------------------------------------------

    def remove_input(self, path):
        """Remove one stored input (``tasks/in/NAME``), or its whole project folder."""
        parts = path.split('/')
        if len(parts) < 3 or parts[:2] != ['tasks', 'in'] or not parts[2] or parts[2].startswith('.'):
            return
        target = os.path.join(self.folder('in'), parts[2])
        if len(parts) > 3 and os.path.isdir(target) and not os.path.islink(target):
            # rrcloud wrote it (a tool sees inputs read-only): nothing in it
            # resists; what a full disk or a crash leaves, recovery tries again.
            remove_tree(target)
        else:
            unlink_quietly(target)

    def add_input(self, data, ext):
        """Store one input's bytes as ``tasks/in/<unique>[.ext]``; returns the relative path.

        The bytes go to a temp file first (removed on any error, or by
        recovery after a crash), then get their name by exclusive link.
        """
        self.ensure()
        folder = self.folder('in')
        temp = os.path.join(folder, f'.{new_unique_name()}.{temp_writer()}.part')
        try:
            with open(temp, 'xb') as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                else:
                    import shutil
                    shutil.copyfileobj(data, handle)
            while True:
                name = new_unique_name() + (f'.{ext}' if ext else '')
                try:
                    os.link(temp, os.path.join(folder, name))
                    break
                except FileExistsError:
                    continue
        finally:
            unlink_quietly(temp)
        return f'tasks/in/{name}'

    def new_input_folder(self):
        """A fresh folder ``tasks/in/<unique>`` (exclusive); returns its name."""
        self.ensure()
        while True:
            name = new_unique_name()
            try:
                os.mkdir(os.path.join(self.folder('in'), name), 0o755)
                return name
            except FileExistsError:
                continue

    def path_of(self, relative):
        """Absolute path of a store-relative path that came from our own record."""
        return os.path.join(self.root, relative)


class StoreLock:
    """A blocking flock on one file; a context manager."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock
        self.fd = None


def mark(store, folder, task_id):
    """Put a task's marker into ``tasks/queue`` (waiting) or ``tasks/running``."""
    path = os.path.join(store.folder(folder), check_task_id(task_id))
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def unmark(store, folder, task_id):
    """Take a task's marker out of ``tasks/queue`` or ``tasks/running``."""
    unlink_quietly(os.path.join(store.folder(folder), check_task_id(task_id)))


def is_marked(store, folder, task_id):
    """True while a task has its marker in ``tasks/queue`` or ``tasks/running``."""
    return os.path.exists(os.path.join(store.folder(folder), check_task_id(task_id)))


def marked(store, folder):
    """Ids with a marker in ``tasks/queue`` or ``tasks/running``, oldest first."""
    try:
        return sorted(n for n in os.listdir(store.folder(folder)) if is_task_id(n))
    except FileNotFoundError:
        return []


def append_log(store, task_id, line):
    """Add one line of rrcloud's own to a task's log (the tool may be writing to it too)."""
    with open(store.log_path(task_id), 'a', encoding='utf-8') as log:
        log.write(line + '\n')
    note(store, task_id, line.removeprefix('rrcloud: '))

