"""The removals log, ``tasks/removed``: one line ``TIME_NS ID`` for each
task removed (Store.remove_task writes it, the one place a record goes),
so a client of ``service=changes`` that comes back with its cursor after a
removal is told of it (rrc/web/changes.py): a record that is gone leaves
nothing else behind.

A line is one ``write`` on an ``O_APPEND`` descriptor (two never
interleave on a local file system).  Bounded: past MAX_BYTES the file
becomes ``tasks/removed.1`` (the one before is dropped), so it holds the
last 1,500 to 3,000 removals.  ``removed_since`` says too from when on the
log is whole: the time of the first line of ``removed.1`` once a file was
dropped (two removers rotating at once may drop a fresh file: that only
moves this moment later).  A client whose cursor is older may have missed
a removal, and reloads its list.  A torn or foreign line is skipped.
"""

import os

from .names import DIGITS, is_task_id

REMOVED_FILE = 'removed'
# About 1,500 lines of 44 bytes; one older file is kept beside it.
MAX_BYTES = 64 * 1024


def removed_paths(tasks):
    """The removals files below the store's ``tasks`` folder, oldest first."""
    current = os.path.join(tasks, REMOVED_FILE)
    return [current + '.1', current]


def note_removed(tasks, task_id, time_ns):
    """Append the line of a removed task (an error is the caller's: the removal goes on)."""
    current = removed_paths(tasks)[1]
    fd = os.open(current, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f'{time_ns} {task_id}\n'.encode())
        full = os.fstat(fd).st_size > MAX_BYTES
    finally:
        os.close(fd)
    if full:
        try:
            os.replace(current, current + '.1')
        except FileNotFoundError:  # another remover rotated it just now
            pass


def removed_since(tasks, since_ns):
    """(ids removed at or after ``since_ns``, oldest first; the time from
    which on the log holds every removal: 0 while nothing was dropped)."""
    found, whole_from = [], 0
    for number, path in enumerate(removed_paths(tasks)):
        lines = read_lines(path)
        if number == 0 and lines:
            whole_from = lines[0][0]
        found += [task_id for time_ns, task_id in lines if time_ns >= since_ns]
    return found, whole_from


def read_lines(path):
    """[(time ns, id)] of one removals file's whole, well-formed lines."""
    try:
        with open(path, 'rb') as handle:
            text = handle.read(2 * MAX_BYTES).decode('ascii', 'replace')
    except FileNotFoundError:
        return []
    lines = []
    for line in text.split('\n')[:-1]:  # the last piece: '' or a torn line
        stamp, _, task_id = line.partition(' ')
        if 0 < len(stamp) <= 20 and DIGITS.issuperset(stamp) and is_task_id(task_id):
            lines.append((int(stamp), task_id))
    return lines
