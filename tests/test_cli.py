"""The ``hyperbroker`` command, run as ``python -m hyperbroker`` in subprocesses.

Every command that touches the network gets ``--interfaces 127.0.0.1`` (zeroconf on loopback)
and ``--address 127.0.0.1:0`` (the endpoint on loopback). Run inside a private network
namespace, as CI does:

    unshare -rn sh -c 'ip link set lo up && python -m pytest tests/test_cli.py -q'
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
HB = [sys.executable, "-m", "hyperbroker"]
LO = ["--interfaces", "127.0.0.1"]


class Cmd:
    """A running CLI process whose stdout lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv
        self.lines: list[str] = []
        self.stderr = b""
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._err_reader = asyncio.create_task(self._read_err())

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._new.set()
        self._new.set()

    async def wait_line(self, pred: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if pred(line):
                    return line
            seen = len(self.lines)
            if self._reader.done():
                raise AssertionError(f"{self.argv[3:]} ended without the expected line; output:\n{self.output()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.argv[3:]}: no expected line within {timeout}s; output:\n{self.output()}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass

    async def finish(self, timeout: float) -> int:
        """Wait for the exit (kill on timeout and fail); returns the exit code."""
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"{self.argv[3:]} did not exit within {timeout}s; output:\n{self.output()}") from None
        await asyncio.wait_for(asyncio.gather(self._reader, self._err_reader), 5)
        return rc

    def output(self) -> str:
        return "\n".join(self.lines) + (f"\n[stderr]\n{self.stderr.decode(errors='replace')}" if self.stderr else "")


Run = Callable[..., Awaitable[Cmd]]


@pytest.fixture
async def run() -> AsyncIterator[Run]:
    cmds: list[Cmd] = []

    async def start(*args: str) -> Cmd:
        argv = [*HB, *args]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(REPO)
        )
        c = Cmd(proc, argv)
        cmds.append(c)
        return c

    yield start
    for c in cmds:
        if c.proc.returncode is None:
            try:
                c.proc.kill()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(c.proc.wait(), 5)
            except TimeoutError:
                pass
        c._reader.cancel()
        c._err_reader.cancel()


def topic() -> str:
    return f"cli.{uuid.uuid4().hex[:10]}"


async def test_demo(run: Run) -> None:
    c = await run("demo", "--interval", "0")
    rc = await c.finish(30)
    assert rc == 0, c.output()
    pubbed = [ln for ln in c.lines if ln.startswith("[pub] pubbed message: ")]
    received = [ln for ln in c.lines if ln.startswith("[sub] received message: ")]
    assert pubbed == [f"[pub] pubbed message: {i}: hello from hyperbroker" for i in range(10)], c.output()
    assert len(received) == 10, c.output()
    got = {}
    for ln in received:
        m = re.fullmatch(r"\[sub\] received message: (\d+): hello from hyperbroker header (\{.*\})", ln)
        assert m, ln
        assert f"'id': '{m.group(1)}'" in m.group(2), ln  # the message's own header came along
        got[int(m.group(1))] = ln
    assert sorted(got) == list(range(10))


async def test_demo_summary_counts_what_was_delivered(run: Run) -> None:
    """The demo's last line reports the publisher's counters once all 10 arrived: they must say
    10 delivered, not a snapshot taken before the publisher saw the subscriber's answers."""
    c = await run("demo", "--interval", "0")
    assert await c.finish(30) == 0, c.output()
    summary = [ln for ln in c.lines if ln.startswith("[demo] ")]
    assert len(summary) == 1, c.output()
    m = re.fullmatch(
        r"\[demo\] 10/10 delivered; publisher stats: delivered=(\d+) dropped=(\d+) backlogged=(\d+)", summary[0]
    )
    assert m, summary[0]
    assert (int(m[1]), int(m[2])) == (10, 0), summary[0]


async def test_sub_and_pub(run: Run) -> None:
    t = topic()
    sub = await run("sub", t, *LO, "--address", "127.0.0.1:0", "--count", "3", "--timeout", "30")
    await sub.wait_line(lambda ln: ln.startswith("[sub] subscribed to"), 15)
    pub = await run("pub", t, "a", "b", "c", *LO, "--address", "127.0.0.1:0", "--header", "k=v")
    assert await pub.finish(30) == 0, pub.output()
    assert await sub.finish(15) == 0, sub.output()
    received = [ln for ln in sub.lines if ln.startswith("[sub] received message: ")]
    assert len(received) == 3, sub.output()
    for ln, body in zip(received, "abc", strict=False):
        assert ln.startswith(f"[sub] received message: {body} header "), ln
        assert "'k': 'v'" in ln, ln
    assert [ln for ln in pub.lines if ln.startswith("[pub] pubbed message: ")] == [
        f"[pub] pubbed message: {x}" for x in "abc"
    ], pub.output()
    assert any(ln.startswith("[pub] 1 subscriber node(s)") for ln in pub.lines), pub.output()
    assert any("delivered=3 backlog=0 dropped=0" in ln for ln in pub.lines), pub.output()


SUBSCRIBED = re.compile(r"\[sub\] subscribed to '(?P<topic>[^']+)' as (?P<id>\S+) at (?P<addr>\S+)")


async def test_browse_lists_a_running_subscription(run: Run) -> None:
    t = topic()
    sub = await run("sub", t, "--queue", "workers", *LO, "--address", "127.0.0.1:0", "--timeout", "30")
    m = SUBSCRIBED.fullmatch(await sub.wait_line(lambda ln: SUBSCRIBED.fullmatch(ln) is not None, 15))
    assert m
    browse = await run("browse", *LO)
    assert await browse.finish(20) == 0, browse.output()
    assert browse.lines and browse.lines[0].split()[:5] == ["TOPIC", "QUEUE", "NODE", "ADDRESS", "SECURE"], (
        browse.output()
    )
    rows = [ln.split() for ln in browse.lines[1:]]
    assert [t, "workers", m["id"], m["addr"], "false"] in rows, browse.output()
    # SIGTERM: the subscriber unsubscribes (goodbye) and exits cleanly
    sub.proc.send_signal(signal.SIGTERM)
    assert await sub.finish(10) == 0, sub.output()


async def test_browse_watch_prints_new_subscriber(run: Run) -> None:
    t = topic()
    browse = await run("browse", "--watch", "--timeout", "5", "--wait", "0.5", *LO)
    await browse.wait_line(lambda ln: ln.startswith("TOPIC"), 10)  # listing done, now watching
    assert not any(t in ln for ln in browse.lines)
    sub = await run("sub", t, *LO, "--address", "127.0.0.1:0", "--timeout", "30")
    m = SUBSCRIBED.fullmatch(await sub.wait_line(lambda ln: SUBSCRIBED.fullmatch(ln) is not None, 10))
    assert m
    line = await browse.wait_line(lambda ln: t in ln, 5)
    assert line.split() == ["create", t, "(broadcast)", m["id"], m["addr"], "false"], line
    assert await browse.finish(10) == 0, browse.output()
    sub.proc.send_signal(signal.SIGTERM)
    assert await sub.finish(10) == 0, sub.output()
