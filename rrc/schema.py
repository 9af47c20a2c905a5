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
    """Record field names of the lifecycle, named once."""
    ID = 'id'
    STATUS = 'status'
    ERROR = 'error'
    # Times as Unix seconds: created, started (left the queue), ended.
    CTIME = 'ctime'
    STIME = 'stime'
    ETIME = 'etime'
    OUT = 'out'
    SIZE_OUT = 'sizeOut'
    # Flags of the busy states beside running (value YES); 0.019 clients read only ``status``.
    QUEUED = 'queued'
    SUSPENDED = 'suspended'
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


YES = 'yes'
