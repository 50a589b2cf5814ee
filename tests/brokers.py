"""Helpers shared by the broker tests (the fixtures themselves are in conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from hyperbroker import Broker

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
