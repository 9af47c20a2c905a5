"""Result cache benchmark (issue 22, item 3), all in one run:

1. A repeated render of a ~5-second OpenSCAD model (a minkowski of a cube
   with twelve boolean cuts) on ``rrcloud serve`` (loopback): the time to the
   result (the POST with ``wait``, answered when the task has ended, then
   the result's GET) of a render (``cache=no``: the tool runs each time)
   against a hit (the same model again: served from tasks/cache).  Ratio of
   the medians, from the same run.
2. The cost of the key on a miss: ``rrc.cache.key_of_task`` in-process
   (the tool's version read from tasks/.toolversions, the conf files, the
   argv, the inputs hashed) for a project of a 1 MB main file with two
   included files of 20 KB each, against a single small model; and the whole
   lookup on a miss (key + the entry looked for).

Run: .venv/bin/python bench/bench_cache.py [--renders=N] [--hits=N] [--keys=N]
"""
import io
import statistics
import sys
import tarfile
import time

from common import EmbeddedServer, table

import requests  # noqa: E402

MODEL = """\
minkowski() {
  difference() {
    cube(20, center=true);
    for (i = [0:11]) rotate([0, 0, i * 15]) cylinder(h=30, r=3, center=true, $fn=12);
  }
  sphere(1.5, $fn=10);
}
"""


def option(name, default):
    for word in sys.argv[1:]:
        if word.startswith(f'--{name}='):
            return int(word.split('=', 1)[1])
    return default


def time_to_result(session, url, fields):
    """Seconds from the POST to the result's last byte; the record."""
    start = time.perf_counter()
    answer = session.post(url, data=dict(fields, service='openscad', format='json', wait='60'),
                          files={'fileIn0': ('part.scad', MODEL)}, timeout=180)
    record = answer.json()
    assert record.get('status') == 'complete', record
    body = session.get(url + record['out'], timeout=60).content
    assert body
    return time.perf_counter() - start, record


def hit_against_render(renders, hits):
    with EmbeddedServer(config='maxTasks = 2\ncacheSize = 1G\n') as server:
        session = requests.Session()
        session.trust_env = False
        rendered = []
        first = None
        for _ in range(renders):
            seconds, record = time_to_result(session, server.url, {'cache': 'no'} if first else {})
            first = first or record
            assert record.get('cache') != 'hit'
            rendered.append(seconds)
        served = []
        for _ in range(hits):
            seconds, record = time_to_result(session, server.url, {})
            assert record.get('cache') == 'hit' and record['cacheOf'] == first['id'], record
            served.append(seconds)
    return rendered, served


def project_store(folder, main_bytes, include_bytes):
    """A store with a project (main.scad of ``main_bytes`` including two files
    of ``include_bytes``) submitted queued; (store, config, service, record)."""
    from rrc.config import Config
    from rrc.identity import NodeIdentity
    from rrc.services import find_service, load_services
    from rrc.store import Store
    from rrc.submission import Input, create_task_record
    store = Store(folder, NodeIdentity.of())
    config = Config()
    config.dir = folder
    service = find_service(*load_services(folder), 'openscad')
    padding = '// ' + 'x' * 76 + '\n'
    main = 'include <a.scad>\ninclude <b.scad>\ncube(1);\n'
    files = {'main.scad': main + padding * max(0, (main_bytes - len(main)) // len(padding))}
    if include_bytes:
        for name in ('a.scad', 'b.scad'):
            files[name] = 'module m() cube(1);\n' + padding * (include_bytes // len(padding))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
            for name, text in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(text.encode())
                archive.addfile(info, io.BytesIO(text.encode()))
        inputs = [Input(buffer.getvalue(), 'main.scad.tgz')]
    else:
        inputs = [Input(files['main.scad'].encode(), 'main.scad')]
    record = create_task_record(store, config, service, inputs)
    size = sum(len(text.encode()) for text in files.values())
    return store, config, service, record, size


def key_costs(count):
    import tempfile
    from rrc.cache import key_of_task, lookup
    rows = []
    for label, main, include in (('1 MB main + two 20 KB includes (a project)', 1 << 20, 20 << 10),
                                 ('a 100-byte model', 100, 0)):
        store, config, service, record, size = project_store(tempfile.mkdtemp(prefix='rrcloud-bench-key-'),
                                                             main, include)
        key_of_task(store, config, service, record)  # the tool asked once for its version (kept)
        keyed, looked = [], []
        for _ in range(count):
            start = time.perf_counter()
            key = key_of_task(store, config, service, record)
            keyed.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert lookup(store, key) is None
            looked.append(time.perf_counter() - start)
        rows.append((label, f'{size / 1024:.0f} KiB', f'{statistics.median(keyed) * 1000:.2f} ms',
                     f'{min(keyed) * 1000:.2f} ms', f'{statistics.median(looked) * 1000:.3f} ms'))
    return rows


def main():
    renders, hits, keys = option('renders', 3), option('hits', 20), option('keys', 200)
    rendered, served = hit_against_render(renders, hits)
    render, hit = statistics.median(rendered), statistics.median(served)
    print(f'A ~5 s OpenSCAD model on rrcloud serve (loopback): {renders} renders (cache=no), {hits} hits\n')
    print(table([('render (the tool runs)', f'{render:.3f} s', f'{min(rendered):.3f} s', f'{max(rendered):.3f} s'),
                 ('hit (from tasks/cache)', f'{hit * 1000:.1f} ms', f'{min(served) * 1000:.1f} ms',
                  f'{max(served) * 1000:.1f} ms'),
                 ('render / hit', f'{render / hit:.0f}x', '', '')],
                ['time to result', 'median', 'min', 'max']))
    print(f'\nThe key on a miss, in-process, median of {keys}\n')
    print(table(key_costs(keys), ['input', 'bytes hashed', 'key (median)', 'key (min)', 'lookup of a miss']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
