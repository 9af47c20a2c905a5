"""``SERVICE.cloud``: the wrappers that behave like the tool they wrap."""

import sys

from .. import PROTOCOL_VERSION, __version__
from .commands import cmd_submit, remote_servers
from .options import Options, split_command_line
from ..errors import ExitCode
from ..procs import task_environment
from ..projects import PROJECT_KINDS
from ..submission import input_kinds


def wrapper(service_name, args):
    """``SERVICE.cloud ARGS``: behave like the tool, synchronously (rrcloud's
    options may stand among ARGS, as on the rrcloud command line)."""
    ctx, args = split_command_line(Options(), service_name, args)
    if ctx.options.help:
        sys.stdout.write(wrapper_help(ctx, ctx.service(service_name)))
        return ExitCode.OK
    if ctx.options.version:
        sys.stdout.write(wrapper_version(ctx, ctx.service(service_name)))
        return ExitCode.OK
    return cmd_submit(ctx, service_name, args, sync=True, wrapper=True)


def wrapper_help(ctx, service):
    """What ``SERVICE.cloud`` does, which options it passes on, where the work goes."""
    import textwrap
    name, prefix = service.name, service.output_prefix()
    output = f' {prefix}FILE' if prefix and not service.no_output else ''
    output = f' [{output.strip()}]' if output and service.output_from_input else output
    port = 'PORT ' if any(a.startswith('/dev/') for a in service.native_args) else ''
    about = (f'Runs {name} as {name} itself would run, on {work_goes_to(ctx, name)}.  '
             + ('The result is written to FILE only when the task succeeds.  ' if output else '')
             + "The tool's messages go to stderr, naming your files; the exit code is the tool's.")
    lines = [f'usage: {name}.cloud [OPTIONS] {port}INPUT...{output}', '',
             textwrap.fill(about, 78, break_long_words=False, break_on_hyphens=False), '']
    lines += [help_row(label, text) for label, text in wrapper_help_rows(service)]
    lines += ['', "rrcloud's options: --local, --s=SERVER, --notifier=URL, --notifier-events=LIST,",
              '  --priority=N, --no-cache, --traceback, -h/--help, --version (rrcloud --help tells more)']
    return '\n'.join(lines) + '\n'


def help_row(label, text):
    """One row of a wrapper's help, a long one (slic3r passes some 450 options)
    wrapped under its text."""
    import textwrap
    return textwrap.fill(text, 100, initial_indent=f'  {label:<11} ', subsequent_indent=' ' * 14,
                         break_long_words=False, break_on_hyphens=False)


def wrapper_help_rows(service):
    """(label, text) rows of a wrapper's help: inputs, output, what is passed on."""
    prefix = service.output_prefix()
    project = ' (with the files they include beside them)' if f'.{service.input_ext}' in PROJECT_KINDS else ''
    rows = [('inputs', f'{input_kinds(service)} files{project}, or content as an argument')]
    if prefix and not service.no_output:
        spaced = f' (or {prefix.rstrip("=")} FILE)' if prefix.startswith('-') else ''
        formats = (f'; the format follows its extension: {service.output_exts[0]} (default), '
                   + ', '.join(service.output_exts[1:])) if len(service.output_exts) > 1 else ''
        rows.append(('output', f'{prefix}FILE{spaced}{formats}{output_defaults(service)}'))
    if service.input_prefixes:
        rows.append(('input with', ', '.join(f'{p}FILE' for p in service.input_prefixes)))
    if service.options is not None:
        rows += table_help_rows(service.options)
    elif service.native_args:
        rows.append(('passed on', ', '.join(shown_native(a) for a in service.native_args)))
    for option, kind in service.param_args.items():
        rows.append(('parameter', f'{option} {kind}' + (
            ' (VALUE: a number, "string", true, false, undef or a [vector] of them)'
            if kind == 'NAME=VALUE' else '')))
    return rows


def output_defaults(service):
    """What help adds to the output row: the tool's own defaults the wrapper mirrors."""
    ext = (service.output_exts or [service.file_out.rpartition('.')[2]])[0]
    notes = [f'without it: INPUT.{ext} beside the input'] if service.output_from_input else []
    notes += [f'a name without .{service.output_adds_ext} gets it'] if service.output_adds_ext else []
    notes += ['several: a task each'] if service.several_outputs else []
    with_format = f' (with {service.format_option}=FORMAT)' if service.format_option else ''
    notes += [f'- is stdout{with_format}'] if service.stdout_output else []
    return ''.join(f'; {note}' for note in notes)


def table_help_rows(table):
    """What a wrapper's help says of a tool's options table (services/NAME.options):
    the options passed on as the tool takes them, and those refused."""
    signs = ' (+ or -)' if table.either_sign else ''
    names = {o.name for o in table.options}
    shown = [o for o in table.of_class('pass') if not is_spelling_of(o.name, names)]
    hidden = len(table.of_class('pass')) - len(shown)
    signs += f'; and {hidden} other spellings of these (--no-NAME, --NAME_WITH_UNDERSCORES)' if hidden else ''
    passed = sorted(o.shown() for o in shown)
    refused = sorted(o.name for o in table.of_class('refuse'))
    return [('passed on', f'{", ".join(passed)}{signs}; a value is printable text without / or \\'),
            ('refused', f'{", ".join(refused)} (each names a place on the server, runs a program, '
                        f'or writes what is not mirrored back; the error says which)')]


def is_spelling_of(name, names):
    """True for an option another row spells the usual way: Slic3r's
    ``--layer_height`` (``--layer-height``), ``--no-wipe`` and ``--nowipe`` (``--wipe``)."""
    if '_' in name and name.replace('_', '-') in names:
        return True
    for negation in ('--no-', '--no'):
        if name.startswith(negation) and '--' + name[len(negation):] in names:
            return True
    return False


def shown_native(allowed):
    """A nativeArgs entry as help shows it: ``--imgsize=VALUE``, ``/dev/ttyUSB*``, ``--render``."""
    if allowed.endswith('='):
        return allowed + 'VALUE'
    return allowed + '*' if allowed.startswith('/dev/') else allowed


def work_goes_to(ctx, service_name):
    """Where a wrapper's task runs, and which setting says so."""
    if ctx.options.local:
        return 'this machine (--local)'
    if ctx.options.s:
        return f'the server {ctx.options.s} (--s)'
    servers = ctx.config.servers_for(service_name)
    if servers:
        key = f'{service_name}.servers' if service_name in ctx.config.service_servers else 'servers'
        return f'the server(s) {", ".join(servers)} ({key} in {", ".join(ctx.config.sources)})'
    return f'this machine, in the task store {ctx.store.root} (no server in rrcloudrc)'


def wrapper_version(ctx, service):
    """rrcloud's version and the tool's, as the tool installed here tells it."""
    lines = [f'{service.name}.cloud: rrcloud {__version__} ({PROTOCOL_VERSION} compatible)',
             f'{service.name} on this machine: {tool_version(service)}']
    if service.manifold_runner:  # OpenSCAD's second engine (rrc/engines.py)
        from ..toolversions import ToolVersions
        lines.append(f'{service.name}\'s Manifold engine on this machine: '
                     f'{ToolVersions(ctx.store.root).manifold_of(service)}')
    servers = remote_servers(ctx, service.name)
    if servers:
        lines.append(f'tasks go to {", ".join(servers)}, whose {service.name} may be another version')
        from ..remote import server_url, server_versions
        lines += server_versions([server_url(s, ctx.config.port) for s in servers], ctx.config.client_token_for)
    return '\n'.join(lines) + '\n'


def tool_version(service):
    """The tool's own word on its version (its ``versionArg``, run here), or why there is none."""
    import shutil
    import subprocess
    if service.builtin:
        return f"rrcloud's built-in G-code sender, rrcloud {__version__}"
    program = service.cmd[0]
    path = shutil.which(program, path=service.path)
    if path is None:
        return f'not installed ({program} not found in {service.path})'
    try:
        done = subprocess.run([path, service.version_arg], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=TOOL_VERSION_TIMEOUT, env=task_environment(service))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'{program} {service.version_arg} did not answer ({exc.__class__.__name__})'
    for line in (done.stdout + b'\n' + done.stderr).decode('utf-8', 'replace').splitlines():
        # the first line with a number that is not a warning ("povray: cannot open ...")
        if any(c.isdigit() for c in line) and not line.startswith(program + ':'):
            return line.strip() if any(c.isalpha() for c in line) else f'{program} {line.strip()}'
    return f'{program} {service.version_arg} named no version'


TOOL_VERSION_TIMEOUT = 10
