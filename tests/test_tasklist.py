"""The page's API (rrc/web/tasklist.py, rrc/web/changes.py): ``service=tasks``,
the task list a page at a time, and ``service=changes``, the store's
changes as Server-Sent Events.

In-process (the WSGI app, tests/inprocess.py), records written with the
store's own API: the list is newest first, paged with ``before``/``next``,
filtered by status and service, leaves a job's steps to their job, and
reads no more records than it shows; the stream tells a new record, a
change and a removal (its latency is bench/bench_page.py's), two writes
between two looks and a write hidden in the folder's mtime tick, and a
client coming back with its cursor what it missed, removals too, or to
reload its list when that is too much.  Live (``rrcloud serve``): a real task's
record arrives through the stream as it runs and ends.
"""
import json
import os
import threading
import time

import pytest

import deploy
from helpers import SH_INPUTS_SERVICE, submit
from inprocess import build_environ
from rrc.store import Store

TOKEN = 'client-token-for-the-list-tests'
AUTH = {'Authorization': f'Bearer {TOKEN}'}


@pytest.fixture
def server():
    with deploy.running(deploy.deployment('wsgi', config=f'token = {TOKEN}\ncgiStreamSeconds = 1.2\n')) as running:
        yield running


@pytest.fixture
def long_server():
    """A CGI's stream that lasts (30 s): a test ends it once it has what it waits for."""
    with deploy.running(deploy.deployment('wsgi', config=f'token = {TOKEN}\ncgiStreamSeconds = 30\n')) as running:
        yield running


def store_of(server):
    return Store(server.store)


def add_tasks(store, count, **fields):
    """``count`` ended echo tasks (or ``fields``), written as the runner writes them; their ids."""
    now = time.time()
    record = {'service': 'echo', 'status': 'complete', 'ctime': f'{now:.5f}', 'etime': f'{now:.5f}',
              'client': '127.0.0.1', **fields}
    return [store.create_task(lambda task_id: record)['id'] for _ in range(count)]


def tasks(server, **query):
    """The JSON answer of ``service=tasks`` with ``query`` (it must be 200)."""
    status, _, body = get(server, 'tasks', format='json', **query)
    assert status == 200, body
    return json.loads(body)


def get(server, service, headers=AUTH, **query):
    from urllib.parse import urlencode
    status, answer_headers, body = server.request_raw('GET', f'/?{urlencode(dict(query, service=service))}',
                                                      None, headers)
    return status, {name.lower(): value for name, value in answer_headers}, body.decode()


def ids_of(answer):
    return [record['id'] for record in answer['tasks']]


# -- service=tasks ----------------------------------------------------------------------

def test_the_list_is_newest_first_a_page_at_a_time(server):
    made = add_tasks(store_of(server), 120)
    newest_first = sorted(made, reverse=True)

    first = tasks(server)
    assert ids_of(first) == newest_first[:50]  # limit: 50 unless asked
    assert first['more'] is True and first['next'] == newest_first[49]
    second = tasks(server, before=first['next'], limit='60')
    assert ids_of(second) == newest_first[50:110]
    last = tasks(server, before=second['next'], limit='60')
    assert ids_of(last) == newest_first[110:] and last['more'] is False and last['next'] == ''
    assert first['tasks'][0]['status'] == 'complete' and first['tasks'][0]['service'] == 'echo'


def test_a_jobs_steps_are_left_out_and_the_job_shows_them(server):
    store = store_of(server)
    first = add_tasks(store, 1, service='openscad', job='')[0]
    job = store.create_task(lambda task_id: {'service': 'pipe', 'status': 'busy', 'ctime': f'{time.time():.5f}'})
    steps = [add_tasks(store, 1, service=name, job=job['id'])[0] for name in ('openscad', 'slic3r')]
    store.write_task(dict(job, status='complete', steps=','.join(steps)))

    listed = tasks(server)['tasks']

    assert [record['id'] for record in listed] == [job['id'], first]
    assert listed[0]['steps'] == ','.join(steps)
    assert listed[0]['step1'] == f'{steps[0]} openscad complete'
    assert listed[0]['step2'] == f'{steps[1]} slic3r complete'


def test_filters_by_status_and_service(server):
    store = store_of(server)
    add_tasks(store, 3)
    failed = add_tasks(store, 2, status='failed', error='exit code 1')
    slices = add_tasks(store, 2, service='slic3r')
    add_tasks(store, 3)

    assert ids_of(tasks(server, status='failed')) == failed[::-1]
    assert ids_of(tasks(server, of='slic3r')) == slices[::-1]
    assert ids_of(tasks(server, status='failed', of='slic3r')) == []
    assert len(tasks(server, status='complete')['tasks']) == 8


def test_an_unfiltered_page_reads_only_the_records_it_shows(server, monkeypatch):
    store = store_of(server)
    add_tasks(store, 300)
    read = []
    original = Store.read_task
    monkeypatch.setattr(Store, 'read_task', lambda self, task_id, checked=False: (
        read.append(task_id), original(self, task_id, checked))[1])

    answer = tasks(server, limit='20')

    assert len(answer['tasks']) == 20 and answer['more'] is True
    assert len(read) == 20


def test_a_rare_match_is_found_over_several_bounded_requests(server, monkeypatch):
    from rrc.web import tasklist
    monkeypatch.setattr(tasklist, 'SCAN_MAX', 25)
    store = store_of(server)
    rare = add_tasks(store, 1, status='failed')
    add_tasks(store, 60)

    pages, found, query = 0, [], {}
    while True:
        answer = tasks(server, status='failed', **query)
        pages += 1
        found += ids_of(answer)
        if not answer['more']:
            break
        query = {'before': answer['next']}
    assert found == rare and pages == 3  # 61 records, at most 25 read by each request


def test_the_text_list_is_records_like_info(server):
    made = add_tasks(store_of(server), 3)
    status, headers, text = get(server, 'tasks', limit='2')
    assert status == 200 and headers['content-type'].startswith('text/plain')
    blocks = text.strip().split('\n\n')
    assert [line for block in blocks for line in block.splitlines() if line.startswith('id: ')] == [
        f'id: {task_id}' for task_id in sorted(made, reverse=True)[:2]]
    assert headers['x-rrcloud-more'] == 'yes' and headers['x-rrcloud-next'] == sorted(made)[1]


def test_another_clients_inputs_show_as_file_names(server):
    add_tasks(store_of(server), 1, client='10.1.2.3', **{'in': 'tasks/in/1796000000-00000-000000.scad'})
    assert tasks(server)['tasks'][0]['in'] == '1796000000-00000-000000.scad'


@pytest.mark.parametrize('query, says', [
    ({'limit': '0'}, 'limit must be'), ({'limit': '501'}, 'limit must be'), ({'limit': 'x'}, 'limit must be'),
    ({'limit': '²'}, 'limit must be'), ({'limit': '١٢'}, 'limit must be'), ({'limit': ''}, 'limit must be'),
    ({'status': 'done'}, 'bad status'), ({'of': '../x'}, 'bad service name'), ({'before': 'yesterday'}, 'id')])
def test_a_bad_query_is_400_in_one_line(server, query, says):
    status, _, text = get(server, 'tasks', format='json', **query)
    assert status == 400 and says in json.loads(text)['error'], text


def test_the_list_needs_the_token(server):
    assert get(server, 'tasks', headers={})[0] == 401


def test_an_empty_store_lists_nothing(server):
    answer = tasks(server)
    assert answer['tasks'] == [] and answer['more'] is False and answer['stamp'].isdigit()


# -- service=changes --------------------------------------------------------------------

def sse_messages(text):
    """[{'id', 'event', 'data'}] of an SSE body (comments left out)."""
    messages = []
    for block in text.split('\n\n'):
        fields = dict(line.split(': ', 1) for line in block.splitlines() if line and not line.startswith(':'))
        if 'data' in fields:
            messages.append({'id': fields.get('id'), 'event': fields['event'], 'data': json.loads(fields['data'])})
    return messages


def follow_changes(server, actions=None, headers=AUTH, query='', until=None):
    """A CGI's stream of ``service=changes`` (it ends after cgiStreamSeconds,
    or once ``until(messages)`` is true): [(seconds since it opened,
    message)], while ``actions()`` runs beside it once the stream is open
    (its return value: the moments it did things)."""
    environ = build_environ('GET', f'/?service=changes{query}', [('Host', f'127.0.0.1:{server.port}'),
                                                                   *headers.items()], None, '127.0.0.1', server.port)
    environ['wsgi.run_once'] = True  # a CGI: bounded by cgiStreamSeconds
    started = []
    chunks = server.application(environ, lambda status, answer_headers, exc_info=None: started.append(status))
    opened = time.monotonic()
    arrived, done = [], {}
    worker = threading.Thread(target=lambda: done.update(moments=actions())) if actions else None
    try:
        for number, chunk in enumerate(chunks):
            if number == 0 and worker:
                worker.start()  # the stream has read the store: what happens now is a change
            arrived += [(time.monotonic() - opened, message) for message in sse_messages(chunk.decode())]
            if until is not None and until([message for _, message in arrived]):
                break
    finally:
        chunks.close()
        if worker:
            worker.join()
    assert started[0].startswith('200'), started
    return arrived, done.get('moments', {})


def after(seconds, then):
    """``then()`` after ``seconds``, and the moment (seconds since now) it returned."""
    start = time.monotonic()
    time.sleep(seconds)
    then()
    return time.monotonic() - start


def test_a_new_client_gets_hello_then_each_new_changed_and_removed_task(long_server):
    store = store_of(long_server)
    old = add_tasks(store, 2)
    made = {}

    def actions():
        moments = {'new': after(0.2, lambda: made.update(new=add_tasks(store, 1, status='busy')[0]))}
        moments['changed'] = after(0.2, lambda: store.write_task(dict(store.read_task(made['new']),
                                                                      status='complete')))
        moments['removed'] = after(0.2, lambda: store.remove_task(store.read_task(old[0])))
        return moments

    arrived, _ = follow_changes(long_server, actions, until=lambda messages: messages and messages[-1]['event'] == 'removed')

    events = [(message['event'], message['data'].get('id'), message['data'].get('status'))
              for _, message in arrived]
    assert events[0] == ('hello', None, None)
    assert arrived[0][1]['data']['stamp'].isdigit() and arrived[0][1]['id'] == arrived[0][1]['data']['stamp']
    # Busy is seen, or skipped when both writes fell within one look; complete always is.
    ended = [('task', made['new'], 'complete'), ('removed', old[0], None)]
    assert events[1:] in ([('task', made['new'], 'busy')] + ended, ended), events
    assert all(message['id'].isdigit() for _, message in arrived)


def test_a_client_coming_back_with_its_cursor_gets_what_it_missed(server):
    store = store_of(server)
    for task_id in add_tasks(store, 3):  # long before: not again
        os.utime(store.info_path(task_id), (time.time() - 60, time.time() - 60))
    stamp = tasks(server)['stamp']
    missed = add_tasks(store, 2)

    for how in ({'headers': dict(AUTH, **{'Last-Event-ID': stamp})}, {'query': f'&lastEventId={stamp}'}):
        arrived, _ = follow_changes(server, **how)
        assert [(message['event'], message['data']['id']) for _, message in arrived] == [
            ('task', task_id) for task_id in missed], how


def test_a_steps_change_sends_its_job_too(server):
    store = store_of(server)
    job = store.create_task(lambda task_id: {'service': 'pipe', 'status': 'busy', 'ctime': f'{time.time():.5f}'})
    step = add_tasks(store, 1, service='openscad', status='busy', job=job['id'])[0]
    store.write_task(dict(job, steps=step))

    arrived, _ = follow_changes(server, lambda: after(0.1, lambda: store.write_task(
        dict(store.read_task(step), status='complete'))))

    shown = {message['data']['id']: message['data'] for _, message in arrived if message['event'] == 'task'}
    assert shown[step]['status'] == 'complete'
    assert shown[job['id']]['step1'] == f'{step} openscad complete'


def test_a_busy_tasks_progress_is_sent_as_it_moves(long_server):
    from rrc.events import append_event
    from rrc.store import mark
    store = store_of(long_server)
    task_id = add_tasks(store, 1, status='busy', stime=f'{time.time():.5f}')[0]
    mark(store, 'running', task_id)

    arrived, _ = follow_changes(long_server, lambda: after(0.1, lambda: append_event(
        store, task_id, 'progress', {'done': 3, 'total': 10})),
        until=lambda messages: any(m['event'] == 'task' for m in messages))

    progress = [message['data'].get('progress') for _, message in arrived if message['event'] == 'task']
    assert progress == ['3/10']


def test_a_busy_task_in_the_list_shows_its_progress_and_time_left(server):
    from rrc.events import append_event
    store = store_of(server)
    task_id = add_tasks(store, 1, status='busy', stime=f'{time.time():.5f}')[0]
    append_event(store, task_id, 'progress', {'done': 5, 'total': 10, 'percent': 50.0, 'eta': 40.0})

    shown = tasks(server)['tasks'][0]

    assert shown['progress'] == '5/10'
    assert 38 <= int(shown['eta']) <= 40


def test_the_stream_holds_a_wait_slot():
    config = f'token = {TOKEN}\nmaxWaits = 1\n'
    with deploy.running(deploy.deployment('wsgi', config=config)) as running:
        environ = build_environ('GET', '/?service=changes', [('Host', f'127.0.0.1:{running.port}'),
                                                              *AUTH.items()], None, '127.0.0.1', running.port)
        held = running.application(environ, lambda *args: None)
        assert next(held).startswith(b'retry: ')  # open, holding the one slot
        status, _, text = get(running, 'changes')
        assert status == 503 and 'maxWaits' in text
        held.close()  # the client went away: its slot is free again
        again = running.application(environ, lambda *args: None)
        assert next(again).startswith(b'retry: ')
        again.close()
        status, headers, body = running.request_raw('HEAD', '/?service=changes', None, AUTH)
        assert status == 200 and body == b'' and dict(headers)['Content-Type'].startswith('text/event-stream')


def changes_stream(server, cursor=None):
    """The stream's source itself (rrc/web/changes.py), its looks driven by the test."""
    from rrc.web.changes import ChangesStream
    return ChangesStream(server.application, '127.0.0.1', cursor)


def sent_tasks(messages):
    return [(message.kind, json.loads(message.json).get('id'), json.loads(message.json).get('status'))
            for message in messages]


def test_two_writes_between_two_looks_send_the_last(server):
    """Each write renames a new file in; ext4 hands the freed inode of the
    first out again at once, so the record may be on its old inode."""
    store = store_of(server)
    task_id = add_tasks(store, 1, status='busy')[0]
    stream = changes_stream(server)
    assert [message.kind for message in stream.wait(0)] == ['hello']
    record = store.read_task(task_id)

    store.write_task(dict(record, note='working'))
    store.write_task(dict(record, status='complete'))

    assert sent_tasks(stream.wait(2.0)) == [('task', task_id, 'complete')]


def test_a_write_hidden_in_the_folders_mtime_tick_is_still_sent(server):
    """A write within the mtime tick of the folder's last scan leaves the
    folder's mtime as that scan saw it (pinned here with utime): the scan was
    racy, so the next look scans again."""
    store = store_of(server)
    task_id = add_tasks(store, 1, status='busy')[0]
    folder = store.folder('info')
    pinned = time.time_ns()
    os.utime(folder, ns=(pinned, pinned))
    stream = changes_stream(server)  # its scan follows the folder's change at once: racy
    assert [message.kind for message in stream.wait(0)] == ['hello']
    time.sleep(0.3)

    store.write_task(dict(store.read_task(task_id), status='complete'))
    os.utime(folder, ns=(pinned, pinned))

    assert sent_tasks(stream.wait(2.0)) == [('task', task_id, 'complete')]


def test_a_client_coming_back_after_a_removal_is_told(server):
    store = store_of(server)
    kept, gone = add_tasks(store, 2)
    os.utime(store.info_path(kept), (time.time() - 60, time.time() - 60))
    stamp = tasks(server)['stamp']
    time.sleep(0.01)
    store.remove_task(store.read_task(gone))  # between two streams: none saw it go

    arrived, _ = follow_changes(server, query=f'&lastEventId={stamp}')

    assert [(message['event'], message['data']['id']) for _, message in arrived] == [('removed', gone)]


def test_the_removals_log_is_bounded_and_an_older_cursor_reloads(server, monkeypatch):
    from rrc import removals
    monkeypatch.setattr(removals, 'MAX_BYTES', 400)  # ten lines or so
    store = store_of(server)
    first = tasks(server)['stamp']
    made = add_tasks(store, 45)  # 44 bytes a line: four files of ten made, the last half full
    for task_id in made:
        store.remove_task(store.read_task(task_id))
    sizes = [os.path.getsize(path) for path in removals.removed_paths(store.tasks) if os.path.exists(path)]
    assert len(sizes) == 2 and max(sizes) <= 400 + 50
    recent, whole_from = removals.removed_since(store.tasks, 0)
    assert recent == made[-len(recent):] and 0 < whole_from

    arrived, _ = follow_changes(server, query=f'&lastEventId={first}')  # before what the log holds

    assert [message['event'] for _, message in arrived] == ['reset']
    assert arrived[0][1]['data']['stamp'] == arrived[0][1]['id'] != first


def test_a_client_that_missed_too_much_reloads_its_list(server, monkeypatch):
    from rrc.web import changes
    monkeypatch.setattr(changes, 'RESET_MAX', 5)
    store = store_of(server)
    for task_id in add_tasks(store, 6):
        os.utime(store.info_path(task_id), (time.time() - 60, time.time() - 60))

    arrived, _ = follow_changes(server, query='&lastEventId=1')
    assert [message['event'] for _, message in arrived] == ['reset']
    assert arrived[0][1]['data']['stamp'] == arrived[0][1]['id'] == tasks(server)['stamp']

    stamp = tasks(server)['stamp']
    missed = add_tasks(store, 5)  # as many as the bound: sent one by one
    arrived, _ = follow_changes(server, query=f'&lastEventId={stamp}')
    assert [(message['event'], message['data']['id']) for _, message in arrived] == [
        ('task', task_id) for task_id in missed]


def test_a_refused_stream_reads_nothing(monkeypatch):
    """The wait slot is taken before the store is read: a 503 costs no scan."""
    config = f'token = {TOKEN}\nmaxWaits = 1\n'
    with deploy.running(deploy.deployment('wsgi', config=config)) as running:
        add_tasks(store_of(running), 3)
        environ = build_environ('GET', '/?service=changes', [('Host', f'127.0.0.1:{running.port}'),
                                                              *AUTH.items()], None, '127.0.0.1', running.port)
        held = running.application(environ, lambda *args: None)
        assert next(held).startswith(b'retry: ')
        scanned, scandir = [], os.scandir
        info = store_of(running).folder('info')
        monkeypatch.setattr(os, 'scandir', lambda path='.': (scanned.append(path), scandir(path))[1])
        try:
            status, _, text = get(running, 'changes', headers=dict(AUTH, **{'Last-Event-ID': '1'}))
        finally:
            monkeypatch.undo()
            held.close()
        assert status == 503 and 'maxWaits' in text
        assert info not in scanned


@pytest.mark.parametrize('cursor', ['x', '-1', '1' * 21, '1.5'])
def test_a_bad_cursor_is_400(server, cursor):
    status, _, text = get(server, 'changes', headers=dict(AUTH, **{'Last-Event-ID': cursor}))
    assert status == 400 and 'bad event id' in text


def test_the_stream_needs_the_token(server):
    assert get(server, 'changes', headers={})[0] == 401


def test_a_real_task_arrives_through_the_embedded_servers_stream(embedded_server):
    import requests
    server = embedded_server('maxTasks = 1\n', services={'sh': SH_INPUTS_SERVICE})
    seen = []
    with requests.get(server.url + '?service=changes', stream=True, timeout=30) as stream:
        assert stream.headers['Content-Type'].startswith('text/event-stream')
        lines = stream.iter_lines(chunk_size=1)
        task_id = None
        fields = {}
        for line in lines:
            line = line.decode()
            if line.startswith('event: '):
                fields['event'] = line[7:]
            elif line.startswith('data: '):
                fields['data'] = json.loads(line[6:])
            elif not line and fields:
                seen.append(fields)
                if fields['event'] == 'hello':
                    # Long enough to be seen busy: two writes within one look show once, as the second.
                    task_id = submit(server, 'sh', 'echo working\nsleep 0.6\nprintf done > "$1"\n', 'job.sh')
                elif fields['data'].get('id') == task_id and fields['data']['status'] != 'busy':
                    break
                fields = {}
    states = [message['data']['status'] for message in seen if message['data'].get('id') == task_id]
    assert states[0] == 'busy' and states[-1] == 'complete', seen


@pytest.mark.parametrize('kind', ['lighttpd', 'apache'])
def test_a_cgis_changes_stream_reaches_the_client_as_it_is_written(kind):
    """The web server passes the stream on at once, not when the CGI ends
    after cgiStreamSeconds: lighttpd/rrcloud.conf streams service=changes as
    service=events (apache/rrcloud.conf keeps mod_deflate off it, where
    that module is on; this test's Apache has it off anyway).  The stream
    lasts 30 s; each read may wait 10 s: a web server that held the stream
    back until the CGI ended would fail it with a read timeout."""
    import requests
    with deploy.running(deploy.deployment(kind, config='cgiStreamSeconds = 30\n')) as running:
        with requests.get(running.url + '/?service=changes', stream=True, timeout=(10, 10)) as stream:
            assert stream.headers['Content-Type'].startswith('text/event-stream')
            lines = stream.iter_lines(chunk_size=1)
            assert any(line.startswith(b'event: hello') for line in lines)


@pytest.mark.parametrize('garbage', [b'', b'\xff\xfe not a record\n'])
def test_an_unreadable_record_is_left_out_of_the_list_and_the_stream(server, garbage):
    """A record file that holds no record (left by a disk error or another
    program: rrcloud writes each one whole, by rename) is skipped: the list
    still answers and the stream goes on with the next change."""
    store = store_of(server)
    broken, good = add_tasks(store, 2, status='busy')
    stream = changes_stream(server)
    assert [message.kind for message in stream.wait(0)] == ['hello']

    with open(os.path.join(store.folder('info'), broken), 'wb') as handle:
        handle.write(garbage)
    assert sent_tasks(stream.wait(0.5)) == []
    store.write_task(dict(store.read_task(good), status='complete'))

    assert sent_tasks(stream.wait(2.0)) == [('task', good, 'complete')]
    assert ids_of(tasks(server)) == [good]
