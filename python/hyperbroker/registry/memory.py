"""An in-process registry: brokers sharing one MemoryRegistry instance see each other.

For tests and embedding; it also lets a foreign node (a Go service) be registered by hand.
Nodes registered with a TTL expire unless re-registered (the broker's heartbeat does that).
"""

from __future__ import annotations

import time

from ..errors import RegistryError
from .base import Node, QueueWatcher, Service, WatchEvent

__all__ = ["MemoryRegistry"]

_Key = tuple[str, str]  # (name, version)


class MemoryRegistry:
    """A registry living in this process's memory. Share one instance between brokers."""

    def __init__(self) -> None:
        # (name, version) -> node id -> (node, expiry monotonic time or None)
        self._services: dict[_Key, dict[str, tuple[Node, float | None]]] = {}
        self._watchers: set[QueueWatcher] = set()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise RegistryError("registry is closed")

    def _emit(self, action: str, service: Service) -> None:
        ev = WatchEvent(action, service)  # type: ignore[arg-type]
        for w in list(self._watchers):
            w.put(ev)

    def _snapshot(self, key: _Key) -> Service:
        nodes = self._services.get(key, {})
        return Service(key[0], key[1], tuple(n for n, _ in nodes.values()))

    def _next_expiry_in(self) -> float | None:
        soonest: float | None = None
        for nodes in self._services.values():
            for _, exp in nodes.values():
                if exp is not None and (soonest is None or exp < soonest):
                    soonest = exp
        if soonest is None:
            return None
        return max(0.0, soonest - time.monotonic()) + 0.001

    def _expire(self) -> None:
        now = time.monotonic()
        for key in list(self._services):
            nodes = self._services[key]
            gone = [nid for nid, (_, exp) in nodes.items() if exp is not None and exp <= now]
            if not gone:
                continue
            removed = tuple(nodes.pop(nid)[0] for nid in gone)
            if nodes:
                self._emit("update", self._snapshot(key))
            else:
                del self._services[key]
                self._emit("delete", Service(key[0], key[1], removed))

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Add (or refresh) the service's nodes; with ``ttl`` they expire unless re-registered."""
        self._check()
        if not service.name:
            raise RegistryError("service name must not be empty")
        self._expire()
        key = (service.name, service.version)
        exp = None if ttl is None or ttl <= 0 else time.monotonic() + ttl
        existed = key in self._services
        nodes = self._services.setdefault(key, {})
        changed = not existed
        for n in service.nodes:
            old = nodes.get(n.id)
            if old is None or old[0] != n:
                changed = True
            nodes[n.id] = (n, exp)
        if changed:
            self._emit("update" if existed else "create", self._snapshot(key))

    async def deregister(self, service: Service) -> None:
        """Remove the service's nodes; the service goes when its last node does."""
        self._check()
        key = (service.name, service.version)
        nodes = self._services.get(key)
        if nodes is None:
            return
        removed = tuple(nodes.pop(n.id)[0] for n in service.nodes if n.id in nodes)
        if not removed:
            return
        if nodes:
            self._emit("update", self._snapshot(key))
        else:
            del self._services[key]
            self._emit("delete", Service(key[0], key[1], removed))

    async def get_service(self, name: str) -> list[Service]:
        """Every version of the named service (empty when unknown)."""
        self._check()
        self._expire()
        return [self._snapshot(k) for k in self._services if k[0] == name]

    async def list_services(self) -> list[Service]:
        self._check()
        self._expire()
        return [self._snapshot(k) for k in self._services]

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every current service, then every change."""
        self._check()
        self._expire()
        w = QueueWatcher(self._unwatch, self._next_expiry_in, self._expire)
        for k in self._services:
            w.put(WatchEvent("create", self._snapshot(k)))
        self._watchers.add(w)
        return w

    def _unwatch(self, w: QueueWatcher) -> None:
        self._watchers.discard(w)

    async def close(self) -> None:
        """Stop all watchers; afterwards every call raises RegistryError. A registry shared
        between brokers is normally left open."""
        self._closed = True
        for w in list(self._watchers):
            w.stop()
        self._watchers.clear()

    def __repr__(self) -> str:
        return f"MemoryRegistry(services={len(self._services)})"
