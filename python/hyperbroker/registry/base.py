"""The registry model (go-micro's): services, nodes, watch events, and the Registry protocol.

A subscription is announced as the service ``topic:<topic>`` whose version is the queue name (or
``ff.http.broadcast`` for a broadcast subscription) with one node ``{id, address, metadata}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "BROADCAST_VERSION",
    "SERVICE_PREFIX",
    "Node",
    "QueueWatcher",
    "Registry",
    "Service",
    "WatchEvent",
    "Watcher",
    "service_name",
    "topic_of",
]

#: The version go-micro gives a broadcast (non-queue) subscription.
BROADCAST_VERSION = "ff.http.broadcast"
#: Every subscription service is named ``topic:<topic>``.
SERVICE_PREFIX = "topic:"


def service_name(topic: str) -> str:
    """Registry service name of a topic (``topic:<topic>``)."""
    return SERVICE_PREFIX + topic


def topic_of(name: str) -> str | None:
    """The topic of a subscription service name, or None for other services."""
    if name.startswith(SERVICE_PREFIX):
        return name[len(SERVICE_PREFIX) :]
    return None


@dataclass(frozen=True, slots=True)
class Node:
    """One subscriber endpoint: its id (sent as ``?id=``), ``host:port`` address, and metadata.

    Metadata keys used by hyperbroker: ``secure`` ("true"/"false"), ``batch`` ("1" when the node
    accepts batched POSTs).
    """

    id: str
    address: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Service:
    """A named, versioned set of nodes (go-micro's ``registry.Service``)."""

    name: str
    version: str
    nodes: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watcher: ``action`` is "create", "update" or "delete"."""

    action: Literal["create", "update", "delete"]
    service: Service


@runtime_checkable
class Watcher(Protocol):
    """An async iterator of :class:`WatchEvent` that can be stopped."""

    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    async def __anext__(self) -> WatchEvent: ...

    def stop(self) -> None: ...


class QueueWatcher:
    """A :class:`Watcher` fed by its registry through ``put``.

    ``on_stop`` tells the registry to forget it. ``next_timeout`` / ``on_timeout`` let a registry
    do timed work while a consumer waits (the in-memory registry expires TTLs that way).
    """

    def __init__(
        self,
        on_stop: Callable[[QueueWatcher], None],
        next_timeout: Callable[[], float | None] | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._on_stop = on_stop
        self._next_timeout = next_timeout
        self._on_timeout = on_timeout
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._stopped = False

    def put(self, event: WatchEvent) -> None:
        if not self._stopped:
            self._queue.put_nowait(event)

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            if self._stopped and self._queue.empty():
                raise StopAsyncIteration
            timeout = self._next_timeout() if self._next_timeout is not None else None
            try:
                item = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                if self._on_timeout is not None:
                    self._on_timeout()
                continue
            if item is None:
                raise StopAsyncIteration
            return item

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._on_stop(self)
            self._queue.put_nowait(None)


@runtime_checkable
class Registry(Protocol):
    """What a broker needs of a registry. Implementations: MemoryRegistry, MdnsRegistry.

    ``register`` merges the service's nodes into the registered service of the same name and
    version (and refreshes their TTL); ``deregister`` removes the given nodes. ``watch`` yields a
    "create" event for every service already registered, then every later change.
    """

    async def register(self, service: Service, ttl: float | None = None) -> None: ...

    async def deregister(self, service: Service) -> None: ...

    async def get_service(self, name: str) -> list[Service]: ...

    async def list_services(self) -> list[Service]: ...

    def watch(self) -> Watcher: ...

    async def close(self) -> None: ...
