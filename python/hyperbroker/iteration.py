"""IterSubscriber: a subscription without a handler, consumed with ``async for`` or ``next()``.

``sub = await broker.subscribe(topic, queue=None, max_pending=100)`` returns one. It owns a
bounded buffer of received events and the rule of when each is settled:

- an event is settled when the consumer asks for the next one (``async for`` does): handled
  with ``auto_ack=True`` or when ``event.ack()`` was called, otherwise failed, so its publisher
  delivers it again (as a handler that returned without ``ack()``);
- until then its publisher waits for the answer: nothing received is dropped, and a slow
  consumer slows its publishers down (back-pressure) instead of growing a queue;
- at most ``max_pending`` events wait in the buffer for the consumer (``.pending``); events
  that arrive beyond it are *held* (``.held``): their HTTP request stays unanswered until they
  move into the buffer, which bounds them by what publishers send before an answer (one batch
  per publisher and subscription with the default ``node_inflight=1``);
- the subscription ends when the ``async for`` loop is left (``break``, an exception), on
  ``unsubscribe()`` or on disconnect: what was not settled fails and is delivered elsewhere.

The Broker feeds it through ``deliver_batch``; the TestBroker through ``push`` with tokens of
its own. Both read outcomes through the ``complete`` callable. It knows nothing else of either.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from .message import Event
from .subscriber import Complete, Reply, Result, SubscribeOptions, SubscriptionBase, Unsubscribe

__all__ = ["IterSubscriber"]

NOT_ACKED = "event not acknowledged (auto_ack=False): the message will be redelivered"
LEFT_LOOP = "the consumer left the loop before taking the next event"


class IterSubscriber(SubscriptionBase):
    """A handler-less subscription: an async iterator of :class:`Event` with a bounded buffer.

    ``async for event in sub`` (leaving the loop ends the subscription), or
    ``await sub.next(timeout=...)``. See the module docstring for when events are acknowledged.
    """

    __slots__ = ("_buffer", "_closed", "_current", "_held", "_loop", "_results", "_waiter")

    def __init__(
        self, id: str, topic: str, options: SubscribeOptions, *, complete: Complete, unsubscribe: Unsubscribe
    ) -> None:
        super().__init__(id, topic, options, complete=complete, unsubscribe=unsubscribe)
        #: events ready for the consumer: (token, event), at most ``max_pending``
        self._buffer: deque[tuple[int, Event]] = deque()
        #: events beyond the buffer, whose publishers wait for an answer
        self._held: deque[tuple[int, Event]] = deque()
        #: the event last handed to the consumer, settled when it asks for the next one
        self._current: tuple[int, Event] | None = None
        #: outcomes not reported yet (reported once per loop iteration, or when the consumer waits)
        self._results: list[Result] = []
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # --- what the consumer sees ---------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Events in the buffer, ready for the consumer (never more than ``max_pending``)."""
        return len(self._buffer)

    @property
    def held(self) -> int:
        """Events received beyond the buffer, their publishers still waiting for an answer."""
        return len(self._held)

    @property
    def closed(self) -> bool:
        """True once the subscription ended (the loop was left, unsubscribe, disconnect)."""
        return self._closed

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[Event, None]:
        # a generator, so that leaving ``async for`` (which drops it: the loop's asyncgen hooks
        # then aclose() it) ends the subscription
        try:
            while True:
                try:
                    ev = await self.next()
                except StopAsyncIteration:
                    return
                yield ev
        finally:
            if not self._closed:
                try:
                    await self.unsubscribe()  # deregister first, so the retries go elsewhere
                finally:
                    self._end(LEFT_LOOP)

    async def __anext__(self) -> Event:
        return await self.next()

    async def next(self, timeout: float | None = None) -> Event:
        """Settle the previous event and return the next one, waiting up to ``timeout`` seconds
        (None: no limit) for it. Raises :class:`TimeoutError` when none came in time, and
        :class:`StopAsyncIteration` once the subscription ended."""
        self._settle_current()
        while not self._buffer:
            if self._closed:
                self._report()
                raise StopAsyncIteration
            self._report()  # the consumer is about to wait: let the publishers know now
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    await asyncio.wait_for(waiter, timeout)
            finally:
                self._waiter = None
        item = self._buffer.popleft()
        if self._held:
            self._buffer.append(self._held.popleft())
        self._current = item
        return item[1]

    async def __aenter__(self) -> IterSubscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unsubscribe()

    # --- the broker's side (package-internal) -------------------------------------------------------

    def deliver_batch(
        self,
        events: Sequence[Event],
        failures: list[tuple[int, str]],
        deferred: list[int],
        replies: list[Reply] | None = None,
    ) -> None:
        """Buffer ``events``; every one is settled later (through ``complete``). An iterated
        subscription has no handler, so it never replies (``replies`` is left alone)."""
        if self._closed:
            failures.extend((ev._token, "subscriber is gone") for ev in events)
            return
        for ev in events:
            deferred.append(ev._token)
            self.push(ev._token, ev)

    def push(self, token: int, ev: Event) -> None:
        """One received event under ``token`` (how its outcome is reported)."""
        if self._closed:
            self._complete([(token, "subscriber is gone")])
            return
        if len(self._buffer) < self.options.max_pending and not self._held:
            self._buffer.append((token, ev))
        else:
            self._held.append((token, ev))
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def fail_pending(self, reason: str) -> None:
        """The subscription ends: fail what was not settled and wake the consumer (it stops)."""
        self._end(reason)

    # --- settling -----------------------------------------------------------------------------------

    def _settle_current(self) -> None:
        cur, self._current = self._current, None
        if cur is None:
            return
        token, ev = cur
        self._results.append((token, None if self.options.auto_ack or ev.acked else NOT_ACKED))
        if len(self._results) == 1:
            # report once this loop iteration ends (a consumer that never waits still answers)
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._report)

    def _report(self) -> None:
        results, self._results = self._results, []
        if results:
            self._complete(results)

    def _end(self, reason: str) -> None:
        """Close: the event in the consumer's hands counts as handled only if it was acked."""
        if self._closed:
            return
        self._closed = True
        cur, self._current = self._current, None
        if cur is not None:
            self._results.append((cur[0], None if cur[1].acked else reason))
        self._results.extend((t, reason) for t, _ in self._buffer)
        self._results.extend((t, reason) for t, _ in self._held)
        self._buffer.clear()
        self._held.clear()
        self._report()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
