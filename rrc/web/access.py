"""Who may ask what: the allow list, the web origin of state-changing requests, the token."""

from ..errors import HTTPError
from ..names import address_in
from .context import app_context


def check_access(request, config):
    """Who may use this server: ``allow`` networks, then the ``token`` if one is set.

    Runs before any byte of the body is read.
    """
    if not address_in(request.environ.get('REMOTE_ADDR', ''), config.allow):
        raise HTTPError(403, 'your address may not use this server (see allow in rrcloudrc)')
    if changes_state(request) and not same_origin_or_allowed(request.environ, config.allowOrigins):
        raise HTTPError(403, 'a request from another web origin may not change anything here '
                             '(see allowOrigins in rrcloudrc)')
    if 'token' in request.query:
        raise HTTPError(400, 'a token in the URL is refused (URLs end up in logs): '
                             'send it as Authorization: Bearer, X-RRCloud-Token or a form field')
    if config.token:
        given = request_token(request)
        import hmac
        if given is None or not hmac.compare_digest(given.encode(), config.token.encode()):
            raise HTTPError(401, 'a valid token is required',
                            headers=[('WWW-Authenticate', 'Bearer realm="rrcloud"')])


# Services of a GET that change something (a POST always may).
STATE_CHANGING_SERVICES = ('kill',)


def changes_state(request):
    """True for a request that may start or stop work: any POST, a GET of kill."""
    return request.method == 'POST' or request.query.get('service') in STATE_CHANGING_SERVICES


def same_origin_or_allowed(environ, allowed):
    """A browser names the page that sent a request (``Origin``, ``Sec-Fetch-Site``);
    curl and 0.019 clients send neither.  Refused: another origin not in ``allowed``."""
    origin = environ.get('HTTP_ORIGIN')
    if origin is None:
        return environ.get('HTTP_SEC_FETCH_SITE', '') != 'cross-site'
    origin = origin.rstrip('/')
    scheme = environ.get('wsgi.url_scheme', 'http')
    own = f'{scheme}://{environ.get("HTTP_HOST", "")}'
    return origin in allowed or (bool(environ.get('HTTP_HOST')) and origin == own)


def request_token(request):
    """The token from ``Authorization: Bearer``, ``X-RRCloud-Token``, or a ``token`` field."""
    bearer = request.environ.get('HTTP_AUTHORIZATION', '')
    if bearer.startswith('Bearer '):
        return bearer[7:].strip()
    if request.environ.get('HTTP_X_RRCLOUD_TOKEN'):
        return request.environ['HTTP_X_RRCLOUD_TOKEN'].strip()
    if request.method == 'POST' and request.path in ('/', '/index.cgi'):
        request.read_form(app_context()[0])  # curl users: -F token=...
        return request.form.get('token')
    return None
