"""tcpchat-server: the I/O shell around ``tcpchat.chat``.

One thread, one ``selectors`` loop (epoll on Linux), non-blocking sockets.
All chat policy lives in the sans-I/O ``Chat``; this module only moves
bytes between it and the kernel, keeps the clock, and handles signals:

* Read: ``recv`` what is there and hand it to ``Chat.receive``.
* Write, once per loop pass, after every event of the pass is handled (as
  Redis does "before sleep"): an optimistic ``send`` to each session that
  got output; write interest is registered only for what is left over, and
  dropped again when the queue drains.
* Close: only what the chat lists in ``to_close``, after the pass, so no
  handler later in the same pass meets a closed socket or a reused fd.
"""

import argparse
import errno
import logging
import selectors
import signal
import socket
import sys
import time
from itertools import islice

from . import __version__, logs
from .chat import Chat, Limits

__all__ = ["make_parser", "main", "Server"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6078
#: Bytes asked of one recv(); large enough that a busy pipelining client is
#: read in few calls, small enough not to matter per connection (it is freed
#: at once).
RECV_SIZE = 65536
#: Buffers handed to one sendmsg(); Linux's IOV_MAX is 1024.
IOV_MAX = 1024
#: Connections accepted per listener readiness, so that a connection storm
#: cannot starve the clients already here of a loop pass.
ACCEPT_BATCH = 256
#: Seconds between timeout checks (registration, drain bounds).
TICK = 0.5

#: The selector key data of the signal wakeup socket (the listener's is None,
#: a connection's is its Session).
_WAKEUP = object()

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

log = logging.getLogger("tcpchat.server")


def format_address(host, port):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


class Server:
    """The event loop. ``serve_forever`` returns when shut down by a signal."""

    def __init__(self, chat, host=DEFAULT_HOST, port=DEFAULT_PORT):
        self.chat = chat
        self.selector = selectors.DefaultSelector()
        self.listener = self._listen(host, port)
        self.address = format_address(*self.listener.getsockname()[:2])
        self.selector.register(self.listener, READ, None)
        self._writing = set()  # sessions registered for write interest
        self._accept_paused_until = None
        self._stop_signal = None
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
        except BaseException:
            sock.close()
            raise
        return sock

    # ------------------------------------------------------------- signals

    def install_signal_handlers(self):
        """SIGINT and SIGTERM wake the loop through a socket, as asyncio does.

        The Python-level handler does nothing; the signal number arrives on
        the wakeup socket, and the loop starts an orderly shutdown.
        """
        signal.set_wakeup_fd(self._wakeup_w.fileno())
        self._signals_installed = True
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _ignore_signal)

    def _drain_wakeup(self):
        try:
            data = self._wakeup_r.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            if signum in (signal.SIGINT, signal.SIGTERM) and self._stop_signal is None:
                self._stop_signal = signum

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
            timeout = max(0.0, next_tick - clock())
            events = select(timeout)
            chat.now = now = clock()
            for key, mask in events:
                s = key.data
                if s is None:
                    self._accept(now)
                elif s is _WAKEUP:
                    self._drain_wakeup()
                elif not s.gone:  # an earlier handler may have ended it
                    try:
                        if mask & READ:
                            read(s)
                        if mask & WRITE and not s.gone and s.out:
                            write(s)
                    except Exception:
                        self._internal_error(s)
            self._flush()
            flush_logs()
            if now >= next_tick:
                next_tick = now + TICK
                try:
                    chat.expire(now)
                except Exception:  # a bug here must not end the service
                    log.exception("internal error checking timeouts")
                if self._accept_paused_until and now >= self._accept_paused_until:
                    self._accept_paused_until = None
                    self.selector.register(self.listener, READ, None)
                self._flush()
            if self._stop_signal is not None and stop_by is None:
                log.info(
                    "%s received: telling %d clients goodbye",
                    signal.Signals(self._stop_signal).name,
                    len(chat.sessions),
                )
                self._stop_listening()
                chat.shutdown(now)
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

    def _stop_listening(self):
        if self._accept_paused_until is None:
            self.selector.unregister(self.listener)
        self._accept_paused_until = float("inf")

    def close(self):
        for key in list(self.selector.get_map().values()):
            if key.data is not None and key.data is not _WAKEUP:
                self._close(key.data)
        self.selector.close()
        self.listener.close()
        if self._signals_installed:
            signal.set_wakeup_fd(-1)
        self._wakeup_r.close()
        self._wakeup_w.close()

    # -------------------------------------------------------------- events

    def _accept(self, now):
        chat = self.chat
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting for a tick rather
                    # than spin on a listener that stays readable.
                    log.warning("accept failed (%s): pausing accepts", e.strerror)
                    self.selector.unregister(self.listener)
                    self._accept_paused_until = now + TICK
                    return
                log.warning("accept failed: %s", e)
                continue
            sock.setblocking(False)
            # We batch our own writes once per pass; Nagle would only add
            # latency to the small messages a chat is made of.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = chat.connect(format_address(*peer[:2]), now)
            s.handle = sock
            self.selector.register(sock, READ, s)
            chat.log.info("%s connected", s.peer)

    def _read(self, s):
        try:
            data = s.handle.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self.chat.disconnect(s, "connection lost: %s" % (e.strerror or e))
            return
        if data:
            self.chat.receive(s, data)
        else:
            self.chat.disconnect(s, "connection closed")

    def _internal_error(self, s):
        """A bug met while serving ``s`` costs ``s`` only, never the loop."""
        log.exception("internal error serving %s (%s); closing it", s.nick or "-", s.peer)
        try:
            self.chat.disconnect(s, "internal error")
        except Exception:
            log.exception("and again while closing %s", s.peer)
        self._close(s)

    def _write(self, s):
        sock = s.handle
        out = s.out
        try:
            if len(out) == 1:
                n = sock.send(out[0])
            else:
                n = sock.sendmsg(islice(out, IOV_MAX))
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self.chat.disconnect(s, "connection lost: %s" % (e.strerror or e))
            return
        if n:
            self.chat.sent(s, n)
        if s.gone:
            return
        if s.out:
            if s not in self._writing:
                self._writing.add(s)
                self.selector.modify(sock, READ | WRITE, s)
        elif s in self._writing:
            self._writing.discard(s)
            self.selector.modify(sock, READ, s)

    def _flush(self):
        """Write what this pass queued, then close what the chat is done with.

        Writing can make more output (a written line-mode MSG makes a
        DELIVERED for its sender), so repeat a few times; what is still left
        is picked up at the next pass.
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
                    if not s.gone and s.out and s not in self._writing:
                        try:
                            write(s)
                        except Exception:
                            self._internal_error(s)
            if chat.to_close:
                ending, chat.to_close = chat.to_close, []
                for s in ending:
                    self._close(s)
            if not chat.flushable and not chat.to_close:
                break

    def _close(self, s):
        sock = s.handle
        if sock is None:
            return
        s.handle = None
        self._writing.discard(s)
        if s.queued:
            # Cut off (slow consumer, drain bound): never silently.
            log.warning("%s (%s): %d bytes of output not written: %s",
                        s.nick or "-", s.peer, s.queued, s.closing)
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        if not s.gone:
            try:
                self.chat.disconnect(s, "server stopped")
            except Exception:
                log.exception("internal error closing %s", s.peer)
        self.chat.log.info("%s (%s) closed: %s", s.nick or "-", s.peer, s.closing)


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


def _seconds(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


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
    p.add_argument("--max-clients", type=_positive_int, default=d.max_clients, metavar="N",
                   help="connections at once; one more gets ERR server-full")
    p.add_argument("--max-line", type=_positive_int, default=d.max_line, metavar="BYTES",
                   help="longest line-mode message")
    p.add_argument("--max-frame", type=_positive_int, default=d.max_frame, metavar="BYTES",
                   help="largest framed message")
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
    args = make_parser().parse_args(argv)
    message_log = logs.configure(args.log_level, args.log_file,
                                 None if args.no_syslog else args.syslog_address,
                                 log_text=not args.no_log_text,
                                 syslog_messages=args.syslog_messages)
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
    )
    chat = Chat(limits, logging.getLogger("tcpchat.chat"), log_text=not args.no_log_text,
                message_log=message_log)
    try:
        server = Server(chat, args.host, args.port)
    except (OSError, UnicodeError) as e:
        log.error("cannot listen on %s: %s", format_address(args.host, args.port),
                  e.strerror if isinstance(e, OSError) and e.strerror else e)
        logs.flush()
        return 1
    server.install_signal_handlers()
    log.info("tcpchat-server %s listening on %s", __version__, server.address)
    logs.flush()  # now, not after the first pass: supervisors wait for it
    server.serve_forever()
    log.info("stopped")
    logs.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
