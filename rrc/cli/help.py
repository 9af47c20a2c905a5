"""The help texts of the rrcloud command."""

from .. import DEFAULT_PORT


HELP = f"""\
usage: rrcloud [OPTIONS] SERVICE ARGS...     start a task (prints "id: ID")
       rrcloud [OPTIONS] info [--short] [ID] show one task or all of them
       rrcloud [OPTIONS] ls [--status=STATE] [-n N]  one line per task (see ls --help)
       rrcloud [OPTIONS] get ID [-o NAME]    save a task's result (as its input's name: cube.stl)
       rrcloud [OPTIONS] rm ID...            remove ended tasks with their files
       rrcloud [OPTIONS] clean --older-than=DAYS   remove the tasks that ended over DAYS days ago
       rrcloud [OPTIONS] history [--since=DAYS]  per service and printer: what ended tasks did
       rrcloud [OPTIONS] printers            the named printers (printers/NAME.conf): port, state, task
       rrcloud [OPTIONS] meta                show what this machine offers
       rrcloud [OPTIONS] kill ID             stop a busy task (here, or at the server it was sent to)
       rrcloud [OPTIONS] suspend ID          pause a running task's tool (its time stops counting)
       rrcloud [OPTIONS] resume ID           continue a suspended task (suspend and resume print
                                             the state it is in then)
       rrcloud [OPTIONS] pause ID            pause a print (pause G-code; resume goes on); suspend
                                             of a print does the same
       rrcloud [OPTIONS] cancel ID           cancel a print (heaters, fan, motors off): failed, cancelled
       rrcloud [OPTIONS] stop ID             emergency stop of a print (M112 at once)
       rrcloud [OPTIONS] pipe SERVICE ARGS... -- SERVICE ARGS...   a job of steps (see pipe --help)
       rrcloud [OPTIONS] watch ID            follow a task or job live (status, log, progress)
       rrcloud [OPTIONS] move ID front|back  reorder a queued task: start it next, or last
       rrcloud serve [--bind ADDR] [--port N] serve the HTTP API (default port 4468)
       rrcloud serve --check [--port N]      0: rrcloud serves there, 5: nothing does, 4: another server
       rrcloud worker --server=URL [--services=a,b] [--printer=NAME] [--burst]
                                             run a farm's tasks (and prints on NAME, from
                                             printers/NAME.conf here) for a front-end
       rrcloud print [--baud=N] [--timeout=S] [--comm-timeout=S] PORT FILE   send G-code to a printer
       SERVICE.cloud ARGS...                 run SERVICE like the tool itself
       SERVICE.cloud --help | --version      what it passes on, where it runs; versions

Relays 3D-printing work (openscad, openjscad, slic3r, povray, printrun, echo)
to a task store under the current folder (or `dir` in rrcloudrc).

ARGS are classified like this, in order: the service's output argument
(e.g. -oOUT.stl) names where a synchronous run writes its result, and, for a
tool that picks its format from the name (openscad: stl, off, amf, 3mf, dxf,
svg, csg, png), the format; an argInput prefix (e.g. --load=FILE, -pFILE)
marks an input file with its prearg; an allowed native switch or argument is
passed on; a parameter (openscad: -D NAME=VALUE, -P SET) is passed on when
its value is a plain value; an existing file of a kind the service takes is
an input (with the files it includes beside it); anything else that does not
look like an option or a file name is content, written to an input file.
The forms with a space (--load FILE, -o FILE, --imgsize 320,240) work too.
Anything else is refused, naming what the service takes.

OPTIONS may also stand after the command, as in RepRapCloud 0.019:
`rrcloud info ID --format=json`, `rrcloud openscad part.scad --s=HOST`.
After SERVICE, an argument the service allows (an allowed native argument,
an argInput prefix such as --load=FILE, its output argument such as
--output=FILE) is the service's; any other option below is rrcloud's; any
other --WORD is an error naming it.  `--` ends the options.  The same holds
for SERVICE.cloud ARGS.

options:
  --local            run here even when servers are configured
  --s=SERVER         send the task to SERVER (host, host:port or URL); with
                     info, ls, meta, kill, suspend, resume, pause, cancel, stop,
                     watch, move, get, rm, clean or history: ask SERVER instead of this store
  --notifier=URL     GET URL when the task ends ($id, $myip are filled in;
                     signed when the server has notifierSecret)
  --notifier-events=started,ended
                     when to GET it: ended (the default), started (once the
                     tool runs), or both
  --priority=N       the task's place in the queue while every maxTasks slot is
                     busy: an integer from -100 to 100, higher starts first
                     (default 0; equal priorities start in submission order)
  --no-cache         run the tool even when the result cache holds this task's
                     result, and keep its result out of the cache
  --sync             wait for the task and mirror its exit code (no output
                     argument: echo prints its text, other services their record)
  --short            info: one line per task, as ls
  --format=json      print JSON instead of key: value lines
  --traceback        show the Python traceback of an error
  -h, --help         show this help
  --version          show the version, and each configured server's (or --s's)

configuration: ~/.rrcloudrc, then ./rrcloudrc (or the file in RRCLOUD_CONFIG)
keys: port, servers, SERVICE.servers, timeout, maxDataRetention, maxTasks, dir,
reconnectTimeout, serverName (all keys: the shipped rrcloudrc)

exit codes:
  0    success (task started, or finished complete)
  1    the task failed (wrappers: the tool's own exit code when it has one)
  2    usage: bad option, argument, id or service
  3    no such task
  4    bad configuration or service file
  5    no server answered ("cannot reach HOST:PORT (connection refused): is
       rrcloud serve running there?")
  130  interrupted (Ctrl-C)
  141  the reader of the output went away (e.g. `rrcloud info | head`)
"""
SERVE_HELP = f"""\
usage: rrcloud serve [--bind ADDR] [--port N]

Serves rrcloud's HTTP API (the spec's POST and GET, a page of the tasks for a
browser) with the embedded server until it is stopped.  Its task store is
`dir` of rrcloudrc, else the current folder; each task runs detached, in its
sandbox.

  --bind ADDR   the address to listen on (default 0.0.0.0: every interface)
  --port N      the port (default: port in rrcloudrc, else {DEFAULT_PORT})
  --check       only tell who answers on the port: rrcloud (exit 0, with the
                limits its tools run within), nothing (5) or another server (4)
  -h, --help    show this help

Who may use it: allow, token, allowOrigins and allowHosts (the names it
answers to) in rrcloudrc.  What a task's tool and a client may use: maxMemory,
maxProcesses, maxOutputSize, maxLogSize, timeout, maxSuspend, maxWaits,
maxWaitsPerClient, maxConnectionsPerClient, requestHeadTimeout
(docs/SECURITY.md).
"""
PIPE_HELP = """\
usage: rrcloud [OPTIONS] pipe SERVICE ARGS... [--s=SERVER] -- SERVICE ARGS... [--s=SERVER] -- ...

Runs a chain of steps as one job: the output of each step is the main input
of the next (a later step takes only inputs with a prefix, e.g. slic3r's
--load=FILE).  Each step is a task with its own id; `info JOB` shows them
all, `kill JOB` kills the running step and cancels the rest.  A failed step
fails the job ("step 1 (openscad) failed: exit code 1") and cancels the rest.

  --s=SERVER    after a step's words: run that step on SERVER (else its
                service's SERVICE.servers, or servers, from rrcloudrc)
  --local       after a step's words: run that step here
  --sync        wait for the last step; its output argument (e.g.
                --output=FILE for slic3r) says where its result goes; the
                exit code is the failed tool's
  (other options, anywhere, are the pipe's: --format, --notifier)

When every step runs on a server, the pipe goes to the first step's server,
which sends each output on to the next step's server (it must be in that
server's own servers list).  At most maxSteps (8) steps.

example:
  rrcloud --sync pipe openscad part.scad -- slic3r --load=pla.ini --output=part.gcode
"""
WATCH_HELP = """\
usage: rrcloud [--s=SERVER] [--format=json] watch ID

Follows a task (or a job) until it ends: its status changes, its tool's log
lines as they are written, notes, a job's steps, and its progress: the
tool's own fraction (POV-Ray) or the stage it is in (Slic3r, OpenSCAD), with
the time left, as a bar on a terminal, a line per update otherwise.  Exits
with the task's code: 0 when it completes, else what `rrcloud --sync` gives
for it (1, or the tool's own exit code).  Ctrl-C stops the watching, not the
task.

A task of this store is followed from its files; one sent to a server, or
with --s=SERVER, from the server's event stream (GET ?service=events&id=ID,
Server-Sent Events), reconnecting where it left off.  A RepRapCloud 0.019
server has no events: its status is polled instead.

  --s=SERVER     watch a task of SERVER (host, host:port or URL)
  --format=json  one JSON object per event, as the server's stream sends it
  -h, --help     show this help
"""
LS_HELP = """\
usage: rrcloud [--s=SERVER] [--format=json] ls [--status=STATE] [-n N]

One line per task, oldest first, in seven columns: id, service, state, age,
run time, the main input's own file name, and the result's name (a failed
task: its reason, which may hold spaces).  Each of the first six is one word,
`-` when there is nothing to show; a header line only on a terminal.  The
state is queued (waiting for a slot), running, suspended, waiting (a pipe's
step not yet started), complete or failed.  --format=json gives the same as
objects, ages in seconds.  (`rrcloud info --short` is the same listing.)

  --status=STATE  only the tasks in STATE; busy: queued, running, suspended
                  or waiting (the word RepRapCloud 0.019 shows for them)
  -n N            only the last N of them
  --s=SERVER      that server's tasks instead of this store's
"""
GET_HELP = """\
usage: rrcloud [--s=SERVER] get ID [-o NAME]

Saves a complete task's result.  Without -o it is named after the task's
main input with the result's extension (cube.scad -> cube.stl; the result's
own name when the input was content), in the current folder, and a file of
that name is never overwritten.  A task sent to a server is asked about
first, and its result comes home into tasks/out/ too; with --s=SERVER the
result is fetched from that server.  Prints `saved: NAME`.

  -o NAME, --output=NAME   write it to NAME (overwritten if it is there), into
                           NAME as above when NAME is a folder, to stdout for -
"""
RM_HELP = """\
usage: rrcloud [--s=SERVER] rm ID...
       rrcloud [--s=SERVER] clean --older-than=DAYS

rm removes each ended (complete or failed) task with its own files: record,
inputs, result, log, events.  A job goes with its steps; a step alone is
refused while its job is there.  A task still busy is refused (rrcloud kill
it first), so is another node's task in a shared store.  A task sent to a
server: its local record goes (the server keeps its own until its
maxDataRetention; --s=SERVER rm ID removes it there).

clean removes every such task that ended more than DAYS days ago (0.5 is
twelve hours; 0: every ended task).  Both print `removed: ID` for each task
removed (--format=json: {"removed": [...]}); an id that is not removed is
said on stderr, and the exit code is the first refusal's (2, or 3 for no
such task).  Besides, every store removes its ended tasks once they are
maxDataRetention hours old (24), when its tasks are listed.

  --s=SERVER      remove at that server (service=remove, service=clean)
"""
HISTORY_HELP = """\
usage: rrcloud [--s=SERVER] [--format=json] history [--since=DAYS]

What the tasks that ended (in the last DAYS days; 0.5 is twelve hours) did,
from the store's history file, which keeps one line per ended task after
rm, clean and maxDataRetention have removed the task itself (the last 4 to
8 MiB of lines, some 20,000 tasks or more).  One block per service: tasks,
successes, failures, totalRunSeconds, medianRunSeconds, bytesIn, bytesOut;
one per printer (a print's port, or its named printer): prints, completed,
printSeconds, the filament its G-code's metadata gave, cancelled (killed or
cancelled), failed, and the reasons of both.  --format=json: one object.

  --s=SERVER      that server's history (service=history)
"""
# 'print': None is the G-code sender's own PRINT_HELP, read from rrc/printing.py
# when asked for (every other command, `rrcloud --sync` too, leaves the sender unloaded).
SUBCOMMAND_HELP = {'serve': SERVE_HELP, 'print': None, 'pipe': PIPE_HELP, 'watch': WATCH_HELP,
                   'ls': LS_HELP, 'get': GET_HELP, 'rm': RM_HELP, 'clean': RM_HELP,
                   'history': HISTORY_HELP}
USAGE = HELP.split('\n\n', 1)[0] + '\n\nrrcloud --help shows every option.\n'
