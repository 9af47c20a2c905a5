"""Every route of the HTTP API and its facts, in one table: the router
(``rrc/web/app.route``) and the access checks (``rrc/web/access``) both
read it, so a route is added in one place and cannot skip a check.

Each route declares, with no default for any of them:

- ``methods``: GET (HEAD too, as GET without a body), POST, or both.  0.019's
  clients send a GET of kill: the controls answer both.  Any other method
  is 405, with ``Allow``.
- ``changes_state``: it starts, stops, moves or removes work.  A request of
  such a route by a method it answers must name this server (``Host``) and
  come from no other web origin (``access.check_host``, ``check_origin``).
  A POST is checked so whatever it names: its service may be in its body,
  which is read after these checks.
- ``token``: whose token opens it when tokens are set: a client's
  (``token``), only a farm's worker's (``workerToken``,
  ``rrc/web/workroutes.py``), or none (``Token.NONE``: a GET of what holds
  no data, the page's shell and its files, which must load to ask for the
  token).
- ``streams``: NO, one answer at once; HELD, a long-poll that may hold its
  one answer (``wait=``, 0.019's held POST) in one of the ``maxWaits``
  slots; EVENTS, an open stream of Server-Sent Events in one of those
  slots, cut after ``cgiStreamSeconds`` under CGI.

A request of the API (``/``, ``/index.cgi``) picks its route by
``service=``; a name not in SERVICES is a tool to run (SUBMIT), and a bare
GET is ``info``, or the page for a browser (PAGE).  Files below
``/tasks/`` and the page's files below ``/ui/`` are PATH_ROUTES.
"""

from collections import namedtuple
from types import MappingProxyType

from . import answers
from .access import API_PATHS, Token
from .assets import serve_asset
from .files import serve_log, serve_result
from .workroutes import answer_workclaim, answer_workdone, answer_workinput, answer_workupdate

GET, POST = 'GET', 'POST'
METHODS = (GET, POST)


class Streams:
    """How a route's answer comes."""
    NO = 'no'  # at once
    HELD = 'held'  # may be held (a long-poll) in a wait slot
    EVENTS = 'events'  # an open event stream in a wait slot


# A namedtuple, not a dataclass: dataclasses imports re and inspect, which a
# CGI read never loads (tests/test_cgi_imports.py).
class Route(namedtuple('Route', 'handler methods changes_state token streams')):
    """One route and its facts, immutable; every one must be given (none has a default)."""
    __slots__ = ()

    def __new__(cls, handler, methods, changes_state, token, streams):
        if not callable(handler):
            raise ValueError(f'a route\'s handler is a function, not {handler!r}')
        if not methods or not set(methods) <= set(METHODS) or len(set(methods)) != len(methods):
            raise ValueError(f'a route answers GET, POST or both, not {methods!r}')
        if not isinstance(changes_state, bool):
            raise ValueError('changes_state is True or False')
        if token not in (Token.CLIENT, Token.WORKER, Token.NONE):
            raise ValueError(f'token is Token.CLIENT, Token.WORKER or Token.NONE, not {token!r}')
        if token == Token.NONE and (changes_state or tuple(methods) != (GET,)):
            raise ValueError('only a GET that changes nothing may need no token')
        if streams not in (Streams.NO, Streams.HELD, Streams.EVENTS):
            raise ValueError(f'streams is Streams.NO, HELD or EVENTS, not {streams!r}')
        return super().__new__(cls, handler, tuple(methods), changes_state, token, streams)

    def answers(self, method):
        """True for a method this route answers (HEAD where GET is)."""
        return (GET if method == 'HEAD' else method) in self.methods


def answer_tasks(app, request):
    """``service=tasks``: the page's task list, newest first, a page at a time
    (rrc/web/tasklist.py, imported by this route alone; here, not in
    answers, which tasklist imports)."""
    from .tasklist import answer_tasks as task_page
    return task_page(app, request)


def answer_changes(app, request):
    """``service=changes``: the store's changes as Server-Sent Events
    (rrc/web/changes.py, imported by this route alone)."""
    from .changes import answer_changes as store_changes
    return store_changes(app, request)


BOTH = (GET, POST)
CLIENT, WORKER, NONE = Token.CLIENT, Token.WORKER, Token.NONE
NO, HELD, EVENTS = Streams.NO, Streams.HELD, Streams.EVENTS

# service= -> its route.  Reads first, then the controls (a GET of each works,
# as 0.019's kill), then a farm's worker routes.
SERVICES = MappingProxyType({
    'info': Route(answers.answer_info, BOTH, False, CLIENT, HELD),
    'meta': Route(answers.answer_meta, BOTH, False, CLIENT, NO),
    'history': Route(answers.answer_history, BOTH, False, CLIENT, NO),
    'printers': Route(answers.answer_printers, BOTH, False, CLIENT, NO),
    'events': Route(answers.answer_events, BOTH, False, CLIENT, EVENTS),
    'tasks': Route(answer_tasks, (GET,), False, CLIENT, NO),
    'changes': Route(answer_changes, (GET,), False, CLIENT, EVENTS),
    'kill': Route(answers.answer_kill, BOTH, True, CLIENT, NO),
    'suspend': Route(answers.answer_suspend, BOTH, True, CLIENT, NO),
    'resume': Route(answers.answer_resume, BOTH, True, CLIENT, NO),
    'pause': Route(answers.answer_pause, BOTH, True, CLIENT, NO),
    'cancel': Route(answers.answer_cancel, BOTH, True, CLIENT, NO),
    'stop': Route(answers.answer_stop, BOTH, True, CLIENT, NO),
    'move': Route(answers.answer_move, BOTH, True, CLIENT, NO),
    'remove': Route(answers.answer_remove, BOTH, True, CLIENT, NO),
    'clean': Route(answers.answer_clean, BOTH, True, CLIENT, NO),
    'pipe': Route(answers.answer_pipe, (POST,), True, CLIENT, HELD),
    'workclaim': Route(answer_workclaim, (POST,), True, WORKER, NO),
    'workinput': Route(answer_workinput, (GET,), False, WORKER, NO),
    'workupdate': Route(answer_workupdate, (POST,), True, WORKER, NO),
    'workdone': Route(answer_workdone, (POST,), True, WORKER, NO),
})
# Any other service= is a tool: a POST starts a task of it (held for 0.019's clients).
SUBMIT = Route(answers.answer_submit, (POST,), True, CLIENT, HELD)
# A bare GET of / from a browser (no format=): the page, a shell without
# data (www/index.html): it loads without the token and then asks for it.
PAGE = Route(answers.answer_page, (GET,), False, NONE, NO)
# Files below a prefix: handler(app, request, the rest of the path).  The
# page's files (rrc/web/assets.py) hold no data: no token.
PATH_ROUTES = (('/tasks/out/', Route(serve_result, (GET,), False, CLIENT, NO)),
               ('/tasks/log/', Route(serve_log, (GET,), False, CLIENT, NO)),
               ('/ui/', Route(serve_asset, (GET,), False, NONE, NO)))


def service_route(service):
    """The route of ``service=NAME``: a declared one, else a task to start."""
    return SERVICES.get(service, SUBMIT)


def path_route(path):
    """(prefix, route) of a path below /tasks/ or /ui/, or (None, None)."""
    for prefix, found in PATH_ROUTES:
        if path.startswith(prefix):
            return prefix, found
    return None, None


def query_route(request):
    """The route a request names before its body is read: by its path, else
    by the query's ``service=`` (a bare GET: ``info``); None off the API.
    A POST may name its service in its body instead (``app.route`` looks again)."""
    _, found = path_route(request.path)
    if found is not None or request.path not in API_PATHS:
        return found
    service = request.query.get('service', '')
    if not service and request.method != POST:
        return PAGE if is_page_request(request) else SERVICES['info']
    return service_route(service)


def is_page_request(request):
    """A bare GET of / from a browser, without format=: the page (app.route asks the same)."""
    return request.browser and 'format' not in request.form
