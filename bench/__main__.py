"""python -m bench [--quick]: run the benchmarks and print one table.

Every server (tcpchat in line and framed mode, at its defaults and quiet,
the baselines, and miniircd when it can be fetched) runs as a subprocess on
a 127.0.0.1 port; load comes from separate load generator processes.
Progress goes to stderr, the table to stdout.
"""

import argparse
import json
import os
import sys
import time

from bench import procs, report
from bench.scenarios import PLANS, TARGETS, Runner

SCENARIOS = ("throughput", "latency", "fanout", "connections", "flood", "restart",
             "resume-cost", "stall", "versus")
#: In a --markdown file, this heading and all after it are notes written by
#: hand (findings, earlier runs): kept when the file is written again.
NOTES = "## Notes kept between runs"


def sizes(text):
    try:
        values = tuple(int(x) for x in text.split(",") if x)
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected comma-separated numbers of pairs, e.g. 10,1000")
    return values


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Run the tcpchat benchmarks and print one table.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="plan", action="store_const", const="quick",
                      help="smaller sizes and shorter runs: a few minutes")
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
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"),
                        help="tcpchat's --log-level in its tcpchat/line, tcpchat/framed and "
                        "line-syslog runs (default: %(default)s, the server's default, a log "
                        "line per message); the -quiet runs always use warning")
    parser.add_argument("--profile", metavar="DIR",
                        help="run tcpchat under cProfile, one .prof file per run in DIR")
    parser.add_argument("--offline", action="store_true",
                        help="do not fetch miniircd from the package index: use the copy "
                        "cached by an earlier run, or skip it")
    parser.add_argument("--pairs", type=sizes, metavar="P,P,...",
                        help="the throughput scenario's numbers of pairs, instead of the plan's")
    parser.add_argument("--window", type=int, metavar="N",
                        help="throughput: unconfirmed messages per connection, instead of "
                        "16384 shared out (16 to 256 each)")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [t for t in targets if t not in TARGETS] + [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        make_parser().error("unknown: %s" % ", ".join(unknown))
    plan = dict(PLANS[args.plan])
    if args.pairs:
        plan["pairs"] = args.pairs
    if args.window:
        plan["window"] = args.window
    procs.TCPCHAT_LOG_LEVEL = args.log_level
    # Other work on the machine moves the figures: say how busy it was.
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    runner = Runner(plan, targets, profile_dir=args.profile, offline=args.offline,
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
        notes = ""
        try:
            with open(args.markdown) as f:
                old = f.read()
            if NOTES in old:
                notes = old[old.index(NOTES):]
        except OSError:
            pass
        with open(args.markdown, "w") as f:
            f.write(markdown(m, args, table, goals))
            if notes:
                f.write("\n" + notes)
    failed = any("error" in r for v in results.values() for r in v.values())
    return 1 if failed else 0


def markdown(m, args, table, goals):
    command = "python -m bench" + {"full": "", "quick": " --quick", "tiny": " --tiny"}[args.plan]
    if args.log_level != "info":
        command += " --log-level " + args.log_level
    for option in ("scenarios", "targets"):
        chosen = getattr(args, option)
        if chosen != make_parser().get_default(option):
            command += " --%s %s" % (option, chosen)
    if args.pairs:
        command += " --pairs " + ",".join(map(str, args.pairs))
    if args.window:
        command += " --window %d" % args.window
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

- Every server runs as its own subprocess on a 127.0.0.1 port, a fresh
  one for every run, driven by separate load generator processes
  (`bench/loadgen.py`); nothing leaves loopback.
- tcpchat runs as installed: `python -m tcpchat.server --host 127.0.0.1
  --port 0 --log-file TMPDIR/server.log --no-syslog`, at its default
  `--log-level info`, so every message is logged to stderr (read by the
  bench in large chunks, so the pipe never blocks it) and to the log file.
  The systemd unit passes `--no-syslog` too. Beside it: `-quiet`, the
  same at `--log-level warning` (the chat alone), and `tcpchat/line-syslog`,
  the defaults plus `--syslog-messages --syslog-address TMPDIR/log.sock`
  (one datagram a message), a datagram socket
  that a bench process (`bench/syslogd.py`) reads and counts, as
  rsyslog or journald read /dev/log.
- miniircd 2.3 (a one-file IRC server) is fetched with `pip download
  miniircd==2.3 --no-deps` into `$XDG_CACHE_HOME/tcpchat-bench` once, and
  run with the bench's own Python; when it cannot be had it is skipped with
  a message. Its clients register with NICK and USER and send `PRIVMSG NICK
  :TEXT`; it confirms nothing to the sender, so a sender's window is
  refilled when its partner has read its messages. It serves with
  select(), so it takes at most 500 pairs (descriptors below 1024).
- Server CPU is utime + stime from `/proc/PID/stat` of the server process,
  read before and after a run (10 ms ticks: small figures are coarse).
  It is steadier than wall time on a shared machine, so targets on cost use it.
- Memory is VmRSS from `/proc/PID/status`, before and after the storm; in
  the flood, VmHWM (the peak) at the end, and VmRSS sampled every 100 ms.
- Throughput: P pairs, both ends sending `/msg PARTNER TEXT` (32 bytes of
  text) with a window of unconfirmed messages per connection (16 to 256),
  refilled in one batch when half of it is confirmed. Delivered = MSG lines
  read by recipients, confirmed = DELIVERED (tcpchat) or SENT (baselines)
  read by senders, counted over the measured seconds after a warm-up.
  tcpchat's five variants run three times at each size (once in a quick
  run), one after another; each cell shows the run with the median server
  CPU per message. Logging's cost is judged run by run: tcpchat/line less
  tcpchat/line-quiet of the same round, the median of the rounds. The
  baselines run once.
- Versus miniircd: the throughput run at 100 pairs with 1,000 messages in
  flight per connection (the issue's load: "100 pairs pipelining 1,000
  messages each"), tcpchat at its defaults, tcpchat at warning and
  miniircd in turn, five times; medians.
- Latency: clients paired up, each sending one message every 100 ms,
  spread evenly; every message carries its send time, so send-to-MSG and
  send-to-DELIVERED are measured by the process that sent it.
- Flood: 200 registered line-mode users read everything; one more sends
  `/all x`, `/msg READER x` or `/help` lines as fast as the server takes
  them (non-blocking sends; it reads and counts its replies) for 10 s
  (3 s in a quick run); a bystander pair each send 20 `/ping`s and 20
  private messages a second, timed to PONG and to MSG. A reader is dropped
  when the server closes it or the bystanders see its LEFT. After the flood
  everyone keeps reading for a drain time (5 s; 3 s quick); a reply not in by
  then is missing, and a quantile that falls on one shows as "lost".
- Restart (`bench/sessions.py`): framed users registered from several load
  processes pair up (`/pair`), and each sends its partner 10 messages of 32
  bytes; each reads its partner's and never acknowledges them. The server
  runs with `--state-file` and `--receipt-timeout 0` (the messages wait for
  the restart however long a busy machine takes). SIGTERM; the clients read
  their `BYE` until closed; the "state saved" line gives the write time.
  A new server starts on the same file and port; the load's cost is its
  CPU when it says it listens less the first server's (which found no
  file). Once it listens, every client connects again (500 at a time per
  process) and sends `/resume TOKEN`, and acknowledges the messages that
  come again. Times run from the moment the bench read the new server's
  "listening" line to the last `OK resume`, the last pair's `BACK` (of two
  partners the first back hears of the second, whatever
  `--presence-limit`), the last client's 10th message, and its 10th
  `DELIVERED`.
- Resume on vs off: the throughput run, at `--log-level warning`, at its
  defaults and with `--resume-time 0`, alternated; medians. The target is
  judged on server CPU per message, since a server that is CPU-bound
  delivers in inverse proportion to it and a shared machine moves rates.
- Stall: the server at `--max-queue 1048576 --rate 0` (tiny runs: 64 KiB).
  "all": 20 line-mode users connect with SO_RCVBUF 4 KiB and never read
  after registering; one more sends `/all x` as fast as the server takes it
  until every one of them has been cut off (the flooder reads `AWAY` or
  `LEFT`), then 5 s more (2 s quick). Loopback grows the server's send
  buffers to 4 MiB, so the kernel takes some 3 MiB a user before the
  server's own queue grows: that takes seconds. "unacked": 20 framed users
  read everything and never `/ack`; one more sends each in turn a private
  message of 64,000 bytes, for 5 s (2 s quick). Peak growth is VmHWM at the
  end (reset through /proc/PID/clear_refs before the flood) less VmRSS
  before it; the sum of the limits is 20 x `--max-queue`.
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
