"""The pyzmq baseline (issue 12): hyperbroker 1:1 against ZeroMQ PUSH/PULL and PUB/SUB between
two processes, at 128 B, 1 KiB and 16 KiB, measured in the same run.

hyperbroker: the suite's 1:1 path (``publish_many`` + ``flush``: every delivery acknowledged
after the handler ran). zmq: ``sock.recv()`` once per message, high-water marks off
(baseline_zmq.py). Target (reported and written to curves.json, never asserted): hyperbroker /
zmq PUSH/PULL >= 1.0 at 128 B and 16 KiB. Asserted: zero loss for hyperbroker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import curves
import pytest
from baseline_zmq import PATTERNS, measure_zmq_throughput
from bench_runs import pedantic, pick, rounds, smoke_tag, summary
from conftest import report
from hb_throughput import measure_hyperbroker_throughput

FIG = curves.FIGURES


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="zmq-1to1")
@pytest.mark.parametrize("size", curves.ZMQ_SIZES, ids=[f"{s}B" for s in curves.ZMQ_SIZES])
def test_zmq_vs_hyperbroker(benchmark: Any, measuring: bool, size: int) -> None:
    n = pick(curves.ZMQ_COUNTS[size], measuring)
    hb = pedantic(benchmark, measuring, lambda: measure_hyperbroker_throughput(n, size, many=True))
    for r in hb:
        assert r["loss"] == 0 and r["received"] == n and r["dropped"] == 0, f"hyperbroker lost messages: {r}"
    entry: dict[str, Any] = {"messages": n, "hyperbroker": summary(hb, "seconds")}
    for pattern in PATTERNS:
        zruns = [measure_zmq_throughput(pattern, n, size) for _ in range(rounds(measuring))]
        for r in zruns:
            assert r["received"] > 0, f"the zmq {pattern} baseline received nothing: {r}"
        entry[pattern] = summary(zruns, "seconds", "send_seconds")
    for k in ("hyperbroker", *PATTERNS):
        entry[k]["mb_per_s"] = entry[k]["rate"] * size / 1e6
    entry["hb_over_push_pull"] = entry["hyperbroker"]["rate"] / entry["push_pull"]["rate"]
    entry["hb_over_pub_sub"] = entry["hyperbroker"]["rate"] / entry["pub_sub"]["rate"]
    FIG["zmq"][str(size)] = entry
    benchmark.extra_info.update(
        hyperbroker_rate=entry["hyperbroker"]["rate"],
        push_pull_rate=entry["push_pull"]["rate"],
        pub_sub_rate=entry["pub_sub"]["rate"],
        hb_over_push_pull=entry["hb_over_push_pull"],
    )
    losses = "".join(f" [zmq {p} LOST {entry[p]['loss']}]" for p in PATTERNS if entry[p]["loss"])
    report(
        f"[zmq] 1:1 {size:>5} B x {n:,}: hyperbroker {entry['hyperbroker']['rate']:,.0f} msg/s; zmq PUSH/PULL "
        f"{entry['push_pull']['rate']:,.0f} ({entry['hb_over_push_pull']:.2f}x), PUB/SUB "
        f"{entry['pub_sub']['rate']:,.0f} ({entry['hb_over_pub_sub']:.2f}x){losses}{smoke_tag(measuring)}"
    )


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # it only reads `measuring`
def test_zmq_summary(measuring: bool, tmp_path: Path) -> None:
    """Report the hb / zmq targets; when measuring, merge the "zmq" section into curves.json."""
    for line in curves.target_lines({"zmq": FIG["zmq"]}, smoke_tag(measuring)):
        report(line)
    complete = all(str(s) in FIG["zmq"] for s in curves.ZMQ_SIZES)
    for line in curves.save({"zmq": complete}, measuring, curves.HERE if measuring else tmp_path):
        report(line)
