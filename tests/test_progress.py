"""Progress for every tool (issue 20, item 3): the real tools through a real
server, their progress as events, their logs, and what a person sees of it.

POV-Ray tells its own fraction ("Rendered N of M pixels", redrawn with
carriage returns), Slic3r and OpenSCAD only their stages; a stage-only tool's
time left comes from the service's usual run time on the node.  The log of a
render keeps the last state of POV-Ray's redrawn line, not hundreds of them.
``rrcloud watch`` and a wrapper's progress line show a bar or the stage
(rrc/cli/bar.py); a wrapper's line never goes back from busy to queued.
"""
import re
import subprocess

import pytest

from conftest import DATA, REPO, make_service
from helpers import SH_INPUTS_SERVICE, SH_SERVICE, plain_session, read_terminal_until, rrcloud_on_a_terminal, submit, wait_done, wait_for
from rrc.cli.bar import progress_bar
from rrc.errors import ConfigError
from rrc.events import append_event, checked_progress, last_progress, read_events
from rrc.progress import OutputProgress, reader_named
from rrc.services import parse_service
from rrc import waits
from rrc.states import State, move_task
from rrc.store import Store
from rrc.toollog import PENDING_MAX, OverwrittenLines

SLIC3R_STAGES = ['slicing', 'infilling layers', 'processing triangulated mesh', 'preparing infill',
                 'generating skirt', 'generating brim', 'exporting G-code']


@pytest.fixture
def tools_server(embedded_server):
    """A real server with the project's own service confs, two slots."""
    return embedded_server(config='maxTasks = 2\n', scope='module')


def finished_events(server, task_id):
    """The task's record once it ended, and its events up to its final status."""
    record = wait_done(server, task_id, timeout=180)
    store = Store(str(server.root))
    events = wait_for(lambda: (lambda found: found if found and found[-1].kind == 'status'
                               and found[-1].data['status'] != 'busy' else None)(read_events(store, task_id)),
                      'the final status event', timeout=10)
    return record, events


def progress_of(events):
    return [event.data for event in events if event.kind == 'progress']


def stages_of(events):
    """The stages in the order they were written, each once in a row."""
    stages = []
    for data in progress_of(events):
        if data.get('stage') and (not stages or stages[-1] != data['stage']):
            stages.append(data['stage'])
    return stages


###############################################################################
# 1. The real tools through a real server
###############################################################################

def one_thread_povray():
    """The project's povray.conf with one render thread (+WT1): the render's
    length, and so the count of its half-second progress events, does not
    shrink with the machine's cores.  Its reader is the conf's own."""
    conf = (REPO / 'services' / 'povray.conf').read_text()
    assert 'progress = povray' in conf
    return re.sub(r'^cmd = povray (.*)$', r'cmd = povray \1 +WT1', conf, flags=re.M)


@pytest.mark.slow
def test_a_povray_render_reports_its_own_rising_fraction_and_logs_one_line_of_it(embedded_server):
    server = embedded_server(services={'povray': one_thread_povray()})  # its .options and .sandbox: the installed
    task_id = submit(server, 'povray', (DATA / 'slow-scene.pov').read_bytes(), 'slow-scene.pov')
    record, events = finished_events(server, task_id)
    assert record['status'] == 'complete', record

    fractions = [(data['done'], data['total']) for data in progress_of(events) if 'done' in data]
    done = [d for d, _ in fractions]
    assert len(set(done)) >= 5, fractions
    assert done == sorted(done), fractions
    assert {total for _, total in fractions} == {640 * 480}
    assert done[-1] == 640 * 480
    assert stages_of(events) == ['parsing', 'rendering']
    assert record['progress'] == f'{640 * 480}/{640 * 480}'
    log = plain_session().get(f'{server.url}tasks/log/{task_id}', timeout=30).text
    assert '\r' not in log
    assert re.findall(r'Rendered [0-9]+ of [0-9]+ pixels.*', log) == ['Rendered 307200 of 307200 pixels (100%)'], log
    assert max(len(line) for line in log.splitlines()) < 200


def test_slic3r_reports_its_stages_as_events_and_watch_shows_them(tools_server, cli):
    task_id = submit(tools_server, 'slic3r', (DATA / 'cube.stl').read_bytes(), 'cube.stl')
    record, events = finished_events(tools_server, task_id)
    assert record['status'] == 'complete', record

    assert stages_of(events) == SLIC3R_STAGES
    assert all('done' not in data for data in progress_of(events))  # Slic3r tells no fraction
    assert record['progress'] == 'exporting G-code'  # info's progress: the last stage
    watched = cli(f'--s={tools_server.address}', 'watch', task_id)
    assert watched.code == 0, watched
    shown = [line for line in watched.out.splitlines() if line.startswith('progress: ')]
    assert [line.split(' eta ')[0] for line in shown] == [f'progress: {stage}' for stage in SLIC3R_STAGES]
    # The stage's name is rrcloud's: no path of the server's comes with it.
    assert 'tasks/out' not in ''.join(shown)


def test_openscad_reports_its_stages_and_a_later_run_the_time_it_usually_takes(tools_server):
    first = submit(tools_server, 'openscad', (DATA / 'cube.scad').read_bytes(), 'cube.scad')
    record, events = finished_events(tools_server, first)
    assert record['status'] == 'complete', record
    stages = stages_of(events)  # 2021.01: silent while it renders, then "Geometries in cache: 1"
    assert stages[0] == 'rendering' and stages[-1] == 'exporting', stages
    assert set(stages) <= {'parsing', 'compiling', 'rendering', 'exporting'}, stages

    second = submit(tools_server, 'openscad', (DATA / 'cube.scad').read_bytes(), 'cube.scad')
    _, later = finished_events(tools_server, second)
    usual = float(record['etime']) - float(record['stime'])  # the one openscad run before it here
    starting = progress_of(later)[0]
    assert starting['stage'] == 'rendering'
    assert abs(starting['eta'] - usual) <= 0.1, (starting, usual)


# A tool that prints its percentage, redrawn with carriage returns (the
# pauses let each reach the event log on its own, half a second apart).
PERCENT_TOOL = "printf ' 10%%\\r'; sleep 0.6; printf ' 50%%\\r'; sleep 0.6; printf '100%%\\n'; echo done > \"$1\"\n"


def test_a_new_tool_needs_only_a_conf_line(cli, workdir):
    make_service(workdir, 'pct', SH_SERVICE + 'progress = percent\n')
    (workdir / 'pct.sh').write_text(PERCENT_TOOL)

    result = cli('--sync', 'pct', 'pct.sh')
    assert result.code == 0, result
    task_id = Store(str(workdir)).task_ids()[-1]
    events = read_events(Store(str(workdir)), task_id)
    fractions = [(data['done'], data['total']) for data in progress_of(events) if 'done' in data]
    assert fractions[-1] == (100, 100), fractions
    assert set(fractions) <= {(10, 100), (50, 100), (100, 100)}, fractions
    assert (workdir / 'tasks' / 'log' / task_id).read_bytes() == b'100%\n'


def test_an_unknown_progress_reader_is_a_config_error_naming_it(workdir):
    make_service(workdir, 'pct', SH_SERVICE + 'progress = pixels\n')
    with pytest.raises(ConfigError) as raised:
        parse_service(str(workdir / 'services' / 'pct.conf'))
    assert 'pct.conf' in str(raised.value) and "'pixels'" in str(raised.value)
    assert 'povray' in str(raised.value)  # the readers there are


@pytest.mark.parametrize('sent, kept', [
    ({'done': 3, 'total': 10, 'percent': 30.0, 'eta': 4.5, 'stage': 'rendering'},
     {'done': 3, 'total': 10, 'percent': 30.0, 'eta': 4.5, 'stage': 'rendering'}),
    ({'stage': 'slicing', 'eta': 2, 'extra': 'x' * 300}, {'stage': 'slicing', 'eta': 2}),
    ({'stage': 'to /etc/passwd', 'done': True, 'total': 10}, None),
    ({'stage': '\x1b]0;hi\x07'}, None),
    ({'done': -1, 'total': 10}, None),
    ({'eta': 5}, None),
    # a print's printer state: its known keys with finite numbers, nothing else
    ({'done': 5, 'total': 9, 'elapsed': 3.5, 'printer': {'hotend': 200.5, 'bed': 60, 'layer': 2, 'paused': 0}},
     {'done': 5, 'total': 9, 'elapsed': 3.5, 'printer': {'hotend': 200.5, 'bed': 60, 'layer': 2, 'paused': 0}}),
    ({'done': 5, 'total': 9, 'printer': {'hotend': float('nan'), 'bed': float('inf'), 'z': True, 'layer': '3',
                                         'bytes': 10 ** 16, 'x' * 300: 1, 'hotendTarget': 210}},
     {'done': 5, 'total': 9, 'printer': {'hotendTarget': 210}}),
    ({'done': 5, 'total': 9, 'printer': ['hotend', 200]}, {'done': 5, 'total': 9}),
])
def test_a_workers_progress_is_kept_as_numbers_and_a_stage_name(sent, kept):
    assert checked_progress(sent) == kept


def test_openjscad_reports_its_one_stage(tools_server):
    task_id = submit(tools_server, 'openjscad', (DATA / 'cube.jscad').read_bytes(), 'cube.jscad')
    record, events = finished_events(tools_server, task_id)
    assert record['status'] == 'complete', record
    assert stages_of(events) == ['converting']


def test_info_of_a_running_task_shows_its_newest_fraction_or_stage(tmp_path):
    store = Store(str(tmp_path))
    task_id = '1796000000-00001-000001'
    append_event(store, task_id, 'progress', {'stage': 'generating skirt', 'eta': 3.0})
    assert last_progress(store, task_id) == 'generating skirt'
    append_event(store, task_id, 'progress', {'done': 5, 'total': 8, 'percent': 62.5, 'stage': 'rendering'})
    assert last_progress(store, task_id) == '5/8'
    append_event(store, task_id, 'progress', {'stage': 'quote"d'})  # not a stage's name: passed over
    assert last_progress(store, task_id) == '5/8'


def test_a_wait_that_begins_after_the_tools_first_stage_starts_from_it(tmp_path):
    store = Store(str(tmp_path))
    store.ensure()
    task_id = '1796000000-00001-000002'
    # queued with its marker: a record no reconcile ends (no runner to lose)
    store.write_task({'id': task_id, 'service': 'openscad', 'status': 'busy', 'queued': 'yes',
                      'ctime': '1796000000.0'})
    (tmp_path / 'tasks' / 'queue' / task_id).write_text('')
    append_event(store, task_id, 'progress', {'stage': 'rendering', 'eta': 30.0})
    seen = []

    def on_poll(record, event):
        seen.append(event and event.data)
        if len(seen) == 1:
            move_task(store, task_id, State.FAILED, {'error': 'killed'})
    waits.wait_for_task(store, task_id, timeout=10, on_poll=on_poll)
    assert seen[0] == {'stage': 'rendering', 'eta': 30.0}, seen


###############################################################################
# 2. The readers on real tool output, in any pieces
###############################################################################

def reported(reader, output, piece):
    """What OutputProgress reports of ``output`` fed ``piece`` bytes at a time."""
    found = []
    progress = OutputProgress(reader_named(reader), lambda stage, fraction: found.append((stage, fraction)))
    for start in range(0, len(output), piece):
        progress.feed(output[start:start + piece])
    progress.finish()
    return found


def test_povray_output_gives_the_same_last_fraction_in_any_pieces(tmp_path):
    (tmp_path / 'scene.pov').write_bytes((DATA / 'scene.pov').read_bytes())
    output = subprocess.run(['povray', '+W160', '+H120', '-D', 'scene.pov', '+Oout.png'], cwd=tmp_path,
                            capture_output=True, timeout=120).stderr
    assert b'\r' in output  # its redrawn line
    for piece in (1, 7, 4096, len(output)):
        found = reported('povray', output, piece)
        assert found[0] == ('parsing', None)
        assert found[-1] == ('rendering', (160 * 120, 160 * 120)), piece
        done = [fraction[0] for stage, fraction in found if fraction]
        assert done == sorted(done), piece


def test_a_line_too_long_for_a_progress_line_is_passed_over_to_its_end():
    found = reported('povray', b'x' * 300 + b'Rendered 5 of 10 pixels\nRendered 6 of 10 pixels\n', 64)
    assert found == [('rendering', (6, 10))]


###############################################################################
# 3. The log keeps the last state of a redrawn line
###############################################################################

def overwritten(pieces):
    lines = OverwrittenLines()
    return b''.join(lines.feed(piece) for piece in pieces) + lines.close()


@pytest.mark.parametrize('pieces, kept', [
    ([b'a\rb\rc\n'], b'c\n'),
    ([b'Rendered 1 of 3\r', b'Rendered 2 of 3\r', b'Rendered 3 of 3\r\n', b'done\n'], b'Rendered 3 of 3\ndone\n'),
    ([b'one\r\ntwo\r\n'], b'one\r\ntwo\r\n'),  # CRLF line ends are no redrawing
    ([b'start\n', b'50%\r', b'100%'], b'start\n100%'),  # the tool ended mid-line: its last state
    ([b'plain\nlast'], b'plain\nlast'),
])
def test_a_redrawn_line_keeps_its_last_state(pieces, kept):
    assert overwritten(pieces) == kept


def test_a_line_without_end_is_not_held_back_without_bound():
    lines = OverwrittenLines()
    written = lines.feed(b'x' * (PENDING_MAX + 1))
    assert written == b'x' * (PENDING_MAX + 1)


###############################################################################
# 4. What a person sees
###############################################################################

@pytest.mark.parametrize('data, age, shown', [
    ({'done': 58, 'total': 100, 'percent': 58.0, 'eta': 62.4}, 0, '[#############-----------] 58%  1:02 left'),
    ({'done': 58, 'total': 100, 'eta': 62.4}, 30, '[#############-----------] 58%  0:32 left'),
    ({'done': 1, 'total': 4, 'stage': 'rendering'}, 0, 'rendering  [######------------------] 25%'),
    ({'stage': 'generating skirt', 'eta': 12.0}, 0, 'generating skirt  0:12 left'),
    ({'stage': 'generating skirt', 'eta': 12.0}, 20, 'generating skirt'),  # later than usual: no guess
    ({'stage': 'rendering', 'eta': 7384}, 0, 'rendering  2:03:04 left'),
    ({'done': 0, 'total': 0}, 0, '[------------------------] 0%'),
    ({'stage': '\x1b[2Jrendering'}, 0, None),  # a server's text is never drawn as it came
    ({'done': 'many', 'total': 10}, 0, None),
    ({}, 0, None),
])
def test_the_progress_bar(data, age, shown):
    assert progress_bar(data, age) == shown


def test_a_wrappers_line_shows_queued_then_busy_and_never_queued_again(embedded_server, workdir):
    server = embedded_server(config='maxTasks = 1\n', services={'sh': SH_INPUTS_SERVICE})
    make_service(workdir, 'sh', SH_INPUTS_SERVICE)
    blocker = submit(server, 'sh', b'sleep 300\n', 'block.sh')
    (workdir / 'job.sh').write_text('sleep 1\necho done > "$1"\n')
    with rrcloud_on_a_terminal(workdir, '--sync', f'--s={server.address}', 'sh', 'job.sh') as (client, master):
        screen = read_terminal_until(master, r' queued [0-9]+s', client)
        plain_session().get(server.url, params={'service': 'kill', 'id': blocker}, timeout=30)
        screen += read_terminal_until(master, r'(?!)', client, timeout=120)  # to its end
        assert client.wait(timeout=120) == 0
    states = re.findall(r'\r\S+ (queued|busy) [0-9]+s', screen)
    assert states and states[0] == 'queued', screen
    assert 'busy' in states, screen
    assert 'queued' not in states[states.index('busy'):], screen
