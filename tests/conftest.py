"""Fixtures shared by the test modules: a MemoryRegistry per test and a broker factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from brokers import LOOPBACK, MakeBroker

from hyperbroker import Broker, MemoryRegistry


@pytest.fixture
def registry() -> MemoryRegistry:
    return MemoryRegistry()


@pytest.fixture
async def make_broker(registry: MemoryRegistry) -> AsyncIterator[MakeBroker]:
    """A factory of loopback brokers on the test's registry (connected unless connect=False).
    All are disconnected at the end of the test without waiting for undelivered messages."""
    brokers: list[Broker] = []

    async def make(connect: bool = True, **options: Any) -> Broker:
        options.setdefault("address", LOOPBACK)
        options.setdefault("registry", registry)
        options.setdefault("disconnect_timeout", 0)
        b = Broker(**options)
        brokers.append(b)
        if connect:
            await asyncio.wait_for(b.connect(), 5)
        return b

    yield make
    for b in reversed(brokers):
        await asyncio.wait_for(b.disconnect(timeout=0), 10)


@pytest.fixture
def etcd_server(tmp_path: Any) -> Any:
    """A real one-member etcd on 127.0.0.1 (free random ports, temp data dir), healthy; stopped
    and removed after the test. Skips when etcd is not installed."""
    from etcd_util import EtcdServer, etcd_binary

    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    server = EtcdServer.single(tmp_path)
    try:
        yield server
    finally:
        server.cleanup()
