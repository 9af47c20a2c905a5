"""The command line: *.cloud wrappers, exit codes, --help, bad arguments, info/meta output, --sync.

Wrappers run the real tools (openscad, openjscad, slic3r, povray) and the
built-in G-code sender, in-process through main() under a program name and
as real processes through the bin/ symlinks.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest
from stl import mesh

from rrc import __version__
from rrc.errors import ExitCode
from helpers import one_line_error, read_terminal_until, records, rrcloud_on_a_terminal
from conftest import DATA, REPO, make_service, task_id_of, wait_until_done, write_config
from servers import FakeServer, free_port

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
SLIC3R_INI = (
    'layer_height = 0.3\n'
    'fill_density = 20%\n'
    'nozzle_diameter = 0.4\n'
    'filament_diameter = 1.75\n'
    'bed_shape = 0x0,200x0,200x200,0x200\n'
)
SCENE_POV = (
    'camera { location <0, 2, -3> look_at <0, 0, 0> }\n'
    'light_source { <2, 4, -3> color rgb <1, 1, 1> }\n'
    'sphere { <0, 0, 0>, 1 pigment { color rgb <1, 0, 0> } }\n'
)
CUBE_JSCAD = 'function main() { return cube({size: 10}); }\n'


def ascii_stl_cube(size=10):
    """A closed ASCII STL cube of ``size`` mm: 12 triangles."""
    s = size
    corners = [(x, y, z) for x in (0, s) for y in (0, s) for z in (0, s)]
    faces = [(0, 2, 6), (0, 6, 4), (1, 5, 7), (1, 7, 3), (0, 4, 5), (0, 5, 1),
             (2, 3, 7), (2, 7, 6), (0, 1, 3), (0, 3, 2), (4, 6, 7), (4, 7, 5)]
    lines = ['solid cube']
    for face in faces:
        lines += ['  facet normal 0 0 0', '    outer loop']
        lines += [f'      vertex {x} {y} {z}' for x, y, z in (corners[i] for i in face)]
        lines += ['    endloop', '  endfacet']
    return '\n'.join(lines + ['endsolid cube']) + '\n'


@pytest.fixture
def models(workdir):
    """The input files a user would have in the current folder."""
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())
    (workdir / 'cube.jscad').write_text(CUBE_JSCAD)
    (workdir / 'cube.stl').write_text(ascii_stl_cube())
    (workdir / 'config.ini').write_text(SLIC3R_INI)
    (workdir / 'scene.pov').write_text(SCENE_POV)
    (workdir / 'part.gcode').write_text('G28\nG1 X10 Y10 F3000\n')
    return workdir


def tree(root):
    """Every path under ``root``, relative: to see that nothing was created."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


def key_values(text):
    """``key: value`` lines into a dict."""
    return dict(line.split(': ', 1) for line in text.splitlines() if line)


###############################################################################
# 1. *.cloud wrappers: argv[0] picks the service
###############################################################################

WRAPPER_RUNS = [
    ('openscad.cloud', ['cube.scad', '-oout.stl'], 'openscad', 0, 'out.stl'),
    ('openjscad.cloud', ['cube.jscad', '-oout.stl'], 'openjscad', 0, 'out.stl'),
    ('slic3r.cloud', ['--load=config.ini', 'cube.stl', '--output=out.gcode'], 'slic3r', 0, 'out.gcode'),
    ('povray.cloud', ['scene.pov', '+Oout.png'], 'povray', 0, 'out.png'),
    # No printer is attached: the task runs the printrun service and fails.
    ('printrun.cloud', ['/dev/ttyUSB3', 'part.gcode'], 'printrun', 1, None),
]


@pytest.mark.parametrize('prog, args, service, code, output', WRAPPER_RUNS,
                         ids=[run[0] for run in WRAPPER_RUNS])
def test_wrapper_name_picks_its_service_in_process(cli, models, prog, args, service, code, output):
    result = cli(*args, prog=prog)

    assert result.code == code, result
    (record,) = records(models)
    assert record['service'] == service
    if output:
        assert (models / output).stat().st_size > 0


@pytest.mark.parametrize('prog, args, service, code, output', WRAPPER_RUNS,
                         ids=[run[0] for run in WRAPPER_RUNS])
def test_wrapper_symlink_in_bin_picks_its_service(proc, models, prog, args, service, code, output):
    result = proc(*args, prog=prog)

    assert result.code == code, result
    (record,) = records(models)
    assert record['service'] == service
    if output:
        assert (models / output).stat().st_size > 0
    else:
        assert '/dev/ttyUSB3' in result.err, 'the failure is shown'


@pytest.mark.parametrize('output_args', [['-ocube.stl'], ['-o', 'cube.stl']], ids=['-oFILE', '-o FILE'])
def test_openscad_cloud_writes_the_stl_where_openscad_would(proc, workdir, output_args):
    (workdir / 'tests' / 'data').mkdir(parents=True)
    (workdir / 'tests' / 'data' / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())

    result = proc('tests/data/cube.scad', *output_args, prog='openscad.cloud')

    assert result.code == 0, result
    assert result.out == ''
    stl = workdir / 'cube.stl'
    assert stl.read_bytes().startswith(b'solid')
    cube = mesh.Mesh.from_file(str(stl))
    volume, _, _ = cube.get_mass_properties()
    assert numpy.isclose(volume, 1000.0)
    assert [p.name for p in workdir.iterdir() if p.name.startswith('.')] == [], 'no temp file left'


def test_openscad_cloud_with_a_syntax_error_shows_the_log_and_writes_nothing(cli, workdir):
    (workdir / 'bad.scad').write_text('cube(10;\n')

    result = cli('bad.scad', '-obad.stl', prog='openscad.cloud')

    assert result.code != 0
    assert 'error' in result.err.lower() and 'line 1' in result.err, 'openscad\'s own words'
    assert result.err.splitlines()[-1].startswith('rrcloud: error: ')
    assert result.out == ''
    assert not (workdir / 'bad.stl').exists()


def test_failed_wrapper_leaves_an_existing_output_file_untouched(proc, workdir):
    (workdir / 'bad.scad').write_text('cube(10;\n')
    (workdir / 'bad.stl').write_text('the previous good result\n')

    result = proc('bad.scad', '-obad.stl', prog='openscad.cloud')

    assert result.code != 0
    assert (workdir / 'bad.stl').read_text() == 'the previous good result\n'


def test_slic3r_cloud_writes_gcode(proc, models):
    result = proc('--load=config.ini', 'cube.stl', '--output=cube.gcode', prog='slic3r.cloud')

    assert result.code == 0, result
    assert result.out == ''
    gcode = (models / 'cube.gcode').read_text()
    assert 'Slic3r' in gcode.splitlines()[0]
    assert sum(line.startswith('G1 ') for line in gcode.splitlines()) > 100
    assert '; layer_height = 0.3' in gcode, 'the --load config was used'


def test_slic3r_cloud_slices_an_stl_made_by_openscad_cloud(proc, models):
    assert proc('cube.scad', '-omodel.stl', prog='openscad.cloud').code == 0

    result = proc('--load=config.ini', 'model.stl', '--output=model.gcode', prog='slic3r.cloud')

    assert result.code == 0, result
    assert 'G1 ' in (models / 'model.gcode').read_text()


@pytest.mark.parametrize('output_arg', ['+Oscene.png', '+oscene.png'])
def test_povray_cloud_writes_a_png(proc, models, output_arg):
    # +o is how services/povray.conf documents it (POV-Ray options ignore case).
    result = proc('scene.pov', output_arg, prog='povray.cloud')

    assert result.code == 0, result
    assert result.out == ''
    assert (models / 'scene.png').read_bytes()[:8] == PNG_SIGNATURE


# openscad without -o opens its GUI; slic3r, POV-Ray and @jscad/cli name the
# result after their input file (test_options.py), which content has not.
@pytest.mark.parametrize('prog, args, named', [
    ('openscad.cloud', ['cube.scad'], '-o'),
    ('openjscad.cloud', ['main=1'], '-o'),
    ('povray.cloud', ['sphere{0,1}'], '+O'),
])
def test_wrapper_without_its_output_argument_is_a_usage_error(cli, models, prog, args, named):
    before = tree(models)

    result = cli(*args, prog=prog)

    assert result.code == ExitCode.USAGE
    assert named in one_line_error(result)
    assert result.out == ''
    assert tree(models) == before


###############################################################################
# 2. Exit codes, --help, --version
###############################################################################

def test_exit_codes():
    assert {name: code for name, code in vars(ExitCode).items() if name.isupper()} == {
        'OK': 0, 'TASK_FAILED': 1, 'USAGE': 2, 'NOT_FOUND': 3, 'CONFIG': 4,
        'NO_SERVER': 5, 'INTERRUPTED': 130, 'PIPE_CLOSED': 141}


def test_help_documents_options_and_exit_codes(cli):
    result = cli('--help')

    assert result.code == 0
    assert result.err == ''
    text = result.out
    for option in ('--local', '--s=', '--notifier=', '--sync', '--format=json'):
        assert option in text, option
    assert 'may also stand after the command' in text
    for command in ('info', 'meta', 'kill', '.cloud'):
        assert command in text, command
    meanings = {0: 'success', 1: 'failed', 2: 'usage', 3: 'no such task',
                4: 'configuration', 5: 'no server', 130: 'interrupted', 141: 'went away'}
    for code, meaning in meanings.items():
        line = re.search(rf'^\s*{code}\s+(.+)$', text, re.M)
        assert line and meaning in line.group(1).lower(), (code, meaning)
    assert cli('-h').out == text


def test_help_from_a_real_process(proc):
    result = proc('--help')

    assert result.code == 0
    assert result.out.startswith('usage: rrcloud')


def test_version(cli):
    result = cli('--version')

    assert result.code == 0
    assert __version__ in result.out
    assert '0.019' in result.out
    assert result.out.count('\n') == 1


###############################################################################
# 3. Bad arguments: exit 2, one line naming the argument, nothing created
###############################################################################

BAD_COMMAND_LINES = [
    (['--bogus', 'echo', 'hello world'], '--bogus'),
    (['-x', 'echo', 'hello world'], '-x'),
    (['--format=xml', 'info'], 'xml'),
    (['--s'], '--s'),
    (['--s=', 'echo', 'hello world'], '--s'),
    (['--sync=yes', 'echo', 'hello world'], '--sync'),
    (['echo', 'nosuchfile.txt'], 'nosuchfile.txt'),
    (['echo'], 'input'),
    (['slic3r', '--load=missing.ini', 'cube.stl'], 'missing.ini'),
    (['nosuchservice', 'hello world'], 'nosuchservice'),
    (['../x', 'hello world'], '../x'),
    (['Echo', 'hello world'], 'Echo'),
    (['info', 'a', 'b'], 'info'),
    (['info', 'not-a-task-id'], 'not-a-task-id'),
    (['info', '../../etc/passwd'], '../../etc/passwd'),
    (['kill'], 'kill'),
    (['kill', 'not-a-task-id'], 'not-a-task-id'),
    (['meta', 'extra'], 'meta'),
    (['openscad', 'cube.scad', '-ocube.stl'], '-ocube.stl'),
    (['openscad', 'cube.scad', '--camera=/etc/passwd'], '--camera=/etc/passwd'),
    (['--notifier=ftp://example.org/$id', 'echo', 'hello world'], 'ftp://example.org/$id'),
    # Options after the command: unknown ones and bad values are named too.
    (['echo', 'hello world', '--bogus'], '--bogus'),
    (['echo', 'hello world', '--', '--local'], '--local'),
    (['info', '--bogus'], '--bogus'),
    (['info', '1795841292-04767-953464', '--format=xml'], 'xml'),
    (['meta', '--s'], '--s'),
    (['echo', 'hello world', '--notifier=ftp://example.org/$id'], 'ftp://example.org/$id'),
    (['slic3r', 'cube.stl', '--load=missing.ini'], 'missing.ini'),
]


@pytest.mark.parametrize('args, named', BAD_COMMAND_LINES, ids=[' '.join(a) for a, _ in BAD_COMMAND_LINES])
def test_bad_command_line_is_one_error_line_and_creates_nothing(cli, models, args, named):
    before = tree(models)

    result = cli(*args)

    assert result.code == ExitCode.USAGE, result
    assert named in one_line_error(result)
    assert result.out == ''
    assert tree(models) == before
    assert not (models / 'tasks').exists()


def test_bad_option_from_a_real_process(proc, workdir):
    result = proc('--bogus', 'echo', 'hello world')

    assert result.code == 2
    assert result.err == "rrcloud: error: unknown option: '--bogus' (see rrcloud --help)\n"
    assert result.out == ''
    assert os.listdir(workdir) == []


def test_info_of_an_unknown_task_is_not_found(cli, workdir):
    result = cli('info', '1795841292-04767-953464')

    assert result.code == ExitCode.NOT_FOUND
    assert '1795841292-04767-953464' in one_line_error(result)


def test_bad_rrcloudrc_is_a_config_error_naming_file_and_line(cli, workdir):
    write_config(workdir, '# settings\nmaxTasks = many\n')

    result = cli('echo', 'hello world')

    assert result.code == ExitCode.CONFIG
    assert 'rrcloudrc:2' in one_line_error(result)
    assert not (workdir / 'tasks').exists()


###############################################################################
# 4. info and meta output
###############################################################################

def two_finished_echo_tasks(cli, workdir):
    ids = [task_id_of(cli('echo', text).out) for text in ('hello world', 'good bye')]
    for task_id in ids:
        wait_until_done(workdir, task_id)
    return ids


def test_info_lists_each_task_as_a_block_of_key_value_lines(cli, workdir):
    ids = two_finished_echo_tasks(cli, workdir)

    result = cli('info')

    assert result.code == 0 and result.err == ''
    blocks = result.out.split('\n\n')
    assert blocks[-1] == '', 'every block ends with a blank line'
    blocks = blocks[:-1]
    assert [block.splitlines()[0] for block in blocks] == [f'=== id: {i}' for i in ids]
    for task_id, block in zip(ids, blocks):
        lines = block.splitlines()[1:]
        assert all(re.match(r'\A[A-Za-z][A-Za-z0-9_]*: ', line) for line in lines), block
        keys = [line.split(': ', 1)[0] for line in lines]
        assert keys == sorted(keys)
        fields = key_values('\n'.join(lines))
        assert fields['id'] == task_id
        assert fields['status'] == 'complete'
        assert fields['service'] == 'echo'
        assert fields['out'] == f'tasks/out/{task_id}'


def test_no_command_prints_the_usage_not_the_tasks(cli, workdir):
    two_finished_echo_tasks(cli, workdir)

    result = cli()

    assert result.code == ExitCode.USAGE, result
    assert result.out == ''
    assert result.err.startswith('usage: rrcloud') and 'rrcloud --help' in result.err, result
    assert '=== id:' not in result.err


def test_no_command_in_an_empty_folder_creates_nothing(cli, workdir):
    assert cli().code == ExitCode.USAGE
    assert tree(workdir) == []


def test_ls_shows_one_line_per_task_in_columns(cli, workdir):
    make_service(workdir, 'job', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    write_config(workdir, 'maxTasks = 1\n')
    ids = two_finished_echo_tasks(cli, workdir)
    (workdir / 'block.sh').write_text('sleep 300\n')
    (workdir / 'fail.sh').write_text('exit 3\n')
    assert cli('--sync', 'job', 'fail.sh').code == 3
    failed = records(workdir)[-1]['id']
    blocking = task_id_of(cli('job', 'block.sh').out)
    waiting = task_id_of(cli('job', 'block.sh').out)

    result = cli('ls')

    assert result.code == 0 and result.err == '', result
    rows = {line.split()[0]: line.split(None, 6) for line in result.out.splitlines()}
    assert all(len(row) == 7 for row in rows.values()), result.out
    assert list(rows) == ids + [failed, blocking, waiting], 'one line per task, oldest first'
    for task_id in ids:
        assert rows[task_id][1:3] == ['echo', 'complete']
        assert re.fullmatch(r'[0-9]+s', rows[task_id][3]) and re.fullmatch(r'[0-9]+s', rows[task_id][4])
        assert rows[task_id][5] == '-', 'content has no file name'
        assert rows[task_id][6] == task_id, 'the result name'
    assert rows[failed][1:3] == ['job', 'failed'] and rows[failed][5:] == ['fail.sh', 'exit code 3']
    assert rows[blocking][2] == 'running' and rows[blocking][5:] == ['block.sh', '-']
    assert rows[waiting][2] == 'queued' and rows[waiting][4] == '-'
    assert cli('info', '--short').out == result.out
    assert cli('kill', blocking).code == 0 and cli('kill', waiting).code == 0


def test_ls_json_gives_numbers(cli, workdir):
    ids = two_finished_echo_tasks(cli, workdir)

    rows = json.loads(cli('--format=json', 'ls').out)

    assert [row['id'] for row in rows] == ids
    assert set(rows[0]) == {'id', 'service', 'status', 'age', 'duration', 'input', 'result', 'error'}
    assert rows[0]['status'] == 'complete' and rows[0]['age'] >= rows[0]['duration'] >= 0
    (one,) = json.loads(cli('--format=json', 'info', '--short', ids[0]).out)
    assert {k: v for k, v in one.items() if k != 'age'} == {k: v for k, v in rows[0].items() if k != 'age'}


def test_short_belongs_to_info(cli, workdir):
    result = cli('meta', '--short')

    assert result.code == ExitCode.USAGE
    assert '--short' in one_line_error(result)


def test_info_json_gives_an_array_and_info_id_json_an_object(cli, workdir):
    ids = two_finished_echo_tasks(cli, workdir)

    listing = json.loads(cli('--format=json', 'info').out)
    single = json.loads(cli('--format=json', 'info', ids[1]).out)

    assert isinstance(listing, list) and [task['id'] for task in listing] == ids
    assert isinstance(single, dict)
    assert single['id'] == ids[1] and single['status'] == 'complete'
    assert all(isinstance(value, str) for value in single.values())
    assert single == listing[1]


def test_info_of_one_task_in_text(cli, workdir):
    task_id = two_finished_echo_tasks(cli, workdir)[0]

    result = cli('info', task_id)

    lines = result.out.splitlines()
    assert lines[0] == f'=== id: {task_id}'
    assert result.out.endswith('\n\n')
    assert key_values('\n'.join(lines[1:]))['status'] == 'complete'


def test_json_submission_prints_a_json_id(cli, workdir):
    result = cli('--format=json', 'echo', 'hello world')

    answer = json.loads(result.out)
    assert list(answer) == ['id']
    wait_until_done(workdir, answer['id'])


META_KEYS = {'cpuLoad', 'maxDataRetention', 'serverName', 'services', 'tasks', 'timeout',
             'uptime', 'version', 'busy', 'queued', 'maxTasks', 'sandbox', 'instance', 'events',
             'limits', 'maxMemory', 'maxProcesses', 'maxOutputSize', 'maxLogSize', 'maxSuspend',
             'toolVersions'}


def test_meta_prints_the_specs_keys_plus_load(cli, workdir):
    write_config(workdir, 'timeout = 600\nmaxTasks = 3\nmaxDataRetention = 12\n')
    two_finished_echo_tasks(cli, workdir)

    result = cli('meta')

    assert result.code == 0 and result.err == ''
    assert all(re.match(r'\A[A-Za-z]+: \S', line) for line in result.out.splitlines()), result.out
    meta = key_values(result.out)
    assert set(meta) == META_KEYS
    assert {'echo', 'openscad', 'openjscad', 'slic3r', 'povray', 'printrun'} <= set(meta['services'].split(','))
    assert (meta['timeout'], meta['maxTasks'], meta['maxDataRetention']) == ('600', '3', '12')
    assert (meta['tasks'], meta['busy'], meta['queued']) == ('2', '0', '0')
    assert 'RepRapCloud' in meta['version']
    assert re.match(r'\A\d+d \d\dh \d\dm \d\ds\Z', meta['uptime'])
    float(meta['cpuLoad'])


def test_meta_json(cli, workdir):
    meta = json.loads(cli('--format=json', 'meta').out)

    assert set(meta) == META_KEYS
    assert all(isinstance(value, str) for value in meta.values())


###############################################################################
# 5. --sync
###############################################################################

def test_sync_echo_prints_the_text_as_echo_would(cli, workdir):
    result = cli('--sync', 'echo', 'hello world')

    assert result.code == 0, result
    (record,) = records(workdir)
    assert record['status'] == 'complete'
    assert (workdir / record['out']).read_text() == 'hello world'
    assert (result.out, result.err) == ('hello world\n', ''), result


def test_sync_without_an_output_argument_prints_the_record_of_a_file_result(cli, workdir):
    make_service(workdir, 'job', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    (workdir / 'job.sh').write_text('echo made > "$1"\n')

    result = cli('--sync', 'job', 'job.sh')

    assert result.code == 0, result
    (record,) = records(workdir)
    # No output argument: the finished record tells where the result is.
    assert result.out.startswith(f'=== id: {record["id"]}\n'), result
    assert f'out: {record["out"]}\n' in result.out and 'status: complete\n' in result.out


def test_sync_with_an_output_argument_prints_only_the_tools_messages(cli, workdir):
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())

    result = cli('--sync', 'openscad', 'cube.scad', '-ocube.stl')

    assert (result.code, result.out) == (0, ''), result
    # what openscad itself says on stderr, and nothing of rrcloud's or its store
    assert 'Top level object is a 3D object' in result.err, result
    assert 'rrcloud' not in result.err and 'tasks/' not in result.err, result


def test_a_reader_that_stops_early_gets_no_error(proc, workdir):
    # Like `rrcloud info | head`: the pipe's reader is gone before rrcloud writes.
    assert proc('echo', 'one task to list').code == 0
    child = subprocess.Popen([sys.executable, str(REPO / 'rrcloud.py'), 'info'], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    code = child.wait(timeout=60)

    assert err == '', err
    assert code == ExitCode.PIPE_CLOSED


@pytest.mark.parametrize('output_args', [['-ocube.stl'], ['-o', 'cube.stl']], ids=['-oFILE', '-o FILE'])
def test_sync_copies_the_result_to_the_output_argument(cli, workdir, output_args):
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())

    result = cli('--sync', 'openscad', 'cube.scad', *output_args)

    assert result.code == 0, result
    assert (workdir / 'cube.stl').read_bytes().startswith(b'solid')
    (record,) = records(workdir)
    assert (workdir / 'cube.stl').read_bytes() == (workdir / record['out']).read_bytes()


def test_sync_mirrors_the_tools_exit_code_and_shows_its_log(cli, workdir):
    make_service(workdir, 'job', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    (workdir / 'job.sh').write_text('echo "it went wrong" >&2\nexit 3\n')

    result = cli('--sync', 'job', 'job.sh')

    assert result.code == 3
    assert 'it went wrong\n' in result.err
    (record,) = records(workdir)
    assert result.err.splitlines()[-1] == f'rrcloud: error: task {record["id"]} failed: exit code 3'


def test_sync_openscad_with_a_syntax_error_exits_with_openscads_code(cli, workdir):
    (workdir / 'bad.scad').write_text('cube(10;\n')

    result = cli('--sync', 'openscad', 'bad.scad', '-obad.stl')

    assert result.code == 1
    assert not (workdir / 'bad.stl').exists()


def test_multi_line_content_is_accepted_as_content(cli, workdir):
    # The spec: content may be given directly instead of a file (e.g. STL or G-code text).
    content = 'G28\nG1 X10 Y10 F3000\n'

    result = cli('--sync', 'echo', content)

    assert result.code == 0, result
    (record,) = records(workdir)
    assert (workdir / record['out']).read_text() == content


###############################################################################
# 6. Options anywhere, by 0.019's rule
###############################################################################

@pytest.fixture
def listener():
    """A loopback HTTP listener that records what it is sent (a notifier target)."""
    started = FakeServer(lambda request: (200, 'text/plain', 'ok\n')).start()
    yield started
    started.stop()


def test_format_after_info_and_its_id(cli, workdir):
    task_id = two_finished_echo_tasks(cli, workdir)[1]

    single = cli('info', task_id, '--format=json')
    listing = cli('info', '--format', 'json')

    assert single.code == 0, single
    record = json.loads(single.out)
    assert record['id'] == task_id and record['status'] == 'complete'
    assert [task['id'] for task in json.loads(listing.out)][-1] == task_id
    assert json.loads(cli('meta', '--format=json').out)['services']


def test_s_after_the_input_sends_the_task_to_that_server(cli, workdir, embedded_server):
    server = embedded_server()
    (workdir / 'notes.txt').write_text('notes for the server\n')

    result = cli('echo', 'notes.txt', f'--s={server.address}')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    (record,) = records(workdir)
    assert record['server'] == server.url
    (remote,) = server.records().values()
    assert server.wait_done(remote['id'])['status'] == 'complete'
    shown = key_values(cli('info', task_id).out.split('\n', 1)[1])
    assert shown['status'] == 'complete'
    assert (workdir / shown['out']).read_text() == 'notes for the server\n'


def test_notifier_after_the_input_is_called(cli, workdir, listener):
    # The local runner calls it; loopback is refused unless notifierAllow names it.
    write_config(workdir, 'notifierAllow = 127.0.0.0/8\n')
    (workdir / 'notes.txt').write_text('notify me\n')
    notifier = f'http://127.0.0.1:{listener.port}/done?$id'

    result = cli('echo', 'notes.txt', f'--notifier={notifier}')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    assert wait_until_done(workdir, task_id)['notifier'] == notifier
    deadline = time.monotonic() + 60
    while not listener.of('GET'):
        assert time.monotonic() < deadline, 'no notifier GET'
        time.sleep(0.05)
    (call,) = listener.of('GET')
    assert (call.path, call.query) == ('/done', {task_id: ''})


def test_local_and_sync_after_the_input_work_here(cli, workdir):
    write_config(workdir, f'servers = 127.0.0.1:{free_port()}\n')  # nothing listens there

    result = cli('echo', 'hello world', '--local', '--sync')

    assert result.code == 0, result
    (record,) = records(workdir)
    assert 'remoteId' not in record and record['status'] == 'complete'
    assert (workdir / record['out']).read_text() == 'hello world'


def test_local_after_the_wrapper_arguments(proc, models):
    write_config(models, f'servers = 127.0.0.1:{free_port()}\n')  # nothing listens there

    result = proc('cube.scad', '-ocube-out.stl', '--local', prog='openscad.cloud')

    assert result.code == 0, result
    assert (models / 'cube-out.stl').read_bytes().startswith(b'solid')


def test_slic3r_keeps_its_load_and_output_arguments(cli, models):
    result = cli('slic3r', '--load=config.ini', 'cube.stl', '--output=cube.gcode', '--sync')

    assert result.code == 0, result
    (record,) = records(models)
    argv = record['cmd'].split()
    assert argv[1].startswith('--load=tasks/in/') and argv[1].endswith('.ini'), argv
    assert argv[-1] == f'--output={record["out"]}', argv
    assert (models / 'cube.gcode').read_bytes() == (models / record['out']).read_bytes()


def test_a_native_argument_named_like_an_option_stays_the_services(cli, workdir):
    make_service(workdir, 'fmt', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\nnativeArgs = --format=\n')
    (workdir / 'job.sh').write_text('exit 0\n')

    result = cli('fmt', 'job.sh', '--format=json')

    assert result.code == 0, result
    task_id = task_id_of(result.out)
    assert result.out == f'id: {task_id}\n', 'text, not JSON: --format=json went to the service'
    assert wait_until_done(workdir, task_id)['cmd'].split()[:2] == ['sh', '--format=json']


def test_help_after_the_command(cli):
    assert cli('info', '--help').out == cli('--help').out


###############################################################################
# 7. The progress line of a local wrapper
###############################################################################

def test_a_local_sync_on_a_terminal_shows_queued_then_busy_with_the_time(cli, workdir):
    make_service(workdir, 'job', 'path = /usr/bin:/bin\ncmd = sh\ninputExt = sh\n')
    write_config(workdir, 'maxTasks = 1\n')
    (workdir / 'block.sh').write_text('sleep 300\n')
    (workdir / 'job.sh').write_text('sleep 2\necho done > "$1"\n')
    blocker = task_id_of(cli('job', 'block.sh').out)
    with rrcloud_on_a_terminal(workdir, '--sync', 'job', 'job.sh') as (client, master):
        waiting = read_terminal_until(master, r'local queued [0-9]+s', client)
        assert cli('kill', blocker).code == 0
        running = read_terminal_until(master, r'local busy [0-9]+s', client)
        assert client.wait(timeout=60) == 0
    assert re.search(r'\rlocal queued [0-9]+s', waiting), waiting
    assert re.search(r'\rlocal busy [0-9]+s', running), running


###############################################################################
# 8. serve on a port that is taken, and the Makefile's start
###############################################################################

@pytest.fixture
def foreign():
    """Another HTTP server on a loopback port: a web page, not rrcloud."""
    started = FakeServer(lambda request: (200, 'text/html', '<html><body>not rrcloud</body></html>')).start()
    yield started
    started.stop()


@pytest.mark.parametrize('bind', [[], ['--bind', '127.0.0.1']])
def test_serve_on_a_taken_port_is_one_error_line_and_creates_nothing(proc, workdir, foreign, bind):
    result = proc('serve', *bind, '--port', str(foreign.port), timeout=60)

    assert result.code == ExitCode.CONFIG, result
    assert f':{foreign.port}: the port is in use' in one_line_error(result)
    assert result.out == ''
    assert tree(workdir) == [], 'no tasks/ folder'


def test_serve_check_tells_rrcloud_from_another_server_and_from_nothing(proc, workdir, foreign, embedded_server):
    server = embedded_server()
    protected = embedded_server(config='token = a-long-enough-token-1234\n')

    ours = proc('serve', '--check', '--port', str(server.port))
    theirs = proc('serve', '--check', '--port', str(foreign.port))
    nothing = proc('serve', '--check', '--port', str(free_port()))
    locked = proc('serve', '--check', '--port', str(protected.port))

    assert ours.code == 0 and 'RepRapCloud' in ours.out, ours
    assert locked.code == 0, 'a server asking for a token is rrcloud too'
    assert theirs.code == ExitCode.CONFIG and 'not rrcloud' in one_line_error(theirs), theirs
    assert nothing.code == ExitCode.NO_SERVER and 'nothing serves' in nothing.out, nothing
    assert tree(workdir) == []


def make(*args):
    """``make -C REPO ARGS``, with the checkout's rrcloud.py as the rrcloud command."""
    return subprocess.run(['make', '--no-print-directory', '-C', str(REPO), *args,
                           f'RRCLOUD={sys.executable} {REPO / "rrcloud.py"}'],
                          capture_output=True, text=True, timeout=120)


def test_make_start_refuses_a_port_another_server_holds(tmp_path, foreign):
    rundir = tmp_path / 'run'

    result = make('start', f'PORT={foreign.port}', f'RUNDIR={rundir}')

    assert result.returncode != 0, result
    assert 'not rrcloud' in result.stderr, result
    assert 'already serving' not in result.stdout + result.stderr
    assert not rundir.exists()


def test_make_start_starts_rrcloud_once_and_make_stop_stops_it(tmp_path):
    rundir, port = tmp_path / 'run', free_port()
    pidfile = rundir / f'serve-{port}.pid'
    try:
        first = make('start', f'PORT={port}', f'RUNDIR={rundir}')
        second = make('start', f'PORT={port}', f'RUNDIR={rundir}')
        pid = int(pidfile.read_text())
        stopped = make('stop', f'PORT={port}', f'RUNDIR={rundir}')
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)

    assert first.returncode == 0 and f'rrcloud serving on port {port}' in first.stdout, first
    assert second.returncode == 0 and f'rrcloud already serving on port {port}' in second.stdout, second
    assert stopped.returncode == 0 and f'rrcloud on port {port} stopped (pid {pid})' in stopped.stdout, stopped
    assert not pidfile.exists()
    assert_gone(pid)


def assert_gone(pid):
    """The process ``pid`` has ended (a zombie waiting for its reaper counts as ended)."""
    deadline = time.monotonic() + 30
    while Path(f'/proc/{pid}').exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f'/proc/{pid}').exists() or Path(f'/proc/{pid}/stat').read_text().split(')')[-1].split()[0] == 'Z'


def test_make_stop_port_stops_the_server_on_that_port_only(tmp_path):
    rundir, ports = tmp_path / 'run', [free_port(), free_port()]
    pidfiles = [rundir / f'serve-{port}.pid' for port in ports]
    try:
        started = [make('start', f'PORT={port}', f'RUNDIR={rundir}') for port in ports]
        pids = [int(pidfile.read_text()) for pidfile in pidfiles]
        first = make('stop', f'PORT={ports[0]}', f'RUNDIR={rundir}')
        again = make('stop', f'PORT={ports[0]}', f'RUNDIR={rundir}')
        still = subprocess.run([sys.executable, str(REPO / 'rrcloud.py'), 'serve', '--check', '--port', str(ports[1])],
                               capture_output=True, text=True, timeout=30)
        last = make('stop', f'PORT={ports[1]}', f'RUNDIR={rundir}')
    finally:
        for pidfile in pidfiles:
            if pidfile.exists():
                os.kill(int(pidfile.read_text()), signal.SIGKILL)

    assert all(result.returncode == 0 for result in started), started
    assert first.stdout == f'rrcloud on port {ports[0]} stopped (pid {pids[0]})\n', first
    assert_gone(pids[0])
    assert again.returncode == 0 and again.stdout == f'no rrcloud that make started serves on port {ports[0]}\n'
    assert still.returncode == 0, 'the server on the other port, started later, still serves'
    assert last.stdout == f'rrcloud on port {ports[1]} stopped (pid {pids[1]})\n', last
    assert_gone(pids[1])


def test_make_stop_leaves_a_pid_that_is_no_longer_its_server_alone(tmp_path):
    rundir, port = tmp_path / 'run', free_port()
    rundir.mkdir()
    bystander = subprocess.Popen(['sleep', '60'])
    (rundir / f'serve-{port}.pid').write_text(f'{bystander.pid}\n')  # a stale pid, another program's now
    try:
        stopped = make('stop', f'PORT={port}', f'RUNDIR={rundir}')
        alive = bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

    assert stopped.returncode == 0 and 'no rrcloud that make started serves' in stopped.stdout, stopped
    assert alive, 'make stop signalled a process that is not its server'
    assert not (rundir / f'serve-{port}.pid').exists()


def test_make_installs_the_package_only_when_setup_py_changed(tmp_path):
    venv = tmp_path / 'venv'
    (venv / 'bin').mkdir(parents=True)
    (venv / 'bin' / 'python').symlink_to(sys.executable)

    before = subprocess.run(['make', '-n', '-C', str(REPO), 'python-deps', f'VENV={venv}'],
                            capture_output=True, text=True, timeout=60)
    (venv / '.rrcloud-installed-compat').touch()
    after = subprocess.run(['make', '-n', '-C', str(REPO), 'python-deps', f'VENV={venv}'],
                           capture_output=True, text=True, timeout=60)

    assert 'pip install' in before.stdout, before
    # a path in a .pth, not an import hook that every Python of the venv would load
    assert 'editable_mode=compat' in before.stdout, before
    assert 'pip install' not in after.stdout and 'compileall' in after.stdout, after
