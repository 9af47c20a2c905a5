"""``service=tasks``: the page's task list, newest first, a page at a time.

Task ids begin with their creation time (rrc/names.is_task_id), so the
sorted names of ``tasks/info`` are the list's order: a page reads the
records it shows (and the steps it leaves out), never every record.  A
filtered page reads records newest first until it has ``limit``; it reads
at most SCAN_MAX of them in one request, then answers what it found with
``more`` and the ``next`` id to go on from, so no request reads the whole
store.

Each record is shown as ``info`` shows it: judged (App.read_task), with its live
progress, a job with its steps (``stepN`` lines), another client's inputs
as file names.  A step of a job (a ``job`` field) is left out: its job
carries it.  ``stamp`` is the changes stream's cursor (rrc/web/changes.py,
which imports this module) as of the moment before the list was read: what changed after it, the
stream gives.
"""

from ..errors import HTTPError, NotFound
from ..names import DIGITS, check_task_id, is_service_name
from ..schema import Field, TaskStatus
from ..states import State, state_of
from ..store import format_record, to_json
from .request import Response

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# The most records one request reads for a filtered page (about 40 ms here):
# a rare status or service in a large store is found over several requests.
SCAN_MAX = 2000
# status= takes the wire's three words and the busy states beside running.
STATUS_FILTERS = frozenset((TaskStatus.BUSY, TaskStatus.COMPLETE, TaskStatus.FAILED,
                            State.QUEUED, State.RUNNING, State.SUSPENDED, State.WAITING))


class ListQuery:
    """What a page of the list asks for, checked: limit, before, status, of."""

    def __init__(self, form):
        self.limit = parse_limit(form.get('limit', str(DEFAULT_LIMIT)))
        self.before = check_task_id(form['before']) if form.get('before') else None
        self.status = form.get('status') or None
        if self.status is not None and self.status not in STATUS_FILTERS:
            raise HTTPError(400, f'bad status: {self.status[:32]!r} (one of {", ".join(sorted(STATUS_FILTERS))})')
        self.of = form.get('of') or None
        if self.of is not None and not is_service_name(self.of):
            raise HTTPError(400, f'bad service name: {self.of[:32]!r}')

    def may_keep(self, record):
        """False for a record this page never shows, judged before its status:
        a step (its job shows it), another service's task."""
        return not record.get(Field.JOB) and (self.of is None or record.get(Field.SERVICE) == self.of)

    def keeps(self, record):
        """True for a (reconciled) record this page shows."""
        return self.status is None or self.status in (record.get(Field.STATUS), state_of(record))


def parse_limit(text):
    """The page's size: ASCII digits only (str.isdigit takes '²', which int() refuses)."""
    if not text or len(text) > 6 or not DIGITS.issuperset(text) or not 1 <= int(text) <= MAX_LIMIT:
        raise HTTPError(400, f'limit must be a number from 1 to {MAX_LIMIT}')
    return int(text)


def answer_tasks(app, request):
    """``service=tasks``: one page of the list, with ``more``, ``next`` and ``stamp``."""
    query = ListQuery(request.form)
    stamp = current_stamp(app.store)  # before reading: a change while reading comes again in the stream
    page = list_page(app, query, request.client)
    answer = dict(page, stamp=stamp)
    if request.format == 'json':
        return Response(to_json(answer, sort_keys=True) + '\n', 200, 'application/json')
    headers = [('X-RRCloud-More', 'yes' if page['more'] else 'no'), ('X-RRCloud-Next', page['next']),
               ('X-RRCloud-Stamp', stamp)]
    return Response('\n'.join(format_record(r) for r in page['tasks']), 200, headers=headers)


def current_stamp(store):
    """The changes stream's cursor as of now: the info folder's mtime in ns ('0' before any task)."""
    import os
    try:
        return str(os.stat(store.folder('info')).st_mtime_ns)
    except FileNotFoundError:
        return '0'


def list_page(app, query, client):
    """{'tasks': records shown, 'more': older ones may match, 'next': the id to go on from}."""
    ids = older_ids(app.store, query.before)
    shown, read, last = [], 0, ''
    while ids and len(shown) < query.limit and read < SCAN_MAX:
        last = ids.pop()
        read += 1
        record = read_record(app, last, query)
        if record is not None and query.keeps(record):
            shown.append(shown_record(app, record, client))
    return {'tasks': shown, 'more': bool(ids), 'next': last if ids else ''}


def older_ids(store, before):
    """The ids older than ``before`` (all without it), oldest first."""
    ids = store.task_ids()
    if before is None:
        return ids
    import bisect
    return ids[:bisect.bisect_left(ids, before)]


def read_record(app, task_id, query):
    """A task's record as ``info`` judges it (App.judged: a dead runner's
    task is not busy, a farm's silent worker's is asked after), or None when
    it is gone or ``query`` never shows it (not judged then: that may cost a lock)."""
    try:
        record = app.store.read_task(task_id, checked=True)
        return app.judged(app.store, record) if query.may_keep(record) else None
    except NotFound:
        return None


def shown_record(app, record, client):
    """A record read by app.read_task (with its live progress) as ``info``
    shows it to ``client``: the time left, for a progress bar, a job's steps."""
    from .answers import client_view, job_info
    record = with_eta(app.store, record)
    if record.get(Field.STEPS) is not None:
        record = job_info(app, record)
    return client_view(record, client)


def with_eta(store, record):
    """A busy task's record with ``eta``: the seconds left as of now, from its
    newest progress event (a print's record has ``etaSeconds`` already)."""
    if Field.PROGRESS not in record or record.get(Field.STATUS) != TaskStatus.BUSY or 'etaSeconds' in record:
        return record
    from ..events import last_progress_event
    event = last_progress_event(store, record[Field.ID])
    eta = event.data.get('eta') if event is not None and isinstance(event.data, dict) else None
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0 <= eta < 10 ** 9:
        return record
    import time
    left = max(0.0, eta - max(0.0, time.time() - float(event.time or 0)))
    return dict(record, eta=f'{left:.0f}')
