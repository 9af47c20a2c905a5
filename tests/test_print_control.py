"""Pause, resume, cancel and emergency stop of a print (issue 21, item 3);
a named printer's own G-code at each moment, and a print that is killed or
paused too long cancelled by its sender (issue 21, the sender's leftovers).

The sender runs against tests/printer_sim.PrinterSim behind a real pty: in
process (a thread) with a real control pipe, and as a task of the printrun
service, controlled through the command line and the record (its runner
hands the request to the sender).  No timed assertions: the simulator holds
a line (``hold_at_line``) until the test has asked for what it tests.
"""
import os
import threading

import pytest

from rrc.control import pause_task
from rrc.errors import PrinterError, UsageError
from rrc.printing import (ControlPipe, GcodeSender, MarlinGcode, PrintCancelled, SerialLink, checksummed,
                          gcode_layers, gcode_lines)
from rrc.states import get_task
from rrc.store import Store
from conftest import DATA, make_service, write_config
from helpers import PTY_PRINTRUN_CONF, after_line, file_lines, tidied, write_printer
from printer_sim import PrinterSim

SMALL = DATA / 'small.gcode'
EXPECTED = gcode_lines(SMALL)
COUNT = len(EXPECTED)
HOLD = 100
PAUSE = list(MarlinGcode.pause_gcode)
# the file's own modes (small.gcode: G90, M82) are restored after the relative prime
RESUME = list(MarlinGcode.resume_gcode) + ['G90', 'M82']
CANCEL = list(MarlinGcode.cancel_gcode)
RUNNER_GONE = 'the runner is gone (its control pipe closed): cancelling'


def numbers(sim):
    return [number for number, _ in sim.received_numbered if number is not None]


class SenderThread:
    """The sender in a thread of this process, with a real control pipe."""

    def __init__(self, sim, printer=None, lines=EXPECTED, layers='', file_span=None):
        self.read_end, self.write_end = os.pipe()
        self.link = SerialLink(sim.port, 115200)
        self.log_lines = []
        self.reports = []
        self.sender = GcodeSender(self.link, lines, answer_timeout=20, log=self.log_lines.append,
                                  control=ControlPipe(self.read_end), printer=printer,
                                  progress=lambda done, total, **state: self.reports.append((done, total, state)))
        if layers == '':  # small.gcode's own, else a layer 0 for every line
            layers = gcode_layers(SMALL, COUNT) if lines is EXPECTED else [0] * len(lines)
        self.sender.layers, self.sender.file_span = layers, file_span
        self.sender.pause_poll = 0.1
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.sender.connect()
            self.sender.run()
        except PrinterError as exc:
            self.error = exc

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(30)
        self.link.close()
        os.close(self.read_end)
        if self.write_end is not None:
            os.close(self.write_end)

    def ask(self, word):
        os.write(self.write_end, word.encode() + b'\n')

    def pause_at_the_held_line(self, sim):
        """Pause once the printer holds its line, then let it go: back when the pause G-code arrived."""
        assert sim.holding.wait(20)
        self.ask('pause')
        sim.release()
        assert sim.wait_for(lambda s: s.received[-len(PAUSE):] == PAUSE, 20), sim.received[-10:]

    def runner_dies(self):
        """The runner dies (SIGKILL, OOM): its end of the control pipe closes."""
        os.close(self.write_end)
        self.write_end = None

    def join(self):
        self.thread.join(30)
        assert not self.thread.is_alive(), 'the sender did not end'


def test_pause_stops_after_the_line_in_flight_polls_temperatures_and_resume_goes_on():
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        run.pause_at_the_held_line(sim)
        moved = len(file_lines(sim))
        # still paused after several temperature polls: no line of the file moved
        assert sim.wait_for(lambda s: s.received[-3:] == ['M105'] * 3, 20), sim.received[-10:]
        assert len(file_lines(sim)) == moved == HOLD
        assert run.sender.state == 'paused'
        run.ask('resume')
        run.join()

    assert run.error is None, run.error
    assert file_lines(sim) == EXPECTED
    assert numbers(sim) == list(range(1, COUNT + 1))
    between = after_line(sim, HOLD)
    assert between[:len(PAUSE)] == PAUSE
    assert set(between[len(PAUSE):-len(RESUME)]) == {'M105'}
    assert between[-len(RESUME):] == RESUME
    assert sim.errors == []


@pytest.mark.parametrize('head, restored', [
    ([], ['G90', 'M82']),                     # the firmware's defaults: absolute E, so not left relative
    (['G91', 'G1 Z1'], ['G91', 'M83']),       # paused in a relative section (G91 makes E relative too)
    (['G90', 'M83'], ['G90', 'M83']),         # relative extrusion, as many slicers write it
])
def test_resume_puts_back_the_files_modes_whatever_the_resume_gcode_left(head, restored):
    lines = head + ['G1 X1 E1 F600'] * 30
    with PrinterSim(hold_at_line=len(head) + 10) as sim, SenderThread(sim, lines=lines) as run:
        run.pause_at_the_held_line(sim)
        run.ask('resume')
        run.join()

    assert run.error is None, run.error
    assert after_line(sim, len(head) + 10)[-len(RESUME):] == list(MarlinGcode.resume_gcode) + restored
    assert file_lines(sim) == lines


def test_a_paused_print_whose_runner_is_gone_is_cancelled_not_left_hot():
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        run.pause_at_the_held_line(sim)
        run.runner_dies()
        run.join()

    assert isinstance(run.error, PrintCancelled), run.error
    assert after_line(sim, HOLD)[-len(CANCEL):] == CANCEL
    assert RUNNER_GONE in run.log_lines


def test_a_print_whose_runner_dies_mid_print_is_cancelled_and_nothing_follows():
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        assert sim.holding.wait(20)
        run.runner_dies()
        sim.release()
        run.join()

    assert isinstance(run.error, PrintCancelled), run.error
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert after_line(sim, HOLD) == CANCEL
    assert RUNNER_GONE in run.log_lines


def test_a_resume_that_comes_with_the_end_of_the_control_pipe_is_a_cancel():
    """The runner wrote resume and died: nobody follows the print, so it is
    not resumed but cancelled."""
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        run.pause_at_the_held_line(sim)
        run.ask('resume')
        run.runner_dies()
        run.join()

    assert isinstance(run.error, PrintCancelled), run.error
    # read together, the resume is dropped; read apart (a poll between the
    # two writes), one line may go before the end of the pipe is seen
    assert len(file_lines(sim)) <= HOLD + 1
    assert sim.received[-len(CANCEL):] == CANCEL
    assert RUNNER_GONE in run.log_lines


def test_the_end_of_the_control_pipe_read_with_a_resume_leaves_only_a_cancel():
    read_end, write_end = os.pipe()
    os.write(write_end, b'resume\npause\n')
    os.close(write_end)
    log = []
    sender = GcodeSender(None, [], control=ControlPipe(read_end), log=log.append)
    try:
        sender._take_requests()
    finally:
        os.close(read_end)

    assert list(sender.requests) == ['cancel']
    assert log == ['asked to resume', 'asked to pause', RUNNER_GONE]


def test_a_cancel_during_a_heat_up_breaks_the_wait_with_m108_and_turns_the_heaters_off():
    """Without M108 the cancel would wait for the heat-up (here a minute);
    the runner's grace would run out and the heaters would stay on."""
    with PrinterSim(command_delays={'M109': 60}) as sim, SenderThread(sim) as run:
        assert sim.wait_for(lambda s: 'M109 S200' in file_lines(s), 20), sim.received[-5:]
        run.ask('cancel')
        run.join()

    assert isinstance(run.error, PrintCancelled), run.error
    assert sim.heating_broken == 1
    assert file_lines(sim)[-1] == 'M109 S200'  # nothing of the file after the heat-up
    assert sim.received[sim.received.index('M108'):] == ['M108'] + CANCEL
    assert 'M108 sent: the M109 wait is broken off' in run.log_lines


def test_a_sender_told_to_end_during_a_heat_up_leaves_the_cancel_gcode_queued_on_firmware_without_an_emergency_parser(
        workdir):
    """Without an emergency parser M108 is answered only after the heat-up,
    so a cancel cannot end within the runner's grace; the sender that gets
    SIGTERM then writes M108 and the cancel G-code unanswered and ends: the
    printer runs them once the heat-up is done, and the heaters go off."""
    import signal
    import subprocess
    import sys
    from conftest import REPO
    with PrinterSim(emergency_parser=False, command_delays={'M109': 5}) as sim:
        sender = subprocess.Popen([sys.executable, str(REPO / 'rrcloud.py'), 'print', sim.port, str(SMALL)],
                                  cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert sim.wait_for(lambda s: 'M109 S200' in file_lines(s), 20), sim.received[-5:]
            sender.send_signal(signal.SIGTERM)
            out, err = sender.communicate(timeout=20)  # at once, not after the heat-up
            ended = sim.heating_broken == 0 and 'M109 S200' == sim.received[-1]
            assert sim.wait_for(lambda s: s.received[-len(CANCEL):] == CANCEL, 20), sim.received[-5:]
        finally:
            sender.kill()
            sender.wait()

    assert ended  # the sender ended while the printer still heated
    assert sender.returncode not in (0, None)
    assert err.startswith(f'rrcloud: error: terminated (SIGTERM) after line {EXPECTED.index("M109 S200")}: '), err
    assert 'M108 and the cancel G-code sent, not waited for' in out, out
    assert file_lines(sim)[-1] == 'M109 S200' and sim.heating_broken == 0
    assert sim.received[sim.received.index('M109 S200') + 1:] == ['M108'] + CANCEL


def test_cancel_runs_the_cancel_gcode_and_nothing_after_it():
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        assert sim.holding.wait(20)
        run.ask('cancel')
        sim.release()
        run.join()

    assert isinstance(run.error, PrintCancelled) and str(run.error) == 'cancelled'
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert sim.received[-len(CANCEL):] == CANCEL
    assert after_line(sim, HOLD) == CANCEL


def test_cancel_while_paused():
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        run.pause_at_the_held_line(sim)
        run.ask('cancel')
        run.join()

    assert str(run.error) == 'cancelled'
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert sim.received[-len(CANCEL):] == CANCEL


def test_stop_sends_m112_at_once():
    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim) as run:
        assert sim.holding.wait(20)
        run.ask('stop')
        run.join()  # while the printer still works on the held line
        sim.release()
        assert sim.wait_for(lambda s: 'M112' in s.received, 20)

    assert 'emergency stop' in str(run.error)
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert sim.received[-1] == 'M112'


def test_a_named_printer_gives_its_own_gcode():
    class Custom:
        pause_gcode = ('M601',)
        resume_gcode = ('M602',)
        cancel_gcode = ('M104 S0', 'M84')

    with PrinterSim(hold_at_line=HOLD) as sim, SenderThread(sim, printer=Custom()) as run:
        assert sim.holding.wait(20)
        run.ask('pause')
        sim.release()
        assert sim.wait_for(lambda s: 'M601' in s.received, 20)
        run.ask('resume')
        run.join()

    assert run.error is None
    assert file_lines(sim) == EXPECTED
    assert after_line(sim, HOLD)[0] == 'M601' and after_line(sim, HOLD)[-3:] == ['M602', 'G90', 'M82']


def test_printer_state_in_the_progress_reports():
    """Temperatures from the auto-reports (M155) while a line is worked on,
    bytes, layer and height from what was sent."""
    with PrinterSim(hold_at_line=HOLD, temp_interval=0.2) as sim, SenderThread(sim) as run:
        assert sim.holding.wait(20)
        assert sim.wait_for(lambda s: any('T:200.0' in str(entry) for entry in s.transcript), 20)
        sim.release()
        run.join()

    assert run.error is None
    done, total, state = run.reports[-1]
    assert (done, total) == (COUNT, COUNT)
    assert state['hotend'] == 200.0 and state['hotendTarget'] == 200.0
    assert state['bed'] == 60.0 and state['bedTarget'] == 60.0
    assert state['bytes'] == sum(len(checksummed(n, code)) for n, code in enumerate(EXPECTED, 1))
    assert state['layer'] == gcode_layers(SMALL, COUNT)[-1]
    assert state['z'] > 0 and state['paused'] == 0
    assert file_lines(sim) == EXPECTED


def test_layers_counted_from_z_moves_are_the_files_own_not_the_start_or_end_gcodes(tmp_path):
    """A file without ;LAYER comments: its layers are counted from its rising
    Z moves; the start G-code's lift and the end G-code's are no layer."""
    from rrc.printing import printed_lines

    class Lifting:
        name = 'lifting'
        start_gcode = ['G28', 'G1 Z5 F600']
        end_gcode = ['G91', 'G1 Z10 F600', 'G90']

    path = tmp_path / 'three-layers.gcode'
    path.write_text('G90\nG1 Z0.2 F600\nG1 X10 E1\nG1 Z0.4\nG1 X0 E2\nG1 Z0.6\nG1 X10 E3\n')
    lines, layers, span = printed_lines(str(path), Lifting())
    assert layers is None and span == (3, 9)
    with PrinterSim() as sim, SenderThread(sim, lines=lines, layers=layers, file_span=span) as run:
        run.join()

    assert run.error is None, run.error
    assert file_lines(sim) == lines
    assert run.reports[-1][2]['layer'] == 3 and run.reports[-1][2]['z'] == 10.6


def test_temperature_polls_go_between_lines():
    """No temperature for temp_interval: M105 between two lines, unnumbered;
    every line of the file still once and in order."""
    with PrinterSim() as sim, SenderThread(sim) as run:
        run.sender.temp_interval = 1e-9
        run.join()

    assert run.error is None
    assert file_lines(sim) == EXPECTED and numbers(sim) == list(range(1, COUNT + 1))
    assert [code for n, code in sim.received_numbered if n is None][1:] == ['M105'] * COUNT
    assert run.reports[-1][2]['hotend'] == 20.0


###############################################################################
# As a task: the command line, the record, the runner's control pipe
###############################################################################

@pytest.fixture
def pty_service(workdir):
    make_service(workdir, 'printrun', PTY_PRINTRUN_CONF)
    (workdir / 'small.gcode').write_bytes(SMALL.read_bytes())
    return workdir


def started_print(proc, workdir, sim, printer=None):
    """A print of small.gcode on the sim (by its port, or by ``printer``'s
    name), its sender running and the sim holding line HOLD."""
    result = proc('printrun', printer or sim.port, 'small.gcode')
    assert result.code == 0, result
    task_id = result.out.split('id: ', 1)[1].strip()
    assert sim.holding.wait(30)
    store = Store(str(workdir))
    assert wait_for_record(store, task_id, lambda r: r.get('sender') == 'yes')
    return store, task_id


def held_print_asked(proc, workdir, sim, verb, printer=None):
    """A print of small.gcode held at line HOLD (``started_print``), asked
    to ``verb`` through the command line, its sender told (a kill is its
    runner's cancel); the line is still held."""
    store, task_id = started_print(proc, workdir, sim, printer)
    asked = proc(verb, task_id)
    assert asked.code == 0, asked
    assert wait_sender_asked(store, task_id, 'cancel' if verb == 'kill' else verb)
    return store, task_id


def log_of(store, task_id):
    with open(store.log_path(task_id), encoding='utf-8', errors='replace') as log:
        return log.read()


def wait_sender_asked(store, task_id, word, timeout=30):
    """Wait until the sender logged that it got ``word`` from its runner."""
    return wait_for_log(store, task_id, f'rrcloud print: asked to {word}', timeout)


def wait_for_log(store, task_id, text, timeout=30):
    """Wait until the task's log holds ``text``."""
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if text in log_of(store, task_id):
            return True
        time.sleep(0.05)
    return False


def wait_for_record(store, task_id, predicate, timeout=30):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        record = get_task(store, task_id)
        if predicate(record):
            return record
        time.sleep(0.05)
    return None


def test_task_pause_resume_through_the_command_line(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = started_print(proc, pty_service, sim)
        paused = proc('pause', task_id)
        assert paused.code == 0, paused
        assert 'suspended' in paused.out, paused.out
        assert wait_sender_asked(store, task_id, 'pause')
        sim.release()
        assert sim.wait_for(lambda s: s.received[-len(PAUSE):] == PAUSE, 20), sim.received[-10:]
        record = get_task(store, task_id)
        assert record['status'] == 'busy' and record['suspended'] == 'yes'  # as 0.019 clients see it
        # info while paused: the printer's state of the newest progress event
        record = wait_for_record(store, task_id, lambda r: 'hotend' in r and r.get('progress') == f'{HOLD}/{COUNT}')
        assert record['hotendTarget'] and record['bed'] and record['bedTarget'], record
        assert int(record['bytesSent']) > 0 and float(record['z']) > 0, record
        assert record['layer'] == str(gcode_layers(SMALL, COUNT)[HOLD - 1]), record
        assert float(record['elapsedSeconds']) >= 0, record
        assert len(file_lines(sim)) == HOLD
        resumed = proc('resume', task_id)
        assert resumed.code == 0, resumed
        record = wait_for_record(store, task_id, lambda r: r['status'] != 'busy', timeout=60)

    assert record['status'] == 'complete', record
    assert file_lines(sim) == EXPECTED
    assert after_line(sim, HOLD)[:len(PAUSE)] == PAUSE
    with open(store.log_path(task_id), encoding='utf-8') as log:
        text = log.read()
    assert 'paused by the command line' in text and 'resumed by the command line' in text, text


def test_task_suspend_of_a_print_is_a_pause(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = started_print(proc, pty_service, sim)
        suspend = proc('suspend', task_id)
        assert suspend.code == 0, suspend
        assert wait_sender_asked(store, task_id, 'pause')
        sim.release()
        assert sim.wait_for(lambda s: s.received[-len(PAUSE):] == PAUSE, 20), sim.received[-10:]
        # not SIGSTOPped: the sender still polls the printer
        assert sim.wait_for(lambda s: s.received[-2:] == ['M105', 'M105'], 20)
        assert proc('resume', task_id).code == 0
        record = wait_for_record(store, task_id, lambda r: r['status'] != 'busy', timeout=60)

    assert record['status'] == 'complete', record
    assert file_lines(sim) == EXPECTED


def test_task_cancel_fails_it_cancelled(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = started_print(proc, pty_service, sim)
        assert proc('cancel', task_id).code == 0
        assert wait_for_record(store, task_id, lambda r: r.get('printControl') == 'cancel')
        assert wait_sender_asked(store, task_id, 'cancel')
        sim.release()
        record = wait_for_record(store, task_id, lambda r: r['status'] != 'busy', timeout=60)

    with open(store.log_path(task_id), encoding='utf-8') as log:
        text = log.read()
    assert record['status'] == 'failed' and record['error'] == 'cancelled', (record, text)
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert sim.received[-len(CANCEL):] == CANCEL


def test_task_stop_sends_m112(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = started_print(proc, pty_service, sim)
        assert proc('stop', task_id).code == 0
        record = wait_for_record(store, task_id, lambda r: r['status'] != 'busy', timeout=60)
        sim.release()
        assert sim.wait_for(lambda s: 'M112' in s.received, 20)

    assert record['status'] == 'failed' and 'emergency stop' in record['error'], record
    assert file_lines(sim) == EXPECTED[:HOLD]


def test_pause_of_a_task_that_is_not_a_print_is_a_clear_error(cli, workdir):
    from helpers import submit_script
    make_service(workdir, 'job', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    task_id = submit_script(cli, workdir, 'sleep 30\n')
    try:
        for verb in ('pause', 'cancel', 'stop'):
            result = cli(verb, task_id)
            assert result.code != 0, result
            assert 'not a print' in result.err and result.err.startswith('rrcloud: error: '), result
        store = Store(str(workdir))
        with pytest.raises(UsageError, match='not a print'):
            pause_task(store, task_id, by='test')
    finally:
        cli('kill', task_id)


def test_a_cancel_after_a_stop_leaves_the_stop_for_the_sender(tmp_path):
    """The runner reads the record every half second: a cancel in between
    must not replace the emergency stop with a cancel that waits for the line in flight."""
    from rrc.control import cancel_task, stop_task
    store = Store(str(tmp_path))
    record = store.create_task(lambda _: {'service': 'printrun', 'status': 'busy', 'sender': 'yes'})

    stop_task(store, record['id'], by='test')
    cancel_task(store, record['id'], by='test')

    assert get_task(store, record['id'])['printControl'] == 'stop'


###############################################################################
# A named printer's own G-code; a print that must end is cancelled
###############################################################################

OWN_START = ['G29', 'M300 S440 P20']
OWN_END = ['M300 S880 P20', 'M18']
OWN_PAUSE = ['M400', 'G1 Z20 F900']
OWN_RESUME = ['G1 Z5 F900']
OWN_CANCEL = ['M140 S0', 'M104 T0 S0', 'M18']


def own_printer(workdir, sim):
    """``printers/mk3.conf``: the sim's port and G-code of its own for every moment."""
    write_printer(workdir, 'mk3', f'port = {sim.port}\n' + ''.join(
        f'{key} = {code}\n' for key, codes in (('start', OWN_START), ('end', OWN_END), ('pause', OWN_PAUSE),
                                                ('resume', OWN_RESUME), ('cancel', OWN_CANCEL))
        for code in codes))


def test_a_named_printers_own_gcode_at_start_pause_resume_and_end(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        own_printer(pty_service, sim)
        _, task_id = held_print_asked(proc, pty_service, sim, 'pause', printer='mk3')
        sim.release()
        # paused: the pause G-code, then a temperature poll and no line of the file
        assert sim.wait_for(lambda s: s.received[-len(OWN_PAUSE) - 1:] == OWN_PAUSE + ['M105'], 20), sim.received[-10:]
        lines_while_paused = len(file_lines(sim))
        assert proc('resume', task_id).code == 0
        record = tidied(pty_service, task_id)

    assert (record['status'], record['printer']) == ('complete', 'mk3'), record
    # the start G-code before the file's first line, the end G-code after its last
    assert file_lines(sim) == OWN_START + EXPECTED + OWN_END
    assert lines_while_paused == HOLD
    between = after_line(sim, HOLD)
    assert between[:len(OWN_PAUSE)] == OWN_PAUSE, between
    assert set(between[len(OWN_PAUSE):-len(OWN_RESUME) - 2]) == {'M105'}, between
    assert between[-len(OWN_RESUME) - 2:] == OWN_RESUME + ['G90', 'M82'], between  # the file's modes again
    assert not set(MarlinGcode.pause_gcode) & (set(sim.received) - set(EXPECTED))  # none of Marlin's


def test_a_named_printers_own_cancel_gcode_and_nothing_after(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        own_printer(pty_service, sim)
        _, task_id = held_print_asked(proc, pty_service, sim, 'cancel', printer='mk3')
        sim.release()
        record = tidied(pty_service, task_id)

    assert (record['status'], record['error']) == ('failed', 'cancelled'), record
    assert file_lines(sim) == OWN_START + EXPECTED[:HOLD - len(OWN_START)]
    assert after_line(sim, HOLD) == OWN_CANCEL  # and no end G-code


def test_kill_of_a_running_print_cancels_it_with_the_cancel_gcode(proc, pty_service):
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = held_print_asked(proc, pty_service, sim, 'kill')
        sim.release()
        record = tidied(pty_service, task_id)

    assert (record['status'], record['error']) == ('failed', 'killed'), record
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert after_line(sim, HOLD) == CANCEL  # Marlin's: heaters, fan and motors off, nothing after
    text = log_of(store, task_id)
    assert 'rrcloud: killed: the print is cancelled (its cancel G-code)' in text, text


def test_an_emergency_stop_reaches_a_killed_print_during_its_cancel(proc, pty_service):
    """Killed, the record is final at once, but the sender cancels the print
    within its runner's grace (here held by the line in flight): a stop must
    still reach it, and M112 go before the cancel G-code."""
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = held_print_asked(proc, pty_service, sim, 'kill')
        assert get_task(store, task_id)['status'] == 'failed'
        stopped = proc('stop', task_id)
        assert stopped.code == 0, stopped
        assert wait_for_log(store, task_id, 'rrcloud print: emergency stop: M112 sent')
        sim.release()
        assert sim.wait_for(lambda s: 'M112' in s.received, 20)
        record = tidied(pty_service, task_id)

    assert (record['status'], record['error']) == ('failed', 'killed'), record
    assert file_lines(sim) == EXPECTED[:HOLD]
    assert after_line(sim, HOLD) == ['M112']  # no cancel G-code first
    assert 'emergency stop asked by the command line' in log_of(store, task_id)


def test_a_stop_of_an_ended_print_whose_runner_is_gone_is_refused(cli, workdir):
    from rrc.control import stop_task
    store = Store(str(workdir))
    record = store.create_task(lambda _: {'service': 'printrun', 'status': 'failed', 'error': 'killed',
                                          'sender': 'yes', 'runner': '999999999', 'runnerStart': '1'})
    with pytest.raises(UsageError, match='not a print whose sender runs'):
        stop_task(store, record['id'], by='test')


def test_a_print_whose_runner_is_stopped_during_a_heat_up_still_turns_the_heaters_off(proc, pty_service):
    """The runner told to stop (SIGTERM) stops its sender, sandboxed: the
    sender alone gets SIGTERM first (bwrap's end would kill it at once), so
    M108 and the cancel G-code reach firmware without an emergency parser
    during a heat-up, queued behind it."""
    import signal
    with PrinterSim(emergency_parser=False, command_delays={'M109': 5}) as sim:
        result = proc('printrun', sim.port, 'small.gcode')
        assert result.code == 0, result
        task_id = result.out.split('id: ', 1)[1].strip()
        store = Store(str(pty_service))
        assert sim.wait_for(lambda s: 'M109 S200' in file_lines(s), 30), sim.received[-5:]
        record = wait_for_record(store, task_id, lambda r: r.get('sender') == 'yes')
        os.kill(int(record['runner']), signal.SIGTERM)
        assert wait_for_log(store, task_id, 'M108 and the cancel G-code sent, not waited for')
        assert sim.wait_for(lambda s: s.received[-len(CANCEL):] == CANCEL, 30), sim.received[-5:]
        record = tidied(pty_service, task_id)

    assert record['status'] == 'failed', record
    assert file_lines(sim)[-1] == 'M109 S200' and sim.heating_broken == 0
    assert sim.received[sim.received.index('M109 S200') + 1:] == ['M108'] + CANCEL


def test_a_print_paused_longer_than_max_suspend_is_cancelled(proc, pty_service):
    write_config(pty_service, 'maxSuspend = 1\n')
    with PrinterSim(hold_at_line=HOLD) as sim:
        store, task_id = started_print(proc, pty_service, sim)
        assert proc('pause', task_id).code == 0
        assert wait_sender_asked(store, task_id, 'pause')
        sim.release()
        record = tidied(pty_service, task_id)

    assert record['status'] == 'failed', record
    assert record['error'] == 'paused longer than maxSuspend (1 s): cancelled', record
    assert file_lines(sim) == EXPECTED[:HOLD]
    between = after_line(sim, HOLD)
    assert between[:len(PAUSE)] == PAUSE and between[-len(CANCEL):] == CANCEL, between
    assert set(between[len(PAUSE):-len(CANCEL)]) <= {'M105'}, between


###############################################################################
# Over HTTP: service=pause, cancel on the embedded server
###############################################################################

def test_http_pause_then_cancel_of_a_print(embedded_server):
    import json
    import requests
    server = embedded_server(services={'printrun': PTY_PRINTRUN_CONF})
    store = Store(str(server.root))

    def ask(service, task_id):
        answer = requests.get(server.url, params={'service': service, 'id': task_id, 'format': 'json'},
                              timeout=30)
        return answer.status_code, json.loads(answer.text)

    with PrinterSim(hold_at_line=HOLD) as sim:
        answer = requests.post(server.url, data={'service': 'printrun', 'nativeArgs': sim.port, 'format': 'json'},
                               files={'fileIn0': ('small.gcode', SMALL.read_bytes())}, timeout=30)
        assert answer.status_code == 200, answer.text
        task_id = json.loads(answer.text)['id']
        assert sim.holding.wait(30)
        assert wait_for_record(store, task_id, lambda r: r.get('sender') == 'yes')
        status, record = ask('pause', task_id)
        assert status == 200 and record['status'] == 'busy' and record['suspended'] == 'yes', record
        assert wait_sender_asked(store, task_id, 'pause')
        sim.release()
        assert sim.wait_for(lambda s: s.received[-len(PAUSE):] == PAUSE, 20), sim.received[-10:]
        # the event stream: a progress event with the printer's state, paused
        with requests.get(server.url, params={'service': 'events', 'id': task_id}, stream=True,
                          timeout=30) as stream:
            import time
            printer, deadline = None, time.monotonic() + 60  # a bound, not a timing: heartbeats keep it open
            for line in stream.iter_lines():
                if time.monotonic() > deadline:
                    break
                if (line.startswith(b'data:') and b'"hotend"' in line and b'"paused":1' in line.replace(b' ', b'')):
                    data = json.loads(line[5:])
                    printer = data.get('printer') or data.get('data', {}).get('printer')
                    break
        assert printer and 'hotend' in printer and 'bed' in printer and printer['bytes'] > 0, printer
        status, record = ask('cancel', task_id)  # while paused
        assert status == 200, record
        record = wait_for_record(store, task_id, lambda r: r['status'] != 'busy', timeout=60)
        status, again = ask('pause', task_id)

    assert record['status'] == 'failed' and record['error'] == 'cancelled', record
    assert sim.received[-len(CANCEL):] == CANCEL
    assert status == 400 and 'cannot pause: it is failed' in again['error'], again


def test_progress_events_carry_the_printer_and_the_slicers_time_left(tmp_path):
    from rrc.events import ProgressEvents, with_live_progress
    store = Store(str(tmp_path))
    task_id = '1796670000-00001-000001'
    now = [100.0]
    events = ProgressEvents(store, task_id, clock=lambda: now[0], print_seconds=600)
    now[0] += 30
    events.report(25, 100, printer={'hotend': 210.5, 'hotendTarget': 210, 'bed': 60, 'bytes': 900,
                                    'layer': 3, 'z': 0.9, 'paused': 0})
    events.flush(force=True)
    shown = with_live_progress(store, {'id': task_id, 'status': 'busy', 'sender': 'yes'})

    assert shown['progress'] == '25/100'
    assert shown['etaSeconds'] == '450'  # 600 s scaled by the 75 % left
    assert shown['elapsedSeconds'] == '30'
    assert (shown['hotend'], shown['hotendTarget'], shown['bed']) == ('210.5', '210', '60')
    assert (shown['bytesSent'], shown['layer'], shown['z']) == ('900', '3', '0.9')
