"""Named printers (rrc/printers.py, rrc/printerlist.py): ``printers/NAME.conf``
read and checked, a print that names its printer, one print per printer at a
time in the local queue, ``rrcloud printers`` and ``service=printers``.

No mocks: prints go to tests/printer_sim.PrinterSim behind a pty, through
the command line (in-process and as a process) and the WSGI app in-process
with real runners.
"""
import shutil

import pytest

import deploy
from conftest import DATA, make_service, task_id_of, write_config
from helpers import PTY_PRINTRUN_CONF, read_record, submit, wait_done, wait_for, wait_until_done, write_printer
from printer_sim import PrinterSim
from rrc.errors import ConfigError, UsageError
from rrc.printers import DEFAULT_GCODE, handoff_lines, load_printer, parse_printer, printer_from_handoff
from rrc.printing import gcode_lines
from rrc.store import Store

SMALL = DATA / 'small.gcode'
EXPECTED = gcode_lines(SMALL)
MISSING_PORT = '/dev/pts/rrcloud-no-such-port'


def printed(sim):
    """The code lines the printer took, in order, without the line numbers and checksums."""
    return [text for _, text in sim.received_numbered if not text.startswith('M110')]


def store_files(root):
    """Files under ROOT/tasks but the lock and the slots."""
    tasks = root / 'tasks'
    return {str(path.relative_to(tasks)) for path in tasks.rglob('*')
            if path.is_file() and path.relative_to(tasks).parts[0] != 'slots' and path.name != '.lock'} \
        if tasks.exists() else set()


@pytest.fixture
def printer_store(workdir):
    """A store whose printrun prints on ptys, and a copy of small.gcode."""
    make_service(workdir, 'printrun', PTY_PRINTRUN_CONF)
    shutil.copy(SMALL, workdir / 'small.gcode')
    return workdir


###############################################################################
# The conf
###############################################################################

def test_conf_gives_port_baud_and_gcode_with_marlin_defaults(tmp_path):
    write_printer(tmp_path, 'mk3', 'port = /dev/ttyACM0\nbaud = 250000\n'
                                   'pause = G91\npause = G1 E-5 Z5 F1200  # retract more\nend = M84\n')
    printer = load_printer(str(tmp_path), 'mk3')

    assert (printer.name, printer.port, printer.baud) == ('mk3', '/dev/ttyACM0', 250000)
    assert printer.pause_gcode == ['G91', 'G1 E-5 Z5 F1200']
    assert printer.resume_gcode == list(DEFAULT_GCODE['resume'])
    assert printer.cancel_gcode == ['M104 S0', 'M140 S0', 'M107', 'M84']
    assert (printer.start_gcode, printer.end_gcode) == ([], ['M84'])


@pytest.mark.parametrize('text, line, words', [
    ('port = /dev/ttyACM0\ncancel = rm -rf /\n', 2, 'cancel: not a G-code command'),
    ('baud = 115200\nport = /etc/passwd\n', 2, 'port: not a serial device path'),
    ('port = /dev/../etc/passwd\n', 1, 'port: not a serial device path'),
    ('port = /dev/ttyACM0\nbaud = fast\n', 2, 'baud: not a serial speed'),
    ('port = /dev/ttyACM0\ncolour = red\n', 2, "unknown key 'colour'"),
    ('port = /dev/ttyACM0\nstart = G28\ncancel = M112\n', 3, 'cancel: M112 is not allowed in a printer conf'),
    ('port = /dev/ttyACM0\nend = m0110 N0\n', 2, 'end: M110 is not allowed'),
    ('port = /dev/ttyACM0\npause = M118 ok\n', 2, 'pause: M118 is not allowed'),
    ('port = /dev/ttyACM0\npause = M28 part.gco\n', 2, 'pause: M28 is not allowed'),
    ('port = /dev/ttyACM0\nresume = G1 X\u0661\n', 2, 'resume: not a G-code command'),
    # control characters that str.split takes for spaces, hiding a refused command
    ('port = /dev/ttyACM0\ncancel = G1 X1\x1fM112\n', 2, 'cancel: not a G-code command'),
    ('port = /dev/ttyACM0\ncancel = G1 X1\tM112\n', 2, 'cancel: not a G-code command'),
    # an SD-card print started or aborted behind the sender's back
    ('port = /dev/ttyACM0\nstart = M23 part.gco\n', 2, 'start: M23 is not allowed'),
    ('port = /dev/ttyACM0\nstart = M24\n', 2, 'start: M24 is not allowed'),
    ('port = /dev/ttyACM0\nend = M32 P !part.gco#\n', 2, 'end: M32 is not allowed'),
    ('port = /dev/ttyACM0\ncancel = M524\n', 2, 'cancel: M524 is not allowed'),
    ('port = /dev/ttyACM0\nresume = M1000\n', 2, 'resume: M1000 is not allowed'),
])
def test_bad_conf_is_an_error_naming_the_file_and_line(tmp_path, text, line, words):
    write_printer(tmp_path, 'mk3', text)
    with pytest.raises(ConfigError) as raised:
        load_printer(str(tmp_path), 'mk3')
    assert str(raised.value).startswith(f'printers/mk3.conf:{line}: {words}'), raised.value


def test_the_shipped_example_is_a_good_conf():
    from conftest import REPO
    printer = parse_printer('mk3', (REPO / 'printers' / 'mk3.conf.example').read_text(), 'mk3.conf.example')
    assert (printer.port, printer.baud) == ('/dev/ttyACM0', 115200)
    assert printer.pause_gcode[0] == 'M400' and printer.end_gcode == ['M84']


def test_conf_without_a_port_is_refused():
    with pytest.raises(ConfigError, match=r'\Aprinters/x.conf: no port'):
        parse_printer('x', 'baud = 115200\n', 'printers/x.conf')


def test_a_printers_gcode_handed_to_its_sender_comes_back_the_same_and_checked(tmp_path):
    write_printer(tmp_path, 'mk3', 'port = /dev/ttyACM0\nstart = G28\nstart = G29\ncancel = M84\n')
    printer = load_printer(str(tmp_path), 'mk3')
    lines = handoff_lines(printer)
    back = printer_from_handoff(lines[:-1])

    assert lines[0] == 'printer mk3' and lines[-1] == 'ready'
    assert back.name == 'mk3' and (back.start_gcode, back.cancel_gcode, back.end_gcode) == (['G28', 'G29'], ['M84'], [])
    assert back.pause_gcode == list(DEFAULT_GCODE['pause']) and back.resume_gcode == list(DEFAULT_GCODE['resume'])
    assert handoff_lines(None) == ['ready'] and printer_from_handoff([]) is None  # a raw port: Marlin's
    with pytest.raises(ConfigError, match='a bad line in the printer G-code'):
        printer_from_handoff(['printer mk3', 'gcode cancel rm -rf /'])
    with pytest.raises(ConfigError, match='a bad line in the printer G-code'):
        printer_from_handoff(['printer mk3', 'gcode cancel G1 X1\x1fM112'])
    with pytest.raises(ConfigError, match='a bad line in the printer G-code'):  # a conf splits its lines there
        printer_from_handoff(['printer mk3', 'gcode start G1 X1\x1cM24'])


@pytest.mark.parametrize('name', ['../etc/passwd', 'MK3', 'mk3.conf', '', '-x', 'a' * 33, 'mk 3'])
def test_a_name_that_is_not_a_printer_name_is_never_a_path(tmp_path, name):
    with pytest.raises(UsageError, match='bad printer name'):
        load_printer(str(tmp_path), name)


###############################################################################
# A print by name
###############################################################################

@pytest.mark.parametrize('how', ['printrun.cloud', 'rrcloud --sync'])
def test_print_by_name_prints_on_its_port_and_the_record_names_it(cli, printer_store, how):
    with PrinterSim() as sim:
        write_printer(printer_store, 'mk3', f'port = {sim.port}\n')
        if how == 'printrun.cloud':
            result = cli('mk3', 'small.gcode', prog='printrun.cloud')
        else:
            result = cli('--sync', 'printrun', 'mk3', 'small.gcode')
        (task_id,) = Store(str(printer_store)).task_ids()
        record = wait_until_done(printer_store, task_id)

    assert result.code == 0, result
    assert record['status'] == 'complete', record
    assert record['printer'] == 'mk3'
    assert record['cmd'].startswith(f'rrcloud print {sim.port} tasks/in/'), record['cmd']
    assert printed(sim) == EXPECTED


def test_unknown_printer_is_one_error_line_and_nothing_is_queued(cli, printer_store):
    write_printer(printer_store, 'mk3', f'port = {MISSING_PORT}\n')
    result = cli('printrun', 'mk4', 'small.gcode')

    assert result.code == 2, result
    assert result.err == "rrcloud: error: unknown printer 'mk4' (configured: mk3)\n"
    assert store_files(printer_store) == set()


def test_bad_conf_refuses_the_print_and_nothing_reaches_the_printer(cli, printer_store):
    with PrinterSim() as sim:
        write_printer(printer_store, 'mk3', f'port = {sim.port}\npause = G91\npause = pause please\n')
        result = cli('printrun', 'mk3', 'small.gcode')

    assert result.code != 0, result
    assert result.err == "rrcloud: error: printers/mk3.conf:3: pause: not a G-code command: 'pause please'\n"
    assert store_files(printer_store) == set()
    assert sim.opens == 0 and sim.received == []


def test_a_printer_whose_port_the_service_does_not_allow_is_refused(cli, printer_store):
    write_printer(printer_store, 'mk3', 'port = /dev/ttyUSB0\n')  # the pty service allows /dev/pts/ only
    result = cli('printrun', 'mk3', 'small.gcode')

    assert result.code != 0, result
    assert 'printer' in result.err and '/dev/ttyUSB0 is not allowed' in result.err, result
    assert store_files(printer_store) == set()


def test_a_raw_port_still_prints(cli, printer_store):
    with PrinterSim() as sim:
        result = cli('printrun', sim.port, 'small.gcode')
        record = wait_until_done(printer_store, task_id_of(result.out))

    assert record['status'] == 'complete', record
    assert 'printer' not in record
    assert printed(sim) == EXPECTED


###############################################################################
# One print per printer at a time
###############################################################################

def test_two_prints_on_one_printer_run_one_after_the_other(cli, printer_store):
    write_config(printer_store, 'maxTasks = 4\nsandbox = no\n')  # slots enough: only the printer makes it wait
    with PrinterSim(delay=0.002) as sim:
        write_printer(printer_store, 'mk3', f'port = {sim.port}\n')
        first = task_id_of(cli('printrun', 'mk3', 'small.gcode').out)
        second = task_id_of(cli('printrun', sim.port, 'small.gcode').out)  # the same printer, by its port
        queued_while_first_prints = read_record(printer_store, second)
        records = [wait_until_done(printer_store, task_id) for task_id in (first, second)]

    assert [r['status'] for r in records] == ['complete', 'complete'], records
    assert float(records[1]['stime']) >= float(records[0]['etime']), records
    assert 'stime' not in queued_while_first_prints, queued_while_first_prints
    assert sim.opens == 2
    assert printed(sim) == EXPECTED + EXPECTED


###############################################################################
# rrcloud printers and service=printers
###############################################################################

def printers_of(cli):
    result = cli('--format=json', 'printers')
    assert result.code == 0, result
    import json
    return {p['name']: p for p in json.loads(result.out)}


def test_rrcloud_printers_shows_idle_printing_and_offline(cli, printer_store):
    with PrinterSim(delay=0.01, temp_interval=0.5) as sim:  # M155-like reports: temperatures to show
        write_printer(printer_store, 'mk3', f'port = {sim.port}\n')
        write_printer(printer_store, 'gone', f'port = {MISSING_PORT}\n')
        before = printers_of(cli)
        task_id = task_id_of(cli('printrun', 'mk3', 'small.gcode').out)
        during = wait_for(lambda: (lambda p: p['mk3']['state'] == 'printing' and p['mk3']['hotend'] and p)(
            printers_of(cli)), 'mk3 to show printing with its temperatures')
        text = cli('printers')
        wait_until_done(printer_store, task_id)
        after = printers_of(cli)

    assert before['mk3']['state'] == 'idle' and before['mk3']['port'] == sim.port
    assert before['gone']['state'] == 'offline' and before['gone']['port'] == MISSING_PORT
    assert during['mk3']['task'] == task_id
    assert f'name: mk3\nport: {sim.port}\nstate: printing\ntask: {task_id}\n' in text.out, text
    assert float(during['mk3']['hotend']) > 0 and during['mk3']['hotendTarget'] == '200', during
    assert after['mk3']['state'] == 'idle' and after['mk3']['task'] == ''


def test_a_printer_whose_last_print_was_cancelled_is_idle_and_one_that_failed_shows_why(tmp_path):
    from rrc.printerlist import list_printers
    from rrc.states import finish_task
    store = Store(str(tmp_path))
    with PrinterSim() as sim:
        write_printer(tmp_path, 'mk3', f'port = {sim.port}\n')
        for error in ('the printer stopped answering', 'cancelled after line 7'):
            record = store.create_task(lambda _: {'service': 'printrun', 'status': 'busy', 'printer': 'mk3',
                                                  'stime': '1', 'nativeArgs': sim.port})
            finish_task(store, record['id'], 'failed', error=error)
        cancelled_last = {p['name']: p for p in list_printers(store)}
        record = store.create_task(lambda _: {'service': 'printrun', 'status': 'busy', 'nativeArgs': sim.port})
        finish_task(store, record['id'], 'failed', error='Error:Printer halted. kill() called!')
        failed_last = {p['name']: p for p in list_printers(store)}

    assert cancelled_last['mk3']['state'] == 'idle' and cancelled_last['mk3']['error'] == ''
    assert failed_last['mk3']['state'] == 'error' and failed_last['mk3']['task'] == record['id']
    assert failed_last['mk3']['error'] == 'Error:Printer halted. kill() called!'


def test_a_printer_by_a_link_to_its_port_is_the_same_printer(tmp_path):
    from rrc.printers import print_targets
    with PrinterSim() as sim:
        link = tmp_path / 'by-id-usb-Prusa_MK3'
        link.symlink_to(sim.port)
        by_link = print_targets({'service': 'printrun', 'nativeArgs': f'--baud=115200 {link}'})
        by_port = print_targets({'service': 'printrun', 'nativeArgs': sim.port, 'printer': 'mk3'})

    assert by_link & by_port == {sim.port}
    assert print_targets({'service': 'sh', 'nativeArgs': sim.port}) == set()
    assert print_targets({'service': 'printrun', 'nativeArgs': '["--baud", 3]'}) == set()


def test_service_printers_answers_text_and_json(tmp_path):
    deployment = deploy.deployment('wsgi', services={'printrun': PTY_PRINTRUN_CONF})
    with deploy.running(deployment), PrinterSim(delay=0.01) as sim:
        write_printer(deployment.store, 'mk3', f'port = {sim.port}\n')
        write_printer(deployment.store, 'gone', f'port = {MISSING_PORT}\n')
        write_printer(deployment.store, 'broken', 'port = COM3\n')
        url = f'{deployment.url}/'
        idle = deployment.session.get(url, params={'service': 'printers', 'format': 'json'}, timeout=30)
        task_id = submit(deployment, 'printrun', SMALL.read_bytes(), 'small.gcode', nativeArgs='mk3')
        printing = wait_for(lambda: (lambda p: p['mk3']['state'] == 'printing' and p)(
            {p['name']: p for p in deployment.session.get(
                url, params={'service': 'printers', 'format': 'json'}, timeout=30).json()}), 'mk3 printing')
        text = deployment.session.get(url, params={'service': 'printers'}, timeout=30)
        record = wait_done(deployment, task_id)

    assert idle.status_code == 200 and idle.headers['Access-Control-Allow-Origin'] == '*'
    states = {p['name']: p['state'] for p in idle.json()}
    assert states == {'broken': 'error', 'gone': 'offline', 'mk3': 'idle'}
    assert printing['mk3']['task'] == task_id
    assert text.status_code == 200 and 'name: broken\n' in text.text
    assert "error: printers/broken.conf:1: port: not a serial device path: 'COM3'" in text.text
    assert record['status'] == 'complete' and record['printer'] == 'mk3', record
    assert printed(sim) == EXPECTED


def test_service_printers_unknown_printer_is_a_400_and_nothing_stays(tmp_path):
    deployment = deploy.deployment('wsgi', services={'printrun': PTY_PRINTRUN_CONF})
    with deploy.running(deployment):
        answer = deployment.session.post(f'{deployment.url}/', data={'service': 'printrun', 'nativeArgs': 'mk9'},
                                         files={'fileIn0': ('small.gcode', SMALL.read_bytes())}, timeout=30)
        left = store_files(deployment.store)

    assert answer.status_code == 400, answer.text
    assert "unknown printer 'mk9'" in answer.text
    assert not any(name.startswith(('in/', 'info/', 'queue/')) for name in left), left


def test_a_client_names_the_printer_and_its_server_prints_on_it(cli, workdir, embedded_server):
    """``rrcloud --s=SERVER printrun mk3``: the name goes to the server, which
    looks it up in its own printers/ (the client has none); ``--s`` printers too."""
    shutil.copy(SMALL, workdir / 'small.gcode')
    server = embedded_server(services={'printrun': PTY_PRINTRUN_CONF})
    with PrinterSim() as sim:
        write_printer(server.root, 'mk3', f'port = {sim.port}\n')
        result = cli('--sync', f'--s={server.address}', 'printrun', 'mk3', 'small.gcode')
        listed = cli(f'--s={server.address}', 'printers')

    assert result.code == 0, result
    assert printed(sim) == EXPECTED
    assert listed.code == 0 and f'name: mk3\nport: {sim.port}\nstate: idle\n' in listed.out, listed


###############################################################################
# A pipe's print step by name (rrcloud pipe ... -- printrun mk3)
###############################################################################

# A step that writes small.gcode as its output: the G-code a slicer would hand on.
GCODE_STEP_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\noutput = $fileOut\nfileOut = $id.gcode\n'
GCODE_SCRIPT = f"cat > \"$1\" <<'END'\n{SMALL.read_text()}END\n"


@pytest.fixture
def gcode_pipe(printer_store):
    """A store with a `gcode` service whose step writes small.gcode, and its script."""
    make_service(printer_store, 'gcode', GCODE_STEP_SERVICE)
    (printer_store / 'gcode.sh').write_text(GCODE_SCRIPT)
    return printer_store


def test_a_pipe_step_prints_on_a_printer_by_name_and_waits_for_it_like_a_print(cli, gcode_pipe):
    write_config(gcode_pipe, 'maxTasks = 4\n')  # slots enough: only the printer makes the step wait
    with PrinterSim(hold_at_line=100) as sim:
        write_printer(gcode_pipe, 'mk3', f'port = {sim.port}\n')
        first = task_id_of(cli('printrun', 'mk3', 'small.gcode').out)
        assert sim.holding.wait(30)
        piped = cli('pipe', 'gcode', 'gcode.sh', '--', 'printrun', 'mk3')
        store = Store(str(gcode_pipe))
        job = store.read_task(task_id_of(piped.out))
        make, print_step = job['steps'].split(',')
        wait_until_done(gcode_pipe, make)
        waiting_for_the_printer = wait_for(
            lambda: (lambda r: r.get('queued') == 'yes' and r)(read_record(gcode_pipe, print_step)),
            'the print step queued behind the print on mk3')
        sim.release()
        records = [wait_until_done(gcode_pipe, task_id) for task_id in (first, print_step, job['id'])]

    assert piped.code == 0, piped
    assert [r['status'] for r in records] == ['complete'] * 3, records
    assert records[1]['printer'] == 'mk3' and records[1]['nativeArgs'] == sim.port, records[1]
    assert 'stime' not in waiting_for_the_printer, waiting_for_the_printer
    assert float(records[1]['stime']) >= float(records[0]['etime']), records
    assert printed(sim) == EXPECTED + EXPECTED


def test_a_pipe_naming_an_unknown_printer_is_refused_before_anything_is_submitted(cli, gcode_pipe):
    write_printer(gcode_pipe, 'mk3', f'port = {MISSING_PORT}\n')
    result = cli('pipe', 'gcode', 'gcode.sh', '--', 'printrun', 'mk4')

    assert result.code == 2, result
    assert result.err == "rrcloud: error: step 2 (printrun): unknown printer 'mk4' (configured: mk3)\n"
    assert result.out == ''
    assert store_files(gcode_pipe) == set()


def test_a_pipe_naming_a_printer_with_a_bad_conf_is_refused(cli, gcode_pipe):
    write_printer(gcode_pipe, 'mk3', 'port = /dev/ttyUSB0\n')  # the pty service allows /dev/pts/ only
    result = cli('pipe', 'gcode', 'gcode.sh', '--', 'printrun', 'mk3')

    assert result.code != 0, result
    assert result.err.startswith('rrcloud: error: step 2 (printrun): printer '), result
    assert '/dev/ttyUSB0 is not allowed' in result.err, result
    assert store_files(gcode_pipe) == set()


def test_a_printer_name_is_not_sent_on_to_another_servers_step(cli, gcode_pipe):
    """This node's printers/ says nothing of another server's printers: said, never resolved here."""
    write_printer(gcode_pipe, 'mk3', f'port = {MISSING_PORT}\n')
    result = cli('pipe', 'gcode', 'gcode.sh', '--', 'printrun', 'mk3', '--s=127.0.0.1:9')

    assert result.code == 2, result
    assert result.err.startswith("rrcloud: error: step 2 (printrun): a printer's name (mk3) is looked up by the "
                                 "server that holds the job"), result
    assert store_files(gcode_pipe) == set()


def test_a_pipe_over_http_prints_on_a_printer_by_name(tmp_path):
    deployment = deploy.deployment('wsgi', services={'printrun': PTY_PRINTRUN_CONF, 'gcode': GCODE_STEP_SERVICE})
    script = GCODE_SCRIPT.encode()
    with deploy.running(deployment), PrinterSim() as sim:
        write_printer(deployment.store, 'mk3', f'port = {sim.port}\n')
        url = f'{deployment.url}/'
        refused = deployment.session.post(url, data={'service': 'pipe', 'step1': 'gcode', 'step2': 'printrun',
                                                     'step2.nativeArgs': 'mk9'},
                                          files={'step1.fileIn0': ('gcode.sh', script)}, timeout=30)
        left = store_files(deployment.store)
        answer = deployment.session.post(url, data={'service': 'pipe', 'step1': 'gcode', 'step2': 'printrun',
                                                    'step2.nativeArgs': 'mk3', 'format': 'json'},
                                         files={'step1.fileIn0': ('gcode.sh', script)}, timeout=30)
        job = wait_done(deployment, answer.json()['id'])
        step = Store(str(deployment.store)).read_task(job['steps'].split(',')[1])

    assert refused.status_code == 400 and "step 2 (printrun): unknown printer 'mk9'" in refused.text, refused.text
    assert not any(name.startswith(('in/', 'info/', 'queue/', 'waiting/')) for name in left), left
    assert job['status'] == 'complete', job
    assert step['printer'] == 'mk3' and step['status'] == 'complete', step
    assert printed(sim) == EXPECTED


def test_a_pipe_sent_to_a_server_prints_on_that_servers_printer_by_name(cli, gcode_pipe, embedded_server):
    """The whole pipe goes to the server (every step runs there): the name is looked up in its printers/."""
    server = embedded_server(services={'printrun': PTY_PRINTRUN_CONF, 'gcode': GCODE_STEP_SERVICE})
    with PrinterSim() as sim:
        write_printer(server.root, 'mk3', f'port = {sim.port}\n')
        result = cli('--sync', f'--s={server.address}', 'pipe', 'gcode', 'gcode.sh', '--', 'printrun', 'mk3')
        unknown = cli(f'--s={server.address}', 'pipe', 'gcode', 'gcode.sh', '--', 'printrun', 'mk4')
    server_store = Store(str(server.root))
    (job,) = [r for r in map(server_store.read_task, server_store.task_ids()) if r['service'] == 'pipe']
    step = server_store.read_task(job['steps'].split(',')[1])

    assert result.code == 0, result
    assert job['status'] == 'complete' and step['printer'] == 'mk3', (job, step)
    assert printed(sim) == EXPECTED
    assert unknown.code == 2, unknown
    assert "refused the pipe: step 2 (printrun): unknown printer 'mk4' (configured: mk3)" in unknown.err, unknown
