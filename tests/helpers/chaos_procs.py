"""The test side of the chaos tests and the soak: subscriber processes (tests/helpers/chaos_node.py)
started, killed, terminated and replaced under a steady numbered publisher, and the tally of
what every subscriber recorded (loss and duplicates by sequence number).

Used by tests/test_chaos.py and benches/test_soak.py. Everything is asyncio and bounded in time;
:meth:`Fleet.close` always leaves every process it started dead (also when a test fails).
Processes record into files under the test's temporary directory, so a SIGKILLed subscriber's
numbers stay readable after its death.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperbroker import Broker

NODE = str(Path(__file__).with_name("chaos_node.py"))
REPO = Path(__file__).resolve().parents[2]
LO = "127.0.0.1"


class ChaosError(AssertionError):
    """A subscriber process misbehaved or a bounded wait ran out (the test fails with it)."""


class SubProc:
    """One chaos_node.py process: one subscription, recording into ``out``."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str, out: Path, err: Path, queue: str | None) -> None:
        self.proc = proc
        self.name = name
        self.out = out
        self.err = err
        self.queue = queue
        self.events: list[dict[str, Any]] = []
        self.how_stopped = ""  # "", "SIGKILL", "SIGTERM", "closed"

    @classmethod
    async def start(
        cls,
        name: str,
        workdir: Path,
        topic: str,
        queue: str | None = None,
        drain_timeout: float = 10.0,
        max_lifetime: float = 300.0,
        timeout: float = 20.0,
        extra: tuple[str, ...] = (),
    ) -> SubProc:
        out, err = workdir / f"{name}.seq", workdir / f"{name}.stderr"
        argv = [sys.executable, "-u", NODE, "--topic", topic, "--out", str(out), "--interfaces", LO]
        argv += ["--drain-timeout", str(drain_timeout), "--max-lifetime", str(max_lifetime), *extra]
        if queue:
            argv += ["--queue", queue]
        with open(err, "wb") as e:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=e, cwd=str(REPO)
            )
        sp = cls(proc, name, out, err, queue)
        try:
            ready = await asyncio.wait_for(sp._next_event(), timeout)
        except BaseException as e:
            await sp.close()
            raise ChaosError(f"{name} did not get ready within {timeout}s ({e!r}); stderr:\n{sp.stderr()}") from None
        if ready.get("event") != "ready" or ready.get("pid") != proc.pid:
            await sp.close()
            raise ChaosError(f"{name}: unexpected first line {ready}; stderr:\n{sp.stderr()}")
        return sp

    async def _next_event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise ChaosError(f"{self.name} exited (rc={self.proc.returncode})")
        ev: dict[str, Any] = json.loads(line)
        self.events.append(ev)
        return ev

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def stderr(self) -> str:
        try:
            return self.err.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def seqs(self) -> list[int]:
        """Every sequence number this process recorded so far (a torn last line is skipped)."""
        try:
            data = self.out.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        return [int(x) for x in lines[:-1] if x]

    def sigkill(self) -> None:
        if self.alive:
            self.how_stopped = "SIGKILL"
            self.proc.send_signal(signal.SIGKILL)

    def sigterm(self) -> None:
        if self.alive:
            self.how_stopped = "SIGTERM"
            self.proc.send_signal(signal.SIGTERM)

    async def wait_drained(self, timeout: float) -> dict[str, Any]:
        """After SIGTERM: the ``drained`` line and a clean exit within ``timeout``."""
        try:
            ev = await asyncio.wait_for(self._next_event(), timeout)
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except (TimeoutError, ChaosError) as e:
            raise ChaosError(
                f"{self.name} did not drain and exit within {timeout}s ({e!r}); stderr:\n{self.stderr()}"
            ) from None
        if ev.get("event") != "drained" or rc != 0:
            raise ChaosError(f"{self.name}: drain ended with {ev} rc={rc}; stderr:\n{self.stderr()}")
        return ev

    async def close(self) -> None:
        """Dead for sure: SIGKILL if still running, then reap."""
        if self.alive:
            self.how_stopped = self.how_stopped or "closed"
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            pass
        if self.proc.stdin is not None:
            self.proc.stdin.close()


@dataclass
class Fleet:
    """Every subscriber process of a test (dead ones included: their files are the record)."""

    workdir: Path
    topic: str
    #: extra chaos_node.py arguments of queue members (e.g. ``("--handler-delay", "0.005")``)
    queue_args: tuple[str, ...] = ()
    #: each process exits by itself after this many seconds (a safety net): longer than the run
    max_lifetime: float = 300.0
    procs: list[SubProc] = field(default_factory=list)
    counter: int = 0

    async def start(self, role: str, queue: str | None = None, **kw: Any) -> SubProc:
        self.counter += 1
        extra = self.queue_args if queue else ()
        kw.setdefault("max_lifetime", self.max_lifetime)
        sp = await SubProc.start(f"{role}-{self.counter:02d}", self.workdir, self.topic, queue, extra=extra, **kw)
        self.procs.append(sp)
        return sp

    async def start_many(self, roles: list[tuple[str, str | None]], **kw: Any) -> list[SubProc]:
        kw.setdefault("max_lifetime", self.max_lifetime)
        names = []
        for role, _ in roles:
            self.counter += 1
            names.append(f"{role}-{self.counter:02d}")
        started = await asyncio.gather(
            *(
                SubProc.start(n, self.workdir, self.topic, q, extra=self.queue_args if q else (), **kw)
                for n, (_, q) in zip(names, roles, strict=True)
            ),
            return_exceptions=True,
        )
        ok = [s for s in started if isinstance(s, SubProc)]
        self.procs.extend(ok)
        for s in started:
            if isinstance(s, BaseException):
                raise s
        return ok

    def members(self, queue: str) -> list[SubProc]:
        return [p for p in self.procs if p.queue == queue]

    def alive_members(self, queue: str) -> list[SubProc]:
        return [p for p in self.members(queue) if p.alive and not p.how_stopped]

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.procs), return_exceptions=True)


@dataclass
class Tally:
    """Loss and duplicates by sequence number, for ``published`` numbers 0..published-1."""

    published: int
    missing: list[int]
    duplicates: int
    duplicated: list[int]
    extra: list[int]

    @classmethod
    def of(cls, published: int, seen: Counter[int]) -> Tally:
        want = range(published)
        missing = [n for n in want if seen[n] == 0]
        duplicated = sorted(n for n, c in seen.items() if c > 1)
        return cls(
            published=published,
            missing=missing,
            duplicates=sum(c - 1 for c in seen.values() if c > 1),
            duplicated=duplicated,
            extra=sorted(n for n in seen if not 0 <= n < published),
        )

    def brief(self) -> str:
        return (
            f"published={self.published} lost={len(self.missing)} {self.missing[:20]} "
            f"duplicates={self.duplicates} {self.duplicated[:40]} unexpected={self.extra[:10]}"
        )


def union(procs: list[SubProc]) -> Counter[int]:
    c: Counter[int] = Counter()
    for p in procs:
        c.update(p.seqs())
    return c


def dup_origins(procs: list[SubProc]) -> dict[str, int]:
    """For duplicated numbers: which processes (name and how stopped) recorded them, and how
    many numbers each such combination holds."""
    where: dict[int, list[str]] = {}
    for p in procs:
        label = f"{p.name}({p.how_stopped or 'alive'})"
        for n in p.seqs():
            where.setdefault(n, []).append(label)
    out: Counter[str] = Counter(" + ".join(w) for w in where.values() if len(w) > 1)
    return dict(out)


class SteadyPublisher:
    """Publishes ``str(n)`` for n = 0, 1, 2... at ``rate`` per second until stopped."""

    def __init__(self, broker: Broker, topic: str, rate: float) -> None:
        self.broker = broker
        self.topic = topic
        self.rate = rate
        self.n = 0
        self.times: list[float] = []  # monotonic time of every 100th publish
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="steady-publisher")

    async def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - start) * self.rate) + 1
            while self.n < due:
                if self.n % 100 == 0:
                    self.times.append(time.monotonic())
                await self.broker.publish(self.topic, str(self.n).encode())
                self.n += 1
            await asyncio.sleep(1 / self.rate)

    def published_before(self, t: float) -> int:
        """How many were published before monotonic time ``t`` (to the nearest 100)."""
        k = sum(1 for x in self.times if x < t)
        return max(0, min(self.n, (k - 1) * 100)) if k else 0

    async def stop(self) -> int:
        self._stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)
        return self.n


async def wait_for(cond: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
    """Poll ``cond`` every 0.1 s; ChaosError with ``what()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise ChaosError(f"timed out after {timeout}s waiting for {what()}")
        await asyncio.sleep(0.1)


async def wait_routes(pub: Broker, topic: str, n: int, timeout: float = 12.0) -> None:
    """Until the publisher routes ``topic`` to exactly ``n`` nodes (a new subscriber process is
    started, announced and resolved in a few seconds; a dead one is evicted at once)."""
    await wait_for(
        lambda: pub.route_count(topic) == n,
        timeout,
        lambda: f"route_count({topic!r}) == {n} (is {pub.route_count(topic)}); stats {pub.stats()}",
    )


async def start_fleet(pub: Broker, fleet: Fleet, queue: str, members: int, broadcast: int) -> list[SubProc]:
    """``members`` subscriber processes in ``queue`` and ``broadcast`` broadcast ones, all
    routed to by ``pub``; returns the broadcast ones."""
    roles: list[tuple[str, str | None]] = [("queue", queue)] * members + [("bcast", None)] * broadcast
    procs = await fleet.start_many(roles)
    await wait_routes(pub, fleet.topic, members + broadcast)
    return [p for p in procs if p.queue is None]


async def replace_one(pub: Broker, fleet: Fleet, queue: str, how: str, timeout: float = 12.0) -> SubProc:
    """Stop the oldest live member of ``queue`` (``how``: "SIGKILL" or "SIGTERM"), start a
    replacement in the same queue and wait until it has received a message (the publisher routes
    to it). After a SIGTERM, also wait until the publisher removed the drained member (its goodbye).

    A SIGKILLed member's route is not waited for: the publisher routes around it at once (its
    messages fail over to another member), and it stays counted in ``route_count`` until evicted.
    """
    victim = fleet.alive_members(queue)[0]
    if how == "SIGKILL":
        victim.sigkill()
        await asyncio.wait_for(victim.proc.wait(), 5)
    elif how == "SIGTERM":
        before = pub.route_count(fleet.topic)
        victim.sigterm()
        await victim.wait_drained(15)
        await wait_routes(pub, fleet.topic, before - 1, timeout)
    else:
        raise ValueError(how)
    repl = await fleet.start("queue", queue)
    await wait_for(
        lambda: repl.out.exists() and repl.out.stat().st_size > 0,
        timeout,
        lambda: (
            f"a first message at the replacement {repl.name}; route_count {pub.route_count(fleet.topic)}; stats {pub.stats()}"
        ),
    )
    return victim


def rss_kib() -> int:
    """This process's resident set size (VmRSS), KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ChaosError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
