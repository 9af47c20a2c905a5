"""The version of each service's tool as installed on this node, for ``meta``
(``toolVersions: openscad=OpenSCAD 2021.01,povray=POV-Ray 3.7.0.10,...``).

Asking a tool (``openscad --version``) costs from milliseconds to a second
(Node, Perl), too much for every ``meta``, and a CGI request is a new
process each time.  So a tool is asked once per binary: its answer is kept
by the binary's path, modification time and size, in this process
(``ToolVersions``, held by the node) and in a small file of the store,
``tasks/.toolversions``, which the next process reads instead.  A tool that
is upgraded is a new binary and is asked again.

The tool is started with ``os.posix_spawn``, not ``subprocess``: a CGI
``meta`` loads neither it nor what it imports (tests/test_cgi_imports.py).
Its argv is the admin's (the conf's ``cmd`` and ``versionArg``), never a
client's, and it runs with the tasks' environment allowlist.
"""

import os
import time

from . import __version__
from .procs import task_environment
from .store import write_file_atomically

CACHE_NAME = '.toolversions'
# The longest a tool may take to say its version (it is asked once per binary).
ASK_SECONDS = 5.0
# The most of its answer read: the version is on its first lines.
ANSWER_BYTES = 16384
NOT_INSTALLED = 'not installed'
UNKNOWN = 'unknown'


class ToolVersions:
    """The versions of the tools of one store's services, asked once per binary."""

    def __init__(self, store_root, make_folder=False):
        """``make_folder``: a server's (its node's) may make the store's
        ``tasks/`` to keep its cache in: a server's store without it (no
        task yet) would otherwise ask every tool again at each CGI ``meta``
        (half a second).  ``rrcloud meta`` in a folder makes nothing there."""
        self.cache_path = os.path.join(store_root, 'tasks', CACHE_NAME)
        self.make_folder = make_folder
        self.known = None  # binary key -> version, read from the cache file on first use
        self.changed = False  # a tool was asked: the cache file is written anew
        # A threaded server's lock (``rrcloud serve`` sets one): its threads ask a
        # tool once between them.  None in a CGI or a command, which have one thread.
        self.lock = None

    def of_services(self, services, save=True):
        """{service name: its tool's version} for ``services`` (by name);
        ``save``: what was asked goes into the store's cache file now (else
        at the next call that saves: a server's start writes nothing to its
        store before a request asks)."""
        if self.lock is None:
            return self._of_services(services, save)
        with self.lock:
            return self._of_services(services, save)

    def _of_services(self, services, save):
        if self.known is None:
            self.known = read_cache(self.cache_path)
        found = {name: self.of(service) for name, service in sorted(services.items())}
        if save:
            self._save()
        return found

    def of(self, service):
        """The version of one service's tool: ``NAME VERSION``, or why there is none."""
        if service.builtin:  # the G-code sender
            return f'rrcloud {__version__}'
        program = service.cmd[0]
        path = find_program(program, service.path)
        if path is None:
            return NOT_INSTALLED
        key = binary_key(path)
        if key not in self.known:
            self.known[key] = version_in(ask_tool(path, service), program)
            self.changed = True
        if service.manifold_runner:  # OpenSCAD's two engines (rrc/engines.py)
            return f'{self.known[key]} (CGAL) + {self.manifold_of(service)}'
        return self.known[key]

    def manifold_of(self, service):
        """The version of OpenSCAD's Manifold build (``OpenSCAD 2025.01.19 (Manifold
        3.0.1)``), asked once per installed WASM module."""
        from .engines import manifold_module
        if self.known is None:
            self.known = read_cache(self.cache_path)
        module, node = manifold_module(), find_program('node', service.path)
        if module is None or node is None:
            return f'Manifold {NOT_INSTALLED}'
        key = binary_key(module)
        if key not in self.known:
            answer = ask_tool(node, service, [service.manifold_runner, '--version'])
            self.known[key] = manifold_version_in(answer)
            self.changed = True
        return self.known[key]

    def _save(self):
        if self.changed:
            self.changed = False
            try:
                if self.make_folder:
                    os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
                write_cache(self.cache_path, self.known)
            except OSError:  # a read-only or full store: asked again next time, nothing worse
                pass


def find_program(name, path):
    """The executable ``name`` on ``path`` (a service's PATH), or None."""
    if '/' in name:
        return name if os.access(name, os.X_OK) else None
    for folder in path.split(':'):
        candidate = os.path.join(folder, name)
        if folder and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def binary_key(path):
    """What identifies one installed binary: its real path, modification time and size."""
    real = os.path.realpath(path)
    info = os.stat(real)
    return f'{real} {info.st_mtime_ns} {info.st_size}'


def read_cache(path):
    """{binary key: version} from the cache file (tab-separated lines); {} without one."""
    try:
        with open(path, encoding='utf-8') as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    return dict(line.split('\t', 1) for line in lines if '\t' in line)


def write_cache(path, known):
    """Write the cache file whole (temp file and rename: a reader never sees half);
    not before the store's ``tasks/`` exists (its first task, or a server's
    first ``meta``, makes it: ``rrcloud meta`` writes nothing)."""
    if not os.path.isdir(os.path.dirname(path)):
        return
    text = ''.join(f'{key}\t{version}\n' for key, version in sorted(known.items()))
    write_file_atomically(path, text.encode('utf-8'))


def ask_tool(path, service, args=None):
    """What ``PATH VERSIONARG`` (or ``PATH ARGS...``) writes (stdout and stderr)
    within ASK_SECONDS; b'' on failure."""
    import select
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(path, [path] + (args or [service.version_arg]), task_environment(service), file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, '/dev/null', os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1), (os.POSIX_SPAWN_DUP2, write_end, 2),
            (os.POSIX_SPAWN_CLOSE, read_end)], setsid=True)
    except OSError:
        os.close(read_end)
        return b''
    finally:
        os.close(write_end)
    answer, deadline = b'', time.monotonic() + ASK_SECONDS
    with os.fdopen(read_end, 'rb', buffering=0) as pipe:
        while len(answer) < ANSWER_BYTES and select.select([pipe], [], [], max(0, deadline - time.monotonic()))[0]:
            chunk = pipe.read(ANSWER_BYTES)
            if not chunk:
                break
            answer += chunk
    stop(pid)
    return answer


def stop(pid):
    """End the tool's session (it may have children, or not have ended) and reap it."""
    import signal
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    os.waitpid(pid, 0)


def version_in(answer, program):
    """``NAME VERSION`` from a tool's answer: the first line with a number that
    is not the tool's own complaint (``povray: cannot open ...``); the name is
    the line's first word when it has letters, else the program's name."""
    for line in answer.decode('utf-8', 'replace').splitlines():
        words = line.replace(',', ' ').replace('=', ' ').split()
        number = next((w for w in words if w[:1].isdigit()), None)
        if number is None or line.startswith(program + ':'):
            continue
        version = number[:len(number) - len(number.lstrip('0123456789.'))].rstrip('.') or number
        name = words[0] if words[0] != number and any(c.isalpha() for c in words[0]) else program
        return printable(f'{name} {version}')
    return UNKNOWN


def manifold_version_in(answer):
    """``OpenSCAD 2025.01.19 (Manifold 3.0.1)`` from openscad-manifold.mjs's ``--version``."""
    for line in answer.decode('utf-8', 'replace').splitlines():
        if 'Manifold' in line and any(c.isdigit() for c in line):
            return printable(line.replace(' version', '').strip())
    return f'Manifold {UNKNOWN}'


def printable(text):
    """A version as a meta value holds it: printable, one line, no ``,`` or ``=``, short."""
    return ''.join(c for c in text if c.isprintable() and c not in ',=')[:80]


def versions_field(versions):
    """``meta``'s ``toolVersions``: ``SERVICE=VERSION`` pairs, comma-separated, by name."""
    return ','.join(f'{name}={version}' for name, version in sorted(versions.items()))
