"""Client side of tests/helpers/mdns_node.py: start a node process and call its commands.

Everything is asyncio (the pytest process may itself run brokers whose registries need the
loop), every call has a timeout, and :meth:`NodeProc.close` always leaves the process dead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HELPER = str(Path(__file__).with_name("mdns_node.py"))
REPO = Path(__file__).resolve().parents[2]

#: run the command in a new network namespace with lo up (keeps the pid: sh execs it)
NEW_NETNS = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


class NodeError(AssertionError):
    """A node command failed or timed out (an AssertionError: the test fails with it)."""


class NodeProc:
    def __init__(self, proc: asyncio.subprocess.Process, name: str, stderr_path: Path) -> None:
        self.proc = proc
        self.name = name
        self.stderr_path = stderr_path
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name=f"node-{name}-reader")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(
        cls,
        name: str,
        stderr_dir: Path,
        prefix: Sequence[str] = (),
        timeout: float = 15.0,
        max_lifetime: float = 90.0,
    ) -> NodeProc:
        stderr_path = stderr_dir / f"{name}.stderr"
        argv = [*prefix, sys.executable, "-u", HELPER, "--max-lifetime", str(max_lifetime)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(stderr_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=str(REPO),
                env=env,
                limit=1 << 24,
            )
        node = cls(proc, name, stderr_path)
        try:
            hello = await asyncio.wait_for(asyncio.shield(node._hello), timeout)
        except BaseException as e:
            await node.close()
            raise NodeError(f"node {name} did not start within {timeout}s ({e!r}); stderr:\n{node.stderr()}") from None
        if hello.get("pid") != proc.pid:
            await node.close()
            raise NodeError(f"node {name}: pid {hello.get('pid')} is not the spawned pid {proc.pid}")
        return node

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("event") == "hello":
                    if not self._hello.done():
                        self._hello.set_result(msg)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        finally:
            gone = NodeError(f"node {self.name} exited (rc={self.proc.returncode}); stderr:\n{self.stderr()}")
            if not self._hello.done():
                self._hello.set_exception(gone)
                self._hello.exception()  # mark retrieved
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(gone)
            self._pending.clear()

    async def call(self, cmd: str, timeout: float = 15.0, **args: Any) -> Any:
        """Run a command in the node; its result, or NodeError."""
        if self.proc.stdin is None or self.proc.returncode is not None:
            raise NodeError(f"node {self.name} is not running; stderr:\n{self.stderr()}")
        mid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        self.proc.stdin.write((json.dumps({"id": mid, "cmd": cmd, **args}) + "\n").encode())
        try:
            await self.proc.stdin.drain()
            msg = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise NodeError(f"node {self.name}: {cmd} {args} got no answer within {timeout}s") from None
        except (BrokenPipeError, ConnectionResetError):
            raise NodeError(f"node {self.name} is gone; stderr:\n{self.stderr()}") from None
        finally:
            self._pending.pop(mid, None)
        if not msg.get("ok"):
            raise NodeError(f"node {self.name}: {cmd} {args} failed: {msg.get('error')}")
        return msg.get("result")

    def sigkill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def close(self, timeout: float = 6.0) -> None:
        """Ask the node to quit (it says goodbye), kill it if it does not exit in time."""
        try:
            if self.proc.returncode is None and self.proc.stdin is not None:
                try:
                    self.proc.stdin.write(b'{"id": 0, "cmd": "quit"}\n')
                    await self.proc.stdin.drain()
                    self.proc.stdin.close()
                except (BrokenPipeError, ConnectionResetError, RuntimeError):
                    pass
                try:
                    await asyncio.wait_for(self.proc.wait(), timeout)
                except TimeoutError:
                    pass
        finally:
            if self.proc.returncode is None:
                try:
                    self.proc.kill()
                except ProcessLookupError:
                    pass
                try:
                    await asyncio.wait_for(self.proc.wait(), 5)
                except TimeoutError:
                    pass
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
