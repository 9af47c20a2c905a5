"""A tool's output on its way into the task's log, within ``maxLogSize``.

The tool writes to a pipe; the runner hands what comes to a ``ToolLog``.
The first half of the limit goes into the log as it comes (a live watcher
sees it); past it the output is only kept in memory, the newest half of the
limit of it, and when the tool has ended one line says how much was cut and
the end follows.  A tool that prints 500 MB leaves a log of about
``maxLogSize`` with its start and its end: what went wrong is usually at
one of the two.

A line a tool redraws with carriage returns (POV-Ray's "Rendered 1234 of
307200 pixels (0%)", hundreds of times a render) keeps only its last state
(``OverwrittenLines``): the log shows what a terminal would have shown, and
the event log holds the progress.
"""

from .limits import format_size

# The end of the output that judging a failure looks at (out of memory?).
TAIL_BYTES = 8192
# The end is kept in the runner's memory: at most half the limit and this.
TRIM_SLACK = 1 << 20


# A line held back this long without a line break or carriage return goes
# into the log as it is (a tool that never ends its line cannot fill memory).
PENDING_MAX = 64 * 1024


class OverwrittenLines:
    """A tool's output with the states a carriage return overwrote left out:
    of ``a\rb\rc\n`` only ``c\n`` stays (an empty last state, ``c\r\n``,
    keeps the one before it).  A line being written is held back until it
    ends, as its last state only."""

    def __init__(self):
        self.pending = b''       # the line being written: its last state so far
        self.overwritten = False  # a carriage return has overwritten part of it

    def feed(self, data):
        """The bytes of ``data`` (and what was held back) that may go into the log now."""
        data = self.pending + data
        end = data.rfind(b'\n') + 1
        done, self.pending = data[:end], data[end:]
        if b'\r' in done:
            done = b''.join(self.last_state(line + b'\n') for line in done[:-1].split(b'\n'))
        if done:
            self.overwritten = False  # the line it was about has ended
        if b'\r' in self.pending:
            self.hold_last_state()
        if len(self.pending) > PENDING_MAX:
            done, self.pending, self.overwritten = done + self.pending, b'', False
        return done

    def last_state(self, line):
        """One whole line as it stands after its carriage returns."""
        states = [state for state in line.rstrip(b'\n').split(b'\r') if state]
        if len(states) < 2 and not self.overwritten:
            return line  # a CRLF line end, or no \r at all: as it was
        self.overwritten = False
        return (states[-1] if states else b'') + b'\n'

    def hold_last_state(self):
        """Keep of the line being written only its last state (and the carriage
        return after it: a CRLF line end shows the state before it)."""
        states = self.pending.split(b'\r')
        kept = [state for state in states if state]
        if len(kept) > 1 or (kept and self.pending.count(b'\r') > 1):
            self.overwritten = True
        self.pending = (kept[-1] if kept else b'') + (b'\r' if self.pending.endswith(b'\r') else b'')

    def close(self):
        """What was held back, as its last state (the tool has ended)."""
        rest, self.pending = self.pending, b''
        return self.last_state(rest).rstrip(b'\n') if self.overwritten else rest


class ToolLog:
    """Writes a tool's output to its log (a binary file open for appending),
    keeping the start and the end of it within ``limit`` bytes."""

    def __init__(self, log, limit):
        self.log, self.limit = log, limit
        self.head_left = limit - limit // 2
        self.tail = bytearray()  # what came after the head: its newest limit // 2 bytes
        self.cut = 0
        self.recent = b''
        self.lines = OverwrittenLines()

    def write(self, data):
        """Take the next bytes of the tool's output."""
        self.recent = (self.recent + data)[-TAIL_BYTES:]
        self.keep(self.lines.feed(data))

    def keep(self, data):
        """Bytes for the log: its head as they come, then its tail in memory."""
        head, rest = data[:self.head_left], data[self.head_left:]
        if head:
            self.head_left -= len(head)
            self._put(head)
        if rest:
            self.tail += rest
            if len(self.tail) > self.limit // 2 + TRIM_SLACK:  # trimmed now and then, not on every write
                self._trim()

    def _trim(self):
        excess = len(self.tail) - self.limit // 2
        if excess > 0:
            del self.tail[:excess]
            self.cut += excess

    def close(self):
        """The tool has ended: the line saying what was cut, then the end of its output."""
        self.keep(self.lines.close())
        self._trim()
        tail = bytes(self.tail)
        if self.cut:
            line_start = tail.find(b'\n') + 1  # the end starts with a whole line
            self.cut += line_start
            tail = tail[line_start:]
            exact = f' ({self.cut} bytes)' if self.cut >= 1024 else ''
            self._put(f'\nrrcloud: {format_size(self.cut)}{exact} of the tool\'s output cut here '
                      f'(maxLogSize {format_size(self.limit)})\n'.encode())
        self._put(tail)
        self.tail = bytearray()

    def _put(self, data):
        """Into the log file; a log that cannot be written (a full disk) loses
        the bytes, never the runner: the tool is still watched and judged."""
        try:
            self.log.write(data)
            self.log.flush()
        except OSError:
            pass

    def last_bytes(self):
        """The end of the output, for a look at why the tool failed."""
        return self.recent
