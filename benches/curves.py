"""The scale curves of issue 12 and their figures file, ``benches/curves.json``.

Owns what test_bench_curves.py and test_bench_zmq.py measure beyond the existing helpers:

* the point schedules (body sizes and how many messages each point sends, topic counts,
  subscriber-node counts) for the measured and the smoke run;
* :func:`measure_memcpy`: memory-copy bandwidth of this machine (the per-byte bound);
* :func:`measure_topic_cost`: the cost of ``publish()`` per call and ``publish_many()`` per
  message while publishing round-robin over ``topics`` topics, each routed to a subscriber node;
* :data:`FIGURES`, :func:`targets` and :func:`save`: every figure of the run; ``save`` merges
  the complete sections into ``curves.json`` (a partial run never replaces a section of a
  complete one) and draws the PNGs (plot_curves.py).

Everything else is reused: subscriber processes and the publisher (hb_scenarios), 1:1 runs and
CPU accounting (hb_throughput, nats_cpu), rounds and medians (bench_runs). Imported as a
top-level module (``import curves``).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import _procs
from bench_runs import finite, machine
from bench_runs import get_path as _get
from hb_scenarios import SubscriberNodes, connected_publisher
from hb_throughput import bench_body

HERE = Path(__file__).resolve().parent
CURVES_JSON = HERE / "curves.json"

KIB, MIB = 1024, 1024 * 1024

# --- point schedules -------------------------------------------------------------------------

#: (a) body sizes of the size curve
SIZES = (16, 128, KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, MIB)
#: bytes one size-curve point sends (measured, smoke); the count is clamped to COUNT_BOUNDS
SIZE_BYTES = (600 * MIB, 2 * MIB)
COUNT_BOUNDS = ((600, 600_000), (20, 2_000))
#: memory-copy bandwidth is measured with these sizes (the bound line of the size curve)
MEMCPY_SIZES = (16 * KIB, MIB)

#: (b) topics with routes
TOPIC_COUNTS = (1, 1_000, 10_000)
#: the topic counts measured again with subscriber nodes that announce HTTP/2 (``h2=True``)
TOPIC_COUNTS_H2 = (1, 10_000)
#: subscriptions per subscriber process of the topic curve (10,000 topics: 10 processes)
TOPICS_PER_NODE = 1_000
#: publish() calls per round (measured, smoke), timed in bursts of BURST calls, flush between
TOPIC_CALLS = (200_000, 2_000)
BURST = 1_000
#: publish_many: MANY_CHUNK messages per call, BURST messages per timed burst
MANY_CHUNK = 100

#: (c) subscriber nodes (Brokers) of the fan-out curve, and the most processes they share
FANOUT_NODES = (1, 10, 50)
FANOUT_MAX_PROCESSES = 5
#: deliveries per fan-out point (n x nodes), measured and smoke
FANOUT_DELIVERIES = (1_000_000, 20_000)
#: nats subscriber processes of the fan-out curve (one process per subscriber, as the suite);
#: the smoke run skips 50 processes (same code path as 10, but 50 interpreters to start)
NATS_FANOUT = ((1, 10, 50), (1, 10))

#: (1) the ZeroMQ baseline: sizes and messages per point (measured, smoke)
ZMQ_SIZES = (128, KIB, 16 * KIB)
ZMQ_COUNTS = {128: (300_000, 5_000), KIB: (300_000, 5_000), 16 * KIB: (40_000, 1_000)}


def size_count(size: int, measuring: bool) -> int:
    """Messages for one size-curve point: about the same bytes at every size, bounded."""
    budget, (lo, hi) = (SIZE_BYTES[0], COUNT_BOUNDS[0]) if measuring else (SIZE_BYTES[1], COUNT_BOUNDS[1])
    return max(lo, min(hi, budget // max(size, 1)))


def size_chunk(size: int) -> int:
    """publish_many chunk for a body size: 1000 messages, at most ~16 MiB per call."""
    return max(8, min(1000, 16 * MIB // max(size, 1)))


def fanout_processes(nodes: int) -> int:
    """Processes hosting ``nodes`` subscriber Brokers (they divide evenly)."""
    p = min(nodes, FANOUT_MAX_PROCESSES)
    while nodes % p:
        p -= 1
    return p


# --- memory copy -----------------------------------------------------------------------------


def measure_memcpy(size: int, seconds: float = 0.25) -> dict[str, Any]:
    """Memory-copy bandwidth (MB/s, 10^6 bytes) copying a ``size``-byte ``bytes`` in a timed
    loop two ways: ``bytearray(b)`` and ``bytes(memoryview(b))`` (each one allocation + one
    memcpy, as a body copied into or out of Python costs). ``mb_per_s`` is the faster way."""
    b = bench_body(size)
    mv = memoryview(b)
    out: dict[str, Any] = {"size": size}
    for name, fn in (("bytearray", lambda: bytearray(b)), ("bytes_memoryview", lambda: bytes(mv))):
        copies = 0
        batch = max(1, (4 * MIB) // size)
        t0 = time.perf_counter()
        while True:
            for _ in range(batch):
                fn()
            copies += batch
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
        out[name] = copies * size / elapsed / 1e6
    out["mb_per_s"] = max(out["bytearray"], out["bytes_memoryview"])
    return out


# --- publish cost by topic count -------------------------------------------------------------


class IndexedRegistry:
    """An in-memory registry indexed by service name, without TTLs, for the publisher of the
    topic curve: tens of thousands of services registered by hand. (MemoryRegistry scans every
    service on each call, so installing 10,000 topics through it takes minutes: a setup cost,
    not the publish cost this curve measures.) Implements hyperbroker's Registry protocol."""

    def __init__(self) -> None:
        from hyperbroker.registry.base import QueueWatcher

        self._make_watcher = QueueWatcher
        self._services: dict[str, dict[str, Any]] = {}  # name -> version -> Service
        self._watchers: set[Any] = set()

    async def register(self, service: Any, ttl: float | None = None) -> None:
        from hyperbroker import WatchEvent

        if ttl:
            raise ValueError("IndexedRegistry has no TTLs")
        versions = self._services.setdefault(service.name, {})
        action = "update" if service.version in versions else "create"
        versions[service.version] = service
        for w in self._watchers:
            w.put(WatchEvent(action, service))

    async def deregister(self, service: Any) -> None:
        from hyperbroker import WatchEvent

        if self._services.get(service.name, {}).pop(service.version, None) is not None:
            for w in self._watchers:
                w.put(WatchEvent("delete", service))

    async def get_service(self, name: str) -> list[Any]:
        return list(self._services.get(name, {}).values())

    async def list_services(self) -> list[Any]:
        return [s for versions in self._services.values() for s in versions.values()]

    def watch(self) -> Any:
        from hyperbroker import WatchEvent

        w = self._make_watcher(self._watchers.discard)
        for versions in self._services.values():
            for s in versions.values():
                w.put(WatchEvent("create", s))
        self._watchers.add(w)
        return w

    async def close(self) -> None:
        for w in list(self._watchers):
            w.stop()
        self._watchers.clear()


def _expected(topics: int, calls: int, many_messages: int) -> list[int]:
    """Messages each topic gets: ``calls`` round-robin publishes, then ``many_messages`` in
    publish_many calls of MANY_CHUNK, one topic per call, round-robin."""
    exp = [calls // topics + (1 if j < calls % topics else 0) for j in range(topics)]
    for c, i in enumerate(range(0, many_messages, MANY_CHUNK)):
        exp[c % topics] += min(MANY_CHUNK, many_messages - i)
    return exp


async def _publish_round_robin(
    broker: Any,
    topics: list[str],
    calls: int,
    many_messages: int,
    body: bytes,
    timeout: float,
    cpu_per_call: list[float],
    cpu_per_message: list[float],
) -> tuple[list[float], list[float]]:
    """Per-call seconds of each timed burst of ``publish`` and per-message seconds of each timed
    burst of ``publish_many``; every burst is flushed (untimed) before the next one starts. The
    publishing thread's CPU seconds per ``publish`` call of each burst go into ``cpu_per_call``
    (wall time also counts the subscriber processes and the publisher's own I/O threads taking
    the two cores while the calls run); its CPU seconds per message of each ``publish_many``
    burst go into ``cpu_per_message``."""
    perf_counter, thread_time = time.perf_counter, time.thread_time
    publish, publish_many = broker.publish, broker.publish_many
    n = len(topics)
    per_call: list[float] = []
    for start in range(0, calls, BURST):
        seq = [topics[(start + j) % n] for j in range(min(BURST, calls - start))]
        t0, c0 = perf_counter(), thread_time()
        for t in seq:
            await publish(t, body)
        per_call.append((perf_counter() - t0) / len(seq))
        cpu_per_call.append((thread_time() - c0) / len(seq))
        await broker.flush(timeout=timeout)
    per_message: list[float] = []
    chunk = [body] * MANY_CHUNK
    call = 0
    for start in range(0, many_messages, BURST):
        plan = []
        for i in range(start, min(start + BURST, many_messages), MANY_CHUNK):
            plan.append((topics[call % n], chunk[: min(MANY_CHUNK, many_messages - i)]))
            call += 1
        t0, c0 = perf_counter(), thread_time()
        for t, bodies in plan:
            await publish_many(t, bodies)
        sent = sum(len(b) for _, b in plan)
        per_message.append((perf_counter() - t0) / sent)
        cpu_per_message.append((thread_time() - c0) / sent)
        await broker.flush(timeout=timeout)
    return per_call, per_message


def measure_topic_cost(
    topics: int,
    calls: int,
    many_messages: int | None = None,
    body_size: int = 128,
    *,
    timeout: float = 120.0,
    h2: bool = False,
) -> dict[str, Any]:
    """``topics`` topics, each routed to one subscription of a subscriber node (Brokers in
    spawned processes hosting up to :data:`TOPICS_PER_NODE` subscriptions each; the publisher
    registers every node by hand in an :class:`IndexedRegistry` and waits for every route;
    ``route_setup_seconds`` is connect -> every route installed); publish ``calls``
    times round-robin over the topics with ``publish``, then ``many_messages`` (default
    ``calls``) with ``publish_many``, flushing after every timed burst of :data:`BURST`.

    ``us_per_publish`` / ``us_per_message_many``: median over the bursts of the time per call /
    per message (the user-visible cost; delivery is outside the timing); ``us_cpu_per_publish``
    / ``us_cpu_per_message_many``: the same, in the publishing thread's CPU. ``delivery_rate``:
    every message over the whole publishing phase, flushes included (delivered msg/s when
    round-robin over the topics). ``h2``: the nodes announce HTTP/2 (one multiplexed connection
    per node instead of an HTTP/1.1 connection per concurrent request). ``loss`` is what
    should have arrived minus the handler calls counted by the node; ``mismatched`` counts
    topics whose count differs from what was sent to them (lost, duplicated or misrouted)."""
    if topics < 1 or calls < 1:
        raise ValueError("need topics >= 1, calls >= 1")
    many = calls if many_messages is None else many_messages
    body = bench_body(body_size)
    # a subscriber Broker with thousands of subscriptions is slow to set up (its own
    # MemoryRegistry scans every service per subscription): TOPICS_PER_NODE per process
    full, rest = divmod(topics, TOPICS_PER_NODE)
    layout = [TOPICS_PER_NODE] * full + ([rest] if rest else [])
    with SubscriberNodes(layout, distinct_topics=True, h2=h2) as subs:
        names = [t for node_topics in subs.topics for t in node_topics]
        wall = [float("nan")]  # publishing + flushing, every burst
        cpu_per_call: list[float] = []
        cpu_per_message: list[float] = []

        async def run() -> tuple[list[float], list[float], dict[str, Any], float]:
            t0 = time.perf_counter()
            broker = await connected_publisher(subs, timeout=120.0, registry=IndexedRegistry())
            setup = time.perf_counter() - t0
            try:
                t1 = time.perf_counter()
                per_call, per_message = await _publish_round_robin(
                    broker, names, calls, many, body, timeout, cpu_per_call, cpu_per_message
                )
                wall[0] = time.perf_counter() - t1
                return per_call, per_message, broker.stats(), setup
            finally:
                await broker.disconnect(timeout=1)

        per_call, per_message, stats, setup = _procs.run_on_own_loop(run)
        reports = subs.stop_and_collect()
    counts = [c for r in reports for c in r[1]]
    expected = _expected(topics, calls, many)
    us_call = statistics.median(per_call) * 1e6
    us_many = statistics.median(per_message) * 1e6 if per_message else float("nan")
    return {
        "topics": topics,
        "h2": h2,
        "calls": calls,
        "many_messages": many,
        "body_size": body_size,
        "expected": sum(expected),
        "received": sum(counts),
        "loss": sum(expected) - sum(counts),
        "mismatched": sum(1 for c, e in zip(counts, expected, strict=True) if c != e),
        "dropped": stats.get("dropped", 0),
        "route_setup_seconds": setup,
        "us_per_publish": us_call,
        "us_per_publish_mean": sum(per_call) / len(per_call) * 1e6,
        "us_cpu_per_publish": statistics.median(cpu_per_call) * 1e6,
        "us_per_message_many": us_many,
        "us_cpu_per_message_many": statistics.median(cpu_per_message) * 1e6 if cpu_per_message else float("nan"),
        "delivery_rate": (calls + many) / wall[0],
        # ``rate`` so that bench_runs.summary() can take its median like any other figure
        "rate": 1e6 / us_call,
    }


# --- figures, targets, curves.json -----------------------------------------------------------

#: Every figure of the run, by section (see benches/README.md for the layout of curves.json).
FIGURES: dict[str, dict[str, Any]] = {"zmq": {}, "size": {}, "memcpy": {}, "topics": {}, "topics_h2": {}, "fanout": {}}


def targets(figs: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 12 with their measured ratio (None if not measured) and whether met.
    Reported and written, never asserted."""
    out: list[dict[str, Any]] = []

    def ratio(name: str, num: Any, den: Any, threshold: float, kind: str) -> None:
        value = num / den if num is not None and den else None
        met = None if value is None else (value >= threshold if kind == "ratio >=" else value <= threshold)
        out.append({"target": name, "value": value, "threshold": threshold, "met": met, "kind": kind})

    for size in ("128", str(16 * KIB)):
        ratio(
            f"1:1 {size} B: hyperbroker / zmq PUSH/PULL",
            _get(figs, "zmq", size, "hyperbroker", "rate"),
            _get(figs, "zmq", size, "push_pull", "rate"),
            1.0,
            "ratio >=",
        )
    last, first = str(TOPIC_COUNTS[-1]), str(TOPIC_COUNTS[0])
    for section, nodes in (("topics", ""), ("topics_h2", " (nodes announce h2)")):
        for key, what in (
            ("us_per_publish", "publish() per call"),
            ("us_cpu_per_publish", "publish() publishing-thread CPU per call"),
            ("us_per_message_many", "publish_many per message"),
            ("us_cpu_per_message_many", "publish_many publishing-thread CPU per message"),
        ):
            ratio(
                f"{what}: {last} topics / {first} topic{nodes}",
                _get(figs, section, last, key),
                _get(figs, section, first, key),
                1.2,
                "ratio <=",
            )
    return out


def target_lines(figs: dict[str, Any], tag: str = "") -> list[str]:
    lines = []
    for t in targets(figs):
        if t["value"] is None:
            continue
        status = "met" if t["met"] else "MISSED"
        lines.append(f"[target] {t['target']} {t['kind']} {t['threshold']:g}: {t['value']:.2f}x -> {status}{tag}")
    return lines


def save(sections: dict[str, bool], measuring: bool, png_dir: Path = HERE) -> list[str]:
    """Merge the complete ``sections`` (name -> complete?) of :data:`FIGURES` into
    curves.json (measured runs only; an incomplete section keeps its previous figures), and draw
    the PNGs whose figures are in it. Returns report lines. In a smoke run nothing is written
    to benches/: the PNGs are drawn to ``png_dir`` (a temporary directory) to exercise the
    drawing code."""
    lines: list[str] = []
    data: dict[str, Any] = {}
    if measuring and CURVES_JSON.exists():
        try:
            data = json.loads(CURVES_JSON.read_text())
        except (OSError, ValueError) as e:
            lines.append(f"curves.json unreadable ({e!r}): rewritten")
            data = {}
    written = [name for name, complete in sections.items() if complete]
    missing = [name for name, complete in sections.items() if not complete]
    for name in written:
        data[name] = FIGURES[name]
    if missing:
        lines.append(f"curves.json sections NOT updated (figures missing): {', '.join(missing)}")
    data["meta"] = machine(measuring)
    data["targets"] = targets(data)
    data = finite(data)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    if measuring and written:
        CURVES_JSON.write_text(text)
        lines.append(f"curves.json: wrote {', '.join(written)}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        lines.append("curve plots skipped: matplotlib is not installed (pip install '.[bench]')")
        return lines
    import plot_curves

    lines.extend(f"plot written to {path}" for path in plot_curves.draw_all(json.loads(text), png_dir))
    return lines
