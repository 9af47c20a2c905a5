"""Every real service end to end: OpenSCAD, OpenJSCAD, Slic3r, POV-Ray, echo; multi-file projects.

(a) Locally: the ``*.cloud`` wrappers as real processes (``proc``) and
``rrcloud --sync`` in-process (``cli``), in a fresh store (``workdir``).
(b) Through a live deployment of each kind (deploy.py: the embedded server,
lighttpd and Apache running the CGI, as www-data on a loopback port): POST
the task, long-poll ``GET /?service=info&id=ID&wait=60``, download
``/tasks/out/<name>``.  One deployment per kind for the whole module.

The real tools run every time (openscad, openjscad from @jscad/cli@1,
slic3r, povray); their results are checked the way a user would: the STL
parses and has the right volume or is watertight, the G-code has the
config's layer height, the PNG has the size the conf asks for.

Multi-file projects: a main.scad that includes and uses files beside it
gives the same STL bytes as plain ``openscad``, locally and through a server.
Hand-made hostile tar.gz archives (absolute paths, ``..``, links, devices,
hidden names, too many files, too large) are refused by
``unpack_project`` and over HTTP, leaving nothing in the store and
writing nothing outside it.  The size limit is tested for real: a member of
PROJECT_MAX_BYTES + 1 zero bytes compresses to a few hundred kilobytes.
"""
import collections
import gzip
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import requests
from stl import mesh

import deploy
from rrc.config import load_config
from rrc.errors import UsageError
from rrc.projects import PROJECT_MAX_BYTES, PROJECT_MAX_FILES, pack_project, scad_references, unpack_project
from rrc.services import load_services
from rrc.store import STORE_FOLDERS, Store
from rrc.submission import Input, submit_task
from conftest import DATA, write_config
from helpers import records

DIFFERENCE = 'difference() { cube(5); sphere(2.5); }'
BAD_SCAD = 'cube(10;\n'  # a syntax error
ECHO_BYTES = bytes(range(256)) * 4 + b'\r\n\x00 end'
WAIT = 60

# A project: main.scad includes defs.scad and uses lib/parts.scad, which
# includes lib/shapes.scad (found beside parts.scad, not beside main.scad).
PROJECT = {
    'main.scad': 'include <defs.scad>\nuse <lib/parts.scad>\nplate(size);\n',
    'defs.scad': '// shared settings\nsize = 12;\n',
    'lib/parts.scad': 'include <shapes.scad>\nmodule plate(s) { slab(s, 2); }\n',
    'lib/shapes.scad': 'module slab(s, h) { cube([s, s, h]); }\n',
}
PROJECT_VOLUME = 12 * 12 * 2

# Every file name a hostile archive tries to write contains this marker.
MARK = 'rrcloud-escaped-3f9a'


###############################################################################
# Checking results
###############################################################################

def stl_mesh(data):
    """An STL (ASCII or binary) parsed by numpy-stl."""
    return mesh.Mesh.from_file('result.stl', fh=io.BytesIO(data))


def stl_volume(data):
    volume, _, _ = stl_mesh(data).get_mass_properties()
    return float(volume)


def open_edges(model):
    """Edges not shared by exactly two triangles (coordinates rounded): empty when watertight."""
    edges = collections.Counter()
    for triangle in model.vectors:
        corners = [tuple(round(float(c), 4) for c in vertex) for vertex in triangle]
        for a, b in ((0, 1), (1, 2), (2, 0)):
            edges[tuple(sorted((corners[a], corners[b])))] += 1
    return {edge: count for edge, count in edges.items() if count != 2}


def png_size(data):
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n', data[:16]
    assert data[12:16] == b'IHDR', data[:32]
    return struct.unpack('>II', data[16:24])


def gcode_words(line):
    """The code part of a G-code line, split into words (comment dropped)."""
    return line.split(';', 1)[0].split()


def invalid_gcode_lines(text):
    """Non-comment lines that are not G, M or T plus a number."""
    return [line for line in text.splitlines()
            if gcode_words(line) and not re.match(r'\A[GMT][0-9]+\Z', gcode_words(line)[0])]


def extrusion_heights(text):
    """The distinct Z heights at which plastic is laid (G1 moves in X/Y that push E forward)."""
    z, e, heights = None, 0.0, []
    for line in text.splitlines():
        words = gcode_words(line)
        if not words or words[0] not in ('G1', 'G92'):
            continue
        values = {w[0]: float(w[1:]) for w in words[1:] if len(w) > 1 and w[0] in 'XYZEF'}
        if words[0] == 'G92':
            e = values.get('E', e)
            continue
        z = values.get('Z', z)
        if 'E' in values:
            if values['E'] > e and ('X' in values or 'Y' in values) and z not in heights:
                heights.append(z)
            e = values['E']
    return heights


def assert_layers(gcode, layer_height, top):
    """The G-code prints layers ``layer_height`` apart, from one layer up to the object's top."""
    assert not invalid_gcode_lines(gcode), invalid_gcode_lines(gcode)[:5]
    heights = extrusion_heights(gcode)
    assert heights, 'no extruding move'
    assert heights == sorted(heights), heights
    assert heights[0] == pytest.approx(layer_height), heights
    steps = [round(b - a, 6) for a, b in zip(heights, heights[1:])]
    assert steps and all(step == pytest.approx(layer_height) for step in steps), steps
    assert top - layer_height <= heights[-1] <= top + 1e-6, heights
    assert f'\n; layer_height = {layer_height}\n' in gcode


def assert_cube_stl(data):
    assert stl_volume(data) == pytest.approx(1000, abs=1)


def assert_difference_stl(data):
    # a 5 mm cube minus one eighth of a 2.5 mm sphere (faceted: a little less is cut)
    octant = 4 / 3 * 3.141592653589793 * 2.5 ** 3 / 8
    assert 125 - octant - 0.5 < stl_volume(data) < 125 - octant / 2


def assert_jscad_stl(data):
    count = struct.unpack('<I', data[80:84])[0]
    assert len(data) == 84 + 50 * count, 'not a binary STL'  # openjscad writes binary
    model = stl_mesh(data)
    assert len(model.vectors) == count > 0
    assert open_edges(model) == {}
    # a 10 mm cube minus a quarter of an r=2 cylinder at its corner
    assert stl_volume(data) == pytest.approx(1000 - 3.141592653589793 * 4 * 10 / 4, abs=3)


def write_project(folder):
    for name, text in PROJECT.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def local_openscad(folder, main='main.scad'):
    """The bytes a plain local ``openscad MAIN -oref.stl`` writes in ``folder``."""
    reference = Path(tempfile.mkdtemp(prefix='rrcloud-ref-')) / 'ref.stl'
    try:
        subprocess.run(['openscad', main, f'-o{reference}'], cwd=folder, check=True,
                       capture_output=True, timeout=120)
        return reference.read_bytes()
    finally:
        shutil.rmtree(reference.parent)


def copy_data(workdir, *names):
    for name in names:
        shutil.copy(DATA / name, workdir / name)


def only_record(root):
    (record,) = records(root)
    return record


###############################################################################
# (a) Locally: wrappers and rrcloud --sync
###############################################################################

def test_openscad_wrapper_renders_a_file(proc, workdir):
    copy_data(workdir, 'cube.scad')

    result = proc('cube.scad', '-ocube.stl', prog='openscad.cloud')

    assert result.code == 0, result
    assert_cube_stl((workdir / 'cube.stl').read_bytes())
    record = only_record(workdir)
    assert record['status'] == 'complete' and record['service'] == 'openscad'
    assert (workdir / record['out']).read_bytes() == (workdir / 'cube.stl').read_bytes()


def test_openscad_renders_raw_content(cli, workdir):
    result = cli('--sync', 'openscad', DIFFERENCE, '-odiff.stl')

    assert result.code == 0, result
    assert result.out == ''
    assert_difference_stl((workdir / 'diff.stl').read_bytes())
    record = only_record(workdir)
    assert record['status'] == 'complete'
    (stored,) = record['in'].split(',')
    assert stored.endswith('.scad') and (workdir / stored).read_text() == DIFFERENCE


def test_openjscad_wrapper_makes_a_watertight_stl(proc, workdir):
    copy_data(workdir, 'cube.jscad')

    result = proc('cube.jscad', '-ocube.stl', prog='openjscad.cloud')

    assert result.code == 0, result
    assert_jscad_stl((workdir / 'cube.stl').read_bytes())
    assert only_record(workdir)['status'] == 'complete'


def test_slic3r_wrapper_slices_with_the_loaded_config(proc, workdir):
    copy_data(workdir, 'slic3r.ini', 'cube.stl')

    result = proc('--load=slic3r.ini', 'cube.stl', '--output=cube.gcode', prog='slic3r.cloud')

    assert result.code == 0, result
    assert_layers((workdir / 'cube.gcode').read_text(), 0.3, top=10)
    record = only_record(workdir)
    assert record['status'] == 'complete'
    assert ' --load=tasks/in/' in record['cmd'] and record['cmd'].endswith('.gcode')


def test_povray_wrapper_renders_the_conf_size(proc, workdir):
    copy_data(workdir, 'scene.pov')

    result = proc('scene.pov', '+Oscene.png', prog='povray.cloud')

    assert result.code == 0, result
    assert png_size((workdir / 'scene.png').read_bytes()) == (640, 480)
    assert only_record(workdir)['status'] == 'complete'


def test_echo_gives_back_the_same_bytes(cli, workdir):
    (workdir / 'data.bin').write_bytes(ECHO_BYTES)

    result = cli('--sync', 'echo', 'data.bin')

    assert result.code == 0, result
    record = only_record(workdir)
    assert record['status'] == 'complete'
    assert (workdir / record['out']).read_bytes() == ECHO_BYTES


def test_echo_gives_back_raw_content(cli, workdir):
    content = 'two words\nand a second line\n'

    result = cli('--sync', 'echo', content)

    assert result.code == 0, result
    record = only_record(workdir)
    assert (workdir / record['out']).read_bytes() == content.encode()


def test_a_model_with_a_syntax_error_fails_with_the_tools_message(cli, workdir):
    (workdir / 'bad.scad').write_text(BAD_SCAD)

    result = cli('--sync', 'openscad', 'bad.scad', '-obad.stl')

    assert result.code == 1, result  # openscad's own exit code
    assert 'Parser error' in result.err, result
    record = only_record(workdir)
    assert record['status'] == 'failed'
    assert result.err.splitlines()[-1] == f'rrcloud: error: task {record["id"]} failed: exit code 1'
    assert 'Parser error' in (workdir / 'tasks' / 'log' / record['id']).read_text()
    assert not (workdir / 'bad.stl').exists()
    assert list((workdir / 'tasks' / 'out').iterdir()) == []


###############################################################################
# (a) Multi-file projects, locally
###############################################################################

def test_project_wrapper_gives_the_same_stl_as_openscad(proc, workdir):
    write_project(workdir)

    result = proc('main.scad', '-omain.stl', prog='openscad.cloud')

    assert result.code == 0, result
    reference = local_openscad(workdir)
    assert stl_volume(reference) == pytest.approx(PROJECT_VOLUME, abs=0.01)
    assert (workdir / 'main.stl').read_bytes() == reference
    record = only_record(workdir)
    main = Path(record['in'])
    assert main.name == 'main.scad' and main.parent.parent == Path('tasks/in')
    folder = workdir / main.parent
    assert {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()} == set(PROJECT)
    for name, text in PROJECT.items():
        assert (folder / name).read_text() == text


def test_project_with_an_include_from_the_parent_folder(proc, workdir):
    (workdir / 'common.scad').write_text('module slab(s, h) { cube([s, s, h]); }\n')
    (workdir / 'job').mkdir()
    (workdir / 'job' / 'main.scad').write_text('include <../common.scad>\nslab(7, 3);\n')

    result = proc('job/main.scad', '-ojob/main.stl', prog='openscad.cloud')

    assert result.code == 0, result
    reference = local_openscad(workdir / 'job')
    assert stl_volume(reference) == pytest.approx(7 * 7 * 3, abs=0.01)
    assert (workdir / 'job' / 'main.stl').read_bytes() == reference


###############################################################################
# Hostile project archives
###############################################################################

def add_file(archive, name, data=b'cube(1);\n'):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def add_special(archive, name, kind, linkname=''):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    archive.addfile(info)


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read without holding them in memory."""

    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def add_zeros(archive, name, size):
    info = tarfile.TarInfo(name)
    info.size = size
    archive.addfile(info, io.BufferedReader(Zeros(size)))


def archive_of(build):
    """A tar.gz made by ``build(archive)``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz', compresslevel=1) as archive:
        build(archive)
    return buffer.getvalue()


def good_then(*steps):
    """An archive whose main.scad is fine, followed by ``steps``."""
    def build(archive, outside):
        add_file(archive, 'main.scad')
        for step in steps:
            step(archive, outside)
    return build


def many_files(count):
    def build(archive, outside):
        for number in range(count):
            add_file(archive, f'f{number:04d}.scad')
    return build


# name -> build(archive, outside); ``outside`` is a world-writable folder
# outside the store that a careless unpacker could be led to write into.
HOSTILE = {
    'absolute': lambda a, o: add_file(a, f'{o}/{MARK}.scad'),
    'absolute-after-good': good_then(lambda a, o: add_file(a, f'{o}/{MARK}.scad')),
    'absolute-etc': lambda a, o: add_file(a, f'/etc/{MARK}.scad'),
    'dotdot': lambda a, o: add_file(a, f'../{MARK}.scad'),
    'dotdot-deep': lambda a, o: add_file(a, '../' * 6 + f'{MARK}.scad'),
    'dotdot-inside': good_then(lambda a, o: add_file(a, f'lib/../../{MARK}.scad')),
    'symlink-folder': good_then(lambda a, o: add_special(a, 'lib', tarfile.SYMTYPE, str(o)),
                                lambda a, o: add_file(a, f'lib/{MARK}.scad')),
    'symlink-file': lambda a, o: add_special(a, f'{MARK}.scad', tarfile.SYMTYPE, '/etc/passwd'),
    'symlink-relative': good_then(lambda a, o: add_special(a, f'{MARK}.scad', tarfile.SYMTYPE,
                                                           '../../../../etc/passwd')),
    'hardlink-outside': good_then(lambda a, o: add_special(a, f'{MARK}.scad', tarfile.LNKTYPE,
                                                           '/etc/passwd')),
    'hardlink-inside': good_then(lambda a, o: add_special(a, f'{MARK}.scad', tarfile.LNKTYPE,
                                                          'main.scad')),
    'char-device': lambda a, o: add_special(a, f'{MARK}.scad', tarfile.CHRTYPE),
    'block-device': good_then(lambda a, o: add_special(a, f'{MARK}.scad', tarfile.BLKTYPE)),
    'fifo': good_then(lambda a, o: add_special(a, f'{MARK}.scad', tarfile.FIFOTYPE)),
    'hidden-main': lambda a, o: add_file(a, f'.{MARK}.scad'),
    'hidden-folder': good_then(lambda a, o: add_file(a, f'.{MARK}/config')),
    'hidden-in-subfolder': good_then(lambda a, o: add_file(a, f'lib/.{MARK}.scad')),
    'too-many-files': many_files(PROJECT_MAX_FILES + 1),
    'too-large-member': good_then(lambda a, o: add_zeros(a, f'{MARK}.scad', PROJECT_MAX_BYTES + 1)),
    'too-large-in-total': good_then(
        lambda a, o: add_zeros(a, f'{MARK}-1.scad', PROJECT_MAX_BYTES // 2),
        lambda a, o: add_zeros(a, f'{MARK}-2.scad', PROJECT_MAX_BYTES // 2)),
    'only-a-folder': lambda a, o: add_special(a, 'lib', tarfile.DIRTYPE),
    'too-deep': lambda a, o: add_file(a, 'd/' * 2000 + f'{MARK}.scad'),  # beyond os.makedirs' recursion
    'empty': lambda a, o: None,
}
NOT_ARCHIVES = {
    'not-gzip': b'cube(10);\n',
    'gzip-not-tar': gzip.compress(b'cube(10);\n' * 100),
}


# Archives whose unpacking fails on the server's disk, not on a name check:
# the error names the member, the client's own, never the store's path.
PATH_ERRORS = {
    # refused by depth before the disk is touched (40 levels: beyond PATH_MAX too)
    'deep': (lambda a: add_file(a, '/'.join(['d' * 120] * 40) + '/main.scad'), 'more than 32 levels deep'),
    # 32 levels: within the depth, beyond PATH_MAX below tasks/in/ (ENAMETOOLONG)
    'long': (lambda a: add_file(a, '/'.join(['d' * 128] * 31) + '/' + 'm' * 100 + '.scad'),
             ': File name too long'),
    'duplicate': (lambda a: [add_file(a, 'main.scad'), add_file(a, 'main.scad')],
                  "cannot unpack 'main.scad': File exists"),
    'file-then-folder': (lambda a: [add_file(a, 'lib'), add_file(a, 'lib/x.scad')],
                         "cannot unpack 'lib/x.scad': "),
}


def hostile_archive(case, outside):
    if case in NOT_ARCHIVES:
        return NOT_ARCHIVES[case]
    return archive_of(lambda archive: HOSTILE[case](archive, outside))


HOSTILE_CASES = sorted(HOSTILE) + sorted(NOT_ARCHIVES)


def files_under(root):
    """Every file, folder and link under ``root``, relative."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(folder, name), root))
    return found


def marked_paths(*roots):
    """Paths under ``roots`` (and the obvious escape targets) named with MARK."""
    found = [str(p) for p in (Path('/tmp') / f'{MARK}.scad', Path('/') / f'{MARK}.scad',
                              Path('/etc') / f'{MARK}.scad') if os.path.lexists(p)]
    for root in roots:
        found += [os.path.join(root, p) for p in files_under(root) if MARK in p]
    return found


@pytest.fixture
def victim():
    """A world-writable folder under /tmp (www-data could write into it) that must stay empty."""
    folder = Path(tempfile.mkdtemp(prefix='rrcloud-victim-', dir='/tmp'))
    os.chmod(folder, 0o777)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.parametrize('case', HOSTILE_CASES)
def test_unpack_project_refuses_a_hostile_archive(tmp_path, victim, case):
    # deep enough that '../' * 6 from tasks/in/<folder>/ still lands in tmp_path
    store = Store(tmp_path / 'a' / 'b' / 'store')
    os.makedirs(store.root)
    data = hostile_archive(case, victim)
    passwd = os.stat('/etc/passwd')
    before = files_under(tmp_path)

    with pytest.raises(UsageError, match='project archive'):
        unpack_project(store, data)

    assert os.listdir(store.folder('in')) == []
    created = {f'a/b/store/tasks/{name}' for name in STORE_FOLDERS}
    assert files_under(tmp_path) - before <= created | {'a/b/store/tasks'}
    assert os.listdir(victim) == []
    assert marked_paths(tmp_path, victim) == []
    now = os.stat('/etc/passwd')
    assert (now.st_ino, now.st_nlink, now.st_mtime_ns) == (passwd.st_ino, passwd.st_nlink, passwd.st_mtime_ns)


@pytest.mark.parametrize('case', HOSTILE_CASES)
def test_cli_refuses_a_hostile_archive_file(cli, workdir, victim, case):
    # a file named *.scad.tgz given on the command line is taken as a project archive
    (workdir / 'x.scad.tgz').write_bytes(hostile_archive(case, victim))

    result = cli('--sync', 'openscad', 'x.scad.tgz', '-ox.stl')

    assert result.code == 2, result
    assert result.err.startswith('rrcloud: error: project archive') and result.err.count('\n') == 1, result
    assert records(workdir) == []
    assert files_under(workdir / 'tasks' / 'in') == set()
    assert sorted(os.listdir(workdir)) == ['tasks', 'x.scad.tgz']
    assert os.listdir(victim) == []
    assert marked_paths(workdir.parent, victim) == []


@pytest.mark.parametrize('case', sorted(PATH_ERRORS))
def test_unpack_project_errors_name_the_member_never_the_store(tmp_path, case):
    store = Store(tmp_path / 'store')
    build, reason = PATH_ERRORS[case]

    with pytest.raises(UsageError) as refused:
        unpack_project(store, archive_of(build))

    error = str(refused.value)
    assert error.startswith('project archive: ') and reason in error, error
    assert str(tmp_path) not in error and 'tasks/in' not in error, error
    assert os.listdir(store.folder('in')) == []


def test_unpack_project_takes_a_good_archive(tmp_path):
    store = Store(tmp_path / 'store')

    def build(archive):
        add_special(archive, 'lib', tarfile.DIRTYPE)
        for name, text in PROJECT.items():
            add_file(archive, name, text.encode())
    main = unpack_project(store, archive_of(build))

    assert re.match(r'\Atasks/in/[0-9]{10}-[0-9]{5}-[0-9]{6}/main.scad\Z', main), main
    folder = Path(store.path_of(main)).parent
    assert {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()} == set(PROJECT)
    assert (folder / 'lib' / 'shapes.scad').read_text() == PROJECT['lib/shapes.scad']


def test_unpack_project_takes_exactly_the_most_files(tmp_path):
    store = Store(tmp_path / 'store')

    main = unpack_project(store, archive_of(lambda a: many_files(PROJECT_MAX_FILES)(a, None)))

    assert main.endswith('/f0000.scad')
    assert len(os.listdir(Path(store.path_of(main)).parent)) == PROJECT_MAX_FILES


def test_a_refused_archive_after_a_good_project_leaves_nothing(workdir):
    """submit_task cleans up every input it stored before one was refused, project folders too."""
    store = Store(workdir)
    services, _ = load_services(store.root)
    good = archive_of(lambda a: [add_file(a, name, text.encode()) for name, text in PROJECT.items()])
    bad = hostile_archive('dotdot', workdir)
    inputs = [Input(good, 'main.scad.tgz'), Input(bad, 'x.scad.tgz')]

    with pytest.raises(UsageError, match='project archive'):
        submit_task(store, load_config(), services['openscad'], inputs)

    assert store.task_ids() == []
    assert files_under(store.folder('in')) == set()


###############################################################################
# (b) Through live deployments
###############################################################################

@pytest.fixture(scope='module', params=deploy.KINDS)
def server(request):
    """One live deployment per kind (real services from the app's services/),
    shared by the module.  One task has run on it: its store's folders and its
    recovery mark are there before any test compares the store (a CGI makes
    them at its first submission, whichever test that is)."""
    with deploy.running(deploy.Deployment(request.param)) as deployment:
        record, _ = run(deployment.session, deployment, 'echo', fileIn0='settled\n')
        assert record['status'] == 'complete', record
        yield deployment


@pytest.fixture(scope='module')
def http():
    session = requests.Session()
    session.trust_env = False  # loopback: no proxy
    return session


def post(http, server, service, files=None, **fields):
    return http.post(server.url + '/', data=dict(service=service, format='json', **fields),
                     files=files or None, timeout=60)


def run(http, server, service, files=None, **fields):
    """POST a task, long-poll it to its end; returns (final record, result bytes or None)."""
    answer = post(http, server, service, files, **fields)
    assert answer.status_code == 200, (answer.status_code, answer.text)
    task_id = answer.json()['id']
    info = http.get(server.url + '/', params={'service': 'info', 'id': task_id, 'wait': WAIT,
                                              'format': 'json'}, timeout=WAIT + 30)
    assert info.status_code == 200, info.text
    record = info.json()
    assert record['id'] == task_id and record['status'] in ('complete', 'failed'), record
    result = http.get(f'{server.url}/{record["out"]}', timeout=60) if record.get('out') else None
    if record['status'] == 'complete':
        assert result is not None and result.status_code == 200, (record, server.server_log())
        return record, result.content
    return record, result


def test_http_openscad_file(http, server):
    record, stl = run(http, server, 'openscad',
                      files={'fileIn0': ('cube.scad', (DATA / 'cube.scad').read_bytes())})

    assert record['status'] == 'complete', record
    assert record['out'].endswith('.stl')
    assert_cube_stl(stl)


def test_http_openscad_content_string(http, server):
    record, stl = run(http, server, 'openscad', fileIn0='cube(10);')

    assert record['status'] == 'complete', record
    assert record['in'].endswith('.scad')
    assert_cube_stl(stl)


def test_http_openscad_raw_difference(http, server):
    record, stl = run(http, server, 'openscad', fileIn0=DIFFERENCE)

    assert record['status'] == 'complete', record
    assert_difference_stl(stl)


def test_http_openjscad(http, server):
    record, stl = run(http, server, 'openjscad',
                      files={'fileIn0': ('cube.jscad', (DATA / 'cube.jscad').read_bytes())})

    assert record['status'] == 'complete', record
    assert_jscad_stl(stl)


def test_http_slic3r_with_a_loaded_config(http, server):
    record, gcode = run(http, server, 'slic3r', prearg0='--load=',
                        files={'fileIn0': ('slic3r.ini', (DATA / 'slic3r.ini').read_bytes()),
                               'fileIn1': ('cube.stl', (DATA / 'cube.stl').read_bytes())})

    assert record['status'] == 'complete', record
    assert ' --load=tasks/in/' in record['cmd'], record
    assert_layers(gcode.decode(), 0.3, top=10)


def test_http_povray(http, server):
    record, png = run(http, server, 'povray',
                      files={'fileIn0': ('scene.pov', (DATA / 'scene.pov').read_bytes())})

    assert record['status'] == 'complete', record
    assert png_size(png) == (640, 480)
    # Its log: no complaint about a povray.conf (it has one in its sandbox),
    # the scene named as the client named it.
    log = http.get(f'{server.url}/tasks/log/{record["id"]}', timeout=60).text
    assert log.startswith('Persistence of Vision'), log[:300]
    assert 'povray.conf' not in log and 'Input file: scene.pov' in log and 'tasks/in/' not in log, log[:2000]


def test_http_echo_bytes(http, server):
    record, out = run(http, server, 'echo', files={'fileIn0': ('data.bin', ECHO_BYTES)})

    assert record['status'] == 'complete', record
    assert out == ECHO_BYTES


def test_http_echo_content_string(http, server):
    content = 'two words\nand a second line\n'

    record, out = run(http, server, 'echo', fileIn0=content)

    assert record['status'] == 'complete', record
    assert out == content.encode()


def test_http_a_model_with_a_syntax_error_fails(http, server):
    record, result = run(http, server, 'openscad', files={'fileIn0': ('bad.scad', BAD_SCAD.encode())})

    assert record['status'] == 'failed', record
    assert record.get('exitCode') == '1', record
    log = http.get(f'{server.url}/tasks/log/{record["id"]}', timeout=30)
    assert log.status_code == 200
    assert 'Parser error' in log.text, log.text
    assert result is not None and result.status_code == 404
    assert not [p for p in server.store_files() if p.startswith('out/') and record['id'] in p]


def test_http_project_archive(http, server, tmp_path):
    write_project(tmp_path)
    references = scad_references(tmp_path / 'main.scad')
    data = pack_project(tmp_path / 'main.scad', references)

    record, stl = run(http, server, 'openscad', files={'fileIn0': ('main.scad.tgz', data)})

    assert record['status'] == 'complete', record
    assert stl == local_openscad(tmp_path)
    folder = server.store / Path(record['in']).parent
    assert {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()} == set(PROJECT)


def test_project_through_a_server_as_the_clients_remote(proc, workdir, server):
    write_project(workdir)
    write_config(workdir, f'servers = 127.0.0.1:{server.port}\n')

    result = proc('main.scad', '-omain.stl', prog='openscad.cloud')

    assert result.code == 0, (result, server.server_log())
    assert (workdir / 'main.stl').read_bytes() == local_openscad(workdir)
    record = only_record(workdir)
    assert record['server'] == server.url + '/' and record['status'] == 'complete'
    remote = Store(server.store).read_task(record['remoteId'])
    assert remote['status'] == 'complete' and remote['in'].endswith('/main.scad')
    folder = server.store / Path(remote['in']).parent
    assert {str(p.relative_to(folder)) for p in folder.rglob('*') if p.is_file()} == set(PROJECT)


@pytest.mark.parametrize('case', HOSTILE_CASES)
def test_http_refuses_a_hostile_archive(http, server, victim, case):
    data = hostile_archive(case, victim)
    before = server.store_files()

    answer = post(http, server, 'openscad', files={'fileIn0': ('x.scad.tgz', data)})

    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert 'project archive' in answer.json()['error']
    assert server.store_files() - before == set()
    assert os.listdir(victim) == []
    assert marked_paths(server.root) == []


@pytest.mark.parametrize('case', sorted(PATH_ERRORS))
def test_http_an_archive_error_names_no_path_of_the_server(http, server, case):
    build, reason = PATH_ERRORS[case]
    before = server.store_files()

    answer = post(http, server, 'openscad', files={'fileIn0': ('x.scad.tgz', archive_of(build))})

    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert answer.json()['error'].startswith('project archive: ') and reason in answer.text, answer.text
    for server_path in (str(server.root), str(server.store), '/tasks/in/'):
        assert server_path not in answer.text, answer.text
    assert server.store_files() - before == set()


def test_http_refused_archive_after_a_good_project_leaves_nothing(http, server, tmp_path):
    write_project(tmp_path)
    good = pack_project(tmp_path / 'main.scad', scad_references(tmp_path / 'main.scad'))
    bad = hostile_archive('dotdot', tmp_path)
    before = server.store_files()

    answer = post(http, server, 'openscad', files={'fileIn0': ('main.scad.tgz', good),
                                                   'fileIn1': ('x.scad.tgz', bad)})

    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert server.store_files() - before == set()
