"""Event callbacks (``on_drop``, ``on_evict``, ``on_route_change``, ``on_error``) and the
rate-limited ``hyperbroker`` log: batched per wake-up with summed counts, never once per message;
an exception in a callback is logged, not raised; async callbacks run."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from brokers import MakeBroker, until

from hyperbroker import BrokerError, MemoryRegistry, RegistryError
from hyperbroker.registry.base import BROADCAST_VERSION, Node, Service, WatchEvent

pytestmark = pytest.mark.timeout(60)

N = 100_000
BACKLOG = 10


def closed_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def dead_node(topic: str) -> tuple[Service, str]:
    """A registered subscription whose port refuses connections, and its address."""
    address = f"127.0.0.1:{closed_port()}"
    node = Node("hb-dead-node", address, {"secure": "false", "broker": "http", "batch": "1"})
    return Service(f"topic:{topic}", BROADCAST_VERSION, (node,)), address


class Calls:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


async def burst(pub: Any, topic: str, n: int) -> None:
    """Publish ``n`` small messages without waiting, yielding to the loop now and then (so the
    callbacks get several wake-ups during the burst, as under real load)."""
    for i in range(n):
        pub.publish_nowait(topic, b"x")
        if i % 5000 == 0:
            await asyncio.sleep(0)


async def test_on_drop_is_summed_per_topic_and_reason(make_broker: MakeBroker) -> None:
    drops = Calls()
    pub = await make_broker(backlog=BACKLOG, on_drop=drops)
    await burst(pub, "nobody", N)
    expected = N - BACKLOG
    await until(lambda: sum(c[1] for c in drops.calls) >= expected, 10, "every drop reported")
    await asyncio.sleep(0.1)  # anything extra would show up now
    assert sum(c[1] for c in drops.calls) == expected
    assert pub.stats()["dropped_by_reason"]["backlog_overflow"] == expected
    assert {(c[0], c[2]) for c in drops.calls} == {("nobody", "backlog_overflow")}
    assert 1 <= len(drops.calls) < 100, f"{len(drops.calls)} calls for {expected} drops"


async def test_drops_of_two_topics_are_reported_apart(make_broker: MakeBroker) -> None:
    drops = Calls()
    pub = await make_broker(backlog=BACKLOG, on_drop=drops)
    await pub.publish_many("a", [b"x"] * 50)
    await pub.publish_many("b", [b"y"] * 30)
    await until(lambda: sum(c[1] for c in drops.calls) >= 60, 5, "the drops of both topics")
    await asyncio.sleep(0.05)
    totals: dict[str, int] = {}
    for topic, count, reason in drops.calls:
        assert reason == "backlog_overflow"
        totals[topic] = totals.get(topic, 0) + count
    assert totals == {"a": 40, "b": 20}


async def test_a_burst_of_drops_logs_a_bounded_number_of_records(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    pub = await make_broker(backlog=BACKLOG)
    with caplog.at_level(logging.INFO, logger="hyperbroker"):
        await burst(pub, "nobody", N)
        await until(lambda: pub.stats()["dropped"] == N - BACKLOG, 10, "the drops")
        await asyncio.sleep(0.1)
        records = [r for r in caplog.records if r.name == "hyperbroker" and "dropped" in r.getMessage()]
        # the first wake-up logs at once; the rest is summed until the interval (10 s) ends
        assert 1 <= len(records) <= 2, [r.getMessage() for r in records]
        assert "'nobody' backlog_overflow" in records[0].getMessage()
        await pub.disconnect(timeout=0)
        # disconnect logs what was summed and not yet logged: the counts add up
        records = [r for r in caplog.records if r.name == "hyperbroker" and r.getMessage().startswith("dropped ")]
        assert len(records) <= 3
        total = sum(int(r.getMessage().split()[1]) for r in records)
        assert total == N - BACKLOG, [r.getMessage() for r in records]


async def test_a_raising_callback_is_logged_and_async_callbacks_run(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    def boom(topic: str, count: int, reason: str) -> None:
        raise RuntimeError("callback bug")

    async def later(topic: str, count: int, reason: str) -> None:
        await asyncio.sleep(0)
        seen.append(count)

    with caplog.at_level(logging.ERROR, logger="hyperbroker"):
        pub = await make_broker(backlog=1, on_drop=boom)
        await pub.publish_many("t", [b"x"] * 3)
        await until(lambda: any("on_drop raised" in r.getMessage() for r in caplog.records), 5, "the logged error")
        await pub.publish("t", b"still works")
        assert pub.stats()["published"] == 4

    pub2 = await make_broker(backlog=1, on_drop=later)
    await pub2.publish_many("t", [b"x"] * 3)
    await until(lambda: sum(seen) == 2, 5, "the async callback")


async def test_on_route_change_when_a_subscriber_comes_and_goes(make_broker: MakeBroker) -> None:
    changes = Calls()
    await make_broker(on_route_change=changes)
    sub_broker = await make_broker()
    sub = await sub_broker.subscribe("rc", lambda ev: None)
    await until(lambda: ("rc", 1) in changes.calls, 5, "the route to appear")
    await sub.unsubscribe()
    await until(lambda: ("rc", 0) in changes.calls, 5, "the route to go")
    await asyncio.sleep(0.1)
    assert [c for c in changes.calls if c[0] == "rc"] == [("rc", 1), ("rc", 0)]


async def test_on_evict_for_a_dead_node(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    evicted = Calls()
    changes = Calls()
    pub = await make_broker(retry_min=0.01, retry_max=0.05, on_evict=evicted, on_route_change=changes)
    service, address = dead_node("ev")
    await registry.register(service)
    await until(lambda: ("ev", 1) in changes.calls, 5, "the dead node's route")
    for i in range(20):
        await pub.publish("ev", str(i))
    await until(lambda: bool(evicted.calls), 5, "the eviction")
    await asyncio.sleep(0.2)
    assert evicted.calls == [(address, "unreachable")]
    assert pub.stats()["evicted"] == 1
    assert changes.calls[-1] == ("ev", 0), "the evicted node left the route"


async def test_on_error_gets_delivery_errors_rate_limited(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    errors: list[BrokerError] = []
    # evict_after high: the publisher keeps retrying the dead node every 10-20 ms
    pub = await make_broker(retry_min=0.01, retry_max=0.02, evict_after=1_000_000, on_error=errors.append)
    service, address = dead_node("err")
    await registry.register(service)
    await until(lambda: pub.route_count("err") == 1, 5, "the route")
    await pub.publish("err", b"x")
    await until(lambda: bool(errors), 5, "the first error")
    await asyncio.sleep(1.5)
    assert all(isinstance(e, BrokerError) for e in errors)
    assert address in str(errors[0])
    retried = pub.stats()["retried"]
    assert retried >= 20, f"the node was retried {retried} times"
    # at most one report a second (the first at once, then the latest of each interval)
    assert 1 <= len(errors) <= 3, [str(e) for e in errors]


class FailingWatcher:
    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        await asyncio.sleep(0.01)
        raise OSError("watch connection lost")

    def stop(self) -> None:
        pass


class FailingWatchRegistry(MemoryRegistry):
    def watch(self) -> Any:
        return FailingWatcher()


async def test_on_error_gets_a_registry_watch_failure(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[BrokerError] = []
    with caplog.at_level(logging.CRITICAL, logger="hyperbroker"):
        await make_broker(registry=FailingWatchRegistry(), on_error=errors.append)
        await until(lambda: bool(errors), 5, "the watch failure")
    assert isinstance(errors[0], RegistryError)
    assert "watch connection lost" in str(errors[0])


async def test_on_error_gets_a_failed_dead_letter_publish(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    errors: list[BrokerError] = []
    sub_broker = await make_broker()

    def fail(ev: Any) -> None:
        raise RuntimeError("handler fails")

    await sub_broker.subscribe("dl", fail)
    # a dead-letter topic over max_topic cannot be published to
    pub = await make_broker(
        max_deliveries=1, dead_letter_topic="x" * 40, max_topic=32, on_error=errors.append, retry_min=0.01
    )
    await until(lambda: pub.route_count("dl") == 1, 5, "the route")
    await pub.publish("dl", b"x")
    await until(lambda: any("could not dead-letter" in str(e) for e in errors), 5, "the dead-letter failure")


def test_callback_options_must_be_callable() -> None:
    from hyperbroker import Broker

    for name in ("on_error", "on_drop", "on_route_change", "on_evict"):
        with pytest.raises(BrokerError, match=f"{name} must be callable"):
            Broker(**{name: 42})
