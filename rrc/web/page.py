"""The browser page: ``www/index.html``, a shell that holds no task data.

The page loads its scripts from ``/ui/`` and everything it shows from the
API with fetch(), so it needs no token to load: with a token set it asks
for one and sends it as a header.  Only this program's version is filled
in here (escaped), nothing a client or a record could have written."""

import os

from .. import VERSION_STRING
from ..services import installed_path
from .request import Response


def html_page():
    """The page's shell with the version filled in: nothing of a store's, a
    config's or a request's goes into it."""
    import html
    from string import Template
    with open(installed_path(os.path.join('www', 'index.html')), encoding='utf-8') as handle:
        template = Template(handle.read())
    page = template.safe_substitute(version=html.escape(VERSION_STRING))
    return Response(page, 200, 'text/html; charset=utf-8', [('Cache-Control', 'no-cache')])

