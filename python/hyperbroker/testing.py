"""Testing helpers: :class:`TestBroker`, the Broker API routed in-process, and
:func:`broker_pair`, two real loopback Brokers sharing a :class:`MemoryRegistry`.

This file owns the TestBroker's routing, redelivery, backlog, request/reply and flush semantics;
a subscription's queue and the runners that keep its order are ``_testing_subscriber.py``'s.
It uses the package's public pieces only (``Message``, ``Event``, ``to_wire``, ``BrokerOptions``,
the errors); it has no endpoint, no registry and no sockets.

Semantics, the same as the real broker's (what differs is said so):

- broadcast: every subscription without a queue gets each message; queue group: one member per
  message, round-robin in subscription order.
- each subscription runs its handler (``def`` or ``async def``) for one message at a time, in
  arrival order (``concurrency=N``: up to N at once, order not kept); a fresh native
  :class:`~hyperbroker.Event` per attempt.
- ``subscribe(topic)`` without a handler returns the real broker's
  :class:`~hyperbroker.iteration.IterSubscriber` (``async for``), fed in-process: the same
  buffer bound, acknowledgement and end rules; a failed event is delivered to it again.
- ``@broker.subscriber(topic, ...)`` subscribes the function at ``connect()``, or at once.
- a handler that raises, or returns without ``event.ack()`` under ``auto_ack=False``, fails the
  attempt: the message is delivered again to the same subscription (after ``retry_min`` seconds;
  the real broker backs off up to ``retry_max``) until ``max_deliveries`` attempts failed, then it
  goes to ``on_undeliverable(topic, message, reason)`` and, with ``dead_letter_topic``, is
  published there with ``X-Hyperbroker-*`` headers.
- no subscriber: the message waits in a per-topic backlog of ``backlog`` messages (the newest are
  kept, the dropped counted) and is delivered when a subscription of the topic appears.
- a subscription that ends hands what it still had to another member of its queue group; with
  none left, the messages wait in the backlog for the group's next member (the topic's other
  subscriptions are not sent them again). A broadcast subscription's are dropped (the real
  broker keeps one that no other subscription of the topic has).
- ``flush()`` waits until every handler has finished (messages that handlers published meanwhile
  included) and then re-raises the first exception a handler raised since the last flush (once).
- ``published`` records every ``(topic, Message)`` published, dead letters included.
- ``request(topic, message)`` returns the first non-None handler return value as a Message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import inspect
import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from typing import Any, TypeVar, overload

from ._api import ConnectsInContext, check_queue, check_topic, decorator, decorator_kwargs, wait_for_count
from ._broker_pair import BrokerPair, broker_pair
from ._dispatch import DELIVERIES_HEADER, ERROR_HEADER, NODE_HEADER, ORIGINAL_TOPIC_HEADER, dead_letter_header
from ._testing_subscriber import Delivery, TestSubscriber
from .errors import BrokerError, FlushTimeoutError, NotConnectedError, RequestError, RequestTimeoutError
from .iteration import IterSubscriber
from .message import Event, Handler, Message, to_wire
from .options import BrokerOptions, check_max_deliveries
from .subscriber import Reply, Result, SubscribeOptions, SubscriptionBase, describe

__all__ = [
    "DELIVERIES_HEADER",
    "ERROR_HEADER",
    "NODE_HEADER",
    "ORIGINAL_TOPIC_HEADER",
    "BrokerPair",
    "TestBroker",
    "TestSubscriber",
    "Undeliverable",
    "broker_pair",
]

log = logging.getLogger("hyperbroker.testing")

#: ``on_undeliverable(topic, message, reason)``: a plain function or a coroutine function
Undeliverable = Callable[[str, Message, str], Any]

_NOT_ACKED = "handler returned without ack() (auto_ack=False)"

H = TypeVar("H", bound=Handler)


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET


def _reply_message(value: object) -> Message:
    """A handler's return value as a reply: a Message as is, else what ``publish`` would send."""
    if isinstance(value, Message):
        return value
    header, body = to_wire(value)
    return Message(dict(header) if header else {}, body)


class TestBroker(ConnectsInContext):
    """The Broker API routed in-process, for tests: no endpoint, no registry, no sockets.

    ``TestBroker(**options)`` accepts the Broker's options (network ones are validated and
    ignored; ``max_deliveries``, ``on_undeliverable``, ``dead_letter_topic``, ``backlog``,
    ``retry_min`` and ``disconnect_timeout`` apply) plus ``raise_handler_errors`` (default True:
    ``flush()`` re-raises the first handler exception). See the module docstring for the delivery semantics.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, *, raise_handler_errors: bool = True, **options: Any) -> None:
        self._options = BrokerOptions().replace(**options)
        self._raise_handler_errors = raise_handler_errors
        self._id = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        self._connected = False
        self._subs: dict[str, TestSubscriber] = {}
        self._rr: dict[tuple[str, str], int] = {}
        self._backlog: dict[str, deque[Delivery]] = {}
        self._pending = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._first_error: BaseException | None = None
        self._stats: dict[str, int] = dict.fromkeys(
            (
                "published",
                "delivered",
                "failed",
                "retried",
                "backlogged",
                "dropped",
                "received",
                "handler_errors",
                "rejected",
                "remote_handler_errors",
                "evicted",
                "dead_lettered",
            ),
            0,
        )
        self._last_error: str | None = None
        #: what ``@subscriber`` registered: (topic, handler, subscribe keyword args)
        self._decorated: list[tuple[str, Handler, dict[str, Any]]] = []
        #: attempts handed to iterators, by token
        self._iter_tokens = itertools.count(1)
        self._iter_deliveries: dict[int, tuple[TestSubscriber, Delivery]] = {}
        #: background tasks (decorated subscribes, give-ups of iterated messages)
        self._tasks: set[asyncio.Task[Any]] = set()
        #: every ``(topic, Message)`` published, in order (dead letters and requests included)
        self.published: list[tuple[str, Message]] = []
        #: every exception a handler raised, in order (flush re-raises only the first, once)
        self.errors: list[BaseException] = []

    # --- the Broker interface -----------------------------------------------------------------

    @property
    def options(self) -> BrokerOptions:
        return self._options

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def address(self) -> str:
        """No endpoint: a name for logs."""
        return f"test-broker-{self._id}"

    def __str__(self) -> str:
        return "test"

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<TestBroker {state} subscriptions={len(self._subs)} pending={self._pending}>"

    async def connect(self) -> None:
        """Idempotent; there is nothing to bind. Subscribes what ``@subscriber`` registered."""
        if self._connected:
            return
        self._connected = True
        for topic, handler, kw in self._decorated:
            await self.subscribe(topic, handler, **kw)

    async def disconnect(self, timeout: float | None = None) -> None:
        """Wait for the handlers up to ``timeout`` (default ``disconnect_timeout``), then stop
        every subscription and drop the backlog. Handler errors are not raised here. Idempotent."""
        if not self._connected:
            return
        wait = self._options.disconnect_timeout if timeout is None else timeout
        if wait > 0 and self._pending:
            try:
                await asyncio.wait_for(self._settled.wait(), wait)
            except TimeoutError:
                log.warning("disconnect: %d deliveries still pending are dropped", self._pending)
        self._connected = False
        for sub in list(self._subs.values()):
            await sub.end("subscriber closing")
            self._drop(sub.take_queued())
        self._subs.clear()
        self._iter_deliveries.clear()
        for t in list(self._tasks):
            t.cancel()
        for parked in self._backlog.values():
            if parked:
                log.warning("disconnect: %d message(s) waiting in the backlog are dropped", len(parked))
            self._drop(parked)
        self._backlog.clear()
        self._pending = 0
        self._settled.set()

    def _need(self) -> None:
        if not self._connected:
            raise NotConnectedError("broker is not connected: await broker.connect() first")

    def _check_topic(self, topic: str) -> None:
        check_topic(topic, self._options.max_topic)

    # --- publish ------------------------------------------------------------------------------

    async def publish(self, topic: str, message: object, header: dict[str, str] | None = None) -> None:
        """Queue ``message`` for every subscriber of ``topic`` (handlers run later, on the loop)."""
        self.publish_nowait(topic, message, header)

    def publish_nowait(self, topic: str, message: object, header: dict[str, str] | None = None) -> bool:
        """``publish`` without the coroutine. Never congested: returns False."""
        self._need()
        self._check_topic(topic)
        h, body = to_wire(message, header)
        self._publish(topic, h, body)
        return False

    async def publish_many(self, topic: str, messages: Iterable[object]) -> int:
        """Queue many messages of one topic; returns how many."""
        self._need()
        self._check_topic(topic)
        items = [to_wire(m) for m in messages]
        for h, body in items:
            self._publish(topic, h, body)
        return len(items)

    async def wait_room(self) -> None:
        """Never congested: returns at once."""
        self._need()

    def _publish(self, topic: str, header: dict[str, str] | None, body: bytes) -> None:
        header = dict(header) if header else None
        self.published.append((topic, Message(dict(header) if header else {}, body)))
        self._stats["published"] += 1
        self._route(Delivery(topic, header, body))

    def _route(self, d: Delivery) -> None:
        subs = [s for s in self._subs.values() if s.topic == d.topic]
        if not subs:
            self._park(d)
            return
        groups: dict[str, list[TestSubscriber]] = {}
        for s in subs:
            if s.queue is None:
                self._enqueue(s, dataclasses.replace(d))
            else:
                groups.setdefault(s.queue, []).append(s)
        for queue, members in groups.items():
            self._enqueue(self._pick(d.topic, queue, members), dataclasses.replace(d))

    def _members(self, topic: str, queue: str) -> list[TestSubscriber]:
        return [s for s in self._subs.values() if s.topic == topic and s.queue == queue]

    def _pick(self, topic: str, queue: str, members: list[TestSubscriber]) -> TestSubscriber:
        """Round-robin over the members of one queue group."""
        n = self._rr.get((topic, queue), 0)
        self._rr[(topic, queue)] = n + 1
        return members[n % len(members)]

    def _drain_backlog(self, topic: str) -> None:
        """What waits for ``topic``, in order, to its subscriptions now (a subscription just
        appeared); a message owed to a queue group without a member waits on."""
        parked = self._backlog.pop(topic, None)
        waiting: deque[Delivery] = deque()
        for d in parked or ():
            if d.owed_to is None:
                self._route(d)
            elif members := self._members(topic, d.owed_to):
                self._enqueue(self._pick(topic, d.owed_to, members), dataclasses.replace(d, owed_to=None))
            else:
                waiting.append(d)
        if waiting:
            self._backlog[topic] = waiting

    def _park(self, d: Delivery) -> None:
        parked = self._backlog.setdefault(d.topic, deque())
        if len(parked) >= self._options.backlog:
            parked.popleft()
            self._stats["dropped"] += 1
            self._last_error = f"backlog of {d.topic!r} is full: the oldest message was dropped"
        parked.append(d)
        self._stats["backlogged"] += 1

    def _enqueue(self, sub: TestSubscriber, d: Delivery) -> None:
        self._pending += 1
        self._settled.clear()
        if sub.iterator is not None:
            self._feed(sub, d)
        else:
            sub.enqueue(d)

    def _settle(self, n: int = 1) -> None:
        self._pending -= n
        if self._pending <= 0:
            self._pending = 0
            self._settled.set()

    def _drop(self, items: MutableSequence[Delivery]) -> None:
        """Forget queued deliveries (disconnect): counted as dropped."""
        self._stats["dropped"] += len(items)
        items.clear()

    # --- flush, request, stats ----------------------------------------------------------------

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every handler has finished (retries included), then re-raise the first
        exception a handler raised since the last flush. :class:`FlushTimeoutError` when
        ``timeout`` seconds pass first."""
        self._need()
        if not timeout > 0:
            raise BrokerError(f"timeout must be > 0, got {timeout!r}")
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
        except TimeoutError:
            raise FlushTimeoutError(
                f"flush timed out after {timeout}s with {self._pending} deliveries still pending"
                f" (last error: {self._last_error})"
            ) from None
        err, self._first_error = self._first_error, None
        if err is not None and self._raise_handler_errors:
            raise err

    async def request(
        self, topic: str, message: object, timeout: float = 5.0, header: dict[str, str] | None = None
    ) -> Message:
        """As :meth:`Broker.request`: ``message`` goes to ONE subscription of ``topic`` (in turn
        over the topic's subscriptions with a handler, queue groups and broadcast alike), whose
        handler's return value is the reply (None: an empty :class:`Message`). Waits up to
        ``timeout`` for a subscriber; :class:`RequestTimeoutError` when none appears or the
        handler is slower; :class:`RequestError` (status 500) when the handler raised. A request
        is never retried and is not recorded in ``published``."""
        self._need()
        self._check_topic(topic)
        if not timeout > 0:
            raise BrokerError(f"timeout must be > 0, got {timeout!r}")
        h, body = to_wire(message, header)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            subs = [s for s in self._subs.values() if s.topic == topic and s.handler is not None]
            if subs:
                break
            if loop.time() >= deadline:
                raise RequestTimeoutError(f"no subscriber of {topic!r} answered the request within {timeout}s")
            await asyncio.sleep(0.005)
        n = self._rr.get((topic, "\0request"), 0)
        self._rr[(topic, "\0request")] = n + 1
        sub = subs[n % len(subs)]
        handler = sub.handler
        assert handler is not None
        event = Event(topic, Message(h, body))

        async def call() -> object:
            r = handler(event)
            return await r if inspect.isawaitable(r) else r

        try:
            value = await asyncio.wait_for(call(), max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise RequestTimeoutError(f"no answer to the request on {topic!r} within {timeout}s") from None
        except Exception as e:
            raise RequestError(f"the subscriber's handler raised: {describe(e)}", status=500) from e
        return Message({}, b"") if value is None else _reply_message(value)

    def route_count(self, topic: str) -> int:
        """How many subscriptions of ``topic`` exist (the real broker counts subscriber nodes)."""
        self._need()
        return sum(1 for s in self._subs.values() if s.topic == topic)

    async def wait_for_route(self, topic: str, timeout: float = 5.0) -> int:
        """The subscription count of ``topic``; waits up to ``timeout`` for a first one."""
        return await wait_for_count(lambda: self.route_count(topic), topic, timeout, 0.005)

    def stats(self) -> dict[str, Any]:
        """The real broker's counters (publisher and subscriber sides in one) plus
        ``dead_lettered``; ``in_flight`` is the deliveries not settled yet, ``backlog`` the
        messages parked."""
        if not self._connected:
            return {}
        return {
            **self._stats,
            "in_flight": self._pending,
            "backlog": sum(len(q) for q in self._backlog.values()),
            "last_error": self._last_error,
        }

    # --- subscribe ----------------------------------------------------------------------------

    @overload
    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | _Unset | None = _UNSET,
        *,
        concurrency: int = 1,
    ) -> TestSubscriber: ...

    @overload
    async def subscribe(
        self,
        topic: str,
        handler: None = None,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | _Unset | None = _UNSET,
        *,
        max_pending: int = 100,
    ) -> IterSubscriber: ...

    async def subscribe(
        self,
        topic: str,
        handler: Handler | None = None,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | _Unset | None = _UNSET,
        *,
        concurrency: int = 1,
        max_pending: int = 100,
    ) -> TestSubscriber | IterSubscriber:
        """Call ``handler(event)`` for each message of ``topic``, or without a handler return an
        :class:`IterSubscriber` (``async for``); with ``queue``, the members of the queue group
        get each message once between them. ``max_deliveries`` overrides the broker's for this
        subscription (None = retry forever); ``concurrency`` lets that many handler calls run
        at once."""
        self._need()
        self._check_topic(topic)
        if handler is not None and not callable(handler):
            raise BrokerError(f"handler must be callable, got {type(handler).__name__}")
        check_queue(queue)
        if max_deliveries is _UNSET:
            limit = self._options.max_deliveries
        else:
            check_max_deliveries(max_deliveries)
            limit = max_deliveries
        options = SubscribeOptions(queue=queue, auto_ack=auto_ack, concurrency=concurrency, max_pending=max_pending)
        sub_id = f"hb-test-{self._id}-{next(self._ids)}"
        sub = TestSubscriber(sub_id, topic, handler, options, limit, self._deliver, self._orphan, self._unsubscribe)
        result: TestSubscriber | IterSubscriber = sub
        if handler is None:
            sub.iterator = result = IterSubscriber(
                sub.id, topic, options, complete=self._iter_complete, unsubscribe=self._unsubscribe_iter
            )
        self._subs[sub.id] = sub
        self._drain_backlog(topic)
        return result

    def subscriber(
        self,
        topic: str,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | _Unset | None = _UNSET,
        *,
        concurrency: int = 1,
    ) -> Callable[[H], H]:
        """Decorator, as :meth:`Broker.subscriber`: the function is subscribed at ``connect()``,
        or at once (a task on the running loop) when connected; it is returned unchanged."""
        self._check_topic(topic)
        if max_deliveries is not _UNSET:
            check_max_deliveries(max_deliveries)
        kw = decorator_kwargs(queue, auto_ack, max_deliveries, concurrency)

        def now(handler: Handler) -> None:
            if self._connected:
                t = asyncio.get_running_loop().create_task(self.subscribe(topic, handler, **kw))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

        return decorator(topic, kw, self._decorated, now)

    async def _unsubscribe_iter(self, it: SubscriptionBase) -> None:
        sub = self._subs.get(it.id)
        if sub is not None:
            await self._unsubscribe(sub)

    async def _unsubscribe(self, sub: TestSubscriber) -> None:
        if self._subs.pop(sub.id, None) is None:
            return
        in_own_handler = await sub.end("subscriber unsubscribed")
        if sub.iterator is None and not in_own_handler:
            self._orphan(sub)
        # else: an iterator's events fail on their own; a runner that called this hands the
        # rest over when it returns

    def _orphan(self, sub: TestSubscriber) -> None:
        """Messages left on a subscription that ended: see :meth:`_hand_over`."""
        for d in sub.take_queued():
            self._hand_over(sub, d)

    def _hand_over(self, sub: TestSubscriber, d: Delivery) -> None:
        """One message of a subscription that ended: to another member of its queue group; with
        none, to the backlog, owed to that group; a broadcast subscription's is dropped. Settled
        here either way (re-enqueuing counts it again)."""
        if sub.queue is None or not self._connected:
            self._stats["dropped"] += 1
        elif members := self._members(sub.topic, sub.queue):
            self._enqueue(self._pick(sub.topic, sub.queue, members), d)
        else:
            self._park(dataclasses.replace(d, owed_to=sub.queue))
        self._settle()

    # --- delivery -----------------------------------------------------------------------------

    async def _deliver(self, sub: TestSubscriber, d: Delivery) -> bool:
        """Attempt ``d`` until it is handled or given up (True), or the subscription ended
        (False: the caller hands it over)."""
        while True:
            err = await self._attempt(sub, d)
            if err is None:
                self._stats["delivered"] += 1
                self._settle()
                return True
            if self._failed(sub, d, err):
                try:
                    await self._give_up(sub, d, err)
                finally:
                    self._settle()
                return True
            if not sub.active:
                return False
            self._stats["retried"] += 1
            await asyncio.sleep(self._options.retry_min)
            if not sub.active:
                return False

    def _failed(self, sub: TestSubscriber, d: Delivery, err: str) -> bool:
        """Count a failed attempt; True when it was the last one allowed (``max_deliveries``)."""
        d.attempts += 1
        d.last_error = err
        self._stats["remote_handler_errors"] += 1
        self._last_error = f"{sub.id}: {err}"
        return sub.max_deliveries is not None and d.attempts >= sub.max_deliveries

    # --- delivery to an iterated subscription ---------------------------------------------------

    def _feed(self, sub: TestSubscriber, d: Delivery) -> None:
        """Hand one attempt of ``d`` to the subscription's iterator under a fresh token."""
        assert sub.iterator is not None
        token = next(self._iter_tokens)
        self._iter_deliveries[token] = (sub, d)
        self._stats["received"] += 1
        sub.iterator.push(token, Event(d.topic, d.message()))

    def _iter_complete(self, results: list[Result], replies: Sequence[Reply] = ()) -> None:
        """Outcomes from an iterator (its ``complete``; an iterator never replies): settle,
        retry, give up or hand over."""
        for token, err in results:
            entry = self._iter_deliveries.pop(token, None)
            if entry is None:
                continue
            sub, d = entry
            if err is None:
                self._stats["delivered"] += 1
                self._settle()
                continue
            self._stats["handler_errors"] += 1
            last = self._failed(sub, d, err)
            if not self._connected:
                self._stats["dropped"] += 1
            elif last:
                t = asyncio.get_running_loop().create_task(self._give_up_then_settle(sub, d, err))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            elif not sub.active:
                self._hand_over(sub, d)
            else:
                self._stats["retried"] += 1
                asyncio.get_running_loop().call_later(self._options.retry_min, self._refeed, sub, d)

    def _refeed(self, sub: TestSubscriber, d: Delivery) -> None:
        if not self._connected:
            return
        if sub.active:
            self._feed(sub, d)
        else:
            self._hand_over(sub, d)

    async def _give_up_then_settle(self, sub: TestSubscriber, d: Delivery, err: str) -> None:
        try:
            await self._give_up(sub, d, err)
        finally:
            self._settle()

    async def _attempt(self, sub: TestSubscriber, d: Delivery) -> str | None:
        """Run the handler once; the failure text, or None when it succeeded."""
        ev = Event(d.topic, d.message())
        self._stats["received"] += 1
        handler = sub.handler
        assert handler is not None  # iterated subscriptions are fed, never run here
        try:
            r = handler(ev)
            if r is not None and inspect.isawaitable(r):
                r = await r
        except Exception as e:
            self._stats["handler_errors"] += 1
            self.errors.append(e)
            if self._first_error is None:
                self._first_error = e
            return describe(e)
        if not sub.options.auto_ack and not ev.acked:
            self._stats["handler_errors"] += 1
            return _NOT_ACKED
        return None

    async def _give_up(self, sub: TestSubscriber, d: Delivery, reason: str) -> None:
        """``max_deliveries`` attempts failed: on_undeliverable, then the dead-letter topic."""
        self._stats["dead_lettered"] += 1
        callback = self._options.on_undeliverable
        if callback is not None:
            try:
                r = callback(d.topic, d.message(), reason)
                if r is not None and inspect.isawaitable(r):
                    await r
            except Exception as e:
                log.exception("on_undeliverable raised")
                self.errors.append(e)
                if self._first_error is None:
                    self._first_error = e
        dlt = self._options.dead_letter_topic
        if dlt is not None and dlt != d.topic and self._connected:
            self._publish(dlt, dead_letter_header(d.header, d.topic, sub.id, reason, d.attempts), d.body)
