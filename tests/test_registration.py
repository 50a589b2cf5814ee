"""A connected broker's side of the registry (``_registration.py``): registry events become
routes, and a burst of events for one topic costs one route lookup, not one per event."""

from __future__ import annotations

import asyncio

import pytest

from hyperbroker import BROADCAST_VERSION, Broker, MemoryRegistry, Node, Service
from hyperbroker.registry.base import service_name

pytestmark = pytest.mark.timeout(30)

TOPIC = "orders"


class CountingRegistry(MemoryRegistry):
    """A MemoryRegistry that counts ``get_service`` calls by name."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups: dict[str, int] = {}

    async def get_service(self, name: str) -> list[Service]:
        self.lookups[name] = self.lookups.get(name, 0) + 1
        return await super().get_service(name)


def node(i: int) -> Node:
    return Node(f"hb-peer-{i}", f"127.0.0.1:{20000 + i}", {"broker": "http", "topic": TOPIC, "batch": "1"})


async def test_a_burst_of_registrations_costs_one_route_lookup_per_topic() -> None:
    reg = CountingRegistry()
    async with Broker(address="127.0.0.1:0", registry=reg) as broker:
        await asyncio.sleep(0.05)  # the route watch is running
        reg.lookups.clear()
        # 200 nodes join at once (as when a fleet starts): 200 registry events for one topic
        for i in range(200):
            await reg.register(Service(service_name(TOPIC), BROADCAST_VERSION, (node(i),)))
        assert await broker.wait_for_route(TOPIC, timeout=5.0) > 0
        for _ in range(200):
            if broker.route_count(TOPIC) == 200:
                break
            await asyncio.sleep(0.01)
        assert broker.route_count(TOPIC) == 200
        # one lookup per refresh of the topic; merged while events wait, so a handful at most
        assert reg.lookups.get(service_name(TOPIC), 0) <= 5, reg.lookups


async def test_every_change_reaches_the_routes_after_a_burst() -> None:
    reg = CountingRegistry()
    async with Broker(address="127.0.0.1:0", registry=reg) as broker:
        await asyncio.sleep(0.05)
        for i in range(50):
            await reg.register(Service(service_name(TOPIC), BROADCAST_VERSION, (node(i),)))
        for i in range(0, 50, 2):  # half of them leave again, in the same burst
            await reg.deregister(Service(service_name(TOPIC), BROADCAST_VERSION, (node(i),)))
        for _ in range(200):
            if broker.route_count(TOPIC) == 25:
                break
            await asyncio.sleep(0.01)
        assert broker.route_count(TOPIC) == 25
