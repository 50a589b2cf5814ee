"""Registries: where subscribers announce themselves and publishers find them.

MemoryRegistry (one process), MdnsRegistry (one network), EtcdRegistry (an etcd cluster, go-micro's
layout; needs ``hyperbroker[etcd]``), and ``from_url`` for the URL forms ``memory://``,
``mdns://``, ``etcd://host:port,...``.
"""

from __future__ import annotations

from .base import (
    BROADCAST_VERSION,
    Node,
    Registry,
    Service,
    Watcher,
    WatchEvent,
    service_name,
    topic_of,
)
from .etcd import EtcdRegistry
from .mdns import MdnsRegistry
from .memory import MemoryRegistry
from .url import from_url

__all__ = [
    "BROADCAST_VERSION",
    "EtcdRegistry",
    "MdnsRegistry",
    "MemoryRegistry",
    "Node",
    "Registry",
    "Service",
    "WatchEvent",
    "Watcher",
    "from_url",
    "service_name",
    "topic_of",
]
