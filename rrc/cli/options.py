"""rrcloud's options and the classification of a command line's words (options may stand anywhere)."""

import os

from ..config import load_config
from ..errors import UsageError
from ..identity import NodeIdentity
from ..names import LazyPattern
from ..optiontable import check_value, is_wildcard, refusal
from ..order import parse_priority
from ..projects import pack_project, project_references, project_root
from ..printers import names_a_printer
from ..services import check_params, find_service, format_chosen, load_service, load_services
from ..store import Store
from ..submission import Input, input_kinds


CLI_COMMANDS = ('info', 'meta', 'kill', 'ls', 'suspend', 'resume', 'watch', 'move', 'get', 'rm', 'clean',
                'history', 'printers', 'pause', 'cancel', 'stop')
VALUE_OPTIONS = ('s', 'notifier', 'notifier-events', 'format', 'dir', 'priority')
FLAG_OPTIONS = ('local', 'sync', 'traceback', 'help', 'version', 'short', 'no-cache')


class Options:
    """rrcloud's own ``--name[=value]`` options, wherever they stood."""

    def __init__(self):
        self.s = None
        self.notifier = ''
        self.notifier_events = ''  # --notifier-events=started,ended ('': the default, ended)
        self.format = 'text'
        self.dir = None
        self.priority = None  # an int once --priority=N is given (a server is sent it only then)
        self.local = self.sync = self.traceback = self.help = self.version = self.short = False
        self.no_cache = False  # --no-cache: the task is neither served from the result cache nor kept there


def parse_options(args):
    """Split the options before the command from the command and its arguments."""
    options, rest = Options(), list(args)
    while rest and rest[0].startswith('-'):
        word = rest.pop(0)
        if word == '--':
            break
        if word == '-h':
            word = '--help'
        if not is_option(word):
            raise UsageError(f'unknown option: {word!r} (see rrcloud --help)')
        set_option(options, word, rest)
    return options, rest


def days_argument(args, option, usage):
    """The DAYS of ``OPTION=DAYS`` or ``OPTION DAYS`` when that is all of
    ``args`` (history's --since, clean's --older-than); None for no
    arguments; UsageError(``usage``) for anything else."""
    words = list(args)
    if words[:1] == [option] and len(words) == 2:
        words = [f'{option}={words[1]}']
    if not words:
        return None
    if len(words) != 1 or not words[0].startswith(option + '='):
        raise UsageError(usage)
    return words[0].partition('=')[2]


def is_option(word):
    """True when ``word`` is one of rrcloud's options (``--name`` or ``--name=value``)."""
    return word.startswith('--') and word[2:].partition('=')[0] in VALUE_OPTIONS + FLAG_OPTIONS


def set_option(options, word, rest):
    """Apply one option; a value option written without ``=`` takes the next word of ``rest``."""
    name, sep, value = word[2:].partition('=')
    if name in FLAG_OPTIONS:
        if sep:
            raise UsageError(f'option --{name} takes no value')
        setattr(options, name.replace('-', '_'), True)
        return
    if not sep:
        if not rest:
            raise UsageError(f'option --{name} needs a value')
        value = rest.pop(0)
    if not value:
        raise UsageError(f'option --{name} needs a value')
    if name == 'format' and value not in ('text', 'json'):
        raise UsageError(f'--format must be text or json, not {value!r}')
    if name == 'priority':
        value = parse_priority(value)
    setattr(options, name.replace('-', '_'), value)


# Options a command reads itself (``ls --status=failed``): left among its arguments.
COMMAND_OPTIONS = {'ls': ('--status',), 'clean': ('--older-than',), 'get': ('--output',),
                   'history': ('--since',)}


def command_option(command, word):
    """True when ``word`` (``--name`` or ``--name=value``) is an option of ``command`` itself."""
    return word.partition('=')[0] in COMMAND_OPTIONS.get(command, ())


def take_options(options, args, service=None, command=None):
    """Apply rrcloud's options standing among a command's arguments; returns the rest.

    0.019 read ``--name[=value]`` anywhere.  Its rule, kept: after a service
    name, a word the service allows stays the service's; any other rrcloud
    option is rrcloud's; ``--`` ends the options.  Without a service (info,
    meta, kill) any other ``--word`` is an unknown option; with one, it is
    left to classify_args, which names it.
    """
    rest, args = [], list(args)
    while args:
        word = args.pop(0)
        if service is not None and service_takes(service, word):
            rest.append(word)
            if args and (word in service.param_args or takes_next_word(service, word)):
                rest.append(args.pop(0))  # -D NAME=VALUE, --camera 0,0,5: the value is the option's
        elif word == '-h':
            options.help = True
        elif word == '--':
            return rest + args
        elif command_option(command, word):
            rest.append(word)
        elif is_option(word):
            set_option(options, word, args)
        elif service is None and word.startswith('--'):
            raise UsageError(f'unknown option: {word!r} (see rrcloud --help)')
        else:
            rest.append(word)
    return rest


def service_takes(service, word):
    """True when ``word`` is the service's own: an allowed native argument,
    an argInput prefix with its file, the output argument, or (with an options
    table) any option the table does not refuse."""
    if is_option(word) and service.options is not None and table_match(service, word, ['']) is None:
        return False  # rrcloud's own, though a wildcard row (--*) would take it
    return (service.allows_native(word) or service.input_prefix_of(word) is not None
            or service.output_argument(word) or any(word.startswith(o) for o in service.param_args)
            or table_kind(service, word) in ('input', 'output', 'param'))


def table_kind(service, word):
    """The class of ``word`` in the service's options table (None: no row, or no table)."""
    match = table_match(service, word, [''])
    return match.option.kind if match else None


def table_match(service, word, rest):
    """The row of the service's table ``word`` is, or None; rrcloud's own
    options (--s=, --notifier=) are never a wildcard row's (@jscad/cli's --*)."""
    if service.options is None:
        return None
    match = service.options.find(word, rest)
    if match is not None and is_wildcard(match.option) and is_option(word):
        return None
    return match


def takes_next_word(service, word):
    """True when ``word`` is an option of the service's table written apart
    from its value (``--camera 0,0,5``, ``-title Scene``)."""
    probe = ['']
    match = table_match(service, word, probe)
    return match is not None and match.option.kind != 'refuse' and not probe


def split_command_line(options, command, args):
    """Take rrcloud's options out of ``command``'s arguments; returns (Context, the rest).

    A service's words are judged by the service found where the options
    before the command point; a ``--dir`` among them moves the task's store.
    """
    ctx = Context(options)
    service = None if command in CLI_COMMANDS else ctx.service(command)
    dir_before = options.dir
    args = take_options(options, args, service, command)
    if options.dir != dir_before:
        ctx = Context(options)
    return ctx, args


class ToolCall:
    """A tool's command line as classify_args read it."""

    def __init__(self, service):
        self.service = service
        self.inputs = []      # Input objects, in order
        self.native = []      # allowed native arguments
        self.params = []      # (option, value) pairs of paramArgs (-D NAME=VALUE)
        self.outputs = []     # where the results go, as the user named them ('-': stdout)

    @property
    def output(self):
        """The output a tool that keeps one writes: the last one given, as the tool takes it."""
        return self.outputs[-1] if self.outputs else None

    @property
    def out_ext(self):
        """The format asked for of the output the tool keeps ('' for the default)."""
        return self.out_ext_for(self.output)

    def out_ext_for(self, output):
        """The format asked for of one of the outputs (or of none: its formatOption's)."""
        if output is None:
            chosen = format_chosen(self.service, self.native)
            return '' if chosen == (self.service.output_exts or [''])[0] else chosen
        return output_ext(self.service, output, self.native)


def classify_args(service, args, allow_output):
    """Turn a tool's command line into a ToolCall.

    Classified like the spec's client: output argument, argInput prefix,
    allowed native argument, parameter (``-D NAME=VALUE``), existing file;
    the option forms with a space (``--load FILE``, ``-o FILE``) like the
    ones without.  What is not a file and does not look like an option or a
    file name is content.  Anything else is an error naming the argument.
    """
    call, args = ToolCall(service), list(args)
    while args:
        arg = args.pop(0)
        if not _take_option(service, arg, args, call, allow_output):
            call.inputs.append(_plain_input(service, arg))
    for output in call.outputs:
        output_ext(service, output, call.native)  # a name of a format the tool does not write: said now
    return call


def output_ext(service, output, native):
    """The format asked for of one output ('' for the service's default): the
    one its ``formatOption`` names (``--export-format=binstl``: stl), else its
    extension's; ``-`` (stdout, for a tool with ``stdoutOutput``) needs the
    option, as the tool does."""
    chosen = format_chosen(service, native)
    to_stdout = output == '-' and service.stdout_output
    if chosen:
        ext = chosen
    elif to_stdout and service.format_option and service.format_from_name:  # no name to pick it from
        raise UsageError(f'-o -: {service.name} writes to stdout only with {service.format_option}=FORMAT '
                         f'(one of: {", ".join(service.output_exts)})')
    else:
        ext = '' if to_stdout or not service.format_from_name else service.output_ext_of(output)
    return '' if ext == (service.output_exts or [''])[0] else ext


def _take_option(service, arg, rest, call, allow_output):
    """Put ``arg`` (and its value from ``rest`` when written apart) into ``call``
    when it is an option of the service; False when it is not one.  A
    service's options table is asked first: its rows are the tool's own
    (@jscad/cli's ``-of`` is not ``-o`` with the file ``f``)."""
    if service.options is not None and _take_table_option(service, arg, rest, call, allow_output):
        return True
    output = _output_value(service, arg, rest)
    if output is not None:
        return _take_output(call, arg, output, allow_output)
    prefix, path = _prefixed_input(service, arg, rest)
    if prefix is not None:
        call.inputs.append(_file_input(path, prefix))
        return True
    native = None if service.options is not None else _native_argument(service, arg, rest)
    if native is not None:
        call.native.append(native)
        return True
    if _printer_name(service, arg, call):  # the server looks it up (rrc/printers.py)
        call.native.append(arg)
        return True
    param = _param(service, arg, rest)
    if param is not None:
        check_params(service, [param])
        call.params.append(param)
        return True
    return False


def _take_output(call, arg, output, allow_output):
    if not allow_output:
        raise UsageError(f'output argument {arg!r} needs --sync (or a *.cloud wrapper)')
    call.outputs.append(output)
    return True


def _take_table_option(service, arg, rest, call, allow_output):
    """``arg`` as the service's options table reads it: an option passed on
    (its value checked), an input, the output, a parameter, or refused with
    the table's reason; False when the table has no such option."""
    match = table_match(service, arg, rest)
    if match is None:
        return False
    kind = match.option.kind
    if kind == 'refuse':
        raise UsageError(refusal(match))
    if kind == 'output':
        return _take_output(call, arg, match.value, allow_output)
    if kind == 'input':
        call.inputs.append(_file_input(match.value, match.option.prefix()))
    elif kind == 'param':
        option = next(o for o in service.param_args if o.lstrip('-') == match.option.name.lstrip('-'))
        check_params(service, [(option, match.value)])
        call.params.append((option, match.value))
    else:
        check_value(match.option, match.value, arg)
        call.native.extend(match.words)
    return True


def _output_value(service, arg, rest):
    """The output file of ``-oFILE``, ``-o FILE``, ``--output=FILE`` or ``--output FILE``; else None."""
    prefix = service.output_prefix()
    if not prefix:
        return None
    if service.output_argument(arg) and len(arg) > len(prefix):
        return arg[len(prefix):]
    if service.cased(arg) in (service.cased(prefix), service.cased(prefix.rstrip('='))) and rest:
        return rest.pop(0)
    return None


def _prefixed_input(service, arg, rest):
    """(prearg, file) of ``--load=FILE``, ``--load FILE``, ``-pFILE`` or ``-p FILE``; else (None, None)."""
    prefix = service.input_prefix_of(arg)
    if prefix is not None:
        return prefix, arg[len(prefix):]
    for prefix in service.input_prefixes:
        if arg in (prefix, prefix.rstrip('=')) and rest:
            return prefix, rest.pop(0)
    return None, None


def _native_argument(service, arg, rest):
    """An allowed native argument, ``--imgsize 320,240`` read as ``--imgsize=320,240``; else None."""
    if service.allows_native(arg):
        return arg
    joined = f'{arg}={rest[0]}' if rest and arg.startswith('-') else ''
    if joined and service.cased(arg + '=') in map(service.cased, service.native_args) \
            and service.allows_native(joined):
        rest.pop(0)
        return joined
    return None


def _printer_name(service, arg, call):
    """True for a print's first word that names a printer (``printrun mk3
    part.gcode``): a printer's name, before any port or input, not a file here."""
    return (names_a_printer(service, [arg]) and not call.native and not call.inputs
            and not os.path.exists(arg))


def _param(service, arg, rest):
    """(option, value) of ``-D NAME=VALUE`` or ``-DNAME=VALUE``; else None."""
    if arg in service.param_args:
        if not rest:
            raise UsageError(f'{arg} needs a value ({arg} {service.param_args[arg]})')
        return arg, rest.pop(0)
    for option in service.param_args:
        if arg.startswith(option) and len(arg) > len(option):
            return option, arg[len(option):]
    return None


def _plain_input(service, arg):
    """An argument that is no option of the service: an input file, or content."""
    if arg.startswith('/dev/') and any(a.startswith('/dev/') for a in service.native_args):
        ports = ', '.join(a + '*' for a in service.native_args if a.startswith('/dev/'))
        raise UsageError(f'{arg}: not a port {service.name} may use (allowed: {ports}; a server adds '
                         f'others to nativeArgs in services/{service.name}.conf)')
    if os.path.isfile(arg):
        if not service.accepts_input(arg):
            raise UsageError(f'{arg}: {service.name} takes {input_kinds(service)} files')
        return _file_input(arg, '')
    if os.path.exists(arg):
        raise UsageError(f'{arg}: not a file')
    if looks_like_option(arg):
        raise UsageError(refused_option(service, arg))
    if looks_like_file_name(arg):
        raise UsageError(f'{arg}: no such file')
    return Input(arg.encode('utf-8'))


def looks_like_option(arg):
    """``-x``, ``--word``, ``+W``: what no model, scene or G-code starts with."""
    return len(arg) > 1 and arg[0] in '-+' and (arg[1].isalpha() or arg[1] == '-')


# A word naming a file (part.scad, ../lib/x.inc, notes.txt) rather than being content.
# Its extension holds a letter: "1.5" is content.
FILE_NAME_RE = LazyPattern(r'\A[\w~/.+-]*[\w~+-]\.(?=[0-9]*[A-Za-z])[A-Za-z0-9]{1,12}\Z'
                           r'|\A[\w.~+-]*/[\w.~/+-]*\Z')


def looks_like_file_name(arg):
    """True for one word shaped like a file name or path, which content is not."""
    return FILE_NAME_RE.match(arg) is not None


# Beyond this many options an error points to --help rather than listing them.
LISTED_OPTIONS = 40


def refused_option(service, arg):
    """Why an option-like argument is refused, naming what the service takes."""
    prefix = service.output_prefix()
    if arg.split('=', 1)[0] in ('-o', '--output', '+O', '+o') and prefix:
        return f'{arg}: {service.name} takes its output as {prefix}FILE'
    if service.options is not None:
        passed = [f'{prefix}FILE'] if prefix else []
        passed += [f'{p}FILE' for p in service.input_prefixes]
        passed += sorted(o.shown() for o in service.options.of_class('pass'))
        listed = (f'allowed: {", ".join(passed)}' if len(passed) <= LISTED_OPTIONS
                  else f'{service.name}.cloud --help lists the {len(passed)} it takes')
        return f'{arg}: not an option {service.name} documents or rrcloud passes on ({listed})'
    allowed = ([f'{prefix}FILE'] if prefix else []) + [f'{p}FILE' for p in service.input_prefixes]
    allowed += [a + ('VALUE' if a.endswith('=') else '') for a in service.native_args]
    allowed += [f'{option} {kind}' for option, kind in service.param_args.items()]
    return f'{arg}: not an option {service.name} passes on (allowed: {", ".join(allowed) or "none"})'


def _file_input(path, prearg):
    """An input file; a model or scene that includes files beside it goes as a project archive."""
    if not os.path.isfile(path):
        raise UsageError(f'{path}: no such file')
    try:
        references = project_references(path)
        if references:
            root = project_root(path, references)
            shown = os.path.relpath(root) + '/' if os.path.relpath(root) != '.' else ''
            return Input(pack_project(path, references), os.path.basename(path) + '.tgz', prearg,
                         shown=shown, source=path)
        with open(path, 'rb') as handle:
            data = handle.read()
    except OSError as exc:
        raise UsageError(f'{path}: cannot read: {exc.strerror}') from None
    return Input(data, filename=path, prearg=prearg, shown=path, source=path)


class Context:
    """What every command needs: options, config, store, services."""

    def __init__(self, options):
        self.options = options
        self.config = load_config()
        if options.dir:
            self.config.dir = os.path.abspath(options.dir)
        self.store = Store(self.config.dir, NodeIdentity.of(self.config.nodeName))
        self._services = None
        self._service = {}  # name -> one service read alone (service())
        self.shown_inputs = []  # how the user named each input of the task at hand
        self.output_format = ''  # the format the task at hand's result is asked in (its extension)

    @property
    def services(self):
        if self._services is None:
            self._services = load_services(self.store.root)
        return self._services

    def service(self, name):
        """One service (its conf alone, unless every service was loaded already)."""
        if self._services is not None:
            return find_service(*self._services, name)
        if name not in self._service:
            self._service[name] = load_service(self.store.root, name)
        return self._service[name]
