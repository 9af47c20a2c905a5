"""Who may ask what: the allow list, the web origin of state-changing requests, the token."""

from ..errors import HTTPError
from ..names import address_in


def check_access(request, config):
    """Who may use this server: ``allow`` networks, then the ``token`` if one is set.

    Runs before any byte of the body is read.  A POST to the API without a
    token header may carry the token as a form field: ``route`` checks it
    with ``check_form_token`` once it has read the form.
    """
    if not address_in(request.environ.get('REMOTE_ADDR', ''), config.allow):
        raise HTTPError(403, 'your address may not use this server (see allow in rrcloudrc)')
    if changes_state(request) and not same_origin_or_allowed(request.environ, config.allowOrigins):
        raise HTTPError(403, 'a request from another web origin may not change anything here '
                             '(see allowOrigins in rrcloudrc)')
    if 'token' in request.query:
        raise HTTPError(400, 'a token in the URL is refused (URLs end up in logs): '
                             'send it as Authorization: Bearer, X-RRCloud-Token or a form field')
    if config.token and not token_in_form(request):
        check_token(header_token(request), config)


def token_in_form(request):
    """True when the token can only be in the body: a POST to the API without a token header."""
    return request.method == 'POST' and request.path in ('/', '/index.cgi') and header_token(request) is None


def check_form_token(request, config):
    """The token of a POST that sent none in its headers (curl -F token=...)."""
    if config.token and token_in_form(request):
        check_token(request.form.get('token'), config)


def check_token(given, config):
    """401 unless ``given`` is the configured token (compared in constant time)."""
    import hmac
    if given is None or not hmac.compare_digest(given.encode(), config.token.encode()):
        raise HTTPError(401, 'a valid token is required',
                        headers=[('WWW-Authenticate', 'Bearer realm="rrcloud"')])


# Services of a GET that change something (a POST always may).
STATE_CHANGING_SERVICES = ('kill', 'suspend', 'resume', 'move')


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


def header_token(request):
    """The token from ``Authorization: Bearer`` or ``X-RRCloud-Token``, or None."""
    bearer = request.environ.get('HTTP_AUTHORIZATION', '')
    if bearer.startswith('Bearer '):
        return bearer[7:].strip()
    if request.environ.get('HTTP_X_RRCLOUD_TOKEN'):
        return request.environ['HTTP_X_RRCLOUD_TOKEN'].strip()
    return None
