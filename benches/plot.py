"""Draw ``throughput.png`` from ``results.json``: 1:1 throughput by message size.

    python benches/plot.py [results.json] [throughput.png]
    python benches/plot.py --markdown [results.json]     # the README's "Last figures" tables

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

#: (key in results.json, legend label, matplotlib style, vertical offset of the value labels)
SERIES: tuple[tuple[str, str, dict[str, Any], int], ...] = (
    ("hyperbroker", "hyperbroker (publish_many, batching)", {"marker": "o", "color": "tab:blue"}, 7),
    ("nats", "nats-py + nats-server", {"marker": "s", "color": "tab:green"}, -13),
    ("aiohttp", "aiohttp baseline (16 POSTs in flight)", {"marker": "^", "color": "tab:red"}, -13),
)


def size_label(size: int) -> str:
    if size >= 1024 * 1024 and size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
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
    for key, label, style, dy in SERIES:
        xs, ys = [], []
        for s in sizes:
            entry = (table.get(str(s)) or {}).get(key)
            if entry and entry.get("rate"):
                xs.append(s)
                ys.append(float(entry["rate"]))
        if not xs:
            continue
        ax.plot(xs, ys, label=label, linewidth=2, **style)
        for x, y in zip(xs, ys, strict=False):
            ax.annotate(f"{y:,.0f}", (x, y), textcoords="offset points", xytext=(0, dy), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([size_label(s) for s in sizes])
    ax.set_xlabel("message body size")
    ax.set_ylabel("messages / second (log scale)")
    where = f"{meta.get('cpus', '?')} CPUs" if meta else ""
    ax.set_title(f"1:1 throughput, two processes on 127.0.0.1 ({where}; median of {meta.get('rounds', '?')} rounds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def _r(x: Any) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _rounds(f: dict[str, Any]) -> str:
    rates = f.get("rates") or []
    return ", ".join(f"{r / 1000:,.0f}" for r in rates) if rates else "n/a"


def _x(num: Any, den: Any) -> str:
    return "n/a" if num is None or not den else f"{num / den:.2f}x"


def markdown(results: dict[str, Any]) -> str:
    """The figures of ``results`` as Markdown tables (what benches/README.md shows)."""
    m = results.get("meta") or {}
    lines = [
        f"Measured {m.get('date', '?')} on {m.get('cpus', '?')} CPUs ({m.get('cpu_model') or '?'}), "
        f"{m.get('platform', '?')}, Python {m.get('python', '?')}, {m.get('nats_server') or 'no nats-server'}; "
        f"median of {m.get('rounds', '?')} rounds.",
        "",
        "**1. 1:1 throughput (two processes), msg/s**",
        "",
        "| body | hyperbroker | nats | aiohttp | hb / nats | hb / aiohttp | hb CPU s per M | rounds: hb / nats (k msg/s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size in sorted((results.get("throughput_1to1") or {}), key=int):
        e = results["throughput_1to1"][size]
        hb, nats, aio = (e.get(k) or {} for k in ("hyperbroker", "nats", "aiohttp"))
        cpu = hb.get("cpu_s_per_million")
        lines.append(
            f"| {size_label(int(size))} | {_r(hb.get('rate'))} | {_r(nats.get('rate'))} | {_r(aio.get('rate'))} | "
            f"{_x(hb.get('rate'), nats.get('rate'))} | {_x(hb.get('rate'), aio.get('rate'))} | "
            f"{'n/a' if cpu is None else f'{cpu:.2f}'} | {_rounds(hb)} / {_rounds(nats)} |"
        )
    lines += [
        "",
        "**2. Broadcast fan-out, 128 B: aggregate deliveries/s**",
        "",
        "| publisher → | deliveries/s (aggregate) | per subscription msg/s | CPU s per M deliveries |",
        "|---|---:|---:|---:|",
    ]
    for f in (results.get("fanout") or {}).values():
        lines.append(
            f"| hyperbroker: {f['subscriptions']} subscription(s) on {f['nodes']} node(s) | {_r(f['rate'])} | "
            f"{_r(f['per_subscription_rate'])} | {f['cpu_s_per_million']:.2f} |"
        )
    for f in (results.get("fanout_nats") or {}).values():
        lines.append(
            f"| nats: {f['subscribers']} subscriber process(es) | {_r(f['rate'])} | {_r(f['rate_per_subscriber'])} | n/a |"
        )
    qg = results.get("queue_group") or {}
    if qg:
        lines += [
            "",
            f"**3. Queue group of {qg.get('members')} processes, 128 B**",
            "",
            "| | msg/s | fairness max/min | per member |",
            "|---|---:|---:|---|",
        ]
        for name in ("hyperbroker", "nats"):
            f = qg.get(name)
            if f:
                fair = f.get("fairness")
                lines.append(
                    f"| {name} | {_r(f['rate'])} | {'n/a' if fair is None else f'{fair:.3f}'} | "
                    f"{', '.join(f'{c:,}' for c in f.get('counts') or [])} |"
                )
    lat = results.get("latency") or {}
    if lat:
        lines += [
            "",
            f"**4. One-way latency at {lat.get('rate_per_s'):,} msg/s, 128 B, {lat.get('seconds'):g} s per round (µs)**",
            "",
            "| | p50 | p99 | p99.9 | mean | max |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in ("hyperbroker", "nats", "machine_jitter"):
            f = lat.get(name)
            if f:
                mean = f"{f['mean_us']:.0f}" if "mean_us" in f else "n/a"
                label = "control: one cross-process wake-up, no broker" if name == "machine_jitter" else name
                lines.append(
                    f"| {label} | {f['p50_us']:.0f} | {f['p99_us']:.0f} | {f['p999_us']:.0f} | {mean} | "
                    f"{f['max_us']:.0f} |"
                )
    cpu = results.get("cpu") or {}
    if cpu:
        lines += [
            "",
            "**5. CPU seconds per million messages, 1:1 128 B (all processes)**",
            "",
            "| | CPU s per M | of which | msg/s in that run |",
            "|---|---:|---|---:|",
        ]
        hb, nats = cpu.get("hyperbroker"), cpu.get("nats")
        if hb:
            lines.append(
                f"| hyperbroker | {hb['cpu_s_per_million']:.2f} | publisher {hb['publisher_cpu']:.2f} s, "
                f"subscriber {hb['subscriber_cpu']:.2f} s for {hb['messages']:,} | {_r(hb['rate'])} |"
            )
        if nats:
            lines.append(
                f"| nats | {nats['cpu_s_per_million']:.2f} | nats-server {nats['server_cpu']:.2f} s, publisher "
                f"{nats['publisher_cpu']:.2f} s, subscriber {nats['subscriber_cpu']:.2f} s for {nats['messages']:,} | "
                f"{_r(nats['rate'])} |"
            )
    targets = results.get("targets") or []
    if targets:
        lines += ["", "**Targets**", "", "| target | measured | met |", "|---|---:|---|"]
        for t in targets:
            v = t.get("value")
            met = "not measured" if t.get("met") is None else ("met" if t["met"] else "**MISSED**")
            lines.append(
                f"| {t['target']} ({t['kind']} {t['threshold']:g}) | {'n/a' if v is None else f'{v:.2f}x'} | {met} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "--markdown":
        src = Path(argv[2]) if len(argv) > 2 else DEFAULT_RESULTS
        print(markdown(json.loads(src.read_text())), end="")
        return 0
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_RESULTS
    out = Path(argv[2]) if len(argv) > 2 else DEFAULT_OUT
    results = json.loads(src.read_text())
    print(plot_throughput(results, out))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
