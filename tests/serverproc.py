"""Run the real tcpchat-server as a subprocess and talk to it over loopback.

Everything waits for an expected line with a deadline; nothing sleeps to
synchronise. Every loop here is bounded in time.
"""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
TIMEOUT = 10.0  # seconds any single expectation may take on a loaded CI box


class ServerProcess:
    """The real server on an ephemeral loopback port.

    ``with ServerProcess("--max-clients", "2") as srv: srv.port``
    Its stderr is collected by a thread; ``wait_log(text)`` waits for a line.
    """

    def __init__(self, *extra, host=HOST, nofile=None):
        self.extra = list(extra)
        self.host = host
        self.nofile = nofile  # a soft open-files limit to start it under
        self.port = None
        self.proc = None
        self._lines = []
        self._cond = threading.Condition()

    def start(self):
        cmd = [sys.executable, "-m", "tcpchat.server", "--host", self.host, "--port", "0"]
        if "--syslog-address" not in self.extra:
            cmd.append("--no-syslog")  # the test machine's /dev/log is not ours
        cmd += self.extra
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env, cwd=REPO, preexec_fn=self._limit,
        )
        self._collector = threading.Thread(target=self._collect, daemon=True)
        self._collector.start()
        line = self.wait_log("listening on ")
        address = line.split("listening on ", 1)[1].strip()
        self.port = int(address.rsplit(":", 1)[1])
        return self

    def _limit(self):
        if self.nofile is not None:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, hard))

    def _collect(self):
        for raw in self.proc.stderr:
            with self._cond:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._lines.append(None)  # end of output
            self._cond.notify_all()

    def log_lines(self):
        with self._cond:
            return [line for line in self._lines if line is not None]

    def wait_log(self, text, timeout=TIMEOUT, start=0):
        """The first stderr line (from index ``start``) containing ``text``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = start
            while True:
                while seen < len(self._lines):
                    line = self._lines[seen]
                    seen += 1
                    if line is None:
                        raise AssertionError("server exited before logging %r:\n%s"
                                             % (text, "\n".join(self.log_lines())))
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("server never logged %r:\n%s"
                                         % (text, "\n".join(self.log_lines())))
                self._cond.wait(left)

    def stop(self, sig=signal.SIGTERM, timeout=TIMEOUT):
        """Signal the server and wait for it; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("server did not exit within %s s of %s" % (timeout, sig))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # The collector reads until EOF, which the exit has brought.
        self._collector.join(TIMEOUT)
        self.proc.stderr.close()

    def connect(self, framed=False, nick=None):
        client = (FrameClient if framed else LineClient)(self.host, self.port)
        if nick is not None:
            client.send("/nick " + nick)
            client.expect("OK nick " + nick)
        return client


class _Client:
    """A blocking-with-deadline test client; subclasses do the framing."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setblocking(False)
        self._buf = b""
        self._messages = []
        self.closed = False
        self.greeting = self._read_greeting()

    def _fill(self, deadline):
        """Read once, waiting until ``deadline``; False on timeout."""
        # A deadline already passed still polls once, without waiting.
        left = max(0.0, deadline - time.monotonic())
        r, _, _ = select.select([self.sock], [], [], left)
        if not r:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        self._buf += data
        return True

    def _read_greeting(self):
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self._buf:
            if not self._fill(deadline):
                raise AssertionError("no greeting; got %r" % self._buf)
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def next_message(self, timeout=TIMEOUT):
        """The next message as text, or None if none came in time / closed."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._parse()
            if msg is not None:
                return msg
            if self.closed or not self._fill(deadline):
                return self._parse()

    def expect(self, prefix, timeout=TIMEOUT):
        """Skip messages until one starts with ``prefix``; return it."""
        deadline = time.monotonic() + timeout
        skipped = []
        while True:
            msg = self.next_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                raise AssertionError("expected %r; got %r%s" % (
                    prefix, skipped, " and the connection closed" if self.closed else ""))
            if msg.startswith(prefix):
                return msg
            skipped.append(msg)

    def expect_next(self, prefix, timeout=TIMEOUT):
        """The very next message must start with ``prefix``."""
        msg = self.next_message(timeout)
        assert msg is not None and msg.startswith(prefix), (prefix, msg)
        return msg

    def expect_closed(self, timeout=TIMEOUT):
        """Read until the server closes; return the messages seen on the way."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            msg = self.next_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                assert self.closed, "still open after %s s; saw %r" % (timeout, seen)
                return seen
            seen.append(msg)

    def quiet(self, timeout=0.2):
        """Messages that arrive within a short while (for 'nothing more' checks)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.next_message(max(0.0, deadline - time.monotonic()))
            if msg is None:
                return seen
            seen.append(msg)

    def send_raw(self, data):
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def close(self):
        self.sock.close()


class LineClient(_Client):
    """nc's view: lines."""

    def send(self, text):
        self.send_raw(text.encode() + b"\n")

    def _parse(self):
        if b"\n" not in self._buf:
            return None
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode("utf-8", "replace")


class FrameClient(_Client):
    """A program's view: 0x00 first, then length-prefixed frames."""

    def __init__(self, host, port):
        super().__init__(host, port)
        self.send_raw(b"\x00")

    def send(self, text):
        data = text.encode()
        self.send_raw(struct.pack(">I", len(data)) + data)

    def _parse(self):
        if len(self._buf) < 4:
            return None
        (n,) = struct.unpack(">I", self._buf[:4])
        if len(self._buf) < 4 + n:
            return None
        data, self._buf = self._buf[4:4 + n], self._buf[4 + n:]
        return data.decode("utf-8", "replace")
