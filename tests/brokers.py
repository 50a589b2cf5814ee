"""Helpers shared by the broker tests: polling, envelopes, recording handlers, HTTP posts, stats
picks and a publish-then-flush loop (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from hyperbroker import Broker, Event

#: loopback, any free port
LOOPBACK = "127.0.0.1:0"

#: ``await make_broker(connect=True, **options)``: a loopback broker on the test's registry
MakeBroker = Callable[..., Awaitable[Broker]]


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail the test after ``timeout`` seconds."""

    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


def envelope(topic: str | None, body: bytes, header: dict[str, str] | None = None) -> bytes:
    """A go-micro envelope as a JSON client would POST it (no ``:topic`` when topic is None)."""
    h = {} if topic is None else {":topic": topic}
    h.update(header or {})
    return json.dumps({"Header": h, "Body": base64.b64encode(body).decode()}).encode()


class Sink:
    """A plain handler that records the events it handled, in order, and how often it ran."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.calls = 0

    def __call__(self, ev: Event) -> None:
        self.calls += 1
        self.events.append(ev)

    @property
    def bodies(self) -> list[bytes]:
        return [e.message.body for e in self.events]

    @property
    def ran(self) -> bool:
        return self.calls > 0

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        """Until at least ``n`` events were handled (fails the test after ``timeout`` s)."""
        await until(lambda: len(self.events) >= n, timeout, f"{n} events (have {len(self.events)})")


class AsyncSink(Sink):
    """:class:`Sink` as an ``async def`` handler. Header ``slow`` makes it sleep that many seconds
    first (to prove a response waits for it); header ``raise`` makes it raise RuntimeError with
    that text (counted in ``calls``, not recorded)."""

    async def __call__(self, ev: Event) -> None:  # type: ignore[override]
        self.calls += 1
        h = ev.message.header
        if "slow" in h:
            await asyncio.sleep(float(h["slow"]))
        if "raise" in h:
            raise RuntimeError(h["raise"])
        self.events.append(ev)


async def post(
    http: aiohttp.ClientSession, url: str, data: Any, content_type: str = "application/json", **headers: str
) -> tuple[int, str, Mapping[str, str]]:
    """POST ``data``; returns (status, text, response headers, case-insensitive)."""
    async with http.post(url, data=data, headers={"Content-Type": content_type, **headers}) as r:
        return r.status, await r.text(), CIMultiDict(r.headers)


async def post_status(
    http: aiohttp.ClientSession, url: str, data: Any, content_type: str = "application/json", **headers: str
) -> tuple[int, str]:
    """:func:`post` without the response headers: (status, text)."""
    status, text, _ = await post(http, url, data, content_type, **headers)
    return status, text


def pick(st: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The named counters of a ``stats()`` dict."""
    return {k: st[k] for k in keys}


async def publish_each(pub: Broker, topic: str, bodies: list[bytes], timeout: float = 10) -> None:
    """Publish ``bodies`` one ``publish`` call each, then ``flush`` (within ``timeout``)."""
    for body in bodies:
        await pub.publish(topic, body)
    await pub.flush(timeout=timeout)


async def deliver_numbered(pub: Broker, topic: str, sink: Sink, n: int, timeout: float = 10) -> list[bytes]:
    """Publish ``m-0`` .. ``m-<n-1>``, flush, wait until ``sink`` handled ``n``; returns the bodies."""
    bodies = [f"m-{i}".encode() for i in range(n)]
    await publish_each(pub, topic, bodies, timeout)
    await until(lambda: len(sink.events) >= n, 5, f"{n} handled")
    return bodies


def assert_counters(st: Mapping[str, Any], **expected: Any) -> None:
    """The named counters of a ``stats()`` dict are exactly ``expected``."""
    got = pick(st, *expected)
    assert got == expected, f"counters {got}, expected {expected}"
