"""End-to-end publish/subscribe behaviour of ``hyperbroker.Broker`` over loopback HTTP.

Every broker listens on 127.0.0.1 (port 0 unless a test needs a fixed one) and announces its
subscriptions in one shared :class:`MemoryRegistry`; nothing uses mDNS. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
from brokers import MakeBroker, Sink, assert_counters, publish_each, until

from hyperbroker import (
    BROADCAST_VERSION,
    Broker,
    BrokerError,
    Event,
    FlushTimeoutError,
    MemoryRegistry,
    Message,
    Node,
    Service,
)

pytestmark = pytest.mark.timeout(30)


# --- fixtures and helpers ----------------------------------------------------------------------


async def wait_routes(b: Broker, topic: str, n: int, timeout: float = 5.0) -> None:
    """Wait until the publisher ``b`` routes ``topic`` to exactly ``n`` nodes (it learns routes
    from the registry watch asynchronously; this makes the counters of a test deterministic)."""
    await until(lambda: b.route_count(topic) == n, timeout, f"{n} routes for {topic!r}")


async def three_subscribers(
    make_broker: MakeBroker, topic: str, queue: str | None = None
) -> tuple[list[Broker], Broker, list[Sink]]:
    """Three brokers subscribed to ``topic`` (in ``queue``), each into its own Sink, and a
    publisher that routes to all three: (subscriber brokers, publisher, sinks)."""
    subs = [await make_broker() for _ in range(3)]
    pub = await make_broker()
    sinks = [Sink() for _ in subs]
    for s, sink in zip(subs, sinks, strict=False):
        sub = await s.subscribe(topic, sink, queue=queue)
        assert sub.options.queue == queue
    await wait_routes(pub, topic, 3)
    return subs, pub, sinks


def nums(n: int, start: int = 0) -> list[bytes]:
    return [str(i).encode() for i in range(start, start + n)]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- basic delivery ----------------------------------------------------------------------------


async def test_seed_one_broker_ten_messages_in_order(make_broker: MakeBroker) -> None:
    b = await make_broker()
    got = Sink()
    await b.subscribe("seed", got)
    for i in range(10):
        await b.publish("seed", Message({"id": str(i)}, f"body-{i}".encode()))
    await b.flush(timeout=5)
    assert len(got.events) == 10
    for i, ev in enumerate(got.events):
        assert ev.topic == "seed"
        assert ev.message.header == {"id": str(i)}
        assert ev.message.body == f"body-{i}".encode()
    st = b.stats()
    assert_counters(
        st, published=10, delivered=10, received=10, backlogged=0, dropped=0, handler_errors=0, failed=0, in_flight=0
    )


async def test_broadcast_across_three_brokers(make_broker: MakeBroker) -> None:
    subs, pub, collectors = await three_subscribers(make_broker, "bcast")
    n = 1000
    await publish_each(pub, "bcast", nums(n), timeout=15)
    for c in collectors:
        assert c.bodies == nums(n)
    st = pub.stats()
    assert_counters(st, published=n, delivered=3 * n, backlogged=0, dropped=0, failed=0, in_flight=0)
    for s in subs:
        ss = s.stats()
        assert_counters(ss, received=n, handler_errors=0, published=0)


async def test_queue_group_across_three_brokers(make_broker: MakeBroker) -> None:
    subs, pub, collectors = await three_subscribers(make_broker, "work", queue="workers")
    n = 1000
    await publish_each(pub, "work", nums(n), timeout=15)
    everything = [b for c in collectors for b in c.bodies]
    assert len(everything) == n
    assert sorted(everything, key=int) == nums(n)  # each handled exactly once in total
    for c in collectors:
        assert len(c.bodies) >= n * 0.2, [len(x.bodies) for x in collectors]
        # one member sees its share in publish order
        assert c.bodies == sorted(c.bodies, key=int)
    st = pub.stats()
    assert_counters(st, published=n, delivered=n, backlogged=0, dropped=0)
    assert sum(s.stats()["received"] for s in subs) == n


# --- backlog -----------------------------------------------------------------------------------


async def test_backlog_delivered_when_subscriber_appears(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    for i in range(50):
        await pub.publish("later", str(i))
    await pub.flush(timeout=5)  # parked counts as done
    st = pub.stats()
    assert_counters(st, published=50, backlogged=50, backlog=50, delivered=0, dropped=0)

    sb = await make_broker()
    got = Sink()
    await sb.subscribe("later", got)
    await got.wait(50)
    await pub.flush(timeout=5)
    assert got.bodies == nums(50)
    st = pub.stats()
    assert_counters(st, delivered=50, backlog=0, backlogged=50, dropped=0)
    assert sb.stats()["received"] == 50


async def test_backlog_keeps_newest(make_broker: MakeBroker) -> None:
    b = await make_broker(backlog=100)
    await publish_each(b, "capped", nums(1000), timeout=5)
    st = b.stats()
    assert_counters(st, published=1000, backlogged=1000, dropped=900, backlog=100)
    got = Sink()
    await b.subscribe("capped", got)
    await got.wait(100)
    await b.flush(timeout=5)
    assert got.bodies == nums(100, 900)
    st = b.stats()
    assert_counters(st, delivered=100, received=100, dropped=900, backlog=0)


# --- failures, retries, restarts ---------------------------------------------------------------


async def test_handler_failing_twice_still_gets_message(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker(retry_min=0.01, retry_max=0.05)
    attempts: dict[bytes, int] = {}
    handled: list[bytes] = []

    def handler(ev: Event) -> None:
        body = ev.message.body
        attempts[body] = attempts.get(body, 0) + 1
        if body == b"2" and attempts[body] <= 2:
            raise RuntimeError(f"attempt {attempts[body]} fails")
        handled.append(body)

    await sb.subscribe("flaky", handler)
    await wait_routes(pub, "flaky", 1)
    await publish_each(pub, "flaky", nums(5), timeout=10)
    assert sorted(handled, key=int) == nums(5)
    assert attempts == {b"0": 1, b"1": 1, b"2": 3, b"3": 1, b"4": 1}
    ps = pub.stats()
    assert ps["retried"] >= 2
    assert_counters(ps, remote_handler_errors=2, delivered=5, failed=0, dropped=0, in_flight=0)
    ss = sb.stats()
    assert ss["handler_errors"] == 2
    assert ss["received"] == 7


async def test_subscriber_restarted_on_same_port_gets_what_was_published_meanwhile(make_broker: MakeBroker) -> None:
    pub = await make_broker(retry_min=0.01, retry_max=0.1)
    s1 = await make_broker()
    port = int(s1.address.rsplit(":", 1)[1])
    got1 = Sink()
    await s1.subscribe("restart", got1)
    await wait_routes(pub, "restart", 1)
    await publish_each(pub, "restart", nums(10), timeout=5)
    assert got1.bodies == nums(10)

    await asyncio.wait_for(s1.disconnect(), 10)
    await wait_routes(pub, "restart", 0)
    for i in range(10, 30):
        await pub.publish("restart", str(i))
    await pub.flush(timeout=5)
    assert pub.stats()["backlogged"] == 20

    s2 = await make_broker(address=f"127.0.0.1:{port}")
    assert s2.address == f"127.0.0.1:{port}"
    got2 = Sink()
    await s2.subscribe("restart", got2)
    await got2.wait(20)
    await pub.flush(timeout=5)
    assert got2.bodies == nums(20, 10)
    assert got1.bodies == nums(10)
    st = pub.stats()
    assert_counters(st, published=30, delivered=30, backlogged=20, dropped=0, backlog=0)


def dead_node_service(topic: str, queue: str | None = None) -> Service:
    """A subscription whose node stays registered while nothing listens at its address (a
    subscriber killed without deregistering, before its TTL ran out)."""
    node = Node("hb-dead-node", f"127.0.0.1:{closed_port()}", {"secure": "false", "broker": "http", "batch": "1"})
    return Service(f"topic:{topic}", queue or BROADCAST_VERSION, (node,))


async def test_hard_stopped_subscriber_broadcast_nothing_lost(
    make_broker: MakeBroker, registry: MemoryRegistry
) -> None:
    """A broadcast subscriber died without deregistering (its node stays in the registry, its
    port refuses connections). What is published while no live subscriber exists must reach
    the one that comes up, each message once and in order."""
    pub = await make_broker(retry_min=0.01, retry_max=0.05)
    await registry.register(dead_node_service("hard"))
    await wait_routes(pub, "hard", 1)
    n = 20
    for i in range(n):
        await pub.publish("hard", str(i))
    # the publisher finds out that the node is down and takes it out of the route
    await until(lambda: pub.stats()["evicted"] == 1, 5, "the dead node to be evicted")
    await pub.flush(timeout=5)  # everything is parked in the backlog now

    live = await make_broker()
    got = Sink()
    await live.subscribe("hard", got)
    await got.wait(n, timeout=5)
    await asyncio.sleep(0.2)  # anything extra would show up now
    assert got.bodies == nums(n)
    assert live.stats()["received"] == n
    st = pub.stats()
    assert_counters(st, delivered=n, dropped=0, backlog=0)


async def test_dead_broadcast_node_does_not_duplicate_to_live_one(
    make_broker: MakeBroker, registry: MemoryRegistry
) -> None:
    """Broadcast to a live node and a dead one (still registered): the live node gets each
    message exactly once, whatever happens to the dead node's own copies (each node has its
    own queue and retry state)."""
    live = await make_broker()
    got = Sink()
    await live.subscribe("mixed", got)
    await registry.register(dead_node_service("mixed"))
    pub = await make_broker(retry_min=0.01, retry_max=0.05)
    await wait_routes(pub, "mixed", 2)
    n = 20
    for i in range(n):
        await pub.publish("mixed", str(i))
    await got.wait(n, timeout=5)
    await until(lambda: pub.stats()["evicted"] == 1, 5, "the dead node to be evicted")
    await asyncio.sleep(0.3)  # let whatever the eviction re-routes arrive
    assert got.bodies == nums(n), f"live node got {len(got.bodies)} messages for {n} published; stats {pub.stats()}"
    assert live.stats()["received"] == n


async def test_hard_stopped_queue_member_nothing_lost(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    """The same with a queue group: the dead member's messages fail over to the live one."""
    pub = await make_broker(retry_min=0.01, retry_max=0.05)
    await registry.register(dead_node_service("hardq", queue="q"))
    await wait_routes(pub, "hardq", 1)
    n = 20
    for i in range(n):
        await pub.publish("hardq", str(i))
    await until(lambda: pub.stats()["retried"] >= 1, 5, "a failed delivery to the dead node")

    live = await make_broker()
    got = Sink()
    await live.subscribe("hardq", got, queue="q")
    await got.wait(n, timeout=10)
    await pub.flush(timeout=5)
    assert sorted(got.bodies, key=int) == nums(n)
    st = pub.stats()
    assert_counters(st, delivered=n, dropped=0, in_flight=0)


# --- unsubscribe / disconnect ------------------------------------------------------------------


async def test_unsubscribe_stops_delivery_then_backlog(make_broker: MakeBroker) -> None:
    b = await make_broker()
    got = Sink()
    sub = await b.subscribe("unsub", got)
    await publish_each(b, "unsub", nums(5), timeout=5)
    assert got.bodies == nums(5)
    assert b.stats()["backlogged"] == 0

    await sub.unsubscribe()
    for i in range(5, 12):
        await b.publish("unsub", str(i))
    await b.flush(timeout=5)
    await asyncio.sleep(0.1)
    assert got.bodies == nums(5)
    st = b.stats()
    assert_counters(st, published=12, delivered=5, received=5, backlogged=7, backlog=7)


async def test_unsubscribe_across_brokers_other_subscriber_keeps_getting(make_broker: MakeBroker) -> None:
    s1 = await make_broker()
    s2 = await make_broker()
    pub = await make_broker()
    g1, g2 = Sink(), Sink()
    sub1 = await s1.subscribe("two", g1)
    await s2.subscribe("two", g2)
    await wait_routes(pub, "two", 2)
    await pub.publish("two", "a")
    await pub.flush(timeout=5)
    await sub1.unsubscribe()
    await wait_routes(pub, "two", 1)
    await pub.publish("two", "b")
    await pub.flush(timeout=5)
    assert g1.bodies == [b"a"]
    assert g2.bodies == [b"a", b"b"]
    st = pub.stats()
    assert st["delivered"] == 3
    assert st["backlogged"] == 0


async def test_disconnect_deregisters(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    other = await make_broker()
    await other.subscribe("dereg", Sink())
    b = await make_broker()
    await b.subscribe("dereg", Sink())
    await b.subscribe("dereg", Sink(), queue="q")
    await b.subscribe("dereg-2", Sink())
    addr = b.advertised_address
    assert addr is not None

    def nodes_at(services: list[Service], address: str) -> list[Node]:
        return [n for s in services for n in s.nodes if n.address == address]

    assert len(nodes_at(await registry.get_service("topic:dereg"), addr)) == 2
    await asyncio.wait_for(b.disconnect(), 10)
    assert not b.connected
    assert nodes_at(await registry.get_service("topic:dereg"), addr) == []
    assert await registry.get_service("topic:dereg-2") == []
    # the other broker's subscription is untouched
    remaining = await registry.get_service("topic:dereg")
    assert [len(s.nodes) for s in remaining] == [1]
    assert remaining[0].nodes[0].address == other.advertised_address


# --- flush -------------------------------------------------------------------------------------


async def test_flush_returns_after_delivery(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker()
    handled: list[bytes] = []

    async def slow(ev: Event) -> None:
        await asyncio.sleep(0.005)
        handled.append(ev.message.body)

    await sb.subscribe("fl", slow)
    await wait_routes(pub, "fl", 1)
    await publish_each(pub, "fl", nums(40), timeout=10)
    assert handled == nums(40)
    assert pub.stats()["delivered"] == 40
    assert pub.stats()["in_flight"] == 0


async def test_flush_times_out_on_blocking_handler(make_broker: MakeBroker) -> None:
    b = await make_broker()
    started = asyncio.Event()

    async def blocker(ev: Event) -> None:
        started.set()
        await asyncio.sleep(5)

    await b.subscribe("block", blocker)
    await b.publish("block", "x")
    t0 = time.monotonic()
    with pytest.raises(FlushTimeoutError) as ei:
        await asyncio.wait_for(b.flush(timeout=0.3), 5)
    assert isinstance(ei.value, BrokerError)
    assert isinstance(ei.value, TimeoutError)
    assert time.monotonic() - t0 < 3
    assert started.is_set()
    assert b.stats()["delivered"] == 0


async def test_flush_times_out_on_node_answering_500(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker(retry_min=0.01, retry_max=0.05, max_deliveries=None)  # retried forever

    def always_fails(ev: Event) -> None:
        raise ValueError("no")

    await sb.subscribe("bad", always_fails)
    await wait_routes(pub, "bad", 1)
    await pub.publish("bad", "x")
    with pytest.raises(FlushTimeoutError):
        await asyncio.wait_for(pub.flush(timeout=0.5), 5)
    st = pub.stats()
    assert st["delivered"] == 0
    assert st["retried"] >= 1
    assert st["remote_handler_errors"] >= 1
    assert st["failed"] == 0
    assert sb.stats()["handler_errors"] >= 1


# --- handlers ----------------------------------------------------------------------------------


async def test_sync_and_async_handlers(make_broker: MakeBroker) -> None:
    b = await make_broker()
    sync_got: list[bytes] = []
    async_got: list[bytes] = []

    def sync_h(ev: Event) -> None:
        sync_got.append(ev.message.body)

    async def async_h(ev: Event) -> None:
        await asyncio.sleep(0)
        async_got.append(ev.message.body)

    await b.subscribe("h", sync_h)
    await b.subscribe("h", async_h)
    await publish_each(b, "h", nums(50), timeout=5)
    assert sync_got == nums(50)
    assert async_got == nums(50)
    st = b.stats()
    assert_counters(st, delivered=100, received=100, handler_errors=0)


async def test_async_handler_runs_in_arrival_order(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker()
    trace: list[tuple[str, int]] = []

    async def h(ev: Event) -> None:
        i = int(ev.message.body)
        trace.append(("start", i))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        trace.append(("end", i))

    await sb.subscribe("ord", h)
    await wait_routes(pub, "ord", 1)
    n = 300
    await publish_each(pub, "ord", nums(n), timeout=10)
    expected = [x for i in range(n) for x in (("start", i), ("end", i))]
    assert trace == expected


async def test_auto_ack_false(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker(retry_min=0.01, retry_max=0.05)
    acked: list[bytes] = []
    attempts: list[bytes] = []

    def acks(ev: Event) -> None:
        ev.ack()
        acked.append(ev.message.body)

    def forgets_once(ev: Event) -> None:
        attempts.append(ev.message.body)
        if len(attempts) >= 2:
            ev.ack()

    s1 = await sb.subscribe("ack1", acks, auto_ack=False)
    s2 = await sb.subscribe("ack2", forgets_once, auto_ack=False)
    assert s1.options.auto_ack is False and s2.options.auto_ack is False
    await wait_routes(pub, "ack1", 1)
    await wait_routes(pub, "ack2", 1)
    await pub.publish("ack1", "a")
    await pub.flush(timeout=5)
    assert acked == [b"a"]
    st = pub.stats()
    assert st["delivered"] == 1 and st["retried"] == 0

    await pub.publish("ack2", "b")
    await pub.flush(timeout=5)
    assert attempts == [b"b", b"b"]
    st = pub.stats()
    assert st["delivered"] == 2
    assert st["retried"] == 1
    ss = sb.stats()
    assert ss["received"] == 3
    assert ss["handler_errors"] == 1


async def test_back_pressure_loses_nothing(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker(node_queue=64)
    got: list[bytes] = []

    async def slow(ev: Event) -> None:
        if len(got) % 4 == 0:
            await asyncio.sleep(0.001)
        got.append(ev.message.body)

    await sb.subscribe("bp", slow)
    await wait_routes(pub, "bp", 1)
    n = 2000
    await publish_each(pub, "bp", nums(n), timeout=20)
    assert got == nums(n)
    st = pub.stats()
    assert_counters(st, published=n, delivered=n, dropped=0, backlogged=0)
    assert sb.stats()["received"] == n


# --- what publish accepts ----------------------------------------------------------------------


async def test_publish_kinds_and_publish_many(make_broker: MakeBroker) -> None:
    sb = await make_broker()
    pub = await make_broker()
    got = Sink()
    await sb.subscribe("kinds", got)
    await wait_routes(pub, "kinds", 1)

    await pub.publish("kinds", "héllo")
    await pub.publish("kinds", b"\x00\xffraw")
    await pub.publish("kinds", {"a": 1, "b": [1, 2]})
    await pub.publish("kinds", Message({"x": "1", "y": "two"}, b"msg"))
    await pub.publish("kinds", b"with-header", header={"k": "v"})
    await pub.flush(timeout=5)
    assert len(got.events) == 5
    e = got.events
    assert e[0].message.body == "héllo".encode() and e[0].message.header == {}
    assert e[0].message.text() == "héllo"
    assert e[1].message.body == b"\x00\xffraw" and e[1].message.header == {}
    assert e[2].message.header == {"Content-Type": "application/json"}
    assert orjson.loads(e[2].message.body) == {"a": 1, "b": [1, 2]}
    assert e[2].message.json() == {"a": 1, "b": [1, 2]}
    assert e[3].message.header == {"x": "1", "y": "two"} and e[3].message.body == b"msg"
    assert e[4].message.header == {"k": "v"} and e[4].message.body == b"with-header"

    count = await pub.publish_many(
        "kinds", ["s", b"b", [1, 2], Message({"h": "1"}, b"m")] + [str(i) for i in range(100)]
    )
    assert count == 104
    await pub.flush(timeout=5)
    assert len(got.events) == 109
    m = got.events[5:]
    assert m[0].message.body == b"s"
    assert m[1].message.body == b"b"
    assert m[2].message.header == {"Content-Type": "application/json"} and m[2].message.json() == [1, 2]
    assert m[3].message.header == {"h": "1"} and m[3].message.body == b"m"
    assert [x.message.body for x in m[4:]] == nums(100)

    class Raw(bytes):
        pass

    # any iterable; bytes subclasses and bytearray go through the general conversion
    assert await pub.publish_many("kinds", (x for x in [b"g1", bytearray(b"g2"), Raw(b"g3")])) == 3
    await pub.flush(timeout=5)
    assert [x.message.body for x in got.events[109:]] == [b"g1", b"g2", b"g3"]
    st = pub.stats()
    assert st["published"] == 112
    assert st["delivered"] == 112
    assert sb.stats()["received"] == 112
