"""The chat: users, nicks, pairs, messages and their receipts. Sans-I/O.

Theory of operation
-------------------
A ``Chat`` holds one ``Session`` per connection and one ``User`` per
registered nick. The I/O shell calls in with what happened on the wire and
reads out what to do; the chat never touches a socket, a clock or a logger
of its own (it is handed ``now`` and a logger):

    in:  now = monotonic seconds         the shell's clock, set each loop pass
         connect(peer, now, host)        a connection was accepted -> Session
         receive(session, data)          bytes arrived
         eof(session)                    the peer shut down its sending side
         sent(session, nbytes)           the shell tried to write session.out;
                                         the first nbytes left (0: none did)
         disconnect(session, reason)     the connection is gone
         work(now)                       act on input held back earlier
         expire(now)                     time passed (timeouts, drain bounds)
         shutdown(now)                   say goodbye to everyone
    out: session.out                     byte chunks to write, in order
         session.reading                 whether to read from its socket
         chat.flushable                  sessions that got output to write
         chat.input_changed              sessions whose ``reading`` changed
         chat.to_close                   sessions whose socket must close now
         chat.backlog                    non-empty: call work() without waiting
         chat.next_wakeup()              when work() has throttled input due

Fairness. No client can make one loop pass long: each pass acts on at most
PASS_BUDGET units of a connection's input (a unit is a message the server
sends because of it, so an ``/all`` counts its recipients), and what is left
stays in the connection's decoder, then in the kernel, until a later pass.
Over a longer time, ``Limits.rate`` units a second (a token bucket holding
one second's worth) apply backpressure to a flooder alone: the shell stops
reading from it until its bucket refills, so its flood piles up in its own
socket buffers and nowhere else. A connection whose own replies pile up
unread is not read either, until they drain.

Delivery. Every chat message gets a ``Message`` record with a server-wide
id. Each recipient holds the record until it has the message: a line-mode
recipient (nc, telnet) has it once every byte up to the end of its MSG lines
has been written to its socket, so the record sits in ``session.marks`` with
that stream offset; a framed recipient (a program) has it once it sends
``/ack ID``, so the record sits in ``session.unacked``. Whatever a
recipient still holds when it goes away, or holds for longer than
``Limits.receipt_timeout``, fails, and the sender hears of it.

Memory. Everything the server holds for a connection's sake counts against
``Limits.max_queue`` (``Session.held()``): output not yet written, and each
message the connection has yet to receive (written or not, acknowledged or
not) with its bookkeeping. Once the server has tried to write and the connection is
still over the limit, its oldest unacknowledged messages fail first; if its
unwritten output alone is over, it is cut off as a slow consumer. Input is
bounded by the decoders (one read plus one message) and, before a nick is
registered, by PRE_REGISTER_MAX.

Rules that keep it honest:

1. Nothing is removed while it may be iterated. A session that must die in
   the middle of work (a slow consumer found during a broadcast) is only
   marked; ``_reap`` finishes it before the call returns to the shell.
2. A session is ``live`` while we may still queue to it. Once it has said
   BYE (or been doomed) nothing more is queued, so a farewell is always the
   last thing a peer reads.
3. Every sender hears exactly one SENT or ERR per chat message, in order,
   and later exactly one DELIVERED or FAILED per private recipient, or one
   ``DELIVERED ID * COUNT`` summary for a message to everyone: a receipt
   leaves its holder before its outcome is told, and a broadcast holds one
   receipt of its own while it fans out, so that it cannot be summed up
   before every recipient has been counted.
4. A message refers to its sender's ``User``, never to a connection, so a
   message in flight keeps nothing of a closed connection alive.
"""

import collections
import hashlib
import heapq
import hmac
import ipaddress
import logging
import secrets

from .escaping import escape
from .framing import FRAMED_MARKER, FrameDecoder, LineDecoder, encode_frame
from .protocol import (
    HELP,
    MSG_HEADROOM,
    OPEN_COMMANDS,
    SEPARATORS,
    greeting,
    is_quit,
    split_command,
    split_word,
    valid_nick,
)

__all__ = ["Limits", "Chat", "Session", "User", "Message", "parse_exemptions"]

#: Units of one connection's input acted on per loop pass (see Fairness).
#: At a few us a unit (a queued message and its share of a write), a pass
#: spends a few ms at most on one client, however fast it sends.
PASS_BUDGET = 256
#: Bytes a message, command or frame may have before its sender registers:
#: /nick, /ping and /help are short, and a connection that has not said who
#: it is should not make the server hold 64 KiB for it.
PRE_REGISTER_MAX = 512
#: Bytes of bookkeeping counted per receipt (a queued MSG awaiting write or
#: /ack): the record, its slot in the receipt queue, its share of the
#: Message. Measured with tracemalloc in tests/test_chat.py.
RECEIPT_COST = 320
#: Bytes of bookkeeping counted per queued output chunk (its deque slot and
#: object header; the payload is counted by its length).
CHUNK_COST = 48


class Limits:
    """Every bound the server enforces, with its unit."""

    __slots__ = (
        "max_clients",
        "max_line",
        "max_frame",
        "max_queue",
        "max_unacked",
        "register_timeout",
        "presence_limit",
        "drain_time",
        "rate",
        "receipt_timeout",
        "max_per_address",
        "exempt",
        "resume_time",
    )

    def __init__(
        self,
        max_clients=10000,  # connections at once
        max_line=4096,  # bytes in one line-mode message
        max_frame=65536,  # bytes in one frame's payload
        max_queue=1 << 20,  # bytes held for one connection (see Memory)
        max_unacked=4096,  # messages awaiting /ack per framed connection
        register_timeout=60.0,  # seconds from connect to a successful /nick
        presence_limit=256,  # registered users up to which all see presence
        drain_time=2.0,  # seconds a closing connection gets to flush
        rate=20000,  # units a second per connection (see Fairness); 0: no limit
        receipt_timeout=60.0,  # seconds a recipient may hold a message; 0: none
        max_per_address=16,  # connections from one address; 0: no limit
        exempt=None,  # networks exempt from max_per_address
        resume_time=120.0,  # seconds a user is kept away for /resume; 0: none
    ):
        self.max_clients = max_clients
        self.max_line = max_line
        self.max_frame = max_frame
        self.max_queue = max_queue
        self.max_unacked = max_unacked
        self.register_timeout = register_timeout
        self.presence_limit = presence_limit
        self.drain_time = drain_time
        self.rate = rate
        self.receipt_timeout = receipt_timeout
        self.max_per_address = max_per_address
        self.exempt = parse_exemptions(("127.0.0.1", "::1")) if exempt is None else exempt
        self.resume_time = resume_time


def parse_exemptions(texts):
    """``["127.0.0.1", "10.0.0.0/8"]`` -> networks; ValueError names a bad one."""
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


class User:
    """A registered nick: who it is, whom it is paired with, where it is.

    A user outlives its connection: when the connection is lost without
    /quit, the user is *away* (``conn`` is None) for the resume window,
    keeps its nick and its pair, and the messages for it are held until it
    comes back with ``/resume`` on a new connection, or the window ends.
    """

    __slots__ = (
        "nick",
        "key",
        "conn",
        "partner",
        "asked",
        "askers",
        "pair_ended",
        "token",
        "away_until",
        "old",
        "held",
        "held_bytes",
        "told",
    )

    def __init__(self, nick, conn):
        self.nick = nick
        self.key = nick.lower()  # nicks are unique ignoring case
        self.conn = conn  # its Session; None while away
        self.partner = None  # the User it is paired with
        self.asked = None  # the User it sent a pending pair request to
        self.askers = None  # Users with a pending pair request to it
        # The nick of the partner of a pair that ended, until the next plain
        # chat text: that text was most likely meant for the pair, so it is
        # refused rather than sent to everyone.
        self.pair_ended = None
        self.token = None  # SHA-256 of its resume token: the token is never kept
        self.away_until = None  # while away: when the resume window ends
        self.old = None  # its lost connection while that still drains
        self.held = None  # deque of Messages held for it while away, oldest first
        self.held_bytes = 0  # what ``held`` costs, counted against max_queue
        self.told = None  # outcome lines of its own messages, kept while away

    @property
    def away(self):
        return self.conn is None and self.away_until is not None

    def __repr__(self):
        return "<User %s%s>" % (self.nick, " away" if self.away else "")


class Message:
    """One chat message on its way: who sent it, who still has to get it."""

    __slots__ = ("id", "sender", "to", "text", "pending", "delivered", "_line", "_frame")

    def __init__(self, msg_id, sender, to, text):
        self.id = msg_id
        self.sender = sender  # a User
        self.to = to  # the recipient's nick at send time, or "*"
        self.text = text
        self.pending = 0  # receipts held, by recipients or by a fan-out
        self.delivered = 0
        # Encoded at most once per framing, however many recipients.
        self._line = None
        self._frame = None

    def line(self):
        """The MSG as line-mode bytes, safe for a terminal.

        A person on nc has no client of ours between the socket and the
        terminal, so the text is escaped (see tcpchat.escaping): a peer
        cannot drive their terminal or forge a line with a bare CR. A line
        cannot hold a newline, so each line of the text (a framed sender
        may send several) becomes its own MSG line with the same id.
        """
        data = self._line
        if data is None:
            head = "MSG %d %s %s " % (self.id, self.sender.nick, self.to)
            text = self.text
            if "\n" in text:
                lines = text.split("\n")
                text = ("\n" + head).join(
                    escape(line[:-1] if line[-1:] == "\r" else line) for line in lines
                )
            elif not (text.isascii() and text.isprintable()):
                text = escape(text)  # printable ASCII, the usual, needs none
            data = self._line = (head + text + "\n").encode()
        return data

    def frame(self):
        """The MSG as one frame: the exact text."""
        data = self._frame
        if data is None:
            text = "MSG %d %s %s %s" % (self.id, self.sender.nick, self.to, self.text)
            data = self._frame = encode_frame(text.encode())
        return data


class Session:
    """One connection's protocol state."""

    __slots__ = (
        "peer",
        "host",
        "handle",
        "framed",
        "decoder",
        "user",
        "out",
        "enqueued",
        "written",
        "backed_up",
        "marks",
        "unacked",
        "receipt_bytes",
        "live",
        "closing",
        "deadline",
        "gone",
        "graceful",
        "connected_at",
        "reading",
        "held_back",
        "eof",
        "tokens",
        "refilled_at",
        "quitting",
        "__weakref__",
    )

    def __init__(self, peer, now, host=None):
        self.peer = peer  # "host:port", for logs
        self.host = host  # the address alone, for the per-address limit
        self.handle = None  # the shell's own object (its socket); opaque here
        self.framed = None  # unknown until the first byte; then True or False
        self.decoder = None
        self.user = None  # its User once /nick succeeds
        self.out = collections.deque()
        self.enqueued = 0  # bytes ever queued
        self.written = 0  # bytes ever written
        self.backed_up = False  # the last write left output behind
        self.marks = None  # deque of (stream offset, Message, since): line-mode receipts
        self.unacked = None  # {id: (Message, since)} awaiting /ack: framed receipts
        self.receipt_bytes = 0  # what marks and unacked hold (see held())
        self.live = True  # we may queue output to it
        self.closing = None  # reason, once it is to close after its output
        self.deadline = None  # when a closing session is cut off regardless
        self.gone = False  # its connection is over
        self.graceful = False  # it ended with all its output written
        self.connected_at = now
        self.reading = True  # the shell should read from its socket
        self.held_back = None  # why its input waits: "budget", "rate", "output"
        self.eof = False  # the peer will send nothing more
        self.tokens = 0.0  # rate-limit bucket, in units (see Fairness)
        self.refilled_at = now
        self.quitting = False  # it said /quit: its user leaves for good

    @property
    def nick(self):
        user = self.user
        return user.nick if user is not None else None

    @property
    def queued(self):
        """Bytes queued and not yet written."""
        return self.enqueued - self.written

    def held(self):
        """Bytes the server holds for this connection (see Memory): its
        unwritten output, and for each message it has yet to receive, the
        message's encoded size and RECEIPT_COST of bookkeeping."""
        return self.enqueued - self.written + CHUNK_COST * len(self.out) + self.receipt_bytes

    def __repr__(self):
        return "<Session %s %s %s queued=%d%s%s>" % (
            self.peer,
            self.nick or "-",
            {None: "new", True: "framed", False: "line"}[self.framed],
            self.queued,
            " held_back=%s" % self.held_back if self.held_back else "",
            " closing=%r" % self.closing if self.closing else "",
        )


class Chat:
    """The whole chat's state, driven by the I/O shell. See the module doc."""

    def __init__(self, limits=None, logger=None, log_text=True, new_token=None):
        self.limits = limits or Limits()
        self.log = logger or logging.getLogger("tcpchat.null")
        if logger is None:
            self.log.addHandler(logging.NullHandler())
            self.log.propagate = False
        # Checked once: a disabled log call on the hot path still costs.
        self._log_messages = self.log.isEnabledFor(logging.INFO)
        self._log_text = log_text
        self.sessions = set()
        self.users = {}  # key -> User
        self.roster = {}  # User -> None, in the order they joined (for /who)
        self.unregistered = collections.OrderedDict()  # Session -> None, by connect time
        self.closing = collections.OrderedDict()  # Session -> None, by deadline
        self.per_host = {}  # host -> connections from it
        self.flushable = []
        self.input_changed = []
        self.to_close = []
        self.backlog = {}  # Session -> None: input left over for the next pass
        self.tokens = {}  # SHA-256 of a resume token -> User
        self.away = collections.OrderedDict()  # User -> None, by when its window ends
        # Makes resume tokens; at least 128 bits from ``secrets`` (192 here).
        self._new_token = new_token or (lambda: secrets.token_urlsafe(24))
        self.restarting = False  # shutting down to come back (--state-file)
        self._throttled = []  # heap of (when, seq, Session): waiting for tokens
        self._throttle_seq = 0
        self._doomed = []
        self._sends = 0  # messages ever queued: the measure of a command's cost
        self._next_id = 1
        limits = self.limits
        self.max_text = limits.max_frame - MSG_HEADROOM  # bytes of chat text
        # Chat text of up to this many characters needs no encoding to tell
        # that it is within max_text: UTF-8 takes at most 4 bytes a character.
        self._quick_text_limit = self.max_text // 4
        self._greeting = (greeting(limits.max_line, limits.max_frame) + "\n").encode()
        self.shutting_down = False
        self.now = 0.0  # monotonic seconds, kept current by the shell
        self._commands = {
            "/nick": self._cmd_nick,
            "/pair": self._cmd_pair,
            "/unpair": self._cmd_unpair,
            "/msg": self._cmd_msg,
            "/w": self._cmd_msg,
            "/all": self._cmd_all,
            "/who": self._cmd_who,
            "/ping": self._cmd_ping,
            "/ack": self._cmd_ack,
            "/help": self._cmd_help,
            "/resume": self._cmd_resume,
            "/quit": self._cmd_quit,
        }

    # ----------------------------------------------------------- shell API

    def connect(self, peer, now, host=None):
        """A connection was accepted: greet it, or turn it away and say why."""
        self.now = now
        s = Session(peer, now, host)
        s.tokens = float(self.limits.rate)
        limit = self.limits.max_per_address
        if len(self.sessions) >= self.limits.max_clients:
            return self._turn_away(
                s, "server-full", "the server has its %d clients, try later"
                % self.limits.max_clients, "server full")
        if (limit and host is not None and self.per_host.get(host, 0) >= limit
                and not self._exempt(host)):
            return self._turn_away(
                s, "too-many-connections", "%d connections from your address already, "
                "try later" % limit, "too many connections from " + host)
        self.sessions.add(s)
        if host is not None:
            self.per_host[host] = self.per_host.get(host, 0) + 1
        self.unregistered[s] = None
        self._queue(s, self._greeting)
        return s

    def receive(self, s, data):
        """Bytes arrived from ``s``: act on the complete messages in them,
        as many as this pass's budget allows (see Fairness)."""
        if not s.live or not data:
            return
        if s.decoder is None:
            if data[0] == FRAMED_MARKER:
                s.framed = True
                s.decoder = FrameDecoder(min(PRE_REGISTER_MAX, self.limits.max_frame))
                data = data[1:]
            else:
                s.framed = False
                s.decoder = LineDecoder(min(PRE_REGISTER_MAX, self.limits.max_line))
        s.decoder.push(data)
        self._consume(s)
        self._reap()

    def eof(self, s):
        """The peer shut down its side (``shutdown(SHUT_WR)``, as ``nc -N``
        does): act on what it sent, write every reply, then close."""
        if s.gone or s.eof:
            return
        s.eof = True
        self._set_reading(s, False)
        if s.held_back is None:
            self._input_done(s)
        self._reap()

    def sent(self, s, nbytes):
        """The shell tried to write ``s.out``; its first ``nbytes`` left."""
        out = s.out
        if nbytes:
            s.written += nbytes
            if s.written == s.enqueued:
                out.clear()  # the usual case: everything went at once
            else:
                while nbytes:
                    size = len(out[0])
                    if nbytes >= size:
                        out.popleft()
                        nbytes -= size
                    else:
                        out[0] = memoryview(out[0])[nbytes:]
                        break
            marks = s.marks
            if marks:
                written = s.written
                while marks and marks[0][0] <= written:
                    msg = marks.popleft()[1]
                    s.receipt_bytes -= len(msg._line) + RECEIPT_COST
                    self._delivered(msg, s)
        s.backed_up = bool(out)
        if s.live and s.held() > self.limits.max_queue:
            self._overflow(s)
        if s.held_back == "output" and s.live and s.queued <= self._output_pause():
            self._consume(s)
        if not s.out and s.closing is not None and not s.gone:
            s.graceful = True
            self._finish(s, s.closing)
        self._reap()

    def disconnect(self, s, reason):
        """The connection is gone (closed by the peer, reset, or by us)."""
        if s.gone:
            return
        self._finish(s, reason)
        self._reap()

    def work(self, now):
        """Act on input held back by an earlier pass's budget, and on
        throttled input whose tokens have come back. Call once a pass."""
        self.now = now
        if self.backlog:
            waiting, self.backlog = self.backlog, {}
            for s in waiting:
                if s.held_back == "budget" and s.live:
                    s.held_back = None
                    self._consume(s)
        throttled = self._throttled
        while throttled and throttled[0][0] <= now:
            s = heapq.heappop(throttled)[2]
            if s.held_back == "rate" and s.live:
                self._consume(s)
        self._reap()

    def next_wakeup(self):
        """Monotonic time when throttled input may go on, or None."""
        return self._throttled[0][0] if self._throttled else None

    def expire(self, now):
        """Close what has waited too long: registration, receipts, drains."""
        self.now = now
        limit = self.limits.register_timeout
        unregistered = self.unregistered
        while unregistered:
            s = next(iter(unregistered))
            if now - s.connected_at < limit:
                break
            del unregistered[s]
            self._error(s, "timeout", "no /nick within %g s, closing" % limit)
            self._close_after_flush(s, "registration timeout")
        if self.limits.receipt_timeout:
            self._expire_receipts(now - self.limits.receipt_timeout)
        if self.away:
            self._expire_away(now)
        closing = self.closing
        while closing:
            s = next(iter(closing))
            if now < s.deadline:
                break
            del closing[s]
            if not s.gone:
                self._finish(s, s.closing + " (output not drained)")
        self._reap()

    def shutdown(self, now, restarting=False):
        """Tell everyone the server is going; each closes once flushed.

        Stopping for good, every sender first hears what becomes of its
        messages still on their way (FAILED, code shutdown or no-receipt),
        then BYE: nothing is left silent. Restarting (the shell saves the
        state), users are kept away instead, and what they hold is kept.
        """
        self.now = now
        self.shutting_down = True
        self.restarting = restarting
        if restarting:
            farewell, reason = "BYE server restarting", "server restarting"
        else:
            farewell, reason = "BYE server shutting down", "server shutting down"
            for s in list(self.sessions):
                if s.marks or s.unacked:
                    self._abandon(s)
            for u in list(self.away):
                self._leave(u, reason, "shutdown")
        for s in list(self.sessions):
            if s.live:
                self._reply(s, farewell)
                self._close_after_flush(s, reason)
        self._reap()

    def _abandon(self, s):
        """The server stops for good: every message ``s`` has not confirmed
        fails now. One not yet begun is taken out of the output, so that it
        is never written after its sender was told it never was."""
        unbegun = {}
        for _, msg, _ in s.marks or ():
            unbegun[id(msg._line)] = msg
        for msg, _, _ in (s.unacked or {}).values():
            unbegun[id(msg._frame)] = msg
        s.marks = s.unacked = None
        s.receipt_bytes = 0
        kept = collections.deque()
        for chunk in s.out:
            # The first chunk may be a memoryview of a message begun: kept.
            msg = unbegun.pop(id(chunk), None)
            if msg is None:
                kept.append(chunk)
            else:
                self._failed(msg, "shutdown", "the server stopped before writing it")
        s.out = kept
        s.enqueued = s.written + sum(len(chunk) for chunk in kept)
        for msg in unbegun.values():  # written, at least in part
            self._failed(msg, "no-receipt", "the server stopped before it was confirmed")

    # ------------------------------------------------------------ restarts

    def snapshot(self):
        """What a restart must keep, as plain data for tcpchat.state: the
        users (all away by now), their pairs and requests, the messages
        held for them, the outcomes not yet told, and the next message id.
        Tokens only as their SHA-256."""
        messages = {}
        users = []
        for u in self.roster:
            held = list(u.held or ())
            for msg in held:
                messages[msg.id] = msg
            users.append({
                "nick": u.nick,
                "token": u.token.hex() if u.token is not None else None,
                "partner": u.partner.nick if u.partner is not None else None,
                "asked": u.asked.nick if u.asked is not None else None,
                "held": [msg.id for msg in held],
                "told": list(u.told or ()),
            })
        return {
            "next_id": self._next_id,
            "users": users,
            "messages": [
                {"id": m.id, "from": m.sender.nick, "to": m.to, "text": m.text,
                 "delivered": m.delivered}
                for m in sorted(messages.values(), key=lambda m: m.id)
            ],
        }

    def restore(self, data, now):
        """Take back a snapshot: every user away, for a resume window
        counted from now. Returns (users, messages) restored."""
        self.now = now
        self._next_id = max(self._next_id, data["next_id"])
        users = {}
        for entry in data["users"]:
            u = User(entry["nick"], None)
            if entry["token"]:
                u.token = bytes.fromhex(entry["token"])
                self.tokens[u.token] = u
            u.away_until = now + self.limits.resume_time
            u.told = list(entry["told"]) or None
            users[u.key] = u
            self.users[u.key] = u
            self.roster[u] = None
            self.away[u] = None
        for entry in data["users"]:
            u = users[entry["nick"].lower()]
            partner = users.get((entry["partner"] or "").lower())
            if partner is not None:
                u.partner = partner
            asked = users.get((entry["asked"] or "").lower())
            if asked is not None:
                u.asked = asked
                if asked.askers is None:
                    asked.askers = set()
                asked.askers.add(u)
        messages = {}
        for entry in data["messages"]:
            sender = users.get(entry["from"].lower())
            if sender is None:  # it left before the restart: outcomes go nowhere
                sender = User(entry["from"], None)
            msg = Message(entry["id"], sender, entry["to"], entry["text"])
            msg.delivered = entry["delivered"]
            messages[msg.id] = msg
        for entry in data["users"]:
            u = users[entry["nick"].lower()]
            for msg_id in entry["held"]:
                msg = messages[msg_id]
                msg.pending += 1
                if u.held is None:
                    u.held = collections.deque()
                u.held.append(msg)
                u.held_bytes += RECEIPT_COST + _text_size(msg.text)
        return len(users), len(messages)

    # ------------------------------------------------------------- input

    def _output_pause(self):
        """Own output above which a connection's input waits (see Fairness)."""
        return self.limits.max_queue // 2

    def _consume(self, s):
        """Act on ``s``'s decoded input within this pass's budget."""
        decoder = s.decoder
        handle = self._handle
        budget = PASS_BUDGET
        rate = self.limits.rate
        if rate and s.tokens < rate:
            self._refill(s)
        tokens = s.tokens if rate else float("inf")
        pause = self._output_pause()
        held_back = None
        while True:
            if tokens < 1:
                held_back = "rate"
                break
            if budget <= 0:
                held_back = "budget"
                break
            # One at a time until registered: /nick raises the size limit,
            # so the next message must not be decoded before it is handled.
            items = decoder.take(budget if s.user is not None else 1)
            if not items:
                break
            for i, item in enumerate(items):
                before = self._sends
                if type(item) is bytes:
                    try:
                        text = item.decode("utf-8")
                    except UnicodeDecodeError as e:
                        self._error(s, "bad-utf8",
                                    "not UTF-8 at byte %d, message ignored" % e.start)
                    else:
                        handle(s, text)
                else:
                    self._error(s, item.code, item.detail)
                    if item.fatal:
                        self._close_after_flush(s, item.detail)
                # What it cost: the messages it made, but for its own reply.
                cost = self._sends - before - 1
                if cost < 1:
                    cost = 1
                budget -= cost
                tokens -= cost
                if not s.live:
                    return  # it said /quit or was cut off: the rest is moot
                if s.enqueued - s.written > pause:
                    held_back = "output"
                elif tokens < 1 or budget <= 0:
                    pass  # said at the top of the next round
                else:
                    continue
                decoder.putback(items[i + 1:])
                break
            if held_back is not None:
                break
        if rate:
            s.tokens = tokens
        s.held_back = held_back
        if held_back is None:
            self._input_done(s)
            return
        self._set_reading(s, False)
        if held_back == "budget":
            self.backlog[s] = None
        elif held_back == "rate":
            wait = (1 - tokens) / rate
            self._throttle_seq += 1
            heapq.heappush(self._throttled, (self.now + wait, self._throttle_seq, s))

    def _input_done(self, s):
        """Everything ``s`` sent has been acted on."""
        if s.eof:
            self._close_after_flush(s, "connection closed")
        else:
            self._set_reading(s, True)

    def _refill(self, s):
        """Tokens come back at ``rate`` a second, up to one second's worth."""
        rate = self.limits.rate
        tokens = s.tokens + (self.now - s.refilled_at) * rate
        s.tokens = tokens if tokens < rate else float(rate)
        s.refilled_at = self.now

    def _set_reading(self, s, reading):
        if s.reading != reading:
            s.reading = reading
            self.input_changed.append(s)

    # ------------------------------------------------------------ dispatch

    def _handle(self, s, text):
        first = text[0]
        if first == "/":
            if text[1:2] == "/":  # //TEXT is the chat text /TEXT
                self._chat_text(s, text[1:])
                return
            word, _, rest = text.partition(" ")
            command = self._commands.get(word)
            if command is None or rest[:1] in (" ", "\t"):
                # Anything but "/word arg" in lower case takes the exact
                # path: any case, tabs, runs of separators.
                word, sent_word, rest = split_command(text)
                command = self._commands.get(word)
            else:
                sent_word = word
            if s.user is None and word not in OPEN_COMMANDS:
                self._error(s, "not-registered", "register first with /nick NAME")
            elif command is None:
                self._error(s, "unknown-command",
                            "%s is not a command, try /help" % _echo(sent_word, 32))
            else:
                command(s, rest)
            return
        if first == ":" or first in SEPARATORS:
            reason = is_quit(text)
            if reason is not None:
                self._cmd_quit(s, reason)
                return
        self._chat_text(s, text)

    def _chat_text(self, s, text):
        user = s.user
        if user is None:
            self._error(s, "not-registered", "register first with /nick NAME")
        elif text.isspace():  # as /msg and /all: blank text is nothing to send
            self._error(s, "usage", "nothing to send: the text is blank")
        elif user.partner is not None:
            self._send_private(user, user.partner, text)
        elif user.pair_ended is not None:
            # Typed for the pair, most likely, as it ended: never to everyone
            # by surprise. Said once; the next plain text goes to everyone.
            self._error(s, "not-paired", "your pair with %s has ended; nothing was sent. "
                        "Send it again to send it to everyone, or use /msg or /all"
                        % user.pair_ended)
            user.pair_ended = None
        else:
            self._send_all(user, text)

    # ------------------------------------------------------------ commands

    def _cmd_nick(self, s, arg):
        name = arg.strip()
        if not name:
            return self._error(s, "usage", "/nick NAME")
        if not valid_nick(name):
            return self._error(
                s, "bad-nick", "a nick is 1-32 of A-Z a-z 0-9 _ - . starting with a letter"
            )
        key = name.lower()
        user = s.user
        holder = self.users.get(key)
        if holder is not None and holder is not user:
            return self._error(s, "nick-taken", "%s is taken" % holder.nick)
        if user is None:
            del self.unregistered[s]
            user = s.user = User(name, s)
            self.users[key] = user
            self.roster[user] = None
            # Registered: from now on a message may be as long as the limits say.
            s.decoder.set_limit(self.limits.max_frame if s.framed else self.limits.max_line)
            self._send_session(s, user)
            self._reply(s, "OK nick " + name)
            self.log.info("%s registered as %s", s.peer, name)
            self._presence(user, "JOINED " + name)
            return
        old = user.nick
        del self.users[user.key]
        user.nick = name
        user.key = key
        self.users[key] = user
        self._reply(s, "OK nick " + name)
        if old != name:
            self.log.info("%s renamed to %s", old, name)
            self._presence(user, "RENAMED %s %s" % (old, name))

    def _cmd_pair(self, s, arg):
        u = s.user
        t = self._target(s, arg.strip(SEPARATORS))
        if t is None:
            return
        if u.partner is t:
            return self._error(s, "busy", "you are already paired with %s" % t.nick)
        if u.partner is not None:
            return self._error(
                s, "busy", "you are paired with %s, /unpair first" % u.partner.nick
            )
        if t.partner is not None:
            return self._error(s, "busy", "%s is paired with someone else" % t.nick)
        self._reply(s, "OK pair " + t.nick)
        if u.asked is t:
            return  # asked already: t heard of it once, that is enough
        self._withdraw(u, notify=True)  # a new request replaces the old one
        if t.asked is u:  # they asked first: now both have asked
            self._withdraw(t)
            u.partner = t
            t.partner = u
            u.pair_ended = t.pair_ended = None
            self._reply(s, "PAIRED " + t.nick)
            self._tell_now(t, "PAIRED " + u.nick)
            self.log.info("%s and %s paired", t.nick, u.nick)
            # Both are taken now: whoever else asked either of them is told.
            self._decline_askers(u)
            self._decline_askers(t)
        else:
            u.asked = t
            if t.askers is None:
                t.askers = set()
            t.askers.add(u)
            self._tell_now(t, "PAIR-REQUEST " + u.nick)
            self.log.info("%s asks %s for a pair", u.nick, t.nick)

    def _decline_askers(self, t):
        """``t`` is paired: every pending request to it is declined."""
        askers = t.askers
        if not askers:
            return
        t.askers = None
        for a in sorted(askers, key=lambda a: a.key):  # a stable order for the log
            a.asked = None
            self._tell(a, "UNPAIRED %s request declined" % t.nick)

    def _cmd_unpair(self, s, arg):
        u = s.user
        t = u.partner
        if t is not None:
            self._unpair(u, "ended the pair")
            self._reply(s, "OK unpair " + t.nick)
        elif u.asked is not None:
            t = u.asked
            self._reply(s, "OK unpair " + t.nick)
            self._withdraw(u, notify=True)
        else:
            self._error(s, "not-paired", "you have no pair and no pair request")

    def _cmd_msg(self, s, arg):
        name, _, text = arg.partition(" ")
        t = self.users.get(name.lower())
        u = s.user
        if (t is not None and t is not u and text and text[0] not in SEPARATORS
                and not text.isspace()):
            return self._send_private(u, t, text)
        # Anything unusual takes the exact path, which says what is wrong.
        name, text = split_word(arg)
        if not name or not text or text.isspace():
            return self._error(s, "usage", "/msg NAME TEXT")
        t = self._target(s, name)
        if t is not None:
            self._send_private(u, t, text)

    def _cmd_all(self, s, arg):
        if not arg or arg.isspace():
            return self._error(s, "usage", "/all TEXT")
        self._send_all(s.user, arg)

    def _cmd_who(self, s, arg):
        users = self.roster
        lines = ["USER %s %s" % (u.nick, "away" if u.conn is None else
                                 "free" if u.partner is None else "paired") for u in users]
        lines.append("OK who %d" % len(users))
        if s.framed:
            data = b"".join([encode_frame(line.encode()) for line in lines])
        else:
            lines.append("")
            data = "\n".join(lines).encode()
        self._queue(s, data, len(lines))

    def _cmd_ping(self, s, arg):
        token = split_word(arg)[0]
        self._reply(s, "PONG " + _echo(token, 256) if token else "PONG")

    def _cmd_ack(self, s, arg):
        # Several ids may share one /ack: a client acknowledges at once all
        # it showed from one read, which halves a framed peer's input.
        words = arg.split()
        if not words:
            return self._error(s, "usage", "/ack ID [ID ...]")
        for word in words:
            # ASCII digits only, and few of them: str.isdigit() also takes
            # "²" and "①", which int() refuses, and int() of thousands of
            # digits is slow or refused outright.
            if not (len(word) <= 20 and word.isascii() and word.isdigit()):
                return self._error(s, "usage", "/ack ID [ID ...]: an ID is a number from MSG")
        unacked = s.unacked or {}
        bad = []
        for word in words:
            entry = unacked.pop(int(word), None)
            if entry is None:
                bad.append(word)
            else:
                msg = entry[0]
                s.receipt_bytes -= len(msg._frame) + RECEIPT_COST
                self._delivered(msg, s)
        if bad:
            self._error(s, "no-such-message", "%s not awaiting your receipt" % " ".join(bad))

    def _cmd_help(self, s, arg):
        lines = ["HELP " + line for line in HELP]
        lines.append("OK help %d" % len(HELP))
        if s.framed:
            data = b"".join([encode_frame(line.encode()) for line in lines])
        else:
            lines.append("")
            data = "\n".join(lines).encode()
        self._queue(s, data, len(lines))

    def _cmd_quit(self, s, arg):
        reason = _echo(" ".join(arg.split()), 200)
        s.quitting = True  # for good: no resume
        self._reply(s, "BYE goodbye")
        self._close_after_flush(s, "quit: " + reason if reason else "quit")

    # ------------------------------------------------------------ resume

    def _send_session(self, s, u):
        """A new single-use resume token for ``u``, told as SESSION."""
        if not self.limits.resume_time:
            return
        token = self._new_token()
        digest = hashlib.sha256(token.encode()).digest()
        if u.token is not None:
            self.tokens.pop(u.token, None)
        u.token = digest
        self.tokens[digest] = u
        self._reply(s, "SESSION %s %d" % (token, self.limits.resume_time))

    def _void_token(self, u):
        if u.token is not None:
            self.tokens.pop(u.token, None)
            u.token = None

    def _user_for_token(self, token):
        """The user a resume token belongs to, or None.

        Looked up by its SHA-256, then compared in constant time: neither
        the lookup nor the comparison tells an attacker how close a guess
        came. The token itself is never kept, logged or saved.
        """
        if not token or len(token) > 256 or not token.isascii():
            return None
        digest = hashlib.sha256(token.encode()).digest()
        u = self.tokens.get(digest)
        if u is None or u.token is None or not hmac.compare_digest(u.token, digest):
            return None
        return u

    def _cmd_resume(self, s, arg):
        if s.user is not None:
            return self._error(s, "usage", "/resume is for a new connection, before /nick")
        if not self.limits.resume_time:
            return self._error(s, "bad-token", "this server does not keep sessions")
        u = self._user_for_token(split_word(arg)[0])
        if u is None:
            return self._error(s, "bad-token", "unknown, used or expired token; "
                               "register with /nick NAME")
        # A connection of the user's still here is a half-open one (the
        # client saw it die first): it is replaced, and what it held moves
        # to the new one. So is a lost connection still draining.
        for old in (u.conn, u.old):
            if old is not None and not old.gone:
                u.conn = None
                self._doom(old, "replaced by a resumed session")
                self._finish(old, "replaced by a resumed session")
        del self.unregistered[s]
        self.away.pop(u, None)
        u.away_until = None
        u.conn = s
        s.user = u
        s.decoder.set_limit(self.limits.max_frame if s.framed else self.limits.max_line)
        self._send_session(s, u)
        self._reply(s, "OK resume " + u.nick)
        self.log.info("%s resumed as %s", s.peer, u.nick)
        if u.partner is not None:
            self._reply(s, "PAIRED " + u.partner.nick)
        for asker in sorted(u.askers or (), key=lambda a: a.key):
            self._reply(s, "PAIR-REQUEST " + asker.nick)
        held, u.held = u.held, None
        u.held_bytes = 0
        for msg in held or ():
            self._deliver_to(msg, s)
        told, u.told = u.told, None
        for line in told or ():
            self._reply(s, line)
        self._presence(u, "BACK " + u.nick)

    # ------------------------------------------------------------ messages

    def _target(self, s, name):
        """The registered user ``name`` other than ``s``'s, or None after an ERR."""
        if not name or split_word(name)[1]:
            self._error(s, "usage", "a nick is one word")
            return None
        t = self.users.get(name.lower())
        if t is None:
            self._error(s, "no-such-user", "no user %s" % _echo(name, 32))
        elif t is s.user:
            self._error(s, "self", "that is you")
            t = None
        return t

    def _send_private(self, u, t, text):
        if len(text) > self._quick_text_limit and self._too_long(u, text):
            return
        msg_id = self._next_id
        self._next_id = msg_id + 1
        msg = Message(msg_id, u, t.nick, text)
        if self._log_messages:
            self._log_message(msg, text)
        self._reply(u.conn, "SENT %d %s 1" % (msg_id, t.nick))
        self._deliver(msg, t)

    def _send_all(self, u, text):
        users = self.users
        if len(users) < 2:
            return self._error(u.conn, "no-recipients", "nobody else is here")
        if len(text) > self._quick_text_limit and self._too_long(u, text):
            return
        msg = Message(self._next_id, u, "*", text)
        self._next_id += 1
        if self._log_messages:
            self._log_message(msg, text)
        self._reply(u.conn, "SENT %d * %d" % (msg.id, len(users) - 1))
        deliver = self._deliver
        # The fan-out holds a receipt of its own (rule 3): a recipient that
        # fails at once must not make the count reach zero half-way.
        msg.pending = 1
        # Safe to iterate: a recipient found to be a slow consumer is only
        # marked here and leaves ``users`` in _reap (rule 1).
        for t in users.values():
            if t is not u:
                deliver(msg, t)
        msg.pending -= 1
        if msg.pending == 0:
            self._summary(msg)

    def _too_long(self, u, text):
        """Refuse chat text over max-text bytes (the greeting's max-text)."""
        size = len(text.encode())
        if size <= self.max_text:
            return False
        self._error(u.conn, "too-long", "the text is %d bytes, over max-text=%d"
                    % (size, self.max_text))
        return True

    def _log_message(self, msg, text):
        if self._log_text:
            self.log.info("message %d %s -> %s: %s", msg.id, msg.sender.nick, msg.to, text)
        else:
            self.log.info("message %d %s -> %s", msg.id, msg.sender.nick, msg.to)

    def _deliver(self, msg, u):
        """Queue ``msg`` to user ``u`` and remember it until ``u`` has it."""
        msg.pending += 1
        t = u.conn
        if t is None:
            return self._hold(msg, u)
        if not t.live:  # cut off in the middle of this very fan-out
            if self._resumable(t):
                return self._hold(msg, u)  # it will be away, then back
            code, text = self._unwritten(t, t.closing or "left")
            return self._failed(msg, code, text)
        self._deliver_to(msg, t)

    def _deliver_to(self, msg, t):
        """Queue ``msg`` to session ``t`` with its receipt; ``msg.pending``
        already counts it."""
        if t.framed:
            data = msg.frame()
            unacked = t.unacked
            if unacked is None:
                unacked = t.unacked = {}
            unacked[msg.id] = (msg, self.now, t.enqueued + len(data))
            t.receipt_bytes += len(data) + RECEIPT_COST
            if len(unacked) > self.limits.max_unacked:
                self._shed_oldest(t, "more than %d messages awaited its receipt"
                                  % self.limits.max_unacked)
            self._queue(t, data)
        else:
            data = msg.line()
            if t.marks is None:
                t.marks = collections.deque()
            t.marks.append((t.enqueued + len(data), msg, self.now))
            t.receipt_bytes += len(data) + RECEIPT_COST
            self._queue(t, data)

    def _hold(self, msg, u):
        """Keep ``msg`` for away user ``u`` until it resumes, within the
        same memory limit as a connection (max_queue)."""
        cost = RECEIPT_COST + _text_size(msg.text)
        if u.held_bytes + cost > self.limits.max_queue:
            return self._failed(msg, "away-full", "away, with as much waiting as "
                                "max-queue=%d bytes allows" % self.limits.max_queue)
        if u.held is None:
            u.held = collections.deque()
        u.held.append(msg)
        u.held_bytes += cost

    def _shed_oldest(self, t, why):
        """Give up the oldest message awaiting ``t``'s /ack: it may have
        been shown, it was never confirmed."""
        unacked = t.unacked
        msg = unacked.pop(next(iter(unacked)))[0]
        t.receipt_bytes -= len(msg._frame) + RECEIPT_COST
        self._failed(msg, "no-receipt", why)

    def _unwritten(self, t, reason):
        """The FAILED code and text for a message never written to ``t``,
        which ends for ``reason``."""
        if reason.startswith("slow consumer"):
            return "slow-consumer", "cut off for not reading; never written"
        if self.shutting_down:
            return "shutdown", "the server stopped before writing it"
        return "left", "left before it was written (%s)" % reason

    def _delivered(self, msg, t):
        msg.delivered += 1
        msg.pending -= 1
        if msg.to != "*":
            snd = msg.sender.conn
            if snd is not None and snd.live:  # the usual case, first
                self._reply(snd, "DELIVERED %d %s" % (msg.id, msg.to))
            else:
                self._tell_later(msg.sender, "DELIVERED %d %s" % (msg.id, msg.to))
        elif msg.pending == 0:
            self._summary(msg)

    def _failed(self, msg, code, text):
        """One recipient will not confirm ``msg``. NICK in the FAILED line
        is the recipient as SENT named it, whatever it is called now."""
        msg.pending -= 1
        self.log.info("message %d to %s failed: %s %s", msg.id, msg.to, code, text)
        if msg.to != "*":
            self._tell(msg.sender, "FAILED %d %s %s %s" % (msg.id, msg.to, code, text))
        elif msg.pending == 0:
            self._summary(msg)

    def _summary(self, msg):
        self._tell(msg.sender, "DELIVERED %d * %d" % (msg.id, msg.delivered))

    def _expire_receipts(self, before):
        """Messages held since ``before`` or earlier never arrive (rule 3).

        A framed recipient that reads but does not acknowledge loses them
        one by one (``no receipt``). A line-mode recipient has not taken a
        byte of them: it has stopped reading, and is cut off.
        """
        why = "no receipt within %g s" % self.limits.receipt_timeout
        for s in list(self.sessions):
            unacked = s.unacked
            while unacked and next(iter(unacked.values()))[1] <= before:
                self._shed_oldest(s, why)
            marks = s.marks
            if marks and marks[0][2] <= before and s.live:
                self._doom(s, "slow consumer")

    def _hold_receipts(self, s, u):
        """``s`` is lost and its user away: every message it had not
        confirmed is held for the resume, before what came since."""
        msgs = [m for _, m, _ in s.marks or ()] + [m for m, _, _ in (s.unacked or {}).values()]
        s.marks = s.unacked = None
        held = collections.deque(msgs)
        if u.held:
            held.extend(u.held)
        u.held = held
        u.held_bytes = sum(RECEIPT_COST + _text_size(m.text) for m in held)

    def _fail_held(self, s, reason):
        """``s`` ends for ``reason``: whatever it still holds fails, with a
        code that says whether any of it may have reached the peer."""
        written = s.written
        code, text = self._unwritten(s, reason)
        maybe = "left without confirming it (%s)" % reason
        marks, s.marks = s.marks, None
        unacked, s.unacked = s.unacked, None
        for end, msg, _ in marks or ():
            if end - len(msg._line) < written:  # begun: part may be on screen
                self._failed(msg, "no-receipt", maybe)
            else:
                self._failed(msg, code, text)
        for msg, _, end in (unacked or {}).values():
            if end - len(msg._frame) < written:
                self._failed(msg, "no-receipt", maybe)
            else:
                self._failed(msg, code, text)

    # -------------------------------------------------------- pairs, presence

    def _withdraw(self, u, notify=False):
        """Drop ``u``'s pending pair request, if any; with ``notify``, its
        target hears of it, so that it holds no stale PAIR-REQUEST."""
        t = u.asked
        if t is not None:
            u.asked = None
            if t.askers:
                t.askers.discard(u)
            if notify:
                self._tell(t, "UNPAIRED %s request withdrawn" % u.nick)

    def _unpair(self, u, reason):
        t = u.partner
        u.partner = None
        t.partner = None
        # Text typed for the pair as it ends must not go to everyone.
        u.pair_ended = t.nick
        t.pair_ended = u.nick
        if not self.shutting_down:
            self._tell(t, "UNPAIRED %s %s" % (u.nick, reason))
        self.log.info("%s and %s unpaired (%s: %s)", u.nick, t.nick, u.nick, reason)

    def _presence(self, u, text):
        """Tell the users who should know about ``u``: everyone while few.

        Above the presence limit only those with a stake in ``u`` hear of it
        (its partner and the users in a pair request with it), so that
        thousands joining cost linear, not quadratic, output.
        """
        if self.shutting_down:
            return
        if len(self.users) <= self.limits.presence_limit:
            audience = [v for v in self.users.values() if v is not u]
        else:
            audience = set(u.askers or ())
            if u.partner is not None:
                audience.add(u.partner)
            if u.asked is not None:
                audience.add(u.asked)
        line = frame = None
        for v in audience:
            c = v.conn
            if c is None or not c.live:
                continue
            if c.framed:
                if frame is None:
                    frame = encode_frame(text.encode())
                self._queue(c, frame)
            else:
                if line is None:
                    line = text.encode() + b"\n"
                self._queue(c, line)

    def _resumable(self, s):
        """Whether ``s``'s user is kept away when ``s`` ends, rather than
        leaving: resume is on, it did not /quit, and the server is not
        stopping for good."""
        return (self.limits.resume_time > 0 and not s.quitting
                and (not self.shutting_down or self.restarting))

    def _detach(self, s, reason):
        """``s`` ends or starts closing: its user goes away, or leaves."""
        u = s.user
        if u is None:
            self.unregistered.pop(s, None)
            return
        if u.conn is not s:
            return  # away or left already, and now its connection ends
        if self._resumable(s):
            self._go_away(u, s, reason)
        else:
            self._leave(u, reason)

    def _go_away(self, u, s, reason):
        u.conn = None
        u.old = s if not s.gone else None
        u.away_until = self.now + self.limits.resume_time
        self.away[u] = None
        self.log.info("%s (%s) away: %s", u.nick, s.peer, reason)
        self._presence(u, "AWAY " + u.nick)

    def _leave(self, u, reason, code=None):
        """``u`` leaves the chat for good (its connection may still be
        flushing). What was held for it while away fails with ``code``."""
        if self.users.get(u.key) is not u:
            return
        if u.partner is not None:
            self._unpair(u, reason)
        # Presence goes out while u still counts and its requests stand, so
        # the users in a pair request with it hear that it left.
        self._presence(u, "LEFT %s %s" % (u.nick, reason))
        self._withdraw(u)
        if u.askers:
            for a in u.askers:
                a.asked = None
            u.askers = None
        del self.users[u.key]
        del self.roster[u]
        self.away.pop(u, None)
        self._void_token(u)
        u.conn = None
        u.old = None
        u.told = None
        held, u.held = u.held, None
        u.held_bytes = 0
        if held:
            if code is None:
                code = "shutdown" if self.shutting_down else "left"
            text = "away, then left (%s)" % reason
            for msg in held:
                self._failed(msg, code, text)
        self.log.info("%s left: %s", u.nick, reason)

    def _expire_away(self, now):
        """Away users whose resume window has ended leave for good."""
        away = self.away
        while away:
            u = next(iter(away))
            if now < u.away_until:
                break
            self._leave(u, "no resume within %g s" % self.limits.resume_time,
                        "away-expired")

    # ------------------------------------------------------------ output

    def _tell(self, u, text):
        """A line for user ``u``: now if it is connected, on resume if it is
        away (or about to be: its connection is closing, the server
        restarting), never if it left."""
        c = u.conn
        if c is not None and c.live:
            self._reply(c, text)
        else:
            self._tell_later(u, text)

    def _tell_now(self, u, text):
        """A line about state that a resume says again in full (PAIRED,
        PAIR-REQUEST): only for a user connected now."""
        c = u.conn
        if c is not None and c.live:
            self._reply(c, text)

    def _tell_later(self, u, text):
        if self.users.get(u.key) is u and (u.conn is None or self._resumable(u.conn)):
            if u.told is None:
                u.told = []
            u.told.append(text)

    def _reply(self, s, text):
        self._queue(s, encode_frame(text.encode()) if s.framed else text.encode() + b"\n")

    def _error(self, s, code, detail):
        self.log.info("%s (%s): ERR %s %s", s.nick or "-", s.peer, code, detail)
        self._reply(s, "ERR %s %s" % (code, detail))

    def _queue(self, s, data, count=1):
        if not s.live:
            return
        out = s.out
        if not out:
            self.flushable.append(s)
        out.append(data)
        s.enqueued += len(data)
        self._sends += count
        # Only once a write has been tried and left output behind: a
        # client that reads is never cut off for a burst (see Memory).
        if s.backed_up and s.held() > self.limits.max_queue:
            self._overflow(s)

    def _overflow(self, s):
        """``s`` holds more than max_queue though the server tried to write."""
        limit = self.limits.max_queue
        while s.unacked and s.held() > limit:
            self._shed_oldest(s, "more than max-queue=%d bytes awaited its receipt" % limit)
        if s.held() > limit:
            self._doom(s, "slow consumer")

    # ------------------------------------------------------------ endings

    def _turn_away(self, s, code, detail, why):
        """Never counted among the sessions; it only says why and goes."""
        self._reply(s, "ERR %s %s" % (code, detail))
        self.log.warning("%s turned away: %s", s.peer, why)
        self._close_after_flush(s, why)
        return s

    def _exempt(self, host):
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.limits.exempt)

    def _close_after_flush(self, s, reason):
        """Stop taking input from ``s``; close it once its output is written.

        The farewell reply is queued before this, so it is the last thing
        the peer reads; ``expire`` cuts off a peer that will not read it.
        """
        if not s.live:
            return
        self._detach(s, reason)
        s.live = False
        s.closing = reason
        s.deadline = self.now + self.limits.drain_time
        self.closing[s] = None
        self._set_reading(s, False)
        if not s.out:
            s.graceful = True
            self._finish(s, reason)

    def _doom(self, s, reason):
        """Cut ``s`` off now, without flushing; finished by ``_reap``."""
        if s.live:
            s.live = False
            s.closing = reason
            self._doomed.append(s)

    def _reap(self):
        doomed = self._doomed
        while doomed:
            s = doomed.pop()
            if not s.gone:
                self._finish(s, s.closing)

    def _finish(self, s, reason):
        """The end of ``s``: it leaves, what it still held fails, and its
        buffers go at once (rule 4)."""
        if s.gone:
            return
        self._detach(s, reason)
        s.live = False
        s.gone = True
        if s.closing is None:
            s.closing = reason
        if s in self.sessions:  # a connection turned away never was
            self.sessions.remove(s)
            host = s.host
            if host is not None:
                left = self.per_host[host] - 1
                if left:
                    self.per_host[host] = left
                else:
                    del self.per_host[host]
        self.closing.pop(s, None)
        self.backlog.pop(s, None)
        # Unwritten output is lost now; ``queued`` still says how much.
        s.out.clear()
        s.decoder = None
        s.receipt_bytes = 0
        u = s.user
        if u is not None and u.old is s:
            u.old = None
        if s.marks or s.unacked:
            if u is not None and u.conn is None and self.users.get(u.key) is u:
                self._hold_receipts(s, u)  # away: kept for its resume
            else:
                self._fail_held(s, reason)
        self.to_close.append(s)


def _text_size(text):
    """An upper bound of ``text``'s UTF-8 size, without encoding it."""
    return len(text) if text.isascii() else 4 * len(text)


def _echo(text, limit):
    """Client text the server says back (a ping token, an unknown command,
    a quit reason): at most ``limit`` characters, escaped for terminals."""
    return escape(text[:limit])
