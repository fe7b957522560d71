"""Terminal-safe text: what a peer sends, made unable to drive a terminal.

Shared by the client (everything it prints from the network) and the server
(chat text it writes to people on nc or telnet, who have no client of ours
between the socket and their terminal). A peer must not be able to move the
cursor, recolour the screen, set the window title, write to the clipboard
(OSC 52), hide text, fake a line of its own with a bare carriage return, or
reorder text with bidi controls (CVE-2024-28085 is this bug in wall(1)).

Escaping works character by character: once ESC, BEL, the C1 controls and
the other C0 controls are replaced by visible text, no CSI, OSC, DCS or
other escape sequence can start, so every sequence is defused without
having to parse it.
"""

import unicodedata

__all__ = ["escape"]

# Characters that are invisible or change how the text around them is shown,
# but are not in a category we escape wholesale. Hangul fillers render as
# blank space and are a classic way to fake an empty or different name.
_INVISIBLE_EXTRA = frozenset("\u115f\u1160\u3164\uffa0\u034f")

# Zero-width joiner and non-joiner are category Cf but carry meaning:
# emoji sequences and Persian or Indic spelling need them, and they can
# neither move the cursor nor reorder text, so they are let through.
_ALLOWED_FORMAT = frozenset("\u200c\u200d")

# Categories escaped wholesale: controls (Cc: C0, DEL, C1), format
# characters (Cf: bidi embeddings, overrides, isolates, marks, zero-width
# space, soft hyphen, BOM...), line and paragraph separators (Zl, Zp, which
# some terminals treat as newlines), lone surrogates (Cs).
_ESCAPED_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def _escape_char(ch):
    code = ord(ch)
    if code < 0x20:
        # Caret notation, as `cat -v` and terminals' own echo show it.
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    return "<U+%04X>" % code


def _needs_escape(ch):
    if ch == "\t":
        return False
    if ch < " ":
        return True
    if ch < "\x7f":
        return False  # printable ASCII: the common case, no table lookup
    if ch in _ALLOWED_FORMAT:
        return False
    if ch in _INVISIBLE_EXTRA:
        return True
    return unicodedata.category(ch) in _ESCAPED_CATEGORIES


def escape(text):
    """``text`` with every unsafe character replaced by a visible form.

    C0 controls (tab excepted) and DEL use caret notation (ESC is ``^[``,
    BEL ``^G``, newline ``^J``); everything else unsafe, C1 controls
    included, becomes ``<U+XXXX>``. Safe text comes back unchanged.
    """
    if text.isprintable() and _INVISIBLE_EXTRA.isdisjoint(text):
        # str.isprintable is False for every Cc, Cf, Zl, Zp and Cs character
        # (and for tab), so text that passes needs no escaping at all.
        return text
    return "".join(_escape_char(c) if _needs_escape(c) else c for c in text)
