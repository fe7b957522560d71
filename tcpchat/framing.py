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
any split, and hand back complete messages as ``bytes``. They never decode
UTF-8 (that is the protocol layer's job, so that a bad byte costs one
``ERR bad-utf8`` and not the connection).

Rules that keep them honest:

1. Memory is bounded. A line decoder holds at most ``max_line`` bytes of an
   unfinished line; past that it reports ``too-long`` once and discards up
   to the next newline. A frame decoder holds at most one header plus
   ``max_frame`` bytes; a header announcing more is fatal, because nothing
   after it can be trusted to be in step.
2. Problems are reported in the stream, in order, as ``FramingError``
   values between the messages, so the caller answers them in the order the
   peer sent things.
"""

import struct

__all__ = [
    "FRAMED_MARKER",
    "FramingError",
    "LineDecoder",
    "FrameDecoder",
    "encode_line",
    "encode_frame",
]

#: The first byte a framed client sends. It is consumed and not a message.
FRAMED_MARKER = 0

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


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
    """Splits a byte stream into lines of at most ``max_line`` bytes."""

    __slots__ = ("max_line", "_partial", "_discarding", "_too_long")

    def __init__(self, max_line):
        self.max_line = max_line
        self._partial = b""
        # True while skipping the rest of an over-long line up to its newline.
        self._discarding = False
        self._too_long = FramingError(
            "too-long", "line longer than %d bytes, discarded" % max_line, False
        )

    @property
    def buffered(self):
        """Bytes held for an unfinished line (never more than max_line)."""
        return len(self._partial)

    def feed(self, data):
        """Take bytes in; return the complete lines and errors, in order."""
        out = []
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            data = data[nl + 1:]
            self._discarding = False
        if self._partial:
            data = self._partial + data
        lines = data.split(b"\n")
        rest = lines.pop()
        limit = self.max_line
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                continue
            if len(line) > limit:
                out.append(self._too_long)
            else:
                out.append(line)
        # A \r may be the last byte of a line whose \n is still in flight,
        # so it counts toward the limit only once the line is complete.
        if len(rest) > limit + 1 or (len(rest) == limit + 1 and rest[-1:] != b"\r"):
            out.append(self._too_long)
            self._discarding = True
            rest = b""
        self._partial = rest
        return out


class FrameDecoder:
    """Splits a byte stream into length-prefixed frames."""

    __slots__ = ("max_frame", "_partial", "broken")

    def __init__(self, max_frame):
        self.max_frame = max_frame
        self._partial = b""
        # Set after a fatal error: the stream is out of step for good.
        self.broken = False

    @property
    def buffered(self):
        """Bytes held for an unfinished frame (at most 4 + max_frame)."""
        return len(self._partial)

    def feed(self, data):
        """Take bytes in; return the complete frames' payloads and errors."""
        out = []
        if self.broken:
            return out
        if self._partial:
            data = self._partial + data
        size = len(data)
        pos = 0
        limit = self.max_frame
        unpack_from = _HEADER.unpack_from
        while size - pos >= HEADER_SIZE:
            (length,) = unpack_from(data, pos)
            if length > limit:
                out.append(
                    FramingError(
                        "too-long",
                        "frame of %d bytes is over the limit of %d" % (length, limit),
                        True,
                    )
                )
                self.broken = True
                self._partial = b""
                return out
            if length == 0:
                # Harmless: the stream is still in step, so say so and go on.
                out.append(FramingError("bad-frame", "empty frame", False))
                pos += HEADER_SIZE
                continue
            end = pos + HEADER_SIZE + length
            if end > size:
                break
            out.append(data[pos + HEADER_SIZE:end])
            pos = end
        self._partial = data[pos:] if pos < size else b""
        return out


def encode_line(text):
    """One line-mode message: the UTF-8 text and a newline."""
    return text.encode("utf-8") + b"\n"


def encode_frame(payload):
    """One framed message around ``payload`` (bytes)."""
    return _HEADER.pack(len(payload)) + payload
