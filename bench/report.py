"""The table, the targets, and the machine they were measured on."""

import datetime
import os
import platform

import math

from bench.scenarios import BASELINES, FLOODS, TCPCHAT, TCPCHAT_MAIN
from bench.sessions import STALLS, median

# A run whose load generator used at least this share of a core was limited
# by the generator: its figures are lower bounds for the server.
SATURATED = 0.90

RATE, MICROS, MILLIS, SECONDS, PERCENT, KIB, MIB, COUNT, FRACTION = (
    "rate", "us", "ms", "s", "%", "KiB", "MiB", "count", "fraction")

#: scenario -> (title, size label, rows of (figure label, key, unit, ratios?))
ROWS = {
    "throughput": ("1 throughput", "P=%d pairs", [
        ("delivered msg/s", "delivered_per_s", RATE, True),
        ("confirmed msg/s", "confirmed_per_s", RATE, True),
        ("server CPU us/delivered msg", "cpu_us_per_msg", MICROS, True),
        ("syslog datagrams/msg", "syslog_per_msg", FRACTION, False),
        ("server CPU busy", "server_busy", PERCENT, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
        ("runs (the median shown)", "repeats", COUNT, False),
    ]),
    "latency": ("2 latency", "%d clients x 10 msg/s", [
        ("send-to-MSG p50 ms", "msg_p50_ms", MILLIS, True),
        ("send-to-MSG p99 ms", "msg_p99_ms", MILLIS, True),
        ("send-to-MSG p99.9 ms", "msg_p999_ms", MILLIS, True),
        ("send-to-ack p50 ms", "confirm_p50_ms", MILLIS, True),
        ("send-to-ack p99 ms", "confirm_p99_ms", MILLIS, True),
        ("send-to-ack p99.9 ms", "confirm_p999_ms", MILLIS, True),
        ("server CPU busy", "server_busy", PERCENT, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
    ]),
    "fanout": ("3 fan-out /all", "N=%d users", [
        ("last recipient has it ms", "last_ms", MILLIS, False),
        ("sender has DELIVERED * ms", "confirm_ms", MILLIS, False),
        ("server CPU ms", "cpu_ms", MILLIS, False),
    ]),
    "flood": ("5 flood", "one client sends %s as fast as it can", [
        ("bystander /ping p50 ms", "ping_p50_ms", MILLIS, False),
        ("bystander /ping p99 ms", "ping_p99_ms", MILLIS, False),
        ("bystander /msg to MSG p50 ms", "msg_p50_ms", MILLIS, False),
        ("bystander /msg to MSG p99 ms", "msg_p99_ms", MILLIS, False),
        ("bystander slowest answered ms", "max_ms", MILLIS, False),
        ("bystander replies missing", "missing", COUNT, False),
        ("readers dropped", "dropped", COUNT, False),
        ("readers", "readers", COUNT, False),
        ("server peak RSS MiB", "peak_rss_mib", MIB, False),
        ("server CPU s", "server_cpu_s", SECONDS, False),
        ("flooder commands sent/s", "flood_sent_per_s", RATE, False),
        ("flooder commands answered/s", "flood_answered_per_s", RATE, False),
        ("flooder cut off after s", "flooder_dropped_s", SECONDS, False),
        ("server exit after SIGTERM s (-: killed)", "stop_s", SECONDS, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
    ]),
    "restart": ("6 restart", "N=%d users, each with 10 held messages, resume", [
        ("state file bytes", "state_bytes", COUNT, False),
        ("state file bytes/user", "state_bytes_per_user", RATE, False),
        ("state write ms (server's log)", "save_ms", MILLIS, False),
        ("SIGTERM to exit s", "sigterm_to_exit_s", SECONDS, False),
        ("state load CPU ms (start with - without)", "load_cpu_ms", MILLIS, False),
        ("messages restored", "restored_messages", COUNT, False),
        ("listening to half OK resume ms", "ok_p50_ms", MILLIS, False),
        ("listening to every OK resume ms", "ok_last_ms", MILLIS, False),
        ("listening to every pair BACK ms", "back_last_ms", MILLIS, False),
        ("listening to every held MSG ms", "msgs_last_ms", MILLIS, False),
        ("listening to every DELIVERED ms", "delivered_last_ms", MILLIS, False),
        ("server CPU for the resumes s", "resume_cpu_s", SECONDS, False),
        ("users resumed", "resumed", COUNT, False),
        ("held messages delivered again", "redelivered", COUNT, False),
        ("server RSS before the restart MiB", "rss_old_mib", MIB, False),
        ("server RSS after resume MiB", "rss_new_mib", MIB, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
    ]),
    "resume-cost": ("7 resume on vs off", "P=%d pairs, line mode, --log-level warning", [
        ("resume on: delivered msg/s", "on_per_s", RATE, False),
        ("resume off: delivered msg/s", "off_per_s", RATE, False),
        ("on / off msg/s", "rate_ratio", FRACTION, False),
        ("resume on: server CPU us/msg", "on_cpu_us", MICROS, False),
        ("resume off: server CPU us/msg", "off_cpu_us", MICROS, False),
        ("off / on CPU us/msg", "cpu_ratio", FRACTION, False),
        ("runs of each (medians)", "repeats", COUNT, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
    ]),
    "versus": ("9 versus miniircd", "P=%d pairs, line mode, alternated runs, medians", [
        ("messages in flight per connection", "window", COUNT, False),
        ("tcpchat defaults: confirmed msg/s", "line_per_s", RATE, False),
        ("tcpchat warning: confirmed msg/s", "quiet_per_s", RATE, False),
        ("miniircd: delivered msg/s", "miniircd_per_s", RATE, False),
        ("defaults / miniircd", "line_ratio", FRACTION, False),
        ("warning / miniircd", "quiet_ratio", FRACTION, False),
        ("tcpchat defaults: server CPU us/msg", "line_cpu_us", MICROS, False),
        ("tcpchat warning: server CPU us/msg", "quiet_cpu_us", MICROS, False),
        ("miniircd: server CPU us/msg", "miniircd_cpu_us", MICROS, False),
        ("runs of each (medians)", "repeats", COUNT, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
    ]),
    "stall": ("8 stall", "%s; --rate 0", [
        ("stalled users", "users", COUNT, False),
        ("sum of their limits MiB", "limits_mib", MIB, False),
        ("server RSS before MiB", "rss_before_mib", MIB, False),
        ("server peak RSS MiB", "peak_rss_mib", MIB, False),
        ("peak RSS growth MiB", "growth_mib", MIB, False),
        ("growth / sum of limits", "growth_ratio", FRACTION, False),
        ("server RSS at the end MiB", "rss_end_mib", MIB, False),
        ("stalled users cut off", "dropped", COUNT, False),
        ("the last cut off after s", "all_cut_off_s", SECONDS, False),
        ("slow-consumer warnings", "slow_consumer_warnings", COUNT, False),
        ("seconds of flooding", "flood_s", SECONDS, False),
        ("flooder commands sent/s", "commands_per_s", RATE, False),
        ("flooder FAILED lines", "failed", COUNT, False),
        ("server CPU s", "server_cpu_s", SECONDS, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
    ]),
    "connections": ("4 connections", "N=%d clients", [
        ("connect+register storm s", "storm_s", SECONDS, False),
        ("server CPU for the storm s", "storm_cpu_s", SECONDS, False),
        ("server RSS KiB/connection", "rss_kib_per_conn", KIB, False),
        ("server RSS total MiB", "rss_mib", MIB, False),
        ("one /who ms (median)", "who_ms", MILLIS, False),
        ("server CPU per /who ms", "who_cpu_ms", MILLIS, False),
    ]),
}
ORDER = ("throughput", "latency", "fanout", "connections", "flood", "restart", "resume-cost",
         "stall", "versus")
#: Scenarios whose sizes are named variants: their labels, in table order.
VARIANTS = {"flood": FLOODS, "stall": STALLS}
#: Rows shown only when some run has the figure (syslog: one target only).
OPTIONAL = ("syslog_per_msg",)


def fmt(value, unit):
    if value is None:
        return "-"
    if value == math.inf:
        return "lost"  # a reply that never came: the quantile is past the run
    if unit == FRACTION:
        return "%.2f" % value
    if unit == RATE:
        return "{:,.0f}".format(value)
    if unit == PERCENT:
        return "%.0f%%" % (value * 100)
    if unit in (MICROS, MILLIS, KIB, SECONDS, MIB):
        return "%.3f" % value if value < 1 else "%.2f" % value if value < 100 else "%.0f" % value
    return str(value)


def machine():
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def size_order(key):
    scenario, size = key
    return (ORDER.index(scenario),
            list(VARIANTS[scenario]).index(size) if scenario in VARIANTS else size)


def ratio_targets(targets):
    """Whose ratios the "vs" columns show: the defaults, else the quiet runs."""
    return ([t for t in TCPCHAT[:2] if t in targets]
            or [t for t in TCPCHAT[2:4] if t in targets])


def table(results, targets):
    """The one table: every figure of every run, and tcpchat's ratios."""
    chat = ratio_targets(targets)
    bases = [b for b in BASELINES if b in targets]
    head = ["figure"] + list(targets) + ["vs " + b for b in bases if chat]
    lines = []
    notes = set()
    for key in sorted(results, key=size_order):
        scenario, size = key
        by_target = results[key]
        title, size_label, rows = ROWS[scenario]
        label = VARIANTS[scenario][size][0] if scenario in VARIANTS else size
        lines.append("%s, %s" % (title, size_label % label))
        first = True
        for label, key, unit, ratios in rows:
            if key in OPTIONAL and all(r.get(key) is None for r in by_target.values()):
                continue
            cells = ["  " + label]
            for t in targets:
                run = by_target.get(t)
                if run is None:
                    cells.append("")
                elif "error" in run:
                    cells.append("error" if first else "")
                elif "skipped" in run:
                    cells.append("skipped" if first else "")
                else:
                    mark = ""
                    if (run.get("lg_cpu") or 0) >= SATURATED and key != "lg_cpu":
                        mark += "*"
                        notes.add("*")
                    if not run.get("sent_ok", True):
                        mark += "!"
                        notes.add("!")
                    cells.append(fmt(run.get(key), unit) + mark)
            if chat:
                for b in bases:
                    cells.append(ratio_cell(by_target, chat, b, key) if ratios else "")
            lines.append(cells)
            first = False
        lines.append(None)
    widths = [max(len(str(c)) for c in col)
              for col in zip(head, *[ln for ln in lines if isinstance(ln, list)])]

    def render(cells):
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(out).rstrip()

    text = [render(head), "-" * len(render(head))]
    for ln in lines:
        text.append(render(ln) if isinstance(ln, list) else ln or "")
    legend = []
    if chat:
        legend.append(
            "vs BASELINE: %s divided by that baseline's figure "
            "(more is better for msg/s, less for us and ms); the targets below "
            "give the other ratios." % " / ".join(chat))
    if any(t in targets for t in TCPCHAT):
        legend.append(
            "tcpchat/line and /framed run as installed: --log-level info, every message "
            "logged to stderr and to a --log-file, no syslog; -quiet: --log-level warning; "
            "line-syslog: as installed plus --syslog-messages --syslog-address, "
            "a bench-side syslog socket.")
    legend.append(
        "ack: DELIVERED for tcpchat (line mode: written to the recipient's socket; "
        "framed: the recipient sent /ack), SENT for the baselines; miniircd confirms nothing "
        "(confirmed msg/s: -).")
    if "*" in notes:
        legend.append(
            "*: a load generator used >= %d%% of a core: it may have been the "
            "bottleneck, and the server may do better than this figure." % (SATURATED * 100))
    if "!" in notes:
        legend.append("!: not every message sent was delivered and acknowledged "
                      "(flood: not every bystander /ping or message was answered).")
    if any(k[0] == "flood" for k in results):
        legend.append("flood: lost = the quantile falls on a reply that never came "
                      "within the run and its drain time.")
    skipped = {}  # (target, reason) -> the runs it was skipped in: said once
    for k, v in sorted(results.items(), key=lambda kv: size_order(kv[0])):
        for t, r in v.items():
            if "error" in r:
                legend.append("error: %s %s %s: %s" % (k[0], k[1], t, r["error"]))
            elif "skipped" in r:
                skipped.setdefault((t, r["skipped"]), []).append("%s %s" % k)
    for (t, why), where in skipped.items():
        legend.append("skipped: %s (%s): %s" % (t, ", ".join(where), why))
    return "\n".join(text).rstrip() + "\n\n" + "\n".join(legend)


def ratio_cell(by_target, chat, base, key):
    b = by_target.get(base)
    if not b or "error" in b or not b.get(key):
        return "-"
    parts = []
    for t in chat:
        r = by_target.get(t)
        parts.append("-" if not r or "error" in r or r.get(key) is None
                     else "%.2f" % (r[key] / b[key]))
    return " / ".join(parts)


TARGETS = (
    ("cpu", "server CPU per delivered pair message, acknowledgements included, at most 2.5 us"),
    ("asyncio", "messages per second at least 2x the asyncio baseline"),
    ("threads", "messages per second at least 4x the threads baseline"),
    ("rss", "10,000 idle registered clients at no more than 4 KiB of resident memory each"),
    ("storm", "the 10,000-client connect-and-register storm done in under 10 s"),
    ("latency", "p99 send-to-MSG under 5 ms at 1,000 clients x 10 messages a second"),
    ("fanout", "an /all to 10,000 users at the last one in under 1 s"),
    ("miniircd", "at the defaults, private messages delivered and confirmed a second at "
     "least 1.0x what miniircd delivers (unconfirmed), 100 pairs, line mode"),
    ("miniircd-quiet", "at --log-level warning, at least 1.5x miniircd, 100 pairs, line mode"),
    ("log", "logging every message (stderr and --log-file) costs at most 1 us of server CPU "
     "per message over --log-level warning"),
    ("syslog", "one syslog datagram per message costs at most 1 us of server CPU per message "
     "over --log-level warning"),
    ("flood", "while one client floods /all, /msg or /help, a bystander's /ping and private "
     "messages keep a p99 under 50 ms"),
    ("flood-drops", "no well-behaved reader is dropped during a flood"),
    ("restart", "after a restart every user resumes, and every held message is delivered "
     "again with its id and confirmed to its sender"),
    ("resume-cost", "throughput with resume on within 10% of resume off (100 pairs, line mode, "
     "--log-level warning; judged on server CPU per message)"),
    ("stall-rss", "peak RSS growth within 1.5x the sum of the per-connection limits, "
     "20 stalled users at --max-queue 1 MiB and --rate 0"),
    ("stall-drops", "every user that never reads is cut off as a slow consumer, and none "
     "that reads"),
)
#: The pair size of the resume-on-vs-off comparison (issue 10: 100 pairs),
#: and the stall size judged (issue 8: 20 users at 1 MiB each).
RESUME_COST_PAIRS = 100
STALL_JUDGED = (20, 1 << 20)
#: The pair size of the miniircd comparison (issue 12: 100 pairs).
MINIIRCD_PAIRS = 100


def targets_met(results, plan):
    """(met: True, False or None for not measured, target, detail) per target."""
    found = {}

    def runs(scenario, size=None, targets=TCPCHAT_MAIN):
        for (name, n), by_target in sorted(results.items(), key=lambda kv: size_order(kv[0])):
            if name == scenario and (size is None or n == size):
                for t in targets:
                    if t in by_target and ok(by_target[t]):
                        yield n, t, by_target[t], by_target

    def ok(run):
        return "error" not in run and "skipped" not in run

    def short(t):
        return t.split("/")[1]

    cpu = [(r["cpu_us_per_msg"], t, n) for n, t, r, _ in runs("throughput")]
    if cpu:
        worst = max(cpu)
        found["cpu"] = (worst[0] <= 2.5, "worst %.2f us (%s, P=%d); %s" % (
            worst[0], worst[1], worst[2], ", ".join(
                "%s P=%d %.2f" % (short(t), n, v) for v, t, n in cpu)))
    for base, factor in (("asyncio", 2), ("threads", 4)):
        ratios = [(r["delivered_per_s"] / by[base]["delivered_per_s"], t, n)
                  for n, t, r, by in runs("throughput")
                  if base in by and ok(by[base]) and by[base]["delivered_per_s"]]
        if ratios:
            worst = min(ratios)
            found[base] = (worst[0] >= factor, "worst %.2fx (%s, P=%d); %s" % (
                worst[0], worst[1], worst[2], ", ".join(
                    "%s P=%d %.2fx" % (short(t), n, v) for v, t, n in ratios)))
    # miniircd confirms nothing: tcpchat's figure is what it both delivered
    # and confirmed, miniircd's what it delivered. Judged on the versus
    # scenario's medians when it ran; else on the throughput table's runs.
    for goal, target, factor in (("miniircd", "tcpchat/line", 1.0),
                                 ("miniircd-quiet", "tcpchat/line-quiet", 1.5)):
        for n, t, r, by in runs("throughput", MINIIRCD_PAIRS, (target,)):
            base = by.get("miniircd")
            if base and ok(base) and base["delivered_per_s"]:
                mine = min(r["delivered_per_s"], r["confirmed_per_s"])
                x = mine / base["delivered_per_s"]
                # Rates depend on how much of the shared cores each server
                # got; the CPU each spent per message says it another way.
                found[goal] = (x >= factor, "%.2fx in one run (%s %s msg/s, miniircd %s msg/s, "
                               "P=%d; server CPU per message %.2f us vs %.2f us)" % (
                                   x, target, fmt(mine, RATE), fmt(base["delivered_per_s"], RATE),
                                   n, r["cpu_us_per_msg"], base["cpu_us_per_msg"]))
        for n, t, r, _ in runs("versus", MINIIRCD_PAIRS, ("tcpchat/line",)):
            name = "line" if target == "tcpchat/line" else "quiet"
            x = r[name + "_ratio"]
            if x is not None:
                found[goal] = (x >= factor, "%.2fx, the median of %d alternated runs (%s %s "
                               "msg/s, miniircd %s msg/s, P=%d; server CPU per message %.2f us "
                               "vs %.2f us; single runs: %s against %s)" % (
                                   x, r["repeats"], target, fmt(r[name + "_per_s"], RATE),
                                   fmt(r["miniircd_per_s"], RATE), n, r[name + "_cpu_us"],
                                   r["miniircd_cpu_us"],
                                   ", ".join(fmt(v, RATE) for v in r[name + "_runs_per_s"]),
                                   ", ".join(fmt(v, RATE) for v in r["miniircd_runs_per_s"])))
    for goal, loud, quiet in (("log", ("tcpchat/line", "tcpchat/framed"),
                               ("tcpchat/line-quiet", "tcpchat/framed-quiet")),
                              ("syslog", ("tcpchat/line-syslog",), ("tcpchat/line-quiet",))):
        costs = []
        repeats = set()
        for n, t, r, by in runs("throughput", targets=loud):
            q = quiet[loud.index(t)]
            if q in by and ok(by[q]):
                # Run by run: each round ran the two one after the other,
                # under the same conditions; the median difference stands.
                pairs = list(zip(r.get("cpu_runs", [r["cpu_us_per_msg"]]),
                                 by[q].get("cpu_runs", [by[q]["cpu_us_per_msg"]])))
                repeats.add(len(pairs))
                costs.append((median([a - b for a, b in pairs]), t, n))
        if costs:
            worst = max(costs)
            how = ("the median of %d alternated runs' differences" % max(repeats)
                   if max(repeats) > 1 else "one run each")
            found[goal] = (worst[0] <= 1.0, "worst +%.2f us (%s, P=%d), %s; %s" % (
                worst[0], worst[1], worst[2], how, ", ".join(
                    "%s P=%d +%.2f" % (short(t), n, v) for v, t, n in costs)))
    conns = list(runs("connections", 10000))
    if conns:
        rss = max((r["rss_kib_per_conn"], t) for _, t, r, _ in conns)
        storm = max((r["storm_s"], t) for _, t, r, _ in conns)
        found["rss"] = (rss[0] <= 4, "worst %.2f KiB (%s)" % rss)
        found["storm"] = (storm[0] < 10, "worst %.2f s (%s)" % storm)
    if plan["lat_rate"] == 10:
        lat = [(r["msg_p99_ms"], t) for _, t, r, _ in runs("latency", 1000)
               if r["msg_p99_ms"] is not None]
        if lat:
            worst = max(lat)
            found["latency"] = (worst[0] < 5, "worst %.2f ms (%s)" % worst)
    fan = [(r["last_ms"], t) for _, t, r, _ in runs("fanout", 10000) if r["last_ms"] is not None]
    if fan:
        worst = max(fan)
        found["fanout"] = (worst[0] < 1000, "worst %.0f ms (%s)" % worst)
    floods = list(runs("flood", targets=TCPCHAT))
    if floods:
        p99 = []
        for v, t, r, _ in floods:
            for key in ("ping", "msg"):
                value = r["%s_p99_ms" % key]
                p99.append((math.inf if value is None else value, "%s %s" % (FLOODS[v][0], key)))
        worst = max(p99)
        found["flood"] = (worst[0] < 50, "worst %s ms (%s); %s" % (
            fmt(worst[0], MILLIS), worst[1],
            ", ".join("%s %s" % (what, fmt(value, MILLIS)) for value, what in p99)))
        drops = [(r["dropped"], r["readers"], FLOODS[v][0]) for v, t, r, _ in floods]
        found["flood-drops"] = (all(d == 0 for d, _, _ in drops), "; ".join(
            "%s: %d of %d dropped" % (what, d, n) for d, n, what in drops))
    found.update(session_targets(runs, results))
    out = []
    for key, target in TARGETS:
        met, detail = found.get(key, (None, "not measured in this run"))
        out.append((met, target, detail))
    return out


def targets_text(goals):
    words = {True: "met    ", False: "NOT met", None: "n/a    "}
    return "\n".join("%s  %s: %s" % (words[ok], target, detail) for ok, target, detail in goals)


def session_targets(runs, results):
    """{goal: (met, detail)} for the restart, resume-cost and stall runs."""
    found = {}
    restarts = list(runs("restart"))
    if restarts:
        found["restart"] = (all(r["sent_ok"] for _, _, r, _ in restarts), "; ".join(
            "N=%d: %d resumed, %d of %d held messages delivered again (%d with their ids), "
            "%d confirmed, every OK resume in %s ms" % (
                n, r["resumed"], r["redelivered"], r["users"] * r["held_each"], r["same_ids"],
                r["confirmed"], fmt(r["ok_last_ms"], MILLIS))
            for n, _, r, _ in restarts))
    for n, t, r, _ in runs("resume-cost", RESUME_COST_PAIRS):
        if r["cpu_ratio"] is not None:
            found["resume-cost"] = (r["cpu_ratio"] >= 0.9, (
                "by CPU %.2fx (on %.2f us, off %.2f us a message); by msg/s %.2fx "
                "(on %s, off %s); medians of %d runs each" % (
                    r["cpu_ratio"], r["on_cpu_us"], r["off_cpu_us"], r["rate_ratio"] or 0,
                    fmt(r["on_per_s"], RATE), fmt(r["off_per_s"], RATE), r["repeats"])))
    stalls = [(v, r) for v, _, r, _ in runs("stall", targets=("tcpchat/line",))]
    judged = [(v, r) for v, r in stalls if (r["users"], r["max_queue"]) == STALL_JUDGED]
    if judged:
        found["stall-rss"] = (all(r["growth_ratio"] <= 1.5 for _, r in judged), "; ".join(
            "%s: %.1f MiB, %.2fx of %.0f MiB" % (v, r["growth_mib"], r["growth_ratio"],
                                                 r["limits_mib"]) for v, r in judged))
    if stalls:
        found["stall-drops"] = (
            all(r["dropped"] == r["dropped_expected"] for _, r in stalls), "; ".join(
                "%s: %d of %d cut off (expected %d)" % (v, r["dropped"], r["users"],
                                                        r["dropped_expected"])
                for v, r in stalls))
    return found
