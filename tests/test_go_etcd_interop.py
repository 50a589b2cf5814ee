"""A Go peer through etcd, both ways: go-micro v1's HTTP broker (tests/go/etcdpeer, standard
library only) and a hyperbroker Broker with EtcdRegistry, sharing nothing but a real etcd; and
the same with the Go peer in current go-micro's dialect (``-dialect micro``: service
``micro.http.broker``, node id ``<topic>-<broker id>``, metadata ``broker``/``topic``, ``POST
/?id=``, the topic under ``Micro-Topic``).

The Go peer reads and writes go-micro's etcd layout through etcd's v3 JSON gateway
(``/v3/kv/range`` on the prefix, lease grant + put + keepalive, revoke on exit), publishes as
go-micro v1 does (``POST /_sub?id=<node id>``, ``{"Header": {":topic": ...}, "Body": base64}``;
every broadcast node, one random node per queue) and serves ``/_sub`` (answering 200 and
printing what it got). It is built with ``go build`` into a temp dir, nothing downloaded
(``GOFLAGS=-mod=mod GOPROXY=off``); the tests skip, saying why, without ``go`` or ``etcd``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from brokers import until
from etcd_util import EtcdServer, gw_leases, gw_range

from hyperbroker import BROADCAST_VERSION, Broker, Event

pytestmark = pytest.mark.timeout(120)

GO_DIR = Path(__file__).parent / "go" / "etcdpeer"
PREFIX = b"/micro/registry/"
TTL = 3  # the Go peer's lease TTL (s): short, so that its keepalive is exercised


@pytest.fixture(scope="module")
def etcdpeer_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("go is not on PATH (CI installs Debian's golang-go in .ci/run): cannot build the Go peer")
    tmp = tmp_path_factory.mktemp("etcdpeer")
    env = dict(os.environ)
    # standard library only: nothing may be downloaded, and no toolchain switch
    env.update(
        GOFLAGS="-mod=mod",
        GOPROXY="off",
        GOTOOLCHAIN="local",
        GOCACHE=str(tmp / "gocache"),
        GOPATH=str(tmp / "gopath"),
        GOTELEMETRY="off",
    )
    out = tmp / "etcdpeer"
    res = subprocess.run(
        [go, "build", "-o", str(out), "."], cwd=GO_DIR, env=env, capture_output=True, timeout=300, check=False
    )
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return out


class GoPeer:
    """The running Go program: commands as JSON lines on stdin, answers and events on stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seq = 0
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.address = ""
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, binary: Path, etcd: EtcdServer, dialect: str = "v1") -> GoPeer:
        proc = await asyncio.create_subprocess_exec(
            str(binary), "-etcd", etcd.client_url, "-ttl", str(TTL), "-dialect", dialect,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        peer = cls(proc)
        ready = await peer.wait_event(lambda e: e["event"] == "ready", 10)
        peer.address = ready["address"]
        return peer

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if "event" in msg:
                self.events.append(msg)
                self.changed.set()
            elif (fut := self.replies.pop(msg.get("seq", -1), None)) is not None and not fut.done():
                fut.set_result(msg)

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.seq += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[self.seq] = fut
        self.proc.stdin.write(json.dumps({"seq": self.seq, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(fut, 15)
        assert reply["ok"], reply
        return reply

    async def wait_event(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            seen = 0
            while True:
                for e in self.events[seen:]:
                    if pred(e):
                        return e
                seen = len(self.events)
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    def received(self, sub_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "received" and e["id"] == sub_id]

    async def quit(self) -> int:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(ConnectionError):
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self.reader
        return self.proc.returncode or 0


StartPeer = Callable[..., Awaitable[GoPeer]]


@pytest.fixture
async def go_peer(etcdpeer_binary: Path, etcd_server: EtcdServer) -> AsyncIterator[StartPeer]:
    peers: list[GoPeer] = []

    async def start(dialect: str = "v1") -> GoPeer:
        p = await GoPeer.start(etcdpeer_binary, etcd_server, dialect)
        peers.append(p)
        return p

    yield start
    for p in peers:
        await p.quit()


async def _broker(etcd_server: EtcdServer, **options: Any) -> AsyncIterator[Broker]:
    pytest.importorskip("aetcd", reason="EtcdRegistry needs the etcd extra: pip install 'hyperbroker[etcd]'")
    b = Broker(
        address="127.0.0.1:0", registry=f"etcd://{etcd_server.endpoint}", retry_min=0.01, retry_max=0.5, **options
    )
    await b.connect()
    yield b
    await asyncio.wait_for(b.disconnect(timeout=1), 15)


@pytest.fixture
async def broker(etcd_server: EtcdServer) -> AsyncIterator[Broker]:
    async for b in _broker(etcd_server):
        yield b


@pytest.fixture
async def micro_broker(etcd_server: EtcdServer) -> AsyncIterator[Broker]:
    """A broker that registers in current go-micro's layout (``dialect="micro"``)."""
    async for b in _broker(etcd_server, dialect="micro"):
        yield b


def topic() -> str:
    return f"go.etcd.{uuid.uuid4().hex[:10]}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_go_publishes_to_hyperbroker(go_peer: StartPeer, broker: Broker, etcd_server: EtcdServer) -> None:
    t, tq = topic(), topic()
    got: list[Event] = []
    queued: dict[str, list[bytes]] = {"a": [], "b": []}
    sub = await broker.subscribe(t, got.append)
    qa = await broker.subscribe(tq, lambda ev: queued["a"].append(ev.message.body), queue="workers")
    qb = await broker.subscribe(tq, lambda ev: queued["b"].append(ev.message.body), queue="workers")
    go = await go_peer()

    # the Go peer reads our registrations from etcd, as go-micro's etcd registry would
    nodes = (await go.call("nodes", topic=t))["nodes"]
    assert [(n["id"], n["version"], n["address"], n["metadata"]["secure"]) for n in nodes] == [
        (sub.id, BROADCAST_VERSION, broker.address, "false")
    ]
    assert {n["version"] for n in (await go.call("nodes", topic=tq))["nodes"]} == {"workers"}

    body = bytes(range(256)) + "ünï ☃".encode()
    posts = (await go.call("publish", topic=t, header={"Content-Type": "text/plain", "k": "v"}, body=b64(body)))[
        "posts"
    ]
    assert posts == [{"id": sub.id, "address": broker.address, "status": 200}]
    await until(lambda: len(got) == 1, 5, "the Go message")
    assert got[0].topic == t
    assert got[0].message.body == body
    assert got[0].message.header == {"Content-Type": "text/plain", "k": "v"}

    # a queue group: each message to one random node of the queue
    for i in range(20):
        posts = (await go.call("publish", topic=tq, header={}, body=b64(f"q{i}".encode())))["posts"]
        assert len(posts) == 1 and posts[0]["status"] == 200 and posts[0]["id"] in (qa.id, qb.id), posts
    await until(lambda: len(queued["a"]) + len(queued["b"]) == 20, 5, "20 queue messages")
    assert sorted(queued["a"] + queued["b"]) == sorted(f"q{i}".encode() for i in range(20))

    # after we unsubscribe, the Go peer finds nobody
    await sub.unsubscribe()
    assert (await go.call("nodes", topic=t))["nodes"] == []
    assert (await go.call("publish", topic=t, header={}, body=b64(b"late")))["posts"] == []


async def test_hyperbroker_publishes_to_go(go_peer: StartPeer, broker: Broker, etcd_server: EtcdServer) -> None:
    t = topic()
    go = await go_peer()
    go_id = (await go.call("subscribe", topic=t, queue=""))["id"]
    assert go_id.startswith("go.micro.http.broker-")

    # what the Go peer put in etcd is go-micro's layout, under its lease
    (kv,) = [kv for kv in gw_range(etcd_server.endpoint, PREFIX) if kv["key"] == PREFIX + f"topic:{t}/{go_id}".encode()]
    assert kv["lease"] in gw_leases(etcd_server.endpoint)
    assert json.loads(kv["value"]) == {
        "name": f"topic:{t}",
        "version": BROADCAST_VERSION,
        "metadata": {},
        "endpoints": [],
        "nodes": [{"id": go_id, "address": go.address, "metadata": {"secure": "false"}}],
    }
    # and our registry reads it (its watch brings it, then the route)
    await broker.wait_for_route(t, timeout=10)
    (svc,) = await broker.registry.get_service(f"topic:{t}")
    assert svc.version == BROADCAST_VERSION and [(n.id, n.address) for n in svc.nodes] == [(go_id, go.address)]

    bodies = [f"m-{i:03d}".encode() for i in range(50)] + [bytes(range(256)), b""]
    for body in bodies:
        await broker.publish(t, body, header={"h": "1"})
    await broker.flush(timeout=10)
    await until(lambda: len(go.received(go_id)) == len(bodies), 10, "every message at the Go peer")
    recv = go.received(go_id)
    assert [base64.b64decode(e["body"] or "") for e in recv] == bodies  # in order, exactly once
    assert all(e["topic"] == t and e["matched"] == 1 for e in recv), recv[:3]
    assert all(e["header"].get("h") == "1" for e in recv), recv[:3]
    assert {e["content_type"] for e in recv} == {"application/json"}
    st = broker.stats()
    assert st["delivered"] == len(bodies) and st["backlog"] == 0 and st["dropped"] == 0, st

    # the Go peer's lease is kept alive past its TTL: still routed after 2 TTLs
    await asyncio.sleep(2 * TTL)
    assert broker.route_count(t) == 1
    assert [kv["key"] for kv in gw_range(etcd_server.endpoint, PREFIX + f"topic:{t}/".encode())] == [
        PREFIX + f"topic:{t}/{go_id}".encode()
    ]

    # the Go peer leaves: its lease is revoked, our watch drops the route at once
    assert await go.quit() == 0
    await until(lambda: broker.route_count(t) == 0, 5, "the route to disappear")
    assert gw_range(etcd_server.endpoint, PREFIX + f"topic:{t}/".encode()) == []
    await broker.publish(t, b"nobody")
    await broker.flush(timeout=5)
    assert broker.stats()["backlog"] == 1


async def test_go_unsubscribe_and_rejects(go_peer: StartPeer, broker: Broker) -> None:
    """The Go endpoint answers as go-micro v1 does; a Go unsubscribe reaches our routes."""
    t = topic()
    go = await go_peer()
    go_id = (await go.call("subscribe", topic=t, queue="gq"))["id"]
    await broker.wait_for_route(t, timeout=10)
    await broker.publish(t, b"one")
    await broker.flush(timeout=5)
    await until(lambda: len(go.received(go_id)) == 1, 5, "the message")
    await go.call("unsubscribe", id=go_id)
    await until(lambda: broker.route_count(t) == 0, 5, "the route to disappear")

    # what go-micro v1's ServeHTTP does with bad requests (checked with urllib, not our client)
    import urllib.error
    import urllib.request

    def status(method: str, data: bytes | None, content_type: str = "application/json") -> int:
        req = urllib.request.Request(
            f"http://{go.address}/_sub?id=x", data=data, method=method, headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    assert await asyncio.to_thread(status, "GET", None) == 405
    assert await asyncio.to_thread(status, "POST", b"not json") == 500
    assert await asyncio.to_thread(status, "POST", b'{"Header":{},"Body":""}') == 500
    ok = b'{"Header":{":topic":"x"},"Body":"aGk="}'
    assert await asyncio.to_thread(status, "POST", ok) == 200
    # go-micro v1 calls ParseForm before reading the body: a form-encoded POST loses its body
    # (why a publisher must send Content-Type: application/json, as ours does)
    assert await asyncio.to_thread(status, "POST", ok, "application/x-www-form-urlencoded") == 500

    # the peer prints each event before it answers, but our reader may not have read it yet
    def rejected() -> list[int]:
        return [e["status"] for e in go.events if e["event"] == "rejected"]

    await until(lambda: len(rejected()) >= 4, 5, "the Go peer's four rejected events")
    assert rejected() == [405, 500, 500, 500]


# --- current go-micro's dialect -----------------------------------------------------------------

MICRO = "micro.http.broker"


async def test_go_micro_publishes_to_hyperbroker(
    go_peer: StartPeer, micro_broker: Broker, etcd_server: EtcdServer
) -> None:
    """A current go-micro publisher finds our micro-layout subscription and POSTs /?id=."""
    t = topic()
    got: list[Event] = []
    sub = await micro_broker.subscribe(t, got.append)
    assert sub.id.startswith(f"{t}-hb-")
    # what we put in etcd is current go-micro's layout
    (kv,) = [kv for kv in gw_range(etcd_server.endpoint, PREFIX + f"{MICRO}/".encode())]
    assert kv["key"] == PREFIX + f"{MICRO}/{sub.id}".encode()
    doc = json.loads(kv["value"])
    assert (doc["name"], doc["version"]) == (MICRO, BROADCAST_VERSION)
    (node,) = doc["nodes"]
    assert node["id"] == sub.id and node["address"] == micro_broker.address
    assert {k: node["metadata"][k] for k in ("secure", "broker", "topic")} == {
        "secure": "false",
        "broker": "http",
        "topic": t,
    }

    go = await go_peer("micro")
    nodes = (await go.call("nodes", topic=t))["nodes"]
    assert [(n["id"], n["version"]) for n in nodes] == [(sub.id, BROADCAST_VERSION)]
    assert (await go.call("nodes", topic=topic()))["nodes"] == []  # filtered by metadata topic
    posts = (await go.call("publish", topic=t, header={"Content-Type": "text/plain"}, body=b64(b"hi")))["posts"]
    assert posts == [{"id": sub.id, "address": micro_broker.address, "status": 200}]
    await until(lambda: len(got) == 1, 5, "the go-micro message")
    assert got[0].topic == t and got[0].message.body == b"hi"
    # go-micro leaves Micro-Topic in the header it hands on; so do we
    assert got[0].message.header == {"Content-Type": "text/plain", "Micro-Topic": t}

    await sub.unsubscribe()
    assert (await go.call("nodes", topic=t))["nodes"] == []


async def test_hyperbroker_publishes_to_go_micro(go_peer: StartPeer, broker: Broker, etcd_server: EtcdServer) -> None:
    """Our (v1-registering) publisher reads go-micro's micro.http.broker nodes and POSTs /?id=."""
    t = topic()
    go = await go_peer("micro")
    go_id = (await go.call("subscribe", topic=t, queue=""))["id"]
    assert go_id.startswith(f"{t}-go.micro.http.broker-")
    (kv,) = [kv for kv in gw_range(etcd_server.endpoint, PREFIX + f"{MICRO}/".encode())]
    assert json.loads(kv["value"])["nodes"] == [
        {"id": go_id, "address": go.address, "metadata": {"secure": "false", "broker": "http", "topic": t}}
    ]
    await broker.wait_for_route(t, timeout=10)
    assert broker.route_count(topic()) == 0  # another topic does not route to it

    bodies = [f"m-{i:02d}".encode() for i in range(20)]
    for body in bodies:
        await broker.publish(t, body, header={"h": "1"})
    await broker.flush(timeout=10)
    await until(lambda: len(go.received(go_id)) == len(bodies), 10, "every message at the go-micro peer")
    recv = go.received(go_id)
    assert [base64.b64decode(e["body"] or "") for e in recv] == bodies
    assert all(e["topic"] == t and e["matched"] == 1 and e["path"] == "/" for e in recv), recv[:3]
    assert all(e["header"] == {"h": "1", "Micro-Topic": t, ":topic": t} for e in recv), recv[:3]
    assert [e for e in go.events if e["event"] == "rejected"] == []

    # it leaves (lease revoked): the route goes
    assert await go.quit() == 0
    await until(lambda: broker.route_count(t) == 0, 5, "the route to disappear")


async def test_v1_go_peer_ignores_micro_layout(go_peer: StartPeer, micro_broker: Broker) -> None:
    """A go-micro v1 publisher reads only topic:<topic>: a micro-layout subscription is not
    visible to it (why dialect="v1" is the default), while our v1 publisher reaches both."""
    t = topic()
    await micro_broker.subscribe(t, lambda ev: None)
    go = await go_peer("v1")
    assert (await go.call("nodes", topic=t))["nodes"] == []


@pytest.mark.parametrize("dialect", ["v1", "micro"])
async def test_request_to_a_go_peer_is_an_empty_reply(go_peer: StartPeer, broker: Broker, dialect: str) -> None:
    """A go-micro subscriber answers 200 with no body: ``request`` returns an empty Message."""
    t = topic()
    go = await go_peer(dialect)
    go_id = (await go.call("subscribe", topic=t, queue=""))["id"]
    await broker.wait_for_route(t, timeout=10)
    reply = await broker.request(t, b"question", header={"h": "1"}, timeout=10)
    assert reply.body == b"" and dict(reply.header) == {}
    await until(lambda: len(go.received(go_id)) == 1, 10, "the request at the Go peer")
    (e,) = go.received(go_id)
    assert base64.b64decode(e["body"] or "") == b"question" and e["header"].get("h") == "1"
