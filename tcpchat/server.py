"""tcpchat-server: the I/O shell around ``tcpchat.chat``.

One thread, one ``selectors`` loop (epoll on Linux), non-blocking sockets.
All chat policy lives in the sans-I/O ``Chat``; this module only moves
bytes between it and the kernel, keeps the clock, and handles signals:

* Read: ``recv`` what is there and hand it to ``Chat.receive``, but only
  from connections the chat wants input from (``Session.reading``). A
  flooder, or a client whose input waits for a later pass, is simply not
  read: its data waits in its own socket buffer, and TCP slows it down.
* Work: input the chat held back is acted on at the next pass, without
  waiting in ``select``; throttled input when its time comes.
* Write, once per loop pass, after every event of the pass is handled (as
  Redis does "before sleep"): an optimistic ``send`` to each session that
  got output; write interest is registered only for what is left over, and
  dropped again when the queue drains.
* Close: only what the chat lists in ``to_close``, after the pass, so no
  handler later in the same pass meets a closed socket or a reused fd. A
  connection that ended with all its output written is closed gracefully
  (nginx's lingering close): shut down our side, read and discard for a
  short while, then close, so that input still in flight cannot make the
  kernel answer with a reset that destroys the last reply unread.

TLS (``--tls-cert``, ``--tls-key``, ``--tls-port``) runs in the same loop:
a connection accepted on the TLS port gets a ``tls.TLSConnection``, which
turns ciphertext into plaintext and back without touching the socket (see
tcpchat/tls.py for how, and why that way). The chat sees the same Session
either way; only ``_tls_read``/``_tls_write`` know the difference. The
handshake is bounded per pass (HANDSHAKES_PER_PASS) and in time (the
registration timeout); a failed one ends that connection alone.
"""

import argparse
import errno
import gc
import logging
import os
import selectors
import signal
import socket
import sys
import time
from itertools import islice

from . import __version__, logs, state
from .chat import Chat, Limits, Session, parse_exemptions

# tcpchat.tls (and with it ssl) is imported only when TLS is asked for: a
# Python built without ssl still runs the plain server.
tls = None


def _import_tls():
    """tcpchat.tls, imported now; ImportError where Python has no ssl."""
    global tls
    if tls is None:
        from . import tls as module
        tls = module
    return tls

__all__ = ["make_parser", "main", "Server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6078
#: The TLS port (tcpchat.tls.DEFAULT_PORT, which says why this number).
DEFAULT_TLS_PORT = 6079
#: Bytes asked of one recv(); large enough that a busy pipelining client is
#: read in few calls. A registered client is read only when the chat has
#: acted on all its earlier input, so this bounds its input buffer.
RECV_SIZE = 65536
#: The same before registration: a /nick is short (chat.PRE_REGISTER_MAX).
PRE_REGISTER_RECV = 4096
#: Lingering close: how long, and how many bytes, we read and discard after
#: shutting down our side; and how many connections may linger at once.
LINGER_TIME = 2.0
LINGER_BYTES = 65536
LINGER_MAX = 1024
#: Buffers handed to one sendmsg(); Linux's IOV_MAX is 1024.
IOV_MAX = 1024
#: Output up to this many bytes is joined and sent as one buffer: the
#: kernel takes one 40-byte line of a gather list at about twice the cost of
#: the same bytes copied once into a joined buffer (0.13-0.18 against
#: 0.07-0.09 us a line over a socketpair here), and a pipelining client's
#: output is many such lines. Larger output goes by sendmsg() without the
#: copy, as the kernel takes only what its send buffer holds.
JOIN_MAX = 262144
#: Connections accepted per listener readiness, so that a connection storm
#: cannot starve the clients already here of a loop pass.
ACCEPT_BATCH = 256
#: Seconds between timeout checks (registration, drain bounds).
TICK = 0.5
#: TLS handshake steps taken per loop pass. The costly one, answering a
#: client hello, takes about 0.5 ms of CPU (ECDSA P-256 with OpenSSL 3.0 on
#: the bench machine; an RSA key takes more), so a storm of TLS connects
#: delays the chat by some 16 ms a pass at most; the rest wait, readable,
#: in their sockets for the next pass.
HANDSHAKES_PER_PASS = 32
#: Encrypt-and-send rounds (tls.WRITE_CHUNK each) per TLS write: a busy TLS
#: connection gets 256 KiB a pass before the others have their turn.
TLS_WRITE_ROUNDS = 16

#: The selector key data of the signal wakeup socket (the plain listener's
#: is None, the TLS listener's _TLS_LISTENER, a connection's is its Session
#: or, over TLS, its _TLSLink, a lingering close's is a _Lingering).
_WAKEUP = object()
_TLS_LISTENER = object()

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

log = logging.getLogger("tcpchat.server")

#: The cyclic garbage collector's first threshold: tracked objects allocated
#: between two young collections (Python's default is 700). A chat message
#: makes a few (its record, its receipt) that live until a pass has written
#: them, so at 700 nearly every young collection traversed messages still in
#: flight and promoted them, to be traversed again in the older generations:
#: 5 to 7 per cent of the server's CPU at 100 and 1,000 pairs in the
#: throughput bench. At 50,000 most are gone before the collector looks.
#: What it still finds is the rare cycle (a closed session and its user).
GC_THRESHOLD = 50000


def format_address(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class _Lingering:
    """A socket we have shut down and are reading dry before closing it."""

    __slots__ = ("sock", "deadline", "left", "peer")

    def __init__(self, sock, deadline, peer):
        self.sock = sock
        self.deadline = deadline
        self.left = LINGER_BYTES  # bytes we still read and discard
        self.peer = peer


class _TLSLink:
    """A TLS connection's handle (its ``Session.handle``): the socket, the
    TLS state, and the session, which the selector hands back with it."""

    __slots__ = ("sock", "tls", "session")

    def __init__(self, sock, tls_connection, session):
        self.sock = sock
        self.tls = tls_connection
        self.session = session

    def __repr__(self):
        return "<_TLSLink %r %r>" % (self.session, self.tls)


def tune_keepalive(sock, seconds):
    """TCP keepalive and TCP_USER_TIMEOUT, so a peer that vanished without
    FIN or RST (a pulled cable, a laptop lid) is found within 2 x seconds.

    Probes start after ``seconds`` idle and go every ``seconds / 6``; six
    unanswered ones, or data left unacknowledged for ``2 x seconds``, end
    the connection. ``seconds`` 0 leaves the kernel's defaults (off).
    """
    if not seconds:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", seconds), ("TCP_KEEPINTVL", max(1, seconds // 6)),
                        ("TCP_KEEPCNT", 6), ("TCP_USER_TIMEOUT", 2 * seconds * 1000)):
        option = getattr(socket, name, None)
        if option is not None:  # all are there on Linux
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Server:
    """The event loop. ``serve_forever`` returns when shut down by a signal."""

    def __init__(self, chat, host=DEFAULT_HOST, port=DEFAULT_PORT, keepalive=0,
                 restart_on_stop=False, certificate=None, tls_port=DEFAULT_TLS_PORT):
        """``port`` None: no plain listener. ``certificate`` (a loaded
        tls.Certificate): also listen for TLS on ``tls_port``."""
        self.chat = chat
        self.keepalive = keepalive
        # With a state file, SIGTERM is a restart: users are kept (see main).
        self.restart_on_stop = restart_on_stop
        if certificate is not None:
            _import_tls()
        self.selector = selectors.DefaultSelector()
        self.certificate = certificate
        self.listener = self.tls_listener = None
        self.address = self.tls_address = None
        try:
            if port is not None:
                self.listener = self._listen(host, port)
                self.address = format_address(*self.listener.getsockname()[:2])
                self.selector.register(self.listener, READ, None)
            if certificate is not None:
                self.tls_listener = self._listen(host, tls_port)
                self.tls_address = format_address(*self.tls_listener.getsockname()[:2])
                self.selector.register(self.tls_listener, READ, _TLS_LISTENER)
        except BaseException:
            for sock in (self.listener, self.tls_listener):
                if sock is not None:
                    sock.close()
            raise
        self._handshaking = {}  # Session -> None: TLS handshakes, oldest first
        self._handshakes_left = HANDSHAKES_PER_PASS
        self._interest = {}  # Session -> the events it is registered for
        self._lingering = {}  # _Lingering -> None, oldest first
        self._accept_paused_until = None
        self._stop_signal = None
        self._hangup = False
        self._signals_installed = False
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._wakeup_w.setblocking(False)
        self.selector.register(self._wakeup_r, READ, _WAKEUP)

    @staticmethod
    def _listen(host, port):
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            # The kernel caps this at net.core.somaxconn; asking high keeps a
            # connection storm from being refused at the door.
            sock.listen(4096)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            e.tcpchat_port = port  # which of the two ports it was, for the log
            raise
        except BaseException:
            sock.close()
            raise
        return sock

    # ------------------------------------------------------------- signals

    def install_signal_handlers(self):
        """SIGINT, SIGTERM and SIGHUP wake the loop through a socket, as
        asyncio does.

        The Python-level handler does nothing; the signal number arrives on
        the wakeup socket, and the loop acts on it between events: an
        orderly shutdown, or (SIGHUP) reopening the log file.
        """
        signal.set_wakeup_fd(self._wakeup_w.fileno())
        self._signals_installed = True
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _ignore_signal)

    def _drain_wakeup(self):
        try:
            data = self._wakeup_r.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            if signum in (signal.SIGINT, signal.SIGTERM) and self._stop_signal is None:
                self._stop_signal = signum
            elif signum == signal.SIGHUP:
                self._hangup = True

    def _on_hangup(self):
        self._hangup = False
        if self.certificate is None:
            log.info("SIGHUP received: reopening the log file")
        else:
            log.info("SIGHUP received: reopening the log file, rereading the TLS certificate")
        logs.reopen()
        if self.certificate is not None:
            reload_certificate(self.certificate)

    # ---------------------------------------------------------------- loop

    def serve_forever(self):
        chat = self.chat
        select = self.selector.select
        read = self._read
        write = self._write
        clock = time.monotonic
        flush_logs = logs.flush
        next_tick = clock() + TICK
        stop_by = None
        while True:
            wake = next_tick
            if chat.backlog:
                wake = 0.0  # held-back input: look at the sockets, do not wait
            else:
                due = chat.next_wakeup()
                if due is not None and due < wake:
                    wake = due
            events = select(max(0.0, wake - clock()))
            chat.now = now = clock()
            self._handshakes_left = HANDSHAKES_PER_PASS
            for key, mask in events:
                s = key.data
                if type(s) is Session:
                    if s.gone:  # an earlier handler may have ended it
                        continue
                    try:
                        if mask & READ and s.reading:
                            read(s)
                        if mask & WRITE and not s.gone and s.out:
                            write(s)
                    except Exception:
                        self._internal_error(s)
                elif type(s) is _TLSLink:
                    self._tls_event(s, mask)
                elif s is None:
                    self._accept(self.listener, now)
                elif s is _TLS_LISTENER:
                    self._accept(self.tls_listener, now, over_tls=True)
                elif s is _WAKEUP:
                    self._drain_wakeup()
                else:
                    self._linger_read(s)
            if chat.backlog or (chat.next_wakeup() or now + 1) <= now:
                try:
                    chat.work(now)
                except Exception:  # a bug here must not end the service
                    logs.internal_error(log, "internal error acting on held-back input")
            self._flush()
            flush_logs()
            if now >= next_tick:
                next_tick = now + TICK
                try:
                    if self._handshaking:
                        self._expire_handshakes(now)
                    chat.expire(now)
                except Exception:  # a bug here must not end the service
                    logs.internal_error(log, "internal error checking timeouts")
                self._expire_lingering(now)
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = None
                    self._register_listeners()
                self._flush()
            if self._hangup:
                self._on_hangup()
            if self._stop_signal is not None and stop_by is None:
                log.info(
                    "%s received: telling %d clients goodbye",
                    signal.Signals(self._stop_signal).name,
                    len(chat.sessions),
                )
                self._stop_listening()
                # Nothing can be said to a TLS client before its handshake.
                for s in list(self._handshaking):
                    chat.disconnect(s, "server shutting down")
                chat.shutdown(now, restarting=self.restart_on_stop)
                self._flush()
                stop_by = now + chat.limits.drain_time
                next_tick = now + min(TICK, 0.05)
            if stop_by is not None:
                next_tick = min(next_tick, now + 0.05)
                if not chat.sessions and not chat.closing:
                    break
                if now >= stop_by:
                    chat.expire(now + chat.limits.drain_time)  # cut off the rest
                    self._flush()
                    break
        self.close()

    def stop(self):
        """Shut down as on SIGTERM; safe to call from another thread."""
        try:
            self._wakeup_w.send(bytes([signal.SIGTERM]))
        except OSError:
            pass

    def _listeners(self):
        return [(sock, data) for sock, data in ((self.listener, None),
                                                (self.tls_listener, _TLS_LISTENER))
                if sock is not None]

    def _register_listeners(self):
        for sock, data in self._listeners():
            self.selector.register(sock, READ, data)

    def _unregister_listeners(self):
        for sock, _ in self._listeners():
            self.selector.unregister(sock)

    def _stop_listening(self):
        if self._accept_paused_until is None:
            self._unregister_listeners()
        self._accept_paused_until = float("inf")

    def close(self):
        for key in list(self.selector.get_map().values()):
            data = key.data
            if type(data) is Session:
                self._close(data, linger=False)
            elif type(data) is _TLSLink:
                self._close(data.session, linger=False)
            elif type(data) is _Lingering:
                self._end_linger(data)
        self.selector.close()
        for sock, _ in self._listeners():
            sock.close()
        if self._signals_installed:
            signal.set_wakeup_fd(-1)
        self._wakeup_r.close()
        self._wakeup_w.close()

    # -------------------------------------------------------------- events

    def _accept(self, listener, now, over_tls=False):
        chat = self.chat
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a tick rather
                    # than spin on a listener that stays readable.
                    log.warning("accept failed (%s): pausing accepts", e.strerror)
                    self._unregister_listeners()
                    self._accept_paused_until = now + TICK
                    return
                log.warning("accept failed: %s", e)
                continue
            sock.setblocking(False)
            # We batch our own writes once per pass; Nagle would only add
            # latency to the small messages a chat is made of.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                tune_keepalive(sock, self.keepalive)
            except OSError as e:  # the peer may be gone already
                log.info("keepalive not set for %s: %s", format_address(*peer[:2]), e)
            s = chat.connect(format_address(*peer[:2]), now, _host(peer[0]))
            if over_tls:
                # The greeting (or ERR server-full) waits for the handshake.
                link = _TLSLink(sock, tls.TLSConnection(self.certificate.context), s)
                s.handle = link
                s.transport_held = link.tls.held()
                self._handshaking[s] = None
                chat.log.info("%s connected (TLS)", s.peer)
            else:
                s.handle = sock
                chat.log.info("%s connected", s.peer)
            self._interest[s] = 0
            self._update_interest(s)

    def _read(self, s):
        try:
            data = s.handle.recv(RECV_SIZE if s.user is not None else PRE_REGISTER_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.chat.disconnect(s, "connection lost: %s" % (e.strerror or e))
            return
        if data:
            self.chat.receive(s, data)
        else:
            self.chat.eof(s)

    def _internal_error(self, s):
        """A bug met while serving ``s`` costs ``s`` only, never the loop."""
        # Rate-limited: a bug a client can trigger at will must not let it
        # fill the disk with tracebacks.
        logs.internal_error(log, "internal error serving %s (%s); closing it",
                            s.nick or "-", s.peer)
        try:
            self.chat.disconnect(s, "internal error")
        except Exception:
            logs.internal_error(log, "and again while closing %s", s.peer)
        self._close(s, linger=False)

    def _write(self, s):
        sock = s.handle
        if type(sock) is _TLSLink:
            return self._tls_write(s)
        out = s.out
        try:
            if len(out) == 1:
                n = sock.send(out[0])
            elif s.enqueued - s.written <= JOIN_MAX:
                n = sock.send(b"".join(out))
            else:
                n = sock.sendmsg(islice(out, IOV_MAX))
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self.chat.disconnect(s, "connection lost: %s" % (e.strerror or e))
            return
        # Told even when nothing went: that the kernel took nothing is what
        # tells a slow consumer from a client that is merely busy.
        self.chat.sent(s, n)
        if not s.gone:
            self._update_interest(s)

    def _update_interest(self, s):
        """Register for what ``s`` needs: READ while the chat wants its
        input, WRITE while output waits for the kernel to take it. Over
        TLS, also READ during the handshake and WRITE while TLS records of
        its own (handshake, alerts) wait."""
        handle = s.handle
        if handle is None:
            return
        if type(handle) is _TLSLink:
            t = handle.tls
            want = ((READ if s.reading or not t.established else 0)
                    | (WRITE if t.pending or (s.backed_up and t.established) else 0))
            sock, data = handle.sock, handle
        else:
            want = (READ if s.reading else 0) | (WRITE if s.backed_up else 0)
            sock, data = handle, s
        have = self._interest.get(s, 0)
        if want == have:
            return
        if not have:
            self.selector.register(sock, want, data)
        elif not want:
            self.selector.unregister(sock)
        else:
            self.selector.modify(sock, want, data)
        self._interest[s] = want

    def _flush(self):
        """Write what this pass queued, then close what the chat is done with.

        Writing can make more output (a written line-mode MSG makes a
        DELIVERED for its sender, and drained output lets held-back input
        go on), so repeat a few times; what is still left is picked up at
        the next pass.
        """
        chat = self.chat
        write = self._write
        for _ in range(4):
            pending = chat.flushable
            if pending:
                chat.flushable = []
                # Newest first: a sender's SENT is queued before its
                # recipient's MSG, and writing the MSG to a line-mode peer
                # queues the DELIVERED; this way both go in one send.
                pending.reverse()
                for s in pending:
                    # A backed-up session waits for its WRITE event.
                    if not s.gone and s.out and not s.backed_up:
                        try:
                            write(s)
                        except Exception:
                            self._internal_error(s)
            if chat.to_close:
                ending, chat.to_close = chat.to_close, []
                for s in ending:
                    self._close(s)
            if chat.input_changed:
                changed, chat.input_changed = chat.input_changed, []
                for s in changed:
                    if not s.gone:
                        self._update_interest(s)
            if not chat.flushable and not chat.to_close:
                break

    def _close(self, s, linger=True):
        sock = s.handle
        if sock is None:
            return
        s.handle = None
        t = None
        if type(sock) is _TLSLink:
            t = sock.tls
            sock = sock.sock
            self._handshaking.pop(s, None)
        if self._interest.pop(s, 0):
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
        if s.queued and (t is None or t.established):
            if s.closing.startswith("connection"):
                # The peer went away first: routine (a port scanner, a
                # health check, a closed laptop), not the server's doing.
                log.info("%s (%s): %d bytes of output not written: %s",
                         s.nick or "-", s.peer, s.queued, s.closing)
            else:
                # Cut off (slow consumer, drain bound): never silently.
                log.warning("%s (%s): %d bytes of output not written: %s",
                            s.nick or "-", s.peer, s.queued, s.closing)
        if not s.gone:
            try:
                self.chat.disconnect(s, "server stopped")
            except Exception:
                logs.internal_error(log, "internal error closing %s", s.peer)
        self.chat.log.info("%s (%s) closed: %s", s.nick or "-", s.peer, s.closing)
        if linger and s.graceful and len(self._lingering) < LINGER_MAX:
            if t is not None:
                _say_close_notify(t, sock)
            self._start_linger(sock, s.peer)
        else:
            sock.close()

    # ----------------------------------------------------------------- TLS

    def _tls_event(self, link, mask):
        s = link.session
        if s.gone:  # an earlier handler may have ended it
            return
        try:
            if mask & READ and (s.reading or not link.tls.established):
                self._tls_read(s, link)
            if mask & WRITE and not s.gone:
                self._tls_write(s)
        except Exception:
            self._internal_error(s)

    def _tls_read(self, s, link):
        t = link.tls
        handshake = not t.established
        if handshake:
            if self._handshakes_left <= 0:
                return  # still readable: the next pass takes it
            self._handshakes_left -= 1
        try:
            data = link.sock.recv(RECV_SIZE if s.user is not None else PRE_REGISTER_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.chat.disconnect(s, "connection lost: %s" % (e.strerror or e))
            return
        if not data:
            if handshake:
                self.chat.disconnect(s, "connection closed during the TLS handshake")
            else:
                self.chat.eof(s)  # no close_notify: a chat message cannot be cut short
            return
        try:
            plain = t.receive(data)
        except tls.TLSError as e:
            _say_close_notify(t, link.sock, alert_only=True)
            self.chat.disconnect(s, "TLS %s failed: %s" % (
                "handshake" if handshake else "connection", e))
            return
        if handshake and t.established:
            del self._handshaking[s]
            self.chat.log.debug("%s: TLS handshake done (%s)", s.peer, t.describe())
        if plain:
            self.chat.receive(s, plain)
        if t.peer_closed and not s.gone:
            self.chat.eof(s)
        # Records of TLS's own to send, or a greeting that waited for the
        # handshake; other output goes in this pass's _flush, as over TCP.
        if not s.gone and (t.pending or (handshake and t.established)):
            self._tls_write(s)

    def _tls_write(self, s):
        """Send what TLS has ready, encrypting ``s.out`` as it goes; tell the
        chat after each send how much plaintext has wholly gone."""
        link = s.handle
        t = link.tls
        sock = link.sock
        chat = self.chat
        for _ in range(TLS_WRITE_ROUNDS):
            pending = t.pending
            if not pending:
                if not (t.established and s.out) or t.closing:
                    break
                t.encrypt(s.out)
            try:
                if len(pending) == 1:
                    n = sock.send(pending[0])
                else:
                    n = sock.sendmsg(islice(pending, IOV_MAX))
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                chat.disconnect(s, "connection lost: %s" % (e.strerror or e))
                return
            done = t.sent(n)
            if t.established:
                s.transport_held = t.held()
                chat.sent(s, done)  # also when 0: see _write
                if s.gone:
                    return
            if pending:
                break  # the kernel is full: wait for WRITE
        self._update_interest(s)

    def _expire_handshakes(self, now):
        """TLS handshakes not done within the registration timeout end."""
        limit = self.chat.limits.register_timeout
        handshaking = self._handshaking
        while handshaking:
            s = next(iter(handshaking))
            if now - s.connected_at < limit:
                break  # oldest first: the rest are younger
            del handshaking[s]
            self.chat.disconnect(s, "TLS handshake not finished within %g s" % limit)

    # ------------------------------------------------------ lingering close

    def _start_linger(self, sock, peer):
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the peer is gone already: nothing to protect
            sock.close()
            return
        entry = _Lingering(sock, time.monotonic() + LINGER_TIME, peer)
        self._lingering[entry] = None
        self.selector.register(sock, READ, entry)

    def _linger_read(self, entry):
        try:
            data = entry.sock.recv(min(entry.left, RECV_SIZE))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        entry.left -= len(data)
        if not data or entry.left <= 0:
            self._end_linger(entry)

    def _expire_lingering(self, now):
        for entry in list(self._lingering):
            if entry.deadline > now:
                break  # oldest first: the rest are younger
            self._end_linger(entry)

    def _end_linger(self, entry):
        if entry in self._lingering:
            del self._lingering[entry]
            try:
                self.selector.unregister(entry.sock)
            except (KeyError, ValueError):
                pass
            entry.sock.close()


def _say_close_notify(t, sock, alert_only=False):
    """Best effort, never blocking: the alert of a failed handshake, or
    close_notify after the last reply. A peer that is not reading loses it."""
    if not alert_only:
        t.close()
    if t.pending:
        try:
            sock.send(b"".join(t.pending))
        except OSError:
            pass


def reload_certificate(certificate):
    """SIGHUP: read the certificate and key again; keep the old on failure."""
    try:
        fingerprint = certificate.load()
    except tls.TLSConfigError as e:
        log.error("TLS certificate not reloaded, keeping the old one: %s", e)
        return False
    log.info("TLS certificate reloaded from %s (SHA-256 %s)", certificate.certfile, fingerprint)
    return True


def _host(address):
    """The peer's address as the per-address limit counts it: an IPv4
    address reached over an IPv6 socket counts as the IPv4 one."""
    if address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def _ignore_signal(signum, frame):
    """The wakeup fd carries the signal; nothing to do here."""


# ------------------------------------------------------------------ set-up


def raise_open_files_limit(max_clients):
    """Raise RLIMIT_NOFILE's soft limit so that max_clients can connect."""
    try:
        import resource
    except ImportError:  # not on Linux
        return
    want = max_clients + 64  # the listener, logs, the wakeup pair, headroom
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError) as e:
            log.warning("cannot raise the open files limit from %d: %s", soft, e)
        if soft < want:
            log.warning(
                "open files limit is %d (hard %d): about %d clients can connect, "
                "not --max-clients %d",
                soft, hard, max(soft - 64, 0), max_clients,
            )
        else:
            log.info("open files limit raised to %d", soft)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _frame_size(text):
    value = int(text)
    if value < 512:
        # max-text is --max-frame minus 128 (protocol.MSG_HEADROOM).
        raise argparse.ArgumentTypeError("must be at least 512")
    return value


def _seconds(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _seconds_or_off(text):
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("must be 0 (off) or more")
    return value


def _count_or_off(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (off) or more")
    return value


def _network(text):
    try:
        return parse_exemptions([text])[0]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


#: The keepalive default, in seconds: a vanished peer frees its nick within
#: about twice this.
DEFAULT_KEEPALIVE = 60


def make_parser():
    d = Limits()
    p = argparse.ArgumentParser(
        prog="tcpchat-server",
        description="A chat server over TCP: text lines for nc/telnet, "
        "length-prefixed frames for programs. See tcpchat(7) for the protocol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--host", "--ip", dest="host", default=DEFAULT_HOST,
                   help="address to listen on (IPv4 or IPv6)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="TCP port; 0 picks a free one")
    p.add_argument("--tls-cert", metavar="FILE",
                   help="TLS: the certificate, then any intermediates (PEM, e.g. certbot's "
                   "fullchain.pem); a relative path is looked up in $CREDENTIALS_DIRECTORY "
                   "when systemd sets it; reread on SIGHUP")
    p.add_argument("--tls-key", metavar="FILE",
                   help="TLS: the certificate's private key (PEM, unencrypted)")
    p.add_argument("--tls-port", type=int, default=DEFAULT_TLS_PORT,
                   help="TCP port for TLS, with --tls-cert; 0 picks a free one")
    p.add_argument("--tls-only", action="store_true",
                   help="listen for TLS only, not on --port")
    p.add_argument("--max-clients", type=_positive_int, default=d.max_clients, metavar="N",
                   help="connections at once; one more gets ERR server-full")
    p.add_argument("--max-line", type=_positive_int, default=d.max_line, metavar="BYTES",
                   help="longest line-mode message")
    p.add_argument("--max-frame", type=_frame_size, default=d.max_frame, metavar="BYTES",
                   help="largest frame, both ways (at least 512); chat text may be "
                   "128 bytes less (max-text)")
    p.add_argument("--max-queue", type=_positive_int, default=d.max_queue, metavar="BYTES",
                   help="unwritten output per connection before it is dropped as a slow consumer")
    p.add_argument("--max-unacked", type=_positive_int, default=d.max_unacked, metavar="N",
                   help="messages awaiting /ack per framed connection")
    p.add_argument("--register-timeout", type=_seconds, default=d.register_timeout,
                   metavar="SECONDS", help="time from connect to /nick before closing")
    p.add_argument("--presence-limit", type=int, default=d.presence_limit, metavar="N",
                   help="registered users up to which everyone sees JOINED/LEFT/RENAMED")
    p.add_argument("--drain-time", type=_seconds, default=d.drain_time, metavar="SECONDS",
                   help="time a closing connection, or the server at shutdown, "
                   "gets to flush its output")
    p.add_argument("--rate", type=_count_or_off, default=d.rate, metavar="UNITS",
                   help="flood limit: messages a second one connection may make the "
                   "server send, an /all counting its recipients; past it the server "
                   "stops reading from that connection for a while; 0 turns it off")
    p.add_argument("--receipt-timeout", type=_seconds_or_off, default=d.receipt_timeout,
                   metavar="SECONDS", help="time a recipient may take to confirm a message "
                   "before it fails with no receipt; 0 waits forever")
    p.add_argument("--keepalive", type=_count_or_off, default=DEFAULT_KEEPALIVE,
                   metavar="SECONDS", help="TCP keepalive idle time: a peer that vanished "
                   "is dropped within about twice this; 0 leaves the kernel's default (off)")
    p.add_argument("--max-per-address", type=_count_or_off, default=d.max_per_address,
                   metavar="N", help="connections at once from one address (except exempt "
                   "ones); one more gets ERR too-many-connections; 0 turns it off")
    p.add_argument("--exempt-address", type=_network, action="append", metavar="CIDR",
                   help="an address or network exempt from --max-per-address; repeatable; "
                   "giving it replaces the default list (127.0.0.1 and ::1)")
    p.add_argument("--resume-time", type=_seconds_or_off, default=d.resume_time,
                   metavar="SECONDS", help="how long a user whose connection was lost "
                   "stays away, nick and pair kept and messages held, for /resume; "
                   "0 turns resume off")
    p.add_argument("--state-file", metavar="PATH",
                   help="on SIGTERM or SIGINT save users, pairs and undelivered messages "
                   "here and say BYE server restarting; load them at start, so clients "
                   "resume after a restart")
    p.add_argument("--log-file", metavar="PATH", help="also log to this file")
    p.add_argument("--log-level", default="info", type=str.lower,
                   choices=("debug", "info", "warning", "error"),
                   help="level for connection and message events, in any case")
    p.add_argument("--syslog-address", default="/dev/log", metavar="ADDR",
                   help="syslog socket path, or HOST:PORT for UDP")
    p.add_argument("--no-syslog", action="store_true", help="do not log to syslog")
    p.add_argument("--syslog-messages", action="store_true",
                   help="send syslog a record per chat message too (a system call each; "
                   "stderr and --log-file always have them)")
    p.add_argument("--no-log-text", action="store_true",
                   help="log messages without their text")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return p


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.state_file and not args.resume_time:
        parser.error("--state-file needs resume: --resume-time more than 0")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_only and not args.tls_cert:
        parser.error("--tls-only needs --tls-cert and --tls-key")
    if args.tls_cert:
        try:
            _import_tls()
        except ImportError as e:  # a Python built without ssl
            parser.error("TLS is not available here: %s" % e)
        if args.max_queue < tls.MIN_QUEUE:
            parser.error("--max-queue must be at least %d with TLS: a TLS connection "
                         "holds about %d bytes of its own" % (tls.MIN_QUEUE,
                                                             tls.CONNECTION_COST))
    message_log = logs.configure(args.log_level, args.log_file,
                                 None if args.no_syslog else args.syslog_address,
                                 log_text=not args.no_log_text,
                                 syslog_messages=args.syslog_messages)
    certificate = None
    if args.tls_cert:
        certificate = tls.Certificate(args.tls_cert, args.tls_key)
        try:
            fingerprint = certificate.load()
        except tls.TLSConfigError as e:
            log.error("cannot use the TLS certificate: %s", e)
            logs.flush()
            return 1
        log.info("TLS certificate %s (SHA-256 %s)", certificate.certfile, fingerprint)
    raise_open_files_limit(args.max_clients)
    limits = Limits(
        max_clients=args.max_clients,
        max_line=args.max_line,
        max_frame=args.max_frame,
        max_queue=args.max_queue,
        max_unacked=args.max_unacked,
        register_timeout=args.register_timeout,
        presence_limit=args.presence_limit,
        drain_time=args.drain_time,
        rate=args.rate,
        receipt_timeout=args.receipt_timeout,
        max_per_address=args.max_per_address,
        exempt=tuple(args.exempt_address) if args.exempt_address else None,
        resume_time=args.resume_time,
    )
    chat = Chat(limits, logging.getLogger("tcpchat.chat"), log_text=not args.no_log_text,
                message_log=message_log)
    try:
        server = Server(chat, args.host, None if args.tls_only else args.port,
                        keepalive=args.keepalive, restart_on_stop=bool(args.state_file),
                        certificate=certificate, tls_port=args.tls_port)
    except (OSError, UnicodeError) as e:
        port = args.tls_port if args.tls_only else args.port
        if getattr(e, "tcpchat_port", None) is not None:
            port = e.tcpchat_port
        log.error("cannot listen on %s: %s", format_address(args.host, port),
                  e.strerror if isinstance(e, OSError) and e.strerror else e)
        logs.flush()
        return 1
    if args.state_file:
        load_state(chat, args.state_file)
    server.install_signal_handlers()
    # Supervisors and tests wait for these lines; the plain one comes first.
    if server.address:
        log.info("tcpchat-server %s listening on %s", __version__, server.address)
    if server.tls_address:
        log.info("tcpchat-server %s listening for TLS on %s", __version__, server.tls_address)
    logs.flush()  # now, not after the first pass: supervisors wait for it
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    server.serve_forever()
    status = 0
    if args.state_file and not save_state(chat, args.state_file):
        status = 1
    log.info("stopped")
    logs.close()
    return status


def load_state(chat, path):
    """Take back what the last planned stop saved; the file is used once
    (a crash later must not bring back state from before it)."""
    try:
        data = state.load(path)
    except state.StateError as e:
        try:
            aside = state.set_aside(path)
        except OSError as e2:
            aside = "nowhere (%s)" % (e2.strerror or e2)
        log.warning("state file %s unusable (%s): set aside as %s; starting empty",
                    path, e, aside)
        return
    if data is None:
        log.info("no state file at %s: starting empty", path)
        return
    users, messages = chat.restore(data, time.monotonic())
    try:
        os.unlink(path)
    except OSError as e:
        log.warning("cannot remove %s after loading it: %s", path, e.strerror or e)
    log.info("restored %d users and %d messages from %s; they may resume for %g s",
             users, messages, path, chat.limits.resume_time)


def save_state(chat, path):
    started = time.monotonic()
    data = chat.snapshot()
    try:
        size = state.save(path, data)
    except OSError as e:
        log.error("cannot save the state to %s: %s; %d users lose their sessions",
                  path, e.strerror or e, len(data["users"]))
        return False
    log.info("state saved to %s: %d users, %d messages, %d bytes in %.0f ms",
             path, len(data["users"]), len(data["messages"]), size,
             (time.monotonic() - started) * 1000)
    return True


if __name__ == "__main__":
    sys.exit(main())
