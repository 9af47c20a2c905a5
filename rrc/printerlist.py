"""``rrcloud printers`` and ``service=printers``: every named printer of a
store (``printers/NAME.conf``), where it hangs and what it does now.

A printer's state, first match wins: ``printing`` (a print task for it, by
its name or its port, is running), ``paused`` (that task is suspended),
``error`` (its conf is bad, or its last print failed), ``offline`` (its port
does not exist; not on a farm's front-end: the port is its worker's), else ``idle``.  Temperatures are left empty here: the
sender reports them while it prints.
"""

import os

from .errors import ConfigError, NotFound, UsageError
from .printers import PRINT_SERVICES, load_printer, printer_names
from .queue import print_targets
from .schema import Field, TaskStatus
from .states import State, state_of
from .store import marked

# A running print's record in these states shows its printer paused.
PAUSED_STATES = (State.SUSPENDED, 'paused')


def list_printers(store, farm=False):
    """One dict per printer, by name: name, port, baud, state, task, error,
    temperatures.  On a ``farm`` (``backend = rq``) a printer's port is on the
    machine of the worker that serves it, so none is looked for here."""
    prints = print_records(store)
    running = set(marked(store, 'running'))
    return [printer_entry(store.root, name, prints, running, farm) for name in printer_names(store.root)]


def print_records(store):
    """The records of the store's print tasks (unreadable ones passed over)."""
    found = []
    for task_id in store.task_ids():
        try:
            record = store.read_task(task_id)
        except (NotFound, UnicodeDecodeError):  # removed meanwhile, or not text: it says nothing of a printer
            continue
        if record.get(Field.SERVICE) in PRINT_SERVICES:
            found.append(record)
    return found


def printer_entry(root, name, prints, running, farm=False):
    """What the list says of one printer."""
    entry = {'name': name, 'port': '', 'baud': '', 'state': 'error', 'task': '', 'error': '', 'temperatures': ''}
    try:
        printer = load_printer(root, name)
    except (ConfigError, UsageError) as exc:  # its conf is bad, or was removed since the listing
        return dict(entry, error=str(exc))
    entry.update(port=printer.port, baud=str(printer.baud or ''))
    mine = [record for record in prints if print_targets(record) & {name, printer.port}]
    current = [record for record in mine if record.get(Field.ID) in running]
    if current:
        state = 'paused' if state_of(current[0]) in PAUSED_STATES else 'printing'
        return dict(entry, state=state, task=current[0][Field.ID])
    if not farm and not os.path.exists(printer.port):
        return dict(entry, state='offline')
    last = last_ended(mine)
    if last and last.get(Field.STATUS) == TaskStatus.FAILED:
        return dict(entry, state='error', task=last[Field.ID], error=last.get(Field.ERROR, 'failed'))
    return dict(entry, state='idle')


def last_ended(records):
    """The record of the print that ended last, or None."""
    ended = [r for r in records if r.get(Field.STATUS) in (TaskStatus.COMPLETE, TaskStatus.FAILED)]
    return max(ended, key=lambda r: float(r.get(Field.ETIME) or 0), default=None)
