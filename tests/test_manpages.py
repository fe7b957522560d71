"""The man pages: they render cleanly, they match the code, and they install.

The pages are written by hand, so nothing but these tests keeps them true.
Each check runs both ways: what the code knows must be documented, and what
the pages document must exist in the code (a renamed option or error code
fails here, not in front of a user).

The pages are read as roff source, lightly normalised (``\\-`` becomes
``-``, font escapes go), and split into sections at ``.SH``. A "tag" is the
line after ``.TP`` or ``.TQ``: the term a definition list defines. Commands,
keywords, error codes and options are each documented as such tags.
"""

import importlib
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = ("tcpchat.7", "tcpchat-server.1", "tcpchat-client.1")


# -- reading roff -----------------------------------------------------------

_FONT = re.compile(r"\\f(\(..|\[[^\]]*\]|.)")
_SPECIAL = {
    r"\(aq": "'",
    r"\(dq": '"',
    r"\(->": "->",
    r"\(<=": "<=",
    r"\e": "\\",
    r"\&": "",
}


def normalise(line):
    """One roff source line as plain text, macro name kept."""
    line = line.replace(r"\-", "-")
    line = _FONT.sub("", line)
    for escape, text in _SPECIAL.items():
        line = line.replace(escape, text)
    return line


def source_lines(page):
    """The page's lines, normalised, without comments."""
    lines = (MAN / page).read_text(encoding="utf-8").splitlines()
    return [normalise(line) for line in lines if not line.startswith('.\\"')]


def macro_text(line):
    """The text a line shows: a macro's arguments unquoted and joined."""
    if not line.startswith("."):
        return line
    parts = line.split(None, 1)
    if len(parts) == 1:
        return ""
    # Alternating-font macros (.BI, .BR, ...) join their arguments with no
    # space between them; the spaces that show are inside the quotes.
    args = re.findall(r'"([^"]*)"|(\S+)', parts[1])
    joiner = "" if re.match(r"^\.[BIR][BIR]$", parts[0]) else " "
    return joiner.join(quoted or bare for quoted, bare in args)


def sections(page):
    """{SECTION NAME: [lines]} in page order."""
    result = {}
    current = None
    for line in source_lines(page):
        if line.startswith(".SH"):
            current = macro_text(line).strip()
            result[current] = []
        elif current is not None:
            result[current].append(line)
    return result


def tags(lines):
    """The shown text of each definition-list term in lines."""
    found = []
    for before, line in zip(lines, lines[1:]):
        if before.split()[:1] in ([".TP"], [".TQ"]):
            found.append(macro_text(line).strip())
    return found


def plain_text(lines):
    return " ".join(macro_text(line) for line in lines)


def prose_and_examples(lines, program):
    """Text outside .EX/.EE blocks, plus example lines that run program.

    Examples also run other commands (systemctl, journalctl) whose options
    are not ours. The options line of the service's sysconfig file counts
    as the server's.
    """
    starts = (program, "TCPCHAT_OPTIONS=") if program == "tcpchat-server" else (program,)
    text = []
    in_example = False
    for line in lines:
        if line.startswith(".EX"):
            in_example = True
        elif line.startswith(".EE"):
            in_example = False
        elif not in_example or line.lstrip("$ ").startswith(starts):
            text.append(macro_text(line))
    return " ".join(text)


_OPTION = re.compile(r"(?<![\w/-])(--[a-z][a-z0-9-]*|-[a-zA-Z])\b")


def options_in(text):
    return set(_OPTION.findall(text))


def first_word(tag):
    return tag.split()[0] if tag.split() else ""


# -- the code's view -----------------------------------------------------

def import_or_skip(name):
    """Import a tcpchat module, or skip if that module is not written yet.

    Only the module's own absence skips: an import error inside it fails.
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            pytest.skip("%s does not exist on this branch yet" % name)
        raise


def parser_options(module_name):
    parser = import_or_skip(module_name).make_parser()
    options = {}
    for action in parser._actions:
        for option in action.option_strings:
            options[option] = action
    return options


def documented_default(body):
    match = re.search(r"Default:\s*(\S+)", body)
    return match.group(1).rstrip(".,;") if match else None


def same_value(documented, default):
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            return float(documented) == float(default)
        except ValueError:
            return False
    return documented == str(default)


def option_entries(lines):
    """{tag: body text} for the entries of an OPTIONS section."""
    entries = {}
    tag = None
    for before, line in zip([""] + lines, lines):
        if before.split()[:1] == [".TP"]:
            tag = macro_text(line).strip()
            entries[tag] = []
        elif line.startswith(".TP"):
            continue
        elif tag is not None:
            entries[tag].append(macro_text(line))
    return {tag: " ".join(body) for tag, body in entries.items()}


# -- rendering ---------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    result = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(MAN / page)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("page", PAGES)
def test_page_header_names_the_package_version(page):
    version = re.search(
        r'^__version__ = "([^"]+)"',
        (ROOT / "tcpchat" / "__init__.py").read_text(encoding="utf-8"),
        re.M,
    ).group(1)
    th = [line for line in source_lines(page) if line.startswith(".TH")]
    assert len(th) == 1
    assert '"tcpchat %s"' % version in th[0]


# -- tcpchat(7) against tcpchat.protocol -----------------------------------

def test_every_command_is_documented_and_every_documented_command_exists():
    protocol = import_or_skip("tcpchat.protocol")
    known = {c.lower() for c in protocol.COMMANDS}
    documented = {first_word(t).lower() for t in tags(sections("tcpchat.7")["COMMANDS"])}
    page_text = plain_text(source_lines("tcpchat.7"))
    # A command word with no letters (a bare escape such as "//") cannot be
    # a definition term of its own; it must at least be explained somewhere.
    missing = {
        c for c in known - documented
        if re.search(r"[a-z]", c) or c not in page_text
    }
    assert not missing, "commands the page does not document: %s" % sorted(missing)
    invented = documented - known
    assert not invented, "documented commands the server does not know: %s" % sorted(invented)


def test_the_commands_allowed_before_registration_are_the_servers():
    protocol = import_or_skip("tcpchat.protocol")
    open_commands = getattr(protocol, "OPEN_COMMANDS", None)
    if open_commands is None:
        pytest.skip("tcpchat.protocol has no OPEN_COMMANDS")
    text = plain_text(sections("tcpchat.7")["MESSAGES FROM THE CLIENT"])
    # "Until a /nick succeeds, the server accepts only /nick, /help, ...;"
    listed = re.search(r"accepts only ([^;]*);", text).group(1)
    documented = set(re.findall(r"(/[a-z]+|:quit:)", listed))
    assert documented == set(open_commands)


def test_every_server_keyword_is_documented_and_exists():
    protocol = import_or_skip("tcpchat.protocol")
    known = set(protocol.SERVER_KEYWORDS)
    documented = {first_word(t) for t in tags(sections("tcpchat.7")["MESSAGES FROM THE SERVER"])}
    assert not known - documented, "keywords not documented: %s" % sorted(known - documented)
    assert not documented - known, "documented keywords not in the code: %s" % sorted(
        documented - known
    )


def test_every_error_code_is_documented_and_exists():
    protocol = import_or_skip("tcpchat.protocol")
    known = set(protocol.ERROR_CODES)
    documented = {first_word(t) for t in tags(sections("tcpchat.7")["ERROR CODES"])}
    assert not known - documented, "error codes not documented: %s" % sorted(known - documented)
    assert not documented - known, "documented codes not in the code: %s" % sorted(
        documented - known
    )


def test_error_codes_named_anywhere_in_the_protocol_page_exist():
    # "ERR some-code" in prose or in the worked session must be a real code.
    protocol = import_or_skip("tcpchat.protocol")
    named = set()
    for line in source_lines("tcpchat.7"):
        # A code is written in bold after ERR, or in the example session.
        if line.startswith(".B") or not line.startswith("."):
            match = re.match(r"ERR ([a-z][a-z0-9-]*)", macro_text(line))
            if match:
                named.add(match.group(1))
    assert named, "the page names no ERR code at all"
    assert not named - set(protocol.ERROR_CODES), sorted(named - set(protocol.ERROR_CODES))


def test_limits_in_the_protocol_page_match_the_server_defaults():
    options = parser_options("tcpchat.server")
    limits = tags(sections("tcpchat.7")["LIMITS"])
    assert limits
    for tag in limits:
        option, value = tag.split()
        assert option in options, option
        assert same_value(value, options[option].default), (tag, options[option].default)


def test_options_named_in_the_protocol_page_exist():
    options = set(parser_options("tcpchat.server"))
    named = options_in(prose_and_examples(source_lines("tcpchat.7"), "tcpchat-server"))
    assert not named - options, sorted(named - options)


# -- the command pages against their parsers --------------------------------

@pytest.mark.parametrize(
    "page, module_name, program",
    [
        ("tcpchat-server.1", "tcpchat.server", "tcpchat-server"),
        ("tcpchat-client.1", "tcpchat.client", "tcpchat-client"),
    ],
)
def test_options_match_the_parser(page, module_name, program):
    options = parser_options(module_name)
    page_sections = sections(page)
    entries = option_entries(page_sections["OPTIONS"])
    documented = set()
    for tag in entries:
        documented |= options_in(tag)
    missing = set(options) - documented
    assert not missing, "options %s has but %s does not document: %s" % (
        program, page, sorted(missing))
    mentioned = options_in(prose_and_examples(source_lines(page), program))
    invented = mentioned - set(options)
    assert not invented, "%s names options %s does not have: %s" % (
        page, program, sorted(invented))
    # A stated default must be the parser's default, and a parser default
    # worth stating (not a flag, not None) must be stated.
    for tag, body in entries.items():
        names = sorted(options_in(tag))
        action = options[names[0]]
        stated = documented_default(body)
        real = action.default
        is_flag = action.nargs == 0
        if stated is not None:
            assert not is_flag and real is not None, (tag, "states a default the parser lacks")
            assert same_value(stated, real), (tag, stated, real)
        elif not is_flag and real is not None:
            pytest.fail("%s: %s has default %r, the page does not say" % (page, tag, real))


@pytest.mark.parametrize(
    "page, module_name",
    [("tcpchat-server.1", "tcpchat.server"), ("tcpchat-client.1", "tcpchat.client")],
)
def test_synopsis_shows_every_option(page, module_name):
    # Each option by its longest name; aliases are explained under OPTIONS.
    actions = set(parser_options(module_name).values())
    wanted = {max(action.option_strings, key=len) for action in actions}
    shown = options_in(plain_text(sections(page)["SYNOPSIS"]))
    assert not wanted - shown, sorted(wanted - shown)


def test_client_page_documents_every_command_a_user_types():
    protocol = import_or_skip("tcpchat.protocol")
    # /ack is sent by the client itself, never typed.
    # /ack and /resume are sent by the client itself, never typed.
    wanted = {c.lower() for c in protocol.COMMANDS if re.search(r"[a-z]", c)} - {"/ack", "/resume"}
    documented = set()
    for tag in tags(sections("tcpchat-client.1")["COMMANDS"]):
        documented |= {w.rstrip(",").lower() for w in tag.split() if w[:1] in "/:"}
    assert not wanted - documented, sorted(wanted - documented)
    assert not documented - set(c.lower() for c in protocol.COMMANDS), sorted(
        documented - set(c.lower() for c in protocol.COMMANDS))


# -- installation ------------------------------------------------------------

def _copy_source(dest):
    """The files pip needs, so that the build leaves the work tree alone."""
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg"):
        if (ROOT / name).exists():
            shutil.copy2(str(ROOT / name), str(dest / name))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(str(ROOT / "tcpchat"), str(dest / "tcpchat"), ignore=ignore)
    shutil.copytree(str(MAN), str(dest / "man"), ignore=ignore)


def _run(cmd, env=None, timeout=300):
    result = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, "%s failed:\n%s" % (cmd, result.stdout)
    return result.stdout


@pytest.mark.slow
def test_pip_install_puts_the_pages_where_man_finds_them(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _copy_source(src)
    env_dir = tmp_path / "venv"
    venv.create(str(env_dir), with_pip=True)
    python = env_dir / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps",
          "--disable-pip-version-check", str(src)])

    man_dir = env_dir / "share" / "man"
    installed = {
        "tcpchat.7": man_dir / "man7" / "tcpchat.7",
        "tcpchat-server.1": man_dir / "man1" / "tcpchat-server.1",
        "tcpchat-client.1": man_dir / "man1" / "tcpchat-client.1",
    }
    for page, path in installed.items():
        assert path.is_file(), "%s is not installed at %s" % (page, path)
        assert path.read_bytes() == (MAN / page).read_bytes()

    if shutil.which("man") is None:
        pytest.skip("man is not installed; the pages are in place")
    base = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "MANOPT")}
    # A user who activated the environment: man-db looks in ../share/man
    # next to each directory on PATH.
    via_path = dict(base, PATH="%s%s%s" % (env_dir / "bin", os.pathsep, base.get("PATH", "")))
    # An administrator who points MANPATH at it.
    via_manpath = dict(base, MANPATH=str(man_dir))
    for env in (via_path, via_manpath):
        for args, page in ((["tcpchat"], "tcpchat.7"),
                           (["1", "tcpchat-server"], "tcpchat-server.1"),
                           (["1", "tcpchat-client"], "tcpchat-client.1")):
            found = _run(["man", "-w"] + args, env=env).strip().splitlines()
            assert Path(found[0]).resolve() == installed[page].resolve(), found
    shown = _run(["man", "tcpchat"], env=dict(via_path, MANPAGER="cat", PAGER="cat",
                                              MANWIDTH="80"))
    assert "WRITING A CLIENT" in shown


# -- the worked examples in tcpchat(7) are what the server really says ------

def example_blocks(page, section):
    blocks, current = [], None
    for line in sections(page)[section]:
        if line.startswith(".EX"):
            current = []
        elif line.startswith(".EE"):
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_worked_nc_session_is_what_the_server_says():
    import_or_skip("tcpchat.server")
    from serverproc import ServerProcess

    session = example_blocks("tcpchat.7", "EXAMPLES")[0]
    assert session[0].startswith("$ nc ")
    with ServerProcess() as srv:
        # "Bob is already connected": he speaks when the page shows him.
        bob = srv.connect(nick="bob")
        alice = srv.connect()
        assert alice.greeting == session[1]
        nick = None
        for line in session[2:]:
            if line.startswith("> "):
                typed = line[2:]
                if typed.startswith("/nick "):
                    nick = typed.split()[1]
                alice.send(typed)
                continue
            words = line.split(" ", 4)
            if words[0] == "MSG" and words[2] == "bob":
                bob.send(words[4])
            elif line == "PAIR-REQUEST bob":
                bob.send("/pair " + nick)
            got = alice.next_message()
            if line.startswith("SESSION "):
                # The token is new every time: the page shows one of its shape.
                assert re.fullmatch(r"SESSION [A-Za-z0-9_-]{22,} \d+", line), line
                assert re.fullmatch(r"SESSION [A-Za-z0-9_-]{22,} \d+", got or ""), got
                continue
            assert got == line, "the page says %r, the server said %r" % (line, got)
        assert session[-1].startswith("BYE")
        assert alice.expect_closed() == []
        srv.stop()


def test_the_framed_example_bytes_register():
    import_or_skip("tcpchat.server")
    from serverproc import ServerProcess

    block = " ".join(example_blocks("tcpchat.7", "EXAMPLES")[1])
    literal = re.search(r"printf '([^']*)'", block).group(1)
    data = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), literal).encode("latin-1")
    greeting = example_blocks("tcpchat.7", "EXAMPLES")[0][1]
    # The page: the greeting line, then a frame holding SESSION and the
    # token, then one holding "OK nick alice".
    session = b"SESSION " + b"t" * 32 + b" 120"
    wanted = (greeting.encode() + b"\n" + struct.pack(">I", len(session)) + session
              + b"\x00\x00\x00\x0dOK nick alice")
    with ServerProcess() as srv:
        with socket.create_connection((srv.host, srv.port), timeout=10) as sock:
            sock.sendall(data)
            got = b""
            deadline = time.monotonic() + 10
            while len(got) < len(wanted) and time.monotonic() < deadline:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
        # Same shape and length; the token differs each time.
        assert len(got) == len(wanted), got
        head = len(greeting) + 1 + 4 + len("SESSION ")
        assert got[:head] == wanted[:head] and got[head + 32:] == wanted[head + 32:], got
        srv.stop()
