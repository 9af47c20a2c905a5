"""A simulated Marlin-like printer on a pseudo-terminal, for the printing tests.

The printer runs in a background thread behind the master side of a pty; the
host (the code under test, or Printrun's ``printcore``) opens ``sim.port``, the
slave's device path, like a real ``/dev/ttyUSB0``::

    with PrinterSim(resend_every=50) as sim:
        run_sender(sim.port, "tests/data/small.gcode")
        assert sim.received == expected

What it models (Marlin 2.1 ``GCodeQueue`` semantics):

- Boot banner (``start``, ``echo:Marlin ...``) each time the host opens the
  port, after ``banner_delay`` seconds (a board resetting on open).  Input
  that arrives while "booting" is dropped, as a real bootloader drops it.  The
  banner is not written at construction: nobody is listening yet, and
  pyserial flushes the input queue when it opens a port, so it would be lost.
  ``send_banner()`` sends it again on demand.  With ``reset_on_open=False``
  the board does not reset (no DTR reset, or a board without one): no boot,
  no banner, input answered at once, the line counter kept from before.
- ``N<n> <code>*<cs>`` lines: ``cs`` must be the XOR of all bytes before '*',
  and ``n`` must be the last line number + 1, else ``Error:...``,
  ``Resend: <last+1>``, ``ok``.  ``M110`` skips the line-number check and
  sets the last line number: ``N<n> M110*cs`` sets it to n, ``M110 N<m>``
  (numbered or not) sets it to m.  The counter is 0 after boot.
- Unnumbered lines without checksum are accepted.  A numbered line without
  checksum, or a checksum without line number, is an error (as in Marlin).
- Text after ';' is a comment; empty lines get no answer at all (as in Marlin).
- ``ok`` per accepted command; ``M105`` answers ``ok T:20.0 /0.0 B:20.0 /0.0``;
  ``M114`` and ``M115`` print a report line before their ``ok``.
- ``M155 S<s>`` turns the temperature auto-report on (every s seconds; a
  fraction is taken, for short tests) or off (S0), as Marlin's
  AUTO_REPORT_TEMPERATURES does; the reports go on whatever else happens.

Faults of real firmware and links, each on request: resend requests
(injected, or for ever for one line), a line that reached the printer twice
(it asks for the next one), an ``ok`` lost on the wire or left out after a
resend (``flush_and_request_resend`` of some Marlin 2.0 builds printed
``Resend:`` alone), a halt (``Error:Printer halted. kill() called!``), long
commands with busy: or temperature reports (M109, G28), silence; and the
two that stall a sender that only waits: a line error answered by the
``Error:`` line alone (no ``Resend:``, no ``ok``), and a resend request whose
resent line is then swallowed without a word.

Everything is recorded: ``received`` (accepted commands, without N and
checksum, in order, each once), ``errors``, ``resends_requested``,
``injected_resends``, ``duplicated``, ``dropped_oks``, ``unanswered_errors``,
``swallowed``, ``ignored`` and a full ``transcript``.
"""

import errno
import fcntl
import os
import select
import threading
import time
import tty

DEFAULT_BANNER = (
    "start",
    "echo:Marlin 2.1.2 (simulated)",
    "echo: Last Updated: 2022-12-23 | Author: (rrcloud test fixture)",
    "echo:Compiled: Jan  1 2023",
    "echo: Free Memory: 4216  PlannerBufferBytes: 1152",
)

# Lines a real Marlin (or a board with a chatty plugin) prints between answers.
# None of them starts with "ok", "Resend", "rs", "start" or "Error".
DEFAULT_NOISE = (
    "echo:busy: processing",
    "busy: processing",
    " T:200.0 /200.0 B:60.0 /60.0 @:0 B@:0",
    "//action:notification simulated printer",
    "X:0.00 Y:0.00 Z:0.00 E:0.00 Count X:0 Y:0 Z:0",
    "unknown line from the simulated printer",
)

RESEND_FORMATS = {
    "marlin": "Resend: {n}",     # Marlin, Sprinter ("Resend:{n}" in some builds)
    "rs": "rs {n}",              # older firmware
    "rs_n": "rs N{n}",           # Teacup / Repetier style
}

M105_OK = "ok T:20.0 /0.0 B:20.0 /0.0"
HALT_LINES = ("Error:Printer halted. kill() called!",)
# Commands during which Marlin reports temperatures (wait_for_hotend/bed).
HEATING_COMMANDS = ("M109", "M190", "M191")
HEATING_REPORT = " T:150.0 /200.0 B:60.0 /60.0 @:127 B@:0 W:?"
M114_REPORT = "X:0.00 Y:0.00 Z:0.00 E:0.00 Count X:0 Y:0 Z:0"
M115_REPORT = ("FIRMWARE_NAME:Marlin 2.1.2 (simulated) "
               "SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin "
               "PROTOCOL_VERSION:1.0 MACHINE_TYPE:rrcloud-sim EXTRUDER_COUNT:1")


def checksum(text):
    """XOR of the bytes of ``text`` (the part of a line before '*')."""
    cs = 0
    for b in text.encode("latin-1") if isinstance(text, str) else text:
        cs ^= b
    return cs


def numbered(n, code):
    """The line a host sends for ``code`` as line ``n``: ``N<n> <code>*<cs>``."""
    prefix = "N%d %s" % (n, code)
    return "%s*%d" % (prefix, checksum(prefix))


class PrinterSim:
    """A Marlin-like printer behind a pty.  See the module docstring.

    Constructor arguments (all optional):

    banner_delay     seconds between the host opening the port and the banner
                     (input meanwhile is dropped).  Default 0.05: a tiny boot,
                     so the banner cannot race pyserial's input flush on open.
    banner           the banner lines (default DEFAULT_BANNER).
    delay            seconds to "work" on each accepted command before its
                     ok (default 0: answer at once).
    command_delays   {command word: seconds} of work for some commands only,
                     e.g. {"M109": 3.0} (a heat-up); overrides ``delay``.
    busy_interval    when set and the work is longer, send
                     ``echo:busy: processing`` every busy_interval seconds
                     while working (Marlin's host keepalive); for M109,
                     M190 and M191 a temperature report instead, the first
                     at once (Marlin's wait_for_hotend/bed).
    resend_every     ask for a resend of a correct numbered line after every
                     ``resend_every`` accepted numbered lines: the line is not
                     accepted, the answer is ``Resend: <n>`` + ``ok``.
    resend_lines     line numbers (N values) to refuse once each, the same way.
    resend_loop_lines  line numbers refused every time they come, the same
                     way (a link that garbles them for good).
    duplicate_lines  line numbers that reach the printer twice, the ok of the
                     first copy lost on the wire: the line is accepted and
                     the host sees only the second copy's answer,
                     ``Error:Line Number is not Last Line Number+1``,
                     ``Resend: <n+1>``, ``ok``.
    drop_ok_lines    line numbers accepted with their ok lost on the wire
                     (with ``temp_interval`` or M155: the lost ok under
                     auto-reports, which must not hide the silence).
    unanswered_error_lines  line numbers whose first copy arrives with its
                     ``N`` eaten by line noise: refused with
                     ``Error:<unanswered_error>, Last Line: <n-1>`` and
                     nothing after it, no ``Resend:`` and no ``ok`` (as an
                     emulator tried in issue 21 answers; Marlin's own
                     gcode_line_error follows with both).  The next copy is
                     taken.
    unanswered_error the message of those errors (default "No Line Number
                     with checksum").
    swallow_resent_lines  line numbers refused once with a resend request
                     (``Resend: n``, ``ok``) whose resent copy is then
                     swallowed: read, never taken, never answered (lost in
                     the receive buffer).  The copy after that is taken.
    inject_error     precede injected resends with
                     ``Error:checksum mismatch, Last Line: <n-1>`` (looks like
                     line noise) instead of a bare resend request; a string
                     is the message to use instead of "checksum mismatch".
    resend_format    "marlin" (``Resend: n``), "rs" (``rs n``), "rs_n"
                     (``rs Nn``) or a format string with ``{n}``.
    ok_after_resend  send ``ok`` after every resend request (default True,
                     Marlin does; some 2.0 builds did not).
    flush_on_error   after an error, drop the input already received but not
                     yet processed (Marlin clears its RX buffer).  Default
                     False.
    noise_every      before the ok of every noise_every-th accepted command,
                     send the ``noise_lines`` (default 0: never).
    noise_lines      the noise (default DEFAULT_NOISE).
    temp_interval    when set, send a temperature report line every
                     temp_interval seconds on its own (like M155 S1).
    silent_after     stop answering anything once this many commands have
                     been accepted (the lines after are read and recorded in
                     ``ignored``, never answered).
    wait_interval    when set, send ``wait`` once no input came for this many
                     seconds, and again every wait_interval after (Marlin's
                     NO_TIMEOUTS, Repetier's "wait"): the printer has
                     nothing to do, so it says nothing about a lost line
                     but that it was lost.
    emergency_parser Marlin's EMERGENCY_PARSER (default on, as on most
                     boards): an ``M108`` that arrives while M109, M190 or
                     M191 waits ends the wait at once (its ok goes out,
                     then M108's own); counted in ``heating_broken``.
    report_when_silent  the temperature auto-report goes on while silent
                     (Marlin reports from idle(), which runs while a command
                     hangs): reports, and never an answer.
    halt_at_line     on this line number, answer ``halt_lines`` instead of
                     ok and fall silent (Marlin's kill()); the line counts
                     as accepted.
    halt_lines       default HALT_LINES.
    heat_rate        when set, the hotend and bed heat (cool) towards the
                     targets of M104/M109 and M140/M190 at heat_rate degrees
                     a second from 20 °C, and M105 and the auto-report say
                     where they are; default None: M105 answers M105_OK, the
                     auto-report 200/200 and 60/60.
    reset_on_open    the board resets when the host opens the port (an
                     Arduino does, by DTR): banner after ``banner_delay``,
                     input dropped meanwhile, line number back to 0.  False:
                     none of that.  Default True.

    Attributes: ``port``, ``received``, ``received_numbered`` (list of
    (n, code); n is None for unnumbered lines), ``errors`` (error lines sent
    because the host got something wrong), ``resends_requested`` (all resend
    requests sent, errors and injected), ``injected_resends``, ``duplicated`` and
    ``dropped_oks`` (line numbers), ``halted``, ``ignored``,
    ``opens`` (times the host opened the port), ``transcript`` (list of
    (time.monotonic(), '<' host-to-printer | '>' printer-to-host | '*' event,
    line)), ``last_line``,
    ``silent`` (settable), ``host_open``.

    Methods: ``start()``/``stop()`` (or use as a context manager),
    ``send_banner()``, ``send_line(text)``, ``wait_for(predicate, timeout)``,
    ``wait_received(count, timeout)``, ``release()`` and ``hold_again()`` (of
    ``hold_at_line``).
    """

    def __init__(self, banner_delay=0.05, banner=DEFAULT_BANNER, delay=0.0, emergency_parser=True,
                 busy_interval=None, resend_every=0, resend_lines=(),
                 inject_error=False, resend_format="marlin",
                 ok_after_resend=True, flush_on_error=False, noise_every=0,
                 noise_lines=DEFAULT_NOISE, temp_interval=None,
                 silent_after=None, reset_on_open=True, command_delays=None,
                 resend_loop_lines=(), duplicate_lines=(), drop_ok_lines=(),
                 halt_at_line=None, halt_lines=HALT_LINES,
                 unanswered_error_lines=(), unanswered_error="No Line Number with checksum",
                 swallow_resent_lines=(), report_when_silent=False, wait_interval=None,
                 hold_at_line=None, heat_rate=None):
        self.banner_delay = banner_delay
        # Heaters that move towards their M104/M109/M140/M190 target at
        # heat_rate degrees a second, reported by M105 and the auto-report
        # ([current, target]); None: the fixed lines of M105_OK and 200/60.
        self.heat_rate = heat_rate
        self.heaters = {"T": [20.0, 0.0], "B": [20.0, 0.0]}
        self._heated_at = time.monotonic()
        # Line hold_at_line is worked on (busy: every 0.5 s) until release():
        # a test acts while the print is known to be at that line.
        self.hold_at_line = hold_at_line
        self.holding = threading.Event()
        self._released = threading.Event()
        self.banner = tuple(banner)
        self.delay = delay
        self.busy_interval = busy_interval
        self.resend_every = resend_every
        self.resend_lines = set(resend_lines)
        self.inject_error = inject_error
        self.resend_format = RESEND_FORMATS.get(resend_format, resend_format)
        self.ok_after_resend = ok_after_resend
        self.flush_on_error = flush_on_error
        self.noise_every = noise_every
        self.noise_lines = tuple(noise_lines)
        self.temp_interval = temp_interval
        self.emergency_parser = emergency_parser
        self.heating_broken = 0
        self.silent_after = silent_after
        self.reset_on_open = reset_on_open
        self.command_delays = {word.upper(): seconds for word, seconds in (command_delays or {}).items()}
        self.resend_loop_lines = set(resend_loop_lines)
        self.duplicate_lines = set(duplicate_lines)
        self.drop_ok_lines = set(drop_ok_lines)
        self.halt_at_line = halt_at_line
        self.halt_lines = tuple(halt_lines)
        self.unanswered_error_lines = set(unanswered_error_lines)
        self.unanswered_error = unanswered_error
        self.swallow_resent_lines = set(swallow_resent_lines)
        self.report_when_silent = report_when_silent
        self.wait_interval = wait_interval
        self._swallow_next = set()     # resend requested: the next copy is swallowed

        self.received = []
        self.received_numbered = []
        self.errors = []
        self.resends_requested = 0
        self.injected_resends = 0
        self.duplicated = []
        self.dropped_oks = []
        self.unanswered_errors = []
        self.swallowed = []
        self.halted = False
        self.ignored = []
        self.opens = 0
        self.transcript = []
        self.last_line = 0
        self.silent = False

        self._since_inject = 0
        self._accepted_count = 0
        self._host_open = False
        self._banner_due = None        # monotonic time the banner is due
        self._temp_due = None
        self._wait_due = None
        self._inbuf = b""
        self._out = bytearray()
        self._lock = threading.Lock()  # guards _out and the writes
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = None
        self._master = None
        self._wake_r = self._wake_w = None
        self.port = None

    # -- life cycle ---------------------------------------------------------

    def start(self):
        master, slave = os.openpty()
        tty.setraw(slave)              # no echo, no CR/LF translation
        self.port = os.ttyname(slave)
        # Close our slave side: the master then sees POLLHUP until a host
        # opens the port, which is how opens and closes are noticed.  The
        # pty (and its raw settings) live as long as the master is open.
        os.close(slave)
        fl = fcntl.fcntl(master, fcntl.F_GETFL)
        fcntl.fcntl(master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        self._master = master
        self._wake_r, self._wake_w = os.pipe()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="printer-sim",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop the thread and close the pty.  Safe to call twice."""
        if self._thread is None:
            return
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(5)
        for fd in (self._master, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._thread = None
        with self._cond:
            self._cond.notify_all()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- helpers for tests --------------------------------------------------

    @property
    def host_open(self):
        """True while a host has the port open (as far as the thread has seen)."""
        return self._host_open

    def send_banner(self):
        """Send the start banner now (as after a reset)."""
        self._emit(self.banner)

    def send_line(self, line):
        """Send any line to the host now (e.g. an unsolicited message)."""
        self._emit([line])

    def wait_for(self, predicate, timeout=10.0):
        """Wait until predicate(self) is true; return its last value."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                left = end - time.monotonic()
                if value or left <= 0:
                    return value
                self._cond.wait(min(left, 0.1))

    def wait_received(self, count, timeout=10.0):
        """Wait until ``count`` commands were accepted; True if they were."""
        return bool(self.wait_for(lambda s: len(s.received) >= count, timeout))

    # -- the thread ---------------------------------------------------------

    def _run(self):
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self._master, select.POLLIN)
        master_mask = select.POLLIN
        while not self._stop.is_set():
            now = time.monotonic()
            timeouts = []
            if not self._host_open:
                timeouts.append(0.005)
            if self._banner_due is not None:
                timeouts.append(max(0.0, self._banner_due - now))
            if self._temp_due is not None:
                timeouts.append(max(0.0, self._temp_due - now))
            if self._wait_due is not None:
                timeouts.append(max(0.0, self._wait_due - now))
            timeout = min(timeouts) if timeouts else None
            mask = select.POLLIN | (select.POLLOUT if self._out else 0)
            if mask != master_mask:
                poller.modify(self._master, mask)
                master_mask = mask
            events = poller.poll(None if timeout is None else timeout * 1000)
            if self._stop.is_set():
                break
            hup = False
            readable = False
            for fd, ev in events:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 512)
                    except OSError:
                        pass
                    continue
                if ev & select.POLLIN:
                    readable = True
                if ev & (select.POLLHUP | select.POLLERR):
                    hup = True
                if ev & select.POLLOUT:
                    self._flush()
            data = b""
            if readable:
                try:
                    data = os.read(self._master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:
                        hup = True
                    elif e.errno != errno.EAGAIN:
                        raise
            if hup and not data:
                if self._host_open:
                    self._on_close()
                self._stop.wait(0.005)   # POLLHUP is level-triggered
                continue
            if not self._host_open:
                self._on_open()
            now = time.monotonic()
            if self._banner_due is not None and now >= self._banner_due:
                self._banner_due = None
                self._inbuf = b""
                self.send_banner()
            if self._temp_due is not None and now >= self._temp_due:
                self._temp_due = now + self.temp_interval
                if not self.silent or self.report_when_silent:
                    self._emit([self._temperature_report()])
            self._idle_wait(now, data)
            if data:
                if self._banner_due is not None:
                    self._log("<", "(dropped while booting) %r" % data)
                else:
                    self._feed(data)
            with self._cond:
                self._cond.notify_all()

    def _on_open(self):
        self._host_open = True
        self.opens += 1
        self._inbuf = b""
        with self._lock:
            self._out.clear()
        if self.reset_on_open:
            self.last_line = 0
            self._banner_due = time.monotonic() + (self.banner_delay or 0)
        if self.temp_interval:
            self._temp_due = time.monotonic() + self.temp_interval
        if self.wait_interval:
            self._wait_due = time.monotonic() + self.wait_interval
        self._log("*", "host opened the port")

    def _idle_wait(self, now, data):
        """Marlin's NO_TIMEOUTS: ``wait`` once no input came for wait_interval seconds."""
        if self._wait_due is None:
            return
        if data:
            self._wait_due = now + self.wait_interval  # last_command_time = ms
        elif now >= self._wait_due:
            self._wait_due = now + self.wait_interval
            if not self.silent:
                self._emit(["wait"])

    def _on_close(self):
        self._host_open = False
        self._banner_due = None
        self._temp_due = None
        self._wait_due = None
        with self._lock:
            self._out.clear()
        self._log("*", "host closed the port")

    def _feed(self, data):
        self._inbuf += data
        out = []
        while True:
            cut = [i for i in (self._inbuf.find(b"\n"), self._inbuf.find(b"\r"))
                   if i >= 0]
            if not cut:
                break
            i = min(cut)
            raw, self._inbuf = self._inbuf[:i], self._inbuf[i + 1:]
            error = self._handle(raw.decode("latin-1"), out)
            if error and self.flush_on_error:
                if self._inbuf:
                    self._log("<", "(flushed after error) %r" % self._inbuf)
                self._inbuf = b""
                break
            if (self.delay or self.command_delays) and out:
                self._emit(out)
                out = []
        if out:
            self._emit(out)

    def _handle(self, raw, out):
        """Process one line; append the answer lines to out.

        Returns True when the line was an error (for flush_on_error)."""
        if self.silent or (self.silent_after is not None
                           and self._accepted_count >= self.silent_after):
            self.silent = True
            if raw.strip():
                self.ignored.append(raw)
                self._log("<", raw + "   (ignored: silent)")
            return False
        line = raw.split(";", 1)[0].strip()
        if not line:
            return False               # Marlin skips empty lines, no ok
        self._log("<", raw)
        n = None
        code = line
        has_cs = "*" in line
        if line[0] in "Nn":
            digits = line[1:]
            j = 0
            if digits[:1] in ("-", "+"):
                j = 1
            while j < len(digits) and digits[j].isdigit():
                j += 1
            try:
                n = int(digits[:j])
            except ValueError:
                n = 0
            code = digits[j:]
        if has_cs:
            star = line.index("*")
            body, cs_text = line[:star], line[star + 1:].strip()
            code = code.split("*", 1)[0]
        code = code.strip()
        is_m110 = "M110" in code.upper()

        if n is not None:
            if n != self.last_line + 1 and not is_m110:
                return self._error("Line Number is not Last Line Number+1", out)
            if not has_cs:
                return self._error("No Checksum with line number", out)
            digits = ""
            for ch in cs_text:
                if not ch.isdigit():
                    break
                digits += ch
            if not digits or int(digits) != checksum(body):
                return self._error("checksum mismatch", out)
        elif has_cs:
            return self._error("No Line Number with checksum", out)

        if n is not None and not is_m110 and self._link_fault(n, out):
            return False
        if n is not None and not is_m110:
            if (n in self.resend_lines or n in self.resend_loop_lines
                    or (self.resend_every
                        and self._since_inject >= self.resend_every)):
                self.resend_lines.discard(n)
                self._since_inject = 0
                self.injected_resends += 1
                if self.inject_error:
                    self._emit_error_line(self.inject_error if isinstance(self.inject_error, str)
                                          else "checksum mismatch", out)
                self._request_resend(out)
                return False
            self._since_inject += 1

        # accepted
        if n is not None:
            self.last_line = n
        if is_m110:
            words = code.split()
            for w in words[1:]:
                if w[:1] in "Nn":
                    try:
                        self.last_line = int(w[1:])
                    except ValueError:
                        pass
        with self._cond:
            self.received.append(code)
            self.received_numbered.append((n, code))
        self._accepted_count += 1
        word = code.split()[0].upper() if code.split() else ""
        self._set_target(word, code)
        delay = self.command_delays.get(word, self.delay)
        if delay:
            self._work(out, delay, heating=word in HEATING_COMMANDS)
        if n is not None and n == self.hold_at_line:
            self._hold(out)
        if (self.noise_every
                and self._accepted_count % self.noise_every == 0):
            out.extend(self.noise_lines)
        if n is not None and n == self.halt_at_line:
            out.extend(self.halt_lines)      # kill(): no ok, nothing more
            self.halted = self.silent = True
        elif n in self.duplicate_lines:
            self.duplicate_lines.discard(n)
            self.duplicated.append(n)
            self._emit_error_line("Line Number is not Last Line Number+1", out)
            self._request_resend(out)
        elif n in self.drop_ok_lines:
            self.drop_ok_lines.discard(n)
            self.dropped_oks.append(n)
            self._log("*", "ok of line %d lost on the wire" % n)
        elif word == "M105":
            out.append(M105_OK if self.heat_rate is None else "ok" + self._temperature_report())
        elif word == "M155":
            self._auto_report(code)
            out.append("ok")
        elif word == "M114":
            out.extend([M114_REPORT, "ok"])
        elif word == "M115":
            out.extend([M115_REPORT, "ok"])
        else:
            out.append("ok")
        return False

    def _link_fault(self, n, out):
        """Apply a stalling fault to a correct line ``n``; True if the line is not taken."""
        if n in self._swallow_next:
            self._swallow_next.discard(n)
            self.swallowed.append(n)
            self._log("*", "resent line %d swallowed: no answer" % n)
            return True
        if n in self.swallow_resent_lines:
            self.swallow_resent_lines.discard(n)
            self._swallow_next.add(n)
            self.injected_resends += 1
            self._request_resend(out)
            return True
        if n in self.unanswered_error_lines:
            self.unanswered_error_lines.discard(n)
            self.unanswered_errors.append(self._emit_error_line(self.unanswered_error, out))
            return True
        return False

    def _auto_report(self, code):
        """``M155 S<s>``: temperature reports every s seconds from now on; S0 stops them."""
        seconds = 0.0
        for word in code.split()[1:]:
            if word[:1] in "Ss":
                try:
                    seconds = float(word[1:])
                except ValueError:
                    pass
        self.temp_interval = seconds or None
        self._temp_due = time.monotonic() + seconds if seconds else None

    def _set_target(self, word, code):
        """M104/M109 S (hotend), M140/M190 S (bed): the heater's new target (with ``heat_rate``)."""
        heater = {"M104": "T", "M109": "T", "M140": "B", "M190": "B"}.get(word)
        for value in code.split()[1:] if heater and self.heat_rate is not None else ():
            if value[:1] in "Ss":
                try:
                    self.heaters[heater][1] = float(value[1:])
                except ValueError:
                    pass

    def _temperature_report(self):
        """A temperature line: fixed (200/200, 60/60), or with ``heat_rate`` the
        heaters as they are now, each moved towards its target (off: to 20 °C)."""
        if self.heat_rate is None:
            return " T:200.0 /200.0 B:60.0 /60.0 @:0 B@:0"
        now = time.monotonic()
        step = self.heat_rate * (now - self._heated_at)
        self._heated_at = now
        for state in self.heaters.values():
            goal = state[1] or 20.0
            state[0] = min(state[0] + step, goal) if state[0] < goal else max(state[0] - step, goal)
        (t, t_target), (b, b_target) = self.heaters["T"], self.heaters["B"]
        return " T:%.1f /%.1f B:%.1f /%.1f @:0 B@:0" % (t, t_target, b, b_target)

    def _work(self, out, seconds, heating=False):
        """Spend ``seconds`` on a command, with busy keepalives (temperatures while heating)."""
        if out:
            self._emit(out)
            del out[:]
        if heating and self.busy_interval:
            self._emit([HEATING_REPORT])   # wait_for_hotend() reports before it first waits
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            step = left
            if self.busy_interval and self.busy_interval < step:
                step = self.busy_interval
            if self.temp_interval and self.temp_interval < step:
                step = self.temp_interval
            if self._wait_or_break(step, heating):
                break
            if self.busy_interval and end - time.monotonic() > 0:
                self._emit([HEATING_REPORT if heating else "echo:busy: processing"])
            if self._temp_due is not None and time.monotonic() >= self._temp_due:
                self._temp_due = time.monotonic() + self.temp_interval
                self._emit([self._temperature_report()])

    def _wait_or_break(self, seconds, heating):
        """Wait while working; True when the wait must end: the sim stops,
        or (emergency parser) an M108 came during a heating wait.  What is
        read meanwhile stays in the input, handled after this command."""
        if not (heating and self.emergency_parser):
            return self._stop.wait(seconds)
        if self._stop.is_set():
            return True
        ready, _, _ = select.select([self._master], [], [], seconds)
        if ready:
            try:
                data = os.read(self._master, 65536)
            except OSError:
                data = b""
            self._inbuf += data
            if b"M108" in self._inbuf:
                self.heating_broken += 1
                self._log("*", "M108: the heating wait is broken off")
                return True
        return self._stop.is_set()

    def release(self):
        """End the hold of ``hold_at_line``: its ok goes out."""
        self._released.set()

    def hold_again(self):
        """Hold ``hold_at_line`` again when it next comes (the next print on this printer)."""
        self.holding.clear()
        self._released.clear()

    def _hold(self, out):
        self._emit(out)
        del out[:]
        self.holding.set()
        while not self._released.wait(0.5) and not self._stop.is_set():
            self._emit(["echo:busy: processing"])
            if self.temp_interval:  # M155's auto-report goes on while the printer works
                self._emit([self._temperature_report()])

    def _emit_error_line(self, message, out):
        line = "Error:%s, Last Line: %d" % (message, self.last_line)
        out.append(line)
        return line

    def _error(self, message, out):
        self.errors.append(self._emit_error_line(message, out))
        self._request_resend(out)
        return True

    def _request_resend(self, out):
        self.resends_requested += 1
        out.append(self.resend_format.format(n=self.last_line + 1))
        if self.ok_after_resend:
            out.append("ok")

    # -- output -------------------------------------------------------------

    def _emit(self, lines):
        if not lines:
            return
        for line in lines:
            self._log(">", line)
        if not self._host_open:
            return                     # nobody listening: it would be lost
        with self._lock:
            self._out += "".join(l + "\n" for l in lines).encode("latin-1")
        self._flush()

    def _flush(self):
        with self._lock:
            while self._out:
                try:
                    n = os.write(self._master, self._out)
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                        break          # the thread polls for POLLOUT
                    if e.errno == errno.EIO:
                        self._out.clear()
                        break
                    raise
                del self._out[:n]
        if self._out and threading.current_thread() is not self._thread:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _log(self, direction, line):
        self.transcript.append((time.monotonic(), direction, line))
