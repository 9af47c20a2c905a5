"""Watching a task's tool while it runs: its output into the log, its
progress (read from its output, or the built-in sender's pipe) into the
event log, its exit (one ``select``
over its pidfd and its pipes), and every half second the watchdog's look at
the record (a kill, a suspension), the deadline and the bytes it wrote;
what it ran into when it failed, and why the runner stopped it."""

import os
import time

from .errors import reason_without_paths
from .events import ProgressEvents, is_printer_value
from .history import usual_run_time
from .progress import OutputProgress
from .limits import format_size, limit_error
from .printers import PRINTER_STATE_FIELDS
from .procs import KILL_GRACE_SECONDS, kill_process_group, process_start_time, terminate_group
from .schema import YES, Field, TaskStatus
from .toollog import ToolLog


def enter_task_cgroup(task_id, limits):
    """The task's cgroup v2, this runner moved in (the tool is born there),
    where this node has a delegated subtree; else None: the rlimits alone apply."""
    from .limits import TaskCgroup, delegated_cgroup
    found = delegated_cgroup()
    return TaskCgroup(*found, task_id, limits).enter() if found else None


class ToolRun:
    """One run of a task's tool: what it runs with, started with its output
    into a pipe (its log within ``maxLogSize``) and watched until it ends."""

    def __init__(self, task, launch, limits, work=None, cgroup=None):
        self.task, self.launch, self.limits, self.work, self.cgroup = task, launch, limits, work, cgroup
        self.control = None  # the built-in sender's SenderControl while it runs

    def run(self, command, log, on_start=None):
        """Start ``command`` and watch it; a failure outcome, or None with ``launch.exit_code`` set."""
        output_read, output_write = os.pipe()
        progress_read, progress_write = os.pipe() if self.launch.builtin else (None, None)
        # The sender's control pipe: pause, resume, cancel, stop (SenderControl).
        control_read, control_write = os.pipe() if self.launch.builtin else (None, None)
        try:
            process = self.start(command, output_write, progress_write, control_read)
        except OSError as exc:  # the program by its name: its path is the server's
            close_fds(output_read, progress_read, control_write)
            return TaskStatus.FAILED, {'error': f'cannot start {os.path.basename(command[0])}: '
                                                f'{reason_without_paths(exc)}'}
        finally:
            close_fds(output_write, progress_write, control_read)  # the tool holds its ends now
        output = OutputPipe(output_read, ToolLog(log, self.limits.log))
        self.control = SenderControl(control_write, self.launch.printer) if control_write is not None else None
        try:
            return self.watch(process, output, progress_read, on_start)
        except BaseException:  # a runner that cannot go on watching takes its tool with it
            terminate_group(process)
            raise
        finally:
            output.close()
            close_fds(progress_read, control_write)
            self.launch.exit_code = process.returncode

    def start(self, command, output_write, progress_write, control_read=None):
        """The tool's process: its own session, stdout and stderr into the pipe."""
        import subprocess
        if progress_write is not None:
            self.launch.env['RRCLOUD_PROGRESS_FD'] = str(progress_write)
        if control_read is not None:
            self.launch.env['RRCLOUD_CONTROL_FD'] = str(control_read)
        return subprocess.Popen(
            command, cwd=self.work or self.task.store.root, env=self.launch.env,
            stdin=subprocess.DEVNULL, stdout=output_write, stderr=subprocess.STDOUT,
            pass_fds=tuple(fd for fd in (progress_write, control_read) if fd is not None),
            start_new_session=True)  # its own group: timeouts and kills reach grandchildren

    def watch(self, process, output, progress_read, on_start=None):
        """Record the tool's pid, tell ``on_start``, then supervise the tool
        until it ends, is stopped (timeout, a limit) or is killed."""
        self.task.update({'pid': process.pid, 'pidStart': process_start_time(process.pid) or '',
                          **({Field.SENDER: YES} if self.control else {})})
        if on_start:  # the started notifier: in a thread, the tool never waits for it
            on_start(self.task.record)
        _install_runner_signal_handlers(process, is_print=self.control is not None)
        events = self.progress_events()
        progress = ProgressPipe(progress_read, events)
        output.follow(self.launch.progress, events)
        watchdog = Watchdog(self.task, self.work, control=self.control,
                            interval=PRINT_LOOK_INTERVAL if self.control else LOOK_INTERVAL)
        code, stopped = supervise(process, watchdog, output, progress)
        kill_process_group(process.pid)  # leftovers of a tool that exited
        output.finish()  # the rest of its output, and the stages it names
        last = progress.finish()  # what came after the last look, up to the end
        if last:  # the final record keeps it, for readers of records (0.019 clients)
            self.task.update({'progress': last})
        if isinstance(stopped, Ending):  # a print the runner had to end, cancelled by its sender
            stopped = stopped.reason(output.log.last_bytes())
            return self.tell_why((TaskStatus.FAILED, {'error': stopped, 'exitCode': code}), stopped)
        if stopped:
            return self.tell_why((TaskStatus.FAILED, {'error': stopped, 'exitCode': code}),
                                 f'{stopped}: the tool was stopped')
        outcome = self.limit_outcome(code, output)
        return outcome and self.tell_why(outcome, f'the tool ran into a limit: {outcome[1]["error"]}')

    def progress_events(self):
        """Where the tool's progress goes; a tool whose progress is read from
        its output starts in its reader's first stage, with the time its
        service's tasks usually take here (the time left before it says more)."""
        reader = self.launch.progress
        if reader is None:
            seconds = self.task.get(Field.GCODE_PRINT_SECONDS) if self.launch.builtin else None
            try:  # a print's slicer estimate, scaled by its progress, is its time left
                print_seconds = float(seconds) if seconds else None
            except ValueError:
                print_seconds = None
            return ProgressEvents(self.task.store, self.task.id, print_seconds=print_seconds)
        usual = usual_run_time(self.task.store, self.task.get(Field.SERVICE), skip=self.task.id)
        events = ProgressEvents(self.task.store, self.task.id, usual=usual)
        events.report_stage(reader.first_stage)
        return events

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
        self.task.log(f'rrcloud: {remark}')
        return outcome


def close_fds(*fds):
    """Close each of ``fds`` that is not None."""
    for fd in fds:
        if fd is not None:
            os.close(fd)


# How often the watchdog reads the task's record (a kill, a suspension):
# every half second, and for a print (a sender with a control pipe) five
# times a second, so a pause or cancel stops the printer's moves within
# 0.2 s plus the line in flight (one small file read each time).
LOOK_INTERVAL = 0.5
PRINT_LOOK_INTERVAL = 0.2

# A progress line longer than this is no ``DONE/TOTAL [key=number ...]`` line: dropped unread.
PROGRESS_LINE_MAX = 256


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
                done, total, state = newest
                self.events.report(done, total, printer=state)
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
    """(done, total, printer state) of a ``DONE/TOTAL [key=number ...]`` line, or None."""
    if len(line) > PROGRESS_LINE_MAX:
        return None
    fraction, *pairs = line.strip().split(b' ')
    done, sep, total = fraction.partition(b'/')
    if not (sep and done.isdigit() and total.isdigit()):
        return None
    state = {}
    for pair in pairs:
        key, _, value = pair.decode('ascii', 'replace').partition('=')
        if key in PRINTER_STATE_FIELDS:
            try:
                number = float(value)
            except ValueError:
                continue
            if is_printer_value(number):  # finite, and no count a sender could reach
                state[key] = int(number) if number.is_integer() else number
    return int(done), int(total), state


# What the watchdog says of a task whose record shows it was killed.
KILLED = 'killed'
# A print that must end (killed, past its deadline, paused too long) is
# cancelled by its sender: the line in flight answered, then the cancel
# G-code (heaters off).  A sender that has not ended this long after (a
# heat-up on firmware without an emergency parser answers M108 only once it
# is done) is stopped: SIGTERM to it alone, whose last words to the printer
# are M108 and the cancel G-code unanswered, then its group (stop_sender).
CANCEL_GRACE_SECONDS = 30.0
# How the sender's last line says why it failed (``rrcloud: error: cancelled``).
SENDER_ERROR_PREFIX = 'rrcloud: error: '


def supervise(process, watchdog, output, progress=None):
    """Wait for the tool, moving its output and progress on as they come;
    returns (exit code, None), or (exit code, why it was stopped) when the
    watchdog stopped it.  A killed task's tool is stopped too (its record
    already says so).  A print is not stopped but cancelled by its sender
    (``Ending``); only a sender that does not end is stopped."""
    readers = [output] + ([progress] if progress else [])  # a closed pipe is not waited on
    ending = None
    with ExitWatch(process, readers) as watch:
        while True:
            due = progress.due_in() if progress else None
            next_due = min(ending.grace_ends, watchdog.next_look) if ending else watchdog.due()
            until = min(next_due, time.monotonic() + (due if due is not None else watchdog.interval))
            code = watch.wait(max(0.0, until - time.monotonic()))
            if code is not None:
                return code, ending and ending.why_ended(code)
            for reader in readers:
                reader.pump()
            now = time.monotonic()
            if ending is None:
                verdict = watchdog.verdict(now)
                if verdict and watchdog.control is not None:
                    ending = Ending(verdict, watchdog, now)
                    continue
            else:
                ending.follow(watchdog, now)
                verdict = ending.why_stopped() if now >= ending.grace_ends else None
            if verdict:
                if watchdog.control is not None:  # a print's sender: its last words first
                    stop_sender(process)
                else:
                    terminate_group(process)
                return process.returncode, (None if verdict == KILLED else verdict)


class Ending:
    """A print the runner must end: its sender asked to cancel (the cancel
    G-code, heaters off) and given CANCEL_GRACE_SECONDS to end; the task's
    log says why."""

    def __init__(self, verdict, watchdog, now):
        self.verdict, self.grace = verdict, watchdog.cancel_grace
        self.grace_ends = now + self.grace
        watchdog.control.ask('cancel')
        watchdog.task.log(f'rrcloud: {verdict}: the print is cancelled (its cancel G-code)')

    def follow(self, watchdog, now):
        """While the grace runs: what the pipe could not take yet goes, and an
        emergency stop asked of the print (it is still busy) reaches its sender."""
        if now >= watchdog.next_look:
            watchdog.next_look = now + watchdog.interval
            if watchdog.task.refresh().get(Field.PRINT_CONTROL) == 'stop':
                watchdog.control.ask('stop')
        watchdog.control.flush()

    def why_ended(self, code):
        """What ``supervise`` returns for a sender that ended itself: None
        when the record says why (killed) or the print finished after all,
        else this Ending, whose ``reason`` reads the sender's last words."""
        return None if self.verdict == KILLED or code == 0 else self

    def reason(self, last_output):
        """The task's error: the verdict and the sender's own last error
        (``paused longer than maxSuspend (2 h): cancelled``)."""
        for line in reversed(last_output.decode('utf-8', 'replace').splitlines()):
            if line.startswith(SENDER_ERROR_PREFIX):
                return f'{self.verdict}: {line[len(SENDER_ERROR_PREFIX):].strip()}'
        return f'{self.verdict}: the sender ended'

    def why_stopped(self):
        """Why the task ended, its sender having been stopped after the grace."""
        if self.verdict == KILLED:
            return KILLED
        return f'{self.verdict}: the sender did not end within {self.grace:g} s of its cancel'


class Watchdog:
    """What a runner looks at now and then while its tool runs: the record (a
    kill; a suspension, whose time does not count against ``timeout`` but
    may last ``maxSuspend``), the deadline, and the bytes the tool has
    written (``maxOutputSize``, all its files together)."""

    # The output folder is walked at every look while it holds up to this
    # many entries, at every second look with twice as many, and so on: a
    # tool that makes 100,000 files slows its own checks, never the runner.
    WALK_ENTRIES = 10000
    # How long a print's sender has to end once asked to cancel (Ending).
    cancel_grace = CANCEL_GRACE_SECONDS

    def __init__(self, task, work=None, interval=LOOK_INTERVAL, control=None):
        now = time.monotonic()
        self.control = control  # the built-in sender's SenderControl, or None
        self.task, self.config, self.work = task, task.config, work
        self.interval = interval
        self.deadline, self.next_look, self.looked = now + self.config.timeout, now + interval, now
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
        record = self.task.refresh()
        if record.get(Field.STATUS) != TaskStatus.BUSY:
            return KILLED
        if self.control is not None:
            self.control.follow(record)
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
            if self.control is not None:  # a paused print: its heaters are on
                return f'paused longer than maxSuspend ({duration_text(self.config.maxSuspend)})'
            return f'suspended longer than maxSuspend ({self.config.maxSuspend:g} s)'
        return None


def duration_text(seconds):
    """``2 h``, ``90 min``, ``45 s``: a bound as a person reads it."""
    for unit, size in (('h', 3600), ('min', 60)):
        if seconds >= size and seconds % size == 0:
            return f'{seconds / size:g} {unit}'
    return f'{seconds:g} s'


class SenderControl:
    """The runner's end of the built-in sender's control pipe.  First the
    printer's G-code (``printers.handoff_lines``: a named printer's, or none,
    and the sender keeps Marlin's), then the record's wishes (``suspended:
    yes`` is a pause, its end a resume; ``printControl: cancel`` or ``stop``)
    written to the sender as words, each once, and the runner's own cancel
    (``cancel``) of a print it must end.  The sender acts on them between
    lines (a stop at once): never SIGSTOP, which would leave the printer
    mid-move.  Writes never block the runner: what the pipe cannot take yet
    goes at the next look."""

    def __init__(self, fd, printer=None):
        from .printers import handoff_lines
        self.fd, self.paused, self.sent = fd, False, set()
        self.pending = b''
        os.set_blocking(fd, False)
        for line in handoff_lines(printer):
            self.write(line)

    def follow(self, record):
        """Write what changed in the record since the last look."""
        paused = record.get(Field.SUSPENDED) == YES
        if paused != self.paused:
            self.paused = paused
            self.write('pause' if paused else 'resume')
        word = record.get(Field.PRINT_CONTROL)
        if word in ('cancel', 'stop'):
            self.ask(word)
        self.flush()

    def ask(self, word):
        """Write ``word`` (cancel, stop) once."""
        if word not in self.sent:
            self.sent.add(word)
            self.write(word)

    def write(self, line):
        self.pending += line.encode() + b'\n'
        self.flush()

    def flush(self):
        """Write what the pipe takes now."""
        try:
            while self.pending:
                self.pending = self.pending[os.write(self.fd, self.pending):]
        except BlockingIOError:
            pass
        except OSError:
            self.pending = b''  # the sender is gone: its end is judged as any other


class OutputPipe:
    """The read end of the pipe a tool writes its output to, emptied into its ToolLog."""

    # At most this much in one go: a tool that writes faster than the runner
    # reads never keeps the watchdog from its look.
    PUMP_MAX_BYTES = 4 << 20

    def __init__(self, fd, log):
        self.fd, self.log, self.open, self.finished = fd, log, True, False
        self.progress = None
        os.set_blocking(fd, False)

    def follow(self, reader, events):
        """Read the tool's progress from its output with ``reader`` (rrc/progress.py;
        None: it tells none) into ``events``."""
        if reader is not None:
            self.progress = OutputProgress(reader, reporter_to(events))

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
                if self.progress:
                    self.progress.feed(chunk)
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
        if self.progress:
            self.progress.finish()
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


def reporter_to(events):
    """What OutputProgress reports with, for a task's ProgressEvents: a
    fraction of a stage, or a stage alone."""
    def report(stage, fraction):
        if fraction:
            events.report(*fraction, stage=stage)
        else:
            events.report_stage(stage)
    return report


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


# A print's sender that must be stopped gets SIGTERM on its own first and
# this long to write M108 and the cancel G-code to its printer and end
# (printing.GcodeSender.abandon), before its process group is stopped.
SENDER_LAST_WORDS_SECONDS = 2.0


def stop_sender(process, grace=KILL_GRACE_SECONDS):
    """Stop a print's sender, its last words to the printer first: SIGTERM
    to the sender alone (in a sandbox the group's SIGTERM would end bwrap,
    whose end kills the sender at once: --die-with-parent and its PID
    namespace), up to SENDER_LAST_WORDS_SECONDS for it to end, then its
    group (SIGTERM, SIGKILL after ``grace``)."""
    import signal
    import subprocess
    for pid in sender_pids(process):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass  # gone already
    try:
        process.wait(timeout=SENDER_LAST_WORDS_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    terminate_group(process, grace)


def sender_pids(process):
    """The processes of a print's tool but bubblewrap's own: the sender
    (``process`` itself without a sandbox)."""
    import psutil
    try:
        tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        return []
    pids = []
    for member in tree:
        try:
            if member.name() != 'bwrap':
                pids.append(member.pid)
        except psutil.Error:
            pass
    return pids


def _install_runner_signal_handlers(process, is_print=False):
    """A runner told to stop takes its tool's process group with it (a
    print's sender first told to leave its printer cancelled: stop_sender)."""
    import signal

    def stop(signum, frame):
        if is_print:
            stop_sender(process, grace=1.0)
        else:
            terminate_group(process, grace=1.0)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
