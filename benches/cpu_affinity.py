"""Put whole processes (every thread) on one CPU for the length of a ``with`` block, then back.

For the one-CPU latency diagnosis (test_bench_latency_one_cpu.py): with every thread of the
publisher, the subscriber and nats-server on one vCPU, no wake-up on a message's path has to
reach another vCPU.

Linux keeps the CPU mask per thread: ``os.sched_setaffinity(pid, ...)`` moves only the thread
whose id is ``pid``, so each thread listed in ``/proc/<pid>/task`` is set. Threads and processes
started inside the block inherit the CPU from their creator. On the way out, every thread of
each process gets back the mask its main thread had when the block began (threads started
inside the block included). A thread that exits meanwhile is skipped.

Imported as a top-level module (``import cpu_affinity``); Linux only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator

__all__ = ["one_cpu", "thread_masks"]


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []  # the process is gone


def _set_all(pid: int, mask: set[int]) -> None:
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, mask)


def thread_masks(pid: int) -> dict[int, set[int]]:
    """The CPU mask of each thread of ``pid`` now (thread id -> CPUs)."""
    out: dict[int, set[int]] = {}
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):
            out[tid] = os.sched_getaffinity(tid)
    return out


@contextlib.contextmanager
def one_cpu(pids: Iterable[int], cpu: int | None = None) -> Iterator[int]:
    """Every thread of each process in ``pids`` on ``cpu`` (default: the lowest CPU this process
    may use) inside the block; yields that CPU."""
    pids = list(dict.fromkeys(pids))
    before = {pid: os.sched_getaffinity(pid) for pid in pids}
    if cpu is None:
        cpu = min(os.sched_getaffinity(0))
    try:
        for pid in pids:
            _set_all(pid, {cpu})
        yield cpu
    finally:
        for pid, mask in before.items():
            _set_all(pid, mask)
