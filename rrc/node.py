"""One rrcloud node as this process sees it: its identity (``nodeName`` plus
this boot), its config, its store, when it started, and what it tells a
client that asks ``meta``.

The WSGI app, the CLI and the runner each build what they need once and pass
it down; nothing here is kept in module state.
"""

import os
import sys
import time

from . import VERSION_STRING
from .identity import NodeIdentity, instance_id
from .procs import format_uptime, system_uptime
from .states import count_tasks, queued_here, running_here
from .store import Store, marked
from .toolversions import ToolVersions, versions_field


class Node:
    """A node's identity, config and store, and the time its serving process
    started (None: not a server, uptime then counts from boot).

    Many nodes may share one store folder: the store sees it through this
    node's identity, so it judges, reconciles and starts only this node's tasks.
    """

    def __init__(self, config, started=None):
        self.config = config
        self.identity = NodeIdentity.of(config.nodeName)
        self.store = Store(config.dir, self.identity)
        self.started = started
        # Each tool is asked its version once per binary (rrc/toolversions.py).
        self.tool_versions = ToolVersions(self.store.root, make_folder=True)

    def meta(self, services):
        """The ``meta`` answer of this node, with its tools' versions."""
        return meta_record(self.store, self.config, services, self.started, self.tool_versions)


def meta_record(store, config, services, started=None, tool_versions=None):
    """What this machine offers: the spec's meta fields plus load for schedulers.

    ``busy`` and ``queued`` count this node's tasks (``tasks`` counts the
    store's).  ``uptime`` counts from ``started`` (when the serving process
    started), or, without a server (``rrcloud meta`` on the command line), from boot.
    ``toolVersions``: each service's tool as installed (``tool_versions``, a
    server's own ``ToolVersions``; else one that reads the store's cache).
    """
    running = running_here(store, marked(store, 'running'))
    tasks = count_tasks(store)
    return dict(limit_fields(config), **farm_fields(store, config), **{
        'busy': str(len(running)),
        'cpuLoad': f'{os.getloadavg()[0]:.2f}',
        'events': 'yes',  # service=events: live events (a 0.019 server has no such key)
        'instance': instance_id(store.node, store.root),
        'maxDataRetention': f'{config.maxDataRetention:g}',
        'maxTasks': str(config.maxTasks),
        'queued': str(len(queued_here(store, marked(store, 'queue')))),
        'sandbox': 'bwrap' if config.sandbox else 'off',
        'serverName': config.serverName,
        'services': ','.join(sorted(services)),
        'tasks': str(tasks),
        'timeout': f'{config.timeout:g}',
        'toolVersions': versions_field((tool_versions or ToolVersions(store.root)).of_services(services)),
        'uptime': format_uptime(time.time() - started if started else system_uptime()),
        'version': VERSION_STRING,
    })


def farm_fields(store, config):
    """A farm's front-end (``backend = rq``): its queues in Redis and its
    workers (``farmWorkers``: NAME STATE SERVICE+SERVICE HEARTBEAT, comma-separated)."""
    if config.backend != 'rq':
        return {}
    from .farmqueue import FarmQueue
    import redis
    queue = FarmQueue(store, config)
    try:
        lengths, workers = queue.lengths(), queue.workers()
    except redis.RedisError as exc:
        return {'backend': 'rq', 'farmQueued': f'unknown (Redis: {exc.__class__.__name__})'}
    return {'backend': 'rq', 'farmQueued': ','.join(f'{name}={count}' for name, count in sorted(lengths.items())),
            'farmWorkers': ', '.join(f'{w["name"]} {w["state"]} {"+".join(w["services"]) or "-"} {w["heartbeat"]}'
                                     for w in workers)}


def limit_fields(config):
    """What a task's tool may use here (bytes, counts, seconds), and how it is
    enforced (``limits``); ``serviceLimits`` lists where a service differs
    (``openscad.maxMemory=4294967296,...``: a record key holds no dot)."""
    from .limits import enforcement
    fields = {'limits': enforcement_words(enforcement(), config.sandbox),
              'maxMemory': str(config.limit_for('', 'maxMemory')),
              'maxProcesses': str(config.maxProcesses), 'maxOutputSize': str(config.maxOutputSize),
              'maxLogSize': str(config.maxLogSize), 'maxSuspend': f'{config.maxSuspend:g}'}
    differing = [f'{service}.{key}={value}' for service, limits in sorted(config.service_limits.items())
                 for key, value in sorted(limits.items())]
    if differing:
        fields['serviceLimits'] = ','.join(differing)
    return fields


def enforcement_words(method, sandbox=True):
    """``cgroup`` or ``rlimit``; where tools have no process limit under
    rlimits it says why: the kernel does not count a root user's processes,
    and without the sandbox's user namespace the count would be the server's."""
    if method == 'rlimit' and not sandbox:
        return 'rlimit; no process limit: sandbox off'
    if method == 'rlimit' and os.geteuid() == 0:
        return 'rlimit; no process limit: the server runs as root'
    return method


SANDBOX_OFF_WARNING = ('rrcloud: warning: sandbox = no: tasks run without their sandbox, '
                       'with every right of this server\'s user (see docs/SECURITY.md)')


def warn_if_unsandboxed(config):
    """Say in the server's log that tools run unconfined, when someone chose that."""
    if not config.sandbox:
        print(SANDBOX_OFF_WARNING, file=sys.stderr, flush=True)
