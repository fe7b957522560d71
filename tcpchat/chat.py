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
         session.transport_held = bytes  what the shell holds for it below the
                                         protocol (TLS), counted in held()
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
PASS_BUDGET units of a connection's input (a unit is a message it makes the
server send to someone else, or a line of a long answer such as /who, and
every message costs at least one: an ``/all`` counts its recipients), and
what is left
stays in the connection's decoder, then in the kernel, until a later pass.
Over a longer time, ``Limits.rate`` units a second (a token bucket holding
one second's worth) apply backpressure to a flooder alone: the shell stops
reading from it until its bucket refills, so its flood piles up in its own
socket buffers and nowhere else. A connection whose own replies pile up
unread is not read either, until they drain.

The rest lives in two modules of its own, mixed into ``Chat``:
``tcpchat.delivery`` (messages, receipts, outcomes, and the memory each
connection holds for them) and ``tcpchat.users`` (users, pairs, presence,
away and resume, restarts). Each opens with its own theory of operation.

Memory. Everything the server holds for a connection's sake counts against
``Limits.max_queue`` (``Session.held()``): output not yet written, and each
message the connection has yet to receive, with its bookkeeping (see
``tcpchat.delivery``). Once the server has tried to write and the
connection is still over the limit, its oldest unacknowledged messages fail
first; if its unwritten output alone is over, it is cut off as a slow
consumer. Input is bounded by the decoders (one read plus one message) and,
before a nick is registered, by PRE_REGISTER_MAX.

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
import heapq
import ipaddress
import logging
import secrets

from .delivery import Delivery, Message
from .escaping import escape
from .framing import FRAMED_MARKER, FrameDecoder, LineDecoder, encode_frame, frame_header
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
from .users import Roster, User

__all__ = ["Limits", "Chat", "Session", "User", "Message", "parse_exemptions"]

#: Units of one connection's input acted on per loop pass (see Fairness).
#: At a few us a unit (a queued message and its share of a write), a pass
#: spends a few ms at most on one client, however fast it sends.
PASS_BUDGET = 256
#: Bytes a message, command or frame may have before its sender registers:
#: /nick, /ping and /help are short, and a connection that has not said who
#: it is should not make the server hold 64 KiB for it.
PRE_REGISTER_MAX = 512
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
        "transport_held",
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
        # {id: (Message, since, stream offset of its end)} awaiting /ack: framed receipts
        self.unacked = None
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
        self.transport_held = 0  # set by the shell: TLS state and ciphertext

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
        unwritten output, for each message it has yet to receive what
        ``delivery`` counts (its bytes and ``msg.cost``), and what the
        shell holds below the protocol (``transport_held``: TLS)."""
        return (self.enqueued - self.written + CHUNK_COST * len(self.out)
                + self.receipt_bytes + self.transport_held)

    def __repr__(self):
        return "<Session %s %s %s queued=%d%s%s>" % (
            self.peer,
            self.nick or "-",
            {None: "new", True: "framed", False: "line"}[self.framed],
            self.queued,
            " held_back=%s" % self.held_back if self.held_back else "",
            " closing=%r" % self.closing if self.closing else "",
        )


class Chat(Roster, Delivery):
    """The whole chat's state, driven by the I/O shell. See the module doc."""

    # --------------------------------------------------- shell API

    def __init__(self, limits=None, logger=None, log_text=True, new_token=None,
                 message_log=None):
        self.limits = limits or Limits()
        self.log = logger or logging.getLogger("tcpchat.null")
        if logger is None:
            self.log.addHandler(logging.NullHandler())
            self.log.propagate = False
        # Each chat message is logged: through the shell's cheap message log
        # (logs.MessageLog) when it gives one, through ``logging`` when that
        # is at INFO, not at all otherwise. Decided once: a disabled log call
        # on the hot path still costs. Called (id, peer, sender, to, text).
        if message_log is not None:
            self._log_message = message_log.message
        elif self.log.isEnabledFor(logging.INFO):
            self._log_message = self._log_through_logging
        else:
            self._log_message = None
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
        # Messages ever queued to others, and lines of long answers: what a
        # command costs (see Fairness) is how much this grows while it runs.
        self._sends = 0
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
            if marks and marks[0][0] <= s.written:
                written = s.written
                delivered = []
                while marks and marks[0][0] <= written:
                    msg = marks.popleft()[1]
                    s.receipt_bytes -= len(msg._line) + msg.cost
                    delivered.append(msg)
                self._delivered(delivered)
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


    # ------------------------------------------------------- input

    def _output_pause(self):
        """Own output above which a connection's input waits (see Fairness)."""
        return self.limits.max_queue // 2

    def _consume(self, s):
        """Act on ``s``'s decoded input within this pass's budget."""
        decoder = s.decoder
        handle = self._handle
        rate = self.limits.rate
        if rate and s.tokens < rate:
            self._refill(s)
        tokens = s.tokens if rate else float("inf")
        budget = PASS_BUDGET
        pause = self._output_pause()
        held_back = None
        while True:
            if tokens < 1:
                held_back = "rate"
                break
            if budget <= 0:
                held_back = "budget"
                break
            allowance = budget if budget < tokens else tokens
            # One at a time until registered: /nick raises the size limit,
            # so the next message must not be decoded before it is handled.
            items = decoder.take(budget if s.user is not None else 1)
            if not items:
                break
            start = self._sends
            used = 0
            for used_items, item in enumerate(items, 1):
                if type(item) is bytes:
                    try:
                        text = item.decode()  # UTF-8, strict
                    except UnicodeDecodeError as e:
                        self._error(s, "bad-utf8",
                                    "not UTF-8 at byte %d, message ignored" % e.start)
                    else:
                        handle(s, text)
                else:
                    self._error(s, item.code, item.detail)
                    if item.fatal:
                        self._close_after_flush(s, item.detail)
                if not s.live:
                    return  # it said /quit or was cut off: the rest is moot
                # What it cost so far: what it made the server send, and at
                # least one unit a message.
                used = self._sends - start
                if used < used_items:
                    used = used_items
                if s.enqueued - s.written > pause:
                    held_back = "output"
                elif used < allowance:
                    continue
                decoder.putback(items[used_items:])
                break
            budget -= used
            tokens -= used
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


    # ---------------------------------------------------- dispatch

    def _handle(self, s, text):
        first = text[0]
        if first == "/":
            word, _, rest = text.partition(" ")
            command = self._commands.get(word)
            if command is None and text[1:2] == "/":  # //TEXT is the chat text /TEXT
                self._chat_text(s, text[1:])
                return
            if command is None or (rest and rest[0] in SEPARATORS):
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


    # ---------------------------------------------------- commands

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
        self._reply_lines(s, lines)

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
        delivered = []
        for word in words:
            entry = unacked.pop(int(word), None)
            if entry is None:
                bad.append(word)
            else:
                msg = entry[0]
                s.receipt_bytes -= len(msg._frame) + msg.cost
                delivered.append(msg)
        self._delivered(delivered)
        if bad:
            self._error(s, "no-such-message", "%s not awaiting your receipt" % " ".join(bad))

    def _cmd_help(self, s, arg):
        lines = ["HELP " + line for line in HELP]
        lines.append("OK help %d" % len(HELP))
        self._reply_lines(s, lines)

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

    def _cmd_quit(self, s, arg):
        reason = _echo(" ".join(arg.split()), 200)
        s.quitting = True  # for good: no resume
        self._reply(s, "BYE goodbye")
        self._close_after_flush(s, "quit: " + reason if reason else "quit")

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


    # ------------------------------------------------------ output

    def _reply(self, s, text):
        """One reply or event line to ``s``, framed as ``s`` speaks."""
        # _queue's work, written out: this is the hot path, two or three
        # times a chat message (SENT, DELIVERED).
        if not s.live:
            return
        data = text.encode()
        data = frame_header(len(data)) + data if s.framed else data + b"\n"
        out = s.out
        if not out:
            self.flushable.append(s)
        out.append(data)
        s.enqueued += len(data)
        if s.backed_up and s.held() > self.limits.max_queue:
            self._overflow(s)

    def _reply_lines(self, s, lines):
        """Several replies as one chunk: an answer and its final line. Each
        line counts toward what the command costs (see Fairness)."""
        self._sends += len(lines)
        self._reply_run(s, lines)

    def _reply_run(self, s, lines):
        """Several reply or event lines to ``s`` as one chunk."""
        if s.framed:
            data = b"".join([encode_frame(line.encode()) for line in lines])
        else:
            data = ("\n".join(lines) + "\n").encode()
        self._queue(s, data)

    def _error(self, s, code, detail):
        self.log.info("%s (%s): ERR %s %s", s.nick or "-", s.peer, code, detail)
        self._reply(s, "ERR %s %s" % (code, detail))

    def _queue(self, s, data):
        if not s.live:
            return
        out = s.out
        if not out:
            self.flushable.append(s)
        out.append(data)
        s.enqueued += len(data)
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


    # ----------------------------------------------------- endings

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


def _echo(text, limit):
    """Client text the server says back (a ping token, an unknown command,
    a quit reason): at most ``limit`` characters, escaped for terminals."""
    return escape(text[:limit])
