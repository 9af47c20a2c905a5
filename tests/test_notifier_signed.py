"""The signed notifier and its events (issue 13, item 5).

With ``notifierSecret`` in rrcloudrc every notifier call carries
``X-RRCloud-Signature: t=SECONDS,v1=HEX`` (HMAC-SHA256 of the time, the
request line, the event and the task id), ``X-RRCloud-Event`` and
``X-RRCloud-Task``; ``notifierEvents=started,ended`` (``--notifier-events``)
adds a call when the tool has started.  The receiver in these tests is the
documented example itself, docs/notifier_receiver.py, listening on 127.0.0.1
(``notifierAllow`` lets loopback through, as in test_security_notifier.py):
real tasks, run by their real runners, call it, and what it answers (204 or
403) is what the task's log shows.  The secret travels to the runner in the
task's queue marker only: the marker is 0600, and neither the record, ``info``,
``meta`` nor the tool's environment shows it.
"""
import os
import re
import stat
import threading
import time

import pytest

import deploy
from conftest import REPO, make_service, task_id_of, wait_until_done, write_config
from helpers import RECEIVER, Receiver, load_receiver, wait_for
from rrc.notifier import notifier_headers
from rrc.store import Store
from rrc.queue import acquire_slot, dispatch
from servers import FakeServer

SECRET = 'k3y-for-the-TESTS_0123456789abcdef'
OTHER_SECRET = 'another-key-0123456789abcdef'
ALLOW_LOOPBACK = 'notifierAllow = 127.0.0.0/8\n'
SIGNED = ALLOW_LOOPBACK + f'notifierSecret = {SECRET}\n'
SIGNATURE_RE = re.compile(r'\At=([0-9]+),v1=([0-9a-f]{64})\Z')
# A task whose output is its tool's whole environment (and, in a sandbox,
# every environment its tool can see under /proc).
ENV_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n'
ENV_SCRIPT = 'env > "$1"\n'
PROC_SCRIPT = 'env > "$1"\nfor f in /proc/[0-9]*/environ; do tr "\\0" "\\n" < "$f"; done >> "$1" 2>/dev/null\ntrue\n'
example = load_receiver()  # docs/notifier_receiver.py, the documented code


@pytest.fixture
def receiver():
    """``receiver(secret)`` -> a running Receiver; all stopped at the end."""
    started = []

    def start(secret=SECRET):
        started.append(Receiver(secret))
        return started[-1]
    yield start
    for one in started:
        one.stop()


def notifier_lines(root, task_id, count):
    """The task's ``rrcloud: notifier`` log lines, once ``count`` of them are written."""
    path = root / 'tasks' / 'log' / task_id

    def lines():
        text = path.read_text() if path.exists() else ''
        return [line for line in text.splitlines() if line.startswith('rrcloud: notifier ')]
    wait_for(lambda: len(lines()) >= count, f'{count} notifier lines in the log of {task_id}')
    return lines()


def submit(cli, receiver, *options):
    """``rrcloud --notifier=URL [OPTIONS] echo hi`` as a local task; its id."""
    result = cli(f'--notifier={receiver.url}', *options, 'echo', 'hi')
    assert result.code == 0 and result.err == '', result
    return task_id_of(result.out)


def nothing_stored(root):
    """No record, input or marker was written under ``root``."""
    tasks = root / 'tasks'
    return not tasks.exists() or all(not any((tasks / name).iterdir())
                                     for name in ('info', 'in', 'queue') if (tasks / name).exists())


###############################################################################
# A signed call, verified by the documented receiver
###############################################################################

def test_a_real_tasks_signed_call_is_accepted_and_a_tampered_or_stale_one_refused(cli, workdir, receiver):
    write_config(workdir, SIGNED)
    listener = receiver()

    task_id = submit(cli, listener)

    (line,) = notifier_lines(workdir, task_id, 1)
    assert line == f'rrcloud: notifier {listener.url.replace("$id", task_id)}: HTTP 204'
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert listener.calls == [(task_id, 'ended')]  # the default: only ended
    ((method, target, headers),) = listener.requests
    assert (method, target) == ('GET', f'/done?id={task_id}')  # still 0.019's GET of the URL
    assert headers['X-RRCloud-Event'] == 'ended' and headers['X-RRCloud-Task'] == task_id
    signed_at = int(SIGNATURE_RE.match(headers['X-RRCloud-Signature']).group(1))

    # The call as sent checks at its time; changed in any part, or late, it does not.
    assert example.verify(SECRET, method, target, headers, now=signed_at)
    assert not example.verify(OTHER_SECRET, method, target, headers, now=signed_at)
    assert not example.verify(SECRET, method, f'/done?id={task_id}&x=1', headers, now=signed_at)
    assert not example.verify(SECRET, 'POST', target, headers, now=signed_at)
    assert not example.verify(SECRET, method, target, dict(headers, **{'X-RRCloud-Event': 'started'}),
                              now=signed_at)
    assert not example.verify(SECRET, method, target, dict(headers, **{'X-RRCloud-Task': '1-2-3'}),
                              now=signed_at)
    assert not example.verify(SECRET, method, target, headers, now=signed_at + example.FRESH_SECONDS + 1)
    assert not example.verify(SECRET, method, target, headers, now=signed_at - example.FRESH_SECONDS - 1)
    assert example.verify(SECRET, method, target, headers, now=signed_at + example.FRESH_SECONDS)
    for forged in ('', 't=,v1=', f't=²,v1={"0" * 64}', 't=1,v1', 'v1=x,t=y', 'garbage'):
        assert not example.verify(SECRET, method, target, dict(headers, **{'X-RRCloud-Signature': forged}))

    # Over HTTP: the same call again (a replay), or aimed at another target, is refused.
    assert listener.get(target, headers) == 403
    assert listener.get(f'/done?id={task_id}x', headers) == 403
    # A call rrcloud signs now is taken; one it signed 301 s ago is stale.
    fresh = notifier_headers(SECRET, 'ended', task_id, '/other')
    stale = notifier_headers(SECRET, 'ended', task_id, '/other', now=time.time() - example.FRESH_SECONDS - 1)
    assert listener.get('/other', stale) == 403
    assert listener.get('/other', fresh) == 204
    assert listener.calls == [(task_id, 'ended'), (task_id, 'ended')]


def test_a_receiver_with_another_secret_refuses_the_call_and_the_task_still_completes(cli, workdir,
                                                                                      receiver):
    write_config(workdir, SIGNED)
    listener = receiver(OTHER_SECRET)

    task_id = submit(cli, listener)

    (line,) = notifier_lines(workdir, task_id, 1)
    assert line.endswith(': HTTP 403'), line
    assert wait_until_done(workdir, task_id)['status'] == 'complete'
    assert listener.calls == []
    assert len(listener.requests) == 1


def test_without_a_secret_the_call_is_unsigned(cli, workdir, receiver):
    write_config(workdir, ALLOW_LOOPBACK)
    listener = receiver()

    task_id = submit(cli, listener)

    (line,) = notifier_lines(workdir, task_id, 1)
    assert line.endswith(': HTTP 403'), line  # the documented receiver wants a signature
    ((_, target, headers),) = listener.requests
    assert target == f'/done?id={task_id}'
    assert 'X-RRCloud-Signature' not in headers
    assert headers['X-RRCloud-Event'] == 'ended' and headers['X-RRCloud-Task'] == task_id


###############################################################################
# notifierEvents: started, then ended
###############################################################################

def test_started_and_ended_arrive_in_order_over_http(receiver):
    with deploy.running(deploy.deployment('wsgi', config=SIGNED)) as server:
        listener = receiver()
        answer = server.session.post(server.url + '/', timeout=30, data={
            'service': 'echo', 'fileIn0': 'hi', 'notifier': listener.url, 'notifierEvents': 'started,ended'})
        assert answer.status_code == 200, answer.text
        task_id = task_id_of(answer.text)

        lines = notifier_lines(server.store, task_id, 2)
        url = listener.url.replace('$id', task_id)
        assert lines == [f'rrcloud: notifier {url} (started): HTTP 204',
                         f'rrcloud: notifier {url} (ended): HTTP 204']
        assert listener.calls == [(task_id, 'started'), (task_id, 'ended')]
        record = wait_until_done(server.store, task_id)
        assert record['status'] == 'complete' and record['notifierEvents'] == 'started,ended'


def test_the_cli_option_asks_for_the_started_call(cli, workdir, receiver):
    write_config(workdir, SIGNED)
    listener = receiver()

    task_id = submit(cli, listener, '--notifier-events=ended,started')

    notifier_lines(workdir, task_id, 2)
    assert listener.calls == [(task_id, 'started'), (task_id, 'ended')]
    assert Store(workdir).read_task(task_id)['notifierEvents'] == 'started,ended'


def test_a_receiver_that_holds_the_started_call_never_holds_up_the_tool(cli, workdir, receiver):
    write_config(workdir, SIGNED)
    listener = receiver()
    listener.hold_started = threading.Event()

    task_id = submit(cli, listener, '--notifier-events=started,ended')

    try:
        wait_for(lambda: listener.requests, 'the started call')
        record = wait_until_done(workdir, task_id)  # while the started call still waits for its answer
        assert record['status'] == 'complete', record
        assert [headers['X-RRCloud-Event'] for _, _, headers in listener.requests] == ['started']
        assert 'rrcloud: notifier' not in (workdir / 'tasks' / 'log' / task_id).read_text()  # no outcome yet
    finally:
        listener.hold_started.set()
    lines = notifier_lines(workdir, task_id, 2)
    assert [line.rsplit(' ', 3)[-3:] for line in lines] == [['(started):', 'HTTP', '204'],
                                                             ['(ended):', 'HTTP', '204']]
    assert listener.calls == [(task_id, 'started'), (task_id, 'ended')]


@pytest.mark.parametrize('events', ['start', 'started,,ended', 'ended;started', 'STARTED'])
def test_bad_notifier_events_are_refused_with_nothing_created(cli, workdir, receiver, events):
    listener = receiver()
    result = cli(f'--notifier={listener.url}', f'--notifier-events={events}', 'echo', 'hi')
    assert result.code == 2, result
    assert result.err.startswith('rrcloud: error: bad notifierEvents'), result
    assert nothing_stored(workdir)


def test_notifier_events_without_a_notifier_are_refused(cli, workdir):
    result = cli('--notifier-events=started', 'echo', 'hi')
    assert result.code == 2, result
    assert 'notifierEvents needs a notifier' in result.err, result
    assert nothing_stored(workdir)


def test_a_bad_notifier_events_field_is_400_with_nothing_created():
    with deploy.running(deploy.deployment('wsgi', config=SIGNED)) as server:
        answer = server.session.post(server.url + '/', timeout=30, data={
            'service': 'echo', 'fileIn0': 'hi', 'notifier': 'http://laptop.local/done',
            'notifierEvents': 'started,finished'})
        assert answer.status_code == 400, answer.text
        assert 'bad notifierEvents' in answer.text
        assert nothing_stored(server.store)


def test_notifier_events_go_to_a_server_only_when_not_the_default(cli, workdir):
    answer = 'id: 1795842096-66057-537746\nstatus: busy\n'
    server = FakeServer(lambda request: (200, 'text/plain', answer)).start()
    try:
        url = 'http://laptop.local/done?id=$id'
        for options in ((), ('--notifier-events=started,ended',)):
            result = cli(f'--s={server.address}', f'--notifier={url}', *options, 'echo', 'hi')
            assert result.code == 0, result
        refused = cli(f'--s={server.address}', f'--notifier={url}', '--notifier-events=begun', 'echo', 'hi')
        assert refused.code == 2 and 'bad notifierEvents' in refused.err, refused
        plain, with_events = server.of('POST')  # the refused one was never sent
    finally:
        server.stop()
    assert b'name="notifier"' in plain.body and b'notifierEvents' not in plain.body
    assert b'name="notifierEvents"\r\n\r\nstarted,ended\r\n' in with_events.body


###############################################################################
# Where the secret goes, and where it never goes
###############################################################################

@pytest.mark.parametrize('sandbox', ['yes', 'no'])
def test_the_secret_is_only_in_the_0600_marker_never_in_record_meta_or_tool(cli, workdir, receiver, sandbox):
    write_config(workdir, SIGNED + f'sandbox = {sandbox}\nmaxTasks = 1\n')
    make_service(workdir, 'env', ENV_SERVICE)
    (workdir / 'show.sh').write_text(PROC_SCRIPT if sandbox == 'yes' else ENV_SCRIPT)
    listener = receiver()
    store = Store(workdir)
    store.ensure()
    slot = acquire_slot(store, 1)  # the one slot is taken: the task waits in the queue
    try:
        result = cli(f'--notifier={listener.url}', 'env', 'show.sh')
        assert result.code == 0, result
        task_id = task_id_of(result.out)
        marker = workdir / 'tasks' / 'queue' / task_id
        assert stat.S_IMODE(marker.stat().st_mode) == 0o600
        assert f'notifierSecret = {SECRET}\n' in marker.read_text()
    finally:
        os.close(slot)
    from rrc.config import load_config
    dispatch(store, load_config())

    (line,) = notifier_lines(workdir, task_id, 1)
    assert line.endswith(': HTTP 204'), line  # the runner signed with the marker's secret
    record = wait_until_done(workdir, task_id)
    assert record['status'] == 'complete', record
    environment = (workdir / record['out']).read_text()
    assert 'PATH=/usr/bin:/bin' in environment  # it is the tool's environment
    shown = [environment, (workdir / 'tasks' / 'info' / task_id).read_text(),
             (workdir / 'tasks' / 'log' / task_id).read_text()]
    for args in (('info', task_id), ('--format=json', 'info', task_id), ('ls',), ('meta',),
                 ('--format=json', 'meta')):
        result = cli(*args)
        assert result.code == 0, result
        shown.append(result.out + result.err)
    for text in shown:
        assert SECRET not in text
        assert 'RRCLOUD_TASK_SETTINGS' not in text and 'notifierSecret' not in text


def test_the_check_shown_in_security_md_is_the_receivers_own():
    text = (REPO / 'docs' / 'SECURITY.md').read_text()
    (shown,) = re.findall(r'```python\n(.*?)```', text, re.S)
    assert shown.startswith('def verify(') and shown in RECEIVER.read_text()


@pytest.mark.parametrize('value', ['short-secret', 'sixteen chars with spaces', 'abcdefgh#ijklmnopqrstu',
                                   'ünïcödé-0123456789abcdef'])
def test_a_bad_secret_is_a_config_error_with_nothing_created(cli, workdir, value):
    write_config(workdir, f'notifierSecret = {value}\n')
    result = cli('--notifier=http://laptop.local/done', 'echo', 'hi')
    assert result.code == 4, result
    assert 'rrcloudrc:1: bad value for notifierSecret: (not shown: a secret)' in result.err, result
    assert value.split('#')[0].strip() not in result.err  # not even a bad one goes to a log
    assert nothing_stored(workdir)
