"""TestBroker (hyperbroker.testing) behaves like the real broker.

The first half runs the same scenarios against a TestBroker and against two real Brokers on
loopback sharing a MemoryRegistry (``broker_pair``) and expects the same observable results:
what the handlers saw, and the counters. The second half tests what only the TestBroker has or
does differently: the ``published`` record, re-raising handler errors in ``flush``, request/reply,
the delivery limit with on_undeliverable and the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from brokers import until

from hyperbroker import (
    Broker,
    BrokerError,
    Event,
    FlushTimeoutError,
    Message,
    NotConnectedError,
    RequestError,
    RequestTimeoutError,
)
from hyperbroker.testing import (
    DELIVERIES_HEADER,
    ERROR_HEADER,
    NODE_HEADER,
    ORIGINAL_TOPIC_HEADER,
    BrokerPair,
    TestBroker,
    broker_pair,
)

pytestmark = pytest.mark.timeout(60)

#: counters the publisher keeps, and the ones the subscriber keeps (one object for a TestBroker)
PUB_KEYS = ("published", "delivered", "retried", "remote_handler_errors", "backlogged", "dropped")
SUB_KEYS = ("received", "handler_errors")


# --- the same scenarios against the TestBroker and real brokers --------------------------------


@dataclass
class Side:
    """A publisher and a subscriber: the same TestBroker, or two real Brokers."""

    kind: str
    pub: TestBroker | Broker
    sub: TestBroker | Broker

    async def routes(self, topic: str, n: int) -> None:
        """Wait until the publisher routes ``topic`` to ``n`` subscriptions."""
        await until(lambda: self.pub.route_count(topic) == n, 5.0, f"{n} routes for {topic!r}")

    async def flush_after_handler_errors(self, exc_type: type[BaseException]) -> None:
        """Flush after handlers raised: the TestBroker re-raises the first error, once; a real
        broker's flush succeeds (the failures are counted and retried)."""
        if self.kind == "test":
            with pytest.raises(exc_type):
                await self.pub.flush(timeout=10)
        await self.pub.flush(timeout=10)

    def counters(self) -> dict[str, Any]:
        p, s = self.pub.stats(), self.sub.stats()
        return {**{k: p[k] for k in PUB_KEYS}, **{k: s[k] for k in SUB_KEYS}}


@pytest.fixture(params=["test", "real"])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    if request.param == "test":
        async with TestBroker() as tb:
            yield Side("test", tb, tb)
    else:
        pair: BrokerPair
        async with broker_pair() as pair:
            yield Side("real", pair.publisher, pair.subscriber)


def bodies(n: int, prefix: str = "m") -> list[bytes]:
    return [f"{prefix}{i}".encode() for i in range(n)]


def expect(**counters: int) -> dict[str, int]:
    """All the compared counters: the given ones, zero for the rest."""
    return {k: counters.get(k, 0) for k in (*PUB_KEYS, *SUB_KEYS)}


async def test_broadcast_reaches_every_subscriber_in_order(side: Side) -> None:
    plain: list[bytes] = []
    coro: list[bytes] = []

    async def async_handler(ev: Event) -> None:
        await asyncio.sleep(0)
        coro.append(ev.message.body)

    await side.sub.subscribe("news", lambda ev: plain.append(ev.message.body))
    await side.sub.subscribe("news", async_handler)
    await side.routes("news", 2)
    for b in bodies(3):
        await side.pub.publish("news", b)
    await side.pub.flush(timeout=10)
    assert plain == bodies(3)
    assert coro == bodies(3)
    assert side.counters() == expect(published=3, delivered=6, received=6)


async def test_queue_group_round_robin(side: Side) -> None:
    got: list[list[bytes]] = [[], [], []]
    for i in range(3):
        await side.sub.subscribe("jobs", lambda ev, i=i: got[i].append(ev.message.body), queue="workers")
    await side.routes("jobs", 3)
    for b in bodies(6, "job"):
        await side.pub.publish("jobs", b)
    await side.pub.flush(timeout=10)
    assert [len(g) for g in got] == [2, 2, 2]
    assert sorted(b for g in got for b in g) == sorted(bodies(6, "job"))
    assert side.counters() == expect(published=6, delivered=6, received=6)


async def test_auto_ack_false_redelivers_until_acked(side: Side) -> None:
    seen: list[bytes] = []

    def ack_second_time(ev: Event) -> None:
        body = ev.message.body
        if body in seen:
            ev.ack()
        seen.append(body)

    await side.sub.subscribe("manual", ack_second_time, auto_ack=False)
    await side.routes("manual", 1)
    for b in bodies(2):
        await side.pub.publish("manual", b)
    await side.pub.flush(timeout=10)  # not acking is no error: nothing is raised
    assert Counter(seen) == {b"m0": 2, b"m1": 2}
    assert side.counters() == expect(
        published=2, delivered=2, retried=2, remote_handler_errors=2, received=4, handler_errors=2
    )


async def test_handler_error_is_retried(side: Side) -> None:
    attempts: list[bytes] = []

    def fail_first_time(ev: Event) -> None:
        body = ev.message.body
        attempts.append(body)
        if attempts.count(body) == 1:
            raise ValueError(f"first attempt of {body!r}")

    await side.sub.subscribe("flaky", fail_first_time)
    await side.routes("flaky", 1)
    for b in bodies(2):
        await side.pub.publish("flaky", b)
    await side.flush_after_handler_errors(ValueError)
    assert Counter(attempts) == {b"m0": 2, b"m1": 2}
    assert side.counters() == expect(
        published=2, delivered=2, retried=2, remote_handler_errors=2, received=4, handler_errors=2
    )


async def test_backlog_is_delivered_when_a_subscriber_appears(side: Side) -> None:
    seen: list[bytes] = []
    for b in bodies(3):
        await side.pub.publish("later", b)
    await side.pub.flush(timeout=10)  # parked in the backlog counts as done
    assert side.pub.stats()["backlog"] == 3
    await side.sub.subscribe("later", lambda ev: seen.append(ev.message.body))
    await until(lambda: len(seen) == 3, 10.0, "the backlog to be delivered")
    await side.pub.flush(timeout=10)
    assert seen == bodies(3)
    assert side.pub.stats()["backlog"] == 0
    assert side.counters() == expect(published=3, backlogged=3, delivered=3, received=3)


async def test_async_iteration_acknowledges_on_next(side: Side) -> None:
    it = await side.sub.subscribe("stream", max_pending=3)
    await side.routes("stream", 1)
    for b in bodies(5):
        await side.pub.publish("stream", b)
    seen: list[bytes] = []
    async for ev in it:
        assert it.pending <= 3
        seen.append(ev.message.body)
        if len(seen) == 5:
            ev.ack()  # the event in hand when leaving the loop is kept only if acked
            break
    await side.pub.flush(timeout=10)
    assert seen == bodies(5)
    assert it.closed
    assert side.counters() == expect(published=5, delivered=5, received=5)


async def test_async_iteration_redelivers_what_was_not_acked(side: Side) -> None:
    it = await side.sub.subscribe("manual", auto_ack=False)
    await side.routes("manual", 1)
    for b in bodies(2):
        await side.pub.publish("manual", b)
    seen: list[bytes] = []
    async for ev in it:
        body = ev.message.body
        if body in seen:
            ev.ack()
        seen.append(body)
        if Counter(seen) == {b"m0": 2, b"m1": 2}:
            break
    await side.pub.flush(timeout=10)
    assert side.counters() == expect(
        published=2, delivered=2, retried=2, remote_handler_errors=2, received=4, handler_errors=2
    )


async def test_decorated_handler_after_connect(side: Side) -> None:
    got: list[bytes] = []

    @side.sub.subscriber("deco", queue="q")
    async def handler(ev: Event) -> None:
        got.append(ev.message.body)

    await side.routes("deco", 1)
    for b in bodies(3):
        await side.pub.publish("deco", b)
    await side.pub.flush(timeout=10)
    assert got == bodies(3)
    assert side.counters() == expect(published=3, delivered=3, received=3)


async def test_concurrency_overlaps_async_handlers(side: Side) -> None:
    running = peak = 0

    async def slow(ev: Event) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    await side.sub.subscribe("par", slow, concurrency=4)
    await side.routes("par", 1)
    await side.pub.publish_many("par", bodies(8))
    await side.pub.flush(timeout=10)
    assert peak == 4
    assert side.counters() == expect(published=8, delivered=8, received=8)


# --- what only the TestBroker does ----------------------------------------------------------------


@pytest.fixture
async def tb() -> AsyncIterator[TestBroker]:
    async with TestBroker(retry_min=0.001) as b:
        yield b


async def test_published_records_every_message(tb: TestBroker) -> None:
    await tb.publish("a", b"raw")
    await tb.publish("a", "text", header={"X-Id": "1"})
    await tb.publish("b", {"n": 1})
    await tb.publish("b", Message({"K": "v"}, b"m"))
    assert await tb.publish_many("c", [b"1", b"2"]) == 2
    assert tb.published == [
        ("a", Message({}, b"raw")),
        ("a", Message({"X-Id": "1"}, b"text")),
        ("b", Message({"Content-Type": "application/json"}, b'{"n":1}')),
        ("b", Message({"K": "v"}, b"m")),
        ("c", Message({}, b"1")),
        ("c", Message({}, b"2")),
    ]
    assert tb.stats()["published"] == 6


async def test_handlers_get_native_events(tb: TestBroker) -> None:
    events: list[Event] = []
    acked_before: list[bool] = []

    def handler(ev: Event) -> None:
        acked_before.append(ev.acked)
        ev.ack()
        events.append(ev)

    await tb.subscribe("t", handler, auto_ack=False)
    await tb.publish("t", Message({"H": "1"}, b"body"))
    await tb.flush()
    (ev,) = events
    assert isinstance(ev, Event)
    assert (ev.topic, ev.message, ev.error) == ("t", Message({"H": "1"}, b"body"), None)
    assert acked_before == [False] and ev.acked


async def test_backlog_keeps_the_newest_and_counts_drops() -> None:
    async with TestBroker(backlog=3) as b:
        for body in bodies(5):
            await b.publish("t", body)
        st = b.stats()
        assert (st["backlog"], st["backlogged"], st["dropped"]) == (3, 5, 2)
        seen: list[bytes] = []
        await b.subscribe("t", lambda ev: seen.append(ev.message.body))
        await b.flush()
        assert seen == [b"m2", b"m3", b"m4"]
        assert b.stats()["backlog"] == 0


async def test_flush_reraises_the_first_handler_error_once(tb: TestBroker) -> None:
    n = 0

    def always_fails(ev: Event) -> None:
        nonlocal n
        n += 1
        raise ValueError(f"failure {n}")

    await tb.subscribe("t", always_fails, max_deliveries=3)
    await tb.publish("t", b"x")
    with pytest.raises(ValueError, match="failure 1"):
        await tb.flush()
    await tb.flush()  # once
    assert [str(e) for e in tb.errors] == ["failure 1", "failure 2", "failure 3"]


async def test_raise_handler_errors_false_only_records() -> None:
    async with TestBroker(raise_handler_errors=False, max_deliveries=1) as b:

        def fails(ev: Event) -> None:
            raise KeyError("k")

        await b.subscribe("t", fails)
        await b.publish("t", b"x")
        await b.flush()
        assert [type(e) for e in b.errors] == [KeyError]
        assert b.stats()["handler_errors"] == 1


async def test_flush_times_out_while_a_handler_hangs(tb: TestBroker) -> None:
    release = asyncio.Event()

    async def hangs(ev: Event) -> None:
        await release.wait()

    await tb.subscribe("t", hangs)
    await tb.publish("t", b"x")
    with pytest.raises(FlushTimeoutError, match="1 deliveries still pending"):
        await tb.flush(timeout=0.05)
    release.set()
    await tb.flush()
    assert tb.stats()["delivered"] == 1


async def test_flush_waits_for_messages_handlers_publish(tb: TestBroker) -> None:
    final: list[bytes] = []

    async def forward(ev: Event) -> None:
        await asyncio.sleep(0.01)
        await tb.publish("second", ev.message.body + b"!")

    await tb.subscribe("first", forward)
    await tb.subscribe("second", lambda ev: final.append(ev.message.body))
    await tb.publish("first", b"hop")
    await tb.flush()
    assert final == [b"hop!"]


@pytest.mark.parametrize(
    ("answer", "header", "body"),
    [
        (b"raw", {}, b"raw"),
        ("text", {}, b"text"),
        ({"ok": True}, {"Content-Type": "application/json"}, b'{"ok":true}'),
        (Message({"R": "1"}, b"m"), {"R": "1"}, b"m"),
    ],
)
async def test_request_returns_the_answer_as_a_message(
    tb: TestBroker, answer: object, header: dict[str, str], body: bytes
) -> None:
    async def responder(ev: Event) -> object:
        assert ev.message.body == b"question"
        return answer

    await tb.subscribe("rpc", responder)
    reply = await tb.request("rpc", b"question")
    assert reply == Message(header, body)


async def test_request_asks_one_subscription_in_turn_and_none_is_an_empty_reply(tb: TestBroker) -> None:
    await tb.subscribe("rpc", lambda ev: None)  # answers with an empty reply
    await tb.subscribe("rpc", lambda ev: ev.message.text().upper())
    replies = {(await tb.request("rpc", "hi")).body for _ in range(4)}
    assert replies == {b"", b"HI"}, "each request goes to one subscription, in turn"


async def test_request_times_out_on_a_slow_handler(tb: TestBroker) -> None:
    async def slow(ev: Event) -> bytes:
        await asyncio.sleep(5)
        return b"late"

    await tb.subscribe("rpc", slow)
    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="no answer") as info:
        await tb.request("rpc", b"?", timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, BrokerError)


async def test_request_to_a_raising_handler_is_a_request_error(tb: TestBroker) -> None:
    calls = 0

    def boom(ev: Event) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad question")

    await tb.subscribe("rpc", boom)
    with pytest.raises(RequestError, match="ValueError: bad question") as info:
        await tb.request("rpc", b"?")
    assert info.value.status == 500 and calls == 1, "a request is never retried"


async def test_request_without_subscriber_waits_then_times_out(tb: TestBroker) -> None:
    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="no subscriber"):
        await tb.request("nobody", b"?", timeout=0.2)
    assert time.monotonic() - t0 >= 0.19


async def test_max_deliveries_then_on_undeliverable_and_dead_letter() -> None:
    undeliverable: list[tuple[str, Message, str]] = []
    attempts = 0

    def always_fails(ev: Event) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("broken")

    async with TestBroker(
        retry_min=0.001,
        max_deliveries=3,
        on_undeliverable=lambda topic, msg, reason: undeliverable.append((topic, msg, reason)),
        dead_letter_topic="dlq",
    ) as b:
        dead: list[Message] = []
        await b.subscribe("dlq", lambda ev: dead.append(ev.message))
        sub = await b.subscribe("orders", always_fails)
        await b.publish("orders", b"order-1", header={"X-Id": "7"})
        with pytest.raises(ValueError, match="broken"):
            await b.flush()
        assert attempts == 3
        assert undeliverable == [("orders", Message({"X-Id": "7"}, b"order-1"), "ValueError: broken")]
        (dl,) = dead
        assert dl.body == b"order-1"
        assert dl.header == {
            "X-Id": "7",
            ORIGINAL_TOPIC_HEADER: "orders",
            NODE_HEADER: sub.id,
            ERROR_HEADER: "ValueError: broken",
            DELIVERIES_HEADER: "3",
        }
        assert b.published[-1] == ("dlq", dl)
        st = b.stats()
        assert (st["dead_lettered"], st["received"], st["retried"], st["delivered"]) == (1, 4, 2, 1)


async def test_default_max_deliveries_is_10(tb: TestBroker) -> None:
    n = 0

    def always_fails(ev: Event) -> None:
        nonlocal n
        n += 1
        raise RuntimeError("no")

    await tb.subscribe("t", always_fails)
    await tb.publish("t", b"x")
    with pytest.raises(RuntimeError):
        await tb.flush()
    assert n == 10 and tb.stats()["dead_lettered"] == 1


async def test_subscription_max_deliveries_overrides_and_async_callback_is_awaited() -> None:
    reasons: list[str] = []

    async def on_undeliverable(topic: str, msg: Message, reason: str) -> None:
        await asyncio.sleep(0.01)
        reasons.append(reason)

    async with TestBroker(max_deliveries=5, on_undeliverable=on_undeliverable) as b:
        await b.subscribe("t", lambda ev: None, auto_ack=False, max_deliveries=1)
        await b.publish("t", b"never acked")
        await b.flush()  # not acking raises nothing; flush waits for the callback
        assert len(reasons) == 1 and "ack()" in reasons[0]
        assert b.stats()["received"] == 1


async def test_max_deliveries_none_retries_until_the_handler_succeeds() -> None:
    n = 0

    def succeeds_at_25(ev: Event) -> None:
        nonlocal n
        n += 1
        if n < 25:
            raise ValueError("not yet")

    async with TestBroker(retry_min=0.001, max_deliveries=None, raise_handler_errors=False) as b:
        await b.subscribe("t", succeeds_at_25)
        await b.publish("t", b"x")
        await b.flush()
        assert n == 25
        st = b.stats()
        assert (st["delivered"], st["dead_lettered"], st["handler_errors"]) == (1, 0, 24)


async def test_unsubscribe_hands_queued_messages_to_the_group(tb: TestBroker) -> None:
    release = asyncio.Event()
    first: list[bytes] = []
    second: list[bytes] = []

    async def slow(ev: Event) -> None:
        await release.wait()
        first.append(ev.message.body)

    a = await tb.subscribe("t", slow, queue="q")
    await tb.subscribe("t", lambda ev: second.append(ev.message.body), queue="q")
    for body in bodies(4):
        await tb.publish("t", body)
    await asyncio.sleep(0.01)
    await a.unsubscribe()
    await a.unsubscribe()  # idempotent
    await tb.flush()
    assert first == []
    assert sorted(second) == bodies(4)
    assert tb.route_count("t") == 1


async def test_not_connected_and_bad_options() -> None:
    b = TestBroker()
    with pytest.raises(NotConnectedError):
        await b.publish("t", b"x")
    with pytest.raises(NotConnectedError):
        await b.subscribe("t", lambda ev: None)
    assert b.stats() == {}
    with pytest.raises(BrokerError, match="unknown broker option"):
        TestBroker(no_such_option=1)
    with pytest.raises(BrokerError, match="max_deliveries"):
        TestBroker(max_deliveries=0)
    with pytest.raises(BrokerError, match="on_undeliverable"):
        TestBroker(on_undeliverable="not callable")
    async with TestBroker() as c:
        with pytest.raises(BrokerError, match="topic"):
            await c.publish("", b"x")
        with pytest.raises(BrokerError, match="queue"):
            await c.subscribe("t", lambda ev: None, queue="")
    assert not c.connected and c.stats() == {}


async def test_broadcast_and_queue_group_together(tb: TestBroker) -> None:
    seen: Counter[str] = Counter()
    await tb.subscribe("t", lambda ev: seen.update(["b1"]))
    await tb.subscribe("t", lambda ev: seen.update(["b2"]))
    await tb.subscribe("t", lambda ev: seen.update(["g1"]), queue="g")
    await tb.subscribe("t", lambda ev: seen.update(["g2"]), queue="g")
    for body in bodies(4):
        await tb.publish("t", body)
    await tb.flush()
    assert seen == {"b1": 4, "b2": 4, "g1": 2, "g2": 2}


async def test_decorator_before_connect_and_again_after_reconnect() -> None:
    tb = TestBroker()
    got: list[bytes] = []

    @tb.subscriber("t")
    def handler(ev: Event) -> None:
        got.append(ev.message.body)

    await tb.connect()
    assert tb.route_count("t") == 1
    await tb.publish("t", b"1")
    await tb.flush()
    await tb.disconnect()
    await tb.connect()
    await tb.publish("t", b"2")
    await tb.flush()
    await tb.disconnect()
    assert got == [b"1", b"2"]


async def test_leaving_the_loop_hands_the_rest_to_the_group(tb: TestBroker) -> None:
    it = await tb.subscribe("jobs", queue="g", max_pending=2)
    other: list[bytes] = []
    await tb.subscribe("jobs", lambda ev: other.append(ev.message.body), queue="g")
    for body in bodies(10):
        await tb.publish("jobs", body)
    assert (it.pending, it.held) == (2, 3)  # round robin: 5 each
    async for ev in it:
        assert ev.message.body == b"m0"
        break  # not acked: m0 fails too
    await tb.flush()
    assert it.closed
    assert sorted(other) == sorted(bodies(10))
    assert tb.route_count("jobs") == 1


async def test_iteration_ends_on_disconnect() -> None:
    tb = TestBroker()
    await tb.connect()
    it = await tb.subscribe("t")
    task = asyncio.create_task(it.next())
    await asyncio.sleep(0.01)
    await tb.disconnect()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 5)


async def test_concurrency_one_keeps_order_and_a_failure_is_retried_in_place(tb: TestBroker) -> None:
    done: list[bytes] = []
    failed_once: set[bytes] = set()

    async def handler(ev: Event) -> None:
        body = ev.message.body
        if body == b"m1" and body not in failed_once:
            failed_once.add(body)
            raise ValueError("once")
        await asyncio.sleep(0)
        done.append(body)

    await tb.subscribe("t", handler)
    for body in bodies(4):
        await tb.publish("t", body)
    with pytest.raises(ValueError, match="once"):
        await tb.flush()
    assert done == bodies(4)


async def test_a_leaving_queue_members_messages_wait_for_the_groups_next_member(tb: TestBroker) -> None:
    # as the real broker: with no other member, what the member still had waits in the backlog
    # for the group, and the topic's broadcast subscriptions are not sent it again
    release = asyncio.Event()
    broadcast: list[bytes] = []
    late_broadcast: list[bytes] = []
    successor: list[bytes] = []

    async def slow(ev: Event) -> None:
        await release.wait()

    a = await tb.subscribe("t", slow, queue="q")
    await tb.subscribe("t", lambda ev: broadcast.append(ev.message.body))
    for body in bodies(3):
        await tb.publish("t", body)
    await asyncio.sleep(0.01)
    await a.unsubscribe()
    await tb.flush()
    assert broadcast == bodies(3)
    assert (tb.stats()["backlog"], tb.stats()["dropped"]) == (3, 0)
    await tb.subscribe("t", lambda ev: late_broadcast.append(ev.message.body))
    await tb.flush()
    assert late_broadcast == [] and tb.stats()["backlog"] == 3, "owed to the group, not to a new broadcast subscription"
    await tb.subscribe("t", lambda ev: successor.append(ev.message.body), queue="q")
    await tb.flush()
    assert successor == bodies(3)
    assert broadcast == bodies(3) and late_broadcast == []
    assert tb.stats()["backlog"] == 0
