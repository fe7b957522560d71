"""python -m bench.tls [--quick]: what TLS costs tcpchat-server, beside plain TCP.

One tcpchat-server listens on both ports (``--port 0 --tls-port 0``, a
throwaway ECDSA P-256 certificate made with the openssl command, as certbot
makes by default); the same load generator drives it over plain TCP and
over TLS, so that the difference is TLS alone. Figures:

1. Throughput: P pairs messaging each other with a window of unconfirmed
   messages, line and framed mode: delivered messages a second and the
   server's CPU time per delivered message.
2. Connections: N clients connect (TLS: handshake), read the greeting and
   register, C at a time: how long the storm takes, the server's CPU per
   connection (the handshake rate), and its resident memory per idle
   connection, right after and again once every connection has moved
   16 KiB or so each way (what a TLS connection keeps once quiet).

Server CPU and memory come from /proc, as in ``python -m bench``.
``--markdown FILE`` writes the report (bench/RESULTS-tls.md).

Reading the figures: rates depend on the CPU the machine leaves to the
server and the generator (its load average is in the header), server CPU
per message is the steadiest figure. The connect storm's rate is bounded
by the one Python load process, which does the client half of every
handshake; what the server itself could take is the "one core" row.
"""

import argparse
import json
import os
import re
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

from bench import procs
from bench.report import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TLS_LISTENING = re.compile(r"listening for TLS on (\S+):(\d+)")
HEADER = struct.Struct(">I")
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

PLANS = {
    "full": {"pairs": (10, 100), "framings": (False, True), "seconds": 3.0, "warmup": 0.5,
             "connections": 1000, "concurrency": 50},
    "quick": {"pairs": (10,), "framings": (False, True), "seconds": 1.0, "warmup": 0.3,
              "connections": 1000, "concurrency": 50},
    # Proves only that it all works (tests/test_tls.py runs it).
    "tiny": {"pairs": (2,), "framings": (False,), "seconds": 0.2, "warmup": 0.05,
             "connections": 20, "concurrency": 10},
}


# ------------------------------------------------------------ load generator


class Client:
    __slots__ = ("sock", "nick", "state", "buf", "out", "peer", "inflight", "framed",
                 "want_write", "acks")

    def __init__(self, sock, nick, framed):
        self.sock = sock
        self.nick = nick
        self.state = "connecting"
        self.buf = b""
        self.out = bytearray()
        self.peer = None
        self.inflight = 0
        self.framed = framed
        self.want_write = True
        self.acks = []


def frame(payload):
    return HEADER.pack(len(payload)) + payload


class Load:
    """One process of clients, plain or TLS, driven by JSON lines."""

    def __init__(self, host, port, use_tls, framed):
        self.host = host
        self.port = port
        self.ctx = None
        if use_tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE  # the run's own throwaway certificate
        self.framed = framed
        self.sel = selectors.DefaultSelector()
        self.clients = []
        self.msgs = self.confirms = self.errors = 0

    def wrap(self, text):
        return frame(text) if self.framed else text + b"\n"

    # -- I/O --
    def _interest(self, c):
        want = READ | (WRITE if (c.out or c.state in ("connecting", "handshake")) else 0)
        self.sel.modify(c.sock, want, c)

    def _flush(self, c):
        if c.out:
            try:
                n = c.sock.send(c.out[:65536])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            del c.out[:n]
        want = bool(c.out)
        if want != c.want_write:
            c.want_write = want
            self._interest(c)

    def send(self, c, data):
        c.out += data
        self._flush(c)

    def recv(self, c):
        """What arrived (b"" when closed, None when nothing yet)."""
        sock = c.sock
        parts = []
        size = 0
        while size < 262144:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                data = b""
            if not data:
                if not parts:
                    return b""
                break
            parts.append(data)
            size += len(data)
            if self.ctx is None and len(data) < 65536:
                break
        return b"".join(parts) if parts else None

    def messages(self, c, data):
        """Complete messages in c's input so far."""
        c.buf += data
        if not self.framed:
            *lines, c.buf = c.buf.split(b"\n")
            return lines
        out = []
        buf = c.buf
        pos = 0
        while len(buf) - pos >= 4:
            n = HEADER.unpack_from(buf, pos)[0]
            if len(buf) - pos - 4 < n:
                break
            out.append(buf[pos + 4:pos + 4 + n])
            pos += 4 + n
        c.buf = buf[pos:]
        return out

    # -- commands --
    def cmd_connect(self, n, concurrency, prefix, timeout=120.0):
        started = time.monotonic_ns()
        deadline = time.monotonic() + timeout
        waiting = list(range(n))
        busy = done = failed = 0
        while (done + failed) < n and time.monotonic() < deadline:
            while busy < concurrency and waiting:
                i = waiting.pop()
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect_ex((self.host, self.port))
                c = Client(sock, ("%s%d" % (prefix, i)).encode(), self.framed)
                self.sel.register(sock, READ | WRITE, c)
                busy += 1
            for key, mask in self.sel.select(0.05):
                c = key.data
                if c.state == "ready":
                    if mask & WRITE:
                        self._flush(c)
                    continue
                result = self._connect_step(c, mask)
                if result is None:
                    continue
                busy -= 1
                if result:
                    done += 1
                    self.clients.append(c)
                else:
                    failed += 1
        ended = time.monotonic_ns()
        for a, b in zip(self.clients[0::2], self.clients[1::2]):
            a.peer, b.peer = b, a
        return {"started": started, "ended": ended, "registered": done, "failed": failed}

    def _connect_step(self, c, mask):
        """Advance one client; True when registered, False when failed."""
        try:
            if c.state == "connecting":
                if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    raise OSError("connect failed")
                if self.ctx is not None:
                    self.sel.unregister(c.sock)
                    c.sock = self.ctx.wrap_socket(c.sock, do_handshake_on_connect=False)
                    self.sel.register(c.sock, READ | WRITE, c)
                    c.state = "handshake"
                else:
                    c.state = "greeting"
                    self.sel.modify(c.sock, READ, c)
                    c.want_write = False
            if c.state == "handshake":
                try:
                    c.sock.do_handshake()
                except ssl.SSLWantReadError:
                    self.sel.modify(c.sock, READ, c)
                    return None
                except ssl.SSLWantWriteError:
                    self.sel.modify(c.sock, READ | WRITE, c)
                    return None
                c.state = "greeting"
                self.sel.modify(c.sock, READ, c)
                c.want_write = False
            data = self.recv(c)
            if data is None:
                return None
            if not data:
                raise OSError("closed")
            c.buf += data
            if c.state == "greeting":
                if b"\n" not in c.buf:
                    return None
                c.buf = c.buf.partition(b"\n")[2]
                c.state = "registering"
                hello = b"\x00" if self.framed else b""
                self.send(c, hello + self.wrap(b"/nick " + c.nick))
            if c.state == "registering" and b"OK nick" in c.buf:
                c.buf = b""
                c.state = "ready"
                return True
            if b"ERR " in c.buf:
                raise OSError("refused: %r" % c.buf[:80])
            return None
        except OSError:
            try:
                self.sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
            return False

    def cmd_traffic(self, pings=64, timeout=60.0):
        """Every client sends pings (about 16 KiB) and one /who, and reads
        every answer: each connection moves a burst each way, then idles."""
        token = b"p" * 250
        request = b"".join(self.wrap(b"/ping " + token) for _ in range(pings))
        request += self.wrap(b"/who")
        left = {c: True for c in self.clients}
        for c in self.clients:
            self.send(c, request)
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for key, mask in self.sel.select(0.05):
                c = key.data
                if mask & WRITE:
                    self._flush(c)
                if mask & READ:
                    data = self.recv(c)
                    if data:
                        if any(m.startswith(b"OK who") for m in self.messages(c, data)):
                            left.pop(c, None)
        return {"unanswered": len(left)}

    def cmd_throughput(self, warmup, seconds, window, text_size=32):
        pairs = [c for c in self.clients if c.peer is not None]
        text = b"x" * text_size
        msg = {c: self.wrap(b"/msg " + c.peer.nick + b" " + text) for c in pairs}
        for c in pairs:
            c.inflight = window
            self.send(c, msg[c] * window)
        t0 = time.monotonic()
        cpu0 = time.process_time()
        t_measure, t_end = t0 + warmup, t0 + warmup + seconds
        snap = None
        result = None
        sending = True
        while True:
            now = time.monotonic()
            if snap is None and now >= t_measure:
                snap = (self.msgs, self.confirms, now)
            if sending and now >= t_end:
                sending = False
                result = {"delivered": self.msgs - snap[0], "confirmed": self.confirms - snap[1],
                          "seconds": now - snap[2],
                          "lg_cpu": (time.process_time() - cpu0) / (now - t0)}
            if not sending and not any(c.inflight > 0 for c in pairs):
                break
            if now > t_end + 10:
                break
            # As bench/loadgen.py does: let replies gather for a fraction of
            # a millisecond, so the generator, not the server, stays cheap.
            time.sleep(0.0003)
            for key, mask in self.sel.select(0.05):
                c = key.data
                if mask & WRITE:
                    self._flush(c)
                if not mask & READ:
                    continue
                data = self.recv(c)
                if not data:
                    continue
                confirmed = 0
                acks = []
                for m in self.messages(c, data):
                    if m.startswith(b"MSG "):
                        self.msgs += 1
                        if self.framed:
                            acks.append(m.split(b" ", 2)[1])
                    elif m.startswith(b"DELIVERED "):
                        confirmed += 1
                    elif m.startswith((b"ERR ", b"FAILED ")):
                        self.errors += 1
                        confirmed += 1
                if acks:
                    self.send(c, self.wrap(b"/ack " + b" ".join(acks)))
                if confirmed:
                    self.confirms += confirmed
                    c.inflight -= confirmed
                    if sending and c.inflight <= window // 2:
                        k = window - c.inflight
                        c.inflight = window
                        self.send(c, msg[c] * k)
        result.update({"errors": self.errors, "unconfirmed": sum(c.inflight for c in pairs),
                       "delivered_total": self.msgs})
        return result

    def cmd_quit(self):
        for c in self.clients:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.sock.close()
        self.clients = []
        return {}


def load_main(cfg):
    load = Load(cfg["host"], cfg["port"], cfg["tls"], cfg["framed"])
    print(json.dumps({"event": "started"}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        try:
            reply = getattr(load, "cmd_" + name)(**cmd)
        except Exception as e:  # reported to the harness, which stops
            reply = {"error": "%s: %s" % (type(e).__name__, e)}
        print(json.dumps(reply), flush=True)
        if name == "quit":
            return 0
    return 0


class LoadProcess(procs.LoadProcess):
    """bench.procs' driver, starting this module's load generator."""

    def __init__(self, port, use_tls, framed):
        cfg = {"host": "127.0.0.1", "port": port, "tls": use_tls, "framed": framed}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tls", "--load", json.dumps(cfg)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._buf = b""
        self.expect_event("started", 15.0)


# ------------------------------------------------------------------ harness


def make_certificate(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return cert, key


def start_server(cert, key):
    # At --log-level warning (the bench's "quiet" variant): a log line per
    # message costs the same with TLS or without, and would hide the difference.
    srv = procs.ServerProcess("tcpchat", variant="quiet", extra=[
        "--tls-cert", cert, "--tls-key", key, "--tls-port", "0", "--max-clients", "20000",
        "--max-per-address", "0"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in list(srv.log):
            m = TLS_LISTENING.search(line)
            if m:
                srv.tls_port = int(m.group(2))
                return srv
        time.sleep(0.02)
    srv.stop()
    raise procs.BenchError("no TLS port: %s" % " | ".join(srv.log))


def throughput(cert, key, pairs, use_tls, framed, plan):
    window = max(16, min(256, 16384 // (2 * pairs)))
    with start_server(cert, key) as srv:
        lp = LoadProcess(srv.tls_port if use_tls else srv.port, use_tls, framed)
        try:
            lp.send("connect", n=2 * pairs, concurrency=50, prefix="u")
            r = lp.reply(120)
            if r["registered"] != 2 * pairs:
                raise procs.BenchError("only %d of %d registered" % (r["registered"], 2 * pairs))
            cpu0 = srv.cpu_seconds()
            lp.send("throughput", warmup=plan["warmup"], seconds=plan["seconds"], window=window)
            r = lp.reply(plan["warmup"] + plan["seconds"] + 60)
            cpu1 = srv.cpu_seconds()
        finally:
            lp.close()
    return {"delivered_per_s": r["delivered"] / r["seconds"],
            "cpu_us_per_msg": (cpu1 - cpu0) / max(r["delivered_total"], 1) * 1e6,
            "lg_cpu": r["lg_cpu"], "ok": r["errors"] == 0 and r["unconfirmed"] == 0}


def connections(cert, key, n, concurrency, use_tls):
    with start_server(cert, key) as srv:
        lp = LoadProcess(srv.tls_port if use_tls else srv.port, use_tls, False)
        try:
            rss0, cpu0 = srv.rss_kib(), srv.cpu_seconds()
            lp.send("connect", n=n, concurrency=concurrency, prefix="c")
            r = lp.reply(300)
            rss1, cpu1 = srv.rss_kib(), srv.cpu_seconds()
            lp.send("traffic")
            t = lp.reply(300)
            rss2 = srv.rss_kib()
        finally:
            lp.close()
    storm = (r["ended"] - r["started"]) / 1e9
    return {"storm_s": storm, "per_s": r["registered"] / storm,
            "cpu_ms_per_conn": (cpu1 - cpu0) / max(r["registered"], 1) * 1e3,
            "rss_kib_per_conn": (rss1 - rss0) / max(r["registered"], 1),
            "rss_kib_per_conn_after": (rss2 - rss0) / max(r["registered"], 1),
            "ok": r["registered"] == n and t["unanswered"] == 0}


def run(plan_name, progress):
    plan = PLANS[plan_name]
    results = []
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_certificate(d)
        for framed in plan["framings"]:
            for pairs in plan["pairs"]:
                for use_tls in (False, True):
                    label = "throughput %s P=%d %s" % ("framed" if framed else "line", pairs,
                                                       "TLS" if use_tls else "plain")
                    progress(label)
                    r = throughput(cert, key, pairs, use_tls, framed, plan)
                    results.append(dict(r, scenario="throughput", framed=framed, size=pairs,
                                        tls=use_tls))
        for use_tls in (False, True):
            progress("connections N=%d %s" % (plan["connections"], "TLS" if use_tls else "plain"))
            r = connections(cert, key, plan["connections"], plan["concurrency"], use_tls)
            results.append(dict(r, scenario="connections", size=plan["connections"],
                                tls=use_tls))
    return results


def table(results):
    lines = ["%-40s %14s %14s %8s" % ("", "plain", "TLS", "TLS/plain")]

    def row(label, pick, key, fmt):
        plain = pick(False)[key]
        secure = pick(True)[key]
        lines.append("%-40s %14s %14s %7.2fx" % (label, fmt % plain, fmt % secure,
                                                  secure / plain if plain else 0))

    for framed in sorted({r["framed"] for r in results if r["scenario"] == "throughput"}):
        for size in sorted({r["size"] for r in results if r["scenario"] == "throughput"}):
            def pick(t, framed=framed, size=size):
                return [r for r in results if r["scenario"] == "throughput"
                        and r["framed"] == framed and r["size"] == size and r["tls"] == t][0]
            mode = "framed" if framed else "line"
            row("%s, P=%d pairs: delivered msg/s" % (mode, size), pick, "delivered_per_s",
                "%.0f")
            row("%s, P=%d pairs: server CPU us/msg" % (mode, size), pick, "cpu_us_per_msg",
                "%.2f")
            row("%s, P=%d pairs: load generator CPU" % (mode, size), pick, "lg_cpu", "%.2f")
    conns = [r for r in results if r["scenario"] == "connections"]
    if conns:
        def pick(t):
            return [r for r in conns if r["tls"] == t][0]
        n = conns[0]["size"]
        row("%d connects: storm s" % n, pick, "storm_s", "%.2f")
        row("%d connects: connects/s" % n, pick, "per_s", "%.0f")
        row("%d connects: server CPU ms/connect" % n, pick, "cpu_ms_per_conn", "%.3f")
        for r in conns:
            r["server_bound_per_s"] = 1000.0 / r["cpu_ms_per_conn"] if r["cpu_ms_per_conn"] else 0
        row("connects/s one core could serve (1/CPU)", pick, "server_bound_per_s", "%.0f")
        row("RSS KiB per idle connection", pick, "rss_kib_per_conn", "%.1f")
        row("RSS KiB per idle connection, after traffic", pick, "rss_kib_per_conn_after", "%.1f")
    bad = [r for r in results if not r["ok"]]
    if bad:
        lines.append("NOT OK: %s" % bad)
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--load"]:
        return load_main(json.loads(argv[1]))
    p = argparse.ArgumentParser(prog="python -m bench.tls", description=__doc__.split("\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="plan", action="store_const", const="quick")
    size.add_argument("--tiny", dest="plan", action="store_const", const="tiny")
    p.set_defaults(plan="full")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    results = run(args.plan, lambda text: print("bench.tls: " + text, file=sys.stderr,
                                                flush=True))
    m = machine()
    head = ("tcpchat TLS benchmark (%s run): %s, %d cores (%s), Python %s, %s, load %.2f "
            "before, %.2f after" % (args.plan, m["date"], m["cores"], m["cpu"], m["python"],
                                    ssl.OPENSSL_VERSION, load, os.getloadavg()[0]))
    text = head + "\n\n" + table(results)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "plan": args.plan, "results": results}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# TLS benchmark results\n\nThe latest %s run of `python -m bench.tls%s`."
                    "\n\n```\n%s\n```\n\n%s" % (args.plan, {"full": "", "quick": " --quick",
                                                            "tiny": " --tiny"}[args.plan],
                                                text, __doc__.split("\n\n", 1)[1]))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
