"""The Broker: go-micro's broker interface over the Rust engine, on asyncio."""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

from . import _core
from ._api import ConnectsInContext, check_queue, check_topic, decorator, decorator_kwargs, wait_for_count
from ._dispatch import dead_letters, dispatch, encode_replies
from ._registration import Registration, advertised_address
from .callbacks import Events
from .errors import BrokerError, FlushTimeoutError, NotConnectedError, RequestError, RequestTimeoutError
from .iteration import IterSubscriber
from .message import Handler, Message, to_wire
from .options import BrokerOptions, check_max_deliveries, parse_address, validate_tokens
from .registry.base import Registry
from .subscriber import Reply, SubscribeOptions, Subscriber, SubscriptionBase
from .tls import configure_engine as configure_tls
from .tracing import Tracing
from .tracing import require as require_tracing

__all__ = ["Broker"]

log = logging.getLogger("hyperbroker")

H = TypeVar("H", bound=Handler)


def _default_registry() -> Registry:
    """The registry named by ``$HYPERBROKER_REGISTRY``, else an MdnsRegistry."""
    from .registry.url import from_env

    return from_env("mdns://")


class Broker(ConnectsInContext):
    """A peer-to-peer publish/subscribe broker speaking go-micro's HTTP broker protocol.

    ``Broker(**options)`` (see :class:`BrokerOptions`), then ``await connect()``; or use
    ``async with Broker(...) as broker``. ``publish`` queues in Rust and returns at once;
    ``flush`` waits for delivery.
    """

    def __init__(self, **options: Any) -> None:
        self._options = BrokerOptions().replace(**options)
        self._engine: _core.Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registry: Registry | None = None
        self._address: str | None = None
        self._advertised: str | None = None
        self._subs: dict[str, SubscriptionBase] = {}
        #: what ``@broker.subscriber(...)`` registered: (topic, handler, subscribe keyword args)
        self._decorated: list[tuple[str, Handler, dict[str, Any]]] = []
        self._flushes: dict[int, asyncio.Future[bool]] = {}
        self._requests: dict[int, asyncio.Future[Message]] = {}
        self._tokens = itertools.count(1)
        #: announcements, heartbeat and route watch while connected
        self._registration: Registration | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._owns_registry = False
        self._final_stats: dict[str, Any] = {}
        self._events = Events(self._options)
        #: spans and trace context (options.tracing), made at connect; None: no tracing work
        self._tracing: Tracing | None = None
        if self._options.tracing:
            require_tracing()
        self._final_topic_stats: dict[str, dict[str, int]] = {}
        #: subscribe tasks of decorated handlers registered while connected (kept referenced)
        self._pending_subscribes: set[asyncio.Task[Any]] = set()

    # --- go-micro's Broker interface -----------------------------------------------------------

    def init(self, **options: Any) -> None:
        """Change options before ``connect()`` (an error while connected, as in go-micro)."""
        if self._engine is not None:
            raise BrokerError("cannot change options while connected: disconnect() first")
        self._options = self._options.replace(**options)
        if self._options.tracing:
            require_tracing()

    @property
    def options(self) -> BrokerOptions:
        return self._options

    @property
    def address(self) -> str:
        """The bound ``host:port`` once connected, else the configured address."""
        return self._address or self._options.address

    @property
    def advertised_address(self) -> str | None:
        """The ``host:port`` announced in the registry (None before connect)."""
        return self._advertised

    @property
    def registry(self) -> Registry:
        """The registry in use: ``options.registry``; or the one this broker makes (and closes
        on disconnect) of a registry URL, of ``$HYPERBROKER_REGISTRY``, or an MdnsRegistry."""
        if self._registry is None:
            option = self._options.registry
            if option is None:
                self._registry = _default_registry()
                self._owns_registry = True
            elif isinstance(option, str):
                from .registry.url import from_url

                self._registry = from_url(option)
                self._owns_registry = True
            else:
                self._registry = option
        return self._registry

    @property
    def connected(self) -> bool:
        return self._engine is not None

    def __str__(self) -> str:
        return "http"

    def __repr__(self) -> str:
        state = f"address={self._address!r}" if self._engine else "disconnected"
        return f"<Broker http {state} subscriptions={len(self._subs)}>"

    async def connect(self) -> None:
        """Bind the endpoint, start routing from the registry and the heartbeat. Idempotent."""
        if self._engine is not None:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._engine is not None:
                return
            await self._connect()
            for topic, handler, kw in self._decorated:
                await self.subscribe(topic, handler, **kw)

    async def _connect(self) -> None:
        o = self._options
        loop = asyncio.get_running_loop()
        host, port = parse_address(o.address)
        engine = _core.Engine(o)
        tokens = o.auth_tokens
        if tokens:
            engine.set_auth_token(tokens[0])
            engine.set_accepted_tokens(tokens)
        configure_tls(engine, o, host)
        bound_host, bound_port = engine.listen(host, port)
        self._loop = loop
        self._engine = engine
        self._address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        self._advertised = advertised_address(o.advertise, bound_host, bound_port, self.registry)
        self._events = Events(o)
        self._tracing = Tracing(self._advertised) if o.tracing else None
        loop.add_reader(engine.wake_fd, self._on_wake)
        try:
            self._registration = Registration(
                self.registry,
                o,
                self._advertised,
                self.secure,
                self._events,
                engine.set_routes,
                lambda: self._subs.values(),
            )
            self._registration.start(loop)
        except BaseException:
            await self._teardown()
            raise

    @property
    def secure(self) -> bool:
        """Whether the endpoint serves HTTPS."""
        return self._options.secure or (self._options.tls is not None and self._options.tls.serves)

    async def disconnect(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout``, default ``disconnect_timeout``), deregister
        every subscription (goodbye), stop the endpoint. Idempotent.

        Deliveries running in this broker's handlers are cut short (their publishers retry
        them elsewhere); use :meth:`drain` to let them finish first. What is still queued or in
        the backlog afterwards is dropped and counted (``dropped_by_reason["disconnect"]``)."""
        await self._disconnect(timeout, deregister=True)

    async def drain(self, timeout: float = 30.0) -> None:
        """Leave gracefully: deregister every subscription and answer new deliveries 503 (their
        publishers keep them for another subscriber or their backlog), let the handlers already
        running finish and answer, flush what this broker published, then disconnect. All of it
        within ``timeout`` seconds; what is left then is handled as by :meth:`disconnect`."""
        engine = self._engine
        if engine is None:
            return
        if not timeout >= 0:
            raise BrokerError(f"timeout must be >= 0, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        engine.set_draining(True)
        for sub in list(self._subs.values()):
            try:
                await self._deregister(sub)
            except Exception as e:  # the registry may be gone; still drain
                log.warning("drain: could not deregister %s: %s", sub.id, e)
        while loop.time() < deadline:
            if not engine.pending_deliveries():
                break
            await asyncio.sleep(0.01)  # the outcomes arrive through the engine: poll its count
        if engine.pending_deliveries():
            log.warning("drain: %d handler call(s) still running at the deadline", engine.pending_deliveries())
        await self._disconnect(max(deadline - loop.time(), 0.0), deregister=False)

    async def _disconnect(self, timeout: float | None, deregister: bool) -> None:
        if self._engine is None:
            return
        wait = self._options.disconnect_timeout if timeout is None else timeout
        if wait > 0:
            try:
                await self.flush(timeout=wait)
            except FlushTimeoutError as e:
                log.warning("disconnect: %s; undelivered messages are dropped", e)
        parked = self._engine.stats().get("backlog", 0) if self._engine is not None else 0
        if parked:
            log.warning("disconnect: %s message(s) waiting in the backlog for a subscriber are dropped", parked)
        for sub in list(self._subs.values()) if deregister else []:
            try:
                await self._deregister(sub)
            except Exception as e:  # the registry may be gone; still tear down
                log.warning("disconnect: could not deregister %s: %s", sub.id, e)
        await self._teardown()

    async def _teardown(self) -> None:
        engine, self._engine = self._engine, None
        registration, self._registration = self._registration, None
        if registration is not None:
            await registration.stop()
        for sub in list(self._subs.values()):
            sub.fail_pending("subscriber closing")
        self._subs.clear()
        if engine is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(engine.wake_fd)
            engine.close()
            self._final_stats = dict(engine.stats())
            self._final_topic_stats = engine.topic_stats()
        for fut in self._flushes.values():
            if not fut.done():
                fut.set_result(False)
        self._flushes.clear()
        for req in self._requests.values():
            if not req.done():
                req.set_exception(NotConnectedError("the broker disconnected before an answer came"))
        self._requests.clear()
        self._address = None
        self._advertised = None
        self._tracing = None
        self._events.close()
        if self._owns_registry and self._registry is not None:
            registry, self._registry, self._owns_registry = self._registry, None, False
            try:
                await registry.close()
            except Exception as e:
                log.warning("disconnect: closing the registry failed: %s", e)

    def set_auth_tokens(self, tokens: str | Sequence[str]) -> None:
        """Rotate tokens while connected: the first is sent from now on, all are accepted.

        Roll out a new token by first accepting ``[old, new]`` everywhere, then sending
        ``[new, old]``, then dropping ``old``: delivery never stops.
        """
        tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        validate_tokens(tokens)
        self._options = self._options.replace(auth_token=tokens)
        if self._engine is not None:
            self._engine.set_auth_token(tokens[0])
            self._engine.set_accepted_tokens(tokens)

    def _check_topic(self, topic: str) -> None:
        check_topic(topic, self._options.max_topic)

    def _need(self) -> _core.Engine:
        if self._engine is None:
            raise NotConnectedError("broker is not connected: await broker.connect() first")
        return self._engine

    # --- publish --------------------------------------------------------------------------------

    async def publish(self, topic: str, message: object, header: dict[str, str] | None = None) -> None:
        """Queue ``message`` for every subscriber of ``topic``; returns without waiting for the
        network. ``message`` is a :class:`Message`, ``bytes``, ``str`` or a JSON-serialisable
        object (sent with ``Content-Type: application/json``)."""
        engine = self._engine
        if engine is None:
            raise NotConnectedError("broker is not connected: await broker.connect() first")
        if self._tracing is None:
            h, body = to_wire(message, header)
            congested = engine.publish(topic, h, body)
        else:
            congested = self._tracing.publish(engine, topic, message, header)
        if congested:
            await self._wait_room()

    def publish_nowait(self, topic: str, message: object, header: dict[str, str] | None = None) -> bool:
        """``publish`` without the coroutine and without back-pressure. Returns True when a
        subscriber is congested: the caller should then ``await broker.wait_room()``; a
        producer that ignores it may make a slow node drop its oldest queued messages."""
        engine = self._need()
        if self._tracing is not None:
            return self._tracing.publish(engine, topic, message, header)
        h, body = to_wire(message, header)
        return engine.publish(topic, h, body)

    async def publish_many(self, topic: str, messages: Iterable[object]) -> int:
        """Queue many messages of one topic in one call; returns how many."""
        engine = self._need()
        if self._tracing is not None:
            congested, n = self._tracing.publish_many(engine, topic, messages)
        else:
            congested, n = engine.publish_many(topic, messages, to_wire)
        if congested:
            await self._wait_room()
        return n

    async def wait_room(self) -> None:
        """Wait until no healthy subscriber node has a long queue (back-pressure)."""
        await self._wait_room()

    async def _wait_room(self) -> None:
        engine = self._need()
        await self._await_engine(lambda token: engine.wait_room(token, float(self._options.request_timeout)))

    async def _await_engine(self, start: Callable[[int], None]) -> bool:
        """Start a Rust-side wait under a fresh token and await its (token, ok) report, which
        arrives through the same batched wake-up as received messages."""
        token = next(self._tokens)
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._flushes[token] = fut
        start(token)
        try:
            return await fut
        finally:
            self._flushes.pop(token, None)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything published so far is delivered (or refused, or parked in the
        backlog). Raises :class:`FlushTimeoutError` when ``timeout`` seconds pass first."""
        engine = self._need()
        if not timeout > 0:
            raise BrokerError(f"timeout must be > 0, got {timeout!r}")
        ok = await self._await_engine(lambda token: engine.flush(token, float(timeout)))
        if not ok:
            st = engine.stats()
            in_flight, last = st.get("in_flight"), st.get("last_error")
            pending = in_flight if isinstance(in_flight, int) else 0
            last_error = last if isinstance(last, str) else None
            raise FlushTimeoutError(
                f"flush timed out after {timeout}s with {pending} deliveries still pending (last error: {last_error})",
                pending=pending,
                last_error=last_error,
            )

    async def request(
        self, topic: str, message: object, timeout: float = 5.0, header: dict[str, str] | None = None
    ) -> Message:
        """Send ``message`` to one subscriber of ``topic`` and return its handler's return value
        as a :class:`Message` (bytes/str as the body, a Message as is, other values as JSON).

        One node answers: round-robin over the topic's subscriber nodes, queue groups and
        broadcast subscriptions alike. A handler that returns None (and a go-micro subscriber)
        answers with an empty Message. Raises :class:`RequestTimeoutError` when no subscriber
        answers within ``timeout`` seconds (waiting for one to appear included), and
        :class:`RequestError` when the handler raised (its text) or the node refused the request.
        A request is sent once: it is tried on another node only when it certainly did not
        reach a handler (connection refused, unknown or closing subscriber), never after."""
        engine = self._need()
        self._check_topic(topic)
        if not timeout > 0:
            raise BrokerError(f"timeout must be > 0, got {timeout!r}")
        h, body = to_wire(message, header)
        token = next(self._tokens)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[token] = fut
        try:
            engine.request(token, topic, h, body, float(timeout))
            # the engine answers by the deadline; the margin only guards against a lost answer
            return await asyncio.wait_for(fut, timeout + 5.0)
        except TimeoutError:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                raise
            raise RequestTimeoutError(f"no answer to the request on {topic!r} within {timeout}s") from None
        finally:
            self._requests.pop(token, None)

    def route_count(self, topic: str) -> int:
        """How many subscriber nodes this broker currently routes ``topic`` to."""
        return self._need().route_count(topic)

    async def wait_for_route(self, topic: str, timeout: float = 5.0) -> int:
        """Wait until at least one subscriber of ``topic`` is known (registry discovery can
        take a moment with mDNS). Returns the node count; raises :class:`BrokerError` on
        timeout. Publishing does not need this: without a route messages wait in the backlog."""
        engine = self._need()
        return await wait_for_count(lambda: engine.route_count(topic), topic, timeout, 0.02)

    def stats(self) -> dict[str, Any]:
        """Counters: published, delivered, failed, retried, backlogged, dropped, received,
        handler_errors, in_flight (+ rejected, remote_handler_errors, backlog, last_error)."""
        if self._engine is None:
            return dict(self._final_stats)  # after disconnect: the last counters
        return dict(self._engine.stats())

    def topic_stats(self) -> dict[str, dict[str, int]]:
        """Per-topic counters and gauges: ``{topic: {published, delivered, dropped, retried,
        backlog, backlog_bytes, nodes, received, handler_errors}}``. Topics past
        ``metrics_max_topics`` are summed under ``"_other"``. After disconnect: the last values."""
        if self._engine is None:
            return {t: dict(v) for t, v in self._final_topic_stats.items()}
        return self._engine.topic_stats()

    def metrics_text(self) -> str:
        """The Prometheus text exposition (format 0.0.4) of this broker, rendered now: what
        ``GET /metrics`` serves with ``metrics=True``. Empty when not connected."""
        return "" if self._engine is None else self._engine.metrics_text()

    # --- subscribe ------------------------------------------------------------------------------

    @overload
    async def subscribe(
        self,
        topic: str,
        handler: Handler,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | None = None,
        *,
        concurrency: int = 1,
    ) -> Subscriber: ...

    @overload
    async def subscribe(
        self,
        topic: str,
        handler: None = None,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | None = None,
        *,
        max_pending: int = 100,
    ) -> IterSubscriber: ...

    async def subscribe(
        self,
        topic: str,
        handler: Handler | None = None,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | None = None,
        *,
        concurrency: int = 1,
        max_pending: int = 100,
    ) -> Subscriber | IterSubscriber:
        """Call ``handler(event)`` (a ``def`` or ``async def``) for each message of ``topic``; or,
        without a handler, return an :class:`IterSubscriber` to consume with ``async for``
        (a buffer of ``max_pending`` events; publishers wait while the consumer is behind).

        With ``queue``, subscribers sharing the queue name get each message once between them.
        ``max_deliveries`` caps the handler attempts per message for this subscription
        (publishers read it from the registry); None leaves it to each publisher's option.
        ``concurrency`` lets up to that many async handler calls run at once (arrival order is
        then not kept; 1, the default, keeps it).
        """
        engine = self._need()
        check_max_deliveries(max_deliveries)
        self._check_topic(topic)
        if handler is not None and not callable(handler):
            raise BrokerError(f"handler must be callable, got {type(handler).__name__}")
        check_queue(queue)
        options = SubscribeOptions(
            queue=queue,
            auto_ack=auto_ack,
            max_deliveries=max_deliveries,
            concurrency=concurrency,
            max_pending=max_pending,
        )
        sub_id = f"hb-{uuid.uuid4().hex}"
        if self._options.dialect == "micro":
            sub_id = f"{topic}-{sub_id}"  # current go-micro's node id: <topic>-<broker id>
        sub: Subscriber | IterSubscriber
        if handler is None:
            sub = IterSubscriber(sub_id, topic, options, complete=self._complete, unsubscribe=self._unsubscribe)
        else:
            if self._tracing is not None:
                handler = self._tracing.wrap(topic, queue, handler)
            sub = Subscriber(sub_id, topic, handler, options, complete=self._complete, unsubscribe=self._unsubscribe)
        engine.add_subscriber(sub_id, topic)
        self._subs[sub_id] = sub
        registration = self._registration
        assert registration is not None  # made with the engine
        try:
            await registration.register(sub)
        except BaseException:
            self._subs.pop(sub_id, None)
            engine.remove_subscriber(sub_id)
            raise
        await registration.refresh_topic(topic)
        return sub

    def subscriber(
        self,
        topic: str,
        queue: str | None = None,
        auto_ack: bool = True,
        max_deliveries: int | None = None,
        *,
        concurrency: int = 1,
    ) -> Callable[[H], H]:
        """Decorator: ``@broker.subscriber("orders", queue="workers")`` on a ``def`` or
        ``async def`` subscribes it at ``connect()`` (every time the broker connects), or at once
        (scheduled on the broker's loop) when the broker is already connected. The function is
        returned unchanged."""
        self._check_topic(topic)
        check_max_deliveries(max_deliveries)
        kw = decorator_kwargs(queue, auto_ack, max_deliveries, concurrency)

        def now(handler: Handler) -> None:
            if self._engine is not None and self._loop is not None:
                self._subscribe_soon(topic, handler, kw)

        return decorator(topic, kw, self._decorated, now)

    def _subscribe_soon(self, topic: str, handler: Handler, kw: dict[str, Any]) -> None:
        """Subscribe a decorated handler on the broker's loop (from any thread); a failure is logged."""
        loop = self._loop
        assert loop is not None

        async def run() -> None:
            try:
                await self.subscribe(topic, handler, **kw)
            except Exception:
                log.exception("@subscriber(%r): subscribing failed", topic)

        def start() -> None:
            t = loop.create_task(run(), name=f"hyperbroker-subscribe-{topic}")
            self._pending_subscribes.add(t)
            t.add_done_callback(self._pending_subscribes.discard)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            start()
        else:
            loop.call_soon_threadsafe(start)

    async def _deregister(self, sub: SubscriptionBase) -> None:
        if self._registration is not None:
            await self._registration.deregister(sub)

    async def _unsubscribe(self, sub: SubscriptionBase) -> None:
        if self._subs.pop(sub.id, None) is None:
            return
        try:
            await self._deregister(sub)
        finally:
            if self._engine is not None:
                self._engine.remove_subscriber(sub.id)
                sub.fail_pending("subscriber unsubscribed")
        if self._registration is not None:
            await self._registration.refresh_topic(sub.topic)

    # --- from Rust to the handlers --------------------------------------------------------------

    def _on_wake(self) -> None:
        engine = self._engine
        if engine is None:
            return
        sub_ids, events, flushes, dead, notices, answers = engine.take()
        if notices:
            self._events.handle(notices)
        if dead:
            dead_letters(dead, self._options, self._events, engine.publish)
        if events:
            failures: list[tuple[int, str]] = []
            deferred: list[int] = []
            replies: list[Reply] = []
            try:
                dispatch(self._subs, sub_ids, events, failures, deferred, replies)
            finally:
                if replies:
                    engine.done(failures, deferred, encode_replies(replies, failures))
                else:
                    engine.done(failures, deferred)
        for token, ok in flushes:
            fut = self._flushes.get(token)
            if fut is not None and not fut.done():
                fut.set_result(ok)
        for token, reply, status, text in answers:
            req = self._requests.get(token)
            if req is None or req.done():
                continue
            if reply is not None:
                req.set_result(reply)
            elif status == 0:
                req.set_exception(RequestTimeoutError(text))
            else:
                req.set_exception(RequestError(text, status=status))

    def _complete(self, results: list[tuple[int, str | None]], replies: Sequence[Reply] = ()) -> None:
        """Settle deliveries a subscriber finished after its batch (its ``complete`` callable)."""
        if self._engine is None or not results:
            return
        if not replies:
            self._engine.complete(results)
            return
        bad: list[tuple[int, str]] = []
        encoded = encode_replies(replies, bad)
        if bad:
            failed = dict(bad)
            results = [(t, failed.get(t, e)) for t, e in results]
        self._engine.complete(results, encoded)
