"""Suspend and resume: a running tool's process group is stopped and continued.

Real tools in their sandbox: an OpenSCAD render that takes seconds, and shell
jobs for the timeout and kill cases; the HTTP form through a live embedded
server.
"""
import shutil
import time

import psutil
import pytest

from conftest import DATA, make_service, task_id_of, wait_until_done, write_config
from helpers import plain_session, wait_for
from rrc.store import Store

SLOW_MODEL = DATA / 'slow-render.scad'  # about 5 s of CGAL on this machine


def tool_processes(root, task_id):
    """The live processes of a task's tool group (the sandbox and what runs in it)."""
    pid = Store(root).read_task(task_id).get('pid')
    if not pid:
        return []
    try:
        group = psutil.Process(int(pid))
        return [group] + group.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def states_of(processes):
    states = set()
    for process in processes:
        try:
            states.add(process.status())
        except psutil.NoSuchProcess:
            pass
    return states


def started_render(cli, workdir):
    shutil.copy(SLOW_MODEL, workdir / 'slow.scad')
    task_id = task_id_of(cli('openscad', 'slow.scad').out)
    wait_for(lambda: any(p.name() == 'openscad' for p in tool_processes(workdir, task_id)),
             'the render to start', timeout=30)
    return task_id


def test_suspend_stops_a_running_render_and_resume_lets_it_finish(cli, workdir):
    task_id = started_render(cli, workdir)

    suspended = cli('suspend', task_id)

    assert suspended.code == 0, suspended
    assert suspended.out == f'id: {task_id}\nstatus: busy\nstate: suspended\n'
    processes = tool_processes(workdir, task_id)
    assert processes
    wait_for(lambda: states_of(processes) == {psutil.STATUS_STOPPED}, 'every process of the tool stopped (T)')
    info = cli('info', task_id).out
    assert 'status: busy\n' in info and 'suspended: yes\n' in info
    cpu_before = sum(p.cpu_times().user for p in processes)
    time.sleep(1.0)
    assert sum(p.cpu_times().user for p in processes) == cpu_before, 'a stopped render used CPU'

    resumed = cli('resume', task_id)

    assert resumed.code == 0, resumed
    assert resumed.out == f'id: {task_id}\nstatus: busy\nstate: running\n', 'the resumed state'
    assert psutil.STATUS_STOPPED not in states_of(processes)
    record = wait_until_done(workdir, task_id, timeout=120)
    assert record['status'] == 'complete', record
    assert (workdir / 'tasks' / 'out' / f'{task_id}.stl').read_text().startswith('solid')
    log = (workdir / 'tasks' / 'log' / task_id).read_text()
    assert f'task {task_id} suspended by the command line' in log
    assert f'task {task_id} resumed by the command line' in log


def test_suspended_time_does_not_count_against_the_timeout(cli, workdir):
    write_config(workdir, 'timeout = 3\n')
    make_service(workdir, 'job', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    (workdir / 'job.sh').write_text('sleep 2\necho done > "$1"\n')
    task_id = task_id_of(cli('job', 'job.sh').out)
    wait_for(lambda: tool_processes(workdir, task_id), 'the job to start')
    time.sleep(0.5)

    assert cli('suspend', task_id).code == 0
    time.sleep(4)  # longer than the whole timeout
    assert cli('resume', task_id).code == 0

    record = wait_until_done(workdir, task_id)
    assert record['status'] == 'complete', record


def test_a_suspended_task_can_be_killed(cli, workdir):
    task_id = started_render(cli, workdir)
    assert cli('suspend', task_id).code == 0
    processes = tool_processes(workdir, task_id)

    killed = cli('kill', task_id)

    assert killed.code == 0, killed
    record = wait_until_done(workdir, task_id)
    assert (record['status'], record['error']) == ('failed', 'killed')
    assert 'suspended' not in record
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes),
             'the stopped tool to end', timeout=10)


@pytest.mark.parametrize('verb', ['suspend', 'resume'])
def test_only_a_task_in_the_right_state_is_suspended_or_resumed(cli, workdir, verb):
    done = task_id_of(cli('echo', 'finished already').out)
    wait_until_done(workdir, done)

    result = cli(verb, done)

    assert result.code == 2, result
    assert result.err == f'rrcloud: error: task {done} cannot {verb}: it is complete' + (
        ' (only a running task can)\n' if verb == 'suspend' else '\n')


def test_suspend_of_an_unknown_task_exits_3(cli, workdir):
    result = cli('suspend', '1796000000-00000-000001')
    assert (result.code, result.err) == (3, 'rrcloud: error: no such task: 1796000000-00000-000001\n')


def test_suspend_and_resume_over_http(embedded_server):
    server = embedded_server(config='')
    session = plain_session()
    answer = session.post(server.url, files={'service': (None, 'openscad'),
                                             'fileIn0': ('slow.scad', SLOW_MODEL.read_bytes())}, timeout=30)
    task_id = answer.text.split('id: ')[1].split('\n')[0]
    wait_for(lambda: any(p.name() == 'openscad' for p in tool_processes(server.root, task_id)),
             'the render to start', timeout=30)

    paused = session.get(server.url, params={'service': 'suspend', 'id': task_id, 'format': 'json'}, timeout=30)
    assert paused.status_code == 200, paused.text
    assert (paused.json()['status'], paused.json()['suspended']) == ('busy', 'yes')
    again = session.get(server.url, params={'service': 'suspend', 'id': task_id}, timeout=30)
    assert again.status_code == 400
    assert again.text == f'error: task {task_id} cannot suspend: it is suspended (only a running task can)\n'
    foreign = session.get(server.url, params={'service': 'resume', 'id': task_id},
                          headers={'Origin': 'http://evil.example'}, timeout=30)
    assert foreign.status_code == 403

    resumed = session.get(server.url, params={'service': 'resume', 'id': task_id, 'format': 'json'}, timeout=30)
    assert resumed.status_code == 200, resumed.text
    assert 'suspended' not in resumed.json()
    final = session.get(server.url, params={'service': 'info', 'id': task_id, 'wait': 60, 'format': 'json'},
                        timeout=90).json()
    assert final['status'] == 'complete', final


def test_suspend_and_resume_are_status_events(cli, workdir):
    from rrc.events import read_events
    task_id = started_render(cli, workdir)
    cli('suspend', task_id)
    cli('resume', task_id)
    wait_until_done(workdir, task_id, timeout=120)
    # the record is the truth, written first; its status event follows a moment later
    statuses = wait_for(lambda: (lambda found: found[-1:] and 'exitCode' in found[-1] and found)(
        [event.data for event in read_events(Store(workdir), task_id) if event.kind == 'status']),
        'the final status event')

    assert statuses == [{'status': 'busy', 'queued': True}, {'status': 'busy'},
                        {'status': 'busy', 'suspended': True}, {'status': 'busy'},
                        {'status': 'complete', 'exitCode': 0}]


def test_a_task_sent_to_a_server_is_suspended_and_resumed_there(cli, workdir, embedded_server):
    server = embedded_server(config='')
    write_config(workdir, f'servers = {server.address}\n')
    shutil.copy(SLOW_MODEL, workdir / 'slow.scad')
    local_id = task_id_of(cli('openscad', 'slow.scad').out)
    remote_id = Store(workdir).read_task(local_id)['remoteId']
    wait_for(lambda: any(p.name() == 'openscad' for p in tool_processes(server.root, remote_id)),
             'the render to start on the server', timeout=30)

    suspended = cli('suspend', local_id)

    assert suspended.code == 0, suspended
    assert suspended.out == f'id: {local_id}\nstatus: busy\nstate: suspended\nserver: {server.url}\n'
    assert Store(server.root).read_task(remote_id)['suspended'] == 'yes'
    resumed = cli('resume', local_id)
    assert resumed.out == f'id: {local_id}\nstatus: busy\nstate: running\nserver: {server.url}\n', resumed
    assert 'suspended' not in Store(server.root).read_task(remote_id)
    wait_until_done(server.root, remote_id, timeout=120)

    def local_record_once_ended():
        cli('info', local_id)  # asks the server about a busy remote task
        record = Store(workdir).read_task(local_id)
        return record if record['status'] != 'busy' else None
    assert wait_for(local_record_once_ended, 'the local record to end')['status'] == 'complete'
