"""HTTP request parsing and answers: query and form fields, their limits, status lines."""

from ..errors import HTTPError
from ..names import LazyPattern, address_in, is_form_field, is_single_line


MAX_WAIT_SECONDS = 60
STATUS_LINES = {200: '200 OK', 204: '204 No Content', 304: '304 Not Modified', 400: '400 Bad Request',
                401: '401 Unauthorized', 403: '403 Forbidden',
                404: '404 Not Found', 405: '405 Method Not Allowed',
                413: '413 Payload Too Large', 500: '500 Internal Server Error',
                502: '502 Bad Gateway', 503: '503 Service Unavailable',
                507: '507 Insufficient Storage'}


class Response:
    """Status, headers and body of one answer."""

    def __init__(self, body=b'', status=200, content_type='text/plain; charset=utf-8', headers=()):
        self.status = status
        kept = isinstance(body, (bytes, list)) or hasattr(body, 'read') or hasattr(body, '__next__')
        self.body = body if kept else body.encode('utf-8')
        self.headers = [('Content-Type', content_type), ('Access-Control-Allow-Origin', '*')]
        self.headers += list(headers)


def client_address(environ, trusted_proxies):
    """The client's address: the peer's, or, when the peer is a proxy in
    ``trusted_proxies``, the last address of X-Forwarded-For (the one that
    proxy added; those before it are the client's word).  An address that
    is not one is not taken."""
    peer = environ.get('REMOTE_ADDR', '') or 'unknown'
    forwarded = environ.get('HTTP_X_FORWARDED_FOR', '')
    if not (forwarded and trusted_proxies and address_in(peer, trusted_proxies)):
        return peer
    import ipaddress
    last = forwarded.rsplit(',', 1)[-1].strip()
    try:
        return str(ipaddress.ip_address(last))
    except ValueError:
        return peer


class Request:
    """The parts of a WSGI request rrcloud looks at; the form is parsed on demand."""

    def __init__(self, environ, trusted_proxies=()):
        self.environ = environ
        self.method = environ.get('REQUEST_METHOD', 'GET').upper()
        self.path = _request_path(environ)
        self.query = _parse_query(environ.get('QUERY_STRING', ''))
        self.client = client_address(environ, trusted_proxies)
        self.form, self.files = dict(self.query), {}
        self.parsed = False
        self.browser = 'Mozilla' in environ.get('HTTP_USER_AGENT', '')
        self.is_worker = False  # a farm's worker (web/access.check_access says)

    @property
    def format(self):
        return 'json' if self.form.get('format') == 'json' else 'text'

    def read_form(self, config):
        """Parse a POST body (multipart or urlencoded) with the multipart package, within the limits."""
        length = self.environ.get('CONTENT_LENGTH') or ''
        if length and not length.isdigit():
            raise HTTPError(400, 'bad Content-Length')
        if int(length or 0) > config.maxRequestSize:
            raise HTTPError(413, f'request too large (at most {config.maxRequestSize} bytes)')
        import multipart
        try:
            forms, files = multipart.parse_form_data(
                self.environ, strict=True, part_limit=config.maxInputs * 2 + 16,
                memory_limit=min(config.maxRequestSize, 64 * 1024 * 1024),
                disk_limit=config.maxRequestSize, spool_limit=1024 * 1024)
        except multipart.MultipartError as exc:
            if str(exc).startswith(('Memory limit', 'Disk limit', 'Maximum segment size')):
                raise HTTPError(413, f'request too large (at most {config.maxRequestSize} bytes)') from None
            status = 413 if isinstance(exc, multipart.ParserLimitReached) else 400
            raise HTTPError(status, f'bad form data: {exc}') from None
        for key, value in forms.iterallitems():
            self._add_field(key, value, config)
        for key, part in files.iterallitems():
            self._add_field(key, part, config)
        self.parsed = True

    def _add_field(self, key, value, config):
        if not is_form_field(key):
            raise HTTPError(400, f'unknown form field: {key[:64]!r}')
        if isinstance(value, str) and not key.startswith('fileIn'):
            _check_length(key, value, config)
        if key in self.form or key in self.files:
            raise HTTPError(400, f'form field given twice: {key}')
        if isinstance(value, str):
            self.form[key] = value
        else:
            self.files[key] = value


def _request_path(environ):
    """The path below the application (SCRIPT_NAME stripped by the server)."""
    path = environ.get('PATH_INFO', '') or '/'
    return path


PERCENT_RE = LazyPattern(rb'%([0-9A-Fa-f]{2})')


def percent_decode(text):
    """Decode one query-string component (``+`` is a space); urllib.parse costs a CGI 1.5 ms."""
    raw = text.replace('+', ' ').encode('latin-1', 'replace')
    if b'%' in raw:  # most fields hold none: no pattern, no `re` import
        raw = PERCENT_RE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return raw.decode('utf-8', 'replace')


def _parse_query(query):
    fields = {}
    for pair in query.split('&'):
        if not pair:
            continue
        key, _, value = pair.partition('=')
        key, value = percent_decode(key), percent_decode(value)
        if not is_form_field(key):
            raise HTTPError(400, f'unknown query field: {key[:64]!r}')
        if key in fields:
            raise HTTPError(400, f'query field given twice: {key}')
        fields[key] = value
    return fields


def check_field(name, value, config):
    """A text field (query or body) is one line within ``maxFieldLength``."""
    _check_length(name, value, config)
    return _check_line(name, value)


def _check_length(name, value, config):
    if len(value) > config.maxFieldLength:
        raise HTTPError(400, f'field {name} is longer than {config.maxFieldLength} characters')


def _check_line(name, value):
    """Text fields are single lines: a CR, LF or NUL could forge a record key."""
    if not is_single_line(value):
        raise HTTPError(400, f'field {name} holds a line break or NUL')
    return value
