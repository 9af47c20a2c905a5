"""The flat-file task store: layout, records, task ids, concurrency, retention.

Everything runs against real temp folders; the concurrency tests use real
child processes (``python -c``) that import rrcloud and hit the same store.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from rrc.errors import UsageError
from rrc.names import check_task_id
from rrc.states import count_tasks
from rrc.store import Store, format_record, new_unique_name, parse_record
from conftest import DATA, REPO, task_id_of, wait_until_done, write_config, make_service

ID_RE = re.compile(r'\A[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}\Z')
UNKNOWN_ID = '1795841292-04767-953464'
ECHO_FIELDS = {'id', 'service', 'status', 'ctime', 'etime', 'pid', 'cmd', 'in', 'out',
               'client', 'server', 'sizeIn', 'sizeOut', 'exitCode'}


def info_text(root, task_id):
    """The raw text of tasks/info/ID."""
    return (Path(root) / 'tasks' / 'info' / task_id).read_text(encoding='utf-8')


def files_in(root, folder):
    """Names in tasks/FOLDER."""
    return sorted(os.listdir(Path(root) / 'tasks' / folder))


def start_python(script, *args):
    """A real child Python process running ``script`` with rrcloud importable."""
    return subprocess.Popen([sys.executable, '-c', script, str(REPO), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child, timeout=60):
    """Wait for a child started by start_python; fail the test when it failed."""
    out, err = child.communicate(timeout=timeout)
    assert child.returncode == 0, err
    return out


###############################################################################
# 1. Layout of the store after a real submission
###############################################################################

@pytest.mark.parametrize('command, code', [
    (('info',), 0),
    (('meta',), 0),
    (('info', UNKNOWN_ID), 3),
    (('kill', UNKNOWN_ID), 3),
])
def test_looking_at_a_fresh_folder_writes_nothing(cli, workdir, command, code):
    result = cli(*command)
    assert result.code == code, result
    assert os.listdir(workdir) == [], 'the store is created with the first task, not before'


def test_first_task_creates_the_store_folders(cli, workdir):
    assert cli('info').code == 0
    assert not (workdir / 'tasks').exists()

    result = cli('echo', 'hello world')

    assert result.code == 0, result
    for folder in ('in', 'out', 'log', 'info'):
        assert (workdir / 'tasks' / folder).is_dir(), folder


def test_echo_task_record_file_holds_sorted_key_value_lines(cli, workdir):
    result = cli('echo', 'hello world')
    task_id = task_id_of(result.out)
    assert ID_RE.match(task_id)
    wait_until_done(workdir, task_id)

    text = info_text(workdir, task_id)

    assert text.endswith('\n')
    lines = text.splitlines()
    keys = [line.split(': ', 1)[0] for line in lines]
    assert all(re.match(r'\A[A-Za-z][A-Za-z0-9_]*: ', line) for line in lines), text
    assert keys == sorted(keys), 'keys are written sorted'
    assert len(keys) == len(set(keys)), 'each key once'
    record = parse_record(text)
    assert ECHO_FIELDS <= set(record), ECHO_FIELDS - set(record)


def test_echo_task_record_values(cli, workdir):
    task_id = task_id_of(cli('echo', 'hello world').out)
    wait_until_done(workdir, task_id)

    record = parse_record(info_text(workdir, task_id))

    stored_input = files_in(workdir, 'in')
    assert len(stored_input) == 1
    assert record['id'] == task_id
    assert record['service'] == 'echo'
    assert record['status'] == 'complete'
    assert record['exitCode'] == '0'
    assert record['in'] == f'tasks/in/{stored_input[0]}'
    assert record['out'] == f'tasks/out/{task_id}'
    assert record['cmd'] == f'cp tasks/in/{stored_input[0]} tasks/out/{task_id}'
    assert record['client'] == 'localhost'
    assert record['server'] == socket.gethostname()
    assert record['sizeIn'] == record['sizeOut'] == str(len('hello world'))
    assert record['pid'].isdigit() and int(record['pid']) > 0
    assert float(record['ctime']) <= float(record['etime']) <= time.time()


def test_raw_content_input_is_stored_with_the_services_input_extension(cli, workdir):
    task_id = task_id_of(cli('echo', 'hello world').out)
    wait_until_done(workdir, task_id)

    (name,) = files_in(workdir, 'in')
    unique, ext = name.rsplit('.', 1)
    assert ID_RE.match(unique) and ext == 'txt', name
    assert (workdir / 'tasks' / 'in' / name).read_text() == 'hello world'
    assert files_in(workdir, 'out') == [task_id]
    assert (workdir / 'tasks' / 'out' / task_id).read_text() == 'hello world'
    assert files_in(workdir, 'log') == [task_id]
    assert files_in(workdir, 'info') == [task_id]


def test_input_file_is_copied_keeping_its_extension(cli, workdir):
    source = DATA / 'cube.scad'
    task_id = task_id_of(cli('echo', str(source)).out)
    record = wait_until_done(workdir, task_id)

    (name,) = files_in(workdir, 'in')
    assert name.endswith('.scad') and ID_RE.match(name[:-len('.scad')]), name
    assert record['in'] == f'tasks/in/{name}'
    assert (workdir / 'tasks' / 'in' / name).read_bytes() == source.read_bytes()
    assert (workdir / 'tasks' / 'out' / task_id).read_bytes() == source.read_bytes()
    assert (workdir / 'tasks' / 'log' / task_id).is_file()
    assert source.read_bytes() == (REPO / 'tests' / 'data' / 'cube.scad').read_bytes(), 'source untouched'


###############################################################################
# 2. format_record / parse_record
###############################################################################

def test_format_record_writes_sorted_key_value_lines():
    assert format_record({'status': 'busy', 'id': UNKNOWN_ID, 'pid': 42}) == (
        f'id: {UNKNOWN_ID}\npid: 42\nstatus: busy\n')


@pytest.mark.parametrize('value', ['a\nb', 'a\rb', 'a\0b', 'busy\nstatus: complete',
                                   'x\r\nerror: forged', 'end\n'])
def test_format_record_refuses_line_breaks_and_nul_in_values(value):
    with pytest.raises(ValueError):
        format_record({'id': UNKNOWN_ID, 'args': value})


@pytest.mark.parametrize('key', ['', 'a b', 'a:b', 'status: complete', 'a\nb', 'x\0',
                                 '1st', '_x', '-x', 'ä', 'a' * 65, ' id', 'id '])
def test_format_record_refuses_bad_keys(key):
    with pytest.raises(ValueError):
        format_record({key: 'value'})


@pytest.mark.parametrize('record', [
    {},
    {'id': UNKNOWN_ID, 'status': 'busy'},
    {'cmd': 'openscad tasks/in/1.scad -otasks/out/2.stl', 'in': 'tasks/in/a.conf,tasks/in/b.stl'},
    {'args': 'key: value: more', 'note': 'colons : inside', 'empty': ''},
    {'name': 'Würfel 20 € – ✓', 'url': 'http://example.org/done?id=$id&x=1'},
    {'A': '1', 'Z9_z': 'tab\tinside'},
])
def test_parse_inverts_format_for_ordinary_records(record):
    assert parse_record(format_record(record)) == record


KEYS = st.from_regex(r'\A[A-Za-z][A-Za-z0-9_]{0,20}\Z', fullmatch=True)
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40).map(str.strip)


@given(st.dictionaries(KEYS, PRINTABLE, max_size=12))
def test_parse_inverts_format_for_any_printable_record(record):
    assert parse_record(format_record(record)) == record


# Characters str.splitlines() breaks on besides \n and \r.
OTHER_LINE_BREAKS = ['\x0b', '\x0c', '\x1c', '\x1d', '\x1e', '\x85', '\u2028', '\u2029']


@pytest.mark.parametrize('brk', OTHER_LINE_BREAKS, ids=[hex(ord(c)) for c in OTHER_LINE_BREAKS])
def test_no_key_can_be_forged_through_any_line_break(brk):
    record = {'id': UNKNOWN_ID, 'args': f'hello{brk}error: forged'}
    try:
        text = format_record(record)
    except ValueError:
        return  # refusing the value is fine
    assert parse_record(text) == record, 'a value must never become a second key'


@given(st.dictionaries(KEYS, st.text(max_size=30), max_size=6))
def test_format_either_refuses_or_round_trips_any_text(record):
    try:
        text = format_record(record)
    except ValueError:
        return
    assert parse_record(text) == record


def test_content_on_the_command_line_cannot_add_a_field(cli, workdir):
    result = cli('echo', 'hello\u2028error: forged')
    if result.code != 0:  # refusing the content is an acceptable answer
        assert result.code == 2 and result.err.startswith('rrcloud: error: '), result
        assert not (workdir / 'tasks' / 'info').exists() or files_in(workdir, 'info') == []
        return
    task_id = task_id_of(result.out)
    record = wait_until_done(workdir, task_id)
    assert record['status'] == 'complete'
    assert 'error' not in record
    assert 'error: forged' not in cli('info', task_id).out.split('\n')


###############################################################################
# 3. Task ids
###############################################################################

@pytest.mark.parametrize('bad', [
    '../../etc/passwd', 'a\0b', '', ' 1795841292-04767-953464', '1795841292-04767-953464 ',
    '1795841292-04767-953464\n', '1795841292-04767-953464/..', '%2e%2e%2f',
    '1795841292-04767-9534640', '17958412920-04767-953464', '1795841292-047670-953464',
    '1795841292-04767-953464' * 3, '9' * 10000, '1361787153-093541', '0795841292-04767-953464',
    '1795841292_04767_953464', '１795841292-04767-953464', None, b'1795841292-04767-953464',
])
def test_check_task_id_refuses(bad):
    with pytest.raises(UsageError):
        check_task_id(bad)


def test_check_task_id_accepts_fresh_names():
    for _ in range(1000):
        name = new_unique_name()
        assert check_task_id(name) == name


@pytest.mark.parametrize('command', [
    ('info', '../../etc/passwd'),
    ('kill', '../x'),
    ('info', '%2e%2e%2f'),
    ('kill', '1361787153-093541'),
])
def test_cli_refuses_a_bad_id_in_one_line(cli, workdir, command):
    result = cli(*command)

    assert result.code == 2
    assert result.out == ''
    assert result.err.startswith('rrcloud: error: ')
    assert result.err.count('\n') == 1 and result.err.endswith('\n'), result.err
    assert os.listdir(workdir) == []


def test_cli_info_of_a_valid_unknown_id_is_not_found(cli):
    result = cli('info', UNKNOWN_ID)

    assert result.code == 3
    assert result.out == ''
    assert result.err.startswith('rrcloud: error: ') and UNKNOWN_ID in result.err
    assert result.err.count('\n') == 1


###############################################################################
# 4. A reader never sees a torn record
###############################################################################

REWRITER = r'''
import json, sys
sys.path.insert(0, sys.argv[1])
from rrc.store import Store
store = Store(sys.argv[2])
records = json.loads(sys.argv[3])
for n in range(1000):
    store.write_task(records[n % 2])
print('wrote', n + 1)
'''


@pytest.mark.slow
def test_reader_never_sees_a_torn_record_while_it_is_rewritten(tmp_path):
    store = Store(tmp_path)
    short = store.create_task(lambda i: {'service': 'echo', 'status': 'busy',
                                         'ctime': '1795841292.04767'})
    long = dict(short, status='complete', etime='1795841299.00001', exitCode='0',
                error='x' * 3000, cmd='cp ' + 'tasks/in/a.txt ' * 100 + 'tasks/out/b')
    texts = {format_record(short), format_record(long)}
    assert len({len(t) for t in texts}) == 2
    path = Path(store.info_path(short['id']))

    writer = start_python(REWRITER, tmp_path, json.dumps([long, short]))
    seen, reads = set(), 0
    while writer.poll() is None:
        text = path.read_text(encoding='utf-8')
        reads += 1
        assert text in texts, f'torn read after {reads} reads: {text[:200]!r}'
        assert parse_record(text) in (short, long)
        seen.add(text)
    assert finish(writer).split() == ['wrote', '1000']

    assert seen == texts, 'the reads overlapped the writes (both versions were seen)'
    assert store.read_task(short['id']) == short, 'the last write (number 1000) wins'
    assert [n for n in os.listdir(store.folder('info')) if n.startswith('.')] == []


###############################################################################
# 5. Concurrent task creation
###############################################################################

CREATOR = r'''
import os, sys, time
sys.path.insert(0, sys.argv[1])
from rrc.store import Store
root, worker, count, go = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
store = Store(root)
open(os.path.join(go + '.ready.' + worker), 'w').close()
while not os.path.exists(go):
    time.sleep(0.001)
for seq in range(count):
    record = store.create_task(lambda task_id: {'service': 'echo', 'status': 'busy',
                                                'worker': worker, 'seq': str(seq),
                                                'note': 'n' * (seq * 7)})
    print(record['id'])
'''


def expected_record(task_id, worker, seq):
    return {'id': task_id, 'service': 'echo', 'status': 'busy',
            'worker': str(worker), 'seq': str(seq), 'note': 'n' * (seq * 7)}


def test_200_concurrent_creations_give_200_distinct_ids(tmp_path):
    root, gate = tmp_path / 'store', tmp_path / 'go'
    root.mkdir()
    workers, per_worker = 8, 25
    children = [start_python(CREATOR, root, w, per_worker, gate) for w in range(workers)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob('go.ready.*'))) < workers:
        assert time.monotonic() < deadline, 'children did not start'
        time.sleep(0.005)
    gate.touch()  # all children start creating at once

    ids_by_worker = {w: finish(child).split() for w, child in enumerate(children)}

    all_ids = [i for ids in ids_by_worker.values() for i in ids]
    assert len(all_ids) == workers * per_worker == 200
    assert len(set(all_ids)) == 200
    assert all(ID_RE.match(i) for i in all_ids)
    info = root / 'tasks' / 'info'
    assert sorted(os.listdir(info)) == sorted(all_ids), 'no temp file left, nothing else'
    for worker, ids in ids_by_worker.items():
        for seq, task_id in enumerate(ids):
            expected = expected_record(task_id, worker, seq)
            assert (info / task_id).read_text() == format_record(expected)
            assert Store(root).read_task(task_id) == expected


###############################################################################
# 6. Retention
###############################################################################

def finished_echo(cli, workdir, content):
    task_id = task_id_of(cli('echo', content).out)
    return wait_until_done(workdir, task_id)


def task_files(workdir, record):
    """Every file a task owns: info, log, inputs, output."""
    paths = [workdir / 'tasks' / 'info' / record['id'], workdir / 'tasks' / 'log' / record['id']]
    paths += [workdir / p for p in record['in'].split(',')]
    if record.get('out'):
        paths.append(workdir / record['out'])
    return paths


def age(workdir, task_id, hours, *fields):
    """Move a task's times ``hours`` into the past."""
    past = f'{time.time() - hours * 3600:.5f}'
    Store(workdir).update_task(task_id, {f: past for f in fields})


def listed_ids(output):
    return {line[len('=== id: '):] for line in output.splitlines() if line.startswith('=== id: ')}


def test_listing_removes_tasks_that_ended_before_the_retention_time(cli, workdir):
    write_config(workdir, 'maxDataRetention = 1\n')
    make_service(workdir, 'fails', 'cmd = sh\npath = /usr/bin:/bin\ninputExt = sh\n')
    make_service(workdir, 'slow', 'cmd = sh\npath = /usr/bin:/bin\nnoOutput = yes\n')
    old_complete = finished_echo(cli, workdir, 'old result')
    young_complete = finished_echo(cli, workdir, 'young result')
    # fails after writing a partial result, so it owns an output file too
    old_failed = wait_until_done(workdir, task_id_of(cli('fails', 'echo partial > "$1"; exit 3').out))
    assert old_failed['status'] == 'failed' and old_failed['exitCode'] == '3'
    busy_id = task_id_of(cli('slow', 'sleep 30').out)
    try:
        deadline = time.monotonic() + 30
        while 'pid' not in Store(workdir).read_task(busy_id):
            assert time.monotonic() < deadline, 'slow task never started'
            time.sleep(0.02)
        age(workdir, old_complete['id'], 2, 'etime')
        age(workdir, old_failed['id'], 2, 'etime')
        age(workdir, young_complete['id'], 0.5, 'etime')
        age(workdir, busy_id, 3, 'ctime', 'stime')  # running longer than the retention
        busy = Store(workdir).read_task(busy_id)
        for record in (old_complete, young_complete, old_failed, busy):
            assert all(p.is_file() for p in task_files(workdir, record)), record['id']

        result = cli('info')

        assert result.code == 0, result
        assert listed_ids(result.out) == {young_complete['id'], busy_id}
        for gone in (old_complete, old_failed):
            for path in task_files(workdir, gone):
                assert not path.exists(), f'{path} of expired task {gone["id"]} is left'
        for kept in (young_complete, busy):
            assert all(p.is_file() for p in task_files(workdir, kept)), kept['id']
        assert Store(workdir).read_task(busy_id)['status'] == 'busy'
        assert cli('info', old_complete['id']).code == 3
        assert cli('info', young_complete['id']).code == 0
    finally:
        cli('kill', busy_id)



def test_the_task_count_of_meta_follows_every_change_of_a_quiet_store(tmp_path):
    # A resident server keeps the count while tasks/info is unchanged; any
    # record added or removed (even with the folder's mtime set back) shows.
    store = Store(str(tmp_path))
    record = lambda task_id: {'service': 'echo', 'status': 'complete'}  # noqa: E731
    ids = [store.create_task(record)['id'] for _ in range(3)]
    info = tmp_path / 'tasks' / 'info'
    long_ago = time.time() - 3600
    os.utime(info, (long_ago, long_ago))
    assert count_tasks(store) == 3
    assert count_tasks(store) == 3  # from the cache
    (info / ids[0]).unlink()
    assert count_tasks(store) == 2
    os.utime(info, (long_ago + 1, long_ago + 1))
    assert count_tasks(store) == 2
    store.create_task(record)
    store.create_task(record)
    assert count_tasks(store) == 4


###############################################################################
# 7. Removing a tree a tool wrote (tasks/work/ID)
###############################################################################

def test_remove_tree_takes_a_very_deep_tree_and_never_follows_a_link(tmp_path):
    from rrc.trees import remove_tree
    outside = tmp_path / 'outside'
    (outside / 'keep').mkdir(parents=True)
    (outside / 'keep' / 'file').write_text('not the tool\'s\n')
    tree = tmp_path / 'work'
    deepest = os.open(tmp_path, os.O_RDONLY)
    for name in ['work'] + ['d'] * 3000:  # beyond Python's recursion limit
        os.mkdir(name, dir_fd=deepest)
        below = os.open(name, os.O_RDONLY, dir_fd=deepest)
        os.close(deepest)
        deepest = below
    os.symlink(outside, 'to-outside', dir_fd=deepest)
    os.close(deepest)
    os.symlink(outside / 'keep', tree / 'keep')
    os.symlink(outside / 'keep' / 'file', tree / 'file')

    assert remove_tree(tree) == []

    assert not os.path.lexists(tree)
    assert (outside / 'keep' / 'file').read_text() == 'not the tool\'s\n'
    assert remove_tree(tree) == []  # gone already: nothing to say


# As root (the tests' user) nothing resists: root ignores permissions.  The
# server runs as www-data, which owns what its tools write (their sandbox
# maps uid 65534 to it), so remove_tree runs as www-data here.
AS_WWW_DATA = '''
import json, os, sys
sys.path.insert(0, sys.argv[1])
from rrc.trees import remove_tree
os.chdir(sys.argv[2])
os.makedirs('work/locked/inner')
for folder in ('work/locked/inner', 'work/locked'):
    open(os.path.join(folder, 'f'), 'w').close()
os.makedirs('work/readonly')
open('work/readonly/f', 'w').close()
os.chmod('work/locked/inner', 0)
os.chmod('work/locked', 0)
os.chmod('work/readonly', 0o500)
print(json.dumps(remove_tree('work')))
'''


def test_remove_tree_unlocks_folders_it_owns_and_names_what_it_cannot_remove():
    import shutil
    import tempfile
    from deploy import WEB_PYTHON, www_data
    uid, gid = www_data()
    root = Path(tempfile.mkdtemp(prefix='rrcloud-tree-', dir='/tmp'))  # www-data cannot enter tmp_path
    try:
        os.chown(root, uid, gid)
        (root / 'work' / 'theirs').mkdir(parents=True)  # root's: www-data may not unlock it
        (root / 'work' / 'theirs' / 'f').write_text('root\'s\n')
        os.chmod(root / 'work' / 'theirs', 0)
        os.chown(root / 'work', uid, gid)
        done = subprocess.run([WEB_PYTHON, '-B', '-c', AS_WWW_DATA, str(REPO), str(root)], user=uid, group=gid,
                              capture_output=True, text=True, timeout=60)

        assert done.returncode == 0, done.stderr
        assert sorted(json.loads(done.stdout)) == ['work', 'work/theirs']
        assert sorted(os.listdir(root / 'work')) == ['theirs']
        assert os.listdir(root / 'work' / 'theirs') == ['f']
    finally:
        shutil.rmtree(root)
