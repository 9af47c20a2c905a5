"""A task's files as its client named them, wherever a client is shown them.

The store keeps each input under a name it makes (``tasks/in/<unique>.scad``:
no path is ever built from a client's words), and keeps the name the client
sent with it, cleaned, in the record's ``inputNames`` (``cube.scad/params.json``:
one per input of ``in``, in its order, separated by ``/``, which no cleaned
name holds; '' for an input sent as content).  From them:

- ``LogNames``: a tool's log with each stored input path replaced by the
  client's name (a project's files keep their own names, relative to its
  folder), for the log served over HTTP, the event stream and ``rrcloud watch``;
- ``download_name``: the name a result is saved under (``cube.scad`` ->
  ``cube.stl``) and ``content_disposition``, the header that says it.

Plain string work: no ``re``, no ``json`` (a CGI GET of a result or a log
imports this module).
"""

from .schema import Field

# A cleaned name's length at most, in UTF-8 bytes (a file system's NAME_MAX).
NAME_MAX_BYTES = 255
SEPARATOR = '/'
# How an input sent as content (``fileIn0=text``) is shown in a log.
CONTENT_SHOWN = '<content>'
# Where a tool sees the store's ``tasks/`` folder: its sandbox's working folder
# (rrc/sandbox.py's JOB_FOLDER; only the runner imports that module).
SANDBOX_ROOT = '/job'
# RFC 5987 attr-char besides letters and digits: kept as they are in filename*.
ATTR_CHARS = "!#$&+-.^_`|~"


def clean_client_name(filename):
    """A client's file name as rrcloud keeps and shows it: its last part (a
    browser may send a whole Windows path), printable characters only, no
    leading dot, at most NAME_MAX_BYTES; '' when nothing usable is left."""
    base = (filename or '').replace('\\', '/').rsplit('/', 1)[-1]
    text = ''.join(c for c in base if c.isprintable()).strip().lstrip('.').strip()
    return fitted(text)


def fitted(name):
    """``name`` cut to NAME_MAX_BYTES of UTF-8, its extension kept, no character split."""
    if len(name.encode('utf-8')) <= NAME_MAX_BYTES:
        return name
    stem, dot, ext = name.rpartition('.')
    if not (dot and stem) or len(ext) > 16:
        stem, dot, ext = name, '', ''
    budget = NAME_MAX_BYTES - len((dot + ext).encode('utf-8'))
    return stem.encode('utf-8')[:budget].decode('utf-8', 'ignore') + dot + ext


def input_names_field(names):
    """The record's ``inputNames`` for these client names (one per input; none
    when no input came with a name: a 0.019 client sees the record it knows)."""
    cleaned = [clean_client_name(name) for name in names]
    return {Field.INPUT_NAMES: SEPARATOR.join(cleaned)} if any(cleaned) else {}


def client_names(record):
    """[(stored path, client's name or '')] of a task's inputs.  A record is
    data: names are cleaned again, and missing ones are ''."""
    paths = [p for p in record.get(Field.IN, '').split(',') if p]
    names = record.get(Field.INPUT_NAMES, '').split(SEPARATOR)
    if not paths:  # a task this node sent to a server: its record keeps its main inputs' names alone
        return [('', clean_client_name(name)) for name in names if name]
    names += [''] * (len(paths) - len(names))
    return [(path, clean_client_name(name)) for path, name in zip(paths, names)]


def main_input(record):
    """(stored path, client's name) of a task's main input (the first without a
    prearg: a Slic3r --load= config is not it), or None."""
    inputs = client_names(record)
    preargs = record.get(Field.PREARGS, '').split(',')
    preargs += [''] * (len(inputs) - len(preargs))
    return next((item for item, prearg in zip(inputs, preargs) if not prearg), None)


def is_project_path(path):
    """True for a file of a project's folder (``tasks/in/FOLDER/PART...``)."""
    return path.count('/') > 2


def download_name(record, result_name):
    """The name a task's result is saved under: the main input's name with the
    result's extension (``cube.scad`` -> ``cube.stl``; a project's main file
    names it); a result without an extension (echo's copy) keeps the input's
    name whole.  ``result_name`` itself when no name is known."""
    found = main_input(record) if record else None
    if found is None:
        return result_name
    path, name = found
    name = path.rsplit('/', 1)[-1] if is_project_path(path) else name
    if not name:
        return result_name
    ext = result_name.rpartition('.')[2] if '.' in result_name else ''
    if not ext:
        return name
    stem = name.rpartition('.')[0] if '.' in name else name
    return clean_client_name(f'{stem or name}.{ext}')


def content_disposition(name, inline=False):
    """A Content-Disposition header value naming ``name`` (RFC 6266): a quoted
    ASCII ``filename`` every browser reads (other characters as ``_``) and,
    when the name is not plain ASCII, ``filename*`` in UTF-8 too."""
    ascii_name = ''.join(c if ' ' <= c <= '~' and c not in '"\\%' else '_' for c in name) or 'result'
    value = f'{"inline" if inline else "attachment"}; filename="{ascii_name}"'
    if ascii_name != name:
        value += f"; filename*=UTF-8''{percent_encoded(name)}"
    return value


def percent_encoded(text):
    """RFC 5987's value-chars: attr-chars as they are, every other UTF-8 byte as %XX."""
    return ''.join(chr(b) if chr(b).isalnum() and b < 128 or chr(b) in ATTR_CHARS else f'%{b:02X}'
                   for b in text.encode('utf-8'))


class LogNames:
    """Turns a task's log text into what its client is shown: each stored
    input's path, as a tool may print it (relative, under the sandbox's
    ``/job``, under an unsandboxed server's store root, or its bare stored
    name), replaced by the client's name for it."""

    def __init__(self, record, store_root=''):
        roots = [f'{root.rstrip("/")}/' for root in (SANDBOX_ROOT, store_root) if root]
        self.replacements = []
        for path, name in client_names(record):
            if is_project_path(path):  # its files keep their own names, relative to its folder
                folder = '/'.join(path.split('/')[:3])
                self.replacements += [(root + folder + '/', '') for root in roots] + [(folder + '/', '')]
                self.replacements += [(root + folder, '.') for root in roots] + [(folder, '.')]
            else:
                stored = path.rsplit('/', 1)[-1]
                shown = name or CONTENT_SHOWN
                self.replacements += [(root + path, shown) for root in roots] + [(path, shown), (stored, shown)]

    def shown(self, text):
        """``text`` with every stored input path replaced by its client's name."""
        for found, shown in self.replacements:
            if found in text:
                text = text.replace(found, shown)
        return text
