"""The server's logging: stderr, an optional file, and syslog.

Theory of operation
-------------------
Every record is one line, formatted once, and written to stderr and the
log file at the end of the loop pass that logged it:

* Records go into one pass buffer as they happen; ``flush()``, which the
  server calls once per loop pass, encodes the buffer once and writes the
  bytes to stderr and to the log file with one ``os.write`` each (no text
  layer, no second encoding: a busy pass logs a megabyte). A pass is
  short, so a line is at most that pass late; MAX_PENDING bounds what one
  pass may hold. Syslog gets each
  record as it happens, one datagram each (see ``_Syslog``).
* A chat message is the hot path: the chat logs every one. A record through
  the ``logging`` module (a LogRecord, handler locks, a formatter per
  handler) cost more than the chat work of the message itself, so messages
  skip it: ``MessageLog.message`` formats the line straight into the pass
  buffer, and reads the clock once a pass and every RESTAMP_EVERY lines,
  not for every line. Everything rare (connections, errors, start and stop) goes
  through ``logging`` into the same buffer, so the lines stay in order.
* No one can forge a line: every record's text is passed through
  ``escape``, which shows line breaks, terminal controls and invisible
  characters as backslash escapes, so one record is always one line, in
  stderr, the file and syslog alike, and nothing reaches an operator's
  terminal raw.
* A syslog datagram costs a system call, more than a message's whole
  logging budget, so chat messages go to syslog only when asked for
  (``syslog_messages``); every other record goes there by default.

Rules that keep it honest:

1. Nothing reaches stderr or the file outside ``flush`` except when
   MAX_PENDING is reached; what a pass logged leaves in the order it was
   logged.
2. Every text that reaches an output has been through ``escape`` (the
   formatters and ``MessageLog.message`` are the only ways in).
3. A failing output says so once on the real stderr and never takes the
   server down.
"""

import collections
import errno
import logging
import os
import select
import socket
import stat
import sys
import time

__all__ = [
    "configure",
    "flush",
    "reopen",
    "close",
    "escape",
    "MessageLog",
    "ErrorLimiter",
    "internal_error",
    "parse_syslog_address",
]

#: Characters one pass may buffer before writing anyway: bounds memory when
#: one pass logs a great deal (a /quit storm, or large hostile messages,
#: which escaping can make up to ten times longer: \U000e0041 for one
#: invisible character).
MAX_PENDING = 1 << 20
#: Message lines that share one reading of the clock, at most (see MessageLog).
RESTAMP_EVERY = 64

#: Seconds a syslog daemon that has fallen behind may go without reading
#: while the server waits for it, before it is taken for stuck and no
#: longer waited for (until it reads again).
SYSLOG_WAIT = 0.1

#: Bytes of syslog records held for later while the daemon is stuck: some
#: seconds of a busy server's records. Beyond it the oldest are dropped.
SYSLOG_BACKLOG = 4 << 20

#: Bytes of log lines held for a stderr pipe that is not being read (the
#: journal fallen behind, a stopped pager): beyond it the oldest lines are
#: dropped, and counted, rather than the server stopping to wait.
STDERR_BACKLOG = 4 << 20

#: Syslog priorities for the daemon facility: 3 * 8 + severity.
_SYSLOG_PRIORITY = {"DEBUG": 31, "INFO": 30, "WARNING": 28, "ERROR": 27, "CRITICAL": 26}

log = logging.getLogger("tcpchat.server")


def escape(text):
    """``text`` with whatever could break or fake a log line made visible.

    Every character ``str.isprintable`` refuses (C0 controls such as
    newline, CR and ESC, DEL, C1 controls, the bidi and invisible format
    characters such as U+202E, separators other than the space) and the
    backslash itself become the escapes Python writes in a string literal:
    ``\\n``, ``\\r``, ``\\t``, ``\\x1b``, ``\\u202e``, ``\\\\``. The
    result is one line of visible characters, and escapes in the text
    cannot pass for ours because its own backslashes are doubled.
    """
    if text.isprintable() and "\\" not in text:
        return text  # nearly all text: two scans in C
    # repr escapes exactly what isprintable refuses, in C, whatever the
    # length. It also escapes the quote it picks when the text holds both
    # kinds; a quote is printable, so that escape is undone. Every quote in
    # repr's output is preceded by its own backslash, so the replacement
    # cannot match the second half of an escaped backslash.
    return repr(text)[1:-1].replace("\\'", "'")


# ------------------------------------------------------------ formatting


class _Stamp:
    """``2026-11-21 10:35:51,544``, the date and time formatted once a second."""

    def __init__(self):
        self._second = None
        self._text = ""

    def __call__(self, second, msecs):
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return "%s,%03d" % (self._text, msecs)


class EscapingFormatter(logging.Formatter):
    """``LEVEL text`` as one line: the text escaped, a traceback included."""

    def __init__(self):
        super().__init__("%(levelname)s %(message)s")

    def format(self, record):
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            # An exception's message may quote the input that caused it;
            # escaped like the rest, the traceback stays on its record's line.
            text = text + "\n" + record.exc_text
        if record.stack_info:
            text = text + "\n" + self.formatStack(record.stack_info)
        return self.head(record) + escape(text)

    def head(self, record):
        return record.levelname + " "


class StampFormatter(EscapingFormatter):
    """``2026-11-21 10:35:51,544 INFO text``, as logging's default asctime."""

    def __init__(self):
        super().__init__()
        self._stamp = _Stamp()

    def head(self, record):
        created = record.created
        second = int(created)
        return "%s %s " % (self._stamp(second, (created - second) * 1000), record.levelname)


# ---------------------------------------------------------------- outputs


class _Pass:
    """What this loop pass logged, for every output at once."""

    __slots__ = ("lines", "size", "head", "unstamped")

    def __init__(self):
        self.lines = []  # lines for stderr and the file, without newlines
        self.size = 0  # characters in them
        # The time stamp and level that begin a message line, and how many
        # more lines may use it before the clock is read again (see
        # MessageLog): 0 at the start of every pass.
        self.head = ""
        self.unstamped = 0


_pass = _Pass()
_outputs = []  # stderr and the log file: written with the pass's lines
_syslog = None  # the syslog socket, if any


class _Stream:
    """Stderr on a terminal or a file, written once a pass, or a stream with
    no descriptor (a test's StringIO)."""

    def __init__(self, stream, name):
        self.stream = stream
        self.name = name
        self._failed = False
        try:
            self.fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None

    def write(self, data):
        """Write ``data``, the pass's lines encoded (bytes)."""
        try:
            if self.fd is None:
                self.stream.write(data.decode("utf-8"))
                self.stream.flush()
                return
            self.stream.flush()  # anything written to sys.stderr directly goes first
            _write_all(self.fd, data)
        except Exception as e:
            self._failure(e)

    def _failure(self, e, doing="writing the log to"):
        if not self._failed:  # say it once, not once a pass
            self._failed = True
            _complain("%s %s failed: %s" % (doing, self.name, e))

    def retry(self):
        """A pass that logged nothing: write what waits, if anything does."""

    def reopen(self):
        pass

    def close(self):
        pass


def _write_all(fd, data):
    """os.write until all of ``data`` is written: a terminal or a file,
    where a write may be cut short but never has to wait for a reader."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _PipeStream(_Stream):
    """Stderr when it is a pipe or a socket (the journal under systemd).

    A blocking write to a pipe nobody reads would stop the whole chat, for
    everyone, because one client flooded the log. So the pipe is made
    non-blocking: what it does not take waits in a backlog, tried again
    every pass (``flush``, even one that logged nothing), and past STDERR_BACKLOG bytes the oldest lines are dropped
    and counted; once the pipe takes everything again, one line says how
    many were lost. At the end the backlog gets a bounded wait.
    """

    def __init__(self, stream, name):
        super().__init__(stream, name)
        os.set_blocking(self.fd, False)
        self.backlog = bytearray()
        self.dropped = 0  # lines dropped since the last report

    def write(self, data):
        try:
            self.stream.flush()  # anything written to sys.stderr directly goes first
        except Exception:
            pass
        if not self.backlog and data:
            # The usual case: the pipe takes it all, with no copy on our side.
            try:
                data = data[os.write(self.fd, data):]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                self._failure(e)
                return
        self.backlog += data
        self._send()
        over = len(self.backlog) - STDERR_BACKLOG
        if over > 0:
            cut = self.backlog.find(b"\n", over) + 1 or len(self.backlog)
            self.dropped += self.backlog.count(b"\n", 0, cut)
            del self.backlog[:cut]
        if self.dropped and not self.backlog:
            self.backlog += ("%s WARNING %d log lines were dropped: stderr was not "
                             "read fast enough\n" % (time.strftime("%Y-%m-%d %H:%M:%S"),
                                                      self.dropped)).encode()
            self.dropped = 0
            self._send()

    def retry(self):
        # Without this, lines the pipe did not take would wait for the next
        # line logged, however long the server stays quiet: the loop wakes
        # at least every TICK, so they go as soon as the reader reads.
        if self.backlog or self.dropped:
            self.write(b"")

    def _send(self):
        while self.backlog:
            try:
                n = os.write(self.fd, self.backlog)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.backlog.clear()
                self._failure(e)
                return
            del self.backlog[:n]

    def close(self):
        deadline = time.monotonic() + 2.0
        while self.backlog and time.monotonic() < deadline:
            select.select([], [self.fd], [], max(0.0, deadline - time.monotonic()))
            self._send()
        try:
            os.set_blocking(self.fd, True)  # the pipe may be shared: leave it as found
        except OSError:
            pass


def _stderr_output(stream):
    """A pipe or socket gets the non-blocking writer; a terminal or a file
    (which never make a write wait for a reader) the plain one."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return _Stream(stream, "stderr")  # not a real file: a test's StringIO
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return _PipeStream(stream, "stderr")
    return _Stream(stream, "stderr")


class _LogFile(_Stream):
    """``--log-file``, appended to; reopened when logrotate moves it, or on ``reopen``."""

    def __init__(self, path):
        super().__init__(None, path)  # no stream: the descriptor is ours
        self.path = path
        self._identity = None
        self._open()

    def _open(self):
        # O_APPEND: every write lands at the end, even with another writer.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        st = os.fstat(fd)
        old, self.fd = self.fd, fd
        self._identity = (st.st_dev, st.st_ino)
        if old is not None:
            os.close(old)

    def write(self, data):
        # Once a pass, not a stat() per record: has the file been moved?
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._identity
        except OSError:
            moved = True
        if moved:
            self.reopen()
        try:
            _write_all(self.fd, data)
        except OSError as e:
            self._failure(e)

    def reopen(self):
        try:
            self._open()
        except OSError as e:
            self._failure(e, "reopening")  # keep writing to the file we have
        else:
            self._failed = False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Syslog:
    """Datagrams to a syslog socket (a Unix path, or UDP HOST:PORT).

    A record is sent as it is logged, as syslog(3) does: a datagram is a
    system call whether or not it waits for the end of the pass. Linux
    queues only net.unix.max_dgram_qlen datagrams (often 10) for a daemon
    before a sender blocks, and a stuck daemon must not stall the chat. So
    the socket never blocks; while the daemon keeps reading the server
    waits for it, as a blocking sender would (nothing is lost, and the
    daemon gets the CPU it needs), but one that reads nothing for
    SYSLOG_WAIT is taken for stuck and not waited for again until it reads:
    its records wait in a backlog, tried again every pass, and past
    SYSLOG_BACKLOG bytes the oldest are dropped and stderr says how many.
    """

    def __init__(self, address):
        self.head = "tcpchat-server[%d]: " % os.getpid()
        self.backlog = collections.deque()
        self._backlog_bytes = 0
        self._failed = False
        self._stuck = False  # read nothing for SYSLOG_WAIT: not waited for
        self._dropped = 0
        self._next_report = 0.0  # monotonic seconds
        if isinstance(address, str):
            # Python 3.11+'s SysLogHandler connects lazily and would only
            # fail at the first record; the administrator should hear of it
            # at once.
            if not os.path.exists(address):
                raise OSError(errno.ENOENT, "no such socket")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        else:
            host, port = address
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, 0, socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(family, kind, proto)
        self._address = address
        try:
            self.sock.connect(address)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLOUT)

    def send(self, data):
        """Send one record, after any that wait in the backlog."""
        if self.backlog:
            self._hold(data)
            self.retry()
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            self._hold(data)
            self.retry()
        except OSError as e:
            self._resend(data, e)

    def retry(self):
        """Send what waits in the backlog, as far as the daemon takes it."""
        backlog = self.backlog
        sock = self.sock
        while backlog:
            data = backlog[0]
            try:
                sock.send(data)
            except BlockingIOError:
                if self._stuck or not self._poll.poll(SYSLOG_WAIT * 1000):
                    self._stuck = True
                    return  # the rest waits for a later pass
                continue  # it read some: there is room again
            except OSError as e:
                self._resend(data, e)
            self._stuck = False
            backlog.popleft()
            self._backlog_bytes -= len(data)

    def _hold(self, data):
        backlog = self.backlog
        backlog.append(data)
        self._backlog_bytes += len(data)
        dropped = 0
        while self._backlog_bytes > SYSLOG_BACKLOG:
            self._backlog_bytes -= len(backlog.popleft())
            dropped += 1
        if dropped:
            self._dropped += dropped
            now = time.monotonic()
            if now >= self._next_report:  # at most once a minute, not once a record
                self._next_report = now + 60
                _complain("syslog is not keeping up: %d records dropped so far"
                          % self._dropped)

    def _resend(self, data, e):
        # The daemon restarted and made a new socket: connect anew once.
        try:
            self.sock.connect(self._address)
            self.sock.send(data)
        except OSError:
            if not self._failed:
                self._failed = True
                _complain("syslog write failed (%s); later failures not shown"
                          % (e.strerror or e))

    def close(self, timeout=1.0):
        """Send what is left, waiting at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        try:
            while self.backlog:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                self.sock.send(self.backlog.popleft())
        except OSError:
            pass
        self.sock.close()


def _complain(text):
    try:
        sys.__stderr__.write("tcpchat-server: %s\n" % text)
        sys.__stderr__.flush()
    except Exception:
        pass


class _PassHandler(logging.Handler):
    """Formats each record once into the pass buffer, for stderr and the file."""

    def __init__(self):
        super().__init__()
        self.setFormatter(StampFormatter())

    def emit(self, record):
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        _pass.lines.append(line)
        _pass.size += len(line)
        if _pass.size > MAX_PENDING:
            flush()

    def flush(self):
        flush()  # logging.shutdown calls this at exit: nothing is lost


class _SyslogHandler(_PassHandler):
    """Each record as one syslog datagram."""

    def __init__(self, syslog):
        logging.Handler.__init__(self)
        self.setFormatter(EscapingFormatter())
        self._syslog = syslog

    def emit(self, record):
        try:
            data = ("<%d>%s%s" % (_SYSLOG_PRIORITY.get(record.levelname, 30),
                                  self._syslog.head, self.format(record))).encode()
        except Exception:
            self.handleError(record)
            return
        self._syslog.send(data)

    def close(self):
        # At exit (logging.shutdown) too: the last records get a bounded wait.
        _close_syslog()
        super().close()


def _close_syslog():
    global _syslog
    if _syslog is not None:
        flush()
        _syslog.close()
        _syslog = None


class MessageLog:
    """One INFO line per chat message, without the ``logging`` machinery.

    ``PEER message ID SENDER -> TO: TEXT``, where PEER is the sender's
    connection and TO a nick, or ``*`` for everyone. The line has the same
    time stamp and level as every other record, and is escaped the same way.
    """

    __slots__ = ("_text", "_pass", "_syslog", "_syslog_head", "_stamp", "_clock")

    def __init__(self, text=True, syslog=False, clock=time.time):
        self._text = text  # False: no message text in the log (--no-log-text)
        self._pass = _pass
        # Syslog's own copy of each line costs a system call per message.
        self._syslog = _syslog if syslog else None
        if self._syslog is not None:
            self._syslog_head = "<30>%sINFO " % _syslog.head
        self._stamp = _Stamp()
        self._clock = clock

    def message(self, msg_id, peer, sender, to, text):
        """Log chat message ``msg_id`` from ``sender`` on ``peer`` to ``to``."""
        # The clock is read for the first line of a pass and then once every
        # RESTAMP_EVERY lines, not for each: reading and comparing it was a
        # third of this method's cost. A line's time is the time of the
        # first line stamped with it, early by the work done since within
        # the same pass: usually a fraction of a millisecond.
        p = self._pass
        p.unstamped -= 1
        if p.unstamped < 0:
            self._restamp()
        # Only the text needs a look: the rest is the chat's own (an id, a
        # peer address from the kernel, nicks valid_nick allows only of
        # A-Z a-z 0-9 _ - .), and scanning the text alone halves the cost
        # of the check on the hot path.
        if self._text:
            if not text.isprintable() or "\\" in text:
                text = escape(text)
            line = f"{p.head}{peer} message {msg_id} {sender} -> {to}: {text}"
        else:
            line = f"{p.head}{peer} message {msg_id} {sender} -> {to}"
        p.lines.append(line)
        p.size += len(line)
        if p.size > MAX_PENDING:
            flush()
        if self._syslog is not None:
            body = line[len(p.head):]
            self._syslog.send((self._syslog_head + body).encode())

    def _restamp(self):
        t = self._clock()
        second = int(t)
        p = self._pass
        p.head = self._stamp(second, int((t - second) * 1000)) + " INFO "
        p.unstamped = RESTAMP_EVERY - 1


# ------------------------------------------------------------ the server's


class ErrorLimiter:
    """Log an internal error's traceback at most ``burst`` times per ``interval``.

    A bug that a client can trigger at will must not let it fill the disk
    with tracebacks: past the burst, errors are only counted, and once the
    interval is over one line says how many were not logged.
    """

    def __init__(self, burst=10, interval=60.0, clock=time.monotonic):
        self.burst = burst
        self.interval = interval  # seconds
        self.clock = clock
        self.suppressed = 0  # errors not logged in the current interval
        self._logged = 0
        self._ends = None  # when the current interval ends
        self._logger = None

    def __call__(self, logger, msg, *args):
        """Log ``msg % args`` at ERROR with the current exception's traceback.

        Call it from an ``except`` block. Returns whether it was logged.
        """
        now = self.clock()
        if self._ends is None or now >= self._ends:
            self.summarize(now)
            self._ends = now + self.interval
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            logger.error(msg, *args, exc_info=True)
            return True
        self.suppressed += 1
        self._logger = logger
        return False

    def summarize(self, now=None):
        """Once the interval is over, say how many errors went unlogged."""
        if not self.suppressed:
            return
        if now is None:
            now = self.clock()
        if now < self._ends:
            return
        self._logger.error(
            "%d more internal errors not logged (at most %d tracebacks per %g s)",
            self.suppressed, self.burst, self.interval)
        self.suppressed = 0


#: The server's internal-error log: ``logs.internal_error(log, "... %s", x)``.
internal_error = ErrorLimiter()


def parse_syslog_address(text):
    """``/dev/log`` stays a path; ``HOST:PORT`` or ``[V6]:PORT`` is UDP."""
    if text.startswith("/") or ":" not in text:
        return text
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def flush():
    """Write what this loop pass logged. The server calls it every pass."""
    if internal_error.suppressed:
        internal_error.summarize()
    p = _pass
    lines = p.lines
    if lines:
        lines.append("")  # the last newline, without copying the text again
        # Encoded once for every output; escaping left nothing unencodable
        # but what a handler let through, and that becomes an escape too.
        data = "\n".join(lines).encode("utf-8", "backslashreplace")
        lines.clear()  # in place: a MessageLog may hold this list
        for out in _outputs:
            out.write(data)
    else:
        for out in _outputs:
            out.retry()
    p.size = 0
    p.unstamped = 0  # a new pass: the next message line reads the clock
    if _syslog is not None and _syslog.backlog:
        _syslog.retry()  # a daemon that was stuck may read again


def close():
    """Write what is left and close the outputs (at the end of the server):
    a stderr pipe that is behind gets a bounded wait."""
    flush()
    for out in _outputs:
        out.close()


def reopen():
    """Reopen ``--log-file``: after logrotate has moved it, say (SIGHUP).

    What was logged before goes to the old file. A file that cannot be
    opened is reported on stderr and the old one kept.
    """
    flush()
    for out in _outputs:
        out.reopen()


def configure(level="info", log_file=None, syslog_address="/dev/log", log_text=True,
              syslog_messages=False, stderr=None):
    """Log to stderr, to ``log_file`` if given, to syslog unless it is None.

    ``level`` is for the chat's connection and message events; the server's
    start, stop and limits are always logged. Returns the ``MessageLog`` for
    the chat's messages (``log_text`` False leaves their text out;
    ``syslog_messages`` sends them to syslog too), or None when ``level``
    hides them. ``stderr`` is a stream to use instead of ``sys.stderr``.
    """
    global _syslog
    # What LogRecord would otherwise find out for every record, for fields
    # our formats never print (see the logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):  # Python 3.12+
        logging.logAsyncioTasks = False

    root = logging.getLogger("tcpchat")
    root.setLevel(logging.DEBUG)
    root.propagate = False
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    flush()
    for out in _outputs:
        out.close()
    del _outputs[:]
    _close_syslog()
    logging.getLogger("tcpchat.server").setLevel(logging.INFO)
    chat_level = getattr(logging, level.upper())
    logging.getLogger("tcpchat.chat").setLevel(chat_level)

    _outputs.append(_stderr_output(sys.stderr if stderr is None else stderr))
    if log_file:
        _outputs.append(_LogFile(log_file))
    root.addHandler(_PassHandler())
    if syslog_address is not None:
        try:
            _syslog = _Syslog(parse_syslog_address(syslog_address))
        except (OSError, ValueError) as e:
            log.warning("syslog at %s unavailable (%s); going on without it", syslog_address,
                        e.strerror if isinstance(e, OSError) and e.strerror else e)
        else:
            root.addHandler(_SyslogHandler(_syslog))
    if chat_level > logging.INFO:
        return None
    return MessageLog(log_text, syslog_messages)
