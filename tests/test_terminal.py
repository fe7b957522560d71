"""The terminal module's parts that work without GNU readline taking over
this process's own stdin: where history lives and how clients merge it,
how non-readline input is split into lines, and the plain fallback on a
real pty.

ReadlineTerminal itself is exercised end to end in test_client.py, where
the client runs on a pty of its own.
"""

import fcntl
import os
import select
import subprocess
import sys
import time

import pytest

from tcpchat import terminal
from tcpchat.terminal import (
    MAX_INPUT_LINE,
    PipeInput,
    PlainTerminal,
    _LineSplitter,
    history_path,
    save_history,
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


def test_save_history_appends_to_what_is_there_and_keeps_the_newest(tmp_path):
    path = str(tmp_path / "state" / "tcpchat" / "history")
    save_history(path, ["one", "two"])  # makes the directories
    assert (tmp_path / "state" / "tcpchat").stat().st_mode & 0o777 == 0o700
    # Another client saved meanwhile: its lines stay, ours go after them.
    save_history(path, ["three"])
    save_history(path, ["four", "five", "six"], limit=5)
    with open(path, encoding="utf-8") as f:
        assert f.read() == "two\nthree\nfour\nfive\nsix\n"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []


def test_save_history_keeps_unicode_and_drops_pasted_newlines(tmp_path):
    path = str(tmp_path / "history")
    with open(path, "wb") as f:
        f.write(b"\xff raw bytes from some other run\n")
    save_history(path, ["\u65e5\u672c", "two\nlines", "last"])
    with open(path, "rb") as f:
        assert f.read() == b"\xff raw bytes from some other run\n\xe6\x97\xa5\xe6\x9c\xac\nlast\n"


def test_save_history_from_many_processes_at_once_loses_nothing(tmp_path):
    path = str(tmp_path / "history")
    code = ("import sys; from tcpchat.terminal import save_history\n"
            "for i in range(20): save_history(sys.argv[1], ['%s %d' % (sys.argv[2], i)])")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(terminal.__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code, path, "p%d" % n], env=env)
             for n in range(4)]
    for p in procs:
        assert p.wait(timeout=30) == 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert sorted(lines) == sorted("p%d %d" % (n, i) for n in range(4) for i in range(20))


def test_save_history_waits_a_bounded_time_for_the_lock(tmp_path, monkeypatch):
    path = str(tmp_path / "history")
    monkeypatch.setattr(terminal, "HISTORY_LOCK_WAIT", 0.05)
    with open(path + ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another client, stuck mid-save
        with pytest.raises(TimeoutError):
            save_history(path, ["x"])
    assert not os.path.exists(path)


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
        assert not p.replace("x", "last") and not p.clear_line()
    finally:
        for fd in (r, w, out_r, out_w):
            if fd is not None:
                os.close(fd)


def test_pipe_output_says_what_was_said_on_stdout_and_the_rest_on_stderr():
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        p = PipeInput(0, out_w, err_w)
        p.show("[all] bob: hi")
        p.show("You are ci.", diagnostic=True)
        p.bell()  # no bell in a pipe
        assert os.read(out_r, 100) == b"[all] bob: hi\n"
        assert os.read(err_r, 100) == b"You are ci.\n"
    finally:
        for fd in (out_r, out_w, err_r, err_w):
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
        # No redrawing in place here: the kernel holds what is being typed.
        assert not t.replace("other", "last") and not t.clear_line()
        t.bell()
        assert _read_until(master, b"\x07") == b"\x07"
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
