"""The load generator: one process holding many client connections.

    python -m bench.loadgen '{"dialect": "line", "host": ..., "port": ..., ...}'

It is driven by the harness (``bench.procs.LoadProcess``): one JSON command
per line on stdin, one JSON reply per line on stdout (``{"event": ...}``
lines may come before the reply). Commands: ``connect``, ``throughput``,
``latency``, ``fanout``, ``who``, ``quit``. Every loop is bounded in time.

Keeping it cheaper than the server it measures:

* epoll directly, non-blocking sockets, one ``recv`` of up to 256 KiB per
  readable event;
* sends are pipelined and batched: a connection keeps a window of
  unconfirmed messages in flight and tops it up with one ``send`` of many
  prebuilt messages when half of it has been confirmed;
* replies are counted, not parsed: ``bytes.count`` of the keywords over
  what arrived, with the last few bytes of the previous read kept so that a
  keyword split between two reads is counted once. Only framed mode (which
  must ``/ack`` every ``MSG``) and the latency run use a regular expression.

Each reply says how much CPU the generator itself used against wall time,
so that a run where it, not the server, was the bottleneck says so.

Dialects: ``line`` (tcpchat line mode and both chat baselines), ``framed``
(tcpchat framed mode), ``relay`` (the relay baseline's frames), ``irc``
(miniircd: NICK/USER, PRIVMSG, and no confirmation to the sender).
"""

import collections
import errno
import gc
import json
import re
import resource
import select
import socket
import struct
import sys
import time

RECV_SIZE = 256 * 1024
# Bytes of the previous read kept in front of the next: longer than any
# keyword, and than a latency stamp "MSG ID FROM TO tNANOSx".
TAIL = 128
HEADER = struct.Struct(">I")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERRS = select.EPOLLERR | select.EPOLLHUP

MSG = b"MSG "
ERR = b"ERR "
FAILED = b"FAILED "
SENT = b"SENT "
RX_MSG_ID = re.compile(rb"MSG (\d+) ")
RX_STAMP = re.compile(rb" t(\d+)x")
RX_SENT_ID = re.compile(rb"SENT (\d+) ")
RX_DELIVERED_ID = re.compile(rb"DELIVERED (\d+) ")
# The bystanders of the flood run parse whole lines.
RX_PONG = re.compile(rb"^PONG t(\d+)x\r?$", re.M)
RX_STAMPED_MSG = re.compile(rb"^MSG \d+ \S+ \S+ t(\d+)x\r?$", re.M)
RX_LEFT = re.compile(rb"^LEFT (\S+) ?(.*?)\r?$", re.M)
# Ids per "/ack ID ID ..." frame: a read's worth of MSGs is acknowledged at
# once, as tcpchat-client does; 1000 ids stay far below --max-frame.
ACK_BATCH = 1000


def frame(payload):
    return HEADER.pack(len(payload)) + payload


class Dialect:
    """How one kind of server is spoken to."""

    def __init__(self, name, confirm):
        self.name = name
        self.framed = name in ("framed", "relay")
        self.needs_ack = name == "framed"
        self.irc = name == "irc"
        # An IRC server confirms nothing: a message counts as confirmed to
        # its sender when the partner (in this process) has read it.
        self.confirm = confirm.encode() + b" " if confirm else None
        self.registered = {"relay": b"PAIRED", "irc": b" 001 "}.get(name, b"OK nick")
        if self.irc:
            self.msg = b" PRIVMSG "
            # 401 no such nick, 432/433 bad or taken nick, ERROR: closing.
            self.bad = (b" 401 ", b" 432 ", b" 433 ", b"ERROR :")
        else:
            self.msg = MSG
            self.bad = (ERR, FAILED)

    def wrap(self, text):
        if self.framed:
            return frame(text)
        return text + (b"\r\n" if self.irc else b"\n")

    def hello(self, nick, pair_key):
        if self.name == "relay":
            return frame(b"PAIR " + pair_key)
        if self.irc:
            return b"NICK %s\r\nUSER %s 0 * :%s\r\n" % (nick, nick, nick)
        marker = b"\x00" if self.framed else b""
        return marker + self.wrap(b"/nick " + nick)

    def private(self, to, text):
        if self.name == "relay":
            return frame(b"MSG " + text)
        if self.irc:
            return b"PRIVMSG %s :%s\r\n" % (to, text)
        return self.wrap(b"/msg " + to + b" " + text)


class Client:
    __slots__ = (
        "sock", "fd", "nick", "peer", "index", "state", "regbuf", "tail", "out",
        "inflight", "msg", "first_msg", "sends", "sent_at",
    )

    def __init__(self, sock, nick, index):
        self.sock = sock
        self.fd = sock.fileno()
        self.nick = nick
        self.peer = None
        self.index = index
        self.state = "connecting"
        self.regbuf = b""
        self.tail = b""
        self.out = None  # bytearray of unsent output, or None
        self.inflight = 0
        self.msg = b""
        self.first_msg = 0
        self.sends = collections.deque()  # latency: send times awaiting SENT
        self.sent_at = {}  # latency: message id -> send time, awaiting DELIVERED


class LoadGen:
    def __init__(self, cfg):
        self.host = cfg["host"]
        self.port = cfg["port"]
        self.proc = cfg.get("index", 0)
        self.dialect = Dialect(cfg["dialect"], cfg.get("confirm", "SENT"))
        self.ep = select.epoll()
        self.by_fd = {}
        self.clients = []
        self.reset_counts()
        # Optional per-read work, switched on by the command that needs it.
        self.track_first = False
        self.track_latency = False

    def reset_counts(self):
        self.msgs = 0
        self.confirms = 0
        self.errors = 0
        self.fan_remaining = 0
        self.fan_last = 0
        self.lat_msg = []
        self.lat_confirm = []

    # -- commands ---------------------------------------------------------

    def cmd_connect(self, n, prefix, concurrency=500, timeout=60.0, rcvbuf=0):
        """Open n connections and register each (or pair, for the relay).

        ``rcvbuf``: SO_RCVBUF in bytes for the new sockets (0: the
        kernel's), small for a client that will stop reading.
        """
        base = len(self.clients)
        new = []
        started = time.monotonic_ns()
        deadline = time.monotonic() + timeout
        next_i = 0
        busy = 0
        done = 0
        failed = 0
        ep = self.ep
        while done + failed < n and time.monotonic() < deadline:
            while busy < concurrency and next_i < n:
                i = base + next_i
                nick = ("%sp%dn%d" % (prefix, self.proc, i)).encode()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if rcvbuf:  # before connect: it sets the window offered
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                c = Client(sock, nick, i)
                err = sock.connect_ex((self.host, self.port))
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    failed += 1
                else:
                    self.by_fd[c.fd] = c
                    ep.register(c.fd, EPOLLOUT | EPOLLIN)
                    new.append(c)
                    busy += 1
                next_i += 1
            for fd, ev in ep.poll(0.05):
                c = self.by_fd.get(fd)
                if c is None or c.state == "ready":
                    continue
                if c.state == "connecting":
                    if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self._drop(c)
                        busy -= 1
                        failed += 1
                        continue
                    c.state = "registering"
                    ep.modify(fd, EPOLLIN)
                    key = ("%d-%d" % (self.proc, c.index // 2)).encode()
                    c.sock.send(self.dialect.hello(c.nick, key))
                    continue
                try:
                    data = c.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(c)
                    busy -= 1
                    failed += 1
                    continue
                c.regbuf += data
                if self.dialect.registered in c.regbuf:
                    c.state = "ready"
                    self.on_registered(c, c.regbuf)
                    c.regbuf = b""
                    busy -= 1
                    done += 1
                elif any(bad in c.regbuf for bad in self.dialect.bad):
                    self._drop(c)
                    busy -= 1
                    failed += 1
        ended = time.monotonic_ns()
        ready = [c for c in new if c.state == "ready"]
        for c in new:
            if c.state != "ready" and c.sock is not None:
                self._drop(c)
        self.clients.extend(ready)
        # Partners are neighbours: 0-1, 2-3, ... (within this process).
        for a, b in zip(ready[0::2], ready[1::2]):
            a.peer, b.peer = b, a
        return {"started": started, "ended": ended, "registered": done,
                "failed": n - done, "total": len(self.clients),
                "first": ready[0].nick.decode() if ready else None}

    def on_registered(self, c, said):
        """``c`` has registered; ``said`` is what the server said until then."""

    def cmd_throughput(self, warmup, duration, window, text_size=32, drain=5.0, pace=0.0003):
        """Pairs send each other private messages as fast as they are taken."""
        pairs = [c for c in self.clients if c.peer is not None]
        text = b"x" * text_size
        for c in pairs:
            c.msg = self.dialect.private(c.peer.nick, text)
            c.inflight = 0
        self.reset_counts()
        refill_at = window // 2
        ep = self.ep
        by_fd = self.by_fd
        read = self._read
        by_self = self.dialect.confirm is not None
        t0 = time.monotonic()
        cpu0 = time.process_time()
        for c in pairs:
            c.inflight = window
            self._send(c, c.msg * window)
        t_measure = t0 + warmup
        t_end = t_measure + duration
        snap = None
        sending = True
        now = t0
        drain_end = t_end + drain
        while now < drain_end:
            # A server that writes many small segments would have the
            # generator wake per segment and spend more CPU than the server;
            # letting replies gather for a fraction of a millisecond makes
            # each wake-up count many. The window keeps the server busy.
            if pace:
                time.sleep(pace)
            for fd, ev in ep.poll(0.05):
                c = by_fd.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERRS):
                    done = read(c)
                    # Whose window moved: c's, or (IRC) its partner's.
                    owner = c if by_self else c.peer
                    if done and sending and owner is not None and owner.inflight <= refill_at:
                        k = window - owner.inflight
                        owner.inflight = window
                        self._send(owner, owner.msg * k)
            now = time.monotonic()
            if snap is None and now >= t_measure:
                snap = (self.msgs, self.confirms, now)
            if sending and now >= t_end:
                sending = False
                result = {
                    "delivered": self.msgs - snap[0],
                    "confirmed": self.confirms - snap[1],
                    "seconds": now - snap[2],
                    "lg_cpu": (time.process_time() - cpu0) / (now - t0),
                }
            # Done when every message is confirmed and, since a baseline may
            # confirm before its MSG has been read, every MSG is in too.
            if (not sending and self.msgs >= self.confirms - self.errors
                    and not any(c.inflight > 0 for c in pairs)):
                break
        result.update({
            "delivered_total": self.msgs,
            "confirmed_total": self.confirms,
            "errors": self.errors,
            "unconfirmed": sum(max(c.inflight, 0) for c in pairs),
        })
        return result

    def cmd_latency(self, duration, rate, start_at=None, drain=5.0):
        """Every client sends `rate` messages a second to its partner.

        ``start_at`` (CLOCK_MONOTONIC ns, the same in every process) lines the
        load processes up, so that none is busy starting or reporting while
        another is still measuring. The samples are fetched afterwards with
        the ``samples`` command, for the same reason.
        """
        senders = [c for c in self.clients if c.peer is not None]
        n = len(senders)
        self.reset_counts()
        self.track_latency = True
        for c in senders:
            c.sends.clear()
            c.sent_at.clear()
        total = int(n * rate * duration)
        per_second = n * rate
        ep = self.ep
        by_fd = self.by_fd
        read = self._read
        framed = self.dialect.framed
        relay = self.dialect.name == "relay"
        t0 = start_at or time.monotonic_ns() + 50_000_000
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        s = 0
        end = (t0 + duration * 1e9 + drain * 1e9)
        while True:
            now = time.monotonic_ns()
            due = min(total, int((now - t0) * per_second / 1e9) + 1) if now >= t0 else 0
            while s < due:
                c = senders[s % n]
                stamp = time.monotonic_ns()
                if relay:
                    data = frame(b"MSG t%dx" % stamp)
                elif framed:
                    data = frame(b"/msg %s t%dx" % (c.peer.nick, stamp))
                else:
                    data = b"/msg %s t%dx\n" % (c.peer.nick, stamp)
                c.sends.append(stamp)
                self._send(c, data)
                s += 1
            if s >= total and self.msgs >= total and self.confirms >= total:
                break
            if now > end:
                break
            if s < total:
                wait = max(0.0, (t0 + (s / per_second) * 1e9 - time.monotonic_ns()) / 1e9)
            else:
                wait = 0.05
            for fd, ev in ep.poll(min(wait, 0.05)):
                c = by_fd.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERRS):
                    read(c)
        wall = time.monotonic() - wall0
        self.track_latency = False
        return {
            "sent": s, "delivered": self.msgs, "confirmed": self.confirms,
            "errors": self.errors, "lg_cpu": (time.process_time() - cpu0) / wall,
        }

    def cmd_samples(self):
        """The latency samples (ns) of the last latency run."""
        return {"lat_msg": self.lat_msg, "lat_confirm": self.lat_confirm}

    def cmd_fanout(self, send, timeout=30.0):
        """Wait until every client here has one MSG; client 0 sends the /all."""
        self.reset_counts()
        for c in self.clients:
            c.first_msg = 0
        sender = self.clients[0] if send else None
        self.fan_remaining = len(self.clients) - (1 if send else 0)
        self.track_first = True
        if not send:
            reply({"event": "armed"})
        ep = self.ep
        by_fd = self.by_fd
        t_send = None
        confirmed = None
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        if send:
            sender.first_msg = -1  # it is not a recipient
            t_send = time.monotonic_ns()
            self._send(sender, self.dialect.wrap(b"/all fan-out"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.fan_remaining <= 0 and (not send or confirmed is not None):
                break
            for fd, ev in ep.poll(0.05):
                c = by_fd.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERRS):
                    self._read(c)
                    if c is sender and confirmed is None and self.confirms:
                        confirmed = time.monotonic_ns()
        self.track_first = False
        wall = time.monotonic() - wall0
        got = sum(1 for c in self.clients if c.first_msg > 0)
        return {"t_send": t_send, "last": self.fan_last, "received": got,
                "expected": len(self.clients) - (1 if send else 0),
                "confirmed": confirmed, "errors": self.errors,
                # Over a few milliseconds any busy process looks saturated.
                "lg_cpu": (time.process_time() - cpu0) / wall if wall >= 0.05 else None}

    def cmd_who(self, count, timeout=30.0):
        """Client 0 asks /who `count` times, one after the other."""
        c = self.clients[0]
        poller = select.poll()
        poller.register(c.fd, select.POLLIN)
        times = []
        lines = 0
        deadline = time.monotonic() + timeout
        request = self.dialect.wrap(b"/who")
        token = b"OK who"
        for _ in range(count):
            tail = b""
            t0 = time.monotonic_ns()
            self._send(c, request)
            done = False
            while not done and time.monotonic() < deadline:
                if not poller.poll(50):
                    continue
                data = c.sock.recv(RECV_SIZE)
                if not data:
                    return {"error": "connection closed during /who"}
                buf = tail + data
                lines += buf.count(b"USER ") - tail.count(b"USER ")
                done = buf.count(token) > tail.count(token)
                tail = buf[-TAIL:]
            if not done:
                break
            times.append(time.monotonic_ns() - t0)
        return {"times": times, "user_lines": lines}

    # -- the flood scenario: readers, one flooder, a bystander pair ---------

    def cmd_flood_read(self, start_at, duration, drain):
        """Every client here reads all that comes, through the flood and after.

        Returns the nicks of those the server closed: well-behaved readers
        that a flood got dropped.
        """
        self.reset_counts()
        ep = self.ep
        by_fd = self.by_fd
        read = self._read
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        end = wall0 + max(0.0, (start_at - time.monotonic_ns()) / 1e9) + duration + drain
        while time.monotonic() < end:
            for fd, ev in ep.poll(0.05):
                c = by_fd.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERRS):
                    read(c)
        wall = time.monotonic() - wall0
        return {"readers": len(self.clients), "msgs": self.msgs,
                "closed": [c.nick.decode() for c in self.clients if c.sock is None],
                "lg_cpu": (time.process_time() - cpu0) / wall}

    def cmd_flood(self, command, answer, start_at, duration, drain, chunk=65536):
        """Client 0 sends ``command`` over and over, as fast as it is taken.

        Sends never block (the server may stop reading it: that is what
        flood control does); what comes back is read and counted, so it is
        never cut off for not reading. It stops sending after ``duration``
        and reading after ``drain`` more, or when the server closes it.
        """
        c = self.clients[0]
        line = command.encode() + b"\n"
        data = memoryview(line * max(1, chunk // len(line)))
        answer = answer.encode()
        sock = c.sock
        ep = self.ep
        ep.modify(c.fd, EPOLLIN | EPOLLOUT)
        pos = 0
        sent = 0
        answered = 0
        errors = 0
        tail = b""
        last = b""
        dropped_at = None
        t0 = start_at / 1e9
        while time.monotonic() < t0:
            time.sleep(min(0.01, max(0.0, t0 - time.monotonic())))
        cpu0 = time.process_time()
        stop_sending = t0 + duration
        end = stop_sending + drain
        sending = True
        while True:
            now = time.monotonic()
            if now >= end:
                break
            if sending and now >= stop_sending:
                sending = False
                ep.modify(c.fd, EPOLLIN)
            for fd, ev in ep.poll(0.01):
                if ev & EPOLLOUT and sending:
                    try:
                        n = sock.send(data[pos:])
                    except (BlockingIOError, InterruptedError):
                        n = 0
                    except OSError:
                        dropped_at = time.monotonic() - t0
                        break
                    sent += n
                    pos += n
                    if pos == len(data):
                        pos = 0
                if ev & (EPOLLIN | EPOLLERRS):
                    try:
                        got = sock.recv(RECV_SIZE)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        got = b""
                    if not got:
                        dropped_at = time.monotonic() - t0
                        break
                    buf = tail + got
                    answered += buf.count(answer) - tail.count(answer)
                    errors += buf.count(ERR) - tail.count(ERR)
                    tail = buf[-TAIL:]
                    last = got
            if dropped_at is not None:
                break
        cpu = time.process_time() - cpu0
        if dropped_at is not None:
            self._drop(c)
        # The end of what the server said last: why it closed, if it did.
        said = last[-300:].decode("utf-8", "replace").strip().splitlines()
        return {"sent_bytes": sent, "sent_lines": sent // len(line), "answered": answered,
                "errors": errors, "dropped_at": dropped_at, "last_line": said[-1] if said else "",
                "lg_cpu": cpu / max(1e-9, time.monotonic() - t0)}

    def cmd_bystand(self, start_at, duration, rate, drain):
        """A pair that keeps chatting through the flood, and times it.

        Each of the two sends ``/ping tNANOSx`` and a private message
        ``tNANOSx`` to the other, ``rate`` of each a second, spread evenly;
        a PONG or MSG carrying its stamp back gives one round trip. Replies
        are parsed by whole lines, since a flood of ``/all`` lands in the
        same stream.
        """
        pair = [c for c in self.clients[:2]]
        for c in pair:
            c.regbuf = b""
        ep = self.ep
        by_fd = self.by_fd
        per_second = 4 * rate  # 2 clients x (ping + message)
        total = int(per_second * duration)
        ping_lat = []
        msg_lat = []
        left = {}  # nick -> the reason its LEFT gave
        pings = msgs = 0
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        t0 = start_at
        end = t0 + int((duration + drain) * 1e9)
        s = 0
        while True:
            now = time.monotonic_ns()
            if now >= end:
                break
            due = min(total, (now - t0) * per_second // 1_000_000_000 + 1) if now >= t0 else 0
            while s < due:
                c = pair[s % 2]
                stamp = time.monotonic_ns()
                if (s // 2) % 2 == 0:
                    self._send(c, b"/ping t%dx\n" % stamp)
                    pings += 1
                else:
                    self._send(c, b"/msg %s t%dx\n" % (c.peer.nick, stamp))
                    msgs += 1
                s += 1
            if s >= total and len(ping_lat) >= pings and len(msg_lat) >= msgs:
                break
            if any(c.sock is None for c in pair):
                break
            if s < total:
                wait = max(0.0, (t0 + s * 1e9 / per_second - time.monotonic_ns()) / 1e9)
            else:
                wait = 0.05
            for fd, ev in ep.poll(min(wait, 0.05)):
                c = by_fd.get(fd)
                if c is None:
                    continue
                if ev & EPOLLOUT:
                    self._flush(c)
                if not ev & (EPOLLIN | EPOLLERRS):
                    continue
                try:
                    data = c.sock.recv(RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(c)
                    continue
                at = time.monotonic_ns()
                buf = c.regbuf + data
                cut = buf.rfind(b"\n") + 1
                whole, c.regbuf = buf[:cut], buf[cut:]
                if len(c.regbuf) > RECV_SIZE:  # no line is this long
                    c.regbuf = b""
                ping_lat.extend([at - int(x) for x in RX_PONG.findall(whole)])
                msg_lat.extend([at - int(x) for x in RX_STAMPED_MSG.findall(whole)])
                if b"LEFT " in whole:
                    for nick, why in RX_LEFT.findall(whole):
                        left[nick.decode()] = why.decode("utf-8", "replace")
        wall = time.monotonic() - wall0
        return {"pings": pings, "msgs": msgs, "ping_lat": ping_lat, "msg_lat": msg_lat,
                "left": left, "dropped": sum(1 for c in pair if c.sock is None),
                "lg_cpu": (time.process_time() - cpu0) / wall}

    def cmd_quit(self):
        for c in self.clients:
            if c.sock is not None:
                # Reset instead of FIN: 10,000 sockets left in TIME_WAIT
                # would eat the loopback's ephemeral ports for a minute.
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self._drop(c)
        self.clients = []
        return {}

    # -- I/O --------------------------------------------------------------

    def _read(self, c):
        """Count what arrived on c; return how many messages were confirmed.

        Whose messages: c's own, or with an IRC server (which confirms
        nothing), its partner's, which c has just read.
        """
        try:
            data = c.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return 0
        tail = c.tail
        buf = tail + data if tail else data
        dialect = self.dialect
        keyword = dialect.msg
        msgs = buf.count(keyword)
        confirm = dialect.confirm
        confirmed = buf.count(confirm) if confirm else 0
        bad = 0
        for word in dialect.bad:
            bad += buf.count(word)
        if tail:
            msgs -= tail.count(keyword)
            if confirm:
                confirmed -= tail.count(confirm)
            for word in dialect.bad:
                bad -= tail.count(word)
        c.tail = buf[-TAIL:]
        if msgs:
            self.msgs += msgs
            if dialect.needs_ack:
                ids = RX_MSG_ID.findall(buf)
                if tail:
                    ids = ids[len(RX_MSG_ID.findall(tail)):]
                self._send(c, b"".join([frame(b"/ack " + b" ".join(ids[k:k + ACK_BATCH]))
                                        for k in range(0, len(ids), ACK_BATCH)]))
            if self.track_first and c.first_msg == 0:
                c.first_msg = self.fan_last = time.monotonic_ns()
                self.fan_remaining -= 1
            if confirm is None:
                confirmed = msgs
        if self.track_latency:
            self._latency(c, buf, tail)
        if bad:
            self.errors += bad
            confirmed += bad  # an ERR or FAILED answers a message too
        if confirmed:
            self.confirms += confirmed
            if confirm is None and c.peer is not None:
                c.peer.inflight -= confirmed
            else:
                c.inflight -= confirmed
        return confirmed

    def _latency(self, c, buf, tail):
        now = time.monotonic_ns()
        stamps = RX_STAMP.findall(buf)
        if tail:
            stamps = stamps[len(RX_STAMP.findall(tail)):]
        self.lat_msg.extend([now - int(s) for s in stamps])
        if self.dialect.confirm == SENT:
            # SENT is the acknowledgement: only how many, in send order.
            for _ in range(buf.count(SENT) - tail.count(SENT)):
                if c.sends:
                    self.lat_confirm.append(now - c.sends.popleft())
        else:
            # SENT gives the id that DELIVERED will name.
            sent = RX_SENT_ID.findall(buf)
            if tail:
                sent = sent[len(RX_SENT_ID.findall(tail)):]
            for msg_id in sent:
                if c.sends:
                    c.sent_at[msg_id] = c.sends.popleft()
            done = RX_DELIVERED_ID.findall(buf)
            if tail:
                done = done[len(RX_DELIVERED_ID.findall(tail)):]
            for msg_id in done:
                stamp = c.sent_at.pop(msg_id, None)
                if stamp is not None:
                    self.lat_confirm.append(now - stamp)

    def _send(self, c, data):
        if c.sock is None or not data:
            return
        if c.out is not None:
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._drop(c)
            return
        if n < len(data):
            c.out = bytearray(data[n:])
            self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    def _flush(self, c):
        if c.sock is None or c.out is None:
            return
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        del c.out[:n]
        if not c.out:
            c.out = None
            self.ep.modify(c.fd, EPOLLIN)

    def _drop(self, c):
        if c.sock is None:
            return
        self.by_fd.pop(c.fd, None)
        try:
            self.ep.unregister(c.fd)
        except OSError:
            pass
        c.sock.close()
        c.sock = None
        c.state = "closed"


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def raise_open_files_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def main(argv=None, cls=None):
    """Serve commands with a LoadGen, or with ``cls``, a subclass of it."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(argv[0])
    limit = raise_open_files_limit()
    # The generator makes no garbage cycles worth collecting, and a
    # collector pause in here would be counted as the server's latency.
    gc.disable()
    gen = (cls or LoadGen)(cfg)
    reply({"event": "started", "nofile": limit})
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        try:
            result = getattr(gen, "cmd_" + name)(**cmd)
        except Exception as exc:  # reported to the harness, which fails the run
            result = {"error": "%s: %s" % (type(exc).__name__, exc)}
        reply(result)
        if name == "quit":
            break


if __name__ == "__main__":
    main()
