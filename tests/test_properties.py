"""Property tests (issue 6, item 6): the record format and task ids, under any input.

- Any dict of keys and values either round-trips through the record format
  exactly or is refused with ValueError: never a silently different dict,
  never an extra key.  The same through the store, where a refused write
  leaves the earlier record as it was.
- Any id string is either of the one valid shape or refused with UsageError
  before a file is touched: reading a task by an arbitrary string creates
  nothing and opens nothing but ``tasks/info/<valid id>``.
- ``is_single_line`` is exactly "one line as str.splitlines sees it, no NUL".

Files are real (temp folders).  What the store opens is observed through
Python's audit hooks (the real open/mkdir calls), not mocks.
"""
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rrc.errors import NotFound, UsageError
from rrc import names
from rrc.names import check_task_id, is_single_line, split_config_line
from rrc.store import Store, format_record, parse_record
from rrc.web.request import percent_decode

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXED_ID = '1795841292-04767-953464'
# Every character str.splitlines breaks at.
LINE_BREAKS = '\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029'
AWKWARD = list(LINE_BREAKS) + ['\0', ' ', '\t', '\u00a0', '\u3000', '\ufeff', ':', ': ', '\ud800', '\udfff',
                               '\r\n', 'é', '\U0001f600']

# -- strategies ---------------------------------------------------------------

awkward_char = st.sampled_from(AWKWARD)  # a character or a short fragment
# Text mixing any characters (surrogates too) with the awkward fragments.
any_text = st.lists(st.one_of(st.characters(), st.characters(categories=('Cs',)), awkward_char),
                    max_size=30).map(''.join)
surrounding = st.text(alphabet=st.sampled_from([' ', '\t', '\u00a0', '\u3000', '\x0b', '\n']), max_size=2)
values = st.one_of(
    any_text,
    st.builds(lambda a, b, c: a + b + c, surrounding, any_text, surrounding),
    st.text(alphabet=st.characters(blacklist_categories=('Cs',)), max_size=20),
    st.from_regex(r'\A[ -~]{0,20}\Z'),  # plain printable ASCII: the common case
)
plausible_keys = st.from_regex(r'\A[A-Za-z][A-Za-z0-9_]{0,12}\Z')
keys = st.one_of(
    any_text,
    plausible_keys,
    st.builds(lambda k, c: k + c, plausible_keys, awkward_char),  # a good key with one bad character
    st.sampled_from(['id', 'status', 'a: b', 'a:b', 'status: complete', '', ' status', 'é', 'A' * 64, 'A' * 65]),
)
records = st.dictionaries(keys, values, max_size=6)
# Mostly plausible records, so that the round-trip branch is well exercised.
good_records = st.dictionaries(plausible_keys, st.from_regex(r'\A([!-~]([ -~]{0,20}[!-~])?)?\Z'), max_size=6)

digits = st.text(alphabet='0123456789', min_size=0, max_size=12)
id_like = st.builds(lambda a, b, c, s1, s2: f'{a}{s1}{b}{s2}{c}', digits, digits, digits,
                    st.sampled_from(['-', '_', '/', '']), st.sampled_from(['-', '.', '']))
valid_ids = st.from_regex(r'\A[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}\Z')
task_id_strings = st.one_of(
    any_text,
    id_like,
    valid_ids,
    st.builds(lambda v, c, i: v[:i] + c + v[i:], valid_ids, awkward_char | st.characters(),
              st.integers(0, 23)),  # a valid id with one character inserted
    st.builds(lambda v, c, i: v[:i] + c + v[i + 1:], valid_ids, st.characters(categories=('Nd', 'No', 'Nl')),
              st.integers(0, 22)),  # a valid id with one character replaced by some digit
    st.builds(lambda p, v: p + v, st.sampled_from(['../', '/', './', '..\\', 'info/', '%2e%2e%2f']), valid_ids),
    st.sampled_from(['../../etc/passwd', '/etc/passwd', '..', '.', '', '%2e%2e%2f', 'a' * 5000,
                     f'{FIXED_ID}\n', f'{FIXED_ID}\0', f'../info/{FIXED_ID}', f' {FIXED_ID}',
                     '١٧٩٥٨٤١٢٩٢-٠٤٧٦٧-٩٥٣٤٦٤', '1795841292-٠٤٧٦٧-953464', '1795841292-04767-95346４',
                     '0795841292-04767-953464', '../../secret']),
)


def documented_id_shape(value):
    """``<unix seconds>-<5 digits>-<6 digits>``: ten ASCII digits (no leading 0), five, six."""
    if not isinstance(value, str):
        return False
    parts = value.split('-')
    ascii_digits = set('0123456789')
    return (len(parts) == 3 and [len(p) for p in parts] == [10, 5, 6]
            and all(set(p) <= ascii_digits for p in parts) and parts[0][0] != '0')


# -- file-system calls of this thread, seen through audit hooks ---------------

_AUDIT = {'thread': None, 'events': None}


def _audit_hook(event, args):
    if _AUDIT['events'] is not None and threading.get_ident() == _AUDIT['thread'] \
            and (event == 'open' or event.startswith('os.') or event.startswith('shutil.')):
        _AUDIT['events'].append((event, args))


sys.addaudithook(_audit_hook)


class file_calls:
    """``with file_calls() as calls:`` -> [(event, args), ...] of this thread."""

    def __enter__(self):
        _AUDIT['thread'], _AUDIT['events'] = threading.get_ident(), []
        return _AUDIT['events']

    def __exit__(self, *exc):
        _AUDIT['thread'], _AUDIT['events'] = None, None


def tree(root):
    """Every path under ``root`` (folders and files), with file contents."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = Path(path).read_bytes()
    return found


###############################################################################
# The record format
###############################################################################

def check_round_trip(record):
    try:
        text = format_record(record)
    except ValueError:
        return None
    parsed = parse_record(text)
    assert parsed == record, (record, text, parsed)
    assert list(parsed) == sorted(record)
    # one "key: value" line per key, nothing else
    assert text.count('\n') == len(record) and (text == '' or text.endswith('\n')), text
    assert text.splitlines() == [f'{k}: {record[k]}' for k in sorted(record)], text
    return text


@pytest.mark.slow
@SETTINGS
@given(records)
@example({'status': 'busy\nstatus: complete'})
@example({'status': 'busy\rstatus: complete'})
@example({'status': 'busy\u2028status: complete'})
@example({'status': 'busy\x85status: complete'})
@example({'error': 'x\0y'})
@example({'a': ' padded '})
@example({'a: b': 'c'})
@example({'a': ''})
@example({'a': ':'})
@example({'a': 'b: c'})
@example({'a': '\ud800'})
def test_record_round_trips_exactly_or_is_refused(record):
    before = dict(record)
    check_round_trip(record)
    assert record == before  # never changed in place


@SETTINGS
@given(good_records)
def test_plausible_records_round_trip(record):
    assert check_round_trip(record) is not None, record


@SETTINGS
@given(records)
def test_refusal_names_the_reason(record):
    try:
        format_record(record)
    except ValueError as exc:
        assert 'record' in str(exc), exc
        bad_keys = [k for k in record if not re.fullmatch(r'[A-Za-z][A-Za-z0-9_]{0,63}', k)]
        bad_values = [k for k, v in record.items()
                      if not is_single_line(v) or v != v.strip()]
        assert bad_keys or bad_values, record
    else:
        assert all(re.fullmatch(r'[A-Za-z][A-Za-z0-9_]{0,63}', k) for k in record), record
        assert all(not any(c in LINE_BREAKS + '\0' for c in v) and v == v.strip() for v in record.values())


###############################################################################
# The record format through the store
###############################################################################

MEMORY_FOLDER = '/dev/shm' if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK) else None
PREVIOUS = {'id': FIXED_ID, 'service': 'echo', 'status': 'busy', 'notifier': 'http://192.168.1.10/x?id=$id'}


@SETTINGS
@given(records)
@example({'status': 'busy\nstatus: complete'})
@example({'status': 'busy\r\nstatus: complete'})
@example({'status': '\ud800'})
@example({'status': 'complete', 'etime': '1.5'})
def test_store_round_trips_or_refuses_and_keeps_the_previous_record(record):
    record = dict(record, id=FIXED_ID)
    # In memory where there is a tmpfs: 300 examples of two fsynced writes
    # each wait on a disk that the other test workers keep busy.
    with tempfile.TemporaryDirectory(dir=MEMORY_FOLDER) as tmp:
        store = Store(tmp)
        store.ensure()
        store.write_task(dict(PREVIOUS))
        info = Path(store.info_path(FIXED_ID))
        previous_bytes = info.read_bytes()
        try:
            store.write_task(record)
        except ValueError:
            assert store.read_task(FIXED_ID) == PREVIOUS
            assert info.read_bytes() == previous_bytes
        else:
            assert store.read_task(FIXED_ID) == record
        assert os.listdir(store.folder('info')) == [FIXED_ID]  # no temp file left behind


###############################################################################
# Task ids
###############################################################################

@SETTINGS
@given(task_id_strings)
def test_any_id_is_valid_or_refused(value):
    if documented_id_shape(value):
        assert check_task_id(value) == value
    else:
        with pytest.raises(UsageError):
            check_task_id(value)


@pytest.mark.parametrize('value', [None, 1795841292, b'1795841292-04767-953464', ['1795841292-04767-953464']])
def test_a_non_string_id_is_refused(value):
    with pytest.raises(UsageError):
        check_task_id(value)


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
    """A store with one real task, next to a file outside it that parses as a record."""
    base = tmp_path_factory.mktemp('ids')
    (base / 'secret').write_text('leak: yes\n')
    (base / 'outside').mkdir()
    (base / 'outside' / FIXED_ID).write_text('leak: yes\n')
    store = Store(base / 'root')
    store.ensure()
    store.write_task({'id': FIXED_ID, 'status': 'complete'})
    return base, store


@SETTINGS
@given(task_id_strings)
@example('../../secret')
@example(f'../../outside/{FIXED_ID}')
@example(f'/{FIXED_ID}')
@example(FIXED_ID)
def test_reading_any_id_touches_nothing_but_its_own_record(planted, value):
    base, store = planted
    before = tree(base)
    with file_calls() as calls:
        try:
            record = store.read_task(value)
        except NotFound:
            record = None
            outcome = 'not found'
        except UsageError:
            record = None
            outcome = 'refused'
        else:
            outcome = 'found'
        events = list(calls)
    assert tree(base) == before  # nothing created, nothing changed
    if documented_id_shape(value):
        assert outcome in ('found', 'not found')
        assert [(event, args[0]) for event, args in events] == [('open', store.info_path(value))]
        assert os.path.dirname(store.info_path(value)) == store.folder('info')
        assert (record == {'id': FIXED_ID, 'status': 'complete'}) == (value == FIXED_ID)
    else:
        assert outcome == 'refused', (value, outcome, record)
        assert events == [], events  # refused before any file is touched


@SETTINGS
@given(task_id_strings)
def test_an_arbitrary_id_creates_nothing_in_a_missing_store(value):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / 'root'
        store = Store(root)
        with pytest.raises((NotFound, UsageError)):
            store.read_task(value)
        assert not root.exists()
        assert os.listdir(tmp) == []


###############################################################################
# is_single_line
###############################################################################

@SETTINGS
@given(st.one_of(any_text, values))
@example('')
@example('\0')
@example('a\r\nb')
@example('\n')
@example('x\x1cy')
@example('\u2028')
@example('\ufeff')
def test_is_single_line_matches_splitlines(value):
    expected = (value == '' or value.splitlines() == [value]) and '\0' not in value
    assert is_single_line(value) is expected
    assert expected == (not any(c in LINE_BREAKS + '\0' for c in value))


###############################################################################
# The string checks of the hot path agree with their patterns
###############################################################################

# The oracles: what each string check in rrc/names.py must agree with.
# <unix seconds>-<5 digits of the second's fraction>-<6 random digits>
TASK_ID_RE = re.compile(r'\A[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}\Z')
SERVICE_NAME_RE = re.compile(r'\A[a-z][a-z0-9_]{0,31}\Z')
RECORD_KEY_RE = re.compile(r'\A[A-Za-z][A-Za-z0-9_]{0,63}\Z')
EXTENSION_RE = re.compile(r'\A[A-Za-z0-9]{1,12}\Z')
FORM_FIELD_RE = re.compile(r'\A(service|fileIn[0-9]{1,3}|prearg[0-9]{1,3}|arg[0-9]{1,3}|param[0-9]{1,3}'
                           r'|nativeArgs|outExt|notifier|notifierEvents|format|id|wait|token|in|priority|to'
                           r'|step[0-9]{1,3}(\.(fileIn[0-9]{1,3}|prearg[0-9]{1,3}|arg[0-9]{1,3}|param[0-9]{1,3}'
                           r'|nativeArgs|outExt|server))?)\Z')
CONFIG_LINE_RE = re.compile(r'\A\s*([^\s:=]+)\s*[:=]\s*(.*?)\s*\Z')


def _pattern_says(pattern, value):
    return pattern.match(value) is not None


names_like = st.one_of(any_text, plausible_keys, st.from_regex(r'\A[a-z][a-z0-9_]{0,40}\Z'),
                       st.from_regex(r'\A[A-Za-z0-9]{0,14}\Z'),
                       st.sampled_from(['', 'a' * 32, 'a' * 33, 'A' * 64, 'A' * 65, 'x' * 12, 'x' * 13,
                                        'stl', 'é', 'a\n', '_a', '1a', 'fileIn0', 'fileIn1000', 'arg',
                                        'prearg12', 'fileIn٣', 'service', 'services', 'token ', 'in', 'in0',
                                        'inn', 'i', 'notifierEvents', 'notifierEvent', 'step1', 'step',
                                        'step0001', 'step2.server', 'step2.', 'step1.fileIn0', 'step1.step1',
                                        'step١', 'priority', 'to', 'top']),
                       st.from_regex(r'\Astep[0-9٣]{0,4}(\.[A-Za-z]{0,10}[0-9]{0,4})?\Z'))
FAST_CHECKS = [('is_task_id', TASK_ID_RE), ('is_service_name', SERVICE_NAME_RE),
               ('is_record_key', RECORD_KEY_RE), ('is_extension', EXTENSION_RE),
               ('is_form_field', FORM_FIELD_RE)]


@pytest.mark.parametrize('check, pattern', FAST_CHECKS, ids=[name for name, _ in FAST_CHECKS])
@SETTINGS
@given(value=st.one_of(task_id_strings, names_like))
def test_each_string_check_agrees_with_its_pattern(check, pattern, value):
    assert getattr(names, check)(value) == _pattern_says(pattern, value), value


config_lines = st.builds(lambda a, k, b, sep, c, v, d: a + k + b + sep + c + v + d,
                         surrounding, st.one_of(plausible_keys, any_text), surrounding,
                         st.sampled_from([':', '=', ': ', ' = ', '::', '=:', ' ', '']),
                         surrounding, values, surrounding)


@SETTINGS
@given(line=st.one_of(config_lines, any_text))
def test_config_line_split_agrees_with_its_pattern(line):
    assume('\n' not in line)  # the file is split into lines first
    match = CONFIG_LINE_RE.match(line)
    assert split_config_line(line) == (match.groups() if match else None), line


def _quoted(text):
    from urllib.parse import quote_plus
    return quote_plus(text.encode('utf-8', 'surrogatepass'))


@SETTINGS
@given(text=st.one_of(st.from_regex(r'\A[ -~]{0,30}\Z'), any_text.map(_quoted),
                      st.builds(lambda a, b: a + b, any_text.map(_quoted), st.from_regex(r'\A[ -~]{0,8}\Z'))))
def test_query_decoding_agrees_with_urllib(text):
    # A query string reaches the app as ASCII (browsers and curl escape the rest).
    from urllib.parse import unquote_plus
    assert percent_decode(text) == unquote_plus(text, errors='replace'), text


@SETTINGS
@given(st.one_of(st.from_regex(r'\A[0-9]{1,4}(\.[0-9]{1,4}){3}(/[0-9]{1,3})?\Z'),
                 st.from_regex(r'\A[0-9٣.:/a-f]{0,20}\Z'), any_text))
@example('10.0.0.0/8')
@example('010.0.0.1')
@example('1.2.3.4/33')
@example('1.2.3.4/08')
def test_the_fast_ipv4_network_check_agrees_with_ipaddress(text):
    """config's network lists skip ipaddress for plain IPv4 networks: the
    fast check says yes only where ipaddress takes the text as IPv4."""
    import ipaddress
    from rrc.names import is_ipv4_network
    try:
        taken = isinstance(ipaddress.ip_network(text, strict=False), ipaddress.IPv4Network)
    except ValueError:
        taken = False
    if is_ipv4_network(text):  # (a no leaves the text to ipaddress itself)
        assert taken, text


def test_the_fast_ipv4_network_check_takes_the_usual_forms():
    from rrc.names import is_ipv4_network
    assert all(is_ipv4_network(t) for t in ('127.0.0.0/8', '10.0.0.0/8', '192.168.1.20', '0.0.0.0/0', '1.2.3.4/32'))
    assert not any(is_ipv4_network(t) for t in ('::1/128', '010.0.0.1', '1.2.3.4/33', '1.2.3/24', '1.2.3.4/٣'))

