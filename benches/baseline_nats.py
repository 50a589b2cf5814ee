"""A nats-py baseline: what hyperbroker's pub/sub figures are compared against.

It is meant to be what a competent engineer would write with nats-py, not a strawman:

* a local ``nats-server`` (no cluster, no monitoring, bound to 127.0.0.1 only) started by
  :class:`NatsServer`;
* every process runs on uvloop; the publisher calls ``nc.publish`` in a tight loop (nats-py
  only buffers the PUB, so there is no per-message await of the network: the buffer is written
  by nats-py's flusher task, and ``publish`` only waits when its 2 MiB pending buffer is full)
  and ends with one ``nc.flush()`` (PING/PONG: everything reached the server);
* subscribers are separate spawned processes with a message callback, and their pending limits
  are lifted (``pending_msgs_limit=0, pending_bytes_limit=0``: unbounded) so nats-py never drops
  a message as a slow consumer.

Subscriber protocol (one duplex Pipe per subscriber process): the child connects, subscribes,
``await nc.flush()`` so the server has the subscription, then sends ``("ready",)``. The parent
publishes, flushes and sends ``("published",)``. The child sends ``("done", count, first_ts,
last_ts)`` (``time.perf_counter()`` of its first and last message, None if none arrived; the
clock is CLOCK_MONOTONIC on Linux, so comparable across processes) as soon as it has the
messages it expects, or when nothing arrived for ``idle_s`` seconds after ``published``
(losses, or a queue-group member that does not know its share), or at a hard deadline, or on
``("stop",)``. A child that fails sends ``("error", repr(exc))``.

Imported as a top-level module (``import baseline_nats``) by the benches, whose conftest puts
``benches/`` on ``sys.path``. Only 127.0.0.1 is used, every wait is bounded in time, and every
process started here is stopped, also on errors. If ``nats-server`` is not installed,
:func:`nats_server_path` returns None and :func:`skip_reason` says why: that is the one reason
a bench using this module may skip.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import _procs

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we bench
    uvloop = None  # type: ignore[assignment]

__all__ = [
    "NatsServer",
    "measure_nats_latency",
    "measure_nats_queue_group",
    "measure_nats_throughput",
    "nats_server_path",
    "run_subscriber_process",
    "skip_reason",
]

T = TypeVar("T")

SUBJECT = "bench.nats"
QUEUE_GROUP = "bench-workers"

#: Upper bound on the life of a subscriber process and on one measurement.
DEFAULT_DEADLINE_S = 120.0
#: How long a subscriber waits without a message, once everything was published and flushed,
#: before it reports what it has (only reached when messages were lost, or in a queue group).
DEFAULT_IDLE_S = 2.0
#: Time allowed for a spawned subscriber to import nats, connect and subscribe.
READY_TIMEOUT_S = 60.0
#: Default places to look for the server binary (Debian installs it in /usr/sbin).
_SERVER_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")

_TS = struct.Struct("<d")  # the latency bench's body starts with the send time


# --- server --------------------------------------------------------------------------------


def nats_server_path() -> str | None:
    """Path of the ``nats-server`` binary: ``$NATS_SERVER`` if set, else ``PATH``, else the usual
    install locations (Debian: /usr/sbin, which is not on every user's PATH). None if absent."""
    env = os.environ.get("NATS_SERVER")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    found = shutil.which("nats-server")
    if found:
        return found
    for cand in _SERVER_CANDIDATES:
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def skip_reason() -> str | None:
    """Why a NATS bench cannot run here (None if it can): the only allowed reason to skip."""
    if nats_server_path() is None:
        return (
            "nats-server not found (looked at $NATS_SERVER, PATH, "
            + ", ".join(_SERVER_CANDIDATES)
            + "); install it, e.g. `apt-get install nats-server`"
        )
    return None


class NatsServer:
    """A ``nats-server`` on 127.0.0.1 at a free port, for the duration of a ``with`` block.

    No cluster, no monitoring port. ``__enter__`` returns once the server accepts TCP
    connections (at most ``start_timeout`` seconds); ``__exit__`` terminates it, then kills it
    if it does not exit within ``stop_timeout`` seconds. ``url`` is ``nats://127.0.0.1:PORT``.
    """

    def __init__(
        self,
        *,
        path: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.path = path or nats_server_path()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_args = tuple(extra_args)
        self.host = _procs.LOCALHOST
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("NatsServer not started")
        return f"nats://{self.host}:{self.port}"

    def start(self) -> str:
        if self.proc is not None:
            raise RuntimeError("NatsServer already started")
        if self.path is None:
            raise FileNotFoundError(skip_reason())
        last_error: Exception | None = None
        # free_port() is racy (another process may take the port before the server binds it):
        # a few attempts, each bounded by start_timeout.
        for _ in range(3):
            try:
                self._start_once()
                return self.url
            except _PortInUse as e:
                last_error = e
        raise RuntimeError(f"nats-server could not bind a free port: {last_error}")

    def _start_once(self) -> None:
        path = self.path
        assert path is not None  # start() checked
        port = _procs.free_port(self.host)
        # the server's log lives as long as the server; stop() closes it
        self._log = tempfile.TemporaryFile(prefix="nats-server-", suffix=".log")  # noqa: SIM115
        cmd = [path, "-a", self.host, "-p", str(port), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.port = port
        try:
            deadline = time.monotonic() + self.start_timeout
            while True:
                if self.proc.poll() is not None:
                    log = self._read_log()
                    if "address already in use" in log.lower():
                        raise _PortInUse(f"port {port}: {log.strip()[-300:]}")
                    raise RuntimeError(
                        f"nats-server exited with code {self.proc.returncode} at start-up:\n{log[-2000:]}"
                    )
                try:
                    with socket.create_connection((self.host, port), timeout=0.5):
                        return
                except OSError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"nats-server did not accept connections on {self.host}:{port} within "
                        f"{self.start_timeout:.0f}s:\n{self._read_log()[-2000:]}"
                    )
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0)
            data: bytes = self._log.read()
            return data.decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def stop(self) -> int | None:
        """Terminate the server (SIGTERM), then kill it if it lingers. Idempotent."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(5.0)
                    except subprocess.TimeoutExpired:  # pragma: no cover - unkillable
                        pass
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = None
        return code

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortInUse(RuntimeError):
    pass


# --- event loops ---------------------------------------------------------------------------


async def _connect(url: str, name: str, errors: list[str] | None = None) -> Any:
    import nats

    async def error_cb(e: Exception) -> None:
        if errors is not None and len(errors) < 20:
            errors.append(repr(e))

    connect = nats.connect(
        url,
        name=name,
        allow_reconnect=False,  # a lost connection must show up as loss, not be papered over
        connect_timeout=5,
        # the initial connect retries too: once, not nats-py's default 60 times 2 s
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        error_cb=error_cb,
        # generous, so a PONG queued behind megabytes of MSGs is not a "stale connection"
        ping_interval=60,
        max_outstanding_pings=5,
    )
    return await asyncio.wait_for(connect, 15.0)


# --- subscriber process --------------------------------------------------------------------


def run_subscriber_process(
    conn: Connection,
    url: str,
    expected: int | None,
    queue: str = "",
    mode: str = "count",
    deadline_s: float = DEFAULT_DEADLINE_S,
    idle_s: float = DEFAULT_IDLE_S,
    subject: str = SUBJECT,
) -> None:
    """``multiprocessing`` target (spawn-safe): subscribe to ``subject`` (in queue group
    ``queue`` if given) with a counting callback, and report as described in the module
    docstring. ``expected`` None means "unknown share" (queue group): report on idle.
    ``mode="latency"`` also records ``receive perf_counter - send perf_counter`` (the first 8
    bytes of each body) and sends the list as a fifth element of the "done" report.
    """
    _procs.run_child(conn, _subscriber_main(conn, url, expected, queue, mode, deadline_s, idle_s, subject))


async def _subscriber_main(
    conn: Connection,
    url: str,
    expected: int | None,
    queue: str,
    mode: str,
    deadline_s: float,
    idle_s: float,
    subject: str,
) -> None:
    hard_deadline = time.monotonic() + deadline_s
    perf_counter = time.perf_counter
    unpack_ts = _TS.unpack_from
    count = 0
    first_ts: float | None = None
    last_ts: float | None = None
    latencies: list[float] = []
    done = asyncio.Event()
    target = expected if expected is not None else -1
    if target == 0:
        done.set()

    if mode == "latency":

        async def on_msg(msg: Any) -> None:
            nonlocal count, first_ts, last_ts
            now = perf_counter()
            latencies.append(now - unpack_ts(msg.data)[0])
            if first_ts is None:
                first_ts = now
            last_ts = now
            count += 1
            if count == target:
                done.set()

    elif target > 0:

        async def on_msg(msg: Any) -> None:
            # the clock at the first and the last message only, as the hyperbroker and zmq
            # receivers read it
            nonlocal count, first_ts, last_ts
            count += 1
            if count == 1:
                first_ts = perf_counter()
            if count == target:
                last_ts = perf_counter()
                done.set()

    else:  # no count to wait for: the last message is whichever came last

        async def on_msg(msg: Any) -> None:
            nonlocal count, first_ts, last_ts
            now = perf_counter()
            if first_ts is None:
                first_ts = now
            last_ts = now
            count += 1

    errors: list[str] = []
    nc = await _connect(url, f"bench-sub-{os.getpid()}", errors)
    try:
        await nc.subscribe(subject, queue=queue, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
        await nc.flush(timeout=10)  # the server has processed SUB before we say "ready"
        conn.send(("ready",))

        published_at: float | None = None
        seen = -1
        last_progress = time.monotonic()
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), 0.05)
                break
            except TimeoutError:
                pass
            now = time.monotonic()
            if now >= hard_deadline:
                break
            if count != seen:
                seen, last_progress = count, now
            if conn.poll(0):
                cmd = conn.recv()
                if cmd == ("stop",):
                    break
                if cmd == ("published",):
                    published_at = now
            if published_at is not None and now - max(last_progress, published_at) >= idle_s:
                break
            if nc.is_closed:  # lost the server: nothing more will come
                break
        if errors:
            print(f"nats subscriber {os.getpid()}: {errors}", file=sys.stderr)
        if count and last_ts is None:  # some never came: the last one came when progress stopped
            last_ts = perf_counter() - (time.monotonic() - last_progress)
        report: tuple[Any, ...] = ("done", count, first_ts, last_ts)
        if mode == "latency":
            report += (latencies,)
        conn.send(report)
    finally:
        try:
            await asyncio.wait_for(nc.close(), 5.0)
        except Exception:
            pass


class _Subscribers:
    """``k`` subscriber processes (context manager: always stopped on exit)."""

    def __init__(
        self,
        url: str,
        k: int,
        expected: int | None,
        *,
        queue: str = "",
        mode: str = "count",
        deadline_s: float = DEFAULT_DEADLINE_S,
        idle_s: float = DEFAULT_IDLE_S,
    ) -> None:
        self.deadline_s = deadline_s
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self._ok = False
        ctx = _procs.spawn_ctx()
        try:
            for i in range(k):
                parent_end, child_end = ctx.Pipe(duplex=True)
                self.conns.append(parent_end)
                proc = ctx.Process(
                    target=run_subscriber_process,
                    args=(child_end, url, expected, queue, mode, deadline_s, idle_s),
                    name=f"nats-baseline-subscriber-{i}",
                    daemon=True,
                )
                self.procs.append(proc)
                proc.start()
                child_end.close()  # keep only the child's copy, so a dead child reads as EOF
            for conn, proc in zip(self.conns, self.procs, strict=False):
                reply = _procs.recv_with_timeout(conn, READY_TIMEOUT_S, "'ready'", proc)
                if reply != ("ready",):
                    raise RuntimeError(f"nats subscriber failed to start: {reply!r}")
        except BaseException:
            self.close()
            raise

    def broadcast(self, msg: tuple[Any, ...]) -> None:
        for conn in self.conns:
            try:
                conn.send(msg)
            except (OSError, ValueError):  # child already gone: its report (or EOF) tells
                pass

    def wait_done(self) -> list[tuple[Any, ...]]:
        """The ``done`` reports of every subscriber, in order (bounded by the deadline)."""
        reports = []
        end = time.monotonic() + self.deadline_s + 10.0
        for conn, proc in zip(self.conns, self.procs, strict=False):
            remaining = max(1.0, end - time.monotonic())
            report = _procs.recv_with_timeout(conn, remaining, "the 'done' report", proc)
            if not (isinstance(report, tuple) and report and report[0] == "done"):
                raise RuntimeError(f"unexpected report from a nats subscriber: {report!r}")
            reports.append(report)
        self._ok = True
        return reports

    def close(self) -> None:
        if not self._ok:
            self.broadcast(("stop",))
        for conn in self.conns:
            conn.close()
        for proc in self.procs:
            _procs.stop_process(proc, timeout=5.0 if self._ok else 1.0)

    def __enter__(self) -> _Subscribers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- publisher -----------------------------------------------------------------------------


def _bench_body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def _publish_burst(url: str, n: int, body: bytes, timeout: float) -> tuple[float, float]:
    """Connect, publish ``n`` copies of ``body`` back to back, flush. Returns (t0, t_flushed)."""
    nc = await _connect(url, "bench-pub")
    try:
        async with asyncio.timeout(timeout):
            publish = nc.publish
            subject = SUBJECT
            t0 = time.perf_counter()
            for _ in range(n):
                await publish(subject, body)  # buffers; awaits the socket only when 2 MiB pend
            await nc.flush(timeout=max(1, int(timeout)))
            return t0, time.perf_counter()
    finally:
        await asyncio.wait_for(nc.close(), 5.0)


async def _publish_paced(
    url: str, total: int, rate_per_s: float, body_size: int, timeout: float
) -> tuple[float, float]:
    """Open-loop publisher: message i goes out at t0 + i / rate, its body starting with the
    ``perf_counter()`` read just before ``publish``. Sleeping between messages lets nats-py's
    flusher write each one at once (no ``flush`` round trip per message)."""
    nc = await _connect(url, "bench-pub-latency")
    pad = _bench_body(max(0, body_size - _TS.size))
    pack = _TS.pack
    perf_counter = time.perf_counter
    try:
        async with asyncio.timeout(timeout):
            publish = nc.publish
            subject = SUBJECT
            interval = 1.0 / rate_per_s
            t0 = perf_counter()
            for i in range(total):
                delay = t0 + i * interval - perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)  # behind schedule: still let the flusher run
                await publish(subject, pack(perf_counter()) + pad)
            await nc.flush(timeout=max(1, int(timeout)))
            return t0, perf_counter()
    finally:
        await asyncio.wait_for(nc.close(), 5.0)


# --- measurements --------------------------------------------------------------------------


def measure_nats_throughput(
    url: str,
    n: int,
    body_size: int,
    subscribers: int = 1,
    *,
    timeout: float = DEFAULT_DEADLINE_S,
) -> dict[str, Any]:
    """Publish ``n`` messages of ``body_size`` bytes from this process through the server at
    ``url`` to ``subscribers`` subscriber processes (each gets every message).

    ``seconds`` runs from the first publish to the moment the last subscriber received its last
    message; ``rate`` is ``n / seconds`` (messages delivered per second to each subscriber) and
    ``aggregate_rate`` is ``n * subscribers / seconds``. ``loss`` is ``n * subscribers`` minus
    what arrived. Synchronous (runs its own uvloop); bounded by ``timeout`` seconds plus process
    start-up and teardown.
    """
    if n < 1 or body_size < 0 or subscribers < 1:
        raise ValueError("need n >= 1, body_size >= 0, subscribers >= 1")
    body = _bench_body(body_size)
    with _Subscribers(url, subscribers, n, deadline_s=timeout) as subs:
        t0, t_flushed = _procs.run_on_own_loop(lambda: _publish_burst(url, n, body, timeout))
        subs.broadcast(("published",))
        reports = subs.wait_done()
    received = [r[1] for r in reports]
    lasts = [r[3] for r in reports if r[3] is not None]
    seconds = (max(lasts) - t0) if lasts else float("nan")
    return {
        "messages": n,
        "body_size": body_size,
        "subscribers": subscribers,
        "received": received,
        "seconds": seconds,
        "publish_seconds": t_flushed - t0,
        "rate": n / seconds if seconds > 0 else float("nan"),
        "aggregate_rate": n * subscribers / seconds if seconds > 0 else float("nan"),
        "loss": n * subscribers - sum(received),
    }


def measure_nats_queue_group(
    url: str,
    n: int,
    members: int = 4,
    body_size: int = 128,
    *,
    timeout: float = DEFAULT_DEADLINE_S,
) -> dict[str, Any]:
    """Publish ``n`` messages to ``members`` subscriber processes in one queue group (each
    message goes to one member). Returns per-member ``received`` counts, ``fairness`` (max/min
    count; inf if a member got nothing), ``loss`` (``n - sum``), ``seconds`` (first publish to
    the last message received by any member) and ``rate`` (``n / seconds``).

    A member does not know its share, so it reports once nothing arrived for a moment after the
    publisher flushed; its timestamps are taken in the callback, so the wait does not count.
    """
    if n < 1 or members < 1 or body_size < 0:
        raise ValueError("need n >= 1, members >= 1, body_size >= 0")
    body = _bench_body(body_size)
    with _Subscribers(url, members, None, queue=QUEUE_GROUP, deadline_s=timeout, idle_s=1.0) as subs:
        t0, t_flushed = _procs.run_on_own_loop(lambda: _publish_burst(url, n, body, timeout))
        subs.broadcast(("published",))
        reports = subs.wait_done()
    received = [r[1] for r in reports]
    lasts = [r[3] for r in reports if r[3] is not None]
    seconds = (max(lasts) - t0) if lasts else float("nan")
    lo, hi = min(received), max(received)
    return {
        "messages": n,
        "body_size": body_size,
        "members": members,
        "received": received,
        "fairness": hi / lo if lo > 0 else float("inf"),
        "loss": n - sum(received),
        "seconds": seconds,
        "publish_seconds": t_flushed - t0,
        "rate": n / seconds if seconds > 0 else float("nan"),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 1]) of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def measure_nats_latency(
    url: str,
    rate_per_s: float = 1000,
    seconds: float = 3.0,
    body_size: int = 128,
    *,
    warmup: int = 100,
    timeout: float = DEFAULT_DEADLINE_S,
) -> dict[str, Any]:
    """One-way latency publisher -> server -> subscriber process at a fixed ``rate_per_s``
    for ``seconds`` (after ``warmup`` messages that are sent the same way but not counted).

    Each body (``max(body_size, 8)`` bytes) carries its send ``perf_counter()``; the subscriber
    records receive time minus send time. Returns ``count`` and ``p50_us``, ``p99_us``,
    ``p999_us`` (plus ``mean_us`` and ``max_us``) in microseconds, ``loss``, and
    ``latencies_us`` (the counted samples, sorted).
    """
    if rate_per_s <= 0 or seconds <= 0 or warmup < 0:
        raise ValueError("need rate_per_s > 0, seconds > 0, warmup >= 0")
    count = int(rate_per_s * seconds)
    total = warmup + count
    with _Subscribers(url, 1, total, mode="latency", deadline_s=timeout) as subs:
        t0, t_end = _procs.run_on_own_loop(lambda: _publish_paced(url, total, rate_per_s, body_size, timeout))
        subs.broadcast(("published",))
        (report,) = subs.wait_done()
    lat = sorted(report[4][warmup:])
    us = [v * 1e6 for v in lat]
    return {
        "count": len(us),
        "sent": count,
        "loss": total - report[1],
        "rate_per_s": rate_per_s,
        "achieved_rate_per_s": total / (t_end - t0) if t_end > t0 else float("nan"),
        "body_size": max(body_size, _TS.size),
        "p50_us": _percentile(us, 0.50),
        "p99_us": _percentile(us, 0.99),
        "p999_us": _percentile(us, 0.999),
        "mean_us": sum(us) / len(us) if us else float("nan"),
        "max_us": us[-1] if us else float("nan"),
        "latencies_us": us,
    }


# --- manual run ----------------------------------------------------------------------------


def _main() -> int:  # pragma: no cover - manual run: cd benches && python baseline_nats.py
    reason = skip_reason()
    if reason:
        print(f"skipping: {reason}", file=sys.stderr)
        return 0
    sizes = ((16, 200_000), (128, 200_000), (1024, 100_000), (16 * 1024, 20_000))
    with NatsServer() as server:
        print(f"nats-server at {server.url}")
        for size, n in sizes:
            r = measure_nats_throughput(server.url, n, size)
            print(
                f"1 sub  {size:>6} B  n={n:>7}: {r['rate']:>10,.0f} msg/s "
                f"({r['rate'] * size / 1e6:,.1f} MB/s) loss={r['loss']} "
                f"[publish+flush {r['publish_seconds']:.3f}s, total {r['seconds']:.3f}s]"
            )
        r = measure_nats_throughput(server.url, 50_000, 128, subscribers=10)
        print(
            f"10 subs   128 B  n=  50000: {r['rate']:>10,.0f} msg/s per subscriber, "
            f"{r['aggregate_rate']:,.0f} msg/s delivered in all, loss={r['loss']} "
            f"received={r['received']}"
        )
        r = measure_nats_queue_group(server.url, 100_000)
        print(
            f"queue group of {r['members']}, 128 B n=100000: {r['rate']:,.0f} msg/s, "
            f"per member {r['received']}, fairness max/min {r['fairness']:.3f}, loss={r['loss']}"
        )
        r = measure_nats_latency(server.url)
        print(
            f"latency 128 B @ {r['rate_per_s']:.0f}/s x {r['count']}: p50 {r['p50_us']:.0f} us, "
            f"p99 {r['p99_us']:.0f} us, p99.9 {r['p999_us']:.0f} us "
            f"(mean {r['mean_us']:.0f}, max {r['max_us']:.0f}), loss={r['loss']}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
