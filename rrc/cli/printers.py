"""``rrcloud printers``: every named printer of the store (rrc/printerlist.py),
or with ``--s`` of that server (``service=printers``)."""

import sys

from .output import get_from_server
from ..errors import ExitCode, NoServer, UsageError
from ..names import is_record_key
from ..printerlist import list_printers
from ..remote import terminal_safe
from ..store import format_record, to_json


def cmd_printers(ctx, args):
    """``rrcloud printers``: one ``key: value`` block per printer, or with
    ``--format=json`` one list."""
    if args:
        raise UsageError('printers takes no arguments')
    printers = server_printers(ctx) if ctx.options.s else list_printers(ctx.store, farm=ctx.config.backend == 'rq')
    if ctx.options.format == 'json':
        sys.stdout.write(to_json(printers, indent=1, sort_keys=True) + '\n')
    else:
        sys.stdout.write('\n'.join(format_record(printer) for printer in printers))
    return ExitCode.OK


def server_printers(ctx):
    """The ``--s`` server's printers, their keys and values made safe for a terminal."""
    response = get_from_server(ctx, {'service': 'printers', 'format': 'json'})
    try:
        return [{key: terminal_safe(value).strip() for key, value in printer.items() if is_record_key(str(key))}
                for printer in response.json()]
    except (ValueError, TypeError, AttributeError, RecursionError):
        raise NoServer(f'{response.url}: not an rrcloud printers answer') from None
