"""A registry in etcd v3, with go-micro's etcd registry layout, over the aetcd client:
``EtcdRegistry``, the public facade that composes the pieces in its sibling modules.

Layout (go-micro's ``registry/etcd``, see ``etcd_keys.py``): every node is one key
``<prefix><service name>/<node id>`` whose value is the JSON of a one-node go-micro
``registry.Service``, so Go services using go-micro's etcd registry and hyperbroker brokers see
each other.

How it runs (and which module owns what):

- Leases (``etcd_lease.py``): one lease per EtcdRegistry (one per broker process) carries all
  its keys, with the TTL given to :meth:`register` (the broker's ``register_ttl``), kept alive by
  etcd's LeaseKeepAlive every TTL/3. A lease found gone (after a partition longer than the TTL)
  is granted again and every key put again. A registration with ``ttl=None`` is put without a
  lease (it stays until deregistered). :meth:`deregister` deletes the key at once;
  :meth:`close` revokes the lease, which deletes every leased key of this registry.
- Discovery (``etcd_watch.py``): after :meth:`watch` is first called, one range read of the
  prefix, then etcd's watch stream on the prefix (with previous values, so a delete carries the
  old node) keeps a local cache; ``get_service``/``list_services`` answer from it. Nothing is
  polled. Without a watch they read etcd directly.
- Failure (``etcd_session.py``, ``etcd_client.py``): a background session holds one connection
  to one endpoint; when it fails, the next endpoint is tried (failover through a cluster), with
  back-off, and on reconnect the cache is read again (changes missed meanwhile become watch
  events) and whatever this registry had to write (registrations made while etcd was down,
  deletes, the lease) is written. While etcd is unreachable ``get_service`` answers from the
  last known cache, so publishing goes on, and ``register``/``deregister`` are remembered and
  done when etcd is back; own registrations are part of the local view at once.
- Errors: :class:`~hyperbroker.RegistryError` only when etcd is needed now and cannot serve:
  ``register``/``get_service``/``list_services`` on a registry that has *never* reached any
  endpoint raise it after ``timeout`` seconds (a wrong address or password shows at once
  instead of a broker that silently never registers); ``get_service``/``list_services``
  without a watch while etcd is unreachable; and every call after :meth:`close`.

The client library is aetcd (asyncio over gRPC), the optional extra ``hyperbroker[etcd]``;
``tls=`` is served by a small TLS subclass of its client (``etcd_client.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from ..errors import RegistryError
from ..tls import TLSConfig
from .base import Node, QueueWatcher, Service, service_of
from .etcd_addresses import DEFAULT_PORT, expand_unspecified
from .etcd_addresses import parse_endpoint as parse_endpoint  # re-exported: url.py checks endpoints with it
from .etcd_client import Connector, is_auth_error
from .etcd_keys import (
    DEFAULT_PREFIX,
    Entry,
    ServiceKey,
    decode_service,
    encode_service,
    entries_of,
    node_key,
    service_prefix,
)
from .etcd_lease import LeaseKeeper, OwnNode, lease_ttl_of
from .etcd_session import Session
from .etcd_watch import WatchCache

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "EtcdRegistry", "decode_service", "encode_service"]

log = logging.getLogger(__name__)

#: the name tests (and older callers) import; see ``etcd_addresses.expand_unspecified``
_expand_unspecified = expand_unspecified


def _group(entries: Iterable[Entry]) -> dict[ServiceKey, dict[str, Node]]:
    out: dict[ServiceKey, dict[str, Node]] = {}
    for skey, node in entries:
        out.setdefault(skey, {})[node.id] = node
    return out


class EtcdRegistry:
    """A registry in etcd (go-micro's etcd layout), shared by every broker that uses the cluster.

    :param endpoints: ``host:port`` of the cluster's members (``[v6]:port``, ``http://`` allowed,
        default port 2379); the client fails over between them.
    :param prefix: the key prefix (go-micro's ``/micro/registry/``).
    :param username / password: etcd authentication (both or neither).
    :param tls: a :class:`~hyperbroker.TLSConfig` for an etcd with TLS: ``ca_file`` verifies the
        server, ``cert_file``/``key_file`` are the client certificate when etcd asks for one.
    :param timeout: seconds one etcd request may take, and how long a registry that has never
        reached etcd waits before :class:`~hyperbroker.RegistryError`.

    Connections are made on first use, inside the running event loop. See the module doc for
    what happens while etcd is unreachable.
    """

    #: a node bound to 0.0.0.0 / :: is stored with this host's best address (see
    #: ``etcd_addresses.expand_unspecified``), not 127.0.0.1: peers on other hosts read it from etcd
    expands_unspecified = True

    def __init__(
        self,
        endpoints: str | Sequence[str] = ("127.0.0.1:2379",),
        prefix: str = DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        tls: TLSConfig | None = None,
        timeout: float = 5.0,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise RegistryError("EtcdRegistry needs at least one endpoint")
        parsed = [parse_endpoint(e) for e in endpoints]
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise RegistryError(f"etcd prefix must start with '/', got {prefix!r}")
        if not prefix.endswith("/"):
            prefix += "/"
        if (username is None) != (password is None):
            raise RegistryError("etcd username and password go together (give both or neither)")
        if tls is not None and not isinstance(tls, TLSConfig):
            raise RegistryError(f"tls must be a TLSConfig, got {type(tls).__name__}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
            raise RegistryError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._prefix = prefix
        self._prefix_b = prefix.encode()
        self._timeout = float(timeout)
        # fails early when aetcd is missing
        self._connector = Connector(parsed, self._prefix_b, username, password, tls, self._timeout)
        self._keeper = LeaseKeeper(self._timeout)  # what this registry keeps in etcd
        self._cache = WatchCache(self._prefix_b, self._timeout, self._keeper)  # what etcd holds
        self._session = Session(self._connector, self._keeper, self._cache, self._prefix_b, self._timeout)

    # -- small helpers ---------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return self._connector.names

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def connected(self) -> bool:
        """Whether a session to an etcd member is up now."""
        return self._session.connected

    def key(self, name: str, node_id: str) -> bytes:
        """The etcd key of a node: ``<prefix><name>/<node id>`` with "/" made "-"."""
        return node_key(self._prefix, name, node_id)

    async def _write_now(self) -> None:
        """Write what is owed through the live session; on failure the session restarts."""
        client = self._session.client
        if not self._session.connected or client is None:
            self._session.kick()
            return
        try:
            await self._keeper.flush(client)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if is_auth_error(e):
                raise RegistryError(f"etcd refused the write: {e}") from e
            self._session.lose(e)
            log.warning("etcd write failed (%s); it is done when etcd answers again", e)

    # -- the Registry protocol ---------------------------------------------------------------------

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Put each node's key (with the registry's lease when ``ttl`` is given).

        An unchanged re-register (the broker's heartbeat) writes nothing: the lease is kept
        alive by the keep-alive stream. While etcd is unreachable the registration is
        remembered and written when it is back (RegistryError only if etcd was never reached).
        """
        self._session.check()
        if not service.name:
            raise RegistryError("service name must not be empty")
        for node in service.nodes:
            if not node.id:
                raise RegistryError("node id must not be empty")
        if not service.nodes:
            return
        lease_ttl = lease_ttl_of(ttl)
        self._session.prepare()
        added: list[tuple[bytes, OwnNode]] = []
        self._keeper.set_ttl(lease_ttl)
        for node in map(expand_unspecified, service.nodes):
            key = self.key(service.name, node.id)
            one = Service(service.name, service.version, (node,))
            own = self._keeper.put(key, ((service.name, service.version), node), encode_service(one, node), lease_ttl)
            if own is not None:
                added.append((key, own))
        if not added and self._keeper.all_stored():
            return
        self._cache.refresh()
        self._session.ensure()
        if not self._session.ever_connected:
            try:
                await self._session.wait_first_up()
            except BaseException:
                for key, own in added:  # not done: forget it
                    self._keeper.forget(key, own)
                self._cache.refresh()
                raise
            return
        await self._write_now()

    async def deregister(self, service: Service) -> None:
        """Delete each node's key at once (or as soon as etcd answers again)."""
        self._session.check()
        changed = False
        for node in service.nodes:
            if self._keeper.remove(self.key(service.name, node.id), self._session.ever_connected):
                changed = True
        if not changed:
            return
        self._cache.refresh()
        if self._keeper.has_pending_deletes:
            self._session.ensure()
            await self._write_now()

    async def _read(self, key: bytes) -> list[Entry]:
        """A direct range read (no watch running)."""
        await self._session.wait_first_up()
        client = self._session.client
        if client is None or not self._session.connected:
            raise self._connector.unreachable()
        try:
            rsp = await asyncio.wait_for(client.get_prefix(key), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._session.lose(e)
            raise RegistryError(f"etcd read failed: {e}") from e
        out: list[Entry] = []
        for kv in rsp:
            if bytes(kv.key) in self._keeper:
                continue
            out.extend(entries_of(bytes(kv.value)))
        out.extend(self._keeper.views())
        return out

    async def get_service(self, name: str) -> list[Service]:
        """Every version of the named service: from the watch cache (the last known one while
        etcd is unreachable), or read from etcd when no watch runs."""
        self._session.check()
        if self._cache.wanted:
            await self._session.wait_synced()
            return [service_of(k, nodes) for k, nodes in self._cache.view.items() if k[0] == name]
        entries = await self._read(service_prefix(self._prefix, name))
        return [service_of(k, nodes) for k, nodes in _group(entries).items() if k[0] == name]

    async def list_services(self) -> list[Service]:
        self._session.check()
        if self._cache.wanted:
            await self._session.wait_synced()
            return [service_of(k, nodes) for k, nodes in self._cache.view.items()]
        entries = await self._read(self._prefix_b)
        return [service_of(k, nodes) for k, nodes in _group(entries).items()]

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every known service, then every change. The first
        call starts etcd's watch stream on the prefix (after one range read)."""
        self._session.check()
        w = QueueWatcher(self._cache.remove_watcher)
        self._cache.add_watcher(w)
        if not self._cache.wanted:
            self._cache.wanted = True
            self._session.ensure()
            self._session.kick()
        return w

    async def close(self) -> None:
        """Stop watchers and the session; revoke the lease (its keys go at once) and delete the
        keys without a lease. Bounded by ``timeout``."""
        if not self._session.mark_closed():
            return
        self._cache.stop_watchers()
        client = await self._session.stop()
        if client is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._keeper.cleanup(client)
        except Exception as e:  # closing must not fail the caller's shutdown
            log.warning("closing the etcd registry: cleanup failed: %r", e)
        finally:
            self._keeper.clear()
            await self._connector.close_client(client)

    async def __aenter__(self) -> EtcdRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._session.closed else ("connected" if self._session.connected else "disconnected")
        return (
            f"EtcdRegistry(endpoints={self.endpoints!r}, prefix={self._prefix!r}, {state}, "
            f"own={len(self._keeper)}, known={self._cache.known()})"
        )
