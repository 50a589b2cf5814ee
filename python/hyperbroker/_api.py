"""What :class:`~hyperbroker.Broker` and :class:`~hyperbroker.testing.TestBroker` share as the
same API: ``async with`` (connect on entry, disconnect on exit) and waiting for a first route."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self

from .errors import BrokerError

__all__ = ["ConnectsInContext", "wait_for_count"]


class ConnectsInContext:
    """``async with broker:`` connects on entry and disconnects on exit (also on an error)."""

    async def connect(self) -> None:
        raise NotImplementedError

    async def disconnect(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.disconnect()


async def wait_for_count(count: Callable[[], int], topic: str, timeout: float, tick: float) -> int:
    """Poll ``count()`` every ``tick`` seconds until it is not 0 and return it; a
    :class:`BrokerError` naming ``topic`` when ``timeout`` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        n = count()
        if n:
            return n
        if loop.time() >= deadline:
            raise BrokerError(f"no subscriber of {topic!r} appeared within {timeout}s")
        await asyncio.sleep(tick)
