"""The routes a farm's workers use (``backend = rq``), no one else:
each needs the worker token (declared ``Token.WORKER`` in rrc/web/routes.py,
with its method: the router and ``web/access`` refuse anyone else, and
another method, before these run).

    POST ?service=workclaim  id=ID worker=NAME [toolVersions=S=V,...]  take a task: its record (with the run's
                                                          number, attempt), settings, input files
    GET  ?service=workinput&id=ID&attempt=N&path=tasks/in/...   one input file of the run's task
    POST ?service=workupdate  id=ID attempt=N [sender=yes]  its log's new bytes (log), progress (events, JSON lines),
                                                          a print's sender runs; answers whether it was killed,
                                                          suspended (a print: paused), a print's cancel or stop
    POST ?service=workdone  id=ID attempt=N               how it ended (ending: JSON of status, error,
                                                          exitCode, progress), its result

The service is named in the query (the worker token opens these routes
and no other: ``web/access``), the rest in the body of a POST.  The work
itself is ``rrc/farmwork.py``'s; a run that is not the task's current one
gets 409, and its worker stops; a claim of a run whose worker is silent but
not yet judged lost gets 503, and the worker asks again.
"""

from ..errors import HTTPError
from ..names import check_task_id
from ..schema import Field, TaskStatus
from ..store import to_json
from .request import Response

JSON = 'application/json'


def check_farm(app):
    """404 unless this server is a farm's front-end (the router checked the
    worker token and the method already)."""
    if app.config.backend != 'rq':
        raise HTTPError(404, 'this server is no farm\'s front-end (backend = local)')


def answer_json(data):
    """A JSON answer (workers read JSON only)."""
    return Response(to_json(data, sort_keys=True) + '\n', 200, JSON)


def task_and_attempt(request, app):
    """The task id and run number a worker's request names (a farm's front-end only)."""
    check_farm(app)
    attempt = request.form.get('attempt', '')
    if not (attempt.isdigit() and 0 < len(attempt) < 6):
        raise HTTPError(400, 'attempt is a run number, 1 or more')
    return check_task_id(request.form.get('id', '')), int(attempt)


def answer_workclaim(app, request):
    """A worker takes a task (queued, or running under a lost worker's earlier run)."""
    from ..farmwork import claim, input_files
    check_farm(app)
    record, settings = claim(app.store, app.config, check_task_id(request.form.get('id', '')),
                             request.form.get('worker', ''), request.form.get('toolVersions', ''))
    return answer_json({'record': record, 'settings': settings, 'inputs': input_files(app.store, record)})


def answer_workinput(app, request):
    """One file of a task's inputs, to the worker whose run it is."""
    from ..farmwork import input_of_run
    handle = open(input_of_run(app.store, *task_and_attempt(request, app), request.form.get('path', '')), 'rb')
    return Response(handle, 200, 'application/octet-stream')


def answer_workupdate(app, request):
    """A worker's news of its task; the answer says whether it goes on."""
    from ..farmwork import control_fields, parse_events, take_update
    task_id, attempt = task_and_attempt(request, app)
    log, events = (request.files.get(name) for name in ('log', 'events'))
    record = take_update(app.store, app.config, task_id, attempt, log.file.read() if log else b'',
                         parse_events(events.file.read().decode('utf-8', 'replace') if events else ''),
                         sender=request.form.get('sender') == 'yes')
    return answer_json(control_fields(record))


def answer_workdone(app, request):
    """How a worker's task ended, and its result."""
    from ..farmwork import ending_fields, finish
    task_id, attempt = task_and_attempt(request, app)
    ending = read_json_part(request, 'ending')
    status = ending.get(Field.STATUS)
    if status not in (TaskStatus.COMPLETE, TaskStatus.FAILED):
        raise HTTPError(400, 'status is complete or failed')
    result = request.files.get('result')
    final = finish(app.store, app.config, task_id, attempt, status, ending_fields(ending),
                   result.file if result else None)
    return answer_json({Field.ID: final[Field.ID], Field.STATUS: final[Field.STATUS]})


def read_json_part(request, name, limit=65536):
    """A JSON object sent as the file part ``name`` (a worker's text fields may
    be longer than a client's ``maxFieldLength``)."""
    import json
    part = request.files.get(name)
    try:
        data = json.loads(part.file.read(limit)) if part else {}
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise HTTPError(400, f'{name} is a JSON object')
    return data
