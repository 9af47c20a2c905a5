"""How far a tool has come, read from its own output.

A service's conf names the reader its tool needs (``progress = povray``);
each reader is a table here, so a new tool needs a conf line and, at most,
one reader in ``READERS``::

    povray    "Rendered 1234 of 307200 pixels (0%)" (\\r-updated): a fraction
    slic3r    "=> Generating skirt": a stage
    openscad  "Compiling design (CSG Products normalization)...": a stage
    openjscad "converting cube.jscad -> cube.stl": its one stage
    percent   any line with "NN%": a fraction of 100, for a tool without a reader

A rule matches the start of one line (a piece between ``\\r`` and ``\\n``: a
tool that redraws its line with ``\\r`` reports on every piece) and says the
stage the tool is in; a rule with a pattern also reads a fraction from it,
``done`` of ``total`` (or a ``percent`` of 100).  Stage names are this
module's own words, never the tool's text: a line such as "Exporting G-code
to /job/tasks/out/ID.gcode" names a path of the server's.

``OutputProgress`` follows one run's output and hands each stage it sees,
and the newest fraction of each piece of output, to a ``report`` callback
(the runner's ``events.ProgressEvents``).
"""

from .names import LazyPattern

# A line longer than this is no progress line: passed over unread (a tool
# that writes megabytes without a line break costs no regular expression).
LINE_MAX = 256
# What stands for the start of a line too long to keep: the rest of it,
# when it comes, is passed over with it.
LONG_LINE = b'.' * (LINE_MAX + 1)


class Rule:
    """Lines starting with ``prefix`` mean ``stage``; with a ``pattern`` they
    also give a fraction (groups ``done`` and ``total``, or ``percent``).
    ``marker``: bytes every such line holds (default: the prefix), so that
    output without any is passed over in one search."""
    __slots__ = ('prefix', 'stage', 'pattern', 'marker')

    def __init__(self, prefix, stage, pattern=None, marker=None):
        self.prefix, self.stage = prefix, stage
        self.pattern = LazyPattern(pattern) if pattern else None
        self.marker = marker or prefix

    def fraction(self, line):
        """(done, total) of a line this rule matches, or None."""
        found = self.pattern.search(line) if self.pattern else None
        if not found:
            return None
        groups = found.groupdict()
        if groups.get('percent') is not None:
            return min(int(float(groups['percent'])), 100), 100
        done, total = int(groups['done']), int(groups['total'])
        return (done, total) if 0 <= done <= total else None


class Reader:
    """One tool's progress reader: its rules, the stage it is in before it
    says anything (OpenSCAD 2021.01 says nothing while it renders), and the
    environment that makes it write its output as it goes rather than at
    its end (Slic3r is Perl, and Perl buffers a pipe)."""

    def __init__(self, name, rules, first_stage, env=None):
        self.name, self.rules, self.first_stage = name, tuple(rules), first_stage
        self.prefixes = tuple(rule.prefix for rule in self.rules)
        self.markers = tuple(rule.marker for rule in self.rules)
        self.env = tuple(sorted((env or {}).items()))  # (name, value) pairs: a reader is never changed

    def has_fraction(self):
        """True when the tool tells its own fraction (else the time left comes from history)."""
        return any(rule.pattern for rule in self.rules)

    def may_tell(self, data):
        """False when ``data`` holds no line any rule could match (most of a
        chatty tool's output: no line of it is looked at)."""
        return any(marker in data for marker in self.markers)

    def read(self, line):
        """(stage, fraction or None) a line says, or None for any other line."""
        if not line.startswith(self.prefixes):  # one C-level test for most lines
            return None
        for rule in self.rules:
            if line.startswith(rule.prefix):
                return rule.stage, rule.fraction(line)
        return None


POVRAY = Reader('povray', [
    Rule(b'==== [Parsing...]', 'parsing'),
    Rule(b'Performing radiosity pretrace: ', 'radiosity pretrace',
         rb'(?P<done>[0-9]{1,12}) of (?P<total>[0-9]{1,12}) pixels'),
    Rule(b'==== [Rendering...]', 'rendering'),
    Rule(b'Rendered ', 'rendering', rb'\ARendered (?P<done>[0-9]{1,12}) of (?P<total>[0-9]{1,12}) pixels'),
], first_stage='parsing')

# Slic3r 1.3's stages, as its status callback names them (it prints them in
# the order it reaches them, which is not the order of this list).
SLIC3R = Reader('slic3r', [
    Rule(b'=> Processing triangulated mesh', 'processing triangulated mesh'),
    Rule(b'=> Generating perimeters', 'generating perimeters'),
    Rule(b'=> Preparing infill', 'preparing infill'),
    Rule(b'=> Infilling layers', 'infilling layers'),
    Rule(b'=> Generating support material', 'generating support material'),
    Rule(b'=> Generating skirt', 'generating skirt'),
    Rule(b'=> Generating brim', 'generating brim'),
    Rule(b'=> Exporting G-code', 'exporting G-code'),
    Rule(b'=> Exporting SVG', 'exporting SVG'),
    Rule(b'=> Running post-processing scripts', 'post-processing'),
], first_stage='slicing',
    # "use 5; $| = 1;": Perl's stdout flushed at every print, so each stage
    # reaches the log when Slic3r reaches it (perlrun: -M in PERL5OPT).
    env={'PERL5OPT': '-M5;$|=1'})

# OpenSCAD 2021.01 on the command line prints its statistics once the model
# is rendered, then exports; later versions also name their stages.
OPENSCAD = Reader('openscad', [
    Rule(b'Parsing design', 'parsing'),
    Rule(b'Compiling design', 'compiling'),
    Rule(b'Rendering Polygon Mesh', 'rendering'),
    Rule(b'Geometries in cache', 'exporting'),
    Rule(b'Total rendering time', 'exporting'),
], first_stage='rendering')

# @jscad/cli 1 says once what it converts, and nothing more until its end:
# a stage to hang the time left on.
OPENJSCAD = Reader('openjscad', [
    Rule(b'converting ', 'converting'),
], first_stage='converting')

PERCENT = Reader('percent', [
    Rule(b'', 'running', rb'(?P<percent>[0-9]{1,3}(?:\.[0-9]+)?) ?%', marker=b'%'),
], first_stage='running')

READERS = (POVRAY, SLIC3R, OPENSCAD, OPENJSCAD, PERCENT)


def reader_named(name):
    """The reader a conf's ``progress = NAME`` names; ValueError for an unknown one."""
    for reader in READERS:
        if reader.name == name:
            return reader
    known = ', '.join(sorted(reader.name for reader in READERS))
    raise ValueError(f'progress must be one of {known}, got {name!r}')


class OutputProgress:
    """A tool's output, followed for its progress as it comes in pieces.

    ``report(stage, fraction)`` hears of every stage change and, for each
    piece of output, of its newest fraction (an earlier one in the same
    piece is already old news)."""

    def __init__(self, reader, report):
        self.reader, self.report = reader, report
        self.carry = b''   # the start of a line the next piece ends
        self.stage = None

    def feed(self, data):
        """Read the lines a piece of output completes."""
        data = self.carry + data
        cut = max(data.rfind(b'\n'), data.rfind(b'\r')) + 1
        self.carry = data[cut:] if len(data) - cut <= LINE_MAX else LONG_LINE
        newest = None
        lines = data[:cut].replace(b'\r', b'\n').split(b'\n') if self.reader.may_tell(data[:cut]) else ()
        for line in lines:
            found = self.reader.read(line) if 0 < len(line) <= LINE_MAX else None
            if found:
                newest = self.take(found, newest)
        if newest:
            self.report(*newest)

    def take(self, found, newest):
        """A stage change is reported at once; a fraction waits for the
        piece's end (the newest wins).  The newest fraction as it is now."""
        stage, fraction = found
        if stage != self.stage:
            if newest:
                self.report(*newest)
            self.stage, newest = stage, None
            if fraction is None:
                self.report(stage, None)
        return (stage, fraction) if fraction else newest

    def finish(self):
        """The tool has ended: a last line without its line break is read too."""
        if self.carry and self.carry != LONG_LINE:
            self.feed(b'\n')
