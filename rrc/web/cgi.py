"""The CGI gateway: one request per process, under Apache or lighttpd."""

import os
import sys
import time

from ..errors import ExitCode, RRCloudError
from ..node import warn_if_unsandboxed
from ..procs import process_started_at
from .app import App, error_response, store_error_response
from .request import STATUS_LINES


def run_cgi():
    """CGI mode: one request on stdin/stdout, then exit (tasks run on, detached).

    Whatever fails, the client gets rrcloud's one-line answer with its CORS
    header: an exception escaping a CGI is the web server's bare error page.
    """
    body = CountingReader(sys.stdin.buffer)
    environ = cgi_environ(body)
    try:
        app = cgi_app()
    except RRCloudError as exc:  # a bad rrcloudrc: the server's own fault
        print(f'rrcloud: error: {exc}', file=sys.stderr)
        app = FixedAnswer(error_response(500, 'the server is misconfigured (see its error log)', None))
    except OSError as exc:
        app = FixedAnswer(store_error_response(exc, None, environ))
    try:
        answer_cgi(app, environ, sys.stdout.buffer)
    finally:
        discard_cgi_input(body)
    return ExitCode.OK


def cgi_app():
    """The app of this request, after the housekeeping no resident process does."""
    # The server is the web server: its uptime is that of the process that
    # starts the CGI (lighttpd itself, Apache's CGI daemon).
    app = App.from_config(started=process_started_at(os.getppid()))
    if os.environ.get('REQUEST_METHOD') == 'POST':
        warn_if_unsandboxed(app.config)  # the web server's error log
    try:
        recover_now_and_then(app.store, app.config)
    except OSError as exc:  # housekeeping: the request itself says what is wrong
        print(f'rrcloud: recovery failed: {exc}', file=sys.stderr)
    return app


# Under CGI no process stays to recover the store: a request does it, at most
# once a minute (the stamp's mtime says when it last ran).
RECOVERY_INTERVAL = 60.0


def recover_now_and_then(store, config):
    """Run recover_store when a minute has passed since the last request did.
    Imported only then: the other requests of the minute load none of it."""
    stamp = os.path.join(store.tasks, '.recovered')
    try:
        if time.time() - os.stat(stamp).st_mtime < RECOVERY_INTERVAL:
            return
    except FileNotFoundError:
        if not os.path.isdir(store.tasks):
            return
    os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT, 0o644))
    os.utime(stamp)
    from ..recovery import recover_store
    recover_store(store, config)


class FixedAnswer:
    """A WSGI app that gives one prepared answer (when no App could be built)."""

    def __init__(self, response):
        self.response = response

    def __call__(self, environ, start_response):
        start_response(STATUS_LINES[self.response.status], self.response.headers)
        return [self.response.body]


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
        streamed = not isinstance(chunks, list)  # an event stream: each chunk goes at once
        for chunk in chunks:
            out.write(chunk)
            if streamed:
                out.flush()
        out.flush()
    except BrokenPipeError:  # the client (and so the web server) let go of a stream
        quiet_stdout()
    finally:
        if hasattr(chunks, 'close'):
            chunks.close()


def quiet_stdout():
    """Point stdout at /dev/null: what Python would flush at exit has nowhere to go."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


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
