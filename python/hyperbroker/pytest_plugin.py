"""hyperbroker's pytest plugin (entry point ``pytest11: hyperbroker``): fixtures for testing code
that uses a broker.

- ``hyperbroker_test_broker``: a connected :class:`~hyperbroker.testing.TestBroker` (in-process,
  no sockets), disconnected after the test.
- ``hyperbroker_pair``: a :class:`~hyperbroker.testing.BrokerPair`, a real publisher and
  subscriber :class:`~hyperbroker.Broker` on 127.0.0.1 sharing a MemoryRegistry, connected,
  disconnected after the test.

Both are async fixtures made with ``pytest_asyncio.fixture``, so they work in pytest-asyncio's
strict mode as well as in auto mode. Without pytest-asyncio the fixtures are not registered and
the run's header says so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from .testing import BrokerPair, TestBroker, broker_pair

try:
    import pytest_asyncio

    HAVE_PYTEST_ASYNCIO = True
except ImportError:  # the fixtures need an async fixture mechanism
    HAVE_PYTEST_ASYNCIO = False

if HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture
    async def hyperbroker_test_broker() -> AsyncIterator[TestBroker]:
        """A connected TestBroker; disconnected after the test."""
        async with TestBroker() as broker:
            yield broker

    @pytest_asyncio.fixture
    async def hyperbroker_pair() -> AsyncIterator[BrokerPair]:
        """A connected publisher and subscriber Broker on loopback sharing a MemoryRegistry."""
        async with broker_pair() as pair:
            yield pair

else:

    def pytest_report_header() -> list[str]:
        return [
            "hyperbroker: pytest-asyncio is not installed, so the fixtures hyperbroker_test_broker and"
            " hyperbroker_pair are not available (pip install pytest-asyncio)"
        ]
