"""The page at ``/`` in a real browser: headless Chromium through Selenium
(tests/browser.py; the ``browser`` and ``page`` fixtures in conftest.py),
against a real ``rrcloud serve`` on loopback.  One browser and one server
for the module (and one with a token); screenshots in build/screenshots/.

What a user sees is asserted: the list's rows, the task view's state and
log, what the server's records say after a button was pressed."""

import pytest

from browser import CHROMEDRIVER, PHONE, requested_urls, screenshot, set_size, severe_console, start_browser
from helpers import DATA, SH_SERVICE, plain_session, submit, write_printer

from rrc import VERSION_STRING

CONFIG = 'serverName = page-test\nmaxTasks = 4\n'
SERVICES = {'job': SH_SERVICE}
TOKEN = 'page-test-token-5d1c'
TOKEN_CONFIG = f'serverName = token-test\ntoken = {TOKEN}\n'
HOSTILE_NAME = '<img src=x onerror=alert(1)>.sh'
HOSTILE_TEXT = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">'
# How long the page may take to show what the server did (the tasks themselves are short).
SHOWN_WITHIN = 30
# A task that writes a line every 0.2 s for a while (the log test, the buttons' test).
TICKING = 'for i in $(seq 1 {count}); do echo "tick $i"; sleep 0.2; done\necho done > "$1"\n'


@pytest.fixture
def server(embedded_server):
    return embedded_server(CONFIG, SERVICES, scope='module')


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
    driver.execute_script("""
        const [name, text] = arguments;
        const data = new DataTransfer();
        data.items.add(new File([text], name, {type: 'text/plain'}));
        for (const type of ['dragenter', 'dragover', 'drop']) {
          document.body.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: data}));
        }""", name, text)


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
    info = server.root / 'tasks' / 'info' / task_id
    info.write_text(''.join(f'error: {HOSTILE_TEXT}\n' if line.startswith('error: ') else line
                            for line in info.read_text().splitlines(keepends=True)))
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


def test_a_dropped_file_starts_a_task_that_shows_and_completes(page, server):
    open_page(page, server)
    drop_file(page, 'dropped.sh', 'sleep 0.5; echo dropped > "$1"\n')
    assert 'dropped.sh' in shown_text(page, '#files')
    choose(page, '#submit-service', 'job')
    page.find_element('id', 'start').click()
    task_id = started_task_id(page)
    wait(page, lambda d: row(d, task_id), 'the new task in the list')
    assert 'dropped.sh' in row(page, task_id)
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'the task complete in the list')
    assert server.info(task_id)['status'] == 'complete'
    assert severe_console(page) == []


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


def test_the_log_follows_a_running_task(page, server):
    task_id = submit(server, 'job', TICKING.format(count=25), 'ticking.sh')
    page.get(f'{server.url}#task={task_id}')
    wait(page, lambda d: 'tick 2\n' in shown_text(d, '#task-log') + '\n', 'the log\'s first lines')
    assert view_state(page) == 'running'
    first = shown_text(page, '#task-log').count('tick')
    wait(page, lambda d: shown_text(d, '#task-log').count('tick') > first + 3, 'more lines, without a reload')
    screenshot(page, 'task-log')
    wait(page, lambda d: view_state(d) == 'complete', 'the task complete in its view')
    assert 'tick 25' in shown_text(page, '#task-log')
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


def test_a_status_change_shows_in_the_list_without_a_reload(page, server):
    open_page(page, server)
    page.execute_script('window.notReloaded = true')
    task_id = submit(server, 'job', 'sleep 1; echo later > "$1"\n', 'later.sh')
    wait(page, lambda d: row_state(d, task_id) in ('queued', 'running'), 'the new task, from the stream')
    wait(page, lambda d: row_state(d, task_id) == 'complete', 'its change to complete')
    assert page.execute_script('return window.notReloaded === true')


# How many of the chart's pixels are drawn (not transparent).
DRAWN_PIXELS = """
    const canvas = document.getElementById('history-chart');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0;
    for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) drawn += 1;
    return drawn;"""


def test_history_shows_totals_per_service_with_a_chart(page, server):
    task_id = submit(server, 'job', 'echo counted > "$1"\n', 'counted.sh')
    server.wait_done(task_id)
    open_page(page, server)
    table = wait(page, lambda d: shown_text(d, '#history-services'), 'the history\'s totals')
    job_line = [line for line in table.splitlines() if line.startswith('job')]
    assert job_line and int(job_line[0].split()[1]) >= 1, table
    assert page.execute_script(DRAWN_PIXELS) > 100


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
    tab_to(page, f'li.task[data-id="{task_id}"] a.task-name')
    assert page.execute_script(FOCUS_RING) not in ('none', '')
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
    urls = requested_urls(page)
    assert any('service=tasks' in url for url in urls), urls
    assert not [url for url in urls if TOKEN in url]
    assert page.execute_script('return sessionStorage.getItem("rrcloud.token")') == TOKEN


def test_an_empty_store_shows_how_to_submit_the_first_task(page, token_server):
    page.get(token_server.url)
    wait(page, lambda d: shown_text(d, '#token-title') or shown_text(d, 'h1') == 'rrcloud @ token-test',
         'the prompt, or the page opened by the token this tab keeps')
    if shown_text(page, '#token-title'):
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
