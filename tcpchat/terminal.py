"""Terminal: the input line, and printing above it, for a select loop.

The client waits on stdin and the socket at once, so it must never block in
``input()``. GNU readline has an alternate interface made for this: the
caller installs a line handler, and each time stdin is readable it calls
``rl_callback_read_char``, which reads what is there, edits the line and
calls the handler when a whole line is done. Python's ``readline`` module
uses that interface internally but does not expose it, so this module
reaches the same library through ``ctypes``: the module's own shared object
is linked to libreadline, and symbol lookup on it finds the library's
functions and variables. That way we drive exactly the readline that
Python loaded, with the history the ``readline`` module manages.

Printing a message while the user is typing: clear the visible input line
(prompt and text), write the message, then tell readline the cursor is on a
fresh line and have it redraw prompt, text and cursor position. readline's
own buffer is never touched, so the half-typed line comes back untouched.

Where GNU readline is not there (macOS libedit, a Python built without
readline) ``PlainTerminal`` reads whole lines as the tty's cooked mode
delivers them; messages still print, and the prompt is shown again after
them, but the kernel's echo of a half-typed line is not redrawn.

Redrawing in place: the line of a message the user sent is drawn over the
echo of the line they typed, and redrawn when its state changes, as long as
it is still the last thing printed. Both need to know how many rows that
text fills: the terminal counts them when it prints (render.screen_rows),
and forgets the count whenever it could have gone wrong (a window resize, a
suspend, readline listing completions, anything printed since). Without a
sure count ``replace`` says no, and the caller prints a line instead.

Signals stay with the caller: readline's own handlers are switched off, so
the client's loop hears Ctrl-C, window resizes and Ctrl-Z in one place and
calls ``clear_line()``, ``resize()`` or ``suspend()`` here, which only
readline can do right.

History: lines typed are added to readline's history as they are entered
(unless ``set_history(False)``, as at the nick prompt), and at the end the
lines of this run are merged into the history file under a lock, so two
clients running at once both keep theirs (``save_history``).

Three implementations share one interface:
``start(prompt)``, ``fileno()``, ``read()`` -> list of lines (``None``
marks end of input), ``set_prompt(prompt)``, ``show(text, diagnostic)``,
``replace(text, what)`` -> bool, ``bell()``, ``clear_line()`` -> bool,
``set_history(on)``, ``stop()``. ReadlineTerminal adds ``set_completion``,
``resize`` and ``suspend``.
"""

import collections
import ctypes
import fcntl
import os
import signal
import sys
import time

from .render import screen_rows

__all__ = [
    "ReadlineTerminal",
    "PlainTerminal",
    "PipeInput",
    "history_path",
    "save_history",
    "open_terminal",
]

#: Lines of history kept in the file across runs.
HISTORY_LENGTH = 1000

# Most bytes one read() takes from stdin when readline is not in charge. A
# bound, not a limit on line length: a longer line simply takes more reads.
_READ_SIZE = 65536

# Longest line held while waiting for its newline; beyond it the text so far
# is handed on as a line, so a newline-less stream cannot grow memory.
MAX_INPUT_LINE = 1 << 20

#: Seconds to wait for another client to finish writing the history file.
HISTORY_LOCK_WAIT = 2.0


def history_path(environ=None):
    """Where input history lives: $XDG_STATE_HOME/tcpchat/history, else
    ~/.local/state/tcpchat/history (the XDG default for state data)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or ""
    if not os.path.isabs(base):
        # The XDG spec says relative paths are invalid and must be ignored.
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "tcpchat", "history")


def save_history(path, lines, limit=HISTORY_LENGTH):
    """Add ``lines`` (typed in this run, oldest first) to the history file
    at ``path`` and keep its last ``limit`` lines.

    Another client may be saving at the same moment, so this never writes
    the whole history from memory (the last one to leave would win): under
    an exclusive lock on ``path + ".lock"`` it reads what is there, appends,
    and renames a new file into place. The lock is a file of its own
    because the rename replaces the history file's inode. Raises OSError,
    or TimeoutError after HISTORY_LOCK_WAIT seconds of someone else's lock.
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    # A line cannot hold a newline in the file; a pasted one is not kept.
    new = [line.encode("utf-8", "surrogateescape") for line in lines if "\n" not in line]
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + HISTORY_LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError("another tcpchat-client holds %s.lock" % path)
                time.sleep(0.01)  # a writer holds it for a millisecond or so
        try:
            with open(path, "rb") as f:
                old = f.read().split(b"\n")
        except FileNotFoundError:
            old = []
        if old and old[-1] == b"":
            old.pop()
        kept = (old + new)[-limit:] if limit > 0 else []
        temporary = "%s.%d.tmp" % (path, os.getpid())
        # What people typed, private messages included: owner only.
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"".join(line + b"\n" for line in kept))
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
    finally:
        os.close(lock)  # and with it the lock


def _encoding():
    return getattr(sys.stdout, "encoding", None) or "utf-8"


def _write_all(fd, data):
    # os.write may write less than asked on a tty; loop until done.
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        except OSError:
            # The terminal hung up (EIO) or the reader of a pipe left
            # (EPIPE): there is nobody to show this to, and the client must
            # still say goodbye to the server, so carry on without output.
            return
        view = view[n:]


class _LineSplitter:
    """Bytes from a non-readline stdin into decoded lines, bounded."""

    __slots__ = ("_partial",)

    def __init__(self):
        self._partial = b""

    def feed(self, data):
        lines = []
        if not data:
            if self._partial:
                lines.append(self._decode(self._partial))
                self._partial = b""
            lines.append(None)
            return lines
        parts = (self._partial + data).split(b"\n")
        self._partial = parts.pop()
        if len(self._partial) > MAX_INPUT_LINE:
            parts.append(self._partial)
            self._partial = b""
        lines.extend(self._decode(p) for p in parts)
        return lines

    @staticmethod
    def _decode(raw):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return raw.decode("utf-8", "replace")


class PipeInput:
    """stdin that is not a terminal: lines in, plain text out, no prompt.

    What was said goes to stdout; everything else (``diagnostic``) to
    stderr, so that stdout can be kept or piped on as the conversation.
    """

    interactive = False

    def __init__(self, stdin_fd=0, stdout_fd=1, stderr_fd=2):
        self._in = stdin_fd
        self._out = stdout_fd
        self._err = stderr_fd
        self._splitter = _LineSplitter()

    def start(self, prompt):
        pass

    def fileno(self):
        return self._in

    def read(self):
        try:
            data = os.read(self._in, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        return self._splitter.feed(data)

    def set_prompt(self, prompt):
        pass

    def show(self, text, diagnostic=False):
        fd = self._err if diagnostic else self._out
        _write_all(fd, (text + "\n").encode(_encoding(), "replace"))

    def replace(self, text, what):
        """Redraw in place: never possible on a pipe."""
        return False

    def bell(self):
        pass

    def clear_line(self):
        return False

    def set_history(self, on):
        pass

    def stop(self):
        pass


class PlainTerminal(PipeInput):
    """A terminal without GNU readline: cooked-mode lines, prompt reprinted.

    It cannot redraw in place (the user may be typing on the prompt's row,
    and only the kernel knows what) nor tell whether Ctrl-C met a half-typed
    line (the kernel discards it), so those stay no.
    """

    interactive = True

    def __init__(self, stdin_fd=0, stdout_fd=1):
        super().__init__(stdin_fd, stdout_fd, stdout_fd)
        self._prompt = ""

    def start(self, prompt):
        self.set_prompt(prompt)

    def read(self):
        lines = super().read()
        if lines and lines[-1] is not None:
            self._show_prompt()
        return lines

    def set_prompt(self, prompt):
        self._prompt = prompt
        # Over the old prompt, not after it (it changes while the client
        # reconnects, and on pairing); show() clears the row the same way.
        _write_all(self._out, b"\r\x1b[K")
        self._show_prompt()

    def _show_prompt(self):
        _write_all(self._out, self._prompt.encode(_encoding(), "replace"))

    def show(self, text, diagnostic=False):
        # Start from column 0 and clear what is there: most of the time that
        # is just our prompt, as the user has not typed anything.
        _write_all(self._out, ("\r\x1b[K" + text + "\n").encode(_encoding(), "replace"))
        self._show_prompt()

    def bell(self):
        _write_all(self._out, b"\a")

    def stop(self):
        _write_all(self._out, b"\n")


# void (*rl_vcpfunc_t)(char *line): the line is malloc'd and ours to free,
# so it is taken as a raw pointer, not as a c_char_p that would hide it.
_LINE_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class ReadlineUnavailable(Exception):
    """GNU readline's callback interface cannot be reached from here."""


class ReadlineTerminal:
    """GNU readline through its callback interface (see module docstring).

    readline reads the C library's stdin and writes its stdout, so this
    terminal is always file descriptors 0 and 1.
    """

    interactive = True

    def __init__(self, history_file=None):
        try:
            import readline
        except ImportError:
            raise ReadlineUnavailable("no readline module")
        # libedit emulates part of the readline API but not the callback
        # redisplay functions we need; it names itself in the module doc, and
        # Python 3.13 adds readline.backend.
        if getattr(readline, "backend", "readline") != "readline" or \
                "libedit" in (readline.__doc__ or ""):
            raise ReadlineUnavailable("readline module uses libedit")
        try:
            lib = ctypes.CDLL(readline.__file__)
            libc = ctypes.CDLL(None)
            # Readline 7.0 (2016) brought rl_clear_visible_line; anything
            # older lacks it and gets the plain terminal.
            for name in ("rl_callback_handler_install", "rl_callback_read_char",
                         "rl_callback_handler_remove", "rl_clear_visible_line",
                         "rl_on_new_line", "rl_redisplay", "rl_set_prompt",
                         "rl_prep_terminal", "rl_deprep_terminal", "rl_replace_line",
                         "rl_free_line_state", "using_history"):
                getattr(lib, name)
            free, fflush = libc.free, libc.fflush
        except (OSError, AttributeError, TypeError) as exc:
            raise ReadlineUnavailable(str(exc))
        self._readline = readline
        self._lib = lib
        self._free = free
        self._fflush = fflush
        self._free.argtypes = [ctypes.c_void_p]
        self._fflush.argtypes = [ctypes.c_void_p]
        lib.rl_callback_handler_install.argtypes = [ctypes.c_char_p, _LINE_HANDLER]
        lib.rl_set_prompt.argtypes = [ctypes.c_char_p]
        lib.rl_prep_terminal.argtypes = [ctypes.c_int]
        lib.rl_replace_line.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self._in = 0
        self._out = 1
        self._history_file = history_file
        self._record = True  # add typed lines to the history
        # The lines this run added to the history, for save_history.
        self._typed = collections.deque(maxlen=HISTORY_LENGTH)
        self._lines = []
        self._installed = False
        self._prompt = ""
        # Rows filled by what was printed last, and by the echo of the line
        # just entered; None when not known for sure (module docstring).
        self._last_rows = None
        self._echo_rows = None
        # Kept on self: the C side holds only a raw pointer to this thunk,
        # and it must outlive every rl_callback_read_char call.
        self._handler = _LINE_HANDLER(self._on_line)

    # -- lifecycle --

    def start(self, prompt):
        # Signals stay Python's: readline would otherwise install its own
        # handlers during each rl_callback_read_char and re-raise, and the
        # client wants one place (its wakeup pipe) that hears Ctrl-C and
        # window size changes. Resizes are passed on with resize().
        for name in ("rl_catch_signals", "rl_catch_sigwinch"):
            try:
                ctypes.c_int.in_dll(self._lib, name).value = 0
            except ValueError:
                pass
        self._load_history()
        self._prompt = prompt
        self._lib.rl_callback_handler_install(self._encode(prompt), self._handler)
        self._installed = True

    def stop(self):
        """Put the terminal back as it was and save the history. Safe to
        call more than once and after an interrupted edit."""
        if not self._installed:
            return
        self._installed = False
        # An edit cut short by a signal may have readline mid-key-sequence;
        # sigcleanup (readline 7+) resets that state before we leave.
        cleanup = getattr(self._lib, "rl_callback_sigcleanup", None)
        if cleanup is not None:
            cleanup()
        # A bare prompt is wiped so the shell's prompt comes back in column 0;
        # a half-typed line (SIGTERM while typing) stays on screen, as shells
        # leave it.
        if self._typed_length():
            self._fflush(None)
            _write_all(self._out, b"\n")
        else:
            self._lib.rl_clear_visible_line()
        # Removing the handler also restores the terminal modes readline
        # changed when it was installed (rl_deprep_terminal).
        self._lib.rl_callback_handler_remove()
        self._fflush(None)
        self._save_history()

    def _typed_length(self):
        """Bytes in the input line now (readline's rl_end)."""
        try:
            return ctypes.c_int.in_dll(self._lib, "rl_end").value
        except ValueError:
            return 1

    # -- input --

    def fileno(self):
        return self._in

    def read(self):
        """Feed readline what stdin has; return the lines it completed
        (``None`` for end of input: Ctrl-D on an empty line)."""
        self._echo_rows = None
        if self._installed:
            self._lib.rl_callback_read_char()
        lines, self._lines = self._lines, []
        return lines

    def _on_line(self, pointer):
        # Called by readline from inside rl_callback_read_char: do no more
        # than take the line, so no exception can be lost in C.
        if not pointer:
            self._lines.append(None)
            return
        try:
            raw = ctypes.string_at(pointer)
        finally:
            self._free(pointer)
        line = raw.decode("utf-8", "replace")
        # readline has echoed prompt and line, then moved to a new row. With
        # two lines in one read the first echo is not the one right above.
        first = not self._lines
        self._lines.append(line)
        self._echo_rows = self._input_rows(line) if first else None
        self._last_rows = None
        if line.strip() and self._record:
            self._remember(line)

    def _remember(self, line):
        rl = self._readline
        count = rl.get_current_history_length()
        if count == 0 or rl.get_history_item(count) != line:
            rl.add_history(line)
            self._typed.append(line)

    def set_history(self, on):
        """Whether lines typed from now on go to the history: not a nick
        typed at the nick prompt, which is no command worth recalling."""
        self._record = bool(on)

    def clear_line(self):
        """Ctrl-C: drop the half-typed line, as shells do, and say whether
        there was one (on an empty line Ctrl-C means leave)."""
        if not self._installed or not self._typed_length():
            return False
        lib = self._lib
        cleanup = getattr(lib, "rl_callback_sigcleanup", None)
        if cleanup is not None:
            cleanup()  # out of an incremental search or a half key sequence
        lib.rl_free_line_state()
        lib.rl_replace_line(b"", 0)
        lib.using_history()  # Up starts from the newest line again
        lib.rl_set_prompt(self._encode(self._prompt))
        self._redraw_after(b"")
        return True

    # -- output --

    def set_prompt(self, prompt):
        self._prompt = prompt
        if not self._installed:
            return
        self._lib.rl_set_prompt(self._encode(prompt))
        self._redraw_after(b"")

    def show(self, text, diagnostic=False):
        """Print ``text`` (one or more lines, no trailing newline) above the
        input line, then bring prompt, typed text and cursor back."""
        data = (text + "\n").encode(_encoding(), "replace")
        self._echo_rows = None
        if not self._installed:
            self._last_rows = None
            _write_all(self._out, data)
            return
        self._redraw_after(data)
        size = self._size()
        self._last_rows = screen_rows(text, size[0]) if size else None

    def replace(self, text, what):
        """Print ``text`` over the rows of what is right above the input
        line: ``what`` is "echo" (the line just entered, as readline echoed
        it) or "last" (the text printed last). False, and nothing printed,
        when those rows are not known for sure or not all on the screen."""
        rows = self._echo_rows if what == "echo" else self._last_rows
        size = self._size()
        if not self._installed or rows is None or size is None:
            return False
        columns, height = size
        below = self._input_rows(self._readline.get_line_buffer(), columns)
        if below is None or rows + below > height:
            return False  # the top of it has scrolled off: it cannot be reached
        # After rl_clear_visible_line the cursor is in column 0 of the input
        # line's first row: go up over the old text, clear it and all below.
        self._redraw_after(("\x1b[%dA\r\x1b[J%s\n" % (rows, text)).encode(
            _encoding(), "replace"))
        self._last_rows = screen_rows(text, columns)
        self._echo_rows = None
        return True

    def bell(self):
        self._fflush(None)
        _write_all(self._out, b"\a")

    def _size(self):
        try:
            size = os.get_terminal_size(self._out)
        except OSError:
            return None
        return (size.columns, size.lines) if size.columns > 0 and size.lines > 0 else None

    def _input_rows(self, typed, columns=None):
        """Rows the prompt and ``typed`` fill as readline draws them; None
        for text it draws otherwise than we count (controls as ``^X``)."""
        if columns is None:
            size = self._size()
            if size is None:
                return None
            columns = size[0]
        if any(ch < " " or ch == "\x7f" for ch in typed):
            return None
        return screen_rows(self._prompt + typed, columns)

    def _redraw_after(self, data):
        lib = self._lib
        # readline writes through C stdio; flush it so our bytes, written
        # to the fd directly, land after its and not in the middle.
        self._fflush(None)
        lib.rl_clear_visible_line()
        self._fflush(None)
        _write_all(self._out, data)
        lib.rl_on_new_line()
        lib.rl_redisplay()
        self._fflush(None)

    def set_completion(self, complete):
        """Tab completes the word before the cursor.

        ``complete(before, word)`` gets the line up to that word and the
        word so far, and returns the candidates. Only spaces separate
        words: nicks contain ``- .`` and commands start with ``/``, which
        readline's default separators would split off.
        """
        rl = self._readline
        matches = []

        def completer(word, state):
            # readline asks for candidate 0, 1, 2... until it gets None.
            if state == 0:
                line = rl.get_line_buffer()
                # The space is ours to add: Python's readline module turns
                # off readline's own appending after a unique match.
                matches[:] = [c + " " for c in complete(line[:rl.get_begidx()], word)]
                if len(matches) > 1:
                    # readline may list them above the prompt: rows we did
                    # not print and cannot count.
                    self._last_rows = self._echo_rows = None
            return matches[state] if state < len(matches) else None

        rl.set_completer(completer)
        rl.set_completer_delims(" \t")
        rl.parse_and_bind("tab: complete")

    def suspend(self):
        """Ctrl-Z: hand the terminal back in the state we found it, stop
        like any job, and when continued take it again and redraw.

        readline's own prep/deprep functions do the switching, so its
        bracketed-paste mode goes off and on with the rest.
        """
        if not self._installed:
            return
        lib = self._lib
        self._last_rows = self._echo_rows = None  # the shell prints meanwhile
        self._fflush(None)
        _write_all(self._out, b"\n")
        lib.rl_deprep_terminal()
        self._fflush(None)
        # Stop the way the default action would have. In an orphaned
        # process group (no shell to continue us) the kernel discards it,
        # which is right: nobody could bring us back.
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, previous)
        # Continued (fg): 1 keeps 8-bit input intact, which UTF-8 needs.
        lib.rl_prep_terminal(1)
        lib.rl_on_new_line()
        lib.rl_redisplay()
        self._fflush(None)

    def resize(self):
        """The window changed size: let readline re-read it and redraw."""
        # Terminals re-wrap (or not) old rows on a resize: counts are void.
        self._last_rows = self._echo_rows = None
        if self._installed and hasattr(self._lib, "rl_resize_terminal"):
            self._lib.rl_resize_terminal()
            self._fflush(None)

    # -- history --

    def _load_history(self):
        rl = self._readline
        rl.set_history_length(HISTORY_LENGTH)
        if self._history_file:
            try:
                rl.read_history_file(self._history_file)
            except OSError:
                pass  # first run, or unreadable: start with none

    def _save_history(self):
        if not self._history_file or not self._typed:
            return
        try:
            save_history(self._history_file, list(self._typed))
        except OSError as exc:
            _write_all(2, ("could not save history to %s: %s\n" % (
                self._history_file, exc.strerror or exc)).encode(_encoding(), "replace"))

    @staticmethod
    def _encode(prompt):
        return prompt.encode(_encoding(), "replace")


def open_terminal(history_file, stdin_fd=0, stdout_fd=1):
    """The best input for this stdin: readline on a tty when GNU readline
    is there, the plain terminal on a tty without it, else a pipe."""
    if not os.isatty(stdin_fd):
        return PipeInput(stdin_fd, stdout_fd)
    if stdin_fd == 0 and stdout_fd == 1:
        try:
            return ReadlineTerminal(history_file)
        except ReadlineUnavailable:
            pass
    return PlainTerminal(stdin_fd, stdout_fd)
