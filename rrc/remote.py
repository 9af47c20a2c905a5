"""The HTTP client: relaying tasks to servers, following them, fetching results, killing remote tasks."""

import os
import time

from .config import SERVER_RE
from .errors import NoServer, RRCloudError, UsageError
from .events import status_changed
from .names import LazyPattern, is_extension, is_single_line, is_task_id
from .notifier import notifier_events_field
from .schema import Field, TaskStatus
from .states import State, initial_fields, move_task
from .store import parse_record, temp_writer, unlink_quietly


# A 0.019 server's ids are <seconds>-<6 digits>; ours have three parts.
REMOTE_ID_RE = LazyPattern(r'\A[0-9]{1,12}-[0-9]{1,6}(-[0-9]{1,6})?\Z')
REMOTE_OUT_RE = LazyPattern(r'\Atasks/out/([A-Za-z0-9][A-Za-z0-9._-]{0,200})\Z')
META_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3.0
POLL_WAIT = 30
MAX_POLL_BACKOFF = 2.0
PORT_SUFFIX_RE = LazyPattern(r':[0-9]+\Z')


def server_url(server, port):
    """``host``, ``host:port`` or a URL -> a base URL ending in ``/``."""
    if not SERVER_RE.match(server):
        raise UsageError(f'bad server: {server!r}')
    if server.startswith(('http://', 'https://')):
        return server if server.endswith('/') else server + '/'
    host = server if PORT_SUFFIX_RE.search(server) else f'{server}:{port}'
    return f'http://{host}/'


def parse_answer(response):
    """A server's answer as a dict: JSON object, or the spec's ``key: value`` lines."""
    text = response.text
    if response.headers.get('Content-Type', '').startswith('application/json'):
        try:
            import json
            value = json.loads(text)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return parse_record(text)


def http_session(token_for):
    """A requests session that ignores proxy settings and sends each server
    the token ``token_for(url)`` chooses: a client's ``Config.client_token_for``,
    or a server's ``Config.server_token_for`` when it speaks for itself."""
    import requests
    session = requests.Session()
    session.trust_env = False

    def add_token(request):
        token = token_for(request.url)
        if token:
            request.headers['Authorization'] = f'Bearer {token}'
        return request
    session.auth = add_token
    return session


def probe_load(session, url):
    """One short ``meta`` request: a sort key (lower is less loaded), or None."""
    try:
        answer = parse_answer(session.get(url, params={'service': 'meta'}, timeout=META_TIMEOUT))
    except Exception:
        return None
    if 'RepRapCloud' not in answer.get('version', ''):
        return None
    try:
        slots = max(1, int(answer.get('maxTasks') or 1))
        waiting = int(answer.get('busy') or 0) + int(answer.get('queued') or 0)
        load = float(answer.get('cpuLoad') or 0)
    except ValueError:
        return None
    return (waiting / slots, load)


def rank_servers(session, urls):
    """Servers in the order to try: least loaded first; silent ones dropped.

    One server needs no probe: the submission itself tells whether it answers.
    """
    if len(urls) == 1:
        return list(urls), []
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        keys = list(pool.map(lambda url: probe_load(session, url), urls))
    ranked = sorted((key, index) for index, key in enumerate(keys) if key is not None)
    silent = [url for url, key in zip(urls, keys) if key is None]
    return [urls[index] for _, index in ranked], silent


def task_form(service, inputs, native, notifier='', params=(), out_ext=''):
    """(fields, files) of one task's upload, the spec's names; ``paramN`` and
    ``outExt`` only when there are any (a 0.019 server knows neither)."""
    fields = {'service': service.name}
    if any(' ' in word for word in native):  # a value with spaces: one argN field per word, in order
        fields.update((f'arg{number}', word) for number, word in enumerate(native))
    elif native:
        fields['nativeArgs'] = ' '.join(native)
    for number, (option, value) in enumerate(params):
        fields[f'param{number}'] = f'{option} {value}'
    if out_ext:
        fields['outExt'] = out_ext
    if notifier:
        fields['notifier'] = notifier
    files = {}
    for number, item in enumerate(inputs):
        if item.prearg:
            fields[f'prearg{number}'] = item.prearg
        name = os.path.basename(item.filename) or f'input.{item.extension(service) or "txt"}'
        files[f'fileIn{number}'] = (name, item.data)
    return fields, files


def post_task(session, url, service, inputs, native, notifier, params=(), out_ext='', notifier_events='',
              priority=None):
    """Upload one task (the spec's field names); the server's record, or None.

    ``paramN``, ``outExt``, ``notifierEvents`` and ``priority`` go only when
    there are any (not the default; a priority: when one was given): a 0.019
    server knows none of them.
    """
    fields, files = task_form(service, inputs, native, notifier, params, out_ext)
    fields.update(notifier_events_field(notifier, notifier_events))  # {notifierEvents: ...} or {}
    if priority is not None:
        fields['priority'] = str(priority)
    try:
        response = session.post(url, data=fields, files=files, timeout=(CONNECT_TIMEOUT, 300))
    except Exception as exc:
        return None, f'{url}: {exc.__class__.__name__}'
    answer = parse_answer(response)
    if response.status_code != 200 or not REMOTE_ID_RE.match(answer.get('id', '')):
        reason = answer.get('error') or f'HTTP {response.status_code}, not an rrcloud answer'
        if 400 <= response.status_code < 500:
            raise UsageError(f'{url} refused the task: {reason}')
        return None, f'{url}: {reason}'
    return answer, None


def submit_remote(ctx, service, servers, inputs, native, params=(), out_ext=''):
    """Send a task to the least loaded server that takes it; record it locally."""
    session = http_session(ctx.config.client_token_for)
    urls = [server_url(s, ctx.config.port) for s in servers]
    ranked, silent = rank_servers(session, urls)
    tried = [f'{url}: no answer to meta' for url in silent]
    for url in ranked:
        answer, failure = post_task(session, url, service, inputs, native, ctx.options.notifier,
                                    params, out_ext, ctx.options.notifier_events, ctx.options.priority)
        if answer:
            return record_remote(ctx.store, url, service, answer)
        tried.append(failure)
    raise NoServer('no server took the task; tried ' + '; '.join(tried))


def record_remote(store, url, service, answer):
    """The local record of a remote task: its server, its remote id, busy
    (running, as far as this node can tell: only the server knows more).
    Its ``server`` says where it runs; no node of this store judges it."""
    remote_id = answer['id']
    record = {Field.REMOTE_ID: remote_id, Field.SERVER: url, 'service': service.name,
              **initial_fields(State.RUNNING), Field.CTIME: f'{time.time():.5f}',
              'client': 'localhost'}
    preferred = remote_id if is_task_id(remote_id) else None
    return status_changed(store, store.create_task(lambda task_id: record, preferred_id=preferred))


def refresh_remote(store, record, session, wait=0):
    """Ask a busy remote task's server about it; fetch result and log when it ended."""
    url = record[Field.SERVER]
    params = {'service': 'info', 'id': record[Field.REMOTE_ID]}
    if wait:
        params['wait'] = str(wait)
    response = session.get(url, params=params, timeout=(CONNECT_TIMEOUT, wait + 30))
    if response.status_code == 404:
        return move_task(store, record[Field.ID], State.FAILED, {
            Field.ETIME: f'{time.time():.5f}',
            Field.ERROR: 'the server no longer knows this task'}) or store.read_task(record[Field.ID])
    answer = parse_answer(response)
    status = answer.get('status')
    if status not in (TaskStatus.COMPLETE, TaskStatus.FAILED):
        return record
    changes = {k: answer[k] for k in ('exitCode', 'error', 'etime', 'cmd') if _single_line(answer.get(k))}
    out_match = REMOTE_OUT_RE.match(answer.get('out', ''))
    if status == TaskStatus.COMPLETE and out_match:
        local_out = _local_out_name(record[Field.ID], out_match.group(1))
        fetch_to(session, url + 'tasks/out/' + out_match.group(1), store.folder('out'), local_out)
        changes['out'] = 'tasks/out/' + local_out
        changes['sizeOut'] = os.path.getsize(os.path.join(store.folder('out'), local_out))
    elif status == TaskStatus.COMPLETE and answer.get('out'):
        status, changes['error'] = TaskStatus.FAILED, 'server named an unsafe result path'
    try:
        fetch_to(session, url + 'tasks/log/' + record[Field.REMOTE_ID], store.folder('log'), record[Field.ID])
    except RRCloudError:
        pass  # a missing log is no reason to lose the result
    final = State.COMPLETE if status == TaskStatus.COMPLETE else State.FAILED
    return move_task(store, record[Field.ID], final, changes) or store.read_task(record[Field.ID])


def _single_line(value):
    return isinstance(value, str) and value and is_single_line(value)


def _local_out_name(task_id, remote_name):
    """``<local id>[.ext]``: the server's name lends only its extension."""
    ext = remote_name.rsplit('.', 1)[1] if '.' in remote_name else ''
    return f'{task_id}.{ext}' if is_extension(ext) else task_id


def fetch_to(session, url, folder, name):
    """Download ``url`` into ``folder/name`` atomically (name is ours, never the server's)."""
    response = session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, 300))
    if response.status_code != 200:
        raise RRCloudError(f'cannot fetch {url}: HTTP {response.status_code}')
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f'.{name}.{temp_writer()}.part')
    try:
        with open(temp, 'wb') as handle:
            for chunk in response.iter_content(65536):
                handle.write(chunk)
        os.replace(temp, os.path.join(folder, name))
    except BaseException:
        unlink_quietly(temp)
        raise


def wait_remote(store, config, record, token_for, progress=None, ended_here=False):
    """Wait for a remote task with the server's long-poll (or capped polling),
    sending the token ``token_for`` chooses (``http_session``).

    A server that goes away (a restart) is asked again for ``reconnectTimeout``
    seconds: the task runs on there without us.  With ``ended_here`` the
    local record is read before each ask: a task ended here (a pipeline
    step killed with its job) is waited for no longer.
    """
    session = http_session(token_for)
    backoff = 0.1
    started = time.monotonic()
    lost_since = None
    if progress:
        progress(record, 0.0)
    wait = 1 if progress else POLL_WAIT  # a terminal's progress line moves every second
    while record.get(Field.STATUS) == TaskStatus.BUSY:
        if ended_here:
            record = store.read_task(record[Field.ID])
            if record.get(Field.STATUS) != TaskStatus.BUSY:
                break
        asked = time.monotonic()
        try:
            record = refresh_remote(store, record, session, wait=wait)
            lost_since = None
        except OSError:  # requests' errors are OSErrors
            lost_since = lost_since or asked
            give_up_if_lost(config, record, time.monotonic() - lost_since)
        if progress:
            progress(record, time.monotonic() - started, 'reconnecting' if lost_since else None)
        if record.get(Field.STATUS) == TaskStatus.BUSY and time.monotonic() - asked < 1.0:
            time.sleep(backoff)  # the server did not hold the answer: a 0.019 server, or none
            backoff = min(backoff * 1.5, MAX_POLL_BACKOFF)
    return record


def give_up_if_lost(config, record, lost_for):
    """NoServer once a server stayed away ``reconnectTimeout`` seconds, with the way back."""
    if lost_for >= config.reconnectTimeout:
        raise NoServer(f'lost {record["server"]} while waiting for task {record["id"]} '
                       f'(no answer for {lost_for:.0f} s); it may still finish there: '
                       f'`rrcloud info {record["id"]}` fetches its result into tasks/out/ later')


def kill_remote(store, record, token_for):
    """Ask a remote task's server to kill it (with the token ``token_for``
    chooses); returns the local record, updated from the server.

    Raises NoServer when the server cannot be reached, RRCloudError when it
    refuses, UsageError when the task had already ended there (its result is
    then fetched): the task is never called killed unless the server said so.
    """
    session = http_session(token_for)
    url, remote_id = record[Field.SERVER], record[Field.REMOTE_ID]
    try:
        response = session.get(url, params={'service': 'kill', 'id': remote_id}, timeout=(CONNECT_TIMEOUT, 30))
    except OSError as exc:  # requests' errors are OSErrors
        raise NoServer(f'cannot reach {url} to kill task {record["id"]} ({exc.__class__.__name__}); '
                       'it may still run there') from None
    answer = parse_answer(response)
    killed = response.status_code == 200 and answer.get('error') == 'killed'
    try:
        record = refresh_remote(store, record, session)
    except OSError:
        pass  # the kill itself was answered; the log comes with the next info
    if killed:
        return move_task(store, record[Field.ID], State.FAILED, {Field.ERROR: 'killed',
                                                             Field.ETIME: f'{time.time():.5f}'}) or record
    if record.get(Field.STATUS) != TaskStatus.BUSY:
        raise UsageError(f'task {record["id"]} is not running (status {record.get("status")})')
    reason = terminal_safe(answer.get('error') or f'HTTP {response.status_code}')
    raise RRCloudError(f'{url} did not kill task {record["id"]}: {reason}')


def terminal_safe(text):
    """A server's text as it may reach a terminal: no control characters."""
    return ''.join(c if c.isprintable() else '?' for c in str(text))
