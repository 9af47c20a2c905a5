"""Printing: rrcloud's built-in G-code sender against the simulated printer.

No mocks: the printer is tests/printer_sim.PrinterSim, a Marlin-like responder
behind a real pty, which checks line numbers and checksums, asks for resends,
chatters (busy:, echo:, temperatures, unknown lines) and can go silent.  The
sender runs as a real process (``rrcloud print PORT FILE``), as a task of the
``printrun`` service (``rrcloud --sync printrun``, the ``printrun.cloud``
wrapper), and through the embedded server (POST service=printrun), which runs
as www-data, like a deployment: root would open any port, whatever its
permissions say.

The ports a task may use come from the service conf.  The shipped printrun
conf allows /dev/ttyUSB* and /dev/ttyACM* only; the tests that go through the
task system write a store-root conf named printrun that allows the pty
(``nativeArgs = /dev/pts/, --timeout=``), as an admin would add /dev/ttyS.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
import requests

import deploy
from rrc.printing import PRINT_MAX_POKES, PRINT_MAX_RESENDS, gcode_lines
from rrc.states import get_task
from rrc.store import Store
from conftest import DATA, REPO, make_service
from helpers import PTY_PRINTRUN_CONF, file_lines, wait_done
from printer_sim import PrinterSim, checksum, numbered

SMALL = DATA / 'small.gcode'
EXPECTED = gcode_lines(SMALL)
COUNT = len(EXPECTED)
WIRE_RE = re.compile(r'\AN([0-9]+) (.*)\*([0-9]+)\Z')
# 'Resend: 5', 'Resend:5', 'rs 5', 'rs N5 Expected checksum 67': the line asked for
RESEND_RE = re.compile(r'\A(?:Resend|rs)\W*N?:?\s*([0-9]+)')


###############################################################################
# Helpers: what the printer saw
###############################################################################

def printed(sim):
    """The commands the printer accepted after the sender's initial ``M110 N0``."""
    assert sim.received[:1] == ['M110 N0'], sim.received[:3]
    return sim.received[1:]


def check_every_line_once(sim, expected=EXPECTED):
    """Every code line arrived exactly once, in order, numbered 1..N, with no error."""
    assert printed(sim) == expected
    assert [n for n, _ in sim.received_numbered[1:]] == list(range(1, len(expected) + 1))
    assert sim.errors == []
    assert sim.ignored == []


def wire_lines(sim):
    """What the host wrote to the port, in order (the simulator's transcript)."""
    return [line for _, direction, line in sim.transcript
            if direction == '<' and not line.startswith('(')]


def check_wire_format(sim, expected=EXPECTED, pokes=False):
    """``M110 N0``, then each line as ``N<n> <code>*<xor of the bytes before '*'>``
    (with ``pokes``, M105s between them).

    A line is sent again only after the printer asked for it: every number is
    the last one + 1, the number of a resend request, or the Last Line + 1 of
    an Error: line.
    """
    sent = wire_lines(sim)
    assert sent[0] == 'M110 N0'
    last = 0
    said = [line for _, d, line in sim.transcript if d == '>']
    resend_targets = {int(match.group(1)) for match in map(RESEND_RE.match, said) if match}
    resend_targets |= {int(number) + 1 for line in said if line.startswith('Error:')
                       for number in re.findall(r'Last Line: ([0-9]+)', line)}
    for line in sent[1:]:
        if pokes and line == 'M105':
            continue
        match = WIRE_RE.match(line)
        assert match, f'not N<n> <code>*<checksum>: {line!r}'
        number, code, given = int(match.group(1)), match.group(2), int(match.group(3))
        assert given == checksum(line[:line.index('*')]), line
        assert code == expected[number - 1], line
        if number != last + 1:
            assert number in resend_targets and number <= last, f'{line!r} after line {last}'
        last = number
    assert last == len(expected)


def unnumbered(sim):
    """The commands the printer accepted without a line number: the sender's probes and pokes."""
    return [code for number, code in sim.received_numbered if number is None]


def check_file_once(sim, expected=EXPECTED):
    """Every line of the file arrived once, in order, numbered 1..N; besides them only
    the M110 N0 probe (first) and M105 pokes."""
    assert file_lines(sim) == expected
    assert [n for n, _ in sim.received_numbered if n is not None] == list(range(1, len(expected) + 1))
    assert sim.received[0] == 'M110 N0'
    assert set(unnumbered(sim)[1:]) <= {'M105'}, unnumbered(sim)
    assert sim.errors == []


def error_line(done):
    """The one line of stderr, which rrcloud print's failures write."""
    assert done.returncode != 0, done
    (message,) = done.stderr.splitlines()
    assert message.startswith('rrcloud: error: '), message
    return message


def injected_resends(count, every):
    """The simulator refuses lines every+1, 2*every+1, ... once each (then accepts them)."""
    return (count - 1) // every


def run_print(*args, timeout=60):
    """``rrcloud print ARGS`` as a real process; (CompletedProcess, seconds)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'print', *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return done, time.monotonic() - started


###############################################################################
# rrcloud print: the sender as a process
###############################################################################

PRINTER_KINDS = {
    'plain': {},
    'resend-every-50': {'resend_every': 50},
    'rs-every-50': {'resend_every': 50, 'resend_format': 'rs'},
    'rs-N-with-error': {'resend_every': 50, 'resend_format': 'rs_n', 'inject_error': True},
    'teacup-rs': {'resend_every': 50, 'resend_format': 'rs N{n} Expected checksum 67'},
    'noise-and-temperatures': {'noise_every': 3, 'temp_interval': 0.05},
    'resends-and-noise': {'resend_every': 50, 'noise_every': 2},
    'slow-with-busy': {'delay': 0.003, 'busy_interval': 0.001},
    'resets-on-open': {'banner_delay': 1.0},
    'resets-on-open-slowly': {'banner_delay': 2.5},
    'does-not-reset': {'reset_on_open': False},
}


@pytest.mark.parametrize('options', PRINTER_KINDS.values(), ids=PRINTER_KINDS.keys())
def test_print_sends_every_line_once_in_order(options):
    with PrinterSim(**options) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    assert done.returncode == 0, done
    assert done.stderr == ''
    assert f'printed {COUNT} lines' in done.stdout
    check_every_line_once(sim)
    check_wire_format(sim)
    assert sim.opens == 1
    if options.get('resend_every'):
        assert sim.injected_resends == injected_resends(COUNT, options['resend_every'])
        assert sim.resends_requested == sim.injected_resends
    else:
        assert sim.resends_requested == 0


def test_print_streams_a_freshly_sliced_file(tmp_path):
    gcode = tmp_path / 'cube.gcode'
    sliced = subprocess.run(['slic3r', f'--load={DATA / "slic3r.ini"}', str(DATA / 'cube.stl'),
                             f'--output={gcode}'], capture_output=True, text=True, timeout=120)
    assert sliced.returncode == 0, sliced
    expected = gcode_lines(gcode)
    raw = gcode.read_text().splitlines()
    assert len(expected) > 1000
    assert any(line.startswith(';') for line in raw), 'slic3r writes comments; they are not sent'
    assert 'G1 Z0.300 F7800.000' in expected  # the config's 0.3 mm first layer

    with PrinterSim(resend_every=50, noise_every=7) as sim:
        done, _ = run_print(str(sim.port), str(gcode))

    assert done.returncode == 0, done
    assert f'printed {len(expected)} lines' in done.stdout
    check_every_line_once(sim, expected)
    check_wire_format(sim, expected)
    assert sim.injected_resends == injected_resends(len(expected), 50)
    assert not any(';' in line for line in printed(sim))


def test_silent_printer_fails_within_its_timeout():
    with PrinterSim(silent_after=100) as sim:
        done, seconds = run_print('--timeout=2', sim.port, str(SMALL))

    assert done.returncode != 0
    assert 2 <= seconds < 10, seconds
    (message,) = done.stderr.splitlines()
    assert message.startswith('rrcloud: error: ')
    assert 'stopped answering' in message and '2 s' in message, message
    assert 'printed' not in done.stdout
    # M110 and lines 1..99 were accepted; line 100 went unanswered and nothing followed it
    assert printed(sim) == EXPECTED[:99]
    assert len(sim.ignored) == 1 and sim.ignored[0].startswith('N100 ')


def test_port_that_does_not_exist_is_refused(tmp_path):
    port = tmp_path / 'ttyUSB9'
    done, seconds = run_print(str(port), str(SMALL))

    assert done.returncode != 0
    (message,) = done.stderr.splitlines()
    assert 'cannot open' in message and str(port) in message, message
    assert done.stdout == ''
    assert not port.exists()
    assert seconds < 10


@pytest.mark.parametrize('gcode', ['f.gcode', str(SMALL)], ids=['no-such-file', 'file'])
def test_port_that_does_not_exist_is_one_error_line(gcode):
    done, _ = run_print('/dev/nonexistent', gcode)

    message = error_line(done)
    assert message == 'rrcloud: error: cannot open /dev/nonexistent: No such file or directory'
    assert done.stdout == ''


def test_printrun_wrapper_on_a_port_that_does_not_exist_says_so_in_one_line(proc, gcode_here):
    """The wrapper, like the sender, says it once: with the task's id, the port and why."""
    result = proc('/dev/ttyUSB97', 'small.gcode', prog='printrun.cloud')

    assert result.code == 1
    (line,) = result.err.splitlines()
    assert line.startswith('rrcloud: error: task ')
    assert line.endswith(' failed: cannot open /dev/ttyUSB97: No such file or directory'), line
    assert result.out == ''


def test_etc_passwd_is_refused_as_not_a_device():
    before = os.stat('/etc/passwd')
    done, _ = run_print('/etc/passwd', str(SMALL))

    assert done.returncode != 0
    (message,) = done.stderr.splitlines()
    assert 'refusing /etc/passwd' in message and 'not a serial device' in message, message
    assert done.stdout == ''
    after = os.stat('/etc/passwd')
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_non_device_is_refused_before_it_is_opened(tmp_path):
    """A FIFO shows an open: a reader blocked in open() wakes when anyone opens the other end."""
    fifo = tmp_path / 'fifo'
    os.mkfifo(fifo)
    woke = threading.Event()

    def reader():
        fd = os.open(fifo, os.O_RDONLY)
        woke.set()
        os.close(fd)
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    regular = tmp_path / 'regular'
    regular.write_bytes(b'not a printer\n')

    done_fifo, _ = run_print(str(fifo), str(SMALL))
    done_file, _ = run_print(str(regular), str(SMALL))
    opened = woke.wait(0.3)
    if not opened:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the reader go
    thread.join(5)

    for done in (done_fifo, done_file):
        assert done.returncode != 0
        (message,) = done.stderr.splitlines()
        assert 'not a serial device' in message, message
    assert not opened, 'rrcloud print opened a FIFO it should have refused'
    assert regular.read_bytes() == b'not a printer\n'


@pytest.mark.parametrize('args', [
    [],
    ['/dev/pts/0'],
    ['--baud=fast', '/dev/pts/0', 'x.gcode'],
    ['--timeout=0', '/dev/pts/0', 'x.gcode'],
    ['--speed=2', '/dev/pts/0', 'x.gcode'],
    ['--comm-timeout=0', '/dev/pts/0', 'x.gcode'],
    ['--comm-timeout=soon', '/dev/pts/0', 'x.gcode'],
    ['--comm-timeout', '/dev/pts/0', 'x.gcode'],
], ids=['nothing', 'no file', 'bad baud', 'zero timeout', 'unknown option', 'zero comm timeout',
        'bad comm timeout', 'comm timeout without value'])
def test_print_usage_errors(cli, args):
    result = cli('print', *args)

    assert result.code == 2, result
    assert result.err.startswith('rrcloud: error: ') and len(result.err.splitlines()) == 1, result


###############################################################################
# rrcloud print through the quirks of real firmware
###############################################################################

def probes_dropped_while_booting(sim):
    return sum(line.count('M110 N0') for _, direction, line in sim.transcript
               if direction == '<' and line.startswith('(dropped while booting)'))


def test_printer_that_does_not_reset_gets_the_first_line_after_one_probe():
    with PrinterSim(reset_on_open=False) as sim:
        sim.last_line = 500  # its line counter, from an earlier print
        done, _ = run_print(sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_every_line_once(sim)
    check_wire_format(sim)
    # No banner wait: one probe, answered, then the file (a second of waiting
    # would have sent a second probe).
    assert wire_lines(sim)[:2] == ['M110 N0', numbered(1, EXPECTED[0])]
    assert not any(direction == '>' and line == 'start' for _, direction, line in sim.transcript)
    assert 'it was reset' not in done.stdout


def test_printer_that_resets_on_open_is_probed_until_its_banner():
    with PrinterSim(banner_delay=2.5) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_every_line_once(sim)
    check_wire_format(sim)
    assert probes_dropped_while_booting(sim) >= 2, 'a probe about every second during the boot'
    assert 'it was reset' in done.stdout


def test_resend_of_the_line_not_yet_sent_is_ignored():
    # Line 32 reached the printer twice: it asks for 33, which was not sent yet.
    with PrinterSim(reset_on_open=False, duplicate_lines={32}) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    assert done.returncode == 0, done
    assert sim.duplicated == [32]
    check_every_line_once(sim)
    check_wire_format(sim)
    assert len(wire_lines(sim)) == 1 + COUNT, 'no line went twice'
    assert 'asked for line 33, not sent yet' in done.stdout


LOST_OKS = {
    'after-a-resend': {'resend_lines': {50}, 'ok_after_resend': False},
    'on-the-wire': {'drop_ok_lines': {40}},
    'after-every-resend': {'resend_every': 100, 'ok_after_resend': False},
}


@pytest.mark.parametrize('options', LOST_OKS.values(), ids=LOST_OKS.keys())
def test_lost_ok_is_poked_for_and_the_print_goes_on(options):
    with PrinterSim(reset_on_open=False, **options) as sim:
        done, _ = run_print('--comm-timeout=0.5', sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_file_once(sim)
    pokes = unnumbered(sim)[1:]
    assert 1 <= len(pokes) == max(len(sim.dropped_oks), sim.injected_resends), unnumbered(sim)
    assert 'poked with M105' in done.stdout


def test_lost_ok_with_the_default_communication_timeout():
    with PrinterSim(reset_on_open=False, drop_ok_lines={40}) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_file_once(sim)
    assert unnumbered(sim) == ['M110 N0', 'M105']


def test_heat_up_that_reports_temperatures_is_not_poked():
    # Temperatures every 0.5 s during a 2 s M109, communication timeout 0.3 s:
    # the reports show the printer at work, so the sender waits longer.
    with PrinterSim(reset_on_open=False, command_delays={'M109': 2.0}, busy_interval=0.5) as sim:
        done, _ = run_print('--comm-timeout=0.3', sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_every_line_once(sim)
    reports = [line for _, direction, line in sim.transcript if direction == '>' and 'W:?' in line]
    assert len(reports) >= 2
    assert 'M105' not in sim.received


@pytest.mark.parametrize('busy_interval', [None, 0.6], ids=['silent', 'busy-lines'])
def test_long_command_is_poked_when_silent_and_the_print_goes_on(busy_interval):
    # The file has two G28s; each takes 2 s here, with no line at all or with
    # busy: lines every 0.6 s (the first after 0.6 s).  Communication timeout 0.5 s.
    with PrinterSim(reset_on_open=False, command_delays={'G28': 2.0}, busy_interval=busy_interval) as sim:
        done, _ = run_print('--comm-timeout=0.5', sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_file_once(sim)
    pokes = len(unnumbered(sim)) - 1
    if busy_interval is None:
        assert 2 < pokes <= 2 * PRINT_MAX_POKES  # more than one each, a few at most
    else:
        assert pokes <= 2  # one each at most, before its first busy: line; none after it


###############################################################################
# Faults that stall a sender that only waits (issue 21, item 1)
###############################################################################

# Temperature auto-reports (M155) or ``wait`` lines (Marlin's NO_TIMEOUTS)
# every 0.1 s, well inside the communication timeout of 0.5 s: they must not
# hide the silence.
AUTO_REPORTS = {'quiet': {}, 'auto-reports': {'temp_interval': 0.1},
                'wait-lines': {'wait_interval': 0.1}}


def sender_log(done):
    """The lines ``rrcloud print`` logged, without its prefix."""
    prefix = 'rrcloud print: '
    return [line[len(prefix):] for line in done.stdout.splitlines() if line.startswith(prefix)]


def pokes_logged(done, number):
    """The log lines saying line ``number`` went unanswered and M105 went out."""
    return [line for line in sender_log(done)
            if re.fullmatch(rf'no answer to line {number} for [0-9.]+ s: poked with M105', line)]


@pytest.mark.parametrize('options', AUTO_REPORTS.values(), ids=AUTO_REPORTS.keys())
@pytest.mark.parametrize('line', [1, 40, COUNT])
def test_line_error_without_resend_or_ok_is_poked_and_the_line_sent_again(options, line):
    with PrinterSim(reset_on_open=False, unanswered_error_lines={line}, **options) as sim:
        done, _ = run_print('--comm-timeout=0.5', sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_file_once(sim)
    check_wire_format(sim, pokes=True)
    error = f'Error:No Line Number with checksum, Last Line: {line - 1}'
    assert sim.unanswered_errors == [error]
    assert unnumbered(sim) == ['M110 N0', 'M105']
    log = sender_log(done)
    assert f'printer: {error}' in log
    assert len(pokes_logged(done, line)) == 1, log
    assert f'the printer refused line {line} without asking for a resend: sending line {line} again' in log


# Marlin 2.0's flush_and_request_resend() printed Resend: without an ok: each
# resend request then costs a poke too (three in all: after Resend: 40, after
# the swallowed copy, after the Resend: 40 that line 41 brings).
SWALLOWING = {
    'quiet': ({}, 1),
    'auto-reports': ({'temp_interval': 0.1}, 1),
    'wait-lines': ({'wait_interval': 0.1}, 1),
    'resend-without-ok': ({'ok_after_resend': False, 'temp_interval': 0.1}, 3),
}


@pytest.mark.parametrize('options, pokes', SWALLOWING.values(), ids=SWALLOWING.keys())
def test_resent_line_swallowed_is_poked_for_and_sent_again(options, pokes):
    with PrinterSim(reset_on_open=False, swallow_resent_lines={40}, **options) as sim:
        done, _ = run_print('--comm-timeout=0.5', sim.port, str(SMALL))

    assert done.returncode == 0, done
    assert sim.swallowed == [40]
    assert file_lines(sim) == EXPECTED
    assert [n for n, _ in sim.received_numbered if n is not None] == list(range(1, COUNT + 1))
    assert unnumbered(sim) == ['M110 N0'] + ['M105'] * pokes
    # After the poke the sender goes on (most often an ok was lost, and the
    # line taken); the printer's answer to line 41 says line 40 was not.
    refusal = 'Error:Line Number is not Last Line Number+1, Last Line: 39'
    assert sim.errors == [refusal]
    check_wire_format(sim, pokes=True)
    log = sender_log(done)
    assert len(pokes_logged(done, 40)) + len(pokes_logged(done, 41)) == pokes, log
    assert f'printer: {refusal}' in log


def with_auto_report(tmp_path, interval):
    """small.gcode with ``M155 S<interval>`` first: the printer reports temperatures on its own."""
    path = tmp_path / 'auto-report.gcode'
    path.write_text(f'M155 S{interval:g} ; report temperatures\n' + SMALL.read_text())
    return path


def test_lost_ok_under_temperature_auto_reports_is_poked_for(tmp_path):
    path = with_auto_report(tmp_path, 0.1)
    expected = gcode_lines(path)
    with PrinterSim(reset_on_open=False, drop_ok_lines={40, 200}) as sim:
        done, _ = run_print('--comm-timeout=0.5', sim.port, str(path))

    assert done.returncode == 0, done
    check_file_once(sim, expected)
    assert sim.dropped_oks == [40, 200]
    assert unnumbered(sim) == ['M110 N0', 'M105', 'M105']
    assert len(pokes_logged(done, 40)) == len(pokes_logged(done, 200)) == 1, sender_log(done)
    reports = [line for _, direction, line in sim.transcript if direction == '>' and line.startswith(' T:')]
    assert len(reports) >= 5, 'the printer reported while the sender waited'


def test_lost_ok_while_the_printer_says_wait_is_poked_for():
    with PrinterSim(reset_on_open=False, drop_ok_lines={40}, wait_interval=0.1) as sim:
        done, _ = run_print('--comm-timeout=0.5', sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_file_once(sim)
    assert unnumbered(sim) == ['M110 N0', 'M105']
    assert len(pokes_logged(done, 40)) == 1, sender_log(done)
    waits = [line for _, direction, line in sim.transcript if direction == '>' and line == 'wait']
    assert len(waits) >= 3, 'the printer said wait while the sender waited'


def test_printer_that_only_auto_reports_fails_after_the_full_timeout():
    # Stuck on line 100, its temperature reports still coming (Marlin's idle()
    # reports while the command loop hangs): the reports are no answer.
    with PrinterSim(reset_on_open=False, silent_after=100, temp_interval=0.1,
                    report_when_silent=True) as sim:
        done, seconds = run_print('--timeout=2', '--comm-timeout=0.5', sim.port, str(SMALL))

    message = error_line(done)
    assert 'stopped answering' in message and '2 s after line 100' in message, message
    assert 'M105 went unanswered' in message, message
    assert printed(sim) == EXPECTED[:99]
    assert 1 <= len(sim.ignored[1:]) <= PRINT_MAX_POKES


def test_resend_loop_stops_naming_the_line():
    with PrinterSim(reset_on_open=False, resend_loop_lines={57}) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    message = error_line(done)
    assert 'line 57' in message and f'{PRINT_MAX_RESENDS} times in a row' in message, message
    assert sim.injected_resends == PRINT_MAX_RESENDS
    assert file_lines(sim) == EXPECTED[:56]
    assert 'printed' not in done.stdout


HALTS = {
    'kill': ('Error:Printer halted. kill() called!',),
    'maxtemp': ('Error:MAXTEMP triggered, system stopped! Heater_ID: 0',
                'Error:Printer halted. kill() called!'),
    'old-firmware': ('!! Printer halted. kill() called!!',),
}


@pytest.mark.parametrize('halt_lines', HALTS.values(), ids=HALTS.keys())
def test_halting_error_stops_the_print_at_once_with_that_line(halt_lines):
    with PrinterSim(reset_on_open=False, halt_at_line=120, halt_lines=halt_lines) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    message = error_line(done)
    assert message == f'rrcloud: error: printer error: {halt_lines[0]}'
    assert sim.halted
    assert file_lines(sim) == EXPECTED[:120]
    assert sim.ignored == [], 'nothing was sent after the error'
    assert 'printed' not in done.stdout


RESEND_ERRORS = ['checksum mismatch', 'Line Number is not Last Line Number+1',
                 'No Checksum with line number', 'No Line Number with checksum']


@pytest.mark.parametrize('error', RESEND_ERRORS)
def test_errors_that_come_with_a_resend_are_logged_not_fatal(error):
    with PrinterSim(reset_on_open=False, resend_every=50, inject_error=error) as sim:
        done, _ = run_print(sim.port, str(SMALL))

    assert done.returncode == 0, done
    check_every_line_once(sim)
    check_wire_format(sim)
    assert sim.injected_resends == injected_resends(COUNT, 50)
    assert done.stdout.count(f'printer: Error:{error}, Last Line: ') == sim.injected_resends


def test_printer_that_restarts_mid_print_stops_it():
    with PrinterSim(reset_on_open=False, command_delays={'M109': 1.0}) as sim:
        process = subprocess.Popen([sys.executable, str(REPO / 'rrcloud.py'), 'print', sim.port, str(SMALL)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert sim.wait_for(lambda s: 'M109 S200' in s.received, timeout=30)
        sim.send_banner()
        out, err = process.communicate(timeout=60)

    assert process.returncode != 0
    assert err.splitlines() == ['rrcloud: error: the printer restarted (it sent start) after line 6']
    assert file_lines(sim) == EXPECTED[:6]


def test_silent_printer_is_poked_then_fails_after_the_full_timeout():
    with PrinterSim(reset_on_open=False, silent_after=100) as sim:
        done, seconds = run_print('--timeout=2', '--comm-timeout=0.5', sim.port, str(SMALL))

    message = error_line(done)
    assert 'stopped answering' in message and '2 s after line 100' in message, message
    assert 'M105 went unanswered' in message, message
    assert seconds >= 2, 'not before the full timeout'
    assert printed(sim) == EXPECTED[:99]
    assert sim.ignored[0].startswith('N100 ')
    assert 1 <= len(sim.ignored[1:]) <= PRINT_MAX_POKES
    assert set(sim.ignored[1:]) == {'M105'}


def test_printer_that_never_answers_fails_after_the_full_timeout():
    with PrinterSim(reset_on_open=False, silent_after=0) as sim:
        done, _ = run_print('--timeout=2.5', sim.port, str(SMALL))

    message = error_line(done)
    assert 'did not answer' in message and 'M110 N0' in message and '2.5 s' in message, message
    assert len(sim.ignored) >= 2 and set(sim.ignored) == {'M110 N0'}, 'probed about every second'


###############################################################################
# Through the task system
###############################################################################

def store_files(root):
    """Files under ROOT/tasks except the lock and slot files."""
    found = set()
    for folder, _, files in os.walk(root / 'tasks'):
        relative = os.path.relpath(folder, root / 'tasks')
        if relative.split(os.sep)[0] == 'slots':
            continue
        found |= {os.path.join(relative, name) for name in files if name != '.lock'}
    return found


def the_task(root):
    """The one task of the store: (record, log text)."""
    store = Store(str(root))
    (task_id,) = store.task_ids()
    record = get_task(store, task_id)
    with open(store.log_path(task_id), encoding='utf-8', errors='replace') as log:
        return record, log.read()


@pytest.fixture
def gcode_here(workdir):
    shutil.copy(SMALL, workdir / 'small.gcode')
    return workdir / 'small.gcode'


@pytest.fixture
def pty_service(workdir):
    make_service(workdir, 'printrun', PTY_PRINTRUN_CONF)
    return workdir


def check_completed_print(record, log, sim, port):
    assert record['status'] == 'complete', (record, log)
    assert record['exitCode'] == '0'
    assert record['service'] == 'printrun'
    assert record['cmd'].startswith(f'rrcloud print {port} tasks/in/'), record['cmd']
    assert record['out'] == ''
    assert record['progress'] == f'{COUNT}/{COUNT}'
    assert f'printed {COUNT} lines' in log, log
    check_every_line_once(sim)
    check_wire_format(sim)


def test_sync_printrun_task_prints_and_records_progress(proc, pty_service, gcode_here):
    with PrinterSim(resend_every=50) as sim:
        result = proc('--sync', 'printrun', sim.port, 'small.gcode')
        record, log = the_task(pty_service)

    assert result.code == 0, result
    assert result.out == '' and result.err == ''
    check_completed_print(record, log, sim, sim.port)
    assert not any(name.startswith('out/') for name in store_files(pty_service))


def test_progress_is_written_while_it_prints(proc, pty_service, gcode_here):
    store = Store(str(pty_service))
    seen = []
    with PrinterSim(delay=0.005) as sim:  # about 1.6 s of printing
        result = proc('printrun', sim.port, 'small.gcode')
        assert result.code == 0, result
        task_id = result.out.split('id: ', 1)[1].strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = get_task(store, task_id)
            if record['status'] != 'busy':
                break
            if record.get('progress'):
                seen.append(record['progress'])
            time.sleep(0.05)
        record, log = the_task(pty_service)

    check_completed_print(record, log, sim, sim.port)
    done = [int(value.split('/')[0]) for value in seen]
    assert all(value.endswith(f'/{COUNT}') for value in seen), seen
    assert any(0 < n < COUNT for n in done), f'no progress while busy: {seen}'
    assert done == sorted(done), seen


def test_printrun_cloud_wrapper_prints(cli, pty_service, gcode_here):
    with PrinterSim(resend_every=50, resend_format='rs') as sim:
        result = cli(sim.port, 'small.gcode', prog='printrun.cloud')
        record, log = the_task(pty_service)

    assert result.code == 0, result
    assert result.out == '' and result.err == ''
    check_completed_print(record, log, sim, sim.port)


@pytest.mark.parametrize('how', ['rrcloud --sync', 'printrun.cloud'])
@pytest.mark.parametrize('port', ['pty', '/etc/passwd'])
def test_shipped_printrun_conf_refuses_other_ports_at_submission(proc, workdir, gcode_here, how, port):
    with PrinterSim() as sim:
        target = sim.port if port == 'pty' else port
        if how == 'printrun.cloud':
            result = proc(target, 'small.gcode', prog='printrun.cloud')
        else:
            result = proc('--sync', 'printrun', target, 'small.gcode')
        time.sleep(0.2)

    assert result.code == 2, result
    assert target in result.err, result
    assert result.err.startswith('rrcloud: error: ') and len(result.err.splitlines()) == 1, result
    assert store_files(workdir) == set(), 'a refused task left files behind'
    assert sim.opens == 0 and sim.received == []


def test_silent_printer_fails_the_task_with_the_message_in_the_log(proc, pty_service, gcode_here):
    with PrinterSim(silent_after=100) as sim:
        started = time.monotonic()
        result = proc('--sync', 'printrun', '--timeout=2', sim.port, 'small.gcode')
        seconds = time.monotonic() - started
        record, log = the_task(pty_service)

    assert result.code == 1, result  # the tool's exit code
    assert seconds < 15
    assert record['status'] == 'failed'
    assert record['exitCode'] == '1'
    assert record['error'] == 'the printer stopped answering (no reply for 2 s after line 100)'
    assert 'stopped answering' in log, log
    assert 'printed' not in log
    assert 'stopped answering' in result.err  # the log is shown on failure
    assert record.get('progress', '0/0').split('/')[0] != str(COUNT)
    assert printed(sim) == EXPECTED[:99]


def test_printer_halt_fails_the_task_with_the_printer_error_in_the_log(proc, pty_service, gcode_here):
    with PrinterSim(halt_at_line=120) as sim:
        result = proc('--sync', 'printrun', sim.port, 'small.gcode')
        record, log = the_task(pty_service)

    assert result.code == 1, result
    assert record['status'] == 'failed'
    assert 'rrcloud: error: printer error: Error:Printer halted. kill() called!' in log.splitlines(), log
    assert record['error'] == 'printer error: Error:Printer halted. kill() called!'  # the task's error
    assert 'printed' not in log
    assert file_lines(sim) == EXPECTED[:120]
    assert sim.ignored == []


def test_a_print_is_never_started_twice(proc, pty_service, gcode_here):
    with PrinterSim() as sim:
        assert proc('--sync', 'printrun', sim.port, 'small.gcode').code == 0
        record, _ = the_task(pty_service)
        for args in (['info'], ['info', record['id']], ['--format=json', 'info'], ['meta']):
            assert proc(*args).code == 0
        time.sleep(1.0)  # time for a second run to show up, if there were one
        again, _ = the_task(pty_service)

    assert sim.opens == 1
    check_every_line_once(sim)
    assert again['status'] == 'complete'
    assert (again['pid'], again['stime'], again['etime']) == (record['pid'], record['stime'], record['etime'])


###############################################################################
# Through the embedded server (runs as www-data)
###############################################################################

@pytest.fixture(scope='module')
def server():
    """``rrcloud serve`` as installed, as www-data (not the ``embedded_server``
    fixture, which runs it as root): it opens the printer's port as a
    deployment's user, whom the port's permissions let in or not."""
    with deploy.running(deploy.Deployment('embedded', services={'printrun': PTY_PRINTRUN_CONF})) as deployment:
        yield deployment


def accessible_sim(**options):
    sim = PrinterSim(**options).start()
    os.chmod(sim.port, 0o666)  # the server and its tasks run as www-data
    return sim


def post_print(server, native, **fields):
    return requests.post(f'{server.url}/', data={'service': 'printrun', 'nativeArgs': native,
                                                 'format': 'json', **fields},
                         files={'fileIn0': ('small.gcode', SMALL.read_bytes())}, timeout=30)


def test_post_printrun_prints_every_line_once(server):
    sim = accessible_sim(resend_every=50, noise_every=5)
    try:
        answer = post_print(server, sim.port)
        assert answer.status_code == 200, answer.text
        started = json.loads(answer.text)
        assert started['status'] == 'busy'
        record = wait_done(server, started['id'])
        log = requests.get(f'{server.url}/tasks/log/{started["id"]}', timeout=30)
    finally:
        sim.stop()

    assert log.status_code == 200
    check_completed_print(record, log.text, sim, sim.port)
    assert sim.opens == 1


def test_post_printrun_with_a_silent_printer_fails(server):
    sim = accessible_sim(silent_after=100)
    try:
        answer = post_print(server, f'--timeout=2 {sim.port}')
        assert answer.status_code == 200, answer.text
        task_id = json.loads(answer.text)['id']
        record = wait_done(server, task_id, timeout=30)
        log = requests.get(f'{server.url}/tasks/log/{task_id}', timeout=30)
    finally:
        sim.stop()

    assert record['status'] == 'failed'
    assert record['exitCode'] == '1'
    assert 'stopped answering' in log.text, log.text
    assert printed(sim) == EXPECTED[:99]


@pytest.mark.parametrize('service, native', [
    ('printrun', '/etc/passwd'),
    ('printrun', '/dev/pts/../../etc/passwd'),
    ('printrun', '/dev/ttyUSB0'),
    ('printcore', 'pty'),
], ids=['etc-passwd', 'dotdot', 'not-in-this-conf', 'shipped-printcore-conf'])
def test_post_refuses_ports_the_conf_does_not_allow(server, service, native):
    sim = accessible_sim()
    try:
        before = server.store_files()
        answer = post_print(server, sim.port if native == 'pty' else native, service=service)
        time.sleep(0.2)
    finally:
        sim.stop()

    assert answer.status_code == 400, answer.text
    assert 'not allowed' in json.loads(answer.text)['error']
    assert server.store_files() == before
    assert sim.opens == 0
