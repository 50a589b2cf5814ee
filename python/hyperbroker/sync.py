"""SyncBroker: a thread-safe synchronous facade over one :class:`Broker` for code without an
event loop (WSGI apps, scripts, worker threads).

This file owns the background event-loop thread, the hand-off of ``publish`` calls from any
thread to that loop, and running subscription handlers in worker threads. It uses the Broker's
public API only (``connect``, ``disconnect``, ``subscribe``, ``publish_nowait``, ``wait_room``,
``flush``, ``request``, ``stats``).

- The loop thread is shared by every open SyncBroker of the process (started by the first,
  stopped when the last closes), so SyncBrokers sharing one :class:`MemoryRegistry` see each
  other: a MemoryRegistry belongs to one event loop.
- ``publish`` validates and encodes in the calling thread (errors raise there, with the Broker's
  types), appends to a hand-off queue and wakes the loop only when the queue was idle: no lock is
  held beyond a flag check, and many publishing threads cost one loop wake-up per batch. When a
  subscriber is congested the loop waits for room before handing more to the engine; when the
  hand-off queue reaches ``max_pending`` messages, publishers block until it drains (up to
  ``request_timeout``, then :class:`BrokerError`).
- A ``def`` handler runs in one of ``handler_threads`` worker threads, one message at a time per
  subscription, in arrival order; an ``async def`` handler runs on the loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ._api import check_topic
from .broker import Broker
from .errors import BrokerError, FlushTimeoutError, NotConnectedError
from .message import Event, Handler, Message, to_wire
from .subscriber import SubscribeOptions, Subscriber

__all__ = ["SyncBroker", "SyncSubscriber"]

T = TypeVar("T")

_Item = tuple[str, dict[str, str] | None, bytes]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class _LoopThread:
    """The process's background event loop, reference counted by the open SyncBrokers."""

    _lock = threading.Lock()
    _current: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = _new_loop()
        self.users = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(ready,), name="hyperbroker-sync-loop", daemon=True)
        self.thread.start()
        ready.wait()

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                left = asyncio.all_tasks(self.loop)
                for t in left:
                    t.cancel()
                if left:
                    self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    @classmethod
    def acquire(cls) -> _LoopThread:
        with cls._lock:
            lt = cls._current
            if lt is None or not lt.thread.is_alive():
                lt = cls._current = _LoopThread()
            lt.users += 1
            return lt

    def release(self) -> None:
        with _LoopThread._lock:
            self.users -= 1
            if self.users > 0:
                return
            if _LoopThread._current is self:
                _LoopThread._current = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(10)


class SyncSubscriber:
    """A SyncBroker subscription: ``.id``, ``.topic``, ``.options``, ``.queue``, ``.unsubscribe()``."""

    def __init__(self, owner: SyncBroker, sub: Subscriber) -> None:
        self._owner = owner
        self.subscriber = sub

    @property
    def id(self) -> str:
        return self.subscriber.id

    @property
    def topic(self) -> str:
        return self.subscriber.topic

    @property
    def options(self) -> SubscribeOptions:
        return self.subscriber.options

    @property
    def queue(self) -> str | None:
        return self.subscriber.options.queue

    def unsubscribe(self, timeout: float = 10.0) -> None:
        """Stop receiving (deregister and drop the subscription). Idempotent."""
        self._owner._call(self.subscriber.unsubscribe(), timeout)

    def __repr__(self) -> str:
        return f"SyncSubscriber(id={self.id!r}, topic={self.topic!r}, queue={self.queue!r})"


class SyncBroker:
    """A :class:`Broker` for synchronous code: every method blocks the calling thread (never
    for long in ``publish``) and may be called from any thread.

    ``SyncBroker(**options)`` takes the Broker's options plus ``handler_threads`` (worker threads
    running ``def`` handlers, default 4) and ``max_pending`` (hand-off queue bound, default
    65536), starts the background loop and connects. ``close()`` (or leaving a ``with`` block)
    delivers what is queued (up to ``disconnect_timeout``) and disconnects.
    """

    def __init__(self, *, handler_threads: int = 4, max_pending: int = 65536, **options: Any) -> None:
        if not isinstance(handler_threads, int) or isinstance(handler_threads, bool) or handler_threads < 1:
            raise BrokerError(f"handler_threads must be a positive integer, got {handler_threads!r}")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
            raise BrokerError(f"max_pending must be a positive integer, got {max_pending!r}")
        self._broker = Broker(**options)  # validates the options before a thread starts
        self._max_pending = max_pending
        self._queue: deque[_Item] = deque()
        self._scheduled = False
        self._schedule_lock = threading.Lock()
        self._room = threading.Condition(threading.Lock())
        self._waiting_for_room = 0
        self._drain_task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread_prefix = f"hyperbroker-handler-{id(self):x}"
        self._executor = concurrent.futures.ThreadPoolExecutor(handler_threads, thread_name_prefix=self._thread_prefix)
        self._lt = _LoopThread.acquire()
        self._loop = self._lt.loop
        try:
            self._call(self._broker.connect(), 30.0)
        except BaseException:
            self._closed = True
            self._executor.shutdown(wait=False)
            self._lt.release()
            raise

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        """The underlying async Broker (use it only from coroutines run on :attr:`loop`)."""
        return self._broker

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The background event loop the broker runs on."""
        return self._loop

    @property
    def address(self) -> str:
        return self._broker.address

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise NotConnectedError("the SyncBroker is closed")

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait for its result in this thread."""
        if threading.current_thread() is self._lt.thread:
            coro.close()
            raise BrokerError("a blocking SyncBroker call cannot run on its own loop thread (from an async handler)")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:  # the builtin TimeoutError, as FlushTimeoutError is
            if fut.done():
                raise  # the coroutine's own error
            fut.cancel()
            raise BrokerError(f"the broker's loop did not answer within {timeout}s") from None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run a coroutine on the broker's loop (e.g. one that uses :attr:`broker` or a registry
        shared with it) and return its result."""
        return self._call(coro, timeout)

    def __enter__(self) -> SyncBroker:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SyncBroker {'closed' if self._closed else repr(self._broker)}>"

    # --- publish ------------------------------------------------------------------------------

    def publish(self, topic: str, message: object, header: dict[str, str] | None = None) -> None:
        """Queue ``message`` for every subscriber of ``topic`` (a :class:`Message`, bytes, str or
        a JSON-serialisable object); returns once it is handed to the broker's loop."""
        self._check_open()
        self._check_topic(topic)
        h, body = to_wire(message, header)
        _check_header(h)
        self._hand_off((topic, h, body))

    def publish_many(self, topic: str, messages: Iterable[object]) -> int:
        """Queue many messages of one topic; returns how many."""
        self._check_open()
        self._check_topic(topic)
        items = []
        for m in messages:
            h, body = to_wire(m)
            _check_header(h)
            items.append((topic, h, body))
        for it in items:
            self._hand_off(it)
        return len(items)

    def _check_topic(self, topic: str) -> None:
        check_topic(topic, self._broker.options.max_topic)

    def _hand_off(self, item: _Item) -> None:
        q = self._queue
        if len(q) >= self._max_pending:
            self._wait_for_room()
        q.append(item)
        if not self._scheduled:
            with self._schedule_lock:
                if self._scheduled:
                    return
                self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._on_handoff)
            except RuntimeError:  # the loop closed under us: close() raced this publish
                raise NotConnectedError("the SyncBroker is closed") from None

    def _wait_for_room(self) -> None:
        if threading.current_thread() is self._lt.thread:
            raise BrokerError(f"the publish queue is full ({self._max_pending} messages) on the broker's own loop")
        timeout = float(self._broker.options.request_timeout)
        with self._room:
            self._waiting_for_room += 1
            try:
                ok = self._room.wait_for(lambda: len(self._queue) < self._max_pending or self._closed, timeout)
            finally:
                self._waiting_for_room -= 1
        self._check_open()
        if not ok:
            raise BrokerError(
                f"publish: {len(self._queue)} messages still waiting for a congested subscriber after {timeout}s"
            )

    # --- on the loop thread -------------------------------------------------------------------

    def _on_handoff(self) -> None:
        with self._schedule_lock:
            self._scheduled = False
        if self._drain_task is None and self._drain() and self._queue:
            self._drain_task = self._loop.create_task(self._drain_congested())

    def _drain(self) -> bool:
        """Hand the queued messages to the engine; True when it stopped because a subscriber
        is congested (the rest waits for room)."""
        q = self._queue
        publish = self._broker.publish_nowait
        congested = False
        try:
            while q:
                topic, h, body = q.popleft()
                try:
                    if publish(topic, body, h):
                        congested = True
                        break
                except BrokerError as e:
                    if self._error is None:
                        self._error = e
        finally:
            if self._waiting_for_room:
                with self._room:
                    self._room.notify_all()
        return congested

    async def _drain_congested(self) -> None:
        try:
            while True:
                try:
                    await self._broker.wait_room()
                except BrokerError as e:
                    if self._error is None:
                        self._error = e
                if not self._drain() or not self._queue:
                    break
        finally:
            self._drain_task = None

    async def _flush(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue or self._drain_task is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise FlushTimeoutError(
                    f"flush timed out after {timeout}s: {len(self._queue)} messages not yet handed to the engine"
                )
            task = self._drain_task
            if task is not None:
                await asyncio.wait({task}, timeout=left)
            elif self._drain() and self._queue:
                self._drain_task = loop.create_task(self._drain_congested())
            else:
                await asyncio.sleep(0)  # publishers in other threads may be refilling the queue
        left = deadline - loop.time()
        if left <= 0:
            raise FlushTimeoutError(f"flush timed out after {timeout}s")
        await self._broker.flush(timeout=left)
        err, self._error = self._error, None
        if err is not None:
            raise err

    # --- the Broker interface -----------------------------------------------------------------

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything published so far is delivered (or parked in the backlog).
        :class:`FlushTimeoutError` after ``timeout`` seconds; an error met while handing a
        message to the engine (after ``publish`` returned) is raised here."""
        self._check_open()
        if not timeout > 0:
            raise BrokerError(f"timeout must be > 0, got {timeout!r}")
        self._call(self._flush(timeout), timeout + 5.0)

    def request(
        self, topic: str, message: object, timeout: float = 5.0, header: dict[str, str] | None = None
    ) -> Message:
        """Send ``message`` to one subscriber of ``topic`` and return its handler's return value
        as a :class:`Message` (see :meth:`Broker.request`); :class:`RequestTimeoutError` when
        no answer comes within ``timeout`` seconds, :class:`RequestError` when the handler
        raised. A ``def`` handler of this SyncBroker answers by returning a value, as an
        ``async def`` one does. Not from an ``async def`` handler (it runs on the loop thread)."""
        self._check_open()
        self._check_topic(topic)
        if not timeout > 0:
            raise BrokerError(f"timeout must be > 0, got {timeout!r}")
        h, body = to_wire(message, header)
        _check_header(h)
        return self._call(self._broker.request(topic, Message(h or {}, body), timeout), timeout + 10.0)

    def subscribe(
        self, topic: str, handler: Handler, queue: str | None = None, auto_ack: bool = True, timeout: float = 10.0
    ) -> SyncSubscriber:
        """Call ``handler(event)`` for each message of ``topic``: a ``def`` in a worker thread, an
        ``async def`` on the loop thread. With ``queue``, the subscribers sharing the queue name
        get each message once between them. A handler that raises (or, with ``auto_ack=False``,
        returns without ``event.ack()``) has the message delivered again."""
        self._check_open()
        if not callable(handler):
            raise BrokerError(f"handler must be callable, got {type(handler).__name__}")
        run: Handler = handler if _is_async(handler) else self._in_worker(handler)
        sub = self._call(self._broker.subscribe(topic, run, queue=queue, auto_ack=auto_ack), timeout)
        return SyncSubscriber(self, sub)

    def _in_worker(self, handler: Callable[[Event], Any]) -> Handler:
        executor = self._executor

        async def in_worker(ev: Event) -> Any:
            r = await asyncio.get_running_loop().run_in_executor(executor, handler, ev)
            if r is not None and inspect.isawaitable(r):
                r = await r
            return r

        return in_worker

    def stats(self) -> dict[str, Any]:
        """The broker's counters, plus ``handoff_queue``: messages published but not yet
        handed to the engine."""
        if self._closed:
            return {}
        return {**self._call(_stats(self._broker), 10.0), "handoff_queue": len(self._queue)}

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (up to ``timeout``, default ``disconnect_timeout``), disconnect,
        and stop the loop thread if no other SyncBroker uses it. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        wait = self._broker.options.disconnect_timeout if timeout is None else timeout
        try:
            if wait > 0:
                with contextlib.suppress(FlushTimeoutError, BrokerError):
                    self._call(self._flush(wait), wait + 5.0)
            self._call(self._broker.disconnect(timeout=0), 30.0)
        finally:
            self._queue.clear()
            with self._room:
                self._room.notify_all()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._lt.release()
            self._join_workers(5.0)

    def _join_workers(self, timeout: float) -> None:
        """Give idle handler threads the moment they need to exit (a handler still running
        is left to finish in its thread)."""
        deadline = time.monotonic() + timeout
        me = threading.current_thread()
        for t in threading.enumerate():
            if t is not me and t.name.startswith(self._thread_prefix + "_"):
                t.join(max(0.0, deadline - time.monotonic()))


async def _stats(broker: Broker) -> dict[str, Any]:
    return broker.stats()


def _is_async(handler: Callable[..., Any]) -> bool:
    # a coroutine function, or an object whose __call__ is one
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__)


def _check_header(h: dict[str, str] | None) -> None:
    if h:
        for k, v in h.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise BrokerError(f"header keys and values must be strings, got {k!r}: {v!r}")
