"""The browser page: ``www/index.html``, a shell that holds no task data.

The page loads its scripts from ``/ui/`` and everything it shows from the
API with fetch(), so it needs no token to load: with a token set it asks
for one and sends it as a header.  Only this program's version is filled
in here (escaped), nothing a client or a record could have written.

It goes with a Content-Security-Policy: no other site may frame it
(clickjacking: ``frame-ancestors 'none'``, and ``X-Frame-Options: DENY``
for older browsers), and it runs scripts, styles and connections of its own
origin only.  Its one inline script, the import map, is allowed by its
hash, computed here from the page as sent, so an edit of the map cannot
silently break it; no other inline script or style attribute in the HTML
runs (a style set by script through ``element.style`` still works)."""

import base64
import hashlib
import os
import re

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
    return Response(page, 200, 'text/html; charset=utf-8',
                    [('Cache-Control', 'no-cache'), ('X-Frame-Options', 'DENY'),
                     ('Content-Security-Policy', content_security_policy(page)),
                     ('X-Content-Type-Options', 'nosniff')])


# The page's inline scripts: an import map only (its text, exactly as sent, is hashed).
INLINE_SCRIPT_RE = re.compile(r'<script\b[^>]*>(.*?)</script>', re.DOTALL | re.IGNORECASE)


def content_security_policy(page):
    """The policy of ``page``: its own origin's scripts, styles and
    connections, and its inline scripts (the import map) by their hashes;
    pictures also from blob: (a preview) and data: (the icon), and blob: URLs
    (only the page's own scripts make them) fetched too; no frame of it
    anywhere."""
    hashes = ' '.join(f"'sha256-{base64.b64encode(hashlib.sha256(text.encode('utf-8')).digest()).decode()}'"
                      for text in inline_scripts(page))
    return ("frame-ancestors 'none'; default-src 'self'; "
            f"script-src 'self'{' ' + hashes if hashes else ''}; style-src 'self'; "
            "img-src 'self' blob: data:; connect-src 'self' blob:; object-src 'none'; "
            "base-uri 'none'; form-action 'self'")


def inline_scripts(page):
    """The text of each inline <script> of ``page`` (one with a src= holds none)."""
    return [match.group(1) for match in INLINE_SCRIPT_RE.finditer(page)
            if 'src=' not in match.group(0).split('>', 1)[0]]

