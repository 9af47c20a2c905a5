"""The subcommands: info, ls, meta, kill, suspend, resume, move, and submitting a task."""

import os
import sys

from .options import classify_args
from .output import (LS_STATUS_WORDS, all_records, ask_server, describe_args, print_fields, print_id,
    print_record, print_summaries, refresh_if_remote, select_tasks)
from .sync import finish_sync, sync_remote
from ..errors import ExitCode, UsageError
from ..names import check_task_id
from ..notifier import notifier_events_field
from ..order import MOVES
from ..remote import kill_remote, server_url, submit_remote, terminal_safe
from ..schema import Field, TaskStatus
from ..states import get_task, state_of
from ..store import to_json
from ..services import format_chosen, takes_ini
from ..submission import submit_task


def cmd_info(ctx, args):
    """``rrcloud info [ID]`` (``--short``: as ``ls``); with ``--s``, that server's tasks."""
    if len(args) > 1:
        raise UsageError('info takes at most one task id')
    if args:
        task_id = check_task_id(args[0])
        if ctx.options.s:
            record = ask_server(ctx, {'service': 'info', 'id': task_id})
        else:
            record = refresh_if_remote(ctx.store, ctx.config, get_task(ctx.store, task_id))
            if record.get(Field.STEPS) is not None and not record.get(Field.REMOTE_ID):
                from ..pipeline import job_view, settle_job
                record = job_view(ctx.store, settle_job(ctx.store, ctx.config, record))
        if ctx.options.short:
            return print_summaries([record], ctx.options.format)
        print_record(record, ctx.options.format)
        return ExitCode.OK
    records = all_records(ctx)
    if ctx.options.short:
        return print_summaries(records, ctx.options.format)
    if ctx.options.format == 'json':
        sys.stdout.write(to_json(records, indent=1, sort_keys=True) + '\n')
    else:
        for record in records:
            print_record(record, 'text')
    return ExitCode.OK


def cmd_ls(ctx, args):
    """``rrcloud ls [--status=STATE] [-n N]``: one line per task (the last N in STATE)."""
    status, last = ls_arguments(args)
    return print_summaries(select_tasks(all_records(ctx), status, last), ctx.options.format)


def ls_arguments(args):
    """(state or None, count or None) of ``--status=STATE`` / ``--status STATE`` and ``-n N`` / ``-nN``."""
    status, last, args = None, None, list(args)
    while args:
        word = args.pop(0)
        name, sep, value = word.partition('=')
        if name in ('--status', '-n') and not sep and not args:
            raise UsageError(f'{name} needs a value')
        if name == '--status':
            status = value if sep else args.pop(0)
        elif word.startswith('-n'):
            last = count_of(word[2:] or args.pop(0))
        else:
            raise UsageError(f'ls takes --status=STATE and -n N, not {word[:64]!r} (rrcloud info ID shows one task)')
    if status is not None and status not in LS_STATUS_WORDS:
        raise UsageError(f'--status takes one of {", ".join(LS_STATUS_WORDS)}, not {status[:32]!r}')
    return status, last


def count_of(text):
    """A count of tasks for ``-n``: a whole number from 1 on."""
    if not (text.isascii() and text.isdigit() and 0 < int(text) <= 10**9):
        raise UsageError(f'-n takes a number of tasks (1 or more), not {text[:32]!r}')
    return int(text)


def cmd_meta(ctx, args):
    """``rrcloud meta``: this machine's, or with ``--s`` that server's."""
    if args:
        raise UsageError('meta takes no arguments')
    if ctx.options.s:
        meta = ask_server(ctx, {'service': 'meta'})
    else:
        services, errors = ctx.services
        for error in errors:
            print(f'rrcloud: warning: {error}', file=sys.stderr)
        from ..node import meta_record
        meta = meta_record(ctx.store, ctx.config, services)
    if ctx.options.format == 'json':
        print(to_json(meta, indent=1, sort_keys=True))
    else:
        for key in sorted(meta):
            print(f'{key}: {terminal_safe(meta[key])}')
    return ExitCode.OK


def cmd_kill(ctx, args):
    """``rrcloud kill ID``: here, or at the server a task was sent to (or ``--s``)."""
    if len(args) != 1:
        raise UsageError('kill takes one task id')
    task_id = check_task_id(args[0])
    if ctx.options.s:
        record = ask_server(ctx, {'service': 'kill', 'id': task_id})
        print_fields(record, ('id', 'status', 'error'), server=server_url(ctx.options.s, ctx.config.port))
        return ExitCode.OK
    record = ctx.store.read_task(task_id)
    by = f'the command line (user {user_name()})'
    if record.get(Field.JOB) or (record.get(Field.STEPS) is not None and not record.get(Field.REMOTE_ID)):
        from ..pipeline import kill_job_or_step
        killed = kill_job_or_step(ctx.store, ctx.config, record, by)
        print_fields(killed, ('id', 'status', 'error'))
        return ExitCode.OK
    if record.get(Field.REMOTE_ID):
        if record.get(Field.STATUS) != TaskStatus.BUSY:
            raise UsageError(f'task {task_id} is not running (status {record.get("status")})')
        record = kill_remote(ctx.store, record, ctx.config.client_token_for, ctx.config.maxResultSize)
        print_fields(record, ('id', 'status', 'error'), server=record[Field.SERVER])
        return ExitCode.OK
    from ..control import kill_task
    record = kill_task(ctx.store, task_id, by=by)
    print_fields(record, ('id', 'status', 'error'))
    return ExitCode.OK


def cmd_suspend(ctx, args):
    """``rrcloud suspend ID``: stop a running task's tool until it is resumed."""
    return _suspend_or_resume(ctx, args, 'suspend')


def cmd_resume(ctx, args):
    """``rrcloud resume ID``: continue a suspended task."""
    return _suspend_or_resume(ctx, args, 'resume')


def cmd_pause(ctx, args):
    """``rrcloud pause ID``: pause a print (its sender runs the pause G-code)."""
    return _suspend_or_resume(ctx, args, 'pause')


def cmd_cancel(ctx, args):
    """``rrcloud cancel ID``: cancel a print (its cancel G-code; the task fails ``cancelled``)."""
    return _suspend_or_resume(ctx, args, 'cancel')


def cmd_stop(ctx, args):
    """``rrcloud stop ID``: emergency stop of a print (M112 at once)."""
    return _suspend_or_resume(ctx, args, 'stop')


# The functions of rrc/control.py (imported when one is asked for: a wrapper never needs it).
CONTROL_CHANGES = {'suspend': 'suspend_task', 'resume': 'resume_task', 'pause': 'pause_task',
                   'cancel': 'cancel_task', 'stop': 'stop_task'}


def _suspend_or_resume(ctx, args, verb):
    """Here, at the server a task was sent to, or at ``--s``."""
    if len(args) != 1:
        raise UsageError(f'{verb} takes one task id')
    task_id = check_task_id(args[0])
    if ctx.options.s:
        record = ask_server(ctx, {'service': verb, 'id': task_id})
        print_state(record, server=server_url(ctx.options.s, ctx.config.port))
        return ExitCode.OK
    record = ctx.store.read_task(task_id)
    if record.get(Field.REMOTE_ID):  # it runs on its server: suspended there
        answer = ask_server(ctx, {'service': verb, 'id': record[Field.REMOTE_ID]}, url=record[Field.SERVER])
        print_state(dict(answer, id=task_id), server=record[Field.SERVER])
        return ExitCode.OK
    from .. import control
    change = getattr(control, CONTROL_CHANGES[verb])
    print_state(change(ctx.store, task_id, by=f'the command line (user {user_name()})'))
    return ExitCode.OK


def print_state(record, **more):
    """``id``, ``status`` and the state the state machine reads from them
    (``suspended``, ``running``; ``complete`` when it ended meanwhile)."""
    print_fields(dict(record, state=state_of(record) or '?'), ('id', Field.STATUS, 'state'), **more)


def cmd_move(ctx, args):
    """``rrcloud move ID front|back``: reorder a queued task, here, at the
    server a task was sent to, or at ``--s``."""
    if len(args) != 2 or args[1] not in MOVES:
        raise UsageError('move takes a task id and front or back (rrcloud move ID front)')
    task_id, to = check_task_id(args[0]), args[1]
    shown = ('id', Field.STATUS, Field.QUEUED, Field.PRIORITY, Field.QUEUE_POSITION)
    if ctx.options.s:
        record = ask_server(ctx, {'service': 'move', 'id': task_id, 'to': to})
        print_fields(record, shown, server=server_url(ctx.options.s, ctx.config.port))
        return ExitCode.OK
    record = ctx.store.read_task(task_id)
    if record.get(Field.REMOTE_ID):  # it waits in its server's queue: moved there
        answer = ask_server(ctx, {'service': 'move', 'id': record[Field.REMOTE_ID], 'to': to},
                            url=record[Field.SERVER])
        print_fields(dict(answer, id=task_id), shown, server=record[Field.SERVER])
        return ExitCode.OK
    from ..backends import move_waiting_task
    record = move_waiting_task(ctx.store, ctx.config, task_id, to, by=f'the command line (user {user_name()})')
    print_fields(dict(record, priority=record.get(Field.PRIORITY, '0')), shown)
    return ExitCode.OK


def user_name():
    """Who runs this command, for a killed task's log."""
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def remote_servers(ctx, service_name):
    """The servers a task would go to (empty: run locally)."""
    if ctx.options.local:
        return []
    if ctx.options.s:
        return [ctx.options.s]
    return ctx.config.servers_for(service_name)


def cmd_submit(ctx, service_name, args, sync, wrapper=False):
    """Start a task of ``service_name``; sync waits and copies the result.

    A tool that writes each of several outputs (``openscad a.scad -oa.stl
    -oa.png``) gets a task for each, one after the other: the exit code is
    the first that is not 0.
    """
    service = ctx.service(service_name)
    call = classify_args(service, args, allow_output=sync)
    ctx.shown_inputs = [item.shown for item in call.inputs]  # the tool's messages name these
    outputs = wanted_outputs(service, call, wrapper)
    codes = [submit_one(ctx, service, call, output, args, sync, wrapper) for output in outputs or [None]]
    return next((code for code in codes if code != ExitCode.OK), ExitCode.OK)


def submit_one(ctx, service, call, output, args, sync, wrapper):
    """One task of a command line, its result going to ``output``."""
    inputs, native = call.inputs, call.native
    ctx.output_format = call.out_ext_for(output) or (service.output_exts or [''])[0]
    extra = {'params': call.params, 'out_ext': call.out_ext_for(output)}
    # `rrcloud --sync` with no output argument shows the finished record (where its result is).
    show = sync and not wrapper and output is None and not service.no_output
    servers = remote_servers(ctx, service.name)
    if servers:
        notifier_events_field(ctx.options.notifier, ctx.options.notifier_events)  # refused before sending
        if not sync:
            print_id(ctx, submit_remote(ctx, service, servers, inputs, native, **extra))
            return ExitCode.OK
        return sync_remote(ctx, service, servers, inputs, native, output, show, **extra)
    record = submit_task(ctx.store, ctx.config, service, inputs, native, ctx.options.notifier,
                         args=describe_args(args), notifier_events=ctx.options.notifier_events,
                         priority=ctx.options.priority or 0, cache=not ctx.options.no_cache, **extra)
    if not sync:
        print_id(ctx, record)
        return ExitCode.OK
    return finish_sync(ctx, record, output, show)


def wanted_outputs(service, call, wrapper):
    """Where the results go, as the tool would write them: each output given
    (a tool with ``severalOutputs``) or the last (as the tool keeps it); a
    wrapper without one names it after the input (``outputFromInput``); a name
    gets the extension the tool adds (``outputAddsExt``: POV-Ray's +Oout is
    out.png); a folder gets the default name inside it.  A default name
    written in the tool's own default format adds its ``defaultOutputArgs``
    to ``call.native`` (@jscad/cli: ``-of stla``)."""
    outputs = call.outputs if service.several_outputs else call.outputs[-1:]
    if not outputs and wrapper and not service.no_output:
        if not service.output_from_input:
            raise UsageError(f'missing output argument ({service.output_prefix()}FILE) for {service.name}')
        outputs = ['']
        if not format_chosen(service, call.native):  # the tool's default format, as it writes it
            call.native += service.default_output_args
    return [tool_output_name(service, call, output) for output in dict.fromkeys(outputs)]


def tool_output_name(service, call, output):
    """The file the tool itself would write for ``output`` ('' for none given)."""
    if output == '-':  # stdout for a tool that writes there, else a file named "-", as slic3r
        return output if service.stdout_output else os.path.join('.', output)
    if not output:
        main = main_input(service, call)
        return os.path.join(os.path.dirname(main.source), default_output_name(service, call, main))
    if os.path.isdir(output):
        return os.path.join(output, default_output_name(service, call, main_input(service, call)))
    ext = service.output_adds_ext and (format_chosen(service, call.native) or service.output_adds_ext)
    if ext and not output.lower().endswith('.' + ext):
        return f'{output}.{ext}'
    return output


def main_input(service, call):
    """The first input file of the kind the tool works on (a scene, a model; not
    an INI or a config): the one a tool names its result after."""
    main = next((item for item in call.inputs if item.source and service.accepts_input(item.source)
                 and not takes_ini(service, item.source)), None)
    if main is None:
        raise UsageError(f'missing output argument ({service.output_prefix()}FILE) for {service.name}: '
                         f'its input has no file name to name the result after')
    return main


def default_output_name(service, call, main):
    """The name a tool gives its result after its main input:
    ``cube.stl`` -> ``cube.gcode``, or Slic3r's ``--output-filename-format``."""
    filename = os.path.basename(main.source)
    base = filename.rpartition('.')[0] or filename
    ext = format_chosen(service, call.native) or (service.output_exts or [service.file_out.rpartition('.')[2]])[0]
    name = f'{base}.{ext}'
    pattern = next((w.partition('=')[2] for w in call.native if w.startswith('--output-filename-format=')), '')
    if pattern:
        name = pattern.replace('[input_filename_base]', base).replace('[input_filename]', filename)
        if '[' in name:
            raise UsageError(f'--output-filename-format={pattern}: rrcloud names the result here only with '
                             f'[input_filename_base] and [input_filename]; give --output=FILE')
    return name
