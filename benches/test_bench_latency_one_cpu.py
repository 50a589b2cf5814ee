"""Latency at 1k msg/s with every process on one CPU: a diagnosis beside scenario 4, not a target.

Scenario 4 (test_bench_suite.py) measures one-way latency as a user's processes would run:
unpinned, on the 2-vCPU VM. Its tail is set by wake-ups that cross to the other vCPU and come
back a millisecond or more late (benches/README.md, section 4). This bench runs the same rounds
(hyperbroker's round i, then nats' round i, 1,000 msg/s for 5 s each) with every thread of the
publisher, the subscriber process and nats-server on one vCPU (``cpu_affinity.one_cpu``), so
that no wake-up on a message's path has to reach another vCPU. The two tails side by side then
show how much of the gap to nats is the brokers' code and how much the crossings.

At 1,000 msg/s both brokers use a few percent of one CPU, so one CPU is not a bottleneck here.
Reported, never asserted (only zero loss and that every affinity is put back). When measuring,
the figures go to ``benches/latency_one_cpu.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from baseline_nats import NatsServer, measure_nats_latency
from bench_runs import finite as _finite
from bench_runs import median_of as _med
from bench_runs import pedantic as _pedantic
from bench_runs import pick as _n
from bench_runs import smoke_tag as _smoke
from conftest import report
from cpu_affinity import one_cpu, thread_masks
from hb_scenarios import measure_latency

RATE = 1000
SECONDS = (5.0, 1.0)  # (measuring, smoke), as scenario 4
RESULTS_JSON = Path(__file__).resolve().parent / "latency_one_cpu.json"


def test_one_cpu_pins_every_thread_and_puts_them_back() -> None:
    """A child with four threads: inside the block each is on the one CPU; after it, all have
    the mask they started with, the thread started inside the block included."""
    script = (
        "import sys, threading, time\n"
        "ev = threading.Event()\n"
        "for _ in range(3): threading.Thread(target=ev.wait, daemon=True).start()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "threading.Thread(target=ev.wait, daemon=True).start()\n"
        "print('more', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        start = os.sched_getaffinity(child.pid)
        mine = thread_masks(os.getpid())
        with one_cpu([child.pid, os.getpid()]) as cpu:
            masks = thread_masks(child.pid)
            assert len(masks) == 4 and all(m == {cpu} for m in masks.values()), masks
            assert all(m == {cpu} for m in thread_masks(os.getpid()).values())
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "more"
            assert len(thread_masks(child.pid)) == 5
        after = thread_masks(child.pid)
        assert len(after) == 5 and all(m == start for m in after.values()), after
        assert all(thread_masks(os.getpid()).get(t, m) == m for t, m in mine.items())
    finally:
        child.kill()
        child.wait(timeout=10)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _med(runs, k) for k in ("p50_us", "p99_us", "p999_us", "max_us")}
    out.update(
        p99_us_rounds=[r["p99_us"] for r in runs],
        p999_us_rounds=[r["p999_us"] for r in runs],
        over_500us_rounds=[sum(1 for v in r["latencies_us"] if v > 500) for r in runs],
        loss=sum(int(r["loss"]) for r in runs),
        rounds=len(runs),
    )
    return out


def _worst(hb: dict[str, Any], nats: dict[str, Any], key: str) -> float:
    return max(h / n for h, n in zip(hb[f"{key}_rounds"], nats[f"{key}_rounds"], strict=True))


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="latency-one-cpu")
def test_latency_one_cpu(benchmark: Any, measuring: bool, nats_server: NatsServer | None) -> None:
    seconds = _n(SECONDS, measuring)
    pids = [os.getpid()]
    if nats_server is not None and nats_server.proc is not None:
        pids.append(nats_server.proc.pid)
    before = {pid: thread_masks(pid) for pid in pids}
    nruns: list[dict[str, Any]] = []

    def one_round() -> dict[str, Any]:
        with one_cpu(pids):
            r = measure_latency(RATE, seconds)
            if nats_server is not None:
                nruns.append(measure_nats_latency(nats_server.url, RATE, seconds))
        return r

    runs = _pedantic(benchmark, measuring, one_round)
    for pid, masks in before.items():
        start = next(iter(masks.values()))
        assert all(m == start for m in thread_masks(pid).values()), f"process {pid} was left pinned"
    assert all(r["loss"] == 0 for r in runs), f"hyperbroker lost messages: {[r['loss'] for r in runs]}"
    hb = _summary(runs)
    nats = _summary(nruns) if nruns else None

    def rounds(d: dict[str, Any]) -> str:
        return ", ".join(
            f"{a:.0f}/{b:.0f} ({c})"
            for a, b, c in zip(d["p99_us_rounds"], d["p999_us_rounds"], d["over_500us_rounds"], strict=True)
        )

    text = f"hyperbroker {rounds(hb)}" + (f"; nats {rounds(nats)}" if nats else "; nats skipped")
    report(
        f"[4b] latency at {RATE} msg/s x {seconds:g} s, every process on one CPU (diagnosis, not the target): "
        f"p99/p99.9 us (messages over 500 us) per round: {text}{_smoke(measuring)}"
    )
    if nats:
        report(
            f"[4b] one CPU, worst round hyperbroker / nats: p99 {_worst(hb, nats, 'p99_us'):.2f}x, "
            f"p99.9 {_worst(hb, nats, 'p999_us'):.2f}x"
        )
    if measuring:
        data = {
            "meta": {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "rate_per_s": RATE,
                "seconds": seconds,
                "pinned": "every thread of the publisher, subscriber and nats-server processes on one CPU",
            },
            "hyperbroker": hb,
            "nats": nats,
        }
        RESULTS_JSON.write_text(json.dumps(_finite(data), indent=2, sort_keys=True) + "\n")
