"""The ceiling (issue 12): what fraction of hyperbroker's own transport limit Python reaches.

Three paths, 1:1, two processes, measured in the same run, each round running all three in
turn (so machine noise hits them alike):

(a) ceiling: a Rust publisher loop (``Engine._bench_publish``) -> a no-op subscription answered
    in Rust (``Engine._bench_noop_subscription``): the same HTTP, batching, envelope decoding
    and per-envelope answers, no Python call per message on either side;
(b) the Rust publisher loop -> a Python handler (a plain counting ``def``);
(c) what users see: ``publish_many`` in chunks of 1000 -> the Python handler.

Reported: msg/s of each (median of 3 rounds with ``--benchmark-enable``), and the fractions
(b)/(a) and (c)/(a), at 128 B, 1 KiB and 16 KiB. Written to ``benches/ceiling.json`` when
measuring. Asserted: zero loss and no drops on every path; the target (the Python handler path
>= 50 % of the ceiling at 128 B) is reported as met or MISSED, never asserted. Smoke mode (the
default ``--benchmark-disable``) runs each path once with tiny counts.
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
from pathlib import Path
from typing import Any

import pytest
from conftest import report
from hb_throughput import measure_hyperbroker_throughput

CEILING_JSON = Path(__file__).resolve().parent / "ceiling.json"

#: (measuring, smoke) message counts per body size
N = {128: (300_000, 3_000), 1024: (300_000, 3_000), 16384: (30_000, 500)}
#: the target of issue 12: (b) / (a) at 128 B
TARGET = 0.5

PATHS = {
    "ceiling": {"rust_publisher": True, "noop_subscriber": True},
    "rust_pub_python_handler": {"rust_publisher": True},
    "python_pub_python_handler": {"many": True},
}


def _write(size: int, figures: dict[str, Any]) -> None:
    """Merge one size's figures into ceiling.json (other sizes from earlier runs stay)."""
    try:
        data = json.loads(CEILING_JSON.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault("sizes", {})[str(size)] = figures
    data["meta"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "paths": {
            "ceiling": "Rust publisher loop -> Rust no-op subscription",
            "rust_pub_python_handler": "Rust publisher loop -> Python handler",
            "python_pub_python_handler": "publish_many (chunks of 1000) -> Python handler",
        },
    }
    CEILING_JSON.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.mark.timeout(900)
@pytest.mark.benchmark(group="ceiling")
@pytest.mark.parametrize("size", sorted(N))
def test_ceiling(benchmark: Any, measuring: bool, size: int) -> None:
    n = N[size][0 if measuring else 1]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}

    def one_round() -> None:
        for name, kw in PATHS.items():
            runs[name].append(measure_hyperbroker_throughput(n, size, **kw))

    benchmark.pedantic(one_round, rounds=3 if measuring else 1, iterations=1)
    for name, rs in runs.items():
        assert rs, "the benchmark did not run"
        for r in rs:
            assert r["loss"] == 0 and r["dropped"] == 0, f"{name} lost messages: {r}"
    rate = {name: float(statistics.median(r["rate"] for r in rs)) for name, rs in runs.items()}
    ceiling = rate["ceiling"]
    figures: dict[str, Any] = {
        name: {
            "rate": rate[name],
            "rates": [r["rate"] for r in rs],
            "messages": n,
            "rounds": len(rs),
            "loss": sum(r["loss"] for r in rs),
            "cpu_s_per_million": float(statistics.median(r["cpu_s_per_million"] for r in rs)),
        }
        for name, rs in runs.items()
    }
    figures["fraction_rust_pub_python_handler"] = rate["rust_pub_python_handler"] / ceiling
    figures["fraction_python_pub_python_handler"] = rate["python_pub_python_handler"] / ceiling
    benchmark.extra_info.update({f"{k}_rate": v for k, v in rate.items()})
    smoke = "" if measuring else " [smoke sizes]"
    b, c = figures["fraction_rust_pub_python_handler"], figures["fraction_python_pub_python_handler"]
    met = "" if size != 128 else f"; target (b)/(a) >= {TARGET:.0%}: {'met' if b >= TARGET else 'MISSED'}"
    report(
        f"[ceiling] {size} B, median of {len(runs['ceiling'])}: (a) Rust->Rust no-op {ceiling:,.0f} msg/s; "
        f"(b) Rust pub->Python handler {rate['rust_pub_python_handler']:,.0f} ({b:.0%} of a); "
        f"(c) publish_many->Python handler {rate['python_pub_python_handler']:,.0f} ({c:.0%} of a){met}{smoke}"
    )
    if measuring:
        _write(size, figures)
