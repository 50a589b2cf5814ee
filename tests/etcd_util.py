"""Real etcd servers for the tests: one member or a loopback cluster, and etcd's JSON gateway.

    server = EtcdServer.single(tmp_path)      # started, healthy, free random ports
    server.stop(); server.start()             # same data dir: keys and leases survive
    server.kill()                             # SIGKILL
    gw_range(server.endpoint, b"/micro/registry/")  # [{key, value, lease}] through POST /v3/kv/range

Members bind 127.0.0.1 only. ``etcd_binary()`` is None when etcd is not installed (Debian:
``apt-get install etcd-server``); the fixtures skip with that reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EtcdServer",
    "etcd_binary",
    "free_port",
    "gw_leases",
    "gw_post",
    "gw_range",
    "start_cluster",
]

#: a fast heartbeat/election for tests (etcd's defaults: 100 ms / 1000 ms)
_HEARTBEAT_MS = 50
_ELECTION_MS = 500


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member on 127.0.0.1 (``initial_cluster`` lists every member of its cluster)."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    initial_cluster: str = ""
    extra_args: list[str] = field(default_factory=list)
    #: serve clients over TLS: (ca, cert, key) PEM files; clients must present a certificate
    tls: tuple[Path, Path, Path] | None = None
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def single(cls, directory: Path, name: str = "solo", tls: tuple[Path, Path, Path] | None = None) -> EtcdServer:
        """A started one-member cluster (healthy when this returns)."""
        s = cls(name, directory / f"etcd-{name}", free_port(), free_port(), tls=tls)
        s.start()
        return s

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        binary = etcd_binary()
        assert binary is not None, "etcd is not installed"
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        return [
            binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "hyperbroker-test",
            "--heartbeat-interval", str(_HEARTBEAT_MS),
            "--election-timeout", str(_ELECTION_MS),
            "--logger", "zap",
            "--log-level", "warn",
            *self.tls_args(),
            *self.extra_args,
        ]  # fmt: skip

    def tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls
        return ["--cert-file", str(cert), "--key-file", str(key), "--client-cert-auth", "--trusted-ca-file", str(ca)]

    def _ssl(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ca, cert, key = self.tls
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def start(self, wait: bool = True) -> None:
        """Start (or restart, on the same data dir) and wait for ``/health`` unless wait=False."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir.parent / f"etcd-{self.name}.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.client_url + "/health", timeout=1, context=self._ssl()) as r:
                    body = json.loads(r.read())
                if body.get("health") == "true":
                    return
                last = body
            except (OSError, ValueError) as e:
                last = e
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} not healthy after {timeout}s ({last!r}): {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (self.data_dir.parent / f"etcd-{self.name}.log").read_text(errors="replace")[-n:]
        return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the member (SIGTERM, then SIGKILL after ``timeout``); the data dir stays."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def start_cluster(directory: Path, size: int = 3) -> list[EtcdServer]:
    """A started ``size``-member cluster on loopback (every member healthy)."""
    members = [EtcdServer(f"m{i}", directory / f"etcd-m{i}", free_port(), free_port()) for i in range(size)]
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for m in members:
        m.initial_cluster = cluster
        m.start(wait=False)
    try:
        for m in members:
            m.wait_healthy(30)
    except BaseException:
        for m in members:
            m.cleanup()
        raise
    return members


# --- etcd's JSON gateway (keys and values are base64) -----------------------------------------


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _prefix_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def gw_post(endpoint: str, path: str, body: dict[str, Any], token: str | None = None) -> dict[str, Any]:
    """POST a JSON request to etcd's gateway (``/v3/...``) and return the decoded answer."""
    req = urllib.request.Request(
        f"http://{endpoint}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    if token is not None:
        req.add_header("Authorization", token)
    with urllib.request.urlopen(req, timeout=5) as r:
        result: dict[str, Any] = json.loads(r.read())
    return result


def gw_range(endpoint: str, prefix: bytes, token: str | None = None) -> list[dict[str, Any]]:
    """Every key under ``prefix`` as ``{"key": bytes, "value": bytes, "lease": int}``."""
    rsp = gw_post(endpoint, "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}, token)
    return [
        {
            "key": base64.b64decode(kv["key"]),
            "value": base64.b64decode(kv.get("value", "")),
            "lease": int(kv.get("lease", 0)),
        }
        for kv in rsp.get("kvs", [])
    ]


def gw_leases(endpoint: str) -> list[int]:
    """The ids of every live lease."""
    rsp = gw_post(endpoint, "/v3/lease/leases", {})
    return [int(item["ID"]) for item in rsp.get("leases", [])]


def gw_lease_ttl(endpoint: str, lease: int) -> dict[str, Any]:
    """``/v3/lease/timetolive`` of one lease, with its keys (base64-decoded)."""
    rsp = gw_post(endpoint, "/v3/lease/timetolive", {"ID": str(lease), "keys": True})
    rsp["keys"] = [base64.b64decode(k) for k in rsp.get("keys", [])]
    return rsp


#: A subscriber process for the tests: ``python -c SUBSCRIBER URL TTL TOPIC[:QUEUE] ...``.
#: Prints ``ready`` once every subscription is registered, then ``msg <topic> <body>`` lines.
SUBSCRIBER = r"""
import asyncio, sys
from hyperbroker import Broker

async def main(url, ttl, specs):
    async with Broker(address="127.0.0.1:0", registry=url, register_ttl=ttl, disconnect_timeout=0) as b:
        for spec in specs:
            topic, _, queue = spec.partition(":")
            def on(ev, topic=topic):
                print("msg", topic, ev.message.body.decode(), flush=True)
            await b.subscribe(topic, on, queue=queue or None)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3:]))
"""
