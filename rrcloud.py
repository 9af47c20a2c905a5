#!/usr/bin/env python3
"""rrcloud: relay 3D-printing compute work to one or many servers.

A Python port of RepRapCloud 0.019.  One program, many faces: the ``rrcloud``
command line, the ``*.cloud`` wrappers that behave like the tools they wrap,
the CGI gateway, the embedded server (``rrcloud serve``), any WSGI server
(``rrcloud:application``) and the detached runner of one task
(``rrcloud _run ID``) and a pipeline step's forwarder (``rrcloud _forward ID``).  This file only picks the mode; the code lives in the
``rrc`` package beside it, and each mode imports just its own modules (under
CGI every request starts Python anew).
"""
import os
import sys

from rrc.errors import ExitCode, RRCloudError


def run_mode(program, args):
    """Run the mode that the program name, the environment or the subcommand asks for."""
    if program.endswith('.cloud'):
        from rrc.cli.wrapper import wrapper
        return wrapper(program[:-len('.cloud')], args)
    if os.environ.get('GATEWAY_INTERFACE'):
        from rrc.web.cgi import run_cgi
        return run_cgi()
    if args[:1] == ['_run']:
        from rrc.runner import cmd_run_internal
        return cmd_run_internal(args[1:])
    if args[:1] == ['_forward']:
        from rrc.forward import cmd_forward_internal
        return cmd_forward_internal(args[1:])
    from rrc.cli.main import cli
    return cli(args)


def __getattr__(name):
    """``rrcloud:application`` for any WSGI server, built when first asked for
    (a WSGI server looks it up once, when it loads the module)."""
    if name == 'application':
        from rrc.web.app import App
        return App.from_config()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def main(argv=None) -> int:
    """Entry point: the mode comes from the program name and the environment."""
    argv = list(sys.argv if argv is None else argv)
    program = os.path.basename(argv[0]) if argv else 'rrcloud'
    args = argv[1:]
    traceback = '--traceback' in args
    try:
        return int(run_mode(program, args))
    except RRCloudError as exc:
        if traceback:
            raise
        print(f'rrcloud: error: {exc}', file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        if traceback:
            raise
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        # No message: the reader chose to stop.  stdout goes to /dev/null so
        # that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitCode.PIPE_CLOSED)
    except OSError as exc:
        if traceback:
            raise
        where = f': {exc.filename}' if exc.filename else ''
        print(f'rrcloud: error: {exc.strerror or exc}{where}', file=sys.stderr)
        return int(ExitCode.TASK_FAILED)


if __name__ == '__main__':
    sys.exit(main())
