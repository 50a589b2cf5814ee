"""EtcdRegistry against a real etcd (tests/etcd_util.py starts it), registry URLs, and the CLI.

What etcd holds is read back through etcd's JSON gateway (POST /v3/kv/range, /v3/lease/...),
not through the registry under test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import until
from etcd_util import EtcdServer, etcd_binary, free_port, gw_lease_ttl, gw_leases, gw_post, gw_range, start_cluster

from hyperbroker import (
    BROADCAST_VERSION,
    Broker,
    BrokerError,
    EtcdRegistry,
    Event,
    MdnsRegistry,
    MemoryRegistry,
    Node,
    RegistryError,
    Service,
    WatchEvent,
)
from hyperbroker.registry import from_url
from hyperbroker.registry.etcd import decode_service, encode_service
from hyperbroker.registry.url import parse_url

pytestmark = pytest.mark.timeout(90)

PREFIX = b"/micro/registry/"
LOOP = "127.0.0.1:0"


def svc(name: str, node_id: str, version: str = BROADCAST_VERSION, address: str = "127.0.0.1:1234", **meta: str) -> Service:
    return Service(name, version, (Node(node_id, address, meta or {"secure": "false"}),))


async def next_event(w: Any, timeout: float = 5.0) -> WatchEvent:
    ev: WatchEvent = await asyncio.wait_for(w.__anext__(), timeout)
    return ev


async def event_where(w: Any, pred: Any, timeout: float = 10.0) -> WatchEvent:
    """The first event of ``w`` for which ``pred(ev)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("no matching watch event in time")
        ev = await next_event(w, left)
        if pred(ev):
            return ev


def keys(endpoint: str) -> dict[bytes, dict[str, Any]]:
    return {kv["key"]: kv for kv in gw_range(endpoint, PREFIX)}


async def akeys(endpoint: str) -> dict[bytes, dict[str, Any]]:
    return await asyncio.to_thread(keys, endpoint)


async def wait_keys(endpoint: str, cond: Any, timeout: float = 10.0, what: str = "etcd keys") -> dict[bytes, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        k = await akeys(endpoint)
        if cond(k):
            return k
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}: {sorted(k)}")
        await asyncio.sleep(0.05)


# --- without etcd: the value, the key, URLs -----------------------------------------------------


def test_value_is_go_micro_json() -> None:
    s = svc("topic:a", "n1", "q", "10.0.0.1:80", secure="true", broker="http")
    raw = encode_service(s, s.nodes[0])
    assert list(json.loads(raw)) == ["name", "version", "metadata", "endpoints", "nodes"]
    assert json.loads(raw) == {
        "name": "topic:a",
        "version": "q",
        "metadata": {},
        "endpoints": [],
        "nodes": [{"id": "n1", "address": "10.0.0.1:80", "metadata": {"secure": "true", "broker": "http"}}],
    }
    assert decode_service(raw) == (("topic:a", "q"), [s.nodes[0]])
    # as a Go service writes it: nil maps and slices are null
    go = b'{"name":"x","version":"1","metadata":null,"endpoints":null,"nodes":[{"id":"i","address":"h:1","metadata":null}]}'
    assert decode_service(go) == (("x", "1"), [Node("i", "h:1", {})])
    assert decode_service(b"not json") is None
    assert decode_service(b'{"version":"1"}') is None


def test_key_layout_replaces_slashes() -> None:
    r = EtcdRegistry(["127.0.0.1:1"])
    assert r.key("topic:a/b", "id/1") == b"/micro/registry/topic:a-b/id-1"
    assert EtcdRegistry(["h"], prefix="/x").key("s", "n") == b"/x/s/n"
    assert EtcdRegistry("h1,h2:2380,[::1]").endpoints == ["h1:2379", "h2:2380", "[::1]:2379"]


@pytest.mark.parametrize(
    "url",
    [
        "bogus://x",
        "etcd",
        "etcd://h:99999",
        "etcd://h1,,h2",
        "etcd://h?prefix=nope",
        "etcd://h?timeout=-1",
        "etcd://h?colour=red",
        "etcd://user@h",
        "etcd://h/path",
        "etcd://h?cert=c.pem&key=k.pem",
        "memory://host",
        "mdns://host",
        "mdns://?interfaces=",
        "no-scheme",
        "",
    ],
)
def test_bad_urls_raise_broker_error(url: str) -> None:
    if url == "etcd":  # the bare word is fine: 127.0.0.1:2379
        assert parse_url(url).kwargs["endpoints"] == ["127.0.0.1:2379"]
        return
    with pytest.raises(BrokerError, match="registry URL"):
        parse_url(url)
    with pytest.raises(BrokerError, match="registry URL"):
        Broker(registry=url)


def test_url_forms() -> None:
    spec = parse_url("etcd://u%40x:p%3Aw@h1:2379,h2,[::1]:2380?prefix=/p/&timeout=2.5")
    assert spec.kind == "etcd"
    assert spec.kwargs == {
        "username": "u@x",
        "password": "p:w",
        "endpoints": ["h1:2379", "h2", "[::1]:2380"],
        "prefix": "/p/",
        "timeout": 2.5,
    }
    assert parse_url("mdns").kind == "mdns"
    assert parse_url("mdns://?interfaces=127.0.0.1,::1").kwargs == {"interfaces": ["127.0.0.1", "::1"]}
    assert isinstance(from_url("memory://"), MemoryRegistry)
    assert isinstance(from_url("memory"), MemoryRegistry)
    assert isinstance(from_url("mdns://"), MdnsRegistry)
    r = from_url("etcd://127.0.0.1:1,127.0.0.1:2?timeout=1&prefix=/q")
    assert isinstance(r, EtcdRegistry)
    assert r.endpoints == ["127.0.0.1:1", "127.0.0.1:2"] and r.prefix == "/q/"


async def test_memory_url_broker_owns_and_closes_it() -> None:
    b = Broker(address=LOOP, registry="memory://", disconnect_timeout=0)
    async with b:
        reg = b.registry
        assert isinstance(reg, MemoryRegistry)
        got: list[bytes] = []
        await b.subscribe("t", lambda ev: got.append(ev.message.body))
        await b.publish("t", b"x")
        await b.flush()
        await until(lambda: got == [b"x"])
    with pytest.raises(RegistryError, match="closed"):
        await reg.list_services()


async def test_env_var_names_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERBROKER_REGISTRY", "memory://")
    b = Broker(address=LOOP)
    assert isinstance(b.registry, MemoryRegistry)
    monkeypatch.setenv("HYPERBROKER_REGISTRY", "etcd://127.0.0.1:2379?timeout=1")
    assert isinstance(Broker(address=LOOP).registry, EtcdRegistry)
    monkeypatch.setenv("HYPERBROKER_REGISTRY", "nope://")
    with pytest.raises(BrokerError, match="HYPERBROKER_REGISTRY"):
        Broker(address=LOOP).registry  # noqa: B018
    # an explicit option wins over the environment
    assert isinstance(Broker(address=LOOP, registry="memory://").registry, MemoryRegistry)


# --- against a real etcd ----------------------------------------------------------------------


async def test_register_puts_go_micro_layout(etcd_server: EtcdServer) -> None:
    reg = EtcdRegistry([etcd_server.endpoint])
    try:
        s = svc("topic:orders/eu", "hb-1", "workers", "127.0.0.1:4000", secure="false", broker="http")
        await reg.register(s, ttl=30)
        k = await akeys(etcd_server.endpoint)
        assert list(k) == [b"/micro/registry/topic:orders-eu/hb-1"]
        kv = k[b"/micro/registry/topic:orders-eu/hb-1"]
        assert json.loads(kv["value"]) == {
            "name": "topic:orders/eu",
            "version": "workers",
            "metadata": {},
            "endpoints": [],
            "nodes": [
                {"id": "hb-1", "address": "127.0.0.1:4000", "metadata": {"secure": "false", "broker": "http"}}
            ],
        }
        assert kv["lease"] != 0
        ttl = await asyncio.to_thread(gw_lease_ttl, etcd_server.endpoint, kv["lease"])
        assert int(ttl["grantedTTL"]) == 30
        # read back without a watch (a direct range read) and with one
        assert await reg.get_service("topic:orders/eu") == [s]
        assert await reg.list_services() == [s]
        # deregister deletes the key at once
        await reg.deregister(s)
        assert await akeys(etcd_server.endpoint) == {}
        assert await reg.get_service("topic:orders/eu") == []
    finally:
        await reg.close()


async def test_watch_initial_read_then_stream(etcd_server: EtcdServer) -> None:
    a = EtcdRegistry([etcd_server.endpoint])
    b = EtcdRegistry([etcd_server.endpoint])
    try:
        s1 = svc("topic:t", "n1")
        await a.register(s1, ttl=30)
        w = b.watch()
        ev = await next_event(w)
        assert ev == WatchEvent("create", s1)  # from the initial range read
        s2 = svc("topic:t", "n2", address="127.0.0.1:2")
        await a.register(s2, ttl=30)
        ev = await next_event(w)
        assert ev.action == "update" and {n.id for n in ev.service.nodes} == {"n1", "n2"}
        assert {n.id for s in await b.get_service("topic:t") for n in s.nodes} == {"n1", "n2"}
        await a.deregister(s1)
        ev = await next_event(w)
        assert ev.action == "update" and [n.id for n in ev.service.nodes] == ["n2"]
        await a.deregister(s2)
        ev = await next_event(w)
        # the delete carries the node that went (etcd's previous value)
        assert ev == WatchEvent("delete", s2)
        assert await b.get_service("topic:t") == []
    finally:
        await a.close()
        await b.close()


async def test_watch_sees_nodes_written_by_a_go_service(etcd_server: EtcdServer) -> None:
    """A node put by someone else (as go-micro's etcd registry writes it) is discovered."""
    import base64

    reg = EtcdRegistry([etcd_server.endpoint])
    try:
        w = reg.watch()
        await reg.list_services()  # the initial read is done
        key = b"/micro/registry/topic:go/go-node-1"
        value = (
            b'{"name":"topic:go","version":"ff.http.broadcast","metadata":null,"endpoints":null,'
            b'"nodes":[{"id":"go-node-1","address":"127.0.0.1:9","metadata":{"broker":"http","secure":"false"}}]}'
        )
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/put", {"key": b64(key), "value": b64(value)})
        ev = await next_event(w)
        node = Node("go-node-1", "127.0.0.1:9", {"broker": "http", "secure": "false"})
        assert ev == WatchEvent("create", Service("topic:go", BROADCAST_VERSION, (node,)))
        # a value that is not a go-micro service is ignored
        await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/put", {"key": b64(PREFIX + b"junk/x"), "value": b64(b"{")})
        await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/deleterange", {"key": b64(key)})
        ev = await next_event(w)
        assert ev == WatchEvent("delete", Service("topic:go", BROADCAST_VERSION, (node,)))
        assert await reg.list_services() == []
    finally:
        await reg.close()


async def test_one_lease_shared_by_all_registrations(etcd_server: EtcdServer) -> None:
    reg = EtcdRegistry([etcd_server.endpoint])
    try:
        services = [svc(f"topic:t{i}", f"n{i}") for i in range(3)]
        services.append(svc("topic:t0", "n9", version="queue"))
        for s in services:
            await reg.register(s, ttl=20)
        k = await akeys(etcd_server.endpoint)
        assert len(k) == 4
        leases = {kv["lease"] for kv in k.values()}
        assert len(leases) == 1 and 0 not in leases
        (lease,) = leases
        assert await asyncio.to_thread(gw_leases, etcd_server.endpoint) == [lease]
        info = await asyncio.to_thread(gw_lease_ttl, etcd_server.endpoint, lease)
        assert sorted(info["keys"]) == sorted(k)
        # the broker's heartbeat (an unchanged register) writes nothing
        revs = {kv["key"]: kv for kv in await asyncio.to_thread(gw_range, etcd_server.endpoint, PREFIX)}
        before = await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/range", {"key": "AA==", "count_only": True})
        for s in services:
            await reg.register(s, ttl=20)
        after = await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/range", {"key": "AA==", "count_only": True})
        assert before["header"]["revision"] == after["header"]["revision"]
        assert revs == {kv["key"]: kv for kv in await asyncio.to_thread(gw_range, etcd_server.endpoint, PREFIX)}
        # close revokes the lease: every key goes at once
        await reg.close()
        assert await akeys(etcd_server.endpoint) == {}
        assert await asyncio.to_thread(gw_leases, etcd_server.endpoint) == []
    finally:
        await reg.close()


async def test_keepalive_holds_keys_beyond_the_ttl(etcd_server: EtcdServer) -> None:
    reg = EtcdRegistry([etcd_server.endpoint])
    try:
        await reg.register(svc("topic:k", "n1"), ttl=2)
        await asyncio.sleep(5)
        assert list(await akeys(etcd_server.endpoint)) == [b"/micro/registry/topic:k/n1"]
    finally:
        await reg.close()


async def test_lease_lost_is_granted_again_and_keys_put_back(etcd_server: EtcdServer) -> None:
    """As after a partition longer than the TTL: the lease is gone, the keys come back."""
    reg = EtcdRegistry([etcd_server.endpoint])
    reg.watch()  # with a watch running, a key deleted behind its back is noticed
    try:
        await reg.register(svc("topic:p", "n1"), ttl=3)
        await reg.register(svc("topic:p", "n2"), ttl=3)
        (lease,) = {kv["lease"] for kv in (await akeys(etcd_server.endpoint)).values()}
        await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/lease/revoke", {"ID": str(lease)})
        k = await wait_keys(etcd_server.endpoint, lambda k: len(k) == 2, what="both keys back")
        (new_lease,) = {kv["lease"] for kv in k.values()}
        assert new_lease not in (0, lease)
        # and a key deleted behind its back is put back too
        import base64

        key = b"/micro/registry/topic:p/n1"
        await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/deleterange", {"key": base64.b64encode(key).decode()})
        await wait_keys(etcd_server.endpoint, lambda k: key in k, what="n1 back")
    finally:
        await reg.close()


async def test_ttl_change_moves_keys_to_a_new_lease(etcd_server: EtcdServer) -> None:
    reg = EtcdRegistry([etcd_server.endpoint])
    try:
        await reg.register(svc("topic:a", "n1"), ttl=10)
        await reg.register(svc("topic:a", "n2"), ttl=20)
        k = await akeys(etcd_server.endpoint)
        (lease,) = {kv["lease"] for kv in k.values()}
        assert len(k) == 2
        info = await asyncio.to_thread(gw_lease_ttl, etcd_server.endpoint, lease)
        assert int(info["grantedTTL"]) == 20
        assert await asyncio.to_thread(gw_leases, etcd_server.endpoint) == [lease]
    finally:
        await reg.close()


async def test_never_reached_raises_registry_error() -> None:
    dead = f"127.0.0.1:{free_port()}"
    reg = EtcdRegistry([dead], timeout=0.5)
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match="did not answer"):
            await reg.register(svc("topic:x", "n1"), ttl=5)
        assert time.monotonic() - t0 < 3
        with pytest.raises(RegistryError, match="did not answer"):
            await reg.get_service("topic:x")
        reg.watch()
        with pytest.raises(RegistryError, match="did not answer"):
            await reg.list_services()
    finally:
        await reg.close()
    # through a broker: subscribe fails clearly and leaves no subscription behind
    async with Broker(address=LOOP, registry=f"etcd://{dead}?timeout=0.5", disconnect_timeout=0) as b:
        with pytest.raises(RegistryError):
            await b.subscribe("x", lambda ev: None)
        assert b.route_count("x") == 0


async def test_fails_over_to_a_live_endpoint(etcd_server: EtcdServer) -> None:
    dead = f"127.0.0.1:{free_port()}"
    reg = EtcdRegistry([dead, etcd_server.endpoint], timeout=2)
    try:
        await reg.register(svc("topic:f", "n1"), ttl=10)
        assert list(await akeys(etcd_server.endpoint)) == [b"/micro/registry/topic:f/n1"]
    finally:
        await reg.close()


async def test_closed_registry_raises(etcd_server: EtcdServer) -> None:
    reg = EtcdRegistry([etcd_server.endpoint])
    await reg.close()
    with pytest.raises(RegistryError, match="closed"):
        await reg.register(svc("topic:c", "n"), ttl=5)
    with pytest.raises(RegistryError, match="closed"):
        reg.watch()
