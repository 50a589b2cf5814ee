"""A hyperbroker node in its own process, driven by JSON lines on stdin.

    python tests/helpers/mdns_node.py [--max-lifetime SECONDS]

Used by tests/test_mdns_e2e.py and tests/test_multihost.py (see tests/helpers/hb_nodeclient.py
for the client side). Every command is one JSON object per line with an ``id`` and a ``cmd``;
the answer is one line ``{"id": ..., "ok": true, "result": ...}`` or ``{"id": ..., "ok":
false, "error": "..."}``. Commands run concurrently (one task each), so a long wait does not
block the others. On start the node prints ``{"event": "hello", "pid": ...}``.

Stdout carries nothing but these lines (logging goes to stderr). The process exits on ``quit``,
at EOF on stdin (the test died), or after ``--max-lifetime`` seconds, whatever comes first;
it disconnects its brokers and closes its registries on the way out.

Commands (brokers and subscriptions are named by the caller):

    wait_iface  addr, timeout            wait until an interface has addr and is up (carrier)
    broker      name, address, interfaces, options{}     create + connect a Broker with
                                          MdnsRegistry(interfaces=interfaces); -> advertised address
    subscribe   broker, sub, topic, queue -> subscription id (returns once announced)
    unsubscribe sub
    received    sub                      -> list of bodies received so far (str)
    wait_received sub, count, timeout    -> bodies, once at least count arrived
    headers     sub                      -> list of headers received so far
    publish     broker, topic, bodies[]  -> how many were queued
    flush       broker, timeout
    route_count broker, topic            -> int
    wait_routes broker, topic, count, timeout  -> waits until route_count == count
    stats       broker                   -> broker.stats()
    disconnect  broker
    quit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from hyperbroker import Broker
from hyperbroker.registry.mdns import MdnsRegistry

log = logging.getLogger("mdns_node")


class Node:
    def __init__(self) -> None:
        self.brokers: dict[str, Broker] = {}
        self.registries: dict[str, MdnsRegistry] = {}
        self.subs: dict[str, Any] = {}
        self.received: dict[str, list[str]] = {}
        self.headers: dict[str, list[dict[str, str]]] = {}
        self.arrived: dict[str, asyncio.Event] = {}
        self.stop = asyncio.Event()

    def emit(self, obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # -- commands ------------------------------------------------------------------------------

    async def cmd_wait_iface(self, addr: str, timeout: float = 10.0) -> str:
        """Wait until an interface carries ``addr`` and has carrier (both veth ends up)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
            dev = None
            for line in out.splitlines():
                parts = line.split()
                if len(parts) >= 4 and parts[3].split("/")[0] == addr:
                    dev = parts[1]
            if dev is not None:
                link = subprocess.run(
                    ["ip", "-o", "link", "show", "dev", dev], capture_output=True, text=True, timeout=5
                ).stdout
                last = link.strip()
                flags = link.split("<", 1)[-1].split(">", 1)[0].split(",")
                if "UP" in flags and "LOWER_UP" in flags and "MULTICAST" in flags:
                    return dev
            else:
                last = out.strip()
            if time.monotonic() > deadline:
                raise TimeoutError(f"interface with {addr} not up within {timeout}s: {last}")
            await asyncio.sleep(0.05)

    async def cmd_broker(
        self, name: str, address: str, interfaces: list[str], options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if name in self.brokers:
            raise ValueError(f"broker {name!r} exists")
        reg = MdnsRegistry(interfaces=interfaces)
        self.registries[name] = reg
        b = Broker(address=address, registry=reg, **(options or {}))
        await b.connect()
        self.brokers[name] = b
        return {"address": b.advertised_address}

    async def cmd_subscribe(self, broker: str, sub: str, topic: str, queue: str | None = None) -> str:
        if sub in self.subs:
            raise ValueError(f"subscription {sub!r} exists")
        got = self.received.setdefault(sub, [])
        hdrs = self.headers.setdefault(sub, [])
        ev_arrived = self.arrived.setdefault(sub, asyncio.Event())

        def handler(ev: Any) -> None:
            got.append(ev.message.body.decode())
            hdrs.append(dict(ev.message.header))
            ev_arrived.set()

        s = await self.brokers[broker].subscribe(topic, handler, queue=queue)
        self.subs[sub] = s
        return str(s.id)

    async def cmd_unsubscribe(self, sub: str) -> None:
        await self.subs.pop(sub).unsubscribe()

    async def cmd_received(self, sub: str) -> list[str]:
        return list(self.received.get(sub, []))

    async def cmd_headers(self, sub: str) -> list[dict[str, str]]:
        return list(self.headers.get(sub, []))

    async def cmd_wait_received(self, sub: str, count: int, timeout: float = 10.0) -> list[str]:
        got = self.received.setdefault(sub, [])
        ev = self.arrived.setdefault(sub, asyncio.Event())
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{sub}: {len(got)}/{count} messages within {timeout}s")
            ev.clear()
            try:
                await asyncio.wait_for(ev.wait(), min(left, 0.2))
            except TimeoutError:
                pass
        return list(got)

    async def cmd_publish(self, broker: str, topic: str, bodies: list[str]) -> int:
        b = self.brokers[broker]
        for i, body in enumerate(bodies):
            await b.publish(topic, body.encode(), header={"seq": str(i)})
        return len(bodies)

    async def cmd_flush(self, broker: str, timeout: float = 10.0) -> None:
        await self.brokers[broker].flush(timeout=timeout)

    async def cmd_route_count(self, broker: str, topic: str) -> int:
        return self.brokers[broker].route_count(topic)

    async def cmd_wait_routes(self, broker: str, topic: str, count: int, timeout: float = 10.0) -> int:
        b = self.brokers[broker]
        deadline = time.monotonic() + timeout
        while True:
            n = b.route_count(topic)
            if n == count:
                return n
            if time.monotonic() > deadline:
                raise TimeoutError(f"route_count({topic!r}) is {n}, not {count}, after {timeout}s")
            await asyncio.sleep(0.02)

    async def cmd_stats(self, broker: str) -> dict[str, Any]:
        return self.brokers[broker].stats()

    async def cmd_disconnect(self, broker: str) -> None:
        b = self.brokers.pop(broker)
        await b.disconnect(timeout=1.0)
        await self.registries.pop(broker).close()

    async def cmd_quit(self) -> None:
        self.stop.set()

    # -- plumbing ------------------------------------------------------------------------------

    async def run_one(self, msg: dict[str, Any]) -> None:
        mid = msg.pop("id", None)
        cmd = msg.pop("cmd", "")
        fn = getattr(self, f"cmd_{cmd}", None)
        try:
            if fn is None:
                raise ValueError(f"unknown command {cmd!r}")
            result = await fn(**msg)
            self.emit({"id": mid, "ok": True, "result": result})
        except Exception as e:  # reported to the test, which fails with it
            log.exception("command %s failed", cmd)
            self.emit({"id": mid, "ok": False, "error": f"{type(e).__name__}: {e}"})

    async def cleanup(self) -> None:
        for name in list(self.brokers):
            try:
                await asyncio.wait_for(self.brokers.pop(name).disconnect(timeout=0.5), 5)
            except Exception:
                log.exception("disconnecting %s", name)
        for name in list(self.registries):
            try:
                await asyncio.wait_for(self.registries.pop(name).close(), 5)
            except Exception:
                log.exception("closing registry %s", name)


async def main(max_lifetime: float) -> None:
    node = Node()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def read_commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                node.stop.set()  # the test went away
                return
            if not line.strip():
                continue
            t = asyncio.create_task(node.run_one(json.loads(line)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    node.emit({"event": "hello", "pid": os.getpid()})
    rt = asyncio.create_task(read_commands())
    try:
        await asyncio.wait_for(node.stop.wait(), max_lifetime)
    except TimeoutError:
        log.error("max lifetime %ss reached, exiting", max_lifetime)
    rt.cancel()
    for t in list(tasks):
        t.cancel()  # waits still running; the quit answer was already written
    await node.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--max-lifetime", type=float, default=120.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(args.max_lifetime))
