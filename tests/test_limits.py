"""What a task's tool may use while it runs (issue 18): memory, processes,
bytes written, log size, time suspended; and where each limit shows.

The bombs run on a live ``rrcloud serve`` as www-data, as a real server
would: the kernel does not count a root user's processes against
RLIMIT_NPROC, and this suite runs as root, so a fork bomb tried as root
would prove nothing.  Each bomb runs beside an honest task started at the
same time, which must complete.
"""
import io
import os

import pytest

import deploy
from conftest import make_service, task_id_of, write_config
from helpers import REPO, SH_SERVICE, submit, wait_done, wait_for

from rrc.limits import TaskCgroup, ToolLimits, claim_cgroup, delegated_cgroup, limit_error, parse_size
from rrc.toollog import ToolLog

SH_OUTPUT_SERVICE = SH_SERVICE + 'output = $fileOut\n'
LIMITS_CONFIG = ('maxTasks = 2\nmaxMemory = 512M\nmaxProcesses = 32\nmaxOutputSize = 20M\n'
                 'maxLogSize = 1M\nmaxSuspend = 1\nopenscad.maxProcesses = 48\n')

MEMORY_BOMB = 'function main() { const a = []; while (true) a.push(new Array(1e6).fill(1.5)); }\n'
FORK_BOMB = """const cp = require('child_process');
function main() { for (let i = 0; i < 3000; i++) cp.spawn('/usr/bin/sleep', ['30']); return CSG.cube(); }
module.exports = { main };
"""
HONEST_JSCAD = 'function main() { return CSG.cube({radius: 5}); }\n'
INPUT_EXTENSIONS = {'openjscad': 'jscad', 'sh': 'sh'}


@pytest.fixture(scope='module')
def server():
    """``rrcloud serve`` as www-data, with small limits and two slots.  Not the
    ``embedded_server`` fixture, which runs it as root: the kernel does not
    count a root user's processes against RLIMIT_NPROC, so the fork bomb
    would prove nothing."""
    built = deploy.Deployment('embedded', config=LIMITS_CONFIG, services={'sh': SH_OUTPUT_SERVICE})
    with deploy.running(built) as live:
        yield live


@pytest.fixture
def cgi_server():
    """rrcloud's CGI under lighttpd (as www-data), with the same limits: its
    runners are started by a CGI process, not by a resident server."""
    built = deploy.Deployment('lighttpd', config=LIMITS_CONFIG, services={'sh': SH_OUTPUT_SERVICE})
    with deploy.running(built) as live:
        yield live


def post(server, service, content, **fields):
    """Start a task whose first input is ``content``; its id."""
    return submit(server, service, content, f'input.{INPUT_EXTENSIONS[service]}', **fields)


def ended(server, task_id, timeout=90):
    """The task's record once it has ended (long-polled)."""
    return wait_done(server, task_id, timeout)


def info_of(server, task_id):
    return server.session.get(f'{server.url}/', timeout=30, params={
        'service': 'info', 'id': task_id, 'format': 'json'}).json()


def log_of(server, task_id):
    return server.session.get(f'{server.url}/tasks/log/{task_id}', timeout=30).content


def group_tasks(pgid):
    """How many processes, threads counted (as the kernel counts them), the
    process group ``pgid`` holds now: a tool's whole sandbox, which runs in a
    group of its own (other tests' tools, as www-data too, are not counted)."""
    count = 0
    for entry in os.listdir('/proc'):
        try:
            if entry.isdigit() and os.getpgid(int(entry)) == pgid:
                count += len(os.listdir(f'/proc/{entry}/task'))
        except OSError:
            pass
    return count


# -- memory and processes ----------------------------------------------------

def test_a_memory_bomb_fails_naming_the_limit_and_a_task_beside_it_completes(server):
    bomb = post(server, 'openjscad', MEMORY_BOMB)
    honest = post(server, 'openjscad', HONEST_JSCAD)

    record = ended(server, bomb)

    assert record['status'] == 'failed'
    assert record['error'] == 'memory limit 512 MiB exceeded (maxMemory)'
    assert b'rrcloud: the tool ran into a limit: memory limit 512 MiB exceeded' in log_of(server, bomb)
    other = ended(server, honest)
    assert other['status'] == 'complete', other
    stl = server.session.get(f'{server.url}/{other["out"]}', timeout=30).content
    assert len(stl) == 84 + 12 * 50  # a binary STL of a cube: 12 triangles


def test_the_limits_hold_for_a_task_started_through_the_cgi(cgi_server):
    bomb = post(cgi_server, 'openjscad', MEMORY_BOMB)
    forks = post(cgi_server, 'openjscad', FORK_BOMB)

    assert ended(cgi_server, bomb)['error'] == 'memory limit 512 MiB exceeded (maxMemory)'
    assert ended(cgi_server, forks)['error'] == 'process limit 32 reached (maxProcesses)'
    meta = cgi_server.session.get(f'{cgi_server.url}/?service=meta&format=json', timeout=30).json()
    assert (meta['limits'], meta['maxMemory']) == ('rlimit', str(512 << 20))


def test_a_fork_bomb_fails_naming_the_limit_and_starts_no_more_than_it(server):
    bomb = post(server, 'openjscad', FORK_BOMB)
    honest = post(server, 'openjscad', HONEST_JSCAD)
    most, tool = 0, None
    while (record := info_of(server, bomb))['status'] == 'busy':
        tool = int(record['pid']) if record.get('pid') else tool
        most = max(most, group_tasks(tool) if tool else 0)

    assert record['status'] == 'failed', (record, log_of(server, bomb))
    assert record['error'] == 'process limit 32 reached (maxProcesses)'
    assert b'EAGAIN' in log_of(server, bomb)
    # 32 in the sandbox's own user namespace, and bwrap outside it.
    assert 0 < most <= 32 + 1, most
    assert ended(server, honest)['status'] == 'complete'
    wait_for(lambda: group_tasks(int(record['pid'])) == 0, 'the bomb\'s processes are gone', timeout=30)


def test_meta_says_what_a_tool_may_use_and_how_it_is_enforced(server):
    meta = server.session.get(f'{server.url}/?service=meta&format=json', timeout=30).json()
    text = server.session.get(f'{server.url}/?service=meta', timeout=30)

    assert meta['limits'] == 'rlimit'  # www-data, no delegated cgroup on this machine
    assert (meta['maxMemory'], meta['maxProcesses']) == (str(512 << 20), '32')
    assert (meta['maxOutputSize'], meta['maxLogSize'], meta['maxSuspend']) == (str(20 << 20), str(1 << 20), '1')
    assert meta['serviceLimits'] == 'openscad.maxProcesses=48'
    assert text.status_code == 200  # what a 0.019 client reads: key: value lines
    assert 'serviceLimits: openscad.maxProcesses=48' in text.text.splitlines()


def test_serve_check_names_the_limits(server):
    import subprocess
    import sys
    check = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'serve', '--check', '--port',
                            str(server.port)], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, RRCLOUD_CONFIG=str(server.rrcloudrc)))

    assert check.returncode == 0, check
    assert ('rrcloud: tool limits (by rlimit): memory 512 MiB, 32 processes, output 20 MiB, log 1 MiB, '
            'suspended at most 1 s') in check.stdout.splitlines()


# -- bytes written, while the tool runs ----------------------------------------

def test_a_tool_writing_past_max_output_size_is_stopped_while_it_runs(server):
    # Five-MiB files, one after another, without end: only the limit stops it.
    script = ('i=0; while true; do head -c 5242880 /dev/zero > tasks/out/part$i || exit 9; '
              'echo wrote part$i; i=$((i+1)); sleep 0.25; done\n')

    record = ended(server, post(server, 'sh', script))

    assert record['status'] == 'failed'
    assert record['error'] == 'its output passed maxOutputSize (20 MiB) while it ran'
    written = [line for line in log_of(server, record['id']).splitlines() if line.startswith(b'wrote')]
    # 20 MiB, and what came before the runner's next look (half a second: two
    # files, more on a busy machine): the disk holds at most twice the limit.
    assert 4 <= len(written) <= 4 + 4, written
    assert not os.listdir(server.store / 'tasks' / 'work')


def test_output_hidden_deep_under_long_names_still_counts(server):
    name = 'n' * 200  # 30 levels of these: a path of 6,000 characters, longer than the kernel takes
    script = (f'cd tasks/out\ni=0; while [ $i -lt 30 ]; do mkdir {name} && cd {name}; i=$((i+1)); done\n'
              'j=0; while true; do head -c 5242880 /dev/zero > part$j || exit 9; echo wrote part$j; '
              'j=$((j+1)); sleep 0.1; done\n')

    record = ended(server, post(server, 'sh', script))

    assert record['error'] == 'its output passed maxOutputSize (20 MiB) while it ran'
    assert not os.listdir(server.store / 'tasks' / 'work')


def test_output_folders_nested_past_all_reason_stop_the_tool(server):
    script = 'cd tasks/out\ni=0; while [ $i -lt 300 ]; do mkdir d && cd d; i=$((i+1)); done\nsleep 60\n'

    record = ended(server, post(server, 'sh', script))

    assert record['error'] == 'its output folders are nested deeper than 128 levels'
    assert not os.listdir(server.store / 'tasks' / 'work')


def test_one_file_past_max_output_size_stops_its_writer(server):
    record = ended(server, post(server, 'sh', 'head -c 104857600 /dev/zero > "$1"\necho "head: $?"\n'))

    assert record['status'] == 'failed'
    assert record['error'] in ('the output is larger than 20971520 bytes',  # it ended first
                               'its output passed maxOutputSize (20 MiB) while it ran')
    assert b'head: 153' in log_of(server, record['id'])  # killed by SIGXFSZ at 20 MiB and a byte
    assert not (server.store / record['out']).exists()


def test_a_tool_printing_500_mb_leaves_its_start_and_end_in_a_capped_log(server):
    script = ('echo first line\nyes "the same line again and again" | head -c 524288000\n'
              'echo last line\necho made > "$1"\n')

    record = ended(server, post(server, 'sh', script))

    assert record['status'] == 'complete', record
    log = log_of(server, record['id'])
    assert (1 << 20) - 4096 <= len(log) <= (1 << 20) + 200, len(log)
    assert log.startswith(b'first line\nthe same line again and again\n')
    assert log.endswith(b'the same line again and again\nthe same line again last line\n')
    cut = [line for line in log.splitlines() if line.startswith(b'rrcloud: ')]
    assert len(cut) == 1 and b'of the tool\'s output cut here (maxLogSize 1 MiB)' in cut[0], cut
    printed = len(b'first line\n') + 524288000 + len(b'last line\n')
    cut_bytes = int(cut[0].split(b'(')[1].split()[0])
    assert printed - (1 << 20) <= cut_bytes <= printed - (1 << 20) + 30  # and the part of a line


# -- suspension ------------------------------------------------------------------

def test_a_task_suspended_past_max_suspend_is_killed_and_frees_its_slot(server):
    task_id = post(server, 'sh', 'sleep 60\necho late > "$1"\n')
    wait_for(lambda: server.session.get(f'{server.url}/?service=info&id={task_id}&format=json',
                                        timeout=30).json().get('pid'), 'the tool runs')
    suspended = server.session.get(f'{server.url}/?service=suspend&id={task_id}&format=json', timeout=30)
    assert suspended.json().get('suspended') == 'yes', suspended.text

    record = ended(server, task_id, timeout=30)

    assert record['status'] == 'failed'
    assert record['error'] == 'suspended longer than maxSuspend (1 s)'
    assert b'rrcloud: suspended longer than maxSuspend (1 s): the tool was stopped' in log_of(server, task_id)
    after = ended(server, post(server, 'sh', 'echo next > "$1"\n'))
    assert after['status'] == 'complete'


# -- the sandbox's own file systems --------------------------------------------

def test_the_sandbox_root_is_read_only_and_job_has_a_size(proc, workdir):
    make_service(workdir, 'sh', SH_OUTPUT_SERVICE)
    (workdir / 'fill.sh').write_text(
        'touch /planted 2>&1 || echo "root: refused"\n'
        'head -c 100000000 /dev/zero > /job/big || echo "job: full"\n'
        'head -c 300000000 /dev/zero > /tmp/big || echo "tmp: full"\n'
        'echo done > "$1"\n')

    result = proc('--sync', 'sh', 'fill.sh')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    log = (workdir / 'tasks' / 'log' / task_id).read_text()
    assert 'Read-only file system' in log and 'root: refused' in log
    assert 'No space left on device' in log and 'job: full' in log and 'tmp: full' in log


# -- the settings ----------------------------------------------------------------

def test_a_service_may_have_its_own_limit(proc, workdir):
    write_config(workdir, 'maxMemory = 8G\nopenjscad.maxMemory = 256M\n')
    (workdir / 'bomb.jscad').write_text(MEMORY_BOMB)

    result = proc('--sync', 'openjscad', 'bomb.jscad', '-obomb.stl')
    meta = proc('meta')

    assert result.code != 0
    assert 'memory limit 256 MiB exceeded (maxMemory)' in result.err
    assert 'serviceLimits: openjscad.maxMemory=268435456' in meta.out.splitlines()
    assert f'maxMemory: {8 << 30}' in meta.out.splitlines()


def test_max_memory_by_default_shares_the_machines_ram_among_the_slots(proc, workdir):
    write_config(workdir, 'maxTasks = 4\n')
    ram = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')

    meta = proc('meta')

    assert f'maxMemory: {max(256 << 20, int(ram * 0.75) // 4)}' in meta.out.splitlines()


def test_a_limit_for_an_unknown_service_is_an_error_naming_the_line(proc, workdir):
    write_config(workdir, 'openscd.maxMemory = 1G\n')

    result = proc('meta')

    assert result.code != 0
    assert "rrcloudrc:1: unknown key 'openscd.maxMemory': no service 'openscd'" in result.err


@pytest.mark.parametrize('text, size', [('1048576', 1 << 20), ('512M', 512 << 20), ('2 GiB', 2 << 30),
                                         ('1.5G', 3 << 29), ('10MiB', 10 << 20), ('64k', 64 << 10)])
def test_sizes_are_bytes_or_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize('text', ['', 'M', '-5', '1e9', 'inf', 'nan', '0', '2X', '.5G', '1/2G'])
def test_a_bad_size_is_refused(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_a_bad_max_memory_is_an_error_naming_the_file_and_line(proc, workdir):
    write_config(workdir, '\nmaxMemory = lots\n')

    result = proc('meta')

    assert result.code != 0 and "rrcloudrc:2: bad value for maxMemory: 'lots'" in result.err


# -- the log's head and tail, which limit a failure names ------------------------

def test_the_log_keeps_head_and_tail_and_says_how_much_was_cut():
    log = io.BytesIO()
    tool = ToolLog(log, 100)
    for number in range(1000):
        tool.write(b'line %d\n' % number)
    tool.close()

    lines = log.getvalue().splitlines(keepends=True)
    assert lines[0] == b'line 0\n' and lines[-1] == b'line 999\n'
    marker = [line for line in lines if line.startswith(b'rrcloud: ')]
    kept = len(log.getvalue()) - len(marker[0]) - 1  # the newline that ends a cut line
    printed = sum(len(b'line %d\n' % number) for number in range(1000))
    assert kept <= 100
    assert marker == [f'rrcloud: {(printed - kept) / 1024:.1f} KiB ({printed - kept} bytes) of the tool\'s '
                      f'output cut here (maxLogSize 100 bytes)\n'.encode()]


def test_a_short_log_is_left_as_it_is():
    log = io.BytesIO()
    tool = ToolLog(log, 1000)
    tool.write(b'all of it\n')
    tool.close()
    assert log.getvalue() == b'all of it\n'


LIMITS = ToolLimits(memory=2 << 30, processes=64, output=1 << 30, log=10 << 20)


@pytest.mark.parametrize('code, output_end, error', [
    (134, b'FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory',
     'memory limit 2 GiB exceeded (maxMemory)'),
    (-6, b"terminate called after throwing an instance of 'std::bad_alloc'", 'memory limit 2 GiB exceeded (maxMemory)'),
    (1, b'Error: spawn /usr/bin/sleep EAGAIN', 'process limit 64 reached (maxProcesses)'),
    (2, b'sh: 1: Cannot fork', 'process limit 64 reached (maxProcesses)'),
    # A busy port says EAGAIN too: no process limit in that.
    (1, b'Could not exclusively lock port /dev/ttyUSB0: [Errno 11] Resource temporarily unavailable', None),
    (153, b'', 'a file it wrote passed maxOutputSize (1 GiB)'),
    (1, b'ERROR: Parser error in line 3: syntax error', None),
])
def test_the_limit_a_failed_tool_ran_into_is_named(code, output_end, error):
    assert limit_error(LIMITS, code, output_end) == error


# -- cgroup v2 -------------------------------------------------------------------
#
# This machine has no cgroup v2 with the memory and pids controllers (they are
# bound to its cgroup v1 hierarchies), so nothing real can run here: these
# tests lay out the kernel's files in a folder and check what rrcloud reads
# and writes there.  The folder is a stand-in for /sys/fs/cgroup; moving a
# pid into it moves nothing.

def fake_cgroup_tree(tmp_path, own, controllers='memory pids', enabled=''):
    """A /proc/self (mountinfo, cgroup) pointing at a cgroup2 mount in tmp_path/cgroup
    where this process runs in ``own``."""
    mount = tmp_path / 'cgroup'
    folder = mount / own.strip('/')
    folder.mkdir(parents=True)
    (folder / 'cgroup.controllers').write_text(controllers + '\n')
    (folder / 'cgroup.subtree_control').write_text(enabled + '\n')
    (folder / 'cgroup.procs').write_text('')
    (folder.parent / 'cgroup.subtree_control').write_text(enabled + '\n')
    (folder.parent / 'cgroup.procs').write_text('')
    proc = tmp_path / 'proc'
    proc.mkdir()
    (proc / 'mountinfo').write_text(f'30 23 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw\n')
    (proc / 'cgroup').write_text(f'0::{own}\n')
    return mount, proc


def test_a_server_in_a_delegated_cgroup_claims_a_leaf_and_gives_tasks_memory_and_pids(tmp_path):
    mount, proc = fake_cgroup_tree(tmp_path, '/system.slice/rrcloud.service')
    service = mount / 'system.slice' / 'rrcloud.service'

    assert claim_cgroup(str(proc))

    assert (service / 'server' / 'cgroup.procs').read_text() == str(os.getpid())
    assert (service / 'cgroup.subtree_control').read_text() == '+memory +pids'
    # What the kernel would show now: this process in the leaf, the controllers on.
    (proc / 'cgroup').write_text('0::/system.slice/rrcloud.service/server\n')
    (service / 'cgroup.subtree_control').write_text('memory pids\n')
    assert delegated_cgroup(str(proc)) == (str(service), str(service / 'server'))


def test_a_server_started_in_its_leaf_enables_memory_and_pids_beside_it(tmp_path):
    mount, proc = fake_cgroup_tree(tmp_path, '/system.slice/rrcloud.service/server')
    service = mount / 'system.slice' / 'rrcloud.service'

    assert claim_cgroup(str(proc))

    assert (service / 'cgroup.subtree_control').read_text() == '+memory +pids'
    assert not (service / 'server' / 'server').exists()


def test_cgroups_are_made_only_beside_rrclouds_own_leaf(tmp_path):
    mount, proc = fake_cgroup_tree(tmp_path, '/system.slice/apache2.service', enabled='memory pids')

    assert delegated_cgroup(str(proc)) is None


def test_a_cgroup_without_memory_and_pids_is_not_claimed(tmp_path):
    mount, proc = fake_cgroup_tree(tmp_path, '/system.slice/rrcloud.service', controllers='cpu io')

    assert not claim_cgroup(str(proc))
    assert not (mount / 'system.slice' / 'rrcloud.service' / 'server').exists()


def test_a_task_cgroup_gets_the_limits_and_the_runner_and_tells_which_was_hit(tmp_path):
    mount, proc = fake_cgroup_tree(tmp_path, '/rrcloud.service/server', enabled='memory pids')
    parent, own = delegated_cgroup(str(proc))
    limits = ToolLimits(memory=1 << 30, processes=64, output=1 << 20, log=1 << 20)
    folder = mount / 'rrcloud.service' / 'task-1796652625-57965-393050'

    cgroup = TaskCgroup(parent, own, '1796652625-57965-393050', limits).enter()
    # The runner's share too: itself and the half of the log it keeps.
    assert (folder / 'memory.max').read_text() == str((1 << 30) + (64 << 20) + (1 << 19))
    assert (folder / 'pids.max').read_text() == str(64 + 8)
    assert (folder / 'cgroup.procs').read_text() == str(os.getpid())  # the tool is born in it
    assert cgroup.exceeded() is None
    (folder / 'memory.events').write_text('low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n')
    assert cgroup.exceeded() == 'memory'
    assert limit_error(limits, -9, b'', cgroup) == 'memory limit 1 GiB exceeded (maxMemory)'
    (folder / 'memory.events').write_text('low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n')
    (folder / 'pids.events').write_text('max 3\n')
    assert cgroup.exceeded() == 'processes'
    (folder / 'pids.events').write_text('max 0\n')
    # With a cgroup only the kernel's counters count, never the tool's words.
    assert limit_error(limits, 1, b'JavaScript heap out of memory', cgroup) is None
    for name in os.listdir(folder):  # the kernel takes a cgroup's files with it
        os.unlink(folder / name)
    (folder / 'cgroup.kill').write_text('')  # ... but this one stays: the cgroup looks busy

    assert cgroup.leave() == 'cannot remove its cgroup task-1796652625-57965-393050: processes stay in it'
    assert (folder / 'cgroup.kill').read_text() == '1'  # what was left in it is ended
    os.unlink(folder / 'cgroup.kill')
    assert cgroup.leave() == ''
    assert not folder.exists()
    assert (mount / 'rrcloud.service' / 'server' / 'cgroup.procs').read_text() == str(os.getpid())
