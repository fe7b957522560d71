"""The server's logging: cheap, one line a record, and unforgeable."""

import ast
import io
import logging
import os
import random
import socket
import sys
import tempfile
import threading
import time

import pytest

from tcpchat import logs
from tcpchat.chat import Chat, Limits
from tcpchat.server import make_parser

from serverproc import TIMEOUT, ServerProcess

#: Texts a client can send to forge or hide log lines, or to reach the
#: operator's terminal.
HOSTILE = [
    "hi\n2026-01-01 00:00:00,000 INFO forged",
    "hi\r2026-01-01 00:00:00,000 INFO forged",
    "\x1b]0;owned\x07title",  # OSC: retitles a terminal
    "\x1b[2J\x1b[H",  # clears it
    "abc\u202edcba",  # right-to-left override
    "zero\u200bwidth\u2028line\u2029para",
    "c1\x85next\x9bcsi",
    "del\x7f tab\t nul\x00 vt\x0b ff\x0c",
    "a real \\n is not a newline",
    "quotes ' and \" together",
    "a lone surrogate \ud800",
    "astral \U000e0041 tag and \U0001f600 smile",
]


def one_line(text):
    return len(text.splitlines()) == 1 and text.isprintable()


def unescape(text):
    """What ``escape`` made of the text, read back as a string literal."""
    return ast.literal_eval("'%s'" % text.replace("'", "\\'"))


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stderr():
    """A stream for configure() to use as stderr; logging reset afterwards."""
    stream = CountingStream()
    yield stream
    # Drop the test's file and syslog socket.
    logs.configure("info", None, None, stderr=io.StringIO())


def configure(stderr, level="info", log_file=None, syslog_address=None, **options):
    return logs.configure(level, log_file, syslog_address, stderr=stderr, **options)


def record(msg, args=(), created=1700000000.25, level=logging.INFO, exc_info=None):
    r = logging.LogRecord("tcpchat.chat", level, __file__, 1, msg, args, exc_info)
    r.created = created
    r.msecs = (created - int(created)) * 1000
    return r


# -- escaping -----------------------------------------------------------------


def test_clean_text_is_left_alone():
    for text in ("hello", "", "café 漢字 😀", "tabs? no: a b"):
        assert logs.escape(text) is text


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_becomes_one_visible_line_that_reads_back(text):
    escaped = logs.escape(text)
    assert one_line(escaped)
    assert unescape(escaped) == text


def test_escapes_are_the_familiar_ones():
    assert logs.escape("a\nb") == "a\\nb"
    assert logs.escape("a\rb") == "a\\rb"
    assert logs.escape("\x1b]0;x\x07") == "\\x1b]0;x\\x07"
    assert logs.escape("\u202e") == "\\u202e"
    assert logs.escape("\\n") == "\\\\n"  # an escape in the text cannot pass for ours
    assert logs.escape("it's \"so\"\n") == "it's \"so\"\\n"


def test_random_text_always_escapes_to_one_line():
    rng = random.Random(12)
    alphabet = [chr(c) for c in range(0x250)] + ["\u2028", "\u202e", "\ufeff", "\U0001f600"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        escaped = logs.escape(text)
        assert one_line(escaped) or escaped == ""
        assert unescape(escaped) == text


# -- formatting ---------------------------------------------------------------


def test_stamp_is_what_the_standard_formatter_writes():
    ours = logs.StampFormatter()
    standard = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for created in (1700000000.25, 1700000000.999, 1700000001.0, 1700000060.5):
        assert ours.format(record("x", created=created)) == standard.format(
            record("x", created=created))


@pytest.mark.parametrize("text", HOSTILE)
def test_a_record_is_one_line_whatever_its_arguments(text):
    for formatter in (logs.StampFormatter(), logs.EscapingFormatter()):
        line = formatter.format(record("%s (%s) left: %s", ("bob", "127.0.0.1:1", text)))
        assert one_line(line)
        assert line.endswith("left: " + logs.escape(text))


def test_a_traceback_stays_on_its_records_line():
    try:
        int("\n2026-01-01 00:00:00,000 INFO forged")
    except ValueError:
        exc_info = sys.exc_info()
    line = logs.StampFormatter().format(
        record("internal error serving %s", ("bob",), level=logging.ERROR, exc_info=exc_info))
    assert one_line(line)
    assert "internal error serving bob\\nTraceback (most recent call last):\\n" in line
    assert "\\\\n2026-01-01" in line  # the repr in the message, escaped again


# -- the pass buffer ----------------------------------------------------------


def test_records_wait_for_the_end_of_the_pass_in_order(stderr):
    ml = configure(stderr)
    log = logging.getLogger("tcpchat.chat")
    log.info("alice connected")
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "hi")
    log.info("bob connected")
    ml.message(2, "127.0.0.1:1000", "alice", "bob", "again")
    assert stderr.getvalue() == ""
    logs.flush()
    lines = stderr.getvalue().splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "alice connected",
        "127.0.0.1:1000 message 1 alice -> bob: hi",
        "bob connected",
        "127.0.0.1:1000 message 2 alice -> bob: again",
    ]
    assert stderr.writes == 1
    logs.flush()  # nothing new: nothing written
    assert stderr.writes == 1


def test_a_message_line_is_stamped_like_any_record(stderr):
    ml = configure(stderr)
    for created in (1700000000.25, 1700000000.9995, 1700000001.0, 1699999000.5):
        ml._clock = lambda: created  # a clock set back is followed too
        ml.message(7, "[::1]:5000", "alice", "*", "to all")
        logs.flush()
        expected = logs.StampFormatter().format(
            record("[::1]:5000 message 7 alice -> *: to all", created=created))
        assert stderr.getvalue().splitlines()[-1] == expected


def test_message_lines_read_the_clock_once_a_pass_or_every_restamp_every(stderr):
    ml = configure(stderr)
    readings = []

    def clock():
        readings.append(1700000000.0 + len(readings))  # a second later each time
        return readings[-1]

    ml._clock = clock
    count = logs.RESTAMP_EVERY + 2
    for i in range(count):
        ml.message(i, "127.0.0.1:1000", "alice", "bob", "hi")
    logs.flush()
    ml.message(99, "127.0.0.1:1000", "alice", "bob", "next pass")
    logs.flush()
    seconds = [line.split(",")[0][-2:] for line in stderr.getvalue().splitlines()]
    # The first RESTAMP_EVERY lines share the first reading, the rest of
    # the pass the second; the next pass reads the clock again at once.
    assert len(readings) == 3
    assert seconds == [seconds[0]] * logs.RESTAMP_EVERY + [seconds[-2]] * 2 + [seconds[-1]]
    assert len(set(seconds)) == 3


def test_no_log_text_leaves_the_text_out(stderr):
    ml = configure(stderr, log_text=False)
    ml.message(3, "127.0.0.1:1000", "alice", "bob", "top secret")
    logs.flush()
    assert stderr.getvalue().endswith(" INFO 127.0.0.1:1000 message 3 alice -> bob\n")


def test_no_message_log_above_info(stderr):
    assert configure(stderr, "warning") is None
    assert configure(stderr, "error") is None
    assert configure(stderr, "debug") is not None


@pytest.mark.parametrize("text", HOSTILE)
def test_a_message_is_one_line_whatever_it_holds(stderr, text):
    ml = configure(stderr)
    ml.message(4, "127.0.0.1:1000", "alice", "bob", text)
    logs.flush()
    line = stderr.getvalue()
    assert line.endswith("\n") and one_line(line[:-1])
    assert line[:-1].endswith(": " + logs.escape(text))


def test_a_long_pass_is_bounded(stderr, monkeypatch):
    monkeypatch.setattr(logs, "MAX_PENDING", 1000)
    ml = configure(stderr)
    for i in range(20):
        ml.message(i, "127.0.0.1:1000", "alice", "bob", "x" * 100)
    # Written in the middle of the pass, whole lines at a time.
    assert 10 <= stderr.getvalue().count("\n") < 20
    assert logs._pass.size <= 1000
    logs.flush()
    assert stderr.getvalue().count("\n") == 20


def test_the_chat_logs_each_message_through_the_message_log(stderr):
    ml = configure(stderr)
    chat = Chat(Limits(), logging.getLogger("tcpchat.chat"), message_log=ml)
    a = chat.connect("127.0.0.1:1000", 0.0)
    b = chat.connect("127.0.0.1:1001", 0.0)
    chat.receive(a, b"/nick alice\n")
    chat.receive(b, b"/nick bob\n")
    hostile = "/msg bob hi\r2026-01-01 00:00:00,000 INFO forged \x1b]0;t\x07\n"
    chat.receive(a, hostile.encode())
    chat.receive(a, b"/all \xe2\x80\xaeeveryone\n")
    chat.receive(a, b"/\x1b]0;t\x07x\n")  # echoed back in the ERR, and logged
    chat.receive(b, b"/quit gone\x1b[2J\n")
    logs.flush()
    lines = stderr.getvalue().splitlines()
    assert all(one_line(line) for line in lines)
    assert any(line.endswith(
        " INFO 127.0.0.1:1000 message 1 alice -> bob: hi\\r2026-01-01 00:00:00,000 INFO forged"
        " \\x1b]0;t\\x07") for line in lines)
    assert any(line.endswith(" INFO 127.0.0.1:1000 message 2 alice -> *: \\u202eeveryone")
               for line in lines)
    # The chat may show these controls its own way (as it does to people);
    # whatever it passes on, the log keeps to one visible line.
    assert any("quit: gone" in line for line in lines)
    assert any("ERR unknown-command /" in line for line in lines)


# -- the log file -------------------------------------------------------------


def test_the_file_gets_what_stderr_gets(stderr, tmp_path):
    path = tmp_path / "server.log"
    ml = configure(stderr, log_file=str(path))
    logging.getLogger("tcpchat.server").info("listening")
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "hi\nthere")
    logs.flush()
    assert path.read_text() == stderr.getvalue()
    assert path.read_text().count("\n") == 2


def test_stderr_on_a_file_gets_the_lines_after_what_was_written_to_it_directly(tmp_path):
    # A terminal or a file: the lines go out with os.write, under the text
    # stream; what was written through the stream itself (a warning) and
    # still sits in its buffer must come first.
    stream = open(str(tmp_path / "stderr"), "w", encoding="utf-8")
    try:
        ml = logs.configure("info", None, None, stderr=stream)
        stream.write("written directly\n")
        ml.message(1, "127.0.0.1:1000", "alice", "bob", "caf\u00e9 \u043f\u0440\u0438")
        logs.flush()
        lines = (tmp_path / "stderr").read_text(encoding="utf-8").splitlines()
        assert lines[0] == "written directly"
        assert lines[1].endswith(" message 1 alice -> bob: caf\u00e9 \u043f\u0440\u0438")
    finally:
        logs.configure("info", None, None, stderr=io.StringIO())
        stream.close()


def test_log_file_follows_logrotate(stderr, tmp_path):
    path = tmp_path / "server.log"
    ml = configure(stderr, log_file=str(path))
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "before")
    logs.flush()
    os.rename(str(path), str(tmp_path / "server.log.1"))
    ml.message(2, "127.0.0.1:1000", "alice", "bob", "after")
    logs.flush()
    assert (tmp_path / "server.log.1").read_text().endswith(": before\n")
    assert path.read_text().endswith(": after\n")


def open_paths():
    """The files this process holds open."""
    fds = "/proc/self/fd"
    paths = set()
    for fd in os.listdir(fds):
        try:
            paths.add(os.readlink(os.path.join(fds, fd)))
        except OSError:
            pass  # the listing's own descriptor, closed by now
    return paths


def test_reopen_lets_go_of_the_rotated_file_at_once(stderr, tmp_path):
    path = tmp_path / "server.log"
    old = tmp_path / "server.log.1"
    ml = configure(stderr, log_file=str(path))
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "before")
    # logrotate without copytruncate: moves the file, then signals the
    # server, and may compress the old file as soon as the server has let
    # go of it.
    os.rename(str(path), str(old))
    logs.reopen()
    assert str(old) not in open_paths()
    assert str(path) in open_paths()
    ml.message(2, "127.0.0.1:1000", "alice", "bob", "after")
    logs.flush()
    assert path.read_text().endswith(": after\n")
    both = old.read_text() + path.read_text()
    assert both.count("\n") == 2 and ": before\n" in both  # nothing lost, nothing twice


def test_reopen_that_fails_keeps_the_old_file(stderr, tmp_path, capfd):
    d = tmp_path / "logs"
    d.mkdir()
    path = d / "server.log"
    ml = configure(stderr, log_file=str(path))
    os.rename(str(d), str(tmp_path / "moved"))  # the directory is gone
    logs.reopen()
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "still logged")
    logs.flush()
    assert (tmp_path / "moved" / "server.log").read_text().endswith(": still logged\n")
    err = capfd.readouterr().err
    assert "reopening %s failed" % path in err
    assert err.count("failed") == 1  # said once, not once a pass


# -- syslog -------------------------------------------------------------------


class SyslogSink:
    """A /dev/log of our own: a Unix datagram socket read by a thread."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.records = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return  # closed
            with self._cond:
                self.records.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, text, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in r for r in self.records):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("syslog never got %r: %r" % (text, self.records))
                self._cond.wait(left)
            return list(self.records)

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self._thread.is_alive():
            self._thread.join(TIMEOUT)


@pytest.fixture
def stalled_syslog():
    """A syslog socket nobody reads yet: ``start()`` it to read."""
    with tempfile.TemporaryDirectory() as d:
        sink = SyslogSink(os.path.join(d, "log"))
        try:
            yield sink
        finally:
            sink.close()


@pytest.fixture
def syslog(stalled_syslog):
    return stalled_syslog.start()


def test_syslog_gets_every_record_but_messages_by_default(stderr, syslog):
    ml = configure(stderr, syslog_address=syslog.path)
    logging.getLogger("tcpchat.chat").info("alice\n(127.0.0.1:1000) connected")
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "not for syslog")
    logging.getLogger("tcpchat.server").warning("a warning")
    logs.flush()
    head = "tcpchat-server[%d]: " % os.getpid()
    assert syslog.wait_for("a warning") == [
        "<30>%sINFO alice\\n(127.0.0.1:1000) connected" % head,
        "<28>%sWARNING a warning" % head,
    ]
    assert "not for syslog" in stderr.getvalue()


def test_syslog_messages_sends_a_datagram_per_message(stderr, syslog):
    ml = configure(stderr, syslog_address=syslog.path, syslog_messages=True)
    logging.getLogger("tcpchat.chat").info("alice connected")
    ml.message(1, "127.0.0.1:1000", "alice", "bob", "for the record\nINFO forged")
    logs.flush()
    head = "tcpchat-server[%d]: " % os.getpid()
    assert syslog.wait_for("for the record") == [
        "<30>%sINFO alice connected" % head,
        "<30>%sINFO 127.0.0.1:1000 message 1 alice -> bob: for the record\\nINFO forged" % head,
    ]


def max_dgram_qlen():
    try:
        with open("/proc/sys/net/unix/max_dgram_qlen") as f:
            return int(f.read())
    except OSError:
        return 512


def test_a_syslog_that_falls_behind_never_stalls_the_server(stderr, stalled_syslog,
                                                          monkeypatch):
    monkeypatch.setattr(logs, "SYSLOG_WAIT", 0.01)
    configure(stderr, syslog_address=stalled_syslog.path)
    log = logging.getLogger("tcpchat.chat")
    count = max_dgram_qlen() + 100  # more than the kernel queues for it
    started = time.monotonic()
    for i in range(count):
        log.info("record %d", i)  # returns, though the socket is full
    logs.flush()
    # Waited once for the daemon to read, then no more while it is stuck.
    assert time.monotonic() - started < TIMEOUT / 2
    assert logs._syslog.backlog
    stalled_syslog.start()
    for _ in range(1000):  # the server's next passes
        logs.flush()
        if not logs._syslog.backlog:
            break
        time.sleep(0.001)
    records = stalled_syslog.wait_for("record %d" % (count - 1))
    assert [r.rsplit(" ", 1)[1] for r in records] == [str(i) for i in range(count)]


def test_a_syslog_backlog_is_bounded(stderr, stalled_syslog, monkeypatch, capfd):
    monkeypatch.setattr(logs, "SYSLOG_WAIT", 0.01)
    monkeypatch.setattr(logs, "SYSLOG_BACKLOG", 500)  # bytes
    configure(stderr, syslog_address=stalled_syslog.path)
    log = logging.getLogger("tcpchat.chat")
    count = max_dgram_qlen() + 100
    for i in range(count):
        log.info("record %d", i)
    logs.flush()
    backlog = logs._syslog.backlog
    assert 400 < sum(len(d) for d in backlog) <= 500
    assert backlog[-1].endswith(b"record %d" % (count - 1))  # the oldest went
    err = capfd.readouterr().err
    assert err.count("syslog is not keeping up: ") == 1  # not once a record
    assert stderr.getvalue().count("\n") == count  # stderr has them all


def test_syslog_address_forms():
    assert logs.parse_syslog_address("/dev/log") == "/dev/log"
    assert logs.parse_syslog_address("localhost:514") == ("localhost", 514)
    assert logs.parse_syslog_address("[::1]:514") == ("::1", 514)


# -- internal errors ----------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_internal_errors_are_rate_limited(stderr):
    configure(stderr)
    clock = FakeClock()
    limiter = logs.ErrorLimiter(burst=3, interval=60.0, clock=clock)
    log = logging.getLogger("tcpchat.server")

    def fail(n):
        for i in range(n):
            try:
                int("x%d" % i)
            except ValueError:
                limiter(log, "internal error serving %s", "bob")
            logs.flush()

    fail(10)
    text = stderr.getvalue()
    assert text.count("internal error serving bob") == 3
    assert text.count("Traceback") == 3
    assert limiter.suppressed == 7
    clock.now += 59
    limiter.summarize()
    assert "not logged" not in stderr.getvalue()  # not before the interval ends
    clock.now += 1
    limiter.summarize()
    logs.flush()
    last = stderr.getvalue().splitlines()[-1]
    assert last.endswith(
        "ERROR 7 more internal errors not logged (at most 3 tracebacks per 60 s)")
    fail(4)  # a new interval: tracebacks again, then silence
    assert stderr.getvalue().count("Traceback") == 6
    assert limiter.suppressed == 1


def test_flush_says_how_many_were_not_logged(stderr, monkeypatch):
    configure(stderr)
    clock = FakeClock()
    limiter = logs.ErrorLimiter(burst=1, interval=10.0, clock=clock)
    monkeypatch.setattr(logs, "internal_error", limiter)
    for _ in range(3):
        try:
            {}["missing"]
        except KeyError:
            logs.internal_error(logging.getLogger("tcpchat.server"), "internal error")
    clock.now += 10
    logs.flush()  # the server's every pass: no further error needed
    assert stderr.getvalue().splitlines()[-1].endswith(
        "2 more internal errors not logged (at most 1 tracebacks per 10 s)")


# -- options ------------------------------------------------------------------


def test_log_level_in_any_case():
    p = make_parser()
    for given, level in (("WARNING", "warning"), ("Info", "info"), ("error", "error")):
        assert p.parse_args(["--log-level", given]).log_level == level
    with pytest.raises(SystemExit):
        p.parse_args(["--log-level", "verbose"])


# -- the real server ----------------------------------------------------------


def test_no_client_can_forge_a_line_in_stderr_the_file_or_syslog(syslog, tmp_path):
    log_file = str(tmp_path / "server.log")
    forged = "\n2026-01-01 00:00:00,000 INFO forged"
    with ServerProcess("--log-file", log_file, "--syslog-address", syslog.path,
                       "--syslog-messages") as srv:
        a = srv.connect(framed=True, nick="alice")
        b = srv.connect(nick="bob")
        a.send("/msg bob hi" + forged + "\r\x1b]0;owned\x07\u202e")
        a.expect("DELIVERED")
        b.send("/quit bye\x1b[2J\x1b]0;owned\x07")
        b.expect("BYE")
        srv.wait_log("closed: quit: bye")
        assert srv.stop() == 0
        srv.wait_log("INFO stopped")
        lines = srv.log_lines()
    with open(log_file, encoding="utf-8") as f:
        file_lines = f.read().splitlines()
    records = syslog.wait_for("INFO stopped")
    for where in (lines, file_lines, records):
        assert not any("forged" in line and "\\n2026" not in line and "\\r2026" not in line
                       for line in where), where
        assert all(one_line(line) for line in where), where
        assert any("message 1 alice -> bob: hi\\n2026-01-01 00:00:00,000 INFO forged"
                   "\\r\\x1b]0;owned\\x07\\u202e" in line for line in where), where
        assert any("quit: bye" in line for line in where), where


def test_a_stderr_pipe_nobody_reads_never_blocks_and_counts_what_it_drops(monkeypatch):
    import fcntl

    monkeypatch.setattr(logs, "STDERR_BACKLOG", 100000)
    r, w = os.pipe()
    fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)  # a small pipe
    stream = os.fdopen(w, "w")
    try:
        out = logs._stderr_output(stream)
        assert isinstance(out, logs._PipeStream)
        line = b"x" * 99 + b"\n"  # what flush() hands an output: encoded lines
        for _ in range(5000):  # 500 KB into a 4 KiB pipe nobody reads: never blocks
            out.write(line)
        assert len(out.backlog) <= 100000 + len(line)
        assert out.dropped > 0
        dropped = out.dropped
        # The reader comes back: everything held arrives, then one line saying
        # how many were lost.
        got = b""
        for _ in range(1000):
            try:
                os.set_blocking(r, False)
                got += os.read(r, 65536)
            except BlockingIOError:
                pass
            out.write(b"")
            if b"were dropped" in got:
                break
        assert ("%d log lines were dropped" % dropped).encode() in got
    finally:
        out.close()
        stream.close()
        os.close(r)


def test_lines_a_stderr_pipe_did_not_take_go_out_without_new_ones(monkeypatch):
    # The server logs a burst the pipe cannot hold, then goes quiet: what
    # waits must still reach the reader once it reads, with no new line
    # logged to push it (the loop calls flush() every pass, busy or not).
    import fcntl

    r, w = os.pipe()
    fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)  # a small pipe
    stream = os.fdopen(w, "w")
    try:
        ml = logs.configure("info", None, None, stderr=stream)
        assert isinstance(logs._outputs[0], logs._PipeStream)
        for i in range(200):
            ml.message(i, "127.0.0.1:1000", "alice", "bob", "x" * 100)
        logging.getLogger("tcpchat.server").info("the last line")
        logs.flush()
        assert logs._outputs[0].backlog  # more than the pipe holds
        got = b""
        os.set_blocking(r, False)
        for _ in range(1000):  # bounded: each round reads up to 64 KiB
            try:
                got += os.read(r, 65536)
            except BlockingIOError:
                pass
            logs.flush()  # a pass that logged nothing
            if b"the last line" in got:
                break
        assert b"the last line" in got
        assert got.count(b" message ") == 200
    finally:
        logs.configure("info", None, None, stderr=io.StringIO())
        stream.close()
        os.close(r)
