"""A store the server cannot use answers 500 with a one-line reason, in every deployment.

Live on purpose: under CGI an exception outside the application, or one that
escapes it, is a crash without headers, which the web server turns into its
own bare page without the CORS header a browser page needs to read it.
"""
import os
import shutil
import time

import pytest
import requests

import deploy


@pytest.fixture(params=deploy.KINDS)
def broken_store_server(request):
    """A deployment whose tasks/info is a file, not a folder (a store another
    tool or a full restore left unusable)."""
    with deploy.running(deploy.Deployment(request.param)) as deployment:
        tasks = deployment.store / 'tasks'
        tasks.mkdir(exist_ok=True)
        os.chown(tasks, *deploy.www_data())
        shutil.rmtree(tasks / 'info', ignore_errors=True)
        (tasks / 'info').write_text('not a folder\n')
        (tasks / '.recovered').unlink(missing_ok=True)  # recovery under CGI runs again
        yield deployment


@pytest.mark.parametrize('fmt', ['text', 'json'])
def test_an_unusable_store_answers_500_with_one_line_and_cors(broken_store_server, fmt):
    response = requests.get(broken_store_server.url, params={'service': 'info', 'format': fmt},
                            timeout=30)

    assert response.status_code == 500, response.text
    assert response.headers.get('Access-Control-Allow-Origin') == '*'
    reason = response.json()['error'] if fmt == 'json' else response.text
    assert reason.strip().count('\n') == 0, reason
    assert 'the server cannot use its store: Not a directory' in reason, reason
    assert 'Traceback' not in response.text


def error_log_once_written(deployment, timeout=5):
    """The web server's error logs, once they hold the CGI's own lines (the web
    server may write what a CGI said on stderr after it sent the answer;
    lighttpd writes it to its breakage log)."""
    deadline = time.monotonic() + timeout
    while True:
        text = ''.join(path.read_text() for path in deployment.log.glob('*error.log'))
        if 'rrcloud:' in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.mark.parametrize('kind', ['lighttpd', 'apache'])
def test_a_bad_rrcloudrc_under_cgi_answers_500_and_the_log_names_the_line(kind):
    with deploy.running(deploy.Deployment(kind)) as deployment:
        deployment.rrcloudrc.write_text(deployment.rrcloudrc.read_text() + 'maxTaks = 3\n')

        response = requests.get(deployment.url, params={'service': 'meta'}, timeout=30)

        assert response.status_code == 500, response.text
        assert response.headers.get('Access-Control-Allow-Origin') == '*'
        assert response.text == 'error: the server is misconfigured (see its error log)\n'
        assert "unknown key 'maxTaks'" in error_log_once_written(deployment)
