"""The routes a farm's workers use (``backend = rq``), no one else:
each needs the worker token (``web/access.check_worker``).

    POST ?service=workclaim&id=ID&worker=NAME&attempt=N   take a task: its record, settings, input files
    GET  ?service=workinput&id=ID&path=tasks/in/...       one input file of that task
    POST ?service=workupdate&id=ID&attempt=N              its log's new bytes (log), progress (events, JSON lines);
                                                          answers whether it was killed or suspended
    POST ?service=workdone&id=ID&attempt=N                how it ended (ending: JSON of status, error,
                                                          exitCode, progress), its result

The work itself is ``rrc/farmwork.py``'s; a run that is not the task's
current one gets 409, and its worker stops.
"""

from ..errors import HTTPError
from ..names import check_task_id
from ..schema import Field, TaskStatus
from ..store import to_json
from .access import check_worker
from .request import Response

JSON = 'application/json'


def answer_json(data):
    """A JSON answer (workers read JSON only)."""
    return Response(to_json(data, sort_keys=True) + '\n', 200, JSON)


def task_and_attempt(request):
    """The task id and run number a worker's request names."""
    check_worker(request)
    attempt = request.form.get('attempt', '')
    if not (attempt.isdigit() and 0 < len(attempt) < 6):
        raise HTTPError(400, 'attempt is a run number, 1 or more')
    return check_task_id(request.form.get('id', '')), int(attempt)


def answer_workclaim(app, request):
    """A worker takes a task (queued, or running under an earlier attempt)."""
    from ..farmwork import claim, input_files
    task_id, attempt = task_and_attempt(request)
    record, settings = claim(app.store, task_id, request.form.get('worker', ''), attempt)
    return answer_json({'record': record, 'settings': settings, 'inputs': input_files(app.store, record)})


def answer_workinput(app, request):
    """One file of a task's inputs, to the worker that runs it."""
    from ..farmwork import input_file
    check_worker(request)
    record = app.store.read_task(check_task_id(request.form.get('id', '')))
    handle = open(input_file(app.store, record, request.form.get('path', '')), 'rb')
    return Response(handle, 200, 'application/octet-stream')


def answer_workupdate(app, request):
    """A worker's news of its task; the answer says whether it goes on."""
    from ..farmwork import control_fields, parse_events, take_update
    task_id, attempt = task_and_attempt(request)
    log, events = (request.files.get(name) for name in ('log', 'events'))
    record = take_update(app.store, task_id, attempt, log.file.read() if log else b'',
                         parse_events(events.file.read().decode('utf-8', 'replace') if events else ''))
    return answer_json(control_fields(record))


def answer_workdone(app, request):
    """How a worker's task ended, and its result."""
    from ..farmwork import ending_fields, finish
    task_id, attempt = task_and_attempt(request)
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


WORK_ROUTES = {'workclaim': answer_workclaim, 'workinput': answer_workinput,
               'workupdate': answer_workupdate, 'workdone': answer_workdone}
