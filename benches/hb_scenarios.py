"""hyperbroker's side of the benchmark suite: fan-out, queue group and latency scenarios.

Every subscriber runs in a spawned process (``multiprocessing`` spawn: a tokio runtime does not
survive ``fork``) hosting ``K`` subscriptions on one :class:`~hyperbroker.Broker` (its own
MemoryRegistry, batching on), or on each of ``B`` Brokers (``B`` registry nodes sharing the
process and its tokio runtime); the subscriptions are all on one topic, or each on its own
topic (``distinct_topics``, for the topic-count curve). The publisher runs in the calling
process: it registers every subscriber node by hand in its own registry (a MemoryRegistry unless
given), exactly as the registry would announce them
(service ``topic:<topic>``; version ``ff.http.broadcast`` with one node per subscription for
broadcast, or the queue name with every member's node in one service for a queue group; node
metadata from ``hb_throughput.node_metadata()``), connects, waits until ``route_count`` shows
every node of every topic, publishes, flushes and measures.

Subscriber protocol (one duplex Pipe per subscriber process):

* child -> parent ``("ready", [(address, [subscription ids]) per Broker])`` once subscribed,
  or ``("error", repr(exc))``;
* parent -> child ``("stop",)`` once the publisher's ``flush`` returned (flush returns when every
  delivery was acknowledged, and an acknowledgement is sent after the handler ran, so the
  counts are final by then);
* child -> parent ``("done", [count per subscription, Broker after Broker], cpu_seconds,
  first_ts, last_ts, latencies or None)``. ``cpu_seconds`` is ``getrusage(RUSAGE_SELF)`` user + system (all
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
import contextlib
import math
import struct
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import _procs
from hb_throughput import _cpu_seconds, _new_loop, bench_body, node_metadata

__all__ = [
    "QUEUE",
    "TOPIC",
    "SubscriberNodes",
    "connected_publisher",
    "format_histogram",
    "log_histogram",
    "measure_fanout",
    "measure_latency",
    "measure_queue_group",
    "node_topics",
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
    topics: list[str],
    queue: str | None = None,
    mode: str = "count",
    deadline_s: float = DEFAULT_DEADLINE_S,
    brokers: int = 1,
) -> None:
    """Spawn target: host ``brokers`` Brokers, each with one subscription per entry of
    ``topics`` (in queue group ``queue`` if given), and follow the protocol of the module
    docstring."""
    _procs.run_child(conn, _node_main(conn, topics, queue, mode, deadline_s, brokers))


async def _node_main(
    conn: Connection, topics: list[str], queue: str | None, mode: str, deadline_s: float, brokers: int
) -> None:
    from hyperbroker import Broker, Event, MemoryRegistry

    perf_counter = time.perf_counter
    unpack_ts = _TS.unpack_from
    counts = [0] * (len(topics) * brokers)
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

    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        hosted: list[Broker] = []
        for b in range(brokers):
            broker = await stack.enter_async_context(
                Broker(address="127.0.0.1:0", registry=MemoryRegistry(), batch=True)
            )
            hosted.append(broker)
            base = b * len(topics)
            subs = [await broker.subscribe(t, make_handler(base + j), queue=queue) for j, t in enumerate(topics)]
            nodes.append((broker.address, [s.id for s in subs]))
        cpu0 = _cpu_seconds()
        conn.send(("ready", nodes))
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
        await asyncio.gather(*(b.disconnect(timeout=0.5) for b in hosted))


class SubscriberNodes:
    """Subscriber processes; process ``i`` hosts ``brokers`` Brokers (registry nodes) with
    ``layout[i]`` subscriptions each.

    All subscriptions are on :data:`TOPIC`, or with ``distinct_topics`` each on its own topic
    (:func:`node_topics`). Context manager: every process is stopped on exit, also on errors.
    The processes are all started first and then awaited, so their start-up overlaps.
    """

    def __init__(
        self,
        layout: list[int],
        *,
        queue: str | None = None,
        mode: str = "count",
        deadline_s: float = DEFAULT_DEADLINE_S,
        brokers: int = 1,
        distinct_topics: bool = False,
        h2: bool = False,
    ) -> None:
        if not layout or min(layout) < 1 or brokers < 1:
            raise ValueError("every node needs at least one subscription, every process one broker")
        self.layout = list(layout)
        self.brokers = brokers
        self.queue = queue
        #: announce the nodes with ``h2=1`` (publishers then speak HTTP/2 to them), as a
        #: subscriber Broker with ``h2=True`` does; their endpoints take either
        self.h2 = h2
        self.deadline_s = deadline_s
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        #: topics subscribed by each Broker of process ``i`` (one subscription per entry)
        self.topics = [node_topics(i, k, distinct_topics) for i, k in enumerate(self.layout)]
        #: (address, [subscription ids], [their topics]) of each Broker, process by process
        self.nodes: list[tuple[str, list[str], list[str]]] = []
        self._ok = False
        ctx = _procs.spawn_ctx()
        try:
            for i, topics in enumerate(self.topics):
                parent_end, child_end = ctx.Pipe(duplex=True)
                self.conns.append(parent_end)
                proc = ctx.Process(
                    target=run_subscriber_node,
                    args=(child_end, topics, queue, mode, deadline_s, brokers),
                    name=f"hb-subscriber-node-{i}",
                    daemon=True,
                )
                self.procs.append(proc)
                proc.start()
                child_end.close()  # keep only the child's copy, so a dead child reads as EOF
            for conn, proc, topics in zip(self.conns, self.procs, self.topics, strict=False):
                reply = _procs.recv_with_timeout(conn, READY_TIMEOUT_S, "'ready'", proc)
                if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ready"):
                    raise RuntimeError(f"hyperbroker subscriber node failed to start: {reply!r}")
                if len(reply[1]) != brokers:
                    raise RuntimeError(f"subscriber process made {len(reply[1])} brokers, expected {brokers}")
                for address, ids in reply[1]:
                    if len(ids) != len(topics):
                        raise RuntimeError(f"node {address} made {len(ids)} subscriptions, expected {len(topics)}")
                    self.nodes.append((address, list(ids), topics))
        except BaseException:
            self.close()
            raise

    @property
    def subscriptions(self) -> int:
        return sum(self.layout) * self.brokers

    def routes(self) -> dict[str, int]:
        """How many registry nodes each topic has (what the publisher's routes must show)."""
        out: dict[str, int] = {}
        for _, _ids, topics in self.nodes:
            for t in topics:
                out[t] = out.get(t, 0) + 1
        return out

    def services(self) -> list[Any]:
        """The registry services announcing every subscription (as the nodes' own brokers
        would): per topic, one broadcast service with a node per subscription, or, for a queue
        group, one service whose version is the queue name with every member's node."""
        from hyperbroker import Node, Service

        meta = {**node_metadata(), **({"h2": "1"} if self.h2 else {})}
        by_topic: dict[str, list[Any]] = {}
        for address, ids, topics in self.nodes:
            for sid, t in zip(ids, topics, strict=True):
                by_topic.setdefault(t, []).append(Node(sid, address, meta))
        return [Service("topic:" + t, self.queue or BROADCAST, tuple(nodes)) for t, nodes in by_topic.items()]

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


async def connected_publisher(nodes: SubscriberNodes, timeout: float = 30.0, registry: Any = None) -> Any:
    """A connected publisher Broker whose registry (a new MemoryRegistry unless given) announces
    every node of ``nodes``, once its routes show all of them."""
    from hyperbroker import Broker, MemoryRegistry

    registry = MemoryRegistry() if registry is None else registry
    for service in nodes.services():
        await registry.register(service)
    broker = Broker(address="127.0.0.1:0", registry=registry)
    await broker.connect()
    try:
        want = nodes.routes()
        pending = list(want.items())
        deadline = time.monotonic() + timeout
        while True:
            pending = [(t, k) for t, k in pending if broker.route_count(t) < k]
            if not pending:
                break
            if time.monotonic() >= deadline:
                t, k = pending[0]
                raise TimeoutError(
                    f"publisher routes incomplete after {timeout}s for {len(pending)} of {len(want)} topics "
                    f"(e.g. {t!r}: {broker.route_count(t)} of {k} nodes)"
                )
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


def node_topics(process: int, subscriptions: int, distinct: bool) -> list[str]:
    """The topics of the ``subscriptions`` subscriptions of subscriber process ``process``:
    all :data:`TOPIC`, or (``distinct``) one topic each, ``TOPIC.<process>.<j>``."""
    if distinct:
        return [f"{TOPIC}.{process}.{j}" for j in range(subscriptions)]
    return [TOPIC] * subscriptions


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
    processes: int | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Broadcast ``n`` messages of ``body_size`` bytes to ``subscriptions`` subscriptions spread
    evenly over ``nodes`` subscriber nodes (Brokers; every subscription gets every message).
    The nodes run in ``processes`` subscriber processes (default: one process per node; else
    ``nodes / processes`` Brokers per process, and ``subscriptions`` must divide evenly over
    the nodes).

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
    processes = nodes if processes is None else processes
    brokers, rest = divmod(nodes, processes)
    if rest or brokers < 1:
        raise ValueError(f"{nodes} nodes do not spread evenly over {processes} processes")
    if brokers == 1:
        layout = _layout(subscriptions, nodes)
    elif subscriptions % nodes:
        raise ValueError("with several Brokers per process, subscriptions must divide evenly over the nodes")
    else:
        layout = [subscriptions // nodes] * processes
    with SubscriberNodes(layout, brokers=brokers) as subs:

        async def run() -> tuple[float, float, dict[str, Any]]:
            broker = await connected_publisher(subs)
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
        "processes": processes,
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
            broker = await connected_publisher(subs)
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


#: Upper edges (µs) of the latency histogram's buckets: log-spaced, 1-2-5 per decade, 10 µs
#: to 1 s; a last bucket takes everything above.
HISTOGRAM_EDGES_US: tuple[float, ...] = (*(m * 10.0**e for e in range(1, 6) for m in (1, 2, 5)), 1e6)


def log_histogram(values_us: list[float]) -> list[list[float]]:
    """Counts of ``values_us`` per log-spaced bucket: ``[[upper edge µs, count], ...]`` with
    the edges of :data:`HISTOGRAM_EDGES_US` (a value ``v`` goes to the first edge ``>= v``),
    then ``[inf, count]`` for what is above 1 s. Every bucket is listed (zeros too), so
    histograms of several runs add up bucket by bucket."""
    import bisect

    counts = [0] * (len(HISTOGRAM_EDGES_US) + 1)
    for v in values_us:
        counts[bisect.bisect_left(HISTOGRAM_EDGES_US, v)] += 1
    return [[edge, float(c)] for edge, c in zip((*HISTOGRAM_EDGES_US, math.inf), counts, strict=True)]


def format_histogram(hist: list[list[float]]) -> str:
    """One line per non-empty bucket, ``<= edge: count (share) cumulative share``, with a bar."""
    total = sum(c for _, c in hist) or 1.0
    lines = []
    cum = 0.0
    lo = 0.0
    for edge, c in hist:
        cum += c
        if c:
            bar = "#" * max(1, round(40 * c / total))
            hi = "inf" if math.isinf(edge) else f"{edge:,.0f}"
            lines.append(f"  {lo:>9,.0f} - {hi:>9} us: {c:>7,.0f} ({c / total:7.3%}, cum {cum / total:8.4%}) {bar}")
        lo = edge
    return "\n".join(lines)


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
    (sent minus received, warm-up included), ``histogram`` (:func:`log_histogram`) and
    ``latencies_us`` (the counted samples, sorted).
    """
    if rate_per_s <= 0 or seconds <= 0 or warmup < 0:
        raise ValueError("need rate_per_s > 0, seconds > 0, warmup >= 0")
    count = int(rate_per_s * seconds)
    total = warmup + count
    with SubscriberNodes([1], mode="latency") as subs:

        async def run() -> tuple[float, float]:
            broker = await connected_publisher(subs)
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
        "histogram": log_histogram(us),
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
