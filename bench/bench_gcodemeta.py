"""G-code metadata benchmark: lines per second read by rrc/gcodemeta.py, against
Printrun's ``gcoder`` (the Debian package's, whose line parser is C) in the
same run, on one large file: tests/data/cube.stl sliced by the real slic3r
with tests/data/slic3r.ini, repeated to about --lines lines.  Also the peak
memory of each (tracemalloc) and both print-time and filament figures.

Then the estimate against a print: tests/data/small.gcode printed by
``rrcloud print`` to tests/printer_sim.PrinterSim made to spend each move's
time before its ``ok`` (its distance at its feed rate, no acceleration: the
simplest printer; G4 dwells too), its time scaled down by --scale so the
print takes seconds.  The printer's time (first line to last, scaled back)
against gcodemeta's estimate and gcoder's.

Run: .venv/bin/python bench/bench_gcodemeta.py [--lines=N] [--repeat=R] [--scale=S]
"""
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import DATA, REPO, table

from rrc.gcodemeta import read_gcode_meta  # noqa: E402

SYSTEM_PACKAGES = '/usr/lib/python3/dist-packages'


def large_gcode(folder, lines):
    """The sliced test part, repeated to about ``lines`` lines."""
    part = Path(folder) / 'cube.gcode'
    subprocess.run(['slic3r', '--load', str(DATA / 'slic3r.ini'), str(DATA / 'cube.stl'), '--output', str(part)],
                   check=True, capture_output=True)
    text = part.read_bytes()
    copies = max(1, lines // text.count(b'\n'))
    big = Path(folder) / 'big.gcode'
    big.write_bytes(text * copies)
    return big, text.count(b'\n') * copies


def rrcloud_facts(path):
    meta = read_gcode_meta(path)
    return meta.clock.seconds, meta.filament_mm


def gcoder_facts(path):
    if SYSTEM_PACKAGES not in sys.path:
        sys.path.append(SYSTEM_PACKAGES)
    from printrun import gcoder
    with open(path) as handle:
        parsed = gcoder.GCode(handle)
    return parsed.duration.total_seconds(), parsed.filament_length


def timed(reader, path, repeat):
    """(median seconds, peak bytes, facts) of ``reader`` on the file."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        facts = reader(path)
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    reader(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak, facts


class MoveTimes(list):
    """The simulator's ``received`` list, which also works out the time of
    each command it is given (a G0/G1's distance at its feed rate, a G4's
    dwell), scaled by ``scale``; ``MoveDelays`` hands that to the simulator as
    the command's delay.  (PrinterSim delays by command word only; this
    reaches the whole line without changing the shared simulator.)"""

    def __init__(self, scale):
        super().__init__()
        self.scale, self.position, self.feed, self.last = scale, [0.0, 0.0, 0.0], 1500.0, 0.0
        self.total = 0.0

    def append(self, code):
        super().append(code)
        words = code.upper().split()
        values = {word[0]: float(word[1:]) for word in words[1:] if word[:1] in 'XYZFPS' and word[1:]}
        if words and words[0] in ('G0', 'G1'):
            self.feed = values.get('F', self.feed)
            new = [values.get(axis, old) for axis, old in zip('XYZ', self.position)]
            distance = sum((a - b) ** 2 for a, b in zip(new, self.position)) ** 0.5
            self.position, self.last = new, distance / (self.feed / 60.0)
        elif words and words[0] == 'G4':
            self.last = values.get('S', 0.0) + values.get('P', 0.0) / 1000.0
        else:
            self.last = 0.0
        self.total += self.last


class MoveDelays(dict):
    """PrinterSim's ``command_delays``: every command's delay is its own time."""

    def __init__(self, times):
        super().__init__()
        self.times = times

    def get(self, word, default=None):
        return self.times.last * self.times.scale


def printed_seconds(path, scale):
    """(seconds the simulated printer spent from the first line to the last,
    scaled back; the sum of its move times) for one ``rrcloud print``."""
    from printer_sim import PrinterSim
    with PrinterSim(reset_on_open=False) as sim:
        sim.received = MoveTimes(scale)
        sim.command_delays = MoveDelays(sim.received)
        subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'print', sim.port, str(path)],
                       check=True, capture_output=True, timeout=600)
        times = [t for t, direction, line in sim.transcript if direction == '<' and line.startswith('N')]
        return (times[-1] - times[0]) / scale, sim.received.total


def compare_with_printer(scale):
    path = DATA / 'small.gcode'
    wall, moves = printed_seconds(path, scale)
    rows = [['simulated printer (distance / feed per move)', f'{wall:,.1f}', f'{moves:,.1f}'],
            ['rrcloud gcodemeta (acceleration, corners)', f'{rrcloud_facts(path)[0]:,.1f}', ''],
            ['printrun gcoder', f'{gcoder_facts(path)[0]:,.1f}', '']]
    print(f'\n{path.name} printed with per-move delays scaled by {scale}')
    print(table(rows, ['', 'print s', 'sum of the move times, s']))


def main(argv):
    options = dict(arg[2:].split('=', 1) for arg in argv if arg.startswith('--') and '=' in arg)
    lines, repeat = int(options.get('lines', 500000)), int(options.get('repeat', 3))
    scale = float(options.get('scale', 0.02))
    with tempfile.TemporaryDirectory() as folder:
        path, count = large_gcode(folder, lines)
        size = path.stat().st_size
        rows = []
        for name, reader in (('rrcloud gcodemeta', rrcloud_facts), ('printrun gcoder', gcoder_facts)):
            seconds, peak, (print_seconds, filament) = timed(reader, path, repeat)
            rows.append([name, f'{count / seconds:,.0f}', f'{seconds:.2f}', f'{peak / 1e3:,.0f}',
                         f'{print_seconds:,.0f}', f'{filament:,.1f}'])
    print(f'{count:,} lines, {size:,} bytes; median of {repeat}')
    print(table(rows, ['reader', 'lines/s', 'seconds', 'peak kB', 'print s', 'filament mm']))
    compare_with_printer(scale)


if __name__ == '__main__':
    main(sys.argv[1:])
