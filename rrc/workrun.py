"""One task run on a farm's worker (``rrc/worker.py``): taken from its
front-end, run in a private store of the worker's own, reported back.

The private store is laid out like a front-end's (``tasks/in``,
``tasks/log``, ``tasks/events``, the record), so the same runner and sandbox
run the tool; the record there mirrors the front-end's: a kill or a
suspension the front-end reports is written into it (and a suspension
stops the tool's group), and the runner's watchdog acts on it as it does
on a single server.
"""

import os
import threading
import time

from .errors import NoServer, RRCloudError
from .events import read_events
from .schema import YES, Field, TaskStatus
from .states import State, move_task

WORKER_TOKEN_HEADER = 'X-RRCloud-Worker-Token'
# How often a running task's log and progress go to the front-end (and its
# kill or suspension comes back): a watcher there sees the task live.
UPDATE_SECONDS = 0.5
# A request to the front-end gets this long (the result's upload: more).
REQUEST_SECONDS = 30
UPLOAD_SECONDS = 600


class StaleRun(RRCloudError):
    """The front-end says this run is not the task's current one: stop it."""


class FrontEnd:
    """The front-end a worker works for: its URL and the worker token."""

    def __init__(self, url, token):
        import requests
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers[WORKER_TOKEN_HEADER] = token

    def call(self, method, params, timeout=REQUEST_SECONDS, **kwargs):
        """One request; its JSON answer.  409: StaleRun; no answer: NoServer."""
        import requests
        fields = dict(params, format='json')
        # A POST's fields go in its body (a form the front-end parses), a GET's in the query.
        where = {'params': fields} if method == 'GET' else {'data': fields}
        try:
            answer = self.session.request(method, self.url, timeout=timeout, **where, **kwargs)
        except requests.RequestException as exc:
            raise NoServer(f'{self.url}: {exc.__class__.__name__}') from None
        if answer.status_code == 409:
            raise StaleRun(answer.json().get('error', 'not the current run'))
        if answer.status_code != 200:
            raise NoServer(f'{self.url}: HTTP {answer.status_code}: {answer.text[:200].strip()}')
        return answer.json() if 'json' in answer.headers.get('Content-Type', '') else answer.content

    def download(self, task_id, path, destination):
        """One input file of a task, written to ``destination``."""
        data = self.call('GET', {'service': 'workinput', 'id': task_id, 'path': path})
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with open(destination, 'wb') as handle:
            handle.write(data)


class WorkRun:
    """One run of one task on this worker."""

    def __init__(self, front, task_id, worker, attempt):
        import tempfile
        from .identity import NodeIdentity
        from .store import Store
        self.front, self.id, self.worker, self.attempt = front, task_id, worker, attempt
        self.store = Store(tempfile.mkdtemp(prefix='rrcloud-work-'), NodeIdentity.of(worker))
        self.ids = {'id': task_id, 'attempt': str(attempt)}

    def run(self):
        """Claim the task, run its tool, report how it ended."""
        claimed = self.front.call('POST', dict(self.ids, service='workclaim', worker=self.worker))
        self.lay_out(claimed)
        link = Link(self)
        link.start()
        try:
            status, fields = self.execute(claimed['settings'])
        finally:
            link.stop()
        self.report(status, fields)

    def lay_out(self, claimed):
        """The private store: the task's record (running here) and its inputs."""
        from .names import check_task_id
        self.store.ensure()
        for path in claimed['inputs']:
            if not path.startswith('tasks/in/') or '..' in path.split('/'):
                raise RRCloudError(f'the front-end named an input outside tasks/in: {path[:80]!r}')
            self.front.download(self.id, path, self.store.path_of(path))
        record = {key: str(value) for key, value in claimed['record'].items()}
        record[Field.ID] = check_task_id(record.get(Field.ID, ''))
        self.store.write_task(record)

    def execute(self, settings):
        """The tool run by the runner, as on a single server; (status, fields)."""
        from .runner import execute, remove_output_of_full_disk
        from .services import find_service, load_services
        from .settings import task_config
        from .task import Task
        task = Task(self.store, self.id, task_config(settings, self.store))
        service = find_service(*load_services(os.getcwd()), task.get(Field.SERVICE))
        try:
            status, fields = execute(task, service)
        except Exception as exc:  # a runner never leaves a task busy
            from .errors import reason_without_paths
            status, fields = TaskStatus.FAILED, {'error': f'runner error: {reason_without_paths(exc)}'}
        if status == TaskStatus.FAILED:
            fields = remove_output_of_full_disk(task, fields)
        return status, fields

    def report(self, status, fields):
        """How the task ended, with its result, to the front-end."""
        record = self.store.read_task(self.id)
        out = self.store.path_of(record[Field.OUT]) if record.get(Field.OUT) else None
        import json
        ending = json.dumps(dict({key: str(value) for key, value in fields.items()}, status=status)).encode()
        form, files = dict(self.ids, service='workdone'), {'ending': ('ending', ending)}
        if status == TaskStatus.COMPLETE and out and os.path.isfile(out):
            with open(out, 'rb') as result:
                self.front.call('POST', form, timeout=UPLOAD_SECONDS, files=dict(files, result=('result', result)))
        else:
            self.front.call('POST', form, files=files)

    def remove(self):
        """The private store goes, whatever happened."""
        from .trees import remove_tree
        remove_tree(self.store.root)


class Link:
    """The running task's line to its front-end: every UPDATE_SECONDS its
    log's new bytes and its new progress and notes go there, and the answer
    (killed? suspended?) is written into the private record."""

    def __init__(self, run):
        self.run, self.offset, self.event_id = run, 0, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.suspended = False

    def start(self):
        """Begin sending."""
        self.thread.start()

    def stop(self):
        """Send what is left, then stop."""
        self.stopping.set()
        self.thread.join()
        self.send()

    def loop(self):
        while not self.stopping.wait(UPDATE_SECONDS):
            self.send()

    def send(self):
        """One update; the front-end's answer applied."""
        log, events = self.news()
        try:
            answer = self.run.front.call('POST', dict(self.run.ids, service='workupdate'),
                                         files={'log': ('log', log), 'events': ('events', events)})
        except StaleRun:
            return self.end_here('stale run: the task runs elsewhere now, or ended')
        except NoServer:
            return None  # the front-end away a moment: the news waits for the next send
        self.offset += len(log)
        self.apply(answer)

    def news(self):
        """The log's bytes and the events (progress, notes) since the last send."""
        import json
        try:
            with open(self.run.store.log_path(self.run.id), 'rb') as handle:
                handle.seek(self.offset)
                log = handle.read(4 << 20)
        except FileNotFoundError:
            log = b''
        events = [event for event in read_events(self.run.store, self.run.id, self.event_id)]
        if events:
            self.event_id = events[-1].id
        lines = [json.dumps({'kind': event.kind, 'data': event.data}) for event in events]
        return log, '\n'.join(lines).encode()

    def apply(self, answer):
        """The front-end's record: killed ends the run here; a suspension stops the tool."""
        if answer.get(Field.STATUS) != TaskStatus.BUSY:
            return self.end_here('killed')
        suspended = answer.get(Field.SUSPENDED) == YES
        if suspended != self.suspended:
            self.suspend_here(suspended)

    def end_here(self, error):
        """The private record says the task ended: the runner's watchdog stops the tool."""
        move_task(self.run.store, self.run.id, State.FAILED, {Field.ERROR: error,
                                                              Field.ETIME: f'{time.time():.5f}'})

    def suspend_here(self, suspended):
        """Stop or continue the tool's group, and say so in the private record
        (its time suspended does not count against its timeout)."""
        import signal
        from .procs import kill_process_group
        record = self.run.store.read_task(self.run.id)
        if not record.get(Field.PID):
            return
        move_task(self.run.store, self.run.id, State.SUSPENDED if suspended else State.RUNNING)
        kill_process_group(int(record[Field.PID]), signal.SIGSTOP if suspended else signal.SIGCONT)
        self.suspended = suspended
