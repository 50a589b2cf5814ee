"""A registry over multicast DNS service discovery (DNS-SD over mDNS), using python-zeroconf.

Every registered node is one DNS-SD instance of ``_hyperbroker._tcp.local.``: the instance name
is the node id, the SRV port and A/AAAA records give the node's address, and the TXT record
carries the service model::

    name=topic:orders  topic=orders  version=ff.http.broadcast  path=/_sub  secure=true ...

(``name`` is always present; ``topic`` for ``topic:`` services and for nodes with metadata
``topic``, read back into the metadata only for other services such as ``micro.http.broker``
(a ``topic:`` service's name says it); ``path`` is ``/`` for ``micro.http.broker``; every
other node metadata entry follows.) Discovery runs an :class:`~zeroconf.asyncio.AsyncServiceBrowser` on the same type and
keeps a local cache ``node id -> (name, version, Node)``; ``get_service``/``list_services``
answer from it and ``watch`` turns its changes into :class:`~.base.WatchEvent` s.

Facts of mDNS worth knowing:

- Registration does not probe: node ids are unique random ids, so a name collision cannot
  happen by chance (a copy of an id already seen on the network is refused from the cache).
  ``register`` returns at once; the node is announced in the background
  (:mod:`.mdns_announce`): everything registered within ~10 ms shares packets, each node three
  times one second apart. 1000 subscriptions register in well under a second and peers see
  them within a second. A re-register of an unchanged node (the broker's heartbeat) sends
  nothing; a changed node is re-announced.
- ``deregister`` and ``close`` send goodbyes (TTL 0), batched the same way: peers drop the node
  at once.
- At rest nothing is sent but zeroconf's own browsing: a few queries when a registry starts,
  then one PTR refresh query per browser about every 56 minutes (75 % of the 75-minute PTR
  TTL), answered by every responder.
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
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from zeroconf import (  # type: ignore[attr-defined]  # service_type_name: kept "for compat" upstream
    BadTypeInNameException,
    DNSQuestionType,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    ServiceNameAlreadyRegistered,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
    service_type_name,
)
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import RegistryError
from .base import (
    MICRO_SERVICE,
    SERVICE_PREFIX,
    Node,
    QueueWatcher,
    Service,
    WatchEvent,
    diff_views,
    service_of,
    topic_of,
)
from .mdns_announce import Announcer
from .mdns_resolve import Resolver

__all__ = ["DEFAULT_SERVICE_TYPE", "MdnsRegistry"]

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
#: How long close() waits for its goodbye packets to go out (s).
_GOODBYE_WAIT = 2.0

_Key = tuple[str, str]  # (service name, version)
_TYPE_SRV = 33  # RFC 2782


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
            raise RegistryError(f"node address {address!r}: write an IPv6 address in brackets, e.g. '[::1]:8080'")
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
    props["path"] = "/" if service.name == MICRO_SERVICE else _SUB_PATH
    for key, value in node.metadata.items():
        if key == "topic" and props.get("topic", value) == value:
            props["topic"] = value  # the broker's metadata topic=<topic> (the TXT topic entry)
            continue
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
        self._resolver: Resolver | None = None  # created with the browser
        self._withdrawn: set[str] = set()  # our own ids whose goodbye echo has not come back
        self._locks: dict[str, _NodeLock] = {}
        self._announcer: Announcer | None = None
        # the merged view, kept incrementally: name -> version -> lower-cased id -> node, and
        # where each lower-cased id is in it
        self._view: dict[str, dict[str, dict[str, Node]]] = {}
        self._placed: dict[str, _Key] = {}
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
            raise RegistryError("MdnsRegistry must first be used inside a running asyncio event loop") from None
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
            self._announcer = Announcer(aiozc.zeroconf)
        return aiozc

    @property
    def announcer(self) -> Announcer | None:
        """The background announcer (its counters tell how many packets were sent)."""
        return self._announcer

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

    # -- the merged view and its events ------------------------------------------------------

    def _entry(self, lid: str) -> tuple[_Key, Node] | None:
        """What the view holds for one node: our own registration wins over the network's."""
        own = self._own.get(lid)
        if own is not None:
            return own.key, own.view
        return self._remote.get(lid)

    def _nodes(self, key: _Key) -> dict[str, Node] | None:
        versions = self._view.get(key[0])
        return None if versions is None else versions.get(key[1])

    _service = staticmethod(service_of)

    def _refresh(self, lids: Iterable[str]) -> None:
        """Bring the given nodes' places in the view up to date and tell the watchers what
        changed (one event per service touched)."""
        before: dict[_Key, dict[str, Node] | None] = {}
        for lid in lids:
            old_key = self._placed.get(lid)
            entry = self._entry(lid)
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
            for w in list(self._watchers):
                w.put(ev)

    def _services(self, name: str | None = None) -> list[Service]:
        names: Iterable[str] = self._view if name is None else [name] if name in self._view else []
        return [self._service((n, v), nodes) for n in names for v, nodes in self._view[n].items()]

    # -- browsing ----------------------------------------------------------------------------

    def _ensure_browser(self) -> None:
        if self._browser is not None:
            return
        aiozc = self._zc()
        loop = asyncio.get_running_loop()
        self._browse_ready_at = loop.time() + _FIRST_BROWSE_WAIT
        self._resolver = Resolver(aiozc.zeroconf, self._type, self._on_resolved)
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
        """Browser handler: a plain function; the resolver does the rest."""
        try:
            if self._closed:
                return
            instance = self._instance_id(name)
            if instance is None:
                return
            lid = instance.lower()
            resolver = self._resolver
            if resolver is None:
                return
            if state_change is ServiceStateChange.Removed:
                resolver.forget(lid)
                self._withdrawn.discard(lid)
                if self._remote.pop(lid, None) is not None:
                    self._refresh((lid,))
                return
            if lid in self._withdrawn or lid in self._own:
                return  # the echo of our own announcements (or of a goodbye on its way)
            resolver.want(lid, name)
        except Exception:  # never break zeroconf's record processing
            log.exception("mDNS browser handler failed for %s", name)

    def _on_resolved(self, lid: str, info: AsyncServiceInfo | None) -> None:
        if info is None or self._closed or lid in self._withdrawn or lid in self._own:
            return
        parsed = self._parse(info)
        if parsed is None:
            log.debug("ignoring mDNS instance %s: not a hyperbroker node", info.name)
            return
        if self._remote.get(lid) != parsed:
            self._remote[lid] = parsed
            self._refresh((lid,))

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
        topic = props.get("topic")
        if topic and topic_of(name) is None:
            metadata["topic"] = topic  # a micro.http.broker node's topic: only in its metadata
        node = Node(info.get_name(), _best_address(ips, port), metadata)
        return (name, version), node

    # -- the Registry protocol ---------------------------------------------------------------

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Announce the service's nodes (one DNS-SD instance each).

        Returns as soon as zeroconf answers for the nodes; the announcements go out in the
        background. ``ttl`` is accepted for the protocol; mDNS record TTLs are zeroconf's
        defaults and a re-register of an unchanged node sends nothing, so the broker's
        heartbeat costs nothing.
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
        results = await asyncio.gather(*(self._register_node(aiozc, key, *p) for p in planned), return_exceptions=True)
        self._refresh(node.id.lower() for node, *_ in planned)
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
        """Serialize register/deregister of one node (a host name may take a lookup)."""
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

    @staticmethod
    def _claimed_elsewhere(zc: Zeroconf, info: AsyncServiceInfo) -> bool:
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

    async def _register_node(
        self, aiozc: AsyncZeroconf, key: _Key, node: Node, props: dict[str, str], host: str, port: int
    ) -> None:
        lid = node.id.lower()
        async with self._node_lock(lid):
            self._check()
            zc = aiozc.zeroconf
            addresses = await self._node_addresses(zc, node, host)
            self._check()
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
            try:
                if old is not None:
                    zc.registry.async_update(info)
                else:
                    if lid not in self._withdrawn and self._claimed_elsewhere(zc, info):
                        raise NonUniqueNameException
                    zc.registry.async_add(info)
            except NonUniqueNameException as e:
                raise RegistryError(
                    f"node id {node.id!r} is already announced on the network by another "
                    "responder; node ids must be unique"
                ) from e
            except ServiceNameAlreadyRegistered as e:
                raise RegistryError(f"node id {node.id!r} is already registered on this zeroconf instance") from e
            except (ZeroconfError, ValueError, AssertionError) as e:
                raise RegistryError(f"cannot announce node {node.id!r} over mDNS: {e!r}") from e
            self._withdrawn.discard(lid)
            self._own[lid] = _Own(key, node, view, info, signature)
            self._remote.pop(lid, None)
            assert self._announcer is not None
            self._announcer.announce(lid, info)

    async def deregister(self, service: Service) -> None:
        """Withdraw the service's nodes: goodbyes (TTL 0) go out for each, in the background."""
        self._check()
        key = (service.name, service.version)
        ids = [n.id.lower() for n in service.nodes]
        if not any(lid in self._own and self._own[lid].key == key for lid in ids):
            return
        aiozc = await self._ready()
        gone: list[str] = []
        for lid in ids:
            async with self._node_lock(lid):
                own = self._own.get(lid)
                if own is None or own.key != key:
                    continue
                self._withdraw(aiozc, lid, own)
                gone.append(lid)
        self._refresh(gone)

    def _withdraw(self, aiozc: AsyncZeroconf, lid: str, own: _Own) -> None:
        """Forget one of our nodes and say goodbye for it."""
        del self._own[lid]
        self._withdrawn.add(lid)
        self._remote.pop(lid, None)
        if self._resolver is not None:
            self._resolver.forget(lid)
        try:
            aiozc.zeroconf.registry.async_remove(own.info)
        except (ZeroconfError, KeyError, ValueError) as e:
            log.warning("mDNS: removing %r from the responder failed: %r", own.node.id, e)
        if self._announcer is not None:
            # replaces an announcement still due: a late one would resurrect the node for ~19 min
            self._announcer.goodbye(lid, own.info)

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
        return self._services(name)

    async def list_services(self) -> list[Service]:
        self._check()
        await self._first_answers()
        return self._services()

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every known service, then every change."""
        self._check()
        self._ensure_browser()
        w = QueueWatcher(self._unwatch)
        for svc in self._services():
            w.put(WatchEvent("create", svc))
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
        resolver, self._resolver = self._resolver, None
        if resolver is not None:
            await resolver.close()
        aiozc = self._aiozc
        if aiozc is None:
            return
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        for lid, own in list(self._own.items()):
            self._withdraw(aiozc, lid, own)
        announcer, self._announcer = self._announcer, None
        if announcer is not None:
            if not aiozc.zeroconf.done:
                await announcer.drain(_GOODBYE_WAIT)
            await announcer.close()
        self._view.clear()
        self._placed.clear()
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
            f"own={len(self._own)}, known={len(self._placed)})"
        )
