"""The forwarder of a pipeline step that runs on another server: it sends the
step there with its inputs, follows it to its end (fetching result and log)
and moves the job on.

It runs in the process that saw the step before end (the runner of a local
step, or the forwarder of a remote one), or as ``rrcloud _forward ID``
started by a request or by recovery.  Its settings, the token for the server
among them, come from the step's ``tasks/waiting/ID`` (mode 0600), never from
the request or the environment.  That token was chosen by whoever holds the
job (``pipeline.submit_pipe``); the forwarder sends it to its step's server
alone, and nothing else to any server: it speaks for itself, with
``Config.server_token_for``.
"""

import os
import time

from .errors import ExitCode, RRCloudError, UsageError, reason_without_paths
from .names import check_task_id
from .pipeline import FORWARD_SETTINGS, after_step, fail_step, forwarder_alive, waiting_settings
from .procs import process_start_time
from .schema import Field, TaskStatus
from .states import FINAL, State, move_locked, state_of


# A lost server is asked again this often at most while the step is sent.
MAX_SEND_BACKOFF = 2.0


def forward_steps(store, step_id):
    """Forward a step, and the steps after it that run on servers too, one
    after the other in this process; returns the last one's record."""
    record = None
    while step_id:
        record, step_id = forward_step(store, step_id)
    return record


def forward_step(store, step_id):
    """Send one step to its server (unless it was sent already), follow it,
    then start the next step or end the job.  Returns (the step's record, the
    id of a next step to forward as well, or None)."""
    from .settings import TASK_SETTINGS, task_config
    settings = waiting_settings(store, step_id)
    if not settings:
        return None, None  # it ended, or was cancelled: nothing to forward
    config = task_config(settings, store, allowed=TASK_SETTINGS + FORWARD_SETTINGS)
    record = claim(store, step_id)
    if record is None:
        return None, None  # another forwarder has it
    token_only_for(config, record.get(Field.STEP_SERVER, ''))
    try:
        if state_of(record) == State.WAITING:
            record = send_step(store, config, record)
        if record.get(Field.STATUS) == TaskStatus.BUSY:
            record = follow_step(store, config, record)
    except Exception as exc:  # a forwarder never leaves a step busy without saying why (nor names a path)
        record = fail_step(store, step_id, f'forwarder error: {reason_without_paths(exc)}')
    return record, after_step(store, config, record, inline=True)


def token_only_for(config, url):
    """The ``token`` of a forwarder's settings is its step's server's alone:
    it becomes that server's ``HOST.token``, and the forwarder keeps no token
    of its own that ``server_token_for`` could send anywhere else."""
    from urllib.parse import urlsplit
    netloc = urlsplit(url).netloc
    # Both spellings: requests asks with the host in lower case, http.client as written.
    config.host_tokens = {netloc: config.token, netloc.lower(): config.token} if config.token and url else {}
    config.token = ''


def claim(store, step_id):
    """Make this process the step's forwarder (its pid in the record), unless
    another live one is; None then."""
    with store.lock():
        record = store.read_task(step_id)
        if state_of(record) in FINAL:
            return record
        if forwarder_alive(store, record) and record.get(Field.RUNNER) != str(os.getpid()):
            return None
        record = dict(record, **{Field.RUNNER: str(os.getpid()),
                                 Field.RUNNER_START: process_start_time(os.getpid()) or ''},
                      **store.node.fields())
        store.write_task(record)
        return record


def send_step(store, config, record):
    """Upload the step to its server; the local record then follows the task
    there, as a remote task's does.

    A server that cannot be reached is tried again for ``reconnectTimeout``
    seconds, and the step's record is read before each try (a job killed
    meanwhile sends nothing).  An upload that was sent but got no answer is
    never sent again: the server may have taken it, and a print must not
    run twice.
    """
    from .lighthttp import LightSession
    from .services import find_service, load_services
    url = record[Field.STEP_SERVER]
    service = find_service(*load_services(store.root), record[Field.SERVICE])
    started, backoff = time.monotonic(), 0.2
    while True:
        session = LightSession(config.server_token_for)  # not requests: its import would double the hand-off
        try:
            answer, failure = post_inputs(store, session, url, service, record)
        except UsageError as exc:  # the server refused the step: no retry makes it take it
            return fail_step(store, record[Field.ID], str(exc))
        finally:
            session.close()  # the connection kept for a next request: there is none
        if answer:
            return hand_over(store, config, record, url, answer)
        if session.sent:
            return fail_step(store, record[Field.ID], f'sent to {url}, which did not answer ({failure}); '
                                                      f'not sent again: it may run there')
        if time.monotonic() - started >= config.reconnectTimeout:
            return fail_step(store, record[Field.ID], f'cannot send it to {url}: {failure}')
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_SEND_BACKOFF)
        record = store.read_task(record[Field.ID])
        if state_of(record) != State.WAITING:
            return record  # cancelled or killed while the server was away


def post_inputs(store, session, url, service, record):
    """One upload of the step with its stored inputs (the first is the step
    before's output) and its notifier (its server calls it)."""
    from contextlib import ExitStack
    from .remote import post_task
    from .submission import Input
    from .records import record_native, record_params, stored_inputs
    with ExitStack() as files:
        inputs = [Input(files.enter_context(open(store.path_of(path), 'rb')), os.path.basename(path), prearg)
                  for prearg, path in stored_inputs(record)]
        return post_task(session, url, service, inputs, record_native(record),
                         record.get(Field.NOTIFIER, ''), record_params(record), record.get(Field.OUT_EXT, ''))


def hand_over(store, config, record, url, answer):
    """The server took the step: the local record now says where it runs.  A
    step killed while it was being sent is killed there too."""
    with store.lock():
        current = store.read_task(record[Field.ID])
        moved = move_locked(store, current, State.RUNNING, {
            Field.REMOTE_ID: answer['id'], Field.SERVER: url, Field.STIME: f'{time.time():.5f}'},
            expect=None if state_of(current) in FINAL else State.WAITING)
    if moved is not None:
        return moved
    from .remote import http_session
    try:
        http_session(config.server_token_for).get(url, params={'service': 'kill', 'id': answer['id']}, timeout=10)
    except OSError:
        pass
    return current


def follow_step(store, config, record):
    """Long-poll the step's server until it ends there (or here: killed);
    ``refresh_remote`` fetches its result and log into this store.  A server
    lost for ``reconnectTimeout`` seconds fails the step."""
    from .errors import NoServer
    from .remote import wait_remote
    try:
        return wait_remote(store, config, record, config.server_token_for, ended_here=True)
    except NoServer as exc:
        return fail_step(store, record[Field.ID], str(exc))


def cmd_forward_internal(args):
    """``rrcloud _forward ID --dir ROOT``: a step's forwarder (internal)."""
    from .identity import starting_node
    from .store import Store
    if len(args) != 3 or args[1] != '--dir':
        raise UsageError('usage: rrcloud _forward ID --dir ROOT')
    store = Store(args[2], starting_node())
    try:
        record = forward_steps(store, check_task_id(args[0]))
    except RRCloudError as exc:
        print(f'rrcloud: forwarder of {args[0]}: {exc}', flush=True)
        return ExitCode.TASK_FAILED
    return ExitCode.OK if record and record.get(Field.STATUS) == TaskStatus.COMPLETE else ExitCode.TASK_FAILED
