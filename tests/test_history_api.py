"""History: ``rrcloud history`` and ``service=history``, from the history
file the state machine appends as each task ends (rrc/ledger.py).

Real tasks through the WSGI app in-process (sh scripts, a real openscad
render, prints on the simulated printer behind a pty), then removed with
``service=remove`` and ``service=clean``: the history still counts them.
The file itself: concurrent writers (real processes, no lock: the worst
case) never tear a line, a torn last line is skipped and the next line
starts on its own, the file rotates at its cap, and a task's end is
written once however many writers try to end it.
"""
import json
import os
import subprocess
import sys
import time

import pytest

import deploy
from conftest import DATA, REPO
from helpers import PTY_PRINTRUN_CONF, SH_INPUTS_SERVICE, submit, tidied, wait_done, wait_for
from printer_sim import PrinterSim
from rrc import ledger
from rrc.schema import TaskStatus
from rrc.states import expire_tasks, finish_task
from rrc.events import PROGRESS, append_event
from rrc.store import Store, format_record

SERVICES = {'sh': SH_INPUTS_SERVICE, 'printrun': PTY_PRINTRUN_CONF}
SMALL = DATA / 'small.gcode'
OK_SCRIPT = 'printf 1234567 > "$1"\n'
FAILING_SCRIPT = 'echo broken >&2; exit 3\n'


###############################################################################
# Helpers
###############################################################################

def history(server, **params):
    """``GET ?service=history`` in JSON: (status code, answer)."""
    answer = server.session.get(f'{server.url}/', params={'service': 'history', 'format': 'json', **params},
                                timeout=30)
    return answer.status_code, (answer.json() if answer.status_code == 200 else answer.text)


def run_task(server, service, content, filename, **fields):
    """A task run to its end over HTTP: its final record."""
    return wait_done(server, submit(server, service, content, filename, **fields))


def print_on(server, port):
    """One print of small.gcode on the simulated printer at ``port``: its final record."""
    return run_task(server, 'printrun', SMALL.read_bytes(), 'small.gcode', nativeArgs=f'--timeout=2 {port}')


def history_lines(root):
    return (root / 'tasks' / 'history').read_bytes().split(b'\n')


@pytest.fixture(scope='module')
def server():
    """One in-process deployment; its tasks: 2 sh renders, 1 failing sh, 1
    openscad render, 1 print that completes and 1 whose printer goes silent
    (two printers at once: each its own pty)."""
    with deploy.running(deploy.deployment('wsgi', services=SERVICES)) as deployment:
        done = [run_task(deployment, 'sh', OK_SCRIPT, 'ok.sh') for _ in range(2)]
        done.append(run_task(deployment, 'sh', FAILING_SCRIPT, 'bad.sh'))
        done.append(run_task(deployment, 'openscad', (DATA / 'cube.scad').read_bytes(), 'cube.scad'))
        with PrinterSim() as good, PrinterSim(silent_after=50) as silent:
            done += [print_on(deployment, good.port), print_on(deployment, silent.port)]
            deployment.ports = (good.port, silent.port)
        deployment.tasks = done
        yield deployment


###############################################################################
# Over HTTP: the summary, before and after clean-up
###############################################################################

def test_history_counts_each_service_with_its_sizes_and_times(server):
    code, report = history(server)

    assert code == 200, report
    sh, scad = report['services']['sh'], report['services']['openscad']
    assert (sh['tasks'], sh['successes'], sh['failures']) == (3, 2, 1)
    assert sh['bytesOut'] == 2 * 7  # the two results of 1234567
    assert sh['bytesIn'] == 2 * len(OK_SCRIPT) + len(FAILING_SCRIPT)
    assert 0 < sh['medianRunSeconds'] <= sh['totalRunSeconds']
    assert (scad['tasks'], scad['successes'], scad['failures']) == (1, 1, 0), server.tasks[3]
    assert scad['bytesOut'] == int(server.tasks[3]['sizeOut']) > 0


def test_history_counts_prints_per_printer_with_the_reason_of_a_failure(server):
    good, silent = server.ports
    printed, failed = server.tasks[4], server.tasks[5]
    _, report = history(server)

    assert printed['status'] == 'complete' and failed['status'] == 'failed', (printed, failed)
    assert report['services']['printrun'] == dict(report['services']['printrun'], tasks=2, successes=1, failures=1)
    ok = report['printers'][good]
    assert (ok['prints'], ok['completed'], ok['failed'], ok['cancelled']) == (1, 1, 0, 0)
    assert ok['printSeconds'] > 0 and ok['reasons'] == {}
    # the filament of the print's G-code, as its record's metadata says
    assert ok['filament'] == {'filamentMm': float(printed['gcodeFilamentMm']),
                              'filamentGrams': float(printed['gcodeFilamentGrams'])} != {}
    bad = report['printers'][silent]
    assert (bad['prints'], bad['completed'], bad['failed']) == (1, 0, 1)
    assert failed['error'].startswith('the printer stopped answering') and failed['error'] != ledger.reason_of(failed['error'])
    assert bad['reasons'] == {'the printer stopped answering (no reply for N s after line N)': 1}


def test_text_answer_is_one_block_per_service_and_printer(server):
    answer = server.session.get(f'{server.url}/', params={'service': 'history'}, timeout=30)

    assert answer.status_code == 200
    blocks = [dict(line.split(': ', 1) for line in block.splitlines()) for block in answer.text.split('\n\n')]
    by_name = {block.get('service') or block.get('printer'): block for block in blocks}
    assert by_name['sh']['tasks'] == '3' and by_name['sh']['failures'] == '1'
    assert by_name[server.ports[1]]['reasons'].startswith('1 ')
    assert by_name[server.ports[0]]['completed'] == '1'


def test_history_is_a_read_open_to_other_origins_like_info(server):
    headers = {'Origin': 'http://elsewhere.example', 'Sec-Fetch-Site': 'cross-site'}
    answer = server.session.get(f'{server.url}/?service=history&format=json', headers=headers, timeout=30)
    info = server.session.get(f'{server.url}/?service=info&format=json', headers=headers, timeout=30)

    assert answer.status_code == info.status_code == 200
    assert answer.headers['Access-Control-Allow-Origin'] == '*'
    assert answer.json()['services']['sh']['tasks'] == 3


@pytest.mark.parametrize('since', ['', 'x', '-1', 'nan', 'inf', '1e9', '1' * 40])
def test_a_bad_since_is_refused(server, since):
    code, answer = history(server, since=since)

    assert code == 400 and 'since' in answer


def test_since_counts_only_tasks_that_ended_within_it(tmp_path):
    store = Store(str(tmp_path))
    finish_task(store, ended_record(store)['id'], TaskStatus.COMPLETE)
    three_days_ago = time.time() - 3 * 86400
    old = {'id': '1000000000-00000-000000', 'service': 'sh', 'status': 'failed', 'etime': three_days_ago,
           'stime': three_days_ago - 5}
    with store.lock():
        ledger.append_line(store, json.dumps(old).encode() + b'\n')

    assert ledger.history_report(store)['services']['sh']['tasks'] == 2
    assert ledger.history_report(store, '1')['services']['sh'] == dict(
        ledger.history_report(store, '1')['services']['sh'], tasks=1, failures=0)
    assert ledger.history_report(store, '4')['services']['sh']['failures'] == 1
    assert ledger.history_report(store, '0')['services'] == {}


def test_history_survives_rm_and_clean(server):
    for task in server.tasks:  # rm and clean take a task once its runner is gone too
        tidied(server.store, task['id'])
    before = history(server)[1]
    first = server.tasks[0]['id']
    removed = server.session.get(f'{server.url}/', params={'service': 'remove', 'id': first, 'format': 'json'},
                                 timeout=30)
    cleaned = server.session.get(f'{server.url}/', params={'service': 'clean', 'olderThan': '0', 'format': 'json'},
                                 timeout=30)

    assert removed.status_code == 200 and cleaned.status_code == 200, (removed.text, cleaned.text)
    assert int(cleaned.json()['count']) == len(server.tasks) - 1
    assert Store(str(server.store)).task_ids() == []
    assert history(server)[1] == before


###############################################################################
# The command line
###############################################################################

def test_cli_history_text_json_and_since(cli, workdir):
    (workdir / 'services').mkdir()
    (workdir / 'services' / 'sh.conf').write_text(SH_INPUTS_SERVICE)
    (workdir / 'ok.sh').write_text(OK_SCRIPT)
    assert cli('--sync', 'sh', 'ok.sh').code == 0

    text = cli('history')
    as_json = cli('history', '--since=1', '--format=json')
    apart = cli('history', '--since', '1')

    assert text.code == 0 and 'service: sh\n' in text.out and 'tasks: 1\n' in text.out, text
    assert as_json.code == 0 and json.loads(as_json.out)['services']['sh']['successes'] == 1
    assert apart.code == 0 and apart.out == text.out


@pytest.mark.parametrize('args', [['--since=x'], ['--since'], ['--older-than=1'], ['extra']])
def test_cli_history_refuses_bad_arguments(cli, workdir, args):
    result = cli('history', *args)

    assert result.code == 2 and result.err.startswith('rrcloud: error: '), result


def test_cli_history_after_rm(cli, workdir):
    (workdir / 'services').mkdir()
    (workdir / 'services' / 'sh.conf').write_text(SH_INPUTS_SERVICE)
    (workdir / 'bad.sh').write_text(FAILING_SCRIPT)
    result = cli('--sync', 'sh', 'bad.sh')
    task_id = Store(str(workdir)).task_ids()[0]

    assert result.code != 0
    # its runner may still be tidying up (slot, notifier) for a moment
    wait_for(lambda: cli('rm', task_id).code == 0, 'the ended task removed')
    report = json.loads(cli('history', '--format=json').out)
    assert report['services']['sh'] == dict(report['services']['sh'], tasks=1, failures=1)


###############################################################################
# The file
###############################################################################

def ended_record(store, service='sh', **fields):
    """A record created running, as a remote task's local record starts."""
    return store.create_task(lambda _: dict({'service': service, 'status': 'busy', 'stime': f'{time.time():.5f}',
                                             'node': store.node.name}, **fields))


def test_a_task_ends_once_in_the_history_however_many_try(tmp_path):
    store = Store(str(tmp_path))
    record = ended_record(store)

    first = finish_task(store, record['id'], TaskStatus.COMPLETE)
    second = finish_task(store, record['id'], TaskStatus.FAILED, error='interrupted')  # a lost race

    assert first is not None and second is None
    entries = ledger.read_entries(store)
    assert [(e['id'], e['status']) for e in entries] == [(record['id'], 'complete')]


def test_a_task_expired_by_max_data_retention_stays_in_the_history(tmp_path):
    store = Store(str(tmp_path))
    task_id = ended_record(store)['id']
    finish_task(store, task_id, TaskStatus.FAILED, error='timeout')

    kept = expire_tasks(store, [store.read_task(task_id)], max_hours=1, now=time.time() + 7200)

    assert kept == [] and store.task_ids() == []
    assert ledger.history_report(store)['services']['sh'] == dict(
        ledger.history_report(store)['services']['sh'], tasks=1, failures=1)


def test_a_torn_last_line_is_skipped_and_the_next_starts_on_its_own(tmp_path):
    store = Store(str(tmp_path))
    finish_task(store, ended_record(store)['id'], TaskStatus.COMPLETE)
    with open(tmp_path / 'tasks' / 'history', 'ab') as handle:
        handle.write(b'{"id": "1700000000-00000-000000", "service": "sh", "sta')  # a writer died here
    assert len(ledger.read_entries(store)) == 1

    finish_task(store, ended_record(store)['id'], TaskStatus.FAILED, error='killed')

    entries = ledger.read_entries(store)
    assert [e['status'] for e in entries] == ['complete', 'failed']
    assert history_lines(tmp_path)[1].endswith(b'"sta')


def test_a_print_names_its_printer_and_the_filament_it_used(tmp_path):
    """A completed print used its G-code's filament; a cancelled one the share
    of the file it got through (its last progress event), one that sent
    nothing none."""
    store = Store(str(tmp_path))
    gcode = dict(gcodeFilamentMm='1234.5', gcodeFilamentGrams='3.7', gcodeSlicer='Slic3r 1.3.0')
    complete = ended_record(store, 'printrun', nativeArgs='--baud=250000 /dev/ttyUSB0', **gcode)
    cancelled = ended_record(store, 'printrun', nativeArgs='--baud=250000 /dev/ttyUSB0', **gcode)
    never_sent = ended_record(store, 'printrun', nativeArgs='/dev/ttyUSB0', **gcode)
    append_event(store, cancelled['id'], PROGRESS, {'done': 100, 'total': 400})
    finish_task(store, complete['id'], TaskStatus.COMPLETE)
    finish_task(store, cancelled['id'], TaskStatus.FAILED, error='cancelled after line 100')
    finish_task(store, never_sent['id'], TaskStatus.FAILED, error='killed')

    report = ledger.history_report(store)

    printer = report['printers']['/dev/ttyUSB0']
    assert printer['filament'] == {'filamentMm': 1234.5 * 1.25, 'filamentGrams': 3.7 * 1.25}
    assert (printer['cancelled'], printer['failed']) == (2, 0)
    assert printer['reasons'] == {'cancelled after line N': 1, 'killed': 1}


def test_a_printers_reasons_are_the_most_frequent_ones_their_numbers_made_n(tmp_path):
    store = Store(str(tmp_path))
    errors = [f'cancelled after line {n}' for n in range(5)] + [f'reason {chr(97 + n)}' for n in range(12)]
    for error in errors:
        finish_task(store, ended_record(store, 'printrun', nativeArgs='/dev/ttyUSB0')['id'], TaskStatus.FAILED,
                    error=error)

    reasons = ledger.history_report(store)['printers']['/dev/ttyUSB0']['reasons']

    assert len(reasons) == ledger.MAX_REASONS + 1 and reasons['cancelled after line N'] == 5
    assert reasons['other reasons'] == 3 and sum(reasons.values()) == len(errors)


def test_the_file_rotates_at_its_cap_and_both_halves_are_read(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger, 'MAX_HISTORY_BYTES', 2000)
    store = Store(str(tmp_path))
    ids = [ended_record(store)["id"] for _ in range(60)]
    for task_id in ids:
        finish_task(store, task_id, TaskStatus.COMPLETE)

    current, rotated = tmp_path / 'tasks' / 'history', tmp_path / 'tasks' / 'history.1'
    assert current.stat().st_size <= 2000 and rotated.stat().st_size <= 2000
    kept = [entry['id'] for entry in ledger.read_entries(store)]
    assert kept == ids[-len(kept):] and 10 < len(kept) < 60  # the newest, in order


WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
from rrc.ledger import append_line
from rrc.store import Store
store, me = Store(sys.argv[2]), sys.argv[3]
for n in range(int(sys.argv[4])):
    # no store lock: the worst case, a writer on another node of a shared store
    append_line(store, ('{"service": "w%s", "id": "%d", "node": "%s"}\\n' % (me, n, me * 3900)).encode())
"""


def test_concurrent_writers_never_tear_a_line(tmp_path):
    store = Store(str(tmp_path))
    store.ensure()
    writers = [subprocess.Popen([sys.executable, '-c', WRITER, str(REPO), str(tmp_path), str(me), '150'])
               for me in range(6)]
    assert [writer.wait(timeout=120) for writer in writers] == [0] * 6

    lines = history_lines(tmp_path)
    entries = ledger.read_entries(store)
    # (a writer that saw another's line half-written ends with an empty line: skipped, harmless)
    assert lines[-1] == b'' and len([line for line in lines if line]) == len(entries) == 6 * 150
    for me in range(6):
        mine = [int(e['id']) for e in entries if e['service'] == f'w{me}']
        assert mine == list(range(150))


def test_cli_asks_a_servers_history_with_s(cli, workdir, embedded_server):
    server = embedded_server(services={'sh': SH_INPUTS_SERVICE})
    wait_done(server, submit(server, 'sh', OK_SCRIPT, 'ok.sh'))

    as_json = cli('history', f'--s={server.address}', '--format=json')
    text = cli('history', '--since=1', f'--s={server.address}')
    refused = cli('history', '--since=-2', f'--s={server.address}')

    assert as_json.code == 0, as_json
    assert json.loads(as_json.out)['services']['sh'] == dict(json.loads(as_json.out)['services']['sh'],
                                                             tasks=1, successes=1, bytesOut=7)
    assert text.code == 0 and 'service: sh\n' in text.out and 'bytesOut: 7\n' in text.out, text
    assert refused.code == 2 and not (workdir / 'tasks' / 'history').exists()


def test_a_foreign_servers_names_reach_the_terminal_safe():
    from rrc.cli.history import safe_report
    report = safe_report({'since': 0, 'services': {'a\x1b[2Jb': {'tasks': 1, 'x y': 2, 'note': 'p\nq'}},
                          'printers': {'/dev/x': {'filament': {'filamentMm': 3, 'prints': 9, 'filamentGrams': True},
                                                  'reasons': {'r\x07': 1}, 'printer': 'other'},
                                       ' mk3': {}}})

    assert report['services'] == {'a?[2Jb': {'tasks': 1, 'note': 'p?q'}}
    assert report['printers']['/dev/x'] == {'filament': {'filamentMm': 3}, 'reasons': {'r?': 1}, 'printer': 'other'}
    blocks = [format_record(block) for block in ledger.report_blocks(report)]  # what the terminal shows
    assert blocks == ['note: p?q\nservice: a?[2Jb\ntasks: 1\n', 'filamentMm: 3\nprinter: /dev/x\nreasons: 1 r?\n',
                      'printer: mk3\n']


@pytest.mark.skipif(os.geteuid() != 0, reason='only root hands a file to another user')
def test_root_hands_the_history_file_to_the_stores_owner(tmp_path):
    store = Store(str(tmp_path))
    store.ensure()
    os.chown(store.tasks, 33, 33)  # www-data's store, as a deployment's
    finish_task(store, ended_record(store)['id'], TaskStatus.COMPLETE)

    stat = os.stat(tmp_path / 'tasks' / 'history')
    assert (stat.st_uid, stat.st_gid) == (33, 33)


def test_lines_of_another_shape_are_skipped(tmp_path):
    store = Store(str(tmp_path))
    finish_task(store, ended_record(store)['id'], TaskStatus.COMPLETE)
    with open(tmp_path / 'tasks' / 'history', 'ab') as handle:
        handle.write(b'[1, 2]\nnot json\n{"service": 3}\n{"service": "a\\nb"}\n' + b'[' * 100_000 + b'\n\n'
                     b'{"service": "sh", "etime": "soon", "sizeIn": "many", "printer": "p", "status": "failed",'
                     b' "error": 7, "filament": {"prints": 1, "filamentMm": "x", "filamentGrams": 2}}\n')

    report = ledger.history_report(store)
    recent = ledger.history_report(store, '1')
    blocks = ledger.report_blocks(report)

    assert report['services']['sh'] == dict(report['services']['sh'], tasks=2, bytesIn=0)
    assert report['printers']['p'] == dict(report['printers']['p'], prints=1, filament={'filamentGrams': 2},
                                           reasons={'failed': 1})
    assert recent['services']['sh']['tasks'] == 1
    assert [format_record(block) for block in blocks][-1].startswith('cancelled: 0\ncompleted: 0\nfailed: 1\n')
