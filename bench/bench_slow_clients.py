"""Slow clients (issue 18): ``meta``'s latency on ``rrcloud serve`` while 1,100
connections trickle their request heads, against the same server quiet.

One ``rrcloud serve`` of this checkout with the default rrcloudrc
(``requestHeadTimeout`` 10 s, ``maxConnectionsPerClient`` 64).  First quiet,
then under a slowloris from 127.0.0.2 (Linux routes all of 127/8 to lo): 1,100
connections, each sending a request line, then one header line every 8 s,
never ending its head; the attacker opens again each second every
connection the server closed.  In each phase, from 127.0.0.1: REQUESTS ``meta``
requests, each on a new connection (as ``curl`` makes one), 0.3 s apart, so
the loaded phase spans the head deadline's cuts and the attacker's lines;
then ``curl -s URL?service=meta`` itself a few times (its own time_total).

The attacker is a process of its own (this script with ``--attack PORT``).
With a BASELINE checkout, its server gets the same attack and REQUESTS // 5
``meta`` requests, each given up after 2 s.

Run: .venv/bin/python bench/bench_slow_clients.py [REQUESTS] [BASELINE_CHECKOUT]
"""
import http.client
import statistics
import subprocess
import sys
import threading
import time

from common import REPO, CheckoutServer, table

from helpers import HeaderTrickle, raise_open_files

CONNECTIONS = 1100
TRICKLE_SECONDS = 8
SPACING_SECONDS = 0.3
CURL_RUNS = 10


class Attack:
    """The slowloris, in a process of its own (this script with ``--attack
    PORT``): its work never holds up the client being timed."""

    def __init__(self, port):
        self.port = port
        self.process = None
        self.report = ''

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, __file__, '--attack', str(self.port)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.process.stdout.readline()  # the first 1,100 are open (or closed by the server)
        return self

    def __exit__(self, *exc):
        self.process.stdin.close()  # the attacker's signal to stop
        self.report = self.process.stdout.read().strip()
        self.process.wait()


def attack(port):
    """The attacker's process: HeaderTrickle's connections, a header line on
    each every TRICKLE_SECONDS, and every one the server closed opened again
    each second (a persistent attacker), until stdin closes; then one line
    of what it did."""
    flood = HeaderTrickle(port, CONNECTIONS, source='127.0.0.2')
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    opened, seconds = len(flood.connect().sockets), 0
    print('ready', flush=True)
    while not stop.wait(1.0):
        seconds += 1
        if seconds % TRICKLE_SECONDS == 0:
            flood.trickle()
        before = len(flood.sweep())
        opened += len(flood.connect().sockets) - before
    flood.sweep()  # the last ones the server closed, counted
    flood.close()
    print(f'{seconds} s, {opened} connections opened, {flood.closed} closed by the server', flush=True)
    return 0


def meta_seconds(port, timeout):
    """The time of one ``meta`` on a new connection from 127.0.0.1; None when it
    did not answer 200 within ``timeout``."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        connection.request('GET', '/?service=meta')
        response = connection.getresponse()
        response.read()
        return time.perf_counter() - start if response.status == 200 else None
    except OSError:
        return None
    finally:
        connection.close()


def curl_seconds(url):
    """curl's own total time for one ``meta``; None when it failed (2 s at most)."""
    done = subprocess.run(['curl', '-s', '-o', '/dev/null', '--max-time', '2', '-w', '%{http_code} %{time_total}',
                           f'{url}?service=meta'], capture_output=True, text=True)
    code, _, seconds = done.stdout.partition(' ')
    return float(seconds) if code == '200' else None


def sample(port, url, requests, timeout):
    """(meta times, curl times), None for each one that did not answer in time."""
    metas = []
    for _ in range(requests):
        metas.append(meta_seconds(port, timeout))
        time.sleep(SPACING_SECONDS)
    return metas, [curl_seconds(url) for _ in range(CURL_RUNS)]


def row(name, times):
    """A table row: how many were sent and answered, the median and the slowest answer."""
    answered = [t for t in times if t is not None]
    if not answered:
        return [name, len(times), 0, '-', '-']
    return [name, len(times), len(answered), f'{statistics.median(answered) * 1000:.1f}',
            f'{max(answered) * 1000:.1f}']


def main(argv):
    """Both phases on this checkout (and the baseline's loaded one); print the table and ratios."""
    requests = int(argv[1]) if len(argv) > 1 else 50
    baseline = argv[2] if len(argv) > 2 else None
    raise_open_files(CONNECTIONS + 400)
    server = CheckoutServer(REPO)
    try:
        quiet = sample(server.port, server.url, requests, 10)
        with Attack(server.port) as attacker:
            loaded = sample(server.port, server.url, requests, 10)
    finally:
        server.stop()
    rows = [row('meta, quiet (baseline)', quiet[0]), row('meta, under the trickle', loaded[0]),
            row('curl meta, quiet', quiet[1]), row('curl meta, under the trickle', loaded[1])]
    if baseline:
        rows += [row(f'meta under the trickle, {baseline} (2 s timeout)', attack_baseline(baseline, requests // 5))]
    print(f'{CONNECTIONS} trickling connections from 127.0.0.2, a header line each {TRICKLE_SECONDS:.0f} s: '
          f'{attacker.report}\n')
    print(table(rows, ['requests from 127.0.0.1', 'sent', 'answered 200', 'median, ms', 'max, ms']))
    answered = [[t for t in times if t is not None] for times in (quiet[0], loaded[0])]
    print(f'\nunder the trickle / quiet: median {statistics.median(answered[1]) / statistics.median(answered[0]):.2f}x, '
          f'max {max(answered[1]) / max(answered[0]):.2f}x')
    return 0


def attack_baseline(checkout, requests):
    """``meta`` times (None: no answer within 2 s) of another checkout's server under the same attack."""
    server = CheckoutServer(checkout)
    try:
        with Attack(server.port):
            return [meta_seconds(server.port, 2) for _ in range(requests)]
    finally:
        server.stop()


if __name__ == '__main__':
    if sys.argv[1:2] == ['--attack']:
        sys.exit(attack(int(sys.argv[2])))
    sys.exit(main(sys.argv))
