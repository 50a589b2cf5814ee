"""The machine's own wake-up jitter: the control of the latency scenario (no broker at all).

A spawned process blocks on a pipe; this process writes its ``perf_counter()`` into the pipe at
a fixed rate (the same open-loop pacing as the latency benches, with ``time.sleep``), and the
child records receive time minus send time: one cross-process wake-up per message, nothing
else. Every broker's one-way latency includes at least one such wake-up (hyperbroker's path has
two thread hand-offs and a network hop, nats' two network hops), so the tail of this distribution is the
floor under theirs on the same machine at the same time: when it reaches milliseconds, so do
theirs, whatever the broker does.

Imported as a top-level module (``import machine_jitter``); only pipes, bounded in time.
"""

from __future__ import annotations

import struct
import time
from multiprocessing.connection import Connection
from typing import Any

import _procs
from hb_scenarios import log_histogram, percentile

__all__ = ["measure_wakeup_jitter"]

_TS = struct.Struct("<d")


def _child(conn: Connection, reply: Connection, total: int, deadline_s: float) -> None:
    """Spawn target: receive ``total`` timestamps (or until the deadline), send back the delays."""
    perf_counter = time.perf_counter
    out: list[float] = []
    end = time.monotonic() + deadline_s
    try:
        while len(out) < total and time.monotonic() < end:
            if conn.poll(0.5):
                out.append(perf_counter() - _TS.unpack(conn.recv_bytes())[0])
        reply.send(out)
    finally:
        conn.close()
        reply.close()


def measure_wakeup_jitter(rate_per_s: float = 1000, seconds: float = 5.0, *, warmup: int = 100) -> dict[str, Any]:
    """One cross-process wake-up per message at ``rate_per_s`` for ``seconds`` (after ``warmup``
    messages not counted). Returns ``count``, ``p50_us``, ``p99_us``, ``p999_us``, ``max_us``,
    ``over_1ms`` and ``histogram`` (:func:`hb_scenarios.log_histogram`)."""
    if rate_per_s <= 0 or seconds <= 0 or warmup < 0:
        raise ValueError("need rate_per_s > 0, seconds > 0, warmup >= 0")
    total = warmup + int(rate_per_s * seconds)
    ctx = _procs.spawn_ctx()
    recv_end, send_end = ctx.Pipe(duplex=False)
    back_recv, back_send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(recv_end, back_send, total, seconds + 60.0), daemon=True)
    proc.start()
    recv_end.close()
    back_send.close()
    try:
        perf_counter = time.perf_counter
        interval = 1.0 / rate_per_s
        time.sleep(0.5)  # let the child import and block on the pipe
        t0 = perf_counter()
        for i in range(total):
            delay = t0 + i * interval - perf_counter()
            if delay > 0:
                time.sleep(delay)
            send_end.send_bytes(_TS.pack(perf_counter()))
        delays = _procs.recv_with_timeout(back_recv, 60.0, "the jitter samples", proc)
    finally:
        send_end.close()
        back_recv.close()
        _procs.stop_process(proc, timeout=5.0)
    us = sorted(v * 1e6 for v in delays[warmup:])
    return {
        "count": len(us),
        "p50_us": percentile(us, 0.50),
        "p99_us": percentile(us, 0.99),
        "p999_us": percentile(us, 0.999),
        "max_us": us[-1] if us else float("nan"),
        "over_1ms": sum(1 for v in us if v > 1000),
        "histogram": log_histogram(us),
    }


if __name__ == "__main__":  # pragma: no cover - manual run: cd benches && python machine_jitter.py
    r = measure_wakeup_jitter()
    print({k: v for k, v in r.items() if k != "histogram"})
