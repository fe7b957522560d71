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

3. Screen geometry. ``screen_rows`` says how many rows a printed line
   fills, so the terminal can redraw the line of a message we sent in
   place when its state changes, and only when it can be sure of the count.
"""

import functools
import re
import unicodedata
import zlib

from .escaping import escape

__all__ = [
    "escape",
    "display_width",
    "ServerMessage",
    "parse_server_message",
    "Style",
    "clock",
    "mentions",
    "chat_line",
    "message_mark",
    "own_line",
    "outcome_line",
    "failure_reason",
    "MAYBE_SEEN",
    "notice_line",
    "quote",
    "rejected_line",
    "who_summary",
    "help_lines",
    "event_sentence",
    "screen_rows",
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
    # FAILED ID NICK CODE TEXT; an older server sends FAILED ID NICK REASON,
    # so the code is told from the text by failure_reason, not here.
    "FAILED": 2,
    "JOINED": 1,
    "LEFT": 1,  # LEFT NICK REASON
    "RENAMED": 2,
    "PAIR-REQUEST": 1,
    "PAIRED": 1,
    "UNPAIRED": 1,  # UNPAIRED NICK REASON
    "USER": 2,  # USER NICK STATE
    "AWAY": 1,  # AWAY NICK: connection lost, may come back (resume)
    "BACK": 1,  # BACK NICK
    "SESSION": 2,  # SESSION TOKEN SECONDS: a secret, never shown
    "HELP": 0,  # HELP TEXT, one line of the server's /help
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


# Nick colours: each readable on a black and on a white background (WCAG
# contrast at least 4 against both; tests/test_render.py checks it), with
# hues far enough apart to tell a few nicks apart. xterm 256-colour indexes.
_NICK_COLORS_256 = ("130", "64", "28", "30", "31", "62", "98", "164", "161")
# Where only the 8 basic colours exist, the terminal's theme decides how
# they look; yellow and white are left out, the two a light theme loses.
_NICK_COLORS_8 = ("31", "32", "34", "35", "36")

# How far a message we sent got, as a mark after its text: (UTF-8, ASCII).
_MARKS = {
    "pending": ("\u2026", "..."),  # typed; the server has not answered yet
    "sent": ("sent", "sent"),  # the server took it (SENT)
    "delivered": ("\u2713", "ok"),  # the recipient's client showed it
    "failed": ("\u2717", "failed:"),  # never reached them, or refused
    "unconfirmed": ("?", "unconfirmed:"),  # written to them, never confirmed
    # Typed while the connection was down: goes once it is back.
    "queued": ("queued", "queued"),
    # In flight when the connection or the server's memory of it was lost.
    "unknown": ("?", "?"),
}


class Style:
    """How to decorate output: ANSI colours or nothing, UTF-8 marks or ASCII.

    Each method takes text that is already safe and wraps it in one SGR
    sequence; with ``color`` False they return the text unchanged.
    """

    _CODES = {
        "time": "2",  # dim: the stamp is context, not content
        "private": "35",  # magenta
        "pair": "36",  # cyan
        "everyone": "",  # public talk is the common case: no colour
        "good": "32",
        "bad": "1;31",
        "warn": "31",  # not bold: worse than fine, not as bad as failed
        "info": "2",
        "plain": "",
    }

    __slots__ = ("color", "unicode", "palette")

    def __init__(self, color=False, unicode=True, colors=8):
        self.color = color
        # False when the terminal's encoding cannot show arrows and ticks.
        self.unicode = unicode
        self.palette = _NICK_COLORS_256 if colors >= 256 else _NICK_COLORS_8

    def _sgr(self, code, text):
        if not self.color or not code or not text:
            return text
        return "\x1b[%sm%s\x1b[0m" % (code, text)

    def paint(self, role, text, attention=False):
        """``text`` in the colour of ``role``; ``attention`` adds reverse
        video, the one highlight that reads on any background."""
        code = self._CODES[role]
        if attention:
            code = "7;" + code if code else "7"
        return self._sgr(code, text)

    def nick(self, nick, shown, me=False):
        """``shown`` (``nick`` escaped) in the colour that is ``nick``'s in
        every run (a checksum, not Python's per-process string hash), bold
        when it is our own."""
        index = zlib.crc32(nick.lower().encode("utf-8", "replace")) % len(self.palette)
        code = self.palette[index]
        if len(code) > 2:
            code = "38;5;" + code
        return self._sgr("1;" + code if me else code, shown)

    def mark(self, state):
        return _MARKS[state][0 if self.unicode else 1]

    @property
    def arrow(self):
        return "\u2192" if self.unicode else "->"


def clock(when):
    """A ``time.struct_time`` (local time) as the stamp shown on each line."""
    return "%02d:%02d:%02d" % (when.tm_hour, when.tm_min, when.tm_sec)


_AUDIENCE_LABEL = {"private": "private", "pair": "pair", "everyone": "all"}


@functools.lru_cache(maxsize=8)
def _mention_pattern(nick):
    # A nick is a word of its own: not inside a longer word or nick
    # (nicks hold letters, digits, _ - and .), though a full stop may end
    # the sentence after it ("thanks, alice.").
    return re.compile(r"(?<![\w.\-])%s(?![\w\-]|\.[\w\-])" % re.escape(nick),
                      re.IGNORECASE)


def mentions(text, nick):
    """Whether ``text`` names ``nick`` as a word, ignoring case."""
    return bool(nick) and _mention_pattern(nick).search(text) is not None


def _escaped_with_mentions(line, nick, style):
    """One line of message text, escaped, with each mention of ``nick``
    highlighted. Escaping works per character, so escaping the pieces
    between mentions gives the same text as escaping the whole."""
    if not nick or not style.color:
        return escape(line)
    out = []
    pos = 0
    for m in _mention_pattern(nick).finditer(line):
        out.append(escape(line[pos:m.start()]))
        out.append(style.paint("plain", escape(m.group()), attention=True))
        pos = m.end()
    out.append(escape(line[pos:]))
    return "".join(out)


def _body(head, text, nick=None, style=None):
    """``head`` then the escaped message text; a multi-line message keeps its
    lines, each continuation indented under the first so it cannot pose as
    a line of its own (a peer could otherwise fake a whole chat line).
    With ``nick``, its mentions are highlighted."""
    lines = text.split("\n")
    indent = " " * display_width(_strip_sgr(head))
    if nick:
        shown = [_escaped_with_mentions(line, nick, style) for line in lines]
    else:
        shown = [escape(line) for line in lines]
    return "\n".join([head + shown[0]] + [indent + line for line in shown[1:]])


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


def chat_line(when, sender, audience, text, style, me=None, attention=False):
    """A message someone sent us.

    ``audience`` is "private" (to us alone), "pair" (from our partner) or
    "everyone". Example: ``12:01:05 [pair] bob: hi``. ``me`` is our nick,
    whose mentions are highlighted; ``attention`` highlights the label.
    """
    label = "[%s]" % _AUDIENCE_LABEL[audience]
    head = "%s %s %s: " % (
        style.paint("time", clock(when)),
        style.paint(audience, label, attention=attention),
        style.nick(sender, escape(sender)),
    )
    return _body(head, text, me, style)


def message_mark(state, style, got=None, total=None, reason=None):
    """The mark after a message we sent: how far it got.

    ``state``: "pending", "queued", "sent", "delivered", "failed",
    "unconfirmed" or "unknown".
    For a message to everyone, ``got`` of ``total`` recipients have it; fewer
    than all is shown as a failure's colour. ``reason`` (escaped here) says
    why a message failed or is unconfirmed.
    """
    mark = style.mark(state)
    if state in ("pending", "queued", "sent"):
        return style.paint("info", mark)
    if state == "delivered":
        if got is None:
            return style.paint("good", mark)
        if total is not None and got < total:
            return style.paint("bad", "%s %d of %d" % (mark, got, total))
        return style.paint("good", "%s %d" % (mark, got))
    role = "warn" if state in ("unconfirmed", "unknown") else "bad"
    return style.paint(role, ("%s %s" % (mark, escape(reason or ""))).rstrip())


def own_line(when, me, audience, to, text, mark, style):
    """The one line of a message we sent, ending in its ``mark``
    (``message_mark``), which is redrawn in place as it changes.

    ``12:01:05 [pair] alice: hi  ✓``; a private one names its recipient:
    ``12:01:05 [private] alice → bob: hi  sent``.
    """
    who = style.nick(me, escape(me), me=True)
    if audience == "private":
        who += " %s %s" % (style.arrow, style.nick(to, escape(to)))
    head = "%s %s %s: " % (
        style.paint("time", clock(when)),
        style.paint(audience, "[%s]" % _AUDIENCE_LABEL[audience]),
        who,
    )
    return "%s  %s" % (_body(head, text), mark)


def outcome_line(when, state, text, to, style, got=None, total=None,
                 reason=None, msg_id=None):
    """What became of a message we sent, as a line of its own: for when
    other lines came after the message's own line, or there is none (piped
    input). It names the message by a short quote (or its id when we do not
    have its text).

    ``state``: "delivered" (``got`` of ``total`` for a message to everyone),
    "failed" (never reached ``to``), "refused" (the server did not take it:
    ``reason`` is its answer), "unconfirmed" (written to ``to`` but never
    confirmed) or "unknown" (lost track of with the connection: ``reason``
    says how). ``reason`` is escaped here.
    """
    what = quote(text) if text else "#%s" % escape(msg_id or "?")
    name = "everyone" if to == "*" else escape(to or "?")
    why = escape(reason or "")

    def line(state, sentence, role):
        # A UTF-8 terminal gets the same mark as the message's own line; in
        # ASCII the sentence says it alone ("ok" would add nothing).
        mark = style.mark(state) + " " if style.unicode else ""
        return notice_line(when, mark + sentence, style, role)

    if state == "delivered":
        if to != "*":
            return line("delivered", "%s delivered to %s" % (what, name), "good")
        if got is not None and total is not None and got < total:
            return line("failed", "%s delivered to only %d of %d (the others left first)"
                        % (what, got, total), "bad")
        count = got if got is not None else total
        return line("delivered", "%s delivered to everyone (%s)" % (what, count), "good")
    if state in ("unconfirmed", "unknown"):
        return line(state, "%s to %s: %s" % (what, name, why), "warn")
    if state == "refused":
        target = "" if to in (None, "*") else " to %s" % name
        return line("failed", "%s%s not sent: %s" % (what, target, why), "bad")
    return line("failed", "%s NOT delivered to %s: %s" % (what, name, why), "bad")


# FAILED codes (tcpchat(7)) as the reason a person reads; %s is the nick.
_FAILURES = {
    "left": "%s left before it arrived",
    "slow-consumer": "%s was cut off for not keeping up",
    "shutdown": "the server stopped before delivering it",
    "no-receipt": "may have been seen, not confirmed",
    "away-expired": "%s was away and did not come back in time",
    "away-full": "%s was away with too much waiting",
}

#: The one code that means "written to the recipient, maybe seen".
MAYBE_SEEN = "no-receipt"


def failure_reason(rest, nick, coded=True):
    """``(code, reason)`` for the text after ``FAILED ID NICK``.

    ``coded``: the server sends a CODE word first (tcpchat(7)); otherwise
    (an older server) ``rest`` is all human text and the code is None. An
    unknown code keeps the server's own text as the reason. The reason is
    not escaped yet.
    """
    if not coded:
        return None, rest or "no reason given"
    code, _, text = rest.partition(" ")
    known = _FAILURES.get(code)
    if known is None:
        return code or None, text or code or "no reason given"
    return code, known % nick if "%s" in known else known


def notice_line(when, text, style, role="info", attention=False):
    """A sentence about what happened (already escaped by the caller where
    it quotes the network), e.g. ``12:01:05 bob joined.``.

    ``role`` colours the sentence: "info", "good", "warn", "bad", or an
    audience ("pair" for pairing news); ``attention`` highlights it.
    """
    return "%s %s" % (style.paint("time", clock(when)),
                      style.paint(role, text, attention=attention))


def quote(text, limit=40):
    """A short excerpt of a message we sent, to say which one a line is
    about. ``limit`` counts characters, not columns: it only keeps the
    line short, nothing depends on its exact width."""
    text = text.replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return '"%s"' % escape(text)


def rejected_line(when, what, code, reason, style):
    """The server refused something we sent (``ERR CODE TEXT``).

    ``what`` is our description of it ("message ..." / "/pair bob") or None
    when we cannot tell what the error answers.
    """
    head = "Not done: %s: " % what if what else "Error: "
    detail = escape(reason) if reason else escape(code)
    return notice_line(when, "%s%s [%s]" % (head, detail, escape(code)), style, "bad")


def who_summary(others, count, paired, style):
    """Who is here, in one sentence, for arriving: ``others`` are the first
    few ``(nick, state)`` besides us, of ``count`` in all, ``paired`` of
    whom are paired (STATE other than "free" is shown after the nick)."""
    if count == 0:
        return "Nobody else is here yet."
    names = []
    for nick, state in others:
        shown = style.nick(nick, escape(nick))
        names.append(shown if state == "free" else "%s (%s)" % (shown, escape(state)))
    listed = ", ".join(names)
    if count > len(others):
        listed += " and %d more" % (count - len(others))
    head = "1 other here" if count == 1 else "%d others here" % count
    if paired and count > len(others):
        head += ", %d of them paired" % paired
    return "%s: %s." % (head, listed)


def help_lines(style):
    """What /help in the client shows: what a person types, one line each."""
    return [
        "Type text and press Enter: it goes to your partner when paired, else to everyone.",
        "/msg NICK TEXT   a private message to NICK (also /w NICK TEXT)",
        "/all TEXT        to everyone, even while paired",
        "/pair NICK       ask NICK for a private pair, or accept their request",
        "/unpair          end your pair, or withdraw your pair request",
        "/who             who is here, and who is paired",
        "/nick NAME       change your nick",
        "/ping            check that the server answers",
        "//TEXT           send text that starts with a slash",
        "/quit, :quit:    leave (also Ctrl-D, or Ctrl-C on an empty line)",
        'Marks after your messages: "%s" waiting for the server, "sent", "%s" delivered '
        '(a count for everyone), "%s" failed and why, "%s" maybe seen.'
        % (style.mark("pending"), style.mark("delivered"), style.mark("failed"),
           style.mark("unconfirmed")),
        'A lost connection comes back by itself (Ctrl-C then stops); lines typed meanwhile '
        'are "queued", "? outcome unknown" marks one lost in flight.',
        "Keys: Tab completes commands and nicks, Up and Down recall lines, "
        "Ctrl-C clears the line.",
    ]


def event_sentence(msg, partner=None, request=None):
    """The sentence for a server message that is neither chat nor about
    our own messages' delivery, as ``(text, role)``; None for nothing.

    ``partner`` is who we are paired with before this message is applied;
    it tells "you ended the pair" from "you withdrew your request".
    ``request`` tells what an ``UNPAIRED NICK`` from someone who is not our
    partner is about: "theirs" (NICK had asked us to pair), "ours" (we had
    asked NICK) or None (neither that we know of).
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
            return (text, "plain")
        return (("OK: %s %s" % (f[0], text)).rstrip(), "info")
    if k == "HELP":
        return (text, "plain")
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
        # The same keyword ends a pair and cancels a pending request: it is
        # about the pair only when NICK is our partner (tcpchat(7)).
        if partner is not None and msg.fields[0].lower() == partner.lower():
            return (_with_reason("Your pair with %s ended" % f[0], text), "pair")
        if request == "theirs":
            return (_with_reason("%s no longer asks to pair with you" % f[0], text), "info")
        if request == "ours":
            return (_with_reason("Your pair request to %s ended" % f[0], text), "info")
        return (_with_reason("The pair request between you and %s is gone" % f[0], text),
                "info")
    if k == "USER":
        return ("  %s (%s)" % (f[0], f[1]), "info")
    if k == "AWAY":
        return ("%s is away (connection lost), and may be back." % f[0], "info")
    if k == "BACK":
        return ("%s is back." % f[0], "info")
    if k == "SESSION":
        return None  # the resume token is a secret: not for the screen
    if k == "PONG":
        return (("pong %s" % text).rstrip(), "info")
    if k == "BYE":
        return (_with_reason("The server ended the session", text), "bad")
    raw = escape(msg.keyword) + (" " + text if text else "")
    return ("Server: %s" % raw, "info")


def _with_reason(sentence, reason):
    return "%s: %s." % (sentence, reason) if reason else sentence + "."


def _count(number, noun):
    return "%s %s%s" % (number, noun, "" if number == "1" else "s")


# -- screen geometry ---------------------------------------------------------

# Characters whose width terminals disagree on: East Asian "ambiguous" ones
# (1 column in most terminals, 2 in some CJK set-ups), and the emoji
# presentation selector, which some terminals let widen the character
# before it. A zero-width joiner may fuse two emoji into one picture.
_VS16 = "\ufe0f"
_ZWJ = "\u200d"


def _widths(ch, prev, wide):
    """Columns of ``ch`` after ``prev``: the narrowest reading, or with
    ``wide`` the widest any common terminal gives it."""
    if unicodedata.combining(ch):
        return 0
    if ch == _VS16:
        return 1 if wide and prev is not None and \
            unicodedata.east_asian_width(prev) not in ("W", "F") else 0
    if prev == _ZWJ and not wide:
        return 0  # fused into the emoji before the joiner
    eaw = unicodedata.east_asian_width(ch)
    if eaw in ("W", "F") or (wide and eaw == "A"):
        return 2
    if ch == _ZWJ:
        return 0
    return 1


def _rows(text, columns, wide):
    rows = 0
    for line in text.split("\n"):
        rows += 1
        col = 0
        prev = None
        for ch in line:
            if ch == "\t":
                # A tab moves to the next stop, never past the last column.
                if col < columns:
                    col = max(col, min((col // 8 + 1) * 8, columns - 1))
                prev = ch
                continue
            w = _widths(ch, prev, wide)
            if col + w > columns:
                # A character that does not fit starts the next row whole.
                rows += 1
                col = 0
            col += w
            prev = ch
    return rows


def screen_rows(text, columns):
    """Rows that ``text`` (our output: escaped, with our SGR codes) fills
    when printed from column 0 on a terminal ``columns`` wide, with a newline
    after it; None when terminals could disagree (characters of uncertain
    width near a row's end), so that a caller never redraws the wrong rows.
    """
    if columns < 1:
        return None
    plain = _strip_sgr(text)
    narrow = _rows(plain, columns, False)
    if plain.isascii():
        return narrow
    return narrow if narrow == _rows(plain, columns, True) else None
