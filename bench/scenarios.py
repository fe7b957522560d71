"""The scenarios of the benchmark issues, each run against one target.

A target is a server and the way the load generator speaks to it. Every run
starts a fresh server (so that memory and CPU are that run's alone), drives
it from one or more load processes, and returns a dict of figures; a run
that fails returns ``{"error": ...}``, one that cannot be had here
``{"skipped": ...}``, and the rest go on.
"""

import collections
import math
import os
import time

from bench import miniircd
from tcpchat.protocol import HELP
from bench.procs import (BenchError, BenchSkip, LoadProcess, RssSampler, ServerProcess,
                         run_all)
from bench.sessions import SESSION_PLANS, SessionScenarios, median

Target = collections.namedtuple("Target", "server dialect confirm variant")

#: name -> the server, the load generator's dialect, the sender's
#: acknowledgement (None: there is none), and tcpchat's logging variant
#: (bench.procs.TCPCHAT_VARIANTS).
TARGETS = {
    # As installed: --log-level info, a line per message to stderr and to
    # a --log-file (no syslog: the systemd unit turns it off too).
    "tcpchat/line": Target("tcpchat", "line", "DELIVERED", "defaults"),
    "tcpchat/framed": Target("tcpchat", "framed", "DELIVERED", "defaults"),
    # --log-level warning: the chat alone.
    "tcpchat/line-quiet": Target("tcpchat", "line", "DELIVERED", "quiet"),
    "tcpchat/framed-quiet": Target("tcpchat", "framed", "DELIVERED", "quiet"),
    # The defaults plus --syslog-messages: one datagram a message to a
    # bench-side syslog socket.
    "tcpchat/line-syslog": Target("tcpchat", "line", "DELIVERED", "syslog"),
    "relay": Target("relay", "relay", "SENT", None),
    "asyncio": Target("asyncio", "line", "SENT", None),
    "threads": Target("threads", "line", "SENT", None),
    "miniircd": Target("miniircd", "irc", None, None),
}
#: tcpchat's targets, in table order; the first two are the defaults.
TCPCHAT = ("tcpchat/line", "tcpchat/framed", "tcpchat/line-quiet", "tcpchat/framed-quiet",
           "tcpchat/line-syslog")
#: What the targets of the older issues are judged on (syslog is a cost study).
TCPCHAT_MAIN = TCPCHAT[:4]
BASELINES = ("relay", "asyncio", "threads", "miniircd")
#: Run in the throughput scenario only: syslog's cost is one per message,
#: which throughput measures, and miniircd is compared on throughput.
ONLY_THROUGHPUT = ("tcpchat/line-syslog", "miniircd")
#: The flood scenario: tcpchat in line mode, as installed.
FLOOD_TARGETS = ("tcpchat/line",)
#: Issue 12's comparison with miniircd, alternated: tcpchat at its defaults,
#: at --log-level warning, and miniircd, in this order each round. The
#: result is filed under the first.
VERSUS_TARGETS = ("tcpchat/line", "tcpchat/line-quiet", "miniircd")
#: Messages each connection keeps in flight in that comparison: the issue's
#: load, "100 pairs pipelining 1,000 messages each" (the throughput table's
#: window, shared out of THROUGHPUT_INFLIGHT, is 82 at 100 pairs).
VERSUS_WINDOW = 1000
#: Flood variants: what the flooder sends, the reply line it counts, and how
#: many of those answer one command. "SOMEONE" is a well-behaved reader.
FLOODS = collections.OrderedDict([
    ("all", ("/all x", "SENT ", 1)),
    ("msg", ("/msg SOMEONE x", "SENT ", 1)),
    ("help", ("/help", "OK help ", 1)),
])

#: Sizes and durations (seconds) of a run. "quick" is under a minute (two
#: with the flood), "tiny" is for the smoke test and proves only that
#: everything works. Flood: readers; seconds of flooding; seconds everyone
#: keeps reading after it; bystander /pings and messages a second, each; and
#: seconds the server gets to exit on SIGTERM before it is killed (one
#: still working through a flood's backlog is not waited for).
PLANS = {
    "full": {
        "pairs": (10, 100, 1000), "warmup": 0.5, "duration": 3.0,
        "lat_clients": 1000, "lat_rate": 10, "lat_duration": 10.0,
        "fanout": (100, 1000, 10000), "connections": (1000, 10000), "who": 10,
        "flood_readers": 200, "flood_duration": 10.0, "flood_drain": 5.0, "flood_rate": 20,
        "flood_stop": 5.0, "versus_pairs": 100, "versus_repeats": 5,
        "throughput_repeats": 3,
    },
    "quick": {
        "pairs": (10, 100), "warmup": 0.3, "duration": 1.0,
        "lat_clients": 1000, "lat_rate": 10, "lat_duration": 2.0,
        "fanout": (100, 1000), "connections": (1000,), "who": 5,
        "flood_readers": 200, "flood_duration": 3.0, "flood_drain": 3.0, "flood_rate": 20,
        "flood_stop": 5.0, "versus_pairs": 100, "versus_repeats": 2,
        "throughput_repeats": 1,
    },
    "tiny": {
        "pairs": (2,), "warmup": 0.1, "duration": 0.3,
        "lat_clients": 10, "lat_rate": 10, "lat_duration": 0.3,
        "fanout": (5,), "connections": (10,), "who": 2,
        "flood_readers": 5, "flood_duration": 0.3, "flood_drain": 0.5, "flood_rate": 20,
        "flood_stop": 0.5, "versus_pairs": 2, "versus_repeats": 1,
        "throughput_repeats": 2,
        # The -quiet runs differ from the defaults by a server option only,
        # which the throughput runs prove works.
        "quiet_beyond_throughput": False,
    },
}
# Restart, resume cost, stalled readers: their sizes live beside them.
for _name, _sizes in SESSION_PLANS.items():
    PLANS[_name].update(_sizes)

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
# Flood readers per load process. Each reads every /all of the flood; one
# process keeps up with the server (it only counts), and each more one
# takes a share of the two cores from the server and the bystanders.
FLOOD_READERS_PER_LOAD = 200
# Connections a load process opens at once to miniircd, whose listen
# backlog is 5: more and the kernel drops SYNs, retried a second later.
MINIIRCD_CONCURRENCY = 4


def percentile(samples, q, missing=0):
    """The q-quantile of samples, a missing sample counted as infinitely late."""
    n = len(samples) + missing
    if not n:
        return None
    i = min(n - 1, int(q * n))
    return samples[i] if i < len(samples) else math.inf


def median_run(runs):
    """Of one target's alternated throughput runs, the one with the median
    server CPU per message, with every run's figure beside it in
    ``cpu_runs`` (in the order they ran, so that two targets' runs pair
    up round by round). A run that failed or was skipped stands for all."""
    for run in runs:
        if "error" in run or "skipped" in run:
            return run
    by_cpu = sorted(runs, key=lambda r: r["cpu_us_per_msg"])
    chosen = dict(by_cpu[len(by_cpu) // 2])
    chosen["cpu_runs"] = [r["cpu_us_per_msg"] for r in runs]
    chosen["repeats"] = len(runs)
    return chosen


def split(n, parts):
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class Runner(SessionScenarios):
    def __init__(self, plan, targets, profile_dir=None, progress=None, offline=False):
        self.plan = plan
        self.targets = targets
        self.profile_dir = profile_dir
        self.progress = progress or (lambda text: None)
        self.offline = offline
        self._profiles = 0
        self._miniircd = None  # its path, or the Unavailable that says why not

    # -- plumbing ---------------------------------------------------------

    def _server(self, target, args=(), watch=None):
        """A fresh server for ``target``; ``args``: more tcpchat options,
        ``watch``: see ServerProcess."""
        t = TARGETS[target]
        if t.server == "miniircd":
            return self._miniircd_server()
        profile = None
        if self.profile_dir and t.server == "tcpchat":
            self._profiles += 1
            os.makedirs(self.profile_dir, exist_ok=True)
            profile = os.path.join(
                self.profile_dir, "%02d-%s.prof" % (self._profiles, target.replace("/", "-")))
        return ServerProcess(t.server, variant=t.variant or "defaults", profile=profile,
                             extra=args, watch=watch)

    def miniircd_script(self):
        """miniircd.py's path, fetched once; BenchSkip when it cannot be had."""
        if self._miniircd is None:
            try:
                self._miniircd = miniircd.find(offline=self.offline)
            except miniircd.Unavailable as e:
                self._miniircd = e
                self.progress("miniircd %s skipped: %s" % (miniircd.VERSION, e))
        if isinstance(self._miniircd, Exception):
            raise BenchSkip("miniircd %s not available: %s" % (miniircd.VERSION, self._miniircd))
        return self._miniircd

    def _miniircd_server(self):
        script = self.miniircd_script()
        # The port is free when asked, and could be taken by the time
        # miniircd binds it: then it exits, and a second port is tried.
        for attempt in (1, 2):
            try:
                return ServerProcess("miniircd", ready=miniircd.READY,
                                     argv=miniircd.command(script, miniircd.free_port()))
            except BenchError:
                if attempt == 2:
                    raise

    def _loads(self, target, port, count, first_index=0):
        t = TARGETS[target]
        loads = []
        try:
            for i in range(count):
                loads.append(LoadProcess(t.dialect, port, index=first_index + i,
                                         confirm=t.confirm))
        except BaseException:
            for lp in loads:
                lp.close()
            raise
        return loads

    def _connect(self, loads, n, timeout=120.0, shares=None, prefix="u", concurrency=500):
        shares = shares or split(n, len(loads))
        for lp, share in zip(loads, shares):
            lp.send("connect", n=share, prefix=prefix, timeout=timeout - 10,
                    concurrency=concurrency)
        replies = [lp.reply(timeout) for lp in loads]
        registered = sum(r["registered"] for r in replies)
        if registered != n:
            raise BenchError("only %d of %d clients registered" % (registered, n))
        return replies

    def run(self, name, target, size, fn):
        self.progress("%-12s %-20s %s" % (name, target, size))
        started = time.monotonic()
        try:
            result = fn(target, size)
        except BenchSkip as exc:
            result = {"skipped": str(exc)}
        except BenchError as exc:
            result = {"error": str(exc)}
        result["wall"] = time.monotonic() - started
        return result

    # -- scenario 1 -------------------------------------------------------

    def throughput(self, target, pairs, args=(), window=None):
        plan = self.plan
        t = TARGETS[target]
        if t.server == "miniircd" and pairs > miniircd.MAX_PAIRS:
            raise BenchSkip("miniircd serves with select(), descriptors below 1024 only: "
                            "at most %d pairs" % miniircd.MAX_PAIRS)
        if window is None:
            window = max(16, min(256, THROUGHPUT_INFLIGHT // (2 * pairs)))
        if self.plan.get("window"):
            window = self.plan["window"]
        count = -(-2 * pairs // THROUGHPUT_CONNECTIONS_PER_LOAD)
        with self._server(target, args=args) as srv:
            loads = self._loads(target, srv.port, count)
            try:
                # Both ends of a pair live in the same process.
                self._connect(loads, 2 * pairs, shares=[2 * p for p in split(pairs, count)],
                              concurrency=MINIIRCD_CONCURRENCY if t.dialect == "irc" else 500)
                syslog0 = srv.syslog.count() if srv.syslog else None
                cpu0, t0 = srv.cpu_seconds(), time.monotonic()
                replies = run_all(loads, "throughput", plan["warmup"] + plan["duration"] + 60,
                                  warmup=plan["warmup"], duration=plan["duration"],
                                  window=window)
                cpu1, t1 = srv.cpu_seconds(), time.monotonic()
                syslog1 = srv.syslog.count() if srv.syslog else None
                log_bytes = srv.log_file_bytes()
            finally:
                for lp in loads:
                    lp.close()
        total = sum(r["delivered_total"] for r in replies)
        return {
            "delivered_per_s": sum(r["delivered"] / r["seconds"] for r in replies),
            # An IRC server confirms nothing to the sender.
            "confirmed_per_s": (sum(r["confirmed"] / r["seconds"] for r in replies)
                                if t.confirm else None),
            "cpu_us_per_msg": (cpu1 - cpu0) / max(total, 1) * 1e6,
            "syslog_per_msg": (syslog1 - syslog0) / max(total, 1) if srv.syslog else None,
            "log_bytes": log_bytes,
            "server_busy": (cpu1 - cpu0) / (t1 - t0),
            "lg_cpu": max(r["lg_cpu"] for r in replies),
            "sent_ok": total > 0 and all(
                r["unconfirmed"] == 0 and r["errors"] == 0
                and r["delivered_total"] == r["confirmed_total"] for r in replies),
            "errors": sum(r["errors"] for r in replies),
            "window": window,
        }

    # -- scenario 9 -------------------------------------------------------

    def versus(self, target, pairs):
        """The throughput run of each of VERSUS_TARGETS in turn, repeated;
        medians of each. One run each is at the mercy of what the shared
        machine does meanwhile (single runs of the same code have differed
        by a third); alternating and taking medians is not."""
        self.miniircd_script()  # BenchSkip at once, before any run, without it
        runs = {t: [] for t in VERSUS_TARGETS}
        for _ in range(self.plan["versus_repeats"]):
            for t in VERSUS_TARGETS:
                result = self.throughput(t, pairs, window=VERSUS_WINDOW)
                if "error" in result:
                    raise BenchError("%s: %s" % (t, result["error"]))
                runs[t].append(result)
        out = {}
        for t, name in zip(VERSUS_TARGETS, ("line", "quiet", "miniircd")):
            # tcpchat's rate is what it delivered and confirmed; miniircd
            # confirms nothing, so its rate is what it delivered.
            rates = [x["delivered_per_s"] if x["confirmed_per_s"] is None
                     else min(x["delivered_per_s"], x["confirmed_per_s"]) for x in runs[t]]
            out[name + "_per_s"] = median(rates)
            out[name + "_cpu_us"] = median([x["cpu_us_per_msg"] for x in runs[t]])
            out[name + "_runs_per_s"] = rates
        base = out["miniircd_per_s"]
        out["line_ratio"] = out["line_per_s"] / base if base else None
        out["quiet_ratio"] = out["quiet_per_s"] / base if base else None
        out["repeats"] = len(runs[target])
        out["window"] = runs[target][0]["window"]
        out["lg_cpu"] = max(x["lg_cpu"] for r in runs.values() for x in r)
        out["sent_ok"] = all(x["sent_ok"] for t in VERSUS_TARGETS[:2] for x in runs[t])
        return out

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

    # -- scenario 5 -------------------------------------------------------

    def flood(self, target, variant):
        """One client floods; well-behaved readers and a bystander pair go on.

        ``flood_readers`` registered users read everything; one flooder
        sends FLOODS[variant] as fast as the server takes it, for
        ``flood_duration`` seconds; two bystanders each send ``flood_rate``
        /pings and private messages a second to time the round trips. The
        server's resident memory is sampled throughout (and VmHWM read at the
        end), and every reader the server closed, or announced as LEFT, is
        counted as dropped.
        """
        plan = self.plan
        n = plan["flood_readers"]
        duration, drain = plan["flood_duration"], plan["flood_drain"]
        command, answer, per_command = FLOODS[variant]
        count = -(-n // FLOOD_READERS_PER_LOAD)
        timeout = duration + drain + 60
        with self._server(target) as srv:
            loads = []
            try:
                readers = self._loads(target, srv.port, count)
                loads += readers
                first = self._connect(readers, n, prefix="r")[0]["first"]
                bystanders = self._loads(target, srv.port, 1)
                loads += bystanders
                self._connect(bystanders, 2, prefix="b")
                flooders = self._loads(target, srv.port, 1)
                loads += flooders
                self._connect(flooders, 1, prefix="f")
                rss0, cpu0 = srv.rss_kib(), srv.cpu_seconds()
                start_at = time.monotonic_ns() + 300_000_000
                with RssSampler(srv) as rss:
                    for lp in readers:
                        lp.send("flood_read", start_at=start_at, duration=duration, drain=drain)
                    bystanders[0].send("bystand", start_at=start_at, duration=duration,
                                       rate=plan["flood_rate"], drain=drain)
                    flooders[0].send("flood", command=command.replace("SOMEONE", first),
                                     answer=answer, start_at=start_at, duration=duration,
                                     drain=drain)
                    flooder = flooders[0].reply(timeout)
                    by = bystanders[0].reply(timeout)
                    read = [lp.reply(timeout) for lp in readers]
                    # Before the clients go (and the server warns of each).
                    warnings = list(srv.warnings)
                    try:
                        cpu1, peak = srv.cpu_seconds(), srv.peak_rss_kib()
                    except OSError:
                        raise BenchError("the server died during the flood: %s"
                                         % " | ".join(list(srv.log)[-3:]))
            finally:
                for lp in loads:
                    lp.close()
            # A server still working through the flood's backlog is not
            # waited for long: its figures are taken.
            t_stop = time.monotonic()
            exited = srv.stop(timeout=plan["flood_stop"])
            stop_s = time.monotonic() - t_stop
        closed = set()
        for r in read:
            closed.update(r["closed"])
        left = {nick: why for nick, why in by["left"].items() if nick.startswith("r")}
        dropped = closed | set(left)
        why = collections.Counter(left.get(nick, "closed, no LEFT seen") for nick in dropped)
        out = {
            "readers": sum(r["readers"] for r in read),
            "dropped": len(dropped),
            "dropped_closed": len(closed),
            "dropped_left": len(left),
            "dropped_why": dict(why),
            "reader_msgs": sum(r["msgs"] for r in read),
            "server_cpu_s": cpu1 - cpu0,
            "rss_before_mib": rss0 / 1024,
            "peak_rss_mib": peak / 1024,
            "sampled_rss_mib": (rss.max_kib() or 0) / 1024,
            "flood_sent_per_s": flooder["sent_lines"] / duration,
            "flood_answered_per_s": flooder["answered"] / per_command / duration,
            "flooder_dropped_s": flooder["dropped_at"],
            "flooder_last_line": flooder["last_line"],
            # What the server said about it: why it cut someone off.
            "server_warnings": warnings[-10:],
            "bystanders_dropped": by["dropped"],
            # Seconds from SIGTERM to exit; None: killed after flood_stop.
            "stop_s": stop_s if exited else None,
            "missing": (by["pings"] - len(by["ping_lat"])) + (by["msgs"] - len(by["msg_lat"])),
            "lg_cpu": max([flooder["lg_cpu"], by["lg_cpu"]] + [r["lg_cpu"] for r in read]),
        }
        for key, sent in (("ping", by["pings"]), ("msg", by["msgs"])):
            samples = sorted(by[key + "_lat"])
            missing = max(0, sent - len(samples))
            for label, q in (("p50", 0.50), ("p99", 0.99)):
                v = percentile(samples, q, missing)
                out["%s_%s_ms" % (key, label)] = v / 1e6 if v is not None else None
        answered = by["ping_lat"] + by["msg_lat"]
        out["max_ms"] = max(answered) / 1e6 if answered else None
        out["sent_ok"] = out["missing"] == 0 and by["pings"] > 0 and by["msgs"] > 0
        return out

    # -- everything -------------------------------------------------------

    def run_everything(self, scenarios=("throughput", "latency", "fanout", "connections",
                                        "flood")):
        """Results as {(scenario, size): {target: figures}}."""
        plan = self.plan
        results = {}
        beyond = [t for t in self.targets if t not in ONLY_THROUGHPUT]
        if not plan.get("quiet_beyond_throughput", True):
            beyond = [t for t in beyond if not t.endswith("-quiet")]
        chat = [t for t in beyond if t in TCPCHAT]
        if "throughput" in scenarios:
            # tcpchat's variants differ by a few tenths of a microsecond a
            # message (what logging costs), less than single runs on a
            # shared machine differ: they run several times, one after
            # another, and the median run stands (see median_run).
            for pairs in plan["pairs"]:
                runs = collections.OrderedDict((t, []) for t in self.targets)
                for repeat in range(plan.get("throughput_repeats", 1)):
                    for target in self.targets:
                        if repeat == 0 or target in TCPCHAT:
                            runs[target].append(self.run("throughput", target, pairs,
                                                         self.throughput))
                results[("throughput", pairs)] = collections.OrderedDict(
                    (t, median_run(r)) for t, r in runs.items())
        if "latency" in scenarios:
            n = plan["lat_clients"]
            for target in beyond:
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
        if "flood" in scenarios:
            for variant in FLOODS:
                for target in self.targets:
                    if target in FLOOD_TARGETS:
                        results.setdefault(("flood", variant), {})[target] = self.run(
                            "flood", target, variant, self.flood)
        if "versus" in scenarios and all(t in self.targets for t in VERSUS_TARGETS):
            pairs = plan["versus_pairs"]
            results.setdefault(("versus", pairs), {})[VERSUS_TARGETS[0]] = self.run(
                "versus", VERSUS_TARGETS[0], pairs, self.versus)
        self.run_sessions(scenarios, results)
        return results
