"""The event log of a task (tasks/events/ID): what writes it, what reads it, its bounds.

Real tasks (a shell-script service), the real runner, the built-in sender
printing to the simulated printer on a pty (tests/printer_sim.py), real
processes appending at once.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

import rrc.events as events
import rrc.waits as waits
from rrc.events import (EventFollower, ProgressEvents, append_event, events_path, last_progress,
    note, read_events, remove_orphan_events)
from rrc.printing import gcode_lines
from rrc.states import State, expire_tasks, get_task, move_task
from rrc.store import Store, format_record
from helpers import PTY_PRINTRUN_CONF, SH_SERVICE, read_terminal_until, rrcloud_on_a_terminal, submit_script, wait_for
from conftest import DATA, REPO, make_service, task_id_of, wait_until_done, write_config
from printer_sim import PrinterSim

SMALL = DATA / 'small.gcode'
COUNT = len(gcode_lines(SMALL))
TASK_ID = '1796000000-00000-000001'


def submit(cli, workdir, script, name='job.sh'):
    """``script`` as a task of the shell service ``job``; its id."""
    make_service(workdir, 'job', SH_SERVICE)
    return submit_script(cli, workdir, script, name=name)


def statuses(store, task_id):
    return [e.data for e in read_events(store, task_id) if e.kind == 'status']


def events_to_the_end(workdir, task_id):
    """A task's events once it ended: its final status event follows its record's
    final write (at once, but after it)."""
    wait_until_done(workdir, task_id)
    store = Store(workdir)
    return wait_for(lambda: [e for e in read_events(store, task_id)
                             if e.kind == 'status' and e.data['status'] != 'busy'] and read_events(store, task_id),
                    'the final status event', timeout=10)


def event_lines(store, task_id):
    with open(events_path(store, task_id), 'rb') as handle:
        return handle.read().split(b'\n')[:-1]


###############################################################################
# 1. A real task's events: every status change, in order, ids 1, 2, 3 ...
###############################################################################

def test_a_completed_task_has_its_status_changes_in_order(cli, workdir):
    task_id = submit(cli, workdir, 'sleep 0.3\necho done > "$1"\n')
    store = Store(workdir)

    found = events_to_the_end(workdir, task_id)

    assert [e.id for e in found] == list(range(1, len(found) + 1))
    assert [e.kind for e in found] == ['status', 'status', 'status']
    assert [e.data for e in found] == [{'status': 'busy', 'queued': True}, {'status': 'busy'},
                                       {'status': 'complete', 'exitCode': 0}]
    times = [e.time for e in found]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 30
    for line in event_lines(store, task_id):  # the documented shape, key order and all
        assert re.fullmatch(rb'\{"id":[0-9]+,"t":[0-9.]+,"kind":"[a-z]+","data":\{.*\}\}', line), line
        assert len(line) < events.EVENT_LINE_MAX


def test_a_failed_task_says_its_exit_code(cli, workdir):
    task_id = submit(cli, workdir, 'exit 3\n')

    assert events_to_the_end(workdir, task_id)[-1].data == {'status': 'failed', 'exitCode': 3, 'error': 'exit code 3'}


def test_a_killed_task_ends_with_failed_killed_and_a_note_of_who(cli, workdir):
    task_id = submit(cli, workdir, 'sleep 300\n')
    store = Store(workdir)
    wait_for(lambda: get_task(store, task_id).get('pid'), 'the tool to start')

    assert cli('kill', task_id).code == 0
    wait_for(lambda: not os.path.exists(os.path.join(store.folder('running'), task_id)), 'the runner to end')

    found = read_events(store, task_id)
    assert [e.data['status'] for e in found if e.kind == 'status'] == ['busy', 'busy', 'failed']
    assert statuses(store, task_id)[-1] == {'status': 'failed', 'error': 'killed'}
    notes = [e.data['text'] for e in found if e.kind == 'note']
    assert len(notes) == 1 and notes[0].startswith(f'task {task_id} killed by the command line'), notes
    assert [e.id for e in found] == list(range(1, len(found) + 1))


def test_a_timeout_is_a_note_before_the_final_status(cli, workdir):
    write_config(workdir, 'timeout = 1\n')
    task_id = submit(cli, workdir, 'sleep 300\n')

    found = events_to_the_end(workdir, task_id)
    assert [e.kind for e in found][-2:] == ['note', 'status']
    assert found[-2].data == {'text': 'timeout after 1 s: the tool was stopped'}
    assert found[-1].data['status'] == 'failed' and found[-1].data['error'] == 'timeout after 1 s'


###############################################################################
# 2. A print's progress: events, info's progress, and a record left alone
###############################################################################

@pytest.fixture
def printer_store(workdir):
    make_service(workdir, 'printrun', PTY_PRINTRUN_CONF)
    (workdir / 'small.gcode').write_bytes(SMALL.read_bytes())
    return workdir


def info_progress(cli, task_id):
    result = cli('info', task_id)
    assert result.code == 0, result
    fields = dict(line.split(': ', 1) for line in result.out.splitlines()[1:] if ': ' in line)
    return fields.get('status'), fields.get('progress')


def test_a_print_sends_progress_events_and_info_shows_them_without_rewriting_the_record(
        cli, proc, printer_store):
    store = Store(printer_store)
    shown, record_files = [], set()
    with PrinterSim(delay=0.005) as sim:  # about 1.6 s of printing
        result = proc('printrun', sim.port, 'small.gcode')
        assert result.code == 0, result
        task_id = task_id_of(result.out)
        info_path = store.info_path(task_id)
        wait_for(lambda: any(e.kind == 'progress' for e in read_events(store, task_id)), 'a progress event')
        while True:
            before = os.stat(info_path)
            status, progress = info_progress(cli, task_id)
            if status != 'busy':
                break
            shown.append(progress)
            if progress and int(progress.split('/')[0]) < COUNT:  # the sender is still printing
                record_files.add((before.st_ino, before.st_mtime_ns))
            time.sleep(0.05)
    record = get_task(store, task_id)
    assert record['status'] == 'complete', record
    assert len(sim.received) == COUNT + 1  # M110 N0, then every line

    progress = [e for e in read_events(store, task_id) if e.kind == 'progress']
    done = [e.data['done'] for e in progress]
    assert done == sorted(done) and done[-1] == COUNT, done
    assert any(0 < n < COUNT for n in done), done
    assert all(e.data['total'] == COUNT for e in progress)
    assert progress[-1].data['percent'] == 100.0
    assert any('eta' in e.data for e in progress[1:-1]), [e.data for e in progress]
    gaps = [b.time - a.time for a, b in zip(progress, progress[1:-1])]
    assert all(gap >= events.PROGRESS_EVENT_INTERVAL - 0.05 for gap in gaps), gaps  # coalesced
    # info showed the event log's progress while it printed, in the record's format
    seen = [p for p in shown if p]
    assert seen and all(re.fullmatch(rf'[0-9]+/{COUNT}', p) for p in seen), shown
    assert any(0 < int(p.split('/')[0]) < COUNT for p in seen), shown
    # ... and the record was not rewritten meanwhile (same file, same mtime)
    assert len(record_files) == 1, record_files
    # The final record keeps the last progress, as before.
    assert record['progress'] == f'{COUNT}/{COUNT}'
    assert events_to_the_end(printer_store, task_id)[-1].data['status'] == 'complete'


def test_the_local_progress_line_shows_the_print_progress_from_the_events(printer_store):
    with PrinterSim(delay=0.005) as sim, \
            rrcloud_on_a_terminal(printer_store, '--sync', 'printrun', sim.port, 'small.gcode') as (client, master):
        text = read_terminal_until(master, r'local busy [0-9]+s \[[#-]{24}\] [0-9]+%', client)
        assert client.wait(timeout=60) == 0
    assert re.search(r'\rlocal busy [0-9]+s \[[#-]{24}\] [0-9]+%', text), text


###############################################################################
# 3. Concurrent writers, readers from an id or an offset, torn lines
###############################################################################

APPENDER = '''
import sys
sys.path.insert(0, sys.argv[1])
from rrc.events import append_event
from rrc.store import Store
store = Store(sys.argv[2])
for number in range(int(sys.argv[4])):
    append_event(store, sys.argv[3], 'note', {'text': sys.argv[5] * 300, 'writer': sys.argv[5], 'n': number})
'''


def test_concurrent_appends_from_several_processes_never_interleave(tmp_path):
    store = Store(tmp_path)
    writers, each = 6, 150
    processes = [subprocess.Popen([sys.executable, '-c', APPENDER, str(REPO), str(tmp_path), TASK_ID,
                                   str(each), letter]) for letter in 'abcdef'[:writers]]
    for process in processes:
        assert process.wait(timeout=120) == 0

    lines = event_lines(store, TASK_ID)
    parsed = [json.loads(line) for line in lines]  # every line whole
    assert [event['id'] for event in parsed] == list(range(1, writers * each + 1))
    for event in parsed:
        assert event['data']['text'] == event['data']['writer'] * 300
    for letter in 'abcdef'[:writers]:
        assert [e['data']['n'] for e in parsed if e['data']['writer'] == letter] == list(range(each))


def test_reading_from_an_id_or_an_offset_onward_and_following(tmp_path):
    store = Store(tmp_path)
    for number in range(10):
        note(store, TASK_ID, f'note {number}')

    everything = read_events(store, TASK_ID)
    assert [e.id for e in everything] == list(range(1, 11))
    assert [e.id for e in read_events(store, TASK_ID, after=4)] == [5, 6, 7, 8, 9, 10]  # Last-Event-ID: 4
    assert read_events(store, TASK_ID, after=10) == []
    assert read_events(store, '1796000000-00000-000002') == []  # no events yet: none, no error
    resumed = EventFollower(store, TASK_ID, after=everything[6].id, offset=everything[6].end)
    assert [e.data['text'] for e in resumed.read()] == ['note 7', 'note 8', 'note 9']

    follower = EventFollower(store, TASK_ID, at_end=True)
    assert follower.read() == []
    note(store, TASK_ID, 'later')
    later = follower.wait(5)
    assert [(e.id, e.data['text']) for e in later] == [(11, 'later')]
    assert follower.wait(0.05) == []


def test_a_torn_last_line_is_skipped_and_the_ids_go_on(tmp_path):
    store = Store(tmp_path)
    note(store, TASK_ID, 'one')
    with open(events_path(store, TASK_ID), 'ab') as handle:  # a power cut mid-line
        handle.write(b'{"id":2,"t":17')
    follower = EventFollower(store, TASK_ID)
    assert [e.id for e in follower.read()] == [1]  # a line without its end waits

    note(store, TASK_ID, 'two')

    assert [(e.id, e.data['text']) for e in read_events(store, TASK_ID)] == [(1, 'one'), (2, 'two')]
    assert [e.id for e in follower.read()] == [2]


def test_a_reader_never_sees_half_a_line_being_written(tmp_path):
    store = Store(tmp_path)
    stop = threading.Event()
    seen = []

    def read():
        follower = EventFollower(store, TASK_ID)
        while not stop.is_set():
            seen.extend(follower.read())
        seen.extend(follower.read())
    reader = threading.Thread(target=read)
    reader.start()
    for number in range(300):
        append_event(store, TASK_ID, 'note', {'text': 'x' * 350, 'n': number})
    stop.set()
    reader.join()
    assert [e.id for e in seen] == list(range(1, 301))


###############################################################################
# 4. wait wakes on the final status, without re-reading the record all along
###############################################################################

def test_wait_returns_promptly_after_the_final_status_and_reads_the_record_rarely(cli, workdir, monkeypatch):
    task_id = submit(cli, workdir, 'sleep 2\necho done > "$1"\n')
    store = Store(workdir)
    reads = []
    real_get_task = waits.get_task
    monkeypatch.setattr(waits, 'get_task', lambda *a: reads.append(1) or real_get_task(*a))

    record = waits.wait_for_task(store, task_id, timeout=60)
    returned = time.time()

    assert record['status'] == 'complete'
    final = events_to_the_end(workdir, task_id)[-1]
    assert final.data['status'] == 'complete'
    assert returned - final.time < 0.25, returned - final.time
    # Once a second and at each status event, not every few milliseconds (about 100 reads in 2 s before).
    assert len(reads) <= 2 / waits.WAIT_RECHECK_SECONDS + 6, len(reads)


def test_wait_for_a_task_that_writes_no_events_still_ends(tmp_path):
    """A record of an older rrcloud (no events folder) that ends by someone else's write."""
    store = Store(tmp_path)
    (tmp_path / 'tasks' / 'info').mkdir(parents=True)
    record = {'id': TASK_ID, 'service': 'echo', 'status': 'busy', 'ctime': f'{time.time():.5f}'}
    (tmp_path / 'tasks' / 'info' / TASK_ID).write_text(format_record(record))
    threading.Timer(0.3, lambda: store.write_task(dict(record, status='complete'))).start()

    started = time.monotonic()
    assert waits.wait_for_task(store, TASK_ID, timeout=10)['status'] == 'complete'
    assert time.monotonic() - started < 0.3 + waits.WAIT_RECHECK_SECONDS + 0.5
    assert not os.path.exists(store.folder('events')), 'a reader creates nothing'


def test_wait_hears_progress_between_status_events(tmp_path):
    store = Store(tmp_path)
    (tmp_path / 'tasks' / 'info').mkdir(parents=True)
    record = {'id': TASK_ID, 'service': 'echo', 'status': 'busy', 'ctime': f'{time.time():.5f}'}
    store.write_task(record)
    polled = []
    reporter = ProgressEvents(store, TASK_ID)
    threading.Timer(0.2, lambda: reporter.report(3, 10)).start()
    threading.Timer(0.8, lambda: move_task(store, TASK_ID, State.COMPLETE)).start()  # writes its status event

    events = []
    final = waits.wait_for_task(store, TASK_ID, timeout=10,
                                on_poll=lambda r, event: (polled.append(r.get('progress')), events.append(event)))

    assert final['status'] == 'complete'
    assert '3/10' in polled, polled
    assert any(event and event.data['done'] == 3 for event in events), events


###############################################################################
# 5. Bounds: coalesced progress, a full file, removal with the task
###############################################################################

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_progress_is_coalesced_to_one_event_per_interval(tmp_path):
    store, clock = Store(tmp_path), Clock()
    reporter = ProgressEvents(store, TASK_ID, clock=clock)
    for done in range(1, 10001):  # a chatty sender: 10,000 reports in 2 s
        reporter.report(done, 10000)
        clock.now += 0.0002
    reporter.flush(force=True)

    progress = read_events(store, TASK_ID)
    assert len(progress) <= 2 / events.PROGRESS_EVENT_INTERVAL + 2, len(progress)
    assert progress[-1].data == {'done': 10000, 'total': 10000, 'percent': 100.0, 'eta': 0.0}
    assert last_progress(store, TASK_ID) == '10000/10000'


def test_a_full_event_file_keeps_status_events_and_drops_the_rest_with_one_note(tmp_path, monkeypatch):
    monkeypatch.setattr(events, 'EVENT_FILE_MAX_BYTES', 4096)
    store = Store(tmp_path)
    for number in range(200):
        note(store, TASK_ID, f'chatter {number}')
    events.status_changed(store, {'id': TASK_ID, 'status': 'complete', 'exitCode': '0'})

    found = read_events(store, TASK_ID)
    assert os.path.getsize(events_path(store, TASK_ID)) < 4096 + 2 * events.EVENT_LINE_MAX
    assert [e.data['text'] for e in found if e.data.get('text') == events.LOG_FULL_NOTE] == [events.LOG_FULL_NOTE]
    assert found[-1].kind == 'status' and found[-1].data == {'status': 'complete', 'exitCode': 0}
    assert [e.id for e in found] == list(range(1, len(found) + 1))


def test_events_go_with_their_task_on_expiry_and_orphans_on_recovery(cli, workdir):
    task_id = submit(cli, workdir, 'echo done > "$1"\n')
    record = wait_until_done(workdir, task_id)
    store = Store(workdir)
    assert os.path.exists(events_path(store, task_id))
    note(store, '1796000000-00000-000009', 'a task removed meanwhile')

    assert expire_tasks(store, [record], max_hours=0, now=float(record['etime']) + 1) == []
    remove_orphan_events(store)

    assert os.listdir(store.folder('events')) == []


def test_a_store_from_before_event_logs_gets_its_folder_on_demand(cli, workdir):
    (workdir / 'tasks' / 'info').mkdir(parents=True)
    task_id = submit(cli, workdir, 'echo done > "$1"\n')
    assert events_to_the_end(workdir, task_id)[-1].data['status'] == 'complete'


def test_a_follower_looks_fast_only_while_its_task_is_young(tmp_path):
    """A long-poll of a task submitted a minute ago (a 0.019 client asking
    again and again) waits as a stream does, not every few milliseconds."""
    import time as clock
    from rrc.events import FOLLOW_FAST_SECONDS, EventFollower
    store = Store(str(tmp_path))
    store.ensure()
    task_id = '1796000000-12345-123456'
    young, old = EventFollower(store, task_id), EventFollower(store, task_id)

    young.fast_while_young(clock.time())
    old.fast_while_young(clock.time() - 60)

    now = clock.monotonic()
    assert now < young.fast_until <= now + FOLLOW_FAST_SECONDS
    assert old.fast_until <= now
