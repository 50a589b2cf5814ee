"""Subscriber: one subscription's handle, and the code that runs its handler in arrival order."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .message import Event, Handler

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["Subscriber", "SubscribeOptions"]

#: after this many events in a row, an async runner yields to the loop once
_YIELD_EVERY = 512

Complete = Callable[[list[tuple[int, str | None]]], None]


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """Options of one subscription (go-micro's ``SubscribeOptions``)."""

    queue: str | None = None
    auto_ack: bool = True
    #: failed handler attempts after which publishers give a message up for this subscription
    #: (announced in the registry; None: each publisher's own ``max_deliveries``)
    max_deliveries: int | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Subscriber:
    """A live subscription. ``await sub.unsubscribe()`` ends it."""

    __slots__ = ("id", "topic", "options", "_broker", "_handler", "_is_async", "_inline", "_pending", "_runner", "_active")

    def __init__(self, broker: Broker, id: str, topic: str, handler: Handler, options: SubscribeOptions) -> None:
        self.id = id
        self.topic = topic
        self.options = options
        self._broker = broker
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)
        )
        #: a plain function with auto-ack: the broker runs it inline in its batch loop
        self._inline = not self._is_async and options.auto_ack
        self._pending: deque[tuple[int, Event | _AwaitingEvent]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._active = True

    @property
    def queue(self) -> str | None:
        return self.options.queue

    async def unsubscribe(self) -> None:
        """Stop receiving: deregister from the registry and drop the subscription. Idempotent."""
        await self._broker._unsubscribe(self)

    def _outcome(self, ev: Event, result: Any) -> str | None:
        if not self.options.auto_ack and not ev.acked:
            return "handler returned without ack() (auto_ack=False): the message will be redelivered"
        return None

    def _deliver(self, ev: Event, failures: list[tuple[int, str]], deferred: list[int]) -> None:
        """Run the handler for one event (called on the loop from the broker's batch drain).

        Plain functions run inline; a failure goes into ``failures``. Coroutine functions run in
        one runner task per subscriber that works through the queue in order; their tokens go
        into ``deferred`` and are settled by the runner.
        """
        token = ev._token
        if self._is_async or self._pending:
            deferred.append(token)
            self._pending.append((token, ev))
            if self._runner is None:
                self._runner = asyncio.get_running_loop().create_task(self._run_pending())
            return
        try:
            r = self._handler(ev)
        except Exception as e:
            failures.append((token, _describe(e)))
            return
        if r is not None and inspect.isawaitable(r):
            deferred.append(token)
            self._defer(token, _AwaitingEvent(ev, r))
            return
        err = self._outcome(ev, r)
        if err is not None:
            failures.append((token, err))

    def _defer_awaitable(self, ev: Event, r: Awaitable[Any]) -> None:
        self._defer(ev._token, _AwaitingEvent(ev, r))

    def _defer(self, token: int, item: _AwaitingEvent) -> None:
        # a plain function that returned an awaitable: finish it in the runner, in order
        self._pending.append((token, item))
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run_pending())

    async def _run_pending(self) -> None:
        complete = self._broker._complete
        results: list[tuple[int, str | None]] = []
        n = 0
        try:
            while self._pending:
                token, ev = self._pending.popleft()
                try:
                    if isinstance(ev, _AwaitingEvent):
                        r = await ev.awaitable
                        ev = ev.event
                    else:
                        r = await self._handler(ev)
                    results.append((token, self._outcome(ev, r)))
                except asyncio.CancelledError:
                    results.append((token, "subscriber closing"))
                    raise
                except Exception as e:
                    results.append((token, _describe(e)))
                n += 1
                if n % _YIELD_EVERY == 0:
                    complete(results)
                    results = []
                    await asyncio.sleep(0)
        finally:
            if results:
                complete(results)
            self._runner = None

    def _fail_pending(self, reason: str) -> list[tuple[int, str | None]]:
        out: list[tuple[int, str | None]] = [(t, reason) for t, _ in self._pending]
        self._pending.clear()
        if self._runner is not None:
            self._runner.cancel()
        return out

    def __repr__(self) -> str:
        return f"Subscriber(id={self.id!r}, topic={self.topic!r}, queue={self.options.queue!r})"


class _AwaitingEvent:
    __slots__ = ("event", "awaitable")

    def __init__(self, event: Event, awaitable: Awaitable[Any]) -> None:
        self.event = event
        self.awaitable = awaitable
