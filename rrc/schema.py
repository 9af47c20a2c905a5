"""The task record: the names of the fields the lifecycle reads and writes,
and the ``status`` words on the wire (the state machine in ``states`` moves
between them)."""

class TaskStatus:
    """The spec's three words for a task's state; other facts live in their own
    fields.  Plain strings (enum costs a CGI request 5 ms, see ExitCode)."""
    BUSY = 'busy'
    COMPLETE = 'complete'
    FAILED = 'failed'


class Field:
    """The record's field names, named once (a record travels as ``key: value``
    lines and as the HTTP answer, so these are the wire's names too)."""
    ID = 'id'
    SERVICE = 'service'
    STATUS = 'status'
    ERROR = 'error'
    EXIT_CODE = 'exitCode'
    # OpenSCAD's engine that rendered the task: cgal or manifold (rrc/engines.py).
    ENGINE = 'engine'
    # Who asked (an address, or "localhost" for the command line) and what
    # the runner composes the argv from: inputs, checked arguments, the output
    # format; ``cmd`` is only for showing.
    CLIENT = 'client'
    IN = 'in'
    # The file names the client sent its inputs with, cleaned (rrc/inputnames.py).
    INPUT_NAMES = 'inputNames'
    PREARGS = 'preargs'
    NATIVE_ARGS = 'nativeArgs'
    PARAMS = 'params'
    OUT_EXT = 'outExt'
    CMD = 'cmd'
    ARGS = 'args'  # a task started from the command line: its words (content as its size)
    NOTIFIER = 'notifier'
    NOTIFIER_EVENTS = 'notifierEvents'  # only when not the default (ended): started,ended
    # Where a queued task stands in its node's queue (rrc/order.py): its
    # priority (absent: 0), and where a move put it (absent: not moved;
    # negative: moved to the front, positive: to the back).
    PRIORITY = 'priority'
    QUEUE_POSITION = 'queuePosition'
    SIZE_IN = 'sizeIn'
    # A print's DONE/TOTAL (live in the event log; the final record keeps the last).
    PROGRESS = 'progress'
    # Times as Unix seconds: created, started (left the queue), ended.
    CTIME = 'ctime'
    STIME = 'stime'
    ETIME = 'etime'
    OUT = 'out'
    SIZE_OUT = 'sizeOut'
    # Flags of the busy states beside running (value YES); 0.019 clients read only ``status``.
    QUEUED = 'queued'
    SUSPENDED = 'suspended'
    # A print whose built-in sender runs and takes pause/resume/cancel/stop
    # (YES), and the cancel or stop asked of it.
    SENDER = 'sender'
    PRINT_CONTROL = 'printControl'
    # A print that named its printer: its name (``printers/NAME.conf``; the port is in nativeArgs).
    PRINTER = 'printer'
    WAITING = 'waiting'
    # Processes, each as pid plus kernel start time: the detached runner and the tool's group.
    RUNNER = 'runner'
    RUNNER_START = 'runnerStart'
    PID = 'pid'
    PID_START = 'pidStart'
    # Which node runs the task, and the boot its processes above belong to.
    NODE = 'node'
    NODE_BOOT = 'nodeBoot'
    # The local record of a task that runs on a server.
    REMOTE_ID = 'remoteId'
    SERVER = 'server'
    # Pipelines: a job's record lists its steps; each step's record names its
    # job and its place (1-based), and, when it runs on a server of this
    # node's list, that server.
    STEPS = 'steps'
    JOB = 'job'
    STEP = 'step'
    STEP_SERVER = 'stepServer'
    INPUT_FROM = 'inputFrom'  # the step whose output became this step's first input
    # A farm (backend = rq): the worker that runs the task (its node is the
    # worker's name then) and which run of it this is (1, then 2 after a
    # lost worker): a lost run's late words are refused.
    WORKER = 'worker'
    ATTEMPT = 'attempt'
    # The result cache (rrc/cache.py): ``cache: no`` a task that must not be
    # served from it nor stored in it (``--no-cache``, ``cache=no``); ``cache:
    # hit`` a task served from it, ``cacheOf`` the task whose result it is;
    # ``cacheKey`` the SHA-256 the task was looked up by, ``toolVersion`` the
    # tool version in that key (on a farm: its worker's).
    CACHE = 'cache'
    CACHE_OF = 'cacheOf'
    CACHE_KEY = 'cacheKey'
    TOOL_VERSION = 'toolVersion'
    # What a G-code file the task produced (slic3r's result) or received (a
    # print's input) says of its print (rrc/gcodemeta.py): code lines, layers,
    # layer height (mm), print time (s: the slicer's estimate where the file
    # has one, else the moves'; a print's "time left" reads this), the moves'
    # time (s), filament (mm and g), the box of what is printed
    # (xmin,ymin,zmin,xmax,ymax,zmax in mm), the slicer and a few of its
    # settings (key=value,...), lines too long to read.  A pipeline job keeps
    # those of its steps.  0.019 clients ignore them.
    GCODE_LINES = 'gcodeLines'
    GCODE_LAYERS = 'gcodeLayers'
    GCODE_LAYER_HEIGHT = 'gcodeLayerHeight'
    GCODE_PRINT_SECONDS = 'gcodePrintSeconds'
    GCODE_MOVE_SECONDS = 'gcodeMoveSeconds'
    GCODE_FILAMENT_MM = 'gcodeFilamentMm'
    GCODE_FILAMENT_GRAMS = 'gcodeFilamentGrams'
    GCODE_BOX = 'gcodeBox'
    GCODE_SLICER = 'gcodeSlicer'
    GCODE_SETTINGS = 'gcodeSettings'
    GCODE_SKIPPED_LINES = 'gcodeSkippedLines'


GCODE_FIELDS = tuple(value for name, value in vars(Field).items() if name.startswith('GCODE_'))

YES = 'yes'
# The service name of a pipeline job's record (rrc/pipeline.py); no conf may take it.
JOB_SERVICE = 'pipe'
