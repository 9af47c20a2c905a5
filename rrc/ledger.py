"""The history file: one line per ended task, kept when the task's files go.

Why a module of its own, not ``history``: ``history`` estimates a running
tool's time left from the records that are still there; this file must
outlive them (``rrcloud rm``, ``clean``, ``maxDataRetention``), and it is
written by the state machine as a task ends, so it sits below ``states``
(``history`` sits above it and takes its ``median`` from here).

``tasks/history`` holds one JSON object per line (id, service, status,
error, node, times, sizes, and for a print its printer and filament).
``states.move_locked`` appends it in the one place a task reaches a final
state, under the store lock, so the local runner, kill, reconcile and a
farm front-end's ``workdone`` each write an end once: the first final
state wins, and a lost race writes nothing.  The line is one ``write`` on an
``O_APPEND`` descriptor, at most ``MAX_LINE_BYTES``: on a local file system
two such writes never interleave.  Over NFS ``O_APPEND`` is not atomic
between clients; there the store lock (which a shared store must honour,
docs/FARM.md) keeps writers apart.  A line a crash left torn (no newline at
its end) is skipped when read, and the next append starts on a line of its
own.  A line is read back by its known keys only, each checked (a foreign
or hostile line is skipped or loses the key, never breaks the summary).

Bounded: past ``MAX_HISTORY_BYTES`` the file becomes ``tasks/history.1``
(the one before is dropped), so the history holds the last 4 to 8 MiB,
some 20,000 to 40,000 tasks; a read takes at most that much of each file,
and the summary keeps the ``MAX_REASONS`` most frequent reasons a printer's
prints failed (their numbers made ``N``: "after line 1234" and "after line
99" are one reason).
"""

import os
import time

from .events import last_progress_event
from .printers import PRINT_SERVICES, print_port
from .schema import Field, TaskStatus

HISTORY_FILE = 'history'
# The file is rotated past this size: one older file is kept beside it.
MAX_HISTORY_BYTES = 4 * 1024 * 1024
# One line, written whole by one write(2) (PIPE_BUF on Linux is 4096).
MAX_LINE_BYTES = 4000
# An error or a printer's name is cut to this many characters in a line.
MAX_TEXT_CHARS = 300
# The G-code metadata of a print's input (rrc/gcodemeta.py) kept in its line, by the names history shows.
FILAMENT_FIELDS = ((Field.GCODE_FILAMENT_MM, 'filamentMm'), (Field.GCODE_FILAMENT_GRAMS, 'filamentGrams'))
FILAMENT_NAMES = tuple(name for _, name in FILAMENT_FIELDS)
# A line's number fields (the rest of an entry is text).
NUMBER_KEYS = (Field.CTIME, Field.STIME, Field.ETIME, Field.SIZE_IN, Field.SIZE_OUT)
TEXT_KEYS = ('id', 'service', 'status', 'node', 'error', 'printer')
# A printer's summary lists this many reasons (the most frequent), the rest as one.
MAX_REASONS = 10
# The most days ``--since`` takes.
MAX_DAYS = 100_000


def history_paths(store):
    """The history files, oldest first: the rotated one, then the current."""
    current = os.path.join(store.tasks, HISTORY_FILE)
    return [current + '.1', current]


# -- writing ------------------------------------------------------------------

def record_ended(store, record):
    """Append the line of a task that has just reached its final state.

    Called under the store lock by the state machine.  A history that cannot
    be written is said on stderr, never fails the move: the task's end is
    its record, the history a summary of it."""
    import json
    line = json.dumps(entry_of(store, record), sort_keys=True, ensure_ascii=True, separators=(',', ':'))
    try:
        append_line(store, fit_line(line, store, record).encode() + b'\n')
    except OSError as exc:
        import sys
        print(f'rrcloud: warning: the history file cannot be written: {exc.strerror}', file=sys.stderr)


def entry_of(store, record):
    """What a history line keeps of an ended record."""
    entry = {'id': record.get(Field.ID, ''), 'service': record.get(Field.SERVICE, ''),
             'status': record.get(Field.STATUS, ''), 'node': record.get(Field.NODE, '')}
    if record.get(Field.ERROR):
        entry['error'] = record[Field.ERROR][:MAX_TEXT_CHARS]
    for key in NUMBER_KEYS:
        number = number_or_none(record.get(key))
        if number is not None:
            entry[key] = int(number) if key in (Field.SIZE_IN, Field.SIZE_OUT) else number
    printer = printer_of(record)
    if printer:
        entry['printer'] = printer[:MAX_TEXT_CHARS]
        entry['filament'] = filament_of(record, share_printed(store, record))
    return entry


def fit_line(line, store, record):
    """The line, or when it is too long a shorter one without the error text."""
    if len(line) < MAX_LINE_BYTES:
        return line
    import json
    entry = dict(entry_of(store, record), error='(too long)', filament={})
    if 'printer' in entry:
        entry['printer'] = entry['printer'][:64]
    return json.dumps(entry, sort_keys=True, ensure_ascii=True, separators=(',', ':'))


def printer_of(record):
    """The printer a print task names (its ``printer`` field, else its port);
    '' for any other task."""
    if record.get(Field.PRINTER):
        return record[Field.PRINTER]
    if record.get(Field.SERVICE) not in PRINT_SERVICES:
        return ''
    return print_port(record) or '?'


def filament_of(record, share=1.0):
    """The filament of a print's G-code metadata (where its record has it),
    by the names history shows, times the ``share`` of the file printed."""
    found = {}
    for field, name in FILAMENT_FIELDS:
        number = number_or_none(record.get(field))
        if number is not None:
            found[name] = round(number * share, 3)
    return found


def share_printed(store, record):
    """1 for a completed print; for one that ended otherwise, the share of
    its lines the sender got through (its last progress event), 0 when it
    sent none."""
    if record.get(Field.STATUS) == TaskStatus.COMPLETE:
        return 1.0
    event = last_progress_event(store, record.get(Field.ID, ''))
    data = event.data if event is not None and isinstance(event.data, dict) else {}
    done, total = number_or_none(data.get('done')), number_or_none(data.get('total'))
    return min(1.0, max(0.0, done / total)) if done is not None and total else 0.0


def number_or_none(text):
    """A finite number from a record's text, else None."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float('inf') else None


def append_line(store, data):
    """Append one whole line (rotating the file first when it is full)."""
    path = history_paths(store)[1]
    rotate_if_full(path, len(data))
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)  # read: its last byte
    try:
        give_to_store_owner(fd, os.path.dirname(path))
        if not ends_with_newline(fd):
            data = b'\n' + data  # a crash left a torn line: ours starts on its own
        os.write(fd, data)
    finally:
        os.close(fd)


def give_to_store_owner(fd, folder):
    """Root (an admin's ``rrcloud info`` that ends a dead task) hands the
    file to the store's owner: the server's user must append to it next."""
    if os.geteuid() != 0:
        return
    owner, mine = os.stat(folder), os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
        os.fchown(fd, owner.st_uid, owner.st_gid)


def rotate_if_full(path, adding):
    """Past MAX_HISTORY_BYTES the file becomes ``history.1`` (under the store lock: one rotates)."""
    try:
        if os.path.getsize(path) + adding > MAX_HISTORY_BYTES:
            os.replace(path, path + '.1')
    except FileNotFoundError:
        pass


def ends_with_newline(fd):
    """True for an empty file or one whose last byte is a newline."""
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b'\n'


# -- reading ------------------------------------------------------------------

def read_entries(store, since=None, prints_only=False):
    """The history's entries, oldest first; with ``since`` (Unix time) only
    the tasks that ended then or later; ``prints_only``: only the prints'
    (a line that names no printer is not parsed: ``rrcloud printers`` reads
    the history at each request).  Torn or foreign lines are skipped."""
    entries = []
    for path in history_paths(store):
        try:
            with open(path, 'rb') as handle:
                data = handle.read(MAX_HISTORY_BYTES + MAX_LINE_BYTES)  # more was never written by rrcloud
        except FileNotFoundError:
            continue
        lines = data.split(b'\n')[:-1]
        if prints_only:
            lines = [line for line in lines if b'"printer"' in line]
        entries += [entry for entry in map(parse_line, lines) if entry and (not prints_only or 'printer' in entry)]
    return [entry for entry in entries if since is None or (number_or_none(entry.get(Field.ETIME)) or 0) >= since]


def parse_line(line):
    """One line's entry, or None for a torn or foreign one: its known keys
    only, each of its kind (text on one line, finite numbers; the filament
    by its two names).  The last piece after the final newline is never a
    line: ``read_entries`` drops it."""
    import json
    if len(line) > MAX_LINE_BYTES:
        return None
    try:
        found = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(found, dict) or not is_line_text(found.get('service')):
        return None
    entry = {key: found[key][:MAX_TEXT_CHARS] for key in TEXT_KEYS if is_line_text(found.get(key))}
    entry.update({key: number for key in NUMBER_KEYS if (number := json_number(found.get(key))) is not None})
    if 'printer' in entry:
        filament = found.get('filament') if isinstance(found.get('filament'), dict) else {}
        entry['filament'] = {name: number for name in FILAMENT_NAMES
                             if (number := json_number(filament.get(name))) is not None}
    return entry


def is_line_text(value):
    """A non-empty string with no control character (one line of a record)."""
    return isinstance(value, str) and value != '' and value.isprintable()


def json_number(value):
    """A finite number a line holds (a string of one too, as records keep them), else None."""
    return None if isinstance(value, bool) else number_or_none(value)


def check_days(text):
    """``--since`` / ``since``: days, a number from 0 to MAX_DAYS (0.5 is 12 hours)."""
    from .errors import UsageError
    number = number_or_none(text) if isinstance(text, str) and len(text) <= 32 else None
    if number is None or not 0 <= number <= MAX_DAYS:
        raise UsageError(f'--since takes a number of days from 0 to {MAX_DAYS}, not {str(text)[:32]!r}')
    return number


# -- the summary --------------------------------------------------------------

def summarize(entries):
    """Per service and per printer, what the entries say (``rrcloud history``)."""
    services, printers = {}, {}
    for entry in entries:
        add_to_service(services.setdefault(entry['service'], new_service_sums()), entry)
        if entry.get('printer'):
            add_to_printer(printers.setdefault(str(entry['printer']), new_printer_sums()), entry)
    return {'services': {name: finish_service(sums) for name, sums in sorted(services.items())},
            'printers': {name: finish_printer(sums) for name, sums in sorted(printers.items())}}


def new_service_sums():
    """A service's sums before its first entry."""
    return {'tasks': 0, 'successes': 0, 'failures': 0, 'runTimes': [], 'bytesIn': 0, 'bytesOut': 0}


def add_to_service(sums, entry):
    """Count one ended task into its service's sums."""
    sums['tasks'] += 1
    sums['successes' if entry.get('status') == TaskStatus.COMPLETE else 'failures'] += 1
    seconds = run_seconds(entry)
    if seconds is not None:
        sums['runTimes'].append(seconds)
    sums['bytesIn'] += int(number_or_none(entry.get(Field.SIZE_IN)) or 0)
    sums['bytesOut'] += int(number_or_none(entry.get(Field.SIZE_OUT)) or 0)


def finish_service(sums):
    """A service's sums as answered: run times as their total and median."""
    times = sums.pop('runTimes')
    return dict(sums, totalRunSeconds=round(sum(times), 3),
                medianRunSeconds=round(median(times), 3) if times else 0)


def run_seconds(entry):
    """Seconds from start to end; None for a task that never started (failed while queued)."""
    start, end = number_or_none(entry.get(Field.STIME)), number_or_none(entry.get(Field.ETIME))
    return end - start if start is not None and end is not None and end >= start else None


def new_printer_sums():
    """A printer's sums before its first print."""
    return {'prints': 0, 'completed': 0, 'printSeconds': 0.0, 'filament': {}, 'cancelled': 0, 'failed': 0,
            'reasons': {}}


def add_to_printer(sums, entry):
    """Count one ended print into its printer's sums (a failure with its reason)."""
    sums['prints'] += 1
    sums['printSeconds'] += run_seconds(entry) or 0
    for key, value in (entry.get('filament') or {}).items():
        sums['filament'][key] = sums['filament'].get(key, 0) + (number_or_none(value) or 0)
    if entry.get('status') == TaskStatus.COMPLETE:
        sums['completed'] += 1
        return
    reason = reason_of(entry.get('error') or 'failed')
    sums['cancelled' if is_cancel(reason) else 'failed'] += 1
    sums['reasons'][reason] = sums['reasons'].get(reason, 0) + 1


def reason_of(error):
    """An error as a reason to count: its numbers made ``N`` (``cancelled after
    line 1234`` and ``… line 99`` are one reason)."""
    import re
    return re.sub(r'\d+(\.\d+)?', 'N', error)


def is_cancel(reason):
    """A print a user ended: cancelled (a printer's cancel, a pipe's) or killed."""
    return reason == 'killed' or reason.startswith('cancelled')


def finish_printer(sums):
    """A printer's sums as answered, rounded; its reasons the most frequent
    ``MAX_REASONS`` (the rest counted as ``other reasons``)."""
    ranked = sorted(sums['reasons'].items(), key=lambda kv: (-kv[1], kv[0]))
    reasons = dict(ranked[:MAX_REASONS])
    if ranked[MAX_REASONS:]:
        reasons['other reasons'] = sum(count for _, count in ranked[MAX_REASONS:])
    return dict(sums, printSeconds=round(sums['printSeconds'], 3), reasons=reasons,
                filament={key: round(value, 3) for key, value in sorted(sums['filament'].items())})


def median(values):
    """The middle value (the mean of the two middle ones for an even count)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def history_report(store, since_days=None, now=None):
    """The summary of the tasks that ended in the last ``since_days`` days (all without)."""
    since = None if since_days is None else (now or time.time()) - check_days(since_days) * 86400
    report = summarize(read_entries(store, since))
    return dict(report, since=round(since, 3) if since is not None else 0)


def report_blocks(report):
    """The report as ``key: value`` blocks (the text answer, as ``info`` lists
    records): one per service, then one per printer."""
    blocks = [named_block('service', name, sums) for name, sums in report['services'].items()]
    for name, sums in report['printers'].items():
        filament = sums.get('filament') or {}
        block = named_block('printer', name, {key: value for key, value in sums.items() if key != 'filament'})
        block.update({key: filament[key] for key in FILAMENT_NAMES if key in filament})
        block['reasons'] = reasons_text(sums.get('reasons') or {})
        blocks.append(block)
    return [{key: text_value(value) for key, value in block.items() if text_value(value) != ''} for block in blocks]


def named_block(kind, name, sums):
    """``{kind: name}`` followed by the sums (a sum of that name does not replace it)."""
    block = {kind: name}
    block.update((key, value) for key, value in sums.items() if key != kind)
    return block


def reasons_text(reasons):
    """``2 cancelled; 1 printer halted`` (most frequent first)."""
    return '; '.join(f'{count} {reason}' for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def text_value(value):
    """A value as a record line shows it: a whole number without '.0', spaces trimmed."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()
