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

Then (``--polling``, or ``--polling-only``) the cost of watching the
printer's temperatures on the stream: a task's sender (control and progress
pipes open, as its runner gives them) asks ``M105`` between two lines when no
temperature came for 5 s (PRINT_TEMP_INTERVAL).  Lines per second, streaming
(first to last numbered line the printer read) of a big file (--lines), each
variant paired with a baseline in the same round, the order turned each
round, the ratio taken pair by pair:

- baseline: no polling (the sender's temperature interval off), a quiet printer;
- M105 polling every 5 s (the default), a quiet printer: it has to ask;
- the same with the printer's auto-report on (the simulator's M155 S1): the
  reports bring the temperatures, so it never asks;
- M105 polling every 0.05 s: enough polls to see one's cost.

What one poll costs is also read off the printer's own clock: the gap
between two file lines with an M105 between them, less the gap without (the
whole-run ratios move by several per cent from run to run on a shared
machine; that gap does not), and that as a share of the 5 s between polls.
Aim: polling costs under 2% of the lines per second.

And (``--pause``, or ``--pause-only``) the time from ``pause`` to the
printer's last move: small.gcode printed to the simulator with every move
(G0, G1) taking --move-delay seconds before its ok, paused after line
PAUSE_AFTER and a random moment up to half a second later (the runner's
watchdog looks every half second from its start, so a fixed moment would
always meet it in the same phase); measured from the request to the
printer's ok of the last move
it made (the pause G-code's lift), and to the last line of the file it read.
Two ways in, paired each round: the word written straight onto the sender's
control pipe (the baseline: the sender alone), and a real task of the
printrun service paused as ``rrcloud pause`` does (``control.pause_task``:
the record, then the runner's watchdog, every half second, hands it to the
sender).  Aim: under 0.5 s.

Run: .venv/bin/python bench/bench_print.py [--lines=N] [--repeat=R] [--comm-timeout=S] [--recovery-only]
         [--polling | --polling-only [--polling-lines=N]] [--pause | --pause-only [--move-delay=S]]
"""
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import DATA, REPO, table

from rrc.printing import PRINT_COMM_TIMEOUT, PRINT_TEMP_INTERVAL, MarlinGcode, gcode_lines  # noqa: E402
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
    if args[:1] == ['--sender']:
        return sender_main(args[1:])
    target, repeat, comm_timeout = 20000, 1, PRINT_COMM_TIMEOUT
    polling_lines, move_delay = 200000, 0.02
    parts = {'throughput', 'recovery'}
    for arg in args:
        name, _, value = arg.partition('=')
        if name == '--lines':
            target = int(value)
        elif name == '--repeat':
            repeat = int(value)
        elif name == '--comm-timeout':
            comm_timeout = float(value)
        elif name == '--polling-lines':
            polling_lines = int(value)
        elif name == '--move-delay':
            move_delay = float(value)
        elif arg == '--recovery-only':
            parts = {'recovery'}
        elif arg in ('--polling', '--pause'):
            parts.add(arg[2:])
        elif arg in ('--polling-only', '--pause-only'):
            parts = (parts - {'throughput', 'recovery'}) | {arg[2:-len('-only')]}
        else:
            raise SystemExit(__doc__)
    if 'throughput' in parts:
        throughput_table(target, repeat)
    if 'recovery' in parts:
        print(f'\nRecovery from the stalling faults (line {FAULT_LINE} of small.gcode), median of {repeat} run(s)\n')
        print(recovery_table(comm_timeout, repeat))
    if 'polling' in parts:
        polling_table(polling_lines, repeat)
    if 'pause' in parts:
        pause_table(move_delay, repeat)


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


# -- a task's sender, as its runner starts it ---------------------------------

def sender_main(args):
    """``--sender PORT FILE INTERVAL``: print FILE as a task's sender does
    (rrc.printing.cmd_print with the runner's control pipe, RRCLOUD_CONTROL_FD,
    and progress pipe), its temperature interval INTERVAL seconds ('off': none)."""
    from rrc.printing import (GcodeSender, PrinterError, SerialLink, gcode_layers, task_control_pipe,
                              task_progress_writer)
    port, path, interval = args
    lines = gcode_lines(path)
    link = SerialLink(port, 115200)
    try:
        sender = GcodeSender(link, lines, 60.0, task_progress_writer(), control=task_control_pipe())
        sender.layers = gcode_layers(path, len(lines))
        sender.temp_interval = None if interval == 'off' else float(interval)
        sender.connect()
        sender.run()
    except PrinterError as exc:  # a cancel ends a pause measurement
        print(f'sender: {exc}', file=sys.stderr)
        return 1
    finally:
        link.close()
    return 0


class TaskPipes:
    """The two pipes a runner gives its sender: control (we write) and
    progress (drained by /dev/null's worth of nothing: a thread reads it)."""

    def __init__(self):
        import threading
        self.control_read, self.control_write = os.pipe()
        self.progress_read, self.progress_write = os.pipe()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        while os.read(self.progress_read, 65536):
            pass

    def start(self, port, path, interval):
        env = dict(os.environ, RRCLOUD_CONTROL_FD=str(self.control_read),
                   RRCLOUD_PROGRESS_FD=str(self.progress_write))
        process = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--sender', port, path, interval],
                                   env=env, pass_fds=(self.control_read, self.progress_write),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        os.close(self.control_read)
        os.close(self.progress_write)
        return process

    def say(self, word):
        os.write(self.control_write, word.encode() + b'\n')

    def close(self):
        os.close(self.control_write)


# -- the cost of polling temperatures ------------------------------------------

# (name, the sender's temperature interval, the simulator's auto-report interval)
POLLING_BASELINE = ('no polling (baseline)', 'off', None)
POLLING_VARIANTS = (
    (f'M105 every {PRINT_TEMP_INTERVAL:g} s (default), quiet printer', f'{PRINT_TEMP_INTERVAL:g}', None),
    (f'M105 every {PRINT_TEMP_INTERVAL:g} s, auto-report (M155 S1)', f'{PRINT_TEMP_INTERVAL:g}', 1.0),
    ('M105 every 0.05 s (stress)', '0.05', None),
)


def polled_print(path, expected, interval, auto_report):
    """One print as a task's sender; (lines per second streaming, M105 polls the printer answered)."""
    pipes = TaskPipes()
    with PrinterSim(reset_on_open=False, temp_interval=auto_report) as sim:
        process = pipes.start(sim.port, path, interval)
        _, err = process.communicate(timeout=900)
        sim.wait_for(lambda s: len(printed(s)) >= len(expected), timeout=5)
    pipes.close()
    if process.returncode != 0 or printed(sim) != expected or sim.errors:
        raise SystemExit(f'polled print ({interval}, {auto_report}) failed: {err[-2000:]} {sim.errors[:3]}')
    times = file_line_times(sim)
    polls = sum(1 for code in sim.received if code.split()[0] == 'M105')
    return len(expected) / (times[-1] - times[0]), polls, poll_gaps(sim)


def poll_gaps(sim):
    """(gaps between two file lines with an M105 between them, gaps without), by the printer's clock."""
    last, polled, across, plain = None, False, [], []
    for t, direction, line in sim.transcript:
        if direction != '<':
            continue
        if line.startswith('N') and 'M110' not in line:
            if last is not None:
                (across if polled else plain).append(t - last)
            last, polled = t, False
        elif line.split()[:1] == ['M105']:
            polled = True
    return across, plain


def polling_table(target, repeat):
    """Each polling variant paired with the baseline, ``repeat`` rounds, the order turned each round."""
    folder = tempfile.mkdtemp(prefix='rrcloud-bench-polling-')
    pairs = {name: [] for name, _, _ in POLLING_VARIANTS}  # (variant's (rate, polls), baseline's)
    try:
        path = big_gcode(folder, target)
        expected = gcode_lines(path)
        for round_number in range(repeat):
            turned = round_number % 2 == 1
            for name, interval, auto in reversed(POLLING_VARIANTS) if turned else POLLING_VARIANTS:
                _, base_interval, base_auto = POLLING_BASELINE
                runs = [(interval, auto), (base_interval, base_auto)]
                done = [polled_print(path, expected, *run) for run in (reversed(runs) if turned else runs)]
                pairs[name].append(tuple(reversed(done)) if turned else tuple(done))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f'\nTemperature polling: {len(expected)} G-code lines as a task\'s sender, to the simulated printer '
          f'(answers at once), {repeat} round(s), each variant paired with a baseline run\n')
    print(polling_rows(pairs, len(expected)))


def polling_rows(pairs, count):
    """The table: each variant's rate, polls and its ratio to its baseline pair by pair."""
    bases = [base for runs in pairs.values() for _, base in runs]
    rows = [[POLLING_BASELINE[0], f'{statistics.median(base[0] for base in bases):,.0f}', '0', '', '', '']]
    for name, runs in pairs.items():
        ratios = [variant[0] / base[0] for variant, base in runs]
        rows.append([name, f'{statistics.median(variant[0] for variant, _ in runs):,.0f}',
                     f'{statistics.median(variant[1] for variant, _ in runs):g}', f'{statistics.median(ratios):.3f}',
                     f'{min(ratios):.3f} to {max(ratios):.3f}', per_poll_text(runs, count)])
    return table(rows, ['variant', 'lines/s (streaming), median', 'M105 polls a run',
                        'ratio to its baseline (median of pairs)', 'ratios, min to max',
                        'a poll adds to its gap (printer\'s clock); that per 5 s'])


def per_poll_text(runs, count):
    """What one poll adds between two file lines, by the printer's own clock:
    the median gap with an M105 in it less the median gap without, over the
    variant's runs; and that as a share of PRINT_TEMP_INTERVAL (one poll every
    5 s).  Nothing where no poll was made."""
    across = [gap for variant, _ in runs for gap in variant[2][0]]
    plain = [statistics.median(variant[2][1]) for variant, _ in runs]
    if not across:
        return ''
    added = statistics.median(across) - statistics.median(plain)
    return f'{added * 1e6:,.0f} µs; {100 * added / PRINT_TEMP_INTERVAL:.4f}%'


# -- from pause to the printer's last move -------------------------------------

PAUSE_AFTER = 100  # file lines the printer has read when the pause is asked for (plus a random moment)
WATCHDOG_INTERVAL = 0.5  # how often a runner looks at its record (supervise.Watchdog)
PAUSE_GCODE = list(MarlinGcode.pause_gcode)
MOVES = ('G0', 'G1')
# The printrun service as an admin with a printer on a pty writes it (tests/helpers.py).
from helpers import PTY_PRINTRUN_CONF  # noqa: E402


def pause_seconds(sim, asked):
    """(to the pause G-code's first command, to the ok of the last move) from ``asked``, by the printer's clock."""
    transcript = list(sim.transcript)
    later = [(t, d, line) for t, d, line in transcript if t >= asked]
    first = next(t for t, d, line in later if d == '<' and line.split()[0] == PAUSE_GCODE[0])
    last_move = max(i for i, (t, d, line) in enumerate(later) if d == '<' and command_word(line) in MOVES)
    moved = next(t for t, d, line in later[last_move:] if d == '>' and line.startswith('ok'))
    return first - asked, moved - asked


def command_word(line):
    """The command of a line as the host sent it: ``N12 G1 X3*45`` -> ``G1``."""
    words = line.split('*')[0].split()
    if words and words[0][:1] in 'Nn' and words[0][1:].isdigit():
        words = words[1:]
    return words[0].upper() if words else ''


def paused_by_pipe(move_delay, offset):
    """The baseline: the word written straight onto the sender's control pipe."""
    pipes = TaskPipes()
    with PrinterSim(command_delays={word: move_delay for word in MOVES}) as sim:
        process = pipes.start(sim.port, str(DATA / 'small.gcode'), 'off')
        sim.wait_for(lambda s: s.last_line >= PAUSE_AFTER, timeout=60)
        time.sleep(offset)
        asked = time.monotonic()
        pipes.say('pause')
        paused = sim.wait_for(lambda s: s.received[-len(PAUSE_GCODE):] == PAUSE_GCODE, timeout=30)
        pipes.say('cancel')
        process.communicate(timeout=60)
    pipes.close()
    if not paused:
        raise SystemExit('the sender never paused (control pipe)')
    return pause_seconds(sim, asked)


def paused_as_a_task(move_delay, root, offset):
    """A printrun task of a store at ``root``, paused as ``rrcloud pause`` does (the record, then its runner)."""
    from rrc.control import cancel_task, pause_task
    from rrc.states import get_task
    from rrc.store import Store
    store = Store(str(root))
    env = dict(os.environ, RRCLOUD_CONFIG=str(root / 'rrcloudrc'))
    with PrinterSim(command_delays={word: move_delay for word in MOVES}) as sim:
        submitted = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'printrun', sim.port,
                                    str(DATA / 'small.gcode')], cwd=root, env=env, capture_output=True, text=True)
        task_id = next(line[4:] for line in submitted.stdout.splitlines() if line.startswith('id: '))
        sim.wait_for(lambda s: s.last_line >= PAUSE_AFTER, timeout=60)
        while get_task(store, task_id).get('sender') != 'yes':
            time.sleep(0.01)
        time.sleep(offset)
        asked = time.monotonic()
        pause_task(store, task_id, by='bench_print')
        paused = sim.wait_for(lambda s: s.received[-len(PAUSE_GCODE):] == PAUSE_GCODE, timeout=30)
        cancel_task(store, task_id, by='bench_print')
        while get_task(store, task_id)['status'] == 'busy':
            time.sleep(0.05)
    if not paused:
        raise SystemExit(f'task {task_id} never paused')
    return pause_seconds(sim, asked)


def pause_table(move_delay, repeat):
    """Pause latency, the control pipe against a task paused through its record, paired each round."""
    root = Path(tempfile.mkdtemp(prefix='rrcloud-bench-pause-'))
    (root / 'rrcloudrc').write_text('')
    (root / 'services').mkdir()
    (root / 'services' / 'printrun.conf').write_text(PTY_PRINTRUN_CONF)
    pairs = []
    try:
        for round_number in range(repeat):
            # a random moment: line PAUSE_AFTER comes at the same time after the runner's start in
            # every run, and so would the watchdog's looks (every WATCHDOG_INTERVAL), phase-locked
            offset = random.uniform(0, WATCHDOG_INTERVAL)
            if round_number % 2:
                task = paused_as_a_task(move_delay, root, offset)
                pipe = paused_by_pipe(move_delay, offset)
            else:
                pipe = paused_by_pipe(move_delay, offset)
                task = paused_as_a_task(move_delay, root, offset)
            pairs.append((pipe, task))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for name, index in (('control pipe (the sender alone, baseline)', 0), ('a task: pause_task, record, watchdog', 1)):
        stops = [pair[index][0] for pair in pairs]
        moves = [pair[index][1] for pair in pairs]
        ratio = statistics.median(pair[index][1] / pair[0][1] for pair in pairs)
        aim = 'met' if statistics.median(moves) < 0.5 else 'NOT met'
        rows.append([name, f'{statistics.median(stops):.3f}', f'{statistics.median(moves):.3f}',
                     f'{min(moves):.3f} to {max(moves):.3f}', f'{ratio:.2f}x', aim])
    print(f'\nFrom pause to the printer\'s last move: small.gcode, every G0/G1 taking {move_delay:g} s on the '
          f'simulated printer, paused after line {PAUSE_AFTER}, {repeat} round(s) (a pair each)\n')
    print(table(rows, ['asked through', 'to the pause G-code, s (median)', 'to the last move\'s ok, s (median)',
                       'last move, min to max', 'ratio to the baseline (median of pairs)', 'aim: < 0.5 s']))


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
