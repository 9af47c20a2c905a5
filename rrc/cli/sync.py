"""Synchronous work: following a task to its end, delivering its result where the user asked."""

import os
import sys
import time

from .bar import progress_bar
from .output import exit_code_of, print_record
from ..errors import ExitCode, NoServer, RRCloudError
from ..remote import (connection_failure, host_port, kill_remote, submit_remote, terminal_safe,
    wait_remote)
from ..schema import Field, TaskStatus
from ..store import unlink_quietly

# The runner, the control of local tasks and waits are imported where a local
# task needs them: a task sent to a server (a wrapper's usual path) loads none
# of them (tests/test_relay_imports.py).


# How long a synchronous task's POST asks the server to hold its answer
# (``wait=S``): a task that ends by then takes one request and its result
# and log two more on the same connection.  Short, because until the answer
# comes the client does not know the task's id: a Ctrl-C meanwhile is
# acted on when it comes (the task is killed there), and a progress line
# starts after a second anyway.
SYNC_POST_WAIT = 1


def sync_remote(ctx, service, servers, inputs, native, output, show=False, params=(), out_ext=''):
    """Send a task, wait for it, fetch its result to ``output``, mirror its exit code.

    The relay's light path: ``lighthttp`` (no requests), one connection,
    a POST with ``wait`` that an rrcloud server answers with the ended task
    (a 0.019 server ignores it: the task is followed as before).
    Ctrl-C at any moment after the server took the task kills it there.
    """
    from ..lighthttp import LightSession
    record, progress = None, None
    session = LightSession(ctx.config.client_token_for)
    interrupt = InterruptLater()
    try:
        with interrupt:
            record = submit_remote(ctx, service, servers, inputs, native, params, out_ext, session=session,
                                   wait=SYNC_POST_WAIT, on_record=interrupt.allow_after,
                                   before_post=interrupt.before_post)
        if record.get(Field.STATUS) == TaskStatus.BUSY:
            progress = ProgressLine(record[Field.SERVER]) if sys.stderr.isatty() else None
            record = wait_for_remote(ctx, record, progress, session)
    except KeyboardInterrupt:
        if progress:
            progress.clear()
        record = record or interrupt.record
        if record:
            stop_after_interrupt(ctx, record)
        elif session.sent:  # the held POST's answer never came (a second Ctrl-C, or it failed): no id
            warn_unanswered(interrupt.server)
        return ExitCode.INTERRUPTED
    except OSError as exc:  # requests' and lighthttp's errors are OSErrors
        record = record or interrupt.record
        if record is None:
            raise
        raise NoServer(f'lost {host_port(record[Field.SERVER])} while waiting for task {record[Field.ID]} '
                       f'({connection_failure(exc)}); `rrcloud info {record[Field.ID]}` asks again') from None
    finally:
        session.close()
        if progress:
            progress.clear()
    return deliver_result(ctx, record, output, show)


def warn_unanswered(url):
    """Stopped while the server at ``url`` held the POST, its answer lost:
    the task may run there, and nothing here knows its id."""
    server = host_port(url) if url else 'its server'
    print(f'rrcloud: warning: the task may still run at {server} (its answer never came; '
          f'no other server was tried); `rrcloud ls --s={server if url else "SERVER"}` finds it',
          file=sys.stderr)


class InterruptLater:
    """Ctrl-C while a POST is held: the task's id comes with the answer, so
    the first Ctrl-C waits for it (at most SYNC_POST_WAIT seconds more) and is
    raised as soon as the local record exists, to kill the task at its
    server; a second Ctrl-C stops at once (the task may then run on there).
    A held POST that fails instead ends the relay too: the Ctrl-C is raised
    before the next server is tried, or when the last one failed.  Before
    any POST (while servers are probed) nothing is held: it stops at once.
    """

    def __init__(self):
        self.pending, self.record, self.previous = False, None, None
        self.server = None  # the URL the last POST went to: what a warning names

    def __enter__(self):
        import signal
        self.previous = signal.getsignal(signal.SIGINT)
        if self.previous is signal.default_int_handler:  # an ignored SIGINT (a background job's) stays ignored
            try:
                signal.signal(signal.SIGINT, self.on_interrupt)
            except ValueError:  # not the main thread (rrcloud.main called from a thread): left as it is
                self.previous = None
        return self

    def on_interrupt(self, signum, frame):
        if self.pending or self.record is not None or self.server is None:
            raise KeyboardInterrupt
        self.pending = True
        sys.stderr.write(f'rrcloud: stopping: waiting for {host_port(self.server)} to answer, to kill the task there '
                         '(Ctrl-C again to leave it)\n')
        sys.stderr.flush()

    def before_post(self, url):
        """A POST to ``url`` is next: a Ctrl-C that came while the server
        before held its POST (which then failed) stops the relay here."""
        if self.pending:
            raise KeyboardInterrupt
        self.server = url

    def allow_after(self, record):
        """The local record exists: a Ctrl-C that came meanwhile is raised now, and any later one at once."""
        self.record = record
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        import signal
        if self.previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, self.previous)
        if self.pending and not (exc[0] and issubclass(exc[0], KeyboardInterrupt)):
            # no answer came, or the last server's POST failed (NoServer): the user's Ctrl-C wins
            raise KeyboardInterrupt


def wait_for_remote(ctx, record, progress, session=None):
    """Wait for a remote task; a progress line is fed from the server's event
    stream when its meta offers one (the task's progress, as for a local
    task), else from long-polls of info (a 0.019 server)."""
    if progress:
        from .watch import wait_with_events
        finished = wait_with_events(ctx, record, progress)
        if finished is not None and finished.get(Field.STATUS) != TaskStatus.BUSY:
            return finished
    return wait_remote(ctx.store, ctx.config, record, ctx.config.client_token_for, progress, session=session)


def stop_after_interrupt(ctx, record):
    """Ctrl-C while waiting for a remote task: kill it at its server, or say it may still run."""
    try:
        kill_remote(ctx.store, record, ctx.config.client_token_for, ctx.config.maxResultSize)
    except RRCloudError as exc:
        print(f'rrcloud: warning: {exc} (rrcloud kill {record["id"]} tries again)', file=sys.stderr)


class ProgressLine:
    """One line on a terminal's stderr, the same for local and remote tasks:
    where it runs, its state (queued while it waits for a slot), elapsed
    seconds, and its progress when there is some: a bar or the stage its tool
    is in, with the time left (rrc/cli/bar.py), else the record's own
    ``progress``."""

    def __init__(self, where):
        self.where = where
        self.shown = None
        self.started = False  # it has been shown running: never queued again

    def __call__(self, record, elapsed, state=None, progress=None):
        """Draw the line; ``progress``: (a progress event's data, the monotonic time it came)."""
        state = state or self.state_of(record)
        detail = self.detail(record, progress)
        line = f'{self.where} {terminal_safe(state)} {elapsed:.0f}s' + (f' {terminal_safe(detail)}' if detail else '')
        if line != self.shown:  # a local wait looks every few ms; the terminal needs a change
            sys.stderr.write(f'\r{line}\x1b[K')
            sys.stderr.flush()
            self.shown = line

    def state_of(self, record):
        """``queued`` until the task has been seen running, then its status: a
        record read before the start or a server's events read again from
        their beginning never take the line back to queued (a task never
        goes back to its queue)."""
        if record.get(Field.QUEUED) and not self.started:
            return 'queued'
        self.started = self.started or record.get(Field.STATUS) == TaskStatus.BUSY
        return record.get(Field.STATUS)

    @staticmethod
    def detail(record, progress):
        """The bar of the newest progress event, else the record's ``progress``."""
        if progress:
            data, came = progress
            bar = progress_bar(data, time.monotonic() - came)
            if bar:
                return bar
        return record.get(Field.PROGRESS) or ''

    def clear(self):
        sys.stderr.write('\r\x1b[K')
        sys.stderr.flush()
        self.shown = None


def event_progress(event):
    """(data, the monotonic time it came) of a progress Event of this machine's store, or None."""
    if event is None:
        return None
    return event.data, time.monotonic() - max(0.0, time.time() - event.time)


def finish_sync(ctx, record, output, show=False):
    """Wait for a local task, deliver its result, mirror its exit code."""
    progress = ProgressLine('local') if sys.stderr.isatty() else None
    started = time.monotonic()
    on_poll = (lambda current, newest: progress(current, time.monotonic() - started,
                                                progress=event_progress(newest))) if progress else None
    from ..waits import wait_for_task
    try:
        record = wait_for_task(ctx.store, record[Field.ID], on_poll=on_poll)
    except KeyboardInterrupt:
        _kill_quietly(ctx.store, record[Field.ID])
        return ExitCode.INTERRUPTED
    finally:
        if progress:
            progress.clear()
    return deliver_result(ctx, record, output, show)


def deliver_result(ctx, record, output, show=False):
    """A finished task: its result to ``output`` (or, with ``show``, its record
    to stdout) on success, its log to stderr on failure.

    On success the log goes to stderr too, as the tool itself prints its
    warnings; a print's log (the talk with the printer) stays in the task's log.
    """
    service = ctx.service(record[Field.SERVICE])
    if record.get(Field.STATUS) == TaskStatus.COMPLETE:
        if output:
            check_result_format(service, record, output, ctx.output_format)
            if not service.no_output:
                show_log(ctx.store, record, ctx.shown_inputs, output)
            deliver_output(ctx.store.path_of(record[Field.OUT]), output)
        elif show and not print_text_result(ctx, record):
            show_log(ctx.store, record, ctx.shown_inputs)
            print_record(record, ctx.options.format)
        return ExitCode.OK
    # A built-in's own error line is the task's error: said once, with the id.
    from ..runner import BUILTIN_ERROR_PREFIX
    show_log(ctx.store, record, ctx.shown_inputs, output,
             repeated=BUILTIN_ERROR_PREFIX + record.get(Field.ERROR, 'unknown'))
    print(f'{BUILTIN_ERROR_PREFIX}task {record["id"]} failed: {record.get("error", "unknown")}',
          file=sys.stderr)
    return exit_code_of(record)


def check_result_format(service, record, output, wanted=''):
    """The result has the format asked for (``wanted``, else ``output``'s
    extension's): a server that does not know ``outExt`` (RepRapCloud 0.019)
    makes its default instead."""
    wanted = wanted or ('' if output == '-' or not service.format_from_name else service.output_ext_of(output))
    made = record.get(Field.OUT, '').rpartition('.')[2].lower()
    if wanted and made != wanted:
        raise RRCloudError(f'{record.get("server", "the server")} made a .{made} file, not the '
                           f'.{wanted} asked for (it may not know outExt); {output} not written')


# Services whose result is text to read: ``rrcloud --sync echo TEXT`` prints
# it, as echo would; other results are files, and --sync shows their record.
TEXT_RESULT_SERVICES = ('echo',)


def print_text_result(ctx, record):
    """The result of a text service (echo) on stdout, ending in a newline as
    echo's does; False when it is no such result (the record is shown instead)."""
    if record.get(Field.SERVICE) not in TEXT_RESULT_SERVICES or ctx.options.format != 'text':
        return False
    with open(ctx.store.path_of(record[Field.OUT]), 'rb') as result:
        data = result.read()
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        return False
    sys.stdout.write(text if not text or text.endswith('\n') else text + '\n')
    sys.stdout.flush()
    return True


def _kill_quietly(store, task_id):
    from ..control import kill_task
    try:
        kill_task(store, task_id, by='Ctrl-C on the command line')
    except RRCloudError:
        pass


def deliver_output(source, destination):
    """Copy a result to where the tool would have written it, atomically
    (``-``: to stdout, as the tool writes it there)."""
    if destination == '-':
        with open(source, 'rb') as result:
            sys.stdout.flush()
            copy_stream(result, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return
    folder = os.path.dirname(os.path.abspath(destination))
    temp = os.path.join(folder, f'.{os.path.basename(destination)}.{os.getpid()}.rrcloud.tmp')
    try:
        with open(source, 'rb') as result, open(temp, 'wb') as copy:
            copy_stream(result, copy)
        os.replace(temp, destination)
    except OSError as exc:
        unlink_quietly(temp)
        raise RRCloudError(f'cannot write {destination}: {exc.strerror}') from None


def copy_stream(source, sink):
    """Copy an open file to another (not shutil: with what it imports, 1.5 ms of a wrapper's start)."""
    while chunk := source.read(1 << 20):
        sink.write(chunk)


def show_log(store, record, shown_inputs=(), output=None, repeated=''):
    """Write a task's log to stderr, naming the user's files instead of the store's;
    a last line equal to ``repeated`` (what the error line printed next says) is left out."""
    try:
        with open(store.log_path(record[Field.ID]), 'rb') as log:
            text = log.read().decode('utf-8', 'replace')
    except FileNotFoundError:
        return
    if repeated and text.rstrip('\n').rpartition('\n')[2] == repeated:
        text = text.rstrip('\n').rpartition('\n')[0] + '\n' if '\n' in text.rstrip('\n') else ''
    sys.stderr.write(as_the_user_named_it(text, stored_inputs(record), shown_inputs, output))
    sys.stderr.flush()


def stored_inputs(record):
    """The store paths of a task's inputs, in order: its ``in`` field, or for a
    remote task the ``tasks/in/…`` words of the server's ``cmd``."""
    if record.get(Field.IN):
        return record[Field.IN].split(',')
    import shlex
    try:
        words = shlex.split(record.get(Field.CMD, ''))
    except ValueError:
        return []
    paths = [word[word.index('tasks/in/'):] for word in words if 'tasks/in/' in word]
    # a project's folder named to the tool (POV-Ray's +L) is no input of its own
    return [p for p in paths if not any(other.startswith(p + '/') for other in paths)]


# A store path as a tool may print it: relative, or under the sandbox's /job
# or an unsandboxed server's root.
STORE_PATH_PREFIX = r'(?:(?:/[\w.+-]+)*/)?'


def as_the_user_named_it(text, stored, shown, output=None):
    """The tool's log with each stored input path replaced by the user's own name
    for it (a project's folder by the user's folder), the result's path by ``output``."""
    import re
    if len(stored) == len(shown):
        for path, name in zip(stored, shown):
            parts = path.split('/')
            if len(parts) > 3:  # a project: tasks/in/FOLDER/... -> the user's folder
                folder = STORE_PATH_PREFIX + re.escape('/'.join(parts[:3]))
                text = re.sub(folder + '/', lambda _, name=name: name, text)
                found, name = folder, name.rstrip('/') or '.'  # the folder itself (POV-Ray's +L)
            else:  # the stored name is unique: tools that print only a file's name show it alone
                found = STORE_PATH_PREFIX + '(?:tasks/in/)?' + re.escape(parts[-1])
                name = name or '<content>'
            text = re.sub(found, lambda _, name=name: name, text)
    if output:
        text = re.sub(STORE_PATH_PREFIX + r'tasks/out/[\w.-]+', lambda _: output, text)
    return text
