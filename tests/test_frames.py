"""The raw frame format between hyperbroker nodes (``Content-Type: application/x-hyperbroker-frames``).

The endpoint is driven with frames built here by an independent encoder (``struct``, big-endian
u32 lengths: topic, header count, key/value pairs, body); negotiation is checked against
recording HTTP nodes registered by hand with and without ``frames=1``; and end to end between
two brokers, with bodies no JSON envelope carries as they are. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from brokers import AsyncSink, MakeBroker, Sink, assert_counters, envelope, post, until

from hyperbroker import BROADCAST_VERSION, Broker, MemoryRegistry, Message, Node, Service

pytestmark = pytest.mark.timeout(30)

TOPIC = "orders.created"
FRAMES = "application/x-hyperbroker-frames"


def frame(topic: str | bytes, body: bytes, header: dict[str, str] | None = None) -> bytes:
    """One frame, written independently of the Rust encoder."""

    def s(v: str | bytes) -> bytes:
        b = v.encode() if isinstance(v, str) else v
        return struct.pack(">I", len(b)) + b

    h = header or {}
    out = s(topic) + struct.pack(">I", len(h))
    for k, v in h.items():
        out += s(k) + s(v)
    return out + struct.pack(">I", len(body)) + body


@pytest.fixture
async def sub(make_broker: MakeBroker) -> AsyncIterator[tuple[Broker, Any, AsyncSink]]:
    b = await make_broker(max_body=64 << 10, max_topic=64)
    sink = AsyncSink()
    s = await b.subscribe(TOPIC, sink)
    yield b, s, sink


def url(b: Broker, s: Any) -> str:
    return f"http://{b.address}/_sub?id={s.id}"


# --- the endpoint -----------------------------------------------------------------------------


async def test_frames_are_handled_with_bodies_and_headers_as_they_are(sub: Any, http: aiohttp.ClientSession) -> None:
    b, s, sink = sub
    bodies = [b"", bytes(range(256)), b'\n{"Body":"x"}\r\n', b"\x00" * 5000]
    data = b"".join(frame(TOPIC, body, {"k": f"v{i}", "é": "ü\n"}) for i, body in enumerate(bodies))
    status, text, headers = await post(http, url(b, s), data, FRAMES)
    assert status == 200, text
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(text) == {"received": 4, "failed": []}
    assert sink.bodies == bodies
    assert [dict(e.message.header) for e in sink.events] == [{"k": f"v{i}", "é": "ü\n"} for i in range(4)]
    assert {e.topic for e in sink.events} == {TOPIC}
    assert_counters(b.stats(), received=4, handler_errors=0)


async def test_frames_answer_per_message(sub: Any, http: aiohttp.ClientSession) -> None:
    b, s, sink = sub
    data = (
        frame(TOPIC, b"a") + frame(TOPIC, b"b", {"raise": "frame-boom"}) + frame("elsewhere", b"c") + frame(TOPIC, b"d")
    )
    status, text, _ = await post(http, url(b, s), data, FRAMES)
    assert status == 200, text
    doc = json.loads(text)
    assert doc["received"] == 4
    assert [(f["index"], f["status"]) for f in doc["failed"]] == [(1, 500), (2, 404)], doc
    assert "frame-boom" in doc["failed"][0]["error"]
    assert sink.bodies == [b"a", b"d"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (frame(TOPIC, b"body")[:-1], ["frame 0", "truncated", "body"]),
        (frame(TOPIC, b"ok") + frame(TOPIC, b"x")[:7], ["frame 1", "truncated"]),
        (b"\x00\x00", ["frame 0", "truncated", "topic"]),
        (frame(TOPIC, b"")[:-4] + struct.pack(">I", 60000), ["truncated", "body"]),
        (frame(TOPIC, b"")[:-4] + struct.pack(">I", 0xFFFFFFFF), ["truncated", "body"]),
        (frame(TOPIC, b"", {"k": "v"})[: 4 + len(TOPIC)] + struct.pack(">I", 1 << 30), ["truncated", "header"]),
    ],
    ids=["cut-body", "cut-second", "cut-length", "body-missing", "body-4g", "count-1g"],
)
async def test_truncated_frames_are_refused_whole_with_400(
    sub: Any, http: aiohttp.ClientSession, data: bytes, words: list[str]
) -> None:
    b, s, sink = sub
    status, text, headers = await post(http, url(b, s), data, FRAMES)
    assert status == 400, text
    assert headers["Content-Type"].startswith("text/plain")
    assert all(w in text for w in words), text
    await asyncio.sleep(0.05)
    assert sink.calls == 0, "nothing of a refused frames body is handled"


async def test_a_refused_frame_fails_alone(sub: Any, http: aiohttp.ClientSession) -> None:
    """Frames whose lengths are intact but whose content is refused fail with 400 in the batch
    response; the frames around them are handled."""
    b, s, sink = sub
    bad = [
        (frame("t" * 65, b""), "topic of 65 bytes is over the limit of 64 bytes"),
        (frame(b"\xff\xfe", b""), "frame 2: its topic is not UTF-8"),
        (frame("", b"x"), "frame 3 has an empty topic"),
    ]
    data = frame(TOPIC, b"first") + b"".join(f for f, _ in bad) + frame(TOPIC, b"last")
    status, text, _ = await post(http, url(b, s), data, FRAMES)
    assert status == 200, text
    doc = json.loads(text)
    assert doc["received"] == 5
    assert [(f["index"], f["status"], f["error"]) for f in doc["failed"]] == [
        (i + 1, 400, why) for i, (_, why) in enumerate(bad)
    ]
    assert sink.bodies == [b"first", b"last"]
    assert_counters(b.stats(), received=2)


async def test_a_receipt_comes_when_the_batch_is_queued_and_the_results_after_the_handlers(
    sub: Any, http: aiohttp.ClientSession
) -> None:
    """``X-Hyperbroker-Receipt: 1`` (the publisher's ordered pipeline): the answer's head, 200
    with the same header, comes while the handler still runs; its body, the batch response,
    once it finished. Without the header, or when nothing was queued, no receipt."""
    b, s, sink = sub
    data = frame(TOPIC, b"slow", {"slow": "0.5"}) + frame(TOPIC, b"boom", {"raise": "no"})
    headers = {"Content-Type": FRAMES, "X-Hyperbroker-Receipt": "1"}
    async with http.post(url(b, s), data=data, headers=headers) as r:
        assert r.status == 200
        assert r.headers["X-Hyperbroker-Receipt"] == "1"
        assert sink.events == [], "the receipt came before the handler finished"
        doc = json.loads(await r.read())
    assert sink.bodies == [b"slow"]
    assert doc["received"] == 2
    assert [(f["index"], f["status"]) for f in doc["failed"]] == [(1, 500)]
    # no receipt asked: none given
    async with http.post(url(b, s), data=frame(TOPIC, b"plain"), headers={"Content-Type": FRAMES}) as r:
        assert "X-Hyperbroker-Receipt" not in r.headers
        assert json.loads(await r.read()) == {"received": 1, "failed": []}
    # nothing queued (a refused body, an unknown subscriber): no receipt
    async with http.post(url(b, s), data=frame(TOPIC, b"cut")[:-1], headers=headers) as r:
        assert r.status == 400 and "X-Hyperbroker-Receipt" not in r.headers
        assert "truncated" in await r.text()
    async with http.post(f"http://{b.address}/_sub?id=nobody", data=frame(TOPIC, b"x"), headers=headers) as r:
        assert "X-Hyperbroker-Receipt" not in r.headers
        assert json.loads(await r.read())["failed"][0]["status"] == 404


async def test_pipelined_batches_reach_a_slow_handler_in_order(make_broker: MakeBroker) -> None:
    """The ordered mode (``node_inflight=1``) sends the next batch once the node received the
    last one: many small batches to a handler that yields between messages arrive in order."""
    sub_b = await make_broker()
    got: list[bytes] = []
    done = asyncio.Event()
    n = 3000

    async def handler(ev: Any) -> None:
        got.append(ev.message.body)
        if len(got) % 97 == 0:
            await asyncio.sleep(0.001)
        if len(got) == n:
            done.set()

    await sub_b.subscribe(TOPIC, handler)
    pub = await make_broker(max_batch=50)
    await pub.wait_for_route(TOPIC, timeout=5)
    bodies = [str(i).encode() for i in range(n)]
    for i in range(0, n, 500):
        await pub.publish_many(TOPIC, bodies[i : i + 500])
    await pub.flush(timeout=20)
    await asyncio.wait_for(done.wait(), 10)
    assert got == bodies
    assert_counters(pub.stats(), dropped=0, delivered=n)


# --- negotiation --------------------------------------------------------------------------------


class RecordingNode:
    """An HTTP node that records the content type and body of every delivery and answers 200
    (a batch response for batch and frames requests)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, bytes]] = []
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def handle(self, req: web.Request) -> web.Response:
        body = await req.read()
        ct = req.headers.get("Content-Type", "")
        self.requests.append((ct, body))
        if ct.startswith(FRAMES):
            return web.json_response({"received": count_frames(body), "failed": []})
        if ct.startswith("application/x-ndjson"):
            return web.json_response({"received": len(body.splitlines()), "failed": []})
        return web.Response()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/_sub", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.address = f"127.0.0.1:{sock.getsockname()[1]}"


def count_frames(body: bytes) -> int:
    n, i = 0, 0
    while i < len(body):
        (tl,) = struct.unpack_from(">I", body, i)
        i += 4 + tl
        (hc,) = struct.unpack_from(">I", body, i)
        i += 4
        for _ in range(2 * hc):
            (ln,) = struct.unpack_from(">I", body, i)
            i += 4 + ln
        (bl,) = struct.unpack_from(">I", body, i)
        i += 4 + bl
        n += 1
    return n


@pytest.fixture
async def nodes() -> AsyncIterator[list[RecordingNode]]:
    made: list[RecordingNode] = []
    yield made
    for n in made:
        if n.runner is not None:
            await n.runner.cleanup()


@pytest.mark.parametrize(
    ("meta", "content_type"),
    [
        ({"frames": "1", "batch": "1"}, FRAMES),
        ({"frames": "1"}, FRAMES),
        ({"batch": "1"}, "application/x-ndjson"),
        ({}, "application/json"),
    ],
)
async def test_frames_only_to_nodes_that_announce_them(
    make_broker: MakeBroker, nodes: list[RecordingNode], meta: dict[str, str], content_type: str
) -> None:
    node = RecordingNode()
    nodes.append(node)
    await node.start()
    reg = MemoryRegistry()
    await reg.register(Service(f"topic:{TOPIC}", BROADCAST_VERSION, (Node("n1", node.address, meta),)))
    pub = await make_broker(registry=reg)
    await pub.wait_for_route(TOPIC, timeout=5)
    bodies = [b"one", bytes(range(256))]
    for body in bodies:
        await pub.publish(TOPIC, body, {"k": "v"})
    await pub.flush(timeout=5)
    assert {ct for ct, _ in node.requests} == {content_type}
    raw = b"".join(body for _, body in node.requests)
    if content_type == FRAMES:
        assert raw == b"".join(frame(TOPIC, body, {"k": "v"}) for body in bodies), "exactly the frames"
    else:
        assert b"Micro-Topic" in raw and b'"Body":"b25l"' in raw, raw[:200]
    await reg.close()


async def test_subscriptions_announce_frames_unless_turned_off(
    make_broker: MakeBroker, registry: MemoryRegistry
) -> None:
    on = await make_broker()
    off = await make_broker(frames=False)
    no_batch = await make_broker(batch=False)
    await on.subscribe("t.on", Sink())
    await off.subscribe("t.off", Sink())
    await no_batch.subscribe("t.nb", Sink())
    (s_on,) = await registry.get_service("topic:t.on")
    (s_off,) = await registry.get_service("topic:t.off")
    (s_nb,) = await registry.get_service("topic:t.nb")
    assert (s_on.nodes[0].metadata.get("frames"), s_on.nodes[0].metadata.get("batch")) == ("1", "1")
    assert "frames" not in s_off.nodes[0].metadata and s_off.nodes[0].metadata.get("batch") == "1"
    assert "frames" not in s_nb.nodes[0].metadata and "batch" not in s_nb.nodes[0].metadata


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [True, False], ids=["frames", "json"])
async def test_two_brokers_carry_any_body_and_header(make_broker: MakeBroker, frames: bool) -> None:
    sub_b = await make_broker(frames=frames)
    sink = Sink()
    await sub_b.subscribe(TOPIC, sink)
    pub = await make_broker()
    await pub.wait_for_route(TOPIC, timeout=5)
    bodies = [b"", bytes(range(256)) * 3, b"x" * 4095, b"y" * 4096, bytes(range(256)) * 4096]  # up to 1 MiB
    header = {"k": "v", ":topic": "ignored", "Micro-Topic": "ignored too", "ü": "\n"}
    for body in bodies:
        await pub.publish(TOPIC, body, header)
    await pub.flush(timeout=10)
    await sink.wait(len(bodies))
    assert sink.bodies == bodies
    assert all(dict(e.message.header) == {"k": "v", "ü": "\n"} for e in sink.events)
    assert_counters(pub.stats(), dropped=0)


async def test_a_large_body_is_held_not_copied_while_queued(make_broker: MakeBroker) -> None:
    """Publishing keeps a reference to a large ``bytes`` body (no copy) until its last copy is
    done with; a small body is copied at once."""
    pub = await make_broker()
    large = bytes(64 << 10)
    small = bytes(100)
    before = (sys.getrefcount(large), sys.getrefcount(small))
    await pub.publish("nobody.listens", large)  # no route yet: parked in the backlog
    await pub.publish("nobody.listens", small)
    assert (sys.getrefcount(large), sys.getrefcount(small)) == (before[0] + 1, before[1])
    sink = Sink()
    sub_b = await make_broker()
    await sub_b.subscribe("nobody.listens", sink)
    await sink.wait(2)
    await pub.flush(timeout=5)
    assert sink.bodies == [large, small]
    await until(lambda: sys.getrefcount(large) == before[0], 5, "the body released after delivery")


async def test_json_envelopes_still_reach_a_frames_node(sub: Any, http: aiohttp.ClientSession) -> None:
    """A node that announces frames still takes go-micro's JSON envelope and batches."""
    b, s, sink = sub
    status, text, _ = await post(http, url(b, s), envelope(TOPIC, b"json"))
    assert status == 200, text
    status, text, _ = await post(
        http, url(b, s), envelope(TOPIC, b"nd1") + b"\n" + envelope(TOPIC, b"nd2"), "application/x-ndjson"
    )
    assert status == 200, text
    assert sink.bodies == [b"json", b"nd1", b"nd2"]


async def test_a_received_header_behaves_as_a_dict_of_the_message(make_broker: MakeBroker) -> None:
    """The header dict of a received message is made on first access: it is then the same
    object every time, mutations stay, and equality and repr see it."""
    sub_b = await make_broker()
    sink = Sink()
    await sub_b.subscribe(TOPIC, sink)
    pub = await make_broker()
    await pub.wait_for_route(TOPIC, timeout=5)
    await pub.publish(TOPIC, b"with", {"k": "v"})
    await pub.publish(TOPIC, b"without")
    await pub.flush(timeout=5)
    await sink.wait(2)
    with_h, without_h = (e.message for e in sink.events)
    assert with_h.header is with_h.header
    assert with_h == Message({"k": "v"}, b"with") and without_h == Message(None, b"without")
    with_h.header["added"] = "x"
    assert with_h.header == {"k": "v", "added": "x"}
    assert "'added': 'x'" in repr(with_h) and "'added'" in repr(sink.events[0])
    assert without_h.header == {} and without_h.header is without_h.header
    with_h.header = {"new": "1"}
    assert with_h.header == {"new": "1"}
