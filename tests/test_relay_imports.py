"""The relay's import diet: a wrapper's synchronous task sent to a server
loads no requests (nor http.client, urllib3 or the email package): its
HTTP goes through rrc/lighthttp.py.

Run as a user runs it (a real process, a real ``rrcloud serve``), with
``python -X importtime``, which lists every module a process imports.
"""
import subprocess
import sys

import pytest

from conftest import DATA, REPO

# requests and what it stands on; http.client for its header parser (the email package).
NOT_FOR_THE_RELAY = {'requests', 'urllib3', 'http.client', 'email.parser', 'ssl', 'idna', 'charset_normalizer',
                     'concurrent.futures', 'rrc.runner', 'rrc.sandbox', 'rrc.printing', 'multipart', 'psutil',
                     'waitress'}


def imported(workdir, argv):
    """(process, set of modules imported) of one client run."""
    done = subprocess.run([sys.executable, '-X', 'importtime', *argv], cwd=workdir, capture_output=True,
                          timeout=120)
    modules = {line.split('|')[-1].strip() for line in done.stderr.decode('utf-8', 'replace').splitlines()
               if line.startswith('import time:') and '|' in line}
    return done, modules


@pytest.fixture
def server(embedded_server):
    return embedded_server(scope='module')


def test_a_wrappers_sync_task_loads_no_requests(workdir, server):
    (workdir / 'rrcloudrc').write_text(f'servers = {server.address}\n')
    (workdir / 'cube.scad').write_bytes((DATA / 'cube.scad').read_bytes())

    done, modules = imported(workdir, [str(REPO / 'bin' / 'openscad.cloud'), 'cube.scad', '-ocube.stl'])

    assert done.returncode == 0, done.stderr[-2000:]
    assert (workdir / 'cube.stl').read_bytes().startswith(b'solid')
    assert 'rrc.lighthttp' in modules  # the measurement saw the relay
    assert modules & NOT_FOR_THE_RELAY == set(), sorted(modules & NOT_FOR_THE_RELAY)


def test_rrcloud_sync_loads_no_requests(workdir, server):
    done, modules = imported(workdir, [str(REPO / 'rrcloud.py'), '--sync', f'--s={server.address}', 'echo', 'hi'])

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == b'hi\n'
    assert modules & NOT_FOR_THE_RELAY == set(), sorted(modules & NOT_FOR_THE_RELAY)
