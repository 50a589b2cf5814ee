"""mDNS at scale: N subscriptions on one broker, publishers and a packet counter in other processes.

``measure_mdns_scale(n, rest_window)`` runs the scenario of benches/test_bench_mdns_scale.py and
returns its figures:

- ``register_seq_s`` / ``register_conc_s``: N ``subscribe`` calls one after another / at once
  (asyncio.gather), with the default registry type (MdnsRegistry, bound to 127.0.0.1 here);
- ``seen_seq_s`` / ``seen_conc_s``: from the last subscribe returning until a publisher that is
  already running (another process) routes every topic;
- ``late_seen_s``: a publisher process started afterwards, from its connect until it routes
  every topic (it learns everything from one browse);
- ``unsubscribe_s`` / ``gone_s``: N ``unsubscribe`` calls, and until that publisher has no
  route left;
- ``announce_packets``: mDNS packets on lo while the N subscriptions were announced (three
  rounds; counted by the counter process, which also sees the peers' browsing);
- ``late_join_packets``: packets from the late publisher's start until ``join_window`` seconds
  after it (zeroconf's browser asks at 0, 1, 5 and 14 s, each query carrying every known answer,
  and responders answer what the known answers do not cover; 16 s covers them all);
- ``rest_packets_per_min``: packets per minute at rest (N subscriptions, both publishers
  browsing, the broker's heartbeat re-registering every 30 s), over ``rest_window`` seconds
  right after that.

Everything binds 127.0.0.1 only; run it inside ``unshare -rn`` (a private network namespace)
as CI does. Cross-process times use CLOCK_MONOTONIC (``time.monotonic``), which every process of
the machine shares. Each child is stopped (terminate, then kill) also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import _procs

__all__ = ["measure_mdns_scale"]

LO = "127.0.0.1"
_WAIT = 60.0  # bound on every wait of the scenario (s)


# --- child: a packet counter ------------------------------------------------------------------


def _counter_main(conn: Connection, deadline_s: float) -> None:
    """Count mDNS packets on lo; answer "get" with (responses, queries, bytes); exit on "stop"."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", 5353))
    s.setsockopt(
        socket.IPPROTO_IP,
        socket.IP_ADD_MEMBERSHIP,
        struct.pack("4s4s", socket.inet_aton("224.0.0.251"), socket.inet_aton(LO)),
    )
    responses = queries = size = 0
    conn.send(("ready", time.monotonic()))
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            readable, _, _ = select.select([s, conn], [], [], 0.5)
            if s in readable:
                data = s.recv(9000)
                size += len(data)
                if len(data) >= 12 and data[2] & 0x80:
                    responses += 1
                else:
                    queries += 1
            if conn in readable:
                cmd = conn.recv()
                if cmd == "stop":
                    return
                conn.send((responses, queries, size))
    finally:
        s.close()
        conn.close()


# --- child: a publisher that reports when it routes every topic -------------------------------


async def _watcher(conn: Connection, topics: list[str], deadline_s: float) -> None:
    from hyperbroker import Broker
    from hyperbroker.registry.mdns import MdnsRegistry

    reg = MdnsRegistry(interfaces=[LO])
    b = Broker(address=f"{LO}:0", registry=reg)
    await b.connect()
    conn.send(("ready", time.monotonic()))
    end = time.monotonic() + deadline_s
    last = -1
    try:
        while time.monotonic() < end:
            k = sum(1 for t in topics if b.route_count(t) > 0)
            if k != last and k in (0, len(topics)):
                conn.send(("routed", k, time.monotonic()))
            last = k
            if conn.poll(0) and conn.recv() == "stop":
                break
            await asyncio.sleep(0.005)
        resolver = getattr(reg, "_resolver", None)
        conn.send(("bye", {"resolver_queries": getattr(resolver, "queries_sent", None)}))
    finally:
        await b.disconnect(timeout=0.5)
        await reg.close()


def _watcher_main(conn: Connection, topics: list[str], deadline_s: float) -> None:
    _procs.run_child(conn, _watcher(conn, topics, deadline_s))


# --- parent -----------------------------------------------------------------------------------


class _Child:
    def __init__(self, target: Any, *args: Any, name: str) -> None:
        ctx = _procs.spawn_ctx()
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=target, args=(child_end, *args), name=name, daemon=True)
        self.proc.start()
        child_end.close()
        self.name = name

    def recv(self, what: str, timeout: float = _WAIT) -> Any:
        msg = _procs.recv_with_timeout(self.conn, timeout, what, self.proc)
        if isinstance(msg, tuple) and msg and msg[0] == "error":
            raise RuntimeError(f"{self.name} failed: {msg[1]}")
        return msg

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send("stop")
        _procs.stop_process(self.proc, 10)
        self.conn.close()


@contextlib.contextmanager
def _children() -> Iterator[list[_Child]]:
    made: list[_Child] = []
    try:
        yield made
    finally:
        for c in made:
            c.stop()


async def _wait_routed(child: _Child, count: int) -> float:
    """The monotonic time the watcher reported routing ``count`` topics (waits off the loop)."""
    while True:
        msg = await asyncio.to_thread(child.recv, f"routed == {count}")
        if msg[0] == "routed" and msg[1] == count:
            return float(msg[2])


def _packets(counter: _Child) -> tuple[int, int, int]:
    counter.conn.send("get")
    got: tuple[int, int, int] = counter.recv("packet counts", 10)
    return got


async def _announced(reg: Any) -> None:
    """Until the registry's announcer has nothing due (its three rounds are out)."""
    deadline = time.monotonic() + _WAIT
    while reg.announcer is not None and reg.announcer.pending and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _scenario(n: int, rest_window: float, join_window: float, figures: dict[str, Any]) -> None:
    from hyperbroker import Broker
    from hyperbroker.registry.mdns import MdnsRegistry

    run = uuid.uuid4().hex[:8]
    topics = [f"mdns-scale.{run}.{i:05d}" for i in range(n)]
    life = 4 * _WAIT + rest_window + join_window
    with _children() as children:
        counter = _Child(_counter_main, life, name="mdns-counter")
        children.append(counter)
        counter.recv("counter ready")
        pub = _Child(_watcher_main, topics, life, name="mdns-publisher")
        children.append(pub)
        pub.recv("publisher ready")
        assert pub.recv("routed == 0")[1] == 0

        reg = MdnsRegistry(interfaces=[LO])
        b = Broker(address=f"{LO}:0", registry=reg)
        await b.connect()
        try:
            await reg.list_services()  # the first lookup waits for the first answers (once)

            # 1. one after another
            c0 = _packets(counter)
            t0 = time.monotonic()
            subs = [await b.subscribe(t, lambda ev: None) for t in topics]
            t1 = time.monotonic()
            figures["register_seq_s"] = t1 - t0
            figures["seen_seq_s"] = await _wait_routed(pub, n) - t1
            await _announced(reg)
            await asyncio.sleep(0.5)
            c1 = _packets(counter)
            figures["announce_packets"] = c1[0] + c1[1] - c0[0] - c0[1]
            figures["announce_bytes"] = c1[2] - c0[2]

            # 2. a publisher that starts now
            late = _Child(_watcher_main, topics, life, name="mdns-late-publisher")
            children.append(late)
            _, t_ready = late.recv("late publisher ready")
            c2 = _packets(counter)
            figures["late_seen_s"] = await _wait_routed(late, n) - t_ready
            await asyncio.sleep(max(0.0, t_ready + join_window - time.monotonic()))
            c4 = _packets(counter)
            figures["join_window_s"] = join_window
            figures["late_join_packets"] = c4[0] + c4[1] - c2[0] - c2[1]

            # 3. at rest
            await asyncio.sleep(rest_window)
            c5 = _packets(counter)
            figures["rest_window_s"] = rest_window
            figures["rest_packets"] = c5[0] + c5[1] - c4[0] - c4[1]
            figures["rest_packets_per_min"] = figures["rest_packets"] / rest_window * 60

            # 4. unsubscribe one after another
            t2 = time.monotonic()
            for s in subs:
                await s.unsubscribe()
            t3 = time.monotonic()
            figures["unsubscribe_s"] = t3 - t2
            figures["gone_s"] = await _wait_routed(pub, 0) - t3

            # 5. all at once
            t4 = time.monotonic()
            subs = await asyncio.gather(*(b.subscribe(t, lambda ev: None) for t in topics))
            t5 = time.monotonic()
            figures["register_conc_s"] = t5 - t4
            figures["seen_conc_s"] = await _wait_routed(pub, n) - t5
            t6 = time.monotonic()
            await asyncio.gather(*(s.unsubscribe() for s in subs))
            figures["unsubscribe_conc_s"] = time.monotonic() - t6
            figures["gone_conc_s"] = await _wait_routed(pub, 0) - t6
        finally:
            await b.disconnect(timeout=0.5)
            await reg.close()
        for child in (pub, late):
            child.conn.send("stop")
            while (msg := child.recv("bye"))[0] != "bye":
                pass
            figures[f"{child.name}_resolver_queries"] = msg[1]["resolver_queries"]


def measure_mdns_scale(n: int, rest_window: float, join_window: float = 16.0) -> dict[str, Any]:
    """Run the scenario once (see the module doc); returns its figures."""
    figures: dict[str, Any] = {"subscriptions": n}
    _procs.run_on_own_loop(lambda: _scenario(n, rest_window, join_window, figures))
    return figures
