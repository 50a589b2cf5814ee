"""go-micro's etcd registry layout: the key of a node and the JSON value stored under it.

Owns the data format only (no I/O): every node is one key ``<prefix><service name>/<node id>``
("/" inside the name or id replaced by "-") whose value is the JSON of a one-node go-micro
``registry.Service``::

    /micro/registry/topic:orders/hb-3f...  ->
    {"name":"topic:orders","version":"ff.http.broadcast","metadata":{},"endpoints":[],
     "nodes":[{"id":"hb-3f...","address":"10.0.0.5:41234","metadata":{"secure":"false",...}}]}
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from .base import Node, Service

__all__ = [
    "DEFAULT_PREFIX",
    "Entry",
    "ServiceKey",
    "decode_service",
    "encode_service",
    "entries_of",
    "node_key",
    "service_prefix",
]

#: go-micro's etcd registry prefix.
DEFAULT_PREFIX = "/micro/registry/"

ServiceKey = tuple[str, str]  # (service name, version)
Entry = tuple[ServiceKey, Node]  # one node of one service version


def encode_service(service: Service, node: Node) -> bytes:
    """The JSON go-micro stores for one node: a one-node ``registry.Service``."""
    doc = {
        "name": service.name,
        "version": service.version,
        "metadata": {},
        "endpoints": [],
        "nodes": [{"id": node.id, "address": node.address, "metadata": dict(node.metadata)}],
    }
    return orjson.dumps(doc)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def decode_service(value: bytes) -> tuple[ServiceKey, list[Node]] | None:
    """``((name, version), nodes)`` of a go-micro service value, or None if it is not one."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        return None
    version = doc.get("version")
    nodes = [
        Node(n["id"], n["address"], _str_map(n.get("metadata")))
        for n in doc.get("nodes") or ()
        if isinstance(n, dict) and isinstance(n.get("id"), str) and isinstance(n.get("address"), str)
    ]
    return (doc["name"], version if isinstance(version, str) else ""), nodes


def entries_of(value: bytes) -> list[Entry]:
    """The nodes of a stored value as entries; none if the value is not a go-micro service."""
    parsed = decode_service(value)
    if parsed is None:
        return []
    skey, nodes = parsed
    return [(skey, n) for n in nodes]


def _clean(part: str) -> str:
    return part.replace("/", "-")


def node_key(prefix: str, name: str, node_id: str) -> bytes:
    """The etcd key of a node: ``<prefix><name>/<node id>`` with "/" made "-"."""
    return f"{prefix}{_clean(name)}/{_clean(node_id)}".encode()


def service_prefix(prefix: str, name: str) -> bytes:
    """The key prefix under which every node of the named service is stored."""
    return f"{prefix}{_clean(name)}/".encode()
