"""SyncBroker.publish call cost: from one thread, and from 8 threads at once, with a subscriber
process connected (the same subscriber as test_bench_pubsub's publish-call bench).

The figure is the caller's cost per call: validation, encoding into (header, body) and the
hand-off to the broker's loop thread; delivery is drained between rounds, outside the timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import report
from hb_throughput import TOPIC, SubscriberProcess, bench_body, node_metadata

from hyperbroker import BROADCAST_VERSION, MemoryRegistry, Node, Service, SyncBroker

CALLS = 1000
THREADS = 8


@pytest.fixture(scope="module")
def sync_publisher() -> Iterator[SyncBroker]:
    with SubscriberProcess(expected=10**9) as sub:
        registry = MemoryRegistry()
        with SyncBroker(address="127.0.0.1:0", registry=registry, disconnect_timeout=1.0) as sb:
            node = Node(sub.node_id, sub.address, node_metadata())
            sb.run(registry.register(Service(f"topic:{TOPIC}", BROADCAST_VERSION, (node,))))
            sb.run(sb.broker.wait_for_route(TOPIC))
            yield sb


@pytest.mark.benchmark(group="sync-publish-call")
def test_sync_publish_call(benchmark: Any, sync_publisher: SyncBroker) -> None:
    sb = sync_publisher
    body = bench_body(128)

    def publish_1000() -> None:
        publish = sb.publish
        for _ in range(CALLS):
            publish(TOPIC, body)

    benchmark.pedantic(publish_1000, setup=lambda: sb.flush(timeout=30), rounds=30, iterations=1)
    sb.flush(timeout=30)
    st = sb.stats()
    assert st["dropped"] == 0 and st["failed"] == 0 and st["handoff_queue"] == 0
    if benchmark.stats is not None:
        med = benchmark.stats.stats.median / CALLS * 1e6
        benchmark.extra_info["us_per_call_median"] = med
        report(f"SyncBroker.publish(): median {med:.2f} us per call (128 B, one thread, subscriber connected)")


@pytest.mark.benchmark(group="sync-publish-call")
def test_sync_publish_call_8_threads(benchmark: Any, sync_publisher: SyncBroker) -> None:
    sb = sync_publisher
    body = bench_body(128)

    def publish_from_threads() -> None:
        start = threading.Barrier(THREADS)

        def work() -> None:
            start.wait(10)
            publish = sb.publish
            for _ in range(CALLS):
                publish(TOPIC, body)

        threads = [threading.Thread(target=work) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    before = sb.stats()["published"]
    benchmark.pedantic(publish_from_threads, setup=lambda: sb.flush(timeout=30), rounds=10, iterations=1)
    sb.flush(timeout=30)
    st = sb.stats()
    rounds = 10 if benchmark.stats is not None else 1
    assert st["published"] - before == rounds * THREADS * CALLS
    assert st["dropped"] == 0 and st["failed"] == 0
    if benchmark.stats is not None:
        med = benchmark.stats.stats.median / (THREADS * CALLS) * 1e6
        benchmark.extra_info["us_per_call_median"] = med
        report(f"SyncBroker.publish() from {THREADS} threads: median {med:.2f} us of wall time per call (128 B)")
