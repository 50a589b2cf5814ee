"""Draw the scale curves of ``curves.json``: ``curve_size.png``, ``curve_topics.png``,
``curve_fanout.png``.

    python benches/plot_curves.py [curves.json] [output directory]

* size: hyperbroker 1:1 vs nats-py 1:1 by body size (16 B .. 1 MiB): msg/s, MB/s (with this
  machine's memory-copy bandwidth as the per-byte bound) and CPU seconds per million delivered;
* topics: ``publish()`` per call and ``publish_many`` per message (µs) against the number of
  routed topics;
* fanout: aggregate deliveries/s against subscriber nodes, hyperbroker vs nats-py.

A figure whose section is missing from the file is not drawn. Needs matplotlib
(``pip install '.[bench]'``); uses the non-interactive Agg backend.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from plot import size_label

HERE = Path(__file__).resolve().parent

HB = {"label": "hyperbroker", "marker": "o", "color": "tab:blue"}
NATS = {"label": "nats-py + nats-server", "marker": "s", "color": "tab:green"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(table: dict[str, Any], impl: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for x in sorted(table, key=int):
        v = (table[x].get(impl) or {}).get(key)
        if v is not None:
            xs.append(int(x))
            ys.append(float(v))
    return xs, ys


def _log_x(ax: Any, xs: list[int], labels: list[str], xlabel: str, ylabel: str, base: int = 10) -> None:
    """Log x axis with a tick per point, labels, grid."""
    ax.set_xscale("log", base=base)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def _label_points(ax: Any, xs: list[int], ys: list[float], spec: str) -> None:
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(format(y, spec), (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)


def _save(plt: Any, fig: Any, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _subtitle(data: dict[str, Any]) -> str:
    m = data.get("meta") or {}
    return f"{m.get('cpus', '?')} CPUs, median of {m.get('rounds', '?')} rounds"


def plot_size(data: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    table = data["size"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5), dpi=100)
    panels = (("rate", "messages / s"), ("mb_per_s", "MB / s (10^6 bytes)"), ("cpu_s_per_million", "CPU s per million"))
    sizes: list[int] = []
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        for impl, style in (("hyperbroker", HB), ("nats", NATS)):
            xs, ys = _series(table, impl, key)
            if xs:
                ax.plot(xs, ys, linewidth=2, **style)
                sizes = sorted(set(sizes) | set(xs))
        if key == "mb_per_s":
            copies = sorted((data.get("memcpy") or {}).items(), key=lambda kv: int(kv[0]))
            for (size, entry), style in zip(copies, ("--", ":"), strict=False):
                ax.axhline(
                    entry["mb_per_s"],
                    linestyle=style,
                    color="grey",
                    linewidth=1.5,
                    label=f"memory copy of {size_label(int(size))}: {entry['mb_per_s']:,.0f} MB/s",
                )
            ax.legend(loc="lower right", fontsize=7)
        _log_x(ax, sizes, [size_label(s) for s in sizes], "message body size", ylabel, base=2)
        ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=45)
    axes[0].legend(loc="lower left")
    fig.suptitle(f"1:1 by body size, two processes on 127.0.0.1 (CPU: all processes) — {_subtitle(data)}")
    return _save(plt, fig, out)


def plot_topics(data: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    table = data["topics"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    xs = sorted(int(t) for t in table)
    for key, label, marker in (
        ("us_per_publish", "publish() per call (wall)", "o"),
        ("us_cpu_per_publish", "publish() per call (publishing thread's CPU)", "s"),
        ("us_per_message_many", "publish_many() per message (wall)", "^"),
        ("us_cpu_per_message_many", "publish_many() per message (publishing thread's CPU)", "v"),
    ):
        if any(key not in table[str(t)] for t in xs):
            continue  # figures of an older run
        ys = [float(table[str(t)][key]) for t in xs]
        ax.plot(xs, ys, marker=marker, linewidth=2, label=label)
        _label_points(ax, xs, ys, ".2f")
    _log_x(ax, xs, [f"{x:,}" for x in xs], "topics with routes (round-robin publishing)", "µs")
    h2 = data.get("topics_h2") or {}
    hx = sorted(int(t) for t in h2 if "us_per_publish" in h2[t])
    if hx:  # the same publisher with subscriber nodes announcing HTTP/2
        ys = [float(h2[str(t)]["us_per_publish"]) for t in hx]
        ax.plot(hx, ys, marker="D", linestyle="--", linewidth=2, label="publish() per call (wall), nodes with h2")
        _label_points(ax, hx, ys, ".2f")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Publish cost by number of routed topics, 128 B — {_subtitle(data)}")
    ax.legend()
    return _save(plt, fig, out)


def plot_fanout(data: dict[str, Any], out: Path) -> Path:
    plt = _plt()
    table = data["fanout"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for impl, style in (("hyperbroker", HB), ("nats", NATS)):
        xs, ys = _series(table, impl, "rate")
        if xs:
            ax.plot(xs, ys, linewidth=2, **style)
            _label_points(ax, xs, ys, ",.0f")
    xs = sorted(int(k) for k in table)
    _log_x(
        ax,
        xs,
        [str(x) for x in xs],
        "subscriber nodes (nats: subscriber processes)",
        "deliveries / s, all subscribers together",
    )
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:,.0f}")
    ax.set_title(f"Broadcast fan-out, 128 B — {_subtitle(data)}")
    ax.legend()
    return _save(plt, fig, out)


def draw_all(data: dict[str, Any], out_dir: str | Path = HERE) -> list[Path]:
    """Draw every figure whose section is in ``data`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    drawn = []
    for section, name, fn in (
        ("size", "curve_size.png", plot_size),
        ("topics", "curve_topics.png", plot_topics),
        ("fanout", "curve_fanout.png", plot_fanout),
    ):
        if data.get(section):
            drawn.append(fn(data, out_dir / name))
    return drawn


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else HERE / "curves.json"
    out_dir = Path(argv[2]) if len(argv) > 2 else HERE
    for p in draw_all(json.loads(src.read_text()), out_dir):
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv))
