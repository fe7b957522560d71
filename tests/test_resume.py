"""Resume: a lost connection or a restart loses nothing (issue 10).

The core is driven by feeding bytes, as in test_chat; the state file is
written and read for real; the last tests run the real server.
"""

import logging
import os
import signal
import socket
import struct

import pytest

from serverproc import HOST, TIMEOUT, ServerProcess

from test_chat import Net, pair

from tcpchat import state


def resumable_net(**limits):
    limits.setdefault("resume_time", 120)
    return Net(**limits)


def register(n, nick, framed=False):
    """A registered client and its resume token."""
    c = n.connect(framed=framed)
    c.send("/nick " + nick)
    got = c.read()
    assert got[0].startswith("SESSION ") and got[-1] == "OK nick " + nick, got
    token, seconds = got[0].split()[1:]
    assert seconds == "120"
    return c, token


def resume(n, token, framed=False):
    c = n.connect(framed=framed)
    c.send("/resume " + token)
    return c, c.read()


def lose(n, c, reason="connection lost: reset"):
    n.chat.disconnect(c.s, reason)
    n.pump()


def test_session_token_comes_before_ok_and_is_long_and_url_safe():
    n = resumable_net()
    c, token = register(n, "alice")
    assert len(token) >= 22  # 128 bits in base64url
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    _, other = register(n, "bob")
    assert other != token


def test_resume_after_a_reset_delivers_what_was_sent_meanwhile():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob")
    a.read()
    pair(a, b)
    lose(n, b)
    assert a.read() == ["AWAY bob"]  # not UNPAIRED, not LEFT
    a.send("are you there?")  # still paired: to bob, held
    a.send("/msg bob second")
    assert a.read() == ["SENT 1 bob 1", "SENT 2 bob 1"]
    a.send("/who")
    assert a.read()[:2] == ["USER alice paired", "USER bob away"]
    b2, got = resume(n, token)
    assert got[0].startswith("SESSION ") and got[0].split()[1] != token
    assert got[1:] == ["OK resume bob", "PAIRED alice",
                       "MSG 1 alice bob are you there?", "MSG 2 alice bob second"]
    assert a.read() == ["BACK bob", "DELIVERED 1 bob", "DELIVERED 2 bob"]
    b2.send("back!")
    assert a.read() == ["MSG 3 bob alice back!"]


def test_a_framed_recipient_gets_an_unacked_message_again_with_its_id():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob", framed=True)
    a.read()
    a.send("/msg bob one")
    assert b.read() == ["MSG 1 alice bob one"]
    lose(n, b)  # shown, perhaps, but never acked
    assert a.read() == ["SENT 1 bob 1", "AWAY bob"]
    b2, got = resume(n, token, framed=True)
    assert got[1:] == ["OK resume bob", "MSG 1 alice bob one"]
    b2.send("/ack 1")
    assert a.read() == ["BACK bob", "DELIVERED 1 bob"]


def test_outcomes_settled_while_away_are_told_on_resume():
    n = resumable_net()
    a, token = register(n, "alice")
    b, _ = register(n, "bob", framed=True)
    a.read()
    a.send("/msg bob hi")
    assert b.read() == ["MSG 1 alice bob hi"]
    a.send("/all everyone")
    lose(n, a)
    b.send("/ack 1 2")
    a2, got = resume(n, token)
    assert got[1:] == ["OK resume alice", "DELIVERED 1 bob", "DELIVERED 2 * 1"]


def test_the_window_ends_in_left_and_failed():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob")
    a.read()
    pair(a, b)
    lose(n, b)
    a.send("/msg bob into the void")
    n.later(119)
    assert a.read() == ["AWAY bob", "SENT 1 bob 1"]
    n.later(2)
    assert a.read() == ["UNPAIRED bob no resume within 120 s", "LEFT bob no resume within 120 s",
                        "FAILED 1 bob away-expired away, then left (no resume within 120 s)"]
    _, got = resume(n, token)
    assert got[0].startswith("ERR bad-token ")
    c = n.connect()
    c.send("/nick bob")  # the nick is free again
    assert c.read()[-1] == "OK nick bob"


def test_a_token_is_single_use_and_a_bad_one_leaves_the_connection_unregistered():
    n = resumable_net()
    a, token = register(n, "alice")
    lose(n, a)
    a2, got = resume(n, token)
    assert got[1] == "OK resume alice"
    lose(n, a2)
    c, got = resume(n, token)  # the old token: used
    assert got[0].startswith("ERR bad-token ")
    c.send("/resume " + "x" * 40)
    assert c.read()[0].startswith("ERR bad-token ")
    c.send("/ping")
    assert c.read() == ["PONG"]
    c.send("/msg alice hi")
    assert c.read()[0].startswith("ERR not-registered ")
    c.send("/nick carol")
    assert c.read()[-1] == "OK nick carol"


def test_quit_ends_the_session_and_voids_the_token():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob")
    a.read()
    b.send("/quit bye")
    assert a.read() == ["LEFT bob quit: bye"]
    _, got = resume(n, token)
    assert got[0].startswith("ERR bad-token ")


def test_the_nick_stays_taken_while_away():
    n = resumable_net()
    a, _ = register(n, "alice")
    lose(n, a)
    c = n.connect()
    c.send("/nick ALICE")
    assert c.read()[0].startswith("ERR nick-taken ")


def test_resume_replaces_a_half_open_connection():
    # The client saw its connection die; the server has not noticed yet.
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob", framed=True)
    a.read()
    a.send("/msg bob one")
    assert b.read() == ["MSG 1 alice bob one"]
    b2, got = resume(n, token, framed=True)
    assert got[1:] == ["OK resume bob", "MSG 1 alice bob one"]
    assert b.closed and b.s.closing == "replaced by a resumed session"
    b2.send("/ack 1")
    assert a.read()[-1] == "DELIVERED 1 bob"
    assert "AWAY bob" not in a.inbox + a.read()


def test_pair_requests_are_said_again_on_resume():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob")
    lose(n, b)
    a.send("/pair bob")
    _, got = resume(n, token)
    assert got[1:] == ["OK resume bob", "PAIR-REQUEST alice"]


def test_held_messages_are_bounded_by_max_queue():
    n = resumable_net(max_queue=4000)
    a, _ = register(n, "alice")
    b, token = register(n, "bob")
    a.read()
    lose(n, b)
    for i in range(20):
        a.send("/msg bob " + "x" * 500)
    failed = [m for m in a.read() if m.startswith("FAILED")]
    assert failed and all(m.split()[3] == "away-full" for m in failed)
    _, got = resume(n, token)
    held = [m for m in got if m.startswith("MSG")]
    assert held and len(held) + len(failed) == 20


def test_a_broadcast_to_an_away_user_waits_for_it():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, token = register(n, "bob", framed=True)
    c, _ = register(n, "carol")
    a.read(), b.read()
    lose(n, b)
    a.send("/all hello")
    assert a.read() == ["AWAY bob", "SENT 1 * 2"]  # carol has it; bob is away
    b2, got = resume(n, token, framed=True)
    assert "MSG 1 alice * hello" in got
    b2.send("/ack 1")
    assert a.read() == ["BACK bob", "DELIVERED 1 * 2"]


def test_resume_off_keeps_the_old_behaviour():
    n = Net(resume_time=0)
    a = n.connect("alice")
    b = n.connect("bob")
    a.read()
    b.send("/resume whatever")
    assert b.read()[0].startswith("ERR usage ")
    c = n.connect()
    c.send("/resume whatever")
    assert c.read()[0].startswith("ERR bad-token ")
    lose(n, b)
    assert a.read() == ["LEFT bob connection lost: reset"]


def test_tokens_never_reach_the_log(caplog):
    n = resumable_net()
    with caplog.at_level(logging.DEBUG, logger="test.chat"):
        a, token = register(n, "alice")
        lose(n, a)
        resume(n, token)
        resume(n, token)
    assert token not in caplog.text
    assert "resumed as alice" in caplog.text


# ------------------------------------------------------------ stopping


def test_shutting_down_tells_failed_before_bye():
    n = resumable_net()
    a, _ = register(n, "alice")
    b, _ = register(n, "bob", framed=True)
    c, _ = register(n, "carol")
    d, dtoken = register(n, "dave")
    for x in (a, b, c):
        x.read()
    a.send("/msg bob seen")  # written to bob, not acked
    assert b.read() == ["MSG 1 alice bob seen"]
    c.stalled = True
    n.chat.sent(c.s, 0)
    a.send("/msg carol unseen")  # stuck in carol's queue
    lose(n, d)
    a.send("/msg dave held")  # held for away dave
    a.read()
    n.chat.shutdown(n.chat.now)
    n.pump()
    got = a.read()
    assert sorted(got[:-1]) == [
        "FAILED 1 bob no-receipt the server stopped before it was confirmed",
        "FAILED 2 carol shutdown the server stopped before writing it",
        "FAILED 3 dave shutdown away, then left (server shutting down)"]
    assert got[-1] == "BYE server shutting down"
    # What carol was told nothing of is never written to her afterwards.
    n.unstall(c)
    assert not [m for m in c.read() if m.startswith("MSG")]


def test_restart_keeps_everything_through_the_state_file(tmp_path):
    n = resumable_net()
    a, atoken = register(n, "alice")
    b, btoken = register(n, "bob", framed=True)
    c, ctoken = register(n, "carol")
    a.read(), b.read()
    pair(a, b)
    a.send("for bob")  # to the partner: bob reads it, never acks
    assert b.read() == ["MSG 1 alice bob for bob"]
    d, dtoken = register(n, "dave", framed=True)
    c.send("/pair dave")
    d.send("/msg bob from dave")  # bob reads it, and acks it once dave is away
    assert b.read()[-1] == "MSG 2 dave bob from dave"
    lose(n, d)
    b.send("/ack 2")
    n.chat.shutdown(n.chat.now, restarting=True)
    n.pump()
    for x in (a, b, c):
        assert x.read()[-1] == "BYE server restarting"
        assert x.closed
    assert not [m for m in a.inbox if m.startswith("FAILED")]
    path = str(tmp_path / "state")
    size = state.save(path, n.chat.snapshot())
    assert size > 0 and os.stat(path).st_mode & 0o777 == 0o600

    m = resumable_net()  # the new server
    users, messages = m.chat.restore(state.load(path), m.chat.now)
    assert (users, messages) == (4, 1)
    b2, got = resume(m, btoken, framed=True)
    assert got[1:] == ["OK resume bob", "PAIRED alice", "MSG 1 alice bob for bob"]
    d2, got = resume(m, dtoken, framed=True)
    assert got[1:] == ["OK resume dave", "PAIR-REQUEST carol", "DELIVERED 2 bob"]
    a2, got = resume(m, atoken)
    assert got[1:] == ["OK resume alice", "PAIRED bob"]
    b2.send("/ack 1")
    assert a2.read() == ["DELIVERED 1 bob"]
    a2.send("/msg bob new")
    assert a2.read()[0] == "SENT 3 bob 1"  # ids go on, never reused
    n2 = m.connect()
    n2.send("/nick carol")
    assert n2.read()[0].startswith("ERR nick-taken ")  # carol is away, kept
    m.later(121)
    assert "LEFT carol no resume within 120 s" in a2.read()


def test_every_message_has_one_outcome_with_resume_on():
    """The randomized promise of test_chat, with users lost and resumed."""
    import random

    from test_chat import check_outcomes, settle

    for seed in range(8):
        rnd = random.Random(500 + seed)
        n = resumable_net(max_queue=3000, presence_limit=4, rate=300)
        clients, tokens, chat_sent = [], {}, {}
        for step in range(800):
            live = [c for c in clients if not c.closed]
            r = rnd.random()
            if r < 0.08 or len(live) < 2:
                c = n.connect(framed=rnd.random() < 0.5)
                c.send("/nick u%d" % len(clients))
                clients.append(c)
                chat_sent[c] = 0
                continue
            c = rnd.choice(live)
            nicks = ["u%d" % i for i in range(len(clients))]
            if r < 0.45:
                c.send("/msg %s m%d" % (rnd.choice(nicks), step))
                chat_sent[c] += 1
            elif r < 0.55:
                c.send("/all b%d" % step)
                chat_sent[c] += 1
            elif r < 0.62:
                c.send("/pair " + rnd.choice(nicks))
            elif r < 0.68:
                lose(n, c)
            elif r < 0.76:
                # A lost client comes back with its last token.
                gone = [x for x in clients if x.closed and tokens.get(x)]
                if gone:
                    old = rnd.choice(gone)
                    new = n.connect(framed=old.framed)
                    new.send("/resume " + tokens.pop(old))
                    clients.append(new)
                    chat_sent[new] = 0
            elif r < 0.78:
                n.later(rnd.choice((1, 30, 130)))
            elif r < 0.80:
                c.send("/quit")
            for x in clients:
                for m in x.inbox:
                    if m.startswith("SESSION "):
                        tokens[x] = m.split()[1]
            if c.framed and not c.closed and rnd.random() < 0.6:
                ids = [m.split()[1] for m in c.inbox if m.startswith("MSG ")]
                if ids:
                    c.send("/ack " + " ".join(ids))
        for _ in range(3):
            n.chat.work(n.chat.now + 10)
            n.later(200)
            settle(n, clients)
        resumed = sum(1 for c in clients for m in c.inbox if m.startswith("OK resume "))
        assert resumed > 0  # the run exercised resume
        # A resumed client may get outcomes for ids its old connection had
        # the SENT of: check the promise per user, over its connections.
        by_user = {}
        for c in clients:
            by_user.setdefault(_first_nick(c), []).append(c)
        merged = []
        for conns in by_user.values():
            m = _Merged(conns)
            merged.append(m)
            chat_sent[m] = 10 ** 6
        check_outcomes(merged, chat_sent)


class _Merged:
    """All connections of one user, as one inbox in time order (enough
    for the outcome check: SENT always precedes its outcome)."""

    def __init__(self, conns):
        self.inbox = [m for c in conns for m in c.inbox]
        self.closed = True  # connections came and went: check only what was said


def _first_nick(c):
    for m in c.inbox:
        if m.startswith("OK nick ") or m.startswith("OK resume "):
            return m.split()[2].lower()
    return id(c)


# ------------------------------------------------------------ the state file


def test_state_round_trip_and_mode(tmp_path):
    path = str(tmp_path / "s")
    data = {"next_id": 5, "users": [
        {"nick": "a", "token": "ab" * 32, "partner": "b", "asked": None, "held": [4],
         "told": ["DELIVERED 1 b"]},
        {"nick": "b", "token": None, "partner": "a", "asked": None, "held": [], "told": []}],
        "messages": [{"id": 4, "from": "b", "to": "a", "text": "hi \u2603\nthere",
                      "delivered": 0}]}
    state.save(path, data)
    assert state.load(path) == data
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(str(tmp_path)) == ["s"]  # no temporary file left


def test_a_missing_state_file_is_no_state(tmp_path):
    assert state.load(str(tmp_path / "none")) is None


@pytest.mark.parametrize("content", [
    b"", b"{", b"\xff\xfe", b"[]", b'{"format": "other", "version": 1}',
    b'{"format": "tcpchat-state", "version": 2, "next_id": 1, "users": [], "messages": []}',
    b'{"format": "tcpchat-state", "version": 1, "next_id": 1, "users": [{}], "messages": []}',
    b'{"format": "tcpchat-state", "version": 1, "next_id": 3, "users": [{"nick": "a", '
    b'"token": null, "partner": "ghost", "asked": null, "held": [], "told": []}], '
    b'"messages": []}',
    b'{"format": "tcpchat-state", "version": 1, "next_id": 3, "users": [{"nick": "a", '
    b'"token": null, "partner": null, "asked": null, "held": [7], "told": []}], '
    b'"messages": []}',
])
def test_a_damaged_state_file_is_refused_with_a_reason(tmp_path, content):
    path = tmp_path / "s"
    path.write_bytes(content)
    with pytest.raises(state.StateError) as e:
        state.load(str(path))
    assert str(e.value)
    aside = state.set_aside(str(path))
    assert os.path.exists(aside) and not path.exists()


# ------------------------------------------------------------ the real server


def test_a_reset_recipient_resumes_over_tcp():
    with ServerProcess() as srv:
        a = srv.connect(nick="alice")
        b = srv.connect(framed=True)
        b.send("/nick bob")
        token = b.expect("SESSION").split()[1]
        b.expect("OK nick bob")
        a.expect("JOINED bob")
        a.send("/msg bob before")
        b.expect("MSG 1 alice bob before")
        b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        b.close()  # reset, nothing acked
        a.expect("AWAY bob")
        a.send("/msg bob during")
        a.expect("SENT 2 bob 1")
        b2 = srv.connect(framed=True)
        b2.send("/resume " + token)
        assert b2.expect("SESSION").split()[1] != token
        assert b2.expect_next("OK resume") == "OK resume bob"
        assert b2.expect_next("MSG") == "MSG 1 alice bob before"
        assert b2.expect_next("MSG") == "MSG 2 alice bob during"
        b2.send("/ack 1 2")
        got = [a.expect("DELIVERED"), a.expect("DELIVERED")]
        assert sorted(got) == ["DELIVERED 1 bob", "DELIVERED 2 bob"]
        assert not [line for line in srv.log_lines() if token in line]


def test_sigterm_with_a_state_file_then_a_new_server_resumes_everyone(tmp_path):
    path = str(tmp_path / "state")
    with ServerProcess("--state-file", path) as srv:
        a = srv.connect(nick="alice")
        b = srv.connect(framed=True)
        b.send("/nick bob")
        token = b.expect("SESSION").split()[1]
        a.send("/msg bob unconfirmed")
        b.expect("MSG 1 alice bob unconfirmed")  # read, never acked
        a.expect("SENT 1 bob 1")
        atoken = None
        assert srv.stop() == 0
        assert a.expect("BYE") == "BYE server restarting"
        srv.wait_log("state saved to")
    assert os.path.exists(path)
    with ServerProcess("--state-file", path) as srv2:
        srv2.wait_log("restored 2 users and 1 messages")
        assert not os.path.exists(path)  # used once
        b2 = srv2.connect(framed=True)
        b2.send("/resume " + token)
        b2.expect("OK resume bob")
        assert b2.expect("MSG") == "MSG 1 alice bob unconfirmed"
        b2.send("/ack 1")
        b2.send("/who")
        assert b2.expect("USER alice") == "USER alice away"
        del atoken


def test_sigterm_without_a_state_file_says_failed_before_bye():
    with ServerProcess() as srv:
        a = srv.connect(nick="alice")
        b = srv.connect(framed=True, nick="bob")
        a.send("/msg bob never acked")
        b.expect("MSG 1 alice bob")
        a.expect("SENT 1 bob 1")
        srv.proc.send_signal(signal.SIGTERM)
        assert a.expect_next("FAILED").startswith("FAILED 1 bob no-receipt ")
        assert a.expect_next("BYE") == "BYE server shutting down"
        assert srv.proc.wait(TIMEOUT) == 0


def test_a_corrupt_state_file_starts_empty_with_a_warning(tmp_path):
    path = tmp_path / "state"
    path.write_bytes(b'{"format": "tcpchat-state", "version": 99}')
    with ServerProcess("--state-file", str(path)) as srv:
        line = srv.wait_log("unusable")
        assert "WARNING" in line and "version 99" in line
        aside = [p for p in os.listdir(str(tmp_path)) if p.startswith("state.bad-")]
        assert aside
        c = srv.connect(nick="fresh")
        c.send("/who")
        assert c.expect("OK who") == "OK who 1"
