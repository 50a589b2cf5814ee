"""Batched resolution of discovered DNS-SD instances for :class:`~.mdns.MdnsRegistry`.

The browser tells the registry that an instance appeared or changed; the registry asks this
:class:`Resolver` for its SRV/TXT/A/AAAA records. Most of the time they are already in
zeroconf's cache (an announcement carries them next to the PTR) and the instance resolves on
the next tick without a packet. When they are not — a large response split over many packets,
or packets lost to a full socket buffer when a thousand nodes answer at once — the resolver
waits a short grace time for the rest of the response, then asks for every missing instance
in a few multi-question query packets (paced), retrying a bounded number of times, instead of
one query per instance.

One task, no per-instance tasks; public zeroconf API only (``AsyncServiceInfo``,
``DNSQuestion``, ``DNSOutgoing``, ``Zeroconf.async_send``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import Zeroconf
from zeroconf._dns import DNSQuestion  # re-exported by zeroconf, outside __all__
from zeroconf._protocol.outgoing import DNSOutgoing  # re-exported by zeroconf, outside __all__
from zeroconf.asyncio import AsyncServiceInfo

__all__ = ["Resolver"]

log = logging.getLogger(__name__)

_CLASS_IN = 1
_TYPE_A, _TYPE_TXT, _TYPE_AAAA, _TYPE_SRV = 1, 16, 28, 33
#: how many instances one query packet asks about (4 questions each, compressed names)
_PER_QUERY = 24
#: Pacing of query packets (each draws a response of several packets from every responder).
_BURST_PACKETS = 4
_BURST_PAUSE = 0.01  # s

#: called with (lower-cased id, resolved info) or (id, None) when it did not resolve in time
OnResolved = Callable[[str, AsyncServiceInfo | None], None]


@dataclass(slots=True)
class _Want:
    name: str  # the instance's full name
    since: float  # loop time it was first wanted (or last asked about)
    asked: int = 0  # queries sent for it


class Resolver:
    """Resolves instances of one service type; reports each through ``on_resolved``.

    :param grace: how long an instance missing records waits for them before it is asked for (s)
    :param retry: the time between two queries about the same instance (s)
    :param tries: queries about one instance before it is given up
    """

    def __init__(
        self,
        zc: Zeroconf,
        service_type: str,
        on_resolved: OnResolved,
        *,
        coalesce: float = 0.005,
        grace: float = 0.25,
        retry: float = 1.0,
        tries: int = 3,
    ) -> None:
        self._zc = zc
        self._type = service_type
        self._on_resolved = on_resolved
        self._coalesce = coalesce
        self._grace = grace
        self._retry = retry
        self._tries = tries
        self._wanted: dict[str, _Want] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: counters: query packets sent, instances given up
        self.queries_sent = 0
        self.given_up = 0

    def want(self, lid: str, name: str) -> None:
        """Resolve ``name`` (again: new records may have arrived)."""
        if self._closed:
            return
        w = self._wanted.get(lid)
        if w is None or w.name != name:
            self._wanted[lid] = _Want(name, asyncio.get_running_loop().time())
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hyperbroker-mdns-resolve")
        self._wake.set()

    def forget(self, lid: str) -> None:
        self._wanted.pop(lid, None)

    @property
    def pending(self) -> int:
        return len(self._wanted)

    async def close(self) -> None:
        self._closed = True
        self._wanted.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._wake.clear()
            await asyncio.sleep(self._coalesce)  # let a packet's worth of instances gather
            try:
                next_at = await self._pass(loop.time())
            except Exception:  # keep resolving what comes next
                log.exception("mDNS resolution pass failed")
                next_at = loop.time() + self._retry
            if next_at is None:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, next_at - loop.time()))

    async def _pass(self, now: float) -> float | None:
        """Report what the cache completes; ask for what waited long enough. Returns when the
        next pass is due (None: nothing left)."""
        zc = self._zc
        ask: list[tuple[str, AsyncServiceInfo]] = []
        next_at: float | None = None
        for lid, w in list(self._wanted.items()):
            info = AsyncServiceInfo(self._type, w.name)
            if info.load_from_cache(zc):
                del self._wanted[lid]
                self._on_resolved(lid, info)
                continue
            due = w.since + (self._grace if w.asked == 0 else self._retry)
            if due > now:
                next_at = due if next_at is None else min(next_at, due)
                continue
            if w.asked >= self._tries:
                del self._wanted[lid]
                self.given_up += 1
                log.debug("mDNS instance %s did not resolve", w.name)
                self._on_resolved(lid, None)
                continue
            w.asked += 1
            w.since = now
            ask.append((lid, info))
            due = now + self._retry
            next_at = due if next_at is None else min(next_at, due)
        if ask:
            await self._ask([info for _, info in ask])
        return next_at

    async def _ask(self, infos: list[AsyncServiceInfo]) -> None:
        in_burst = 0
        for start in range(0, len(infos), _PER_QUERY):
            out = DNSOutgoing(0)  # a multicast (QM) query
            for info in infos[start : start + _PER_QUERY]:
                out.add_question(DNSQuestion(info.name, _TYPE_SRV, _CLASS_IN))
                out.add_question(DNSQuestion(info.name, _TYPE_TXT, _CLASS_IN))
                server = info.server or info.name  # the SRV target once known
                out.add_question(DNSQuestion(server, _TYPE_A, _CLASS_IN))
                out.add_question(DNSQuestion(server, _TYPE_AAAA, _CLASS_IN))
            if self._zc.done:
                return
            if in_burst >= _BURST_PACKETS:
                await asyncio.sleep(_BURST_PAUSE)
                in_burst = 0
            self._zc.async_send(out)
            packets = len(out.packets())
            self.queries_sent += packets
            in_burst += packets
