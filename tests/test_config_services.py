"""Configuration (rrcloudrc) and service confs: reading, errors, argv composition, argument checks.

Everything runs against real files in the per-test temp folders of the
``workdir`` fixture (HOME and the current folder are fresh and empty there).
"""
import os
import re
from pathlib import Path

import pytest

from rrc.config import load_config
from rrc.errors import ConfigError, ExitCode, UsageError
from rrc.services import check_native_args, check_prearg, compose_argv, load_services, parse_service
from conftest import REPO, make_service, task_id_of, wait_until_done, write_config
from helpers import one_line_error

SHIPPED_SERVICES = REPO / 'services'
SHIPPED_RRCLOUDRC = REPO / 'rrcloudrc'
SIX = ('echo', 'openjscad', 'openscad', 'povray', 'printrun', 'slic3r')
# printrun runs rrcloud's built-in G-code sender; printcore is Printrun's own sender.
SHIPPED = SIX + ('printcore',)
ID = '1795841292-04767-953464'


def shipped(name):
    """One of the service confs shipped beside rrcloud.py."""
    return parse_service(str(SHIPPED_SERVICES / f'{name}.conf'))


def key_values(text):
    """``key: value`` lines into a dict."""
    return dict(line.split(': ', 1) for line in text.splitlines() if ': ' in line)


def leftovers(root):
    """Task records and stored inputs under ``ROOT/tasks`` (a refused command leaves none)."""
    tasks = Path(root) / 'tasks'
    return sorted(str(p.relative_to(root)) for folder in ('info', 'in', 'queue')
                  for p in (tasks / folder).glob('*'))


###############################################################################
# 1. rrcloudrc: where it is read from, and which file wins
###############################################################################

def test_without_any_rrcloudrc_the_defaults_apply(workdir):
    config = load_config()

    assert config.port == 4468
    assert config.servers == []
    assert config.timeout == 1800
    assert config.maxDataRetention == 24
    assert config.maxTasks == os.cpu_count()
    assert Path(config.dir) == workdir, 'the store root defaults to the current folder'
    assert config.servers_for('slic3r') == []


def test_home_rrcloudrc_is_read_and_local_rrcloudrc_wins_over_it(workdir):
    home = Path(os.environ['HOME'])
    write_config(home, 'port = 5000\ntimeout = 60\n', name='.rrcloudrc')
    write_config(workdir, 'port = 6000\n')

    config = load_config()

    assert config.port == 6000, './rrcloudrc is read last and wins'
    assert config.timeout == 60, 'what ./rrcloudrc does not set comes from ~/.rrcloudrc'


def test_home_rrcloudrc_alone_applies(workdir):
    write_config(Path(os.environ['HOME']), 'maxTasks = 3\n', name='.rrcloudrc')

    assert load_config().maxTasks == 3


def test_meta_shows_the_merged_settings_of_both_files(cli, workdir):
    write_config(Path(os.environ['HOME']), 'timeout = 60\nmaxTasks = 3\n', name='.rrcloudrc')
    write_config(workdir, 'maxTasks = 5\n')

    result = cli('meta')

    assert result.code == 0 and result.err == '', result
    meta = key_values(result.out)
    assert (meta['timeout'], meta['maxTasks']) == ('60', '5')


def test_rrcloud_config_names_the_only_file_read(workdir, tmp_path, monkeypatch):
    write_config(Path(os.environ['HOME']), 'port = 5000\ntimeout = 60\n', name='.rrcloudrc')
    write_config(workdir, 'port = 6000\nmaxTasks = 3\n')
    named = write_config(tmp_path, 'port = 7000\n', name='other.rc')
    monkeypatch.setenv('RRCLOUD_CONFIG', str(named))

    config = load_config()

    assert config.port == 7000
    assert config.timeout == 1800, '~/.rrcloudrc is not read'
    assert config.maxTasks == os.cpu_count(), './rrcloudrc is not read'


@pytest.mark.parametrize('what', ['missing file', 'folder'])
def test_rrcloud_config_naming_no_file_is_an_error(cli, workdir, tmp_path, monkeypatch, what):
    named = tmp_path / 'nowhere.rc'
    if what == 'folder':
        named.mkdir()
    write_config(workdir, 'port = 6000\n')  # present, but must not be used instead
    monkeypatch.setenv('RRCLOUD_CONFIG', str(named))

    with pytest.raises(ConfigError) as raised:
        load_config()
    assert str(named) in str(raised.value)

    result = cli('meta')
    assert result.code == ExitCode.CONFIG == 4
    assert str(named) in one_line_error(result)
    assert result.out == ''


###############################################################################
# 2. rrcloudrc: syntax and keys
###############################################################################

def test_both_separators_and_both_kinds_of_comment(workdir):
    write_config(workdir, (
        '# a whole-line comment: port = 1\n'
        '   # an indented comment\n'
        '\n'
        'port: 5000   # a trailing comment\n'
        'timeout=60\n'
        'maxDataRetention = 2.5# no space before the comment\n'
        'maxTasks :3\n'
        'servers = a.local, b.local:4468, http://c.local:4468  # three servers\n'
        'slic3r.servers: d.local\n'
    ))

    config = load_config()

    assert config.port == 5000
    assert config.timeout == 60
    assert config.maxDataRetention == 2.5
    assert config.maxTasks == 3
    assert config.servers == ['a.local', 'b.local:4468', 'http://c.local:4468']
    assert config.servers_for('slic3r') == ['d.local']


def test_servers_for_prefers_the_services_own_list(workdir):
    write_config(workdir, 'servers = a.local, b.local\nslic3r.servers = c.local\n')

    config = load_config()

    assert config.servers_for('slic3r') == ['c.local']
    assert config.servers_for('openscad') == ['a.local', 'b.local']


def test_relative_dir_is_taken_from_the_config_files_folder(workdir, tmp_path, monkeypatch):
    etc = tmp_path / 'etc'
    etc.mkdir()
    monkeypatch.setenv('RRCLOUD_CONFIG', str(write_config(etc, 'dir = store\n')))

    assert Path(load_config().dir) == etc / 'store', 'not relative to the current folder'


def test_relative_dir_in_home_rrcloudrc_is_under_home(workdir):
    home = Path(os.environ['HOME'])
    write_config(home, 'dir = rr/store\n', name='.rrcloudrc')

    assert Path(load_config().dir) == home / 'rr' / 'store'


def test_absolute_dir_is_taken_as_is(workdir, tmp_path):
    write_config(workdir, f'dir = {tmp_path / "elsewhere"}\n')

    assert Path(load_config().dir) == tmp_path / 'elsewhere'


def test_tasks_go_to_the_configured_dir(cli, workdir):
    write_config(workdir, 'dir = store\n')

    result = cli('echo', 'hello world')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    record = wait_until_done(workdir / 'store', task_id)
    assert record['status'] == 'complete', record
    assert (workdir / 'store' / 'tasks' / 'info' / task_id).is_file()
    assert (workdir / 'store' / 'tasks' / 'out' / task_id).read_text() == 'hello world'
    assert sorted(os.listdir(workdir)) == ['rrcloudrc', 'store'], 'nothing in the current folder'


def test_the_task_runs_under_the_settings_of_the_rrcloudrc_that_started_it(cli, workdir):
    # The store root is elsewhere than the current folder; the timeout set in
    # ./rrcloudrc must still stop the task.
    write_config(workdir, 'dir = store\ntimeout = 0.5\n')
    (workdir / 'store').mkdir()
    make_service(workdir / 'store', 'job', 'path = /usr/bin:/bin\ncmd = sh\nnoOutput = yes\n')
    (workdir / 'job.sh').write_text('sleep 3\n')

    result = cli('job', 'job.sh')

    assert result.code == 0, result
    record = wait_until_done(workdir / 'store', task_id_of(result.out))
    assert record['status'] == 'failed', record
    assert record['error'] == 'timeout after 0.5 s', record


BAD_LINES = [
    'port = abc',
    'port = 70000',
    'port = 0',
    'port = 4468.5',
    'port =',
    'timeout = -1',
    'timeout = 0',
    'timeout = nan',
    'timeout = soon',
    'maxTasks = 0',
    'maxTasks = -2',
    'maxTasks = 2.5',
    'maxDataRetention = -1',
    'maxDataRetention = forever',
    'servers = a.local;rm',
    'slic3r.servers = http://a.local/x?y',
    'dir =',
    'colour = blue',
    'slic3r.server = a.local',
    'openscd.servers = a.local',
    'serverName = two words',
    'serverName = a/b',
    'reconnectTimeout = -1',
    'allowHosts = http://printer.local',
    'allowHosts = printer.local:4468',
    'allowHosts = ab:80',
    'allowHosts = -printer',
    'maxMemory = lots',
    'maxMemory = 0',
    'maxLogSize = 1e9',
    'maxProcesses = 0',
    'maxSuspend = never',
    'maxWaitsPerClient = 0',
    'maxConnectionsPerClient = -1',
    'requestHeadTimeout = 0',
    'redis = http://farm.local:6379/0',
    'redis = redis://farm.local:6379/0?password=x',
    'redis = redis://user@farm.local:6379/0',
    'backend = celery',
    'openscd.maxMemory = 1G',
    'openscad.maxLogSize = 1M',
    'just some words',
    'port 4468',
    '= 4468',
]


@pytest.mark.parametrize('url', ['redis://farm.local:6379/0', 'redis://:secret@farm.local:6379/0',
                                 'redis://rrcloud:secret@farm.local:6379/0', 'rediss://:secret@farm.local:6380/1',
                                 'redis://:secret@[::1]:6379'])
def test_a_farms_redis_may_be_reached_with_tls_and_an_acl_user(workdir, url):
    write_config(workdir, f'backend = rq\nredis = {url}\n')

    assert load_config().redis == url


def bad_rrcloudrc(folder, line, name='rrcloudrc'):
    """An rrcloudrc whose third line is ``line`` (the others are fine)."""
    return write_config(folder, f'# rrcloud settings\ntimeout = 60\n{line}\nport = 4468\n', name=name)


@pytest.mark.parametrize('line', BAD_LINES)
def test_bad_line_is_a_config_error_naming_file_and_line(workdir, line):
    path = bad_rrcloudrc(workdir, line)

    with pytest.raises(ConfigError) as raised:
        load_config()

    message = str(raised.value)
    assert f'{path}:3' in message
    assert '\n' not in message


@pytest.mark.parametrize('line', BAD_LINES)
def test_bad_line_makes_the_command_exit_4_with_one_error_line(cli, workdir, line):
    path = bad_rrcloudrc(workdir, line)

    result = cli('meta')

    assert result.code == ExitCode.CONFIG == 4, result
    assert f'{path}:3' in one_line_error(result)
    assert result.out == ''
    assert os.listdir(workdir) == ['rrcloudrc']


def test_a_misspelled_service_in_service_servers_names_the_known_services(cli, workdir):
    path = write_config(workdir, 'timeout = 60\nopenscd.servers = a.local\n')

    result = cli('meta')

    assert result.code == 4, result
    error = one_line_error(result)
    assert f'{path}:2' in error and "'openscd.servers'" in error, error
    assert 'openscad' in error and 'slic3r' in error, 'the known services are named'


def test_service_servers_of_a_service_of_the_store_root_is_fine(workdir):
    make_service(workdir, 'mine', 'cmd = cat\n')
    write_config(workdir, 'mine.servers = a.local\n')

    assert load_config().servers_for('mine') == ['a.local']


def test_server_name_names_this_machine_in_meta_and_in_its_tasks(cli, workdir):
    assert key_values(cli('meta').out)['serverName'] == os.uname().nodename, 'the host name by default'
    write_config(workdir, 'serverName = farm-node-7\n')

    meta = key_values(cli('meta').out)
    task_id = task_id_of(cli('echo', 'a b').out)

    assert meta['serverName'] == 'farm-node-7'
    assert wait_until_done(workdir, task_id)['server'] == 'farm-node-7'


def test_bad_line_in_home_rrcloudrc_names_that_file(cli, workdir):
    path = bad_rrcloudrc(Path(os.environ['HOME']), 'port = abc', name='.rrcloudrc')

    result = cli('meta')

    assert result.code == 4
    assert f'{path}:3' in one_line_error(result)


def test_only_the_first_bad_line_is_reported(cli, workdir):
    path = write_config(workdir, 'port = 4468\nport = abc\nmaxTasks = 0\n')

    result = cli('meta')

    assert result.code == 4
    error = one_line_error(result)
    assert f'{path}:2' in error and f'{path}:3' not in error


###############################################################################
# 3. The shipped rrcloudrc
###############################################################################

def test_shipped_rrcloudrc_parses_to_the_defaults(workdir, monkeypatch):
    monkeypatch.setenv('RRCLOUD_CONFIG', str(SHIPPED_RRCLOUDRC))

    config = load_config()

    assert config.sources == [str(SHIPPED_RRCLOUDRC)]
    assert (config.port, config.servers, config.timeout, config.maxDataRetention) == (4468, [], 1800, 24)
    assert config.maxTasks == os.cpu_count()
    assert Path(config.dir) == workdir


@pytest.mark.parametrize('key', ['port', 'servers', '.servers', 'timeout', 'maxDataRetention',
                                 'maxTasks', 'dir', 'serverName', 'reconnectTimeout', 'maxResultSize'])
def test_shipped_rrcloudrc_shows_every_key_as_a_commented_example(key):
    text = SHIPPED_RRCLOUDRC.read_text()
    pattern = (r'^#[a-z0-9_]+\.servers\s*=' if key == '.servers' else rf'^#{key}\s*=')

    assert re.search(pattern, text, re.M), f'no "#{key} = ..." example in rrcloudrc'


def test_every_example_in_the_shipped_rrcloudrc_is_valid_when_uncommented(workdir, tmp_path, monkeypatch):
    examples = [line[1:] for line in SHIPPED_RRCLOUDRC.read_text().splitlines()
                if re.match(r'#[A-Za-z][\w.-]*\s*[=:]', line)]
    uncommented = write_config(tmp_path, '\n'.join(examples) + '\n', name='uncommented.rc')
    monkeypatch.setenv('RRCLOUD_CONFIG', str(uncommented))

    config = load_config()

    assert config.port == 4468 and config.timeout == 1800 and config.maxDataRetention == 24
    assert config.servers == ['server.local', 'server2.local:4468']
    assert config.servers_for('slic3r') == ['server.local']
    assert config.servers_for('printrun') == ['raspberrypi.local']
    assert config.maxTasks == 4
    assert config.dir == '/var/lib/rrcloud'
    assert config.serverName == 'printfarm-1'
    assert config.reconnectTimeout == 120


###############################################################################
# 4. Service confs: the shipped ones, every key, defaults, overrides
###############################################################################

def test_every_shipped_conf_loads_without_errors(workdir):
    services, errors = load_services(str(workdir))

    assert errors == []
    assert set(SHIPPED) <= set(services)
    for name in SHIPPED:
        assert Path(services[name].source) == SHIPPED_SERVICES / f'{name}.conf'


@pytest.mark.parametrize('name', SHIPPED)
def test_each_shipped_conf_parses_on_its_own(name):
    service = shipped(name)

    assert service.name == name
    assert service.cmd[0] == {'echo': 'cp', 'printrun': 'rrcloud'}.get(name, name)


def test_a_conf_using_every_key(workdir):
    make_service(workdir, 'tool', (
        '# a tool with all the keys\n'
        'path = /opt/tool/bin:/usr/bin\n'
        'cmd = tool --quiet\n'
        'argInput = --config=$fileIn, --extra=$fileIn\n'
        'fileOut = $id.out\n'
        'output = --to $fileOut\n'
        'nativeArgs = --fast, --level=\n'
        'noOutput = no\n'
        'inputExt = dat\n'
    ))

    services, errors = load_services(str(workdir))

    assert errors == []
    tool = services['tool']
    assert tool.path == '/opt/tool/bin:/usr/bin'
    assert tool.input_ext == 'dat'
    assert tool.output_name(ID) == f'{ID}.out'
    argv = compose_argv(tool, ID, [('--config=', 'tasks/in/A.cfg'), ('', 'tasks/in/B.dat')],
                                ['--level=3', '--fast'])
    assert argv == ['tool', '--quiet', '--level=3', '--config=tasks/in/A.cfg',
                    'tasks/in/B.dat', '--fast', '--to', f'tasks/out/{ID}.out']


def test_a_conf_with_only_cmd_gets_the_defaults(workdir):
    make_service(workdir, 'plain', 'cmd = cat\n')

    services, errors = load_services(str(workdir))

    assert errors == []
    plain = services['plain']
    assert plain.path == '/usr/local/bin:/usr/bin:/bin'
    assert plain.no_output is False
    assert compose_argv(plain, ID, [('', 'tasks/in/A')], []) == ['cat', 'tasks/in/A', f'tasks/out/{ID}']


def test_a_conf_in_the_store_root_overrides_the_installed_one(workdir):
    make_service(workdir, 'echo', 'path = /bin\ncmd = cat\n')

    services, errors = load_services(str(workdir))

    assert errors == []
    assert Path(services['echo'].source) == workdir / 'services' / 'echo.conf'
    assert services['echo'].path == '/bin'
    assert compose_argv(services['echo'], ID, [('', 'tasks/in/A.txt')], []) == [
        'cat', 'tasks/in/A.txt', f'tasks/out/{ID}']
    assert Path(services['slic3r'].source) == SHIPPED_SERVICES / 'slic3r.conf', 'the others stay'


###############################################################################
# 5. A malformed service conf: reported by name, the others still load
###############################################################################

BAD_CONFS = [
    # (file name without .conf, text, what the error names besides the file)
    ('unknown_key', 'cmd = cp\ncolour = red\n', 'unknown_key.conf:2'),
    ('bad_line', 'cmd = cp\njust some words\n', 'bad_line.conf:2'),
    ('no_cmd', 'path = /bin\noutput = $fileOut\n', 'cmd'),
    ('empty_cmd', 'cmd =\n', 'cmd'),
    ('out_without_id', 'cmd = cp\nfileOut = result.stl\n', 'fileOut'),
    ('out_in_folder', 'cmd = cp\nfileOut = sub/$id.stl\n', 'fileOut'),
    ('out_climbing', 'cmd = cp\nfileOut = ../$id.stl\n', 'fileOut'),
    ('output_without_fileout', 'cmd = cp\noutput = -o result.stl\n', 'output'),
    ('bad_arginput', 'cmd = cp\nargInput = --load=\n', 'argInput'),
    ('bad_nooutput', 'cmd = cp\nnoOutput = maybe\n', 'maybe'),
    ('Bad-Name', 'cmd = cp\n', 'Bad-Name'),
    ('formats_not_fileout', 'cmd = cp\nfileOut = $id.stl\noutputExts = png, stl\n', 'fileOut'),
    ('bad_format', 'cmd = cp\nfileOut = $id.stl\noutputExts = stl, p/ng\n', 'p/ng'),
    ('bad_param_kind', 'cmd = cp\nparamArgs = -D ANYTHING\n', 'paramArgs'),
    ('param_not_option', 'cmd = cp\nparamArgs = D NAME=VALUE\n', 'paramArgs'),
    ('include_without_folder', 'cmd = cp\nincludeArg = +L\n', 'includeArg'),
]


@pytest.mark.parametrize('name, text, named', BAD_CONFS, ids=[c[0] for c in BAD_CONFS])
def test_malformed_conf_is_reported_by_name_and_the_others_load(workdir, name, text, named):
    make_service(workdir, name, text)
    make_service(workdir, 'good', 'cmd = cat\n')
    path = workdir / 'services' / f'{name}.conf'

    with pytest.raises(ConfigError) as raised:
        parse_service(str(path))
    assert str(path) in str(raised.value) and named in str(raised.value)

    services, errors = load_services(str(workdir))
    assert len(errors) == 1, errors
    assert str(path) in errors[0] and named in errors[0]
    assert name not in services
    assert {'good', *SIX} <= set(services)


def test_meta_lists_the_good_services_and_warns_about_the_bad_one(cli, workdir):
    make_service(workdir, 'broken', 'cmd = cp\ncolour = red\n')
    make_service(workdir, 'good', 'cmd = cat\n')

    result = cli('meta')

    assert result.code == 0, result
    listed = set(key_values(result.out)['services'].split(','))
    assert {'good', *SIX} <= listed
    assert 'broken' not in listed
    warnings = result.err.splitlines()
    assert len(warnings) == 1, result.err
    assert warnings[0].startswith('rrcloud: warning: ')
    assert f'{workdir / "services" / "broken.conf"}:2' in warnings[0]


def test_submitting_to_a_broken_service_names_its_conf(cli, workdir):
    make_service(workdir, 'broken', 'path = /bin\n')
    (workdir / 'in.txt').write_text('hello\n')

    result = cli('broken', 'in.txt')

    assert result.code == ExitCode.USAGE == 2, result
    assert 'broken.conf' in one_line_error(result)
    assert result.out == ''
    assert leftovers(workdir) == []


def test_submitting_to_a_broken_service_names_its_conf_in_a_root_with_a_colon(cli, workdir):
    # A store root may be any folder, "a:b" included.
    root = workdir / 'a:b'
    root.mkdir()
    write_config(workdir, 'dir = a:b\n')
    make_service(root, 'broken', 'path = /bin\n')
    (workdir / 'in.txt').write_text('hello\n')

    result = cli('broken', 'in.txt')

    assert result.code == 2, result
    assert 'broken.conf' in one_line_error(result)
    assert leftovers(root) == []


###############################################################################
# 6. The exact argv of every shipped service
###############################################################################

ARGV_CASES = [
    # (service, inputs as (prearg, path), native args, expected argv)
    ('echo', [('', 'tasks/in/A.txt')], [],
     ['cp', 'tasks/in/A.txt', f'tasks/out/{ID}']),
    ('openscad', [('', 'tasks/in/X.scad')], [],
     ['openscad', 'tasks/in/X.scad', f'-otasks/out/{ID}.stl']),
    # A switch follows the inputs: OpenSCAD's --render would take a file after it for its value.
    ('openscad', [('', 'tasks/in/X.scad')], ['--camera=0,0,0,55,0,25,140', '--render'],
     ['openscad', '--camera=0,0,0,55,0,25,140', 'tasks/in/X.scad', '--render', f'-otasks/out/{ID}.stl']),
    ('openjscad', [('', 'tasks/in/X.jscad')], [],
     ['openjscad', 'tasks/in/X.jscad', f'-otasks/out/{ID}.stl']),
    ('slic3r', [('', 'tasks/in/B.stl')], [],
     ['slic3r', 'tasks/in/B.stl', f'--output=tasks/out/{ID}.gcode']),
    ('slic3r', [('--load=', 'tasks/in/A.ini'), ('', 'tasks/in/B.stl')], [],
     ['slic3r', '--load=tasks/in/A.ini', 'tasks/in/B.stl', f'--output=tasks/out/{ID}.gcode']),
    ('slic3r', [('--load=', 'tasks/in/A.ini'), ('', 'tasks/in/B.stl')],
     ['--layer-height=0.2', '--support-material', '--fill-density=20%'],
     # with an options table every option keeps its place before the inputs (slic3r reads them anywhere)
     ['slic3r', '--layer-height=0.2', '--support-material', '--fill-density=20%',
      '--load=tasks/in/A.ini', 'tasks/in/B.stl', f'--output=tasks/out/{ID}.gcode']),
    # POV-Ray's defaults come first: it takes the last of a repeated switch, so the client's win.
    ('povray', [('', 'tasks/in/S.pov')], [],
     ['povray', '+W640', '+H480', '-D', '+FN', 'tasks/in/S.pov', f'+Otasks/out/{ID}.png']),
    ('povray', [('', 'tasks/in/S.pov')], ['+Q9', '+A', '+W320', '+h240'],
     ['povray', '+W640', '+H480', '-D', '+FN', '+Q9', '+A', '+W320', '+h240', 'tasks/in/S.pov',
      f'+Otasks/out/{ID}.png']),
    ('povray', [('', 'tasks/in/P/scene.pov')], [],
     ['povray', '+W640', '+H480', '-D', '+FN', '+Ltasks/in/P', 'tasks/in/P/scene.pov',
      f'+Otasks/out/{ID}.png']),
    ('printrun', [('', 'tasks/in/P.gcode')], ['/dev/ttyUSB0'],
     ['rrcloud', 'print', '/dev/ttyUSB0', 'tasks/in/P.gcode']),
    ('printrun', [('', 'tasks/in/P.gcode')], ['/dev/ttyACM1', '--baud=250000'],
     ['rrcloud', 'print', '/dev/ttyACM1', '--baud=250000', 'tasks/in/P.gcode']),
    ('printcore', [('', 'tasks/in/P.gcode')], ['/dev/ttyUSB0'],
     ['printcore', '-v', '/dev/ttyUSB0', 'tasks/in/P.gcode']),
]


@pytest.mark.parametrize('name, inputs, native, expected', ARGV_CASES,
                         ids=[f'{c[0]}-{i}' for i, c in enumerate(ARGV_CASES)])
def test_argv_of_a_shipped_service(name, inputs, native, expected):
    service = shipped(name)
    for prearg, _ in inputs:
        check_prearg(service, prearg)  # the case is one a client may send
    check_native_args(service, native)

    assert compose_argv(service, ID, inputs, native) == expected


@pytest.mark.parametrize('name', ['printrun', 'printcore'])
def test_printing_has_no_output_argument_and_no_output_file(name):
    service = shipped(name)

    assert service.no_output is True
    argv = compose_argv(service, ID, [('', 'tasks/in/P.gcode')], ['/dev/ttyUSB0'])
    assert argv[-2:] == ['/dev/ttyUSB0', 'tasks/in/P.gcode'], 'the file is the last word'
    assert not any('tasks/out' in word for word in argv)


###############################################################################
# 7. Prearg and native argument checks
###############################################################################

@pytest.mark.parametrize('prearg', [';rm -rf /', '--', '--loa', '--load', '--load=x', '--load=;rm',
                                    ' --load=', '--LOAD=', '--load= '])
def test_prearg_other_than_the_arginput_prefix_is_refused(prearg):
    with pytest.raises(UsageError) as raised:
        check_prearg(shipped('slic3r'), prearg)

    assert prearg.strip() in str(raised.value)


@pytest.mark.parametrize('prearg', ['--load=', ''])
def test_prearg_equal_to_the_arginput_prefix_or_empty_is_accepted(prearg):
    check_prearg(shipped('slic3r'), prearg)


def test_a_service_without_arginput_accepts_no_prearg():
    openscad = shipped('openscad')
    check_prearg(openscad, '')

    with pytest.raises(UsageError):
        check_prearg(openscad, '--load=')


REFUSED_NATIVE = [
    ('slic3r', '--layer-height=/etc/passwd'),
    ('slic3r', '--layer-height=..\\x'),
    ('slic3r', '--layer-height=0.2\n--output=/tmp/x'),
    ('slic3r', '--layer-height=0.2\n'),
    ('slic3r', '--layer-height=0.2\x00'),
    ('slic3r', '--foo'),
    ('slic3r', '--post-process=x'),
    ('povray', '+L/etc'),
    ('povray', 'Pre_Scene_Command=x'),
    ('openscad', '-m=make'),
    ('slic3r', '--output=x.gcode'),
    ('slic3r', '--load=x.ini'),
    ('slic3r', '-layer-height=0.2'),
    ('openscad', '-o/tmp/x.stl'),
    ('openscad', '--camera=../x'),
    ('printrun', '/dev/sda'),
    ('printrun', '/dev/ttyUSB0/../../sda'),
]


@pytest.mark.parametrize('name, arg', REFUSED_NATIVE, ids=[repr(a) for _, a in REFUSED_NATIVE])
def test_native_argument_not_allowed_by_the_conf_is_refused(name, arg):
    with pytest.raises(UsageError) as raised:
        check_native_args(shipped(name), [arg])

    assert repr(arg) in str(raised.value) or arg in str(raised.value)


@pytest.mark.parametrize('name, arg', [
    ('slic3r', '--support-materials'),
    ('openscad', '--rendering'),
])
def test_an_allowed_switch_does_not_let_longer_switches_through(name, arg):
    # "--support-material" is allowed as a switch; "--support-materials" is no
    # option of the tool's table.
    with pytest.raises(UsageError):
        check_native_args(shipped(name), [arg])


@pytest.mark.parametrize('name, args', [
    ('slic3r', ['--layer-height=0.2']),
    ('slic3r', ['--layer-height=0.2', '--support-material', '--fill-density=20%', '--temperature=210']),
    ('openscad', ['--render', '--imgsize=800,600', '--camera=0,0,0,55,0,25,140']),
    ('povray', ['+A', '+A0.3', '+Q9']),
    # no shell ever sees a value (the argv is a list): spaces and shell signs are text
    ('slic3r', ['--layer-height=0.2;rm', '--notes=a $(id) `id` b', '--start-gcode=G28 ; home']),
    ('openscad', ['--colorscheme=Tomorrow Night', '-q', '--hardwarnings', '--preview=throwntogether']),
    ('povray', ['-W320', '+w320', 'Declare=X=1', '-UA']),
    ('printrun', ['/dev/ttyUSB0']),
    ('printrun', ['/dev/ttyACM1']),
    ('echo', []),
])
def test_native_arguments_allowed_by_the_conf_are_accepted(name, args):
    check_native_args(shipped(name), args)


@pytest.mark.parametrize('arg', ['--foo', '--layer-height=/etc/passwd', '--post-process=x',
                                 '--loa=cfg.ini', '--output', '-o'])
def test_cli_refuses_an_argument_slic3r_does_not_allow_and_creates_no_task(cli, workdir, arg):
    (workdir / 'x.stl').write_text('solid x\nendsolid x\n')
    (workdir / 'cfg.ini').write_text('layer_height = 0.3\n')

    result = cli('slic3r', arg, 'x.stl')

    assert result.code == ExitCode.USAGE == 2, result
    assert arg in one_line_error(result)
    assert result.out == ''
    assert leftovers(workdir) == []
