"""A pyzmq baseline: PUSH/PULL and PUB/SUB between two processes on 127.0.0.1 TCP.

What a competent engineer would write with pyzmq for "send these messages to that process",
as the floor of what a Python-facing messaging library can do per message:

* the receiver is a spawned process that binds a PULL (or SUB, subscribed to everything)
  socket at a free port on 127.0.0.1 and calls ``sock.recv()`` once per message in a plain
  loop, counting (one Python call per received message, as a hyperbroker handler is one);
* the sender (the calling process) connects a PUSH (or PUB) socket and calls ``sock.send(body)``
  in a tight loop (libzmq queues and writes from its I/O thread; bodies of 64 KiB and more are
  sent without a copy, pyzmq's default ``copy_threshold``);
* high-water marks are off on both sides (``SNDHWM = RCVHWM = 0``: unbounded queues), so
  neither PUSH blocks nor PUB drops: nothing is lost once connected;
* PUB/SUB drops what is published before the subscription reached the publisher (the "slow
  joiner"): the sender waits :data:`SLOW_JOINER_S` after connecting before it publishes.

``seconds`` runs from the first ``send`` to the receiver's last expected message
(``time.perf_counter()``, CLOCK_MONOTONIC on Linux: comparable across processes), as for the
nats baseline; ``rate = n / seconds``; ``loss = n - received``. The receiver ends when it has
``n`` messages or when nothing arrived for ``idle_s`` seconds (a bounded wait for the count);
the whole run is bounded by ``deadline_s``.

Receiver protocol (one duplex Pipe): child -> parent ``("ready", port)`` once bound, then
``("done", count, first_ts, last_ts)``; ``("error", repr(exc))`` if it failed. Imported as a
top-level module (``import baseline_zmq``); only 127.0.0.1 is used and the receiver process is
always stopped.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

import _procs
from hb_throughput import bench_body

__all__ = ["PATTERNS", "SLOW_JOINER_S", "measure_zmq_throughput", "run_receiver"]

#: pattern name -> (sender socket type, receiver socket type), as pyzmq constant names
PATTERNS = {"push_pull": ("PUSH", "PULL"), "pub_sub": ("PUB", "SUB")}
#: What the PUB sender waits after connecting, so the SUB's subscription has reached it.
SLOW_JOINER_S = 0.5
DEFAULT_DEADLINE_S = 120.0
#: The receiver gives up when nothing arrived for this long after its first message.
DEFAULT_IDLE_S = 2.0
READY_TIMEOUT_S = 60.0


def run_receiver(conn: Connection, pattern: str, expected: int, deadline_s: float, idle_s: float) -> None:
    """Spawn target: bind, report the port, count ``expected`` messages with ``sock.recv()``."""
    with _procs.child_reporting(conn):
        _receive(conn, pattern, expected, deadline_s, idle_s)


def _receive(conn: Connection, pattern: str, expected: int, deadline_s: float, idle_s: float) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(getattr(zmq, PATTERNS[pattern][1]))
    try:
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        if pattern == "pub_sub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        port = sock.bind_to_random_port(f"tcp://{_procs.LOCALHOST}")
        conn.send(("ready", port))
        count = 0
        first: float | None = None
        last: float | None = None
        recv = sock.recv
        perf_counter = time.perf_counter
        sock.setsockopt(zmq.RCVTIMEO, int(deadline_s * 1000))
        try:
            if expected > 0:
                recv()
                first = perf_counter()
                count = 1
                sock.setsockopt(zmq.RCVTIMEO, int(idle_s * 1000))
                while count < expected:
                    recv()
                    count += 1
                last = perf_counter()
        except zmq.Again:
            if count:  # lost messages: the last one came (at most) idle_s before the timeout
                last = perf_counter() - idle_s
        conn.send(("done", count, first, last))
    finally:
        sock.close(linger=0)
        ctx.term()


def measure_zmq_throughput(
    pattern: str,
    n: int,
    body_size: int,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    idle_s: float = DEFAULT_IDLE_S,
) -> dict[str, Any]:
    """Send ``n`` bodies of ``body_size`` bytes from this process to a receiver process over
    ``pattern`` (``"push_pull"`` or ``"pub_sub"``). Returns ``rate`` (msg/s), ``mb_per_s``,
    ``received``, ``loss``, ``seconds`` (first send -> last message received) and
    ``send_seconds`` (the sender's loop alone)."""
    import zmq

    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {sorted(PATTERNS)}, got {pattern!r}")
    if n < 1 or body_size < 0:
        raise ValueError("need n >= 1, body_size >= 0")
    body = bench_body(body_size)
    ctx = _procs.spawn_ctx()
    parent_end, child_end = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=run_receiver,
        args=(child_end, pattern, n, deadline_s, idle_s),
        name=f"zmq-{pattern}-receiver",
        daemon=True,
    )
    proc.start()
    child_end.close()
    zctx = zmq.Context()
    sock = zctx.socket(getattr(zmq, PATTERNS[pattern][0]))
    try:
        reply = _procs.recv_with_timeout(parent_end, READY_TIMEOUT_S, "'ready'", proc)
        if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "ready"):
            raise RuntimeError(f"zmq receiver failed to start: {reply!r}")
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{_procs.LOCALHOST}:{reply[1]}")
        if pattern == "pub_sub":
            time.sleep(SLOW_JOINER_S)
        send = sock.send
        t0 = time.perf_counter()
        for _ in range(n):
            send(body)
        t_sent = time.perf_counter()
        report = _procs.recv_with_timeout(parent_end, deadline_s + idle_s + 10.0, "the 'done' report", proc)
        if not (isinstance(report, tuple) and len(report) == 4 and report[0] == "done"):
            raise RuntimeError(f"unexpected report from the zmq receiver: {report!r}")
    finally:
        sock.close(linger=0)
        zctx.term()
        parent_end.close()
        _procs.stop_process(proc, timeout=5.0)
    _, received, _first, last = report
    seconds = (last - t0) if last is not None else float("nan")
    rate = n / seconds if seconds > 0 else float("nan")
    return {
        "pattern": pattern,
        "messages": n,
        "body_size": body_size,
        "received": received,
        "loss": n - received,
        "seconds": seconds,
        "send_seconds": t_sent - t0,
        "rate": rate,
        "mb_per_s": rate * body_size / 1e6,
    }


if __name__ == "__main__":  # pragma: no cover - manual run: cd benches && python baseline_zmq.py
    for pat in PATTERNS:
        for size, count in ((128, 300_000), (1024, 300_000), (16 * 1024, 30_000)):
            r = measure_zmq_throughput(pat, count, size)
            print(f"{pat:>9} {size:>6} B: {r['rate']:>10,.0f} msg/s ({r['mb_per_s']:,.1f} MB/s) loss={r['loss']}")
