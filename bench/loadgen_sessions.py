"""The load generator's commands for sessions: resume after a restart, and
readers that stall.

    python -m bench.loadgen_sessions '{"dialect": "framed", ...}'

The same process as ``bench.loadgen`` (one JSON command per line on stdin,
one JSON reply per line on stdout), with more commands:

* ``pair``: every client asks its neighbour for a pair (``/pair``) and
  waits for ``PAIRED``;
* ``hold``: every client sends its partner ``count`` private messages and
  reads what comes without ever sending ``/ack``: each framed recipient
  then holds ``count`` unconfirmed messages, which a restart must keep;
* ``await_bye``: read until the server has closed every connection,
  counting ``BYE`` lines (the harness sends SIGTERM meanwhile);
* ``resume``: every client connects again and sends ``/resume TOKEN``
  with the token of its last ``SESSION``, acknowledges what is delivered
  again, and times ``OK resume``, the held messages, the ``DELIVERED``
  lines for its own, and its partner's ``BACK``;
* ``stall``: stop reading (the clients were connected with a small
  ``rcvbuf``): the server's output to them piles up;
* ``read_noack``: read everything, never ``/ack``;
* ``flood_many``: client 0 sends a list of commands round and round as
  fast as the server takes them, and counts what comes back.

Replies here are parsed into whole lines (frames, in framed mode): these
runs are about counts and outcomes, not about the generator's speed, and
their volume is small beside the throughput runs'.
"""

import re
import socket
import time

from bench.loadgen import EPOLLERRS, EPOLLIN, EPOLLOUT, HEADER, RECV_SIZE, LoadGen, frame, main

RX_SESSION = re.compile(rb"SESSION (\S+) ")
RX_MSG = re.compile(rb"MSG (\d+) ")
#: Unwritten lines longer than this are not ours: the buffer is dropped.
MAX_PENDING = 1 << 20


class SessionLoadGen(LoadGen):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.tokens = {}  # Client -> its latest resume token
        self.pending = {}  # Client -> bytes of a line or frame not yet whole
        self.held_ids = {}  # Client -> ids of the messages it never acked

    def on_registered(self, c, said):
        m = RX_SESSION.search(said)
        if m:
            self.tokens[c] = m.group(1)
        # What came with the registration is read (and dropped) here, so that
        # an unfinished frame or line at its end is finished by the next read.
        self._lines(c, said[said.find(b"\n") + 1:] if self.dialect.framed else said)

    # -- whole lines ------------------------------------------------------

    def _lines(self, c, data):
        """The whole lines (or frame payloads) that ``data`` completes."""
        buf = self.pending.pop(c, b"") + data
        if self.dialect.framed:
            out = []
            pos = 0
            end = len(buf)
            while end - pos >= 4:
                size = HEADER.unpack_from(buf, pos)[0]
                if end - pos - 4 < size:
                    break
                out.append(buf[pos + 4:pos + 4 + size])
                pos += 4 + size
            rest = buf[pos:]
        else:
            cut = buf.rfind(b"\n") + 1
            out = buf[:cut].splitlines()
            rest = buf[cut:]
        if rest and len(rest) <= MAX_PENDING + 4:
            self.pending[c] = rest
        return out

    def _greeting(self, c):
        """Take a new connection's greeting line off its socket; True once
        taken (what follows it stays in the socket)."""
        try:
            head = c.sock.recv(RECV_SIZE, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            head = b""
        if not head:
            self._drop(c)
            return False
        end = head.find(b"\n")
        if end < 0:
            return False  # not all of it yet
        c.sock.recv(end + 1)
        return True

    def _recv(self, c):
        """Lines from one readable client; None when it was closed."""
        try:
            data = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            self.pending.pop(c, None)
            return None
        return self._lines(c, data)

    def _pump(self, on_lines, done, timeout, on_close=None):
        """Read every client until ``done()`` or ``timeout`` seconds."""
        ep = self.ep
        by_fd = self.by_fd
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            for fd, ev in ep.poll(0.05):
                c = by_fd.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERRS):
                    lines = self._recv(c)
                    if lines is None:
                        if on_close is not None:
                            on_close(c)
                    elif lines:
                        on_lines(c, lines)

    # -- before the restart -----------------------------------------------

    def cmd_pair(self, within=60.0):
        """Each client asks its neighbour for a pair; both must be PAIRED."""
        pairs = [c for c in self.clients if c.peer is not None]
        waiting = set(pairs)
        for c in pairs:
            self._send(c, self.dialect.wrap(b"/pair " + c.peer.nick))

        def on_lines(c, lines):
            if any(line.startswith(b"PAIRED ") for line in lines):
                waiting.discard(c)

        self._pump(on_lines, lambda: not waiting, within)
        return {"paired": len(pairs) - len(waiting)}

    def cmd_hold(self, count, text_size=32, within=60.0):
        """Each client sends ``count`` messages to its partner and reads
        its partner's without acknowledging any: ``count`` unconfirmed
        messages held for each."""
        pairs = [c for c in self.clients if c.peer is not None]
        got = {c: [] for c in pairs}
        sent = {c: 0 for c in pairs}
        text = b"x" * text_size
        errors = []
        for c in pairs:
            self._send(c, self.dialect.private(c.peer.nick, text) * count)

        def on_lines(c, lines):
            for line in lines:
                if line.startswith(b"MSG "):
                    got[c].append(int(RX_MSG.match(line).group(1)))
                elif line.startswith(b"SENT "):
                    sent[c] += 1
                elif line.startswith((b"ERR ", b"FAILED ")):
                    errors.append(line.decode("utf-8", "replace"))

        self._pump(on_lines, lambda: all(len(got[c]) >= count and sent[c] >= count
                                         for c in pairs) or errors, within)
        for c in pairs:
            self.held_ids[c] = sorted(got[c])
        return {"held": sum(len(v) for v in got.values()), "sent": sum(sent.values()),
                "errors": errors[:5]}

    def cmd_await_bye(self, within=60.0):
        """Read until the server has closed every connection."""
        bye = []
        other = []
        open_ = set(c for c in self.clients if c.sock is not None)

        def on_lines(c, lines):
            for line in lines:
                if line.startswith(b"BYE "):
                    bye.append(line)
                elif not line.startswith((b"AWAY ", b"LEFT ")):
                    other.append(line.decode("utf-8", "replace"))

        self._pump(on_lines, lambda: not open_, within, on_close=open_.discard)
        return {"bye": len(bye), "farewell": bye[0].decode() if bye else None,
                "still_open": len(open_), "other": other[:5], "other_count": len(other)}

    # -- after it ---------------------------------------------------------

    def cmd_resume(self, count, concurrency=500, within=60.0):
        """Every client connects again and resumes with its token.

        Up to ``concurrency`` handshakes are under way at once, as in
        ``connect``. Each client acknowledges the messages delivered again
        (as tcpchat-client does, a read's worth in one ``/ack``), so their
        senders get DELIVERED. Done when every client has its ``OK resume``,
        its ``count`` held messages and ``count`` DELIVERED for its own, and
        every pair its BACK: of two partners the first back hears of the
        second, whatever the presence limit. Times are CLOCK_MONOTONIC ns.
        """
        ep = self.ep
        clients = [c for c in self.clients if c in self.tokens]
        marker = b"\x00" if self.dialect.framed else b""
        t_ok, t_msgs, t_delivered = {}, {}, {}
        t_back = {}  # pair (its first client) -> when one heard the other's BACK
        both_back = [0]  # pairs whose two clients have their OK resume
        ids = {c: [] for c in clients}
        delivered = {c: 0 for c in clients}
        backs = [0]
        errors = []
        next_i = [0]
        shaking = set()  # connected or connecting, no OK resume yet
        greeted = set()  # framed: its greeting line has been read
        framed = self.dialect.framed
        started = time.monotonic_ns()
        cpu0 = time.process_time()

        def open_more():
            while len(shaking) < concurrency and next_i[0] < len(clients):
                c = clients[next_i[0]]
                next_i[0] += 1
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.sock, c.fd, c.state, c.out, c.tail = sock, sock.fileno(), "connecting", None, b""
                self.pending.pop(c, None)
                greeted.discard(c)
                sock.connect_ex((self.host, self.port))
                self.by_fd[c.fd] = c
                ep.register(c.fd, EPOLLIN | EPOLLOUT)
                shaking.add(c)

        def on_lines(c, lines):
            acks = []
            now = time.monotonic_ns()
            for line in lines:
                if line.startswith(b"MSG "):
                    ids[c].append(int(RX_MSG.match(line).group(1)))
                    acks.append(line.split(b" ", 2)[1])
                    if len(ids[c]) == count:
                        t_msgs[c] = now
                elif line.startswith(b"DELIVERED "):
                    delivered[c] += 1
                    if delivered[c] == count:
                        t_delivered[c] = now
                elif line.startswith(b"BACK "):
                    backs[0] += 1
                    if c.peer is not None and line[5:] == c.peer.nick:
                        t_back[min(c, c.peer, key=lambda x: x.index)] = now
                elif line.startswith(b"OK resume "):
                    t_ok[c] = now
                    shaking.discard(c)
                    if c.peer is not None and c.peer in t_ok:
                        both_back[0] += 1
                elif line.startswith(b"SESSION "):
                    self.tokens[c] = line.split()[1]
                elif line.startswith((b"ERR ", b"FAILED ")):
                    errors.append(line.decode("utf-8", "replace"))
                    if c in shaking:  # refused: this one will not resume
                        shaking.discard(c)
                        self._drop(c)
                        return
            if acks and self.dialect.needs_ack:
                self._send(c, frame(b"/ack " + b" ".join(acks)))

        def on_close(c):
            shaking.discard(c)

        def done():
            return (next_i[0] >= len(clients) and not shaking
                    and len(t_msgs) >= len(t_ok) and len(t_delivered) >= len(t_ok)
                    and len(t_back) >= both_back[0])

        deadline = time.monotonic() + within
        open_more()
        while not done() and time.monotonic() < deadline:
            for fd, ev in ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is None:
                    continue
                if c.state == "connecting":
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        errors.append("%s: connect failed" % c.nick.decode())
                        shaking.discard(c)
                        self._drop(c)
                        continue
                    c.state = "ready"
                    ep.modify(fd, EPOLLIN)
                    self._send(c, marker + self.dialect.wrap(b"/resume " + self.tokens[c]))
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERRS):
                    if c not in greeted and framed:
                        # The greeting is a line whatever the mode: a frame
                        # parser starts after it.
                        if not self._greeting(c):
                            continue
                        greeted.add(c)
                    lines = self._recv(c)
                    if lines is None:
                        on_close(c)
                    elif lines:
                        on_lines(c, lines)
            open_more()
        wall = (time.monotonic_ns() - started) / 1e9
        same = sum(1 for c in clients if c in self.held_ids and sorted(ids[c]) == self.held_ids[c])
        return {
            "clients": len(clients), "started": started,
            "ok": sorted(t_ok.values()), "msgs": sorted(t_msgs.values()),
            "delivered": sorted(t_delivered.values()),
            # One time per pair: when its first one back heard of the other.
            "back": sorted(t_back.values()), "pairs_back": both_back[0],
            "back_lines": backs[0], "msgs_total": sum(len(v) for v in ids.values()),
            "delivered_total": sum(delivered.values()), "same_ids": same,
            "errors": len(errors), "error_lines": errors[:5],
            "lg_cpu": (time.process_time() - cpu0) / max(wall, 1e-9),
        }

    # -- stalled readers --------------------------------------------------

    def cmd_stall(self):
        """Stop reading: output to these clients piles up at the server."""
        for c in self.clients:
            if c.sock is not None:
                try:
                    self.ep.unregister(c.fd)
                except OSError:
                    pass
        return {"stalled": sum(1 for c in self.clients if c.sock is not None)}

    def cmd_read_noack(self, start_at, duration, drain):
        """Read all that comes, through the flood and after, and never /ack."""
        msgs = [0]

        def on_lines(c, lines):
            msgs[0] += sum(1 for line in lines if line.startswith(b"MSG "))

        wait = max(0.0, (start_at - time.monotonic_ns()) / 1e9)
        cpu0, wall0 = time.process_time(), time.monotonic()
        self._pump(on_lines, lambda: False, wait + duration + drain)
        return {"readers": len(self.clients), "msgs": msgs[0],
                "closed": [c.nick.decode() for c in self.clients if c.sock is None],
                "lg_cpu": (time.process_time() - cpu0) / (time.monotonic() - wall0)}

    def cmd_flood_many(self, commands, start_at, duration, drain, until_gone=None,
                       longest=None, chunk=65536):
        """Client 0 sends ``commands`` round and round, as fast as taken.

        As ``flood``, but with several commands (to several recipients)
        and framed or not, by the dialect. It counts the replies by kind,
        and the nicks that went AWAY or LEFT: the readers the server cut off.
        With ``until_gone`` (nicks), it floods until all of those are gone,
        then ``duration`` seconds more, ``longest`` seconds at most.
        """
        c = self.clients[0]
        one = b"".join(self.dialect.wrap(cmd.encode()) for cmd in commands)
        data = memoryview(one * max(1, chunk // len(one)))
        sock = c.sock
        ep = self.ep
        ep.modify(c.fd, EPOLLIN | EPOLLOUT)
        kinds = {}
        gone = {}  # nick -> "AWAY" or "LEFT"
        pos = sent = 0
        dropped_at = None
        t0 = start_at / 1e9
        while time.monotonic() < t0:
            time.sleep(min(0.01, max(0.0, t0 - time.monotonic())))
        cpu0 = time.process_time()
        waiting = set(until_gone or ())
        all_gone_at = None
        stop_sending = t0 + (longest if waiting else duration)
        end = stop_sending + drain
        sending = True
        while dropped_at is None:
            now = time.monotonic()
            if now >= end:
                break
            if waiting and all(nick in gone for nick in waiting):
                waiting = ()
                all_gone_at = now - t0
                stop_sending = min(stop_sending, now + duration)
                end = stop_sending + drain
            if sending and now >= stop_sending:
                sending = False
                ep.modify(c.fd, EPOLLIN)
            for fd, ev in ep.poll(0.01):
                if fd != c.fd:
                    continue
                if ev & EPOLLOUT and sending:
                    try:
                        n = sock.send(data[pos:])
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except OSError:
                        dropped_at = time.monotonic() - t0
                        break
                    sent += n
                    pos = (pos + n) % len(data)
                if ev & (EPOLLIN | EPOLLERRS):
                    lines = self._recv(c)
                    if lines is None:
                        dropped_at = time.monotonic() - t0
                        break
                    for line in lines:
                        kind = line.split(b" ", 1)[0].decode("utf-8", "replace")[:16]
                        kinds[kind] = kinds.get(kind, 0) + 1
                        if kind in ("AWAY", "LEFT"):
                            gone[line.split()[1].decode()] = kind
        if dropped_at is not None:
            self._drop(c)
        return {"sent_bytes": sent, "sent_commands": sent * len(commands) // len(one),
                "seconds": min(time.monotonic(), stop_sending) - t0,
                "replies": kinds, "gone": gone, "dropped_at": dropped_at,
                "all_gone_at": all_gone_at,
                "lg_cpu": (time.process_time() - cpu0) / max(1e-9, time.monotonic() - t0)}


if __name__ == "__main__":
    main(cls=SessionLoadGen)
