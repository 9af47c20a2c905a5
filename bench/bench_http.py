"""HTTP service benchmark: median latency of meta, info (one), info (all of
10,000 tasks) and an echo submission, for the embedded server and for the CGI
under lighttpd, each beside a floor measured in the same run: a CGI under the
same lighttpd that is a bare Python start printing a header.

Run: .venv/bin/python bench/bench_http.py [REPEAT]
"""
import compileall
import sys

import requests

from common import FloorServer, fill_store as fill_finished_tasks, median_seconds, table

from deploy import Deployment, chown_tree, www_data  # noqa: E402




def fill_store(root, count):
    """``count`` finished echo tasks (common.fill_store), owned by the CGI's user."""
    ids = fill_finished_tasks(root, count)
    uid, gid = www_data()
    chown_tree(root / 'tasks', uid, gid)
    return ids


def measure(deployment, session, repeat, floor):
    url = deployment.url + '/'
    ids = fill_store(deployment.store, 10000)
    one = ids[len(ids) // 2]

    def get(params):
        answer = session.get(url, params=params, timeout=30)
        assert answer.status_code == 200, answer.text

    def submit():
        answer = session.post(url, data={'service': 'echo', 'fileIn0': 'bench data'}, timeout=30)
        assert answer.status_code == 200, answer.text

    rows = []
    cases = [('meta', lambda: get({'service': 'meta'}), repeat),
             ('info, one task', lambda: get({'service': 'info', 'id': one}), repeat),
             ('info, all 10,000 tasks', lambda: get({'service': 'info'}), max(3, repeat // 10)),
             ('echo submission (POST)', submit, repeat)]
    for name, call, count in cases:
        call()  # warm up
        seconds = median_seconds(call, count)
        rows.append([deployment.kind, name, count, f'{seconds * 1000:.1f}', f'{floor * 1000:.1f}',
                     f'{seconds / floor:.2f}x'])
    return rows


def main():
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    session = requests.Session()
    session.trust_env = False
    rows = []
    for kind in ('embedded', 'lighttpd'):
        deployment = Deployment(kind, config='maxDataRetention = 1000\n')
        compileall.compile_file(str(deployment.app / 'rrcloud.py'), quiet=1)  # as `make install` does
        compileall.compile_dir(str(deployment.app / 'rrc'), quiet=1)
        floor_server = FloorServer('python')
        try:
            deployment.start()
            floor = median_seconds(lambda: session.get(floor_server.url, timeout=10), repeat)
            rows += measure(deployment, session, repeat, floor)
        finally:
            floor_server.stop()
            deployment.kill_tasks()
            deployment.close()
    print(table(rows, ['deployment', 'request', 'runs', 'median, ms', 'floor CGI, ms', 'ratio to floor']))


if __name__ == '__main__':
    main()
