"""The zeroconf instance of the mDNS registry: ``ip_version`` spellings, creating and starting
an AsyncZeroconf with errors that say what to do (a port held by another responder, no usable
interface), and asking zeroconf's cache whether another responder claims an instance name.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from zeroconf import Error as ZeroconfError
from zeroconf import InterfaceChoice, IPVersion, Zeroconf, current_time_millis
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from ..errors import RegistryError

__all__ = ["claimed_elsewhere", "coerce_ip_version", "open_zeroconf", "start_zeroconf"]

_TYPE_SRV = 33  # RFC 2782


def coerce_ip_version(value: Any) -> IPVersion | None:
    """Accept an IPVersion, or a spelling of one: "v4"/4, "v6"/6, "all"/"both"/46."""
    if value is None or isinstance(value, IPVersion):
        return value
    text = str(getattr(value, "name", value)).strip().lower().replace("_", "").replace("-", "")
    if text in {"4", "v4", "ipv4", "v4only", "ipv4only", "inet"}:
        return IPVersion.V4Only
    if text in {"6", "v6", "ipv6", "v6only", "ipv6only", "inet6"}:
        return IPVersion.V6Only
    if text in {"all", "both", "46", "dual", "any"}:
        return IPVersion.All
    raise RegistryError(f"ip_version must be an IPVersion, 'v4', 'v6' or 'all', not {value!r}")


def open_zeroconf(interfaces: list[str] | None, ip_version: IPVersion | None) -> AsyncZeroconf:
    """A new AsyncZeroconf on ``interfaces`` (None: every interface); needs a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise RegistryError("MdnsRegistry must first be used inside a running asyncio event loop") from None
    where = "every interface" if interfaces is None else f"interfaces={interfaces}"
    try:
        return AsyncZeroconf(
            interfaces=interfaces if interfaces is not None else InterfaceChoice.All,
            ip_version=ip_version,
        )
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise RegistryError(
                f"cannot bind UDP port 5353 for mDNS on {where}: another mDNS responder holds "
                "it exclusively (avahi-daemon with disallow-other-stacks=yes, mDNSResponder, "
                "systemd-resolved with MulticastDNS=yes, ...). Allow other stacks (avahi: "
                "disallow-other-stacks=no in avahi-daemon.conf), pass "
                "MdnsRegistry(interfaces=[...]) to bind other addresses, or use "
                "MemoryRegistry"
            ) from e
        raise RegistryError(
            f"cannot open mDNS sockets on {where}: {e}. Pass MdnsRegistry(interfaces=[...]) "
            "with addresses this host has, or use MemoryRegistry"
        ) from e
    except (RuntimeError, ValueError, TypeError, ZeroconfError) as e:
        raise RegistryError(f"cannot start mDNS on {where}: {e}") from e


async def start_zeroconf(aiozc: AsyncZeroconf, interfaces: list[str] | None) -> None:
    """Wait until zeroconf has started; RegistryError when it has no usable interface."""
    try:
        await aiozc.zeroconf.async_wait_for_start()
    except ZeroconfError as e:
        raise RegistryError(f"mDNS did not start: {e!r}") from e
    if not getattr(aiozc.zeroconf.engine, "senders", True):
        raise RegistryError(
            f"mDNS has no usable network interface (interfaces={interfaces!r}): none could join the multicast group"
        )


def claimed_elsewhere(zc: Zeroconf, info: AsyncServiceInfo) -> bool:
    """Whether another responder already announced this instance name with another target
    (what probing would find; a name we announced ourselves matches, so it is ours)."""
    now = current_time_millis()
    for record in zc.cache.entries_with_name(info.name):
        if record.type != _TYPE_SRV or record.ttl == 0 or record.is_expired(now):
            continue
        theirs = (getattr(record, "port", None), str(getattr(record, "server", "")).lower())
        if theirs != (info.port, str(info.server).lower()):
            return True
    return False
