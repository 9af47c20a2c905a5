"""The task view's previews (www/js/preview.js) and a print's printer card
(www/js/printer.js) in a real headless Chromium, against a real ``rrcloud
serve``: the real openscad service renders a model (STL, OFF, PNG), a
``copy`` service hands back a G-code file as a task's result, and the
modules, imported from the server's ``/ui/js/`` in its own page, show
them.  What is asserted is what a user sees: pixels of the model's colour
on the canvas, a picture that changes when it is dragged, zoomed or cut at
another layer, an image of the rendered size, the printer's values as text.

Pixels are read back in the page (a 2D canvas copy of the WebGL canvas,
which the previews keep readable with preserveDrawingBuffer) and counted
here.  Screenshots go to build/screenshots/preview-*.png.
"""

import base64
import time

import pytest

from browser import screenshot, severe_console
from helpers import DATA, submit, wait_done

from rrc.events import ProgressEvents, with_live_progress
from rrc.printers import PRINTER_STATE_FIELDS
from rrc.store import Store

CONFIG = 'serverName = preview-test\nmaxTasks = 2\n'
# Hands its input back as its result: a G-code file or an image of the test's
# own becomes a finished task's result, with the extension the client asks.
COPY_SERVICE = """\
path = /usr/bin:/bin
cmd = cp
inputExts = gcode, stl, jpg
fileOut = $id.gcode
outputExts = gcode, stl, jpg
"""
SERVICES = {'copy': COPY_SERVICE}
BACKGROUND = (0xf2, 0xf3, 0xf5)   # preview.js's BACKGROUND
SCRIPT_TIMEOUT = 60


@pytest.fixture
def server(embedded_server):
    return embedded_server(CONFIG, SERVICES, scope='module')


def finished(server, service, content, filename, **fields):
    """The record of a task of ``service`` on ``content``, once complete."""
    record = wait_done(server, submit(server, service, content, filename, **fields), timeout=120)
    assert record['status'] == 'complete', record
    return record


def open_page(page, server):
    """The server's page, ready to import the modules (its import map maps
    'three' as they import it), with a ``window.previewApi`` like the page's
    api.js (fetch; errors thrown).  The page runs as it does for a user:
    its own fetches and streams go on beside the test's."""
    page.get(server.url)
    page.set_script_timeout(SCRIPT_TIMEOUT)
    assert page.execute_script("return Boolean(document.querySelector('script[type=importmap]'))")
    page.execute_script("""
        const get = async (url, how) => {
          const answer = await fetch(url, {headers: {Accept: '*/*'}});
          if (!answer.ok) throw new Error(`${url}: ${answer.status}`);
          return answer[how]();
        };
        window.previewApi = {fetchBlob: url => get(url, 'blob'), fetchText: url => get(url, 'text')};
        window.stayed = true;  // gone if the page reloads under the test
    """)
    severe_console(page)  # the page's own loading is test_page.py's: from here on, the modules'


def show_preview(page, record, width=640):
    """Run showPreview for ``record`` in a fresh container ``width`` px wide,
    as the task view does; what the container then holds (tag names and
    data-preview markers) and any error."""
    return page.execute_async_script("""
        const [record, width, done] = arguments;
        (async () => {
          const {showPreview} = await import('/ui/js/preview.js');
          const box = document.createElement('div');
          box.id = 'preview-box';
          box.style.width = width + 'px';
          document.body.prepend(box);
          window.disposePreview = await showPreview(box, record, window.previewApi);
          await new Promise(next => requestAnimationFrame(() => requestAnimationFrame(next)));
          done({markers: [...box.querySelectorAll('[data-preview]')].map(e => e.dataset.preview),
                note: (box.querySelector('[data-preview=note]') || {}).textContent || null});
        })().catch(error => done({error: String(error && error.stack || error)}));
    """, record, width)


class Picture:
    """A canvas's pixels, as read back in the page."""

    def __init__(self, width, height, rgba):
        self.width, self.height, self.rgba = width, height, rgba
        assert len(rgba) == width * height * 4

    def pixels(self):
        data = self.rgba
        return ((data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 4))

    def count(self, test):
        return sum(1 for pixel in self.pixels() if test(pixel))

    def warm(self):
        """Pixels of the model's orange (or the G-code's top layer red): red well above blue."""
        return self.count(lambda p: p[0] > p[2] + 40)

    def not_background(self, background=BACKGROUND):
        return self.count(lambda p: max(abs(a - b) for a, b in zip(p, background)) > 24)

    def size(self):
        return self.width * self.height

    def differs(self, other):
        """True when the two pictures differ (a failure names them, not a megabyte of bytes)."""
        return self.rgba != other.rgba

    def __repr__(self):
        return f'<picture {self.width}x{self.height}, {self.warm()} warm pixels>'


def picture(page, selector):
    """The pixels of the canvas ``selector`` as the user sees them now."""
    shot = page.execute_async_script("""
        const [selector, done] = arguments;
        requestAnimationFrame(() => {
          const canvas = document.querySelector(selector);
          const copy = document.createElement('canvas');
          copy.width = canvas.width;
          copy.height = canvas.height;
          const g = copy.getContext('2d');
          g.drawImage(canvas, 0, 0);
          const data = g.getImageData(0, 0, copy.width, copy.height).data;
          let text = '';
          for (let i = 0; i < data.length; i += 0x8000) text += String.fromCharCode(...data.subarray(i, i + 0x8000));
          done({width: copy.width, height: copy.height, rgba: btoa(text)});
        });
    """, selector)
    return Picture(shot['width'], shot['height'], base64.b64decode(shot['rgba']))


def wait_for_change(page, selector, before, timeout=5):
    """The canvas's picture once it differs from ``before`` (the view redraws on the next frame)."""
    deadline = time.monotonic() + timeout
    while True:
        now = picture(page, selector)
        if now.rgba != before.rgba or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def dispose(page):
    page.execute_script('window.disposePreview()')


def no_errors(page):
    assert page.execute_script('return window.stayed === true'), 'the page reloaded under the test'
    # the page itself kept working beside the test (its fetches were never cut off)
    assert page.execute_script("return document.getElementById('page-error').hidden") is True
    assert severe_console(page) == []


###############################################################################
# Models: STL (ASCII and binary) and OFF in a three.js view
###############################################################################

def test_an_stl_model_shows_in_a_view_that_turns_and_zooms(page, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.keys import Keys
    record = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad')
    assert record['out'].endswith('.stl'), record
    open_page(page, server)

    shown = show_preview(page, record)
    assert shown == {'markers': ['3d'], 'note': None}, shown
    canvas = '#preview-box canvas[data-preview="3d"]'
    first = picture(page, canvas)
    # drawn at the size it shows: the container's width, 4:3 (or less tall in a short window)
    shown_height = page.execute_script(f"return document.querySelector('{canvas}').clientHeight")
    assert (first.width, first.height) == (640, shown_height) and 300 < shown_height <= 480
    # the cube fills a good part of the view, framed whole (no model pixel on the border)
    assert first.warm() > first.size() * 0.08, first.warm()
    assert first.warm() < first.size() * 0.6, first.warm()
    screenshot(page, 'preview-stl')

    element = page.find_element('css selector', canvas)
    for _ in range(3):  # three turns of the wheel, toward the screen
        ActionChains(page).scroll_from_origin(ScrollOrigin.from_element(element), 0, -120).perform()
    zoomed = wait_for_change(page, canvas, first)
    assert zoomed.warm() > first.warm() * 1.15, (first.warm(), zoomed.warm())  # nearer: larger

    ActionChains(page).click_and_hold(element).move_by_offset(150, 40).release().perform()
    turned = wait_for_change(page, canvas, zoomed)
    assert turned.differs(zoomed)
    assert turned.warm() > turned.size() * 0.05  # still the cube, seen from elsewhere
    screenshot(page, 'preview-stl-turned')

    element.send_keys(Keys.SHIFT + Keys.ARROW_LEFT)  # the keyboard's way to turn it
    keyed = wait_for_change(page, canvas, turned)
    assert keyed.differs(turned)
    turned = keyed

    page.execute_script("document.getElementById('preview-box').style.width = '400px'")  # a phone's width
    narrow = wait_for_change(page, canvas, turned)
    assert (narrow.width, narrow.height) == (400, 300)  # drawn again at the new size, still 4:3
    assert narrow.warm() > narrow.size() * 0.05
    no_errors(page)


def test_a_binary_stl_and_an_off_model_show_too(page, server):
    ascii_stl = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad')
    off = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad', outExt='off')
    assert off['out'].endswith('.off'), off
    binary = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad',
                      arg0='--export-format=binstl')
    assert binary['out'].endswith('.stl'), binary
    open_page(page, server)
    stl_data = page.execute_async_script(
        'const [url, done] = arguments; fetch(url).then(a => a.arrayBuffer()).then(b => done(b.byteLength))',
        binary['out'])
    assert stl_data == 84 + 12 * 50  # a binary STL of the cube's 12 triangles: what the view is given

    pictures = {}
    for name, record in (('ascii', ascii_stl), ('binary', binary), ('off', off)):
        assert show_preview(page, record) == {'markers': ['3d'], 'note': None}, name
        pictures[name] = picture(page, '#preview-box canvas[data-preview="3d"]')
        screenshot(page, f'preview-{name}')
        dispose(page)
        assert page.find_elements('css selector', '#preview-box canvas') == []
    # the same cube from each file: the same view, near enough (OFF's faces
    # are the same, cut into triangles by the view rather than by OpenSCAD)
    for name, shot in pictures.items():
        assert shot.warm() > shot.size() * 0.08, name
        assert abs(shot.warm() - pictures['ascii'].warm()) < pictures['ascii'].warm() * 0.05, name
    no_errors(page)


def test_disposing_a_view_frees_its_webgl_context_and_a_bad_model_gets_a_note(page, server):
    record = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad')
    empty = finished(server, 'copy', 'solid nothing\n' + ' ' * 80 + '\nendsolid nothing\n', 'empty.stl', outExt='stl')
    cut = finished(server, 'copy', 'not an STL', 'cut.stl', outExt='stl')
    open_page(page, server)
    show_preview(page, record)
    lost = page.execute_script("""
        const canvas = document.querySelector('#preview-box canvas[data-preview="3d"]');
        const gl = canvas.getContext('webgl2');
        const before = gl.isContextLost();
        window.disposePreview();
        return [before, gl.isContextLost(), document.contains(canvas)];
    """)
    assert lost == [False, True, False]

    for record, why in ((empty, 'the model has no faces'), (cut, 'not a readable STL file')):
        shown = show_preview(page, record)
        assert shown == {'markers': ['note'], 'note': f'No preview of {record["out"].split("/")[-1]}: {why}'}
        assert page.find_elements('css selector', '#preview-box canvas') == []
        dispose(page)


###############################################################################
# G-code with a layer slider
###############################################################################

def test_gcode_shows_with_a_layer_slider_that_cuts_the_print(page, server):
    from selenium.webdriver.common.keys import Keys
    gcode = (DATA / 'small.gcode').read_text()
    layers = gcode.count(';LAYER:')
    record = finished(server, 'copy', gcode, 'small.gcode', outExt='gcode')
    assert record['out'].endswith('.gcode'), record
    open_page(page, server)

    shown = show_preview(page, record)
    assert shown == {'markers': ['gcode', 'layer-text', 'layer'], 'note': None}, shown
    canvas = '#preview-box canvas[data-preview="gcode"]'
    whole = picture(page, canvas)
    assert whole.warm() > whole.size() * 0.03, whole.warm()
    slider = page.find_element('css selector', '#preview-box input[type=range][data-preview="layer"]')
    assert (slider.get_attribute('min'), slider.get_attribute('max'), slider.get_attribute('value')) == (
        '1', str(layers), str(layers))
    caption = page.find_element('css selector', '#preview-box [data-preview="layer-text"]')
    assert caption.text == f'layer {layers} of {layers}'
    screenshot(page, 'preview-gcode')

    slider.send_keys(Keys.HOME)  # the keyboard's way to the first layer
    assert caption.text == f'layer 1 of {layers}'
    first_layer = wait_for_change(page, canvas, whole)
    assert first_layer.differs(whole)
    # one layer 0.3 mm high seen from above and in front: less of the print's side shows
    assert 0 < first_layer.warm() < whole.warm(), (first_layer.warm(), whole.warm())
    screenshot(page, 'preview-gcode-layer-1')

    slider.send_keys(Keys.END)
    assert caption.text == f'layer {layers} of {layers}'
    assert not wait_for_change(page, canvas, first_layer).differs(whole)  # the whole print again
    no_errors(page)


###############################################################################
# Images
###############################################################################

def test_a_rendered_png_shows_as_an_image_from_a_blob_url(page, server):
    record = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad', outExt='png',
                      arg0='--imgsize=320,240')
    assert record['out'].endswith('.png'), record
    open_page(page, server)

    assert show_preview(page, record) == {'markers': ['image'], 'note': None}
    image = page.find_element('css selector', '#preview-box img[data-preview="image"]')
    size = page.execute_script('return [arguments[0].naturalWidth, arguments[0].naturalHeight, arguments[0].complete]',
                               image)
    assert size == [320, 240, True]
    source = image.get_attribute('src')
    assert source.startswith('blob:')  # fetched with the page's headers, not by the <img>
    screenshot(page, 'preview-png')

    dispose(page)
    assert page.find_elements('css selector', '#preview-box img') == []
    revoked = page.execute_async_script("""
        const [url, done] = arguments;
        fetch(url).then(() => done('still there'), () => done('revoked'));
    """, source)
    assert revoked == 'revoked'
    # the browser says so in the console (the one error this test expects)
    assert [message.split(' ')[0] for message in severe_console(page)] == [source]
    no_errors(page)


def test_a_view_left_while_its_result_loads_is_freed(page, server):
    """A task view that empties its container on leaving, before the
    result has come, never gets the function that frees the view made
    after: it is freed at once, not left holding a WebGL context."""
    record = finished(server, 'openscad', (DATA / 'cube.scad').read_text(), 'cube.scad')
    open_page(page, server)
    left = page.execute_async_script("""
        const [record, done] = arguments;
        (async () => {
          const {showPreview} = await import('/ui/js/preview.js');
          const box = document.createElement('div');
          document.body.prepend(box);
          const made = [];
          const original = HTMLCanvasElement.prototype.getContext;
          HTMLCanvasElement.prototype.getContext = function (...how) {
            // the views' WebGL canvases (the page's own charts draw in 2D meanwhile)
            if (String(how[0]).startsWith('webgl')) made.push(this);
            return original.apply(this, how);
          };
          const slow = {fetchBlob: async url => {
            const blob = await window.previewApi.fetchBlob(url);
            box.replaceChildren();  // the user left meanwhile
            return blob;
          }};
          try {
            await showPreview(box, record, slow);  // its function never called: the view is gone
          } finally {
            HTMLCanvasElement.prototype.getContext = original;
          }
          done(made.map(canvas => [canvas.isConnected, canvas.getContext('webgl2').isContextLost()]));
        })().catch(error => done(String(error)));
    """, record)
    assert left == [[False, True]]  # the one view made: out of the page, its context given back
    no_errors(page)


def test_a_jpeg_shows_as_an_image(page, server):
    open_page(page, server)
    jpeg = page.execute_async_script("""
        const done = arguments[0];
        const canvas = document.createElement('canvas');
        canvas.width = 48;
        canvas.height = 36;
        const g = canvas.getContext('2d');
        g.fillStyle = '#2767c4';
        g.fillRect(0, 0, 48, 36);
        canvas.toBlob(blob => blob.arrayBuffer().then(b => done([...new Uint8Array(b)])), 'image/jpeg');
    """)
    record = finished(server, 'copy', bytes(jpeg), 'photo.jpg', outExt='jpg')
    assert record['out'].endswith('.jpg'), record
    assert show_preview(page, record) == {'markers': ['image'], 'note': None}
    image = page.find_element('css selector', '#preview-box img[data-preview="image"]')
    assert page.execute_script('return [arguments[0].naturalWidth, arguments[0].naturalHeight]', image) == [48, 36]
    dispose(page)
    no_errors(page)


def test_a_result_with_no_preview_gets_nothing(page, server):
    open_page(page, server)
    for record in ({'status': 'complete', 'out': 'tasks/out/X.txt'}, {'status': 'complete'},
                   {'status': 'busy', 'out': 'tasks/out/X.stl'}):
        assert show_preview(page, record) == {'markers': [], 'note': None}, record
        assert page.execute_script("return document.getElementById('preview-box').childElementCount") == 0
        dispose(page)


###############################################################################
# The printer card
###############################################################################

TASK = '1796670000-00001-000001'


def heating(step):
    """The printer's state a print's sender reports at ``step`` (rrc/printing.py
    printer_state): the hotend heating to 210 and the bed to 60, a layer
    every two reports."""
    return {'hotend': min(210.0, 25.0 + step * 30), 'hotendTarget': 210.0,
            'bed': min(60.0, 22.0 + step * 8), 'bedTarget': 60.0,
            'bytes': 4096 * step, 'layer': step // 2, 'z': round(0.3 * (step // 2), 2), 'paused': 0}


def print_reports(tmp_path, steps):
    """What a print reports, 30 s apart, through rrcloud's own ProgressEvents
    (a slicer's estimate of 600 s): each progress event's data, as the
    task's event stream carries it, and the busy print's record after the
    last, as ``info`` and the task list show it."""
    store = Store(str(tmp_path))
    now = [100.0]
    events = ProgressEvents(store, TASK, clock=lambda: now[0], print_seconds=600)
    reports = []
    for step in range(steps):
        now[0] += 30
        events.report(40 * step, 400, printer=heating(step))
        reports.append(events.data(40 * step, 400))
    events.flush(force=True)
    return reports, with_live_progress(store, {'id': TASK, 'status': 'busy', 'sender': 'yes'})


def card_values(page):
    return page.execute_script("""
        const card = document.querySelector('#card-box section.printer-card[data-printer-card]');
        return Object.fromEntries([...card.querySelectorAll('dd[data-field]')].map(e => [e.dataset.field, e.textContent]));
    """)


def test_the_printer_card_shows_the_values_and_charts_the_temperatures(page, server, tmp_path):
    reports, record = print_reports(tmp_path, 9)
    assert set(reports[-1]['printer']) == set(PRINTER_STATE_FIELDS)  # every value a sender reports
    open_page(page, server)
    error = page.execute_async_script("""
        const [reports, done] = arguments;
        import('/ui/js/printer.js').then(({printerCard}) => {
          const box = document.createElement('div');
          box.id = 'card-box';
          box.style.width = '520px';
          document.body.prepend(box);
          window.card = printerCard(box);
          for (const data of reports) window.card.update(data);
          requestAnimationFrame(() => done(null));
        }).catch(error => done(String(error)));
    """, reports)
    assert error is None
    expected = {'hotend': '210.0 °C → 210 °C', 'bed': '60.0 °C → 60 °C', 'layer': '4', 'height': '1.20 mm',
                'elapsed': '4 min 30 s', 'left': '2 min 00 s', 'bytes': '32.0 kB (line 320 of 400)'}
    assert (reports[-1]['elapsed'], reports[-1]['eta']) == (270, 120)  # 9 reports 30 s apart; 600 s x 80/400
    assert card_values(page) == expected
    chart = picture(page, '#card-box canvas[data-printer-chart]')
    hotend_red = chart.count(lambda p: p[0] > 160 and p[1] < 110 and p[2] < 110)
    bed_blue = chart.count(lambda p: p[2] > 150 and p[0] < 110)
    assert hotend_red > 200 and bed_blue > 200, (hotend_red, bed_blue)
    screenshot(page, 'preview-printer-card')

    # the same print as its record shows it (a task view's first look, before any event)
    page.execute_script('window.card.dispose()')
    page.execute_script("""
        import('/ui/js/printer.js').then(({printerCard}) => {
          window.card = printerCard(document.getElementById('card-box'));
          window.card.update(arguments[0]);
        });
    """, record)
    assert record['bytesSent'] == '32768' and record['etaSeconds'] == '120', record
    deadline = time.monotonic() + 5
    while not page.find_elements('css selector', '#card-box section') and time.monotonic() < deadline:
        time.sleep(0.05)  # the module's import resolves on its own
    assert card_values(page) == expected
    page.execute_script('window.card.dispose()')
    assert page.find_elements('css selector', '#card-box section') == []
    no_errors(page)
