"""rrcloudrc: the keys, their parsing and defaults, the files read and their order."""

import os

from . import DEFAULT_PORT
from .errors import ConfigError
from .identity import default_node_name, is_node_name
from .keyvalue import boolean_value, parse_key_value_lines
from .limits import default_max_memory, default_max_processes, parse_size
from .names import ALNUM, LazyPattern, is_ipv4_network, is_service_name
from .services import check_service_servers


def positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError('must be at least 1')
    return value


def port_number(text):
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError('must be between 1 and 65535')
    return value


def positive_number(text):
    value = float(text)
    if not value > 0 or value != value or value == float('inf'):
        raise ValueError('must be a positive number')
    return value


def _non_negative_number(text):
    value = float(text)
    if not value >= 0 or value == float('inf'):
        raise ValueError('must be a number of at least 0')
    return value


SERVER_RE = LazyPattern(r'\A(https?://)?[A-Za-z0-9._\-\[\]:]+(/[A-Za-z0-9._~/-]*)?\Z')


def _server_list(text):
    servers = [s.strip() for s in text.split(',') if s.strip()]
    for server in servers:
        if not SERVER_RE.match(server):
            raise ValueError(f'not a host, host:port or URL: {server!r}')
    return servers


def _path(text):
    if not text:
        raise ValueError('must name a folder')
    return text


def _network_list(text):
    networks = [n.strip() for n in text.split(',') if n.strip()]
    for network in networks:
        if not is_ipv4_network(network):
            import ipaddress
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


TOKEN_RE = LazyPattern(r'\A[A-Za-z0-9._~+/=-]{16,256}\Z')


def _token(text):
    if not TOKEN_RE.match(text):
        raise ValueError('a token is 16 to 256 letters, digits or ._~+/=-')
    return text


def _secret(text):
    if not TOKEN_RE.match(text):
        raise ValueError('a notifier secret is 16 to 256 letters, digits or ._~+/=- '
                         '(e.g. the output of "openssl rand -hex 32")')
    return text


ORIGIN_RE = LazyPattern(r'\Ahttps?://[A-Za-z0-9._\-\[\]:]+\Z')


def _origin_list(text):
    origins = [o.strip().rstrip('/') for o in text.split(',') if o.strip()]
    for origin in origins:
        if not ORIGIN_RE.match(origin):
            raise ValueError(f'not an origin (scheme://host[:port]): {origin!r}')
    return origins


HOST_CHARS = ALNUM | frozenset('.-')
IPV6_CHARS = frozenset('0123456789abcdef:.')


def is_host_name_or_address(host):
    """A host name, IPv4 address or (bracketed or bare) IPv6 address, lower
    case, without scheme or port: plain string tests (every CGI request
    reads rrcloudrc; a pattern would cost it the import of ``re``)."""
    bare = host[1:-1] if host.startswith('[') and host.endswith(']') else host
    if ':' in bare:
        return bare.count(':') >= 2 and len(bare) <= 45 and IPV6_CHARS.issuperset(bare)
    return 0 < len(bare) <= 253 and bare[0] in ALNUM and HOST_CHARS.issuperset(bare)


def _host_list(text):
    hosts = [h.strip().lower().rstrip('.') for h in text.split(',') if h.strip()]
    for host in hosts:
        if not is_host_name_or_address(host):
            raise ValueError(f'not a host name or address (no scheme, no port): {host!r}')
    return [host.strip('[]') for host in hosts]


# redis:// or rediss:// (TLS), an ACL user and password or a password alone, host, port, database.
REDIS_URL_RE = LazyPattern(r'\Arediss?://([A-Za-z0-9._\-]{0,64}:[^@/\s]{1,256}@)?[A-Za-z0-9._\-\[\]:]+'
                           r'(:\d{1,5})?(/\d{1,2})?\Z')


def _redis_url(text):
    if not REDIS_URL_RE.match(text):
        raise ValueError('a Redis URL is redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB')
    return text


def _backend(text):
    if text not in ('local', 'rq'):
        raise ValueError('the backend is local (this node\'s slots) or rq (a farm on Redis)')
    return text


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise ValueError('must be at least 0')
    return value


def _size_or_zero(text):
    """A size (``parse_size``), or 0 (``cacheSize = 0``: off)."""
    return 0 if text.strip() == '0' else parse_size(text)


def _switch(text):
    return boolean_value(text)  # defined with the services below; looked up at parse time


NAME_CHARS = ALNUM | frozenset('._-')


def _server_name(text):
    if not 0 < len(text) <= 64 or not NAME_CHARS.issuperset(text):
        raise ValueError('a name is 1 to 64 letters, digits or ._-')
    return text


def _node_name(text):
    if not is_node_name(text):
        raise ValueError('a node name is 1 to 64 letters, digits or ._-, starting with a letter or digit')
    return text


CONFIG_KEYS = {
    'port': port_number,
    'servers': _server_list,
    'timeout': positive_number,
    'maxDataRetention': _non_negative_number,
    'maxTasks': positive_int,
    'dir': _path,
    'allow': _network_list,
    'trustedProxies': _network_list,
    'token': _token,
    'notifierAllow': _network_list,
    'notifierSecret': _secret,
    'maxRequestSize': parse_size,
    'maxInputs': positive_int,
    'maxFieldLength': positive_int,
    'maxQueued': positive_int,
    'maxOutputSize': parse_size,
    'maxResultSize': parse_size,
    'maxMemory': parse_size,
    'maxProcesses': positive_int,
    'maxLogSize': parse_size,
    'maxSuspend': positive_number,
    'maxWaits': positive_int,
    'maxWaitsPerClient': positive_int,
    'maxConnectionsPerClient': positive_int,
    'requestHeadTimeout': positive_number,
    'maxSteps': positive_int,
    'allowOrigins': _origin_list,
    'allowHosts': _host_list,
    'sandbox': _switch,
    'serverName': _server_name,
    'nodeName': _node_name,
    'reconnectTimeout': _non_negative_number,
    'cgiStreamSeconds': positive_number,
    'backend': _backend,
    'redis': _redis_url,
    'workerToken': _token,
    'retries': _non_negative_int,
    'cacheSize': _size_or_zero,
}
# Client networks a server answers by default: loopback and the private LAN ranges.
DEFAULT_ALLOW = ('127.0.0.0/8', '::1/128', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16',
                 'fc00::/7', 'fe80::/10')
# Keys whose value an error never shows.
SECRET_KEYS = ('notifierSecret', 'workerToken', 'redis')
# Limits that may differ per service: ``openscad.maxMemory = 4G``.
SERVICE_LIMIT_KEYS = ('maxMemory', 'maxProcesses')
# The most bytes a client takes of one result (or log) a server sends back:
# generous, above the servers' own maxOutputSize (1 GiB), so only a server
# gone wrong (or hostile) is ever refused.
DEFAULT_MAX_RESULT_SIZE = 4 << 30
HOST_KEY_RE = LazyPattern(r'\A[A-Za-z0-9\[][A-Za-z0-9._:\[\]-]*\Z')


class Config:
    """The merged settings of the rrcloudrc files that apply."""

    def __init__(self):
        self.port = DEFAULT_PORT
        self.servers = []
        self.service_servers = {}
        self.timeout = 1800.0
        self.maxDataRetention = 24.0
        self.maxTasks = os.cpu_count() or 1
        self.dir = os.getcwd()
        self.allow = list(DEFAULT_ALLOW)
        self.trustedProxies = []  # proxies (a farm's HAProxy) whose X-Forwarded-For names the client
        self.token = ''
        self.host_tokens = {}
        self.notifierAllow = []
        self.notifierSecret = ''  # signs notifier calls; travels to runners in 0600 queue markers only
        self.maxRequestSize = 256 * 1024 * 1024
        self.maxInputs = 32
        self.maxFieldLength = 4096
        self.maxQueued = 1000
        self.maxOutputSize = 1024 * 1024 * 1024
        self.maxResultSize = DEFAULT_MAX_RESULT_SIZE  # a client's own bound on a download
        # What a tool may use while it runs (rrc/limits.py; per service: service_limits).
        self.maxMemory = 0  # 0: a share of the machine's RAM for each slot (limit_for)
        self.maxProcesses = default_max_processes()
        self.maxLogSize = 10 * 1024 * 1024
        self.maxSuspend = 3600.0  # a task suspended longer is killed: it holds a slot
        self.service_limits = {}  # service -> {'maxMemory': bytes, ...}
        self.maxWaits = 8
        self.maxWaitsPerClient = 0  # 0: half of maxWaits (waits_per_client)
        self.maxConnectionsPerClient = 64  # open connections of one address to rrcloud serve
        self.requestHeadTimeout = 10.0  # a request's head must be complete within this
        self.maxSteps = 8  # steps of one pipeline
        self.allowOrigins = []
        self.allowHosts = []  # more names this server answers to, beside those it knows (web/access)
        self.sandbox = True
        self.serverName = host_name()
        self.nodeName = default_node_name()  # which tasks of a shared store are this node's
        self.reconnectTimeout = 120.0
        self.cgiStreamSeconds = 60.0  # a CGI's event stream ends then (the client reconnects)
        # A farm (docs/FARM.md): the queue in Redis, run by rrcloud workers
        # (rrc/farmqueue.py, rrc/farmwork.py, rrc/worker.py).
        self.backend = 'local'
        self.redis = ''  # redis[s]://[[USER]:PASSWORD@]HOST:PORT/DB
        self.workerToken = ''  # what workers present to a front-end (never a client's token)
        self.retries = 1  # runs again of a task whose worker was lost (never a print's)
        # The result cache (rrc/cache.py): at most this many bytes under
        # tasks/cache, the least recently used go first; 0 turns it off.
        self.cacheSize = 1024 * 1024 * 1024
        self.sources = []
        self.service_key_lines = {}  # service -> ("file:line", key) of a SERVICE.KEY line

    def apply_file(self, path):
        """Read one rrcloudrc file over the current values."""
        folder = os.path.dirname(os.path.abspath(path))
        for number, key, value in parse_key_value_lines(path):
            self._apply(path, number, key, value, folder)
        self.sources.append(os.path.abspath(path))

    def _apply(self, path, number, key, value, folder):
        prefix, _, suffix = key.rpartition('.')
        if suffix == 'servers' and is_service_name(prefix):
            parse, store = _server_list, lambda v: self.service_servers.__setitem__(prefix, v)
            self.service_key_lines[prefix] = (f'{path}:{number}', key)
        elif suffix in SERVICE_LIMIT_KEYS and is_service_name(prefix):
            parse = CONFIG_KEYS[suffix]
            store = lambda v: self.service_limits.setdefault(prefix, {}).__setitem__(suffix, v)  # noqa: E731
            self.service_key_lines[prefix] = (f'{path}:{number}', key)
        elif suffix == 'token' and HOST_KEY_RE.match(prefix):
            parse, store = _token, lambda v: self.host_tokens.__setitem__(prefix, v)
        elif key == 'dir':
            parse, store = _path, lambda v: setattr(
                self, 'dir', os.path.normpath(os.path.join(folder, os.path.expanduser(v))))
        elif key in CONFIG_KEYS:
            parse, store = CONFIG_KEYS[key], lambda v: setattr(self, key, v)
        else:
            raise ConfigError(f'{path}:{number}: unknown key {key!r}')
        try:
            store(parse(value))
        except ValueError as exc:
            shown = '(not shown: a secret)' if suffix == 'token' or key in SECRET_KEYS else repr(value)
            raise ConfigError(f'{path}:{number}: bad value for {key}: {shown} ({exc})') from None

    def client_token_for(self, url):
        """The token a client (the CLI, a wrapper, a pipe held here) sends the
        server at ``url``: ``HOST.token``, else ``token``."""
        return self.host_token(url) or self.token

    def server_token_for(self, url):
        """The token a server sends on its own behalf (a step it forwards, and
        everything about that step) to the server at ``url``: ``HOST.token``
        only.  Never ``token``: that is what this server's own clients present,
        and it would go out in plain HTTP to every server without a token of its own."""
        return self.host_token(url)

    def host_token(self, url):
        """``HOST.token`` for the server at ``url`` (by host:port, then host), or ''."""
        from urllib.parse import urlsplit
        parts = urlsplit(url)
        for name in (parts.netloc, parts.hostname or ''):
            if name in self.host_tokens:
                return self.host_tokens[name]
        return ''

    def limit_for(self, service, key):
        """A limit for one service's tasks: ``SERVICE.KEY``, else ``KEY``
        (``maxMemory`` unset: a share of the machine's RAM for each of ``maxTasks``)."""
        value = self.service_limits.get(service, {}).get(key, getattr(self, key))
        if key == 'maxMemory' and not value:
            return default_max_memory(self.maxTasks)
        return value

    def waits_per_client(self):
        """How many of the ``maxWaits`` slots one client address may hold:
        ``maxWaitsPerClient``, by default half of them (others always get one)."""
        return min(self.maxWaits, self.maxWaitsPerClient or max(1, self.maxWaits // 2))

    def servers_for(self, service):
        """Servers for one service: ``<service>.servers``, else ``servers``."""
        return self.service_servers.get(service) or self.servers


def config_files():
    """The rrcloudrc files to read, in order (later ones win)."""
    named = os.environ.get('RRCLOUD_CONFIG')
    if named:
        if not os.path.isfile(named):
            raise ConfigError(f'{named}: RRCLOUD_CONFIG names no readable file')
        return [named]
    candidates = [os.path.expanduser('~/.rrcloudrc'), 'rrcloudrc']
    return [os.path.abspath(path) for path in candidates if os.path.isfile(path)]


def load_config():
    """Read the configuration that applies to this process."""
    config = Config()
    for path in config_files():
        config.apply_file(path)
    check_service_servers(config)
    if config.backend == 'rq' and not config.redis:
        raise ConfigError('backend = rq needs redis = redis://[:PASSWORD@]HOST:PORT/DB in rrcloudrc')
    return config


def host_name():
    """This machine's name, for the record's server field and meta's serverName."""
    return os.uname().nodename
