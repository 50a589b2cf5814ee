"""Subscriber.deliver_batch and the runner behind it, without a network or an engine.

A Subscriber is built with a ``complete`` callable that records what the runner settles; events
are stand-ins carrying a distinct delivery token each, so every report names its message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import pytest
from brokers import until

from hyperbroker import Event, Message
from hyperbroker._dispatch import dispatch
from hyperbroker.subscriber import Result, SubscribeOptions, Subscriber, describe

pytestmark = pytest.mark.timeout(30)

NO_ACK = "handler returned without ack() (auto_ack=False): the message will be redelivered"


class FakeEvent:
    """What deliver_batch and a handler use of an Event, with a token of our choosing."""

    def __init__(self, token: int, body: bytes) -> None:
        self._token = token
        self.message = Message(body=body)
        self.acked = False

    def ack(self) -> None:
        self.acked = True


def events(n: int, first: int = 1) -> list[Event]:
    return cast(list[Event], [FakeEvent(first + i, f"m{first + i}".encode()) for i in range(n)])


class Harness:
    """A subscriber on a recording ``complete``; ``deliver`` runs one batch and returns what it
    reported at once: (failures, deferred)."""

    def __init__(self, handler: Callable[[Event], Any], auto_ack: bool = True) -> None:
        self.completed: list[Result] = []
        self.complete_calls = 0
        self.unsubscribed: list[Subscriber] = []
        self.sub = Subscriber(
            "hb-test",
            "t",
            handler,
            SubscribeOptions(auto_ack=auto_ack),
            complete=self._complete,
            unsubscribe=self._unsubscribe,
        )

    def _complete(self, results: list[Result]) -> None:
        self.complete_calls += 1
        self.completed.extend(results)

    async def _unsubscribe(self, sub: Subscriber) -> None:
        self.unsubscribed.append(sub)

    def deliver(self, evs: Sequence[Event]) -> tuple[list[tuple[int, str]], list[int]]:
        failures: list[tuple[int, str]] = []
        deferred: list[int] = []
        self.sub.deliver_batch(evs, failures, deferred)
        return failures, deferred

    async def settled(self, n: int) -> list[Result]:
        await until(lambda: len(self.completed) >= n, 5, f"{n} deliveries settled")
        return self.completed


def bodies(seen: list[Event]) -> list[bytes]:
    return [e.message.body for e in seen]


# --- a plain function with auto-ack: inline ------------------------------------------------------


async def test_inline_handler_runs_every_event_before_deliver_batch_returns() -> None:
    seen: list[Event] = []
    h = Harness(seen.append)
    evs = events(5)
    assert h.deliver(evs) == ([], [])
    assert seen == evs
    await asyncio.sleep(0.01)
    assert h.completed == [] and h.complete_calls == 0


async def test_inline_handler_failures_name_the_message_and_the_exception() -> None:
    def handler(ev: Event) -> None:
        n = int(ev.message.body[1:])
        if n == 2:
            raise ValueError("bad body")
        if n == 4:
            raise KeyError("k")
        if n == 5:
            raise RuntimeError()

    h = Harness(handler)
    failures, deferred = h.deliver(events(5))
    assert failures == [(2, "ValueError: bad body"), (4, "KeyError: 'k'"), (5, "RuntimeError")]
    assert deferred == []


def test_describe_is_type_and_text() -> None:
    assert describe(ValueError("x y")) == "ValueError: x y"
    assert describe(TimeoutError()) == "TimeoutError"


async def test_interrupted_batch_fails_what_did_not_finish_and_propagates() -> None:
    seen: list[Event] = []

    def handler(ev: Event) -> None:
        if ev.message.body == b"m3":
            raise KeyboardInterrupt
        seen.append(ev)

    h = Harness(handler)
    failures: list[tuple[int, str]] = []
    deferred: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        h.sub.deliver_batch(events(5), failures, deferred)
    assert bodies(seen) == [b"m1", b"m2"]
    assert failures == [(3, "handler interrupted"), (4, "handler interrupted"), (5, "handler interrupted")]
    assert deferred == []


# --- async handlers: one runner per subscriber, in order -----------------------------------------


async def test_async_handler_runs_in_arrival_order_and_settles_through_complete() -> None:
    seen: list[Event] = []

    async def handler(ev: Event) -> None:
        n = int(ev.message.body[1:])
        await asyncio.sleep(0.002 * (5 - n % 5))  # earlier messages sleep longer
        if n == 3:
            raise ValueError("three")
        seen.append(ev)

    h = Harness(handler)
    evs = events(4)
    failures, deferred = h.deliver(evs)
    assert failures == [] and deferred == [1, 2, 3, 4]
    assert seen == []  # nothing ran yet: the runner runs them
    failures, deferred = h.deliver(events(2, first=5))  # a second batch queues behind the first
    assert deferred == [5, 6]
    assert await h.settled(6) == [(1, None), (2, None), (3, "ValueError: three"), (4, None), (5, None), (6, None)]
    assert bodies(seen) == [b"m1", b"m2", b"m4", b"m5", b"m6"]


async def test_async_callable_object_is_run_as_async() -> None:
    class Handler:
        def __init__(self) -> None:
            self.seen: list[bytes] = []

        async def __call__(self, ev: Event) -> None:
            self.seen.append(ev.message.body)

    handler = Handler()
    h = Harness(handler)
    assert h.deliver(events(2)) == ([], [1, 2])
    assert await h.settled(2) == [(1, None), (2, None)]
    assert handler.seen == [b"m1", b"m2"]


async def test_long_async_run_settles_in_chunks_and_yields_to_the_loop() -> None:
    ticks = 0
    seen_ticks: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def handler(ev: Event) -> None:
        seen_ticks.append(ticks)  # never suspends: only the runner's own yield lets the ticker run

    h = Harness(handler)
    t = asyncio.create_task(ticker())
    try:
        h.deliver(events(1100))
        settled = await h.settled(1100)
    finally:
        t.cancel()
    assert [tok for tok, _ in settled] == list(range(1, 1101))
    assert h.complete_calls == 3  # 512 + 512 + 76
    assert seen_ticks[0] == seen_ticks[511] < seen_ticks[512] == seen_ticks[1023] < seen_ticks[1024]


# --- a plain function that returns an awaitable --------------------------------------------------


async def test_sync_handler_returning_an_awaitable_keeps_later_events_in_order() -> None:
    seen: list[bytes] = []

    async def slow(ev: Event) -> None:
        await asyncio.sleep(0.02)
        seen.append(ev.message.body)

    def handler(ev: Event) -> Awaitable[None] | None:
        if ev.message.body in (b"m2", b"m4"):
            return slow(ev)  # finishes later; what follows must wait behind it
        seen.append(ev.message.body)
        return None

    h = Harness(handler)
    failures, deferred = h.deliver(events(5))
    assert failures == []
    assert seen == [b"m1"]  # m1 ran inline, m2 returned an awaitable, m3.. wait behind it
    assert deferred == [2, 3, 4, 5]
    assert await h.settled(4) == [(2, None), (3, None), (4, None), (5, None)]
    assert seen == [b"m1", b"m2", b"m3", b"m4", b"m5"]
    # once the queue is empty, a plain event runs inline again
    assert h.deliver(events(1, first=6)) == ([], [])
    assert seen[-1] == b"m6"


async def test_awaitable_that_fails_reports_its_exception() -> None:
    async def boom() -> None:
        raise OSError("disk gone")

    h = Harness(lambda ev: boom())
    assert h.deliver(events(1)) == ([], [1])
    assert await h.settled(1) == [(1, "OSError: disk gone")]


# --- auto_ack=False -------------------------------------------------------------------------------


async def test_manual_ack_sync_handler_without_ack_is_redelivered() -> None:
    def handler(ev: Event) -> None:
        if ev.message.body != b"m2":
            ev.ack()

    h = Harness(handler, auto_ack=False)
    assert h.deliver(events(3)) == ([(2, NO_ACK)], [])


async def test_manual_ack_async_handler_without_ack_is_redelivered() -> None:
    async def handler(ev: Event) -> None:
        if ev.message.body == b"m1":
            ev.ack()

    h = Harness(handler, auto_ack=False)
    assert h.deliver(events(2)) == ([], [1, 2])
    assert await h.settled(2) == [(1, None), (2, NO_ACK)]


async def test_manual_ack_handler_returning_an_awaitable_is_checked_after_it() -> None:
    async def later(ev: Event) -> None:
        await asyncio.sleep(0)
        ev.ack()

    h = Harness(lambda ev: later(ev) if ev.message.body == b"m1" else None, auto_ack=False)
    assert h.deliver(events(2)) == ([], [1, 2])
    assert await h.settled(2) == [(1, None), (2, NO_ACK)]


# --- closing --------------------------------------------------------------------------------------


async def test_fail_pending_fails_the_queue_and_stops_the_runner() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    seen: list[bytes] = []

    async def handler(ev: Event) -> None:
        started.set()
        await release.wait()
        seen.append(ev.message.body)

    h = Harness(handler)
    h.deliver(events(3))
    await asyncio.wait_for(started.wait(), 5)
    h.sub.fail_pending("subscriber unsubscribed")
    settled = await h.settled(3)
    assert sorted(settled) == [
        (1, "subscriber closing"),
        (2, "subscriber unsubscribed"),
        (3, "subscriber unsubscribed"),
    ]
    release.set()
    await asyncio.sleep(0.01)
    assert seen == []
    h.sub.fail_pending("again")  # nothing left: nothing reported
    assert len(h.completed) == 3


async def test_unsubscribe_calls_the_callable_it_was_built_with() -> None:
    h = Harness(lambda ev: None)
    await h.sub.unsubscribe()
    assert h.unsubscribed == [h.sub]


# --- the broker's split of one wake-up's batch by subscriber -----------------------------------------


async def test_dispatch_gives_each_subscriber_its_runs_in_order() -> None:
    a: list[bytes] = []
    b: list[bytes] = []
    ha = Harness(lambda ev: a.append(ev.message.body))
    hb = Harness(lambda ev: b.append(ev.message.body))
    subs = {"A": ha.sub, "B": hb.sub}
    evs = events(7)
    ids = ["A", "A", "B", "gone", "A", "B", "B"]
    failures: list[tuple[int, str]] = []
    deferred: list[int] = []
    dispatch(subs, ids, evs, failures, deferred)
    assert a == [b"m1", b"m2", b"m5"]
    assert b == [b"m3", b"m6", b"m7"]
    assert failures == [(4, "subscriber is gone")]
    assert deferred == []


async def test_dispatch_interrupted_fails_the_rest_of_the_batch() -> None:
    def a(ev: Event) -> None:
        if ev.message.body == b"m2":
            raise KeyboardInterrupt

    b: list[bytes] = []
    subs = {"A": Harness(a).sub, "B": Harness(lambda ev: b.append(ev.message.body)).sub}
    failures: list[tuple[int, str]] = []
    with pytest.raises(KeyboardInterrupt):
        dispatch(subs, ["A", "A", "A", "B", "B"], events(5), failures, [])
    assert b == []
    assert [tok for tok, _ in failures] == [2, 3, 4, 5]
    assert {text for _, text in failures} == {"handler interrupted"}
