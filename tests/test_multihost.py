"""Two "hosts": two network namespaces joined by a veth pair, made by the test and gone after it.

How the hosts are made (works unprivileged inside ``unshare -rn``, where we are root of our own
user namespace but cannot ``ip netns add``, which needs a shared /run/netns mount):

1. host A and host B are each a long-lived helper process started in a new network namespace:
   ``unshare -n sh -c 'ip link set lo up && exec python tests/helpers/mdns_node.py'``
   (``sh`` execs python, so the spawned pid is the namespace's process);
2. the veth pair is created inside A with its peer end put straight into B:
   ``nsenter -t <A> -n ip link add hbA type veth peer name hbB netns <B>``
   (nothing is ever added to the namespace the tests run in);
3. ``nsenter -t <A> -n ip addr add 10.213.0.1/24 dev hbA; ip link set hbA up`` and likewise
   10.213.0.2 on hbB in B; a second process on host B joins B's namespace with
   ``nsenter -t <B> -n python tests/helpers/mdns_node.py``;
4. each helper waits until its interface has carrier, then runs brokers whose MdnsRegistry is
   bound to its veth address only (10.213.0.x exists only inside these two namespaces).

When the helpers exit, the namespaces die and the veth pair with them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).with_name("helpers")))
from hb_nodeclient import NEW_NETNS, NodeError, NodeProc

pytestmark = pytest.mark.timeout(60)

A_IP = "10.213.0.1"
B_IP = "10.213.0.2"
SEEN_WITHIN = 8.0
GONE_WITHIN = 2.0
FAST = {"retry_min": 0.01, "retry_max": 0.5}


def _probe() -> str | None:
    """None when namespaces with a veth pair can be made here, else why not."""
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        r = subprocess.run(
            ["unshare", "-n", "sh", "-c", "ip link add hbP type veth peer name hbQ && ip link del hbP"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run unshare: {e}"
    if r.returncode != 0:
        return (
            "cannot create a network namespace with a veth pair here (run the suite as "
            f"`unshare -rn sh -c 'ip link set lo up && python -m pytest'`): {r.stderr.strip()}"
        )
    return None


_WHY_NOT = _probe()
if _WHY_NOT is not None:
    pytest.skip(_WHY_NOT, allow_module_level=True)


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")


@dataclass
class Hosts:
    a: NodeProc  # host A (10.213.0.1)
    b: NodeProc  # host B (10.213.0.2)
    b2: NodeProc  # a second process on host B


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Hosts]:
    started: list[NodeProc] = []
    try:
        a, b = await asyncio.gather(
            NodeProc.start("hostA", tmp_path, prefix=NEW_NETNS), NodeProc.start("hostB", tmp_path, prefix=NEW_NETNS)
        )
        started += [a, b]
        _run(
            "nsenter",
            "-t",
            str(a.pid),
            "-n",
            "ip",
            "link",
            "add",
            "hbA",
            "type",
            "veth",
            "peer",
            "name",
            "hbB",
            "netns",
            str(b.pid),
        )
        _run("nsenter", "-t", str(a.pid), "-n", "ip", "addr", "add", f"{A_IP}/24", "dev", "hbA")
        _run("nsenter", "-t", str(b.pid), "-n", "ip", "addr", "add", f"{B_IP}/24", "dev", "hbB")
        _run("nsenter", "-t", str(a.pid), "-n", "ip", "link", "set", "hbA", "up")
        _run("nsenter", "-t", str(b.pid), "-n", "ip", "link", "set", "hbB", "up")
        b2 = await NodeProc.start("hostB2", tmp_path, prefix=["nsenter", "-t", str(b.pid), "-n"])
        started.append(b2)
        await asyncio.gather(
            a.call("wait_iface", addr=A_IP, timeout=10),
            b.call("wait_iface", addr=B_IP, timeout=10),
            b2.call("wait_iface", addr=B_IP, timeout=10),
        )
        yield Hosts(a, b, b2)
    finally:
        await asyncio.gather(*(n.close() for n in reversed(started)), return_exceptions=True)


async def broker(node: NodeProc, name: str, ip: str, **options: object) -> str:
    res = await node.call("broker", name=name, address=f"{ip}:0", interfaces=[ip], options=options)
    return str(res["address"])


def topic() -> str:
    return f"mh.{uuid.uuid4().hex[:12]}"


async def test_hosts_are_separate(hosts: Hosts) -> None:
    """Sanity: each host sees only its own address; B's two processes share one namespace."""
    assert (await broker(hosts.a, "x", A_IP)).startswith(f"{A_IP}:")
    with pytest.raises(NodeError):  # A has no 10.213.0.2 to bind
        await broker(hosts.a, "y", B_IP)
    assert (await broker(hosts.b2, "x", B_IP)).startswith(f"{B_IP}:")


async def test_delivery_across_hosts(hosts: Hosts) -> None:
    t = topic()
    await broker(hosts.a, "pub", A_IP, **FAST)
    sub_addr = await broker(hosts.b, "sub", B_IP)
    assert sub_addr.startswith(f"{B_IP}:")
    await hosts.b.call("subscribe", broker="sub", sub="s", topic=t)
    await hosts.a.call("wait_routes", broker="pub", topic=t, count=1, timeout=SEEN_WITHIN)
    bodies = [f"x-{i:03d}" for i in range(300)]
    await hosts.a.call("publish", broker="pub", topic=t, bodies=bodies)
    await hosts.a.call("flush", broker="pub", timeout=10)
    got = await hosts.b.call("wait_received", sub="s", count=300, timeout=10)
    assert got == bodies
    st = await hosts.a.call("stats", broker="pub")
    assert st["delivered"] == 300 and st["backlog"] == 0 and st["dropped"] == 0, st
    await asyncio.sleep(0.2)
    assert len(await hosts.b.call("received", sub="s")) == 300


async def test_queue_group_across_hosts(hosts: Hosts) -> None:
    """Members: one on host A, two on host B (in two processes); publisher on host A."""
    t = topic()
    q = "workers"
    await asyncio.gather(
        broker(hosts.a, "pub", A_IP, **FAST),
        broker(hosts.a, "member", A_IP),
        broker(hosts.b, "member", B_IP),
        broker(hosts.b2, "member", B_IP),
    )
    members = [hosts.a, hosts.b, hosts.b2]
    await asyncio.gather(*(m.call("subscribe", broker="member", sub="s", topic=t, queue=q) for m in members))
    await hosts.a.call("wait_routes", broker="pub", topic=t, count=3, timeout=SEEN_WITHIN)
    bodies = [f"q-{i:03d}" for i in range(300)]
    await hosts.a.call("publish", broker="pub", topic=t, bodies=bodies)
    await hosts.a.call("flush", broker="pub", timeout=10)
    st = await hosts.a.call("stats", broker="pub")
    assert st["delivered"] == 300 and st["backlog"] == 0 and st["dropped"] == 0, st
    await asyncio.sleep(0.3)
    got = [await m.call("received", sub="s") for m in members]
    everything = sorted(x for g in got for x in g)
    assert everything == bodies, f"counts per member {[len(g) for g in got]}"  # each exactly once
    assert all(g for g in got), f"every member gets some: {[len(g) for g in got]}"
    for g in got:  # each member sees its share in publish order
        assert g == sorted(g)


async def test_goodbye_across_hosts(hosts: Hosts) -> None:
    t = topic()
    await broker(hosts.a, "pub", A_IP, **FAST)
    await broker(hosts.b, "sub", B_IP)
    await hosts.b.call("subscribe", broker="sub", sub="s", topic=t)
    await hosts.a.call("wait_routes", broker="pub", topic=t, count=1, timeout=SEEN_WITHIN)
    await hosts.a.call("publish", broker="pub", topic=t, bodies=["before"])
    assert await hosts.b.call("wait_received", sub="s", count=1, timeout=5) == ["before"]

    t0 = time.monotonic()
    await hosts.b.call("unsubscribe", sub="s")
    await hosts.a.call("wait_routes", broker="pub", topic=t, count=0, timeout=GONE_WITHIN - (time.monotonic() - t0))
    assert time.monotonic() - t0 <= GONE_WITHIN + 0.1  # the answer's own transit

    await hosts.a.call("publish", broker="pub", topic=t, bodies=["a", "b", "c"])
    await hosts.a.call("flush", broker="pub", timeout=5)
    st = await hosts.a.call("stats", broker="pub")
    assert st["backlog"] == 3 and st["delivered"] == 1, st
    assert await hosts.b.call("received", sub="s") == ["before"]
