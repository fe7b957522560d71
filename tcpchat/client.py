"""tcpchat-client: the terminal client, one thread, one select loop.

Two halves, the same split as the server's:

``Session`` is the sans-I/O core. It is told what the user typed and what
the server said, and answers with what to send and what to print. It knows
the protocol's bookkeeping: the server answers each command in order
(chat text with exactly one ``SENT`` or ``ERR``; most commands with one
``OK``, ``PONG``, ``BYE`` or ``ERR``), so a queue of what we sent and are
still waiting on tells which request an answer belongs to, and a ``SENT``
gives the id that later ``DELIVERED`` or ``FAILED`` lines refer to. Two
commands fall outside that rule and are kept out of the queue: ``/ack``
(silent on success; its only error, ``no-such-message``, is its own) and
``/help`` (a run of ``OK help`` lines).

``Client`` is the shell: the socket, the terminal (tcpchat.terminal), the
signals, and the loop that moves bytes between them and the Session.

Exit status: 0 normal end (and, with piped input, every message
delivered); 1 piped input whose messages were not all delivered or that
got an error; 2 bad command line; 3 could not connect, or the server went
away.
"""

import argparse
import collections
import errno
import os
import selectors
import signal
import socket
import sys
import time

from . import __version__
from .framing import FRAMED_MARKER, FrameDecoder, encode_frame
from .protocol import COMMANDS
from .render import (
    Style,
    chat_line,
    delivery_line,
    escape,
    event_sentence,
    notice_line,
    outgoing_line,
    parse_server_message,
    quote,
    rejected_line,
)
from .terminal import history_path, open_terminal

__all__ = ["Session", "Client", "make_parser", "main"]

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
#: Seconds to wait for BYE after sending /quit before leaving anyway.
QUIT_WAIT = 2.0
#: Default seconds piped mode waits at end of input for outcomes.
DEFAULT_WAIT = 10.0
#: Longest greeting line we read, in bytes; the real one is under 100.
MAX_GREETING = 4096
#: Message ids per /ack: far below any server's frame limit (ids are short).
ACK_BATCH = 1000
#: Largest frame accepted from the server, in bytes. The server's own
#: limit for what clients send is 64 KiB; a MSG adds a header to that.
MAX_SERVER_FRAME = 1 << 20
#: Bytes waiting to go to the server above which piped mode stops reading
#: stdin for a while, so a huge input file is not read into memory at once.
PIPE_BACKLOG = 64 * 1024


class Outgoing:
    """A chat message we sent, from the keypress to its final outcome."""

    __slots__ = ("text", "to", "msg_id", "total", "outcome")

    def __init__(self, text, to=None):
        self.text = text
        self.to = to  # "*" or a nick: our guess until SENT says for sure
        self.msg_id = None  # set by SENT
        self.total = None  # recipients counted by SENT
        self.outcome = None  # None while open; "delivered" or "failed"

    def __repr__(self):
        return "Outgoing(#%s to %r, %r, %s)" % (
            self.msg_id, self.to, self.text, self.outcome or "open")


class _Expect:
    """One request on the wire whose answer has not come yet."""

    __slots__ = ("what", "outgoing", "setup")

    def __init__(self, what, outgoing=None, setup=False):
        self.what = what  # how to name it in an error line
        self.outgoing = outgoing  # the chat message, for chat text
        self.setup = setup  # the --nick / --pair sent for the user


def _audience(to, partner):
    if to == "*":
        return "everyone"
    if partner is not None and to.lower() == partner.lower():
        return "pair"
    return "private"


class Session:
    """The client's protocol state, without I/O (see module docstring).

    ``user_line`` and ``server_message`` return ``(show, send)``: lines to
    print, in order, and then messages to send. Printing first matters: an
    ``/ack`` must only go out once its message is on the screen.
    """

    def __init__(self, style, nick=None, pair=None, interactive=True):
        self.style = style
        self.wanted_nick = nick
        self.pair_target = pair
        self.interactive = interactive
        self.nick = None
        self.partner = None
        self.pair_requested = None
        self.registered_once = False
        self.registration_failed = False
        self.bye = False
        self.leaving = False  # the user asked to quit
        self._setup = 0  # --nick / --pair requests not answered yet
        self.errors = 0  # ERR answers to what we sent (piped mode's status)
        self.undelivered = 0  # messages that failed, wholly or in part
        self._waiting = collections.deque()  # _Expect, in the order sent
        self._by_id = {}  # message id -> Outgoing, from SENT to its outcome
        # Messages without an outcome yet, in the order typed; settled ones
        # leave, so a long session does not keep every line it ever sent.
        self._open = []
        # Nicks we have heard of (lower case -> as written), for Tab.
        self.nicks = {}
        # Who asked us to pair (lower case): our /pair to them completes it.
        self.asked_by = set()

    # -- what the user typed --

    def prompt(self):
        if self.nick is None:
            return "nick> "
        nick = escape(self.nick)
        if self.partner is not None:
            return "%s%s%s> " % (nick, self.style.arrow, escape(self.partner))
        return "%s> " % nick

    def start(self):
        """What to send right after the greeting: /nick when we have one."""
        if self.wanted_nick:
            return self._command("/nick " + self.wanted_nick, setup=True)
        return []

    def ready(self):
        """Whether typed or piped lines may go: not while the --nick and
        --pair requests are unanswered (piped lines would race them)."""
        return self._setup == 0

    def user_line(self, line, when):
        """A line the user typed (or piped). Returns ``(show, send)``."""
        stripped = line.strip()
        if not stripped:
            return [], []
        if stripped == ":quit:" or stripped.split(" ", 1)[0].lower() == "/quit":
            self.leaving = True
            return [], self._command(stripped)
        if line.startswith("//"):
            return [], self._chat(line, line[1:], None)
        if not line.startswith("/"):
            if self.nick is None and self.interactive:
                # Before registering, a bare word is the nick being asked for.
                return [], self._command("/nick " + stripped)
            return [], self._chat(line, line, None)
        word, _, rest = line.partition(" ")
        word = word.lower()
        if word in ("/msg", "/w"):
            name, _, text = rest.lstrip(" ").partition(" ")
            return [], self._chat(line, text, name or None)
        if word == "/all":
            return [], self._chat(line, rest, "*")
        if word == "/ack":
            return [], [line]
        if word == "/help":
            return [], [line]
        return [], self._command(line)

    def quit(self):
        """The messages that leave: /quit, answered by BYE."""
        return self._command("/quit")

    def _command(self, line, setup=False):
        self._waiting.append(_Expect(escape(line), setup=setup))
        self._setup += setup
        return [line]

    def _chat(self, line, text, to):
        if to is None:
            to = self.partner if self.partner is not None else "*"
        out = Outgoing(text, to)
        self._open.append(out)
        self._waiting.append(_Expect(escape(line), out))
        return [line]

    # Commands after which the next word is a nick.
    _NICK_ARGUMENT = ("/msg", "/w", "/pair")

    def completions(self, before, word):
        """Candidates for Tab: the word being typed, after ``before``."""
        if not before.strip():
            if word.startswith("/") or word.startswith(":"):
                pool = [c for c in COMMANDS if c != "/ack"]
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

    def _sentence(self, msg, when, partner=None):
        found = event_sentence(msg, partner if partner is not None else self.partner)
        if found is None:
            return []
        text, role = found
        return [notice_line(when, text, self.style, role)]

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
        line = chat_line(when, sender, audience, msg.text, self.style)
        send = ["/ack " + msg_id] if msg_id.isdigit() else []
        return [line], send

    def _on_sent(self, msg, when):
        msg_id, to, count = msg.fields
        req = self._answered()
        out = req.outgoing if req is not None and req.outgoing is not None else None
        if out is None:
            out = Outgoing("", to)  # not ours to match; still track its fate
            self._open.append(out)
        out.to = to
        out.msg_id = msg_id
        out.total = int(count) if count.isdigit() else None
        self._by_id[msg_id] = out
        line = outgoing_line(when, _audience(to, self.partner), to, out.text,
                             msg_id, self.style)
        return [line], []

    def _on_delivered(self, msg, when):
        msg_id, nick = msg.fields
        out = self._by_id.pop(msg_id, None)
        if out is None:  # not one we know of: still say so
            out = Outgoing("", nick)
        got = None
        if nick == "*":
            got = int(msg.text) if msg.text.isdigit() else None
            partial = got is not None and out.total is not None and got < out.total
            self._settle(out, "failed" if partial else "delivered")
        else:
            self._settle(out, "delivered")
        line = delivery_line(when, msg_id, nick, out.text, self.style,
                             got=got, total=out.total if nick == "*" else None)
        return [line], []

    def _on_failed(self, msg, when):
        msg_id, nick = msg.fields
        out = self._by_id.pop(msg_id, None)
        text = ""
        if out is not None:
            self._settle(out, "failed")
            text = out.text
        reason = msg.text or "no reason given"
        return [delivery_line(when, msg_id, nick, text, self.style, reason=reason)], []

    def _on_err(self, msg, when):
        code = msg.fields[0]
        if code in ("no-such-message", "timeout", "server-full"):
            # Not an answer to a queued request: an /ack's own error, or
            # the server giving up on us.
            return [rejected_line(when, None, code, msg.text, self.style)], []
        req = self._answered()
        self.errors += 1
        what = None
        if req is not None:
            if req.outgoing is not None:
                self._settle(req.outgoing, "failed")
                to = req.outgoing.to
                if not req.outgoing.text.strip():
                    what = req.what  # e.g. "/msg bob" with no text: show it as typed
                else:
                    what = "message %s" % quote(req.outgoing.text)
                    if to and to != "*":
                        what += " to %s" % escape(to)
            else:
                what = req.what
                if req.what.lower().startswith("/nick") and self.nick is None:
                    self.registration_failed = True
        show = [rejected_line(when, what, code, msg.text, self.style)]
        if self.registration_failed and self.nick is None and self.interactive:
            show.append(notice_line(when, "Type the nick you want.", self.style))
        return show, []

    def _on_ok(self, msg, when):
        cmd = msg.fields[0].lower()
        if cmd == "help":
            return self._sentence(msg, when), []
        self._answered()
        partner_before = self.partner
        send = []
        if cmd == "nick":
            self.nick = msg.text
            self.registration_failed = False
            if not self.registered_once:
                self.registered_once = True
                if self.pair_target:
                    send = self._command("/pair " + self.pair_target, setup=True)
        elif cmd == "pair":
            self.pair_requested = msg.text
            if msg.text.lower() in self.asked_by:
                return [], send  # PAIRED follows at once; "waiting" would mislead
        elif cmd == "unpair":
            self.partner = None
            self.pair_requested = None
        return self._sentence(msg, when, partner_before), send

    def _on_pong(self, msg, when):
        self._answered()
        return self._sentence(msg, when), []

    def _on_bye(self, msg, when):
        self._answered()
        self.bye = True
        return self._sentence(msg, when), []

    def _on_pair_request(self, msg, when):
        self.asked_by.add(msg.fields[0].lower())
        return self._sentence(msg, when), []

    def _on_paired(self, msg, when):
        self.partner = msg.fields[0]
        self.pair_requested = None
        self.asked_by.discard(self.partner.lower())
        return self._sentence(msg, when), []

    def _on_unpaired(self, msg, when):
        before = self.partner
        if before is not None and before.lower() == msg.fields[0].lower():
            self.partner = None
        return self._sentence(msg, when, before), []

    def _on_renamed(self, msg, when):
        old, new = msg.fields
        if self.partner is not None and self.partner.lower() == old.lower():
            self.partner = new
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
        "PONG": "_on_pong",
        "BYE": "_on_bye",
        "PAIR-REQUEST": "_on_pair_request",
        "PAIRED": "_on_paired",
        "UNPAIRED": "_on_unpaired",
        "RENAMED": "_on_renamed",
    }

    # -- the account at the end --

    def _settle(self, out, outcome):
        if out.outcome is not None:
            return
        out.outcome = outcome
        if outcome != "delivered":
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
        """Nothing we sent is still waiting for an answer or an outcome."""
        return not self._waiting and not self._open

    def summary(self, when):
        """Lines saying which messages never got an outcome, for exit."""
        lines = []
        for o in self.open_messages():
            if o.msg_id is None:
                what = "Message %s was never acknowledged by the server" % quote(o.text)
            else:
                to = "everyone" if o.to == "*" else escape(o.to)
                what = "#%s %s to %s: delivery not confirmed" % (
                    escape(o.msg_id), quote(o.text), to)
            lines.append(notice_line(when, what, self.style, "bad"))
        return lines


class ConnectError(Exception):
    """The server could not be reached or did not greet us properly."""


class Client:
    """The I/O shell around a Session: socket, terminal, signals, loop."""

    def __init__(self, args, term, style, clock=time.localtime):
        self.args = args
        self.term = term
        self.interactive = term.interactive
        self.session = Session(style, args.nick, args.pair, self.interactive)
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
        self.interrupts = 0
        self.resized = False
        self.suspended = False
        self.prompt = None

    # -- connecting --

    def connect(self):
        host, port = self.args.host, self.args.port
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise ConnectError(_reason(exc))
        tls = None
        if getattr(self.args, "tls", False):
            from . import tls
            try:
                sock = tls.wrap_client(sock, host, self.args.tls_ca_file,
                                       self.args.tls_fingerprint)
            except tls.TLSClientError as exc:
                raise ConnectError(str(exc))
        try:
            greeting, rest = self._read_greeting(sock)
        except OSError as exc:
            sock.close()
            raise ConnectError(_reason(exc))
        if not greeting.startswith("HELLO "):
            sock.close()
            if greeting.startswith("ERR "):
                raise ConnectError("the server refused: %s" % escape(greeting[4:]))
            raise ConnectError("not a tcpchat server (it said %r)" % escape(greeting[:80]))
        sock.setblocking(False)
        # Over TLS, "later" must look as it does on a plain socket to the loop.
        self.sock = sock if tls is None else tls.ClientTLSSocket(sock)
        self.sel.register(sock, selectors.EVENT_READ, "socket")
        self.greeting = greeting
        self.outbuf += bytes((FRAMED_MARKER,))
        if rest:
            self._received(rest)
        self._send(self.session.start())

    @staticmethod
    def _read_greeting(sock):
        """The greeting line, and any bytes that came after it."""
        buf = b""
        deadline = time.monotonic() + CONNECT_TIMEOUT
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
        for line in lines:
            self.term.show(line)

    def now(self):
        return self.clock()

    def _send(self, messages):
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
        for item in self.decoder.feed(data):
            if not isinstance(item, bytes):
                self._connection_lost("the server broke the framing (%s)" % item.detail)
                return
            show, send = self.session.server_message(
                item.decode("utf-8", "replace"), self.now())
            self.show(show)
            shown += [text[5:] for text in send if text.startswith("/ack ")]
            self._send([text for text in send if not text.startswith("/ack ")])
        for start in range(0, len(shown), ACK_BATCH):
            self._send(["/ack " + " ".join(shown[start:start + ACK_BATCH])])
        self._update_prompt()
        self._update_stdin()

    def _update_prompt(self):
        prompt = self.session.prompt()
        if prompt != self.prompt:
            self.prompt = prompt
            self.term.set_prompt(prompt)

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
        wait for BYE, at most QUIT_WAIT seconds."""
        if self.quitting_at is not None:
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
        self.done = True
        if self.session.bye and self.quitting_at is not None:
            return  # we asked to leave and the server said goodbye
        self.lost = why
        self.show([notice_line(self.now(), "Disconnected: %s." % why,
                               self.session.style, "bad")])

    # -- signals --

    def _on_signal(self, signum, frame):
        # Runs between bytecodes of the loop; only note it down. The wakeup
        # fd makes select return so the loop acts on it at once.
        if signum == signal.SIGWINCH:
            self.resized = True
        elif signum == signal.SIGTSTP:
            self.suspended = True
        else:
            self.interrupts += 1

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
        if self.interrupts:
            self.interrupts = 0
            if self.quitting_at is not None:
                self.done = True  # Ctrl-C while leaving: stop waiting for BYE
            else:
                self._quit()

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
            self.show([notice_line(
                self.now(), "Connected to %s (%s). /help lists the commands, /quit leaves."
                % (_address(self.args.host, self.args.port),
                   escape(self.greeting.split(" ")[1] if " " in self.greeting else "")),
                self.session.style)])
            if self.interactive and not self.args.nick:
                self.show([notice_line(self.now(), "Choose a nick: 1-32 letters, digits, "
                                       "_ - or ., starting with a letter.",
                                       self.session.style)])
            if hasattr(self.term, "set_completion"):
                self.term.set_completion(self.session.completions)
            self.prompt = self.session.prompt()
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
                if self.quitting_at is not None:
                    self.show([notice_line(self.now(), "No goodbye from the server in %g s; "
                                           "leaving anyway." % QUIT_WAIT,
                                           self.session.style, "bad")])
                    break
                self._eof_wait_over()
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

    def _after_pass(self):
        """Decisions that depend on the state the whole pass left behind."""
        s = self.session
        if self.quitting_at is not None and s.bye:
            self.done = True  # BYE is the server's last word: nothing to wait for
        elif not self.interactive and self.quitting_at is None:
            if not self.stdin_open and s.settled():
                self._quit()  # piped input done and every outcome known
            elif s.registration_failed and s.nick is None:
                self._quit()  # piped input cannot pick another nick

    def _timeout(self):
        deadlines = [d for d in (self.quitting_at, self.eof_deadline) if d is not None]
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
        epilog="Keys: Enter sends, Up and Down recall earlier lines, Ctrl-C, Ctrl-D on an "
               "empty line, /quit or :quit: leave. Type /help once connected for the "
               "commands. With stdin not a terminal, each input line is sent as typed, and "
               "at its end the client waits up to --wait seconds for the outcome of every "
               "message. Exit status: 0 done (with piped input: every message delivered); "
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
                        help="no colours (also when NO_COLOR is set or stdout is not a terminal)")
    parser.add_argument("--wait", type=_seconds, default=DEFAULT_WAIT, metavar="SECONDS",
                        help="with piped input: how long to wait at its end for messages "
                             "to be delivered (default: %(default)s)")
    parser.add_argument("--version", action="version",
                        version="%(prog)s " + __version__)
    return parser


def _use_color(args, environ):
    if args.no_color or environ.get("NO_COLOR"):
        return False
    return os.isatty(1) and environ.get("TERM") != "dumb"


def _unicode_ok():
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "")
    return encoding in ("utf8", "utf_8")


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
    style = Style(color=_use_color(args, os.environ), unicode=_unicode_ok())
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
