"""The ``hyperbroker`` command: ``demo`` (publish/subscribe in one process), ``sub``, ``pub``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .broker import Broker
from .message import Event, Message
from .registry.memory import MemoryRegistry

__all__ = ["main"]


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _demo(count: int, interval: float, topic: str) -> int:
    """go-micro's HTTP broker example: one publisher, one subscriber, in one process."""
    registry = MemoryRegistry()
    done = asyncio.Event()
    received = 0

    def on_message(ev: Event) -> None:
        nonlocal received
        received += 1
        print(f"[sub] received message: {ev.message.body.decode()} header {ev.message.header}", flush=True)
        if received == count:
            done.set()

    async with Broker(address="127.0.0.1:0", registry=registry) as sub_broker, Broker(
        address="127.0.0.1:0", registry=registry
    ) as pub_broker:
        await sub_broker.subscribe(topic, on_message)
        for i in range(count):
            msg = Message(header={"id": str(i)}, body=f"{i}: hello from hyperbroker".encode())
            await pub_broker.publish(topic, msg)
            print(f"[pub] pubbed message: {msg.body.decode()}", flush=True)
            if interval:
                await asyncio.sleep(interval)
        await pub_broker.flush(timeout=10)
        await asyncio.wait_for(done.wait(), 10)
        st = pub_broker.stats()
        print(f"[demo] {received}/{count} delivered; publisher stats: delivered={st['delivered']} "
              f"dropped={st['dropped']} backlogged={st['backlogged']}", flush=True)
    return 0 if received == count else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperbroker", description=__doc__)
    cmds = parser.add_subparsers(dest="cmd", required=True)
    demo = cmds.add_parser("demo", help="publish and subscribe in one process (in-memory registry)")
    demo.add_argument("--count", type=int, default=10)
    demo.add_argument("--interval", type=float, default=0.1, help="seconds between messages")
    demo.add_argument("--topic", default="go.micro.topic.foo")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        return _run(_demo(args.count, args.interval, args.topic))
    parser.error(f"unknown command {args.cmd}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
