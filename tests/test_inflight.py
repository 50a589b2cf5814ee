"""Several requests in flight per subscriber node (``node_inflight``): nothing lost, nothing
doubled, also when the node dies and comes back, over HTTP/1.1 and HTTP/2 (h2c)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hyperbroker import BROADCAST_VERSION, Broker, Event, MemoryRegistry, Node, Service


@pytest.fixture
async def registry() -> AsyncIterator[MemoryRegistry]:
    yield MemoryRegistry()


async def _until(cond: Any, timeout: float, what: str) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "h2c"])
async def test_many_in_flight_deliver_each_message_once(registry: MemoryRegistry, h2: bool) -> None:
    got: list[bytes] = []

    async def slowish(ev: Event) -> None:
        await asyncio.sleep(0)
        got.append(ev.message.body)

    n = 5000
    async with Broker(address="127.0.0.1:0", registry=registry, h2=h2, max_batch=16) as sub, Broker(
        address="127.0.0.1:0", registry=registry, node_inflight=4
    ) as pub:
        await sub.subscribe("inflight", slowish)
        await pub.wait_for_route("inflight")
        await pub.publish_many("inflight", [str(i).encode() for i in range(n)])
        await pub.flush(timeout=20)
        assert sorted(got, key=int) == [str(i).encode() for i in range(n)]
        st = pub.stats()
        assert st["delivered"] == n and st["dropped"] == 0 and st["in_flight"] == 0


async def test_many_in_flight_node_dies_and_a_replacement_gets_everything(registry: MemoryRegistry) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"127.0.0.1:{s.getsockname()[1]}"
    s.close()
    async with Broker(
        address="127.0.0.1:0", registry=registry, node_inflight=4, retry_min=0.01, retry_max=0.05, max_batch=8
    ) as pub:
        await registry.register(Service("topic:dies", BROADCAST_VERSION, (Node("hb-dead", dead, {"batch": "1"}),)))
        await pub.wait_for_route("dies")
        n = 400
        for i in range(n):
            await pub.publish("dies", str(i))
        await _until(lambda: pub.stats()["evicted"] >= 1, 10, "the dead node's eviction")
        got: list[bytes] = []
        async with Broker(address="127.0.0.1:0", registry=registry) as live:
            await live.subscribe("dies", lambda ev: got.append(ev.message.body))
            await _until(lambda: len(got) >= n, 10, f"{n} messages at the replacement (have {len(got)})")
            await pub.flush(timeout=10)
            assert sorted(got, key=int) == [str(i).encode() for i in range(n)], "lost or doubled"
            st = pub.stats()
            assert st["delivered"] == n and st["dropped"] == 0 and st["backlog"] == 0
