"""``service=events&id=ID``: a task's live stream (rrc/livestream.py) as
Server-Sent Events, ``text/event-stream``.

Each message goes as ``id: E.L`` (its cursor), ``event: KIND`` (status,
progress, note, log, step) and ``data: JSON``; the stream opens with
``retry:`` and a comment, and a comment line keeps it alive every
HEARTBEAT_SECONDS.  It ends after the task's final status event.  A client
that reconnects with ``Last-Event-ID`` (or ``lastEventId=`` in the query,
for clients that cannot set a header) gets what came after; one that comes
back after the end gets 204 No Content, which tells a browser's EventSource
to stop reconnecting.

A resident server (``rrcloud serve``, any multi-threaded WSGI server)
streams until the task ends; each stream holds one of the ``maxWaits``
slots the long-polls count against, at most ``maxWaitsPerClient`` of them
for one client address (503 with Retry-After when none is free to it), and
gives it back as soon as the client is gone.  A CGI process
(``wsgi.run_once``) streams at most ``cgiStreamSeconds`` (60 s by default)
and exits: the client reconnects with its cursor.
"""

import time

from ..errors import HTTPError
from ..events import read_events
from ..livestream import FINAL_STATUSES, LiveStream, is_final, parse_cursor
from ..schema import Field
from ..states import get_task
from .request import Response

EVENT_STREAM = 'text/event-stream; charset=utf-8'
# How long a client waits before reconnecting (SSE's retry field).
RETRY_MILLISECONDS = 2000
# A comment this often: proxies and clients keep a quiet stream open, and a
# client that went away is noticed by the write that fails.
HEARTBEAT_SECONDS = 15.0
# The longest look at the files between two checks of the connection.
CHECK_SECONDS = 1.0
RETRY_AFTER_SECONDS = '5'


def answer_events(app, request, task_id):
    """The live stream of one task (or job) from the client's cursor on."""
    record = app.store.read_task(task_id)  # NotFound: 404
    cursor = request_cursor(request)
    if request.method != 'HEAD' and cursor is not None and seen_the_end(app.store, record, cursor):
        return Response(b'', 204, EVENT_STREAM, STREAM_HEADERS)
    return open_stream(app, request, lambda: LiveStream(app.store, record, lambda: get_task(app.store, task_id),
                                                        cursor), f'events of task {task_id}')


# No cache and no proxy holds a stream back.
STREAM_HEADERS = (('Cache-Control', 'no-cache'), ('X-Accel-Buffering', 'no'))


def open_stream(app, request, make_stream, title):
    """The answer of an event stream (this task's, or the store's changes:
    rrc/web/changes.py): ``make_stream()`` (which may read much) is made
    once a slot is taken, so a refused client costs nothing, and gives the
    slot back if it fails; under CGI it is bounded by ``cgiStreamSeconds``
    and holds no slot (the process ends with it)."""
    if request.method == 'HEAD':
        return Response(b'', 200, EVENT_STREAM, STREAM_HEADERS)
    bounded = bool(request.environ.get('wsgi.run_once'))
    slot = None if bounded else take_slot(app, request.client)
    try:
        stream = make_stream()
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    limit = app.config.cgiStreamSeconds if bounded else None
    body = EventStreamBody(stream, limit, request.environ.get('waitress.client_disconnected'), slot, title)
    return Response(body, 200, EVENT_STREAM, STREAM_HEADERS)


def sent_cursor(request):
    """The cursor's text a reconnecting client sent (``Last-Event-ID``, else
    ``lastEventId=`` for clients that cannot set a header), stripped; None
    for a new client.  Both streams read it so (service=events, changes)."""
    text = request.environ.get('HTTP_LAST_EVENT_ID')
    if text is None:
        text = request.form.get('lastEventId')
    if text is None or not text.strip():
        return None
    return text.strip()


def request_cursor(request):
    """The cursor a reconnecting client sent (header first), None for a new client."""
    text = sent_cursor(request)
    if text is None:
        return None
    try:
        return parse_cursor(text)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


def seen_the_end(store, record, cursor):
    """True when a client at ``cursor`` has had a finished task's last message."""
    if record.get(Field.STATUS) not in FINAL_STATUSES:
        return False
    events = read_events(store, record[Field.ID])
    finals = [event.id for event in events if is_final(event.kind, event.data)]
    if finals:
        return finals[0] <= cursor.event_id
    # No final event in its log: the stream ended with the record's status, at the log's end.
    import os
    try:
        log_size = os.path.getsize(store.log_path(record[Field.ID]))
    except OSError:
        log_size = 0
    return all(event.id <= cursor.event_id for event in events) and cursor.log_offset >= log_size


def take_slot(app, client):
    """One of the long-poll slots (``maxWaits``) within the client's share
    (``maxWaitsPerClient``), or 503 naming the bound met: streams never take
    every thread, nor one client every slot."""
    slots = app.wait_slots()
    from .slots import NoSlot  # loaded by wait_slots already
    try:
        return slots.take(client)
    except NoSlot as refused:
        raise HTTPError(503, refusal_reason(app.config, refused.setting),
                        headers=[('Retry-After', RETRY_AFTER_SECONDS)]) from None


def refusal_reason(config, setting):
    """The one line of a 503 for a stream: which bound it met, and that it may come back."""
    if setting == 'maxWaitsPerClient':
        return (f'this client follows {config.waits_per_client()} tasks already, its share of '
                'this server (maxWaitsPerClient); try again later')
    return f'this server follows {config.maxWaits} tasks already (maxWaits); try again later'


class EventStreamBody:
    """The WSGI body of a stream: bytes as they come; close() (the server's,
    when the client is gone or the stream ended) gives the slot back."""

    def __init__(self, stream, limit, disconnected, slot, title):
        self.slot = slot
        self.chunks = stream_chunks(stream, limit, disconnected or (lambda: False), title)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.chunks)

    def close(self):
        self.chunks.close()
        if self.slot is not None:
            self.slot.release()
            self.slot = None


def stream_chunks(stream, limit, disconnected, title):
    """The bytes of a stream: its opening (``title`` in a comment), its
    messages as they come, heartbeats; until the stream ends (its task
    did), ``limit`` seconds pass, or the client is gone."""
    started = last_sent = time.monotonic()
    yield f'retry: {RETRY_MILLISECONDS}\n: {title}\n\n'.encode()
    while not stream.ended:
        now = time.monotonic()
        left = float('inf') if limit is None else limit - (now - started)
        if left <= 0 or disconnected():
            return
        messages = stream.wait(max(0.0, min(CHECK_SECONDS, left, last_sent + HEARTBEAT_SECONDS - now)))
        if messages:
            yield b''.join(map(encode_message, messages))
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
            yield b': keepalive\n\n'
            last_sent = time.monotonic()


def encode_message(message):
    """One SSE message: ``id``, ``event``, ``data`` (JSON: one line, ASCII)."""
    kind = message.kind if message.kind.isascii() and message.kind.isalnum() else 'message'
    return f'id: {message.cursor}\nevent: {kind}\ndata: {message.json}\n\n'.encode('ascii', 'replace')
