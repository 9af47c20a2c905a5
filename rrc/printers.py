"""Named printers: ``printers/NAME.conf`` in the store root (like ``services/``).

A conf gives a printer's port and baud and the G-code the sender runs on
pause, resume and cancel (Marlin defaults when it names none), and optional
start and end G-code::

    port = /dev/ttyACM0
    baud = 115200
    pause = G91
    pause = G1 E-2 Z10 F1200      # a G-code key given again adds a line
    cancel = M104 S0

A print names its printer instead of a port (``rrcloud printrun mk3
part.gcode``): the server looks the name up here and prints on its port
(``resolve_printer``), and the print's runner reads the conf again as the
print starts and hands its G-code to the sandboxed sender on its control
pipe (``handoff_lines``; the sender reads it back with
``printer_from_handoff``).  A name is checked against ``is_printer_name``
before it is ever part of a path; nothing else a client sends reaches this
folder.
"""

import os

from .errors import ConfigError, UsageError
from .keyvalue import parse_key_value_text
from .names import NATIVE_VALUE_RE
from .records import record_native
from .schema import Field

# Commands a printer's conf may not run, though they are G-code: they break
# the sender's line protocol (M110 renumbers, M28/M29 and M928 send what
# follows to the SD card, M118 echoes text the sender would read as an
# answer), wait for a person at the printer (M0, M1), halt it (M112: that is
# ``rrcloud stop``; M999 restarts after one), or change it for good (M30
# deletes a file; M500-M502 write or reset its settings; M997 updates its
# firmware), or start or end a print from the printer's SD card behind the
# sender's back (M23 selects a file, M24 and M32 start it, M524 and M1000
# abort or resume one: the printer would move with no sender to pause or
# cancel it).  A deny-list, not an allow-list: start and end G-code use many
# commands (G28, G29, M420, M600, T0...) that no list of ours should limit.
REFUSED_COMMANDS = ('M0', 'M1', 'M23', 'M24', 'M28', 'M29', 'M30', 'M32', 'M110', 'M112', 'M118', 'M500', 'M501',
                    'M502', 'M524', 'M928', 'M997', 'M999', 'M1000')

# What a sender reports of its printer on the progress pipe (``DONE/TOTAL key=number ...``).
PRINTER_STATE_FIELDS = ('hotend', 'hotendTarget', 'bed', 'bedTarget', 'bytes', 'layer', 'z', 'paused')

# The services whose tasks are prints: their first native word is a port (or a printer's name).
PRINT_SERVICES = ('printrun', 'printcore')
PRINTERS_FOLDER = 'printers'
GCODE_KEYS = ('pause', 'resume', 'cancel', 'start', 'end')
PRINTER_KEYS = ('port', 'baud') + GCODE_KEYS
# Speeds a serial printer is run at (pyserial's standard rates that printers use).
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 250000, 460800, 500000, 921600, 1000000)
# A conf is a few lines of settings and macros; anything bigger is a mistake.
MAX_CONF_BYTES = 64 * 1024
MAX_NAME_CHARS = 32

# Marlin's usual macros, the sender's G-code for a print that names no
# printer, or a printer whose conf names none.  Pause: relative extrusion,
# retract 2 mm, lift 10 mm, back to absolute moves; the heaters keep their
# temperatures (a filament change needs a hot nozzle).  Resume: down 10 mm,
# prime 2 mm (the sender restores the file's own M82 after it).  Cancel:
# heaters, fan and motors off.
DEFAULT_GCODE = {
    'pause': ('M83', 'G1 E-2 F2700', 'G91', 'G1 Z10 F600', 'G90'),
    'resume': ('G91', 'G1 Z-10 F600', 'G90', 'M83', 'G1 E2 F2700'),
    'cancel': ('M104 S0', 'M140 S0', 'M107', 'M84'),
    'start': (),
    'end': (),
}
# How a runner hands a printer's G-code to its sandboxed sender, on the
# sender's control pipe before any request: ``printer NAME``, then one
# ``gcode KEY COMMAND`` a line (KEY one of GCODE_KEYS), then ``ready``.
HANDOFF_PRINTER, HANDOFF_GCODE, HANDOFF_READY = 'printer', 'gcode', 'ready'


def is_printer_name(text):
    """True for a printer's name: a lower-case letter, then lower-case letters,
    digits, ``_`` or ``-``, at most 32 characters (never a path, an option or
    a file name with an extension)."""
    return (isinstance(text, str) and 0 < len(text) <= MAX_NAME_CHARS and 'a' <= text[0] <= 'z'
            and all('a' <= c <= 'z' or '0' <= c <= '9' or c in '_-' for c in text))


def is_port_path(text):
    """True for what may name a serial device: ``/dev/`` and a safe name
    (no ``..``, no spaces); the service's nativeArgs then decide which ones a print may use."""
    rest = text[len('/dev/'):] if text.startswith('/dev/') else ''
    return bool(rest) and '..' not in rest.split('/') and bool(NATIVE_VALUE_RE.match(rest.replace('/', '')))


def is_gcode_line(text):
    """True for one G-code command: a G, M or T word and a number, then
    words of a letter and a value (``G1 X10 F600``, ``M104 S0``), printable
    ASCII only (no tab or other control character: ``str.split`` would take
    \\x1c-\\x1f and tab for spaces, but the firmware reads them as part of a
    word, and ``G1 X1\\x1fM112`` would hide a refused command); no comment,
    no host command, none of ``REFUSED_COMMANDS``."""
    words = text.split()
    if not (text.isascii() and text.isprintable()) or not words or words[0][:1].upper() not in 'GMT' \
            or not words[0][1:].replace('.', '', 1).isdigit() or command_word(words[0]) in REFUSED_COMMANDS:
        return False
    return all(word[:1].isalpha() and all(c.isalnum() or c in '.-+' for c in word[1:]) for word in words[1:])


def gcode_refusal(text):
    """Why ``is_gcode_line`` refuses ``text``, in a few words."""
    words = text.split()
    if text.isascii() and words and command_word(words[0]) in REFUSED_COMMANDS:
        return f'{command_word(words[0])} is not allowed in a printer conf (it breaks the print or the printer)'
    return 'not a G-code command'


def command_word(word):
    """``m0112`` as ``M112``: the letter upper-case, the number without leading zeros."""
    number = word[1:].split('.')[0].lstrip('0') or '0'
    return word[:1].upper() + number


class Printer:
    """One printer as its conf says: ``name``, ``port``, ``baud`` (0: the
    sender's default) and the G-code of each moment, as lists of lines."""

    def __init__(self, name, port, baud, gcode):
        self.name, self.port, self.baud = name, port, baud
        self.pause_gcode = list(gcode['pause'])
        self.resume_gcode = list(gcode['resume'])
        self.cancel_gcode = list(gcode['cancel'])
        self.start_gcode = list(gcode['start'])
        self.end_gcode = list(gcode['end'])

    def native_words(self):
        """The native words a print on this printer runs with: its port, and its baud when it names one."""
        return [self.port] + ([f'--baud={self.baud}'] if self.baud else [])


def parse_printer(name, text, where):
    """A Printer from a conf's text; a ConfigError names ``where`` and the line."""
    fields, gcode = {}, {}
    for number, key, value in parse_key_value_text(text, where):
        if key not in PRINTER_KEYS:
            raise ConfigError(f'{where}:{number}: unknown key {key!r} (known: {", ".join(PRINTER_KEYS)})')
        if key in GCODE_KEYS:
            if not is_gcode_line(value):
                raise ConfigError(f'{where}:{number}: {key}: {gcode_refusal(value)}: {value[:80]!r}')
            gcode.setdefault(key, []).append(value)
        else:
            fields[key] = (number, value)
    port = _checked_port(fields, where)
    baud = _checked_baud(fields, where)
    return Printer(name, port, baud, {key: gcode.get(key, DEFAULT_GCODE[key]) for key in GCODE_KEYS})


def _checked_port(fields, where):
    if 'port' not in fields:
        raise ConfigError(f'{where}: no port (e.g. port = /dev/ttyACM0)')
    number, port = fields['port']
    if not is_port_path(port):
        raise ConfigError(f'{where}:{number}: port: not a serial device path: {port[:80]!r}')
    return port


def _checked_baud(fields, where):
    if 'baud' not in fields:
        return 0
    number, text = fields['baud']
    if not text.isdigit() or int(text) not in BAUD_RATES:
        raise ConfigError(f'{where}:{number}: baud: not a serial speed: {text[:20]!r} '
                          f'(one of {", ".join(map(str, BAUD_RATES))})')
    return int(text)


def printer_conf_path(root, name):
    """``ROOT/printers/NAME.conf`` of a checked name (a UsageError for any other)."""
    if not is_printer_name(name):
        raise UsageError(f'bad printer name: {str(name)[:40]!r} (lower-case letters, digits, _ and -)')
    return os.path.join(root, PRINTERS_FOLDER, name + '.conf')


def printer_names(root):
    """The names of the printers configured in ``ROOT/printers``, sorted (not parsed)."""
    folder = os.path.join(root, PRINTERS_FOLDER)
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(entry[:-len('.conf')] for entry in entries
                  if entry.endswith('.conf') and is_printer_name(entry[:-len('.conf')]))


def load_printer(root, name):
    """The Printer ``name`` of the store at ``root``: a UsageError when there
    is none, a ConfigError naming the file and line when its conf is bad."""
    path = printer_conf_path(root, name)
    where = f'{PRINTERS_FOLDER}/{name}.conf'  # store-relative: a client may read the error
    try:
        with open(path, 'rb') as handle:
            data = handle.read(MAX_CONF_BYTES + 1)
    except FileNotFoundError:
        known = ', '.join(printer_names(root)) or 'none'
        raise UsageError(f'unknown printer {name!r} (configured: {known})') from None
    except OSError as exc:
        raise ConfigError(f'{where}: cannot read: {exc.strerror}') from None
    if len(data) > MAX_CONF_BYTES:
        raise ConfigError(f'{where}: larger than {MAX_CONF_BYTES} bytes')
    try:
        return parse_printer(name, data.decode('utf-8'), where)
    except UnicodeDecodeError:
        raise ConfigError(f'{where}: not UTF-8 text') from None


def names_a_printer(service, native_args):
    """True when a print's first native word is a printer's name rather than a port or an option."""
    return service.name in PRINT_SERVICES and bool(native_args) and is_printer_name(native_args[0])


def resolve_printer(root, service, native_args):
    """(native words, record fields) of a print that names its printer: the
    name becomes its port (and baud), the record keeps ``printer: NAME``.
    Any other task's words come back as they are, with no fields."""
    native_args = list(native_args)
    if not names_a_printer(service, native_args):
        return native_args, {}
    printer = load_printer(root, native_args[0])
    words = printer.native_words()
    refused = [word for word in words if not service.allows_native(word)]
    if refused:  # the admin's conf, but the service conf still decides which ports a print may use
        raise ConfigError(f'printer {printer.name!r}: {refused[0]} is not allowed by the nativeArgs of '
                          f'services/{service.name}.conf')
    return words + native_args[1:], {Field.PRINTER: printer.name}


def print_port(record):
    """The port a print task names: the first native word that is no option
    ('' for none, or for nativeArgs that are not a list of words)."""
    try:
        words = [word for word in record_native(record) if not word.startswith('-')]
    except UsageError:
        return ''
    return words[0] if words else ''


def print_targets(record):
    """The printer a print task uses, by its name and by its port with its
    links resolved (``/dev/serial/by-id/…`` and ``/dev/ttyACM0`` are one
    printer); empty for any other task."""
    if record.get(Field.SERVICE) not in PRINT_SERVICES:
        return set()
    port = print_port(record)
    return {target for target in (record.get(Field.PRINTER), port and os.path.realpath(port)) if target}


def handoff_lines(printer):
    """The lines that hand ``printer``'s G-code (all five lists, Marlin's
    where its conf names none) to a sender; None: the lines of no printer
    (the sender keeps Marlin's G-code)."""
    if printer is None:
        return [HANDOFF_READY]
    lines = [f'{HANDOFF_PRINTER} {printer.name}']
    for key in GCODE_KEYS:
        lines += [f'{HANDOFF_GCODE} {key} {code}' for code in getattr(printer, key + '_gcode')]
    return lines + [HANDOFF_READY]


def printer_from_handoff(lines):
    """The Printer (no port: the sender has its own) that ``handoff_lines``
    described, or None for no printer; each line checked again (ConfigError)."""
    name, gcode = None, {}
    for line in lines:
        word, _, rest = line.partition(' ')
        if word == HANDOFF_PRINTER and is_printer_name(rest) and name is None:
            name = rest
            continue
        key, _, code = rest.partition(' ')
        if word != HANDOFF_GCODE or name is None or key not in GCODE_KEYS or not is_gcode_line(code):
            raise ConfigError(f'a bad line in the printer G-code from the runner: {line[:80]!r}')
        gcode.setdefault(key, []).append(code)
    if name is None:
        return None
    return Printer(name, '', 0, {key: gcode.get(key, DEFAULT_GCODE[key]) for key in GCODE_KEYS})
