"""What :class:`~hyperbroker.Broker` and :class:`~hyperbroker.testing.TestBroker` share as the
same API: ``async with`` (connect on entry, disconnect on exit) and waiting for a first route."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self, TypeVar

from .errors import BrokerError
from .message import Handler
from .subscriber import SubscribeOptions

__all__ = ["ConnectsInContext", "check_queue", "check_topic", "decorator", "decorator_kwargs", "wait_for_count"]

H = TypeVar("H", bound=Callable[..., Any])


class ConnectsInContext:
    """``async with broker:`` connects on entry and disconnects on exit (also on an error)."""

    async def connect(self) -> None:
        raise NotImplementedError  # abstract: Broker and TestBroker connect their own way

    async def disconnect(self, timeout: float | None = None) -> None:
        raise NotImplementedError  # abstract: Broker and TestBroker disconnect their own way

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()


async def wait_for_count(count: Callable[[], int], topic: str, timeout: float, tick: float) -> int:
    """Poll ``count()`` every ``tick`` seconds until it is not 0 and return it; a
    :class:`BrokerError` naming ``topic`` when ``timeout`` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        n = count()
        if n:
            return n
        if loop.time() >= deadline:
            raise BrokerError(f"no subscriber of {topic!r} appeared within {timeout}s")
        await asyncio.sleep(tick)


def check_topic(topic: object, max_topic: int) -> None:
    """A topic is a non-empty string of at most ``max_topic`` UTF-8 bytes."""
    if not isinstance(topic, str) or not topic:
        raise BrokerError("topic must be a non-empty string")
    if len(topic.encode()) > max_topic:
        raise BrokerError(f"topic is over max_topic={max_topic} bytes")


def check_queue(queue: object) -> None:
    """A queue group name is a non-empty string (None: broadcast)."""
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise BrokerError("queue must be a non-empty string or None")


def decorator_kwargs(queue: str | None, auto_ack: bool, max_deliveries: object, concurrency: int) -> dict[str, Any]:
    """``@subscriber``'s arguments, checked now (not at connect), as ``subscribe()``'s keywords."""
    check_queue(queue)
    SubscribeOptions(concurrency=concurrency)  # checks it
    return {"queue": queue, "auto_ack": auto_ack, "max_deliveries": max_deliveries, "concurrency": concurrency}


def decorator(
    topic: str,
    kw: dict[str, Any],
    registered: list[tuple[str, Handler, dict[str, Any]]],
    now: Callable[[Handler], None],
) -> Callable[[H], H]:
    """The ``@subscriber`` decorator: records the function (subscribed at every connect), calls
    ``now(function)`` (which subscribes it at once when connected) and returns it unchanged."""

    def register(handler: H) -> H:
        if not callable(handler):
            raise BrokerError(f"@subscriber needs a function, got {type(handler).__name__}")
        registered.append((topic, handler, kw))
        now(handler)
        return handler

    return register
