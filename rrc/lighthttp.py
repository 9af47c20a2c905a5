"""A small HTTP/1.1 client over a socket, shaped like the part of a requests
session rrcloud's relay uses: ``get`` (whole, or streamed to a file),
``post`` of a multipart form, one kept-alive connection per server.

Who uses it, and why not requests: a wrapper's synchronous task
(``openscad.cloud cube.scad -ocube.stl``) and a pipeline step's forwarder.
Importing requests costs 90 to 120 ms here (150 to 400 ms on a Raspberry
Pi), and http.client 20 to 50 ms (its header parser is the email package),
against a small render's 30 ms: a relay that should add less than a tool's
own start cannot pay it.  This needs ``socket`` alone (``ssl`` for https).
It does what those callers need and no more: no proxies (a requests session
here has ``trust_env`` off too), no redirects (rrcloud and 0.019 servers
send none), no cookies, no compression.  ``requests`` stays where a session
or a stream serves: ``rrcloud watch``'s and a progress line's event stream,
the farm worker, a server's probes (docs/ARCHITECTURE.md).

Every failure is an OSError, as requests' are: a refused or lost connection
(with its errno), ``ReadTimeout`` (a server that took the request but did
not answer in time), ``ConnectionError`` for an answer that is no HTTP.
A server may be hostile: every line, count and body read whole is bounded,
a head has a deadline as well as a timeout per read, numbers are ASCII
digits only, and a connection with bytes left over after an answer is not
used again (they would be read as the next answer).
"""

import os
import socket
import time

CHUNK = 65536
MAX_HEAD = 65536  # a status line and headers together
# A chunk's size line, or a trailer line, of a chunked answer; and how many trailers.
MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 64
# The most bytes of an answer read whole (info, meta, a POST's record; a
# result or log is streamed to a file by its caller, within its own bound).
MAX_WHOLE_BODY = 64 * 1024 * 1024
# A server may take this long past the read timeout to send a whole head (or
# a whole body read at once): one byte a second never keeps a client forever.
DEADLINE_SLACK = 10.0


class ReadTimeout(TimeoutError):
    """The server took the request but its answer did not come in time."""


class LightSession:
    """``get(url, params=, timeout=, stream=)`` and ``post(url, data=, files=,
    timeout=)`` with the token ``token_for(url)`` chooses (a client's
    ``Config.client_token_for``, a forwarder's ``server_token_for``).

    One idle connection is kept per server (scheme, host, port) and used for
    the next request there: a task's POST, its result and its log go over
    one connection.  Threads may share a session: a request takes the idle
    connection out and puts it back only when its answer was read through.
    """

    def __init__(self, token_for=lambda url: None):
        self.token_for = token_for
        self.sent = False  # True once a POST's body went out: the server may have acted on it
        self.idle = {}
        self.requests = 0  # how many requests went out (what tests and the benchmark count)
        self.connections = 0  # how many connections were opened

    def get(self, url, params=None, timeout=30, stream=False):
        """A GET; the answer read whole (``stream``: read by ``iter_content``)."""
        target = split_url(url)
        path = target.path + query_string(target.query, params)
        return self._exchange(target, 'GET', path, {}, None, timeout, stream, retry=True)

    def post(self, url, data, files, timeout):
        """A multipart POST of fields ``data`` and ``files`` ({field: (name, bytes or open file)}),
        each file streamed from disk.  Never sent twice."""
        target = split_url(url)
        self.sent = False
        boundary = os.urandom(16).hex()  # (uuid costs 20 ms to import)
        chunks, length = multipart_body(boundary, data, files)
        headers = {'Content-Type': f'multipart/form-data; boundary={boundary}', 'Content-Length': str(length)}
        path = target.path + query_string(target.query, None)
        return self._exchange(target, 'POST', path, headers, chunks, timeout, False, retry=False)

    def close(self):
        """Close the idle connections."""
        for connection in list(self.idle.values()):
            connection.close()
        self.idle.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _exchange(self, target, method, path, headers, body, timeout, stream, retry):
        """Send one request and read its answer's head, on the idle connection
        to ``target`` if there is one.  A kept-alive connection the server
        closed meanwhile fails before any answer: a GET is sent again once on
        a new connection (a POST goes on a new connection in the first place)."""
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        reused = self.idle.pop(target.origin, None) if retry else None
        connection = reused or self._connect(target, connect_timeout)
        try:
            head = self._head(target, method, path, headers)
        except BaseException:
            connection.close()
            raise
        try:
            connection.send_request(head, body, read_timeout)
            connection.deadline = time.monotonic() + read_timeout + DEADLINE_SLACK
            if method == 'POST':
                self.sent = True
            response = connection.read_response(method)
            if stream:  # a result streamed to a file takes as long as it takes, each read within the timeout
                connection.deadline = None
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            connection.close()
            if reused is None:
                raise
            return self._exchange(target, method, path, headers, body, timeout, stream, retry=False)
        except BaseException:  # a timeout, an answer that is no HTTP: not asked again
            connection.close()
            raise
        response.on_done = lambda: self._give_back(target, connection, response)
        if not stream:
            response.read_all()
        return response

    def _connect(self, target, connect_timeout):
        self.connections += 1
        return Connection(target, connect_timeout)

    def _head(self, target, method, path, headers):
        self.requests += 1
        if not path.isascii() or not path.isprintable() or ' ' in path:
            raise ConnectionError(f'not a request path: {path[:80]!r}')
        lines = [f'{method} {path} HTTP/1.1', f'Host: {target.host_header}', 'User-Agent: rrcloud',
                 'Accept-Encoding: identity', *(f'{k}: {v}' for k, v in headers.items())]
        token = self.token_for(target.url)
        if token:
            lines.append(f'Authorization: Bearer {token}')
        if not all(line.isascii() and line.isprintable() for line in lines):
            raise ConnectionError('a request header that is not one line of ASCII')
        return ('\r\n'.join(lines) + '\r\n\r\n').encode('ascii')

    def _give_back(self, target, connection, response):
        # bytes past the answer would be read as the next one: not used again
        if response.keep_alive and not connection.buffer and target.origin not in self.idle:
            self.idle[target.origin] = connection
        else:
            connection.close()


class Target:
    """The parts of a URL a request needs."""

    def __init__(self, url, scheme, host, port, path, query):
        self.url, self.scheme, self.host, self.port = url, scheme, host, port
        self.path, self.query = path or '/', query
        self.origin = (scheme, host, port)
        shown = f'[{host}]' if ':' in host else host
        default = 443 if scheme == 'https' else 80
        self.host_header = shown if port == default else f'{shown}:{port}'


def split_url(url):
    """``http[s]://host[:port]/path?query`` -> Target (``urllib.parse`` costs 10 ms to import)."""
    scheme, sep, rest = url.partition('://')
    scheme = scheme.lower()
    if not sep or scheme not in ('http', 'https'):
        raise ConnectionError(f'not an http URL: {url[:100]!r}')
    netloc, slash, path = rest.partition('/')
    path, _, query = (slash + path).partition('?')
    netloc = netloc.rpartition('@')[2]
    if netloc.startswith('['):
        host, _, port = netloc[1:].partition(']')
        port = port[1:]
    else:
        host, _, port = netloc.partition(':')
    if not host or not (port.isdigit() or not port) or (port and not 0 < int(port) < 65536):
        raise ConnectionError(f'bad address in URL: {url[:100]!r}')
    return Target(url, scheme, host, int(port) if port else (443 if scheme == 'https' else 80), path, query)


SAFE = frozenset(b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~')


def quote(text):
    """A query value, percent-encoded (UTF-8)."""
    return ''.join(chr(b) if b in SAFE else f'%{b:02X}' for b in str(text).encode('utf-8'))


def query_string(query, params):
    """``?query&k=v…``, or '' for none."""
    parts = [query] if query else []
    parts += [f'{quote(k)}={quote(v)}' for k, v in (params or {}).items()]
    return '?' + '&'.join(parts) if parts else ''


class Connection:
    """One socket to a server, with what was read past the last answer."""

    def __init__(self, target, connect_timeout):
        # An ASCII name as bytes: a str goes through the idna codec (stringprep: 1 ms to import)
        host = target.host.encode('ascii') if target.host.isascii() else target.host
        sock = socket.create_connection((host, target.port), timeout=connect_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if target.scheme == 'https':
            import ssl
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=target.host)
        self.sock, self.buffer = sock, b''
        self.deadline = None  # (monotonic) by when the answer's head must be in

    def close(self):
        self.sock.close()

    def send_request(self, head, body, read_timeout):
        self.sock.settimeout(read_timeout)
        if body is None:
            self.sock.sendall(head)
            return
        pending = head
        for chunk in body:  # the head goes with the first small fields: fewer packets
            pending += chunk
            if len(pending) >= CHUNK:
                self.sock.sendall(pending)
                pending = b''
        if pending:
            self.sock.sendall(pending)

    def receive(self):
        """More bytes from the socket; an empty answer is a closed connection."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ReadTimeout('the answer did not come in time')
        try:
            data = self.sock.recv(CHUNK)
        except socket.timeout:
            raise ReadTimeout('no answer in time') from None
        if not data:
            raise ConnectionResetError(104, 'the server closed the connection')
        return data

    def read_line_block(self):
        """The answer's head: the bytes up to the blank line."""
        while b'\r\n\r\n' not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise ConnectionError('an answer head too long')
            self.buffer += self.receive()
        head, _, self.buffer = self.buffer.partition(b'\r\n\r\n')
        return head.decode('latin-1')

    def read_line(self, limit, what):
        """One line of a chunked answer (a size line, a trailer), at most ``limit`` bytes."""
        while b'\r\n' not in self.buffer:
            if len(self.buffer) > limit:
                raise ConnectionError(f'a chunked answer\'s {what} too long')
            self.buffer += self.receive()
        line, _, self.buffer = self.buffer.partition(b'\r\n')
        if len(line) > limit:
            raise ConnectionError(f'a chunked answer\'s {what} too long')
        return line

    def read_response(self, method):
        """Status and headers of the next answer (an interim 1xx passed over)."""
        while True:
            lines = self.read_line_block().split('\r\n')
            version, _, rest = lines[0].partition(' ')
            code = rest[:3]
            if not version.startswith('HTTP/1.') or not is_ascii_number(code):
                raise ConnectionError(f'not an HTTP answer: {lines[0][:60]!r}')
            if not code.startswith('1'):
                break
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(':')
            if sep:
                headers[name.strip().title()] = value.strip()
        return LightResponse(int(code), headers, self, version, method)


class LightResponse:
    """What rrcloud reads of a response: ``status_code``, ``headers`` (names
    Title-Cased), ``text``, ``content``, ``iter_content(size)``."""

    def __init__(self, status, headers, connection, version, method):
        self.status_code, self.headers = status, headers
        self.connection = connection
        self.on_done = None
        self.content = None
        connection_header = headers.get('Connection', '').lower()
        self.keep_alive = 'close' not in connection_header and (version != 'HTTP/1.0' or 'keep-alive' in connection_header)
        self.chunked = 'chunked' in headers.get('Transfer-Encoding', '').lower()
        length = headers.get('Content-Length', '')
        if length and not is_ascii_number(length) and not self.chunked:
            raise ConnectionError(f'an answer with a garbled Content-Length: {length[:20]!r}')
        self.left = int(length) if length and not self.chunked else None
        if method == 'HEAD' or status in (204, 304):
            self.left = 0
        if self.left is None and not self.chunked:
            self.keep_alive = False  # the body ends where the connection does
        self.done = False

    @property
    def text(self):
        return self.content.decode('utf-8', 'replace')

    def read_all(self):
        """The whole body, at most MAX_WHOLE_BODY bytes, before the head's deadline (and its slack)."""
        pieces, size = [], 0
        for piece in self.iter_content(CHUNK):
            size += len(piece)
            if size > MAX_WHOLE_BODY:
                self.close()
                raise ConnectionError(f'an answer larger than {MAX_WHOLE_BODY // 1048576} MiB')
            pieces.append(piece)
        self.content = b''.join(pieces)
        return self.content

    def iter_content(self, size=CHUNK):
        """The body, in pieces (any size up to about ``size``), once."""
        if self.done:
            return
        try:
            yield from (self._chunked() if self.chunked else self._plain())
        except BaseException:
            self.keep_alive = False
            self._finish()
            raise
        self._finish()

    def close(self):
        """Give up on the rest of the body: the connection is not used again."""
        if not self.done:
            self.keep_alive = False
            self._finish()

    def _finish(self):
        if not self.done:
            self.done = True
            if self.on_done:
                self.on_done()

    def _take(self, limit):
        connection = self.connection
        if not connection.buffer:
            connection.buffer = connection.receive()
        piece, connection.buffer = connection.buffer[:limit], connection.buffer[limit:]
        return piece

    def _plain(self):
        if self.left is None:  # up to the connection's end
            while True:
                try:
                    yield self._take(CHUNK)
                except ConnectionResetError:
                    return
        while self.left > 0:
            piece = self._take(min(self.left, CHUNK))
            self.left -= len(piece)
            yield piece

    def _chunked(self):
        connection = self.connection
        while True:
            digits = connection.read_line(MAX_CHUNK_LINE, 'size line').split(b';')[0].strip()
            if not 0 < len(digits) <= 16 or digits.strip(b'0123456789abcdefABCDEF'):
                raise ConnectionError('a garbled chunked answer')
            size = int(digits, 16)
            if size == 0:
                for _ in range(MAX_TRAILERS + 1):  # trailers, then the blank line
                    if not connection.read_line(MAX_CHUNK_LINE, 'trailer'):
                        return
                raise ConnectionError('a chunked answer with too many trailers')
            while size > 0:
                piece = self._take(min(size, CHUNK))
                size -= len(piece)
                yield piece
            while len(connection.buffer) < 2:
                connection.buffer += connection.receive()
            connection.buffer = connection.buffer[2:]


def multipart_body(boundary, fields, files):
    """(an iterator of the body's chunks, its length): text fields, then each
    file as (name, bytes or an open file) read in 64 KiB chunks."""
    head = []
    for key, value in fields.items():
        head.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    pieces, length = [b''.join(head)], len(b''.join(head))
    for key, (name, data) in files.items():
        safe = name.replace('"', '_').replace('\r', '_').replace('\n', '_')
        part = (f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{safe}"\r\n'
                f'Content-Type: application/octet-stream\r\n\r\n').encode()
        size = len(data) if isinstance(data, bytes) else os.fstat(data.fileno()).st_size - data.tell()
        pieces += [part, data, b'\r\n']
        length += len(part) + size + 2
    tail = f'--{boundary}--\r\n'.encode()
    pieces.append(tail)
    return _chunks(pieces), length + len(tail)


def _chunks(pieces):
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            while chunk := piece.read(CHUNK):
                yield chunk


def is_ascii_number(text):
    """True for ASCII digits only (``str.isdigit`` takes ``²`` and ``¹`` too, which ``int`` refuses)."""
    return text.isascii() and text.isdigit()
