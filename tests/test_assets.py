"""The page's own files, ``GET /ui/NAME`` (rrc/web/assets.py): what a browser
loads before it has the token, and nothing else.

In-process (the WSGI app, tests/inprocess.py): the libraries ``make
install`` put into www/node_modules under their served names, with a type a
browser runs as a module; a name is looked up, never joined to a path
(``..``, an escape, a folder, an unlisted file: 404); HEAD; the ETag and
304; no token needed, the allow list still holds.  One live test: the
embedded server sends a library, and 304 for the copy a browser holds.
"""
import os
from pathlib import Path

import pytest

import deploy
from conftest import REPO
from rrc.web.assets import asset_table

TOKEN = 'client-token-for-the-asset-tests'
MODULES = REPO / 'www' / 'node_modules'
# The served names of the libraries and the files npm ci put there (the contract of issue 23).
VENDOR = {'vendor/three.module.js': 'three/build/three.module.min.js',
          'vendor/STLLoader.js': 'three/examples/jsm/loaders/STLLoader.js',
          'vendor/OrbitControls.js': 'three/examples/jsm/controls/OrbitControls.js',
          'vendor/gcode-preview.js': 'gcode-preview/dist/gcode-preview.es.js',
          'vendor/lil-gui.js': 'lil-gui/dist/lil-gui.esm.min.js'}


@pytest.fixture(scope='module')
def server():
    if not MODULES.is_dir():
        pytest.fail(f'{MODULES} is missing: make install runs npm ci --prefix www')
    with deploy.running(deploy.deployment('wsgi', config=f'token = {TOKEN}\n')) as running:
        yield running


def get(server, target, method='GET', **headers):
    """(status, headers with lower-case names, body) of one request, without the token."""
    status, answer_headers, body = server.request_raw(method, target, None, headers)
    return status, {name.lower(): value for name, value in answer_headers}, body


@pytest.mark.parametrize('name', sorted(VENDOR))
def test_each_library_is_served_as_a_module_script_without_the_token(server, name):
    status, headers, body = get(server, f'/ui/{name}')
    assert status == 200, body[:200]
    assert body == (MODULES / VENDOR[name]).read_bytes()
    assert headers['content-type'] == 'text/javascript; charset=utf-8'
    assert headers['x-content-type-options'] == 'nosniff'
    assert headers['cache-control'] == 'no-cache'  # an upgrade shows at the next load


def test_the_libraries_are_the_pinned_versions():
    import json
    assert json.loads((MODULES / 'three' / 'package.json').read_text())['version'] == '0.159.0'
    assert json.loads((MODULES / 'gcode-preview' / 'package.json').read_text())['version'] == '2.18.0'
    lock = json.loads((REPO / 'www' / 'package-lock.json').read_text())
    assert lock['packages']['node_modules/three']['version'] == '0.159.0'
    assert 'node_modules/lil-gui' in lock['packages']  # gcode-preview's, served as vendor/lil-gui.js


def test_a_page_file_is_served_by_its_name_below_www(server):
    status, headers, body = get(server, '/ui/app.css')
    assert status == 200 and body == (REPO / 'www' / 'app.css').read_bytes()
    assert headers['content-type'] == 'text/css; charset=utf-8'


def test_the_pages_shell_is_served_at_the_root_alone(server):
    """/ui/index.html would be the page without its X-Frame-Options and CSP:
    a page another site could frame (and click Kill in)."""
    assert get(server, '/ui/index.html')[0] == 404


@pytest.mark.parametrize('target', ['/ui/../rrcloudrc', '/ui/%2e%2e/rrcloudrc', '/ui/%2e%2e/', '/ui/../x',
                                    '/ui/vendor/../index.html', '/ui/./index.html', '/ui//index.html',
                                    '/ui/', '/ui/vendor', '/ui/vendor/', '/ui/nothing.js', '/ui/package.json',
                                    '/ui/package-lock.json', '/ui/node_modules/three/package.json',
                                    '/ui/node_modules/three/build/three.module.min.js',
                                    '/ui/%2fetc%2fpasswd', '/ui/index.html%00.js'])
def test_a_name_not_in_the_table_is_404(server, target):
    status, _, body = get(server, target)
    assert status == 404, (target, body[:200])
    assert b'error: not found' in body


def test_head_answers_the_headers_without_the_body(server):
    status, headers, body = get(server, '/ui/vendor/lil-gui.js', method='HEAD')
    assert status == 200 and body == b''
    assert headers['content-length'] == str((MODULES / VENDOR['vendor/lil-gui.js']).stat().st_size)


def test_a_browser_holding_the_file_gets_304(server):
    _, headers, _ = get(server, '/ui/vendor/three.module.js')
    status, again, body = get(server, '/ui/vendor/three.module.js', **{'If-None-Match': headers['etag']})
    assert status == 304 and body == b'' and again['etag'] == headers['etag']
    status, _, body = get(server, '/ui/vendor/three.module.js', **{'If-None-Match': '"an-old-one"'})
    assert status == 200 and len(body) > 100_000


def test_a_post_is_405_and_the_api_still_needs_the_token(server):
    status, headers, _ = get(server, '/ui/app.css', method='POST')
    assert status == 405 and headers['allow'] == 'GET, HEAD'
    status, _, _ = get(server, '/?service=tasks&format=json')
    assert status == 401


def test_the_allow_list_still_holds_for_the_pages_files():
    with deploy.running(deploy.deployment('wsgi', config='allow = 10.0.0.0/8\n')) as running:
        status, _, body = get(running, '/ui/vendor/lil-gui.js')
    assert status == 403 and b'allow' in body


def test_the_table_holds_the_pages_files_and_no_other(tmp_path):
    www = tmp_path / 'www'
    for name in ('index.html', 'app.css', 'js/list.js', 'js/deep/x.js', 'logo.png', 'icon.svg',
                 'package-view.js', 'packages.css', 'js/package.json',
                 'package.json', 'package-lock.json', 'notes.txt', 'js/.hidden.js', '.git/x.js',
                 'node_modules/three/build/three.module.min.js', 'node_modules/evil/x.js'):
        path = www / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('x')
    table = asset_table(str(www))
    assert sorted(name for name in table if not name.startswith('vendor/')) == [
        'app.css', 'icon.svg', 'js/deep/x.js', 'js/list.js', 'logo.png', 'package-view.js',
        'packages.css']
    assert table['js/list.js'] == str(www / 'js' / 'list.js')
    assert table['vendor/three.module.js'] == os.path.join(www, 'node_modules', 'three', 'build',
                                                           'three.module.min.js')
    assert sorted(name for name in table if name.startswith('vendor/')) == sorted(VENDOR)


def test_the_table_is_built_once_per_app(monkeypatch):
    """Not a walk of www/ for each file a page loads (a resident server's
    App keeps it; under CGI a process answers one request anyway)."""
    from rrc.web import assets
    built = []
    monkeypatch.setattr(assets, 'asset_table',
                        lambda www: built.append(www) or {'app.css': os.path.join(www, 'app.css')})
    with deploy.running(deploy.deployment('wsgi')) as running:
        assert [get(running, '/ui/app.css')[0] for _ in range(3)] == [200, 200, 200]
        assert get(running, '/ui/vendor/lil-gui.js')[0] == 404
    assert len(built) == 1


def test_a_missing_library_is_404_not_an_error(tmp_path, monkeypatch):
    """A checkout where make install has not run yet: the page's request fails plainly."""
    www = tmp_path / 'www'
    www.mkdir()
    (www / 'app.css').write_text('p {}')
    from rrc.web import assets
    monkeypatch.setattr(assets, 'installed_path', lambda name: str(www))
    with deploy.running(deploy.deployment('wsgi')) as running:
        assert get(running, '/ui/vendor/three.module.js')[0] == 404
        assert get(running, '/ui/app.css')[2] == b'p {}'


def test_the_embedded_server_sends_a_library_and_304(embedded_server):
    import requests
    server = embedded_server(f'token = {TOKEN}\n', scope='module')
    url = server.url + 'ui/vendor/lil-gui.js'
    first = requests.get(url, timeout=10)
    assert first.status_code == 200 and first.content == (MODULES / VENDOR['vendor/lil-gui.js']).read_bytes()
    assert first.headers['Content-Type'] == 'text/javascript; charset=utf-8'
    again = requests.get(url, headers={'If-None-Match': first.headers['ETag']}, timeout=10)
    assert again.status_code == 304 and again.content == b''
    assert requests.get(server.url + 'ui/%2e%2e/rrcloudrc', timeout=10).status_code == 404
    assert Path(server.root / 'rrcloudrc').exists()  # what that name would have reached
