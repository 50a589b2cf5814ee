"""Request/reply with real brokers on loopback: ``Broker.request`` sends one message to one
subscriber node of the topic and returns its handler's return value as a Message.

Covered: a subscriber in another process, a queue group of three (replies rotate), the reply
types (str, bytes, JSON, Message with header, None), a handler that raises (RequestError, not
retried), a dead node (refusing, or accepting and never answering) and no subscriber at all
(RequestTimeoutError after the timeout; a subscriber that appears meanwhile answers), a
go-micro-style peer answering 200 with an empty body (an empty Message), concurrent requests to
a node that takes batches, the ``replies`` field of a batch response, a reply that cannot be
sent, ``SyncBroker.request``, and that requests leave ordinary publishing alone.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from brokers import LOOPBACK, MakeBroker, envelope, until

from hyperbroker import (
    BROADCAST_VERSION,
    Broker,
    BrokerError,
    Event,
    MemoryRegistry,
    Message,
    Node,
    NotConnectedError,
    RequestError,
    RequestTimeoutError,
    Service,
    SyncBroker,
)
from hyperbroker.registry.base import service_name

pytestmark = pytest.mark.timeout(60)


def echo_upper(ev: Event) -> str:
    return ev.message.body.decode().upper()


async def register_node(registry: MemoryRegistry, topic: str, node_id: str, address: str, **meta: str) -> None:
    """Announce a subscriber node by hand (what a go-micro peer, or another process, does)."""
    node = Node(node_id, address, {"broker": "http", "secure": "false", **meta})
    await registry.register(Service(service_name(topic), BROADCAST_VERSION, (node,)))


# --- the basics -------------------------------------------------------------------------------


async def test_reply_types_str_bytes_json_message_and_none(make_broker: MakeBroker) -> None:
    sub = await make_broker()
    replies: dict[str, object] = {
        "str": "text reply",
        "bytes": b"\x00\xffraw",
        "json": {"answer": 42, "list": [1, "two"]},
        "message": Message({"X-Reply": "yes"}, b"with header"),
        "none": None,
    }
    await sub.subscribe("rpc", lambda ev: replies[ev.message.body.decode()])
    pub = await make_broker()
    await pub.wait_for_route("rpc")

    r = await pub.request("rpc", "str")
    assert r.body == b"text reply" and r.header == {}
    r = await pub.request("rpc", b"bytes")
    assert r.body == b"\x00\xffraw"
    r = await pub.request("rpc", "json")
    assert r.json() == {"answer": 42, "list": [1, "two"]}
    assert r.header == {"Content-Type": "application/json"}
    r = await pub.request("rpc", "message")
    assert (r.header, r.body) == ({"X-Reply": "yes"}, b"with header")
    r = await pub.request("rpc", "none")
    assert (r.header, r.body) == ({}, b""), "a handler that returns None answers with an empty Message"


async def test_request_carries_json_and_header_to_the_handler(make_broker: MakeBroker) -> None:
    seen: list[Message] = []

    async def handler(ev: Event) -> dict[str, Any]:
        seen.append(ev.message)
        return {"sum": sum(ev.message.json()["n"])}

    sub = await make_broker()
    await sub.subscribe("math", handler)
    pub = await make_broker()
    r = await pub.request("math", {"n": [1, 2, 3]}, header={"X-Trace": "t1"}, timeout=5)
    assert r.json() == {"sum": 6}
    assert seen[0].header == {"Content-Type": "application/json", "X-Trace": "t1"}


async def test_request_goes_to_one_node_of_a_broadcast_topic(make_broker: MakeBroker) -> None:
    """Even without a queue group, one request reaches exactly one subscriber (round-robin)."""
    calls: list[str] = []
    for name in ("a", "b"):
        b = await make_broker()

        def handler(ev: Event, name: str = name) -> str:
            calls.append(name)
            return name

        await b.subscribe("fan", handler)
    pub = await make_broker()
    await until(lambda: pub.route_count("fan") == 2, 5, "both subscribers routed")
    answers = [(await pub.request("fan", b"?")).body.decode() for _ in range(4)]
    assert sorted(answers) == ["a", "a", "b", "b"]
    assert answers[0] != answers[1] and answers[:2] == answers[2:]
    assert sorted(calls) == ["a", "a", "b", "b"], "each request ran one handler, not every subscriber's"


async def test_queue_group_of_three_replies_rotate(make_broker: MakeBroker) -> None:
    for name in ("one", "two", "three"):
        b = await make_broker()
        await b.subscribe("work", lambda ev, name=name: name, queue="workers")
    pub = await make_broker()
    await until(lambda: pub.route_count("work") == 3, 5, "three workers routed")
    answers = [(await pub.request("work", b"job")).body.decode() for _ in range(9)]
    assert sorted(set(answers)) == ["one", "three", "two"]
    first = answers[:3]
    assert len(set(first)) == 3, answers
    assert answers == first * 3, "round-robin: the same rotation over and over"


# --- failures ---------------------------------------------------------------------------------


async def test_a_handler_that_raises_is_a_request_error_and_is_not_retried(make_broker: MakeBroker) -> None:
    calls = 0

    def handler(ev: Event) -> str:
        nonlocal calls
        calls += 1
        raise ValueError("no such account")

    sub = await make_broker()
    await sub.subscribe("acct", handler)
    pub = await make_broker()
    with pytest.raises(RequestError) as info:
        await pub.request("acct", b"42", timeout=5)
    assert info.value.status == 500
    assert "ValueError: no such account" in str(info.value)
    assert isinstance(info.value, BrokerError)
    await asyncio.sleep(0.3)
    assert calls == 1, "a request is never retried once a handler ran"


async def test_an_async_handler_that_raises_and_one_that_answers(make_broker: MakeBroker) -> None:
    async def handler(ev: Event) -> bytes:
        await asyncio.sleep(0.01)
        if ev.message.body == b"bad":
            raise RuntimeError("async boom")
        return ev.message.body * 2

    sub = await make_broker()
    await sub.subscribe("a", handler)
    pub = await make_broker()
    assert (await pub.request("a", b"ok")).body == b"okok"
    with pytest.raises(RequestError, match="RuntimeError: async boom"):
        await pub.request("a", b"bad")


async def test_no_subscriber_times_out_after_the_timeout(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError, match='no subscriber of "nobody"'):
        await pub.request("nobody", b"?", timeout=0.4)
    took = time.monotonic() - t0
    assert 0.35 < took < 2.0, took
    assert isinstance(RequestTimeoutError("x"), TimeoutError)


async def test_a_subscriber_that_appears_within_the_timeout_answers(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    sub = await make_broker()

    async def subscribe_later() -> None:
        await asyncio.sleep(0.3)
        await sub.subscribe("late", echo_upper)

    task = asyncio.create_task(subscribe_later())
    r = await pub.request("late", "hello", timeout=5)
    await task
    assert r.body == b"HELLO"


async def test_a_node_that_refuses_connections_times_out(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # registered, but nothing listens
    await register_node(registry, "dead", "dead-node", f"127.0.0.1:{port}")
    pub = await make_broker()
    await pub.wait_for_route("dead")
    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError) as info:
        await pub.request("dead", b"?", timeout=0.5)
    assert 0.45 < time.monotonic() - t0 < 3.0
    assert f"127.0.0.1:{port}" in str(info.value), "the message names the node that did not answer"


async def test_a_node_that_never_answers_times_out(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # the kernel accepts the connection; nobody ever reads or answers
    try:
        port = hole.getsockname()[1]
        await register_node(registry, "hole", "hole-node", f"127.0.0.1:{port}")
        pub = await make_broker()
        await pub.wait_for_route("hole")
        t0 = time.monotonic()
        with pytest.raises(RequestTimeoutError, match="did not answer in time"):
            await pub.request("hole", b"?", timeout=0.5)
        assert 0.45 < time.monotonic() - t0 < 3.0
    finally:
        hole.close()


async def test_a_dead_queue_member_is_skipped_for_a_live_one(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    """A refused connection never reached a handler: the request goes to the next member."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    node = Node("dead-member", f"127.0.0.1:{port}", {"broker": "http", "secure": "false"})
    await registry.register(Service(service_name("jobs"), "q", (node,)))
    live = await make_broker()
    await live.subscribe("jobs", lambda ev: b"live", queue="q")
    pub = await make_broker()
    await until(lambda: pub.route_count("jobs") == 2, 5, "both members routed")
    for _ in range(4):
        assert (await pub.request("jobs", b"?", timeout=3)).body == b"live"


async def test_a_reply_that_cannot_be_sent_fails_the_request(make_broker: MakeBroker) -> None:
    sub = await make_broker()
    await sub.subscribe("odd", lambda ev: object() if ev.message.body == b"odd" else b"fine")
    pub = await make_broker()
    with pytest.raises(RequestError, match="the handler's reply cannot be sent: cannot publish object"):
        await pub.request("odd", b"odd")
    assert (await pub.request("odd", b"ok")).body == b"fine", "the subscriber goes on answering"


async def test_disconnect_fails_a_waiting_request(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    task = asyncio.create_task(pub.request("never", b"?", timeout=10))
    await asyncio.sleep(0.1)
    await pub.disconnect(timeout=0)
    with pytest.raises((NotConnectedError, RequestTimeoutError)):
        await asyncio.wait_for(task, 5)


async def test_bad_arguments(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    with pytest.raises(BrokerError, match="timeout must be > 0"):
        await pub.request("t", b"?", timeout=0)
    with pytest.raises(BrokerError, match="topic"):
        await pub.request("", b"?")
    with pytest.raises(BrokerError, match="cannot publish"):
        await pub.request("t", object())
    with pytest.raises(NotConnectedError):
        await Broker(address=LOOPBACK).request("t", b"?")


# --- peers: a go-micro node, another process ---------------------------------------------------


@pytest.fixture
async def gomicro_peer() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP server doing what go-micro's broker does: 200 with an empty body."""
    received: list[bytes] = []

    async def sub(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/_sub", sub)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


async def test_a_go_micro_peer_answers_with_an_empty_message(
    make_broker: MakeBroker, registry: MemoryRegistry, gomicro_peer: tuple[str, list[bytes]]
) -> None:
    address, received = gomicro_peer
    await register_node(registry, "legacy", "go.micro.http.broker-1", address)
    pub = await make_broker()
    await pub.wait_for_route("legacy")
    r = await pub.request("legacy", b"ping", header={"X-Id": "7"})
    assert (r.header, r.body) == ({}, b"")
    assert len(received) == 1
    env = json.loads(received[0])
    # the request carries the topic under both keys (v1 and current go-micro read one each)
    assert env["Header"] == {":topic": "legacy", "Micro-Topic": "legacy", "X-Id": "7"}
    assert base64.b64decode(env["Body"]) == b"ping", "the request is an ordinary go-micro envelope"


CHILD = r"""
import asyncio, json, os, sys
from hyperbroker import Broker, MemoryRegistry

async def main():
    async with Broker(address="127.0.0.1:0", registry=MemoryRegistry(), disconnect_timeout=0) as b:
        def handler(ev):
            if ev.message.body == b"raise":
                raise KeyError("child says no")
            return {"pid": os.getpid(), "echo": ev.message.body.decode()}
        sub = await b.subscribe("xproc", handler)
        print(json.dumps({"address": b.advertised_address, "id": sub.id}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def test_request_reply_across_two_processes(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        await register_node(registry, "xproc", hello["id"], hello["address"])
        pub = await make_broker()
        await pub.wait_for_route("xproc")
        answers = await asyncio.gather(*(pub.request("xproc", f"m{i}", timeout=10) for i in range(20)))
        assert [a.json()["echo"] for a in answers] == [f"m{i}" for i in range(20)]
        assert {a.json()["pid"] for a in answers} == {proc.pid}
        with pytest.raises(RequestError, match="KeyError"):
            await pub.request("xproc", b"raise", timeout=10)
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- batching ---------------------------------------------------------------------------------


async def test_concurrent_requests_to_a_batch_node_each_get_their_own_reply(make_broker: MakeBroker) -> None:
    sub = await make_broker(batch=True)
    order: list[str] = []

    async def slow_echo(ev: Event) -> str:
        body = ev.message.body.decode()
        order.append(body)
        await asyncio.sleep(0.001)
        return f"re:{body}"

    await sub.subscribe("b", slow_echo)
    await sub.subscribe("bs", lambda ev: None if ev.message.body.endswith(b"0") else b"s:" + ev.message.body)
    pub = await make_broker(batch=True)
    await pub.wait_for_route("b")
    await pub.wait_for_route("bs")
    n = 200
    answers = await asyncio.gather(*(pub.request("b", f"q{i}", timeout=10) for i in range(n)))
    assert [a.body.decode() for a in answers] == [f"re:q{i}" for i in range(n)]
    assert len(order) == n
    plain = await asyncio.gather(*(pub.request("bs", f"p{i}", timeout=10) for i in range(50)))
    assert [a.body for a in plain] == [b"" if i % 10 == 0 else f"s:p{i}".encode() for i in range(50)]


async def test_a_batch_response_carries_the_replies(make_broker: MakeBroker) -> None:
    """A batch POST (as a publisher sends to a batch node) gets each handler's reply back in the
    response's ``replies`` field; envelopes without a reply and failed ones are not in it."""
    sub = await make_broker(batch=True)

    def handler(ev: Event) -> object:
        b = ev.message.body
        if b == b"fail":
            raise RuntimeError("nope")
        return None if b == b"quiet" else {"got": b.decode()}

    s = await sub.subscribe("batched", handler)
    lines = [envelope("batched", b) for b in (b"a", b"quiet", b"fail", b"d")]
    url = f"http://{sub.advertised_address}/_sub?id={s.id}"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=b"\n".join(lines), headers={"Content-Type": "application/x-ndjson"}) as r,
    ):
        assert r.status == 200
        doc = await r.json()
    assert doc["received"] == 4
    assert [f["index"] for f in doc["failed"]] == [2]
    assert [x["index"] for x in doc["replies"]] == [0, 3]
    bodies = [json.loads(base64.b64decode(x["reply"]["Body"])) for x in doc["replies"]]
    assert bodies == [{"got": "a"}, {"got": "d"}]
    assert doc["replies"][0]["reply"]["Header"] == {":topic": "batched", "Content-Type": "application/json"}


async def test_a_single_post_gets_the_reply_envelope(make_broker: MakeBroker) -> None:
    sub = await make_broker()
    s = await sub.subscribe("one", lambda ev: Message({"h": "1"}, b"body"))
    quiet = await sub.subscribe("quiet", lambda ev: None)
    async with aiohttp.ClientSession() as http:
        url = f"http://{sub.advertised_address}/_sub?id={s.id}"
        async with http.post(url, data=envelope("one", b"x"), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/vnd.hyperbroker.reply+json"
            env = json.loads(await r.read())
        assert env["Header"] == {":topic": "one", "h": "1"} and base64.b64decode(env["Body"]) == b"body"
        url = f"http://{sub.advertised_address}/_sub?id={quiet.id}"
        async with http.post(url, data=envelope("quiet", b"x"), headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200 and await r.read() == b"", "no reply: the go-micro answer, unchanged"


async def test_publishing_to_a_replying_handler_is_unaffected(make_broker: MakeBroker) -> None:
    got: list[bytes] = []

    def handler(ev: Event) -> bytes:
        got.append(ev.message.body)
        return b"ignored by publish"

    for batch in (False, True):
        got.clear()
        sub = await make_broker(batch=batch)
        await sub.subscribe(f"p{batch}", handler)
        pub = await make_broker(batch=batch)
        await pub.wait_for_route(f"p{batch}")
        for i in range(100):
            await pub.publish(f"p{batch}", f"{i}".encode())
        await pub.flush(timeout=10)
        await until(lambda: len(got) == 100, 5, "all delivered")
        st = pub.stats()
        assert st["delivered"] == 100 and st["retried"] == 0, st


# --- SyncBroker -------------------------------------------------------------------------------


@pytest.fixture
def sync_pair(registry: MemoryRegistry) -> Iterator[tuple[SyncBroker, SyncBroker]]:
    with (
        SyncBroker(address=LOOPBACK, registry=registry, disconnect_timeout=0) as a,
        SyncBroker(address=LOOPBACK, registry=registry, disconnect_timeout=0) as b,
    ):
        yield a, b


def test_sync_broker_request(sync_pair: tuple[SyncBroker, SyncBroker]) -> None:
    server, client = sync_pair

    def plain(ev: Event) -> dict[str, str]:  # runs in a worker thread
        if ev.message.body == b"boom":
            raise ValueError("sync boom")
        return {"echo": ev.message.body.decode()}

    async def coro(ev: Event) -> str:
        return "async:" + ev.message.body.decode()

    server.subscribe("sync-rpc", plain)
    server.subscribe("async-rpc", coro)
    assert client.request("sync-rpc", "hi", timeout=5).json() == {"echo": "hi"}
    assert client.request("async-rpc", b"yo", timeout=5).body == b"async:yo"
    with pytest.raises(RequestError, match="ValueError: sync boom"):
        client.request("sync-rpc", b"boom", timeout=5)
    with pytest.raises(RequestTimeoutError):
        client.request("nobody-sync", b"?", timeout=0.3)
    with pytest.raises(BrokerError, match="timeout must be > 0"):
        client.request("sync-rpc", b"?", timeout=-1)
    with pytest.raises(BrokerError, match="header keys and values must be strings"):
        client.request("sync-rpc", b"?", header={"k": 1})  # type: ignore[dict-item]
