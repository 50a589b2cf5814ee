"""A registry in etcd v3, with go-micro's etcd registry layout, over the aetcd client.

Layout (go-micro's ``registry/etcd``): every node is one key
``<prefix><service name>/<node id>`` ("/" inside the name or id replaced by "-") whose value is
the JSON of a one-node go-micro ``registry.Service``::

    /micro/registry/topic:orders/hb-3f...  ->
    {"name":"topic:orders","version":"ff.http.broadcast","metadata":{},"endpoints":[],
     "nodes":[{"id":"hb-3f...","address":"10.0.0.5:41234","metadata":{"secure":"false",...}}]}

so Go services using go-micro's etcd registry and hyperbroker brokers see each other.

How it runs:

- Leases: one lease per EtcdRegistry (one per broker process) carries all its keys, with the
  TTL given to :meth:`register` (the broker's ``register_ttl``), kept alive by etcd's
  LeaseKeepAlive every TTL/3. A lease found gone (after a partition longer than the TTL) is
  granted again and every key put again. A registration with ``ttl=None`` is put without a
  lease (it stays until deregistered). :meth:`deregister` deletes the key at once;
  :meth:`close` revokes the lease, which deletes every leased key of this registry.
- Discovery: after :meth:`watch` is first called, one range read of the prefix, then etcd's
  watch stream on the prefix (with previous values, so a delete carries the old node) keeps a
  local cache; ``get_service``/``list_services`` answer from it. Nothing is polled. Without a
  watch they read etcd directly.
- Failure: a background session holds one connection to one endpoint; when it fails, the next
  endpoint is tried (failover through a cluster), with back-off, and on reconnect the cache is
  read again (changes missed meanwhile become watch events) and whatever this registry had to
  write (registrations made while etcd was down, deletes, the lease) is written. While etcd is
  unreachable ``get_service`` answers from the last known cache, so publishing goes on, and
  ``register``/``deregister`` are remembered and done when etcd is back; own registrations are
  part of the local view at once.
- Errors: :class:`~hyperbroker.RegistryError` only when etcd is needed now and cannot serve:
  ``register``/``get_service``/``list_services`` on a registry that has *never* reached any
  endpoint raise it after ``timeout`` seconds (a wrong address or password shows at once
  instead of a broker that silently never registers); ``get_service``/``list_services``
  without a watch while etcd is unreachable; and every call after :meth:`close`.

The client library is aetcd (asyncio over gRPC), the optional extra ``hyperbroker[etcd]``.
aetcd 1.0 has no TLS of its own (its issue #37); ``tls=`` is served by a small subclass that
opens the same gRPC channel with TLS credentials (see ``_client_factory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import RegistryError
from ..tls import TLSConfig, read_pem
from .base import Node, QueueWatcher, Service, WatchEvent, diff_views, service_of

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "EtcdRegistry", "decode_service", "encode_service"]

log = logging.getLogger(__name__)

#: go-micro's etcd registry prefix.
DEFAULT_PREFIX = "/micro/registry/"
#: etcd's client port, used for an endpoint without one.
DEFAULT_PORT = 2379
#: Reconnect back-off bounds (s).
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0
#: How often a session without a lease checks its connection (s).
_PING_INTERVAL = 5.0
#: etcd leases are whole seconds.
_MIN_TTL = 1

_Key = tuple[str, str]  # (service name, version)


# --- the go-micro value ---------------------------------------------------------------------


def encode_service(service: Service, node: Node) -> bytes:
    """The JSON go-micro stores for one node: a one-node ``registry.Service``."""
    doc = {
        "name": service.name,
        "version": service.version,
        "metadata": {},
        "endpoints": [],
        "nodes": [{"id": node.id, "address": node.address, "metadata": dict(node.metadata)}],
    }
    return orjson.dumps(doc)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def decode_service(value: bytes) -> tuple[_Key, list[Node]] | None:
    """``((name, version), nodes)`` of a go-micro service value, or None if it is not one."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not doc["name"]:
        return None
    version = doc.get("version")
    nodes = [
        Node(n["id"], n["address"], _str_map(n.get("metadata")))
        for n in doc.get("nodes") or ()
        if isinstance(n, dict) and isinstance(n.get("id"), str) and isinstance(n.get("address"), str)
    ]
    return (doc["name"], version if isinstance(version, str) else ""), nodes


def _local_ip(version: int) -> str:
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


def _expand_unspecified(node: Node) -> Node:
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
    local = _local_ip(ip.version)
    address = f"[{local}]:{port}" if ip.version == 6 else f"{local}:{port}"
    return Node(node.id, address, node.metadata)


def _clean(part: str) -> str:
    return part.replace("/", "-")


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


# --- the client library -----------------------------------------------------------------------


def _import_aetcd() -> Any:
    try:
        import aetcd  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:
        raise RegistryError("EtcdRegistry needs the aetcd package: pip install 'hyperbroker[etcd]'") from e
    return aetcd


def _client_factory(tls: TLSConfig | None) -> Any:
    """aetcd's Client class, or for TLS a subclass whose gRPC channel has TLS credentials.

    aetcd 1.0 opens ``grpc.aio.insecure_channel`` in ``Client.connect``; the subclass does the
    same steps with ``grpc.aio.secure_channel`` (the extra pins aetcd to 1.0.x for this).
    """
    aetcd = _import_aetcd()
    if tls is None:
        return aetcd.Client
    import grpc  # type: ignore[import-untyped, unused-ignore]

    if not tls.verify:
        raise RegistryError("EtcdRegistry: TLS without verification is not supported by gRPC; give ca_file")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_pem(tls.ca_file, "CA"),
        private_key=read_pem(tls.key_file, "private key"),
        certificate_chain=read_pem(tls.cert_file, "certificate"),
    )
    rpc = aetcd.rpc
    base: Any = aetcd.Client

    class TlsClient(base):  # type: ignore[misc]
        async def connect(self: Any) -> None:
            if self._connected.is_set():
                return
            if self._is_connecting:
                await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
                return
            try:
                self._is_connecting = True
                target = f"{self._host}:{self._port}"
                self.channel = grpc.aio.secure_channel(target, credentials, options=list(self._options.items()))
                if self._username is not None and self._password is not None:
                    self.auth_stub = rpc.AuthStub(self.channel)
                    request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                    try:
                        resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                    except rpc.AioRpcError as e:
                        aetcd.exceptions._handle_exception(e)
                    self.metadata = (("token", resp.token),)
                self.kvstub = rpc.KVStub(self.channel)
                self.clusterstub = rpc.ClusterStub(self.channel)
                self.leasestub = rpc.LeaseStub(self.channel)
                self.maintenancestub = rpc.MaintenanceStub(self.channel)
                self._watcher = aetcd.watcher.Watcher(
                    rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
                )
                self._connected.set()
            finally:
                self._is_connecting = False

    return TlsClient


def _is_auth_error(e: BaseException) -> bool:
    text = str(e).lower()
    return any(
        s in text
        for s in (
            "authentication failed",
            "invalid user id or password",
            "permission denied",
            "user name is empty",
            "user name not found",
        )
    )


def _is_lease_gone(e: BaseException) -> bool:
    return "lease not found" in str(e).lower()


class _SessionLost(Exception):
    """The session's connection failed; the session restarts on the next endpoint."""


@dataclass(slots=True)
class _Own:
    """A node this registry keeps in etcd."""

    view: tuple[_Key, Node]
    value: bytes
    ttl: int | None  # lease TTL, or None for a key without a lease
    stored: bool = False  # put in etcd (on the current lease)


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
    #: ``_expand_unspecified``), not 127.0.0.1: peers on other hosts read it from etcd
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
        self._endpoints = [parse_endpoint(e) for e in endpoints]
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
        self._username = username
        self._password = password
        self._tls = tls
        self._timeout = float(timeout)
        self._client_cls: Any = _client_factory(tls)  # fails early when aetcd is missing
        self._ep_index = 0
        # session state
        self._session: asyncio.Task[None] | None = None
        self._client: Any = None
        self._connected = False
        self._ever_connected = False
        self._first_up: asyncio.Event | None = None
        self._synced: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._lost: BaseException | None = None  # set by a caller whose request failed
        self._last_error: BaseException | None = None
        self._refused: BaseException | None = None  # etcd answered no: bad credentials, rights
        self._attempt: asyncio.Event | None = None  # set after each connection attempt
        self._write_lock: asyncio.Lock | None = None
        self._closed = False
        # what this registry keeps in etcd
        self._own: dict[bytes, _Own] = {}
        self._pending_deletes: set[bytes] = set()
        self._lease: int | None = None
        self._lease_ttl: int | None = None  # TTL of the lease to hold
        self._lease_granted: int | None = None  # TTL etcd granted it
        self._old_leases: list[int] = []  # to revoke once their keys moved
        # what etcd holds (kept by the watch)
        self._want_watch = False
        self._cache: dict[bytes, tuple[_Key, Node]] = {}
        self._view: dict[_Key, dict[str, Node]] = {}
        self._watchers: set[QueueWatcher] = set()

    # -- small helpers ---------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self._endpoints]

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def connected(self) -> bool:
        """Whether a session to an etcd member is up now."""
        return self._connected

    def key(self, name: str, node_id: str) -> bytes:
        """The etcd key of a node: ``<prefix><name>/<node id>`` with "/" made "-"."""
        return f"{self._prefix}{_clean(name)}/{_clean(node_id)}".encode()

    def _check(self) -> None:
        if self._closed:
            raise RegistryError("registry is closed")

    def _events(self) -> tuple[asyncio.Event, asyncio.Event, asyncio.Event, asyncio.Lock]:
        if self._wake is None:
            self._first_up = asyncio.Event()
            self._synced = asyncio.Event()
            self._wake = asyncio.Event()
            self._attempt = asyncio.Event()
            self._write_lock = asyncio.Lock()
        assert self._first_up is not None and self._synced is not None and self._write_lock is not None
        return self._first_up, self._synced, self._wake, self._write_lock

    def _ensure_session(self) -> None:
        self._check()
        self._events()
        if self._session is None or self._session.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RegistryError("EtcdRegistry must be used inside a running asyncio event loop") from None
            self._session = loop.create_task(self._run(), name="hyperbroker-etcd-session")

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _unreachable(self) -> RegistryError:
        where = ",".join(self.endpoints)
        if self._refused is not None:
            return RegistryError(f"etcd at {where} refused this client: {self._refused}")
        why = f": {self._last_error}" if self._last_error is not None else ""
        return RegistryError(f"etcd at {where} did not answer within {self._timeout}s{why}")

    async def _wait_first_up(self) -> None:
        """Wait (up to ``timeout``) until a session has been up once; RegistryError otherwise
        (at once when etcd refused the credentials)."""
        first_up, _, _, _ = self._events()
        self._ensure_session()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while not first_up.is_set():
            if self._refused is not None:
                raise self._unreachable()
            left = deadline - loop.time()
            if left <= 0:
                raise self._unreachable()
            assert self._attempt is not None
            self._attempt.clear()
            waits = [loop.create_task(first_up.wait()), loop.create_task(self._attempt.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in waits:
                    t.cancel()
            self._check()

    # -- the merged view and its events ------------------------------------------------------------

    def _compute_view(self) -> dict[_Key, dict[str, Node]]:
        view: dict[_Key, dict[str, Node]] = {}
        for key, (skey, node) in self._cache.items():
            if key not in self._own and key not in self._pending_deletes:
                view.setdefault(skey, {})[node.id] = node
        for own in self._own.values():
            skey, node = own.view
            view.setdefault(skey, {})[node.id] = node
        return view

    _service = staticmethod(service_of)

    def _refresh(self) -> None:
        """Recompute the view; tell the watchers what changed (a delete carries the old nodes)."""
        old, self._view = self._view, self._compute_view()
        for ev in diff_views(old, self._view):
            for w in list(self._watchers):
                w.put(ev)

    def _parse_kv(self, value: bytes) -> list[tuple[_Key, Node]]:
        parsed = decode_service(value)
        if parsed is None:
            return []
        skey, nodes = parsed
        return [(skey, n) for n in nodes]

    def _cache_put(self, cache: dict[bytes, tuple[_Key, Node]], key: bytes, value: bytes) -> None:
        entries = self._parse_kv(value)
        if entries:
            cache[key] = entries[0]  # go-micro writes one node per key
        else:
            cache.pop(key, None)
            log.debug("etcd key %r is not a go-micro service node; ignored", key)

    # -- the session: connect, restore, watch, keep alive ------------------------------------------

    async def _open(self) -> Any:
        """A connected client on the first endpoint that answers, starting at the current one."""
        n = len(self._endpoints)
        for i in range(n):
            idx = (self._ep_index + i) % n
            host, port = self._endpoints[idx]
            client = self._client_cls(
                host=host,
                port=port,
                username=self._username,
                password=self._password,
                timeout=self._timeout,
                options={
                    "grpc.keepalive_time_ms": 10_000,
                    "grpc.keepalive_timeout_ms": int(self._timeout * 1000),
                },
            )
            try:
                await asyncio.wait_for(client.get(self._prefix_b), self._timeout)
            except asyncio.CancelledError:
                await self._close_client(client)
                raise
            except Exception as e:
                self._last_error = e
                if _is_auth_error(e):
                    self._refused = e
                log.debug("etcd endpoint %s:%s: %r", host, port, e)
                await self._close_client(client)
                continue
            self._ep_index = idx
            self._refused = None
            return client
        raise _SessionLost(f"no etcd endpoint answered: {self._last_error!r}")

    async def _close_client(self, client: Any) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(client.close(), self._timeout)

    async def _run(self) -> None:
        first_up, _, wake, _ = self._events()
        backoff = _BACKOFF_MIN
        while not self._closed:
            client: Any = None
            try:
                client = await self._open()
                self._client = client
                self._lost = None
                await self._check_lease(client)
                rev = await self._resync(client) if self._want_watch else None
                await self._flush(client)
                self._connected = True
                self._ever_connected = True
                first_up.set()
                backoff = _BACKOFF_MIN
                log.debug("etcd session up on %s", self.endpoints[self._ep_index])
                await self._serve(client, rev)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._last_error = e
                if self._connected:
                    log.warning("etcd session on %s lost: %s", self.endpoints[self._ep_index], e)
                    self._ep_index = (self._ep_index + 1) % len(self._endpoints)
            finally:
                self._connected = False
                self._client = None
                if client is not None and not self._closed:
                    await self._close_client(client)
                elif client is not None:
                    self._client = client  # close() still needs it to revoke the lease
            assert self._attempt is not None
            self._attempt.set()
            if self._closed:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _serve(self, client: Any, rev: int | None) -> None:
        """Run the watch and the keep-alive; return only by raising when the session fails."""
        _, _, wake, _ = self._events()
        loop = asyncio.get_running_loop()
        watch: asyncio.Task[None] | None = None
        next_ping = loop.time() + self._ping_interval()
        try:
            while True:
                wake.clear()
                if self._closed:
                    # close() cancelled this task, but a cancellation can be lost: on Python
                    # <= 3.11 asyncio.wait_for returns the inner result instead of raising
                    # CancelledError when the inner call completes as it is cancelled
                    return
                if self._lost is not None:
                    raise _SessionLost(str(self._lost))
                if self._want_watch and watch is None:
                    if rev is None:
                        rev = await self._resync(client)
                    watch = loop.create_task(self._watch(client, rev), name="hyperbroker-etcd-watch")
                if watch is not None and watch.done():
                    watch.result()
                    raise _SessionLost("the watch stream ended")
                await self._flush(client)
                waits: list[asyncio.Future[Any]] = [loop.create_task(wake.wait())]
                if watch is not None:
                    waits.append(watch)
                try:
                    await asyncio.wait(
                        waits, timeout=max(0.0, next_ping - loop.time()), return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waits[0].cancel()
                if loop.time() >= next_ping:
                    await self._keepalive(client)
                    next_ping = loop.time() + self._ping_interval()
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.wait([watch], timeout=2.0)
                if watch.done() and not watch.cancelled():
                    watch.exception()  # retrieved: the session's own error is what counts

    def _ping_interval(self) -> float:
        if self._lease is not None and self._lease_granted:
            return max(0.2, self._lease_granted / 3)
        return _PING_INTERVAL

    async def _keepalive(self, client: Any) -> None:
        """Renew the lease (etcd's LeaseKeepAlive), or just check the connection."""
        if self._lease is None:
            await asyncio.wait_for(client.get(self._prefix_b), self._timeout)
            return
        reply = await asyncio.wait_for(client.refresh_lease(self._lease), self._timeout)
        if reply is None or reply.TTL <= 0:
            log.warning("etcd lease %x expired; registering again with a new lease", self._lease)
            self._lease_lost()
            await self._flush(client)

    def _lease_lost(self) -> None:
        self._lease = None
        self._lease_granted = None
        for own in self._own.values():
            if own.ttl is not None:
                own.stored = False

    async def _check_lease(self, client: Any) -> None:
        """After a reconnect: is the lease still alive? (it is not after a long partition)."""
        if self._lease is None:
            return
        reply = await asyncio.wait_for(client.refresh_lease(self._lease), self._timeout)
        if reply is None or reply.TTL <= 0:
            log.warning("etcd lease %x expired while etcd was unreachable; registering again", self._lease)
            self._lease_lost()

    async def _resync(self, client: Any) -> int:
        """Read the whole prefix into the cache (changes since become watch events)."""
        _, synced, _, _ = self._events()
        rsp = await asyncio.wait_for(client.get_prefix(self._prefix_b), self._timeout)
        cache: dict[bytes, tuple[_Key, Node]] = {}
        for kv in rsp:
            self._cache_put(cache, bytes(kv.key), bytes(kv.value))
        for key, own in self._own.items():
            if own.stored and key not in cache:
                own.stored = False  # deleted behind our back: put it again
        self._cache = cache
        self._refresh()
        synced.set()
        return int(rsp.header.revision)

    async def _watch(self, client: Any, rev: int) -> None:
        stream = await asyncio.wait_for(
            client.watch_prefix(self._prefix_b, start_revision=rev + 1, prev_kv=True), self._timeout
        )
        try:
            async for ev in stream:
                self._apply(ev)
        finally:
            # aetcd's cancel may wait on its request queue: never let it hold the session
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(stream.cancel(), 1.0)

    def _apply(self, ev: Any) -> None:
        key = bytes(ev.kv.key)
        if ev.kind == "PUT":
            self._cache_put(self._cache, key, bytes(ev.kv.value))
        else:
            self._cache.pop(key, None)
            own = self._own.get(key)
            if own is not None and own.stored:
                # our key went (lease expired in a partition, or deleted by someone): put it back
                log.info("etcd deleted our key %r; registering it again", key)
                own.stored = False
                self._kick()
        self._refresh()

    async def _grant(self, client: Any) -> int:
        assert self._lease_ttl is not None
        lease = await asyncio.wait_for(client.lease(self._lease_ttl), self._timeout)
        self._lease = int(lease.id)
        self._lease_granted = int(lease.ttl)
        log.debug("etcd lease %x granted, TTL %s s", self._lease, self._lease_granted)
        return self._lease

    async def _flush(self, client: Any) -> None:
        """Write what is owed: deletes, the lease, unstored keys; revoke replaced leases."""
        _, _, _, lock = self._events()
        async with lock:
            for key in list(self._pending_deletes):
                await asyncio.wait_for(client.delete(key), self._timeout)
                self._pending_deletes.discard(key)
            for attempt in range(2):
                try:
                    await self._put_unstored(client)
                    break
                except Exception as e:
                    if attempt or not _is_lease_gone(e):
                        raise
                    self._lease_lost()
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

    async def _write_now(self) -> None:
        """Write what is owed through the live session; on failure the session restarts."""
        client = self._client
        if not self._connected or client is None:
            self._kick()
            return
        try:
            await self._flush(client)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if _is_auth_error(e):
                raise RegistryError(f"etcd refused the write: {e}") from e
            self._lost = e
            self._kick()
            log.warning("etcd write failed (%s); it is done when etcd answers again", e)

    # -- the Registry protocol ---------------------------------------------------------------------

    async def register(self, service: Service, ttl: float | None = None) -> None:
        """Put each node's key (with the registry's lease when ``ttl`` is given).

        An unchanged re-register (the broker's heartbeat) writes nothing: the lease is kept
        alive by the keep-alive stream. While etcd is unreachable the registration is
        remembered and written when it is back (RegistryError only if etcd was never reached).
        """
        self._check()
        if not service.name:
            raise RegistryError("service name must not be empty")
        for node in service.nodes:
            if not node.id:
                raise RegistryError("node id must not be empty")
        if not service.nodes:
            return
        lease_ttl = None if ttl is None or ttl <= 0 else max(_MIN_TTL, math.ceil(ttl))
        self._events()
        added: list[tuple[bytes, _Own]] = []
        if lease_ttl is not None and lease_ttl != self._lease_ttl:
            if self._lease is not None:
                # a new TTL: move every leased key to a new lease, then revoke the old one
                self._old_leases.append(self._lease)
                self._lease_lost()
            self._lease_ttl = lease_ttl
        for node in map(_expand_unspecified, service.nodes):
            key = self.key(service.name, node.id)
            one = Service(service.name, service.version, (node,))
            value = encode_service(one, node)
            old = self._own.get(key)
            if old is not None and old.value == value and old.ttl == lease_ttl:
                continue
            own = _Own(((service.name, service.version), node), value, lease_ttl)
            self._own[key] = own
            self._pending_deletes.discard(key)
            added.append((key, own))
        if not added and all(o.stored for o in self._own.values()):
            return
        self._refresh()
        self._ensure_session()
        if not self._ever_connected:
            try:
                await self._wait_first_up()
            except BaseException:
                for key, own in added:  # not done: forget it
                    if self._own.get(key) is own:
                        del self._own[key]
                self._refresh()
                raise
            return
        await self._write_now()

    async def deregister(self, service: Service) -> None:
        """Delete each node's key at once (or as soon as etcd answers again)."""
        self._check()
        changed = False
        for node in service.nodes:
            key = self.key(service.name, node.id)
            own = self._own.pop(key, None)
            if own is None:
                continue
            changed = True
            if self._ever_connected or own.stored:
                self._pending_deletes.add(key)
        if not changed:
            return
        self._refresh()
        if self._pending_deletes:
            self._ensure_session()
            await self._write_now()

    async def _read(self, key: bytes) -> list[tuple[_Key, Node]]:
        """A direct range read (no watch running)."""
        await self._wait_first_up()
        client = self._client
        if client is None or not self._connected:
            raise self._unreachable()
        try:
            rsp = await asyncio.wait_for(client.get_prefix(key), self._timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._lost = e
            self._kick()
            raise RegistryError(f"etcd read failed: {e}") from e
        out: list[tuple[_Key, Node]] = []
        for kv in rsp:
            if bytes(kv.key) in self._own:
                continue
            out.extend(self._parse_kv(bytes(kv.value)))
        out.extend(own.view for own in self._own.values())
        return out

    async def _answer(self) -> None:
        """Make sure the watch cache has been filled once (waits up to ``timeout``)."""
        _, synced, _, _ = self._events()
        self._ensure_session()
        if synced.is_set():
            return
        try:
            await asyncio.wait_for(synced.wait(), self._timeout)
        except TimeoutError:
            raise self._unreachable() from None
        self._check()

    @staticmethod
    def _group(entries: Iterable[tuple[_Key, Node]]) -> dict[_Key, dict[str, Node]]:
        out: dict[_Key, dict[str, Node]] = {}
        for skey, node in entries:
            out.setdefault(skey, {})[node.id] = node
        return out

    async def get_service(self, name: str) -> list[Service]:
        """Every version of the named service: from the watch cache (the last known one while
        etcd is unreachable), or read from etcd when no watch runs."""
        self._check()
        if self._want_watch:
            await self._answer()
            return [self._service(k, nodes) for k, nodes in self._view.items() if k[0] == name]
        entries = await self._read(f"{self._prefix}{_clean(name)}/".encode())
        return [self._service(k, nodes) for k, nodes in self._group(entries).items() if k[0] == name]

    async def list_services(self) -> list[Service]:
        self._check()
        if self._want_watch:
            await self._answer()
            return [self._service(k, nodes) for k, nodes in self._view.items()]
        entries = await self._read(self._prefix_b)
        return [self._service(k, nodes) for k, nodes in self._group(entries).items()]

    def watch(self) -> QueueWatcher:
        """A watcher yielding "create" for every known service, then every change. The first
        call starts etcd's watch stream on the prefix (after one range read)."""
        self._check()
        w = QueueWatcher(self._unwatch)
        for k, nodes in self._view.items():
            w.put(WatchEvent("create", self._service(k, nodes)))
        self._watchers.add(w)
        if not self._want_watch:
            self._want_watch = True
            self._ensure_session()
            self._kick()
        return w

    def _unwatch(self, w: QueueWatcher) -> None:
        self._watchers.discard(w)

    async def close(self) -> None:
        """Stop watchers and the session; revoke the lease (its keys go at once) and delete the
        keys without a lease. Bounded by ``timeout``."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._watchers):
            w.stop()
        self._watchers.clear()
        session, self._session = self._session, None
        if session is not None:
            session.cancel()
            self._kick()  # a session that lost the cancellation sees _closed at its next turn
            done, _ = await asyncio.wait([session], timeout=self._timeout + 2.0)
            if done:
                with contextlib.suppress(BaseException):
                    session.result()
            else:
                log.warning("closing the etcd registry: its session did not stop within %ss", self._timeout + 2.0)
        client, self._client = self._client, None
        if client is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                for lease in [*self._old_leases, *([self._lease] if self._lease is not None else [])]:
                    await client.revoke_lease(lease)
                for key, own in self._own.items():
                    if own.ttl is None and own.stored:
                        await client.delete(key)
                for key in self._pending_deletes:
                    await client.delete(key)
        except Exception as e:  # closing must not fail the caller's shutdown
            log.warning("closing the etcd registry: cleanup failed: %r", e)
        finally:
            self._lease = None
            self._own.clear()
            self._pending_deletes.clear()
            await self._close_client(client)

    async def __aenter__(self) -> EtcdRegistry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self._connected else "disconnected")
        return (
            f"EtcdRegistry(endpoints={self.endpoints!r}, prefix={self._prefix!r}, {state}, "
            f"own={len(self._own)}, known={sum(len(n) for n in self._view.values())})"
        )
