"""Subscriptions without a handler (async iteration), the @broker.subscriber decorator and
handler concurrency, on real brokers over loopback sharing a MemoryRegistry.

Iteration: a bounded buffer and back-pressure (a slow consumer of 10k messages loses none and
never buffers more than ``max_pending``), when events are acknowledged, and how leaving the
loop, ``unsubscribe()``, ``next(timeout=...)`` and disconnect end it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from brokers import MakeBroker, until

from hyperbroker import Broker, BrokerError, Event, Message
from hyperbroker.iteration import IterSubscriber

pytestmark = pytest.mark.timeout(120)


async def pair(make_broker: MakeBroker, **sub_options: Any) -> tuple[Broker, Broker]:
    pub = await make_broker()
    sub = await make_broker(**sub_options)
    return pub, sub


async def subscribe_iter(
    pub: Broker, sub: Broker, topic: str, max_pending: int = 100, auto_ack: bool = True
) -> IterSubscriber:
    it = await sub.subscribe(topic, auto_ack=auto_ack, max_pending=max_pending)
    await until(lambda: pub.route_count(topic) == 1, 5, f"a route for {topic!r}")
    return it


# --- back-pressure -----------------------------------------------------------------------------------


async def test_slow_consumer_loses_nothing_and_buffers_at_most_max_pending(make_broker: MakeBroker) -> None:
    n = 10_000
    pub, sub = await pair(make_broker)
    it = await subscribe_iter(pub, sub, "firehose", max_pending=10)
    assert isinstance(it, IterSubscriber)

    async def produce() -> None:
        for i in range(n):
            await pub.publish("firehose", str(i).encode())

    producer = asyncio.create_task(produce())
    seen: list[int] = []
    max_pending = max_unsettled = max_publisher_queue = 0
    async for ev in it:
        max_pending = max(max_pending, it.pending)
        max_unsettled = max(max_unsettled, it.pending + it.held)
        seen.append(int(ev.message.body))
        if len(seen) % 50 == 0:
            max_publisher_queue = max(max_publisher_queue, pub.stats()["in_flight"])
            await asyncio.sleep(0.001)  # slow: the publisher is much faster than this
        if len(seen) == n:
            ev.ack()  # leaving the loop would fail the event in hand otherwise
            break
    await producer
    await pub.flush(timeout=30)
    assert seen == list(range(n))  # nothing lost, nothing twice, in order (one publisher node)
    assert 1 <= max_pending <= 10
    # the rest waited with the publisher (its requests unanswered): at most the ordered
    # pipeline's three batches (README, "Receipts") reached this subscriber
    pipeline = 3 * pub.options.max_batch
    assert max_unsettled <= 10 + pipeline < n
    assert max_publisher_queue > 2 * (10 + pub.options.max_batch)  # it was the publisher that waited
    st = pub.stats()
    assert (st["delivered"], st["retried"], st["dropped"]) == (n, 0, 0)
    await until(lambda: it.closed, 5, "the loop's end to close the subscription")


async def test_events_beyond_the_buffer_are_held_by_their_publisher(make_broker: MakeBroker) -> None:
    # the subscriber takes no batches: one message per request, 4 requests at a time
    pub = await make_broker(node_inflight=4)
    sub = await make_broker(batch=False)
    it = await subscribe_iter(pub, sub, "t", max_pending=2)
    for i in range(20):
        await pub.publish("t", str(i).encode())
    await until(lambda: it.pending == 2 and it.held == 2, 5, "a full buffer and two held")
    await asyncio.sleep(0.2)
    assert (it.pending, it.held) == (2, 2)  # the other 16 wait in the publisher
    assert pub.stats()["delivered"] == 0  # nothing is acknowledged before the consumer takes it
    got = [await it.next(timeout=5) for _ in range(20)]
    got[-1].ack()  # the last one is in hand until the next is asked for: ack it before leaving
    await it.unsubscribe()
    # 4 requests at a time: not necessarily in order, but each once
    assert sorted(int(ev.message.body) for ev in got) == list(range(20))
    await pub.flush(timeout=10)
    assert pub.stats()["delivered"] == 20


# --- acknowledgement -----------------------------------------------------------------------------


async def test_an_event_is_acknowledged_when_the_next_is_asked_for(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    it = await subscribe_iter(pub, sub, "t")
    await pub.publish("t", b"a")
    first = await it.next(timeout=5)
    assert first.message.body == b"a"
    await pub.publish("t", b"b")
    await asyncio.sleep(0.2)
    # "a" is in the consumer's hands, unanswered: the publisher (one request per node at a
    # time) holds "b" back
    assert (pub.stats()["delivered"], it.pending, it.held) == (0, 0, 0)
    second = await it.next(timeout=5)  # acknowledges "a", which lets "b" come
    assert second.message.body == b"b"
    assert pub.stats()["delivered"] == 1
    with pytest.raises(TimeoutError):
        await it.next(timeout=0.1)  # acknowledges "b"
    await until(lambda: pub.stats()["delivered"] == 2, 5, "b acknowledged")
    await it.unsubscribe()


async def test_auto_ack_false_redelivers_what_was_not_acked(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    it = await subscribe_iter(pub, sub, "t", auto_ack=False)
    for b in (b"keep", b"again"):
        await pub.publish("t", b)
    seen: list[bytes] = []
    async for ev in it:
        seen.append(ev.message.body)
        if ev.message.body == b"keep" or seen.count(ev.message.body) == 2:
            ev.ack()
        if Counter(seen) == {b"keep": 1, b"again": 2}:
            break  # the event in hand was acked: leaving does not fail it
    await pub.flush(timeout=10)
    st = pub.stats()
    assert (st["delivered"], st["retried"], st["remote_handler_errors"]) == (2, 1, 1)
    assert sub.stats()["handler_errors"] == 1


# --- ending ----------------------------------------------------------------------------------------


async def test_break_ends_the_subscription_and_the_group_gets_the_rest(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    it = await sub.subscribe("jobs", queue="workers", max_pending=5)
    other: list[bytes] = []
    await sub.subscribe("jobs", lambda ev: other.append(ev.message.body), queue="workers")
    await until(lambda: pub.route_count("jobs") == 2, 5, "two routes")
    sent = [f"job{i}".encode() for i in range(10)]
    for b in sent:
        await pub.publish("jobs", b)
    # the iterator's node gets one request (a batch) and, unanswered, its other jobs wait
    await until(lambda: it.pending >= 1 and len(other) == 5, 5, "jobs for both members")
    taken: list[bytes] = []
    async for ev in it:
        taken.append(ev.message.body)
        ev.ack()  # handled: leaving keeps it
        break
    await until(lambda: it.closed, 5, "the loop's end to close the subscription")
    await pub.flush(timeout=10)
    assert len(taken) == 1
    assert sorted(taken + other) == sorted(sent)  # the unacknowledged ones went to the other member
    assert pub.route_count("jobs") == 1


async def test_an_exception_in_the_loop_fails_the_event_in_hand(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    it = await subscribe_iter(pub, sub, "t")
    later: list[bytes] = []
    await pub.publish("t", b"poison")
    with pytest.raises(ValueError, match="boom"):
        async for _ev in it:
            raise ValueError("boom")
    await until(lambda: it.closed, 5, "the subscription to close")
    await until(lambda: pub.route_count("t") == 0, 5, "the route to go")
    await sub.subscribe("t", lambda ev: later.append(ev.message.body))  # it was not lost
    await until(lambda: later == [b"poison"], 10, "the failed event to come to the next subscriber")
    await pub.flush(timeout=10)
    assert later == [b"poison"]


async def test_unsubscribe_ends_a_waiting_loop(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    it = await subscribe_iter(pub, sub, "t")
    got: list[bytes] = []

    async def consume() -> None:
        async for ev in it:
            got.append(ev.message.body)  # noqa: PERF401 (the test watches it grow)

    task = asyncio.create_task(consume())
    await pub.publish("t", b"one")
    await until(lambda: got == [b"one"], 5, "the first event")
    await it.unsubscribe()
    await asyncio.wait_for(task, 5)  # the loop ended by itself
    assert it.closed
    await until(lambda: pub.route_count("t") == 0, 5, "the route to go")
    await it.unsubscribe()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await it.next(timeout=1)


async def test_disconnect_ends_the_loop(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    it = await subscribe_iter(pub, sub, "t")
    task = asyncio.create_task(it.next())
    await asyncio.sleep(0.05)
    await sub.disconnect(timeout=0)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 5)


async def test_next_times_out_and_async_with_unsubscribes(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    async with await sub.subscribe("t") as it:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await it.next(timeout=0.1)
        assert time.monotonic() - t0 >= 0.09
        await until(lambda: pub.route_count("t") == 1, 5, "a route")
        await pub.publish("t", b"late")
        assert (await it.next(timeout=5)).message.body == b"late"  # usable after a timeout
    assert it.closed
    await until(lambda: pub.route_count("t") == 0, 5, "the route to go")


async def test_max_pending_is_checked(make_broker: MakeBroker) -> None:
    sub = await make_broker()
    with pytest.raises(BrokerError, match="max_pending"):
        await sub.subscribe("t", max_pending=0)
    with pytest.raises(BrokerError, match="concurrency"):
        await sub.subscribe("t", lambda ev: None, concurrency=0)


# --- the decorator -------------------------------------------------------------------------------


async def test_decorator_before_connect_subscribes_at_connect(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    sub = await make_broker(connect=False)
    plain: list[bytes] = []
    coro: list[bytes] = []

    @sub.subscriber("orders", queue="workers")
    def on_order(ev: Event) -> None:
        plain.append(ev.message.body)

    @sub.subscriber("audit")
    async def on_audit(ev: Event) -> None:
        await asyncio.sleep(0)
        coro.append(ev.message.body)

    on_order(Event("orders", Message({}, b"direct")))  # still a plain function
    assert plain == [b"direct"]
    await sub.connect()
    await until(lambda: pub.route_count("orders") == 1 and pub.route_count("audit") == 1, 5, "routes")
    await pub.publish("orders", b"o1")
    await pub.publish("audit", b"a1")
    await pub.flush(timeout=10)
    assert plain == [b"direct", b"o1"] and coro == [b"a1"]
    (svc,) = await sub.registry.get_service("topic:orders")
    assert svc.version == "workers"
    # a reconnect subscribes them again
    await sub.disconnect(timeout=0)
    await sub.connect()
    await until(lambda: pub.route_count("orders") == 1, 5, "the route after reconnect")
    await pub.publish("orders", b"o2")
    await pub.flush(timeout=10)
    assert plain[-1] == b"o2"


async def test_decorator_after_connect_subscribes_at_once(make_broker: MakeBroker) -> None:
    pub, sub = await pair(make_broker)
    got: list[bytes] = []

    @sub.subscriber("late")
    async def on_late(ev: Event) -> None:
        got.append(ev.message.body)

    await until(lambda: pub.route_count("late") == 1, 5, "the decorated subscription")
    await pub.publish("late", b"x")
    await pub.flush(timeout=10)
    assert got == [b"x"]


async def test_decorator_checks_its_arguments(make_broker: MakeBroker) -> None:
    sub = await make_broker(connect=False)
    with pytest.raises(BrokerError, match="topic"):
        sub.subscriber("")
    with pytest.raises(BrokerError, match="concurrency"):
        sub.subscriber("t", concurrency=0)
    with pytest.raises(BrokerError, match="needs a function"):
        sub.subscriber("t")("not a function")  # type: ignore[type-var]


# --- concurrency -----------------------------------------------------------------------------------


class Overlap:
    """An async handler that records how many of its calls ran at once, and the order they ended."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.running = 0
        self.max_running = 0
        self.done: list[bytes] = []

    async def __call__(self, ev: Event) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            # later messages are quicker: with overlap they finish first
            await asyncio.sleep(self.delay * (1 + 8 - int(ev.message.body)) / 8)
            self.done.append(ev.message.body)
        finally:
            self.running -= 1


@pytest.mark.parametrize(("concurrency", "expect_max"), [(1, 1), (4, 4)])
async def test_concurrency_overlaps_handler_calls(make_broker: MakeBroker, concurrency: int, expect_max: int) -> None:
    pub, sub = await pair(make_broker)
    h = Overlap(0.05)
    await sub.subscribe("t", h, concurrency=concurrency)
    await until(lambda: pub.route_count("t") == 1, 5, "a route")
    sent = [str(i).encode() for i in range(8)]
    await pub.publish_many("t", sent)
    await pub.flush(timeout=20)
    assert h.max_running == expect_max
    assert sorted(h.done) == sent
    if concurrency == 1:
        assert h.done == sent  # arrival order kept
    else:
        assert h.done != sent  # quicker later ones overtook
    assert pub.stats()["delivered"] == 8
