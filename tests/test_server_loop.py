"""The event loop in-process: a bug in the core costs one connection only."""

import threading

import pytest

from serverproc import HOST, TIMEOUT, LineClient

from tcpchat.chat import Chat
from tcpchat.server import Server


class BuggyChat(Chat):
    """A chat whose core raises on one input and one output, like a bug would."""

    def receive(self, s, data):
        if b"/boom" in data:
            raise RuntimeError("injected bug on input")
        super().receive(s, data)

    def sent(self, s, nbytes):
        if s.nick == "doomed":
            raise RuntimeError("injected bug on output")
        super().sent(s, nbytes)


@pytest.fixture
def loop():
    server = Server(BuggyChat(), HOST, 0)
    port = server.listener.getsockname()[1]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield port
    server.stop()
    t.join(TIMEOUT)
    assert not t.is_alive(), "the loop did not stop"


def test_bug_on_input_closes_that_connection_only(loop):
    a = LineClient(HOST, loop)
    b = LineClient(HOST, loop)
    a.send("/nick alice")
    b.send("/nick bob")
    a.expect("JOINED bob")
    bad = LineClient(HOST, loop)
    bad.send("/boom")
    bad.expect_closed()
    a.send("/msg bob still up")
    assert b.expect("MSG") == "MSG 1 alice bob still up"


def test_bug_on_output_closes_that_connection_only(loop):
    a = LineClient(HOST, loop)
    a.send("/nick alice")
    a.expect("OK nick")
    d = LineClient(HOST, loop)
    d.send("/nick doomed")  # its reply's write hits the injected bug
    d.expect_closed()
    # Lost to a server bug, not by its own doing: it may resume.
    assert a.expect("AWAY doomed") == "AWAY doomed"
    a.send("/ping")
    assert a.expect("PONG") == "PONG"


def test_tracebacks_are_rate_limited(loop, caplog):
    import logging

    from tcpchat import logs

    before = logs.internal_error.suppressed
    with caplog.at_level(logging.ERROR, logger="tcpchat.server"):
        for _ in range(25):  # each /boom is an internal error and a traceback
            bad = LineClient(HOST, loop)
            bad.send("/boom")
            bad.expect_closed()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) <= logs.internal_error.burst
    assert logs.internal_error.suppressed - before >= 25 - logs.internal_error.burst
