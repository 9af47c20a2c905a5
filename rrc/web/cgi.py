"""The CGI gateway: one request per process, under Apache or lighttpd."""

import os
import sys

from ..errors import ExitCode
from ..procs import process_started_at
from ..recovery import recover_now_and_then
from ..node import warn_if_unsandboxed
from .app import App


def run_cgi():
    """CGI mode: one request on stdin/stdout, then exit (tasks run on, detached)."""
    # The server is the web server: its uptime is that of the process that
    # starts the CGI (lighttpd itself, Apache's CGI daemon).
    app = App.from_config(started=process_started_at(os.getppid()))
    if os.environ.get('REQUEST_METHOD') == 'POST':
        warn_if_unsandboxed(app.config)  # the web server's error log
    recover_now_and_then(app.store, app.config)
    body = CountingReader(sys.stdin.buffer)
    try:
        answer_cgi(app, cgi_environ(body), sys.stdout.buffer)
    finally:
        discard_cgi_input(body)
    return ExitCode.OK


def cgi_environ(body):
    """The WSGI environ of this CGI request: os.environ as native strings
    (bytes seen as latin-1, PEP 3333), plus the wsgi.* keys."""
    encoding = sys.getfilesystemencoding()
    environ = {key: value.encode(encoding, 'surrogateescape').decode('latin-1')
               for key, value in os.environ.items()}
    https = environ.get('HTTPS', 'off').lower() in ('on', '1', 'yes')
    environ.update({'wsgi.input': body, 'wsgi.errors': sys.stderr, 'wsgi.version': (1, 0),
                    'wsgi.url_scheme': 'https' if https else 'http', 'wsgi.multithread': False,
                    'wsgi.multiprocess': True, 'wsgi.run_once': True})
    return environ


def answer_cgi(app, environ, out):
    """Run the application once and write its answer the CGI way (a Status
    header, the headers, a blank line, the body).  wsgiref would do the same
    but costs a CGI request 1.5 ms of imports (re among them)."""
    head = []

    def start_response(status, headers, exc_info=None):
        head[:] = [status, list(headers)]
        return out.write

    chunks = app(environ, start_response)
    try:
        if isinstance(chunks, list) and len(chunks) == 1 and not any(
                name.lower() == 'content-length' for name, _ in head[1]):
            head[1].append(('Content-Length', str(len(chunks[0]))))
        lines = [f'Status: {head[0]}'] + [f'{name}: {value}' for name, value in head[1]]
        out.write(('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1'))
        for chunk in chunks:
            out.write(chunk)
        out.flush()
    finally:
        if hasattr(chunks, 'close'):
            chunks.close()


class CountingReader:
    """The CGI's stdin, counting what the application read of the body."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, size=-1):
        data = self.stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size=-1):
        data = self.stream.readline(size)
        self.count += len(data)
        return data

    def __iter__(self):
        return iter(self.readline, b'')


CGI_DISCARD_BYTES = 1 << 30
CGI_DISCARD_SECONDS = 60


def discard_cgi_input(body):
    """Read and drop what the application left unread of the request body.

    Apache (mod_cgid) writes the whole body to the CGI before it reads the
    answer: a CGI that exits early (403, 413, a bad field) would lose its
    answer.  The bytes are never parsed or stored; at most 1 GiB or 60 s.
    """
    length = os.environ.get('CONTENT_LENGTH', '')
    if length.isdigit() and body.count >= int(length):
        return  # all read (or no body): nothing to wait for
    if not length.isdigit() and 'HTTP_TRANSFER_ENCODING' not in os.environ:
        return
    import signal

    def give_up(signum, frame):
        raise TimeoutError
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(CGI_DISCARD_SECONDS)
    try:
        while body.count < CGI_DISCARD_BYTES and body.read(65536):
            pass
    except (OSError, ValueError):
        pass
    finally:
        signal.alarm(0)
