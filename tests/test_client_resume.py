"""The client across a lost connection (issue 10): its Session fed by hand,
then the whole program in a pty and with piped input, against the real
server (killed, or restarted with its state file) and against a server
the test plays, where the test must choose exactly what a resume brings.
"""

import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest

from serverproc import REPO, TIMEOUT, ServerProcess

from test_client import NEW_GREETING, WHEN, FakeServer, assert_cooked, client_env, texts
from test_client import start_client  # noqa: F401 (a fixture, used by its name)

from tcpchat.client import (HOLD_LINES, RECONNECT_FIRST, RECONNECT_MAX, Session, backoff,
                            keep_alive)
from tcpchat.render import Style


# --------------------------------------------------------------------------
# Session: what to send and show, no I/O
# --------------------------------------------------------------------------


def registered(nick="alice", token="T1", interactive=True, pair=None):
    """A Session registered as ``nick`` with resume token ``token``."""
    s = Session(Style(color=False), nick=nick, pair=pair, interactive=interactive)
    s.greeted(NEW_GREETING)
    s.start()
    s.server_message("SESSION %s 120" % token, WHEN)
    _, send = s.server_message("OK nick " + nick, WHEN)
    for wire in send:
        if wire == "/who":
            s.server_message("OK who 1", WHEN)
        elif wire.startswith("/pair "):
            s.server_message("OK pair " + wire[6:], WHEN)
    return s


def paired(s, partner="bob"):
    s.server_message("PAIRED " + partner, WHEN)
    return s


def test_a_loss_makes_unanswered_messages_unknown_and_keeps_sent_ones_open():
    s = paired(registered())
    s.user_line("one", WHEN)
    s.server_message("SENT 5 bob 1", WHEN)
    _, send = s.user_line("two", WHEN)
    assert send == ["/msg bob two"]
    s.user_line("/who", WHEN)
    show = s.lost(WHEN)
    assert [(line.kind, line.note) for line in show] == [
        ("mark", '09:05:07 ? "two" to bob: outcome unknown: lost with the connection '
                 'before the server answered'),
        ("notice", None)]
    assert show[0].text == ("09:05:07 [pair] alice: two  ? outcome unknown: lost with the "
                            "connection before the server answered")
    assert texts(show)[1] == "09:05:07 No answer to /who before the connection was lost."
    assert s.prompt() == "alice\u2192bob (offline)> "
    assert not s.ready() and not s.settled()
    assert [o.text for o in s.open_messages()] == ["one"]  # its outcome may still come


def test_lines_typed_offline_are_queued_and_go_after_the_resume():
    s = paired(registered())
    s.lost(WHEN)
    show, send = s.user_line("still there?", WHEN)
    assert send == [] and texts(show) == ["09:05:07 [pair] alice: still there?  queued"]
    show, send = s.user_line("/pair carol", WHEN)
    assert send == [] and texts(show) == [
        "09:05:07 Queued: /pair carol goes once the connection is back."]
    s.greeted(NEW_GREETING)
    show, send = s.rejoin(WHEN)
    assert (show, send) == ([], ["/resume T1", "/ping"])
    assert s.prompt() == "alice\u2192bob> " and not s.ready()
    assert s.user_line("more", WHEN)[1] == []  # held until the resume is done
    assert s.server_message("SESSION T2 120", WHEN) == ([], [])
    assert s.server_message("OK resume alice", WHEN) == ([], [])
    assert s.server_message("PAIRED bob", WHEN) == ([], [])
    show, send = s.server_message("PONG", WHEN)
    assert texts(show)[0] == ("09:05:07 Back as alice, paired with bob again: "
                              "sending the 3 lines typed meanwhile.")
    assert send == ["/msg bob still there?", "/pair carol", "/msg bob more"]
    assert s.resume_token == "T2" and s.ready()
    # The messages' marks go from queued to pending (redrawn if they can be).
    assert [line.kind for line in show[1:]] == ["mark", "mark"]
    assert s.server_message("SENT 9 bob 1", WHEN)[0][0].text.endswith("still there?  sent")


def test_plain_text_queued_while_unpaired_goes_to_everyone_whatever_the_resume_says():
    s = registered()
    s.lost(WHEN)
    s.user_line("hello all", WHEN)
    s.greeted(NEW_GREETING)
    s.rejoin(WHEN)
    s.server_message("OK resume alice", WHEN)
    show, _ = s.server_message("PAIRED bob", WHEN)  # a pair formed while away: news
    assert "You are paired with bob" in texts(show)[0]
    show, send = s.server_message("PONG", WHEN)
    assert send == ["/all hello all"]
    assert texts(show)[0] == "09:05:07 Back as alice: sending the 1 line typed meanwhile."
    assert s.partner == "bob"


def test_a_resume_shows_each_message_once_and_acks_it_again():
    s = paired(registered())
    show, send = s.server_message("MSG 7 bob alice first", WHEN)
    assert send == ["/ack 7"] and len(show) == 1
    s.user_line("mine", WHEN)
    s.server_message("SENT 8 bob 1", WHEN)
    s.user_line("/msg carol for carol", WHEN)
    s.server_message("SENT 9 carol 1", WHEN)
    s.lost(WHEN)
    s.greeted(NEW_GREETING)
    s.rejoin(WHEN)
    s.server_message("SESSION T2 120", WHEN)
    s.server_message("OK resume alice", WHEN)
    assert s.server_message("PAIRED bob", WHEN) == ([], [])
    # Our ack of 7 was lost with the connection: the server sends it again.
    assert s.server_message("MSG 7 bob alice first", WHEN) == ([], ["/ack 7"])
    show, send = s.server_message("MSG 10 bob alice while you were away", WHEN)
    assert send == ["/ack 10"] and "while you were away" in show[0].text
    # Outcomes told on resume, matched by id to the lines typed before.
    show, _ = s.server_message("DELIVERED 8 bob", WHEN)
    assert [(line.kind, line.note) for line in show] == [("mark", None)]
    assert show[0].text.endswith("mine  \u2713")
    show, _ = s.server_message("FAILED 9 carol left carol left", WHEN)
    assert show[0].note == ('09:05:07 \u2717 "for carol" NOT delivered to carol: carol left '
                            'before it arrived')
    show, send = s.server_message("PONG", WHEN)
    assert texts(show) == ["09:05:07 Back as alice, paired with bob again: 1 of your "
                           'messages delivered while you were away ("mine"), 1 failed (said '
                           'above), 1 new message for you above.']
    assert send == [] and s.settled()


def test_a_refused_token_registers_the_same_nick_again_and_asks_the_pair_again():
    s = paired(registered())
    s.user_line("did it arrive?", WHEN)
    s.server_message("SENT 4 bob 1", WHEN)
    s.server_message("MSG 3 bob alice hi", WHEN)
    s.lost(WHEN)
    s.user_line("typed offline", WHEN)
    s.greeted(NEW_GREETING)
    assert s.rejoin(WHEN)[1] == ["/resume T1", "/ping"]
    show, send = s.server_message("ERR bad-token unknown, used or expired token", WHEN)
    assert send == ["/nick alice"]
    assert texts(show)[0] == ("09:05:07 The server no longer has your session; registering "
                              "again as alice.")
    assert show[1].note == ('09:05:07 ? "did it arrive?" to bob: outcome unknown: the server '
                            'lost track of it')
    assert s.server_message("PONG", WHEN) == ([], [])
    s.server_message("SESSION T9 120", WHEN)
    show, send = s.server_message("OK nick alice", WHEN)
    assert texts(show)[0] == "09:05:07 Back as alice, in a new session; asking bob to pair again."
    assert send == ["/pair bob", "/msg bob typed offline"]
    assert s.prompt() == "alice> "  # not paired until bob says so again
    assert s.resume_token == "T9"
    # Ids start again on a server that lost its state: 3 is new there.
    assert s.server_message("MSG 3 carol * hello", WHEN)[0]
    assert not s.all_delivered()  # the unknown one counts against piped mode


def test_a_nick_taken_meanwhile_is_asked_for_again_and_then_the_pair_and_the_queue_go():
    s = paired(registered())
    s.lost(WHEN)
    s.user_line("queued for bob", WHEN)
    s.greeted(NEW_GREETING)
    s.rejoin(WHEN)
    s.server_message("ERR bad-token gone", WHEN)
    s.server_message("PONG", WHEN)
    show, send = s.server_message("ERR nick-taken alice is taken", WHEN)
    assert send == []
    assert texts(show) == ["09:05:07 Not done: /nick alice: alice is taken [nick-taken]",
                           "09:05:07 Type the nick you want."]
    assert s.prompt() == "nick> " and s.asking_nick()
    assert s.user_line("alice2", WHEN) == ([], ["/nick alice2"])
    show, send = s.server_message("OK nick alice2", WHEN)
    assert texts(show)[0] == ("09:05:07 Back as alice2, in a new session; asking bob to pair "
                              "again.")
    assert send == ["/pair bob", "/msg bob queued for bob"]


def test_a_server_without_sessions_gets_the_nick_again():
    s = Session(Style(color=False), nick="alice")
    s.greeted(NEW_GREETING)
    s.start()
    s.server_message("OK nick alice", WHEN)  # no SESSION: resume is off there
    s.lost(WHEN)
    s.greeted(NEW_GREETING)
    show, send = s.rejoin(WHEN)
    assert send == ["/nick alice"]
    assert texts(show) == ["09:05:07 The server keeps no sessions; registering again as alice."]


def test_lost_before_registering_starts_over():
    s = Session(Style(color=False), nick="alice")
    s.greeted(NEW_GREETING)
    assert s.start() == ["/nick alice"]
    s.lost(WHEN)
    s.greeted(NEW_GREETING)
    show, send = s.rejoin(WHEN)
    assert send == ["/nick alice"] and texts(show) == ["09:05:07 Connected again."]
    asked = Session(Style(color=False))
    asked.greeted(NEW_GREETING)
    asked.lost(WHEN)
    assert asked.prompt() == "nick (offline)> "
    assert asked.user_line("bob", WHEN)[1] == []  # the nick, held
    asked.greeted(NEW_GREETING)
    assert asked.rejoin(WHEN)[1] == ["/nick bob"]


def test_what_is_held_is_bounded_and_each_line_beyond_is_refused_in_words():
    s = registered()
    s.lost(WHEN)
    for i in range(HOLD_LINES):
        assert s.user_line("line %d" % i, WHEN)[1] == []
    show, send = s.user_line("one too many", WHEN)
    assert send == [] and texts(show) == [
        "09:05:07 [all] alice: one too many  \u2717 not sent: %d lines already wait for the "
        "connection" % HOLD_LINES]
    assert "already wait" in texts(s.user_line("/who", WHEN)[0])[0]
    # Piped input is bounded by not reading stdin while offline instead.
    piped = registered(interactive=False)
    piped.lost(WHEN)
    for i in range(HOLD_LINES + 5):
        piped.user_line("line %d" % i, WHEN)
    piped.greeted(NEW_GREETING)
    piped.rejoin(WHEN)
    piped.server_message("OK resume alice", WHEN)
    assert len(piped.server_message("PONG", WHEN)[1]) == HOLD_LINES + 5


def test_what_never_went_is_named_at_exit():
    s = registered()
    s.lost(WHEN)
    s.user_line("unsent", WHEN)
    s.user_line("/pair bob", WHEN)
    assert texts(s.summary(WHEN)) == [
        "09:05:07 /pair bob was not sent: typed while the connection was down.",
        '09:05:07 "unsent" was not sent: typed while the connection was down']


def test_quit_while_offline_sends_nothing_and_restarting_is_said_plainly():
    s = registered()
    show, _ = s.server_message("BYE server restarting", WHEN)
    assert texts(show) == ["09:05:07 The server is restarting."] and s.restarting
    s.lost(WHEN)
    assert s.user_line("/quit", WHEN) == ([], []) and s.leaving
    no = Session(Style(color=False), nick="alice", reconnect=False)
    assert texts(no.server_message("BYE server restarting", WHEN)[0]) == [
        "09:05:07 The server ended the session: server restarting."]


def test_a_register_timeout_is_an_ending_not_a_loss():
    # The Client reconnects after a loss unless the server ended on purpose.
    s = Session(Style(color=False))
    s.greeted(NEW_GREETING)
    s.server_message("ERR timeout no /nick within 60 s, closing", WHEN)
    assert s.bye and not s.restarting


def test_the_token_never_reaches_the_screen_even_in_an_error():
    s = registered(token="s3cr3t")
    s.lost(WHEN)
    s.greeted(NEW_GREETING)
    s.rejoin(WHEN)
    show, _ = s.server_message("ERR usage what?", WHEN)
    assert "s3cr3t" not in " ".join(texts(show))


def test_many_deliveries_while_away_are_counted_and_the_first_few_named():
    s = registered()
    for i in range(5):
        s.user_line("/msg bob number %d" % i, WHEN)
        s.server_message("SENT %d bob 1" % (i + 1), WHEN)
    s.lost(WHEN)
    s.greeted(NEW_GREETING)
    s.rejoin(WHEN)
    s.server_message("OK resume alice", WHEN)
    for i in range(5):
        s.server_message("DELIVERED %d bob" % (i + 1), WHEN)
    show, _ = s.server_message("PONG", WHEN)
    assert texts(show) == ['09:05:07 Back as alice: 5 of your messages delivered while you '
                           'were away ("number 0", "number 1", "number 2", ...).']
    assert s.all_delivered()


def test_backoff_doubles_to_a_ceiling_with_jitter():
    rnd = random.Random(1)
    waits = [backoff(n, rnd) for n in range(12)]
    assert RECONNECT_FIRST * 0.75 <= waits[0] <= RECONNECT_FIRST * 1.25
    assert all(RECONNECT_MAX * 0.75 <= w <= RECONNECT_MAX * 1.25 for w in waits[6:])
    assert waits[3] > waits[0] * 4
    assert len({backoff(2, rnd) for _ in range(20)}) > 1  # not all at once
    assert backoff(10 ** 6, rnd) <= RECONNECT_MAX * 1.25


def test_a_connection_that_dies_silently_is_found_by_keepalive():
    import socket
    with socket.socket() as sock:
        keep_alive(sock, 30)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 60000


# --------------------------------------------------------------------------
# The whole client: in a pty and piped, against a server the test plays
# --------------------------------------------------------------------------


class DroppingServer(FakeServer):
    """The test's server, which can also drop the client's connection and
    take the next one on the same port."""

    def drop(self):
        self.conn.close()
        self.conn = None
        self.buf = b""

    def frames(self, count):
        return [self.next_frame() for _ in range(count)]


@pytest.fixture
def fake():
    f = DroppingServer()
    yield f
    f.close()


def test_a_dropped_connection_resumes_in_a_pty_keeping_the_half_typed_line(
        fake, start_client):
    alice = start_client(fake.port, "--nick", "alice", "--no-color")
    fake.accept()
    assert fake.next_frame() == "/nick alice"
    fake.send("SESSION tok-1 120", "OK nick alice")
    assert fake.next_frame() == "/who"
    fake.send("USER bob free", "USER alice free", "OK who 2")
    fake.send("MSG 7 bob alice before the drop")
    alice.expect("[private] bob: before the drop")
    assert fake.next_frame() == "/ack 7"
    alice.type("one\r")
    assert fake.next_frame() == "one"
    fake.send("SENT 8 * 1")
    alice.expect_row_above_prompt("[all] alice: one  sent")
    alice.type("two\r")
    assert fake.next_frame() == "two"  # and never answered
    alice.expect_row_above_prompt("[all] alice: two  \u2026")

    fake.drop()
    alice.expect("[all] alice: two  ? outcome unknown: lost with the connection before "
                 "the server answered")
    alice.expect("Connection lost: the server closed the connection. Reconnecting; "
                 "Ctrl-C stops. Lines you type meanwhile go once back.")
    alice.expect("alice (offline)> ")
    alice.type("typed while offline\r")
    alice.expect("[all] alice: typed while offline  queued")
    alice.type("half")
    alice.expect_cursor("alice (offline)> half", "alice (offline)> half")

    fake.accept()
    assert fake.frames(2) == ["/resume tok-1", "/ping"]
    fake.send("SESSION tok-2 120", "OK resume alice", "MSG 7 bob alice before the drop",
              "MSG 9 bob alice while away", "DELIVERED 8 * 1", "PONG")
    # The line held goes once the resume is through; 7 is acked again.
    assert fake.frames(2) == ["/all typed while offline", "/ack 7 9"]
    alice.expect('Back as alice: 1 of your messages delivered while you were away ("one"), '
                 "1 new message for you above, sending the 1 line typed meanwhile.")
    alice.expect_cursor("alice> half", "alice> half")
    fake.send("SENT 10 * 1", "DELIVERED 10 * 1")
    alice.expect('\u2713 "typed while offline" delivered to everyone (1)')
    text = alice.text()
    assert text.count("before the drop") == 1 and "[private] bob: while away" in text
    assert "tok-" not in text  # the token never reaches the screen

    # Lost again: the newest token is the one used.
    fake.drop()
    alice.expect("Reconnecting")
    fake.accept()
    assert fake.frames(2) == ["/resume tok-2", "/ping"]
    fake.send("SESSION tok-3 120", "OK resume alice", "PONG")
    alice.expect("Back as alice.")
    alice.expect_cursor("alice> half", "alice> half")
    alice.type(" done\r")
    assert fake.next_frame() == "half done"
    fake.send("SENT 11 * 1", "DELIVERED 11 * 1")
    alice.expect_row_above_prompt("[all] alice: half done  \u2713 1")
    alice.type("\x04")
    assert fake.next_frame() == "/quit"
    fake.send("BYE goodbye")
    assert alice.wait() == 0
    assert_cooked(alice.termios())


def test_ctrl_c_while_reconnecting_stops_even_in_the_middle_of_a_try(fake, start_client):
    alice = start_client(fake.port, "--nick", "alice", "--no-color")
    fake.accept()
    fake.register("alice")
    alice.expect("Nobody else is here yet.")
    fake.drop()
    alice.expect("Reconnecting; Ctrl-C stops.")
    # The listener takes the connection and never greets: the client's
    # try waits for a greeting that does not come, and Ctrl-C ends it.
    assert select.select([fake.listener], [], [], TIMEOUT)[0], "no reconnect try"
    alice.type("half")
    alice.type("\x03")
    alice.expect("Stopped reconnecting (the connection was lost: the server closed the "
                 "connection).")
    assert alice.wait() == 3
    assert "Cannot reconnect yet" not in alice.text()  # not waited out: interrupted
    assert_cooked(alice.termios())


def stderr_until(p, text, timeout=TIMEOUT):
    """Read the client's stderr until ``text`` has come; return it all."""
    deadline = time.monotonic() + timeout
    seen = b""
    fd = p.stderr.fileno()
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], seen
        chunk = os.read(fd, 65536)
        assert chunk, seen
        seen += chunk
    return seen


def finish(p, timeout=TIMEOUT):
    """``(stdout, stderr)`` once the client has exited, killing it if it
    does not within ``timeout``; its stdin is closed first (communicate
    cannot be given a stdin the test closed itself)."""
    if p.stdin is not None:
        if not p.stdin.closed:
            p.stdin.close()
        p.stdin = None
    try:
        return p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def stop(p):
    if p.poll() is None:
        p.kill()
        p.wait()


def run_piped_client(port, *args, tmp_path):
    return subprocess.Popen(
        [sys.executable, "-m", "tcpchat.client", "--port", str(port)] + list(args),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=client_env(tmp_path), cwd=REPO)


def test_piped_input_resumes_within_wait_and_exits_0_when_all_arrived(fake, tmp_path):
    p = run_piped_client(fake.port, "--nick", "ci", "--wait", str(TIMEOUT), tmp_path=tmp_path)
    try:
        fake.accept()
        assert fake.next_frame() == "/nick ci"
        fake.send("SESSION tok-p 120", "OK nick ci")
        p.stdin.write(b"/msg bob build is green\n")
        p.stdin.flush()
        assert fake.next_frame() == "/msg bob build is green"
        fake.send("SENT 3 bob 1")
        fake.drop()
        seen = stderr_until(p, b"Reconnecting for up to 10 s.")
        p.stdin.write(b"/msg bob and stays green\n")  # read once back
        p.stdin.close()
        fake.accept()
        assert fake.frames(2) == ["/resume tok-p", "/ping"]
        fake.send("SESSION tok-q 120", "OK resume ci", "DELIVERED 3 bob", "PONG")
        assert fake.next_frame() == "/msg bob and stays green"
        fake.send("SENT 4 bob 1", "DELIVERED 4 bob")
        assert fake.next_frame() == "/quit"
        fake.send("BYE goodbye")
        out, err = finish(p)
    finally:
        stop(p)
    err = (seen + err).decode()
    assert p.returncode == 0, err
    assert '"build is green" delivered to bob' in err
    assert '"and stays green" delivered to bob' in err
    assert out == b""


def test_piped_input_with_an_unknown_outcome_exits_1(fake, tmp_path):
    p = run_piped_client(fake.port, "--nick", "ci", tmp_path=tmp_path)
    try:
        fake.accept()
        assert fake.next_frame() == "/nick ci"
        fake.send("SESSION tok-p 120", "OK nick ci")
        p.stdin.write(b"/msg bob did this get there\n")
        p.stdin.flush()  # the input goes on: the client must come back
        assert fake.next_frame() == "/msg bob did this get there"
        fake.drop()  # before any answer
        fake.accept()
        assert fake.frames(2) == ["/resume tok-p", "/ping"]
        fake.send("SESSION tok-q 120", "OK resume ci", "PONG")
        p.stdin.close()
        assert fake.next_frame() == "/quit"
        fake.send("BYE goodbye")
        _, err = finish(p)
    finally:
        stop(p)
    assert p.returncode == 1
    assert ('? "did this get there" to bob: outcome unknown: lost with the connection '
            'before the server answered') in err.decode()


def test_piped_input_gives_up_after_wait_with_status_3(fake, tmp_path):
    p = run_piped_client(fake.port, "--nick", "ci", "--wait", "1", tmp_path=tmp_path)
    try:
        fake.accept()
        assert fake.next_frame() == "/nick ci"
        fake.send("SESSION tok-p 120", "OK nick ci")
        p.stdin.write(b"/msg bob hello\n")
        p.stdin.flush()
        assert fake.next_frame() == "/msg bob hello"
        fake.send("SENT 3 bob 1")
        fake.close()  # the listener too: every try is refused
        _, err = finish(p)
    finally:
        stop(p)
    assert p.returncode == 3
    err = err.decode()
    assert "Cannot reconnect yet: Connection refused; trying again." in err
    assert "Stopped reconnecting" in err
    assert '"hello" to bob: delivery not confirmed' in err


# --------------------------------------------------------------------------
# The whole client against the real server
# --------------------------------------------------------------------------


def test_a_server_restart_with_its_state_file_is_a_blip_in_a_pty(tmp_path, start_client):
    path = str(tmp_path / "server-state")
    with ServerProcess("--state-file", path) as srv:
        port = srv.port
        bob = srv.connect(framed=True)
        bob.send("/nick bob")
        token = bob.expect("SESSION").split()[1]
        bob.expect("OK nick bob")
        alice = start_client(port, "--nick", "alice", "--pair", "bob", "--no-color")
        bob.expect("PAIR-REQUEST alice")
        bob.send("/pair alice")
        alice.expect("You are paired with bob")
        alice.type("before the restart\r")
        assert bob.expect("MSG ") == "MSG 1 alice bob before the restart"  # never acked
        alice.expect_row_above_prompt("[pair] alice: before the restart  sent")
        alice.type("half")
        alice.expect_cursor("alice\u2192bob> half", "alice\u2192bob> half")
        assert srv.stop() == 0
        bob.close()
    alice.expect("The server is restarting.")
    alice.expect("Reconnecting; Ctrl-C stops.")
    assert "Connection lost" not in alice.text()  # a planned restart is no loss
    with ServerProcess("--state-file", path, "--port", str(port)) as srv2:
        alice.expect("Back as alice, paired with bob again.")
        alice.expect_cursor("alice\u2192bob> half", "alice\u2192bob> half")
        bob2 = srv2.connect(framed=True)
        bob2.send("/resume " + token)
        bob2.expect("OK resume bob")
        assert bob2.expect("MSG ") == "MSG 1 alice bob before the restart"
        bob2.send("/ack 1")
        alice.expect('\u2713 "before the restart" delivered to bob')
        alice.type(" and after\r")
        assert bob2.expect("MSG ") == "MSG 2 alice bob half and after"
        alice.expect_cursor("alice\u2192bob>", "alice\u2192bob> ")
        alice.type("\x04")
        assert alice.wait() == 0
        bob2.close()


def test_a_killed_server_means_a_new_session_and_unknown_outcomes(tmp_path, start_client):
    with ServerProcess() as srv:
        port = srv.port
        bob = srv.connect(framed=True, nick="bob")  # never acks
        alice = start_client(port, "--nick", "alice", "--pair", "bob", "--no-color")
        bob.expect("PAIR-REQUEST alice")
        bob.send("/pair alice")
        alice.expect("You are paired with bob")
        alice.type("are you there?\r")
        bob.expect("MSG 1 alice bob are you there?")
        alice.expect_row_above_prompt("are you there?  sent")
        srv.stop(signal.SIGKILL)
        bob.close()
    alice.expect("Connection lost: ")
    alice.type("half")
    with ServerProcess("--port", str(port)):
        alice.expect("The server no longer has your session; registering again as alice.")
        alice.expect('"are you there?" to bob: outcome unknown: the server lost track of it')
        alice.expect("Back as alice, in a new session; asking bob to pair again.")
        alice.expect("Not done: /pair bob: no user bob [no-such-user]")
        alice.expect_cursor("alice> half", "alice> half")
        alice.type("\x03")  # clears the half-typed line, as ever
        alice.expect_cursor("alice>", "alice> ")
        alice.type("\x04")
        assert alice.wait() == 0


def test_no_reconnect_keeps_the_old_ending(tmp_path):
    with ServerProcess() as srv:
        p = run_piped_client(srv.port, "--nick", "ci", "--no-reconnect", tmp_path=tmp_path)
        try:
            srv.wait_log("registered as ci")
            srv.stop(signal.SIGKILL)
            _, err = finish(p)
        finally:
            stop(p)
    assert p.returncode == 3
    assert "Disconnected: " in err.decode() and "Reconnecting" not in err.decode()

