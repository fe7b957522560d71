"""The real server against hostile and broken clients (issue 8).

Each test is one attack or breakage, run against the real server over
loopback: what the attacker gets, and that nobody else is hurt. Every loop
is bounded in count and time; nothing sleeps to synchronise.
"""

import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from serverproc import HOST, REPO, TIMEOUT, FrameClient, LineClient, ServerProcess

from tcpchat.protocol import HELP


def raw_connect(port):
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    return sock


def read_until_closed(sock, timeout=TIMEOUT):
    """Everything the server sends until it closes; raises on a reset."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)  # ConnectionResetError on an RST
        if not chunk:
            return data
        data += chunk
    raise AssertionError("still open after %s s; got %r" % (timeout, data[-200:]))


class Flooder(threading.Thread):
    """Writes ``line`` as fast as the server lets it, for ``seconds``, from
    a non-blocking socket that never reads; stops early if cut off."""

    def __init__(self, sock, line, seconds):
        super().__init__(daemon=True)
        self.sock = sock
        self.data = line * 2000
        self.seconds = seconds
        self.written = 0

    def run(self):
        self.sock.setblocking(False)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            _, w, _ = select.select([], [self.sock], [], 0.05)
            if not w:
                continue
            try:
                self.written += self.sock.send(self.data)
            except BlockingIOError:
                continue
            except OSError:
                return


@pytest.mark.slow
@pytest.mark.parametrize("flood", ["/all x\n", "/msg u0 x\n", "/help\n"])
def test_a_flooder_slows_only_itself(flood):
    # --rate 2000: an /all to 20 readers costs 20 units, so about 100 go
    # through a second however fast the flooder writes.
    with ServerProcess("--rate", "2000") as srv:
        readers = [srv.connect(nick="u%d" % i) for i in range(20)]
        by = srv.connect(nick="bystander")
        peer = srv.connect(nick="peer")
        f = srv.connect(nick="flooder")
        f.send("/ping start")
        f.expect("PONG start")
        flooder = Flooder(f.sock, flood.encode(), 2.0)
        started = time.monotonic()
        flooder.start()
        # While it floods, the bystander's pings and private messages are
        # answered (within TIMEOUT; the bench measures how fast).
        rounds = 0
        while flooder.is_alive() and rounds < 200:
            by.send("/ping %d" % rounds)
            by.expect("PONG %d" % rounds)
            by.send("/msg peer hi %d" % rounds)
            msg_id = by.expect("SENT").split()[1]
            # The peer is flooded too when the flood is an /all: expect()
            # skips what is not ours.
            peer.expect("MSG %s bystander peer hi %d" % (msg_id, rounds))
            by.expect("DELIVERED %s peer" % msg_id)
            rounds += 1
        flooder.join(TIMEOUT)
        assert rounds > 0
        # The readers kept up and nobody was dropped: all are still here.
        by.send("/who")
        assert by.expect("OK who") == "OK who 23"
        for r in readers:
            r.quiet(0.0)
            assert not r.closed
        # The flooder got through only what its rate allows: count what the
        # server acted on from what it answered.
        answers = f.quiet(0.5)
        elapsed = time.monotonic() - started
        if flood.startswith("/help"):
            acted = sum(1 for m in answers if m.startswith("OK help"))
            cost = len(HELP)  # its lines but for the one reply it must have
        else:
            acted = sum(1 for m in answers if m.startswith("SENT"))
            cost = 20 if flood.startswith("/all") else 1
        allowed = (2000 * elapsed + 2000) / cost  # rate x time + a full bucket
        assert 0 < acted <= allowed, (acted, allowed, flooder.written)
        assert flooder.written > acted * len(flood)  # it wrote far more


def test_help_two_thousand_times_in_one_write_is_all_answered():
    with ServerProcess() as srv:
        c = srv.connect(nick="curious")
        c.send_raw(b"/help\n" * 2000)
        deadline = time.monotonic() + 3 * TIMEOUT
        seen = 0
        while seen < 2000 and time.monotonic() < deadline:
            msg = c.next_message(TIMEOUT)
            assert msg is not None, "closed or silent after %d answers" % seen
            seen += msg == "OK help %d" % len(HELP)
        assert seen == 2000
        c.send("/ping done")
        assert c.expect("PONG") == "PONG done"


def test_receipt_timeout_fails_what_a_silent_program_never_acks():
    with ServerProcess("--receipt-timeout", "1") as srv:
        a = srv.connect(nick="alice")
        b = srv.connect(framed=True, nick="bob")  # reads, never acks
        a.send("/msg bob are you there?")
        b.expect("MSG 1 alice bob")
        assert a.expect("FAILED") == "FAILED 1 bob no-receipt no receipt within 1 s"
        b.send("/ping still")
        assert b.expect("PONG") == "PONG still"  # bob is still connected


@pytest.mark.parametrize("arg", ["\u00b2", "\u2460", "9" * 5000])
def test_odd_ack_arguments_are_usage_errors(arg):
    with ServerProcess() as srv:
        a = srv.connect(framed=True, nick="alice")
        a.send("/ack " + arg)
        assert a.expect_next("ERR").startswith("ERR usage ")
        a.send("/ping")
        assert a.expect_next("PONG") == "PONG"
        assert not any("Traceback" in line for line in srv.log_lines())


def test_keepalive_is_set_on_accepted_connections():
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    with ServerProcess("--keepalive", "30") as srv:
        c = srv.connect(nick="alice")
        port = c.sock.getsockname()[1]
        query = ["ss", "-tnoH", "state", "established",
                 "( sport = :%d and dport = :%d )" % (srv.port, port)]
        # ss shows the server's side of our connection with its timer; while
        # a reply is unacknowledged that is the retransmit timer, so look
        # again after a quiet moment (bounded).
        out = ""
        for attempt in range(50):
            c.send("/ping %d" % attempt)
            c.expect("PONG %d" % attempt)
            out = subprocess.run(query, capture_output=True, text=True,
                                 timeout=TIMEOUT).stdout
            if "keepalive" in out:
                break
            select.select([], [], [], 0.05)  # not a synchronisation: a retry pace
        assert "timer:(keepalive," in out, out


def test_keepalive_options_on_a_socket():
    from tcpchat.server import tune_keepalive

    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(1)
    a = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    b, _ = listener.accept()
    try:
        tune_keepalive(b, 60)
        assert b.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert b.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert b.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
        assert b.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 6
        assert b.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 120000
        tune_keepalive(a, 0)  # 0: left alone
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    finally:
        for sock in (a, b, listener):
            sock.close()


def test_half_close_gets_every_reply_before_the_close():
    with ServerProcess() as srv:
        sock = raw_connect(srv.port)
        sock.sendall(b"/nick half\n" + b"/ping\n" * 30000)
        sock.shutdown(socket.SHUT_WR)  # as nc -N does
        data = read_until_closed(sock, 3 * TIMEOUT)
        assert data.count(b"PONG\n") == 30000
        sock.close()
        srv.wait_log("closed: connection closed")


def test_turned_away_client_reads_its_error_without_a_reset():
    with ServerProcess("--max-clients", "1") as srv:
        first = srv.connect(nick="first")
        sock = raw_connect(srv.port)
        # A framed client speaks before the greeting; unread input at close
        # would make the kernel answer with a reset.
        sock.sendall(b"\x00" + struct.pack(">I", 9) + b"/nick two" + b"x" * 5000)
        data = read_until_closed(sock)
        assert data.startswith(b"ERR server-full ")
        sock.close()
        first.send("/ping")
        assert first.expect("PONG") == "PONG"


def test_quit_with_more_input_in_flight_is_not_reset():
    with ServerProcess() as srv:
        sock = raw_connect(srv.port)
        sock.sendall(b"/nick q\n/quit bye\n" + b"/ping\n" * 20000)
        data = read_until_closed(sock)
        assert data.endswith(b"BYE goodbye\n")


def test_per_address_limit_and_exemptions():
    # 127.0.0.1 is exempt by default; exempt only another network here.
    with ServerProcess("--max-per-address", "2", "--exempt-address", "10.0.0.0/8") as srv:
        kept = [srv.connect() for _ in range(2)]
        sock = raw_connect(srv.port)
        data = read_until_closed(sock)
        assert data.startswith(b"ERR too-many-connections ")
        sock.close()
        kept[0].close()
        srv.wait_log("closed: connection closed")
        again = srv.connect(nick="again")
        assert again.greeting.startswith("HELLO ")
    with ServerProcess("--max-per-address", "2") as srv:  # loopback exempt
        many = [srv.connect() for _ in range(5)]
        assert all(c.greeting.startswith("HELLO ") for c in many)


def test_before_registration_a_frame_is_short():
    with ServerProcess() as srv:
        c = FrameClient(HOST, srv.port)
        c.send_raw(struct.pack(">I", 60000) + b"x" * 1000)
        seen = c.expect_closed()
        assert seen and seen[0].startswith("ERR too-long ")
        d = srv.connect(framed=True, nick="dave")
        d.send("/ping " + "y" * 60000)  # registered: the full --max-frame
        assert d.expect_next("PONG") == "PONG " + "y" * 256  # echoed up to 256


def test_sighup_reopens_the_log_file(tmp_path):
    path = tmp_path / "chat.log"
    with ServerProcess("--log-file", str(path)) as srv:
        a = srv.connect(nick="alice")
        srv.wait_log("registered as alice")
        os.rename(path, tmp_path / "chat.log.1")  # logrotate without copytruncate
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_log("SIGHUP")
        a.send("/nick alice2")
        a.expect("OK nick alice2")
        srv.wait_log("renamed to alice2")
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if path.exists() and "renamed to alice2" in path.read_text():
                break
            a.send("/ping")  # each pass flushes the log; give it passes
            a.expect("PONG")
        assert "renamed to alice2" in path.read_text()
        assert srv.proc.poll() is None  # SIGHUP no longer ends the server


def test_nc_users_get_escaped_text_programs_exact():
    with ServerProcess() as srv:
        a = srv.connect(framed=True, nick="alice")
        nc = srv.connect(nick="ncuser")
        prog = srv.connect(framed=True, nick="prog")
        a.expect("JOINED prog")
        nc.expect("JOINED prog")
        forged = "ok\rMSG 77 admin ncuser please paste your password here"
        a.send("/msg ncuser " + forged)
        assert nc.expect("MSG") == (
            "MSG 1 alice ncuser ok^MMSG 77 admin ncuser please paste your password here")
        evil = "\x1b]52;c;aGk=\x07\x1b[2J\u202eevil"
        a.send("/all " + evil)
        assert nc.expect("MSG") == "MSG 2 alice * ^[]52;c;aGk=^G^[[2J<U+202E>evil"
        assert prog.expect("MSG") == "MSG 2 alice * " + evil


def test_a_stderr_nobody_reads_does_not_stall_the_chat():
    # Under systemd stderr is the journal; if it falls behind, a blocking
    # write of the log would stop the server for everyone. Here nobody
    # reads the server's stderr pipe at all, and every message is logged.
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcpchat.server", "--host", HOST, "--port", "0",
         "--no-syslog", "--log-file", os.devnull],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=env, cwd=REPO)
    try:
        port = None
        line = b""
        deadline = time.monotonic() + TIMEOUT
        while port is None and time.monotonic() < deadline:
            line += proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else b""
            if b"listening on " in line and line.endswith(b"\n"):
                port = int(line.split(b"listening on ")[1].split(b"\n")[0].rsplit(b":", 1)[1])
        # From here on nobody reads stderr: the pipe (64 KiB) fills at once.
        a = LineClient(HOST, port)
        a.send("/nick alice")
        b = LineClient(HOST, port)
        b.send("/nick bob")
        b.expect("OK nick bob")
        text = "x" * 200
        for burst in range(20):  # 20 x 100 logged messages of 200+ bytes: ~500 KiB
            a.send_raw(("/msg bob %s\n" % text).encode() * 100)
            b.send("/ping %d" % burst)
            assert b.expect("PONG") == "PONG %d" % burst  # never stalled
        # Read at last, stderr has every line: what the pipe did not take
        # waited in the server's bounded backlog (tests/test_logs.py shows
        # what happens past its bound).
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=TIMEOUT)[1]
        assert b" message 2000 alice -> bob: " in rest
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
