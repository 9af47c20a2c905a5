"""Execution: detached runners, logs, exit judgement, environment, no shell, timeouts, kills, queueing.

Everything here runs real child processes in real temp folders.  Test-only
services are written into the store root with ``make_service``; most run
``sh SCRIPT OUT`` (cmd ``sh``, the script is the input, the output path is
appended), so a test controls exactly what "the tool" does.
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from rrc.errors import ExitCode
from rrc.procs import process_is
from rrc.store import Store
from conftest import make_service, task_id_of, wait_until_done, write_config
from helpers import wait_for

# A service running a shell script: argv is ``sh tasks/in/X.sh tasks/out/ID``.
SH_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n'
# The same without an output file: argv is ``sh tasks/in/X.sh``.
SH_NO_OUTPUT_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\nnoOutput = yes\n'
# A tool that starts a grandchild, writes both pids, and waits for it.
TOOL_WITH_GRANDCHILD = (
    'echo $$ > tool.pid\n'
    'sleep 300 &\n'
    'echo $! > grandchild.pid\n'
    'wait\n'
)
DEADLINE = 60  # generous: waiting is fine, timing is never asserted


###############################################################################
# Helpers
###############################################################################

def raw_record(root, task_id):
    """tasks/info/ID as written, without reconciling."""
    return Store(root).read_task(task_id)


def submit_script(cli, workdir, script, service='job', name='job.sh'):
    """Write ``script`` to a file and start it as a task of ``service``; returns the id."""
    (workdir / name).write_text(script)
    result = cli(service, name)
    assert result.code == 0, result
    return task_id_of(result.out)


def info(cli, task_id):
    """``rrcloud info ID`` parsed into a dict, as a user reads it."""
    result = cli('info', task_id)
    assert result.code == 0, result
    lines = result.out.splitlines()
    assert lines[0] == f'=== id: {task_id}', result.out
    return dict(line.split(': ', 1) for line in lines[1:] if line)


def process_gone(pid):
    """True when ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(')') + 2] in 'ZX'


def wait_gone(pid, what):
    wait_for(lambda: process_gone(pid), f'{what} (pid {pid}) still running')


def pid_from(path):
    """The pid a script wrote into ``path``, once it is there."""
    def read():
        try:
            text = Path(path).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None
    return wait_for(read, f'{path} written')


def sandboxed_pid(workdir, task_id, first_words):
    """The host pid of a task's process whose command line starts with
    ``first_words``: a sandboxed tool sees only its own PID namespace, so it
    cannot write its host pid for us; the runner's record names the sandbox."""
    def find():
        pid = raw_record(workdir, task_id).get('pid')
        try:
            children = psutil.Process(int(pid)).children(recursive=True) if pid else []
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                words = child.cmdline()
                if [os.path.basename(words[0])] + words[1:len(first_words)] == first_words:
                    return child.pid
            except psutil.Error:
                continue
        return None
    return wait_for(find, f'{" ".join(first_words)} of task {task_id} running')


def wait_for_tool(workdir, task_id):
    """The tool's pid, once the runner has recorded it."""
    return int(wait_for(lambda: raw_record(workdir, task_id).get('pid'), 'tool pid recorded'))


@pytest.fixture(autouse=True)
def no_leftover_processes(workdir):
    """After each test, stop what its tasks left running (only those, by pid)."""
    yield
    store = Store(workdir)
    for task_id in store.task_ids():
        record = store.read_task(task_id)
        for pid_key, start_key in (('pid', 'pidStart'), ('runner', 'runnerStart')):
            pid = record.get(pid_key)
            if pid and process_is(pid, record.get(start_key)):
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    for pidfile in ('tool.pid', 'grandchild.pid'):
        path = workdir / pidfile
        if path.is_file() and path.read_text().strip().isdigit():
            pid = int(path.read_text())
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


###############################################################################
# 1. Asynchronous: the CLI returns at once, the task runs detached
###############################################################################

def test_echo_prints_its_id_and_the_task_completes(proc, workdir):
    result = proc('echo', 'hello world')

    assert result.code == 0, result
    assert result.err == ''
    task_id = task_id_of(result.out)
    assert result.out == f'id: {task_id}\n'
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert (workdir / 'tasks' / 'out' / task_id).read_text() == 'hello world'


def test_slow_task_keeps_running_after_the_cli_exited(proc, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text('sleep 3\necho done > "$1"\n')

    result = proc('job', 'job.sh')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    # The CLI process has exited; a 3 s task that is still busy proves it did not wait.
    assert raw_record(workdir, task_id)['status'] == 'busy'
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert (workdir / 'tasks' / 'out' / task_id).read_text() == 'done\n'


def test_runner_and_tool_run_in_their_own_session_and_process_group(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, 'sleep 3\necho done > "$1"\n')

    runner = int(raw_record(workdir, task_id)['runner'])
    tool = wait_for_tool(workdir, task_id)

    mine = os.getsid(0), os.getpgid(0)
    assert (os.getsid(runner), os.getpgid(runner)) == (runner, runner) != mine
    assert (os.getsid(tool), os.getpgid(tool)) == (tool, tool) != mine
    assert wait_until_done(workdir, task_id)['status'] == 'complete'


###############################################################################
# 2. The tool's stdout and stderr go to tasks/log/ID
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


###############################################################################
# 3. Complete only for exit 0 and a non-empty output
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

    shown = info(cli, task_id)
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

    shown = info(cli, task_id)
    assert shown['status'] == status
    assert shown['out'] == ''


###############################################################################
# 4. The task's environment is an allowlist
###############################################################################

DUMP_ENVIRONMENT = (
    'import json, os, sys\n'
    'with open(sys.argv[1], "w") as out:\n'
    '    json.dump(dict(os.environ), out)\n'
)
HOSTILE_ENVIRONMENT = {
    'HTTP_PROXY': 'http://proxy.invalid:3128',
    'HTTP_X_EVIL': 'evil',
    'DISPLAY': ':0',
    'SECRET_TOKEN': 'secret-value-1234',
}


def test_task_environment_holds_only_allowed_variables_and_the_services_path(proc, workdir):
    make_service(workdir, 'dumpenv', 'path = /usr/bin:/bin\ncmd = python3\ninputExt = py\n')
    (workdir / 'dump.py').write_text(DUMP_ENVIRONMENT)

    result = proc('dumpenv', 'dump.py', env=HOSTILE_ENVIRONMENT)

    task_id = task_id_of(result.out)
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    env = json.loads((workdir / 'tasks' / 'out' / task_id).read_text())
    for name in HOSTILE_ENVIRONMENT:
        assert name not in env, name
    assert 'secret-value-1234' not in json.dumps(env)
    assert env['PATH'] == '/usr/bin:/bin'
    allowed = {'PATH', 'HOME', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TMPDIR', 'USER', 'LOGNAME'}
    assert set(env) <= allowed, set(env) - allowed


###############################################################################
# 5. Never a shell
###############################################################################

def test_content_with_shell_syntax_is_data_not_a_command(cli, workdir, tmp_path):
    canaries = [tmp_path / f'pwned-{n}' for n in range(4)]
    content = (f'$(touch {canaries[0]}); `touch {canaries[1]}` | touch {canaries[2]} '
               f'&& touch {canaries[3]}')

    task_id = task_id_of(cli('echo', content).out)

    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert (workdir / 'tasks' / 'out' / task_id).read_text() == content
    assert [c for c in canaries if c.exists()] == []


@pytest.mark.parametrize('name', ['a;touch pwned;b.txt', '$(touch pwned).txt',
                                  '`touch pwned`.txt', 'x && touch pwned.txt', ';'])
def test_input_file_named_with_shell_syntax_runs_nothing(cli, workdir, name):
    (workdir / name).write_text('harmless\n')

    result = cli('echo', name)

    task_id = task_id_of(result.out)
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert (workdir / 'tasks' / 'out' / task_id).read_text() == 'harmless\n'
    assert not (workdir / 'pwned').exists()
    assert not (workdir / 'pwned.txt').exists()


def test_native_argument_with_shell_syntax_is_refused(cli, workdir):
    (workdir / 'cube.scad').write_text('cube(10);\n')

    # (no space in it: an argument holding whitespace would be content, i.e. data)
    result = cli('openscad', 'cube.scad', '--camera=0;touch${IFS}pwned')

    assert result.code == ExitCode.USAGE
    assert '--camera=0;touch${IFS}pwned' in result.err
    assert not (workdir / 'pwned').exists()
    assert not (workdir / 'tasks' / 'info').exists(), 'no task was created'


###############################################################################
# 6. Timeout stops the whole process group
###############################################################################

def test_timeout_fails_the_task_and_kills_the_grandchild(cli, workdir):
    write_config(workdir, 'timeout = 2\n')
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, TOOL_WITH_GRANDCHILD)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])
    tool = sandboxed_pid(workdir, task_id, ['sh'])

    wait_until_done(workdir, task_id)

    shown = info(cli, task_id)
    assert shown['status'] == 'failed'
    assert 'timeout' in shown['error'] and '2' in shown['error'], shown['error']
    wait_gone(tool, 'the tool')
    wait_gone(grandchild, 'the grandchild started by the tool')


###############################################################################
# 7. A runner killed with SIGKILL never leaves its task busy
###############################################################################

def test_sigkilled_runner_leaves_the_task_failed_interrupted_and_its_tool_killed(proc, cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text(TOOL_WITH_GRANDCHILD)
    task_id = task_id_of(proc('job', 'job.sh').out)
    tool = wait_for_tool(workdir, task_id)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])
    runner = int(raw_record(workdir, task_id)['runner'])

    os.kill(runner, signal.SIGKILL)
    wait_gone(runner, 'the runner')

    shown = info(cli, task_id)
    assert shown['status'] == 'failed'
    assert shown['error'] == 'interrupted'
    wait_gone(tool, 'the tool of the interrupted task')
    wait_gone(grandchild, 'the grandchild of the interrupted task')
    listing = cli('info')
    assert f'=== id: {task_id}\n' in listing.out
    assert 'status: busy' not in listing.out


###############################################################################
# 8. rrcloud kill
###############################################################################

def test_kill_of_a_busy_task_fails_it_and_stops_its_tool(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, TOOL_WITH_GRANDCHILD)
    tool = wait_for_tool(workdir, task_id)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])

    result = cli('kill', task_id)

    assert result.code == 0, result
    assert result.out == f'id: {task_id}\nstatus: failed\nerror: killed\n'
    wait_gone(tool, 'the killed tool')
    wait_gone(grandchild, 'the grandchild of the killed tool')
    runner = int(raw_record(workdir, task_id)['runner'])
    wait_gone(runner, 'the runner of the killed task')
    shown = info(cli, task_id)
    assert (shown['status'], shown['error']) == ('failed', 'killed'), 'the runner keeps the kill'


def test_kill_stops_a_tool_that_ignores_sigterm(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, "trap '' TERM\n" + TOOL_WITH_GRANDCHILD)
    tool = wait_for_tool(workdir, task_id)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])

    assert cli('kill', task_id).code == 0

    wait_gone(tool, 'a killed tool that ignores SIGTERM')
    wait_gone(grandchild, 'its grandchild')
    assert info(cli, task_id)['error'] == 'killed'


def test_a_task_killed_right_after_submission_never_starts_its_tool_later(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    # The tool keeps running, under a name no other test's process has.
    seconds = f'300.{os.getpid()}{time.monotonic_ns() % 100000}'
    task_id = submit_script(cli, workdir, f'exec sleep {seconds}\n')

    killed = cli('kill', task_id)
    # The moment of the kill on the clock psutil reads start times from
    # (ticks since boot): a process started right after it.
    after_kill = subprocess.Popen(['true'])
    killed_at_tick = psutil.Process(after_kill.pid).create_time()
    after_kill.wait()

    assert killed.code == 0, killed
    runner = int(raw_record(workdir, task_id)['runner'])
    wait_gone(runner, 'the runner of the killed task')
    for tool in psutil.process_iter(['cmdline', 'create_time']):
        if tool.info['cmdline'] == ['sleep', seconds]:  # it started, in its sandbox
            assert tool.info['create_time'] <= killed_at_tick, 'the tool was started after its task was killed'
            wait_gone(tool.pid, 'the tool of the killed task')
    assert info(cli, task_id)['error'] == 'killed'


def test_kill_of_a_finished_task_is_refused(cli, workdir):
    task_id = task_id_of(cli('echo', 'hello world').out)
    wait_until_done(workdir, task_id)

    result = cli('kill', task_id)

    assert result.code == ExitCode.USAGE
    assert result.err.startswith('rrcloud: error: ') and task_id in result.err
    assert info(cli, task_id)['status'] == 'complete'


###############################################################################
# 9. maxTasks: later tasks wait their turn
###############################################################################

def test_with_max_tasks_1_the_second_task_waits_for_the_first(cli, workdir):
    write_config(workdir, 'maxTasks = 1\n')
    make_service(workdir, 'job', SH_SERVICE)
    first = submit_script(cli, workdir, 'sleep 3\necho first > "$1"\n', name='first.sh')
    second = submit_script(cli, workdir, 'echo second > "$1"\n', name='second.sh')

    running, waiting = info(cli, first), info(cli, second)
    assert running['status'] == 'busy' and 'queued' not in running
    assert waiting['status'] == 'busy' and waiting['queued'] == 'yes'
    meta = dict(line.split(': ', 1) for line in cli('meta').out.splitlines())
    assert (meta['busy'], meta['queued'], meta['maxTasks']) == ('1', '1', '1')

    done_first = wait_until_done(workdir, first)
    done_second = wait_until_done(workdir, second)

    assert done_first['status'] == done_second['status'] == 'complete'
    assert 'queued' not in done_second
    assert float(done_first['etime']) <= float(done_second['stime'])
    assert (workdir / 'tasks' / 'out' / second).read_text() == 'second\n'


def test_a_queued_task_that_is_killed_never_runs(cli, workdir):
    write_config(workdir, 'maxTasks = 1\n')
    make_service(workdir, 'job', SH_SERVICE)
    first = submit_script(cli, workdir, 'sleep 3\necho first > "$1"\n', name='first.sh')
    second = submit_script(cli, workdir, 'touch second-ran\necho x > "$1"\n', name='second.sh')

    assert cli('kill', second).code == 0
    assert wait_until_done(workdir, first)['status'] == 'complete'
    # Give a wrongly dispatched second task every chance to show up.
    wait_gone(int(raw_record(workdir, first)['runner']), 'the first runner')

    shown = info(cli, second)
    assert (shown['status'], shown['error']) == ('failed', 'killed')
    assert 'runner' not in shown
    assert not (workdir / 'second-ran').exists()


###############################################################################
# 10. A task runs with the settings it was started with
###############################################################################

def test_removing_rrcloudrc_right_after_a_submission_changes_nothing(proc, workdir):
    write_config(workdir, 'timeout = 1\n')
    make_service(workdir, 'job', SH_NO_OUTPUT_SERVICE)
    (workdir / 'job.sh').write_text('sleep 30\n')

    started = proc('--local', 'job', 'job.sh')
    (workdir / 'rrcloudrc').unlink()

    assert started.code == 0, started
    record = wait_until_done(workdir, task_id_of(started.out))
    assert (record['status'], record['error']) == ('failed', 'timeout after 1 s'), record


def test_a_queued_task_keeps_the_settings_of_its_submission(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    write_config(workdir, 'maxTasks = 1\n')
    first = submit_script(cli, workdir, 'sleep 2\necho first > "$1"\n', name='first.sh')
    write_config(workdir, 'maxTasks = 1\ntimeout = 0.5\n')
    second = submit_script(cli, workdir, 'sleep 30\necho second > "$1"\n', name='second.sh')
    assert raw_record(workdir, second)['queued'] == 'yes'

    write_config(workdir, 'maxTasks = 1\ntimeout = soon\n')  # broken before the second starts

    assert wait_until_done(workdir, first)['status'] == 'complete'
    record = wait_until_done(workdir, second)
    assert (record['status'], record['error']) == ('failed', 'timeout after 0.5 s'), record


@pytest.mark.parametrize('settings, reason', [
    ('timeout = soon\n', 'bad value for timeout'),
    ('dir = /etc\n', "'dir' is not a task setting"),
    ('sandbox\n', 'expected "key = value"'),
])
def test_a_task_whose_settings_do_not_check_fails_and_its_log_says_why(cli, workdir, settings, reason):
    make_service(workdir, 'job', SH_SERVICE)
    write_config(workdir, 'maxTasks = 1\n')
    first = submit_script(cli, workdir, 'sleep 2\necho first > "$1"\n', name='first.sh')
    second = submit_script(cli, workdir, 'touch second-ran\necho x > "$1"\n', name='second.sh')
    (workdir / 'tasks' / 'queue' / second).write_text(settings)  # what the submission wrote, damaged

    assert wait_until_done(workdir, first)['status'] == 'complete'
    record = wait_until_done(workdir, second)

    assert record['status'] == 'failed' and record['error'].startswith('cannot start: '), record
    assert reason in record['error'], record
    assert reason in (workdir / 'tasks' / 'log' / second).read_text()
    assert not (workdir / 'second-ran').exists()


def test_a_killed_tasks_log_says_who_killed_it(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, 'sleep 300\n')
    wait_for_tool(workdir, task_id)

    assert cli('kill', task_id).code == 0

    log = (workdir / 'tasks' / 'log' / task_id).read_text()
    assert f'task {task_id} killed by the command line (user ' in log, log
