"""``rrcloud worker --server=URL``: one machine's share of a farm's work
(``backend = rq``).

The worker takes jobs from the Redis queues of the services it has (RQ's
forking ``Worker``: each job runs in a child, the "horse", whose heartbeats
tell the farm it is alive), and for each one (``run_farm_task``) asks its
front-end for the task (``workclaim``), fetches its inputs, runs the tool
with the same runner and sandbox as a single server does, in a private
store of its own that it removes afterwards, sends the log and progress
back as they come (``workupdate``, whose answer says whether the task was
killed or suspended meanwhile) and hands back how it ended with its result
(``workdone``).  It has no store, no shared file system: Redis and HTTP to
its front-end with the worker token, nothing else.

RQ is made to notice a lost worker in seconds rather than minutes: the
horse dies with its worker (PR_SET_PDEATHSIG; bwrap's --die-with-parent
then takes the tool), a running job's heartbeat lives a few seconds, and a
worker cleans its queues' registries every few seconds.
"""

import os
import sys
import time

from .errors import ExitCode, RRCloudError, UsageError, reason_without_paths
from .farmqueue import allowed_job_class, queue_name

# How often a busy horse beats, and how long a beat lives (RQ's default adds
# 60 s): a killed worker's task runs again within about ten seconds.
JOB_MONITORING_SECONDS = 2
HEARTBEAT_SECONDS = 3 * JOB_MONITORING_SECONDS
MAINTENANCE_SECONDS = 2
WORKER_TTL_SECONDS = 20
# A worker that lost Redis tries again after this, then twice as long, up to the last.
RECONNECT_SECONDS = (1, 2, 4, 8, 15)
SERVER_ENV = 'RRCLOUD_WORKER_SERVER'
NAME_ENV = 'RRCLOUD_WORKER_NAME'
SERVICES_ENV = 'RRCLOUD_WORKER_SERVICES'
PRINTERS_ENV = 'RRCLOUD_WORKER_PRINTERS'
# The worker's own folder for its tasks' private stores (emptied as it starts:
# a job killed with its worker leaves one behind).
WORK_FOLDER = 'work'


def cmd_worker(args):
    """``rrcloud worker --server=URL [--services=a,b] [--printer=NAME ...] [--burst]``."""
    from .config import load_config
    options = worker_options(args)
    config = load_config()
    if config.backend != 'rq' or not config.redis or not config.workerToken:
        raise UsageError('a worker needs backend = rq, redis = redis://… and workerToken in rrcloudrc')
    services = worker_services(options['services'])
    printers = worker_printers(options['printers'], services)
    import_what_a_job_needs()
    empty_work_folder()
    os.environ.update({SERVER_ENV: options['server'], NAME_ENV: worker_name(),
                       SERVICES_ENV: ','.join(services), PRINTERS_ENV: ','.join(printers)})
    serving = f'; printers: {", ".join(printers)}' if printers else ''
    print(f'rrcloud: worker {os.environ[NAME_ENV]} for {options["server"]}: {", ".join(services)}{serving}',
          file=sys.stderr, flush=True)
    return work_on(config, services, options['burst'], printers)


def empty_work_folder():
    """The worker's folder of private stores, emptied (what a killed job left)."""
    from .trees import remove_tree
    remove_tree(WORK_FOLDER)
    os.mkdir(WORK_FOLDER, 0o700)


def worker_options(args):
    """``--server=URL`` (required), ``--services=a,b``, ``--printer=NAME``
    (again, or ``a,b``), ``--burst``."""
    from .remote import server_url
    options = {'server': '', 'services': '', 'printers': [], 'burst': False}
    for word in args:
        name, _, value = word.partition('=')
        if word == '--burst':
            options['burst'] = True
        elif name in ('--server', '--services') and value:
            options[name[2:]] = value
        elif name == '--printer' and value:
            options['printers'] += [part.strip() for part in value.split(',') if part.strip()]
        else:
            raise UsageError(f'unknown worker option: {word!r} (rrcloud worker --server=URL '
                             '[--services=a,b] [--printer=NAME ...] [--burst])')
    if not options['server']:
        raise UsageError('a worker needs --server=URL: the front-end it works for')
    options['server'] = server_url(options['server'], 4468)
    return options


def worker_services(asked):
    """The services this worker takes: those asked for (each must have its
    tool here, or the worker refuses to start), or every one whose tool is here."""
    from .services import load_services
    services, _ = load_services(os.getcwd())
    wanted = [name.strip() for name in asked.split(',') if name.strip()] if asked else sorted(services)
    unknown = [name for name in wanted if name not in services]
    if unknown:
        raise UsageError(f'no such service here: {", ".join(unknown)}')
    missing = [name for name in wanted if not tool_installed(services[name])]
    if asked and missing:
        raise UsageError(f'the tool of {", ".join(missing)} is not installed here: this worker cannot take it')
    for name in missing:
        print(f'rrcloud: worker: {name}: its tool is not installed here; not taking it', file=sys.stderr)
    return [name for name in wanted if name not in missing]


def worker_printers(names, services):
    """The named printers this worker serves (``--printer``): each one's
    ``printers/NAME.conf`` is this worker's own (in its folder: the port is
    on this machine), read and checked now, against the service conf of each
    print service it takes; a worker that cannot serve one refuses to start."""
    from .printers import PRINT_SERVICES, is_printer_name, resolve_printer
    from .services import load_services
    bad = [name for name in names if not is_printer_name(name)]
    if bad:
        raise UsageError(f'--printer={bad[0][:40]!r}: a printer\'s name is lower-case letters, digits, _ and - '
                         f'(at most 32, a letter first)')
    prints = [name for name in services if name in PRINT_SERVICES]
    if names and not prints:
        raise UsageError('--printer needs a print service this worker takes (printrun)')
    found, _ = load_services(os.getcwd())
    for name in dict.fromkeys(names):
        for service in prints:
            try:
                resolve_printer(os.getcwd(), found[service], [name])  # the name checked, the conf read
            except RRCloudError as exc:
                raise UsageError(f'--printer={name[:40]}: {reason_without_paths(exc)} '
                                 f'(a worker reads its own printers/NAME.conf, in {os.getcwd()})') from None
    return list(dict.fromkeys(names))


def worker_queues(services, printers):
    """The RQ queues of this worker: each named printer's prints first (a
    print waiting for its printer goes before other work), then its services'."""
    from .printers import PRINT_SERVICES
    return ([queue_name(service, printer) for printer in printers for service in services
             if service in PRINT_SERVICES] + [queue_name(service) for service in services])


def tool_installed(service):
    """True when a service's program is on its path (the built-in sender always is)."""
    import shutil
    return service.builtin or shutil.which(service.cmd[0], path=service.path) is not None


# What every job imports: imported once here, each job's child (a fork) has it already.
JOB_MODULES = ('requests', f'{__package__}.workrun', f'{__package__}.runner', f'{__package__}.supervise',
               f'{__package__}.launch', f'{__package__}.sandbox', f'{__package__}.settings', 'json', 'subprocess')


def import_what_a_job_needs():
    """Import the job's modules before forking: a job's child starts with them (a
    fresh import of requests alone costs a job about 100 ms)."""
    for name in JOB_MODULES:
        __import__(name)


def worker_name():
    """A name no other live worker has: host, pid, a random part (a node name too)."""
    import socket
    return f'{socket.gethostname()[:40]}.{os.getpid()}.{os.urandom(3).hex()}'


def work_on(config, services, burst, printers=()):
    """Take jobs until stopped (SIGTERM: after the task it runs) or, with
    ``burst``, until the queues are empty; after a lost Redis, again with a
    backoff, under a new name (RQ keeps a lost worker's for a minute)."""
    import redis
    failures = 0
    while True:
        worker = None
        try:
            worker = farm_worker(config, services, f'{os.environ[NAME_ENV]}.{failures}' if failures else None,
                                 printers)
            worker.work(burst=burst, with_scheduler=False, logging_level='WARNING')
            failed = None
        except (redis.RedisError, ValueError) as exc:
            failed = exc
        if stopped(worker) or (burst and failed is None):
            return ExitCode.OK
        failures, wait = failures + 1, RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
        reason = failed.__class__.__name__ if failed else 'it lost Redis'
        print(f'rrcloud: worker: Redis: {reason}; again in {wait} s', file=sys.stderr, flush=True)
        time.sleep(wait)


def stopped(worker):
    """True when the worker was told to stop (SIGTERM, SIGINT): RQ's ``work``
    also returns, without a word, after a Redis time-out or an error of its
    own, and then the worker starts again."""
    return worker is not None and worker._shutdown_requested_date is not None


def farm_worker(config, services, name=None, printers=()):
    """RQ's forking worker on the queues of ``services``, made to notice a lost worker in seconds."""
    import redis
    from rq import Queue, Worker
    from rq.serializers import JSONSerializer
    from rq.worker_registration import register
    from .farmqueue import redis_connection
    connection = redis_connection(config, socket_timeout=WORKER_TTL_SECONDS + 15)

    class FarmWorker(Worker):
        def main_work_horse(self, *args, **kwargs):
            die_with_parent()
            return super().main_work_horse(*args, **kwargs)

        def get_heartbeat_ttl(self, job):
            return HEARTBEAT_SECONDS

        # While its horse runs, RQ's worker gives the run up at the first
        # Redis call that fails; a task's life is told to its front-end
        # over HTTP, so a Redis away a while must not cost the run (nor free
        # this worker to take a second task beside it).
        def maintain_heartbeats(self, job):
            self.while_redis_may_be_away(super().maintain_heartbeats, job)

        def set_current_job_working_time(self, seconds, pipeline=None):
            self.while_redis_may_be_away(super().set_current_job_working_time, seconds, pipeline)

        def while_redis_may_be_away(self, call, *args):
            try:
                call(*args)
                if getattr(self, 'redis_away_during_run', False):
                    register(self)  # a Redis that restarted empty lists this worker again (meta)
                    print('rrcloud: worker: Redis is back', file=sys.stderr, flush=True)
                self.redis_away_during_run = False
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not getattr(self, 'redis_away_during_run', False):
                    print(f'rrcloud: worker: Redis: {exc.__class__.__name__} while a task runs; its run goes on',
                          file=sys.stderr, flush=True)
                self.redis_away_during_run = True

        def subscribe(self):  # rrcloud's control goes through its front-end, not RQ's pubsub
            pass

        def unsubscribe(self):
            pass

    queues = [Queue(name, connection=connection, serializer=JSONSerializer)
              for name in worker_queues(services, printers)]
    return FarmWorker(queues, connection=connection, serializer=JSONSerializer, job_class=allowed_job_class(),
                      name=name or os.environ[NAME_ENV], worker_ttl=WORKER_TTL_SECONDS,
                      job_monitoring_interval=JOB_MONITORING_SECONDS, maintenance_interval=MAINTENANCE_SECONDS)


def die_with_parent():
    """The horse dies with its worker (SIGKILL when the worker goes), so a
    killed worker leaves nothing running that RQ would run a second time."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the worker went before the line above
        os._exit(1)


def run_farm_task(task_id):
    """RQ's job: run one task of the front-end this worker works for."""
    from .config import load_config
    from .workrun import FrontEnd, WorkRun
    from .workrun import StaleRun
    config = load_config()  # the worker's own: its token, its sandbox, its limits
    front = FrontEnd(os.environ[SERVER_ENV], config.workerToken)
    printers = [name for name in os.environ.get(PRINTERS_ENV, '').split(',') if name]
    run = WorkRun(front, config, task_id, os.environ[NAME_ENV], os.environ[SERVICES_ENV].split(','),
                  os.path.abspath(WORK_FOLDER), printers)
    try:
        run.run()
    except StaleRun as exc:  # the task ended, or runs elsewhere: this job is done
        print(f'rrcloud: worker: task {task_id}: {reason_without_paths(exc)}', file=sys.stderr, flush=True)
    except RRCloudError as exc:  # the front-end could not be told: RQ fails the job (or runs it again)
        print(f'rrcloud: worker: task {task_id}: {reason_without_paths(exc)}', file=sys.stderr, flush=True)
        raise
    finally:
        run.remove()

