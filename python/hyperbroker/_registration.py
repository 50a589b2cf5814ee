"""A connected broker's side of the registry: what each subscription announces, the heartbeat
that keeps the announcements alive, and the watch that turns registry events into routes.

:class:`Registration` is made by ``Broker.connect()`` and stopped by its teardown. It knows
the broker only through what it is given: the registry, the options, the advertised address,
the operational :class:`~hyperbroker.callbacks.Events`, a ``set_routes(topic, groups)`` callable
(the engine's) and a callable listing the live subscriptions (for the heartbeat).

A subscription is announced as go-micro announces it: v1's ``topic:<topic>`` service, or with
``dialect="micro"`` a node of ``micro.http.broker`` whose metadata names the topic; the service
version is the queue group (or the broadcast version). Metadata also carries what a publisher
negotiates on: ``secure``, ``batch``, ``frames``, ``h2``, ``max_body``, ``max_deliveries``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ._routes import RouteGroup, route_groups, topics_of
from .callbacks import Events
from .errors import BrokerError, RegistryError
from .options import BrokerOptions
from .registry.base import BROADCAST_VERSION, MICRO_SERVICE, Node, Registry, Service, WatchEvent, service_name, topic_of
from .subscriber import SubscriptionBase

__all__ = ["Registration", "advertised_address"]

log = logging.getLogger("hyperbroker")


class Registration:
    """Announcements, heartbeat and route watch of one connected broker (see the module text)."""

    def __init__(
        self,
        registry: Registry,
        options: BrokerOptions,
        advertised: str,
        secure: bool,
        events: Events,
        set_routes: Callable[[str, Sequence[RouteGroup]], None],
        subscriptions: Callable[[], Iterable[SubscriptionBase]],
    ) -> None:
        self.registry = registry
        self._options = options
        self._advertised = advertised
        self._secure = secure
        self._events = events
        self._set_routes = set_routes
        self._subscriptions = subscriptions
        #: topics of the micro.http.broker nodes last seen, per version (see _on_event)
        self._micro_topics: dict[str, set[str]] = {}
        #: topics whose route is to be looked up again, oldest first (see _refresh_loop)
        self._dirty: dict[str, None] = {}
        self._dirty_set = asyncio.Event()
        self._watcher: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start watching the registry and the heartbeat (raises what ``registry.watch()`` raises)."""
        self._watcher = self.registry.watch()
        self._tasks.append(loop.create_task(self._watch_loop(self._watcher), name="hyperbroker-watch"))
        self._tasks.append(loop.create_task(self._refresh_loop(), name="hyperbroker-routes"))
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="hyperbroker-heartbeat"))

    async def stop(self) -> None:
        """Stop the watch and the heartbeat; routes are no longer set after this."""
        self._stopped = True
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()

    def service(self, sub: SubscriptionBase) -> Service:
        """The registry record that announces ``sub`` (one node: this broker's endpoint)."""
        o = self._options
        meta = {"secure": "true" if self._secure else "false", "broker": "http", "topic": sub.topic}
        if o.batch:
            meta["batch"] = "1"
            if o.frames:  # a frames request carries several messages: a batch
                meta["frames"] = "1"
        if o.h2:
            meta["h2"] = "1"
        meta["max_body"] = str(o.max_body)
        if sub.options.max_deliveries is not None:
            meta["max_deliveries"] = str(sub.options.max_deliveries)
        node = Node(sub.id, self._advertised, meta)
        name = MICRO_SERVICE if o.dialect == "micro" else service_name(sub.topic)
        return Service(name, sub.options.queue or BROADCAST_VERSION, (node,))

    async def register(self, sub: SubscriptionBase) -> None:
        """Announce ``sub`` with the configured TTL (the heartbeat renews it)."""
        await self.registry.register(self.service(sub), ttl=self._options.register_ttl)

    async def deregister(self, sub: SubscriptionBase) -> None:
        """Withdraw ``sub``'s announcement (publishers stop routing to it)."""
        await self.registry.deregister(self.service(sub))

    async def refresh_topic(self, topic: str) -> None:
        """Look ``topic``'s subscribers up in both go-micro layouts and hand the engine its routes.
        A node whose address cannot be used is left out and reported through ``on_error``."""
        if self._stopped:
            return
        v1 = await self.registry.get_service(service_name(topic))
        micro = await self.registry.get_service(MICRO_SERVICE)
        groups = route_groups(v1, micro, topic)
        if self._stopped:
            return
        try:
            self._set_routes(topic, groups)
        except BrokerError as e:
            # a node announced at an unusable address is left out, the rest routed: reported,
            # not raised into the subscribe or unsubscribe that looked the topic up
            log.warning("routes of %r: %s", topic, e)
            self._events.error(RegistryError(f"routes of {topic!r}: {e}"))

    async def _watch_loop(self, watcher: Any) -> None:
        try:
            async for ev in watcher:
                self._on_event(ev)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("registry watch failed; routes are no longer updated")
            self._events.error(RegistryError(f"registry watch failed; routes are no longer updated: {e}"))

    def _on_event(self, ev: WatchEvent) -> None:
        """Mark the topics an event touches for a route lookup (``_refresh_loop`` does it)."""
        if ev.service.name == MICRO_SERVICE:
            # an update carries the new nodes only: the topics of nodes that left are remembered
            version = ev.service.version
            now = topics_of(ev.service)
            changed = self._micro_topics.pop(version, set()) | now
            if ev.action != "delete":
                self._micro_topics[version] = now
            for t in sorted(changed):
                self._dirty[t] = None
        else:
            topic = topic_of(ev.service.name)
            if topic is None:
                return
            self._dirty[topic] = None
        self._dirty_set.set()

    async def _refresh_loop(self) -> None:
        """Look up the routes of the topics events marked, oldest first. A topic marked again
        while earlier events wait is looked up once: a burst of registrations (a thousand nodes
        joining) costs one lookup per topic, not one per event. A lookup always reads the
        registry's state at that moment, so merging marks loses no change."""
        while True:
            await self._dirty_set.wait()
            self._dirty_set.clear()
            while self._dirty:
                topic = next(iter(self._dirty))
                del self._dirty[topic]
                try:
                    await self.refresh_topic(topic)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.warning("routes of %r could not be looked up: %s", topic, e)
                    self._events.error(RegistryError(f"routes of {topic!r} could not be looked up: {e}"))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.register_interval)
            for sub in list(self._subscriptions()):
                try:
                    await self.register(sub)
                except Exception as e:
                    log.warning("heartbeat: re-registering %s failed: %s", sub.topic, e)
                    self._events.error(RegistryError(f"heartbeat: re-registering {sub.topic} failed: {e}"))


def advertised_address(advertise: str | None, host: str, port: int, registry: Registry) -> str:
    """The ``host:port`` a broker bound to ``host``:``port`` announces: ``advertise`` (its port
    added when it names only a host); else the bound address, with an unspecified host
    (0.0.0.0, ::) replaced by 127.0.0.1 unless the registry announces every interface itself
    (``expands_unspecified``)."""
    if advertise:
        if ":" in advertise and not advertise.startswith("["):
            h, _, p = advertise.rpartition(":")
            if p.isdigit() and ":" not in h:
                return advertise
        return f"{advertise}:{port}"
    if _is_unspecified(host) and not getattr(registry, "expands_unspecified", False):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
