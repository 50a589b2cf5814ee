"""One :class:`~hyperbroker.testing.TestBroker` subscription: its queue of deliveries and the
runner tasks that work through it.

A :class:`TestSubscriber` keeps arrival order with one runner (``concurrency=N``: up to N
runners, order not kept). What an attempt means (handler call, retries, give-up, counters) is
the broker's: each runner hands a delivery to the ``deliver`` callable it was made with and
learns whether it was settled. When the subscription ends, what it still holds goes to the
broker's ``orphan`` callable once its last runner is gone; ``unsubscribe()`` is the broker's
``unsubscribe`` callable.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .iteration import IterSubscriber
from .message import Handler, Message
from .subscriber import SubscribeOptions

__all__ = ["Delivery", "TestSubscriber"]


@dataclass(slots=True)
class Delivery:
    """One message on its way to one subscription, with its failed attempts so far."""

    topic: str
    header: dict[str, str] | None
    body: bytes
    attempts: int = 0
    last_error: str | None = None
    #: in the backlog: the queue group it waits for (its member left and the group had no
    #: other), not sent to the topic's other subscriptions; None: every subscription
    owed_to: str | None = None

    def message(self) -> Message:
        return Message(dict(self.header) if self.header else {}, self.body)


class TestSubscriber:
    """A TestBroker subscription: ``.id``, ``.topic``, ``.options``, ``.queue``,
    ``.max_deliveries``, ``await .unsubscribe()``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        id: str,
        topic: str,
        handler: Handler | None,
        options: SubscribeOptions,
        max_deliveries: int | None,
        deliver: Callable[[TestSubscriber, Delivery], Awaitable[bool]],
        orphan: Callable[[TestSubscriber], None],
        unsubscribe: Callable[[TestSubscriber], Awaitable[None]],
    ) -> None:
        self.id = id
        self.topic = topic
        self.options = options
        self.max_deliveries = max_deliveries
        #: without a handler: the iterator the consumer reads (the broker feeds it)
        self.iterator: IterSubscriber | None = None
        self._handler = handler
        self._deliver = deliver
        self._orphan = orphan
        self._unsubscribe = unsubscribe
        self._queue: deque[Delivery] = deque()
        #: the runner tasks (at most ``options.concurrency``)
        self._runners: set[asyncio.Task[None]] = set()
        self._active = True

    @property
    def queue(self) -> str | None:
        return self.options.queue

    @property
    def handler(self) -> Handler | None:
        """The handler (None for an iterated subscription)."""
        return self._handler

    @property
    def active(self) -> bool:
        """False once the subscription ended (unsubscribed, or its broker disconnected)."""
        return self._active

    async def unsubscribe(self) -> None:
        """Stop receiving. Messages queued for this subscription go to another member of its
        queue group, or are dropped (counted). Idempotent."""
        await self._unsubscribe(self)

    def __repr__(self) -> str:
        return f"TestSubscriber(id={self.id!r}, topic={self.topic!r}, queue={self.options.queue!r})"

    # --- used by the broker ---------------------------------------------------------------------

    def enqueue(self, d: Delivery) -> None:
        """Queue ``d`` and start a runner when fewer than ``concurrency`` run."""
        self._queue.append(d)
        if len(self._runners) < self.options.concurrency:
            runner = asyncio.get_running_loop().create_task(self._run(), name=f"test-broker-{self.id}")
            self._runners.add(runner)

    async def end(self, reason: str) -> bool:
        """End the subscription: an iterator's pending events fail with ``reason``; the other
        runners are cancelled and awaited (what they held goes back to the head of the queue).
        True when called from one of its own runners (a handler that unsubscribed): that runner
        hands the rest over when it returns."""
        self._active = False
        if self.iterator is not None:
            self.iterator.fail_pending(reason)
        me = asyncio.current_task()
        others = [r for r in self._runners if r is not me]
        for r in others:
            r.cancel()
        for r in others:
            try:
                await r
            except asyncio.CancelledError:
                pass
        return me in self._runners

    def take_queued(self) -> list[Delivery]:
        """What is queued and not running, removed from the queue."""
        left = list(self._queue)
        self._queue.clear()
        return left

    async def _run(self) -> None:
        """One runner: takes deliveries from the head of the queue, one at a time, each handed to
        ``deliver`` until it is settled; one cut short goes back to the head of the queue."""
        try:
            while self._queue and self._active:
                d = self._queue.popleft()
                settled = False
                try:
                    settled = await self._deliver(self, d)
                finally:
                    if not settled:
                        self._queue.appendleft(d)  # cut short: handed over with the rest
        finally:
            self._runners.discard(asyncio.current_task())
            if not self._active and self._queue and not self._runners:
                self._orphan(self)
