"""Registries: where subscribers announce themselves and publishers find them."""

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
from .mdns import MdnsRegistry
from .memory import MemoryRegistry

__all__ = [
    "BROADCAST_VERSION",
    "MdnsRegistry",
    "MemoryRegistry",
    "Node",
    "Registry",
    "Service",
    "WatchEvent",
    "Watcher",
    "service_name",
    "topic_of",
]
