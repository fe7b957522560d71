"""Delivery: messages, their receipts and outcomes. Part of the sans-I/O chat.

Theory of operation
-------------------
Every chat message gets a ``Message`` record with a server-wide id. Each
recipient holds the record until it has the message:

* a line-mode recipient (nc, telnet) has it once every byte up to the end of
  its MSG lines has been written to its socket, so the record sits in
  ``session.marks`` with that stream offset;
* a framed recipient (a program) has it once it sends ``/ack ID``, so the
  record sits in ``session.unacked`` with the offset its frame ends at;
* an away user (see ``tcpchat.users``) has it held in ``user.held`` until it
  resumes, when the record moves to its new connection.

Whatever a recipient still holds when it goes for good, holds for longer
than ``Limits.receipt_timeout``, or holds past its memory limit, fails, and
the sender hears of it: ``FAILED ID NICK CODE TEXT``, the code saying from
the stream offsets whether any of it may have been written (``no-receipt``)
or certainly never was (``left``, ``slow-consumer``, ``shutdown``,
``away-expired``, ``away-full``).

Memory. Each receipt counts against its holder's ``max_queue`` with the
message's encoded size, its text (the Message keeps both) and RECEIPT_COST
of bookkeeping (``len(data) + msg.cost`` in ``session.receipt_bytes``;
``held_cost`` in ``user.held_bytes``), checked with tracemalloc so that the
limit is what the server really holds. A message shared by many recipients
(an /all) is counted in full by each: conservative, never under.

Rules that keep it honest:

1. ``msg.pending`` counts the receipts held for a message; each receipt
   leaves its holder before its outcome is told, so no recipient can count
   twice, and a broadcast holds one receipt of its own while it fans out,
   so it is summed up exactly once, after every recipient counted.
2. An outcome goes to the sender's ``User``, never to a connection: told
   at once if it is connected, kept for its resume if it is away.

This is a mixin of ``tcpchat.chat.Chat``: it uses the chat's output
(``_reply``, ``_error``, ``_queue``), its users (``_tell``,
``_tell_later``, ``_resumable``) and its limits.
"""

import collections

from .escaping import escape
from .framing import frame_header

__all__ = ["RECEIPT_COST", "Message", "Delivery", "held_cost"]

#: Bytes of bookkeeping counted per receipt (a queued MSG awaiting write or
#: /ack): the record, its slot in the receipt queue, its share of the
#: Message. Measured with tracemalloc in tests/test_chat.py.
RECEIPT_COST = 384


def held_cost(msg):
    """What an away user holds for ``msg``: its text and, counted as a
    second copy of the same size, the encoding it may already have."""
    return msg.cost + _text_size(msg.text)


class Message:
    """One chat message on its way: who sent it, who still has to get it."""

    __slots__ = ("id", "id_text", "sender", "to", "text", "cost", "pending", "delivered",
                 "_line", "_frame")

    def __init__(self, msg_id, sender, to, text):
        self.id = msg_id
        # In decimal once: SENT, MSG, DELIVERED and the log line each say it.
        self.id_text = str(msg_id)
        self.sender = sender  # a User
        self.to = to  # the recipient's nick at send time, or "*"
        self.text = text
        # What a receipt for it costs besides the encoded bytes it holds:
        # the text the record keeps beside them, and the bookkeeping. A
        # session holds ``len(data) + msg.cost`` for it (see Memory).
        # (_text_size, written out: this runs once a message.)
        self.cost = (len(text) if text.isascii() else 4 * len(text)) + RECEIPT_COST
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
            text = self.text
            if text.isascii() and text.isprintable():  # the usual: needs nothing
                data = f"MSG {self.id_text} {self.sender.nick} {self.to} {text}\n".encode()
            else:
                head = f"MSG {self.id_text} {self.sender.nick} {self.to} "
                if "\n" in text:
                    lines = text.split("\n")
                    text = ("\n" + head).join(
                        escape(line[:-1] if line[-1:] == "\r" else line) for line in lines
                    )
                else:
                    text = escape(text)
                data = (head + text + "\n").encode()
            self._line = data
        return data

    def frame(self):
        """The MSG as one frame: the exact text."""
        data = self._frame
        if data is None:
            data = f"MSG {self.id_text} {self.sender.nick} {self.to} {self.text}".encode()
            data = self._frame = frame_header(len(data)) + data
        return data


class Delivery:
    """Sending messages, their receipts and their outcomes (mixed into Chat)."""

    # ----------------------------------------------------- sending

    def _send_private(self, u, t, text):
        if len(text) > self._quick_text_limit and self._too_long(u, text):
            return
        msg_id = self._next_id
        self._next_id = msg_id + 1
        msg = Message(msg_id, u, t.nick, text)
        log_message = self._log_message
        if log_message is not None:
            log_message(msg.id_text, u.conn.peer, u.nick, t.nick, text)
        self._reply(u.conn, f"SENT {msg.id_text} {t.nick} 1")
        c = t.conn
        if c is not None and c.live:  # the usual case: straight to its connection
            msg.pending = 1
            self._deliver_to(msg, c)
        else:
            self._deliver(msg, t)

    def _send_all(self, u, text):
        users = self.users
        if len(users) < 2:
            return self._error(u.conn, "no-recipients", "nobody else is here")
        if len(text) > self._quick_text_limit and self._too_long(u, text):
            return
        msg = Message(self._next_id, u, "*", text)
        self._next_id += 1
        if self._log_message is not None:
            self._log_message(msg.id_text, u.conn.peer, u.nick, "*", text)
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

    def _log_through_logging(self, msg_id, peer, sender, to, text):
        """The message log without the shell's MessageLog (tests, embedders)."""
        if self._log_text:
            self.log.info("%s message %s %s -> %s: %s", peer, msg_id, sender, to, text)
        else:
            self.log.info("%s message %s %s -> %s", peer, msg_id, sender, to)


    # ---------------------------------------------------- receipts

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
        self._sends += 1
        if t.framed:
            data = msg.frame()
            unacked = t.unacked
            if unacked is None:
                unacked = t.unacked = {}
            unacked[msg.id] = (msg, self.now, t.enqueued + len(data))
            if len(unacked) > self.limits.max_unacked:
                self._shed_oldest(t, "more than %d messages awaited its receipt"
                                  % self.limits.max_unacked)
        else:
            data = msg.line()
            marks = t.marks
            if marks is None:
                marks = t.marks = collections.deque()
            marks.append((t.enqueued + len(data), msg, self.now))
        t.receipt_bytes += len(data) + msg.cost
        # _queue's work, written out: this runs for every message.
        out = t.out
        if not out:
            self.flushable.append(t)
        out.append(data)
        t.enqueued += len(data)
        if t.backed_up and t.held() > self.limits.max_queue:
            self._overflow(t)

    def _hold(self, msg, u):
        """Keep ``msg`` for away user ``u`` until it resumes, within the
        same memory limit as a connection (max_queue)."""
        cost = held_cost(msg)
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
        t.receipt_bytes -= len(msg._frame) + msg.cost
        self._failed(msg, "no-receipt", why)

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


    # ---------------------------------------------------- outcomes

    def _delivered(self, msgs):
        """Each of ``msgs`` has reached one recipient (written to it in line
        mode, acknowledged by it framed): DELIVERED to each sender, or
        counted toward its /all's summary.

        The receipts of one read or one /ack mostly come from one sender
        (the partner, a conversation), so a run of DELIVERED lines to one
        connection is queued as one chunk: one encoding and one entry in
        its output for the run, not one per message, as this runs for
        every message sent.
        """
        to = None  # the connection the run of ``lines`` goes to
        lines = []
        for msg in msgs:
            msg.delivered += 1
            msg.pending -= 1
            if msg.to != "*":
                snd = msg.sender.conn
                if snd is not None and snd.live:  # the usual case, first
                    if snd is not to:
                        if lines:
                            self._reply_run(to, lines)
                            lines = []
                        to = snd
                    lines.append(f"DELIVERED {msg.id_text} {msg.to}")
                    continue
                if lines:  # every line in the order its outcome came
                    self._reply_run(to, lines)
                    lines = []
                self._tell_later(msg.sender, "DELIVERED %d %s" % (msg.id, msg.to))
            elif msg.pending == 0:
                if lines:
                    self._reply_run(to, lines)
                    lines = []
                self._summary(msg)
        if lines:
            self._reply_run(to, lines)

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

    def _unwritten(self, t, reason):
        """The FAILED code and text for a message never written to ``t``,
        which ends for ``reason``."""
        if reason.startswith("slow consumer"):
            return "slow-consumer", "cut off for not reading; never written"
        if self.shutting_down:
            return "shutdown", "the server stopped before writing it"
        return "left", "left before it was written (%s)" % reason


    # -------------------------------------- when a connection ends

    def _hold_receipts(self, s, u):
        """``s`` is lost and its user away: every message it had not
        confirmed is held for the resume, before what came since."""
        msgs = [m for _, m, _ in s.marks or ()] + [m for m, _, _ in (s.unacked or {}).values()]
        s.marks = s.unacked = None
        held = collections.deque(msgs)
        if u.held:
            held.extend(u.held)
        u.held = held
        u.held_bytes = sum(held_cost(m) for m in held)

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


def _text_size(text):
    """An upper bound of ``text``'s UTF-8 size, without encoding it."""
    return len(text) if text.isascii() else 4 * len(text)
