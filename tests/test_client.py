"""The client: its Session core fed by hand, then the whole program in a
real pseudo-terminal (and with piped stdin) against the real server, or
against a server the test plays itself where it needs replies the real
server does not send (yet, or at a moment the test chooses).

The terminal tests start tcpchat-client on the slave side of a pty that is
its controlling terminal, so Ctrl-C typed into the master really becomes
SIGINT, exactly as in a terminal window. Everything waits for expected
output with a deadline; no sleeps synchronise anything.
"""

import errno
import fcntl
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time

import pytest

from serverproc import REPO, TIMEOUT, ServerProcess

from tcpchat.client import Session, _unicode_ok, make_parser, parse_greeting
from tcpchat.protocol import COMMANDS
from tcpchat.render import Style

WHEN = time.struct_time((2026, 11, 21, 9, 5, 7, 5, 325, 0))
NEW_GREETING = ("HELLO tcpchat/1 max-line=4096 max-frame=65536 max-text=65408 "
                "Welcome to tcpchat.")
OLD_GREETING = "HELLO tcpchat/1 Welcome to tcpchat. Type /nick NAME to register."

# --------------------------------------------------------------------------
# Session: the protocol bookkeeping, no I/O
# --------------------------------------------------------------------------


def texts(show):
    return [line.text for line in show]


def session(nick="alice", greeting=NEW_GREETING, style=None, **kw):
    """A registered Session, its /who on arrival answered (nobody else)."""
    s = Session(style or Style(color=False), nick=nick, **kw)
    s.greeted(greeting)
    sent = s.start()
    if nick:
        assert sent == ["/nick " + nick]
        show, send = s.server_message("OK nick " + nick, WHEN)
        if "/who" in send:
            s.server_message("USER %s free" % nick, WHEN)
            s.server_message("OK who 1", WHEN)
    return s


def test_session_registers_then_pairs_then_asks_who_is_here():
    s = Session(Style(), nick="alice", pair="bob")
    assert s.start() == ["/nick alice"]
    assert not s.ready()
    assert s.prompt() == "nick> "
    show, send = s.server_message("OK nick alice", WHEN)
    assert send == ["/pair bob", "/who"]
    assert s.prompt() == "alice> "
    assert not s.ready()
    s.server_message("OK pair bob", WHEN)
    assert s.ready()
    show, _ = s.server_message("PAIRED bob", WHEN)
    assert "paired with bob" in show[0].text
    assert s.prompt() == "alice\u2192bob> "
    assert Session(Style(unicode=False)).prompt() == "nick> "
    # Piped input asks nobody who is there: it has no one to tell.
    piped = Session(Style(), nick="ci", interactive=False)
    piped.start()
    assert piped.server_message("OK nick ci", WHEN)[1] == []


def test_who_is_here_on_arrival_is_one_line():
    s = Session(Style(color=False), nick="alice")
    s.start()
    s.server_message("OK nick alice", WHEN)
    for wire in ("USER bob free", "USER carol paired", "USER alice free", "USER dave paired"):
        assert s.server_message(wire, WHEN) == ([], [])
    show, _ = s.server_message("OK who 4", WHEN)
    assert texts(show) == ["09:05:07 3 others here: bob, carol (paired), dave (paired)."]
    # A /who the user types still lists everyone.
    s.user_line("/who", WHEN)
    assert texts(s.server_message("USER bob free", WHEN)[0]) == ["09:05:07   bob (free)"]
    assert texts(s.server_message("OK who 1", WHEN)[0]) == ["09:05:07 1 user online."]


def test_who_is_here_in_a_crowd_and_alone():
    s = Session(Style(color=False), nick="alice")
    s.start()
    s.server_message("OK nick alice", WHEN)
    for i in range(40):
        s.server_message("USER u%d %s" % (i, "paired" if i % 4 == 0 else "free"), WHEN)
    show, _ = s.server_message("OK who 41", WHEN)
    assert texts(show) == ["09:05:07 40 others here, 10 of them paired: u0 (paired), u1, "
                           "u2, u3, u4 (paired) and 35 more."]
    alone = Session(Style(color=False), nick="alice")
    alone.start()
    alone.server_message("OK nick alice", WHEN)
    alone.server_message("USER alice free", WHEN)
    assert texts(alone.server_message("OK who 1", WHEN)[0]) == [
        "09:05:07 Nobody else is here yet."]


def test_a_resume_token_is_kept_and_never_shown():
    # Issue 10's server sends it before OK nick; resuming is not built yet.
    s = Session(Style(color=False), nick="alice")
    s.start()
    assert s.server_message("SESSION s3cr3t-T0ken 120", WHEN) == ([], [])
    assert (s.resume_token, s.resume_seconds) == ("s3cr3t-T0ken", 120)
    show, send = s.server_message("OK nick alice", WHEN)
    assert texts(show) == ["09:05:07 You are alice."] and send == ["/who"]
    assert texts(s.server_message("AWAY bob", WHEN)[0]) == [
        "09:05:07 bob is away (connection lost), and may be back."]
    assert texts(s.server_message("BACK bob", WHEN)[0]) == ["09:05:07 bob is back."]


def test_accepting_a_pair_request_does_not_claim_to_wait():
    s = session()
    s.server_message("PAIR-REQUEST bob", WHEN)
    s.user_line("/pair bob", WHEN)
    assert s.server_message("OK pair bob", WHEN) == ([], [])
    show, _ = s.server_message("PAIRED bob", WHEN)
    assert texts(show) == ["09:05:07 You are paired with bob: plain text now goes to bob only."]
    s.user_line("/pair carol", WHEN)
    show, _ = s.server_message("OK pair carol", WHEN)
    assert "Pair request sent to carol" in show[0].text


def test_bare_word_before_registering_is_the_nick():
    s = Session(Style(), interactive=True)
    assert s.asking_nick()
    assert s.user_line("alice", WHEN) == ([], ["/nick alice"])
    s.server_message("ERR nick-taken alice is taken", WHEN)
    assert s.registration_failed
    assert s.user_line("alice2", WHEN) == ([], ["/nick alice2"])
    s.server_message("OK nick alice2", WHEN)
    assert s.nick == "alice2" and not s.registration_failed
    assert not s.asking_nick()
    # Registered: a bare word is chat text now.
    assert s.user_line("alice", WHEN)[1] == ["alice"]


def test_own_message_is_one_line_whose_mark_changes():
    s = session()
    show, send = s.user_line("hi all", WHEN)
    assert send == ["hi all"]
    [own] = show
    assert (own.kind, own.text) == ("own", "09:05:07 [all] alice: hi all  \u2026")
    out = own.out
    show, _ = s.server_message("SENT 4 * 2", WHEN)
    assert [(line.kind, line.out, line.text, line.note) for line in show] == [
        ("mark", out, "09:05:07 [all] alice: hi all  sent", None)]
    assert not s.settled()
    later = time.struct_time((2026, 11, 21, 9, 6, 0, 5, 325, 0))
    show, _ = s.server_message("DELIVERED 4 * 2", later)
    # The line keeps the time it was typed; the note says when it arrived.
    assert [(line.kind, line.text, line.note) for line in show] == [
        ("mark", "09:05:07 [all] alice: hi all  \u2713 2",
         '09:06:00 \u2713 "hi all" delivered to everyone (2)')]
    assert s.settled() and s.all_delivered()


def test_private_and_partial_outcomes_and_ascii_marks():
    s = session(style=Style(unicode=False))
    s.user_line("/w bob one", WHEN)
    s.user_line("//two", WHEN)
    assert texts(s.server_message("SENT 1 bob 1", WHEN)[0]) == [
        "09:05:07 [private] alice -> bob: one  sent"]
    show, _ = s.server_message("SENT 2 * 3", WHEN)
    assert show[0].text == "09:05:07 [all] alice: /two  sent"
    show, _ = s.server_message("DELIVERED 1 bob", WHEN)
    assert (show[0].text, show[0].note) == (
        "09:05:07 [private] alice -> bob: one  ok", '09:05:07 "one" delivered to bob')
    show, _ = s.server_message("DELIVERED 2 * 2", WHEN)
    assert show[0].text.endswith("/two  ok 2 of 3")
    assert "only 2 of 3" in show[0].note
    assert s.settled() and not s.all_delivered()


@pytest.mark.parametrize("rest, mark, note", [
    ("left bob left first", "\u2717 bob left before it arrived",
     '\u2717 "hi" NOT delivered to bob: bob left before it arrived'),
    ("slow-consumer cut off", "\u2717 bob was cut off for not keeping up", None),
    ("shutdown server stopped", "\u2717 the server stopped before delivering it", None),
    ("away-expired gone", "\u2717 bob was away and did not come back in time", None),
    ("away-full too much", "\u2717 bob was away with too much waiting", None),
    ("no-receipt never confirmed", "? may have been seen, not confirmed",
     '? "hi" to bob: may have been seen, not confirmed'),
    ("brand-new-code something new", "\u2717 something new", None),
])
def test_failed_codes_are_told_in_words(rest, mark, note):
    s = session()
    s.user_line("/msg bob hi", WHEN)
    s.server_message("SENT 9 bob 1", WHEN)
    show, _ = s.server_message("FAILED 9 bob " + rest, WHEN)
    assert show[0].text == "09:05:07 [private] alice \u2192 bob: hi  " + mark
    if note:
        assert show[0].note == "09:05:07 " + note
    assert s.settled() and not s.all_delivered()


def test_an_older_server_failed_reason_is_all_text():
    s = session(greeting=OLD_GREETING)
    s.user_line("/msg bob hi", WHEN)
    s.server_message("SENT 9 bob 1", WHEN)
    show, _ = s.server_message("FAILED 9 bob connection lost", WHEN)
    assert show[0].text.endswith("hi  \u2717 connection lost")


def test_errors_are_matched_to_the_request_they_answer():
    s = session()
    s.user_line("/pair zed", WHEN)
    s.user_line("/msg zed hello there", WHEN)
    assert s.user_line("/ack 99", WHEN) == ([], ["/ack 99"])  # silent, or its own ERR
    s.user_line("hi all", WHEN)
    # An /ack's error names its ids and answers no queued request.
    show, _ = s.server_message("ERR no-such-message 41 42 not awaiting your receipt", WHEN)
    assert texts(show) == ["09:05:07 Error: 41 42 not awaiting your receipt [no-such-message]"]
    s.server_message("ERR timeout no /nick in time", WHEN)  # not an answer either
    show, _ = s.server_message("ERR no-such-user no user zed", WHEN)
    assert texts(show) == ["09:05:07 Not done: /pair zed: no user zed [no-such-user]"]
    show, _ = s.server_message("ERR no-such-user no user zed", WHEN)
    assert show[0].text == "09:05:07 [private] alice \u2192 zed: hello there  \u2717 no user zed"
    assert show[0].note == '09:05:07 \u2717 "hello there" to zed not sent: no user zed'
    show, _ = s.server_message("SENT 4 * 2", WHEN)
    assert show[0].text == "09:05:07 [all] alice: hi all  sent"
    assert s.errors == 2
    s.server_message("DELIVERED 4 * 2", WHEN)
    assert s.settled()
    assert not s.all_delivered()  # the /msg to zed failed


def test_help_lines_from_the_server_do_not_disturb_the_queue():
    s = session()
    s._command("/help")  # as a program pipelining commands would
    s.user_line("/pair zed", WHEN)
    assert texts(s.server_message("HELP /nick NAME  register", WHEN)[0]) == [
        "09:05:07 /nick NAME  register"]
    assert s.server_message("OK help 1", WHEN) == ([], [])
    show, _ = s.server_message("ERR no-such-user no user zed", WHEN)
    assert "Not done: /pair zed" in show[0].text
    # A stray count (no /help waiting) answers nothing either.
    s.user_line("/ping", WHEN)
    s.server_message("OK help 3", WHEN)
    assert texts(s.server_message("PONG", WHEN)[0]) == ["09:05:07 pong"]
    assert s.settled()
    # An older server's help lines: OK help TEXT, shown, no count.
    assert texts(s.server_message("OK help /who  list", WHEN)[0]) == ["09:05:07 /who  list"]


def test_help_is_the_clients_own_list_of_what_to_type():
    s = Session(Style(color=False))
    show, send = s.user_line("/help", WHEN)  # even before registering
    assert send == []
    lines = texts(show)
    assert all("\n" not in line for line in lines)
    typed = {line.split()[0].rstrip(",") for line in lines if line.startswith("/")}
    assert typed >= {"/msg", "/all", "/pair", "/unpair", "/who", "/nick", "/ping", "/quit",
                     "//TEXT"}
    assert not [line for line in lines if line.startswith(("OK", "HELP", "/ack"))]


def test_a_typed_ack_must_be_ids():
    s = session()
    show, send = s.user_line("/ack x", WHEN)
    assert send == [] and "Not done: /ack x: /ack ID [ID ...] [usage]" in show[0].text
    assert s.user_line("/ack 5 6", WHEN) == ([], ["/ack 5 6"])
    assert s.settled()  # nothing queued: a failed /ack's ERR names its ids


def test_greeting_limits_and_the_fallback_for_an_older_server():
    assert parse_greeting(NEW_GREETING) == (
        "tcpchat/1", {"max-line": "4096", "max-frame": "65536", "max-text": "65408"},
        "Welcome to tcpchat.")
    assert parse_greeting(OLD_GREETING) == (
        "tcpchat/1", {}, "Welcome to tcpchat. Type /nick NAME to register.")
    s = Session(Style())
    s.greeted("HELLO tcpchat/1 max-frame=1000 resume=120 Hi there=you")
    assert (s.max_frame, s.max_text) == (1000, 872)
    s.greeted("HELLO tcpchat/1 max-frame=1000 max-text=500 Hi")
    assert (s.max_frame, s.max_text) == (1000, 500)
    s.greeted(OLD_GREETING)
    assert (s.max_frame, s.max_text) == (65536, 65408)


def test_a_message_over_the_limit_is_refused_locally_with_the_limit():
    s = session(greeting="HELLO tcpchat/1 max-frame=300 max-text=100 Hi")
    assert s.user_line("x" * 100, WHEN)[1] == ["x" * 100]
    show, send = s.user_line("\u00e9" * 51, WHEN)  # 102 bytes of UTF-8
    assert send == []
    assert show[0].kind == "notice"
    assert "it is 102 bytes; this server takes at most 100 bytes" in show[0].text
    assert "[too-long]" in show[0].text
    show, send = s.user_line("/nick " + "n" * 300, WHEN)
    assert send == [] and "at most 300 bytes" in show[0].text
    assert s.errors == 2


def test_text_for_the_partner_goes_as_msg_so_it_cannot_go_public():
    s = session()
    s.server_message("PAIRED bob", WHEN)
    show, send = s.user_line("my password is hunter2", WHEN)
    assert send == ["/msg bob my password is hunter2"]
    assert show[0].text == "09:05:07 [pair] alice: my password is hunter2  \u2026"
    assert s.user_line("//shrug", WHEN)[1] == ["/msg bob /shrug"]
    assert s.user_line("/all hi everyone", WHEN)[1] == ["/all hi everyone"]
    show, _ = s.server_message("SENT 1 bob 1", WHEN)
    assert show[0].text == "09:05:07 [pair] alice: my password is hunter2  sent"
    s.server_message("UNPAIRED bob ended the pair", WHEN)
    # Unpaired: plain text again, which the server refuses once after a
    # pair ends; the refusal is shown on the message's line.
    assert s.user_line("hello?", WHEN)[1] == ["hello?"]
    s.server_message("SENT 2 bob 1", WHEN)
    s.server_message("SENT 3 * 2", WHEN)
    show, _ = s.server_message(
        "ERR not-paired your pair with bob ended; send again to send to everyone", WHEN)
    assert show[0].text == ("09:05:07 [all] alice: hello?  \u2717 your pair with bob ended; "
                            "send again to send to everyone")


def test_unpaired_tells_a_withdrawn_request_from_a_broken_pair():
    s = session()  # bob, paired with carol, is told alice gave up her old request
    s.server_message("PAIRED carol", WHEN)
    s.server_message("PAIR-REQUEST alice2", WHEN)
    show, _ = s.server_message("UNPAIRED alice2 request withdrawn", WHEN)
    assert texts(show) == ["09:05:07 alice2 no longer asks to pair with you: request withdrawn."]
    assert s.partner == "carol" and s.prompt() == "alice\u2192carol> "
    assert "alice2" not in s.asked_by
    s.user_line("/unpair", WHEN)
    s.server_message("OK unpair carol", WHEN)
    s.user_line("/pair dave", WHEN)
    s.server_message("OK pair dave", WHEN)
    show, _ = s.server_message("UNPAIRED dave request declined", WHEN)
    assert texts(show) == ["09:05:07 Your pair request to dave ended: request declined."]
    assert s.pair_requested is None
    show, _ = s.server_message("UNPAIRED erin request withdrawn", WHEN)
    assert texts(show) == [
        "09:05:07 The pair request between you and erin is gone: request withdrawn."]


def test_summary_names_messages_without_an_outcome():
    s = session()
    s.user_line("/msg bob one", WHEN)
    s.user_line("two", WHEN)
    s.server_message("SENT 1 bob 1", WHEN)
    assert texts(s.summary(WHEN)) == [
        '09:05:07 "one" to bob: delivery not confirmed',
        '09:05:07 "two" was never answered by the server',
    ]


def test_incoming_messages_are_shown_then_acked():
    s = session()
    s.server_message("PAIRED bob", WHEN)
    show, send = s.server_message("MSG 5 bob alice hi", WHEN)
    assert (texts(show), send, show[0].kind) == (["09:05:07 [pair] bob: hi"], ["/ack 5"], "chat")
    assert texts(s.server_message("MSG 6 carol alice psst", WHEN)[0]) == [
        "09:05:07 [private] carol: psst"]
    assert texts(s.server_message("MSG 7 carol * \x1b]0;x\x07all", WHEN)[0]) == [
        "09:05:07 [all] carol: ^[]0;x^Gall"]


def test_attention_private_messages_pair_requests_and_mentions():
    s = session(style=Style(color=True))
    rings = {}
    for wire in ("MSG 1 bob alice psst", "MSG 2 bob * hi ALICE!", "MSG 3 bob * alice.",
                 "MSG 4 bob * malice and alice2 and alice-x", "MSG 5 bob * hi all",
                 "PAIR-REQUEST carol", "JOINED dave"):
        [line] = s.server_message(wire, WHEN)[0]
        rings[wire] = line.bell
        if line.bell and wire.startswith("MSG"):
            assert "\x1b[7" in line.text  # highlighted
    assert rings == {"MSG 1 bob alice psst": True, "MSG 2 bob * hi ALICE!": True,
                     "MSG 3 bob * alice.": True,
                     "MSG 4 bob * malice and alice2 and alice-x": False,
                     "MSG 5 bob * hi all": False, "PAIR-REQUEST carol": True,
                     "JOINED dave": False}
    quiet = session(bell=False)
    assert not quiet.server_message("MSG 1 bob alice psst", WHEN)[0][0].bell


def test_pair_state_follows_renames_and_unpairing():
    s = session()
    s.server_message("PAIRED bob", WHEN)
    s.server_message("RENAMED bob rob", WHEN)
    assert s.prompt() == "alice\u2192rob> "
    assert s.user_line("still you?", WHEN)[1] == ["/msg rob still you?"]
    show, _ = s.server_message("UNPAIRED rob connection lost", WHEN)
    assert texts(show) == ["09:05:07 Your pair with rob ended: connection lost."]
    assert s.prompt() == "alice> "
    s.user_line("/unpair", WHEN)
    s.server_message("PAIRED bob", WHEN)
    s.user_line("/unpair", WHEN)
    s.server_message("SENT 1 rob 1", WHEN)
    s.server_message("ERR not-paired you have no pair", WHEN)
    show, _ = s.server_message("OK unpair bob", WHEN)
    assert texts(show) == ["09:05:07 You ended the pair with bob."]


@pytest.mark.parametrize("word, wire", [("/quit", "/quit"), ("/QUIT see you", "/quit see you"),
                                        (":quit:", "/quit"), (":QUIT: bye", "/quit bye")])
def test_leaving_is_a_plain_goodbye(word, wire):
    s = session()
    assert s.user_line(word, WHEN)[1] == [wire]
    assert s.leaving
    show, _ = s.server_message("BYE goodbye", WHEN)
    assert s.bye and s.settled()
    assert texts(show) == ["09:05:07 You left the chat."]


def test_quit_from_a_key_is_a_plain_goodbye_too_and_the_server_leaving_is_not():
    s = session()
    assert s.quit() == ["/quit"]
    assert texts(s.server_message("BYE goodbye", WHEN)[0]) == ["09:05:07 You left the chat."]
    s = session()
    assert texts(s.server_message("BYE server shutting down", WHEN)[0]) == [
        "09:05:07 The server ended the session: server shutting down."]


def test_piped_input_prints_outcomes_only_and_tells_chat_from_notices():
    s = Session(Style(color=False), nick="ci", interactive=False)
    s.greeted(NEW_GREETING)
    s.start()
    assert s.server_message("OK nick ci", WHEN)[0][0].kind == "notice"
    assert s.user_line("/msg bob hi", WHEN) == ([], ["/msg bob hi"])
    assert s.server_message("SENT 1 bob 1", WHEN) == ([], [])
    show, _ = s.server_message("DELIVERED 1 bob", WHEN)
    assert [(line.kind, line.text) for line in show] == [
        ("notice", '09:05:07 \u2713 "hi" delivered to bob')]
    assert s.server_message("MSG 3 bob ci hello", WHEN)[0][0].kind == "chat"


def test_tab_completes_commands_and_the_nicks_we_have_heard_of():
    s = session()
    for wire in ("JOINED bob", "USER bobby free", "MSG 3 carol alice hi",
                 "JOINED dave", "LEFT dave quit", "JOINED eve", "RENAMED eve eva"):
        s.server_message(wire, WHEN)
    assert s.completions("", "/p") == ["/pair", "/ping"]
    # /ack and /resume are the client's own to send.
    assert s.completions("", "/") == [c for c in sorted(COMMANDS)
                                      if c not in ("/ack", "/resume") and c.startswith("/")]
    assert s.completions("", ":q") == [":quit:"]
    assert s.completions("/msg ", "b") == ["bob", "bobby"]
    assert s.completions("/PAIR ", "C") == ["carol"]
    assert s.completions("/msg bob ", "b") == []  # message text, not a nick
    assert s.completions("", "") == ["bob", "bobby", "carol", "eva"]  # not alice
    assert s.completions("hi ", "d") == []  # dave left


def test_marks_are_ascii_unless_the_locale_is_utf8():
    assert _unicode_ok({"LANG": "en_US.UTF-8"}, "utf-8")
    assert _unicode_ok({"LC_ALL": "C.utf8", "LANG": "C"}, "UTF-8")
    assert not _unicode_ok({"LC_ALL": "C", "LANG": "en_US.UTF-8"}, "utf-8")
    assert not _unicode_ok({}, "utf-8")
    assert not _unicode_ok({"LANG": "de_DE.ISO-8859-1"}, "utf-8")
    assert not _unicode_ok({"LANG": "C.UTF-8"}, "ascii")


def test_parser_defaults_and_aliases():
    args = make_parser().parse_args([])
    assert (args.host, args.port, args.nick, args.pair, args.no_color, args.no_bell) == (
        "127.0.0.1", 6078, None, None, False, False)
    args = make_parser().parse_args(["--ip", "::1", "--port", "7", "--nick", "a",
                                     "--pair", "b", "--no-color", "--wait", "1.5",
                                     "--no-bell"])
    assert (args.host, args.port, args.nick, args.pair, args.no_color, args.wait,
            args.no_bell) == ("::1", 7, "a", "b", True, 1.5, True)


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "65536"], ["--port", "x"],
                                  ["--wait", "-1"], ["--wait", "nan"]])
def test_parser_refuses_bad_values(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        make_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_addresses_are_shown_as_people_write_them():
    from tcpchat.client import _address
    assert _address("127.0.0.1", 6078) == "127.0.0.1:6078"
    assert _address("::1", 6078) == "[::1]:6078"


# --------------------------------------------------------------------------
# The real program
# --------------------------------------------------------------------------

# Puts the pty on stdin as the controlling terminal of a new session, then
# runs the client: this is what a terminal emulator does for its shell.
TRAMPOLINE = (
    "import fcntl, os, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "os.execv(sys.executable, [sys.executable, '-m', 'tcpchat.client'] + sys.argv[1:])"
)

# The same, in a Python whose readline module cannot be imported (as with a
# build without it): the client must fall back to plain line input.
TRAMPOLINE_NO_READLINE = (
    "import fcntl, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "sys.modules['readline'] = None;"
    "from tcpchat.client import main;"
    "sys.exit(main(sys.argv[1:]))"
)

# As a job-control shell runs a command: the client in a process group of
# its own, in the terminal's foreground, with this process as its parent
# (so Ctrl-Z really stops it: the kernel drops stop signals for orphans).
# The client's pid goes to $PIDFILE; our exit status is the client's.
TRAMPOLINE_JOB = """
import fcntl, os, signal, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, "-m", "tcpchat.client"] + sys.argv[1:])
with open(os.environ["PIDFILE"], "w") as f:
    f.write(str(pid))
while True:
    _, status = os.waitpid(pid, os.WUNTRACED)
    if os.WIFEXITED(status):
        sys.exit(os.WEXITSTATUS(status))
    if os.WIFSIGNALED(status):
        sys.exit(128 + os.WTERMSIG(status))
"""

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")

UP = "\x1b[A"
LEFT = "\x1b[D"


def client_env(tmp_path, **extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["INPUTRC"] = os.devnull  # nobody's key bindings but readline's own
    env["TERM"] = "xterm"
    env["LC_ALL"] = "C.UTF-8"
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


class Screen:
    """Just enough of a terminal to see what a person would see: the
    cursor motions and erasures readline uses (CR, LF, BS, CSI A B C D K J
    P @, SGR and modes ignored), one cell per character, two for wide.
    With ``columns``, text wraps at the right edge as xterm's does: the
    cursor waits in the last column until one more character comes."""

    CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z@])|\x1b(.)", re.S)

    def __init__(self, data, columns=None):
        self.columns = columns
        self.rows = [[]]
        self.row = self.col = 0
        text = data.decode("utf-8", "replace")
        pos = 0
        for m in self.CSI.finditer(text):
            self._text(text[pos:m.start()])
            pos = m.end()
            if m.group(2):
                self._csi(m.group(1), m.group(2))
        self._text(text[pos:])

    def _line(self):
        while len(self.rows) <= self.row:
            self.rows.append([])
        line = self.rows[self.row]
        while len(line) < self.col:
            line.append(" ")
        return line

    def _text(self, text):
        from tcpchat.render import display_width
        for ch in text:
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
            elif ch == "\b":
                self.col = max(0, self.col - 1)
            elif ch < " ":
                continue
            else:
                width = display_width(ch)
                if self.columns and self.col + width > self.columns:
                    self.row += 1
                    self.col = 0
                line = self._line()
                cells = [ch] + [""] * (width - 1)
                line[self.col:self.col + len(cells)] = cells
                self.col += len(cells)

    def _csi(self, params, final):
        n = int(params) if params.isdigit() else 1
        if self.columns:
            self.col = min(self.col, self.columns - 1)  # a motion ends a pending wrap
        if final == "A":
            self.row = max(0, self.row - n)
        elif final == "B":
            self.row += n
        elif final == "C":
            self.col += n
        elif final == "D":
            self.col = max(0, self.col - n)
        elif final == "K":
            del self._line()[self.col:]
        elif final == "J":
            del self._line()[self.col:]
            del self.rows[self.row + 1:]
        elif final == "P":
            del self._line()[self.col:self.col + n]
        elif final == "@":
            self._line()[self.col:self.col] = [" "] * n

    def lines(self):
        return ["".join(r).rstrip() for r in self.rows]

    def cursor_line(self):
        """The line the cursor is on, and the text left of the cursor."""
        row = "".join(self._line())
        return row.rstrip(), "".join(self._line()[:self.col])


class PtyClient:
    """tcpchat-client on a pseudo-terminal; we hold the master side."""

    def __init__(self, port, *args, env, trampoline=TRAMPOLINE, columns=None):
        self.master, slave = os.openpty()
        # By default wide enough that no line of ours wraps.
        self.columns = columns
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns or 200, 0, 0))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", trampoline, "--port", str(port)] + list(args),
            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO,
            start_new_session=True, close_fds=True,
        )
        os.close(slave)
        self.env = env
        self.raw = b""
        self.pos = 0  # expect() searches the screen text from here

    def history(self):
        """The lines of the history file this client saves to."""
        path = os.path.join(self.env["XDG_STATE_HOME"], "tcpchat", "history")
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def text(self):
        """Everything printed so far, cursor movements and \\r removed."""
        return ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def _read(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.master], [], [], left)
        if not r:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # the slave side is closed: all read
                return False
            raise
        if not data:
            return False
        self.raw += data
        return True

    def expect(self, text, timeout=TIMEOUT):
        """Wait until ``text`` is printed after the last match; return the
        screen text up to and including it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.text()
            at = screen.find(text, self.pos)
            if at >= 0:
                end = at + len(text)
                seen, self.pos = screen[self.pos:end], end
                return seen
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError("never saw %r; screen after the last match:\n%s"
                                     % (text, screen[self.pos:]))
            if self.proc.poll() is not None:
                # Collect what is left, then give it one last look.
                while self._read(time.monotonic() + 0.5):
                    pass
                screen = self.text()
                if screen.find(text, self.pos) < 0:
                    raise AssertionError("client exited (%s) without printing %r:\n%s"
                                         % (self.proc.returncode, text, screen[self.pos:]))

    def expect_cursor(self, line, left_of_cursor, timeout=TIMEOUT):
        """Wait until the cursor's line reads ``line`` with the cursor just
        after ``left_of_cursor``, as a person would see it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = Screen(self.raw, self.columns)
            if screen.cursor_line() == (line, left_of_cursor):
                return screen
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError("cursor line is %r, not %r\n%s" % (
                    screen.cursor_line(), (line, left_of_cursor), "\n".join(screen.lines())))

    def expect_row_above_prompt(self, ending, timeout=TIMEOUT):
        """Wait until the row right above an empty input line (the last
        thing printed) ends with ``ending``, and the prompt is drawn again
        after it, as a person would see it."""
        deadline = time.monotonic() + timeout
        while True:
            screen = Screen(self.raw, self.columns)
            rows = screen.lines()
            if screen.row >= 1 and rows[screen.row - 1].endswith(ending) and \
                    screen.cursor_line()[1].endswith("> ") and \
                    screen.cursor_line()[0] == screen.cursor_line()[1].rstrip():
                return screen
            if not self._read(deadline) and time.monotonic() >= deadline:
                raise AssertionError("the row above the prompt does not end with %r:\n%s"
                                     % (ending, "\n".join(rows)))

    def type(self, keys):
        os.write(self.master, keys.encode("utf-8"))

    def wait(self, timeout=TIMEOUT):
        """Drain output until the client exits; return its status."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(min(deadline, time.monotonic() + 0.2))
        try:
            status = self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("client did not exit; screen:\n" + self.text())
        while self._read(time.monotonic() + 0.2):
            pass
        return status

    def termios(self):
        return termios.tcgetattr(self.master)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def server():
    """The real server; the peers a test connects are closed after it."""
    peers = []
    with ServerProcess() as srv:
        connect = srv.connect

        def tracked(*args, **kwargs):
            peer = connect(*args, **kwargs)
            peers.append(peer)
            return peer

        srv.connect = tracked
        try:
            yield srv
        finally:
            for peer in peers:
                peer.close()


@pytest.fixture
def start_client(tmp_path):
    """Start tcpchat-client in a pty, on a given port; closed after the test."""
    started = []

    def start(port, *args, env=None, trampoline=TRAMPOLINE, columns=None):
        c = PtyClient(port, *args, env=env or client_env(tmp_path), trampoline=trampoline,
                      columns=columns)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


@pytest.fixture
def run_client(server, start_client):
    """Start tcpchat-client in a pty, on the real server's port by default."""

    def start(*args, port=None, **kwargs):
        return start_client(server.port if port is None else port, *args, **kwargs)

    return start


class FakeServer:
    """The test plays the server: to send exactly what a test needs (a
    greeting with limits, FAILED codes, no answer at all) and to see the
    exact frames the client sends. One client; every wait has a deadline."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.conn = None
        self.buf = b""

    def accept(self, greeting=NEW_GREETING):
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(TIMEOUT)
        self.conn.sendall(greeting.encode() + b"\n")
        assert self._take(1) == b"\x00"  # the client speaks framed mode

    def _take(self, n):
        deadline = time.monotonic() + TIMEOUT
        while len(self.buf) < n:
            assert time.monotonic() < deadline, "the client sent too little"
            chunk = self.conn.recv(65536)
            assert chunk, "the client hung up"
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def next_frame(self):
        n = struct.unpack(">I", self._take(4))[0]
        return self._take(n).decode()

    def send(self, *messages):
        self.conn.sendall(b"".join(struct.pack(">I", len(m.encode())) + m.encode()
                                   for m in messages))

    def register(self, nick, *others):
        """Answer the client's /nick and its /who on arrival."""
        assert self.next_frame() == "/nick " + nick
        self.send("OK nick " + nick)
        assert self.next_frame() == "/who"
        users = ["USER %s free" % n for n in others + (nick,)]
        self.send(*users + ["OK who %d" % len(users)])

    def close(self):
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def fake():
    f = FakeServer()
    yield f
    f.close()


def assert_cooked(mode):
    """The terminal is back in ordinary line mode with echo."""
    lflag = mode[3]
    assert lflag & termios.ICANON and lflag & termios.ECHO


def test_half_typed_line_and_cursor_survive_an_incoming_message(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--pair", "bob", "--no-color")
    bob.expect("PAIR-REQUEST alice")
    bob.send("/pair alice")
    alice.expect("alice\u2192bob> ")
    # "helo world" with the cursor moved back to just after "hel".
    alice.type("helo world" + LEFT * 7)
    alice.expect_cursor("alice\u2192bob> helo world", "alice\u2192bob> hel")
    before = termios.tcgetattr(alice.master)
    bob.send("hi there \x1b[2J\x1b]0;pwned\x07 \u202eevil")
    # The message lands above the input line, defused, and then the prompt
    # and the half-typed line are drawn again.
    seen = alice.expect("alice\u2192bob> helo world")
    assert "[pair] bob: hi there ^[[2J^[]0;pwned^G <U+202E>evil" in seen
    screen = alice.expect_cursor("alice\u2192bob> helo world", "alice\u2192bob> hel")
    assert screen.lines()[screen.row - 1].endswith(
        "[pair] bob: hi there ^[[2J^[]0;pwned^G <U+202E>evil")
    assert "\x1b]0;pwned" not in alice.raw.decode("utf-8", "replace")
    assert termios.tcgetattr(alice.master) == before
    # And alice's client acked bob's message once it was on the screen.
    bob.expect("DELIVERED ")
    # Typing goes on at the cursor as it was: the l completes "hello".
    alice.type("l\r")
    msg = bob.expect("MSG ")
    assert msg.split(" ", 4)[2:] == ["alice", "bob", "hello world"]
    # One line for the message, drawn over the typed line, its mark
    # changed in place once bob has it.
    screen = alice.expect_row_above_prompt("[pair] alice: hello world  \u2713")
    assert not [row for row in screen.lines() if "> hello world" in row]
    alice.type("/quit\r")
    assert alice.wait() == 0


def test_in_a_narrow_terminal_a_wrapped_message_is_still_one_line(server, run_client):
    bob = server.connect(framed=True, nick="bob")
    alice = run_client("--nick", "alice", "--no-color", columns=40)
    alice.expect("1 other here: bob.")
    alice.expect("alice> ")
    text = "a message long enough to wrap, twice, at forty columns"
    alice.type("/msg bob " + text + "\r")  # 2 rows as typed, 3 as shown
    msg_id = bob.expect("MSG ").split(" ")[1]
    alice.expect("sent")
    bob.send("/ack " + msg_id)
    screen = alice.expect_row_above_prompt("  \u2713")
    first = max(i for i, row in enumerate(screen.lines()) if "[private]" in row)
    shown = "".join("".join(cells) for cells in screen.rows[first:screen.row])
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[private\] alice \u2192 bob: %s  \u2713" % text,
                        shown)
    assert screen.lines()[first - 1].endswith("1 other here: bob.")  # untouched above
    assert screen.cursor_line() == ("alice>", "alice> ")
    alice.type("\x04")
    assert alice.wait() == 0


def test_tab_completes_a_nick_in_the_terminal(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("/who\r")
    alice.expect("2 users online.")
    alice.type("/m\t")
    alice.expect_cursor("alice> /msg", "alice> /msg ")
    alice.type("b\t")
    alice.expect_cursor("alice> /msg bob", "alice> /msg bob ")
    alice.type("completed\r")
    assert bob.expect("MSG ").endswith(" alice bob completed")
    alice.type("\x04")
    assert alice.wait() == 0


def test_history_recall_within_and_across_runs(server, run_client, tmp_path):
    first = run_client("--nick", "alice", "--no-color")
    first.expect("alice> ")
    first.type("/ping one\r")
    first.expect("pong one")
    first.type(UP)
    first.expect("alice> /ping one")
    first.type("\r")
    first.expect("pong one")
    first.type("\x04")  # Ctrl-D on the empty line
    assert first.wait() == 0
    history = tmp_path / "state" / "tcpchat" / "history"
    assert "/ping one" in history.read_text()
    assert history.stat().st_mode & 0o077 == 0

    second = run_client("--nick", "alice2", "--no-color")
    second.expect("alice2> ")
    second.type(UP + "\r")
    second.expect("pong one")
    second.type("/quit\r")
    assert second.wait() == 0


@pytest.mark.parametrize("keys", ["\x03", "\x04", "/quit\r", ":quit:\r", "/QUIT bye\r"])
def test_leaving_exits_0_after_bye_and_restores_the_terminal(server, run_client, keys):
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    before = alice.termios()
    assert not before[3] & termios.ICANON  # readline has the terminal
    alice.type(keys)
    alice.expect("You left the chat.")
    assert alice.wait() == 0
    assert "Server closed" not in alice.text() and "ended the session" not in alice.text()
    assert_cooked(alice.termios())
    server.wait_log("quit")


def test_ctrl_c_clears_a_half_typed_line_and_leaves_on_an_empty_one(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("half typed" + LEFT * 3)
    alice.expect_cursor("alice> half typed", "alice> half ty")
    alice.type("\x03")
    alice.expect_cursor("alice>", "alice> ")
    assert alice.proc.poll() is None  # still here
    alice.type("new\r")  # the cleared text is not sent with it
    assert bob.expect("MSG ").endswith(" alice * new")
    alice.type(UP)
    alice.expect_cursor("alice> new", "alice> new")  # history: not the cleared line
    alice.type("\x03")
    alice.expect_cursor("alice>", "alice> ")
    alice.type("\x03")
    alice.expect("You left the chat.")
    assert alice.wait() == 0


def test_sigterm_leaves_even_with_a_half_typed_line(server, run_client):
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("half typed")
    alice.expect("half typed")
    alice.proc.send_signal(signal.SIGTERM)  # the client itself: the trampoline exec'd it
    alice.expect("You left the chat.")
    assert alice.wait() == 0
    assert_cooked(alice.termios())


def test_nick_is_asked_for_when_not_given(server, run_client):
    taken = server.connect(nick="taken")  # noqa: F841 (holds the nick)
    alice = run_client("--no-color")
    alice.expect("Choose a nick")
    alice.expect("nick> ")
    alice.type("taken\r")
    alice.expect("[nick-taken]")
    alice.type("alice\r")
    alice.expect("You are alice.")
    alice.expect("alice> ")
    alice.type("/ping x\r")
    alice.expect("pong x")
    alice.type("\x03")
    assert alice.wait() == 0
    # The nick typed at the prompt is not history worth recalling.
    assert alice.history() == ["/ping x"]


@pytest.mark.parametrize("how, args", [
    (signal.SIGTERM, []),  # BYE server shutting down: it means it, no reconnecting
    (signal.SIGKILL, ["--no-reconnect"]),
])
def test_server_going_away_is_reported_and_exits_non_zero(server, run_client, how, args):
    alice = run_client("--nick", "alice", "--no-color", *args)
    alice.expect("alice> ")
    alice.type("half")
    alice.expect("half")
    server.stop(how)
    alice.expect("Disconnected: ")
    assert alice.wait() == 3
    assert_cooked(alice.termios())


SGR = re.compile(r"\x1b\[[0-9;]*m")


def test_a_colour_per_nick_and_yours_bold(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice")
    carol = run_client("--nick", "carol")
    alice.expect("alice> ")
    carol.expect("carol> ")
    bob.send("/all hi all")
    bob.send("/msg alice psst")
    alice.expect("psst")
    carol.expect("hi all")
    bob_cyan = "\x1b[36mbob\x1b[0m"  # bob's colour, the same in every client and run
    assert Style(color=True).nick("bob", "bob") == bob_cyan
    assert alice.text().count("bob: ") == 2
    assert alice.raw.decode().count(bob_cyan + ": ") == 2
    assert bob_cyan + ": hi all" in carol.raw.decode()
    # To alice alone: the label is highlighted (reverse video).
    assert "\x1b[7;35m[private]\x1b[0m " + bob_cyan + ": psst" in alice.raw.decode()
    alice.type("hello\r")
    alice.expect("hello  \u2713 2")
    mine = Style(color=True).nick("alice", "alice", me=True)
    assert mine.startswith("\x1b[1;")  # bold
    assert mine + ": hello" in alice.raw.decode()
    for c in (alice, carol):
        c.type("\x03")
        assert c.wait() == 0


@pytest.mark.parametrize("how", [["--no-color"], {"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_colour_when_asked_or_on_a_dumb_terminal(server, run_client, tmp_path, how):
    bob = server.connect(nick="bob")
    args, env = (how, {}) if isinstance(how, list) else ([], how)
    plain = run_client("--nick", "carol", *args, env=client_env(tmp_path, **env))
    plain.expect("carol> ")
    bob.send("/msg carol hi carol")
    plain.expect("[private] bob: hi carol")
    plain.type("hello\r")
    plain.expect("hello")
    plain.type("\x03")
    assert plain.wait() == 0
    assert not SGR.search(plain.raw.decode())


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connecting is refused
    return port


def run_piped(port, stdin, *args, tmp_path, timeout=TIMEOUT * 2):
    return subprocess.run(
        [sys.executable, "-m", "tcpchat.client", "--port", str(port)] + list(args),
        input=stdin.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=client_env(tmp_path), cwd=REPO, timeout=timeout,
    )


def test_cannot_connect_is_one_line_and_non_zero(tmp_path):
    port = free_port()
    p = run_piped(port, "", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 3
    assert p.stderr.decode() == "cannot connect to 127.0.0.1:%d: Connection refused\n" % port
    assert p.stdout == b""


def test_cannot_connect_on_a_terminal_too(run_client):
    alice = run_client("--nick", "alice", port=free_port())
    alice.expect("cannot connect to 127.0.0.1:")
    assert alice.wait() == 3
    assert "Traceback" not in alice.text()


def test_piped_messages_delivered_exit_0(server, tmp_path):
    bob = server.connect(nick="bob")  # line mode: delivered once written
    carol = server.connect(framed=True, nick="carol")

    script = tmp_path / "input"
    script.write_text("/msg bob build is green\n/msg carol build is green\n")
    with open(str(script), "rb") as stdin:
        p = subprocess.Popen(
            [sys.executable, "-m", "tcpchat.client", "--port", str(server.port), "--nick", "ci"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=client_env(tmp_path), cwd=REPO)
    # carol is a framed client that acks what it gets, like our own client;
    # she answers first, so the answer is in before ci's last outcome.
    msg = carol.expect("MSG ")
    carol.send("/msg ci thanks")
    carol.send("/ack " + msg.split(" ")[1])
    out, err = p.communicate(timeout=TIMEOUT * 2)
    assert p.returncode == 0, out.decode() + err.decode()
    assert bob.expect("MSG ").endswith(" ci bob build is green")
    # stdout is the conversation alone; the banner, notices and outcomes
    # are diagnostics, on stderr.
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[private\] carol: thanks\n", out.decode())
    text = err.decode()
    assert "Connected to 127.0.0.1:" in text and "You are ci." in text
    assert '"build is green" delivered to bob' in text
    assert '"build is green" delivered to carol' in text
    assert "\x1b" not in text + out.decode()  # plain output when not a terminal


def test_piped_with_a_missing_recipient_exits_1(server, tmp_path):
    bob = server.connect(nick="bob")
    p = run_piped(server.port, "/msg bob hi\n/msg zed hi\n", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 1
    assert p.stdout == b""
    err = p.stderr.decode()
    assert '"hi" delivered to bob' in err
    assert '"hi" to zed not sent: no user zed' in err
    bob.expect("MSG ")


def test_piped_message_over_the_limit_is_refused_without_losing_the_connection(
        server, tmp_path):
    bob = server.connect(nick="bob")
    # Today's server names no limits in its greeting: the documented
    # defaults apply (max-frame 65536, so 65408 bytes of text).
    p = run_piped(server.port, "/msg bob %s\n/msg bob still here\n" % ("x" * 70000),
                  "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "it is 70000 bytes; this server takes at most 65408 bytes" in err
    assert '"still here" delivered to bob' in err
    assert bob.expect("MSG ").endswith(" ci bob still here")


def test_piped_waits_a_bounded_time_for_receipts(server, tmp_path):
    silent = server.connect(framed=True, nick="silent")  # never acks
    started = time.monotonic()
    p = run_piped(server.port, "/msg silent hello\n", "--nick", "ci", "--wait", "1",
                  tmp_path=tmp_path)
    assert p.returncode == 1
    assert time.monotonic() - started < TIMEOUT
    assert '"hello" to silent: delivery not confirmed' in p.stderr.decode()
    silent.expect("MSG ")


def test_piped_taken_nick_exits_1_without_sending(server, tmp_path):
    bob = server.connect(nick="bob")
    ci = server.connect(nick="ci")  # noqa: F841 (holds the nick)
    p = run_piped(server.port, "/msg bob should not go\n", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 1
    assert "[nick-taken]" in p.stderr.decode()
    assert all(not m.startswith("MSG") for m in bob.quiet(0.3))


def test_version_and_help(tmp_path):
    p = run_piped(1, "", "--version", tmp_path=tmp_path)
    from tcpchat import __version__
    assert p.stdout.decode().strip() == "tcpchat-client " + __version__
    p = run_piped(1, "", "--help", tmp_path=tmp_path)
    assert "--wait SECONDS" in p.stdout.decode() and "--ip" in p.stdout.decode()


def test_window_resize_and_wide_characters_keep_the_line_intact(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("/msg bob 日本語 ")
    alice.expect("日本語 ")
    # The kernel sends SIGWINCH to the client when its pty changes size.
    fcntl.ioctl(alice.master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    bob.send("/msg alice \u4f60\u597d \U0001F600")
    alice.expect("[private] bob: \u4f60\u597d \U0001F600")
    alice.expect("alice> /msg bob 日本語 ")
    alice.type("ok\r")
    assert bob.expect("MSG ").endswith(" alice bob 日本語 ok")
    screen = alice.expect_row_above_prompt("[private] alice \u2192 bob: 日本語 ok  \u2713")
    assert not [row for row in screen.lines() if "> /msg bob" in row]
    alice.type("\x04")
    assert alice.wait() == 0


def test_without_readline_plain_lines_still_work(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color", trampoline=TRAMPOLINE_NO_READLINE)
    alice.expect("alice> ")
    assert alice.termios()[3] & termios.ICANON  # the tty's own line editing
    bob.send("/msg alice hi \x1b[2J")
    alice.expect("[private] bob: hi ^[[2J")
    alice.expect("alice> ")
    alice.type("/msg bob typed plainly\n")
    assert bob.expect("MSG ").endswith(" alice bob typed plainly")
    # No readline, no redrawing in place: the outcome gets a line.
    alice.expect("[private] alice \u2192 bob: typed plainly  \u2026")
    alice.expect('\u2713 "typed plainly" delivered to bob')
    alice.type("\x04")
    alice.expect("You left the chat.")
    assert alice.wait() == 0


def test_full_server_refuses_with_one_line(tmp_path):
    with ServerProcess("--max-clients", "1") as srv:
        first = srv.connect(nick="first")  # holds the only place
        p = run_piped(srv.port, "", "--nick", "ci", tmp_path=tmp_path)
        first.close()
    assert p.returncode == 3
    err = p.stderr.decode()
    assert err.startswith("cannot connect to 127.0.0.1:%d: the server refused: server-full"
                          % srv.port)
    assert err.count("\n") == 1


def _state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pid, wanted, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while _state(pid) not in wanted:
        assert time.monotonic() < deadline, "pid %d never reached state %s" % (pid, wanted)
        time.sleep(0.01)  # polling a state with a deadline, not synchronising by delay


def test_ctrl_z_gives_the_terminal_back_and_fg_resumes(server, run_client, tmp_path):
    bob = server.connect(nick="bob")
    pidfile = tmp_path / "pid"
    alice = run_client("--nick", "alice", "--no-color", trampoline=TRAMPOLINE_JOB,
                       env=client_env(tmp_path, PIDFILE=str(pidfile)))
    alice.expect("alice> ")
    pid = int(pidfile.read_text())
    alice.type("half")
    alice.expect("half")
    alice.type("\x1a")  # Ctrl-Z
    _wait_state(pid, "T")
    assert_cooked(alice.termios())  # the shell gets a normal terminal
    alice.expect_cursor("", "")  # and a fresh line to print its prompt on
    os.kill(pid, signal.SIGCONT)  # what fg does once it has the terminal
    alice.expect_cursor("alice> half", "alice> half")
    assert not alice.termios()[3] & termios.ICANON
    alice.type("way\r")
    assert bob.expect("MSG ").endswith(" alice * halfway")
    alice.type("\x04")
    assert alice.wait() == 0


def test_piped_quit_line_ends_the_input_but_outcomes_are_awaited(server, tmp_path):
    bob = server.connect(nick="bob")
    p = run_piped(server.port, "/msg bob one\n/quit\n/msg bob two\n", "--nick", "ci",
                  tmp_path=tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    assert '"one" delivered to bob' in p.stderr.decode()
    assert bob.expect("MSG ").endswith(" ci bob one")
    assert not [m for m in bob.quiet(0.3) if m.startswith("MSG")]


def test_piped_empty_input_leaves_at_once(server, tmp_path):
    started = time.monotonic()
    p = run_piped(server.port, "", "--nick", "ci", tmp_path=tmp_path)
    assert p.returncode == 0
    assert "You are ci." in p.stderr.decode() and p.stdout == b""
    assert time.monotonic() - started < TIMEOUT


def test_one_ack_for_all_messages_shown_from_one_read(tmp_path, fake):
    client = subprocess.Popen(
        [sys.executable, "-m", "tcpchat.client", "--port", str(fake.port), "--nick", "ci",
         "--wait", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=client_env(tmp_path), cwd=REPO)
    try:
        fake.accept(OLD_GREETING)
        assert fake.next_frame() == "/nick ci"
        fake.send("OK nick ci", *["MSG %d bob ci hi %d" % (i, i) for i in (7, 8, 9)])
        assert fake.next_frame() == "/ack 7 8 9"
    finally:
        client.kill()
        client.communicate()


def test_pending_until_the_server_answers_then_the_mark_changes_in_place(
        fake, start_client):
    alice = start_client(fake.port, "--nick", "alice", "--no-color")
    fake.accept()
    fake.register("alice")
    alice.expect("Nobody else is here yet.")
    alice.type("anyone there?\r")
    assert fake.next_frame() == "anyone there?"
    # A server that does not answer: the message is visibly pending.
    screen = alice.expect_row_above_prompt("[all] alice: anyone there?  \u2026")
    assert screen.cursor_line() == ("alice>", "alice> ")
    fake.send("SENT 7 * 2")
    alice.expect_row_above_prompt("[all] alice: anyone there?  sent")
    fake.send("DELIVERED 7 * 2")
    screen = alice.expect_row_above_prompt("[all] alice: anyone there?  \u2713 2")
    assert [row for row in screen.lines() if "anyone there?" in row] == [
        screen.lines()[screen.row - 1]]  # one line, typed text included

    # A failure in place, in words from its code.
    alice.type("/msg bob two\r")
    assert fake.next_frame() == "/msg bob two"
    fake.send("SENT 8 bob 1", "FAILED 8 bob left bob quit")
    alice.expect_row_above_prompt(
        "[private] alice \u2192 bob: two  \u2717 bob left before it arrived")

    # Lines in between: the outcome comes as a line that names the message.
    alice.type("/msg bob three\r")
    assert fake.next_frame() == "/msg bob three"
    fake.send("SENT 9 bob 1", "MSG 3 carol * meanwhile")
    alice.expect("[all] carol: meanwhile")
    assert fake.next_frame() == "/ack 3"
    fake.send("FAILED 9 bob no-receipt no receipt in time")
    screen = alice.expect_row_above_prompt(
        '? "three" to bob: may have been seen, not confirmed')
    assert [row for row in screen.lines() if "three  sent" in row]
    alice.type("\x04")
    assert fake.next_frame() == "/quit"
    fake.send("BYE goodbye")
    assert alice.wait() == 0


def test_limits_from_the_greeting_and_pair_text_sent_as_msg(fake, start_client):
    alice = start_client(fake.port, "--nick", "alice", "--no-color")
    fake.accept("HELLO tcpchat/1 max-line=4096 max-frame=300 max-text=100 Hi.")
    fake.register("alice", "bob")
    alice.expect("1 other here: bob.")
    alice.type("x" * 101 + "\r")
    alice.expect("it is 101 bytes; this server takes at most 100 bytes of text")
    fake.send("PAIRED bob")
    alice.expect("You are paired with bob")
    alice.expect_cursor("alice\u2192bob>", "alice\u2192bob> ")
    alice.type("secret\r")
    # The long line never went; text for the partner goes as /msg.
    assert fake.next_frame() == "/msg bob secret"
    fake.send("SENT 4 bob 1", "DELIVERED 4 bob")
    alice.expect_row_above_prompt("[pair] alice: secret  \u2713")
    fake.send("UNPAIRED bob request withdrawn")  # bob's pair ended
    alice.expect("Your pair with bob ended: request withdrawn.")
    alice.type("hello?\r")
    assert fake.next_frame() == "hello?"
    fake.send("ERR not-paired your pair with bob ended; send it again to send to everyone")
    alice.expect_row_above_prompt(
        "hello?  \u2717 your pair with bob ended; send it again to send to everyone")
    alice.type("\x04")
    assert fake.next_frame() == "/quit"
    fake.send("BYE goodbye")
    assert alice.wait() == 0


def test_a_withdrawn_pair_request_is_not_told_as_a_broken_pair(server, run_client):
    alice = server.connect(nick="alice")
    bob = run_client("--nick", "bob", "--no-color")
    bob.expect("1 other here: alice.")
    alice.send("/pair bob")
    bob.expect("alice asks to pair with you")
    alice.send("/unpair")  # a server says so to bob as UNPAIRED alice ...
    bob.expect("alice no longer asks to pair with you: request withdrawn.")
    bob.expect_cursor("bob>", "bob> ")
    assert "Your pair" not in bob.text()
    bob.type("\x03")
    assert bob.wait() == 0


def test_attention_highlights_and_rings_once_unless_no_bell(server, run_client):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice")
    alice.expect("1 other here: ")
    quiet = run_client("--nick", "carol", "--no-bell")
    quiet.expect("2 others here: ")
    alice.expect("carol joined.")
    quiet.expect("carol> ")
    for wire, seen, rings in (("/all hello everyone", "hello everyone", False),
                              ("/all is Alice around?", "around?", True),
                              ("/all malice and alice2", "alice2", False),
                              ("/msg alice psst", "psst", True),
                              ("/pair alice", "asks to pair", True)):
        bob.send(wire)
        alice.expect(seen)
        if rings:
            alice.expect("\x07")  # rung once the line is shown
    alice.type("/ping sync\r")
    alice.expect("pong sync")
    # One bell after each line that wants attention, none after the others.
    after = alice.text().split("\x07")
    assert len(after) == 4
    assert "around?" in after[0] and "alice2" not in after[0]
    assert "alice2" in after[1] and "psst" in after[1]
    assert "asks to pair" in after[2]
    assert "\x1b[7mAlice\x1b[0m" in alice.raw.decode()
    bob.send("/msg carol psst")
    bob.send("/all carol?")
    quiet.expect("carol?")
    quiet.type("/ping sync\r")
    quiet.expect("pong sync")
    assert b"\x07" not in quiet.raw and "\x1b[7;35m[private]" in quiet.raw.decode()
    for c in (alice, quiet):
        c.type("\x03")
        assert c.wait() == 0


def test_help_is_what_a_person_types_and_the_server_is_not_asked(server, run_client):
    alice = run_client("--nick", "alice", "--no-color")
    alice.expect("alice> ")
    alice.type("/help\r")
    shown = alice.expect("Ctrl-C clears the line.")
    assert "/msg NICK TEXT" in shown and "/pair NICK" in shown
    assert "clients send it themselves" not in alice.text()  # the server's /help
    alice.type("\x04")
    assert alice.wait() == 0


def test_ascii_marks_where_the_locale_is_not_utf8(server, run_client, tmp_path):
    bob = server.connect(nick="bob")
    alice = run_client("--nick", "alice", "--no-color", env=client_env(tmp_path, LC_ALL="C"))
    alice.expect("1 other here: bob.")
    alice.type("/msg bob hi\r")
    assert bob.expect("MSG ").endswith(" alice bob hi")
    alice.expect_row_above_prompt("[private] alice -> bob: hi  ok")
    alice.type("\x04")
    assert alice.wait() == 0
    assert "\u2713" not in alice.text() and "\u2192" not in alice.text()


def test_two_clients_at_once_both_keep_their_history(server, run_client, tmp_path):
    history = tmp_path / "state" / "tcpchat" / "history"
    history.parent.mkdir(parents=True)
    history.write_text("/ping older\n")
    first = run_client("--nick", "alice", "--no-color")
    second = run_client("--nick", "bob", "--no-color")
    first.expect("alice> ")
    second.expect("bob> ")
    first.type("/ping from-alice\r")
    second.type("/ping from-bob\r")
    first.expect("pong from-alice")
    second.expect("pong from-bob")
    first.type("\x04")
    assert first.wait() == 0
    second.type("\x04")
    assert second.wait() == 0
    assert history.read_text().splitlines() == ["/ping older", "/ping from-alice",
                                                "/ping from-bob"]
    assert history.stat().st_mode & 0o077 == 0


def _readme_section(title):
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("\n## %s\n" % title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_readme_quick_start_runs_what_exists():
    from tcpchat.client import DEFAULT_HOST, DEFAULT_PORT
    from tcpchat.server import make_parser as server_parser
    commands = [line.strip() for line in _readme_section("Quick start").splitlines()
                if line.startswith("    ")]
    server_line, activate, client_line, nc_line = commands
    # Terminal 1 installs and starts the server in the foreground, defaults only.
    assert server_line.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert server_line.endswith(" && tcpchat-server")
    server_parser().parse_args([])
    # Terminal 2: the same environment, then the client.
    assert activate == ". .venv/bin/activate"
    words = client_line.split()
    assert words[0] == "tcpchat-client"
    args = make_parser().parse_args(words[1:])
    assert (args.host, args.port, args.nick) == (DEFAULT_HOST, DEFAULT_PORT, "alice")
    # Terminal 3: nc to where the server listens by default.
    assert nc_line == "nc %s %d" % (DEFAULT_HOST, DEFAULT_PORT)


def test_readme_session_shows_the_lines_the_client_draws():
    from tcpchat.render import message_mark, outcome_line, own_line
    session_text = _readme_section("Client")
    style = Style(color=False)

    def at(stamp):
        h, m, s = map(int, stamp.split(":"))
        return time.struct_time((2026, 11, 21, h, m, s, 5, 325, 0))

    expected = [
        own_line(at("10:49:44"), "alice", "pair", "bob", "hi bob!",
                 message_mark("delivered", style), style),
        own_line(at("10:49:52"), "alice", "private", "zed", "psst",
                 message_mark("failed", style, reason="no user zed"), style),
        own_line(at("10:49:55"), "alice", "everyone", "*", "back in 5",
                 message_mark("sent", style), style),
        outcome_line(at("10:49:57"), "delivered", "back in 5", "*", style, got=4, total=4),
    ]
    for line in expected:
        assert "\n    %s\n" % line in session_text, line
