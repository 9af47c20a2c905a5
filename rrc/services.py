"""``services/*.conf``: what each tool takes and writes, and the argv composed from a checked request."""

import os
import sys

from . import PROGRAM_FOLDER
from .errors import ConfigError, UsageError
from .keyvalue import boolean_value, parse_key_value_lines
from .names import LazyPattern, NATIVE_VALUE_RE, is_extension, is_service_name
from .progress import reader_named
from .optiontable import OptionTable, parse_option_table, read_native
from .projects import PROJECT_SUFFIXES


def check_service_servers(config):
    """``SERVICE.servers`` (and ``SERVICE.maxMemory``...) must name a known
    service: ``openscd.servers`` is a typo, an unknown key like any other
    (checked once ``dir`` is known)."""
    if not config.service_key_lines:
        return
    known = service_names(config.dir)
    for service, (where, key) in sorted(config.service_key_lines.items()):
        if service not in known:
            raise ConfigError(f'{where}: unknown key {key!r}: no service {service!r} '
                              f'(services: {", ".join(sorted(known)) or "none"})')


DEFAULT_SERVICE_PATH = '/usr/local/bin:/usr/bin:/bin'
SERVICE_KEYS = ('path', 'cmd', 'argInput', 'fileOut', 'output', 'nativeArgs',
                'noOutput', 'inputExt', 'inputExts', 'ignoreCase', 'readPaths', 'configKeys',
                'outputExts', 'displayExts', 'absoluteOutputExts', 'paramArgs', 'includeArg',
                'versionArg', 'runsOnce', 'progress', 'sandboxFiles', 'cache', 'cacheWatch',
                'cacheWatchFolders',
                'manifoldRunner', 'manifoldFormats', 'engineOption')
# The keys of a tool's whole command line and its defaults (issue 20): its
# options table, the option that picks the format, how it names its outputs.
COMMAND_LINE_KEYS = ('options', 'formatOption', 'formatAliases', 'severalOutputs', 'outputFromInput',
                     'outputAddsExt', 'defaultOutputArgs', 'stdoutOutput', 'formatFromName')


class Service:
    """How to run one service's executable (from ``services/NAME.conf``)."""

    def __init__(self, name, source, fields):
        self.name = name
        self.source = source
        self.path = fields.get('path') or DEFAULT_SERVICE_PATH
        self.cmd = split_words(fields['cmd'])
        self.input_prefixes = _input_prefixes(fields.get('argInput', ''))
        self.file_out = fields.get('fileOut') or '$id'
        self.no_output = boolean_value(fields.get('noOutput', 'no'))
        self.output = split_words(fields.get('output') or ('' if self.no_output else '$fileOut'))
        self.native_args = [a.strip() for a in fields.get('nativeArgs', '').split(',') if a.strip()]
        self.input_ext = fields.get('inputExt', '')
        self.ignore_case = boolean_value(fields.get('ignoreCase', 'no'))
        self.input_exts = [e.strip().lower() for e in fields.get('inputExts', '').split(',') if e.strip()]
        # Host folders the sandbox shows the tool read-only (e.g. an OpenSCAD library).
        self.read_paths = _absolute_paths(fields.get('readPaths', ''))
        # Inputs given with an argInput prefix (slic3r's --load=) are configs:
        # only the keys listed in this file beside the conf are passed on.
        self.config_keys = _config_key_list(source, fields.get('configKeys', ''))
        # Files beside the conf the sandbox shows the tool read-only at a
        # place of its own (POV-Ray's povray.conf): (host path, path inside).
        self.sandbox_files = _sandbox_files(source, fields.get('sandboxFiles', ''))
        # The formats the tool picks from its output's extension; the first is
        # what fileOut names (OpenSCAD: stl, off, amf, ..., png).
        self.output_exts = _extension_list(fields.get('outputExts', ''))
        # Formats the tool renders with OpenGL: it then runs on a private
        # virtual X display (xvfb-run) inside its sandbox.
        self.display_exts = _extension_list(fields.get('displayExts', ''))
        # Formats the tool writes relative to its input's folder rather than
        # its working folder (OpenSCAD's csg): it is given the output's
        # absolute path.
        self.absolute_output_exts = _extension_list(fields.get('absoluteOutputExts', ''))
        # Options whose value is the next argument, with the kind of value
        # each takes (OpenSCAD: -D NAME=VALUE, -P NAME).
        self.param_args = _param_args(fields.get('paramArgs', ''))
        # The argument naming a project's folder to a tool that looks for a
        # file's includes only in its library paths (POV-Ray: +L$folder).
        self.include_arg = fields.get('includeArg', '')
        self.version_arg = fields.get('versionArg') or '--version'
        # A task that must never run twice (a print): a farm does not run it
        # again when its worker is lost; it fails ``worker lost``.
        self.runs_once = boolean_value(fields.get('runsOnce', 'no'))
        # The result cache (rrc/cache.py): ``cache = no`` for a tool whose run
        # is its point (a side effect) or whose result differs each run; a
        # service without output or that runs once (a print) is never cached.
        self.cache = boolean_value(fields.get('cache', 'yes')) and not self.no_output and not self.runs_once
        # Host folders whose files' names, sizes and times are part of a
        # cached result's key (a tool's libraries: an upgraded MCAD misses).
        self.cache_watch = _absolute_paths(fields.get('cacheWatch', ''))
        # folders whose subfolders' times (not each file's) go in the key: a font tree
        self.cache_watch_folders = _absolute_paths(fields.get('cacheWatchFolders', ''))
        # How the runner reads the tool's progress from its output
        # (rrc/progress.py: povray, slic3r, openscad, openjscad, percent); None: it does not.
        self.progress = reader_named(fields['progress']) if fields.get('progress') else None
        # The tool's whole command line (services/NAME.options): what passes,
        # names an input or the output, or is refused and why.  Without one,
        # nativeArgs is the list of what passes.
        self.options = _option_table(source, name, fields.get('options', ''), self.ignore_case)
        # The option that picks the output's format whatever its name says
        # (OpenSCAD's --export-format), and the formats it names otherwise
        # (binstl = stl): the task's format follows it.
        self.format_option = fields.get('formatOption', '')
        self.format_aliases = dict(pair.strip().split('=', 1) for pair in
                                   fields.get('formatAliases', '').split(',') if '=' in pair)
        # The tool writes each of several outputs (openscad -oa.stl -oa.png):
        # the wrapper runs a task for each.  Otherwise the last one counts, as
        # for the tool.
        self.several_outputs = boolean_value(fields.get('severalOutputs', 'no'))
        # Without an output argument the tool names its result after its input,
        # beside it (slic3r cube.stl -> cube.gcode): so does the wrapper.
        self.output_from_input = boolean_value(fields.get('outputFromInput', 'no'))
        # The extension the tool adds to an output name without it (POV-Ray: +Oout -> out.png).
        self.output_adds_ext = fields.get('outputAddsExt', '')
        # The output's extension picks its format (openscad -oa.png), unless the
        # tool picks it by an option alone (POV-Ray's +FT: +Oout.png is a TGA).
        self.format_from_name = boolean_value(fields.get('formatFromName', 'yes'))
        # The tool writes its output to stdout when it is named "-" (openscad -o -).
        self.stdout_output = boolean_value(fields.get('stdoutOutput', 'no'))
        # What the tool's own default output is written as when the wrapper
        # names it (@jscad/cli without -o writes ASCII STL: -of stla).
        self.default_output_args = split_words(fields.get('defaultOutputArgs', ''))
        # OpenSCAD's second engine (rrc/engines.py): the Node script that runs
        # the Manifold build (a file beside the conf), the formats it writes,
        # and the option a client names an engine with (--backend=manifold|cgal).
        runner = fields.get('manifoldRunner', '')
        if '/' in runner or runner.startswith('.'):
            raise ValueError(f'manifoldRunner must name a file beside the conf, got {runner!r}')
        self.manifold_runner = companion_file(source, runner) if runner else ''
        self.manifold_formats = _extension_list(fields.get('manifoldFormats', ''))
        self.engine_option = fields.get('engineOption', '')

    @property
    def builtin(self):
        """True for a service whose tool is rrcloud itself (``cmd = rrcloud print``, the G-code sender):
        always installed, run by this program's own Python."""
        return self.cmd[0] == 'rrcloud'

    def output_name(self, task_id, ext=''):
        """The result's file name under tasks/out for one task; ``ext`` (one of
        ``outputExts``, checked by check_output_ext) replaces the default's."""
        name = self.file_out.replace('$id', task_id)
        if ext and self.output_exts and ext != self.output_exts[0]:
            name = name[:-len(self.output_exts[0])] + ext
        return name

    def output_ext_of(self, path):
        """The format a tool that picks it from the name would write to ``path``:
        '' for a service without ``outputExts``, else one of them or UsageError."""
        if not self.output_exts:
            return ''
        base = os.path.basename(path)
        ext = base.rsplit('.', 1)[1].lower() if '.' in base.lstrip('.') else ''
        if ext not in self.output_exts:
            known = ', '.join(self.output_exts)
            what = f'.{ext} is not a format it writes' if ext else 'it has no extension'
            raise UsageError(f'{path}: {self.name} picks the format from the output\'s extension, '
                             f'and {what} (one of: {known})')
        return ext

    def output_prefix(self):
        """What comes before the output file on a tool's command line ('-o', '--output=').

        For ``output = -o $fileOut`` it is the word before, ``-o``; None when
        the output argument holds no ``$fileOut``.
        """
        for index, word in enumerate(self.output):
            if '$fileOut' in word:
                prefix = word.split('$fileOut', 1)[0]
                return prefix or (self.output[index - 1] if index else '')
        return None

    def accepts_input(self, path):
        """True when a file may be an input: any file, or one of ``inputExts`` when given
        (a project archive ``main.scad.tgz`` by its main file's kind)."""
        base = os.path.basename(path).lower()
        base = next((base[:-len(s)] for s in PROJECT_SUFFIXES if base.endswith(s)), base)
        ext = base.rsplit('.', 1)[1] if '.' in base else ''
        return not self.input_exts or ext in self.input_exts

    def output_argument(self, arg):
        """True when ``arg`` starts with the output prefix (in any case, for ignoreCase tools)."""
        prefix = self.output_prefix()
        if not prefix:
            return False
        if self.ignore_case:
            return arg.lower().startswith(prefix.lower())
        return arg.startswith(prefix)

    def allows_native(self, arg):
        """True when ``arg`` is an allowed switch, or an allowed prefix plus a safe value
        (with an options table: an option it passes, whose value may follow)."""
        if self.options is not None:
            match = self.options.find(arg, [''])
            return match is not None and match.option.kind == 'pass'
        word = self.cased(arg)
        for allowed in map(self.cased, self.native_args):
            if word == allowed:
                return True
            value = arg[len(allowed):]
            # a value follows "--key=" or is a number ("+W800", "/dev/ttyUSB0"):
            # "--render" must not let "--rendering" through
            if (word.startswith(allowed) and (allowed.endswith('=') or value[:1].isdigit())
                    and NATIVE_VALUE_RE.match(value)):
                return True
        return False

    def cased(self, word):
        """``word`` as the tool compares it: lower-cased for ignoreCase tools (POV-Ray's +w is +W)."""
        return word.lower() if self.ignore_case else word

    def input_prefix_of(self, arg):
        """The argInput prefix ``arg`` starts with, or None."""
        for prefix in self.input_prefixes:
            if arg.startswith(prefix) and len(arg) > len(prefix):
                return prefix
        return None


def split_words(text):
    """Shell-like word splitting of a conf value; shlex only when quotes are used."""
    if not any(ch in text for ch in '\'"\\'):
        return text.split()
    import shlex
    return shlex.split(text)


def _input_prefixes(text):
    prefixes = []
    for pattern in (p.strip() for p in text.split(',')):
        if not pattern:
            continue
        if not pattern.endswith('$fileIn') or len(pattern) == len('$fileIn'):
            raise ValueError(f'argInput must be PREFIX$fileIn, got {pattern!r}')
        prefixes.append(pattern[:-len('$fileIn')])
    return prefixes


def _extension_list(text):
    exts = [e.strip().lower() for e in text.split(',') if e.strip()]
    for ext in exts:
        if not is_extension(ext):
            raise ValueError(f'an extension is letters and digits, got {ext!r}')
    return exts


# The kinds of value a paramArgs option may take, and what each admits.
PARAM_KINDS = ('NAME=VALUE', 'NAME')


def _param_args(text):
    """``-D NAME=VALUE, -P NAME`` -> {'-D': 'NAME=VALUE', '-P': 'NAME'}."""
    params = {}
    for entry in (e.strip() for e in text.split(',')):
        if not entry:
            continue
        option, _, kind = entry.partition(' ')
        if not option.startswith('-') or kind.strip() not in PARAM_KINDS:
            raise ValueError(f'paramArgs entries are "OPTION NAME=VALUE" or "OPTION NAME", got {entry!r}')
        params[option] = kind.strip()
    return params


def _absolute_paths(text):
    paths = [p.strip() for p in text.split(',') if p.strip()]
    for path in paths:
        if not path.startswith('/') or '..' in path.split('/'):
            raise ValueError(f'readPaths must be absolute paths, got {path!r}')
    return paths


def _option_table(source, service_name, name, ignore_case):
    """The OptionTable named by ``options`` (a file beside the conf), or None."""
    if not name:
        return None
    if '/' in name or name.startswith('.'):
        raise ValueError(f'options must name a file beside the conf, got {name!r}')
    rows, either_sign = parse_option_table(companion_file(source, name), service_name)
    return OptionTable(service_name, rows, either_sign=either_sign, ignore_case=ignore_case)


def _check_option_table(service, path):
    """An options table agrees with its conf: an input row is an argInput prefix
    (the runner composes it from the record's prearg), a param row a paramArgs option."""
    table = service.options
    if table is None:
        return
    for option in table.of_class('input'):
        if option.form != 'ini' and option.prefix() not in service.input_prefixes:
            raise ConfigError(f'{path}: {option.name} is an input in {service.name}\'s options but '
                              f'{option.prefix()}$fileIn is not in argInput')
    for option in table.of_class('param'):
        if option.name.lstrip('-') not in {p.lstrip('-') for p in service.param_args}:
            raise ConfigError(f'{path}: {option.name} is a param in {service.name}\'s options but not in paramArgs')


def _config_key_list(source, name):
    """The allowed keys named by ``configKeys`` (a file beside the conf), or None."""
    if not name:
        return None
    if '/' in name or name.startswith('.'):
        raise ValueError(f'configKeys must name a file beside the conf, got {name!r}')
    path = companion_file(source, name)
    try:
        with open(path, encoding='utf-8') as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ValueError(f'configKeys file {path}: {exc.strerror}') from None
    return frozenset(k for k in (line.split('#', 1)[0].strip() for line in lines) if k)


def _sandbox_files(source, text):
    """``FILE:/path/inside, ...`` -> [(the file beside the conf, /path/inside)];
    the file must exist (a missing one is a broken conf, not a tool run without it)."""
    files = []
    for entry in (e.strip() for e in text.split(',') if e.strip()):
        name, _, inside = entry.partition(':')
        if '/' in name or name.startswith('.') or not inside.startswith('/') or '..' in inside.split('/'):
            raise ValueError(f'sandboxFiles takes FILE:/PATH (a file beside the conf, an absolute '
                             f'path inside the sandbox), got {entry!r}')
        host = companion_file(source, name)
        if not os.path.isfile(host):
            raise ValueError(f'sandboxFiles file {host} is missing')
        files.append((host, inside))
    return files


def companion_file(source, name):
    """A file a conf names (its options table, its keys, a sandbox file):
    beside the conf, else the installed one of that name, so that a conf
    copied into ROOT/services to change a line still finds what it names."""
    beside = os.path.join(os.path.dirname(source), name)
    if os.path.exists(beside):
        return beside
    installed = installed_path('services')
    shipped = os.path.join(installed, name) if installed else None
    return shipped if shipped and os.path.exists(shipped) else beside


def parse_service(path):
    """Read and check one service conf; a bad one raises ConfigError naming it."""
    name = os.path.basename(path)[:-len('.conf')]
    if not is_service_name(name):
        raise ConfigError(f'{path}: service name {name!r} must be lower-case letters, digits or _')
    fields, lines = {}, {}
    for number, key, value in parse_key_value_lines(path):
        if key not in SERVICE_KEYS and key not in COMMAND_LINE_KEYS:
            raise ConfigError(f'{path}:{number}: unknown key {key!r}')
        fields[key], lines[key] = value, number
    if not fields.get('cmd'):
        raise ConfigError(f'{path}: no cmd given')
    try:
        service = Service(name, path, fields)
    except ValueError as exc:
        raise ConfigError(f'{path}: {exc}') from None
    _check_service(service, path)
    return service


def _check_service(service, path):
    probe = service.output_name('1000000000-00000-000000')
    if '$id' not in service.file_out or '/' in probe or probe.startswith('.'):
        raise ConfigError(f'{path}: fileOut must be a plain file name containing $id')
    if not service.no_output and service.output_prefix() is None:
        raise ConfigError(f'{path}: output must contain $fileOut (or set noOutput = yes)')
    if service.input_ext and not is_extension(service.input_ext):
        raise ConfigError(f'{path}: inputExt must be letters and digits')
    if service.output_exts and not service.file_out.endswith('.' + service.output_exts[0]):
        raise ConfigError(f'{path}: fileOut must end in .{service.output_exts[0]}, the first of outputExts')
    if service.include_arg and service.include_arg.count('$folder') != 1:
        raise ConfigError(f'{path}: includeArg must contain $folder once')
    _check_option_table(service, path)


def installed_path(name):
    """A shipped file or folder: beside rrcloud.py, or under share/rrcloud when installed."""
    for path in (os.path.join(PROGRAM_FOLDER, name), os.path.join(sys.prefix, 'share', 'rrcloud', name)):
        if os.path.exists(path):
            return path
    return None


def service_names(root):
    """Names of the service confs in ``ROOT/services`` and the installed ones (not parsed)."""
    names = set()
    for folder in (os.path.join(root, 'services'), installed_path('services')):
        if folder and os.path.isdir(folder):
            names.update(entry[:-len('.conf')] for entry in os.listdir(folder) if entry.endswith('.conf'))
    return names


def load_services(root):
    """Services found in ``ROOT/services`` first, then the installed defaults.

    Returns (services by name, error messages); a malformed conf is reported
    and skipped, the others still load.
    """
    services, errors, seen = {}, [], set()
    for folder in (os.path.join(root, 'services'), installed_path('services')):
        if not folder or not os.path.isdir(folder):
            continue
        for entry in sorted(os.listdir(folder)):
            name = entry[:-len('.conf')]
            if not entry.endswith('.conf') or name in seen:
                continue
            seen.add(name)
            try:
                services[name] = parse_service(os.path.join(folder, entry))
            except ConfigError as exc:
                errors.append(str(exc))
    return services, errors


def load_service(root, name):
    """One service, from its own conf where ``load_services`` would take it
    (``ROOT/services`` first, then the installed ones), without reading every
    other conf and options table (a runner's and a wrapper's start); anything
    amiss: all are loaded, for ``find_service``'s words on why it is not there."""
    if isinstance(name, str) and is_service_name(name):
        for folder in (os.path.join(root, 'services'), installed_path('services')):
            path = os.path.join(folder, f'{name}.conf') if folder else ''
            if path and os.path.isfile(path):
                try:
                    return parse_service(path)
                except ConfigError:
                    break
    return find_service(*load_services(root), name)


def find_service(services, errors, name):
    """The named service, or a UsageError that says why it is not there."""
    if not isinstance(name, str) or not is_service_name(name):
        raise UsageError(f'bad service name: {name!r}')
    if name in services:
        return services[name]
    import re
    broken = [e for e in errors if re.search(rf'(\A|/){re.escape(name)}\.conf(:|\Z)', e)]
    if broken:
        raise UsageError(f'service {name!r} is not usable: {broken[0]}')
    known = ', '.join(sorted(services)) or 'none'
    raise UsageError(f'unknown service {name!r} (available: {known})')


def compose_argv(service, task_id, inputs, native_args, params=(), out_ext=''):
    """The exact argv of a task, as the spec composes it.

    cmd, allowed native arguments with values, each parameter as two words
    (``-D``, ``NAME=VALUE``), a project's folder for tools that need it
    named (``includeArg``), each input as ``prearg+file`` or ``file``, the
    allowed native switches, then the output argument (its extension
    ``out_ext`` when the tool picks its format from it).  The switches
    follow the inputs: one that may take a value (OpenSCAD's ``--render``)
    would take the input file for its value.  ``inputs`` is a list of
    (prearg, path relative to the store root).
    """
    valued, switches = split_native(service, native_args)
    argv = list(service.cmd) + valued
    for option, value in params:
        argv += [option, value]
    argv += include_args(service, inputs)
    argv += [prearg + path for prearg, path in inputs]
    argv += switches
    out = 'tasks/out/' + service.output_name(task_id, out_ext)
    argv += [word.replace('$fileOut', out) for word in service.output]
    return argv


def split_native(service, native_args):
    """(the native words that go before the inputs, those that go after them).

    After: a switch that may take a value (OpenSCAD's ``--render``, ``=?`` in
    a table), which would take the input file for its value; with no table,
    every exact ``nativeArgs`` switch, as 0.019 composed it.  Before: the
    rest, a ``next`` option's two words together.
    """
    if service.options is not None:
        before, after = [], []
        for match in read_native(service.options, native_args):
            (after if match.option.form == '=?' else before).extend(match.words)
        return before, after
    switches = [a for a in native_args if service.cased(a) in map(service.cased, service.native_args)]
    return [a for a in native_args if a not in switches], switches


def include_args(service, inputs):
    """``includeArg`` for the folder of each project file among the inputs
    (``tasks/in/FOLDER/scene.pov`` -> ``+Ltasks/in/FOLDER``)."""
    if not service.include_arg:
        return []
    # a scene given as +Iscene.pov is a project like one given plainly
    folders = [path.rsplit('/', 1)[0] for prearg, path in inputs if path.count('/') > 2]
    return [service.include_arg.replace('$folder', folder) for folder in dict.fromkeys(folders)]


def check_prearg(service, prearg):
    """A prearg is accepted only when it equals an argInput prefix exactly."""
    if prearg and prearg not in service.input_prefixes:
        allowed = ', '.join(service.input_prefixes) or 'none'
        raise UsageError(f'prearg {prearg!r} is not allowed for {service.name} (allowed: {allowed})')


def check_native_args(service, native_args):
    """Every native argument must be allowed by the service's options table
    (with its value checked), or by its nativeArgs."""
    if service.options is not None:
        read_native(service.options, native_args)
        if service.engine_option:
            from .engines import engine_choice
            engine_choice(service, native_args)
        return
    for arg in native_args:
        if not service.allows_native(arg):
            raise UsageError(f'argument {arg!r} is not allowed for {service.name}')


def check_output_ext(service, ext):
    """An output format a client asks for must be one of the service's ``outputExts``."""
    if ext and ext not in service.output_exts:
        allowed = ', '.join(service.output_exts) or f'none, {service.name} writes one format'
        raise UsageError(f'output format {ext[:16]!r} is not one {service.name} writes (allowed: {allowed})')
    return ext


def format_chosen(service, native):
    """The output format the service's ``formatOption`` names among ``native``
    (``--export-format=binstl``, ``-of stla``: stl; POV-Ray's ``+FT``: tga;
    '' when absent); UsageError for one the tool does not write."""
    if not service.format_option:
        return ''
    words, chosen = list(native), ''
    while words:
        word = words.pop(0)
        value = format_value(service, word, words)
        if value is not None:
            chosen = format_ext(service, word, value) or chosen  # the last one counts, as for the tool
    return chosen


def format_value(service, word, rest):
    """The value ``word`` gives the format option (its next word taken from
    ``rest`` when written apart), or None for another word."""
    if service.options is not None:
        match = service.options.find(word, rest)
        if match is None or match.option.name != service.format_option:
            return None
        return match.option.name if match.option.form == 'none' else match.value  # a switch names itself
    if word.startswith(service.format_option + '='):
        return word.partition('=')[2]
    return rest.pop(0) if word == service.format_option and rest else None


def format_ext(service, word, value):
    """The extension a format option's value names ('' for none: POV-Ray's bare
    +F); its bit depth (+FN16) and, for a tool that ignores case, its case aside."""
    value = value.rstrip('0123456789') if service.ignore_case else value
    value = value.lower() if service.ignore_case else value
    ext = service.format_aliases.get(value, value)
    if ext and ext not in service.output_exts:
        raise UsageError(f'{word[:80]}: {service.name} writes one of: '
                         f'{", ".join(list(service.output_exts) + list(service.format_aliases))}')
    return ext


def check_format_agrees(service, native, out_ext):
    """A task's ``formatOption`` and its ``outExt`` name one format: the runner
    picks the virtual display and the result's name from outExt."""
    chosen = format_chosen(service, native)
    asked = out_ext or (service.output_exts or [''])[0]
    if chosen and chosen != asked:
        raise UsageError(f'{service.format_option} asks for {chosen} and the output format (outExt) is {asked}: '
                         f'they must agree')


def check_params(service, params):
    """Each (option, value) must be a ``paramArgs`` option with a value of its kind."""
    for option, value in params:
        kind = service.param_args.get(option)
        if kind is None:
            allowed = ', '.join(f'{o} {k}' for o, k in service.param_args.items()) or 'none'
            raise UsageError(f'option {option[:32]!r} is not allowed for {service.name} (allowed: {allowed})')
        if kind == 'NAME=VALUE' and not is_assignment(value):
            raise UsageError(f'{option} {value[:80]!r}: a value is NAME=VALUE, where VALUE is a number, '
                             f'a "string" (without / or \\), true, false, undef or a [vector] of them')
        if kind == 'NAME' and not PARAM_NAME_RE.match(value):
            raise UsageError(f'{option} {value[:80]!r}: a name is letters, digits, spaces and _.- '
                             f'(not starting with - or a space)')


# OpenSCAD parameters (-D NAME=VALUE): the name of a variable (special ones
# start with $, like $fn) and a literal.  A literal is data, never code: no
# function call (import(), include), no variable, no file path, no option.
SCAD_NAME_RE = LazyPattern(r'\A\$?[A-Za-z_][A-Za-z0-9_]{0,63}\Z')
SCAD_TOKEN_RE = LazyPattern(r'[ \t]*(-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_.])'
                            r'|"[^"\\/\x00-\x1f]{0,256}"|(?:true|false|undef)(?![A-Za-z0-9_])|[\[\],])[ \t]*')
PARAM_NAME_RE = LazyPattern(r'\A[A-Za-z0-9_.][A-Za-z0-9_. -]{0,99}(?<! )\Z')
SCAD_VECTOR_DEPTH = 4
PARAM_MAX_LENGTH = 1024


def is_assignment(text):
    """True for ``NAME=LITERAL``: a number, "string", true, false, undef or a [vector] of them."""
    name, sep, value = text.partition('=')
    if not sep or len(text) > PARAM_MAX_LENGTH or not SCAD_NAME_RE.match(name.strip()):
        return False
    tokens = scad_tokens(value)
    return tokens is not None and _literal_end(tokens, 0, 0) == len(tokens)


def scad_tokens(text):
    """The tokens of a literal (values, ``[``, ``]``, ``,``), or None for anything else."""
    tokens, position = [], 0
    while position < len(text):
        match = SCAD_TOKEN_RE.match(text, position)
        if not match:
            return None
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _literal_end(tokens, index, depth):
    """Where the literal starting at ``tokens[index]`` ends, or -1."""
    if index >= len(tokens) or tokens[index] in (']', ','):
        return -1
    if tokens[index] != '[':
        return index + 1
    if depth >= SCAD_VECTOR_DEPTH:
        return -1
    index += 1
    if index < len(tokens) and tokens[index] == ']':
        return index + 1
    while True:
        index = _literal_end(tokens, index, depth + 1)
        if index < 0 or index >= len(tokens) or tokens[index] not in (']', ','):
            return -1
        if tokens[index] == ']':
            return index + 1
        index += 1


CONFIG_INPUT_MAX_BYTES = 1024 * 1024


def filter_config(service, data):
    """The ``key = value`` lines of a config input (slic3r's ``--load=``) a
    service with ``configKeys`` passes on: a key not on its list is refused
    by name (``post_process`` runs a program, ``output_filename_format``
    names a path); an empty value is dropped, as the tool would ignore it;
    comments and blank lines are dropped."""
    if len(data) > CONFIG_INPUT_MAX_BYTES:
        raise UsageError(f'{service.name} config is larger than {CONFIG_INPUT_MAX_BYTES} bytes')
    return ''.join(f'{key} = {value}\n' for key, value in config_pairs(service, data)).encode('utf-8')


def takes_ini(service, filename):
    """True when an input is an INI file of options for a tool whose table has
    INI keys (POV-Ray's ``render.ini``): it is checked like its command line."""
    table = service.options
    return (table is not None and filename.lower().endswith('.ini')
            and any(o.form == 'ini' for o in table.options))


def filter_ini(service, data):
    """An INI input as the tool gets it: each ``Key=Value`` and switch checked
    against the options table as on the command line (``Pre_Scene_Command``
    runs a program, ``Library_Path`` names a server folder: refused by name),
    sections kept, comments and blank lines dropped."""
    if len(data) > CONFIG_INPUT_MAX_BYTES:
        raise UsageError(f'{service.name} INI file is larger than {CONFIG_INPUT_MAX_BYTES} bytes')
    lines = []
    for number, line in enumerate(data.decode('utf-8', 'replace').splitlines(), 1):
        line = line.split(';', 1)[0].strip()
        if line and not (line.startswith('[') and line.endswith(']')):
            key, sep, value = line.partition('=')
            line = f'{key.strip()}={value.strip()}' if sep else line
            try:
                read_native(service.options, [line])
            except UsageError as exc:
                raise UsageError(f'{service.name} INI file line {number}: {exc}') from None
        if line:
            lines.append(line + '\n')
    return ''.join(lines).encode('utf-8')


def config_pairs(service, data):
    """(key, value) of each setting of a config input, every key checked against the list."""
    pairs = []
    for number, line in enumerate(data.decode('utf-8', 'replace').splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(('#', ';')):
            continue
        key, sep, value = line.partition('=')
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UsageError(f'{service.name} config line {number}: expected "key = value"')
        if not value:
            continue  # an unset key (exports write "post_process = ") sets nothing
        if key not in service.config_keys:
            raise UsageError(f'{service.name} config: key {key[:64]!r} is not allowed '
                             f'(not a print setting rrcloud passes on; it may name a program or path)')
        pairs.append((key, value))
    return pairs
