"""The local picture of etcd for an etcd registry: ``WatchCache``.

Owns the cache of the prefix (one range read, then etcd's watch stream with previous values,
so a delete carries the old node), the view (the cache merged with this registry's own nodes
from the ``LeaseKeeper``, which are part of it at once) and the watchers told of every change.
Nothing is polled; while etcd is unreachable the last known view stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from .base import Node, QueueWatcher, Watchers, diff_views, service_of
from .etcd_keys import Entry, ServiceKey, entries_of
from .etcd_lease import LeaseKeeper

__all__ = ["WatchCache"]

log = logging.getLogger("hyperbroker.registry.etcd")  # one logger for the whole etcd registry


class WatchCache:
    """The cache of ``prefix`` in etcd, the merged view, and the watchers.

    ``wanted`` is set by the first ``watch()`` of the registry: from then on the session keeps
    the cache and the registry answers from the view.
    """

    def __init__(self, prefix: bytes, timeout: float, keeper: LeaseKeeper) -> None:
        self._prefix = prefix
        self._timeout = timeout
        self._keeper = keeper
        self.wanted = False
        self._cache: dict[bytes, Entry] = {}
        self._view: dict[ServiceKey, dict[str, Node]] = {}
        self._watchers = Watchers()

    @property
    def view(self) -> dict[ServiceKey, dict[str, Node]]:
        """Every known service version's nodes by id (read only)."""
        return self._view

    def known(self) -> int:
        """How many nodes the view holds."""
        return sum(len(n) for n in self._view.values())

    # -- watchers ----------------------------------------------------------------------------------

    def add_watcher(self, w: QueueWatcher) -> None:
        """Tell ``w`` "create" for every known service, then every change."""
        self._watchers.add(w, (service_of(k, nodes) for k, nodes in self._view.items()))

    def remove_watcher(self, w: QueueWatcher) -> None:
        self._watchers.remove(w)

    def stop_watchers(self) -> None:
        self._watchers.stop_all()

    # -- the merged view ---------------------------------------------------------------------------

    def _compute_view(self) -> dict[ServiceKey, dict[str, Node]]:
        view: dict[ServiceKey, dict[str, Node]] = {}
        for key, (skey, node) in self._cache.items():
            if not self._keeper.shadows(key):
                view.setdefault(skey, {})[node.id] = node
        for skey, node in self._keeper.views():
            view.setdefault(skey, {})[node.id] = node
        return view

    def refresh(self) -> None:
        """Recompute the view; tell the watchers what changed (a delete carries the old nodes)."""
        old, self._view = self._view, self._compute_view()
        for ev in diff_views(old, self._view):
            self._watchers.put(ev)

    @staticmethod
    def _cache_put(cache: dict[bytes, Entry], key: bytes, value: bytes) -> None:
        entries = entries_of(value)
        if entries:
            cache[key] = entries[0]  # go-micro writes one node per key
        else:
            cache.pop(key, None)
            log.debug("etcd key %r is not a go-micro service node; ignored", key)

    # -- reading etcd ------------------------------------------------------------------------------

    async def resync(self, client: Any) -> int:
        """Read the whole prefix into the cache (changes since become watch events); the
        revision read at."""
        rsp = await asyncio.wait_for(client.get_prefix(self._prefix), self._timeout)
        cache: dict[bytes, Entry] = {}
        for kv in rsp:
            self._cache_put(cache, bytes(kv.key), bytes(kv.value))
        self._keeper.mark_missing(cache)
        self._cache = cache
        self.refresh()
        return int(rsp.header.revision)

    async def watch(self, client: Any, rev: int, own_deleted: Callable[[], None]) -> None:
        """Apply etcd's watch stream from ``rev + 1`` until it ends; ``own_deleted`` is called
        when etcd deleted one of this registry's keys (it is to be put again)."""
        stream = await asyncio.wait_for(
            client.watch_prefix(self._prefix, start_revision=rev + 1, prev_kv=True), self._timeout
        )
        try:
            async for ev in stream:
                self._apply(ev, own_deleted)
        finally:
            # aetcd's cancel may wait on its request queue: never let it hold the session
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(stream.cancel(), 1.0)

    def _apply(self, ev: Any, own_deleted: Callable[[], None]) -> None:
        key = bytes(ev.kv.key)
        if ev.kind == "PUT":
            self._cache_put(self._cache, key, bytes(ev.kv.value))
        else:
            self._cache.pop(key, None)
            if self._keeper.deleted_in_etcd(key):
                # our key went (lease expired in a partition, or deleted by someone): put it back
                log.info("etcd deleted our key %r; registering it again", key)
                own_deleted()
        self.refresh()
