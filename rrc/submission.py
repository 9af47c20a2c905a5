"""Submitting a task: its inputs stored, its record created, then queued.

Everything a client sends is checked before anything is stored; a check
that fails leaves nothing behind.
"""

import os
import time

from .inputnames import input_names_field
from .events import status_changed
from .errors import RRCloudError, UsageError
from .names import is_extension
from .notifier import check_notifier_target, notifier_events_field
from .order import mark_placed, parse_priority
from .printers import resolve_printer
from .projects import PROJECT_SUFFIXES, is_project_name, unpack_project
from .backends import task_queue
from .records import native_field
from .schema import Field
from .services import (CONFIG_INPUT_MAX_BYTES, check_format_agrees, check_native_args, check_output_ext,
                       check_params, check_prearg, compose_argv, filter_config, filter_ini, takes_ini)
from .settings import task_settings
from .states import State, initial_fields
from .store import to_json


class Input:
    """One input of a submission: bytes or an open file, plus the name it came with."""

    def __init__(self, data, filename='', prearg='', shown='', source=''):
        self.data = data
        self.filename = filename
        self.prearg = prearg
        # How the user named it, for the tool's messages: a file's path, a
        # project's folder ('' or 'job/'), '' for content.
        self.shown = shown
        # The file it was read from on the client ('' for content): a tool
        # names its result after it (slic3r cube.stl writes cube.gcode).
        self.source = source

    def extension(self, service):
        """The extension to keep (tools need it), from the filename or the service."""
        base = os.path.basename(self.filename or '')
        if '.' in base:
            ext = base.rsplit('.', 1)[1]
            if is_extension(ext):
                return ext
        return service.input_ext


def input_size(store, path):
    """Bytes of one stored input; a project counts all its files."""
    parts = path.split('/')
    if len(parts) > 3:
        folder = os.path.join(store.folder('in'), parts[2])
        return sum(os.path.getsize(os.path.join(top, name))
                   for top, _, names in os.walk(folder) for name in names)
    return os.path.getsize(store.path_of(path))


def store_input(store, service, item):
    """Copy one input into the store: a file, or a project archive unpacked."""
    if is_project_name(item.filename):
        return unpack_project(store, item.data)
    return store.add_input(item.data, item.extension(service))


def submit_task(store, config, service, inputs, native_args=(), notifier='', client='localhost', args='',
                params=(), out_ext='', notifier_events='', priority=0, cache=True):
    """Validate, store inputs and record, queue the task and start what can start.

    A task whose result the cache holds (rrc/cache.py) is complete at once:
    never queued, nothing runs; ``cache=False`` (``--no-cache``, ``cache=no``)
    neither looks there nor stores its result there.

    ``params``: (option, value) pairs of ``paramArgs``; ``out_ext``: the
    output format asked for, one of ``outputExts`` ('' for the default);
    ``notifier_events``: when the notifier is called (``started,ended``; ''
    for the default, ended); ``priority``: its place in this node's queue,
    -100 to 100 (rrc/order.py).
    """
    priority = parse_priority(priority)
    queue = task_queue(store, config)
    queue.check()  # a farm's Redis down: refused before anything is written
    fields = dict({Field.PRIORITY: priority} if priority else {}, **({} if cache else {Field.CACHE: 'no'}))
    record = create_task_record(store, config, service, inputs, native_args, notifier, client, args,
                                params, out_ext, notifier_events=notifier_events, fields=fields or None)
    served = from_cache(store, config, service, record)
    if served:
        return served
    if priority:  # before its queue marker: dispatch reads the record of a marked task
        mark_placed(store, record[Field.ID])
    try:
        queue.enqueue(record[Field.ID], task_settings(config, service.name))
    except RRCloudError:  # never a task accepted that no queue holds: nothing stays
        store.remove_task(record)
        raise
    return store.read_task(record[Field.ID])


def create_task_record(store, config, service, inputs, native_args=(), notifier='', client='localhost',
                       args='', params=(), out_ext='', state=State.QUEUED, fields=None, notifier_events=''):
    """Check a task, store its inputs and create its record in ``state``
    (queued, or waiting: a pipeline step whose main input comes later) with
    ``fields`` added; nothing is stored when a check fails."""
    for item in inputs:
        check_prearg(service, item.prearg)
    # A print that names its printer runs on that printer's port; its record keeps the name.
    resolved, printer_fields = resolve_printer(store.root, service, native_args)
    fields = dict(fields or {}, **printer_fields)
    check_native_args(service, list(resolved))
    # On a farm the port is the worker's that serves the printer (its own
    # printers/NAME.conf): the record keeps the name as the first native word.
    native_args = native_args if printer_fields and config.backend == 'rq' else resolved
    check_params(service, params)
    check_output_ext(service, out_ext)
    check_format_agrees(service, list(native_args), out_ext)
    if not inputs and state != State.WAITING:
        raise UsageError('missing input: give at least one input file or content')
    events = notifier_events_field(notifier, notifier_events)
    if notifier:  # refused now, as its call would be (a DNS look-up): never dropped unseen at the end
        check_notifier_target(notifier, client, config.notifierAllow)
    inputs = [filter_config_input(service, item) for item in inputs]
    stored = []
    try:
        for item in inputs:
            stored.append((item.prearg, store_input(store, service, item)))
            check_input_kind(service, *stored[-1])
        size_in = sum(input_size(store, path) for _, path in stored)
        record = store.create_task(lambda task_id: dict(_new_record(
            service, task_id, stored, native_args, notifier, client, args, size_in, params, out_ext, state),
            server=config.serverName, **{Field.NODE: store.node.name}, **events,
            **client_names_field(inputs), **(fields or {})))
    except BaseException as exc:
        for _, path in stored:
            store.remove_input(path)
        if isinstance(exc, ValueError):  # a field that cannot be a record value
            raise UsageError(str(exc)) from None
        raise
    return status_changed(store, record)


def from_cache(store, config, service, record):
    """A new task served from the cache (its record final), or None: its key
    with this node's tool version (a farm's: the version its workers last
    claimed with).  A task that ends here calls its notifier as a runner would."""
    from .cache import farm_version, finish_from_cache, key_of_task
    version = farm_version(store, service.name) if config.backend == 'rq' else None
    if version == '':
        return None
    key = key_of_task(store, config, service, record, version)
    try:
        final = finish_from_cache(store, record, key) if key else None
    except OSError:  # an entry this process may not read or link: the task runs
        return None
    if final and final.get(Field.NOTIFIER):
        from .notifier import TaskNotifier
        TaskNotifier(store, config, final).ended(final)
    return final


def client_names_field(inputs, main_only=False):
    """The record's ``inputNames`` for these inputs (a project archive named
    by its folder's name: ``proj.pov.tgz`` is ``proj.pov``); ``main_only``:
    those without a prearg (a sent task's local record has no ``in`` to match)."""
    return input_names_field([without_archive_suffix(item.filename or '') for item in inputs
                              if not (main_only and item.prearg)])


def without_archive_suffix(name):
    """A project archive's name without ``.tgz`` or ``.tar.gz``; any other name as it is."""
    if is_project_name(name):
        return name[:-len(next(s for s in PROJECT_SUFFIXES if name.lower().endswith(s)))]
    return name


def check_input_kind(service, prearg, path):
    """A main input (no prearg) of a service with ``inputExts`` must be of one of those kinds."""
    if not prearg and not service.accepts_input(path):
        raise UsageError(f'{service.name} takes {input_kinds(service)} files, '
                         f'not {os.path.basename(path).rpartition(".")[2]!r}')


def input_kinds(service):
    """The kinds of main input a service takes, for messages: ``.gcode, .gco, .g``."""
    return ', '.join(f'.{ext}' for ext in service.input_exts or [service.input_ext] if ext) or 'any'


def _new_record(service, task_id, stored, native_args, notifier, client, args, size_in, params, out_ext,
                state=State.QUEUED):
    record = {
        Field.SERVICE: service.name,
        **initial_fields(state),
        Field.CTIME: f'{time.time():.5f}',
        Field.CMD: shown_command(service, task_id, stored, native_args, params, out_ext),
        Field.IN: ','.join(path for _, path in stored),
        Field.OUT: '' if service.no_output else 'tasks/out/' + service.output_name(task_id, out_ext),
        Field.CLIENT: client,
        Field.SIZE_IN: size_in,
    }
    # What the runner composes the argv from (it never runs ``cmd``, which is
    # only shown): the checked native arguments and each input's prearg.
    if native_args:
        record[Field.NATIVE_ARGS] = native_field(native_args)
    if params:  # JSON: a value may hold spaces ("a label"), one line all the same
        record[Field.PARAMS] = to_json([list(pair) for pair in params])
    if out_ext:
        record[Field.OUT_EXT] = out_ext
    if any(prearg for prearg, _ in stored):
        record[Field.PREARGS] = ','.join(prearg for prearg, _ in stored)
    if notifier:
        record[Field.NOTIFIER] = notifier
    if args:
        record[Field.ARGS] = args
    return record


def shown_command(service, task_id, stored, native_args, params, out_ext):
    """The record's ``cmd``: the tool's command line as a shell would show it
    (only shown; the runner composes the argv anew)."""
    import shlex
    return shlex.join(compose_argv(service, task_id, stored, native_args, params, out_ext))


def filter_config_input(service, item):
    """A config input (given with an argInput prefix, e.g. slic3r's --load=)
    of a service with ``configKeys``: only its allowed settings go on
    (``services.filter_config``); an INI input of a tool whose options table
    has INI keys (POV-Ray) is checked option by option (``services.filter_ini``)."""
    ini = takes_ini(service, item.filename or '')
    if not ini and (not item.prearg or service.config_keys is None):
        return item
    data = item.data if isinstance(item.data, bytes) else item.data.read(CONFIG_INPUT_MAX_BYTES + 1)
    kept = filter_ini(service, data) if ini else filter_config(service, data)
    return Input(kept, item.filename, item.prearg, item.shown, item.source)
