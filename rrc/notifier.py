"""The notifier: the GET a server makes when a task ends, refused for its own and metadata addresses."""

from . import __version__
from .errors import UsageError
from .names import LazyPattern, address_in
from .schema import Field


NOTIFIER_URL_RE = LazyPattern(r'\Ahttps?://[^\s/?#]+[^\s]*\Z')


def check_notifier_url(url):
    """A notifier is an http(s) URL on one line."""
    if not NOTIFIER_URL_RE.match(url or ''):
        raise UsageError(f'bad notifier URL (http or https only): {url!r}')


NOTIFIER_TIMEOUT = 5.0
# Refused notifier targets unless notifierAllow names them: this machine and
# the link-local ranges (cloud metadata services live at 169.254.169.254).
NOTIFIER_REFUSED = ('127.0.0.0/8', '::1/128', '0.0.0.0/8', '::/128', '169.254.0.0/16', 'fe80::/10',
                    # cloud metadata services outside link-local: Alibaba, AWS (IPv6), Azure
                    '100.100.100.200/32', 'fd00:ec2::254/128', '168.63.129.16/32')


def notify(store, config, record):
    """Call the task's notifier URL once; the outcome goes to the log, never to the status."""
    url = record[Field.NOTIFIER].replace('$id', record[Field.ID]).replace('$myip', record.get(Field.CLIENT, ''))
    try:
        outcome = f'HTTP {notifier_get(url, config.notifierAllow)}'
    except Exception as exc:
        outcome = f'not called: {exc}'
    with open(store.log_path(record[Field.ID]), 'a', encoding='utf-8') as log:
        log.write(f'rrcloud: notifier {url}: {outcome}\n')


def notifier_get(url, allowed):
    """One GET of ``url``: the name is resolved once, the address checked and then used.

    http(s) only, no proxy, no redirect followed, a short timeout.
    """
    import threading
    from urllib.parse import urlsplit
    check_notifier_url(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    address = resolve_notifier_host(parts.hostname or '', port, allowed)
    connection = _notifier_connection(parts.scheme, parts.hostname, address, port)
    expired = threading.Event()
    deadline = threading.Timer(NOTIFIER_TIMEOUT, _cut_connection, (connection, expired))
    deadline.start()  # the whole GET, not each read: a trickling listener cannot hold the runner
    try:
        target = (parts.path or '/') + (f'?{parts.query}' if parts.query else '')
        connection.request('GET', target, headers={'User-Agent': f'rrcloud/{__version__}',
                                                   'Host': parts.netloc.rpartition('@')[2]})
        status = connection.getresponse().status
        if expired.is_set():  # headers cut short by the deadline parse as complete
            raise TimeoutError
        return status
    except Exception:
        if expired.is_set():
            raise TimeoutError(f'timed out after {NOTIFIER_TIMEOUT:g} s') from None
        raise
    finally:
        deadline.cancel()
        connection.close()


def _cut_connection(connection, expired):
    """Deadline of a notifier call: shut its socket so the blocked read returns."""
    import socket
    expired.set()
    sock = getattr(connection, 'sock', None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def resolve_notifier_host(host, port, allowed):
    """The one address to connect to, or ValueError when it is refused."""
    import socket
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    address = infos[0][4][0]
    if address_in(address, allowed):
        return address
    if address_in(address, NOTIFIER_REFUSED) or address_in(address, own_addresses()):
        raise ValueError(f'address {address} of {host!r} is refused (see notifierAllow)')
    return address


def own_addresses():
    """Every address of this machine's interfaces, as /32 or /128 networks: a
    notifier must not make the server call itself on its LAN address."""
    import socket
    import psutil
    families = (socket.AF_INET, socket.AF_INET6)
    return [address.address.split('%', 1)[0] + ('/32' if address.family == socket.AF_INET else '/128')
            for addresses in psutil.net_if_addrs().values() for address in addresses
            if address.family in families]


def _notifier_connection(scheme, host, address, port):
    """An http.client connection to ``address`` that still speaks TLS to ``host``."""
    import http.client
    if scheme == 'http':
        return http.client.HTTPConnection(address, port, timeout=NOTIFIER_TIMEOUT)
    import socket
    import ssl
    context = ssl.create_default_context()

    class PinnedHTTPS(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection((address, port), NOTIFIER_TIMEOUT)
            self.sock = context.wrap_socket(raw, server_hostname=host)
    return PinnedHTTPS(host, port, timeout=NOTIFIER_TIMEOUT, context=context)
