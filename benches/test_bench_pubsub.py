"""Publish call cost and 1:1 throughput against the aiohttp baseline, measured in one run.

Targets (issue 3): ``publish`` median under 2 µs per call with a subscriber connected; 1:1
throughput at 128 B at least 5x the aiohttp baseline. Figures go to the run's summary.
"""

from __future__ import annotations

import statistics
from typing import Any

import pytest
from baseline_aiohttp import measure_aiohttp_throughput
from conftest import report
from hb_throughput import (
    TOPIC,
    SubscriberProcess,
    _new_loop,
    bench_body,
    connected_publisher,
    measure_hyperbroker_throughput,
)

CALLS = 1000


@pytest.fixture(scope="module")
def publisher_with_subscriber() -> Any:
    with SubscriberProcess(expected=10**9) as sub:
        loop = _new_loop()
        broker = loop.run_until_complete(connected_publisher(sub))
        try:
            yield loop, broker
        finally:
            loop.run_until_complete(broker.disconnect(timeout=1))
            loop.close()


@pytest.mark.benchmark(group="publish-call")
def test_publish_call(benchmark: Any, publisher_with_subscriber: Any) -> None:
    loop, broker = publisher_with_subscriber
    body = bench_body(128)

    async def publish_1000() -> None:
        publish = broker.publish
        for _ in range(CALLS):
            await publish(TOPIC, body)

    def drain() -> None:
        loop.run_until_complete(broker.flush(timeout=30))

    benchmark.pedantic(lambda: loop.run_until_complete(publish_1000()), setup=drain, rounds=30, iterations=1)
    drain()
    st = broker.stats()
    assert st["dropped"] == 0 and st["failed"] == 0
    if benchmark.stats is not None:
        med = benchmark.stats.stats.median / CALLS * 1e6
        benchmark.extra_info["us_per_call_median"] = med
        report(f"publish(): median {med:.2f} us per call (128 B, subscriber connected; target < 2 us)")


@pytest.mark.benchmark(group="publish-call")
def test_publish_many_call(benchmark: Any, publisher_with_subscriber: Any) -> None:
    loop, broker = publisher_with_subscriber
    batch = [bench_body(128)] * CALLS

    def drain() -> None:
        loop.run_until_complete(broker.flush(timeout=30))

    benchmark.pedantic(
        lambda: loop.run_until_complete(broker.publish_many(TOPIC, batch)), setup=drain, rounds=30, iterations=1
    )
    drain()
    assert broker.stats()["dropped"] == 0
    if benchmark.stats is not None:
        med = benchmark.stats.stats.median / CALLS * 1e6
        benchmark.extra_info["us_per_message_median"] = med
        report(f"publish_many(): median {med:.2f} us per message (1000 x 128 B)")


@pytest.mark.benchmark(group="throughput-1to1")
@pytest.mark.parametrize("size", [128])
def test_throughput_1to1_vs_aiohttp(benchmark: Any, measuring: bool, size: int) -> None:
    n_hb = 200_000 if measuring else 20_000
    n_aio = 20_000 if measuring else 2_000
    rounds = 3 if measuring else 1
    aio = [measure_aiohttp_throughput(n_aio, size) for _ in range(rounds)]
    for r in aio:
        assert r["received"] == n_aio, f"aiohttp baseline lost messages: {r}"
    results: list[dict[str, Any]] = []

    def run() -> None:
        results.append(measure_hyperbroker_throughput(n_hb, size))

    benchmark.pedantic(run, rounds=rounds, iterations=1)
    for r in results:
        assert r["received"] == n_hb and r["dropped"] == 0, f"hyperbroker lost messages: {r}"
    hb_rate = statistics.median(r["rate"] for r in results)
    aio_rate = statistics.median(r["rate"] for r in aio)
    ratio = hb_rate / aio_rate
    benchmark.extra_info.update(hyperbroker_rate=hb_rate, aiohttp_rate=aio_rate, ratio=ratio)
    report(
        f"1:1 {size} B, two processes: hyperbroker {hb_rate:,.0f} msg/s, aiohttp {aio_rate:,.0f} msg/s,"
        f" ratio {ratio:.1f}x (target >= 5x){'' if measuring else ' [smoke sizes]'}"
    )


@pytest.mark.benchmark(group="throughput-go-micro-peer")
def test_go_micro_peer_mode_throughput(benchmark: Any, measuring: bool) -> None:
    """One envelope per POST, as towards a go-micro node: reported, no target."""
    n = 20_000 if measuring else 2_000
    out: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: out.append(measure_hyperbroker_throughput(n, 128, batch=False)), rounds=1, iterations=1)
    r = out[0]
    assert r["received"] == n and r["dropped"] == 0
    report(f"1:1 128 B without batching (go-micro peer mode): {r['rate']:,.0f} msg/s")
