"""The client: its Session core fed by hand, then the whole program in a
real pseudo-terminal (and with piped stdin) against the real server.

The terminal tests start tcpchat-client on the slave side of a pty that is
its controlling terminal, so Ctrl-C typed into the master really becomes
SIGINT, exactly as in a terminal window. Everything waits for expected
output with a deadline; no sleeps synchronise anything.
"""

import errno
import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

from serverproc import REPO, TIMEOUT, ServerProcess

from tcpchat.client import Session, make_parser
from tcpchat.protocol import COMMANDS
from tcpchat.render import Style

WHEN = time.struct_time((2026, 11, 21, 9, 5, 7, 5, 325, 0))

# --------------------------------------------------------------------------
# Session: the protocol bookkeeping, no I/O
# --------------------------------------------------------------------------


def session(nick="alice", **kw):
    s = Session(Style(color=False), nick=nick, **kw)
    sent = s.start()
    if nick:
        assert sent == ["/nick " + nick]
        s.server_message("OK nick " + nick, WHEN)
    return s


def test_session_registers_then_pairs():
    s = Session(Style(), nick="alice", pair="bob")
    assert s.start() == ["/nick alice"]
    assert not s.ready()
    assert s.prompt() == "nick> "
    show, send = s.server_message("OK nick alice", WHEN)
    assert send == ["/pair bob"]
    assert s.prompt() == "alice> "
    assert not s.ready()
    s.server_message("OK pair bob", WHEN)
    assert s.ready()
    show, _ = s.server_message("PAIRED bob", WHEN)
    assert "paired with bob" in show[0]
    assert s.prompt() == "alice\u2192bob> "
    assert Session(Style(unicode=False)).prompt() == "nick> "


def test_accepting_a_pair_request_does_not_claim_to_wait():
    s = session()
    s.server_message("PAIR-REQUEST bob", WHEN)
    s.user_line("/pair bob", WHEN)
    assert s.server_message("OK pair bob", WHEN) == ([], [])
    show, _ = s.server_message("PAIRED bob", WHEN)
    assert show == ["09:05:07 You are paired with bob: plain text now goes to bob only."]
    s.user_line("/pair carol", WHEN)
    show, _ = s.server_message("OK pair carol", WHEN)
    assert "Pair request sent to carol" in show[0]


def test_bare_word_before_registering_is_the_nick():
    s = Session(Style(), interactive=True)
    assert s.user_line("alice", WHEN) == ([], ["/nick alice"])
    s.server_message("ERR nick-taken alice is taken", WHEN)
    assert s.registration_failed
    assert s.user_line("alice2", WHEN) == ([], ["/nick alice2"])
    s.server_message("OK nick alice2", WHEN)
    assert s.nick == "alice2" and not s.registration_failed
    # Registered: a bare word is chat text now.
    assert s.user_line("alice", WHEN) == ([], ["alice"])


def test_errors_are_matched_to_the_request_they_answer():
    s = session()
    s.user_line("/pair zed", WHEN)
    s.user_line("/msg zed hello there", WHEN)
    s.user_line("/help", WHEN)  # answered by OK help lines only
    s.user_line("/ack 99", WHEN)  # silent, or its own ERR no-such-message
    s.user_line("hi all", WHEN)
    show, _ = s.server_message("ERR no-such-user no user zed", WHEN)
    assert "Not done: /pair zed: no user zed" in show[0]
    show, _ = s.server_message("ERR no-such-user no user zed", WHEN)
    assert 'Not done: message "hello there" to zed: no user zed' in show[0]
    s.server_message("OK help /nick NAME ...", WHEN)
    show, _ = s.server_message("ERR no-such-message 99 is not awaiting your receipt", WHEN)
    assert "Error:" in show[0]
    show, _ = s.server_message("SENT 4 * 2", WHEN)
    assert show == ["09:05:07 [all] you \u2192 everyone: hi all  (#4 sent)"]
    assert s.errors == 2
    assert not s.settled()
    show, _ = s.server_message("DELIVERED 4 * 2", WHEN)
    assert show == ['09:05:07 #4 "hi all" delivered to everyone (2)']
    assert s.settled()
    assert not s.all_delivered()  # the /msg to zed failed


def test_delivery_and_failure_of_private_messages():
    s = session()
    s.user_line("/w bob one", WHEN)
    s.user_line("//two", WHEN)
    s.server_message("SENT 1 bob 1", WHEN)
    show, _ = s.server_message("SENT 2 * 3", WHEN)
    assert "you \u2192 everyone: /two" in show[0]
    show, _ = s.server_message("FAILED 1 bob connection lost", WHEN)
    assert show == ['09:05:07 #1 "one" NOT delivered to bob: connection lost']
    show, _ = s.server_message("DELIVERED 2 * 2", WHEN)
    assert "only 2 of 3" in show[0]
    assert s.settled() and not s.all_delivered()


def test_summary_names_messages_without_an_outcome():
    s = session()
    s.user_line("/msg bob one", WHEN)
    s.user_line("two", WHEN)
    s.server_message("SENT 1 bob 1", WHEN)
    lines = s.summary(WHEN)
    assert lines == [
        '09:05:07 #1 "one" to bob: delivery not confirmed',
        '09:05:07 Message "two" was never acknowledged by the server',
    ]


def test_incoming_messages_are_shown_then_acked():
    s = session()
    s.server_message("PAIRED bob", WHEN)
    assert s.server_message("MSG 5 bob alice hi", WHEN) == (
        ["09:05:07 [pair] bob: hi"], ["/ack 5"])
    assert s.server_message("MSG 6 carol alice psst", WHEN)[0] == [
        "09:05:07 [private] carol: psst"]
    assert s.server_message("MSG 7 carol * \x1b]0;x\x07all", WHEN)[0] == [
        "09:05:07 [all] carol: ^[]0;x^Gall"]


def test_pair_state_follows_renames_and_unpairing():
    s = session()
    s.server_message("PAIRED bob", WHEN)
    s.server_message("RENAMED bob rob", WHEN)
    assert s.prompt() == "alice\u2192rob> "
    show, _ = s.server_message("UNPAIRED rob connection lost", WHEN)
    assert show == ["09:05:07 Your pair with rob ended: connection lost."]
    assert s.prompt() == "alice> "
    s.user_line("/unpair", WHEN)
    s.server_message("PAIRED bob", WHEN)
    s.user_line("/unpair", WHEN)
    show, _ = s.server_message("ERR not-paired you have no pair", WHEN)
    show, _ = s.server_message("OK unpair bob", WHEN)
    assert show == ["09:05:07 You ended the pair with bob."]


def test_quit_words_mark_the_session_as_leaving():
    for word in ("/quit", "/QUIT see you", ":quit:"):
        s = session()
        s.user_line(word, WHEN)
        assert s.leaving
        show, _ = s.server_message("BYE goodbye", WHEN)
        assert s.bye and s.settled()


def test_tab_completes_commands_and_the_nicks_we_have_heard_of():
    s = session()
    for wire in ("JOINED bob", "USER bobby free", "MSG 3 carol alice hi",
                 "JOINED dave", "LEFT dave quit", "JOINED eve", "RENAMED eve eva"):
        s.server_message(wire, WHEN)
    assert s.completions("", "/p") == ["/pair", "/ping"]
    assert s.completions("", "/") == [c for c in sorted(COMMANDS) if c != "/ack"
                                      and c.startswith("/")]
    assert s.completions("", ":q") == [":quit:"]
    assert s.completions("/msg ", "b") == ["bob", "bobby"]
    assert s.completions("/PAIR ", "C") == ["carol"]
    assert s.completions("/msg bob ", "b") == []  # message text, not a nick
    assert s.completions("", "") == ["bob", "bobby", "carol", "eva"]  # not alice
    assert s.completions("hi ", "d") == []  # dave left


def test_parser_defaults_and_aliases():
    args = make_parser().parse_args([])
    assert (args.host, args.port, args.nick, args.pair, args.no_color) == (
        "127.0.0.1", 6078, None, None, False)
    args = make_parser().parse_args(["--ip", "::1", "--port", "7", "--nick", "a",
                                     "--pair", "b", "--no-color", "--wait", "1.5"])
    assert (args.host, args.port, args.nick, args.pair, args.no_color, args.wait) == (
        "::1", 7, "a", "b", True, 1.5)


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "65536"], ["--port", "x"],
                                  ["--wait", "-1"], ["--wait", "nan"]])
def test_parser_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        make_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_addresses_are_shown_as_people_write_them():
    from tcpchat.client import _address
    assert _address("127.0.0.1", 6078) == "127.0.0.1:6078"
    assert _address("::1", 6078) == "[::1]:6078"


# --------------------------------------------------------------------------
# The real program
# --------------------------------------------------------------------------

# Puts the pty on stdin as the controlling terminal of a new session, then
# runs the client: this is what a terminal emulator does for its shell.
TRAMPOLINE = (
    "import fcntl, os, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "os.execv(sys.executable, [sys.executable, '-m', 'tcpchat.client'] + sys.argv[1:])"
)

# The same, in a Python whose readline module cannot be imported (as with a
# build without it): the client must fall back to plain line input.
TRAMPOLINE_NO_READLINE = (
    "import fcntl, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "sys.modules['readline'] = None;"
    "from tcpchat.client import main;"
    "sys.exit(main(sys.argv[1:]))"
)

# As a job-control shell runs a command: the client in a process group of
# its own, in the terminal's foreground, with this process as its parent
# (so Ctrl-Z really stops it: the kernel drops stop signals for orphans).
# The client's pid goes to $PIDFILE; our exit status is the client's.
TRAMPOLINE_JOB = """
import fcntl, os, signal, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, "-m", "tcpchat.client"] + sys.argv[1:])
with open(os.environ["PIDFILE"], "w") as f:
    f.write(str(pid))
while True:
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFEXITED(status):
        sys.exit(os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        sys.exit(128 + os.WTERMSIG(status))
"""

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")

UP = "\x1b[A"
LEFT = "\x1b[D"


def client_env(tmp_path, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["INPUTRC"] = os.devnull  # nobody's key bindings but readline's own
    env["TERM"] = "xterm"
    env["LC_ALL"] = "C.UTF-8"
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


class Screen:
    """Just enough of a terminal to see what a person would see: the
    cursor motions and erasures readline uses (CR, LF, BS, CSI A B C D K J
    P @, SGR and modes ignored), one cell per character, two for wide."""

    CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z@])|\x1b(.)", re.S)

    def __init__(self, data):
        self.rows = [[]]
        self.row = self.col = 0
        text = data.decode("utf-8", "replace")
        pos = 0
        for m in self.CSI.finditer(text):
            self._text(text[pos:m.start()])
            pos = m.end()
            if m.group(2):
                self._csi(m.group(1), m.group(2))
        self._text(text[pos:])

    def _line(self):
        while len(self.rows) <= self.row:
            self.rows.append([])
        line = self.rows[self.row]
        while len(line) < self.col:
            line.append(" ")
        return line

    def _text(self, text):
        from tcpchat.render import display_width
        for ch in text:
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch < " ":
                continue
            else:
                line = self._line()
                cells = [ch] + [""] * (display_width(ch) - 1)
                line[self.col:self.col + len(cells)] = cells
                self.col += len(cells)

    def _csi(self, params, final):
        n = int(params) if params.isdigit() else 1
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "C":
            self.col += n
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "K":
            del self._line()[self.col:]
        elif final == "J":
            del self._line()[self.col:]
            del self.rows[self.row + 1:]
        elif final == "P":
            del self._line()[self.col:self.col + n]
        elif final == "@":
            self._line()[self.col:self.col] = [" "] * n

    def lines(self):
        return ["".join(r).rstrip() for r in self.rows]

    def cursor_line(self):
        """The line the cursor is on, and the text left of the cursor."""
        row = "".join(self._line())
        return row.rstrip(), "".join(self._line()[:self.col])


class PtyClient:
    """tcpchat-client on a pseudo-terminal; we hold the master side."""

    def __init__(self, port, *args, env, trampoline=TRAMPOLINE):
        self.master, slave = os.openpty()
        # Wide enough that no line of ours wraps.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, "--port", str(port)] + list(args),
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO,
            start_new_session=True, close_fds=True,
        )
        os.close(slave)
        self.raw = b""
        self.pos = 0  # expect() searches the screen text from here

    def text(self):
        """Everything printed so far, cursor movements and \\r removed."""
        return ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def _read(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.master], [], [], left)
        if not r:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # the slave side is closed: all read
                return False
            raise
        if not data:
            return False
        self.raw += data
        return True

    def expect(self, text, timeout=TIMEOUT):
        """Wait until ``text`` is printed after the last match; return the
        screen text up to and including it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            at = screen.find(text, self.pos)
            if at >= 0:
                end = at + len(text)
                seen, self.pos = screen[self.pos:end], end
                return seen
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError("never saw %r; screen after the last match:\n%s"
                                     % (text, screen[self.pos:]))
            if self.proc.poll() is not None:
                # Collect what is left, then give it one last look.
                while self._read(time.monotonic() + 0.5):
                    pass
                screen = self.text()
                if screen.find(text, self.pos) < 0:
                    raise AssertionError("client exited (%s) without printing %r:\n%s"
                                         % (self.proc.returncode, text, screen[self.pos:]))

    def expect_cursor(self, line, left_of_cursor, timeout=TIMEOUT):
        """Wait until the cursor's line reads ``line`` with the cursor just
        after ``left_of_cursor``, as a person would see it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = Screen(self.raw)
            if screen.cursor_line() == (line, left_of_cursor):
                return screen
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError("cursor line is %r, not %r\n%s" % (
                    screen.cursor_line(), (line, left_of_cursor), "\n".join(screen.lines())))

    def type(self, keys):
        os.write(self.master, keys.encode("utf-8"))

    def wait(self, timeout=TIMEOUT):
        """Drain output until the client exits; return its status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(min(deadline, time.monotonic() + 0.2))
        try:
            status = self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("client did not exit; screen:\n" + self.text())
        while self._read(time.monotonic() + 0.2):
            pass
        return status

    def termios(self):
        return termios.tcgetattr(self.master)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def server():
    """The real server; the peers a test connects are closed after it."""
    peers = []
    with ServerProcess() as srv:
        connect = srv.connect

        def tracked(*args, **kwargs):
            peer = connect(*args, **kwargs)
            peers.append(peer)
            return peer

        srv.connect = tracked
        try:
            yield srv
        finally:
            for peer in peers:
                peer.close()


@pytest.fixture
def run_client(tmp_path, server):
    started = []

    def start(*args, env=None, port=None, trampoline=TRAMPOLINE):
        c = PtyClient(server.port if port is None else port, *args,
                      env=env or client_env(tmp_path), trampoline=trampoline)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def assert_cooked(mode):
    """The terminal is back in ordinary line mode with echo."""
    lflag = mode[3]
    assert lflag & termios.ICANON and lflag & termios.ECHO


def test_half_typed_line_and_cursor_survive_an_incoming_message(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--pair", "bob", "--no-color")
    bob.expect("PAIR-REQUEST alice")
    bob.send("/pair alice")
    alice.expect("alice\u2192bob> ")
    # "helo world" with the cursor moved back to just after "hel".
    alice.type("helo world" + LEFT * 7)
    alice.expect_cursor("alice\u2192bob> helo world", "alice\u2192bob> hel")
    before = termios.tcgetattr(alice.master)
    bob.send("hi there \x1b[2J\x1b]0;pwned\x07 \u202eevil")
    # The message lands above the input line, defused, and then the prompt
    # and the half-typed line are drawn again.
    seen = alice.expect("alice\u2192bob> helo world")
    assert "[pair] bob: hi there ^[[2J^[]0;pwned^G <U+202E>evil" in seen
    screen = alice.expect_cursor("alice\u2192bob> helo world", "alice\u2192bob> hel")
    assert screen.lines()[screen.row - 1].endswith(
        "[pair] bob: hi there ^[[2J^[]0;pwned^G <U+202E>evil")
    assert "\x1b]0;pwned" not in alice.raw.decode("utf-8", "replace")
    assert termios.tcgetattr(alice.master) == before
    # And alice's client acked bob's message once it was on the screen.
    bob.expect("DELIVERED ")
    # Typing goes on at the cursor as it was: the l completes "hello".
    alice.type("l\r")
    msg = bob.expect("MSG ")
    assert msg.split(" ", 4)[2:] == ["alice", "bob", "hello world"]
    msg_id = msg.split(" ")[1]
    alice.expect("[pair] you \u2192 bob: hello world  (#%s sent)" % msg_id)
    alice.expect('#%s "hello world" delivered to bob' % msg_id)
    alice.type("/quit\r")
    assert alice.wait() == 0


def test_tab_completes_a_nick_in_the_terminal(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("/who\r")
    alice.expect("2 users online.")
    alice.type("/m\t")
    alice.expect_cursor("alice> /msg", "alice> /msg ")
    alice.type("b\t")
    alice.expect_cursor("alice> /msg bob", "alice> /msg bob ")
    alice.type("completed\r")
    assert bob.expect("MSG ").endswith(" alice bob completed")
    alice.type("\x04")
    assert alice.wait() == 0


def test_history_recall_within_and_across_runs(server, run_client, tmp_path):
    first = run_client("--nick", "alice", "--no-color")
    first.expect("alice> ")
    first.type("/ping one\r")
    first.expect("pong one")
    first.type(UP)
    first.expect("alice> /ping one")
    first.type("\r")
    first.expect("pong one")
    first.type("\x04")  # Ctrl-D on the empty line
    assert first.wait() == 0
    history = tmp_path / "state" / "tcpchat" / "history"
    assert "/ping one" in history.read_text()
    assert history.stat().st_mode & 0o077 == 0

    second = run_client("--nick", "alice2", "--no-color")
    second.expect("alice2> ")
    second.type(UP + "\r")
    second.expect("pong one")
    second.type("/quit\r")
    assert second.wait() == 0


@pytest.mark.parametrize("keys", ["\x03", "half typed\x03", "\x04", "/quit\r", ":quit:\r"])
def test_leaving_exits_0_after_bye_and_restores_the_terminal(server, run_client, keys):
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    before = alice.termios()
    assert not before[3] & termios.ICANON  # readline has the terminal
    alice.type(keys)
    alice.expect("Server closed the session: goodbye.")
    assert alice.wait() == 0
    assert_cooked(alice.termios())
    server.wait_log("quit")


def test_nick_is_asked_for_when_not_given(server, run_client):
    taken = server.connect(nick="taken")  # noqa: F841 (holds the nick)
    alice = run_client("--no-color")
    alice.expect("Choose a nick")
    alice.expect("nick> ")
    alice.type("taken\r")
    alice.expect("[nick-taken]")
    alice.type("alice\r")
    alice.expect("You are alice.")
    alice.expect("alice> ")
    alice.type("\x03")
    assert alice.wait() == 0


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_server_going_away_is_reported_and_exits_non_zero(server, run_client, how):
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("half")
    alice.expect("half")
    server.stop(how)
    alice.expect("Disconnected: ")
    assert alice.wait() == 3
    assert_cooked(alice.termios())


def test_colour_on_a_terminal_and_none_with_no_color(server, run_client, tmp_path):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice")
    alice.expect("alice> ")
    bob.send("/msg alice hi")
    alice.expect("hi")
    assert "\x1b[35m[private]\x1b[0m" in alice.raw.decode()
    alice.type("\x03")
    assert alice.wait() == 0

    plain = run_client("--nick", "carol", env=client_env(tmp_path, NO_COLOR="1"))
    plain.expect("carol> ")
    bob.send("/msg carol hi")
    plain.expect("[private] bob: hi")
    assert "\x1b[35m" not in plain.raw.decode()
    plain.type("\x03")
    assert plain.wait() == 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connecting is refused
    return port


def run_piped(port, stdin, *args, tmp_path, timeout=TIMEOUT * 2):
    return subprocess.run(
        [sys.executable, "-m", "tcpchat.client", "--port", str(port)] + list(args),
        input=stdin.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=client_env(tmp_path), cwd=REPO, timeout=timeout,
    )


def test_cannot_connect_is_one_line_and_non_zero(tmp_path):
    port = free_port()
    p = run_piped(port, "", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 3
    assert p.stderr.decode() == "cannot connect to 127.0.0.1:%d: Connection refused\n" % port
    assert p.stdout == b""


def test_cannot_connect_on_a_terminal_too(run_client):
    alice = run_client("--nick", "alice", port=free_port())
    alice.expect("cannot connect to 127.0.0.1:")
    assert alice.wait() == 3
    assert "Traceback" not in alice.text()


def test_piped_messages_delivered_exit_0(server, tmp_path):
    bob = server.connect(nick="bob")  # line mode: delivered once written
    carol = server.connect(framed=True, nick="carol")

    script = tmp_path / "input"
    script.write_text("/msg bob build is green\n/msg carol build is green\n")
    with open(str(script), "rb") as stdin:
        p = subprocess.Popen(
            [sys.executable, "-m", "tcpchat.client", "--port", str(server.port), "--nick", "ci"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=client_env(tmp_path), cwd=REPO)
    # carol is a framed client that acks what it gets, like our own client.
    msg = carol.expect("MSG ")
    carol.send("/ack " + msg.split(" ")[1])
    out, err = p.communicate(timeout=TIMEOUT * 2)
    assert p.returncode == 0, out.decode() + err.decode()
    assert bob.expect("MSG ").endswith(" ci bob build is green")
    text = out.decode()
    assert '"build is green" delivered to bob' in text
    assert '"build is green" delivered to carol' in text
    assert "\x1b" not in text  # plain output when not a terminal


def test_piped_with_a_missing_recipient_exits_1(server, tmp_path):
    bob = server.connect(nick="bob")
    p = run_piped(server.port, "/msg bob hi\n/msg zed hi\n", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 1
    out = p.stdout.decode()
    assert '"hi" delivered to bob' in out
    assert 'message "hi" to zed: ' in out and "[no-such-user]" in out
    bob.expect("MSG ")


def test_piped_waits_a_bounded_time_for_receipts(server, tmp_path):
    silent = server.connect(framed=True, nick="silent")  # never acks
    started = time.monotonic()
    p = run_piped(server.port, "/msg silent hello\n", "--nick", "ci", "--wait", "1",
                  tmp_path=tmp_path)
    assert p.returncode == 1
    assert time.monotonic() - started < TIMEOUT
    assert '#' in p.stdout.decode() and "delivery not confirmed" in p.stdout.decode()
    silent.expect("MSG ")


def test_piped_taken_nick_exits_1_without_sending(server, tmp_path):
    bob = server.connect(nick="bob")
    ci = server.connect(nick="ci")  # noqa: F841 (holds the nick)
    p = run_piped(server.port, "/msg bob should not go\n", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 1
    assert "[nick-taken]" in p.stdout.decode()
    assert all(not m.startswith("MSG") for m in bob.quiet(0.3))


def test_version_and_help(tmp_path):
    p = run_piped(1, "", "--version", tmp_path=tmp_path)
    from tcpchat import __version__
    assert p.stdout.decode().strip() == "tcpchat-client " + __version__
    p = run_piped(1, "", "--help", tmp_path=tmp_path)
    assert "--wait SECONDS" in p.stdout.decode() and "--ip" in p.stdout.decode()


def test_window_resize_and_wide_characters_keep_the_line_intact(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("/msg bob 日本語 ")
    alice.expect("日本語 ")
    # The kernel sends SIGWINCH to the client when its pty changes size.
    fcntl.ioctl(alice.master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    bob.send("/msg alice \u4f60\u597d \U0001F600")
    alice.expect("[private] bob: \u4f60\u597d \U0001F600")
    alice.expect("alice> /msg bob 日本語 ")
    alice.type("ok\r")
    assert bob.expect("MSG ").endswith(" alice bob 日本語 ok")
    alice.expect('"日本語 ok" delivered to bob')
    alice.type("\x04")
    assert alice.wait() == 0


def test_without_readline_plain_lines_still_work(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color", trampoline=TRAMPOLINE_NO_READLINE)
    alice.expect("alice> ")
    assert alice.termios()[3] & termios.ICANON  # the tty's own line editing
    bob.send("/msg alice hi \x1b[2J")
    alice.expect("[private] bob: hi ^[[2J")
    alice.expect("alice> ")
    alice.type("/msg bob typed plainly\n")
    assert bob.expect("MSG ").endswith(" alice bob typed plainly")
    alice.expect('"typed plainly" delivered to bob')
    alice.type("\x04")
    alice.expect("Server closed the session: goodbye.")
    assert alice.wait() == 0


def test_full_server_refuses_with_one_line(tmp_path):
    with ServerProcess("--max-clients", "1") as srv:
        first = srv.connect(nick="first")  # holds the only place
        p = run_piped(srv.port, "", "--nick", "ci", tmp_path=tmp_path)
        first.close()
    assert p.returncode == 3
    err = p.stderr.decode()
    assert err.startswith("cannot connect to 127.0.0.1:%d: the server refused: server-full"
                          % srv.port)
    assert err.count("\n") == 1


def _state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid, wanted, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while _state(pid) not in wanted:
        assert time.monotonic() < deadline, "pid %d never reached state %s" % (pid, wanted)
        time.sleep(0.01)  # polling a state with a deadline, not synchronising by delay


def test_ctrl_z_gives_the_terminal_back_and_fg_resumes(server, run_client, tmp_path):
    bob = server.connect(nick="bob")
    pidfile = tmp_path / "pid"
    alice = run_client("--nick", "alice", "--no-color", trampoline=TRAMPOLINE_JOB,
                       env=client_env(tmp_path, PIDFILE=str(pidfile)))
    alice.expect("alice> ")
    pid = int(pidfile.read_text())
    alice.type("half")
    alice.expect("half")
    alice.type("\x1a")  # Ctrl-Z
    _wait_state(pid, "T")
    assert_cooked(alice.termios())  # the shell gets a normal terminal
    alice.expect_cursor("", "")  # and a fresh line to print its prompt on
    os.kill(pid, signal.SIGCONT)  # what fg does once it has the terminal
    alice.expect_cursor("alice> half", "alice> half")
    assert not alice.termios()[3] & termios.ICANON
    alice.type("way\r")
    assert bob.expect("MSG ").endswith(" alice * halfway")
    alice.type("\x04")
    assert alice.wait() == 0


def test_piped_quit_line_ends_the_input_but_outcomes_are_awaited(server, tmp_path):
    bob = server.connect(nick="bob")
    p = run_piped(server.port, "/msg bob one\n/quit\n/msg bob two\n", "--nick", "ci",
                  tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout.decode()
    assert '"one" delivered to bob' in p.stdout.decode()
    assert bob.expect("MSG ").endswith(" ci bob one")
    assert not [m for m in bob.quiet(0.3) if m.startswith("MSG")]


def test_piped_empty_input_leaves_at_once(server, tmp_path):
    started = time.monotonic()
    p = run_piped(server.port, "", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 0
    assert "You are ci." in p.stdout.decode()
    assert time.monotonic() - started < TIMEOUT


def test_one_ack_for_all_messages_shown_from_one_read(tmp_path):
    """The test plays the server, to see the exact frames the client sends."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, "-m", "tcpchat.client", "--port", str(port), "--nick", "ci",
         "--wait", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=client_env(tmp_path), cwd=REPO)
    conn = None
    try:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        conn.sendall(b"HELLO tcpchat/1 test server\n")
        buf = b""

        def next_frame():
            nonlocal buf
            deadline = time.monotonic() + TIMEOUT
            while True:
                if len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                    n = struct.unpack(">I", buf[:4])[0]
                    payload, buf = buf[4:4 + n], buf[4 + n:]
                    return payload.decode()
                assert time.monotonic() < deadline, "no frame from the client"
                chunk = conn.recv(4096)
                assert chunk, "the client hung up"
                buf += chunk

        assert conn.recv(1) == b"\x00"
        assert next_frame() == "/nick ci"

        def frame(text):
            return struct.pack(">I", len(text)) + text.encode()

        conn.sendall(frame("OK nick ci") + b"".join(
            frame("MSG %d bob ci hi %d" % (i, i)) for i in (7, 8, 9)))
        assert next_frame() == "/ack 7 8 9"
    finally:
        if conn is not None:
            conn.close()
        listener.close()
        client.kill()
        client.communicate()
