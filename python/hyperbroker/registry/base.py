"""The registry model (go-micro's): services, nodes, watch events, and the Registry protocol.

A subscription is announced in one of go-micro's two HTTP-broker layouts, its version being the
queue name (or ``ff.http.broadcast`` for a broadcast subscription), with one node
``{id, address, metadata}``:

- v1: the service ``topic:<topic>``, endpoint path ``/_sub``;
- current go-micro: the service ``micro.http.broker`` for every topic, node id
  ``<topic>-<id>``, node metadata ``broker=http`` and ``topic=<topic>``, endpoint path ``/``.

This module also owns how a registry's view (service key -> nodes) becomes watch events
(:func:`diff_views`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "BROADCAST_VERSION",
    "MICRO_SERVICE",
    "SERVICE_PREFIX",
    "Node",
    "QueueWatcher",
    "Registry",
    "Service",
    "WatchEvent",
    "Watcher",
    "Watchers",
    "diff_views",
    "service_name",
    "service_of",
    "topic_of",
]

#: The version go-micro gives a broadcast (non-queue) subscription.
BROADCAST_VERSION = "ff.http.broadcast"
#: In go-micro v1's layout every subscription service is named ``topic:<topic>``.
SERVICE_PREFIX = "topic:"
#: In current go-micro's layout every subscription is a node of this one service.
MICRO_SERVICE = "micro.http.broker"


def service_name(topic: str) -> str:
    """Registry service name of a topic (``topic:<topic>``)."""
    return SERVICE_PREFIX + topic


def topic_of(name: str) -> str | None:
    """The topic of a v1 subscription service name, or None for other services."""
    if name.startswith(SERVICE_PREFIX):
        return name[len(SERVICE_PREFIX) :]
    return None


@dataclass(frozen=True, slots=True)
class Node:
    """One subscriber endpoint: its id (sent as ``?id=``), ``host:port`` address, and metadata.

    Metadata keys used by hyperbroker: ``secure`` ("true"/"false"), ``batch`` ("1" when the node
    accepts batched POSTs), ``frames`` ("1" when it accepts the raw frame format).
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


ServiceKey = tuple[str, str]
"""A service's (name, version)."""


def service_of(key: ServiceKey, nodes: Mapping[str, Node]) -> Service:
    """The service ``key`` with ``nodes`` (by node id), its nodes sorted by id."""
    return Service(key[0], key[1], tuple(sorted(nodes.values(), key=lambda n: n.id)))


def diff_views(
    old: Mapping[ServiceKey, Mapping[str, Node] | None], new: Mapping[ServiceKey, Mapping[str, Node] | None]
) -> list[WatchEvent]:
    """The watch events that turn the view ``old`` into ``new`` (service key -> nodes by id; a
    key absent or None has no service): "create", "update" with the new nodes, or "delete"
    with the old ones, one per service that changed."""
    events: list[WatchEvent] = []
    for key in [*old, *(k for k in new if k not in old)]:
        before, after = old.get(key), new.get(key)
        if before is None and after is not None:
            events.append(WatchEvent("create", service_of(key, after)))
        elif before is not None and after is None:
            events.append(WatchEvent("delete", service_of(key, before)))
        elif before is not None and after is not None and before != after:
            events.append(WatchEvent("update", service_of(key, after)))
    return events


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


class Watchers:
    """A registry's watchers: each joins with a "create" for every service known then, and is
    then told every change."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set: set[QueueWatcher] = set()

    def add(self, w: QueueWatcher, known: Iterable[Service]) -> None:
        for svc in known:
            w.put(WatchEvent("create", svc))
        self._set.add(w)

    def remove(self, w: QueueWatcher) -> None:
        self._set.discard(w)

    def put(self, ev: WatchEvent) -> None:
        """Tell every watcher."""
        for w in list(self._set):
            w.put(ev)

    def stop_all(self) -> None:
        for w in list(self._set):
            w.stop()
        self._set.clear()


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
