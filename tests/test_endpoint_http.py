"""The subscriber endpoint (``POST /_sub?id=<subscriber id>``) seen by a real HTTP client.

A connected ``Broker(address="127.0.0.1:0", registry=MemoryRegistry())`` with one subscription is
driven with aiohttp, and with raw asyncio streams where aiohttp cannot express the request (a
``Content-Length`` announcing more than is ever sent). Every status, reason text and counter is
checked exactly; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from brokers import AsyncSink, assert_counters, envelope, post
from yarl import URL

from hyperbroker import Broker, Event, MemoryRegistry, Subscriber

pytestmark = pytest.mark.timeout(30)

TOPIC = "orders.created"
NDJSON = "application/x-ndjson"


# --- helpers ----------------------------------------------------------------------------------


class Endpoint:
    def __init__(self, broker: Broker, sub: Subscriber, sink: AsyncSink) -> None:
        self.broker = broker
        self.sub = sub
        self.sink = sink

    @property
    def base(self) -> str:
        return f"http://{self.broker.address}"

    @property
    def url(self) -> str:
        return f"{self.base}/_sub?id={self.sub.id}"

    def stats(self) -> dict[str, Any]:
        return self.broker.stats()


MakeEndpoint = Callable[..., Awaitable[Endpoint]]


@pytest.fixture
async def make_endpoint() -> AsyncIterator[MakeEndpoint]:
    brokers: list[Broker] = []

    async def _make(registry: MemoryRegistry | None = None, **options: Any) -> Endpoint:
        b = Broker(
            address="127.0.0.1:0",
            registry=registry or MemoryRegistry(),
            disconnect_timeout=0,
            **options,
        )
        await b.connect()
        brokers.append(b)
        sink = AsyncSink()
        sub = await b.subscribe(TOPIC, sink)
        return Endpoint(b, sub, sink)

    yield _make
    for b in brokers:
        await asyncio.wait_for(b.disconnect(timeout=0), 10)


@pytest.fixture
async def ep(make_endpoint: MakeEndpoint) -> Endpoint:
    return await make_endpoint()


async def raw_request(host_port: str, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a fresh connection; return (status, headers, body) of the response."""
    host, port = host_port.rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(n), timeout) if n else b""
        return status, headers, body
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (OSError, TimeoutError):
            pass


def assert_text(headers: Any) -> None:
    assert headers["Content-Type"].startswith("text/plain"), headers


async def refused(ep: Endpoint, http: aiohttp.ClientSession, url: str, data: bytes, status: int, *words: str) -> None:
    """POST ``data`` to ``url``: answered ``status`` with a text/plain reason that contains each
    of ``words``, and the handler did not run."""
    got, text, headers = await post(http, url, data)
    assert got == status, text
    assert_text(headers)
    assert all(w in text for w in words), text
    assert ep.sink.calls == 0


# --- single envelopes ---------------------------------------------------------------------------


async def test_valid_envelope_is_handled_before_the_response(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    # the handler sleeps 0.2 s before recording the event: a 200 sent before it ran would
    # arrive with the sink still empty
    status, text, _headers = await post(http, ep.url, envelope(TOPIC, b"hello", {"slow": "0.2", "k": "v"}))
    assert status == 200, text
    assert ep.sink.bodies == [b"hello"]
    ev = ep.sink.events[0]
    assert ev.topic == TOPIC
    assert ev.message.header == {"slow": "0.2", "k": "v"}
    st = ep.stats()
    assert_counters(st, received=1, rejected=0, handler_errors=0)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_not_post_is_405(ep: Endpoint, http: aiohttp.ClientSession, method: str) -> None:
    data = envelope(TOPIC, b"x") if method != "GET" else None
    async with http.request(method, ep.url, data=data) as r:
        text = await r.text()
        assert r.status == 405, text
        assert_text(r.headers)
        assert "POST" in text and "method" in text.lower(), text
        assert r.headers.get("Allow") == "POST"
    assert ep.sink.calls == 0
    st = ep.stats()
    assert st["rejected"] == 1
    assert st["received"] == 0


BAD_ENVELOPES = [
    pytest.param(b'{"Header": {":topic": "orders.created"', "invalid JSON", id="truncated-json"),
    pytest.param(b"not json at all", "invalid JSON", id="not-json"),
    pytest.param(b"[1, 2]", "invalid JSON", id="json-array"),
    pytest.param(b"", "invalid JSON", id="empty-body"),
    pytest.param(b'{"Header": {":topic": "orders.created"}, "Body": ""} trailing', "invalid JSON", id="trailing"),
    pytest.param(
        b'{"Header": {":topic": "orders.created", "n": 3}, "Body": ""}',
        'Header: value of header "n" is not a string',
        id="header-value-number",
    ),
    pytest.param(b'{"Header": ["orders.created"], "Body": ""}', "Header is not an object of strings", id="header-list"),
    pytest.param(b'{"Header": "orders.created", "Body": ""}', "Header is not an object of strings", id="header-string"),
    pytest.param(
        b'{"Header": {":topic": "orders.created"}, "Body": "!!notb64"}',
        "Body is not valid standard base64",
        id="bad-base64",
    ),
    pytest.param(b'{"Header": {":topic": "orders.created"}, "Body": "YWI"}', "base64", id="b64-no-padding"),
    pytest.param(
        b'{"Header": {":topic": "orders.created"}, "Body": 12}', "Body is not a base64 string", id="body-number"
    ),
    pytest.param(b'{"Header": {"k": "v"}, "Body": "aGk="}', "no topic", id="no-topic"),
    pytest.param(b'{"Header": {":topic": ""}, "Body": "aGk="}', "no topic", id="empty-topic"),
    pytest.param(b'{"Body": "aGk="}', "no topic", id="no-header"),
]


@pytest.mark.parametrize(("body", "reason"), BAD_ENVELOPES)
async def test_bad_envelope_is_400_with_reason(
    ep: Endpoint, http: aiohttp.ClientSession, body: bytes, reason: str
) -> None:
    await refused(ep, http, ep.url, body, 400, reason)
    assert_counters(ep.stats(), rejected=1, received=0)


@pytest.mark.parametrize("query", ["", "?", "?ids=x", "?foo=1&bar=2"])
async def test_missing_id_parameter_is_400(ep: Endpoint, http: aiohttp.ClientSession, query: str) -> None:
    await refused(ep, http, f"{ep.base}/_sub{query}", envelope(TOPIC, b"x"), 400, "id", "missing")
    assert_counters(ep.stats(), rejected=1, received=0)


async def test_unknown_id_is_404(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    await refused(ep, http, f"{ep.base}/_sub?id=hb-nobody", envelope(TOPIC, b"x"), 404, "hb-nobody", "no subscriber")
    # the id is matched exactly, not as a prefix
    await refused(ep, http, f"{ep.url}x", envelope(TOPIC, b"x"), 404)
    assert_counters(ep.stats(), rejected=2, received=0)


async def test_id_is_percent_decoded(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    encoded = "".join(f"%{b:02X}" for b in ep.sub.id.encode())
    url = f"{ep.base}/_sub?x=1&id={encoded}"
    async with http.post(URL(url, encoded=True), data=envelope(TOPIC, b"pct")) as r:
        assert r.status == 200, await r.text()
    assert ep.sink.bodies == [b"pct"]


async def test_topic_not_matching_the_subscription_is_404(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    await refused(ep, http, ep.url, envelope("orders.deleted", b"x"), 404, "orders.deleted", TOPIC)
    assert_counters(ep.stats(), rejected=1, received=0)


@pytest.mark.parametrize("path", ["/sub", "/_sub/", "/_subscribe", "/x/_sub"])
async def test_wrong_path_is_404(ep: Endpoint, http: aiohttp.ClientSession, path: str) -> None:
    await refused(ep, http, f"{ep.base}{path}?id={ep.sub.id}", envelope(TOPIC, b"x"), 404, "/_sub", "path")
    assert_counters(ep.stats(), rejected=1, received=0)


async def test_body_over_max_body_is_413(make_endpoint: MakeEndpoint, http: aiohttp.ClientSession) -> None:
    ep = await make_endpoint(max_body=1024)
    big = envelope(TOPIC, b"z" * 2000)
    assert len(big) > 1024

    # with a Content-Length
    status, text, headers = await post(http, ep.url, big)
    assert status == 413, text
    assert_text(headers)
    assert "1024" in text, text

    # chunked (no Content-Length): the limit is enforced while reading
    async with http.post(ep.url, data=big, chunked=True, headers={"Content-Type": "application/json"}) as r:
        text = await r.text()
        assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in r.request_info.headers
        assert r.status == 413, text
        assert_text(r.headers)
        assert "1024" in text, text

    # the same with raw chunks, several of them, as a streaming client would send
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(big[i : i + 300]), big[i : i + 300]) for i in range(0, len(big), 300))
    status, rh, body = await raw_request(
        ep.broker.address,
        (
            f"POST /_sub?id={ep.sub.id} HTTP/1.1\r\nHost: {ep.broker.address}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + chunked
        + b"0\r\n\r\n",
    )
    assert status == 413, body
    assert rh["content-type"].startswith("text/plain")
    assert b"1024" in body, body

    # a Content-Length over the limit is refused before any body is sent
    status, rh, body = await raw_request(
        ep.broker.address,
        (
            f"POST /_sub?id={ep.sub.id} HTTP/1.1\r\nHost: {ep.broker.address}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        ).encode(),
    )
    assert status == 413, body
    assert rh["content-type"].startswith("text/plain")
    assert b"100000" in body and b"1024" in body, body

    # exactly at the limit is fine
    at_limit = envelope(TOPIC, b"", {"p": "x" * (1024 - len(envelope(TOPIC, b"", {"p": ""})))})
    assert len(at_limit) == 1024
    status, text, _ = await post(http, ep.url, at_limit)
    assert status == 200, text

    assert ep.sink.calls == 1
    st = ep.stats()
    assert st["rejected"] == 4
    assert st["received"] == 1


async def test_handler_raising_is_500_with_the_exception_text(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    status, text, headers = await post(http, ep.url, envelope(TOPIC, b"a", {"raise": "kaboom-4711"}))
    assert status == 500, text
    assert_text(headers)
    assert "kaboom-4711" in text and "RuntimeError" in text, text
    status, text, _ = await post(http, ep.url, envelope(TOPIC, b"b"))
    assert status == 200, text
    assert ep.sink.calls == 2
    assert ep.sink.bodies == [b"b"]
    st = ep.stats()
    assert_counters(st, handler_errors=1, received=2, rejected=0)


async def test_sync_handler_raising_is_500(make_endpoint: MakeEndpoint, http: aiohttp.ClientSession) -> None:
    ep = await make_endpoint()
    seen: list[bytes] = []

    def handler(ev: Event) -> None:
        if ev.message.body == b"bad":
            raise KeyError("missing-thing")
        seen.append(ev.message.body)

    sub = await ep.broker.subscribe("sync.topic", handler)
    url = f"{ep.base}/_sub?id={sub.id}"
    status, text, _ = await post(http, url, envelope("sync.topic", b"bad"))
    assert status == 500, text
    assert "missing-thing" in text and "KeyError" in text, text
    status, text, _ = await post(http, url, envelope("sync.topic", b"good"))
    assert status == 200, text
    assert seen == [b"good"]
    assert ep.stats()["handler_errors"] == 1


async def test_counters_add_up(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    good = [envelope(TOPIC, f"g{i}".encode()) for i in range(3)]
    for g in good:
        assert (await post(http, ep.url, g))[0] == 200
    assert (await post(http, ep.url, b"{"))[0] == 400
    assert (await post(http, f"{ep.base}/_sub?id=nobody", good[0]))[0] == 404
    async with http.get(ep.url) as r:
        assert r.status == 405
    assert (await post(http, ep.url, envelope(TOPIC, b"e", {"raise": "x"})))[0] == 500
    assert (await post(http, ep.url, envelope(TOPIC, b"e", {"raise": "y"})))[0] == 500
    st = ep.stats()
    assert_counters(st, rejected=3, received=5, handler_errors=2)
    assert ep.sink.bodies == [b"g0", b"g1", b"g2"]


async def test_bad_requests_do_not_disturb_good_ones_on_one_keepalive_connection(ep: Endpoint) -> None:
    created = 0

    async def on_create(*_: Any) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    bad: list[tuple[str, str, bytes | None, int]] = [
        ("POST", ep.url, b"{not json", 400),
        ("POST", ep.url, b'{"Header":{":topic":"orders.created"},"Body":"@@@@"}', 400),
        ("POST", ep.url, b'{"Header":{"a":"b"},"Body":""}', 400),
        ("POST", f"{ep.base}/_sub?id=hb-unknown", envelope(TOPIC, b"x"), 404),
        ("POST", ep.url, envelope("other.topic", b"x"), 404),
        ("GET", ep.url, None, 405),
    ]
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(
        connector=connector, trace_configs=[trace], timeout=aiohttp.ClientTimeout(total=10)
    ) as s:
        for i in range(50):
            m, url, data, want = bad[i % len(bad)]
            async with s.request(m, url, data=data, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == want, (i, m, url, data)
            async with s.post(url=ep.url, data=envelope(TOPIC, f"good-{i}".encode())) as r:
                statuses.append(r.status)
                await r.read()
    assert statuses == [200] * 50
    assert ep.sink.bodies == [f"good-{i}".encode() for i in range(50)]
    assert created == 1, f"the keep-alive connection was dropped: {created} connections"
    st = ep.stats()
    assert_counters(st, rejected=50, received=50, handler_errors=0)


async def test_concurrent_good_and_bad_requests(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    async def good(i: int) -> int:
        return (await post(http, ep.url, envelope(TOPIC, f"c{i}".encode())))[0]

    async def bad(i: int) -> int:
        return (await post(http, ep.url, b"garbage %d" % i))[0]

    res = await asyncio.gather(*(good(i) if i % 2 else bad(i) for i in range(60)))
    assert res == [200 if i % 2 else 400 for i in range(60)]
    assert sorted(ep.sink.bodies) == sorted(f"c{i}".encode() for i in range(1, 60, 2))


# --- the batch extension ------------------------------------------------------------------------


async def test_batch_names_exactly_the_failed_envelopes(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    lines = [
        envelope(TOPIC, b"b0"),
        b'{"Header":{":topic":"orders.created"},"Body":"%%%"}',
        envelope(TOPIC, b"b2"),
        envelope(TOPIC, b"b3", {"raise": "batch-boom"}),
        envelope(TOPIC, b"b4"),
    ]
    status, text, headers = await post(http, ep.url, b"\n".join(lines), NDJSON)
    assert status == 200, text
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(text)
    assert set(doc) == {"received", "failed"}
    assert doc["received"] == 5  # every line was read; the count guards against truncation
    failed = doc["failed"]
    assert [(f["index"], f["status"]) for f in failed] == [(1, 400), (3, 500)], doc
    assert all(set(f) == {"index", "status", "error"} for f in failed)
    assert "base64" in failed[0]["error"]
    assert "batch-boom" in failed[1]["error"]
    assert ep.sink.bodies == [b"b0", b"b2", b"b4"]
    st = ep.stats()
    assert_counters(st, received=4, handler_errors=1, rejected=0)


async def test_batch_all_good_and_trailing_newline(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    lines = [envelope(TOPIC, f"n{i}".encode()) for i in range(20)]
    status, text, _ = await post(http, ep.url, b"\r\n".join(lines) + b"\n", NDJSON)
    assert status == 200, text
    assert json.loads(text) == {"received": 20, "failed": []}
    assert ep.sink.bodies == [f"n{i}".encode() for i in range(20)]


async def test_batch_with_wrong_topic_and_unknown_id(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    lines = [envelope(TOPIC, b"ok"), envelope("elsewhere", b"no")]
    status, text, _ = await post(http, ep.url, b"\n".join(lines), NDJSON)
    assert status == 200, text
    assert [(f["index"], f["status"]) for f in json.loads(text)["failed"]] == [(1, 404)]
    status, text, _ = await post(http, f"{ep.base}/_sub?id=ghost", b"\n".join(lines), NDJSON)
    assert status == 200, text
    assert [(f["index"], f["status"]) for f in json.loads(text)["failed"]] == [(0, 404), (1, 404)]
    assert ep.sink.bodies == [b"ok"]


async def test_batch_over_max_body_is_413(make_endpoint: MakeEndpoint, http: aiohttp.ClientSession) -> None:
    ep = await make_endpoint(max_body=1024)
    lines = [envelope(TOPIC, b"q" * 200) for _ in range(6)]
    status, text, _ = await post(http, ep.url, b"\n".join(lines), NDJSON)
    assert status == 413, text
    assert ep.sink.calls == 0


# --- several brokers ----------------------------------------------------------------------------


def connect_outcome(address: str) -> str:
    """ "refused" when nothing listens at ``address`` any more, else what happened.

    A plain blocking connect, made at once (no event-loop round trip in between): a listener
    that is closed late is caught in the act.
    """
    host, port = address.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=2)
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:  # e.g. reset: the listener was still there when the SYN arrived
        return f"not refused: {e!r}"
    s.close()
    return "accepted"


async def test_disconnected_endpoint_refuses_connections(
    make_endpoint: MakeEndpoint, http: aiohttp.ClientSession
) -> None:
    reg = MemoryRegistry()
    eps = [await make_endpoint(registry=reg) for _ in range(3)]
    assert len({e.broker.address for e in eps}) == 3
    for i, e in enumerate(eps):
        status, text, _ = await post(http, e.url, envelope(TOPIC, f"before-{i}".encode()))
        assert status == 200, text

    gone = eps[1]
    address, url = gone.broker.address, gone.url
    await asyncio.wait_for(gone.broker.disconnect(), 10)
    assert not gone.broker.connected

    # (give the endpoint a bounded moment here; that it is closed at once is checked below)
    deadline = asyncio.get_running_loop().time() + 2
    while connect_outcome(address) != "refused":
        assert asyncio.get_running_loop().time() < deadline, "the stopped endpoint still accepts connections"
        await asyncio.sleep(0.02)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(fresh, url, envelope(TOPIC, b"after"))

    # the others are untouched
    for i in (0, 2):
        status, text, _ = await post(http, eps[i].url, envelope(TOPIC, b"after"))
        assert status == 200, text
        assert eps[i].sink.bodies == [f"before-{i}".encode(), b"after"]
    assert gone.sink.bodies == [b"before-1"]
    # and its subscription left the registry
    (svc,) = await reg.get_service(f"topic:{TOPIC}")
    assert sorted(n.id for n in svc.nodes) == sorted([eps[0].sub.id, eps[2].sub.id])


async def test_endpoint_is_closed_when_disconnect_returns(make_endpoint: MakeEndpoint) -> None:
    # disconnect() is go-micro's Disconnect, which closes the listener before returning: no
    # connection may be accepted afterwards. Several brokers, because a late close is a race.
    reg = MemoryRegistry()
    eps = [await make_endpoint(registry=reg) for _ in range(40)]
    outcomes = []
    for e in eps:
        address = e.broker.address
        await asyncio.wait_for(e.broker.disconnect(), 10)
        outcomes.append(connect_outcome(address))
    late = [o for o in outcomes if o != "refused"]
    assert not late, (
        f"{len(late)} of {len(eps)} endpoints still took a connection right after disconnect() returned: {late[:3]}"
    )


async def test_unsubscribed_id_is_404(ep: Endpoint, http: aiohttp.ClientSession) -> None:
    assert (await post(http, ep.url, envelope(TOPIC, b"1")))[0] == 200
    await ep.sub.unsubscribe()
    status, text, _ = await post(http, ep.url, envelope(TOPIC, b"2"))
    assert status == 404, text
    assert ep.sink.bodies == [b"1"]
