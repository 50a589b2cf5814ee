"""A subscriber process for the chaos tests and the soak: it records every message it handled.

    python tests/helpers/chaos_node.py --topic T [--queue Q] --out FILE [--interfaces 127.0.0.1]
                                       [--drain-timeout S] [--max-lifetime S] [--handler-delay S]

One Broker (``MdnsRegistry(interfaces=...)``, listening on 127.0.0.1, port 0) with one
subscription. The handler appends the message body (a sequence number) and a newline to
``--out`` with one ``os.write`` before it returns, so a number is on disk before the publisher
can be told it was delivered: after a SIGKILL the file holds everything this process
acknowledged (and maybe a few it handled but never acknowledged: their redelivery elsewhere is
a duplicate, which the tests count).

Stdout carries one JSON line ``{"event": "ready", "pid": ..., "address": ...}`` once the
subscription is registered, and ``{"event": "drained", "received": N}`` after a graceful exit.
SIGTERM / SIGINT leave gracefully like ``hyperbroker sub``: ``broker.drain(--drain-timeout)``.
The process also exits (gracefully) at EOF on stdin (the test died) or after
``--max-lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from hyperbroker import Broker, Event
from hyperbroker.registry.mdns import MdnsRegistry


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # EOF on stdin: the test process is gone, leave too
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def watch_stdin() -> None:
        while await reader.read(4096):
            pass
        stop.set()

    stdin_task = asyncio.create_task(watch_stdin())
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    received = 0
    delay = args.handler_delay

    def record(ev: Event) -> None:
        nonlocal received
        os.write(fd, ev.message.body + b"\n")
        received += 1

    async def slow(ev: Event) -> None:
        await asyncio.sleep(delay)
        record(ev)

    registry = MdnsRegistry(interfaces=args.interfaces.split(","))
    broker = Broker(address="127.0.0.1:0", registry=registry, disconnect_timeout=1.0)
    try:
        await broker.connect()
        await broker.subscribe(args.topic, slow if delay > 0 else record, queue=args.queue or None)
        emit({"event": "ready", "pid": os.getpid(), "address": broker.advertised_address})
        try:
            await asyncio.wait_for(stop.wait(), args.max_lifetime)
        except TimeoutError:
            logging.getLogger("chaos_node").error("max lifetime %ss reached, exiting", args.max_lifetime)
        await broker.drain(timeout=args.drain_timeout)
        emit({"event": "drained", "received": received})
    finally:
        stdin_task.cancel()
        await broker.disconnect(timeout=0)
        await registry.close()
        os.close(fd)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--topic", required=True)
    p.add_argument("--queue", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--interfaces", default="127.0.0.1")
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--max-lifetime", type=float, default=300.0)
    p.add_argument("--handler-delay", type=float, default=0.0, help="seconds each handler sleeps first")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(p.parse_args()))
