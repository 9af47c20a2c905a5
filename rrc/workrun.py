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
import sys
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


class Refused(RRCloudError):
    """The front-end refused a request (4xx): asking again will not help."""


class FrontEnd:
    """The front-end a worker works for: its URL and the worker token."""

    def __init__(self, url, token):
        import requests
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.headers[WORKER_TOKEN_HEADER] = token

    def call(self, method, params, timeout=REQUEST_SECONDS, **kwargs):
        """One request; its JSON answer (an input: its bytes).  409: StaleRun;
        another 4xx: Refused; no answer, a 5xx or not the one expected: NoServer."""
        import requests
        fields = dict(params, format='json')
        # The service in the query (the worker token opens only the worker
        # routes), a POST's other fields in its body.
        service = {'service': fields.pop('service')}
        where = {'params': dict(service, **fields)} if method == 'GET' else {'params': service, 'data': fields}
        try:
            answer = self.session.request(method, self.url, timeout=timeout, allow_redirects=False,
                                          **where, **kwargs)
            if answer.status_code == 409:
                raise StaleRun(answer.json().get('error', 'not the current run'))
            if 400 <= answer.status_code < 500:
                raise Refused(f'{self.url}: HTTP {answer.status_code}: {answer.text[:200].strip()}')
            if answer.status_code != 200:  # 502, 503: a front-end away a moment
                raise NoServer(f'{self.url}: HTTP {answer.status_code}: {answer.text[:200].strip()}')
            return answer.json() if 'json' in answer.headers.get('Content-Type', '') else answer.content
        except (requests.RequestException, ValueError) as exc:  # no answer, or not JSON
            raise NoServer(f'{self.url}: {exc.__class__.__name__}') from None

    def call_until_answered(self, method, params, **kwargs):
        """``call``, again with a backoff while the front-end does not answer."""
        return self.again_until_answered(lambda: self.call(method, params, **kwargs))

    @staticmethod
    def again_until_answered(send, patience=120):
        """``send()`` again with a backoff while the front-end does not answer
        (it restarts, HAProxy sends the request to another): a task's claim
        and its end are not given up for a moment's silence."""
        deadline, wait = time.monotonic() + patience, 0.25
        while True:
            try:
                return send()
            except NoServer:
                if time.monotonic() + wait > deadline:
                    raise
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    def download(self, ids, path, destination):
        """One input file of a run's task, written to ``destination``."""
        data = self.call_until_answered('GET', dict(ids, service='workinput', path=path))
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with open(destination, 'wb') as handle:
            handle.write(data)


class WorkRun:
    """One run of one task on this worker, with the worker's own ``config``
    (its sandbox and limits bound what a front-end asks), the ``services``
    it takes, and a private store in its ``work_folder``."""

    def __init__(self, front, config, task_id, worker, services, work_folder, printers=()):
        import tempfile
        from .identity import NodeIdentity
        from .store import Store
        self.front, self.config, self.id, self.worker, self.services = front, config, task_id, worker, services
        self.printers = tuple(printers)  # the named printers this worker serves (``--printer``)
        self.work_folder = work_folder
        self.store = Store(tempfile.mkdtemp(prefix='task-', dir=work_folder), NodeIdentity.of(worker))
        self.ids = {'id': task_id}

    def run(self):
        """Claim the task, run its tool, report how it ended."""
        claimed = self.front.call_until_answered('POST', dict(self.ids, service='workclaim', worker=self.worker,
                                                              toolVersions=self.tool_versions()))
        self.ids['attempt'] = str(claimed['record'].get(Field.ATTEMPT, ''))
        try:
            self.lay_out(claimed)
        except StaleRun:
            raise
        except (RRCloudError, OSError) as exc:  # claimed, so said: a task is never left busy by its worker
            from .errors import reason_without_paths
            return self.send_ending(TaskStatus.FAILED, {'error': f'worker {self.worker} could not lay it out: '
                                                                 f'{reason_without_paths(exc)}'})
        link = Link(self)
        link.start()
        try:
            status, fields = self.execute(claimed['settings'])
        finally:
            link.stop()
        self.report(status, fields)

    def tool_versions(self):
        """``SERVICE=VERSION,...`` of the tools this worker has, for its claim (the
        front-end's result cache keys a task with its worker's tool version);
        each binary asked once, kept in the worker's folder across its jobs."""
        from .services import load_services
        from .toolversions import ToolVersions, versions_field
        try:
            services, _ = load_services(os.getcwd())
            os.makedirs(os.path.join(self.work_folder, 'tasks'), exist_ok=True)
            return versions_field(ToolVersions(self.work_folder).of_services(
                {name: services[name] for name in self.services if name in services}))
        except (RRCloudError, OSError):  # no versions: the task runs, and its result is not cached
            return ''

    def lay_out(self, claimed):
        """The private store: the task's record (running here) and its inputs.
        What the front-end says is checked as a client's word: the task is
        this one, of a service this worker takes, its inputs under tasks/in,
        its output where this worker names it."""
        from .launch import check_stored_input
        record = {key: str(value) for key, value in claimed['record'].items()}
        service = self.service(record.get(Field.SERVICE, ''))
        if record.get(Field.ID) != self.id:
            raise RRCloudError(f'the front-end answered for another task: {record.get(Field.ID, "")[:40]!r}')
        self.store.ensure()
        for path in claimed['inputs']:
            self.front.download(self.ids, check_stored_input(path), self.store.path_of(path))
        record.update({Field.OUT: '' if service.no_output else
                       'tasks/out/' + service.output_name(self.id, record.get(Field.OUT_EXT, '')),
                       Field.NODE: self.worker})
        record.update(self.own_printer(service, record))
        record.pop(Field.SUSPENDED, None)  # a run starts running; the next update says if it must stop
        # The front-end's processes mean nothing here, and here the tool is this
        # node's own (its signals are sent here, not left to a worker).
        for key in (Field.NODE_BOOT, Field.RUNNER, Field.RUNNER_START, Field.PID, Field.PID_START, Field.WORKER):
            record.pop(key, None)
        self.store.write_task(record)

    def own_printer(self, service, record):
        """A print on a named printer runs on this worker's own printer of that
        name: the record's native words, the printer's name first (as a farm's
        front-end keeps them), become this worker's port and baud from its own
        ``printers/NAME.conf`` (``resolve_printer``, checked against its own
        service conf).  A printer this worker does not serve is refused.
        Returns the record's changed fields ({} for any other task)."""
        from .printers import PRINT_SERVICES, is_printer_name, resolve_printer
        from .records import native_field, record_native
        name = record.get(Field.PRINTER, '')
        if service.name not in PRINT_SERVICES:
            return {}
        if not name:
            self.check_port_is_no_named_printers(record)
            return {}
        if not is_printer_name(name) or name not in self.printers:
            raise RRCloudError(f'this worker does not serve printer {name[:40]!r}')
        words = record_native(record)
        if words[:1] != [name]:
            raise RRCloudError(f'a print on printer {name!r} whose first native word is not its name')
        words, _ = resolve_printer(os.getcwd(), service, words)
        return {Field.NATIVE_ARGS: native_field(words)}

    def check_port_is_no_named_printers(self, record):
        """A print that names a port, not a printer, is refused on a port one
        of this worker's named printers hangs on: the farm keeps one print per
        printer by its name (its turn in Redis), and a print by port would
        slip past it onto a printer that may be printing."""
        from .printers import load_printer, print_port
        port = print_port(record)
        if not port:
            return
        for name in self.printers:
            if os.path.realpath(load_printer(os.getcwd(), name).port) == os.path.realpath(port):
                raise RRCloudError(f'{port} is printer {name}\'s port on this worker: print on it by its name '
                                   f'({name}), so it waits its turn')

    def service(self, name):
        """A service this worker takes (a job in Redis may name any task)."""
        from .services import find_service, load_services
        if name not in self.services:
            raise RRCloudError(f'this worker does not take {name[:40]!r} tasks')
        return find_service(*load_services(os.getcwd()), name)

    def execute(self, settings):
        """The tool run by the runner, as on a single server; (status, fields)."""
        from .runner import execute, remove_output_of_full_disk
        from .task import Task
        task = Task(self.store, self.id, self.own_bounds(settings))
        service = self.service(task.get(Field.SERVICE))
        try:
            status, fields = execute(task, service, printer=self.printer_of(task))
        except Exception as exc:  # a runner never leaves a task busy
            from .errors import reason_without_paths
            status, fields = TaskStatus.FAILED, {'error': f'runner error: {reason_without_paths(exc)}'}
        if status == TaskStatus.FAILED:
            fields = remove_output_of_full_disk(task, fields)
        return status, fields

    def printer_of(self, task):
        """A print's named printer as this worker's own conf says (its G-code
        goes to the sender, as a single server's runner hands it), or None.
        ``own_printer`` has checked the name is one this worker serves."""
        from .printers import load_printer
        name = task.get(Field.PRINTER)
        return load_printer(os.getcwd(), name) if name else None

    def own_bounds(self, settings):
        """The task's settings, held within this worker's own: its sandbox
        (a front-end can never turn it off) and its limits (never above its own)."""
        from .settings import task_config
        config = task_config(settings, self.store)
        config.sandbox = config.sandbox or self.config.sandbox
        for key in ('maxMemory', 'maxProcesses', 'maxOutputSize', 'maxLogSize', 'timeout', 'maxSuspend'):
            setattr(config, key, min(config.limit_for('', key), self.config.limit_for('', key)))
        return config

    def report(self, status, fields):
        """How the task ended, with its result, to the front-end."""
        record = self.store.read_task(self.id)
        out = self.store.path_of(record[Field.OUT]) if record.get(Field.OUT) else None
        fields = dict({Field.PROGRESS: record[Field.PROGRESS]} if record.get(Field.PROGRESS) else {}, **fields)
        self.send_ending(status, fields, out)

    def send_ending(self, status, fields, out=None):
        """``workdone``: the ending's fields, and the result at ``out`` when the task completed."""
        import json
        ending = json.dumps(dict({key: str(value) for key, value in fields.items()}, status=status)).encode()
        form, files = dict(self.ids, service='workdone'), {'ending': ('ending', ending)}
        if status == TaskStatus.COMPLETE and out and os.path.isfile(out):
            def send():
                with open(out, 'rb') as result:  # opened anew for each try
                    return self.front.call('POST', form, timeout=UPLOAD_SECONDS,
                                           files=dict(files, result=('result', result)))
        else:
            def send():
                return self.front.call('POST', form, files=files)
        self.front.again_until_answered(send)

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
        self.asked = set()  # a print's cancel and stop, once each

    def start(self):
        """Begin sending."""
        self.thread.start()

    def stop(self):
        """Send what is left, then stop (a refusal of it: the ending is sent all the same)."""
        self.stopping.set()
        self.thread.join()
        try:
            self.send()
        except RRCloudError as exc:
            print(f'rrcloud: worker: task {self.run.id}: last update: {exc}', file=sys.stderr, flush=True)

    def loop(self):
        while not self.stopping.wait(UPDATE_SECONDS):
            try:
                self.send()
            except Exception as exc:  # a line that breaks once must not go quiet for good
                print(f'rrcloud: worker: task {self.run.id}: update: {exc!r}', file=sys.stderr, flush=True)

    def send(self):
        """One update; the front-end's answer applied."""
        log, events, last_event = self.news()
        form = dict(self.run.ids, service='workupdate', **({'sender': YES} if self.sender_runs() else {}))
        try:
            answer = self.run.front.call('POST', form, files={'log': ('log', log), 'events': ('events', events)})
        except StaleRun:
            return self.end_here('stale run: the task runs elsewhere now, or ended')
        except NoServer:
            return None  # the front-end away a moment: the news waits for the next send
        self.offset, self.event_id = self.offset + len(log), last_event
        self.apply(answer)

    def sender_runs(self):
        """True once the private record says a print's sender runs (the front-end may then pause it)."""
        try:
            return self.run.store.read_task(self.run.id).get(Field.SENDER) == YES
        except RRCloudError:
            return False

    def news(self):
        """The log's bytes and the events (progress, notes) since the last
        send, and the id of the last of those events."""
        import json
        try:
            with open(self.run.store.log_path(self.run.id), 'rb') as handle:
                handle.seek(self.offset)
                log = handle.read(4 << 20)
        except FileNotFoundError:
            log = b''
        events = list(read_events(self.run.store, self.run.id, self.event_id))
        lines = [json.dumps({'kind': event.kind, 'data': event.data}) for event in events]
        return log, '\n'.join(lines).encode(), events[-1].id if events else self.event_id

    def apply(self, answer):
        """The front-end's record: killed ends the run here; a suspension stops
        the tool (a print's sender pauses); a print's cancel or stop goes to its sender."""
        if answer.get(Field.STATUS) != TaskStatus.BUSY:
            self.end_here('killed')  # its sender is cancelling it: an emergency stop still goes to it
            if answer.get(Field.PRINT_CONTROL) == 'stop' and 'stop' not in self.asked:
                self.ask_sender('stop')
            return None
        suspended = answer.get(Field.SUSPENDED) == YES
        if suspended != self.suspended:
            self.suspend_here(suspended)
        word = answer.get(Field.PRINT_CONTROL)
        if word in ('cancel', 'stop') and word not in self.asked:
            self.ask_sender(word)

    def ask_sender(self, word):
        """A print's cancel or stop written into the private record, as
        ``rrcloud cancel`` does on a single server: the runner hands it to the sender."""
        from .control import cancel_task, stop_task
        from .errors import UsageError
        try:
            if word == 'cancel':
                cancel_task(self.run.store, self.run.id, by='its front-end')
            else:  # this process runs the print's runner: it lives
                stop_task(self.run.store, self.run.id, by='its front-end', runner_alive=True)
        except UsageError:  # its sender is not running yet: the next update tries again
            return
        self.asked.add(word)

    def end_here(self, error):
        """The private record says the task ended: the runner's watchdog stops the tool."""
        move_task(self.run.store, self.run.id, State.FAILED, {Field.ERROR: error,
                                                              Field.ETIME: f'{time.time():.5f}'})

    def suspend_here(self, suspended):
        """Stop or continue the tool's group, as ``rrcloud suspend`` does on a
        single server (the private record's state and the signal under its
        store's lock; its time suspended does not count against its timeout)."""
        from .control import resume_task, suspend_task
        from .errors import UsageError
        try:
            (suspend_task if suspended else resume_task)(self.run.store, self.run.id, by='its front-end')
        except UsageError:  # the tool is not running yet, or ended: the next update tries again
            return
        self.suspended = suspended
