"""Chaos: subscriber processes SIGKILLed or SIGTERMed and replaced under a steady publisher.

A publisher in the test process sends numbered messages (``str(n)``) at a steady rate to one
topic with a queue group of 3 subscriber processes and 2 broadcast subscriber processes, all
discovering each other over real mDNS on loopback (``MdnsRegistry(interfaces=["127.0.0.1"])``).
Every few seconds the oldest queue member is stopped and a new one (same queue) started; the
broadcast subscribers stay up throughout. Each subscriber process (tests/helpers/chaos_node.py)
writes every number it handled to its own file before acknowledging it, so after the run the
files of all processes, dead or alive, are the record:

- SIGKILL (no goodbye; mDNS keeps the dead node "discovered" for ~19 minutes, so refused
  connections evicting it are the only liveness signal): the union over all queue members covers
  every number (loss 0), each broadcast subscriber got every number, duplicates (a killed
  process handled a batch whose answer never left) are counted and printed, and every drop is
  explained by ``stats()["dropped_by_reason"]``.
- SIGTERM (chaos_node drains like ``hyperbroker sub``): loss 0 everywhere, nothing dropped,
  nothing handled twice, every drained member gone from the route.
- Eviction: a queue member whose port refuses (a SIGKILLed process the registry still lists)
  must leave the route, also with live members beside it (which took its messages: it is
  probed until it answers or is evicted).

Run as CI does (mDNS needs a private network namespace):

    unshare -rn sh -c 'ip link set lo up && python -m pytest tests/test_chaos.py -q -s'

Every wait is bounded; every child process is killed at the end, also on failure.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hyperbroker import Broker, MemoryRegistry
from hyperbroker.registry.base import Node, Service, service_name
from hyperbroker.registry.mdns import MdnsRegistry

sys.path.insert(0, str(Path(__file__).with_name("helpers")))
from chaos_procs import LO, Fleet, SteadyPublisher, Tally, dup_origins, replace_one, start_fleet, union, wait_for

pytestmark = pytest.mark.timeout(110)

RATE = 300.0  # messages per second
QUEUE = "workers"
MEMBERS = 3
BROADCAST = 2
#: the publisher gives a dead node up fast and probes it cheaply
PUBLISHER = {
    "retry_min": 0.01,
    "retry_max": 0.25,
    "evict_after": 2,
    "request_timeout": 5.0,
    "backlog": 100_000,
    "disconnect_timeout": 2.0,
}
SETTLE_WITHIN = 20.0  # after the last publish: every subscriber has every number


@pytest.fixture
async def chaos(tmp_path: Path) -> AsyncIterator[tuple[Broker, Fleet]]:
    """A connected publisher on loopback mDNS and an empty fleet of subscriber processes; all
    processes are killed and the publisher disconnected at the end."""
    topic = f"chaos.{uuid.uuid4().hex[:12]}"
    registry = MdnsRegistry(interfaces=[LO])
    pub = Broker(address=f"{LO}:0", registry=registry, **PUBLISHER)
    fleet = Fleet(tmp_path, topic)
    try:
        await pub.connect()
        yield pub, fleet
    finally:
        await fleet.close()
        try:
            await asyncio.wait_for(pub.disconnect(timeout=0), 10)
        finally:
            await asyncio.wait_for(registry.close(), 10)


async def run_chaos(pub: Broker, fleet: Fleet, how: str, rounds: int, every: float) -> dict[str, Any]:
    """The scenario: start the fleet, publish steadily, replace a queue member every ``every``
    seconds ``rounds`` times, stop publishing, wait until everyone has everything (bounded),
    flush, stop the survivors gracefully. Returns the figures."""
    broadcasters = await start_fleet(pub, fleet, QUEUE, MEMBERS, BROADCAST)
    steady = SteadyPublisher(pub, fleet.topic, RATE)
    steady.start()
    t0 = time.monotonic()
    try:
        for r in range(rounds):
            await asyncio.sleep(max(0.0, t0 + (r + 1) * every - time.monotonic()))
            await replace_one(pub, fleet, QUEUE, how)
        await asyncio.sleep(1.0)  # the last replacement takes a share too
    finally:
        published = await steady.stop()
    elapsed = time.monotonic() - t0

    queue_procs = fleet.members(QUEUE)

    def settled() -> bool:
        seen = union(queue_procs)
        return all(seen[n] for n in range(published)) and all(
            len(set(b.seqs()) & set(range(published))) == published for b in broadcasters
        )

    def progress() -> str:
        parts = [f"queue {Tally.of(published, union(queue_procs)).brief()}"]
        parts += [f"{b.name} {Tally.of(published, Counter(b.seqs())).brief()}" for b in broadcasters]
        return "every number everywhere: " + "; ".join(parts) + f"; publisher stats {pub.stats()}"

    await wait_for(settled, SETTLE_WITHIN, progress)
    await pub.flush(timeout=15)
    stats = pub.stats()
    routes = pub.route_count(fleet.topic)
    # the survivors leave gracefully: what they record from here on is in the files too
    survivors = [p for p in fleet.procs if p.alive and not p.how_stopped]
    for p in survivors:
        p.sigterm()
    await asyncio.gather(*(p.wait_drained(15) for p in survivors))

    queue = Tally.of(published, union(queue_procs))
    bcast = {b.name: Tally.of(published, Counter(b.seqs())) for b in broadcasters}
    figures = {
        "how": how,
        "published": published,
        "seconds": round(elapsed, 1),
        "replaced": rounds,
        "queue": queue,
        "broadcast": bcast,
        "per_member": {p.name: (len(p.seqs()), p.how_stopped) for p in queue_procs},
        "stats": stats,
        "route_count": routes,
    }
    print(f"\n[chaos {how}] {published} published in {elapsed:.1f}s, {rounds} queue members replaced")
    print(f"[chaos {how}] queue group (union of {len(queue_procs)} members): {queue.brief()}")
    if queue.duplicates:
        print(f"[chaos {how}] duplicates recorded by: {dup_origins(queue_procs)}")
    for name, t in bcast.items():
        print(f"[chaos {how}] broadcast {name}: {t.brief()}")
    print(f"[chaos {how}] per member (received, how stopped): {figures['per_member']}")
    print(
        f"[chaos {how}] publisher: dropped={stats['dropped']} by reason {stats['dropped_by_reason']} "
        f"dead_lettered={stats['dead_lettered']} evicted={stats['evicted']} retried={stats['retried']} "
        f"backlogged={stats['backlogged']} failed={stats['failed']} delivered={stats['delivered']}; "
        f"route_count at the end {figures['route_count']} ({MEMBERS + BROADCAST} alive)"
    )
    return figures


def check_common(f: dict[str, Any]) -> None:
    queue: Tally = f["queue"]
    st = f["stats"]
    assert f["published"] >= RATE * 10, f"the publisher fell behind: {f['published']} in {f['seconds']}s"
    assert not queue.missing, f"queue group lost {len(queue.missing)}: {queue.brief()}"
    assert not queue.extra, queue.brief()
    for name, t in f["broadcast"].items():
        assert not t.missing, f"broadcast {name} lost {len(t.missing)}: {t.brief()}"
        assert not t.extra, t.brief()
    reasons = st["dropped_by_reason"]
    assert st["dropped"] == sum(reasons.values()), f"a drop without a reason: {st}"
    assert st["dead_lettered"] == 0, st
    assert st["in_flight"] == 0 and st["backlog"] == 0, st
    # every queue member that lived took a share (the group really was spread)
    for name, (n, _) in f["per_member"].items():
        assert n > 0, f"{name} received nothing: {f['per_member']}"


async def test_sigkill_churn_loses_nothing(chaos: tuple[Broker, Fleet]) -> None:
    """7 queue members SIGKILLed and replaced, one every 4 s, under 300 msg/s."""
    pub, fleet = chaos
    # handlers take 5 ms: a kill often lands while a batch is being handled (redelivered elsewhere)
    fleet.queue_args = ("--handler-delay", "0.005")
    f = await run_chaos(pub, fleet, "SIGKILL", rounds=7, every=4.0)
    check_common(f)
    st = f["stats"]
    # nothing of a killed queue member is dropped: its queue goes to another member
    reasons = st["dropped_by_reason"]
    assert reasons["backlog_overflow"] == reasons["node_queue_overflow"] == 0, st
    assert reasons["left_while_others_have_it"] == 0, st
    # broadcast copies are never duplicated: those subscribers never died
    for name, t in f["broadcast"].items():
        assert t.duplicates == 0, f"{name}: {t.brief()}"


async def test_sigterm_churn_loses_and_drops_nothing(chaos: tuple[Broker, Fleet]) -> None:
    """5 queue members drained on SIGTERM and replaced, one every 4 s, under 300 msg/s:
    nothing lost, nothing dropped, nothing handled twice."""
    pub, fleet = chaos
    # handlers take 5 ms: SIGTERM often lands while a batch is being handled (drain finishes it)
    fleet.queue_args = ("--handler-delay", "0.005")
    f = await run_chaos(pub, fleet, "SIGTERM", rounds=5, every=4.0)
    check_common(f)
    st = f["stats"]
    assert st["dropped"] == 0, st
    assert f["queue"].duplicates == 0, f"a drained member's messages were handled twice: {f['queue'].brief()}"
    for name, t in f["broadcast"].items():
        assert t.duplicates == 0, f"{name}: {t.brief()}"
    for name, (_, how) in f["per_member"].items():
        assert how == "SIGTERM", f"{name} was stopped by {how}"
    assert f["route_count"] == MEMBERS + BROADCAST, "every drained member left the route"


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind((LO, 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("alive", [0, 1, 2], ids=["alone", "with-1-alive", "with-2-alive"])
async def test_sigkilled_queue_member_is_evicted(alive: int) -> None:
    """A queue member whose process was SIGKILLed is still "discovered" (mDNS keeps it ~19 min):
    here a registered node whose port refuses. Refused connections must evict it (``evicted``,
    out of ``route_count``) while its messages go to the live members; none is lost."""
    registry = MemoryRegistry()
    pub = Broker(address=f"{LO}:0", registry=registry, **PUBLISHER)
    live: list[Broker] = []
    got: list[int] = []
    try:
        await pub.connect()
        for _ in range(alive):
            b = Broker(address=f"{LO}:0", registry=registry, disconnect_timeout=0)
            live.append(b)
            await b.connect()
            await b.subscribe("killed", lambda ev: got.append(int(ev.message.body)), queue=QUEUE)
        dead = Node("hb-dead", f"{LO}:{dead_port()}", {"broker": "http", "batch": "1"})
        await registry.register(Service(service_name("killed"), QUEUE, (dead,)))
        await wait_for(lambda: pub.route_count("killed") == alive + 1, 5, lambda: "routes")
        for i in range(300):
            await pub.publish("killed", str(i))
            await asyncio.sleep(0.002)
        await wait_for(
            lambda: pub.stats()["evicted"] == 1 and pub.route_count("killed") == alive,
            5,
            lambda: f"eviction of the dead member: route_count {pub.route_count('killed')}, stats {pub.stats()}",
        )
        if alive:
            await pub.flush(timeout=10)
            assert sorted(got) == list(range(300))
        else:
            assert pub.stats()["backlog"] == 300  # waits for the next subscriber
    finally:
        for b in (pub, *live):
            await asyncio.wait_for(b.disconnect(timeout=0), 10)
