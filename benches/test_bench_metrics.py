"""The cost of metrics: ``publish()`` per call and 1:1 throughput with ``metrics=True`` against
``metrics=False``, measured in one run against one subscriber process.

Per-topic counters are kept either way (``topic_stats()`` always works); ``metrics=True`` adds a
clock read per published message and a histogram observation per acknowledged one (and serves
``/metrics``). The two publishers alternate, several rounds each, so that drift of the machine
hits both alike (in alternating order); the medians go to the run's summary.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from conftest import report
from hb_throughput import TOPIC, SubscriberProcess, _new_loop, bench_body, connected_publisher

CALLS = 20_000
ROUNDS = 9
THROUGHPUT_N = 50_000


@pytest.mark.filterwarnings("ignore:Benchmark fixture was not used")  # it only reads `measuring`
def test_metrics_overhead(measuring: bool) -> None:
    rounds = ROUNDS if measuring else 1
    n = THROUGHPUT_N if measuring else 2000
    body = bench_body(128)
    call_us: dict[str, list[float]] = {"off": [], "on": []}
    rate: dict[str, list[float]] = {"off": [], "on": []}
    with SubscriberProcess(expected=10**9) as sub:
        loop = _new_loop()
        try:

            async def publish_calls(b: Any, count: int) -> float:
                publish = b.publish
                t0 = time.perf_counter()
                for _ in range(count):
                    await publish(TOPIC, body)
                return time.perf_counter() - t0

            async def measure(mode: str) -> None:
                # a fresh publisher per measurement: which broker was made first does not matter
                b = await connected_publisher(sub, metrics=mode == "on")
                try:
                    await publish_calls(b, 500)  # warm-up: connections, allocations
                    await b.flush(timeout=60)
                    call_us[mode].append(await publish_calls(b, CALLS) / CALLS * 1e6)
                    await b.flush(timeout=60)
                    t0 = time.perf_counter()
                    await publish_calls(b, n)
                    await b.flush(timeout=120)
                    rate[mode].append(n / (time.perf_counter() - t0))
                    st = b.stats()
                    assert st["dropped"] == 0 and st["failed"] == 0, (mode, st)
                    assert b.topic_stats()[TOPIC]["delivered"] == st["delivered"]
                    if mode == "on":
                        text = b.metrics_text()
                        assert f'hyperbroker_delivery_duration_seconds_count{{topic="{TOPIC}"}}' in text
                finally:
                    await b.disconnect(timeout=1)

            for i in range(rounds):
                # ABBA: neither mode always runs first
                for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                    loop.run_until_complete(measure(mode))
        finally:
            loop.close()
    off_c, on_c = statistics.median(call_us["off"]), statistics.median(call_us["on"])
    off_r, on_r = statistics.median(rate["off"]), statistics.median(rate["on"])
    report(
        f"metrics overhead: publish() median {off_c:.2f} us off vs {on_c:.2f} us on "
        f"({(on_c / off_c - 1) * 100:+.1f}%); 1:1 throughput {off_r:,.0f}/s off vs {on_r:,.0f}/s on "
        f"({(on_r / off_r - 1) * 100:+.1f}%), 128 B, {rounds} alternating rounds"
    )
