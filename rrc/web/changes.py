"""``service=changes``: the whole store's changes as Server-Sent Events, for
the page's live task list (rrc/web/sse.py sends them: the same slots,
heartbeats and CGI bound as a task's stream).

- ``event: task``, ``data: RECORD``: a record changed (as the list shows
  it, rrc/web/tasklist.py), or a busy task's progress moved (looked at
  every PROGRESS_SECONDS);
- ``event: removed``, ``data: {"id": ID}``: a record is gone;
- ``event: hello``, ``data: {"stamp": STAMP}``: first, for a client that
  came without a cursor;
- ``event: reset``, ``data: {"stamp": STAMP}``: first, for a client whose
  cursor is so old that more than RESET_MAX records changed since, or
  removals may have been forgotten (rrc/removals.py): it reloads its list.

Each message's ``id:`` is a STAMP: the info folder's mtime (ns) when the
change was seen.  A client that comes back with it (``Last-Event-ID`` or
``lastEventId=``) gets every record written since, found by their mtimes,
and every removal since from the removals log; a record written within
SLACK_NS before the stamp comes again (a write's file gets its mtime
before its rename makes it seen), which is harmless: the page replaces a
task by its id.

Every record write renames a new file into ``tasks/info``
(store.write_file_atomically), which changes the folder's mtime, so the
folder is stat'ed every POLL_SECONDS and scanned again (a stat of each
record: 10,000 in about 35 ms here, bench/bench_page_api.py, where their
names alone take 4 ms) only when its mtime moved, or when the last scan was
racy.  A record changed when its (inode, mtime, size) did: not its inode
alone, for ext4 gives a freed inode to the next file at once, so two writes
between two scans may leave the record on its first inode.
Racy, as git's index: a scan that began less than SETTLE_NS after the
folder's mtime may have missed a write in the same mtime tick, so the next
tick scans again; a record whose mtime is that recent may be written again
within its tick with its size unchanged, so its bytes' hash is part of its
signature until it settles.
"""

import os
import time
from collections import namedtuple

from ..errors import HTTPError, NotFound
from ..names import DIGITS, is_task_id
from ..removals import removed_since
from ..schema import Field
from ..store import marked, to_json
from .tasklist import shown_record

# How often the info folder is looked at: a change shows within this, plus a read.
POLL_SECONDS = 0.1
# How often a busy task's progress (its event log) is looked at.
PROGRESS_SECONDS = 1.0
# Racy within this of an mtime: well above a file system's mtime tick (a
# jiffy, 1 to 10 ms, on ext4 and a Linux NFS server's); each scan of a racy
# folder costs a scan more (10,000 records: about 35 ms here).
SETTLE_NS = 250_000_000
# What a reconnecting client gets again from before its stamp (see above).
SLACK_NS = 2_000_000_000
# A client that missed more than this many changes reloads its list instead (event: reset).
RESET_MAX = 500
CURSOR_MAX = 20

# One SSE message, as rrc/web/sse.encode_message sends it.
Message = namedtuple('Message', 'kind json cursor')


def answer_changes(app, request):
    """The store's changes from the client's cursor on (a new client: from now)."""
    from .sse import open_stream, sent_cursor  # here: loaded for a stream only (tests/test_cgi_imports.py)
    cursor = changes_cursor(sent_cursor(request))
    return open_stream(app, request, lambda: ChangesStream(app, request.client, cursor), 'changes of the store')


def changes_cursor(text):
    """The stamp of a reconnecting client's cursor text (sse.sent_cursor), None for a new client."""
    if text is None:
        return None
    if len(text) > CURSOR_MAX or not DIGITS.issuperset(text):
        raise HTTPError(400, f'bad event id: {text[:32]!r} (a stamp of service=tasks or service=changes)')
    return int(text)


def folder_key(folder):
    """(inode, mtime ns) of the info folder, None while it is missing."""
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def record_stats(folder, known=()):
    """(task id, path, stat) of each record in ``folder`` (a name in ``known`` is not checked again)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name in known or is_task_id(entry.name):
                    try:
                        yield entry.name, entry.path, entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
    except FileNotFoundError:
        return


def compare(path, stat, started, before):
    """(the record's signature now, whether it changed since ``before``):
    (inode, mtime, size), and its bytes' hash while its mtime is racy."""
    signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    racy = started - stat.st_mtime_ns < SETTLE_NS
    if before is None or before[:3] != signature:
        return (signature + (content_hash(path),) if racy else signature), True
    if len(before) == 3 and not racy:
        return signature, False
    now = content_hash(path)  # racy now, or at the last scan: the same stat may hide a write
    return (signature + (now,) if racy else signature), len(before) == 4 and before[3] != now


def content_hash(path):
    """The hash of a record's bytes (None once it is gone)."""
    try:
        with open(path, 'rb') as handle:
            return hash(handle.read())
    except FileNotFoundError:
        return None


class ChangesStream:
    """The store's changes as Messages, for sse.stream_chunks: ``wait()``
    returns what changed, looking at the folder every POLL_SECONDS.  Made
    in a wait slot (rrc/web/sse.open_stream): it scans the folder once."""

    ended = False  # the store has no end: the client or the CGI bound ends the stream

    def __init__(self, app, client, cursor):
        self.app, self.client = app, client
        self.folder = app.store.folder('info')
        self.shown = {}  # id -> hash of the JSON last sent: nothing is sent twice unchanged
        self.progress_at = time.monotonic()
        self.key = folder_key(self.folder)
        self.stamp = str(self.key[1]) if self.key else '0'
        self.signatures, self.racy = {}, False
        self.scan()
        self.pending = self.opening(cursor)

    def opening(self, cursor):
        """The first messages: hello (no cursor), what changed since the
        cursor, or reset when that is too much or removals were forgotten."""
        if cursor is None:
            return [Message('hello', to_json({'stamp': self.stamp}), self.stamp)]
        since = cursor - SLACK_NS
        written = sorted(task_id for task_id, signature in self.signatures.items() if signature[1] >= since)
        removed, whole_from = removed_since(self.app.store.tasks, since)
        if len(written) + len(removed) > RESET_MAX or whole_from > since:
            return [Message('reset', to_json({'stamp': self.stamp}), self.stamp)]
        return self.task_messages(written) + self.removed_messages(removed)

    def wait(self, timeout):
        """The messages of what changed within ``timeout`` seconds ([] when nothing did)."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            self.pending = self.look()
            left = deadline - time.monotonic()
            if self.pending or left <= 0:
                break
            time.sleep(min(POLL_SECONDS, left))
        messages, self.pending = self.pending, []
        return messages

    def look(self):
        """One tick: the folder's changes, and every PROGRESS_SECONDS the busy tasks' progress."""
        messages = self.folder_changes() if self.folder_changed() else []
        if time.monotonic() - self.progress_at >= PROGRESS_SECONDS:
            self.progress_at = time.monotonic()
            messages += self.task_messages(marked(self.app.store, 'running'))
        return messages

    def folder_changed(self):
        """True when the folder's mtime moved since the last scan, or that scan was racy."""
        key = folder_key(self.folder)
        if key is None:
            return False
        changed = key != self.key or self.racy
        self.key = key
        return changed

    def scan(self):
        """Read the folder's records' stats: the ids changed since the last scan (every one at the first)."""
        started = time.time_ns()
        # Racy (as git's index): a write in the folder's mtime tick may come after this scan, unseen.
        self.racy = self.key is not None and started - self.key[1] < SETTLE_NS
        before, now, changed = self.signatures, {}, []
        for task_id, path, stat in record_stats(self.folder, before):
            now[task_id], moved = compare(path, stat, started, before.get(task_id))
            if moved:
                changed.append(task_id)
        self.signatures = now
        return sorted(changed)

    def folder_changes(self):
        """Messages for the records written and removed since the last scan."""
        self.stamp = str(self.key[1])
        before = self.signatures
        written = self.scan()
        removed = sorted(set(before) - set(self.signatures))
        for task_id in removed:
            self.shown.pop(task_id, None)
        return self.task_messages(written) + self.removed_messages(removed)

    def removed_messages(self, task_ids):
        """A ``removed`` message for each of ``task_ids``."""
        return [Message('removed', to_json({'id': task_id}), self.stamp) for task_id in task_ids]

    def task_messages(self, task_ids):
        """A ``task`` message for each of ``task_ids`` (and a changed step's
        job, which shows its steps) whose record shows something new."""
        messages, done = [], set()
        for task_id in task_ids:
            for record in self.records_of(task_id, done):
                text = to_json(record, sort_keys=True)
                if self.shown.get(record[Field.ID]) != hash(text):
                    self.shown[record[Field.ID]] = hash(text)
                    messages.append(Message('task', text, self.stamp))
        return messages

    def records_of(self, task_id, done):
        """The records a change of ``task_id`` shows: its own, and its job's
        for a step; judged as ``info`` judges them (app.read_task)."""
        shown = []
        while task_id and task_id not in done and is_task_id(task_id):
            done.add(task_id)
            try:
                record = self.app.read_task(self.app.store, task_id)
            except NotFound:
                break
            shown.append(shown_record(self.app, record, self.client))
            task_id = record.get(Field.JOB, '')
        return shown
