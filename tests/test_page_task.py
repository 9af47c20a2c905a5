"""The task view and the page's way to the server (www/js/task.js,
www/js/api.js), in a real headless Chromium against a real ``rrcloud
serve``, and the page's headers (rrc/web/page.py) in-process:

- a running task that printed 20,000 lines opens with its last line shown,
  the page answering, its log kept to its bound;
- views switched quickly follow only the last one: no line twice, no line of
  another task, no stream left open on the server;
- an ended task's long log shows its tail and downloads whole; a job's view
  links its steps' logs;
- after Suspend, Resume, Kill pressed with Enter, the focus is on the next
  control (or the view's message), never lost to <body>;
- api.js: fileUrl takes the server's result and log paths only; the SSE
  parser (CRLF split between chunks, an id without data, retry:); the
  stream's reconnects (after silence, on ``online``, backing off when a
  server answers 200 and closes, Retry-After, a 401 stops it);
- the page is sent with X-Frame-Options and a Content-Security-Policy whose
  hash is its import map's, and breaks nothing under it.

No timings are asserted: every wait is generous, a broken page fails it.
"""

import base64
import hashlib
import re

import pytest

from browser import requested_urls, severe_console
from helpers import SH_SERVICE, plain_session, submit, wait_for
from test_page import css, open_page, shown_text, tab_to, view_state, wait

CONFIG = 'serverName = page-test\nmaxTasks = 4\nmaxWaits = 8\nmaxWaitsPerClient = 4\n'
SERVICES = {'job': SH_SERVICE}
# A task that prints LINES lines at once, then waits until it is killed.
MANY_LINES = 20000
PRINTS_THEN_WAITS = ('i=0; while [ $i -lt {count} ]; do echo "line $i of a long log"; i=$((i+1)); done\n'
                     'echo "the last line"\nsleep 600\necho done > "$1"\n')
TICKING = 'i=0; while [ $i -lt 600 ]; do echo "{name} tick $i"; i=$((i+1)); sleep 0.2; done\necho done > "$1"\n'
LOG_LINES_KEPT = 5000   # www/js/task.js
LOG_TAIL_CHARS = 256 * 1024
GENEROUS = 120


@pytest.fixture
def server(embedded_server):
    return embedded_server(CONFIG, SERVICES, scope='module')


@pytest.fixture
def running(server):
    """Start running tasks (``start(script, name)``: its id); each is killed at the end."""
    started = []

    def start(script, name):
        task_id = submit(server, 'job', script, name)
        started.append(task_id)
        return task_id
    yield start
    for task_id in started:
        plain_session().post(f'{server.url}/', data={'service': 'kill', 'id': task_id, 'format': 'json'}, timeout=30)


def log_file(server, task_id):
    path = server.root / 'tasks' / 'log' / task_id
    return path.read_text(errors='replace') if path.is_file() else ''


def served_log(server, task_id):
    """The log as the server sends it (its inputs named as its client named them)."""
    answer = plain_session().get(f'{server.url}/tasks/log/{task_id}', timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.text


LOG_TEXT = 'return document.getElementById("task-log").textContent'


# The log box's lines, read in one script (a long log's innerText would cost more).
LOG_LINES = """
    const log = document.getElementById('task-log');
    return log ? log.textContent.split('\\n').filter(Boolean) : [];"""


def log_lines(driver):
    return driver.execute_script(LOG_LINES)


###############################################################################
# A long log, opened while its task runs
###############################################################################

def test_a_running_tasks_long_log_opens_with_its_last_line_and_the_page_answers(page, server, running):
    task_id = running(PRINTS_THEN_WAITS.format(count=MANY_LINES), 'long-log.sh')
    wait_for(lambda: 'the last line' in log_file(server, task_id), 'the tool\'s last line in its log', GENEROUS)
    assert server.info(task_id)['status'] == 'busy'
    page.set_script_timeout(GENEROUS)
    page.get(f'{server.url}#task={task_id}')
    # the whole log comes again when the view opens: 20,001 lines, drawn a frame at a time
    wait(page, lambda d: (log_lines(d) or [''])[-1] == 'the last line', 'the log\'s last line', GENEROUS)
    lines = log_lines(page)
    assert len(lines) <= LOG_LINES_KEPT, len(lines)
    assert lines[-2] == f'line {MANY_LINES - 1} of a long log'
    assert page.execute_script('return document.getElementById("task-log").childElementCount') <= LOG_LINES_KEPT
    # the page answers, and still shows the task running
    assert page.execute_script('return 6 * 7') == 42
    assert view_state(page) == 'running'
    assert severe_console(page) == []


###############################################################################
# Views switched quickly
###############################################################################

# Go to each address in turn, each once the page has seen the last
# (hashchange): the views open one after the other while the first's
# record is still on its way.
GO_THROUGH = """
    const [hashes, done] = [arguments[0], arguments[arguments.length - 1]];
    let next = 0;
    const go = () => {
      if (next === hashes.length) { window.removeEventListener('hashchange', go); done(location.hash); return; }
      location.hash = hashes[next++];
    };
    window.addEventListener('hashchange', go);
    go();"""


def streams_for_client(server, task_id, count):
    """Open ``count`` event streams of ``task_id`` from this test's address
    (the browser's too) at once: True when the server took them all, False
    when it refused one (503: the client's share is held)."""
    import requests
    answers = []
    try:
        for _ in range(count):
            answer = requests.get(f'{server.url}/', params={'service': 'events', 'id': task_id},
                                  stream=True, timeout=30)
            answers.append(answer)
            if answer.status_code != 200:
                return False
        return True
    finally:
        for answer in answers:
            answer.close()


def test_views_switched_quickly_follow_the_last_one_only(page, server, running):
    first = running(TICKING.format(name='first'), 'first.sh')
    second = running(TICKING.format(name='second'), 'second.sh')
    for task_id in (first, second):
        wait_for(lambda: 'tick 2' in log_file(server, task_id), 'the tasks ticking')
    open_page(page, server)
    assert page.execute_async_script(GO_THROUGH, [f'#task={first}', f'#task={second}']) == f'#task={second}'
    wait(page, lambda d: len([line for line in log_lines(d) if 'tick' in line]) > 10, 'the second task\'s log')
    ticks = [line for line in log_lines(page) if 'tick' in line]
    assert all(line.startswith('second tick') for line in ticks), ticks
    assert len(ticks) == len(set(ticks)), 'a line shown twice: two streams write into the view'
    assert shown_text(page, '#task-title') == 'second.sh'

    # back to the list: the page holds its changes stream only, so three
    # more of this client's four (maxWaitsPerClient) are free again
    page.execute_script('location.hash = ""')
    wait(page, lambda d: css(d, '#overview') and css(d, '#overview')[0].is_displayed(), 'the list again')
    wait(page, lambda d: streams_for_client(server, second, 3), 'the view\'s streams given back to the server')


def test_a_finished_view_opened_last_shows_its_own_log_only(page, server, running):
    first = running(TICKING.format(name='first'), 'first.sh')
    second = running(TICKING.format(name='second'), 'second.sh')
    finished = submit(server, 'job', 'echo "finished line 1"\necho "finished line 2"\necho done > "$1"\n',
                      'finished.sh')
    assert server.wait_done(finished)['status'] == 'complete'
    for task_id in (first, second):
        wait_for(lambda: 'tick 2' in log_file(server, task_id), 'the tasks ticking')
    open_page(page, server)
    requested_urls(page)
    hashes = [f'#task={first}', f'#task={second}', f'#task={finished}']
    assert page.execute_async_script(GO_THROUGH, hashes) == hashes[-1]
    wait(page, lambda d: 'finished line 2' in '\n'.join(log_lines(d)), 'the finished task\'s log')
    wait(page, lambda d: view_state(d) == 'complete', 'the finished task\'s state')
    # whatever came late for the views left is not drawn: the log is the file's, once
    whole = served_log(server, finished)
    wait(page, lambda d: d.execute_script(LOG_TEXT) == whole, 'the log as the server sends it, once')
    assert shown_text(page, '#task-title') == 'finished.sh'
    # no view but the last one followed anything: no stream of the finished
    # task (its log is a file), none of the two left before their records came
    streams = [url for url in requested_urls(page) if 'service=events' in url]
    assert streams == [], streams
    assert severe_console(page) == []


###############################################################################
# An ended task's long log, a job's log
###############################################################################

def test_an_ended_tasks_long_log_shows_its_tail_and_downloads_whole(page, server, tmp_path):
    script = ('i=0; while [ $i -lt 20000 ]; do echo "ended line $i, some more text to fill it"; i=$((i+1)); done\n'
              'echo done > "$1"\n')
    task_id = submit(server, 'job', script, 'ended-long.sh')
    assert server.wait_done(task_id)['status'] == 'complete'
    whole = served_log(server, task_id)
    assert len(whole) > 2 * LOG_TAIL_CHARS
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: 'ended line 19999' in (log_lines(d) or [''])[-1], 'the log\'s last line')
    shown = page.execute_script(LOG_TEXT)
    assert len(shown) < LOG_TAIL_CHARS + 1000
    assert 'ended line 0,' not in shown
    assert shown.split('\n', 1)[1] == whole[-len(shown.split('\n', 1)[1]):]  # the tail, whole lines
    page.execute_cdp_cmd('Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': str(tmp_path)})
    css(page, '#log-download')[0].click()
    saved = tmp_path / f'{task_id}.log'
    wait(page, lambda d: saved.is_file() and saved.read_text() == whole, 'the whole log saved')
    assert severe_console(page) == []


###############################################################################
# The keyboard after a control
###############################################################################

def press_enter(driver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    ActionChains(driver).send_keys(Keys.ENTER).perform()


def focused(driver):
    return driver.execute_script("""
        const node = document.activeElement;
        return node.dataset.control || node.id || node.tagName.toLowerCase();""")


def test_after_a_control_pressed_with_enter_the_focus_goes_on(page, server, running):
    task_id = running(TICKING.format(name='keys'), 'keys.sh')
    wait_for(lambda: 'tick 1' in log_file(server, task_id), 'the tool running')
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: view_state(d) == 'running', 'the task running')
    tab_to(page, '#task-controls button[data-control="suspend"]')
    press_enter(page)
    wait(page, lambda d: view_state(d) == 'suspended', 'the task suspended')
    wait(page, lambda d: focused(d) == 'resume', 'the focus on Resume')
    press_enter(page)
    wait(page, lambda d: view_state(d) == 'running', 'the task running again')
    wait(page, lambda d: focused(d) == 'suspend', 'the focus on Suspend')
    tab_to(page, '#task-controls button[data-control="kill"]')
    press_enter(page)
    wait(page, lambda d: view_state(d) == 'failed', 'the task killed')
    wait(page, lambda d: focused(d) == 'task-message', 'the focus on the view\'s message')
    assert 'kill' in shown_text(page, '#task-message')
    assert severe_console(page) == []


###############################################################################
# api.js, unit by unit in the page
###############################################################################

def in_page(driver, server, body, *args):
    """Run ``body`` (an async function's body, with ``api`` the module
    www/js/api.js and ``args``) in the page; its value."""
    if not driver.current_url.startswith(server.url):
        open_page(driver, server)
    driver.set_script_timeout(GENEROUS)
    # (the body is part of the script itself: the page's CSP allows no eval)
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const args = arguments[0];
        import('/ui/js/api.js')
          .then((api) => (async () => { %s })())
          .then((value) => done({value}), (error) => done({error: String(error && error.stack || error)}));"""
                                       % body, list(args))


def value_of(answer):
    assert 'error' not in answer, answer['error']
    return answer['value']


def test_file_url_takes_the_servers_results_and_logs_only(page, server):
    accepted = ['tasks/out/20240101-000000-1.stl', '/tasks/log/20240101-000000-1', 'tasks/out/x%2Fy.gcode']
    refused = ['//evil.example/x', '/\\evil.example/x', 'https://evil.example/tasks/out/x', '/tasks/out/',
               '/tasks/out/a/b', '/tasks/out/x?y', '/tasks/out/x#y', '/tasks/out/a\\b', '/ui/js/api.js',
               'tasks/info/x', ' /tasks/out/x', 'javascript:alert(1)']
    answer = value_of(in_page(page, server, """
        const tried = (path) => { try { return api.fileUrl(path); } catch (error) { return null; } };
        return [args[0].map(tried), args[1].map(tried)];""", accepted, refused))
    assert answer[0] == ['/' + path.lstrip('/') for path in accepted]
    assert answer[1] == [None] * len(refused)


def test_every_fetch_of_the_api_stays_on_its_origin(page, server):
    """A request the page makes goes same-origin, without credentials
    elsewhere: a fetch to another origin fails before it leaves."""
    answer = value_of(in_page(page, server, """
        const seen = [];
        const real = window.fetch;
        window.fetch = (url, options) => { seen.push([options.mode, options.credentials]); return real(url, options); };
        try {
          const a = new api.Api('/');
          await a.get({service: 'meta'});
          let crossOrigin = 'sent';
          await a.fetch('http://localhost:9/x').catch(() => { crossOrigin = 'refused'; });
          return {seen, crossOrigin};
        } finally { window.fetch = real; }"""))
    assert answer['seen'] == [['same-origin', 'same-origin']] * 2
    assert answer['crossOrigin'] == 'refused'


def test_the_sse_parser_reads_chunks_as_they_come(page, server):
    chunks = ['retry: 2500\r', '\n: hello\r', '\nid: 1.0\r', '\nevent: log\r', '\ndata: {"a":1}\r',
              '\n\r', '\nid: 2.5\r\n\r\n',                 # an id alone, no data: no message, the id kept
              'data: {"b"', ':2}\n', 'data: {"c":3}\n\n',     # a line across two chunks; two data lines
              'event: x\rdata: 4\r\r', 'id: 9\ndata: 5']     # CR alone ends lines; an unended message waits,
                                                             # its id not yet the last (a reconnect gets it again)
    answer = value_of(in_page(page, server, """
        const messages = [], retries = [];
        const parser = new api.SseParser({onMessage: (m) => messages.push(m), onRetry: (ms) => retries.push(ms)});
        for (const chunk of args[0]) parser.feed(chunk);
        return {messages, retries, last: parser.lastEventId};""", chunks))
    assert answer['retries'] == [2500]
    assert answer['messages'] == [
        {'event': 'log', 'data': '{"a":1}', 'id': '1.0'},
        {'event': 'message', 'data': '{"b":2}\n{"c":3}', 'id': '2.5'},
        {'event': 'x', 'data': '4', 'id': '2.5'},
    ]
    assert answer['last'] == '2.5'


# A fake server for the streams of a test (service=fake): window.fetch
# answers as ``answers`` say, in turn (the last again and again), and counts
# the calls; the page's own requests go on to the server.
FAKE_FETCH = """
    const calls = [];
    const real = window.fetch;
    const answers = args[0];
    window.fetch = async (url, options) => {
      if (!String(url).includes('service=fake')) return real(url, options);  // the page's own
      calls.push({url: String(url), lastEventId: (options.headers || {})['Last-Event-ID'] || ''});
      const [status, headers, body] = answers[Math.min(calls.length, answers.length) - 1];
      if (body === 'steady') {  // a heartbeat, open a while, then the end a CGI's bound makes
        const stream = new ReadableStream({start(c) {
          c.enqueue(new TextEncoder().encode(': heartbeat\\n\\n'));
          setTimeout(() => c.close(), 300);
        }});
        return new Response(stream, {status, headers});
      }
      if (body === 'silent') {  // an id, then nothing: a connection that died quietly
        const stream = new ReadableStream({start(c) {
          c.enqueue(new TextEncoder().encode('id: 7.0\\n\\n'));
          options.signal.addEventListener('abort', () => c.error(new DOMException('aborted', 'AbortError')));
        }});
        return new Response(stream, {status, headers});
      }
      return new Response(body, {status, headers});
    };
    const restore = () => { window.fetch = real; };
    const until = async (test) => { while (!test()) await new Promise((r) => setTimeout(r, 50)); };
"""


def test_a_stream_that_answers_and_closes_at_once_is_backed_off(page, server):
    answer = value_of(in_page(page, server, FAKE_FETCH + """
        try {
          const stream = new api.Api('/').stream({service: 'fake'}, {message() {}});
          await until(() => calls.length >= 4);
          const delay = stream.delay;  // 4 s, or 8 s once the fourth has failed
          stream.close();
          return {delay};
        } finally { restore(); }""", [[200, {'Content-Type': 'text/event-stream'}, '']]))
    # 0.5 s, 1 s, 2 s, 4 s: never back to the first delay, for no message came
    assert answer['delay'] >= 4000, answer


def test_a_stream_that_stayed_open_and_ended_comes_back_soon(page, server):
    """A CGI ends its stream every cgiStreamSeconds, quiet or not: the page
    comes back after the first delay each time, not after a growing one."""
    answer = value_of(in_page(page, server, FAKE_FETCH + """
        try {
          const stream = new api.Api('/').stream({service: 'fake'}, {message() {}, steadyMs: 200});
          await until(() => calls.length >= 4);
          const delay = stream.delay;
          stream.close();
          return {delay};
        } finally { restore(); }""", [[200, {'Content-Type': 'text/event-stream'}, 'steady']]))
    assert answer['delay'] <= 1000, answer  # the first delay (500 ms), doubled once at most after the last end


def test_a_503_waits_its_retry_after_and_a_401_stops_the_stream(page, server):
    answer = value_of(in_page(page, server, FAKE_FETCH + """
        try {
          const errors = [];
          const stream = new api.Api('/').stream({service: 'fake'}, {
            message() {}, error: (error, how) => errors.push([error.status, error.message, how.reconnecting])});
          await until(() => errors.length >= 1);
          const wait = stream.wait;
          stream.close();
          const errors401 = [];
          const stopped = new api.Api('/').stream({service: 'fake'}, {
            message() {}, error: (error, how) => errors401.push([error.status, error.message, how.reconnecting])});
          await until(() => stopped.closed);
          return {wait, errors, errors401, calls: calls.length};
        } finally { restore(); }""", [[503, {'Retry-After': '7'}, 'busy'], [401, {}, 'token']]))
    assert answer['wait'] == 7000
    assert answer['errors'][0][0] == 503 and answer['errors'][0][2] is True
    assert answer['errors401'] == [[401, 'live updates stopped: this server needs a token', False]]
    assert answer['calls'] == 2  # one each: the 401 is not asked again


def test_a_silent_stream_reconnects_with_its_last_id_and_so_does_going_online(page, server):
    answer = value_of(in_page(page, server, FAKE_FETCH + """
        try {
          const silent = new api.Api('/').stream({service: 'fake'}, {message() {}, silenceMs: 300});
          await until(() => calls.length >= 2);
          silent.close();
          const afterSilence = calls.slice(0, 2);
          let opened = 0;
          const quiet = new api.Api('/').stream({service: 'fake'}, {message() {}, opened: () => { opened += 1; }});
          await until(() => opened >= 1);
          const before = calls.length;
          window.dispatchEvent(new Event('online'));  // (45 s of silence are far away)
          await until(() => calls.length > before && opened >= 2);
          quiet.close();
          return {afterSilence, online: calls.length - before};
        } finally { restore(); }""", [[200, {'Content-Type': 'text/event-stream'}, 'silent']]))
    assert answer['afterSilence'] == [{'url': '/?service=fake', 'lastEventId': ''},
                                      {'url': '/?service=fake', 'lastEventId': '7.0'}]
    assert answer['online'] == 1, answer


###############################################################################
# The page's headers: no frame of it elsewhere, its own scripts only
###############################################################################

def import_map_hash(page_text):
    text = re.search(r'<script type="importmap">(.*?)</script>', page_text, re.DOTALL).group(1)
    return 'sha256-' + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def test_the_page_is_sent_with_x_frame_options_and_a_csp_holding_its_import_maps_hash():
    from rrc.web.page import html_page
    answer = html_page()
    headers = dict(answer.headers)
    assert headers['X-Frame-Options'] == 'DENY'
    policy = dict(part.strip().split(' ', 1) for part in headers['Content-Security-Policy'].split(';'))
    assert policy['frame-ancestors'] == "'none'"
    assert policy['default-src'] == "'self'"
    assert policy['script-src'] == f"'self' '{import_map_hash(answer.body.decode())}'"
    assert policy['style-src'] == "'self'"
    assert policy['object-src'] == "'none'" and policy['base-uri'] == "'none'"
    assert "'unsafe-inline'" not in headers['Content-Security-Policy']


def test_an_edited_import_map_gets_its_own_hash(tmp_path, monkeypatch):
    from rrc.web import page as page_module
    original = open(page_module.installed_path('www/index.html'), encoding='utf-8').read()
    edited = original.replace('"lil-gui":', '"other": "/ui/vendor/other.js", "lil-gui":')
    assert edited != original
    (tmp_path / 'www').mkdir()
    (tmp_path / 'www' / 'index.html').write_text(edited)
    monkeypatch.setattr(page_module, 'installed_path', lambda path: str(tmp_path / path))
    answer = page_module.html_page()
    policy = dict(answer.headers)['Content-Security-Policy']
    assert import_map_hash(answer.body.decode()) in policy
    assert import_map_hash(original) not in policy


# Every CSP violation of the page, from its first script on.
WATCH_VIOLATIONS = """
    window.violations = [];
    document.addEventListener('securitypolicyviolation',
      (event) => window.violations.push(`${event.violatedDirective} ${event.blockedURI}`));"""


def test_the_page_works_under_its_csp_and_no_other_site_frames_it(page, server):
    task_id = submit(server, 'job', 'echo a line of its log\necho framed > "$1"\n', 'framed.sh')
    server.wait_done(task_id)
    script = page.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument', {'source': WATCH_VIOLATIONS})
    try:
        answer = plain_session().get(server.url, headers={'User-Agent': 'Mozilla/5.0 Chrome'}, timeout=10)
        assert answer.headers['X-Frame-Options'] == 'DENY'
        assert "frame-ancestors 'none'" in answer.headers['Content-Security-Policy']
        open_page(page, server)
        page.get(f'{server.url}#task={task_id}')
        wait(page, lambda d: view_state(d) == 'complete', 'a task\'s view')
        wait(page, lambda d: 'framed.sh' in shown_text(d, '#task-record'), 'its record')
        wait(page, lambda d: 'a line of its log' in shown_text(d, '#task-log'), 'its log')
        assert page.execute_script('return window.violations') == []
        assert page.execute_script('return document.querySelector("script[type=importmap]") !== null')
        assert severe_console(page) == []
    finally:
        page.execute_cdp_cmd('Page.removeScriptToEvaluateOnNewDocument', {'identifier': script['identifier']})
    # another site's page (localhost is another origin than 127.0.0.1) that
    # frames it gets an error page in the frame; a stylesheet of the same
    # server, framed the same way, shows: the page's headers refuse the frame
    base = server.url.rstrip('/')
    page.get(base.replace('127.0.0.1', 'localhost') + '/ui/app.css')
    page.execute_script("""
        for (const [id, src] of arguments[0]) {
          const frame = document.createElement('iframe');
          frame.id = id;
          frame.src = src;
          document.body.append(frame);
        }""", [['framed-page', base + '/'], ['framed-css', base + '/ui/app.css']])

    def frame_url(frame, driver=page):
        driver.switch_to.frame(frame)
        try:
            return driver.execute_script('return location.href')
        finally:
            driver.switch_to.default_content()
    wait(page, lambda d: frame_url('framed-css') == base + '/ui/app.css', 'the framed stylesheet')
    wait(page, lambda d: frame_url('framed-page').startswith('chrome-error:'), 'the framed page refused')


def test_a_tab_back_in_view_after_a_long_while_reconnects_its_streams(page, server):
    answer = value_of(in_page(page, server, FAKE_FETCH + """
        let state = 'visible';
        Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
        const flip = (to) => { state = to; document.dispatchEvent(new Event('visibilitychange')); };
        try {
          let opened = 0;
          const stream = new api.Api('/').stream({service: 'fake'}, {message() {}, opened: () => { opened += 1; }});
          await until(() => opened >= 1);
          flip('hidden');
          flip('visible');  // a moment away: the connection is kept
          const afterShort = calls.length;
          flip('hidden');
          stream.hiddenSince -= 10 * 60 * 1000;  // ten minutes away (not waited for)
          flip('visible');
          await until(() => calls.length > afterShort && opened >= 2);
          stream.close();
          return {afterShort, afterLong: calls.length};
        } finally { restore(); delete document.visibilityState; }""",
                                    [[200, {'Content-Type': 'text/event-stream'}, 'silent']]))
    assert answer == {'afterShort': 1, 'afterLong': 2}
