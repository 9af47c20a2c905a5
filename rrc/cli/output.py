"""What the CLI prints of tasks: records, summaries, ids; refreshed from their server first."""

import sys
import time

from ..errors import ExitCode, NoServer, NotFound, RRCloudError, UsageError
from ..names import is_single_line
from ..remote import (CONNECT_TIMEOUT, cannot_reach, http_session, parse_answer, refresh_remote,
    refusal_reason, server_url, terminal_safe)
from ..schema import Field, TaskStatus
from ..states import STATES, State, list_tasks, state_of
from ..store import parse_record, to_json


def print_record(record, fmt, out=None):
    """Print one task as ``=== id: ID`` + ``key: value`` lines, or JSON."""
    out = out or sys.stdout
    if fmt == 'json':
        out.write(to_json(record, indent=1, sort_keys=True) + '\n')
        return
    out.write(f'=== id: {terminal_safe(record.get("id", ""))}\n')
    for key in sorted(record):
        out.write(f'{key}: {terminal_safe(record[key])}\n')
    out.write('\n')


def all_records(ctx):
    """Every task: of this store (remote ones asked about), or of the ``--s`` server."""
    if ctx.options.s:
        return ask_server(ctx, {'service': 'info'}, listing=True)
    warned = set()  # a server that is down is said once, not once per task
    return [refresh_if_remote(ctx.store, ctx.config, r, warned) for r in list_tasks(ctx.store, ctx.config)]


SUMMARY_COLUMNS = ('id', 'service', 'status', 'age', 'duration', 'input', 'result')


def print_summaries(records, fmt):
    """One line per task, columns separated by spaces, none ever empty (``-``);
    the last, the result's name or a failed task's reason, may hold spaces.
    A header on a terminal only, so scripts read the lines as they are."""
    now = time.time()
    rows = [task_summary(record, now) for record in records]
    if fmt == 'json':
        print(to_json(rows, indent=1))
        return ExitCode.OK
    lines = [[row[Field.ID], row[Field.SERVICE], row[Field.STATUS], format_age(row['age']),
              format_age(row['duration']), row['input'], row['error'] or row['result']] for row in rows]
    if sys.stdout.isatty():
        lines.insert(0, [name.upper() for name in SUMMARY_COLUMNS])
    for line in lines:
        print(f'{line[0]:<23}  {line[1]:<10} {line[2]:<9} {line[3]:>7} {line[4]:>8}  {line[5]:<16} {line[6]}')
    return ExitCode.OK


def task_summary(record, now):
    """id, service, state, age and run time in seconds (None: not known), the
    main input's own name, the result's name, a failed task's reason."""
    def number(key):
        try:
            return float(record.get(key) or '')
        except ValueError:
            return None
    created, started, ended = number('ctime'), number('stime') or number('ctime'), number('etime')
    state = state_of(record)
    out = record.get(Field.OUT, '') if state == State.COMPLETE else ''
    error = record.get(Field.ERROR) or (f'exit code {record[Field.EXIT_CODE]}' if record.get(Field.EXIT_CODE) else '')
    return {
        'id': _column(record.get(Field.ID)), 'service': _column(record.get(Field.SERVICE)),
        'status': _column(state or record.get(Field.STATUS)),
        'age': None if created is None else max(0.0, now - created),
        'duration': None if state in (State.QUEUED, State.WAITING) or started is None
        else max(0.0, (ended or now) - started),
        'input': _column(main_input_name(record)),
        'result': _column(out.rsplit('/', 1)[-1]),
        'error': ' '.join(terminal_safe(error).split()) if state == State.FAILED else '',
    }


def main_input_name(record):
    """The main input's own file name, as its client named it (``inputNames``);
    '' when it was content or the record does not say."""
    from ..inputnames import main_input
    found = main_input(record)
    return found[1] if found else ''


# What ``ls --status=WORD`` takes: a state, or the 0.019 word for every busy one.
BUSY_STATES = (State.QUEUED, State.RUNNING, State.SUSPENDED, State.WAITING)
LS_STATUS_WORDS = STATES + (TaskStatus.BUSY,)


def select_tasks(records, status=None, last=None):
    """The tasks ``ls`` shows: those in ``status`` (``busy``: any busy
    state), then the last ``last`` of them (oldest first still)."""
    wanted = BUSY_STATES if status == TaskStatus.BUSY else (status,)
    chosen = [record for record in records if status is None or state_of(record) in wanted]
    return chosen[-last:] if last else chosen


def _column(value):
    """One word for a column: a server's text may hold anything."""
    word = ''.join(c for c in terminal_safe(value or '') if not c.isspace())
    return word or '-'


def format_age(seconds):
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``; ``-`` when not known."""
    if seconds is None:
        return '-'
    seconds = int(seconds)
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    if seconds < 86400:
        return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
    return f'{seconds // 86400}d{seconds // 3600 % 24:02d}h'


def ask_server(ctx, params, listing=False, url=None, expect='id'):
    """One GET of the ``--s`` server, or of ``url`` (info, meta, kill, suspend,
    resume, remove, clean): its record, or with ``listing`` its records, as
    text the way every server answers it; an answer without ``expect`` (or a
    meta's version) is no rrcloud answer."""
    url = url or server_url(ctx.options.s, ctx.config.port)
    response = get_from_server(ctx, params, url)
    if listing:
        return [dict(parse_record(block)) for block in response.text.split('\n\n') if block.strip()]
    answer = parse_answer(response)
    if not answer.get(expect) and 'RepRapCloud' not in answer.get('version', ''):
        raise NoServer(f'{url}: not an rrcloud answer')
    return answer


def get_from_server(ctx, params, url=None):
    """One GET of the ``--s`` server (or of ``url``): its 200 answer; a refusal
    raised as the error its status means."""
    url = url or server_url(ctx.options.s, ctx.config.port)
    try:
        response = http_session(ctx.config.client_token_for).get(url, params=params, timeout=(CONNECT_TIMEOUT, 60))
    except OSError as exc:  # requests' errors are OSErrors
        raise cannot_reach(url, exc) from None
    if response.status_code != 200:
        reason = refusal_reason(response)
        error = {404: NotFound, 400: UsageError}.get(response.status_code, RRCloudError)  # exit 3, 2, 1
        raise error(f'{url}: {reason}')
    return response


def refresh_if_remote(store, config, record, warned=None):
    """A busy remote task is asked about at its server; a silent server leaves
    it busy, with one warning per server (``warned``: the servers said already)."""
    if not (record.get(Field.REMOTE_ID) and record.get(Field.STATUS) == TaskStatus.BUSY):
        return record
    server = record[Field.SERVER]
    try:
        return refresh_remote(store, record, http_session(remote_token_for(store, config, record)),
                              config.maxResultSize)
    except OSError as exc:  # requests' errors are OSErrors
        warning = f'{cannot_reach(server, exc)} (its tasks stay busy here)'
    except RRCloudError as exc:
        warning = f'{server}: {exc}'
    except Exception as exc:  # a garbled answer
        warning = f'{server}: {exc.__class__.__name__}'
    if warned is None or server not in warned:
        print(f'rrcloud: warning: {terminal_safe(warning)}', file=sys.stderr)
    if warned is not None:
        warned.add(server)
    return record


def remote_token_for(store, config, record):
    """The token for a remote task's server: a pipeline step's own (chosen
    when its pipe was submitted), else this client's for that server."""
    if record.get(Field.JOB):
        from ..pipeline import step_token_for
        return step_token_for(store, record[Field.ID])
    return config.client_token_for


def exit_code_of(record):
    """The exit code a command mirrors for a task that ended: 0 complete, a
    failed one's tool's (1 to 125), else TASK_FAILED (also for no record)."""
    if record is None:
        return ExitCode.TASK_FAILED
    if record.get(Field.STATUS) == TaskStatus.COMPLETE:
        return ExitCode.OK
    try:
        code = int(record.get(Field.EXIT_CODE, ''))
    except ValueError:
        return ExitCode.TASK_FAILED
    return code if 0 < code < 126 else ExitCode.TASK_FAILED


def print_fields(record, keys, **more):
    """Some fields of a record as ``key: value`` lines (a server's values made printable)."""
    fields = [(key, record.get(key, '')) for key in keys] + list(more.items())
    print(''.join(f'{key}: {terminal_safe(value)}\n' for key, value in fields), end='')


def describe_args(args):
    """The command line for the record's ``args`` field; content shows as its size."""
    return ' '.join(a if is_single_line(a) and not any(c.isspace() for c in a)
                    else f'<content {len(a.encode())} bytes>' for a in args)


def print_id(ctx, record):
    """``id: ID`` (or a JSON object) for an asynchronous start."""
    print(to_json({'id': record[Field.ID]}) if ctx.options.format == 'json' else f'id: {record["id"]}')
