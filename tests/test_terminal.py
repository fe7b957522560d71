"""The terminal module's parts that work without GNU readline taking over
this process's own stdin: where history lives, how non-readline input is
split into lines, and the plain fallback on a real pty.

ReadlineTerminal itself is exercised end to end in test_client.py, where
the client runs on a pty of its own.
"""

import os
import select
import time

from tcpchat import terminal
from tcpchat.terminal import (
    MAX_INPUT_LINE,
    PipeInput,
    PlainTerminal,
    _LineSplitter,
    history_path,
)


def test_history_path_prefers_xdg_state_home():
    env = {"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}
    assert history_path(env) == "/x/state/tcpchat/history"


def test_history_path_defaults_and_ignores_relative_xdg(monkeypatch):
    monkeypatch.setenv("HOME", "/home/u")
    expected = "/home/u/.local/state/tcpchat/history"
    assert history_path({}) == expected
    assert history_path({"XDG_STATE_HOME": ""}) == expected
    assert history_path({"XDG_STATE_HOME": "rel/dir"}) == expected


def test_splitter_in_any_split():
    data = "one\r\ntwo\nthree\n".encode()
    for cut in range(1, len(data)):  # an empty read means end of input
        s = _LineSplitter()
        assert s.feed(data[:cut]) + s.feed(data[cut:]) == ["one", "two", "three"]


def test_splitter_end_of_input_flushes_the_last_line():
    s = _LineSplitter()
    assert s.feed(b"no newline") == []
    assert s.feed(b"") == ["no newline", None]
    assert _LineSplitter().feed(b"") == [None]


def test_splitter_is_bounded_and_survives_bad_utf8():
    s = _LineSplitter()
    lines = s.feed(b"x" * (MAX_INPUT_LINE + 1))
    assert lines == ["x" * (MAX_INPUT_LINE + 1)]
    assert s.feed(b"\xff\xfeok\n") == ["\ufffd\ufffdok"]


def test_pipe_input_reads_lines_and_end():
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        p = PipeInput(r, out_w)
        assert not p.interactive
        os.write(w, b"a\nb")
        os.close(w)
        w = None
        got = []
        deadline = time.monotonic() + 5
        while (not got or got[-1] is not None) and time.monotonic() < deadline:
            got += p.read()
        assert got == ["a", "b", None]
        p.show("hello")
        assert os.read(out_r, 100) == b"hello\n"
    finally:
        for fd in (r, w, out_r, out_w):
            if fd is not None:
                os.close(fd)


def _read_until(fd, text, timeout=5):
    data = b""
    deadline = time.monotonic() + timeout
    while text not in data:
        left = deadline - time.monotonic()
        assert left > 0, "never saw %r in %r" % (text, data)
        if select.select([fd], [], [], left)[0]:
            data += os.read(fd, 4096)
    return data


def test_plain_terminal_on_a_pty():
    master, slave = os.openpty()
    try:
        t = PlainTerminal(slave, slave)
        assert t.interactive
        t.start("me> ")
        _read_until(master, b"me> ")
        t.show("a message")
        # Clears the prompt's line, prints, then shows the prompt again.
        assert _read_until(master, b"me> ").startswith(b"\r\x1b[Ka message")
        os.write(master, b"typed line\n")
        assert select.select([slave], [], [], 5)[0]
        assert t.read() == ["typed line"]
        os.write(master, b"\x04")  # Ctrl-D in cooked mode: end of input
        assert select.select([slave], [], [], 5)[0]
        assert t.read() == [None]
    finally:
        os.close(master)
        os.close(slave)


def test_open_terminal_uses_pipe_input_when_not_a_tty():
    r, w = os.pipe()
    try:
        assert isinstance(terminal.open_terminal(None, r, w), PipeInput)
    finally:
        os.close(r)
        os.close(w)


def test_output_to_a_gone_reader_is_dropped_quietly():
    r, w = os.pipe()
    os.close(r)
    try:
        PipeInput(0, w).show("nobody reads this")  # EPIPE: no exception
    finally:
        os.close(w)
