"""The result cache: a task whose service, tool version, composed arguments
(a client's ``--backend=`` among them; not the engine rrc/engines.py picks
at run time: both give the same solid) and input bytes equal an earlier
complete task's gets that task's result at once, as a task of its own
whose tool never runs.

The key is a SHA-256 (``task_key``) over: the key's own format; the tool's
version (the binary's path, time and size where the tool does not say one);
the service's name, its conf and the files beside it (``NAME.options``,
``NAME.sandbox``...) and its companion files (the Manifold runner); the record's fields that reach the tool (``KEY_FIELDS``:
native arguments, params, output format, preargs, the engine); the argv as
the runner composes it, the task's id and its inputs' stored names replaced
by placeholders; every input's bytes, for a project every file of its
unpacked folder by its relative name (an extra file can only make a miss);
and the names, sizes and times of the files in the service's
``cacheWatch`` folders (a tool's libraries) and of the folders under its
``cacheWatchFolders`` (a font tree).  Labels and lengths go in
before each part, so no two different tasks hash the same bytes.

An entry lives under ``tasks/cache/``: ``KEY`` (its facts, ``key: value``
lines; written last, removed first, its mtime is its last use), ``KEY.out``
(the result: a hard link to the task's output, or a copy) and ``KEY.log``
(the tool's log).  It is the cache's own: removing the task it came from
leaves it.  Everything is written by temp file and rename; the cache's own
lock (``tasks/cache/.lock``) orders writers and eviction (several
front-ends on one store), a reader needs none (it reads the log before it
links the result: an entry evicted while it is read is a miss).  At most
``cacheSize`` bytes of disk (the blocks of results, logs and facts) and
MAX_ENTRIES entries, the least recently used evicted first; a result larger
than that is never stored.  Keys reach paths only as 64 lower-case hex
digits; nothing is cached when the sandbox is off.

Where it is asked: ``submission`` (a task whose key hits is created and
moved through the state machine to complete at once, never queued; on a
farm with the tool version its workers last claimed with), the runner just
before it starts the tool (identical tasks submitted at once, a pipeline's
steps) and a farm's claim (with the claiming worker's version: the worker
runs nothing).  A result is stored only when its task completed: by the
runner, and by a farm's front-end when a worker hands one back.
"""

import os
import time

from .errors import RRCloudError
from .printers import PRINT_SERVICES
from .records import record_native, record_params, stored_inputs
from .schema import Field, TaskStatus
from .services import compose_argv
from .store import (StoreLock, format_record, new_unique_name, parse_record, temp_writer, unlink_quietly,
                    write_file_atomically)
from .toolversions import NOT_INSTALLED, UNKNOWN, ToolVersions, binary_key, find_program

CACHE_FOLDER = 'cache'
# Changed whenever what goes into a key changes: old entries then never hit.
KEY_FORMAT = 'rrcloud-cache-1'
# The record's fields that reach the tool, beside its inputs.  ``engine``:
# OpenSCAD's engine where the record names one (a different engine, a
# different key); a field that joins the tool's command line joins this list.
ENGINE_FIELD = 'engine'
KEY_FIELDS = (Field.SERVICE, Field.NATIVE_ARGS, Field.PARAMS, Field.OUT_EXT, Field.PREARGS, ENGINE_FIELD)
HIT, NO = 'hit', 'no'
# The most of a tool's log an entry keeps (a longer one: a line saying so).
LOG_BYTES = 1024 * 1024
# The most files of a cacheWatch folder looked at (a library, not a disk).
WATCH_FILES = 4096
# What the farm's workers last claimed a service's tasks with: tasks/cache/versions/SERVICE.
VERSIONS_FOLDER = 'versions'
# The longest tool version a key, a record and tasks/cache/versions hold as it
# is; a longer one is cut with the SHA-256 of the whole after it (``version_key``).
VERSION_CHARS = 80
HEX = frozenset('0123456789abcdef')
# The most entries the cache keeps, whatever their size (a folder of small
# results stays one a listing and an eviction read quickly).
MAX_ENTRIES = 100_000
# The record's fields an entry keeps of its task (a slice's G-code facts).
KEPT_PREFIX = 'gcode'
# ... and these fields: which of OpenSCAD's engines rendered the result (rrc/engines.py).
KEPT_FIELDS = (Field.ENGINE,)


class Entry:
    """One cached result: its key, facts and files."""

    def __init__(self, folder, key, facts):
        self.key, self.facts = key, facts
        self.out = os.path.join(folder, key + '.out')
        self.log = os.path.join(folder, key + '.log')

    @property
    def origin(self):
        """The id of the task whose result this is."""
        return self.facts.get(Field.CACHE_OF, '')


def cache_folder(store):
    return os.path.join(store.tasks, CACHE_FOLDER)


def is_cacheable(config, service, record):
    """True when this task may be served from the cache and its result stored:
    the cache is on, the service allows it (never a print, nothing without
    output), its tool runs in the sandbox (``sandbox = no`` lets an absolute
    include reach the tool but not the key) and the task did not say ``cache: no``."""
    return (config.cacheSize > 0 and config.sandbox and getattr(service, 'cache', False)
            and service.name not in PRINT_SERVICES
            and not service.no_output and record.get(Field.CACHE) != NO)


# -- the key ----------------------------------------------------------------

def tool_version(store, service):
    """The version of this node's tool for ``service``, as the key takes it:
    what it says (``OpenSCAD 2021.01``), with its binary's path, time and size
    where it says nothing usable; '' when it is not installed (no key)."""
    version = ToolVersions(store.root).of_services({service.name: service})[service.name]
    if version == NOT_INSTALLED:
        return ''
    if version == UNKNOWN:
        path = find_program(service.cmd[0], service.path)
        return f'{UNKNOWN} {binary_key(path)}' if path else ''
    return version_key(version)


def version_key(version):
    """A tool version as the cache holds it: itself when at most VERSION_CHARS,
    else its start and the SHA-256 of the whole (two long versions that differ
    only at their end never share a key)."""
    import hashlib
    if len(version) <= VERSION_CHARS:
        return version
    digest = hashlib.sha256(version.encode('utf-8', 'replace')).hexdigest()[:16]
    return f'{version[:VERSION_CHARS - 24]} sha256:{digest}'


def is_key(text):
    """True for a key as the cache names its files: 64 lower-case hex digits."""
    return isinstance(text, str) and len(text) == 64 and set(text) <= HEX


def farm_version(store, service_name):
    """The tool version the farm's workers last claimed ``service_name``'s
    tasks with ('' before any claimed one)."""
    try:
        with open(os.path.join(cache_folder(store), VERSIONS_FOLDER, service_name), encoding='utf-8') as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return ''


def parse_versions(text):
    """{service: version} of ``SERVICE=VERSION,...`` (``toolversions.versions_field``,
    a worker's claim; a version never holds ``,`` or ``=``: ``toolversions.printable``);
    a tool that is not installed or says no version is left out."""
    found = {}
    for pair in (text or '').split(','):
        name, _, version = pair.partition('=')
        version = ''.join(c for c in version if c.isprintable()).strip()
        if name and version and version not in (NOT_INSTALLED, UNKNOWN):
            found[name.strip()] = version_key(version)
    return found


def note_farm_version(store, service_name, version):
    """A worker claimed a ``service_name`` task with ``version``: kept for the next submissions."""
    if not version or farm_version(store, service_name) == version:
        return
    folder = os.path.join(cache_folder(store), VERSIONS_FOLDER)
    os.makedirs(folder, exist_ok=True)
    write_file_atomically(os.path.join(folder, service_name), version.encode('utf-8'))


def task_key(store, service, record, version):
    """The SHA-256 (hex) of everything that decides a task's result (see the
    module's docstring); ``version``: its tool's.  UsageError for a record
    whose fields do not read."""
    import hashlib
    digest = hashlib.sha256()

    def part(label, data):
        data = data if isinstance(data, bytes) else str(data).encode('utf-8')
        digest.update(f'{label}\0{len(data)}\0'.encode('utf-8'))
        digest.update(data)

    part('format', KEY_FORMAT)
    part('tool', version)
    for field in KEY_FIELDS:
        part(field, record.get(field, ''))
    for path in conf_files(service):
        part('conf ' + os.path.basename(path), read_bytes(path))  # the runner by its name: where it lies is no matter
    stored = stored_inputs(record)
    part('argv', '\0'.join(placeholder_argv(service, record, stored)))
    part('watch', watched_files(service))
    for number, (_, path) in enumerate(stored):
        hash_input(part, number, store, path)
    return digest.hexdigest()


def conf_files(service):
    """The service's conf and the files beside it that belong to it (``NAME.*``),
    then the companion files it runs or hands the tool whatever their names
    (OpenSCAD's Manifold runner ``openscad-manifold.mjs``, ``sandboxFiles``)."""
    folder, name = os.path.split(service.source)
    stem = name[:-len('.conf')] if name.endswith('.conf') else name
    try:
        names = sorted(n for n in os.listdir(folder) if n.startswith(stem + '.') and not n.startswith('.'))
        found = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    except OSError:
        found = [service.source]
    return found + [path for path in companion_files(service) if path not in found]


def companion_files(service):
    """The files a service's conf names that its runs read (by their host paths)."""
    runner = [service.manifold_runner] if getattr(service, 'manifold_runner', '') else []
    return runner + [host for host, _ in getattr(service, 'sandbox_files', ())]


def read_bytes(path):
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except OSError:
        return b''


def placeholder_argv(service, record, stored):
    """The argv the runner composes, with the task's id as ``$id`` and each
    input's stored name as ``$inN`` (its extension, or its path inside a
    project, kept: the tool sees those)."""
    argv = compose_argv(service, record.get(Field.ID, ''), stored, record_native(record),
                        record_params(record), record.get(Field.OUT_EXT, ''))
    tops = [stored_top(path) for _, path in stored]
    words = []
    for word in argv:
        word = word.replace(record.get(Field.ID, '') or '\0', '$id')
        for number, top in enumerate(tops):
            word = word.replace(top, f'$in{number}')
        words.append(word)
    return words


def stored_top(path):
    """``tasks/in/NAME`` of a stored input, without its extension: what is unique to the task."""
    parts = path.split('/')
    return '/'.join(parts[:2] + [parts[2].split('.', 1)[0]]) if len(parts) > 2 else path


def hash_input(part, number, store, path):
    """One input into the key: a file's bytes, or a project's every file by its relative name."""
    parts = path.split('/')
    if len(parts) > 3:  # tasks/in/FOLDER/main.scad: the whole unpacked folder
        top = store.path_of('/'.join(parts[:3]))
        part(f'project {number}', '/'.join(parts[3:]))
        for relative in project_files(top):
            part(f'file {number} {relative}', read_input(os.path.join(top, relative)))
    else:
        part(f'input {number}', read_input(store.path_of(path)))


def project_files(top):
    """Every file of an unpacked project, by its name relative to the project's folder, sorted."""
    found = []
    for folder, dirs, names in os.walk(top):
        dirs.sort()
        found += [os.path.relpath(os.path.join(folder, name), top) for name in names]
    return sorted(found)


def read_input(path):
    """A stored input's bytes (OSError when it cannot be read: then there is no key)."""
    with open(path, 'rb') as handle:
        return handle.read()


def watched_files(service):
    """Names, sizes and times of the files in the service's ``cacheWatch``
    folders, then the names and times of the folders under its
    ``cacheWatchFolders`` (a font tree: a package adds, removes or replaces a
    file by rename, which changes its folder's time), at most WATCH_FILES of
    them: a library or a font that changes changes the key."""
    lines = []
    for path in watched_paths(service):
        if len(lines) == WATCH_FILES:
            lines.append('...')
            break
        lines.append(stat_line(path))
    return '\n'.join(line for line in lines if line)


def watched_paths(service):
    """The files of the ``cacheWatch`` folders, then the folders under the ``cacheWatchFolders``, in order."""
    for top in service.cache_watch:
        for folder, dirs, names in os.walk(top):
            dirs.sort()
            yield from (os.path.join(folder, name) for name in sorted(names))
    for top in getattr(service, 'cache_watch_folders', ()):
        for folder, dirs, _ in os.walk(top):
            dirs.sort()
            yield folder


def stat_line(path):
    """``PATH SIZE MTIME`` of a watched file or folder ('' when it is gone)."""
    try:
        info = os.stat(path)
    except OSError:
        return ''
    return f'{path} {info.st_size} {info.st_mtime_ns}'


def key_of_task(store, config, service, record, version=None):
    """The task's key, or '' when it is not to be cached or has none (its tool
    is not installed, an input cannot be read, a field does not read)."""
    if not is_cacheable(config, service, record):
        return ''
    version = tool_version(store, service) if version is None else version
    if not version:
        return ''
    try:
        return task_key(store, service, record, version)
    except (RRCloudError, OSError, ValueError):
        return ''


# -- entries ----------------------------------------------------------------

def lookup(store, key):
    """The entry of ``key`` (its use noted, for LRU), or None (a key that is
    not one, e.g. a record's field someone wrote by hand, too)."""
    if not is_key(key):
        return None
    folder = cache_folder(store)
    path = os.path.join(folder, key)
    try:
        with open(path, encoding='utf-8') as handle:
            facts = parse_record(handle.read())
    except (OSError, UnicodeDecodeError):
        return None
    try:
        os.utime(path)
    except OSError:  # another user's entry (the CLI as root, the CGI as www-data): used, not noted
        pass
    entry = Entry(folder, key, facts)
    return entry if os.path.isfile(entry.out) else None


def linked_beside(source, destination):
    """``source``'s bytes at a temp name beside ``destination`` (a hard link
    where the file system allows, else a copy): its path, or None when
    ``source`` was evicted meanwhile.  The caller renames or removes it."""
    folder, name = os.path.split(destination)
    temp = os.path.join(folder, f'.{name}.{temp_writer()}.{new_unique_name()}.tmp')
    try:
        try:
            os.link(source, temp)
        except FileNotFoundError:  # evicted meanwhile: the caller's miss
            return None
        except OSError:  # another file system, protected hard links: a copy
            import shutil
            shutil.copyfile(source, temp)
    except BaseException:
        unlink_quietly(temp)
        raise
    return temp


def link_or_copy(source, destination):
    """``destination`` becomes ``source``'s bytes: a hard link where the file
    system allows, else a copy (temp file and rename either way);
    FileNotFoundError when ``source`` is gone."""
    temp = linked_beside(source, destination)
    if temp is None:
        raise FileNotFoundError(source)
    try:
        os.replace(temp, destination)
    finally:
        unlink_quietly(temp)


def hit_log(entry, record, log):
    """The log of a task served from the cache: the tool's log ``log`` of the
    task it came from, naming this task's own inputs and id (so its client
    reads its own file names), then a line saying where it came from."""
    note = (f'rrcloud: task {record[Field.ID]}: the result of task {entry.origin} from the cache '
            f'(key {entry.key[:16]}); nothing ran\n').encode()
    return log_with_names(log, placeholders(), task_names(record)) + note


def task_names(record):
    """The words of a task's log that are its own: its id, each input's stored name."""
    return [record[Field.ID]] + [stored_top(path) for _, path in stored_inputs(record)]


def placeholders(count=64):
    """What an entry's log holds in place of ``task_names`` (NUL-marked: never a tool's text)."""
    return ['\0id\0'] + [f'\0in{number}\0' for number in range(count)]


def log_with_names(log, old, new):
    """``log`` with each word of ``old`` replaced by the same place's in ``new``."""
    for before, after in zip(old, new):
        if before:
            log = log.replace(before.encode(), after.encode())
    return log


def hit_fields(entry):
    """The fields of a record served from ``entry``."""
    kept = {key: value for key, value in entry.facts.items() if is_kept(key)}
    return dict(kept, **{Field.CACHE: HIT, Field.CACHE_OF: entry.origin, Field.CACHE_KEY: entry.key,
                         Field.EXIT_CODE: '0'})


def is_kept(field):
    """True for a field of the original's record that a hit's record gets too."""
    return field.startswith(KEPT_PREFIX) or field in KEPT_FIELDS


def prepare_hit(store, record, key):
    """What serving ``record`` (a task not yet ended) from ``key`` takes, made
    ready outside any lock: (the result linked at a temp name beside its
    output, its log, its final fields), or None on a miss.  The log is read
    before the result is linked: eviction removes the facts, then the result,
    then the log, so an entry whose log is gone is a miss, never a hit with an
    empty log."""
    entry = lookup(store, key)
    if entry is None or not record.get(Field.OUT):
        return None
    try:
        log = read_input(entry.log)
    except OSError:
        return None
    temp = linked_beside(entry.out, store.path_of(record[Field.OUT]))
    return (temp, hit_log(entry, record, log), hit_fields(entry)) if temp else None


def put(store, config, key, record):
    """Store a complete task's result under ``key`` (not when larger than
    ``cacheSize``; an entry already there is only noted as used); then evict
    down to ``cacheSize``.  True when the cache holds it."""
    if not is_key(key) or record.get(Field.STATUS) != TaskStatus.COMPLETE or not record.get(Field.OUT):
        return False
    out = store.path_of(record[Field.OUT])
    try:
        size = os.path.getsize(out)
    except OSError:
        return False
    log = log_with_names(task_log(store, record[Field.ID]), task_names(record), placeholders())
    if not size or size + len(log) > config.cacheSize:
        return False
    folder = cache_folder(store)
    os.makedirs(folder, exist_ok=True)
    with cache_lock(store):
        if lookup(store, key):
            return True
        entry = Entry(folder, key, {})
        link_or_copy(out, entry.out)
        write_file_atomically(entry.log, log)
        facts = {Field.CACHE_OF: record[Field.ID], Field.SERVICE: record.get(Field.SERVICE, ''),
                 Field.SIZE_OUT: size, Field.CTIME: f'{time.time():.5f}',
                 **{k: v for k, v in record.items() if is_kept(k)}}
        write_file_atomically(os.path.join(folder, key), format_record(facts).encode())
        evict_locked(store, config.cacheSize)
    return True


def task_log(store, task_id):
    """A task's log as an entry keeps it (a too long one: a line saying so)."""
    try:
        with open(store.log_path(task_id), 'rb') as handle:
            log = handle.read(LOG_BYTES + 1)
    except OSError:
        return b''
    return log if len(log) <= LOG_BYTES else b'rrcloud: (the log of that run was too long to keep)\n'


def cache_lock(store):
    return StoreLock(os.path.join(cache_folder(store), '.lock'))


def entries(store):
    """(last use, key, disk use) of every entry, least recently used first:
    the blocks its facts, result and log take (a small file takes a block)."""
    folder = cache_folder(store)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if not is_key(name):
            continue
        try:
            used = os.stat(os.path.join(folder, name))
            size = sum(disk_use(os.path.join(folder, name + suffix)) for suffix in ('.out', '.log'))
        except OSError:
            continue
        found.append((used.st_mtime_ns, name, used.st_blocks * 512 + size))
    return sorted(found)


def disk_use(path):
    """The bytes of disk a file takes (its blocks), 0 when it is gone."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def evict_locked(store, limit):
    """Remove the least recently used entries until the cache holds at most
    ``limit`` bytes of disk and MAX_ENTRIES entries (the caller holds
    ``cache_lock``); the keys removed."""
    found = entries(store)
    total = sum(size for _, _, size in found)
    removed = []
    for number, (_, key, size) in enumerate(found):
        if total <= limit and len(found) - number <= MAX_ENTRIES:
            break
        remove_entry(store, key)
        total -= size
        removed.append(key)
    return removed


def remove_entry(store, key):
    """An entry's facts first (no reader finds it then), then its files."""
    if not is_key(key):
        return
    folder = cache_folder(store)
    for suffix in ('', '.out', '.log'):
        unlink_quietly(os.path.join(folder, key + suffix))


def remove_orphans(store):
    """Recovery: the result or log of an entry without its facts (a writer
    that died between its renames, an eviction cut short) goes."""
    folder = cache_folder(store)
    if not os.path.isdir(folder):
        return
    with cache_lock(store):  # a writer holds it from its first file to its facts
        names = set(os.listdir(folder))
        for name in names:
            key, dot, suffix = name.partition('.')
            if dot and suffix in ('out', 'log') and is_key(key) and key not in names:
                unlink_quietly(os.path.join(folder, name))


def finish_from_cache(store, record, key):
    """Serve a task (queued: at submission or a farm's claim; running: its
    runner) from the cache: its result and log in place, then moved through
    the state machine (queued, running, complete) like any task.  The final
    record, or None on a miss (or when the task ended meanwhile: then nothing
    of the hit is left, neither its output nor its log)."""
    from .states import FINAL, State, finish_locked, move_locked, state_of
    prepared = prepare_hit(store, record, key)
    if prepared is None:
        return None
    temp, log, fields = prepared
    try:
        with store.lock():  # the state checked before anything of the hit is in place
            current = store.read_task(record[Field.ID])
            if state_of(current) in FINAL or not state_of(current):
                return None
            os.replace(temp, store.path_of(record[Field.OUT]))
            with open(store.log_path(record[Field.ID]), 'ab') as handle:
                handle.write(log)
            if state_of(current) == State.QUEUED:
                current = move_locked(store, current, State.RUNNING, {Field.STIME: f'{time.time():.5f}'},
                                      remove=(Field.QUEUED,), expect=State.QUEUED)
            return finish_locked(store, current, TaskStatus.COMPLETE, **fields) if current else None
    finally:
        unlink_quietly(temp)


def cache_usage(store):
    """(entries, bytes) the cache holds."""
    found = entries(store)
    return len(found), sum(size for _, _, size in found)
