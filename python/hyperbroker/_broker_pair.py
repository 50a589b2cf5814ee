"""Two real loopback Brokers for tests: :func:`broker_pair` and the :class:`BrokerPair` it
yields (a publisher and a subscriber sharing one :class:`MemoryRegistry`).

Re-exported by :mod:`hyperbroker.testing`; the in-process :class:`~hyperbroker.testing.TestBroker`
is there. This file only connects and disconnects real Brokers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .broker import Broker
from .errors import BrokerError
from .registry.memory import MemoryRegistry

__all__ = ["BrokerPair", "broker_pair"]


@dataclass(frozen=True, slots=True)
class BrokerPair:
    """A connected publisher and subscriber :class:`Broker` sharing ``registry``."""

    publisher: Broker
    subscriber: Broker
    registry: MemoryRegistry


@asynccontextmanager
async def broker_pair(**options: Any) -> AsyncIterator[BrokerPair]:
    """Two real Brokers on 127.0.0.1 (free ports) sharing one :class:`MemoryRegistry` (or the
    ``registry`` option), connected; disconnected on exit (publisher first, so what it still
    holds is delivered within ``disconnect_timeout``, default 1 s here)."""
    registry = options.pop("registry", None)
    if registry is None:
        registry = MemoryRegistry()
    if not isinstance(registry, MemoryRegistry):
        raise BrokerError("broker_pair needs a MemoryRegistry (or no registry option)")
    options.setdefault("address", "127.0.0.1:0")
    options.setdefault("disconnect_timeout", 1.0)
    publisher = Broker(registry=registry, **options)
    subscriber = Broker(registry=registry, **options)
    await publisher.connect()
    try:
        await subscriber.connect()
        try:
            yield BrokerPair(publisher, subscriber, registry)
        finally:
            await publisher.disconnect()
    finally:
        await publisher.disconnect(timeout=0)  # a no-op unless the subscriber failed to connect
        await subscriber.disconnect()
