"""Subscriber: one subscription's handle, and the code that runs its handler in arrival order
(or up to ``concurrency`` async handler calls at once).

The Broker hands each batch of received events to :meth:`Subscriber.deliver_batch` and settles
what it reports; the Subscriber settles what it finished later (async handlers) through the
``complete`` callable it was built with. It knows nothing else of the Broker. A handler's
return value that is not None is the reply to the delivery (request/reply): it is reported as
(event, value) next to the outcomes, only for deliveries that succeeded.
:class:`SubscriptionBase` is what the Broker needs of any subscription (the handler-less,
iterated kind lives in ``iteration.py``).
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import BrokerError
from .message import Event, Handler

__all__ = ["SubscribeOptions", "Subscriber", "SubscriptionBase"]

#: after this many events in a row, an async runner yields to the loop once
_YIELD_EVERY = 512

#: (delivery token, None when handled / the failure text): how a delivery ends
Result = tuple[int, str | None]
#: (the event, the handler's return value): a reply to a delivery that succeeded
Reply = tuple[Event, object]


class Complete(Protocol):
    """Settles deliveries that ended after ``deliver_batch`` returned (the engine's ``complete``);
    ``replies`` is passed only when some handler returned a value."""

    def __call__(self, results: list[Result], replies: list[Reply] = ..., /) -> None: ...


#: ends a subscription (the broker's side of ``Subscriber.unsubscribe``)
Unsubscribe = Callable[["SubscriptionBase"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """Options of one subscription (go-micro's ``SubscribeOptions``)."""

    queue: str | None = None
    auto_ack: bool = True
    #: failed handler attempts after which publishers give a message up for this subscription
    #: (announced in the registry; None: each publisher's own ``max_deliveries``)
    max_deliveries: int | None = None
    #: async handler calls of this subscription that may run at once (1 keeps arrival order)
    concurrency: int = 1
    #: an iterated subscription's buffer bound (events ready for the consumer)
    max_pending: int = 100

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_pending"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BrokerError(f"{name} must be a positive integer, got {v!r}")


def describe(exc: BaseException) -> str:
    """How a handler's exception is reported to the publisher: ``Type: text``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SubscriptionBase:
    """What every subscription has (``.id``, ``.topic``, ``.options``, ``.queue``,
    ``await .unsubscribe()``) and what the Broker calls on it."""

    __slots__ = ("_complete", "_unsubscribe", "id", "options", "topic")

    def __init__(
        self, id: str, topic: str, options: SubscribeOptions, *, complete: Complete, unsubscribe: Unsubscribe
    ) -> None:
        self.id = id
        self.topic = topic
        self.options = options
        self._complete = complete
        self._unsubscribe = unsubscribe

    @property
    def queue(self) -> str | None:
        return self.options.queue

    async def unsubscribe(self) -> None:
        """Stop receiving: deregister from the registry and drop the subscription. Idempotent."""
        await self._unsubscribe(self)

    def deliver_batch(
        self,
        events: Sequence[Event],
        failures: list[tuple[int, str]],
        deferred: list[int],
        replies: list[Reply] | None = None,
    ) -> None:
        """Take ``events`` (this subscription's, in arrival order): failed ones go into
        ``failures``, ones settled later through ``complete`` into ``deferred``, replies of
        succeeded ones into ``replies`` (when given)."""
        raise NotImplementedError  # abstract: Subscriber and IterSubscriber deliver their own way

    def fail_pending(self, reason: str) -> None:
        """The subscription ends: fail (through ``complete``) whatever it has not settled."""
        raise NotImplementedError  # abstract: each subclass knows what it holds

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, topic={self.topic!r}, queue={self.options.queue!r})"


class Subscriber(SubscriptionBase):
    """A live subscription with a handler. ``await sub.unsubscribe()`` ends it."""

    __slots__ = ("_handler", "_inline", "_is_async", "_pending", "_runners")

    def __init__(
        self,
        id: str,
        topic: str,
        handler: Handler,
        options: SubscribeOptions,
        *,
        complete: Complete,
        unsubscribe: Unsubscribe,
    ) -> None:
        super().__init__(id, topic, options, complete=complete, unsubscribe=unsubscribe)
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__  # an object whose __call__ is `async def`
        )
        #: a plain function with auto-ack: it runs right in deliver_batch's loop
        self._inline = not self._is_async and options.auto_ack
        #: events (or awaitables a plain handler returned) waiting for the runner, in order
        self._pending: deque[tuple[int, Event | _AwaitingEvent]] = deque()
        #: the runner tasks working through ``_pending`` (at most ``options.concurrency``)
        self._runners: set[asyncio.Task[None]] = set()

    # --- the broker's side (package-internal) -----------------------------------------------------

    def deliver_batch(
        self,
        events: Sequence[Event],
        failures: list[tuple[int, str]],
        deferred: list[int],
        replies: list[Reply] | None = None,
    ) -> None:
        """Run the handler for ``events`` (this subscriber's, in arrival order), on the loop.

        A delivery that ended here and failed goes into ``failures`` as (token, text); one that
        ends later (async handler, or a plain one that returned an awaitable) goes into
        ``deferred`` and is settled through ``complete`` once the runner task finished it; the
        rest succeeded, and those whose handler returned a value go into ``replies`` (when
        given) as (event, value). If the loop is interrupted (KeyboardInterrupt...), the events
        that did not finish go into ``failures`` before the exception propagates.
        """
        it = iter(events)
        ev: Event | None = None
        try:
            if self._inline and not self._pending:
                # the hot path: a plain function with auto-ack, nothing but the handler per event
                handler = self._handler
                for ev in it:
                    try:
                        r = handler(ev)
                    except Exception as e:
                        failures.append((ev._token, describe(e)))
                    else:
                        if r is not None:
                            if inspect.isawaitable(r):
                                # it finishes in the runner; what follows waits behind it, in order
                                deferred.append(ev._token)
                                self._enqueue(ev._token, _AwaitingEvent(ev, r))
                                break
                            if replies is not None:
                                replies.append((ev, r))
                ev = None
            for ev in it:
                self._deliver(ev, failures, deferred, replies)
            ev = None
        except BaseException:
            if ev is not None:
                failures.append((ev._token, "handler interrupted"))
            failures.extend((rest._token, "handler interrupted") for rest in it)
            raise

    def fail_pending(self, reason: str) -> None:
        """Fail what still waits for the handler with ``reason`` and stop the runner."""
        failed: list[Result] = [(t, reason) for t, _ in self._pending]
        self._pending.clear()
        for runner in self._runners:
            runner.cancel()
        if failed:
            self._complete(failed)

    # --- running the handler ------------------------------------------------------------------------

    def _deliver(
        self, ev: Event, failures: list[tuple[int, str]], deferred: list[int], replies: list[Reply] | None
    ) -> None:
        """One event off the hot path: queued behind earlier ones, or run now when nothing waits."""
        token = ev._token
        if self._is_async or self._pending:
            deferred.append(token)
            self._enqueue(token, ev)
            return
        try:
            r = self._handler(ev)
        except Exception as e:
            failures.append((token, describe(e)))
            return
        if r is not None and inspect.isawaitable(r):
            deferred.append(token)
            self._enqueue(token, _AwaitingEvent(ev, r))
            return
        err = self._outcome(ev)
        if err is not None:
            failures.append((token, err))
        elif r is not None and replies is not None:
            replies.append((ev, r))

    def _outcome(self, ev: Event) -> str | None:
        if not self.options.auto_ack and not ev.acked:
            return "handler returned without ack() (auto_ack=False): the message will be redelivered"
        return None

    def _enqueue(self, token: int, item: Event | _AwaitingEvent) -> None:
        self._pending.append((token, item))
        if len(self._runners) < self.options.concurrency:
            runner = asyncio.get_running_loop().create_task(self._run_pending())
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)

    async def _run_pending(self) -> None:
        """Run what waits in ``_pending``, one at a time; with ``concurrency`` > 1 several of these
        runners share the queue (so handler calls overlap and finish out of order)."""
        complete, handler, is_async = self._complete, self._handler, self._is_async
        results: list[Result] = []
        replies: list[Reply] = []
        n = 0
        try:
            while self._pending:
                token, item = self._pending.popleft()
                try:
                    if isinstance(item, _AwaitingEvent):
                        ev = item.event
                        r = await item.awaitable
                    elif is_async:
                        ev = item
                        r = await handler(ev)
                    else:  # a plain handler queued behind an awaitable: run it in its turn
                        ev = item
                        r = handler(ev)
                        if r is not None and inspect.isawaitable(r):
                            r = await r
                    err = self._outcome(ev)
                    results.append((token, err))
                    if err is None and r is not None:
                        replies.append((ev, r))
                except asyncio.CancelledError:
                    results.append((token, "subscriber closing"))
                    raise
                except Exception as e:
                    results.append((token, describe(e)))
                n += 1
                if n % _YIELD_EVERY == 0:
                    _settle(complete, results, replies)
                    results, replies = [], []
                    await asyncio.sleep(0)
        finally:
            # leave the set now, not in a later done-callback: an event enqueued in between must
            # find room for a new runner
            self._runners.discard(asyncio.current_task())
            if results:
                _settle(complete, results, replies)


def _settle(complete: Complete, results: list[Result], replies: list[Reply]) -> None:
    if replies:
        complete(results, replies)
    else:
        complete(results)


class _AwaitingEvent:
    """An event whose plain handler returned an awaitable: the runner awaits it in its turn."""

    __slots__ = ("awaitable", "event")

    def __init__(self, event: Event, awaitable: Awaitable[Any]) -> None:
        self.event = event
        self.awaitable = awaitable
