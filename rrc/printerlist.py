"""``rrcloud printers`` and ``service=printers``: every named printer of a
store (``printers/NAME.conf``), where it hangs and what it does now.

A printer's state, first match wins: ``printing`` (a print task for it, by
its name or its port, is running), ``paused`` (that task is suspended),
``error`` (its conf is bad, or its last print failed: not one a user
cancelled or killed), ``offline`` (its port does not exist; not on a farm's
front-end: the port is its worker's), else ``idle``.  A printing or paused
printer shows its temperatures from its print's newest progress event.

Bounded: the running prints come from the ``running`` markers (at most the
busy tasks), the last ended print from the history file (rrc/ledger.py,
itself bounded), never from a read of every record in the store.
"""

import os

from .errors import ConfigError, NotFound, UsageError
from .events import with_live_progress
from .ledger import is_cancel, number_or_none, read_entries
from .printers import load_printer, print_targets, printer_names
from .schema import Field, TaskStatus
from .states import State, state_of
from .store import marked

# What a printer's entry shows of its print's live state (events.with_live_progress's names).
LIVE_FIELDS = ('hotend', 'hotendTarget', 'bed', 'bedTarget')


def list_printers(store, farm=False):
    """One dict per printer, by name: name, port, baud, state, task, error,
    temperatures.  On a ``farm`` (``backend = rq``) a printer's port is on the
    machine of the worker that serves it, so none is looked for here."""
    names = printer_names(store.root)
    if not names:
        return []
    running = running_prints(store)
    history = read_entries(store, prints_only=True)
    return [printer_entry(store, name, running, history, farm) for name in names]


def running_prints(store):
    """The records of the running or paused prints (unreadable ones passed over)."""
    found = []
    for task_id in marked(store, 'running'):
        try:
            record = store.read_task(task_id)
        except (NotFound, UnicodeDecodeError, OSError):  # ended meanwhile, or not text: no printer said
            continue
        if print_targets(record) and state_of(record) in (State.RUNNING, State.SUSPENDED):
            found.append(record)  # (an ended print's marker lasts until its runner has tidied up)
    return found


def printer_entry(store, name, running, history, farm=False):
    """What the list says of one printer."""
    entry = {'name': name, 'port': '', 'baud': '', 'state': 'error', 'task': '', 'error': '',
             **dict.fromkeys(LIVE_FIELDS, '')}
    try:
        printer = load_printer(store.root, name)
    except (ConfigError, UsageError) as exc:  # its conf is bad, or was removed since the listing
        return dict(entry, error=str(exc))
    entry.update(port=printer.port, baud=str(printer.baud or ''))
    targets = {name, printer.port, os.path.realpath(printer.port)}
    current = [record for record in running if print_targets(record) & targets]
    if current:
        return dict(entry, **live_state(store, current[0]), task=current[0][Field.ID])
    if not farm and not os.path.exists(printer.port):
        return dict(entry, state='offline')
    last = last_print(history, targets)
    if last and last.get('status') == TaskStatus.FAILED and not is_cancel(last.get('error') or ''):
        return dict(entry, state='error', task=last.get('id', ''), error=last.get('error') or 'failed')
    return dict(entry, state='idle')


def live_state(store, record):
    """A running print's state word and its printer's temperatures."""
    shown = with_live_progress(store, record)
    state = 'paused' if state_of(record) == State.SUSPENDED else 'printing'
    return dict({key: shown[key] for key in LIVE_FIELDS if key in shown}, state=state)


def last_print(history, targets):
    """The history entry of the print on this printer that ended last, or None."""
    mine = [entry for entry in history if entry.get('printer') in targets]
    return max(mine, key=lambda entry: number_or_none(entry.get(Field.ETIME)) or 0, default=None)
