"""``rrcloud watch ID``: follow a task or job in the terminal until it ends.

A task of this store is followed from its files (rrc/livestream.py, no
HTTP); with ``--s=SERVER``, or for the local record of a task sent to a
server, the server's event stream (``service=events``, Server-Sent Events)
is read, reconnecting with the last cursor when it closes (a CGI server
ends each stream after a minute).  A server without events (RepRapCloud
0.019) is long-polled with ``info`` instead: status only.

Text: status changes, the tool's log lines as they come, notes, a job's
steps, and progress (a bar redrawn in place on a terminal, a line per
event otherwise).  A print's progress events carry its printer's state,
shown as a line of its own::

    hotend 205.1/210 °C ▁▃▅▇██  bed 60.0/60 °C ▇▇████  layer 12  z 2.40  eta 3m12s

on a terminal under the bar, each temperature with the trend of its last
readings (TREND_READINGS, fewer where the terminal is too narrow) in block
characters; elsewhere (a pipe, a file,
a terminal whose encoding has no such characters) in plain ASCII, ``C``
for ``°C`` and no trend, after each ``progress:`` line as ``printer: ...``.
``--format=json``: one JSON object per message, as the stream sends it (a
print's progress with its ``printer`` object).  The exit code is the
task's: 0 complete, else what a ``--sync`` run of it returns.
"""

import math

import sys
import time

from .bar import progress_bar
from .output import ask_server, exit_code_of, refresh_if_remote
from ..errors import ExitCode, NoServer, NotFound, RRCloudError, UsageError
from ..events import LOG, NOTE, PROGRESS, STATUS, STEP, checked_printer_state, checked_progress, event_progress_text
from ..livestream import LiveStream, Message, is_final
from ..names import check_task_id
from ..remote import (CONNECT_TIMEOUT, REMOTE_ID_RE, cannot_reach, connection_failure, host_port, http_session,
    parse_answer, server_url, terminal_safe)
from ..schema import Field, TaskStatus
from ..states import get_task

# Longer than the server's heartbeat (15 s): a stream silent for this long is lost.
READ_TIMEOUT = 40
RECONNECT_DELAY = 2.0
POLL_WAIT = 30
# A print's trend: the last readings of each temperature, drawn in these characters
# from the lowest to the highest (at least TREND_MIN_SPAN degrees apart, so a
# steady temperature's noise of a degree stays a flat line at the top).
TREND_READINGS = 12
TREND_BLOCKS = '\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588'
TREND_MIN_SPAN = 10.0
# A time left a server sends is shown only below this many seconds.
ETA_MAX = 1e9
HEATERS = ('hotend', 'bed')


def cmd_watch(ctx, args):
    """``rrcloud watch ID``: the task's messages until it ends; its exit code."""
    if len(args) != 1:
        raise UsageError('watch takes one task id')
    view = JsonView() if ctx.options.format == 'json' else TextView(sys.stdout)
    record = None
    if ctx.options.s:
        messages = remote_messages(ctx, server_url(ctx.options.s, ctx.config.port), remote_task_id(args[0]))
    else:
        record = ctx.store.read_task(check_task_id(args[0]))
        if record.get(Field.REMOTE_ID):
            messages = remote_messages(ctx, record[Field.SERVER], record[Field.REMOTE_ID])
        else:
            messages = local_messages(ctx.store, record)
    final = None
    try:
        for message in messages:
            if message is None:  # a second without news: a bar's time left moves on
                view.tick()
                continue
            view.show(message)
            if message.final:
                final = message.data
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED  # only the watching stops: the task runs on
    finally:
        view.close()
    if record is not None and record.get(Field.REMOTE_ID):
        refresh_if_remote(ctx.store, ctx.config, record)  # its result and log come home
    return exit_code_of(final)


def remote_task_id(text):
    """A task id as a server names it (RepRapCloud 0.019's have two parts)."""
    if not REMOTE_ID_RE.match(text):
        raise UsageError(f'bad task id: {text[:64]!r}')
    return text


# -- where the messages come from ---------------------------------------------

def local_messages(store, record):
    """A task of this store, followed from its files (None after a second without any)."""
    stream = LiveStream(store, record, lambda: get_task(store, record[Field.ID]))
    while not stream.ended:
        yield from stream.wait(1.0) or [None]


def remote_messages(ctx, url, task_id):
    """A task at ``url``: its event stream, reconnecting with the last cursor;
    a server that has no events is long-polled."""
    session = http_session(ctx.config.client_token_for)
    cursor, lost_since, reached = None, None, False
    while True:
        try:
            response = open_stream(session, url, task_id, cursor)
            if response is None:  # no events there (0.019): status from info
                yield from polled_messages(ctx, url, task_id)
                return
            if response.status_code == 204:  # the end was seen already
                return
            lost_since, reached = None, True
            for message in read_stream(response):
                cursor = message.cursor
                yield message
                if message.final:
                    return
        except OSError as exc:  # requests' errors are OSErrors
            if not reached:  # down from the start: said at once (a restart later is waited for)
                raise cannot_reach(url, exc) from None
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since >= ctx.config.reconnectTimeout:
                raise NoServer(f'lost {host_port(url)} while watching task {task_id} '
                               f'({connection_failure(exc)}); it may still run there') from None
        time.sleep(RECONNECT_DELAY)  # the server closed the stream (CGI: after a minute) or went away


def open_stream(session, url, task_id, cursor):
    """The server's event stream from ``cursor`` on; None when it offers none."""
    headers = {'Accept': 'text/event-stream'}
    if cursor:
        headers['Last-Event-ID'] = cursor
    response = session.get(url, params={'service': 'events', 'id': task_id}, headers=headers,
                           stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
    if response.status_code in (200, 204) and response.headers.get('Content-Type', '').startswith('text/event-stream'):
        return response
    reason = terminal_safe(parse_answer(response).get('error') or f'HTTP {response.status_code}')
    if response.status_code == 404:
        raise NotFound(f'{url}: {reason}')
    if response.status_code == 503:  # busy: like a lost connection, try again
        raise ConnectionError(reason)
    if response.status_code in (401, 403):
        raise RRCloudError(f'{url}: {reason}')
    return None


def read_stream(response):
    """The messages of an SSE response as they arrive."""
    parser = EventParser()
    raw = response.raw
    read = getattr(raw, 'read1', None) or (lambda size: raw.read(1))
    with response:
        while True:
            data = read(65536)
            if not data:
                return
            yield from parser.feed(data)


class EventParser:
    """Server-Sent Events as the spec frames them: ``field: value`` lines, a blank line ends one."""

    def __init__(self):
        self.pending = b''
        self.fields = {}

    def feed(self, data):
        """The messages completed by ``data``."""
        self.pending += data
        *lines, self.pending = self.pending.split(b'\n')
        for line in lines:
            message = self.line(line.rstrip(b'\r').decode('utf-8', 'replace'))
            if message is not None:
                yield message

    def line(self, text):
        if not text:
            fields, self.fields = self.fields, {}
            return remote_message(fields) if 'data' in fields else None
        if text.startswith(':'):
            return None
        name, _, value = text.partition(':')
        self.fields[name] = value[1:] if value.startswith(' ') else value
        return None


def remote_message(fields):
    """A Message from an SSE message's fields (its data is the JSON the stream sends)."""
    import json
    try:
        value = json.loads(fields['data'])
    except ValueError:
        value = None
    data = value.get('data') if isinstance(value, dict) else None
    if not isinstance(data, dict):
        data = {}
    kind = fields.get('event', 'message')
    # Written anew, never the server's text as sent: JSON's escapes keep a
    # hostile server's control characters off the terminal.
    text = json.dumps(value if isinstance(value, dict) else {'kind': kind, 'data': {}}, separators=(',', ':'))
    return Message(kind, text, fields.get('id'), data, final=is_final(kind, data))


def polled_messages(ctx, url, task_id):
    """A server without events: its ``info``, long-polled, as status messages."""
    import json
    shown = None
    while True:
        record = ask_server(ctx, {'service': 'info', 'id': task_id, 'wait': str(POLL_WAIT)}, url=url)
        data = {key: record[key] for key in (Field.STATUS, Field.ERROR, Field.QUEUED) if record.get(key)}
        if record.get(Field.EXIT_CODE, '').lstrip('-').isdigit():
            data[Field.EXIT_CODE] = int(record[Field.EXIT_CODE])
        if data != shown:
            shown = data
            text = json.dumps({'t': round(time.time(), 3), 'kind': STATUS, 'data': data}, separators=(',', ':'))
            yield Message(STATUS, text, None, data, final=is_final(STATUS, data))
        if is_final(STATUS, data):
            return
        time.sleep(1.0)  # a 0.019 server answers at once


# -- a wrapper's progress line ------------------------------------------------

def wait_with_events(ctx, record, progress):
    """A remote task followed through its server's event stream, each event
    shown on a wrapper's progress line (elapsed seconds tick on between
    them); its record once it ended there, result fetched.  None when the
    server offers no events (the caller long-polls ``info`` instead)."""
    session = http_session(ctx.config.client_token_for)
    url = record[Field.SERVER]
    if not offers_events(session, url):
        return None
    import queue
    import threading
    inbox = queue.Queue()
    messages = remote_messages(ctx, url, record[Field.REMOTE_ID])
    threading.Thread(target=pump_messages, args=(messages, inbox), daemon=True).start()
    started, shown, latest = time.monotonic(), dict(record), None
    heard = False  # the local record says busy; the server's first status says queued or running
    while True:
        if heard or time.monotonic() - started >= 1.0:
            progress(shown, time.monotonic() - started, progress=latest)
        try:
            message = inbox.get(timeout=1.0)
        except queue.Empty:
            continue
        if isinstance(message, NoServer):
            raise message
        if message is None or isinstance(message, BaseException):  # no end seen: long-poll it
            return None
        heard = heard or message.kind == STATUS
        shown = shown_record(shown, message)
        if message.kind == PROGRESS:
            latest = (message.data, time.monotonic())
        if message.final:
            from ..remote import refresh_remote
            return refresh_remote(ctx.store, record, session, ctx.config.maxResultSize)


def offers_events(session, url):
    """True when the server's meta says ``events: yes``."""
    from ..remote import META_TIMEOUT
    try:
        return parse_answer(session.get(url, params={'service': 'meta'}, timeout=META_TIMEOUT)).get('events') == 'yes'
    except Exception:  # requests' errors, a garbled answer: no events then
        return False


def pump_messages(messages, inbox):
    """The stream's messages into ``inbox`` (a thread: the line ticks meanwhile); then None,
    or the error that ended it."""
    try:
        for message in messages:
            inbox.put(message)
            if message.final:
                return
    except Exception as exc:
        inbox.put(exc)
        return
    inbox.put(None)


def shown_record(record, message):
    """The record as the progress line shows it, after one event."""
    data = message.data
    if message.kind == STATUS and data.get(Field.STATUS):
        record = {key: value for key, value in record.items() if key != Field.QUEUED}
        record[Field.STATUS] = terminal_safe(data[Field.STATUS])
        if data.get(Field.QUEUED):
            record[Field.QUEUED] = 'yes'
    elif message.kind == PROGRESS and event_progress_text(data):
        record = dict(record, **{Field.PROGRESS: event_progress_text(data)})
    return record


# -- how they are shown -------------------------------------------------------

class JsonView:
    """One JSON object per line, as the stream sends them (for other programs)."""

    def show(self, message):
        sys.stdout.write(message.json + '\n')
        sys.stdout.flush()

    def tick(self):
        pass

    def close(self):
        pass


class TextView:
    """Lines for a person: status changes, log lines, notes, steps; progress as
    a bar redrawn in place on a terminal, as a line per event elsewhere."""

    def __init__(self, out):
        self.out = out
        self.tty = out.isatty()
        # block characters and a degree sign only where the terminal can show them
        self.fancy = self.tty and can_encode(out, TREND_BLOCKS + '\u00b0')
        self.bar = ()  # the lines on screen under the others: the bar, a print's printer (tty only)
        self.progress = None  # (data, when it came) of the bar on screen
        self.state = None
        self.trends = {heater: [] for heater in HEATERS}  # a print's last temperatures

    def show(self, message):
        if message.final:
            self.close()  # the end: no bar under it
        if message.kind == PROGRESS:
            self.note_temperatures(message.data)
        if message.kind == PROGRESS and self.tty:
            self.progress = (message.data, time.monotonic())
            self.tick()
            return
        line = self.text_of(message)
        if line is not None:
            self.write_line(line)
        if message.kind == PROGRESS:
            printer = self.printer_line(message.data, 0.0)
            if printer:
                self.write_line(f'printer: {printer}')

    def note_temperatures(self, data):
        """Keep the temperatures of a print's progress event for the trend (TREND_READINGS each)."""
        printer = checked_printer(data)
        for heater in HEATERS if printer else ():
            if heater in printer:
                self.trends[heater] = (self.trends[heater] + [printer[heater]])[-TREND_READINGS:]

    def printer_line(self, data, age):
        """A print's printer state as one line (None for any other progress)."""
        printer = checked_printer(data)
        if not printer:
            return None
        if not self.fancy:
            return printer_text(printer, eta=left_of(data, age))
        width = terminal_width(self.out) - 1
        for readings in range(TREND_READINGS, -1, -1):  # as many readings as the terminal's width has room for
            trends = {heater: values[max(0, len(values) - readings):] if readings else []
                      for heater, values in self.trends.items()}
            line = printer_text(printer, trends, unit='\u00b0C', eta=left_of(data, age))
            if line is None or len(line) <= width:
                return line
        return line

    def tick(self):
        """The bar drawn again: its time left counted down."""
        if self.progress:
            data, came = self.progress
            age = time.monotonic() - came
            printer = self.printer_line(data, age)
            if printer:  # the time left is the printer line's, said once
                data = {key: value for key, value in data.items() if key != 'eta'}
            lines = tuple(line for line in (progress_bar(data, age), printer) if line)
            if lines and lines != self.bar:
                self.draw_bar(lines)

    def text_of(self, message):
        data = message.data
        if message.kind == STATUS:
            state = status_text(data)
            if state == self.state:
                return None
            self.state = state
            return f'status: {state}'
        if message.kind == LOG:
            return terminal_safe(data.get('text', ''))
        if message.kind == PROGRESS:
            return progress_text(data)
        if message.kind == NOTE:
            return f'note: {terminal_safe(data.get("text", ""))}'
        if message.kind == STEP:
            return (f'step {terminal_safe(data.get("step", "?"))} ({terminal_safe(data.get("service", "?"))}) '
                    f'{terminal_safe(data.get("id", ""))}: {terminal_safe(data.get("state", "?"))}'
                    + (f': {terminal_safe(data["error"])}' if data.get('error') else ''))
        return None

    def write_line(self, line):
        """A line above the bar: the bar is wiped, the line written, the bar drawn again."""
        self.wipe_bar()
        self.out.write(line + '\n')
        self.out.write('\n'.join(self.bar))
        self.out.flush()

    def draw_bar(self, lines):
        """The lines under the others drawn anew, each cut to the terminal's width (a wrapped
        line could not be wiped)."""
        width = terminal_width(self.out)
        self.wipe_bar()
        self.bar = tuple(line[:width - 1] for line in lines)
        self.out.write('\n'.join(self.bar))
        self.out.flush()

    def wipe_bar(self):
        """The bar's lines cleared, the cursor at the start of the first."""
        if self.bar:
            self.out.write('\r\x1b[K' + '\x1b[1A\x1b[K' * (len(self.bar) - 1))

    def close(self):
        self.progress = None
        if self.bar:
            self.wipe_bar()
            self.out.flush()
            self.bar = ()


def status_text(data):
    """``queued``, ``running``, ``suspended``, ``waiting``, ``complete``, ``failed: WHY``."""
    status = data.get(Field.STATUS, '?')
    if status == TaskStatus.BUSY:
        flags = [flag for flag in (Field.QUEUED, Field.SUSPENDED, Field.WAITING) if data.get(flag)]
        return flags[0] if flags else 'running'
    text = terminal_safe(status)
    if data.get(Field.ERROR):
        text += f': {terminal_safe(data[Field.ERROR])}'
    elif status == TaskStatus.FAILED and isinstance(data.get(Field.EXIT_CODE), int):
        text += f' (exit code {data[Field.EXIT_CODE]})'
    return text


def progress_text(data):
    """A progress event as a line of its own: ``progress: 120/400 30.0% eta 6s``,
    ``progress: generating skirt eta 12s``; None when it holds no progress."""
    data = checked_progress(data)
    if not data:
        return None
    words = [data['stage']] if data.get('stage') else []
    if 'total' in data:
        words.append(f'{data["done"]}/{data["total"]}')
        words += [f'{data["percent"]:.1f}%'] if 'percent' in data else []
    words += [f'eta {data["eta"]:.0f}s'] if 'eta' in data else []
    return 'progress: ' + ' '.join(words)


# -- a print's printer --------------------------------------------------------

def checked_printer(data):
    """The printer state of a print's progress event (``data['printer']``) with
    only the known keys' finite numbers (a server's event is shown as numbers,
    never as its text); None when it holds none."""
    return (checked_printer_state(data.get('printer')) if isinstance(data, dict) else None) or None


def is_finite_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and abs(value) < ETA_MAX)


def left_of(data, age):
    """A progress event's time left, counted down by ``age``; None when it has none."""
    eta = data.get('eta') if isinstance(data, dict) else None
    return max(eta - max(age, 0.0), 0.0) if is_finite_number(eta) and eta >= 0 else None


def printer_text(printer, trends=None, unit='C', eta=None):
    """``hotend 205.1/210 C  bed 60.0/60 C  layer 12  z 2.40  eta 3m12s`` (what the
    printer reported of it); with ``trends`` each temperature's last readings after it."""
    parts = [temperature_text(heater, printer, unit, (trends or {}).get(heater))
             for heater in HEATERS if heater in printer]
    if 'layer' in printer:
        parts.append(f'layer {printer["layer"]:g}')
    if 'z' in printer:
        parts.append(f'z {printer["z"]:.2f}')
    if printer.get('paused'):
        parts.append('paused')
    if eta is not None:
        parts.append(f'eta {duration_text(eta)}')
    return '  '.join(parts) or None


def temperature_text(heater, printer, unit, readings=None):
    """``hotend 205.1/210 °C`` (``/TARGET`` where the printer named one), its trend after it."""
    target = printer.get(heater + 'Target')
    text = f'{heater} {printer[heater]:.1f}' + (f'/{target:g}' if target is not None else '') + f' {unit}'
    return text + (f' {sparkline(readings, target)}' if readings else '')


def sparkline(readings, target=None):
    """The readings as block characters, the highest (or the target) at the top,
    at least TREND_MIN_SPAN degrees from the lowest block to the highest."""
    top = max(list(readings) + ([target] if target else []))
    bottom = min(min(readings), top - TREND_MIN_SPAN)
    steps = len(TREND_BLOCKS) - 1
    return ''.join(TREND_BLOCKS[min(steps, max(0, round((value - bottom) / (top - bottom) * steps)))]
                   for value in readings)


def duration_text(seconds):
    """``45s``, ``3m12s``, ``1h02m``."""
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f'{seconds}s'
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f'{minutes}m{seconds:02d}s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m'


def can_encode(out, text):
    """True when ``out`` can write ``text`` in its encoding."""
    try:
        text.encode(getattr(out, 'encoding', None) or 'ascii')
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def terminal_width(out):
    """The width of ``out``'s terminal (80 when it cannot be asked)."""
    import os
    try:
        return os.get_terminal_size(out.fileno()).columns or 80
    except (OSError, ValueError, AttributeError):
        return 80
