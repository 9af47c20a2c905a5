"""``GET /ui/NAME``: the browser page's own files (scripts, styles, pictures)
and the libraries it imports, from the installed ``www/`` folder.

A client's NAME is only looked up in a table built from the folder (never
joined to a path): ``..``, an escape, a folder or a file the table does not
hold is 404.  The table holds every file under www/ ending in one of
CONTENT_TYPES' extensions but ``node_modules`` and npm's ``package.json``
and ``package-lock.json``, plus the VENDOR files that ``make install`` put
into ``www/node_modules`` (npm ci, pinned by www/package-lock.json); it is
built once per App.  They hold no data: no token opens them (the page must
load to ask for it).

An answer carries an ETag (size and mtime) and ``Cache-Control: no-cache``:
a browser asks again each time and gets 304 while the file is unchanged, so
an upgrade shows at the next load.
"""

import os

from ..errors import HTTPError
from ..services import installed_path
from .request import Response

# Served name -> its file below www/node_modules (the import map of the page
# names the first two; the loaders import 'three' bare).
VENDOR = (('vendor/three.module.js', 'three/build/three.module.min.js'),
          ('vendor/STLLoader.js', 'three/examples/jsm/loaders/STLLoader.js'),
          ('vendor/OrbitControls.js', 'three/examples/jsm/controls/OrbitControls.js'),
          ('vendor/gcode-preview.js', 'gcode-preview/dist/gcode-preview.es.js'),
          ('vendor/lil-gui.js', 'lil-gui/dist/lil-gui.esm.min.js'))

# Only what a page loads; the types a browser needs to run a module script.
# No HTML: the page's shell is served at / alone, with its frame headers and
# CSP (rrc/web/page.py); the same file here would be a page to frame.
CONTENT_TYPES = {'.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
                 '.png': 'image/png', '.svg': 'image/svg+xml'}
SKIPPED_FOLDERS = ('node_modules',)
# npm's files of www/, never served (not a type served anyway: named to be sure).
NPM_FILES = frozenset(('package.json', 'package-lock.json'))


def asset_table(www):
    """{served name: absolute path} of every file the page may load from ``www``."""
    table = {}
    for folder, folders, files in os.walk(www):
        # Pruned in place: os.walk then never enters them (node_modules holds thousands).
        folders[:] = [f for f in folders if f not in SKIPPED_FOLDERS and not f.startswith('.')]
        for name in files:
            if is_page_file(name):
                path = os.path.join(folder, name)
                table[os.path.relpath(path, www).replace(os.sep, '/')] = path
    modules = os.path.join(www, 'node_modules')
    for served, below in VENDOR:
        table[served] = os.path.join(modules, *below.split('/'))
    return table


def is_page_file(name):
    """A file of the page: a type it loads, not npm's files, not hidden."""
    return (not name.startswith('.') and name not in NPM_FILES
            and os.path.splitext(name)[1] in CONTENT_TYPES)


def serve_asset(app, request, name):
    """``GET /ui/NAME``: one file of the table, 304 when the browser has it."""
    path = assets_of(app).get(name)
    if path is None:
        raise HTTPError(404, 'not found')
    from .files import open_regular
    handle = open_regular(path)  # 404 for a folder, a link, a missing vendor file
    info = os.fstat(handle.fileno())
    tag = f'"{info.st_size:x}-{info.st_mtime_ns:x}"'
    headers = [('ETag', tag), ('Cache-Control', 'no-cache'), ('X-Content-Type-Options', 'nosniff')]
    if tag in if_none_match(request):
        handle.close()
        return Response(b'', 304, content_type(path), headers)
    if request.method == 'HEAD':
        handle.close()
        handle = b''
    return Response(handle, 200, content_type(path), headers + [('Content-Length', str(info.st_size))])


def assets_of(app):
    """The app's table of the page's files: built at its first use (under
    CGI each process is one request; a resident server reads www/ once, so
    a file added while it runs is served after its restart, as an upgrade is)."""
    made = app._made_on_first_use
    if 'assets' not in made:
        www = installed_path('www')
        made.setdefault('assets', asset_table(www) if www else {})
    return made['assets']


def if_none_match(request):
    """The ETags a browser holds (``If-None-Match``), as written."""
    return [tag.strip() for tag in request.environ.get('HTTP_IF_NONE_MATCH', '').split(',')]


def content_type(path):
    return CONTENT_TYPES[os.path.splitext(path)[1]]
