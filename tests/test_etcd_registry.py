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
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from brokers import until
from etcd_util import (
    EtcdServer,
    etcd_binary,
    free_port,
    gw_lease_ttl,
    gw_leases,
    gw_post,
    gw_range,
    start_cluster,
)

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

T = TypeVar("T")

PREFIX = b"/micro/registry/"
LOOP = "127.0.0.1:0"


def svc(
    name: str, node_id: str, version: str = BROADCAST_VERSION, address: str = "127.0.0.1:1234", **meta: str
) -> Service:
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


async def wait_keys(
    endpoint: str, cond: Any, timeout: float = 10.0, what: str = "etcd keys"
) -> dict[bytes, dict[str, Any]]:
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
            "nodes": [{"id": "hb-1", "address": "127.0.0.1:4000", "metadata": {"secure": "false", "broker": "http"}}],
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

        def b64(b):
            return base64.b64encode(b).decode()

        await asyncio.to_thread(gw_post, etcd_server.endpoint, "/v3/kv/put", {"key": b64(key), "value": b64(value)})
        ev = await next_event(w)
        node = Node("go-node-1", "127.0.0.1:9", {"broker": "http", "secure": "false"})
        assert ev == WatchEvent("create", Service("topic:go", BROADCAST_VERSION, (node,)))
        # a value that is not a go-micro service is ignored
        await asyncio.to_thread(
            gw_post, etcd_server.endpoint, "/v3/kv/put", {"key": b64(PREFIX + b"junk/x"), "value": b64(b"{")}
        )
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
        before = await asyncio.to_thread(
            gw_post, etcd_server.endpoint, "/v3/kv/range", {"key": "AA==", "count_only": True}
        )
        for s in services:
            await reg.register(s, ttl=20)
        after = await asyncio.to_thread(
            gw_post, etcd_server.endpoint, "/v3/kv/range", {"key": "AA==", "count_only": True}
        )
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


async def bounded(aw: Awaitable[T], seconds: float, what: str) -> T:
    """Await ``aw`` for at most ``seconds``; fail the test naming ``what`` otherwise."""
    try:
        return await asyncio.wait_for(aw, seconds)
    except TimeoutError:
        pytest.fail(f"timed out after {seconds}s: {what}")


async def gw(endpoint: str, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
    return await bounded(asyncio.to_thread(gw_post, endpoint, path, body), 10, what)


async def test_lease_lost_is_granted_again_and_keys_put_back(etcd_server: EtcdServer) -> None:
    """As after a partition longer than the TTL: the lease is gone, the keys come back.

    Every wait is bounded and names what it waited for (this test once hung in a loaded full run
    with no clue which await; the one unbounded await was close() awaiting its session task)."""
    import base64

    reg = EtcdRegistry([etcd_server.endpoint])
    reg.watch()  # with a watch running, a key deleted behind its back is noticed
    try:
        await bounded(reg.register(svc("topic:p", "n1"), ttl=3), 10, "register n1")
        await bounded(reg.register(svc("topic:p", "n2"), ttl=3), 10, "register n2")
        k = await wait_keys(etcd_server.endpoint, lambda k: len(k) == 2, what="both keys stored")
        (lease,) = {kv["lease"] for kv in k.values()}
        await gw(etcd_server.endpoint, "/v3/lease/revoke", {"ID": str(lease)}, "revoking the lease")
        k = await wait_keys(
            etcd_server.endpoint,
            lambda k: len(k) == 2 and all(kv["lease"] not in (0, lease) for kv in k.values()),
            what="both keys back under a new lease",
        )
        assert len({kv["lease"] for kv in k.values()}) == 1
        # and a key deleted behind its back is put back too
        key = b"/micro/registry/topic:p/n1"
        await gw(etcd_server.endpoint, "/v3/kv/deleterange", {"key": base64.b64encode(key).decode()}, "deleting n1")
        await wait_keys(etcd_server.endpoint, lambda k: key in k, what="n1 back")
    finally:
        await bounded(reg.close(), 15, "EtcdRegistry.close()")


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


# --- brokers sharing only etcd ----------------------------------------------------------------


class Proc:
    """A child process whose stdout lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    async def wait_for(self, text: str, timeout: float = 15.0) -> None:
        await until(lambda: self.has(text) or self.proc.returncode is not None, timeout, f"{text!r} from the child")
        assert self.has(text), "\n".join(self.lines)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await asyncio.wait_for(self.proc.wait(), 10)
        await asyncio.wait_for(self._reader, 10)


async def test_brokers_in_two_processes_share_only_etcd(etcd_server: EtcdServer) -> None:
    """Broadcast and queue group between a CLI subscriber process and an in-process broker."""
    url = f"etcd://{etcd_server.endpoint}"
    news = await Proc.start("-m", "hyperbroker", "sub", "news", "--registry", url, "--address", LOOP)
    jobs = await Proc.start("-m", "hyperbroker", "sub", "jobs", "--queue", "g", "--registry", url, "--address", LOOP)
    here_news: list[str] = []
    here_jobs: list[str] = []
    try:
        await news.wait_for("subscribed to 'news'")
        await jobs.wait_for("subscribed to 'jobs'")
        async with (
            Broker(address=LOOP, registry=url, disconnect_timeout=0) as sub,
            Broker(address=LOOP, registry=url, disconnect_timeout=0) as pub,
        ):
            await sub.subscribe("news", lambda ev: here_news.append(ev.message.body.decode()))
            await sub.subscribe("jobs", lambda ev: here_jobs.append(ev.message.body.decode()), queue="g")
            await until(lambda: pub.route_count("news") == 2 and pub.route_count("jobs") == 2, 10, "routes from etcd")
            for i in range(20):
                await pub.publish("news", f"n{i}".encode())
            for i in range(40):
                await pub.publish("jobs", f"j{i}".encode())
            await pub.flush(timeout=10)

            def there_news():
                return [ln.split(": ", 1)[1].split(" header")[0] for ln in news.lines if "received message" in ln]

            def there_jobs():
                return [ln.split(": ", 1)[1].split(" header")[0] for ln in jobs.lines if "received message" in ln]

            await until(lambda: len(there_news()) == 20 and len(here_news) == 20, 10, "broadcast to both")
            await until(lambda: len(there_jobs()) + len(here_jobs) == 40, 10, "the queue group")
            assert sorted(there_news()) == sorted(here_news) == sorted(f"n{i}" for i in range(20))
            assert sorted(there_jobs() + here_jobs) == sorted(f"j{i}" for i in range(40))  # each once
            assert there_jobs() and here_jobs  # both members of the group took a share
    finally:
        await news.stop()
        await jobs.stop()


async def test_sigkill_of_a_subscriber_removes_its_keys_within_the_ttl(etcd_server: EtcdServer) -> None:
    from etcd_util import SUBSCRIBER

    url = f"etcd://{etcd_server.endpoint}"
    child = await Proc.start("-c", SUBSCRIBER, url, "2", "a", "b:q")
    watcher = EtcdRegistry([etcd_server.endpoint])
    try:
        await child.wait_for("ready")
        k = await akeys(etcd_server.endpoint)
        assert len(k) == 2 and len({kv["lease"] for kv in k.values()}) == 1
        w = watcher.watch()
        assert {s.name for s in await watcher.list_services()} == {"topic:a", "topic:b"}
        os.kill(child.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        await wait_keys(etcd_server.endpoint, lambda k: not k, timeout=6, what="the keys to expire")
        gone_after = time.monotonic() - t0
        assert gone_after <= 2 + 1.5, gone_after  # TTL 2 s (+ etcd's expiry check)
        deleted = set()
        while deleted != {"topic:a", "topic:b"}:
            ev = await next_event(w)
            if ev.action == "delete":
                deleted.add(ev.service.name)
        assert await watcher.list_services() == []
    finally:
        await child.stop()
        await watcher.close()


async def test_etcd_down_publishing_goes_on_and_registrations_come_back(etcd_server: EtcdServer) -> None:
    url = f"etcd://{etcd_server.endpoint}?timeout=2"
    got: dict[str, list[bytes]] = {"t": [], "t2": [], "t3": []}
    async with (
        Broker(address=LOOP, registry=url, disconnect_timeout=0) as sub,
        Broker(address=LOOP, registry=url, disconnect_timeout=0) as pub,
    ):
        await sub.subscribe("t", lambda ev: got["t"].append(ev.message.body))
        await pub.wait_for_route("t")
        before = await akeys(etcd_server.endpoint)
        assert len(before) == 1

        await asyncio.to_thread(etcd_server.stop)
        # publishing to the known subscriber goes on for 10 s of outage, nothing is lost
        for i in range(250):
            await pub.publish("t", str(i).encode())
            await asyncio.sleep(0.04)
        await pub.flush(timeout=10)
        assert got["t"] == [str(i).encode() for i in range(250)]
        assert [n.id for s in await pub.registry.get_service("topic:t") for n in s.nodes] == [
            n.id for s in await sub.registry.get_service("topic:t") for n in s.nodes
        ]
        assert not pub.registry.connected
        # a new subscription while etcd is down: subscribe does not fail, nor wait for etcd
        t0 = time.monotonic()
        await sub.subscribe("t2", lambda ev: got["t2"].append(ev.message.body))
        assert time.monotonic() - t0 < 1.0

        await asyncio.to_thread(etcd_server.start)
        # the registrations come back (the old one survived in etcd, the new one is written)
        k = await wait_keys(etcd_server.endpoint, lambda k: len(k) == 2, what="t and t2 in etcd")
        assert set(before) <= set(k)
        await pub.wait_for_route("t2", timeout=10)
        await pub.publish("t2", b"after")
        await sub.subscribe("t3", lambda ev: got["t3"].append(ev.message.body))
        await pub.wait_for_route("t3", timeout=10)
        await pub.publish("t3", b"later")
        await pub.flush(timeout=10)
        assert got["t2"] == [b"after"] and got["t3"] == [b"later"]


async def test_broker_with_an_etcd_url_owns_the_registry(etcd_server: EtcdServer) -> None:
    b = Broker(address=LOOP, registry=f"etcd://{etcd_server.endpoint}?timeout=3", disconnect_timeout=0)
    async with b:
        reg = b.registry
        assert isinstance(reg, EtcdRegistry) and reg.endpoints == [etcd_server.endpoint]
        got: list[Event] = []
        sub = await b.subscribe("self", got.append)
        k = await akeys(etcd_server.endpoint)
        assert list(k) == [f"/micro/registry/topic:self/{sub.id}".encode()]
        node = json.loads(next(iter(k.values()))["value"])["nodes"][0]
        assert node["address"] == b.advertised_address and node["metadata"]["broker"] == "http"
        await b.publish("self", b"loop")
        await b.flush()
        await until(lambda: len(got) == 1)
    with pytest.raises(RegistryError, match="closed"):
        reg.watch()
    assert await akeys(etcd_server.endpoint) == {}
    assert await asyncio.to_thread(gw_leases, etcd_server.endpoint) == []


async def test_env_var_selects_etcd(etcd_server: EtcdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERBROKER_REGISTRY", f"etcd://{etcd_server.endpoint}")
    async with Broker(address=LOOP, disconnect_timeout=0) as b:
        assert isinstance(b.registry, EtcdRegistry)
        sub = await b.subscribe("env", lambda ev: None)
        assert f"/micro/registry/topic:env/{sub.id}".encode() in await akeys(etcd_server.endpoint)


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperbroker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


async def test_cli_browse_with_etcd(etcd_server: EtcdServer) -> None:
    reg = EtcdRegistry([etcd_server.endpoint])
    try:
        await reg.register(svc("topic:orders", "node-a", "workers", "127.0.0.1:5555"), ttl=30)
        r = await asyncio.to_thread(_cli, "browse", "--registry", f"etcd://{etcd_server.endpoint}", "--wait", "0.1")
        assert r.returncode == 0, r.stderr
        row = [ln for ln in r.stdout.splitlines() if "node-a" in ln]
        assert len(row) == 1 and row[0].split()[:4] == ["orders", "workers", "node-a", "127.0.0.1:5555"]
        # the old words still work, and the environment variable is read
        r = await asyncio.to_thread(_cli, "browse", "--registry", "memory", "--wait", "0")
        assert r.returncode == 0 and "TOPIC" in r.stdout and "node-a" not in r.stdout

        def env_run():
            return subprocess.run(
                [sys.executable, "-m", "hyperbroker", "browse", "--wait", "0"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                env={**os.environ, "HYPERBROKER_REGISTRY": f"etcd://{etcd_server.endpoint}"},
            )

        r = await asyncio.to_thread(env_run)
        assert r.returncode == 0 and "node-a" in r.stdout, r.stderr
    finally:
        await reg.close()


def test_cli_rejects_a_bad_registry_url() -> None:
    r = _cli("browse", "--registry", "etcd://h:0")
    assert r.returncode == 2 and "registry URL" in r.stderr
    r = _cli("browse", "--registry", f"etcd://127.0.0.1:{free_port()}?timeout=0.3", "--wait", "0")
    assert r.returncode == 2 and "did not answer" in r.stderr


# --- a three-member cluster, and authentication -----------------------------------------------


def _status(endpoint: str) -> tuple[int, int]:
    """(this member's id, the leader's id) from /v3/maintenance/status."""
    rsp = gw_post(endpoint, "/v3/maintenance/status", {})
    return int(rsp["header"]["member_id"]), int(rsp["leader"])


async def test_cluster_leader_killed_registration_and_discovery_go_on(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    members = await asyncio.to_thread(start_cluster, tmp_path, 3)
    endpoints = [m.endpoint for m in members]
    # the writer prefers the leader, the watcher another member: both lose their member or not
    statuses = [await asyncio.to_thread(_status, e) for e in endpoints]
    leader_i = next(i for i, (me, leader) in enumerate(statuses) if me == leader)
    order = endpoints[leader_i:] + endpoints[:leader_i]
    writer = EtcdRegistry(order, timeout=2)
    reader = EtcdRegistry(list(reversed(order)), timeout=2)
    try:
        w = reader.watch()
        s1 = svc("topic:c", "n1")
        await writer.register(s1, ttl=10)
        await event_where(w, lambda ev: ev.action == "create" and ev.service == s1)

        await asyncio.to_thread(members[leader_i].kill)
        s2 = svc("topic:c", "n2", address="127.0.0.1:2")
        await writer.register(s2, ttl=10)  # remembered if the session is being re-made
        ev = await event_where(w, lambda ev: "n2" in {n.id for n in ev.service.nodes}, timeout=20)
        assert {n.id for n in ev.service.nodes} == {"n1", "n2"}
        alive = [m for i, m in enumerate(members) if i != leader_i]
        k = await wait_keys(alive[0].endpoint, lambda k: len(k) == 2, what="both keys on a survivor")
        assert len({kv["lease"] for kv in k.values()}) == 1
        await writer.deregister(s1)
        await event_where(w, lambda ev: [n.id for n in ev.service.nodes] == ["n2"], timeout=10)
    finally:
        await writer.close()
        await reader.close()
        for m in members:
            m.cleanup()


def _etcdctl(endpoint: str, *args: str) -> None:
    r = subprocess.run(
        ["etcdctl", "--endpoints", endpoint, *args], capture_output=True, text=True, timeout=20, check=False
    )
    assert r.returncode == 0, r.stderr


async def test_etcd_with_user_and_password(etcd_server: EtcdServer) -> None:
    import shutil

    if shutil.which("etcdctl") is None:
        pytest.skip("etcdctl is not installed (Debian: apt-get install etcd-client)")
    e = etcd_server.endpoint
    for cmd in (
        ("user", "add", "root:rootpw"),
        ("user", "add", "app:app pw"),
        ("role", "add", "registry"),
        ("role", "grant-permission", "registry", "--prefix=true", "readwrite", "/micro/registry/"),
        ("user", "grant-role", "app", "registry"),
        ("auth", "enable"),
    ):
        await asyncio.to_thread(_etcdctl, e, *cmd)

    async with Broker(address=LOOP, registry=f"etcd://app:app%20pw@{e}", disconnect_timeout=0) as b:
        got: list[bytes] = []
        sub = await b.subscribe("secret", lambda ev: got.append(ev.message.body))
        await b.publish("secret", b"s")
        await b.flush()
        await until(lambda: got == [b"s"])
        token = (await asyncio.to_thread(gw_post, e, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"}))[
            "token"
        ]
        k = await asyncio.to_thread(gw_range, e, PREFIX, token)
        assert [kv["key"] for kv in k] == [f"/micro/registry/topic:secret/{sub.id}".encode()]

    # a wrong password is a RegistryError that says why, and never a silent wait
    bad = EtcdRegistry([e], username="app", password="wrong", timeout=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(RegistryError, match=r"refused this client.*authentication failed"):
            await bad.register(svc("topic:x", "n"), ttl=5)
        assert time.monotonic() - t0 < 0.9  # at once, not after the timeout
    finally:
        await bad.close()
    # without the right to write outside its prefix
    other = EtcdRegistry([e], prefix="/elsewhere/", username="app", password="app pw", timeout=1)
    try:
        with pytest.raises(RegistryError, match=r"refused this client.*permission denied"):
            await other.register(svc("topic:x", "n"), ttl=5)
    finally:
        await other.close()


async def test_etcd_over_tls_with_client_certificates(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    from certs_util import make_ca

    from hyperbroker import TLSConfig

    ca = make_ca(tmp_path, "etcd-ca")
    server_cert = ca.issue(tmp_path, "etcd-server")
    client_cert = ca.issue(tmp_path, "etcd-client")
    server = await asyncio.to_thread(EtcdServer.single, tmp_path, "tls", (ca.cert, server_cert.cert, server_cert.key))
    try:
        tls = TLSConfig(cert_file=client_cert.cert, key_file=client_cert.key, ca_file=ca.cert)
        reg = EtcdRegistry([server.endpoint], tls=tls, timeout=3)
        watcher = from_url(f"etcd://{server.endpoint}?ca={ca.cert}&cert={client_cert.cert}&key={client_cert.key}")
        try:
            w = watcher.watch()
            s = svc("topic:tls", "n1")
            await reg.register(s, ttl=10)
            await event_where(w, lambda ev: ev == WatchEvent("create", s))
        finally:
            await reg.close()
            await watcher.close()
        # without a client certificate etcd refuses the handshake: never reached
        anon = EtcdRegistry([server.endpoint], tls=TLSConfig(ca_file=ca.cert), timeout=1)
        try:
            with pytest.raises(RegistryError):
                await anon.register(svc("topic:tls", "n2"), ttl=10)
        finally:
            await anon.close()
        # and a plain-text client gets nowhere either
        plain = EtcdRegistry([server.endpoint], timeout=1)
        try:
            with pytest.raises(RegistryError, match="did not answer"):
                await plain.get_service("topic:tls")
        finally:
            await plain.close()
    finally:
        server.cleanup()


def test_unspecified_address_is_expanded_to_a_host_address() -> None:
    from hyperbroker.registry.etcd import _expand_unspecified

    n = _expand_unspecified(Node("n", "0.0.0.0:4000", {"a": "b"}))
    host, _, port = n.address.rpartition(":")
    assert port == "4000" and host != "0.0.0.0" and n.metadata == {"a": "b"}
    assert not host.startswith("169.254.")
    assert _expand_unspecified(Node("n", "10.1.2.3:5")) == Node("n", "10.1.2.3:5")
    assert _expand_unspecified(Node("n", "[::]:7")).address.endswith("]:7")
    assert _expand_unspecified(Node("n", "name:7")).address == "name:7"
