"""The result cache (issue 22, rrc/cache.py): a task equal to an earlier
complete one gets its result at once, as a task of its own whose tool never
runs; any difference (a byte of an input or of an included file, an
argument, the tool's version, the engine) runs the tool.

The matrix runs in-process against the WSGI application with a real store
and real runners (``sh`` scripts as the tool, real OpenSCAD for a project
with an include); one test goes through the CGI under lighttpd, one through
a farm (Redis, a front-end, a worker as www-data).
"""
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

import deploy
from helpers import SH_SERVICE, files_of, plain_session, tidied, wait_done, wait_for
from rrc import cache
from rrc.schema import Field

# The tool: a shell script whose words after the script ($1 ...) are the
# switches, the output file last; it writes its arguments and its size word.
ARGS_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\nnativeArgs = --fast, --slow\n'
NO_CACHE_SERVICE = ARGS_SERVICE + 'cache = no\n'
SERVICES = {'sh': ARGS_SERVICE, 'nocache': NO_CACHE_SERVICE}
WRITE = 'for last; do :; done; echo "{word} $*" > "$last"\n'
# The test servers start with the cache off (helpers.CACHE_OFF): these turn it on.
ON = 'cacheSize = 1G\n'
SIZED = 'for last; do :; done; head -c {size} /dev/zero | tr "\\0" x > "$last"\n'


@pytest.fixture(scope='module')
def server():
    with deploy.running(deploy.deployment('wsgi', config=ON, services=SERVICES)) as deployment:
        yield deployment


def post(server, script, service='sh', name='part.sh', **fields):
    """A task of ``script``; the POST's JSON answer (its record)."""
    session = getattr(server, 'session', None) or plain_session()
    answer = session.post(server.url.rstrip('/') + '/', data=dict(fields, service=service, format='json'),
                          files={'fileIn0': (name, script)}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()


def run(server, script, **fields):
    """A task run to its end, its runner gone too (a result goes into the
    cache after its task is complete, then the runner ends): its final record."""
    record = wait_done(server, post(server, script, **fields)['id'])
    return tidied(str(server.store), record['id'])


def result(server, record):
    return server.session.get(f'{server.url}/{record["out"]}', timeout=30).content


def log(server, record):
    return server.session.get(f'{server.url}/tasks/log/{record["id"]}', timeout=30).text


def unique(word):
    """A script no other test submits (the module's store is shared)."""
    return WRITE.format(word=f'{word}-{time.time_ns()}')


def assert_hit(record, original, by_runner=False):
    """A task served from ``original``'s cached result: at its submission
    nothing ran (no runner, no tool, no worker); ``by_runner``: its runner
    found the entry just before it would have started the tool (no tool)."""
    assert record['status'] == 'complete', record
    assert (record.get('cache'), record.get('cacheOf')) == ('hit', original['id']), record
    assert record['id'] != original['id']
    assert not ({Field.PID, Field.WORKER} | (set() if by_runner else {Field.RUNNER})) & set(record), record


def assert_ran(record):
    assert record['status'] == 'complete', record
    assert record.get('cache') != 'hit' and record.get(Field.PID), record


# -- hits ---------------------------------------------------------------------

def test_a_repeated_task_is_complete_at_once_as_a_task_of_its_own_with_the_same_bytes(server):
    script = unique('same')
    original = run(server, script)
    assert_ran(original)

    answer = post(server, script)  # the POST's own answer is the final record: never queued

    assert_hit(answer, original)
    hit = wait_done(server, answer['id'])
    assert_hit(hit, original)
    assert result(server, hit) == result(server, original) != b''
    assert f'the result of task {original["id"]} from the cache' in log(server, hit)
    statuses = [event.data.get('status') for event in read_events(server, hit['id']) if event.kind == 'status']
    assert statuses == ['busy', 'busy', 'complete'], statuses  # queued, running, complete: the one state machine


def test_a_hits_log_is_the_tools_log_naming_its_own_clients_file_then_where_it_came_from(server):
    script = 'echo "made by $0 as task $(basename "$1")"\n' + unique('log')
    original = run(server, script, name='würfel.sh')

    hit = post(server, script, name='würfel.sh')

    assert log(server, original).startswith(f'made by würfel.sh as task {original["id"]}\n')
    lines = log(server, hit).splitlines()
    assert lines[0] == f'made by würfel.sh as task {hit["id"]}', lines
    assert lines[-1].startswith(f'rrcloud: task {hit["id"]}: the result of task {original["id"]} from the cache')


def read_events(server, task_id):
    from rrc.events import read_events as events_of
    from rrc.store import Store
    return list(events_of(Store(str(server.store)), task_id))


def test_a_cached_result_outlives_the_task_it_came_from(server):
    script = unique('outlives')
    original = run(server, script)
    bytes_before = result(server, original)
    wait_for(lambda: server.session.post(server.url + '/', data={'service': 'remove', 'id': original['id']},
                                         timeout=30).status_code == 200, 'the original task removed')
    assert not (server.store / original['out']).exists()

    hit = post(server, script)

    assert_hit(hit, original)
    assert result(server, hit) == bytes_before


# -- misses: each reason --------------------------------------------------------

def test_a_single_byte_another_argument_or_cache_no_runs_the_tool(server):
    script = unique('miss')
    original = run(server, script)

    for other in (run(server, script + ' '), run(server, script, nativeArgs='--fast'),
                  run(server, script, cache='no')):
        assert_ran(other)
    assert run(server, script, nativeArgs='--fast')['cacheOf'] != original['id']  # its own entry, by its argument
    no = run(server, script, cache='no')
    assert (no.get('cache'), no.get('cacheOf')) == ('no', None), no


def test_a_task_with_cache_no_leaves_no_entry(server):
    before = cache.cache_usage(store_of(server))[0]

    run(server, unique('kept-out'), cache='no')

    assert cache.cache_usage(store_of(server))[0] == before


def store_of(server):
    from rrc.store import Store
    return Store(str(server.store))


@pytest.mark.parametrize('value', ['maybe', 'No', ''])
def test_a_bad_cache_field_is_refused_with_nothing_stored(server, value):
    before = files_of(server.store)
    answer = server.session.post(server.url + '/', data={'service': 'sh', 'cache': value, 'format': 'json'},
                                 files={'fileIn0': ('a.sh', 'echo x > "$1"\n')}, timeout=30)

    assert (answer.status_code, answer.json()['error']) == (400, 'cache is yes or no')
    assert files_of(server.store) == before


def test_another_tool_version_runs_the_tool(server):
    script = unique('version')
    original = run(server, script)
    # The version source: the node's tasks/.toolversions, which the
    # submission and the runner both read (the tool is asked once per binary).
    from rrc.toolversions import binary_key, find_program, read_cache, write_cache
    path = server.store / 'tasks' / '.toolversions'
    known = read_cache(str(path))
    try:
        write_cache(str(path), dict(known, **{binary_key(find_program('sh', '/usr/bin:/bin')): 'sh 99.1'}))
        upgraded = run(server, script)
        again = post(server, script)
    finally:
        write_cache(str(path), known)

    assert_ran(upgraded)
    assert_hit(again, upgraded)  # the new version's own entry
    assert_hit(post(server, script), original)  # the old version's again


def test_another_engine_field_misses(server):
    """The engine the record names (issue 22 item 4: OpenSCAD's CGAL or
    Manifold) is part of the key."""
    from rrc.config import Config
    from rrc.services import find_service, load_services
    from rrc.submission import Input, create_task_record, from_cache
    script = unique('engine')
    original = run(server, script)
    store, config = store_of(server), Config()
    service = find_service(*load_services(str(server.store)), 'sh')

    def created(**fields):
        return create_task_record(store, config, service, [Input(script.encode(), 'part.sh')], fields=fields)

    assert from_cache(store, config, service, created(engine='manifold')) is None
    assert from_cache(store, config, service, created())[Field.CACHE_OF] == original['id']
    assert cache.task_key(store, service, dict(original, engine='cgal'), 'v') != \
        cache.task_key(store, service, dict(original, engine='manifold'), 'v')


def test_a_changed_file_of_a_watched_library_changes_the_key(server, tmp_path):
    """``cacheWatch`` folders (a tool's system libraries, POV-Ray's includes)."""
    from rrc.services import find_service, load_services
    original = run(server, unique('library'))
    service = find_service(*load_services(str(server.store)), 'sh')
    library = tmp_path / 'MCAD'
    library.mkdir()
    (library / 'gears.scad').write_text('module gear() cube(1);\n')
    service.cache_watch = [str(library)]
    before = cache.task_key(store_of(server), service, original, 'v')

    (library / 'gears.scad').write_text('module gear() cube(2);\n')

    assert cache.task_key(store_of(server), service, original, 'v') != before


def test_a_failed_task_is_never_cached(server):
    script = f'echo failing-{time.time_ns()}; exit 3\n'
    first = run(server, script)

    second = run(server, script)

    assert (first['status'], second['status']) == ('failed', 'failed')
    assert second.get('cache') is None and second.get(Field.PID), second


def test_a_service_with_cache_no_and_printing_are_never_cached(server):
    script = unique('service-no')
    run(server, script, service='nocache')

    assert_ran(run(server, script, service='nocache'))
    from rrc.config import Config
    from rrc.services import load_services
    shipped, _ = load_services(str(deploy.REPO))
    for name in ('printrun', 'printcore'):
        assert not cache.is_cacheable(Config(), shipped[name], {}), name


def test_a_task_queued_behind_its_twin_is_served_by_its_runner():
    with deploy.running(deploy.deployment('wsgi', config=ON + 'maxTasks = 1\n',
                                          services=SERVICES)) as one_slot:
        script = 'sleep 0.5\n' + unique('twin')
        first, twin = post(one_slot, script), post(one_slot, script)  # neither is complete yet

        first, twin = wait_done(one_slot, first['id']), wait_done(one_slot, twin['id'])

        assert_ran(first)
        assert_hit(twin, first, by_runner=True)
        assert result(one_slot, twin) == result(one_slot, first)


# -- a pipeline's step ------------------------------------------------------------------

STEP_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\ninputExt = txt\noutput = $fileOut\nfileOut = $id.txt\n'


def test_a_pipelines_step_is_served_from_the_cache_like_any_task():
    with deploy.running(deploy.deployment('wsgi', config=ON, services={'step': STEP_SERVICE})) as server:
        script = f'printf %s piped-{time.time_ns()} > "$1"\n'
        original = run(server, script, service='step', name='a.txt')
        answer = server.session.post(f'{server.url}/', data={'service': 'pipe', 'format': 'json', 'wait': '60',
                                                             'step1': 'step', 'step2': 'echo'},
                                     files={'step1.fileIn0': ('a.txt', script)}, timeout=90)
        job = answer.json()

        assert job['status'] == 'complete', job
        step1 = wait_done(server, job['steps'].split(',')[0])
        assert_hit(step1, original, by_runner=True)  # queued by its job, served by its runner
        assert server.session.get(f'{server.url}/{job["out"]}', timeout=30).content == result(server, original)


# -- a project: every file it pulls in ---------------------------------------------

def project(files):
    """A .tgz of ``files`` ({name: text}), the first the main file."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope='module')
def openscad_server():
    with deploy.running(deploy.deployment('wsgi', config=ON)) as deployment:
        yield deployment


def test_an_included_file_changed_by_one_byte_renders_again(openscad_server):
    size = time.time_ns() % 1000 + 1  # a model no other run rendered
    main = f'include <lib/part.scad>\npart({size});\n'
    first = {'main.scad': main, 'lib/part.scad': 'module part(s) cube([s, 10, 10]);\n'}
    changed = {'main.scad': main, 'lib/part.scad': 'module part(s) cube([s, 10, 11]);\n'}

    def render(files):
        return run(openscad_server, project(files), service='openscad', name='main.scad.tgz')

    original = render(first)
    again, other = render(first), render(changed)

    assert original['status'] == 'complete' and original.get('cache') is None, original
    assert_hit(again, original)
    assert result(openscad_server, again) == result(openscad_server, original)
    assert other['status'] == 'complete' and other.get('cache') is None, other
    assert result(openscad_server, other) != result(openscad_server, original)


# -- the size limit ---------------------------------------------------------------

def test_the_least_recently_used_entry_goes_at_the_size_limit_and_a_result_larger_than_the_cache_never_enters():
    # about 20 kB of disk an entry (12 kB of result, its facts and log): two fit, three do not
    with deploy.running(deploy.deployment('wsgi', config='cacheSize = 45000\n',
                                          services=SERVICES)) as small:
        scripts = {name: SIZED.format(size=12000) + f'# {name}\n' for name in 'abc'}
        a = run(small, scripts['a'])
        time.sleep(0.05)
        run(small, scripts['b'])
        time.sleep(0.05)
        assert_hit(post(small, scripts['a']), a)  # a used again: b is now the least recently used
        time.sleep(0.05)
        run(small, scripts['c'])  # three do not fit: b goes

        assert post(small, scripts['b'])['status'] == 'busy'  # b runs again
        assert_hit(post(small, scripts['a']), a)
        entries, size = cache.cache_usage(store_of(small))
        assert size <= 45000
        big = SIZED.format(size=46000)
        run(small, big)
        assert post(small, big)['status'] == 'busy'  # never stored: it runs again


# -- the command line ------------------------------------------------------------------

def test_no_cache_on_the_command_line_runs_the_tool(cli, workdir):
    from conftest import make_service, task_id_of
    make_service(workdir, 'sh', SH_SERVICE)
    (workdir / 'a.sh').write_text('echo made > "$1"\n')

    first = task_id_of(cli('--sync', 'sh', 'a.sh').out)
    hit = cli('--sync', 'sh', 'a.sh').out
    ran = cli('--sync', '--no-cache', 'sh', 'a.sh').out

    assert f'cacheOf: {first}' in hit and 'cache: hit' in hit
    assert 'cache: no' in ran and 'cacheOf' not in ran and 'pid: ' in ran


def test_a_task_run_without_the_sandbox_is_never_cached(cli, workdir):
    """``sandbox = no``: an absolute include reaches the tool but not the key."""
    from conftest import make_service, task_id_of, write_config
    make_service(workdir, 'sh', SH_SERVICE)
    write_config(workdir, 'sandbox = no\n')
    (workdir / 'a.sh').write_text('echo made > "$1"\n')

    first = task_id_of(cli('--sync', 'sh', 'a.sh').out)
    again = cli('--sync', 'sh', 'a.sh').out

    assert 'cacheOf' not in again and 'cache: hit' not in again and 'pid: ' in again, again
    assert task_id_of(again) != first
    assert cache.cache_usage(store_at(workdir))[0] == 0


def test_a_font_added_to_a_watched_font_tree_changes_the_key(server, tmp_path):
    """``cacheWatchFolders`` (OpenSCAD's fonts): the folders' times, not each file's."""
    from rrc.services import find_service, load_services
    original = run(server, unique('font'))
    service = find_service(*load_services(str(server.store)), 'sh')
    fonts = tmp_path / 'fonts'
    (fonts / 'truetype' / 'dejavu').mkdir(parents=True)
    service.cache_watch_folders = [str(fonts)]
    before = cache.task_key(store_of(server), service, original, 'v')
    time.sleep(0.01)

    (fonts / 'truetype' / 'dejavu' / 'DejaVuSans.ttf').write_bytes(b'font')

    assert cache.task_key(store_of(server), service, original, 'v') != before


def test_openscad_watches_its_libraries_and_fonts():
    from rrc.services import load_services
    openscad = load_services(str(deploy.REPO))[0]['openscad']
    assert '/usr/share/openscad/libraries' in openscad.cache_watch and '/etc/fonts' in openscad.cache_watch
    assert '/usr/share/fonts' in openscad.cache_watch_folders


# -- live: the CGI, a farm ------------------------------------------------------------------

def test_a_hit_through_the_cgi_under_lighttpd():
    with deploy.running(deploy.deployment('lighttpd', config=ON, services=SERVICES)) as cgi:
        script = unique('cgi')
        session = plain_session()
        original = tidied(str(cgi.store), post(cgi, script)['id'])
        hit = post(cgi, script)

        assert_hit(hit, original)
        assert session.get(f'{cgi.url}/{hit["out"]}', timeout=30).content == \
            session.get(f'{cgi.url}/{original["out"]}', timeout=30).content


# A tool that says its version (bash --version): a farm keys its tasks with the worker's.
BASH_SERVICE = 'path = /usr/bin:/bin\ncmd = bash\ninputExt = sh\n'


def test_on_a_farm_a_worker_never_runs_a_task_whose_result_the_cache_holds(tmp_path):
    from farm import RedisServer, Worker, front_end
    redis = RedisServer().start()
    store = tmp_path / 'store'
    store.mkdir()
    front = front_end(store, redis, 'front1', {'bash': BASH_SERVICE}, extra=ON)
    worker = None
    try:
        front.start()
        worker = Worker(redis, front.url, services=['bash'], confs={'bash': BASH_SERVICE}).start()
        script = unique('farm')
        original = wait_done(front, post(front, script, service='bash')['id'], timeout=90)
        assert original['status'] == 'complete' and original['worker'] == worker.name(), original
        assert original['toolVersion'].startswith('GNU 5') and original['cacheKey'], original
        # The front-end stores the worker's result once the task is complete.
        wait_for(lambda: cache.cache_usage(store_at(store))[0] == 1, 'the result in the cache')

        at_submission = post(front, script, service='bash')  # the farm's version is known: no job at all
        assert_hit(at_submission, original)
        assert not rq_job_exists(redis, at_submission['id'])

        # A front-end that has not heard the farm's version yet: the task is
        # queued, and served from the cache when a worker claims it.
        os.unlink(store / 'tasks' / 'cache' / 'versions' / 'bash')
        queued = post(front, script, service='bash')
        assert queued['status'] == 'busy', queued
        at_claim = wait_done(front, queued['id'], timeout=90)
        assert_hit(at_claim, original)
        wait_for(lambda: f'task {queued["id"]} was served from the result cache' in worker.log.read_text(),
                 'the worker to say it ran nothing', timeout=30)
        assert result_bytes(front, at_claim) == result_bytes(front, original)
    finally:
        if worker:
            worker.stop()
        front.stop()
        redis.stop()


def rq_job_exists(redis, task_id):
    import redis as redis_client
    return bool(redis_client.Redis.from_url(redis.url).exists(f'rq:job:{task_id}'))


def result_bytes(server, record):
    return plain_session().get(f'{server.url.rstrip("/")}/{record["out"]}', timeout=30).content


# -- writers at once -----------------------------------------------------------------------

def test_writers_at_once_keep_the_cache_within_its_size_and_every_entry_whole(tmp_path):
    """Several processes (front-ends on one store, runners) store results at
    once: the cache's lock and renames keep it within ``cacheSize``, and
    every entry left has its facts, its result and its log."""
    from concurrent.futures import ProcessPoolExecutor
    root = tmp_path / 'store'
    with ProcessPoolExecutor(4) as pool:
        list(pool.map(put_many, [(str(root), writer) for writer in range(4)]))

    store = store_at(root)
    count, size = cache.cache_usage(store)
    assert 0 < count and size <= 60000, (count, size)
    folder = root / 'tasks' / 'cache'
    for _, key, _ in cache.entries(store):
        entry = cache.lookup(store, key)
        assert entry and (folder / f'{key}.out').read_bytes() == f'result {entry.origin}\n'.encode() * 50


def store_at(root):
    from rrc.identity import NodeIdentity
    from rrc.store import Store
    return Store(str(root), NodeIdentity.of())


def put_many(args):
    """One writer: 12 complete tasks' results (about 900 bytes each, 12 kB of disk an entry) into a 60 kB cache."""
    from rrc.config import Config
    root, writer = args
    store, config = store_at(root), Config()
    config.cacheSize = 60000
    store.ensure()
    for number in range(12):
        record = store.create_task(lambda task_id: {'status': 'complete', 'service': 'sh',
                                                    'out': f'tasks/out/{task_id}'})
        (Path(root) / record['out']).write_bytes(f'result {record["id"]}\n'.encode() * 50)
        cache.put(store, config, f'{writer:02d}{number:02d}'.ljust(64, 'a'), record)


# -- a farm's run again --------------------------------------------------------------------

def test_a_run_again_after_a_lost_worker_is_cached_under_its_own_workers_tool_version(tmp_path):
    """Run 1 on a worker with sh 1 is lost; run 2 on a worker with sh 2 ends:
    its result is the cache's under sh 2's key, never under sh 1's (where a
    worker with sh 1 would be served sh 2's result)."""
    from rrc.farmwork import _claim_under_lock, claim_cache_fields, running_marker
    from rrc.submission import Input, create_task_record
    store, config, service = sh_store(tmp_path)
    task_id = create_task_record(store, config, service, [Input(unique('lost').encode(), 'part.sh')])[Field.ID]

    def claim(worker, versions):
        cached = claim_cache_fields(store, config, task_id, versions)
        return _claim_under_lock(store, config, task_id, worker, '', cached)[0]

    first = claim('w1', 'sh=sh 1')
    os.utime(running_marker(store, task_id), (time.time() - 60, time.time() - 60))  # w1 fell silent
    second = claim('w2', 'sh=sh 2')
    Path(store.path_of(second['out'])).write_text('made by sh 2\n')
    cache.put(store, config, second[Field.CACHE_KEY], dict(second, status='complete'))

    key_of = {v: cache.key_of_task(store, config, service, first, v) for v in ('sh 1', 'sh 2')}
    assert (first[Field.TOOL_VERSION], first[Field.CACHE_KEY]) == ('sh 1', key_of['sh 1'])
    assert (second['attempt'], second[Field.TOOL_VERSION], second[Field.CACHE_KEY]) == ('2', 'sh 2', key_of['sh 2'])
    assert cache.lookup(store, key_of['sh 1']) is None
    assert Path(cache.lookup(store, key_of['sh 2']).out).read_text() == 'made by sh 2\n'


def test_a_changed_byte_of_the_manifold_runner_changes_the_key(tmp_path):
    """OpenSCAD's Manifold runner (``openscad-manifold.mjs``, a companion
    file whose name is not ``openscad.*``) renders results: it is in the key."""
    from rrc.config import Config
    from rrc.services import find_service, load_services
    from rrc.submission import Input, create_task_record
    from conftest import REPO
    root = tmp_path / 'store'
    (root / 'services').mkdir(parents=True)
    for name in ('openscad.conf', 'openscad.options', 'openscad-manifold.mjs'):
        (root / 'services' / name).write_bytes((REPO / 'services' / name).read_bytes())
    store, config = store_at(root), Config()
    store.ensure()
    config.cacheSize = 10 ** 9
    service = find_service(*load_services(str(root)), 'openscad')
    record = create_task_record(store, config, service, [Input(b'cube(1);\n', 'a.scad')])
    before = cache.key_of_task(store, config, service, record, 'OpenSCAD 2021.01')

    with open(root / 'services' / 'openscad-manifold.mjs', 'a') as runner:
        runner.write('// changed\n')

    assert before and cache.key_of_task(store, config, service, record, 'OpenSCAD 2021.01') != before


# -- an entry read while it goes -------------------------------------------------------------

def sh_store(tmp_path):
    """(store, config, the sh service) of a fresh store with the cache on."""
    from rrc.config import Config
    from rrc.services import find_service, load_services
    root = tmp_path / 'store'
    (root / 'services').mkdir(parents=True)
    (root / 'services' / 'sh.conf').write_text(ARGS_SERVICE)
    store, config = store_at(root), Config()
    store.ensure()
    config.cacheSize = 10 ** 9
    return store, config, find_service(*load_services(str(root)), 'sh')


def cached_twins(tmp_path, count):
    """A complete task's result in the cache, and ``count`` queued tasks equal to it: (store, key, twins)."""
    from rrc.submission import Input, create_task_record
    store, config, service = sh_store(tmp_path)
    script = unique('twin').encode()
    original = create_task_record(store, config, service, [Input(script, 'part.sh')])
    Path(store.path_of(original['out'])).write_text('the result\n')
    key = cache.key_of_task(store, config, service, original)
    assert cache.put(store, config, key, dict(original, status='complete'))
    return store, key, [create_task_record(store, config, service, [Input(script, 'part.sh')])
                        for _ in range(count)]


def test_an_entry_whose_log_went_is_a_miss_never_a_hit_with_an_empty_log(tmp_path):
    store, key, (twin,) = cached_twins(tmp_path, 1)
    os.unlink(Path(cache.cache_folder(store)) / f'{key}.log')  # evicted up to its log

    assert cache.finish_from_cache(store, twin, key) is None
    assert store.read_task(twin['id'])['status'] == 'busy'
    assert not os.path.exists(store.path_of(twin['out']))


def test_a_task_killed_while_it_was_served_keeps_nothing_of_the_hit(tmp_path):
    from rrc.states import finish_task
    store, key, (twin,) = cached_twins(tmp_path, 1)
    finish_task(store, twin['id'], 'failed', error='killed')  # killed after the caller read its record

    assert cache.finish_from_cache(store, twin, key) is None
    assert store.read_task(twin['id'])['status'] == 'failed'
    assert not os.path.exists(store.path_of(twin['out']))
    log = Path(store.log_path(twin['id']))
    assert not log.exists() or b'from the cache' not in log.read_bytes()


# -- what a record or a worker says ---------------------------------------------------------

@pytest.mark.parametrize('bad', ['../../../etc/passwd', 'A' * 64, 'a' * 63, 'a' * 63 + '/', ''])
def test_a_key_that_is_not_one_never_reaches_a_path(tmp_path, bad):
    store, key, (twin,) = cached_twins(tmp_path, 1)
    target = Path(cache.cache_folder(store)) / bad if bad else None
    if target and target.parent == Path(cache.cache_folder(store)):
        target.write_text('cacheOf: ' + twin['id'] + '\n')  # a file of that name: still never read
        Path(f'{target}.out').write_text('not a result\n')
    before = files_of(store.root)

    assert cache.lookup(store, bad) is None and cache.finish_from_cache(store, twin, bad) is None
    assert cache.put(store, cache_on(), bad, dict(twin, status='complete')) is False
    cache.remove_entry(store, bad)
    assert files_of(store.root) == before


def cache_on():
    from rrc.config import Config
    config = Config()
    config.cacheSize = 10 ** 9
    return config


def test_two_long_tool_versions_that_differ_at_their_end_are_two_versions():
    start = 'OpenSCAD 2021.01 (CGAL) + OpenSCAD 2025.01.19 (Manifold 3.0.1) built with a long tail '
    first = cache.parse_versions(f'openscad={start}A,sh=sh 1')
    second = cache.parse_versions(f'openscad={start}B,sh=sh 1')

    assert first['openscad'] != second['openscad'] and first['sh'] == 'sh 1'
    assert len(first['openscad']) <= 80 and first['openscad'].startswith('OpenSCAD 2021.01')
    assert cache.parse_versions('openscad=OpenSCAD 2021.01') == {'openscad': 'OpenSCAD 2021.01'}


# -- bounds ---------------------------------------------------------------------------------

def cache_files(store):
    folder = Path(cache.cache_folder(store))
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith('.') and p.is_file())


def test_the_cache_keeps_at_most_max_entries_the_newest(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, 'MAX_ENTRIES', 3)
    store, key, twins = cached_twins(tmp_path, 4)
    keys = [key]
    for number, twin in enumerate(twins):
        Path(store.path_of(twin['out'])).write_text(f'result {number}\n')
        keys.append(f'{number:064x}')
        time.sleep(0.01)
        assert cache.put(store, cache_on(), keys[-1], dict(twin, status='complete'))

    assert [k for _, k, _ in cache.entries(store)] == keys[-3:]
    assert cache.cache_usage(store)[0] == 3 and cache.lookup(store, keys[0]) is None


def test_the_cache_counts_the_disk_its_files_take(tmp_path):
    store, key, _ = cached_twins(tmp_path, 0)
    folder = Path(cache.cache_folder(store))
    on_disk = sum(os.stat(folder / name).st_blocks * 512 for name in cache_files(store))

    assert cache.cache_usage(store) == (1, on_disk)
    assert on_disk > os.path.getsize(folder / f'{key}.out') + os.path.getsize(folder / key)


def test_recovery_removes_an_entrys_files_left_without_its_facts_and_dead_writers_temp_files(tmp_path):
    from helpers import dead_pid
    from rrc.config import Config
    from rrc.recovery import recover_store
    store, key, _ = cached_twins(tmp_path, 0)
    folder = Path(cache.cache_folder(store))
    orphan = 'e' * 64
    (folder / f'{orphan}.out').write_text('left by a writer that died\n')
    (folder / f'{orphan}.log').write_text('its log\n')
    (folder / 'versions').mkdir(exist_ok=True)
    (folder / 'versions' / f'.sh.{dead_pid()}.tmp').write_text('sh 1')
    kept = sorted([key, f'{key}.out', f'{key}.log'])

    recover_store(store, Config())

    assert cache_files(store) == kept
    assert os.listdir(folder / 'versions') == []
    assert cache.lookup(store, key) is not None
