"""``rrcloud history [--since=DAYS]``: what the ended tasks did, per service
and per printer, from the store's history file (rrc/ledger.py), or with
``--s`` from that server's ``service=history``."""

import sys

from .options import days_argument
from .output import get_from_server
from ..errors import ExitCode, NoServer
from ..ledger import FILAMENT_NAMES, check_days, history_report, report_blocks
from ..names import is_record_key
from ..remote import terminal_safe
from ..store import format_record, to_json


def cmd_history(ctx, args):
    """``rrcloud history [--since=DAYS]``: the summary as ``key: value`` blocks
    (one per service, one per printer) or, with ``--format=json``, one object."""
    since = since_days(args)
    report = server_report(ctx, since) if ctx.options.s else history_report(ctx.store, since)
    if ctx.options.format == 'json':
        sys.stdout.write(to_json(report, indent=1, sort_keys=True) + '\n')
    else:
        sys.stdout.write('\n'.join(format_record(block) for block in report_blocks(report)))
    return ExitCode.OK


def since_days(args):
    """DAYS of ``--since=DAYS`` or ``--since DAYS`` (None without), checked."""
    text = days_argument(args, '--since', 'history takes only --since=DAYS')
    if text is not None:
        check_days(text)  # checked here: a server is asked only for a number
    return text


def server_report(ctx, since):
    """The ``--s`` server's report, its names made safe for a terminal."""
    params = {'service': 'history', 'format': 'json', **({'since': since} if since is not None else {})}
    response = get_from_server(ctx, params)
    try:
        return safe_report(response.json())
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        raise NoServer(f'{response.url}: not an rrcloud history answer') from None


def safe_report(report):
    """A server's report kept to its shape: names and values printable, one line."""
    return {'since': float(report.get('since') or 0),
            'services': {terminal_safe(name): safe_sums(sums) for name, sums in report['services'].items()},
            'printers': {terminal_safe(name): safe_sums(sums) for name, sums in report['printers'].items()}}


def safe_sums(sums):
    """One service's or printer's sums: only keys a record may have; numbers
    stay numbers, dicts keep numbers (filament, counts by reason), anything
    else becomes safe text."""
    safe = {}
    for key, value in sums.items():
        if not is_record_key(str(key)):
            continue
        if key == 'filament':
            safe[key] = {name: value[name] for name in FILAMENT_NAMES if isinstance(value, dict)
                         and isinstance(value.get(name), (int, float)) and not isinstance(value[name], bool)}
        elif isinstance(value, dict):
            safe[key] = {terminal_safe(k): v if isinstance(v, (int, float)) else 0 for k, v in value.items()}
        else:
            safe[key] = value if isinstance(value, (int, float)) else terminal_safe(value)
    return safe
