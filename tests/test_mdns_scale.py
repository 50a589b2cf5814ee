"""MdnsRegistry at scale: a hundred subscriptions on one broker, over real mDNS on loopback.

Registration does not probe and announcements are batched (registry/mdns_announce.py), so
subscribing is quick and a peer sees every route at once; resolution is batched too
(registry/mdns_resolve.py). Also: an independent DNS client (``dig``) reads our records.

Every zeroconf binds 127.0.0.1 only; CI runs the suite inside a private network namespace:

    unshare -rn sh -c 'ip link set lo up && python -m pytest tests/test_mdns_scale.py -q'

benches/test_bench_mdns_scale.py measures the same at 1000 subscriptions.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from hyperbroker import Broker
from hyperbroker.registry.mdns import MdnsRegistry

pytestmark = pytest.mark.timeout(90)

LO = ["127.0.0.1"]
N = 100
REGISTER_WITHIN = 3.0  # all N subscriptions registered (it takes ~0.1 s)
SEEN_WITHIN = 3.0  # a running publisher routes to all N (it takes ~0.05 s)
LATE_SEEN_WITHIN = 5.0  # a publisher started afterwards routes to all N (browse + answers)
GONE_WITHIN = 2.0

MakeBroker = Callable[..., Awaitable[Broker]]


@pytest.fixture
async def make_broker() -> AsyncIterator[MakeBroker]:
    made: list[tuple[Broker, MdnsRegistry]] = []

    async def make(**options: Any) -> Broker:
        reg = MdnsRegistry(interfaces=LO)
        b = Broker(address="127.0.0.1:0", registry=reg, **options)
        made.append((b, reg))
        await b.connect()
        return b

    yield make
    for b, reg in made:
        try:
            await asyncio.wait_for(b.disconnect(timeout=0.5), 10)
        finally:
            await asyncio.wait_for(reg.close(), 10)


class _Count(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responses = 0
        self.queries = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12:
            if data[2] & 0x80:
                self.responses += 1
            else:
                self.queries += 1


@pytest.fixture
async def mdns_packets() -> AsyncIterator[_Count]:
    """Counts every mDNS packet on lo (a socket joined to 224.0.0.251 there, port 5353)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", 5353))
    mreq = struct.pack("4s4s", socket.inet_aton("224.0.0.251"), socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    transport, counter = await asyncio.get_running_loop().create_datagram_endpoint(_Count, sock=s)
    yield counter
    transport.close()


def topics(n: int = N) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"scale.{run}.{i:04d}" for i in range(n)]


def routed(b: Broker, ts: list[str]) -> int:
    return sum(1 for t in ts if b.route_count(t) > 0)


async def wait_routed(b: Broker, ts: list[str], count: int, timeout: float) -> float:
    """Seconds until ``count`` of the topics have a route (fails naming how many had one)."""
    t0 = time.monotonic()
    while (k := routed(b, ts)) != count:
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{k} of {len(ts)} topics routed, expected {count} within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_hundred_subscriptions_register_fast_are_seen_and_leave(
    make_broker: MakeBroker, mdns_packets: _Count
) -> None:
    pub = await make_broker()
    sub = await make_broker(register_interval=0.2)  # a heartbeat every 0.2 s
    await pub.registry.list_services()  # the publisher is browsing before anyone subscribes
    ts = topics()
    half = N // 2

    t0 = time.monotonic()
    subs = [await sub.subscribe(t, lambda ev: None) for t in ts[:half]]  # one after another
    subs += await asyncio.gather(*(sub.subscribe(t, lambda ev: None) for t in ts[half:]))  # at once
    took = time.monotonic() - t0
    assert took < REGISTER_WITHIN, f"{N} subscriptions took {took:.2f}s to register"

    seen = await wait_routed(pub, ts, N, SEEN_WITHIN)
    # a peer's view matches what was registered: topic service, broadcast version, our node
    (svc,) = await pub.registry.get_service(f"topic:{ts[0]}")
    assert svc.version == "ff.http.broadcast" and [n.id for n in svc.nodes] == [subs[0].id]
    assert svc.nodes[0].address == sub.address

    # batched: 3 announcement rounds of N nodes in far fewer packets than one per node
    await asyncio.sleep(2.5)
    reg = sub.registry
    assert isinstance(reg, MdnsRegistry) and reg.announcer is not None
    sent = reg.announcer.packets_sent
    assert sent <= 3 * N // 3, f"{sent} announcement packets for {N} nodes x 3 rounds"
    assert reg.announcer.pending == 0

    # the heartbeat (re-registering every unchanged node every 0.2 s) sends nothing
    before = reg.announcer.packets_sent
    await asyncio.sleep(1.0)
    assert reg.announcer.packets_sent == before

    t1 = time.monotonic()
    await asyncio.gather(*(s.unsubscribe() for s in subs))
    unsub = time.monotonic() - t1
    assert unsub < REGISTER_WITHIN, f"{N} unsubscribes took {unsub:.2f}s"
    gone = await wait_routed(pub, ts, 0, GONE_WITHIN)
    for t in ts:
        assert await pub.registry.get_service(f"topic:{t}") == []
    print(f"\n{N} subs: register {took:.3f}s, seen after {seen:.3f}s, {sent} announcement packets, "
          f"unsubscribe {unsub:.3f}s, gone after {gone:.3f}s; mDNS packets on lo: "
          f"{mdns_packets.responses} responses, {mdns_packets.queries} queries")  # fmt: skip


async def test_a_publisher_started_later_sees_all_hundred(make_broker: MakeBroker) -> None:
    sub = await make_broker()
    ts = topics()
    await asyncio.gather(*(sub.subscribe(t, lambda ev: None) for t in ts))
    await asyncio.sleep(0.2)
    late = await make_broker()  # browses now: every node comes in one (split) response
    await wait_routed(late, ts, N, LATE_SEEN_WITHIN)
    # and it delivers to them
    got: list[bytes] = []
    ts2 = topics(1)
    await sub.subscribe(ts2[0], lambda ev: got.append(ev.message.body))
    await wait_routed(late, ts2, 1, SEEN_WITHIN)
    await late.publish(ts2[0], b"hello")
    await late.flush(timeout=5)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert got == [b"hello"]


async def test_close_says_goodbye_for_every_node(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    reg = MdnsRegistry(interfaces=LO)
    sub = Broker(address="127.0.0.1:0", registry=reg)
    await sub.connect()
    ts = topics()
    try:
        await asyncio.gather(*(sub.subscribe(t, lambda ev: None) for t in ts))
        await wait_routed(pub, ts, N, SEEN_WITHIN)
    finally:
        await sub.disconnect(timeout=0.5)
        await reg.close()
    await wait_routed(pub, ts, 0, GONE_WITHIN)


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (Debian: bind9-dnsutils)")
async def test_dig_reads_our_records() -> None:
    """An independent DNS client asks our responder (unicast to port 5353, answered as a legacy
    unicast query) and reads PTR, SRV, TXT and A. Only one zeroconf may hold port 5353 here: a
    unicast datagram reaches a single one of the sockets sharing the port."""
    reg = MdnsRegistry(interfaces=LO)
    b = Broker(address="127.0.0.1:0", registry=reg)
    try:
        await b.connect()
        t = topics(1)[0]
        s = await b.subscribe(t, lambda ev: None)
        port = int(str(b.address).rsplit(":", 1)[1])
        proc = await asyncio.create_subprocess_exec(
            "dig", "-p", "5353", "@127.0.0.1", "_hyperbroker._tcp.local", "PTR", "+time=3", "+tries=2",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        text = out.decode()
        assert proc.returncode == 0, (text, err.decode())
        lines = [" ".join(line.split()) for line in text.splitlines() if not line.startswith(";")]
        name = f"{s.id}._hyperbroker._tcp.local."
        assert f"_hyperbroker._tcp.local. 4500 IN PTR {name}" in lines, text
        assert f"{name} 120 IN SRV 0 0 {port} {name}" in lines, text
        assert f"{name} 120 IN A 127.0.0.1" in lines, text
        (txt,) = [line for line in lines if line.startswith(f"{name} 4500 IN TXT")]
        assert f'"name=topic:{t}"' in txt and f'"topic={t}"' in txt, txt
        assert '"version=ff.http.broadcast"' in txt and '"path=/_sub"' in txt, txt
    finally:
        await asyncio.wait_for(b.disconnect(timeout=0.5), 10)
        await reg.close()
