"""A CGI request starts Python anew: `meta` and `info` load only what they need.

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


def imported_by_cgi(store, query):
    """(answer, set of modules imported) of one CGI GET with ``query``."""
    env = {'PATH': '/usr/bin:/bin', 'GATEWAY_INTERFACE': 'CGI/1.1', 'REQUEST_METHOD': 'GET',
           'QUERY_STRING': query, 'REMOTE_ADDR': '127.0.0.1', 'SCRIPT_NAME': '/index.cgi',
           'RRCLOUD_CONFIG': str(store / 'rrcloudrc')}
    done = subprocess.run([WEB_PYTHON, '-X', 'importtime', str(REPO / 'bin' / 'index.cgi')],
                          env=env, capture_output=True, text=True, timeout=30)
    modules = {line.split('|')[-1].strip() for line in done.stderr.splitlines()
               if line.startswith('import time:') and '|' in line}
    return done.stdout, modules


@pytest.fixture
def store(tmp_path):
    (tmp_path / 'rrcloudrc').write_text(f'dir = {tmp_path}\n')
    (tmp_path / 'tasks' / 'info').mkdir(parents=True)
    (tmp_path / 'tasks' / 'info' / RECORD_ID).write_text(RECORD)
    # Recovery just ran (it runs at most once a minute under CGI and may start
    # queued tasks): these are the requests of the other 59 seconds.
    (tmp_path / 'tasks' / '.recovered').touch()
    return tmp_path


@pytest.mark.parametrize('query', ['service=meta', 'service=info', f'service=info&id={RECORD_ID}'])
def test_a_cgi_read_loads_nothing_it_does_not_need(store, query):
    if not os.access(WEB_PYTHON, os.X_OK):
        pytest.fail(f'{WEB_PYTHON} is missing: make test installs it')

    answer, modules = imported_by_cgi(store, query)

    assert answer.startswith('Status: 200'), answer
    assert 'rrcloud' in modules  # the measurement saw the program itself
    assert 'rrc.web.cgi' in modules
    assert modules & NOT_FOR_A_READ == set(), sorted(modules & NOT_FOR_A_READ)
    assert [m for m in modules if m.startswith(NOT_FOR_A_READ_PACKAGES)] == []
