"""The wrappers behave like the tools they wrap (issue 11, items 6-10).

With the real tools (openscad under xvfb-run for images, povray with its
includes), locally through the task store and through a real embedded
server on loopback (the ``embedded_server`` fixture, one for the module),
the client running in ``workdir``:

6. OpenSCAD writes the format its output's extension names (png, off, amf,
   3mf, dxf, svg, csg); a PNG is the one ``openscad`` itself renders.
7. ``-D NAME=VALUE`` and ``-p FILE -P SET`` set a model's parameters; a value
   that is not a literal (a call, a variable, a path, an option) is refused
   by the client and by the server, and a record carrying one never runs.
8. POV-Ray takes the size and quality switches (the client's +W/+H win over
   the conf's 640x480), finds colors.inc, and gets a scene's own includes.
9. ``--help`` and ``--version`` of the wrappers, ``serve`` and ``print``.
10. Errors name what to change; content is known by what it is; the tool's
    messages name the user's files, on failure and (warnings) on success.
"""
import io
import json
import shutil
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest
import requests
from stl import mesh

from rrc import __version__
from rrc.errors import UsageError
from rrc.launch import task_argv
from rrc.services import load_services
from conftest import DATA, make_service, write_config
from helpers import plain_session, records

WAIT = 60
PARAMETRIC = 'size = 10;\nlabel = "none";\ncube(size);\n'
SETS = {'fileFormatVersion': '1',
        'parameterSets': {'big': {'size': '20'}, 'design default values': {'size': '7'}}}
SCENE = ('global_settings { assumed_gamma 1.0 }\n#include "colors.inc"\n#include "parts/local.inc"\n'
         'camera { location <0, 2, -5> look_at <0, 0.5, 0> }\n'
         'light_source { <5, 10, -10> color White }\n'
         'sphere { <0, 1, 0>, 1 pigment { color LocalRed } }\n')
# POV-Ray finds an include in its library path (the scene's folder), not beside the file naming it.
LOCAL_INC = '#include "parts/shade.inc"\n#declare LocalRed = Shade;\n'
SHADE_INC = '#declare Shade = rgb <1, 0, 0>;\n'


###############################################################################
# Fixtures and helpers
###############################################################################

# The rrcloudrc of the one real embedded server the module's tests share.
SERVER_CONFIG = 'maxTasks = 2\n'


@pytest.fixture
def remote(workdir, embedded_server):
    """The client's rrcloudrc sends every service's work to the module's embedded server."""
    server = embedded_server(SERVER_CONFIG, scope='module')
    write_config(workdir, f'servers = {server.address}\n')
    return server


def png_image(data):
    """(width, height, pixel bytes) of a PNG, every chunk's CRC checked; AssertionError if broken."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n', data[:16]
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack('>I', data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        (crc,) = struct.unpack('>I', data[position + 8 + length:position + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        position += 12 + length
    assert chunks[0][0] == b'IHDR' and chunks[-1][0] == b'IEND', [k for k, _ in chunks]
    width, height = struct.unpack('>II', chunks[0][1][:8])
    pixels = zlib.decompress(b''.join(body for kind, body in chunks if kind == b'IDAT'))
    return width, height, pixels


def reference_png(source, tmp_path, *options):
    """What ``openscad SOURCE -oref.png OPTIONS`` writes (on a virtual display, as rrcloud runs it)."""
    folder = tmp_path / 'reference'
    folder.mkdir(exist_ok=True)
    shutil.copy(source, folder / 'model.scad')
    subprocess.run(['xvfb-run', '--auto-servernum', 'openscad', 'model.scad', '-oref.png', *options],
                   cwd=folder, check=True, capture_output=True, timeout=120)
    return (folder / 'ref.png').read_bytes()


def stl_size(path):
    """The extent of an STL's mesh along x, y, z."""
    model = mesh.Mesh.from_file(str(path))
    return tuple(round(float(v), 4) for v in model.max_ - model.min_)


def write_scene(folder):
    (folder / 'parts').mkdir()
    (folder / 'scene.pov').write_text(SCENE)
    (folder / 'parts' / 'local.inc').write_text(LOCAL_INC)
    (folder / 'parts' / 'shade.inc').write_text(SHADE_INC)


def one_error_line(result):
    assert result.code == 2, result
    assert result.err.startswith('rrcloud: error: ') and len(result.err.splitlines()) == 1, result
    return result.err


###############################################################################
# 6. The output format follows the output's extension
###############################################################################

@pytest.mark.parametrize('options', [(), ('--imgsize=320,240', '--render')], ids=['default', 'sized'])
def test_openscad_png_is_the_png_openscad_writes(proc, workdir, tmp_path, options):
    shutil.copy(DATA / 'cube.scad', workdir / 'cube.scad')

    result = proc('cube.scad', '-ocube.png', *options, prog='openscad.cloud')

    assert result.code == 0, result
    width, height, pixels = png_image((workdir / 'cube.png').read_bytes())
    ref_width, ref_height, ref_pixels = png_image(reference_png(DATA / 'cube.scad', tmp_path, *options))
    assert (width, height) == (ref_width, ref_height) == ((320, 240) if options else (512, 512))
    assert pixels == ref_pixels
    (record,) = records(workdir)
    assert record['outExt'] == 'png' and record['out'].endswith('.png'), record
    assert record['cmd'].endswith(f'-otasks/out/{record["id"]}.png'), record


def is_off(data):
    return data.startswith(b'OFF')


def is_amf(data):
    return data.startswith(b'<?xml') and b'<amf' in data


def is_3mf(data):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return b'<model' in archive.read('3D/3dmodel.model')


def is_dxf(data):
    return b'SECTION' in data and b'ENTITIES' in data and b'EOF' in data


def is_svg(data):
    return b'<svg' in data and b'</svg>' in data


def is_csg(data):
    return b'cube(size = [10, 10, 10]' in data or b'square(size = [10, 10]' in data


FORMATS = [('off', 'cube(10);', is_off), ('amf', 'cube(10);', is_amf), ('3mf', 'cube(10);', is_3mf),
           ('dxf', 'square(10);', is_dxf), ('svg', 'square(10);', is_svg), ('csg', 'cube(10);', is_csg),
           ('STL', 'cube(10);', lambda data: data.startswith(b'solid'))]


@pytest.mark.parametrize('ext, model, right_format', FORMATS, ids=[f[0] for f in FORMATS])
def test_openscad_writes_the_format_of_the_output_extension(proc, workdir, ext, model, right_format):
    (workdir / 'model.scad').write_text(model + '\n')

    output = ('-o', f'out.{ext}') if ext == 'off' else (f'-oout.{ext}',)

    result = proc('model.scad', *output, prog='openscad.cloud')

    assert result.code == 0, result
    assert right_format((workdir / f'out.{ext}').read_bytes())


@pytest.mark.parametrize('name', ['cube.xyz', 'cube'])
def test_an_output_extension_openscad_does_not_write_is_refused(cli, workdir, name):
    shutil.copy(DATA / 'cube.scad', workdir / 'cube.scad')

    err = one_error_line(cli('cube.scad', f'-o{name}', prog='openscad.cloud'))

    assert name in err and 'stl, off, amf, 3mf, dxf, svg, csg, png' in err
    assert records(workdir) == []


def test_png_through_a_server_keeps_its_extension(proc, workdir, tmp_path, remote):
    shutil.copy(DATA / 'cube.scad', workdir / 'cube.scad')

    result = proc('cube.scad', '-ocube.png', '--imgsize=200,100', prog='openscad.cloud')

    assert result.code == 0, result
    assert png_image((workdir / 'cube.png').read_bytes())[:2] == (200, 100)
    (record,) = records(workdir)
    assert record['server'] == remote.url and record['out'].endswith('.png'), record
    assert remote.records()[record['remoteId']]['outExt'] == 'png'


def test_http_out_ext_picks_the_format_and_a_bad_one_is_400(embedded_server):
    server = embedded_server(SERVER_CONFIG, scope='module')
    session = plain_session()
    answer = session.post(server.url, data={'service': 'openscad', 'fileIn0': 'cube(10);', 'outExt': 'off',
                                            'format': 'json', 'wait': WAIT}, timeout=WAIT + 30)
    assert answer.status_code == 200, answer.text
    record = answer.json()
    assert record['status'] == 'complete' and record['out'].endswith('.off'), record
    assert session.get(server.url + record['out'], timeout=30).content.startswith(b'OFF')

    before = set(server.records())
    for ext in ('exe', 'png/../x', 'STL '):
        refused = session.post(server.url, data={'service': 'openscad', 'fileIn0': 'cube(1);',
                                                 'outExt': ext}, timeout=30)
        assert refused.status_code == 400 and 'outExt' not in refused.text, refused.text
        assert 'output format' in refused.text
    assert set(server.records()) == before


###############################################################################
# 7. Parameters: -D NAME=VALUE, -p FILE -P SET
###############################################################################

@pytest.mark.parametrize('args', [('-D', 'size=20'), ('-Dsize=20',), ('-D', 'size = [20, 20, 20]'),
                                  ('-D', 'label="a label"', '-D', '$fn=8', '-D', 'size=20')],
                         ids=['apart', 'joined', 'vector', 'string'])
def test_d_sets_a_models_parameter(proc, workdir, args):
    (workdir / 'box.scad').write_text(PARAMETRIC)

    result = proc('box.scad', '-obox.stl', *args, prog='openscad.cloud')

    assert result.code == 0, result
    assert stl_size(workdir / 'box.stl') == (20, 20, 20)
    (record,) = records(workdir)
    assert json.loads(record['params'])[-1] == ['-D', args[-1][2:] if len(args) == 1 else args[-1]]
    assert ' tasks/in/' in record['cmd'].split(' -D ')[-1], record  # each -D before the model


HOSTILE_VALUES = ['size=import("/etc/passwd")', 'size=x', 'size="/etc/passwd"', 'size=1; include <x>',
                  '--render', 'size', '$fn=-', 'size=cube(3)', 'size="a\\"b"', 'size=[[[[[1]]]]]',
                  'size=\nx']


@pytest.mark.parametrize('value', HOSTILE_VALUES)
def test_a_hostile_d_value_is_refused_and_nothing_runs(cli, workdir, value):
    (workdir / 'box.scad').write_text(PARAMETRIC)

    err = one_error_line(cli('--sync', 'openscad', 'box.scad', '-D', value, '-obox.stl'))

    assert '-D' in err
    assert records(workdir) == [] and not (workdir / 'box.stl').exists()


@pytest.mark.parametrize('value', HOSTILE_VALUES[:9] + ['-P ../x', '-x size=1', '-D'])
def test_a_hostile_param_field_is_400_on_the_server(embedded_server, value):
    server = embedded_server(SERVER_CONFIG, scope='module')
    field = value if value.startswith('-') and ' ' in value else f'-D {value}'
    before = set(server.records())

    answer = plain_session().post(server.url, data={'service': 'openscad', 'fileIn0': PARAMETRIC,
                                                    'param0': field}, timeout=30)

    assert answer.status_code == 400, answer.text
    assert set(server.records()) == before


def test_a_record_with_a_forged_param_never_runs(workdir):
    services, _ = load_services(str(workdir))
    record = {'id': '1700000000-00000-000000', 'in': 'tasks/in/1700000000-00000-000001.scad',
              'params': json.dumps([['-D', 'x=import("/etc/passwd")']])}

    with pytest.raises(UsageError):
        task_argv(services['openscad'], record)
    with pytest.raises(UsageError):
        task_argv(services['openscad'], dict(record, params='["-D", "x=1"]'))
    with pytest.raises(UsageError):
        task_argv(services['openscad'], dict(record, params='[]', outExt='exe'))
    argv = task_argv(services['openscad'], dict(record, params='[["-D", "x=1"]]', outExt='png'))
    assert argv == ['openscad', '-D', 'x=1', record['in'], f'-otasks/out/{record["id"]}.png']


@pytest.mark.parametrize('args, size', [(('-p', 'sets.json', '-P', 'big'), 20),
                                        (('-psets.json', '-P', 'design default values'), 7)],
                         ids=['apart', 'set-with-spaces'])
def test_a_parameter_file_and_set(proc, workdir, args, size):
    (workdir / 'box.scad').write_text(PARAMETRIC)
    (workdir / 'sets.json').write_text(json.dumps(SETS))

    result = proc('box.scad', '-obox.stl', *args, prog='openscad.cloud')

    assert result.code == 0, result
    assert stl_size(workdir / 'box.stl') == (size, size, size)
    (record,) = records(workdir)
    assert record['preargs'] == ',-p' and record['in'].split(',')[1].endswith('.json'), record


def test_parameters_through_a_server(proc, workdir, remote):
    (workdir / 'box.scad').write_text(PARAMETRIC)
    (workdir / 'sets.json').write_text(json.dumps(SETS))

    result = proc('box.scad', '-D', 'size=3', '-p', 'sets.json', '-P', 'big', '-obox.stl',
                  prog='openscad.cloud')
    assert result.code == 0, result
    assert stl_size(workdir / 'box.stl') == (20, 20, 20)  # a parameter set wins over -D, as in openscad

    result = proc('box.scad', '-D', 'size=3', '-obox.stl', prog='openscad.cloud')
    assert result.code == 0, result
    assert stl_size(workdir / 'box.stl') == (3, 3, 3)


###############################################################################
# 8. POV-Ray: size and quality switches, colors.inc, a scene's own includes
###############################################################################

@pytest.mark.parametrize('args', [('+W320', '+H240', '+A0.3', '+Q9', '+Oscene.png'),
                                  ('+w320', '+h240', '+A', '+AM2', '+R3', '-D', '+FN', '+oscene.png')],
                         ids=['upper', 'lower'])
def test_povray_renders_the_size_asked_with_system_and_local_includes(proc, workdir, args):
    write_scene(workdir)

    result = proc('scene.pov', *args, prog='povray.cloud')

    assert result.code == 0, result
    assert png_image((workdir / 'scene.png').read_bytes())[:2] == (320, 240)
    (record,) = records(workdir)
    assert record['in'].endswith('/scene.pov') and record['in'].count('/') == 3, record


def test_povray_default_size_is_still_640x480(proc, workdir):
    write_scene(workdir)

    result = proc('scene.pov', '+Oscene.png', prog='povray.cloud')

    assert result.code == 0, result
    assert png_image((workdir / 'scene.png').read_bytes())[:2] == (640, 480)


def test_povray_through_a_server(proc, workdir, remote):
    write_scene(workdir)

    result = proc('scene.pov', '+W160', '+H120', '+Q5', '+Oscene.png', prog='povray.cloud')

    assert result.code == 0, result
    assert png_image((workdir / 'scene.png').read_bytes())[:2] == (160, 120)
    assert 'Parse Error' not in result.err and 'tasks/in' not in result.err, result
    assert 'Input file: scene.pov' in result.err, result  # POV-Ray's own words, naming the user's file


def test_povray_output_format_switch_is_refused(cli, workdir):
    write_scene(workdir)

    err = one_error_line(cli('scene.pov', '+FX', '+Oscene.png', prog='povray.cloud'))

    assert err.startswith('rrcloud: error: +FX: povray writes one of: png, tga, ppm, jpg, exr, hdr'), err


###############################################################################
# 9. --help and --version
###############################################################################

@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_wrapper_help_says_what_it_passes_on_and_where_the_work_goes(proc, workdir, flag):
    result = proc(flag, prog='openscad.cloud')

    assert result.code == 0 and result.err == '', result
    assert result.out.startswith('usage: openscad.cloud ')
    for word in ('-oFILE', 'png', '--imgsize=', '-D NAME=VALUE', '-P NAME', '-pFILE', '.scad',
                 'this machine', str(workdir)):
        assert word in result.out, (word, result.out)

    write_config(workdir, 'openscad.servers = laptop.local\n')  # never contacted for help
    result = proc(flag, prog='openscad.cloud')
    assert result.code == 0 and 'laptop.local' in result.out and 'openscad.servers' in result.out, result


def test_wrapper_version_gives_rrclouds_and_the_tools(proc, workdir):
    tool = subprocess.run(['openscad', '--version'], capture_output=True, text=True, timeout=30)

    result = proc('--version', prog='openscad.cloud')

    assert result.code == 0, result
    assert f'rrcloud {__version__}' in result.out
    assert (tool.stdout + tool.stderr).strip() in result.out  # "OpenSCAD version 2021.01"
    povray = proc('--version', prog='povray.cloud')
    assert povray.code == 0 and 'POV-Ray 3.7' in povray.out, povray


def test_version_of_a_tool_not_installed_says_so(cli, workdir):
    make_service(workdir, 'ghost', 'path = /nonexistent\ncmd = ghosttool\n')

    result = cli('--version', prog='ghost.cloud')

    assert result.code == 0, result
    assert 'ghost on this machine: not installed (ghosttool not found in /nonexistent)' in result.out


@pytest.mark.parametrize('args, usage', [(('serve', '--help'), 'usage: rrcloud serve [--bind ADDR] [--port N]'),
                                         (('print', '--help'), 'usage: rrcloud print [--baud=N]'),
                                         (('print', '-h'), 'usage: rrcloud print [--baud=N]')])
def test_serve_and_print_help(proc, workdir, args, usage):
    result = proc(*args)

    assert result.code == 0 and result.err == '', result
    assert result.out.startswith(usage), result
    assert not (workdir / 'tasks').exists()


###############################################################################
# 10. Errors a user can act on, content by what it is, the tool's own words
###############################################################################

def test_a_missing_input_names_the_file(cli, workdir):
    assert one_error_line(cli('mian.scad', '-omain.stl', prog='openscad.cloud')) == \
        'rrcloud: error: mian.scad: no such file\n'


def test_a_file_of_the_wrong_kind_names_the_kinds(cli, workdir):
    (workdir / 'notes.txt').write_text('hello\n')

    assert one_error_line(cli('notes.txt', '-onotes.stl', prog='openscad.cloud')) == \
        'rrcloud: error: notes.txt: openscad takes .scad, .csg files\n'


def test_a_port_not_allowed_for_printing_names_the_allowed(cli, workdir):
    shutil.copy(DATA / 'small.gcode', workdir / 'small.gcode')

    err = one_error_line(cli('/dev/ttyS0', 'small.gcode', prog='printrun.cloud'))

    assert err.startswith('rrcloud: error: /dev/ttyS0: not a port printrun may use')
    assert '/dev/ttyUSB*, /dev/ttyACM*' in err


def test_load_and_output_with_a_space_work(proc, workdir):
    shutil.copy(DATA / 'slic3r.ini', workdir / 'my.ini')
    shutil.copy(DATA / 'cube.stl', workdir / 'cube.stl')

    result = proc('--load', 'my.ini', 'cube.stl', '--output', 'cube.gcode', prog='slic3r.cloud')

    assert result.code == 0, result
    assert 'G1' in (workdir / 'cube.gcode').read_text()
    (record,) = records(workdir)
    assert record['preargs'].startswith('--load=') and '--load=tasks/in/' in record['cmd'], record


def test_an_output_option_slic3r_does_not_know_names_its_own(cli, workdir):
    shutil.copy(DATA / 'cube.stl', workdir / 'cube.stl')

    assert one_error_line(cli('cube.stl', '+O', 'x.gcode', prog='slic3r.cloud')) == \
        'rrcloud: error: +O: slic3r takes its output as --output=FILE\n'


def test_an_unknown_option_names_the_allowed_ones(cli, workdir):
    shutil.copy(DATA / 'cube.scad', workdir / 'cube.scad')

    err = one_error_line(cli('cube.scad', '--animat=3', '-ocube.stl', prog='openscad.cloud'))

    assert err.startswith("rrcloud: error: --animat=3: not an option openscad documents or rrcloud passes on "
                          "(allowed: -oFILE, -pFILE, --p=FILE, --autocenter, ")


@pytest.mark.parametrize('content', ['cube(7);', 'cube([7,7,7]);'])
def test_content_without_a_space_is_content(cli, workdir, content):
    result = cli('--sync', 'openscad', content, '-oc.stl')

    assert result.code == 0, result
    assert stl_size(workdir / 'c.stl') == (7, 7, 7)


def test_the_tools_error_names_the_users_file(proc, workdir):
    (workdir / 'job').mkdir()
    (workdir / 'job' / 'bad.scad').write_text('cube(1\n')

    result = proc('job/bad.scad', '-ojob/bad.stl', prog='openscad.cloud')

    assert result.code == 1, result
    assert 'syntax error in file job/bad.scad, line' in result.err, result
    assert "Can't parse file 'job/bad.scad'" in result.err
    assert 'tasks/in' not in result.err and '/job/tasks' not in result.err, result


def test_a_projects_error_names_the_users_file_through_a_server(proc, workdir, remote):
    (workdir / 'lib').mkdir()
    (workdir / 'main.scad').write_text('include <lib/part.scad>\npart();\n')
    (workdir / 'lib' / 'part.scad').write_text('module part() { cube(1) }\n')  # no ';'

    result = proc('main.scad', '-omain.stl', prog='openscad.cloud')

    assert result.code == 1, result
    assert 'in file lib/part.scad, line 1' in result.err, result
    assert 'tasks/in' not in result.err, result


@pytest.mark.parametrize('where', ['local', 'server'])
def test_warnings_on_success_reach_stderr(request, proc, workdir, where):
    if where == 'server':
        request.getfixturevalue('remote')
    (workdir / 'warn.scad').write_text('include <nothere.scad>\nnosuchmodule();\ncube(1);\n')

    result = proc('warn.scad', '-owarn.stl', prog='openscad.cloud')

    assert result.code == 0, result
    assert "WARNING: Can't open include file 'nothere.scad'." in result.err, result
    assert "WARNING: Ignoring unknown module 'nosuchmodule' in file warn.scad, line 2" in result.err
    assert result.out == '' and 'tasks/' not in result.err
