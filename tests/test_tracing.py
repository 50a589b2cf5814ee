"""OpenTelemetry tracing (``Broker(tracing=True)``) with the real SDK and an in-memory exporter.

The publisher runs here, the subscriber in a child process (tests/helpers/trace_subscriber.py)
that reports its spans as JSON: each consumer span ``process <topic>`` must be a child of the
producer span ``send <topic>`` that published it (same trace id, parent = the producer span),
carried only by the ``traceparent`` header. A peer's ``Traceparent`` (capital T, as Go writes
it) is extracted too, from a raw go-micro envelope and from a real Go program when Go is there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from brokers import LOOPBACK, MakeBroker, envelope, until
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hyperbroker import Broker, BrokerError, Event, MemoryRegistry
from hyperbroker.registry.base import Node, Service, service_name

pytestmark = pytest.mark.timeout(90)

HELPER = Path(__file__).parent / "helpers" / "trace_subscriber.py"
GO_PROGRAM = Path(__file__).parent / "go" / "traceparent"

#: this process's spans (the global tracer provider can be set once per process)
EXPORTER = InMemorySpanExporter()


def _install_provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider), "another test set a provider first"


_install_provider()


@pytest.fixture(autouse=True)
def clear_spans() -> None:
    EXPORTER.clear()


def spans(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


class Child:
    """The subscriber process; :meth:`spans` waits for its report."""

    def __init__(self, proc: asyncio.subprocess.Process, hello: dict[str, str]) -> None:
        self.proc = proc
        self.address = hello["address"]
        self.id = hello["id"]

    @classmethod
    async def start(cls, topic: str, queue: str | None, count: int) -> Child:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(HELPER), topic, queue or "-", str(count),
            stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            return cls(proc, json.loads(line))
        except BaseException:
            proc.kill()
            await proc.wait()
            raise

    async def spans(self) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        assert line, "the subscriber process exited without reporting its spans"
        result: list[dict[str, Any]] = json.loads(line)
        return result

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def hex_ids(s: ReadableSpan) -> tuple[str, str]:
    ctx = s.get_span_context()
    assert ctx is not None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


async def test_consumer_span_in_another_process_is_a_child_of_the_producer_span() -> None:
    topic, queue = "traced.orders", "workers"
    # 1 + 1 single publishes and a batch of 3: 5 consumer spans in the child
    child = await Child.start(topic, queue, 5)
    try:
        registry = MemoryRegistry()
        node = Node(child.id, child.address, {"secure": "false", "broker": "http", "batch": "1"})
        await registry.register(Service(service_name(topic), queue, (node,)))
        # max_deliveries=1: the failing message is not retried (each retry is a consumer span too)
        async with Broker(
            address=LOOPBACK, registry=registry, tracing=True, disconnect_timeout=1, max_deliveries=1
        ) as pub:
            await until(lambda: pub.route_count(topic) == 1, 5, "the child's route")
            await pub.publish(topic, b"hello", header={"X-App": "1"})
            await pub.publish(topic, b"fail")
            assert await pub.publish_many(topic, [b"a", b"bb", b"ccc"]) == 3
            await pub.flush(timeout=10)
            got = await child.spans()
    finally:
        await child.close()

    producers = spans(f"send {topic}")
    assert len(producers) == 3
    single_ok, single_fail, batch = producers
    for p in producers:
        assert p.kind == trace.SpanKind.PRODUCER
        attrs = dict(p.attributes or {})
        assert attrs["messaging.system"] == "hyperbroker"
        assert attrs["messaging.destination.name"] == topic
        assert attrs["messaging.operation.type"] == "send"
        assert attrs["server.address"] == "127.0.0.1"
    assert dict(single_ok.attributes or {})["messaging.message.body.size"] == 5
    assert dict(batch.attributes or {})["messaging.batch.message_count"] == 3

    consumers = [s for s in got if s["name"] == f"process {topic}"]
    assert len(consumers) == 5, got
    by_size = {c["attributes"]["messaging.message.body.size"]: c for c in consumers}
    for c in consumers:
        assert c["kind"] == "CONSUMER"
        assert c["parent_remote"] is True
        a = c["attributes"]
        assert a["messaging.system"] == "hyperbroker"
        assert a["messaging.destination.name"] == topic
        assert a["messaging.operation.type"] == "process"
        assert a["messaging.consumer.group.name"] == queue
        assert a["server.address"] == "127.0.0.1"
    for size, producer in [(5, single_ok), (4, single_fail)] + [(n, batch) for n in (1, 2, 3)]:
        trace_id, span_id = hex_ids(producer)
        c = by_size[size]
        assert (c["trace_id"], c["parent_span_id"]) == (trace_id, span_id), (size, c)
    failed = by_size[4]
    assert failed["attributes"]["error.type"] == "ValueError"
    assert failed["status"] == "ERROR"
    assert "error.type" not in by_size[5]["attributes"]
    assert by_size[5]["status"] == "UNSET"


TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


async def _traced_subscriber(make_broker: MakeBroker, topic: str) -> tuple[Broker, str, list[Event]]:
    b = await make_broker(tracing=True)
    got: list[Event] = []

    async def handler(ev: Event) -> None:  # an async handler keeps its span around the await
        await asyncio.sleep(0)
        got.append(ev)

    sub = await b.subscribe(topic, handler)
    return b, f"http://{b.address}/_sub?id={sub.id}", got


def _consumer_parent(topic: str) -> tuple[str, str | None]:
    (span,) = spans(f"process {topic}")
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    return format(ctx.trace_id, "032x"), format(parent.span_id, "016x") if parent is not None else None


async def test_a_peer_traceparent_with_a_capital_t_is_extracted(make_broker: MakeBroker) -> None:
    _, url, got = await _traced_subscriber(make_broker, "peer.t")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        body = envelope("peer.t", b"from go", {"Traceparent": TRACEPARENT})
        async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200, await r.text()
    assert len(got) == 1
    assert _consumer_parent("peer.t") == (TRACE_ID, PARENT_ID)


async def test_a_go_program_posting_traceparent_is_extracted(make_broker: MakeBroker, tmp_path: Path) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not on PATH (CI installs Debian's golang-go in .ci/run)")
    _, url, got = await _traced_subscriber(make_broker, "peer.go")
    env = dict(
        os.environ,
        GOFLAGS="-mod=mod",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        GOCACHE=str(tmp_path / "gocache"),
        GOPATH=str(tmp_path / "gopath"),
        GOTELEMETRY="off",
    )
    proc = await asyncio.create_subprocess_exec(
        go, "run", ".", url, "peer.go", TRACEPARENT, "from go", cwd=GO_PROGRAM, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 80)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out.strip() == b"200"
    assert [e.message.body for e in got] == [b"from go"]
    assert "Traceparent" in got[0].message.header
    assert _consumer_parent("peer.go") == (TRACE_ID, PARENT_ID)


async def test_a_message_without_trace_context_starts_a_new_trace(make_broker: MakeBroker) -> None:
    _, url, got = await _traced_subscriber(make_broker, "peer.none")
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.post(url, data=envelope("peer.none", b"x"), headers={"Content-Type": "application/json"}) as r,
    ):
        assert r.status == 200
    assert len(got) == 1
    trace_id, parent = _consumer_parent("peer.none")
    assert parent is None and trace_id != TRACE_ID


async def test_in_process_round_trip_and_headers(make_broker: MakeBroker) -> None:
    """Publisher and subscriber in one process: the consumer span's parent is the producer
    span; the header carries traceparent; a plain subscriber's handler is not wrapped."""
    sub_b = await make_broker(tracing=True)
    got: list[Event] = []
    await sub_b.subscribe("rt", got.append)
    pub = await make_broker(tracing=True)
    await until(lambda: pub.route_count("rt") == 1, 5, "the route")
    await pub.publish("rt", {"k": 1})
    await until(lambda: len(got) == 1, 5, "the message")
    assert got[0].message.header["Content-Type"] == "application/json"
    assert got[0].message.header["traceparent"].startswith("00-")
    (producer,) = spans("send rt")
    await until(lambda: len(spans("process rt")) == 1, 5, "the consumer span")
    (consumer,) = spans("process rt")
    assert consumer.parent is not None
    assert hex_ids(consumer)[0] == hex_ids(producer)[0]
    assert format(consumer.parent.span_id, "016x") == hex_ids(producer)[1]
    assert "messaging.consumer.group.name" not in dict(consumer.attributes or {})


async def test_tracing_off_adds_nothing(make_broker: MakeBroker) -> None:
    sub_b = await make_broker()
    got: list[Event] = []
    handler = got.append
    sub = await sub_b.subscribe("off", handler)
    assert sub._handler is handler, "no wrapper when tracing is off"
    pub = await make_broker()
    await until(lambda: pub.route_count("off") == 1, 5, "the route")
    await pub.publish("off", b"x")
    pub.publish_nowait("off", b"y")
    await pub.publish_many("off", [b"z"])
    await until(lambda: len(got) == 3, 5, "the messages")
    assert all("traceparent" not in e.message.header for e in got)
    assert EXPORTER.get_finished_spans() == ()


def test_tracing_without_opentelemetry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.propagate", None)
    with pytest.raises(BrokerError, match=r"hyperbroker\[otel\]"):
        Broker(tracing=True)
    with pytest.raises(BrokerError, match="tracing must be True or False"):
        Broker(tracing="yes")
