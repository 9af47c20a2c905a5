"""The runner of one task (rrc/runner.py): the tool's output into its log, its
exit judged, its supervision (the watchdog's deadline, a kill, a suspension,
the bytes written), the limit a failed tool ran into, the progress lines of
the built-in sender.

Real runners started by the command line in real stores, and the runner's
parts on their own: real processes writing into real pipes, records in a
real store, the watchdog given the moment it looks at.  What a tool may use,
tried with the real tools and bombs, is in test_limits.py; the tasks' life
around the runner (detaching, kills, the queue, settings) in
test_execution.py.
"""
import contextlib
import os
import re
import subprocess
import time

import pytest

from conftest import make_service, task_id_of, wait_until_done, write_config
from helpers import (SH_NO_OUTPUT_SERVICE, SH_SERVICE, TOOL_WITH_GRANDCHILD, cli_info, kill_group, pid_from,
    process_gone, sandboxed_pid, submit_script, wait_gone)
from rrc.config import Config, default_max_processes
from rrc.errors import ExitCode, UsageError
from rrc.launch import check_stored_input
from rrc.runner import judge_exit
from rrc.supervise import KILLED, OutputPipe, SenderControl, Watchdog, parse_progress_line, supervise
from rrc.task import Task
from rrc.services import find_service, load_services
from rrc.store import Store, format_record
from rrc.toollog import ToolLog

# After each test, what its tasks left running is stopped.
pytestmark = pytest.mark.usefixtures('no_leftover_processes')

TASK_ID = '1796000000-00000-000001'


###############################################################################
# The tool's stdout and stderr go to tasks/log/ID
###############################################################################

def test_tool_stdout_and_stderr_go_to_the_task_log(proc, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text(
        'echo "said on stdout"\necho "said on stderr" >&2\necho result > "$1"\n')

    result = proc('job', 'job.sh')

    task_id = task_id_of(result.out)
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    log = (workdir / 'tasks' / 'log' / task_id).read_text()
    assert 'said on stdout\n' in log
    assert 'said on stderr\n' in log
    assert 'said on' not in result.out + result.err, 'the CLI shows nothing of the tool'


@contextlib.contextmanager
def tool_writing(command, folder, limit=1000, stdin=None):
    """``sh -c COMMAND`` in ``folder``, in its own process group, its stdout and
    stderr into a pipe that an OutputPipe empties into a ToolLog of ``limit``
    bytes over ``FOLDER/log``, as the runner does: yields (process, pipe).
    At the end the group is killed and the pipe closed."""
    read_end, write_end = os.pipe()
    with open(folder / 'log', 'ab') as log:
        try:
            process = subprocess.Popen(['sh', '-c', command], cwd=folder, stdout=write_end, stdin=stdin,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            os.close(write_end)
        pipe = OutputPipe(read_end, ToolLog(log, limit))
        try:
            yield process, pipe
        finally:
            kill_group(process.pid)
            process.wait()
            pipe.close()


def test_a_long_output_leaves_its_start_and_its_end_in_the_log(tmp_path):
    lines = ''.join(f'line {n:05d}\n' for n in range(1000))  # 11,000 bytes
    (tmp_path / 'out.txt').write_text(lines)
    with tool_writing('cat out.txt', tmp_path) as (process, pipe):
        process.wait()
        pipe.finish()

    log = (tmp_path / 'log').read_text()
    end = lines[10505:]  # of the newest 500 bytes, from the first whole line on
    assert log.startswith(lines[:500]) and log.endswith(end)
    said = log[500:-len(end)]
    assert re.fullmatch(r"\nrrcloud: [0-9.]+ KiB \(10005 bytes\) of the tool's output cut here "
                        r"\(maxLogSize 1000 bytes\)\n", said), said


def test_a_short_output_is_the_log_as_it_came(tmp_path):
    with tool_writing('echo one; echo two >&2; printf three', tmp_path) as (process, pipe):
        process.wait()
        pipe.finish()
        pipe.close()
        pipe.close()  # once is enough; again is harmless

    assert (tmp_path / 'log').read_bytes() == b'one\ntwo\nthree'


def test_the_log_ends_when_the_tool_does_even_if_a_grandchild_holds_the_pipe(tmp_path):
    """A background process that inherited the tool's stdout keeps the pipe
    open: the runner gives it ``timeout`` to let go, then ends the log."""
    with tool_writing('echo said; sleep 30 &', tmp_path) as (process, pipe):
        process.wait()

        pipe.finish(timeout=0.2)

        assert pipe.finished and pipe.open  # the writer is still there
    assert (tmp_path / 'log').read_bytes() == b'said\n'


def test_a_pipe_closed_before_it_was_finished_still_gives_the_log_what_came(tmp_path):
    with tool_writing('printf early', tmp_path) as (process, pipe):
        process.wait()

        pipe.close()  # the runner failed while watching: what came, then the log's end

        assert (tmp_path / 'log').read_bytes() == b'early'
        assert pipe.fd is None and not pipe.open


###############################################################################
# Complete only for exit 0 and a non-empty output
###############################################################################

@pytest.mark.parametrize('script, status, exit_code, error', [
    ('echo result > "$1"\n', 'complete', '0', None),
    (': > "$1"\n', 'failed', '0', 'no output'),                 # empty output file
    ('exit 0\n', 'failed', '0', 'no output'),                   # no output file at all
    ('echo partial > "$1"\nexit 3\n', 'failed', '3', 'exit code 3'),
], ids=['output', 'empty-output', 'missing-output', 'exit-3'])
def test_status_follows_exit_code_and_output(cli, workdir, script, status, exit_code, error):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, script)

    wait_until_done(workdir, task_id)

    shown = cli_info(cli, task_id)
    assert shown['status'] == status
    assert shown['exitCode'] == exit_code
    if error is None:
        assert 'error' not in shown
    else:
        assert error in shown['error']


@pytest.mark.parametrize('script, status', [('exit 0\n', 'complete'), ('exit 5\n', 'failed')])
def test_service_without_output_is_judged_by_exit_code_alone(cli, workdir, script, status):
    make_service(workdir, 'job', SH_NO_OUTPUT_SERVICE)
    task_id = submit_script(cli, workdir, script)

    wait_until_done(workdir, task_id)

    shown = cli_info(cli, task_id)
    assert shown['status'] == status
    assert shown['out'] == ''


def test_a_tool_killed_by_a_signal_is_failed_naming_it(workdir):
    make_service(workdir, 'job', SH_SERVICE)
    store = Store(workdir)
    service = find_service(*load_services(store.root), 'job')
    task = Task(store, TASK_ID, record={'id': TASK_ID, 'out': f'tasks/out/{TASK_ID}'})

    assert judge_exit(task, service, -9) == ('failed', {'exitCode': -9, 'error': 'killed by signal 9'})
    assert judge_exit(task, service, 137) == ('failed', {'exitCode': 137, 'error': 'exit code 137'})


###############################################################################
# The limit a failed tool ran into
###############################################################################

@pytest.mark.parametrize('said, error', [
    ('Cannot allocate memory', 'memory limit 512 MiB exceeded (maxMemory)'),
    ('sh: 1: Cannot fork', f'process limit {default_max_processes()} reached (maxProcesses)'),
    ('write error: File too large', 'a file it wrote passed maxOutputSize (20 MiB)'),
], ids=['memory', 'processes', 'file-size'])
def test_a_tool_that_fails_saying_it_ran_into_a_limit_is_failed_naming_the_limit(cli, workdir, said, error):
    write_config(workdir, 'maxMemory = 512M\nmaxOutputSize = 20M\n')
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, f'echo "{said}" >&2\nexit 2\n')

    record = wait_until_done(workdir, task_id)

    assert (record['status'], record['error'], record['exitCode']) == ('failed', error, '2'), record
    log = (workdir / 'tasks' / 'log' / task_id).read_text().splitlines()
    assert log[-2:] == [said, f'rrcloud: the tool ran into a limit: {error}'], log


def test_a_tool_that_says_so_but_succeeds_is_complete(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, 'echo "retrying: Cannot allocate memory" >&2\necho done > "$1"\n')

    record = wait_until_done(workdir, task_id)

    assert record['status'] == 'complete' and 'error' not in record, record
    assert 'ran into a limit' not in (workdir / 'tasks' / 'log' / task_id).read_text()


###############################################################################
# Supervision: the watchdog
###############################################################################

def test_timeout_fails_the_task_and_kills_the_grandchild(cli, workdir):
    write_config(workdir, 'timeout = 2\n')
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, TOOL_WITH_GRANDCHILD)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])
    tool = sandboxed_pid(workdir, task_id, ['sh'])

    wait_until_done(workdir, task_id)

    shown = cli_info(cli, task_id)
    assert shown['status'] == 'failed'
    assert 'timeout' in shown['error'] and '2' in shown['error'], shown['error']
    wait_gone(tool, 'the tool')
    wait_gone(grandchild, 'the grandchild started by the tool')


def busy_task(root, **fields):
    """A store with one running task's record (written straight to disk); the store."""
    store = Store(root)
    store.ensure()
    write_record(root, {'id': TASK_ID, 'service': 'echo', 'status': 'busy', 'ctime': f'{time.time():.5f}', **fields})
    return store


def write_record(root, record):
    (root / 'tasks' / 'info' / TASK_ID).write_text(format_record(record))


def watch_config(**settings):
    config = Config()
    for key, value in settings.items():
        setattr(config, key, value)
    return config


def test_the_watchdog_looks_at_the_record_every_interval_and_sees_a_kill(tmp_path):
    store = busy_task(tmp_path)
    watchdog = Watchdog(Task(store, TASK_ID, watch_config(timeout=60)), interval=0.5)
    start = watchdog.looked
    write_record(tmp_path, {'id': TASK_ID, 'service': 'echo', 'status': 'failed', 'error': 'killed'})

    assert watchdog.due() == start + 0.5
    assert watchdog.verdict(start + 0.4) is None  # not time to look yet
    assert watchdog.verdict(start + 0.5) == KILLED


def test_time_suspended_does_not_count_against_the_timeout(tmp_path):
    store = busy_task(tmp_path, suspended='yes')
    watchdog = Watchdog(Task(store, TASK_ID, watch_config(timeout=10, maxSuspend=60)), interval=0.5)
    start = watchdog.looked

    assert watchdog.verdict(start + 5) is None   # 5 s suspended
    assert watchdog.verdict(start + 12) is None  # 12 s suspended: past the timeout, were it running
    busy_task(tmp_path)  # resumed
    assert watchdog.verdict(start + 20) is None  # 8 s of running so far
    assert watchdog.verdict(start + 21.5) is None
    assert watchdog.verdict(start + 22.5) == 'timeout after 10 s'


def test_a_task_suspended_past_max_suspend_must_end(tmp_path):
    store = busy_task(tmp_path, suspended='yes')
    watchdog = Watchdog(Task(store, TASK_ID, watch_config(timeout=60, maxSuspend=1)), interval=0.5)
    start = watchdog.looked

    assert watchdog.verdict(start + 0.6) is None
    assert watchdog.verdict(start + 1.2) == 'suspended longer than maxSuspend (1 s)'


def test_the_watchdog_counts_every_file_the_tool_wrote(tmp_path):
    store = busy_task(tmp_path)
    work = tmp_path / 'tasks' / 'work' / TASK_ID
    (work / 'a' / 'b').mkdir(parents=True)
    (work / 'one').write_bytes(b'x' * 600)
    (work / 'a' / 'b' / 'two').write_bytes(b'x' * 600)
    watchdog = Watchdog(Task(store, TASK_ID, watch_config(timeout=60, maxOutputSize=1000)), work=str(work),
                        interval=0.5)
    start = watchdog.looked

    assert watchdog.verdict(start + 0.5) == 'its output passed maxOutputSize (1000 bytes) while it ran'


def test_supervise_waits_for_the_tool_and_moves_its_output_on(tmp_path):
    store = busy_task(tmp_path)
    with tool_writing('echo working; exit 3', tmp_path) as (process, pipe):
        outcome = supervise(process, Watchdog(Task(store, TASK_ID, watch_config(timeout=60))), pipe)
        pipe.finish()

    assert outcome == (3, None)
    assert (tmp_path / 'log').read_bytes() == b'working\n'


@pytest.mark.parametrize('stop', ['timeout', 'killed'])
def test_supervise_stops_the_tools_whole_group(tmp_path, stop):
    store = busy_task(tmp_path)
    with tool_writing('sleep 300 & echo $! > grandchild.pid; wait', tmp_path) as (process, pipe):
        grandchild = pid_from(tmp_path / 'grandchild.pid')
        if stop == 'killed':  # as rrcloud kill leaves the record
            write_record(tmp_path, {'id': TASK_ID, 'service': 'echo', 'status': 'failed', 'error': 'killed'})
        config = watch_config(timeout=0.3 if stop == 'timeout' else 60)

        code, why = supervise(process, Watchdog(Task(store, TASK_ID, config), interval=0.2), pipe)

        assert code not in (0, None)
        assert why == ('timeout after 0.3 s' if stop == 'timeout' else None)  # killed: the record says so already
        wait_gone(grandchild, 'the grandchild of the stopped tool')
        assert process_gone(process.pid)


# A sender (a shell here) that reads its control pipe (on its stdin) and ends as rrcloud print does when cancelled.
CANCELLING_SENDER = ('while read word; do [ "$word" = cancel ] && break; done; '
                     'echo "rrcloud print: cancelled after line 7"; echo "rrcloud: error: cancelled"; exit 1')


@pytest.mark.parametrize('sender, why', [
    (CANCELLING_SENDER, 'timeout after 0.3 s: cancelled'),
    ('sleep 300', 'timeout after 0.3 s: the sender did not end within 0.5 s of its cancel'),
])
def test_a_print_past_its_deadline_is_cancelled_by_its_sender_else_stopped(tmp_path, sender, why):
    store = busy_task(tmp_path)
    control_read, control_write = os.pipe()
    try:
        with tool_writing(sender, tmp_path, stdin=control_read) as (process, pipe):
            watchdog = Watchdog(Task(store, TASK_ID, watch_config(timeout=0.3)), interval=0.2,
                                control=SenderControl(control_write))
            watchdog.cancel_grace = 0.5
            code, stopped = supervise(process, watchdog, pipe)
            pipe.finish()
            if not isinstance(stopped, str):
                stopped = stopped.reason(pipe.log.last_bytes())
    finally:
        os.close(control_read)
        os.close(control_write)

    assert code not in (0, None) and stopped == why
    assert process_gone(process.pid)
    assert 'rrcloud: timeout after 0.3 s: the print is cancelled (its cancel G-code)' in store_log(store)


# A sender (a shell here) whose last words on SIGTERM take a moment, as
# rrcloud print writes M108 and the cancel G-code to its printer then.
LAST_WORDS_SENDER = 'trap "sleep 0.3; echo M108 > {out}/last-words; exit 1" TERM; while :; do sleep 0.05; done'


@pytest.mark.parametrize('sandboxed', [False, True], ids=['unsandboxed', 'sandboxed'])
def test_a_print_sender_past_its_grace_gets_sigterm_alone_first_and_says_its_last_words(tmp_path, sandboxed):
    """In a sandbox the group's SIGTERM ends bwrap, whose end kills the
    sender at once (--die-with-parent, its PID namespace): the sender alone
    is told first, and has a moment to turn the printer's heaters off."""
    import shlex
    from rrc.sandbox import JOB_FOLDER, Sandbox
    store = busy_task(tmp_path)
    out = tmp_path / 'out'
    out.mkdir()
    command = ['sh', '-c', LAST_WORDS_SENDER.format(out=f'{JOB_FOLDER}/tasks/out' if sandboxed else out)]
    if sandboxed:
        command = Sandbox([], str(out)).command(command)
    control_read, control_write = os.pipe()
    try:
        with tool_writing('exec ' + shlex.join(command), tmp_path) as (process, pipe):
            watchdog = Watchdog(Task(store, TASK_ID, watch_config(timeout=0.3)), interval=0.2,
                                control=SenderControl(control_write))
            watchdog.cancel_grace = 0.5
            code, stopped = supervise(process, watchdog, pipe)
            pipe.finish()
    finally:
        os.close(control_read)
        os.close(control_write)

    assert code not in (0, None)
    assert stopped == 'timeout after 0.3 s: the sender did not end within 0.5 s of its cancel'
    assert (out / 'last-words').read_text() == 'M108\n'


def store_log(store):
    with open(store.log_path(TASK_ID), encoding='utf-8') as log:
        return log.read()


###############################################################################
# The built-in sender's progress; what a record may name as an input
###############################################################################

@pytest.mark.parametrize('line, parsed', [
    (b'5/10', (5, 10, {})),
    (b'0/0', (0, 0, {})),
    (b' 12/340 \r', (12, 340, {})),
    (b'5/', None),
    (b'/10', None),
    (b'-1/10', None),
    (b'5/10/20', None),
    (b'five/10', None),
    (b'5 / 10', None),
    (b'', None),
    (b'1' * 31 + b'/' + b'2' * 32, (int('1' * 31), int('2' * 32), {})),
    (b'5/10 hotend=210.5 hotendTarget=210 bed=60 bytes=1234 layer=3 z=0.6 paused=0 evil=1 z2=x',
     (5, 10, {'hotend': 210.5, 'hotendTarget': 210, 'bed': 60, 'bytes': 1234, 'layer': 3, 'z': 0.6, 'paused': 0})),
    (b'5/10 hotend=nan bed=inf z=1e99 layer=', (5, 10, {})),
    (b'5/10 ' + b'x' * 251, (5, 10, {})),                             # 256 bytes: the longest taken
    (b'5/10 ' + b'x' * 252, None),                                    # 257: dropped unread
], ids=['done-total', 'zero', 'spaces', 'no-total', 'no-done', 'negative', 'two-slashes', 'word', 'spaced',
        'empty', 'long-numbers', 'printer-state', 'non-finite', 'longest', 'too-long'])
def test_parse_progress_line(line, parsed):
    assert parse_progress_line(line) == parsed


@pytest.mark.parametrize('path', [
    f'tasks/in/{TASK_ID}',
    f'tasks/in/{TASK_ID}.scad',
    f'tasks/in/{TASK_ID}/main.scad',
    f'tasks/in/{TASK_ID}/parts/gear_2.scad',
])
def test_a_stored_input_is_taken(path):
    assert check_stored_input(path) == path


@pytest.mark.parametrize('path', [
    f'tasks/out/{TASK_ID}',
    f'tasks/in/{TASK_ID}.scad/x',
    f'tasks/in/{TASK_ID}/../../rrcloudrc',
    f'tasks/in/{TASK_ID}/.hidden',
    'tasks/in/not-an-id.scad',
    'tasks/in/',
    '/etc/passwd',
    f'/tasks/in/{TASK_ID}',
    f'tasks/in/{TASK_ID}.sc ad',
])
def test_anything_else_in_a_record_is_not_a_stored_input(path):
    with pytest.raises(UsageError, match='is not a stored input'):
        check_stored_input(path)


def test_run_refuses_bad_arguments(proc, workdir):
    result = proc('_run', 'x')

    assert (result.code, result.err) == (ExitCode.USAGE, 'rrcloud: error: usage: rrcloud _run ID --dir ROOT\n')
    assert list(workdir.iterdir()) == []
