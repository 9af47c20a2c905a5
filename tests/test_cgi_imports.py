"""A CGI request starts Python anew: `meta`, `info`, the page's list (`tasks`),
its stream (`changes`) and its files (`/ui/`) load only what they need.

Run as the web servers run it (the web servers' interpreter, `bin/index.cgi`,
a CGI environment), with ``python -X importtime``, which lists every module
a process imports.
"""
import os
import subprocess

import pytest

from conftest import REPO
from deploy import WEB_PYTHON

# What a read never needs: the runner, the sandbox, the client, the printer,
# the command line, uploads, the embedded server, and the costly standard modules.
NOT_FOR_A_READ = {'re', 'subprocess', 'requests', 'serial', 'multipart', 'psutil', 'waitress',
                  'tarfile', 'socket', 'threading', 'shlex', 'json', 'ipaddress',
                  'urllib.parse', 'wsgiref', 'rrc.sandbox', 'rrc.runner', 'rrc.printing',
                  'rrc.remote', 'rrc.web.embedded'}
NOT_FOR_A_READ_PACKAGES = ('rrc.cli',)
RECORD_ID = '1795999999-00000-000000'
RECORD = (f'client: 127.0.0.1\nctime: 1795999999.00000\netime: 1796000000.00000\nid: {RECORD_ID}\n'
          f'in: tasks/in/1795999998-00000-000000.txt\nout: tasks/out/{RECORD_ID}\n'
          'service: echo\nstatus: complete\n')


def imported_by_cgi(store, query, path=''):
    """(answer, set of modules imported) of one CGI GET with ``query`` (of ``path`` below the script)."""
    env = {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
           'QUERY_STRING': query, 'REMOTE_ADDR': '127.0.0.1', 'SCRIPT_NAME': '/index.cgi',
           'PATH_INFO': path, 'RRCLOUD_CONFIG': str(store / 'rrcloudrc')}
    done = subprocess.run([WEB_PYTHON, '-X', 'importtime', str(REPO / 'bin' / 'index.cgi')],
                          env=env, capture_output=True, text=True, timeout=30)
    modules = {line.split('|')[-1].strip() for line in done.stderr.splitlines()
               if line.startswith('import time:') and '|' in line}
    return done.stdout, modules


@pytest.fixture
def store(tmp_path):
    # A stream of service=changes ends at once: its imports are what it loads.
    (tmp_path / 'rrcloudrc').write_text(f'dir = {tmp_path}\ncgiStreamSeconds = 0.2\n')
    (tmp_path / 'tasks' / 'info').mkdir(parents=True)
    (tmp_path / 'tasks' / 'info' / RECORD_ID).write_text(RECORD)
    # Recovery just ran (it runs at most once a minute under CGI and may start
    # queued tasks): these are the requests of the other 59 seconds.
    (tmp_path / 'tasks' / '.recovered').touch()
    return tmp_path


# An event stream's data is JSON (json imports re): the rest holds for it too.
STREAM_NEEDS = {'json', 're'}


@pytest.mark.parametrize('query, path, needs', [
    ('service=meta', '', set()), ('service=info', '', set()), (f'service=info&id={RECORD_ID}', '', set()),
    ('service=tasks', '', set()), ('service=tasks&status=complete&limit=5', '', set()),
    ('service=changes', '', STREAM_NEEDS),
    (f'service=changes&lastEventId={1795999999 * 10 ** 9}', '', STREAM_NEEDS),
    ('', '/ui/app.css', set())])
def test_a_cgi_read_loads_nothing_it_does_not_need(store, query, path, needs):
    if not os.access(WEB_PYTHON, os.X_OK):
        pytest.fail(f'{WEB_PYTHON} is missing: make test installs it')

    answer, modules = imported_by_cgi(store, query, path)

    assert answer.startswith('Status: 200'), answer
    if query.startswith('service=changes'):
        assert '\nevent: hello\n' in answer or '\nevent: task\n' in answer, answer  # it streamed
    assert 'rrcloud' in modules  # the measurement saw the program itself
    assert 'rrc.web.cgi' in modules
    assert modules & (NOT_FOR_A_READ - needs) == set(), sorted(modules & (NOT_FOR_A_READ - needs))
    assert [m for m in modules if m.startswith(NOT_FOR_A_READ_PACKAGES)] == []
