"""The HTTP API in-process: rrcloud's WSGI application called directly, no server.

``WSGIDeployment`` (kind ``wsgi``) is a deploy.Deployment without a web
server: the same store folder layout, the same test services and rrcloudrc
(``dir`` and the config marker), a real ``rrc.web.app.App`` over it, real
runner processes and real tools.  HTTP goes through:

- ``deployment.session``: a requests session whose transport adapter
  (``WSGIAdapter``) builds a PEP 3333 environ from the prepared request and
  calls the application -- test code uses it like ``requests``;
- ``deployment.request_raw(method, target, body, headers)``: the request
  target exactly as written (no normalising of '..' or escapes), the way
  http.client sends it to a live server.

The environ is what waitress (``rrcloud serve``) gives the application:
PATH_INFO percent-decoded and read as latin-1, QUERY_STRING exactly as sent,
``HTTP_*`` for every header but Content-Type and Content-Length,
REMOTE_ADDR 127.0.0.1, ``wsgi.file_wrapper``.  A streamed body (a generator:
``Transfer-Encoding: chunked``) is handed on as a stream without
CONTENT_LENGTH, ended by EOF (``wsgi.input_terminated``), as Apache hands a
chunked body to a CGI.  The answer's iterable is read and closed (PEP 3333);
a HEAD answer has no body, as on the wire.

What only a real server does (CGI variables, URL parsing and refusals of its
own, reading or discarding a body the application left unread, request
framing, connections, concurrency, detaching from a web server's process
group) is not modelled here: those tests stay live (see docs/TESTING.md).
"""
import io
import os
import sys
import time
from urllib.parse import unquote_to_bytes, urlsplit
from wsgiref.util import FileWrapper

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

import deploy
from helpers import plain_session

REMOTE_ADDR = '127.0.0.1'


class IteratorReader(io.RawIOBase):
    """A stream over an iterator of byte chunks (a streamed request body)."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.pending = b''

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self.pending:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                return 0
            self.pending = chunk.encode('utf-8') if isinstance(chunk, str) else bytes(chunk)
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size


def body_stream(body):
    """(wsgi.input, length or None) for a request body as requests or http.client hold it."""
    if body is None:
        return io.BytesIO(b''), None
    if isinstance(body, str):
        body = body.encode('utf-8')
    if isinstance(body, (bytes, bytearray)):
        return io.BytesIO(bytes(body)), len(body)
    if hasattr(body, 'read'):
        return io.BufferedReader(IteratorReader(iter(lambda: body.read(65536), b''))), None
    return io.BufferedReader(IteratorReader(body)), None


def build_environ(method, target, headers, body, host='127.0.0.1', port=80):
    """The PEP 3333 environ of one request: ``target`` is the request line's path and query as sent."""
    raw_path, _, query = target.partition('?')
    stream, length = body_stream(body)
    environ = {
        'REQUEST_METHOD': method.upper(),
        'SCRIPT_NAME': '',
        'PATH_INFO': unquote_to_bytes(raw_path).decode('latin-1'),
        'QUERY_STRING': query,
        'SERVER_NAME': host,
        'SERVER_PORT': str(port),
        'SERVER_PROTOCOL': 'HTTP/1.1',
        'SERVER_SOFTWARE': 'rrcloud-tests-wsgi',
        'REMOTE_ADDR': REMOTE_ADDR,
        'REMOTE_HOST': REMOTE_ADDR,
        'wsgi.version': (1, 0),
        'wsgi.url_scheme': 'http',
        'wsgi.input': stream,
        'wsgi.errors': sys.stderr,
        'wsgi.multithread': True,
        'wsgi.multiprocess': False,
        'wsgi.run_once': False,
        'wsgi.input_terminated': True,
        'wsgi.file_wrapper': FileWrapper,
    }
    for name, value in headers:
        key = name.upper().replace('-', '_')
        if key in ('CONTENT_TYPE', 'CONTENT_LENGTH'):
            environ[key] = value
            continue
        key = 'HTTP_' + key
        # Several headers of one name arrive as one, joined by commas (RFC 9110).
        environ[key] = f'{environ[key]},{value}' if key in environ else value
    if length is not None and 'CONTENT_LENGTH' not in environ and (length or method.upper() in ('POST', 'PUT')):
        environ['CONTENT_LENGTH'] = str(length)
    return environ


def call_app(app, environ):
    """Run the application once: (status code, reason, [(name, value)], body bytes)."""
    started = []

    def start_response(status, response_headers, exc_info=None):
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, list(response_headers)]
        return lambda data: body.append(data)

    body = []
    chunks = app(environ, start_response)
    try:
        for chunk in chunks:
            body.append(chunk)
    finally:
        if hasattr(chunks, 'close'):
            chunks.close()
    assert started, 'the application never called start_response'
    status, response_headers = started
    for name, value in response_headers:  # what a server would refuse to send
        assert isinstance(name, str) and isinstance(value, str), (name, value)
        assert '\r' not in value and '\n' not in value, (name, value)
    code, _, reason = status.partition(' ')
    data = b''.join(body)
    if environ['REQUEST_METHOD'] == 'HEAD':
        data = b''
    return int(code), reason, response_headers, data


class WSGIAdapter(BaseAdapter):
    """A requests transport that hands each request to a WSGI application in this process."""

    def __init__(self, get_app, host, port):
        super().__init__()
        self.get_app, self.host, self.port = get_app, host, port

    def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):
        headers = list(request.headers.items())
        if not any(name.lower() == 'host' for name, _ in headers):
            headers.insert(0, ('Host', urlsplit(request.url).netloc))  # as http.client adds it on the wire
        environ = build_environ(request.method, request.path_url, headers, request.body, self.host, self.port)
        status, reason, headers, data = call_app(self.get_app(), environ)
        response = requests.Response()
        response.status_code = status
        response.reason = reason
        joined = CaseInsensitiveDict()
        for name, value in headers:
            joined[name] = f'{joined[name]}, {value}' if name in joined else value
        response.headers = joined
        response.encoding = get_encoding_from_headers(joined)
        response.raw = io.BytesIO(data)
        response._content = data
        response._content_consumed = True
        response.url = request.url
        response.request = request
        response.connection = self
        return response

    def close(self):
        pass


class WSGIDeployment(deploy.Deployment):
    """A deployment of kind ``wsgi``: the store and config of a live one, the App called in-process."""

    kind = 'wsgi'

    def __init__(self, kind='wsgi', config='', services=None):
        assert kind == 'wsgi', kind
        self.application = None
        super().__init__('wsgi', config=config, services=services)
        # No server listens on this port: a request that bypasses the session fails at once.
        self.session = plain_session()
        self.session.mount(self.url + '/', WSGIAdapter(lambda: self.application, '127.0.0.1', self.port))

    def _build(self, config, services):
        # The store as a live deployment has it; no app copy (the App runs from the repo).
        deploy.lay_out_store(self, config, services)

    def start(self, timeout=20):
        """Build the App as ``rrcloud serve`` does: the config RRCLOUD_CONFIG names, recovery at start."""
        from rrc.config import load_config
        from rrc.node import Node
        from rrc.recovery import recover_store
        from rrc.web.app import App
        saved = os.environ.get('RRCLOUD_CONFIG')
        os.environ['RRCLOUD_CONFIG'] = str(self.rrcloudrc)
        try:
            config = load_config()
        finally:
            if saved is None:
                del os.environ['RRCLOUD_CONFIG']
            else:
                os.environ['RRCLOUD_CONFIG'] = saved
        app = App(Node(config, started=time.time()))
        app.store.ensure()
        recover_store(app.store, config)
        self.application = app
        return self

    def stop(self):
        self.application = None

    def restart(self):
        self.stop()
        return self.start()

    def request_raw(self, method, target, body=None, headers=None, timeout=60):
        """One request with ``target`` exactly as written, as http.client sends it; (status, headers, body)."""
        given = {name.lower() for name in (headers or {})}
        # http.client adds Host and Accept-Encoding unless the caller sent its own.
        sent = [(name, value) for name, value in (('Host', f'127.0.0.1:{self.port}'),
                                                  ('Accept-Encoding', 'identity'))
                if name.lower() not in given]
        sent += list((headers or {}).items())
        if body is None and method.upper() in ('POST', 'PUT', 'PATCH'):
            body = b''
        environ = build_environ(method, target, sent, body, '127.0.0.1', self.port)
        status, _, response_headers, data = call_app(self.application, environ)
        return status, response_headers, data

    def server_log(self):
        return ''
