"""Who may ask what: the allow list, the names this server answers to, the web
origin of state-changing requests, the token."""

import os

from ..errors import HTTPError
from ..names import address_in, is_ipv4_network


def check_access(request, config, route):
    """Who may use this server: ``allow`` networks, then, as ``route`` (the
    route the request names, rrc/web/routes.py) declares: the name a
    state-changing request asks for, its web origin, and whose token opens it.

    Runs before any byte of the body is read.  A POST to the API without a
    token header may carry the token as a form field: ``route`` checks it
    with ``check_form_token`` once it has read the form.
    """
    if not address_in(request.client, config.allow):  # the peer's address, or a trusted proxy's client's
        raise HTTPError(403, 'your address may not use this server (see allow in rrcloudrc)')
    if changes_state(request, route):
        check_host(request, config)
        check_origin(request, config)
    if 'token' in request.query:
        raise HTTPError(400, 'a token in the URL is refused (URLs end up in logs): '
                             'send it as Authorization: Bearer, X-RRCloud-Token or a form field')
    if is_work_route(route):  # a farm's worker: its token, and nothing else opens these
        request.is_worker = is_worker(request, config)
        check_worker(request)
    elif config.token and needs_token(route) and not token_in_form(request):
        check_token(header_token(request), config)


def needs_token(route):
    """False for a route that holds no data (``Token.NONE``: the page's shell
    and its files, which must load to ask for the token); any other needs it."""
    return route is None or route.token != Token.NONE


def changes_state(request, route):
    """True for a request that may start, stop or remove work: any POST (its
    body, read later, may name any service), a GET or HEAD of a route that
    answers it and declares ``changes_state`` (0.019's GET of kill)."""
    if request.method == 'POST':
        return True
    return route is not None and route.changes_state and route.answers(request.method)


class Token:
    """Whose token opens a route (rrc/web/routes.py), when tokens are set in rrcloudrc."""
    CLIENT = 'client'  # token: a client's
    WORKER = 'worker'  # workerToken: a farm's worker's, and no client's
    NONE = 'none'  # none: what holds no data (the page's shell and files); reads only


def is_work_route(route):
    """True for a farm's worker route (``Token.WORKER``, rrc/web/workroutes.py):
    the worker token opens these and no other, and no client token opens them."""
    return route is not None and route.token == Token.WORKER


# The API answers at / (and /index.cgi, the CGI's own name).
API_PATHS = ('/', '/index.cgi')


def token_in_form(request):
    """True when the token can only be in the body: a POST to the API without a token header."""
    return request.method == 'POST' and request.path in API_PATHS and header_token(request) is None


def check_form_token(request, config):
    """The token of a POST that sent none in its headers (curl -F token=...)."""
    if config.token and not request.is_worker and token_in_form(request):
        check_token(request.form.get('token'), config)


WORKER_TOKEN_HEADER = 'HTTP_X_RRCLOUD_WORKER_TOKEN'


def is_worker(request, config):
    """True for a farm's worker: it presents ``workerToken`` (never a client's
    token) in ``X-RRCloud-Worker-Token``; a wrong one is refused (401)."""
    given = request.environ.get(WORKER_TOKEN_HEADER)
    if given is None:
        return False
    import hmac
    if not config.workerToken or not hmac.compare_digest(given.encode(), config.workerToken.encode()):
        raise HTTPError(401, 'a valid worker token is required (workerToken in rrcloudrc)')
    return True


def check_worker(request):
    """403 unless the request is a worker's (the worker routes are no one else's)."""
    if not getattr(request, 'is_worker', False):
        raise HTTPError(403, 'this is a farm worker\'s route: it needs the worker token (workerToken)')


def check_token(given, config):
    """401 unless ``given`` is the configured token (compared in constant time)."""
    import hmac
    if given is None or not hmac.compare_digest(given.encode(), config.token.encode()):
        raise HTTPError(401, 'a valid token is required',
                        headers=[('WWW-Authenticate', 'Bearer realm="rrcloud"')])


def check_origin(request, config):
    """403 for a state-changing request a web page of another origin sent."""
    if not same_origin_or_allowed(request.environ, config.allowOrigins):
        raise HTTPError(403, 'a request from another web origin may not change anything here '
                             '(see allowOrigins in rrcloudrc)')


# What a browser says of the page that sent a request: another site, or
# another port of this host (a printer's web UI there can make it send a
# GET of kill, without Origin).
FOREIGN_SITES = ('cross-site', 'same-site')


def same_origin_or_allowed(environ, allowed):
    """A browser names the page that sent a request (``Origin``, ``Sec-Fetch-Site``);
    curl and 0.019 clients send neither.  Accepted: an origin in ``allowed``,
    else only the request's own (``Host`` is checked apart, by check_host)."""
    origin = environ.get('HTTP_ORIGIN')
    if origin is not None and origin.rstrip('/') in allowed:
        return True
    if environ.get('HTTP_SEC_FETCH_SITE', '') in FOREIGN_SITES:
        return False
    return origin is None or origin.rstrip('/').lower() == own_origin(environ)


def own_origin(environ):
    """``scheme://host[:port]`` as the request names this server, or None without a ``Host``."""
    host = environ.get('HTTP_HOST', '')
    return f'{environ.get("wsgi.url_scheme", "http")}://{host.lower()}' if host else None


def check_host(request, config):
    """403 unless ``Host`` names this server (for a state-changing request and
    the browser page): a web page whose name was pointed at this server's
    address (DNS rebinding) still sends its own name, and its own origin."""
    host = request.environ.get('HTTP_HOST')
    if not host:  # HTTP/1.0, a test's bare CGI: a browser always sends Host
        return
    name = host_name(host)
    if not is_own_name(name, request.environ, config):
        raise HTTPError(403, f'this server does not answer to the name {name[:100]!r} '
                             '(a web page whose name points here?): add it to allowHosts in rrcloudrc')


def host_name(host):
    """The name in a ``Host`` header: lower case, without the port, the
    brackets of an IPv6 literal or a final dot ('' for none)."""
    host = host.strip().lower()
    if host.startswith('['):
        return host[1:].partition(']')[0]
    return host.rpartition(':')[0].rstrip('.') if ':' in host else host.rstrip('.')


def is_own_name(name, environ, config):
    """True for a name this server knows as its own; the cheap checks first,
    then, for an address literal alone, whether it is one of this machine's."""
    if name in known_names(config) or is_loopback(name):
        return True
    packed = packed_address(name)
    if packed is None or not is_unicast(packed):
        return False
    return packed == packed_address(environ.get('SERVER_ADDR', '')) or is_local_address(packed)


def known_names(config):
    """Names this server answers to without asking the kernel: localhost, this
    machine's host name (and its mDNS name NAME.local), serverName, allowHosts."""
    node = os.uname().nodename.lower()
    short = node.split('.')[0]
    return {'localhost', node, short, f'{short}.local', config.serverName.lower(), *config.allowHosts}


def is_loopback(name):
    """127.0.0.0/8 or ::1, written as a browser writes them."""
    return name == '::1' or (name.startswith('127.') and is_ipv4_network(name) and '/' not in name)


ADDRESS_CHARS = frozenset('0123456789abcdef.:')
IPV4_MAPPED = bytes(10) + b'\xff\xff'


def packed_address(name):
    """The bytes of an IPv4 or IPv6 literal (an IPv4-mapped one as IPv4), or None for a name."""
    if not name or not ADDRESS_CHARS.issuperset(name):
        return None
    import socket
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, name)
        except OSError:
            continue
        return packed[12:] if packed[:12] == IPV4_MAPPED else packed
    return None


def is_unicast(packed):
    """Not unspecified, multicast or broadcast: the kernel lets those be bound too."""
    if len(packed) == 4:
        return 0 < packed[0] < 224
    return packed[0] != 0xff and any(packed)


def is_local_address(packed):
    """True when this machine has the address: only then can a socket be bound
    to it (EADDRNOTAVAIL otherwise), asked at once, without listing the
    addresses (psutil would cost a CGI request 36 ms to import)."""
    import socket
    if len(packed) == 4:
        return can_bind(socket.AF_INET, (socket.inet_ntop(socket.AF_INET, packed), 0))
    text = socket.inet_ntop(socket.AF_INET6, packed)
    # A link-local address is bound on its interface only (EINVAL without one).
    scopes = [index for index, _ in socket.if_nameindex()] if is_link_local(packed) else [0]
    return any(can_bind(socket.AF_INET6, (text, 0, 0, scope)) for scope in scopes)


def is_link_local(packed):
    """fe80::/10."""
    return packed[0] == 0xfe and packed[1] & 0xc0 == 0x80


def can_bind(family, address):
    """True when a UDP socket can be bound to ``address`` (port 0: nothing is taken)."""
    import socket
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind(address)
    except OSError:
        return False
    return True


def header_token(request):
    """The token from ``Authorization: Bearer`` or ``X-RRCloud-Token``, or None."""
    bearer = request.environ.get('HTTP_AUTHORIZATION', '')
    if bearer.startswith('Bearer '):
        return bearer[7:].strip()
    if request.environ.get('HTTP_X_RRCLOUD_TOKEN'):
        return request.environ['HTTP_X_RRCLOUD_TOKEN'].strip()
    return None
