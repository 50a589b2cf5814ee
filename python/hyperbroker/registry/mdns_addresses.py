"""Addresses for the mDNS registry: splitting a node's ``host:port``, the IP addresses to
announce for a node (its host, ``advertise`` metadata, or every address of the interfaces in
use for ``0.0.0.0``/``::``), and which announced address a discovered node is reached at.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

from zeroconf import IPVersion, Zeroconf

from ..errors import RegistryError
from .base import Node

__all__ = ["best_address", "ip_of", "local_addresses", "node_addresses", "split_host_port"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port`` into host and port."""
    host: str
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep:
            port_text = ""
    else:
        host, _, port_text = address.rpartition(":")
        if ":" in host:
            raise RegistryError(f"node address {address!r}: write an IPv6 address in brackets, e.g. '[::1]:8080'")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise RegistryError(f"node address {address!r} is not 'host:port' with a port in 1..65535")
    return host, port


def ip_of(text: str) -> IP | None:
    """The IP address ``text`` spells (a ``%zone`` ignored), or None."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _rank(ip: IP) -> int:
    """Lower is better: IPv4 before IPv6; routable, then link-local, then loopback."""
    base = 0 if ip.version == 4 else 3
    if ip.is_loopback:
        return base + 2
    if ip.is_link_local:
        return base + 1
    return base


def _format_address(ip: IP, port: int) -> str:
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def best_address(ips: Sequence[IP], port: int) -> str:
    """The ``host:port`` a node announced at ``ips`` is reached at."""
    best = min(ips, key=_rank)  # min() is stable: ties keep the announced order
    return _format_address(best, port)


def local_addresses(zc: Zeroconf, ip_version: IPVersion | None) -> list[str]:
    """Every address of the interfaces zeroconf uses (routable ones when there are any)."""
    found: list[str] = []
    for transport in getattr(zc.engine, "senders", ()):
        sock_name = getattr(transport, "sock_name", None)
        if not sock_name:
            continue
        host = str(sock_name[0]).split("%", 1)[0]
        ip = ip_of(host)
        if ip is not None and not ip.is_unspecified and host not in found:
            found.append(host)
    if not found:  # a single wildcard socket (InterfaceChoice.Default): ask the OS
        import ifaddr  # zeroconf's own dependency

        version = ip_version or IPVersion.V4Only
        for adapter in ifaddr.get_adapters():
            for a in adapter.ips:
                if a.is_IPv4 and version is not IPVersion.V6Only:
                    host = str(a.ip)
                elif a.is_IPv6 and version is not IPVersion.V4Only:
                    host = str(a.ip[0]).split("%", 1)[0]
                else:
                    continue
                if host not in found:
                    found.append(host)
    routable = [h for h in found if (ip := ip_of(h)) and not (ip.is_loopback or ip.is_link_local)]
    return routable or found


async def node_addresses(zc: Zeroconf, ip_version: IPVersion | None, node: Node, host: str) -> list[str]:
    """The IP addresses to announce for a node (see the mdns module doc for the rules)."""
    advertise = node.metadata.get("advertise")
    hosts = [h.strip() for h in advertise.split(",") if h.strip()] if advertise else [host]
    out: list[str] = []
    for h in hosts:
        if h.startswith("[") and h.endswith("]"):
            h = h[1:-1]
        if h in ("", "0.0.0.0", "::", "*"):
            candidates = local_addresses(zc, ip_version)
        elif ip_of(h) is not None:
            candidates = [h.split("%", 1)[0]]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(h, None, type=socket.SOCK_STREAM)
            except OSError as e:
                raise RegistryError(f"node {node.id!r}: cannot resolve host {h!r}: {e}") from e
            candidates = [str(i[4][0]).split("%", 1)[0] for i in infos]
        for c in candidates:
            if c not in out:
                out.append(c)
    if not out:
        raise RegistryError(f"node {node.id!r}: no address to announce for {node.address!r}")
    return out
