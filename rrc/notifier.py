"""The notifier: the GET a server makes when a task starts or ends, signed
with ``notifierSecret``, refused for its own and metadata addresses."""

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


# The moments a notifier may be called at, in the order they happen; a task
# calls at those its ``notifierEvents`` names (0.019's one call: ended).
STARTED, ENDED = 'started', 'ended'
NOTIFIER_EVENTS = (STARTED, ENDED)
DEFAULT_NOTIFIER_EVENTS = (ENDED,)


def parse_notifier_events(text):
    """``started,ended`` -> the events named, in NOTIFIER_EVENTS order; UsageError
    for an empty list or an unknown word ('' is the default: ended)."""
    if text == '':
        return DEFAULT_NOTIFIER_EVENTS
    words = [word.strip() for word in text.split(',')]
    for word in words:
        if word not in NOTIFIER_EVENTS:
            raise UsageError(f'bad notifierEvents: {text[:64]!r} (a comma-separated list of '
                             f'{", ".join(NOTIFIER_EVENTS)})')
    return tuple(event for event in NOTIFIER_EVENTS if event in words)


def notifier_events_field(notifier, text):
    """The record's ``notifierEvents`` field (none for the default, ended: a
    0.019 client sees the record it knows); UsageError for a bad list, or
    for events without a notifier to call."""
    events = parse_notifier_events(text)
    if text and not notifier:
        raise UsageError('notifierEvents needs a notifier (the URL to call)')
    return {} if events == DEFAULT_NOTIFIER_EVENTS else {Field.NOTIFIER_EVENTS: ','.join(events)}


def notifier_events_of(record):
    """The events a task's notifier is called at.  A record is data: a value
    that does not check gives the default, never more calls."""
    try:
        return parse_notifier_events(record.get(Field.NOTIFIER_EVENTS, ''))
    except UsageError:
        return DEFAULT_NOTIFIER_EVENTS


class TaskNotifier:
    """The notifier calls of one task, for its runner.  ``started`` runs in a
    thread of its own (the tool never waits for a receiver); ``ended`` waits
    for it first, so a receiver hears of the start before the end."""

    def __init__(self, store, config, record):
        self.store, self.config = store, config
        self.events = notifier_events_of(record) if record.get(Field.NOTIFIER) else ()
        self.started_call = None

    def started(self, record):
        """The tool has started: call the notifier in the background, if asked."""
        if STARTED not in self.events:
            return
        import threading
        self.started_call = threading.Thread(target=notify, args=(self.store, self.config, record, STARTED),
                                             name='notifier-started', daemon=True)
        self.started_call.start()

    def ended(self, record):
        """The task has ended (its slot is free): call the notifier, if asked."""
        if self.started_call is not None:
            self.started_call.join()  # bounded by its own NOTIFIER_TIMEOUT deadline
        if ENDED in self.events:
            notify(self.store, self.config, record, ENDED)


def filled_notifier_url(template, task_id, client):
    """The URL a notifier template calls: ``$id`` and ``$myip`` (the client's address) filled in."""
    return template.replace('$id', task_id).replace('$myip', client)


# What ``$id`` stands for while a task has no id yet (its notifier checked at submission).
ID_NOT_YET = '0000000000-00000-000000'


def check_notifier_target(template, client, allowed):
    """At submission: UsageError when the server would refuse to call this
    notifier (the same rule as the call, ``notifier_address``), so a client
    learns it now rather than from a line in the log.  A name that does not
    resolve yet passes: it may by the time the task ends (the call is checked again)."""
    import socket
    check_notifier_url(template)  # as the client wrote it: a refusal names its words
    url = filled_notifier_url(template, ID_NOT_YET, client)
    try:
        notifier_address(url, allowed)
    except socket.gaierror:
        return
    except ValueError as exc:  # a refused address, or a URL urllib cannot take apart (a bad port)
        raise UsageError(f'the server will not call this notifier: {exc}') from None


def notify(store, config, record, event=ENDED):
    """Call the task's notifier URL once for ``event``; the outcome goes to the
    log, never to the status.  The default (ended only) keeps 0.019's log line."""
    task_id = record[Field.ID]
    url = filled_notifier_url(record[Field.NOTIFIER], task_id, record.get(Field.CLIENT, ''))
    try:
        headers = notifier_headers(config.notifierSecret, event, task_id, request_target(url))
        outcome = f'HTTP {notifier_get(url, config.notifierAllow, headers)}'
    except Exception as exc:
        outcome = f'not called: {exc}'
    shown = '' if notifier_events_of(record) == DEFAULT_NOTIFIER_EVENTS else f' ({event})'
    with open(store.log_path(task_id), 'a', encoding='utf-8') as log:
        log.write(f'rrcloud: notifier {url}{shown}: {outcome}\n')


# The signature of a call (docs/SECURITY.md, "Signed notifier calls"):
#   X-RRCloud-Signature: t=UNIX_SECONDS,v1=HEX
# HEX = HMAC-SHA256(notifierSecret, T "\n" "GET " TARGET "\n" EVENT "\n" TASK_ID), with
# TARGET the request target exactly as sent (path and query, $id filled in).
SIGNATURE_HEADER = 'X-RRCloud-Signature'
EVENT_HEADER = 'X-RRCloud-Event'
TASK_HEADER = 'X-RRCloud-Task'


def signed_text(timestamp, method, target, event, task_id):
    """The string a notifier call's signature is computed over."""
    return f'{timestamp}\n{method} {target}\n{event}\n{task_id}'


def signature(secret, text):
    """HMAC-SHA256 of ``text`` under ``secret``, in hex."""
    import hashlib
    import hmac
    return hmac.new(secret.encode('utf-8'), text.encode('utf-8'), hashlib.sha256).hexdigest()


def notifier_headers(secret, event, task_id, target, now=None):
    """The headers that tell a receiver what happened to which task; signed
    (with the time of the call) when a secret is configured."""
    headers = {EVENT_HEADER: event, TASK_HEADER: task_id}
    if secret:
        import time
        timestamp = str(int(time.time() if now is None else now))
        headers[SIGNATURE_HEADER] = (f't={timestamp},v1='
                                     + signature(secret, signed_text(timestamp, 'GET', target, event, task_id)))
    return headers


def request_target(url):
    """The request target a GET of ``url`` sends: its path (``/`` when empty) and query."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    return (parts.path or '/') + (f'?{parts.query}' if parts.query else '')


def notifier_get(url, allowed, headers=None):
    """One GET of ``url``: the name is resolved once, the address checked and then used.

    http(s) only, no proxy, no redirect followed, a short timeout; ``headers``
    go with it.
    """
    import threading
    from urllib.parse import urlsplit
    check_notifier_url(url)
    parts = urlsplit(url)
    address, port = notifier_address(url, allowed)
    connection = _notifier_connection(parts.scheme, parts.hostname, address, port)
    expired = threading.Event()
    deadline = threading.Timer(NOTIFIER_TIMEOUT, _cut_connection, (connection, expired))
    deadline.start()  # the whole GET, not each read: a trickling listener cannot hold the runner
    try:
        connection.request('GET', request_target(url), headers={
            'User-Agent': f'rrcloud/{__version__}', 'Host': parts.netloc.rpartition('@')[2],
            **(headers or {})})
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


def notifier_address(url, allowed):
    """(address, port) a notifier call of ``url`` connects to: its host resolved
    once and checked (``resolve_notifier_host``).  The one rule of both the
    call and the submission (``check_notifier_target``): ValueError when refused."""
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    return resolve_notifier_host(parts.hostname or '', port, allowed), port


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
