"""Multi-file projects: finding a model's local references, packing them, unpacking an archive safely."""

import os

from .errors import DISK_FULL_ERRORS, UsageError, reason_without_paths
from .names import LazyPattern
from .trees import remove_tree


PROJECT_SUFFIXES = ('.tgz', '.tar.gz')
PROJECT_MAX_FILES = 256
PROJECT_MAX_BYTES = 64 * 1024 * 1024
# Levels of a member's name, its file included: a model's library is a few
# folders deep; thousands would exhaust os.makedirs' recursion.
PROJECT_MAX_DEPTH = 32
PROJECT_PART_RE = LazyPattern(r'\A[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}\Z')
SCAD_REFERENCE_RE = LazyPattern(
    r'\b(?:include|use)\s*<([^>\n]+)>'
    r'|\b(?:import|surface)\s*\(\s*(?:file\s*=\s*)?"([^"\n]+)"')
# A POV-Ray scene's #include files, and the images, fonts and density files it reads.
POV_REFERENCE_RE = LazyPattern(
    r'#\s*include\s+"([^"\n]+)"'
    r'|\b(?:png|jpeg|gif|tga|tiff|ppm|pgm|hdr|exr|iff|sys|ttf|df3)\s+"([^"\n]+)"')
# By the main file's kind: what a reference looks like, which of the files
# found are read for references in turn, and whether a name is relative to
# the main file's folder (POV-Ray: its library path) or to the file naming it
# (OpenSCAD).
PROJECT_KINDS = {
    '.scad': (SCAD_REFERENCE_RE, ('.scad',), False),
    '.pov': (POV_REFERENCE_RE, ('.pov', '.inc', '.mcr', '.mac'), True),
}


def is_project_name(filename):
    """True for an upload named like a project archive (``main.scad.tgz``)."""
    return (filename or '').lower().endswith(PROJECT_SUFFIXES)


def project_references(path):
    """Files beside a model or scene that it includes or reads (transitively); [] for other kinds."""
    kind = PROJECT_KINDS.get(os.path.splitext(str(path))[1].lower())
    return references_of(path, *kind) if kind else []


def scad_references(path):
    """Files a .scad includes, uses or imports (transitively) that exist beside it."""
    return references_of(path, *PROJECT_KINDS['.scad'])


def references_of(path, pattern, scanned, relative_to_main=False):
    """Existing files that ``path`` names by ``pattern``, and those they name in turn
    (files ending in one of ``scanned``), relative to the file naming them (or to
    ``path``'s folder)."""
    found, todo = [], [os.path.abspath(path)]
    while todo:
        current = todo.pop()
        if not current.lower().endswith(scanned):
            continue
        try:
            with open(current, encoding='utf-8', errors='replace') as handle:
                text = handle.read()
        except OSError:
            continue
        for match in pattern.finditer(text):
            name = next(group for group in match.groups() if group).strip()
            folder = os.path.dirname(os.path.abspath(path) if relative_to_main else current)
            target = os.path.normpath(os.path.join(folder, name))
            if os.path.isfile(target) and target not in found and target != os.path.abspath(path):
                found.append(target)
                todo.append(target)
    return found


def project_root(main, references):
    """The folder a project archive's names are relative to: the common folder of its files."""
    main = os.path.abspath(main)
    return os.path.commonpath([os.path.dirname(main)] + [os.path.dirname(r) for r in references])


def pack_project(main, references):
    """A tar.gz of ``main`` (first member) and its references, paths relative to their common folder."""
    import io
    import tarfile
    main = os.path.abspath(main)
    root = project_root(main, references)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
        for path in [main] + references:
            info = archive.gettarinfo(path, arcname=os.path.relpath(path, root))
            info.uid = info.gid = 0
            info.uname = info.gname = ''
            with open(path, 'rb') as handle:
                archive.addfile(info, handle)
    return buffer.getvalue()


def safe_member_parts(name):
    """The folder names of one archive member, or UsageError (no absolute
    path, no '..', no dotfiles, at most PROJECT_MAX_DEPTH levels)."""
    parts = name.split('/')
    while len(parts) > 1 and parts[0] == '.':  # "tar czf p.tgz -C dir ." writes ./NAME
        parts = parts[1:]
    if not name or name.startswith('/') or not all(PROJECT_PART_RE.match(p) for p in parts):
        raise UsageError(f'project archive: refused member name {name[:80]!r}')
    if len(parts) > PROJECT_MAX_DEPTH:
        raise UsageError(f'project archive: refused member name {name[:80]!r}: more than '
                         f'{PROJECT_MAX_DEPTH} levels deep')
    return parts


def unpack_project(store, data):
    """Unpack a project archive into ``tasks/in/<unique>/``; returns the main file's relative path.

    Only regular files and folders, with safe relative names, within the count
    and size limits; the first file is the main one.
    """
    import gzip
    import io
    import tarfile
    folder_name = store.new_input_folder()
    folder = os.path.join(store.folder('in'), folder_name)
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        unpacked = BoundedReader(gzip.GzipFile(fileobj=source, mode='rb'), PROJECT_MAX_READ)
        with tarfile.open(fileobj=unpacked, mode='r|', tarinfo=bounded_tarinfo()) as archive:
            main = _extract_members(archive, folder)
    except BaseException as exc:
        # Written just now by this process: nothing in it resists removal (and
        # recovery removes an orphan input folder later if a full disk did).
        remove_tree(folder)
        raise unpack_error(exc) from None
    return f'tasks/in/{folder_name}/{main}'


def unpack_error(exc):
    """What a client is told of an archive that could not be unpacked: a
    UsageError naming no path of the server's; a full disk stays an OSError
    (the server's trouble: 507); anything else unexpected stays as it is."""
    import tarfile
    if isinstance(exc, UsageError) or getattr(exc, 'errno', None) in DISK_FULL_ERRORS:
        return exc
    if isinstance(exc, (tarfile.TarError, EOFError, OSError)):
        return UsageError(f'project archive: cannot unpack: {reason_without_paths(exc)}')
    return exc


# What the archive reader may read: the members' limit plus their headers.
PROJECT_MAX_READ = PROJECT_MAX_BYTES + PROJECT_MAX_FILES * 4 * 512 + 1024 * 1024
# A long-name or pax header is text of a few hundred bytes; one that declares
# more would be read into memory whole before any member limit could run.
PROJECT_MAX_HEADER = 64 * 1024


class BoundedReader:
    """The unpacked bytes of an archive, refused beyond ``limit`` (a small
    .tgz can unpack to gigabytes)."""

    def __init__(self, stream, limit):
        self.stream, self.limit, self.count = stream, limit, 0

    def read(self, size=-1):
        """At most ``size`` bytes; UsageError once the archive unpacks beyond the limit."""
        data = self.stream.read(self.limit - self.count + 1 if size is None or size < 0 else size)
        self.count += len(data)
        if self.count > self.limit:
            raise UsageError('project archive: too many files or too large')
        return data


def bounded_tarinfo():
    """A TarInfo class that refuses oversized long-name and pax headers before reading them."""
    import tarfile

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_gnulong(self, archive):
            _check_header_size(self)
            return super()._proc_gnulong(archive)

        def _proc_pax(self, archive):
            _check_header_size(self)
            return super()._proc_pax(archive)
    return BoundedTarInfo


def _check_header_size(info):
    if info.size > PROJECT_MAX_HEADER:
        raise UsageError(f'project archive: a header of {info.size} bytes is refused '
                         f'(at most {PROJECT_MAX_HEADER})')


def _extract_members(archive, folder):
    main, count, total = None, 0, 0
    for member in archive:
        count += 1
        total += max(member.size, 0)
        if count > PROJECT_MAX_FILES or total > PROJECT_MAX_BYTES:
            raise UsageError('project archive: too many files or too large')
        if member.isdir() and member.name.rstrip('/') in ('.', ''):
            continue  # the archive's own top folder, "./"
        parts = safe_member_parts(member.name.rstrip('/') if member.isdir() else member.name)
        if not member.isdir() and not member.isfile():
            raise UsageError(f'project archive: only plain files allowed, not {member.name[:80]!r}')
        _extract_member(archive, member, os.path.join(folder, *parts))
        if member.isfile():
            main = main or '/'.join(parts)
    if main is None:
        raise UsageError('project archive: no file in it')
    return main


def _extract_member(archive, member, target):
    """Write one folder or file of the archive at ``target``.  What goes wrong
    is told by the member's name, the client's own, never by ``target``: a
    path of the server's store."""
    try:
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.extractfile(member) as source, open(target, 'xb') as sink:
            import shutil
            shutil.copyfileobj(source, sink)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRORS:
            raise  # the server's trouble (507), not a bad archive
        raise UsageError(f'project archive: cannot unpack {member.name[:80]!r}: '
                         f'{reason_without_paths(exc)}') from None
