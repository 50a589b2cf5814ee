"""The registry model (go-micro's): services, nodes, watch events, and the Registry protocol.

A subscription is announced as the service ``topic:<topic>`` whose version is the queue name (or
``ff.http.broadcast`` for a broadcast subscription) with one node ``{id, address, metadata}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "BROADCAST_VERSION",
    "SERVICE_PREFIX",
    "Node",
    "Service",
    "WatchEvent",
    "Watcher",
    "Registry",
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
