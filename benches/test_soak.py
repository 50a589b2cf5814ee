"""Soak: a steady publisher under endless subscriber churn; loss, duplicates and the publisher's
memory and file descriptors over time.

The scenario of tests/test_chaos.py, for longer: a publisher in this process sends numbered
messages at ``HB_SOAK_RATE`` (default 300) msg/s to a queue group of 3 subscriber processes and
2 broadcast subscriber processes over mDNS on loopback; every ``HB_SOAK_CHURN`` (default 6) s
the oldest queue member is stopped, alternately by SIGKILL and by SIGTERM (drain), and replaced.
Every ``HB_SOAK_SAMPLE`` (default 5) s a row is printed: elapsed seconds, published, numbers
published over 5 s ago that the queue group / each broadcast subscriber has not got yet ("late"),
duplicates so far, the publisher's RSS (VmRSS, KiB) and open fds (/proc/self/fd), and its backlog
and in-flight counts. The tally is incremental (one byte per published number per receiver),
so the bookkeeping itself does not grow the RSS it measures.

Length: ``HB_SOAK_SECONDS`` when set; else 180 s with ``--benchmark-enable``; else a 10 s smoke
run (the default ``python -m pytest benches`` run). Every length asserts loss 0 (queue group and
both broadcast subscribers), every drop explained by ``dropped_by_reason``, no dead letters. Runs
of 60 s or more also assert a plateau after warm-up (the first 15 % or 10 s): the last third's max
RSS within 20 % of the first third's, its max fd count within 8 of the first third's.

    unshare -rn sh -c 'ip link set lo up && HB_SOAK_SECONDS=300 python -m pytest benches/test_soak.py -s'
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import report

from hyperbroker import Broker
from hyperbroker.registry.mdns import MdnsRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from chaos_procs import (
    LO,
    Fleet,
    SteadyPublisher,
    SubProc,
    dup_origins,
    open_fds,
    replace_one,
    rss_kib,
    start_fleet,
    wait_for,
)

ENV_SECONDS = os.environ.get("HB_SOAK_SECONDS")
FULL_SECONDS = 180.0
SMOKE_SECONDS = 10.0
RATE = float(os.environ.get("HB_SOAK_RATE", "300"))
CHURN = float(os.environ.get("HB_SOAK_CHURN", "6"))
SAMPLE = float(os.environ.get("HB_SOAK_SAMPLE", "5"))
LATE_AFTER = 5.0  # a number published this long ago should have arrived
QUEUE = "soakers"
MEMBERS = 3
BROADCAST = 2
PUBLISHER = {
    "retry_min": 0.01,
    "retry_max": 0.25,
    "evict_after": 2,
    "request_timeout": 5.0,
    "backlog": 100_000,
    "disconnect_timeout": 2.0,
}

pytestmark = pytest.mark.timeout(float(ENV_SECONDS or FULL_SECONDS) + 150)


class Receipts:
    """Per receiver, how often each number arrived (a bytearray, saturating at 255), read from
    the processes' files incrementally (an offset per file)."""

    def __init__(self) -> None:
        self.counts = bytearray()
        self.duplicates = 0
        self.offsets: dict[Path, int] = {}
        self.partial: dict[Path, bytes] = {}

    def read(self, procs: list[SubProc]) -> None:
        for p in procs:
            try:
                with open(p.out, "rb") as f:
                    f.seek(self.offsets.get(p.out, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            self.offsets[p.out] = self.offsets.get(p.out, 0) + len(data)
            data = self.partial.pop(p.out, b"") + data
            *lines, rest = data.split(b"\n")
            if rest:
                self.partial[p.out] = rest
            for line in lines:
                n = int(line)
                if n >= len(self.counts):
                    self.counts.extend(bytes(n + 1 - len(self.counts) + 4096))
                c = self.counts[n]
                if c:
                    self.duplicates += 1
                if c < 255:
                    self.counts[n] = c + 1

    def missing(self, upto: int) -> list[int]:
        """Numbers below ``upto`` not received."""
        have = self.counts[:upto]
        return [i for i in range(upto) if i >= len(have) or have[i] == 0]


@dataclass
class Sample:
    t: float
    published: int
    late_queue: int
    late_bcast: list[int]
    duplicates: int
    rss_kib: int
    fds: int
    backlog: int
    in_flight: int

    def row(self) -> str:
        return (
            f"{self.t:7.1f} {self.published:9d} {self.late_queue:6d} {','.join(map(str, self.late_bcast)):>9} "
            f"{self.duplicates:5d} {self.rss_kib:9d} {self.fds:4d} {self.backlog:7d} {self.in_flight:8d}"
        )


HEADER = "      t published l_queue l_bcast  dups   rss_kib  fds backlog in_flight"


@dataclass
class Soak:
    pub: Broker
    fleet: Fleet
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    replaced: dict[str, int] = field(default_factory=lambda: {"SIGKILL": 0, "SIGTERM": 0})

    async def run(self) -> dict[str, Any]:
        pub, fleet = self.pub, self.fleet
        broadcasters = await start_fleet(pub, fleet, QUEUE, MEMBERS, BROADCAST)
        queue_rx = Receipts()
        bcast_rx = [Receipts() for _ in broadcasters]
        steady = SteadyPublisher(pub, fleet.topic, RATE)
        steady.start()
        t0 = time.monotonic()
        print(f"\n[soak] {self.seconds:.0f}s at {RATE:.0f} msg/s, churn every {CHURN}s\n{HEADER}", flush=True)

        async def churn() -> None:
            k = 0
            while True:
                await asyncio.sleep(max(0.0, t0 + (k + 1) * CHURN - time.monotonic()))
                how = "SIGKILL" if k % 2 == 0 else "SIGTERM"
                await replace_one(pub, fleet, QUEUE, how)
                self.replaced[how] += 1
                k += 1

        churner = asyncio.create_task(churn(), name="soak-churn")
        try:
            while (now := time.monotonic()) - t0 < self.seconds:
                await asyncio.sleep(min(SAMPLE, max(0.0, t0 + self.seconds - now)))
                if churner.done():
                    churner.result()  # a failed replacement fails the soak
                self.samples.append(self._sample(t0, steady, queue_rx, bcast_rx, broadcasters))
                print(self.samples[-1].row(), flush=True)
        finally:
            churner.cancel()
            try:
                await churner
            except asyncio.CancelledError:
                pass
            published = await steady.stop()

        def settled() -> bool:
            queue_rx.read(fleet.members(QUEUE))
            for rx, b in zip(bcast_rx, broadcasters, strict=True):
                rx.read([b])
            return not queue_rx.missing(published) and not any(rx.missing(published) for rx in bcast_rx)

        def progress() -> str:
            return (
                f"every number everywhere: queue missing {queue_rx.missing(published)[:20]}, broadcast missing "
                f"{[rx.missing(published)[:20] for rx in bcast_rx]}; stats {pub.stats()}"
            )

        await wait_for(settled, 30, progress)
        await pub.flush(timeout=15)
        stats = pub.stats()
        survivors = [p for p in fleet.procs if p.alive and not p.how_stopped]
        for p in survivors:
            p.sigterm()
        await asyncio.gather(*(p.wait_drained(15) for p in survivors))
        settled()
        dups = dup_origins(fleet.members(QUEUE))
        if dups:
            print(f"[soak] queue duplicates recorded by: {dups}")
        return {
            "published": published,
            "queue_duplicates": queue_rx.duplicates,
            "broadcast_duplicates": [rx.duplicates for rx in bcast_rx],
            "queue_missing": queue_rx.missing(published),
            "broadcast_missing": [rx.missing(published) for rx in bcast_rx],
            "stats": stats,
        }

    def _sample(
        self,
        t0: float,
        steady: SteadyPublisher,
        queue_rx: Receipts,
        bcast_rx: list[Receipts],
        broadcasters: list[SubProc],
    ) -> Sample:
        now = time.monotonic()
        queue_rx.read(self.fleet.members(QUEUE))
        for rx, b in zip(bcast_rx, broadcasters, strict=True):
            rx.read([b])
        due = steady.published_before(now - LATE_AFTER)
        st = self.pub.stats()
        return Sample(
            t=now - t0,
            published=steady.n,
            late_queue=len(queue_rx.missing(due)),
            late_bcast=[len(rx.missing(due)) for rx in bcast_rx],
            duplicates=queue_rx.duplicates + sum(rx.duplicates for rx in bcast_rx),
            rss_kib=rss_kib(),
            fds=open_fds(),
            backlog=int(st["backlog"]),
            in_flight=int(st["in_flight"]),
        )


def soak_seconds(config: pytest.Config) -> float:
    if ENV_SECONDS:
        return float(ENV_SECONDS)
    return FULL_SECONDS if config.getoption("benchmark_enable", False) else SMOKE_SECONDS


async def test_soak_churn(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    seconds = soak_seconds(pytestconfig)
    registry = MdnsRegistry(interfaces=[LO])
    pub = Broker(address=f"{LO}:0", registry=registry, **PUBLISHER)
    # the subscriber processes' own safety exit comes after the run, not in it (it was 300 s:
    # a 300 s soak lost its broadcast subscribers at the end and timed out)
    fleet = Fleet(
        tmp_path, f"soak.{uuid.uuid4().hex[:12]}", queue_args=("--handler-delay", "0.005"), max_lifetime=seconds + 120
    )
    soak = Soak(pub, fleet, seconds)
    try:
        await pub.connect()
        f = await soak.run()
    finally:
        await fleet.close()
        try:
            await asyncio.wait_for(pub.disconnect(timeout=0), 10)
        finally:
            await asyncio.wait_for(registry.close(), 10)

    st = f["stats"]
    s = soak.samples
    size = "" if seconds >= 60 else " [smoke length]"
    summary = (
        f"soak{size}: {seconds:.0f}s, {f['published']} published at {RATE:.0f} msg/s, queue members replaced "
        f"{soak.replaced}; lost: queue {len(f['queue_missing'])}, broadcast "
        f"{[len(m) for m in f['broadcast_missing']]}; duplicates: queue {f['queue_duplicates']}, broadcast "
        f"{f['broadcast_duplicates']}; dropped {st['dropped']} {st['dropped_by_reason']}, dead_lettered "
        f"{st['dead_lettered']}, evicted {st['evicted']}; RSS KiB {s[0].rss_kib if s else '?'} -> "
        f"{s[-1].rss_kib if s else '?'} (max {max((x.rss_kib for x in s), default=0)}), fds "
        f"{s[0].fds if s else '?'} -> {s[-1].fds if s else '?'} (max {max((x.fds for x in s), default=0)})"
    )
    print(f"[soak] {summary}")
    report(summary)

    assert not f["queue_missing"], f"queue group lost {len(f['queue_missing'])}: {f['queue_missing'][:20]}"
    for i, m in enumerate(f["broadcast_missing"]):
        assert not m, f"broadcast subscriber {i} lost {len(m)}: {m[:20]}"
    assert st["dropped"] == sum(st["dropped_by_reason"].values()), st
    assert st["dead_lettered"] == 0 and st["in_flight"] == 0 and st["backlog"] == 0, st
    assert sum(soak.replaced.values()) >= int(seconds // CHURN) - 2, soak.replaced
    if seconds >= 60:
        warm = max(10.0, 0.15 * seconds)
        after = [x for x in s if x.t >= warm]
        third = len(after) // 3
        assert third >= 2, f"too few samples after warm-up: {len(after)}"
        first, last = after[:third], after[-third:]
        rss_first, rss_last = max(x.rss_kib for x in first), max(x.rss_kib for x in last)
        fds_first, fds_last = max(x.fds for x in first), max(x.fds for x in last)
        assert rss_last <= rss_first * 1.2, f"RSS grows: first third max {rss_first} KiB, last third max {rss_last} KiB"
        assert fds_last <= fds_first + 8, f"fds grow: first third max {fds_first}, last third max {fds_last}"
