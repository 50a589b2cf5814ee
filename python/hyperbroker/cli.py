"""The ``hyperbroker`` command.

    hyperbroker demo                      publish and subscribe in one process
    hyperbroker sub TOPIC [--queue Q]     print every message of TOPIC
    hyperbroker pub TOPIC [MESSAGE ...]   publish to TOPIC's subscribers
    hyperbroker browse [--watch]          list the subscriptions visible in the registry
    hyperbroker stats ADDRESS [--watch]   per-topic rates, backlog and errors of a running broker
                                          (its GET /metrics; needs Broker(metrics=True) there)

Every command takes --registry URL: mdns:// (the default), memory://, or
etcd://host:port[,host:port...][?prefix=...&timeout=...]; without it $HYPERBROKER_REGISTRY
is used when set. The words mdns, memory and etcd work too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from .broker import Broker
from .errors import BrokerError
from .message import Event, Message
from .registry.base import BROADCAST_VERSION, Registry, Service, topic_of
from .registry.memory import MemoryRegistry
from .registry.url import ENV_VAR, from_url, parse_url

__all__ = ["main"]


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional on some platforms
        return asyncio.run(coro)
    return uvloop.run(coro)


def _registry_url(args: argparse.Namespace) -> str:
    """--registry, else $HYPERBROKER_REGISTRY, else mdns:// (with --interfaces for mDNS).
    Brokers are given the URL, so they own and close the registry made of it."""
    url: str = args.registry or os.environ.get(ENV_VAR, "").strip() or "mdns://"
    spec = parse_url(url)
    if spec.kind == "mdns" and args.interfaces and "interfaces" not in spec.kwargs:
        url = f"mdns://?interfaces={args.interfaces}"
    return url


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover
            pass


async def _demo(count: int, interval: float, topic: str, registry_url: str = "memory://") -> int:
    """go-micro's HTTP broker example: one publisher, one subscriber, in one process (sharing one
    MemoryRegistry, or each with its own registry of ``registry_url``)."""
    registry: Registry | str = MemoryRegistry() if parse_url(registry_url).kind == "memory" else registry_url
    done = asyncio.Event()
    received = 0

    def on_message(ev: Event) -> None:
        nonlocal received
        received += 1
        print(f"[sub] received message: {ev.message.body.decode()} header {ev.message.header}", flush=True)
        if received == count:
            done.set()

    async with (
        Broker(address="127.0.0.1:0", registry=registry) as sub_broker,
        Broker(address="127.0.0.1:0", registry=registry) as pub_broker,
    ):
        await sub_broker.subscribe(topic, on_message)
        for i in range(count):
            msg = Message(header={"id": str(i)}, body=f"{i}: hello from hyperbroker".encode())
            await pub_broker.publish(topic, msg)
            print(f"[pub] pubbed message: {msg.body.decode()}", flush=True)
            if interval:
                await asyncio.sleep(interval)
        await asyncio.wait_for(done.wait(), 10)
        # every message was handled; wait for the acknowledgements before reading the counters
        # (messages published before the route was known went through the backlog)
        await pub_broker.flush(timeout=10)
        st = pub_broker.stats()
        print(
            f"[demo] {received}/{count} delivered; publisher stats: delivered={st['delivered']} "
            f"dropped={st['dropped']} backlogged={st['backlogged']}",
            flush=True,
        )
    return 0 if received == count else 1


async def _sub(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    await _until_signal(stop)
    received = 0

    def on_message(ev: Event) -> None:
        nonlocal received
        received += 1
        print(
            f"[sub] received message: {ev.message.body.decode(errors='replace')} header {ev.message.header}", flush=True
        )
        if args.count and received >= args.count:
            stop.set()

    async with Broker(address=args.address, registry=_registry_url(args), advertise=args.advertise) as broker:
        sub = await broker.subscribe(args.topic, on_message, queue=args.queue)
        print(f"[sub] subscribed to {args.topic!r} as {sub.id} at {broker.advertised_address}", flush=True)
        if args.timeout:
            try:
                await asyncio.wait_for(stop.wait(), args.timeout)
            except TimeoutError:
                pass
        else:
            await stop.wait()
        # SIGTERM / SIGINT / done: leave gracefully, letting the running handler finish and
        # publishers hand what was queued for us to another subscriber or their backlog
        print(f"[sub] draining {sub.id}", flush=True)
        await broker.drain(timeout=args.drain_timeout)
    return 0


async def _pub(args: argparse.Namespace) -> int:
    header = {}
    for h in args.header or []:
        k, sep, v = h.partition("=")
        if not sep:
            raise SystemExit(f"--header wants key=value, got {h!r}")
        header[k] = v
    messages = args.message or [f"message {i}" for i in range(args.count)]
    async with Broker(address=args.address, registry=_registry_url(args)) as broker:
        try:
            n = await broker.wait_for_route(args.topic, timeout=args.wait)
            print(f"[pub] {n} subscriber node(s) of {args.topic!r} found", flush=True)
        except BrokerError as e:
            print(f"[pub] {e}; messages wait in the backlog until one appears", flush=True)
        for i, text in enumerate(messages):
            await broker.publish(args.topic, Message(header={**header, "id": str(i)}, body=text.encode()))
            print(f"[pub] pubbed message: {text}", flush=True)
            if args.interval:
                await asyncio.sleep(args.interval)
        await broker.flush(timeout=args.flush_timeout)
        st = broker.stats()
        print(f"[pub] delivered={st['delivered']} backlog={st['backlog']} dropped={st['dropped']}", flush=True)
        return 0 if st["backlog"] == 0 else 3


def _row(s: Service) -> list[tuple[str, str, str, str, str]]:
    topic = topic_of(s.name) or s.name
    queue = "" if s.version == BROADCAST_VERSION else s.version
    return [(topic, queue or "(broadcast)", n.id, n.address, n.metadata.get("secure", "false")) for n in s.nodes]


async def _browse(args: argparse.Namespace) -> int:
    registry = from_url(_registry_url(args))
    try:
        watcher = registry.watch()  # starts discovery; answers arrive over the next moment
        await asyncio.sleep(args.wait)
        services = await registry.list_services()
        rows = [r for s in services for r in _row(s)]
        print(f"{'TOPIC':30} {'QUEUE':20} {'NODE':36} {'ADDRESS':22} SECURE")
        for r in sorted(rows):
            print(f"{r[0]:30} {r[1]:20} {r[2]:36} {r[3]:22} {r[4]}", flush=True)
        if not args.watch:
            watcher.stop()
            return 0
        stop = asyncio.Event()
        await _until_signal(stop)

        async def printer() -> None:
            async for ev in watcher:
                for r in _row(ev.service) or [(topic_of(ev.service.name) or ev.service.name, "", "", "", "")]:
                    print(f"{ev.action:7} {r[0]:30} {r[1]:20} {r[2]:36} {r[3]:22} {r[4]}", flush=True)

        task = asyncio.create_task(printer())
        try:
            if args.timeout:
                await asyncio.wait_for(stop.wait(), args.timeout)
            else:
                await stop.wait()
        except TimeoutError:
            pass
        watcher.stop()
        task.cancel()
        return 0
    finally:
        await registry.close()


_STATS_COLUMNS = ("published", "delivered", "received", "retried", "handler_errors", "dropped")


def _scrape(url: str, token: str | None, timeout: float) -> dict[str, dict[str, float]]:
    """Per-topic values of one ``/metrics`` page: counters (for rates) and gauges."""
    import urllib.error
    import urllib.request

    from .metrics import parse

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as e:
        raise BrokerError(f"{url} answered {e.code}: {e.read().decode(errors='replace').strip()}") from None
    except (urllib.error.URLError, OSError) as e:
        raise BrokerError(f"cannot read {url}: {getattr(e, 'reason', e)}") from None
    topics: dict[str, dict[str, float]] = {}
    for fam in parse(text):
        name = fam.name.removeprefix("hyperbroker_")
        for sm in fam.samples:
            topic = sm.labels.get("topic")
            if topic is None or sm.name.endswith(("_bucket", "_sum", "_count", "_created")):
                continue
            row = topics.setdefault(topic, {})
            key = {
                "published_messages": "published",
                "delivered_messages": "delivered",
                "received_messages": "received",
                "retried_messages": "retried",
                "handler_errors": "handler_errors",
                "dropped_messages": "dropped",
                "backlog_messages": "backlog",
                "route_nodes": "nodes",
            }.get(name)
            if key is not None:
                row[key] = row.get(key, 0.0) + sm.value
    return topics


def _stats_table(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], dt: float) -> str:
    head = f"{'TOPIC':30} {'PUB/s':>9} {'DELIV/s':>9} {'RECV/s':>9} {'RETRY/s':>9} {'ERR/s':>8} {'DROP/s':>8} {'BACKLOG':>8} {'NODES':>6} {'ERRORS':>8}"
    lines = [head]
    for topic in sorted(after):
        a, b = after[topic], before.get(topic, {})
        rates = [max(a.get(c, 0.0) - b.get(c, 0.0), 0.0) / dt if dt > 0 else 0.0 for c in _STATS_COLUMNS]
        lines.append(
            f"{topic[:30]:30} {rates[0]:9.1f} {rates[1]:9.1f} {rates[2]:9.1f} {rates[3]:9.1f} {rates[4]:8.1f} {rates[5]:8.1f}"
            f" {int(a.get('backlog', 0)):8d} {int(a.get('nodes', 0)):6d} {int(a.get('handler_errors', 0)):8d}"
        )
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    """Scrape ADDRESS/metrics every --interval seconds; print a table of rates per topic."""
    import time

    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        print("hyperbroker stats needs prometheus_client: pip install 'hyperbroker[metrics]'", file=sys.stderr)
        return 2
    addr = args.address
    url = addr if "://" in addr else f"http://{addr}"
    url = url.rstrip("/") + ("" if url.endswith("/metrics") else "/metrics")
    count = args.count or (0 if args.watch else 1)
    before = _scrape(url, args.token, args.interval + 5)
    t0 = time.monotonic()
    shown = 0
    while not count or shown < count:
        time.sleep(args.interval)
        after = _scrape(url, args.token, args.interval + 5)
        t1 = time.monotonic()
        table = _stats_table(before, after, t1 - t0)
        if args.watch:
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: refreshed in place
        print(f"{url}  (rates over {t1 - t0:.1f}s)", flush=True)
        print(table, flush=True)
        before, t0 = after, t1
        shown += 1
    return 0


def _registry_arg(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument(
        "--registry",
        metavar="URL",
        default=default,
        type=_checked_url,
        help="mdns://, memory:// or etcd://host:port[,host:port...][?prefix=...&timeout=...] "
        f"(default: {default or '$' + ENV_VAR + ' or mdns://'})",
    )


def _checked_url(value: str) -> str:
    try:
        parse_url(value)
    except BrokerError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def _net_args(p: argparse.ArgumentParser) -> None:
    _registry_arg(p)
    p.add_argument("--interfaces", default=None, help="comma-separated addresses zeroconf binds (default: all)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hyperbroker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cmds = parser.add_subparsers(dest="cmd", required=True)
    demo = cmds.add_parser("demo", help="publish and subscribe in one process (in-memory registry)")
    demo.add_argument("--count", type=int, default=10)
    demo.add_argument("--interval", type=float, default=0.1, help="seconds between messages")
    demo.add_argument("--topic", default="go.micro.topic.foo")
    _registry_arg(demo, "memory://")

    sub = cmds.add_parser("sub", help="subscribe and print messages")
    sub.add_argument("topic")
    sub.add_argument("--queue", default=None)
    sub.add_argument("--address", default=":0")
    sub.add_argument("--advertise", default=None, help="host or host:port to announce instead of the bound one")
    sub.add_argument("--count", type=int, default=0, help="exit after this many messages")
    sub.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")
    sub.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to drain on exit (SIGTERM, SIGINT)")
    _net_args(sub)

    pub = cmds.add_parser("pub", help="publish messages")
    pub.add_argument("topic")
    pub.add_argument("message", nargs="*")
    pub.add_argument("--count", type=int, default=10, help="messages to send when none are given")
    pub.add_argument("--interval", type=float, default=0.0)
    pub.add_argument("--header", action="append", help="key=value, repeatable")
    pub.add_argument("--address", default=":0")
    pub.add_argument("--wait", type=float, default=5.0, help="seconds to wait for a subscriber first")
    pub.add_argument("--flush-timeout", type=float, default=10.0)
    _net_args(pub)

    browse = cmds.add_parser("browse", help="list subscriptions visible on the network")
    browse.add_argument("--watch", action="store_true", help="keep printing changes")
    browse.add_argument("--timeout", type=float, default=0, help="with --watch: exit after this many seconds")
    browse.add_argument("--wait", type=float, default=1.5, help="seconds to listen before listing")
    _net_args(browse)

    stats = cmds.add_parser("stats", help="per-topic rates of a running broker (reads its /metrics)")
    stats.add_argument("address", help="host:port of the broker's endpoint, or its http(s):// URL")
    stats.add_argument("--watch", action="store_true", help="refresh the table in place")
    stats.add_argument("--token", default=None, help="bearer token, when the broker has auth_token set")
    stats.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (the rate window)")
    stats.add_argument("--count", type=int, default=0, help="tables to print, then exit (default: 1, --watch: forever)")

    args = parser.parse_args(argv)
    try:
        if args.cmd == "demo":
            return _run(_demo(args.count, args.interval, args.topic, args.registry))
        if args.cmd == "sub":
            return _run(_sub(args))
        if args.cmd == "pub":
            return _run(_pub(args))
        if args.cmd == "browse":
            return _run(_browse(args))
        if args.cmd == "stats":
            try:
                return _stats(args)
            except KeyboardInterrupt:
                return 0
    except BrokerError as e:
        print(f"hyperbroker: {e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.cmd}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
