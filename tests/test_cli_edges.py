"""The command line's rough edges (issue 20, item 4), as a user meets them:
a server that cannot be reached, what ``ls`` shows and picks, ``get``,
``rm`` and ``clean`` (here, at a server, and their HTTP routes), ``--version``
with a server, a refused upload's reason.  (``make stop PORT=N`` is in
test_cli.py beside ``make start``; ``resume``'s answer in test_suspend.py.)

A real embedded server where the network is the point; the routes' own
refusals in-process (the WSGI app on a real store).
"""
import json
import os
import subprocess
import time

import pytest

import deploy
from rrc.errors import ExitCode
from conftest import make_service, task_id_of, write_config
from helpers import (SH_INPUTS_SERVICE, SH_SERVICE, files_of, one_line_error, read_record, records, tidied,
    tool_started, wait_until_done)
from servers import free_port

# A shell script as the tool, its result ``ID.txt``: a result with an extension.
TXT_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\noutput = $fileOut\nfileOut = $id.txt\n'
WRITES_PART = 'printf part > "$1"\n'


@pytest.fixture
def down():
    """host:port of a loopback port nothing listens on."""
    return f'127.0.0.1:{free_port()}'


def unreachable_line(address):
    return f'rrcloud: error: cannot reach {address} (connection refused): is rrcloud serve running there?\n'


###############################################################################
# A server that cannot be reached: one line, from every command
###############################################################################

SOME_ID = '1796016268-98304-571462'
COMMANDS = {
    'info': ('info',), 'info ID': ('info', SOME_ID), 'ls': ('ls',), 'meta': ('meta',),
    'kill': ('kill', SOME_ID), 'suspend': ('suspend', SOME_ID), 'resume': ('resume', SOME_ID),
    'move': ('move', SOME_ID, 'front'), 'watch': ('watch', SOME_ID), 'get': ('get', SOME_ID),
    'rm': ('rm', SOME_ID), 'clean': ('clean', '--older-than=7'), 'a task': ('echo', 'hello'),
    '--sync': ('--sync', 'echo', 'hello'), 'pipe': ('pipe', 'echo', 'hello', '--', 'echo'),
}


@pytest.mark.parametrize('command', list(COMMANDS))
def test_every_command_says_in_one_line_that_the_server_cannot_be_reached(cli, workdir, down, command):
    started = time.monotonic()

    result = cli(f'--s={down}', *COMMANDS[command])

    assert result.code == ExitCode.NO_SERVER, result
    assert result.err == unreachable_line(down), result
    assert result.out == ''
    assert time.monotonic() - started < 30, 'said at once, not after reconnectTimeout'


def test_a_wrapper_with_its_only_server_down_says_the_same(proc, workdir, down):
    write_config(workdir, f'servers = {down}\n')
    (workdir / 'cube.scad').write_text('cube(1);\n')

    result = proc('cube.scad', '-ocube.stl', prog='openscad.cloud')

    assert result.code == ExitCode.NO_SERVER, result
    assert result.err == unreachable_line(down), result


def test_several_servers_down_are_named_in_one_line(cli, workdir, down):
    other = f'127.0.0.1:{free_port()}'
    write_config(workdir, f'servers = {down}, {other}\n')

    result = cli('echo', 'hello')

    assert result.code == ExitCode.NO_SERVER, result
    assert result.err == (f'rrcloud: error: no server took the task: cannot reach {down} (connection refused); '
                          f'cannot reach {other} (connection refused): is rrcloud serve running there?\n'), result


def test_watch_of_a_task_whose_server_went_away_says_so_at_once(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'slow.sh').write_text('sleep 20\necho done > "$1"\n')
    task_id = task_id_of(cli(f'--s={server.address}', 'job', 'slow.sh').out)
    server.stop()

    watched = cli('watch', task_id)
    shown = cli('info', task_id)
    listed = cli('ls')

    assert watched.code == ExitCode.NO_SERVER and watched.err == unreachable_line(server.address), watched
    warning = (f'rrcloud: warning: cannot reach {server.address} (connection refused): '
               'is rrcloud serve running there? (its tasks stay busy here)\n')
    assert shown.code == 0 and shown.err == warning, 'said once, without urllib3\'s text'
    assert 'status: busy\n' in shown.out
    assert listed.code == 0 and listed.err == warning, listed


def test_ls_warns_once_per_server_that_is_down(cli, workdir, embedded_server):
    server = embedded_server(services={'job': SH_SERVICE})
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'slow.sh').write_text('sleep 20\necho done > "$1"\n')
    for _ in range(3):
        task_id_of(cli(f'--s={server.address}', 'job', 'slow.sh').out)
    server.stop()

    listed = cli('ls')

    assert listed.code == 0 and listed.err.count('\n') == 1 and server.address in listed.err, listed
    assert len(listed.out.splitlines()) == 3


###############################################################################
# ls: the input's own name, a failure's reason, every state; --status, -n
###############################################################################

def ls_rows(result):
    """``rrcloud ls`` lines by id: seven columns, the last the rest of the line."""
    assert result.code == 0, result
    return {line.split()[0]: line.split(None, 6) for line in result.out.splitlines()}


def test_ls_shows_input_names_reasons_and_every_busy_state(cli, workdir, held_slot):
    held, _ = held_slot
    make_service(workdir, 'part', TXT_SERVICE)
    (workdir / 'fails.sh').write_text('echo "no support here" >&2\nexit 4\n')
    failed = task_id_of(cli('--local', 'gate', 'fails.sh').out)  # queued behind the held slot
    (workdir / 'part.sh').write_text(WRITES_PART)
    queued = task_id_of(cli('part', 'part.sh').out)
    job = task_id_of(cli('pipe', 'echo', 'some content', '--', 'echo').out)
    first_step, second_step = read_record(workdir, job)['steps'].split(',')
    assert cli('suspend', held).code == 0

    rows = ls_rows(cli('ls'))

    assert rows[held][2] == 'suspended' and rows[held][5] == 'gate.sh', rows[held]
    assert rows[queued][2] == 'queued' and rows[queued][5:] == ['part.sh', '-'], rows[queued]
    assert rows[first_step][2] == 'queued' and rows[first_step][5] == '-', 'content has no name'
    assert rows[second_step][2] == 'waiting', 'a step not yet started is waiting, not busy'
    assert cli('resume', held).code == 0
    assert cli('kill', job).code == 0
    (workdir.parent / 'gate-open').touch()
    wait_until_done(workdir, failed)
    assert wait_until_done(workdir, queued)['status'] == 'complete'

    rows = ls_rows(cli('ls'))

    assert rows[failed][2] == 'failed' and rows[failed][5:] == ['fails.sh', 'exit code 4'], rows[failed]
    assert rows[queued][2] == 'complete' and rows[queued][6] == f'{queued}.txt'
    assert rows[job][2] == 'failed' and rows[job][6] == 'killed'


def test_ls_status_and_n_pick_tasks(cli, workdir):
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'ok.sh').write_text('echo ok > "$1"\n')
    (workdir / 'bad.sh').write_text('exit 2\n')
    ids = []
    for script in ('ok.sh', 'bad.sh', 'ok.sh', 'bad.sh', 'ok.sh'):
        ids.append(task_id_of(cli('job', script).out))
        wait_until_done(workdir, ids[-1])

    failed = cli('ls', '--status=failed')
    failed_too = cli('ls', '--status', 'failed')
    last_two = cli('ls', '-n', '2')
    last_failed = cli('ls', '--status=failed', '-n1')
    busy = cli('ls', '--status=busy')
    as_json = json.loads(cli('--format=json', 'ls', '--status=complete', '-n', '1').out)

    assert list(ls_rows(failed)) == [ids[1], ids[3]] and failed_too.out == failed.out
    assert list(ls_rows(last_two)) == ids[3:], 'the last two, oldest first'
    assert list(ls_rows(last_failed)) == [ids[3]]
    assert busy.code == 0 and busy.out == ''
    assert [row['id'] for row in as_json] == [ids[4]] and as_json[0]['input'] == 'ok.sh'
    for bad in (('--status=burning',), ('-n', '0'), ('-n', 'x'), ('--status',), ('extra',)):
        refused = cli('ls', *bad)
        assert refused.code == ExitCode.USAGE and one_line_error(refused), (bad, refused)


def test_ls_names_a_task_by_its_main_input_not_its_config(cli, workdir):
    make_service(workdir, 'withdata', SH_INPUTS_SERVICE)
    (workdir / 'settings.txt').write_text('a setting\n')
    (workdir / 'model.sh').write_text('echo made > "$2"\n')
    task_id = task_id_of(cli('withdata', '--data=settings.txt', 'model.sh').out)
    wait_until_done(workdir, task_id)

    rows = ls_rows(cli('ls'))

    assert rows[task_id][5] == 'model.sh', rows[task_id]


def test_a_project_archive_is_named_by_its_folder_and_a_sent_tasks_record_by_its_main_inputs():
    from rrc.submission import Input, client_names_field
    inputs = [Input(b'', filename='pla.ini', prearg='--load='), Input(b'', filename='proj.pov.TAR.GZ')]

    assert client_names_field(inputs) == {'inputNames': 'pla.ini/proj.pov'}
    assert client_names_field(inputs, main_only=True) == {'inputNames': 'proj.pov'}


def test_ls_of_a_server_shows_the_names_its_clients_uploaded(cli, workdir, embedded_server):
    server = embedded_server(services={'part': TXT_SERVICE})
    make_service(workdir, 'part', TXT_SERVICE)
    (workdir / 'bracket.sh').write_text(WRITES_PART)
    local_id = task_id_of(cli(f'--s={server.address}', 'part', 'bracket.sh').out)
    remote_id = read_record(workdir, local_id)['remoteId']
    server.wait_done(remote_id)

    here = ls_rows(cli('ls'))
    there = ls_rows(cli(f'--s={server.address}', 'ls'))

    assert here[local_id][5:] == ['bracket.sh', f'{local_id}.txt'], here
    assert there[remote_id][5:] == ['bracket.sh', f'{remote_id}.txt'], there


###############################################################################
# get
###############################################################################

def finished_part(cli, workdir, script=WRITES_PART, name='part.sh'):
    make_service(workdir, 'part', TXT_SERVICE)
    (workdir / name).write_text(script)
    task_id = task_id_of(cli('part', name).out)
    tidied(workdir, task_id)
    return task_id


def test_get_saves_the_result_under_the_inputs_name_or_where_o_says(cli, workdir):
    task_id = finished_part(cli, workdir)

    saved = cli('get', task_id)
    again = cli('get', task_id)
    named = cli('get', task_id, '-o', 'mine.txt')
    joined = cli('get', task_id, '--output=joined.txt')
    (workdir / 'into').mkdir()
    into = cli('get', task_id, '-o', 'into')
    piped = cli('get', task_id, '-o', '-')

    assert saved.code == 0 and saved.out == 'saved: part.txt\n', saved
    assert (workdir / 'part.txt').read_text() == 'part'
    assert again.code == ExitCode.USAGE and 'part.txt exists' in one_line_error(again), 'never over a file'
    assert named.out == 'saved: mine.txt\n' and (workdir / 'mine.txt').read_text() == 'part'
    assert joined.code == 0 and (workdir / 'joined.txt').read_text() == 'part'
    assert into.out == 'saved: into/part.txt\n' and (workdir / 'into' / 'part.txt').read_text() == 'part'
    assert piped.code == 0 and piped.out == 'part'


def running_task(cli, workdir):
    """A task whose tool runs until it is killed (the test kills it)."""
    make_service(workdir, 'job', SH_SERVICE)
    (workdir / 'sleeps.sh').write_text('sleep 120\n')
    task_id = task_id_of(cli('job', 'sleeps.sh').out)
    tool_started(workdir, task_id)
    return task_id


def test_get_of_a_failed_or_busy_task_says_why_and_writes_nothing(cli, workdir, no_leftover_processes):
    held = running_task(cli, workdir)
    failed = finished_part(cli, workdir, script='exit 3\n', name='broken.sh')
    before = sorted(os.listdir(workdir))

    of_failed = cli('get', failed)
    of_busy = cli('get', held)
    unknown = cli('get', '1796016268-98304-571462')

    assert of_failed.code == ExitCode.TASK_FAILED, of_failed
    assert f'task {failed} failed: exit code 3' in one_line_error(of_failed)
    assert of_busy.code == ExitCode.USAGE and 'has not ended' in one_line_error(of_busy)
    assert unknown.code == ExitCode.NOT_FOUND
    assert sorted(os.listdir(workdir)) == before


def test_get_with_s_fetches_the_result_from_that_server(cli, workdir, embedded_server):
    server = embedded_server(services={'part': TXT_SERVICE})
    make_service(workdir, 'part', TXT_SERVICE)
    (workdir / 'wheel.sh').write_text(WRITES_PART)
    remote_id = read_record(workdir, task_id_of(cli(f'--s={server.address}', 'part', 'wheel.sh').out))['remoteId']
    server.wait_done(remote_id)
    (workdir / 'tasks').rename(workdir / 'elsewhere')  # nothing of this store helps

    saved = cli(f'--s={server.address}', 'get', remote_id)

    assert saved.code == 0 and saved.out == 'saved: wheel.txt\n', saved
    assert (workdir / 'wheel.txt').read_text() == 'part'


###############################################################################
# rm and clean
###############################################################################

def test_rm_removes_ended_tasks_with_their_files_and_refuses_a_live_one(cli, workdir, no_leftover_processes):
    held = running_task(cli, workdir)
    done = finished_part(cli, workdir)
    failed = finished_part(cli, workdir, script='exit 3\n', name='broken.sh')
    kept = finished_part(cli, workdir, name='kept.sh')
    kept_record = read_record(workdir, kept)
    kept_files = {f'tasks/info/{kept}', f'tasks/log/{kept}', f'tasks/events/{kept}', kept_record['out'],
                  kept_record['in']}
    record = read_record(workdir, done)

    result = cli('rm', done, failed, held)

    assert result.code == ExitCode.USAGE, result
    assert result.out == f'removed: {done}\nremoved: {failed}\n'
    assert f'task {held} has not ended' in one_line_error(result)
    left = files_of(workdir)
    assert not [path for path in left if done in path or failed in path], 'record, result, log, events'
    assert not (workdir / record['in']).exists(), 'its input'
    assert kept_files <= set(left), ('another task keeps everything', kept_files - set(left))
    assert read_record(workdir, held)['status'] == 'busy'
    assert cli('rm', done).code == ExitCode.NOT_FOUND
    assert cli('rm', '../info').code == ExitCode.USAGE


def test_rm_waits_for_the_runner_of_a_task_that_has_just_ended(cli, workdir):
    task_id = finished_part(cli, workdir)
    from rrc.procs import process_start_time
    from rrc.store import Store
    store = Store(workdir)
    sleeper = subprocess.Popen(['sleep', '60'])  # plays the runner, still calling the notifier
    try:
        with store.lock():
            store.write_task(dict(store.read_task(task_id), runner=str(sleeper.pid),
                                  runnerStart=str(process_start_time(sleeper.pid))))
        early = cli('rm', task_id)
    finally:
        sleeper.kill()
        sleeper.wait()
    later = cli('rm', task_id)

    assert early.code == ExitCode.USAGE and 'runner is still tidying up' in one_line_error(early), early
    assert later.code == 0 and later.out == f'removed: {task_id}\n', later


def test_rm_of_a_job_removes_its_steps_and_a_step_alone_is_refused(cli, workdir):
    job = task_id_of(cli('pipe', 'echo', 'some content', '--', 'echo').out)
    wait_until_done(workdir, job)
    steps = read_record(workdir, job)['steps'].split(',')
    for step in steps:
        tidied(workdir, step)

    step_alone = cli('rm', steps[0])
    whole = cli('rm', job)

    assert step_alone.code == ExitCode.USAGE and step_alone.out == '', step_alone
    assert f'is step 1 of job {job}' in one_line_error(step_alone)
    assert whole.code == 0 and whole.out == ''.join(f'removed: {i}\n' for i in steps + [job]), whole
    assert records(workdir) == []
    assert not os.listdir(workdir / 'tasks' / 'out') and not os.listdir(workdir / 'tasks' / 'in')


def test_clean_removes_only_tasks_that_ended_before_the_days_given(cli, workdir, no_leftover_processes):
    held = running_task(cli, workdir)
    old, recent = finished_part(cli, workdir), finished_part(cli, workdir, name='new.sh')
    from rrc.store import Store
    store = Store(workdir)
    with store.lock():  # ended ten days ago
        store.write_task(dict(store.read_task(old), etime=f'{time.time() - 10 * 86400:.5f}'))

    nothing = cli('clean', '--older-than=30')
    cleaned = cli('clean', '--older-than', '7')
    bad = cli('clean', '--older-than=soon')

    assert nothing.code == 0 and nothing.out == '' and 'nothing to remove' in nothing.err, nothing
    assert cleaned.code == 0 and cleaned.out == f'removed: {old}\n', cleaned
    assert sorted(r['id'] for r in records(workdir)) == sorted([held, recent])
    assert bad.code == ExitCode.USAGE and '--older-than' in one_line_error(bad)


def test_rm_and_clean_with_s_remove_at_that_server(cli, workdir, embedded_server):
    server = embedded_server()
    from helpers import submit
    first, second, third = (submit(server, 'echo', f'text {n}') for n in range(3))
    for task_id in (first, second, third):
        server.wait_done(task_id)
        tidied(server.root, task_id)

    removed = cli(f'--s={server.address}', 'rm', first)
    cleaned = cli(f'--s={server.address}', 'clean', '--older-than=0')

    assert removed.code == 0 and removed.out == f'removed: {first}\n', removed
    assert cleaned.code == 0 and cleaned.out == f'removed: {second}\nremoved: {third}\n', cleaned
    assert server.records() == {}
    assert not os.listdir(server.root / 'tasks' / 'in') and not os.listdir(server.root / 'tasks' / 'out')
    assert not (workdir / 'tasks').exists(), 'the local store is not touched'


def test_get_and_rm_of_a_task_sent_to_a_server(cli, workdir, embedded_server):
    server = embedded_server()
    local_id = task_id_of(cli(f'--s={server.address}', 'echo', 'sent away').out)
    remote_id = read_record(workdir, local_id)['remoteId']
    server.wait_done(remote_id)
    tidied(server.root, remote_id)

    fetched = cli('get', local_id, '-o', 'back.txt')  # still busy here: asked about at its server first
    removed = cli('rm', local_id)

    assert fetched.code == 0 and (workdir / 'back.txt').read_text() == 'sent away', fetched
    assert removed.code == 0 and removed.out == f'removed: {local_id}\n', removed
    assert records(workdir) == [] and not os.listdir(workdir / 'tasks' / 'out')
    assert server.info(remote_id)['status'] == 'complete', 'the server keeps its own'


def test_the_remove_and_clean_routes_refuse_what_they_must(wsgi_server):
    from helpers import submit
    server = wsgi_server
    done = submit(server, 'echo', 'done')
    server_record = server.session.get(server.url + '/', params={'service': 'info', 'id': done, 'wait': '30',
                                                                  'format': 'json'}).json()
    assert server_record['status'] == 'complete'
    tidied(server.store, done)
    before = files_of(server.store)

    unknown = server.session.get(server.url + '/', params={'service': 'remove', 'id': '1796016268-98304-571462'})
    bad_id = server.session.get(server.url + '/', params={'service': 'remove', 'id': '../../etc'})
    no_id = server.session.get(server.url + '/', params={'service': 'remove'})
    no_days = server.session.get(server.url + '/', params={'service': 'clean'})
    bad_days = server.session.get(server.url + '/', params={'service': 'clean', 'olderThan': 'nan'})

    assert [a.status_code for a in (unknown, bad_id, no_id, no_days, bad_days)] == [404, 400, 400, 400, 400]
    assert files_of(server.store) == before, 'nothing removed'
    removed = server.session.get(server.url + '/', params={'service': 'remove', 'id': done, 'format': 'json'})
    assert removed.status_code == 200 and removed.json() == {'id': done, 'removed': done}


@pytest.fixture
def wsgi_server():
    """The WSGI app in-process on a real store, with a ``job`` service (tests/inprocess.py)."""
    with deploy.running(deploy.deployment('wsgi', 'maxTasks = 2\n', {'job': SH_SERVICE})) as server:
        yield server


def test_a_live_task_is_not_removed_through_the_route(wsgi_server):
    from helpers import post_task
    server = wsgi_server
    answer = post_task(server, 'job', 'sleep 30\necho x > "$1"\n', 'slow.sh', format='json')
    task_id = answer.json()['id']

    refused = server.session.get(server.url + '/', params={'service': 'remove', 'id': task_id})

    assert refused.status_code == 400 and 'has not ended' in refused.text, refused.text
    assert read_record(server.store, task_id)['status'] == 'busy'
    server.session.get(server.url + '/', params={'service': 'kill', 'id': task_id})


###############################################################################
# --version with a server; a refused upload's reason
###############################################################################

def test_version_names_each_configured_servers_version(cli, workdir, embedded_server, down):
    server = embedded_server()
    write_config(workdir, f'servers = {server.address}, {down}\n')

    result = cli('--version')
    asked = cli('--version', f'--s={server.address}')

    from rrc import VERSION_STRING, __version__
    assert result.code == 0, result
    assert result.out == (f'rrcloud {__version__} (RepRapCloud 0.019 compatible)\n'
                          f'server {server.address}: {VERSION_STRING}\n'
                          f'server {down}: cannot reach it (connection refused)\n'), result
    assert asked.out.splitlines()[1:] == [f'server {server.address}: {VERSION_STRING}'], asked


def test_a_wrappers_version_names_its_servers_version(proc, workdir, embedded_server):
    server = embedded_server()
    write_config(workdir, f'servers = {server.address}\n')

    result = proc('--version', prog='openscad.cloud')

    from rrc import VERSION_STRING
    assert result.code == 0, result
    assert result.out.splitlines()[-1] == f'server {server.address}: {VERSION_STRING}', result


def test_a_refused_upload_shows_the_servers_own_reason(cli, workdir, embedded_server):
    server = embedded_server(config='maxTasks = 1\nmaxRequestSize = 100000\n')
    (workdir / 'big.txt').write_text('x' * 200000)

    result = cli(f'--s={server.address}', 'echo', 'big.txt')

    assert result.code == ExitCode.USAGE, result
    assert 'exceeds max_body of 100000' in one_line_error(result), result
    assert 'not an rrcloud answer' not in result.err
    assert records(workdir) == []
