"""The framing codecs, fed whole, byte by byte, and split at every offset."""

import struct

import pytest

from tcpchat.framing import (
    FrameDecoder,
    FramingError,
    LineDecoder,
    encode_frame,
    encode_line,
)


def feed_split(decoder, data, cut):
    return decoder.feed(data[:cut]) + decoder.feed(data[cut:])


def feed_bytewise(decoder, data):
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i:i + 1])
    return out


LINES = b"hello\r\nworld\n\n\r\n/msg bob hi there\n"
LINES_OUT = [b"hello", b"world", b"/msg bob hi there"]


def test_lines_whole():
    assert LineDecoder(100).feed(LINES) == LINES_OUT


def test_lines_bytewise():
    assert feed_bytewise(LineDecoder(100), LINES) == LINES_OUT


@pytest.mark.parametrize("cut", range(len(LINES) + 1))
def test_lines_every_split(cut):
    assert feed_split(LineDecoder(100), LINES, cut) == LINES_OUT


def test_line_without_newline_waits():
    d = LineDecoder(100)
    assert d.feed(b"partial") == []
    assert d.buffered == 7
    assert d.feed(b" line\n") == [b"partial line"]
    assert d.buffered == 0


def test_line_at_limit_passes_and_cr_does_not_count():
    d = LineDecoder(5)
    assert d.feed(b"12345\n") == [b"12345"]
    assert feed_bytewise(d, b"12345\r\n") == [b"12345"]


def test_long_line_in_one_piece_is_too_long_and_stream_goes_on():
    d = LineDecoder(5)
    out = d.feed(b"123456\nok\n")
    assert [type(x) for x in out] == [FramingError, bytes]
    assert out[0].code == "too-long" and not out[0].fatal
    assert out[1] == b"ok"


def test_endless_line_is_bounded_and_reported_once():
    d = LineDecoder(10)
    out = []
    for _ in range(1000):
        out += d.feed(b"x" * 7)
        assert d.buffered <= 11
    assert len(out) == 1 and out[0].code == "too-long"
    # Discarded up to its newline, then the stream is back in step.
    assert d.feed(b"xxx\nnext\n") == [b"next"]


@pytest.mark.parametrize("cut", range(0, 30))
def test_long_line_every_split(cut):
    data = b"a" * 20 + b"\nfine\n"
    out = feed_split(LineDecoder(8), data, cut)
    assert [x.code if isinstance(x, FramingError) else x for x in out] == ["too-long", b"fine"]


def test_bytes_are_not_decoded_here():
    # A telnet IAC (0xff) or any bad UTF-8 is the protocol layer's problem.
    assert LineDecoder(100).feed(b"\xff\xfd\x18\n") == [b"\xff\xfd\x18"]


def frames(*payloads):
    return b"".join(encode_frame(p) for p in payloads)


FRAMES = frames(b"one", b"two\nlines", "☃ snow".encode())
FRAMES_OUT = [b"one", b"two\nlines", "☃ snow".encode()]


def test_frames_whole():
    assert FrameDecoder(100).feed(FRAMES) == FRAMES_OUT


def test_frames_bytewise():
    assert feed_bytewise(FrameDecoder(100), FRAMES) == FRAMES_OUT


@pytest.mark.parametrize("cut", range(len(FRAMES) + 1))
def test_frames_every_split(cut):
    assert feed_split(FrameDecoder(100), FRAMES, cut) == FRAMES_OUT


def test_frame_at_limit_passes():
    assert FrameDecoder(3).feed(frames(b"abc")) == [b"abc"]


def test_frame_header_over_limit_is_fatal_at_once():
    d = FrameDecoder(3)
    # Only the header has come: the verdict must not wait for the payload.
    out = d.feed(struct.pack(">I", 4))
    assert len(out) == 1 and out[0].code == "too-long" and out[0].fatal
    assert d.broken and d.buffered == 0
    assert d.feed(b"more bytes") == []


def test_empty_frame_is_reported_and_stream_stays_in_step():
    out = FrameDecoder(10).feed(frames(b"a") + struct.pack(">I", 0) + frames(b"b"))
    assert out[0] == b"a" and out[2] == b"b"
    assert out[1].code == "bad-frame" and not out[1].fatal


def test_frame_buffer_is_bounded_by_one_frame():
    d = FrameDecoder(1000)
    data = frames(b"x" * 1000)
    for i in range(len(data) - 1):
        assert d.feed(data[i:i + 1]) == []
        assert d.buffered <= 4 + 1000
    assert d.feed(data[-1:]) == [b"x" * 1000]


def test_encoders():
    assert encode_line("héllo") == "héllo\n".encode()
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


# -- taking a budget at a time ------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_lines_taken_a_few_at_a_time_are_the_same_lines(n):
    data = b"a" * 20 + b"\n" + b"one\r\n\n" + b"x" * 9 + b"\ntwo\nthree\n" + b"y" * 30
    d = LineDecoder(8)
    d.push(data)
    got = []
    for _ in range(50):
        batch = d.take(n)
        assert len(batch) <= n
        if not batch:
            break
        got += batch
    codes = [x.code if isinstance(x, FramingError) else x for x in got]
    assert codes == ["too-long", b"one", "too-long", b"two", b"three", "too-long"]
    d.push(b"yy\nafter\n")
    assert d.take(n) == [b"after"]


def test_putback_comes_out_first_and_in_order():
    d = LineDecoder(100)
    d.push(b"1\n2\n3\n4\n")
    batch = d.take(3)
    assert batch == [b"1", b"2", b"3"]
    d.putback(batch[1:])
    assert d.take(10) == [b"2", b"3"]
    assert d.take(10) == [b"4"]
    f = FrameDecoder(100)
    f.push(frames(b"a", b"b", b"c"))
    first = f.take(2)
    f.putback(first[1:])
    assert f.take(5) == [b"b"]
    assert f.take(5) == [b"c"]


def test_take_splits_no_more_than_asked():
    # One read full of tiny lines: the decoder splits off only the budget,
    # so the list it makes stays small; the rest stays one bytes object.
    d = LineDecoder(100)
    d.push(b"x\n" * 30000)
    assert len(d.take(100)) == 100
    assert d.buffered == 2 * (30000 - 100)


def test_frame_decoder_takes_a_budget():
    d = FrameDecoder(100)
    d.push(frames(*[b"m%d" % i for i in range(10)]))
    assert d.take(4) == [b"m0", b"m1", b"m2", b"m3"]
    assert d.take(100) == [b"m%d" % i for i in range(4, 10)]
    assert d.buffered == 0
