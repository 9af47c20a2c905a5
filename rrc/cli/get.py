"""``rrcloud get ID [-o NAME]``: save a finished task's result under a name.

Without ``-o`` the name is the main input's own name with the result's
extension (``cube.scad`` -> ``cube.stl``), else the result's own
(``ID.stl``), in the current folder, and an existing file of that name is
never overwritten; ``-o NAME`` writes where it says (``-o -``: stdout).  A
task of this store is copied from ``tasks/out/`` (one sent to a server is
asked about first, and its result comes home); with ``--s`` the result is
fetched from that server.
"""

import os
import sys

from .output import ask_server, refresh_if_remote
from .sync import deliver_output
from ..errors import ExitCode, RRCloudError, UsageError
from ..inputnames import download_name
from ..names import check_task_id
from ..remote import (CONNECT_TIMEOUT, REMOTE_OUT_RE, bounded_body, cannot_reach, check_remote_id, fetch_to,
    http_session, terminal_safe)
from ..schema import Field, TaskStatus
from ..states import get_task


def cmd_get(ctx, args):
    """``rrcloud get ID [-o NAME]``: the result saved; prints ``saved: NAME``."""
    task_id, output = get_arguments(args)
    if ctx.options.s:
        record = ask_server(ctx, {'service': 'info', 'id': check_remote_id(task_id)})
    else:
        record = refresh_if_remote(ctx.store, ctx.config, get_task(ctx.store, check_task_id(task_id)))
    result = result_name(record)
    if output and os.path.isdir(output):  # a folder: the result goes into it, named as without -o
        output = os.path.join(output, default_name(record, result, output))
    name = output or default_name(record, result)
    if ctx.options.s:
        fetch_result(ctx, result, name)
    else:
        copy_result(ctx.store.path_of('tasks/out/' + result), name)
    if name != '-':
        print(f'saved: {name}')
    return ExitCode.OK


def get_arguments(args):
    """(task id, output or None) of ``ID [-o NAME | -oNAME | --output=NAME | --output NAME]``."""
    words, task_ids, output = list(args), [], None
    while words:
        word = words.pop(0)
        if word in ('-o', '--output'):
            if not words:
                raise UsageError(f'{word} needs a file name')
            output = words.pop(0)
        elif word.startswith('--output='):
            output = word.partition('=')[2]
        elif word.startswith('-o') and len(word) > 2:
            output = word[2:]
        else:
            task_ids.append(word)
    if len(task_ids) != 1 or output == '':
        raise UsageError('get takes one task id and, if you like, -o NAME (- for stdout)')
    return task_ids[0], output


def result_name(record):
    """The name of a complete task's result under ``tasks/out/``; why not, as an error."""
    task_id = terminal_safe(record.get(Field.ID, '?'))
    status = record.get(Field.STATUS)
    if status == TaskStatus.FAILED:
        raise RRCloudError(f'task {task_id} failed: {terminal_safe(record.get(Field.ERROR, "unknown"))}; '
                           f'it has no result (rrcloud info {task_id} shows its log)')
    if status != TaskStatus.COMPLETE:
        raise UsageError(f'task {task_id} has not ended (status {terminal_safe(status or "?")}): '
                         f'rrcloud watch {task_id} follows it')
    found = REMOTE_OUT_RE.match(record.get(Field.OUT, ''))
    if not found:
        raise UsageError(f'task {task_id} ({terminal_safe(record.get(Field.SERVICE, "?"))}) has no result file')
    return found.group(1)


def default_name(record, result, folder=''):
    """The main input's own name with the result's extension, else the
    result's name; refused when a file of that name is in ``folder`` already."""
    name = download_name(record, result)  # as the server's Content-Disposition names it
    if os.path.lexists(os.path.join(folder, name)):
        raise UsageError(f'{os.path.join(folder, name)} exists: name the result with -o NAME')
    return name


def copy_result(source, name):
    """A result of this store to ``name`` (``-``: stdout)."""
    if name != '-':
        deliver_output(source, name)
        return
    with open(source, 'rb') as result:
        while chunk := result.read(65536):
            sys.stdout.buffer.write(chunk)
    sys.stdout.flush()


def fetch_result(ctx, result, name):
    """A result of the ``--s`` server to ``name`` (``-``: stdout)."""
    from ..remote import server_url
    session = http_session(ctx.config.client_token_for)
    url = server_url(ctx.options.s, ctx.config.port) + 'tasks/out/' + result
    limit = ctx.config.maxResultSize
    try:
        if name != '-':
            fetch_to(session, url, os.path.dirname(os.path.abspath(name)), os.path.basename(name), limit)
            return
        response = session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, 300))
        if response.status_code != 200:
            raise RRCloudError(f'cannot fetch {url}: HTTP {response.status_code}')
        for chunk in bounded_body(response, url, limit):  # stdout cannot be taken back: what came stays
            sys.stdout.buffer.write(chunk)
    except OSError as exc:
        if exc.__module__.startswith('requests'):  # the server went away; a local file error says itself
            raise cannot_reach(url, exc) from None
        raise
    sys.stdout.flush()
