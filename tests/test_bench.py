"""Smoke test of the benchmark harness (bench/): it runs, at tiny sizes.

Nothing here times anything: it checks that every scenario ran against
every target, that the table has its rows, and that the runs delivered and
acknowledged the messages they sent.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("tcpchat/line", "tcpchat/framed", "relay", "asyncio", "threads")

# bench/ lives in the checkout only: an sdist (and the RPM built from it)
# ships the tests without it.
pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(REPO, "bench", "__main__.py")),
    reason="bench/ is not in this tree (an sdist)",
)


def test_tiny_benchmark_runs_everything(tmp_path):
    raw = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--tiny", "--json", str(raw)],
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
        "vs relay", "vs asyncio", "vs threads", "Targets",
    ):
        assert row in table, row
    for target in TARGETS:
        assert target in table.splitlines()[2], target

    runs = json.loads(raw.read_text())["results"]
    ran = {(r["scenario"], r["target"]) for r in runs}
    for target in TARGETS:
        assert ("throughput", target) in ran
        assert ("latency", target) in ran
    for target in TARGETS[:2]:
        assert ("fanout", target) in ran
        assert ("connections", target) in ran
    for r in runs:
        figures = r["figures"]
        assert "error" not in figures, (r["scenario"], r["target"], figures["error"])
        # Every message sent was delivered and acknowledged, every /who answered.
        assert figures["sent_ok"], (r["scenario"], r["target"], figures)
