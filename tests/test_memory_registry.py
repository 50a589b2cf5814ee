"""MemoryRegistry: go-micro's registry semantics in one process.

register merges nodes per (name, version) and refreshes their TTL; deregister removes the given
nodes and the service goes with its last node; watch yields "create" for what exists, then every
change; TTL expiry is a change too; stop() ends a watcher; a closed registry refuses everything.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from hyperbroker import BROADCAST_VERSION, MemoryRegistry, Node, RegistryError, Service, WatchEvent
from hyperbroker.registry.base import Registry, Watcher

pytestmark = pytest.mark.timeout(15)

A = Node("node-a", "127.0.0.1:1001", {"secure": "false"})
B = Node("node-b", "127.0.0.1:1002", {"secure": "false"})
C = Node("node-c", "127.0.0.1:1003", {"secure": "false", "batch": "1"})


def svc(name: str, version: str, *nodes: Node) -> Service:
    return Service(name, version, tuple(nodes))


def ids(s: Service) -> list[str]:
    return sorted(n.id for n in s.nodes)


def summary(services: list[Service]) -> list[tuple[str, str, list[str]]]:
    return sorted((s.name, s.version, ids(s)) for s in services)


@pytest.fixture
async def reg() -> AsyncIterator[MemoryRegistry]:
    r = MemoryRegistry()
    yield r
    await r.close()


async def next_event(w: Watcher, timeout: float = 2.0) -> WatchEvent:
    return await asyncio.wait_for(w.__anext__(), timeout)


async def no_event(w: Watcher, within: float = 0.1) -> None:
    try:
        ev = await asyncio.wait_for(w.__anext__(), within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected event {ev}")


def test_is_a_registry() -> None:
    assert isinstance(MemoryRegistry(), Registry)
    assert isinstance(MemoryRegistry().watch(), Watcher)


# --- register / get_service / list_services / deregister ------------------------------------


async def test_unknown_service_is_empty(reg: MemoryRegistry) -> None:
    assert await reg.get_service("topic:nothing") == []
    assert await reg.list_services() == []


async def test_register_and_get(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", BROADCAST_VERSION, A))
    assert await reg.get_service("topic:t") == [svc("topic:t", BROADCAST_VERSION, A)]
    # the node comes back whole, metadata included
    (s,) = await reg.get_service("topic:t")
    assert s.nodes[0].metadata == {"secure": "false"}
    assert await reg.get_service("topic:other") == []


async def test_nodes_merge_per_name_and_version(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", BROADCAST_VERSION, A))
    await reg.register(svc("topic:t", BROADCAST_VERSION, B))
    await reg.register(svc("topic:t", "workers", C))
    await reg.register(svc("topic:u", BROADCAST_VERSION, A))
    assert summary(await reg.get_service("topic:t")) == [
        ("topic:t", BROADCAST_VERSION, ["node-a", "node-b"]),
        ("topic:t", "workers", ["node-c"]),
    ]
    assert summary(await reg.list_services()) == [
        ("topic:t", BROADCAST_VERSION, ["node-a", "node-b"]),
        ("topic:t", "workers", ["node-c"]),
        ("topic:u", BROADCAST_VERSION, ["node-a"]),
    ]


async def test_reregistering_a_node_replaces_it(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", "v", A, B))
    moved = Node("node-a", "127.0.0.1:2001", {"secure": "true"})
    await reg.register(svc("topic:t", "v", moved))
    (s,) = await reg.get_service("topic:t")
    assert ids(s) == ["node-a", "node-b"]
    assert {n.id: n for n in s.nodes}["node-a"] == moved


async def test_deregister_removes_nodes_and_the_service_goes_with_its_last(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", "v", A, B, C))
    await reg.register(svc("topic:t", "w", A))
    await reg.deregister(svc("topic:t", "v", A))
    assert summary(await reg.get_service("topic:t")) == [
        ("topic:t", "v", ["node-b", "node-c"]),
        ("topic:t", "w", ["node-a"]),
    ]
    await reg.deregister(svc("topic:t", "v", B, C))
    assert summary(await reg.get_service("topic:t")) == [("topic:t", "w", ["node-a"])]
    await reg.deregister(svc("topic:t", "w", A))
    assert await reg.get_service("topic:t") == []
    assert await reg.list_services() == []


async def test_deregister_unknown_is_a_no_op(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", "v", A))
    await reg.deregister(svc("topic:nope", "v", A))
    await reg.deregister(svc("topic:t", "other", A))
    await reg.deregister(svc("topic:t", "v", B))
    assert summary(await reg.list_services()) == [("topic:t", "v", ["node-a"])]


async def test_empty_name_is_refused(reg: MemoryRegistry) -> None:
    with pytest.raises(RegistryError):
        await reg.register(svc("", "v", A))


# --- watch --------------------------------------------------------------------------------------


async def test_watch_yields_existing_services_first(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:a", "v", A))
    await reg.register(svc("topic:b", "v", B, C))
    w = reg.watch()
    try:
        first = [await next_event(w), await next_event(w)]
        assert sorted((e.action, e.service.name, tuple(ids(e.service))) for e in first) == [
            ("create", "topic:a", ("node-a",)),
            ("create", "topic:b", ("node-b", "node-c")),
        ]
        await no_event(w)
    finally:
        w.stop()


async def test_watch_sees_create_update_delete(reg: MemoryRegistry) -> None:
    w = reg.watch()
    try:
        await no_event(w)
        await reg.register(svc("topic:t", "v", A))
        ev = await next_event(w)
        assert (ev.action, ev.service.name, ev.service.version, ids(ev.service)) == (
            "create",
            "topic:t",
            "v",
            ["node-a"],
        )

        await reg.register(svc("topic:t", "v", B))
        ev = await next_event(w)
        assert (ev.action, ids(ev.service)) == ("update", ["node-a", "node-b"])

        await reg.deregister(svc("topic:t", "v", A))
        ev = await next_event(w)
        assert (ev.action, ids(ev.service)) == ("update", ["node-b"])

        await reg.deregister(svc("topic:t", "v", B))
        ev = await next_event(w)
        assert (ev.action, ev.service.name, ev.service.version) == ("delete", "topic:t", "v")
        assert ids(ev.service) == ["node-b"]  # the delete names what left

        await reg.register(svc("topic:t", "v", C))
        ev = await next_event(w)
        assert (ev.action, ids(ev.service)) == ("create", ["node-c"])
        await no_event(w)
    finally:
        w.stop()


async def test_every_watcher_sees_every_change(reg: MemoryRegistry) -> None:
    ws = [reg.watch() for _ in range(3)]
    try:
        await reg.register(svc("topic:t", "v", A))
        await reg.deregister(svc("topic:t", "v", A))
        for w in ws:
            assert [(await next_event(w)).action, (await next_event(w)).action] == ["create", "delete"]
    finally:
        for w in ws:
            w.stop()


async def test_watch_stop_ends_iteration(reg: MemoryRegistry) -> None:
    w = reg.watch()
    seen: list[WatchEvent] = []

    async def consume() -> None:
        async for ev in w:
            seen.append(ev)  # noqa: PERF401 (the test reads `seen` while the watch still runs)

    task = asyncio.create_task(consume())
    await reg.register(svc("topic:t", "v", A))
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert [e.action for e in seen] == ["create"]
    w.stop()
    await asyncio.wait_for(task, 2)  # the async for ends by itself
    await reg.register(svc("topic:t", "v", B))
    assert len(seen) == 1
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(w.__anext__(), 1)
    w.stop()  # idempotent


async def test_stopped_watcher_gets_no_more_events(reg: MemoryRegistry) -> None:
    w = reg.watch()
    w.stop()
    await reg.register(svc("topic:t", "v", A))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(w.__anext__(), 1)


# --- TTL ----------------------------------------------------------------------------------------


async def test_ttl_expiry(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", "v", A), ttl=0.15)
    await reg.register(svc("topic:t", "v", B))  # no TTL: stays
    assert ids((await reg.get_service("topic:t"))[0]) == ["node-a", "node-b"]
    await asyncio.sleep(0.25)
    assert summary(await reg.get_service("topic:t")) == [("topic:t", "v", ["node-b"])]
    await reg.register(svc("topic:x", "v", C), ttl=0.1)
    await asyncio.sleep(0.2)
    assert summary(await reg.list_services()) == [("topic:t", "v", ["node-b"])]


async def test_reregistering_refreshes_the_ttl(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", "v", A), ttl=0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        await reg.register(svc("topic:t", "v", A), ttl=0.3)  # the heartbeat
    assert summary(await reg.get_service("topic:t")) == [("topic:t", "v", ["node-a"])]
    await asyncio.sleep(0.4)
    assert await reg.get_service("topic:t") == []


async def test_a_shorter_ttl_on_reregistering_expires_at_the_new_time(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:t", "v", A), ttl=30)
    await reg.register(svc("topic:t", "v", A), ttl=0.1)  # shorter than the first
    await reg.register(svc("topic:t", "v", B), ttl=0.1)
    await reg.register(svc("topic:t", "v", B), ttl=30)  # longer than the first
    await asyncio.sleep(0.2)
    assert summary(await reg.get_service("topic:t")) == [("topic:t", "v", ["node-b"])]
    await reg.deregister(svc("topic:t", "v", B))
    assert await reg.get_service("topic:t") == [] and await reg.list_services() == []
    await reg.register(svc("topic:t", "other", A))  # a name's versions are found again
    assert summary(await reg.get_service("topic:t")) == [("topic:t", "other", ["node-a"])]


async def test_ttl_expiry_emits_delete_to_a_waiting_watcher(reg: MemoryRegistry) -> None:
    w = reg.watch()
    try:
        await reg.register(svc("topic:t", "v", A, B), ttl=0.2)
        assert (await next_event(w)).action == "create"
        await reg.register(svc("topic:t", "v", B), ttl=10)  # B refreshed for longer
        await no_event(w, 0.05)  # same nodes: nothing changed
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # nobody calls the registry: the waiting watcher itself notices the expiry
        ev = await next_event(w, 2)
        assert (ev.action, ids(ev.service)) == ("update", ["node-b"])
        assert 0.05 <= loop.time() - t0 < 1.0
        await reg.register(svc("topic:u", "v", C), ttl=0.1)
        assert (await next_event(w)).action == "create"
        ev = await next_event(w, 2)
        assert (ev.action, ev.service.name, ids(ev.service)) == ("delete", "topic:u", ["node-c"])
        assert await reg.get_service("topic:u") == []
    finally:
        w.stop()


async def test_watch_does_not_announce_expired_services(reg: MemoryRegistry) -> None:
    await reg.register(svc("topic:old", "v", A), ttl=0.05)
    await reg.register(svc("topic:live", "v", B))
    await asyncio.sleep(0.1)
    w = reg.watch()
    try:
        ev = await next_event(w)
        assert (ev.action, ev.service.name) == ("create", "topic:live")
        await no_event(w)
    finally:
        w.stop()


# --- close --------------------------------------------------------------------------------------


async def test_close_stops_watchers() -> None:
    reg = MemoryRegistry()
    w = reg.watch()
    task = asyncio.create_task(asyncio.wait_for(w.__anext__(), 5))
    await asyncio.sleep(0.01)
    await reg.close()
    with pytest.raises(StopAsyncIteration):
        await task


async def test_closed_registry_raises_registry_error() -> None:
    reg = MemoryRegistry()
    await reg.register(svc("topic:t", "v", A))
    await reg.close()
    with pytest.raises(RegistryError, match="closed"):
        await reg.register(svc("topic:t", "v", B))
    with pytest.raises(RegistryError, match="closed"):
        await reg.deregister(svc("topic:t", "v", A))
    with pytest.raises(RegistryError, match="closed"):
        await reg.get_service("topic:t")
    with pytest.raises(RegistryError, match="closed"):
        await reg.list_services()
    with pytest.raises(RegistryError, match="closed"):
        reg.watch()
    await reg.close()  # idempotent
