"""Printing: the built-in G-code sender (``rrcloud print``) and the firmware quirks it copes with."""

import os
import time

from .config import positive_int, positive_number
from .errors import ConfigError, ExitCode, PrinterError, UsageError
from .names import LazyPattern
from .printers import DEFAULT_GCODE, HANDOFF_READY, PRINTER_STATE_FIELDS, printer_from_handoff


PRINT_DEFAULT_BAUD = 115200
# Silence that fails a print (--timeout=S): not a single line from the printer
# for this long, pokes included.  A long M109 or G28 is not silent: Marlin
# reports busy: or temperatures while it works.
PRINT_ANSWER_TIMEOUT = 60.0
# Silence after which the printer is poked with M105 (--comm-timeout=S): an ok
# lost on the wire, or a Marlin that sends Resend: without its ok, would
# otherwise stall the print until the full timeout.
PRINT_COMM_TIMEOUT = 3.0
# The same while the printer reported busy: or heating temperatures (M109,
# M190; not M155's auto-reports) since the line went out: Marlin's keepalive comes every 2 s by default, and M113 can
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
# "Last Line: 109" in such an Error: the last line the printer took.
LAST_LINE_RE = LazyPattern(rb'(?i)Last Line:?\s*([0-9]+)')
# Commands during which Marlin itself reports temperatures while it waits
# (wait_for_hotend/bed/chamber, PID autotune): those reports mean "working".
# Outside them a temperature line is the auto-report of M155, which comes
# whether or not the printer answers: it says nothing about the line in flight.
PRINT_HEATING_WAITS = ('M109', 'M190', 'M191', 'M303')
GCODE_PAREN_COMMENT_RE = LazyPattern(r'\([^)]*\)')
# While paused the printer is asked for its temperatures (M105) this often.
PRINT_PAUSE_POLL = 2.0
# A wait for the printer's next line is cut into slices this long while a
# control channel is open: a stop (M112) goes out at once.
PRINT_CONTROL_SLICE = 0.2
# Without a temperature line for this long, the printer is asked (M105)
# between two lines while a runner follows the print (a firmware's M155
# auto-report makes these polls needless).
PRINT_TEMP_INTERVAL = 5.0
TEMP_RE = LazyPattern(rb'(?<![A-Za-z@])T0?:\s*(-?[0-9.]+)\s*(?:/\s*(-?[0-9.]+))?')
BED_RE = LazyPattern(rb'(?<![A-Za-z@])B:\s*(-?[0-9.]+)\s*(?:/\s*(-?[0-9.]+))?')
Z_RE = LazyPattern(r'(?i)\AG[01](?:\.0*)?\s.*?Z\s*(-?[0-9.]+)')
LAYER_COMMENT_RE = LazyPattern(r'(?i)\A;\s*LAYER\s*:?\s*(-?[0-9]+)')
# The runner hands a printer's G-code over on the control pipe as the sender
# starts (it writes it at once): a sender that gets none in this time fails.
PRINT_HANDOFF_WAIT = 30.0
# The words the runner writes on the control pipe (RRCLOUD_CONTROL_FD).
CONTROL_WORDS = ('pause', 'resume', 'cancel', 'stop')
# A sender told to end (SIGTERM: its runner's grace for a cancel ran out, or
# the runner itself is stopped) writes M108 and the cancel G-code within
# this long, then ends: the runner kills what is left a second or two after.
PRINT_LAST_WORDS_SECONDS = 0.5


class MarlinGcode:
    """The G-code of a pause, a resume and a cancel (Marlin's, ``printers.DEFAULT_GCODE``;
    a named printer's conf gives its own object with the same attributes).

    pause   relative extrusion, retract 2 mm, lift Z 10 mm; temperatures kept
    resume  lower Z 10 mm, prime 2 mm (then the file's own modes again: see GcodeSender.modes_to_restore)
    cancel  hotend, bed and fan off, motors off
    """
    pause_gcode = DEFAULT_GCODE['pause']
    resume_gcode = DEFAULT_GCODE['resume']
    cancel_gcode = DEFAULT_GCODE['cancel']


class PrintCancelled(PrinterError):
    """The print was cancelled on request (its cancel G-code sent)."""


class SenderTerminated(BaseException):
    """SIGTERM came (the runner gave up on a cancel, or is stopped itself):
    a BaseException, so nothing on the way takes it for a printer's error."""


def _terminated(signum, frame):
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one would cut the last words short
    raise SenderTerminated()


def terminate_handler():
    """SIGTERM raises SenderTerminated from now on; the handler it replaces
    (None where signals cannot be set: not the main thread)."""
    import signal
    try:
        return signal.signal(signal.SIGTERM, _terminated)
    except ValueError:
        return None


class ControlPipe:
    """The runner's requests (one word a line: pause, resume, cancel, stop) on
    the pipe RRCLOUD_CONTROL_FD names; read without blocking."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b''
        self.open = True
        os.set_blocking(fd, False)

    def poll(self):
        """The words that arrived since the last poll, oldest first."""
        if self.open:
            self._read_available()
        *lines, self.buffer = self.buffer.split(b'\n')
        return [word for word in (line.strip().decode('ascii', 'replace') for line in lines)
                if word in CONTROL_WORDS]

    def read_printer(self, timeout=PRINT_HANDOFF_WAIT):
        """The printer whose G-code the runner hands over before any request
        (``printers.handoff_lines``): a Printer, or None (Marlin's G-code).
        PrinterError when the runner sends none (the print must not go on
        with G-code that may be another printer's)."""
        import select
        deadline = time.monotonic() + timeout
        while not self._has_ready_line():
            left = deadline - time.monotonic()
            if not self.open or left <= 0:
                raise PrinterError('the runner handed over no printer G-code')
            select.select([self.fd], [], [], left)
            self._read_available()
        lines = []
        while True:
            line, self.buffer = self.buffer.split(b'\n', 1)
            text = line.decode('utf-8', 'replace').strip()
            if text == HANDOFF_READY:
                break
            lines.append(text)
        try:
            return printer_from_handoff(lines)
        except ConfigError as exc:
            raise PrinterError(str(exc)) from None

    def _has_ready_line(self):
        return HANDOFF_READY.encode() in self.buffer.split(b'\n')[:-1]

    def _read_available(self):
        try:
            while chunk := os.read(self.fd, 65536):
                self.buffer += chunk
            self.open = False  # the runner is gone
        except BlockingIOError:
            pass

    def wait(self, timeout):
        """Wait up to ``timeout`` s for a word; the words, or []."""
        import select
        if self.open and not b'\n' in self.buffer:
            select.select([self.fd], [], [], timeout)
        return self.poll()


def task_control_pipe():
    """The runner's control pipe (RRCLOUD_CONTROL_FD), or None when run by hand."""
    fd = os.environ.get('RRCLOUD_CONTROL_FD', '')
    return ControlPipe(int(fd)) if fd.isdigit() else None


def gcode_lines(path):
    """The code lines of a G-code file: comments (; and parentheses) and blanks stripped."""
    lines = []
    with open(path, encoding='utf-8', errors='replace') as handle:
        for raw in handle:
            code = GCODE_PAREN_COMMENT_RE.sub('', raw.split(';', 1)[0]).strip()
            if code:
                lines.append(code)
    return lines


def gcode_layers(path, count):
    """The layer of each of the file's ``count`` code lines (as gcode_lines
    reads them): the ``;LAYER:n`` comment before it where the slicer wrote
    them (Cura, PrusaSlicer, Slic3r with its layer comments), else None for
    all (the layer is then counted from the Z moves)."""
    layers, layer, seen = [], None, False
    with open(path, encoding='utf-8', errors='replace') as handle:
        for raw in handle:
            match = LAYER_COMMENT_RE.match(raw.strip())
            if match:
                layer, seen = int(match.group(1)), True
            code = GCODE_PAREN_COMMENT_RE.sub('', raw.split(';', 1)[0]).strip()
            if code:
                layers.append(layer)
    return layers if seen and len(layers) == count else None


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

    def send_within(self, data, seconds):
        """Write ``data`` for at most ``seconds`` (a printer that stopped
        reading, flow control holding it back); the bytes written."""
        import select
        deadline, written = time.monotonic() + seconds, 0
        while written < len(data):
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not select.select([], [self.fd], [], left)[1]:
                    break
                written += os.write(self.fd, data[written:])
            except BlockingIOError:
                continue
            except OSError:
                break
        return written

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
              busy: or heating reports, as during M109, M190, G28): poke
              with M105 and carry on when it answers.  No line for the full
              answer timeout, pokes and all: stop.  Temperature auto-reports
              (M155) and ``wait`` (Marlin's NO_TIMEOUTS) do not break a
              silence: they come on a timer whether or not the printer
              answers, so a lost ok under them would otherwise never be
              poked for (OctoPrint times out on the last ok for the same
              reason).
    errors    The Error: lines of PRINT_LINE_ERRORS come with a resend and
              are only logged; any other Error: or !! line stops the print
              with that line.  So does ``start`` mid-print (a reset).  A
              line error with no Resend: after it (some firmware and
              emulators answer "No Line Number with checksum" so, without
              even an ok) is a resend of its "Last Line" + 1 once the poke
              is answered.  A line that the printer swallowed without a
              word (a resent one, say) is told by its next "Line Number is
              not Last Line Number+1" and Resend:, like any other.
    """

    def __init__(self, link, lines, answer_timeout=PRINT_ANSWER_TIMEOUT, progress=None, log=None,
                 comm_timeout=PRINT_COMM_TIMEOUT, control=None, printer=None):
        from collections import deque
        self.control = control             # a ControlPipe, or None
        self.printer = printer or MarlinGcode()  # .pause_gcode, .resume_gcode, .cancel_gcode
        self.requests = deque()            # control words read, not yet acted on
        self.orphaned = False              # the control pipe closed: the runner is gone
        self.state = 'printing'            # printing, paused, cancelling
        self.pause_poll = PRINT_PAUSE_POLL
        self.extrusion = None              # 'M82' or 'M83', the file's last, restored after a resume
        self.positioning = None            # 'G90' or 'G91', the same
        # What the printer is doing, for the progress pipe (PRINTER_STATE_FIELDS)
        self.temps = {}                    # hotend, hotendTarget, bed, bedTarget
        self.temps_at = time.monotonic()   # when a temperature line came last
        self.temp_interval = None          # seconds between M105 polls; None: never (by hand)
        self.bytes_sent = 0
        self.layers = None                 # the ;LAYER of each line, or None: counted from Z moves
        self.z = None
        self.z_layer = 0                   # layers counted from rising Z
        self.layer_z = None                # the last Z of the file's own lines (its layers)
        self.file_span = None              # (first, last): the file's own lines between start and end G-code
        self.relative = False              # G91 in the file
        self.link = link
        self.lines = lines
        self.answer_timeout = answer_timeout
        self.comm_timeout = comm_timeout
        self.progress = progress or (lambda done, total, **state: None)
        self.log = log or (lambda text: None)
        self.acked = 0
        # What the printer owes an ok for, oldest first: (is a line of the
        # file, its ok carries temperatures).
        self.owed = deque()
        self.heard = time.monotonic()  # the printer's last line (auto-reports aside), or ours to it
        self.poked_at = 0.0
        self.busy = False              # busy: or heating reports since the last line went out
        self.asked = (0, 0)            # (line, times in a row) of resend requests
        self.in_flight = ''            # the command word of the line in flight, e.g. 'M109'
        self.refused_from = None       # a line error without Resend: the line it wants next

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
            self._obey(number - 1)
            self._poll_temperatures()
            self._send_line(number)
            following = self._await_answer(number)
            self.acked = max(self.acked, following - 1)
            number = following
            if time.monotonic() - last_progress >= PRINT_PROGRESS_INTERVAL:
                last_progress = time.monotonic()
                self._report()
        self._report()

    def _report(self):
        """Progress, with the printer's state, to whoever follows the print."""
        self.progress(self.acked, len(self.lines), **self.printer_state())

    def printer_state(self):
        """Temperatures, bytes sent, layer, height, paused (PRINTER_STATE_FIELDS)."""
        state = dict(self.temps, bytes=self.bytes_sent, paused=int(self.state == 'paused'))
        layer = self.layers[self.acked - 1] if self.layers and self.acked else None
        if layer is None and not self.layers and self.z_layer:
            layer = self.z_layer
        if layer is not None:
            state['layer'] = layer
        if self.z is not None:
            state['z'] = self.z
        return state

    def _poll_temperatures(self):
        """M105 between two lines when no temperature came for temp_interval."""
        if self.temp_interval and time.monotonic() - self.temps_at >= self.temp_interval:
            self.temps_at = time.monotonic()
            self._run_commands(('M105',))

    def _note_temperatures(self, line):
        """Keep the temperatures of a line that has them (an M105 answer, an auto-report, a heating wait)."""
        found = False
        for pattern, name in ((TEMP_RE, 'hotend'), (BED_RE, 'bed')):
            match = pattern.search(line)
            if match:
                found = True
                try:
                    self.temps[name] = float(match.group(1))
                    if match.group(2) is not None:
                        self.temps[name + 'Target'] = float(match.group(2))
                except ValueError:
                    pass
        if found:
            self.temps_at = time.monotonic()

    def _note_move(self, code, number):
        """Height from the Z moves (absolute; G91 relative ones added), and
        the layer from the file's own rising ones: the start G-code's lift
        and the end G-code's are no layer."""
        word = code.split(None, 1)[0].upper()
        if word in ('G90', 'G91'):
            self.relative = word == 'G91'
            return
        match = Z_RE.match(code)
        if not match:
            return
        try:
            z = float(match.group(1))
        except ValueError:
            return
        z = (self.z or 0.0) + z if self.relative else z
        self.z = round(z, 3)
        first, last = self.file_span or (1, len(self.lines))
        if first <= number <= last:
            if self.layer_z is None or z > self.layer_z + 1e-6:
                self.z_layer += 1 if z > 0 else 0
            self.layer_z = z

    def _send_line(self, number):
        code = self.lines[number - 1]
        data = checksummed(number, code)
        self.link.send(data)
        self.bytes_sent += len(data)
        self._note_move(code, number)
        self.owed.append((True, code[:4].upper() == 'M105' and not code[4:5].isdigit()))
        self.heard = time.monotonic()  # silence counts from here
        self.busy = False
        self.in_flight = code.split(None, 1)[0].upper()
        self._note_mode(self.in_flight)
        self.refused_from = None

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
                    return self._line_answered(number, following)
            elif is_printer_error(line):
                self._check_error(line)
                if following == number + 1:  # no Resend: yet (Marlin sends it after the Error:)
                    self.refused_from = self._refused_line(line, number)
            elif line == b'start':
                raise PrinterError(f'the printer restarted (it sent start) after line {number}')
            elif b'busy:' in line or (b'T:' in line and not self._is_timed_chatter(line)):
                self.busy = True
            else:
                match = RESEND_RE.match(line)
                if match:
                    following = self._resend_target(int(match.group(1)), number)
                    self.refused_from = None  # the resend request says it all
                # echo:, position reports, auto-reports, wait and unknown lines

    def _line_answered(self, number, following):
        """The line to send next once line ``number`` has its ok (or its poke's)."""
        if self.refused_from is not None:
            following = self._resend_unasked(number)
        if following == number + 1:
            self.asked = (0, 0)
        return following

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

    @staticmethod
    def _refused_line(line, number):
        """The line a line error (read before any Resend:) wants next: its Last Line + 1, else ``number``."""
        match = LAST_LINE_RE.search(line)
        return int(match.group(1)) + 1 if match else number

    def _resend_unasked(self, number):
        """The line to go on with when a line error came without a Resend:."""
        wanted = self.refused_from
        self.refused_from = None
        if wanted == number + 1:
            return wanted  # it took the line in flight after all
        self.log(f'the printer refused line {number} without asking for a resend: sending line {wanted} again')
        return self._resend_target(wanted, number)

    def _check_error(self, line):
        """Log an Error: line; stop unless it is one that comes with a resend."""
        text = line.decode(errors='replace')
        self.log(f'printer: {text}')
        lowered = line.lower()
        if line.startswith(b'!!') or not any(words in lowered for words in PRINT_LINE_ERRORS):
            raise PrinterError(f'printer error: {text}')

    # -- pause, resume, cancel, stop -----------------------------------------

    def _take_requests(self, words=None):
        """Queue the control words that came; an emergency stop is sent at
        once.  The control pipe closed (its runner died: OOM, SIGKILL) is a
        cancel whatever else came with it: nobody follows the print any
        more, nor could resume, pause or kill it."""
        for word in (self.control.poll() if words is None else words):
            self.log(f'asked to {word}')
            self._take(word)
        if not self.control.open and not self.orphaned:
            self.orphaned = True
            self.log('the runner is gone (its control pipe closed): cancelling')
            self.requests.clear()  # a resume or pause read with the end of the pipe: no one is there
            self._take('cancel')

    def _take(self, word):
        if word == 'stop':
            self._emergency_stop()
        if word == 'cancel' and self.in_flight in PRINT_HEATING_WAITS:
            self._break_heating_wait()
        self.requests.append(word)

    def _break_heating_wait(self):
        """A cancel during a heat-up (M109, M190, M191, M303) need not wait
        for it: M108 ends the wait on firmware with an emergency parser
        (Marlin's default); elsewhere it is a command like any, answered after."""
        self._send_command(b'M108', reports=False)
        self.log(f'M108 sent: the {self.in_flight} wait is broken off')

    def _emergency_stop(self):
        self.link.send(b'M112\n')
        self.log('emergency stop: M112 sent')
        raise PrinterError('emergency stop (M112)')

    def _obey(self, done):
        """Between lines (``done`` of them answered): act on what was asked."""
        if self.control is None:
            return
        self._take_requests()
        while self.requests:
            word = self.requests.popleft()
            if word == 'cancel':
                self._cancel(done)
            elif word == 'pause':
                self._pause(done)

    def _pause(self, done):
        """The pause G-code, then temperatures polled until a resume (or cancel, stop)."""
        self.log(f'pausing after line {done}')
        self.state = 'paused'
        self._run_commands(self.printer.pause_gcode)
        self.log(f'paused after line {done}')
        self._report()
        while True:
            words = self.control.wait(self.pause_poll)
            self._take_requests(words)  # the pipe closed: a cancel (the runner is gone)
            while self.requests:
                word = self.requests.popleft()
                if word == 'cancel':
                    self._cancel(done)
                elif word == 'resume':
                    self._run_commands(tuple(self.printer.resume_gcode) + self.modes_to_restore())
                    self.state = 'printing'
                    self.log(f'resumed after line {done}')
                    return
            if not words:
                self._run_commands(('M105',))  # a pause is no silence: the printer is still asked
                self._report()

    def _note_mode(self, command):
        """Keep the file's positioning and extrusion modes (Marlin: G90 and G91
        set the extruder's mode too; M82 and M83 only the extruder's)."""
        if command in ('G90', 'G91'):
            self.positioning, self.extrusion = command, ('M82' if command == 'G90' else 'M83')
        elif command in ('M82', 'M83'):
            self.extrusion = command

    def modes_to_restore(self):
        """The commands that put the printer back in the file's modes after a
        resume, whose G-code (Marlin's primes with M83) may have changed them:
        positioning first (it sets the extruder's mode too), then extrusion;
        a file that set none is in the firmware's defaults, G90 and M82."""
        return (self.positioning or 'G90', self.extrusion or 'M82')

    def abandon(self):
        """Last words to a printer the sender must leave now (SIGTERM):
        ``M108`` and the cancel G-code, unnumbered, not waited for, within
        PRINT_LAST_WORDS_SECONDS.  M108 ends a heat-up's wait at once on
        firmware with an emergency parser (Marlin's default); without one,
        M108 and the cancel G-code wait in its serial buffer behind the
        command in flight and run once it is done: the heaters go off then,
        rather than never.  A newline first ends a line the signal cut
        short (the printer refuses that one: no checksum).  The error the
        sender ends with."""
        codes = ('M108',) + tuple(self.printer.cancel_gcode)
        data = b'\n' + b''.join(code.encode('ascii', 'replace') + b'\n' for code in codes)
        written = self.link.send_within(data, PRINT_LAST_WORDS_SECONDS)
        done = 'sent' if written == len(data) else f'not all sent ({written} of {len(data)} bytes)'
        self.log(f'terminated (SIGTERM) after line {self.acked}: M108 and the cancel G-code {done}, '
                 f'not waited for')
        return PrinterError(f'terminated (SIGTERM) after line {self.acked}: M108 and the cancel G-code {done}; '
                            f'without an emergency parser the printer runs them after the command in flight')

    def _cancel(self, done):
        self.state = 'cancelling'
        self.log(f'cancelling after line {done}')
        self._run_commands(self.printer.cancel_gcode)
        self.log(f'cancelled after line {done}')
        raise PrintCancelled('cancelled')

    def _run_commands(self, codes):
        """Send each of ``codes`` unnumbered and wait for its ok."""
        for code in codes:
            command = code.encode('ascii', 'replace')
            self._send_command(command, reports=code[:4].upper() == 'M105' and not code[4:5].isdigit())
            self.heard = time.monotonic()
            self.in_flight = code.split(None, 1)[0].upper()
            while self.owed:
                line = self._read(self.heard + self.answer_timeout)
                if line is None:
                    raise PrinterError(f'the printer stopped answering (no reply for '
                                       f'{self.answer_timeout:g} s after {code})')
                if line.startswith(b'ok'):
                    self._match_ok(line)
                elif is_printer_error(line):
                    self._check_error(line)
                elif line == b'start':
                    raise PrinterError(f'the printer restarted (it sent start) after {code}')

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

    def _is_timed_chatter(self, line):
        """A line sent on a timer whatever became of the line in flight, so no answer:
        M155's temperature auto-report, or ``wait`` (Marlin's NO_TIMEOUTS, Repetier:
        its queue is empty; if anything, the line in flight was lost)."""
        if line == b'wait':
            return True
        if line.startswith(b'ok') or b'T:' not in line:
            return False
        # Marlin's wait_for_hotend/bed add W: (the residency countdown)
        return b' W:' not in line and self.in_flight not in PRINT_HEATING_WAITS

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
        self.log(f'no answer to line {number} for {self._silence():.1f} s: poked with M105')
        self._send_command(b'M105', reports=True)

    def _read(self, until):
        """The printer's next line, or None at ``until`` or after ``answer_timeout`` s of silence."""
        while True:
            end = min(until, self.heard + self.answer_timeout)
            left = end - time.monotonic()
            if self.control is None or left <= PRINT_CONTROL_SLICE:
                line = self.link.read_line(max(left, 0.0))
                break
            line = self.link.read_line(PRINT_CONTROL_SLICE)
            self._take_requests()  # a stop goes out at once, the rest between lines
            if line is not None:
                break
        if line is not None and b'T:' in line:
            self._note_temperatures(line)
        if line is not None and not self._is_timed_chatter(line):
            self.heard = time.monotonic()  # an auto-report or wait is no answer: the silence goes on
        return line


def cmd_print(args):
    """``rrcloud print [--baud=N] [--timeout=S] [--comm-timeout=S] PORT FILE``: the built-in G-code sender."""
    options, (port, path) = _print_arguments(args)
    check_serial_port(port)  # a wrong port is named even when the file is wrong too
    control = task_control_pipe()
    printer = control.read_printer() if control is not None else None
    lines, layers, span = printed_lines(path, printer)
    link = SerialLink(port, options['baud'])
    started = time.monotonic()
    sender = GcodeSender(link, lines, options['timeout'], task_progress_writer(), _print_log,
                         comm_timeout=options['comm-timeout'], control=control, printer=printer)
    sender.layers, sender.file_span = layers, span
    if sender.control is not None:  # a task: its followers see temperatures
        sender.temp_interval = PRINT_TEMP_INTERVAL
    previous = terminate_handler()
    try:
        sender.connect()
        sender.run()
    except SenderTerminated:
        raise sender.abandon() from None
    finally:
        if previous is not None:
            import signal
            signal.signal(signal.SIGTERM, previous)
        link.close()
    elapsed = time.monotonic() - started
    _print_log(f'printed {len(lines)} lines in {elapsed:.1f} s')
    return ExitCode.OK


def printed_lines(path, printer=None):
    """(lines, their layers, (first, last) of the file's own) of a print:
    the file's code lines, between its printer's start and end G-code when
    it names a printer (numbered and answered like the file's own lines, so
    resends and a cancel reach them too)."""
    lines = gcode_lines(path)
    layers = gcode_layers(path, len(lines))
    if printer is None:
        return lines, layers, (1, len(lines))
    start, end = list(printer.start_gcode), list(printer.end_gcode)
    _print_log(f'printer {printer.name}: its own G-code ({len(start)} start lines, {len(end)} end lines)')
    if layers is not None:
        layers = [None] * len(start) + layers + [layers[-1] if layers else None] * len(end)
    return start + lines + end, layers, (len(start) + 1, len(start) + len(lines))


def _print_arguments(args):
    """(options, [PORT, FILE]) of ``rrcloud print``; UsageError for anything else."""
    options = {'baud': PRINT_DEFAULT_BAUD, 'timeout': PRINT_ANSWER_TIMEOUT,
               'comm-timeout': PRINT_COMM_TIMEOUT}
    positional = []
    for arg in args:
        name, sep, value = arg[2:].partition('=')
        if arg.startswith('--') and sep and name in options:
            try:
                options[name] = positive_int(value) if name == 'baud' else positive_number(value)
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

    def write(done, total, **state):
        extra = ''.join(f' {key}={value if isinstance(value, int) else round(value, 3)}'
                        for key, value in state.items()
                        if key in PRINTER_STATE_FIELDS and isinstance(value, (int, float)))
        try:
            os.write(int(fd), f'{done}/{total}{extra}\n'.encode())
        except OSError:
            pass  # a runner that went away takes the print with it anyway
    return write


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
                (default {PRINT_COMM_TIMEOUT:g}; {PRINT_BUSY_COMM_TIMEOUT:g} while it reports it is busy);
                temperature auto-reports (M155) and wait lines do not break a silence
  -h, --help    show this help
"""
