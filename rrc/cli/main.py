"""The ``rrcloud`` command: dispatch to a subcommand."""

import sys

from .. import PROTOCOL_VERSION, __version__
from .commands import (cmd_cancel, cmd_info, cmd_kill, cmd_ls, cmd_meta, cmd_move, cmd_pause, cmd_resume, cmd_stop,
                       cmd_submit, cmd_suspend)
from .help import HELP, SUBCOMMAND_HELP, USAGE
from .options import CLI_COMMANDS, parse_options, split_command_line
from ..errors import ExitCode, UsageError
from ..remote import server_url


def cli(args):
    """The ``rrcloud`` command."""
    options, rest = parse_options(args)
    if options.help or options.version:
        return show_about(options)
    if rest and rest[0] in SUBCOMMAND_HELP and {'-h', '--help'} & set(rest[1:]):
        from ..printing import PRINT_HELP
        sys.stdout.write(SUBCOMMAND_HELP[rest[0]] or PRINT_HELP)
        return ExitCode.OK
    # The server and the sender are imported only when asked for: each
    # subcommand loads just its own modules.
    if rest and rest[0] == 'serve':
        from ..web.embedded import serve
        return serve(rest[1:])
    if rest and rest[0] == 'print':
        from ..printing import cmd_print
        return cmd_print(rest[1:])
    if rest and rest[0] == 'worker':
        from ..worker import cmd_worker
        return cmd_worker(rest[1:])
    if not rest:
        sys.stderr.write(USAGE)
        return ExitCode.USAGE
    command = rest[0]
    if command == 'pipe':  # each step's words are judged by its own service
        from .options import Context
        from .pipe import cmd_pipe
        return cmd_pipe(Context(options), rest[1:])
    ctx, rest = split_command_line(options, command, rest[1:])
    if options.help or options.version:
        return show_about(options)
    if options.short and command not in ('info', 'ls'):
        raise UsageError('--short goes with info (or use rrcloud ls)')
    if options.priority is not None and command in CLI_COMMANDS:
        raise UsageError('--priority goes with a task to start (rrcloud move reorders a queued one)')
    if command == 'watch':  # its stream reader is loaded by it alone
        from .watch import cmd_watch
        return cmd_watch(ctx, rest)
    if command == 'get':
        from .get import cmd_get
        return cmd_get(ctx, rest)
    if command == 'history':
        from .history import cmd_history
        return cmd_history(ctx, rest)
    if command == 'printers':
        from .printers import cmd_printers
        return cmd_printers(ctx, rest)
    if command in ('rm', 'clean'):
        from .remove import cmd_clean, cmd_rm
        return (cmd_rm if command == 'rm' else cmd_clean)(ctx, rest)
    if command in CLI_COMMANDS:
        return {'info': cmd_info, 'meta': cmd_meta, 'kill': cmd_kill, 'ls': cmd_ls,
                'suspend': cmd_suspend, 'resume': cmd_resume, 'move': cmd_move,
                'pause': cmd_pause, 'cancel': cmd_cancel, 'stop': cmd_stop}[command](ctx, rest)
    return cmd_submit(ctx, command, rest, sync=options.sync)


def show_about(options):
    """``--help`` or ``--version`` (with the version of each server configured, or of ``--s``)."""
    if options.help:
        sys.stdout.write(HELP)
        return ExitCode.OK
    print(f'rrcloud {__version__} ({PROTOCOL_VERSION} compatible)', flush=True)
    from ..config import load_config
    config = load_config()
    servers = [options.s] if options.s else config.servers
    if servers:
        from ..remote import server_versions
        for line in server_versions([server_url(s, config.port) for s in servers], config.client_token_for):
            print(line)
    return ExitCode.OK
