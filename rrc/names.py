"""The checks for what a client sends: ids, service names, record keys, extensions, form fields, addresses.

The hot checks are plain string tests, and they are the definitions: a CGI
request that needs no pattern pays no ``re`` import (about 2 ms a request,
measured with ``python -X importtime``).  tests/test_properties.py holds the
regular expressions each agrees with, as oracles, and checks them against
any text.  The rarer checks keep a LazyPattern, compiled on first use."""

from .errors import UsageError


class LazyPattern:
    """A regular expression compiled, and ``re`` imported, on first use: the
    two cost a CGI request about 2 ms, and most requests need no pattern (the
    hot checks below are plain string tests, each tested against its pattern)."""

    def __init__(self, source, flags=0):
        self.source, self.flags, self.compiled = source, flags, None

    @property
    def pattern(self):
        return self.source

    def __getattr__(self, name):  # match, sub, finditer, ...
        if name.startswith('__') or name in ('source', 'flags', 'compiled'):
            raise AttributeError(name)  # copy and pickle probe before __init__ ran
        if self.compiled is None:
            import re
            self.compiled = re.compile(self.source, self.flags)
        return getattr(self.compiled, name)


DIGITS = frozenset('0123456789')
LOWER = frozenset('abcdefghijklmnopqrstuvwxyz')
LETTERS = LOWER | frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZ')
ALNUM = LETTERS | DIGITS
WORD_CHARS = ALNUM | {'_'}
SERVICE_CHARS = LOWER | DIGITS | {'_'}
# What may follow an allowed native-argument prefix: no path separators, no
# whitespace, nothing a shell or the tool could read as a second argument.
NATIVE_VALUE_RE = LazyPattern(r'\A[A-Za-z0-9._,:%+=-]{0,200}\Z')


def is_task_id(text):
    """A task id: <unix seconds>-<5 digits of the second's fraction>-<6 random
    digits>, the seconds not starting with 0 (23 characters)."""
    return (len(text) == 23 and text[10] == '-' and text[16] == '-' and text[0] != '0'
            and DIGITS.issuperset(text[:10] + text[11:16] + text[17:]))


def is_service_name(text):
    """A service name: a lower-case letter, then up to 31 lower-case letters, digits or ``_``."""
    return 0 < len(text) <= 32 and text[0] in LOWER and SERVICE_CHARS.issuperset(text)


def is_record_key(text):
    """A record key: an ASCII letter, then up to 63 ASCII letters, digits or ``_``."""
    return 0 < len(text) <= 64 and text[0] in LETTERS and WORD_CHARS.issuperset(text)


def is_extension(text):
    """A file extension: 1 to 12 ASCII letters or digits."""
    return 0 < len(text) <= 12 and ALNUM.issuperset(text)


def split_config_line(line):
    """(key, value) of ``key = value`` / ``key: value``, or None: the key is
    what precedes the first ``:`` or ``=`` (no space inside it), both stripped."""
    cut = min((i for i in (line.find(':'), line.find('=')) if i >= 0), default=-1)
    if cut < 0:
        return None
    key = line[:cut].strip()
    if not key or any(c.isspace() or c in ':=' for c in key):
        return None
    return key, line[cut + 1:].strip()


def check_task_id(task_id):
    """Return ``task_id`` if it has the one valid shape, else raise UsageError."""
    if not isinstance(task_id, str) or not is_task_id(task_id):
        raise UsageError(f'bad task id: {task_id!r}')
    return task_id


def is_single_line(value):
    """True when ``value`` holds no line break of any kind (as str.splitlines sees them) and no NUL."""
    return '\0' not in value and (value == '' or value.splitlines() == [value])


# `in` is what 0.019's synchronous client posts beside its uploads: its own
# local input paths.  It is checked like any text field and never used.
NAMED_FIELDS = frozenset(('service', 'nativeArgs', 'outExt', 'notifier', 'format', 'id', 'wait', 'token', 'in',
                          'notifierEvents', 'priority', 'to',
                          'cache',  # cache=no: the result cache neither asked nor given the result (rrc/cache.py)
                          'olderThan',  # service=clean: days
                          'since',  # service=history: days
                          'lastEventId',  # service=events, changes: the cursor of a client that cannot send Last-Event-ID
                          'limit', 'before', 'status', 'of',  # service=tasks: a page of the list (rrc/web/tasklist.py)
                          # a farm's workers (rrc/web/workroutes.py)
                          'worker', 'attempt', 'path', 'log', 'events', 'ending', 'result', 'sender',
                          'toolVersions'))
NUMBERED_FIELDS = ('fileIn', 'prearg', 'arg', 'param')


# The fields of one step of a pipe, after ``stepN.`` (``step2.fileIn0``, ``step3.server``).
STEP_NAMED_FIELDS = frozenset(('nativeArgs', 'outExt', 'server'))


def is_form_field(key):
    """A form or query field rrcloud knows: a named one, or fileIn/prearg/arg/param
    with a number of 1 to 3 ASCII digits; a pipe's ``stepN`` and ``stepN.FIELD``."""
    if key in NAMED_FIELDS:
        return True
    if key.startswith('step'):
        return is_step_field(key)
    return is_numbered_field(key)


def is_step_field(key):
    """``stepN`` (a step's service) or ``stepN.FIELD`` (a field of that step's task)."""
    number, dot, field = key[4:].partition('.')
    if not (0 < len(number) <= 3 and DIGITS.issuperset(number)):
        return False
    return not dot or field in STEP_NAMED_FIELDS or is_numbered_field(field)


def is_numbered_field(key):
    """fileIn/prearg/arg/param with a number of 1 to 3 ASCII digits."""
    for prefix in NUMBERED_FIELDS:
        if key.startswith(prefix):
            number = key[len(prefix):]
            return 0 < len(number) <= 3 and DIGITS.issuperset(number)
    return False


OUT_NAME_RE = LazyPattern(r'\A[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z')


def address_in(address, networks):
    """True when the IP ``address`` lies in one of ``networks`` (an IPv4-mapped IPv6 counts as IPv4)."""
    fast = _ipv4_in(address, networks)
    if fast is not None:
        return fast
    import ipaddress
    try:
        ip = ipaddress.ip_address(address.split('%', 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def is_ipv4_network(text):
    """True for a plain IPv4 network, ``a.b.c.d`` or ``a.b.c.d/n`` (ASCII
    digits, n up to 32, host bits allowed), checked without importing
    ipaddress (10 ms of a runner's start: its settings name networks)."""
    base, slash, bits = text.partition('/')
    parts = base.split('.')
    if len(parts) != 4 or not all(_is_octet(p) for p in parts):
        return False
    return not slash or (0 < len(bits) <= 2 and DIGITS.issuperset(bits) and int(bits) <= 32)


def _is_octet(text):
    """0 to 255 in ASCII digits, without a leading zero (ipaddress refuses those: octal or decimal?)."""
    return 0 < len(text) <= 3 and DIGITS.issuperset(text) and int(text) < 256 and (text == '0' or text[0] != '0')


def _ipv4_in(address, networks):
    """address_in for a dotted IPv4 address and IPv4 networks without importing ipaddress
    (0.7 ms of every CGI request); None when either side is not plain IPv4."""
    def as_int(dotted):
        parts = dotted.split('.')
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
            return None
        return int.from_bytes(bytes(int(p) for p in parts), 'big')
    ip = as_int(address)
    if ip is None:
        return None
    for network in networks:
        base, _, bits = network.partition('/')
        base_int = as_int(base)
        if ':' in base:
            continue  # an IPv6 network holds no plain IPv4 address
        if base_int is None or (bits and not bits.isdigit()):
            return None
        shift = 32 - int(bits or 32)
        if ip >> shift == base_int >> shift:
            return True
    return False
