"""Processes: the server under test and the load generators that drive it.

Server CPU time and memory come from /proc, about the server process alone:
CPU from utime + stime in /proc/PID/stat (all its threads, in clock ticks),
resident memory from VmRSS (now) and VmHWM (peak) in /proc/PID/status.
"""

import collections
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(rb"listening on (\S+):(\d+)")
PY = sys.executable
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Python 3.10+ names it

#: tcpchat's --log-level in its default runs (tcpchat/line, tcpchat/framed):
#: info is the server's own default, a log line per message. The -quiet
#: runs always use warning: the chat alone, no line per message.
TCPCHAT_LOG_LEVEL = "info"

# How each server is started; the port is chosen by the kernel (--port 0).
SERVER_COMMANDS = {
    "tcpchat": ["-m", "tcpchat.server", "--host", "127.0.0.1", "--port", "0"],
    "relay": ["-m", "bench.baselines.relay", "--host", "127.0.0.1", "--port", "0"],
    "asyncio": ["-m", "bench.baselines.asyncio_chat", "--host", "127.0.0.1", "--port", "0"],
    "threads": ["-m", "bench.baselines.threads_chat", "--host", "127.0.0.1", "--port", "0"],
}

#: tcpchat's logging in each variant. "defaults" is the server as installed
#: (every message logged at info, to stderr and to a --log-file), less
#: syslog, which the systemd unit turns off too (journald takes stderr);
#: "syslog" adds one datagram a message to a bench-side syslog socket
#: (--syslog-messages: by default the server sends syslog no message records).
TCPCHAT_VARIANTS = ("defaults", "quiet", "syslog")


class BenchError(Exception):
    """A run could not be completed (a server or load process failed)."""


class BenchSkip(Exception):
    """A target cannot be run on this machine (say why, go on with the rest)."""


class ServerProcess:
    """One server as a subprocess on a loopback port; a context manager.

    ``variant`` picks tcpchat's logging (``TCPCHAT_VARIANTS``). With
    ``profile`` set to a file name, the server runs under cProfile and writes
    its statistics there when it exits on SIGTERM. ``argv`` and ``ready``
    start something else (miniircd): its command line, and a pattern whose
    last group is the port it listens on, matched in its output. ``extra``
    go after tcpchat's own options (a later ``--port`` wins over ``--port 0``).
    ``watch``, a bytes pattern, keeps every whole output line it matches in
    ``seen``, as (monotonic seconds when read, line): lines a busy log at
    info would push out of ``log``, such as the state file's.
    """

    def __init__(self, kind, variant="defaults", profile=None, start_timeout=15.0,
                 argv=None, ready=LISTENING, extra=(), watch=None):
        self.kind = kind
        self.log = collections.deque(maxlen=200)
        # Its warnings and errors (a client cut off, say), which a busy log
        # at info would push out of ``log`` at once.
        self.warnings = collections.deque(maxlen=50)
        self.port = None
        self.syslog = None
        self.log_file = None
        self._tmp = None
        self._port_seen = threading.Event()
        self._ready = ready
        self._watch = watch
        self.seen = []
        if argv is None:
            argv = [PY]
            if profile:
                argv += ["-m", "cProfile", "-o", profile]
            argv += SERVER_COMMANDS[kind]
            if kind == "tcpchat":
                argv += self._tcpchat_logging(variant)
            argv += list(extra)  # e.g. bench/tls.py's TLS options
        # Monotonic seconds: when it was started, and when it said it listens.
        self.started_at = time.monotonic()
        self.listening_at = None
        try:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._cleanup()
            raise
        # Drain its output for the whole run, so that logging never blocks it:
        # a pass's log lines at info are often more than a 64 KiB pipe holds.
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass  # the default pipe: the reader still drains it
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._port_seen.wait(start_timeout) or self.port is None:
            self.stop()
            raise BenchError("%s did not start: %s" % (kind, " | ".join(self.log)))

    def _tcpchat_logging(self, variant):
        if variant not in TCPCHAT_VARIANTS:
            raise ValueError(variant)
        self._tmp = tempfile.mkdtemp(prefix="tcpchat-bench-")
        self.log_file = os.path.join(self._tmp, "server.log")
        args = ["--log-file", self.log_file,
                "--log-level", "warning" if variant == "quiet" else TCPCHAT_LOG_LEVEL]
        if variant == "syslog":
            self.syslog = SyslogReader(os.path.join(self._tmp, "log.sock"))
            args += ["--syslog-address", self.syslog.path, "--syslog-messages"]
        else:
            args += ["--no-syslog"]
        return args

    def _read_log(self):
        # At info a busy server writes a line per message: read big chunks
        # and keep only the last lines (for error messages), at little CPU.
        fd = self.proc.stdout.fileno()
        head = b""
        partial = b""  # watched: the unfinished last line of a chunk
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            if self.port is None:
                head += chunk
                m = self._ready.search(head)
                if m:
                    self.listening_at = time.monotonic()
                    self.port = int(m.group(m.lastindex))
                    self._port_seen.set()
                head = head[-4096:]
            if self._watch is not None:
                at = time.monotonic()
                whole = partial + chunk
                cut = whole.rfind(b"\n") + 1
                partial = whole[cut:][-65536:]
                for line in whole[:cut].splitlines():
                    if self._watch.search(line):
                        self.seen.append((at, line.decode("utf-8", "replace")))
            lines = chunk[-8192:].decode("utf-8", "replace").splitlines()
            self.log.extend(lines[-20:])
            if b" WARNING " in chunk or b" ERROR " in chunk:
                self.warnings.extend(
                    line.decode("utf-8", "replace") for line in chunk.splitlines()
                    if b" WARNING " in line or b" ERROR " in line)
        self._port_seen.set()  # it exited: stop waiting

    @property
    def pid(self):
        return self.proc.pid

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.pid) as f:
            # The command name may hold spaces; the fields after it do not.
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def _status_kib(self, field):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
        return 0

    def rss_kib(self):
        return self._status_kib("VmRSS:")

    def peak_rss_kib(self):
        """The most resident memory the process has had (VmHWM)."""
        return self._status_kib("VmHWM:")

    def log_file_bytes(self):
        try:
            return os.path.getsize(self.log_file) if self.log_file else None
        except OSError:
            return None

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        """SIGTERM, and SIGKILL after ``timeout`` s; True if it exited by itself."""
        exited = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                exited = False
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        self._cleanup()
        return exited

    def _cleanup(self):
        if self.syslog is not None:
            self.syslog.close()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RssSampler:
    """Samples a server's VmRSS every ``interval`` seconds, in a thread.

    VmHWM gives the peak exactly; the samples show when it was reached and
    what the server came down to.
    """

    def __init__(self, server, interval=0.1):
        self.server = server
        self.interval = interval
        self.samples = []  # (monotonic seconds, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.server.rss_kib()))
            except OSError:  # it exited
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def max_kib(self):
        return max((kib for _, kib in self.samples), default=None)


class SyslogReader:
    """A local syslog socket: ``bench.syslogd`` counting the datagrams.

    A real syslogd (rsyslog, journald) reads /dev/log the same way; the
    bench's reader does nothing else with them, so what the server pays is
    its own sending.
    """

    def __init__(self, path, timeout=15.0):
        self.path = path
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.syslogd", path], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._lines = _LineReader(self.proc.stdout.fileno())
        if self._lines.next(timeout) != "ready":
            self.close()
            raise BenchError("the bench's syslog reader did not start")

    def count(self, timeout=15.0):
        """Datagrams read so far."""
        self.proc.stdin.write(b"count\n")
        self.proc.stdin.flush()
        return int(self._lines.next(timeout))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


class _LineReader:
    """Lines from a child's stdout, each within a timeout."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def next(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("no answer in %.0f s" % timeout)
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if poller.poll(left * 1000):
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    raise BenchError("process exited")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


class LoadProcess:
    """One load generator process (``bench.loadgen``), driven by JSON lines."""

    def __init__(self, dialect, port, index=0, confirm="SENT", module="bench.loadgen"):
        cfg = {"dialect": dialect, "host": "127.0.0.1", "port": port,
               "index": index, "confirm": confirm}
        self.proc = subprocess.Popen(
            [PY, "-m", module, json.dumps(cfg)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._buf = b""
        self.expect_event("started", 15.0)

    def send(self, cmd, **args):
        args["cmd"] = cmd
        self.proc.stdin.write(json.dumps(args).encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self, timeout):
        """The next JSON line from the generator, within timeout seconds."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("load generator did not answer in %.0f s" % timeout)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if poller.poll(left * 1000):
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise BenchError("load generator exited (code %s)" % self.proc.wait(5))
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        obj = json.loads(line)
        if "error" in obj:
            raise BenchError("load generator: " + obj["error"])
        return obj

    def expect_event(self, name, timeout):
        obj = self.reply(timeout)
        if obj.get("event") != name:
            raise BenchError("load generator said %r, expected event %r" % (obj, name))
        return obj

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.reply(15.0)
            except (BenchError, OSError):
                pass
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def run_all(loads, cmd, timeout, **args):
    """Send one command to every load process; return their replies."""
    for lp in loads:
        lp.send(cmd, **args)
    return [lp.reply(timeout) for lp in loads]
