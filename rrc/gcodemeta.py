"""What a G-code file says about its print, read from the file alone: layers,
layer height, print time, filament, bounding box, and the slicer with its
settings where the file's comments name them.

The print time comes from the slicer's own estimate where the file carries
one (PrusaSlicer's ``; estimated printing time``, Cura's ``;TIME:``);
otherwise, and always as ``moveSeconds``, from the moves: each G0/G1 a
trapezoid (accelerate from the speed at its start corner, cruise at its feed
rate, decelerate to the speed of its end corner), at the file's M204/M201
acceleration or ``DEFAULT_ACCELERATION``.  Heating waits (M109, M190) and
homing are not counted: their time depends on the printer, not the file.

Bounded: the file is read as bytes line by line, each read at most
``MAX_LINE`` bytes (a longer line, or a file without line ends, is skipped in
``MAX_LINE`` pieces and counted, never held); the work per line is bounded by
its length; every number must be finite (no NaN, no inf) and feed rates are
held within ``MIN_FEED``..``MAX_FEED``, so no value can make the arithmetic
blow up.  Memory is a few counters and at most ``MAX_STEPS`` distinct layer
steps and ``MAX_SETTINGS`` settings, whatever the file.  Time is linear in
its size.
"""

import math

from .schema import Field

# Marlin's default printing acceleration is 3000 mm/s^2 on many boards, 1000
# on older ones; Printrun's gcoder takes 2000.  A slicer that sets M204 wins.
DEFAULT_ACCELERATION = 1000.0
# Feed rates are mm/min in the file; held within 0.1 mm/min .. 100 m/min
# (no printer moves faster; a zero or negative one is ignored, as Marlin does).
MIN_FEED = 0.1
MAX_FEED = 100000.0
DEFAULT_FEED = 1500.0
# No coordinate of a real printer is further out than this (mm): a larger one
# is a hostile file's, ignored.
MAX_COORDINATE = 1e6
# The speed (mm/s) a printer may keep through any corner, even a reversal.
CORNER_JERK = 10.0
MAX_LINE = 4096
MAX_STEPS = 64
MAX_SETTINGS = 400
MAX_SETTING_VALUE = 64
# Without the file's own: 1.75 mm PLA at 1.24 g/cm3.
DEFAULT_FILAMENT_DIAMETER = 1.75
DEFAULT_FILAMENT_DENSITY = 1.24
# The settings shown in a record (the file may carry hundreds).
SHOWN_SETTINGS = ('layer_height', 'first_layer_height', 'nozzle_diameter', 'filament_diameter',
                  'filament_density', 'filament_type', 'temperature', 'bed_temperature', 'perimeters',
                  'fill_density', 'fill_pattern', 'support_material', 'travel_speed', 'perimeter_speed',
                  'infill_speed')
# G2/G3 (arcs) count as their chord: their filament and end point exactly,
# their length a little short; a slicer's arc fitting is rare in Slic3r's G-code.
MOVES = (b'G1', b'G0', b'G01', b'G00', b'G2', b'G3', b'G02', b'G03')
MAX_SETTING_KEY = 64
MAX_SLICER_NAME = 64
# The file extensions of G-code (services/printrun.conf's inputExts).
GCODE_EXTENSIONS = ('.gcode', '.gco', '.g')


def is_gcode_name(name):
    """True for a file name with a G-code extension."""
    return name.lower().endswith(GCODE_EXTENSIONS)


def finite(text):
    """The number in ``text`` (bytes), or None when it is not a finite one."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if -MAX_COORDINATE <= value <= MAX_COORDINATE else None  # false for NaN and inf too


def bounded(coordinate):
    """A relative move's sum held within reach (a hostile file adds without end)."""
    return max(-MAX_COORDINATE, min(MAX_COORDINATE, coordinate))


def trapezoid_seconds(distance, entry, cruise, leave, acceleration):
    """Time of one move of ``distance`` mm that starts at ``entry`` mm/s,
    cruises at most at ``cruise`` and ends at ``leave``, speeding up and
    slowing down at ``acceleration``; a move too short to reach its cruise
    speed peaks where its two ramps meet."""
    leave = min(leave, math.sqrt(entry * entry + 2 * acceleration * distance))
    entry = min(entry, math.sqrt(leave * leave + 2 * acceleration * distance))
    ramp_up = (cruise * cruise - entry * entry) / (2 * acceleration)
    ramp_down = (cruise * cruise - leave * leave) / (2 * acceleration)
    if ramp_up + ramp_down <= distance:
        return (cruise - entry) / acceleration + (cruise - leave) / acceleration + \
            (distance - ramp_up - ramp_down) / cruise
    peak = math.sqrt(max((2 * acceleration * distance + entry * entry + leave * leave) / 2, 0.0))
    return max(peak - entry, 0.0) / acceleration + max(peak - leave, 0.0) / acceleration


def corner_speed(before, after, speed_before, speed_after):
    """The speed a printer keeps through the corner between two moves (unit
    vectors): full speed straight on, falling with the cosine of the turn,
    but never below the jerk Marlin allows at any corner (its classic
    DEFAULT_XJERK; junction deviation's 0.013 mm gives about as much at 90°)."""
    slower = min(speed_before, speed_after)
    cosine = before[0] * after[0] + before[1] * after[1] + before[2] * after[2]
    return max(cosine * slower, min(CORNER_JERK, slower))


class MoveClock:
    """The time of a stream of moves, one move behind: a move's time is known
    once the next one fixes the speed of the corner it ends in."""

    def __init__(self):
        self.seconds = 0.0
        self.pending = None  # (distance, cruise, acceleration, direction, entry) of the last move

    def add(self, distance, cruise, acceleration, direction):
        """One move of ``distance`` mm at ``cruise`` mm/s along ``direction``."""
        entry = 0.0
        if self.pending:
            last_distance, last_cruise, last_acceleration, last_direction, last_entry = self.pending
            entry = corner_speed(last_direction, direction, last_cruise, cruise)
            self.seconds += trapezoid_seconds(last_distance, last_entry, last_cruise, entry, last_acceleration)
        self.pending = (distance, cruise, acceleration, direction, entry)

    def stop(self, pause=0.0):
        """The printer comes to a stop (the end, a dwell of ``pause`` seconds)."""
        if self.pending:
            distance, cruise, acceleration, _, entry = self.pending
            self.seconds += trapezoid_seconds(distance, entry, cruise, 0.0, acceleration)
            self.pending = None
        self.seconds += pause


class GcodeMeta:
    """The facts of one G-code file, gathered line by line (``feed``)."""

    def __init__(self):
        self.position = (0.0, 0.0, 0.0)
        self.extruder = 0.0          # E as the file counts it (after G92)
        self.filament = 0.0          # E pushed in all, net of retractions
        self.filament_max = 0.0
        self.absolute_xyz = True
        self.absolute_e = True
        self.feed = DEFAULT_FEED
        self.print_acceleration = self.travel_acceleration = DEFAULT_ACCELERATION
        self.max_acceleration = math.inf
        self.clock = MoveClock()
        self.low = (math.inf,) * 3
        self.high = (-math.inf,) * 3
        self.layer_z = None
        self.layers = 0
        self.layer_steps = {}        # a step between layers (0.01 mm) -> how often
        self.first_layer_z = None
        self.slicer = ''
        self.slicer_seconds = None
        self.settings = {}
        self.lines = self.code_lines = self.skipped_lines = 0

    def read_line(self, line):
        """One line of the file (bytes, at most MAX_LINE of them)."""
        self.lines += 1
        code, _, comment = line.partition(b';')
        if comment:
            self.read_comment(comment.strip())
        if b'(' in code:
            code = code.split(b'(', 1)[0]
        words = code.upper().split()
        if not words:
            return
        self.code_lines += 1
        command = words[0]
        if command.startswith(b'N') and len(words) > 1:  # a line number
            command, words = words[1], words[1:]
        if command in MOVES:
            self.move(words)
        else:
            self.other_command(command, words)

    def other_command(self, command, words):
        if command == b'G90':
            self.absolute_xyz = self.absolute_e = True
        elif command == b'G91':
            self.absolute_xyz = self.absolute_e = False
        elif command == b'M82':
            self.absolute_e = True
        elif command == b'M83':
            self.absolute_e = False
        elif command == b'G92':
            self.set_position(words)
        elif command == b'G4':
            self.dwell(words)
        elif command == b'M204':
            self.set_acceleration(words)
        elif command == b'M201':
            self.limit_acceleration(words)
        elif command == b'G28':
            self.clock.stop()

    def values(self, words):
        """{letter: finite number} of a command's words (others dropped)."""
        found = {}
        for word in words[1:]:
            try:
                value = float(word[1:])
            except ValueError:
                continue
            if -MAX_COORDINATE <= value <= MAX_COORDINATE:  # false for NaN and inf too
                found[word[:1]] = value
        return found

    def move(self, words):
        """G0/G1: the new position, the filament pushed, the move's time, the box and layers.
        (Unrolled over the axes: this runs for nearly every line of a file.)"""
        values = self.values(words)
        get = values.get
        feed = get(b'F')
        if feed is not None and feed > 0:
            self.feed = min(max(feed, MIN_FEED), MAX_FEED)
        x0, y0, z0 = start = self.position
        if self.absolute_xyz:
            x, y, z = get(b'X', x0), get(b'Y', y0), get(b'Z', z0)
        else:
            x, y, z = bounded(x0 + get(b'X', 0.0)), bounded(y0 + get(b'Y', 0.0)), bounded(z0 + get(b'Z', 0.0))
        self.position = (x, y, z)
        pushed = self.extrude(get(b'E'))
        dx, dy, dz = x - x0, y - y0, z - z0
        travel = math.sqrt(dx * dx + dy * dy + dz * dz)
        if travel > 0:
            direction = (dx / travel, dy / travel, dz / travel)
        elif pushed:
            travel, direction = abs(pushed), (0.0, 0.0, 0.0)
        else:
            return
        acceleration = min(self.print_acceleration if pushed > 0 else self.travel_acceleration,
                           self.max_acceleration)
        self.clock.add(travel, self.feed / 60.0, acceleration, direction)
        if pushed > 0 and (dx or dy):
            self.printed_at(start, self.position)

    def extrude(self, value):
        """E of a move: the filament it pushes (negative: a retraction)."""
        if value is None:
            return 0.0
        pushed = value - self.extruder if self.absolute_e else value
        self.extruder = value if self.absolute_e else self.extruder + value
        self.filament += pushed
        self.filament_max = max(self.filament_max, self.filament)
        return pushed

    def printed_at(self, start, end):
        """An extruding move in XY: the box grows, and a new height is a new layer."""
        self.low = tuple(map(min, self.low, start, end))
        self.high = tuple(map(max, self.high, start, end))
        z = end[2]
        if self.layer_z is not None and abs(z - self.layer_z) < 1e-6:
            return
        if self.layer_z is None:
            self.first_layer_z = z
        elif len(self.layer_steps) < MAX_STEPS or round(z - self.layer_z, 2) in self.layer_steps:
            step = round(z - self.layer_z, 2)
            self.layer_steps[step] = self.layer_steps.get(step, 0) + 1
        self.layer_z = z
        self.layers += 1

    def set_position(self, words):
        values = self.values(words)
        if b'E' in values:
            self.extruder = values[b'E']
        self.position = tuple(values.get(letter, old) for letter, old in zip((b'X', b'Y', b'Z'), self.position))

    def dwell(self, words):
        values = self.values(words)
        seconds = values.get(b'S', 0.0) + values.get(b'P', 0.0) / 1000.0
        self.clock.stop(max(seconds, 0.0))

    def set_acceleration(self, words):
        """M204 S (both), P (printing), T (travel); Marlin 2 names travel T and printing P."""
        values = {letter: value for letter, value in self.values(words).items() if value > 0}
        if b'S' in values:
            self.print_acceleration = self.travel_acceleration = values[b'S']
        self.print_acceleration = values.get(b'P', self.print_acceleration)
        self.travel_acceleration = values.get(b'T', self.travel_acceleration)

    def limit_acceleration(self, words):
        """M201: each axis's maximum; the slower of X and Y bounds a move in the plane."""
        limits = [value for letter, value in self.values(words).items() if letter in (b'X', b'Y') and value > 0]
        if limits:
            self.max_acceleration = min(limits)

    def read_comment(self, comment):
        """A comment the slicer writes: who it is, its estimate, a ``key = value`` setting."""
        if comment.startswith(b'generated by ') and not self.slicer:
            self.slicer = printable(comment[len(b'generated by '):].split(b' on ', 1)[0][:MAX_SLICER_NAME])
        elif comment.startswith(b'TIME:'):
            self.slicer_seconds = finite(comment[5:])
        elif comment.startswith(b'estimated printing time') and b'=' in comment:
            self.slicer_seconds = duration_seconds(comment.split(b'=', 1)[1])
        elif b' = ' in comment and len(self.settings) < MAX_SETTINGS:
            key, _, value = comment.partition(b' = ')
            if len(key) <= MAX_SETTING_KEY and key.replace(b'_', b'').isalnum() and len(value) <= MAX_SETTING_VALUE:
                self.settings[key.decode('ascii')] = printable(value)

    def finish(self):
        """Every move's time counted (the printer stops at the end)."""
        self.clock.stop()
        return self

    @property
    def layer_height(self):
        """The slicer's layer_height, else the most common step between layers."""
        named = finite(self.settings.get('layer_height', '').encode())
        if named:
            return named
        if not self.layer_steps:
            return self.first_layer_z if self.layers == 1 else None
        return max(self.layer_steps.items(), key=lambda item: item[1])[0]

    @property
    def filament_mm(self):
        return max(self.filament_max, 0.0)

    @property
    def filament_grams(self):
        """Weight of the filament: its volume at the file's diameter and density (PLA's without them)."""
        diameter = finite(self.settings.get('filament_diameter', '').split(',')[0].encode()) or \
            DEFAULT_FILAMENT_DIAMETER
        density = finite(self.settings.get('filament_density', '').split(',')[0].encode()) or \
            DEFAULT_FILAMENT_DENSITY
        return self.filament_mm * math.pi * (diameter / 2) ** 2 / 1000.0 * density

    @property
    def print_seconds(self):
        """The slicer's estimate where the file names one, else the moves'."""
        return self.slicer_seconds if self.slicer_seconds is not None else self.clock.seconds

    @property
    def box(self):
        """(low, high) corners of what is printed, or None when nothing is."""
        return None if self.low[0] == math.inf else (tuple(self.low), tuple(self.high))


def printable(raw):
    """Bytes from a comment as record-safe text: printable ASCII, trimmed."""
    text = raw.decode('ascii', 'replace')
    return ''.join(char if ' ' <= char < '\x7f' else '?' for char in text).strip()


def duration_seconds(text):
    """``1d 2h 3m 4s`` (PrusaSlicer's estimate) in seconds, or None."""
    seconds, units = 0.0, {b'd': 86400, b'h': 3600, b'm': 60, b's': 1}
    for word in text.split():
        value = finite(word[:-1])
        if value is None or word[-1:] not in units:
            return None
        seconds += value * units[word[-1:]]
    return seconds


def read_gcode_meta(path):
    """The GcodeMeta of the G-code file at ``path``, read streaming in bounded memory."""
    meta = GcodeMeta()
    with open(path, 'rb') as handle:
        while True:
            line = handle.readline(MAX_LINE)
            if not line:
                break
            if not line.endswith(b'\n') and len(line) == MAX_LINE:
                skip_rest_of_line(handle)
                meta.lines += 1
                meta.skipped_lines += 1
                continue
            meta.read_line(line)
    return meta.finish()


def skip_rest_of_line(handle):
    """Read past the end of an over-long line, MAX_LINE bytes at a time."""
    while True:
        piece = handle.readline(MAX_LINE)
        if not piece or piece.endswith(b'\n'):
            return


def number_text(value, digits=3):
    """A number as a record shows it: at most ``digits`` decimals, no trailing zeros."""
    return f'{value:.{digits}f}'.rstrip('0').rstrip('.') or '0'


def meta_fields(meta):
    """The record's fields of a GcodeMeta (``Field.GCODE_*``); only what the file tells."""
    fields = {Field.GCODE_LINES: meta.code_lines, Field.GCODE_LAYERS: meta.layers,
              Field.GCODE_PRINT_SECONDS: round(meta.print_seconds),
              Field.GCODE_MOVE_SECONDS: round(meta.clock.seconds),
              Field.GCODE_FILAMENT_MM: number_text(meta.filament_mm, 1),
              Field.GCODE_FILAMENT_GRAMS: number_text(meta.filament_grams, 2)}
    if meta.layer_height:
        fields[Field.GCODE_LAYER_HEIGHT] = number_text(meta.layer_height)
    if meta.box:
        fields[Field.GCODE_BOX] = ','.join(number_text(value) for value in meta.box[0] + meta.box[1])
    if meta.slicer:
        fields[Field.GCODE_SLICER] = meta.slicer
    # A value with commas (one per extruder: 1.75,1.75) shows them as / in the comma-separated list.
    shown = [f"{key}={meta.settings[key].replace(',', '/')}" for key in SHOWN_SETTINGS if meta.settings.get(key)]
    if shown:
        fields[Field.GCODE_SETTINGS] = ','.join(shown)
    if meta.skipped_lines:
        fields[Field.GCODE_SKIPPED_LINES] = meta.skipped_lines
    return {key: str(value) for key, value in fields.items()}


def gcode_fields(path):
    """The record's G-code fields of the file at ``path``; {} when it cannot be read."""
    try:
        return meta_fields(read_gcode_meta(path))
    except OSError:
        return {}
