"""Printing benchmark: G-code lines per second streamed to a simulated printer.

The same big G-code file (tests/data/small.gcode's code lines repeated to
about 20,000 lines) is printed, in one run, by

- rrcloud's built-in sender (``rrcloud print PORT FILE``, a real process), and
- Printrun's ``printcore`` (the Debian package's ``printcore PORT FILE``),

each to a fresh tests/printer_sim.PrinterSim on a pty that answers at once
and does NOT reset when the port opens (reset_on_open=False): no start
banner, so a sender that waits for one waits in silence.  Two numbers per
sender:

- wall time, from starting the command to the printer reading the last line
  of the file (start-up, connecting and streaming; printcore sleeps after
  connecting and polls, so much of its wall time is waiting).  The aim is
  compared on this one; and
- the streaming span from the simulator's transcript: from the first to the
  last numbered G-code line the printer read.

Each run is checked: the printer accepted every line of the file exactly once,
in order (no lost or duplicated line), and reported no protocol error.

Then the time to recover from each stalling fault of issue 21, built-in sender
only, printing tests/data/small.gcode with temperature auto-reports every
second (the simulator's M155 S1) and one fault at line FAULT_LINE: a line
error answered by the ``Error:`` line alone, a resent line swallowed without
a word, an ``ok`` lost on the wire.  Recovery runs from the fault (the
printer's error line, the swallowed copy, the lost ok) to the printer reading
the copy of line FAULT_LINE + 1 that it takes: the communication timeout of silence, the poke and the
round trips after it.  Aim: under the communication timeout plus 1 s.

Run: .venv/bin/python bench/bench_print.py [--lines=N] [--repeat=R] [--comm-timeout=S] [--recovery-only]
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

from common import DATA, REPO, table

from rrc.printing import PRINT_COMM_TIMEOUT, gcode_lines  # noqa: E402
from printer_sim import PrinterSim  # noqa: E402

PRINTCORE = shutil.which('printcore') or '/usr/bin/printcore'
HOUSEKEEPING = ('M110', 'M105')  # the host's own commands, not lines of the file
FAULT_LINE = 40
# Each stalling fault: (simulator options, how the transcript marks the fault).
STALLING_FAULTS = {
    'line error with no Resend: or ok': ({'unanswered_error_lines': {FAULT_LINE}},
                                         ('>', 'Error:No Line Number with checksum')),
    'resent line swallowed': ({'swallow_resent_lines': {FAULT_LINE}},
                              ('*', f'resent line {FAULT_LINE} swallowed')),
    'ok lost under auto-reports': ({'drop_ok_lines': {FAULT_LINE}},
                                   ('*', f'ok of line {FAULT_LINE} lost')),
}


def big_gcode(folder, target_lines):
    """A G-code file of about ``target_lines`` code lines: small.gcode's, repeated."""
    code = gcode_lines(DATA / 'small.gcode')
    lines = (code * (target_lines // len(code) + 1))[:target_lines]
    path = os.path.join(folder, 'big.gcode')
    with open(path, 'w') as handle:
        handle.write('; benchmark file: tests/data/small.gcode code lines, repeated\n')
        handle.write('\n'.join(lines) + '\n')
    return path


def printed(sim):
    """What the printer accepted, without the host's housekeeping (M110 / M105)."""
    return [c for c in sim.received if c.split()[0] not in HOUSEKEEPING]


def file_line_times(sim):
    """When the printer read each numbered G-code line (monotonic seconds)."""
    return [t for t, direction, line in sim.transcript
            if direction == '<' and line.startswith('N') and 'M110' not in line]


def run_sender(name, argv_for, path, expected):
    """One print to a fresh simulator; (wall seconds, streaming seconds, lost + duplicated)."""
    with PrinterSim(reset_on_open=False) as sim:
        started = time.monotonic()
        done = subprocess.run(argv_for(sim.port, path), capture_output=True, text=True, timeout=600)
        sim.wait_for(lambda s: len(printed(s)) >= len(expected), timeout=5)
    if done.returncode != 0:
        raise SystemExit(f'{name} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}')
    got = printed(sim)
    lost = sum((Counter(expected) - Counter(got)).values())
    duplicated = sum((Counter(got) - Counter(expected)).values())
    if got != expected or lost or duplicated:
        raise SystemExit(f'{name}: the printer got {len(got)} lines, expected {len(expected)}: '
                         f'{lost} lost, {duplicated} duplicated, first difference at line '
                         f'{first_difference(got, expected)}')
    if sim.errors:
        raise SystemExit(f'{name}: protocol errors: {sim.errors[:5]}')
    times = file_line_times(sim)
    return times[-1] - started, times[-1] - times[0], lost + duplicated


def recovery_seconds(fault, comm_timeout):
    """One print of small.gcode with ``fault``; seconds from the fault to the printer reading the next line."""
    options, (direction, marker) = STALLING_FAULTS[fault]
    expected = gcode_lines(DATA / 'small.gcode')
    with PrinterSim(reset_on_open=False, temp_interval=1.0, **options) as sim:
        argv = builtin_argv(sim.port, str(DATA / 'small.gcode'))
        done = subprocess.run(argv[:-2] + [f'--comm-timeout={comm_timeout:g}'] + argv[-2:],
                              capture_output=True, text=True, timeout=120)
    numbered = [code for number, code in sim.received_numbered if number is not None]
    if done.returncode != 0 or numbered != expected:
        raise SystemExit(f'{fault}: the print failed or lines were lost:\n{done.stdout[-2000:]}{done.stderr[-2000:]}')
    fault_at = next(t for t, d, line in sim.transcript if d == direction and line.startswith(marker))
    # the last copy of the next line is the one taken (a copy sent before the
    # faulted line was back in place is refused, and comes earlier)
    next_line = f'N{FAULT_LINE + 1} '
    return max(t for t, d, line in sim.transcript if d == '<' and line.startswith(next_line)) - fault_at


def recovery_table(comm_timeout, repeat):
    """The recovery time of each stalling fault, median of ``repeat`` runs, as a table."""
    rows = []
    for fault in STALLING_FAULTS:
        seconds = statistics.median(recovery_seconds(fault, comm_timeout) for _ in range(repeat))
        aim = 'met' if seconds < comm_timeout + 1 else 'NOT met'
        rows.append([fault, f'{comm_timeout:g}', f'{seconds:.2f}', f'{seconds - comm_timeout:.2f}', aim])
    return table(rows, ['fault (auto-reports every 1 s)', 'comm timeout s', 'recovery s',
                        'beyond the timeout s', 'aim: < timeout + 1 s'])


def first_difference(got, expected):
    for index, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            return index + 1
    return min(len(got), len(expected)) + 1


def builtin_argv(port, path):
    return [sys.executable, str(REPO / 'rrcloud.py'), 'print', port, path]


def printcore_argv(port, path):
    return [PRINTCORE, port, path]


def main(args):
    target, repeat, comm_timeout, throughput = 20000, 1, PRINT_COMM_TIMEOUT, True
    for arg in args:
        name, _, value = arg.partition('=')
        if name == '--lines':
            target = int(value)
        elif name == '--repeat':
            repeat = int(value)
        elif name == '--comm-timeout':
            comm_timeout = float(value)
        elif arg == '--recovery-only':
            throughput = False
        else:
            raise SystemExit(__doc__)
    if throughput:
        throughput_table(target, repeat)
    print(f'\nRecovery from the stalling faults (line {FAULT_LINE} of small.gcode), median of {repeat} run(s)\n')
    print(recovery_table(comm_timeout, repeat))


def throughput_table(target, repeat):
    """Lines per second of both senders to a printer that answers at once, printed as a table."""
    folder = tempfile.mkdtemp(prefix='rrcloud-bench-print-')
    try:
        path = big_gcode(folder, target)
        expected = gcode_lines(path)
        results = {}
        for name, argv_for in (('rrcloud print (built-in)', builtin_argv), ('printcore', printcore_argv)):
            runs = [run_sender(name, argv_for, path, expected) for _ in range(repeat)]
            results[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                             sum(r[2] for r in runs))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    count = len(expected)
    rows = []
    for name, (wall, span, wrong) in results.items():
        rows.append([name, count, f'{wall:.2f}', f'{count / wall:,.0f}', f'{span:.2f}',
                     f'{count / span:,.0f}', wrong])
    (b_wall, b_span, _), (p_wall, p_span, _) = results['rrcloud print (built-in)'], results['printcore']
    rows.append(['ratio built-in / printcore', '', '', f'{p_wall / b_wall:.1f}x', '',
                 f'{p_span / b_span:.1f}x', ''])
    print(f'Printing to the simulated printer (no reset on open, answers at once), {count} G-code lines, '
          f'median of {repeat} run(s) each\n')
    print(table(rows, ['sender', 'lines', 'wall s (start to last line)', 'lines/s (wall)', 'streaming s',
                       'lines/s (streaming)', 'lost + duplicated lines']))


if __name__ == '__main__':
    main(sys.argv[1:])
