"""The forwarder of a pipeline step that runs on another server (rrc/forward.py):
it claims the step, sends it there with the token chosen for that server
and no other, follows it to its end, and never sends a step twice.

Real servers (``rrcloud serve`` from the ``embedded_server`` fixture) and a
real forwarder: the runner of the step before, or ``rrcloud _forward``.  A
FakeServer plays the next server where a test needs one that shows every
header it was sent, refuses the step, or answers the upload with an error
(nothing real does that on cue).  The pipes themselves (checking, steps,
kills, restarts) are in test_pipeline.py.
"""
import os
import signal
import subprocess
import threading

import pytest

from conftest import task_id_of, write_config
from helpers import (SERVERS_OWN_TOKEN, next_server_of_a_pipe, read_record, step_forwarded_to_a_listener,
    tokens_sent, wait_for, wait_until_done)
from rrc.config import Config
from rrc.errors import ExitCode
from rrc.forward import claim, token_only_for
from rrc.pipeline import STALLED_SECONDS, settle_job
from rrc.procs import process_start_time
from rrc.store import Store, format_record
from servers import FakeServer

HOST_TOKEN = 'the-next-servers-token-9876543210'
STEP_ID = '1796000000-00000-000002'
FAKE_META = 'version: RepRapCloud 0.019 (fake)\nservices: echo\ninstance: fake\n'


###############################################################################
# The token: the step's server's alone
###############################################################################

@pytest.mark.parametrize('host_token', ['', HOST_TOKEN], ids=['no-host-token', 'host-token'])
def test_a_server_forwards_a_step_with_the_next_servers_token_never_its_own(embedded_server, host_token):
    """A server whose clients need ``token`` forwards step 2 to a listener:
    asking its meta, uploading the step, following it and killing it there
    carry that server's ``HOST.token`` or no token at all, never its own."""
    with step_forwarded_to_a_listener(embedded_server, host_token) as (server, session, fake, job_id):
        killed = session.get(server.url, params={'service': 'kill', 'id': job_id, 'format': 'json'}, timeout=30)
        assert (killed.status_code, killed.json()['status']) == (200, 'failed'), killed.text

    assert [bool(fake.of(method, service)) for method, service in
            (('GET', 'meta'), ('POST', None), ('GET', 'info'), ('GET', 'kill'))] == [True] * 4, fake.requests
    for request in fake.requests:
        assert tokens_sent(request) == ([host_token] if host_token else []), (request, request.headers)
        assert SERVERS_OWN_TOKEN.encode() not in request.body


def test_a_pipe_held_by_the_command_line_sends_its_token_to_its_steps_server(cli, workdir):
    """A client (``rrcloud pipe`` holding the job here) keeps ``token`` as its
    default for every server: its forwarder sends it to the step's server."""
    fake = FakeServer(next_server_of_a_pipe).start()
    write_config(workdir, f'token = {SERVERS_OWN_TOKEN}\n')
    try:
        job_id = task_id_of(cli('pipe', 'echo', 'hello', '--', 'echo', f'--s={fake.address}').out)
        wait_for(lambda: fake.of('GET', 'info'), 'the forwarder to follow step 2 there', timeout=30)
        killed = cli('kill', job_id)
        assert killed.code == 0, killed
    finally:
        fake.stop()

    assert fake.of('GET', 'meta') and fake.of('POST') and fake.of('GET', 'kill'), fake.requests
    assert all(tokens_sent(request) == [SERVERS_OWN_TOKEN] for request in fake.requests), fake.requests


def test_token_only_for_makes_the_token_the_steps_servers_alone():
    config = Config()
    config.token = HOST_TOKEN
    config.host_tokens = {'other.local:4468': 'a-token-of-another-server'}

    token_only_for(config, 'http://Pi.Local:4468/')

    assert config.token == ''
    assert config.host_tokens == {'Pi.Local:4468': HOST_TOKEN, 'pi.local:4468': HOST_TOKEN}
    assert config.server_token_for('http://Pi.Local:4468/') == HOST_TOKEN  # as http.client asks
    assert config.server_token_for('http://pi.local:4468/') == HOST_TOKEN  # as requests asks
    assert config.server_token_for('http://pi.local:4469/') == ''  # another port of the host
    assert config.server_token_for('http://other.local:4468/') == ''  # nothing for any other server
    assert config.client_token_for('http://other.local:4468/') == ''


@pytest.mark.parametrize('token, url', [('', 'http://pi.local:4468/'), (HOST_TOKEN, '')],
                         ids=['no-token', 'no-server'])
def test_token_only_for_without_a_token_or_a_server_leaves_no_token_at_all(token, url):
    config = Config()
    config.token = token
    config.host_tokens = {'pi.local:4468': 'from-the-rrcloudrc'}

    token_only_for(config, url)

    assert (config.token, config.host_tokens) == ('', {})


###############################################################################
# Sending: once, and a refusal or an error is the step's end
###############################################################################

def test_a_step_goes_to_its_server_and_its_result_comes_back(cli, workdir, embedded_server):
    server = embedded_server()

    job_id = task_id_of(cli('pipe', 'echo', 'hello', '--', 'echo', f'--s={server.address}').out)
    job = wait_until_done(workdir, job_id)

    assert job['status'] == 'complete', job
    first, second = job['steps'].split(',')
    step = read_record(workdir, second)
    assert (step['status'], step['server'], step['stepServer']) == ('complete', server.url, server.url)
    there = server.records()[step['remoteId']]
    assert there['status'] == 'complete' and 'job' not in there  # a plain task there
    assert (workdir / step['out']).read_text() == (workdir / job['out']).read_text() == 'hello'
    assert list(server.records()) == [step['remoteId']]  # sent once


def test_a_steps_result_larger_than_max_result_size_fails_its_job_and_is_not_kept(cli, workdir, embedded_server):
    server = embedded_server()
    write_config(workdir, 'maxResultSize = 4\n')  # bytes: the forwarder takes it with the step

    job_id = task_id_of(cli('pipe', 'echo', 'hello', '--', 'echo', f'--s={server.address}').out)
    job = wait_until_done(workdir, job_id)

    step = read_record(workdir, job['steps'].split(',')[1])
    there = server.records()[step['remoteId']]
    assert there['status'] == 'complete'  # this client refused it
    reason = (f'{server.url}{there["out"]} is larger than maxResultSize (4 bytes), the most this '
              f'client takes of one download; nothing of it was kept; it stays at {server.address}: with a larger '
              f'maxResultSize, `rrcloud get --s={server.address} {step["remoteId"]}` fetches it')
    assert (step['status'], step['error']) == ('failed', reason)
    assert (job['status'], job['error']) == ('failed', f'step 2 (echo) failed: {reason}')
    assert not (workdir / step['out']).exists() and not job.get('out')


@pytest.mark.parametrize('status, error', [
    (400, '{url} refused the task: no room'),
    (500, 'sent to {url}, which did not answer ({url}: no room); not sent again: it may run there'),
], ids=['refused', 'server-error'])
def test_a_step_its_server_refuses_or_fails_to_take_fails_its_job_and_is_sent_once(cli, workdir, status, error):
    fake = FakeServer(lambda request: (200, 'text/plain', FAKE_META) if request.query.get('service') == 'meta'
                      else (status, 'text/plain', 'error: no room\n')).start()
    try:
        job_id = task_id_of(cli('pipe', 'echo', 'hello', '--', 'echo', f'--s={fake.address}').out)
        job = wait_until_done(workdir, job_id)
    finally:
        fake.stop()

    step = read_record(workdir, job['steps'].split(',')[1])
    reason = error.format(url=step['stepServer'])
    assert (step['status'], step['error']) == ('failed', reason)
    assert (job['status'], job['error']) == ('failed', f'step 2 (echo) failed: {reason}')
    assert len(fake.of('POST')) == 1  # never again: no retry makes a refusal a yes, and a 500 may have run


def test_a_step_whose_forwarder_died_while_sending_is_never_sent_again(cli, workdir):
    """The forwarder (the runner of step 1) dies in the middle of the upload:
    the server may have the step.  Moving the job on later fails the step
    rather than send it twice (a second print of the same part)."""
    release = threading.Event()

    def server(request):
        if request.query.get('service') == 'meta':
            return 200, 'text/plain', FAKE_META
        release.wait(30)  # the upload: held until the forwarder is dead
        return 500, 'text/plain', 'error: too late\n'
    fake = FakeServer(server).start()
    try:
        job_id = task_id_of(cli('pipe', 'echo', 'hello', '--', 'echo', f'--s={fake.address}').out)
        store = Store(str(workdir))
        first, second = read_record(workdir, job_id)['steps'].split(',')
        wait_for(lambda: fake.of('POST'), 'the upload to start', timeout=30)
        forwarder = int(store.read_task(second)['runner'])
        os.kill(forwarder, signal.SIGKILL)
        wait_for(lambda: not os.path.exists(f'/proc/{forwarder}') or
                 open(f'/proc/{forwarder}/stat').read().split(') ')[1].startswith('Z'), 'the forwarder to die')
        release.set()
        assert store.read_task(second)['waiting'] == 'yes'

        config = Config()
        config.dir = str(workdir)
        job = settle_job(store, config, read_record(workdir, job_id),
                         now=float(store.read_task(first)['etime']) + STALLED_SECONDS + 1)
    finally:
        release.set()
        fake.stop()

    step = store.read_task(second)
    assert (step['status'], step['error']) == ('failed', 'interrupted while being sent to its server; not sent again')
    assert (job['status'], job['error']) == (
        'failed', 'step 2 (echo) failed: interrupted while being sent to its server; not sent again')
    assert len(fake.of('POST')) == 1


###############################################################################
# Claiming a step: one forwarder at a time
###############################################################################

def planted_step(root, **fields):
    """A waiting step's record written straight to disk (``fields`` change it,
    None leaves a field out); the store."""
    store = Store(root)
    store.ensure()
    record = {'id': STEP_ID, 'service': 'echo', 'status': 'busy', 'waiting': 'yes', 'job': '1796000000-00000-000001',
              'step': '2', 'ctime': '1796000000.00000', **fields}
    (root / 'tasks' / 'info' / STEP_ID).write_text(format_record({k: v for k, v in record.items() if v is not None}))
    return store


def test_a_step_without_a_live_forwarder_is_claimed_by_this_process(tmp_path):
    gone = subprocess.Popen(['true'])
    gone.wait()
    store = planted_step(tmp_path, runner=str(gone.pid), runnerStart='1')

    claimed = claim(store, STEP_ID)

    assert (claimed['runner'], claimed['runnerStart']) == (str(os.getpid()), process_start_time(os.getpid()))
    assert claimed['node'] == store.node.name
    assert read_record(tmp_path, STEP_ID) == claimed
    assert claim(store, STEP_ID) == claimed  # its own claim again: still this process's


def test_a_step_another_live_forwarder_has_is_not_claimed(tmp_path):
    other = subprocess.Popen(['sleep', '300'], start_new_session=True)
    try:
        started = wait_for(lambda: process_start_time(other.pid), 'the other forwarder runs')
        store = planted_step(tmp_path, runner=str(other.pid), runnerStart=started)
        before = (tmp_path / 'tasks' / 'info' / STEP_ID).read_bytes()

        assert claim(store, STEP_ID) is None
        assert (tmp_path / 'tasks' / 'info' / STEP_ID).read_bytes() == before
    finally:
        other.kill()
        other.wait()


def test_a_step_that_ended_is_left_as_it_is(tmp_path):
    store = planted_step(tmp_path, status='failed', waiting=None, error='cancelled: the job was killed')
    before = (tmp_path / 'tasks' / 'info' / STEP_ID).read_bytes()

    assert claim(store, STEP_ID)['error'] == 'cancelled: the job was killed'
    assert (tmp_path / 'tasks' / 'info' / STEP_ID).read_bytes() == before


###############################################################################
# rrcloud _forward ID --dir ROOT
###############################################################################

def test_forward_of_a_step_with_nothing_to_send_ends_at_once_and_writes_nothing(proc, workdir):
    """A step whose waiting marker is gone (cancelled, or ended) is nobody's to send."""
    planted_step(workdir)
    before = sorted(p for p in workdir.rglob('*'))

    result = proc('_forward', STEP_ID, '--dir', str(workdir))

    assert (result.code, result.out, result.err) == (ExitCode.TASK_FAILED, '', '')
    assert sorted(p for p in workdir.rglob('*')) == before
    assert read_record(workdir, STEP_ID)['waiting'] == 'yes'


@pytest.mark.parametrize('args, code, shown', [
    (['x'], ExitCode.USAGE, 'rrcloud: error: usage: rrcloud _forward ID --dir ROOT\n'),
    (['../x', '--dir', '.'], ExitCode.TASK_FAILED, "rrcloud: forwarder of ../x: bad task id: '../x'\n"),
], ids=['usage', 'bad-id'])
def test_forward_refuses_bad_arguments(proc, workdir, args, code, shown):
    result = proc('_forward', *args)

    assert result.code == code, result
    assert shown in (result.out + result.err), result
    assert list(workdir.iterdir()) == []
