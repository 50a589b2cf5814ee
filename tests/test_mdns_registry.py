"""MdnsRegistry over real mDNS on the loopback interface.

Every zeroconf here binds 127.0.0.1 only. CI runs the suite inside a private network namespace:

    unshare -rn sh -c 'ip link set lo up && python -m pytest tests/test_mdns_registry.py -q'

Each registry has its own AsyncZeroconf, as separate processes would; a registration is
announced within ~10 ms (no probing), the waits below are generous but bounded.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from hyperbroker.errors import RegistryError
from hyperbroker.registry.base import (
    BROADCAST_VERSION,
    Node,
    Registry,
    Service,
    Watcher,
    WatchEvent,
)
from hyperbroker.registry.mdns import MdnsRegistry

LOOPBACK = ["127.0.0.1"]
SEEN_WITHIN = 5.0  # a registration (announce + resolve) reaches a peer within this
GONE_WITHIN = 2.0  # a goodbye reaches a peer within this

Make = Callable[[], MdnsRegistry]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    created: list[MdnsRegistry] = []

    def _make() -> MdnsRegistry:
        reg = MdnsRegistry(interfaces=LOOPBACK)
        created.append(reg)
        return reg

    yield _make
    for reg in created:
        await asyncio.wait_for(reg.close(), 5)


def uid(prefix: str = "n") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def next_event(watcher: Watcher, pred: Callable[[WatchEvent], bool], timeout: float) -> WatchEvent:
    """The first event matching pred, within timeout seconds."""

    async def scan() -> WatchEvent:
        async for ev in watcher:
            if pred(ev):
                return ev
        raise AssertionError("watcher stopped")

    return await asyncio.wait_for(scan(), timeout)


async def wait_for_nodes(
    reg: MdnsRegistry, name: str, version: str, ids: set[str], timeout: float = SEEN_WITHIN
) -> Service:
    """Poll get_service until (name, version) has exactly the given node ids."""

    async def poll() -> Service:
        while True:
            for svc in await reg.get_service(name):
                if svc.version == version and {n.id for n in svc.nodes} == ids:
                    return svc
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


def is_(action: str, name: str, ids: set[str] | None = None) -> Callable[[WatchEvent], bool]:
    def pred(ev: WatchEvent) -> bool:
        if ev.action != action or ev.service.name != name:
            return False
        return ids is None or {n.id for n in ev.service.nodes} == ids

    return pred


def test_is_a_registry() -> None:
    assert isinstance(MdnsRegistry(interfaces=LOOPBACK), Registry)


async def test_register_is_seen_by_another_registry(make: Make) -> None:
    a, b = make(), make()
    watcher = b.watch()
    name, nid = f"topic:{uid('t')}", uid()
    svc = Service(name, BROADCAST_VERSION, (Node(nid, "127.0.0.1:8001"),))
    await a.register(svc, ttl=60)

    # our own registration is answered from the registered set, no network round trip
    own = await a.get_service(name)
    assert own == [Service(name, BROADCAST_VERSION, (Node(nid, "127.0.0.1:8001", {}),))]

    ev = await next_event(watcher, is_("create", name), SEEN_WITHIN)
    assert ev.service.version == BROADCAST_VERSION
    assert ev.service.nodes == (Node(nid, "127.0.0.1:8001", {}),)
    got = await wait_for_nodes(b, name, BROADCAST_VERSION, {nid})
    assert got.nodes[0].address == "127.0.0.1:8001"
    assert any(s.name == name for s in await b.list_services())
    watcher.stop()


async def test_metadata_round_trip_and_wildcard_host(make: Make) -> None:
    a, b = make(), make()
    watcher = b.watch()
    name, nid = f"topic:{uid('t')}", uid()
    meta = {"secure": "true", "batch": "1", "empty": ""}
    # 0.0.0.0 = every address of the interfaces zeroconf uses: 127.0.0.1 here
    await a.register(Service(name, "workers", (Node(nid, "0.0.0.0:9443", meta),)))
    ev = await next_event(watcher, is_("create", name), SEEN_WITHIN)
    (node,) = ev.service.nodes
    assert node == Node(nid, "127.0.0.1:9443", meta)
    assert dict(node.metadata) == meta
    # the owner's view equals the network's view
    assert (await a.get_service(name))[0].nodes == (node,)
    watcher.stop()


async def test_deregister_is_seen_as_delete(make: Make) -> None:
    a, b = make(), make()
    watcher = b.watch()
    name, nid = f"topic:{uid('t')}", uid()
    node = Node(nid, "127.0.0.1:8002", {"secure": "false"})
    await a.register(Service(name, BROADCAST_VERSION, (node,)))
    await next_event(watcher, is_("create", name), SEEN_WITHIN)

    t0 = time.monotonic()
    await a.deregister(Service(name, BROADCAST_VERSION, (node,)))
    assert await a.get_service(name) == []
    ev = await next_event(watcher, is_("delete", name), GONE_WITHIN)
    assert time.monotonic() - t0 < GONE_WITHIN
    assert ev.service == Service(name, BROADCAST_VERSION, (node,))
    assert await b.get_service(name) == []
    watcher.stop()


async def test_two_nodes_of_one_queue_are_both_listed(make: Make) -> None:
    a, b = make(), make()
    name, n1, n2 = f"topic:{uid('t')}", uid(), uid()
    svc = Service(name, "q1", (Node(n1, "127.0.0.1:8101"), Node(n2, "127.0.0.1:8102")))
    await a.register(svc)
    got = await wait_for_nodes(b, name, "q1", {n1, n2})
    assert {n.address for n in got.nodes} == {"127.0.0.1:8101", "127.0.0.1:8102"}
    # removing one leaves the other ("update", not "delete")
    watcher = b.watch()
    await next_event(watcher, is_("create", name, {n1, n2}), 1)
    await a.deregister(Service(name, "q1", (Node(n1, "127.0.0.1:8101"),)))
    ev = await next_event(watcher, is_("update", name, {n2}), GONE_WITHIN)
    assert ev.service.nodes == (Node(n2, "127.0.0.1:8102", {}),)
    watcher.stop()


async def test_changed_node_is_an_update_unchanged_is_nothing(make: Make) -> None:
    a, b = make(), make()
    watcher = b.watch()
    name, nid = f"topic:{uid('t')}", uid()
    await a.register(Service(name, "q", (Node(nid, "127.0.0.1:8201", {"secure": "false"}),)))
    await next_event(watcher, is_("create", name), SEEN_WITHIN)

    t0 = time.monotonic()  # the heartbeat: same node again costs nothing
    await a.register(Service(name, "q", (Node(nid, "127.0.0.1:8201", {"secure": "false"}),)))
    assert time.monotonic() - t0 < 0.2

    await a.register(Service(name, "q", (Node(nid, "127.0.0.1:8201", {"secure": "true"}),)))
    ev = await next_event(watcher, is_("update", name), SEEN_WITHIN)
    assert ev.service.nodes[0].metadata == {"secure": "true"}
    watcher.stop()


async def test_other_services_and_advertise_override(make: Make) -> None:
    a, b = make(), make()
    watcher = b.watch()
    name, nid = f"go.micro.srv.{uid('s')}", uid()  # not a topic: service
    node = Node(nid, "0.0.0.0:7000", {"advertise": "127.0.0.9"})
    await a.register(Service(name, "1.0.0", (node,)))
    ev = await next_event(watcher, is_("create", name), SEEN_WITHIN)
    assert ev.service.version == "1.0.0"
    assert ev.service.nodes == (Node(nid, "127.0.0.9:7000", {"advertise": "127.0.0.9"}),)
    watcher.stop()


async def test_own_watch_sees_own_registration_at_once(make: Make) -> None:
    a = make()
    watcher = a.watch()
    name, nid = f"topic:{uid('t')}", uid()
    await a.register(Service(name, BROADCAST_VERSION, (Node(nid, "127.0.0.1:8301"),)))
    ev = await next_event(watcher, is_("create", name), 0.05)
    assert ev.service.nodes[0].id == nid
    # a second watcher starts with a "create" for what is known
    late = a.watch()
    ev = await next_event(late, is_("create", name), 0.05)
    assert ev.service.nodes[0].id == nid
    await a.deregister(Service(name, BROADCAST_VERSION, (Node(nid, ""),)))
    ev = await next_event(watcher, is_("delete", name), 0.05)
    # the echo of our own announcements must not bring the node back
    await asyncio.sleep(1.0)
    assert await a.get_service(name) == []
    watcher.stop()
    late.stop()


async def test_long_txt_entry_is_refused(make: Make) -> None:
    a = make()
    node = Node(uid(), "127.0.0.1:8401", {"blob": "x" * 251})  # "blob=" + 251 = 256 bytes
    with pytest.raises(RegistryError, match=r"'blob'.*255"):
        await a.register(Service(f"topic:{uid('t')}", BROADCAST_VERSION, (node,)))
    ok = Node(uid(), "127.0.0.1:8401", {"blob": "x" * 250})  # exactly 255 bytes is fine
    svc = Service(f"topic:{uid('t')}", BROADCAST_VERSION, (ok,))
    await a.register(svc)
    assert (await a.get_service(svc.name))[0].nodes[0].metadata["blob"] == "x" * 250


async def test_long_node_id_is_refused(make: Make) -> None:
    a = make()
    with pytest.raises(RegistryError, match="63"):
        await a.register(Service("topic:t", BROADCAST_VERSION, (Node("n" * 64, "127.0.0.1:1"),)))
    with pytest.raises(RegistryError):
        await a.register(Service("topic:t", BROADCAST_VERSION, (Node("a..b", "127.0.0.1:1"),)))
    with pytest.raises(RegistryError, match="port"):
        await a.register(Service("topic:t", BROADCAST_VERSION, (Node("ok", "127.0.0.1"),)))


async def test_close_says_goodbye(make: Make) -> None:
    a, b = make(), make()
    watcher = b.watch()
    name, nid = f"topic:{uid('t')}", uid()
    await a.register(Service(name, BROADCAST_VERSION, (Node(nid, "127.0.0.1:8501"),)))
    await next_event(watcher, is_("create", name), SEEN_WITHIN)
    t0 = time.monotonic()
    await a.close()
    ev = await next_event(watcher, is_("delete", name), GONE_WITHIN)
    assert time.monotonic() - t0 < GONE_WITHIN
    assert [n.id for n in ev.service.nodes] == [nid]
    with pytest.raises(RegistryError, match="closed"):
        await a.get_service(name)
    watcher.stop()


async def test_close_stops_watchers(make: Make) -> None:
    a = make()
    watcher = a.watch()
    await a.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(watcher.__anext__(), 1)


async def test_port_5353_taken_gives_an_actionable_error() -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            blocker.bind(("0.0.0.0", 5353))  # no SO_REUSEADDR: exclusive, like a strict avahi
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            pytest.skip("port 5353 is already held by someone else")
        reg = MdnsRegistry(interfaces=LOOPBACK)
        with pytest.raises(RegistryError, match="5353") as info:
            await reg.list_services()
        msg = str(info.value)
        assert "interfaces=" in msg and "MemoryRegistry" in msg and "avahi" in msg
        await reg.close()
    finally:
        blocker.close()


async def test_subscribe_with_a_topic_too_long_for_txt_is_refused_clearly() -> None:
    """The topic travels in a TXT entry (at most 255 bytes): a longer one is refused at
    subscribe with a BrokerError, never truncated, and leaves nothing behind."""
    from hyperbroker import Broker, BrokerError

    registry = MdnsRegistry(interfaces=["127.0.0.1"])
    try:
        async with Broker(address="127.0.0.1:0", registry=registry) as b:
            with pytest.raises(BrokerError, match="255"):
                await b.subscribe("t" * 300, lambda ev: None)
            assert await registry.list_services() == []
            ok = await b.subscribe("t" * 100, lambda ev: None)
            assert ok.topic == "t" * 100
    finally:
        await registry.close()
