"""Processes: identity (pid plus start time), group kill, spawning the detached runner, uptime."""

import os
import sys
import time

from . import PROGRAM_FOLDER


# Environment variables a task inherits; everything else (HTTP_*, DISPLAY,
# the web server's own variables) is dropped.  PATH comes from the service.
TASK_ENV_ALLOWLIST = ('HOME', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TMPDIR',
                      'USER', 'LOGNAME')
# The runner's own environment: the task allowlist plus what finds Python
# (its settings come with the task, never from the rrcloudrc files).
RUNNER_ENV_ALLOWLIST = TASK_ENV_ALLOWLIST + ('PATH', 'PYTHONPATH')
KILL_GRACE_SECONDS = 3.0


def process_start_time(pid):
    """The kernel's start time of a live process, or None (dead, zombie, no access)."""
    try:
        with open(f'/proc/{int(pid)}/stat', 'rb') as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(b')') + 2:].split()
    if not fields or fields[0] in (b'Z', b'X'):
        return None
    return fields[19].decode()


def process_is(pid, start_time):
    """True when ``pid`` is alive and is the same process that started at ``start_time``."""
    return bool(pid) and bool(start_time) and process_start_time(pid) == start_time


def pid_alive(pid):
    return pid == os.getpid() or process_start_time(pid) is not None


def system_uptime():
    """Seconds since boot."""
    try:
        with open('/proc/uptime') as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def process_started_at(pid):
    """When a process started (Unix time), from /proc; None when it cannot be read."""
    ticks = process_start_time(pid)
    try:
        return time.time() - system_uptime() + int(ticks) / os.sysconf('SC_CLK_TCK')
    except (TypeError, ValueError, OSError):
        return None


def format_uptime(seconds):
    """``0d 06h 00m 52s`` as the spec shows it."""
    seconds = max(0, int(seconds))
    return (f'{seconds // 86400}d {seconds // 3600 % 24:02d}h '
            f'{seconds // 60 % 60:02d}m {seconds % 60:02d}s')


def find_program(name, path):
    """The executable ``name`` in the folders of ``path`` (or ``name`` itself
    when it has a slash), else None: ``shutil.which`` without importing
    shutil (with re, enum, bz2 and lzma: some 6 ms of every runner's start)."""
    folders = [''] if '/' in name else [folder for folder in path.split(':') if folder]
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def rrcloud_command():
    """argv prefix that runs this very program with this very interpreter.

    It imports rrcloud as a module rather than running the file as a script,
    so Python uses the cached bytecode instead of compiling the file anew.
    It starts without the site module (-S), with this process's module path
    and prefixes instead (what site sets in a virtual environment): site's
    .pth files run an editable install's import hook (pathlib, re, enum,
    urllib), 40 ms of a runner's 60 ms start.
    """
    paths = [PROGRAM_FOLDER] + [path for path in sys.path if path and path != PROGRAM_FOLDER]
    launcher = (f'import sys; sys.path[:0] = {paths!r}; '
                f'sys.prefix, sys.exec_prefix = {sys.prefix!r}, {sys.exec_prefix!r}; import rrcloud; '
                f'sys.exit(rrcloud.main(["rrcloud"] + sys.argv[1:]))')
    return [sys.executable, '-S', '-c', launcher]


def spawn_runner(store, task_id, slot_fd, settings):
    """Start ``rrcloud _run ID`` detached, holding its slot; it runs with ``settings``."""
    return spawn_internal(store, '_run', task_id, {'RRCLOUD_SLOT_FD': str(slot_fd),
                                                   'RRCLOUD_TASK_SETTINGS': settings}, (slot_fd,))


def spawn_internal(store, mode, task_id, extra_env=None, pass_fds=()):
    """Start ``rrcloud MODE ID --dir ROOT`` (the runner, a pipeline's
    forwarder) detached: own session, no terminal, outlives us."""
    import subprocess
    # Not the request's environment (HTTP_*, GATEWAY_INTERFACE): an allowlist.
    env = {k: os.environ[k] for k in RUNNER_ENV_ALLOWLIST if k in os.environ}
    env['RRCLOUD_NODE'] = store.node.name  # it acts for the node that started it
    env.update(extra_env or {})
    # A new session: a web server's or terminal's signals to its group never
    # reach the task, and the task survives the request or CLI that started it.
    process = subprocess.Popen(
        rrcloud_command() + [mode, task_id, '--dir', store.root],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=store.root, env=env, pass_fds=pass_fds, start_new_session=True)
    return process.pid


def task_environment(service):
    """The explicit environment of a task: PATH from the service, a short allowlist."""
    env = {key: os.environ[key] for key in TASK_ENV_ALLOWLIST if key in os.environ}
    env['PATH'] = service.path
    env.setdefault('HOME', os.environ.get('TMPDIR', '/tmp'))
    env.setdefault('LANG', 'C.UTF-8')
    return env


def kill_process_group(pgid, sig=None):
    """Signal a whole process group; a group already gone is fine."""
    import signal
    try:
        os.killpg(pgid, signal.SIGKILL if sig is None else sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_group(process, grace=KILL_GRACE_SECONDS):
    """SIGTERM the tool's process group, then SIGKILL what is left after ``grace``."""
    import signal
    import subprocess
    kill_process_group(process.pid, signal.SIGTERM)
    kill_process_group(process.pid, signal.SIGCONT)  # a suspended (stopped) group acts on it only then
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    kill_process_group(process.pid, signal.SIGKILL)
    process.wait()
