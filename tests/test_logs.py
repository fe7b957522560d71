"""The server's cheap logging: same lines as the logging module's, fewer writes."""

import io
import logging
import os

from tcpchat import logs


def record(msg, created=1700000000.25):
    r = logging.LogRecord("tcpchat.chat", logging.INFO, __file__, 1, msg, (), None)
    r.created = created
    r.msecs = (created - int(created)) * 1000
    return r


def test_stamp_is_what_the_standard_formatter_writes():
    ours = logs.StampFormatter()
    standard = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for created in (1700000000.25, 1700000000.999, 1700000001.0, 1700000060.5):
        assert ours.format(record("x", created)) == standard.format(record("x", created))


class CountingStream(io.StringIO):
    writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def test_records_wait_for_the_end_of_the_pass_in_order():
    stream = CountingStream()
    h = logs.BufferedStreamHandler(stream)
    h.setFormatter(logging.Formatter("%(message)s"))
    try:
        for i in range(5):
            h.handle(record("line %d" % i))
        assert stream.getvalue() == ""
        logs.flush()
        assert stream.getvalue() == "".join("line %d\n" % i for i in range(5))
        assert stream.writes == 1
    finally:
        h.close()


def test_a_long_pass_is_bounded():
    stream = CountingStream()
    h = logs.BufferedStreamHandler(stream)
    h.setFormatter(logging.Formatter("%(message)s"))
    try:
        for i in range(logs.MAX_PENDING + 1):
            h.handle(record("r%d" % i))
        assert stream.getvalue().count("\n") == logs.MAX_PENDING
        assert len(h._pending) == 1
    finally:
        h.close()
    assert stream.getvalue().count("\n") == logs.MAX_PENDING + 1  # close flushes


def test_log_file_follows_logrotate(tmp_path):
    path = tmp_path / "server.log"
    h = logs.BufferedFileHandler(str(path))
    h.setFormatter(logging.Formatter("%(message)s"))
    try:
        h.handle(record("before"))
        logs.flush()
        os.rename(str(path), str(tmp_path / "server.log.1"))
        h.handle(record("after"))
        logs.flush()
    finally:
        h.close()
    assert (tmp_path / "server.log.1").read_text() == "before\n"
    assert path.read_text() == "after\n"


def test_syslog_address_forms():
    assert logs.parse_syslog_address("/dev/log") == "/dev/log"
    assert logs.parse_syslog_address("localhost:514") == ("localhost", 514)
    assert logs.parse_syslog_address("[::1]:514") == ("::1", 514)
