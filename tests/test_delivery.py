"""Delivery guarantees (at-least-once while the bounds hold), end to end over loopback HTTP.

- a subscriber that leaves gracefully (unsubscribe, disconnect) loses nothing: what was queued
  for it waits in the backlog for the next subscriber, unless another subscription has it;
- a message whose handler fails never blocks the healthy ones behind it, and after
  ``max_deliveries`` attempts goes to ``on_undeliverable`` and the dead-letter topic;
- every drop is counted by reason in ``stats()["dropped_by_reason"]``;
- ``drain()`` stops new deliveries, lets running handlers finish, flushes, disconnects.

Every broker listens on 127.0.0.1 and announces itself in one MemoryRegistry. Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from brokers import MakeBroker, until

from hyperbroker import Broker, Event, Message

pytestmark = pytest.mark.timeout(120)


def port_of(b: Broker) -> int:
    return int(b.address.rsplit(":", 1)[1])


async def wait_routes(b: Broker, topic: str, n: int, timeout: float = 5.0) -> None:
    await until(lambda: b.route_count(topic) == n, timeout, f"{n} routes for {topic!r}")


class Seen:
    """Records the sequence numbers (bodies) a handler saw, across subscribers."""

    def __init__(self) -> None:
        self.seq: list[int] = []

    def __call__(self, ev: Event) -> None:
        self.seq.append(int(ev.message.body))


# --- a subscriber that leaves gracefully ------------------------------------------------------


@pytest.mark.parametrize("route_known", [True, False], ids=["route-known", "route-unknown"])
async def test_graceful_leave_loses_nothing(make_broker: MakeBroker, route_known: bool) -> None:
    """Publish 100, disconnect the only subscriber, publish 100 more, start a new subscriber on
    the same port: all 200 arrive (20 rounds: the leave races with delivery)."""
    pub = await make_broker(retry_min=0.005, retry_max=0.05)
    for rnd in range(20):
        topic = f"leave-{route_known}-{rnd}"
        s1 = await make_broker()
        port = port_of(s1)
        seen = Seen()
        await s1.subscribe(topic, seen)
        await wait_routes(pub, topic, 1)
        for i in range(100):
            await pub.publish(topic, str(i))
        if route_known:
            # the second hundred is queued for the node that is about to leave
            for i in range(100, 200):
                await pub.publish(topic, str(i))
            await s1.disconnect()
        else:
            await pub.flush(timeout=10)
            await s1.disconnect()
            await wait_routes(pub, topic, 0)
            for i in range(100, 200):
                await pub.publish(topic, str(i))
        s2 = await make_broker(address=f"127.0.0.1:{port}")
        await s2.subscribe(topic, seen)
        await until(lambda seen=seen: set(seen.seq) >= set(range(200)), 10, f"all 200 in round {rnd}")
        await pub.flush(timeout=10)
        await s2.disconnect()
    st = pub.stats()
    assert st["dropped"] == 0, st
    assert sum(st["dropped_by_reason"].values()) == 0, st


async def test_unsubscribe_while_another_subscription_has_it_is_a_counted_drop(make_broker: MakeBroker) -> None:
    """A broadcast subscription that leaves while another subscription of the topic keeps
    receiving: its queued copies are dropped (the topic's other subscriber has them), and the
    drop says why."""
    pub = await make_broker(retry_min=0.005, retry_max=0.05)
    s1 = await make_broker()
    s2 = await make_broker()
    stay = Seen()
    gate = asyncio.Event()

    async def slow(ev: Event) -> None:
        await gate.wait()

    await s1.subscribe("two", stay)
    leaving = await s2.subscribe("two", slow)
    await wait_routes(pub, "two", 2)
    for i in range(200):
        await pub.publish("two", str(i))
    await until(lambda: len(stay.seq) == 200, 10, "the staying subscriber got all 200")
    await leaving.unsubscribe()
    gate.set()
    await pub.flush(timeout=10)
    st = pub.stats()
    reasons = st["dropped_by_reason"]
    assert st["dropped"] == sum(reasons.values())
    assert set(reasons) >= {"backlog_overflow", "node_queue_overflow", "left_while_others_have_it", "disconnect"}
    assert reasons["backlog_overflow"] == reasons["node_queue_overflow"] == reasons["disconnect"] == 0
    assert st["backlog"] == 0  # nothing waits for a subscriber that the topic does not need


async def test_backlog_overflow_counted_by_reason(make_broker: MakeBroker) -> None:
    pub = await make_broker(backlog=10)
    for i in range(25):
        await pub.publish("nobody", str(i))
    st = pub.stats()
    assert st["dropped_by_reason"]["backlog_overflow"] == 15
    assert st["dropped"] == 15


async def test_disconnect_with_backlog_counted_by_reason(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    for i in range(7):
        await pub.publish("nobody-yet", str(i))
    await pub.disconnect(timeout=0)
    st = pub.stats()  # after disconnect: the final counters
    assert st["dropped_by_reason"]["disconnect"] == 7
    assert st["dropped"] == 7


# --- failing handlers: no head-of-line blocking -------------------------------------------------


async def _steady(pub: Broker, topic: str, rate: float, seconds: float) -> int:
    """Publish numbered messages at ``rate`` per second for ``seconds``; returns how many."""
    n = 0
    start = time.monotonic()
    while (now := time.monotonic() - start) < seconds:
        due = int(now * rate) + 1
        while n < due:
            await pub.publish(topic, str(n))
            n += 1
        await asyncio.sleep(1 / rate)
    return n


@pytest.mark.parametrize("members", [1, 3], ids=["lone", "queue-of-3"])
async def test_failing_message_does_not_block_healthy_ones(make_broker: MakeBroker, members: int) -> None:
    """A handler fails on message 50 for 15 s under a steady 200 msg/s: every healthy message
    arrives in order, none waits in the backlog; the failing one arrives when it stops failing."""
    pub = await make_broker(retry_min=0.05, retry_max=0.5, max_deliveries=None)
    queue = "workers" if members > 1 else None
    fail_until = time.monotonic() + 1e9
    got: list[list[int]] = []

    def make_handler(mine: list[int]) -> Any:
        def handler(ev: Event) -> None:
            n = int(ev.message.body)
            if n == 50 and time.monotonic() < fail_until:
                raise RuntimeError("poison for now")
            mine.append(n)

        return handler

    for _ in range(members):
        s = await make_broker()
        mine: list[int] = []
        got.append(mine)
        await s.subscribe("hol", make_handler(mine), queue=queue)
    await wait_routes(pub, "hol", members)

    async def heal() -> None:
        nonlocal fail_until
        await until(lambda: sum(len(m) for m in got) >= 50, 10, "the first 50")
        fail_until = time.monotonic() + 15.0

    healer = asyncio.create_task(heal())
    n = await _steady(pub, "hol", 200, 16.0)
    await healer
    await pub.flush(timeout=20)
    all_seen = sorted(x for m in got for x in m)
    assert set(all_seen) == set(range(n))
    for m in got:
        healthy = [x for x in m if x != 50]
        assert healthy == sorted(healthy), "healthy messages keep their order per subscription"
    st = pub.stats()
    assert st["backlogged"] == 0, "no healthy message waited in the backlog"
    assert st["dropped"] == 0
    assert st["remote_handler_errors"] >= 2


# --- poison messages: the redelivery cap and dead letters ---------------------------------------


async def test_poison_goes_to_on_undeliverable_and_dead_letter_topic_after_exactly_n(make_broker: MakeBroker) -> None:
    undeliverable: list[tuple[str, Message, str]] = []

    async def on_undeliverable(topic: str, message: Message, reason: str) -> None:
        undeliverable.append((topic, message, reason))

    pub = await make_broker(
        retry_min=0.005, retry_max=0.02, max_deliveries=4, on_undeliverable=on_undeliverable, dead_letter_topic="dlq"
    )
    sub = await make_broker()
    attempts = 0
    healthy: list[int] = []
    dead: list[Event] = []

    def handler(ev: Event) -> None:
        nonlocal attempts
        if ev.message.body == b"poison":
            attempts += 1
            raise ValueError("cannot parse poison")
        healthy.append(int(ev.message.body))

    await sub.subscribe("orders", handler)
    await sub.subscribe("dlq", dead.append)
    await wait_routes(pub, "orders", 1)
    await wait_routes(pub, "dlq", 1)
    for i in range(20):
        await pub.publish("orders", str(i))
    await pub.publish("orders", Message({"k": "v"}, b"poison"))
    for i in range(20, 40):
        await pub.publish("orders", str(i))
    await pub.flush(timeout=10)  # completes: the poison left after its last attempt
    await until(lambda: len(dead) == 1 and len(undeliverable) == 1, 5, "the dead letter")
    assert attempts == 4
    assert healthy == list(range(40))
    topic, msg, reason = undeliverable[0]
    assert topic == "orders" and msg.body == b"poison" and msg.header["k"] == "v"
    assert "cannot parse poison" in reason
    dl = dead[0].message
    assert dl.body == b"poison"
    assert dl.header["X-Hyperbroker-Original-Topic"] == "orders"
    assert "cannot parse poison" in dl.header["X-Hyperbroker-Error"]
    assert dl.header["X-Hyperbroker-Deliveries"] == "4"
    assert dl.header["X-Hyperbroker-Node"]
    assert pub.stats()["dead_lettered"] == 1
    # the dead letter's handler ran; its acknowledgement reaches the publisher just after
    await until(lambda: pub.stats()["in_flight"] == 0, 5, "the dead letter acknowledged")


async def test_per_subscription_max_deliveries(make_broker: MakeBroker) -> None:
    seen_reasons: list[str] = []
    pub = await make_broker(
        retry_min=0.005, retry_max=0.02, max_deliveries=50, on_undeliverable=lambda t, m, r: seen_reasons.append(r)
    )
    sub = await make_broker()
    attempts = 0

    def handler(ev: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("always")

    await sub.subscribe("capped", handler, max_deliveries=2)
    await wait_routes(pub, "capped", 1)
    await pub.publish("capped", b"x")
    await pub.flush(timeout=10)
    await until(lambda: len(seen_reasons) == 1, 5, "on_undeliverable")
    assert attempts == 2


# --- drain ----------------------------------------------------------------------------------------


async def test_drain_lets_running_handlers_finish_and_flushes(make_broker: MakeBroker) -> None:
    pub = await make_broker(retry_min=0.005, retry_max=0.05)
    sub = await make_broker()
    done: list[int] = []
    started = asyncio.Event()

    async def slow(ev: Event) -> None:
        started.set()
        await asyncio.sleep(0.3)
        done.append(int(ev.message.body))

    await sub.subscribe("drained", slow)
    await wait_routes(pub, "drained", 1)
    await pub.publish("drained", b"1")
    await asyncio.wait_for(started.wait(), 5)
    await sub.publish("elsewhere", b"queued by the draining broker")
    await sub.drain(timeout=5)
    assert done == [1], "the running handler finished and was acknowledged"
    assert not sub.connected
    await pub.flush(timeout=5)
    st = pub.stats()
    assert st["delivered"] == 1 and st["dropped"] == 0
