"""The chat core, driven by feeding bytes: no socket, no clock, no sleep.

``Net`` plays the I/O shell: it delivers what each session queued to that
client's inbox (as if the socket took everything), except for clients told
to stall, whose bytes stay queued, like a peer that stopped reading.
"""

import logging

import pytest

from tcpchat import chat as chat_mod
from tcpchat.chat import Chat, Limits
from tcpchat.framing import FrameDecoder, LineDecoder, encode_frame
from tcpchat.protocol import COMMANDS, ERROR_CODES, HELP, SERVER_KEYWORDS, greeting


class Client:
    def __init__(self, net, session, framed):
        self.net = net
        self.s = session
        self.framed = framed
        self.decoder = FrameDecoder(1 << 20) if framed else LineDecoder(1 << 20)
        self.inbox = []
        self.stalled = False
        self.partial = False
        self.closed = False

    def send(self, text):
        data = encode_frame(text.encode()) if self.framed else text.encode() + b"\n"
        self.send_raw(data)

    def send_raw(self, data):
        self.net.chat.receive(self.s, data)
        self.net.pump()

    def read(self):
        """Every message that arrived since the last read."""
        self.net.pump()
        got, self.inbox = self.inbox, []
        return got

    def take(self, data):
        # The greeting is always a line, whatever the framing.
        if self.s.written == 0 and data.startswith(b"HELLO"):
            line, _, data = data.partition(b"\n")
            self.inbox.append(line.decode())
        for item in self.decoder.feed(data):
            self.inbox.append(item.decode())


class Net:
    def __init__(self, **limits):
        # Resume has its own tests; elsewhere a lost connection is a user
        # who leaves, as with --resume-time 0.
        limits.setdefault("resume_time", 0)
        self.chat = Chat(Limits(**limits), logging.getLogger("test.chat"))
        self.clients = {}
        self.port = 40000

    def connect(self, nick=None, framed=False):
        self.port += 1
        s = self.chat.connect("127.0.0.1:%d" % self.port, self.chat.now)
        c = Client(self, s, framed)
        self.clients[s] = c
        self.pump()
        assert c.read() == [greeting(self.chat.limits.max_line, self.chat.limits.max_frame)]
        if framed:
            c.send_raw(b"\x00")
        if nick:
            c.send("/nick " + nick)
            assert c.read() == ["OK nick " + nick]
        return c

    def pump(self):
        """Write out everything the chat queued, as a fast network would."""
        chat = self.chat
        for _ in range(1000):
            if chat.backlog:
                chat.work(chat.now)
            pending, chat.flushable = chat.flushable, []
            for s in pending:
                c = self.clients.get(s)
                if c is None or s.gone or not s.out:
                    continue
                if c.stalled:
                    chat.sent(s, 0)  # tried, and the peer took nothing
                    continue
                data = b"".join(bytes(chunk) for chunk in s.out)
                if c.partial and len(data) > 1:
                    data = data[:len(data) // 2]  # the kernel took half
                    if s not in chat.flushable:
                        chat.flushable.append(s)  # the rest: next time
                c.take(data)
                chat.sent(s, len(data))
            for s in chat.to_close:
                self.clients[s].closed = True
            chat.to_close = []
            if not chat.flushable and not chat.backlog:
                return
        raise AssertionError("output never settled")

    def unstall(self, c):
        c.stalled = False
        self.chat.flushable.append(c.s)
        self.pump()

    def later(self, seconds):
        self.chat.expire(self.chat.now + seconds)
        self.pump()


@pytest.fixture
def net():
    return Net()


def two(net, framed_a=False, framed_b=False):
    a = net.connect("alice", framed_a)
    b = net.connect("bob", framed_b)
    assert a.read() == ["JOINED bob"]
    return a, b


# ------------------------------------------------------------ registration


def test_nick_registers_and_others_see_joined(net):
    a = net.connect("alice")
    b = net.connect("Bob")
    assert a.read() == ["JOINED Bob"]
    assert b.read() == []


@pytest.mark.parametrize("name", ["1abc", "a b", "x" * 33, "al!ce", "-x", "ünï", "a\tb"])
def test_bad_nicks(net, name):
    c = net.connect()
    c.send("/nick " + name)
    assert c.read()[0].startswith("ERR bad-nick ")


def test_nick_edges_are_valid(net):
    c = net.connect()
    c.send("/nick " + "a" * 32)
    assert c.read() == ["OK nick " + "a" * 32]
    d = net.connect()
    d.send("/nick Z.9_-")
    assert d.read() == ["OK nick Z.9_-"]


def test_nick_is_unique_ignoring_case(net):
    net.connect("alice")
    c = net.connect()
    c.send("/nick ALICE")
    assert c.read() == ["ERR nick-taken alice is taken"]


def test_nick_without_name_is_usage(net):
    c = net.connect()
    c.send("/nick")
    assert c.read()[0].startswith("ERR usage")


def test_rename_tells_others_and_frees_the_old_nick(net):
    a, b = two(net)
    a.send("/nick carol")
    assert a.read() == ["OK nick carol"]
    assert b.read() == ["RENAMED alice carol"]
    c = net.connect("alice")
    assert c.s.nick == "alice"
    a.send("/nick CAROL")  # changing case of your own nick is allowed
    assert a.read() == ["JOINED alice", "OK nick CAROL"]


@pytest.mark.parametrize("text", ["hello", "/msg bob hi", "/all hi", "/pair bob", "/unpair",
                                  "/who", "/ack 1", "//slash", "/bogus", "/WHO"])
def test_only_open_commands_before_nick(net, text):
    net.connect("bob")
    c = net.connect()
    c.send(text)
    assert c.read()[0].startswith("ERR not-registered ")


def test_open_commands_before_nick(net):
    c = net.connect()
    c.send("/ping")
    c.send("/help")
    got = c.read()
    assert got[0] == "PONG"
    assert got[1:] == ["HELP " + line for line in HELP] + ["OK help %d" % len(HELP)]
    c.send(":quit:")
    assert c.read() == ["BYE goodbye"]
    assert c.closed


# ------------------------------------------------------------ messages


def test_private_message_line_mode_is_delivered_when_written(net):
    a, b = two(net)
    a.send("/msg bob hi there  bob")
    assert b.read() == ["MSG 1 alice bob hi there  bob"]
    assert a.read() == ["SENT 1 bob 1", "DELIVERED 1 bob"]


def test_receipts_of_one_write_reach_each_sender_in_order(net):
    # DELIVERED lines from one write are queued a run per sender: each
    # sender still reads its own outcomes, in the order they came about,
    # an /all's summary among them.
    a, b = two(net)
    c = net.connect("carol")
    a.read(), b.read()
    c.stalled = True
    a.send("/msg carol one")
    a.send("/msg carol two")
    a.send("/all three")
    b.send("/msg carol four")
    a.send("/msg carol five")
    assert b.read() == ["MSG 3 alice * three", "SENT 4 carol 1"]
    assert a.read() == ["SENT 1 carol 1", "SENT 2 carol 1", "SENT 3 * 2", "SENT 5 carol 1"]
    net.unstall(c)
    assert [m.split()[1] for m in c.read()] == ["1", "2", "3", "4", "5"]
    assert a.read() == ["DELIVERED 1 carol", "DELIVERED 2 carol", "DELIVERED 3 * 2",
                        "DELIVERED 5 carol"]
    assert b.read() == ["DELIVERED 4 carol"]


def test_one_ack_of_several_senders_tells_each_in_ack_order(net):
    a, b = two(net)
    c = net.connect("carol", framed=True)
    a.read(), b.read()
    a.send("/msg carol one")
    b.send("/msg carol two")
    a.send("/msg carol three")
    assert len(c.read()) == 3
    a.read(), b.read()
    c.send("/ack 3 2 1")
    assert c.read() == []
    assert a.read() == ["DELIVERED 3 carol", "DELIVERED 1 carol"]
    assert b.read() == ["DELIVERED 2 carol"]


def test_w_is_msg_and_commands_ignore_case(net):
    a, b = two(net)
    a.send("/W bob psst")
    assert b.read() == ["MSG 1 alice bob psst"]


def test_private_message_framed_is_delivered_on_ack_only(net):
    a, b = two(net, framed_b=True)
    a.send("/msg bob hi")
    assert b.read() == ["MSG 1 alice bob hi"]
    assert a.read() == ["SENT 1 bob 1"]
    b.send("/ack 1")
    assert b.read() == []  # a good receipt has no reply
    assert a.read() == ["DELIVERED 1 bob"]
    b.send("/ack 1")
    assert b.read()[0].startswith("ERR no-such-message ")
    b.send("/ack x")
    assert b.read()[0].startswith("ERR usage ")


def test_msg_errors(net):
    a, b = two(net)
    a.send("/msg alice me")
    a.send("/msg nobody hi")
    a.send("/msg bob")
    a.send("/msg bob   ")
    assert [m.split()[1] for m in a.read()] == ["self", "no-such-user", "usage", "usage"]
    assert b.read() == []


def test_every_chat_message_gets_one_answer_in_order(net):
    a, b = two(net)
    a.send_raw(b"/msg bob one\n/msg nobody two\n/all three\n/msg alice four\nfive\n")
    answers = [m for m in a.read() if m.split()[0] in ("SENT", "ERR")]
    assert answers == ["SENT 1 bob 1", "ERR no-such-user no user nobody", "SENT 2 * 1",
                       "ERR self that is you", "SENT 3 * 1"]


def test_broadcast_summary_is_one_line(net):
    a, b = two(net, framed_b=True)
    c = net.connect("carol")
    d = net.connect("dave", framed=True)
    a.read(), b.read(), c.read()
    a.send("/all hello everyone")
    assert a.read() == ["SENT 1 * 3"]
    assert c.read() == ["MSG 1 alice * hello everyone"]
    b.send("/ack 1")
    assert a.read() == []  # still waiting for dave
    d.send("/ack 1")
    assert a.read() == ["DELIVERED 1 * 3"]


def test_broadcast_counts_only_who_got_it(net):
    a, b = two(net, framed_b=True)
    c = net.connect("carol")
    a.read()
    a.send("hi all")
    assert a.read() == ["SENT 1 * 2"]
    b.send("/quit")
    assert a.read() == ["LEFT bob quit", "DELIVERED 1 * 1"]


def test_broadcast_alone_is_no_recipients(net):
    a = net.connect("alice")
    a.send("anyone?")
    a.send("/all anyone?")
    assert [m.split()[1] for m in a.read()] == ["no-recipients", "no-recipients"]


def test_blank_text_is_not_sent(net):
    a, b = two(net)
    a.send_raw(b"   \n\r\r\n\t\n")
    assert [m.split()[:2] for m in a.read()] == [["ERR", "usage"]] * 3
    assert b.read() == []


def test_double_slash_is_text(net):
    a, b = two(net)
    a.send("//shrug")
    assert b.read() == ["MSG 1 alice * /shrug"]


def test_unknown_command(net):
    a = net.connect("alice")
    a.send("/dance now")
    assert a.read() == ["ERR unknown-command /dance is not a command, try /help"]


def test_multiline_framed_message_reaches_line_peer_as_lines_with_one_id(net):
    a, b = two(net, framed_a=True)
    a.send("/msg bob first line\nsecond line\n\nlast")
    assert b.read() == ["MSG 1 alice bob first line", "MSG 1 alice bob second line",
                        "MSG 1 alice bob ", "MSG 1 alice bob last"]
    assert a.read() == ["SENT 1 bob 1", "DELIVERED 1 bob"]


def test_bad_utf8_is_an_error_and_the_connection_goes_on(net):
    a, b = two(net)
    a.send_raw(b"\xff\xfd\x18\n/msg bob caf\xc3\n/msg bob ok\n")
    got = a.read()
    assert got[0].startswith("ERR bad-utf8 ") and got[1].startswith("ERR bad-utf8 ")
    assert got[2:] == ["SENT 1 bob 1", "DELIVERED 1 bob"]


def test_bad_utf8_framed(net):
    a, b = two(net, framed_a=True)
    a.send_raw(encode_frame(b"\xc3("))
    assert a.read()[0].startswith("ERR bad-utf8")
    a.send("/ping")
    assert a.read() == ["PONG"]


def test_message_ids_are_unique_and_increasing(net):
    a, b = two(net)
    for _ in range(5):
        a.send("/msg bob x")
        b.send("/msg alice y")
    ids = [int(m.split()[1]) for m in a.read() + b.read() if m.startswith("SENT")]
    assert sorted(ids) == list(range(1, 11))


# ------------------------------------------------------------ pairs


def test_pairing_needs_both(net):
    a, b = two(net)
    a.send("/pair bob")
    assert a.read() == ["OK pair bob"]
    assert b.read() == ["PAIR-REQUEST alice"]
    b.send("/pair ALICE")
    assert b.read() == ["OK pair alice", "PAIRED alice"]
    assert a.read() == ["PAIRED bob"]
    a.send("just us")
    assert b.read() == ["MSG 1 alice bob just us"]
    assert a.read() == ["SENT 1 bob 1", "DELIVERED 1 bob"]


def pair(a, b):
    a.send("/pair " + b.s.nick)
    b.send("/pair " + a.s.nick)
    a.read(), b.read()


def test_plain_text_while_paired_skips_others(net):
    a, b = two(net)
    c = net.connect("carol")
    pair(a, b)
    c.read()
    a.send("secret")
    assert b.read() == ["MSG 1 alice bob secret"]
    assert not any(m.startswith("MSG") for m in c.read())
    a.send("/all public")  # /all still reaches everyone
    assert c.read() == ["MSG 2 alice * public"]


def test_pair_errors(net):
    a, b = two(net)
    c = net.connect("carol")
    a.read()
    a.send("/pair alice")
    a.send("/pair nobody")
    a.send("/pair")
    a.send("/unpair")
    assert [m.split()[1] for m in a.read()] == ["self", "no-such-user", "usage", "not-paired"]
    pair(a, b)
    c.send("/pair alice")
    assert c.read()[-1].startswith("ERR busy ")
    a.send("/pair carol")
    assert a.read()[-1].startswith("ERR busy ")
    a.send("/pair bob")
    assert a.read()[-1].startswith("ERR busy ")


def test_unpair_tells_the_partner(net):
    a, b = two(net)
    pair(a, b)
    a.send("/unpair")
    assert a.read() == ["OK unpair bob"]
    assert b.read() == ["UNPAIRED alice ended the pair"]
    # The first plain text after the pair ended was meant for the pair:
    # refused, not sent to everyone. The next one goes to everyone.
    a.send("my password is hunter2")
    assert a.read()[0].startswith("ERR not-paired your pair with bob has ended")
    b.send("still there?")
    assert b.read()[0].startswith("ERR not-paired your pair with alice has ended")
    assert b.read() == [] and a.read() == []
    a.send("public again")
    assert b.read() == ["MSG 1 alice * public again"]


def test_unpair_withdraws_a_request(net):
    a, b = two(net)
    a.send("/pair bob")
    a.send("/unpair")
    assert a.read() == ["OK pair bob", "OK unpair bob"]
    assert b.read() == ["PAIR-REQUEST alice", "UNPAIRED alice request withdrawn"]
    b.send("/pair alice")  # the request is gone: this is a new one
    assert b.read() == ["OK pair alice"]
    assert a.read() == ["PAIR-REQUEST bob"]


def test_partner_leaving_unpairs(net):
    a, b = two(net)
    pair(a, b)
    b.send("/quit gotta go")
    assert b.read() == ["BYE goodbye"]
    assert a.read() == ["UNPAIRED bob quit: gotta go", "LEFT bob quit: gotta go"]
    assert a.s.user.partner is None


def test_partner_lost_unpairs(net):
    a, b = two(net)
    pair(a, b)
    net.chat.disconnect(b.s, "connection lost: Connection reset by peer")
    net.pump()
    assert a.read() == ["UNPAIRED bob connection lost: Connection reset by peer",
                        "LEFT bob connection lost: Connection reset by peer"]


def test_who(net):
    a, b = two(net, framed_b=True)
    c = net.connect("carol")
    pair(a, c)
    b.send("/who")
    assert b.read()[-4:] == ["USER alice paired", "USER bob free", "USER carol paired",
                             "OK who 3"]
    a.send("/who")
    assert a.read()[-1] == "OK who 3"


def test_ping_token(net):
    a = net.connect("alice")
    a.send("/ping abc")
    a.send("/ping")
    assert a.read() == ["PONG abc", "PONG"]


# ------------------------------------------------------------ receipts


def test_one_ack_for_several_messages(net):
    a, b = two(net, framed_b=True)
    for i in range(3):
        a.send("/msg bob m%d" % i)
    assert len(b.read()) == 3
    b.send("/ack 3 1 9")
    assert b.read() == ["ERR no-such-message 9 not awaiting your receipt"]
    assert a.read()[-2:] == ["DELIVERED 3 bob", "DELIVERED 1 bob"]
    b.send("/ack 2 two")  # a malformed /ack is refused whole
    assert b.read()[0].startswith("ERR usage ")
    assert a.read() == []
    b.send("/ack 2")
    assert a.read() == ["DELIVERED 2 bob"]
    b.send("/ack")
    assert b.read()[0].startswith("ERR usage ")


def test_unacked_cap_fails_the_oldest(net):
    n = Net(max_unacked=2)
    a = n.connect("alice")
    b = n.connect("bob", framed=True)
    a.read()
    for i in range(3):
        a.send("/msg bob m%d" % i)
    assert a.read() == ["SENT 1 bob 1", "SENT 2 bob 1", "SENT 3 bob 1",
                        "FAILED 1 bob no-receipt more than 2 messages awaited its receipt"]
    b.send("/ack 2")
    b.send("/ack 3")
    assert a.read() == ["DELIVERED 2 bob", "DELIVERED 3 bob"]


def test_framed_recipient_leaving_fails_unacked(net):
    a, b = two(net, framed_b=True)
    a.send("/msg bob one")
    a.send("/msg bob two")
    b.send("/ack 1")
    b.send("/quit")
    got = a.read()
    # Written, never confirmed: the code says it may have been seen.
    assert "DELIVERED 1 bob" in got
    assert "FAILED 2 bob no-receipt left without confirming it (quit)" in got


def test_sender_gone_is_fine(net):
    a, b = two(net, framed_b=True)
    a.send("/msg bob one")
    a.send("/quit")
    b.send("/ack 1")
    assert b.read()[-1] == "LEFT alice quit"


# ------------------------------------------------------------ limits


def test_slow_consumer_is_dropped_and_senders_hear_failed():
    n = Net(max_queue=2000)
    a = n.connect("alice")
    b = n.connect("bob")
    c = n.connect("carol")
    a.read(), b.read()
    c.stalled = True
    sent = 0
    while not c.closed and sent < 100:
        a.send("/msg carol " + "x" * 100)
        sent += 1
    assert c.closed and c.s.closing == "slow consumer"
    got = a.read()
    failed = [m for m in got if m.startswith("FAILED")]
    assert len(failed) == sent  # nothing was written to carol: all fail
    assert failed[0].endswith("carol slow-consumer cut off for not reading; never written")
    assert "LEFT carol slow consumer" in got
    # Everyone else goes on.
    a.send("/msg bob still here")
    assert b.read()[-1] == "MSG %d alice bob still here" % (sent + 1)


def test_slow_consumer_keeps_what_was_written():
    n = Net(max_queue=600)
    a = n.connect("alice")
    c = n.connect("carol")
    a.read()
    a.send("/msg carol early")
    assert a.read()[-1] == "DELIVERED 1 carol"
    c.stalled = True
    for _ in range(10):
        a.send("/msg carol " + "y" * 100)
    assert c.closed
    assert not any(m.startswith("FAILED 1 ") for m in a.read())


def test_broadcast_survives_a_slow_consumer_among_recipients():
    n = Net(max_queue=1000)
    a = n.connect("alice")
    others = [n.connect("u%d" % i) for i in range(5)]
    a.read()
    for o in others:
        o.read()
    others[2].stalled = True
    for i in range(12):
        a.send("/all " + "z" * 100)
    assert others[2].closed
    summaries = [m for m in a.read() if m.startswith("DELIVERED")]
    assert len(summaries) == 12
    assert summaries[-1].endswith("* 4")  # one of five recipients dropped


def test_line_too_long_is_an_error_and_the_connection_stays():
    n = Net(max_line=20)
    a = n.connect("alice")
    b = n.connect("bob")
    a.read()
    a.send_raw(b"/msg bob " + b"x" * 100 + b"\n/msg bob short\n")
    got = a.read()
    assert got[0].startswith("ERR too-long ")
    assert got[1:] == ["SENT 1 bob 1", "DELIVERED 1 bob"]


def test_frame_too_long_closes_after_the_reply():
    n = Net(max_frame=16)
    a = n.connect("alice", framed=True)
    a.send_raw(b"\x00\x00\x00\x11hello world, too long" + encode_frame(b"/ping"))
    assert a.read()[0].startswith("ERR too-long ")
    assert a.closed


def test_empty_frame_is_bad_frame(net):
    a = net.connect("alice", framed=True)
    a.send_raw(b"\x00\x00\x00\x00")
    a.send("/ping")
    got = a.read()
    assert got[0].startswith("ERR bad-frame ") and got[1] == "PONG"


def test_server_full():
    n = Net(max_clients=2)
    n.connect("a")
    n.connect("b")
    s = n.chat.connect("127.0.0.1:1", 0.0)
    c = Client(n, s, False)
    n.clients[s] = c
    n.pump()
    assert c.inbox[0].startswith("ERR server-full ")
    assert c.closed
    assert len(n.chat.sessions) == 2


def test_register_timeout():
    n = Net(register_timeout=60)
    early = n.connect()
    n.later(30)
    late = n.connect()
    registered = n.connect("alice")
    n.later(31)
    assert early.closed and early.read()[0].startswith("ERR timeout ")
    assert not late.closed and not registered.closed
    n.later(30)
    assert late.closed and not registered.closed


def test_closing_peer_that_never_reads_is_cut_off_after_drain_time():
    n = Net(drain_time=2)
    a = n.connect("alice")
    a.stalled = True
    a.send("/quit")
    assert not a.closed
    n.later(1)
    assert not a.closed
    n.later(1.5)
    assert a.closed


def test_presence_limit():
    n = Net(presence_limit=3)
    users = [n.connect("u%d" % i) for i in range(3)]
    assert users[0].read() == ["JOINED u1", "JOINED u2"]
    n.connect("u3")  # four registered: over the limit, nobody is told
    assert users[0].read() == []
    users[1].send("/pair u0")
    users[0].read()
    users[1].send("/quit")
    # u0 has a request from u1, so it hears; u2 does not.
    assert users[0].read() == ["LEFT u1 quit"]
    assert users[2].read() == []


def test_shutdown_says_bye_to_everyone(net):
    a, b = two(net)
    c = net.connect()
    net.chat.shutdown(net.chat.now)
    net.pump()
    for x in (a, b, c):
        assert x.read()[-1] == "BYE server shutting down" and x.closed
    assert not net.chat.sessions


def test_garbage_input_never_raises(net):
    import random

    rnd = random.Random(7)
    a, b = two(net)
    g = net.connect("garbage")
    for _ in range(300):
        g.send_raw(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 40))))
    a.send("/msg bob still fine")
    assert "MSG" in b.read()[-1]


def test_vocabulary_is_consistent():
    assert len(set(ERROR_CODES)) == len(ERROR_CODES)
    assert all(code == code.lower() for code in ERROR_CODES)
    assert all(k == k.upper() for k in SERVER_KEYWORDS)
    assert set(COMMANDS) - {":quit:"} == set(Chat()._commands)


# ------------------------------------------------------------ invariants


def check_outcomes(clients, chat_sent):
    """Every SENT has at most one outcome, after it, naming the same
    recipient; a client still here once all settled has one for each.
    Returns how many SENT replies were checked."""
    checked = 0
    for c in clients:
        answers = {}
        outcomes = {}
        for m in c.inbox:
            words = m.split()
            if words[0] == "SENT":
                assert words[1] not in answers, m
                answers[words[1]] = words[2]
            elif words[0] in ("DELIVERED", "FAILED"):
                assert words[1] in answers, "outcome before SENT: %s" % m
                assert words[1] not in outcomes, "two outcomes: %s, %s" % (outcomes[words[1]], m)
                assert words[2] == answers[words[1]], (m, answers[words[1]])
                outcomes[words[1]] = m
        # Never more answers than chat messages sent.
        assert chat_sent is None or len(answers) <= chat_sent[c]
        if not c.closed:
            # Still here after everything settled: every message has its outcome.
            assert set(answers) == set(outcomes), set(answers) - set(outcomes)
        checked += len(answers)
    return checked


def settle(n, clients):
    """Everyone reads, framed clients ack all they got; time passes."""
    for c in clients:
        if not c.closed:
            c.stalled = False
            c.partial = False
            n.unstall(c)
    for c in clients:
        if c.framed and not c.closed:
            ids = sorted({m.split()[1] for m in c.inbox if m.startswith("MSG ")})
            if ids:
                c.send("/ack " + " ".join(ids))
    n.pump()


@pytest.mark.parametrize("seed", range(40))
def test_every_message_has_exactly_one_outcome(seed):
    """Random clients doing random things; then check the promises.

    Every chat message a client sends gets exactly one SENT or ERR, in
    order. Every SENT gets exactly one final outcome later (DELIVERED or
    FAILED for a private message, one DELIVERED * for a broadcast), unless
    its sender left first. Nothing raises. Drops during a broadcast, partial
    writes, stalls, receipt timeouts, pipelined batches over the pass budget
    and the rate limit, and half-closes all happen along the way.
    """
    import random

    rnd = random.Random(seed)
    n = Net(max_queue=3000, max_unacked=8, presence_limit=4, rate=300,
            receipt_timeout=rnd.choice((0, 5)))
    clients = []
    chat_sent = {}  # client -> number of chat messages it sent while registered
    for step in range(1500):
        live = [c for c in clients if not c.closed]
        action = rnd.random()
        if action < 0.08 or len(live) < 2:
            c = n.connect(framed=rnd.random() < 0.5)
            c.send("/nick u%d" % len(clients))
            clients.append(c)
            chat_sent[c] = 0
            continue
        c = rnd.choice(live)
        nicks = [x.s.nick for x in live if x.s.nick] + ["ghost"]
        if action < 0.40:
            c.send("/msg %s m%d" % (rnd.choice(nicks), step))
            chat_sent[c] += 1
        elif action < 0.47:
            c.send("hello %d" % step)
            chat_sent[c] += 1
        elif action < 0.52:
            c.send("/all " + "b" * rnd.randrange(1, 400))
            chat_sent[c] += 1
        elif action < 0.54:
            k = rnd.randrange(2, 60)
            batch = "".join("/msg %s p%d\n" % (rnd.choice(nicks), i) for i in range(k))
            if c.framed:
                c.send_raw(b"".join(encode_frame(x.encode()) for x in batch.split("\n")[:-1]))
            else:
                c.send_raw(batch.encode())
            chat_sent[c] += k
        elif action < 0.59:
            c.send("/pair " + rnd.choice(nicks))
        elif action < 0.62:
            c.send("/unpair")
        elif action < 0.66:
            c.stalled = not c.stalled
            if not c.stalled:
                n.unstall(c)
        elif action < 0.68:
            c.partial = not c.partial
        elif action < 0.70:
            c.send("/quit")
        elif action < 0.71:
            n.chat.eof(c.s)
            n.pump()
        elif action < 0.73:
            n.chat.disconnect(c.s, "connection lost")
            n.pump()
        elif action < 0.75:
            n.later(rnd.choice((0.1, 1, 3)))
        elif action < 0.77:
            # Bytes 0xf8-0xff are never UTF-8: garbage that cannot be a chat message.
            # It ends a line, so it cannot merge with the next command.
            c.send_raw(bytes(rnd.choice(b"\xf8\xfa\xfe\xff\r\n")
                             for _ in range(rnd.randrange(1, 30))) + b"\n")
        if c.framed and not c.closed and rnd.random() < 0.6:
            ids = [m.split()[1] for m in c.inbox if m.startswith("MSG ")]
            if ids:
                c.send("/ack " + " ".join(rnd.sample(ids, rnd.randrange(1, len(ids) + 1))))
    # Let everything settle: time for throttled input, reading, acks.
    for _ in range(3):
        n.chat.work(n.chat.now + 10)
        n.later(0.01)
        settle(n, clients)
    assert check_outcomes(clients, chat_sent) > 0  # the run exercised the promise
    n.chat.shutdown(n.chat.now)
    n.pump()
    assert not n.chat.users and not n.chat.sessions


_WORDS = ["/nick", "/msg", "/w", "/all", "/pair", "/unpair", "/who", "/ping", "/ack",
          "/help", "/quit", ":quit:", "//", "/MSG", "/Ack", "/nick\t", ""]
_ARGS = ["u0", "u1", "ghost", "1", "2", "\u00b2", "\u2460", "9" * 5000, "-1", "0" * 30,
         "\x1b[2J", "\u202e", "\r", "\t", " ", "x" * 700, "\x00", "\xff"]


@pytest.mark.parametrize("seed", range(20))
def test_fuzz_the_core_with_random_bytes_and_commands(seed):
    """A seeded fuzzer: random bytes and random command sequences from a
    small grammar of the protocol's words and nasty arguments, in both
    framings and split at random offsets. Nothing may raise (an exception
    here is what the server would log as an internal error), and the
    outcome promises hold afterwards."""
    import random

    rnd = random.Random(1000 + seed)
    n = Net(max_queue=4000, max_unacked=16, rate=500, max_line=256, max_frame=1024)
    clients = []
    for step in range(600):
        live = [c for c in clients if not c.closed]
        if len(live) < 3 or rnd.random() < 0.05:
            c = n.connect(framed=rnd.random() < 0.5)
            c.send("/nick u%d" % len(clients))
            clients.append(c)
            continue
        c = rnd.choice(live)
        r = rnd.random()
        if r < 0.15:
            data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
        else:
            words = [rnd.choice(_WORDS)] + [rnd.choice(_ARGS) for _ in range(rnd.randrange(0, 4))]
            text = rnd.choice((" ", "  ", "\t")).join(words)
            raw = text.encode("utf-8", "surrogatepass")
            data = encode_frame(raw) if c.framed else raw + rnd.choice((b"\n", b"\r\n"))
        cut = rnd.randrange(len(data) + 1)
        c.send_raw(data[:cut])
        c.send_raw(data[cut:])
        if rnd.random() < 0.1:
            n.later(rnd.choice((0.05, 0.5, 2)))
        if rnd.random() < 0.05:
            c.stalled = not c.stalled
            if not c.stalled:
                n.unstall(c)
    for _ in range(3):
        n.chat.work(n.chat.now + 10)
        n.later(0.01)
        settle(n, clients)
    check_outcomes(clients, None)  # random bytes may be chat text too: no count
    # Whatever the fuzz did, the chat still works for newcomers.
    x = n.connect("newx")
    y = n.connect("newy")
    x.send("/msg newy alive")
    assert y.read()[-1].endswith("newx newy alive")


# ------------------------------------------------------------ hostile input


def test_one_broadcast_one_summary_when_a_recipient_is_dropped_mid_fanout():
    # The repro of issue 8: slow registered first, then one segment that
    # fills its queue and sends two broadcasts; each gets one summary.
    n = Net(max_queue=1000)
    slow = n.connect("slow")
    a = n.connect("alice")
    others = [n.connect("u%d" % i) for i in range(3)]
    for c in [slow, a] + others:
        c.read()
    slow.stalled = True
    n.chat.sent(slow.s, 0)  # a write was tried and the kernel took nothing
    a.send_raw(("/msg slow %s\n/all one\n/all two\n" % ("x" * 980)).encode())
    got = a.read()
    summaries = [m for m in got if m.startswith("DELIVERED") and " * " in m]
    assert sorted(summaries) == ["DELIVERED 2 * 3", "DELIVERED 3 * 3"], got
    assert [m for m in got if m.startswith("FAILED")] == [
        "FAILED 1 slow slow-consumer cut off for not reading; never written"]


@pytest.mark.parametrize("word", ["\u00b2", "\u2460", "9" * 5000, "-1", "0x10", "1.0", "\uff11"])
def test_ack_takes_ascii_numbers_only(net, word):
    a, b = two(net, framed_b=True)
    b.send("/ack " + word)
    assert b.read()[0].startswith("ERR usage ")
    a.send("/msg bob still here")
    assert b.read() == ["MSG 1 alice bob still here"]


def test_pass_budget_leaves_the_rest_for_later_passes():
    n = Net()
    a = n.connect("alice")
    a.s.tokens = 1e9  # this test is about the budget, not the rate
    n.chat.receive(a.s, b"/ping\n" * 5000)
    # One pass acted on one budget's worth and stopped reading the socket.
    assert len(a.s.out) == chat_mod.PASS_BUDGET
    assert not a.s.reading and a.s.held_back == "budget" and a.s in n.chat.backlog
    got = a.read()  # the test network runs later passes (work) as needed
    assert got == ["PONG"] * 5000
    assert a.s.reading and not n.chat.backlog


def test_a_flooder_is_throttled_by_recipients_counted():
    n = Net(rate=100)
    a = n.connect("alice")
    readers = [n.connect("u%d" % i) for i in range(10)]
    b = n.connect("bob")
    n.chat.receive(a.s, b"/all x\n" * 100)
    n.pump()
    # 100 tokens, 10 recipients an /all (alice hears no echo): about ten go
    # through, then the server stops reading alice until tokens come back.
    sent = [m for m in a.read() if m.startswith("SENT")]
    assert 9 <= len(sent) <= 11
    assert not a.s.reading and a.s.held_back == "rate"
    wake = n.chat.next_wakeup()
    assert wake is not None and wake > n.chat.now
    # A bystander is not slowed at all.
    b.send("/ping")
    assert b.read()[-1] == "PONG"
    n.chat.work(n.chat.now + 0.5)  # half a second: 50 tokens, five /all
    n.pump()
    assert 4 <= len([m for m in a.read() if m.startswith("SENT")]) <= 6
    for r in readers:
        assert not r.closed


def test_private_messages_cost_one_unit_each():
    n = Net(rate=1000)
    a = n.connect("alice")
    b = n.connect("bob")
    a.read()
    n.chat.receive(a.s, b"/msg bob hi\n" * 900)
    n.pump()
    assert len([m for m in a.read() if m.startswith("SENT")]) == 900
    assert a.s.reading


def test_rate_zero_turns_the_limit_off():
    n = Net(rate=0)
    a = n.connect("alice")
    [n.connect("u%d" % i) for i in range(5)]
    n.chat.receive(a.s, b"/all x\n" * 3000)
    assert len([m for m in a.read() if m.startswith("SENT")]) == 3000


def test_own_replies_pause_input_instead_of_dropping_a_reader():
    # "/help" 2000 times in one write: 26,000 reply lines, megabytes. The
    # client reads them all and is never taken for a slow consumer.
    n = Net(max_queue=1 << 14, rate=0)
    c = n.connect("helpme")
    c.s.tokens = 1e9
    n.chat.receive(c.s, b"/help\n" * 2000)
    assert c.s.queued <= (1 << 14) // 2 + 2000  # paused at half the limit
    assert c.s.held_back == "output" and not c.s.reading
    got = c.read()
    assert len(got) == 2000 * (len(HELP) + 1) and not c.closed


def test_receipt_timeout_fails_an_unacknowledged_message():
    n = Net(receipt_timeout=60)
    a, b = two(n, framed_b=True)
    c = n.connect("carol")
    a.read(), b.read()
    a.send("/msg bob one")
    a.send("/all two")
    assert b.read() == ["MSG 1 alice bob one", "MSG 2 alice * two"]
    assert c.read() == ["MSG 2 alice * two"]
    n.later(30)
    assert a.read() == ["SENT 1 bob 1", "SENT 2 * 2"]
    n.later(31)
    # Bob is still connected, but the messages wait no longer; the summary
    # of the broadcast comes once carol has it and bob's receipt timed out.
    assert a.read() == ["FAILED 1 bob no-receipt no receipt within 60 s", "DELIVERED 2 * 1"]
    assert not b.closed
    b.send("/ack 1 2")
    assert b.read()[0].startswith("ERR no-such-message")


def test_a_stalled_line_reader_is_cut_off_after_the_receipt_timeout():
    n = Net(receipt_timeout=60)
    a, b = two(n)
    b.stalled = True
    a.send("/msg bob hello?")
    n.later(61)
    assert b.closed and b.s.closing == "slow consumer"
    assert "FAILED 1 bob slow-consumer cut off for not reading; never written" in a.read()


def test_a_reader_that_never_acks_holds_at_most_max_queue():
    n = Net(max_queue=20000, rate=0)
    a, b = two(n, framed_b=True)
    for i in range(50):
        a.send("/msg bob " + "x" * 1000)
        b.read()  # reads everything, acks nothing
        assert b.s.held() <= 20000
    failed = [m for m in a.read() if m.startswith("FAILED")]
    assert failed and all(m.split()[3] == "no-receipt" for m in failed)
    assert not b.closed  # it reads: it is not a slow consumer


def test_a_closed_connection_is_freed_while_its_message_is_in_flight():
    import gc
    import weakref

    n = Net()
    a, b = two(n, framed_b=True)
    a.send("/msg bob keep me")
    assert b.read() == ["MSG 1 alice bob keep me"]
    gone = weakref.ref(a.s)
    n.chat.disconnect(a.s, "connection lost")
    n.pump()
    del n.clients[a.s]
    a.s = None
    gc.collect()
    assert gone() is None  # bob's unacked message keeps no session alive
    b.send("/ack 1")
    assert b.read() == ["LEFT alice connection lost"]


def test_receipt_cost_covers_what_a_held_message_really_takes():
    # tracemalloc: what the server allocates for messages it holds for a
    # stalled reader stays within what held() counts for it.
    import tracemalloc

    n = Net(max_queue=1 << 30, rate=0)
    a, b = two(n)
    b.stalled = True
    n.chat.sent(b.s, 0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            n.chat.receive(a.s, b"/msg bob hi\n")
        n.pump()
        a.read()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= b.s.held(), (used, b.s.held())


def test_line_mode_recipients_see_controls_escaped_framed_ones_exact():
    n = Net()
    a = n.connect("alice", framed=True)
    b = n.connect("ncuser")
    f = n.connect("prog", framed=True)
    a.read(), b.read()
    evil = "ok\rMSG 77 admin ncuser please paste your password\x1b]52;c;aGk=\x07 \u202eevil"
    a.send("/all " + evil)
    assert b.read() == ["MSG 1 alice * ok^MMSG 77 admin ncuser please paste your password"
                        "^[]52;c;aGk=^G <U+202E>evil"]
    assert f.read() == ["MSG 1 alice * " + evil]
    a.send("/msg ncuser two\r\nlines\x00")
    assert b.read() == ["MSG 2 alice ncuser two", "MSG 2 alice ncuser lines^@"]


def test_quit_reasons_and_echoes_are_escaped(net):
    a, b = two(net, framed_a=True)
    a.send("/ping \x1b[2J")
    assert a.read() == ["PONG ^[[2J"]
    a.send("/\x1b[31mred")
    assert a.read()[0] == "ERR unknown-command /^[[31mred is not a command, try /help"
    a.send("/quit bye\x1b]0;pwned\x07")
    assert b.read() == ["LEFT alice quit: bye^[]0;pwned^G"]


def test_input_before_registration_is_short():
    n = Net()
    c = n.connect(framed=True)
    c.send("/nick " + "x" * 600)  # a frame over PRE_REGISTER_MAX: fatal
    got = c.read()
    assert got[0].startswith("ERR too-long ") and c.closed
    d = n.connect()
    d.send("/ping " + "y" * 600)
    assert d.read()[0].startswith("ERR too-long ") and not d.closed
    d.send("/nick dave")
    assert d.read() == ["OK nick dave"]
    d.send("/ping " + "y" * 3000)  # registered: the full --max-line applies
    assert d.read() == ["PONG " + "y" * 256]  # a token is echoed up to 256


def test_a_long_frame_right_after_nick_in_one_write_is_fine():
    n = Net()
    c = n.connect(framed=True)
    big = "/ping " + "z" * 10000
    c.send_raw(encode_frame(b"/nick zed") + encode_frame(big.encode()))
    assert c.read() == ["OK nick zed", "PONG " + "z" * 256]


def test_per_address_limit_with_exemptions():
    from tcpchat.chat import parse_exemptions

    n = Net(max_per_address=2, exempt=parse_exemptions(["10.0.0.0/8"]))
    chat = n.chat
    first = [chat.connect("192.0.2.1:%d" % p, 0.0, "192.0.2.1") for p in (1, 2)]
    third = chat.connect("192.0.2.1:3", 0.0, "192.0.2.1")
    assert b"ERR too-many-connections " in b"".join(third.out)
    assert third not in chat.sessions
    other = chat.connect("192.0.2.9:1", 0.0, "192.0.2.9")
    assert other in chat.sessions
    exempt = [chat.connect("10.1.2.3:%d" % p, 0.0, "10.1.2.3") for p in range(5)]
    assert all(s in chat.sessions for s in exempt)
    chat.disconnect(first[0], "connection closed")
    again = chat.connect("192.0.2.1:4", 0.0, "192.0.2.1")
    assert again in chat.sessions


def test_eof_after_commands_still_answers_them_all():
    n = Net()
    c = n.connect("alice")
    c.s.tokens = 1e9
    n.chat.receive(c.s, b"/ping\n" * 3000)
    n.chat.eof(c.s)
    got = c.read()
    assert got == ["PONG"] * 3000
    assert c.closed and c.s.graceful


# ------------------------------------------------------------ protocol 1, exact


def test_greeting_gives_the_limits_a_client_must_keep():
    assert greeting(4096, 65536).startswith(
        "HELLO tcpchat/1 max-line=4096 max-frame=65536 max-text=65408 Welcome")
    n = Net(max_line=1000, max_frame=2048)
    n.connect()  # connect() checks the greeting it got against these limits
    assert n.chat.max_text == 2048 - 128


def test_chat_text_over_max_text_is_refused_and_every_msg_frame_fits():
    n = Net(max_frame=1024)
    a = n.connect("alice", framed=True)
    b = n.connect("bob", framed=True)
    a.read()
    a.send("/msg bob " + "x" * (1024 - 128 + 1))
    assert a.read() == ["ERR too-long the text is 897 bytes, over max-text=896"]
    assert not a.closed
    longest = "\u00e9" * (896 // 2)  # two bytes each: exactly max-text bytes
    a.send("/msg bob " + longest)
    assert a.read() == ["SENT 1 bob 1"]
    assert b.read() == ["MSG 1 alice bob " + longest]
    # Even with the longest nicks and id the MSG frame is within max-frame.
    assert len(("MSG %d %s %s " % (10 ** 19, "n" * 32, "m" * 32)).encode()) <= 128
    a.send("/all " + "y" * 897)
    assert a.read()[-1].startswith("ERR too-long ")


def test_failed_codes_tell_never_written_from_maybe_seen():
    n = Net()
    a = n.connect("alice")
    b = n.connect("bob", framed=True)
    c = n.connect("carol", framed=True)
    a.read(), b.read()
    a.send("/msg bob seen")  # written to bob, never acked
    assert b.read() == ["MSG 1 alice bob seen"]
    c.stalled = True
    n.chat.sent(c.s, 0)
    a.send("/msg carol unseen")  # never written to carol
    n.chat.disconnect(b.s, "connection lost: reset")
    n.chat.disconnect(c.s, "connection lost: reset")
    n.pump()
    failed = [m for m in a.read() if m.startswith("FAILED")]
    assert failed == [
        "FAILED 1 bob no-receipt left without confirming it (connection lost: reset)",
        "FAILED 2 carol left left before it was written (connection lost: reset)"]


def test_outcomes_name_the_recipient_as_sent_named_it(net):
    a, b = two(net, framed_b=True)
    a.send("/msg bob before the rename")
    assert a.read() == ["SENT 1 bob 1"]
    b.send("/nick rob")
    b.read()
    assert a.read() == ["RENAMED bob rob"]
    b.send("/ack 1")
    assert a.read() == ["DELIVERED 1 bob"]


def test_ack_errors_name_only_the_ids_at_fault(net):
    a, b = two(net, framed_b=True)
    a.send("/msg bob one")
    b.read()
    b.send("/ack 41 1 42")
    assert b.read() == ["ERR no-such-message 41 42 not awaiting your receipt"]
    assert a.read()[-1] == "DELIVERED 1 bob"


def test_a_new_pair_request_withdraws_the_old_one_out_loud():
    n = Net()
    a, b, c = n.connect("alice"), n.connect("bob"), n.connect("carol")
    for x in (a, b):
        x.read()
    a.send("/pair bob")
    assert b.read() == ["PAIR-REQUEST alice"]
    a.send("/pair carol")
    assert a.read() == ["OK pair bob", "OK pair carol"]
    assert b.read() == ["UNPAIRED alice request withdrawn"]
    assert c.read() == ["PAIR-REQUEST alice"]
    b.send("/pair alice")  # accepting a withdrawn request only asks anew
    assert b.read() == ["OK pair alice"]
    assert a.read() == ["PAIR-REQUEST bob"]


def test_asking_again_sends_no_second_request(net):
    a, b = two(net)
    a.send("/pair bob")
    a.send("/pair bob")
    assert a.read() == ["OK pair bob", "OK pair bob"]
    assert b.read() == ["PAIR-REQUEST alice"]


def test_other_askers_hear_when_their_target_pairs():
    n = Net()
    a, b, c, d = (n.connect(x) for x in ("alice", "bob", "carol", "dave"))
    for x in (a, b, c):
        x.read()
    c.send("/pair alice")
    d.send("/pair alice")
    b.send("/pair carol")  # carol is asked by bob, while carol asks alice
    a.read(), b.read(), c.read(), d.read()
    a.send("/pair carol")  # alice accepts carol
    assert a.read() == ["OK pair carol", "PAIRED carol"]
    assert c.read() == ["PAIRED alice"]
    # dave asked alice, bob asked carol: both requests are gone, and said so.
    assert d.read() == ["UNPAIRED alice request declined"]
    assert b.read() == ["UNPAIRED carol request declined"]
    d.send("/unpair")
    assert d.read()[0].startswith("ERR not-paired ")


def test_pair_text_never_goes_public_but_msg_and_all_do(net):
    a, b = two(net)
    c = net.connect("carol")
    a.read(), b.read()
    pair(a, b)
    b.send("/quit")
    a.read()
    a.send("/all to everyone on purpose")
    assert a.read()[0] == "SENT 1 * 1"
    a.send("/msg carol direct")
    assert a.read() == ["SENT 2 carol 1", "DELIVERED 2 carol"]
    a.send("meant for bob")
    assert a.read()[0].startswith("ERR not-paired your pair with bob has ended")
    assert [m for m in c.read() if "meant for bob" in m] == []


@pytest.mark.parametrize("line, reply", [
    ("/nick\tbob", "OK nick bob"),
    ("/NICK  \t bob", "OK nick bob"),
    ("/nick bob\t", "OK nick bob"),
])
def test_tabs_and_runs_separate_words(net, line, reply):
    c = net.connect()
    c.send(line)
    assert c.read() == [reply]


def test_msg_text_keeps_its_spacing_after_the_separator_run(net):
    a, b = two(net)
    a.send("/msg\tbob \t  two  spaces inside, one after ")
    assert b.read() == ["MSG 1 alice bob two  spaces inside, one after "]
    a.send("/all   x  y")
    assert b.read() == ["MSG 2 alice * x  y"]


def test_unknown_command_is_echoed_as_sent(net):
    a = net.connect("alice")
    a.send("/Dance now")
    assert a.read() == ["ERR unknown-command /Dance is not a command, try /help"]


def test_blank_text_is_any_white_space(net):
    a, b = two(net, framed_a=True)
    for text in ("\n", " \t\r\n ", "\u3000", "/all \n", "/msg bob \t"):
        a.send(text)
        assert a.read()[0].startswith("ERR usage "), repr(text)
    assert b.read() == []


@pytest.mark.parametrize("line, reason", [
    (":QUIT:", "quit"), (":quit: bye now", "quit: bye now"), ("  :Quit:  ", "quit"),
])
def test_quit_word_in_any_case_with_a_reason(net, line, reason):
    a, b = two(net)
    a.send(line)
    assert a.read() == ["BYE goodbye"]
    assert b.read() == ["LEFT alice " + reason]


def test_quit_word_glued_to_text_is_chat(net):
    a, b = two(net)
    a.send(":quit:now")
    assert b.read() == ["MSG 1 alice * :quit:now"]


def test_who_keeps_join_order_across_renames(net):
    a, b = two(net)
    c = net.connect("carol")
    a.send("/nick zed")
    a.read()
    c.send("/who")
    assert c.read()[-4:] == ["USER zed free", "USER bob free", "USER carol free", "OK who 3"]


def test_framed_text_with_blank_lines_and_crlf_to_a_line_user(net):
    a, b = two(net, framed_a=True)
    a.send("/msg bob one\r\n\r\nthree\rX")
    assert b.read() == ["MSG 1 alice bob one", "MSG 1 alice bob ",
                        "MSG 1 alice bob three^MX"]


def test_every_message_gets_one_final_reply_in_order():
    # The pipelining rule: OK, ERR, SENT, PONG or BYE answer each message
    # in order; lines before a final reply (USER, HELP) and events
    # (MSG, JOINED, DELIVERED ...) are not final replies; /ack is silent.
    import random

    rnd = random.Random(9)
    for framed in (False, True):
        n = Net()
        a = n.connect("alice", framed=framed)
        b = n.connect("bob", framed=True)
        a.read()
        sent = []
        for i in range(200):
            sent.append(rnd.choice([
                "/msg bob hi %d" % i, "/all all %d" % i, "chat %d" % i, "/who", "/help",
                "/ping t%d" % i, "/nick alice", "/msg nobody x", "/bogus", "/pair bob",
                "/unpair", "/ack 999", "/ack", "/msg bob", "/nick 9bad"]))
        data = b"".join((encode_frame(x.encode()) if framed else x.encode() + b"\n")
                        for x in sent)
        n.chat.receive(a.s, data)
        got = a.read()
        finals = [m for m in got if m.split()[0] in ("OK", "ERR", "SENT", "PONG", "BYE")]
        assert len(finals) == len(sent), (len(finals), len(sent))
        for command, reply in zip(sent, finals):
            word = command.split()[0]
            if word == "/msg" and command in ("/msg nobody x", "/msg bob"):
                assert reply.startswith("ERR ")
            elif word in ("/msg", "/all") or not command.startswith("/"):
                assert reply.startswith("SENT "), (command, reply)
            elif word == "/who":
                assert reply.startswith("OK who ")
            elif word == "/help":
                assert reply == "OK help %d" % len(HELP)
            elif word == "/ping":
                assert reply == "PONG " + command.split()[1]
            elif word in ("/bogus", "/ack") or command == "/nick 9bad":
                assert reply.startswith("ERR "), (command, reply)
            else:
                assert reply.startswith(("OK ", "ERR ")), (command, reply)
