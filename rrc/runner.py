"""The detached runner of one task: compose the argv, sandbox and supervise the tool, judge its exit."""

import os
import sys
import time

from . import PROGRAM_FOLDER
from .config import Config
from .errors import ConfigError, ExitCode, RRCloudError, UsageError, reason_without_paths
from .events import ProgressEvents, note
from .identity import starting_node
from .limits import ToolLimits, format_size, limit_error
from .names import check_task_id, is_extension, is_single_line, is_task_id
from .notifier import TaskNotifier
from .procs import (kill_process_group, process_start_time, rrcloud_command, task_environment,
    terminate_group)
from .projects import PROJECT_PART_RE
from .schema import YES, Field, TaskStatus
from .services import (check_native_args, check_output_ext, check_params, check_prearg,
    compose_argv, find_service, load_services)
from .states import finish_task
from .store import Store, append_log, temp_writer, unlink_quietly, unmark
from .queue import dispatch
from .records import record_params, stored_inputs
from .settings import task_config
from .toollog import ToolLog
from .trees import remove_tree, shown_left


# Less free space than this after a failed task: the disk filled up.
DISK_NEARLY_FULL_BYTES = 64 * 1024


def run_task(store, settings, task_id):
    """The detached runner: run one task's tool, record how it ended, start the next."""
    record = store.read_task(task_id)
    try:
        config = task_config(settings, store)
    except ConfigError as exc:
        return cannot_start(store, record, str(exc))
    if record.get(Field.STATUS) != TaskStatus.BUSY:  # killed before it could start
        return _runner_done(store, config, task_id, record)
    try:
        service = find_service(*load_services(store.root), record.get(Field.SERVICE, ''))
    except RRCloudError as exc:
        return cannot_start(store, record, str(exc), config)
    if record.get(Field.JOB):
        prepare_hand_off(store, record)
    notifier = TaskNotifier(store, config, record)
    try:
        outcome = execute(store, config, service, record, on_start=notifier.started)
    except Exception as exc:  # a runner never leaves a task busy (nor names a path of the server's)
        outcome = (TaskStatus.FAILED, {'error': f'runner error: {reason_without_paths(exc)}'})
    status, fields = outcome
    if status == TaskStatus.FAILED:
        fields = remove_output_of_full_disk(store, record, fields)
    finished = finish_task(store, task_id, status, **fields)
    return _runner_done(store, config, task_id, finished or store.read_task(task_id), notifier)


def prepare_hand_off(store, record):
    """A pipeline step whose next step runs on another server: import what
    sending it there needs while the tool runs (on a Raspberry Pi, http.client
    and requests take longer to import than the whole hand-off may)."""
    from .pipeline import next_step_runs_elsewhere
    if next_step_runs_elsewhere(store, record):
        import threading
        threading.Thread(target=_import_forwarder, daemon=True).start()


# What the forwarder imports: the upload's http.client, then requests (it follows the step with it).
FORWARDER_MODULES = ('http.client', f'{__package__}.lighthttp', f'{__package__}.forward',
                     f'{__package__}.remote', 'requests')


def _import_forwarder():
    for name in FORWARDER_MODULES:
        __import__(name)


def cannot_start(store, record, reason, config=None):
    """A task whose runner cannot run it: the record and the log say why.

    Without its own settings, the next task is started as if one slot were
    all there is: never more at once than any configuration allows.
    """
    task_id = record[Field.ID]
    append_log(store, task_id, f'rrcloud: task {task_id} cannot start: {reason}')
    finished = finish_task(store, task_id, TaskStatus.FAILED, error=f'cannot start: {reason}')
    if config is None:
        config = Config()
        config.maxTasks, config.dir = 1, store.root
    return _runner_done(store, config, task_id, finished or store.read_task(task_id))


def remove_output_of_full_disk(store, record, fields):
    """A task that failed because the disk filled up: remove what its tool
    left (the space is free again for the next one) and say so.  Otherwise a
    failed task keeps its partial output, for a look at what went wrong."""
    out = store.path_of(record[Field.OUT]) if record.get(Field.OUT) else None
    if not out or not os.path.isfile(out):
        return fields
    try:
        stat = os.statvfs(os.path.dirname(out))
    except OSError:
        return fields
    if stat.f_bavail * stat.f_frsize >= DISK_NEARLY_FULL_BYTES:
        return fields
    unlink_quietly(out)
    return dict(fields, error=f"{fields.get('error', 'failed')}: no space left on device (output removed)")


def _runner_done(store, config, task_id, final, notifier=None):
    """Free this runner's slot, start what waits for it (the next step of its
    pipeline first), then call the notifier (a slow notifier never holds a
    slot nor the next step).  A next step that runs on another server is
    sent there by this process, which then follows it (``rrc.forward``)."""
    unmark(store, 'running', task_id)
    release_slot()
    forwarded = None
    if final.get(Field.JOB):
        forwarded = move_job_on(store, config, final)
    dispatch(store, config)
    (notifier or TaskNotifier(store, config, final)).ended(final)
    if forwarded:
        from .forward import forward_steps
        forward_steps(store, forwarded)
    return final


def move_job_on(store, config, final):
    """The next step of the task's job, or the job's end (``pipeline.after_step``).
    Whatever goes wrong there, the runner still dispatches and notifies:
    ``settle_job`` moves the job on later."""
    from .pipeline import after_step
    try:
        return after_step(store, config, final, inline=True)
    except Exception as exc:
        note(store, final[Field.ID], f'could not move job {final[Field.JOB]} on: {reason_without_paths(exc)}')
        return None


def release_slot():
    """Close the inherited slot fd so the next task may start."""
    fd = os.environ.pop('RRCLOUD_SLOT_FD', None)
    if fd is not None:
        try:
            os.close(int(fd))
        except (OSError, ValueError):
            pass


def execute(store, config, service, record, on_start=None):
    """Run the tool of one task; returns (status, fields to record).

    ``on_start(record)`` is called once the tool has started (it must not block)."""
    try:
        argv = task_argv(service, record)
    except UsageError as exc:
        return refuse_record(store, record, exc)
    argv = absolute_output(service, record, argv, tool_root(store, config))
    launch = Launch(service, argv, display=needs_display(service, record))
    with open(store.log_path(record[Field.ID]), 'ab') as log:
        if launch.missing:
            # The service's path is the server's business: the client learns which conf to look at.
            missing = f'{launch.missing} not found on the path of services/{service.name}.conf'
            log.write(f'rrcloud: {missing}\n'.encode())
            return TaskStatus.FAILED, {'error': f'cannot start: {missing}'}
        work = prepare_work_folder(store, record[Field.ID]) if config.sandbox else None
        try:
            outcome = run_tool(store, config, record, launch, log, work, on_start)
            if outcome is None and work:
                outcome = take_output(store, config, service, record, work, launch.exit_code)
        finally:
            if work:
                report_left_over(store, record[Field.ID], remove_tree(work))
    outcome = outcome or judge_exit(store, service, record, launch.exit_code)
    return builtin_reason(store, record, outcome) if launch.builtin else outcome


BUILTIN_ERROR_PREFIX = 'rrcloud: error: '


def builtin_reason(store, record, outcome):
    """A built-in (the G-code sender) that failed said why as its last log line
    (``rrcloud: error: cannot open /dev/ttyUSB0 …``): that is the task's error,
    rather than its exit code."""
    status, fields = outcome
    if status != TaskStatus.FAILED or not str(fields.get('error', '')).startswith('exit code'):
        return outcome
    last = last_log_line(store, record[Field.ID])
    if last.startswith(BUILTIN_ERROR_PREFIX) and is_single_line(last):
        return status, dict(fields, error=last[len(BUILTIN_ERROR_PREFIX):].strip())
    return outcome


def last_log_line(store, task_id):
    """The last line of a task's log ('' when there is none)."""
    try:
        with open(store.log_path(task_id), 'rb') as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
            lines = log.read().decode('utf-8', 'replace').splitlines()
    except FileNotFoundError:
        return ''
    return lines[-1] if lines else ''


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
        import shutil
        self.env = task_environment(service)
        self.read_paths = list(service.read_paths) + service_path_folders(service)
        self.devices = [arg for arg in argv if arg.startswith('/dev/')]  # allowed ports
        self.builtin = argv[0] == 'rrcloud'
        if self.builtin:  # the G-code sender: this program, this Python
            argv = rrcloud_command() + argv[1:]
            self.read_paths += program_paths()
            self.executable = sys.executable
        else:
            self.executable = shutil.which(argv[0], path=service.path)
        self.argv = [self.executable] + argv[1:]
        self.missing = None if self.executable else argv[0]
        if display:
            runner = shutil.which(VIRTUAL_DISPLAY[0], path=service.path)
            self.argv = [runner] + list(VIRTUAL_DISPLAY[1:]) + self.argv
            self.missing = self.missing or (None if runner else f'{VIRTUAL_DISPLAY[0]} (Debian package xvfb)')
        self.exit_code = None


def run_tool(store, config, record, launch, log, work, on_start=None):
    """Start the tool (sandboxed when ``work`` is given) within its limits,
    record its pid, supervise it; returns a failure outcome, or None with
    ``launch.exit_code`` set."""
    limits = ToolLimits.of(config)
    try:
        command = sandbox_command(store, record, launch, work, limits) if work else \
            limits.rlimit_argv(processes=False) + launch.argv
    except Exception as exc:  # bwrap missing, a bad path: never run unsandboxed instead
        log.write(f'rrcloud: cannot build the sandbox: {reason_without_paths(exc)}\n'.encode())
        return TaskStatus.FAILED, {'error': f'cannot start: {reason_without_paths(exc)}'}
    try:
        cgroup = enter_task_cgroup(record[Field.ID], limits)
    except OSError as exc:
        return TaskStatus.FAILED, {'error': f'cannot start: its cgroup: {reason_without_paths(exc)}'}
    try:
        return ToolRun(store, config, record, launch, limits, work, cgroup).run(command, log, on_start)
    finally:
        if cgroup is not None:
            problem = cgroup.leave()
            if problem:
                append_log(store, record[Field.ID], f'rrcloud: {problem}')


def enter_task_cgroup(task_id, limits):
    """The task's cgroup v2, this runner moved in (the tool is born there),
    where this node has a delegated subtree; else None: the rlimits alone apply."""
    from .limits import TaskCgroup, delegated_cgroup
    found = delegated_cgroup()
    return TaskCgroup(*found, task_id, limits).enter() if found else None


class ToolRun:
    """One run of a task's tool: what it runs with, started with its output
    into a pipe (its log within ``maxLogSize``) and watched until it ends."""

    def __init__(self, store, config, record, launch, limits, work=None, cgroup=None):
        self.store, self.config, self.record, self.launch = store, config, record, launch
        self.limits, self.work, self.cgroup = limits, work, cgroup
        self.task_id = record[Field.ID]

    def run(self, command, log, on_start=None):
        """Start ``command`` and watch it; a failure outcome, or None with ``launch.exit_code`` set."""
        output_read, output_write = os.pipe()
        progress_read, progress_write = os.pipe() if self.launch.builtin else (None, None)
        try:
            process = self.start(command, output_write, progress_write)
        except OSError as exc:  # the program by its name: its path is the server's
            close_fds(output_read, progress_read)
            return TaskStatus.FAILED, {'error': f'cannot start {os.path.basename(command[0])}: '
                                                f'{reason_without_paths(exc)}'}
        finally:
            close_fds(output_write, progress_write)  # the tool holds its ends now
        output = OutputPipe(output_read, ToolLog(log, self.limits.log))
        try:
            return self.watch(process, output, progress_read, on_start)
        except BaseException:  # a runner that cannot go on watching takes its tool with it
            terminate_group(process)
            raise
        finally:
            output.close()
            close_fds(progress_read)
            self.launch.exit_code = process.returncode

    def start(self, command, output_write, progress_write):
        """The tool's process: its own session, stdout and stderr into the pipe."""
        import subprocess
        if progress_write is not None:
            self.launch.env['RRCLOUD_PROGRESS_FD'] = str(progress_write)
        return subprocess.Popen(
            command, cwd=self.work or self.store.root, env=self.launch.env,
            stdin=subprocess.DEVNULL, stdout=output_write, stderr=subprocess.STDOUT,
            pass_fds=() if progress_write is None else (progress_write,),
            start_new_session=True)  # its own group: timeouts and kills reach grandchildren

    def watch(self, process, output, progress_read, on_start=None):
        """Record the tool's pid, tell ``on_start``, then supervise the tool
        until it ends, is stopped (timeout, a limit) or is killed."""
        self.store.update_task(self.task_id, {'pid': process.pid,
                                              'pidStart': process_start_time(process.pid) or ''})
        if on_start:  # the started notifier: in a thread, the tool never waits for it
            on_start(self.record)
        _install_runner_signal_handlers(process)
        progress = ProgressPipe(progress_read, ProgressEvents(self.store, self.task_id))
        watchdog = Watchdog(self.store, self.config, self.task_id, self.work)
        code, stopped = supervise(process, watchdog, output, progress)
        last = progress.finish()  # what came after the last look, up to the end
        if last:  # the final record keeps it, for readers of records (0.019 clients)
            self.store.update_task(self.task_id, {'progress': last})
        kill_process_group(process.pid)  # leftovers of a tool that exited
        output.finish()
        if stopped:
            return self.tell_why((TaskStatus.FAILED, {'error': stopped, 'exitCode': code}),
                                 f'{stopped}: the tool was stopped')
        outcome = self.limit_outcome(code, output)
        return outcome and self.tell_why(outcome, f'the tool ran into a limit: {outcome[1]["error"]}')

    def limit_outcome(self, code, output):
        """A tool that failed because it ran into one of its limits: that is
        its error, rather than its exit code; None otherwise.  Not for the
        built-in sender, whose own last line says why it failed."""
        if code in (0, None) or self.launch.builtin:
            return None
        error = limit_error(self.limits, code, output.log.last_bytes(), self.cgroup)
        return (TaskStatus.FAILED, {'error': error, 'exitCode': code}) if error else None

    def tell_why(self, outcome, remark):
        """A task that failed for a reason of rrcloud's (timeout, a limit): its
        log (after the tool's last words) and its events say why; ``outcome``."""
        append_log(self.store, self.task_id, f'rrcloud: {remark}')
        return outcome


def close_fds(*fds):
    """Close each of ``fds`` that is not None."""
    for fd in fds:
        if fd is not None:
            os.close(fd)


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
    native = record.get(Field.NATIVE_ARGS, '').split()
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


def refuse_record(store, record, reason):
    """A record rrcloud did not write (forged through a tool, or by hand): log it, never run it."""
    message = f'refused: the record does not check ({reason})'
    with open(store.log_path(record[Field.ID]), 'a', encoding='utf-8') as log:
        log.write(f'rrcloud: task {record["id"]} {message}\n')
    note(store, record[Field.ID], f'task {record["id"]} {message}')
    print(f'rrcloud: task {record["id"]} {message}', file=sys.stderr)
    return TaskStatus.FAILED, {'error': message}


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


def prepare_work_folder(store, task_id):
    """A fresh, empty folder ``tasks/work/ID``: the sandbox's tasks/out."""
    store.ensure()
    folder = os.path.join(store.folder('work'), check_task_id(task_id))
    if report_left_over(store, task_id, remove_tree(folder)):  # what a crashed run of the same task left
        raise RRCloudError(f'cannot empty its work folder tasks/work/{task_id}')
    os.mkdir(folder, 0o700)
    return folder


def report_left_over(store, task_id, left):
    """The task's log names what of its work folder could not be removed
    (store-relative: a log is the client's to read); ``left`` again."""
    if left:
        append_log(store, task_id, f'rrcloud: could not remove {shown_left(left, store.root)}')
    return left


def sandbox_command(store, record, launch, work, limits):
    """The bwrap argv around a task's tool: its own inputs, its work folder,
    nothing else; inside, the tool runs under its rlimits."""
    from .sandbox import Sandbox, is_character_device
    inputs = {}
    for path in record[Field.IN].split(','):
        top = '/'.join(path.split('/')[:3])  # a project binds its whole folder
        inputs[top] = store.path_of(top)
    # A missing port is left out: the sender inside reports it in one line.
    devices = [d for d in launch.devices if is_character_device(d)]
    jail = Sandbox([(host, inside) for inside, host in inputs.items()], work,
                   read_paths=launch.read_paths, devices=devices)
    launch.env.update(HOME='/tmp', TMPDIR='/tmp')
    return jail.command(limits.rlimit_argv() + launch.argv)


def take_output(store, config, service, record, work, exit_code):
    """Copy the result out of the work folder after the tool ended; a failure outcome or None."""
    if service.no_output or not record.get(Field.OUT):
        return None
    from .sandbox import collect_output
    name = service.output_name(record[Field.ID], check_output_ext(service, record.get(Field.OUT_EXT, '')))
    problem = collect_output(work, name, store.path_of('tasks/out/' + name), config.maxOutputSize, temp_writer())
    if problem:
        return TaskStatus.FAILED, {'error': problem, 'exitCode': exit_code}
    return None


# A progress line longer than this is no ``DONE/TOTAL`` line: dropped unread.
PROGRESS_LINE_MAX = 64


class ProgressPipe:
    """The built-in sender's progress (``DONE/TOTAL`` lines on a pipe), for the
    runner: read as it comes, handed to the task's event log (which keeps at
    most one event per interval, however fast the sender writes)."""

    def __init__(self, fd, events):
        self.fd = fd
        self.events = events
        self.buffer = b''
        self.open = fd is not None
        if fd is not None:
            os.set_blocking(fd, False)

    def pump(self):
        """Read what the pipe holds; report its newest progress line; write
        an event when one is due."""
        if self.open:
            newest = self._newest_line()
            if newest:
                self.events.report(*newest)
        self.events.flush()

    def _newest_line(self):
        try:
            while chunk := os.read(self.fd, 4096):
                self.buffer = (self.buffer + chunk)[-4096:]  # only the end matters
            self.open = False  # end of file: the sender is gone
        except BlockingIOError:
            pass
        lines, _, self.buffer = self.buffer.rpartition(b'\n')
        return parse_progress_line(lines.rsplit(b'\n', 1)[-1])

    def due_in(self):
        """Seconds until a held report must be written (None: none held)."""
        return self.events.due_in()

    def finish(self):
        """The last report written now; ``DONE/TOTAL`` of it (None without any)."""
        self.pump()
        self.events.flush(force=True)
        return self.events.text()


def parse_progress_line(line):
    """(done, total) of a ``DONE/TOTAL`` line, or None."""
    if len(line) > PROGRESS_LINE_MAX:
        return None
    done, sep, total = line.strip().partition(b'/')
    if sep and done.isdigit() and total.isdigit():
        return int(done), int(total)
    return None


# What the watchdog says of a task whose record shows it was killed.
KILLED = 'killed'


def supervise(process, watchdog, output, progress=None):
    """Wait for the tool, moving its output and progress on as they come;
    returns (exit code, None), or (exit code, why it was stopped) when the
    watchdog stopped it.  A killed task's tool is stopped too (its record
    already says so)."""
    readers = [output] + ([progress] if progress and progress.open else [])
    with ExitWatch(process, readers) as watch:
        while True:
            due = progress.due_in() if progress else None
            until = min(watchdog.due(), time.monotonic() + (due if due is not None else watchdog.interval))
            code = watch.wait(max(0.0, until - time.monotonic()))
            if code is not None:
                return code, None
            for reader in readers:
                reader.pump()
            verdict = watchdog.verdict(time.monotonic())
            if verdict:
                terminate_group(process)
                return process.returncode, (None if verdict == KILLED else verdict)


class Watchdog:
    """What a runner looks at now and then while its tool runs: the record (a
    kill; a suspension, whose time does not count against ``timeout`` but
    may last ``maxSuspend``), the deadline, and the bytes the tool has
    written (``maxOutputSize``, all its files together)."""

    # The output folder is walked at every look while it holds up to this
    # many entries, at every second look with twice as many, and so on: a
    # tool that makes 100,000 files slows its own checks, never the runner.
    WALK_ENTRIES = 10000

    def __init__(self, store, config, task_id, work=None, interval=0.5):
        now = time.monotonic()
        self.store, self.config, self.task_id, self.work = store, config, task_id, work
        self.interval = interval
        self.deadline, self.next_look, self.looked = now + config.timeout, now + interval, now
        self.suspended_since = None
        self.next_walk = now

    def due(self):
        """When the watchdog must look next (monotonic seconds)."""
        return min(self.deadline, self.next_look)

    def verdict(self, now):
        """None while the tool may go on; KILLED; or why it must be stopped."""
        if now >= self.next_look:
            reason = self._look(now)
            if reason:
                return reason
        if now >= self.deadline:
            return f'timeout after {self.config.timeout:g} s'
        return None

    def _look(self, now):
        self.next_look = now + self.interval
        record = self.store.read_task(self.task_id)
        if record.get(Field.STATUS) != TaskStatus.BUSY:
            return KILLED
        reason = self._suspension(record, now)
        self.looked = now
        if reason is None and self.work and now >= self.next_walk:
            reason = self._output_reason(now)
        return reason

    def _output_reason(self, now):
        """Why the tool's output folder stops it (all its files past
        ``maxOutputSize``, or nested past all reason), or None."""
        from .trees import USAGE_MAX_DEPTH, TreeTooDeep, tree_usage
        try:
            used, entries = tree_usage(self.work)
        except TreeTooDeep:
            return f'its output folders are nested deeper than {USAGE_MAX_DEPTH} levels'
        self.next_walk = now + self.interval * (entries // self.WALK_ENTRIES)
        if used > self.config.maxOutputSize:
            return f'its output passed maxOutputSize ({format_size(self.config.maxOutputSize)}) while it ran'
        return None

    def _suspension(self, record, now):
        """Suspended time is added to the deadline; past ``maxSuspend`` the task must end."""
        if record.get(Field.SUSPENDED) != YES:
            self.suspended_since = None
            return None
        self.deadline += now - self.looked
        self.suspended_since = self.suspended_since or self.looked
        if now - self.suspended_since > self.config.maxSuspend:
            return f'suspended longer than maxSuspend ({self.config.maxSuspend:g} s)'
        return None


class OutputPipe:
    """The read end of the pipe a tool writes its output to, emptied into its ToolLog."""

    # At most this much in one go: a tool that writes faster than the runner
    # reads never keeps the watchdog from its look.
    PUMP_MAX_BYTES = 4 << 20

    def __init__(self, fd, log):
        self.fd, self.log, self.open, self.finished = fd, log, True, False
        os.set_blocking(fd, False)

    def pump(self):
        """Move what the pipe holds (up to PUMP_MAX_BYTES) into the log."""
        moved = 0
        try:
            while self.open and moved < self.PUMP_MAX_BYTES:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    self.open = False
                    break
                self.log.write(chunk)
                moved += len(chunk)
        except BlockingIOError:
            pass

    def finish(self, timeout=5.0):
        """Read to the end and write the log's end (the tool and its group are
        gone; a last writer has ``timeout`` to let go of the pipe)."""
        import select
        deadline = time.monotonic() + timeout
        while self.open and time.monotonic() < deadline:
            select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            self.pump()
        self.log.close()
        self.finished = True

    def close(self):
        """Close the pipe (once); a log not finished (the runner failed while
        watching) still gets what came and its end."""
        if self.fd is None:
            return
        if not self.finished:
            self.pump()
            self.log.close()
            self.finished = True
        os.close(self.fd)
        self.fd, self.open = None, False


class ExitWatch:
    """Waits for a tool to exit or one of its pipes (output, progress) to have
    something to read.

    select() wakes on either: the pipes, and the tool's pidfd (its exit), so
    output reaches the log and progress the event log at once, and an exit is
    seen at once.  Without a pidfd (an old kernel) it looks every 50 ms, as
    Popen.wait does.
    """
    POLL_SECONDS = 0.05

    def __init__(self, process, readers):
        self.process, self.readers, self.pidfd = process, readers, None

    def __enter__(self):
        try:
            self.pidfd = os.pidfd_open(self.process.pid)
        except (AttributeError, OSError):
            self.pidfd = None
        return self

    def __exit__(self, *exc):
        if self.pidfd is not None:
            os.close(self.pidfd)

    def wait(self, timeout):
        """The exit code, or None after ``timeout`` or when a pipe has something."""
        import select
        watched = [reader.fd for reader in self.readers if reader.open]
        watched += [self.pidfd] if self.pidfd is not None else []
        select.select(watched, [], [], timeout if self.pidfd is not None else min(timeout, self.POLL_SECONDS))
        return self.process.poll()


def _install_runner_signal_handlers(process):
    """A runner told to stop takes its tool's process group with it."""
    import signal

    def stop(signum, frame):
        terminate_group(process, grace=1.0)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def judge_exit(store, service, record, code):
    """Complete only for exit code 0 and (no output expected or a non-empty output)."""
    fields = {'exitCode': code}
    if code != 0:
        reason = f'killed by signal {-code}' if code < 0 else f'exit code {code}'
        return TaskStatus.FAILED, dict(fields, error=reason)
    if not service.no_output:
        out = store.path_of(record[Field.OUT])
        if not os.path.isfile(out) or os.path.getsize(out) == 0:
            return TaskStatus.FAILED, dict(fields, error='no output')
    return TaskStatus.COMPLETE, fields


def cmd_run_internal(args):
    """``rrcloud _run ID --dir ROOT``: the detached runner (internal)."""
    if len(args) != 3 or args[1] != '--dir':
        raise UsageError('usage: rrcloud _run ID --dir ROOT')
    task_id = check_task_id(args[0])
    store = Store(args[2], starting_node())
    final = run_task(store, os.environ.pop('RRCLOUD_TASK_SETTINGS', ''), task_id)
    return ExitCode.OK if final.get(Field.STATUS) == TaskStatus.COMPLETE else ExitCode.TASK_FAILED
