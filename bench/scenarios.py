"""The four scenarios of the benchmark issue, each run against one target.

A target is a server and the way the load generator speaks to it. Every run
starts a fresh server (so that memory and CPU are that run's alone), drives
it from one or more load processes, and returns a dict of figures; a run
that fails returns ``{"error": ...}`` and the rest go on.
"""

import os
import time

from bench.procs import BenchError, LoadProcess, ServerProcess, run_all

#: name -> (server kind, load generator dialect, the sender's acknowledgement)
TARGETS = {
    "tcpchat/line": ("tcpchat", "line", "DELIVERED"),
    "tcpchat/framed": ("tcpchat", "framed", "DELIVERED"),
    "relay": ("relay", "relay", "SENT"),
    "asyncio": ("asyncio", "line", "SENT"),
    "threads": ("threads", "line", "SENT"),
}
TCPCHAT = ("tcpchat/line", "tcpchat/framed")
BASELINES = ("relay", "asyncio", "threads")

#: Sizes and durations (seconds) of a run. "quick" is under a minute,
#: "tiny" is for the smoke test and proves only that everything works.
PLANS = {
    "full": {
        "pairs": (10, 100, 1000), "warmup": 0.5, "duration": 3.0,
        "lat_clients": 1000, "lat_rate": 10, "lat_duration": 10.0,
        "fanout": (100, 1000, 10000), "connections": (1000, 10000), "who": 10,
    },
    "quick": {
        "pairs": (10, 100), "warmup": 0.3, "duration": 1.0,
        "lat_clients": 1000, "lat_rate": 10, "lat_duration": 2.0,
        "fanout": (100, 1000), "connections": (1000,), "who": 5,
    },
    "tiny": {
        "pairs": (2,), "warmup": 0.1, "duration": 0.3,
        "lat_clients": 10, "lat_rate": 10, "lat_duration": 0.5,
        "fanout": (5,), "connections": (10,), "who": 2,
    },
}

# Connection storm: clients per load process. epoll has no fd ceiling, but
# one Python process registering 10,000 clients is slower than the server.
CONNECTIONS_PER_LOAD = 2500
# Fan-out: recipients per load process (at most 4 processes).
FANOUT_RECIPIENTS_PER_LOAD = 500
# Clients per load process in the latency run: a send or recv on loopback
# costs the sender ~10-20 us of kernel time here, so 1,000 clients x 10 msg/s
# keep one Python process over half busy; two halve its queueing delay,
# which would otherwise be counted as the server's latency.
LATENCY_CLIENTS_PER_LOAD = 500
# Messages in flight per scenario-1 run, shared out over its connections
# (at least 16 each: fewer leaves the server waiting on the generator).
THROUGHPUT_INFLIGHT = 16384
# Throughput connections per load process: one pass over 2,000 sockets takes
# the generator long enough that the server idles between its batches.
THROUGHPUT_CONNECTIONS_PER_LOAD = 1000


def split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class Runner:
    def __init__(self, plan, targets, profile_dir=None, progress=None):
        self.plan = plan
        self.targets = targets
        self.profile_dir = profile_dir
        self.progress = progress or (lambda text: None)
        self._profiles = 0

    # -- plumbing ---------------------------------------------------------

    def _server(self, target):
        kind = TARGETS[target][0]
        profile = None
        if self.profile_dir and kind == "tcpchat":
            self._profiles += 1
            os.makedirs(self.profile_dir, exist_ok=True)
            profile = os.path.join(
                self.profile_dir, "%02d-%s.prof" % (self._profiles, target.replace("/", "-")))
        return ServerProcess(kind, profile=profile)

    def _loads(self, target, port, count):
        _, dialect, confirm = TARGETS[target]
        loads = []
        try:
            for i in range(count):
                loads.append(LoadProcess(dialect, port, index=i, confirm=confirm))
        except BaseException:
            for lp in loads:
                lp.close()
            raise
        return loads

    def _connect(self, loads, n, timeout=120.0, shares=None):
        shares = shares or split(n, len(loads))
        for lp, share in zip(loads, shares):
            lp.send("connect", n=share, prefix="u", timeout=timeout - 10)
        replies = [lp.reply(timeout) for lp in loads]
        registered = sum(r["registered"] for r in replies)
        if registered != n:
            raise BenchError("only %d of %d clients registered" % (registered, n))
        return replies

    def run(self, name, target, size, fn):
        self.progress("%-12s %-15s %s" % (name, target, size))
        started = time.monotonic()
        try:
            result = fn(target, size)
        except BenchError as exc:
            result = {"error": str(exc)}
        result["wall"] = time.monotonic() - started
        return result

    # -- scenario 1 -------------------------------------------------------

    def throughput(self, target, pairs):
        plan = self.plan
        window = max(16, min(256, THROUGHPUT_INFLIGHT // (2 * pairs)))
        count = -(-2 * pairs // THROUGHPUT_CONNECTIONS_PER_LOAD)
        with self._server(target) as srv:
            loads = self._loads(target, srv.port, count)
            try:
                # Both ends of a pair live in the same process.
                self._connect(loads, 2 * pairs, shares=[2 * p for p in split(pairs, count)])
                cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                replies = run_all(loads, "throughput", plan["warmup"] + plan["duration"] + 60,
                                  warmup=plan["warmup"], duration=plan["duration"],
                                  window=window)
                cpu1, t1 = srv.cpu_seconds(), time.monotonic()
            finally:
                for lp in loads:
                    lp.close()
        total = sum(r["delivered_total"] for r in replies)
        return {
            "delivered_per_s": sum(r["delivered"] / r["seconds"] for r in replies),
            "confirmed_per_s": sum(r["confirmed"] / r["seconds"] for r in replies),
            "cpu_us_per_msg": (cpu1 - cpu0) / max(total, 1) * 1e6,
            "server_busy": (cpu1 - cpu0) / (t1 - t0),
            "lg_cpu": max(r["lg_cpu"] for r in replies),
            "sent_ok": total > 0 and all(
                r["unconfirmed"] == 0 and r["errors"] == 0
                and r["delivered_total"] == r["confirmed_total"] for r in replies),
            "errors": sum(r["errors"] for r in replies),
            "window": window,
        }

    # -- scenario 2 -------------------------------------------------------

    def latency(self, target, clients):
        plan = self.plan
        count = -(-clients // LATENCY_CLIENTS_PER_LOAD)
        with self._server(target) as srv:
            loads = self._loads(target, srv.port, count)
            try:
                self._connect(loads, clients)
                cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                # CLOCK_MONOTONIC is one clock for every process here.
                replies = run_all(loads, "latency", plan["lat_duration"] + 60,
                                  duration=plan["lat_duration"], rate=plan["lat_rate"],
                                  start_at=time.monotonic_ns() + 200_000_000)
                cpu1, t1 = srv.cpu_seconds(), time.monotonic()
                samples = run_all(loads, "samples", 60)
            finally:
                for lp in loads:
                    lp.close()
        r = {key: sum(x[key] for x in replies)
             for key in ("sent", "delivered", "confirmed", "errors")}
        for key in ("lat_msg", "lat_confirm"):
            r[key] = [sample for x in samples for sample in x[key]]
        r["lg_cpu"] = max(x["lg_cpu"] for x in replies)
        out = {
            "sent": r["sent"], "delivered": r["delivered"], "confirmed": r["confirmed"],
            "errors": r["errors"], "lg_cpu": r["lg_cpu"],
            "server_busy": (cpu1 - cpu0) / (t1 - t0),
            "sent_ok": r["sent"] == r["delivered"] == r["confirmed"] > 0 and r["errors"] == 0,
        }
        for key in ("lat_msg", "lat_confirm"):
            samples = sorted(r[key])
            for label, q in (("p50", 0.50), ("p99", 0.99), ("p999", 0.999)):
                out["%s_%s_ms" % (key[4:], label)] = (
                    samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6
                    if samples else None)
        return out

    # -- scenario 3 -------------------------------------------------------

    def fanout(self, target, users):
        # Reading 1,000 sockets takes one process longer than the server
        # takes to write them: recipients are spread over up to 4 processes.
        count = min(4, -(-users // FANOUT_RECIPIENTS_PER_LOAD))
        with self._server(target) as srv:
            loads = self._loads(target, srv.port, count)
            try:
                self._connect(loads, users)
                cpu0 = srv.cpu_seconds()
                # Recipients first, each confirming it is watching; then the sender.
                for lp in loads[1:]:
                    lp.send("fanout", send=False)
                for lp in loads[1:]:
                    lp.expect_event("armed", 30.0)
                loads[0].send("fanout", send=True)
                replies = [lp.reply(60.0) for lp in loads]
                cpu1 = srv.cpu_seconds()
            finally:
                for lp in loads:
                    lp.close()
        t_send = replies[0]["t_send"]
        received = sum(r["received"] for r in replies)
        last = max(r["last"] for r in replies)
        confirmed = replies[0]["confirmed"]
        return {
            "last_ms": (last - t_send) / 1e6 if received else None,
            "confirm_ms": (confirmed - t_send) / 1e6 if confirmed else None,
            "cpu_ms": (cpu1 - cpu0) * 1e3,
            "received": received,
            "lg_cpu": max((r["lg_cpu"] for r in replies if r["lg_cpu"] is not None), default=None),
            "sent_ok": received == users - 1 and confirmed is not None,
        }

    # -- scenario 4 -------------------------------------------------------

    def connections(self, target, clients):
        count = -(-clients // CONNECTIONS_PER_LOAD)
        with self._server(target) as srv:
            loads = self._loads(target, srv.port, count)
            try:
                rss0, cpu0 = srv.rss_kib(), srv.cpu_seconds()
                replies = self._connect(loads, clients)
                rss1, cpu1 = srv.rss_kib(), srv.cpu_seconds()
                loads[0].send("who", count=self.plan["who"])
                who = loads[0].reply(120.0)
                cpu2 = srv.cpu_seconds()
            finally:
                for lp in loads:
                    lp.close()
        times = sorted(who["times"])
        storm = max(r["ended"] for r in replies) - min(r["started"] for r in replies)
        return {
            "storm_s": storm / 1e9,
            "storm_cpu_s": cpu1 - cpu0,
            "rss_kib_per_conn": (rss1 - rss0) / clients,
            "rss_mib": rss1 / 1024,
            "who_ms": times[len(times) // 2] / 1e6 if times else None,
            "who_cpu_ms": (cpu2 - cpu1) / max(len(times), 1) * 1e3,
            "who_lines": who["user_lines"] // max(len(times), 1),
            "sent_ok": len(times) == self.plan["who"]
                       and who["user_lines"] == clients * len(times),
        }

    # -- everything -------------------------------------------------------

    def run_everything(self, scenarios=("throughput", "latency", "fanout", "connections")):
        """Results as {(scenario, size): {target: figures}}."""
        plan = self.plan
        results = {}
        chat = [t for t in self.targets if t in TCPCHAT]
        if "throughput" in scenarios:
            for pairs in plan["pairs"]:
                for target in self.targets:
                    results.setdefault(("throughput", pairs), {})[target] = self.run(
                        "throughput", target, pairs, self.throughput)
        if "latency" in scenarios:
            n = plan["lat_clients"]
            for target in self.targets:
                results.setdefault(("latency", n), {})[target] = self.run(
                    "latency", target, n, self.latency)
        if "fanout" in scenarios:
            for users in plan["fanout"]:
                for target in chat:
                    results.setdefault(("fanout", users), {})[target] = self.run(
                        "fanout", target, users, self.fanout)
        if "connections" in scenarios:
            for clients in plan["connections"]:
                for target in chat:
                    results.setdefault(("connections", clients), {})[target] = self.run(
                        "connections", target, clients, self.connections)
        return results
