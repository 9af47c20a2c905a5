"""Faults and slow clients: crashes, a full disk, kill racing completion, load, idle connections.

Everything here is real: ``rrcloud.py serve`` processes (the
``embedded_server`` fixture) on free loopback ports, detached runners and tools, SIGKILL sent with os.kill,
a 2 MB tmpfs mounted as a store root (the suite runs as root), a CLI process
under RLIMIT_FSIZE, raw TCP sockets that never finish a request.  No mocks.

What a user would see is asserted, and what must not happen: no record torn
or lost, nothing left busy, no temp file left behind, no tool left running,
no earlier record changed, no second final state.  Counts and timings are
printed (run with -s to see them); speed is never asserted.
"""
import contextlib
import io
import json
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

import rrcloud
from rrc import VERSION_STRING
from rrc.config import host_name
from rrc.errors import ExitCode
from rrc.names import is_task_id
from rrc.procs import process_is, process_start_time
from rrc.recovery import TEMP_FILE_MAX_AGE
from rrc.store import Store, format_record, new_unique_name, parse_record
from conftest import REPO, task_id_of
from helpers import SH_SERVICE, dead_pid, plain_session, post_task, wait_for
# Files a store may hold whose names start with a dot and are not temp files.
STORE_DOT_FILES = {'.lock', '.recovered', '.toolversions'}
DEADLINE = 60  # generous: waiting is fine, timing is never asserted


###############################################################################
# Helpers
###############################################################################

def id_from_answer(text):
    """The id of a text answer (``key: value`` lines)."""
    record = parse_record(text)
    assert is_task_id(record.get('id', '')), text
    return record['id']


def raw_records(root):
    """{id: bytes} of every record file in ROOT/tasks/info, read without reconciling."""
    folder = Path(root) / 'tasks' / 'info'
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.name.startswith('.'):
            try:
                found[path.name] = path.read_bytes()
            except FileNotFoundError:  # removed meanwhile (retention)
                continue
    return found


def raw_record(root, task_id):
    """One record as a dict, read from disk without reconciling (None when missing)."""
    try:
        return parse_record((Path(root) / 'tasks' / 'info' / task_id).read_text())
    except FileNotFoundError:
        return None


def store_files(root):
    """{relative path: bytes} of every regular file under ROOT/tasks (slots and .lock aside)."""
    tasks = Path(root) / 'tasks'
    found = {}
    for folder, _, names in os.walk(tasks):
        for name in names:
            path = Path(folder) / name
            relative = str(path.relative_to(tasks))
            if relative.startswith('slots/') or name in STORE_DOT_FILES:
                continue
            found[relative] = path.read_bytes()
    return found


def temp_files(root):
    """Every name under ROOT/tasks that starts with a dot, STORE_DOT_FILES aside."""
    found = []
    for folder, dirs, names in os.walk(Path(root) / 'tasks'):
        for name in names + dirs:
            if name.startswith('.') and name not in STORE_DOT_FILES:
                found.append(os.path.join(folder, name))
    return found


def process_state(pid):
    """The state letter of a process from /proc (None when it is gone)."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rfind(')') + 2]


def alive(pid):
    """True when ``pid`` runs (a zombie counts as gone)."""
    return process_state(pid) not in (None, 'Z', 'X')


def store_processes(root, exclude=()):
    """Live processes whose working folder is the store root (runners and tools), as (pid, cmdline)."""
    root = os.path.realpath(root)
    exclude = set(exclude) | {os.getpid()}
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            if os.readlink(f'/proc/{entry}/cwd') != root or not alive(int(entry)):
                continue
            command = Path(f'/proc/{entry}/cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
        except OSError:
            continue
        found.append((int(entry), command.strip()))
    return found


def kill_server(server):
    """SIGKILL the ``rrcloud serve`` process (only it: its runners live in their own sessions)."""
    if server.process and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)


def restart(server):
    """SIGKILL the server, then start it again on the same port and store (startup recovers)."""
    kill_server(server)
    server.start()


def one_line(text):
    """True when ``text`` is exactly one non-empty line (a trailing newline allowed)."""
    return bool(text.strip()) and len(text.rstrip('\n').split('\n')) == 1


def server_log_problems(server):
    """Lines of the server's log that show an internal error or a traceback."""
    text = server.log.read_text(errors='replace') if server.log.exists() else ''
    return [line for line in text.splitlines() if 'internal error' in line or 'Traceback' in line]


def echo_content(number):
    return f'echo task {number} {"x" * (number % 50)}\n'


###############################################################################
# 1. SIGKILL of runners and of the server during 200 submissions
###############################################################################

CHAOS_SUBMISSIONS = 200
CHAOS_SLOW_SHARE = 0.15  # the rest are echo tasks
CHAOS_PHASE_LIMIT = 180  # seconds for the 200 submissions to be taken
VICTIM_SCRIPT = 'sleep 300\necho done > "$1"\n'


def live_runners(root):
    """{task id: runner pid} of busy tasks whose recorded runner is alive and really theirs."""
    runners = {}
    folder = Path(root) / 'tasks' / 'running'
    for task_id in os.listdir(folder) if folder.is_dir() else ():
        record = raw_record(root, task_id) if is_task_id(task_id) else None
        if record and record.get('status') == 'busy' and record.get('runner') \
                and process_is(record['runner'], record.get('runnerStart')):
            runners[task_id] = int(record['runner'])
    return runners


def runners_of(task_id):
    """Pids of live ``rrcloud _run ID`` processes (also one the record does not name yet)."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                command = Path(f'/proc/{entry}/cmdline').read_bytes().split(b'\0')
            except OSError:
                continue
            if b'_run' in command and task_id.encode() in command and alive(int(entry)):
                found.append(int(entry))
    return found


@pytest.mark.slow
def test_sigkill_of_runners_and_server_during_200_submissions_loses_nothing(tmp_path, embedded_server):
    seed = random.randrange(1 << 30)
    print(f'\n[chaos] seed {seed}')
    root = tmp_path / 'store'
    server = embedded_server('maxTasks = 4\n', {'slow': SH_SERVICE}, root=root, start=False)
    accepted = {}          # id -> (service, content) of every submission answered 200
    answers = Counter()    # how submissions were answered
    kills = Counter()
    errors = []            # exceptions of the two threads
    stop = threading.Event()
    started = time.monotonic()
    try:
        server.start()
        # A long task first: its runner is the likeliest victim, and at the end
        # its orphaned tool must be killed by recovery.
        answer = post_task(server, 'slow', VICTIM_SCRIPT, 'victim.sh')
        assert answer.status_code == 200, answer.text
        victim = id_from_answer(answer.text)
        accepted[victim] = ('slow', VICTIM_SCRIPT)

        def submitter():
            rng = random.Random(seed)
            number = 0
            session = plain_session()
            deadline = time.monotonic() + CHAOS_PHASE_LIMIT
            while len(accepted) < CHAOS_SUBMISSIONS and time.monotonic() < deadline and not stop.is_set():
                if rng.random() < CHAOS_SLOW_SHARE:
                    service, content = 'slow', f'sleep {rng.uniform(0.5, 3):.2f}\necho done > "$1"\n'
                else:
                    service, content = 'echo', echo_content(number)
                number += 1
                try:
                    answer = post_task(server, service, content, timeout=20, session=session)
                except requests.RequestException:
                    answers['connection error'] += 1
                    session = plain_session()
                    time.sleep(0.05)
                    continue
                answers[answer.status_code] += 1
                if answer.status_code == 200:
                    accepted[id_from_answer(answer.text)] = (service, content)
                else:
                    errors.append(AssertionError(f'submission answered {answer.status_code}: {answer.text!r}'))
                time.sleep(rng.uniform(0, 0.06))  # spread the submissions over the kills

        def killer():
            rng = random.Random(seed + 1)
            while not stop.is_set():
                time.sleep(rng.uniform(0.2, 0.5))
                if stop.is_set():
                    return
                runners = live_runners(root)
                if rng.random() < 1 / 3:
                    kill_server(server)
                    kills['server'] += 1
                    kills['temp files seen after a server kill'] += len(temp_files(root))
                    server.start()  # startup recovery removes what the dead wrote half
                elif runners:
                    task_id = rng.choice(sorted(runners))
                    try:
                        os.kill(runners[task_id], signal.SIGKILL)
                        kills['runner'] += 1
                        kills['victim runner'] += task_id == victim
                    except ProcessLookupError:
                        pass

        def guarded(function):
            def run():
                try:
                    function()
                except BaseException as exc:  # surfaced by the main thread
                    errors.append(exc)
                    stop.set()
            return run

        threads = [threading.Thread(target=guarded(f), daemon=True) for f in (submitter, killer)]
        for thread in threads:
            thread.start()
        threads[0].join(CHAOS_PHASE_LIMIT + 30)
        # The kills go on while the queue drains, so runners die at every stage.
        queue = root / 'tasks' / 'queue'
        drain_deadline = time.monotonic() + 60
        while not stop.is_set() and any(queue.iterdir()) and time.monotonic() < drain_deadline:
            time.sleep(0.1)
        stop.set()
        threads[1].join(60)
        chaos_seconds = time.monotonic() - started
        assert not errors, errors
        assert not any(thread.is_alive() for thread in threads), 'a chaos thread did not stop'
        assert len(accepted) >= CHAOS_SUBMISSIONS, (len(accepted), answers)

        # The victim's runner dies now if the chaos spared it; recovery must kill its tool.
        for pid in runners_of(victim):
            os.kill(pid, signal.SIGKILL)
            kills['victim runner'] += 1
        victim_tool = raw_record(root, victim).get('pid')

        left_by_crashes = temp_files(root)
        restart(server)  # once more: `rrcloud serve` startup runs recovery
        listing = plain_session().get(server.url, params={'service': 'info', 'format': 'json'}, timeout=30)
        assert listing.status_code == 200, listing.text
        json.loads(listing.text)

        def settled():
            records = server.list_tasks()
            return records if all(r['status'] != 'busy' for r in records) else None
        listed = wait_for(settled, 'every task leaves busy', timeout=120, interval=0.5)

        records = {name: parse_record(data.decode()) for name, data in raw_records(root).items()}
        statuses = Counter(r.get('status') for r in records.values())
        referenced = {p.split('/')[2] for r in records.values() for p in r.get('in', '').split(',') if p}
        unreferenced_inputs = sorted(set(os.listdir(root / 'tasks' / 'in')) - referenced)
        print(f'[chaos] {len(accepted)} accepted, {len(records)} records {dict(statuses)}, '
              f'answers {dict(answers)}, kills {dict(kills)}, {len(left_by_crashes)} temp files before the '
              f'last restart, {len(unreferenced_inputs)} inputs no record names, chaos {chaos_seconds:.1f} s, '
              f'total {time.monotonic() - started:.1f} s')

        # Every record parses, names itself, and is final; failures are interruptions.
        for name, record in records.items():
            assert record.get('id') == name, (name, record)
            assert record.get('status') in ('complete', 'failed'), (name, record)
            if record['status'] == 'failed':
                assert record.get('error') == 'interrupted', (name, record)
        assert {r['id'] for r in listed} == set(records)
        assert {r['id']: r['status'] for r in listed} == {n: r['status'] for n, r in records.items()}
        # Nothing acknowledged was lost; what completed holds the right result.
        assert set(accepted) <= set(records), set(accepted) - set(records)
        for task_id, (service, content) in accepted.items():
            record = records[task_id]
            if record['status'] == 'complete':
                out = (root / record['out']).read_text()
                assert out == (content if service == 'echo' else 'done\n'), (task_id, out)
        assert records[victim]['status'] == 'failed'
        # No temp file of an interrupted write is left anywhere.
        assert temp_files(root) == []
        # No tool or runner of the store outlives its task (the victim's sleep 300 included).
        wait_for(lambda: not store_processes(root, exclude=[server.process.pid]),
                 'every runner and tool of the store ends', timeout=15)
        if victim_tool:
            assert not alive(int(victim_tool))
        for record in records.values():
            assert not process_is(record.get('pid'), record.get('pidStart')), record
        assert server_log_problems(server) == []
    finally:
        stop.set()
        server.stop()


###############################################################################
# 2. Startup recovery of `rrcloud serve`
###############################################################################

def busy_record(task_id, **fields):
    """A busy echo record as a runner would have left it."""
    now = time.time() - 120
    record = {'id': task_id, 'service': 'echo', 'status': 'busy', 'ctime': f'{now:.5f}',
              'stime': f'{now + 1:.5f}', 'cmd': 'cp tasks/in/x.txt tasks/out/' + task_id,
              'in': 'tasks/in/x.txt', 'out': 'tasks/out/' + task_id, 'client': 'localhost',
              'server': host_name(), 'sizeIn': '1'}
    record.update(fields)
    return record


def plant(root, record):
    """Write a record file into ROOT/tasks/info as the store would."""
    path = Path(root) / 'tasks' / 'info' / record['id']
    path.write_text(format_record(record))
    return path


def fresh_id():
    time.sleep(0.001)
    return new_unique_name()


def test_serve_start_cleans_temp_files_and_fails_tasks_whose_runner_is_gone(tmp_path, embedded_server):
    root = tmp_path / 'store'
    server = embedded_server('', root=root, start=False)  # started once the store is laid out
    store = Store(root)
    store.ensure()
    info = Path(store.folder('info'))
    strays = []
    try:
        gone = dead_pid()
        # Temp files of interrupted writes by a dead writer (write_file_atomically, create_task) ...
        dead_temps = [info / f'.{fresh_id()}.{gone}.{new_unique_name()}.tmp',
                      info / f'.{fresh_id()}.{gone}.new',
                      Path(store.folder('in')) / f'.{fresh_id()}.txt.{gone}.part',
                      Path(store.folder('out')) / f'.{fresh_id()}.stl.{gone}.{new_unique_name()}.tmp']
        for path in dead_temps:
            path.write_text('status: comp')
        # ... and one of a writer that is still alive (this test): not left over, kept.
        live_temp = info / f'.{fresh_id()}.{os.getpid()}.{new_unique_name()}.tmp'
        live_temp.write_text('status: busy\n')

        # A finished task: never touched.
        done = plant(root, dict(busy_record(fresh_id()), status='complete', etime=f'{time.time():.5f}'))
        done_bytes = done.read_bytes()
        # A busy task whose runner is dead (a real dead pid, a wrong start time).
        runner_dead = plant(root, busy_record(fresh_id(), runner=str(gone), runnerStart='1'))
        # A busy task whose runner pid now belongs to a live unrelated process (this test).
        runner_reused = plant(root, busy_record(fresh_id(), runner=str(os.getpid()), runnerStart='1'))
        # A busy task with a dead runner and an orphaned tool group that is provably its own:
        # a real `sleep 300` in its own session, plus a second member of its group.
        # (sh starts the member in the background, then becomes the leader's `sleep 300`.)
        orphan = subprocess.Popen(['sh', '-c', 'sleep 300 & echo $!; exec sleep 300'],
                                  start_new_session=True, stdout=subprocess.PIPE, text=True)
        strays.append(orphan)
        member = int(orphan.stdout.readline())
        wait_for(lambda: Path(f'/proc/{orphan.pid}/cmdline').read_bytes() == b'sleep\x00300\x00',
                 'the orphan leader runs sleep 300')
        assert os.getpgid(member) == orphan.pid
        orphan_start = wait_for(lambda: process_start_time(orphan.pid), 'orphan start time')
        with_orphan = plant(root, busy_record(fresh_id(), runner=str(gone), runnerStart='1',
                                              pid=str(orphan.pid), pidStart=orphan_start))
        # A busy task with a dead runner whose pid matches a live unrelated process,
        # but whose recorded start time differs: that process is not the task's.
        unrelated = subprocess.Popen(['sleep', '300'], start_new_session=True)
        strays.append(unrelated)
        unrelated_start = wait_for(lambda: process_start_time(unrelated.pid), 'start time')
        with_stranger = plant(root, busy_record(fresh_id(), runner=str(gone), runnerStart='1',
                                                pid=str(unrelated.pid), pidStart=str(int(unrelated_start) + 7)))

        server.start()  # its first request is service=meta, which lists no task

        for path in dead_temps:
            assert not path.exists(), f'{path.name} of a dead writer was left'
        assert live_temp.exists(), 'a live writer\'s temp file was removed'
        assert done.read_bytes() == done_bytes
        for path in (runner_dead, runner_reused, with_orphan, with_stranger):
            record = parse_record(path.read_text())  # as written by startup, not reconciled here
            assert record['status'] == 'failed', (path.name, record)
            assert record['error'] == 'interrupted', (path.name, record)
            assert record.get('etime'), record
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        wait_for(lambda: not alive(member), 'the orphan group member dies', timeout=10)
        time.sleep(0.5)
        assert unrelated.poll() is None, 'a process whose start time differs was killed'
        assert alive(unrelated.pid)
        # What the server says agrees with the files.
        for path in (runner_dead, runner_reused, with_orphan, with_stranger):
            answer = server.info(path.name)
            assert (answer['status'], answer['error']) == ('failed', 'interrupted')
        assert server_log_problems(server) == []
    finally:
        server.stop()
        for process in strays:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_serve_start_removes_old_inputs_no_record_names(tmp_path, embedded_server):
    # A crash between storing an input and writing its record leaves the input
    # alone in tasks/in; recovery removes it once it is older than any upload.
    root = tmp_path / 'store'
    store = Store(root)
    store.ensure()
    inputs = Path(store.folder('in'))
    an_hour_and_more = time.time() - TEMP_FILE_MAX_AGE - 60

    def planted_input(name, old):
        path = inputs / name
        if name.endswith('/'):
            path.mkdir()
            (path / 'main.scad').write_text('cube(1);\n')
        else:
            path.write_text('cube(1);\n')
        if old:
            os.utime(path, (an_hour_and_more, an_hour_and_more))
        return path

    old_orphan = planted_input(f'{fresh_id()}.scad', old=True)
    old_orphan_project = planted_input(f'{fresh_id()}/', old=True)
    young_orphan = planted_input(f'{fresh_id()}.scad', old=False)  # its record may be on the way
    named = planted_input(f'{fresh_id()}.scad', old=True)
    named_project = planted_input(f'{fresh_id()}/', old=True)
    plant(root, dict(busy_record(fresh_id()), status='complete', etime=f'{time.time():.5f}',
                     **{'in': f'tasks/in/{named.name},tasks/in/{named_project.name}/main.scad'}))

    server = embedded_server('', root=root)

    assert not old_orphan.exists() and not old_orphan_project.exists()
    assert young_orphan.exists()
    assert named.exists() and (named_project / 'main.scad').exists()
    assert server_log_problems(server) == []


###############################################################################
# 2b. A tool that locks a folder of its output cannot make it outlive clean-up
###############################################################################

# The tests run as root, and root ignores permissions: a chmod 000 folder is
# no obstacle to it.  So these run the server (and its runners and tools) as
# www-data, as every shipped deployment does: the sandbox maps the tool's uid
# 65534 to www-data, so the folder it locks is www-data's own.
LOCKING_SCRIPT = 'mkdir tasks/out/x && touch tasks/out/x/f && chmod 000 tasks/out/x\necho done > "$1"\n'


@contextlib.contextmanager
def deployment_as_www_data(plant=None):
    """The embedded server as www-data (deploy.py), after ``plant(store)`` laid
    out its store; stopped and removed at the end."""
    import deploy
    deployment = deploy.Deployment('embedded', services={'sh': SH_SERVICE})
    try:
        if plant:
            plant(Store(deployment.store))
            deploy.chown_tree(deployment.store, *deploy.www_data())
        yield deployment.start()
    finally:
        deployment.close()


def test_a_folder_a_tool_locked_in_its_output_is_removed_when_the_task_ends():
    with deployment_as_www_data() as server:
        answer = post_task(server, 'sh', LOCKING_SCRIPT, filename='lock.sh')
        assert answer.status_code == 200, answer.text
        task_id = id_from_answer(answer.text)
        done = server.session.get(f'{server.url}/', params={'service': 'info', 'id': task_id, 'wait': '60',
                                                            'format': 'json'}, timeout=90).json()
        work = server.store / 'tasks' / 'work' / task_id

        assert done['status'] == 'complete', (done, server.server_log())
        assert not work.exists(), sorted(str(p) for p in work.rglob('*'))
        assert 'could not remove' not in server.session.get(f'{server.url}/tasks/log/{task_id}', timeout=30).text


def test_recovery_removes_a_locked_work_folder_a_dead_runner_left():
    """A runner died (a power cut) while its tool's output held a chmod 000
    folder: the server's start-up recovery fails the task and removes it."""
    task_id = fresh_id()

    def plant_dead_run(store):
        store.ensure()
        locked = Path(store.folder('work')) / task_id / 'x'
        locked.mkdir(parents=True)
        (locked / 'f').write_text('left by the tool\n')
        plant(store.root, busy_record(task_id, runner=str(dead_pid()), runnerStart='1'))
        locked.chmod(0)

    with deployment_as_www_data(plant_dead_run) as server:
        record = parse_record((server.store / 'tasks' / 'info' / task_id).read_text())
        work = server.store / 'tasks' / 'work' / task_id

        assert (record['status'], record['error']) == ('failed', 'interrupted'), record
        assert not work.exists(), sorted(str(p) for p in work.rglob('*'))
        assert 'could not remove' not in server.server_log()


###############################################################################
# 3. Full disk: a 2 MB tmpfs as the store root, and RLIMIT_FSIZE for the CLI
###############################################################################

FILL_SCRIPT = 'head -c 5000000 /dev/zero > "$1"\n'


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs mounted for the test (we run as root), unmounted afterwards."""
    mount = tmp_path / 'small-disk'
    mount.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m,mode=0755', 'tmpfs', str(mount)], check=True)
    try:
        yield mount
    finally:
        for _ in range(50):
            if subprocess.run(['umount', str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(['umount', '-l', str(mount)], check=True)


def free_bytes(path):
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def start_with_one_task(embedded_server, root, services=None):
    """An embedded server on ``root`` with one finished echo task; returns (server, id).
    (The test asks for ``small_disk`` before ``embedded_server``: the server stops before the disk goes.)"""
    server = embedded_server('', services, root=root)
    answer = post_task(server, 'echo', 'earlier work\n')
    assert answer.status_code == 200, answer.text
    task_id = id_from_answer(answer.text)
    assert server.wait_done(task_id)['status'] == 'complete'
    return server, task_id


def project_archive(size):
    """A main.scad.tgz project whose second file unpacks to ``size`` bytes (it compresses to little)."""
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
        for name, data in (('main.scad', b'cube(1);\n'), ('big.dat', b'\0' * size)):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize('kind', ['file', 'project'])
def test_upload_bigger_than_the_free_space_gets_507_and_leaves_the_store_as_it_was(small_disk, embedded_server, kind):
    server, earlier = start_with_one_task(embedded_server, small_disk)
    before = store_files(small_disk)
    free = free_bytes(small_disk)
    if kind == 'file':
        service, name, upload = 'echo', 'big.txt', b'x' * (free + 256 * 1024)
    else:
        service, name, upload = 'openscad', 'main.scad.tgz', project_archive(free + 256 * 1024)

    answer = post_task(server, service, upload, name, timeout=60)

    print(f'\n[disk] {kind} upload of {len(upload)} bytes ({free + 256 * 1024} stored) with {free} free: '
          f'{answer.status_code} {answer.text!r}')
    assert answer.status_code == 507, (answer.status_code, answer.text)
    assert one_line(answer.text) and answer.text.startswith('error: '), answer.text
    assert raw_record(small_disk, earlier)['status'] == 'complete'
    after = store_files(small_disk)
    assert after == before, f'left behind: {sorted(set(after) - set(before))}'
    assert free_bytes(small_disk) >= free - 64 * 1024
    # The server still answers, and the disk is usable again.
    assert plain_session().get(server.url, params={'service': 'meta'}, timeout=10).status_code == 200
    assert server.info(earlier)['status'] == 'complete'
    answer = post_task(server, 'echo', 'later work\n')
    assert answer.status_code == 200, answer.text
    assert server.wait_done(id_from_answer(answer.text))['status'] == 'complete'
    assert server_log_problems(server) == []


def test_tool_output_that_does_not_fit_fails_the_task_with_a_clear_error(small_disk, embedded_server):
    server, earlier = start_with_one_task(embedded_server, small_disk, services={'fill': SH_SERVICE})
    earlier_files = {k: v for k, v in store_files(small_disk).items() if earlier in k}
    assert len(earlier_files) >= 2  # record and output (an empty log may be missing)

    answer = post_task(server, 'fill', FILL_SCRIPT, 'fill.sh')
    assert answer.status_code == 200, answer.text
    task_id = id_from_answer(answer.text)
    last = {}

    def final():
        reply = plain_session().get(server.url, params={'service': 'info', 'id': task_id, 'format': 'json'},
                                    timeout=10)
        last.update(status_code=reply.status_code, text=reply.text)
        return reply.json() if reply.status_code == 200 and reply.json()['status'] != 'busy' else None
    try:
        record = wait_for(final, 'the task ends', timeout=30, interval=0.2)
    finally:
        print(f'\n[disk] fill task: last info answer {last}; record on disk {raw_record(small_disk, task_id)}')
    assert record['status'] == 'failed', record
    assert record.get('error') and one_line(record['error']), record
    # Clear: the error, or the task's log, names the cause.
    log_path = small_disk / 'tasks' / 'log' / task_id
    log = log_path.read_text(errors='replace') if log_path.exists() else ''
    assert 'space' in (record['error'] + log).lower(), (record, log)
    wait_for(lambda: not store_processes(small_disk, exclude=[server.process.pid]),
             'the tool and runner end', timeout=15)
    current = store_files(small_disk)
    assert {k: current.get(k) for k in earlier_files} == earlier_files
    assert plain_session().get(server.url, params={'service': 'meta'}, timeout=10).status_code == 200
    assert server.info(earlier)['status'] == 'complete'
    listing = plain_session().get(server.url, params={'service': 'info'}, timeout=10)
    assert listing.status_code == 200, listing.text
    assert server_log_problems(server) == []


def run_rrcloud(cwd, *args, file_size_limit=None, timeout=60):
    """``rrcloud ARGS`` as a real process, optionally under RLIMIT_FSIZE; returns CompletedProcess."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    env = {k: v for k, v in os.environ.items() if k not in ('RRCLOUD_CONFIG', 'GATEWAY_INTERFACE')}
    return subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if file_size_limit else None)


def test_cli_under_a_file_size_limit_reports_one_line_and_keeps_the_store(workdir):
    first = run_rrcloud(workdir, 'echo', 'earlier work here')
    assert first.returncode == 0, first
    earlier = task_id_of(first.stdout)
    wait_for(lambda: raw_record(workdir, earlier)['status'] != 'busy', 'the earlier task ends')
    assert raw_record(workdir, earlier)['status'] == 'complete'
    wait_for(lambda: not store_processes(workdir), 'the earlier runner ends', timeout=10)
    before = store_files(workdir)
    (workdir / 'big.txt').write_bytes(b'y' * (1024 * 1024))

    limited = run_rrcloud(workdir, 'echo', 'big.txt', file_size_limit=16 * 1024)

    print(f'\n[rlimit] exit {limited.returncode}, stderr {limited.stderr!r}')
    assert limited.returncode != -signal.SIGXFSZ, 'SIGXFSZ killed the CLI'
    assert limited.returncode > 0, limited
    assert 'Traceback' not in limited.stderr
    assert one_line(limited.stderr) and limited.stderr.startswith('rrcloud: error: '), limited.stderr
    assert limited.stdout == ''
    after = store_files(workdir)
    assert after == before, f'left behind: {sorted(set(after) - set(before))}'


###############################################################################
# 4. Kill racing with completion
###############################################################################

KILL_RACE_ROUNDS = 50


def kill_by_cli(root, task_id):
    """``rrcloud --dir=ROOT kill ID`` in-process (a process start would always come late)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = rrcloud.main(['rrcloud', f'--dir={root}', 'kill', task_id])
    return ('cli', code, out.getvalue() + err.getvalue())


def kill_by_http(server, task_id):
    answer = plain_session().get(server.url, params={'service': 'kill', 'id': task_id}, timeout=10)
    return ('http', answer.status_code, answer.text)


@pytest.mark.slow
def test_kill_racing_with_completion_ends_in_exactly_one_final_state(workdir, embedded_server):
    server = embedded_server('', {'nap': SH_SERVICE}, root=workdir, start=False)
    outcomes = Counter()
    finals = {}
    started = time.monotonic()
    try:
        server.start()
        session = plain_session()
        for number in range(KILL_RACE_ROUNDS):
            nap = 0.01 * (1 + number % 9)               # sleep 0.01 .. 0.09
            offset = 0.005 * ((number * 7) % 11 - 5)    # kill from 25 ms early to 25 ms late
            script = f'sleep {nap:.2f}\necho done > "$1"\n'
            answer = post_task(server, 'nap', script, 'nap.sh', session=session)
            assert answer.status_code == 200, answer.text
            task_id = id_from_answer(answer.text)
            # The tool starts when its pid is recorded (or the task already ended).
            tool = wait_for(lambda: (lambda r: r if r.get('pid') or r.get('status') != 'busy' else None)(
                raw_record(workdir, task_id)), 'the tool starts', interval=0.002)
            time.sleep(max(0.0, nap + offset))
            how, code, text = kill_by_http(server, task_id) if number % 2 else kill_by_cli(workdir, task_id)

            record = wait_for(lambda: (lambda r: r if r['status'] != 'busy' else None)(
                raw_record(workdir, task_id)), 'the task ends')
            runner = (record.get('runner'), record.get('runnerStart'))
            wait_for(lambda: not process_is(*runner), 'the runner ends', timeout=30)
            record = raw_record(workdir, task_id)
            finals[task_id] = (workdir / 'tasks' / 'info' / task_id).read_bytes()

            assert record['status'] in ('complete', 'failed'), record
            if record['status'] == 'complete':
                assert record.get('exitCode') == '0' and 'error' not in record, record
                assert (workdir / record['out']).read_text() == 'done\n'
            else:
                assert record.get('error') == 'killed', record
            killed = code == 0 if how == 'cli' else code == 200
            if killed:  # the kill won: its answer is the final record
                shown = dict(line.split(': ', 1) for line in text.splitlines() if ': ' in line)
                assert (shown['status'], shown['error']) == ('failed', 'killed'), text
                assert (record['status'], record['error']) == ('failed', 'killed'), (text, record)
                if how == 'http':
                    assert shown['etime'] == record['etime']
            else:  # the task ended first: kill says so, naming the final status
                assert code == (ExitCode.USAGE if how == 'cli' else 400), (how, code, text)
                assert f'is not running (status {record["status"]})' in text, (text, record)
                assert record['status'] == 'complete', (text, record)
            assert not process_is(tool.get('pid'), tool.get('pidStart'))
            outcomes[(how, record['status'])] += 1
        time.sleep(1.0)  # every record is re-read at least 1 s after it ended
        for task_id, data in finals.items():
            assert (workdir / 'tasks' / 'info' / task_id).read_bytes() == data, f'{task_id} changed'
        print(f'\n[kill race] {KILL_RACE_ROUNDS} rounds in {time.monotonic() - started:.1f} s: {dict(outcomes)}')
        assert temp_files(workdir) == []
        assert server_log_problems(server) == []
    finally:
        server.stop()


###############################################################################
# 5. 1,000 concurrent submissions
###############################################################################

CONCURRENT_SUBMISSIONS = 1000
CONCURRENT_WORKERS = 32
CONCURRENT_DEADLINE = 180


@pytest.mark.slow
def test_1000_concurrent_submissions_all_complete_with_distinct_ids(tmp_path, embedded_server):
    root = tmp_path / 'store'
    server = embedded_server('', root=root, start=False)  # maxTasks: the default (CPU count)
    local = threading.local()

    def submit(number):
        if not hasattr(local, 'session'):
            local.session = plain_session()
        answer = post_task(server, 'echo', echo_content(number), timeout=120, session=local.session)
        return number, answer.status_code, answer.text

    try:
        server.start()
        started = time.monotonic()
        with ThreadPoolExecutor(CONCURRENT_WORKERS) as pool:
            results = list(pool.map(submit, range(CONCURRENT_SUBMISSIONS)))
        submitted = time.monotonic() - started
        bad = [(n, code, text) for n, code, text in results if code != 200]
        assert not bad, bad[:5]
        ids = {id_from_answer(text): number for number, _, text in results}
        assert len(ids) == CONCURRENT_SUBMISSIONS

        def all_final():
            records = raw_records(root)
            done = sum(1 for task_id in ids if task_id in records
                       and b'\nstatus: busy\n' not in b'\n' + records[task_id])
            return done == CONCURRENT_SUBMISSIONS
        try:
            wait_for(all_final, 'every task ends', timeout=CONCURRENT_DEADLINE, interval=1.0)
        finally:
            records = {k: parse_record(v.decode()) for k, v in raw_records(root).items()}
            print(f'\n[1000] submitted in {submitted:.1f} s, ended in {time.monotonic() - started:.1f} s, '
                  f'{Counter(r.get("status") for r in records.values())}, maxTasks {os.cpu_count()}')
        listed = {r['id']: r for r in server.list_tasks()}
        assert set(listed) == set(ids)
        for task_id, number in ids.items():
            assert listed[task_id]['status'] == 'complete', listed[task_id]
            assert (root / listed[task_id]['out']).read_text() == echo_content(number)
        assert temp_files(root) == []
        assert server_log_problems(server) == []
    finally:
        server.stop()


###############################################################################
# 6. Slow clients
###############################################################################

SLOW_CLIENTS = 100


def test_100_silent_or_half_sent_connections_do_not_stop_a_normal_request(tmp_path, embedded_server):
    root = tmp_path / 'store'
    # All from one address, the normal request too: room for them under the
    # per-address cap (test_slow_clients.py tries the cap itself).
    server = embedded_server(f'maxConnectionsPerClient = {SLOW_CLIENTS + 8}\n', root=root, start=False)
    sockets = []
    try:
        server.start()
        for number in range(SLOW_CLIENTS):
            client = socket.create_connection(('127.0.0.1', server.port), timeout=5)
            sockets.append(client)
            if number % 3 == 1:    # half a request line
                client.sendall(b'GET /?service=me')
            elif number % 3 == 2:  # a whole head, then a body that never comes
                client.sendall(b'POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                               b'Content-Type: application/x-www-form-urlencoded\r\n'
                               b'Content-Length: 100000\r\n\r\nservice=echo&fileIn0=')
        time.sleep(0.5)

        started = time.monotonic()
        meta = plain_session().get(server.url, params={'service': 'meta'}, timeout=5)
        took = time.monotonic() - started
        print(f'\n[slow clients] meta answered in {took * 1000:.0f} ms with {SLOW_CLIENTS} idle connections')
        assert meta.status_code == 200, meta.text
        assert parse_record(meta.text)['version'] == VERSION_STRING
        answer = post_task(server, 'echo', 'still served\n', timeout=5)
        assert answer.status_code == 200, answer.text
        assert server.wait_done(id_from_answer(answer.text))['status'] == 'complete'
        # The idle connections are still open (not dropped to make room), and wrote nothing.
        for client in sockets:
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(1)
        assert len(raw_records(root)) == 1
        for client in sockets:
            client.close()
        sockets = []
        assert plain_session().get(server.url, params={'service': 'meta'}, timeout=5).status_code == 200
        assert len(raw_records(root)) == 1
        assert server_log_problems(server) == []
    finally:
        for client in sockets:
            client.close()
        server.stop()
