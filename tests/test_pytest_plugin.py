"""The pytest plugin (entry point ``pytest11: hyperbroker``): its fixtures in a test run of
their own (``pytester``), in pytest-asyncio's strict and auto modes, and without pytest-asyncio."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.timeout(120)

USES_BOTH_FIXTURES = """
import asyncio

import pytest

from hyperbroker import Broker, Event
from hyperbroker.testing import BrokerPair, TestBroker

seen = {}


@pytest.mark.asyncio
async def test_test_broker(hyperbroker_test_broker):
    b = hyperbroker_test_broker
    assert isinstance(b, TestBroker) and b.connected
    got = []
    await b.subscribe("t", lambda ev: got.append(ev.message.body))
    await b.publish("t", b"in-process")
    await b.flush()
    assert got == [b"in-process"]
    assert b.published[0][0] == "t"
    seen["test_broker"] = b


@pytest.mark.asyncio
async def test_pair(hyperbroker_pair):
    assert isinstance(hyperbroker_pair, BrokerPair)
    pub, sub = hyperbroker_pair.publisher, hyperbroker_pair.subscriber
    assert isinstance(pub, Broker) and pub.connected and sub.connected
    assert pub.address.startswith("127.0.0.1:") and sub.address.startswith("127.0.0.1:")
    got = []
    await sub.subscribe("t", lambda ev: got.append(ev.message.body))
    await pub.wait_for_route("t")
    await pub.publish("t", b"over loopback")
    await pub.flush()
    assert got == [b"over loopback"]
    seen["pair"] = hyperbroker_pair


def test_fixtures_were_disconnected_after_their_tests():
    assert not seen["test_broker"].connected
    assert not seen["pair"].publisher.connected
    assert not seen["pair"].subscriber.connected
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_fixtures_work_in_a_users_test_run(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_user=USES_BOTH_FIXTURES)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", f"asyncio_mode={mode}", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=3)


def test_without_pytest_asyncio_the_fixtures_are_absent_with_a_note(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import sys

sys.modules["pytest_asyncio"] = None  # as if pytest-asyncio were not installed
pytest_plugins = ["hyperbroker.pytest_plugin"]
"""
    )
    pytester.makepyfile(
        test_user="""
def test_uses_fixture(hyperbroker_test_broker):
    pass
"""
    )
    # the entry point and pytest-asyncio's own plugin are blocked; conftest loads ours by name
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:hyperbroker", "-p", "no:asyncio")
    result.stdout.fnmatch_lines(
        [
            "hyperbroker: pytest-asyncio is not installed, so the fixtures hyperbroker_test_broker and"
            " hyperbroker_pair are not available*",
            "*fixture 'hyperbroker_test_broker' not found*",
        ]
    )
    result.assert_outcomes(errors=1)
