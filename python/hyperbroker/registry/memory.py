"""An in-process registry: brokers sharing one MemoryRegistry instance see each other.

For tests and embedding; it also lets a foreign node (a Go service) be registered by hand.
Nodes registered with a TTL expire unless re-registered (the broker's heartbeat does that).
"""

from __future__ import annotations

import time

from ..errors import RegistryError
from .base import Node, QueueWatcher, Service, Watchers, WatchEvent

__all__ = ["MemoryRegistry"]

_Key = tuple[str, str]  # (name, version)


class MemoryRegistry:
    """A registry living in this process's memory. Share one instance between brokers."""

    def __init__(self) -> None:
        # (name, version) -> node id -> (node, expiry monotonic time or None)
        self._services: dict[_Key, dict[str, tuple[Node, float | None]]] = {}
        # name -> its versions (so a lookup by name does not scan every service)
        self._versions: dict[str, dict[str, None]] = {}
        # no node expires before this (None: none has a TTL); may be early, never late
        self._soonest: float | None = None
        self._watchers = Watchers()
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise RegistryError("registry is closed")

    def _emit(self, action: str, service: Service) -> None:
        self._watchers.put(WatchEvent(action, service))  # type: ignore[arg-type]

    def _snapshot(self, key: _Key) -> Service:
        nodes = self._services.get(key, {})
        return Service(key[0], key[1], tuple(n for n, _ in nodes.values()))

    def _next_expiry_in(self) -> float | None:
        if self._soonest is None:
            return None
        return max(0.0, self._soonest - time.monotonic()) + 0.001

    def _drop(self, key: _Key) -> None:
        del self._services[key]
        versions = self._versions[key[0]]
        del versions[key[1]]
        if not versions:
            del self._versions[key[0]]

    def _expire(self) -> None:
        """Remove the nodes whose TTL ran out (a scan only when one may have: see _soonest)."""
        now = time.monotonic()
        if self._soonest is None or now < self._soonest:
            return
        self._soonest = None
        for key in list(self._services):
            nodes = self._services[key]
            gone = []
            for nid, (_, exp) in nodes.items():
                if exp is None:
                    continue
                if exp <= now:
                    gone.append(nid)
                elif self._soonest is None or exp < self._soonest:
                    self._soonest = exp
            if not gone:
                continue
            removed = tuple(nodes.pop(nid)[0] for nid in gone)
            if nodes:
                self._emit("update", self._snapshot(key))
            else:
                self._drop(key)
                self._emit("delete", Service(key[0], key[1], removed))

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Add (or refresh) the service's nodes; with ``ttl`` they expire unless re-registered."""
        self._check()
        if not service.name:
            raise RegistryError("service name must not be empty")
        self._expire()
        key = (service.name, service.version)
        exp = None if ttl is None or ttl <= 0 else time.monotonic() + ttl
        if exp is not None and (self._soonest is None or exp < self._soonest):
            self._soonest = exp
        existed = key in self._services
        nodes = self._services.setdefault(key, {})
        self._versions.setdefault(service.name, {})[service.version] = None
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
            self._drop(key)
            self._emit("delete", Service(key[0], key[1], removed))

    async def get_service(self, name: str) -> list[Service]:
        """Every version of the named service (empty when unknown)."""
        self._check()
        self._expire()
        return [self._snapshot((name, v)) for v in self._versions.get(name, ())]

    async def list_services(self) -> list[Service]:
        self._check()
        self._expire()
        return [self._snapshot(k) for k in self._services]

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every current service, then every change."""
        self._check()
        self._expire()
        w = QueueWatcher(self._watchers.remove, self._next_expiry_in, self._expire)
        self._watchers.add(w, (self._snapshot(k) for k in self._services))
        return w

    async def close(self) -> None:
        """Stop all watchers; afterwards every call raises RegistryError. A registry shared
        between brokers is normally left open."""
        self._closed = True
        self._watchers.stop_all()

    def __repr__(self) -> str:
        return f"MemoryRegistry(services={len(self._services)})"
