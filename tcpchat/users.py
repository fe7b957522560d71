"""Users: nicks, pairs, presence, away and resume. Part of the sans-I/O chat.

Theory of operation
-------------------
A ``User`` is a registered nick; a ``Session`` (``tcpchat.chat``) is one
connection. A user outlives its connection: when the connection is lost
without /quit and resume is on, the user is *away* (``user.conn`` is None)
for ``Limits.resume_time``. Its nick stays taken, its pair formed, messages
to it are held and the outcomes of its own messages kept, until it comes
back with ``/resume TOKEN`` on a new connection, or the window ends and it
leaves for good (``_leave``). A restart with a state file is the same: every
user is away, its state saved by ``snapshot`` and taken back by ``restore``.

Resume tokens are single-use secrets: a new one with each SESSION line, kept
only as its SHA-256 (``user.token``, the key of ``chat.tokens``), compared
in constant time, never logged or saved in the clear.

Telling a user something: ``_tell`` for what it must hear even if it is
away (outcomes, a pair that ended: kept in ``user.told`` and said on
resume), ``_tell_now`` for state that a resume says again in full anyway
(PAIRED, PAIR-REQUEST).

Rules that keep it honest:

1. A user is in ``chat.users`` (by lower-cased nick) and ``chat.roster``
   (in join order) from registration until it leaves for good; away users
   are also in ``chat.away``, ordered by when their window ends.
2. Pair links are symmetric (``a.partner is b`` iff ``b.partner is a``);
   ``a.asked is b`` iff ``a in b.askers``. Every path that ends a pair or a
   request keeps both sides in step.

This is a mixin of ``tcpchat.chat.Chat``: it uses the chat's output
(``_reply``, ``_queue``), its delivery (``_failed``, ``Message``) and its
limits.
"""

import collections
import hashlib
import hmac

from .delivery import Message, held_cost
from .framing import encode_frame

__all__ = ["User", "Roster"]


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


class Roster:
    """Users, pairs, presence, away and resume, restarts (mixed into Chat)."""

    # ----------------------------------------------- resume tokens

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


    # ------------------------------------------------------- pairs

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

    def _decline_askers(self, t):
        """``t`` is paired: every pending request to it is declined."""
        askers = t.askers
        if not askers:
            return
        t.askers = None
        for a in sorted(askers, key=lambda a: a.key):  # a stable order for the log
            a.asked = None
            self._tell(a, "UNPAIRED %s request declined" % t.nick)


    # ------------------------------------- presence, away, leaving

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
        self._sends += len(audience)
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


    # ---------------------------------------------- telling a user

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


    # ---------------------------------------------------- restarts

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
                u.held_bytes += held_cost(msg)
        return len(users), len(messages)
