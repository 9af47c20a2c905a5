"""Reading what a task's record says: its inputs with their preargs, its parameters.

A record is data many processes write: these readers check what they read
and refuse (UsageError) what rrcloud would not have written.
"""

from .errors import UsageError
from .schema import Field


def record_params(record):
    """The (option, value) pairs of a record's ``params`` field; UsageError when it is not such a list."""
    if not record.get(Field.PARAMS):
        return []
    import json
    try:
        pairs = json.loads(record[Field.PARAMS])
    except ValueError:
        pairs = None
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) for w in p) for p in pairs):
        raise UsageError('its params are not a list of (option, value) pairs')
    return [tuple(pair) for pair in pairs]


def stored_inputs(record):
    """(prearg, store path) of each input of a record, in order ('' for no
    prearg); UsageError when the two lists do not match."""
    paths = [path for path in record.get(Field.IN, '').split(',') if path]
    preargs = record[Field.PREARGS].split(',') if record.get(Field.PREARGS) else [''] * len(paths)
    if len(preargs) != len(paths):
        raise UsageError('its inputs and preargs do not match')
    return list(zip(preargs, paths))
