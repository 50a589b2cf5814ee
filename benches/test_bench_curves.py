"""Scale curves (issue 12): how hyperbroker's figures move with body size, topic count and
subscriber-node count, measured against nats-py + nats-server in the same run.

a. body size 16 B .. 1 MiB, 1:1: msg/s, MB/s, CPU s per million delivered (all processes,
   nats-server included), plus this machine's memory-copy bandwidth (the per-byte bound);
b. ``publish()`` per call and ``publish_many`` per message against 1 / 1,000 / 10,000 topics
   with routes (round-robin publishing; target: flat within 20%, ratio 10k / 1 <= 1.2);
c. aggregate broadcast fan-out against 1 / 10 / 50 subscriber nodes (hyperbroker: Brokers over
   at most 5 processes; nats: one subscriber process each).

Every figure is the median of 3 rounds with ``--benchmark-enable``; the smoke run (the
default) sends tiny counts (and fewer topics / nats processes) and still asserts zero loss for
hyperbroker. Speed targets are reported and written to ``curves.json``, never asserted. See
benches/README.md, section "Scale curves and the ZeroMQ baseline".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import curves
import pytest
from baseline_nats import NatsServer, measure_nats_throughput, skip_reason
from bench_runs import median_of, pedantic, pick, rounds, smoke_tag, summary
from conftest import report
from hb_scenarios import measure_fanout
from hb_throughput import measure_hyperbroker_throughput
from nats_cpu import measure_nats_cpu

FIG = curves.FIGURES
#: the smoke run's topic count for each measured one (10,000 topics take ~15 s to set up)
SMOKE_TOPICS = {1: 1, 1_000: 100, 10_000: 2_000}


def _with_mb(s: dict[str, Any], size: int) -> dict[str, Any]:
    s["mb_per_s"] = s["rate"] * size / 1e6
    return s


# --- a. body size ----------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="curve-size")
@pytest.mark.parametrize("size", curves.SIZES, ids=[f"{s}B" for s in curves.SIZES])
def test_size_curve(benchmark: Any, measuring: bool, nats_server: NatsServer | None, size: int) -> None:
    n = curves.size_count(size, measuring)
    chunk = curves.size_chunk(size)
    hb = pedantic(benchmark, measuring, lambda: measure_hyperbroker_throughput(n, size, many=True, chunk=chunk))
    for r in hb:
        assert r["loss"] == 0 and r["received"] == n and r["dropped"] == 0, f"hyperbroker lost messages: {r}"
    entry: dict[str, Any] = {
        "messages": n,
        "hyperbroker": _with_mb(summary(hb, "cpu_s_per_million", "seconds"), size),
        "nats": None,
    }
    if nats_server is not None:
        nruns = [measure_nats_cpu(nats_server, n, size) for _ in range(rounds(measuring))]
        entry["nats"] = _with_mb(summary(nruns, "cpu_s_per_million", "seconds", "server_cpu"), size)
    FIG["size"][str(size)] = entry
    h, nt = entry["hyperbroker"], entry["nats"]
    nats_txt = (
        f"nats {nt['rate']:,.0f} msg/s {nt['mb_per_s']:,.1f} MB/s {nt['cpu_s_per_million']:.2f} CPU s/M"
        + (f" [nats LOST {nt['loss']}]" if nt["loss"] else "")
        if nt
        else "nats skipped"
    )
    report(
        f"[curve size] {size:>7} B x {n:,}: hyperbroker {h['rate']:,.0f} msg/s {h['mb_per_s']:,.1f} MB/s "
        f"{h['cpu_s_per_million']:.2f} CPU s/M; {nats_txt}{smoke_tag(measuring)}"
    )


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # it only reads `measuring`
def test_memcpy_bound(measuring: bool) -> None:
    for size in curves.MEMCPY_SIZES:
        runs = [curves.measure_memcpy(size, 0.25 if measuring else 0.02) for _ in range(rounds(measuring))]
        entry = {k: median_of(runs, k) for k in ("bytearray", "bytes_memoryview", "mb_per_s")}
        assert entry["mb_per_s"] > 0
        FIG["memcpy"][str(size)] = entry
        report(
            f"[curve size] memory copy of {size:,} B: bytearray(b) {entry['bytearray']:,.0f} MB/s, "
            f"bytes(memoryview) {entry['bytes_memoryview']:,.0f} MB/s{smoke_tag(measuring)}"
        )


# --- b. topics with routes -------------------------------------------------------------------


TOPIC_POINTS = [(t, False) for t in curves.TOPIC_COUNTS] + [(t, True) for t in curves.TOPIC_COUNTS_H2]


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="curve-topics")
@pytest.mark.parametrize(
    ("topics", "h2"), TOPIC_POINTS, ids=[f"{t}topics{'-h2' if h2 else ''}" for t, h2 in TOPIC_POINTS]
)
def test_topic_curve(benchmark: Any, measuring: bool, topics: int, h2: bool) -> None:
    topics = topics if measuring else SMOKE_TOPICS[topics]
    calls = pick(curves.TOPIC_CALLS, measuring)
    runs = pedantic(benchmark, measuring, lambda: curves.measure_topic_cost(topics, calls, h2=h2))
    for r in runs:
        assert r["loss"] == 0 and r["mismatched"] == 0 and r["dropped"] == 0, (
            f"hyperbroker lost or misrouted messages over {topics} topics: loss={r['loss']} "
            f"mismatched topics={r['mismatched']} dropped={r['dropped']}"
        )
    s = summary(
        runs,
        "us_per_publish",
        "us_per_publish_mean",
        "us_cpu_per_publish",
        "us_per_message_many",
        "us_cpu_per_message_many",
        "route_setup_seconds",
        "delivery_rate",
    )
    s.update(topics=topics, calls=calls, h2=h2)
    FIG["topics_h2" if h2 else "topics"][str(topics)] = s
    report(
        f"[curve topics{' h2' if h2 else ''}] {topics:>6,} topics: publish() {s['us_per_publish']:.2f} us/call "
        f"({s['us_cpu_per_publish']:.2f} us of the publishing thread's CPU), publish_many "
        f"{s['us_per_message_many']:.2f} us/msg ({s['us_cpu_per_message_many']:.2f} us CPU); delivered {s['delivery_rate']:,.0f} msg/s with the flushes "
        f"(routes installed in {s['route_setup_seconds']:.2f} s)"
        f"{smoke_tag(measuring)}"
    )


# --- c. fan-out by subscriber nodes ----------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="curve-fanout")
@pytest.mark.parametrize("nodes", curves.FANOUT_NODES, ids=[f"{k}nodes" for k in curves.FANOUT_NODES])
def test_fanout_curve(benchmark: Any, measuring: bool, nats_server: NatsServer | None, nodes: int) -> None:
    n = max(1, pick(curves.FANOUT_DELIVERIES, measuring) // nodes)
    procs = curves.fanout_processes(nodes)
    runs = pedantic(benchmark, measuring, lambda: measure_fanout(n, nodes, nodes, processes=procs))
    for r in runs:
        assert r["loss"] == 0 and r["duplicates"] == 0 and r["dropped"] == 0, (
            f"hyperbroker fan-out to {nodes} nodes lost messages: loss={r['loss']} dup={r['duplicates']} "
            f"dropped={r['dropped']}"
        )
        assert r["counts"] == [n] * nodes
    hb = summary(runs, "per_subscription_rate", "cpu_s_per_million", "seconds")
    hb.update(nodes=nodes, processes=procs)
    nats = None
    if nats_server is not None and nodes in pick(curves.NATS_FANOUT, measuring):
        nruns = [measure_nats_throughput(nats_server.url, n, 128, subscribers=nodes) for _ in range(rounds(measuring))]
        for r in nruns:  # what arrived, not what was sent: nats-py may lose some with many subscribers
            r["rate_per_subscriber"], r["rate"] = r["rate"], sum(r["received"]) / r["seconds"]
        nats = summary(nruns, "rate_per_subscriber", "seconds")
    FIG["fanout"][str(nodes)] = {"messages": n, "hyperbroker": hb, "nats": nats}
    nats_txt = (
        f"nats {nats['rate']:,.0f} deliveries/s" + (f" [nats LOST {nats['loss']}]" if nats["loss"] else "")
        if nats
        else "nats not run"
    )
    report(
        f"[curve fanout] {nodes:>2} nodes ({procs} processes) x {n:,} msgs: hyperbroker {hb['rate']:,.0f} "
        f"deliveries/s; {nats_txt}{smoke_tag(measuring)}"
    )


# --- report, curves.json, PNGs ---------------------------------------------------------------


def _complete(measuring: bool) -> dict[str, bool]:
    nats = skip_reason() is None
    size = all(
        (e := FIG["size"].get(str(s))) is not None and (not nats or e.get("nats") is not None) for s in curves.SIZES
    )
    topics = all(str(t if measuring else SMOKE_TOPICS[t]) in FIG["topics"] for t in curves.TOPIC_COUNTS)
    topics_h2 = all(str(t if measuring else SMOKE_TOPICS[t]) in FIG["topics_h2"] for t in curves.TOPIC_COUNTS_H2)
    fanout = all(
        (e := FIG["fanout"].get(str(k))) is not None
        and (not nats or k not in pick(curves.NATS_FANOUT, measuring) or e.get("nats") is not None)
        for k in curves.FANOUT_NODES
    )
    memcpy = all(str(s) in FIG["memcpy"] for s in curves.MEMCPY_SIZES)
    return {"size": size, "memcpy": memcpy, "topics": topics, "topics_h2": topics_h2, "fanout": fanout}


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # it only reads `measuring`
def test_curves_summary(measuring: bool, tmp_path: Path) -> None:
    """Report the targets; when measuring, merge the complete sections into curves.json and
    draw the PNGs; in the smoke run draw them to a temporary directory (exercises plot_curves)."""
    for line in curves.target_lines({k: v for k, v in FIG.items() if k != "zmq"}, smoke_tag(measuring)):
        report(line)
    for line in curves.save(_complete(measuring), measuring, curves.HERE if measuring else tmp_path):
        report(line)
