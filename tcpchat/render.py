"""Render: what the client prints, as pure functions of text in, text out.

Two jobs, both free of I/O (no terminal, no clock: times are passed in):

1. Terminal safety. Everything that came from the network (message text,
   nicks, server prose) passes through ``escape`` before it is printed. A
   peer must not be able to move our cursor, recolour our screen, set the
   window title, write to the clipboard (OSC 52), hide text, or reorder it
   with bidi controls. Escaping works character by character: once ESC,
   BEL, the C1 controls and the other C0 controls are replaced by visible
   text, no CSI, OSC, DCS or other escape sequence can start, so every
   sequence is defused without having to parse it.

2. Human sentences. Server messages become short lines with a time stamp,
   the sender and whom the message went to (private, your pair, everyone).
   Colour is optional and is added only after escaping, so our own SGR
   codes are the only escape sequences that ever reach the terminal.
"""

import unicodedata

from .escaping import escape

__all__ = [
    "escape",
    "display_width",
    "ServerMessage",
    "parse_server_message",
    "Style",
    "clock",
    "chat_line",
    "outgoing_line",
    "notice_line",
    "quote",
    "delivery_line",
    "rejected_line",
    "event_sentence",
]

def display_width(text):
    """Terminal columns ``text`` takes: wide (East Asian W/F) count 2,
    combining marks 0. Meant for text that went through ``escape``."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


class ServerMessage:
    """One message from the server, split into its fields.

    ``keyword`` is the upper-case first word; ``fields`` the fixed fields
    after it; ``text`` the free text at the end ("" when absent).
    """

    __slots__ = ("keyword", "fields", "text")

    def __init__(self, keyword, fields, text):
        self.keyword = keyword
        self.fields = tuple(fields)
        self.text = text

    def __repr__(self):
        return "ServerMessage(%r, %r, %r)" % (self.keyword, self.fields, self.text)

    def __eq__(self, other):
        return isinstance(other, ServerMessage) and (
            self.keyword, self.fields, self.text
        ) == (other.keyword, other.fields, other.text)


# How many fixed fields each keyword has before its free text. A keyword
# missing here is shown as raw (escaped) server text.
_FIXED_FIELDS = {
    "HELLO": 1,  # HELLO tcpchat/1 TEXT
    "OK": 1,  # OK COMMAND TEXT
    "ERR": 1,  # ERR CODE TEXT
    "MSG": 3,  # MSG ID FROM TO TEXT
    "SENT": 3,  # SENT ID TO COUNT
    "DELIVERED": 2,  # DELIVERED ID NICK | DELIVERED ID * COUNT
    "FAILED": 2,  # FAILED ID NICK REASON
    "JOINED": 1,
    "LEFT": 1,  # LEFT NICK REASON
    "RENAMED": 2,
    "PAIR-REQUEST": 1,
    "PAIRED": 1,
    "UNPAIRED": 1,  # UNPAIRED NICK REASON
    "USER": 2,  # USER NICK STATE
    "PONG": 0,
    "BYE": 0,
}


def parse_server_message(text):
    """Split one server message (already decoded) into a ServerMessage.

    Never raises: a message too short for its keyword gets empty fields, so
    a misbehaving server shows up as odd output rather than a crash.
    """
    keyword, _, rest = text.partition(" ")
    count = _FIXED_FIELDS.get(keyword)
    if count is None:
        return ServerMessage(keyword, (), rest)
    parts = rest.split(" ", count) if count else [rest]
    fields = parts[:count]
    fields += [""] * (count - len(fields))
    body = parts[count] if len(parts) > count else ""
    return ServerMessage(keyword, fields, body)


class Style:
    """How to decorate output: ANSI colours or nothing.

    Each method takes text that is already safe and wraps it in one SGR
    colour; with ``color`` False they return the text unchanged.
    """

    _CODES = {
        "time": "2",  # dim: the stamp is context, not content
        "private": "35",  # magenta
        "pair": "36",  # cyan
        "everyone": "33",  # yellow
        "me": "1",  # bold: your own lines stand out when scrolling back
        "good": "32",
        "bad": "1;31",
        "info": "2",
    }

    __slots__ = ("color", "unicode")

    def __init__(self, color=False, unicode=True):
        self.color = color
        # False when the terminal's encoding cannot show arrows and ticks.
        self.unicode = unicode

    def paint(self, role, text):
        if not self.color or not text:
            return text
        return "\x1b[%sm%s\x1b[0m" % (self._CODES[role], text)

    @property
    def arrow(self):
        return "\u2192" if self.unicode else "->"


def clock(when):
    """A ``time.struct_time`` (local time) as the stamp shown on each line."""
    return "%02d:%02d:%02d" % (when.tm_hour, when.tm_min, when.tm_sec)


_AUDIENCE_LABEL = {"private": "private", "pair": "pair", "everyone": "all"}


def _body(head, text):
    """``head`` then the escaped message text; a multi-line message keeps its
    lines, each continuation indented under the first so it cannot pose as
    a line of its own (a peer could otherwise fake a whole chat line)."""
    lines = text.split("\n")
    indent = " " * display_width(_strip_sgr(head))
    out = [head + escape(lines[0])]
    out.extend(indent + escape(line) for line in lines[1:])
    return "\n".join(out)


def _strip_sgr(text):
    # Our own colour codes take no columns; only Style inserts them, always
    # in the form ESC [ digits ; m, so this simple scan is exact for them.
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\x1b":
            end = text.find("m", i)
            i = end + 1 if end >= 0 else len(text)
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def chat_line(when, sender, audience, text, style):
    """A message someone sent us.

    ``audience`` is "private" (to us alone), "pair" (from our partner) or
    "everyone". Example: ``12:01:05 [pair] bob: hi``.
    """
    label = "[%s]" % _AUDIENCE_LABEL[audience]
    head = "%s %s %s: " % (
        style.paint("time", clock(when)),
        style.paint(audience, label),
        style.paint(audience, escape(sender)),
    )
    return _body(head, text)


def outgoing_line(when, audience, recipient, text, msg_id, style):
    """A message we sent that the server accepted (``SENT``).

    Example: ``12:01:05 [pair] you -> bob: hi  (#7 sent)``.
    """
    label = "[%s]" % _AUDIENCE_LABEL[audience]
    to = "everyone" if recipient == "*" else escape(recipient)
    head = "%s %s %s: " % (
        style.paint("time", clock(when)),
        style.paint(audience, label),
        style.paint("me", "you %s %s" % (style.arrow, to)),
    )
    return "%s  %s" % (_body(head, text), style.paint("info", "(#%s sent)" % escape(msg_id)))


def notice_line(when, text, style, role="info"):
    """A sentence about what happened (already escaped by the caller where
    it quotes the network), e.g. ``12:01:05 bob joined.``.

    ``role`` colours the sentence: "info", "good" or "bad".
    """
    return "%s %s" % (style.paint("time", clock(when)), style.paint(role, text))


def quote(text, limit=40):
    """A short excerpt of a message we sent, to say which one a line is
    about. ``limit`` counts characters, not columns: it only keeps the
    line short, nothing depends on its exact width."""
    text = text.replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return '"%s"' % escape(text)


def delivery_line(when, msg_id, recipient, text, style, reason=None,
                  got=None, total=None):
    """What became of message ``msg_id`` that we sent: delivered, or failed.

    ``reason`` set means failed (``FAILED ID NICK REASON``). ``got`` and
    ``total`` are for a message to everyone (``DELIVERED ID * N`` after
    ``SENT ID * COUNT``); fewer than ``total`` is shown as a failure,
    because someone it was meant for never got it.
    """
    # Without the text (a message this run did not send) the id must do.
    mid = "#%s %s" % (escape(msg_id), quote(text)) if text else "#%s" % escape(msg_id)
    if reason is not None:
        return notice_line(
            when,
            "%s NOT delivered to %s: %s" % (mid, escape(recipient), escape(reason)),
            style, "bad")
    if recipient == "*":
        if total is not None and got is not None and got < total:
            return notice_line(
                when,
                "%s delivered to only %d of %d (the others left first)"
                % (mid, got, total), style, "bad")
        count = got if got is not None else total
        return notice_line(
            when, "%s delivered to everyone (%s)" % (mid, count), style, "good")
    return notice_line(
        when, "%s delivered to %s" % (mid, escape(recipient)), style, "good")


def rejected_line(when, what, code, reason, style):
    """The server refused something we sent (``ERR CODE TEXT``).

    ``what`` is our description of it ("message ..." / "/pair bob") or None
    when we cannot tell what the error answers.
    """
    head = "Not done: %s: " % what if what else "Error: "
    detail = escape(reason) if reason else escape(code)
    return notice_line(when, "%s%s [%s]" % (head, detail, escape(code)), style, "bad")


def event_sentence(msg, partner=None):
    """The sentence for a server message that is neither chat nor about
    our own messages' delivery, as ``(text, role)``; None for nothing.

    ``partner`` is who we are paired with before this message is applied;
    it tells "you ended the pair" from "you withdrew your request".
    Every piece of server text in the result is escaped.
    """
    k = msg.keyword
    f = [escape(x) for x in msg.fields]
    text = escape(msg.text)
    if k == "HELLO":
        return ("Connected (%s)." % f[0], "info")
    if k == "OK":
        cmd = msg.fields[0].lower()
        if cmd == "nick":
            return ("You are %s." % text, "good")
        if cmd == "pair":
            return ("Pair request sent to %s; you are paired once %s types /pair "
                    "with your nick." % (text, text), "info")
        if cmd == "unpair":
            if partner is not None and msg.text.lower() == partner.lower():
                return ("You ended the pair with %s." % text, "info")
            return ("Pair request to %s withdrawn." % text, "info")
        if cmd == "who":
            return ("%s online." % _count(text, "user"), "info")
        if cmd == "help":
            return (text, "info")
        return (("OK: %s %s" % (f[0], text)).rstrip(), "info")
    if k == "ERR":
        return ("Error: %s [%s]" % (text or f[0], f[0]), "bad")
    if k == "JOINED":
        return ("%s joined." % f[0], "info")
    if k == "LEFT":
        return (_with_reason("%s left" % f[0], text), "info")
    if k == "RENAMED":
        return ("%s is now called %s." % (f[0], f[1]), "info")
    if k == "PAIR-REQUEST":
        return ("%s asks to pair with you; type /pair %s to accept." % (f[0], f[0]), "pair")
    if k == "PAIRED":
        return ("You are paired with %s: plain text now goes to %s only."
                % (f[0], f[0]), "pair")
    if k == "UNPAIRED":
        return (_with_reason("Your pair with %s ended" % f[0], text), "pair")
    if k == "USER":
        return ("  %s (%s)" % (f[0], f[1]), "info")
    if k == "PONG":
        return (("pong %s" % text).rstrip(), "info")
    if k == "BYE":
        return (_with_reason("Server closed the session", text), "info")
    raw = escape(msg.keyword) + (" " + text if text else "")
    return ("Server: %s" % raw, "info")


def _with_reason(sentence, reason):
    return "%s: %s." % (sentence, reason) if reason else sentence + "."


def _count(number, noun):
    return "%s %s%s" % (number, noun, "" if number == "1" else "s")
