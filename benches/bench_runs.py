"""How the benches take and keep a figure: smoke or measured counts, rounds under
pytest-benchmark, medians, the machine description and strict JSON.

Shared by test_bench_suite.py (results.json) and the scale curves (curves.json). Imported as a
top-level module (``import bench_runs``): the benches' conftest puts ``benches/`` on
``sys.path``.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baseline_nats import nats_server_path

__all__ = ["finite", "get_path", "machine", "median_of", "pedantic", "pick", "rounds", "smoke_tag", "summary"]


def pick(table: tuple[Any, Any], measuring: bool) -> Any:
    """``table`` is (measured value, smoke value)."""
    return table[0] if measuring else table[1]


def rounds(measuring: bool) -> int:
    """Every measured figure is the median of 3 rounds; the smoke run does one."""
    return 3 if measuring else 1


def smoke_tag(measuring: bool) -> str:
    return "" if measuring else " [smoke sizes]"


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def summary(runs: list[dict[str, Any]], *keys: str) -> dict[str, Any]:
    """Median of ``rate`` (and of ``keys``) over the rounds, the per-round rates, total loss."""
    out: dict[str, Any] = {
        "rate": median_of(runs, "rate"),
        "rates": [r["rate"] for r in runs],
        "messages": runs[0].get("messages"),
        "rounds": len(runs),
        "loss": sum(int(r.get("loss", 0)) for r in runs),
    }
    for k in keys:
        out[k] = median_of(runs, k)
    return out


def pedantic(benchmark: Any, measuring: bool, fn: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``fn`` R times under pytest-benchmark (once when benchmarks are disabled)."""
    out: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: out.append(fn()), rounds=rounds(measuring), iterations=1)
    assert out, "the benchmark did not run"
    return out


def machine(measuring: bool) -> dict[str, Any]:
    """Date, CPUs, platform, versions: the ``meta`` section of a figures file."""
    try:
        import hyperbroker

        version = hyperbroker.__version__
    except Exception:  # pragma: no cover
        version = "?"
    nats_version = None
    path = nats_server_path()
    if path:
        try:
            nats_version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
        except Exception:
            pass
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "measuring": measuring,
        "rounds": rounds(measuring),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "hyperbroker": version,
        "nats_server": nats_version,
    }


def get_path(d: Any, *path: str) -> Any:
    """``d[path[0]][path[1]]...``, or None where a level is missing (or None)."""
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def finite(x: Any) -> Any:
    """Figures files are strict JSON: non-finite floats (an inf fairness) become null."""
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x
