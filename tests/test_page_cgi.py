"""The page in a real browser where test_page.py's ``rrcloud serve`` is not:
under the CGI behind real lighttpd and Apache, deployed as the live
contract tests deploy it (tests/deploy.py), and on a farm's front-end
whose server panel lists its workers (tests/farm.py).

One headless Chromium for the module, one deployment per web server (and
one farm), each shared by its tests.  What a user sees is asserted: the
page and its scripts come through the CGI with no console error, the
server panel, a task in the list, a status change shown without a reload
after the CGI ended the changes stream (``cgiStreamSeconds``) and the
page reconnected, a dropped file started as a task; the farm's workers in
the panel and a task a worker ran shown complete.  Screenshots in
build/screenshots/.
"""
import os
import time

import pytest

import deploy
from browser import DESKTOP, requested_urls, screenshot, set_size, severe_console
from farm import RedisServer, Worker, front_end
from helpers import SH_SERVICE, gates_folder, plain_session, submit, wait_done
from test_page import (choose, drop_file, open_page, row, row_state, shown_text, shown_texts, started_task_id,
                       wait)

# The CGI ends a changes stream after this long: the page must reconnect to see later changes.
STREAM_SECONDS = 2
CGI_NAME = 'cgi-page'
CGI_CONFIG = f'serverName = {CGI_NAME}\nmaxTasks = 4\ncgiStreamSeconds = {STREAM_SECONDS}\n'
# A task that runs until the test creates its gate (a file the ``gated``
# service's sandbox may read): it ends when the test says, never racing a sleep.
GATED = 'while [ ! -e {gate} ]; do sleep 0.2; done\necho opened > "$1"\n'
# Generous: a CGI starts a Python per request, the machine may be busy.
SHOWN_WITHIN = 60
FARM_NAME = 'farm-page'


@pytest.fixture
def page(browser):
    """The module's browser for one test, on a blank page first: the last
    test's page (its server maybe stopped since) logs nothing into this one's
    console; desktop size, nothing logged before."""
    browser.get('about:blank')
    set_size(browser, DESKTOP)
    browser.get_log('browser')
    browser.get_log('performance')
    return browser


@pytest.fixture(scope='module')
def gates():
    """A folder under /tmp the tasks' user (www-data) can read: the gates."""
    with gates_folder() as folder:
        yield folder


@pytest.fixture(scope='module', params=['lighttpd', 'apache'])
def cgi(request, gates):
    """rrcloud as a CGI behind this web server, its changes streams cut after STREAM_SECONDS."""
    services = {'job': SH_SERVICE, 'gated': SH_SERVICE + f'readPaths = {gates}\n'}
    built = deploy.deployment(request.param, config=CGI_CONFIG, services=services)
    try:
        built.start()
        yield built
    finally:
        built.close()


def changes_requests(driver):
    """How many requests for the changes stream the page made since the last look."""
    return sum('service=changes' in url for url in requested_urls(driver))


IMPORTED = """
    const [specifier, done] = arguments;
    import(specifier).then((module) => done(Object.keys(module).length), (error) => done(String(error)));"""


def test_the_page_comes_through_the_cgi_with_no_console_error(page, cgi):
    open_page(page, cgi, CGI_NAME)
    assert shown_text(page, '#server-facts dd[data-fact="name"]') == CGI_NAME
    assert 'job' in shown_text(page, '#server-facts dd[data-fact="services"]')
    assert '4 at once' in shown_text(page, '#server-facts dd[data-fact="tasks"]')
    # The vendor module (the 3D preview's three.js) comes through the CGI too, by path and by the import map.
    for specifier in ('/ui/vendor/three.module.js', 'three'):
        exported = page.execute_async_script(IMPORTED, specifier)
        assert isinstance(exported, int) and exported > 0, (specifier, exported)
    screenshot(page, f'cgi-{cgi.kind}')
    assert severe_console(page) == []


def test_a_status_change_shows_after_the_cgi_ended_the_stream(page, cgi, gates):
    """The CGI ends the changes stream after STREAM_SECONDS; the task ends
    only after the page has asked for the stream again, so its row can only
    turn complete through a reconnected stream (no reload)."""
    open_page(page, cgi, CGI_NAME)
    page.execute_script('window.notReloaded = true')
    gate = os.path.join(gates, f'reconnect-{cgi.kind}')
    task_id = submit(cgi, 'gated', GATED.format(gate=gate), 'gated.sh')
    wait(page, lambda d: row_state(d, task_id) == 'running', 'the task submitted through the API, running in the list',
         SHOWN_WITHIN)
    changes_requests(page)  # from here on: a stream asked for after the one that brought the task
    wait(page, lambda d: changes_requests(d) > 0, 'the changes stream asked for again after the CGI ended it',
         SHOWN_WITHIN)
    open(gate, 'w').close()
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the task complete in the list', SHOWN_WITHIN)
    assert page.execute_script('return window.notReloaded') is True
    assert wait_done(cgi, task_id)['status'] == 'complete'
    screenshot(page, f'cgi-{cgi.kind}-reconnected')
    assert severe_console(page) == []


def test_a_file_dropped_on_the_page_starts_a_task_through_the_cgi(page, cgi):
    open_page(page, cgi, CGI_NAME)
    drop_file(page, 'dropped.sh', 'echo dropped > "$1"\n')
    wait(page, lambda d: 'dropped.sh' in shown_text(d, '#files'), 'the dropped file in the Submit form')
    choose(page, '#submit-service', 'job')
    page.find_element('id', 'start').click()
    task_id = started_task_id(page)
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the dropped task complete in the list', SHOWN_WITHIN)
    assert 'dropped.sh' in row(page, task_id)
    record = wait_done(cgi, task_id)
    assert record['status'] == 'complete', record
    assert cgi.session.get(f'{cgi.url}/{record["out"]}', timeout=30).text == 'dropped\n'
    assert severe_console(page) == []


# -- a farm's front-end ---------------------------------------------------------------

@pytest.fixture(scope='module')
def farm(tmp_path_factory):
    """Redis, one front-end (``backend = rq``) and one worker that serves ``sh``."""
    redis = RedisServer().start()
    store = tmp_path_factory.mktemp('farm-page-store')
    store.chmod(0o700)  # root's: the worker has only Redis and HTTP
    server = front_end(store, redis, FARM_NAME, {'sh': SH_SERVICE})
    worker = None
    try:
        server.start()
        worker = Worker(redis, server.url, services=['sh'], confs={'sh': SH_SERVICE}).start()
        yield server, worker
    finally:
        if worker:
            worker.stop()
        if server.running:
            server.stop()
        redis.stop()


def farm_workers(server):
    """meta's farmWorkers: {name: (state, services, heartbeat)}."""
    meta = plain_session().get(server.url, params={'service': 'meta', 'format': 'json'}, timeout=30).json()
    entries = [entry.split(' ') for entry in meta.get('farmWorkers', '').split(', ') if entry]
    return {name: (state, services, heartbeat) for name, state, services, heartbeat in entries}


def test_a_farms_server_panel_lists_its_worker_and_a_worker_s_task_shows_complete(page, farm):
    server, worker = farm
    name = worker.name()
    open_page(page, server, FARM_NAME)
    shown = wait(page, lambda d: [text for text in shown_texts(d, '#workers li.worker') if name in text],
                 'the worker in the server panel', SHOWN_WITHIN)
    assert shown_text(page, '#workers h3') == 'Workers'
    state, services, heartbeat = farm_workers(server)[name]
    assert services == 'sh'
    item = shown[0]
    assert item.startswith(f'{name} ') and ' sh' in item, item
    badge = shown_text(page, '#workers li.worker .badge')
    assert badge in ('idle', 'busy') and badge in item, item
    assert ' · last heartbeat ' in item, item
    beat = float(page.find_element('css selector', '#workers li.worker .heartbeat').get_attribute('data-heartbeat'))
    assert time.time() - 120 < beat <= time.time() + 5, item  # a recent heartbeat, as meta says it

    task_id = submit(server, 'sh', 'echo farmed > "$1"\n', 'farmed.sh')
    wait(page, lambda d: row(d, task_id), 'the task in the list', SHOWN_WITHIN)
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the worker\'s task complete in the list',
         SHOWN_WITHIN)
    record = wait_done(server, task_id)
    assert record['status'] == 'complete' and record.get('worker') == name, record
    screenshot(page, 'farm-panel')
    assert severe_console(page) == []


def test_a_workers_last_heartbeat_reads_as_a_time_not_unix_seconds(page, farm):
    import re
    server, worker = farm
    open_page(page, server, FARM_NAME)
    shown = wait(page, lambda d: [text for text in shown_texts(d, '#workers li.worker') if worker.name() in text],
                 'the worker in the server panel', SHOWN_WITHIN)
    assert re.search(r' · last heartbeat [0-9.]+ s ago$', shown[0]), shown[0]
    assert not re.search(r'\d{9,}', shown[0]), shown[0]
