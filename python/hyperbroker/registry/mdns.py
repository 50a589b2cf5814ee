"""A registry over multicast DNS service discovery (DNS-SD over mDNS), using python-zeroconf.

Every registered node is one DNS-SD instance of ``_hyperbroker._tcp.local.``: the instance name
is the node id, the SRV port and A/AAAA records give the node's address, and the TXT record
carries the service model::

    name=topic:orders  topic=orders  version=ff.http.broadcast  path=/_sub  secure=true ...

(``name`` is always present, ``topic`` only for ``topic:`` services; every node metadata entry
follows.) Discovery runs an :class:`~zeroconf.asyncio.AsyncServiceBrowser` on the same type and
keeps a local cache ``node id -> (name, version, Node)``; ``get_service``/``list_services``
answer from it and ``watch`` turns its changes into :class:`~.base.WatchEvent` s.

Facts of mDNS worth knowing:

- A new registration probes the network first: ``register`` takes about 1-1.5 s per call
  (the nodes of one call are probed concurrently). A re-register of an unchanged node (the
  broker's heartbeat) is free; a changed node is re-announced without probing.
- ``deregister`` and ``close`` send goodbyes (TTL 0): peers drop the node at once.
- A node that dies without a goodbye stays "discovered" for a long time (receivers keep a PTR
  record at least 1125 s); a refused or failing POST is the liveness signal.
- Questions are asked as multicast (QM) questions, never unicast-response (QU) ones: when
  several responders share UDP port 5353 on one host (several processes, or several registries
  in one process), a unicast answer reaches only one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zeroconf import (
    BadTypeInNameException,
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceNameAlreadyRegistered,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf import Error as ZeroconfError
from zeroconf import service_type_name  # type: ignore[attr-defined]  # kept "for compat" upstream
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import RegistryError
from .base import SERVICE_PREFIX, Node, QueueWatcher, Service, WatchEvent, topic_of

__all__ = ["MdnsRegistry", "DEFAULT_SERVICE_TYPE"]

log = logging.getLogger(__name__)

#: The DNS-SD service type every hyperbroker node is announced under.
DEFAULT_SERVICE_TYPE = "_hyperbroker._tcp.local."

#: TXT keys the registry itself writes; node metadata may not use them.
_RESERVED_KEYS = frozenset({"name", "topic", "version", "path"})
#: The subscriber endpoint path (go-micro's HTTP broker).
_SUB_PATH = "/_sub"
#: RFC 6763 §6.1: each TXT "key=value" string is at most 255 bytes.
_MAX_TXT_ENTRY = 255
#: The whole TXT record has to fit in one mDNS packet next to the PTR/SRV/A records
#: (zeroconf drops packets over ~9000 bytes with only a log line).
_MAX_TXT_TOTAL = 8000
#: RFC 6763 §4.1.1: an instance name is one DNS label, at most 63 bytes.
_MAX_INSTANCE = 63
#: How long the first get_service()/list_services() waits for the browser's first answers (s).
_FIRST_BROWSE_WAIT = 0.5
#: How long one resolution of an instance may take (ms).
_RESOLVE_TIMEOUT_MS = 3000
#: How long close() waits for its goodbye packets to go out (s).
_GOODBYE_WAIT = 2.0

_Key = tuple[str, str]  # (service name, version)


def _coerce_ip_version(value: Any) -> IPVersion | None:
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


def _split_host_port(address: str) -> tuple[str, int]:
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
            raise RegistryError(
                f"node address {address!r}: write an IPv6 address in brackets, e.g. '[::1]:8080'"
            )
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 < port < 65536:
        raise RegistryError(f"node address {address!r} is not 'host:port' with a port in 1..65535")
    return host, port


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _rank(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """Lower is better: IPv4 before IPv6; routable, then link-local, then loopback."""
    base = 0 if ip.version == 4 else 3
    if ip.is_loopback:
        return base + 2
    if ip.is_link_local:
        return base + 1
    return base


def _format_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def _best_address(ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address], port: int) -> str:
    best = min(ips, key=_rank)  # min() is stable: ties keep the announced order
    return _format_address(best, port)


def _txt_properties(service: Service, node: Node) -> dict[str, str]:
    """The TXT entries of a node, validated (never truncated)."""
    props: dict[str, str] = {"name": service.name}
    topic = topic_of(service.name)
    if topic is not None:
        props["topic"] = topic
    props["version"] = service.version
    props["path"] = _SUB_PATH
    for key, value in node.metadata.items():
        if key in _RESERVED_KEYS:
            raise RegistryError(
                f"node {node.id!r}: metadata key {key!r} is reserved by the mDNS registry "
                f"(reserved: {', '.join(sorted(_RESERVED_KEYS))})"
            )
        if not key or "=" in key or not key.isascii() or not key.isprintable():
            raise RegistryError(
                f"node {node.id!r}: metadata key {key!r} cannot be a DNS-SD TXT key "
                "(printable ASCII, no '=', not empty)"
            )
        props[key] = str(value)
    total = 0
    for key, value in props.items():
        size = len(key.encode()) + 1 + len(value.encode())
        if size > _MAX_TXT_ENTRY:
            raise RegistryError(
                f"node {node.id!r}: TXT entry {key!r} is {size} bytes as 'key=value'; DNS-SD "
                f"allows at most {_MAX_TXT_ENTRY} bytes per entry (RFC 6763 §6.1), so shorten "
                f"{'the service name' if key in ('name', 'topic') else 'its value'}"
            )
        total += 1 + size
    if total > _MAX_TXT_TOTAL:
        raise RegistryError(
            f"node {node.id!r}: TXT record would be {total} bytes; the mDNS registry allows at "
            f"most {_MAX_TXT_TOTAL} (it must fit one packet) - carry less metadata"
        )
    return props


@dataclass(slots=True)
class _Own:
    """A node this registry announces."""

    key: _Key
    node: Node  # as registered
    view: Node  # as the network sees it (address resolved)
    info: AsyncServiceInfo
    signature: tuple[Any, ...]
    announce: asyncio.Future[Any] | None = None


class _NodeLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class MdnsRegistry:
    """A registry announcing nodes over mDNS/DNS-SD and discovering everyone else's.

    :param interfaces: IP addresses (or IPv6 interface indexes) to bind to, as zeroconf takes
        them; ``None`` means every interface. Tests use ``["127.0.0.1"]``.
    :param ip_version: ``zeroconf.IPVersion`` (or "v4", "v6", "all"); default: zeroconf's
        (detected from ``interfaces``, else IPv4 only).
    :param domain: the mDNS domain (only ``local.`` is meaningful for mDNS).
    :param service_type: the DNS-SD type; a type without a trailing dot gets ``domain`` appended.
    :param zeroconf: an AsyncZeroconf to share; it is not closed by :meth:`close`.

    The AsyncZeroconf is created on first use, which must happen inside a running event loop.
    """

    #: a node bound to 0.0.0.0 / :: is announced with every address of the interfaces in use
    expands_unspecified = True

    def __init__(
        self,
        interfaces: list[str] | None = None,
        ip_version: IPVersion | str | int | None = None,
        domain: str = "local.",
        service_type: str = DEFAULT_SERVICE_TYPE,
        zeroconf: AsyncZeroconf | None = None,
    ) -> None:
        if not domain.endswith("."):
            domain += "."
        if not service_type.endswith("."):
            service_type = f"{service_type}.{domain}"
        elif not service_type.lower().endswith("." + domain.lower()):
            raise RegistryError(f"service_type {service_type!r} is not in domain {domain!r}")
        try:
            service_type_name(service_type)
        except BadTypeInNameException as e:
            raise RegistryError(f"invalid DNS-SD service type {service_type!r}: {e}") from e
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._ip_version = _coerce_ip_version(ip_version)
        self._domain = domain
        self._type = service_type
        self._aiozc = zeroconf
        self._owns_zc = zeroconf is None
        self._started = False
        self._closed = False
        self._browser: AsyncServiceBrowser | None = None
        self._browse_ready_at = 0.0  # loop time before which the first lookups wait
        # lower-cased node id -> ...
        self._own: dict[str, _Own] = {}
        self._remote: dict[str, tuple[_Key, Node]] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._withdrawn: set[str] = set()  # our own ids whose goodbye echo has not come back
        self._locks: dict[str, _NodeLock] = {}
        self._goodbyes: set[asyncio.Future[Any]] = set()
        self._view: dict[_Key, dict[str, Node]] = {}
        self._watchers: set[QueueWatcher] = set()

    # -- zeroconf lifecycle ------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RegistryError("registry is closed")

    def _zc(self) -> AsyncZeroconf:
        """The AsyncZeroconf, created on first use (needs a running loop)."""
        self._check()
        if self._aiozc is not None:
            return self._aiozc
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RegistryError(
                "MdnsRegistry must first be used inside a running asyncio event loop"
            ) from None
        where = "every interface" if self._interfaces is None else f"interfaces={self._interfaces}"
        try:
            self._aiozc = AsyncZeroconf(
                interfaces=self._interfaces if self._interfaces is not None else InterfaceChoice.All,
                ip_version=self._ip_version,
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
        return self._aiozc

    async def _ready(self) -> AsyncZeroconf:
        """The started AsyncZeroconf; raises RegistryError when it has no usable interface."""
        aiozc = self._zc()
        if not self._started:
            try:
                await aiozc.zeroconf.async_wait_for_start()
            except ZeroconfError as e:
                raise RegistryError(f"mDNS did not start: {e!r}") from e
            if not getattr(aiozc.zeroconf.engine, "senders", True):
                raise RegistryError(
                    "mDNS has no usable network interface "
                    f"(interfaces={self._interfaces!r}): none could join the multicast group"
                )
            self._started = True
            self._check()
        return aiozc

    def _local_addresses(self, zc: Zeroconf) -> list[str]:
        """Every address of the interfaces zeroconf uses (routable ones when there are any)."""
        found: list[str] = []
        for transport in getattr(zc.engine, "senders", ()):
            sock_name = getattr(transport, "sock_name", None)
            if not sock_name:
                continue
            host = str(sock_name[0]).split("%", 1)[0]
            ip = _ip(host)
            if ip is not None and not ip.is_unspecified and host not in found:
                found.append(host)
        if not found:  # a single wildcard socket (InterfaceChoice.Default): ask the OS
            import ifaddr  # zeroconf's own dependency

            version = self._ip_version or IPVersion.V4Only
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
        routable = [h for h in found if (ip := _ip(h)) and not (ip.is_loopback or ip.is_link_local)]
        return routable or found

    async def _node_addresses(self, zc: Zeroconf, node: Node, host: str) -> list[str]:
        """The IP addresses to announce for a node (see the module doc for the rules)."""
        advertise = node.metadata.get("advertise")
        hosts = [h.strip() for h in advertise.split(",") if h.strip()] if advertise else [host]
        out: list[str] = []
        for h in hosts:
            if h.startswith("[") and h.endswith("]"):
                h = h[1:-1]
            if h in ("", "0.0.0.0", "::", "*"):
                candidates = self._local_addresses(zc)
            elif _ip(h) is not None:
                candidates = [h.split("%", 1)[0]]
            else:
                try:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        h, None, type=socket.SOCK_STREAM
                    )
                except OSError as e:
                    raise RegistryError(f"node {node.id!r}: cannot resolve host {h!r}: {e}") from e
                candidates = [str(i[4][0]).split("%", 1)[0] for i in infos]
            for c in candidates:
                if c not in out:
                    out.append(c)
        if not out:
            raise RegistryError(f"node {node.id!r}: no address to announce for {node.address!r}")
        return out

    # -- the merged view and its events ------------------------------------------------------

    def _compute_view(self) -> dict[_Key, dict[str, Node]]:
        view: dict[_Key, dict[str, Node]] = {}
        for lid, (key, node) in self._remote.items():
            if lid not in self._own:
                view.setdefault(key, {})[node.id] = node
        for own in self._own.values():
            view.setdefault(own.key, {})[own.view.id] = own.view
        return view

    @staticmethod
    def _service(key: _Key, nodes: Mapping[str, Node]) -> Service:
        return Service(key[0], key[1], tuple(sorted(nodes.values(), key=lambda n: n.id)))

    def _refresh(self) -> None:
        """Recompute the view and tell the watchers what changed."""
        old, new = self._view, self._compute_view()
        self._view = new
        events: list[WatchEvent] = []
        for key, nodes in new.items():
            before = old.get(key)
            if before is None:
                events.append(WatchEvent("create", self._service(key, nodes)))
            elif before != nodes:
                events.append(WatchEvent("update", self._service(key, nodes)))
        for key, nodes in old.items():
            if key not in new:
                events.append(WatchEvent("delete", self._service(key, nodes)))
        for ev in events:
            for w in list(self._watchers):
                w.put(ev)

    # -- browsing ----------------------------------------------------------------------------

    def _ensure_browser(self) -> None:
        if self._browser is not None:
            return
        aiozc = self._zc()
        loop = asyncio.get_running_loop()
        self._browse_ready_at = loop.time() + _FIRST_BROWSE_WAIT
        self._browser = AsyncServiceBrowser(
            aiozc.zeroconf,
            [self._type],
            handlers=[self._on_state_change],
            # QM, not QU: a unicast answer reaches only one of the sockets sharing port 5353.
            question_type=DNSQuestionType.QM,
        )

    def _instance_id(self, name: str) -> str | None:
        suffix = "." + self._type
        if not name.lower().endswith(suffix.lower()):
            return None
        return name[: len(name) - len(suffix)]

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """Browser handler: a plain function; resolution runs in a task."""
        try:
            if self._closed:
                return
            instance = self._instance_id(name)
            if instance is None:
                return
            lid = instance.lower()
            pending = self._resolving.pop(lid, None)
            if pending is not None:
                pending.cancel()
            if state_change is ServiceStateChange.Removed:
                self._withdrawn.discard(lid)
                if self._remote.pop(lid, None) is not None:
                    self._refresh()
                return
            if lid in self._withdrawn:
                return  # the echo of our own registration, goodbye still on its way
            task = asyncio.get_running_loop().create_task(
                self._resolve(zeroconf, service_type, name, lid)
            )
            self._resolving[lid] = task
            task.add_done_callback(functools.partial(self._resolve_done, lid))
        except Exception:  # never break zeroconf's record processing
            log.exception("mDNS browser handler failed for %s", name)

    def _resolve_done(self, lid: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(lid) is task:
            del self._resolving[lid]
        if not task.cancelled() and task.exception() is not None:
            log.warning("resolving mDNS node %r failed: %r", lid, task.exception())

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str, lid: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zc, _RESOLVE_TIMEOUT_MS, question_type=DNSQuestionType.QM):
            log.debug("mDNS instance %s did not resolve in time", name)
            return
        if self._closed or lid in self._withdrawn:
            return
        parsed = self._parse(info)
        if parsed is None:
            log.debug("ignoring mDNS instance %s: not a hyperbroker node", name)
            return
        if self._remote.get(lid) != parsed:
            self._remote[lid] = parsed
            self._refresh()

    def _parse(self, info: AsyncServiceInfo) -> tuple[_Key, Node] | None:
        props = info.decoded_properties
        name = props.get("name")
        if not name:
            topic = props.get("topic")
            if topic is None:
                return None
            name = SERVICE_PREFIX + topic
        version = props.get("version") or ""
        port = info.port
        ips = info.ip_addresses_by_version(IPVersion.All)
        if not port or not ips:
            return None
        metadata = {k: v or "" for k, v in props.items() if k not in _RESERVED_KEYS}
        node = Node(info.get_name(), _best_address(ips, port), metadata)
        return (name, version), node

    # -- the Registry protocol ---------------------------------------------------------------

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Announce the service's nodes (one DNS-SD instance each).

        ``ttl`` is accepted for the protocol; mDNS record TTLs are zeroconf's defaults and a
        re-register of an unchanged node does nothing, so the broker's heartbeat costs nothing.
        """
        self._check()
        if not service.name:
            raise RegistryError("service name must not be empty")
        # Validate everything before announcing anything.
        planned: list[tuple[Node, dict[str, str], str, int]] = []
        for node in service.nodes:
            self._validate_id(node.id)
            props = _txt_properties(service, node)
            host, port = _split_host_port(node.address)
            planned.append((node, props, host, port))
        if not planned:
            return
        aiozc = await self._ready()
        key = (service.name, service.version)
        results = await asyncio.gather(
            *(self._register_node(aiozc, key, *p) for p in planned), return_exceptions=True
        )
        self._refresh()
        for r in results:
            if isinstance(r, BaseException):
                raise r

    def _validate_id(self, node_id: str) -> None:
        size = len(node_id.encode())
        if not node_id or size > _MAX_INSTANCE:
            raise RegistryError(
                f"node id {node_id!r} is {size} bytes; an mDNS instance name (the node id) must "
                f"be 1..{_MAX_INSTANCE} bytes (RFC 6763 §4.1.1) - use a shorter node id"
            )
        if "" in node_id.split("."):
            raise RegistryError(f"node id {node_id!r}: empty DNS label (leading, trailing or '..')")
        try:
            service_type_name(f"{node_id}.{self._type}")
        except BadTypeInNameException as e:
            raise RegistryError(f"node id {node_id!r} cannot be an mDNS instance name: {e}") from e

    @contextlib.asynccontextmanager
    async def _node_lock(self, lid: str) -> AsyncIterator[None]:
        """Serialize register/deregister of one node (a heartbeat may overlap the probing)."""
        entry = self._locks.get(lid)
        if entry is None:
            entry = self._locks[lid] = _NodeLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[lid]

    async def _register_node(
        self, aiozc: AsyncZeroconf, key: _Key, node: Node, props: dict[str, str], host: str, port: int
    ) -> None:
        lid = node.id.lower()
        async with self._node_lock(lid):
            self._check()
            addresses = await self._node_addresses(aiozc.zeroconf, node, host)
            signature = (key, node.id, port, tuple(addresses), tuple(props.items()))
            old = self._own.get(lid)
            if old is not None and old.signature == signature:
                return  # heartbeat: nothing changed
            info = AsyncServiceInfo(
                self._type,
                f"{node.id}.{self._type}",
                port=port,
                properties=props,
                parsed_addresses=addresses,
            )
            info.set_server_if_missing()  # host name = instance name: one A/AAAA set per node
            ips = [ip for a in addresses if (ip := _ip(a)) is not None]
            view = Node(node.id, _best_address(ips, port), dict(node.metadata))
            own = _Own(key, node, view, info, signature)
            try:
                if old is not None:
                    if old.announce is not None:
                        old.announce.cancel()
                    own.announce = asyncio.ensure_future(await aiozc.async_update_service(info))
                else:
                    own.announce = asyncio.ensure_future(await aiozc.async_register_service(info))
            except NonUniqueNameException as e:
                raise RegistryError(
                    f"node id {node.id!r} is already announced on the network by another "
                    "responder; node ids must be unique"
                ) from e
            except ServiceNameAlreadyRegistered as e:
                raise RegistryError(
                    f"node id {node.id!r} is already registered on this zeroconf instance"
                ) from e
            except (ZeroconfError, OSError, ValueError) as e:
                raise RegistryError(f"cannot announce node {node.id!r} over mDNS: {e!r}") from e
            self._withdrawn.discard(lid)
            self._own[lid] = own
            if self._closed:  # close() ran while we were probing: take it back at once
                self._withdraw(lid, own)
                if not aiozc.zeroconf.done:
                    await self._goodbye(aiozc, own)
                raise RegistryError("registry is closed")

    async def deregister(self, service: Service) -> None:
        """Withdraw the service's nodes: zeroconf sends goodbyes (TTL 0) for each."""
        self._check()
        key = (service.name, service.version)
        ids = [n.id.lower() for n in service.nodes]
        if not any(lid in self._own and self._own[lid].key == key for lid in ids):
            return
        aiozc = await self._ready()
        for lid in ids:
            async with self._node_lock(lid):
                own = self._own.get(lid)
                if own is None or own.key != key:
                    continue
                self._withdraw(lid, own)
                await self._goodbye(aiozc, own)
        self._refresh()

    def _withdraw(self, lid: str, own: _Own) -> None:
        del self._own[lid]
        self._withdrawn.add(lid)
        self._remote.pop(lid, None)
        pending = self._resolving.pop(lid, None)
        if pending is not None:
            pending.cancel()
        if own.announce is not None:
            # a late announcement after the goodbye would resurrect the node for ~19 minutes
            own.announce.cancel()

    async def _goodbye(self, aiozc: AsyncZeroconf, own: _Own) -> None:
        try:
            fut: Awaitable[Any] = await aiozc.async_unregister_service(own.info)
        except (ZeroconfError, OSError, KeyError, ValueError) as e:
            log.warning("mDNS goodbye for %r failed: %r", own.node.id, e)
            return
        task = asyncio.ensure_future(fut)
        self._goodbyes.add(task)
        task.add_done_callback(self._goodbyes.discard)

    async def _first_answers(self) -> None:
        self._ensure_browser()
        delay = self._browse_ready_at - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
            self._check()

    async def get_service(self, name: str) -> list[Service]:
        """Every version of the named service known now (the first call waits <= 0.5 s)."""
        self._check()
        await self._first_answers()
        return [self._service(k, nodes) for k, nodes in self._view.items() if k[0] == name]

    async def list_services(self) -> list[Service]:
        self._check()
        await self._first_answers()
        return [self._service(k, nodes) for k, nodes in self._view.items()]

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every known service, then every change."""
        self._check()
        self._ensure_browser()
        w = QueueWatcher(self._unwatch)
        for k, nodes in self._view.items():
            w.put(WatchEvent("create", self._service(k, nodes)))
        self._watchers.add(w)
        return w

    def _unwatch(self, w: QueueWatcher) -> None:
        self._watchers.discard(w)

    async def close(self) -> None:
        """Stop watchers and browsing, say goodbye for every node, close our own zeroconf."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._watchers):
            w.stop()
        self._watchers.clear()
        for task in self._resolving.values():
            task.cancel()
        self._resolving.clear()
        aiozc = self._aiozc
        if aiozc is None:
            return
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        for lid, own in list(self._own.items()):
            self._withdraw(lid, own)
            if not aiozc.zeroconf.done:
                await self._goodbye(aiozc, own)
        if self._goodbyes:
            await asyncio.wait(list(self._goodbyes), timeout=_GOODBYE_WAIT)
        self._view.clear()
        if self._owns_zc:
            try:
                await aiozc.async_close()
            except Exception as e:  # closing must not fail the caller's shutdown
                log.warning("closing zeroconf failed: %r", e)

    async def __aenter__(self) -> MdnsRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return (
            f"MdnsRegistry(type={self._type!r}, interfaces={self._interfaces!r}, "
            f"own={len(self._own)}, known={sum(len(n) for n in self._view.values())})"
        )
