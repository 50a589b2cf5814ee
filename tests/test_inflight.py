"""Several requests in flight per subscriber node (``node_inflight``): nothing lost, nothing
doubled, also when the node dies and comes back, over HTTP/1.1 and HTTP/2 (h2c)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from brokers import until

from hyperbroker import BROADCAST_VERSION, Broker, Event, MemoryRegistry, Node, Service


@pytest.mark.parametrize("h2", [False, True], ids=["http1", "h2c"])
async def test_many_in_flight_deliver_each_message_once(registry: MemoryRegistry, h2: bool) -> None:
    got: list[bytes] = []

    async def slowish(ev: Event) -> None:
        await asyncio.sleep(0)
        got.append(ev.message.body)

    n = 5000
    async with (
        Broker(address="127.0.0.1:0", registry=registry, h2=h2, max_batch=16) as sub,
        Broker(address="127.0.0.1:0", registry=registry, node_inflight=4) as pub,
    ):
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
        await until(lambda: pub.stats()["evicted"] >= 1, 10, "the dead node's eviction")
        got: list[bytes] = []
        async with Broker(address="127.0.0.1:0", registry=registry) as live:
            await live.subscribe("dies", lambda ev: got.append(ev.message.body))
            await until(lambda: len(got) >= n, 10, f"{n} messages at the replacement (have {len(got)})")
            await pub.flush(timeout=10)
            assert sorted(got, key=int) == [str(i).encode() for i in range(n)], "lost or doubled"
            st = pub.stats()
            assert st["delivered"] == n and st["dropped"] == 0 and st["backlog"] == 0


async def test_a_batch_the_node_did_not_fully_read_is_sent_again(registry: MemoryRegistry) -> None:
    """A batch node that says it read fewer envelopes than were sent (a truncated request)
    gets the whole batch again: silence about the rest is not taken for success."""
    from aiohttp import web

    seen: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        lines = [line for line in (await request.read()).split(b"\n") if line.strip()]
        seen.append(len(lines))
        if len(seen) == 1:
            return web.json_response({"received": len(lines) - 1, "failed": []})
        return web.json_response({"received": len(lines), "failed": []})

    app = web.Application()
    app.router.add_post("/_sub", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with Broker(address="127.0.0.1:0", registry=registry, retry_min=0.01) as pub:
            node = Node("hb-short-reader", f"127.0.0.1:{port}", {"batch": "1"})
            await registry.register(Service("topic:short", BROADCAST_VERSION, (node,)))
            await pub.wait_for_route("short")
            await pub.publish_many("short", [b"a", b"b", b"c"])
            await pub.flush(timeout=5)
            st = pub.stats()
            # the first request (however many it carried) was not taken for delivered: its
            # envelopes were sent again, with the rest, and each counted once
            assert seen[0] >= 1 and sum(seen[1:]) == 3, seen
            assert st["delivered"] == 3 and st["retried"] >= seen[0] and st["dropped"] == 0
            assert f"read {seen[0] - 1} of the {seen[0]}" in (st["last_error"] or "")
    finally:
        await runner.cleanup()
