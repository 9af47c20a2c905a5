"""The route table (rrc/web/routes.py) against the WSGI app in-process: every
route's declared facts hold, and a route added to the table is walked here
without a line more.

- every state-changing route, by every method it answers, refuses a foreign
  web origin (403), a name this server does not answer to (403: DNS
  rebinding) and, with a token set, a request without it (401; a worker's
  route: 403 without the worker token);
- every route answers the methods it declares (HEAD where GET) and refuses
  the others with 405 and ``Allow``;
- a read stays open to other origins (0.019's CORS).

Ids name no task (a refusal is told from an answer by its status), so
nothing here starts, stops or removes anything even where it is let through.
"""
import pytest

import deploy
from rrc.web import routes
from rrc.web.routes import GET, POST, Route, Streams, Token

TOKEN = 'client-token-for-the-route-walk'
WORKER_TOKEN = 'worker-token-for-the-route-walk'
UNKNOWN_ID = '1795999999-00000-000000'
# The fields a route may look at; each names nothing that exists.
FIELDS = {'id': UNKNOWN_ID, 'attempt': '1', 'worker': 'w', 'to': 'front', 'olderThan': '36500',
          'path': 'tasks/in/nothing', 'step1': 'nosuchtool', 'step1.fileIn0': 'x', 'fileIn0': 'x'}
NOT_A_TOOL = 'nosuchtool'
FOREIGN_ORIGIN = {'Origin': 'http://evil.example', 'Sec-Fetch-Site': 'cross-site'}
BROWSER = {'User-Agent': 'Mozilla/5.0 (X11; Linux x86_64) route walk'}


# The name each path route is walked with below its prefix: none of a task,
# a page's file that is there (rrc/web/assets.py).
PATH_NAMES = {'/ui/': 'app.css'}


def declared():
    """(name, service or path, route) of every route in the table: each service,
    a tool's submission, the page, the files below /tasks/ and /ui/."""
    walk = [(name, name, found) for name, found in routes.SERVICES.items()]
    walk.append(('a task (submit)', NOT_A_TOOL, routes.SUBMIT))
    walk.append(('the page', '', routes.PAGE))
    walk += [(prefix, prefix + PATH_NAMES.get(prefix, UNKNOWN_ID), found) for prefix, found in routes.PATH_ROUTES]
    return walk


def answered_methods(found):
    """The methods a route answers, HEAD with GET."""
    return [*found.methods, *(('HEAD',) if GET in found.methods else ())]


def requests_of(target, found, methods):
    """(id, method, target, body) of a request of ``target`` by each of ``methods``:
    a POST of a service both with its name in the query (as workers send it) and in the body."""
    out = []
    for method in methods:
        if target.startswith('/') or found is routes.PAGE:
            target = target or '/'  # the page: a browser's bare GET of /
            out.append((method, method, target, '' if method == POST else None))
        elif method == POST:
            out.append(('POST, service in the query', POST, f'/?service={target}', encode(FIELDS)))
            if found.token == Token.CLIENT:  # a worker names its service in the query (below)
                out.append(('POST, service in the body', POST, '/', encode(dict(FIELDS, service=target))))
        else:
            out.append((method, method, f'/?{encode(dict(FIELDS, service=target))}', None))
    return out


def encode(fields):
    from urllib.parse import urlencode
    return urlencode(fields)


def cases(only_changing, methods_of):
    return [pytest.param(method, target, body, found, id=f'{name}: {what}')
            for name, target_name, found in declared() if found.changes_state or not only_changing
            for what, method, target, body in requests_of(target_name, found, methods_of(found))]


@pytest.fixture(scope='module')
def server():
    config = f'token = {TOKEN}\nworkerToken = {WORKER_TOKEN}\n'
    with deploy.running(deploy.deployment('wsgi', config=config)) as running:
        yield running


def send(server, method, target, body, headers=(), found=None, token=True):
    """(status, headers dict, text) of one request; the token the route needs, unless ``token`` is False."""
    sent = dict(BROWSER) if found is routes.PAGE else {}  # the page is a browser's
    sent.update(headers)
    if token:
        sent.update({'X-RRCloud-Worker-Token': WORKER_TOKEN} if found.token == Token.WORKER
                    else {'Authorization': f'Bearer {TOKEN}'})
    if body is not None:
        sent['Content-Type'] = 'application/x-www-form-urlencoded'
    if found is not None and found.streams == Streams.EVENTS and method == GET:
        status, answer_headers, data = stream_opening(server, target, sent)
    else:
        status, answer_headers, data = server.request_raw(method, target, body, sent)
    return status, {k.lower(): v for k, v in answer_headers}, data.decode('utf-8', 'replace')


def stream_opening(server, target, headers):
    """(status, headers, first chunk) of a GET whose answer may be a stream
    without an end (service=changes): only its opening is read, then it is closed."""
    from inprocess import build_environ
    environ = build_environ(GET, target, [('Host', f'127.0.0.1:{server.port}'), *headers.items()], None,
                            '127.0.0.1', server.port)
    started = []
    chunks = server.application(environ, lambda status, answer_headers, exc_info=None: started.extend(
        [int(status.split()[0]), answer_headers]))
    try:
        first = next(iter(chunks), b'')
    finally:
        if hasattr(chunks, 'close'):
            chunks.close()
    return started[0], started[1], first


@pytest.mark.parametrize('method, target, body, found', cases(True, answered_methods))
def test_a_state_changing_route_refuses_a_foreign_origin(server, method, target, body, found):
    status, _, text = send(server, method, target, body, FOREIGN_ORIGIN, found)
    assert refused(status, text, method, 'allowOrigins'), (status, text)


def refused(status, text, method, words):
    """403 naming ``words`` (a HEAD's answer has no body to name them)."""
    return status == 403 and (method == 'HEAD' or words in text)


@pytest.mark.parametrize('method, target, body, found', cases(True, answered_methods))
def test_a_state_changing_route_refuses_a_name_not_its_own(server, method, target, body, found):
    """DNS rebinding: a page whose name was pointed at this server sends its own name."""
    status, _, text = send(server, method, target, body, {'Host': f'evil.example:{server.port}'}, found)
    assert refused(status, text, method, 'allowHosts'), (status, text)


@pytest.mark.parametrize('method, target, body, found', cases(True, answered_methods))
def test_a_state_changing_route_refuses_a_request_without_its_token(server, method, target, body, found):
    status, headers, text = send(server, method, target, body, found=found, token=False)
    if found.token == Token.WORKER:
        assert refused(status, text, method, 'worker token'), (status, text)
    else:
        assert status == 401 and 'realm="rrcloud"' in headers.get('www-authenticate', ''), (status, text)


@pytest.mark.parametrize('method, target, body, found',
                         [case for case in cases(False, answered_methods)
                          if not case.values[3].changes_state])
def test_a_read_stays_open_to_other_origins(server, method, target, body, found):
    """0.019's CORS: a page of any origin may read (it is refused nothing for its origin)."""
    status, headers, text = send(server, method, target, body, FOREIGN_ORIGIN, found)
    if method == POST:  # a POST may change anything its body names: checked whatever it names
        assert refused(status, text, method, 'allowOrigins'), (status, text)
    else:
        assert status != 403, (status, text)
        assert headers['access-control-allow-origin'] == '*'


@pytest.mark.parametrize('method, target, body, found', cases(False, answered_methods))
def test_a_route_answers_the_methods_it_declares(server, method, target, body, found):
    status, _, text = send(server, method, target, body, found=found)
    assert status not in (401, 403, 405), (status, text)
    if found.streams != Streams.EVENTS:  # no task: an event stream is 404 here (test_sse.py streams)
        assert status < 500, (status, text)


def refused_methods(found):
    """The methods a route refuses; the page's only (a GET) is / by any other method, a POST of / is the API's."""
    if found is routes.PAGE:
        return []
    return [method for method in ('GET', 'HEAD', 'POST') if not found.answers(method)]


@pytest.mark.parametrize('method, target, body, found', cases(False, refused_methods))
def test_a_route_refuses_the_methods_it_does_not_declare(server, method, target, body, found):
    status, headers, text = send(server, method, target, body, found=found)
    assert status == 405, (status, text)
    assert headers['allow'].split(', ')[:len(found.methods)] == list(found.methods), headers
    if method != 'HEAD':
        assert f'is a {found.methods[0]}' in text and f'not a {method}' in text, text


@pytest.mark.parametrize('name', [name for name, found in routes.SERVICES.items() if found.token == Token.WORKER])
def test_a_worker_route_named_in_a_posts_body_is_refused_whatever_tokens_come(server, name):
    """The query names the route access checks before the body is read; the router checks again."""
    headers = {'Authorization': f'Bearer {TOKEN}', 'X-RRCloud-Worker-Token': WORKER_TOKEN}
    status, _, text = send(server, POST, '/', encode(dict(FIELDS, service=name)), headers, token=False)
    assert status == 403 and 'worker token' in text, (status, text)


def test_other_methods_are_405_and_options_is_the_cors_preflight(server):
    for method in ('PUT', 'DELETE', 'PATCH'):
        status, _, text = send(server, method, '/?service=info', None, found=routes.SERVICES['info'])
        assert status == 405 and method in text, (status, text)
    status, headers, _ = send(server, 'OPTIONS', '/?service=kill', None, found=routes.SERVICES['kill'])
    assert status == 204 and headers['access-control-allow-methods'] == 'GET, POST, OPTIONS'


def test_the_page_is_a_browsers_get(server):
    status, headers, _ = send(server, GET, '/', None, BROWSER, routes.PAGE)
    assert status == 200 and headers['content-type'].startswith('text/html')
    assert routes.PAGE == Route(routes.PAGE.handler, (GET,), False, Token.NONE, Streams.NO)


def tokenless_cases():
    return [case for case in cases(False, answered_methods) if case.values[3].token == Token.NONE]


@pytest.mark.parametrize('method, target, body, found', tokenless_cases())
def test_a_route_that_needs_no_token_answers_without_it(server, method, target, body, found):
    """The page's shell and files: a browser loads them before it can ask for the token."""
    status, _, text = send(server, method, target, body, found=found, token=False)
    assert status == 200, (status, text)


def test_only_the_page_and_its_files_need_no_token():
    tokenless = [name for name, _, found in declared() if found.token == Token.NONE]
    assert tokenless == ['the page', '/ui/']
    assert all(found.token != Token.NONE for found in routes.SERVICES.values())


def test_a_read_that_is_not_the_page_still_needs_the_token(server):
    """A bare GET without a browser's User-Agent (curl, 0.019) is info: its records need the token."""
    status, _, _ = send(server, GET, '/', None, found=routes.SERVICES['info'], token=False)
    assert status == 401
    status, _, _ = send(server, GET, '/?format=json', None, BROWSER, found=routes.SERVICES['info'], token=False)
    assert status == 401


# -- the table itself -------------------------------------------------------------------

def test_0_019s_controls_answer_a_get_and_a_post():
    """0.019's clients kill with a GET: every control keeps both, and so do the reads."""
    for name in ('info', 'meta', 'kill', 'suspend', 'resume', 'move', 'remove', 'clean',
                 'pause', 'cancel', 'stop', 'events', 'history', 'printers'):
        assert routes.SERVICES[name].methods == (GET, POST), name
    assert routes.SUBMIT.methods == routes.SERVICES['pipe'].methods == (POST,)


def test_the_worker_routes_are_the_worker_tokens_only():
    workers = {name for name, found in routes.SERVICES.items() if found.token == Token.WORKER}
    assert workers == {'workclaim', 'workinput', 'workupdate', 'workdone'}


def test_the_streaming_routes_are_declared():
    streams = {name: found.streams for name, found in routes.SERVICES.items() if found.streams != Streams.NO}
    assert streams == {'events': Streams.EVENTS, 'changes': Streams.EVENTS, 'info': Streams.HELD,
                       'pipe': Streams.HELD}
    assert routes.SUBMIT.streams == Streams.HELD


def test_a_route_cannot_be_declared_without_a_fact_or_with_a_wrong_one():
    def handler(app, request):
        pass
    with pytest.raises(TypeError):
        Route(handler, (GET,), True, Token.CLIENT)  # streams forgotten
    with pytest.raises(TypeError):
        Route(handler, (POST,), token=Token.CLIENT, streams=Streams.NO)  # changes_state forgotten
    for bad in [('PUT',), (), (GET, GET)]:
        with pytest.raises(ValueError):
            Route(handler, bad, True, Token.CLIENT, Streams.NO)
    with pytest.raises(ValueError):
        Route(handler, (GET,), 'yes', Token.CLIENT, Streams.NO)
    with pytest.raises(ValueError):
        Route(handler, (GET,), True, 'none', Streams.NO)
    with pytest.raises(ValueError):
        Route(handler, (GET,), True, Token.CLIENT, 'sometimes')
    for methods, changes in [((GET,), True), ((POST,), False), ((GET, POST), False)]:
        with pytest.raises(ValueError):  # no token: only a GET that changes nothing
            Route(handler, methods, changes, Token.NONE, Streams.NO)


def test_the_table_cannot_be_changed_at_run_time():
    with pytest.raises(TypeError):
        routes.SERVICES['kill'] = routes.SERVICES['info']
    with pytest.raises(AttributeError):
        routes.SERVICES['kill'].changes_state = False
