"""Request/reply round trips per second: hyperbroker's ``Broker.request`` against nats-py's
``nc.request`` in the same run, both answered by a responder in another process (uvloop on
both sides, 128-byte bodies echoed back).

Two figures each: one request at a time (round-trip latency as requests/s) and 64 in flight
(``asyncio.gather`` in waves). hyperbroker's request is one HTTP POST to the responder's
endpoint (no server in between); NATS goes client -> nats-server -> responder -> nats-server ->
client. Smoke-sized as a plain test; measured with ``--benchmark-enable``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import _procs
import baseline_nats
import pytest
from conftest import report

from hyperbroker import BROADCAST_VERSION, Broker, MemoryRegistry, Node, Service

BODY = b"x" * 128
IN_FLIGHT = 64

HB_RESPONDER = r"""
import asyncio, json, sys
import uvloop
from hyperbroker import Broker, MemoryRegistry

async def main():
    async with Broker(address="127.0.0.1:0", registry=MemoryRegistry(), disconnect_timeout=0) as b:
        sub = await b.subscribe("bench.req", lambda ev: ev.message.body)
        print(json.dumps({"address": b.advertised_address, "id": sub.id}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

uvloop.run(main())
"""

NATS_RESPONDER = r"""
import asyncio, sys
import nats, uvloop

async def main():
    nc = await nats.connect(sys.argv[1])
    async def cb(msg):
        await msg.respond(msg.data)
    await nc.subscribe("bench.req", cb=cb)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await nc.drain()

uvloop.run(main())
"""


class Responder:
    """A child process running ``script`` until its stdin closes; its first line is its hello."""

    def __init__(self, script: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        self.hello = self.proc.stdout.readline().decode()
        if not self.hello:
            self.close()
            raise RuntimeError("the responder process did not start")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _rounds(request: Any, sequential: int, concurrent: int) -> tuple[float, float]:
    """(sequential requests/s, requests/s with IN_FLIGHT in flight)."""
    for _ in range(50):  # warm-up: connections made, caches hot
        await request()
    t0 = time.perf_counter()
    for _ in range(sequential):
        await request()
    seq = sequential / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(concurrent // IN_FLIGHT):
        await asyncio.gather(*(request() for _ in range(IN_FLIGHT)))
    conc = (concurrent // IN_FLIGHT * IN_FLIGHT) / (time.perf_counter() - t0)
    return seq, conc


def measure_hyperbroker(sequential: int, concurrent: int) -> tuple[float, float]:
    responder = Responder(HB_RESPONDER)
    try:
        hello = json.loads(responder.hello)

        async def run() -> tuple[float, float]:
            registry = MemoryRegistry()
            async with Broker(address="127.0.0.1:0", registry=registry, disconnect_timeout=0) as b:
                node = Node(hello["id"], hello["address"], {"secure": "false", "broker": "http"})
                await registry.register(Service("topic:bench.req", BROADCAST_VERSION, (node,)))
                await b.wait_for_route("bench.req")

                async def request() -> None:
                    r = await b.request("bench.req", BODY, timeout=10)
                    assert r.body == BODY

                return await _rounds(request, sequential, concurrent)

        return _procs.run_on_own_loop(run)
    finally:
        responder.close()


def measure_nats(sequential: int, concurrent: int) -> tuple[float, float]:
    import nats

    with baseline_nats.NatsServer() as server:
        responder = Responder(NATS_RESPONDER, server.url)
        try:

            async def run() -> tuple[float, float]:
                nc = await nats.connect(server.url)
                try:

                    async def request() -> None:
                        r = await nc.request("bench.req", BODY, timeout=10)
                        assert r.data == BODY

                    return await _rounds(request, sequential, concurrent)
                finally:
                    await nc.close()

            return _procs.run_on_own_loop(run)
        finally:
            responder.close()


@pytest.mark.benchmark(group="request-reply")
def test_request_round_trips_vs_nats(benchmark: Any, measuring: bool) -> None:
    reason = baseline_nats.skip_reason()
    sequential, concurrent = (5000, 20000) if measuring else (200, 256)
    hb = measure_hyperbroker(sequential, concurrent)
    assert hb[0] > 0 and hb[1] > 0
    if reason:
        report(
            f"request(): hyperbroker {hb[0]:,.0f}/s sequential, {hb[1]:,.0f}/s with {IN_FLIGHT} in flight"
            f" (nats baseline skipped: {reason})"
        )
        return
    nt = measure_nats(sequential, concurrent)
    benchmark.extra_info.update(
        hyperbroker_sequential_per_s=hb[0],
        hyperbroker_concurrent_per_s=hb[1],
        nats_sequential_per_s=nt[0],
        nats_concurrent_per_s=nt[1],
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # the figures are in extra_info
    report(
        f"request() round trips/s, 128 B echo, responder in another process: sequential hyperbroker"
        f" {hb[0]:,.0f} vs nats-py {nt[0]:,.0f} ({hb[0] / nt[0]:.2f}x); {IN_FLIGHT} in flight"
        f" hyperbroker {hb[1]:,.0f} vs nats-py {nt[1]:,.0f} ({hb[1] / nt[1]:.2f}x)"
    )
