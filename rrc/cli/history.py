"""``rrcloud history [--since=DAYS]``: what the ended tasks did, per service
and per printer, from the store's history file (rrc/ledger.py), or with
``--s`` from that server's ``service=history``."""

import sys

from .options import days_argument
from ..errors import ExitCode, NoServer, UsageError
from ..ledger import check_days, history_report, report_blocks
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
    from ..remote import CONNECT_TIMEOUT, cannot_reach, http_session, refusal_reason, server_url
    url = server_url(ctx.options.s, ctx.config.port)
    params = {'service': 'history', 'format': 'json', **({'since': since} if since is not None else {})}
    try:
        response = http_session(ctx.config.client_token_for).get(url, params=params, timeout=(CONNECT_TIMEOUT, 60))
    except OSError as exc:  # requests' errors are OSErrors
        raise cannot_reach(url, exc) from None
    if response.status_code != 200:
        raise (UsageError if response.status_code == 400 else NoServer)(f'{url}: {refusal_reason(response)}')
    try:
        return safe_report(response.json())
    except (ValueError, TypeError, AttributeError, KeyError):
        raise NoServer(f'{url}: not an rrcloud history answer') from None


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
        if isinstance(value, dict):
            safe[key] = {terminal_safe(k): v if isinstance(v, (int, float)) else 0
                         for k, v in value.items() if key != 'filament' or is_record_key(str(k))}
        else:
            safe[key] = value if isinstance(value, (int, float)) else terminal_safe(value)
    return safe
