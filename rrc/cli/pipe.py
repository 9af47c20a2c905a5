"""``rrcloud pipe STEP -- STEP -- ...``: a job of steps, the output of one the input of the next.

Each STEP is written as a task is (``SERVICE ARGS...``), with its own
``--s=SERVER`` or ``--local``.  A pipe whose every step runs on a server is
sent whole to the first step's server, which hands each output on to the
next step's server itself (nothing passes through this machine); otherwise
this machine holds the job and sends the steps that run elsewhere.
"""

import sys
import time

from .options import Options, classify_args, take_options
from .output import describe_args, exit_code_of, print_id, print_record
from .sync import ProgressLine, check_result_format, deliver_output, event_progress, show_log
from ..errors import ExitCode, RRCloudError, UsageError
from ..pipeline import StepSpec, job_view, kill_job, step_service, submit_pipe
from ..remote import (cannot_reach, http_session, kill_remote, parse_answer, record_remote, refusal_reason,
    server_url, task_form, wait_remote)
from ..schema import Field, TaskStatus
from ..waits import wait_for_task

# Options that belong to one step; the others are the pipe's, wherever they stand.
STEP_OPTIONS = ('s', 'local')
PIPE_OPTIONS = ('sync', 'format', 'notifier', 'traceback', 'help')


class JobService:
    """What the local record of a job sent to a server names as its service."""
    name = 'pipe'


def cmd_pipe(ctx, args):
    """Submit a pipe; ``--sync`` waits for its last step and writes its result
    where that step's output argument says."""
    refuse_task_only_options(ctx.options)
    groups = split_steps(args)
    step_options = [step_words_options(ctx, number, words) for number, words in enumerate(groups, 1)]
    steps, output = [], None
    for number, (service, words, options) in enumerate(step_options, 1):
        last = number == len(step_options)
        call = classify_args(service, words, allow_output=last and ctx.options.sync)
        if number == 1:
            ctx.shown_inputs = [item.shown for item in call.inputs]
        steps.append(StepSpec(service, call.inputs, call.native, call.params, call.out_ext,
                              step_server(ctx, service, options)))
        output = call.output if last else output
    if all(step.server for step in steps):
        record = send_pipe(ctx, steps)
    else:
        chosen = [step.server for step in steps if step.server]
        # This machine holds the job: a client, its own token is its steps' servers' default.
        record = submit_pipe(ctx.store, ctx.config, steps, ctx.config.client_token_for,
                             notifier=ctx.options.notifier, args=describe_args(args), also_allowed=chosen)
    if not ctx.options.sync:
        print_id(ctx, record)
        return ExitCode.OK
    return finish_pipe(ctx, record, steps[-1].service, output)


def split_steps(args):
    """The words of each step: ``--`` between steps."""
    groups = [[]]
    for word in args:
        if word == '--':
            groups.append([])
        else:
            groups[-1].append(word)
    for number, words in enumerate(groups, 1):
        if not words:
            raise UsageError(f'step {number} of the pipe is empty (usage: rrcloud pipe SERVICE ARGS... '
                             f'-- SERVICE ARGS...)')
    return groups


def step_words_options(ctx, number, words):
    """(service, its words, its own options) of one step; the pipe's options
    found among its words go to the pipe."""
    service = step_service(*ctx.services, number, words[0])
    options = Options()
    rest = take_options(options, words[1:], service)
    if options.dir or options.short or options.version:
        raise UsageError(f'step {number}: --dir, --short and --version go before "pipe"')
    refuse_task_only_options(options)
    for name in PIPE_OPTIONS:
        if getattr(options, name) != getattr(Options(), name):
            setattr(ctx.options, name, getattr(options, name))
    return service, rest, options


def refuse_task_only_options(options):
    """Options a single task takes that a pipe does not (yet): said, never dropped."""
    if options.priority is not None or options.notifier_events:
        raise UsageError('--priority and --notifier-events are not for a pipe (its steps queue in order, '
                         'and its notifier is called as each step ends)')


def step_server(ctx, service, options):
    """Where one step runs: its ``--s``, the pipe's, or the service's servers from rrcloudrc; '' here."""
    if options.local or (ctx.options.local and not options.s):
        return ''
    server = options.s or ctx.options.s or next(iter(ctx.config.servers_for(service.name)), '')
    return server_url(server, ctx.config.port) if server else ''


def send_pipe(ctx, steps):
    """Send the whole pipe to its first step's server; the local record follows the job there."""
    url = steps[0].server
    fields, files = pipe_fields(url, steps)
    if ctx.options.notifier:
        fields['notifier'] = ctx.options.notifier
    session = http_session(ctx.config.client_token_for)
    try:
        response = session.post(url, data=fields, files=files, timeout=(3, 300))
    except OSError as exc:  # requests' errors are OSErrors
        raise cannot_reach(url, exc) from None
    answer = parse_answer(response)
    if response.status_code != 200 or not answer.get(Field.ID):
        reason = refusal_reason(response) if response.status_code != 200 else 'not an rrcloud answer'
        error = UsageError if 400 <= response.status_code < 500 else RRCloudError
        raise error(f'{url} refused the pipe: {reason}')
    return record_remote(ctx.store, url, JobService, answer)


def pipe_fields(url, steps):
    """The form of ``service=pipe``: each step's task fields (``remote.task_form``)
    after ``stepN.``; a step on another server than ``url`` names it."""
    fields, files = {'service': 'pipe'}, {}
    for number, step in enumerate(steps, 1):
        prefix = f'step{number}.'
        step_fields, step_files = task_form(step.service, step.inputs, step.native, '', step.params, step.out_ext)
        fields[f'step{number}'] = step_fields.pop('service')
        fields.update({prefix + key: value for key, value in step_fields.items()})
        files.update({prefix + key: value for key, value in step_files.items()})
        if step.server != url:
            fields[prefix + 'server'] = step.server
    return fields, files


def finish_pipe(ctx, record, last_service, output):
    """Wait for the job (here or at its server), then deliver the last step's
    result to ``output``; a failed job says which step failed, with that
    step's log, and its exit code is the failed tool's."""
    remote = bool(record.get(Field.REMOTE_ID))
    progress = ProgressLine(record[Field.SERVER] if remote else 'local') if sys.stderr.isatty() else None
    started = time.monotonic()
    try:
        if remote:
            record = wait_remote(ctx.store, ctx.config, record, ctx.config.client_token_for, progress)
        else:
            on_poll = (lambda current, newest: progress(current, time.monotonic() - started,
                                                        progress=event_progress(newest))) if progress else None
            record = wait_for_task(ctx.store, record[Field.ID], on_poll=on_poll)
    except KeyboardInterrupt:
        stop_job(ctx, record)
        return ExitCode.INTERRUPTED
    finally:
        if progress:
            progress.clear()
    if record.get(Field.STATUS) == TaskStatus.COMPLETE:
        if output:
            check_result_format(last_service, record, output)
            deliver_output(ctx.store.path_of(record[Field.OUT]), output)
        elif ctx.options.format == 'json' or not remote:
            print_record(job_view(ctx.store, record) if not remote else record, ctx.options.format)
        return ExitCode.OK
    if not remote:
        show_failed_step_log(ctx, record)
    print(f'rrcloud: error: job {record[Field.ID]} failed: {record.get(Field.ERROR, "unknown")}', file=sys.stderr)
    return exit_code_of(record)


def show_failed_step_log(ctx, job):
    """The log of the step that failed (the one a cancelled step names is the first failed)."""
    from ..states import State, state_of
    for step_id in job.get(Field.STEPS, '').split(','):
        try:
            step = ctx.store.read_task(step_id)
        except RRCloudError:
            continue
        if state_of(step) == State.FAILED and not step.get(Field.ERROR, '').startswith('cancelled'):
            show_log(ctx.store, step, ctx.shown_inputs if step.get(Field.STEP) == '1' else ())
            return


def stop_job(ctx, record):
    """Ctrl-C while waiting: kill the job, here or at its server."""
    try:
        if record.get(Field.REMOTE_ID):
            kill_remote(ctx.store, record, ctx.config.client_token_for, ctx.config.maxResultSize)
        else:
            kill_job(ctx.store, ctx.config, record[Field.ID], 'Ctrl-C on the command line',
                     ctx.config.client_token_for)
    except RRCloudError as exc:
        print(f'rrcloud: warning: {exc} (rrcloud kill {record[Field.ID]} tries again)', file=sys.stderr)

