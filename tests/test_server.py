"""The real server as a subprocess, driven over loopback in both framings.

No fixed sleeps: every step waits for the line it expects, with a timeout.
"""

import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import pytest

from serverproc import HOST, REPO, TIMEOUT, LineClient, ServerProcess

from tcpchat import __version__
from tcpchat.protocol import HELP, greeting


@pytest.fixture
def srv():
    with ServerProcess() as s:
        yield s


@pytest.mark.parametrize("framed", [False, True], ids=["line", "framed"])
def test_greeting_comes_first_in_line_form(srv, framed):
    c = srv.connect(framed=framed)
    assert c.greeting == greeting()
    c.send("/help")
    assert c.expect_next("HELP ") == "HELP " + HELP[0]
    assert c.expect("OK help") == "OK help %d" % len(HELP)


@pytest.mark.parametrize("fa,fb", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["line-line", "line-framed", "framed-line", "framed-framed"])
def test_conversation_across_framings(srv, fa, fb):
    a = srv.connect(framed=fa, nick="alice")
    b = srv.connect(framed=fb, nick="bob")
    a.expect_next("JOINED bob")
    # Public, private, pair.
    a.send("hello room")
    assert a.expect_next("SENT") == "SENT 1 * 1"
    assert b.expect_next("MSG") == "MSG 1 alice * hello room"
    if fb:
        b.send("/ack 1")
    assert a.expect_next("DELIVERED") == "DELIVERED 1 * 1"
    b.send("/w alice psst")
    assert a.expect_next("MSG") == "MSG 2 bob alice psst"
    assert b.expect_next("SENT") == "SENT 2 alice 1"
    if fa:
        a.send("/ack 2")
    assert b.expect_next("DELIVERED") == "DELIVERED 2 alice"
    a.send("/pair bob")
    assert a.expect_next("OK pair bob")
    assert b.expect_next("PAIR-REQUEST alice")
    b.send("/pair alice")
    assert b.expect_next("OK pair alice")
    assert b.expect_next("PAIRED alice")
    assert a.expect_next("PAIRED bob")
    a.send("//me waves")
    assert b.expect_next("MSG") == "MSG 3 alice bob /me waves"
    b.send("/who")
    assert b.expect("OK who") == "OK who 2"
    a.send("/ping t1")
    a.expect_next("SENT 3 bob 1")
    assert a.expect("PONG") == "PONG t1"
    a.send(":quit:")
    assert a.expect("BYE") == "BYE goodbye"
    a.expect_closed()
    assert b.expect("UNPAIRED") == "UNPAIRED alice quit"
    assert b.expect_next("LEFT") == "LEFT alice quit"


def test_multiline_frame_to_line_peer(srv):
    a = srv.connect(framed=True, nick="alice")
    b = srv.connect(nick="bob")
    a.send("/msg bob line one\nline two")
    assert b.expect_next("MSG") == "MSG 1 alice bob line one"
    assert b.expect_next("MSG") == "MSG 1 alice bob line two"
    a.expect("DELIVERED 1 bob")


def test_telnet_bytes_and_bad_utf8_do_not_hurt(srv):
    a = srv.connect(nick="alice")
    b = srv.connect(nick="bob")
    t = LineClient(HOST, srv.port)
    t.send_raw(b"\xff\xfd\x18\xff\xfb\x1f\r\n")  # telnet option negotiation
    assert t.expect_next("ERR bad-utf8")
    t.send("/nick telnet")
    t.expect("OK nick telnet")
    a.send("/msg bob fine")
    b.expect("MSG 1 alice bob fine")


def test_garbage_from_one_client_never_hurts_another(srv):
    a = srv.connect(nick="alice")
    b = srv.connect(nick="bob")
    import random

    rnd = random.Random(1)
    for i in range(20):
        g = socket.create_connection((HOST, srv.port), timeout=TIMEOUT)
        junk = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 5000)))
        try:
            g.sendall(junk)
        except OSError:
            pass
        if i % 2:
            g.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        g.close()
        a.send("/msg bob round %d" % i)
        assert b.expect("MSG").endswith("round %d" % i)
    assert srv.proc.poll() is None


def test_partner_reset_unpairs_and_fails_pending():
    with ServerProcess("--resume-time", "0") as srv:
        _partner_reset_unpairs_and_fails_pending(srv)


def _partner_reset_unpairs_and_fails_pending(srv):
    a = srv.connect(nick="alice")
    b = srv.connect(framed=True, nick="bob")
    a.send("/pair bob")
    b.send("/pair alice")
    a.expect("PAIRED bob")
    a.send("are you there?")
    b.expect("MSG 1 alice bob")
    # bob's client crashes without acking: RST, not FIN.
    b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    b.close()
    # It leaves first (UNPAIRED, LEFT), then what it held fails.
    assert a.expect("UNPAIRED").startswith("UNPAIRED bob connection")
    assert a.expect_next("LEFT").startswith("LEFT bob connection")
    assert a.expect_next("FAILED").startswith("FAILED 1 bob no-receipt left without "
                                              "confirming it (connection")
    srv.wait_log("bob (127.0.0.1:")


def test_max_clients():
    with ServerProcess("--max-clients", "3") as srv:
        kept = [srv.connect() for _ in range(3)]
        extra = socket.create_connection((HOST, srv.port), timeout=TIMEOUT)
        data = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = extra.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"ERR server-full ") and data.count(b"\n") == 1
        kept[0].close()
        srv.wait_log("closed: connection closed")
        again = srv.connect(nick="late")  # a place is free again
        assert again.greeting.startswith("HELLO")


def test_max_line_discards_and_keeps_the_connection():
    with ServerProcess("--max-line", "64") as srv:
        a = srv.connect(nick="alice")
        b = srv.connect(nick="bob")
        a.expect("JOINED bob")
        a.send("/msg bob " + "x" * 10000)
        assert a.expect_next("ERR").startswith("ERR too-long ")
        a.send("/msg bob short")
        assert a.expect_next("SENT") == "SENT 1 bob 1"


def test_max_frame_closes_after_the_error():
    with ServerProcess("--max-frame", "512") as srv:
        a = srv.connect(framed=True, nick="alice")
        a.send_raw(struct.pack(">I", 513))
        seen = a.expect_closed()
        assert len(seen) == 1 and seen[0].startswith("ERR too-long ")


def test_register_timeout_closes_silent_connections():
    with ServerProcess("--register-timeout", "0.5") as srv:
        silent = LineClient(HOST, srv.port)
        registered = srv.connect(nick="quick")
        seen = silent.expect_closed()
        assert seen and seen[0].startswith("ERR timeout ")
        registered.send("/ping")
        assert registered.expect_next("PONG") == "PONG"


def test_slow_consumer_is_dropped_while_others_chat():
    with ServerProcess("--max-queue", "65536", "--max-line", "8192", "--resume-time", "0") as srv:
        sender = srv.connect(nick="sender")
        talk_a = srv.connect(nick="ta")
        talk_b = srv.connect(nick="tb")
        # A reader with a tiny receive window that never reads.
        stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect((HOST, srv.port))
        stuck.sendall(b"/nick stuck\n")
        sender.expect("JOINED stuck")
        body = "y" * 8000
        failed = None
        for i in range(3000):  # bounded: ~24 MB at most
            sender.send("/msg stuck %s" % body)
            if i % 50 == 0:
                # The others keep talking and being served meanwhile.
                talk_a.send("/msg tb ping %d" % i)
                assert talk_b.expect("MSG").endswith("ping %d" % i)
                msg = sender.quiet(0.0)
                failed = [m for m in msg if m.startswith("FAILED")] or failed
                if any(m.startswith("LEFT stuck") for m in msg):
                    break
        else:
            pytest.fail("the stuck reader was never dropped")
        assert any(m.endswith("slow consumer") for m in msg if m.startswith("LEFT"))
        # Never written: slow-consumer; begun but cut off midway: no-receipt.
        assert failed and all(m.split()[3] in ("slow-consumer", "no-receipt") for m in failed)
        assert any(m.split()[3] == "slow-consumer" for m in failed)
        srv.wait_log("bytes of output not written: slow consumer")
        stuck.close()
        talk_a.send("/msg tb after")
        assert talk_b.expect("MSG").endswith("after")


def test_sigterm_flushes_queued_output_then_exits_0():
    with ServerProcess("--drain-time", "5") as srv:
        a = srv.connect(nick="alice")
        b = srv.connect(nick="bob")
        # bob does not read while alice queues a lot for him.
        for i in range(2000):
            a.send_raw(b"/msg bob message %d %s\n" % (i, b"z" * 200))
        a.expect("SENT 2000 bob 1")
        srv.proc.send_signal(signal.SIGTERM)
        got = b.expect_closed(timeout=TIMEOUT)
        msgs = [m for m in got if m.startswith("MSG")]
        assert len(msgs) == 2000
        assert got[-1] == "BYE server shutting down"
        assert srv.proc.wait(TIMEOUT) == 0
        assert a.expect("BYE") == "BYE server shutting down"


def test_sigint_is_like_sigterm(srv):
    a = srv.connect(nick="alice")
    srv.proc.send_signal(signal.SIGINT)
    assert a.expect("BYE") == "BYE server shutting down"
    assert srv.proc.wait(TIMEOUT) == 0
    srv.wait_log("SIGINT received")


def test_thousand_clients_at_once():
    n = 1000
    with ServerProcess() as srv:
        sel = selectors.DefaultSelector()
        socks = []
        try:
            for i in range(n):
                s = socket.create_connection((HOST, srv.port), timeout=TIMEOUT)
                s.sendall(b"/nick u%d\n" % i)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, [b""])
                socks.append(s)
            last = socks[-1]
            # Wait until the last client is registered, then the first speaks.
            wait_for(sel, lambda buf: b"OK nick u%d\n" % (n - 1) in buf, only=last)
            socks[0].sendall(b"/all hello thousand\n")
            got = wait_for(sel, lambda buf: b"MSG 1 u0 * hello thousand\n" in buf,
                           count=n - 1, exclude=socks[0])
            assert got == n - 1
            wait_for(sel, lambda buf: b"DELIVERED 1 * %d\n" % (n - 1) in buf, only=socks[0])
        finally:
            for s in socks:
                s.close()
            sel.close()


def wait_for(sel, done, only=None, exclude=None, count=1, timeout=30.0):
    """Read all sockets until ``count`` of them satisfy ``done(buffer)``."""
    deadline = time.monotonic() + timeout

    def wanted(s, buf):
        return (only is None or s is only) and s is not exclude and done(buf)

    # What an earlier wait already read counts too.
    satisfied = {k.fileobj for k in sel.get_map().values() if wanted(k.fileobj, k.data[0])}
    while len(satisfied) < count and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            data = s.recv(65536)
            key.data[0] += data
            if wanted(s, key.data[0]):
                satisfied.add(s)
    if len(satisfied) >= count:
        return len(satisfied)
    raise AssertionError("only %d of %d sockets got there" % (len(satisfied), count))


def test_syslog_gets_the_log():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log")
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(path)
        sink.settimeout(TIMEOUT)
        try:
            with ServerProcess("--syslog-address", path, "--syslog-messages") as srv:
                a = srv.connect(nick="alice")
                b = srv.connect(nick="bob")
                a.send("/msg bob for the record")
                a.expect("DELIVERED")
                records = []
                deadline = time.monotonic() + TIMEOUT
                while time.monotonic() < deadline:
                    records.append(sink.recv(65536).decode())
                    if any("for the record" in r for r in records):
                        break
                text = "\n".join(records)
                assert "tcpchat-server[%d]: " % srv.proc.pid in text
                assert "listening on 127.0.0.1:%d" % srv.port in text
                assert "registered as alice" in text
                port = a.sock.getsockname()[1]
                assert "127.0.0.1:%d message 1 alice -> bob: for the record" % port in text
                # <30> is LOG_DAEMON|LOG_INFO: a daemon's facility.
                assert any(r.startswith("<30>") for r in records)
        finally:
            sink.close()


def test_missing_syslog_warns_once_and_goes_on():
    with ServerProcess("--syslog-address", "/nonexistent/tcpchat/log") as srv:
        srv.wait_log("syslog at /nonexistent/tcpchat/log unavailable")
        a = srv.connect(nick="alice")
        a.send("/ping")
        a.expect("PONG")


def test_log_file_and_no_log_text():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chat.log")
        with ServerProcess("--log-file", path, "--no-log-text") as srv:
            a = srv.connect(nick="alice")
            b = srv.connect(nick="bob")
            a.send("/msg bob top secret")
            a.expect("DELIVERED")
            srv.wait_log("message 1 alice -> bob")
            assert srv.stop() == 0
        with open(path) as f:
            text = f.read()
        assert "message 1 alice -> bob" in text and "listening on" in text
        assert "top secret" not in text
        assert "top secret" not in "\n".join(srv.log_lines())


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with ServerProcess(host="::1") as srv:
        line = srv.wait_log("listening on")
        assert "listening on [::1]:%d" % srv.port in line
        c = LineClient("::1", srv.port)
        c.send("/nick six")
        c.expect("OK nick six")


def test_version_and_help():
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "tcpchat.server", "--version"],
                         capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert out.returncode == 0 and out.stdout.strip() == "tcpchat-server " + __version__
    out = subprocess.run([sys.executable, "-m", "tcpchat.server", "--help"],
                         capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert "--ip" in out.stdout and "--max-queue" in out.stdout


def test_cannot_listen_is_one_line_and_exit_1(srv):
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run(
        [sys.executable, "-m", "tcpchat.server", "--no-syslog", "--port", str(srv.port)],
        capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert out.returncode == 1
    assert "cannot listen on 127.0.0.1:%d" % srv.port in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(shutil.which("nc") is None, reason="nc is not installed")
def test_with_nc(srv):
    peer = srv.connect(nick="bob")
    nc = subprocess.Popen(["nc", HOST, str(srv.port)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE)
    try:
        nc.stdin.write(b"/nick carl\n/msg bob hi from nc\n")
        nc.stdin.flush()
        assert peer.expect("MSG") == "MSG 1 carl bob hi from nc"
        peer.send("/msg carl hi back")
        peer.expect("DELIVERED 2 carl")  # written to nc's socket
        nc.stdin.write(b"/quit\n")
        nc.stdin.flush()
        out, _ = nc.communicate(timeout=TIMEOUT)
    finally:
        if nc.poll() is None:
            nc.kill()
            nc.wait()
    lines = out.decode().splitlines()
    assert lines[0] == greeting()
    assert "SENT 1 bob 1" in lines and "DELIVERED 1 bob" in lines
    assert "MSG 2 bob carl hi back" in lines
    assert lines[-1] == "BYE goodbye"


def test_open_files_limit_is_raised_or_the_shortfall_said():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # More clients than any hard limit here allows: the server must say so.
    with ServerProcess("--max-clients", "5000000") as srv:
        line = srv.wait_log("open files limit")
        assert "WARNING" in line
        c = srv.connect(nick="still")  # and it serves anyway
        c.send("/ping")
        c.expect("PONG")
    if hard == resource.RLIM_INFINITY or hard >= 2064:
        with ServerProcess("--max-clients", "2000", nofile=256) as srv:
            line = srv.wait_log("open files limit")
            assert "open files limit raised to 2064" in line


FINALS = ("OK", "ERR", "SENT", "PONG", "BYE")


@pytest.mark.parametrize("framed", [False, True], ids=["line", "framed"])
def test_two_hundred_pipelined_commands_get_one_final_reply_each(srv, framed):
    import random

    rnd = random.Random(200)
    a = srv.connect(framed=framed, nick="alice")
    b = srv.connect(framed=True, nick="bob")
    a.expect("JOINED bob")
    choices = ["/msg bob hi", "/all hey", "chat", "/who", "/help", "/ping p", "/nick alice",
               "/msg nobody x", "/bogus", "/pair bob", "/unpair", "/ack 99999", "/ack",
               "/msg bob", "/w bob psst", "/MSG\tbob\ttab"]
    sent = [rnd.choice(choices) for _ in range(200)]
    a.send_raw(b"".join(struct.pack(">I", len(x)) + x.encode() if framed
                        else x.encode() + b"\n" for x in sent))
    finals = []
    deadline = time.monotonic() + 3 * TIMEOUT
    while len(finals) < len(sent) and time.monotonic() < deadline:
        m = a.next_message(TIMEOUT)
        assert m is not None, "got only %d final replies" % len(finals)
        if m.split(" ", 1)[0] in FINALS:
            finals.append(m)
    # Counting works: the nth final reply answers the nth message.
    for command, reply in zip(sent, finals):
        word = command.split()[0].lower()
        if command in ("/msg nobody x", "/msg bob", "/bogus", "/ack 99999", "/ack"):
            assert reply.startswith("ERR "), (command, reply)
        elif word in ("/msg", "/w", "/all", "chat"):
            assert reply.startswith("SENT "), (command, reply)
        elif word == "/who":
            assert reply.startswith("OK who ")
        elif word == "/help":
            assert reply == "OK help %d" % len(HELP)
        elif word == "/ping":
            assert reply == "PONG p"
        else:
            assert reply.split()[0] in ("OK", "ERR"), (command, reply)
    a.send("/ping end")
    rest = []
    while True:
        m = a.next_message(TIMEOUT)
        assert m is not None
        if m == "PONG end":
            break
        rest.append(m)
    assert not [m for m in rest if m.split(" ", 1)[0] in FINALS], rest


def test_a_silent_connection_is_routine_in_the_log(srv):
    # Port scanners and health checks: connect, reset, never a word. Some
    # are gone before the greeting is written; that is no warning.
    for _ in range(30):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.connect((HOST, srv.port))
        sock.close()
    a = srv.connect(nick="after")
    srv.wait_log("registered as after")
    lines = srv.log_lines()
    assert not [line for line in lines if " WARNING " in line], lines
