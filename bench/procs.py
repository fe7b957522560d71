"""Processes: the server under test and the load generators that drive it.

Server CPU time and memory come from /proc, about the server process alone:
CPU from utime + stime in /proc/PID/stat (all its threads, in clock ticks),
resident memory from VmRSS in /proc/PID/status.
"""

import collections
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LISTENING = re.compile(r"listening on (\S+):(\d+)")
PY = sys.executable

#: tcpchat's --log-level in the runs: warning measures the chat alone; info
#: (the server's default, a log line per message) adds the cost of logging.
TCPCHAT_LOG_LEVEL = "warning"

# How each server is started; the port is chosen by the kernel (--port 0).
SERVER_COMMANDS = {
    "tcpchat": ["-m", "tcpchat.server", "--host", "127.0.0.1", "--port", "0",
                "--no-syslog"],
    "relay": ["-m", "bench.baselines.relay", "--host", "127.0.0.1", "--port", "0"],
    "asyncio": ["-m", "bench.baselines.asyncio_chat", "--host", "127.0.0.1", "--port", "0"],
    "threads": ["-m", "bench.baselines.threads_chat", "--host", "127.0.0.1", "--port", "0"],
}


class BenchError(Exception):
    """A run could not be completed (a server or load process failed)."""


class ServerProcess:
    """One server as a subprocess on a loopback port; a context manager.

    With ``profile`` set to a file name, the server runs under cProfile and
    writes its statistics there when it exits on SIGTERM.
    """

    def __init__(self, kind, profile=None, start_timeout=15.0, extra=()):
        self.kind = kind
        argv = [PY]
        if profile:
            argv += ["-m", "cProfile", "-o", profile]
        argv += SERVER_COMMANDS[kind]
        if kind == "tcpchat":
            argv += ["--log-level", TCPCHAT_LOG_LEVEL]
        argv += list(extra)  # e.g. bench/tls.py's TLS options
        self.log = collections.deque(maxlen=200)
        self._port_seen = threading.Event()
        self.port = None
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, errors="replace",
        )
        # Drain stderr for the whole run, so that logging never blocks it.
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._port_seen.wait(start_timeout) or self.port is None:
            self.stop()
            raise BenchError("%s did not start: %s" % (kind, " | ".join(self.log)))

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            if self.port is None:
                m = LISTENING.search(line)
                if m:
                    self.port = int(m.group(2))
                    self._port_seen.set()
        self._port_seen.set()  # it exited: stop waiting

    @property
    def pid(self):
        return self.proc.pid

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.pid) as f:
            # The command name may hold spaces; the fields after it do not.
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_kib(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout=10.0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class LoadProcess:
    """One load generator process (``bench.loadgen``), driven by JSON lines."""

    def __init__(self, dialect, port, index=0, confirm="SENT"):
        cfg = {"dialect": dialect, "host": "127.0.0.1", "port": port,
               "index": index, "confirm": confirm}
        self.proc = subprocess.Popen(
            [PY, "-m", "bench.loadgen", json.dumps(cfg)], cwd=ROOT,
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
