"""The chat: users, nicks, pairs, messages and their receipts. Sans-I/O.

Theory of operation
-------------------
A ``Chat`` holds one ``Session`` per connection. The I/O shell calls in with
what happened on the wire and reads out what to do; the chat never touches a
socket, a clock or a logger of its own (it is handed ``now`` and a logger):

    in:  now = monotonic seconds         the shell's clock, set each loop pass
         connect(peer, now) -> Session   a connection was accepted
         receive(session, data)          bytes arrived
         sent(session, nbytes)           the first nbytes of session.out left
         disconnect(session, reason)     the connection is gone
         expire(now)                     time passed (timeouts, drain bounds)
         shutdown(now)                   say goodbye to everyone
    out: session.out                     byte chunks to write, in order
         chat.flushable                  sessions that got output to write
         chat.to_close                   sessions whose socket must close now

Delivery. Every chat message gets a ``Message`` record with a server-wide id.
Each recipient holds the record until it has the message: a line-mode
recipient (nc, telnet) has it once every byte up to the end of its MSG lines
has been written to its socket, so the record sits in ``session.marks`` with
that stream offset; a framed recipient (a program) has it once it sends
``/ack ID``, so the record sits in ``session.unacked``. When a recipient
goes away, whatever it still holds fails, and the sender hears of it.

Rules that keep it honest:

1. Nothing is removed while it may be iterated. A session that must die in
   the middle of work (a slow consumer found during a broadcast) is only
   marked; ``_reap`` finishes it before the call returns to the shell.
2. A session is ``live`` while we may still queue to it. Once it has said
   BYE (or been doomed) nothing more is queued, so a farewell is always the
   last thing a peer reads.
3. Every sender hears exactly one SENT or ERR per chat message, in order,
   and later exactly one DELIVERED or FAILED per private recipient, or one
   ``DELIVERED ID * COUNT`` summary for a message to everyone.
"""

import collections
import logging

from .framing import FRAMED_MARKER, FrameDecoder, LineDecoder, encode_frame
from .protocol import GREETING, HELP, OPEN_COMMANDS, split_command, valid_nick

__all__ = ["Limits", "Chat", "Session", "Message"]


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
    )

    def __init__(
        self,
        max_clients=10000,  # connections at once
        max_line=4096,  # bytes in one line-mode message
        max_frame=65536,  # bytes in one frame's payload
        max_queue=1 << 20,  # bytes of unwritten output per connection
        max_unacked=4096,  # messages awaiting /ack per framed connection
        register_timeout=60.0,  # seconds from connect to a successful /nick
        presence_limit=256,  # registered users up to which all see presence
        drain_time=2.0,  # seconds a closing connection gets to flush
    ):
        self.max_clients = max_clients
        self.max_line = max_line
        self.max_frame = max_frame
        self.max_queue = max_queue
        self.max_unacked = max_unacked
        self.register_timeout = register_timeout
        self.presence_limit = presence_limit
        self.drain_time = drain_time


class Message:
    """One chat message on its way: who sent it, who still has to get it."""

    __slots__ = ("id", "sender", "to", "text", "pending", "delivered", "_line", "_frame")

    def __init__(self, msg_id, sender, to, text):
        self.id = msg_id
        self.sender = sender
        self.to = to  # the recipient's nick at send time, or "*"
        self.text = text
        self.pending = 0  # recipients that neither have it nor have failed
        self.delivered = 0
        # Encoded at most once per framing, however many recipients.
        self._line = None
        self._frame = None

    def line(self):
        """The MSG as line-mode bytes.

        A line-mode peer cannot take a newline inside a message, so each
        line of the text becomes its own MSG line with the same id.
        """
        data = self._line
        if data is None:
            head = "MSG %d %s %s " % (self.id, self.sender.nick, self.to)
            text = self.text
            if "\n" in text:  # only a framed sender can send one
                text = ("\n" + head).join(text.split("\n"))
            data = self._line = (head + text + "\n").encode()
        return data

    def frame(self):
        """The MSG as one frame."""
        data = self._frame
        if data is None:
            text = "MSG %d %s %s %s" % (self.id, self.sender.nick, self.to, self.text)
            data = self._frame = encode_frame(text.encode())
        return data


class Session:
    """One connection's protocol state."""

    __slots__ = (
        "peer",
        "handle",
        "framed",
        "decoder",
        "nick",
        "key",
        "partner",
        "asked",
        "askers",
        "out",
        "enqueued",
        "written",
        "marks",
        "unacked",
        "live",
        "closing",
        "deadline",
        "gone",
        "connected_at",
    )

    def __init__(self, peer, now):
        self.peer = peer  # "host:port", for logs
        self.handle = None  # the shell's own object (its socket); opaque here
        self.framed = None  # unknown until the first byte; then True or False
        self.decoder = None
        self.nick = None  # None until /nick succeeds
        self.key = None  # nick.lower(): nicks are unique ignoring case
        self.partner = None
        self.asked = None  # the session we sent a pending pair request to
        self.askers = None  # sessions with a pending pair request to us
        self.out = collections.deque()
        self.enqueued = 0  # bytes ever queued
        self.written = 0  # bytes ever written
        self.marks = None  # deque of (stream offset, Message): line-mode receipts
        self.unacked = None  # {id: Message} awaiting /ack: framed receipts
        self.live = True  # we may queue output to it
        self.closing = None  # reason, once it is to close after its output
        self.deadline = None  # when a closing session is cut off regardless
        self.gone = False  # its connection is over
        self.connected_at = now

    @property
    def queued(self):
        """Bytes queued and not yet written."""
        return self.enqueued - self.written

    def __repr__(self):
        return "<Session %s %s %s queued=%d%s>" % (
            self.peer,
            self.nick or "-",
            {None: "new", True: "framed", False: "line"}[self.framed],
            self.queued,
            " closing=%r" % self.closing if self.closing else "",
        )


class Chat:
    """The whole chat's state, driven by the I/O shell. See the module doc."""

    def __init__(self, limits=None, logger=None, log_text=True, message_log=None):
        self.limits = limits or Limits()
        self.log = logger or logging.getLogger("tcpchat.null")
        if logger is None:
            self.log.addHandler(logging.NullHandler())
            self.log.propagate = False
        # Each chat message is logged, so through a far cheaper path than
        # ``logging`` when the shell gives one (logs.MessageLog).
        self._message_log = message_log
        # Checked once: a disabled log call on the hot path still costs.
        self._log_messages = message_log is not None or self.log.isEnabledFor(logging.INFO)
        self._log_text = log_text
        self.sessions = set()
        self.users = {}  # key -> Session, in join order
        self.unregistered = collections.OrderedDict()  # Session -> None, by connect time
        self.closing = collections.OrderedDict()  # Session -> None, by deadline
        self.flushable = []
        self.to_close = []
        self._doomed = []
        self._next_id = 1
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
            "/quit": self._cmd_quit,
        }

    # ----------------------------------------------------------- shell API

    def connect(self, peer, now):
        """A connection was accepted: greet it, or turn it away if full."""
        self.now = now
        s = Session(peer, now)
        if len(self.sessions) >= self.limits.max_clients:
            # Never counted among the sessions; it only says why and goes.
            self._queue(s, b"ERR server-full the server has its %d clients, try later\n"
                        % self.limits.max_clients)
            self.log.warning("%s turned away: server full", peer)
            self._close_after_flush(s, "server full")
            return s
        self.sessions.add(s)
        self.unregistered[s] = None
        self._queue(s, _GREETING_LINE)
        return s

    def receive(self, s, data):
        """Bytes arrived from ``s``: act on every complete message in them."""
        if not s.live or not data:
            return
        if s.decoder is None:
            if data[0] == FRAMED_MARKER:
                s.framed = True
                s.decoder = FrameDecoder(self.limits.max_frame)
                data = data[1:]
            else:
                s.framed = False
                s.decoder = LineDecoder(self.limits.max_line)
        handle = self._handle
        for item in s.decoder.feed(data):
            if type(item) is bytes:
                try:
                    text = item.decode("utf-8")
                except UnicodeDecodeError as e:
                    self._error(s, "bad-utf8", "not UTF-8 at byte %d, message ignored" % e.start)
                else:
                    handle(s, text)
            else:
                self._error(s, item.code, item.detail)
                if item.fatal:
                    self._close_after_flush(s, item.detail)
            if not s.live:
                break  # it said /quit or was cut off: the rest is moot
        self._reap()

    def sent(self, s, nbytes):
        """The shell wrote the first ``nbytes`` of ``s.out`` to the socket."""
        s.written += nbytes
        out = s.out
        if s.written == s.enqueued:
            out.clear()  # the usual case: everything went at once
            nbytes = 0
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
                self._delivered(marks.popleft()[1], s)
        if not out and s.closing is not None and not s.gone:
            self._finish(s, s.closing)
        self._reap()

    def disconnect(self, s, reason):
        """The connection is gone (closed by the peer, reset, or by us)."""
        if s.gone:
            return
        self._finish(s, reason)
        self._reap()

    def expire(self, now):
        """Close what has waited too long: registration and drain bounds."""
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
        closing = self.closing
        while closing:
            s = next(iter(closing))
            if now < s.deadline:
                break
            del closing[s]
            if not s.gone:
                self._finish(s, s.closing + " (output not drained)")
        self._reap()

    def shutdown(self, now):
        """Tell everyone the server is going; each closes once flushed."""
        self.now = now
        self.shutting_down = True
        for s in list(self.sessions):
            if s.live:
                self._reply(s, "BYE server shutting down")
                self._close_after_flush(s, "server shutting down")
        self._reap()

    # ------------------------------------------------------------ dispatch

    def _handle(self, s, text):
        if text[0] == "/":
            if text[1:2] == "/":  # //TEXT is the chat text /TEXT
                self._chat_text(s, text[1:])
                return
            word, _, rest = text.partition(" ")
            command = self._commands.get(word)
            if command is None:
                # Commands ignore case; almost all arrive in lower case, so
                # only the rare others pay for lower().
                word, rest = split_command(text)
                command = self._commands.get(word)
            if s.nick is None and word not in OPEN_COMMANDS:
                self._error(s, "not-registered", "register first with /nick NAME")
            elif command is None:
                self._error(s, "unknown-command", "%s is not a command, try /help" % word)
            else:
                command(s, rest)
        elif text == ":quit:" or text.strip() == ":quit:":
            self._cmd_quit(s, "")
        else:
            self._chat_text(s, text)

    def _chat_text(self, s, text):
        if s.nick is None:
            self._error(s, "not-registered", "register first with /nick NAME")
        elif text.isspace():  # as /msg and /all: blank text is nothing to send
            self._error(s, "usage", "nothing to send: the text is blank")
        elif s.partner is not None:
            self._send_private(s, s.partner, text)
        else:
            self._send_all(s, text)

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
        holder = self.users.get(key)
        if holder is not None and holder is not s:
            return self._error(s, "nick-taken", "%s is taken" % holder.nick)
        old = s.nick
        if old is None:
            del self.unregistered[s]
        else:
            del self.users[s.key]
        s.nick = name
        s.key = key
        self.users[key] = s
        self._reply(s, "OK nick " + name)
        if old is None:
            self.log.info("%s registered as %s", s.peer, name)
            self._presence(s, "JOINED " + name)
        elif old != name:
            self.log.info("%s renamed to %s", old, name)
            self._presence(s, "RENAMED %s %s" % (old, name))

    def _cmd_pair(self, s, arg):
        t = self._target(s, arg.strip())
        if t is None:
            return
        if s.partner is t:
            return self._error(s, "busy", "you are already paired with %s" % t.nick)
        if s.partner is not None:
            return self._error(
                s, "busy", "you are paired with %s, /unpair first" % s.partner.nick
            )
        if t.partner is not None:
            return self._error(s, "busy", "%s is paired with someone else" % t.nick)
        self._withdraw(s)
        self._reply(s, "OK pair " + t.nick)
        if t.asked is s:  # they asked first: now both have asked
            self._withdraw(t)
            s.partner = t
            t.partner = s
            self._reply(s, "PAIRED " + t.nick)
            self._reply(t, "PAIRED " + s.nick)
            self.log.info("%s and %s paired", t.nick, s.nick)
        else:
            s.asked = t
            if t.askers is None:
                t.askers = set()
            t.askers.add(s)
            self._reply(t, "PAIR-REQUEST " + s.nick)
            self.log.info("%s asks %s for a pair", s.nick, t.nick)

    def _cmd_unpair(self, s, arg):
        t = s.partner
        if t is not None:
            self._unpair(s, "ended the pair")
            self._reply(s, "OK unpair " + t.nick)
        elif s.asked is not None:
            t = s.asked
            self._withdraw(s)
            self._reply(s, "OK unpair " + t.nick)
            # Without this, t would hold a stale PAIR-REQUEST.
            self._reply(t, "UNPAIRED %s request withdrawn" % s.nick)
        else:
            self._error(s, "not-paired", "you have no pair and no pair request")

    def _cmd_msg(self, s, arg):
        name, _, text = arg.partition(" ")
        t = self.users.get(name.lower())
        if t is not None and t is not s and text and not text.isspace():
            return self._send_private(s, t, text)
        # Anything unusual takes the slow path, which says what is wrong.
        name, _, text = arg.lstrip(" ").partition(" ")
        if not name or not text.strip():
            return self._error(s, "usage", "/msg NAME TEXT")
        t = self._target(s, name)
        if t is not None:
            self._send_private(s, t, text)

    def _cmd_all(self, s, arg):
        if not arg.strip():
            return self._error(s, "usage", "/all TEXT")
        self._send_all(s, arg)

    def _cmd_who(self, s, arg):
        users = self.users.values()
        lines = ["USER %s %s" % (u.nick, "free" if u.partner is None else "paired") for u in users]
        lines.append("OK who %d" % len(lines))
        if s.framed:
            data = b"".join([encode_frame(line.encode()) for line in lines])
        else:
            lines.append("")
            data = "\n".join(lines).encode()
        self._queue(s, data)

    def _cmd_ping(self, s, arg):
        token = arg.split()
        self._reply(s, "PONG " + token[0] if token else "PONG")

    def _cmd_ack(self, s, arg):
        # Several ids may share one /ack: a client acknowledges at once all
        # it showed from one read, which halves a framed peer's input.
        words = arg.split()
        if not words:
            return self._error(s, "usage", "/ack ID [ID ...]")
        unacked = s.unacked or {}
        bad = []
        for word in words:
            msg = unacked.pop(int(word), None) if word.isdigit() else None
            if msg is None:
                bad.append(word)
            else:
                self._delivered(msg, s)
        if bad:
            self._error(s, "no-such-message", "%s not awaiting your receipt" % " ".join(bad))

    def _cmd_help(self, s, arg):
        for line in HELP:
            self._reply(s, "OK help " + line)

    def _cmd_quit(self, s, arg):
        reason = " ".join(arg.split())
        self._reply(s, "BYE goodbye")
        self._close_after_flush(s, "quit: " + reason if reason else "quit")

    # ------------------------------------------------------------ messages

    def _target(self, s, name):
        """The registered user ``name`` other than ``s``, or None after an ERR."""
        if not name or " " in name:
            self._error(s, "usage", "a nick is one word")
            return None
        t = self.users.get(name.lower())
        if t is None:
            self._error(s, "no-such-user", "no user %s" % name)
        elif t is s:
            self._error(s, "self", "that is you")
            t = None
        return t

    def _send_private(self, s, t, text):
        msg_id = self._next_id
        self._next_id = msg_id + 1
        msg = Message(msg_id, s, t.nick, text)
        if self._log_messages:
            self._log_message(msg, text)
        self._reply(s, "SENT %d %s 1" % (msg_id, t.nick))
        self._deliver(msg, t)

    def _send_all(self, s, text):
        users = self.users
        if len(users) < 2:
            return self._error(s, "no-recipients", "nobody else is here")
        msg = Message(self._next_id, s, "*", text)
        self._next_id += 1
        if self._log_messages:
            self._log_message(msg, text)
        self._reply(s, "SENT %d * %d" % (msg.id, len(users) - 1))
        deliver = self._deliver
        # Safe to iterate: a recipient found to be a slow consumer is only
        # marked here and leaves ``users`` in _reap (rule 1).
        for t in users.values():
            if t is not s:
                deliver(msg, t)
        if msg.pending == 0:
            # Every recipient failed at once (all doomed): still one summary.
            self._summary(msg)

    def _log_message(self, msg, text):
        s = msg.sender
        if self._message_log is not None:
            self._message_log.message(msg.id, s.peer, s.nick, msg.to, text)
        elif self._log_text:
            self.log.info("%s message %d %s -> %s: %s", s.peer, msg.id, s.nick, msg.to, text)
        else:
            self.log.info("%s message %d %s -> %s", s.peer, msg.id, s.nick, msg.to)

    def _deliver(self, msg, t):
        """Queue ``msg`` to ``t`` and remember it until ``t`` has it."""
        msg.pending += 1
        if not t.live:
            return self._failed(msg, t, t.closing or "left")
        if t.framed:
            data = msg.frame()
            unacked = t.unacked
            if unacked is None:
                unacked = t.unacked = {}
            unacked[msg.id] = msg
            if len(unacked) > self.limits.max_unacked:
                oldest = next(iter(unacked))
                self._failed(unacked.pop(oldest), t, "no receipt")
            self._queue(t, data)
        else:
            data = msg.line()
            if t.marks is None:
                t.marks = collections.deque()
            t.marks.append((t.enqueued + len(data), msg))
            self._queue(t, data)

    def _delivered(self, msg, t):
        msg.delivered += 1
        msg.pending -= 1
        if msg.to != "*":
            snd = msg.sender
            if snd.live:
                self._reply(snd, "DELIVERED %d %s" % (msg.id, msg.to))
        elif msg.pending == 0:
            self._summary(msg)

    def _failed(self, msg, t, reason):
        msg.pending -= 1
        self.log.info("message %d to %s failed: %s", msg.id, t.nick or t.peer, reason)
        if msg.to != "*":
            snd = msg.sender
            if snd.live:
                self._reply(snd, "FAILED %d %s %s" % (msg.id, msg.to, reason))
        elif msg.pending == 0:
            self._summary(msg)

    def _summary(self, msg):
        snd = msg.sender
        if snd.live:
            self._reply(snd, "DELIVERED %d * %d" % (msg.id, msg.delivered))

    # -------------------------------------------------------- pairs, presence

    def _withdraw(self, s):
        """Drop ``s``'s pending pair request, if any."""
        t = s.asked
        if t is not None:
            s.asked = None
            if t.askers:
                t.askers.discard(s)

    def _unpair(self, s, reason):
        t = s.partner
        s.partner = None
        t.partner = None
        if not self.shutting_down:
            self._reply(t, "UNPAIRED %s %s" % (s.nick, reason))
        self.log.info("%s and %s unpaired (%s: %s)", s.nick, t.nick, s.nick, reason)

    def _presence(self, s, text):
        """Tell the users who should know about ``s``: everyone while few.

        Above the presence limit only those with a stake in ``s`` hear of it
        (its partner and the users in a pair request with it), so that
        thousands joining cost linear, not quadratic, output.
        """
        if self.shutting_down:
            return
        if len(self.users) <= self.limits.presence_limit:
            audience = [u for u in self.users.values() if u is not s]
        else:
            audience = set(s.askers or ())
            if s.partner is not None:
                audience.add(s.partner)
            if s.asked is not None:
                audience.add(s.asked)
        line = frame = None
        for u in audience:
            if not u.live:
                continue
            if u.framed:
                if frame is None:
                    frame = encode_frame(text.encode())
                self._queue(u, frame)
            else:
                if line is None:
                    line = text.encode() + b"\n"
                self._queue(u, line)

    def _leave(self, s, reason):
        """``s`` leaves the chat (its connection may still be flushing)."""
        if s.nick is None:
            self.unregistered.pop(s, None)
            return
        if self.users.get(s.key) is not s:
            return  # left already, and now its connection ends
        if s.partner is not None:
            self._unpair(s, reason)
        # Presence goes out while s still counts and its requests stand, so
        # the users in a pair request with it hear that it left.
        self._presence(s, "LEFT %s %s" % (s.nick, reason))
        self._withdraw(s)
        if s.askers:
            for a in s.askers:
                a.asked = None
            s.askers = None
        del self.users[s.key]
        self.log.info("%s (%s) left: %s", s.nick, s.peer, reason)

    # ------------------------------------------------------------ output

    def _reply(self, s, text):
        self._queue(s, encode_frame(text.encode()) if s.framed else text.encode() + b"\n")

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
        if s.enqueued - s.written > self.limits.max_queue:
            self._doom(s, "slow consumer")

    # ------------------------------------------------------------ endings

    def _close_after_flush(self, s, reason):
        """Stop taking input from ``s``; close it once its output is written.

        The farewell reply is queued before this, so it is the last thing
        the peer reads; ``expire`` cuts off a peer that will not read it.
        """
        if not s.live:
            return
        self._leave(s, reason)
        s.live = False
        s.closing = reason
        s.deadline = self.now + self.limits.drain_time
        self.closing[s] = None
        if not s.out:
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
        """The end of ``s``: it leaves, and what it still held fails."""
        if s.gone:
            return
        self._leave(s, reason)
        s.live = False
        s.gone = True
        if s.closing is None:
            s.closing = reason
        self.sessions.discard(s)
        self.closing.pop(s, None)
        if s.marks:
            marks, s.marks = s.marks, None
            for _, msg in marks:
                self._failed(msg, s, reason)
        if s.unacked:
            unacked, s.unacked = s.unacked, None
            for msg in unacked.values():
                self._failed(msg, s, reason)
        self.to_close.append(s)


_GREETING_LINE = GREETING.encode() + b"\n"
