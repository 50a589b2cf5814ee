"""The background session of an etcd registry: ``Session``.

Owns the one task that holds one connection to one endpoint at a time: connect (through the
``Connector``, which fails over between endpoints), restore (check the lease, read the cache
again, write what is owed), then serve (the watch stream, the lease keep-alive every TTL/3 or a
connection check) until the connection fails; then back off and start again on the next
endpoint. Also owns the connection state callers wait on (``wait_first_up``), the wake-up of
the session (``kick``), and the registry's closed flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..errors import RegistryError
from .etcd_client import Connector, SessionLost
from .etcd_lease import LeaseKeeper
from .etcd_watch import WatchCache

__all__ = ["Session"]

log = logging.getLogger("hyperbroker.registry.etcd")  # one logger for the whole etcd registry

#: Reconnect back-off bounds (s).
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class Session:
    """The session task and its state. Events are made on first use, inside the running loop."""

    def __init__(
        self, connector: Connector, keeper: LeaseKeeper, cache: WatchCache, probe_key: bytes, timeout: float
    ) -> None:
        self._connector = connector
        self._keeper = keeper
        self._cache = cache
        self._probe_key = probe_key
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._connected = False
        self._ever_connected = False
        self._first_up: asyncio.Event | None = None
        self._synced: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._attempt: asyncio.Event | None = None  # set after each connection attempt
        self._lost: BaseException | None = None  # set by a caller whose request failed
        self._closed = False

    # -- state -------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The connected client, or None."""
        return self._client

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ever_connected(self) -> bool:
        return self._ever_connected

    @property
    def closed(self) -> bool:
        return self._closed

    def check(self) -> None:
        """RegistryError once the registry is closed."""
        if self._closed:
            raise RegistryError("registry is closed")

    def prepare(self) -> tuple[asyncio.Event, asyncio.Event, asyncio.Event]:
        """The events (first up, cache synced, wake), made on first call."""
        if self._wake is None:
            self._first_up = asyncio.Event()
            self._synced = asyncio.Event()
            self._wake = asyncio.Event()
            self._attempt = asyncio.Event()
        assert self._first_up is not None and self._synced is not None
        return self._first_up, self._synced, self._wake

    def ensure(self) -> None:
        """Start the session task unless it runs."""
        self.check()
        self.prepare()
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RegistryError("EtcdRegistry must be used inside a running asyncio event loop") from None
            self._task = loop.create_task(self._run(), name="hyperbroker-etcd-session")

    def kick(self) -> None:
        """Wake the session: there is something to write, or it is to retry now."""
        if self._wake is not None:
            self._wake.set()

    def lose(self, e: BaseException) -> None:
        """A caller's request on the session's client failed: the session restarts."""
        self._lost = e
        self.kick()

    async def wait_first_up(self) -> None:
        """Wait (up to ``timeout``) until a session has been up once; RegistryError otherwise
        (at once when etcd refused the credentials)."""
        first_up, _, _ = self.prepare()
        self.ensure()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while not first_up.is_set():
            if self._connector.refused is not None:
                raise self._connector.unreachable()
            left = deadline - loop.time()
            if left <= 0:
                raise self._connector.unreachable()
            assert self._attempt is not None
            self._attempt.clear()
            waits = [loop.create_task(first_up.wait()), loop.create_task(self._attempt.wait())]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in waits:
                    t.cancel()
            self.check()

    async def wait_synced(self) -> None:
        """Make sure the watch cache has been filled once (waits up to ``timeout``)."""
        _, synced, _ = self.prepare()
        self.ensure()
        if synced.is_set():
            return
        try:
            await asyncio.wait_for(synced.wait(), self._timeout)
        except TimeoutError:
            raise self._connector.unreachable() from None
        self.check()

    def mark_closed(self) -> bool:
        """Mark the registry closed; False if it already was."""
        if self._closed:
            return False
        self._closed = True
        return True

    async def stop(self) -> Any:
        """Stop the session task (after ``mark_closed``), bounded; the client it held, if any
        (close still needs it to revoke the lease), now no longer the session's."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self.kick()  # a session that lost the cancellation sees closed at its next turn
            done, _ = await asyncio.wait([task], timeout=self._timeout + 2.0)
            if done:
                with contextlib.suppress(BaseException):
                    task.result()
            else:
                log.warning("closing the etcd registry: its session did not stop within %ss", self._timeout + 2.0)
        client, self._client = self._client, None
        return client

    # -- the session: connect, restore, watch, keep alive ------------------------------------------

    async def _resync(self, client: Any) -> int:
        _, synced, _ = self.prepare()
        rev = await self._cache.resync(client)
        synced.set()
        return rev

    async def _run(self) -> None:
        first_up, _, wake = self.prepare()
        backoff = BACKOFF_MIN
        while not self._closed:
            client: Any = None
            try:
                client = await self._connector.open()
                self._client = client
                self._lost = None
                await self._keeper.check_lease(client)
                rev = await self._resync(client) if self._cache.wanted else None
                await self._keeper.flush(client)
                self._connected = True
                self._ever_connected = True
                first_up.set()
                backoff = BACKOFF_MIN
                log.debug("etcd session up on %s", self._connector.current)
                await self._serve(client, rev)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._connector.last_error = e
                if self._connected:
                    log.warning("etcd session on %s lost: %s", self._connector.current, e)
                    self._connector.fail_over()
            finally:
                self._connected = False
                self._client = None
                if client is not None and not self._closed:
                    await self._connector.close_client(client)
                elif client is not None:
                    self._client = client  # close() still needs it to revoke the lease
            assert self._attempt is not None
            self._attempt.set()
            if self._closed:
                return
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _serve(self, client: Any, rev: int | None) -> None:
        """Run the watch and the keep-alive; return only by raising when the session fails."""
        _, _, wake = self.prepare()
        loop = asyncio.get_running_loop()
        watch: asyncio.Task[None] | None = None
        next_ping = loop.time() + self._keeper.ping_interval()
        try:
            while True:
                wake.clear()
                if self._closed:
                    # close() cancelled this task, but a cancellation can be lost: on Python
                    # <= 3.11 asyncio.wait_for returns the inner result instead of raising
                    # CancelledError when the inner call completes as it is cancelled
                    return
                if self._lost is not None:
                    raise SessionLost(str(self._lost))
                if self._cache.wanted and watch is None:
                    if rev is None:
                        rev = await self._resync(client)
                    watch = loop.create_task(self._cache.watch(client, rev, self.kick), name="hyperbroker-etcd-watch")
                if watch is not None and watch.done():
                    watch.result()
                    raise SessionLost("the watch stream ended")
                await self._keeper.flush(client)
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
                    next_ping = loop.time() + self._keeper.ping_interval()
        finally:
            if watch is not None:
                watch.cancel()
                await asyncio.wait([watch], timeout=2.0)
                if watch.done() and not watch.cancelled():
                    watch.exception()  # retrieved: the session's own error is what counts

    async def _keepalive(self, client: Any) -> None:
        """Renew the lease (etcd's LeaseKeepAlive), or just check the connection."""
        if not await self._keeper.renew(client):
            await asyncio.wait_for(client.get(self._probe_key), self._timeout)
