"""Small process helpers shared by the benchmarks.

Imported as a top-level module (``import _procs``): pytest's rootdir conftest puts ``benches/``
on ``sys.path``. Everything here is bounded in time and only ever touches 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import multiprocessing.context
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from multiprocessing.connection import Connection
from typing import Any, TypeVar

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]

__all__ = [
    "LOCALHOST",
    "child_reporting",
    "free_port",
    "new_runner",
    "recv_with_timeout",
    "run_child",
    "run_on_own_loop",
    "spawn_ctx",
    "stop_process",
]

T = TypeVar("T")

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port on ``host`` that was free a moment ago (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


def spawn_ctx() -> multiprocessing.context.SpawnContext:
    """The ``spawn`` multiprocessing context (no fork: safe with threads, tokio and event loops)."""
    return multiprocessing.get_context("spawn")


def recv_with_timeout(
    conn: Connection,
    timeout: float,
    what: str = "a message",
    proc: multiprocessing.process.BaseProcess | None = None,
) -> Any:
    """Receive one object from a Pipe end, waiting at most ``timeout`` seconds.

    Raises :class:`TimeoutError` if nothing arrived in time and :class:`RuntimeError` if the
    other end was closed (typically: the child process died). ``proc``, if given, is named in
    the error together with its exit code, and a dead child is noticed without waiting for the
    whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what} from {_describe(proc)}")
        try:
            # Poll in short slices so a dead child is noticed quickly.
            if conn.poll(min(remaining, 0.25)):
                return conn.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"pipe closed while waiting for {what} from {_describe(proc)}: {e!r}") from e
        if proc is not None and not proc.is_alive():
            # One last non-blocking look: the child may have sent and exited.
            try:
                if conn.poll(0):
                    return conn.recv()
            except (EOFError, OSError):
                pass
            raise RuntimeError(f"{_describe(proc)} exited (exit code {proc.exitcode}) before sending {what}")


def stop_process(proc: multiprocessing.process.BaseProcess, timeout: float = 5.0) -> int | None:
    """Join ``proc``; if it does not exit within ``timeout`` s, terminate it, then kill it.

    Only ever signals this one process object. Returns its exit code (None if it could not be
    reaped, which should not happen).
    """
    if proc.pid is None:  # never started
        return None
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(2.0)
    if proc.is_alive():
        proc.kill()
        proc.join(2.0)
    return proc.exitcode


def _describe(proc: multiprocessing.process.BaseProcess | None) -> str:
    if proc is None:
        return "the other end of the pipe"
    return f"process {proc.name!r} (pid {proc.pid})"


def new_runner(use_uvloop: bool = True) -> asyncio.Runner:
    """An asyncio Runner on uvloop when it is installed (and wanted)."""
    if use_uvloop and uvloop is not None:
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


def run_on_own_loop(make_coro: Callable[[], Awaitable[T]], use_uvloop: bool = True) -> T:
    """Run a coroutine on a fresh event loop; from a thread that already runs a loop, do it in a
    helper thread so callers (pytest-benchmark tests, notebooks) never have to care."""

    def run() -> T:
        with new_runner(use_uvloop) as runner:
            return runner.run(make_coro())  # type: ignore[arg-type]

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bench-loop") as ex:
        return ex.submit(run).result()


@contextlib.contextmanager
def child_reporting(conn: Connection) -> Iterator[None]:
    """Around the body of a spawned benchmark process: if it fails, send ``("error", repr)`` to
    the parent first; always close the pipe end."""
    try:
        yield
    except BaseException as e:
        try:
            conn.send(("error", repr(e)))
        except Exception:
            pass
        raise
    finally:
        conn.close()


def run_child(conn: Connection, coro: Coroutine[Any, Any, Any]) -> None:
    """Body of a spawned benchmark process: run ``coro`` on its own (uv)loop, reporting a
    failure to the parent (:func:`child_reporting`)."""
    with child_reporting(conn), new_runner() as runner:
        runner.run(coro)
