"""Client benchmark (remote relay).

1. Added time of ``openscad.cloud`` through a local embedded server against
   running ``openscad`` directly, for a small and a ~4-second model.
2. Throughput of 30 short tasks over 1, 2 and 3 servers with maxTasks = 1.

Run: .venv/bin/python bench/bench_client.py
"""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

from common import DATA, VENV_BIN, EmbeddedServer, median_seconds, table

import rrcloud
from rrc.cli.output import refresh_if_remote
from rrc.config import load_config
from rrc.store import Store

SLEEP_SERVICE = 'path = /usr/bin:/bin\ncmd = sh\nfileOut = $id\noutput = $fileOut\ninputExt = sh\n'
SLEEP_SCRIPT = 'sleep 1; echo done > "$1"\n'


def added_time(repeat):
    rows = []
    with EmbeddedServer() as server:
        work = tempfile.mkdtemp(prefix='rrcloud-bench-client-')
        with open(os.path.join(work, 'rrcloudrc'), 'w') as handle:
            handle.write(f'servers = 127.0.0.1:{server.port}\n')
        for model, count in (('cube.scad', repeat), ('slow.scad', max(3, repeat // 4))):
            shutil.copy(DATA / model, work)
            direct = median_seconds(lambda: subprocess.run(
                ['openscad', model, '-odirect.stl'], cwd=work, check=True, capture_output=True), count)
            relayed = median_seconds(lambda: subprocess.run(
                [str(VENV_BIN / 'openscad.cloud'), model, '-orelayed.stl'], cwd=work, check=True,
                capture_output=True), count)
            rows.append([model, count, f'{direct:.3f}', f'{relayed:.3f}', f'{relayed - direct:+.3f}',
                         f'{relayed / direct:.2f}x'])
    return table(rows, ['model', 'runs', 'openscad direct, s (baseline)', 'openscad.cloud via server, s',
                        'added, s', 'ratio'])


def throughput(tasks=30):
    rows, base = [], None
    for count in (1, 2, 3):
        servers = [EmbeddedServer('maxTasks = 1\n', {'sleep1': SLEEP_SERVICE}) for _ in range(count)]
        try:
            elapsed = run_batch(servers, tasks)
        finally:
            for server in servers:
                server.stop()
        base = base or elapsed
        rows.append([count, tasks, f'{elapsed:.2f}', f'{base / elapsed:.2f}x'])
    return table(rows, ['servers (maxTasks = 1)', 'tasks of 1 s', 'wall time, s', 'speed-up vs 1 server'])


def run_batch(servers, tasks):
    work = tempfile.mkdtemp(prefix='rrcloud-bench-batch-')
    os.chdir(work)
    with open('rrcloudrc', 'w') as handle:
        handle.write('servers = ' + ', '.join(f'127.0.0.1:{s.port}' for s in servers) + '\n')
    with open('job.sh', 'w') as handle:
        handle.write(SLEEP_SCRIPT)
    os.makedirs('services', exist_ok=True)
    with open('services/sleep1.conf', 'w') as handle:
        handle.write(SLEEP_SERVICE)
    start = time.monotonic()
    for _ in range(tasks):
        with contextlib.redirect_stdout(io.StringIO()):
            code = rrcloud.main(['rrcloud', 'sleep1', 'job.sh'])
        if code != 0:
            raise RuntimeError('submission failed')
    store = Store(work)
    config = load_config()
    while True:
        records = [refresh_if_remote(store, config, store.read_task(t)) for t in store.task_ids()]
        if all(r['status'] != 'busy' for r in records):
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    if any(r['status'] != 'complete' for r in records):
        raise RuntimeError('a task failed')
    return elapsed


def main():
    repeat = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print('## openscad.cloud through a local embedded server\n')
    print(added_time(repeat))
    sys.stdout.flush()
    print('\n## 30 short tasks over 1, 2 and 3 servers\n')
    print(throughput())


if __name__ == '__main__':
    main()
