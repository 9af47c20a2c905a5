"""What a task's tool may use while it runs, and the units the limits are written in.

Sizes in rrcloudrc are bytes or a number with a binary unit (``512M``,
``2 GiB``); ``format_size`` writes them back the way a person reads them
(``2 GiB``).  The defaults scale with the machine: memory is a share of its
RAM, processes a number per CPU on big machines.
"""

import os

SIZE_UNITS = {'': 1, 'k': 1 << 10, 'm': 1 << 20, 'g': 1 << 30, 't': 1 << 40}
UNIT_NAMES = ((1 << 40, 'TiB'), (1 << 30, 'GiB'), (1 << 20, 'MiB'), (1 << 10, 'KiB'))


def parse_size(text):
    """Bytes of ``1048576``, ``512M``, ``512 MiB``, ``2G``, ``1.5 GB`` (units
    are binary: K, M, G, T with an optional ``i`` and ``B``); at least 1."""
    word = text.strip().lower().replace(' ', '')
    number = word.rstrip('kmgtib')
    unit = word[len(number):]
    unit = unit[:-1] if unit.endswith('b') else unit
    unit = unit[:-1] if unit.endswith('i') else unit
    whole, _, fraction = number.partition('.')
    if unit not in SIZE_UNITS or not whole.isdigit() or not (fraction.isdigit() or not fraction) \
            or not whole.isascii() or len(number) > 20:
        raise ValueError('a size is a number of bytes, or one with K, M, G or T (e.g. 512M, 2 GiB)')
    value = int(float(number) * SIZE_UNITS[unit])
    if value < 1:
        raise ValueError('must be at least 1 byte')
    return value


def format_size(size):
    """``2 GiB``, ``1.5 GiB``, ``10 MiB``, ``512 bytes``: a size for people."""
    for unit, name in UNIT_NAMES:
        if size >= unit:
            return f'{size / unit:.1f}'.removesuffix('.0') + f' {name}'
    return f'{size} bytes'


def machine_memory():
    """Bytes of RAM of this machine (0 when the system does not say)."""
    try:
        return os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError):
        return 0


# The tools of all slots together may take this share of the machine's RAM
# by default: the server, the store's page cache and the system keep the rest.
DEFAULT_MEMORY_SHARE = 0.75
DEFAULT_MEMORY_FLOOR = 256 << 20


def default_max_memory(slots):
    """``maxMemory``'s default: three quarters of the machine's RAM shared
    among ``slots`` tasks (``maxTasks``), at least 256 MiB."""
    return max(DEFAULT_MEMORY_FLOOR, int(machine_memory() * DEFAULT_MEMORY_SHARE) // max(1, slots))


# Threads count as processes (the kernel counts tasks): a renderer starts
# one per CPU, so big machines get more than the 64 a small one gets.
DEFAULT_PROCESSES = 64
PROCESSES_PER_CPU = 4


def default_max_processes():
    """``maxProcesses``'s default: 64, or 4 per CPU where that is more."""
    return max(DEFAULT_PROCESSES, PROCESSES_PER_CPU * (os.cpu_count() or 1))


# ---- How the limits are put on a tool --------------------------------------
#
# rlimits, always: set by prlimit (util-linux) as the first program inside
# the sandbox, so RLIMIT_NPROC counts the processes of the sandbox's own user
# namespace (Linux 5.14 and later count it per namespace), not every process
# of the server's user.  RLIMIT_DATA rather than RLIMIT_AS: Node (OpenJSCAD)
# reserves gigabytes of address space it never uses and cannot start under
# an address-space limit; RLIMIT_DATA counts what a process can write to.
# The kernel does not count processes against a root user's RLIMIT_NPROC: a
# server run as root gets no process limit from rlimits (meta says so).
PRLIMIT = '/usr/bin/prlimit'
OPEN_FILES = 4096


class ToolLimits:
    """What one task's tool may use: memory and processes, bytes per file
    written (and all of them together), bytes of log."""

    def __init__(self, memory, processes, output, log):
        self.memory, self.processes, self.output, self.log = memory, processes, output, log

    @classmethod
    def of(cls, config):
        """The limits of a task's settings (a runner's Config: already those of its service)."""
        return cls(config.limit_for('', 'maxMemory'), config.maxProcesses, config.maxOutputSize,
                   config.maxLogSize)

    def rlimit_argv(self, processes=True):
        """prlimit's argv that puts the limits on the program named after it.
        ``processes``: False outside a sandbox (without its own user namespace
        RLIMIT_NPROC would count every process of the server's user).

        A file may grow one byte past ``maxOutputSize``: a result cut short
        by the limit is then refused for its size, never taken as complete."""
        argv = [PRLIMIT, f'--data={self.memory}', f'--fsize={self.output + 1}',
                f'--nofile={OPEN_FILES}', '--core=0']
        return argv + ([f'--nproc={self.processes}'] if processes else []) + ['--']


# ---- cgroup v2: the whole tool counted together ----------------------------
#
# Where the server runs in a delegated cgroup v2 subtree (systemd's
# Delegate=yes gives a service its own), ``rrcloud serve`` moves itself into
# a leaf ``server`` and enables memory and pids for its children; each task
# then gets a cgroup beside it: the runner moves itself in before it starts
# the tool, so the tool and everything it starts are counted together (the
# runner's own few MiB and threads are allowed for), and the kernel says
# afterwards whether the limit was hit (memory.events, pids.events).
CONTROLLERS = {'memory', 'pids'}
SERVER_LEAF = 'server'
RUNNER_MEMORY = 64 << 20
RUNNER_TASKS = 8


def _read_text(path):
    """A kernel file's text ('' when it cannot be read: no such controller, no cgroup)."""
    try:
        with open(path, encoding='utf-8', errors='replace') as handle:
            return handle.read()
    except OSError:
        return ''


def _read_words(path):
    return _read_text(path).split()


def _write(path, text):
    with open(path, 'w', encoding='ascii') as handle:
        handle.write(text)


def own_cgroup(proc='/proc/self'):
    """The cgroup v2 folder this process runs in, or None (no cgroup2 mount, or the root)."""
    mount = next((fields[4] for fields in map(str.split, _read_text(f'{proc}/mountinfo').splitlines())
                  if '-' in fields and fields[fields.index('-') + 1] == 'cgroup2'), None)
    relative = next((line[3:] for line in _read_text(f'{proc}/cgroup').splitlines() if line.startswith('0::')), None)
    if mount is None or relative in (None, '/'):
        return None
    return mount.rstrip('/') + relative


def delegated_cgroup(proc='/proc/self'):
    """(parent, own): the folder tasks' cgroups go in and this process's own
    leaf ``server``, when the parent gives its children memory and pids and
    lets this process create them and move between them; else None.  Only a
    leaf named ``server`` counts: rrcloud makes cgroups only inside the one
    it was started in, never beside another program's."""
    own = own_cgroup(proc)
    if own is None or os.path.basename(own) != SERVER_LEAF:
        return None
    parent = os.path.dirname(own)
    return (parent, own) if _gives_tasks_cgroups(parent) else None


def _gives_tasks_cgroups(parent):
    """True when children of ``parent`` get memory and pids and this process may make them."""
    return (CONTROLLERS <= set(_read_words(f'{parent}/cgroup.subtree_control'))
            and os.access(parent, os.W_OK) and os.access(f'{parent}/cgroup.procs', os.W_OK))


def claim_cgroup(proc='/proc/self'):
    """At a server's start: in a cgroup it may manage (systemd's Delegate=)
    with memory and pids, move into a leaf ``server`` (unless it started in
    one: DelegateSubgroup=server) and enable both for the tasks' cgroups
    beside it.  True when tasks get cgroups."""
    own = own_cgroup(proc)
    if own is None:
        return False
    if os.path.basename(own) != SERVER_LEAF:
        if not CONTROLLERS <= set(_read_words(f'{own}/cgroup.controllers')):
            return False
        try:
            os.makedirs(f'{own}/{SERVER_LEAF}', exist_ok=True)
            _write(f'{own}/{SERVER_LEAF}/cgroup.procs', str(os.getpid()))
        except OSError:
            return False
        own = f'{own}/{SERVER_LEAF}'
    parent = os.path.dirname(own)
    return _enable_controllers(parent) and os.access(f'{parent}/cgroup.procs', os.W_OK)


def _enable_controllers(folder):
    """memory and pids for the children of ``folder`` (it holds no process
    itself now); True when they have them (the kernel refuses the write otherwise)."""
    if CONTROLLERS <= set(_read_words(f'{folder}/cgroup.subtree_control')):
        return True
    try:
        _write(f'{folder}/cgroup.subtree_control', ' '.join('+' + c for c in sorted(CONTROLLERS)))
    except OSError:
        return False
    return True


def enforcement(proc='/proc/self'):
    """How tools are limited here: ``cgroup`` (their cgroup v2, plus the
    rlimits) or ``rlimit`` (per process)."""
    return 'cgroup' if delegated_cgroup(proc) else 'rlimit'


class TaskCgroup:
    """One task's cgroup while its tool runs: the runner moves itself in
    (the tool it starts is born there) and out again, then removes it."""

    def __init__(self, parent, own, task_id, limits):
        self.folder, self.own, self.limits = f'{parent}/task-{task_id}', own, limits
        self.name = f'task-{task_id}'

    def enter(self):
        """Make the cgroup with the task's limits and move this runner in; self."""
        os.mkdir(self.folder, 0o755)
        try:
            # The runner's own share: itself, and the end of the log it keeps (toollog).
            self._set('memory.max', self.limits.memory + RUNNER_MEMORY + self.limits.log // 2)
            self._set('memory.swap.max', 0, only_if_there=True)  # only with swap accounting
            self._set('pids.max', self.limits.processes + RUNNER_TASKS)
            _write(f'{self.folder}/cgroup.procs', str(os.getpid()))
        except OSError:
            os.rmdir(self.folder)
            raise
        return self

    def _set(self, name, value, only_if_there=False):
        if not only_if_there or os.path.exists(f'{self.folder}/{name}'):
            _write(f'{self.folder}/{name}', str(value))

    def exceeded(self):
        """Which limit the tool hit: ``memory`` (the kernel killed it), ``processes``, or None."""
        if _event_count(f'{self.folder}/memory.events', 'oom_kill'):
            return 'memory'
        if _event_count(f'{self.folder}/pids.events', 'max'):
            return 'processes'
        return None

    def leave(self):
        """Move the runner back, end whatever the tool left in it
        (``cgroup.kill``, Linux 5.14), remove it; '' or what went wrong."""
        try:
            _write(f'{self.own}/cgroup.procs', str(os.getpid()))
            if os.path.exists(f'{self.folder}/cgroup.kill'):
                _write(f'{self.folder}/cgroup.kill', '1')
        except OSError as exc:
            return f'cannot leave its cgroup {self.name}: {exc.strerror}'
        return self._remove()

    def _remove(self):
        import time
        for _ in range(50):  # the tool's last processes may take a moment to go
            try:
                os.rmdir(self.folder)
                return ''
            except FileNotFoundError:
                return ''
            except OSError:
                time.sleep(0.02)
        return f'cannot remove its cgroup {self.name}: processes stay in it'


def _event_count(path, key):
    words = _read_words(path)
    for name, value in zip(words[::2], words[1::2]):
        if name == key:
            return int(value) if value.isdigit() else 0
    return 0


# ---- Telling which limit a failed tool ran into ----------------------------
#
# Under rlimits the kernel refuses an allocation or a fork and the tool dies
# of it in its own words; those words, at the end of its output, name the
# limit (with a cgroup the kernel's own counters do).
OUT_OF_MEMORY_WORDS = (b'out of memory', b'bad_alloc', b'cannot allocate memory', b'memoryerror',
                       b'allocation failed', b'failed to reserve virtual memory', b'enomem')
NO_PROCESS_WORDS = (b"can't fork", b'cannot fork', b'fork: retry')
# A fork or spawn that failed for want of a process (EAGAIN): "Error: spawn
# /usr/bin/sleep EAGAIN" (Node), "fork: Resource temporarily unavailable"
# (sh).  Not a bare EAGAIN: a busy serial port says it too.
NO_PROCESS_RE = rb'\b(fork|spawn)\b[^\n]{0,200}\b(eagain|resource temporarily unavailable)'

FILE_TOO_LARGE_WORDS = (b'file too large', b'efbig', b'file size limit exceeded')
SIGXFSZ = 25


def limit_error(limits, code, output_end, cgroup=None):
    """The error of a tool that failed with exit ``code`` because it ran into a
    limit (``memory limit 2 GiB exceeded (maxMemory)``), or None.  With its
    ``cgroup`` the kernel's counters say which; else the tool's last words."""
    which = cgroup.exceeded() if cgroup is not None else words_name_a_limit(output_end.lower())
    if which == 'memory':
        return f'memory limit {format_size(limits.memory)} exceeded (maxMemory)'
    if which == 'processes':
        return f'process limit {limits.processes} reached (maxProcesses)'
    if code in (-SIGXFSZ, 128 + SIGXFSZ) or any(word in output_end.lower() for word in FILE_TOO_LARGE_WORDS):
        return f'a file it wrote passed maxOutputSize ({format_size(limits.output)})'
    return None


def words_name_a_limit(said):
    """``memory`` or ``processes`` when a tool's last words (lower case) say
    it could not get more; None otherwise."""
    import re
    if any(word in said for word in OUT_OF_MEMORY_WORDS):
        return 'memory'
    if any(word in said for word in NO_PROCESS_WORDS) or re.search(NO_PROCESS_RE, said):
        return 'processes'
    return None
