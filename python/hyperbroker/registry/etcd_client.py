"""The etcd client side of the etcd registry: the aetcd library (imported on first need), its
TLS variant, how etcd's errors are told apart, and ``Connector``: the cluster's endpoints with
failover (a connected client on the first member that answers) and why none did.

aetcd 1.0 has no TLS of its own (its issue #37); ``tls=`` is served by a small subclass that
opens the same gRPC channel with TLS credentials (see ``client_factory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..errors import RegistryError
from ..tls import TLSConfig, read_pem
from .etcd_addresses import format_endpoint

__all__ = ["Connector", "SessionLost", "client_factory", "import_aetcd", "is_auth_error", "is_lease_gone"]

log = logging.getLogger("hyperbroker.registry.etcd")  # one logger for the whole etcd registry


def import_aetcd() -> Any:
    try:
        import aetcd  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as e:
        raise RegistryError("EtcdRegistry needs the aetcd package: pip install 'hyperbroker[etcd]'") from e
    return aetcd


def client_factory(tls: TLSConfig | None) -> Any:
    """aetcd's Client class, or for TLS a subclass whose gRPC channel has TLS credentials.

    aetcd 1.0 opens ``grpc.aio.insecure_channel`` in ``Client.connect``; the subclass does the
    same steps with ``grpc.aio.secure_channel`` (the extra pins aetcd to 1.0.x for this).
    """
    aetcd = import_aetcd()
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


def is_auth_error(e: BaseException) -> bool:
    """Whether etcd refused this client (credentials or rights), as opposed to not answering."""
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


def is_lease_gone(e: BaseException) -> bool:
    return "lease not found" in str(e).lower()


class SessionLost(Exception):
    """The session's connection failed; the session restarts on the next endpoint."""


class Connector:
    """The cluster's endpoints, the one in use, and how the last attempt to reach them failed.

    ``last_error`` is the last failure seen (set by ``open`` and by the session when a
    connection breaks); ``refused`` is set while etcd refuses this client's credentials.
    """

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        probe_key: bytes,
        username: str | None,
        password: str | None,
        tls: TLSConfig | None,
        timeout: float,
    ) -> None:
        self._endpoints = endpoints
        self._probe_key = probe_key
        self._username = username
        self._password = password
        self._timeout = timeout
        self._client_cls: Any = client_factory(tls)  # fails early when aetcd is missing
        self._index = 0
        self.last_error: BaseException | None = None
        self.refused: BaseException | None = None  # etcd answered no: bad credentials, rights

    @property
    def names(self) -> list[str]:
        """Every endpoint as ``host:port``."""
        return [format_endpoint(h, p) for h, p in self._endpoints]

    @property
    def current(self) -> str:
        """The endpoint in use (or to be tried first)."""
        return self.names[self._index]

    def fail_over(self) -> None:
        """Start the next attempt at the next endpoint."""
        self._index = (self._index + 1) % len(self._endpoints)

    def unreachable(self) -> RegistryError:
        """The error for a call that needs etcd now and cannot have it."""
        where = ",".join(self.names)
        if self.refused is not None:
            return RegistryError(f"etcd at {where} refused this client: {self.refused}")
        why = f": {self.last_error}" if self.last_error is not None else ""
        return RegistryError(f"etcd at {where} did not answer within {self._timeout}s{why}")

    async def open(self) -> Any:
        """A connected client on the first endpoint that answers, starting at the current one."""
        n = len(self._endpoints)
        for i in range(n):
            idx = (self._index + i) % n
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
                await asyncio.wait_for(client.get(self._probe_key), self._timeout)
            except asyncio.CancelledError:
                await self.close_client(client)
                raise
            except Exception as e:
                self.last_error = e
                if is_auth_error(e):
                    self.refused = e
                log.debug("etcd endpoint %s:%s: %r", host, port, e)
                await self.close_client(client)
                continue
            self._index = idx
            self.refused = None
            return client
        raise SessionLost(f"no etcd endpoint answered: {self.last_error!r}")

    async def close_client(self, client: Any) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(client.close(), self._timeout)
