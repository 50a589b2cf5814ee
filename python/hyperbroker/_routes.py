"""What crosses into Rust for routing: a topic's subscriber nodes, grouped by registry version.

``Engine.set_routes(topic, groups)`` reads these objects' attributes (``rust/py/conversion.rs``);
this module owns how registry :class:`~hyperbroker.registry.base.Service` records of both
go-micro layouts become them: v1's ``topic:<topic>`` services (endpoint path ``/_sub``) and the
nodes of current go-micro's ``micro.http.broker`` whose metadata has ``broker=http`` and
``topic=<topic>`` (path ``/``), merged by version (a queue group spans both layouts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .registry.base import Node, Service

__all__ = ["MICRO_PATH", "V1_PATH", "RouteGroup", "RouteNode", "route_groups", "topics_of"]

#: The endpoint path of a go-micro v1 subscriber (``topic:<topic>`` layout).
V1_PATH = "/_sub"
#: The endpoint path of a current go-micro subscriber (``micro.http.broker`` layout).
MICRO_PATH = "/"


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
    #: takes the raw frame format (registry metadata ``frames=1``)
    frames: bool = False
    secure: bool = False
    h2: bool = False
    max_body: int | None = None
    #: the subscription's own redelivery cap (registry metadata ``max_deliveries``)
    max_deliveries: int | None = None
    #: the endpoint path the node's layout uses (``/_sub`` or ``/``)
    path: str = V1_PATH

    @classmethod
    def from_registry(cls, node: Node, path: str = V1_PATH) -> RouteNode:
        m = node.metadata
        return cls(
            path=path,
            id=node.id,
            address=node.address,
            batch=m.get("batch") == "1",
            frames=m.get("frames") == "1",
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


def _is_micro_node(node: Node, topic: str) -> bool:
    """Current go-micro's publisher keeps only nodes tagged ``broker=http`` and ``topic=<topic>``."""
    return node.metadata.get("broker") == "http" and node.metadata.get("topic") == topic


def route_groups(services: Iterable[Service], micro: Iterable[Service] = (), topic: str = "") -> list[RouteGroup]:
    """The route of ``topic`` from its v1 services (``topic:<topic>``) and the ``micro.http.broker``
    services (their nodes of ``topic`` only); groups by version, without empty ones."""
    groups: dict[str, list[RouteNode]] = {}
    for s in services:
        groups.setdefault(s.version, []).extend(RouteNode.from_registry(n) for n in s.nodes)
    for s in micro:
        nodes = [RouteNode.from_registry(n, MICRO_PATH) for n in s.nodes if _is_micro_node(n, topic)]
        if nodes:
            groups.setdefault(s.version, []).extend(nodes)
    return [RouteGroup(version, tuple(nodes)) for version, nodes in groups.items() if nodes]


def topics_of(service: Service) -> set[str]:
    """The topics of a ``micro.http.broker`` service's HTTP-broker nodes."""
    return {t for n in service.nodes if n.metadata.get("broker") == "http" and (t := n.metadata.get("topic"))}
