"""TLS: tcpchat.tls fed bytes, then the real server and the real client.

Certificates are made at test time (tests/tlshelp.py: trustme, or the
openssl command); without either, or without ssl, these tests skip and say
why. Everything waits for expected lines with a deadline.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from serverproc import HOST, REPO, TIMEOUT, ServerProcess
from tlshelp import Authority, TLSServer, certificates_or_skip, fingerprint_of

ssl = pytest.importorskip("ssl", reason="this Python has no ssl module")


@pytest.fixture
def ca(tmp_path):
    certificates_or_skip()
    return Authority(tmp_path)


@pytest.fixture
def pair(ca):
    """A certificate for this machine's loopback names, and its key."""
    return ca.issue("localhost", "127.0.0.1", "::1")


@pytest.fixture
def server(pair):
    with TLSServer(*pair) as srv:
        yield srv


# --------------------------------------------------------------------------
# TLSConnection, fed bytes: no sockets
# --------------------------------------------------------------------------


def memory_client(ca, hostname="localhost"):
    """A client-side SSLObject and its two BIOs."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ca.client_context().wrap_bio(incoming, outgoing, server_hostname=hostname)
    return obj, incoming, outgoing


def take(conn):
    """Everything the server side wants to send, as if the kernel took it all."""
    data = b"".join(bytes(chunk) for chunk in conn.pending)
    return data, conn.sent(len(data))


def handshake(conn, client, split=None):
    """Run the handshake, feeding the server in pieces of ``split`` bytes."""
    obj, c_in, c_out = client
    for _ in range(10):
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        data = c_out.read()
        step = split or max(len(data), 1)
        for i in range(0, len(data), step):
            assert conn.receive(data[i:i + step]) == b""
        c_in.write(take(conn)[0])
        if done and conn.established:
            return
    raise AssertionError("no handshake")


@pytest.mark.parametrize("split", [None, 1, 7, 100])
def test_handshake_and_data_at_any_split(ca, pair, split):
    from tcpchat.tls import TLSConnection, server_context
    conn = TLSConnection(server_context(*pair))
    client = memory_client(ca)
    handshake(conn, client, split)
    obj, c_in, c_out = client
    obj.write(b"/nick alice\n")
    obj.write(b"hello\n")
    data = c_out.read()
    got = b""
    for i in range(0, len(data), split or len(data)):
        got += conn.receive(data[i:i + (split or len(data))])
    assert got == b"/nick alice\nhello\n"


def test_plaintext_counts_as_written_only_when_its_records_are(ca, pair):
    from tcpchat.tls import SLICE, TLSConnection, server_context
    conn = TLSConnection(server_context(*pair))
    client = memory_client(ca)
    handshake(conn, client)
    base = conn.held()
    out = [b"a" * 3000, b"b" * 3000, b"c" * 100]
    assert conn.encrypt(out) == 6100
    assert conn.held() > base + 6100  # the ciphertext waits, counted
    ciphertext = b"".join(bytes(c) for c in conn.pending)
    first_record = len(conn.pending[0])
    # Nothing is written until a whole record is: the kernel took 10 bytes.
    assert conn.sent(10) == 0
    assert conn.sent(first_record - 10) == SLICE
    assert conn.sent(len(ciphertext) - first_record) == 6100 - SLICE
    assert conn.held() == base and not conn.pending
    obj, c_in, _ = client
    c_in.write(ciphertext)
    assert obj.read(10000) + obj.read(10000) == b"".join(out)


def test_garbage_is_a_failed_handshake_with_its_reason(pair):
    from tcpchat.tls import TLSConnection, TLSError, server_context
    conn = TLSConnection(server_context(*pair))
    with pytest.raises(TLSError) as e:
        conn.receive(b"/nick alice\n")
    assert "plain text on the TLS port" in str(e.value)
    conn = TLSConnection(server_context(*pair))
    with pytest.raises(TLSError) as e:
        conn.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert "HTTP" in str(e.value)


def test_close_notify_both_ways(ca, pair):
    from tcpchat.tls import TLSConnection, server_context
    conn = TLSConnection(server_context(*pair))
    client = memory_client(ca)
    handshake(conn, client)
    obj, c_in, c_out = client
    conn.close()
    c_in.write(take(conn)[0])
    assert obj.read(10) == b""  # close_notify
    obj.unwrap()
    assert conn.receive(c_out.read()) == b"" and conn.peer_closed


def test_fingerprints_are_read_as_people_write_them():
    from tcpchat.tls import format_fingerprint, parse_fingerprint
    raw = bytes(range(32))
    colons = format_fingerprint(raw)
    assert colons.startswith("00:01:02:") and len(colons) == 95
    for text in (colons, colons.lower(), colons.replace(":", ""), " " + colons + "\n",
                 "SHA256 Fingerprint=" + colons, "sha256:" + colons.replace(":", "")):
        assert parse_fingerprint(text) == raw, text
    for bad in ("", "AB:CD", colons + ":00", "zz" * 32, "md5:" + colons):
        with pytest.raises(ValueError):
            parse_fingerprint(bad)


def test_relative_paths_are_looked_up_in_the_credentials_directory():
    from tcpchat.tls import resolve_path
    env = {"CREDENTIALS_DIRECTORY": "/run/credentials/tcpchat.service"}
    assert resolve_path("tls.key", env) == "/run/credentials/tcpchat.service/tls.key"
    assert resolve_path("/etc/pki/tcpchat/tls.key", env) == "/etc/pki/tcpchat/tls.key"
    assert resolve_path("tls.key", {}) == "tls.key"


def test_default_ports_agree():
    from tcpchat import client, server, tls
    assert client.DEFAULT_TLS_PORT == server.DEFAULT_TLS_PORT == tls.DEFAULT_PORT
    args = client.resolve_tls(client.make_parser().parse_args(["--tls"]))
    assert args.port == tls.DEFAULT_PORT
    args = client.resolve_tls(client.make_parser().parse_args(["--tls", "--port", "7"]))
    assert args.port == 7
    args = client.resolve_tls(client.make_parser().parse_args(["--tls-ca-file", "x"]))
    assert args.tls and args.port == tls.DEFAULT_PORT
    args = client.resolve_tls(client.make_parser().parse_args([]))
    assert not args.tls and args.port == client.DEFAULT_PORT


# --------------------------------------------------------------------------
# The real server
# --------------------------------------------------------------------------


def test_line_mode_over_tls_talks_to_plain_tcp(server, ca):
    alice = server.connect_tls(ca.client_context(), nick="alice")
    assert alice.greeting.startswith("HELLO tcpchat/1 ")
    bob = server.connect(nick="bob")  # plain TCP, same chat
    alice.send("/msg bob over TLS")
    assert alice.expect("SENT ") == "SENT 1 bob 1"
    assert bob.expect("MSG ") == "MSG 1 alice bob over TLS"
    assert alice.expect("DELIVERED ") == "DELIVERED 1 bob"
    bob.send("/msg alice back in clear")
    assert alice.expect("MSG ") == "MSG 2 bob alice back in clear"
    server.wait_log("connected (TLS)")


def test_framed_mode_over_tls(server, ca):
    alice = server.connect_tls(ca.client_context(), framed=True, nick="alice")
    bob = server.connect_tls(ca.client_context(), framed=True, nick="bob")
    alice.send("/msg bob two\nlines")
    msg = bob.expect("MSG ")
    assert msg == "MSG 1 alice bob two\nlines"
    bob.send("/ack 1")
    assert alice.expect("DELIVERED ") == "DELIVERED 1 bob"
    big = "x" * 60000  # more than one TLS record each way
    alice.send("/msg bob " + big)
    assert bob.expect("MSG ") == "MSG 2 alice bob " + big


def test_quit_over_tls_ends_with_bye_and_close_notify(server, ca):
    alice = server.connect_tls(ca.client_context(), nick="alice")
    alice.send("/quit")
    assert alice.expect_closed() == ["BYE goodbye"]
    assert alice.clean_close is True  # close_notify, not a bare FIN
    server.wait_log("alice (127.0.0.1:")


def test_plain_text_on_the_tls_port_fails_alone_and_is_logged_once(server, ca):
    alice = server.connect_tls(ca.client_context(), nick="alice")
    with socket.create_connection((HOST, server.tls_port), timeout=TIMEOUT) as sock:
        sock.sendall(b"/nick mallory\n")
        sock.settimeout(TIMEOUT)
        assert sock.recv(100) == b""  # closed, nothing said in clear
    line = server.wait_log("TLS handshake failed")
    assert "INFO" in line and "plain text on the TLS port" in line
    assert sum("TLS handshake failed" in x for x in server.log_lines()) == 1
    alice.send("/ping still")
    assert alice.expect("PONG") == "PONG still"


def client_hello(ca):
    obj, _, outgoing = memory_client(ca)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_a_stalled_handshake_holds_nobody_up_and_times_out(pair, ca):
    with TLSServer(*pair, "--register-timeout", "1") as srv:
        hello = client_hello(ca)
        stalled = socket.create_connection((HOST, srv.tls_port), timeout=TIMEOUT)
        stalled.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        # Meanwhile others connect, register and talk, over TLS and not.
        alice = srv.connect_tls(ca.client_context(), nick="alice")
        bob = srv.connect(nick="bob")
        alice.send("/msg bob hi")
        assert bob.expect("MSG ") == "MSG 1 alice bob hi"
        line = srv.wait_log("TLS handshake not finished within 1 s")
        assert "INFO" in line
        stalled.settimeout(TIMEOUT)
        assert stalled.recv(100) == b""
        stalled.close()


def test_slow_tls_reader_is_a_slow_consumer(pair, ca):
    from tcpchat.tls import MIN_QUEUE
    with TLSServer(*pair, "--max-queue", str(MIN_QUEUE), "--rate", "0") as srv:
        lazy = srv.connect_tls(ca.client_context(), nick="lazy")
        alice = srv.connect(nick="alice")
        burst = ("/msg lazy %s\n" % ("y" * 4000)).encode() * 50
        # lazy never reads: its TLS records pile up in the kernel, then here,
        # until what the server holds for it passes --max-queue.
        for _ in range(200):
            alice.send_raw(burst)
            if any("slow consumer" in x for x in srv.log_lines()[-60:]):
                break
        line = srv.wait_log("closed: slow consumer")
        assert line.split(" INFO ", 1)[1].startswith("lazy (127.0.0.1:")
        alice.send("/ping ok")
        assert alice.expect("PONG") == "PONG ok"
        lazy.close()


def test_tls_only_has_no_plain_port(pair, ca):
    with TLSServer(*pair, tls_only=True) as srv:
        assert not any("listening on " in x for x in srv.log_lines())
        alice = srv.connect_tls(ca.client_context(), nick="alice")
        alice.send("/ping x")
        assert alice.expect("PONG") == "PONG x"


def test_bad_options_and_a_bad_pair_at_start(pair, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tcpchat.server", "--no-syslog",
                               "--port", "0", "--tls-port", "0"] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                              timeout=TIMEOUT, universal_newlines=True)
    p = run("--tls-cert", pair[0])
    assert p.returncode == 2 and "go together" in p.stderr
    p = run("--tls-only")
    assert p.returncode == 2
    p = run("--tls-cert", pair[0], "--tls-key", pair[1], "--max-queue", "1000")
    assert p.returncode == 2 and "--max-queue" in p.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    p = run("--tls-cert", pair[0], "--tls-key", str(garbage))
    assert p.returncode == 1 and "cannot use the TLS certificate" in p.stderr
    p = run("--tls-cert", pair[0], "--tls-key", str(tmp_path / "missing.key"))
    assert p.returncode == 1 and "missing.key" in p.stderr


def test_an_encrypted_key_is_refused_not_asked_for(pair, tmp_path):
    # A service has no terminal to type a passphrase on: say so and stop.
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    encrypted = str(tmp_path / "encrypted.key")
    subprocess.run(["openssl", "pkey", "-in", pair[1], "-aes256", "-passout", "pass:x",
                    "-out", encrypted], check=True, timeout=60)
    from tcpchat.tls import TLSConfigError, server_context
    with pytest.raises(TLSConfigError) as e:
        server_context(pair[0], encrypted)
    assert "encrypted" in str(e.value)


def test_credentials_directory_holds_relative_names(pair, ca, tmp_path):
    creds = tmp_path / "credentials"
    creds.mkdir()
    os.link(pair[0], str(creds / "tls.crt"))
    os.link(pair[1], str(creds / "tls.key"))
    old = os.environ.get("CREDENTIALS_DIRECTORY")
    os.environ["CREDENTIALS_DIRECTORY"] = str(creds)
    try:
        srv = TLSServer("tls.crt", "tls.key")
        with srv:
            alice = srv.connect_tls(ca.client_context(), nick="alice")
            assert alice.peer_fingerprint() == fingerprint_of(pair[0])
    finally:
        if old is None:
            del os.environ["CREDENTIALS_DIRECTORY"]
        else:
            os.environ["CREDENTIALS_DIRECTORY"] = old


def replace(dest, src):
    """Put src's bytes at dest the way certbot does: a new file, renamed."""
    tmp = dest + ".new"
    with open(src, "rb") as f, open(tmp, "wb") as g:
        g.write(f.read())
    os.replace(tmp, dest)


def test_sighup_serves_a_renewed_certificate(ca, tmp_path):
    first = ca.issue("localhost", "127.0.0.1")
    second = ca.issue("localhost", "127.0.0.1")
    cert, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    replace(cert, first[0])
    replace(key, first[1])
    with TLSServer(cert, key) as srv:
        before = srv.connect_tls(ca.client_context(), nick="before")
        assert before.peer_fingerprint() == fingerprint_of(first[0])
        replace(cert, second[0])
        replace(key, second[1])
        start = len(srv.log_lines())
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_log("TLS certificate reloaded", start=start)
        assert fingerprint_of(second[0]) in line
        after = srv.connect_tls(ca.client_context(), nick="after")
        assert after.peer_fingerprint() == fingerprint_of(second[0])
        before.send("/msg after still here")  # made before the reload, still fine
        assert after.expect("MSG ") == "MSG 1 before after still here"


def test_sighup_with_a_bad_pair_keeps_the_old_one(ca, tmp_path):
    good = ca.issue("localhost", "127.0.0.1")
    other = ca.issue("localhost", "127.0.0.1")
    cert, key = str(tmp_path / "live.crt"), str(tmp_path / "live.key")
    replace(cert, good[0])
    replace(key, good[1])
    with TLSServer(cert, key) as srv:
        replace(key, other[1])  # half a renewal: a key that is not the cert's
        start = len(srv.log_lines())
        srv.proc.send_signal(signal.SIGHUP)
        line = srv.wait_log("TLS certificate not reloaded", start=start)
        assert "keeping the old one" in line and "does not belong" in line
        alice = srv.connect_tls(ca.client_context(), nick="alice")
        assert alice.peer_fingerprint() == fingerprint_of(good[0])
        alice.send("/ping ok")
        assert alice.expect("PONG") == "PONG ok"


# --------------------------------------------------------------------------
# The real client
# --------------------------------------------------------------------------


def run_client(port, *args, stdin="/ping\n", env=None, tmp_path=None):
    environ = dict(os.environ)
    environ["PYTHONPATH"] = REPO + os.pathsep + environ.get("PYTHONPATH", "")
    environ["XDG_STATE_HOME"] = str(tmp_path / "state")
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tcpchat.client", "--port", str(port), "--nick", "ci"]
        + list(args), input=stdin.encode(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=environ, cwd=REPO, timeout=TIMEOUT * 2)


def test_client_verifies_with_a_private_ca_and_delivers(server, ca, tmp_path):
    bob = server.connect(nick="bob")
    p = run_client(server.tls_port, "--tls-ca-file", ca.ca_file, "--host", "localhost",
                   stdin="/msg bob sealed\n", tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert bob.expect("MSG ").endswith(" ci bob sealed")
    assert '"sealed" delivered to bob' in (p.stdout + p.stderr).decode()
    assert "(tcpchat/1, TLS)" in p.stderr.decode()  # the banner says it is private


def test_client_trusts_the_system_store_with_tls_alone(server, ca, tmp_path):
    # OpenSSL's default store, which --tls uses, is where SSL_CERT_FILE says.
    p = run_client(server.tls_port, "--tls", env={"SSL_CERT_FILE": ca.ca_file},
                   tmp_path=tmp_path)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    p = run_client(server.tls_port, "--tls", env={"SSL_CERT_FILE": os.devnull},
                   tmp_path=tmp_path)
    assert p.returncode == 3
    err = p.stderr.decode()
    assert err.count("\n") == 1 and "certificate was refused" in err, err


def test_client_refuses_a_certificate_for_another_name(ca, tmp_path):
    cert, key = ca.issue("chat.example.net")
    with TLSServer(cert, key) as srv:
        p = run_client(srv.tls_port, "--tls-ca-file", ca.ca_file, tmp_path=tmp_path)
        assert p.returncode == 3
        err = p.stderr.decode()
        assert err.count("\n") == 1, err
        assert err.startswith("cannot connect to 127.0.0.1:%d: the server's certificate "
                              "was refused: " % srv.tls_port), err
        assert "127.0.0.1" in err.split("refused: ", 1)[1], err
        assert p.stdout == b""
        srv.wait_log("the client refused our certificate")


def test_client_pins_a_fingerprint_in_any_usual_form(server, pair, tmp_path):
    fp = fingerprint_of(pair[0])
    for form in (fp, fp.replace(":", "").lower()):
        p = run_client(server.tls_port, "--tls-fingerprint", form, tmp_path=tmp_path)
        assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    # No CA and no name are checked when pinned: any address will do.
    p = run_client(server.tls_port, "--tls-fingerprint", fp, "--host", "127.0.0.1",
                   tmp_path=tmp_path)
    assert p.returncode == 0


def test_client_refuses_a_wrong_fingerprint(server, pair, tmp_path):
    wrong = hashlib.sha256(b"not the certificate").hexdigest()
    p = run_client(server.tls_port, "--tls-fingerprint", wrong, tmp_path=tmp_path)
    assert p.returncode == 3
    err = p.stderr.decode()
    assert err.count("\n") == 1
    assert "fingerprint is %s, not the one given" % fingerprint_of(pair[0]) in err


def test_client_without_trust_refuses_and_has_no_way_around(server, tmp_path):
    # The test CA is not in the system store: refused, exit 3, one line.
    p = run_client(server.tls_port, "--tls", env={"SSL_CERT_FILE": os.devnull},
                   tmp_path=tmp_path)
    assert p.returncode == 3 and b"certificate was refused" in p.stderr
    from tcpchat.client import make_parser
    options = {o for a in make_parser()._actions for o in a.option_strings}
    assert not {o for o in options if "insecure" in o or "no-verify" in o}


def test_client_says_when_the_port_is_not_tls(tmp_path):
    with ServerProcess() as srv:
        p = run_client(srv.port, "--tls", tmp_path=tmp_path,
                       env={"SSL_CERT_FILE": os.devnull})
        assert p.returncode == 3
        assert b"does not speak TLS" in p.stderr, p.stderr


def test_bad_fingerprint_option_is_a_usage_error(tmp_path):
    p = run_client(1, "--tls-fingerprint", "abc", tmp_path=tmp_path)
    assert p.returncode == 2 and b"fingerprint" in p.stderr
    p = run_client(1, "--tls-fingerprint", "ab" * 32, "--tls-ca-file", "x", tmp_path=tmp_path)
    assert p.returncode == 2


def test_handshakes_are_spread_over_passes(pair, ca):
    # More clients at once than HANDSHAKES_PER_PASS: all get through.
    from tcpchat.server import HANDSHAKES_PER_PASS
    with TLSServer(*pair) as srv:
        n = HANDSHAKES_PER_PASS * 2 + 5
        raws = [socket.create_connection((HOST, srv.tls_port), timeout=TIMEOUT)
                for _ in range(n)]
        hello = client_hello(ca)  # the same bytes from everyone: only the first step
        for s in raws:
            s.sendall(hello)
        deadline = time.monotonic() + TIMEOUT
        answered = 0
        for s in raws:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            if s.recv(5)[:1] == b"\x16":  # a handshake record back
                answered += 1
            s.close()
        assert answered == n


def test_openssl_s_client_is_nc_with_tls(server, ca):
    # The debugging recipe of tcpchat(7) and the README.
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    p = subprocess.run(
        ["openssl", "s_client", "-quiet", "-verify_return_error", "-CAfile", ca.ca_file,
         "-connect", "%s:%d" % (HOST, server.tls_port)],
        input=b"/nick alice\n/quit\n", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=TIMEOUT * 2)
    lines = p.stdout.decode().splitlines()
    assert lines[0].startswith("HELLO tcpchat/1 "), (lines, p.stderr)
    assert "OK nick alice" in lines and lines[-1] == "BYE goodbye", lines


def test_certificates_from_the_openssl_command_verify_too(tmp_path, monkeypatch):
    # What the tests use where trustme is missing (an RPM build host).
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    import tlshelp
    monkeypatch.setattr(tlshelp, "trustme", None)
    authority = tlshelp.Authority(tmp_path, name="cli")
    pair = authority.issue("localhost", "127.0.0.1")
    from tcpchat.tls import TLSConnection, server_context
    conn = TLSConnection(server_context(*pair))
    handshake(conn, memory_client(authority, "127.0.0.1"))
    assert conn.established


def test_the_pages_state_the_tls_figures_the_code_uses():
    from tcpchat.server import HANDSHAKES_PER_PASS
    from tcpchat.tls import CONNECTION_COST, MIN_QUEUE
    for name in ("README.md", os.path.join("man", "tcpchat-server.1")):
        with open(os.path.join(REPO, name), encoding="utf-8") as f:
            text = " ".join(f.read().replace("\\-", "-").split())
        assert "at least %d with TLS" % MIN_QUEUE in text or \
            "must be at least %d" % MIN_QUEUE in text, name
        assert "%d KiB for" % (CONNECTION_COST // 1024) in text, name
        assert "most %d handshake steps" % HANDSHAKES_PER_PASS in text, name


def test_a_full_server_says_so_inside_tls(pair, ca):
    with TLSServer(*pair, "--max-clients", "1") as srv:
        alice = srv.connect(nick="alice")
        late = srv.connect_tls(ca.client_context())
        assert late.greeting.startswith("ERR server-full ")
        assert late.expect_closed() == []
        alice.send("/ping ok")
        assert alice.expect("PONG") == "PONG ok"


@pytest.mark.slow
def test_tls_benchmark_runs(tmp_path):
    # bench/ is in the checkout only (not in an sdist); tiny sizes, no timing.
    if not os.path.isfile(os.path.join(REPO, "bench", "tls.py")):
        pytest.skip("bench/ is not in this tree (an sdist)")
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    raw = tmp_path / "tls.json"
    p = subprocess.run([sys.executable, "-m", "bench.tls", "--tiny", "--json", str(raw)],
                       cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for row in ("server CPU us/msg", "connects/s", "RSS KiB per idle connection"):
        assert row in p.stdout
    import json
    results = json.loads(raw.read_text())["results"]
    assert {(r["scenario"], r["tls"]) for r in results} == {
        ("throughput", False), ("throughput", True), ("connections", False),
        ("connections", True)}
    assert all(r["ok"] for r in results)


def test_the_client_comes_back_over_tls_after_a_restart(pair, ca, tmp_path):
    # Reconnecting opens the connection the way the first connect did:
    # TLS, with the same check of the certificate.
    state = str(tmp_path / "server-state")
    pin = fingerprint_of(pair[0])
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XDG_STATE_HOME=str(tmp_path / "xdg"))
    with TLSServer(*pair, "--state-file", state) as srv:
        tls_port = srv.tls_port
        bob = srv.connect(framed=True)
        bob.send("/nick bob")
        token = bob.expect("SESSION").split()[1]
        client = subprocess.Popen(
            [sys.executable, "-m", "tcpchat.client", "--port", str(tls_port),
             "--tls-fingerprint", pin, "--nick", "ci", "--wait", str(TIMEOUT)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=REPO)
        try:
            client.stdin.write(b"/msg bob before\n")
            client.stdin.flush()
            assert bob.expect("MSG ").endswith(" ci bob before")
            bob.send("/ack 1")
            srv.wait_log("message 1 ")
            assert srv.stop() == 0
            bob.close()
            with TLSServer(*pair, "--state-file", state, "--tls-port", str(tls_port)) as srv2:
                line = srv2.wait_log("resumed as ci")  # the client is back...
                peer = line.split(" INFO ", 1)[1].split()[0]
                srv2.wait_log(peer + " connected (TLS)")  # ...over TLS
                bob2 = srv2.connect(framed=True)
                bob2.send("/resume " + token)
                bob2.expect("OK resume bob")
                client.stdin.write(b"/msg bob after\n")
                client.stdin.close()
                client.stdin = None  # communicate() would flush it otherwise
                msg = bob2.expect("MSG ")
                assert msg.endswith(" ci bob after")
                bob2.send("/ack " + msg.split()[1])
                out, err = client.communicate(timeout=TIMEOUT * 2)
                assert client.returncode == 0, (out + err).decode()
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
