"""The client's rendering: terminal safety and the sentences it prints.

Pure functions only: no terminal, no socket, no clock.
"""

import time
import unicodedata

import pytest

from tcpchat.render import (
    ServerMessage,
    Style,
    chat_line,
    display_width,
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
    rejected_line,
    screen_rows,
    who_summary,
)

WHEN = time.struct_time((2026, 11, 21, 9, 5, 7, 5, 325, 0))
PLAIN = Style(color=False)
COLOR = Style(color=True)


def assert_terminal_safe(text):
    """Nothing in ``text`` can act on a terminal: no control characters
    other than tab, no format characters, no line separators."""
    for ch in text:
        if ch == "\t":
            continue
        cat = unicodedata.category(ch)
        assert cat not in ("Cc", "Cf", "Zl", "Zp", "Cs") or ch in "\u200c\u200d", repr(ch)


# --- escape: every class of dangerous character -----------------------------

@pytest.mark.parametrize("code", [c for c in range(0x20) if c != 0x09])
def test_every_c0_control_but_tab_is_shown_in_caret_form(code):
    assert escape("a%sb" % chr(code)) == "a^%sb" % chr(code + 0x40)


def test_tab_passes_through():
    assert escape("a\tb") == "a\tb"


def test_named_c0_examples():
    assert escape("\x1b") == "^["
    assert escape("\x07") == "^G"
    assert escape("\x00") == "^@"
    assert escape("line\r\nnext") == "line^M^Jnext"
    assert escape("\x08\x08\x08") == "^H^H^H"


def test_del_is_escaped():
    assert escape("x\x7fy") == "x^?y"


@pytest.mark.parametrize("code", range(0x80, 0xA0))
def test_every_c1_control_is_shown_as_a_code_point(code):
    assert escape(chr(code)) == "<U+%04X>" % code


@pytest.mark.parametrize(
    "attack, shown",
    [
        # CSI: colours, cursor movement, clearing the screen, hiding text.
        ("\x1b[31mred\x1b[0m", "^[[31mred^[[0m"),
        ("\x1b[2J\x1b[H", "^[[2J^[[H"),
        ("\x1b[1A\x1b[2K", "^[[1A^[[2K"),
        ("\x1b[8mhidden", "^[[8mhidden"),
        # 8-bit CSI, which some terminals honour.
        ("\x9b31m", "<U+009B>31m"),
        # OSC: window title (BEL- and ST-terminated), clipboard, hyperlink.
        ("\x1b]0;pwned\x07", "^[]0;pwned^G"),
        ("\x1b]2;title\x1b\\", "^[]2;title^[\\"),
        ("\x1b]52;c;ZXZpbA==\x07", "^[]52;c;ZXZpbA==^G"),
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\",
         "^[]8;;http://x^[\\link^[]8;;^[\\"),
        ("\x9d0;t\x9c", "<U+009D>0;t<U+009C>"),
        # DCS, APC, PM, SOS, and two-character escapes (RIS reset, charset).
        ("\x1bP1$r\x1b\\", "^[P1$r^[\\"),
        ("\x1b_apc\x1b\\", "^[_apc^[\\"),
        ("\x1bc", "^[c"),
        ("\x1b(0", "^[(0"),
        ("\x90q\x9c", "<U+0090>q<U+009C>"),
    ],
)
def test_escape_sequences_are_defused(attack, shown):
    out = escape(attack)
    assert out == shown
    assert "\x1b" not in out
    assert_terminal_safe(out)


@pytest.mark.parametrize(
    "code",
    [0x202A, 0x202B, 0x202C, 0x202D, 0x202E,  # embeddings, overrides, pop
     0x2066, 0x2067, 0x2068, 0x2069,  # isolates
     0x200E, 0x200F, 0x061C],  # LRM, RLM, ALM
)
def test_bidi_controls_are_shown(code):
    assert escape("a" + chr(code) + "b") == "a<U+%04X>b" % code


def test_trojan_source_style_reordering_is_visible():
    text = "access\u202e\u2066 granted\u2069\u2066"
    assert escape(text) == "access<U+202E><U+2066> granted<U+2069><U+2066>"


@pytest.mark.parametrize(
    "code",
    [0x200B,  # zero-width space
     0x00AD,  # soft hyphen
     0xFEFF,  # BOM / zero-width no-break space
     0x2060,  # word joiner
     0x2061, 0x2064,  # invisible math operators
     0xE0041,  # tag character
     0x2028, 0x2029,  # line and paragraph separators
     0x115F, 0x1160, 0x3164, 0xFFA0,  # Hangul fillers: blank "letters"
     0x034F],  # combining grapheme joiner
)
def test_invisible_characters_are_shown(code):
    assert escape(chr(code)) == "<U+%04X>" % code


def test_every_format_character_is_escaped_except_the_joiners():
    import sys
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        if unicodedata.category(ch) == "Cf" and ch not in "\u200c\u200d":
            assert escape(ch) == "<U+%04X>" % code


def test_joiners_that_spell_words_and_emoji_pass():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    assert escape(family) == family
    assert escape("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == \
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"


@pytest.mark.parametrize(
    "text",
    ["hello, world", "Grüße", "日本語のテキスト", "한국어", "emoji \U0001F600 ok",
     "e\u0301 combining", "\u05e9\u05dc\u05d5\u05dd",  # Hebrew: right-to-left is fine
     "nbsp\u00a0here", "tab\there", ""],
)
def test_ordinary_text_is_unchanged(text):
    assert escape(text) == text


def test_escaped_output_is_always_safe():
    everything = "".join(chr(c) for c in range(0x250)) + "\u202e\u2066\u200b\ufeff"
    assert_terminal_safe(escape(everything))


def test_display_width_counts_wide_and_combining_characters():
    assert display_width("abc") == 3
    assert display_width("日本") == 4
    assert display_width("\U0001F600") == 2
    assert display_width("e\u0301") == 1
    assert display_width("ｆｕｌｌ") == 8  # fullwidth forms


# --- parsing server messages --------------------------------------------------

def test_parse_msg_keeps_spaces_in_the_text():
    assert parse_server_message("MSG 7 bob alice hi  there you") == ServerMessage(
        "MSG", ("7", "bob", "alice"), "hi  there you")


def test_parse_short_and_unknown_messages_never_raise():
    assert parse_server_message("PONG") == ServerMessage("PONG", (), "")
    assert parse_server_message("PONG tok en") == ServerMessage("PONG", (), "tok en")
    assert parse_server_message("MSG 7") == ServerMessage("MSG", ("7", "", ""), "")
    assert parse_server_message("WHAT is this") == ServerMessage("WHAT", (), "is this")
    assert parse_server_message("") == ServerMessage("", (), "")


def test_parse_delivered_failed_and_help():
    assert parse_server_message("DELIVERED 3 * 5") == ServerMessage(
        "DELIVERED", ("3", "*"), "5")
    assert parse_server_message("FAILED 3 bob left bob left") == ServerMessage(
        "FAILED", ("3", "bob"), "left bob left")
    assert parse_server_message("HELP /who  list users") == ServerMessage(
        "HELP", (), "/who  list users")


def test_failure_codes_and_older_servers_prose():
    assert failure_reason("left bob quit", "bob") == ("left", "bob left before it arrived")
    assert failure_reason("no-receipt timed out", "bob") == (
        "no-receipt", "may have been seen, not confirmed")
    assert failure_reason("shutdown bye", "bob") == (
        "shutdown", "the server stopped before delivering it")
    # A code we do not know yet keeps the server's words.
    assert failure_reason("moon-phase the moon is wrong", "bob") == (
        "moon-phase", "the moon is wrong")
    assert failure_reason("", "bob") == (None, "no reason given")
    assert failure_reason("connection lost", "bob", coded=False) == (None, "connection lost")


# --- the lines the client prints -----------------------------------------------

def test_chat_lines_say_time_sender_and_audience():
    assert chat_line(WHEN, "bob", "pair", "hi", PLAIN) == "09:05:07 [pair] bob: hi"
    assert chat_line(WHEN, "bob", "private", "hi", PLAIN) == "09:05:07 [private] bob: hi"
    assert chat_line(WHEN, "bob", "everyone", "hi", PLAIN) == "09:05:07 [all] bob: hi"


def test_chat_line_escapes_sender_and_text():
    line = chat_line(WHEN, "b\x1b[2Jb", "everyone", "x\x1b]0;t\x07\u202ey", PLAIN)
    assert line == "09:05:07 [all] b^[[2Jb: x^[]0;t^G<U+202E>y"


def test_multi_line_message_is_indented_so_it_cannot_fake_a_line():
    line = chat_line(WHEN, "bob", "pair", "one\n09:05:08 [pair] alice: fake", PLAIN)
    first, second = line.split("\n")
    assert first == "09:05:07 [pair] bob: one"
    assert second == " " * len("09:05:07 [pair] bob: ") + "09:05:08 [pair] alice: fake"


def test_multi_line_indent_ignores_colour_codes():
    line = chat_line(WHEN, "bob", "pair", "a\nb", COLOR)
    assert line.split("\n")[1] == " " * len("09:05:07 [pair] bob: ") + "b"


def test_colour_wraps_only_our_own_codes_around_escaped_text():
    line = chat_line(WHEN, "bob", "private", "\x1b[31m", COLOR)
    assert "^[[31m" in line
    # Every ESC in the output starts one of Style's SGR sequences.
    for part in line.split("\x1b")[1:]:
        assert part[0] == "[" and "m" in part
        assert part[1:part.index("m")].replace(";", "").isdigit()


def test_no_colour_means_no_escape_at_all():
    for line in (chat_line(WHEN, "bob", "pair", "hi alice", PLAIN, me="alice", attention=True),
                 notice_line(WHEN, "x", PLAIN, "bad", attention=True),
                 own_line(WHEN, "alice", "everyone", "*", "hi", message_mark("sent", PLAIN),
                          PLAIN),
                 outcome_line(WHEN, "failed", "hi", "bob", PLAIN, reason="gone"),
                 who_summary([("bob", "paired")], 1, 1, PLAIN)):
        assert "\x1b" not in line


def _luminance(index):
    # xterm's 256-colour cube: 16 + 36r + 6g + b, levels 0 95 135 175 215 255.
    n = int(index) - 16
    levels = (0, 95, 135, 175, 215, 255)

    def linear(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = levels[n // 36], levels[n // 6 % 6], levels[n % 6]
    return 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)


def test_nick_colours_read_on_dark_and_light_backgrounds():
    style = Style(color=True, colors=256)
    for code in style.palette:
        lum = _luminance(code)
        on_white = 1.05 / (lum + 0.05)
        on_black = (lum + 0.05) / 0.05
        assert min(on_white, on_black) >= 4, (code, on_white, on_black)
    assert "33" not in Style(color=True).palette  # yellow vanishes on white


def test_a_nick_has_one_colour_everywhere_and_ours_is_bold():
    style = Style(color=True)
    bob = style.nick("bob", "bob")
    assert bob == Style(color=True).nick("BOB", "bob")  # nicks ignore case
    assert bob.startswith("\x1b[3") and bob.endswith("m" + "bob" + "\x1b[0m")
    assert style.nick("bob", "bob", me=True) == "\x1b[1;" + bob[2:]
    colours = {style.nick(n, n).split("m")[0] for n in ("ann", "bob", "cy", "dee", "eve", "fay")}
    assert len(colours) > 1
    big = Style(color=True, colors=256).nick("bob", "bob")
    assert big.startswith("\x1b[38;5;")
    assert Style(color=False).nick("bob", "bob") == "bob"


@pytest.mark.parametrize("text, hit", [
    ("alice", True), ("hi Alice!", True), ("ALICE: look", True), ("thanks, alice.", True),
    ("@alice hi", True), ("(alice)", True), ("alice's turn", True),
    ("malice", False), ("alice2", False), ("alice_b", False), ("alice-b", False),
    ("bob.alice", False), ("alice.b", False), ("alic", False), ("", False),
])
def test_a_mention_is_the_nick_as_a_word_ignoring_case(text, hit):
    assert mentions(text, "alice") is hit


def test_mentions_are_highlighted_in_the_escaped_text():
    line = chat_line(WHEN, "bob", "everyone", "alice\x1b[2J, ALICE", COLOR, me="alice")
    assert "\x1b[7malice\x1b[0m^[[2J, \x1b[7mALICE\x1b[0m" in line
    assert mentions("a.b-c", "a.b-c") and not mentions("axb-c", "a.b-c")


def test_the_line_of_a_message_we_sent_and_its_marks():
    def line(state, style=PLAIN, audience="pair", to="bob", **kw):
        return own_line(WHEN, "alice", audience, to, "hi bob",
                        message_mark(state, style, **kw), style)
    assert line("pending") == "09:05:07 [pair] alice: hi bob  \u2026"
    assert line("sent") == "09:05:07 [pair] alice: hi bob  sent"
    assert line("delivered") == "09:05:07 [pair] alice: hi bob  \u2713"
    assert line("failed", reason="bob left") == "09:05:07 [pair] alice: hi bob  \u2717 bob left"
    assert line("unconfirmed", reason="maybe") == "09:05:07 [pair] alice: hi bob  ? maybe"
    assert line("delivered", audience="everyone", to="*", got=3, total=3) == \
        "09:05:07 [all] alice: hi bob  \u2713 3"
    assert line("delivered", audience="everyone", to="*", got=2, total=3) == \
        "09:05:07 [all] alice: hi bob  \u2713 2 of 3"
    assert line("sent", audience="private") == "09:05:07 [private] alice \u2192 bob: hi bob  sent"
    ascii_ = Style(unicode=False)
    assert [line(s, ascii_) for s in ("pending", "delivered")] == [
        "09:05:07 [pair] alice: hi bob  ...", "09:05:07 [pair] alice: hi bob  ok"]
    assert line("failed", ascii_, reason="x").endswith("failed: x")
    assert line("unconfirmed", ascii_, reason="x").endswith("unconfirmed: x")
    assert line("sent", ascii_, audience="private").startswith(
        "09:05:07 [private] alice -> bob")
    # Colour: the mark says good or bad; failure's reason is escaped.
    assert message_mark("delivered", COLOR) == "\x1b[32m\u2713\x1b[0m"
    assert message_mark("failed", COLOR, reason="\x1b]0;x") == \
        "\x1b[1;31m\u2717 ^[]0;x\x1b[0m"


def test_outcome_lines_name_the_message():
    assert outcome_line(WHEN, "delivered", "hi", "bob", PLAIN) == \
        '09:05:07 \u2713 "hi" delivered to bob'
    assert outcome_line(WHEN, "delivered", "hi", "*", PLAIN, got=3, total=3) == \
        '09:05:07 \u2713 "hi" delivered to everyone (3)'
    assert outcome_line(WHEN, "delivered", "hi", "*", PLAIN, got=2, total=3) == \
        '09:05:07 \u2717 "hi" delivered to only 2 of 3 (the others left first)'
    assert outcome_line(WHEN, "failed", "hi", "bob", PLAIN, reason="bob left") == \
        '09:05:07 \u2717 "hi" NOT delivered to bob: bob left'
    assert outcome_line(WHEN, "unconfirmed", "hi", "bob", PLAIN, reason="maybe") == \
        '09:05:07 ? "hi" to bob: maybe'
    assert outcome_line(WHEN, "refused", "hi", "zed", PLAIN, reason="no user zed") == \
        '09:05:07 \u2717 "hi" to zed not sent: no user zed'
    assert outcome_line(WHEN, "delivered", "hi", "bob", Style(unicode=False)) == \
        '09:05:07 "hi" delivered to bob'
    # Without the text (a message this run did not send) the id must do.
    assert outcome_line(WHEN, "delivered", "", "bob", PLAIN, msg_id="9") == \
        "09:05:07 \u2713 #9 delivered to bob"
    line = outcome_line(WHEN, "delivered", "x" * 100 + "\x1b", "b\x1bb", PLAIN)
    assert '"' + "x" * 37 + '..."' in line and "b^[b" in line


def test_who_summary():
    assert who_summary([], 0, 0, PLAIN) == "Nobody else is here yet."
    assert who_summary([("bob", "free")], 1, 0, PLAIN) == "1 other here: bob."
    assert who_summary([("bob", "free"), ("c\x1b", "paired")], 2, 1, PLAIN) == \
        "2 others here: bob, c^[ (paired)."
    assert who_summary([("a", "free"), ("b", "away")], 9, 4, PLAIN) == \
        "9 others here, 4 of them paired: a, b (away) and 7 more."


def test_help_lines_are_what_a_person_types_one_line_each():
    for style in (PLAIN, Style(unicode=False)):
        lines = help_lines(style)
        assert all("\n" not in line and len(line) <= 160 for line in lines)
        assert not [line for line in lines if line.startswith(("OK", "HELP", "/ack"))]
    assert "\u2713" not in " ".join(help_lines(Style(unicode=False)))


@pytest.mark.parametrize("text, columns, rows", [
    ("", 10, 1), ("abc", 10, 1), ("abcdefghij", 10, 1), ("abcdefghijk", 10, 2),
    ("a\nb", 10, 2), ("x" * 25, 10, 3),
    ("\x1b[1mab\x1b[0m", 2, 1),  # our colour codes take no room
    ("\u65e5\u672c\u8a9e", 5, 2),  # a wide character does not split: whole to the next row
    ("a\u65e5\u672c", 4, 2), ("\u65e5\u672c", 4, 1),
    ("e\u0301" * 10, 10, 1),  # combining marks take none
    ("a\tb", 10, 1), ("\t\t\tb", 10, 1),  # tabs never wrap
    # An ambiguous-width mark (1 or 2 columns, by terminal) at a row's end:
    # unknown, so nothing is redrawn on a guess; elsewhere it does not matter.
    ("abcdefgh \u2026", 10, None), ("ab \u2026", 10, 1),
    ("abcdefgh\U0001F468\u200d\U0001F469", 10, None),
])
def test_screen_rows(text, columns, rows):
    assert screen_rows(text, columns) == rows


def test_rejected_line():
    assert rejected_line(WHEN, 'message "hi" to zed', "no-such-user",
                         "no user zed", PLAIN) == \
        '09:05:07 Not done: message "hi" to zed: no user zed [no-such-user]'
    assert rejected_line(WHEN, None, "bad-utf8", "", PLAIN) == \
        "09:05:07 Error: bad-utf8 [bad-utf8]"


@pytest.mark.parametrize(
    "wire, partner, expected",
    [
        ("HELLO tcpchat/1 Welcome", None, "Connected (tcpchat/1)."),
        ("OK nick alice", None, "You are alice."),
        ("OK unpair bob", "bob", "You ended the pair with bob."),
        ("OK unpair bob", None, "Pair request to bob withdrawn."),
        ("OK who 1", None, "1 user online."),
        ("OK who 3", None, "3 users online."),
        ("OK help /nick NAME: register", None, "/nick NAME: register"),
        ("HELP /nick NAME: register", None, "/nick NAME: register"),
        ("ERR busy bob is paired", None, "Error: bob is paired [busy]"),
        ("JOINED bob", None, "bob joined."),
        ("LEFT bob quit", None, "bob left: quit."),
        ("RENAMED bob rob", None, "bob is now called rob."),
        ("PAIR-REQUEST bob", None, "bob asks to pair with you; type /pair bob to accept."),
        ("PAIRED bob", None, "You are paired with bob: plain text now goes to bob only."),
        ("UNPAIRED bob connection lost", "bob", "Your pair with bob ended: connection lost."),
        ("UNPAIRED bob request withdrawn", None,
         "The pair request between you and bob is gone: request withdrawn."),
        ("UNPAIRED bob request withdrawn", "carol",
         "The pair request between you and bob is gone: request withdrawn."),
        ("USER bob paired", None, "  bob (paired)"),
        ("PONG", None, "pong"),
        ("PONG abc", None, "pong abc"),
        ("BYE server shutting down", None,
         "The server ended the session: server shutting down."),
        ("NEWTHING x\x1b", None, "Server: NEWTHING x^["),
    ],
)
def test_event_sentences(wire, partner, expected):
    text, _role = event_sentence(parse_server_message(wire), partner)
    assert text == expected


@pytest.mark.parametrize("request_, expected", [
    ("theirs", "bob no longer asks to pair with you: request withdrawn."),
    ("ours", "Your pair request to bob ended: request withdrawn."),
])
def test_unpaired_about_a_request_is_not_a_broken_pair(request_, expected):
    msg = parse_server_message("UNPAIRED bob request withdrawn")
    assert event_sentence(msg, "carol", request_)[0] == expected
    # From the partner it is the pair, whatever the requests.
    assert event_sentence(msg, "bob", request_)[0] == "Your pair with bob ended: request withdrawn."


def test_event_sentences_escape_server_text():
    text, _ = event_sentence(parse_server_message("LEFT bob \x1b[2J\u202e"))
    assert text == "bob left: ^[[2J<U+202E>."
