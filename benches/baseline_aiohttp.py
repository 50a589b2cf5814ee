"""A pure-Python aiohttp baseline speaking go-micro's HTTP broker protocol.

Benchmarks use it to put hyperbroker's numbers in context ("N times a hand-written aiohttp
fan-out"). It is meant to be what a competent engineer would write by hand, not a strawman:

* the subscriber is aiohttp's low-level server (``web.Server``: one handler, no router, no
  middlewares, access log off) using aiohttp's C HTTP parser, on uvloop when available;
* envelopes are encoded and decoded with orjson and ``binascii`` (the fastest stdlib base64);
* the publisher uses one ``ClientSession`` with a keep-alive ``TCPConnector``, caches the parsed
  ``yarl.URL`` of every destination, and ``publish_many_concurrent`` keeps ``concurrency`` POSTs
  in flight with a fixed set of worker tasks pulling from one iterator (no task per message, no
  semaphore churn).

Wire protocol: the subscriber serves ``POST /_sub?id=<node id>`` with a JSON body
``{"Header": {":topic": "<topic>", ...}, "Body": "<standard base64>"}``. It runs the handler and
answers 200 after the handler ran; 500 if the handler raised, 400 for a bad envelope, 404 for an
unknown id (or a topic the id is not subscribed to), 405 for a method other than POST.

Imported as a top-level module (``import baseline_aiohttp``) by the benches, whose conftest puts
``benches/`` on ``sys.path``; importing it as ``benches.baseline_aiohttp`` works too. Only
127.0.0.1 is used, and every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import binascii
import importlib
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.connection import Connection
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp import web
from yarl import URL

try:
    import _procs
except ImportError:  # imported as ``benches.baseline_aiohttp`` (namespace package)
    if not __package__:
        raise
    _procs = importlib.import_module("._procs", __package__)

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we bench
    uvloop = None  # type: ignore[assignment]

__all__ = [
    "BENCH_NODE_ID",
    "BENCH_TOPIC",
    "AiohttpPublisher",
    "AiohttpSubscriber",
    "EnvelopeError",
    "PublishError",
    "decode_envelope",
    "encode_envelope",
    "measure_aiohttp_throughput",
    "run_subscriber_process",
]

TOPIC_HEADER = ":topic"
MICRO_TOPIC_HEADER = "Micro-Topic"

#: Node id and topic the benchmark subscriber process subscribes with.
BENCH_NODE_ID = "aiohttp-bench-sub"
BENCH_TOPIC = "bench.aiohttp"

#: Upper bound on the life of the subscriber process and on one whole measurement.
DEFAULT_DEADLINE_S = 120.0

Handler = Callable[[str, dict[str, str], bytes], Any]
Message = bytes | bytearray | memoryview | tuple[Mapping[str, str] | None, bytes]
T = TypeVar("T")

_MISSING: Any = object()


# --- envelope ------------------------------------------------------------------------------


class EnvelopeError(ValueError):
    """An envelope could not be decoded."""


def encode_envelope(topic: str, header: Mapping[str, str] | None, body: bytes | bytearray | memoryview) -> bytes:
    """``{"Header": {":topic": topic, **header}, "Body": base64(body)}`` as compact JSON bytes.

    The ``topic`` argument is authoritative: a ``:topic`` key in ``header`` is overridden.
    """
    hdr = {TOPIC_HEADER: topic}
    if header:
        hdr.update(header)
        hdr[TOPIC_HEADER] = topic
    return orjson.dumps({"Header": hdr, "Body": binascii.b2a_base64(body, newline=False).decode("ascii")})


def decode_envelope(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    """Decode an envelope into ``(topic, header without ':topic', body)``.

    Like Go's encoding/json, field names match in any letter case, unknown fields are ignored and
    a null or missing Body is empty. Raises :class:`EnvelopeError`.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise EnvelopeError(f"invalid JSON envelope: {e}") from None
    if type(obj) is not dict:
        raise EnvelopeError("envelope is not a JSON object")
    header = obj.get("Header", _MISSING)
    b64 = obj.get("Body", _MISSING)
    if header is _MISSING or b64 is _MISSING:  # rare: other letter case, or missing field
        for k, v in obj.items():
            lk = k.lower()
            if lk == "header" and header is _MISSING:
                header = v
            elif lk == "body" and b64 is _MISSING:
                b64 = v
    if header is _MISSING or header is None:
        header = {}
    elif type(header) is not dict:
        raise EnvelopeError("Header is not an object of strings")
    for k, v in header.items():
        if type(v) is not str:
            if v is None:
                header[k] = ""
            else:
                raise EnvelopeError(f"value of header {k!r} is not a string")
    topic = header.pop(TOPIC_HEADER, None) or header.get(MICRO_TOPIC_HEADER)
    if not topic:
        raise EnvelopeError("envelope has no ':topic' nor 'Micro-Topic' header")
    if b64 is _MISSING or b64 is None:
        body = b""
    elif type(b64) is str:
        try:
            body = binascii.a2b_base64(b64, strict_mode=True)
        except (binascii.Error, ValueError) as e:
            raise EnvelopeError(f"Body is not standard base64: {e}") from None
    else:
        raise EnvelopeError("Body is not a base64 string")
    return topic, header, body


# --- subscriber ----------------------------------------------------------------------------


class AiohttpSubscriber:
    """The subscriber side: an aiohttp endpoint serving ``POST /_sub?id=<node id>``."""

    def __init__(self, *, shutdown_timeout: float = 5.0) -> None:
        self._subs: dict[str, tuple[str, Handler]] = {}
        self._runner: web.ServerRunner | None = None
        self._shutdown_timeout = shutdown_timeout
        self.address: str | None = None

    def subscribe(self, node_id: str, topic: str, handler: Handler) -> None:
        """Route messages POSTed to ``/_sub?id=node_id`` on ``topic`` to ``handler(topic, header,
        body)`` (a plain function, run before the 200 is sent)."""
        self._subs[node_id] = (topic, handler)

    def unsubscribe(self, node_id: str) -> None:
        self._subs.pop(node_id, None)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("subscriber already started")
        server = web.Server(self._handle, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self.address = f"{bound_host}:{bound_port}"
        return self.address

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (bounded by ``shutdown_timeout``), close
        the keep-alive connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != "/_sub":
            return web.Response(status=404, text="not found")
        if request.method != "POST":
            return web.Response(status=405, text="method not allowed", headers={"Allow": "POST"})
        sub = self._subs.get(request.query.get("id", ""))
        if sub is None:
            return web.Response(status=404, text="unknown subscriber id")
        raw = await request.read()
        try:
            topic, header, body = decode_envelope(raw)
        except EnvelopeError as e:
            return web.Response(status=400, text=str(e))
        sub_topic, handler = sub
        if topic != sub_topic:
            return web.Response(status=404, text="not subscribed to this topic")
        try:
            handler(topic, header, body)
        except Exception as e:  # the handler's failure is the publisher's 500
            return web.Response(status=500, text=f"handler failed: {e!r}")
        return web.Response()


# --- publisher -----------------------------------------------------------------------------


class PublishError(RuntimeError):
    """A subscriber answered something other than 200."""

    def __init__(self, url: str, status: int, text: str) -> None:
        super().__init__(f"POST {url} answered {status}: {text[:200]}")
        self.url = url
        self.status = status
        self.text = text


_JSON_HEADERS = {"Content-Type": "application/json"}


class AiohttpPublisher:
    """The publisher side: POSTs envelopes over a keep-alive aiohttp connection pool."""

    def __init__(self, *, max_connections: int = 256, request_timeout: float = 30.0) -> None:
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], URL] = {}

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=60.0,
            ttl_dns_cache=None,  # the addresses are literal IPs anyway
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            skip_auto_headers=("User-Agent",),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _url(self, address: str, node_id: str) -> URL:
        key = (address, node_id)
        url = self._urls.get(key)
        if url is None:
            url = URL.build(scheme="http", authority=address, path="/_sub", query={"id": node_id})
            self._urls[key] = url
        return url

    async def _post(self, url: URL, data: bytes) -> None:
        session = self._session
        if session is None:
            raise RuntimeError("publisher not started: await publisher.start() first")
        async with session.post(url, data=data, headers=_JSON_HEADERS) as resp:
            if resp.status != 200:
                text = await resp.text(errors="replace")
                raise PublishError(str(url), resp.status, text)

    async def publish(
        self,
        address: str,
        node_id: str,
        topic: str,
        header: Mapping[str, str] | None,
        body: bytes,
    ) -> None:
        """Deliver one message and wait for the subscriber's 200 (raises :class:`PublishError`)."""
        await self._post(self._url(address, node_id), encode_envelope(topic, header, body))

    async def publish_many_concurrent(
        self,
        address: str,
        node_id: str,
        topic: str,
        messages: Iterable[Message],
        concurrency: int = 16,
    ) -> int:
        """Deliver every message, keeping up to ``concurrency`` POSTs in flight.

        Each item of ``messages`` is a body (bytes) or a ``(header, body)`` pair. Returns the
        number of messages delivered. The first failure cancels the rest and is raised.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        url = self._url(address, node_id)
        post = self._post
        it = iter(messages)
        n_workers = concurrency
        if hasattr(messages, "__len__"):
            n_workers = max(1, min(concurrency, len(messages)))  # type: ignore[arg-type]
        delivered = 0

        async def worker() -> None:
            nonlocal delivered
            for item in it:  # the workers share one iterator: asyncio is single-threaded
                if isinstance(item, (bytes, bytearray, memoryview)):
                    data = encode_envelope(topic, None, item)
                else:
                    data = encode_envelope(topic, item[0], item[1])
                await post(url, data)
                delivered += 1

        tasks = [asyncio.ensure_future(worker()) for _ in range(n_workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return delivered


# --- cross-process throughput measurement --------------------------------------------------


def run_subscriber_process(
    conn: Connection,
    expected: int,
    deadline_s: float = DEFAULT_DEADLINE_S,
    node_id: str = BENCH_NODE_ID,
    topic: str = BENCH_TOPIC,
) -> None:
    """``multiprocessing`` target (spawn-safe): serve an :class:`AiohttpSubscriber` on
    127.0.0.1:0, send its ``"host:port"`` address through ``conn``, count the messages that
    arrive for ``node_id``/``topic``, and once ``expected`` arrived (or ``deadline_s`` seconds
    passed, whichever comes first) send ``("done", count, first_ts, last_ts)`` and exit.

    The timestamps are ``time.perf_counter()`` (CLOCK_MONOTONIC on Linux, so comparable across
    processes) of the first and last message, or None if none arrived. If the subscriber cannot
    start, ``("error", repr(exc))`` is sent instead of the address.
    """
    _procs.run_child(conn, _subscriber_main(conn, expected, deadline_s, node_id, topic))


async def _subscriber_main(conn: Connection, expected: int, deadline_s: float, node_id: str, topic: str) -> None:
    count = 0
    first_ts: float | None = None
    last_ts: float | None = None
    done = asyncio.Event()
    perf_counter = time.perf_counter

    def on_message(_topic: str, _header: dict[str, str], _body: bytes) -> None:
        # the clock at the first and the last message only, as every receiver here reads it
        nonlocal count, first_ts, last_ts
        count += 1
        if count == 1:
            first_ts = perf_counter()
        if count >= expected:
            last_ts = perf_counter()
            done.set()

    if expected <= 0:
        done.set()
    sub = AiohttpSubscriber()
    sub.subscribe(node_id, topic, on_message)
    address = await sub.start("127.0.0.1", 0)
    try:
        conn.send(address)
        try:
            await asyncio.wait_for(done.wait(), deadline_s)
        except TimeoutError:
            pass  # report what arrived
        if count and last_ts is None:  # some never came: the last one came by now
            last_ts = perf_counter()
        conn.send(("done", count, first_ts, last_ts))
    finally:
        await sub.stop()  # graceful: the last responses are written before connections close


def _bench_body(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def _publish_phase(
    address: str,
    n: int,
    body: bytes,
    concurrency: int,
    header: Mapping[str, str] | None,
    timeout: float,
) -> tuple[float, int]:
    pub = AiohttpPublisher(max_connections=max(100, concurrency))
    await pub.start()
    try:
        item: Message = body if not header else (header, body)
        messages = [item] * n
        async with asyncio.timeout(timeout):
            t0 = time.perf_counter()
            delivered = await pub.publish_many_concurrent(
                address, BENCH_NODE_ID, BENCH_TOPIC, messages, concurrency=concurrency
            )
            seconds = time.perf_counter() - t0
        return seconds, delivered
    finally:
        await pub.stop()


def measure_aiohttp_throughput(
    n: int,
    body_size: int,
    concurrency: int = 16,
    *,
    header: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_DEADLINE_S,
    use_uvloop: bool = True,
) -> dict[str, Any]:
    """Publish ``n`` messages of ``body_size`` bytes from this process to an aiohttp subscriber
    in a spawned process, ``concurrency`` POSTs in flight, and time it.

    ``seconds`` runs from the first POST to the last 200 (every 200 is sent after the handler
    ran, so it covers delivery of all ``n``); ``rate`` is ``n / seconds``. Synchronous: it runs
    its own event loop (uvloop when available), so it can be called from a plain
    pytest-benchmark test. Bounded by ``timeout`` seconds (plus process start-up/teardown).
    """
    if n < 0 or body_size < 0:
        raise ValueError("n and body_size must be >= 0")
    ctx = _procs.spawn_ctx()
    recv_end, send_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=run_subscriber_process,
        args=(send_end, n),
        kwargs={"deadline_s": timeout},
        name="aiohttp-baseline-subscriber",
        daemon=True,
    )
    proc.start()
    send_end.close()  # keep only the child's copy, so a dead child reads as EOF
    ok = False
    try:
        address = _procs.recv_with_timeout(recv_end, 60.0, "the subscriber address", proc)
        if isinstance(address, tuple):
            raise RuntimeError(f"aiohttp subscriber failed to start: {address!r}")
        body = _bench_body(body_size)
        seconds, delivered = _procs.run_on_own_loop(
            lambda: _publish_phase(address, n, body, concurrency, header, timeout), use_uvloop
        )
        report = _procs.recv_with_timeout(recv_end, 30.0, "the subscriber's 'done' report", proc)
        if not (isinstance(report, tuple) and report and report[0] == "done"):
            raise RuntimeError(f"unexpected report from the aiohttp subscriber: {report!r}")
        _, received, first_ts, last_ts = report
        ok = True
    finally:
        recv_end.close()
        _procs.stop_process(proc, timeout=10.0 if ok else 0.5)
    return {
        "messages": n,
        "delivered": delivered,
        "received": received,
        "seconds": seconds,
        "rate": n / seconds if seconds > 0 else float("inf"),
        "subscriber_seconds": (last_ts - first_ts) if first_ts is not None else 0.0,
        "body_size": body_size,
        "concurrency": concurrency,
    }


if __name__ == "__main__":  # pragma: no cover - manual run: python benches/baseline_aiohttp.py
    for size in (16, 128, 1024):
        print(size, measure_aiohttp_throughput(20_000, size))
