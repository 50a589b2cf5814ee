"""The benchmark suite (issue 5): hyperbroker against nats-py + nats-server and aiohttp.

Scenarios (all on 127.0.0.1, every subscriber a separate spawned process):

1. 1:1 throughput at 16 B, 128 B, 1 KiB, 16 KiB: hyperbroker (publish_many) vs nats vs aiohttp.
2. Broadcast fan-out: 1, 10, 100 subscriptions over 1 and 10 subscriber processes (aggregate
   deliveries per second) vs nats with 1 and 10 subscriber processes.
3. Queue group of 4 processes: rate and fairness (max/min) vs a nats queue group of 4.
4. One-way latency p50/p99/p99.9 at a fixed 1000 msg/s, hyperbroker vs nats.
5. CPU seconds per million messages delivered, 1:1 128 B (all processes; for nats the server
   too).

Targets (reported as met or MISSED, not asserted): 1:1 128 B >= 2x nats and >= 10x aiohttp;
fan-out to 10 nodes aggregate >= 1.5x nats with 10 subscribers; latency p99 <= nats p99.
Asserted: zero loss on every hyperbroker figure (baseline loss is reported).

CI runs this file once with small sizes (``--benchmark-disable`` is in addopts; well under
90 s); ``python -m pytest benches --benchmark-enable`` measures (3 rounds, large sizes) and
writes ``benches/results.json`` and ``benches/throughput.png``. See benches/README.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from baseline_aiohttp import measure_aiohttp_throughput
from baseline_nats import (
    NatsServer,
    measure_nats_latency,
    measure_nats_queue_group,
    measure_nats_throughput,
    nats_server_path,
    skip_reason,
)
from conftest import report
from hb_scenarios import measure_fanout, measure_latency, measure_queue_group
from hb_throughput import measure_hyperbroker_throughput
from nats_cpu import measure_nats_cpu

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results.json"
THROUGHPUT_PNG = HERE / "throughput.png"

SIZES = (16, 128, 1024, 16 * 1024)
FANOUT = ((1, 1), (10, 1), (10, 10), (100, 1), (100, 10))  # (subscriptions, nodes)
NATS_FANOUT = (1, 10)  # subscriber processes
QG_MEMBERS = 4
LATENCY_RATE = 1000

# Message counts: (measuring, smoke). The smoke sizes only prove that everything runs.
N_1TO1 = {16: (300_000, 10_000), 128: (300_000, 10_000), 1024: (300_000, 10_000), 16384: (30_000, 2_000)}
N_1TO1_AIOHTTP = {16: (20_000, 1_000), 128: (20_000, 1_000), 1024: (20_000, 1_000), 16384: (10_000, 500)}
FANOUT_DELIVERIES = (1_000_000, 20_000)  # n * subscriptions for hyperbroker's fan-out
NATS_FANOUT_N = {1: (300_000, 10_000), 10: (100_000, 2_000)}  # n per subscriber count
N_QG = (300_000, 10_000)
LATENCY_SECONDS = (5.0, 1.0)
N_CPU = (300_000, 10_000)

#: Every figure of the run, written to results.json when measuring.
FIGURES: dict[str, Any] = {
    "throughput_1to1": {},
    "fanout": {},
    "fanout_nats": {},
    "queue_group": {},
    "latency": {},
    "cpu": {},
}


def _n(table: tuple[int, int] | tuple[float, float], measuring: bool) -> Any:
    return table[0] if measuring else table[1]


def _rounds(measuring: bool) -> int:
    return 3 if measuring else 1


def _smoke(measuring: bool) -> str:
    return "" if measuring else " [smoke sizes]"


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(float(r[key]) for r in runs))


def _summary(runs: list[dict[str, Any]], *keys: str) -> dict[str, Any]:
    """Median of ``rate`` (and of ``keys``) over the rounds, the per-round rates, total loss."""
    out: dict[str, Any] = {
        "rate": _med(runs, "rate"),
        "rates": [r["rate"] for r in runs],
        "messages": runs[0].get("messages"),
        "rounds": len(runs),
        "loss": sum(int(r.get("loss", 0)) for r in runs),
    }
    for k in keys:
        out[k] = _med(runs, k)
    return out


def _pedantic(benchmark: Any, measuring: bool, fn: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``fn`` R times under pytest-benchmark (once when benchmarks are disabled)."""
    out: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: out.append(fn()), rounds=_rounds(measuring), iterations=1)
    assert out, "the benchmark did not run"
    return out


def _loss_note(name: str, runs: list[dict[str, Any]] | None) -> str:
    if not runs:
        return ""
    lost = sum(int(r.get("loss", 0)) for r in runs)
    return f" [{name} LOST {lost} messages]" if lost else ""


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "n/a" if x is None else format(x, spec)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer | None]:
    """A nats-server for the whole module, or None when the binary is missing (then only the
    nats parts are skipped, with skip_reason() in the report)."""
    reason = skip_reason()
    if reason:
        report(f"nats baseline skipped: {reason}")
        yield None
        return
    with NatsServer() as server:
        yield server


def _nats_skip_if_missing(server: NatsServer | None) -> NatsServer:
    if server is None:
        pytest.skip(skip_reason() or "nats-server missing")
    return server


# --- 1. 1:1 throughput by size -------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="suite-1to1")
@pytest.mark.parametrize("size", SIZES, ids=[f"{s}B" for s in SIZES])
def test_1to1_throughput(benchmark: Any, measuring: bool, nats_server: NatsServer | None, size: int) -> None:
    n = _n(N_1TO1[size], measuring)
    n_aio = _n(N_1TO1_AIOHTTP[size], measuring)
    rounds = _rounds(measuring)
    hb = _pedantic(benchmark, measuring, lambda: measure_hyperbroker_throughput(n, size, many=True))
    for r in hb:
        assert r["loss"] == 0 and r["received"] == n and r["dropped"] == 0, f"hyperbroker lost messages: {r}"
    aio = [measure_aiohttp_throughput(n_aio, size) for _ in range(rounds)]
    for r in aio:
        r["loss"] = n_aio - r["received"]
    nats = None
    if nats_server is not None:
        nats = [measure_nats_throughput(nats_server.url, n, size) for _ in range(rounds)]

    entry: dict[str, Any] = {
        "hyperbroker": _summary(hb, "cpu_s_per_million", "seconds"),
        "aiohttp": _summary(aio, "seconds"),
        "nats": _summary(nats, "seconds") if nats else None,
    }
    FIGURES["throughput_1to1"][str(size)] = entry
    hb_rate = entry["hyperbroker"]["rate"]
    aio_rate = entry["aiohttp"]["rate"]
    nats_rate = entry["nats"]["rate"] if nats else None
    benchmark.extra_info.update(
        hyperbroker_rate=hb_rate,
        aiohttp_rate=aio_rate,
        nats_rate=nats_rate,
        vs_aiohttp=hb_rate / aio_rate,
        vs_nats=hb_rate / nats_rate if nats_rate else None,
        hyperbroker_cpu_s_per_million=entry["hyperbroker"]["cpu_s_per_million"],
    )
    vs_nats = f"{hb_rate / nats_rate:.2f}x nats ({nats_rate:,.0f})" if nats_rate else "nats skipped"
    report(
        f"[1] 1:1 {size:>5} B: hyperbroker {hb_rate:>9,.0f} msg/s = {vs_nats}, "
        f"{hb_rate / aio_rate:.1f}x aiohttp ({aio_rate:,.0f})"
        f"{_loss_note('nats', nats)}{_loss_note('aiohttp', aio)}{_smoke(measuring)}"
    )


# --- 2. broadcast fan-out ------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="suite-fanout")
@pytest.mark.parametrize(("subscriptions", "nodes"), FANOUT, ids=[f"{s}subs-{k}nodes" for s, k in FANOUT])
def test_fanout(benchmark: Any, measuring: bool, subscriptions: int, nodes: int) -> None:
    n = max(1, _n(FANOUT_DELIVERIES, measuring) // subscriptions)
    runs = _pedantic(benchmark, measuring, lambda: measure_fanout(n, subscriptions, nodes))
    for r in runs:
        assert r["loss"] == 0 and r["duplicates"] == 0 and r["dropped"] == 0, (
            f"hyperbroker fan-out lost messages: loss={r['loss']} dup={r['duplicates']} "
            f"dropped={r['dropped']} counts={r['counts'][:20]}"
        )
        assert all(c == n for c in r["counts"])
    s = _summary(runs, "per_subscription_rate", "cpu_s_per_million", "seconds")
    s.update(subscriptions=subscriptions, nodes=nodes)
    FIGURES["fanout"][f"{subscriptions}x{nodes}"] = s
    benchmark.extra_info.update(
        aggregate_rate=s["rate"],
        per_subscription_rate=s["per_subscription_rate"],
        cpu_s_per_million=s["cpu_s_per_million"],
    )
    report(
        f"[2] fan-out {subscriptions:>3} subs on {nodes:>2} node(s), n={n:,}: {s['rate']:>9,.0f} deliveries/s "
        f"({s['per_subscription_rate']:,.0f} msg/s per subscription, {s['cpu_s_per_million']:.2f} CPU s/M)"
        f"{_smoke(measuring)}"
    )


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="suite-fanout")
@pytest.mark.parametrize("subscribers", NATS_FANOUT, ids=[f"nats-{k}subs" for k in NATS_FANOUT])
def test_fanout_nats(benchmark: Any, measuring: bool, nats_server: NatsServer | None, subscribers: int) -> None:
    server = _nats_skip_if_missing(nats_server)
    n = _n(NATS_FANOUT_N[subscribers], measuring)
    runs = _pedantic(benchmark, measuring, lambda: measure_nats_throughput(server.url, n, 128, subscribers=subscribers))
    for r in runs:
        r["rate_per_subscriber"] = r["rate"]
        r["rate"] = r["aggregate_rate"]  # compare aggregate with aggregate
    s = _summary(runs, "rate_per_subscriber", "seconds")
    s.update(subscribers=subscribers)
    FIGURES["fanout_nats"][str(subscribers)] = s
    benchmark.extra_info.update(aggregate_rate=s["rate"], loss=s["loss"])
    report(
        f"[2] nats fan-out to {subscribers:>2} subscriber process(es), n={n:,}: {s['rate']:>9,.0f} deliveries/s"
        f"{_loss_note('nats', runs)}{_smoke(measuring)}"
    )


# --- 3. queue group ------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="suite-queue-group")
def test_queue_group(benchmark: Any, measuring: bool, nats_server: NatsServer | None) -> None:
    n = _n(N_QG, measuring)
    runs = _pedantic(benchmark, measuring, lambda: measure_queue_group(n, QG_MEMBERS))
    for r in runs:
        assert r["loss"] == 0 and r["dropped"] == 0, f"hyperbroker queue group lost messages: {r}"
    hb = _summary(runs, "fairness", "seconds")
    hb["counts"] = runs[-1]["counts"]
    nats = None
    if nats_server is not None:
        nruns = [measure_nats_queue_group(nats_server.url, n, QG_MEMBERS) for _ in range(_rounds(measuring))]
        nats = _summary(nruns, "fairness", "seconds")
        nats["counts"] = nruns[-1]["received"]
    FIGURES["queue_group"] = {"members": QG_MEMBERS, "hyperbroker": hb, "nats": nats}
    benchmark.extra_info.update(rate=hb["rate"], fairness=hb["fairness"], nats_rate=nats["rate"] if nats else None)
    nats_txt = (
        f"nats {nats['rate']:,.0f} msg/s fairness {nats['fairness']:.3f} -> {hb['rate'] / nats['rate']:.2f}x"
        + (f" [nats LOST {nats['loss']}]" if nats["loss"] else "")
        if nats
        else "nats skipped"
    )
    report(
        f"[3] queue group of {QG_MEMBERS}, n={n:,}: hyperbroker {hb['rate']:,.0f} msg/s fairness max/min "
        f"{hb['fairness']:.3f} {hb['counts']}; {nats_txt}{_smoke(measuring)}"
    )


# --- 4. latency ----------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="suite-latency")
def test_latency(benchmark: Any, measuring: bool, nats_server: NatsServer | None) -> None:
    seconds = _n(LATENCY_SECONDS, measuring)
    runs = _pedantic(benchmark, measuring, lambda: measure_latency(LATENCY_RATE, seconds))
    for r in runs:
        assert r["loss"] == 0, f"hyperbroker lost messages in the latency run: {r['loss']}"
        del r["latencies_us"]  # keep results.json small
    keys = ("p50_us", "p99_us", "p999_us", "mean_us", "max_us", "achieved_rate_per_s")
    hb = {k: _med(runs, k) for k in keys}
    hb.update(count=sum(r["count"] for r in runs), loss=sum(r["loss"] for r in runs), rounds=len(runs))
    nats = None
    if nats_server is not None:
        nruns = [measure_nats_latency(nats_server.url, LATENCY_RATE, seconds) for _ in range(_rounds(measuring))]
        nats = {k: _med(nruns, k) for k in keys}
        nats.update(count=sum(r["count"] for r in nruns), loss=sum(r["loss"] for r in nruns), rounds=len(nruns))
    FIGURES["latency"] = {"rate_per_s": LATENCY_RATE, "seconds": seconds, "hyperbroker": hb, "nats": nats}
    benchmark.extra_info.update({f"hb_{k}": v for k, v in hb.items()})
    if nats:
        benchmark.extra_info.update({f"nats_{k}": v for k, v in nats.items()})

    def line(d: dict[str, Any]) -> str:
        return f"p50 {d['p50_us']:.0f} / p99 {d['p99_us']:.0f} / p99.9 {d['p999_us']:.0f} us"

    nats_txt = (
        f"nats {line(nats)}" + (f" [nats LOST {nats['loss']}]" if nats["loss"] else "") if nats else "nats skipped"
    )
    report(
        f"[4] latency at {LATENCY_RATE} msg/s x {seconds:g} s (median of {len(runs)} rounds): "
        f"hyperbroker {line(hb)}; {nats_txt}{_smoke(measuring)}"
    )


# --- 5. CPU per million --------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.benchmark(group="suite-cpu")
def test_cpu_per_million(benchmark: Any, measuring: bool, nats_server: NatsServer | None) -> None:
    n = _n(N_CPU, measuring)
    runs = _pedantic(benchmark, measuring, lambda: measure_hyperbroker_throughput(n, 128, many=True))
    for r in runs:
        assert r["loss"] == 0 and r["dropped"] == 0, f"hyperbroker lost messages: {r}"
    hb = _summary(runs, "cpu_s_per_million", "publisher_cpu", "subscriber_cpu")
    nats = None
    if nats_server is not None:
        nruns = [measure_nats_cpu(nats_server, n, 128) for _ in range(_rounds(measuring))]
        nats = _summary(nruns, "cpu_s_per_million", "server_cpu", "publisher_cpu", "subscriber_cpu")
    FIGURES["cpu"] = {"body_size": 128, "hyperbroker": hb, "nats": nats}
    benchmark.extra_info.update(hb_cpu_s_per_million=hb["cpu_s_per_million"])
    if nats:
        benchmark.extra_info.update(nats_cpu_s_per_million=nats["cpu_s_per_million"])
    hb_txt = (
        f"hyperbroker {hb['cpu_s_per_million']:.2f} CPU s/M (publisher {hb['publisher_cpu']:.2f} s + "
        f"subscriber {hb['subscriber_cpu']:.2f} s for {n:,})"
    )
    if nats:
        nats_txt = (
            f"nats {nats['cpu_s_per_million']:.2f} CPU s/M (server {nats['server_cpu']:.2f} + publisher "
            f"{nats['publisher_cpu']:.2f} + subscriber {nats['subscriber_cpu']:.2f} s) -> hyperbroker uses "
            f"{hb['cpu_s_per_million'] / nats['cpu_s_per_million']:.2f}x nats' CPU" + _loss_note("nats", nruns)
        )
    else:
        nats_txt = "nats skipped"
    report(f"[5] CPU per million delivered, 1:1 128 B: {hb_txt}; {nats_txt}{_smoke(measuring)}")


# --- targets, results.json, plot -----------------------------------------------------------


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def _targets() -> list[dict[str, Any]]:
    """Each target with its measured value (None if its figures are missing) and whether met."""
    out: list[dict[str, Any]] = []

    def ratio(name: str, num: Any, den: Any, threshold: float) -> None:
        value = num / den if num is not None and den else None
        out.append(
            {
                "target": name,
                "value": value,
                "threshold": threshold,
                "met": None if value is None else value >= threshold,
                "kind": "ratio >=",
            }
        )

    t = FIGURES["throughput_1to1"]
    hb128 = _get(t, "128", "hyperbroker", "rate")
    ratio("1:1 128 B: hyperbroker / nats", hb128, _get(t, "128", "nats", "rate"), 2.0)
    ratio("1:1 128 B: hyperbroker / aiohttp", hb128, _get(t, "128", "aiohttp", "rate"), 10.0)
    ratio(
        "fan-out to 10 nodes (10 subs) / nats 10 subscribers, aggregate",
        _get(FIGURES["fanout"], "10x10", "rate"),
        _get(FIGURES["fanout_nats"], "10", "rate"),
        1.5,
    )
    hb_p99 = _get(FIGURES["latency"], "hyperbroker", "p99_us")
    nats_p99 = _get(FIGURES["latency"], "nats", "p99_us")
    value = hb_p99 / nats_p99 if hb_p99 is not None and nats_p99 else None
    out.append(
        {
            "target": "latency p99 at 1k msg/s: hyperbroker / nats",
            "value": value,
            "threshold": 1.0,
            "met": None if value is None else value <= 1.0,
            "kind": "ratio <=",
        }
    )
    return out


def _meta(measuring: bool) -> dict[str, Any]:
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
        "rounds": _rounds(measuring),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "hyperbroker": version,
        "nats_server": nats_version,
    }


def _missing() -> list[str]:
    """Scenarios without figures (nats ones only count when nats-server is installed)."""
    nats = skip_reason() is None
    out = [f"1:1 {s} B" for s in SIZES if str(s) not in FIGURES["throughput_1to1"]]
    out += [
        f"1:1 {s} B nats"
        for s in SIZES
        if nats and str(s) in FIGURES["throughput_1to1"] and not _get(FIGURES["throughput_1to1"], str(s), "nats")
    ]
    out += [f"fan-out {s}x{k}" for s, k in FANOUT if f"{s}x{k}" not in FIGURES["fanout"]]
    out += [f"nats fan-out {k}" for k in NATS_FANOUT if nats and str(k) not in FIGURES["fanout_nats"]]
    for name in ("queue_group", "latency", "cpu"):
        if not FIGURES[name].get("hyperbroker") or (nats and not FIGURES[name].get("nats")):
            out.append(name.replace("_", " "))
    return out


def _finite(x: Any) -> Any:
    """results.json is strict JSON: non-finite floats (an inf fairness) become null."""
    if isinstance(x, float):
        return x if x == x and x not in (float("inf"), float("-inf")) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # it only reads `measuring`
def test_summary_and_results(measuring: bool, tmp_path: Path) -> None:
    """Report every target (met / MISSED / not measured); when measuring, write results.json
    and draw throughput.png. In the smoke run the plot is drawn to a temporary file instead,
    so plot.py is exercised in CI (skipped only if matplotlib is not installed)."""
    targets = _targets()
    for t in targets:
        if t["value"] is None:
            status, value = "not measured", "n/a"
        else:
            status = "met" if t["met"] else "MISSED"
            value = f"{t['value']:.2f}x"
        report(f"[target] {t['target']} {t['kind']} {t['threshold']:g}: {value} -> {status}{_smoke(measuring)}")
    results = _finite({"meta": _meta(measuring), **FIGURES, "targets": targets})
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        report("plot skipped: matplotlib is not installed (pip install '.[bench]')")
        have_mpl = False
    else:
        have_mpl = True
    import plot

    assert "Targets" in plot.markdown(results)  # the README's tables render from these figures
    missing = _missing()
    if measuring and missing:
        # a partial run (-k, a failure) must not replace the figures of a complete one
        report(f"results.json NOT written: figures missing for {', '.join(missing)}")
    elif measuring:
        RESULTS_JSON.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        report(f"figures written to {RESULTS_JSON}")
        if have_mpl and results["throughput_1to1"]:
            plot.plot_throughput(results, THROUGHPUT_PNG)
            report(f"plot written to {THROUGHPUT_PNG}")
    elif have_mpl and results["throughput_1to1"]:
        out = plot.plot_throughput(json.loads(json.dumps(results, allow_nan=False)), tmp_path / "throughput.png")
        assert out.stat().st_size > 0
