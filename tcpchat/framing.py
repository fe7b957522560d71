"""Framing: how a TCP byte stream becomes messages, and messages become bytes.

Theory of operation
-------------------
tcpchat speaks one protocol in two framings, chosen per connection by the
first byte the client sends:

* ``0x00`` (FRAMED_MARKER): framed mode. Every message, both ways, is a
  4-byte unsigned big-endian length N followed by N bytes of UTF-8, with
  1 <= N <= max_frame. A message may contain newlines.
* anything else: line mode, for nc and telnet. A message is a line ending
  in ``\\n``; a ``\\r`` before it is dropped; empty lines are ignored.

The decoders here are sans-I/O: they are fed whatever ``recv`` returned, in
any split (``push``), and hand back complete messages as ``bytes``, at most
as many as asked for at a time (``take``), so that the server can act on a
budget of messages per loop pass and leave the rest undecoded. They never
decode UTF-8 (that is the protocol layer's job, so that a bad byte costs
one ``ERR bad-utf8`` and not the connection).

Rules that keep them honest:

1. Memory is bounded. A line decoder holds at most what it was pushed and
   has not handed out; of an unfinished line it keeps at most ``max_line``
   bytes: past that it reports ``too-long`` once and discards up to the
   next newline. A frame decoder never waits for more than one header plus
   ``max_frame`` bytes; a header announcing more is fatal, because nothing
   after it can be trusted to be in step. ``take(n)`` splits off at most
   ``n`` messages, so a read full of tiny lines does not become a list of
   thousands of objects at once.
2. Problems are reported in the stream, in order, as ``FramingError``
   values between the messages, so the caller answers them in the order the
   peer sent things.
3. A limit may change between takes (``set_limit``): the server raises it
   once a client has registered.
"""

import struct

__all__ = [
    "FRAMED_MARKER",
    "FramingError",
    "LineDecoder",
    "FrameDecoder",
    "encode_line",
    "encode_frame",
    "frame_header",
]

#: The first byte a framed client sends. It is consumed and not a message.
FRAMED_MARKER = 0

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
#: ``frame_header(n)``: the 4 bytes that begin a frame of ``n`` payload
#: bytes. The hot path writes ``frame_header(len(p)) + p`` itself, a Python
#: call fewer per frame than ``encode_frame``.
frame_header = _HEADER.pack


class FramingError:
    """Something the peer sent broke the framing rules.

    ``code`` is the protocol's error code (the ``ERR CODE`` word), ``detail``
    the human text after it, ``fatal`` whether the stream is still usable.
    """

    __slots__ = ("code", "detail", "fatal")

    def __init__(self, code, detail, fatal):
        self.code = code
        self.detail = detail
        self.fatal = fatal

    def __repr__(self):
        return "FramingError(%r, %r, fatal=%r)" % (self.code, self.detail, self.fatal)

    def __eq__(self, other):
        return (
            isinstance(other, FramingError)
            and (self.code, self.detail, self.fatal)
            == (other.code, other.detail, other.fatal)
        )

    def __hash__(self):
        return hash((self.code, self.detail, self.fatal))


class LineDecoder:
    """Splits a byte stream into lines of at most ``max_line`` bytes.

    ``push`` takes bytes in; ``take(n)`` hands out at most ``n`` messages,
    so that a caller can stop after a budget and leave the rest here, not
    yet split; ``putback`` returns the tail of a batch it did not act on.
    ``feed`` does all at once for callers that want everything.
    """

    __slots__ = ("max_line", "_buf", "_ready", "_discarding", "_too_long")

    def __init__(self, max_line):
        self._buf = b""  # bytes not yet split into messages
        self._ready = None  # messages split off and put back, in order
        # True while skipping the rest of an over-long line up to its newline.
        self._discarding = False
        self.set_limit(max_line)

    def set_limit(self, max_line):
        self.max_line = max_line
        self._too_long = FramingError(
            "too-long", "line longer than %d bytes, discarded" % max_line, False
        )

    @property
    def buffered(self):
        """Bytes held and not yet handed out (at most one read plus max_line)."""
        return len(self._buf) + sum(len(m) for m in self._ready or () if type(m) is bytes)

    def push(self, data):
        self._buf = self._buf + data if self._buf else data

    def putback(self, items):
        """Messages from the last ``take`` that were not acted on."""
        if items:
            self._ready = items + self._ready if self._ready else items

    def take(self, n):
        """At most ``n`` complete lines (bytes) and errors (FramingError),
        in order; an empty list when no line is complete yet."""
        ready = self._ready
        if ready:
            self._ready = ready[n:] or None
            return ready[:n]
        out = []
        while not out and self._buf:
            # Empty lines make no message: split again until one comes or
            # the buffer holds no complete line.
            if self._split(n, out):
                break
        return out

    def _split(self, n, out):
        """Split up to ``n`` lines off the buffer into ``out``; True once
        no complete line is left."""
        buf = self._buf
        # split() in C does the work; maxsplit keeps one call's output (and
        # the memory it takes) to the budget, the rest stays unsplit.
        parts = buf.split(b"\n", n)
        rest = parts.pop()
        split_all = len(parts) < n  # else rest may hold more lines
        if self._discarding and parts:
            self._discarding = False
            del parts[0]  # the tail of an over-long line
        limit = self.max_line
        # nc and telnet may end lines with CRLF; a program rarely does, and
        # then no line needs the look (one scan in C instead of a slice each).
        crlf = b"\r" in buf
        for line in parts:
            if crlf and line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                continue  # empty lines are ignored
            out.append(line if len(line) <= limit else self._too_long)
        if not split_all:
            self._buf = rest  # the next take splits the rest
        elif self._discarding:
            self._buf = b""
        # A \r may be the last byte of a line whose \n is still in flight,
        # so it counts toward the limit only once the line is complete.
        elif len(rest) > limit + 1 or (len(rest) == limit + 1 and rest[-1] != 13):
            out.append(self._too_long)
            self._discarding = True
            self._buf = b""
        else:
            self._buf = rest
        return split_all

    def feed(self, data):
        """Take bytes in; return every complete line and error, in order."""
        self.push(data)
        out = []
        while True:
            got = self.take(1024)
            if not got:
                return out
            out += got


class FrameDecoder:
    """Splits a byte stream into length-prefixed frames.

    The same interface as LineDecoder: ``push``, ``take``, ``putback``,
    ``feed``.
    """

    __slots__ = ("max_frame", "_buf", "_ready", "broken")

    def __init__(self, max_frame):
        self.max_frame = max_frame
        self._buf = b""
        self._ready = None
        # Set after a fatal error: the stream is out of step for good.
        self.broken = False

    def set_limit(self, max_frame):
        self.max_frame = max_frame

    @property
    def buffered(self):
        """Bytes held and not yet handed out (at most one read plus 4 + max_frame)."""
        return len(self._buf) + sum(len(m) for m in self._ready or () if type(m) is bytes)

    push = LineDecoder.push
    putback = LineDecoder.putback
    feed = LineDecoder.feed

    def take(self, n):
        """At most ``n`` complete frames' payloads and errors, in order."""
        ready = self._ready
        if ready:
            self._ready = ready[n:] or None
            return ready[:n]
        out = []
        if self.broken:
            return out
        buf = self._buf
        size = len(buf)
        pos = 0
        limit = self.max_frame
        unpack_from = _HEADER.unpack_from
        while size - pos >= HEADER_SIZE and len(out) < n:
            (length,) = unpack_from(buf, pos)
            if length > limit:
                out.append(
                    FramingError(
                        "too-long",
                        "frame of %d bytes is over the limit of %d" % (length, limit),
                        True,
                    )
                )
                self.broken = True
                self._buf = b""
                return out
            if length == 0:
                # Harmless: the stream is still in step, so say so and go on.
                out.append(_EMPTY_FRAME)
                pos += HEADER_SIZE
                continue
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            out.append(buf[pos + HEADER_SIZE:end])
            pos = end
        if pos:
            self._buf = buf[pos:]
        return out


_EMPTY_FRAME = FramingError("bad-frame", "empty frame", False)


def encode_line(text):
    """One line-mode message: the UTF-8 text and a newline."""
    return text.encode("utf-8") + b"\n"


def encode_frame(payload):
    """One framed message around ``payload`` (bytes)."""
    return frame_header(len(payload)) + payload
