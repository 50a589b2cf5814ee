"""Helpers shared by the broker tests (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable

import pytest

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
    """A handler that records the bodies it saw, in order, and whether it ran at all."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.ran = False

    def __call__(self, ev: Event) -> None:
        self.ran = True
        self.bodies.append(ev.message.body)
