"""Benchmark plumbing: collected ratios are printed at the end of the run.

Benchmarks run once as plain tests in CI (``--benchmark-disable`` in addopts, smaller sizes);
measure with ``python -m pytest benches --benchmark-enable``.
"""

from __future__ import annotations

from typing import Any

import pytest

RESULTS: list[str] = []


def report(line: str) -> None:
    RESULTS.append(line)


@pytest.fixture
def measuring(benchmark: Any) -> bool:
    """True when pytest-benchmark really measures (not --benchmark-disable)."""
    return not getattr(benchmark, "disabled", False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if RESULTS:
        terminalreporter.section("hyperbroker benchmark figures")
        for line in RESULTS:
            terminalreporter.write_line(line)
