"""Scenarios about sessions: a restart that users resume across, what
resume costs a busy server, and memory under readers that stall.

A mixin of ``bench.scenarios.Runner``, which supplies the plumbing
(``_server``, ``_connect``, ``throughput``, ``run``); the load comes from
``bench.loadgen_sessions``. Issue 10 (resume) asks for the first two,
issue 8 item 3 (memory counted per connection) for the third.

6. restart: N registered framed users in pairs, each with ``restart_held``
   messages from its partner that it read and never acknowledged; SIGTERM
   with ``--state-file``; a new server on the same file and port; every
   client connects again with ``/resume TOKEN``. Timed from the new
   server's "listening" line: every ``OK resume``, every held message
   delivered again, every ``DELIVERED`` back at its sender, and each pair's
   ``BACK`` (the first of two partners back hears of the second, whatever
   ``--presence-limit``). The state file's size and write time come from
   the old server's "state saved" line; the load's cost is the new server's
   CPU until it listens, less the old one's (which started with no file).
7. resume-cost: the throughput run at one size, line mode, --log-level
   warning, with resume on (the default) and with ``--resume-time 0``,
   alternated ``resume_cost_repeats`` times; medians of each.
8. stall: ``stall_users`` registered users and one flooder, the server at
   ``--max-queue stall_max_queue`` and ``--rate 0`` (so the limit, not
   flood control, bounds memory). "all": line-mode users that never read
   (SO_RCVBUF 4 KiB) while the flooder sends ``/all x``, until every one
   of them is cut off, then ``stall_duration`` seconds more (at most
   ``stall_longest`` in all); "unacked": framed users that read everything
   and never ``/ack``, while the flooder sends each in turn a private
   message of ``stall_text`` bytes, for ``stall_duration``. The server's
   peak RSS growth (VmHWM at the end less VmRSS before the flood) against
   the sum of the per-connection limits, and the users the server cut off
   (the flooder reads their AWAY or LEFT).
"""

import collections
import os
import re
import shutil
import tempfile
import time

from bench.procs import BenchError, LoadProcess, RssSampler, run_all

#: Sizes and durations of the session scenarios, merged into
#: ``bench.scenarios.PLANS``. restart: users (even), held messages each;
#: resume-cost: pairs and alternations; stall: users, --max-queue in bytes,
#: seconds of flooding ("unacked"; "all": after the last user was cut off),
#: at most ("all"), and of reading after it, and bytes of text in the /all
#: and the private messages.
SESSION_PLANS = {
    "full": {
        "restart_users": 10000, "restart_held": 10,
        "resume_cost_pairs": 100, "resume_cost_repeats": 3,
        "stall_users": 20, "stall_max_queue": 1 << 20, "stall_duration": 5.0,
        "stall_longest": 90.0, "stall_drain": 2.0, "stall_all_text": 1, "stall_text": 64000,
    },
    "quick": {
        "restart_users": 1000, "restart_held": 10,
        "resume_cost_pairs": 100, "resume_cost_repeats": 2,
        "stall_users": 20, "stall_max_queue": 1 << 20, "stall_duration": 2.0,
        "stall_longest": 60.0, "stall_drain": 1.0, "stall_all_text": 1, "stall_text": 64000,
    },
    "tiny": {
        "restart_users": 10, "restart_held": 10,
        "resume_cost_pairs": 2, "resume_cost_repeats": 1,
        # A smaller limit, and /all with a longer text: the kernel's send
        # buffers (loopback grows them to 4 MiB) fill in a fraction of a
        # second instead of ten.
        "stall_users": 4, "stall_max_queue": 1 << 16, "stall_duration": 0.3,
        "stall_longest": 20.0, "stall_drain": 0.3, "stall_all_text": 2000, "stall_text": 8000,
    },
}

#: The targets each scenario runs against (when chosen with --targets):
#: restart needs framed clients (their unacknowledged messages are what a
#: restart must keep); resume-cost compares the chat alone, quiet; stall
#: runs the server as installed.
RESTART_TARGETS = ("tcpchat/framed",)
RESUME_COST_TARGETS = ("tcpchat/line-quiet",)
STALL_TARGETS = ("tcpchat/line",)
#: Stall variants: how the stalled users read, and what the flooder sends.
STALLS = collections.OrderedDict([
    ("all", ("users that never read; the flooder sends /all x", "line")),
    ("unacked", ("framed users that never /ack; the flooder sends /msg USER <TEXT>", "framed")),
])

# Restart: clients per load process (as the connection storm's), and at
# least two processes, so that resumes come from several at once.
RESTART_USERS_PER_LOAD = 2500
# The old server's log lines the restart scenario reads.
STATE_SAVED = re.compile(
    r"state saved to \S+: (\d+) users, (\d+) messages, (\d+) bytes in (\d+) ms")
RESTORED = re.compile(r"restored (\d+) users and (\d+) messages")
WATCH = re.compile(rb"state saved to |restored \d+ users|state file")
# Stall: SO_RCVBUF of the users that never read, so that the kernel takes
# little of what the server queues for them and the rest is the server's.
STALL_RCVBUF = 4096
SLOW_CONSUMER = "slow consumer"


def _reset_peak(pid):
    """Start VmHWM afresh (Linux 4.0+), so that the peak read after the
    flood is the flood's, not start-up's."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak is then at least start-up's: an overestimate


def _split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _ms(ns):
    return ns / 1e6 if ns is not None else None


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else None


class SessionScenarios:
    """The session scenarios, as methods of the bench's Runner."""

    def _session_loads(self, dialect, port, count, first_index=0):
        loads = []
        try:
            for i in range(count):
                loads.append(LoadProcess(dialect, port, index=first_index + i,
                                         confirm="DELIVERED", module="bench.loadgen_sessions"))
        except BaseException:
            for lp in loads:
                lp.close()
            raise
        return loads

    # -- 6: a restart, and everyone resumes ----------------------------------

    def restart(self, target, users):
        plan = self.plan
        held = plan["restart_held"]
        users -= users % 2  # in pairs
        count = max(2, -(-users // RESTART_USERS_PER_LOAD))
        shares = [2 * p for p in _split(users // 2, count)]
        tmp = tempfile.mkdtemp(prefix="tcpchat-bench-state-")
        path = os.path.join(tmp, "state")
        # Receipts wait for the restart however long a busy machine takes
        # to get there: the held messages are the point.
        args = ["--state-file", path, "--receipt-timeout", "0"]
        loads = []
        try:
            with self._server(target, args=args, watch=WATCH) as old:
                start_cpu_empty = old.cpu_seconds()
                startup_empty = old.listening_at - old.started_at
                try:
                    loads = self._session_loads("framed", old.port, count)
                    self._connect(loads, users, shares=shares, prefix="s")
                    paired = sum(r["paired"] for r in run_all(loads, "pair", 120, within=100.0))
                    if paired != users:
                        raise BenchError("only %d of %d users paired" % (paired, users))
                    holds = run_all(loads, "hold", 120, count=held, within=100.0)
                    unacked = sum(r["held"] for r in holds)
                    if unacked != users * held:
                        raise BenchError("only %d of %d messages held: %s" % (
                            unacked, users * held, [r["errors"] for r in holds]))
                    rss_old = old.rss_kib()
                    for lp in loads:
                        lp.send("await_bye", within=60.0)
                    t_term = time.monotonic()
                    exited = old.stop(timeout=60.0)
                    stop_s = time.monotonic() - t_term
                    byes = [lp.reply(70.0) for lp in loads]
                except BaseException:
                    for lp in loads:
                        lp.close()
                    raise
                port = old.port
                saved_lines = [line for _, line in old.seen if "state saved" in line]
            if not exited or not saved_lines:
                raise BenchError("the old server did not save its state (exited: %s): %s"
                                 % (exited, " | ".join(list(old.log)[-3:])))
            m = STATE_SAVED.search(saved_lines[-1])
            state_bytes = os.path.getsize(path)
            # The new one, on the same port and file.
            with self._server(target, args=args + ["--port", str(port)], watch=WATCH) as new:
                start_cpu_loaded = new.cpu_seconds()
                startup_loaded = new.listening_at - new.started_at
                t_listen = int(new.listening_at * 1e9)
                try:
                    replies = run_all(loads, "resume", 180, count=held, within=150.0)
                    cpu_resume = new.cpu_seconds() - start_cpu_loaded
                    rss_new = new.rss_kib()
                finally:
                    for lp in loads:
                        lp.close()
                restored = [line for _, line in new.seen if RESTORED.search(line)]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        r = RESTORED.search(restored[-1]) if restored else None

        def last(key):
            times = [t for x in replies for t in x[key]]
            return (_ms(max(times) - t_listen), len(times)) if times else (None, 0)

        ok_ms, resumed = last("ok")
        msgs_ms, got_all = last("msgs")
        delivered_ms, confirmed_all = last("delivered")
        back_ms, backs = last("back")
        ok_times = sorted(t for x in replies for t in x["ok"])
        pairs_back = sum(x["pairs_back"] for x in replies)
        out = {
            "users": users, "held_each": held,
            "bye": sum(b["bye"] for b in byes),
            "sigterm_to_exit_s": stop_s,
            "state_users": int(m.group(1)) if m else None,
            "state_messages": int(m.group(2)) if m else None,
            "state_bytes": state_bytes,
            "state_bytes_per_user": state_bytes / max(users, 1),
            "save_ms": int(m.group(4)) if m else None,
            "restored_users": int(r.group(1)) if r else None,
            "restored_messages": int(r.group(2)) if r else None,
            # The new server's start less the old one's: reading the file.
            "load_cpu_ms": (start_cpu_loaded - start_cpu_empty) * 1e3,
            "load_wall_ms": (startup_loaded - startup_empty) * 1e3,
            "startup_cpu_ms": start_cpu_loaded * 1e3,
            "resumed": resumed,
            "ok_p50_ms": _ms(ok_times[len(ok_times) // 2] - t_listen) if ok_times else None,
            "ok_last_ms": ok_ms,
            "back_last_ms": back_ms,
            "back_pairs": backs,
            "back_lines": sum(x["back_lines"] for x in replies),
            "msgs_last_ms": msgs_ms,
            "redelivered": sum(x["msgs_total"] for x in replies),
            "same_ids": sum(x["same_ids"] for x in replies),
            "delivered_last_ms": delivered_ms,
            "confirmed": sum(x["delivered_total"] for x in replies),
            "resume_cpu_s": cpu_resume,
            "rss_old_mib": rss_old / 1024,
            "rss_new_mib": rss_new / 1024,
            "errors": sum(x["errors"] for x in replies),
            "error_lines": [e for x in replies for e in x["error_lines"]][:5],
            "lg_cpu": max(x["lg_cpu"] for x in replies),
        }
        out["sent_ok"] = (
            resumed == users and got_all == users and confirmed_all == users
            and out["same_ids"] == users and backs == pairs_back == users // 2
            and out["redelivered"] == out["confirmed"] == users * held
            and out["restored_messages"] == users * held and out["errors"] == 0)
        return out

    # -- 7: throughput with resume on and off --------------------------------

    def resume_cost(self, target, pairs):
        """Alternate throughput runs with resume on and off; medians."""
        on, off = [], []
        for _ in range(self.plan["resume_cost_repeats"]):
            for runs, args in ((on, ()), (off, ("--resume-time", "0"))):
                result = self.throughput(target, pairs, args=args)
                if "error" in result:
                    raise BenchError(result["error"])
                runs.append(result)
        out = {}
        for name, runs in (("on", on), ("off", off)):
            out[name + "_per_s"] = median([x["delivered_per_s"] for x in runs])
            out[name + "_cpu_us"] = median([x["cpu_us_per_msg"] for x in runs])
            out[name + "_runs_cpu_us"] = [x["cpu_us_per_msg"] for x in runs]
            out[name + "_runs_per_s"] = [x["delivered_per_s"] for x in runs]
        out["rate_ratio"] = out["on_per_s"] / out["off_per_s"] if out["off_per_s"] else None
        # A server that is CPU-bound delivers in inverse proportion to its
        # CPU per message: the steadier way to compare on a shared machine.
        out["cpu_ratio"] = out["off_cpu_us"] / out["on_cpu_us"] if out["on_cpu_us"] else None
        out["repeats"] = len(on)
        out["lg_cpu"] = max(x["lg_cpu"] for x in on + off)
        out["sent_ok"] = all(x["sent_ok"] for x in on + off)
        return out

    # -- 8: readers that stall ------------------------------------------------

    def stall(self, target, variant):
        plan = self.plan
        n = plan["stall_users"]
        limit = plan["stall_max_queue"]
        duration, drain = plan["stall_duration"], plan["stall_drain"]
        dialect = STALLS[variant][1]
        args = ["--max-queue", str(limit), "--rate", "0"]
        timeout = plan["stall_longest"] + drain + 60
        with self._server(target, args=args) as srv:
            loads = []
            try:
                readers = self._session_loads(dialect, srv.port, 1)
                loads += readers
                readers[0].send("connect", n=n, prefix="k", timeout=60.0,
                                rcvbuf=STALL_RCVBUF if variant == "all" else 0)
                reply = readers[0].reply(70.0)
                nicks = ["kp0n%d" % i for i in range(n)]
                if reply["registered"] != n or reply["first"] != nicks[0]:
                    raise BenchError("%d of %d users registered, the first as %s"
                                     % (reply["registered"], n, reply["first"]))
                flooders = self._session_loads(dialect, srv.port, 1, first_index=1)
                loads += flooders
                self._connect(flooders, 1, prefix="f")
                if variant == "all":
                    commands = ["/all " + "x" * plan["stall_all_text"]]
                else:
                    text = "x" * plan["stall_text"]
                    commands = ["/msg %s %s" % (nick, text) for nick in nicks]
                _reset_peak(srv.pid)
                rss0, cpu0 = srv.rss_kib(), srv.cpu_seconds()
                start_at = time.monotonic_ns() + 300_000_000
                with RssSampler(srv) as rss:
                    if variant == "all":
                        readers[0].send("stall")
                    else:
                        readers[0].send("read_noack", start_at=start_at, duration=duration,
                                        drain=drain)
                    flooders[0].send("flood_many", commands=commands, start_at=start_at,
                                     duration=duration, drain=drain,
                                     until_gone=nicks if variant == "all" else None,
                                     longest=plan["stall_longest"])
                    flooder = flooders[0].reply(timeout)
                    read = readers[0].reply(timeout)
                    warnings = list(srv.warnings)
                    try:
                        cpu1, peak, rss1 = srv.cpu_seconds(), srv.peak_rss_kib(), srv.rss_kib()
                    except OSError:
                        raise BenchError("the server died: %s" % " | ".join(list(srv.log)[-3:]))
            finally:
                for lp in loads:
                    lp.close()
        gone = {nick: how for nick, how in flooder["gone"].items() if nick in nicks}
        replies = flooder["replies"]
        limits_mib = n * limit / 1048576
        growth = (peak - rss0) / 1024
        out = {
            "users": n, "max_queue": limit, "limits_mib": limits_mib,
            "rss_before_mib": rss0 / 1024, "peak_rss_mib": peak / 1024,
            "growth_mib": growth, "growth_ratio": growth / limits_mib,
            "rss_end_mib": rss1 / 1024, "sampled_rss_mib": (rss.max_kib() or 0) / 1024,
            "dropped": len(gone),
            "dropped_expected": n if variant == "all" else 0,
            "dropped_how": dict(collections.Counter(gone.values())),
            "slow_consumer_warnings": sum(1 for w in warnings if SLOW_CONSUMER in w),
            "commands_per_s": flooder["sent_commands"] / max(flooder["seconds"], 1e-9),
            "flood_s": flooder["seconds"], "all_cut_off_s": flooder["all_gone_at"],
            "sent": replies.get("SENT", 0), "failed": replies.get("FAILED", 0),
            "delivered": replies.get("DELIVERED", 0), "errors": replies.get("ERR", 0),
            "reader_msgs": read.get("msgs"), "flooder_dropped_s": flooder["dropped_at"],
            "server_cpu_s": cpu1 - cpu0,
            "server_warnings": warnings[-5:],
            "lg_cpu": max(flooder["lg_cpu"], read.get("lg_cpu") or 0),
        }
        out["sent_ok"] = out["sent"] > 0 and flooder["dropped_at"] is None
        return out

    # -- all of them -----------------------------------------------------------

    def run_sessions(self, scenarios, results):
        """Run the session scenarios chosen, into ``results``."""
        plan = self.plan
        if "restart" in scenarios:
            n = plan["restart_users"]
            for target in self.targets:
                if target in RESTART_TARGETS:
                    results.setdefault(("restart", n), {})[target] = self.run(
                        "restart", target, n, self.restart)
        if "resume-cost" in scenarios:
            pairs = plan["resume_cost_pairs"]
            for target in self.targets:
                if target in RESUME_COST_TARGETS:
                    results.setdefault(("resume-cost", pairs), {})[target] = self.run(
                        "resume-cost", target, pairs, self.resume_cost)
        if "stall" in scenarios:
            for variant in STALLS:
                for target in self.targets:
                    if target in STALL_TARGETS:
                        results.setdefault(("stall", variant), {})[target] = self.run(
                            "stall", target, variant, self.stall)
