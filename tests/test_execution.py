"""Execution: detached runners, environment, no shell, a runner killed, kills, queueing, settings.

Everything here runs real child processes in real temp folders.  Test-only
services are written into the store root with ``make_service``; most run
``sh SCRIPT OUT`` (cmd ``sh``, the script is the input, the output path is
appended), so a test controls exactly what "the tool" does.  How the runner
supervises a tool (its log, its exit judged, the timeout, the limits) is in
test_runner.py.
"""
import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from rrc.errors import ExitCode
from conftest import make_service, task_id_of, wait_until_done, write_config
from helpers import (SH_NO_OUTPUT_SERVICE, SH_SERVICE, TOOL_WITH_GRANDCHILD, cli_info, read_record, sandboxed_pid,
    submit_script, wait_for_tool, wait_gone)

# After each test, what its tasks left running is stopped.
pytestmark = pytest.mark.usefixtures('no_leftover_processes')


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
    assert read_record(workdir, task_id)['status'] == 'busy'
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert (workdir / 'tasks' / 'out' / task_id).read_text() == 'done\n'


def test_runner_and_tool_run_in_their_own_session_and_process_group(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, 'sleep 3\necho done > "$1"\n')

    runner = int(read_record(workdir, task_id)['runner'])
    tool = wait_for_tool(workdir, task_id)

    mine = os.getsid(0), os.getpgid(0)
    assert (os.getsid(runner), os.getpgid(runner)) == (runner, runner) != mine
    assert (os.getsid(tool), os.getpgid(tool)) == (tool, tool) != mine
    assert wait_until_done(workdir, task_id)['status'] == 'complete'


###############################################################################
# 2. The task's environment is an allowlist
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
# 3. Never a shell
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


def test_native_argument_with_shell_syntax_is_one_word_of_text_and_runs_nothing(cli, workdir):
    (workdir / 'cube.scad').write_text('cube(10);\n')

    # An option's value is text in the tool's argv (a list; no shell ever reads
    # it): the tool gets it as it was written, and nothing else runs.
    task_id = task_id_of(cli('openscad', 'cube.scad', '--camera=0;touch${IFS}pwned').out)
    wait_until_done(workdir, task_id)

    assert read_record(workdir, task_id)['nativeArgs'] == '--camera=0;touch${IFS}pwned'
    assert not (workdir / 'pwned').exists() and not list(workdir.rglob('pwned'))


def test_native_argument_naming_a_path_is_refused(cli, workdir):
    (workdir / 'cube.scad').write_text('cube(10);\n')

    result = cli('openscad', 'cube.scad', '--camera=../../etc')

    assert result.code == ExitCode.USAGE
    assert '--camera=../../etc' in result.err
    assert not (workdir / 'tasks' / 'info').exists(), 'no task was created'


###############################################################################
# 4. A runner killed with SIGKILL never leaves its task busy
###############################################################################

def test_sigkilled_runner_leaves_the_task_failed_interrupted_and_its_tool_killed(proc, cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'job.sh').write_text(TOOL_WITH_GRANDCHILD)
    task_id = task_id_of(proc('job', 'job.sh').out)
    tool = wait_for_tool(workdir, task_id)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])
    runner = int(read_record(workdir, task_id)['runner'])

    os.kill(runner, signal.SIGKILL)
    wait_gone(runner, 'the runner')

    shown = cli_info(cli, task_id)
    assert shown['status'] == 'failed'
    assert shown['error'] == 'interrupted'
    wait_gone(tool, 'the tool of the interrupted task')
    wait_gone(grandchild, 'the grandchild of the interrupted task')
    listing = cli('info')
    assert f'=== id: {task_id}\n' in listing.out
    assert 'status: busy' not in listing.out


###############################################################################
# 5. rrcloud kill
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
    runner = int(read_record(workdir, task_id)['runner'])
    wait_gone(runner, 'the runner of the killed task')
    shown = cli_info(cli, task_id)
    assert (shown['status'], shown['error']) == ('failed', 'killed'), 'the runner keeps the kill'


def test_kill_stops_a_tool_that_ignores_sigterm(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    task_id = submit_script(cli, workdir, "trap '' TERM\n" + TOOL_WITH_GRANDCHILD)
    tool = wait_for_tool(workdir, task_id)
    grandchild = sandboxed_pid(workdir, task_id, ['sleep', '300'])

    assert cli('kill', task_id).code == 0

    wait_gone(tool, 'a killed tool that ignores SIGTERM')
    wait_gone(grandchild, 'its grandchild')
    assert cli_info(cli, task_id)['error'] == 'killed'


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
    runner = int(read_record(workdir, task_id)['runner'])
    wait_gone(runner, 'the runner of the killed task')
    for tool in psutil.process_iter(['cmdline', 'create_time']):
        if tool.info['cmdline'] == ['sleep', seconds]:  # it started, in its sandbox
            assert tool.info['create_time'] <= killed_at_tick, 'the tool was started after its task was killed'
            wait_gone(tool.pid, 'the tool of the killed task')
    assert cli_info(cli, task_id)['error'] == 'killed'


def test_kill_of_a_finished_task_is_refused(cli, workdir):
    task_id = task_id_of(cli('echo', 'hello world').out)
    wait_until_done(workdir, task_id)

    result = cli('kill', task_id)

    assert result.code == ExitCode.USAGE
    assert result.err.startswith('rrcloud: error: ') and task_id in result.err
    assert cli_info(cli, task_id)['status'] == 'complete'


###############################################################################
# 6. maxTasks: later tasks wait their turn
###############################################################################

def test_with_max_tasks_1_the_second_task_waits_for_the_first(cli, workdir):
    write_config(workdir, 'maxTasks = 1\n')
    make_service(workdir, 'job', SH_SERVICE)
    first = submit_script(cli, workdir, 'sleep 3\necho first > "$1"\n', name='first.sh')
    second = submit_script(cli, workdir, 'echo second > "$1"\n', name='second.sh')

    running, waiting = cli_info(cli, first), cli_info(cli, second)
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
    wait_gone(int(read_record(workdir, first)['runner']), 'the first runner')

    shown = cli_info(cli, second)
    assert (shown['status'], shown['error']) == ('failed', 'killed')
    assert 'runner' not in shown
    assert not (workdir / 'second-ran').exists()


###############################################################################
# 7. A task runs with the settings it was started with
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
    assert read_record(workdir, second)['queued'] == 'yes'

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
