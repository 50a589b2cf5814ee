"""Addresses for the etcd registry: the etcd endpoints a user gives (``parse_endpoint``), and
the host address stored for a node bound to ``0.0.0.0`` / ``::`` (``expand_unspecified``).

No I/O beyond reading this host's interface addresses; no etcd client needed (``url.py``
checks registry URLs with ``parse_endpoint`` without importing aetcd).
"""

from __future__ import annotations

import ipaddress

from ..errors import RegistryError
from .base import Node

__all__ = ["DEFAULT_PORT", "expand_unspecified", "format_endpoint", "local_ip", "parse_endpoint"]

#: etcd's client port, used for an endpoint without one.
DEFAULT_PORT = 2379


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host[:port]`` / ``[v6][:port]`` / ``http://host:port`` into host and port (2379)."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if not text:
        raise RegistryError(f"etcd endpoint {endpoint!r} is empty")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise RegistryError(f"etcd endpoint {endpoint!r}: unclosed '[' of an IPv6 address")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise RegistryError(f"etcd endpoint {endpoint!r} is not host:port")
    elif text.count(":") > 1:
        raise RegistryError(f"etcd endpoint {endpoint!r}: write an IPv6 address in brackets, e.g. '[::1]:2379'")
    else:
        host, _, port_text = text.partition(":")
    if not host or any(c in host for c in "/@?#, "):
        raise RegistryError(f"etcd endpoint {endpoint!r}: bad host {host!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RegistryError(f"etcd endpoint {endpoint!r}: port must be 1..65535")
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_ip(version: int) -> str:
    """This host's best address to announce (go-micro's ``addr.Extract``): a private address,
    else a public one, else loopback. Link-local addresses are never chosen."""
    import ifaddr  # zeroconf's dependency and ours

    private: list[str] = []
    public: list[str] = []
    for adapter in ifaddr.get_adapters():
        for a in adapter.ips:
            text = a.ip if isinstance(a.ip, str) else a.ip[0]
            try:
                ip = ipaddress.ip_address(text.split("%", 1)[0])
            except ValueError:
                continue
            if ip.version != version or ip.is_loopback or ip.is_link_local or ip.is_unspecified:
                continue
            (private if ip.is_private else public).append(str(ip))
    found = private or public
    if found:
        return found[0]
    return "127.0.0.1" if version == 4 else "::1"


def expand_unspecified(node: Node) -> Node:
    """A node at ``0.0.0.0:port`` / ``[::]:port`` gets this host's best address instead."""
    host, sep, port = node.address.rpartition(":")
    if not sep:
        return node
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return node
    if not ip.is_unspecified:
        return node
    local = local_ip(ip.version)
    address = f"[{local}]:{port}" if ip.version == 6 else f"{local}:{port}"
    return Node(node.id, address, node.metadata)
