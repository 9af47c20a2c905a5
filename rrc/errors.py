"""Errors and exit codes: each error knows its exit code and its HTTP status."""

import errno


# OSError numbers that mean "the disk is full" (507 to an HTTP client).
DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def reason_without_paths(exc):
    """An error's text as a client may read it: an OSError that names files
    gives only its reason ("File name too long"), since its file names are
    the server's own paths; any other error its text."""
    if isinstance(exc, OSError) and (exc.filename is not None or exc.filename2 is not None):
        return exc.strerror or exc.__class__.__name__
    return str(exc)


class ExitCode:
    """Exit codes of the rrcloud command (wrappers mirror the tool's code).

    Plain ints, not an enum: importing enum (and the collections it pulls in)
    costs every CGI request about 5 ms, more than all of rrcloud's own modules."""
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFIG = 4
    NO_SERVER = 5
    INTERRUPTED = 130
    PIPE_CLOSED = 141  # the reader of stdout went away (``| head``), as SIGPIPE would


class RRCloudError(Exception):
    """Base of every error rrcloud reports as one line."""
    exit_code = ExitCode.TASK_FAILED
    http_status = 500


class UsageError(RRCloudError):
    """Bad command line or bad request: the caller must change something."""
    exit_code = ExitCode.USAGE
    http_status = 400


class ConfigError(RRCloudError):
    """A configuration or service file is wrong; the message names file:line."""
    exit_code = ExitCode.CONFIG


class NotFound(RRCloudError):
    """No such task, file or service."""
    exit_code = ExitCode.NOT_FOUND
    http_status = 404


class NoServer(RRCloudError):
    """No configured server answered."""
    exit_code = ExitCode.NO_SERVER
    http_status = 502


class PrinterError(RRCloudError):
    """The printer could not be opened, or stopped answering."""


class HTTPError(RRCloudError):
    """An error answer with its own status code."""

    def __init__(self, status, message, headers=()):
        super().__init__(message)
        self.http_status = status
        self.headers = list(headers)
