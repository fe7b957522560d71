"""The words of tcpchat protocol v1: commands, replies, error codes, nicks.

This module is vocabulary only: what a client may say, what the server says
back, and the rules for a nick. The chat state that acts on it lives in
``tcpchat.chat``; the man page tcpchat(7) is the long form of this file, and
a test keeps the two in step.
"""

import re

__all__ = [
    "VERSION_TAG",
    "MSG_HEADROOM",
    "greeting",
    "COMMANDS",
    "OPEN_COMMANDS",
    "ERROR_CODES",
    "SERVER_KEYWORDS",
    "HELP",
    "FAILURE_CODES",
    "valid_nick",
    "split_command",
    "split_word",
    "is_quit",
]

#: The protocol name and version a greeting announces.
VERSION_TAG = "tcpchat/1"

#: Bytes of a MSG frame that are not the text: "MSG ID FROM TO " is at most
#: 4 + 20 + 1 + 32 + 1 + 32 + 1 = 91 bytes. The longest chat text a client
#: may send (max-text) is --max-frame minus this, so that every frame the
#: server sends fits in --max-frame too.
MSG_HEADROOM = 128


def greeting(max_line=4096, max_frame=65536, extra=()):
    """The greeting line (without its newline) for a server's limits.

    After the version come NAME=VALUE words a program reads (the limits it
    must keep to), then text for a person.
    """
    words = ["max-line=%d" % max_line, "max-frame=%d" % max_frame,
             "max-text=%d" % (max_frame - MSG_HEADROOM)]
    words.extend(extra)
    return "HELLO %s %s Welcome to tcpchat. Type /nick NAME to register, " \
           "/help for the commands." % (VERSION_TAG, " ".join(words))

#: Every command word the server knows, in the order /help lists them.
#: ``/w`` is an alias of ``/msg``; ``:quit:`` is the original chat's way out.
COMMANDS = (
    "/nick",
    "/pair",
    "/unpair",
    "/msg",
    "/w",
    "/all",
    "/who",
    "/ping",
    "/ack",
    "/help",
    "/resume",
    "/quit",
    ":quit:",
)

#: Commands allowed before /nick succeeds; anything else is ERR not-registered.
OPEN_COMMANDS = frozenset(("/nick", "/resume", "/help", "/ping", "/quit", ":quit:"))

#: Every CODE an ``ERR CODE TEXT`` reply can carry.
ERROR_CODES = (
    "not-registered",
    "bad-nick",
    "nick-taken",
    "no-such-user",
    "self",
    "not-paired",
    "busy",
    "no-recipients",
    "unknown-command",
    "bad-utf8",
    "too-long",
    "bad-frame",
    "server-full",
    "too-many-connections",
    "usage",
    "no-such-message",
    "timeout",
    "bad-token",
)

#: The first word of every message the server sends.
SERVER_KEYWORDS = (
    "HELLO",
    "OK",
    "ERR",
    "MSG",
    "SENT",
    "DELIVERED",
    "FAILED",
    "JOINED",
    "LEFT",
    "RENAMED",
    "PAIR-REQUEST",
    "PAIRED",
    "UNPAIRED",
    "USER",
    "PONG",
    "BYE",
    "HELP",
    "SESSION",
    "AWAY",
    "BACK",
)

#: The /help text, one ``HELP`` line each, then ``OK help COUNT``.
HELP = (
    "/nick NAME        register, or change your nick (1-32 of A-Z a-z 0-9 _ - ., a letter first)",
    "/pair NAME        ask NAME for a private pair; paired once both have asked",
    "/unpair           end your pair, or withdraw your pair request",
    "/msg NAME TEXT    private message to NAME (also /w NAME TEXT)",
    "/all TEXT         message to everyone",
    "TEXT              to your partner when paired, else to everyone (//TEXT sends /TEXT)",
    "/who              list the users and whether they are free or paired",
    "/ping [TOKEN]     the server answers PONG [TOKEN]",
    "/ack ID [ID ...]  receipt: you have seen these messages (clients send it themselves)",
    "/resume TOKEN     on a new connection, be again who you were (TOKEN from SESSION)",
    "/quit [REASON]    leave (also :quit:)",
    "Replies: SENT ID TO COUNT when the server takes your message, "
    "DELIVERED ID NICK when NICK has it, FAILED ID NICK CODE TEXT when it did not arrive.",
)

#: The CODE of ``FAILED ID NICK CODE TEXT``: why a message did not arrive.
#: Every code but no-receipt means the recipient certainly never got it.
FAILURE_CODES = (
    "left",  # the recipient left before the message was written to it
    "slow-consumer",  # it was cut off for not reading; never written
    "shutdown",  # the server stopped before writing it
    "no-receipt",  # written (at least in part), never confirmed: maybe seen
    "away-expired",  # held for a user who was away and never came back
    "away-full",  # the away user already had as much held as its limit allows
)

_NICK = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,31}\Z")


def valid_nick(name):
    """True for 1-32 of ``A-Z a-z 0-9 _ - .`` starting with a letter."""
    return _NICK.match(name) is not None


#: What separates a command's words: runs of spaces and tabs.
SEPARATORS = " \t"


def split_word(text):
    """``text``'s first word and the rest after the separators that end it.

    ``"bob \t hi  there "`` gives ``("bob", "hi  there ")``: the rest keeps
    its inner and trailing spacing exactly, only the separator run goes.
    """
    for i, ch in enumerate(text):
        if ch in SEPARATORS:
            return text[:i], text[i:].lstrip(SEPARATORS)
    return text, ""


def split_command(text):
    """Split a command message into its lower-cased word, the word as sent,
    and the rest: ``"/MSG\tbob  hi"`` gives ``("/msg", "/MSG", "bob  hi")``."""
    word, rest = split_word(text)
    return word.lower(), word, rest


def is_quit(text):
    """The reason if ``text`` is ``:quit:`` (any case, an optional reason
    after it, white space around ignored), else None."""
    stripped = text.strip()
    if stripped[:6].lower() != ":quit:":
        return None
    rest = stripped[6:]
    if rest and rest[0] not in SEPARATORS:
        return None  # ":quit:x" is chat text, not a quit
    return rest.strip()
