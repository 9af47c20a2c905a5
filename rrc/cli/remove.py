"""``rrcloud rm ID…`` and ``rrcloud clean --older-than=DAYS``: removing ended
tasks, here (rrc/cleanup.py) or with ``--s`` at that server (``service=remove``,
``service=clean``)."""

import sys

from .options import days_argument
from .output import ask_server, refresh_if_remote
from ..cleanup import clean_ended_tasks, parse_days, remove_ended_task
from ..errors import ExitCode, RRCloudError, UsageError
from ..names import check_task_id, is_task_id
from ..states import get_task
from ..store import to_json


def cmd_rm(ctx, args):
    """``rrcloud rm ID…``: remove each ended task with its files; the others
    are said, one line each, and the first one's exit code is returned."""
    if not args:
        raise UsageError('rm takes one or more task ids (rrcloud clean --older-than=DAYS removes old ones)')
    task_ids = [check_task_id(word) for word in args]  # a bad one: nothing removed
    removed, failures = [], []
    for task_id in task_ids:
        try:
            removed += remove_one(ctx, task_id)
        except RRCloudError as exc:
            failures.append(exc)
            print(f'rrcloud: error: {exc}', file=sys.stderr)
    print_removed(ctx, removed)
    return failures[0].exit_code if failures else ExitCode.OK


def remove_one(ctx, task_id):
    """One task removed here (a task sent to a server: its local record, its
    result fetched first if it ended there) or at the ``--s`` server; the ids removed."""
    if ctx.options.s:
        answer = ask_server(ctx, {'service': 'remove', 'id': task_id})
        return server_ids(answer)
    refresh_if_remote(ctx.store, ctx.config, get_task(ctx.store, task_id))  # ended there: ended here too
    return remove_ended_task(ctx.store, task_id)


def server_ids(answer):
    """The ids a server says it removed (only words shaped as ids reach the terminal)."""
    return [word for word in answer.get('removed', '').split(',') if is_task_id(word)]


def cmd_clean(ctx, args):
    """``rrcloud clean --older-than=DAYS``: remove this node's tasks (or the
    ``--s`` server's) that ended more than DAYS days ago."""
    days = older_than(args)
    if ctx.options.s:
        answer = ask_server(ctx, {'service': 'clean', 'olderThan': days}, expect='count')
        removed = server_ids(answer)
    else:
        removed = clean_ended_tasks(ctx.store, days)
    if not removed and ctx.options.format == 'text':
        print(f'rrcloud: nothing to remove: no task ended more than {days} days ago', file=sys.stderr)
    print_removed(ctx, removed)
    return ExitCode.OK


def older_than(args):
    """DAYS of ``--older-than=DAYS`` or ``--older-than DAYS``, the one argument clean takes."""
    usage = 'clean takes --older-than=DAYS (rrcloud rm ID removes one task)'
    text = days_argument(args, '--older-than', usage)
    if text is None:
        raise UsageError(usage)
    parse_days(text)  # checked here: a server is asked only for a number
    return text


def print_removed(ctx, removed):
    """``removed: ID`` per task, or a JSON list."""
    if ctx.options.format == 'json':
        print(to_json({'removed': removed}))
    else:
        print(''.join(f'removed: {task_id}\n' for task_id in removed), end='')
