"""python -m bench [--quick]: run the benchmarks and print one table.

Every server (tcpchat in line and framed mode, and the baselines) runs as a
subprocess on a 127.0.0.1 port the kernel picks; load comes from separate
load generator processes. Progress goes to stderr, the table to stdout.
"""

import argparse
import json
import os
import sys
import time

from bench import procs, report
from bench.scenarios import PLANS, TARGETS, Runner

SCENARIOS = ("throughput", "latency", "fanout", "connections")


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the tcpchat benchmarks and print one table.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="plan", action="store_const", const="quick",
                      help="smaller sizes and shorter runs: under a minute")
    size.add_argument("--tiny", dest="plan", action="store_const", const="tiny",
                      help="the smallest sizes: proves only that it all works")
    parser.set_defaults(plan="full")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated, from: %(default)s")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, from: %(default)s")
    parser.add_argument("--json", metavar="PATH", help="also write the raw figures here")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the report as Markdown (bench/RESULTS.md)")
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"),
                        help="tcpchat's --log-level in the runs: warning (default) measures "
                        "the chat, info adds a log line per message as the server's default does")
    parser.add_argument("--profile", metavar="DIR",
                        help="run tcpchat under cProfile, one .prof file per run in DIR")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [t for t in targets if t not in TARGETS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        make_parser().error("unknown: %s" % ", ".join(unknown))
    plan = PLANS[args.plan]
    procs.TCPCHAT_LOG_LEVEL = args.log_level
    # Other work on the machine moves the figures: say how busy it was.
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    runner = Runner(plan, targets, profile_dir=args.profile,
                    progress=lambda text: print("bench: " + text, file=sys.stderr, flush=True))
    results = runner.run_everything(scenarios)
    m = report.machine()
    m["load"] = "%.2f before, %.2f after" % (load_before, os.getloadavg()[0])
    header = ("tcpchat benchmarks (%s run, %.0f s): %s, %d cores (%s), Python %s, Linux %s,"
              " load average %s" % (
                  args.plan, time.monotonic() - started, m["date"], m["cores"], m["cpu"],
                  m["python"], m["kernel"], m["load"]))
    table = report.table(results, targets)
    goals = report.targets_met(results, plan)
    print(header + "\n\n" + table + "\n\nTargets\n" + report.targets_text(goals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": m, "plan": args.plan,
                       "results": [{"scenario": k[0], "size": k[1], "target": t, "figures": r}
                                   for k, v in sorted(results.items()) for t, r in v.items()]},
                      f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(m, args, table, goals))
    failed = any("error" in r for v in results.values() for r in v.values())
    return 1 if failed else 0


def markdown(m, args, table, goals):
    command = "python -m bench" + {"full": "", "quick": " --quick", "tiny": " --tiny"}[args.plan]
    if args.log_level != "warning":
        command += " --log-level " + args.log_level
    lines = [
        "# Benchmark results",
        "",
        "The latest %s run of `%s`, from a checkout." % (args.plan, command),
        "",
        "- Date: %s" % m["date"],
        "- Machine: %d cores (%s), Linux %s" % (m["cores"], m["cpu"], m["kernel"]),
        "- Python: %s" % m["python"],
        "- Load average (1 min) around the run: %s" % m["load"],
        "",
        "## Targets",
        "",
    ]
    for ok, target, detail in goals:
        if ok is None:
            lines.append("- not measured: %s." % target)
        else:
            lines.append("- **%s**: %s. Measured: %s." % ("met" if ok else "not met", target, detail))
    lines += ["", "## Table", "", "```", table, "```", "", HOW]
    return "\n".join(lines)


HOW = """## How the figures are taken

- Every server runs as its own subprocess on a 127.0.0.1 port the kernel
  picks, a fresh one for every run, driven by separate load generator
  processes (`bench/loadgen.py`); nothing leaves loopback.
- tcpchat runs as `python -m tcpchat.server --host 127.0.0.1 --port 0
  --no-syslog --log-level LEVEL`, LEVEL from `python -m bench --log-level`
  (`warning` unless given): the cost of the chat, not of writing a log line
  per message. At the server's default `info` level each message is logged,
  which `python -m bench --log-level info` measures.
- Server CPU is utime + stime from `/proc/PID/stat` of the server process,
  read before and after a run (10 ms ticks: small figures are coarse).
  It is steadier than wall time on a shared machine, so targets on cost use it.
- Memory is VmRSS from `/proc/PID/status`, before and after the storm.
- Throughput: P pairs, both ends sending `/msg PARTNER TEXT` (32 bytes of
  text) with a window of unconfirmed messages per connection (16 to 256),
  refilled in one batch when half of it is confirmed. Delivered = MSG lines
  read by recipients, confirmed = DELIVERED (tcpchat) or SENT (baselines)
  read by senders, counted over the measured seconds after a warm-up.
- Latency: clients paired up, each sending one message every 100 ms,
  spread evenly; every message carries its send time, so send-to-MSG and
  send-to-DELIVERED are measured by the process that sent it.
- "load generator CPU" is the generator's own CPU time over wall time; at
  90% and over its figures are marked, as it may have been the bottleneck.
- Two cores shared with other work: rates and latencies move by tens of per
  cent from run to run; CPU per message is the figure to compare. The
  threads baseline moves most: with 20 to 2,000 threads contending for the
  GIL, its cost per message at P=10 has ranged from 8 to 51 us between runs
  on this machine, so the "vs threads" ratios are the least steady figures.
"""


if __name__ == "__main__":
    sys.exit(main())
