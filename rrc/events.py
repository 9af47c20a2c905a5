"""The event log of a task: ``tasks/events/ID``, one JSON event per line, appended only.

A line is ``{"id":N,"t":SECONDS,"kind":KIND,"data":{...}}`` in that key order,
ASCII only, at most EVENT_LINE_MAX bytes::

    {"id":1,"t":1712345678.123,"kind":"status","data":{"status":"busy","queued":true}}
    {"id":2,"t":1712345678.170,"kind":"status","data":{"status":"busy"}}
    {"id":3,"t":1712345680.512,"kind":"progress","data":{"done":120,"total":400,"percent":30.0,"eta":5.8}}
    {"id":4,"t":1712345683.040,"kind":"note","data":{"text":"task ... killed by 127.0.0.1 (HTTP)"}}
    {"id":5,"t":1712345683.041,"kind":"status","data":{"status":"failed","error":"killed"}}

Kinds: ``status`` (each write of a record's status: submitted, started,
ended; ``queued``, ``error`` and ``exitCode`` when the record has them),
``progress`` (``done``/``total`` and ``percent``, a fraction; ``stage``, the
stage the tool named, ``{"stage":"generating skirt","eta":12.5}``; ``eta``,
seconds left, once a rate is known or from the service's usual run time),
``note`` (rrcloud's own remarks: refusals, timeouts, kills,
the printer sender's), ``step`` (in a pipeline job's log: one of its steps
changed state, ``{"step":2,"id":ID,"service":"slic3r","state":"running"}``)
and ``log`` (a line of the tool's output, left to the event stream).

``id`` counts from 1 per task, without gaps, in file order: a writer holds an
flock on the file while it reads the last id and appends its line with one
write().  So an event stream (``text/event-stream``) sends ``id: N``, and a
client that comes back with ``Last-Event-ID: N`` gets ``read_events(...,
after=N)``: every later event, none twice.

Events are never fsynced (a Raspberry Pi's SD card would pay for each
progress event): the record stays the durable truth, the log may lose its
last lines in a power cut, and readers skip a torn line.  A file is bounded:
progress slows down past EVENT_FILE_SOFT_BYTES and stops, with notes, at
EVENT_FILE_MAX_BYTES; status events are always written, so a reader always
sees a task end.
"""

import os
import time

from .names import check_task_id, is_task_id
from .printers import PRINTER_STATE_FIELDS
from .schema import Field, TaskStatus


EVENTS_FOLDER = 'events'
STATUS, PROGRESS, NOTE, LOG, STEP = 'status', 'progress', 'note', 'log', 'step'
# Far under PIPE_BUF (4096): one write() is one line, never interleaved.
EVENT_LINE_MAX = 1024
EVENT_TEXT_MAX = 400
# A print of hours sends progress every half second; past the soft size it
# goes every PROGRESS_SLOW_INTERVAL, past the hard one only status is written.
EVENT_FILE_SOFT_BYTES = 1024 * 1024
EVENT_FILE_MAX_BYTES = 4 * 1024 * 1024
PROGRESS_EVENT_INTERVAL = 0.5
PROGRESS_SLOW_INTERVAL = 15.0
# A tool names a handful of stages; each is written as it comes, up to this
# many (a tool that names stages in a loop then waits for the interval).
STAGE_EVENTS_AT_ONCE = 32
LOG_FULL_NOTE = 'the event log is full: later progress and notes are left out'
# How far back from the end the last id is looked for: a few lines.
TAIL_BYTES = 4 * EVENT_LINE_MAX
ID_PREFIX = b'{"id":'
# Followers look at the file's size: soon after a change, then less often.
FOLLOW_FIRST_DELAY = 0.005
FOLLOW_MAX_DELAY = 0.025
# A follower looks every FOLLOW_FIRST_DELAY for this long after it began: a
# short task (a small render, most of a wrapper's tasks) ends within it, and
# its held POST or long-poll answers 5 ms after the end at most, not 25.
FOLLOW_FAST_SECONDS = 2.0


def events_path(store, task_id):
    return os.path.join(store.folder(EVENTS_FOLDER), check_task_id(task_id))


# -- writing ------------------------------------------------------------------

def append_event(store, task_id, kind, data):
    """Append one event; returns (its id, the file's size after it), or None
    when it was left out (file full) or could not be written.

    An event log is a view for watchers, never the record: a full disk or a
    removed store must not fail the task whose event it is.
    """
    try:
        fd = _open_for_append(events_path(store, task_id))
    except OSError:
        return None
    try:
        import fcntl
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close
        size = os.fstat(fd).st_size
        last_id, last_line, clean = _tail_of(fd, size)
        if size >= EVENT_FILE_MAX_BYTES and kind != STATUS:
            if LOG_FULL_NOTE.encode() in last_line:  # said once
                return None
            kind, data = NOTE, {'text': LOG_FULL_NOTE}
        line = encode_event(last_id + 1, time.time(), kind, data)
        os.write(fd, line if clean else b'\n' + line)  # a torn last line stays alone
        return last_id + 1, size + len(line) + (0 if clean else 1)
    except OSError:
        return None
    finally:
        os.close(fd)


def _open_for_append(path):
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC  # read: the last id
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:  # a store made before event logs: the folder comes on demand
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o644)


def _tail_of(fd, size):
    """(last id, last complete line, ends with a newline) of an event file."""
    if size == 0:
        return 0, b'', True
    start = max(0, size - TAIL_BYTES)
    chunk = os.pread(fd, size - start, start)
    lines = chunk.split(b'\n')
    clean = chunk.endswith(b'\n')
    complete = lines[:-1] if start == 0 else lines[1:-1]  # the first may be cut
    for line in reversed(complete):
        number = event_id_of(line)
        if number is not None:
            return number, line, clean
    # Nothing readable near the end (a crash left garbage): count the whole file.
    whole = os.pread(fd, size, 0).split(b'\n')
    ids = [n for n in map(event_id_of, whole) if n is not None]
    return (max(ids) if ids else 0), b'', clean


def encode_event(number, when, kind, data):
    """One event line (bytes, ending in a newline); over-long text is cut."""
    import json
    data = {key: (value[:EVENT_TEXT_MAX] if isinstance(value, str) else value) for key, value in data.items()}
    event = {'id': number, 't': round(when, 3), 'kind': kind, 'data': data}
    line = json.dumps(event, separators=(',', ':'), ensure_ascii=True).encode() + b'\n'
    if len(line) > EVENT_LINE_MAX:
        event['data'] = {'cut': True}
        line = json.dumps(event, separators=(',', ':')).encode() + b'\n'
    return line


def status_changed(store, record):
    """The hook of every write of a record's status: its status event.
    Returns ``record`` (None, a write that did not happen, gives no event)."""
    if record:
        data = {Field.STATUS: str(record.get(Field.STATUS, ''))}
        for flag in (Field.QUEUED, Field.SUSPENDED, Field.WAITING):  # the busy states beside running
            if record.get(flag):
                data[flag] = True
        if record.get(Field.ERROR):
            data[Field.ERROR] = record[Field.ERROR]
        code = str(record.get(Field.EXIT_CODE, ''))
        if code.lstrip('-').isdigit():
            data[Field.EXIT_CODE] = int(code)
        append_event(store, record[Field.ID], STATUS, data)
        if record.get(Field.JOB) and is_task_id(record[Field.JOB]):
            step_changed(store, record, data)
    return record


def step_changed(store, record, status):
    """A pipeline step's status event, repeated in its job's log as a ``step``
    event: a job's watcher follows one log and sees every step move."""
    flags = [flag for flag in (Field.QUEUED, Field.SUSPENDED, Field.WAITING) if status.get(flag)]
    state = flags[0] if flags else ('running' if status[Field.STATUS] == TaskStatus.BUSY else status[Field.STATUS])
    data = {'step': int(record.get(Field.STEP) or 0), 'id': record[Field.ID],
            Field.SERVICE: str(record.get(Field.SERVICE, '')), 'state': state}
    for key in (Field.ERROR, Field.EXIT_CODE):
        if key in status:
            data[key] = status[key]
    append_event(store, record[Field.JOB], STEP, data)


def note(store, task_id, text):
    """A remark of rrcloud's own about a task (what its log says too)."""
    append_event(store, task_id, NOTE, {'text': text})


class ProgressEvents:
    """A task's progress into its event log: at most one event per interval
    (a chatty sender cannot fill the disk), with percent and time left.

    A report is a fraction (``done`` of ``total``), a stage the tool named,
    or both.  A new stage is written at once (a tool has a handful; past
    STAGE_EVENTS_AT_ONCE they wait for the interval too).  Time left comes
    from the fraction's rate; where there is none yet, from ``usual``, the
    seconds this service's tasks usually take (``history.usual_run_time``).
    """

    def __init__(self, store, task_id, clock=time.monotonic, usual=None, print_seconds=None):
        import json  # noqa: F401  (the runner makes one while its tool runs: the final
        # status event then does not pay for the import after the tool ended)
        self.store, self.task_id, self.clock, self.usual = store, task_id, clock, usual
        self.started = clock()
        self.newest = None      # (done, total, stage) last reported
        self.written = None     # (done, total, stage) last written
        self.written_at = None  # clock of the last write
        self.first = None       # (clock, done) of the stage's first fraction: the rate comes from it
        self.size = 0           # the file's size after our last write
        self.stages = 0         # stage changes written at once
        self.print_seconds = print_seconds if print_seconds and print_seconds > 0 else None
        self.printer = {}       # a print's printer state (temperatures, layer, ...), newest
        self.printer_written = {}

    def report(self, done, total, stage=None, printer=None):
        """Take a fraction (``stage``: of that stage; ``printer``: a print's
        printer state); it is written now if its interval is over, else
        later by flush()."""
        if printer is not None:
            self.printer = dict(printer)
        stage = stage if stage is not None else self.stage()
        if self.first is None or stage != self.stage():
            self.first = (self.clock(), done)
        self.newest = (done, total, stage)
        self.flush()

    def report_stage(self, stage):
        """Take a stage the tool named: what it did before, and its fraction, are over."""
        if self.newest is None or stage != self.stage() or self.newest[1] is not None:
            self.first = None
            self.newest = (None, None, stage)
            self.flush()

    def stage(self):
        return self.newest[2] if self.newest else None

    def due_in(self):
        """Seconds until the pending report may be written (None: nothing pends)."""
        if self.newest is None or (self.newest == self.written and self.printer == self.printer_written):
            return None
        if self.written_at is None or self.is_new_stage():
            return 0.0
        return max(0.0, self.written_at + self.interval() - self.clock())

    def is_new_stage(self):
        """True for a stage not yet written, while stages may still go at once."""
        return (self.stages < STAGE_EVENTS_AT_ONCE and self.size < EVENT_FILE_SOFT_BYTES
                and (self.written is None or self.newest[2] != self.written[2]))

    def interval(self):
        return PROGRESS_EVENT_INTERVAL if self.size < EVENT_FILE_SOFT_BYTES else PROGRESS_SLOW_INTERVAL

    def flush(self, force=False):
        """Write the pending report when it is due (``force``: now, e.g. when the tool ended)."""
        due = self.due_in()
        if due is None or (due > 0 and not force):
            return
        self.stages += 1 if self.is_new_stage() else 0
        written = append_event(self.store, self.task_id, PROGRESS, self.data(*self.newest))
        self.written, self.written_at = self.newest, self.clock()
        self.printer_written = self.printer
        if written:
            self.size = written[1]

    def data(self, done, total, stage=None):
        data = {} if total is None else self.fraction_data(done, total)
        if stage:
            data['stage'] = stage
        if 'eta' not in data and self.usual:
            left = self.usual - (self.clock() - self.started)
            if left > 0:
                data['eta'] = round(left, 1)
        if self.printer:
            data['printer'] = dict(self.printer)
            data['elapsed'] = round(self.clock() - self.started, 1)
        return data

    def fraction_data(self, done, total):
        data = {'done': done, 'total': total}
        if total > 0:
            data['percent'] = round(100.0 * done / total, 1)
        started, first_done = self.first
        if total > 0 and self.print_seconds:  # the slicer's estimate, scaled by the lines left
            data['eta'] = round(self.print_seconds * (total - done) / total, 1)
        elif total > 0 and done > first_done:
            rate = (done - first_done) / max(self.clock() - started, 1e-3)
            data['eta'] = round((total - done) / rate, 1)
        return data

    def text(self):
        """``DONE/TOTAL`` of the newest report, or its stage, as a record's
        ``progress`` shows it; None before any."""
        if self.newest is None:
            return None
        done, total, stage = self.newest
        return stage if total is None else f'{done}/{total}'


# -- reading ------------------------------------------------------------------

class Event:
    """One event as read back; ``end`` is the byte offset just after its line."""
    __slots__ = ('id', 'time', 'kind', 'data', 'end')

    def __init__(self, number, when, kind, data, end):
        self.id, self.time, self.kind, self.data, self.end = number, when, kind, data, end

    def __repr__(self):
        return f'Event({self.id}, {self.kind!r}, {self.data!r})'


def event_id_of(line):
    """The id of an event line, read without parsing the JSON (None: not an event line)."""
    if not line.startswith(ID_PREFIX):
        return None
    digits = line[len(ID_PREFIX):].partition(b',')[0]
    return int(digits) if digits.isdigit() and len(digits) < 19 else None


def parse_event(line, end=0):
    """An Event from one line, or None for a torn or foreign line."""
    import json
    try:
        value = json.loads(line)
        event = Event(int(value['id']), float(value['t']), str(value['kind']), dict(value['data']), end)
    except (ValueError, KeyError, TypeError):
        return None
    return event if event.id > 0 else None


def parse_lines(chunk, offset, after):
    """The events of the complete lines of ``chunk`` (read at ``offset``) with an
    id above ``after``; only their lines are parsed as JSON."""
    found, position = [], offset
    for line in chunk.split(b'\n')[:-1]:
        position += len(line) + 1
        number = event_id_of(line)
        if number is not None and number > after:
            event = parse_event(line, position)
            if event:
                found.append(event)
    return found


def read_events(store, task_id, after=0):
    """Every event of a task with an id above ``after`` (``Last-Event-ID``), in order."""
    return EventFollower(store, task_id, after).read()


class EventFollower:
    """Reads a task's events as they come: each read() returns the new ones.

    It remembers a byte offset and the last id seen, so a line is parsed
    once; a file replaced (the task removed and the id reused) is read anew,
    its ids filtered by the last one seen.
    """

    def __init__(self, store, task_id, after=0, offset=0, at_end=False):
        """From the event after id ``after``; ``offset`` (an Event's ``end``)
        skips the bytes before it unread; ``at_end``: only events still to come."""
        self.path = events_path(store, task_id)
        self.after, self.offset = after, offset
        self.inode = self._size()[1] if offset else None
        if at_end:
            self.offset, self.inode, _ = self._size()
            self.after = max(after, self._last_id_before(self.offset))
        self.fast_until = time.monotonic() + FOLLOW_FAST_SECONDS

    def fast_while_young(self, created):
        """Look fast only while the task (submitted at Unix time ``created``)
        is in its first FOLLOW_FAST_SECONDS: a long-poll of an older task (a
        0.019 client asks again every second or so) waits as a stream does,
        rather than looking every few milliseconds for the whole task."""
        young_for = FOLLOW_FAST_SECONDS - (time.time() - created)
        self.fast_until = time.monotonic() + max(0.0, min(young_for, FOLLOW_FAST_SECONDS))

    def _size(self):
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return 0, None, 0
        return stat.st_size, stat.st_ino, stat.st_mtime_ns

    def _last_id_before(self, offset):
        try:
            with open(self.path, 'rb') as handle:
                return _tail_of(handle.fileno(), offset)[0] if offset else 0
        except FileNotFoundError:
            return 0

    def changed(self):
        """True when the file holds more than was read (or is another file)."""
        size, inode, _ = self._size()
        return size != self.offset or inode != self.inode

    def read(self):
        """The events appended since the last read (complete lines only)."""
        size, inode, _ = self._size()
        if inode != self.inode or size < self.offset:
            self.offset, self.inode = 0, inode
        if size == self.offset:
            return []
        try:
            with open(self.path, 'rb') as handle:
                chunk = os.pread(handle.fileno(), size - self.offset, self.offset)
        except FileNotFoundError:
            return []
        complete = chunk[:chunk.rfind(b'\n') + 1]  # a line being written waits for the next read
        events = parse_lines(complete, self.offset, self.after)
        self.offset += len(complete)
        if events:
            self.after = events[-1].id
        return events

    def wait(self, timeout):
        """The next events, waiting up to ``timeout`` seconds for some to come.

        It looks at the file's size, soon after a call and then every
        FOLLOW_MAX_DELAY (every FOLLOW_FIRST_DELAY in the follower's first
        FOLLOW_FAST_SECONDS): a stat costs microseconds, and nothing is
        parsed until the file grows.
        """
        deadline = time.monotonic() + timeout
        delay = FOLLOW_FIRST_DELAY
        while not self.changed():
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return []
            time.sleep(min(delay, left))
            delay = FOLLOW_FIRST_DELAY if now < self.fast_until else min(delay * 1.5, FOLLOW_MAX_DELAY)
        return self.read()


def progress_text(events):
    """``DONE/TOTAL`` (or the stage) of the newest progress event among ``events`` (None: none)."""
    for event in reversed(events):
        text = event_progress_text(event.data) if event.kind == PROGRESS else None
        if text:
            return text
    return None


def event_progress_text(data):
    """A progress event's data as a record's ``progress`` shows it: ``DONE/TOTAL``,
    else its stage; None for neither."""
    if isinstance(data.get('done'), int) and isinstance(data.get('total'), int):
        return f'{data["done"]}/{data["total"]}'
    return data['stage'] if is_stage_name(data.get('stage')) else None


# A progress line as append_event writes it, read without json (a CGI info
# must not import it: see tests/test_cgi_imports.py).
PROGRESS_MARK = b',"kind":"progress","data":{'


def last_progress(store, task_id):
    """``DONE/TOTAL`` (or the stage) of a task's newest progress event, None when it has none."""
    for line in _lines_from_the_end(store, task_id):
        text = _progress_of_line(line)
        if text:
            return text
    return None


def last_progress_event(store, task_id):
    """A task's newest progress Event, None when it has none (a watcher that
    comes late starts from it)."""
    for line in _lines_from_the_end(store, task_id):
        if _progress_of_line(line):
            return parse_event(line)
    return None


def _lines_from_the_end(store, task_id):
    """The lines of a task's event file, newest first: read backwards a chunk
    at a time (what is looked for is near the end)."""
    try:
        handle = open(events_path(store, task_id), 'rb')
    except FileNotFoundError:
        return
    with handle:
        end = os.fstat(handle.fileno()).st_size
        carry = b''
        while end > 0:
            start = max(0, end - 8 * EVENT_LINE_MAX)
            lines = (os.pread(handle.fileno(), end - start, start) + carry).split(b'\n')
            carry = lines.pop(0) if start > 0 else b''  # maybe cut: goes with the next chunk
            yield from reversed(lines)
            end = start


def _progress_of_line(line):
    head, mark, rest = line.partition(PROGRESS_MARK)
    if not mark or event_id_of(head) is None or not line.endswith(b'}'):
        return None
    if rest.startswith(b'"done":'):
        done, _, rest = rest[len(b'"done":'):].partition(b',"total":')
        total = rest.partition(b',')[0].partition(b'}')[0]
        return f'{int(done)}/{int(total)}' if done.isdigit() and total.isdigit() else None
    stage = rest.partition(b'"stage":"')[2].partition(b'"')[0].decode('ascii', 'replace')
    return stage if is_stage_name(stage) else None


# A stage's name: this project's own words (rrc/progress.py), or what a
# farm's worker sends for them: a few short words, nothing a terminal acts on.
STAGE_NAME_MAX = 40
STAGE_CHARS = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -.')


def is_stage_name(value):
    """True for a stage's name as progress events carry it."""
    return isinstance(value, str) and 0 < len(value) <= STAGE_NAME_MAX and set(value) <= STAGE_CHARS


def checked_progress(data):
    """A progress event's data from elsewhere (a farm's worker) with only what
    an event of ours holds: whole counts, numbers, a stage's name, a print's
    printer state (its known keys, each a number a sender could report: the
    rule of ``supervise.parse_progress_line``); None when nothing of it is progress."""
    checked = {}
    if _is_count(data.get('done')) and _is_count(data.get('total')):
        checked.update(done=data['done'], total=data['total'])
        if _is_number(data.get('percent')):
            checked['percent'] = data['percent']
    for key in ('eta', 'elapsed'):
        if _is_number(data.get(key)):
            checked[key] = data[key]
    if is_stage_name(data.get('stage')):
        checked['stage'] = data['stage']
    printer = checked_printer_state(data.get('printer'))
    if printer:
        checked['printer'] = printer
    return checked if ('total' in checked or 'stage' in checked) else None


# A print's progress carries the printer's state (``printers.PRINTER_STATE_FIELDS``),
# from its sender's pipe (``supervise.parse_progress_line``) or a farm's worker.


def is_printer_value(value):
    """True for a number a printer's state may hold: finite, and no count a sender could reach."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -1e6 < value < 1e15


def checked_printer_state(state):
    """A printer state from elsewhere with only its known keys and their numbers ({} for none)."""
    if not isinstance(state, dict):
        return {}
    return {key: state[key] for key in PRINTER_STATE_FIELDS if is_printer_value(state.get(key))}


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10 ** 15


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 10 ** 9


# A print's printer state in its progress events, as ``info`` shows it while it prints.
PRINTER_INFO_FIELDS = {'hotend': 'hotend', 'hotendTarget': 'hotendTarget', 'bed': 'bed',
                       'bedTarget': 'bedTarget', 'bytes': 'bytesSent', 'layer': 'layer', 'z': 'z'}


def with_live_progress(store, record):
    """A busy task's record with ``progress`` from its event log (the runner
    no longer rewrites the record for each one); a print's also with its
    printer's state (hotend, bed, bytes sent, layer, height, elapsed and
    left seconds); others as they are."""
    if record.get(Field.STATUS) != TaskStatus.BUSY or not is_task_id(record.get(Field.ID, '')):
        return record
    if record.get(Field.SENDER):  # a print: the newest event's printer state too
        return _with_printer_state(store, record)
    text = last_progress(store, record[Field.ID])
    return dict(record, **{Field.PROGRESS: text}) if text else record


def _with_printer_state(store, record):
    event = last_progress_event(store, record[Field.ID])
    if event is None or not isinstance(event.data, dict):
        return record
    data = event.data
    shown = dict(record)
    if _is_count(data.get('done')) and _is_count(data.get('total')):
        shown[Field.PROGRESS] = f'{data["done"]}/{data["total"]}'
    printer = data.get('printer') if isinstance(data.get('printer'), dict) else {}
    for key, name in PRINTER_INFO_FIELDS.items():
        value = printer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown[name] = f'{value:g}' if isinstance(value, float) else str(value)
    for key, name in (('elapsed', 'elapsedSeconds'), ('eta', 'etaSeconds')):
        if _is_number(data.get(key)):
            shown[name] = f'{data[key]:g}'
    return shown


# -- removing -----------------------------------------------------------------

def remove_events(store, task_id):
    try:
        os.unlink(events_path(store, task_id))
    except FileNotFoundError:
        pass


def remove_orphan_events(store):
    """Remove event files of tasks that have no record (an event written
    while its task was being removed, or a store tidied by hand)."""
    folder = store.folder(EVENTS_FOLDER)
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if is_task_id(name) and not os.path.exists(os.path.join(store.folder('info'), name)):
            remove_events(store, name)
