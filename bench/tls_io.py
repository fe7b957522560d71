"""Which way to drive TLS in a selectors loop: the measurement behind
tcpchat/tls.py's choice.

    python -m bench.tls_io [--connections N] [--seconds S]

Two echo servers that differ only in how they drive OpenSSL, each run as
its own process and measured from /proc:

* ``bio``: ``SSLContext.wrap_bio`` with two ``ssl.MemoryBIO``, as asyncio's
  sslproto.py does: the loop moves ciphertext between the socket and the
  BIOs itself (one ``recv``/``send`` per event, whatever the record count).
* ``socket``: a non-blocking ``SSLSocket``: OpenSSL reads and writes the
  socket itself (``SSLWantReadError``/``SSLWantWriteError`` for "later").

Figures, for each: server CPU per echoed 40-byte message with many in
flight (pipelined, as tcpchat's clients are); resident memory per idle
connection right after the handshake, and again after every connection has
moved a 64 KiB burst each way and gone idle (what buffers a connection
keeps once it is quiet). Certificates are made with the openssl command
(ECDSA P-256, as certbot makes by default). Loopback only.
"""

import argparse
import json
import os
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import time

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Ciphertext written into an incoming MemoryBIO at once, and plaintext
#: encrypted at once: a MemoryBIO keeps its largest buffer for good
#: (tcpchat.tls.SLICE; --slice changes it).
BIO_SLICE = 4096
MESSAGE = b"x" * 39 + b"\n"


# ----------------------------------------------------------- the servers


class BioConn:
    __slots__ = ("sock", "obj", "inb", "outb", "pending", "ready", "writing")

    def __init__(self, sock, ctx):
        self.sock = sock
        self.inb = ssl.MemoryBIO()
        self.outb = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inb, self.outb, server_side=True)
        self.pending = bytearray()
        self.ready = False
        self.writing = False


class SockConn:
    __slots__ = ("sock", "out", "ready", "writing")

    def __init__(self, sock):
        self.sock = sock
        self.out = bytearray()
        self.ready = False
        self.writing = False


def serve(io, cert, key, port_file, slice_size):
    global BIO_SLICE
    BIO_SLICE = int(slice_size)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    listener.setblocking(False)
    with open(port_file, "w") as f:
        f.write(str(listener.getsockname()[1]))
    sel = selectors.DefaultSelector()
    sel.register(listener, READ, None)

    def interest(c, want_write):
        if want_write != c.writing:
            c.writing = want_write
            sel.modify(c.sock, READ | (WRITE if want_write else 0), c)

    def close(c):
        sel.unregister(c.sock)
        c.sock.close()

    # -- MemoryBIO --
    def bio_flush(c):
        if c.outb.pending:
            c.pending += c.outb.read()
        if c.pending:
            try:
                n = c.sock.send(c.pending)
            except BlockingIOError:
                n = 0
            if n == len(c.pending):
                c.pending = bytearray()
            else:
                del c.pending[:n]
        interest(c, bool(c.pending))

    def bio_read(c):
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return close(c)
        obj = c.obj
        plain = []
        view = memoryview(data)
        for i in range(0, len(data), BIO_SLICE):
            c.inb.write(view[i:i + BIO_SLICE])
            if not c.ready:
                try:
                    obj.do_handshake()
                    c.ready = True
                except ssl.SSLWantReadError:
                    continue
                except ssl.SSLError:
                    bio_flush(c)
                    return close(c)
            try:
                # Without read-ahead OpenSSL takes one record at a time from
                # the BIO: while ciphertext is left there, there is more.
                while c.inb.pending:
                    chunk = obj.read(65536)
                    if not chunk:
                        break
                    plain.append(chunk)
            except ssl.SSLWantReadError:
                pass
        if plain:
            data = b"".join(plain)
            for i in range(0, len(data), BIO_SLICE):
                obj.write(data[i:i + BIO_SLICE])
                c.pending += c.outb.read()
        bio_flush(c)

    # -- SSLSocket --
    def sock_flush(c):
        if c.out:
            chunk = c.out[:65536]
            try:
                n = c.sock.send(chunk)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                n = 0
            del c.out[:n]
        interest(c, bool(c.out))

    def sock_read(c):
        s = c.sock
        if not c.ready:
            try:
                s.do_handshake()
                c.ready = True
            except ssl.SSLWantReadError:
                return interest(c, False)
            except ssl.SSLWantWriteError:
                return interest(c, True)
            except (ssl.SSLError, OSError):
                return close(c)
        got = 0
        while got < 65536:
            try:
                data = s.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                break
            except OSError:
                data = b""
            if not data:
                return close(c)
            got += len(data)
            c.out += data
        sock_flush(c)

    read = bio_read if io == "bio" else sock_read
    flush = bio_flush if io == "bio" else sock_flush
    while True:
        for k, mask in sel.select():
            c = k.data
            if c is None:
                for _ in range(256):
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if io == "bio":
                        c = BioConn(sock, ctx)
                    else:
                        sock = ctx.wrap_socket(sock, server_side=True,
                                               do_handshake_on_connect=False)
                        c = SockConn(sock)
                    sel.register(sock, READ, c)
                continue
            if c.sock.fileno() < 0:
                continue
            if mask & READ:
                read(c)
            if mask & WRITE and c.sock.fileno() >= 0:
                if io == "socket" and not c.ready:
                    read(c)
                else:
                    flush(c)


# ----------------------------------------------------------- the harness


def make_certificate(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


class Server:
    def __init__(self, io, cert, key, directory, slice_size):
        port_file = os.path.join(directory, "port-" + io)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.tls_io", "--serve", io, cert, key, port_file,
             str(slice_size)],
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        deadline = time.monotonic() + 15
        while not (os.path.exists(port_file) and os.path.getsize(port_file)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("%s server did not start" % io)
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())

    def cpu(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def client_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the benchmark's own throwaway certificate
    return ctx


def connect_all(port, n):
    ctx = client_context()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(ctx.wrap_socket(s))
    return socks


def exchange(socks, payload):
    """Every connection sends payload and reads its echo (blocking)."""
    for s in socks:
        s.sendall(payload)
    for s in socks:
        got = 0
        while got < len(payload):
            got += len(s.recv(65536))


def throughput(socks, seconds, window=64):
    """Pipelined echo of MESSAGE over all connections for about `seconds`."""
    sel = selectors.DefaultSelector()
    state = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, READ, s)
        state[s] = window
        _send_all_nb(s, MESSAGE * window)
    echoed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for k, _ in sel.select(0.1):
            s = k.data
            while True:
                try:
                    data = s.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                n = data.count(b"\n")
                echoed += n
                state[s] -= n
                if not data:
                    break
            if state[s] <= window // 2:
                k2 = window - state[s]
                state[s] = window
                _send_all_nb(s, MESSAGE * k2)
    sel.close()
    for s in socks:
        s.setblocking(True)
    # Let what is in flight come back, so the next phase starts clean.
    for s in socks:
        left = state[s]
        buf = b""
        while left > 0:
            buf = s.recv(65536)
            left -= buf.count(b"\n")
    return echoed


def _send_all_nb(s, data):
    view = memoryview(data)
    while view:
        try:
            n = s.send(view)
        except (ssl.SSLWantWriteError, BlockingIOError):
            time.sleep(0.0005)
            continue
        view = view[n:]


def measure(io, cert, key, directory, n, seconds, slice_size):
    srv = Server(io, cert, key, directory, slice_size)
    try:
        rss0 = srv.rss_kib()
        socks = connect_all(srv.port, n)
        exchange(socks, MESSAGE)
        rss_idle = (srv.rss_kib() - rss0) / n
        pairs = socks[: min(n, 100)]
        cpu0 = srv.cpu()
        echoed = throughput(pairs, seconds)
        cpu_us = (srv.cpu() - cpu0) / max(echoed, 1) * 1e6
        rss1 = srv.rss_kib()
        exchange(socks, b"y" * 65535 + b"\n")
        rss_burst = (srv.rss_kib() - rss0) / n
        for s in socks:
            s.close()
        return {"io": io, "idle_kib": rss_idle, "after_burst_kib": rss_burst,
                "cpu_us_per_msg": cpu_us, "echoed": echoed, "rss_before_burst": rss1}
    finally:
        srv.stop()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(*argv[1:6])
    p = argparse.ArgumentParser(prog="python -m bench.tls_io", description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--slice", type=int, default=BIO_SLICE,
                   help="bytes fed to and encrypted by the MemoryBIO server at once")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        cert, key = make_certificate(d)
        rows = []
        for _ in range(args.repeat):
            for io in ("bio", "socket"):
                rows.append(measure(io, cert, key, d, args.connections, args.seconds,
                                    args.slice))
                os.unlink(os.path.join(d, "port-" + io))
    if args.json:
        print(json.dumps(rows))
        return 0
    print("%-7s %18s %22s %16s" % ("io", "idle KiB/conn", "idle after 64K burst", "CPU us/message"))
    for r in rows:
        print("%-7s %18.1f %22.1f %16.2f" % (r["io"], r["idle_kib"], r["after_burst_kib"],
                                              r["cpu_us_per_msg"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
