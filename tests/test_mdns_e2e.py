"""End to end over real mDNS on the loopback interface: brokers in separate processes that share
nothing but multicast DNS.

Every zeroconf binds 127.0.0.1 only (the one exception, the default-registry test, runs only
inside a private network namespace whose single interface is lo). Run as CI does:

    unshare -rn sh -c 'ip link set lo up && python -m pytest tests/test_mdns_e2e.py -q'

Helper processes are tests/helpers/mdns_node.py, driven over stdin/stdout JSON lines
(tests/helpers/hb_nodeclient.py); they are killed at the end of each test, also on failure.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from brokers import MakeBroker, publish_each

from hyperbroker import Broker
from hyperbroker.registry.mdns import MdnsRegistry

sys.path.insert(0, str(Path(__file__).with_name("helpers")))
from hb_nodeclient import NodeProc

pytestmark = pytest.mark.timeout(60)

LO = ["127.0.0.1"]
ADDR = "127.0.0.1:0"
SEEN_WITHIN = 8.0  # a new subscription (mDNS announce + resolve) reaches a peer
GONE_WITHIN = 2.0  # a goodbye reaches a peer
FAST = {"retry_min": 0.01, "retry_max": 0.5}

StartNode = Callable[[str], Awaitable[NodeProc]]


def topic() -> str:
    return f"e2e.{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def start_node(tmp_path: Path) -> AsyncIterator[StartNode]:
    nodes: list[NodeProc] = []

    async def start(name: str) -> NodeProc:
        n = await NodeProc.start(name, tmp_path)
        nodes.append(n)
        return n

    yield start
    await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)


@pytest.fixture
async def make_broker() -> AsyncIterator[MakeBroker]:
    """In-process brokers, each with its own loopback-bound MdnsRegistry (closed at the end)."""
    made: list[tuple[Broker, MdnsRegistry]] = []

    async def make(**options: Any) -> Broker:
        reg = MdnsRegistry(interfaces=LO)
        b = Broker(address=ADDR, registry=reg, **options)
        made.append((b, reg))
        await b.connect()
        return b

    yield make
    for b, reg in made:
        try:
            await asyncio.wait_for(b.disconnect(timeout=0.5), 10)
        finally:
            await asyncio.wait_for(reg.close(), 10)


async def node_broker(node: NodeProc, name: str = "b", **options: Any) -> str:
    res = await node.call("broker", name=name, address=ADDR, interfaces=LO, options=options)
    return str(res["address"])


async def subscribed_node(start_node: StartNode, name: str, t: str, sub: str = "s") -> NodeProc:
    """A node process ``name`` running broker ``b`` with subscription ``sub`` of topic ``t``."""
    node = await start_node(name)
    await node_broker(node)
    await node.call("subscribe", broker="b", sub=sub, topic=t)
    return node


async def wait_route_count(b: Broker, t: str, n: int, timeout: float) -> float:
    """Poll until route_count(t) == n; returns when (monotonic). Fails with the last count."""
    deadline = time.monotonic() + timeout
    while True:
        c = b.route_count(t)
        if c == n:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"route_count({t!r}) is {c}, expected {n} within {timeout}s; stats {b.stats()}")
        await asyncio.sleep(0.01)


def describe(got: list[str], want: list[str]) -> str:
    """What differs between two lists of bodies, briefly."""
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    dup = sorted({x for x in got if got.count(x) > 1})
    return (
        f"{len(got)} received, {len(want)} expected; first difference at index {first}: "
        f"got {got[first : first + 5]} expected {want[first : first + 5]}; missing "
        f"{sorted(set(want) - set(got))[:10]}; unexpected {sorted(set(got) - set(want))[:10]}; "
        f"duplicated {dup[:10]}"
    )


async def wait_stat(b: Broker, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        st = b.stats()
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s; stats {st}")
        await asyncio.sleep(0.01)


async def test_thousand_in_order_then_goodbye_then_backlog(start_node: StartNode, make_broker: MakeBroker) -> None:
    t = topic()
    pub = await make_broker(**FAST)
    sub_node = await subscribed_node(start_node, "sub", t, sub="s1")
    await wait_route_count(pub, t, 1, SEEN_WITHIN)

    bodies = [f"m-{i:04d}" for i in range(1000)]
    await publish_each(pub, t, [body.encode() for body in bodies], timeout=15)
    got = await sub_node.call("wait_received", sub="s1", count=1000, timeout=15)
    assert got == bodies, describe(got, bodies)
    st = pub.stats()
    assert st["delivered"] == 1000 and st["backlog"] == 0 and st["dropped"] == 0, st
    await asyncio.sleep(0.2)
    assert await sub_node.call("received", sub="s1") == bodies  # nothing extra, no duplicates

    # Goodbye: the subscriber unsubscribes; the publisher stops routing to it within 2 s.
    t0 = time.monotonic()
    await sub_node.call("unsubscribe", sub="s1")
    t_gone = await wait_route_count(pub, t, 0, GONE_WITHIN - (time.monotonic() - t0))
    assert t_gone - t0 <= GONE_WITHIN

    # With no subscriber left, what is published waits in the backlog.
    before = pub.stats()
    later = [f"late-{i:03d}" for i in range(50)]
    await publish_each(pub, t, [body.encode() for body in later], timeout=5)
    st = pub.stats()
    assert st["backlog"] == 50, st
    assert st["backlogged"] - before["backlogged"] == 50, (before, st)
    assert st["delivered"] == 1000 and st["dropped"] == 0, st
    assert await sub_node.call("received", sub="s1") == bodies  # the old subscription got none

    # A subscriber appearing later gets the backlog, oldest first, and then new messages.
    await sub_node.call("subscribe", broker="b", sub="s2", topic=t)
    await pub.publish(t, b"after")
    got2 = await sub_node.call("wait_received", sub="s2", count=51, timeout=SEEN_WITHIN)
    assert got2 == [*later, "after"], describe(got2, [*later, "after"])
    await pub.flush(timeout=5)
    st = pub.stats()
    assert st["backlog"] == 0 and st["delivered"] == 1051, st


async def test_first_publish_right_after_subscriber_appears(start_node: StartNode, make_broker: MakeBroker) -> None:
    t = topic()
    pub = await make_broker(**FAST)
    sub_node = await start_node("sub")
    await node_broker(sub_node)
    assert pub.route_count(t) == 0
    await sub_node.call("subscribe", broker="b", sub="s", topic=t)
    # no wait_for_route: published the moment the subscription exists; the route may not be
    # known yet, then the message waits in the backlog until the announcement arrives
    await pub.publish(t, b"first")
    got = await sub_node.call("wait_received", sub="s", count=1, timeout=SEEN_WITHIN)
    assert got == ["first"]
    await pub.flush(timeout=5)
    st = pub.stats()
    assert st["delivered"] == 1 and st["backlog"] == 0 and st["dropped"] == 0, st
    await asyncio.sleep(0.2)
    assert await sub_node.call("received", sub="s") == ["first"]

    # Published before the subscription's announcement arrived (registration no longer probes,
    # so it is published just before subscribing): no route yet, so it waits in the backlog and
    # goes out when the route appears.
    t2 = topic()
    assert pub.route_count(t2) == 0
    before = pub.stats()
    await pub.publish(t2, b"early")
    await pub.flush(timeout=5)
    st = pub.stats()
    assert st["backlog"] == 1 and st["backlogged"] == before["backlogged"] + 1, st
    await sub_node.call("subscribe", broker="b", sub="s2", topic=t2)
    got = await sub_node.call("wait_received", sub="s2", count=1, timeout=SEEN_WITHIN)
    assert got == ["early"]
    await pub.flush(timeout=5)
    st = pub.stats()
    assert st["backlog"] == 0 and st["delivered"] == 2 and st["dropped"] == 0, st


async def test_brokers_in_one_process_and_several_processes_see_each_other(
    start_node: StartNode, make_broker: MakeBroker
) -> None:
    t = topic()
    pub = await make_broker(**FAST)
    local_sub = await make_broker()
    n1, n2 = await asyncio.gather(start_node("sub1"), start_node("sub2"))
    await asyncio.gather(node_broker(n1), node_broker(n2))
    local_got: list[bytes] = []
    await asyncio.gather(
        n1.call("subscribe", broker="b", sub="s", topic=t),
        n2.call("subscribe", broker="b", sub="s", topic=t),
        local_sub.subscribe(t, lambda ev: local_got.append(ev.message.body)),
    )
    # every broker, in this process and in the others, routes the topic to all three nodes
    await wait_route_count(pub, t, 3, SEEN_WITHIN)
    await wait_route_count(local_sub, t, 3, SEEN_WITHIN)
    await asyncio.gather(
        n1.call("wait_routes", broker="b", topic=t, count=3, timeout=SEEN_WITHIN),
        n2.call("wait_routes", broker="b", topic=t, count=3, timeout=SEEN_WITHIN),
    )

    bodies = [f"b-{i:03d}" for i in range(100)]
    await publish_each(pub, t, [body.encode() for body in bodies], timeout=10)
    got1, got2 = await asyncio.gather(
        n1.call("wait_received", sub="s", count=100, timeout=10),
        n2.call("wait_received", sub="s", count=100, timeout=10),
    )
    deadline = time.monotonic() + 5
    while len(local_got) < 100 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got1 == bodies
    assert got2 == bodies
    assert [b.decode() for b in local_got] == bodies
    st = pub.stats()
    assert st["delivered"] == 300 and st["backlog"] == 0 and st["dropped"] == 0, st

    # a publisher in a helper process reaches the in-process subscriber (and the others) too
    await n1.call("broker", name="p", address=ADDR, interfaces=LO, options=FAST)
    await n1.call("wait_routes", broker="p", topic=t, count=3, timeout=SEEN_WITHIN)
    await n1.call("publish", broker="p", topic=t, bodies=["from-n1"])
    await n1.call("flush", broker="p", timeout=5)
    deadline = time.monotonic() + 5
    while len(local_got) < 101 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert local_got[100:] == [b"from-n1"]
    assert (await n2.call("wait_received", sub="s", count=101, timeout=5))[100:] == ["from-n1"]


async def test_sigkilled_subscriber_is_evicted_and_backlog_reaches_replacement(
    start_node: StartNode, make_broker: MakeBroker
) -> None:
    t = topic()
    pub = await make_broker(**FAST)
    victim = await subscribed_node(start_node, "victim", t)
    await wait_route_count(pub, t, 1, SEEN_WITHIN)
    warm = [f"w-{i}" for i in range(10)]
    await publish_each(pub, t, [body.encode() for body in warm], timeout=5)
    assert await victim.call("wait_received", sub="s", count=10, timeout=5) == warm

    victim.sigkill()  # no goodbye: mDNS keeps the node "discovered" for ~19 minutes
    await asyncio.wait_for(victim.proc.wait(), 5)

    n = 200
    dead_time = [f"d-{i:03d}" for i in range(n)]
    for body in dead_time:
        await pub.publish(t, body.encode())
    # refused POSTs evict the node: it leaves the route, its messages go to the backlog
    st = await wait_stat(pub, lambda s: s["evicted"] >= 1, 10, "eviction")
    await wait_route_count(pub, t, 0, 5)
    await pub.flush(timeout=5)
    st = await wait_stat(pub, lambda s: s["backlog"] == n, 5, f"backlog == {n}")
    assert st["delivered"] == 10 and st["dropped"] == 0, st

    # a replacement subscriber gets every message published while the first one was dead
    repl = await subscribed_node(start_node, "replacement", t)
    got = await repl.call("wait_received", sub="s", count=n, timeout=SEEN_WITHIN + 5)
    assert got == dead_time, describe(got, dead_time)
    await pub.flush(timeout=5)
    st = pub.stats()
    assert st["backlog"] == 0 and st["delivered"] == 10 + n and st["dropped"] == 0, st
    assert pub.route_count(t) == 1  # the replacement only; the dead node stays out
    await asyncio.sleep(0.2)
    assert len(await repl.call("received", sub="s")) == n  # exactly once


def _only_loopback() -> bool:
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]
    except OSError:
        return False


@pytest.mark.skipif(
    not _only_loopback(),
    reason="Broker()'s default MdnsRegistry binds every interface; this test runs only inside a "
    "private network namespace whose only interface is lo (unshare -rn)",
)
async def test_default_registry_is_mdns(start_node: StartNode) -> None:
    t = topic()
    got: list[bytes] = []
    b = Broker(address=ADDR)  # registry: the default MdnsRegistry on all (here: only lo) interfaces
    await b.connect()
    try:
        assert isinstance(b.registry, MdnsRegistry)
        await b.subscribe(t, lambda ev: got.append(ev.message.body))
        pub_node = await start_node("pub")
        await node_broker(pub_node, **FAST)
        await pub_node.call("wait_routes", broker="b", topic=t, count=1, timeout=SEEN_WITHIN)
        await pub_node.call("publish", broker="b", topic=t, bodies=["x", "y", "z"])
        await pub_node.call("flush", broker="b", timeout=5)
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert got == [b"x", b"y", b"z"]
    finally:
        await asyncio.wait_for(b.disconnect(timeout=0.5), 10)
