"""A task's live stream: its event log and its tool's log as one sequence of
messages, each with a cursor, for Server-Sent Events and ``rrcloud watch``.

Two files feed it: ``tasks/events/ID`` (status, progress, notes, steps; see
rrc/events.py) and ``tasks/log/ID`` (what the tool writes).  A message is
either an event of the event log, sent as it is stored::

    {"id":3,"t":1712345680.512,"kind":"progress","data":{"done":120,"total":400,"percent":30.0,"eta":5.8}}

or one line of the tool's log (no ``id``: the log has none)::

    {"kind":"log","t":1712345680.6,"data":{"text":"Rendering Polygon Mesh using CGAL..."}}

The cursor ``E.L`` says how far a client got: every event up to id ``E``
and the log up to byte ``L``.  Each message carries the cursor just after
it, so a client that comes back with it (SSE's ``Last-Event-ID``) gets every
later message and none twice.  ``E`` alone means "the log from its start".

A log line is cut at LOG_LINE_MAX bytes (the rest follows as the next line),
its control characters shown as ``?``, the task's stored input paths as
the names its client sent them with (rrc/inputnames.py); the last line of a
finished task's log is sent even without its newline.  A job (``service: pipe``) has no log
of its own: only its events (its ``step`` events say what its steps do).

The stream ends with the task's final status event (complete or failed).
A task whose record has ended while its event log never said so (a store
from before event logs, a log cut by a power cut) ends with a status
message made from its record, under the cursor it already had.
"""

import os
import time

from .events import LOG, STATUS, EventFollower
from .inputnames import LogNames
from .schema import JOB_SERVICE, Field, TaskStatus

FINAL_STATUSES = (TaskStatus.COMPLETE, TaskStatus.FAILED)
# The text of one log message at most (a tool that draws a progress bar with
# \r and never a newline is sent in pieces).
LOG_LINE_MAX = 1000
# What one look at the log reads at most (a stream catching up reads in steps).
LOG_READ_MAX = 64 * 1024
# A cursor is two numbers; anything longer is no cursor of ours.
CURSOR_MAX = 40
# Like EventFollower: look at the files soon after a change, then less often.
POLL_FIRST_DELAY = 0.005
POLL_MAX_DELAY = 0.025
# How often the record is read to see a task that ended without its event.
RECORD_CHECK_SECONDS = 1.0


class Cursor:
    """How far a client got: the last event id, the log's byte offset."""
    __slots__ = ('event_id', 'log_offset')

    def __init__(self, event_id=0, log_offset=0):
        self.event_id, self.log_offset = event_id, log_offset

    def __str__(self):
        return f'{self.event_id}.{self.log_offset}'

    def __eq__(self, other):
        return isinstance(other, Cursor) and (self.event_id, self.log_offset) == (other.event_id, other.log_offset)

    def __repr__(self):
        return f'Cursor({self})'


def parse_cursor(text):
    """A Cursor from ``E.L`` or ``E`` (a client's Last-Event-ID); ValueError when it is neither."""
    text = text.strip()
    events, dot, log = text.partition('.')
    if len(text) > CURSOR_MAX or not events.isdigit() or not events.isascii() \
            or (dot and not (log.isdigit() and log.isascii())):
        raise ValueError(f'not a cursor of this stream (EVENTID.LOGOFFSET): {text[:CURSOR_MAX]!r}')
    return Cursor(int(events), int(log) if dot else 0)


class Message:
    """One message of the stream: its kind, its JSON text, the cursor after it;
    ``final``: the task's last status (the stream ends with it)."""
    __slots__ = ('kind', 'json', 'cursor', 'data', 'final')

    def __init__(self, kind, json_text, cursor, data, final=False):
        self.kind, self.json, self.cursor, self.data, self.final = kind, json_text, cursor, data, final

    def __repr__(self):
        return f'Message({self.cursor}, {self.kind!r}, {self.data!r})'


def is_final(kind, data):
    """True for the status event of a task's end."""
    return kind == STATUS and data.get(Field.STATUS) in FINAL_STATUSES


class LiveStream:
    """The messages of one task from ``cursor`` on; read() gives what came since the last read."""

    def __init__(self, store, record, read_record, cursor=None):
        """``read_record()``: the task's record as it is now (judged: a dead
        runner's task is not busy), NotFound once it is gone."""
        self.store, self.task_id, self.read_record = store, record[Field.ID], read_record
        self.cursor = cursor or Cursor()
        self.events = EventFollower(store, self.task_id, after=self.cursor.event_id)
        self.log_path = None if record.get(Field.SERVICE) == JOB_SERVICE else store.log_path(self.task_id)
        # A log line names the client's files, never the store's (its cursor
        # still counts the log's own bytes); made when the first line comes,
        # from the record as it is then (a pipeline step gets its input late).
        self.log_names = None
        self.ended = False
        self.record_checked = time.monotonic()

    def changed(self):
        """True when either file holds more than was read."""
        return self.events.changed() or (self.log_path is not None and self._log_size() > self.cursor.log_offset)

    def _log_size(self):
        try:
            return os.stat(self.log_path).st_size
        except FileNotFoundError:
            return 0

    def read(self):
        """The messages since the last read: events, then the log's new lines
        (a task's first status comes before its tool's output), the final
        status event last (after every line the tool wrote)."""
        if self.ended:
            return []
        events = self.events.read()
        end = next((n for n, e in enumerate(events) if is_final(e.kind, e.data)), None)
        final = [] if end is None else [events[end]]
        messages = [self._event_message(event) for event in events[:end]]
        messages += self._log_messages(final=end is not None)
        messages += [self._event_message(event) for event in final]
        self.ended = end is not None
        return messages

    def _event_message(self, event):
        self.cursor = Cursor(event.id, self.cursor.log_offset)
        return Message(event.kind, event_json(event), self.cursor, event.data,
                       final=is_final(event.kind, event.data))

    def _log_messages(self, final):
        """The log's new complete lines (all of it when the task has ended)."""
        messages = []
        while self.log_path is not None:
            chunk = self._read_log()
            lines, used = split_log(chunk, final and len(chunk) < LOG_READ_MAX)
            if lines and self.log_names is None:
                self.log_names = self._log_names()
            for line, size in lines:
                self.cursor = Cursor(self.cursor.event_id, self.cursor.log_offset + size)
                data = {'text': self.log_names.shown(line)}
                messages.append(Message(LOG, log_json(data), self.cursor, data))
            if not used or len(chunk) < LOG_READ_MAX:
                break
        return messages

    def _log_names(self):
        """The client's names of the task's inputs, from its record as it is now."""
        from .errors import NotFound
        try:
            return LogNames(self.read_record(), self.store.root)
        except NotFound:  # removed while followed: no names, its lines as they are
            return LogNames({}, self.store.root)

    def _read_log(self):
        try:
            with open(self.log_path, 'rb') as log:
                return os.pread(log.fileno(), LOG_READ_MAX, self.cursor.log_offset)
        except FileNotFoundError:
            return b''

    def wait(self, timeout):
        """The next messages, waiting up to ``timeout`` seconds for some."""
        deadline = time.monotonic() + timeout
        delay = POLL_FIRST_DELAY
        while not self.ended:
            if self.changed():
                messages = self.read()
                if messages:
                    return messages
            if time.monotonic() - self.record_checked >= RECORD_CHECK_SECONDS:
                messages = self.end_from_record()
                if messages:
                    return messages
            left = deadline - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(delay, left))
            delay = min(delay * 1.5, POLL_MAX_DELAY)
        return []

    def end_from_record(self):
        """A task that ended without a final status event: its end, from its record."""
        from .errors import NotFound
        self.record_checked = time.monotonic()
        try:
            record = self.read_record()
        except NotFound:  # removed (expired) while followed: nothing more will come
            self.ended = True
            return []
        if record.get(Field.STATUS) not in FINAL_STATUSES:
            return []
        messages = self.read()  # the final event may have come since the last look
        if self.ended:
            return messages
        data = {key: record[key] for key in (Field.STATUS, Field.ERROR) if record.get(key)}
        if str(record.get(Field.EXIT_CODE, '')).lstrip('-').isdigit():
            data[Field.EXIT_CODE] = int(record[Field.EXIT_CODE])
        messages += self._log_messages(final=True)
        self.ended = True
        import json
        text = json.dumps({'t': round(time.time(), 3), 'kind': STATUS, 'data': data}, separators=(',', ':'))
        return messages + [Message(STATUS, text, self.cursor, data, final=True)]


def event_json(event):
    """An event as its line in the event log says it."""
    import json
    return json.dumps({'id': event.id, 't': event.time, 'kind': event.kind, 'data': event.data},
                      separators=(',', ':'), ensure_ascii=True)


def log_json(data):
    import json
    return json.dumps({'kind': LOG, 't': round(time.time(), 3), 'data': data},
                      separators=(',', ':'), ensure_ascii=True)


def split_log(chunk, final):
    """([(text, bytes it took)], bytes used) of the complete lines of ``chunk``;
    a piece of LOG_LINE_MAX bytes without a newline counts as a line, and
    with ``final`` so does the rest."""
    lines, used = [], 0
    while used < len(chunk):
        newline = chunk.find(b'\n', used, used + LOG_LINE_MAX + 1)
        if newline >= 0:
            end, size = newline, newline + 1 - used
        elif len(chunk) - used > LOG_LINE_MAX:
            end = utf8_boundary(chunk, used + LOG_LINE_MAX, used)
            size = end - used
        elif final:
            end = size = len(chunk) - used
            end += used
        else:
            break
        lines.append((shown_text(chunk[used:end]), size))
        used += size
    return lines, used


def utf8_boundary(data, position, start):
    """``position`` moved back to the first byte of the UTF-8 character it
    falls in (a line cut there keeps the character whole), never to ``start``."""
    cut = position
    while cut > start and cut > position - 4 and 0x80 <= data[cut] < 0xC0:
        cut -= 1
    return cut if cut > start else position


def shown_text(raw):
    """A log line as text: UTF-8 (bad bytes as U+FFFD), control characters as ``?``."""
    text = raw.decode('utf-8', 'replace').rstrip('\r')
    return ''.join(c if c.isprintable() or c == '\t' else '?' for c in text)
