"""Baseline ``relay``: the floor of what a Python selectors loop does here.

It forwards length-prefixed frames (4-byte big-endian length, then the
payload) between paired connections, and answers each forwarded frame with
a fixed acknowledgement frame to its sender, so that it does the same
I/O work as a chat server acknowledging private messages, but with no chat
logic: no parsing beyond the frame headers, no nicks, no message ids.

A connection's first frame is ``PAIR KEY``; the two connections that send
the same KEY are paired and both get a ``PAIRED`` frame. Output is queued
and flushed once per loop pass; write interest is registered only while
output is left over.

    python -m bench.baselines.relay --port 0
"""

import argparse
import selectors
import socket
import struct
import sys

from bench.baselines import raise_open_files_limit

HEADER = struct.Struct(">I")
RECV_SIZE = 256 * 1024


def frame(payload):
    return HEADER.pack(len(payload)) + payload


ACK = frame(b"SENT ok")
PAIRED = frame(b"PAIRED")


class Conn:
    __slots__ = ("sock", "inbuf", "out", "peer", "writing")

    def __init__(self, sock):
        self.sock = sock
        self.inbuf = b""
        self.out = bytearray()
        self.peer = None
        self.writing = False


class Relay:
    def __init__(self, listener):
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.sel.register(listener, selectors.EVENT_READ, None)
        self.waiting = {}  # pair key -> the connection that sent it first
        self.dirty = set()  # connections with output to flush this pass

    def serve_forever(self):
        select = self.sel.select
        while True:
            for key, events in select():
                conn = key.data
                if conn is None:
                    self.accept()
                    continue
                if conn.sock is None:  # closed earlier in this pass
                    continue
                if events & selectors.EVENT_READ:
                    self.read(conn)
                if events & selectors.EVENT_WRITE and conn.sock is not None:
                    self.dirty.add(conn)
            dirty, self.dirty = self.dirty, set()
            for conn in dirty:
                if conn.sock is not None:
                    self.flush(conn)

    def accept(self):
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sel.register(sock, selectors.EVENT_READ, Conn(sock))

    def read(self, conn):
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close(conn)
            return
        buf = conn.inbuf + data if conn.inbuf else data
        size = len(buf)
        pos = 0
        count = 0
        unpack_from = HEADER.unpack_from
        while size - pos >= 4:
            end = pos + 4 + unpack_from(buf, pos)[0]
            if end > size:
                break
            pos = end
            count += 1
        if count == 0:
            conn.inbuf = buf
            return
        conn.inbuf = buf[pos:]
        peer = conn.peer
        if peer is None:
            # Frames before the pairing completes have nowhere to go.
            self.pair(conn, buf[4:4 + HEADER.unpack_from(buf, 0)[0]])
            return
        peer.out += buf[:pos] if pos < size else buf
        conn.out += ACK * count
        self.dirty.add(peer)
        self.dirty.add(conn)

    def pair(self, conn, key):
        other = self.waiting.pop(key, None)
        if other is None or other.sock is None:
            self.waiting[key] = conn
            return
        conn.peer, other.peer = other, conn
        for c in (conn, other):
            c.out += PAIRED
            self.dirty.add(c)

    def flush(self, conn):
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.close(conn)
                return
            del conn.out[:sent]
        want = bool(conn.out)
        if want != conn.writing:
            conn.writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(conn.sock, events, conn)

    def close(self, conn):
        self.sel.unregister(conn.sock)
        conn.sock.close()
        conn.sock = None
        peer, conn.peer = conn.peer, None
        if peer is not None and peer.sock is not None:
            peer.peer = None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="relay", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raise_open_files_limit()
    listener = socket.create_server((args.host, args.port), backlog=4096)
    listener.setblocking(False)
    host, port = listener.getsockname()[:2]
    print("listening on %s:%d" % (host, port), file=sys.stderr, flush=True)
    try:
        Relay(listener).serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
