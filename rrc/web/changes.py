"""``service=changes``: the whole store's changes as Server-Sent Events, for
the page's live task list (rrc/web/sse.py sends them: the same slots,
heartbeats and CGI bound as a task's stream).

- ``event: task``, ``data: RECORD``: a record changed (as the list shows
  it, rrc/web/tasklist.py), or a busy task's progress moved (looked at
  every PROGRESS_SECONDS);
- ``event: removed``, ``data: {"id": ID}``: a record is gone;
- ``event: hello``, ``data: {"stamp": STAMP}``: first, for a client that
  came without a cursor.

Each message's ``id:`` is a STAMP: the info folder's mtime (ns) when the
change was seen.  A client that comes back with it (``Last-Event-ID`` or
``lastEventId=``) gets every record written since, found by their mtimes;
a record written within SLACK_NS before the stamp comes again (a write's
file gets its mtime before its rename makes it seen), which is harmless:
the page replaces a task by its id.  A removal while no stream was open is
not told (nothing on disk remembers it); the page's next list shows it.

The cost of a tick is small whatever the store holds: every record write
renames a new file into ``tasks/info`` (store.write_file_atomically), which
changes the folder's mtime, so the folder is stat'ed every POLL_SECONDS and
read again (names and inode numbers, no stat per file: a new file is a new
inode) only when it changed, or changed so recently that another write in
the same mtime tick could hide behind it.
"""

import os
import time
from collections import namedtuple

from ..errors import HTTPError, NotFound
from ..names import DIGITS, is_task_id
from ..schema import Field
from ..states import reconcile_task
from ..store import marked, to_json
from .sse import open_stream

# How often the info folder is looked at: a change shows within this, plus a read.
POLL_SECONDS = 0.1
# How often a busy task's progress (its event log) is looked at.
PROGRESS_SECONDS = 1.0
# A folder changed this recently may change again within its mtime tick, unseen.
SETTLE_NS = 100_000_000
# What a reconnecting client gets again from before its stamp (see above).
SLACK_NS = 2_000_000_000
CURSOR_MAX = 20

# One SSE message, as rrc/web/sse.encode_message sends it.
Message = namedtuple('Message', 'kind json cursor')


def answer_changes(app, request):
    """The store's changes from the client's cursor on (a new client: from now)."""
    cursor = changes_cursor(request)
    return open_stream(app, request, lambda: ChangesStream(app, request.client, cursor), 'changes of the store')


def changes_cursor(request):
    """The stamp a reconnecting client sent (the header first), None for a new client."""
    text = request.environ.get('HTTP_LAST_EVENT_ID')
    if text is None:
        text = request.form.get('lastEventId')
    if text is None or not text.strip():
        return None
    text = text.strip()
    if len(text) > CURSOR_MAX or not DIGITS.issuperset(text):
        raise HTTPError(400, f'bad event id: {text[:32]!r} (a stamp of service=tasks or service=changes)')
    return int(text)


def current_stamp(store):
    """The stamp of the store as it is now: the info folder's mtime in ns ('0' before any task)."""
    try:
        return str(os.stat(store.folder('info')).st_mtime_ns)
    except FileNotFoundError:
        return '0'


def folder_key(folder):
    """(inode, mtime ns) of the info folder, None while it is missing."""
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def inodes(folder):
    """{task id: inode} of the records in ``folder``: names only (a new record is a new inode)."""
    try:
        with os.scandir(folder) as entries:
            return {entry.name: entry.inode() for entry in entries if is_task_id(entry.name)}
    except FileNotFoundError:
        return {}


def written_since(folder, since_ns):
    """The ids of records whose files were written at or after ``since_ns``, oldest first."""
    found = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if is_task_id(entry.name):
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime_ns >= since_ns:
                            found.append(entry.name)
                    except FileNotFoundError:
                        continue
    except FileNotFoundError:
        return []
    return sorted(found)


class ChangesStream:
    """The store's changes as Messages, for sse.stream_chunks: ``wait()``
    returns what changed, looking at the folder every POLL_SECONDS."""

    ended = False  # the store has no end: the client or the CGI bound ends the stream

    def __init__(self, app, client, cursor):
        self.app, self.client = app, client
        self.folder = app.store.folder('info')
        self.key = folder_key(self.folder)
        self.stamp = str(self.key[1]) if self.key else '0'
        self.seen = inodes(self.folder)
        self.shown = {}  # id -> hash of the JSON last sent: nothing is sent twice unchanged
        self.progress_at = time.monotonic()
        if cursor is None:
            self.pending = [Message('hello', to_json({'stamp': self.stamp}), self.stamp)]
        else:
            self.pending = self.task_messages(written_since(self.folder, cursor - SLACK_NS))

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
        """True when the folder changed since the last read, or so recently
        that a write in the same mtime tick may not show in its mtime."""
        key = folder_key(self.folder)
        if key is None:
            return False
        changed = key != self.key or time.time_ns() - key[1] < SETTLE_NS
        self.key = key
        return changed

    def folder_changes(self):
        """Messages for the records written and removed since the last read."""
        self.stamp = str(self.key[1])
        now = inodes(self.folder)
        written = sorted(task_id for task_id, inode in now.items() if self.seen.get(task_id) != inode)
        removed = sorted(set(self.seen) - set(now))
        self.seen = now
        for task_id in removed:
            self.shown.pop(task_id, None)
        return self.task_messages(written) + [
            Message('removed', to_json({'id': task_id}), self.stamp) for task_id in removed]

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
        """The records a change of ``task_id`` shows: its own, and its job's for a step."""
        from .tasklist import shown_record
        shown = []
        while task_id and task_id not in done and is_task_id(task_id):
            done.add(task_id)
            try:
                record = reconcile_task(self.app.store, self.app.store.read_task(task_id, checked=True))
            except NotFound:
                break
            shown.append(shown_record(self.app, record, self.client))
            task_id = record.get(Field.JOB, '')
        return shown
