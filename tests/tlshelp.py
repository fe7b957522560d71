"""TLS for the tests: certificates made at test time, the server with TLS
on, and test clients that speak TLS.

Certificates come from trustme (the test extra) or, where it is missing
(an RPM build host), from the openssl command; with neither, or without
the ssl module, ``certificates`` skips the test and says why. No key is
ever kept in the repository.
"""

import os
import select
import shutil
import socket
import subprocess
import sys

import pytest

from serverproc import HOST, REPO, TIMEOUT, FrameClient, LineClient, ServerProcess

try:
    import ssl
except ImportError:  # a Python built without it
    ssl = None

try:
    import trustme
except ImportError:
    trustme = None


class Authority:
    """A throwaway CA that issues server certificates into ``directory``."""

    def __init__(self, directory, name="ca"):
        self.directory = str(directory)
        self.name = name
        self.ca_file = os.path.join(self.directory, name + ".pem")
        self._issued = 0
        if trustme is not None:
            self._ca = trustme.CA()
            self._ca.cert_pem.write_to_path(self.ca_file)
        else:
            self._ca = None
            self._key = os.path.join(self.directory, name + ".key")
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", self._key, "-out", self.ca_file, "-days", "2",
                     "-subj", "/CN=tcpchat test CA " + name,
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                     "-addext", "subjectKeyIdentifier=hash")

    def issue(self, *names):
        """(certfile, keyfile) for a server called ``names`` (host names or
        IP addresses)."""
        self._issued += 1
        base = os.path.join(self.directory, "%s-leaf%d" % (self.name, self._issued))
        certfile, keyfile = base + ".crt", base + ".key"
        if self._ca is not None:
            leaf = self._ca.issue_cert(*names)
            with open(certfile, "wb") as f:
                for pem in leaf.cert_chain_pems:
                    f.write(pem.bytes())
            leaf.private_key_pem.write_to_path(keyfile)
            return certfile, keyfile
        sans = ",".join(("IP:%s" if _is_ip(n) else "DNS:%s") % n for n in names)
        ext = base + ".ext"
        with open(ext, "w") as f:
            f.write("subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\n"
                    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                    "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n" % sans)
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", keyfile, "-out", base + ".csr", "-subj", "/CN=%s" % names[0])
        _openssl("x509", "-req", "-in", base + ".csr", "-CA", self.ca_file, "-CAkey", self._key,
                 "-set_serial", str(1000 + self._issued), "-out", certfile, "-days", "2",
                 "-extfile", ext)
        return certfile, keyfile

    def client_context(self):
        """A client context trusting this CA (and checking host names)."""
        return ssl.create_default_context(cafile=self.ca_file)


def _is_ip(name):
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
        return True
    except OSError:
        return False


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


def certificates_or_skip():
    """Say why TLS cannot be tested here, by skipping; else return."""
    if ssl is None:
        pytest.skip("this Python has no ssl module")
    if trustme is None and shutil.which("openssl") is None:
        pytest.skip("neither trustme (pip install '.[test]') nor the openssl command "
                    "is here to make test certificates")


def fingerprint_of(certfile):
    from tcpchat.tls import certificate_fingerprint
    return certificate_fingerprint(certfile)


class TLSServer(ServerProcess):
    """The real server with TLS on; ``tls_port`` as it logged it.

    With ``tls_only`` there is no plain port (``port`` stays None).
    """

    def __init__(self, certfile, keyfile, *extra, tls_only=False, **kw):
        args = ["--tls-cert", certfile, "--tls-key", keyfile, "--tls-port", "0"]
        if tls_only:
            args.append("--tls-only")
        super().__init__(*(args + list(extra)), **kw)
        self.tls_only = tls_only
        self.tls_port = None

    def start(self):
        if not self.tls_only:
            super().start()
        else:  # ServerProcess.start, waiting for the TLS line alone
            import subprocess as sp
            import threading
            cmd = [sys.executable, "-m", "tcpchat.server", "--host", self.host, "--no-syslog"]
            cmd += self.extra
            env = dict(os.environ)
            env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
            self.proc = sp.Popen(cmd, stdin=sp.DEVNULL, stdout=sp.DEVNULL, stderr=sp.PIPE,
                                 env=env, cwd=REPO, preexec_fn=self._limit)
            self._collector = threading.Thread(target=self._collect, daemon=True)
            self._collector.start()
        line = self.wait_log("listening for TLS on ")
        self.tls_port = int(line.rsplit(":", 1)[1])
        return self

    def connect_tls(self, context, framed=False, nick=None, server_hostname="localhost"):
        cls = TLSFrameClient if framed else TLSLineClient
        client = cls(self.host, self.tls_port, context, server_hostname)
        if nick is not None:
            client.send("/nick " + nick)
            client.expect("OK nick " + nick)
        return client


class _TLSClient:
    """serverproc's clients over TLS: same expectations, deadlines, framing.

    ``clean_close`` says how the server ended the stream: True with
    close_notify, False without, None while open.
    """

    def __init__(self, host, port, context, server_hostname="localhost"):
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock = context.wrap_socket(raw, server_hostname=server_hostname,
                                        suppress_ragged_eofs=False)
        self.sock.setblocking(False)
        self._buf = b""
        self._messages = []
        self.closed = False
        self.clean_close = None
        self.greeting = self._read_greeting()

    def _fill(self, deadline):
        """Read once, waiting until ``deadline``; False on timeout."""
        import time
        if not self.sock.pending():
            left = max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return False
        try:
            data = self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return True  # part of a record: wait for the rest
        except ssl.SSLZeroReturnError:
            data = b""
        except (ssl.SSLEOFError, ConnectionResetError):
            self.clean_close = False
            self.closed = True
            return False
        if not data:
            if self.clean_close is None:
                self.clean_close = True
            self.closed = True
            return False
        self._buf += data
        return True

    def peer_fingerprint(self):
        import hashlib
        from tcpchat.tls import format_fingerprint
        return format_fingerprint(hashlib.sha256(self.sock.getpeercert(True)).digest())


class TLSLineClient(_TLSClient, LineClient):
    pass


class TLSFrameClient(_TLSClient, FrameClient):
    def __init__(self, host, port, context, server_hostname="localhost"):
        _TLSClient.__init__(self, host, port, context, server_hostname)
        self.send_raw(b"\x00")


__all__ = ["Authority", "TLSServer", "TLSLineClient", "TLSFrameClient", "HOST",
           "certificates_or_skip", "fingerprint_of"]
