"""Smoke test of the benchmark harness (bench/): it runs, at tiny sizes.

Nothing here times anything: it checks that every scenario ran against
every target, that the table has its rows, and that the runs delivered and
acknowledged the messages they sent. The flood and stall scenarios'
outcomes (did the bystanders get their replies? who was cut off?) are the
server's business, not the harness's: here they need only have run and
counted. The restart scenario is checked in full: its harness is right
only if every client resumed and got its held messages back. miniircd is never fetched here
(--offline): it runs if an earlier bench cached it, and is skipped if not.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("tcpchat/line", "tcpchat/framed", "tcpchat/line-quiet", "tcpchat/framed-quiet",
           "tcpchat/line-syslog", "relay", "asyncio", "threads", "miniircd")
# Targets that run the throughput scenario only (at tiny size, the -quiet
# ones too: they differ by a server option only).
THROUGHPUT_ONLY = ("tcpchat/line-syslog", "miniircd", "tcpchat/line-quiet",
                   "tcpchat/framed-quiet")
CHAT = ("tcpchat/line", "tcpchat/framed")

# bench/ lives in the checkout only: an sdist (and the RPM built from it)
# ships the tests without it.
pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(REPO, "bench", "__main__.py")),
    reason="bench/ is not in this tree (an sdist)",
)


@pytest.mark.slow
def test_tiny_benchmark_runs_everything(tmp_path):
    raw = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--offline", "--json", str(raw)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    for row in (
        "1 throughput, P=2 pairs", "delivered msg/s", "confirmed msg/s",
        "server CPU us/delivered msg", "load generator CPU",
        "2 latency, 10 clients", "send-to-MSG p99 ms", "send-to-ack p99.9 ms",
        "3 fan-out /all, N=5 users", "last recipient has it ms",
        "4 connections, N=10 clients", "server RSS KiB/connection", "one /who ms",
        "5 flood, one client sends /all x", "5 flood, one client sends /msg SOMEONE x",
        "5 flood, one client sends /help", "bystander /ping p99 ms", "readers dropped",
        "server peak RSS MiB", "syslog datagrams/msg",
        "6 restart, N=10 users", "state file bytes", "state write ms",
        "listening to every OK resume ms", "listening to every pair BACK ms",
        "7 resume on vs off, P=2 pairs", "off / on CPU us/msg",
        "8 stall, users that never read", "8 stall, framed users that never /ack",
        "9 versus miniircd, P=2 pairs",
        "peak RSS growth MiB", "sum of their limits MiB", "stalled users cut off",
        "vs relay", "vs asyncio", "vs threads", "vs miniircd", "Targets",
    ):
        assert row in table, row
    for target in TARGETS:
        assert target in table.splitlines()[2], target

    runs = json.loads(raw.read_text())["results"]
    ran = {(r["scenario"], r["target"]) for r in runs}
    for target in TARGETS:
        assert ("throughput", target) in ran
        if target not in THROUGHPUT_ONLY:
            assert ("latency", target) in ran
    for target in CHAT:
        assert ("fanout", target) in ran
        assert ("connections", target) in ran
    floods = {r["size"]: r["figures"] for r in runs if r["scenario"] == "flood"}
    assert sorted(floods) == ["all", "help", "msg"]
    assert ("restart", "tcpchat/framed") in ran
    assert ("resume-cost", "tcpchat/line-quiet") in ran
    stalls = {r["size"]: r["figures"] for r in runs if r["scenario"] == "stall"}
    assert sorted(stalls) == ["all", "unacked"]
    assert ("versus", "tcpchat/line") in ran
    for r in runs:
        figures = r["figures"]
        assert "error" not in figures, (r["scenario"], r["target"], figures["error"])
        if "skipped" in figures:
            # Only miniircd may be missing (and the comparison with it),
            # and only for want of a copy.
            assert r["target"] == "miniircd" or r["scenario"] == "versus", (r, figures)
            assert "miniircd" in figures["skipped"], figures
            assert "not available" in figures["skipped"], figures
            continue
        if r["scenario"] == "versus":
            # One run of each, alternated: the medians are those runs.
            assert figures["repeats"] == 1, figures
            assert figures["line_per_s"] > 0 and figures["miniircd_per_s"] > 0, figures
            assert figures["line_ratio"] == figures["line_per_s"] / figures["miniircd_per_s"]
        if r["scenario"] == "throughput":
            # tcpchat's variants twice, alternated (the tiny plan), the
            # baselines once; the run shown is one of those that ran.
            repeats = 2 if r["target"].startswith("tcpchat/") else 1
            assert figures["repeats"] == len(figures["cpu_runs"]) == repeats, figures
            assert figures["cpu_us_per_msg"] in figures["cpu_runs"], figures
        if r["scenario"] == "flood":
            assert figures["readers"] == 5, figures
            assert figures["flood_sent_per_s"] > 0, figures
            assert figures["peak_rss_mib"] > 0, figures
            continue
        if r["scenario"] == "stall":
            assert figures["users"] == 4, figures
            assert figures["sent"] > 0 and figures["peak_rss_mib"] > 0, figures
            continue
        if r["scenario"] == "restart":
            # The old server saved what the new one restored, and everyone came back.
            assert figures["state_messages"] == figures["restored_messages"] == 100, figures
            assert figures["resumed"] == 10 and figures["state_bytes"] > 0, figures
        # Every message sent was delivered and acknowledged, every /who answered.
        assert figures["sent_ok"], (r["scenario"], r["target"], figures)
    syslog = [r["figures"] for r in runs if r["target"] == "tcpchat/line-syslog"]
    # One datagram a message reached the bench's syslog socket.
    assert syslog and all(f["syslog_per_msg"] >= 1 for f in syslog), syslog


def test_the_core_driver_sends_and_logs_every_message(tmp_path):
    for extra in ([], ["--log"], ["--framed"]):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.core", "--rounds", "1"] + extra,
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        # 50 pairs, both ends, 200 messages each: the driver counts them.
        assert proc.stdout.startswith("20000 messages, "), proc.stdout
