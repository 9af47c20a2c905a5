"""The real-browser tests' browser: Debian's headless Chromium driven by
Selenium through Debian's ChromeDriver.

Selenium is given both paths (``/usr/bin/chromium``, ``/usr/bin/chromedriver``),
so Selenium Manager never runs and nothing is downloaded (this machine has
no network).  The flags keep Chromium from calling out at start (background
networking, component updates, sync, QUIC) and let it run as root
(``--no-sandbox``); each session has a fresh ``--user-data-dir``.  The
browser's console and its network requests are captured
(``goog:loggingPrefs``), so a test can ask for its SEVERE messages and the
URLs it requested.  Screenshots go to ``build/screenshots/`` (never
committed).  ``tests/conftest.py`` holds the ``browser`` fixture built on
``start_browser``.
"""
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = '/usr/bin/chromium'
CHROMEDRIVER = '/usr/bin/chromedriver'
SCREENSHOTS = REPO / 'build' / 'screenshots'
# WebGL (the page's 3D preview) on the CPU: SwiftShader through ANGLE, asked
# for by name (Chromium's silent fallback to it is deprecated and warns in
# the console on every WebGL context).
FLAGS = ('--headless', '--no-sandbox', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync',
         '--disable-dev-shm-usage', '--use-angle=swiftshader', '--enable-unsafe-swiftshader')
DESKTOP = (1280, 900)
PHONE = (390, 844)


def start_browser(user_data_dir, size=DESKTOP):
    """A new headless Chromium session (a selenium WebDriver) with its own
    profile in ``user_data_dir``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f'--user-data-dir={user_data_dir}')
    options.add_argument(f'--window-size={size[0]},{size[1]}')
    # The console (its errors), and the network's requests (the URLs a test
    # checks: a token is never in one).
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL', 'performance': 'ALL'})
    service = Service(executable_path=CHROMEDRIVER, log_output=os.devnull)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    return driver


def severe_console(driver):
    """The console's SEVERE messages since the last call (each call drains
    the log), as the browser wrote them."""
    return [entry['message'] for entry in driver.get_log('browser') if entry['level'] == 'SEVERE']


def requested_urls(driver):
    """The URLs the browser asked for since the last call (each call drains
    the performance log): every request, the page's fetch()es too."""
    import json
    urls = []
    for entry in driver.get_log('performance'):
        message = json.loads(entry['message'])['message']
        if message.get('method') == 'Network.requestWillBeSent':
            urls.append(message['params']['request']['url'])
    return urls


def screenshot(driver, name):
    """Write the window as ``build/screenshots/NAME.png``; its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f'{name}.png'
    assert driver.save_screenshot(str(path)), path
    return path


def set_size(driver, size):
    """Resize the window (``DESKTOP``, ``PHONE``: its outer size in CSS pixels)."""
    driver.set_window_size(*size)


def fresh_profile():
    """A new empty folder for a session's ``--user-data-dir``."""
    return tempfile.mkdtemp(prefix='rrcloud-chromium-')
