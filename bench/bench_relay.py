"""The relay's added time and the CGI's reads (issue 22, items 1 and 2), in one run.

1. ``openscad.cloud cube.scad -ocube.stl`` as a whole process, against
   ``openscad cube.scad -ocube.stl`` run directly, through ``rrcloud serve``
   on loopback and through the CGI under lighttpd (both deployed as the tests
   deploy them: the web servers' Python, as www-data), round by round, each
   round running every command once in turn.  The added time is the median of
   each round's relayed minus direct time.
2. ``?service=info`` and ``?service=meta`` through the CGI under lighttpd,
   with an empty store (its ``tasks/`` made, as the first task makes it) and
   with 1,000 finished tasks, request by request in turns; beside them a
   floor: a CGI under the same lighttpd that is a bare start of the same
   Python printing a header, and one of Perl (what any Perl CGI, 0.019's
   among them, costs at the least).

With BASELINE (a checkout of an earlier commit, e.g. ``git archive 5fa410a |
tar -x -C /tmp/base``) every row is run for it too, in the same rounds, so
the table shows this checkout beside the one before.

With ``--rrcloud-019=DIR`` the original Perl RepRapCloud is run too, in the
same rounds: DIR holds its one script ``rrcloud`` and ``services/openscad.conf``
(not part of rrcloud: docs/BENCHMARKS.md says where they come from; ``make
bench-deps`` installs the Perl modules and curl it needs).  Deployed as its
README says: a folder with ``index.cgi``, a symlink to ``rrcloud``, as the
document root of lighttpd, ``.cgi`` run by ``/usr/bin/perl``, as www-data;
its client is ``openscad.cloud``, a symlink to the same script, run in a
folder with its ``services/`` and an ``rrcloudrc`` naming the server.  Its
rows are labelled with the version the script declares, and every rrcloud
row gets its ratio to the original's (relay: added time over added time;
CGI: request by request).

Run: .venv/bin/python bench/bench_relay.py [ROUNDS] [BASELINE] [--rrcloud-019=DIR]
"""
import compileall  # noqa: F401 (the web servers' Python compiles; see compile_app)
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from common import DATA, FLOORS, REPO, FloorServer, start_cgi_lighttpd, table

import deploy  # noqa: E402
from deploy import WEB_PYTHON, Deployment, chown_tree, www_data  # noqa: E402
from bench_http import fill_store  # noqa: E402


def deployment(kind, checkout):
    """A started deployment of ``checkout`` (its app folder copied from there)."""
    saved = deploy.REPO
    deploy.REPO = Path(checkout)
    try:
        server = Deployment(kind)
    finally:
        deploy.REPO = saved
    subprocess.run([WEB_PYTHON, '-m', 'compileall', '-q', str(server.app)], check=True, stdout=subprocess.DEVNULL)
    (server.store / 'tasks').mkdir(mode=0o755, exist_ok=True)  # as the first task leaves it
    uid, gid = www_data()
    chown_tree(server.store, uid, gid)
    return server.start()


def fresh_recovery(server):
    """Recovery ran this minute: the other 59 seconds' requests are measured."""
    marker = server.store / 'tasks' / '.recovered'
    marker.touch()
    uid, gid = www_data()
    os.chown(marker, uid, gid)


# -- RepRapCloud 0.019 itself (the Perl original), beside rrcloud ------------

class Original:
    """The Perl RepRapCloud in ``source`` (its ``rrcloud`` and ``services/``):
    its CGI under lighttpd, as its README deploys it, and folders for its client."""

    def __init__(self, source):
        self.source = Path(source).resolve()
        script = (self.source / 'rrcloud').read_text()
        version = re.search(r"^\$VERSION = '([^']+)'", script, re.M)
        self.label = f'RepRapCloud {version.group(1) if version else "?"} (Perl)'
        self.folder = Path(tempfile.mkdtemp(prefix='rrcloud-bench-original-'))
        os.chmod(self.folder, 0o755)
        self.root = self.folder / 'RepRapCloud'
        self.root.mkdir()
        shutil.copy(self.source / 'rrcloud', self.root / 'rrcloud')
        shutil.copytree(self.source / 'services', self.root / 'services')
        (self.root / 'index.cgi').symlink_to('rrcloud')
        uid, gid = www_data()
        chown_tree(self.folder, uid, gid)
        self.process, self.port = start_cgi_lighttpd(
            self.folder, self.root, '/usr/bin/perl',
            extra='server.follow-symlink = "enable"\nindex-file.names = ( "index.cgi" )\n')
        self.url = f'http://127.0.0.1:{self.port}/'
        for _ in range(100):
            try:
                if 'RepRapCloud' in requests.get(self.url + '?service=meta', timeout=5).text:
                    break  # its first request made tasks/, as the first task does
            except requests.ConnectionError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f'{self.label} did not start under lighttpd (is CGI.pm installed? make bench-deps)')

    def client_folder(self):
        """A folder to run its ``openscad.cloud`` in: the script, its services, cube.scad and
        an rrcloudrc sending the wrapper's work to this server."""
        folder = Path(tempfile.mkdtemp(prefix='rrcloud-bench-original-client-'))
        shutil.copy(self.source / 'rrcloud', folder / 'rrcloud')
        os.chmod(folder / 'rrcloud', 0o755)
        (folder / 'openscad.cloud').symlink_to('rrcloud')
        shutil.copytree(self.source / 'services', folder / 'services')
        shutil.copy(DATA / 'cube.scad', folder)
        (folder / 'rrcloudrc').write_text(f'servers = 127.0.0.1\nport = {self.port}\n')
        return folder

    def fill(self, count):
        """``count`` finished echo tasks in its own store format (written straight in, as
        bench_http.fill_store does for rrcloud): ``tasks/info/ID`` of sorted ``key: value``
        lines, the input, output and log files they name; ended now, so its 24-hour
        garbage collector leaves them."""
        tasks = self.root / 'tasks'
        (tasks / 'in' / 'x.txt').write_text('hello')
        now = time.time()
        for number in range(count):
            task_id = f'{int(now)}-{number:05d}-{random.randrange(1_000_000):06d}'
            record = {'id': task_id, 'service': 'echo', 'status': 'complete', 'ctime': f'{now:.5f}',
                      'etime': f'{now:.5f}', 'pid': '1', 'cmd': f'cp tasks/in/x.txt tasks/out/{task_id}',
                      'in': 'tasks/in/x.txt', 'out': f'tasks/out/{task_id}', 'client': '127.0.0.1'}
            (tasks / 'info' / task_id).write_text(''.join(f'{k}: {v}\n' for k, v in sorted(record.items())))
            (tasks / 'out' / task_id).write_text('hello')
            (tasks / 'log' / task_id).write_text('hello')
        uid, gid = www_data()
        chown_tree(tasks, uid, gid)

    def stop(self):
        self.process.terminate()
        self.process.wait()


# -- 1. the relay ------------------------------------------------------------

def client_folder(url):
    """A folder with cube.scad and an rrcloudrc sending the wrapper's work to ``url``."""
    folder = Path(tempfile.mkdtemp(prefix='rrcloud-bench-relay-'))
    shutil.copy(DATA / 'cube.scad', folder)
    (folder / 'rrcloudrc').write_text(f'servers = {url}\n')
    return folder


def timed(argv, cwd):
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f'{argv} failed: {done.stderr[-500:]!r}')
    return seconds


def relay_rows(checkouts, rounds, original_source=None):
    for _, checkout in checkouts:  # the client's bytecode, as `make install` leaves it
        subprocess.run([sys.executable, '-m', 'compileall', '-q', str(Path(checkout) / 'rrcloud.py'),
                        str(Path(checkout) / 'rrc')], check=True, stdout=subprocess.DEVNULL)
    direct_folder = client_folder('127.0.0.1:1')
    commands = {'openscad direct': (['openscad', 'cube.scad', '-ocube.stl'], direct_folder)}
    servers = []
    original = None
    try:  # every server started is stopped, also when a later one fails to start
        for label, checkout in checkouts:
            for kind, name in (('embedded', 'rrcloud serve'), ('lighttpd', 'CGI under lighttpd')):
                server = deployment(kind, checkout)
                servers.append(server)
                commands[f'{label}: openscad.cloud via {name}'] = (
                    [sys.executable, str(Path(checkout) / 'bin' / 'openscad.cloud'), 'cube.scad', '-ocube.stl'],
                    client_folder(server.url + '/'))
        if original_source:
            original = Original(original_source)
            servers.append(original)
            folder = original.client_folder()
            commands[f'{original.label}: openscad.cloud via its CGI under lighttpd'] = (
                [str(folder / 'openscad.cloud'), 'cube.scad', '-ocube.stl'], folder)
        for argv, cwd in commands.values():  # warm-up: bytecode, caches, the tool's first start
            timed(argv, cwd)
        times = {name: [] for name in commands}
        for number in range(rounds):
            names = list(commands)
            names = names[number % len(names):] + names[:number % len(names)]  # each first in turn
            for name in names:
                times[name].append(timed(*commands[name]))
    finally:
        for server in servers:
            server.stop()
    direct = times['openscad direct']
    added = {name: statistics.median(relayed - alone for relayed, alone in zip(seconds, direct))
             for name, seconds in times.items()}
    original_added = added[list(times)[-1]] if original else None
    rows = [['openscad direct (baseline)', rounds, f'{statistics.median(direct):.3f}', '', '']
            + ([''] if original else [])]
    for name, seconds in list(times.items())[1:]:
        row = [name, rounds, f'{statistics.median(seconds):.3f}', f'{added[name]:+.3f}',
               f'{statistics.median(r / d for r, d in zip(seconds, direct)):.2f}x']
        if original:
            row.append(f'{added[name] / original_added:.2f}x')
        rows.append(row)
    header = ['command (cube.scad)', 'rounds', 'median, s', 'added (median of pairs), s', 'x direct']
    if original:
        header.append(f'added x {original.label.split(" (")[0]}\'s')
    return table(rows, header)


# -- 2. the CGI's reads --------------------------------------------------------

def cgi_rows(checkouts, rounds, original_source=None):
    session = requests.Session()
    session.trust_env = False
    targets, servers, originals, floors = {}, [], [], {}
    original_label = None
    try:  # every server started is stopped, also when a later one fails to start
        for label, checkout in checkouts:
            for store in ('empty store', '1,000 tasks'):
                server = deployment('lighttpd', checkout)
                servers.append(server)
                if store != 'empty store':
                    fill_store(server.store, 1000)
                for service in ('info', 'meta'):
                    targets[(service, store, label)] = (f'{server.url}/?service={service}', server)
        if original_source:
            for store in ('empty store', '1,000 tasks'):
                original = Original(original_source)
                originals.append(original)
                original_label = original.label
                if store != 'empty store':
                    original.fill(1000)
                for service in ('info', 'meta'):
                    targets[(service, store, original.label)] = (f'{original.url}?service={service}', None)
        for language in FLOORS:
            floors[language] = FloorServer(language)
        for language, floor in floors.items():
            targets[('floor', language, '')] = (floor.url, None)
        for (service, store, label), (url, _) in targets.items():  # warm-up (a fresh store's meta asks each tool its version once)
            answer = session.get(url, timeout=60)
            answer.raise_for_status()
            if label == original_label and service == 'info':  # the original answers every task it holds
                listed = sum(line.startswith('id: ') for line in answer.text.splitlines())
                if listed != (1000 if store == '1,000 tasks' else 0):
                    raise RuntimeError(f'{label} listed {listed} tasks for the {store}')
        times = {key: [] for key in targets}
        for _ in range(rounds):
            for server in servers:
                fresh_recovery(server)
            for key, (url, _) in targets.items():
                start = time.perf_counter()
                answer = session.get(url, timeout=60)
                times[key].append(time.perf_counter() - start)
                answer.raise_for_status()
    finally:
        for server in servers + originals:
            server.stop()
        for floor in floors.values():
            floor.stop()
    python_floor = times[('floor', 'python', '')]
    perl_floor = times[('floor', 'perl', '')]
    rows = [[f'floor: bare {language} CGI', '', rounds, f'{statistics.median(times[("floor", language, "")]) * 1000:.1f}',
             '', ''] for language in FLOORS]
    for (service, store, label), seconds in times.items():
        if service == 'floor':
            continue
        row = [f'{label}: {service}', store, rounds, f'{statistics.median(seconds) * 1000:.1f}',
               f'{statistics.median(s / f for s, f in zip(seconds, python_floor)):.2f}x',
               f'{statistics.median(s / f for s, f in zip(seconds, perl_floor)):.2f}x']
        if len(checkouts) > 1:
            base = times[(service, store, checkouts[-1][0])]
            row.append(f'{statistics.median(s / b for s, b in zip(seconds, base)):.2f}x'
                       if label != original_label else '')
        if original_label:
            perl = times[(service, store, original_label)]
            row.append(f'{statistics.median(s / p for s, p in zip(seconds, perl)):.2f}x')
        rows.append(row)
    header = ['CGI under lighttpd', 'store', 'requests', 'median, ms', 'x python floor', 'x perl floor']
    if len(checkouts) > 1:
        header.append(f'x {checkouts[-1][0]}')
    if original_label:
        header.append(f'x {original_label.split(" (")[0]}')
    rows = [row + [''] * (len(header) - len(row)) for row in rows]
    return table(rows, header)


def main():
    original = None
    arguments = []
    for argument in sys.argv[1:]:
        if argument.startswith('--rrcloud-019='):
            original = Path(argument.split('=', 1)[1]).resolve()
        else:
            arguments.append(argument)
    rounds = int(arguments[0]) if arguments else 15
    checkouts = [('this checkout', REPO)]
    if len(arguments) > 1:
        checkouts.append(('baseline', Path(arguments[1]).resolve()))
    print(f'load average at the start: {" ".join(f"{x:.2f}" for x in os.getloadavg())}\n')
    print('## openscad.cloud on a small model: the time the relay adds\n')
    print(relay_rows(checkouts, rounds, original))
    sys.stdout.flush()
    print(f'\nload average: {" ".join(f"{x:.2f}" for x in os.getloadavg())}\n')
    print('## CGI reads under lighttpd\n')
    print(cgi_rows(checkouts, rounds * 2, original))
    print(f'\nload average at the end: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')


if __name__ == '__main__':
    main()
