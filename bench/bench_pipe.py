"""A pipeline's hand-off: from a step's end to the next step's start.

Two embedded servers on loopback, A and B.  Each round submits, in
alternation, two two-step pipes to A (``echo`` then ``echo``):

- local (the baseline): both steps on A: the runner of step 1 queues step 2
  and starts its runner;
- remote: step 2 on B: the runner of step 1 sends it to B (upload, B
  starts its runner) and follows it there.

The hand-off is step 2's ``stime`` (its runner started: on A for local, on B
for remote) minus step 1's ``etime`` (its end recorded on A), both from the
records, on one clock.  Also: the end of step 2 on B to the job's end on A
(B's long-poll answer, result and log fetched back).

    .venv/bin/python bench/bench_pipe.py [ROUNDS]
"""
import statistics
import sys
import time

from common import EmbeddedServer, table

from helpers import plain_session
from rrc.store import Store


def run_pipe(session, a, b=None):
    """One two-step pipe on A (step 2 on B when given); returns (hand-off s, end fetched s)."""
    fields = {'service': 'pipe', 'format': 'json', 'wait': '60', 'step1': 'echo', 'step2': 'echo'}
    if b:
        fields['step2.server'] = b.address
    answer = session.post(a.url, data=fields, files={'step1.fileIn0': ('a.txt', b'hello\n')}, timeout=90)
    job = answer.json()
    assert job.get('status') == 'complete', job
    first, second = (Store(str(a.root)).read_task(step_id) for step_id in job['steps'].split(','))
    there = Store(str(b.root)).read_task(second['remoteId']) if b else second
    return float(there['stime']) - float(first['etime']), float(job['etime']) - float(there['etime'])


def main(rounds):
    session = plain_session()
    with EmbeddedServer(config='maxTasks = 2\n') as b:
        with EmbeddedServer(config=f'maxTasks = 2\nservers = {b.address}\n') as a:
            run_pipe(session, a), run_pipe(session, a, b)  # warm-up: imports, page cache
            local, remote, back = [], [], []
            for _ in range(rounds):
                local.append(run_pipe(session, a)[0])
                hand_off, fetched = run_pipe(session, a, b)
                remote.append(hand_off)
                back.append(fetched)
    med = {name: statistics.median(values) for name, values in
           (('local', local), ('remote', remote), ('back', back))}
    rows = [
        ('step 1 end -> step 2 start, both on A (baseline)', f'{med["local"] * 1000:.0f} ms', '1.00x'),
        ('step 1 end on A -> step 2 start on B', f'{med["remote"] * 1000:.0f} ms',
         f'{med["remote"] / med["local"]:.2f}x'),
        ('step 2 end on B -> job end on A (result fetched)', f'{med["back"] * 1000:.0f} ms',
         f'{med["back"] / med["local"]:.2f}x'),
    ]
    print(f'{rounds} rounds, alternating, medians; 90th percentile of the remote hand-off: '
          f'{sorted(remote)[int(len(remote) * 0.9) - 1] * 1000:.0f} ms')
    print(table(rows, ('hand-off', 'median', 'against the baseline')))


if __name__ == '__main__':
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
    time.sleep(0)
