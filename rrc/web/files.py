"""Serving results and logs from the store, with the content type a result's name says."""

import os

from ..errors import HTTPError
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


def serve_result(app, request, name):
    """``GET /tasks/out/NAME``: a task's result, nothing else."""
    if not OUT_NAME_RE.match(name) or '..' in name:
        raise HTTPError(404, 'no such result')
    return serve_file(request, os.path.join(app.store.folder('out'), name), result_type(name))


def serve_log(app, request, task_id):
    """``GET /tasks/log/ID``: a task's log."""
    if not is_task_id(task_id):
        raise HTTPError(404, 'no such log')
    return serve_file(request, app.store.log_path(task_id), 'text/plain; charset=utf-8')


def serve_file(request, path, content_type):
    """Stream a regular file, never following a link."""
    if request.method not in ('GET', 'HEAD'):
        raise HTTPError(405, 'only GET')
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise HTTPError(404, 'not found') from None
    import stat
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise HTTPError(404, 'not found')
    handle = os.fdopen(fd, 'rb')
    if request.method == 'HEAD':
        handle.close()
        handle = b''
    # nosniff: a browser takes the type as given, never guesses HTML from the bytes
    return Response(handle, 200, content_type, headers=[('Content-Length', str(info.st_size)),
                                                        ('X-Content-Type-Options', 'nosniff')])
