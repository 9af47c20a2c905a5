"""A tool's output on its way into the task's log, within ``maxLogSize``.

The tool writes to a pipe; the runner hands what comes to a ``ToolLog``.
The first half of the limit goes into the log as it comes (a live watcher
sees it); past it the output is only kept in memory, the newest half of the
limit of it, and when the tool has ended one line says how much was cut and
the end follows.  A tool that prints 500 MB leaves a log of about
``maxLogSize`` with its start and its end: what went wrong is usually at
one of the two.
"""

from .limits import format_size

# The end of the output that judging a failure looks at (out of memory?).
TAIL_BYTES = 8192
# The end is kept in the runner's memory: at most half the limit and this.
TRIM_SLACK = 1 << 20


class ToolLog:
    """Writes a tool's output to its log (a binary file open for appending),
    keeping the start and the end of it within ``limit`` bytes."""

    def __init__(self, log, limit):
        self.log, self.limit = log, limit
        self.head_left = limit - limit // 2
        self.tail = bytearray()  # what came after the head: its newest limit // 2 bytes
        self.cut = 0
        self.recent = b''

    def write(self, data):
        """Take the next bytes of the tool's output."""
        self.recent = (self.recent + data)[-TAIL_BYTES:]
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
