"""The server's logging: stderr, an optional file, and syslog.

The chat logs every message at INFO, so a log record sits on the hot path:
with the logging module's defaults one record cost more than the chat work
of the message itself (a stack walk to find the caller, a strftime, and a
write and flush per record). So, without changing what is logged:

* the record skips what we never print (caller, thread, process names);
* the time stamp's date and time are formatted once a second;
* stderr and the log file are written once per loop pass (``flush``), not
  once per record. At most MAX_PENDING records wait; a pass is short, so a
  line is at most that pass late. Syslog keeps one datagram per record, as
  syslog expects.
"""

import errno
import logging
import logging.handlers
import os
import sys
import time

__all__ = ["configure", "flush", "reopen", "parse_syslog_address"]

#: Records a buffered handler holds before writing anyway: bounds memory
#: when one pass logs a great deal (a /quit storm, say).
MAX_PENDING = 1000

log = logging.getLogger("tcpchat.server")

_buffered = []  # the handlers ``flush`` writes out


class StampFormatter(logging.Formatter):
    """``2026-11-21 10:35:51,544 INFO text``, the date formatted once a second."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self._second = None
        self._stamp = ""

    def formatTime(self, record, datefmt=None):
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return "%s,%03d" % (self._stamp, record.msecs)


class _PassBuffered:
    """Mixin for a stream handler: hold formatted records until ``flush``."""

    def _start_buffer(self):
        self._pending = []
        self._failed = False
        _buffered.append(self)

    def emit(self, record):
        try:
            self._pending.append(self.format(record) + "\n")
        except Exception:
            self.handleError(record)
            return
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def _stream_for_write(self):
        return self.stream

    def flush(self):
        if not self._pending:
            return
        self.acquire()
        try:
            text = "".join(self._pending)
            self._pending.clear()
            stream = self._stream_for_write()
            if stream is not None:
                stream.write(text)
                stream.flush()
        except Exception as e:
            if not self._failed:  # say it once, not once a pass
                self._failed = True
                sys.__stderr__.write("tcpchat-server: writing the log failed: %s\n" % e)
        finally:
            self.release()

    def close(self):
        self.flush()
        if self in _buffered:
            _buffered.remove(self)
        super().close()


class BufferedStreamHandler(_PassBuffered, logging.StreamHandler):
    def __init__(self, stream):
        logging.StreamHandler.__init__(self, stream)
        self._start_buffer()


class BufferedFileHandler(_PassBuffered, logging.handlers.WatchedFileHandler):
    """A log file that follows logrotate: reopened when it has been moved."""

    def __init__(self, path):
        logging.handlers.WatchedFileHandler.__init__(self, path, encoding="utf-8")
        self._start_buffer()

    def _stream_for_write(self):
        self.reopenIfNeeded()  # once a pass, not a stat() per record
        return self.stream

    def reopen(self):
        self.flush()
        self.acquire()
        try:
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class QuietSysLogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler that warns once, not a traceback a record, on failure."""

    warned = False

    def handleError(self, record):
        if not self.warned:
            self.warned = True
            sys.__stderr__.write("tcpchat-server: syslog write failed; later failures not shown\n")


def parse_syslog_address(text):
    """``/dev/log`` stays a path; ``HOST:PORT`` or ``[V6]:PORT`` is UDP."""
    if text.startswith("/") or ":" not in text:
        return text
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def reopen():
    """Reopen the log file (after logrotate moved it, or on SIGHUP)."""
    for handler in _buffered:
        reopen_file = getattr(handler, "reopen", None)
        if reopen_file is not None:
            reopen_file()


def flush():
    """Write what this loop pass logged. The server calls it every pass."""
    for handler in _buffered:
        handler.flush()


def configure(level="info", log_file=None, syslog_address="/dev/log"):
    """Log to stderr, to ``log_file`` if given, to syslog unless it is None.

    ``level`` is for the chat's connection and message events; the server's
    start, stop and limits are always logged.
    """
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
    logging.getLogger("tcpchat.server").setLevel(logging.INFO)
    logging.getLogger("tcpchat.chat").setLevel(getattr(logging, level.upper()))

    stamp = StampFormatter()
    stderr = BufferedStreamHandler(sys.stderr)
    stderr.setFormatter(stamp)
    root.addHandler(stderr)
    if log_file:
        f = BufferedFileHandler(log_file)
        f.setFormatter(stamp)
        root.addHandler(f)
    if syslog_address is not None:
        try:
            address = parse_syslog_address(syslog_address)
            if isinstance(address, str) and not os.path.exists(address):
                # Python 3.11+ connects lazily and would only fail at the
                # first record; the administrator should hear of it at once.
                raise OSError(errno.ENOENT, "no such socket")
            h = QuietSysLogHandler(address=address,
                                   facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except (OSError, ValueError) as e:
            log.warning("syslog at %s unavailable (%s); going on without it", syslog_address, e)
        else:
            h.ident = "tcpchat-server[%d]: " % os.getpid()
            h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            root.addHandler(h)
