"""How a task's tool is started: its argv composed anew from the service
conf and the record's checked fields (a record is data, never code), the
program found on the service's path, its environment, what its sandbox
shows it, and the sandbox's argv around it."""

import os
import sys

from . import PROGRAM_FOLDER
from .errors import UsageError
from .names import check_task_id, is_extension, is_task_id
from .procs import find_program, rrcloud_command, task_environment
from .projects import PROJECT_PART_RE
from .records import record_native, record_params, stored_inputs
from .schema import Field
from .services import check_native_args, check_output_ext, check_params, check_prearg, compose_argv


def task_argv(service, record):
    """The argv of a task, composed anew from its service conf and its checked fields.

    A record is data that many processes write: its ``cmd`` is shown, never
    run.  A field that does not check (an input outside tasks/in, an argument
    the service does not allow) means rrcloud did not write it: UsageError.
    """
    stored = stored_inputs(record)
    if not stored:
        raise UsageError('it has no input')
    for prearg, path in stored:
        check_stored_input(path)
        check_prearg(service, prearg)
    native = record_native(record)
    check_native_args(service, native)
    params = record_params(record)
    check_params(service, params)
    out_ext = check_output_ext(service, record.get(Field.OUT_EXT, ''))
    return compose_argv(service, check_task_id(record.get(Field.ID, '')), stored, native,
                        params, out_ext)


def check_stored_input(path):
    """A record's input path names a stored input: ``tasks/in/NAME[.ext]`` or a
    file of a project folder ``tasks/in/FOLDER/PART/...``; else UsageError."""
    parts = path.split('/')
    name, _, ext = parts[2].partition('.') if len(parts) > 2 else ('', '', '')
    stored = (parts[:2] == ['tasks', 'in'] and is_task_id(name)
              and (not ext or (is_extension(ext) and len(parts) == 3))
              and all(PROJECT_PART_RE.match(part) for part in parts[3:]))
    if not stored:
        raise UsageError(f'input {path[:80]!r} is not a stored input')
    return path


def output_format(service, record):
    """The extension of a task's output format ('' for a service with one format)."""
    return record.get(Field.OUT_EXT) or (service.output_exts[0] if service.output_exts else '')


def needs_display(service, record):
    """True when the task's output format is one its tool renders on an X display."""
    return output_format(service, record) in service.display_exts


def tool_root(store, config):
    """The folder a task's tool works in, as the tool sees it: its sandbox's, or the store's."""
    if not config.sandbox:
        return store.root
    from .sandbox import JOB_FOLDER
    return JOB_FOLDER


def absolute_output(service, record, argv, root):
    """The argv with the output given as ``ROOT/tasks/out/NAME`` when the task's format
    is one its tool writes relative to its input's folder (``absoluteOutputExts``);
    the record's ``cmd`` keeps the spec's relative shape."""
    ext = output_format(service, record)
    if service.no_output or ext not in service.absolute_output_exts:
        return argv
    out = 'tasks/out/' + service.output_name(record[Field.ID], ext)
    tail = len(service.output)
    return argv[:-tail] + [word.replace(out, f'{root}/{out}') for word in argv[-tail:]]


# A private X server for the one tool, started and stopped by xvfb-run inside
# the sandbox (its socket in the sandbox's own /tmp; no TCP).
VIRTUAL_DISPLAY = ('xvfb-run', '--auto-servernum')


class Launch:
    """How one task's tool is started: argv, environment, what its sandbox must show."""

    def __init__(self, service, argv, display=False):
        self.env = task_environment(service)
        # How its progress is read from its output (None: it is not), and what
        # the tool needs to write that output as it goes (Slic3r's Perl).
        self.progress = service.progress
        self.env.update(service.progress.env if service.progress else ())
        self.read_paths = list(service.read_paths) + service_path_folders(service)
        self.files = list(service.sandbox_files)
        self.devices = [arg for arg in argv if arg.startswith('/dev/')]  # allowed ports
        self.builtin = service.builtin
        if self.builtin:  # the G-code sender: this program, this Python
            argv = rrcloud_command() + argv[1:]
            self.read_paths += program_paths()
            self.executable = sys.executable
        else:
            self.executable = find_program(argv[0], service.path)
        self.argv = [self.executable] + argv[1:]
        self.missing = None if self.executable else argv[0]
        if display:
            runner = find_program(VIRTUAL_DISPLAY[0], service.path)
            self.argv = [runner] + list(VIRTUAL_DISPLAY[1:]) + self.argv
            self.missing = self.missing or (None if runner else f'{VIRTUAL_DISPLAY[0]} (Debian package xvfb)')
        self.printer = None  # a named printer whose G-code the built-in sender gets (runner.task_printer)
        self.exit_code = None


def service_path_folders(service):
    """The folders of a service's PATH: the sandbox must show its tool (it
    leaves out those under /usr, which it shows anyway)."""
    return [real for real in (os.path.realpath(f) for f in service.path.split(':') if f)
            if os.path.isdir(real)]


def program_paths():
    """What the built-in sender needs to run in a sandbox: this program, its
    package and bytecode, and the Python it runs on (nothing of the store)."""
    paths = [os.path.join(PROGRAM_FOLDER, name) for name in ('rrcloud.py', 'rrc', '__pycache__')]
    return [p for p in paths if os.path.exists(p)] + sorted({sys.prefix, sys.base_prefix, sys.exec_prefix})


def sandbox_command(task, launch, work, limits):
    """The bwrap argv around a task's tool: its own inputs, its work folder,
    nothing else; inside, the tool runs under its rlimits."""
    from .sandbox import Sandbox, is_character_device
    inputs = {}
    for path in task.get(Field.IN).split(','):
        top = '/'.join(path.split('/')[:3])  # a project binds its whole folder
        inputs[top] = task.store.path_of(top)
    # A missing port is left out: the sender inside reports it in one line.
    devices = [d for d in launch.devices if is_character_device(d)]
    jail = Sandbox([(host, inside) for inside, host in inputs.items()], work,
                   read_paths=launch.read_paths, devices=devices, files=launch.files)
    launch.env.update(HOME='/tmp', TMPDIR='/tmp')
    return jail.command(limits.rlimit_argv() + launch.argv)
