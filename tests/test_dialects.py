"""Both go-micro HTTP-broker registry layouts, with MemoryRegistry only (no Go, no etcd).

- v1: service ``topic:<topic>``, endpoint ``POST /_sub?id=``, topic in the envelope's ``:topic``;
- current go-micro: service ``micro.http.broker`` for every topic, node id ``<topic>-<id>``,
  node metadata ``broker=http``/``topic=<topic>``, endpoint ``POST /?id=``, topic in the
  envelope's ``Micro-Topic``.

A "current go-micro" subscriber is played by a tiny aiohttp server at ``/`` registered by hand.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from brokers import MakeBroker, Sink, until

from hyperbroker import BROADCAST_VERSION, Broker, BrokerError, MemoryRegistry, Node, Service
from hyperbroker.registry.base import MICRO_SERVICE

pytestmark = pytest.mark.timeout(60)


@dataclass
class GoSubscriber:
    """An HTTP server answering 200 on one path, as go-micro's endpoint does; records each POST."""

    path: str
    address: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        msg = json.loads(raw)
        self.posts.append(
            {
                "path": request.path,
                "id": request.query.get("id"),
                "header": msg["Header"],
                "body": base64.b64decode(msg["Body"] or ""),
            }
        )
        return web.Response(text="")


@pytest.fixture
async def go_server() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(path: str) -> GoSubscriber:
        sub = GoSubscriber(path)
        app = web.Application()
        app.router.add_post(path, sub.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        sub.address = f"127.0.0.1:{port}"
        return sub

    yield start
    for r in runners:
        await r.cleanup()


def micro_node(node_id: str, address: str, topic: str, **extra: str) -> Node:
    return Node(node_id, address, {"secure": "false", "broker": "http", "topic": topic, **extra})


async def test_dialect_option_is_checked() -> None:
    with pytest.raises(BrokerError, match="dialect"):
        Broker(dialect="v2")
    assert Broker().options.dialect == "v1"


async def test_v1_registration_carries_broker_and_topic(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    b = await make_broker()
    sub = await b.subscribe("orders", Sink())
    assert sub.id.startswith("hb-")
    (svc,) = await registry.get_service("topic:orders")
    assert svc.version == BROADCAST_VERSION
    (node,) = svc.nodes
    assert (node.id, node.address) == (sub.id, b.advertised_address)
    assert node.metadata["broker"] == "http" and node.metadata["topic"] == "orders"
    assert await registry.get_service(MICRO_SERVICE) == []


async def test_micro_registration_is_current_go_micro_layout(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    b = await make_broker(dialect="micro")
    sink = Sink()
    sub = await b.subscribe("orders", sink, queue="workers")
    assert sub.id.startswith("orders-hb-")
    assert await registry.get_service("topic:orders") == []
    (svc,) = await registry.get_service(MICRO_SERVICE)
    assert svc.version == "workers"
    (node,) = svc.nodes
    assert node.id == sub.id and node.address == b.advertised_address
    assert {k: node.metadata[k] for k in ("secure", "broker", "topic")} == {
        "secure": "false",
        "broker": "http",
        "topic": "orders",
    }

    # a v1-registering broker publishes to it (path "/"), and so does the micro one itself
    pub = await make_broker()
    await pub.wait_for_route("orders", timeout=5)
    await pub.publish("orders", b"from v1", header={"k": "v"})
    await b.wait_for_route("orders", timeout=5)
    await b.publish("orders", b"from micro")
    await until(lambda: len(sink.events) == 2, 5, "both messages")
    assert sorted(sink.bodies) == [b"from micro", b"from v1"]
    # the topic keys a hyperbroker publisher writes are not user headers to a hyperbroker subscriber
    (ev,) = [e for e in sink.events if e.message.body == b"from v1"]
    assert ev.message.header == {"k": "v"}

    # unsubscribing removes the route of every publisher
    await sub.unsubscribe()
    await until(lambda: pub.route_count("orders") == 0, 5, "the route to go")


async def test_publisher_posts_to_a_current_go_micro_node(
    make_broker: MakeBroker, registry: MemoryRegistry, go_server: Any
) -> None:
    go = await go_server("/")
    other = await go_server("/")
    pub = await make_broker()
    t = "go.current"
    nodes = (
        micro_node(f"{t}-go1", go.address, t),
        micro_node("other.topic-go1", other.address, "other.topic"),  # another topic: skipped
        Node(f"{t}-nobroker", other.address, {"topic": t}),  # no broker=http: skipped
    )
    await registry.register(Service(MICRO_SERVICE, BROADCAST_VERSION, nodes))
    assert await pub.wait_for_route(t, timeout=5) == 1

    await pub.publish(t, b"hello go", header={"Content-Type": "text/plain", "Micro-Topic": "ignored"})
    await pub.flush(timeout=5)
    await until(lambda: len(go.posts) == 1, 5, "the POST at the go-micro node")
    (p,) = go.posts
    assert p["path"] == "/" and p["id"] == f"{t}-go1"
    assert p["header"] == {":topic": t, "Micro-Topic": t, "Content-Type": "text/plain"}
    assert p["body"] == b"hello go"
    assert other.posts == []

    # the node leaves: an "update" of micro.http.broker that no longer lists it
    await registry.deregister(Service(MICRO_SERVICE, BROADCAST_VERSION, (nodes[0],)))
    await until(lambda: pub.route_count(t) == 0, 5, "the route to go")
    assert pub.route_count("other.topic") == 1


async def test_a_queue_group_spans_both_layouts(
    make_broker: MakeBroker, registry: MemoryRegistry, go_server: Any
) -> None:
    v1 = await go_server("/_sub")
    micro = await go_server("/")
    pub = await make_broker()
    t = "mixed"
    await registry.register(Service(f"topic:{t}", "q", (Node("v1-node", v1.address, {"secure": "false"}),)))
    await registry.register(Service(MICRO_SERVICE, "q", (micro_node(f"{t}-m", micro.address, t),)))
    await until(lambda: pub.route_count(t) == 2, 5, "both nodes routed")
    for i in range(40):
        await pub.publish(t, f"m{i}".encode())
    await pub.flush(timeout=10)
    await until(lambda: len(v1.posts) + len(micro.posts) == 40, 10, "40 messages")
    got = sorted(p["body"] for p in v1.posts + micro.posts)
    assert got == sorted(f"m{i}".encode() for i in range(40))  # each once between the two
    assert {(p["path"], p["id"]) for p in v1.posts} <= {("/_sub", "v1-node")}
    assert {(p["path"], p["id"]) for p in micro.posts} <= {("/", f"{t}-m")}
    # the v1 node reads :topic, the current one Micro-Topic: each POST carries both
    assert all(p["header"][":topic"] == t and p["header"]["Micro-Topic"] == t for p in v1.posts + micro.posts)


async def test_endpoint_serves_both_paths_and_topic_keys(make_broker: MakeBroker) -> None:
    b = await make_broker()
    sink = Sink()
    sub = await b.subscribe("paths", sink)
    v1 = json.dumps({"Header": {":topic": "paths", "a": "1"}, "Body": base64.b64encode(b"v1").decode()})
    cur = json.dumps({"Header": {"Micro-Topic": "paths", "a": "2"}, "Body": base64.b64encode(b"cur").decode()})
    async with aiohttp.ClientSession() as http:
        for path, data in (("/_sub", v1), ("/", cur), ("/", v1), ("/_sub", cur)):
            async with http.post(f"http://{b.address}{path}?id={sub.id}", data=data) as r:
                assert r.status == 200, (path, await r.text())
        async with http.post(f"http://{b.address}/other?id={sub.id}", data=v1) as r:
            assert r.status == 404
    await until(lambda: len(sink.events) == 4, 5, "four messages")
    assert sink.bodies == [b"v1", b"cur", b"v1", b"cur"]
    # a Micro-Topic from a current go-micro publisher stays a header, as go-micro hands it on
    assert sink.events[1].message.header == {"Micro-Topic": "paths", "a": "2"}
    assert sink.events[0].message.header == {"a": "1"}


def test_mdns_txt_carries_the_topic_metadata() -> None:
    """The mDNS registry's TXT ``topic`` entry is the node's ``topic`` metadata (read back into
    it), for both layouts; a conflicting one is refused."""
    from hyperbroker import RegistryError
    from hyperbroker.registry.mdns import _txt_properties

    node = micro_node("t-1", "127.0.0.1:1", "t")
    props = _txt_properties(Service(MICRO_SERVICE, BROADCAST_VERSION, (node,)), node)
    assert (props["name"], props["topic"], props["path"], props["broker"]) == (MICRO_SERVICE, "t", "/", "http")
    props = _txt_properties(Service("topic:t", BROADCAST_VERSION, (node,)), node)
    assert (props["topic"], props["path"]) == ("t", "/_sub")
    with pytest.raises(RegistryError, match="reserved"):
        _txt_properties(Service("topic:other", BROADCAST_VERSION, (node,)), node)


async def test_micro_dialect_over_mdns() -> None:
    """Two brokers on separate MdnsRegistry instances (loopback multicast; run inside
    ``unshare -rn`` as the other mDNS tests): a micro-layout subscription is found through the
    node's ``topic`` metadata, which the TXT record carries, and gets what a v1 broker publishes."""
    from hyperbroker.registry.mdns import MdnsRegistry

    regs = [MdnsRegistry(interfaces=["127.0.0.1"]), MdnsRegistry(interfaces=["127.0.0.1"])]
    sub_b = Broker(address="127.0.0.1:0", registry=regs[0], dialect="micro", disconnect_timeout=0)
    pub_b = Broker(address="127.0.0.1:0", registry=regs[1], disconnect_timeout=0)
    try:
        await sub_b.connect()
        await pub_b.connect()
        sink = Sink()
        sub = await sub_b.subscribe("mdns.micro", sink)
        assert await pub_b.wait_for_route("mdns.micro", timeout=10) == 1
        (svc,) = await regs[1].get_service(MICRO_SERVICE)
        (node,) = svc.nodes
        assert node.id == sub.id and node.metadata["topic"] == "mdns.micro" and node.metadata["broker"] == "http"
        await pub_b.publish("mdns.micro", b"over mdns")
        await sink.wait(1)
        assert sink.bodies == [b"over mdns"]
    finally:
        await pub_b.disconnect()
        await sub_b.disconnect()
        for r in regs:
            await r.close()
