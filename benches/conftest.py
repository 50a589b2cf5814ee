"""Benchmark plumbing: collected ratios are printed at the end of the run; the ``measuring``
and ``nats_server`` fixtures.

Benchmarks run once as plain tests in CI (``--benchmark-disable`` in addopts, smaller sizes);
measure with ``python -m pytest benches --benchmark-enable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from baseline_nats import NatsServer, skip_reason

RESULTS: list[str] = []


def report(line: str) -> None:
    RESULTS.append(line)


@pytest.fixture
def measuring(benchmark: Any) -> bool:
    """True when pytest-benchmark really measures (not --benchmark-disable)."""
    return not getattr(benchmark, "disabled", False)


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer | None]:
    """A nats-server for the whole module, or None when the binary is missing (then only the
    nats parts are skipped, with skip_reason() in the report)."""
    reason = skip_reason()
    if reason:
        report(f"nats baseline skipped: {reason}")
        yield None
        return
    with NatsServer() as server:
        yield server


def nats_skip_if_missing(server: NatsServer | None) -> NatsServer:
    if server is None:
        pytest.skip(skip_reason() or "nats-server missing")
    return server


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("hyperbroker benchmark figures")
        for line in RESULTS:
            terminalreporter.write_line(line)
