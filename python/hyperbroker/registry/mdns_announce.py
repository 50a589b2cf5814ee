"""Batched mDNS announcements and goodbyes for :class:`~.mdns.MdnsRegistry`.

The registry hands every node it starts, changes or withdraws to an :class:`Announcer`; the
announcer sends the records (PTR, SRV, TXT, A/AAAA + NSEC) of everything due at the same
moment in as few packets as possible, never splitting one node's records over two packets (so
a receiver finds a node complete in its cache when its PTR arrives, and resolves it without a
query). Each node is announced ``repeats`` times ``interval`` seconds apart (RFC 6762 §8.3:
at least twice, one second apart); a goodbye (the same records with TTL 0, §10.1) is sent
``goodbye_repeats`` times and replaces any announcement still due for that node.

Nothing here probes: the registry's instance names are unique random ids, so it announces at
once (what zeroconf calls ``cooperating_responders``). Registration with zeroconf's responder
(``zc.registry``), so that it answers queries for the node, stays with the registry.

Only public zeroconf API is used: ``ServiceInfo.dns_*`` records, ``DNSOutgoing`` and
``Zeroconf.async_send``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from zeroconf import ServiceInfo, Zeroconf

# zeroconf re-exports both at its top level, outside __all__; these are their typed homes
from zeroconf._dns import DNSRecord
from zeroconf._protocol.outgoing import DNSOutgoing

__all__ = ["Announcer"]

log = logging.getLogger(__name__)

#: DNS header flags of an unsolicited authoritative response (RFC 6762 §18.2, §18.4)
_FLAGS_RESPONSE_AA = 0x8000 | 0x0400
#: a packet's size budget: zeroconf splits outgoing messages above 1460 bytes (Ethernet MTU)
_PACKET_BUDGET = 1460 - 12  # minus the DNS header
#: Pacing: at most this many packets back to back, then a pause, so that a burst does not
#: overflow receivers' socket buffers (Linux's default 208 KiB holds ~90 such packets, and a
#: receiver in the same process cannot read while we send).
_BURST_PACKETS = 8
_BURST_PAUSE = 0.005  # s


@dataclass(slots=True)
class _Due:
    """One node's pending sends."""

    info: ServiceInfo
    ttl: int | None  # None: the info's own TTLs; 0: goodbye
    left: int  # sends still to do
    at: float  # loop time of the next send
    size: int = 0  # bytes its records take alone in a packet (computed once)
    records: list[DNSRecord] = field(default_factory=list)


class Announcer:
    """Coalesces announcements and goodbyes into shared packets.

    :param coalesce: how long the first send of a node may wait for others to share its
        packets (s); the following sends of everything due within that window go together.
    """

    def __init__(
        self,
        zc: Zeroconf,
        *,
        coalesce: float = 0.01,
        repeats: int = 3,
        interval: float = 1.0,
        goodbye_repeats: int = 2,
        goodbye_interval: float = 0.25,
    ) -> None:
        self._zc = zc
        self._coalesce = coalesce
        self._repeats = repeats
        self._interval = interval
        self._goodbye_repeats = goodbye_repeats
        self._goodbye_interval = goodbye_interval
        self._due: dict[str, _Due] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set while nothing is due
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: counters: packets and records sent (announcements and goodbyes)
        self.packets_sent = 0
        self.records_sent = 0

    def announce(self, key: str, info: ServiceInfo) -> None:
        """Announce ``info`` (a new or changed node) ``repeats`` times, the first one now."""
        self._schedule(key, _Due(info, None, self._repeats, self._now()))

    def goodbye(self, key: str, info: ServiceInfo) -> None:
        """Withdraw ``info``: goodbyes replace any announcement of ``key`` still due."""
        self._schedule(key, _Due(info, 0, self._goodbye_repeats, self._now()))

    @property
    def pending(self) -> int:
        """How many nodes still have sends due."""
        return len(self._due)

    async def drain(self, timeout: float) -> None:
        """Send every goodbye still due now and wait (at most ``timeout``) for their repeats;
        announcements still due are dropped (used before the sockets close)."""
        for key, due in list(self._due.items()):
            if due.ttl != 0:
                del self._due[key]
            else:
                due.at = self._now()
        if not self._due:
            self._idle.set()
            return
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        """Stop sending (what is still due is dropped)."""
        self._closed = True
        self._due.clear()
        self._idle.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- internals ---------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _schedule(self, key: str, due: _Due) -> None:
        if self._closed:
            return
        self._due[key] = due
        self._idle.clear()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hyperbroker-mdns-announce")
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = min(d.at for d in self._due.values())
            delay = first - loop.time()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                continue
            # let everything scheduled within the coalescing window join this send
            await asyncio.sleep(self._coalesce)
            now = loop.time()
            window = now + self._coalesce
            batch = [(k, d) for k, d in self._due.items() if d.at <= window]
            try:
                await self._send([d for _, d in batch])
            except Exception:  # a send failure must not stop later announcements
                log.exception("mDNS announcement of %d nodes failed", len(batch))
            for k, d in batch:
                if self._due.get(k) is not d:
                    continue  # replaced while sending
                d.left -= 1
                if d.left <= 0:
                    del self._due[k]
                else:
                    d.at = now + (self._goodbye_interval if d.ttl == 0 else self._interval)
            if not self._due:
                self._idle.set()

    def _records(self, due: _Due) -> list[DNSRecord]:
        if not due.records:
            info, ttl = due.info, due.ttl
            due.records = [info.dns_pointer(override_ttl=ttl), info.dns_service(override_ttl=ttl)]
            due.records.append(info.dns_text(override_ttl=ttl))
            due.records.extend(info.get_address_and_nsec_records(override_ttl=ttl))
            out = DNSOutgoing(_FLAGS_RESPONSE_AA)
            for r in due.records:
                out.add_answer_at_time(r, 0)
            due.size = sum(len(p) for p in out.packets()) - 12
        return due.records

    async def _send(self, batch: list[_Due]) -> None:
        """Pack the batch's records into packets (a node's records never split) and send them,
        paced."""
        outs: list[DNSOutgoing] = []
        out: DNSOutgoing | None = None
        used = 0
        for due in batch:
            records = self._records(due)
            if out is not None and used + due.size > _PACKET_BUDGET:
                out = None
            if out is None:
                out, used = DNSOutgoing(_FLAGS_RESPONSE_AA), 0
                outs.append(out)
            for r in records:
                out.add_answer_at_time(r, 0)
            used += due.size
            self.records_sent += len(records)
        in_burst = 0
        for out in outs:
            if self._zc.done:
                return
            if in_burst >= _BURST_PACKETS:
                await asyncio.sleep(_BURST_PAUSE)
                in_burst = 0
            packets = len(out.packets())
            self._zc.async_send(out)
            self.packets_sent += packets
            in_burst += packets
