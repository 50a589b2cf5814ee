"""The merged view of the mDNS registry: ``MdnsView``.

Owns the view ``name -> version -> lower-cased node id -> node``, kept incrementally (where
each node id is placed in it), and the watchers told of every change. What a node id holds
(this registry's own registration wins over the network's) is asked of the registry through
the ``entry_of`` callback given at creation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .base import Node, QueueWatcher, Service, Watchers, diff_views, service_of
from .mdns_records import Entry, ServiceKey

__all__ = ["MdnsView"]


class MdnsView:
    """Every known node by service and version, and the registry's watchers."""

    def __init__(self, entry_of: Callable[[str], Entry | None]) -> None:
        self._entry_of = entry_of
        self._view: dict[str, dict[str, dict[str, Node]]] = {}
        self._placed: dict[str, ServiceKey] = {}
        self._watchers = Watchers()

    def __len__(self) -> int:
        """How many nodes are placed in the view."""
        return len(self._placed)

    def _nodes(self, key: ServiceKey) -> dict[str, Node] | None:
        versions = self._view.get(key[0])
        return None if versions is None else versions.get(key[1])

    def refresh(self, lids: Iterable[str]) -> None:
        """Bring the given nodes' places in the view up to date and tell the watchers what
        changed (one event per service touched)."""
        before: dict[ServiceKey, dict[str, Node] | None] = {}
        for lid in lids:
            old_key = self._placed.get(lid)
            entry = self._entry_of(lid)
            new_key = entry[0] if entry is not None else None
            for k in (old_key, new_key):
                if k is not None and k not in before:
                    nodes = self._nodes(k)
                    before[k] = dict(nodes) if nodes is not None else None
            if old_key is not None:
                nodes = self._nodes(old_key)
                if nodes is not None:
                    nodes.pop(lid, None)
                    if not nodes:
                        versions = self._view[old_key[0]]
                        del versions[old_key[1]]
                        if not versions:
                            del self._view[old_key[0]]
                del self._placed[lid]
            if entry is not None:
                key, node = entry
                self._view.setdefault(key[0], {}).setdefault(key[1], {})[lid] = node
                self._placed[lid] = key
        for ev in diff_views(before, {key: self._nodes(key) for key in before}):
            self._watchers.put(ev)

    def services(self, name: str | None = None) -> list[Service]:
        """Every known service version (of ``name`` when given)."""
        names: Iterable[str] = self._view if name is None else [name] if name in self._view else []
        return [service_of((n, v), nodes) for n in names for v, nodes in self._view[n].items()]

    def clear(self) -> None:
        self._view.clear()
        self._placed.clear()

    # -- watchers ----------------------------------------------------------------------------

    def add_watcher(self, w: QueueWatcher) -> None:
        """Tell ``w`` "create" for every known service, then every change."""
        self._watchers.add(w, self.services())

    def remove_watcher(self, w: QueueWatcher) -> None:
        self._watchers.remove(w)

    def stop_watchers(self) -> None:
        self._watchers.stop_all()
