"""The WSGI application: the router over the route table (rrc/web/routes.py)
and the answers of errors; the routes' own answers are rrc/web/answers.py's."""

import os
import sys

from ..config import load_config
from ..errors import DISK_FULL_ERRORS, HTTPError, RRCloudError, reason_without_paths
from ..node import Node
from ..procs import process_started_at
from ..schema import Field, TaskStatus
from ..states import get_task
from ..store import to_json
from .access import API_PATHS, check_access, check_form_token, check_worker, is_work_route
from .request import Request, Response, STATUS_LINES
from .routes import PAGE, path_route, query_route, service_route


class App:
    """The WSGI application: the whole HTTP API of one node.

    The CGI gateway, the embedded server and ``rrcloud:application`` each
    build one per process; it holds the node and the long-polls in progress.
    """

    def __init__(self, node):
        self.node = node
        self.config, self.store = node.config, node.store
        self._made_on_first_use = {}

    @classmethod
    def from_config(cls, config=None, started=None):
        """An app for the rrcloudrc in effect (any WSGI server: uptime from its process)."""
        config = config or load_config()
        return cls(Node(config, started or process_started_at(os.getpid())))

    def wait_slots(self):
        """The slots of this process's long-polls and event streams (``maxWaits``,
        at most ``maxWaitsPerClient`` for one client address; rrc/web/slots.py).
        Made on first use: threading is not imported for the requests that never wait."""
        made = self._made_on_first_use
        if 'waits' not in made:
            from .slots import ClientSlots
            # setdefault: two threads of a resident server asking at once get the same one
            made.setdefault('waits', ClientSlots(self.config.maxWaits, self.config.waits_per_client()))
        return made['waits']

    def read_task(self, store, task_id):
        """A task's record, judged (a dead runner's task is not busy); on a
        farm's front-end a silent worker's task is asked after in Redis."""
        return self.judged(store, store.read_task(task_id))

    def judged(self, store, record):
        """A record read already, judged as read_task judges it, with its live progress."""
        record = get_task(store, record[Field.ID], record)
        if self.config.backend == 'rq' and record.get(Field.WORKER) and record.get(Field.STATUS) == TaskStatus.BUSY:
            from ..farmwork import reconcile_farm_task
            return reconcile_farm_task(store, self.config, record)
        return record

    def __call__(self, environ, start_response):
        request = None
        try:
            request = Request(environ, self.config.trustedProxies)
            check_access(request, self.config, query_route(request))
            response = route(self, request)
        except RRCloudError as exc:
            response = error_response(getattr(exc, 'http_status', 500), str(exc), request)
            response.headers += getattr(exc, 'headers', [])
        except OSError as exc:
            response = store_error_response(exc, request, environ)
        except Exception as exc:  # one line to the client, never a traceback
            print(f'rrcloud: internal error: {exc!r}', file=environ.get('wsgi.errors', sys.stderr))
            response = error_response(500, 'internal error', request)
        start_response(STATUS_LINES.get(response.status, f'{response.status} Error'), response.headers)
        if hasattr(response.body, 'read'):
            wrapper = environ.get('wsgi.file_wrapper')
            return wrapper(response.body, 65536) if wrapper else iter(lambda: response.body.read(65536), b'')
        if hasattr(response.body, '__next__'):  # a stream (service=events): sent as it comes
            return response.body
        return [response.body]


def store_error_response(exc, request, environ):
    """An OSError inside a request: the disk is full (507), or the store cannot
    be used (500); one line either way, naming no path of the server's (the
    server's log says which file)."""
    reason = reason_without_paths(exc)
    if exc.errno in DISK_FULL_ERRORS:
        return error_response(507, f'the server cannot store this: {reason}', request)
    print(f'rrcloud: store error: {exc}', file=environ.get('wsgi.errors', sys.stderr))
    return error_response(500, f'the server cannot use its store: {reason}', request)


def error_response(status, message, request):
    """An error answer: status code plus a one-line reason in the format asked
    (text when the request itself could not be read)."""
    message = ' '.join(message.split())
    if request is not None and request.format == 'json':
        return Response(to_json({'error': message}), status, 'application/json')
    return Response(f'error: {message}\n', status)


def route(app, request):
    """Dispatch by path, then method, then ``service=``; each route's methods and
    token as rrc/web/routes.py declares them."""
    prefix, found = path_route(request.path)
    if found is not None:
        check_route(found, request, f'{prefix}...')
        return found.handler(app, request, request.path[len(prefix):])
    if request.path not in API_PATHS:
        raise HTTPError(404, 'not found')
    if request.method == 'OPTIONS':
        return Response(b'', 204, headers=[('Access-Control-Allow-Methods', 'GET, POST, OPTIONS'),
                                           ('Access-Control-Allow-Headers', 'Content-Type')])
    if request.method == 'POST':
        request.read_form(app.config)
        check_form_token(request, app.config)  # curl -F token=... comes in the body
    elif request.method not in ('GET', 'HEAD'):
        raise HTTPError(405, f'method {request.method} not allowed')
    service = request.form.get('service', '')
    if not service and request.method != 'POST':
        if request.browser and 'format' not in request.form:
            return PAGE.handler(app, request)
        service = 'info'
    found = service_route(service)
    check_route(found, request, f'service={service}')
    return found.handler(app, request)


def check_route(found, request, name):
    """A worker's route to workers only (its service may be named in a POST's
    body, after check_access); a method the route does not answer is 405."""
    if is_work_route(found):
        check_worker(request)
    if not found.answers(request.method):
        allowed = ' or a '.join(found.methods)
        raise HTTPError(405, f'{name} is a {allowed}, not a {request.method}',
                        headers=[('Allow', ', '.join(found.methods + (('HEAD',) if 'GET' in found.methods else ())))])
