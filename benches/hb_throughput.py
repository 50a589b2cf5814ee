"""hyperbroker's side of the two-process benchmarks: a subscriber process and a publisher.

The subscriber runs a Broker with a counting handler in a spawned process and sends back its
address and subscription id; the publisher registers that node by hand in its own
MemoryRegistry (no mDNS needed), publishes ``n`` messages and flushes. ``seconds`` runs from
the first publish to the end of ``flush`` (every delivery acknowledged after the handler ran),
the same span the aiohttp baseline measures.

For the ceiling (issue 12) either side can leave Python out of the per-message path: the
subscriber serves a bench-only no-op subscription answered in Rust
(``Engine._bench_noop_subscription``), the publisher publishes from a Rust loop
(``Engine._bench_publish``); everything else (HTTP, batching, envelopes, answers) is the same.
"""

from __future__ import annotations

import asyncio
import time
from multiprocessing.connection import Connection
from typing import Any

import _procs

TOPIC = "bench.topic"


def node_metadata(batch: bool = True) -> dict[str, str]:
    """Registry metadata of a hyperbroker subscriber node registered by hand in a bench: the one
    place that says which wire features the benches' nodes announce, as a hyperbroker subscriber
    announces them: ``batch=1`` (batched POSTs) and ``frames=1`` (the raw frame format). With
    ``batch=False`` the node is announced as a go-micro peer would be: one JSON envelope per
    POST. Every bench that registers a node by hand builds it here."""
    return {"secure": "false", **({"batch": "1", "frames": "1"} if batch else {})}


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def _cpu_seconds() -> float:
    """CPU time (user + system) of this whole process, all threads."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_subscriber_process(
    conn: Connection, expected: int, batch: bool = True, deadline_s: float = 120.0, noop: bool = False
) -> None:
    """Spawn target: serve one subscription, report (address, id), then ("done", count, t0, t1, cpu)."""
    main = _noop_subscriber_main if noop else _subscriber_main
    _procs.run_child(conn, main(conn, expected, batch, deadline_s))


async def _noop_subscriber_main(conn: Connection, expected: int, batch: bool, deadline_s: float) -> None:
    """One bench-only no-op subscription answered in Rust (no handler, no Python per message);
    its count is the endpoint's ``received`` counter, polled every 2 ms (t0/t1 are not taken)."""
    from hyperbroker import Broker, MemoryRegistry

    async with Broker(address="127.0.0.1:0", registry=MemoryRegistry(), batch=batch) as broker:
        engine = broker._engine
        assert engine is not None
        sub_id = "bench-noop-subscriber"
        engine._bench_noop_subscription(sub_id, TOPIC)
        cpu0 = _cpu_seconds()
        conn.send((broker.address, sub_id))
        deadline = time.monotonic() + deadline_s
        while (count := int(engine.stats()["received"] or 0)) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        conn.send(("done", count, None, None, _cpu_seconds() - cpu0))
        await asyncio.sleep(0.05)


async def _subscriber_main(conn: Connection, expected: int, batch: bool, deadline_s: float) -> None:
    from hyperbroker import Broker, Event, MemoryRegistry

    count = 0
    first: float | None = None
    last: float | None = None
    done = asyncio.Event()

    perf_counter = time.perf_counter

    def on_message(ev: Event) -> None:
        # the clock is read at the first and the last message only, as zmq's receive loop does
        # (a clock read per message cost ~10 % of the 128 B rate)
        nonlocal count, first, last
        count += 1
        if count == 1:
            first = perf_counter()
        if count >= expected:
            last = perf_counter()
            done.set()

    async with Broker(address="127.0.0.1:0", registry=MemoryRegistry(), batch=batch) as broker:
        sub = await broker.subscribe(TOPIC, on_message)
        # CPU is counted from here: interpreter start-up and imports are not the broker's cost
        cpu0 = _cpu_seconds()
        conn.send((broker.address, sub.id))
        try:
            await asyncio.wait_for(done.wait(), deadline_s)
        except TimeoutError:
            pass
        if count and last is None:  # some never came: the last one came by now
            last = perf_counter()
        conn.send(("done", count, first, last, _cpu_seconds() - cpu0))
        # answer the last responses before the endpoint goes away
        await asyncio.sleep(0.05)


class SubscriberProcess:
    """A hyperbroker subscriber in a spawned process (context manager)."""

    def __init__(self, expected: int, batch: bool = True, deadline_s: float = 120.0, noop: bool = False) -> None:
        ctx = _procs.spawn_ctx()
        self._recv, send = ctx.Pipe(duplex=False)
        args = (send, expected, batch, deadline_s, noop)
        self.proc = ctx.Process(target=run_subscriber_process, args=args, daemon=True)
        self.proc.start()
        send.close()
        reply = _procs.recv_with_timeout(self._recv, 60.0, "the subscriber address", self.proc)
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] != "error"):
            raise RuntimeError(f"hyperbroker subscriber failed to start: {reply!r}")
        self.address, self.node_id = reply
        self.batch = batch

    def wait_done(self, timeout: float = 60.0) -> tuple[int, float | None, float | None, float]:
        """(received, first receive time, last receive time, subscriber CPU seconds).

        The CPU seconds (user + system, all threads) run from the moment the subscription was
        made to the last expected message: process start-up and imports are not counted.
        """
        report = _procs.recv_with_timeout(self._recv, timeout, "the subscriber's 'done' report", self.proc)
        if not (isinstance(report, tuple) and report[0] == "done"):
            raise RuntimeError(f"unexpected report: {report!r}")
        return report[1], report[2], report[3], report[4]

    def close(self) -> None:
        self._recv.close()
        _procs.stop_process(self.proc, timeout=5.0)

    def __enter__(self) -> SubscriberProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def connected_publisher(sub: SubscriberProcess, **options: Any) -> Any:
    """A connected publisher Broker whose registry knows the subscriber process's node."""
    from hyperbroker import Broker, MemoryRegistry, Node, Service

    registry = MemoryRegistry()
    meta = node_metadata(sub.batch)
    await registry.register(Service(f"topic:{TOPIC}", "ff.http.broadcast", (Node(sub.node_id, sub.address, meta),)))
    broker = Broker(address="127.0.0.1:0", registry=registry, **options)
    await broker.connect()
    for _ in range(200):  # the watch task installs the route on its first turn
        if broker._engine is not None and broker._engine.route_count(TOPIC):
            break
        await asyncio.sleep(0.005)
    return broker


def bench_body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def measure_hyperbroker_throughput(
    n: int,
    body_size: int,
    batch: bool = True,
    many: bool = False,
    chunk: int = 1000,
    *,
    rust_publisher: bool = False,
    noop_subscriber: bool = False,
) -> dict[str, Any]:
    """Publish ``n`` messages of ``body_size`` bytes to a subscriber process; time to flush.

    ``many=True`` publishes with ``publish_many`` in chunks of ``chunk`` (default 1000; smaller
    for large bodies keeps what one call queues bounded) (else one ``publish`` per message);
    ``rust_publisher=True`` with the bench-only Rust loop ``Engine._bench_publish`` (no Python
    call per message; it blocks this process's loop until flushed). ``noop_subscriber=True``
    makes the subscriber a bench-only no-op subscription answered in Rust. Both on: the
    transport's own ceiling. ``rate`` is ``n / seconds``; ``loss`` is ``n`` minus what the subscriber's handler
    saw; ``cpu_s_per_million`` is (publisher CPU from the first publish to the end of flush +
    subscriber CPU from its subscription to its last message) per million messages.
    """
    body = bench_body(body_size)
    with SubscriberProcess(n, batch=batch, noop=noop_subscriber) as sub:
        loop = _new_loop()
        try:

            async def run() -> tuple[float, dict[str, Any]]:
                broker = await connected_publisher(sub)
                try:
                    t0 = time.perf_counter()
                    c0 = _cpu_seconds()
                    if rust_publisher:
                        if not broker._engine._bench_publish(TOPIC, n, body, 120.0):
                            raise TimeoutError("the Rust bench publisher timed out")
                    elif many:
                        bodies = [body] * chunk
                        for i in range(0, n, chunk):
                            await broker.publish_many(TOPIC, bodies[: min(chunk, n - i)])
                    else:
                        publish = broker.publish
                        for _ in range(n):
                            await publish(TOPIC, body)
                    await broker.flush(timeout=120)
                    stats = broker.stats()
                    stats["cpu"] = _cpu_seconds() - c0
                    return time.perf_counter() - t0, stats
                finally:
                    await broker.disconnect(timeout=1)

            seconds, stats = loop.run_until_complete(run())
        finally:
            loop.close()
        received, _, _, sub_cpu = sub.wait_done(30.0)
    return {
        "messages": n,
        "received": received,
        "loss": n - received,
        "delivered": stats["delivered"],
        "dropped": stats["dropped"],
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else float("inf"),
        "body_size": body_size,
        "batch": batch,
        "publisher_cpu": stats["cpu"],
        "subscriber_cpu": sub_cpu,
        "cpu_s_per_million": (stats["cpu"] + sub_cpu) / n * 1e6,
    }


if __name__ == "__main__":  # pragma: no cover
    for size in (16, 128, 1024):
        print(size, measure_hyperbroker_throughput(200_000, size))
    print("no batch", measure_hyperbroker_throughput(20_000, 128, batch=False))
