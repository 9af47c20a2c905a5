"""The simulated printer (tests/printer_sim.py) against real peers.

Printrun's ``printcore`` (Debian package printrun, run as the real ``printcore``
command) prints tests/data/small.gcode to it: every code line must arrive once,
in order, also with resends injected.  A pyserial client checks the protocol
details a well-behaved host never triggers (bad checksums, wrong line numbers,
silence).
"""
import shutil
import subprocess
import time

import pytest
import serial

from conftest import DATA
from printer_sim import PrinterSim, checksum, numbered

SMALL = DATA / 'small.gcode'
PRINTCORE = shutil.which('printcore') or '/usr/bin/printcore'


def code_lines(path):
    """The commands a sender sends for a G-code file: no comments, no blank lines."""
    lines = (raw.split(';', 1)[0].strip() for raw in path.read_text().splitlines())
    return [line for line in lines if line]


def printed(sim):
    """What the printer accepted, without the host's own housekeeping (M110 / M105)."""
    return [c for c in sim.received if c.split()[0] not in ('M110', 'M105')]


def run_printcore(sim, path=SMALL, timeout=30):
    start = time.monotonic()
    done = subprocess.run([PRINTCORE, '-v', sim.port, str(path)],
                          capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - start


def streaming_seconds(sim):
    """From the first to the last numbered G-code line the printer read."""
    times = [t for t, d, line in sim.transcript if d == '<' and line.startswith('N') and 'M110' not in line]
    return times[-1] - times[0]


def test_small_gcode_is_a_plausible_print():
    lines = code_lines(SMALL)
    raw = SMALL.read_text().splitlines()
    assert 250 <= len(lines) <= 400
    assert any(not line.strip() for line in raw) and any(line.startswith(';') for line in raw)
    assert sum(line.startswith('G1 ') for line in lines) > 250


@pytest.mark.parametrize('options', [
    {},
    {'resend_every': 50},
    {'resend_every': 50, 'resend_format': 'rs_n', 'inject_error': True},
    {'resend_every': 50, 'noise_every': 3, 'temp_interval': 0.2},
], ids=['plain', 'resend-every-50', 'rs-N-with-error', 'resends-and-noise'])
def test_printcore_prints_every_line_once_in_order(options):
    expected = code_lines(SMALL)
    with PrinterSim(**options) as sim:
        done, seconds = run_printcore(sim)
        assert sim.wait_for(lambda s: printed(s) == expected, timeout=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f'Printing: {SMALL}' in done.stdout
    assert printed(sim) == expected
    assert sim.errors == []
    assert sim.opens >= 1
    if options.get('resend_every'):
        # one refused line per 50 accepted ones, each sent again and accepted once
        assert sim.injected_resends == len(expected) // 51
        assert sim.resends_requested == sim.injected_resends
    print(f'printcore {options}: {seconds:.2f} s in all, {len(expected)} lines streamed in '
          f'{streaming_seconds(sim):.3f} s ({len(expected) / streaming_seconds(sim):.0f} lines/s)')


# ---- protocol details, with pyserial as the host --------------------------------------

def open_host(sim, timeout=1.0):
    """Open the port like a sender and read the banner up to its last line."""
    port = serial.Serial(sim.port, 115200, timeout=timeout)
    banner = []
    while not banner or 'Free Memory' not in banner[-1]:
        line = port.readline().decode()
        assert line, f'no banner, got {banner}'
        banner.append(line.rstrip('\n'))
    return port, banner


def ask(port, line):
    """Send one line, return the answer lines up to and including the ok ([] on silence)."""
    port.write((line + '\n').encode())
    answer = []
    while True:
        got = port.readline().decode()
        if not got:
            return answer
        answer.append(got.rstrip('\n'))
        if got.startswith('ok'):
            return answer


def test_banner_comes_when_the_host_opens_the_port_each_time():
    with PrinterSim() as sim:
        for _ in range(2):
            port, banner = open_host(sim)
            assert banner[0] == 'start'
            assert banner[1] == 'echo:Marlin 2.1.2 (simulated)'
            port.close()
            assert sim.wait_for(lambda s: not s.host_open, 2)
        assert sim.opens == 2


def test_input_during_boot_is_dropped():
    with PrinterSim(banner_delay=0.3) as sim:
        port = serial.Serial(sim.port, 115200, timeout=1)
        port.write(b'G28\n')
        assert port.readline() == b'start\n'
        port.close()
    assert sim.received == []


def test_checksum_and_line_number_checks():
    with PrinterSim() as sim:
        port, _ = open_host(sim, timeout=0.3)
        assert ask(port, 'M110 N0') == ['ok']
        assert ask(port, numbered(1, 'G28')) == ['ok']
        bad = 'N2 G1 X1*%d' % (checksum('N2 G1 X1') ^ 1)
        assert ask(port, bad) == ['Error:checksum mismatch, Last Line: 1', 'Resend: 2', 'ok']
        assert ask(port, numbered(3, 'G1 X1')) == [
            'Error:Line Number is not Last Line Number+1, Last Line: 1', 'Resend: 2', 'ok']
        assert ask(port, 'N2 G1 X1') == ['Error:No Checksum with line number, Last Line: 1', 'Resend: 2', 'ok']
        assert ask(port, 'G1 X1*99') == ['Error:No Line Number with checksum, Last Line: 1', 'Resend: 2', 'ok']
        assert ask(port, numbered(2, 'G1 X1')) == ['ok']
        assert ask(port, numbered(2, 'G1 X1')) == [
            'Error:Line Number is not Last Line Number+1, Last Line: 2', 'Resend: 3', 'ok']
        assert ask(port, 'M105') == ['ok T:20.0 /0.0 B:20.0 /0.0']
        assert ask(port, '') == [] and ask(port, '; a comment') == []   # no answer, as Marlin
        # M110 forms: "N<n> M110" sets the last line to n, "M110 N<m>" to m
        assert ask(port, numbered(41, 'M110')) == ['ok']
        assert ask(port, numbered(42, 'G1 X2')) == ['ok']
        assert ask(port, numbered(7, 'M110 N0')) == ['ok']
        assert ask(port, numbered(1, 'G1 X3')) == ['ok']
        port.close()
    assert sim.received == ['M110 N0', 'G28', 'G1 X1', 'M105', 'M110', 'G1 X2', 'M110 N0', 'G1 X3']
    assert len(sim.errors) == 5 and sim.resends_requested == 5


def test_injected_resends_noise_and_silence():
    with PrinterSim(resend_every=2, resend_format='rs', noise_every=1,
                    noise_lines=['echo:busy: processing'], silent_after=4) as sim:
        port, _ = open_host(sim, timeout=0.3)
        assert ask(port, 'M110 N0') == ['echo:busy: processing', 'ok']
        assert ask(port, numbered(1, 'G1 X1')) == ['echo:busy: processing', 'ok']
        assert ask(port, numbered(2, 'G1 X2')) == ['echo:busy: processing', 'ok']
        assert ask(port, numbered(3, 'G1 X3')) == ['rs 3', 'ok']
        assert ask(port, numbered(3, 'G1 X3')) == ['echo:busy: processing', 'ok']
        assert ask(port, numbered(4, 'G1 X4')) == []          # silent after 4 accepted
        assert ask(port, 'M105') == []
        port.close()
    assert sim.received == ['M110 N0', 'G1 X1', 'G1 X2', 'G1 X3']
    assert sim.injected_resends == 1 and sim.errors == []
    assert sim.ignored == [numbered(4, 'G1 X4'), 'M105']


def test_slow_printer_sends_busy_while_working():
    with PrinterSim(delay=0.5, busy_interval=0.2) as sim:
        port, _ = open_host(sim)
        start = time.monotonic()
        assert ask(port, 'G28') == ['echo:busy: processing', 'echo:busy: processing', 'ok']
        assert time.monotonic() - start >= 0.5
        port.close()


# ---- a printer that does not reset, and the faults of real firmware ---------------------

def test_printer_that_does_not_reset_answers_at_once_and_keeps_its_line_number():
    with PrinterSim(reset_on_open=False) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.5)
        assert ask(port, 'M105') == ['ok T:20.0 /0.0 B:20.0 /0.0']   # no banner, no boot
        assert ask(port, numbered(1, 'G28')) == ['ok']
        port.close()
        assert sim.wait_for(lambda s: not s.host_open, 2)
        port = serial.Serial(sim.port, 115200, timeout=0.5)
        assert ask(port, numbered(2, 'G1 X1')) == ['ok']               # the counter went on
        port.close()
    assert sim.opens == 2
    assert sim.received == ['M105', 'G28', 'G1 X1']
    assert not any(line == 'start' for _, direction, line in sim.transcript if direction == '>')


def test_duplicate_line_lost_ok_and_resend_loop():
    with PrinterSim(reset_on_open=False, duplicate_lines={2}, drop_ok_lines={3},
                    resend_loop_lines={4}) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, numbered(1, 'G1 X1')) == ['ok']
        # line 2 arrived twice, the first ok lost: only the second copy is answered
        assert ask(port, numbered(2, 'G1 X2')) == [
            'Error:Line Number is not Last Line Number+1, Last Line: 2', 'Resend: 3', 'ok']
        assert ask(port, numbered(3, 'G1 X3')) == []                  # accepted, its ok lost
        for _ in range(3):
            assert ask(port, numbered(4, 'G1 X4')) == ['Resend: 4', 'ok']
        port.close()
    assert sim.received == ['G1 X1', 'G1 X2', 'G1 X3']
    assert sim.duplicated == [2] and sim.dropped_oks == [3]
    assert sim.injected_resends == 3 and sim.errors == []


def test_resend_without_ok():
    with PrinterSim(reset_on_open=False, resend_lines={2}, ok_after_resend=False) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, numbered(1, 'G1 X1')) == ['ok']
        assert ask(port, numbered(2, 'G1 X2')) == ['Resend: 2']      # and no ok
        assert ask(port, 'M105') == ['ok T:20.0 /0.0 B:20.0 /0.0']
        assert ask(port, numbered(2, 'G1 X2')) == ['ok']
        port.close()
    assert sim.received == ['G1 X1', 'M105', 'G1 X2']


def test_halt_answers_the_error_and_falls_silent():
    with PrinterSim(reset_on_open=False, halt_at_line=2) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, numbered(1, 'G1 X1')) == ['ok']
        assert ask(port, numbered(2, 'G1 X2')) == ['Error:Printer halted. kill() called!']
        assert ask(port, 'M105') == []
        port.close()
    assert sim.halted
    assert sim.received == ['G1 X1', 'G1 X2'] and sim.ignored == ['M105']


def test_heat_up_reports_temperatures_from_the_start_and_other_long_commands_busy():
    with PrinterSim(reset_on_open=False, command_delays={'M109': 0.5, 'G28': 0.5},
                    busy_interval=0.2) as sim:
        port = serial.Serial(sim.port, 115200, timeout=1.0)
        heating = ask(port, 'M109 S200')
        homing = ask(port, 'G28')
        assert ask(port, 'G1 X1') == ['ok']                         # others answer at once
        port.close()
    report = ' T:150.0 /200.0 B:60.0 /60.0 @:127 B@:0 W:?'
    # a report at once, then one about every 0.2 s; busy: only after the first 0.2 s
    assert len(heating) >= 2 and heating == [report] * (len(heating) - 1) + ['ok'], heating
    assert len(homing) >= 2 and homing == ['echo:busy: processing'] * (len(homing) - 1) + ['ok'], homing


def test_printcore_prints_to_a_printer_that_does_not_reset():
    expected = code_lines(SMALL)
    with PrinterSim(reset_on_open=False, resend_every=50) as sim:
        done, _ = run_printcore(sim)
        assert sim.wait_for(lambda s: printed(s) == expected, timeout=2)
    assert done.returncode == 0, done.stderr[-2000:]
    assert printed(sim) == expected
    assert sim.errors == []
    assert not any(line == 'start' for _, direction, line in sim.transcript if direction == '>')


def test_line_error_answered_by_the_error_alone():
    # The N eaten by noise: the error line and nothing after it, no Resend:, no ok.
    with PrinterSim(reset_on_open=False, unanswered_error_lines={2}) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, numbered(1, 'G1 X1')) == ['ok']
        assert ask(port, numbered(2, 'G1 X2')) == ['Error:No Line Number with checksum, Last Line: 1']
        assert ask(port, 'M105') == ['ok T:20.0 /0.0 B:20.0 /0.0']
        assert ask(port, numbered(2, 'G1 X2')) == ['ok']             # the next copy is taken
        port.close()
    assert sim.received == ['G1 X1', 'M105', 'G1 X2']
    assert sim.unanswered_errors == ['Error:No Line Number with checksum, Last Line: 1']
    assert sim.errors == []


def test_resent_line_swallowed_without_a_word():
    with PrinterSim(reset_on_open=False, swallow_resent_lines={2}) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, numbered(1, 'G1 X1')) == ['ok']
        assert ask(port, numbered(2, 'G1 X2')) == ['Resend: 2', 'ok']
        assert ask(port, numbered(2, 'G1 X2')) == []                  # swallowed
        assert ask(port, 'M105') == ['ok T:20.0 /0.0 B:20.0 /0.0']
        # the line after it tells the host the printer never took line 2
        assert ask(port, numbered(3, 'G1 X3')) == [
            'Error:Line Number is not Last Line Number+1, Last Line: 1', 'Resend: 2', 'ok']
        assert ask(port, numbered(2, 'G1 X2')) == ['ok']
        port.close()
    assert sim.received == ['G1 X1', 'M105', 'G1 X2']
    assert sim.swallowed == [2] and sim.injected_resends == 1


def auto_reports(sim):
    """The temperature lines the printer sent on its own (M155's reports)."""
    return [line for _, direction, line in sim.transcript
            if direction == '>' and line.startswith(' T:')]


def test_m155_turns_the_temperature_auto_report_on_and_off():
    with PrinterSim(reset_on_open=False) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, 'M155 S0.1') == ['ok']
        assert sim.wait_for(lambda s: len(auto_reports(s)) >= 3, timeout=5)
        answer = ask(port, 'M155 S0')
        assert answer[-1] == 'ok' and all(line.startswith(' T:') for line in answer[:-1]), answer
        stopped = len(auto_reports(sim))
        assert ask(port, 'G4 P0') == ['ok']
        assert not sim.wait_for(lambda s: len(auto_reports(s)) > stopped, timeout=0.5)
        port.close()
    assert sim.received == ['M155 S0.1', 'M155 S0', 'G4 P0']


def test_wait_comes_when_no_input_came_for_the_interval():
    with PrinterSim(reset_on_open=False, wait_interval=0.1) as sim:
        port = serial.Serial(sim.port, 115200, timeout=0.3)
        assert ask(port, 'G1 X1') == ['ok']
        assert sim.wait_for(lambda s: sum(line == 'wait' for _, d, line in s.transcript if d == '>') >= 3,
                            timeout=5)
        port.close()
    assert sim.received == ['G1 X1']
