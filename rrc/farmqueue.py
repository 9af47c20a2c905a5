"""``backend = rq``: a node's queue in Redis, run by RQ workers (``rrcloud
worker``) on any machine.

A front-end keeps the store as the one truth (records, inputs, queue
markers, as with ``backend = local``) and pushes each queued task into the
RQ queue of its service (``rrcloud.SERVICE``) as a job whose only argument
is the task id: the worker asks the front-end for the rest over HTTP.  The
job is RQ's, so RQ's heartbeats and its handling of abandoned jobs apply;
the order inside a queue is rrcloud's (a move to the front or back, then
priority, then submission: ``order.py``), kept by a Lua script that places
a job only while it still waits.

redis and rq are imported by the functions that use them (90 ms: never on a
CGI read of a ``backend = local`` node).
"""

from .errors import ExitCode, RRCloudError
from .schema import Field

QUEUE_PREFIX = 'rrcloud.'
ORDER_KEY = 'rrcloud:order:'  # a hash per queue: task id -> its sort key
PUSHING_KEY = 'rrcloud:pushing:'  # a task's job being pushed: one front-end does it
PUSHING_MS = 10_000
# A named printer's turn: the id of the one print whose job may be in Redis,
# waiting or running (one print per printer at a time, whichever worker serves it).
PRINTER_KEY = 'rrcloud:printer:'
PRINTER_QUEUE_MARK = '@'
JOB_FUNCTION = 'rrc.worker.run_farm_task'
# The only function a worker runs for a job (a Redis writer could name any other).
ALLOWED_FUNCTIONS = (JOB_FUNCTION,)
# Kept in Redis after a job ends: the store has the task; Redis only what RQ needs.
RESULT_TTL = 600
FAILURE_TTL = 86400

# RQ's states of a job that is still to run or runs now.
WAITING_OR_RUNNING = ('queued', 'deferred', 'scheduled', 'started')

# Put a waiting job at its place in the list (KEYS: the queue, the order hash;
# ARGV: the id, its sort key).  Nothing happens to a job a worker took meanwhile.
PLACE_SCRIPT = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
for _, other in ipairs(ids) do
  local key = redis.call('HGET', KEYS[2], other)
  if key and key > ARGV[2] then
    redis.call('LINSERT', KEYS[1], 'BEFORE', other, ARGV[1])
    return 1
  end
end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 1
"""


# A printer's turn given up by its print (KEYS: the key; ARGV: the print's id).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class QueueUnavailable(RRCloudError):
    """Redis cannot be reached: nothing can be queued (503)."""
    http_status = 503
    exit_code = ExitCode.NO_SERVER


def allowed_job_class():
    """RQ's Job, allowed to call rrcloud's job function and nothing else: a
    job names its function and its callbacks, and anyone who can write to
    Redis could name any other (the workers and a front-end's registry
    clean-up both use this class)."""
    from rq.job import Job

    class AllowedJob(Job):
        @property
        def func(self):
            if self.func_name not in ALLOWED_FUNCTIONS or self.instance is not None:
                raise PermissionError(f'job function {self.func_name!r} is not rrcloud\'s')
            return super().func

        def _refuse_callback(self, *args, **kwargs):
            return None

        success_callback = failure_callback = stopped_callback = property(lambda self: None)
        execute_success_callback = execute_failure_callback = execute_stopped_callback = _refuse_callback

    return AllowedJob


def queue_name(service, printer=''):
    """The RQ queue of a service's tasks (``rrcloud.SERVICE``), or of its prints
    on one named printer (``rrcloud.printrun@mk3``): only the workers serving
    that printer listen there."""
    return QUEUE_PREFIX + service + (PRINTER_QUEUE_MARK + printer if printer else '')


def farm_printer(record):
    """The named printer a print runs on ('' for any other task): its record's
    ``printer`` when that is a printer's name (checked before it is part of a
    queue's or a key's name)."""
    from .printers import PRINT_SERVICES, is_printer_name
    name = record.get(Field.PRINTER, '')
    return name if record.get(Field.SERVICE) in PRINT_SERVICES and is_printer_name(name) else ''


def task_queue_name(record):
    """The RQ queue a task's job goes into."""
    return queue_name(record[Field.SERVICE], farm_printer(record))


def redis_connection(config, socket_timeout=5):
    """A connection to ``config.redis`` that fails at once when Redis is down
    (redis-py's defaults wait seconds to a minute: a front-end answers 503).
    One per config and timeout, so a server reuses its connections."""
    key = ('_redis', socket_timeout)
    cached = config.__dict__.get(key)
    if cached is None:
        from redis import Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        cached = Redis.from_url(config.redis, socket_connect_timeout=1, socket_timeout=socket_timeout,
                                retry=Retry(NoBackoff(), 0))
        config.__dict__[key] = cached
    return cached


def unavailable(config, exc):
    """The error of a Redis that did not answer (its address, never its password)."""
    from urllib.parse import urlsplit
    where = urlsplit(config.redis)
    return QueueUnavailable(f'the farm\'s queue (Redis at {where.hostname}:{where.port or 6379}) '
                            f'cannot be reached: {exc.__class__.__name__}')


def sort_key(record):
    """A task's place in its queue as a string Lua compares: a move first
    (``queuePosition``), then priority (higher first), then the id (submission)."""
    position = int(record.get(Field.QUEUE_POSITION) or 0)
    priority = int(record.get(Field.PRIORITY) or 0)
    return f'{position + 500_000_000:09d}{100 - priority:03d}{record[Field.ID]}'


class FarmQueue:
    """``backend = rq``: what submission and the runner ask of a queue, on Redis."""

    name = 'rq'

    def __init__(self, store, config):
        self.store, self.config = store, config

    @property
    def redis(self):
        return redis_connection(self.config)

    def check(self):
        """Raise QueueUnavailable unless Redis answers (before anything is written)."""
        import redis
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise unavailable(self.config, exc) from None

    def enqueue(self, task_id, settings):
        """Queue a task (its marker, as with ``backend = local``) and push its job."""
        from .queue import queue_task
        queue_task(self.store, task_id, settings)
        self.take(task_id)

    def take(self, task_id):
        """Push the job of a queued task (its marker written) into its service's
        queue, unless RQ holds it already (a pipeline step's job, deferred
        until the step before ended: RQ queues it then)."""
        record = self.store.read_task(task_id)
        import redis
        try:
            if not self._job_waiting(task_id):
                self._push(record)
        except redis.RedisError as exc:
            raise unavailable(self.config, exc) from None

    def _job_waiting(self, task_id):
        return self.job_state(task_id) in WAITING_OR_RUNNING

    def wait_on(self, record, before_id):
        """A pipeline step's job, deferred by RQ until the step before's job
        ended (its worker reported it: the front-end has queued this step, its
        input in place, by then).  A failed step before cancels this one: its
        worker's claim is refused and the job ends.  A print on a named
        printer is pushed only when it is queued and its printer's turn comes."""
        import redis
        if farm_printer(record):
            return
        try:
            self._push(record, depends_on=before_id)
        except redis.RedisError as exc:
            raise unavailable(self.config, exc) from None

    def _push(self, record, depends_on=None):
        from rq import Queue, Retry
        from rq.serializers import JSONSerializer
        from .services import find_service, load_services
        service = find_service(*load_services(self.store.root), record[Field.SERVICE])
        printer = farm_printer(record)
        if printer and not self.printer_turn(record, printer):  # it waits queued for its printer
            return False
        # Every front-end pushes again what Redis lost: the first to look
        # pushes, and a job is never in its queue twice (two runs at once).
        if not self.redis.set(PUSHING_KEY + record[Field.ID], 1, nx=True, px=PUSHING_MS):
            return False
        queue = Queue(queue_name(service.name, printer), connection=self.redis, serializer=JSONSerializer)
        retries = 0 if service.runs_once else self.config.retries
        from rq.job import Dependency
        # job_timeout -1: the task's own timeout holds (time suspended does not
        # count), its runner's watchdog keeps it; RQ's alarm would not know.
        queue.enqueue(JOB_FUNCTION, record[Field.ID], job_id=record[Field.ID], job_timeout=-1,
                      result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
                      retry=Retry(max=retries) if retries else None,
                      description=f'{service.name} {record[Field.ID]}',
                      depends_on=Dependency(jobs=[depends_on], allow_failure=True) if depends_on else None)
        if not depends_on:
            self.place(record)
        return True

    def printer_turn(self, record, printer):
        """True when a print may be pushed now: its printer's turn is its own
        already, or it is free (no print of the store's busy on it: Redis may
        have lost the turn of one that runs), no print queued for it comes
        first in the queue's order, and this front-end takes it first (SET
        NX: two front-ends never both)."""
        task_id = record[Field.ID]
        holder = self.redis.get(PRINTER_KEY + printer)
        if holder is not None:
            return holder.decode('ascii', 'replace') == task_id  # a stale turn is freed by the sweep
        if busy_prints(self.store, printer, but=task_id):
            return False
        first = self.first_queued_print(printer)
        if first is not None and first[Field.ID] != task_id:
            return False
        return bool(self.redis.set(PRINTER_KEY + printer, task_id, nx=True))

    def printer_done(self, record):
        """A print ended: its printer's turn is given up and the next print
        queued for that printer, in the queue's order, is pushed."""
        printer = farm_printer(record)
        if printer:
            self.release_printer(printer, record[Field.ID])

    def release_printer(self, printer, task_id):
        """``printer``'s turn given up by ``task_id`` (if it holds it) and
        handed to the next print; Redis away or a torn record: the sweep
        (``free_stale_printers``) does it later."""
        import redis
        try:
            self.redis.eval(RELEASE_SCRIPT, 1, PRINTER_KEY + printer, task_id)
            self.push_next_print(printer)
        except (redis.RedisError, RRCloudError) as exc:
            import sys
            print(f'rrcloud: farm: printer {printer}: the next print waits for the sweep: {exc}',
                  file=sys.stderr, flush=True)

    def push_next_print(self, printer):
        """The first print queued for ``printer`` in the queue's order pushed (if its turn comes)."""
        record = self.first_queued_print(printer)
        if record is not None and not self._job_waiting(record[Field.ID]):
            self._push(record)

    def first_queued_print(self, printer):
        """The record of the print queued for ``printer`` that comes first in
        the queue's order (moves, priority, submission), or None."""
        from .order import queue_order
        from .states import State, state_of
        from .store import marked
        for task_id in queue_order(self.store, marked(self.store, 'queue')):
            record = self._record_or_none(task_id)
            if record and farm_printer(record) == printer and state_of(record) == State.QUEUED:
                return record
        return None

    def _record_or_none(self, task_id):
        try:
            return self.store.read_task(task_id)
        except (RRCloudError, KeyError, ValueError):
            return None

    def free_stale_printers(self):
        """A printer's turn held by a print that no longer waits or runs (killed
        while queued, removed, ended while the front-end that ended it died)
        given up; the next print for that printer is pushed."""
        from .names import is_task_id
        from .states import State, state_of
        from .printers import printer_names
        from .store import is_marked
        for printer in printer_names(self.store.root):  # the farm's printers: no scan of all of Redis
            holder = (self.redis.get(PRINTER_KEY + printer) or b'').decode('ascii', 'replace')
            if not holder:
                continue
            record = self._record_or_none(holder) if is_task_id(holder) else None
            stopping = record is not None and is_marked(self.store, 'running', holder)
            if record is None or (state_of(record) not in (State.QUEUED, State.RUNNING, State.SUSPENDED)
                                  and not stopping):  # a killed print still cancelling holds its printer
                self.release_printer(printer, holder)

    def place(self, record):
        """Put a waiting job where the queue's order says (after a push, a move)."""
        import redis
        name = task_queue_name(record)
        try:
            self.redis.eval(PLACE_SCRIPT, 2, f'rq:queue:{name}', ORDER_KEY + name, record[Field.ID],
                            sort_key(record))
        except redis.RedisError as exc:
            raise unavailable(self.config, exc) from None

    def dispatch(self):
        """Workers take the jobs; a front-end only pushes again what a Redis
        that restarted empty lost (at its start, every SWEEP_SECONDS in
        ``rrcloud serve``, in a CGI's recovery minute)."""
        import redis
        from .store import marked
        from .states import queued_here
        from .order import queue_order
        try:
            self.free_stale_printers()
            self.repush_lost(queued_here(self.store, queue_order(self.store, marked(self.store, 'queue'))))
        except redis.RedisError as exc:
            raise unavailable(self.config, exc) from None

    def job_alive(self, record):
        """True while RQ holds a task's job as waiting or running (it ran it
        again after a lost worker, or its worker still beats); False once RQ
        gave it up (a print is never run again) or lost it.  Before looking,
        the queue's running jobs whose worker stopped beating are cleaned up
        here (RQ does that only in a worker idle on the same queue)."""
        import redis
        from rq.registry import StartedJobRegistry
        from rq.serializers import JSONSerializer
        name = task_queue_name(record)
        try:
            StartedJobRegistry(name, connection=self.redis, serializer=JSONSerializer,
                               job_class=allowed_job_class()).cleanup()
            return self.job_state(record[Field.ID]) in WAITING_OR_RUNNING
        except redis.RedisError:
            return True  # nothing known: a Redis away is no verdict on the worker

    def job_state(self, task_id):
        """RQ's word for a task's job ('queued', 'started', 'finished', ...), or '' when it has none."""
        from rq.job import Job
        from rq.exceptions import NoSuchJobError
        from rq.serializers import JSONSerializer
        try:
            status = Job.fetch(task_id, connection=self.redis, serializer=JSONSerializer).get_status()
        except NoSuchJobError:
            return ''
        return str(getattr(status, 'value', status))

    def forget(self, record):
        """A claimed task's place in its queue's order is dropped (Redis away: no matter)."""
        import redis
        try:
            self.redis.hdel(ORDER_KEY + task_queue_name(record), record[Field.ID])
        except redis.RedisError:
            pass

    def repush_lost(self, task_ids):
        """Push again the queued tasks whose job Redis no longer holds (it
        restarted empty) or holds as ended (it failed before its claim): the
        store's queue markers are the truth.  A job RQ still holds, waiting
        or just taken, is never touched.  Returns the ids pushed."""
        pushed = []
        for task_id in task_ids:
            try:
                if self._repush_one(task_id):
                    pushed.append(task_id)
            except (RRCloudError, KeyError) as exc:  # a torn record, a service gone: the others go on
                import sys
                print(f'rrcloud: farm: task {task_id} cannot be queued again: {exc}', file=sys.stderr, flush=True)
        return pushed

    def _repush_one(self, task_id):
        from rq.job import Job
        from rq.serializers import JSONSerializer
        from .states import State, state_of
        record = self.store.read_task(task_id)
        if state_of(record) != State.QUEUED:  # a marker left by a front-end that died: no job of its own
            return False
        state = self.job_state(task_id)
        if state in WAITING_OR_RUNNING:
            return False
        if state:  # ended without its task: gone for good
            Job.fetch(task_id, connection=self.redis, serializer=JSONSerializer).delete()
        return self._push(record)

    def lengths(self):
        """Tasks waiting in Redis, by service (of the services this front-end
        has), and by print service and named printer (``printrun@mk3``)."""
        from .printers import PRINT_SERVICES, printer_names
        from .services import load_services
        services, _ = load_services(self.store.root)
        names = [(name, '') for name in sorted(services)]
        names += [(name, printer) for name in sorted(services) if name in PRINT_SERVICES
                  for printer in printer_names(self.store.root)]
        return {name + (PRINTER_QUEUE_MARK + printer if printer else ''):
                self.redis.llen(f'rq:queue:{queue_name(name, printer)}') for name, printer in names}

    def workers(self):
        """The farm's workers: name, services, busy or idle, last heartbeat."""
        from rq import Worker
        from rq.serializers import JSONSerializer
        found = []
        from .identity import is_node_name
        for worker in Worker.all(connection=self.redis, serializer=JSONSerializer):
            if not is_node_name(worker.name):  # a name from Redis goes into meta's lines: checked
                continue
            services = [name[len(QUEUE_PREFIX):] for name in worker.queue_names()
                        if name.startswith(QUEUE_PREFIX) and is_queue_of_ours(name[len(QUEUE_PREFIX):])]
            beat = worker.last_heartbeat.timestamp() if worker.last_heartbeat else 0
            found.append({'name': worker.name, 'services': services, 'state': worker.get_state(),
                          'task': worker.get_current_job_id() or '', 'heartbeat': round(beat, 3)})
        return found


def is_queue_of_ours(name):
    """True for what follows ``rrcloud.`` in a queue's name: a service's name,
    or a service's and a printer's (``printrun@mk3``), each checked (meta shows it)."""
    from .names import is_service_name
    from .printers import is_printer_name
    service, mark, printer = name.partition(PRINTER_QUEUE_MARK)
    return is_service_name(service) and (not mark or is_printer_name(printer))


def busy_prints(store, printer, but=''):
    """The ids of the store's prints on the named ``printer`` that have a
    running marker (running, paused, or killed and still being cancelled on
    their worker: the marker goes at its ``workdone``), other than ``but``."""
    from .printers import print_targets
    from .store import marked
    busy = []
    for task_id in marked(store, 'running'):
        try:
            record = store.read_task(task_id)
        except (RRCloudError, KeyError, ValueError):
            continue
        if task_id != but and printer in print_targets(record):
            busy.append(task_id)
    return busy
