"""Pipelines: a job of steps, each a task, the output of one the input of the next.

Real tools (OpenSCAD, Slic3r, the built-in G-code sender on a simulated
printer) and real servers: a render and slice on one embedded server, the
print on another, as on a fast machine and a Raspberry Pi.  Shell steps that
wait for a gate file stand in for a long step where a test kills or restarts
something in the middle.  The forwarder that sends a step to its server
(rrc/forward.py) is tried in test_forward.py.
"""
import json
import os
import signal

import pytest

import deploy
from conftest import DATA, make_service, task_id_of, write_config
from helpers import (PTY_PRINTRUN_CONF, REPO, gated_script, plain_session, step_forwarded_to_a_listener,
    tokens_sent, wait_for, wait_until_done)
from printer_sim import PrinterSim
from rrc.store import Store
from test_printing import check_every_line_once, gcode_lines

CUBE = 'cube(6);\n'
SLIC3R_INI = DATA / 'slic3r.ini'
# A shell step: runs its input as a script, with the output file as $1 (text in, text out).
STEP_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = txt\noutput = $fileOut\nfileOut = $id.txt\n'


def job_record(root, job_id):
    return Store(str(root)).read_task(job_id)


def steps_of(root, job):
    store = Store(str(root))
    return [store.read_task(step_id) for step_id in job['steps'].split(',')]


def events_of(root, task_id):
    with open(os.path.join(root, 'tasks', 'events', task_id)) as handle:
        return [json.loads(line) for line in handle]


def gated_step(gate):
    """A step that waits for ``gate`` to exist, then writes its result, ``stepped``."""
    return gated_script(gate, then='printf %s stepped > "$1"')


@pytest.fixture
def gated(workdir):
    """A store whose `step` service runs shell scripts that may wait for a gate
    file (its folder is shown to the sandbox read-only)."""
    gate_folder = workdir / 'gates'
    gate_folder.mkdir()
    make_service(workdir, 'step', STEP_SERVICE + f'readPaths = {gate_folder}\n')
    return gate_folder


###############################################################################
# Across servers
###############################################################################

@pytest.mark.slow
def test_render_and_slice_on_one_server_print_on_another(proc, workdir, embedded_server):
    """openscad -> slic3r on the fast machine, printrun on the Pi: the G-code
    goes from server to server, every line reaches the printer once, and the
    client's machine sees none of the files between the steps."""
    pi = embedded_server('maxTasks = 1\ntoken = pi-token-0123456789\n', {'printrun': PTY_PRINTRUN_CONF},
                         start=False)
    fast = embedded_server(services={'printrun': PTY_PRINTRUN_CONF}, start=False)  # its rrcloudrc names pi
    fast.config.write_text(f'maxTasks = 2\nservers = {pi.address}\n127.0.0.1.token = pi-token-0123456789\n')
    make_service(workdir, 'printrun', PTY_PRINTRUN_CONF)
    write_config(workdir, f'printrun.servers = {pi.address}\n')  # the print step's server, from rrcloudrc
    (workdir / 'bracket.scad').write_text(CUBE)
    (workdir / 'pla.ini').write_text(SLIC3R_INI.read_text())
    with pi.start(), fast.start(), PrinterSim(resend_every=40) as sim:
        result = proc('--sync', 'pipe', 'openscad', 'bracket.scad', f'--s={fast.address}',
                      '--', 'slic3r', '--load=pla.ini', f'--s={fast.address}',
                      '--', 'printrun', sim.port, timeout=180)
        assert result.code == 0, (result, fast.log.read_text(), pi.log.read_text())

        (local_id,) = Store(str(workdir)).task_ids()
        job_id = Store(str(workdir)).read_task(local_id)['remoteId']
        job = job_record(fast.root, job_id)
        render, slice_, print_ = steps_of(fast.root, job)
        printed_there = Store(str(pi.root)).read_task(print_['remoteId'])

    assert job['status'] == 'complete', job
    assert [s['status'] for s in (render, slice_, print_)] == ['complete'] * 3
    assert print_['server'] == pi.url and print_['stepServer'] == pi.url
    assert printed_there['status'] == 'complete' and printed_there['progress'].split('/')[0] == \
        printed_there['progress'].split('/')[1]
    gcode = fast.root / slice_['out']
    check_every_line_once(sim, gcode_lines(gcode))
    # The client kept the job's record only: no model, no G-code came back through it.
    assert os.listdir(workdir / 'tasks' / 'out') == []
    steps = [(e['data']['step'], e['data']['state']) for e in events_of(fast.root, job_id) if e['kind'] == 'step']
    assert steps[-3:] == [(2, 'complete'), (3, 'running'), (3, 'complete')], steps


###############################################################################
# Failing and killed jobs (the command line, one store)
###############################################################################

def test_sync_pipe_writes_the_last_result_where_its_output_argument_says(proc, workdir):
    (workdir / 'bracket.scad').write_text(CUBE)
    (workdir / 'pla.ini').write_text(SLIC3R_INI.read_text())

    result = proc('--sync', 'pipe', 'openscad', 'bracket.scad', '--', 'slic3r', '--load=pla.ini',
                  '--output=bracket.gcode')

    assert result.code == 0, result
    assert result.out == ''
    gcode = (workdir / 'bracket.gcode').read_text()
    assert 'G1 Z0.300' in gcode  # pla.ini's 0.3 mm first layer: the config input reached slic3r
    (job_id,) = [i for i in Store(str(workdir)).task_ids() if job_record(workdir, i)['service'] == 'pipe']
    job = job_record(workdir, job_id)
    assert (workdir / job['out']).read_text() == gcode
    render, slice_ = steps_of(workdir, job)
    assert slice_['inputFrom'] == render['id']
    assert slice_['in'].split(',')[0] != render['out']  # a copy among the step's own inputs


def test_a_failing_first_step_fails_the_job_and_cancels_the_rest(proc, workdir):
    (workdir / 'bad.scad').write_text('cube(\n')

    result = proc('--sync', 'pipe', 'openscad', 'bad.scad', '--', 'slic3r', '--output=part.gcode')

    assert result.code == 1, result  # openscad's own exit code
    assert 'Parser error' in result.err and 'bad.scad' in result.err  # the failed tool's log, as the user named it
    assert result.err.endswith('failed: step 1 (openscad) failed: exit code 1\n'), result.err
    assert not (workdir / 'part.gcode').exists()
    (job_id,) = [i for i in Store(str(workdir)).task_ids() if job_record(workdir, i)['service'] == 'pipe']
    job = job_record(workdir, job_id)
    render, slice_ = steps_of(workdir, job)
    assert (job['status'], job['error'], job['exitCode']) == ('failed', 'step 1 (openscad) failed: exit code 1', '1')
    assert (render['status'], render['error']) == ('failed', 'exit code 1')
    assert (slice_['status'], slice_['error']) == ('failed', 'cancelled: step 1 (openscad) failed: exit code 1')
    assert 'stime' not in slice_  # it never started
    assert os.listdir(workdir / 'tasks' / 'waiting') == []

    watched = proc('watch', job_id)  # the job's whole story, replayed from its event log

    assert watched.code == 1, watched
    lines = watched.out.splitlines()
    assert lines[-2:] == [f'step 2 (slic3r) {slice_["id"]}: failed: cancelled: step 1 (openscad) failed: exit code 1',
                          'status: failed: step 1 (openscad) failed: exit code 1'], lines
    assert f'step 1 (openscad) {render["id"]}: failed: exit code 1' in lines


def test_killing_a_job_in_its_second_step_kills_it_and_cancels_the_third(cli, workdir, gated):
    (workdir / 'first.txt').write_text(gated_step(gated / 'never'))
    job_id = task_id_of(cli('pipe', 'echo', 'first.txt', '--', 'step', '--', 'echo').out)
    job = job_record(workdir, job_id)
    first, second, third = (s['id'] for s in steps_of(workdir, job))
    wait_for(lambda: Store(str(workdir)).read_task(second).get('pid'), 'step 2 to run', timeout=30)

    killed = cli('kill', job_id)

    assert killed.code == 0, killed
    assert killed.out == f'id: {job_id}\nstatus: failed\nerror: killed\n'
    records = {s['id']: wait_until_done(workdir, s['id']) for s in steps_of(workdir, job)}
    assert (records[second]['status'], records[second]['error']) == ('failed', 'killed')
    assert (records[third]['status'], records[third]['error']) == ('failed', 'cancelled: the job was killed')
    assert records[first]['status'] == 'complete'
    # The finished step's result stays: the script it copied.
    assert (workdir / records[first]['out']).read_text() == gated_step(gated / 'never')
    info = cli('info', job_id).out
    assert f'step1: {first} echo complete\n' in info
    assert f'step2: {second} step failed\n' in info and f'step3: {third} echo failed\n' in info
    assert 'status: failed\n' in info and 'error: killed\n' in info
    # Every step's end comes before the job's in the job's events: a watcher stops at the job's.
    events = events_of(workdir, job_id)
    assert events[-1]['kind'] == 'status' and events[-1]['data']['error'] == 'killed'
    ends = [(e['data']['step'], e['data'].get('error')) for e in events if e['kind'] == 'step'
            and e['data']['state'] == 'failed']
    assert ends == [(2, 'killed'), (3, 'cancelled: the job was killed')], ends


def test_pipe_events_show_every_step_in_order(cli, workdir, gated):
    (workdir / 'first.txt').write_text(gated_step(gated / 'open'))
    (gated / 'open').touch()
    result = cli('--sync', 'pipe', 'echo', 'first.txt', '--', 'step', '--', 'echo')

    assert result.code == 0, result
    (job_id,) = [i for i in Store(str(workdir)).task_ids() if job_record(workdir, i)['service'] == 'pipe']
    assert f'id: {job_id}\n' in result.out and 'status: complete\n' in result.out
    assert (workdir / job_record(workdir, job_id)['out']).read_text() == 'stepped'
    events = events_of(workdir, job_id)
    assert [e['id'] for e in events] == list(range(1, len(events) + 1))
    moves = [(e['data']['step'], e['data']['state']) for e in events if e['kind'] == 'step']
    started = [move for move in moves if move[1] != 'waiting']
    assert started == [(n, state) for n in (1, 2, 3) for state in ('queued', 'running', 'complete')], moves
    statuses = [e['data']['status'] for e in events if e['kind'] == 'status']
    assert statuses == ['busy', 'complete']


###############################################################################
# The HTTP form and its bad inputs
###############################################################################

@pytest.fixture(scope='module')
def server():
    """The application in-process, whose servers list names one server."""
    listed = 'servers = listed.invalid\n'
    with deploy.running(deploy.deployment('wsgi', config=listed, services={'step': STEP_SERVICE})) as deployment:
        yield deployment


def post_pipe(server, fields, files=None):
    return server.session.post(f'{server.url}/', data=dict(fields, service='pipe', format='json'),
                               files=files or {'step1.fileIn0': ('a.txt', b'printf %s piped > "$1"\n')}, timeout=60)


def test_http_pipe_runs_its_steps_and_info_shows_them(server):
    answer = post_pipe(server, {'step1': 'step', 'step2': 'echo', 'wait': '60'})

    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job['status'] == 'complete', job
    assert job['service'] == 'pipe' and job['cmd'] == 'step | echo'
    assert job['step1'].endswith(' step complete') and job['step2'].endswith(' echo complete')
    result = server.session.get(f'{server.url}/{job["out"]}', timeout=30)
    assert result.text == 'piped'


def store_listing(server):
    return sorted(p for p in server.store_files() if not p.startswith(('slots/', 'events/')))


@pytest.mark.parametrize('fields, error', [
    ({'step1': 'step', 'step2': 'nosuch'}, "unknown service 'nosuch'"),
    ({'step1': 'step', 'step2': 'pipe'}, 'step 2 (pipe): a pipe cannot contain a pipe'),
    ({'step1': 'step', 'step2': 'echo', 'step2.arg0': '--rm'}, "--rm"),
    ({'step1': 'step', 'step2': 'echo', 'step2.server': 'pi.invalid'},
     "step 2 (echo): server 'pi.invalid' is not in this node's servers list"),
    ({'step1': 'step', 'step3': 'echo'}, 'numbered step1, step2, ... without gaps'),
    ({'step1': 'step', 'step2.nativeArgs': ''}, "'step2.nativeArgs' names no step"),
    ({'step1': 'step', 'step1.bogus': 'x'}, "unknown form field: 'step1.bogus'"),
    ({'step1': 'step', 'step2': 'printrun'}, 'takes .gcode, .gco, .g files, not the .txt output of step 1'),
    ({'step1': 'step', 'step2': 'echo', 'step2.fileIn0': 'more'}, 'step 2 (echo) takes its input from step 1'),
    ({'step1': 'printrun', 'step1.arg0': '/dev/ttyUSB0', 'step2': 'echo'}, None),
    (dict({f'step{n}': 'echo' for n in range(1, 10)}), 'a pipe has at most 8 steps (maxSteps), not 9'),
    ({}, 'a pipe needs steps'),
], ids=['unknown-service', 'pipe-in-pipe', 'bad-argument', 'unlisted-server', 'gap', 'orphan-field',
        'unknown-field', 'wrong-format', 'second-main-input', 'no-output-mid-pipe', 'too-many-steps', 'no-steps'])
def test_bad_pipes_are_refused_with_nothing_started(server, fields, error):
    before = store_listing(server)
    files = None if fields.get('step1') != 'printrun' else {'step1.fileIn0': ('a.gcode', b'G28\n')}

    answer = post_pipe(server, fields, files)

    assert answer.status_code == 400, answer.text
    assert error is None or error in answer.text, answer.text  # (JSON, unless the form itself was unreadable)
    if fields.get('step1') == 'printrun':
        assert answer.json()['error'] == 'step 1 (printrun) has no output for step 2 (echo)'
    assert store_listing(server) == before


def test_a_cross_origin_pipe_is_refused(server):
    before = store_listing(server)
    answer = server.session.post(f'{server.url}/', data={'service': 'pipe', 'step1': 'step'},
                                 files={'step1.fileIn0': ('a.txt', b'true\n')},
                                 headers={'Origin': 'http://evil.invalid'}, timeout=30)
    assert answer.status_code == 403, answer.text
    assert store_listing(server) == before


###############################################################################
# Servers: a step sent back to its own server, a restart in the middle
###############################################################################

def test_a_step_sent_to_the_server_itself_is_a_loop(embedded_server):
    server = embedded_server(services={'step': STEP_SERVICE}, start=False)
    server.config.write_text(f'servers = {server.address}\n')  # its own address, known once it has one
    server.start()
    answer = plain_session().post(server.url, data={
        'service': 'pipe', 'step1': 'step', 'step2': 'echo', 'step2.server': server.address},
        files={'step1.fileIn0': ('a.txt', b'true\n')}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.text == f'error: step 2 (echo): server {server.url} is this node itself (a loop)\n'
    assert server.records() == {}


def test_the_command_line_on_a_server_kills_its_step_with_the_steps_token_never_the_servers(embedded_server):
    """``rrcloud kill JOB`` on the server's own machine reads the server's
    rrcloudrc, whose ``token`` is what the server's clients present: the
    step's server is asked with the step's token (none here), never that one."""
    import subprocess
    import sys
    with step_forwarded_to_a_listener(embedded_server) as (server, _, fake, job_id):
        killed = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'kill', job_id], cwd=server.root,
                                env=dict(os.environ, RRCLOUD_CONFIG=str(server.config)),
                                capture_output=True, text=True, timeout=60)
        assert killed.returncode == 0, killed

    assert fake.of('GET', 'kill'), fake.requests
    assert all(tokens_sent(request) == [] for request in fake.requests), fake.requests


@pytest.mark.slow
def test_waiting_steps_survive_a_restart_of_the_server(tmp_path, embedded_server):
    """The server goes away while step 1 runs and step 2 waits; after the
    restart the job goes on from its records (its runner outlived the server)."""
    gate = tmp_path / 'gates'
    gate.mkdir()
    server = embedded_server(services={'step': STEP_SERVICE + f'readPaths = {gate}\n'}, start=False)
    with server.start():
        answer = plain_session().post(server.url, data={
            'service': 'pipe', 'format': 'json', 'step1': 'step', 'step2': 'echo'},
            files={'step1.fileIn0': ('a.txt', gated_step(gate / 'open').encode())}, timeout=30)
        assert answer.status_code == 200, answer.text
        job_id = answer.json()['id']
        first, second = answer.json()['steps'].split(',')
        wait_for(lambda: server.records()[first].get('pid'), 'step 1 to run', timeout=30)
        from helpers import kill_group
        kill_group(server.process.pid)  # the server only: the detached runner goes on
        server.process.wait(timeout=10)
        assert server.records()[second]['waiting'] == 'yes'

        server.start()
        (gate / 'open').touch()
        done = plain_session().get(server.url, params={'service': 'info', 'id': job_id, 'wait': '60',
                                                       'format': 'json'}, timeout=90).json()

    assert done['status'] == 'complete', done
    assert done['step2'] == f'{second} echo complete'


def test_a_step_interrupted_while_the_server_was_down_fails_its_job_at_restart(server):
    """A power cut: the runner and tool of step 1 die with the server.  At the
    restart, recovery finds the step interrupted and moves the job on: failed,
    the waiting step cancelled, nothing left waiting."""
    gate = server.store / 'never-opened'
    answer = post_pipe(server, {'step1': 'step', 'step2': 'echo'},
                       {'step1.fileIn0': ('a.txt', gated_step(gate).encode())})
    job = answer.json()
    first, second = job['steps'].split(',')
    store = Store(str(server.store))
    wait_for(lambda: store.read_task(first).get('pid'), 'step 1 to run', timeout=30)
    server.stop()
    record = store.read_task(first)
    for key in ('runner', 'pid'):
        os.killpg(int(record[key]), signal.SIGKILL)
    try:  # the in-process app started the runner: it is this process's child to reap
        os.waitpid(int(record['runner']), 0)
    except ChildProcessError:
        pass

    server.start()

    job = store.read_task(job['id'])
    assert (job['status'], job['error']) == ('failed', 'step 1 (step) failed: interrupted'), job
    assert store.read_task(second)['error'] == 'cancelled: step 1 (step) failed: interrupted'
    assert not os.listdir(server.store / 'tasks' / 'waiting')


###############################################################################
# Killing one step; a forwarder that dies while it sends
###############################################################################

def test_killing_a_running_step_fails_its_job_and_cancels_the_rest(cli, workdir, gated):
    (workdir / 'first.txt').write_text(gated_step(gated / 'never'))
    job_id = task_id_of(cli('pipe', 'echo', 'first.txt', '--', 'step', '--', 'echo').out)
    first, second, third = (s['id'] for s in steps_of(workdir, job_record(workdir, job_id)))
    wait_for(lambda: Store(str(workdir)).read_task(second).get('pid'), 'step 2 to run', timeout=30)

    killed = cli('kill', second)

    assert killed.code == 0, killed
    assert killed.out == f'id: {second}\nstatus: failed\nerror: killed\n'
    job = wait_until_done(workdir, job_id)
    assert (job['status'], job['error']) == ('failed', 'step 2 (step) failed: killed')
    assert wait_until_done(workdir, third)['error'] == 'cancelled: step 2 (step) failed: killed'
    assert job_record(workdir, first)['status'] == 'complete'
