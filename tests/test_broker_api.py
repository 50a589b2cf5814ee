"""The Broker API surface (go-micro's Broker interface): options, lifecycle, argument checks,
Subscriber handles, and the registry heartbeat. Loopback + MemoryRegistry only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from brokers import LOOPBACK, MakeBroker, until

from hyperbroker import (
    BROADCAST_VERSION,
    Broker,
    BrokerError,
    BrokerOptions,
    Event,
    MemoryRegistry,
    Message,
    Node,
    NotConnectedError,
    Service,
    SubscribeOptions,
    Subscriber,
)
from hyperbroker.registry.base import WatchEvent

pytestmark = pytest.mark.timeout(30)


def noop(ev: Event) -> None:
    pass


async def nodes_of(registry: MemoryRegistry, topic: str) -> list[tuple[str, Node]]:
    """(version, node) of every node registered for ``topic``."""
    return [(s.version, n) for s in await registry.get_service(f"topic:{topic}") for n in s.nodes]


# --- identity and options ----------------------------------------------------------------------


def test_str_is_http() -> None:
    b = Broker(address=LOOPBACK, registry=MemoryRegistry())
    assert str(b) == "http"
    assert "http" in repr(b)


def test_options_from_constructor_and_init(registry: MemoryRegistry) -> None:
    b = Broker(address=LOOPBACK, registry=registry, backlog=5, node_queue=99, retry_min=0.02)
    o = b.options
    assert isinstance(o, BrokerOptions)
    assert o.address == LOOPBACK
    assert o.registry is registry
    assert o.backlog == 5 and o.node_queue == 99 and o.retry_min == 0.02
    # untouched options keep the documented defaults
    assert o.register_interval == 30.0 and o.register_ttl == 60.0
    assert o.disconnect_timeout == 5.0
    b.init(backlog=7, register_interval=1.5)
    assert b.options.backlog == 7
    assert b.options.register_interval == 1.5
    assert b.options.node_queue == 99  # init changes only what it names
    assert b.registry is registry


@pytest.mark.parametrize(
    "bad",
    [
        {"backlog": 0},
        {"backlog": -1},
        {"backlog": True},
        {"backlog": 1.5},
        {"node_queue": 0},
        {"max_body": 0},
        {"retry_min": 0},
        {"retry_min": -0.5},
        {"retry_min": 1.0, "retry_max": 0.5},
        {"request_timeout": 0},
        {"register_interval": 0},
        {"register_ttl": -1},
        {"disconnect_timeout": -1},
        {"address": "nonsense"},
        {"address": "127.0.0.1:99999"},
        {"address": "127.0.0.1:http"},
        {"address": 8080},
    ],
)
def test_bad_option_values_raise_broker_error(bad: dict[str, Any]) -> None:
    with pytest.raises(BrokerError):
        Broker(registry=MemoryRegistry(), **bad)
    b = Broker(address=LOOPBACK, registry=MemoryRegistry())
    before = b.options
    with pytest.raises(BrokerError):
        b.init(**bad)
    assert b.options == before  # a refused init changes nothing


def test_unknown_option_is_named() -> None:
    with pytest.raises(BrokerError, match="bogus_option"):
        Broker(address=LOOPBACK, registry=MemoryRegistry(), bogus_option=1)
    b = Broker(address=LOOPBACK, registry=MemoryRegistry())
    with pytest.raises(BrokerError, match="another_unknown"):
        b.init(another_unknown=True)


async def test_init_while_connected_raises(make_broker: MakeBroker) -> None:
    b = await make_broker()
    with pytest.raises(BrokerError):
        b.init(backlog=3)
    assert b.options.backlog == 1024
    await b.disconnect(timeout=0)
    b.init(backlog=3)  # allowed again once disconnected
    assert b.options.backlog == 3


# --- lifecycle ---------------------------------------------------------------------------------


async def test_address_before_and_after_connect(make_broker: MakeBroker) -> None:
    b = await make_broker(connect=False)
    assert b.address == LOOPBACK
    assert not b.connected
    assert b.advertised_address is None
    await asyncio.wait_for(b.connect(), 5)
    assert b.connected
    host, _, port = b.address.rpartition(":")
    assert host == "127.0.0.1"
    assert port.isdigit() and 0 < int(port) < 65536
    assert b.advertised_address == b.address
    await asyncio.wait_for(b.disconnect(), 5)
    assert not b.connected
    assert b.address == LOOPBACK
    assert b.advertised_address is None


async def test_connect_is_idempotent(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    b = await make_broker()
    addr = b.address
    await asyncio.wait_for(b.connect(), 5)
    assert b.address == addr
    # concurrent connects of a fresh broker bind once
    c = await make_broker(connect=False)
    await asyncio.wait_for(asyncio.gather(c.connect(), c.connect(), c.connect()), 5)
    caddr = c.address
    assert caddr != LOOPBACK and caddr != addr
    # it still works end to end
    got: list[bytes] = []
    await c.subscribe("idem", lambda ev: got.append(ev.message.body))
    await c.publish("idem", b"x")
    await c.flush(timeout=5)
    assert got == [b"x"]
    assert c.stats()["received"] == 1
    # disconnect is idempotent too
    await asyncio.wait_for(c.disconnect(), 5)
    await asyncio.wait_for(c.disconnect(), 5)
    assert not c.connected
    final = c.stats()  # after disconnect: the last counters
    assert final["received"] == 1 and final["in_flight"] == 0


async def test_async_with(registry: MemoryRegistry) -> None:
    b = Broker(address=LOOPBACK, registry=registry)
    async with b as entered:
        assert entered is b
        assert b.connected
        got: list[bytes] = []
        await b.subscribe("ctx", lambda ev: got.append(ev.message.body))
        assert len(await nodes_of(registry, "ctx")) == 1
        await b.publish("ctx", "hello")
        await b.flush(timeout=5)
        assert got == [b"hello"]
    assert not b.connected
    assert await nodes_of(registry, "ctx") == []


async def test_async_with_disconnects_on_error(registry: MemoryRegistry) -> None:
    b = Broker(address=LOOPBACK, registry=registry)
    with pytest.raises(RuntimeError, match="boom"):
        async with b:
            await b.subscribe("ctx-err", noop)
            raise RuntimeError("boom")
    assert not b.connected
    assert await nodes_of(registry, "ctx-err") == []


async def test_calls_before_connect_raise_not_connected(make_broker: MakeBroker) -> None:
    b = await make_broker(connect=False)
    with pytest.raises(NotConnectedError) as ei:
        await b.subscribe("t", noop)
    assert isinstance(ei.value, BrokerError)
    with pytest.raises(NotConnectedError):
        await b.publish("t", b"x")
    with pytest.raises(NotConnectedError):
        await b.publish_many("t", [b"x"])
    with pytest.raises(NotConnectedError):
        b.publish_nowait("t", b"x")
    with pytest.raises(NotConnectedError):
        await b.flush(timeout=1)
    assert b.stats() == {}


async def test_calls_after_disconnect_raise_not_connected(make_broker: MakeBroker) -> None:
    b = await make_broker()
    await b.disconnect()
    with pytest.raises(NotConnectedError):
        await b.publish("t", b"x")
    with pytest.raises(NotConnectedError):
        await b.subscribe("t", noop)


# --- argument checks ---------------------------------------------------------------------------


async def test_subscribe_argument_checks(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    b = await make_broker()
    with pytest.raises(BrokerError):
        await b.subscribe("", noop)
    with pytest.raises(BrokerError):
        await b.subscribe(None, noop)  # type: ignore[arg-type]
    with pytest.raises(BrokerError):
        await b.subscribe("t", "not callable")  # type: ignore[arg-type]
    # (no handler is no error: it makes an async-iterated subscription, tests/test_iteration.py)
    with pytest.raises(BrokerError):
        await b.subscribe("t", noop, queue="")
    # nothing was registered by the refused calls
    assert await registry.list_services() == []


async def test_publish_argument_checks(make_broker: MakeBroker) -> None:
    b = await make_broker()
    with pytest.raises(BrokerError):
        await b.publish("t", object())
    with pytest.raises(BrokerError):
        await b.publish("t", {1, 2, 3})
    with pytest.raises(BrokerError):
        await b.publish("t", {"x": object()})
    with pytest.raises(BrokerError):
        await b.publish_many("t", [b"ok", object()])
    with pytest.raises(BrokerError):
        await b.publish("", b"x")
    st = b.stats()
    assert st["published"] == 0
    assert st["backlogged"] == 0


async def test_flush_timeout_must_be_positive(make_broker: MakeBroker) -> None:
    b = await make_broker()
    with pytest.raises(BrokerError):
        await b.flush(timeout=0)
    with pytest.raises(BrokerError):
        await b.flush(timeout=-1)
    await b.flush(timeout=1)  # nothing published: returns at once


# --- Subscriber handle -------------------------------------------------------------------------


async def test_subscriber_attributes_and_registration(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    b = await make_broker()
    s1 = await b.subscribe("attrs", noop)
    s2 = await b.subscribe("attrs", noop, queue="workers", auto_ack=False)
    assert isinstance(s1, Subscriber)
    assert isinstance(s1.id, str) and s1.id
    assert s1.id != s2.id
    assert s1.topic == "attrs" and s2.topic == "attrs"
    assert isinstance(s1.options, SubscribeOptions)
    assert s1.options.queue is None and s1.options.auto_ack is True
    assert s2.options.queue == "workers" and s2.options.auto_ack is False
    assert s2.queue == "workers"
    registered = sorted(await nodes_of(registry, "attrs"), key=lambda vn: vn[0])
    assert [(v, n.id, n.address) for v, n in registered] == sorted(
        [(BROADCAST_VERSION, s1.id, b.advertised_address), ("workers", s2.id, b.advertised_address)]
    )
    for _, n in registered:
        assert n.metadata.get("secure") == "false"


async def test_unsubscribe_is_idempotent(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    b = await make_broker()
    keep = await b.subscribe("idem-unsub", noop)
    sub = await b.subscribe("idem-unsub", noop)
    assert len(await nodes_of(registry, "idem-unsub")) == 2
    await sub.unsubscribe()
    await sub.unsubscribe()
    assert [n.id for _, n in await nodes_of(registry, "idem-unsub")] == [keep.id]
    await b.disconnect()
    await sub.unsubscribe()  # even after disconnect
    await keep.unsubscribe()
    assert await nodes_of(registry, "idem-unsub") == []


async def test_handler_receives_event(make_broker: MakeBroker) -> None:
    b = await make_broker()
    got: list[Event] = []
    await b.subscribe("ev", got.append)
    await b.publish("ev", Message({"a": "b"}, b"payload"))
    await b.flush(timeout=5)
    assert len(got) == 1
    ev = got[0]
    assert isinstance(ev, Event)
    assert ev.topic == "ev"
    assert ev.message == Message({"a": "b"}, b"payload")
    assert ev.error is None


# --- heartbeat and TTL -------------------------------------------------------------------------


class PartitionableRegistry:
    """A Registry that forwards to a MemoryRegistry until ``cut`` is set; from then on the
    broker's registrations are lost on the way (as when the registry becomes unreachable)."""

    def __init__(self, inner: MemoryRegistry) -> None:
        self.inner = inner
        self.cut = False
        self.registrations = 0

    async def register(self, service: Service, ttl: float | None = None) -> None:
        if self.cut:
            return
        self.registrations += 1
        await self.inner.register(service, ttl=ttl)

    async def deregister(self, service: Service) -> None:
        if self.cut:
            return
        await self.inner.deregister(service)

    async def get_service(self, name: str) -> list[Service]:
        return await self.inner.get_service(name)

    async def list_services(self) -> list[Service]:
        return await self.inner.list_services()

    def watch(self) -> Any:
        return self.inner.watch()

    async def close(self) -> None:
        pass


async def test_a_node_announced_at_an_unusable_address_is_left_out(
    make_broker: MakeBroker, registry: MemoryRegistry
) -> None:
    """Some other service announced a node of our topic at an address no HTTP client can use:
    subscribing and publishing still work, the usable node gets the message, and the bad node
    is reported through on_error."""
    errors: list[BrokerError] = []
    await registry.register(Service("topic:mixed", BROADCAST_VERSION, (Node("bad", "bad address", {}),)))
    sub = await make_broker()
    got: list[bytes] = []
    await sub.subscribe("mixed", lambda ev: got.append(ev.message.body))
    pub = await make_broker(on_error=errors.append)
    await pub.subscribe("other", noop)  # a subscribe that looks its own topic up: no error
    await until(lambda: pub.route_count("mixed") == 1, 5, "the usable node's route")
    await pub.publish("mixed", b"x")
    await pub.flush(timeout=5)
    await until(lambda: got == [b"x"], 5, "the usable node to get the message")
    await until(lambda: bool(errors), 5, "the report of the unusable node")
    assert any('node "bad" has an unusable address "bad address"' in str(e) for e in errors), errors


async def test_heartbeat_keeps_node_then_it_expires(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    flaky = PartitionableRegistry(registry)
    b = await make_broker(registry=flaky, register_interval=0.1, register_ttl=0.3)
    pub = await make_broker()  # watches the real registry
    sub = await b.subscribe("hb", noop)
    await until(lambda: pub.route_count("hb") == 1, 5, "the publisher to route to the subscriber")

    # the node outlives its TTL several times over because the heartbeat re-registers it
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.2:
        ids = [n.id for _, n in await nodes_of(registry, "hb")]
        assert ids == [sub.id], f"node missing {time.monotonic() - t0:.2f}s after subscribing"
        await asyncio.sleep(0.05)
    assert flaky.registrations >= 1 + 8  # subscribe + ~11 heartbeats in 1.2 s
    assert pub.route_count("hb") == 1

    # heartbeats stop reaching the registry: the node expires after its TTL
    flaky.cut = True
    cut_at = time.monotonic()

    async def gone() -> bool:
        return await nodes_of(registry, "hb") == []

    async def wait_gone() -> None:
        while not await gone():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait_gone(), 2.0)
    elapsed = time.monotonic() - cut_at
    assert elapsed <= 0.8, elapsed  # last heartbeat <= interval (0.1) ago, + TTL (0.3), + slack
    # and the publisher, watching the registry, drops the route: messages go to its backlog
    await until(lambda: pub.route_count("hb") == 0, 2, "the publisher to drop the expired node")
    await pub.publish("hb", b"after-expiry")
    await pub.flush(timeout=2)
    st = pub.stats()
    assert st["backlogged"] == 1
    assert st["delivered"] == 0
    assert b.stats()["received"] == 0


async def test_ttl_expiry_emits_watch_event(registry: MemoryRegistry) -> None:
    """A node registered with a TTL and never refreshed disappears and watchers hear it."""
    w = registry.watch()
    node = Node("n1", "127.0.0.1:1", {})
    await registry.register(Service("topic:ttl", BROADCAST_VERSION, (node,)), ttl=0.2)
    first = await asyncio.wait_for(w.__anext__(), 2)
    assert isinstance(first, WatchEvent) and first.action == "create"
    t0 = time.monotonic()
    ev = await asyncio.wait_for(w.__anext__(), 2)
    assert ev.action == "delete"
    assert ev.service.name == "topic:ttl"
    assert [n.id for n in ev.service.nodes] == ["n1"]
    assert 0.1 <= time.monotonic() - t0 < 1.0
    assert await registry.get_service("topic:ttl") == []
    w.stop()
