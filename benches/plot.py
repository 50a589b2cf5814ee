"""Draw ``throughput.png`` from ``results.json``: 1:1 throughput by message size.

    python benches/plot.py [results.json] [throughput.png]

Throughput (messages per second, log scale) against the body size (log scale), one line per
implementation: hyperbroker, nats-py + nats-server, aiohttp. Reads the ``throughput_1to1``
section written by test_bench_suite.py: ``{size: {impl: {"rate": median msg/s, ...}}}``.
Needs matplotlib (``pip install '.[bench]'``); uses the non-interactive Agg backend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results.json"
DEFAULT_OUT = HERE / "throughput.png"

#: (key in results.json, legend label, matplotlib style)
SERIES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("hyperbroker", "hyperbroker (publish_many, batching)", {"marker": "o", "color": "tab:blue"}),
    ("nats", "nats-py + nats-server", {"marker": "s", "color": "tab:green"}),
    ("aiohttp", "aiohttp baseline (16 POSTs in flight)", {"marker": "^", "color": "tab:red"}),
)


def size_label(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def plot_throughput(results: dict[str, Any], out: str | Path = DEFAULT_OUT) -> Path:
    """Write the throughput-by-size chart of ``results`` to ``out`` (PNG). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results.get("throughput_1to1") or {}
    sizes = sorted(int(s) for s in table)
    if not sizes:
        raise ValueError("results have no 'throughput_1to1' figures to plot")
    meta = results.get("meta") or {}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label, style in SERIES:
        xs, ys = [], []
        for s in sizes:
            entry = (table.get(str(s)) or {}).get(key)
            if entry and entry.get("rate"):
                xs.append(s)
                ys.append(float(entry["rate"]))
        if not xs:
            continue
        ax.plot(xs, ys, label=label, linewidth=2, **style)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([size_label(s) for s in sizes])
    ax.set_xlabel("message body size")
    ax.set_ylabel("messages / second (log scale)")
    where = f"{meta.get('cpus', '?')} CPUs" if meta else ""
    ax.set_title(f"1:1 throughput, two processes on 127.0.0.1 ({where}; median of {meta.get('rounds', '?')} rounds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_RESULTS
    out = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT
    results = json.loads(src.read_text())
    print(plot_throughput(results, out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
