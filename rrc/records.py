"""Reading what a task's record says: its inputs with their preargs, its native arguments, its parameters.

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


def native_field(words):
    """A record's ``nativeArgs``: the words joined by spaces, as 0.019 wrote
    them; a JSON list when a word holds a space (``--colorscheme=Tomorrow
    Night``), so a value keeps its words together."""
    if any(not word or ' ' in word or word.startswith('[') for word in words):
        import json
        return json.dumps(list(words), ensure_ascii=True)
    return ' '.join(words)


def record_native(record):
    """The native arguments of a record (either form of native_field); UsageError
    for a JSON value that is not a list of strings."""
    text = record.get(Field.NATIVE_ARGS, '')
    if not text.startswith('['):
        return text.split()
    import json
    try:
        words = json.loads(text)
    except ValueError:
        words = None
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise UsageError('its nativeArgs are not a list of words')
    return words
