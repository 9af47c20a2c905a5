"""The page at ``/`` in a real browser: headless Chromium through Selenium
(tests/browser.py; the ``browser`` and ``page`` fixtures in conftest.py),
against a real ``rrcloud serve`` on loopback.  One browser and one server
for the module (and one with a token); screenshots in build/screenshots/.

What a user sees is asserted: the list's rows, the task view's state and
log, what the server's records say after a button was pressed."""

import pytest

from browser import CHROMEDRIVER, PHONE, requested_urls, screenshot, set_size, severe_console, start_browser
from helpers import DATA, SH_SERVICE, gates_folder, plain_session, submit, write_printer

from rrc import VERSION_STRING

CONFIG = 'serverName = page-test\nmaxTasks = 4\n'
SERVICES = {'job': SH_SERVICE}
TOKEN = 'page-test-token-5d1c'
TOKEN_CONFIG = f'serverName = token-test\ntoken = {TOKEN}\n'
HOSTILE_NAME = '<img src=x onerror=alert(1)>.sh'
HOSTILE_TEXT = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">'
# How long the page may take to show what the server did (the tasks themselves are short).
SHOWN_WITHIN = 30
# A task that writes a line every 0.2 s for a while (the buttons' test).
TICKING = 'for i in $(seq 1 {count}); do echo "tick $i"; sleep 0.2; done\necho done > "$1"\n'
# A task of the ``gated`` service that ticks until the test creates its gate
# (a file in the module's gates folder, which the service's sandbox reads):
# it runs for as long as the test needs, never racing a sleep.
GATED_TICKING = ('i=0\nwhile [ ! -e {gate} ]; do i=$((i+1)); echo "tick $i"; sleep 0.2; done\n'
                 'echo "gate open"\necho done > "$1"\n')


@pytest.fixture(scope='module')
def gates():
    """The folder of the gated tasks' gates (one file each, made by the test)."""
    with gates_folder() as folder:
        yield folder


@pytest.fixture
def server(embedded_server, gates):
    return embedded_server(CONFIG, {**SERVICES, 'gated': SH_SERVICE + f'readPaths = {gates}\n'}, scope='module')


def gated_task(server, gates, name):
    """A ``gated`` task that ticks until ``open_gate(gates, name)``; its id."""
    return submit(server, 'gated', GATED_TICKING.format(gate=gates / name), f'{name}.sh')


def open_gate(gates, name):
    """Let the gated task ``name`` end."""
    (gates / name).touch()


@pytest.fixture
def token_server(embedded_server):
    """A server that wants a token: the module's tests never start a task on
    it, so its store stays empty."""
    return embedded_server(TOKEN_CONFIG, SERVICES, scope='module')


def wait(driver, condition, what, timeout=SHOWN_WITHIN):
    """Until ``condition(driver)`` is true (its value); fail naming ``what``."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f'{what}: not shown within {timeout} s') from None


def css(driver, selector):
    """The elements matching a CSS selector (none: an empty list)."""
    return driver.find_elements('css selector', selector)


# Read in one script, so a row the live list redraws meanwhile is never half read.
SHOWN_TEXTS = """
    return [...document.querySelectorAll(arguments[0])]
      .filter((node) => node.getClientRects().length > 0).map((node) => node.innerText);"""


def shown_texts(driver, selector):
    """The text a user sees in each shown element matching ``selector``."""
    return driver.execute_script(SHOWN_TEXTS, selector)


def shown_text(driver, selector):
    """The text a user sees in the first shown element matching ``selector`` ('' when none is)."""
    texts = shown_texts(driver, selector)
    return texts[0] if texts else ''


def open_page(driver, server, name='page-test'):
    """Load the page and wait until it shows the server and the list's first page."""
    driver.get(server.url)
    wait(driver, lambda d: shown_text(d, 'h1') == f'rrcloud @ {name}', 'the server\'s name in the title')
    wait(driver, lambda d: css(d, '#list[data-loaded]'), 'the task list')


def row(driver, task_id):
    """The text of the list's row of a task ('' while it has none)."""
    return shown_text(driver, f'li.task[data-id="{task_id}"]')


def row_state(driver, task_id):
    """The state word a task's row shows ('' while it has no row)."""
    return shown_text(driver, f'li.task[data-id="{task_id}"] .badge')


def view_state(driver):
    """The state the open task view shows."""
    return shown_text(driver, '#task-state')


def drop_file(driver, name, text):
    """Drop a file on the page as a user dragging it from their desktop would
    (a DataTransfer holding a File, in the drag events a browser fires)."""
    return drop_files(driver, [(name, text)])


DROP = """
    const [files, selector] = arguments;
    const target = document.querySelector(selector);
    const data = new DataTransfer();
    for (const [name, text] of files) data.items.add(new File([text], name, {type: 'text/plain'}));
    let taken = true;
    for (const type of ['dragenter', 'dragover', 'drop']) {
      taken = target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
    }
    return !taken;"""


def drop_files(driver, files, target='body'):
    """Drop files ([(name, text)], in that order) on the element ``target``
    (a CSS selector); True when the page took the drop (the browser's own,
    opening the file, was prevented)."""
    return driver.execute_script(DROP, [list(file) for file in files], target)


def choose(driver, selector, value):
    """Pick an option of a select by its value."""
    from selenium.webdriver.support.ui import Select
    Select(css(driver, selector)[0]).select_by_value(value)


def started_task_id(driver):
    """The id the submit form says it started (its message: "Started ID.")."""
    text = wait(driver, lambda d: shown_text(d, '#submit-message'), 'the submit form\'s answer')
    assert text.startswith('Started '), text
    return text[len('Started '):].rstrip('.')


def no_alert(driver):
    """No alert() opened (Selenium raises on any other command while one is open)."""
    from selenium.common.exceptions import NoAlertPresentException
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def has_no_horizontal_scroll(driver):
    """True when the page is no wider than the window."""
    inner = driver.execute_script('return window.innerWidth')
    return driver.execute_script('return document.scrollingElement.scrollWidth') <= inner


def test_page_loads_with_no_console_errors(page, server):
    open_page(page, server)
    assert page.title == 'rrcloud @ page-test'
    assert VERSION_STRING in shown_text(page, 'footer')
    assert shown_text(page, '#server-facts dd[data-fact="name"]') == 'page-test'
    assert 'job' in shown_text(page, '#server-facts dd[data-fact="services"]')
    assert '4 at once' in shown_text(page, '#server-facts dd[data-fact="tasks"]')
    screenshot(page, 'page')
    assert severe_console(page) == []


def test_the_page_itself_holds_no_task(page, server):
    """The HTML the server sends is a shell: a task's id is not in it (the
    page fetches the records), so it needs no token."""
    task_id = submit(server, 'job', 'echo shell > "$1"\n', 'shell.sh')
    server.wait_done(task_id)
    html = plain_session().get(server.url, headers={'User-Agent': 'Mozilla/5.0 Chrome'}, timeout=10).text
    assert 'type="importmap"' in html
    assert task_id not in html and 'shell.sh' not in html
    open_page(page, server)
    wait(page, lambda d: row(d, task_id), 'the task fetched into the list')


def test_rows_show_sizes_that_read_well(page, server):
    small = submit(server, 'echo', 'x' * 45, 'small.txt')
    big = submit(server, 'echo', 'y' * 1_900_000, 'big.txt')
    server.wait_done(small)
    server.wait_done(big)
    open_page(page, server)
    assert 'in 45 B' in row(page, small) and 'out 45 B' in row(page, small)
    assert 'in 1.8 MB' in row(page, big) and 'out 1.8 MB' in row(page, big)


def test_hostile_names_show_as_text(page, server):
    """A task whose input is named like markup and whose record's error
    reads like a script (written into the store: no tool writes one so)
    shows as text, in the list and in its own view: no element comes from
    it, no script runs, no alert."""
    task_id = submit(server, 'job', 'exit 3\n', HOSTILE_NAME)
    assert server.wait_done(task_id)['status'] == 'failed'
    # Atomically, as the store writes: a page still open (the last test's) reads it in its changes stream.
    rewrite_record(server, task_id, error=HOSTILE_TEXT)
    open_page(page, server)
    shown = wait(page, lambda d: row(d, task_id), 'the hostile task\'s row')
    assert HOSTILE_TEXT in shown
    assert HOSTILE_NAME in shown
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: HOSTILE_TEXT in shown_text(d, '#task-record'), 'the record in the task view')
    assert HOSTILE_NAME == shown_text(page, '#task-title')
    app = page.find_element('id', 'app')
    assert app.find_elements('tag name', 'script') == []
    assert app.find_elements('tag name', 'img') == []
    assert css(page, 'img[src="x"]') == []
    assert page.execute_script('return window.injected === undefined')
    assert no_alert(page)
    assert severe_console(page) == []


def test_phone_width_has_no_horizontal_scroll(page, server):
    task_id = submit(server, 'job', 'echo a-long-line-of-output-without-any-break-in-it-at-all > "$1"\n',
                     'a-rather-long-model-name-that-must-wrap-on-a-phone.sh')
    server.wait_done(task_id)
    set_size(page, PHONE)
    open_page(page, server)
    assert page.execute_script('return window.innerWidth') <= PHONE[0]
    wait(page, lambda d: row(d, task_id), 'the task in the list')
    screenshot(page, 'page-phone')
    assert has_no_horizontal_scroll(page)
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: view_state(d) == 'complete', 'the task view')
    screenshot(page, 'task-phone')
    assert has_no_horizontal_scroll(page)


def block_urls(driver, *patterns):
    """Make the browser fail its requests to URLs matching these patterns
    (``*`` a wildcard; none: block nothing again), as a dead network would."""
    driver.execute_cdp_cmd('Network.enable', {})
    driver.execute_cdp_cmd('Network.setBlockedURLs', {'urls': list(patterns)})


def not_blocked(messages):
    """The console's messages but the requests block_urls failed."""
    return [message for message in messages if 'ERR_BLOCKED_BY_CLIENT' not in message]


def test_a_dropped_file_starts_a_task_that_shows_at_once_and_completes(page, server):
    """The new task's row is there as soon as the submit form answered: the
    changes stream is blocked meanwhile, so the row is the submission's own."""
    block_urls(page, '*service=changes*')
    try:
        open_page(page, server)
        drop_file(page, 'dropped.sh', 'echo dropped > "$1"\n')
        assert 'dropped.sh' in shown_text(page, '#files')
        choose(page, '#submit-service', 'job')
        page.find_element('id', 'start').click()
        task_id = started_task_id(page)
        assert 'dropped.sh' in row(page, task_id)  # read at once: no stream could have brought it
    finally:
        block_urls(page)
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the task complete in the list, from the stream')
    assert server.info(task_id)['status'] == 'complete'
    assert not_blocked(severe_console(page)) == []


def test_a_pipe_from_the_page_completes_and_shows_its_steps(page, server):
    """openscad then slic3r, the model picked with the file chooser: the
    job's row shows its steps as they complete."""
    open_page(page, server)
    page.find_element('id', 'file-input').send_keys(str(DATA / 'cube.scad'))
    assert 'cube.scad' in shown_text(page, '#files')
    choose(page, '#submit-mode', 'pipe')
    steps = css(page, '#pipe-steps .step-service')
    assert [step.get_attribute('value') for step in steps] == ['openscad', 'slic3r']
    page.find_element('id', 'start').click()
    job_id = started_task_id(page)
    wait(page, lambda d: row_state(d, job_id) == 'complete', 'the job complete in the list', timeout=90)
    steps = shown_texts(page, f'li.task[data-id="{job_id}"] .steps li')
    assert steps == ['openscad complete', 'slic3r complete']
    page.execute_script('window.scrollTo(0, 0)')
    screenshot(page, 'pipe')
    record = server.info(job_id)
    assert record['status'] == 'complete' and record['out'].endswith('.gcode')
    page.get(f'{server.url}#task={job_id}')
    wait(page, lambda d: view_state(d) == 'complete', 'the job\'s view')
    assert 'openscad complete' in shown_text(page, '#task-steps')
    assert css(page, '#download')


def test_a_print_step_of_a_pipe_names_the_printer_chosen(page, server):
    """The server panel lists the named printers, and a pipe's print step
    offers them; the one chosen is the step's printer (its record says so; the port does not exist here, so
    the print itself fails)."""
    write_printer(server.root, 'mk3', 'port = /dev/ttyACM97\n')
    open_page(page, server)
    printers = wait(page, lambda d: shown_text(d, '#printers'), 'the server panel\'s printers')
    assert 'mk3' in printers and '/dev/ttyACM97' in printers, printers
    page.find_element('id', 'file-input').send_keys(str(DATA / 'small.gcode'))
    choose(page, '#submit-mode', 'pipe')
    for remove in css(page, '#pipe-steps li button')[1:]:
        remove.click()
    first_step = '#pipe-steps li:first-child'
    choose(page, f'{first_step} .step-service', 'printrun')
    wait(page, lambda d: 'mk3' in shown_text(d, f'{first_step} .step-printer'), 'the printers to pick from')
    choose(page, f'{first_step} .step-printer', 'mk3')
    page.find_element('id', 'start').click()
    job_id = started_task_id(page)
    step_id = server.info(job_id)['steps'].split(',')[0]
    assert server.info(step_id)['printer'] == 'mk3'
    wait(page, lambda d: 'printrun' in shown_text(d, f'li.task[data-id="{job_id}"] .steps'), 'the print step')


def plant_ended_tasks(server, count, status):
    """``count`` ended records written straight into the store (as many
    tasks as the list's page holds take no time to make so); their ids."""
    import time
    from rrc.store import Store
    store = Store(str(server.root))
    now = f'{time.time():.5f}'
    record = {'status': status, 'service': 'job', 'client': '127.0.0.1', 'in': '', 'out': '',
              'cmd': 'sh', 'ctime': now, 'etime': now}
    return [store.create_task(lambda task_id: dict(record))['id'] for _ in range(count)]


def test_the_list_pages_with_more_and_filters_by_status(page, embedded_server):
    server = embedded_server('serverName = paging-test\n', SERVICES, scope='module')
    failed = plant_ended_tasks(server, 5, 'failed')
    complete = plant_ended_tasks(server, 55, 'complete')
    open_page(page, server, name='paging-test')
    assert len(shown_texts(page, 'li.task')) == 50  # one page: the newest
    assert not row(page, failed[0])
    page.find_element('id', 'more').click()
    wait(page, lambda d: row(d, failed[0]), 'the oldest task, on the next page')
    assert len(shown_texts(page, 'li.task')) == 60
    assert not shown_texts(page, '#more')
    choose(page, '#filter-status', 'failed')
    wait(page, lambda d: len(shown_texts(d, 'li.task')) == 5, 'the failed tasks alone')
    assert set(shown_texts(page, 'li.task .badge')) == {'failed'}
    assert not row(page, complete[-1])


def test_the_download_button_saves_the_result_under_its_name(page, server, tmp_path):
    """The result is fetched with the page's headers (a token would go so) and
    saved under the name the server gives it."""
    task_id = submit(server, 'job', 'echo saved-bytes > "$1"\n', 'saved.sh')
    record = server.wait_done(task_id)
    answer = plain_session().get(server.url + record['out'], timeout=10)
    name = answer.headers['Content-Disposition'].split('filename="')[1].split('"')[0]
    page.execute_cdp_cmd('Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': str(tmp_path)})
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: css(d, '#download'), 'the download button')[0].click()
    saved = tmp_path / name
    wait(page, lambda d: saved.is_file() and saved.read_bytes() == answer.content, f'{name} saved')
    assert b'saved-bytes' in saved.read_bytes()


def test_the_log_follows_a_running_task(page, server, gates):
    task_id = gated_task(server, gates, 'ticking')
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: 'tick 2\n' in shown_text(d, '#task-log') + '\n', 'the log\'s first lines')
    assert view_state(page) == 'running'
    first = shown_text(page, '#task-log').count('tick')
    wait(page, lambda d: shown_text(d, '#task-log').count('tick') > first + 3, 'more lines, without a reload')
    screenshot(page, 'task-log')
    open_gate(gates, 'ticking')
    wait(page, lambda d: view_state(d) == 'complete', 'the task complete in its view')
    assert 'gate open' in shown_text(page, '#task-log')
    assert severe_console(page) == []


def press(driver, verb):
    """Click the task view's button for a control (suspend, resume, kill ...),
    again if the view redrew its buttons between finding and clicking."""
    from selenium.common.exceptions import StaleElementReferenceException

    def click(d):
        try:
            buttons = [b for b in css(d, f'#task-controls button[data-control="{verb}"]') if b.is_enabled()]
            if buttons:
                buttons[0].click()
            return bool(buttons)
        except StaleElementReferenceException:
            return False
    wait(driver, click, f'the {verb} button')


def test_suspend_resume_and_kill_from_the_buttons(page, server):
    task_id = submit(server, 'job', TICKING.format(count=300), 'long.sh')
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: view_state(d) == 'running', 'the task running')
    # Its tool is running once it writes (before that the server refuses a suspend, and says so).
    wait(page, lambda d: 'tick 1' in shown_text(d, '#task-log'), 'the tool\'s first line')
    press(page, 'suspend')
    wait(page, lambda d: view_state(d) == 'suspended', 'the task suspended')
    assert server.info(task_id).get('suspended') == 'yes'
    press(page, 'resume')
    wait(page, lambda d: view_state(d) == 'running', 'the task running again')
    assert 'suspended' not in server.info(task_id)
    press(page, 'kill')
    wait(page, lambda d: view_state(d) == 'failed', 'the task failed (killed)')
    record = server.info(task_id)
    assert record['status'] == 'failed' and 'kill' in record.get('error', ''), record
    assert severe_console(page) == []


def test_a_status_change_shows_in_the_list_without_a_reload(page, server, gates):
    open_page(page, server)
    page.execute_script('window.notReloaded = true')
    task_id = gated_task(server, gates, 'later')
    wait(page, lambda d: row_state(d, task_id) in ('queued', 'running'), 'the new task, from the stream')
    open_gate(gates, 'later')
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'its change to complete')
    assert page.execute_script('return window.notReloaded === true')


# How many of the chart's pixels are the succeeded bars' green (#2e7d32,
# history.js; the labels are near black, so text alone counts none).
BAR_PIXELS = """
    const canvas = document.getElementById('history-chart');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let bar = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] === 0x2e && pixels[i + 1] === 0x7d && pixels[i + 2] === 0x32 && pixels[i + 3] === 255) bar += 1;
    }
    return bar;"""


def test_history_shows_totals_per_service_with_a_chart(page, server):
    task_id = submit(server, 'job', 'echo counted > "$1"\n', 'counted.sh')
    server.wait_done(task_id)
    open_page(page, server)
    table = wait(page, lambda d: shown_text(d, '#history-services'), 'the history\'s totals')
    job_line = [line for line in table.splitlines() if line.startswith('job')]
    assert job_line and int(job_line[0].split()[1]) >= 1, table
    assert page.execute_script(BAR_PIXELS) > 100


def tab_to(driver, selector, most=60):
    """Press Tab until the focused element matches ``selector``; the number of
    presses (fails after ``most``)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    for presses in range(1, most + 1):
        ActionChains(driver).send_keys(Keys.TAB).perform()
        if driver.execute_script('return document.activeElement.matches(arguments[0])', selector):
            return presses
    raise AssertionError(f'{selector} not reached with {most} presses of Tab')


FOCUS_RING = "return getComputedStyle(document.activeElement).outlineStyle"


def test_the_keyboard_reaches_submit_and_opens_a_task(page, server):
    """Tab reaches the file chooser and a task's link, each with a visible
    focus ring; Enter on the link opens the task."""
    task_id = submit(server, 'job', 'echo keys > "$1"\n', 'keys.sh')
    server.wait_done(task_id)
    open_page(page, server)
    wait(page, lambda d: row(d, task_id), 'the task in the list')
    tab_to(page, '#choose-files')
    assert page.execute_script(FOCUS_RING) not in ('none', '')
    assert focus_ring_contrast(page) >= 3
    tab_to(page, f'li.task[data-id="{task_id}"] a.task-name')
    assert page.execute_script(FOCUS_RING) not in ('none', '')
    assert focus_ring_contrast(page) >= 3
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait(page, lambda d: view_state(d) == 'complete', 'the task opened from the keyboard')
    assert shown_text(page, '#task-title') == 'keys.sh'


def enter_token(driver, token):
    """Type the token into the page's prompt and send it."""
    field = wait(driver, lambda d: [f for f in css(d, '#token-input') if f.is_displayed()], 'the token prompt')[0]
    field.send_keys(token)
    driver.find_element('id', 'token-submit').click()


def test_the_token_prompt_opens_the_page_and_the_token_stays_out_of_urls(page, token_server):
    page.get(token_server.url)
    wait(page, lambda d: shown_text(d, '#token-title'), 'the token prompt')
    assert not css(page, '#overview')[0].is_displayed()
    screenshot(page, 'token')
    enter_token(page, 'not-the-token')
    wait(page, lambda d: 'refused' in shown_text(d, '#token-message'), 'a wrong token refused')
    enter_token(page, TOKEN)
    wait(page, lambda d: shown_text(d, 'h1') == 'rrcloud @ token-test', 'the page opened by the token')
    wait(page, lambda d: css(d, '#list[data-loaded]'), 'the task list')
    assert not css(page, '#token')[0].is_displayed()
    # Not a password for the browser to save: no user name, autocomplete off.
    assert css(page, '#token-input')[0].get_attribute('autocomplete') == 'off'
    assert css(page, '#token-form input:not(#token-input)') == []
    urls = requested_urls(page)
    assert any('service=tasks' in url for url in urls), urls
    assert not [url for url in urls if TOKEN in url]
    assert page.execute_script('return sessionStorage.getItem("rrcloud.token")') == TOKEN


def test_an_empty_store_shows_how_to_submit_the_first_task(page, token_server):
    page.get(token_server.url)
    wait(page, lambda d: shown_text(d, '#token-title') or shown_text(d, 'h1') == 'rrcloud @ token-test',
         'the prompt, or the page opened by the token this tab keeps')
    if shown_text(page, '#token-title'):  # this tab had no token yet (the test ran alone, or first)
        asked = severe_console(page)  # the server's 401s that made the page ask: Chromium logs each
        assert asked and all('status of 401' in message for message in asked), asked
        enter_token(page, TOKEN)
    help_text = wait(page, lambda d: shown_text(d, '#first-task'), 'the first task\'s help')
    assert '-F service=openscad -F fileIn0=@cube.scad' in help_text
    assert TOKEN not in help_text
    assert 'openscad.cloud cube.scad' in help_text
    assert shown_text(page, '#choose-files') == 'choose files'
    screenshot(page, 'first-task')
    assert severe_console(page) == []


def test_selenium_is_given_the_driver_and_never_runs_its_manager(monkeypatch, tmp_path):
    """start_browser gives Selenium the driver's and the browser's paths, so
    Selenium Manager (which would download a driver) is never asked."""
    from selenium.webdriver.common import driver_finder

    def refuse(*args, **kwargs):
        raise AssertionError('Selenium Manager ran')
    monkeypatch.setattr(driver_finder.SeleniumManager, 'binary_paths', refuse)
    driver = start_browser(tmp_path / 'profile')
    try:
        assert driver.service.path == CHROMEDRIVER
        assert driver.capabilities['browserName'] == 'chrome'
        driver.get('data:text/html,<p>offline</p>')
        assert driver.find_element('tag name', 'p').text == 'offline'
    finally:
        driver.quit()


def module_constant(driver, module, name):
    """A constant a module of the page exports (the module the page itself runs)."""
    return driver.execute_async_script(
        'const [url, name, done] = arguments; import(url).then((module) => done(module[name]));',
        f'/ui/js/{module}', name)


ROW_COUNT = "return document.querySelectorAll('#tasks > li.task').length"


def test_the_live_list_keeps_its_cap_of_rows_and_more_brings_the_rest(page, embedded_server):
    """A page open all day: tasks that keep coming push the oldest rows out
    past the cap; "more" shows and brings them back."""
    server = embedded_server('serverName = cap-test\n', SERVICES)
    open_page(page, server, name='cap-test')
    cap = module_constant(page, 'list.js', 'ROWS_PAST_PAGES')  # the first page brought none
    ids = plant_ended_tasks(server, cap + 20, 'complete')
    wait(page, lambda d: row(d, ids[-1]), 'the newest task, from the stream')
    wait(page, lambda d: not row(d, ids[19]), 'the oldest rows dropped')
    assert page.execute_script(ROW_COUNT) == cap
    assert row(page, ids[20])
    page.find_element('id', 'more').click()
    wait(page, lambda d: row(d, ids[0]), 'the dropped rows, brought back by more')
    assert page.execute_script(ROW_COUNT) == cap + 20
    assert not shown_texts(page, '#more')


def rewrite_record(server, task_id, **fields):
    """Rewrite a record's fields in the store (atomically, as the store does)."""
    import os
    info = server.root / 'tasks' / 'info' / task_id
    lines = [line for line in info.read_text().splitlines() if line.split(':')[0] not in fields]
    spare = info.with_name(f'.rewrite-{task_id}')
    spare.write_text(''.join(f'{line}\n' for line in lines + [f'{k}: {v}' for k, v in fields.items()]))
    os.replace(spare, info)


def requests_of(urls, service):
    """The URLs that ask for ``service``."""
    return [url for url in urls if f'service={service}&' in url or url.endswith(f'service={service}')]


def wait_for_request(driver, service, what):
    """Until the page asks for ``service`` (a request from now on)."""
    seen = []

    def asked(d):
        seen.extend(requested_urls(d))
        return requests_of(seen, service)
    return wait(driver, asked, what)


def test_a_record_that_changes_but_not_its_state_asks_the_server_nothing(page, server):
    """The server panel is read again when a task's state changes, not at
    each change of a record (a running task's progress): a record rewritten
    five times, a second apart, costs no request for meta nor printers;
    a new task does (printers read once with meta)."""
    import time
    task_id = submit(server, 'job', 'echo quiet > "$1"\n', 'quiet.sh')
    server.wait_done(task_id)
    open_page(page, server)
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the task in the list')
    requested_urls(page)
    for size in range(101, 106):
        rewrite_record(server, task_id, sizeOut=size)
        wait(page, lambda d: f'out {size} B' in row(d, task_id), 'the rewritten record')
        time.sleep(1.2)  # the panel's throttle (server.js): each change would have had its own read
    urls = requested_urls(page)
    meta, printers = requests_of(urls, 'meta'), requests_of(urls, 'printers')
    assert len(printers) <= len(meta) <= 1, urls  # one: the panel's own timer, every 10 s
    submit(server, 'job', 'echo loud > "$1"\n', 'loud.sh')
    wait_for_request(page, 'meta', 'the panel read again')


def effective_background(driver):
    return driver.execute_script("""
        for (let node = document.activeElement.parentElement; node; node = node.parentElement) {
          const colour = getComputedStyle(node).backgroundColor;
          if (colour && colour !== 'transparent' && !/rgba\\(.*, 0\\)$/.test(colour)) return colour;
        }
        return 'rgb(255, 255, 255)';""")


def contrast(first, second):
    """WCAG's contrast ratio of two CSS colours "rgb(r, g, b)"."""
    import re

    def luminance(colour):
        channels = [int(part) / 255 for part in re.findall(r'[\d.]+', colour)[:3]]
        linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def focus_ring_contrast(driver):
    """The focused element's ring against what is behind it."""
    colour = driver.execute_script('return getComputedStyle(document.activeElement).outlineColor')
    return contrast(colour, effective_background(driver))


FOCUSED = "return document.activeElement.matches(arguments[0])"


def test_a_focused_link_keeps_its_focus_while_its_task_changes(page, server, gates):
    """Tab to a running task's link; the task ends (its row redrawn): the
    focus stays on the link; its ring reads on the page (3:1 at least).
    Enter opens the task with the focus on its heading; back, on the link."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    task_id = gated_task(server, gates, 'focused')
    open_page(page, server)
    wait(page, lambda d: row_state(d, task_id) == 'running', 'the task running in the list')
    link = f'li.task[data-id="{task_id}"] a.task-name'
    tab_to(page, link)
    assert focus_ring_contrast(page) >= 3
    open_gate(gates, 'focused')
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the task complete in the list')
    assert page.execute_script(FOCUSED, link)
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait(page, lambda d: view_state(d) == 'complete', 'the task opened')
    assert page.execute_script(FOCUSED, '#task-title')
    page.find_element('id', 'back').send_keys(Keys.ENTER)
    wait(page, lambda d: d.execute_script(FOCUSED, link), 'the focus back on the task\'s link')


def test_the_skip_link_keeps_the_task_view_and_the_sections_links_leave_it(page, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    task_id = submit(server, 'job', 'echo skip > "$1"\n', 'skip.sh')
    server.wait_done(task_id)
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: view_state(d) == 'complete', 'the task view')
    tab_to(page, 'a.skip')
    ActionChains(page).send_keys(Keys.ENTER).perform()
    wait(page, lambda d: d.execute_script(FOCUSED, '#app'), 'the focus on the content')
    assert page.execute_script('return location.hash') == f'#task={task_id}'
    assert view_state(page) == 'complete'
    page.find_element('css selector', 'nav a[href="#history"]').click()
    wait(page, lambda d: d.execute_script(FOCUSED, '#history-title'), 'the focus on the history')
    assert css(page, '#overview')[0].is_displayed() and not view_state(page)
    top = page.execute_script("return document.getElementById('history').getBoundingClientRect().top")
    assert 0 <= top < page.execute_script('return window.innerHeight')
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: view_state(d) == 'complete', 'the task view again')
    page.find_element('css selector', 'nav a[href="#submit"]').click()
    wait(page, lambda d: d.execute_script(FOCUSED, '#submit-title'), 'the focus on the submit form')


def test_failed_requests_show_on_the_page_and_a_first_load_is_tried_again(page, embedded_server):
    """With the API unreachable: a first load shows why and tries again; "more",
    a filter and the history's period say they failed; no promise is left
    rejected with nobody to catch it (an "Uncaught" in the console)."""
    server = embedded_server('serverName = failing-test\n', SERVICES)
    plant_ended_tasks(server, 55, 'complete')
    try:
        block_urls(page, '*service=meta*')
        page.get(server.url)
        wait(page, lambda d: 'did not answer' in shown_text(d, '#page-error'), 'the first load\'s failure')
        block_urls(page)
        open_page(page, server, name='failing-test')
        wait(page, lambda d: not shown_text(d, '#page-error'), 'the error gone once the page loaded')
        wait(page, lambda d: shown_text(d, '#history-services'), 'the history')
        block_urls(page, '*service=tasks*', '*service=history*')
        page.find_element('id', 'more').click()
        wait(page, lambda d: 'cannot load more tasks' in shown_text(d, '#list-message'), 'more\'s failure')
        assert page.find_element('id', 'more').is_enabled()
        choose(page, '#filter-status', 'failed')
        wait(page, lambda d: 'cannot load the list' in shown_text(d, '#list-message'), 'the filter\'s failure')
        choose(page, '#history-since', '7')
        wait(page, lambda d: 'cannot load the history' in shown_text(d, '#history-message'), 'the period\'s')
    finally:
        block_urls(page)
    assert [m for m in severe_console(page) if 'Uncaught' in m] == []


# Answers to requests whose URL holds arguments[0] wait until window.release();
# window.settled counts the answers read after that (their readers done).
HOLD_ANSWERS = """
    const part = arguments[0];
    const realFetch = window.fetch;
    window.held = [];
    window.settled = 0;
    window.release = () => { for (const go of window.held.splice(0)) go(); };
    window.fetch = async (url, options) => {
      const answer = await realFetch(url, options);
      if (!String(url).includes(part)) return answer;
      await new Promise((go) => window.held.push(go));
      const json = answer.json.bind(answer);
      answer.json = async () => {
        const value = await json();
        setTimeout(() => { window.settled += 1; }, 0);
        return value;
      };
      return answer;
    };"""


def test_a_late_page_never_lands_in_another_filters_list_nor_hides_a_change(page, embedded_server):
    server = embedded_server('serverName = race-test\n', SERVICES)
    plant_ended_tasks(server, 5, 'failed')
    plant_ended_tasks(server, 55, 'complete')
    open_page(page, server, name='race-test')
    # "more", then a filter before more's page came: that page is dropped.
    page.execute_script(HOLD_ANSWERS, 'before=')
    page.find_element('id', 'more').click()
    wait(page, lambda d: d.execute_script('return window.held.length') == 1, 'more asked')
    choose(page, '#filter-status', 'failed')
    wait(page, lambda d: len(shown_texts(d, 'li.task')) == 5, 'the failed tasks alone')
    page.execute_script('window.release()')
    wait(page, lambda d: d.execute_script('return window.settled') == 1, 'more\'s late page read')
    assert set(shown_texts(page, 'li.task .badge')) == {'failed'}
    assert len(shown_texts(page, 'li.task')) == 5
    # A task that fails while the filter's page is on its way stays in the list.
    page.get(server.url)
    wait(page, lambda d: css(d, '#list[data-loaded]'), 'the task list')
    page.execute_script(HOLD_ANSWERS, 'status=failed')
    choose(page, '#filter-status', 'failed')
    wait(page, lambda d: d.execute_script('return window.held.length') == 1, 'the filter\'s page asked')
    [late] = plant_ended_tasks(server, 1, 'failed')
    wait(page, lambda d: row(d, late), 'the new failed task, from the stream')
    page.execute_script('window.release()')
    wait(page, lambda d: d.execute_script('return window.settled') == 1, 'the filter\'s page read')
    assert row(page, late)
    assert len(shown_texts(page, 'li.task')) == 6  # the five failed before and the late one


DRAG = """
    const [steps] = arguments;
    const data = new DataTransfer();
    data.items.add(new File(['x'], 'x.scad'));
    for (const [type, selector] of steps) {
      document.querySelector(selector).dispatchEvent(
        new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
    }
    return document.getElementById('submit-form').classList.contains('dragging');"""


def test_a_drop_anywhere_goes_to_the_submit_form(page, server):
    """Dropped below the page's content while a task's view is open: taken
    (the browser does not open the file), the Submit form shown with it.
    Dragging over the page's parts keeps the form highlighted."""
    task_id = submit(server, 'job', 'echo drop > "$1"\n', 'drop.sh')
    server.wait_done(task_id)
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: view_state(d) == 'complete', 'the task view')
    assert drop_files(page, [('below.sh', 'echo below > "$1"\n')], target='html')
    wait(page, lambda d: 'below.sh' in shown_text(d, '#files'), 'the dropped file in the Submit form')
    assert not view_state(page)
    assert page.execute_script('return location.hash') == '#submit'
    assert page.execute_script(DRAG, [['dragenter', 'body'], ['dragenter', '#dropzone'], ['dragover', '#dropzone'],
                                      ['dragleave', 'body']])
    assert not page.execute_script(DRAG, [['dragleave', '#dropzone']])


# The job service runs input 0 with the rest and the output after it: the last argument is the output.
TO_LAST = 'for out; do :; done; echo {text} > "$out"\n'


def test_the_user_marks_which_dropped_file_is_the_model(page, server):
    open_page(page, server)
    drop_files(page, [('lib.sh', TO_LAST.format(text='lib')), ('main.sh', TO_LAST.format(text='main'))])
    models = css(page, '#files input.file-model')
    assert [m.is_selected() for m in models] == [True, False]  # no model's extension: the first
    models[1].click()
    choose(page, '#submit-service', 'job')
    page.find_element('id', 'start').click()
    task_id = started_task_id(page)
    record = server.wait_done(task_id)
    assert record['status'] == 'complete', record
    assert plain_session().get(server.url + record['out'], timeout=10).text.strip() == 'main'


def test_rows_show_the_start_steps_are_named_and_the_chart_follows_the_width(page, server):
    import time
    from rrc.store import Store
    now = time.time()
    record = {'status': 'complete', 'service': 'job', 'client': '127.0.0.1', 'in': '', 'out': '',
              'cmd': 'sh', 'ctime': f'{now - 3 * 86400:.5f}', 'stime': f'{now:.5f}', 'etime': f'{now:.5f}'}
    task_id = Store(str(server.root)).create_task(lambda task_id: dict(record))['id']
    server.wait_done(submit(server, 'job', 'echo charted > "$1"\n', 'charted.sh'))  # in the history: a chart
    open_page(page, server)
    started = page.execute_async_script(
        'const [s, done] = arguments; import("/ui/js/dom.js").then((dom) => done(dom.localTime(s)));',
        record['stime'])
    wait(page, lambda d: f'started {started}' in row(d, task_id), 'the start time in the row')
    choose(page, '#submit-mode', 'pipe')
    labels = [b.get_attribute('aria-label') for b in css(page, '#pipe-steps li button')]
    assert labels == ['remove step 1', 'remove step 2']
    wait(page, lambda d: 'job' in shown_text(d, '#history-services'), 'the history')
    set_size(page, PHONE)
    wait(page, lambda d: d.execute_script("""
        const canvas = document.getElementById('history-chart');
        return !canvas.hidden && canvas.width === Math.round(canvas.clientWidth * devicePixelRatio)
          && canvas.clientWidth <= window.innerWidth;"""), 'the chart drawn again at the phone\'s width')


# The page told its tab is hidden (true) or shown (false), as a browser tells it.
PRETEND_HIDDEN = """
    window.pretendHidden = arguments[0];
    if (!window.hiddenPretended) {
      Object.defineProperty(document, 'hidden', {configurable: true, get: () => window.pretendHidden});
      window.hiddenPretended = true;
    }
    document.dispatchEvent(new Event('visibilitychange'));"""


def test_a_hidden_tab_asks_the_server_nothing_until_shown(page, server):
    """Hidden, the page's timers rest: a task that starts and ends costs no
    read of the server panel (the list still follows the stream); shown
    again, the panel is read at once."""
    import time
    open_page(page, server)
    page.execute_script(PRETEND_HIDDEN, True)
    requested_urls(page)
    task_id = submit(server, 'job', 'echo hidden > "$1"\n', 'hidden.sh')
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the task complete in the list')
    time.sleep(1.5)  # the panel's throttle (server.js): a visible tab would have read meta by now
    assert requests_of(requested_urls(page), 'meta') == []
    page.execute_script(PRETEND_HIDDEN, False)
    wait_for_request(page, 'meta', 'the panel read again')
