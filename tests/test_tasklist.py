"""The page's API (rrc/web/tasklist.py, rrc/web/changes.py): ``service=tasks``,
the task list a page at a time, and ``service=changes``, the store's
changes as Server-Sent Events.

In-process (the WSGI app, tests/inprocess.py), records written with the
store's own API: the list is newest first, paged with ``before``/``next``,
filtered by status and service, leaves a job's steps to their job, and
reads no more records than it shows; the stream tells a new record, a
change and a removal within its latency target, and a client coming back
with its cursor what it missed.  Live (``rrcloud serve``): a real task's
record arrives through the stream as it runs and ends.
"""
import json
import threading
import time

import pytest

import deploy
from helpers import SH_INPUTS_SERVICE, submit
from inprocess import build_environ, call_app
from rrc.store import Store

TOKEN = 'client-token-for-the-list-tests'
AUTH = {'Authorization': f'Bearer {TOKEN}'}


@pytest.fixture
def server():
    with deploy.running(deploy.deployment('wsgi', config=f'token = {TOKEN}\ncgiStreamSeconds = 1.2\n')) as running:
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
    ({'status': 'done'}, 'bad status'), ({'of': '../x'}, 'bad service name'), ({'before': 'yesterday'}, 'id')])
def test_a_bad_query_is_400_in_one_line(server, query, says):
    status, _, text = get(server, 'tasks', format='json', **query)
    assert status == 400 and says in json.loads(text)['error'], text


def test_the_list_needs_the_token(server):
    assert get(server, 'tasks', headers={})[0] == 401


def test_an_empty_store_lists_nothing(server):
    answer = tasks(server)
    assert answer['tasks'] == [] and answer['more'] is False and answer['stamp'].isdigit()
