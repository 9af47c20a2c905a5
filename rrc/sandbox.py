"""The task sandbox: a tool runs in bubblewrap and sees only what its task owns.

Inside, the tool's working folder is ``/job``, laid out like a store so the
argv the spec composes stays valid: ``tasks/in/NAME`` holds each of the
task's own inputs (read-only) and ``tasks/out`` is an empty private folder
(the only writable place besides a small private ``/tmp``).  The system
(``/usr``, a few files of ``/etc``) is read-only; there is no network, its
own PID, IPC and UTS namespaces, uid 65534 in its own user namespace with no
capabilities, and it dies with its runner.  The store root, other tasks,
rrcloudrc, tokens and the server's code stay outside.

Why: the tools are not to be trusted with the server.  POV-Ray scenes write
files, OpenJSCAD scripts are Node programs, Slic3r configs name programs,
OpenSCAD models include any readable file.
"""
import os
import stat

JOB_FOLDER = '/job'
SANDBOX_UID = 65534  # "nobody", inside the sandbox's own user namespace
# The sandbox's own file systems live in memory: each has a size.  /tmp is
# the tool's scratch space; /job holds only the mount points of its inputs
# and output folder (what a tool writes there, POV-Ray's #fopen, vanishes).
TMP_BYTES = 256 * 1024 * 1024
JOB_BYTES = 64 * 1024 * 1024
# Top-level names that merged-/usr systems make links into /usr.
SYSTEM_TOP = ('bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32')
# What tools read of /etc: the dynamic linker, fonts (OpenSCAD, POV-Ray),
# Debian's alternatives, POV-Ray's own settings (its I/O restrictions).
ETC_ENTRIES = ('ld.so.cache', 'ld.so.conf', 'ld.so.conf.d', 'alternatives', 'fonts',
               'povray', 'localtime', 'mime.types')
DEVICES = ('null', 'zero', 'full', 'random', 'urandom')


class SandboxError(Exception):
    """The sandbox cannot be built (bwrap missing) or a path handed to it is wrong."""


def find_bwrap():
    """Absolute path of bubblewrap, or SandboxError saying how to get it."""
    # (not shutil.which: importing shutil costs a runner some 6 ms)
    path = next((p for p in ('/usr/bin/bwrap', '/bin/bwrap', '/usr/local/bin/bwrap') if os.access(p, os.X_OK)), None)
    if path is None:
        raise SandboxError('the sandbox needs bubblewrap (bwrap), which is not installed: '
                           'install the Debian package bubblewrap, or set "sandbox = no" in rrcloudrc')
    return path


class Sandbox:
    """One task's sandbox: what it binds, and its private output folder on the host."""

    def __init__(self, inputs, output_folder, read_paths=(), devices=(), files=()):
        """``inputs``: (host path, path under /job such as tasks/in/NAME) pairs;
        ``output_folder``: an empty host folder seen as /job/tasks/out;
        ``read_paths``: more host paths seen read-only at the same place;
        ``devices``: character devices (a printer's port) seen at the same place;
        ``files``: (host file, absolute path inside) pairs, read-only, bound
        over what is there (a service's ``sandboxFiles``: POV-Ray's povray.conf)."""
        self.inputs = list(inputs)
        self.output_folder = output_folder
        self.read_paths = [p for p in dict.fromkeys(read_paths) if p]
        self.devices = list(devices)
        self.files = list(files)

    def command(self, argv, bwrap=None):
        """The argv that runs ``argv`` inside this sandbox."""
        # bwrap exports PWD after its chdir; env takes it out again, so the
        # tool's environment stays the runner's allowlist.
        return [bwrap or find_bwrap()] + self.options() + ['--', '/usr/bin/env', '-u', 'PWD'] + list(argv)

    def options(self):
        """bubblewrap's options for this sandbox, in the order they apply.
        The root bwrap builds everything on is a tmpfs without a size: once
        built it is made read-only, so the tool writes only where a size holds."""
        return (self._isolation() + self._system() + self._devices() + self._files()
                + self._job() + ['--remount-ro', '/', '--chdir', JOB_FOLDER])

    @staticmethod
    def _isolation():
        uid = str(SANDBOX_UID)
        return ['--unshare-all', '--unshare-user', '--uid', uid, '--gid', uid,
                '--disable-userns', '--cap-drop', 'ALL', '--die-with-parent',
                '--proc', '/proc', '--size', str(TMP_BYTES), '--tmpfs', '/tmp']

    def _system(self):
        options = ['--ro-bind', '/usr', '/usr']
        for name in SYSTEM_TOP:
            path = '/' + name
            if os.path.islink(path):
                options += ['--symlink', os.readlink(path), path]
            elif os.path.isdir(path):
                options += ['--ro-bind', path, path]
        for name in ETC_ENTRIES:
            options += ['--ro-bind-try', '/etc/' + name, '/etc/' + name]
        for path in self.read_paths:
            if not _under(path, '/usr'):
                options += ['--ro-bind-try', path, path]
        return options

    def _devices(self):
        options = ['--dir', '/dev']
        for name in DEVICES:
            options += ['--dev-bind-try', '/dev/' + name, '/dev/' + name]
        for device in self.devices:
            if not is_character_device(device):
                raise SandboxError(f'{device} is not a character device')
            options += ['--dev-bind', device, device]
        return options

    def _files(self):
        # After /etc and /tmp are laid out: a file here replaces the system's
        # (bwrap makes the folders a path in /tmp needs).
        options = []
        for host, inside in self.files:
            if not os.path.isabs(inside) or '..' in inside.split('/') or _under(inside, JOB_FOLDER):
                raise SandboxError(f'not a path for a service file: {inside!r}')
            options += ['--ro-bind', host, inside]
        return options

    def _job(self):
        options = ['--size', str(JOB_BYTES), '--tmpfs', JOB_FOLDER, '--dir', JOB_FOLDER + '/tasks/in']
        for host, inside in self.inputs:
            if os.path.isabs(inside) or '..' in inside.split('/'):
                raise SandboxError(f'not a path below {JOB_FOLDER}: {inside!r}')
            options += ['--ro-bind', host, f'{JOB_FOLDER}/{inside}']
        options += ['--bind', self.output_folder, JOB_FOLDER + '/tasks/out']
        return options


def _under(path, folder):
    return path == folder or path.startswith(folder.rstrip('/') + '/')


def is_character_device(path):
    """True for an existing character device (a serial port), never a file or folder."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def collect_output(folder, name, destination, max_bytes, writer):
    """Copy the tool's result ``folder/name`` to ``destination`` once the tool ended.

    Only a regular file (a link is never followed: the tool could point it at
    any file the server may read) of at most ``max_bytes``; returns None when
    all is well, else the reason it was not taken.  ``destination`` is written
    through a temp file (``.NAME.WRITER.part``: ``writer`` is the store's
    ``temp_writer()``, which recovery reads back) and renamed.
    """
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None  # no output: judged like any tool that wrote none
    except OSError:
        return 'the output is not a regular file'
    with os.fdopen(fd, 'rb') as source:
        info = os.fstat(source.fileno())
        if not stat.S_ISREG(info.st_mode):
            return 'the output is not a regular file'
        if info.st_size > max_bytes:
            return f'the output is larger than {max_bytes} bytes'
        _copy_atomically(source, destination, max_bytes, writer)
    return None


def _copy_atomically(source, destination, max_bytes, writer):
    folder, name = os.path.split(destination)
    temp = os.path.join(folder, f'.{name}.{writer}.part')  # recovery knows .NAME.PID@BOOT.part
    try:
        with open(temp, 'xb') as sink:
            while chunk := source.read(1 << 20):  # (shutil.copyfileobj: shutil costs 6 ms to import)
                sink.write(chunk)
            if sink.tell() > max_bytes:  # it grew while we copied (a leftover writer)
                raise OSError(f'the output grew beyond {max_bytes} bytes')
        os.replace(temp, destination)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
