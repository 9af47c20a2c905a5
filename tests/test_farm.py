"""A farm on a real engine (issue 19): Redis holds the queue, RQ workers
on "other machines" run the tasks, HAProxy spreads the clients over two
front-ends that share one store.

Everything is real and on loopback: ``redis-server`` with a password,
``haproxy`` with the project's own haproxy/haproxy.cfg, two ``rrcloud
serve`` front-ends, and three ``rrcloud worker`` processes, each as
www-data in an empty folder of its own (they cannot read the store: it is
root's), one of them taking only echo.  The printer is the simulated one
on a pty.
"""
import os
import subprocess
import sys
import time

import pytest

from farm import NOTIFIER_SECRET, WORKER_TOKEN, HAProxy, RedisServer, Worker, front_end, www_data
from helpers import (DATA, PTY_PRINTRUN_CONF, REPO, SH_SERVICE, Receiver, after_line, file_lines, plain_session,
                     wait_for, wait_port_free)
from printer_sim import PrinterSim
from rrc.events import read_events
from rrc.gcodemeta import gcode_fields
from rrc.printing import gcode_lines
from rrc.store import Store

# A task that says it started, works a few seconds, then writes its result.
SLOW_SCRIPT = 'echo started; sleep {seconds}; echo {word} > "$1"\n'
CONFS = {'sh': SH_SERVICE, 'printrun': PTY_PRINTRUN_CONF}
# Services only a worker started later has: their tasks wait in Redis meanwhile
# (no worker ever takes ``idle``).
LATER = {'later': SH_SERVICE, 'ordered': SH_SERVICE, 'idle': SH_SERVICE}
RENDERS = 20


@pytest.fixture(scope='module')
def farm(tmp_path_factory):
    """Redis, two front-ends on one store behind HAProxy, three workers."""
    redis = RedisServer().start()
    store = tmp_path_factory.mktemp('farm-store')
    store.chmod(0o700)  # root's: no worker can read it
    fronts = [front_end(store, redis, name, dict(CONFS, **LATER)) for name in ('front1', 'front2')]
    farm = Farm(redis, fronts, store)
    try:
        for server in fronts:
            server.start()
        farm.proxy = HAProxy(store, list(fronts)).start()
        farm.workers = [Worker(redis, farm.proxy.url, confs=CONFS).start(),
                        Worker(redis, farm.proxy.url, confs=CONFS).start(),
                        Worker(redis, farm.proxy.url, services=['echo']).start()]
        yield farm
    finally:
        farm.stop()


class Farm:
    """The parts of a running farm, and what tests ask of it."""

    def __init__(self, redis, fronts, store):
        self.redis, self.fronts, self.store = redis, fronts, store
        self.proxy, self.workers, self.gone = None, [], []
        self.session = plain_session()

    def stop(self):
        """Every part stopped, the workers' folders removed."""
        for worker in self.workers + self.gone:
            worker.stop()
        if self.proxy:
            self.proxy.stop()
        for server in self.fronts:
            if server.running:
                server.stop()
        self.redis.stop()

    def post(self, service, content, name='input', **fields):
        """A task through HAProxy; its id."""
        answer = self.session.post(self.proxy.url, data=dict(fields, service=service, format='json'),
                                   files={'fileIn0': (name, content)}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()['id']

    def info(self, task_id, wait=0):
        params = {'service': 'info', 'id': task_id, 'format': 'json', 'wait': str(wait)}
        return self.session.get(self.proxy.url, params=params, timeout=wait + 30).json()

    def ended(self, task_id, timeout=90):
        """The task's record once it has ended (long-polls through HAProxy)."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.info(task_id, wait=10)
            if record['status'] != 'busy':
                return record
            assert time.monotonic() < deadline, record

    def worker_of(self, task_id):
        """The Worker that runs a task (once it has claimed it)."""
        name = wait_for(lambda: self.info(task_id).get('worker'), f'task {task_id} claimed', timeout=60)
        return next(worker for worker in self.workers if worker.name() == name)

    def replace(self, worker):
        """A new worker in place of a killed one (the module's farm keeps its size)."""
        new = Worker(self.redis, self.proxy.url, confs=CONFS).start()
        self.workers[self.workers.index(worker)] = new
        self.gone.append(worker)
        return new

    def log(self, task_id):
        return self.session.get(f'{self.proxy.url}tasks/log/{task_id}', timeout=30).text

    def records(self):
        folder = self.store / 'tasks' / 'info'
        return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []

    def history_ids(self):
        """The ids of the history's lines (one per ended task: rrc/ledger.py), in order."""
        from rrc.ledger import read_entries
        from rrc.store import Store
        return [entry['id'] for entry in read_entries(Store(str(self.store)))]

    def store_files(self):
        return sorted(str(path.relative_to(self.store)) for path in (self.store / 'tasks').rglob('*')
                      if path.is_file() and '.lock' not in path.name and 'slots' not in path.parts)


# -- the work spread over the workers --------------------------------------------

def test_twenty_renders_through_haproxy_complete_on_workers_that_have_openscad(farm):
    ids = [farm.post('openscad', f'cube({size});\n', name='part.scad') for size in range(1, RENDERS + 1)]

    records = [farm.ended(task_id) for task_id in ids]

    assert [record['status'] for record in records] == ['complete'] * RENDERS, records
    ran_on = {record['worker'] for record in records}
    echo_only = farm.workers[2].name()
    assert echo_only not in ran_on  # it has no openscad
    assert len(ran_on) == 2, ran_on  # both workers that have it took some
    assert {record['server'] for record in records} == {'front1', 'front2'}  # HAProxy used both front-ends
    assert sorted(set(farm.history_ids()) & set(ids)) == sorted(ids)  # each ended once, by one front-end
    assert len([task_id for task_id in farm.history_ids() if task_id in ids]) == RENDERS
    for size, record in zip(range(1, RENDERS + 1), records):
        stl = farm.session.get(farm.proxy.url + record['out'], timeout=30).content
        assert stl.startswith(b'solid') and f'{size}'.encode() in stl, record


def test_a_worker_is_told_what_its_runner_needs_never_the_notifiers_secret(farm):
    task_id = farm.post('idle', 'echo x > "$1"\n', name='s.sh')  # no worker takes it: the test claims it
    claimed = claim_as_a_worker(farm, task_id)

    keys = [line.split(' = ')[0] for line in claimed['settings'].splitlines()]
    assert 'timeout' in keys and 'maxMemory' in keys
    assert 'notifierSecret' not in claimed['settings'] and 'notifierAllow' not in keys
    assert claimed['inputs'] == [claimed['record']['in']]
    assert (farm.info(task_id)['worker'], claimed['record']['attempt']) == ('test.1', '1')
    farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': task_id}, timeout=30)


def test_a_workers_task_calls_its_notifier_signed_when_it_starts_and_when_it_ends(farm):
    receiver = Receiver(NOTIFIER_SECRET)
    try:
        task_id = farm.post('sh', SLOW_SCRIPT.format(seconds=0, word='told'), name='n.sh',
                            notifier=receiver.url, notifierEvents='started,ended')
        assert farm.ended(task_id)['status'] == 'complete'
        wait_for(lambda: len(receiver.calls) >= 2, 'the ended call', timeout=30)
    finally:
        receiver.stop()

    assert receiver.calls == [(task_id, 'started'), (task_id, 'ended')]  # signed: the receiver checked
    log = farm.log(task_id)
    assert log.count('(started): HTTP 204') == 1 and log.count('(ended): HTTP 204') == 1, log


def claim_as_a_worker(farm, task_id, worker='test.1'):
    """The test plays a worker and claims a task."""
    answer = ask_to_claim(farm, task_id, worker)
    assert answer.status_code == 200, answer.text
    return answer.json()


def ask_to_claim(farm, task_id, worker):
    return farm.session.post(farm.proxy.url, params={'service': 'workclaim'}, timeout=30,
                             headers={'X-RRCloud-Worker-Token': WORKER_TOKEN},
                             data={'id': task_id, 'worker': worker, 'format': 'json'})


def test_a_claim_is_the_same_again_for_its_worker_and_a_lost_run_is_taken_only_once_lost(farm):
    task_id = farm.post('idle', 'echo x > "$1"\n', name='c.sh', notifier='http://127.0.0.1:9/')
    first = claim_as_a_worker(farm, task_id)
    marker = farm.store / 'tasks' / 'running' / task_id

    again = claim_as_a_worker(farm, task_id)  # its answer was lost (a front-end failed over)
    while_alive = ask_to_claim(farm, task_id, 'test.2')
    os.utime(marker, (time.time() - 3, time.time() - 3))
    while_silent_a_while = ask_to_claim(farm, task_id, 'test.2')
    os.utime(marker, (time.time() - 30, time.time() - 30))
    once_lost = claim_as_a_worker(farm, task_id, 'test.2')
    farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': task_id}, timeout=30)

    assert again == first and first['record']['attempt'] == '1'
    assert 'notifier' not in first['record'] and 'client' not in first['record']  # not a worker's business
    assert while_alive.status_code == 409 and 'runs on worker test.1' in while_alive.text
    assert while_silent_a_while.status_code == 503 and 'ask again' in while_silent_a_while.text
    assert once_lost['record']['attempt'] == '2'
    assert 'runs again on worker test.2 (run 2): worker test.1 was lost' in farm.log(task_id)


@pytest.mark.parametrize('path', ['OTHER', 'tasks/info/ID', 'tasks/in/../rrcloudrc-front1', '/etc/passwd'])
def test_a_worker_gets_a_tasks_own_inputs_and_nothing_else(farm, path):
    mine = claim_as_a_worker(farm, farm.post('idle', 'mine\n', name='mine.sh'))['record']
    other = farm.info(farm.post('idle', 'not yours\n', name='other.sh'))
    asked = path.replace('OTHER', other['in']).replace('ID', mine['id'])
    run = {'service': 'workinput', 'id': mine['id'], 'attempt': '1'}

    given = farm.session.get(farm.proxy.url, headers={'X-RRCloud-Worker-Token': WORKER_TOKEN}, timeout=30,
                             params=dict(run, path=mine['in']))
    refused = farm.session.get(farm.proxy.url, headers={'X-RRCloud-Worker-Token': WORKER_TOKEN}, timeout=30,
                               params=dict(run, path=asked))
    not_the_run = farm.session.get(farm.proxy.url, headers={'X-RRCloud-Worker-Token': WORKER_TOKEN}, timeout=30,
                                   params=dict(run, id=other['id'], path=other['in']))
    farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': mine['id']}, timeout=30)

    assert given.content == b'mine\n'
    assert refused.status_code in (400, 404) and b'not yours' not in refused.content, refused.text
    assert not_the_run.status_code == 409 and b'not yours' not in not_the_run.content  # no run of it yet


def test_the_workers_cannot_read_the_store(farm):
    uid, gid = www_data()
    looked = subprocess.run(['ls', str(farm.store / 'tasks' / 'info')], user=uid, group=gid,
                            capture_output=True, text=True)

    assert looked.returncode != 0 and 'Permission denied' in looked.stderr


def test_meta_shows_the_queues_and_the_workers(farm):
    meta = farm.session.get(farm.proxy.url, params={'service': 'meta', 'format': 'json'}, timeout=30).json()

    assert meta['backend'] == 'rq'
    shown = {entry.split()[0]: entry.split() for entry in meta['farmWorkers'].split(', ')}
    for worker in farm.workers:
        assert worker.name() in shown, meta['farmWorkers']
    assert shown[farm.workers[2].name()][2] == 'echo'
    assert float(shown[farm.workers[0].name()][3]) > time.time() - 60  # a recent heartbeat


# -- nothing lost ------------------------------------------------------------------

def test_a_killed_workers_task_runs_again_on_another_worker_once(farm):
    task_id = farm.post('sh', SLOW_SCRIPT.format(seconds=3, word='second'), name='slow.sh')
    first = farm.worker_of(task_id)
    wait_for(lambda: 'started' in farm.log(task_id), 'the tool to start', timeout=30)

    first.kill()
    farm.replace(first)
    record = farm.ended(task_id)

    assert record['status'] == 'complete', record
    assert record['attempt'] == '2' and record['worker'] != first.name(), record
    assert farm.session.get(farm.proxy.url + record['out'], timeout=30).content == b'second\n'
    log = farm.log(task_id)
    assert log.count('started') == 2  # the lost run's start, and the run that completed
    assert f'runs again on worker {record["worker"]} (run 2): worker {first.name()} was lost' in log
    assert farm.history_ids().count(task_id) == 1  # the lost run never ended it
    assert not [name for name in farm.store_files() if '.part' in name or name.startswith('tasks/work')]


def test_a_print_on_a_killed_worker_fails_worker_lost_and_never_runs_again(farm, tmp_path):
    gcode = ''.join(f'G1 X{i} Y{i}\n' for i in range(400))
    with PrinterSim(delay=0.05) as sim:
        os.chown(sim.port, *www_data())  # the worker's user opens the port
        task_id = farm.post('printrun', gcode, name='part.gcode', nativeArgs=sim.port)
        printer = farm.worker_of(task_id)
        wait_for(lambda: len(sim.received) > 5, 'the print to start', timeout=30)

        printer.kill()
        farm.replace(printer)
        record = farm.ended(task_id)
        received = len(sim.received)
        time.sleep(2)

        assert (record['status'], record['error']) == ('failed', 'worker lost'), record
        assert farm.history_ids().count(task_id) == 1
        assert sim.opens == 1 and len(sim.received) == received  # never restarted on its own


def test_a_front_end_that_dies_loses_nothing_a_client_was_told_was_accepted(farm):
    ids = [farm.post('sh', SLOW_SCRIPT.format(seconds=1, word=f'task {n}'), name='f.sh') for n in range(4)]

    farm.fronts[0].kill_server()  # gone mid-work: HAProxy sends everyone to the other front-end
    try:
        records = [farm.ended(task_id) for task_id in ids]
    finally:
        wait_port_free(farm.fronts[0].port)
        farm.fronts[0].start()

    assert [record['status'] for record in records] == ['complete'] * 4, records
    results = [farm.session.get(farm.proxy.url + record['out'], timeout=30).content for record in records]
    assert results == [f'task {n}\n'.encode() for n in range(4)]


def test_kill_and_suspend_reach_the_task_on_its_worker(farm):
    task_id = farm.post('sh', 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done\n', name='t.sh')
    farm.worker_of(task_id)
    wait_for(lambda: 'tick 2' in farm.log(task_id), 'the tool to tick', timeout=30)

    suspended = farm.session.get(farm.proxy.url, params={'service': 'suspend', 'id': task_id, 'format': 'json'},
                                 timeout=30).json()
    time.sleep(1.5)  # the worker hears of it within half a second
    ticks = farm.log(task_id).count('tick')
    time.sleep(1.5)
    still = farm.log(task_id).count('tick')
    farm.session.get(farm.proxy.url, params={'service': 'resume', 'id': task_id}, timeout=30)
    wait_for(lambda: farm.log(task_id).count('tick') > still + 2, 'ticking again after resume', timeout=30)
    killed = farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': task_id, 'format': 'json'},
                              timeout=30).json()
    record = farm.ended(task_id)

    assert suspended['suspended'] == 'yes'
    assert still == ticks  # stopped while suspended
    assert killed['error'] == 'killed' and (record['status'], record['error']) == ('failed', 'killed')


# -- jobs, priorities, watching ---------------------------------------------------------

def test_a_three_step_pipe_runs_its_steps_on_the_workers_that_have_their_tools(farm):
    form = {'service': 'pipe', 'format': 'json', 'step1': 'openscad', 'step2': 'slic3r',
            'step2.prearg1': '--load=', 'step3': 'echo'}
    files = {'step1.fileIn0': ('cube.scad', (REPO / 'tests' / 'data' / 'cube.scad').read_bytes()),
             'step2.fileIn1': ('pla.ini', (REPO / 'tests' / 'data' / 'slic3r.ini').read_bytes())}
    answer = farm.session.post(farm.proxy.url, data=form, files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    job = farm.ended(answer.json()['id'], timeout=120)

    assert job['status'] == 'complete', job
    steps = [farm.info(job[f'step{n}'].split()[0]) for n in (1, 2, 3)]
    assert [step['status'] for step in steps] == ['complete'] * 3
    assert depends_on(farm, steps[1]['id']) == [steps[0]['id']]  # RQ held step 2 until step 1 ended
    assert depends_on(farm, steps[2]['id']) == [steps[1]['id']]
    assert steps[2]['worker'] == farm.workers[2].name()  # echo: the echo-only worker may take it ...
    assert steps[0]['worker'] != farm.workers[2].name()  # ... never a render
    assert b'G1' in farm.session.get(farm.proxy.url + job['out'], timeout=30).content
    # The front-end read the worker's slice (rrc/gcodemeta.py); the job keeps what it says.
    assert int(steps[1]['gcodeLayers']) > 1 and steps[1]['gcodeSlicer'].startswith('Slic3r'), steps[1]
    assert job['gcodeLayers'] == steps[1]['gcodeLayers'] and job['gcodeBox'] == steps[1]['gcodeBox']


def test_the_cli_on_a_front_ends_store_queues_in_redis_and_a_worker_runs_it(farm):
    done = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), '--sync', 'echo', 'from the cli'],
                          cwd=farm.store, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, RRCLOUD_CONFIG=str(farm.fronts[0].config)))

    assert (done.returncode, done.stdout, done.stderr) == (0, 'from the cli\n', ''), done
    ran = [record for record in farm.fronts[0].records().values()
           if record.get('out') and (farm.store / record['out']).is_file()
           and (farm.store / record['out']).read_bytes() == b'from the cli']
    assert len(ran) == 1 and ran[0]['worker'] in [worker.name() for worker in farm.workers], ran


@pytest.mark.parametrize('kind', ['lighttpd', 'apache'])
def test_a_cgi_front_end_queues_in_redis_and_a_worker_runs_its_task(kind):
    import deploy
    redis = RedisServer().start()  # a farm of its own: its queues are not the module farm's
    config = f'backend = rq\nredis = {redis.url}\nworkerToken = {WORKER_TOKEN}\n'
    worker = None
    try:
        with deploy.running(deploy.deployment(kind, config=config, services={'sh': SH_SERVICE})) as cgi:
            worker = Worker(redis, cgi.url + '/', services=['sh'], confs={'sh': SH_SERVICE}).start()
            session = plain_session()
            answer = session.post(cgi.url + '/', data={'service': 'sh', 'format': 'json'}, timeout=30,
                                  files={'fileIn0': ('c.sh', SLOW_SCRIPT.format(seconds=0, word='by a worker'))})
            assert answer.status_code == 200, answer.text
            task_id = answer.json()['id']
            record = wait_for(lambda: ended_record(session, cgi.url + '/', task_id), 'the task to end', timeout=90)

            assert (record['status'], record['worker']) == ('complete', worker.name()), record
            assert session.get(f'{cgi.url}/{record["out"]}', timeout=30).text == 'by a worker\n'
    finally:
        if worker:
            worker.stop()
        redis.stop()


def ended_record(session, url, task_id):
    """A task's record once it has ended, else None."""
    record = session.get(url, params={'service': 'info', 'id': task_id, 'format': 'json'}, timeout=30).json()
    return record if record['status'] != 'busy' else None


def test_priorities_and_moves_order_what_waits_in_redis(farm):
    ids = {name: farm.post('ordered', 'echo x > "$1"\n', name=f'{name}.sh', priority=str(priority))
           for name, priority in (('plain', 0), ('urgent', 5), ('whenever', -3), ('urgent too', 5), ('moved', 0))}
    moved = farm.session.get(farm.proxy.url, params={'service': 'move', 'id': ids['moved'], 'to': 'front',
                                                     'format': 'json'}, timeout=30).json()

    farm.workers.append(Worker(farm.redis, farm.proxy.url, services=['ordered'], confs=LATER).start())
    records = {name: farm.ended(task_id) for name, task_id in ids.items()}

    assert moved.get('queuePosition') == '-1', moved
    started = sorted(records, key=lambda name: float(records[name]['stime']))
    assert started == ['moved', 'urgent', 'urgent too', 'plain', 'whenever'], started


def test_a_failed_step_cancels_the_steps_after_it_and_their_jobs_end(farm):
    answer = farm.session.post(farm.proxy.url, data={'service': 'pipe', 'format': 'json', 'step1': 'openscad',
                                                     'step2': 'echo'},
                               files={'step1.fileIn0': ('bad.scad', b'cube(;\n')}, timeout=60)
    job = farm.ended(answer.json()['id'])
    second = job['step2'].split()[0]

    assert job['status'] == 'failed' and job['error'].startswith('step 1 (openscad) failed'), job
    assert farm.info(second)['error'].startswith('cancelled'), farm.info(second)
    wait_for(lambda: rq_status(farm, second) == 'finished', 'the cancelled step\'s job to end', timeout=60)


def rq_status(farm, task_id):
    import redis
    from rq.job import Job
    from rq.serializers import JSONSerializer
    job = Job.fetch(task_id, connection=redis.Redis.from_url(farm.redis.url), serializer=JSONSerializer)
    return str(job.get_status().value)


def depends_on(farm, task_id):
    """The ids RQ's job of a task waited on (RQ keeps a job a while after it ended)."""
    import json
    import redis
    from rq.job import Job
    from rq.serializers import JSONSerializer
    job = Job.fetch(task_id, connection=redis.Redis.from_url(farm.redis.url), serializer=JSONSerializer)
    return json.loads(job.to_dict().get('dependency_ids') or '[]')


def test_watch_shows_a_workers_task_live(farm, tmp_path):
    (tmp_path / 'rrcloudrc').write_text('')
    task_id = farm.post('sh', 'for i in 1 2 3; do echo line $i; sleep 0.3; done; echo done > "$1"\n', name='w.sh')
    watched = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'watch', task_id, f'--s={farm.proxy.url}'],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path,
                             env=dict(os.environ, RRCLOUD_CONFIG=str(tmp_path / 'rrcloudrc')))

    assert watched.returncode == 0, watched
    assert 'line 1' in watched.stdout and 'line 3' in watched.stdout and 'complete' in watched.stdout


def test_a_workers_task_reports_its_tools_stages_to_the_front_end(farm):
    task_id = farm.post('openscad', 'cube(3);\n', name='part.scad')
    record = farm.ended(task_id)

    assert record['status'] == 'complete', record
    assert record['engine'] == 'cgal', record  # the worker's word on its engine (a cube: the native one's)
    stages = [event.data.get('stage') for event in read_events(Store(str(farm.store)), task_id)
              if event.kind == 'progress']
    assert stages[0] == 'rendering' and stages[-1] == 'exporting', stages  # read on the worker, sent on


# -- clients as they are ---------------------------------------------------------------

def test_a_0_019_client_and_a_wrapper_through_haproxy(farm, tmp_path):
    (tmp_path / 'rrcloudrc').write_text(f'servers = {farm.proxy.address}\n')
    (tmp_path / 'cube.scad').write_text('cube(4);\n')
    held = farm.session.post(farm.proxy.url, data={'service': 'openscad', 'in': 'cube.scad'},
                             files={'fileIn0': ('cube.scad', b'cube(3);\n')}, timeout=120)
    wrapped = subprocess.run([str(REPO / 'bin' / 'openscad.cloud'), 'cube.scad', '-ocube.stl'], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120,
                             env=dict(os.environ, RRCLOUD_CONFIG=str(tmp_path / 'rrcloudrc')))

    assert 'status: complete' in held.text.splitlines(), held.text  # the 0.019 POST is held to the end
    assert wrapped.returncode == 0, wrapped
    assert (tmp_path / 'cube.stl').read_bytes().startswith(b'solid')


# -- refusals --------------------------------------------------------------------------

@pytest.mark.parametrize('token, status', [(None, 403), ('not-the-worker-token-at-all', 401)])
def test_the_worker_routes_refuse_anyone_without_the_worker_token(farm, token, status):
    task_id = farm.post('idle', SLOW_SCRIPT.format(seconds=1, word='x'), name='q.sh')  # it stays queued
    before = farm.store_files()
    headers = {} if token is None else {'X-RRCloud-Worker-Token': token}

    answers = [farm.session.post(farm.proxy.url, params={'service': service}, headers=headers, timeout=30,
                                 data={'id': task_id, 'attempt': '9', 'worker': 'intruder'})
               for service in ('workclaim', 'workupdate', 'workdone')]

    assert [answer.status_code for answer in answers] == [status] * 3, [a.text for a in answers]
    assert farm.info(task_id).get('worker') is None  # still queued, nobody's
    assert farm.store_files() == before


def test_a_worker_route_is_refused_by_the_wrong_method_with_nothing_taken(farm):
    task_id = farm.post('idle', SLOW_SCRIPT.format(seconds=1, word='x'), name='q.sh')  # it stays queued
    headers = {'X-RRCloud-Worker-Token': WORKER_TOKEN}

    claim = farm.session.get(farm.proxy.url, params={'service': 'workclaim', 'id': task_id, 'worker': 'w'},
                             headers=headers, timeout=30)
    read = farm.session.post(farm.proxy.url, params={'service': 'workinput'}, headers=headers, timeout=30,
                             data={'id': task_id, 'attempt': '1', 'path': 'tasks/in/x'})

    assert (claim.status_code, read.status_code) == (405, 405), (claim.text, read.text)
    assert 'is a POST' in claim.text and 'is a GET' in read.text
    assert farm.info(task_id).get('worker') is None


@pytest.fixture(scope='module')
def guarded_server():
    """A server (in-process, no farm) with a client token and a worker token."""
    import deploy
    config = f'token = {CLIENT_TOKEN}\nworkerToken = {WORKER_TOKEN}\n'
    with deploy.running(deploy.deployment('wsgi', config=config, services={'sh': SH_SERVICE})) as server:
        yield server


CLIENT_TOKEN = 'the-clients-token-of-this-server'


@pytest.mark.parametrize('headers', [{'X-RRCloud-Worker-Token': WORKER_TOKEN},
                                     {'Authorization': f'Bearer {WORKER_TOKEN}'}],
                         ids=['worker header', 'as a bearer'])
def test_the_worker_token_opens_no_clients_route(guarded_server, headers):
    before = sorted(guarded_server.store.rglob('*'))

    submitted = guarded_server.session.post(guarded_server.url + '/', data={'service': 'sh'}, headers=headers,
                                            files={'fileIn0': ('a.sh', 'echo hi > "$1"\n')}, timeout=30)
    listed = guarded_server.session.get(guarded_server.url + '/', params={'service': 'info'}, headers=headers,
                                        timeout=30)

    assert (submitted.status_code, listed.status_code) == (401, 401), (submitted.text, listed.text)
    assert sorted(guarded_server.store.rglob('*')) == before


@pytest.mark.parametrize('service', ['workinput', 'workclaim'])
def test_a_work_service_in_the_query_opens_no_clients_file(guarded_server, service):
    client = {'Authorization': f'Bearer {CLIENT_TOKEN}'}
    posted = guarded_server.session.post(guarded_server.url + '/', data={'service': 'sh', 'format': 'json',
                                                                         'wait': '30'},
                                         files={'fileIn0': ('a.sh', 'echo secret > "$1"\n')}, headers=client,
                                         timeout=60).json()
    for path in (posted['out'], f'tasks/log/{posted["id"]}'):
        url = f'{guarded_server.url}/{path}'
        as_a_worker = guarded_server.session.get(url, params={'service': service}, timeout=30,
                                                 headers={'X-RRCloud-Worker-Token': WORKER_TOKEN})
        as_its_client = guarded_server.session.get(url, params={'service': service}, headers=client, timeout=30)

        assert as_a_worker.status_code == 401 and b'secret' not in as_a_worker.content, as_a_worker.text
        assert as_its_client.status_code == 200


def test_the_clients_token_opens_no_workers_route_and_no_farm_no_worker_route(guarded_server):
    client = {'Authorization': f'Bearer {CLIENT_TOKEN}'}
    worker = {'X-RRCloud-Worker-Token': WORKER_TOKEN}

    def claim(headers):
        return guarded_server.session.post(guarded_server.url + '/', params={'service': 'workclaim'},
                                           data={'id': '1', 'worker': 'w'}, headers=headers, timeout=30)

    as_a_client, as_a_worker = claim(client), claim(worker)

    assert as_a_client.status_code == 403 and 'worker token' in as_a_client.text
    assert as_a_worker.status_code == 404 and 'backend = local' in as_a_worker.text


def test_a_worker_whose_tool_is_missing_refuses_that_service(farm):
    code, said = Worker(farm.redis, farm.proxy.url, services=['ghost'],
                        confs={'ghost': 'path = /nonexistent\ncmd = ghosttool\n'}).refused()

    assert code == 2, said
    assert 'the tool of ghost is not installed here: this worker cannot take it' in said


def test_redis_down_means_503_and_nothing_written_and_queued_work_goes_on_when_it_is_back(farm):
    waiting = farm.post('later', 'echo later > "$1"\n', name='later.sh')  # no worker takes it yet
    running = farm.post('sh', SLOW_SCRIPT.format(seconds=6, word='through'), name='slow.sh')
    runner = farm.worker_of(running)
    wait_for(lambda: 'started' in farm.log(running), 'the tool to start', timeout=30)
    farm.redis.stop()  # and Redis forgets it: it keeps nothing on disk here
    before, record_before = farm.store_files(), (farm.store / 'tasks' / 'info' / waiting).read_bytes()

    answer = farm.session.post(farm.proxy.url, data={'service': 'echo'}, files={'fileIn0': ('a.txt', b'hi')},
                               timeout=30)
    moved = farm.session.post(farm.proxy.url, data={'service': 'move', 'id': waiting, 'to': 'front'}, timeout=30)

    for refused in (answer, moved):
        assert refused.status_code == 503, refused.text
        assert refused.text.startswith("error: the farm's queue (Redis at 127.0.0.1:") and refused.text.count('\n') == 1
    assert farm.store_files() == before
    assert (farm.store / 'tasks' / 'info' / waiting).read_bytes() == record_before
    # The worker that runs a task while Redis is away keeps running it.
    wait_for(lambda: 'Redis: ConnectionError while a task runs; its run goes on' in runner.log.read_text(),
             'the worker to notice', timeout=30)
    farm.redis.start()
    for server in farm.fronts:  # a front-end that starts pushes again what Redis lost
        server.stop()
        server.start()
    wait_for(farm.proxy.meta_answers, 'haproxy to see the front-ends again', timeout=30)
    farm.workers.append(Worker(farm.redis, farm.proxy.url, services=['later'], confs=LATER).start())
    assert farm.ended(waiting, timeout=120)['status'] == 'complete'
    assert farm.ended(farm.post('echo', 'back again\n', name='a.txt'), timeout=120)['status'] == 'complete'
    record = farm.ended(running)
    assert (record['status'], record['attempt'], record['worker']) == ('complete', '1', runner.name()), record
    assert farm.session.get(farm.proxy.url + record['out'], timeout=30).content == b'through\n'
    said = runner.log.read_text()
    assert 'again in' not in said and 'rrcloud: worker: Redis is back' in said and runner.process.poll() is None, said
    assert runner.name() in farm.redis.worker_names()  # listed again in the Redis that came back empty


def test_serve_check_warns_of_a_redis_without_a_password(tmp_path):
    from helpers import free_port
    (tmp_path / 'rrcloudrc').write_text('backend = rq\nredis = redis://127.0.0.1:1/0\n')

    checked = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'serve', '--check', '--port',
                              str(free_port())], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, RRCLOUD_CONFIG=str(tmp_path / 'rrcloudrc')))

    assert checked.returncode == 5, checked
    assert 'rrcloud: warning: redis in rrcloudrc has no password' in checked.stderr


def test_backend_rq_without_redis_is_an_error_naming_what_is_missing(tmp_path):
    (tmp_path / 'rrcloudrc').write_text('backend = rq\n')

    shown = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'meta'], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, RRCLOUD_CONFIG=str(tmp_path / 'rrcloudrc')))

    assert shown.returncode == 4
    assert shown.stderr == 'rrcloud: error: backend = rq needs redis = redis://[:PASSWORD@]HOST:PORT/DB in rrcloudrc\n'


# A record torn by hand or by a disk: no line a record has.
BROKEN_RECORD = b'\x00\x17garbage\nno record here\n'


@pytest.mark.parametrize('record', [None, BROKEN_RECORD], ids=['missing', 'broken'])
def test_a_job_whose_task_is_missing_or_broken_is_moved_aside_and_the_worker_goes_on(farm, record):
    from rq import Queue
    from rq.serializers import JSONSerializer
    from rrc.farmqueue import JOB_FUNCTION, queue_name, redis_connection
    from rrc.config import Config
    task_id = '1700000000-00000-000000' if record is None else '1700000000-00000-000001'
    if record is not None:
        (farm.store / 'tasks' / 'info' / task_id).write_bytes(record)
    config = Config()
    config.redis = farm.redis.url
    queue = Queue(queue_name('echo'), connection=redis_connection(config), serializer=JSONSerializer)
    ghost = queue.enqueue(JOB_FUNCTION, task_id, job_id=task_id)

    wait_for(lambda: ghost.get_status(refresh=True) in ('failed', 'finished'),
             'the job of a task nobody can run moved aside', timeout=60)
    after = farm.post('echo', 'still working\n', name='a.txt')

    assert farm.ended(after, timeout=30)['status'] == 'complete'
    assert all(worker.process.poll() is None for worker in farm.workers)
    if record is None:
        assert task_id not in farm.records()
    else:  # left as it was, for its owner to look at
        assert (farm.store / 'tasks' / 'info' / task_id).read_bytes() == record


def test_a_task_whose_input_is_gone_fails_on_its_worker_and_never_stays_busy(farm):
    task_id = farm.post('idle', 'echo x > "$1"\n', name='gone.sh')
    (farm.store / farm.info(task_id)['in']).unlink()  # a disk, a hand
    worker = Worker(farm.redis, farm.proxy.url, services=['idle'], confs=LATER).start()
    try:
        record, name = farm.ended(task_id, timeout=60), worker.name()
    finally:
        worker.stop()

    assert record['status'] == 'failed' and 'could not lay it out' in record['error'], record
    assert (record['worker'], record['attempt']) == (name, '1')


def test_two_front_ends_that_push_a_lost_job_at_once_queue_it_once(farm):
    import redis
    from rrc.config import Config
    from rrc.farmqueue import PUSHING_KEY, FarmQueue, queue_name
    from rrc.identity import NodeIdentity
    from rrc.store import Store
    task_id = farm.post('idle', 'echo x > "$1"\n', name='twice.sh')
    connection = redis.Redis.from_url(farm.redis.url)
    connection.delete(f'rq:job:{task_id}', PUSHING_KEY + task_id)  # Redis lost it, as one restarted empty
    connection.lrem(f'rq:queue:{queue_name("idle")}', 0, task_id)
    config = Config()
    config.redis = farm.redis.url
    fronts = [FarmQueue(Store(str(farm.store), NodeIdentity.of('farm')), config) for _ in range(2)]
    for front in fronts:
        front.job_state = lambda _: ''  # both looked before either pushed

    pushed = [front.repush_lost([task_id]) for front in fronts]
    waiting = connection.lrange(f'rq:queue:{queue_name("idle")}', 0, -1)
    farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': task_id}, timeout=30)

    assert pushed[1] == []  # (the first, or a front-end's own sweep, pushed it)
    assert waiting.count(task_id.encode()) == 1


def test_a_task_killed_while_it_waits_leaves_nothing_in_the_queues_order(farm):
    import redis
    from rrc.farmqueue import ORDER_KEY, queue_name
    order = ORDER_KEY + queue_name('idle')
    connection = redis.Redis.from_url(farm.redis.url)
    task_id = farm.post('idle', 'echo x > "$1"\n', name='k.sh')
    placed = connection.hexists(order, task_id)

    farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': task_id}, timeout=30)
    refused = ask_to_claim(farm, task_id, 'test.3')  # a worker takes its job: there is nothing to run

    assert placed and refused.status_code == 409
    assert not connection.hexists(order, task_id)


def test_a_torn_queued_record_keeps_no_front_end_from_starting(farm):
    torn = '1700000000-00000-000002'
    (farm.store / 'tasks' / 'info' / torn).write_text(f'id: {torn}\nnode: farm\nqueued: yes\nstatus: busy\n')  # no service
    (farm.store / 'tasks' / 'queue' / torn).write_text('')
    front = farm.fronts[0]
    try:
        front.stop()
        front.start()  # a front-end that starts pushes again what Redis does not hold
        wait_for(farm.proxy.meta_answers, 'haproxy to see the front-end again', timeout=30)
        task_id = farm.post('echo', 'after a torn record\n', name='a.txt')
        assert farm.ended(task_id, timeout=60)['status'] == 'complete'
    finally:
        for folder in ('info', 'queue'):
            (farm.store / 'tasks' / folder / torn).unlink()

    assert f'rrcloud: farm: task {torn} cannot be queued again' in front.log.read_text()


def test_a_worker_without_redis_tries_again_and_says_so(farm):
    redis = RedisServer()  # not started yet: its port answers nothing
    worker = Worker(redis, farm.proxy.url, services=['echo'])
    try:
        worker.start(wait=False)
        wait_for(lambda: 'Redis: ConnectionError; again in' in worker.log.read_text(), 'the worker to say so',
                 timeout=60)
        redis.start()
        # Under its name and the number of its tries (RQ keeps a lost worker's name a while).
        wait_for(lambda: any(name.startswith(worker.name() + '.') for name in redis.worker_names()),
                 'the worker in Redis once it answers', timeout=60)
        assert worker.process.poll() is None
    finally:
        worker.stop()
        redis.stop()


# -- named printers on the farm (issue 21) ---------------------------------------------

SMALL = DATA / 'small.gcode'
EXPECTED = gcode_lines(SMALL)
HOLD = 200  # the simulated printer works on this line until the test releases it
# The pause and cancel G-code of the workers' own printers/mk3.conf (the
# front-ends' conf names none: Marlin's would be sent if theirs counted).
PAUSE = ['M400', 'G91', 'G1 Z7 F900', 'G90']
CANCEL = ['M104 S0', 'M140 S0', 'M106 S0', 'M84 X Y']
WORKER_MK3 = ''.join(f'pause = {code}\n' for code in PAUSE) + ''.join(f'cancel = {code}\n' for code in CANCEL)


class Mk3:
    """Printer mk3 of a farm: the simulated printer, the workers serving it."""

    def __init__(self, farm, sim, workers):
        self.farm, self.sim, self.workers = farm, sim, workers

    def names(self):
        return {worker.name() for worker in self.workers}

    def post(self):
        """A print of small.gcode on mk3 through HAProxy; its id."""
        return self.farm.post('printrun', SMALL.read_bytes(), name='part.gcode', nativeArgs='mk3')

    def ask(self, service, task_id):
        """``service=pause|resume|cancel`` of a task through HAProxy: its answer."""
        answer = self.farm.session.get(self.farm.proxy.url, params={'service': service, 'id': task_id,
                                                                    'format': 'json'}, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def printer(self):
        """mk3 as ``service=printers`` lists it."""
        answer = self.farm.session.get(self.farm.proxy.url, params={'service': 'printers', 'format': 'json'},
                                       timeout=30).json()
        return next(printer for printer in answer if printer['name'] == 'mk3')

    def held_prints(self, count=1):
        """``count`` prints posted to mk3, the first held at line HOLD with its
        sender known to the front-end: (the sim's line count before them, their ids)."""
        self.sim.hold_again()
        mark = len(self.sim.received_numbered)
        ids = [self.post() for _ in range(count)]
        self.holding(ids[0])
        return mark, ids

    def holding(self, task_id):
        """Wait until the print works on line HOLD and the front-end knows its sender runs."""
        assert self.sim.holding.wait(60), self.farm.info(task_id)
        wait_for(lambda: self.farm.info(task_id).get('sender') == 'yes', 'the front-end to know the sender runs',
                 timeout=30)


@pytest.fixture(scope='module')
def mk3(farm):
    """Printer mk3 (simulated: it works 5 ms a line and reports its
    temperatures as M155 does), served by two workers, each with its own
    printers/mk3.conf naming the pty.  The front-ends' store lists mk3 too,
    with a port no worker has: a worker's own port is the one that counts."""
    (farm.store / 'printers').mkdir(exist_ok=True)
    (farm.store / 'printers' / 'mk3.conf').write_text('port = /dev/pts/999\n')
    with PrinterSim(hold_at_line=HOLD, delay=0.005, temp_interval=0.2) as sim:
        os.chown(sim.port, *www_data())  # the workers' user opens the port
        workers = []
        try:
            for _ in range(2):
                workers.append(Worker(farm.redis, farm.proxy.url, services=['printrun'], confs=CONFS,
                                      printers={'mk3': f'port = {sim.port}\n' + WORKER_MK3}).start())
            yield Mk3(farm, sim, workers)
        finally:
            for worker in workers:
                worker.stop()


def test_a_print_on_a_named_printer_runs_on_a_worker_serving_it_and_info_shows_the_printer(mk3):
    farm, sim = mk3.farm, mk3.sim
    mark, (task_id,) = mk3.held_prints()
    printing = farm.info(task_id)
    meta = farm.session.get(farm.proxy.url, params={'service': 'meta', 'format': 'json'}, timeout=30).json()
    sim.release()
    record = farm.ended(task_id)

    assert record['status'] == 'complete', record
    assert record['worker'] in mk3.names()  # not one of the farm's other printrun workers
    shown = {entry.split()[0]: entry.split()[2] for entry in meta['farmWorkers'].split(', ')}
    assert [shown[name] for name in mk3.names()] == ['printrun@mk3+printrun'] * 2, meta['farmWorkers']
    assert (printing['hotend'], printing['hotendTarget'], printing['bed'], printing['bedTarget']) == \
        ('200', '200', '60', '60'), printing
    assert int(printing['layer']) > 0 and float(printing['z']) > 0 and int(printing['bytesSent']) > 0, printing
    assert float(printing['etaSeconds']) > 0 and float(printing['elapsedSeconds']) > 0, printing
    described = gcode_fields(str(SMALL))  # the G-code's metadata, as a print on one server records it
    assert {key: record.get(key) for key in described} == {key: str(value) for key, value in described.items()}
    assert file_lines(sim, mark) == EXPECTED  # every line once, in order


def test_prints_on_one_printer_run_one_after_the_other_in_the_queues_order_whichever_worker_takes_them(mk3):
    farm, sim = mk3.farm, mk3.sim
    mark, (first, second) = mk3.held_prints(2)
    urgent = farm.post('printrun', SMALL.read_bytes(), name='part.gcode', nativeArgs='mk3', priority='5')
    time.sleep(2.5)  # a sweep of each front-end has passed: the second is still not given to a worker
    waiting, listed = farm.info(second), mk3.printer()
    import redis
    pushed = redis.Redis.from_url(farm.redis.url).exists(f'rq:job:{second}')
    sim.release()
    records = [farm.ended(first), farm.ended(urgent), farm.ended(second)]

    assert (waiting['status'], waiting.get('queued')) == ('busy', 'yes'), waiting
    assert pushed == 0
    assert (listed['state'], listed['task']) == ('printing', first), listed
    assert mk3.printer()['state'] == 'idle'  # its port is the worker's: never "offline" on a front-end
    assert [record['status'] for record in records] == ['complete'] * 3, records
    assert {record['worker'] for record in records} <= mk3.names()
    # one at a time, the one of higher priority before the one submitted earlier
    assert float(records[1]['stime']) >= float(records[0]['etime'])
    assert float(records[2]['stime']) >= float(records[1]['etime'])
    assert file_lines(sim, mark) == EXPECTED * 3


def test_pause_resume_and_cancel_through_a_front_end_reach_the_print_on_its_worker(mk3):
    farm, sim = mk3.farm, mk3.sim
    mark, (task_id,) = mk3.held_prints()
    paused = mk3.ask('pause', task_id)
    wait_for(lambda: 'rrcloud print: asked to pause' in farm.log(task_id), 'the sender to hear the pause')
    sim.release()
    wait_for(lambda: after_line(sim, HOLD, mark)[:len(PAUSE)] == PAUSE, 'the pause G-code')
    lines = len(file_lines(sim, mark))
    time.sleep(1.5)
    still = len(file_lines(sim, mark))
    mk3.ask('resume', task_id)
    resumed = farm.ended(task_id)

    cancel_mark, (cancelled_id,) = mk3.held_prints()
    mk3.ask('cancel', cancelled_id)
    wait_for(lambda: 'rrcloud print: asked to cancel' in farm.log(cancelled_id), 'the sender to hear the cancel')
    sim.release()
    cancelled = farm.ended(cancelled_id)

    assert paused['suspended'] == 'yes', paused
    assert lines == still == HOLD  # no line moved while paused
    assert resumed['status'] == 'complete', resumed
    assert file_lines(sim, mark)[:len(EXPECTED)] == EXPECTED
    assert (cancelled['status'], cancelled['error']) == ('failed', 'cancelled'), cancelled
    assert file_lines(sim, cancel_mark) == EXPECTED[:HOLD]
    assert sim.received[-len(CANCEL):] == CANCEL  # and nothing after it


def test_a_killed_print_keeps_its_printer_until_its_worker_has_cancelled_it(mk3):
    """A kill ends the record at once, but the worker's sender needs the line
    in flight answered to run the cancel G-code: all that while (here longer
    than the sweep's patience with a silent worker) the printer is the killed
    print's, and the next print waits."""
    from rrc.farmwork import LOST_SECONDS
    farm, sim = mk3.farm, mk3.sim
    mark, (first, second) = mk3.held_prints(2)
    killed = farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': first}, timeout=30)
    wait_for(lambda: 'the print is cancelled' in farm.log(first), 'the worker to hear the kill')
    time.sleep(LOST_SECONDS + 2.5)  # past the sweep's patience, its worker's sender still held mid-line
    waiting = farm.info(second)
    sim.release()
    printed = farm.ended(second)

    assert killed.status_code == 200, killed.text
    assert (waiting['status'], waiting.get('queued')) == ('busy', 'yes'), waiting
    assert printed['status'] == 'complete', printed
    assert (farm.info(first)['status'], farm.info(first)['error']) == ('failed', 'killed')
    assert file_lines(sim, mark) == EXPECTED[:HOLD] + EXPECTED  # the second print only after the first
    cancelled = after_line(sim, HOLD, mark)
    assert cancelled[:len(CANCEL)] == CANCEL, cancelled[:10]  # the killed print's cancel G-code, then the next


def test_an_emergency_stop_reaches_a_killed_print_on_its_worker_during_its_cancel(mk3):
    farm, sim = mk3.farm, mk3.sim
    mark, (task_id,) = mk3.held_prints()
    farm.session.get(farm.proxy.url, params={'service': 'kill', 'id': task_id}, timeout=30)
    wait_for(lambda: 'the print is cancelled' in farm.log(task_id), 'the worker to hear the kill')
    stopped = farm.session.get(farm.proxy.url, params={'service': 'stop', 'id': task_id, 'format': 'json'},
                               timeout=30)
    # (the simulated printer reads its input again once released: Marlin's emergency parser would at once)
    wait_for(lambda: 'emergency stop: M112 sent' in farm.log(task_id), 'the sender to send M112')
    sim.release()
    wait_for(lambda: 'running' not in farm.info(task_id) and 'emergency stop' in farm.log(task_id),
             'the worker to end its print')

    assert stopped.status_code == 200, stopped.text
    assert file_lines(sim, mark) == EXPECTED[:HOLD]
    assert after_line(sim, HOLD, mark)[:1] == ['M112']  # at once, not after the cancel G-code
    assert farm.info(task_id)['error'] == 'killed'


def test_a_worker_refuses_a_print_by_port_on_its_named_printers_port(tmp_path, monkeypatch):
    from rrc.errors import RRCloudError
    from rrc.workrun import WorkRun
    (tmp_path / 'printers').mkdir()
    (tmp_path / 'printers' / 'mk3.conf').write_text('port = /dev/ttyACM7\n')
    monkeypatch.chdir(tmp_path)
    run = WorkRun(None, None, '1', 'pi', ['printrun'], str(tmp_path), printers=['mk3'])

    with pytest.raises(RRCloudError, match="/dev/ttyACM7 is printer mk3's port on this worker: print on it by"):
        run.check_port_is_no_named_printers({'service': 'printrun', 'nativeArgs': '--baud=250000 /dev/ttyACM7'})
    run.check_port_is_no_named_printers({'service': 'printrun', 'nativeArgs': '/dev/ttyACM8'})  # another port


@pytest.mark.parametrize('printer, conf, said', [
    ('mk9', None, "--printer=mk9: unknown printer 'mk9' (configured: none)"),
    ('mk8', 'port = /etc/passwd\n', "printers/mk8.conf:1: port: not a serial device path: '/etc/passwd'"),
    ('../mk7', None, "--printer='../mk7': a printer's name is lower-case letters"),
])
def test_a_worker_refuses_to_start_for_a_printer_it_has_no_good_conf_of(farm, printer, conf, said):
    code, log = Worker(farm.redis, farm.proxy.url, services=['printrun'], confs=CONFS,
                       printers={printer: conf}).refused()

    assert code == 2 and said in log, log


def test_a_printers_turn_left_by_a_front_end_that_died_is_freed_by_the_sweep(mk3):
    import redis
    farm, sim = mk3.farm, mk3.sim
    sim.release()  # no hold: the print runs through
    mark = len(sim.received_numbered)
    gone = '1700000000-00000-000000'  # a print whose front-end died before it handed the turn on
    redis.Redis.from_url(farm.redis.url).set('rrcloud:printer:mk3', gone)
    record = farm.ended(mk3.post())  # waits for a sweep (every 2 s) to free the turn

    assert record['status'] == 'complete', record
    assert file_lines(sim, mark) == EXPECTED
