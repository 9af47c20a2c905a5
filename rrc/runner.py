"""The detached runner of one task: its tool started (``launch``) and
watched (``supervise``), its exit judged, its end recorded; then its slot
freed, what waits for it started and the notifier called."""

import os
import sys

from .cache import finish_from_cache, key_of_task, put
from .config import Config
from .errors import ConfigError, ExitCode, RRCloudError, UsageError, reason_without_paths
from .engines import after_render, plan_engine
from .events import note
from .gcodemeta import gcode_fields, is_gcode_name
from .identity import starting_node
from .launch import Launch, absolute_output, needs_display, sandbox_command, task_argv, tool_root
from .limits import ToolLimits
from .names import check_task_id, is_single_line
from .notifier import TaskNotifier
from .printers import load_printer
from .records import stored_inputs
from .backends import task_queue
from .schema import Field, TaskStatus
from .services import check_output_ext, load_service
from .settings import task_config
from .store import Store, temp_writer, unlink_quietly, unmark
from .supervise import SENDER_ERROR_PREFIX, ToolRun, enter_task_cgroup
from .task import Task
from .trees import remove_tree, shown_left


# Less free space than this after a failed task: the disk filled up.
DISK_NEARLY_FULL_BYTES = 64 * 1024


def run_task(store, settings, task_id):
    """The detached runner: run one task's tool, record how it ended, start the next."""
    task = Task(store, task_id)
    try:
        task.config = task_config(settings, store)
    except ConfigError as exc:
        return cannot_start(task, str(exc))
    if task.get(Field.STATUS) != TaskStatus.BUSY:  # killed before it could start
        return _runner_done(task)
    try:
        service = load_service(store.root, task.get(Field.SERVICE))
    except RRCloudError as exc:
        return cannot_start(task, str(exc))
    try:
        printer = task_printer(task)
    except RRCloudError as exc:
        return cannot_start(task, str(exc))
    notifier = TaskNotifier(store, task.config, task.record)
    key = cache_key(task, service)
    served = finish_from_cache(store, task.record, key) if key else None
    if served:  # an identical task completed since this one was submitted: nothing runs
        task.record = served
        return _runner_done(task, notifier)
    if key and task.refresh().get(Field.STATUS) != TaskStatus.BUSY:  # killed while the cache was asked
        return _runner_done(task, notifier)
    if task.get(Field.JOB):
        prepare_hand_off(task)
    try:
        record_input_gcode(task)
        outcome = execute(task, service, on_start=notifier.started, printer=printer)
    except Exception as exc:  # a runner never leaves a task busy (nor names a path of the server's)
        outcome = (TaskStatus.FAILED, {'error': f'runner error: {reason_without_paths(exc)}'})
    status, fields = outcome
    if status == TaskStatus.COMPLETE:
        fields = dict(fields, **output_gcode_fields(task))
    if status == TaskStatus.FAILED:
        fields = remove_output_of_full_disk(task, fields)
    task.finish(status, **fields)
    if key and task.get(Field.STATUS) == TaskStatus.COMPLETE:
        keep_in_cache(task, key)
    return _runner_done(task, notifier)


def cache_key(task, service):
    """The task's key in the result cache, computed just before its tool would
    start (with the tool version of now); '' when it is not cached."""
    try:
        return key_of_task(task.store, task.config, service, task.record)
    except Exception as exc:  # the cache only saves time: a task never fails for it
        task.log(f'rrcloud: the result cache was not asked: {reason_without_paths(exc)}')
        return ''


def keep_in_cache(task, key):
    """A complete task's result into the cache (a full disk or a race there: a line in its log)."""
    try:
        put(task.store, task.config, key, task.record)
    except Exception as exc:
        task.log(f'rrcloud: the result was not kept in the cache: {reason_without_paths(exc)}')


def task_printer(task):
    """The named printer of a print whose record says ``printer: NAME``
    (its conf read now, from this store's ``printers/``: its G-code goes to
    the sender), or None.  The name is checked before it is part of a path;
    an unknown printer or a bad conf is a RRCloudError naming it."""
    name = task.get(Field.PRINTER)
    return load_printer(task.store.root, name) if name else None


def record_input_gcode(task):
    """A task that receives G-code (a print): what the file says of its print
    goes into the record before the tool starts, so its time left can be
    judged from the first line sent (``gcodePrintSeconds``)."""
    try:
        inputs = [path for _, path in stored_inputs(task.record) if is_gcode_name(path)]
    except UsageError:  # a record that does not check: execute refuses it
        return
    if inputs:
        fields = described_gcode(task, inputs[0])
        if fields:
            task.update(fields)


def output_gcode_fields(task):
    """The record's G-code fields of a complete task's result when it is G-code (a slice)."""
    out = task.get(Field.OUT)
    return described_gcode(task, out) if out and is_gcode_name(out) else {}


def described_gcode(task, stored_path):
    """``gcode_fields`` of a file of the store.  The metadata only describes:
    whatever goes wrong reading it is a line in the task's log, never the
    task's failure (a print must not be lost to its estimate)."""
    try:
        return gcode_fields(task.store.path_of(stored_path))
    except Exception as exc:
        task.log(f'rrcloud: cannot read the G-code metadata: {reason_without_paths(exc)}')
        return {}


def prepare_hand_off(task):
    """A pipeline step whose next step runs on another server: import what
    sending it there needs while the tool runs (on a Raspberry Pi, http.client
    and requests take longer to import than the whole hand-off may)."""
    from .pipeline import next_step_runs_elsewhere
    if next_step_runs_elsewhere(task.store, task.record):
        import threading
        threading.Thread(target=_import_forwarder, daemon=True).start()


# What the forwarder imports: the upload's http.client, then requests (it follows the step with it).
FORWARDER_MODULES = ('http.client', f'{__package__}.lighthttp', f'{__package__}.forward',
                     f'{__package__}.remote', 'requests')


def _import_forwarder():
    for name in FORWARDER_MODULES:
        __import__(name)


def cannot_start(task, reason):
    """A task whose runner cannot run it: the record and the log say why.

    Without its own settings, the next task is started as if one slot were
    all there is: never more at once than any configuration allows.
    """
    task.log(f'rrcloud: task {task.id} cannot start: {reason}')
    task.finish(TaskStatus.FAILED, error=f'cannot start: {reason}')
    if task.config is None:
        task.config = Config()
        task.config.maxTasks, task.config.dir = 1, task.store.root
    return _runner_done(task)


def remove_output_of_full_disk(task, fields):
    """A task that failed because the disk filled up: remove what its tool
    left (the space is free again for the next one) and say so.  Otherwise a
    failed task keeps its partial output, for a look at what went wrong."""
    out = task.store.path_of(task.get(Field.OUT)) if task.get(Field.OUT) else None
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


def _runner_done(task, notifier=None):
    """Free this runner's slot, start what waits for it (the next step of its
    pipeline first), then call the notifier (a slow notifier never holds a
    slot nor the next step).  A next step that runs on another server is
    sent there by this process, which then follows it (``rrc.forward``).
    The task's record as it ended."""
    store, config, final = task.store, task.config, task.record
    unmark(store, 'running', task.id)
    release_slot()
    forwarded = move_job_on(store, config, final) if final.get(Field.JOB) else None
    task_queue(store, config).dispatch()
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


def execute(task, service, on_start=None, printer=None):
    """Run the tool of one task; returns (status, fields to record).

    ``on_start(record)`` is called once the tool has started (it must not
    block); ``printer`` (a named printer) is handed to the built-in sender."""
    try:
        argv = task_argv(service, task.record)
    except UsageError as exc:
        return refuse_record(task, exc)
    argv = absolute_output(service, task.record, argv, tool_root(task.store, task.config))
    work = prepare_work_folder(task) if task.config.sandbox else None
    try:
        plan = engine_plan(task, service, argv, work)
        launch = Launch(service, plan.argv if plan else argv, display=needs_display(service, task.record))
        if plan:
            launch.env.update(plan.env)
            launch.read_paths += plan.read_paths
        outcome = launch_tool(task, service, launch, work, on_start, printer)
        if plan:
            outcome = outcome[0], dict(outcome[1], **after_render(task.store, plan,
                                                                  outcome[0] == TaskStatus.COMPLETE))
    finally:
        if work:
            report_left_over(task, remove_tree(work))
    return outcome


def engine_plan(task, service, argv, work):
    """The engine plan of a service with two engines (OpenSCAD: rrc/engines.py), else None."""
    if not (service.manifold_runner or service.engine_option):
        return None
    out_folder = work or task.store.folder('out')
    return plan_engine(task.store, service, task.record, argv, out_folder, task.log)


def launch_tool(task, service, launch, work, on_start, printer):
    """Start the tool, watch it, take its result: (status, fields)."""
    launch.printer = printer if launch.builtin else None
    with open(task.log_path, 'ab') as log:
        if launch.missing:
            # The service's path is the server's business: the client learns which conf to look at.
            missing = f'{launch.missing} not found on the path of services/{service.name}.conf'
            log.write(f'rrcloud: {missing}\n'.encode())
            return TaskStatus.FAILED, {'error': f'cannot start: {missing}'}
        outcome = run_tool(task, launch, log, work, on_start)
        if outcome is None and work:
            outcome = take_output(task, service, work, launch.exit_code)
    outcome = outcome or judge_exit(task, service, launch.exit_code)
    return builtin_reason(task, outcome) if launch.builtin else outcome


BUILTIN_ERROR_PREFIX = SENDER_ERROR_PREFIX


def builtin_reason(task, outcome):
    """A built-in (the G-code sender) that failed said why as its last log line
    (``rrcloud: error: cannot open /dev/ttyUSB0 …``): that is the task's error,
    rather than its exit code."""
    status, fields = outcome
    if status != TaskStatus.FAILED or not str(fields.get('error', '')).startswith('exit code'):
        return outcome
    last = last_log_line(task)
    if last.startswith(BUILTIN_ERROR_PREFIX) and is_single_line(last):
        return status, dict(fields, error=last[len(BUILTIN_ERROR_PREFIX):].strip())
    return outcome


def last_log_line(task):
    """The last line of a task's log ('' when there is none)."""
    try:
        with open(task.log_path, 'rb') as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
            lines = log.read().decode('utf-8', 'replace').splitlines()
    except FileNotFoundError:
        return ''
    return lines[-1] if lines else ''


def run_tool(task, launch, log, work, on_start=None):
    """Start the tool (sandboxed when ``work`` is given) within its limits,
    record its pid, supervise it; returns a failure outcome, or None with
    ``launch.exit_code`` set."""
    limits = ToolLimits.of(task.config)
    try:
        command = sandbox_command(task, launch, work, limits) if work else \
            limits.rlimit_argv(processes=False) + launch.argv
    except Exception as exc:  # bwrap missing, a bad path: never run unsandboxed instead
        log.write(f'rrcloud: cannot build the sandbox: {reason_without_paths(exc)}\n'.encode())
        return TaskStatus.FAILED, {'error': f'cannot start: {reason_without_paths(exc)}'}
    try:
        cgroup = enter_task_cgroup(task.id, limits)
    except OSError as exc:
        return TaskStatus.FAILED, {'error': f'cannot start: its cgroup: {reason_without_paths(exc)}'}
    try:
        return ToolRun(task, launch, limits, work, cgroup).run(command, log, on_start)
    finally:
        if cgroup is not None:
            problem = cgroup.leave()
            if problem:
                task.log(f'rrcloud: {problem}')


def refuse_record(task, reason):
    """A record rrcloud did not write (forged through a tool, or by hand): log it, never run it."""
    message = f'refused: the record does not check ({reason})'
    task.log(f'rrcloud: task {task.id} {message}')
    print(f'rrcloud: task {task.id} {message}', file=sys.stderr)
    return TaskStatus.FAILED, {'error': message}


def prepare_work_folder(task):
    """A fresh, empty folder ``tasks/work/ID``: the sandbox's tasks/out."""
    task.store.ensure()
    folder = os.path.join(task.store.folder('work'), task.id)
    if report_left_over(task, remove_tree(folder)):  # what a crashed run of the same task left
        raise RRCloudError(f'cannot empty its work folder tasks/work/{task.id}')
    os.mkdir(folder, 0o700)
    return folder


def report_left_over(task, left):
    """The task's log names what of its work folder could not be removed
    (store-relative: a log is the client's to read); ``left`` again."""
    if left:
        task.log(f'rrcloud: could not remove {shown_left(left, task.store.root)}')
    return left


def take_output(task, service, work, exit_code):
    """Copy the result out of the work folder after the tool ended; a failure outcome or None."""
    if service.no_output or not task.get(Field.OUT):
        return None
    from .sandbox import collect_output
    name = service.output_name(task.id, check_output_ext(service, task.get(Field.OUT_EXT)))
    problem = collect_output(work, name, task.store.path_of('tasks/out/' + name), task.config.maxOutputSize,
                             temp_writer())
    if problem:
        return TaskStatus.FAILED, {'error': problem, 'exitCode': exit_code}
    return None


def judge_exit(task, service, code):
    """Complete only for exit code 0 and (no output expected or a non-empty output)."""
    fields = {'exitCode': code}
    if code != 0:
        reason = f'killed by signal {-code}' if code < 0 else f'exit code {code}'
        return TaskStatus.FAILED, dict(fields, error=reason)
    if not service.no_output:
        out = task.store.path_of(task.get(Field.OUT))
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
