"""G-code metadata benchmark: lines per second read by rrc/gcodemeta.py, against
Printrun's ``gcoder`` (the Debian package's, whose line parser is C) in the
same run, on one large file: tests/data/cube.stl sliced by the real slic3r
with tests/data/slic3r.ini, repeated to about --lines lines.  Also the peak
memory of each (tracemalloc) and both print-time and filament figures.

Run: .venv/bin/python bench/bench_gcodemeta.py [--lines=N] [--repeat=R]
"""
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import DATA, table

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


def main(argv):
    options = dict(arg[2:].split('=', 1) for arg in argv if arg.startswith('--') and '=' in arg)
    lines, repeat = int(options.get('lines', 500000)), int(options.get('repeat', 3))
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


if __name__ == '__main__':
    main(sys.argv[1:])
