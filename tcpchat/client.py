"""tcpchat-client: the terminal client, one thread, one select loop.

Two halves, the same split as the server's:

``Session`` is the sans-I/O core. It is told what the user typed and what
the server said, and answers with what to print (``Line``) and what to
send. It knows the protocol's bookkeeping. The pipelining rule of
tcpchat(7): every message we send gets exactly one final reply, in order
(``OK``, ``ERR``, ``SENT``, ``PONG`` or ``BYE``), so a queue of what we sent
and are still waiting on tells which request a reply belongs to, and a
``SENT`` gives the id that later ``DELIVERED`` or ``FAILED`` lines refer to.
Lines that come before a final reply (``USER``, ``HELP``) belong to the
request at the head of the queue. One command falls outside the rule and
is kept out of the queue: ``/ack``, silent on success, whose only error
(``no-such-message``, with the ids) is recognisable by its code.

A message we send is one line on the screen: drawn when typed, with a
mark that changes in place (pending, sent, then delivered or failed with
the reason). The Session says which line a new state belongs to; the
Client asks the terminal to redraw that line in place, and when it cannot
(other lines came in between) prints the Session's short outcome line.

``Client`` is the shell: the socket, the terminal (tcpchat.terminal), the
signals, and the loop that moves bytes between them and the Session.

Losing the connection (or ``BYE server restarting``) does not end the
client (tcpchat(7), RESUME). The split holds there too: the Client owns
the timing (tries with backoff, Ctrl-C, the --wait of piped input) and
tells the Session ``lost`` and, on a new connection, ``greeted`` and
``rejoin``; the Session decides what to send (``/resume`` with the latest
token, or ``/nick`` again when the server no longer knows the token) and
what to say (messages whose outcome became unknown, one line on what the
resume brought). While offline it holds what is typed and sends it once
back. A resumed server sends again every message we may not have
acknowledged, with its original id: each id is shown once and acked again.

Exit status: 0 normal end (and, with piped input, every message
delivered); 1 piped input whose messages were not all delivered or that
got an error; 2 bad command line; 3 could not connect, or the server went
away and did not come back (--no-reconnect, Ctrl-C while reconnecting,
piped input past --wait).
"""

import argparse
import collections
import errno
import os
import random
import selectors
import signal
import socket
import sys
import time

from . import __version__
from .framing import FRAMED_MARKER, FrameDecoder, encode_frame
from .protocol import COMMANDS
from .render import (
    MAYBE_SEEN,
    Style,
    chat_line,
    escape,
    event_sentence,
    failure_reason,
    help_lines,
    mentions,
    message_mark,
    notice_line,
    outcome_line,
    own_line,
    parse_server_message,
    quote,
    rejected_line,
    who_summary,
)
from .terminal import history_path, open_terminal

__all__ = ["Session", "Line", "Client", "parse_greeting", "make_parser", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6078
#: The server's TLS port, the default with --tls (tcpchat.tls.DEFAULT_PORT).
DEFAULT_TLS_PORT = 6079

EXIT_OK = 0
EXIT_UNDELIVERED = 1
EXIT_USAGE = 2  # argparse's own
EXIT_CONNECTION = 3

#: Seconds for connect() and for the greeting line after it.
CONNECT_TIMEOUT = 10.0
#: Reconnecting after a loss: the first wait, in seconds, doubled after
#: each failed try up to RECONNECT_MAX, each wait moved at random by up to
#: RECONNECT_JITTER of itself either way, so that the clients of a
#: restarted server do not all knock at the same instant.
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 10.0
RECONNECT_JITTER = 0.25
#: Seconds one reconnect try may take (connect and greeting). The loop
#: waits meanwhile (keys wait in the terminal, unlost), so it is short;
#: Ctrl-C ends a try at once.
RECONNECT_TIMEOUT = 5.0
#: Seconds of silence after which TCP keepalive starts probing the
#: connection: one that died without a word (Wi-Fi gone, a laptop lid) is
#: then found within about twice this, and the client reconnects.
KEEPALIVE = 30
#: Seconds to wait for BYE after sending /quit before leaving anyway.
QUIT_WAIT = 2.0
#: Default seconds piped mode waits at end of input for outcomes.
DEFAULT_WAIT = 10.0
#: Longest greeting line we read, in bytes; the real one is under 200.
MAX_GREETING = 4096
#: Message ids per /ack: far below any server's frame limit (ids are short).
ACK_BATCH = 1000
#: Largest frame accepted from the server, in bytes. The server's own
#: limit for what clients send is 64 KiB; a MSG adds a header to that.
MAX_SERVER_FRAME = 1 << 20
#: Bytes waiting to go to the server above which piped mode stops reading
#: stdin for a while, so a huge input file is not read into memory at once.
PIPE_BACKLOG = 64 * 1024
#: The server's limits when its greeting does not say (tcpchat(7)): the
#: largest frame a client may send, and the room a message's header takes
#: in it, in bytes.
DEFAULT_MAX_FRAME = 65536
HEADER_ROOM = 128
#: How many names the line on arrival shows before "and N more".
WHO_NAMES = 5
#: Lines typed while the connection is down, kept to send once it is back;
#: one more is refused with a line saying so. Piped input needs no bound:
#: stdin is not read while the connection is down.
HOLD_LINES = 100
#: Message ids shown, remembered so that one the server delivers again
#: after a resume is shown once: far above the server's --max-unacked.
SHOWN_IDS = 10000
#: Why a message has no known outcome (the "unknown" state).
LOST_IN_FLIGHT = "outcome unknown: lost with the connection before the server answered"
FORGOTTEN = "outcome unknown: the server lost track of it"


def parse_greeting(line):
    """``HELLO VERSION [NAME=VALUE ...] TEXT`` as ``(version, params, text)``.

    The NAME=VALUE words are the server's limits and features; a client
    takes words containing ``=`` until the first that does not (tcpchat(7)).
    An older server sends none: ``params`` is then empty.
    """
    words = line.split(" ")
    version = words[1] if len(words) > 1 else ""
    params = {}
    rest = words[2:]
    while rest and "=" in rest[0]:
        name, _, value = rest.pop(0).partition("=")
        params[name] = value
    return version, params, " ".join(rest)


def _limit(params, name, default):
    value = params.get(name, "")
    return int(value) if value.isdigit() and int(value) > 0 else default


class Outgoing:
    """A chat message we sent, from the keypress to its final outcome."""

    __slots__ = ("text", "to", "audience", "when", "msg_id", "total", "state",
                 "got", "reason")

    def __init__(self, text, to, audience, when):
        self.text = text
        self.to = to  # "*" or a nick: our guess until SENT says for sure
        self.audience = audience  # "private", "pair" or "everyone"
        self.when = when  # when it was typed: its line keeps that stamp
        self.msg_id = None  # set by SENT
        self.total = None  # recipients counted by SENT
        # pending -> sent -> delivered | failed | unconfirmed; refused (ERR);
        # queued (typed while the connection was down) -> pending; pending
        # or sent -> unknown when the connection or the server forgot it.
        self.state = "pending"
        self.got = None  # DELIVERED ID * N: how many have it
        self.reason = None  # why it failed or was refused, for a person

    @property
    def open(self):
        return self.state in ("pending", "queued", "sent")

    def __repr__(self):
        return "Outgoing(#%s to %r, %r, %s)" % (self.msg_id, self.to, self.text, self.state)


class Line:
    """One thing for the Client to print.

    ``kind``: "chat" (what someone said: stdout when input is piped),
    "notice" (anything else: stderr when piped), "own" (the first drawing of
    a message we sent, over the echo of the typed line) or "mark" (the same
    message's line redrawn with a new state; ``note`` is the line to print
    instead when it cannot be redrawn, None when nothing need be said).
    ``bell``: this line wants the user's attention.
    """

    __slots__ = ("text", "kind", "out", "note", "bell")

    def __init__(self, text, kind="notice", out=None, note=None, bell=False):
        self.text = text
        self.kind = kind
        self.out = out
        self.note = note
        self.bell = bell

    def __repr__(self):
        return "Line(%s, %r)" % (self.kind, self.text)


class _Expect:
    """One request on the wire whose final reply has not come yet (or,
    typed while the connection is down, one held to be sent)."""

    __slots__ = ("what", "outgoing", "setup", "arrival", "typed", "resume")

    def __init__(self, what, outgoing=None, setup=False, arrival=False, typed=False,
                 resume=None):
        self.what = what  # how to name it in an error line
        self.outgoing = outgoing  # the chat message, for chat text
        self.setup = setup  # the --nick / --pair sent for the user
        self.arrival = arrival  # our own /who on arrival: one line, not a list
        self.typed = typed  # a command the user typed
        # "resume": our /resume; "end": the /ping after it, whose PONG
        # comes after everything the resume sends (pipelining keeps order).
        self.resume = resume


class _Replay:
    """What a resume brought, between OK resume and the PONG after it,
    summed up for one line."""

    __slots__ = ("partner", "paired", "delivered", "named", "failed", "new")

    #: Delivered messages named (quoted) in the line; the rest are counted.
    NAMED = 3

    def __init__(self, partner):
        self.partner = partner  # whom we were paired with at the loss
        self.paired = False  # PAIRED with them again
        self.delivered = 0  # our messages delivered while away
        self.named = []  # short quotes of the first few
        self.failed = 0
        self.new = 0  # messages for us not shown before


class _Who:
    """USER lines of the /who on arrival, summed up as they come (a crowd
    can be thousands: only the first few names are kept)."""

    __slots__ = ("first", "count", "paired")

    def __init__(self):
        self.first = []
        self.count = 0
        self.paired = 0


def _count(n, noun):
    return "%d %s%s" % (n, noun, "" if n == 1 else "s")


def _audience(to, partner):
    if to == "*":
        return "everyone"
    if partner is not None and to.lower() == partner.lower():
        return "pair"
    return "private"


class Session:
    """The client's protocol state, without I/O (see module docstring).

    ``user_line`` and ``server_message`` return ``(show, send)``: Lines to
    print, in order, and then messages to send. Printing first matters: an
    ``/ack`` must only go out once its message is on the screen.
    """

    def __init__(self, style, nick=None, pair=None, interactive=True, bell=True,
                 reconnect=True):
        self.style = style
        self.reconnect = reconnect  # the Client comes back after a loss
        self.wanted_nick = nick
        self.pair_target = pair
        self.interactive = interactive
        self.bell = bell and interactive
        self.nick = None
        self.partner = None
        self.pair_requested = None  # whom our pending /pair asks
        self.registered_once = False
        self.registration_failed = False
        self.bye = False
        self.restarting = False  # the BYE was "server restarting"
        self.leaving = False  # the user asked to quit
        # Reconnecting (issue 10). The Client says when the connection is
        # lost (lost) and when a new one is greeted (rejoin); in between the
        # Session is offline and holds what is typed. ``restoring``, on the
        # new connection: "resume" (our /resume unanswered), "replay" (OK
        # resume came; what it resends runs until the PONG of the /ping
        # sent after it) or "register" (the token was refused: /nick again).
        self.offline = False
        self.restoring = None
        self._replay = None  # _Replay while restoring is "replay"
        self._fresh = False  # registering afresh: the server lost our session
        self._repair = None  # whom to ask to pair again once registered afresh
        self._held = collections.deque()  # (wire, _Expect) typed while offline
        # MSG ids shown (an ordered set, oldest first, SHOWN_IDS at most).
        self._shown = collections.OrderedDict()
        # The server's limits, from its greeting (greeted), in bytes.
        self.max_frame = DEFAULT_MAX_FRAME
        self.max_text = DEFAULT_MAX_FRAME - HEADER_ROOM
        self.server_params = {}
        # SESSION TOKEN SECONDS (issue 10): kept for resuming, never shown.
        self.resume_token = None
        self.resume_seconds = None
        self._setup = 0  # --nick / --pair requests not answered yet
        self.errors = 0  # ERR answers to what we sent (piped mode's status)
        self.undelivered = 0  # messages that failed, wholly or in part
        self._waiting = collections.deque()  # _Expect, in the order sent
        self._by_id = {}  # message id -> Outgoing, from SENT to its outcome
        # Messages without an outcome yet, in the order typed; settled ones
        # leave, so a long session does not keep every line it ever sent.
        self._open = []
        self._who = None  # _Who while our /who on arrival is answered
        # Nicks we have heard of (lower case -> as written), for Tab.
        self.nicks = {}
        # Who asked us to pair (lower case): our /pair to them completes it.
        self.asked_by = set()

    # -- the connection --

    def greeted(self, greeting):
        """The server's greeting line: learn its limits. Without them (an
        older server) the documented defaults stand."""
        _version, params, _text = parse_greeting(greeting)
        self.server_params = params
        self.offline = False
        self.max_frame = _limit(params, "max-frame", DEFAULT_MAX_FRAME)
        self.max_text = min(_limit(params, "max-text", self.max_frame - HEADER_ROOM),
                            self.max_frame)

    def lost(self, when):
        """The connection is gone and the Client will connect again.
        Returns the Lines to show: what was in flight and is now unknown.

        A message the server had not answered with SENT may or may not
        have reached it, and if it did, its outcome will name an id we
        never learnt: its outcome is unknown, and the user is told so now.
        A message with its SENT stays open: its outcome arrives by id after
        the resume. Requests that were not answered are dropped; a command
        the user typed is named, so nothing goes unanswered unsaid.
        """
        self.offline = True
        self.restoring = None
        self._replay = None
        self._who = None
        self.bye = self.restarting = False
        show = []
        for req in self._waiting:
            out = req.outgoing
            if out is not None and out.open:
                out.reason = LOST_IN_FLIGHT
                self._settle(out, "unknown", failed=True)
                show += self._redraw(out, when)
            elif req.typed:
                show.append(Line(notice_line(
                    when, "No answer to %s before the connection was lost." % req.what,
                    self.style, "warn")))
        self._waiting.clear()
        self._setup = 0
        return show

    def rejoin(self, when):
        """Greeted on a new connection after ``lost``: ``(show, send)``.

        With a token, /resume it, and /ping at once: the PONG ends what
        the resume sends again. Without one (the server keeps no sessions)
        register the same nick again. Never registered: start over.
        """
        if self.resume_token:
            self.restoring = "resume"
            return [], (self._command("/resume " + self.resume_token, what="/resume",
                                      resume="resume")
                        + self._command("/ping", resume="end"))
        if self.nick is not None:
            return self._register_again(when, "The server keeps no sessions")
        show = [Line(notice_line(when, "Connected again.", self.style, "good"))]
        send = [] if self.registered_once else self.start()
        # What was typed goes in order, after the --nick of a first start.
        # Only chat for a nick refused meanwhile waits for the next OK nick.
        if not self._fresh or any(w.lower().startswith("/nick ") for w, _ in self._held):
            more_show, more = self._release(when)
            show, send = show + more_show, send + more
        return show, send

    def _register_again(self, when, why):
        """The server does not know us (any more): register the same nick
        as a new session, ask the same pair again once registered, and tell
        which messages now have an unknown outcome. ``(show, send)``."""
        self.restoring = "register"
        self._fresh = True
        self.resume_token = None
        self._replay = None
        # A server that lost its state may use message ids again.
        self._shown.clear()
        show = [Line(notice_line(when, "%s; registering again as %s." % (why, escape(self.nick)),
                                 self.style, "warn"))]
        for out in list(self._open):
            if out.msg_id is not None and out.open:
                out.reason = FORGOTTEN
                self._settle(out, "unknown", failed=True)
                show += self._redraw(out, when)
        self._by_id.clear()
        self._repair = self._repair or self.partner or self.pair_requested
        self.partner = self.pair_requested = None
        self.asked_by.clear()
        return show, self._command("/nick " + self.nick, setup=True)

    def _registered_again(self, when):
        """OK nick for ``_register_again``: ask the pair again, send what
        was held. ``(show, send)``."""
        self._fresh = False
        self.restoring = None
        text = "Back as %s, in a new session" % escape(self.nick)
        send = []
        if self._repair:
            text += "; asking %s to pair again" % escape(self._repair)
            send += self._command("/pair " + self._repair, setup=True)
            self._repair = None
        show, more = self._release(when)
        return [Line(notice_line(when, text + ".", self.style, "good"))] + show, send + more

    def _end_replay(self, when):
        """The PONG after a resume: one line for all it brought, then what
        was held goes. ``(show, send)``."""
        r, self._replay = self._replay, None
        self.restoring = None
        text = "Back as %s" % escape(self.nick)
        if r.paired:
            text += ", paired with %s again" % escape(self.partner)
        elif r.partner is not None and self.partner is not None and \
                self.partner.lower() == r.partner.lower():
            # No PAIRED and no UNPAIRED: the pair is gone all the same.
            self.partner = None
            text += ", no longer paired with %s" % escape(r.partner)
        facts = []
        if r.delivered:
            named = ", ".join(r.named)
            if r.delivered > len(r.named):
                named += ", ..."
            facts.append("%d of your messages delivered while you were away (%s)"
                         % (r.delivered, named))
        if r.failed:
            facts.append("%d failed (said above)" % r.failed)
        if r.new:
            facts.append("%s for you above" % _count(r.new, "new message"))
        if self._held:
            facts.append("sending the %s typed meanwhile" % _count(len(self._held), "line"))
        if facts:
            text += ": " + ", ".join(facts)
        show, send = self._release(when)
        return [Line(notice_line(when, text + ".", self.style, "good"))] + show, send

    @property
    def coded_failures(self):
        # A server that states its limits speaks the protocol in which
        # FAILED carries a CODE word; an older one sends prose only.
        return bool(self.server_params)

    # -- what the user typed --

    def prompt(self):
        offline = " (offline)" if self.offline else ""
        if self.nick is None:
            return "nick%s> " % offline
        nick = escape(self.nick)
        if self.partner is not None:
            nick += self.style.arrow + escape(self.partner)
        return "%s%s> " % (nick, offline)

    def asking_nick(self):
        """Whether a typed line is the nick asked for (not history-worthy)."""
        return self.nick is None and self.interactive

    def start(self):
        """What to send right after the greeting: /nick when we have one."""
        if self.wanted_nick:
            return self._command("/nick " + self.wanted_nick, setup=True)
        return []

    def ready(self):
        """Whether typed or piped lines may go: not while the --nick and
        --pair requests are unanswered (piped lines would race them), nor
        while the connection is down or being restored."""
        return self._setup == 0 and not self._holding()

    def _holding(self):
        """Whether what is typed now is held, to go once the session is
        back: lines sent before a resume answers would be refused."""
        return self.offline or self.restoring is not None

    def user_line(self, line, when):
        """A line the user typed (or piped). Returns ``(show, send)``."""
        stripped = line.strip()
        if not stripped:
            return [], []
        word, _, rest = line.partition(" ")
        word = word.lower()
        first = stripped.split(" ", 1)[0].lower()
        if first in ("/quit", ":quit:"):  # tcpchat(7): ":quit:" in any case
            # Sent as /quit: a server older than that rule would broadcast
            # ":QUIT: bye" as chat instead of ending the session.
            self.leaving = True
            if self.offline:
                return [], []  # nobody to tell: the Client stops reconnecting
            reason = stripped[len(first):].strip()
            return [], self._command(("/quit " + reason).rstrip())
        if line.startswith("//"):
            return self._chat(line, line[1:], None, None, when)
        if not line.startswith("/"):
            if self.asking_nick():
                # Before registering, a bare word is the nick being asked for.
                wire = "/nick " + stripped
                return self._put(wire, _Expect(escape(wire), typed=True), when)
            return self._chat(line, line, None, None, when)
        if word == "/help":
            # What a person types, from us: the server's /help describes the
            # protocol, for people on nc and for client authors.
            return [Line(text) for text in help_lines(self.style)], []
        if word in ("/msg", "/w"):
            name, _, text = rest.lstrip(" ").partition(" ")
            if name and text.strip():
                return self._chat(line, text, name, line, when)
        elif word == "/all":
            if rest.strip():
                return self._chat(line, rest, "*", line, when)
        elif word == "/ack":
            # Only ids: a failed /ack's ERR names its ids, and any other ERR
            # (usage) could not be told from the answer to a queued request.
            ids = rest.split()
            if not ids or not all(i.isdigit() for i in ids):
                return [self._refused(when, escape(line), "usage", "/ack ID [ID ...]")], []
            if self._holding():
                return [self._refused(when, escape(line), "offline",
                                      "not connected; the client acks by itself")], []
            return [], [line]
        return self._refuse_long(line, when) or \
            self._put(line, _Expect(escape(line), typed=True), when)

    def quit(self):
        """The messages that leave: /quit, answered by BYE."""
        self.leaving = True
        return self._command("/quit")

    def _command(self, line, setup=False, arrival=False, what=None, resume=None):
        """Send ``line`` now (the client's own requests are never held)."""
        self._waiting.append(_Expect(what or escape(line), setup=setup, arrival=arrival,
                                     resume=resume))
        self._setup += setup
        return [line]

    def _put(self, wire, req, when):
        """``(show, send)`` for a request the user typed: sent now, or held
        while the connection is down (at most HOLD_LINES when interactive,
        each line beyond refused, so nothing typed vanishes unsaid)."""
        if not self._holding():
            self._waiting.append(req)
            self._setup += req.setup
            return [], [wire]
        out = req.outgoing
        if self.interactive and len(self._held) >= HOLD_LINES:
            reason = "not sent: %d lines already wait for the connection" % HOLD_LINES
            if out is None:
                return [self._refused(when, req.what, "offline", reason)], []
            out.reason = reason
            self.errors += 1
            self._settle(out, "refused", failed=True)
            return [Line(self._own(out), "own", out)], []
        self._held.append((wire, req))
        if out is not None:
            out.state = "queued"
            return [Line(self._own(out), "own", out)] if self.interactive else [], []
        return [Line(notice_line(when, "Queued: %s goes once the connection is back."
                                 % req.what, self.style))], []

    def _release(self, when):
        """``(show, send)`` sending what was held, in the order typed."""
        show, send = [], []
        while self._held:
            wire, req = self._held.popleft()
            self._waiting.append(req)
            self._setup += req.setup
            send.append(wire)
            if req.outgoing is not None and req.outgoing.state == "queued":
                req.outgoing.state = "pending"
                show += self._redraw(req.outgoing, when)
        return show, send

    def _refused(self, when, what, code, reason):
        """A line we did not send, and why: counted as an error, as the
        server's refusal would have been."""
        self.errors += 1
        return Line(rejected_line(when, what, code, reason, self.style))

    def _refuse_long(self, wire, when, text=None):
        """``(show, send)`` refusing what the server would cut us off for
        (a frame over its max-frame) or refuse (text over its max-text),
        with the limit in the error; None when it fits."""
        size = len(wire.encode("utf-8", "surrogateescape"))
        if text is not None:
            length = len(text.encode("utf-8", "surrogateescape"))
            if length > self.max_text:
                return [self._refused(
                    when, "message %s" % quote(text), "too-long",
                    "it is %d bytes; this server takes at most %d bytes of text "
                    "in a message" % (length, self.max_text))], []
        if size > self.max_frame:
            what = "message %s" % quote(text) if text is not None else quote(wire)
            return [self._refused(
                when, what, "too-long",
                "it is %d bytes; this server takes at most %d bytes in one go"
                % (size, self.max_frame))], []
        return None

    def _chat(self, typed, text, to, wire, when):
        """Chat text for ``to`` ("*", a nick, or None: plain text, for the
        partner when paired, else everyone) as ``wire`` (None: as typed)."""
        if to is None:
            if self.partner is not None:
                # Text for the partner goes as /msg: it can reach nobody
                # else, even if the pair ends before the server reads it.
                to = self.partner
                wire = "/msg %s %s" % (self.partner, text)
            else:
                to = "*"
        if wire is None:
            if self._holding():
                # Held, it goes after a resume that may have paired us
                # meanwhile: plain text would then go to the partner.
                wire = "/all " + text
            else:
                wire = typed  # "//text" too: the server takes one slash off
        refused = self._refuse_long(wire, when, text)
        if refused is not None:
            return refused
        out = Outgoing(text, to, _audience(to, self.partner), when)
        self._open.append(out)
        req = _Expect(escape(typed), out)
        if self._holding():
            return self._put(wire, req, when)
        self._waiting.append(req)
        show = [Line(self._own(out), "own", out)] if self.interactive else []
        return show, [wire]

    def _own(self, out):
        """The one line of ``out`` with the mark for its state now."""
        state = "failed" if out.state == "refused" else out.state
        mark = message_mark(state, self.style, got=out.got,
                            total=out.total if out.to == "*" else None,
                            reason=out.reason)
        return own_line(out.when, self.nick or "you", out.audience, out.to, out.text,
                        mark, self.style)

    def _redraw(self, out, when):
        """The Line that moves ``out`` to its new state: redrawn in place
        when possible, else (for a final state) an outcome line."""
        note = None
        if not out.open:
            note = outcome_line(when, out.state, out.text, out.to, self.style, got=out.got,
                                total=out.total, reason=out.reason, msg_id=out.msg_id)
        if not self.interactive:
            return [Line(note)] if note else []
        return [Line(self._own(out), "mark", out, note)]

    # Commands after which the next word is a nick.
    _NICK_ARGUMENT = ("/msg", "/w", "/pair")

    def completions(self, before, word):
        """Candidates for Tab: the word being typed, after ``before``."""
        if not before.strip():
            if word.startswith("/") or word.startswith(":"):
                # /ack and /resume are the client's to send, not typed.
                pool = [c for c in COMMANDS if c not in ("/ack", "/resume")]
            else:
                pool = self._other_nicks()
        else:
            words = before.split()
            if words[0].lower() in self._NICK_ARGUMENT and len(words) > 1:
                return []  # past the nick: that is message text
            pool = self._other_nicks()
        low = word.lower()
        return sorted(c for c in pool if c.lower().startswith(low))

    def _other_nicks(self):
        me = (self.nick or "").lower()
        return [n for key, n in self.nicks.items() if key != me]

    def _heard_of(self, nick):
        if nick and nick != "*":
            self.nicks[nick.lower()] = nick

    # -- what the server said --

    def server_message(self, text, when):
        """One message from the server. Returns ``(show, send)``."""
        msg = parse_server_message(text)
        k = msg.keyword
        if k in ("JOINED", "USER", "PAIR-REQUEST", "PAIRED"):
            self._heard_of(msg.fields[0])
        elif k == "MSG":
            self._heard_of(msg.fields[1])
        elif k == "LEFT" and msg.fields:
            self.nicks.pop(msg.fields[0].lower(), None)
            self.asked_by.discard(msg.fields[0].lower())
        elif k == "RENAMED":
            self.nicks.pop(msg.fields[0].lower(), None)
            self._heard_of(msg.fields[1])
        name = self._HANDLERS.get(k)
        if name is not None:
            return getattr(self, name)(msg, when)
        return self._sentence(msg, when), []

    def _sentence(self, msg, when, partner=None, request=None, attention=False):
        found = event_sentence(msg, partner if partner is not None else self.partner,
                               request)
        if found is None:
            return []
        text, role = found
        return [Line(notice_line(when, text, self.style, role, attention=attention),
                     bell=attention and self.bell)]

    def _answered(self):
        """The oldest request still waiting: this answer is its answer."""
        if not self._waiting:
            return None
        req = self._waiting.popleft()
        self._setup -= req.setup
        return req

    def _on_msg(self, msg, when):
        msg_id, sender, to = msg.fields
        if to == "*":
            audience = "everyone"
        else:
            # To us alone; from our partner it is pair talk.
            audience = _audience(sender, self.partner)
        send = ["/ack " + msg_id] if msg_id.isdigit() else []
        if msg_id.isdigit() and not self._first_showing(msg_id):
            # Sent again after a resume, our ack having been lost with the
            # connection: acked again, not shown twice (tcpchat(7), RESUME).
            return [], send
        if self._replay is not None:
            self._replay.new += 1
        # To us alone, or naming us: the lines a person must not miss.
        attention = audience != "everyone" or mentions(msg.text, self.nick)
        line = chat_line(when, sender, audience, msg.text, self.style, me=self.nick,
                         attention=attention)
        return [Line(line, "chat", bell=attention and self.bell)], send

    def _first_showing(self, msg_id):
        """Whether message ``msg_id`` is new to the screen; remembers it."""
        if msg_id in self._shown:
            return False
        self._shown[msg_id] = None
        if len(self._shown) > SHOWN_IDS:
            self._shown.popitem(last=False)
        return True

    def _on_sent(self, msg, when):
        msg_id, to, count = msg.fields
        req = self._answered()
        out = req.outgoing if req is not None else None
        if out is None:
            # Not ours to match; still track its fate, without a line.
            out = Outgoing("", to, _audience(to, self.partner), when)
            self._open.append(out)
            out.state = "sent"
            out.to, out.msg_id = to, msg_id
            self._by_id[msg_id] = out
            return [], []
        out.to = to
        out.audience = _audience(to, self.partner) if to != "*" else "everyone"
        out.msg_id = msg_id
        out.total = int(count) if count.isdigit() else None
        out.state = "sent"
        self._by_id[msg_id] = out
        return self._redraw(out, when), []

    def _on_delivered(self, msg, when):
        msg_id, nick = msg.fields
        out = self._by_id.pop(msg_id, None)
        if out is None:  # not one we know of: still say so
            out = Outgoing("", nick, "private", when)
            out.msg_id = msg_id
        partial = False
        if nick == "*":
            out.got = int(msg.text) if msg.text.isdigit() else None
            partial = out.got is not None and out.total is not None and out.got < out.total
            self._settle(out, "delivered", failed=partial)
        else:
            self._settle(out, "delivered")
        if self._replay is not None and out.text and not partial:
            # Said in the resume's one line; its own line still gets its
            # mark if it is the last thing on the screen.
            r = self._replay
            r.delivered += 1
            if len(r.named) < r.NAMED:
                r.named.append(quote(out.text, 24))
            return ([Line(self._own(out), "mark", out)] if self.interactive
                    else self._redraw(out, when)), []
        return self._redraw(out, when), []

    def _on_failed(self, msg, when):
        msg_id, nick = msg.fields
        code, reason = failure_reason(msg.text, nick, self.coded_failures)
        out = self._by_id.pop(msg_id, None)
        if out is None:
            out = Outgoing("", nick, "private", when)
            out.msg_id = msg_id
        out.reason = reason
        # Only no-receipt means the recipient may have seen it.
        self._settle(out, "unconfirmed" if code == MAYBE_SEEN else "failed", failed=True)
        if self._replay is not None:
            self._replay.failed += 1
        return self._redraw(out, when), []

    def _on_err(self, msg, when):
        code = msg.fields[0]
        if code == "timeout":
            # No /nick in time: the server closes on purpose, and coming
            # back would only wait at the nick prompt to be closed again.
            self.bye = True
        if code in ("no-such-message", "timeout", "server-full", "too-many-connections"):
            # Not an answer to a queued request: an /ack's own error (its
            # ids are the first words of the text), or the server giving up
            # on us or turning us away.
            return [Line(rejected_line(when, None, code, msg.text, self.style))], []
        req = self._answered()
        if req is not None and req.resume == "resume":
            # ERR bad-token: the server restarted without our session (or
            # the window passed): start a new one under the same nick.
            return self._register_again(when, "The server no longer has your session")
        self.errors += 1
        what = None
        if req is not None:
            if req.outgoing is not None:
                out = req.outgoing
                out.reason = msg.text or code
                self._settle(out, "refused", failed=True)
                return self._redraw(out, when), []
            what = req.what
            if req.setup and self._fresh and req.what.lower().startswith("/nick"):
                # Our nick, taken meanwhile: the user picks another, as at
                # the start; what is held waits for it.
                self.nick = None
                self.restoring = None
            if req.what.lower().startswith("/nick") and self.nick is None:
                self.registration_failed = True
        show = [Line(rejected_line(when, what, code, msg.text, self.style))]
        if self.registration_failed and self.nick is None and self.interactive:
            show.append(Line(notice_line(when, "Type the nick you want.", self.style)))
        return show, []

    def _on_ok(self, msg, when):
        cmd = msg.fields[0].lower()
        if cmd == "help":
            # The final reply to a /help, after its HELP lines: it answers
            # the head of the queue only if that is a /help (we send none
            # ourselves: /help is the client's own). An older server sends
            # OK help TEXT lines instead, with no final count.
            if not msg.text.isdigit():
                return self._sentence(msg, when), []
            if self._waiting and self._waiting[0].what.lower().startswith("/help"):
                self._answered()
            return [], []
        req = self._answered()
        if cmd == "who" and req is not None and req.arrival:
            who, self._who = self._who or _Who(), None
            return [Line(notice_line(when, who_summary(who.first, who.count, who.paired,
                                                       self.style), self.style,
                                     "plain"))], []
        partner_before = self.partner
        send = []
        if cmd == "nick":
            self.nick = msg.text
            self.registration_failed = False
            if not self.registered_once:
                self.registered_once = True
                if self.pair_target:
                    send += self._command("/pair " + self.pair_target, setup=True)
                if self.interactive:
                    # Who is here, in one line, for someone arriving.
                    send += self._command("/who", arrival=True)
            elif self._fresh:
                return self._registered_again(when)
            if self._held and not self._holding():
                show, more = self._release(when)
                return self._sentence(msg, when) + show, send + more
        elif cmd == "resume":
            self.nick = msg.text
            self.registration_failed = False
            self.registered_once = True
            self.restoring = "replay"
            self._replay = _Replay(self.partner)
            return [], []
        elif cmd == "pair":
            self.pair_requested = msg.text
            if msg.text.lower() in self.asked_by:
                return [], send  # PAIRED follows at once; "waiting" would mislead
        elif cmd == "unpair":
            self.partner = None
            self.pair_requested = None
        return self._sentence(msg, when, partner_before), send

    def _on_user(self, msg, when):
        head = self._waiting[0] if self._waiting else None
        if head is None or not head.arrival:
            return self._sentence(msg, when), []
        nick, state = msg.fields
        if nick.lower() == (self.nick or "").lower():
            return [], []
        who = self._who = self._who or _Who()
        who.count += 1
        who.paired += state == "paired"
        if len(who.first) < WHO_NAMES:
            who.first.append((nick, state))
        return [], []

    def _on_session(self, msg, when):
        token, seconds = msg.fields
        self.resume_token = token or None
        self.resume_seconds = int(seconds) if seconds.isdigit() else None
        return [], []

    def _on_pong(self, msg, when):
        req = self._answered()
        if req is not None and req.resume == "end":
            # Everything the resume sent again has come: sum it up. After a
            # refused token there is nothing to sum up.
            return self._end_replay(when) if self.restoring == "replay" else ([], [])
        return self._sentence(msg, when), []

    def _on_bye(self, msg, when):
        self._answered()
        self.bye = True
        reason = msg.text.strip().lower()
        self.restarting = reason == "server restarting"
        if self.leaving and reason in ("", "goodbye"):
            # Our own /quit answered: a plain goodbye, not the server's doing.
            return [Line(notice_line(when, "You left the chat.", self.style))], []
        if self.restarting and self.reconnect and not self.leaving:
            return [Line(notice_line(when, "The server is restarting.", self.style, "warn"))], []
        return self._sentence(msg, when), []

    def _on_pair_request(self, msg, when):
        nick = msg.fields[0].lower()
        if self._replay is not None and nick in self.asked_by:
            return [], []  # said again by the resume: told before
        self.asked_by.add(nick)
        return self._sentence(msg, when, attention=True), []

    def _on_paired(self, msg, when):
        r = self._replay
        again = r is not None and r.partner is not None and \
            r.partner.lower() == msg.fields[0].lower()
        self.partner = msg.fields[0]
        self.pair_requested = None
        self.asked_by.discard(self.partner.lower())
        if again:
            r.paired = True  # the resume's one line says so
            return [], []
        return self._sentence(msg, when), []

    def _on_unpaired(self, msg, when):
        before = self.partner
        nick = msg.fields[0].lower()
        request = None
        if before is not None and before.lower() == nick:
            self.partner = None
        elif nick in self.asked_by:
            # They withdrew their request to us (or asked someone else).
            self.asked_by.discard(nick)
            request = "theirs"
        elif self.pair_requested is not None and self.pair_requested.lower() == nick:
            # Ours to them is over: they paired with someone else.
            self.pair_requested = None
            request = "ours"
        return self._sentence(msg, when, before, request), []

    def _on_renamed(self, msg, when):
        old, new = msg.fields
        if self.partner is not None and self.partner.lower() == old.lower():
            self.partner = new
        if self.pair_requested is not None and self.pair_requested.lower() == old.lower():
            self.pair_requested = new
        if old.lower() in self.asked_by:
            self.asked_by.discard(old.lower())
            self.asked_by.add(new.lower())
        return self._sentence(msg, when), []

    # Keywords that change state or need our records; every other keyword
    # is only told to the user (render.event_sentence).
    _HANDLERS = {
        "MSG": "_on_msg",
        "SENT": "_on_sent",
        "DELIVERED": "_on_delivered",
        "FAILED": "_on_failed",
        "ERR": "_on_err",
        "OK": "_on_ok",
        "USER": "_on_user",
        "PONG": "_on_pong",
        "BYE": "_on_bye",
        "SESSION": "_on_session",
        "PAIR-REQUEST": "_on_pair_request",
        "PAIRED": "_on_paired",
        "UNPAIRED": "_on_unpaired",
        "RENAMED": "_on_renamed",
    }

    # -- the account at the end --

    def _settle(self, out, state, failed=False):
        if not out.open:
            return
        out.state = state
        if failed:
            self.undelivered += 1
        try:
            self._open.remove(out)
        except ValueError:
            pass

    def open_messages(self):
        """Messages whose fate is not known yet (no SENT, or no outcome)."""
        return list(self._open)

    def all_delivered(self):
        """Every message sent so far reached everyone it was meant for."""
        return not self._open and not self.undelivered

    def settled(self):
        """Nothing we sent is still waiting for an answer or an outcome,
        and nothing typed is held."""
        return not self._waiting and not self._open and not self._held

    def summary(self, when):
        """Lines saying which messages never got an outcome, and what was
        held and never sent, for exit."""
        lines = [Line(notice_line(when, "%s was not sent: typed while the connection was down."
                                  % req.what, self.style, "bad"))
                 for _, req in self._held if req.outgoing is None]
        for o in self.open_messages():
            if o.state == "queued":
                what = "%s was not sent: typed while the connection was down" % quote(o.text)
            elif o.msg_id is None:
                what = "%s was never answered by the server" % quote(o.text)
            else:
                to = "everyone" if o.to == "*" else escape(o.to)
                what = "%s to %s: delivery not confirmed" % (
                    quote(o.text) if o.text else "#" + escape(o.msg_id), to)
            lines.append(Line(notice_line(when, what, self.style, "bad")))
        return lines


class ConnectError(Exception):
    """The server could not be reached or did not greet us properly."""


class _Interrupted(Exception):
    """Ctrl-C, SIGTERM or SIGHUP during a blocking reconnect try: ends it."""


def keep_alive(sock, seconds=KEEPALIVE):
    """TCP keepalive (probes after ``seconds`` idle, every ``seconds / 6``,
    six of them) and TCP_USER_TIMEOUT (data unacknowledged for twice
    ``seconds``): either ends a connection whose peer vanished. Options
    this system lacks are left out; all are there on Linux."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", max(1, seconds // 6)),
                        ("TCP_KEEPCNT", 6), ("TCP_USER_TIMEOUT", 2 * seconds * 1000)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def backoff(tries, rnd=random):
    """Seconds to wait before the next reconnect try, after ``tries``
    failed ones: RECONNECT_FIRST doubling up to RECONNECT_MAX, jittered."""
    base = min(RECONNECT_MAX, RECONNECT_FIRST * 2 ** min(tries, 16))
    return base * (1 + RECONNECT_JITTER * (2 * rnd.random() - 1))


class Client:
    """The I/O shell around a Session: socket, terminal, signals, loop."""

    def __init__(self, args, term, style, clock=time.localtime):
        self.args = args
        self.term = term
        self.interactive = term.interactive
        self.reconnect = not getattr(args, "no_reconnect", False)
        self.session = Session(style, args.nick, args.pair, self.interactive,
                               bell=not args.no_bell, reconnect=self.reconnect)
        self.clock = clock
        self.sock = None
        self.decoder = FrameDecoder(MAX_SERVER_FRAME)
        self.outbuf = bytearray()
        # poll, not epoll: epoll refuses regular files and /dev/null, and
        # piped-mode stdin may well be one ("< input.txt"); poll reports them
        # readable, which they are. With three descriptors, poll costs nothing.
        self.sel = selectors.PollSelector()
        self.stdin_open = True
        self.stdin_registered = False
        self.quitting_at = None  # monotonic deadline for BYE once /quit sent
        self.eof_deadline = None  # piped mode: wait for outcomes until then
        self.done = False
        self.lost = None  # why the connection ended, if the server ended it
        # Reconnecting: the next try (monotonic), the tries that failed
        # since the loss, the last failure said (each new one is said once),
        # and for piped input the moment to give up (--wait after the loss).
        self.reconnect_at = None
        self.tries = 0
        self.failure = None
        self.reconnect_until = None
        self.lost_why = None  # what ended the last connection
        self.blocking = False  # in a reconnect try: a signal interrupts it
        self.interrupts = 0  # Ctrl-C presses not acted on yet
        self.terminated = False  # SIGTERM or SIGHUP: leave, whatever is typed
        self.resized = False
        self.suspended = False
        self.prompt = None
        # The message whose line was printed last: only that one can have
        # its mark redrawn in place.
        self.last_out = None

    # -- connecting --

    def connect(self):
        """The first connection; raises ConnectError."""
        self._attach(*self._open(CONNECT_TIMEOUT))
        self._send(self.session.start())

    def _open_socket(self, timeout):
        """A connected socket to the server, blocking with ``timeout``: the
        one place a connection is opened, first and on every reconnect."""
        return socket.create_connection((self.args.host, self.args.port), timeout=timeout)

    def _open(self, timeout):
        """``(sock, greeting, rest)`` from a new connection that was
        greeted by a tcpchat server; raises ConnectError."""
        try:
            sock = self._open_socket(timeout)
        except OSError as exc:
            raise ConnectError(_reason(exc))
        if getattr(self.args, "tls", False):
            from . import tls
            # The handshake and the certificate check, within ``timeout``;
            # on failure the socket is closed.
            try:
                sock = tls.wrap_client(sock, self.args.host, self.args.tls_ca_file,
                                       self.args.tls_fingerprint)
            except tls.TLSClientError as exc:
                raise ConnectError(str(exc))
        try:
            greeting, rest = self._read_greeting(sock, timeout)
        except OSError as exc:
            sock.close()
            raise ConnectError(_reason(exc))
        except BaseException:
            sock.close()  # a signal ended the try
            raise
        if not greeting.startswith("HELLO "):
            sock.close()
            if greeting.startswith("ERR "):
                raise ConnectError("the server refused: %s" % escape(greeting[4:]))
            raise ConnectError("not a tcpchat server (it said %r)" % escape(greeting[:80]))
        return sock, greeting, rest

    def _attach(self, sock, greeting, rest):
        """Make a greeted connection the one the loop serves."""
        try:
            keep_alive(sock)
        except OSError:
            pass  # not a TCP socket after all: a loss is still found on write
        sock.setblocking(False)
        if getattr(self.args, "tls", False):
            from . import tls
            # Over TLS, "later" must look to the loop as it does on a plain socket.
            sock = tls.ClientTLSSocket(sock)
        self.sock = sock
        self.sel.register(sock, selectors.EVENT_READ, "socket")
        self.greeting = greeting
        self.decoder = FrameDecoder(MAX_SERVER_FRAME)
        self.outbuf = bytearray((FRAMED_MARKER,))
        self.session.greeted(greeting)
        if rest:
            self._received(rest)

    @staticmethod
    def _read_greeting(sock, timeout):
        """The greeting line, and any bytes that came after it."""
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no greeting from the server")
            sock.settimeout(left)
            data = sock.recv(MAX_GREETING)
            if not data:
                raise ConnectionResetError(errno.ECONNRESET, "closed before greeting")
            buf += data
            if len(buf) > MAX_GREETING:
                raise ConnectionError(errno.EPROTO, "greeting too long")
        line, _, rest = buf.partition(b"\n")
        return line.rstrip(b"\r").decode("utf-8", "replace"), rest

    # -- output helpers --

    def show(self, lines):
        """Print Lines from the Session; True if one wants the bell."""
        bell = False
        for line in lines:
            bell = bell or line.bell
            if line.kind == "own":
                # Drawn over the echo of the line just typed: one line, not two.
                if not self.term.replace(line.text, "echo"):
                    self.term.show(line.text)
                self.last_out = line.out
                continue
            if line.kind == "mark":
                if self.last_out is line.out and self.term.replace(line.text, "last"):
                    continue
                if line.note is None:
                    continue  # a step on the way (sent): its outcome will say
                self.term.show(line.note, diagnostic=True)
            else:
                self.term.show(line.text, diagnostic=line.kind != "chat")
            self.last_out = None
        return bell

    def notice(self, text, role="info"):
        self.show([Line(notice_line(self.now(), text, self.session.style, role))])

    def now(self):
        return self.clock()

    def _send(self, messages):
        if self.sock is None:
            return  # offline: the Session held what must go later
        for text in messages:
            self.outbuf += encode_frame(text.encode("utf-8"))
        self._flush()

    def _flush(self):
        # Optimistic write: most of the time the whole buffer goes at once
        # and write interest is never registered.
        if self.sock is None or not self.outbuf:
            return
        try:
            n = self.sock.send(self.outbuf)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._connection_lost(_reason(exc))
            return
        del self.outbuf[:n]
        self._update_interest()

    def _update_interest(self):
        if self.sock is None:
            return
        events = selectors.EVENT_READ
        if self.outbuf:
            events |= selectors.EVENT_WRITE
        key = self.sel.get_key(self.sock)
        if key.events != events:
            self.sel.modify(self.sock, events)

    # -- input handlers --

    def _received(self, data):
        # Receipts for everything shown from this read go out together, in
        # one /ack, after it has all been shown.
        shown = []
        bell = False
        for item in self.decoder.feed(data):
            if not isinstance(item, bytes):
                self._connection_lost("the server broke the framing (%s)" % item.detail)
                return
            show, send = self.session.server_message(
                item.decode("utf-8", "replace"), self.now())
            bell = self.show(show) or bell
            shown += [text[5:] for text in send if text.startswith("/ack ")]
            self._send([text for text in send if not text.startswith("/ack ")])
            if self.sock is None:
                # That write found the connection dead, and the Session
                # has let go of its requests: the rest of this read would
                # answer requests it no longer has. What was shown unacked
                # comes again after the resume.
                break
        if bell:
            self.term.bell()  # once for all that came in one read
        for start in range(0, len(shown), ACK_BATCH):
            self._send(["/ack " + " ".join(shown[start:start + ACK_BATCH])])
        self._update_prompt()
        self._update_stdin()

    def _update_prompt(self):
        prompt = self.session.prompt()
        if prompt != self.prompt:
            self.prompt = prompt
            self.term.set_prompt(prompt)
            # A nick typed at the nick prompt is not worth recalling.
            self.term.set_history(not self.session.asking_nick())

    def _read_socket(self):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._connection_lost(_reason(exc))
            return
        if not data:
            self._connection_lost("the server closed the connection")
            return
        self._received(data)

    def _read_stdin(self):
        for line in self.term.read():
            if self.done or self.quitting_at is not None:
                break
            if line is None:
                self._stdin_ended()
                break
            if not self.interactive and line.strip() and self._is_quit(line):
                # Piped /quit ends the input; outcomes are still awaited.
                self._stdin_ended()
                break
            show, send = self.session.user_line(line, self.now())
            self.show(show)
            self._send(send)
            if self.session.leaving:
                self._quit(sent=True)
                break
        self._update_prompt()
        self._update_stdin()

    @staticmethod
    def _is_quit(line):
        word = line.strip().split(" ", 1)[0].lower()
        return word in ("/quit", ":quit:")

    def _stdin_ended(self):
        self.stdin_open = False
        if self.interactive:
            self._quit()  # Ctrl-D on an empty line
        else:
            self.eof_deadline = time.monotonic() + self.args.wait
        self._update_stdin()

    def _update_stdin(self):
        """Read stdin only while it makes sense: not after its end, not
        while quitting, and in piped mode not before we are registered
        (the lines would race the /nick and /pair) nor with a backlog."""
        want = self.stdin_open and self.quitting_at is None and not self.done
        if want and not self.interactive:
            want = self.session.ready() and len(self.outbuf) <= PIPE_BACKLOG
        if want != self.stdin_registered:
            if want:
                self.sel.register(self.term.fileno(), selectors.EVENT_READ, "stdin")
            else:
                self.sel.unregister(self.term.fileno())
            self.stdin_registered = want

    # -- leaving --

    def _quit(self, sent=False):
        """Leave: send /quit (unless the user's own line already did) and
        wait for BYE, at most QUIT_WAIT seconds. While reconnecting there
        is nobody to tell: stop."""
        if self.quitting_at is not None:
            return
        if self.sock is None:
            self._stop_reconnecting()
            return
        self.quitting_at = time.monotonic() + QUIT_WAIT
        if self.sock is not None and not sent:
            self._send(self.session.quit())
        self._update_stdin()

    def _connection_lost(self, why):
        if self.sock is None:
            return
        self.sel.unregister(self.sock)
        self.sock.close()
        self.sock = None
        del self.outbuf[:]
        s = self.session
        if s.bye and self.quitting_at is not None:
            self.done = True
            return  # we asked to leave and the server said goodbye
        if not self._may_reconnect():
            self.done = True
            self.lost = why
            self.notice("Disconnected: %s." % why, "bad")
            return
        # Come back by ourselves, keeping the terminal and the half-typed
        # line as they are; the Session holds what is typed meanwhile.
        # Lost again before the session was back: that try failed too.
        restored = s.restoring is None
        # After BYE server restarting the loss is no news.
        head = "Reconnecting" if s.restarting else "Connection lost: %s. Reconnecting" % why
        self.lost_why = why
        self.show(s.lost(self.now()))
        if self.interactive:
            self.notice(head + "; Ctrl-C stops. Lines you type meanwhile go once back.", "warn")
        else:
            self.notice("%s for up to %g s." % (head, self.args.wait), "warn")
            if self.reconnect_until is None:
                self.reconnect_until = time.monotonic() + self.args.wait
        if restored:
            self.tries = 0
            self.failure = None
        else:
            self.tries += 1
        self.reconnect_at = time.monotonic() + backoff(self.tries)
        self._update_prompt()
        self._update_stdin()

    def _may_reconnect(self):
        s = self.session
        if not self.reconnect or self.quitting_at is not None or s.leaving:
            return False
        # A server that said why it ends (shutting down, timeout) means it.
        return not s.bye or s.restarting

    def _reconnect(self):
        """One try: connect, be greeted, hand over to the Session (which
        resumes). A failed try is said once per different reason."""
        self.reconnect_at = None
        try:
            try:
                self.blocking = True
                opened = self._open(RECONNECT_TIMEOUT)
            finally:
                self.blocking = False
        except _Interrupted:
            # The signal is counted too: the loop acts on it (stops).
            self.reconnect_at = time.monotonic() + backoff(self.tries)
            return
        except ConnectError as exc:
            self.tries += 1
            self.reconnect_at = time.monotonic() + backoff(self.tries)
            if str(exc) != self.failure:
                self.failure = str(exc)
                self.notice("Cannot reconnect yet: %s; trying again%s." % (
                    exc, " (Ctrl-C stops)" if self.interactive else ""), "warn")
            return
        self._attach(*opened)
        show, send = self.session.rejoin(self.now())
        self.show(show)
        self._send(send)
        self._update_prompt()
        self._update_stdin()

    def _stop_reconnecting(self):
        if self.done:
            return
        self.reconnect_at = None
        self.done = True
        self.lost = self.lost_why or "stopped"
        self.notice("Stopped reconnecting (the connection was lost: %s)." % self.lost, "bad")

    # -- signals --

    def _on_signal(self, signum, frame):
        # Runs between bytecodes of the loop; only note it down. The wakeup
        # fd makes select return so the loop acts on it at once.
        if signum == signal.SIGWINCH:
            self.resized = True
        elif signum == signal.SIGTSTP:
            self.suspended = True
        elif signum == signal.SIGINT:
            self.interrupts += 1
        else:
            self.terminated = True
        if self.blocking and signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # A reconnect try blocks in connect() or recv(): end it now
            # rather than when it times out. Once only.
            self.blocking = False
            raise _Interrupted()

    def _handle_signals(self):
        if self.suspended:
            self.suspended = False
            self.term.suspend()
            # The window may have changed while we were stopped.
            self.resized = True
        if self.resized:
            self.resized = False
            resize = getattr(self.term, "resize", None)
            if resize is not None:
                resize()
        if self.terminated:
            self.terminated = False
            if self.quitting_at is not None:
                self.done = True
            else:
                self._quit()
        while self.interrupts:
            self.interrupts -= 1
            if self.quitting_at is not None:
                self.done = True  # Ctrl-C while leaving: stop waiting for BYE
            elif self.sock is None:
                self._quit()  # reconnecting: Ctrl-C stops, as the notice said
            elif not self.term.clear_line():
                self._quit()  # on an empty line Ctrl-C leaves; else it clears it

    # -- the loop --

    def run(self):
        """The select loop. Returns the exit status."""
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        self.sel.register(wake_r, selectors.EVENT_READ, "signal")
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH]
        if hasattr(self.term, "suspend"):
            # Only a terminal we put in a special mode needs to see Ctrl-Z;
            # elsewhere the default stop is right.
            handled.append(signal.SIGTSTP)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            self.notice("Connected to %s (%s%s). /help lists the commands, /quit leaves."
                        % (_address(self.args.host, self.args.port),
                           escape(parse_greeting(self.greeting)[0]),
                           ", TLS" if getattr(self.args, "tls", False) else ""))
            if self.interactive and not self.args.nick:
                self.notice("Choose a nick: 1-32 letters, digits, _ - or ., "
                            "starting with a letter.")
            if hasattr(self.term, "set_completion"):
                self.term.set_completion(self.session.completions)
            self.prompt = self.session.prompt()
            self.term.set_history(not self.session.asking_nick())
            self.term.start(self.prompt)
            self._update_stdin()
            self._flush()
            self._loop(wake_r)
        finally:
            self.term.stop()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self.sel.close()
            os.close(wake_r)
            os.close(wake_w)
            if self.sock is not None:
                self.sock.close()
        return self._exit_status()

    def _loop(self, wake_r):
        while not self.done:
            timeout = self._timeout()
            if timeout is not None and timeout <= 0:
                self._deadlines()
                continue
            for key, mask in self.sel.select(timeout):
                # An earlier handler in this pass may have closed the
                # socket or stopped stdin: check before each one.
                if self.done:
                    break
                if key.data == "signal":
                    _drain(wake_r)
                elif key.data == "socket" and self.sock is not None:
                    if mask & selectors.EVENT_READ:
                        self._read_socket()
                    if mask & selectors.EVENT_WRITE:
                        self._flush()
                elif key.data == "stdin" and self.stdin_registered:
                    self._read_stdin()
            self._handle_signals()
            self._after_pass()

    def _deadlines(self):
        """Act on whichever deadline has come."""
        now = time.monotonic()
        if self.quitting_at is not None and now >= self.quitting_at:
            self.notice("No goodbye from the server in %g s; leaving anyway." % QUIT_WAIT, "bad")
            self.done = True
        elif self.sock is None and self.reconnect_until is not None and \
                now >= self.reconnect_until:
            self._stop_reconnecting()
        elif self.reconnect_at is not None and now >= self.reconnect_at:
            self._reconnect()
        elif self.eof_deadline is not None and now >= self.eof_deadline:
            self._eof_wait_over()

    def _after_pass(self):
        """Decisions that depend on the state the whole pass left behind."""
        s = self.session
        if self.sock is not None and not s.offline and s.restoring is None:
            # Back for good: the next loss starts its count afresh.
            self.reconnect_until = None
        if self.quitting_at is not None and s.bye:
            self.done = True  # BYE is the server's last word: nothing to wait for
        elif not self.interactive and self.quitting_at is None:
            if not self.stdin_open and s.settled():
                self._quit()  # piped input done and every outcome known
            elif s.registration_failed and s.nick is None:
                self._quit()  # piped input cannot pick another nick

    def _timeout(self):
        deadlines = [self.quitting_at, self.eof_deadline, self.reconnect_at]
        if self.sock is None:
            deadlines.append(self.reconnect_until)
        deadlines = [d for d in deadlines if d is not None]
        if not deadlines:
            return None
        return min(deadlines) - time.monotonic()

    def _eof_wait_over(self):
        self.eof_deadline = None
        self._quit()

    def _exit_status(self):
        s = self.session
        self.show(s.summary(self.now()))
        if self.lost is not None:
            return EXIT_CONNECTION
        if not self.interactive:
            if s.errors or not s.all_delivered() or s.registration_failed:
                return EXIT_UNDELIVERED
        return EXIT_OK


def _drain(fd):
    """Empty the signal wakeup pipe; its bytes only mean "look again"."""
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def _reason(exc):
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    return exc.strerror or str(exc) or exc.__class__.__name__


def _address(host, port):
    return "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)


def _port(text):
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return port


def _seconds(text):
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError(text)
    return value


def _fingerprint(text):
    from .tls import parse_fingerprint
    return parse_fingerprint(text)


class _PortAction(argparse.Action):
    """--port, remembering that it was given: --tls changes the default."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.port_given = True


_port.__name__ = "port"  # argparse names the type in its error message
_seconds.__name__ = "number of seconds"
_fingerprint.__name__ = "SHA-256 fingerprint (64 hex digits, colons allowed)"


def make_parser():
    parser = argparse.ArgumentParser(
        prog="tcpchat-client",
        description="A terminal chat client for tcpchat-server: line editing and "
                    "history, and a delivery state for every message you send.",
        epilog="Keys: Enter sends, Up and Down recall earlier lines, Ctrl-C clears the line; "
               "Ctrl-C or Ctrl-D on an empty line, /quit or :quit: leave. Type /help once "
               "connected for the commands. With stdin not a terminal, each input line is "
               "sent as typed, what others say is printed on stdout and everything else on "
               "stderr, and at the end of the input the client waits up to --wait seconds "
               "for the outcome of every message. Exit status: 0 done (with piped input: "
               "every message delivered); "
               "1 piped input with a message not delivered or a request refused; 2 bad "
               "options; 3 cannot connect (a TLS certificate refused too), or the server "
               "went away.",
    )
    parser.add_argument("--host", "--ip", default=DEFAULT_HOST, metavar="HOST",
                        help="server address (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, action=_PortAction,
                        help="server port (default: %%(default)s, or %d with --tls)"
                        % DEFAULT_TLS_PORT)
    parser.set_defaults(port_given=False)
    parser.add_argument("--tls", action="store_true",
                        help="connect with TLS, verifying the server's certificate against "
                             "the system's CAs and the host name")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--tls-ca-file", metavar="FILE",
                       help="with TLS, trust the CA certificates in FILE (PEM) instead of "
                            "the system's: a private CA; implies --tls")
    trust.add_argument("--tls-fingerprint", type=_fingerprint, metavar="SHA256",
                       help="with TLS, trust exactly the certificate with this SHA-256 "
                            "fingerprint (a self-signed one), checking neither CA nor "
                            "host name; implies --tls")
    parser.add_argument("--nick", help="register with this nick at once "
                                       "(otherwise the client asks for one)")
    parser.add_argument("--pair", metavar="NICK",
                        help="ask NICK for a private pair after registering")
    parser.add_argument("--no-color", action="store_true",
                        help="no colours (also when NO_COLOR is set, TERM is dumb or stdout "
                             "is not a terminal)")
    parser.add_argument("--no-bell", action="store_true",
                        help="do not ring the terminal bell for private messages, pair "
                             "requests and mentions of your nick")
    parser.add_argument("--wait", type=_seconds, default=DEFAULT_WAIT, metavar="SECONDS",
                        help="with piped input: how long to wait at its end for messages "
                             "to be delivered, and after losing the connection for it to "
                             "come back (default: %(default)s)")
    parser.add_argument("--no-reconnect", action="store_true",
                        help="when the connection is lost, exit (status 3) instead of "
                             "reconnecting and resuming the session")
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + __version__)
    return parser


def _use_color(args, environ):
    if args.no_color or environ.get("NO_COLOR"):
        return False
    return os.isatty(1) and environ.get("TERM") != "dumb"


def _colors(environ):
    """256 where the terminal says it has them, else the basic 8."""
    if "256" in environ.get("TERM", "") or environ.get("COLORTERM"):
        return 256
    return 8


def _unicode_ok(environ, encoding):
    """Whether marks and arrows may be UTF-8: the locale says UTF-8, and so
    does stdout. The locale is read from the environment, as the terminal
    was set up: Python's own UTF-8 mode would call even the C locale UTF-8."""
    locale = environ.get("LC_ALL") or environ.get("LC_CTYPE") or environ.get("LANG") or ""
    utf8 = ("utf8", "utf_8")
    return locale.lower().replace("-", "").split(".")[-1].split("@")[0] in utf8 and \
        (encoding or "").lower().replace("-", "") in utf8


def resolve_tls(args):
    """--tls-ca-file and --tls-fingerprint imply --tls; --tls without
    --port means the server's TLS port."""
    if args.tls_ca_file or args.tls_fingerprint is not None:
        args.tls = True
    if args.tls and not args.port_given:
        args.port = DEFAULT_TLS_PORT
    return args


def main(argv=None):
    args = resolve_tls(make_parser().parse_args(argv))
    style = Style(color=_use_color(args, os.environ),
                  unicode=_unicode_ok(os.environ, getattr(sys.stdout, "encoding", None)),
                  colors=_colors(os.environ))
    term = open_terminal(history_path())
    client = Client(args, term, style)
    try:
        client.connect()
    except ConnectError as exc:
        sys.stderr.write("cannot connect to %s: %s\n" % (_address(args.host, args.port), exc))
        return EXIT_CONNECTION
    except KeyboardInterrupt:
        return 130
    return client.run()


if __name__ == "__main__":
    sys.exit(main())
