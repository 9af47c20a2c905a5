"""Live events: ``GET /?service=events&id=ID`` (Server-Sent Events) and ``rrcloud watch``.

A real HTTP client (requests, ``stream=True``) reads the stream of a real
task from the application in-process (``wsgi``), from the embedded server,
and from lighttpd and Apache, where each CGI stream is bounded
(``cgiStreamSeconds``, a quarter of a second here) and the client comes back with
its cursor.  Every connection is cut once in the middle too.  What the
client got is held against the task's own files: every event of its event
log once and in order, every line of its log once, the final status last.

``rrcloud watch`` follows a print on the simulated printer (real progress),
a failing task, a task of the embedded server over its stream, and a
RepRapCloud 0.019 server (a fake: nothing real plays one) without events.
"""
import json
import os
import re
import select

import pytest

import deploy
from conftest import DATA, make_service, task_id_of
from helpers import (PTY_PRINTRUN_CONF, SH_INPUTS_SERVICE, gates_folder, read_terminal_until, rrcloud_on_a_terminal,
                     submit, wait_for)
from inprocess import build_environ
from printer_sim import PrinterSim
from rrc.events import append_event, read_events
from rrc.store import Store
from servers import FakeServer

UNKNOWN_ID = '1795841292-04767-953464'
# Three log lines over more than half a second, then a result: longer than
# two CGI streams here (each ends after cgiStreamSeconds).
CHATTY = 'for word in one two three; do echo "$word"; sleep 0.2; done\nprintf done > "$1"\n'
QUICK = 'echo one\necho two\nprintf done > "$1"\n'
# CHATTY's lines with a gate before the last: the test opens it (see its use).
GATED_CHATTY = ('echo one\nsleep 0.2\necho two\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n'
                'echo three\nprintf done > "$1"\n')
FAILING = 'echo "about to fail"\nexit 3\n'
# maxWaitsPerClient: every stream here comes from one address; the tests bound maxWaits.
CONFIG = 'cgiStreamSeconds = 0.25\nmaxWaits = 2\nmaxWaitsPerClient = 2\n'


@pytest.fixture(scope='module')
def gates():
    with gates_folder() as folder:
        yield folder


@pytest.fixture(scope='module', params=['wsgi'])
def server(request, gates):
    """One deployment per kind for this module: ``wsgi`` unless a test asks for live ones."""
    services = {'sh': SH_INPUTS_SERVICE, 'gated': SH_INPUTS_SERVICE + f'readPaths = {gates}\n'}
    built = deploy.deployment(request.param, config=CONFIG, services=services)
    with deploy.running(built) as deployment:
        yield deployment


LIVE = pytest.mark.parametrize('server', deploy.ALL_KINDS, indirect=True)


def start(server, script):
    """``script`` as a task of the sh service; its id."""
    return submit(server, 'sh', script, 'job.sh')


def events_url(server, task_id):
    return f'{server.url}/?service=events&id={task_id}'


def sse_messages(response):
    """Each SSE message of a response as it arrives: {'id', 'event', 'data' (parsed JSON)}."""
    fields = {}
    for line in response.iter_lines(chunk_size=1):
        line = line.decode('utf-8')
        if line.startswith(':'):
            continue
        if line:
            name, _, value = line.partition(': ')
            fields[name] = value
        elif 'data' in fields:
            yield {'id': fields.get('id'), 'event': fields.get('event'), 'data': json.loads(fields['data'])}
            fields = {}


def is_end(message):
    return message['event'] == 'status' and message['data']['data']['status'] in ('complete', 'failed')


def follow(server, task_id, cut=True, limit=100, on_close=None):
    """Read a task's stream to its end as EventSource would: reconnect with
    Last-Event-ID when it closes; with ``cut``, hang up once after the first
    log line; ``on_close(by_server)`` hears of each connection that ended
    before the task's end.  Returns (messages, connections made)."""
    seen, cursor, connections, cut_now = [], None, 0, False
    while connections < limit:
        if connections and on_close:
            on_close(not cut_now)  # the last connection ended: by this hang-up, or by the server
        cut_now = False
        headers = {'Last-Event-ID': cursor} if cursor else {}
        with server.session.get(events_url(server, task_id), headers=headers, stream=True, timeout=30) as answer:
            connections += 1
            assert answer.status_code == 200, (answer.status_code, answer.text)
            assert answer.headers['Content-Type'].startswith('text/event-stream')
            assert answer.headers['Access-Control-Allow-Origin'] == '*'
            for message in sse_messages(answer):
                seen.append(message)
                cursor = message['id']
                if is_end(message):
                    return seen, connections
                if cut and message['event'] == 'log':
                    cut, cut_now = False, True
                    break
    raise AssertionError(f'no end after {limit} connections: {seen}')


def task_files(server, task_id):
    """(event log, log lines) of a task as its server's store holds them."""
    store = Store(str(server.store))
    with open(store.log_path(task_id), encoding='utf-8') as log:
        return read_events(store, task_id), log.read().splitlines()


def cursor_of(message):
    events, _, log = message['id'].partition('.')
    return int(events), int(log)


@LIVE
def test_stream_gives_every_event_and_log_line_once_across_reconnects(server, gates):
    """Under CGI the task waits at its gate after two lines until the
    server has ended a stream at its bound (no race with a sleep on a loaded
    machine); elsewhere the gate is open from the start (the test's own hang-up
    after the first line makes the reconnect, and the in-process server
    answers a stream whole)."""
    bounded = server.kind in ('lighttpd', 'apache')
    closes, gate = [], gates / f'chatty-{server.kind}'
    if not bounded:
        gate.touch()

    def on_close(by_server):
        closes.append(by_server)
        if by_server:
            gate.touch()
    task_id = submit(server, 'gated', GATED_CHATTY.format(gate=gate), 'job.sh')

    seen, connections = follow(server, task_id, on_close=on_close)

    events, log_lines = task_files(server, task_id)
    logged = [m for m in seen if m['event'] != 'log']
    assert [m['data']['id'] for m in logged] == [e.id for e in events]  # each once, in order
    assert [(m['event'], m['data']['data']) for m in logged] == [(e.kind, e.data) for e in events]
    statuses = [m['data']['data']['status'] for m in logged if m['event'] == 'status']
    assert statuses[0] == 'busy' and statuses[-1] == 'complete', statuses
    assert [m['data']['data']['text'] for m in seen if m['event'] == 'log'] == log_lines == ['one', 'two', 'three']
    assert is_end(seen[-1])
    cursors = [cursor_of(m) for m in seen]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert connections >= (3 if bounded else 2)  # a CGI stream is bounded
    assert any(closes) == bounded, closes  # only a CGI's stream ends before its task
    # Back after the end: 204, which stops a browser's EventSource.
    again = server.session.get(events_url(server, task_id), headers={'Last-Event-ID': seen[-1]['id']}, timeout=30)
    assert again.status_code == 204, again.text


def test_a_cursor_from_the_middle_gives_exactly_the_rest(server):
    task_id = start(server, QUICK)
    whole, _ = follow(server, task_id, cut=False)

    for middle in range(len(whole) - 1):
        cursor = whole[middle]['id']
        for how in ({'headers': {'Last-Event-ID': cursor}}, {'params': {'lastEventId': cursor}}):
            answer = server.session.get(events_url(server, task_id), timeout=30, **how)
            rest = list(sse_messages(answer))
            assert [(m['id'], m['event'], m['data'].get('data')) for m in rest] == \
                [(m['id'], m['event'], m['data'].get('data')) for m in whole[middle + 1:]], (cursor, how)


def test_a_failed_task_ends_its_stream_with_its_exit_code(server):
    task_id = start(server, FAILING)
    seen, _ = follow(server, task_id, cut=False)
    assert [m['data']['data']['text'] for m in seen if m['event'] == 'log'] == ['about to fail']
    assert seen[-1]['event'] == 'status'
    assert seen[-1]['data']['data']['status'] == 'failed'
    assert seen[-1]['data']['data']['exitCode'] == 3


@pytest.mark.parametrize('query, status, says', [
    (f'service=events&id={UNKNOWN_ID}', 404, f'error: no such task: {UNKNOWN_ID}\n'),
    ('service=events&id=12', 400, "error: bad task id: '12'\n"),
    ('service=events', 400, 'error: missing id\n'),
])
def test_bad_requests_get_one_line(server, query, status, says):
    answer = server.session.get(f'{server.url}/?{query}', timeout=30)
    assert (answer.status_code, answer.text) == (status, says)


@pytest.mark.parametrize('cursor', ['x', '1.2.3', '-1', '1.', '9' * 50, '²'])  # '²'.isdigit()
def test_a_bad_cursor_is_refused(server, cursor):
    task_id = start(server, 'printf x > "$1"\n')
    answer = server.session.get(events_url(server, task_id), headers={'Last-Event-ID': cursor}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.text.startswith('error: not a cursor of this stream') and answer.text.count('\n') == 1


def test_streams_count_against_max_waits(tmp_path):
    built = deploy.deployment('wsgi', config='maxWaits = 1\n', services={'sh': SH_INPUTS_SERVICE})
    with deploy.running(built) as server:
        task_id = start(server, 'sleep 30\n')
        environ = build_environ('GET', f'/?service=events&id={task_id}', [('Host', 'x')], None)
        answers = []
        first = server.application(environ, lambda status, headers: answers.append(status))
        assert answers == ['200 OK']
        refused = server.session.get(events_url(server, task_id), timeout=30)
        assert refused.status_code == 503 and refused.headers['Retry-After'].isdigit()
        assert refused.text.count('\n') == 1 and 'maxWaits' in refused.text
        first.close()  # the client went away: its slot is free again
        answer = server.session.get(f'{server.url}/?service=kill&id={task_id}', timeout=30)
        assert answer.status_code == 200
        assert server.session.get(events_url(server, task_id), timeout=30).status_code == 200


@pytest.mark.parametrize('server', ['embedded'], indirect=True)
def test_a_client_that_hangs_up_frees_its_stream_slot(server):
    """Waitress tells a stream its client is gone: the thread and slot are free again."""
    task_id = start(server, 'sleep 60\n')
    held = [server.session.get(events_url(server, task_id), stream=True, timeout=30) for _ in range(2)]
    try:
        assert [answer.status_code for answer in held] == [200, 200]  # maxWaits = 2
        refused = server.session.get(events_url(server, task_id), timeout=30)
        assert refused.status_code == 503 and refused.headers['Retry-After'].isdigit(), refused.text
        held[0].close()

        def a_stream_opens():
            with server.session.get(events_url(server, task_id), stream=True, timeout=30) as answer:
                return answer.status_code == 200
        wait_for(a_stream_opens, 'a slot freed by the client that hung up', 30)
    finally:
        for answer in held:
            answer.close()
        server.session.get(f'{server.url}/?service=kill&id={task_id}', timeout=30)


###############################################################################
# rrcloud watch
###############################################################################

@pytest.fixture
def local(workdir):
    make_service(workdir, 'sh', SH_INPUTS_SERVICE)
    make_service(workdir, 'printrun', PTY_PRINTRUN_CONF)
    (workdir / 'chatty.sh').write_text(CHATTY)
    (workdir / 'failing.sh').write_text(FAILING)
    return workdir


def test_watch_follows_a_print_to_its_end(cli, local):
    (local / 'small.gcode').write_bytes((DATA / 'small.gcode').read_bytes())
    with PrinterSim(delay=0.002) as sim:  # about 0.7 s of printing
        task_id = task_id_of(cli('printrun', sim.port, 'small.gcode').out)
        watched = cli('watch', task_id)
    replayed = cli('watch', task_id, '--format=json')

    assert watched.code == 0, watched
    lines = watched.out.splitlines()
    assert lines[0] == 'status: queued' and lines[1] == 'status: running', lines
    assert lines[-1] == 'status: complete', lines
    progress = [line for line in lines if line.startswith('progress: ')]
    total = progress[-1].split()[1].split('/')[1] if progress else '?'
    assert progress and progress[-1].startswith(f'progress: {total}/{total} 100.0%'), lines
    assert len(progress) >= 2, lines  # it moved while the printer printed
    assert any(f'printed {total} lines' in line for line in lines), lines
    assert replayed.code == 0, replayed
    messages = [json.loads(line) for line in replayed.out.splitlines()]
    assert messages[-1]['kind'] == 'status' and messages[-1]['data']['status'] == 'complete'
    assert {'status', 'progress', 'log'} <= {m['kind'] for m in messages}
    events = read_events(Store(str(local)), task_id)
    assert [m['id'] for m in messages if 'id' in m] == [e.id for e in events]


# A print whose heaters warm up from 20 °C towards small.gcode's own M104 S200 and
# M140 S60, reported every 0.2 s (M155's auto-report), lines worked on for 5 ms.
HEATING_PRINTER = {'delay': 0.005, 'temp_interval': 0.2, 'heat_rate': 50}
# Before small.gcode's M104 and M140 the heaters are off (target 0), and no layer has begun.
PRINTER_LINE = re.compile(r'printer: hotend (\d+\.\d)/(?:200|0) C  bed (\d+\.\d)/(?:60|0) C'
                          r'(?:  layer (\d+))?(?:  z (\d+\.\d\d))?(?:  eta [0-9hms]+)?$')
TREND = '[\u2581-\u2588]+'


def heated_events(root, task_id):
    """The printer objects of a print's progress events that carry temperatures."""
    return [event.data['printer'] for event in read_events(Store(str(root)), task_id)
            if event.kind == 'progress' and 'hotend' in event.data.get('printer', {})]


def test_watch_shows_a_prints_temperatures_layer_and_height(cli, local):
    (local / 'small.gcode').write_bytes((DATA / 'small.gcode').read_bytes())
    with PrinterSim(**HEATING_PRINTER) as sim:
        task_id = task_id_of(cli('printrun', sim.port, 'small.gcode').out)
        watched = cli('watch', task_id)
    replayed = cli('watch', task_id, '--format=json')

    assert watched.code == 0, watched
    assert watched.out.isascii(), watched.out  # not a terminal: plain ASCII, no trend
    lines = [line for line in watched.out.splitlines() if line.startswith('printer: hotend')]
    assert lines and all(PRINTER_LINE.match(line) for line in lines), watched.out
    states = heated_events(local, task_id)
    shown = [PRINTER_LINE.match(line).groups()[:4] for line in lines]
    assert shown == [(f'{p["hotend"]:.1f}', f'{p["bed"]:.1f}', str(p['layer']) if 'layer' in p else None,
                      f'{p["z"]:.2f}' if 'z' in p else None) for p in states]
    # warming up while the target is 200 (the end G-code's M104 S0 may be reported before the end: cooling)
    hotends = [float(hotend) for (hotend, *_), state in zip(shown, states) if state.get('hotendTarget') != 0]
    assert hotends == sorted(hotends) and 20 <= hotends[0] and hotends[-1] <= 200, hotends
    # each printer line follows its progress line
    numbered = watched.out.splitlines()
    assert all(numbered[numbered.index(line) - 1].startswith('progress: ') for line in lines)
    # JSON: parseable, the printer's fields in each progress event
    messages = [json.loads(line) for line in replayed.out.splitlines()]
    printers = [m['data']['printer'] for m in messages if m['kind'] == 'progress' and 'printer' in m['data']]
    assert [p for p in printers if 'hotend' in p] == states
    assert {'hotend', 'hotendTarget', 'bed', 'bedTarget', 'bytes', 'layer', 'z'} <= set(printers[-1]), printers[-1]


@pytest.mark.parametrize('encoding, columns', [('utf-8', 200), ('utf-8', 80), ('ascii', 200)])
def test_watch_on_a_terminal_draws_the_printer_under_the_bar_with_a_trend(cli, local, encoding, columns):
    (local / 'small.gcode').write_bytes((DATA / 'small.gcode').read_bytes())
    with PrinterSim(**HEATING_PRINTER) as sim:
        task_id = task_id_of(cli('printrun', sim.port, 'small.gcode').out)
        env = dict(os.environ, PYTHONIOENCODING=encoding)
        with rrcloud_on_a_terminal(local, 'watch', task_id, env=env, stdout_too=True,
                                   columns=columns) as (client, master):
            seen = read_terminal_until(master, 'status: complete', client)
            assert client.wait(30) == 0
    count = len(heated_events(local, task_id))

    assert 'status: complete' in seen and 'printer: ' not in seen, seen
    assert '\r\x1b[K\x1b[1A\x1b[K' in seen, seen  # the bar and the printer line wiped and drawn again
    if encoding == 'ascii':  # a terminal that cannot show them: no trend, no degree sign
        assert seen.isascii() and re.search(r'\] \d+%\r?\nhotend \d+\.\d/200 C  bed \d+\.\d/60 C  layer', seen), seen
        return
    printer_lines = re.findall(r'\nhotend [^\r\n]*', seen)
    assert printer_lines and all(len(line) - 1 < columns for line in printer_lines), printer_lines  # never wrapped
    # (the end G-code's M104 S0 may be reported before the end: target 0)
    drawn = re.findall(rf'\] \d+%\r?\nhotend \d+\.\d/(?:200|0) °C ({TREND})  bed \d+\.\d/(?:60|0) °C ({TREND})  '
                       rf'layer \d+  z \d+\.\d\d', seen)
    assert drawn, seen
    assert all(len(hotend) == len(bed) for hotend, bed in drawn)
    if columns == 200:
        assert max(len(hotend) for hotend, _ in drawn) == min(count, 12), (drawn, count)
    else:  # fewer readings, as many as the width has room for
        assert max(len(hotend) for hotend, _ in drawn) < 12, drawn


def test_watch_shows_only_the_numbers_of_a_servers_printer_state():
    """A server's event reaches the terminal as numbers only: text, NaN, a bool are left out."""
    import io
    from rrc.cli.watch import TextView
    from rrc.livestream import Message
    out = io.StringIO()
    TextView(out).show(Message('progress', '{}', None, {'done': 1, 'total': 2, 'eta': 75, 'printer': {
        'hotend': '\x1b[2J210', 'hotendTarget': 210, 'bed': float('nan'), 'layer': True, 'z': 1.5}}))

    assert out.getvalue() == 'progress: 1/2 eta 75s\nprinter: z 1.50  eta 1m15s\n'


def test_watch_trend_keeps_the_printer_line_within_80_columns():
    """Fifteen readings on an 80-column terminal: as many as fit, the newest, never a wrapped line."""
    import io
    from rrc.cli.watch import TextView
    from rrc.livestream import Message

    class Terminal(io.StringIO):  # no fileno: rrcloud takes it for 80 columns
        encoding = 'utf-8'

        def isatty(self):
            return True
    view = TextView(Terminal())
    for reading in range(15):
        view.show(Message('progress', '{}', None, {'done': reading, 'total': 100, 'eta': 192, 'printer': {
            'hotend': 20.0 + 10 * reading, 'hotendTarget': 200, 'bed': 60.0, 'bedTarget': 60, 'layer': reading,
            'z': 11.8}}))
    bar, printer = view.bar

    assert bar.startswith('[###') and 'left' not in bar  # the time left is said once, on the printer line
    assert len(printer) <= 79 and printer.endswith('layer 14  z 11.80  eta 3m12s'), printer
    trend = re.match(rf'hotend 160\.0/200 °C ({TREND})  bed 60\.0/60 °C ({TREND})  ', printer)
    assert trend and 0 < len(trend.group(1)) == len(trend.group(2)) < 12, printer
    rising, steady = trend.groups()
    assert list(rising) == sorted(rising) and rising[0] < rising[-1], rising  # scaled up to the target 200
    assert steady == '\u2588' * len(steady)  # at its target: the top block


def test_watch_of_a_failed_task_exits_as_sync_does(cli, local):
    task_id = task_id_of(cli('sh', 'failing.sh').out)
    watched = cli('watch', task_id)
    synced = cli('--sync', 'sh', 'failing.sh')

    assert watched.code == synced.code == 3, (watched, synced)
    assert watched.out.splitlines()[-2:] == ['about to fail', 'status: failed: exit code 3']


def test_watch_of_an_unknown_task_is_exit_3(cli, local):
    result = cli('watch', UNKNOWN_ID)
    assert result.code == 3 and f'no such task: {UNKNOWN_ID}' in result.err


@pytest.mark.parametrize('server', ['embedded'], indirect=True)
def test_watch_of_a_server_task_reads_its_stream(cli, workdir, server):
    task_id = start(server, CHATTY)
    watched = cli('watch', task_id, f'--s=127.0.0.1:{server.port}')
    failing = start(server, FAILING)
    as_json = cli('--format=json', 'watch', failing, f'--s=127.0.0.1:{server.port}')
    assert watched.code == 0, watched
    assert watched.out == 'status: queued\nstatus: running\none\ntwo\nthree\nstatus: complete\n'
    assert as_json.code == 3, as_json
    kinds = [(m['kind'], m['data'].get('status') or m['data'].get('text'))
             for m in map(json.loads, as_json.out.splitlines())]
    assert kinds == [('status', 'busy'), ('status', 'busy'), ('log', 'about to fail'), ('status', 'failed')]


# Says where its input and its data are, as a tool says what it reads.
NAMING = 'echo "reading $0 and $1"\nprintf done > "$2"\n'


@pytest.mark.parametrize('server', ['embedded'], indirect=True)
def test_a_server_task_s_stream_and_watch_name_the_client_s_files(cli, workdir, server):
    files = {'fileIn0': ('make part.sh', NAMING), 'fileIn1': ('pla.ini', 'x = 1\n')}
    answer = server.session.post(f'{server.url}/', data={'service': 'sh', 'prearg1': '--data=', 'format': 'json'},
                                 files=files, timeout=30)
    task_id = answer.json()['id']

    messages, _ = follow(server, task_id, cut=False)
    watched = cli('watch', task_id, f'--s=127.0.0.1:{server.port}')

    logged = [m['data']['data']['text'] for m in messages if m['event'] == 'log']
    assert logged == ['reading make part.sh and --data=pla.ini'], messages
    assert watched.code == 0, watched
    assert 'reading make part.sh and --data=pla.ini\n' in watched.out and 'tasks/in' not in watched.out


def test_watch_of_a_local_task_names_the_user_s_files(cli, local):
    (local / 'make part.sh').write_text(NAMING)
    (local / 'pla.ini').write_text('x = 1\n')
    task_id = task_id_of(cli('sh', 'make part.sh', '--data=pla.ini').out)

    watched = cli('watch', task_id)

    assert watched.code == 0, watched
    assert 'reading make part.sh and --data=pla.ini\n' in watched.out and 'tasks/in' not in watched.out


def test_watch_of_a_server_without_events_polls_its_info(cli, workdir):
    """RepRapCloud 0.019 knows no service=events: it answers its task list (text)."""
    task = '1712345678-123456'
    answers = iter(['busy'] + ['failed'] * 100)

    def old_server(request):
        if request.query.get('service') == 'info' and request.query.get('id') == task:
            return 200, 'text/plain', f'id: {task}\nservice: echo\nstatus: {next(answers)}\n'
        return 200, 'text/plain', f'id: {task}\nstatus: busy\n'
    fake = FakeServer(old_server).start()
    try:
        result = cli('watch', task, f'--s={fake.address}')
    finally:
        fake.stop()
    assert result.code == 1, result
    assert result.out == 'status: running\nstatus: failed\n'
    assert len(fake.of(service='events')) == 1


def test_watch_help_and_usage(cli):
    assert cli('watch', '--help').out.startswith('usage: rrcloud [--s=SERVER] [--format=json] watch ID')
    assert cli('watch').code == 2
    assert 'watch ID' in cli('--help').out



@pytest.mark.parametrize('server', ['embedded'], indirect=True)
def test_a_wrappers_progress_line_shows_the_servers_progress(server, local):
    """On a terminal, ``--sync`` to a server that offers events shows the
    task's progress from the server's stream, as it does for a local task."""
    (local / 'long.sh').write_text('sleep 60\n')
    records = server.store / 'tasks' / 'info'

    def task_ids():  # not the temp files a record is written through
        return {name for name in os.listdir(records) if not name.startswith('.')}
    before = task_ids()  # the module's other tests' tasks
    env = dict(os.environ, HOME=str(local.parent / 'home'))
    screen = b''

    def shows(text):
        nonlocal screen
        while select.select([master], [], [], 0.05)[0]:
            try:
                screen += os.read(master, 4096)
            except OSError:
                break
        return text in screen
    with rrcloud_on_a_terminal(local, '--sync', f'--s=127.0.0.1:{server.port}', 'sh', 'long.sh',
                               env=env) as (process, master):
        task_id = wait_for(lambda: next(iter(task_ids() - before), None), 'the task on the server', 30)
        wait_for(lambda: shows(b' busy '), 'the progress line', 30)
        append_event(Store(str(server.store)), task_id, 'progress', {'done': 5, 'total': 10, 'percent': 50.0})
        wait_for(lambda: shows(b'] 50%'), 'the progress from the server', 30)
        server.session.get(f'{server.url}/?service=kill&id={task_id}', timeout=30)
        assert process.wait(timeout=60) == 1
    line = screen.decode(errors='replace').split('\r')
    bar = '[' + '#' * 12 + '-' * 12 + '] 50%'
    assert any(f'127.0.0.1:{server.port}/ busy ' in part and part.rstrip('\x1b[K').endswith(' ' + bar)
               for part in line), screen


def test_a_job_streams_its_steps_and_no_log(cli, local, server):
    """A job (``service: pipe``, issue 13's pipelines) as the pipeline writes
    it: its own status events and a ``step`` event for each step's change."""
    from rrc.events import STEP, status_changed
    from rrc.states import State, initial_fields, move_task
    ids = []
    for store in (Store(str(local)), Store(str(server.store))):
        job_id = status_changed(store, store.create_task(lambda task_id: dict(
            initial_fields(State.RUNNING), service='pipe', ctime='1796000000.0', steps='a,b')))['id']
        for step, state in ((1, 'running'), (1, 'complete'), (2, 'running'), (2, 'failed')):
            append_event(store, job_id, STEP, {'step': step, 'id': f'STEP{step}', 'service': 'sh', 'state': state,
                                               **({'error': 'exit code 7'} if state == 'failed' else {})})
        with open(store.log_path(job_id), 'w') as log:
            log.write('not a line of a job\n')
        move_task(store, job_id, State.FAILED, {'error': 'step 2 (sh) failed: exit code 7', 'exitCode': '7'})
        ids.append(job_id)

    watched = cli('watch', ids[0])
    assert watched.code == 7, watched
    assert watched.out.splitlines() == [
        'status: running',
        'step 1 (sh) STEP1: running', 'step 1 (sh) STEP1: complete',
        'step 2 (sh) STEP2: running', 'step 2 (sh) STEP2: failed: exit code 7',
        'status: failed: step 2 (sh) failed: exit code 7']
    streamed, _ = follow(server, ids[1], cut=False)
    assert [m['event'] for m in streamed] == ['status', 'step', 'step', 'step', 'step', 'status']


@pytest.mark.parametrize('readings', [1, 6, 7, 9, 12, 15])
def test_a_printers_trend_shows_its_last_readings_up_to_twelve(readings):
    import io
    from rrc.cli.watch import TREND_BLOCKS, TextView

    class Terminal(io.StringIO):  # 80 columns: it has no size to ask
        encoding = 'utf-8'

        def isatty(self):
            return True

    view = TextView(Terminal())
    events = [{'done': n, 'total': 100, 'printer': {'hotend': 20.0 + 10 * n, 'hotendTarget': 200,
                                                     'bed': 60.0, 'bedTarget': 60}} for n in range(readings)]
    for data in events:
        view.note_temperatures(data)

    line = view.printer_line(events[-1], 0.0)
    trends = re.findall(f'[{TREND_BLOCKS}]+', line)
    assert [len(trend) for trend in trends] == [min(readings, 12)] * 2, line
