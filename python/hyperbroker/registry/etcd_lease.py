"""What an etcd registry keeps in etcd, and its lease: ``LeaseKeeper``.

Owns this registry's own nodes (key, value, lease TTL, whether etcd has it), the deletes still
owed, and the lease: one lease per registry carries every leased key; it is granted on first
need, renewed by the session (``renew``), and when found gone (after a partition longer than
the TTL) every leased key is marked unstored so the next ``flush`` grants a new lease and puts
them again. A new TTL moves the keys to a new lease and revokes the old one. ``flush`` writes
what is owed; ``cleanup`` is what ``close`` leaves behind (leases revoked, keys deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Container, Iterator
from dataclasses import dataclass
from typing import Any

from .etcd_client import is_lease_gone
from .etcd_keys import Entry

__all__ = ["LeaseKeeper", "OwnNode", "lease_ttl_of"]

log = logging.getLogger("hyperbroker.registry.etcd")  # one logger for the whole etcd registry

#: How often a session without a lease checks its connection (s).
PING_INTERVAL = 5.0
#: etcd leases are whole seconds.
MIN_TTL = 1


def lease_ttl_of(ttl: float | None) -> int | None:
    """The lease TTL (whole seconds) for a registration's ``ttl``; None: no lease."""
    return None if ttl is None or ttl <= 0 else max(MIN_TTL, math.ceil(ttl))


@dataclass(slots=True)
class OwnNode:
    """A node this registry keeps in etcd."""

    view: Entry
    value: bytes
    ttl: int | None  # lease TTL, or None for a key without a lease
    stored: bool = False  # put in etcd (on the current lease)


class LeaseKeeper:
    """This registry's own keys, the deletes owed, and the lease that carries the keys."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._own: dict[bytes, OwnNode] = {}
        self._pending_deletes: set[bytes] = set()
        self._lease: int | None = None
        self._lease_ttl: int | None = None  # TTL of the lease to hold
        self._lease_granted: int | None = None  # TTL etcd granted it
        self._old_leases: list[int] = []  # to revoke once their keys moved
        self._write_lock: asyncio.Lock | None = None

    # -- own nodes ---------------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        return key in self._own

    def __len__(self) -> int:
        return len(self._own)

    def views(self) -> Iterator[Entry]:
        """The entries of every own node (they are part of the local view at once)."""
        return (own.view for own in self._own.values())

    def shadows(self, key: bytes) -> bool:
        """Whether what etcd holds under ``key`` is overridden locally (own, or being deleted)."""
        return key in self._own or key in self._pending_deletes

    def all_stored(self) -> bool:
        return all(o.stored for o in self._own.values())

    @property
    def has_pending_deletes(self) -> bool:
        return bool(self._pending_deletes)

    def set_ttl(self, lease_ttl: int | None) -> None:
        """The lease to hold has this TTL (None: this registration needs no lease)."""
        if lease_ttl is not None and lease_ttl != self._lease_ttl:
            if self._lease is not None:
                # a new TTL: move every leased key to a new lease, then revoke the old one
                self._old_leases.append(self._lease)
                self.lease_lost()
            self._lease_ttl = lease_ttl

    def put(self, key: bytes, view: Entry, value: bytes, ttl: int | None) -> OwnNode | None:
        """Keep a node; None when it is already kept unchanged (nothing to write)."""
        old = self._own.get(key)
        if old is not None and old.value == value and old.ttl == ttl:
            return None
        own = OwnNode(view, value, ttl)
        self._own[key] = own
        self._pending_deletes.discard(key)
        return own

    def forget(self, key: bytes, own: OwnNode) -> None:
        """Undo ``put`` of ``own`` (unless it has been replaced since)."""
        if self._own.get(key) is own:
            del self._own[key]

    def remove(self, key: bytes, ever_connected: bool) -> bool:
        """Stop keeping a node; its key is deleted by the next flush. False if it was not kept."""
        own = self._own.pop(key, None)
        if own is None:
            return False
        if ever_connected or own.stored:
            self._pending_deletes.add(key)
        return True

    def mark_missing(self, present: Container[bytes]) -> None:
        """After a full read of etcd: own keys not ``present`` were deleted; put them again."""
        for key, own in self._own.items():
            if own.stored and key not in present:
                own.stored = False  # deleted behind our back: put it again

    def deleted_in_etcd(self, key: bytes) -> bool:
        """etcd deleted ``key``; True if it was one of ours (it is to be put again)."""
        own = self._own.get(key)
        if own is not None and own.stored:
            own.stored = False
            return True
        return False

    # -- the lease ---------------------------------------------------------------------------------

    def lease_lost(self) -> None:
        self._lease = None
        self._lease_granted = None
        for own in self._own.values():
            if own.ttl is not None:
                own.stored = False

    def ping_interval(self) -> float:
        """How often the session renews the lease (TTL/3), or checks a connection without one."""
        if self._lease is not None and self._lease_granted:
            return max(0.2, self._lease_granted / 3)
        return PING_INTERVAL

    async def check_lease(self, client: Any) -> None:
        """After a reconnect: is the lease still alive? (it is not after a long partition)."""
        if self._lease is None:
            return
        reply = await asyncio.wait_for(client.refresh_lease(self._lease), self._timeout)
        if reply is None or reply.TTL <= 0:
            log.warning("etcd lease %x expired while etcd was unreachable; registering again", self._lease)
            self.lease_lost()

    async def renew(self, client: Any) -> bool:
        """Renew the lease (etcd's LeaseKeepAlive); False when there is no lease to renew."""
        if self._lease is None:
            return False
        reply = await asyncio.wait_for(client.refresh_lease(self._lease), self._timeout)
        if reply is None or reply.TTL <= 0:
            log.warning("etcd lease %x expired; registering again with a new lease", self._lease)
            self.lease_lost()
            await self.flush(client)
        return True

    async def _grant(self, client: Any) -> int:
        assert self._lease_ttl is not None
        lease = await asyncio.wait_for(client.lease(self._lease_ttl), self._timeout)
        self._lease = int(lease.id)
        self._lease_granted = int(lease.ttl)
        log.debug("etcd lease %x granted, TTL %s s", self._lease, self._lease_granted)
        return self._lease

    # -- writing -----------------------------------------------------------------------------------

    async def flush(self, client: Any) -> None:
        """Write what is owed: deletes, the lease, unstored keys; revoke replaced leases."""
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:
            for key in list(self._pending_deletes):
                await asyncio.wait_for(client.delete(key), self._timeout)
                self._pending_deletes.discard(key)
            for attempt in range(2):
                try:
                    await self._put_unstored(client)
                    break
                except Exception as e:
                    if attempt or not is_lease_gone(e):
                        raise
                    self.lease_lost()
            for old in list(self._old_leases):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.revoke_lease(old), self._timeout)
                self._old_leases.remove(old)

    async def _put_unstored(self, client: Any) -> None:
        for key, own in list(self._own.items()):
            if own.stored:
                continue
            lease = None
            if own.ttl is not None:
                lease = self._lease if self._lease is not None else await self._grant(client)
            await asyncio.wait_for(client.put(key, own.value, lease=lease), self._timeout)
            if self._own.get(key) is own:
                own.stored = True

    async def cleanup(self, client: Any) -> None:
        """On close: revoke the leases (their keys go at once), delete the keys without a lease
        and the deletes still owed. Raises what etcd raises; ``clear`` afterwards."""
        for lease in [*self._old_leases, *([self._lease] if self._lease is not None else [])]:
            await client.revoke_lease(lease)
        for key, own in self._own.items():
            if own.ttl is None and own.stored:
                await client.delete(key)
        for key in self._pending_deletes:
            await client.delete(key)

    def clear(self) -> None:
        """Forget the lease, own nodes and owed deletes (after close)."""
        self._lease = None
        self._own.clear()
        self._pending_deletes.clear()
