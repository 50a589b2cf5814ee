"""What crosses into Rust for routing: a topic's subscriber nodes, grouped by registry version.

``Engine.set_routes(topic, groups)`` reads these objects' attributes (``rust/py/conversion.rs``);
this module owns how a registry :class:`~hyperbroker.registry.base.Node` record becomes one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .registry.base import Node, Service

__all__ = ["RouteGroup", "RouteNode", "route_groups"]


def _size_or_none(v: str | None) -> int | None:
    """An advertised size (ASCII digits that fit in 63 bits), or None for anything else."""
    if v is None or not (v.isascii() and v.isdigit()):
        return None
    n = int(v)
    return n if n < 1 << 63 else None


def _deliveries_or_none(v: str | None) -> int | None:
    """An advertised redelivery cap (1 .. 2**32-1), or None for anything else."""
    n = _size_or_none(v)
    return n if n is not None and 1 <= n < 1 << 32 else None


@dataclass(frozen=True, slots=True)
class RouteNode:
    """One subscriber node: its id, ``host:port``, and what its registry metadata advertises."""

    id: str
    address: str
    batch: bool = False
    secure: bool = False
    h2: bool = False
    max_body: int | None = None
    #: the subscription's own redelivery cap (registry metadata ``max_deliveries``)
    max_deliveries: int | None = None

    @classmethod
    def from_registry(cls, node: Node) -> RouteNode:
        m = node.metadata
        return cls(
            id=node.id,
            address=node.address,
            batch=m.get("batch") == "1",
            secure=m.get("secure") == "true",
            h2=m.get("h2") == "1",
            max_body=_size_or_none(m.get("max_body")),
            max_deliveries=_deliveries_or_none(m.get("max_deliveries")),
        )


@dataclass(frozen=True, slots=True)
class RouteGroup:
    """The nodes of one registry version: a queue group, or the broadcast version."""

    version: str
    nodes: tuple[RouteNode, ...]


def route_groups(services: Iterable[Service]) -> list[RouteGroup]:
    """The route of a topic from its registry services (services without nodes are left out)."""
    return [RouteGroup(s.version, tuple(RouteNode.from_registry(n) for n in s.nodes)) for s in services if s.nodes]
