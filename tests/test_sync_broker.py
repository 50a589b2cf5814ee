"""SyncBroker (hyperbroker.sync): the synchronous facade, used from plain threads.

Real brokers on loopback announce themselves in one MemoryRegistry. A MemoryRegistry serves one
event loop (its watchers are asyncio queues: a registration made from another loop's thread
does not wake them), so the subscribers here run on the SyncBroker's own loop: either a real
async Broker started there with ``SyncBroker.run``, or a second SyncBroker (every SyncBroker of
the process shares one loop thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from brokers import LOOPBACK

from hyperbroker import (
    Broker,
    BrokerError,
    Event,
    FlushTimeoutError,
    MemoryRegistry,
    NotConnectedError,
    SyncBroker,
)

pytestmark = pytest.mark.timeout(90)

THREADS = 8
PER_THREAD = 2000


def sync_broker(registry: MemoryRegistry, **options: object) -> SyncBroker:
    return SyncBroker(address=LOOPBACK, registry=registry, disconnect_timeout=1.0, **options)


@pytest.fixture
def publisher(registry: MemoryRegistry) -> Iterator[SyncBroker]:
    with sync_broker(registry) as sb:
        yield sb


def wait_until(cond: object, timeout: float = 10.0, what: str = "condition") -> None:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def publish_from_threads(sb: SyncBroker, topic: str, threads: int, per_thread: int) -> None:
    """``threads`` threads publish ``per_thread`` messages each (``w<t>-<i>``), all at once."""
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait(10)
            for i in range(per_thread):
                sb.publish(topic, f"w{t}-{i}")
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not errors, errors
    assert not any(w.is_alive() for w in workers)


def check_each_once_in_thread_order(bodies: list[bytes], threads: int, per_thread: int) -> None:
    counts = Counter(bodies)
    expected = {f"w{t}-{i}".encode() for t in range(threads) for i in range(per_thread)}
    assert set(counts) == expected
    assert max(counts.values()) == 1, [b for b, n in counts.items() if n > 1][:5]
    for t in range(threads):
        mine = [int(b.split(b"-")[1]) for b in bodies if b.startswith(f"w{t}-".encode())]
        assert mine == list(range(per_thread)), f"thread {t}'s messages arrived out of order"


def test_eight_threads_publish_into_a_real_subscriber(publisher: SyncBroker, registry: MemoryRegistry) -> None:
    got: list[bytes] = []

    async def start_subscriber() -> Broker:
        sub = Broker(address=LOOPBACK, registry=registry, disconnect_timeout=0)
        await sub.connect()
        await sub.subscribe("load", lambda ev: got.append(ev.message.body))
        return sub

    sub = publisher.run(start_subscriber())
    try:
        publisher.run(publisher.broker.wait_for_route("load"))
        publish_from_threads(publisher, "load", THREADS, PER_THREAD)
        publisher.flush(timeout=60)
        assert len(got) == THREADS * PER_THREAD
        check_each_once_in_thread_order(got, THREADS, PER_THREAD)
        st = publisher.stats()
        assert (st["published"], st["delivered"], st["dropped"], st["handoff_queue"]) == (len(got), len(got), 0, 0)
    finally:
        publisher.run(sub.disconnect(timeout=0))


def test_two_sync_brokers_share_a_memory_registry(publisher: SyncBroker, registry: MemoryRegistry) -> None:
    got: list[bytes] = []
    handler_threads: set[str] = set()

    def handler(ev: Event) -> None:
        handler_threads.add(threading.current_thread().name)
        got.append(ev.message.body)

    with sync_broker(registry) as subscriber:
        sub = subscriber.subscribe("pair", handler)
        assert sub.topic == "pair" and sub.queue is None and sub.id.startswith("hb-")
        publisher.run(publisher.broker.wait_for_route("pair"))
        publish_from_threads(publisher, "pair", 4, 250)
        publisher.flush(timeout=30)
        check_each_once_in_thread_order(got, 4, 250)
        assert all(name.startswith("hyperbroker-handler-") for name in handler_threads)
        sub.unsubscribe()
        sub.unsubscribe()  # idempotent
        publisher.run(_until_no_route(publisher.broker, "pair"))


async def _until_no_route(broker: Broker, topic: str) -> None:
    for _ in range(500):
        if broker.route_count(topic) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{topic!r} still routed")


def test_sync_handler_runs_in_a_worker_thread_async_on_the_loop(
    publisher: SyncBroker, registry: MemoryRegistry
) -> None:
    where: dict[str, int] = {}

    def plain(ev: Event) -> None:
        where["plain"] = threading.get_ident()

    async def coro(ev: Event) -> None:
        where["async"] = threading.get_ident()

    async def ident() -> int:
        return threading.get_ident()

    loop_thread = publisher.run(ident())
    publisher.subscribe("where", plain)
    publisher.subscribe("where", coro)
    publisher.run(_until_routes(publisher.broker, "where", 2))
    publisher.publish("where", b"x")
    publisher.flush(timeout=10)
    assert where["async"] == loop_thread
    assert where["plain"] not in (loop_thread, threading.get_ident())


async def _until_routes(broker: Broker, topic: str, n: int) -> None:
    for _ in range(500):
        if broker.route_count(topic) == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{topic!r} never had {n} routes")


def test_failing_and_unacked_handlers_are_redelivered(publisher: SyncBroker) -> None:
    attempts: list[bytes] = []

    def fails_then_acks(ev: Event) -> None:
        attempts.append(ev.message.body)
        n = attempts.count(ev.message.body)
        if n == 1:
            raise ValueError("first attempt fails")
        if n == 3:
            ev.ack()  # the second attempt returned without ack(): redelivered once more

    publisher.subscribe("retry", fails_then_acks, auto_ack=False)
    publisher.run(publisher.broker.wait_for_route("retry"))
    publisher.publish("retry", b"job")
    publisher.flush(timeout=10)
    assert attempts == [b"job"] * 3
    st = publisher.stats()
    assert (st["delivered"], st["handler_errors"], st["remote_handler_errors"]) == (1, 2, 2)


def test_back_pressure_loses_nothing(registry: MemoryRegistry) -> None:
    """A slow subscriber, a tiny node queue and a tiny hand-off queue: publishers wait instead
    of dropping."""
    got: list[bytes] = []

    def slow(ev: Event) -> None:
        time.sleep(0.001)
        got.append(ev.message.body)

    with sync_broker(registry, node_queue=8, max_pending=16) as pub, sync_broker(registry) as sub:
        sub.subscribe("slow", slow)
        pub.run(pub.broker.wait_for_route("slow"))
        publish_from_threads(pub, "slow", THREADS, 50)
        # held back: when the last publish returns, little is left undelivered (without
        # back-pressure the publishers would be done long before the slow handler)
        assert len(got) >= THREADS * 50 - 64
        assert pub.stats()["handoff_queue"] <= 16
        pub.flush(timeout=60)
        check_each_once_in_thread_order(got, THREADS, 50)
        assert pub.stats()["dropped"] == 0


def test_context_manager_closes_cleanly(registry: MemoryRegistry) -> None:
    got: list[bytes] = []
    with sync_broker(registry) as sub, sync_broker(registry) as pub:
        sub.subscribe("bye", lambda ev: got.append(ev.message.body))
        pub.run(pub.broker.wait_for_route("bye"))
        pub.publish("bye", b"last words")
        # no flush: close() delivers what is queued
    assert got == [b"last words"]
    for sb in (pub, sub):
        assert sb.closed
        assert sb.stats() == {}
        sb.close()  # idempotent
        with pytest.raises(NotConnectedError):
            sb.publish("bye", b"too late")
        with pytest.raises(NotConnectedError):
            sb.flush()
    names = [t.name for t in threading.enumerate()]
    assert "hyperbroker-sync-loop" not in names
    assert not [n for n in names if n.startswith("hyperbroker-handler-")]
    assert not pub.broker.connected and not sub.broker.connected


def test_errors_have_the_broker_types(publisher: SyncBroker, registry: MemoryRegistry) -> None:
    with pytest.raises(BrokerError, match="topic"):
        publisher.publish("", b"x")
    with pytest.raises(BrokerError, match="cannot publish"):
        publisher.publish("t", object())
    with pytest.raises(BrokerError, match="header"):
        publisher.publish("t", b"x", header={"k": 1})  # type: ignore[dict-item]
    with pytest.raises(BrokerError, match="timeout"):
        publisher.flush(timeout=0)
    with pytest.raises(BrokerError, match="unknown broker option"):
        SyncBroker(no_such_option=True)
    with pytest.raises(BrokerError, match="handler_threads"):
        SyncBroker(handler_threads=0)

    async def blocks_the_loop() -> None:
        publisher.flush()

    with pytest.raises(BrokerError, match="own loop thread"):
        publisher.run(blocks_the_loop())

    release = threading.Event()
    with sync_broker(registry) as sub:
        sub.subscribe("stuck", lambda ev: release.wait(10))
        publisher.run(publisher.broker.wait_for_route("stuck"))
        publisher.publish("stuck", b"x")
        try:
            with pytest.raises(FlushTimeoutError):
                publisher.flush(timeout=0.2)
        finally:
            release.set()
        publisher.flush(timeout=10)
