"""The page at ``/`` in a real browser: headless Chromium through Selenium
(tests/browser.py; the ``browser`` and ``page`` fixtures in conftest.py),
against a real ``rrcloud serve`` on loopback.  One browser and one server
for the module; screenshots in build/screenshots/."""

import pytest

from browser import CHROMEDRIVER, PHONE, screenshot, set_size, severe_console, start_browser
from helpers import SH_SERVICE, submit

from rrc import VERSION_STRING

CONFIG = 'serverName = page-test\nmaxTasks = 2\n'
SERVICES = {'job': SH_SERVICE}
HOSTILE_NAME = '<img src=x onerror=alert(1)>.sh'
HOSTILE_TEXT = '<script>window.injected = 1</script><img src=x onerror="window.injected = 2">'


@pytest.fixture
def server(embedded_server):
    return embedded_server(CONFIG, SERVICES, scope='module')


def no_alert(driver):
    """No alert() opened (Selenium raises on any other command while one is open)."""
    from selenium.common.exceptions import NoAlertPresentException
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def test_page_loads_with_no_console_errors(page, server):
    page.get(server.url)
    assert page.find_element('tag name', 'h1').text == 'rrcloud @ page-test'
    assert VERSION_STRING in page.find_element('tag name', 'body').text
    assert 'page-test' in page.title
    screenshot(page, 'page')
    assert severe_console(page) == []


def test_hostile_names_show_as_text(page, server):
    """A task whose input is named like markup and whose record's error
    reads like a script (written into the store: no tool writes one so)
    shows as text: no element comes from it, no script runs, no alert."""
    task_id = submit(server, 'job', 'exit 3\n', HOSTILE_NAME)
    assert server.wait_done(task_id)['status'] == 'failed'
    info = server.root / 'tasks' / 'info' / task_id
    info.write_text(''.join(f'error: {HOSTILE_TEXT}\n' if line.startswith('error: ') else line
                            for line in info.read_text().splitlines(keepends=True)))
    page.get(server.url)
    row = page.find_element('xpath', f'//tr[td[text()="{task_id}"]]')
    assert HOSTILE_TEXT in row.text
    assert row.find_elements('tag name', 'script') == []
    assert row.find_elements('tag name', 'img') == []
    assert page.find_elements('css selector', 'img[src="x"]') == []
    assert page.execute_script('return window.injected === undefined')
    assert no_alert(page)
    assert severe_console(page) == []


def test_phone_width_has_no_horizontal_scroll(page, server):
    submit(server, 'job', 'echo a-long-line-of-output > "$1"\n', 'phone.sh')
    set_size(page, PHONE)
    page.get(server.url)
    inner = page.execute_script('return window.innerWidth')
    assert inner <= PHONE[0]
    scroll = page.execute_script('return document.scrollingElement.scrollWidth')
    screenshot(page, 'page-phone')
    assert scroll <= inner, (scroll, inner)


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
