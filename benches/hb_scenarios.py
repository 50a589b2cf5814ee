"""hyperbroker's side of the benchmark suite: fan-out, queue group and latency scenarios.

Every subscriber runs in a spawned process (``multiprocessing`` spawn: a tokio runtime does not
survive ``fork``) hosting ``K`` subscriptions on one :class:`~hyperbroker.Broker` (its own
MemoryRegistry, batching on). The publisher runs in the calling process: it registers every
subscriber node by hand in its own MemoryRegistry, exactly as the registry would announce them
(service ``topic:<TOPIC>``; version ``ff.http.broadcast`` with one node per subscription for
broadcast, or the queue name with every member's node in one service for a queue group; node
metadata ``{"batch": "1"}``), connects, waits until ``route_count`` shows every node, publishes,
flushes and measures.

Subscriber protocol (one duplex Pipe per subscriber process):

* child -> parent ``("ready", address, [subscription ids])`` once subscribed, or
  ``("error", repr(exc))``;
* parent -> child ``("stop",)`` once the publisher's ``flush`` returned (flush returns when every
  delivery was acknowledged, and an acknowledgement is sent after the handler ran, so the
  counts are final by then);
* child -> parent ``("done", [count per subscription], cpu_seconds, first_ts, last_ts,
  latencies or None)``. ``cpu_seconds`` is ``getrusage(RUSAGE_SELF)`` user + system (all
  threads) from the moment the subscriptions were made to "stop" (start-up and imports are not
  counted). In latency mode ``latencies`` is the list of ``receive perf_counter() - send
  perf_counter()`` in seconds, the send time being the double in the first 8 bytes of the body
  (``perf_counter`` is CLOCK_MONOTONIC on Linux: comparable across processes).

A child that hears nothing reports anyway and exits at ``deadline_s``; the parent stops every
process it started (terminate, then kill) also on errors. Only 127.0.0.1 is used.

Imported as a top-level module (``import hb_scenarios``): the benches' conftest puts
``benches/`` on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import _procs
from hb_throughput import _cpu_seconds, _new_loop, bench_body

__all__ = [
    "QUEUE",
    "TOPIC",
    "SubscriberNodes",
    "measure_fanout",
    "measure_latency",
    "measure_queue_group",
    "percentile",
    "run_subscriber_node",
]

T = TypeVar("T")

TOPIC = "bench.suite"
QUEUE = "bench-workers"
BROADCAST = "ff.http.broadcast"

#: Upper bound on the life of a subscriber process and on one measurement.
DEFAULT_DEADLINE_S = 180.0
#: Time allowed for a spawned subscriber to import hyperbroker, bind and subscribe.
READY_TIMEOUT_S = 60.0
#: Publish chunk for throughput scenarios (one ``publish_many`` call).
CHUNK = 1000

_TS = struct.Struct("<d")


# --- subscriber process --------------------------------------------------------------------


def run_subscriber_node(
    conn: Connection,
    subscriptions: int,
    queue: str | None = None,
    mode: str = "count",
    deadline_s: float = DEFAULT_DEADLINE_S,
    topic: str = TOPIC,
) -> None:
    """Spawn target: host ``subscriptions`` subscriptions (in queue group ``queue`` if given)
    on one Broker and follow the protocol of the module docstring."""
    _procs.run_child(conn, _node_main(conn, subscriptions, queue, mode, deadline_s, topic))


async def _node_main(
    conn: Connection, subscriptions: int, queue: str | None, mode: str, deadline_s: float, topic: str
) -> None:
    from hyperbroker import Broker, Event, MemoryRegistry

    perf_counter = time.perf_counter
    unpack_ts = _TS.unpack_from
    counts = [0] * subscriptions
    latencies: list[float] = []
    span: list[float] = []  # [first receive, last receive]

    def make_handler(i: int) -> Callable[[Event], None]:
        if mode == "latency":

            def on_message(ev: Event) -> None:
                now = perf_counter()
                latencies.append(now - unpack_ts(ev.message.body)[0])
                counts[i] += 1
                if not span:
                    span.append(now)
                    span.append(now)
                span[1] = now

        else:

            def on_message(ev: Event) -> None:
                counts[i] += 1

        return on_message

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_pipe() -> None:
        try:
            if conn.poll(0):
                msg = conn.recv()
                if msg == ("stop",):
                    stop.set()
        except (EOFError, OSError):  # the parent is gone: report nothing more, leave
            stop.set()

    async with Broker(address="127.0.0.1:0", registry=MemoryRegistry(), batch=True) as broker:
        subs = [await broker.subscribe(topic, make_handler(i), queue=queue) for i in range(subscriptions)]
        cpu0 = _cpu_seconds()
        conn.send(("ready", broker.address, [s.id for s in subs]))
        loop.add_reader(conn.fileno(), on_pipe)
        try:
            await asyncio.wait_for(stop.wait(), deadline_s)
        except TimeoutError:
            pass  # report what arrived
        finally:
            loop.remove_reader(conn.fileno())
        cpu = _cpu_seconds() - cpu0
        first = span[0] if span else None
        last = span[1] if span else None
        try:
            conn.send(("done", counts, cpu, first, last, latencies if mode == "latency" else None))
        except (OSError, ValueError):
            pass
        await broker.disconnect(timeout=0.5)


class SubscriberNodes:
    """Subscriber processes, one Broker each; ``layout[i]`` subscriptions on node ``i``.

    Context manager: every process is stopped on exit, also on errors. The processes are all
    started first and then awaited, so their start-up overlaps.
    """

    def __init__(
        self,
        layout: list[int],
        *,
        queue: str | None = None,
        mode: str = "count",
        deadline_s: float = DEFAULT_DEADLINE_S,
    ) -> None:
        if not layout or min(layout) < 1:
            raise ValueError("every node needs at least one subscription")
        self.layout = list(layout)
        self.queue = queue
        self.deadline_s = deadline_s
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        #: (address, [subscription ids]) of each node, in layout order
        self.nodes: list[tuple[str, list[str]]] = []
        self._ok = False
        ctx = _procs.spawn_ctx()
        try:
            for i, k in enumerate(self.layout):
                parent_end, child_end = ctx.Pipe(duplex=True)
                self.conns.append(parent_end)
                proc = ctx.Process(
                    target=run_subscriber_node,
                    args=(child_end, k, queue, mode, deadline_s),
                    name=f"hb-subscriber-node-{i}",
                    daemon=True,
                )
                self.procs.append(proc)
                proc.start()
                child_end.close()  # keep only the child's copy, so a dead child reads as EOF
            for conn, proc, k in zip(self.conns, self.procs, self.layout, strict=False):
                reply = _procs.recv_with_timeout(conn, READY_TIMEOUT_S, "'ready'", proc)
                if not (isinstance(reply, tuple) and len(reply) == 3 and reply[0] == "ready"):
                    raise RuntimeError(f"hyperbroker subscriber node failed to start: {reply!r}")
                _, address, ids = reply
                if len(ids) != k:
                    raise RuntimeError(f"node {address} made {len(ids)} subscriptions, expected {k}")
                self.nodes.append((address, list(ids)))
        except BaseException:
            self.close()
            raise

    @property
    def subscriptions(self) -> int:
        return sum(self.layout)

    def services(self) -> list[Any]:
        """The registry services announcing every subscription (as the nodes' own brokers
        would): one broadcast service with a node per subscription, or, for a queue group, one
        service whose version is the queue name with every member's node."""
        from hyperbroker import Node, Service

        meta = {"batch": "1"}
        nodes = tuple(Node(sid, address, meta) for address, ids in self.nodes for sid in ids)
        return [Service("topic:" + TOPIC, self.queue or BROADCAST, nodes)]

    def stop_and_collect(self) -> list[tuple[Any, ...]]:
        """Send "stop" to every node and return their "done" reports, in layout order."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except (OSError, ValueError):  # already gone: its report (or EOF) tells
                pass
        reports = []
        for conn, proc in zip(self.conns, self.procs, strict=False):
            report = _procs.recv_with_timeout(conn, 30.0, "the 'done' report", proc)
            if not (isinstance(report, tuple) and len(report) == 6 and report[0] == "done"):
                raise RuntimeError(f"unexpected report from a subscriber node: {report!r}")
            reports.append(report)
        self._ok = True
        return reports

    def close(self) -> None:
        if not self._ok:
            for conn in self.conns:
                try:
                    conn.send(("stop",))
                except (OSError, ValueError):
                    pass
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            _procs.stop_process(proc, timeout=5.0 if self._ok else 1.0)

    def __enter__(self) -> SubscriberNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- publisher -----------------------------------------------------------------------------


def _run(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on a fresh uvloop (the benches are plain synchronous tests)."""
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        return runner.run(make_coro())  # type: ignore[arg-type]


async def _publisher(nodes: SubscriberNodes, timeout: float = 30.0) -> Any:
    """A connected publisher Broker whose registry announces every node of ``nodes``, once its
    routes show all of them."""
    from hyperbroker import Broker, MemoryRegistry

    registry = MemoryRegistry()
    for service in nodes.services():
        await registry.register(service)
    broker = Broker(address="127.0.0.1:0", registry=registry)
    await broker.connect()
    try:
        want = nodes.subscriptions
        deadline = time.monotonic() + timeout
        while broker.route_count(TOPIC) < want:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"publisher routes {broker.route_count(TOPIC)} of {want} nodes after {timeout}s")
            await asyncio.sleep(0.005)
    except BaseException:
        await broker.disconnect(timeout=0)
        raise
    return broker


async def _publish_burst(broker: Any, n: int, body: bytes, timeout: float) -> tuple[float, float, dict[str, Any]]:
    """``publish_many`` in chunks of :data:`CHUNK`, then ``flush``. Returns (seconds, publisher
    CPU seconds, publisher stats)."""
    chunk = [body] * CHUNK
    publish_many = broker.publish_many
    async with asyncio.timeout(timeout):
        c0 = _cpu_seconds()
        t0 = time.perf_counter()
        for i in range(0, n, CHUNK):
            await publish_many(TOPIC, chunk if n - i >= CHUNK else chunk[: n - i])
        await broker.flush(timeout=timeout)
        seconds = time.perf_counter() - t0
        cpu = _cpu_seconds() - c0
    return seconds, cpu, broker.stats()


def _layout(subscriptions: int, nodes: int) -> list[int]:
    if nodes < 1 or subscriptions < nodes:
        raise ValueError("need 1 <= nodes <= subscriptions")
    q, r = divmod(subscriptions, nodes)
    return [q + (1 if i < r else 0) for i in range(nodes)]


def measure_fanout(
    n: int,
    subscriptions: int,
    nodes: int,
    body_size: int = 128,
    *,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Broadcast ``n`` messages of ``body_size`` bytes to ``subscriptions`` subscriptions spread
    evenly over ``nodes`` subscriber processes (every subscription gets every message).

    ``seconds`` runs from the first ``publish_many`` to the end of ``flush`` (every delivery
    acknowledged after its handler ran). ``rate`` (aggregate) is ``n * subscriptions /
    seconds`` deliveries per second; ``per_subscription_rate`` is ``n / seconds``. ``loss`` is
    ``n * subscriptions - sum(counts)``; ``duplicates`` counts deliveries beyond ``n`` on any
    subscription. CPU: publisher (first publish to end of flush) + every node (subscribe to
    stop), also per million deliveries.
    """
    if n < 1 or body_size < 0:
        raise ValueError("need n >= 1, body_size >= 0")
    body = bench_body(body_size)
    with SubscriberNodes(_layout(subscriptions, nodes)) as subs:

        async def run() -> tuple[float, float, dict[str, Any]]:
            broker = await _publisher(subs)
            try:
                return await _publish_burst(broker, n, body, timeout)
            finally:
                await broker.disconnect(timeout=1)

        seconds, pub_cpu, stats = _run(run)
        reports = subs.stop_and_collect()
    counts = [c for r in reports for c in r[1]]
    node_cpu = [r[2] for r in reports]
    expected = n * subscriptions
    received = sum(counts)
    cpu = pub_cpu + sum(node_cpu)
    return {
        "messages": n,
        "subscriptions": subscriptions,
        "nodes": nodes,
        "body_size": body_size,
        "counts": counts,
        "expected": expected,
        "received": received,
        "loss": expected - received,
        "duplicates": sum(max(0, c - n) for c in counts),
        "dropped": stats.get("dropped", 0),
        "failed": stats.get("failed", 0),
        "seconds": seconds,
        "rate": expected / seconds if seconds > 0 else float("inf"),
        "per_subscription_rate": n / seconds if seconds > 0 else float("inf"),
        "publisher_cpu": pub_cpu,
        "subscriber_cpu": node_cpu,
        "cpu": cpu,
        "cpu_s_per_million": cpu / expected * 1e6,
    }


def measure_queue_group(
    n: int,
    members: int = 4,
    body_size: int = 128,
    *,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Publish ``n`` messages to a queue group of ``members`` subscriber processes (one
    subscription each; every message goes to exactly one member).

    ``seconds``: first ``publish_many`` to the end of ``flush``; ``rate`` = ``n / seconds``;
    ``counts`` per member; ``fairness`` = max/min of the counts (inf if a member got nothing);
    ``loss`` = ``n - sum(counts)`` (negative would mean duplicates).
    """
    if n < 1 or members < 1 or body_size < 0:
        raise ValueError("need n >= 1, members >= 1, body_size >= 0")
    body = bench_body(body_size)
    with SubscriberNodes([1] * members, queue=QUEUE) as subs:

        async def run() -> tuple[float, float, dict[str, Any]]:
            broker = await _publisher(subs)
            try:
                return await _publish_burst(broker, n, body, timeout)
            finally:
                await broker.disconnect(timeout=1)

        seconds, pub_cpu, stats = _run(run)
        reports = subs.stop_and_collect()
    counts = [c for r in reports for c in r[1]]
    lo, hi = min(counts), max(counts)
    cpu = pub_cpu + sum(r[2] for r in reports)
    return {
        "messages": n,
        "members": members,
        "body_size": body_size,
        "counts": counts,
        "received": sum(counts),
        "fairness": hi / lo if lo > 0 else float("inf"),
        "loss": n - sum(counts),
        "dropped": stats.get("dropped", 0),
        "failed": stats.get("failed", 0),
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else float("inf"),
        "cpu": cpu,
        "cpu_s_per_million": cpu / n * 1e6,
    }


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]) of an ascending list (as the nats baseline)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


async def _publish_paced(
    broker: Any, total: int, rate_per_s: float, body_size: int, timeout: float
) -> tuple[float, float]:
    """Open loop, like the nats baseline: message i goes out at t0 + i / rate with ``publish``
    (one message per call), its body starting with the ``perf_counter()`` read just before."""
    pad = bench_body(max(0, body_size - _TS.size))
    pack = _TS.pack
    perf_counter = time.perf_counter
    publish = broker.publish
    interval = 1.0 / rate_per_s
    async with asyncio.timeout(timeout):
        t0 = perf_counter()
        for i in range(total):
            delay = t0 + i * interval - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # behind schedule: still let the loop run
            await publish(TOPIC, pack(perf_counter()) + pad)
        t_end = perf_counter()
        await broker.flush(timeout=timeout)
    return t0, t_end


def measure_latency(
    rate_per_s: float = 1000,
    seconds: float = 3.0,
    body_size: int = 128,
    *,
    warmup: int = 100,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """One-way latency publisher -> subscriber process at a fixed ``rate_per_s`` for
    ``seconds`` (after ``warmup`` messages sent the same way and not counted).

    Each body (``max(body_size, 8)`` bytes) carries its send ``perf_counter()`` as a double in
    its first 8 bytes; the handler records receive time minus send time. Returns ``count``,
    ``p50_us``, ``p99_us``, ``p999_us`` (nearest rank), ``mean_us``, ``max_us``, ``loss``
    (sent minus received, warm-up included) and ``latencies_us`` (the counted samples, sorted).
    """
    if rate_per_s <= 0 or seconds <= 0 or warmup < 0:
        raise ValueError("need rate_per_s > 0, seconds > 0, warmup >= 0")
    count = int(rate_per_s * seconds)
    total = warmup + count
    with SubscriberNodes([1], mode="latency") as subs:

        async def run() -> tuple[float, float]:
            broker = await _publisher(subs)
            try:
                return await _publish_paced(broker, total, rate_per_s, body_size, timeout)
            finally:
                await broker.disconnect(timeout=1)

        t0, t_end = _run(run)
        (report,) = subs.stop_and_collect()
    received = report[1][0]
    us = sorted(v * 1e6 for v in report[5][warmup:])
    return {
        "count": len(us),
        "sent": count,
        "loss": total - received,
        "rate_per_s": rate_per_s,
        "achieved_rate_per_s": total / (t_end - t0) if t_end > t0 else float("nan"),
        "body_size": max(body_size, _TS.size),
        "p50_us": percentile(us, 0.50),
        "p99_us": percentile(us, 0.99),
        "p999_us": percentile(us, 0.999),
        "mean_us": sum(us) / len(us) if us else float("nan"),
        "max_us": us[-1] if us else float("nan"),
        "latencies_us": us,
    }


if __name__ == "__main__":  # pragma: no cover - manual run: cd benches && python hb_scenarios.py
    for subs, nodes in ((1, 1), (10, 1), (10, 10), (100, 1), (100, 10)):
        r = measure_fanout(200_000 // subs, subs, nodes)
        print(f"fan-out {subs:>3} subs / {nodes:>2} nodes: {r['rate']:>12,.0f} deliveries/s loss={r['loss']}")
    r = measure_queue_group(200_000)
    print(f"queue group of 4: {r['rate']:,.0f} msg/s counts={r['counts']} fairness={r['fairness']:.3f}")
    r = measure_latency()
    print({k: v for k, v in r.items() if k != "latencies_us"})
