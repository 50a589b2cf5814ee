"""etcd at scale: many brokers x topics registering in one real etcd, how long until a publisher
routes every node, and how many requests etcd serves per second at rest.

Brokers share this process (each with its own EtcdRegistry: its own gRPC connection and lease,
as separate processes would have). Smoke sizes in the default run (10 brokers x 2 topics, 3 s at
rest); ``--benchmark-enable`` runs 100 brokers x 10 topics and 30 s at rest. etcd's own
``/metrics`` (``grpc_server_handled_total``) counts the requests it answered.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from etcd_util import EtcdServer, etcd_binary

from hyperbroker import Broker, Event
from hyperbroker.registry.etcd import EtcdRegistry

pytestmark = pytest.mark.timeout(600)


def etcd_requests(server: EtcdServer) -> float:
    """Requests etcd has answered so far (gRPC, including the JSON gateway's)."""
    with urllib.request.urlopen(f"{server.client_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("grpc_server_handled_total{")
    )


def noop(ev: Event) -> None:
    pass


@pytest.mark.benchmark(group="etcd-scale")
def test_etcd_registration_and_convergence(benchmark: Any, measuring: bool, tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server)")
    n_brokers, n_topics, rest = (100, 10, 30.0) if measuring else (10, 2, 3.0)
    server = EtcdServer.single(tmp_path)
    figures: dict[str, float] = {}

    async def run() -> None:
        url = [server.endpoint]
        brokers = [
            Broker(address="127.0.0.1:0", registry=EtcdRegistry(url), disconnect_timeout=0) for _ in range(n_brokers)
        ]
        pub = Broker(address="127.0.0.1:0", registry=EtcdRegistry(url), disconnect_timeout=0)
        try:
            await pub.connect()
            topics = [f"scale.{t}" for t in range(n_topics)]
            t0 = time.monotonic()
            await asyncio.gather(*(b.connect() for b in brokers))
            await asyncio.gather(*(b.subscribe(t, noop) for b in brokers for t in topics))
            figures["register"] = time.monotonic() - t0
            deadline = time.monotonic() + 60
            while any(pub.route_count(t) < n_brokers for t in topics):
                assert time.monotonic() < deadline, "the publisher never routed every node"
                await asyncio.sleep(0.01)
            figures["converge"] = time.monotonic() - t0
            # at rest: heartbeats write nothing new; the leases' keep-alives are what etcd serves
            await asyncio.sleep(1.0)
            before = etcd_requests(server)
            assert before > 0, "etcd's metrics did not count the registrations"
            await asyncio.sleep(rest)
            figures["rest_rps"] = (etcd_requests(server) - before) / rest
            # the routes still deliver
            got: list[bytes] = []
            extra = await brokers[0].subscribe("scale.check", lambda ev: got.append(ev.message.body))
            await pub.wait_for_route("scale.check", timeout=10)
            await pub.publish("scale.check", b"x")
            await pub.flush(timeout=10)
            assert got == [b"x"]
            await extra.unsubscribe()
        finally:
            await asyncio.gather(*(b.disconnect() for b in [pub, *brokers]), return_exceptions=True)

    try:
        benchmark.pedantic(lambda: asyncio.run(run()), rounds=1, iterations=1)
    finally:
        server.cleanup()
    report(
        f"[etcd] {n_brokers} brokers x {n_topics} topics on one etcd: registered in {figures['register']:.2f} s,"
        f" a publisher routes all {n_brokers * n_topics} nodes {figures['converge']:.2f} s after the start;"
        f" etcd at rest serves {figures['rest_rps']:.1f} requests/s (over {rest:.0f} s)"
    )
