"""A registry over multicast DNS service discovery (DNS-SD over mDNS), using python-zeroconf:
``MdnsRegistry``, the public facade. It owns its own nodes (registered with zeroconf's
responder), the nodes discovered on the network, and browsing; the pieces live in siblings:
``mdns_records.py`` (TXT entries, instance names, parsing a resolved instance),
``mdns_addresses.py`` (which addresses are announced and reached), ``mdns_view.py`` (the merged
view and watchers), ``mdns_zeroconf.py`` (starting zeroconf), ``mdns_announce.py`` (batched
announcements and goodbyes), ``mdns_resolve.py`` (batched resolution).

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
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from zeroconf import (  # type: ignore[attr-defined]  # service_type_name: kept "for compat" upstream
    BadTypeInNameException,
    DNSQuestionType,
    IPVersion,
    NonUniqueNameException,
    ServiceNameAlreadyRegistered,
    ServiceStateChange,
    Zeroconf,
    service_type_name,
)
from zeroconf import Error as ZeroconfError
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..errors import RegistryError
from .base import Node, QueueWatcher, Service
from .mdns_addresses import best_address, ip_of, node_addresses, split_host_port
from .mdns_announce import Announcer
from .mdns_records import DEFAULT_SERVICE_TYPE, Entry, ServiceKey, parse_info, txt_properties, validate_id
from .mdns_resolve import Resolver
from .mdns_view import MdnsView
from .mdns_zeroconf import claimed_elsewhere, coerce_ip_version, open_zeroconf, start_zeroconf

__all__ = ["DEFAULT_SERVICE_TYPE", "MdnsRegistry"]

log = logging.getLogger(__name__)

#: the name tests import; see ``mdns_records.txt_properties``
_txt_properties = txt_properties

#: How long the first get_service()/list_services() waits for the browser's first answers (s).
_FIRST_BROWSE_WAIT = 0.5
#: How long close() waits for its goodbye packets to go out (s).
_GOODBYE_WAIT = 2.0


@dataclass(slots=True)
class _Own:
    """A node this registry announces."""

    key: ServiceKey
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
        self._ip_version = coerce_ip_version(ip_version)
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
        self._remote: dict[str, Entry] = {}
        self._resolver: Resolver | None = None  # created with the browser
        self._withdrawn: set[str] = set()  # our own ids whose goodbye echo has not come back
        self._locks: dict[str, _NodeLock] = {}
        self._announcer: Announcer | None = None
        self._view = MdnsView(self._entry)  # the merged view and the watchers

    # -- zeroconf lifecycle ------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise RegistryError("registry is closed")

    def _zc(self) -> AsyncZeroconf:
        """The AsyncZeroconf, created on first use (needs a running loop)."""
        self._check()
        if self._aiozc is not None:
            return self._aiozc
        self._aiozc = open_zeroconf(self._interfaces, self._ip_version)
        return self._aiozc

    async def _ready(self) -> AsyncZeroconf:
        """The started AsyncZeroconf; raises RegistryError when it has no usable interface."""
        aiozc = self._zc()
        if not self._started:
            await start_zeroconf(aiozc, self._interfaces)
            self._started = True
            self._check()
            self._announcer = Announcer(aiozc.zeroconf)
        return aiozc

    @property
    def announcer(self) -> Announcer | None:
        """The background announcer (its counters tell how many packets were sent)."""
        return self._announcer

    # -- the merged view ---------------------------------------------------------------------

    def _entry(self, lid: str) -> Entry | None:
        """What the view holds for one node: our own registration wins over the network's."""
        own = self._own.get(lid)
        if own is not None:
            return own.key, own.view
        return self._remote.get(lid)

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
                    self._view.refresh((lid,))
                return
            if lid in self._withdrawn or lid in self._own:
                return  # the echo of our own announcements (or of a goodbye on its way)
            resolver.want(lid, name)
        except Exception:  # never break zeroconf's record processing
            log.exception("mDNS browser handler failed for %s", name)

    def _on_resolved(self, lid: str, info: AsyncServiceInfo | None) -> None:
        if info is None or self._closed or lid in self._withdrawn or lid in self._own:
            return
        parsed = parse_info(info)
        if parsed is None:
            log.debug("ignoring mDNS instance %s: not a hyperbroker node", info.name)
            return
        if self._remote.get(lid) != parsed:
            self._remote[lid] = parsed
            self._view.refresh((lid,))

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
            validate_id(node.id, self._type)
            props = txt_properties(service, node)
            host, port = split_host_port(node.address)
            planned.append((node, props, host, port))
        if not planned:
            return
        aiozc = await self._ready()
        key = (service.name, service.version)
        results = await asyncio.gather(*(self._register_node(aiozc, key, *p) for p in planned), return_exceptions=True)
        self._view.refresh(node.id.lower() for node, *_ in planned)
        for r in results:
            if isinstance(r, BaseException):
                raise r

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

    async def _register_node(
        self, aiozc: AsyncZeroconf, key: ServiceKey, node: Node, props: dict[str, str], host: str, port: int
    ) -> None:
        lid = node.id.lower()
        async with self._node_lock(lid):
            self._check()
            zc = aiozc.zeroconf
            addresses = await node_addresses(zc, self._ip_version, node, host)
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
            ips = [ip for a in addresses if (ip := ip_of(a)) is not None]
            view = Node(node.id, best_address(ips, port), dict(node.metadata))
            try:
                if old is not None:
                    zc.registry.async_update(info)
                else:
                    if lid not in self._withdrawn and claimed_elsewhere(zc, info):
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
        self._view.refresh(gone)

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
        return self._view.services(name)

    async def list_services(self) -> list[Service]:
        self._check()
        await self._first_answers()
        return self._view.services()

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every known service, then every change."""
        self._check()
        self._ensure_browser()
        w = QueueWatcher(self._view.remove_watcher)
        self._view.add_watcher(w)
        return w

    async def close(self) -> None:
        """Stop watchers and browsing, say goodbye for every node, close our own zeroconf."""
        if self._closed:
            return
        self._closed = True
        self._view.stop_watchers()
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
            f"own={len(self._own)}, known={len(self._view)})"
        )
