"""Two of issue 23's flows through the page, end to end, in a real headless
Chromium against a real ``rrcloud serve`` (one of each for the module):

- a model dropped on the page is rendered by the real openscad service, its
  task completes in the list, and its view's 3D preview draws the model (a
  pipe openscad then slic3r from the page shows its G-code as layers);
- a print on a named printer (tests/printer_sim.PrinterSim behind a pty) is
  paused, resumed and cancelled with the task view's buttons, and the
  simulated printer receives that printer's own pause and cancel G-code and
  no line of the file while paused.

What is asserted is what a user sees (rows, the view's state, pixels of the
model's colour on its canvas) and what the printer received.  No timings:
the simulator holds a line (``hold_at_line``) until the test has pressed
what it tests.  Screenshots go to build/screenshots/flow-*.png.
"""

import pytest

from browser import screenshot, severe_console
from helpers import DATA, PTY_PRINTRUN_CONF, after_line, file_lines, plain_session, submit, wait_for, write_printer
from printer_sim import PrinterSim
from test_page import choose, css, drop_file, open_page, press, row_state, shown_text, started_task_id, view_state, wait
from test_page_preview import picture

from rrc.printing import gcode_lines
from rrc.store import Store

CONFIG = 'serverName = page-test\nmaxTasks = 2\n'
SERVICES = {'printrun': PTY_PRINTRUN_CONF}
# A render, a slice, a print on the simulator: never long, but a loaded machine is given time.
RENDERED_WITHIN = 120

SMALL = DATA / 'small.gcode'
HOLD = 100            # the file's line the simulator holds while the test presses a button
HOLD_AGAIN = 140      # ... and the one it holds after the resume, for the cancel
PRINTER = 'sim'
OWN_PAUSE = ['M400', 'G1 Z20 F900']
OWN_RESUME = ['G1 Z5 F900']
OWN_CANCEL = ['M140 S0', 'M104 T0 S0', 'M18']


@pytest.fixture
def server(embedded_server):
    return embedded_server(CONFIG, SERVICES, scope='module')


def open_task(driver, task_id):
    """Open a task from its row in the list, as a user would: its link."""
    link = wait(driver, lambda d: css(d, f'li.task[data-id="{task_id}"] a.task-name'), 'the task\'s link')[0]
    link.click()
    wait(driver, lambda d: d.execute_script('return location.hash') == f'#task={task_id}', 'the view\'s address')
    wait(driver, lambda d: shown_text(d, '#task-state'), 'the task view')


def shown_record(driver):
    """The task view's record table as {field: text}."""
    return driver.execute_script("""
        return Object.fromEntries([...document.querySelectorAll('#task-record tr')]
          .map((row) => [row.querySelector('th').textContent, row.querySelector('td').textContent]));""")


###############################################################################
# A dropped model, rendered, in the 3D view; a pipe's G-code in layers
###############################################################################

def start_and_wait_complete(page, server, ext):
    """Press Start: the new task (or job) completes in the list with a result
    ending in ``ext``; its id."""
    page.find_element('id', 'start').click()
    task_id = started_task_id(page)
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the new task complete in the list',
         timeout=RENDERED_WITHIN)
    assert server.info(task_id)['out'].endswith(ext)
    return task_id


def test_a_model_dropped_on_the_page_renders_and_its_3d_view_draws_it(page, server):
    open_page(page, server)
    drop_file(page, 'cube.scad', (DATA / 'cube.scad').read_text())
    assert 'cube.scad' in shown_text(page, '#files')
    # the page picks the service a .scad file asks for
    assert page.execute_script("return document.getElementById('submit-service').value") == 'openscad'
    task_id = start_and_wait_complete(page, server, '.stl')

    open_task(page, task_id)
    assert view_state(page) == 'complete'
    canvas = '#task-preview canvas[data-preview="3d"]'
    wait(page, lambda d: css(d, canvas), 'the 3D view of the result')
    # drawn: the cube's orange fills a good part of it, over the background
    shown = wait(page, lambda d: (lambda p: p if p.warm() > p.size() * 0.05 else None)(picture(d, canvas)),
                 'the model drawn in the 3D view')
    assert shown.not_background() > shown.size() * 0.05, shown
    assert shown.warm() < shown.size() * 0.6, shown  # the whole cube, framed: not a view filled with it
    screenshot(page, 'flow-dropped-model')
    assert severe_console(page) == []


def test_a_pipe_from_the_page_shows_its_gcode_as_layers(page, server):
    open_page(page, server)
    page.find_element('id', 'file-input').send_keys(str(DATA / 'cube.scad'))
    choose(page, '#submit-mode', 'pipe')
    steps = css(page, '#pipe-steps .step-service')
    assert [step.get_attribute('value') for step in steps] == ['openscad', 'slic3r']
    job_id = start_and_wait_complete(page, server, '.gcode')

    open_task(page, job_id)
    canvas = '#task-preview canvas[data-preview="gcode"]'
    wait(page, lambda d: css(d, canvas), 'the G-code view of the job\'s result')
    slider = wait(page, lambda d: css(d, '#task-preview input[type=range][data-preview="layer"]'),
                  'the layer slider')[0]
    layers = int(slider.get_attribute('max'))
    assert layers > 1 and slider.get_attribute('value') == str(layers)
    assert shown_text(page, '#task-preview [data-preview="layer-text"]') == f'layer {layers} of {layers}'
    whole = wait(page, lambda d: (lambda p: p if p.warm() > 200 else None)(picture(d, canvas)),
                 'the print drawn in the G-code view')
    from selenium.webdriver.common.keys import Keys
    slider.send_keys(Keys.HOME)
    assert shown_text(page, '#task-preview [data-preview="layer-text"]') == f'layer 1 of {layers}'
    wait(page, lambda d: picture(d, canvas).rgba != whole.rgba, 'the view cut at the first layer')
    screenshot(page, 'flow-pipe-gcode')
    assert severe_console(page) == []


def test_a_jobs_view_logs_no_console_error(page, server):
    """A job has no log file of its own: its view links its steps' logs and fetches none."""
    answer = plain_session().post(f'{server.url}/', data={'service': 'pipe', 'step1': 'echo', 'step2': 'echo',
                                                         'format': 'json'},
                                 files={'step1.fileIn0': ('piped.txt', 'piped\n')}, timeout=30)
    assert answer.status_code == 200, answer.text
    job_id = answer.json()['id']
    assert server.wait_done(job_id)['status'] == 'complete'
    open_page(page, server)
    open_task(page, job_id)
    wait(page, lambda d: view_state(d) == 'complete', 'the job\'s view')
    log = wait(page, lambda d: shown_text(d, '#task-log'), 'the view\'s log box filled')
    assert log.startswith("A job's log is its steps'"), log
    assert len(css(page, '#task-log a[href^="#task="]')) == 2
    assert severe_console(page) == []


###############################################################################
# A print's pause, resume and cancel from the task view's buttons
###############################################################################

def card_text(driver):
    return shown_text(driver, '#task-printer [data-printer-card]')


def test_a_prints_pause_and_cancel_from_the_page_reach_the_simulated_printer(page, server):
    expected = gcode_lines(SMALL)
    with PrinterSim(hold_at_line=HOLD) as sim:
        write_printer(server.root, PRINTER, f'port = {sim.port}\n' + ''.join(
            f'{key} = {code}\n' for key, codes in (('pause', OWN_PAUSE), ('resume', OWN_RESUME),
                                                    ('cancel', OWN_CANCEL)) for code in codes))
        task_id = submit(server, 'printrun', SMALL.read_bytes(), 'small.gcode', nativeArgs=PRINTER)
        assert sim.holding.wait(60), 'the print never reached the held line'
        wait_for(lambda: server.info(task_id).get('sender') == 'yes', 'the sender running')
        assert server.info(task_id)['printer'] == PRINTER

        page.get(f'{server.url}#task={task_id}')
        wait(page, lambda d: view_state(d) == 'running', 'the print running in its view')
        wait(page, lambda d: card_text(d), 'the printer card while printing')
        screenshot(page, 'flow-print-running')

        press(page, 'pause')
        wait(page, lambda d: view_state(d) == 'suspended', 'the print paused (suspended) in its view')
        assert server.info(task_id).get('suspended') == 'yes'
        wait_for(lambda: 'rrcloud print: asked to pause' in log_of(server, task_id), 'the sender told to pause')
        sim.release()
        # the printer's own pause G-code, then temperature polls and no line of the file
        assert sim.wait_for(lambda s: s.received[-len(OWN_PAUSE) - 3:] == OWN_PAUSE + ['M105'] * 3, 60), \
            sim.received[-10:]
        assert len(file_lines(sim)) == HOLD
        assert after_line(sim, HOLD)[:len(OWN_PAUSE)] == OWN_PAUSE
        wait(page, lambda d: '(paused)' in card_text(d), 'the printer card saying paused')
        screenshot(page, 'flow-print-paused')

        sim.hold_at_line = HOLD_AGAIN  # the next hold: a later line of the same print
        sim.hold_again()
        press(page, 'resume')
        wait(page, lambda d: view_state(d) == 'running', 'the print running again')
        assert sim.holding.wait(60), 'the print never went on to the next held line'
        assert after_line(sim, HOLD)[-len(OWN_RESUME) - 2:-2] == OWN_RESUME  # then the file's modes

        press(page, 'cancel')
        wait_for(lambda: 'rrcloud print: asked to cancel' in log_of(server, task_id), 'the sender told to cancel')
        sim.release()
        wait(page, lambda d: view_state(d) == 'failed', 'the print failed (cancelled) in its view', timeout=60)
        wait(page, lambda d: shown_record(d).get('error') == 'cancelled', 'the cancel\'s reason in the view')
        screenshot(page, 'flow-print-cancelled')
        record = server.info(task_id)

    assert (record['status'], record['error']) == ('failed', 'cancelled'), record
    assert file_lines(sim) == expected[:HOLD_AGAIN]  # nothing of the file after the cancel
    assert after_line(sim, HOLD_AGAIN) == OWN_CANCEL
    assert severe_console(page) == []


def log_of(server, task_id):
    with open(Store(str(server.root)).log_path(task_id), encoding='utf-8', errors='replace') as log:
        return log.read()
