"""TLS for tcpchat, with the standard library's ``ssl`` and nothing else.

Theory of operation
-------------------
On the server, a TLS connection is a ``TLSConnection``: an ``ssl.SSLObject``
between two ``ssl.MemoryBIO``, as asyncio's sslproto.py drives it. It never
touches a socket: the server's loop hands it the ciphertext it read and
gets plaintext back (``receive``), hands it plaintext from the head of the
session's output and gets ciphertext records to write (``encrypt``,
``pending``), and tells it how much of those went to the kernel (``sent``),
which answers with how much plaintext is now wholly on its way. So the
shell's contracts hold unchanged inside TLS:

* Input is read only while the chat wants it; the handshake is the one
  exception, since it is not the chat's input. One read's ciphertext
  becomes at most as much plaintext, handed to the chat at once.
* ``chat.sent(s, n)`` after every write attempt counts plaintext whose
  records have all reached the kernel, so "written" still means what it
  means in plain TCP (a line-mode recipient has a message once all of it
  was written), never earlier.
* Everything the connection holds below the chat is counted in
  ``Session.held()`` (``TLSConnection.held``): ciphertext not yet written,
  and ``CONNECTION_COST`` for the TLS state itself. A client that does not
  read its TLS records backs up like any other slow consumer.
* Control records (the handshake, session tickets, alerts, close_notify)
  go out through the same queue, in the order OpenSSL made them.

Why ``MemoryBIO`` and not a non-blocking ``SSLSocket``: measured with
``python -m bench.tls_io``, two echo servers that differ only in this (2
shared cores, Python 3.11, OpenSSL 3.0, ECDSA P-256, 1,000 connections,
three runs each):

==============================================  ============  ============
                                                MemoryBIO     SSLSocket
==============================================  ============  ============
server CPU per echoed 40-byte message           0.70-0.76 us  0.75-0.85 us
RSS per idle connection after the handshake     17.2 KiB      15.2 KiB
RSS per idle connection after 64 KiB each way   36.5-39.4     15.3-15.4
==============================================  ============  ============

CPU is the same within the noise of a shared machine, MemoryBIO a little
ahead: one ``recv`` takes in every record that is there, where an
SSLSocket without read-ahead makes two ``read`` calls per record. Memory
is the SSLSocket's: 2 KiB less when idle, and OpenSSL frees its record
buffers once a connection is quiet, where a MemoryBIO keeps the largest
buffer it ever held. So ciphertext goes in and out ``SLICE`` bytes at a
time, which bounds what the two BIOs keep to about 9 KiB (glibc's
mallinfo2 in a test harness: 1 KiB slices keep under 1 KiB, 16 KiB
slices 41 KiB, both ways counted), and that is counted in
``CONNECTION_COST``. What decides is what the shell can see and promise.
With MemoryBIO every byte a connection holds below the chat is ours to
count against ``--max-queue`` (an SSLSocket holds a record of ciphertext
inside OpenSSL, where no limit sees it, and its ``send`` writes all or
raises, so a write cannot be accounted in parts); no plaintext can wait in
OpenSSL's buffer where a level-triggered ``select`` never reports it (the
``SSLSocket.pending()`` trap); a read never needs the socket to be
writable (``SSLWantWriteError`` from ``recv``); control records go out
through the one queue; and the class is tested by feeding it bytes, like
the rest of the core.

On the client (``client_context``, ``ClientTLSSocket``), one connection in
a poll loop: an ``SSLSocket``, its handshake done before the loop starts,
is the simple and right tool.
"""

import hashlib
import hmac
import os
import re
import ssl

__all__ = [
    "DEFAULT_PORT",
    "TLSError",
    "TLSConfigError",
    "TLSConnection",
    "Certificate",
    "server_context",
    "client_context",
    "resolve_path",
    "parse_fingerprint",
    "format_fingerprint",
    "certificate_fingerprint",
    "ClientTLSSocket",
    "TLSClientError",
    "wrap_client",
]

#: The TLS port: next to the plain 6078, as XMPP's direct TLS (5223 beside
#: 5222) and Redis's usual TLS port (6380 beside 6379) do, so one firewall
#: range (6078-6079) opens both; unassigned by IANA, as 6078 is.
DEFAULT_PORT = 6079
#: Plaintext encrypted, and ciphertext fed to OpenSSL, per call: a
#: MemoryBIO keeps the largest buffer it ever held, so this bounds its
#: memory; 4 KiB costs a record header (22 bytes) more per 4 KiB of bulk
#: output and nothing for chat lines, which are shorter.
SLICE = 4096
#: Plaintext encrypted per write round: what may be held twice at once,
#: as plaintext in the session's output and as ciphertext in ``pending``.
WRITE_CHUNK = 16384
#: Bytes counted for one TLS connection's own state: what an idle TLS
#: connection adds to the server's resident memory over a plain one (19 KiB
#: with OpenSSL 3.0, measured by ``python -m bench.tls``: OpenSSL's SSL
#: object, which frees its record buffers when idle, the two BIOs and ours),
#: plus what the two BIOs may keep after traffic (a SLICE each, and a third
#: of it for their growth policy), rounded up.
CONNECTION_COST = 32 * 1024
#: The least --max-queue that leaves a TLS connection room to work: its
#: own state, a write round held twice, and a reply or two.
MIN_QUEUE = CONNECTION_COST + 2 * WRITE_CHUNK + 16384


class TLSError(Exception):
    """The peer broke TLS: a failed handshake or a damaged record. The text
    says what happened, for the log."""


class TLSConfigError(Exception):
    """A certificate or key that cannot be used; the text says why."""


# ----------------------------------------------------------------- server


def resolve_path(path, environ=None):
    """``path`` as the server opens it. A relative path is looked up in
    ``$CREDENTIALS_DIRECTORY`` when systemd set it (``LoadCredential=``),
    so the options file can say ``--tls-key tls.key``; otherwise it is
    relative to the working directory, as usual."""
    environ = os.environ if environ is None else environ
    base = environ.get("CREDENTIALS_DIRECTORY")
    if base and not os.path.isabs(path):
        return os.path.join(base, path)
    return path


def _no_passphrase():
    # load_cert_chain would otherwise ask on the terminal, which a service
    # does not have.
    raise TLSConfigError("the key is encrypted; give the server an unencrypted key "
                         "readable only by root (see tcpchat-server(1), FILES)")


def server_context(certfile, keyfile):
    """An ``SSLContext`` serving ``certfile`` (the certificate, then any
    intermediates: certbot's fullchain.pem) with ``keyfile``: TLS 1.2 and
    newer, the ssl module's default ciphers, no renegotiation.

    Raises TLSConfigError saying what is wrong with the pair.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # A client cannot make us redo a handshake (TLS 1.2); TLS 1.3 has none.
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        ctx.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except TLSConfigError:
        raise
    except OSError as e:  # ssl.SSLError is an OSError too
        raise TLSConfigError(_describe_load_error(e, certfile, keyfile))
    return ctx


def _describe_load_error(e, certfile, keyfile):
    if isinstance(e, ssl.SSLError):
        reason = getattr(e, "reason", None) or ""
        if reason == "KEY_VALUES_MISMATCH":
            return "the key %s does not belong to the certificate %s" % (keyfile, certfile)
        if reason in ("NO_START_LINE", "PEM_LIB", "NO_CERTIFICATE_OR_CRL_FOUND"):
            return "%s or %s is not a PEM certificate and key (%s)" % (
                certfile, keyfile, reason.lower().replace("_", " ") or e)
        return "%s / %s: %s" % (certfile, keyfile, (reason.lower().replace("_", " ") or e))
    name = e.filename or "%s or %s" % (certfile, keyfile)
    return "%s: %s" % (name, e.strerror or e)


class Certificate:
    """The server's certificate and key, read at start and on SIGHUP.

    ``context`` is the SSLContext new connections get; a reload that fails
    leaves it as it was (connections made before a reload keep theirs).
    """

    def __init__(self, certfile, keyfile, environ=None):
        self.certfile = resolve_path(certfile, environ)
        self.keyfile = resolve_path(keyfile, environ)
        self.context = None
        self.fingerprint = None

    def load(self):
        """Read the pair; TLSConfigError if it cannot be used (the old one
        stays in use). Returns the new certificate's SHA-256 fingerprint."""
        ctx = server_context(self.certfile, self.keyfile)
        try:
            fp = certificate_fingerprint(self.certfile)
        except (OSError, ValueError) as e:
            raise TLSConfigError("%s: %s" % (self.certfile, e))
        self.context = ctx
        self.fingerprint = fp
        return fp


def _explain(e):
    """Why a handshake failed, in a few words for the log."""
    reason = getattr(e, "reason", None)
    if not reason:
        return str(e) or e.__class__.__name__
    words = reason.lower().replace("_", " ")
    if reason in ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL"):
        return "not TLS: plain text on the TLS port? (%s)" % words
    if reason in ("HTTP_REQUEST", "HTTPS_PROXY_REQUEST"):
        return "not TLS: an HTTP request on the TLS port"
    if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_", "TLSV13_ALERT_")):
        alert = words.split(" alert ", 1)[-1]
        if alert in ("unknown ca", "bad certificate", "certificate unknown",
                     "certificate expired", "certificate revoked",
                     "unsupported certificate", "access denied"):
            return "the client refused our certificate (alert: %s)" % alert
        return "the client ended it (alert: %s)" % alert
    if reason in ("UNSUPPORTED_PROTOCOL", "NO_CIPHERS_AVAILABLE", "NO_SHARED_CIPHER",
                  "VERSION_TOO_LOW"):
        return "the client offers nothing we accept (TLS 1.2 or newer): %s" % words
    return words


class TLSConnection:
    """One server-side TLS connection as bytes in, bytes out (see the
    module doc). The shell owns the socket; this owns the TLS state.

    ``pending`` holds ciphertext chunks to write, in order; ``marks`` the
    stream offset at which each encrypted slice's last byte lies, with the
    plaintext bytes it carries, so ``sent`` can say how much plaintext has
    gone out in full.
    """

    __slots__ = (
        "_obj", "_in", "_out", "established", "peer_closed", "closing",
        "pending", "marks", "queued", "written",
    )

    def __init__(self, context):
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self.established = False  # the handshake is complete
        self.peer_closed = False  # the peer sent close_notify
        self.closing = False  # we sent (queued) close_notify: no more data
        # Lists, not deques: they hold a few records at most, and an empty
        # deque costs 600 bytes a connection where an empty list costs 56.
        self.pending = []  # ciphertext to write, in order
        self.marks = []  # (stream end, plaintext bytes) per encrypted slice
        self.queued = 0  # ciphertext bytes ever queued
        self.written = 0  # ciphertext bytes ever written

    def __repr__(self):
        return "<TLSConnection %s pending=%d>" % (
            "open" if self.established else "handshake", self.queued - self.written)

    def held(self):
        """Bytes held for this connection: its state and ciphertext unwritten."""
        return CONNECTION_COST + self.queued - self.written

    def describe(self):
        """'TLSv1.3 TLS_AES_256_GCM_SHA384', once established."""
        cipher = self._obj.cipher()
        return "%s %s" % (self._obj.version(), cipher[0] if cipher else "")

    def receive(self, data):
        """Ciphertext arrived: advance the handshake, return the plaintext
        in complete records (b"" if none yet). Raises TLSError when the
        peer breaks TLS; ``pending`` may then hold an alert for it."""
        obj = self._obj
        incoming = self._in
        view = memoryview(data)
        plain = []
        for start in range(0, len(view), SLICE):
            incoming.write(view[start:start + SLICE])
            try:
                if not self.established:
                    obj.do_handshake()
                    self.established = True
                # Without read-ahead OpenSSL takes one record at a time from
                # the BIO: ciphertext left there means another record (or
                # the start of one, which ends in SSLWantReadError).
                while incoming.pending:
                    chunk = obj.read(WRITE_CHUNK)
                    if not chunk:  # close_notify
                        self.peer_closed = True
                        break
                    plain.append(chunk)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # close_notify, after ours
                self.peer_closed = True
            except ssl.SSLError as e:
                self._collect()
                raise TLSError(_explain(e))
            if self.peer_closed:
                break
        self._collect()
        if not plain:
            return b""
        return plain[0] if len(plain) == 1 else b"".join(plain)

    def encrypt(self, out):
        """Encrypt up to WRITE_CHUNK bytes from the head of ``out`` (a
        sequence of bytes-like chunks, none of it encrypted yet) into
        ``pending``. Returns the plaintext bytes taken."""
        parts = []
        size = 0
        for chunk in out:
            parts.append(chunk)
            size += len(chunk)
            if size >= WRITE_CHUNK:
                break
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        view = memoryview(data)[:WRITE_CHUNK]
        write = self._obj.write
        read = self._out.read
        pending = self.pending
        marks = self.marks
        for start in range(0, len(view), SLICE):
            piece = view[start:start + SLICE]
            write(piece)
            record = read()
            pending.append(record)
            self.queued += len(record)
            marks.append((self.queued, len(piece)))
        return len(view)

    def sent(self, nbytes):
        """``nbytes`` of ``pending`` went to the kernel. Returns the plaintext
        bytes whose ciphertext has now been written in full."""
        pending = self.pending
        self.written += nbytes
        gone = 0
        while nbytes:
            size = len(pending[gone])
            if nbytes >= size:
                gone += 1
                nbytes -= size
            else:
                pending[gone] = memoryview(pending[gone])[nbytes:]
                break
        if gone:
            del pending[:gone]
        done = 0
        marks = self.marks
        written = self.written
        gone = 0
        for end, plain in marks:
            if end > written:
                break
            done += plain
            gone += 1
        if gone:
            del marks[:gone]
        return done

    def close(self):
        """Queue close_notify: we send nothing more."""
        if self.closing:
            return
        self.closing = True
        try:
            self._obj.unwrap()
        except ssl.SSLError:  # want-read (their close_notify): not waited for
            pass
        self._collect()

    def _collect(self):
        """Move whatever OpenSSL wrote (handshake, tickets, alerts) to pending."""
        if self._out.pending:
            data = self._out.read()
            self.pending.append(data)
            self.queued += len(data)


# ----------------------------------------------------------------- client

_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def parse_fingerprint(text):
    """A SHA-256 fingerprint as people copy it: 64 hex digits, in either
    case, with or without colons (``openssl x509 -fingerprint -sha256``
    prints ``SHA256 Fingerprint=AB:CD:...``, which is taken whole too).
    Returns the 32 bytes; ValueError otherwise."""
    value = text.strip()
    if "=" in value:
        label, _, rest = value.partition("=")
        if label.strip().lower().replace("-", "") in ("sha256 fingerprint", "sha256"):
            value = rest.strip()
    if value.lower().startswith("sha256:"):
        value = value[7:]
    value = value.replace(":", "").replace(" ", "")
    if not _HEX.match(value):
        raise ValueError("a SHA-256 fingerprint is 64 hex digits, colons allowed")
    return bytes.fromhex(value)


def format_fingerprint(digest):
    """32 bytes as AB:CD:..., the way openssl prints it."""
    return ":".join("%02X" % b for b in digest)


def certificate_fingerprint(certfile):
    """The SHA-256 fingerprint of the first certificate in a PEM file."""
    with open(certfile, encoding="ascii", errors="replace") as f:
        text = f.read()
    match = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    if not match:
        raise ValueError("no PEM certificate in it")
    der = ssl.PEM_cert_to_DER_cert(match.group(0))
    return format_fingerprint(hashlib.sha256(der).digest())


def client_context(ca_file=None, pinned=None):
    """The client's SSLContext: TLS 1.2 and newer, verifying the server.

    By default against the system's CAs and the host name; ``ca_file``
    trusts that CA (a private one) instead. ``pinned`` (32 bytes) trusts
    exactly the certificate with that SHA-256 fingerprint, whoever signed
    it: the chain and the name are not checked, the fingerprint is, by
    ``check_pinned`` once the handshake is done.
    """
    if pinned is None:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # check_pinned checks instead
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class TLSClientError(Exception):
    """The client's TLS connect failed; the text is one line for the user."""


def wrap_client(sock, host, ca_file=None, pinned=None):
    """TLS over the connected ``sock`` to ``host``: handshake (within the
    socket's timeout) and verification. Returns the SSLSocket; on failure
    closes ``sock`` and raises TLSClientError saying why in one line."""
    try:
        ctx = client_context(ca_file, pinned)
    except (OSError, ValueError) as e:
        sock.close()
        raise TLSClientError("cannot use --tls-ca-file %s: %s" % (
            ca_file, getattr(e, "strerror", None) or getattr(e, "reason", None) or e))
    try:
        ssock = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except (OSError, ValueError) as e:
        sock.close()
        raise TLSClientError(describe_client_error(e) or _os_reason(e))
    except BaseException:
        sock.close()
        raise
    # The socket is the SSLSocket's now: whatever ends the handshake (an
    # error, a refused certificate, a signal) closes it.
    try:
        ssock.do_handshake()
        if pinned is not None:
            check_pinned(ssock, pinned)
    except (OSError, ValueError) as e:
        ssock.close()
        raise TLSClientError(describe_client_error(e) or _os_reason(e))
    except BaseException:
        ssock.close()
        raise
    return ssock


def _os_reason(e):
    if isinstance(e, TimeoutError) or type(e).__name__ == "timeout":
        return "TLS handshake timed out"
    return getattr(e, "strerror", None) or str(e) or e.__class__.__name__


def check_pinned(sock, pinned):
    """Raise ssl.SSLCertVerificationError unless the peer's certificate has
    the pinned SHA-256 fingerprint."""
    der = sock.getpeercert(binary_form=True)
    got = hashlib.sha256(der or b"").digest()
    if not hmac.compare_digest(got, pinned):
        e = ssl.SSLCertVerificationError(
            "its SHA-256 fingerprint is %s, not the one given with --tls-fingerprint"
            % format_fingerprint(got))
        e.verify_message = e.args[0]
        raise e


def describe_client_error(e):
    """One line for a failed TLS connect."""
    if isinstance(e, ssl.SSLCertVerificationError):
        why = getattr(e, "verify_message", None) or str(e)
        return "the server's certificate was refused: %s" % why.rstrip(".")
    reason = getattr(e, "reason", None)
    if reason == "WRONG_VERSION_NUMBER":
        return "TLS handshake failed: the server does not speak TLS on that port"
    if isinstance(e, ssl.SSLError):
        return "TLS handshake failed: %s" % (
            reason.lower().replace("_", " ") if reason else str(e))
    return None


class ClientTLSSocket:
    """A connected, non-blocking SSLSocket as the client's loop uses a
    plain socket: ``recv`` and ``send`` raise BlockingIOError for "later"
    (SSLWantReadError is an OSError, which the loop would take for a lost
    connection), ``recv`` returns everything already decrypted, and
    ``close`` says close_notify first."""

    def __init__(self, sock):
        self._sock = sock

    def fileno(self):
        return self._sock.fileno()

    def recv(self, size):
        sock = self._sock
        try:
            data = sock.recv(size)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError("TLS record incomplete")
        except ssl.SSLZeroReturnError:
            return b""
        # A record's plaintext held back in OpenSSL would never wake poll().
        while data and sock.pending() and len(data) < size:
            data += sock.recv(size - len(data))
        return data

    def send(self, data):
        try:
            return self._sock.send(data)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError("TLS write must wait")

    def close(self):
        sock = self._sock
        if sock.fileno() >= 0:
            try:
                sock.setblocking(False)
                sock.unwrap()
            except (OSError, ValueError):  # want-read, or the peer is gone
                pass
        sock.close()
