"""CPU cost of the nats-py baseline, 1:1: nats-server + publisher + subscriber process.

Reuses baseline_nats's publisher and subscriber code unchanged; only the accounting is added:

* nats-server: ``utime + stime`` from ``/proc/<pid>/stat`` (clock ticks, all threads) read just
  before the first publish and after the subscriber reported its last message;
* publisher (this process): ``getrusage(RUSAGE_SELF)`` around connect + publish + flush
  (this process runs nothing else meanwhile);
* subscriber process: ``getrusage(RUSAGE_SELF)`` in the child from "ready" (connected and
  subscribed) to its "done" report, appended to that report by a thin wrapper around the
  baseline's subscriber.

Linux only (``/proc``). Imported as a top-level module (``import nats_cpu``).
"""

from __future__ import annotations

import os
import resource
from multiprocessing.connection import Connection
from typing import Any

import _procs
import baseline_nats

__all__ = ["measure_nats_cpu", "proc_cpu_seconds"]


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("ascii", "replace")
    fields = data[data.rindex(")") + 2 :].split()  # after "pid (comm) "; fields[0] is state
    utime, stime = int(fields[11]), int(fields[12])  # stat fields 14 and 15
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class _CpuConn:
    """Wraps the child's Pipe end: notes the CPU at "ready", appends the delta to "done"."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cpu0: float | None = None

    def send(self, obj: Any) -> None:
        if isinstance(obj, tuple) and obj:
            if obj[0] == "ready":
                self._cpu0 = _self_cpu()
            elif obj[0] == "done" and self._cpu0 is not None:
                obj = (*obj, _self_cpu() - self._cpu0)
        self._conn.send(obj)

    def poll(self, timeout: float = 0.0) -> bool:
        return self._conn.poll(timeout)

    def recv(self) -> Any:
        return self._conn.recv()

    def close(self) -> None:
        self._conn.close()


def _subscriber_with_cpu(conn: Connection, url: str, expected: int, deadline_s: float) -> None:
    """Spawn target: baseline_nats's subscriber, reporting its CPU as the last "done" field."""
    baseline_nats.run_subscriber_process(_CpuConn(conn), url, expected, deadline_s=deadline_s)  # type: ignore[arg-type]


def measure_nats_cpu(
    server: baseline_nats.NatsServer, n: int, body_size: int = 128, *, timeout: float = 120.0
) -> dict[str, Any]:
    """1:1 through ``server`` (a started :class:`baseline_nats.NatsServer`): publish ``n``
    messages back to back, flush, wait for the subscriber's last message. Returns the rate (as
    ``measure_nats_throughput``), loss and CPU seconds of server, publisher and subscriber, and
    ``cpu_s_per_million`` (their sum per million messages)."""
    if server.proc is None:
        raise RuntimeError("the nats server is not running")
    url = server.url
    server_pid = server.proc.pid
    body = baseline_nats._bench_body(body_size)
    ctx = _procs.spawn_ctx()
    parent_end, child_end = ctx.Pipe(duplex=True)
    proc = ctx.Process(
        target=_subscriber_with_cpu, args=(child_end, url, n, timeout), name="nats-cpu-subscriber", daemon=True
    )
    proc.start()
    child_end.close()
    ok = False
    try:
        reply = _procs.recv_with_timeout(parent_end, baseline_nats.READY_TIMEOUT_S, "'ready'", proc)
        if reply != ("ready",):
            raise RuntimeError(f"nats subscriber failed to start: {reply!r}")
        srv0 = proc_cpu_seconds(server_pid)
        pub0 = _self_cpu()
        t0, t_flushed = _procs.run_on_own_loop(lambda: baseline_nats._publish_burst(url, n, body, timeout))
        pub_cpu = _self_cpu() - pub0
        try:
            parent_end.send(("published",))
        except (OSError, ValueError):
            pass  # the subscriber already had every message, reported and closed its end
        report = _procs.recv_with_timeout(parent_end, timeout + 10.0, "the 'done' report", proc)
        srv_cpu = proc_cpu_seconds(server_pid) - srv0
        if not (isinstance(report, tuple) and len(report) == 5 and report[0] == "done"):
            raise RuntimeError(f"unexpected report from the nats subscriber: {report!r}")
        ok = True
    finally:
        if not ok:
            try:
                parent_end.send(("stop",))
            except (OSError, ValueError):
                pass
        parent_end.close()
        _procs.stop_process(proc, timeout=5.0 if ok else 1.0)
    _, received, _first, last, sub_cpu = report
    seconds = (last - t0) if last is not None else float("nan")
    cpu = srv_cpu + pub_cpu + sub_cpu
    return {
        "messages": n,
        "body_size": body_size,
        "received": received,
        "loss": n - received,
        "seconds": seconds,
        "publish_seconds": t_flushed - t0,
        "rate": n / seconds if seconds > 0 else float("nan"),
        "server_cpu": srv_cpu,
        "publisher_cpu": pub_cpu,
        "subscriber_cpu": sub_cpu,
        "cpu": cpu,
        "cpu_s_per_million": cpu / n * 1e6,
    }


if __name__ == "__main__":  # pragma: no cover - manual run: cd benches && python nats_cpu.py
    with baseline_nats.NatsServer() as srv:
        print(measure_nats_cpu(srv, 200_000))
