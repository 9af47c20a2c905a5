#!/usr/bin/env python3
"""rrcloud: relay 3D-printing compute work to one or many servers.

A Python port of RepRapCloud 0.019.  One program, many faces: the ``rrcloud``
command line, the ``*.cloud`` wrappers that behave like the tools they wrap,
the detached runner of one task, and (later sections) the HTTP service.

The file is sectioned by banner comments, in this order: imports and
constants, errors, config, services, task store, execution/runner, printing,
HTTP client, WSGI app, server adapters, CLI, main().
"""

###############################################################################
# Imports and constants #######################################################
###############################################################################

import enum
import errno
import os
import sys
import time

# Heavy or rarely needed modules (subprocess, shutil, shlex, socket, requests,
# psutil, serial, multipart, waitress) are imported inside the functions that
# use them: under CGI every request starts Python anew.

__version__ = '0.1.0'
PROTOCOL_VERSION = 'RepRapCloud 0.019'
VERSION_STRING = f'{PROTOCOL_VERSION} (rrcloud.py {__version__})'
DEFAULT_PORT = 4468


class LazyPattern:
    """A regular expression compiled, and ``re`` imported, on first use: the
    two cost a CGI request about 2 ms, and most requests need no pattern (the
    hot checks below are plain string tests, each tested against its pattern)."""

    def __init__(self, source, flags=0):
        self.source, self.flags, self.compiled = source, flags, None

    @property
    def pattern(self):
        return self.source

    def __getattr__(self, name):  # match, sub, finditer, ...
        if name.startswith('__') or name in ('source', 'flags', 'compiled'):
            raise AttributeError(name)  # copy and pickle probe before __init__ ran
        if self.compiled is None:
            import re
            self.compiled = re.compile(self.source, self.flags)
        return getattr(self.compiled, name)


DIGITS = frozenset('0123456789')
LOWER = frozenset('abcdefghijklmnopqrstuvwxyz')
LETTERS = LOWER | frozenset('ABCDEFGHIJKLMNOPQRSTUVWXYZ')
ALNUM = LETTERS | DIGITS
WORD_CHARS = ALNUM | {'_'}
SERVICE_CHARS = LOWER | DIGITS | {'_'}

# <unix seconds>-<5 digits of the second's fraction>-<6 random digits>
TASK_ID_RE = LazyPattern(r'\A[1-9][0-9]{9}-[0-9]{5}-[0-9]{6}\Z')
SERVICE_NAME_RE = LazyPattern(r'\A[a-z][a-z0-9_]{0,31}\Z')
RECORD_KEY_RE = LazyPattern(r'\A[A-Za-z][A-Za-z0-9_]{0,63}\Z')
EXTENSION_RE = LazyPattern(r'\A[A-Za-z0-9]{1,12}\Z')
# What may follow an allowed native-argument prefix: no path separators, no
# whitespace, nothing a shell or the tool could read as a second argument.
NATIVE_VALUE_RE = LazyPattern(r'\A[A-Za-z0-9._,:%+=-]{0,200}\Z')
CONFIG_LINE_RE = LazyPattern(r'\A\s*([^\s:=]+)\s*[:=]\s*(.*?)\s*\Z')


# The checks every request makes, as string tests (each agrees with its
# pattern above; tests/test_properties.py shows it for any text).

def is_task_id(text):
    """``TASK_ID_RE``."""
    return (len(text) == 23 and text[10] == '-' and text[16] == '-' and text[0] != '0'
            and DIGITS.issuperset(text[:10] + text[11:16] + text[17:]))


def is_service_name(text):
    """``SERVICE_NAME_RE``."""
    return 0 < len(text) <= 32 and text[0] in LOWER and SERVICE_CHARS.issuperset(text)


def is_record_key(text):
    """``RECORD_KEY_RE``."""
    return 0 < len(text) <= 64 and text[0] in LETTERS and WORD_CHARS.issuperset(text)


def is_extension(text):
    """``EXTENSION_RE``."""
    return 0 < len(text) <= 12 and ALNUM.issuperset(text)


def split_config_line(line):
    """``CONFIG_LINE_RE``: (key, value) of ``key = value`` / ``key: value``, or None."""
    cut = min((i for i in (line.find(':'), line.find('=')) if i >= 0), default=-1)
    if cut < 0:
        return None
    key = line[:cut].strip()
    if not key or any(c.isspace() or c in ':=' for c in key):
        return None
    return key, line[cut + 1:].strip()


# work/ID: a sandboxed tool's private output folder while it runs.
STORE_FOLDERS = ('in', 'out', 'log', 'info', 'queue', 'running', 'slots', 'work')
# Environment variables a task inherits; everything else (HTTP_*, DISPLAY,
# the web server's own variables) is dropped.  PATH comes from the service.
TASK_ENV_ALLOWLIST = ('HOME', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TZ', 'TMPDIR',
                      'USER', 'LOGNAME')
# The runner's own environment: the task allowlist plus what finds Python
# (its settings come with the task, never from the rrcloudrc files).
RUNNER_ENV_ALLOWLIST = TASK_ENV_ALLOWLIST + ('PATH', 'PYTHONPATH')
KILL_GRACE_SECONDS = 3.0
# OSError numbers that mean "the disk is full" (507 to an HTTP client).
DISK_FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Less free space than this after a failed task: the disk filled up.
DISK_NEARLY_FULL_BYTES = 64 * 1024
ORPHAN_GRACE_SECONDS = 30.0


class ExitCode(enum.IntEnum):
    """Exit codes of the rrcloud command (wrappers mirror the tool's code)."""
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    CONFIG = 4
    NO_SERVER = 5
    INTERRUPTED = 130
    PIPE_CLOSED = 141  # the reader of stdout went away (``| head``), as SIGPIPE would


class TaskStatus(str, enum.Enum):
    """The spec's three states; other facts live in their own fields."""
    BUSY = 'busy'
    COMPLETE = 'complete'
    FAILED = 'failed'


###############################################################################
# Errors ######################################################################
###############################################################################

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


###############################################################################
# Config ######################################################################
###############################################################################

def parse_key_value_lines(path):
    """Yield (line number, key, value) of an rrcloudrc-style file.

    ``key = value`` or ``key: value``; ``#`` starts a comment, whole-line or
    trailing.  A line that is neither empty nor a pair is a ConfigError.
    """
    try:
        with open(path, encoding='utf-8') as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'{path}: cannot read: {exc}') from None
    return parse_key_value_text(text, path)


def parse_key_value_text(text, where):
    """parse_key_value_lines of text; errors name ``where``."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        pair = split_config_line(line)
        if not pair:
            raise ConfigError(f'{where}:{number}: expected "key = value", got {line!r}')
        yield (number,) + pair


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise ValueError('must be at least 1')
    return value


def _port(text):
    value = int(text)
    if not 1 <= value <= 65535:
        raise ValueError('must be between 1 and 65535')
    return value


def _positive_number(text):
    value = float(text)
    if not value > 0 or value != value or value == float('inf'):
        raise ValueError('must be a positive number')
    return value


def _non_negative_number(text):
    value = float(text)
    if not value >= 0 or value == float('inf'):
        raise ValueError('must be a number of at least 0')
    return value


SERVER_RE = LazyPattern(r'\A(https?://)?[A-Za-z0-9._\-\[\]:]+(/[A-Za-z0-9._~/-]*)?\Z')


def _server_list(text):
    servers = [s.strip() for s in text.split(',') if s.strip()]
    for server in servers:
        if not SERVER_RE.match(server):
            raise ValueError(f'not a host, host:port or URL: {server!r}')
    return servers


def _path(text):
    if not text:
        raise ValueError('must name a folder')
    return text


def _network_list(text):
    import ipaddress
    networks = [n.strip() for n in text.split(',') if n.strip()]
    for network in networks:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


TOKEN_RE = LazyPattern(r'\A[A-Za-z0-9._~+/=-]{16,256}\Z')


def _token(text):
    if not TOKEN_RE.match(text):
        raise ValueError('a token is 16 to 256 letters, digits or ._~+/=-')
    return text


ORIGIN_RE = LazyPattern(r'\Ahttps?://[A-Za-z0-9._\-\[\]:]+\Z')


def _origin_list(text):
    origins = [o.strip().rstrip('/') for o in text.split(',') if o.strip()]
    for origin in origins:
        if not ORIGIN_RE.match(origin):
            raise ValueError(f'not an origin (scheme://host[:port]): {origin!r}')
    return origins


def _switch(text):
    return _boolean(text)  # defined with the services below; looked up at parse time


NAME_CHARS = ALNUM | frozenset('._-')


def _server_name(text):
    if not 0 < len(text) <= 64 or not NAME_CHARS.issuperset(text):
        raise ValueError('a name is 1 to 64 letters, digits or ._-')
    return text


CONFIG_KEYS = {
    'port': _port,
    'servers': _server_list,
    'timeout': _positive_number,
    'maxDataRetention': _non_negative_number,
    'maxTasks': _positive_int,
    'dir': _path,
    'allow': _network_list,
    'token': _token,
    'notifierAllow': _network_list,
    'maxRequestSize': _positive_int,
    'maxInputs': _positive_int,
    'maxFieldLength': _positive_int,
    'maxQueued': _positive_int,
    'maxOutputSize': _positive_int,
    'maxWaits': _positive_int,
    'allowOrigins': _origin_list,
    'sandbox': _switch,
    'serverName': _server_name,
    'reconnectTimeout': _non_negative_number,
}
# Client networks a server answers by default: loopback and the private LAN ranges.
DEFAULT_ALLOW = ['127.0.0.0/8', '::1/128', '10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16',
                 'fc00::/7', 'fe80::/10']
HOST_KEY_RE = LazyPattern(r'\A[A-Za-z0-9\[][A-Za-z0-9._:\[\]-]*\Z')


class Config:
    """The merged settings of the rrcloudrc files that apply."""

    def __init__(self):
        self.port = DEFAULT_PORT
        self.servers = []
        self.service_servers = {}
        self.timeout = 1800.0
        self.maxDataRetention = 24.0
        self.maxTasks = os.cpu_count() or 1
        self.dir = os.getcwd()
        self.allow = list(DEFAULT_ALLOW)
        self.token = ''
        self.host_tokens = {}
        self.notifierAllow = []
        self.maxRequestSize = 256 * 1024 * 1024
        self.maxInputs = 32
        self.maxFieldLength = 4096
        self.maxQueued = 1000
        self.maxOutputSize = 1024 * 1024 * 1024
        self.maxWaits = 8
        self.allowOrigins = []
        self.sandbox = True
        self.serverName = host_name()
        self.reconnectTimeout = 120.0
        self.sources = []
        self.service_server_lines = {}  # service -> "file:line" that named its servers

    def apply_file(self, path):
        """Read one rrcloudrc file over the current values."""
        folder = os.path.dirname(os.path.abspath(path))
        for number, key, value in parse_key_value_lines(path):
            self._apply(path, number, key, value, folder)
        self.sources.append(os.path.abspath(path))

    def _apply(self, path, number, key, value, folder):
        prefix, _, suffix = key.rpartition('.')
        if suffix == 'servers' and is_service_name(prefix):
            parse, store = _server_list, lambda v: self.service_servers.__setitem__(prefix, v)
            self.service_server_lines[prefix] = f'{path}:{number}'
        elif suffix == 'token' and HOST_KEY_RE.match(prefix):
            parse, store = _token, lambda v: self.host_tokens.__setitem__(prefix, v)
        elif key == 'dir':
            parse, store = _path, lambda v: setattr(
                self, 'dir', os.path.normpath(os.path.join(folder, os.path.expanduser(v))))
        elif key in CONFIG_KEYS:
            parse, store = CONFIG_KEYS[key], lambda v: setattr(self, key, v)
        else:
            raise ConfigError(f'{path}:{number}: unknown key {key!r}')
        try:
            store(parse(value))
        except ValueError as exc:
            raise ConfigError(f'{path}:{number}: bad value for {key}: {value!r} ({exc})') from None

    def token_for(self, url):
        """The token to send to the server at ``url``: ``<host>.token``, else ``token``."""
        from urllib.parse import urlsplit
        parts = urlsplit(url)
        for name in (parts.netloc, parts.hostname or ''):
            if name in self.host_tokens:
                return self.host_tokens[name]
        return self.token

    def servers_for(self, service):
        """Servers for one service: ``<service>.servers``, else ``servers``."""
        return self.service_servers.get(service) or self.servers


def config_files():
    """The rrcloudrc files to read, in order (later ones win)."""
    named = os.environ.get('RRCLOUD_CONFIG')
    if named:
        if not os.path.isfile(named):
            raise ConfigError(f'{named}: RRCLOUD_CONFIG names no readable file')
        return [named]
    candidates = [os.path.expanduser('~/.rrcloudrc'), 'rrcloudrc']
    return [os.path.abspath(path) for path in candidates if os.path.isfile(path)]


def load_config():
    """Read the configuration that applies to this process."""
    config = Config()
    for path in config_files():
        config.apply_file(path)
    check_service_servers(config)
    return config


def check_service_servers(config):
    """``SERVICE.servers`` must name a known service: ``openscd.servers`` is a
    typo, an unknown key like any other (checked once ``dir`` is known)."""
    if not config.service_servers:
        return
    known = service_names(config.dir)
    for service, where in sorted(config.service_server_lines.items()):
        if service not in known:
            raise ConfigError(f'{where}: unknown key {service + ".servers"!r}: no service {service!r} '
                              f'(services: {", ".join(sorted(known)) or "none"})')


###############################################################################
# Services ####################################################################
###############################################################################

DEFAULT_SERVICE_PATH = '/usr/local/bin:/usr/bin:/bin'
SERVICE_KEYS = ('path', 'cmd', 'argInput', 'fileOut', 'output', 'nativeArgs',
                'noOutput', 'inputExt', 'inputExts', 'ignoreCase', 'readPaths', 'configKeys',
                'outputExts', 'displayExts', 'absoluteOutputExts', 'paramArgs', 'includeArg',
                'versionArg')
TRUE_WORDS = {'yes', 'true', '1', 'on'}
FALSE_WORDS = {'no', 'false', '0', 'off', ''}


class Service:
    """How to run one service's executable (from ``services/NAME.conf``)."""

    def __init__(self, name, source, fields):
        self.name = name
        self.source = source
        self.path = fields.get('path') or DEFAULT_SERVICE_PATH
        self.cmd = split_words(fields['cmd'])
        self.input_prefixes = _input_prefixes(fields.get('argInput', ''))
        self.file_out = fields.get('fileOut') or '$id'
        self.no_output = _boolean(fields.get('noOutput', 'no'))
        self.output = split_words(fields.get('output') or ('' if self.no_output else '$fileOut'))
        self.native_args = [a.strip() for a in fields.get('nativeArgs', '').split(',') if a.strip()]
        self.input_ext = fields.get('inputExt', '')
        self.ignore_case = _boolean(fields.get('ignoreCase', 'no'))
        self.input_exts = [e.strip().lower() for e in fields.get('inputExts', '').split(',') if e.strip()]
        # Host folders the sandbox shows the tool read-only (e.g. an OpenSCAD library).
        self.read_paths = _absolute_paths(fields.get('readPaths', ''))
        # Inputs given with an argInput prefix (slic3r's --load=) are configs:
        # only the keys listed in this file beside the conf are passed on.
        self.config_keys = _config_key_list(source, fields.get('configKeys', ''))
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
        """True when ``arg`` is an allowed switch, or an allowed prefix plus a safe value."""
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


def _config_key_list(source, name):
    """The allowed keys named by ``configKeys`` (a file beside the conf), or None."""
    if not name:
        return None
    if '/' in name or name.startswith('.'):
        raise ValueError(f'configKeys must name a file beside the conf, got {name!r}')
    path = os.path.join(os.path.dirname(source), name)
    try:
        with open(path, encoding='utf-8') as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ValueError(f'configKeys file {path}: {exc.strerror}') from None
    return frozenset(k for k in (line.split('#', 1)[0].strip() for line in lines) if k)


def _boolean(text):
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f'expected yes or no, got {text!r}')


def parse_service(path):
    """Read and check one service conf; a bad one raises ConfigError naming it."""
    name = os.path.basename(path)[:-len('.conf')]
    if not is_service_name(name):
        raise ConfigError(f'{path}: service name {name!r} must be lower-case letters, digits or _')
    fields, lines = {}, {}
    for number, key, value in parse_key_value_lines(path):
        if key not in SERVICE_KEYS:
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


def installed_path(name):
    """A shipped file or folder: beside rrcloud.py, or under share/rrcloud when installed."""
    here = os.path.dirname(os.path.realpath(__file__))
    for path in (os.path.join(here, name), os.path.join(sys.prefix, 'share', 'rrcloud', name)):
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
    switches = [a for a in native_args if service.cased(a) in map(service.cased, service.native_args)]
    valued = [a for a in native_args if a not in switches]
    argv = list(service.cmd) + valued
    for option, value in params:
        argv += [option, value]
    argv += include_args(service, inputs)
    argv += [prearg + path for prearg, path in inputs]
    argv += switches
    out = 'tasks/out/' + service.output_name(task_id, out_ext)
    argv += [word.replace('$fileOut', out) for word in service.output]
    return argv


def include_args(service, inputs):
    """``includeArg`` for the folder of each project file among the inputs
    (``tasks/in/FOLDER/scene.pov`` -> ``+Ltasks/in/FOLDER``)."""
    if not service.include_arg:
        return []
    folders = [path.rsplit('/', 1)[0] for prearg, path in inputs if not prearg and path.count('/') > 2]
    return [service.include_arg.replace('$folder', folder) for folder in dict.fromkeys(folders)]


def check_prearg(service, prearg):
    """A prearg is accepted only when it equals an argInput prefix exactly."""
    if prearg and prearg not in service.input_prefixes:
        allowed = ', '.join(service.input_prefixes) or 'none'
        raise UsageError(f'prearg {prearg!r} is not allowed for {service.name} (allowed: {allowed})')


def check_native_args(service, native_args):
    """Every native argument must be allowed by the service's nativeArgs."""
    for arg in native_args:
        if not service.allows_native(arg):
            raise UsageError(f'argument {arg!r} is not allowed for {service.name}')


def check_output_ext(service, ext):
    """An output format a client asks for must be one of the service's ``outputExts``."""
    if ext and ext not in service.output_exts:
        allowed = ', '.join(service.output_exts) or f'none, {service.name} writes one format'
        raise UsageError(f'output format {ext[:16]!r} is not one {service.name} writes (allowed: {allowed})')
    return ext


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


###############################################################################
# Task store ##################################################################
###############################################################################

def to_json(value, **options):
    """JSON text (json is imported on demand: a CGI text answer never needs it)."""
    import json
    return json.dumps(value, **options)


def host_name():
    """This machine's name, for the record's server field and meta's serverName."""
    return os.uname().nodename


def check_task_id(task_id):
    """Return ``task_id`` if it has the one valid shape, else raise UsageError."""
    if not isinstance(task_id, str) or not is_task_id(task_id):
        raise UsageError(f'bad task id: {task_id!r}')
    return task_id


def new_unique_name():
    """A fresh name of the task-id shape (uniqueness comes from exclusive create)."""
    import secrets
    now = time.time()
    fraction = int((now - int(now)) * 100000)
    return f'{int(now)}-{fraction:05d}-{secrets.randbelow(1000000):06d}'


def format_record(record):
    """Serialize a record as sorted ``key: value`` lines; refuse anything forgeable."""
    lines = []
    for key in sorted(record):
        value = str(record[key])
        if not is_record_key(key):
            raise ValueError(f'bad record key: {key!r}')
        if not is_single_line(value):
            raise ValueError(f'record value of {key} holds a line break or NUL')
        if value != value.strip():
            raise ValueError(f'record value of {key} has surrounding whitespace')
        lines.append(f'{key}: {value}\n')
    return ''.join(lines)


def is_single_line(value):
    """True when ``value`` holds no line break of any kind (as str.splitlines sees them) and no NUL."""
    return '\0' not in value and (value == '' or value.splitlines() == [value])


def parse_record(text):
    """Parse ``key: value`` lines into a dict (the inverse of format_record)."""
    record = {}
    for line in text.split('\n'):
        key, sep, value = line.partition(': ')
        if not sep:
            key, sep, value = line.partition(':')
        if sep and is_record_key(key):
            record[key] = value.strip()
    return record


def write_file_atomically(path, data):
    """Write bytes to ``path`` via a temp file in the same folder, fsync, rename."""
    folder, name = os.path.split(path)
    temp = os.path.join(folder, f'.{name}.{os.getpid()}.{new_unique_name()}.tmp')
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Store:
    """The flat-file task store: ``ROOT/tasks/{in,out,log,info}``."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.tasks = os.path.join(self.root, 'tasks')

    def folder(self, name):
        """Absolute path of one store folder (in, out, log, info, queue, slots)."""
        return os.path.join(self.tasks, name)

    def ensure(self):
        """Create the store folders on demand."""
        for name in STORE_FOLDERS:
            os.makedirs(self.folder(name), exist_ok=True)

    def info_path(self, task_id):
        return os.path.join(self.folder('info'), check_task_id(task_id))

    def log_path(self, task_id):
        return os.path.join(self.folder('log'), check_task_id(task_id))

    def lock(self):
        """An exclusive lock over record updates, queue and slots."""
        return StoreLock(os.path.join(self.tasks, '.lock'))

    # -- records ------------------------------------------------------------

    def create_task(self, build, preferred_id=None):
        """Store the record ``build(id)`` under a fresh id; exclusive, never overwrites.

        ``preferred_id`` (a valid id, e.g. a server's) is tried first.
        """
        self.ensure()
        while True:
            task_id, preferred_id = preferred_id or new_unique_name(), None
            record = dict(build(task_id), id=task_id)
            temp = os.path.join(self.folder('info'), f'.{task_id}.{os.getpid()}.new')
            write_file_atomically(temp, format_record(record).encode())
            try:
                os.link(temp, self.info_path(task_id))  # fails if the id is taken
                return record
            except FileExistsError:
                continue
            finally:
                _unlink_quietly(temp)

    def read_task(self, task_id):
        """The record of one task, or NotFound."""
        try:
            with open(self.info_path(task_id), encoding='utf-8') as handle:
                return parse_record(handle.read())
        except FileNotFoundError:
            raise NotFound(f'no such task: {task_id}') from None

    def write_task(self, record):
        """Replace a task's record atomically."""
        write_file_atomically(self.info_path(record['id']), format_record(record).encode())

    def update_task(self, task_id, changes, only_if_busy=False, remove=()):
        """Apply ``changes`` under the store lock; returns the new record.

        With ``only_if_busy`` a finished task is left alone and None is
        returned: the first final state written wins.
        """
        with self.lock():
            record = self.read_task(task_id)
            if only_if_busy and record.get('status') != TaskStatus.BUSY:
                return None
            record.update({k: str(v) for k, v in changes.items()})
            for key in remove:
                record.pop(key, None)
            self.write_task(record)
            return record

    def task_ids(self):
        """All task ids, oldest first."""
        try:
            names = os.listdir(self.folder('info'))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if is_task_id(n))

    def remove_task(self, record):
        """Delete a task and all its files (inputs, result, log, record)."""
        task_id = check_task_id(record['id'])
        for path in record.get('in', '').split(','):
            self.remove_input(path)
        out_name = os.path.basename(record.get('out', ''))
        if record.get('out', '').startswith('tasks/out/') and out_name:
            _unlink_quietly(os.path.join(self.folder('out'), out_name))
        for folder in ('queue', 'running'):
            _unlink_quietly(os.path.join(self.folder(folder), task_id))
        _unlink_quietly(self.log_path(task_id))
        _unlink_quietly(self.info_path(task_id))

    # -- inputs -------------------------------------------------------------

    def remove_input(self, path):
        """Remove one stored input (``tasks/in/NAME``), or its whole project folder."""
        parts = path.split('/')
        if len(parts) < 3 or parts[:2] != ['tasks', 'in'] or not parts[2] or parts[2].startswith('.'):
            return
        target = os.path.join(self.folder('in'), parts[2])
        if len(parts) > 3 and os.path.isdir(target) and not os.path.islink(target):
            import shutil
            shutil.rmtree(target, ignore_errors=True)
        else:
            _unlink_quietly(target)

    def add_input(self, data, ext):
        """Store one input's bytes as ``tasks/in/<unique>[.ext]``; returns the relative path.

        The bytes go to a temp file first (removed on any error, or by
        recovery after a crash), then get their name by exclusive link.
        """
        self.ensure()
        folder = self.folder('in')
        temp = os.path.join(folder, f'.{new_unique_name()}.{os.getpid()}.part')
        try:
            with open(temp, 'xb') as handle:
                if isinstance(data, bytes):
                    handle.write(data)
                else:
                    import shutil
                    shutil.copyfileobj(data, handle)
            while True:
                name = new_unique_name() + (f'.{ext}' if ext else '')
                try:
                    os.link(temp, os.path.join(folder, name))
                    break
                except FileExistsError:
                    continue
        finally:
            _unlink_quietly(temp)
        return f'tasks/in/{name}'

    def new_input_folder(self):
        """A fresh folder ``tasks/in/<unique>`` (exclusive); returns its name."""
        self.ensure()
        while True:
            name = new_unique_name()
            try:
                os.mkdir(os.path.join(self.folder('in'), name), 0o755)
                return name
            except FileExistsError:
                continue

    def path_of(self, relative):
        """Absolute path of a store-relative path that came from our own record."""
        return os.path.join(self.root, relative)


class StoreLock:
    """A blocking flock on one file; a context manager."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing releases the lock
        self.fd = None


# -- process identity (pid plus start time, so a reused pid is not mistaken) --

def process_start_time(pid):
    """The kernel's start time of a live process, or None (dead, zombie, no access)."""
    try:
        with open(f'/proc/{int(pid)}/stat', 'rb') as handle:
            stat = handle.read()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(b')') + 2:].split()
    if not fields or fields[0] in (b'Z', b'X'):
        return None
    return fields[19].decode()


def process_is(pid, start_time):
    """True when ``pid`` is alive and is the same process that started at ``start_time``."""
    return bool(pid) and bool(start_time) and process_start_time(pid) == start_time


def reconcile_task(store, record, now=None):
    """Report a busy task whose runner is gone as failed/interrupted."""
    if record.get('status') != TaskStatus.BUSY or 'remoteId' in record or _runner_expected(store, record, now):
        return record
    if record.get('pid') and process_is(record['pid'], record.get('pidStart')):
        kill_process_group(int(record['pid']))
    finished = finish_task(store, record['id'], TaskStatus.FAILED, error='interrupted')
    unmark(store, 'running', record['id'])
    return finished or store.read_task(record['id'])


def _runner_expected(store, record, now=None):
    """True while a busy task still has (or is about to have) a live runner."""
    if record.get('runner'):
        return process_is(record['runner'], record.get('runnerStart'))
    if record.get('queued') and os.path.exists(os.path.join(store.folder('queue'), record['id'])):
        return True
    started = float(record.get('stime') or record.get('ctime') or 0)
    return (now or time.time()) - started < ORPHAN_GRACE_SECONDS


def finish_task(store, task_id, status, **fields):
    """Write a task's final state unless another final state was written first."""
    changes = dict(fields, status=status.value, etime=f'{time.time():.5f}')
    out = store.read_task(task_id).get('out', '')
    if out.startswith('tasks/out/'):
        try:
            changes['sizeOut'] = os.path.getsize(store.path_of(out))
        except OSError:
            changes['sizeOut'] = 0
    return store.update_task(task_id, changes, only_if_busy=True, remove=('queued',))


def expire_tasks(store, records, max_hours, now=None):
    """Remove finished tasks whose end is older than ``max_hours``; returns the rest."""
    now = now or time.time()
    kept = []
    for record in records:
        etime = record.get('etime')
        if record.get('status') != TaskStatus.BUSY and etime and now - float(etime) > max_hours * 3600:
            store.remove_task(record)
        else:
            kept.append(record)
    return kept


def list_tasks(store, config):
    """All tasks, reconciled and with expired ones removed (as the original does)."""
    records = []
    for task_id in store.task_ids():
        try:
            records.append(reconcile_task(store, store.read_task(task_id)))
        except NotFound:
            continue
    return expire_tasks(store, records, config.maxDataRetention)


# Temp files of interrupted writes carry their writer's pid: .NAME.PID[.UNIQUE].(tmp|new|part)
TEMP_FILE_RE = LazyPattern(r'\A\..+?\.([0-9]+)(\.[0-9-]+)?\.(tmp|new|part)\Z')
TEMP_FILE_MAX_AGE = 3600.0
RECOVERY_INTERVAL = 60.0


def recover_store(store, config):
    """After a crash: remove temp files of interrupted writes, fail tasks whose runner is gone.

    Orphaned tool groups that are provably a task's (pid plus start time) are
    killed by reconcile_task.  A print is never restarted.
    """
    now = time.time()
    for name in ('info', 'in', 'out', 'log', 'queue'):
        folder = store.folder(name)
        for entry in os.listdir(folder) if os.path.isdir(folder) else ():
            path = os.path.join(folder, entry)
            match = TEMP_FILE_RE.match(entry)
            try:
                if match and (not _pid_alive(int(match.group(1)))
                              or now - os.lstat(path).st_mtime > TEMP_FILE_MAX_AGE):
                    os.unlink(path)
            except FileNotFoundError:
                pass
    for task_id in marked(store, 'running'):
        _still_running(store, task_id)
    records = list_tasks(store, config)
    remove_orphan_inputs(store, records, now)
    remove_idle_work_folders(store, records)
    dispatch(store, config)


def remove_idle_work_folders(store, records):
    """Remove sandbox work folders that no busy task owns (left by a crashed runner)."""
    busy = {record['id'] for record in records if record.get('status') == TaskStatus.BUSY}
    folder = store.folder('work')
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry not in busy:
            _remove_tree(os.path.join(folder, entry))


def remove_orphan_inputs(store, records, now):
    """Remove inputs no record names (left by a crash between storing an input
    and writing its record) once they are older than any upload in progress."""
    named = {path.split('/')[2] for record in records for path in record.get('in', '').split(',')
             if path.startswith('tasks/in/') and len(path.split('/')) > 2}
    folder = store.folder('in')
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry in named or entry.startswith('.'):  # dotted: temp files, handled above
            continue
        path = os.path.join(folder, entry)
        try:
            if now - os.lstat(path).st_mtime <= TEMP_FILE_MAX_AGE:
                continue
        except FileNotFoundError:
            continue
        is_folder = os.path.isdir(path) and not os.path.islink(path)
        store.remove_input(f'tasks/in/{entry}/' if is_folder else f'tasks/in/{entry}')


def _pid_alive(pid):
    return pid == os.getpid() or process_start_time(pid) is not None


def recover_now_and_then(store, config):
    """Run recover_store at most once a minute (CGI: no process stays to do it)."""
    stamp = os.path.join(store.tasks, '.recovered')
    try:
        if time.time() - os.stat(stamp).st_mtime < RECOVERY_INTERVAL:
            return
    except FileNotFoundError:
        if not os.path.isdir(store.tasks):
            return
    os.close(os.open(stamp, os.O_WRONLY | os.O_CREAT, 0o644))
    os.utime(stamp)
    recover_store(store, config)


def get_task(store, task_id):
    """One task, reconciled."""
    return reconcile_task(store, store.read_task(task_id))


def meta_record(store, config, services, started=None):
    """What this machine offers: the spec's meta fields plus load for schedulers.

    ``uptime`` counts from ``started`` (when the serving process started), or,
    without a server (``rrcloud meta`` on the command line), from boot.
    """
    running = [t for t in marked(store, 'running') if _still_running(store, t)]
    tasks = count_tasks(store)
    return {
        'busy': str(len(running)),
        'cpuLoad': f'{os.getloadavg()[0]:.2f}',
        'maxDataRetention': f'{config.maxDataRetention:g}',
        'maxTasks': str(config.maxTasks),
        'queued': str(len(marked(store, 'queue'))),
        'sandbox': 'bwrap' if config.sandbox else 'off',
        'serverName': config.serverName,
        'services': ','.join(sorted(services)),
        'tasks': str(tasks),
        'timeout': f'{config.timeout:g}',
        'uptime': format_uptime(time.time() - started if started else system_uptime()),
        'version': VERSION_STRING,
    }


_TASK_COUNTS = {}
# A folder changed less than this long ago may change again within the same
# mtime tick, unseen: its count is not cached ("racy" timestamps, as git has).
COUNT_CACHE_SETTLE_NS = 100_000_000  # mtime ticks are a few ms


def count_tasks(store):
    """How many records ``tasks/info`` holds.  Listing 10,000 names costs 3 ms,
    so a resident server keeps the count until the folder's mtime changes."""
    folder = store.folder('info')
    try:
        stat = os.stat(folder)
    except FileNotFoundError:
        return 0
    key = (folder, stat.st_dev, stat.st_ino)
    cached = _TASK_COUNTS.get(key)
    if cached and cached[0] == stat.st_mtime_ns:
        return cached[1]
    count = sum(1 for name in os.listdir(folder) if name[0] != '.')  # ids, and dotted temp files
    if time.time_ns() - stat.st_mtime_ns > COUNT_CACHE_SETTLE_NS:
        _TASK_COUNTS[key] = (stat.st_mtime_ns, count)
    return count


def _still_running(store, task_id):
    """True when a running marker belongs to a live runner (reconciles it otherwise)."""
    try:
        record = get_task(store, task_id)
    except NotFound:
        unmark(store, 'running', task_id)
        return False
    if record.get('runner') and process_is(record['runner'], record.get('runnerStart')):
        return True
    unmark(store, 'running', task_id)
    return False


def system_uptime():
    """Seconds since boot."""
    try:
        with open('/proc/uptime') as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def process_started_at(pid):
    """When a process started (Unix time), from /proc; None when it cannot be read."""
    ticks = process_start_time(pid)
    try:
        return time.time() - system_uptime() + int(ticks) / os.sysconf('SC_CLK_TCK')
    except (TypeError, ValueError, OSError):
        return None


def format_uptime(seconds):
    """``0d 06h 00m 52s`` as the spec shows it."""
    seconds = max(0, int(seconds))
    return (f'{seconds // 86400}d {seconds // 3600 % 24:02d}h '
            f'{seconds // 60 % 60:02d}m {seconds % 60:02d}s')



###############################################################################
# Execution / runner ##########################################################
###############################################################################

# -- multi-file projects: a main file and what it includes, as one tar.gz ----

PROJECT_SUFFIXES = ('.tgz', '.tar.gz')
PROJECT_MAX_FILES = 256
PROJECT_MAX_BYTES = 64 * 1024 * 1024
PROJECT_PART_RE = LazyPattern(r'\A[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}\Z')
SCAD_REFERENCE_RE = LazyPattern(
    r'\b(?:include|use)\s*<([^>\n]+)>'
    r'|\b(?:import|surface)\s*\(\s*(?:file\s*=\s*)?"([^"\n]+)"')
# A POV-Ray scene's #include files, and the images, fonts and density files it reads.
POV_REFERENCE_RE = LazyPattern(
    r'#\s*include\s+"([^"\n]+)"'
    r'|\b(?:png|jpeg|gif|tga|tiff|ppm|pgm|hdr|exr|iff|sys|ttf|df3)\s+"([^"\n]+)"')
# By the main file's kind: what a reference looks like, which of the files
# found are read for references in turn, and whether a name is relative to
# the main file's folder (POV-Ray: its library path) or to the file naming it
# (OpenSCAD).
PROJECT_KINDS = {
    '.scad': (SCAD_REFERENCE_RE, ('.scad',), False),
    '.pov': (POV_REFERENCE_RE, ('.pov', '.inc', '.mcr', '.mac'), True),
}


def is_project_name(filename):
    """True for an upload named like a project archive (``main.scad.tgz``)."""
    return (filename or '').lower().endswith(PROJECT_SUFFIXES)


def project_references(path):
    """Files beside a model or scene that it includes or reads (transitively); [] for other kinds."""
    kind = PROJECT_KINDS.get(os.path.splitext(str(path))[1].lower())
    return references_of(path, *kind) if kind else []


def scad_references(path):
    """Files a .scad includes, uses or imports (transitively) that exist beside it."""
    return references_of(path, *PROJECT_KINDS['.scad'])


def references_of(path, pattern, scanned, relative_to_main=False):
    """Existing files that ``path`` names by ``pattern``, and those they name in turn
    (files ending in one of ``scanned``), relative to the file naming them (or to
    ``path``'s folder)."""
    found, todo = [], [os.path.abspath(path)]
    while todo:
        current = todo.pop()
        if not current.lower().endswith(scanned):
            continue
        try:
            with open(current, encoding='utf-8', errors='replace') as handle:
                text = handle.read()
        except OSError:
            continue
        for match in pattern.finditer(text):
            name = next(group for group in match.groups() if group).strip()
            folder = os.path.dirname(os.path.abspath(path) if relative_to_main else current)
            target = os.path.normpath(os.path.join(folder, name))
            if os.path.isfile(target) and target not in found and target != os.path.abspath(path):
                found.append(target)
                todo.append(target)
    return found


def project_root(main, references):
    """The folder a project archive's names are relative to: the common folder of its files."""
    main = os.path.abspath(main)
    return os.path.commonpath([os.path.dirname(main)] + [os.path.dirname(r) for r in references])


def pack_project(main, references):
    """A tar.gz of ``main`` (first member) and its references, paths relative to their common folder."""
    import io
    import tarfile
    main = os.path.abspath(main)
    root = project_root(main, references)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w:gz') as archive:
        for path in [main] + references:
            info = archive.gettarinfo(path, arcname=os.path.relpath(path, root))
            info.uid = info.gid = 0
            info.uname = info.gname = ''
            with open(path, 'rb') as handle:
                archive.addfile(info, handle)
    return buffer.getvalue()


def safe_member_parts(name):
    """The folder names of one archive member, or UsageError (no absolute path, no '..', no dotfiles)."""
    parts = name.split('/')
    while len(parts) > 1 and parts[0] == '.':  # "tar czf p.tgz -C dir ." writes ./NAME
        parts = parts[1:]
    if not name or name.startswith('/') or not all(PROJECT_PART_RE.match(p) for p in parts):
        raise UsageError(f'project archive: refused member name {name[:80]!r}')
    return parts


def unpack_project(store, data):
    """Unpack a project archive into ``tasks/in/<unique>/``; returns the main file's relative path.

    Only regular files and folders, with safe relative names, within the count
    and size limits; the first file is the main one.
    """
    import gzip
    import io
    import shutil
    import tarfile
    folder_name = store.new_input_folder()
    folder = os.path.join(store.folder('in'), folder_name)
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        unpacked = BoundedReader(gzip.GzipFile(fileobj=source, mode='rb'), PROJECT_MAX_READ)
        with tarfile.open(fileobj=unpacked, mode='r|', tarinfo=bounded_tarinfo()) as archive:
            main = _extract_members(archive, folder)
    except (tarfile.TarError, EOFError, OSError, UsageError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, UsageError) or getattr(exc, 'errno', None) in DISK_FULL_ERRORS:
            raise  # a full disk is the server's trouble (507), not a bad archive
        raise UsageError(f'project archive: cannot unpack: {exc}') from None
    return f'tasks/in/{folder_name}/{main}'


# What the archive reader may read: the members' limit plus their headers.
PROJECT_MAX_READ = PROJECT_MAX_BYTES + PROJECT_MAX_FILES * 4 * 512 + 1024 * 1024
# A long-name or pax header is text of a few hundred bytes; one that declares
# more would be read into memory whole before any member limit could run.
PROJECT_MAX_HEADER = 64 * 1024


class BoundedReader:
    """The unpacked bytes of an archive, refused beyond ``limit`` (a small
    .tgz can unpack to gigabytes)."""

    def __init__(self, stream, limit):
        self.stream, self.limit, self.count = stream, limit, 0

    def read(self, size=-1):
        """At most ``size`` bytes; UsageError once the archive unpacks beyond the limit."""
        data = self.stream.read(self.limit - self.count + 1 if size is None or size < 0 else size)
        self.count += len(data)
        if self.count > self.limit:
            raise UsageError('project archive: too many files or too large')
        return data


def bounded_tarinfo():
    """A TarInfo class that refuses oversized long-name and pax headers before reading them."""
    import tarfile

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_gnulong(self, archive):
            _check_header_size(self)
            return super()._proc_gnulong(archive)

        def _proc_pax(self, archive):
            _check_header_size(self)
            return super()._proc_pax(archive)
    return BoundedTarInfo


def _check_header_size(info):
    if info.size > PROJECT_MAX_HEADER:
        raise UsageError(f'project archive: a header of {info.size} bytes is refused '
                         f'(at most {PROJECT_MAX_HEADER})')


def _extract_members(archive, folder):
    main, count, total = None, 0, 0
    for member in archive:
        count += 1
        total += max(member.size, 0)
        if count > PROJECT_MAX_FILES or total > PROJECT_MAX_BYTES:
            raise UsageError('project archive: too many files or too large')
        if member.isdir() and member.name.rstrip('/') in ('.', ''):
            continue  # the archive's own top folder, "./"
        parts = safe_member_parts(member.name.rstrip('/') if member.isdir() else member.name)
        target = os.path.join(folder, *parts)
        if member.isdir():
            os.makedirs(target, exist_ok=True)
            continue
        if not member.isfile():
            raise UsageError(f'project archive: only plain files allowed, not {member.name[:80]!r}')
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.extractfile(member) as source, open(target, 'xb') as sink:
            import shutil
            shutil.copyfileobj(source, sink)
        main = main or '/'.join(parts)
    if main is None:
        raise UsageError('project archive: no file in it')
    return main


class Input:
    """One input of a submission: bytes or an open file, plus the name it came with."""

    def __init__(self, data, filename='', prearg='', shown=''):
        self.data = data
        self.filename = filename
        self.prearg = prearg
        # How the user named it, for the tool's messages: a file's path, a
        # project's folder ('' or 'job/'), '' for content.
        self.shown = shown

    def extension(self, service):
        """The extension to keep (tools need it), from the filename or the service."""
        base = os.path.basename(self.filename or '')
        if '.' in base:
            ext = base.rsplit('.', 1)[1]
            if is_extension(ext):
                return ext
        return service.input_ext


def input_size(store, path):
    """Bytes of one stored input; a project counts all its files."""
    parts = path.split('/')
    if len(parts) > 3:
        folder = os.path.join(store.folder('in'), parts[2])
        return sum(os.path.getsize(os.path.join(top, name))
                   for top, _, names in os.walk(folder) for name in names)
    return os.path.getsize(store.path_of(path))


def store_input(store, service, item):
    """Copy one input into the store: a file, or a project archive unpacked."""
    if is_project_name(item.filename):
        return unpack_project(store, item.data)
    return store.add_input(item.data, item.extension(service))


def submit_task(store, config, service, inputs, native_args=(), notifier='', client='localhost', args='',
                params=(), out_ext=''):
    """Validate, store inputs and record, queue the task and start what can start.

    ``params``: (option, value) pairs of ``paramArgs``; ``out_ext``: the
    output format asked for, one of ``outputExts`` ('' for the default).
    """
    for item in inputs:
        check_prearg(service, item.prearg)
    check_native_args(service, list(native_args))
    check_params(service, params)
    check_output_ext(service, out_ext)
    if not inputs:
        raise UsageError('missing input: give at least one input file or content')
    if notifier:
        check_notifier_url(notifier)
    inputs = [filter_config_input(service, item) for item in inputs]
    stored = []
    try:
        for item in inputs:
            stored.append((item.prearg, store_input(store, service, item)))
            check_input_kind(service, *stored[-1])
        size_in = sum(input_size(store, path) for _, path in stored)
        record = store.create_task(lambda task_id: dict(_new_record(
            service, task_id, stored, native_args, notifier, client, args, size_in, params, out_ext),
            server=config.serverName))
    except BaseException as exc:
        for _, path in stored:
            store.remove_input(path)
        if isinstance(exc, ValueError):  # a field that cannot be a record value
            raise UsageError(str(exc)) from None
        raise
    queue_task(store, record['id'], task_settings(config))
    dispatch(store, config)
    return store.read_task(record['id'])


def check_input_kind(service, prearg, path):
    """A main input (no prearg) of a service with ``inputExts`` must be of one of those kinds."""
    if not prearg and not service.accepts_input(path):
        raise UsageError(f'{service.name} takes {input_kinds(service)} files, '
                         f'not {os.path.basename(path).rpartition(".")[2]!r}')


def input_kinds(service):
    """The kinds of main input a service takes, for messages: ``.gcode, .gco, .g``."""
    return ', '.join(f'.{ext}' for ext in service.input_exts or [service.input_ext] if ext) or 'any'


def _new_record(service, task_id, stored, native_args, notifier, client, args, size_in, params, out_ext):
    import shlex
    record = {
        'service': service.name,
        'status': TaskStatus.BUSY.value,
        'ctime': f'{time.time():.5f}',
        'cmd': shlex.join(compose_argv(service, task_id, stored, native_args, params, out_ext)),
        'in': ','.join(path for _, path in stored),
        'out': '' if service.no_output else 'tasks/out/' + service.output_name(task_id, out_ext),
        'client': client,
        'sizeIn': size_in,
        'queued': 'yes',
    }
    # What the runner composes the argv from (it never runs ``cmd``, which is
    # only shown): the checked native arguments and each input's prearg.
    if native_args:
        record['nativeArgs'] = ' '.join(native_args)
    if params:  # JSON: a value may hold spaces ("a label"), one line all the same
        record['params'] = to_json([list(pair) for pair in params])
    if out_ext:
        record['outExt'] = out_ext
    if any(prearg for prearg, _ in stored):
        record['preargs'] = ','.join(prearg for prearg, _ in stored)
    if notifier:
        record['notifier'] = notifier
    if args:
        record['args'] = args
    return record


CONFIG_INPUT_MAX_BYTES = 1024 * 1024


def filter_config_input(service, item):
    """A config input (given with an argInput prefix, e.g. slic3r's --load=) of a
    service with ``configKeys``: only ``key = value`` lines of listed keys go on.

    A key not on the list is refused by name (``post_process`` runs a program,
    ``output_filename_format`` names a path); an empty value is dropped, as the
    tool would ignore it; comments and blank lines are dropped.
    """
    if not item.prearg or service.config_keys is None:
        return item
    data = item.data if isinstance(item.data, bytes) else item.data.read(CONFIG_INPUT_MAX_BYTES + 1)
    if len(data) > CONFIG_INPUT_MAX_BYTES:
        raise UsageError(f'{service.name} config is larger than {CONFIG_INPUT_MAX_BYTES} bytes')
    kept = [f'{key} = {value}\n' for key, value in config_pairs(service, data)]
    return Input(''.join(kept).encode('utf-8'), item.filename, item.prearg)


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


NOTIFIER_URL_RE = LazyPattern(r'\Ahttps?://[^\s/?#]+[^\s]*\Z')


def check_notifier_url(url):
    """A notifier is an http(s) URL on one line."""
    if not NOTIFIER_URL_RE.match(url or ''):
        raise UsageError(f'bad notifier URL (http or https only): {url!r}')


# What a task's runner works with, fixed when the task is submitted: the
# rrcloudrc files may change or vanish before the task starts or while it runs.
TASK_SETTINGS = ('timeout', 'maxTasks', 'sandbox', 'maxOutputSize', 'notifierAllow')
TASK_SETTINGS_MAX_BYTES = 4096


def task_settings(config):
    """The runner's settings of ``config`` as rrcloudrc lines (read back by task_config)."""
    values = {'timeout': repr(config.timeout), 'maxTasks': str(config.maxTasks),
              'sandbox': 'yes' if config.sandbox else 'no', 'maxOutputSize': str(config.maxOutputSize),
              'notifierAllow': ', '.join(config.notifierAllow)}
    return ''.join(f'{key} = {values[key]}\n' for key in TASK_SETTINGS)


def task_config(text, store):
    """The Config a runner works with: defaults, then the task's settings.

    They came through files and processes other than the runner's own, so
    they are checked as an rrcloudrc is, and only the task settings are taken.
    """
    if not text:
        raise ConfigError('its settings are missing')
    config = Config()
    config.dir = store.root
    for number, key, value in parse_key_value_text(text, 'settings'):
        if key not in TASK_SETTINGS:
            raise ConfigError(f'settings:{number}: {key!r} is not a task setting')
        config._apply('settings', number, key, value, store.root)
    return config


def queue_task(store, task_id, settings):
    """Queue a task: its marker in ``tasks/queue`` holds the settings it runs with."""
    write_file_atomically(os.path.join(store.folder('queue'), check_task_id(task_id)), settings.encode())


def queued_settings(store, task_id):
    """The settings in a task's queue marker ('' for a marker without any)."""
    try:
        with open(os.path.join(store.folder('queue'), check_task_id(task_id)), 'rb') as handle:
            return handle.read(TASK_SETTINGS_MAX_BYTES).decode('utf-8', 'replace')
    except FileNotFoundError:
        return ''


def mark(store, folder, task_id):
    """Put a task's marker into ``tasks/queue`` (waiting) or ``tasks/running``."""
    path = os.path.join(store.folder(folder), check_task_id(task_id))
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))


def unmark(store, folder, task_id):
    """Take a task's marker out of ``tasks/queue`` or ``tasks/running``."""
    _unlink_quietly(os.path.join(store.folder(folder), check_task_id(task_id)))


def marked(store, folder):
    """Ids with a marker in ``tasks/queue`` or ``tasks/running``, oldest first."""
    try:
        return sorted(n for n in os.listdir(store.folder(folder)) if is_task_id(n))
    except FileNotFoundError:
        return []


def dispatch(store, config):
    """Start queued tasks, oldest first, while a slot of ``maxTasks`` is free.

    A slot is an flock on ``tasks/slots/N`` handed to the runner, so it frees
    itself when the runner ends however it ends; no resident process is
    needed (CGI).
    """
    store.ensure()
    with store.lock():
        for task_id in marked(store, 'queue'):
            slot = acquire_slot(store, config.maxTasks)
            if slot is None:
                return
            try:
                _start_queued(store, config, task_id, slot)
            finally:
                os.close(slot)


def acquire_slot(store, max_tasks):
    """An fd holding the flock of a free slot, or None when all are taken."""
    import fcntl
    for number in range(max_tasks):
        fd = os.open(os.path.join(store.folder('slots'), str(number)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


def _start_queued(store, config, task_id, slot_fd):
    """Spawn the runner of one queued task (called under the store lock).

    It runs with the settings its submission wrote into the queue marker; a
    marker without any (written by hand) gets the dispatcher's.
    """
    settings = queued_settings(store, task_id) or task_settings(config)
    if config.sandbox:  # a marker is a file in the store: it never turns this node's sandbox off
        settings += 'sandbox = yes\n'
    unmark(store, 'queue', task_id)
    try:
        record = store.read_task(task_id)
    except NotFound:
        return
    if record.get('status') != TaskStatus.BUSY:
        return
    if record.get('queued') != 'yes':  # a marker rrcloud did not write: never a second run
        print(f'rrcloud: refused a queue marker for task {task_id}, which is not queued', file=sys.stderr)
        return
    record.pop('queued', None)
    record['stime'] = f'{time.time():.5f}'
    try:
        pid = spawn_runner(store, task_id, slot_fd, settings)
    except OSError as exc:
        record.update(status='failed', error=f'cannot start runner: {exc}', etime=record['stime'])
        append_log(store, task_id, f'rrcloud: task {task_id} cannot start: no runner: {exc}')
    else:
        record.update(runner=str(pid), runnerStart=process_start_time(pid) or '')
        mark(store, 'running', task_id)
    store.write_task(record)


def rrcloud_command():
    """argv prefix that runs this very program with this very interpreter.

    It imports rrcloud as a module rather than running the file as a script,
    so Python uses the cached bytecode instead of compiling the file anew.
    """
    folder = os.path.dirname(os.path.realpath(__file__))
    launcher = (f'import sys; sys.path.insert(0, {folder!r}); import rrcloud; '
                f'sys.exit(rrcloud.main(["rrcloud"] + sys.argv[1:]))')
    return [sys.executable, '-c', launcher]


def spawn_runner(store, task_id, slot_fd, settings):
    """Start ``rrcloud _run ID`` detached: own session, no terminal, outlives us."""
    import subprocess
    # Not the request's environment (HTTP_*, GATEWAY_INTERFACE): an allowlist.
    env = {k: os.environ[k] for k in RUNNER_ENV_ALLOWLIST if k in os.environ}
    env['RRCLOUD_SLOT_FD'] = str(slot_fd)
    env['RRCLOUD_TASK_SETTINGS'] = settings
    # A new session: a web server's or terminal's signals to its group never
    # reach the task, and the task survives the request or CLI that started it.
    process = subprocess.Popen(
        rrcloud_command() + ['_run', task_id, '--dir', store.root],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=store.root, env=env, pass_fds=(slot_fd,), start_new_session=True)
    return process.pid


def task_environment(service):
    """The explicit environment of a task: PATH from the service, a short allowlist."""
    env = {key: os.environ[key] for key in TASK_ENV_ALLOWLIST if key in os.environ}
    env['PATH'] = service.path
    env.setdefault('HOME', os.environ.get('TMPDIR', '/tmp'))
    env.setdefault('LANG', 'C.UTF-8')
    return env


def kill_process_group(pgid, sig=None):
    """Signal a whole process group; a group already gone is fine."""
    import signal
    try:
        os.killpg(pgid, signal.SIGKILL if sig is None else sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate_group(process, grace=KILL_GRACE_SECONDS):
    """SIGTERM the tool's process group, then SIGKILL what is left after ``grace``."""
    import signal
    import subprocess
    kill_process_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    kill_process_group(process.pid, signal.SIGKILL)
    process.wait()


def run_task(store, settings, task_id):
    """The detached runner: run one task's tool, record how it ended, start the next."""
    record = store.read_task(task_id)
    try:
        config = task_config(settings, store)
    except ConfigError as exc:
        return cannot_start(store, record, str(exc))
    if record.get('status') != TaskStatus.BUSY:  # killed before it could start
        return _runner_done(store, config, task_id, record)
    try:
        service = find_service(*load_services(store.root), record.get('service', ''))
    except RRCloudError as exc:
        return cannot_start(store, record, str(exc), config)
    try:
        outcome = execute(store, config, service, record)
    except Exception as exc:  # a runner never leaves a task busy
        outcome = (TaskStatus.FAILED, {'error': f'runner error: {exc}'})
    status, fields = outcome
    if status == TaskStatus.FAILED:
        fields = remove_output_of_full_disk(store, record, fields)
    finished = finish_task(store, task_id, status, **fields)
    return _runner_done(store, config, task_id, finished or store.read_task(task_id))


def cannot_start(store, record, reason, config=None):
    """A task whose runner cannot run it: the record and the log say why.

    Without its own settings, the next task is started as if one slot were
    all there is: never more at once than any configuration allows.
    """
    task_id = record['id']
    append_log(store, task_id, f'rrcloud: task {task_id} cannot start: {reason}')
    finished = finish_task(store, task_id, TaskStatus.FAILED, error=f'cannot start: {reason}')
    if config is None:
        config = Config()
        config.maxTasks, config.dir = 1, store.root
    return _runner_done(store, config, task_id, finished or store.read_task(task_id))


def append_log(store, task_id, line):
    """Add one line of rrcloud's own to a task's log (the tool may be writing to it too)."""
    with open(store.log_path(task_id), 'a', encoding='utf-8') as log:
        log.write(line + '\n')


def remove_output_of_full_disk(store, record, fields):
    """A task that failed because the disk filled up: remove what its tool
    left (the space is free again for the next one) and say so.  Otherwise a
    failed task keeps its partial output, for a look at what went wrong."""
    out = store.path_of(record['out']) if record.get('out') else None
    if not out or not os.path.isfile(out):
        return fields
    try:
        stat = os.statvfs(os.path.dirname(out))
    except OSError:
        return fields
    if stat.f_bavail * stat.f_frsize >= DISK_NEARLY_FULL_BYTES:
        return fields
    _unlink_quietly(out)
    return dict(fields, error=f"{fields.get('error', 'failed')}: no space left on device (output removed)")


def _runner_done(store, config, task_id, final):
    """Free this runner's slot, start what waits for it, then call the notifier
    (a slow notifier never holds a slot)."""
    unmark(store, 'running', task_id)
    release_slot()
    dispatch(store, config)
    if final.get('notifier'):
        notify(store, config, final)
    return final


def release_slot():
    """Close the inherited slot fd so the next task may start."""
    fd = os.environ.pop('RRCLOUD_SLOT_FD', None)
    if fd is not None:
        try:
            os.close(int(fd))
        except (OSError, ValueError):
            pass


def execute(store, config, service, record):
    """Run the tool of one task; returns (status, fields to record)."""
    try:
        argv = task_argv(service, record)
    except UsageError as exc:
        return refuse_record(store, record, exc)
    argv = absolute_output(service, record, argv, tool_root(store, config))
    launch = Launch(service, argv, display=needs_display(service, record))
    with open(store.log_path(record['id']), 'ab') as log:
        if launch.missing:
            log.write(f'rrcloud: {launch.missing} not found in {service.path}\n'.encode())
            return TaskStatus.FAILED, {'error': f'cannot start: {launch.missing} not found in {service.path}'}
        work = prepare_work_folder(store, record['id']) if config.sandbox else None
        try:
            outcome = run_tool(store, config, record, launch, log, work)
            if outcome is None and work:
                outcome = take_output(store, config, service, record, work, launch.exit_code)
        finally:
            if work:
                _remove_tree(work)
    outcome = outcome or judge_exit(store, service, record, launch.exit_code)
    return builtin_reason(store, record, outcome) if launch.builtin else outcome


BUILTIN_ERROR_PREFIX = 'rrcloud: error: '


def builtin_reason(store, record, outcome):
    """A built-in (the G-code sender) that failed said why as its last log line
    (``rrcloud: error: cannot open /dev/ttyUSB0 …``): that is the task's error,
    rather than its exit code."""
    status, fields = outcome
    if status != TaskStatus.FAILED or not str(fields.get('error', '')).startswith('exit code'):
        return outcome
    last = last_log_line(store, record['id'])
    if last.startswith(BUILTIN_ERROR_PREFIX) and is_single_line(last):
        return status, dict(fields, error=last[len(BUILTIN_ERROR_PREFIX):].strip())
    return outcome


def last_log_line(store, task_id):
    """The last line of a task's log ('' when there is none)."""
    try:
        with open(store.log_path(task_id), 'rb') as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - 4096))
            lines = log.read().decode('utf-8', 'replace').splitlines()
    except FileNotFoundError:
        return ''
    return lines[-1] if lines else ''


def output_format(service, record):
    """The extension of a task's output format ('' for a service with one format)."""
    return record.get('outExt') or (service.output_exts[0] if service.output_exts else '')


def needs_display(service, record):
    """True when the task's output format is one its tool renders on an X display."""
    return output_format(service, record) in service.display_exts


def tool_root(store, config):
    """The folder a task's tool works in, as the tool sees it: its sandbox's, or the store's."""
    if not config.sandbox:
        return store.root
    from rrc.sandbox import JOB_FOLDER
    return JOB_FOLDER


def absolute_output(service, record, argv, root):
    """The argv with the output given as ``ROOT/tasks/out/NAME`` when the task's format
    is one its tool writes relative to its input's folder (``absoluteOutputExts``);
    the record's ``cmd`` keeps the spec's relative shape."""
    ext = output_format(service, record)
    if service.no_output or ext not in service.absolute_output_exts:
        return argv
    out = 'tasks/out/' + service.output_name(record['id'], ext)
    tail = len(service.output)
    return argv[:-tail] + [word.replace(out, f'{root}/{out}') for word in argv[-tail:]]


# A private X server for the one tool, started and stopped by xvfb-run inside
# the sandbox (its socket in the sandbox's own /tmp; no TCP).
VIRTUAL_DISPLAY = ('xvfb-run', '--auto-servernum')


class Launch:
    """How one task's tool is started: argv, environment, what its sandbox must show."""

    def __init__(self, service, argv, display=False):
        import shutil
        self.env = task_environment(service)
        self.read_paths = list(service.read_paths) + service_path_folders(service)
        self.devices = [arg for arg in argv if arg.startswith('/dev/')]  # allowed ports
        self.builtin = argv[0] == 'rrcloud'
        if self.builtin:  # the G-code sender: this program, this Python
            argv = rrcloud_command() + argv[1:]
            self.read_paths += program_paths()
            self.executable = sys.executable
        else:
            self.executable = shutil.which(argv[0], path=service.path)
        self.argv = [self.executable] + argv[1:]
        self.missing = None if self.executable else argv[0]
        if display:
            runner = shutil.which(VIRTUAL_DISPLAY[0], path=service.path)
            self.argv = [runner] + list(VIRTUAL_DISPLAY[1:]) + self.argv
            self.missing = self.missing or (None if runner else f'{VIRTUAL_DISPLAY[0]} (Debian package xvfb)')
        self.exit_code = None


def run_tool(store, config, record, launch, log, work):
    """Start the tool (sandboxed when ``work`` is given), record its pid, supervise
    it; returns a failure outcome, or None with ``launch.exit_code`` set."""
    import subprocess
    try:
        command = sandbox_command(store, record, launch, work) if work else launch.argv
    except Exception as exc:  # bwrap missing, a bad path: never run unsandboxed instead
        log.write(f'rrcloud: cannot build the sandbox: {exc}\n'.encode())
        return TaskStatus.FAILED, {'error': f'cannot start: {exc}'}
    progress_read, progress_write = os.pipe() if launch.builtin else (None, None)
    if progress_write is not None:
        launch.env['RRCLOUD_PROGRESS_FD'] = str(progress_write)
    try:
        process = subprocess.Popen(
            command, cwd=work or store.root, env=launch.env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            pass_fds=() if progress_write is None else (progress_write,),
            start_new_session=True)  # its own group: timeouts and kills reach grandchildren
    except OSError as exc:
        return TaskStatus.FAILED, {'error': f'cannot start: {exc}'}
    finally:
        if progress_write is not None:
            os.close(progress_write)
    try:
        return watch_tool(store, config, record, process, progress_read)
    finally:
        if progress_read is not None:
            os.close(progress_read)
        launch.exit_code = process.returncode


def watch_tool(store, config, record, process, progress_read):
    """Record the tool's pid, then supervise it until it ends, times out or is killed."""
    try:
        store.update_task(record['id'], {'pid': process.pid,
                                         'pidStart': process_start_time(process.pid) or ''})
    except BaseException:  # an unrecorded tool must not run on unseen
        terminate_group(process)
        raise
    _install_runner_signal_handlers(process)
    progress = ProgressPipe(progress_read)
    code = supervise(store, config, record['id'], process, progress=progress)
    last = progress.latest()  # what came after the last look, up to the end
    if last:
        store.update_task(record['id'], {'progress': last})
    if code is None:
        return TaskStatus.FAILED, {'error': f'timeout after {config.timeout:g} s',
                                   'exitCode': process.returncode}
    kill_process_group(process.pid)  # leftovers of a tool that exited
    return None


def task_argv(service, record):
    """The argv of a task, composed anew from its service conf and its checked fields.

    A record is data that many processes write: its ``cmd`` is shown, never
    run.  A field that does not check (an input outside tasks/in, an argument
    the service does not allow) means rrcloud did not write it: UsageError.
    """
    paths = [path for path in record.get('in', '').split(',') if path]
    preargs = record['preargs'].split(',') if record.get('preargs') else [''] * len(paths)
    if not paths or len(preargs) != len(paths):
        raise UsageError('its inputs and preargs do not match')
    for path in paths:
        check_stored_input(path)
    for prearg in preargs:
        check_prearg(service, prearg)
    native = record.get('nativeArgs', '').split()
    check_native_args(service, native)
    params = record_params(record)
    check_params(service, params)
    out_ext = check_output_ext(service, record.get('outExt', ''))
    return compose_argv(service, check_task_id(record.get('id', '')), list(zip(preargs, paths)), native,
                        params, out_ext)


def record_params(record):
    """The (option, value) pairs of a record's ``params`` field; UsageError when it is not such a list."""
    if not record.get('params'):
        return []
    import json
    try:
        pairs = json.loads(record['params'])
    except ValueError:
        pairs = None
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(w, str) for w in p) for p in pairs):
        raise UsageError('its params are not a list of (option, value) pairs')
    return [tuple(pair) for pair in pairs]


def check_stored_input(path):
    """A record's input path names a stored input: ``tasks/in/NAME[.ext]`` or a
    file of a project folder ``tasks/in/FOLDER/PART/...``; else UsageError."""
    parts = path.split('/')
    name, _, ext = parts[2].partition('.') if len(parts) > 2 else ('', '', '')
    stored = (parts[:2] == ['tasks', 'in'] and is_task_id(name)
              and (not ext or (is_extension(ext) and len(parts) == 3))
              and all(PROJECT_PART_RE.match(part) for part in parts[3:]))
    if not stored:
        raise UsageError(f'input {path[:80]!r} is not a stored input')
    return path


def refuse_record(store, record, reason):
    """A record rrcloud did not write (forged through a tool, or by hand): log it, never run it."""
    message = f'refused: the record does not check ({reason})'
    with open(store.log_path(record['id']), 'a', encoding='utf-8') as log:
        log.write(f'rrcloud: task {record["id"]} {message}\n')
    print(f'rrcloud: task {record["id"]} {message}', file=sys.stderr)
    return TaskStatus.FAILED, {'error': message}


def service_path_folders(service):
    """The folders of a service's PATH: the sandbox must show its tool (it
    leaves out those under /usr, which it shows anyway)."""
    return [real for real in (os.path.realpath(f) for f in service.path.split(':') if f)
            if os.path.isdir(real)]


def program_paths():
    """What the built-in sender needs to run in a sandbox: this program, its
    package and bytecode, and the Python it runs on (nothing of the store)."""
    here = os.path.dirname(os.path.realpath(__file__))
    paths = [os.path.join(here, name) for name in ('rrcloud.py', 'rrc', '__pycache__')]
    return [p for p in paths if os.path.exists(p)] + sorted({sys.prefix, sys.base_prefix, sys.exec_prefix})


def prepare_work_folder(store, task_id):
    """A fresh, empty folder ``tasks/work/ID``: the sandbox's tasks/out."""
    store.ensure()
    folder = os.path.join(store.folder('work'), check_task_id(task_id))
    _remove_tree(folder)  # what a crashed run of the same task left
    os.mkdir(folder, 0o700)
    return folder


def sandbox_command(store, record, launch, work):
    """The bwrap argv around a task's tool: its own inputs, its work folder, nothing else."""
    from rrc.sandbox import Sandbox, is_character_device
    inputs = {}
    for path in record['in'].split(','):
        top = '/'.join(path.split('/')[:3])  # a project binds its whole folder
        inputs[top] = store.path_of(top)
    # A missing port is left out: the sender inside reports it in one line.
    devices = [d for d in launch.devices if is_character_device(d)]
    jail = Sandbox([(host, inside) for inside, host in inputs.items()], work,
                   read_paths=launch.read_paths, devices=devices)
    launch.env.update(HOME='/tmp', TMPDIR='/tmp')
    return jail.command(launch.argv)


def take_output(store, config, service, record, work, exit_code):
    """Copy the result out of the work folder after the tool ended; a failure outcome or None."""
    if service.no_output or not record.get('out'):
        return None
    from rrc.sandbox import collect_output
    name = service.output_name(record['id'], check_output_ext(service, record.get('outExt', '')))
    problem = collect_output(work, name, store.path_of('tasks/out/' + name), config.maxOutputSize)
    if problem:
        return TaskStatus.FAILED, {'error': problem, 'exitCode': exit_code}
    return None


def _remove_tree(path):
    import shutil
    shutil.rmtree(path, ignore_errors=True)


class ProgressPipe:
    """The built-in sender's progress (``DONE/TOTAL`` lines on a pipe), for the runner."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b''
        if fd is not None:
            os.set_blocking(fd, False)

    def latest(self):
        """The newest complete progress line, or None when nothing new came."""
        if self.fd is None:
            return None
        try:
            while chunk := os.read(self.fd, 4096):
                self.buffer += chunk
        except BlockingIOError:
            pass
        lines, _, self.buffer = self.buffer.rpartition(b'\n')
        newest = lines.rsplit(b'\n', 1)[-1].decode('ascii', 'replace').strip()
        done, sep, total = newest.partition('/')
        return newest if sep and done.isdigit() and total.isdigit() else None


def supervise(store, config, task_id, process, interval=0.5, progress=None):
    """Wait for the tool; stop its group on timeout (returns None) or when killed.

    The built-in sender's progress is written to the record as it comes.
    """
    import subprocess
    deadline = time.monotonic() + config.timeout
    while True:
        try:
            return process.wait(timeout=max(0.0, min(interval, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            terminate_group(process)
            return None
        latest = progress.latest() if progress else None
        record = store.update_task(task_id, {'progress': latest}) if latest else store.read_task(task_id)
        if record.get('status') != TaskStatus.BUSY:  # killed meanwhile
            terminate_group(process)
            return process.returncode


def _install_runner_signal_handlers(process):
    """A runner told to stop takes its tool's process group with it."""
    import signal

    def stop(signum, frame):
        terminate_group(process, grace=1.0)
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)


def judge_exit(store, service, record, code):
    """Complete only for exit code 0 and (no output expected or a non-empty output)."""
    fields = {'exitCode': code}
    if code != 0:
        reason = f'killed by signal {-code}' if code < 0 else f'exit code {code}'
        return TaskStatus.FAILED, dict(fields, error=reason)
    if not service.no_output:
        out = store.path_of(record['out'])
        if not os.path.isfile(out) or os.path.getsize(out) == 0:
            return TaskStatus.FAILED, dict(fields, error='no output')
    return TaskStatus.COMPLETE, fields


NOTIFIER_TIMEOUT = 5.0
# Refused notifier targets unless notifierAllow names them: this machine and
# the link-local ranges (cloud metadata services live at 169.254.169.254).
NOTIFIER_REFUSED = ['127.0.0.0/8', '::1/128', '0.0.0.0/8', '::/128', '169.254.0.0/16', 'fe80::/10',
                    # cloud metadata services outside link-local: Alibaba, AWS (IPv6), Azure
                    '100.100.100.200/32', 'fd00:ec2::254/128', '168.63.129.16/32']


def notify(store, config, record):
    """Call the task's notifier URL once; the outcome goes to the log, never to the status."""
    url = record['notifier'].replace('$id', record['id']).replace('$myip', record.get('client', ''))
    try:
        outcome = f'HTTP {notifier_get(url, config.notifierAllow)}'
    except Exception as exc:
        outcome = f'not called: {exc}'
    with open(store.log_path(record['id']), 'a', encoding='utf-8') as log:
        log.write(f'rrcloud: notifier {url}: {outcome}\n')


def notifier_get(url, allowed):
    """One GET of ``url``: the name is resolved once, the address checked and then used.

    http(s) only, no proxy, no redirect followed, a short timeout.
    """
    import threading
    from urllib.parse import urlsplit
    check_notifier_url(url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == 'https' else 80)
    address = resolve_notifier_host(parts.hostname or '', port, allowed)
    connection = _notifier_connection(parts.scheme, parts.hostname, address, port)
    expired = threading.Event()
    deadline = threading.Timer(NOTIFIER_TIMEOUT, _cut_connection, (connection, expired))
    deadline.start()  # the whole GET, not each read: a trickling listener cannot hold the runner
    try:
        target = (parts.path or '/') + (f'?{parts.query}' if parts.query else '')
        connection.request('GET', target, headers={'User-Agent': f'rrcloud/{__version__}',
                                                   'Host': parts.netloc.rpartition('@')[2]})
        status = connection.getresponse().status
        if expired.is_set():  # headers cut short by the deadline parse as complete
            raise TimeoutError
        return status
    except Exception:
        if expired.is_set():
            raise TimeoutError(f'timed out after {NOTIFIER_TIMEOUT:g} s') from None
        raise
    finally:
        deadline.cancel()
        connection.close()


def _cut_connection(connection, expired):
    """Deadline of a notifier call: shut its socket so the blocked read returns."""
    import socket
    expired.set()
    sock = getattr(connection, 'sock', None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def resolve_notifier_host(host, port, allowed):
    """The one address to connect to, or ValueError when it is refused."""
    import socket
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    address = infos[0][4][0]
    if address_in(address, allowed):
        return address
    if address_in(address, NOTIFIER_REFUSED) or address_in(address, own_addresses()):
        raise ValueError(f'address {address} of {host!r} is refused (see notifierAllow)')
    return address


def own_addresses():
    """Every address of this machine's interfaces, as /32 or /128 networks: a
    notifier must not make the server call itself on its LAN address."""
    import socket
    import psutil
    families = (socket.AF_INET, socket.AF_INET6)
    return [address.address.split('%', 1)[0] + ('/32' if address.family == socket.AF_INET else '/128')
            for addresses in psutil.net_if_addrs().values() for address in addresses
            if address.family in families]


def _notifier_connection(scheme, host, address, port):
    """An http.client connection to ``address`` that still speaks TLS to ``host``."""
    import http.client
    if scheme == 'http':
        return http.client.HTTPConnection(address, port, timeout=NOTIFIER_TIMEOUT)
    import socket
    import ssl
    context = ssl.create_default_context()

    class PinnedHTTPS(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection((address, port), NOTIFIER_TIMEOUT)
            self.sock = context.wrap_socket(raw, server_hostname=host)
    return PinnedHTTPS(host, port, timeout=NOTIFIER_TIMEOUT, context=context)


def kill_task(store, task_id, by):
    """Stop a busy task: status failed, error killed; the tool's group gets SIGTERM.

    ``by`` says who asked (a client's address, the command line): the task's
    log keeps it, so a killed task's log tells why it ended.
    """
    store.read_task(task_id)  # NotFound before anything is created
    with store.lock():
        record = store.read_task(task_id)
        if record.get('status') != TaskStatus.BUSY:
            raise UsageError(f'task {task_id} is not running (status {record.get("status")})')
        unmark(store, 'queue', task_id)
        record.update(status='failed', error='killed', etime=f'{time.time():.5f}')
        record.pop('queued', None)
        store.write_task(record)
    append_log(store, task_id, f'rrcloud: task {task_id} killed by {by}')
    if record.get('pid') and process_is(record['pid'], record.get('pidStart')):
        import signal
        kill_process_group(int(record['pid']), signal.SIGTERM)
    return record


def wait_for_task(store, task_id, timeout=None, on_poll=None):
    """Block until the task leaves busy (or ``timeout``); returns its record."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.005
    while True:
        record = get_task(store, task_id)
        if record.get('status') != TaskStatus.BUSY:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            return record
        if on_poll:
            on_poll(record)
        time.sleep(delay)
        delay = min(delay * 1.5, 0.025)


###############################################################################
# Printing ####################################################################
###############################################################################

PRINT_DEFAULT_BAUD = 115200
# Silence that fails a print (--timeout=S): not a single line from the printer
# for this long, pokes included.  A long M109 or G28 is not silent: Marlin
# reports busy: or temperatures while it works.
PRINT_ANSWER_TIMEOUT = 60.0
# Silence after which the printer is poked with M105 (--comm-timeout=S): an ok
# lost on the wire, or a Marlin that sends Resend: without its ok, would
# otherwise stall the print until the full timeout.
PRINT_COMM_TIMEOUT = 3.0
# The same while the printer reported busy: or temperatures since the line
# went out: Marlin's keepalive comes every 2 s by default, and M113 can
# stretch it; a poke then only queues an M105 behind the long command.
PRINT_BUSY_COMM_TIMEOUT = 10.0
# A board that resets when the port opens prints "start" after its boot (1 to
# 3 s with an Arduino bootloader); one that does not reset prints nothing.
# Probe with M110 N0 every PRINT_PROBE_INTERVAL for PRINT_BANNER_WAIT, then
# every communication timeout.
PRINT_BANNER_WAIT = 5.0
PRINT_PROBE_INTERVAL = 1.0
# After "start", time for a probe that raced the boot to be answered before
# the next one goes (the boot dropped the others).
PRINT_BOOT_SETTLE = 0.2
# Unanswered M105 pokes at most: Marlin queues each one behind a long command
# in its 4-command buffer (BUFSIZE), and a full buffer stops it reading.
PRINT_MAX_POKES = 3
# The same line asked for this many times in a row: the link is broken.
PRINT_MAX_RESENDS = 10
PRINT_PROGRESS_INTERVAL = 0.5
RESEND_RE = LazyPattern(rb'(?i)\A(?:Resend|rs)[: ]\s*N?:?\s*([0-9]+)')
# The Error: lines that come with a resend request, because a line arrived
# garbled (Marlin's GCodeQueue: "checksum mismatch", "Line Number is not Last
# Line Number+1", "No Checksum with line number", "No Line Number with
# checksum"; Repetier: "expected line"): logged, the line goes again.  Any
# other Error: (or !!) is the firmware stopping: kill(), MAXTEMP, thermal
# runaway.
PRINT_LINE_ERRORS = (b'checksum', b'line number', b'expected line')


GCODE_PAREN_COMMENT_RE = LazyPattern(r'\([^)]*\)')


def gcode_lines(path):
    """The code lines of a G-code file: comments (; and parentheses) and blanks stripped."""
    lines = []
    with open(path, encoding='utf-8', errors='replace') as handle:
        for raw in handle:
            code = GCODE_PAREN_COMMENT_RE.sub('', raw.split(';', 1)[0]).strip()
            if code:
                lines.append(code)
    return lines


def checksummed(number, code):
    """``N<n> <code>*<checksum>``; the checksum is the XOR of every byte before '*'."""
    body = f'N{number} {code}'.encode('ascii', 'replace')
    checksum = 0
    for byte in body:
        checksum ^= byte
    return body + b'*%d\n' % checksum


def check_serial_port(port):
    """PrinterError unless ``port`` is a character device (checked without opening it)."""
    import stat
    try:
        mode = os.stat(port).st_mode
    except OSError as exc:
        raise PrinterError(f'cannot open {port}: {exc.strerror}') from None
    if not stat.S_ISCHR(mode):
        raise PrinterError(f'refusing {port}: not a serial device')


class SerialLink:
    """Line I/O on a serial port's file descriptor (pyserial sets the port up)."""

    def __init__(self, port, baud):
        check_serial_port(port)
        import serial
        try:
            self.serial = serial.Serial(port, baud, timeout=0, write_timeout=10, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PrinterError(f'cannot open {port}: {exc}') from None
        self.fd = self.serial.fileno()
        self.buffer = b''

    def send(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def read_line(self, timeout):
        """The next line (without its end), or None after ``timeout`` seconds of silence."""
        import select
        deadline = time.monotonic() + timeout
        while b'\n' not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise PrinterError('the printer closed the port')
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b'\n', 1)
        return line.strip()

    def close(self):
        self.serial.close()


def is_printer_error(line):
    """An ``Error:`` or ``!!`` line."""
    return line[:5].lower() == b'error' or line.startswith(b'!!')


class GcodeSender:
    """Streams G-code to Marlin-like firmware, one line in flight.

    The rules, each with the firmware behaviour behind it:

    connect   Probe with ``M110 N0`` (Marlin takes it without a line number
              and sets its line counter to 0) every second until an ``ok``.
              A board that resets on open drops input while it boots, then
              prints ``start`` (setup()): probe again once it has settled.
    send      ``N<n> <code>*<xor>``.  Marlin's GCodeQueue takes line n only
              if n is its last line + 1 and the checksum matches; otherwise
              ``Error:...``, ``Resend: <last + 1>``, ``ok``.
    resend    ``Resend: k`` with k up to the line in flight: go back to k.
              ``Resend:`` of the line after the one in flight: the printer
              has that line already (a copy reached it twice and Marlin
              refused the second with "Line Number is not Last Line
              Number+1"): go on.  The same line asked for PRINT_MAX_RESENDS
              times in a row: the link is broken, stop.
    ok        Marlin answers each command with one ok, in order (``owed``
              keeps that order).  An ok that carries temperatures answers an
              M105: whatever was owed before it lost its ok on the way.
    silence   No line at all for the communication timeout (longer after
              busy: or temperature reports, as during M109, M190, G28): poke
              with M105 and carry on when it answers.  No line for the full
              answer timeout, pokes and all: stop.
    errors    The Error: lines of PRINT_LINE_ERRORS come with a resend and
              are only logged; any other Error: or !! line stops the print
              with that line.  So does ``start`` mid-print (a reset).
    """

    def __init__(self, link, lines, answer_timeout=PRINT_ANSWER_TIMEOUT, progress=None, log=None,
                 comm_timeout=PRINT_COMM_TIMEOUT):
        from collections import deque
        self.link = link
        self.lines = lines
        self.answer_timeout = answer_timeout
        self.comm_timeout = comm_timeout
        self.progress = progress or (lambda done, total: None)
        self.log = log or (lambda text: None)
        self.acked = 0
        # What the printer owes an ok for, oldest first: (is a line of the
        # file, its ok carries temperatures).
        self.owed = deque()
        self.heard = time.monotonic()  # the printer's last line, or our last line to it
        self.poked_at = 0.0
        self.busy = False              # busy: or temperatures since the last line went out
        self.asked = (0, 0)            # (line, times in a row) of resend requests

    # -- connect --------------------------------------------------------------

    def connect(self, banner_wait=PRINT_BANNER_WAIT):
        """Probe with ``M110 N0`` until the printer answers ok; True if it was reset (sent start)."""
        started = time.monotonic()
        probe_due, reset = started, False
        while True:
            line = self._read(probe_due)
            if line is None:
                if self._silence() >= self.answer_timeout:
                    raise PrinterError(f'the printer did not answer (no reply to M110 N0 for '
                                       f'{self.answer_timeout:g} s)')
                self._send_command(b'M110 N0', reports=False)
                now = time.monotonic()
                probe_due = now + (PRINT_PROBE_INTERVAL if now - started < banner_wait else self.comm_timeout)
            elif line.startswith(b'ok'):
                self._match_ok(line)
                self.log(f'printer ready after {time.monotonic() - started:.1f} s'
                         f'{" (it was reset)" if reset else ""}')
                return reset
            elif line == b'start':
                self.owed.clear()  # the boot dropped every probe it got
                probe_due, reset = time.monotonic() + PRINT_BOOT_SETTLE, True
            elif is_printer_error(line):
                self._check_error(line)

    # -- print ----------------------------------------------------------------

    def run(self):
        """Send every line once (resends aside); PrinterError when the printer fails or falls silent."""
        number, last_progress = 1, 0.0
        while number <= len(self.lines):
            self._send_line(number)
            following = self._await_answer(number)
            self.acked = max(self.acked, following - 1)
            number = following
            if time.monotonic() - last_progress >= PRINT_PROGRESS_INTERVAL:
                last_progress = time.monotonic()
                self.progress(self.acked, len(self.lines))
        self.progress(self.acked, len(self.lines))

    def _send_line(self, number):
        code = self.lines[number - 1]
        self.link.send(checksummed(number, code))
        self.owed.append((True, code[:4].upper() == 'M105' and not code[4:5].isdigit()))
        self.heard = time.monotonic()  # silence counts from here
        self.busy = False

    def _await_answer(self, number):
        """Read until line ``number`` is answered; the number of the line to send next."""
        following = number + 1
        while True:
            line = self._read(max(self.heard, self.poked_at) + self._patience())
            if line is None:
                if self._silence() >= self.answer_timeout:
                    unanswered = '; M105 went unanswered too' if self.poked_at > self.heard else ''
                    raise PrinterError(f'the printer stopped answering (no reply for '
                                       f'{self.answer_timeout:g} s after line {number}{unanswered})')
                self._poke(number)
            elif line.startswith(b'ok'):
                self._match_ok(line)
                if not any(is_line for is_line, _ in self.owed):
                    if following == number + 1:
                        self.asked = (0, 0)
                    return following
            elif is_printer_error(line):
                self._check_error(line)
            elif line == b'start':
                raise PrinterError(f'the printer restarted (it sent start) after line {number}')
            elif b'busy:' in line or b'T:' in line:
                self.busy = True
            else:
                match = RESEND_RE.match(line)
                if match:
                    following = self._resend_target(int(match.group(1)), number)
                # echo:, position reports and unknown lines: the printer is alive

    def _resend_target(self, asked, number):
        """The line to go on with after ``Resend: asked`` while line ``number`` is in flight."""
        if asked == number + 1:
            self.log(f'printer asked for line {asked}, not sent yet: it has line {number} already; going on')
            return asked
        if not 1 <= asked <= number:
            raise PrinterError(f'printer asked to resend line {asked}, but line {number} was the last sent')
        times = self.asked[1] + 1 if self.asked[0] == asked else 1
        if times >= PRINT_MAX_RESENDS:
            raise PrinterError(f'the printer asked for line {asked} {times} times in a row: '
                               f'the serial link is broken (cable, baud rate, interference)')
        self.asked = (asked, times)
        return asked

    def _check_error(self, line):
        """Log an Error: line; stop unless it is one that comes with a resend."""
        text = line.decode(errors='replace')
        self.log(f'printer: {text}')
        lowered = line.lower()
        if line.startswith(b'!!') or not any(words in lowered for words in PRINT_LINE_ERRORS):
            raise PrinterError(f'printer error: {text}')

    # -- oks, silence and pokes -----------------------------------------------

    def _send_command(self, command, reports):
        """An unnumbered command of our own (probe or poke); its ok is owed like a line's."""
        self.link.send(command + b'\n')
        self.owed.append((False, reports))
        self.poked_at = time.monotonic()

    def _match_ok(self, line):
        """Take one ok off ``owed``, oldest first; an ok with temperatures answers the oldest M105."""
        if b'T:' in line and any(reports for _, reports in self.owed):
            while not self.owed.popleft()[1]:
                pass  # answered before this M105 without an ok: the ok was lost
        elif self.owed:
            self.owed.popleft()

    def _patience(self):
        if self.busy:
            return max(self.comm_timeout, PRINT_BUSY_COMM_TIMEOUT)
        return self.comm_timeout

    def _silence(self):
        return time.monotonic() - self.heard

    def _poke(self, number):
        """M105 to a silent printer: Marlin answers it after everything sent before it."""
        if sum(1 for is_line, _ in self.owed if not is_line) >= PRINT_MAX_POKES:
            self.poked_at = time.monotonic()
            return
        self.log(f'no answer to line {number} for {self._silence():.1f} s; sending M105')
        self._send_command(b'M105', reports=True)

    def _read(self, until):
        """The printer's next line, or None at ``until`` or after ``answer_timeout`` s of silence."""
        left = min(until, self.heard + self.answer_timeout) - time.monotonic()
        line = self.link.read_line(max(left, 0.0))
        if line is not None:
            self.heard = time.monotonic()
        return line


def cmd_print(args):
    """``rrcloud print [--baud=N] [--timeout=S] [--comm-timeout=S] PORT FILE``: the built-in G-code sender."""
    options, (port, path) = _print_arguments(args)
    check_serial_port(port)  # a wrong port is named even when the file is wrong too
    lines = gcode_lines(path)
    link = SerialLink(port, options['baud'])
    started = time.monotonic()
    try:
        sender = GcodeSender(link, lines, options['timeout'], task_progress_writer(), _print_log,
                             comm_timeout=options['comm-timeout'])
        sender.connect()
        sender.run()
    finally:
        link.close()
    elapsed = time.monotonic() - started
    _print_log(f'printed {len(lines)} lines in {elapsed:.1f} s')
    return ExitCode.OK


def _print_arguments(args):
    """(options, [PORT, FILE]) of ``rrcloud print``; UsageError for anything else."""
    options = {'baud': PRINT_DEFAULT_BAUD, 'timeout': PRINT_ANSWER_TIMEOUT,
               'comm-timeout': PRINT_COMM_TIMEOUT}
    positional = []
    for arg in args:
        name, sep, value = arg[2:].partition('=')
        if arg.startswith('--') and sep and name in options:
            try:
                options[name] = _positive_int(value) if name == 'baud' else _positive_number(value)
            except ValueError:
                raise UsageError(f'bad value for --{name}: {value!r}') from None
        elif arg.startswith('--'):
            raise UsageError(f'unknown print option: {arg!r}')
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise UsageError('usage: rrcloud print [--baud=N] [--timeout=S] [--comm-timeout=S] PORT FILE.gcode')
    return options, positional


def _print_log(text):
    print(f'rrcloud print: {text}', flush=True)


def task_progress_writer():
    """Progress goes to the runner as ``DONE/TOTAL`` lines on the pipe it gave us
    (a sandboxed sender sees no store); None when run by hand."""
    fd = os.environ.get('RRCLOUD_PROGRESS_FD', '')
    if not fd.isdigit():
        return None

    def write(done, total):
        try:
            os.write(int(fd), f'{done}/{total}\n'.encode())
        except OSError:
            pass  # a runner that went away takes the print with it anyway
    return write


###############################################################################
# HTTP client #################################################################
###############################################################################

# A 0.019 server's ids are <seconds>-<6 digits>; ours have three parts.
REMOTE_ID_RE = LazyPattern(r'\A[0-9]{1,12}-[0-9]{1,6}(-[0-9]{1,6})?\Z')
REMOTE_OUT_RE = LazyPattern(r'\Atasks/out/([A-Za-z0-9][A-Za-z0-9._-]{0,200})\Z')
META_TIMEOUT = 2.0
CONNECT_TIMEOUT = 3.0
POLL_WAIT = 30
MAX_POLL_BACKOFF = 2.0


PORT_SUFFIX_RE = LazyPattern(r':[0-9]+\Z')


def server_url(server, port):
    """``host``, ``host:port`` or a URL -> a base URL ending in ``/``."""
    if not SERVER_RE.match(server):
        raise UsageError(f'bad server: {server!r}')
    if server.startswith(('http://', 'https://')):
        return server if server.endswith('/') else server + '/'
    host = server if PORT_SUFFIX_RE.search(server) else f'{server}:{port}'
    return f'http://{host}/'


def parse_answer(response):
    """A server's answer as a dict: JSON object, or the spec's ``key: value`` lines."""
    text = response.text
    if response.headers.get('Content-Type', '').startswith('application/json'):
        try:
            import json
            value = json.loads(text)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return parse_record(text)


def http_session(config):
    """A requests session that ignores proxy settings and sends each server its token."""
    import requests
    session = requests.Session()
    session.trust_env = False

    def add_token(request):
        token = config.token_for(request.url)
        if token:
            request.headers['Authorization'] = f'Bearer {token}'
        return request
    session.auth = add_token
    return session


def probe_load(session, url):
    """One short ``meta`` request: a sort key (lower is less loaded), or None."""
    try:
        answer = parse_answer(session.get(url, params={'service': 'meta'}, timeout=META_TIMEOUT))
    except Exception:
        return None
    if 'RepRapCloud' not in answer.get('version', ''):
        return None
    try:
        slots = max(1, int(answer.get('maxTasks') or 1))
        waiting = int(answer.get('busy') or 0) + int(answer.get('queued') or 0)
        load = float(answer.get('cpuLoad') or 0)
    except ValueError:
        return None
    return (waiting / slots, load)


def rank_servers(session, urls):
    """Servers in the order to try: least loaded first; silent ones dropped.

    One server needs no probe: the submission itself tells whether it answers.
    """
    if len(urls) == 1:
        return list(urls), []
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        keys = list(pool.map(lambda url: probe_load(session, url), urls))
    ranked = sorted((key, index) for index, key in enumerate(keys) if key is not None)
    silent = [url for url, key in zip(urls, keys) if key is None]
    return [urls[index] for _, index in ranked], silent


def post_task(session, url, service, inputs, native, notifier, params=(), out_ext=''):
    """Upload one task (the spec's field names); the server's record, or None.

    ``paramN`` and ``outExt`` go only when there are any: a 0.019 server
    knows neither.
    """
    fields = {'service': service.name}
    if native:
        fields['nativeArgs'] = ' '.join(native)
    for number, (option, value) in enumerate(params):
        fields[f'param{number}'] = f'{option} {value}'
    if out_ext:
        fields['outExt'] = out_ext
    if notifier:
        fields['notifier'] = notifier
    files = {}
    for number, item in enumerate(inputs):
        if item.prearg:
            fields[f'prearg{number}'] = item.prearg
        name = os.path.basename(item.filename) or f'input.{item.extension(service) or "txt"}'
        files[f'fileIn{number}'] = (name, item.data)
    try:
        response = session.post(url, data=fields, files=files, timeout=(CONNECT_TIMEOUT, 300))
    except Exception as exc:
        return None, f'{url}: {exc.__class__.__name__}'
    answer = parse_answer(response)
    if response.status_code != 200 or not REMOTE_ID_RE.match(answer.get('id', '')):
        reason = answer.get('error') or f'HTTP {response.status_code}, not an rrcloud answer'
        if 400 <= response.status_code < 500:
            raise UsageError(f'{url} refused the task: {reason}')
        return None, f'{url}: {reason}'
    return answer, None


def submit_remote(ctx, service, servers, inputs, native, params=(), out_ext=''):
    """Send a task to the least loaded server that takes it; record it locally."""
    session = http_session(ctx.config)
    urls = [server_url(s, ctx.config.port) for s in servers]
    ranked, silent = rank_servers(session, urls)
    tried = [f'{url}: no answer to meta' for url in silent]
    for url in ranked:
        answer, failure = post_task(session, url, service, inputs, native, ctx.options.notifier,
                                    params, out_ext)
        if answer:
            return record_remote(ctx.store, url, service, answer)
        tried.append(failure)
    raise NoServer('no server took the task; tried ' + '; '.join(tried))


def record_remote(store, url, service, answer):
    """The local record of a remote task: its server, its remote id, busy."""
    remote_id = answer['id']
    record = {'remoteId': remote_id, 'server': url, 'service': service.name,
              'status': TaskStatus.BUSY.value, 'ctime': f'{time.time():.5f}',
              'client': 'localhost'}
    preferred = remote_id if is_task_id(remote_id) else None
    return store.create_task(lambda task_id: record, preferred_id=preferred)


def refresh_remote(store, record, session, wait=0):
    """Ask a busy remote task's server about it; fetch result and log when it ended."""
    url = record['server']
    params = {'service': 'info', 'id': record['remoteId']}
    if wait:
        params['wait'] = str(wait)
    response = session.get(url, params=params, timeout=(CONNECT_TIMEOUT, wait + 30))
    if response.status_code == 404:
        return store.update_task(record['id'], {
            'status': TaskStatus.FAILED.value, 'etime': f'{time.time():.5f}',
            'error': 'the server no longer knows this task'}, only_if_busy=True) or store.read_task(record['id'])
    answer = parse_answer(response)
    status = answer.get('status')
    if status not in (TaskStatus.COMPLETE, TaskStatus.FAILED):
        return record
    changes = {k: answer[k] for k in ('exitCode', 'error', 'etime', 'cmd') if _single_line(answer.get(k))}
    out_match = REMOTE_OUT_RE.match(answer.get('out', ''))
    if status == TaskStatus.COMPLETE and out_match:
        local_out = _local_out_name(record['id'], out_match.group(1))
        fetch_to(session, url + 'tasks/out/' + out_match.group(1), store.folder('out'), local_out)
        changes['out'] = 'tasks/out/' + local_out
        changes['sizeOut'] = os.path.getsize(os.path.join(store.folder('out'), local_out))
    elif status == TaskStatus.COMPLETE and answer.get('out'):
        status, changes['error'] = TaskStatus.FAILED, 'server named an unsafe result path'
    try:
        fetch_to(session, url + 'tasks/log/' + record['remoteId'], store.folder('log'), record['id'])
    except RRCloudError:
        pass  # a missing log is no reason to lose the result
    changes['status'] = status.value if isinstance(status, TaskStatus) else status
    return store.update_task(record['id'], changes, only_if_busy=True) or store.read_task(record['id'])


def _single_line(value):
    return isinstance(value, str) and value and is_single_line(value)


def _local_out_name(task_id, remote_name):
    """``<local id>[.ext]``: the server's name lends only its extension."""
    ext = remote_name.rsplit('.', 1)[1] if '.' in remote_name else ''
    return f'{task_id}.{ext}' if is_extension(ext) else task_id


def fetch_to(session, url, folder, name):
    """Download ``url`` into ``folder/name`` atomically (name is ours, never the server's)."""
    response = session.get(url, stream=True, timeout=(CONNECT_TIMEOUT, 300))
    if response.status_code != 200:
        raise RRCloudError(f'cannot fetch {url}: HTTP {response.status_code}')
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f'.{name}.{os.getpid()}.part')
    try:
        with open(temp, 'wb') as handle:
            for chunk in response.iter_content(65536):
                handle.write(chunk)
        os.replace(temp, os.path.join(folder, name))
    except BaseException:
        _unlink_quietly(temp)
        raise


def wait_remote(store, config, record, progress=None):
    """Wait for a remote task with the server's long-poll (or capped polling).

    A server that goes away (a restart) is asked again for ``reconnectTimeout``
    seconds: the task runs on there without us.
    """
    session = http_session(config)
    backoff = 0.1
    started = time.monotonic()
    lost_since = None
    if progress:
        progress(record, 0.0)
    wait = 1 if progress else POLL_WAIT  # a terminal's progress line moves every second
    while record.get('status') == TaskStatus.BUSY:
        asked = time.monotonic()
        try:
            record = refresh_remote(store, record, session, wait=wait)
            lost_since = None
        except OSError:  # requests' errors are OSErrors
            lost_since = lost_since or asked
            give_up_if_lost(config, record, time.monotonic() - lost_since)
        if progress:
            progress(record, time.monotonic() - started, 'reconnecting' if lost_since else None)
        if record.get('status') == TaskStatus.BUSY and time.monotonic() - asked < 1.0:
            time.sleep(backoff)  # the server did not hold the answer: a 0.019 server, or none
            backoff = min(backoff * 1.5, MAX_POLL_BACKOFF)
    return record


def give_up_if_lost(config, record, lost_for):
    """NoServer once a server stayed away ``reconnectTimeout`` seconds, with the way back."""
    if lost_for >= config.reconnectTimeout:
        raise NoServer(f'lost {record["server"]} while waiting for task {record["id"]} '
                       f'(no answer for {lost_for:.0f} s); it may still finish there: '
                       f'`rrcloud info {record["id"]}` fetches its result into tasks/out/ later')


def kill_remote(store, config, record):
    """Ask a remote task's server to kill it; returns the local record, updated from the server.

    Raises NoServer when the server cannot be reached, RRCloudError when it
    refuses, UsageError when the task had already ended there (its result is
    then fetched): the task is never called killed unless the server said so.
    """
    session = http_session(config)
    url, remote_id = record['server'], record['remoteId']
    try:
        response = session.get(url, params={'service': 'kill', 'id': remote_id}, timeout=(CONNECT_TIMEOUT, 30))
    except OSError as exc:  # requests' errors are OSErrors
        raise NoServer(f'cannot reach {url} to kill task {record["id"]} ({exc.__class__.__name__}); '
                       'it may still run there') from None
    answer = parse_answer(response)
    killed = response.status_code == 200 and answer.get('error') == 'killed'
    try:
        record = refresh_remote(store, record, session)
    except OSError:
        pass  # the kill itself was answered; the log comes with the next info
    if killed:
        return store.update_task(record['id'], {'status': TaskStatus.FAILED.value, 'error': 'killed',
                                                'etime': f'{time.time():.5f}'}, only_if_busy=True) or record
    if record.get('status') != TaskStatus.BUSY:
        raise UsageError(f'task {record["id"]} is not running (status {record.get("status")})')
    reason = _printable(answer.get('error') or f'HTTP {response.status_code}')
    raise RRCloudError(f'{url} did not kill task {record["id"]}: {reason}')


def _printable(text):
    """A server's text as it may reach a terminal: no control characters."""
    return ''.join(c if c.isprintable() else '?' for c in str(text))


###############################################################################
# WSGI app ####################################################################
###############################################################################

MAX_WAIT_SECONDS = 60
# `in` is what 0.019's synchronous client posts beside its uploads: its own
# local input paths.  It is checked like any text field and never used.
FORM_FIELD_RE = LazyPattern(r'\A(service|fileIn[0-9]{1,3}|prearg[0-9]{1,3}|arg[0-9]{1,3}|param[0-9]{1,3}'
                           r'|nativeArgs|outExt|notifier|format|id|wait|token|in)\Z')
NAMED_FIELDS = frozenset(('service', 'nativeArgs', 'outExt', 'notifier', 'format', 'id', 'wait', 'token', 'in'))
NUMBERED_FIELDS = ('fileIn', 'prearg', 'arg', 'param')


def is_form_field(key):
    """``FORM_FIELD_RE``."""
    if key in NAMED_FIELDS:
        return True
    for prefix in NUMBERED_FIELDS:
        if key.startswith(prefix):
            number = key[len(prefix):]
            return 0 < len(number) <= 3 and DIGITS.issuperset(number)
    return False


CONTROL_SERVICES = ('info', 'meta', 'kill')
OUT_NAME_RE = LazyPattern(r'\A[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z')
STATUS_LINES = {200: '200 OK', 204: '204 No Content', 400: '400 Bad Request',
                401: '401 Unauthorized', 403: '403 Forbidden',
                404: '404 Not Found', 405: '405 Method Not Allowed',
                413: '413 Payload Too Large', 500: '500 Internal Server Error',
                502: '502 Bad Gateway', 503: '503 Service Unavailable',
                507: '507 Insufficient Storage'}


class Response:
    """Status, headers and body of one answer."""

    def __init__(self, body=b'', status=200, content_type='text/plain; charset=utf-8', headers=()):
        self.status = status
        self.body = body if isinstance(body, (bytes, list)) or hasattr(body, 'read') else body.encode('utf-8')
        self.headers = [('Content-Type', content_type), ('Access-Control-Allow-Origin', '*')]
        self.headers += list(headers)


class Request:
    """The parts of a WSGI request rrcloud looks at; the form is parsed on demand."""

    def __init__(self, environ):
        self.environ = environ
        self.method = environ.get('REQUEST_METHOD', 'GET').upper()
        self.path = _request_path(environ)
        self.query = _parse_query(environ.get('QUERY_STRING', ''))
        self.client = environ.get('REMOTE_ADDR', '') or 'unknown'
        self.form, self.files = dict(self.query), {}
        self.parsed = False
        self.browser = 'Mozilla' in environ.get('HTTP_USER_AGENT', '')

    @property
    def format(self):
        return 'json' if self.form.get('format') == 'json' else 'text'

    def read_form(self, config):
        """Parse a POST body (multipart or urlencoded) with the multipart package, within the limits."""
        length = self.environ.get('CONTENT_LENGTH') or ''
        if length and not length.isdigit():
            raise HTTPError(400, 'bad Content-Length')
        if int(length or 0) > config.maxRequestSize:
            raise HTTPError(413, f'request too large (at most {config.maxRequestSize} bytes)')
        import multipart
        try:
            forms, files = multipart.parse_form_data(
                self.environ, strict=True, part_limit=config.maxInputs * 2 + 16,
                memory_limit=min(config.maxRequestSize, 64 * 1024 * 1024),
                disk_limit=config.maxRequestSize, spool_limit=1024 * 1024)
        except multipart.MultipartError as exc:
            if str(exc).startswith(('Memory limit', 'Disk limit', 'Maximum segment size')):
                raise HTTPError(413, f'request too large (at most {config.maxRequestSize} bytes)') from None
            status = 413 if isinstance(exc, multipart.ParserLimitReached) else 400
            raise HTTPError(status, f'bad form data: {exc}') from None
        for key, value in forms.iterallitems():
            self._add_field(key, value, config)
        for key, part in files.iterallitems():
            self._add_field(key, part, config)
        self.parsed = True

    def _add_field(self, key, value, config):
        if not is_form_field(key):
            raise HTTPError(400, f'unknown form field: {key[:64]!r}')
        if isinstance(value, str) and not key.startswith('fileIn'):
            _check_length(key, value, config)
        if key in self.form or key in self.files:
            raise HTTPError(400, f'form field given twice: {key}')
        if isinstance(value, str):
            self.form[key] = value
        else:
            self.files[key] = value


def _request_path(environ):
    """The path below the application (SCRIPT_NAME stripped by the server)."""
    path = environ.get('PATH_INFO', '') or '/'
    return path


PERCENT_RE = LazyPattern(rb'%([0-9A-Fa-f]{2})')


def percent_decode(text):
    """Decode one query-string component (``+`` is a space); urllib.parse costs a CGI 1.5 ms."""
    raw = text.replace('+', ' ').encode('latin-1', 'replace')
    if b'%' in raw:  # most fields hold none: no pattern, no `re` import
        raw = PERCENT_RE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)
    return raw.decode('utf-8', 'replace')


def _parse_query(query):
    fields = {}
    for pair in query.split('&'):
        if not pair:
            continue
        key, _, value = pair.partition('=')
        key, value = percent_decode(key), percent_decode(value)
        if not is_form_field(key):
            raise HTTPError(400, f'unknown query field: {key[:64]!r}')
        if key in fields:
            raise HTTPError(400, f'query field given twice: {key}')
        fields[key] = value
    return fields


def _check_field(name, value, config):
    """A text field (query or body) is one line within ``maxFieldLength``."""
    _check_length(name, value, config)
    return _check_line(name, value)


def _check_length(name, value, config):
    if len(value) > config.maxFieldLength:
        raise HTTPError(400, f'field {name} is longer than {config.maxFieldLength} characters')


def _check_line(name, value):
    """Text fields are single lines: a CR, LF or NUL could forge a record key."""
    if not is_single_line(value):
        raise HTTPError(400, f'field {name} holds a line break or NUL')
    return value


_APP_CONTEXT = {}


def app_context():
    """Config, store and services of this server (loaded once per process)."""
    if 'store' not in _APP_CONTEXT:
        config = load_config()
        _APP_CONTEXT.update(config=config, store=Store(config.dir))
        _APP_CONTEXT.setdefault('started', process_started_at(os.getpid()))  # any WSGI server
    return _APP_CONTEXT['config'], _APP_CONTEXT['store']


def application(environ, start_response):
    """The WSGI application: the whole HTTP API of rrcloud."""
    request = None
    try:
        request = Request(environ)
        check_access(request, app_context()[0])
        response = route(request)
    except RRCloudError as exc:
        status = getattr(exc, 'http_status', 500)
        response = error_response(status, str(exc), request.format if request else 'text')
        response.headers += getattr(exc, 'headers', [])
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRORS:
            raise
        response = error_response(507, f'the server cannot store this: {exc.strerror}',
                                  request.format if request else 'text')
    except Exception as exc:  # one line to the client, never a traceback
        print(f'rrcloud: internal error: {exc!r}', file=environ.get('wsgi.errors', sys.stderr))
        response = error_response(500, 'internal error', request.format if request else 'text')
    start_response(STATUS_LINES.get(response.status, f'{response.status} Error'), response.headers)
    if hasattr(response.body, 'read'):
        wrapper = environ.get('wsgi.file_wrapper')
        return wrapper(response.body, 65536) if wrapper else iter(lambda: response.body.read(65536), b'')
    return [response.body]


def address_in(address, networks):
    """True when the IP ``address`` lies in one of ``networks`` (an IPv4-mapped IPv6 counts as IPv4)."""
    fast = _ipv4_in(address, networks)
    if fast is not None:
        return fast
    import ipaddress
    try:
        ip = ipaddress.ip_address(address.split('%', 1)[0])
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def _ipv4_in(address, networks):
    """address_in for a dotted IPv4 address and IPv4 networks without importing ipaddress
    (0.7 ms of every CGI request); None when either side is not plain IPv4."""
    def as_int(dotted):
        parts = dotted.split('.')
        if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) < 256 for p in parts):
            return None
        return int.from_bytes(bytes(int(p) for p in parts), 'big')
    ip = as_int(address)
    if ip is None:
        return None
    for network in networks:
        base, _, bits = network.partition('/')
        base_int = as_int(base)
        if ':' in base:
            continue  # an IPv6 network holds no plain IPv4 address
        if base_int is None or (bits and not bits.isdigit()):
            return None
        shift = 32 - int(bits or 32)
        if ip >> shift == base_int >> shift:
            return True
    return False


def check_access(request, config):
    """Who may use this server: ``allow`` networks, then the ``token`` if one is set.

    Runs before any byte of the body is read.
    """
    if not address_in(request.environ.get('REMOTE_ADDR', ''), config.allow):
        raise HTTPError(403, 'your address may not use this server (see allow in rrcloudrc)')
    if changes_state(request) and not same_origin_or_allowed(request.environ, config.allowOrigins):
        raise HTTPError(403, 'a request from another web origin may not change anything here '
                             '(see allowOrigins in rrcloudrc)')
    if 'token' in request.query:
        raise HTTPError(400, 'a token in the URL is refused (URLs end up in logs): '
                             'send it as Authorization: Bearer, X-RRCloud-Token or a form field')
    if config.token:
        given = request_token(request)
        import hmac
        if given is None or not hmac.compare_digest(given.encode(), config.token.encode()):
            raise HTTPError(401, 'a valid token is required',
                            headers=[('WWW-Authenticate', 'Bearer realm="rrcloud"')])


# Services of a GET that change something (a POST always may).
STATE_CHANGING_SERVICES = ('kill',)


def changes_state(request):
    """True for a request that may start or stop work: any POST, a GET of kill."""
    return request.method == 'POST' or request.query.get('service') in STATE_CHANGING_SERVICES


def same_origin_or_allowed(environ, allowed):
    """A browser names the page that sent a request (``Origin``, ``Sec-Fetch-Site``);
    curl and 0.019 clients send neither.  Refused: another origin not in ``allowed``."""
    origin = environ.get('HTTP_ORIGIN')
    if origin is None:
        return environ.get('HTTP_SEC_FETCH_SITE', '') != 'cross-site'
    origin = origin.rstrip('/')
    scheme = environ.get('wsgi.url_scheme', 'http')
    own = f'{scheme}://{environ.get("HTTP_HOST", "")}'
    return origin in allowed or (bool(environ.get('HTTP_HOST')) and origin == own)


def request_token(request):
    """The token from ``Authorization: Bearer``, ``X-RRCloud-Token``, or a ``token`` field."""
    bearer = request.environ.get('HTTP_AUTHORIZATION', '')
    if bearer.startswith('Bearer '):
        return bearer[7:].strip()
    if request.environ.get('HTTP_X_RRCLOUD_TOKEN'):
        return request.environ['HTTP_X_RRCLOUD_TOKEN'].strip()
    if request.method == 'POST' and request.path in ('/', '/index.cgi'):
        request.read_form(app_context()[0])  # curl users: -F token=...
        return request.form.get('token')
    return None


def error_response(status, message, fmt):
    """An error answer: status code plus a one-line reason in the asked format."""
    message = ' '.join(message.split())
    if fmt == 'json':
        return Response(to_json({'error': message}), status, 'application/json')
    return Response(f'error: {message}\n', status)


def route(request):
    """Dispatch by path and method."""
    if request.path.startswith('/tasks/out/'):
        return serve_result(request, request.path[len('/tasks/out/'):])
    if request.path.startswith('/tasks/log/'):
        return serve_log(request, request.path[len('/tasks/log/'):])
    if request.path not in ('/', '/index.cgi'):
        raise HTTPError(404, 'not found')
    if request.method == 'OPTIONS':
        return Response(b'', 204, headers=[('Access-Control-Allow-Methods', 'GET, POST, OPTIONS'),
                                           ('Access-Control-Allow-Headers', 'Content-Type')])
    if request.method == 'POST':
        if not request.parsed:
            request.read_form(app_context()[0])
    elif request.method not in ('GET', 'HEAD'):
        raise HTTPError(405, f'method {request.method} not allowed')
    return route_service(request)


def route_service(request):
    """``service=`` decides: info, meta, kill, or a task to start."""
    config, store = app_context()
    service = request.form.get('service', '')
    if service == 'info' or (not service and request.method != 'POST'):
        if not service and request.browser and 'format' not in request.form:
            return html_page(store, config, request)
        return answer_info(store, config, request)
    if service == 'meta':
        services, _ = load_services(store.root)
        return answer_record(meta_record(store, config, services, _APP_CONTEXT.get('started')),
                             request.format)
    if service == 'kill':
        record = kill_task(store, _form_task_id(request), by=f'{request.client} (HTTP)')
        return answer_record(client_view(record, request.client), request.format)
    if request.method != 'POST':
        raise HTTPError(405, f'a task of {service!r} is started with POST')
    hold = post_wait_seconds(config, request)  # before the task starts: a bad wait starts nothing
    record = submit_from_form(store, config, request)
    if hold:  # counted with the long-polls: held answers never take every thread
        record = held_wait(store, config, record['id'], hold)
    return answer_record(record, request.format)


def _form_task_id(request):
    if 'id' not in request.form:
        raise HTTPError(400, 'missing id')
    return check_task_id(request.form['id'])


def answer_record(record, fmt):
    """One record as ``key: value`` lines or a JSON object."""
    if fmt == 'json':
        return Response(to_json(record, sort_keys=True) + '\n', 200, 'application/json')
    return Response(format_record(record))


def answer_info(store, config, request):
    """``service=info``: one task (optionally long-polled) or all of them."""
    if 'id' in request.form:
        task_id = _form_task_id(request)
        wait = _wait_seconds(request.form.get('wait', '0'))
        record = held_wait(store, config, task_id, wait) if wait else get_task(store, task_id)
        return answer_record(client_view(record, request.client), request.format)
    records = [client_view(r, request.client) for r in list_tasks(store, config)]
    if request.format == 'json':
        return Response(to_json(records, sort_keys=True) + '\n', 200, 'application/json')
    return Response('\n'.join(format_record(r) for r in records))


def held_wait(store, config, task_id, wait):
    """Long-poll a task, unless ``maxWaits`` others already wait in this server:
    then the current record at once, so waits never hold every thread."""
    slots = wait_slots(config)
    if not slots.acquire(blocking=False):
        return get_task(store, task_id)
    try:
        return wait_for_task(store, task_id, timeout=wait)
    finally:
        slots.release()


def wait_slots(config):
    """The semaphore counting this process's long-polls (one per server process)."""
    if 'waits' not in _APP_CONTEXT:
        import threading
        _APP_CONTEXT.setdefault('waits', threading.BoundedSemaphore(config.maxWaits))
    return _APP_CONTEXT['waits']


def client_view(record, client):
    """A record as ``client`` may see it: another client's inputs show as file
    names only, without the store path a tool could use to reach them."""
    if record.get('client') == client or not record.get('in'):
        return record
    paths = record['in'].split(',')
    view = dict(record, **{'in': ','.join(p.rsplit('/', 1)[-1] for p in paths)})
    if view.get('cmd'):
        for path in paths:
            view['cmd'] = view['cmd'].replace(path, path.rsplit('/', 1)[-1])
    return view


def _wait_seconds(text):
    try:
        wait = float(text)
    except ValueError:
        raise HTTPError(400, f'bad wait: {text[:32]!r}') from None
    if not 0 <= wait <= MAX_WAIT_SECONDS:
        raise HTTPError(400, f'wait must be between 0 and {MAX_WAIT_SECONDS} seconds')
    return wait


# A POST held for a 0.019 client outlasts its task's timeout by the time the
# runner needs to stop the tool and record the end.
HOLD_GRACE_SECONDS = KILL_GRACE_SECONDS + 5


def post_wait_seconds(config, request):
    """How long a POST holds its answer for the task to end: ``wait=S``, or,
    when 0.019's ``in`` field is there, as long as the task may run.

    0.019's synchronous client reads the task once right after the POST and
    gives up unless it has ended (its CGI answered only then).
    """
    if 'wait' in request.form:
        return _wait_seconds(request.form['wait'])
    if 'in' in request.form or 'in' in request.files:
        return config.timeout + HOLD_GRACE_SECONDS
    return 0


def submit_from_form(store, config, request):
    """``POST service=NAME fileIn0.. prearg0.. nativeArgs arg0.. notifier``: start a task."""
    for key, value in request.form.items():
        if not key.startswith('fileIn'):
            _check_field(key, value, config)
    services, errors = load_services(store.root)
    service = find_service(services, errors, request.form.get('service', ''))
    inputs = form_inputs(request, service)
    if len(inputs) > config.maxInputs:
        raise HTTPError(400, f'too many input files (at most {config.maxInputs})')
    if len(marked(store, 'queue')) >= config.maxQueued:
        raise HTTPError(503, f'the queue is full ({config.maxQueued} tasks wait)',
                        headers=[('Retry-After', '30')])
    native = request.form.get('nativeArgs', '').split()
    native += [request.form[k] for k in sorted(request.form, key=_field_number) if k.startswith('arg')]
    params = [form_param(request.form[k])
              for k in sorted(request.form, key=_field_number) if k.startswith('param')]
    return submit_task(store, config, service, inputs, native,
                       notifier=request.form.get('notifier', ''), client=request.client,
                       params=params, out_ext=request.form.get('outExt', ''))


def form_param(text):
    """``paramN=OPTION VALUE`` (``-D size=20``) -> (option, value), checked by check_params."""
    option, sep, value = text.partition(' ')
    if not sep or not value:
        raise HTTPError(400, f'a param field is "OPTION VALUE", got {text[:64]!r}')
    return option, value


def _field_number(key):
    return int(''.join(c for c in key if c in DIGITS) or 0)


def form_inputs(request, service):
    """The ``fileInN`` fields in order: uploads or content strings, with their preargs."""
    names = sorted((k for k in list(request.form) + list(request.files) if k.startswith('fileIn')),
                   key=_field_number)
    for key in request.form:
        if key.startswith('prearg') and f'fileIn{key[6:]}' not in names:
            raise HTTPError(400, f'{key} without fileIn{key[6:]}')
    inputs = []
    for name in names:
        prearg = request.form.get(f'prearg{name[6:]}', '')
        if name in request.files:
            part = request.files[name]
            part.file.seek(0)
            inputs.append(Input(part.file, filename=part.filename or '', prearg=prearg))
        else:
            inputs.append(Input(request.form[name].encode('utf-8'), prearg=prearg))
    if not inputs:
        raise HTTPError(400, 'missing input: no fileIn0')
    return inputs


# The type a result is served with, by its extension, so a browser shows a
# picture or text inline.  Only types a browser never runs (no HTML, no SVG):
# a result is a client's data.  No extension (echo's) is text.
RESULT_TYPES = {'png': 'image/png', 'jpg': 'image/jpeg', 'jpeg': 'image/jpeg', 'gif': 'image/gif',
                'stl': 'model/stl', 'gcode': 'text/x-gcode; charset=utf-8', 'gco': 'text/x-gcode; charset=utf-8',
                'g': 'text/x-gcode; charset=utf-8', 'txt': 'text/plain; charset=utf-8',
                'log': 'text/plain; charset=utf-8', '': 'text/plain; charset=utf-8'}


def result_type(name):
    """The Content-Type of a result named ``name``."""
    ext = name.rsplit('.', 1)[1].lower() if '.' in name else ''
    return RESULT_TYPES.get(ext, 'application/octet-stream')


def serve_result(request, name):
    """``GET /tasks/out/NAME``: a task's result, nothing else."""
    _, store = app_context()
    if not OUT_NAME_RE.match(name) or '..' in name:
        raise HTTPError(404, 'no such result')
    return serve_file(request, os.path.join(store.folder('out'), name), result_type(name))


def serve_log(request, task_id):
    """``GET /tasks/log/ID``: a task's log."""
    _, store = app_context()
    if not is_task_id(task_id):
        raise HTTPError(404, 'no such log')
    return serve_file(request, store.log_path(task_id), 'text/plain; charset=utf-8')


def serve_file(request, path, content_type):
    """Stream a regular file, never following a link."""
    if request.method not in ('GET', 'HEAD'):
        raise HTTPError(405, 'only GET')
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        raise HTTPError(404, 'not found') from None
    import stat
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise HTTPError(404, 'not found')
    handle = os.fdopen(fd, 'rb')
    if request.method == 'HEAD':
        handle.close()
        handle = b''
    # nosniff: a browser takes the type as given, never guesses HTML from the bytes
    return Response(handle, 200, content_type, headers=[('Content-Length', str(info.st_size)),
                                                        ('X-Content-Type-Options', 'nosniff')])


def html_page(store, config, request):
    """The browser's task list: a template from www/, rows escaped here."""
    import html
    from string import Template
    records = list(reversed(list_tasks(store, config)))
    rows = ''.join(_html_row(r, html.escape) for r in records)
    with open(installed_path(os.path.join('www', 'index.html')), encoding='utf-8') as handle:
        template = Template(handle.read())
    page = template.safe_substitute(
        server=html.escape(config.serverName), version=html.escape(VERSION_STRING),
        count=len(records), rows=rows)
    return Response(page, 200, 'text/html; charset=utf-8')


def _html_row(record, escape):
    ctime = float(record.get('ctime') or 0)
    end = float(record.get('etime') or time.time())
    task_id = record.get('id', '')
    out = record.get('out', '')
    result = (f'<a href="/{escape(out)}">result</a>'
              if record.get('status') == TaskStatus.COMPLETE and out.startswith('tasks/out/') else '')
    cells = [
        f'<span class="status {escape(record.get("status", ""))}">{escape(record.get("status", ""))}</span>',
        escape(task_id), escape(record.get('service', '')), escape(record.get('client', '')),
        time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctime)),
        f'{end - ctime:.1f} s',
        human_size(record.get('sizeIn')), human_size(record.get('sizeOut')),
        f'{result} <a href="/tasks/log/{escape(task_id)}">log</a>',
        escape(record.get('error', '')),
    ]
    return '<tr>' + ''.join(f'<td>{c}</td>' for c in cells) + '</tr>\n'


def human_size(size):
    """``45 B``, ``1.8 KB``, ``1.8 MB`` (units of 1024), '' when not known."""
    try:
        value = int(size)
    except (TypeError, ValueError):
        return ''
    if value < 1024:
        return f'{value} B'
    unit = 'KB'
    value /= 1024
    for bigger in ('MB', 'GB'):
        if value < 1024:
            break
        unit, value = bigger, value / 1024
    return f'{value:.1f} {unit}'


###############################################################################
# Server adapters #############################################################
###############################################################################

def serve(args):
    """``rrcloud serve [--bind ADDR] [--port N] [--check]``: the embedded server (waitress)."""
    config = load_config()
    bind, port, check = serve_options(args, config.port)
    if check:
        return check_serving(config, bind, port)
    server = listen(config, bind, port)  # before anything is created or claimed
    store = Store(config.dir)
    store.ensure()
    recover_store(store, config)
    _APP_CONTEXT.update(config=config, store=store, started=process_started_at(os.getpid()) or time.time())
    print(f'rrcloud: serving {store.root} on http://{bind}:{port}/', file=sys.stderr)
    print(f'rrcloud: clients allowed from {", ".join(config.allow)}; '
          f'token {"required" if config.token else "not required"}', file=sys.stderr, flush=True)
    warn_if_unsandboxed(config)
    server.run()
    return ExitCode.OK


def serve_options(args, port):
    """(bind address, port, check) from ``serve``'s arguments."""
    bind, check = '0.0.0.0', False
    args = list(args)
    while args:
        word = args.pop(0)
        name, sep, value = word.partition('=')
        if word == '--check':
            check = True
            continue
        if name not in ('--bind', '--port'):
            raise UsageError(f'unknown serve option: {word!r}')
        if not sep:
            if not args:
                raise UsageError(f'{name} needs a value')
            value = args.pop(0)
        if name == '--bind':
            bind = value
        else:
            try:
                port = _port(value)
            except ValueError:
                raise UsageError(f'bad port: {value!r}') from None
    return bind, port, check


def listen(config, bind, port):
    """The waitress server bound to ``bind:port``; a port in use is one error line."""
    import waitress
    try:
        # Idle connections cost no thread in waitress; allow many of them, but cut
        # those that send nothing (half-open, or headers trickling in) after 20 s,
        # looked at every 5 s.  A request in progress (a long-poll) is never cut.
        return waitress.create_server(
            application, host=bind, port=port, threads=16, ident='rrcloud',
            connection_limit=1000, backlog=1024, channel_timeout=20, cleanup_interval=5,
            max_request_body_size=config.maxRequestSize)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise ConfigError(f'cannot serve on {bind}:{port}: the port is in use '
                          f'(rrcloud serve --check --port {port} tells by whom)') from None


def check_serving(config, bind, port):
    """``serve --check``: does rrcloud answer on the port (0), nothing (5), or another server (4)?"""
    import requests
    host = '127.0.0.1' if bind in ('0.0.0.0', '::', '') else bind
    url = server_url(f'[{host}]:{port}' if ':' in host else f'{host}:{port}', port)
    try:
        response = http_session(config).get(url, params={'service': 'meta'}, timeout=(CONNECT_TIMEOUT, 10))
    except requests.ConnectionError:
        print(f'rrcloud: nothing serves on port {port}')
        return ExitCode.NO_SERVER
    except OSError as exc:
        raise ConfigError(f'port {port} does not answer like rrcloud ({exc.__class__.__name__})') from None
    if is_rrcloud_answer(response):
        version = _printable(parse_answer(response).get('version', 'RepRapCloud'))
        print(f'rrcloud: rrcloud serves on port {port} ({version})')
        return ExitCode.OK
    raise ConfigError(f'port {port} is taken by a server that is not rrcloud')


def is_rrcloud_answer(response):
    """True for rrcloud's answer to meta: its version, or its refusal naming its realm."""
    if 'RepRapCloud' in parse_answer(response).get('version', ''):
        return True
    return response.status_code == 401 and 'realm="rrcloud"' in response.headers.get('WWW-Authenticate', '')


SANDBOX_OFF_WARNING = ('rrcloud: warning: sandbox = no: tasks run without their sandbox, '
                       'with every right of this server\'s user (see docs/SECURITY.md)')


def warn_if_unsandboxed(config):
    """Say in the server's log that tools run unconfined, when someone chose that."""
    if not config.sandbox:
        print(SANDBOX_OFF_WARNING, file=sys.stderr, flush=True)


def run_cgi():
    """CGI mode: one request on stdin/stdout, then exit (tasks run on, detached)."""
    # The server is the web server: its uptime is that of the process that
    # starts the CGI (lighttpd itself, Apache's CGI daemon).
    _APP_CONTEXT['started'] = process_started_at(os.getppid())
    config, store = app_context()
    if os.environ.get('REQUEST_METHOD') == 'POST':
        warn_if_unsandboxed(config)  # the web server's error log
    recover_now_and_then(store, config)
    body = CountingReader(sys.stdin.buffer)
    try:
        answer_cgi(cgi_environ(body), sys.stdout.buffer)
    finally:
        discard_cgi_input(body)
    return ExitCode.OK


def cgi_environ(body):
    """The WSGI environ of this CGI request: os.environ as native strings
    (bytes seen as latin-1, PEP 3333), plus the wsgi.* keys."""
    encoding = sys.getfilesystemencoding()
    environ = {key: value.encode(encoding, 'surrogateescape').decode('latin-1')
               for key, value in os.environ.items()}
    https = environ.get('HTTPS', 'off').lower() in ('on', '1', 'yes')
    environ.update({'wsgi.input': body, 'wsgi.errors': sys.stderr, 'wsgi.version': (1, 0),
                    'wsgi.url_scheme': 'https' if https else 'http', 'wsgi.multithread': False,
                    'wsgi.multiprocess': True, 'wsgi.run_once': True})
    return environ


def answer_cgi(environ, out):
    """Run the application once and write its answer the CGI way (a Status
    header, the headers, a blank line, the body).  wsgiref would do the same
    but costs a CGI request 1.5 ms of imports (re among them)."""
    head = []

    def start_response(status, headers, exc_info=None):
        head[:] = [status, list(headers)]
        return out.write

    chunks = application(environ, start_response)
    try:
        if isinstance(chunks, list) and len(chunks) == 1 and not any(
                name.lower() == 'content-length' for name, _ in head[1]):
            head[1].append(('Content-Length', str(len(chunks[0]))))
        lines = [f'Status: {head[0]}'] + [f'{name}: {value}' for name, value in head[1]]
        out.write(('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1'))
        for chunk in chunks:
            out.write(chunk)
        out.flush()
    finally:
        if hasattr(chunks, 'close'):
            chunks.close()


class CountingReader:
    """The CGI's stdin, counting what the application read of the body."""

    def __init__(self, stream):
        self.stream, self.count = stream, 0

    def read(self, size=-1):
        data = self.stream.read(size)
        self.count += len(data)
        return data

    def readline(self, size=-1):
        data = self.stream.readline(size)
        self.count += len(data)
        return data

    def __iter__(self):
        return iter(self.readline, b'')


CGI_DISCARD_BYTES = 1 << 30
CGI_DISCARD_SECONDS = 60


def discard_cgi_input(body):
    """Read and drop what the application left unread of the request body.

    Apache (mod_cgid) writes the whole body to the CGI before it reads the
    answer: a CGI that exits early (403, 413, a bad field) would lose its
    answer.  The bytes are never parsed or stored; at most 1 GiB or 60 s.
    """
    length = os.environ.get('CONTENT_LENGTH', '')
    if length.isdigit() and body.count >= int(length):
        return  # all read (or no body): nothing to wait for
    if not length.isdigit() and 'HTTP_TRANSFER_ENCODING' not in os.environ:
        return
    import signal

    def give_up(signum, frame):
        raise TimeoutError
    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(CGI_DISCARD_SECONDS)
    try:
        while body.count < CGI_DISCARD_BYTES and body.read(65536):
            pass
    except (OSError, ValueError):
        pass
    finally:
        signal.alarm(0)


###############################################################################
# CLI #########################################################################
###############################################################################

HELP = f"""\
usage: rrcloud [OPTIONS] SERVICE ARGS...     start a task (prints "id: ID")
       rrcloud [OPTIONS] info [--short] [ID] show one task or all of them
       rrcloud [OPTIONS] ls                  one line per task: id service status age duration result
       rrcloud [OPTIONS] meta                show what this machine offers
       rrcloud [OPTIONS] kill ID             stop a busy task (here, or at the server it was sent to)
       rrcloud serve [--bind ADDR] [--port N] serve the HTTP API (default port 4468)
       rrcloud serve --check [--port N]      0: rrcloud serves there, 5: nothing does, 4: another server
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
                     info, ls, meta or kill: ask SERVER instead of this store
  --notifier=URL     GET URL when the task ends ($id, $myip are filled in)
  --sync             wait for the task and mirror its exit code (no output
                     argument: echo prints its text, other services their record)
  --short            info: one line per task, as ls
  --format=json      print JSON instead of key: value lines
  --traceback        show the Python traceback of an error
  -h, --help         show this help
  --version          show the version

configuration: ~/.rrcloudrc, then ./rrcloudrc (or the file in RRCLOUD_CONFIG)
keys: port, servers, SERVICE.servers, timeout, maxDataRetention, maxTasks, dir,
reconnectTimeout, serverName (all keys: the shipped rrcloudrc)

exit codes:
  0    success (task started, or finished complete)
  1    the task failed (wrappers: the tool's own exit code when it has one)
  2    usage: bad option, argument, id or service
  3    no such task
  4    bad configuration or service file
  5    no server answered
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
  -h, --help    show this help

Who may use it: allow, token and allowOrigins in rrcloudrc (docs/SECURITY.md).
"""

PRINT_HELP = f"""\
usage: rrcloud print [--baud=N] [--timeout=S] [--comm-timeout=S] PORT FILE.gcode

Sends a G-code file to a printer on a serial port, line by line with line
numbers and checksums, resending what the printer asks for: the built-in
sender of the printrun service, run here and now (`printrun.cloud PORT
FILE.gcode` runs it as a task, on a server when one is configured).

  --baud=N      the port's speed (default {PRINT_DEFAULT_BAUD})
  --timeout=S   seconds of silence from the printer that fail the print (default {PRINT_ANSWER_TIMEOUT:g})
  --comm-timeout=S  seconds of silence after which the printer is asked for its
                temperature (M105) to find an answer lost on the wire
                (default {PRINT_COMM_TIMEOUT:g}; {PRINT_BUSY_COMM_TIMEOUT:g} while it reports it is busy)
  -h, --help    show this help
"""

SUBCOMMAND_HELP = {'serve': SERVE_HELP, 'print': PRINT_HELP}

USAGE = HELP.split('\n\n', 1)[0] + '\n\nrrcloud --help shows every option.\n'
CLI_COMMANDS = ('info', 'meta', 'kill', 'ls')
VALUE_OPTIONS = ('s', 'notifier', 'format', 'dir')
FLAG_OPTIONS = ('local', 'sync', 'traceback', 'help', 'version', 'short')


class Options:
    """rrcloud's own ``--name[=value]`` options, wherever they stood."""

    def __init__(self):
        self.s = None
        self.notifier = ''
        self.format = 'text'
        self.dir = None
        self.local = self.sync = self.traceback = self.help = self.version = self.short = False


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


def is_option(word):
    """True when ``word`` is one of rrcloud's options (``--name`` or ``--name=value``)."""
    return word.startswith('--') and word[2:].partition('=')[0] in VALUE_OPTIONS + FLAG_OPTIONS


def set_option(options, word, rest):
    """Apply one option; a value option written without ``=`` takes the next word of ``rest``."""
    name, sep, value = word[2:].partition('=')
    if name in FLAG_OPTIONS:
        if sep:
            raise UsageError(f'option --{name} takes no value')
        setattr(options, name, True)
        return
    if not sep:
        if not rest:
            raise UsageError(f'option --{name} needs a value')
        value = rest.pop(0)
    if not value:
        raise UsageError(f'option --{name} needs a value')
    if name == 'format' and value not in ('text', 'json'):
        raise UsageError(f'--format must be text or json, not {value!r}')
    setattr(options, name, value)


def take_options(options, args, service=None):
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
            if word in service.param_args and args:  # -D NAME=VALUE: the value is the option's
                rest.append(args.pop(0))
        elif word == '-h':
            options.help = True
        elif word == '--':
            return rest + args
        elif is_option(word):
            set_option(options, word, args)
        elif service is None and word.startswith('--'):
            raise UsageError(f'unknown option: {word!r} (see rrcloud --help)')
        else:
            rest.append(word)
    return rest


def service_takes(service, word):
    """True when ``word`` is the service's own: an allowed native argument,
    an argInput prefix with its file, or the output argument."""
    return (service.allows_native(word) or service.input_prefix_of(word) is not None
            or service.output_argument(word) or any(word.startswith(o) for o in service.param_args))


def split_command_line(options, command, args):
    """Take rrcloud's options out of ``command``'s arguments; returns (Context, the rest).

    A service's words are judged by the service found where the options
    before the command point; a ``--dir`` among them moves the task's store.
    """
    ctx = Context(options)
    service = None if command in CLI_COMMANDS else ctx.service(command)
    dir_before = options.dir
    args = take_options(options, args, service)
    if options.dir != dir_before:
        ctx = Context(options)
    return ctx, args


class ToolCall:
    """A tool's command line as classify_args read it."""

    def __init__(self):
        self.inputs = []      # Input objects, in order
        self.native = []      # allowed native arguments
        self.params = []      # (option, value) pairs of paramArgs (-D NAME=VALUE)
        self.output = None    # where the result goes, as the user named it
        self.out_ext = ''     # the output format asked for, '' for the service's default


def classify_args(service, args, allow_output):
    """Turn a tool's command line into a ToolCall.

    Classified like the spec's client: output argument, argInput prefix,
    allowed native argument, parameter (``-D NAME=VALUE``), existing file;
    the option forms with a space (``--load FILE``, ``-o FILE``) like the
    ones without.  What is not a file and does not look like an option or a
    file name is content.  Anything else is an error naming the argument.
    """
    call, args = ToolCall(), list(args)
    while args:
        arg = args.pop(0)
        if not _take_option(service, arg, args, call, allow_output):
            call.inputs.append(_plain_input(service, arg))
    if call.output is not None:
        ext = service.output_ext_of(call.output)
        call.out_ext = '' if ext == (service.output_exts or [''])[0] else ext
    return call


def _take_option(service, arg, rest, call, allow_output):
    """Put ``arg`` (and its value from ``rest`` when written apart) into ``call``
    when it is an option of the service; False when it is not one."""
    output = _output_value(service, arg, rest)
    if output is not None:
        if not allow_output:
            raise UsageError(f'output argument {arg!r} needs --sync (or a *.cloud wrapper)')
        call.output = output
        return True
    prefix, path = _prefixed_input(service, arg, rest)
    if prefix is not None:
        call.inputs.append(_file_input(path, prefix))
        return True
    native = _native_argument(service, arg, rest)
    if native is not None:
        call.native.append(native)
        return True
    param = _param(service, arg, rest)
    if param is not None:
        check_params(service, [param])
        call.params.append(param)
        return True
    return False


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


def refused_option(service, arg):
    """Why an option-like argument is refused, naming what the service takes."""
    prefix = service.output_prefix()
    if arg.split('=', 1)[0] in ('-o', '--output', '+O', '+o') and prefix:
        return f'{arg}: {service.name} takes its output as {prefix}FILE'
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
                         shown=shown)
        with open(path, 'rb') as handle:
            data = handle.read()
    except OSError as exc:
        raise UsageError(f'{path}: cannot read: {exc.strerror}') from None
    return Input(data, filename=path, prearg=prearg, shown=path)


class Context:
    """What every command needs: options, config, store, services."""

    def __init__(self, options):
        self.options = options
        self.config = load_config()
        if options.dir:
            self.config.dir = os.path.abspath(options.dir)
        self.store = Store(self.config.dir)
        self._services = None
        self.shown_inputs = []  # how the user named each input of the task at hand

    @property
    def services(self):
        if self._services is None:
            self._services = load_services(self.store.root)
        return self._services

    def service(self, name):
        return find_service(*self.services, name)


def print_record(record, fmt, out=None):
    """Print one task as ``=== id: ID`` + ``key: value`` lines, or JSON."""
    out = out or sys.stdout
    if fmt == 'json':
        out.write(to_json(record, indent=1, sort_keys=True) + '\n')
        return
    out.write(f'=== id: {_printable(record.get("id", ""))}\n')
    for key in sorted(record):
        out.write(f'{key}: {_printable(record[key])}\n')
    out.write('\n')


def cmd_info(ctx, args):
    """``rrcloud info [ID]`` (``--short``: as ``ls``); with ``--s``, that server's tasks."""
    if len(args) > 1:
        raise UsageError('info takes at most one task id')
    if args:
        task_id = check_task_id(args[0])
        if ctx.options.s:
            record = ask_server(ctx, {'service': 'info', 'id': task_id})
        else:
            record = refresh_if_remote(ctx.store, ctx.config, get_task(ctx.store, task_id))
        if ctx.options.short:
            return print_summaries([record], ctx.options.format)
        print_record(record, ctx.options.format)
        return ExitCode.OK
    records = all_records(ctx)
    if ctx.options.short:
        return print_summaries(records, ctx.options.format)
    if ctx.options.format == 'json':
        sys.stdout.write(to_json(records, indent=1, sort_keys=True) + '\n')
    else:
        for record in records:
            print_record(record, 'text')
    return ExitCode.OK


def cmd_ls(ctx, args):
    """``rrcloud ls``: one line per task."""
    if args:
        raise UsageError('ls takes no arguments (rrcloud info ID shows one task)')
    return print_summaries(all_records(ctx), ctx.options.format)


def all_records(ctx):
    """Every task: of this store (remote ones asked about), or of the ``--s`` server."""
    if ctx.options.s:
        return ask_server(ctx, {'service': 'info'}, listing=True)
    return [refresh_if_remote(ctx.store, ctx.config, r) for r in list_tasks(ctx.store, ctx.config)]


SUMMARY_COLUMNS = ('id', 'service', 'status', 'age', 'duration', 'result')


def print_summaries(records, fmt):
    """One line per task, columns separated by spaces, no column ever empty
    (``-``); a header on a terminal only, so scripts read the lines as they are."""
    now = time.time()
    rows = [task_summary(record, now) for record in records]
    if fmt == 'json':
        print(to_json(rows, indent=1))
        return ExitCode.OK
    lines = [[row['id'], row['service'], row['status'], format_age(row['age']),
              format_age(row['duration']), row['result']] for row in rows]
    if sys.stdout.isatty():
        lines.insert(0, [name.upper() for name in SUMMARY_COLUMNS])
    for line in lines:
        print(f'{line[0]:<23}  {line[1]:<10} {line[2]:<8} {line[3]:>7} {line[4]:>8}  {line[5]}')
    return ExitCode.OK


def task_summary(record, now):
    """id, service, state, age and run time in seconds (None: not known), result name."""
    def number(key):
        try:
            return float(record.get(key) or '')
        except ValueError:
            return None
    created, started, ended = number('ctime'), number('stime') or number('ctime'), number('etime')
    queued = record.get('queued') == 'yes'
    out = record.get('out', '') if record.get('status') == TaskStatus.COMPLETE else ''
    return {
        'id': _column(record.get('id')), 'service': _column(record.get('service')),
        'status': 'queued' if queued else _column(record.get('status')),
        'age': None if created is None else max(0.0, now - created),
        'duration': None if queued or started is None else max(0.0, (ended or now) - started),
        'result': _column(out.rsplit('/', 1)[-1]),
    }


def _column(value):
    """One word for a column: a server's text may hold anything."""
    word = ''.join(c for c in _printable(value or '') if not c.isspace())
    return word or '-'


def format_age(seconds):
    """``45s``, ``12m05s``, ``3h07m``, ``2d04h``; ``-`` when not known."""
    if seconds is None:
        return '-'
    seconds = int(seconds)
    if seconds < 60:
        return f'{seconds}s'
    if seconds < 3600:
        return f'{seconds // 60}m{seconds % 60:02d}s'
    if seconds < 86400:
        return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'
    return f'{seconds // 86400}d{seconds // 3600 % 24:02d}h'


def ask_server(ctx, params, listing=False):
    """One GET of the ``--s`` server (info, meta, kill): its record, or with
    ``listing`` its records, as text the way every server answers it."""
    url = server_url(ctx.options.s, ctx.config.port)
    try:
        response = http_session(ctx.config).get(url, params=params, timeout=(CONNECT_TIMEOUT, 60))
    except OSError as exc:  # requests' errors are OSErrors
        raise NoServer(f'{url}: no answer ({exc.__class__.__name__})') from None
    if response.status_code != 200:
        reason = _printable(parse_answer(response).get('error') or f'HTTP {response.status_code}')
        raise (NotFound if response.status_code == 404 else RRCloudError)(f'{url}: {reason}')
    if listing:
        return [dict(parse_record(block)) for block in response.text.split('\n\n') if block.strip()]
    answer = parse_answer(response)
    if not answer.get('id') and 'RepRapCloud' not in answer.get('version', ''):
        raise NoServer(f'{url}: not an rrcloud answer')
    return answer


def refresh_if_remote(store, config, record):
    """A busy remote task is asked about at its server (a silent server leaves it busy)."""
    if record.get('remoteId') and record.get('status') == TaskStatus.BUSY:
        try:
            return refresh_remote(store, record, http_session(config))
        except (OSError, RRCloudError) as exc:
            print(f'rrcloud: warning: {record["server"]}: {exc}', file=sys.stderr)
        except Exception as exc:  # requests' errors are not OSErrors
            print(f'rrcloud: warning: {record["server"]}: {exc.__class__.__name__}', file=sys.stderr)
    return record


def cmd_meta(ctx, args):
    """``rrcloud meta``: this machine's, or with ``--s`` that server's."""
    if args:
        raise UsageError('meta takes no arguments')
    if ctx.options.s:
        meta = ask_server(ctx, {'service': 'meta'})
    else:
        services, errors = ctx.services
        for error in errors:
            print(f'rrcloud: warning: {error}', file=sys.stderr)
        meta = meta_record(ctx.store, ctx.config, services)
    if ctx.options.format == 'json':
        print(to_json(meta, indent=1, sort_keys=True))
    else:
        for key in sorted(meta):
            print(f'{key}: {_printable(meta[key])}')
    return ExitCode.OK


def cmd_kill(ctx, args):
    """``rrcloud kill ID``: here, or at the server a task was sent to (or ``--s``)."""
    if len(args) != 1:
        raise UsageError('kill takes one task id')
    task_id = check_task_id(args[0])
    if ctx.options.s:
        record = ask_server(ctx, {'service': 'kill', 'id': task_id})
        print_fields(record, ('id', 'status', 'error'), server=server_url(ctx.options.s, ctx.config.port))
        return ExitCode.OK
    record = ctx.store.read_task(task_id)
    if record.get('remoteId'):
        if record.get('status') != TaskStatus.BUSY:
            raise UsageError(f'task {task_id} is not running (status {record.get("status")})')
        record = kill_remote(ctx.store, ctx.config, record)
        print_fields(record, ('id', 'status', 'error'), server=record['server'])
        return ExitCode.OK
    record = kill_task(ctx.store, task_id, by=f'the command line (user {user_name()})')
    print_fields(record, ('id', 'status', 'error'))
    return ExitCode.OK


def print_fields(record, keys, **more):
    """Some fields of a record as ``key: value`` lines (a server's values made printable)."""
    fields = [(key, record.get(key, '')) for key in keys] + list(more.items())
    print(''.join(f'{key}: {_printable(value)}\n' for key, value in fields), end='')


def user_name():
    """Who runs this command, for a killed task's log."""
    import pwd
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def cmd_run_internal(args):
    """``rrcloud _run ID --dir ROOT``: the detached runner (internal)."""
    if len(args) != 3 or args[1] != '--dir':
        raise UsageError('usage: rrcloud _run ID --dir ROOT')
    task_id = check_task_id(args[0])
    store = Store(args[2])
    final = run_task(store, os.environ.pop('RRCLOUD_TASK_SETTINGS', ''), task_id)
    return ExitCode.OK if final.get('status') == TaskStatus.COMPLETE else ExitCode.TASK_FAILED


def remote_servers(ctx, service_name):
    """The servers a task would go to (empty: run locally)."""
    if ctx.options.local:
        return []
    if ctx.options.s:
        return [ctx.options.s]
    return ctx.config.servers_for(service_name)


def cmd_submit(ctx, service_name, args, sync, wrapper=False):
    """Start a task of ``service_name``; sync waits and copies the result."""
    service = ctx.service(service_name)
    call = classify_args(service, args, allow_output=sync)
    inputs, native, output = call.inputs, call.native, call.output
    if wrapper and output is None and not service.no_output:
        prefix = service.output_prefix()
        raise UsageError(f'missing output argument ({prefix}FILE) for {service_name}')
    ctx.shown_inputs = [item.shown for item in inputs]  # the tool's messages name these
    extra = {'params': call.params, 'out_ext': call.out_ext}
    # `rrcloud --sync` with no output argument shows the finished record (where its result is).
    show = sync and not wrapper and output is None and not service.no_output
    servers = remote_servers(ctx, service_name)
    if servers:
        if not sync:
            print_id(ctx, submit_remote(ctx, service, servers, inputs, native, **extra))
            return ExitCode.OK
        return sync_remote(ctx, service, servers, inputs, native, output, show, **extra)
    record = submit_task(ctx.store, ctx.config, service, inputs, native, ctx.options.notifier,
                         args=describe_args(args), **extra)
    if not sync:
        print_id(ctx, record)
        return ExitCode.OK
    return finish_sync(ctx, record, output, show)


def describe_args(args):
    """The command line for the record's ``args`` field; content shows as its size."""
    return ' '.join(a if is_single_line(a) and not any(c.isspace() for c in a)
                    else f'<content {len(a.encode())} bytes>' for a in args)


def print_id(ctx, record):
    """``id: ID`` (or a JSON object) for an asynchronous start."""
    print(to_json({'id': record['id']}) if ctx.options.format == 'json' else f'id: {record["id"]}')


def sync_remote(ctx, service, servers, inputs, native, output, show=False, params=(), out_ext=''):
    """Send a task, wait for it, fetch its result to ``output``, mirror its exit code.

    Ctrl-C at any moment after the server took the task kills it there.
    """
    record, progress = None, None
    try:
        record = submit_remote(ctx, service, servers, inputs, native, params, out_ext)
        progress = ProgressLine(record['server']) if sys.stderr.isatty() else None
        record = wait_remote(ctx.store, ctx.config, record, progress)
    except KeyboardInterrupt:
        if progress:
            progress.clear()
        if record:
            stop_after_interrupt(ctx, record)
        return ExitCode.INTERRUPTED
    except OSError as exc:
        raise NoServer(f'lost {record["server"]} while waiting: {exc}') from None
    finally:
        if progress:
            progress.clear()
    return deliver_result(ctx, record, output, show)


def stop_after_interrupt(ctx, record):
    """Ctrl-C while waiting for a remote task: kill it at its server, or say it may still run."""
    try:
        kill_remote(ctx.store, ctx.config, record)
    except RRCloudError as exc:
        print(f'rrcloud: warning: {exc} (rrcloud kill {record["id"]} tries again)', file=sys.stderr)


class ProgressLine:
    """One line on a terminal's stderr, the same for local and remote tasks:
    where it runs, its state (queued while it waits for a slot), elapsed
    seconds, and the printer's progress when there is one."""

    def __init__(self, where):
        self.where = where
        self.shown = None

    def __call__(self, record, elapsed, state=None):
        state = state or ('queued' if record.get('queued') else record.get('status'))
        extra = f' {record["progress"]}' if record.get('progress') else ''
        line = f'{self.where} {_printable(state)} {elapsed:.0f}s{_printable(extra)}'
        if line != self.shown:  # a local wait looks every few ms; the terminal needs a change
            sys.stderr.write(f'\r{line}\x1b[K')
            sys.stderr.flush()
            self.shown = line

    def clear(self):
        sys.stderr.write('\r\x1b[K')
        sys.stderr.flush()
        self.shown = None


def finish_sync(ctx, record, output, show=False):
    """Wait for a local task, deliver its result, mirror its exit code."""
    progress = ProgressLine('local') if sys.stderr.isatty() else None
    started = time.monotonic()
    on_poll = (lambda current: progress(current, time.monotonic() - started)) if progress else None
    try:
        record = wait_for_task(ctx.store, record['id'], on_poll=on_poll)
    except KeyboardInterrupt:
        _kill_quietly(ctx.store, record['id'])
        return ExitCode.INTERRUPTED
    finally:
        if progress:
            progress.clear()
    return deliver_result(ctx, record, output, show)


def deliver_result(ctx, record, output, show=False):
    """A finished task: its result to ``output`` (or, with ``show``, its record
    to stdout) on success, its log to stderr on failure.

    On success the log goes to stderr too, as the tool itself prints its
    warnings; a print's log (the talk with the printer) stays in the task's log.
    """
    service = ctx.service(record['service'])
    if record.get('status') == TaskStatus.COMPLETE:
        if output:
            check_result_format(service, record, output)
            if not service.no_output:
                show_log(ctx.store, record, ctx.shown_inputs, output)
            deliver_output(ctx.store.path_of(record['out']), output)
        elif show and not print_text_result(ctx, record):
            show_log(ctx.store, record, ctx.shown_inputs)
            print_record(record, ctx.options.format)
        return ExitCode.OK
    # A built-in's own error line is the task's error: said once, with the id.
    show_log(ctx.store, record, ctx.shown_inputs, output,
             repeated=BUILTIN_ERROR_PREFIX + record.get('error', 'unknown'))
    print(f'{BUILTIN_ERROR_PREFIX}task {record["id"]} failed: {record.get("error", "unknown")}',
          file=sys.stderr)
    return _exit_code_of(record)


def check_result_format(service, record, output):
    """The result has the format ``output``'s extension asks for: a server that does not
    know ``outExt`` (RepRapCloud 0.019) makes its default instead."""
    wanted = service.output_ext_of(output)
    made = record.get('out', '').rpartition('.')[2].lower()
    if wanted and made != wanted:
        raise RRCloudError(f'{record.get("server", "the server")} made a .{made} file, not the '
                           f'.{wanted} asked for (it may not know outExt); {output} not written')


# Services whose result is text to read: ``rrcloud --sync echo TEXT`` prints
# it, as echo would; other results are files, and --sync shows their record.
TEXT_RESULT_SERVICES = ('echo',)


def print_text_result(ctx, record):
    """The result of a text service (echo) on stdout, ending in a newline as
    echo's does; False when it is no such result (the record is shown instead)."""
    if record.get('service') not in TEXT_RESULT_SERVICES or ctx.options.format != 'text':
        return False
    with open(ctx.store.path_of(record['out']), 'rb') as result:
        data = result.read()
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError:
        return False
    sys.stdout.write(text if not text or text.endswith('\n') else text + '\n')
    sys.stdout.flush()
    return True


def _kill_quietly(store, task_id):
    try:
        kill_task(store, task_id, by='Ctrl-C on the command line')
    except RRCloudError:
        pass


def _exit_code_of(record):
    try:
        code = int(record.get('exitCode', ''))
    except ValueError:
        return ExitCode.TASK_FAILED
    return code if 0 < code < 126 else ExitCode.TASK_FAILED


def deliver_output(source, destination):
    """Copy a result to where the tool would have written it, atomically."""
    import shutil
    folder = os.path.dirname(os.path.abspath(destination))
    temp = os.path.join(folder, f'.{os.path.basename(destination)}.{os.getpid()}.rrcloud.tmp')
    try:
        shutil.copyfile(source, temp)
        os.replace(temp, destination)
    except OSError as exc:
        _unlink_quietly(temp)
        raise RRCloudError(f'cannot write {destination}: {exc.strerror}') from None


def show_log(store, record, shown_inputs=(), output=None, repeated=''):
    """Write a task's log to stderr, naming the user's files instead of the store's;
    a last line equal to ``repeated`` (what the error line printed next says) is left out."""
    try:
        with open(store.log_path(record['id']), 'rb') as log:
            text = log.read().decode('utf-8', 'replace')
    except FileNotFoundError:
        return
    if repeated and text.rstrip('\n').rpartition('\n')[2] == repeated:
        text = text.rstrip('\n').rpartition('\n')[0] + '\n' if '\n' in text.rstrip('\n') else ''
    sys.stderr.write(as_the_user_named_it(text, stored_inputs(record), shown_inputs, output))
    sys.stderr.flush()


def stored_inputs(record):
    """The store paths of a task's inputs, in order: its ``in`` field, or for a
    remote task the ``tasks/in/…`` words of the server's ``cmd``."""
    if record.get('in'):
        return record['in'].split(',')
    import shlex
    try:
        words = shlex.split(record.get('cmd', ''))
    except ValueError:
        return []
    paths = [word[word.index('tasks/in/'):] for word in words if 'tasks/in/' in word]
    # a project's folder named to the tool (POV-Ray's +L) is no input of its own
    return [p for p in paths if not any(other.startswith(p + '/') for other in paths)]


# A store path as a tool may print it: relative, or under the sandbox's /job
# or an unsandboxed server's root.
STORE_PATH_PREFIX = r'(?:(?:/[\w.+-]+)*/)?'


def as_the_user_named_it(text, stored, shown, output=None):
    """The tool's log with each stored input path replaced by the user's own name
    for it (a project's folder by the user's folder), the result's path by ``output``."""
    import re
    if len(stored) == len(shown):
        for path, name in zip(stored, shown):
            parts = path.split('/')
            if len(parts) > 3:  # a project: tasks/in/FOLDER/... -> the user's folder
                folder = STORE_PATH_PREFIX + re.escape('/'.join(parts[:3]))
                text = re.sub(folder + '/', lambda _, name=name: name, text)
                found, name = folder, name.rstrip('/') or '.'  # the folder itself (POV-Ray's +L)
            else:  # the stored name is unique: tools that print only a file's name show it alone
                found = STORE_PATH_PREFIX + '(?:tasks/in/)?' + re.escape(parts[-1])
                name = name or '<content>'
            text = re.sub(found, lambda _, name=name: name, text)
    if output:
        text = re.sub(STORE_PATH_PREFIX + r'tasks/out/[\w.-]+', lambda _: output, text)
    return text


def cli(args):
    """The ``rrcloud`` command."""
    options, rest = parse_options(args)
    if options.help or options.version:
        return show_about(options)
    if rest and rest[0] in SUBCOMMAND_HELP and {'-h', '--help'} & set(rest[1:]):
        sys.stdout.write(SUBCOMMAND_HELP[rest[0]])
        return ExitCode.OK
    if rest and rest[0] == '_run':
        return cmd_run_internal(rest[1:])
    if rest and rest[0] == 'serve':
        return serve(rest[1:])
    if rest and rest[0] == 'print':
        return cmd_print(rest[1:])
    if not rest:
        sys.stderr.write(USAGE)
        return ExitCode.USAGE
    command = rest[0]
    ctx, rest = split_command_line(options, command, rest[1:])
    if options.help or options.version:
        return show_about(options)
    if options.short and command not in ('info', 'ls'):
        raise UsageError('--short goes with info (or use rrcloud ls)')
    if command in CLI_COMMANDS:
        return {'info': cmd_info, 'meta': cmd_meta, 'kill': cmd_kill, 'ls': cmd_ls}[command](ctx, rest)
    return cmd_submit(ctx, command, rest, sync=options.sync)


def show_about(options):
    """``--help`` or ``--version``."""
    if options.help:
        sys.stdout.write(HELP)
    else:
        print(f'rrcloud {__version__} ({PROTOCOL_VERSION} compatible)')
    return ExitCode.OK


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
    port = 'PORT ' if any(a.startswith('/dev/') for a in service.native_args) else ''
    about = (f'Runs {name} as {name} itself would run, on {work_goes_to(ctx, name)}.  '
             + ('The result is written to FILE only when the task succeeds.  ' if output else '')
             + "The tool's messages go to stderr, naming your files; the exit code is the tool's.")
    lines = [f'usage: {name}.cloud [OPTIONS] {port}INPUT...{output}', '',
             textwrap.fill(about, 78, break_long_words=False, break_on_hyphens=False), '']
    lines += [f'  {label:<11} {text}' for label, text in wrapper_help_rows(service)]
    lines += ['', "rrcloud's options: --local, --s=SERVER, --notifier=URL, --traceback,",
              '  -h/--help, --version (rrcloud --help tells more)']
    return '\n'.join(lines) + '\n'


def wrapper_help_rows(service):
    """(label, text) rows of a wrapper's help: inputs, output, what is passed on."""
    prefix = service.output_prefix()
    project = ' (with the files they include beside them)' if f'.{service.input_ext}' in PROJECT_KINDS else ''
    rows = [('inputs', f'{input_kinds(service)} files{project}, or content as an argument')]
    if prefix and not service.no_output:
        spaced = f' (or {prefix.rstrip("=")} FILE)' if prefix.startswith('-') else ''
        formats = (f'; the format follows its extension: {service.output_exts[0]} (default), '
                   + ', '.join(service.output_exts[1:])) if len(service.output_exts) > 1 else ''
        rows.append(('output', f'{prefix}FILE{spaced}{formats}'))
    if service.input_prefixes:
        rows.append(('input with', ', '.join(f'{p}FILE' for p in service.input_prefixes)))
    if service.native_args:
        rows.append(('passed on', ', '.join(shown_native(a) for a in service.native_args)))
    for option, kind in service.param_args.items():
        rows.append(('parameter', f'{option} {kind}' + (
            ' (VALUE: a number, "string", true, false, undef or a [vector] of them)'
            if kind == 'NAME=VALUE' else '')))
    return rows


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
    servers = remote_servers(ctx, service.name)
    if servers:
        lines.append(f'tasks go to {", ".join(servers)}, whose {service.name} may be another version')
    return '\n'.join(lines) + '\n'


def tool_version(service):
    """The tool's own word on its version (its ``versionArg``, run here), or why there is none."""
    import shutil
    import subprocess
    program = service.cmd[0]
    if program == 'rrcloud':
        return f"rrcloud's built-in G-code sender, rrcloud {__version__}"
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


###############################################################################
# main() ######################################################################
###############################################################################

def main(argv=None) -> int:
    """Entry point: the mode comes from the program name and the environment."""
    argv = list(sys.argv if argv is None else argv)
    program = os.path.basename(argv[0]) if argv else 'rrcloud'
    args = argv[1:]
    traceback = '--traceback' in args
    try:
        if program.endswith('.cloud'):
            return int(wrapper(program[:-len('.cloud')], args))
        if os.environ.get('GATEWAY_INTERFACE'):
            return int(run_cgi())
        return int(cli(args))
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
