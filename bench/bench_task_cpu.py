"""The machine's CPU per task, this checkout against a baseline checkout.

An `rrcloud serve` of each checkout (its own store, `maxTasks` the default)
takes rounds of echo tasks posted one after another; a round ends when all
have ended.  The CPU the whole machine spent in the round (``/proc/stat``,
everything but idle and iowait: the server, the runners, their sandboxes and
tools, the posting client) divided by the tasks is one sample.  The two
checkouts take turns, round by round, so the ratio holds while the machine's
speed drifts; run it on a quiet machine.

Run: .venv/bin/python bench/bench_task_cpu.py BASELINE_CHECKOUT [ROUNDS] [TASKS]
     (e.g. git worktree add /tmp/baseline a2d4313, the commit before issue 13's work)
"""
import os
import statistics
import sys
import time

from common import REPO, CheckoutServer, table

from helpers import plain_session, wait_for


def busy_ticks():
    with open('/proc/stat') as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return sum(values) - values[3] - values[4]


def round_cpu(session, server, tasks):
    """CPU seconds per task of one round of ``tasks`` echo tasks."""
    start = busy_ticks()
    ids = []
    for number in range(tasks):
        answer = session.post(server.url, data={'service': 'echo', 'format': 'json'},
                              files={'fileIn0': ('a.txt', b'hello %d' % number)}, timeout=60)
        ids.append(answer.json()['id'])

    def ended():
        records = [(server.root / 'tasks' / 'info' / task_id).read_text() for task_id in ids]
        return all('\nstatus: busy\n' not in '\n' + text for text in records)
    wait_for(ended, 'the round to end', timeout=300, interval=0.1)
    time.sleep(0.5)  # the last runners tidy up (slot, dispatch)
    return (busy_ticks() - start) / os.sysconf('SC_CLK_TCK') / tasks


def main(baseline, rounds, tasks):
    session = plain_session()
    servers = {'this checkout': CheckoutServer(REPO), 'baseline': CheckoutServer(baseline)}
    samples = {name: [] for name in servers}
    try:
        for name, server in servers.items():
            round_cpu(session, server, 10)  # warm-up
        for _ in range(rounds):
            for name, server in servers.items():
                samples[name].append(round_cpu(session, server, tasks))
    finally:
        for server in servers.values():
            server.stop()
    ratios = [a / b for a, b in zip(samples['this checkout'], samples['baseline'])]
    rows = [(name, f'{statistics.median(values) * 1000:.0f} ms') for name, values in samples.items()]
    print(f'{rounds} rounds of {tasks} echo tasks each, in turn; median CPU per task (whole machine)')
    print(table(rows, ('checkout', 'CPU per task')))
    print(f'this checkout / baseline, round by round: median {statistics.median(ratios):.2f}x '
          f'(min {min(ratios):.2f}x, max {max(ratios):.2f}x)')


if __name__ == '__main__':
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6, int(sys.argv[3]) if len(sys.argv) > 3 else 60)
