"""The words of tcpchat protocol v1: commands, replies, error codes, nicks.

This module is vocabulary only: what a client may say, what the server says
back, and the rules for a nick. The chat state that acts on it lives in
``tcpchat.chat``; the man page tcpchat(7) is the long form of this file, and
a test keeps the two in step.
"""

import re

__all__ = [
    "VERSION_TAG",
    "GREETING",
    "COMMANDS",
    "OPEN_COMMANDS",
    "ERROR_CODES",
    "SERVER_KEYWORDS",
    "HELP",
    "valid_nick",
    "split_command",
]

#: The protocol name and version a greeting announces.
VERSION_TAG = "tcpchat/1"

GREETING = (
    "HELLO %s Welcome to tcpchat. Type /nick NAME to register, "
    "/help for the commands." % VERSION_TAG
)

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
    "/quit",
    ":quit:",
)

#: Commands allowed before /nick succeeds; anything else is ERR not-registered.
OPEN_COMMANDS = frozenset(("/nick", "/help", "/ping", "/quit", ":quit:"))

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
)

#: The /help text, one ``OK help`` line each.
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
    "/quit [REASON]    leave (also :quit:)",
    "Replies: SENT ID TO COUNT when the server takes your message, "
    "DELIVERED ID NICK when NICK has it, FAILED ID NICK REASON when it never will.",
)

_NICK = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,31}\Z")


def valid_nick(name):
    """True for 1-32 of ``A-Z a-z 0-9 _ - .`` starting with a letter."""
    return _NICK.match(name) is not None


def split_command(text):
    """Split a command message into its lower-cased word and the rest.

    ``"/MSG bob  hi there"`` gives ``("/msg", "bob  hi there")``. The rest
    keeps its inner spacing; only the single separator goes.
    """
    word, _, rest = text.partition(" ")
    return word.lower(), rest
