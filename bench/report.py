"""The table, the targets, and the machine they were measured on."""

import datetime
import os
import platform

from bench.scenarios import BASELINES, TCPCHAT

# A run whose load generator used at least this share of a core was limited
# by the generator: its figures are lower bounds for the server.
SATURATED = 0.90

RATE, MICROS, MILLIS, SECONDS, PERCENT, KIB, MIB, COUNT = (
    "rate", "us", "ms", "s", "%", "KiB", "MiB", "count")

#: scenario -> (title, size label, rows of (figure label, key, unit, ratios?))
ROWS = {
    "throughput": ("1 throughput", "P=%d pairs", [
        ("delivered msg/s", "delivered_per_s", RATE, True),
        ("confirmed msg/s", "confirmed_per_s", RATE, True),
        ("server CPU us/delivered msg", "cpu_us_per_msg", MICROS, True),
        ("server CPU busy", "server_busy", PERCENT, False),
        ("load generator CPU", "lg_cpu", PERCENT, False),
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
    "connections": ("4 connections", "N=%d clients", [
        ("connect+register storm s", "storm_s", SECONDS, False),
        ("server CPU for the storm s", "storm_cpu_s", SECONDS, False),
        ("server RSS KiB/connection", "rss_kib_per_conn", KIB, False),
        ("server RSS total MiB", "rss_mib", MIB, False),
        ("one /who ms (median)", "who_ms", MILLIS, False),
        ("server CPU per /who ms", "who_cpu_ms", MILLIS, False),
    ]),
}
ORDER = ("throughput", "latency", "fanout", "connections")


def fmt(value, unit):
    if value is None:
        return "-"
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


def table(results, targets):
    """The one table: every figure of every run, and tcpchat's ratios."""
    chat = [t for t in TCPCHAT if t in targets]
    bases = [b for b in BASELINES if b in targets]
    head = ["figure"] + list(targets) + ["vs " + b for b in bases if chat]
    lines = []
    notes = set()
    for scenario in ORDER:
        title, size_label, rows = ROWS[scenario]
        for (name, size), by_target in sorted(
                (k, v) for k, v in results.items() if k[0] == scenario):
            lines.append("%s, %s" % (title, size_label % size))
            for i, (label, key, unit, ratios) in enumerate(rows):
                cells = ["  " + label]
                for t in targets:
                    run = by_target.get(t)
                    if run is None:
                        cells.append("")
                    elif "error" in run:
                        cells.append("error" if i == 0 else "")
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
            "vs BASELINE: tcpchat %s divided by that baseline's figure "
            "(more is better for msg/s, less for us and ms)."
            % " / ".join(t.split("/")[1] for t in chat))
    legend.append(
        "ack: DELIVERED for tcpchat (line mode: written to the recipient's socket; "
        "framed: the recipient sent /ack), SENT for the baselines.")
    if "*" in notes:
        legend.append(
            "*: a load generator used >= %d%% of a core: it may have been the "
            "bottleneck, and the server may do better than this figure." % (SATURATED * 100))
    if "!" in notes:
        legend.append("!: not every message sent was delivered and acknowledged.")
    errors = ["%s %s %s: %s" % (k[0], k[1], t, r["error"])
              for k, v in sorted(results.items()) for t, r in v.items() if "error" in r]
    legend += ["error: " + e for e in errors]
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
)


def targets_met(results, plan):
    """(met: True, False or None for not measured, target, detail) per target."""
    found = {}

    def runs(scenario, size=None):
        for (name, n), by_target in sorted(results.items()):
            if name == scenario and (size is None or n == size):
                for t in TCPCHAT:
                    if t in by_target and "error" not in by_target[t]:
                        yield n, t, by_target[t], by_target

    cpu = [(r["cpu_us_per_msg"], t, n) for n, t, r, _ in runs("throughput")]
    if cpu:
        worst = max(cpu)
        found["cpu"] = (worst[0] <= 2.5, "worst %.2f us (%s, P=%d); %s" % (
            worst[0], worst[1], worst[2], ", ".join(
                "%s P=%d %.2f" % (t.split("/")[1], n, v) for v, t, n in cpu)))
    for base, factor in (("asyncio", 2), ("threads", 4)):
        ratios = [(r["delivered_per_s"] / by[base]["delivered_per_s"], t, n)
                  for n, t, r, by in runs("throughput")
                  if base in by and "error" not in by[base] and by[base]["delivered_per_s"]]
        if ratios:
            worst = min(ratios)
            found[base] = (worst[0] >= factor, "worst %.2fx (%s, P=%d); %s" % (
                worst[0], worst[1], worst[2], ", ".join(
                    "%s P=%d %.2fx" % (t.split("/")[1], n, v) for v, t, n in ratios)))
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
    out = []
    for key, target in TARGETS:
        met, detail = found.get(key, (None, "not measured in this run"))
        out.append((met, target, detail))
    return out


def targets_text(goals):
    words = {True: "met    ", False: "NOT met", None: "n/a    "}
    return "\n".join("%s  %s: %s" % (words[ok], target, detail) for ok, target, detail in goals)
