"""Serving results and logs from the store: a result with the content type its
name says and the name its client would give it, a log with the client's
file names in it (rrc/inputnames.py)."""

import os

from ..errors import HTTPError, NotFound
from ..inputnames import LogNames, content_disposition, download_name
from ..names import OUT_NAME_RE, is_task_id
from .request import Response


# The type a result is served with, by its extension, so a browser shows a
# picture or text inline.  Only types a browser never runs (no HTML, no SVG):
# a result is a client's data.  No extension (echo's) is text.
RESULT_TYPES = {'png': 'image/png', 'jpg': 'image/jpeg', 'jpeg': 'image/jpeg', 'gif': 'image/gif',
                'stl': 'model/stl', 'gcode': 'text/x-gcode; charset=utf-8', 'gco': 'text/x-gcode; charset=utf-8',
                'g': 'text/x-gcode; charset=utf-8', 'txt': 'text/plain; charset=utf-8',
                'log': 'text/plain; charset=utf-8', '': 'text/plain; charset=utf-8'}


def result_type(name):
    """The Content-Type of a result named ``name``."""
    ext = name.rsplit('.', 1)[1].lower() if '.' in name else ''
    return RESULT_TYPES.get(ext, 'application/octet-stream')


# Shown in the browser when opened (a picture, text); any other result is saved.
INLINE_TYPES = ('image/', 'text/plain')


def serve_result(app, request, name):
    """``GET /tasks/out/NAME``: a task's result, nothing else, with a
    Content-Disposition naming it after its client's input (``cube.stl``)."""
    if not OUT_NAME_RE.match(name) or '..' in name:
        raise HTTPError(404, 'no such result')
    content_type = result_type(name)
    response = serve_file(request, os.path.join(app.store.folder('out'), name), content_type)
    saved_as = download_name(record_of(app.store, name.partition('.')[0]), name)
    response.headers.append(('Content-Disposition',
                             content_disposition(saved_as, inline=content_type.startswith(INLINE_TYPES))))
    return response


def record_of(store, task_id):
    """The record of the task a result or log belongs to, or None when there is
    none to read (not a task's id, removed, unreadable): the file is still
    served, under its own name and with its lines as they are."""
    if not is_task_id(task_id):
        return None
    try:
        return store.read_task(task_id)
    except (NotFound, OSError):
        return None


def serve_log(app, request, task_id):
    """``GET /tasks/log/ID``: a task's log, its inputs named as its client
    named them (read whole: a log is at most about ``maxLogSize``)."""
    if not is_task_id(task_id):
        raise HTTPError(404, 'no such log')
    with open_regular(app.store.log_path(task_id)) as handle:
        text = handle.read().decode('utf-8', 'surrogateescape')
    record = record_of(app.store, task_id)
    if record is not None:
        text = LogNames(record, app.store.root).shown(text)
    body = text.encode('utf-8', 'surrogateescape')
    return Response(b'' if request.method == 'HEAD' else body, 200, 'text/plain; charset=utf-8',
                    headers=[('Content-Length', str(len(body))), ('X-Content-Type-Options', 'nosniff')])


def open_regular(path):
    """A regular file open for reading, never through a link; 404 otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise HTTPError(404, 'not found') from None
    import stat
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HTTPError(404, 'not found')
    return os.fdopen(fd, 'rb')


def serve_file(request, path, content_type):
    """Stream a regular file, never following a link."""
    handle = open_regular(path)
    size = os.fstat(handle.fileno()).st_size
    if request.method == 'HEAD':
        handle.close()
        handle = b''
    # nosniff: a browser takes the type as given, never guesses HTML from the bytes
    return Response(handle, 200, content_type, headers=[('Content-Length', str(size)),
                                                        ('X-Content-Type-Options', 'nosniff')])
