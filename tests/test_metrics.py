"""Per-topic counters, ``GET /metrics`` (Prometheus text), ``GET /healthz``, the
prometheus_client collector and ``hyperbroker stats``.

``/metrics`` is scraped with a real HTTP client (aiohttp) and parsed with prometheus_client's
text parser; its values must equal ``topic_stats()`` after a known traffic pattern. Every
broker listens on 127.0.0.1 and announces itself in one MemoryRegistry; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import pytest
from aiohttp import ClientSession
from brokers import MakeBroker, until
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hyperbroker import Broker, BrokerError, Event, MemoryRegistry, Node, Service
from hyperbroker import metrics as hb_metrics
from hyperbroker.registry.base import BROADCAST_VERSION

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def get(b: Broker, path: str, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with ClientSession() as http, http.get(f"http://{b.address}{path}", headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def scrape(b: Broker, token: str | None = None) -> Samples:
    status, ctype, text = await get(b, "/metrics", token)
    assert status == 200, text
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def topic_sum(samples: Samples, name: str, topic: str) -> float:
    """Sum over every series of ``name`` with this topic (e.g. all drop reasons)."""
    return sum(v for (n, ls), v in samples.items() if n == name and ("topic", topic) in ls)


def assert_matches_topic_stats(samples: Samples, ts: dict[str, dict[str, int]]) -> None:
    names = {
        "published": "hyperbroker_published_messages_total",
        "delivered": "hyperbroker_delivered_messages_total",
        "dropped": "hyperbroker_dropped_messages_total",
        "retried": "hyperbroker_retried_messages_total",
        "backlog": "hyperbroker_backlog_messages",
        "nodes": "hyperbroker_route_nodes",
        "received": "hyperbroker_received_messages_total",
        "handler_errors": "hyperbroker_handler_errors_total",
    }
    for topic, row in ts.items():
        for key, metric in names.items():
            assert topic_sum(samples, metric, topic) == row[key], (topic, key)


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_equal_topic_stats_after_known_traffic(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    pub = await make_broker(metrics=True, backlog=5, retry_min=0.005, retry_max=0.02, evict_after=2)
    s1 = await make_broker(metrics=True)
    s2 = await make_broker(metrics=True)
    got: list[str] = []
    failed_once: set[bytes] = set()

    def flaky(ev: Event) -> None:
        if ev.message.body not in failed_once:
            failed_once.add(ev.message.body)
            raise RuntimeError("first attempt fails")
        got.append("flaky")

    for s in (s1, s2):
        await s.subscribe("bcast", lambda ev: got.append("b"))
        await s.subscribe("work", lambda ev: got.append("w"), queue="q")
    await s1.subscribe("flaky", flaky)
    # a node that never listens: evicted after 2 refused connections
    await registry.register(Service("topic:dead", BROADCAST_VERSION, (Node("hb-dead", f"127.0.0.1:{dead_port()}"),)))
    for t, n in (("bcast", 2), ("work", 2), ("flaky", 1), ("dead", 1)):
        await until(lambda t=t, n=n: pub.route_count(t) == n, 5, f"{n} route(s) for {t}")  # type: ignore[misc]

    for i in range(10):
        await pub.publish("bcast", str(i))
        await pub.publish("work", str(i))
    for i in range(3):
        await pub.publish("flaky", str(i))
    for i in range(8):
        await pub.publish("nobody", str(i))  # backlog=5: 3 dropped
    await pub.publish("dead", b"x")
    await until(lambda: pub.stats()["evicted"] == 1, 10, "the dead node's eviction")
    await pub.flush(timeout=10)

    ts = pub.topic_stats()
    assert ts["bcast"] == {
        "published": 10, "delivered": 20, "dropped": 0, "retried": 0, "backlog": 0, "backlog_bytes": 0,
        "nodes": 2, "received": 0, "handler_errors": 0,
    }  # fmt: skip
    assert ts["work"]["delivered"] == 10 and ts["work"]["nodes"] == 2
    assert ts["flaky"]["delivered"] == 3 and ts["flaky"]["retried"] == 3
    assert ts["nobody"]["published"] == 8 and ts["nobody"]["backlog"] == 5 and ts["nobody"]["dropped"] == 3
    assert ts["nobody"]["backlog_bytes"] > 0
    assert ts["dead"]["nodes"] == 0 and ts["dead"]["backlog"] == 1, "evicted: out of the route, its message parked"

    samples = await scrape(pub)
    assert_matches_topic_stats(samples, ts)
    assert value(samples, "hyperbroker_dropped_messages_total", topic="nobody", reason="backlog_overflow") == 3
    assert value(samples, "hyperbroker_evicted_nodes_total") == 1
    assert value(samples, "hyperbroker_backlog_bytes") == pub.stats()["backlog_bytes"]
    assert value(samples, "hyperbroker_delivery_duration_seconds_count", topic="bcast") == 20
    assert value(samples, "hyperbroker_delivery_duration_seconds_bucket", topic="bcast", le="+Inf") == 20
    assert value(samples, "hyperbroker_delivery_duration_seconds_sum", topic="bcast") > 0
    # the whole broker's counters are the sums of the topics'
    st = pub.stats()
    for key in ("published", "delivered", "dropped", "retried"):
        assert sum(r[key] for r in ts.values()) == st[key], key

    # the subscriber side: received and handler errors per topic, handler durations
    sub_ts = s1.topic_stats()
    assert sub_ts["bcast"]["received"] == 10
    assert sub_ts["flaky"]["received"] == 6 and sub_ts["flaky"]["handler_errors"] == 3
    assert sub_ts["work"]["received"] + s2.topic_stats()["work"]["received"] == 10
    sub_samples = await scrape(s1)
    assert_matches_topic_stats(sub_samples, sub_ts)
    assert value(sub_samples, "hyperbroker_handler_duration_seconds_count", topic="flaky") == 6
    assert s1.stats()["handler_errors"] == 3


async def test_topics_past_the_cap_are_other(make_broker: MakeBroker) -> None:
    b = await make_broker(metrics=True, metrics_max_topics=3)
    for i, t in enumerate(["t1", "t2", "t3", "t4", "t5"]):
        for _ in range(i + 1):
            await b.publish(t, b"x")
    ts = b.topic_stats()
    assert set(ts) == {"t1", "t2", "t3", "_other"}
    assert ts["_other"]["published"] == 4 + 5 and ts["_other"]["backlog"] == 9
    samples = await scrape(b)
    topics = {dict(ls).get("topic") for (_, ls) in samples} - {None}
    assert topics == {"t1", "t2", "t3", "_other"}
    assert value(samples, "hyperbroker_published_messages_total", topic="_other") == 9


async def test_topic_stats_without_metrics_and_after_disconnect(make_broker: MakeBroker) -> None:
    b = await make_broker()
    await b.publish("x", b"1")
    assert b.topic_stats()["x"]["published"] == 1
    status, _, _ = await get(b, "/metrics")
    assert status == 404, "metrics=False: no /metrics"
    await b.disconnect(timeout=0)
    assert b.topic_stats()["x"]["published"] == 1, "the last values stay readable"


async def test_label_values_are_escaped(make_broker: MakeBroker) -> None:
    b = await make_broker(metrics=True)
    odd = 'we"ird\\topic\nname'
    await b.publish(odd, b"1")
    samples = await scrape(b)
    assert value(samples, "hyperbroker_published_messages_total", topic=odd) == 1


async def test_healthz_serving_then_draining(make_broker: MakeBroker) -> None:
    pub = await make_broker(retry_min=0.005, retry_max=0.05)
    sub = await make_broker()
    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow(ev: Event) -> None:
        started.set()
        await gate.wait()

    await sub.subscribe("h", slow)
    await until(lambda: pub.route_count("h") == 1 and sub.route_count("h") == 1, 5, "routes")
    await sub.publish("parked", b"waits in the backlog")
    status, ctype, text = await get(sub, "/healthz")
    assert status == 200 and ctype == "application/json"
    assert json.loads(text) == {"status": "serving", "subscriptions": 1, "routes": 1, "backlog": 1}
    await pub.publish("h", b"1")
    await asyncio.wait_for(started.wait(), 5)
    address = sub.address
    drain = asyncio.create_task(sub.drain(timeout=10))
    try:
        await until(lambda: sub._engine is not None and sub._engine.pending_deliveries() == 1, 5, "draining")
        await asyncio.sleep(0.05)  # set_draining ran before the deregistration awaited
        async with ClientSession() as http, http.get(f"http://{address}/healthz") as r:
            assert r.status == 503
            assert (await r.json())["status"] == "draining"
    finally:
        gate.set()
        await asyncio.wait_for(drain, 10)
    assert not sub.connected


async def test_metrics_need_the_token_healthz_does_not(make_broker: MakeBroker) -> None:
    b = await make_broker(metrics=True, auth_token="s3cret")
    status, _, text = await get(b, "/metrics")
    assert status == 401 and "bearer" in text
    status, _, _ = await get(b, "/metrics", token="wrong")
    assert status == 401
    samples = await scrape(b, token="s3cret")
    assert value(samples, "hyperbroker_evicted_nodes_total") == 0
    status, _, _ = await get(b, "/healthz")
    assert status == 200


async def test_register_with_a_collector_registry(make_broker: MakeBroker) -> None:
    b = await make_broker(metrics=True)
    for _ in range(3):
        await b.publish("t", b"x")
    reg = CollectorRegistry()
    collector = hb_metrics.register(b, reg)
    text = generate_latest(reg).decode()
    assert 'hyperbroker_published_messages_total{topic="t"} 3.0' in text
    assert 'hyperbroker_backlog_messages{topic="t"} 3.0' in text
    assert 'hyperbroker_dropped_messages_total{reason="backlog_overflow",topic="t"} 0.0' in text
    assert "# TYPE hyperbroker_delivery_duration_seconds histogram" in text
    assert 'hyperbroker_delivery_duration_seconds_bucket{le="+Inf",topic="t"} 0.0' in text
    # read at scrape time
    await b.publish("t", b"x")
    assert 'hyperbroker_published_messages_total{topic="t"} 4.0' in generate_latest(reg).decode()
    reg.unregister(collector)
    await b.disconnect(timeout=0)
    reg.register(collector)
    assert "hyperbroker_" not in generate_latest(reg).decode(), "not connected: nothing"


def test_options_are_checked() -> None:
    with pytest.raises(BrokerError, match="metrics_max_topics"):
        Broker(metrics_max_topics=0)
    with pytest.raises(BrokerError, match="metrics must be"):
        Broker(metrics="yes")


async def test_cli_stats_prints_the_table(make_broker: MakeBroker) -> None:
    b = await make_broker(metrics=True)
    sub = await make_broker()
    await sub.subscribe("cli.t", lambda ev: None)
    await until(lambda: b.route_count("cli.t") == 1, 5, "route")
    for _ in range(5):
        await b.publish("cli.t", b"x")
    await b.flush(timeout=5)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hyperbroker", "stats", b.address, "--count", "2", "--interval", "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip

    async def traffic() -> None:
        for _ in range(20):
            await b.publish("cli.t", b"x")
            await asyncio.sleep(0.02)

    t = asyncio.create_task(traffic())
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    await t
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert sum(1 for ln in lines if ln.startswith("TOPIC")) == 2, out.decode()
    rows = [ln.split() for ln in lines if ln.startswith("cli.t")]
    assert len(rows) == 2
    assert all(int(r[-2]) == 1 for r in rows), "NODES column"
    assert any(float(r[1]) > 0 for r in rows), "a publish rate while traffic ran"


async def test_cli_stats_unreachable_is_a_clear_error() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hyperbroker", "stats", f"127.0.0.1:{dead_port()}", "--interval", "0.05",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "cannot read" in err.decode()
