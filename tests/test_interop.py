"""go-micro compatibility, both ways, over real HTTP on 127.0.0.1.

Inbound: bytes exactly as Go's ``encoding/json`` marshals go-micro's ``broker.Message`` are
POSTed to a hyperbroker subscriber. Outbound: an aiohttp web server plays a go-micro HTTP broker
subscriber, registered by hand in the MemoryRegistry the way go-micro registers itself
(service ``topic:<t>``, version ``ff.http.broadcast`` or the queue name, node
``go.micro.http.broker-<uuid>`` with ``secure=false`` and no ``batch`` metadata); it checks
exactly what our publisher sends and answers what a Go node would (or worse). Our publisher
writes the topic under both ``:topic`` (v1) and ``Micro-Topic`` (current go-micro): a v1 node
reads the first and hands the second on as a header.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from brokers import MakeBroker, Sink, assert_counters, post_status, until
from gojson import go_quote

from hyperbroker import BROADCAST_VERSION, Broker, MemoryRegistry, Message, Node, Service

pytestmark = pytest.mark.timeout(30)

# --- Go's encoding/json, for broker.Message ---------------------------------------------------


def go_marshal(header: dict[str, str], body: bytes | None) -> bytes:
    """``json.Marshal(broker.Message{Header: header, Body: body})``: keys sorted byte-wise."""
    keys = sorted(header, key=lambda k: k.encode())
    h = "{" + ",".join(go_quote(k) + ":" + go_quote(header[k]) for k in keys) + "}"
    b = "null" if body is None else '"' + base64.b64encode(body).decode() + '"'
    return ('{"Header":' + h + ',"Body":' + b + "}").encode()


# A vector written out by hand from Go's rules, and checked against go_marshal below.
GO_VECTOR = (
    rb'{"Header":{":topic":"go.topic","a":"1","html":"\u003cb\u003e \u0026 \u003ci\u003e",'
    rb'"z\u003ck":"line\u2028sep"},"Body":"SGVsbG8sIEdvIQ=="}'
)
GO_VECTOR_SRC = (
    {":topic": "go.topic", "a": "1", "html": "<b> & <i>", "z<k": "line\u2028sep"},
    b"Hello, Go!",
)


def test_go_vector_is_what_go_marshal_makes() -> None:
    assert go_marshal(*GO_VECTOR_SRC) == GO_VECTOR


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def make_broker(make_broker: MakeBroker) -> MakeBroker:
    """conftest's broker factory with fast retries (the Go nodes here fail on purpose)."""

    async def make(**options: Any) -> Broker:
        return await make_broker(**{"retry_min": 0.01, "retry_max": 0.05, **options})

    return make


async def wait_route(broker: Broker, topic: str, nodes: int) -> None:
    """Wait until the publisher routes ``topic`` to ``nodes`` nodes (it learns them from the
    registry watch, asynchronously)."""
    await until(lambda: broker.route_count(topic) == nodes, 5, f"{nodes} route(s) for {topic!r}")


# --- inbound: Go's bytes into a hyperbroker subscriber ------------------------------------------


async def subscribed(make_broker: MakeBroker, topic: str) -> tuple[Broker, str, Sink]:
    b = await make_broker()
    rec = Sink()
    sub = await b.subscribe(topic, rec)
    return b, f"http://{b.address}/_sub?id={sub.id}", rec


async def test_go_encoding_json_message_is_received(make_broker: MakeBroker, http: aiohttp.ClientSession) -> None:
    _, url, rec = await subscribed(make_broker, "go.topic")
    status, text = await post_status(http, url, GO_VECTOR)
    assert status == 200, text
    (ev,) = rec.events
    assert ev.topic == "go.topic"
    assert ev.message.header == {"a": "1", "html": "<b> & <i>", "z<k": "line\u2028sep"}
    assert ev.message.body == b"Hello, Go!"


@pytest.mark.parametrize(
    ("header", "body"),
    [
        pytest.param({":topic": "go.topic", "a": "1"}, b"plain", id="short"),
        pytest.param({":topic": "go.topic"}, bytes(range(256)) * 3, id="all-bytes"),
        pytest.param({":topic": "go.topic"}, None, id="nil-body"),
        pytest.param({":topic": "go.topic"}, b"", id="empty-body"),
        pytest.param(
            {
                ":topic": "go.topic",
                "Content-Type": "application/json",
                "Micro-Id": str(uuid.uuid4()),
                "ünï": 'çødé ☃ "q" \\',
            },
            b'{"name":"John"}',
            id="go-micro-headers-unicode",
        ),
        pytest.param({":topic": "go.topic", "ctl": "a\tb\nc\rd\x01e"}, b"x" * 100_000, id="control-chars-large"),
    ],
)
async def test_go_marshalled_messages_are_received(
    make_broker: MakeBroker, http: aiohttp.ClientSession, header: dict[str, str], body: bytes | None
) -> None:
    _, url, rec = await subscribed(make_broker, "go.topic")
    status, text = await post_status(http, url, go_marshal(header, body))
    assert status == 200, text
    (ev,) = rec.events
    assert ev.topic == "go.topic"
    assert ev.message.header == {k: v for k, v in header.items() if k != ":topic"}
    assert ev.message.body == (body or b"")


@pytest.mark.parametrize(("hname", "bname"), [("header", "body"), ("HEADER", "BODY"), ("hEaDeR", "BoDy")])
async def test_field_names_in_any_letter_case(
    make_broker: MakeBroker, http: aiohttp.ClientSession, hname: str, bname: str
) -> None:
    _, url, rec = await subscribed(make_broker, "go.topic")
    data = f'{{"{hname}":{{":topic":"go.topic","k":"v"}},"{bname}":"Y2FzZQ=="}}'.encode()
    status, text = await post_status(http, url, data)
    assert status == 200, text
    (ev,) = rec.events
    assert (ev.topic, ev.message.header, ev.message.body) == ("go.topic", {"k": "v"}, b"case")


async def test_micro_topic_header_instead_of_topic(make_broker: MakeBroker, http: aiohttp.ClientSession) -> None:
    _, url, rec = await subscribed(make_broker, "go.topic")
    data = go_marshal({"Micro-Topic": "go.topic", "Content-Type": "text/plain"}, b"newer go-micro")
    status, text = await post_status(http, url, data)
    assert status == 200, text
    (ev,) = rec.events
    assert ev.topic == "go.topic"
    assert ev.message.body == b"newer go-micro"
    assert ev.message.header["Content-Type"] == "text/plain"
    # a Micro-Topic naming another topic does not reach this subscriber
    status, text = await post_status(http, url, go_marshal({"Micro-Topic": "other"}, b"x"))
    assert status == 404, text
    assert len(rec.events) == 1


# --- outbound: our publisher to a go-micro subscriber -------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: bytes


Responder = Callable[[int, Seen], Awaitable[web.StreamResponse] | web.StreamResponse]


class GoNode:
    """An aiohttp server playing a go-micro HTTP broker subscriber node on 127.0.0.1."""

    def __init__(self, respond: Responder | None = None) -> None:
        self.id = f"go.micro.http.broker-{uuid.uuid4()}"
        self.seen: list[Seen] = []
        self.respond = respond
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> GoNode:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node(self, **metadata: str) -> Node:
        return Node(id=self.id, address=self.address, metadata={"secure": "false", **metadata})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        q: dict[str, list[str]] = {}
        for k, v in request.query.items():
            q.setdefault(k, []).append(v)
        s = Seen(request.method, request.path, q, request.headers.get("Content-Type"), await request.read())
        self.seen.append(s)
        if self.respond is None:
            return web.Response(status=200)  # go-micro writes nothing: 200, empty body
        r = self.respond(len(self.seen) - 1, s)
        if not isinstance(r, web.StreamResponse):
            r = await r
        return r


@pytest.fixture
async def go_nodes() -> AsyncIterator[Callable[..., Awaitable[GoNode]]]:
    nodes: list[GoNode] = []

    async def _make(respond: Responder | None = None) -> GoNode:
        n = await GoNode(respond).start()
        nodes.append(n)
        return n

    yield _make
    for n in nodes:
        await asyncio.wait_for(n.stop(), 10)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def decode_envelope(raw: bytes) -> tuple[dict[str, str], bytes]:
    doc = json.loads(raw)
    assert isinstance(doc, dict) and set(doc) == {"Header", "Body"}, raw[:200]
    assert isinstance(doc["Header"], dict) and all(isinstance(v, str) for v in doc["Header"].values())
    return doc["Header"], base64.b64decode(doc["Body"], validate=True)


def topic_service(topic: str, version: str, *nodes: Node) -> Service:
    return Service(name=f"topic:{topic}", version=version, nodes=tuple(nodes))


async def routed_publisher(
    registry: MemoryRegistry, make_broker: MakeBroker, topic: str, version: str, *nodes: Node, **options: Any
) -> Broker:
    """Register ``nodes`` as the subscribers of ``topic`` (``version``: the queue name or
    BROADCAST_VERSION); returns a publisher that already routes to all of them."""
    await registry.register(topic_service(topic, version, *nodes))
    pub = await make_broker(**options)
    await wait_route(pub, topic, len(nodes))
    return pub


async def test_go_subscriber_gets_one_envelope_per_post_in_order(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    topic = "go.micro.orders"
    node = await go_nodes()
    pub = await routed_publisher(registry, make_broker, topic, BROADCAST_VERSION, node.node())

    for i in range(100):
        await pub.publish(topic, f"order-{i}".encode(), header={"seq": str(i), "Micro-Id": f"id<{i}>&"})
    await pub.flush(timeout=10)

    assert len(node.seen) == 100
    for i, s in enumerate(node.seen):
        assert s.method == "POST"
        assert s.path == "/_sub"
        assert s.query == {"id": [node.id]}
        assert s.content_type == "application/json"
        header, body = decode_envelope(s.body)
        assert header == {":topic": topic, "Micro-Topic": topic, "seq": str(i), "Micro-Id": f"id<{i}>&"}
        assert body == f"order-{i}".encode()
    st = pub.stats()
    assert (st["published"], st["delivered"], st["failed"], st["retried"], st["in_flight"]) == (100, 100, 0, 0, 0)


async def test_go_subscriber_gets_message_headers_and_json_bodies(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    topic = "go.micro.json"
    node = await go_nodes()
    pub = await routed_publisher(registry, make_broker, topic, BROADCAST_VERSION, node.node())
    await pub.publish(topic, Message({"a": "1", ":topic": "spoofed"}, b"\x00\xff binary"))
    await pub.publish(topic, {"name": "John", "n": [1, 2]})
    await pub.flush(timeout=10)
    assert len(node.seen) == 2
    h0, b0 = decode_envelope(node.seen[0].body)
    assert h0 == {":topic": topic, "Micro-Topic": topic, "a": "1"}
    assert b0 == b"\x00\xff binary"
    h1, b1 = decode_envelope(node.seen[1].body)
    assert h1 == {":topic": topic, "Micro-Topic": topic, "Content-Type": "application/json"}
    assert json.loads(b1) == {"name": "John", "n": [1, 2]}


async def test_batch_capable_node_gets_ndjson_batches(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    topic = "batched"

    async def respond(i: int, s: Seen) -> web.Response:
        if i == 0:
            await asyncio.sleep(0.2)  # let the rest pile up behind the first request
        return web.json_response({"failed": []})

    node = await go_nodes(respond)
    pub = await routed_publisher(registry, make_broker, topic, BROADCAST_VERSION, node.node(batch="1"))
    for i in range(100):
        await pub.publish(topic, f"b-{i}".encode(), header={"i": str(i)})
    await pub.flush(timeout=10)

    got: list[bytes] = []
    for s in node.seen:
        assert (s.method, s.path, s.query) == ("POST", "/_sub", {"id": [node.id]})
        assert s.content_type == "application/x-ndjson"
        for line in s.body.split(b"\n"):
            header, body = decode_envelope(line)
            assert header == {":topic": topic, "Micro-Topic": topic, "i": body.decode()[2:]}
            got.append(body)
    assert got == [f"b-{i}".encode() for i in range(100)]
    assert len(node.seen) < 100, "no POST carried more than one envelope"
    st = pub.stats()
    assert (st["delivered"], st["failed"], st["retried"], st["in_flight"]) == (100, 0, 0, 0)


async def test_batch_node_failures_are_retried_alone(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    topic = "batched.partial"
    failed_once: set[bytes] = set()

    def respond(i: int, s: Seen) -> web.Response:
        failed = []
        for idx, line in enumerate(s.body.split(b"\n")):
            _, body = decode_envelope(line)
            if body in (b"m3", b"m7") and body not in failed_once:
                failed_once.add(body)
                failed.append({"index": idx, "status": 500, "error": "handler error: nope"})
        return web.json_response({"failed": failed})

    node = await go_nodes(respond)
    pub = await routed_publisher(registry, make_broker, topic, BROADCAST_VERSION, node.node(batch="1"))
    await pub.publish_many(topic, [f"m{i}".encode() for i in range(10)])
    await pub.flush(timeout=10)
    bodies = [decode_envelope(line)[1] for s in node.seen for line in s.body.split(b"\n")]
    assert sorted(bodies) == sorted([f"m{i}".encode() for i in range(10)] + [b"m3", b"m7"])
    st = pub.stats()
    assert (st["delivered"], st["retried"], st["remote_handler_errors"], st["failed"]) == (10, 2, 2, 0)


async def test_500_twice_then_200_is_retried(registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any) -> None:
    topic = "flaky"

    def respond(i: int, s: Seen) -> web.Response:
        if i < 2:
            return web.Response(status=500, text="handler panicked")
        return web.Response(status=200)

    node = await go_nodes(respond)
    pub = await routed_publisher(registry, make_broker, topic, BROADCAST_VERSION, node.node())
    await pub.publish(topic, b"at-least-once", header={"k": "v"})
    await pub.flush(timeout=10)

    assert len(node.seen) == 3
    assert len({s.body for s in node.seen}) == 1
    assert decode_envelope(node.seen[0].body) == ({":topic": topic, "Micro-Topic": topic, "k": "v"}, b"at-least-once")
    st = pub.stats()
    assert_counters(st, delivered=1, retried=2, remote_handler_errors=2, failed=0, in_flight=0)
    # and it keeps working afterwards
    await pub.publish(topic, b"next")
    await pub.flush(timeout=10)
    assert len(node.seen) == 4
    assert decode_envelope(node.seen[3].body)[1] == b"next"


async def test_404_drops_the_node_from_the_route(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    topic = "vanished"
    answer = {"status": 404}

    def respond(i: int, s: Seen) -> web.Response:
        return web.Response(status=answer["status"], text="subscriber not found")

    node = await go_nodes(respond)
    svc = topic_service(topic, BROADCAST_VERSION, node.node())
    await registry.register(svc)
    pub = await make_broker()
    await wait_route(pub, topic, 1)

    await pub.publish(topic, b"m0")
    await until(lambda: pub.stats()["backlogged"] == 1, 5, "the 404'd message to be parked")
    assert len(node.seen) == 1
    assert pub.route_count(topic) == 0
    for i in range(1, 10):
        await pub.publish(topic, f"m{i}".encode())
    await pub.flush(timeout=10)
    await asyncio.sleep(0.3)  # a retrying publisher would have POSTed again by now
    assert len(node.seen) == 1, "the publisher kept sending to a node that answered 404"
    st = pub.stats()
    assert_counters(st, backlogged=10, backlog=10, delivered=0, failed=0, dropped=0, in_flight=0)

    # the node comes back (registers again): the backlog is delivered to it, in order
    answer["status"] = 200
    await registry.deregister(svc)
    await registry.register(svc)
    await until(lambda: len(node.seen) == 11, 5, "the backlog to drain")
    assert [decode_envelope(s.body)[1] for s in node.seen[1:]] == [f"m{i}".encode() for i in range(10)]
    await pub.flush(timeout=5)
    assert pub.stats()["backlog"] == 0


async def test_queue_group_fails_over_from_a_dead_node(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    topic = "work"
    live = await go_nodes()
    dead = Node(
        id=f"go.micro.http.broker-{uuid.uuid4()}", address=f"127.0.0.1:{closed_port()}", metadata={"secure": "false"}
    )
    pub = await routed_publisher(registry, make_broker, topic, "workers", live.node(), dead)

    expected = [f"job-{i}".encode() for i in range(40)]
    for body in expected:
        await pub.publish(topic, body)
    await pub.flush(timeout=15)

    got = [decode_envelope(s.body)[1] for s in live.seen]
    assert sorted(got) == sorted(expected)  # every message, exactly once
    assert all(s.query == {"id": [live.id]} for s in live.seen)
    st = pub.stats()
    assert_counters(st, delivered=40, failed=0, dropped=0, in_flight=0, backlog=0)


async def test_queue_group_failover_does_not_wait_for_the_dead_nodes_backoff(
    registry: MemoryRegistry, make_broker: MakeBroker, go_nodes: Any
) -> None:
    # default retry settings (retry_max 2 s): once a member is known to be unreachable, what it
    # had queued must move to the live member, not trickle over one message per back-off step
    topic = "work.defaults"
    live = await go_nodes()
    dead = Node(
        id=f"go.micro.http.broker-{uuid.uuid4()}", address=f"127.0.0.1:{closed_port()}", metadata={"secure": "false"}
    )
    pub = await routed_publisher(
        registry, make_broker, topic, "workers", live.node(), dead, retry_min=0.01, retry_max=2.0
    )

    for i in range(40):
        await pub.publish(topic, f"job-{i}".encode())
    t0 = time.monotonic()
    while len(live.seen) < 40 and time.monotonic() - t0 < 5:
        await asyncio.sleep(0.01)
    assert len(live.seen) == 40, (
        f"only {len(live.seen)} of 40 messages reached the live member within 5 s; "
        f"the rest wait behind the dead member's back-off (stats: {pub.stats()})"
    )
