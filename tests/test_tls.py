"""TLS between brokers (issue 6): ``secure=True`` (self-signed, unverified, go-micro style),
real CAs with ``TLSConfig(verify=True)``, mutual TLS (``client_auth=True``) and bad configuration.

Every broker listens on 127.0.0.1 and shares one :class:`MemoryRegistry` per test. Certificates
are generated per module with ``cryptography`` (``certs_util``). ``curl`` plays the foreign client.
Every wait is bounded; counts and statuses are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from brokers import MakeBroker, Sink, assert_counters, deliver_numbered, envelope, pick, publish_each, until
from certs_util import CA, Leaf, make_ca

from hyperbroker import Broker, BrokerError, MemoryRegistry, Subscriber, TLSConfig

pytestmark = pytest.mark.timeout(60)

TOPIC = "tls.orders"


# --- helpers ------------------------------------------------------------------------------------


async def curl(*args: str, timeout: float = 10.0) -> tuple[int, str, str, str]:
    """Run curl; returns (exit code, HTTP status as text, response body, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--max-time",
        "5",
        "-o",
        "-",
        "-w",
        "\n@@%{http_code}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    body, _, code = text.rpartition("\n@@")
    return proc.returncode or 0, code, body, err.decode(errors="replace")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d: Path = tmp_path_factory.mktemp("pki")
    ca_a: CA = make_ca(d, "ca-a")
    ca_b: CA = make_ca(d, "ca-b")
    return {
        "dir": d,
        "ca_a": ca_a,
        "ca_b": ca_b,
        "srv_a": ca_a.issue(d, "server-a"),
        "srv_a2": ca_a.issue(d, "server-a2"),
        "pub_a": ca_a.issue(d, "publisher-a"),
        "cli_a": ca_a.issue(d, "client-a"),
        "srv_b": ca_b.issue(d, "server-b"),
        "cli_b": ca_b.issue(d, "client-b"),
    }


# --- secure=True (self-signed, go-micro's Secure) -------------------------------------------------


async def test_secure_delivers_1000_in_order_over_https(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    sub_b = await make_broker(secure=True)
    pub_b = await make_broker(secure=True)
    sink = Sink()
    sub = await sub_b.subscribe(TOPIC, sink)
    services = await registry.get_service(f"topic:{TOPIC}")
    assert [n.metadata["secure"] for s in services for n in s.nodes] == ["true"]
    assert sub_b.secure is True
    assert await pub_b.wait_for_route(TOPIC, timeout=5) == 1

    expected = await deliver_numbered(pub_b, TOPIC, sink, 1000, timeout=15)

    assert sink.bodies == expected
    ps = pub_b.stats()
    assert_counters(ps, published=1000, delivered=1000, failed=0, dropped=0, in_flight=0, backlog=0)
    ss = sub_b.stats()
    assert ss["received"] == 1000
    assert ss["tls_handshake_failures"] == 0
    assert sub.id in {n.id for s in services for n in s.nodes}


async def test_secure_endpoint_serves_https_to_curl_and_refuses_plain_http(
    make_broker: MakeBroker, registry: MemoryRegistry
) -> None:
    sub_b = await make_broker(secure=True)
    sink = Sink()
    sub = await sub_b.subscribe(TOPIC, sink)
    url = f"https://{sub_b.address}/_sub?id={sub.id}"

    rc, code, _body, err = await curl(
        "-k", "-X", "POST", url, "-H", "Content-Type: application/json", "-d", envelope(TOPIC, b"via-curl").decode()
    )
    assert (rc, code) == (0, "200"), err
    assert sink.bodies == [b"via-curl"]

    # without -k curl must refuse the self-signed certificate (it really is TLS, and unverifiable)
    rc, code, _, err = await curl("-X", "POST", url, "-d", envelope(TOPIC, b"unverified").decode())
    assert rc == 60 and code == "000", (rc, code, err)

    # plain HTTP to the HTTPS port: no HTTP response, the handler does not run
    rc, code, _, err = await curl(
        "-X",
        "POST",
        url.replace("https://", "http://"),
        "-H",
        "Content-Type: application/json",
        "-d",
        envelope(TOPIC, b"plain").decode(),
    )
    assert rc != 0 and code == "000", (rc, code, err)
    assert sink.bodies == [b"via-curl"]
    # the refused unverified curl and the plain-HTTP request are the two failed handshakes
    await until(lambda: sub_b.stats()["tls_handshake_failures"] == 2, 3, "2 handshake failures counted")

    # and the endpoint keeps serving
    rc, code, _, err = await curl("-k", "-X", "POST", url, "-d", envelope(TOPIC, b"after").decode())
    assert (rc, code) == (0, "200"), err
    assert sink.bodies == [b"via-curl", b"after"]
    assert sub_b.stats()["received"] == 2

    # registry metadata: this node is secure, a plain broker's node is not
    plain_b = await make_broker()
    await plain_b.subscribe(TOPIC, Sink())
    meta = {n.address: n.metadata["secure"] for s in await registry.get_service(f"topic:{TOPIC}") for n in s.nodes}
    assert meta == {sub_b.address: "true", plain_b.address: "false"}


# --- real CA, verify=True ---------------------------------------------------------------------------


async def test_ca_verified_delivery(make_broker: MakeBroker, pki: dict[str, Any]) -> None:
    ca: CA = pki["ca_a"]
    srv: Leaf = pki["srv_a"]
    pub_leaf: Leaf = pki["pub_a"]
    sub_b = await make_broker(tls=TLSConfig(cert_file=srv.cert, key_file=srv.key, ca_file=ca.cert, verify=True))
    # one publisher that only verifies (no certificate of its own) and one with its own identity
    pub_verify = await make_broker(tls=TLSConfig(ca_file=ca.cert, verify=True))
    pub_full = await make_broker(
        tls=TLSConfig(cert_file=pub_leaf.cert, key_file=pub_leaf.key, ca_file=ca.cert, verify=True)
    )
    sink = Sink()
    await sub_b.subscribe(TOPIC, sink)
    await pub_verify.wait_for_route(TOPIC, 5)
    await pub_full.wait_for_route(TOPIC, 5)

    first = [f"v-{i}".encode() for i in range(300)]
    await publish_each(pub_verify, TOPIC, first)
    second = [f"f-{i}".encode() for i in range(300)]
    await publish_each(pub_full, TOPIC, second)
    await until(lambda: len(sink.bodies) >= 600, 5, "600 handled")

    assert sink.bodies == first + second
    for p in (pub_verify, pub_full):
        st = p.stats()
        assert_counters(st, delivered=300, failed=0, dropped=0, evicted=0, backlog=0)
        assert st["last_error"] is None
    assert sub_b.stats()["tls_handshake_failures"] == 0

    # curl agrees: the server certificate verifies against CA A for 127.0.0.1
    rc, code, _, err = await curl(
        "--cacert", str(ca.cert), "-X", "POST", f"https://{sub_b.address}/_sub?id=x", "-d", "{}"
    )
    assert (rc, code) == (0, "400"), err  # TLS fine; the envelope is not


async def _wrong_ca_setup(
    make_broker: MakeBroker, pki: dict[str, Any], n: int
) -> tuple[Broker, Broker, Sink, list[bytes]]:
    """A subscriber whose certificate is signed by CA B, a publisher that trusts only CA A."""
    srv_b: Leaf = pki["srv_b"]
    ca_a: CA = pki["ca_a"]
    ca_b: CA = pki["ca_b"]
    sub_b = await make_broker(tls=TLSConfig(cert_file=srv_b.cert, key_file=srv_b.key, ca_file=ca_b.cert, verify=True))
    pub_b = await make_broker(tls=TLSConfig(ca_file=ca_a.cert, verify=True), retry_max=0.2, evict_after=3)
    sink = Sink()
    await sub_b.subscribe(TOPIC, sink)
    await pub_b.wait_for_route(TOPIC, 5)
    bodies = [f"w-{i}".encode() for i in range(n)]
    for body in bodies:
        await pub_b.publish(TOPIC, body)
    await until(lambda: pub_b.stats()["last_error"] is not None, 5, "a delivery error is recorded")
    return sub_b, pub_b, sink, bodies


async def test_wrong_ca_is_reported_and_messages_wait_in_backlog(make_broker: MakeBroker, pki: dict[str, Any]) -> None:
    n = 20
    sub_b, pub_b, sink, _ = await _wrong_ca_setup(make_broker, pki, n)
    err = pub_b.stats()["last_error"]
    assert sub_b.address in err
    assert "invalid peer certificate" in err and "UnknownIssuer" in err, err

    # the node cannot be reached: after evict_after attempts its messages are parked in the
    # backlog and stay there (nothing delivered, nothing dropped) while verification fails
    await asyncio.sleep(1.0)  # evict_after=3 attempts with a 10 ms..200 ms back-off: well past it
    samples = []
    for _ in range(20):
        st = pub_b.stats()
        samples.append(pick(st, "backlog", "in_flight", "delivered", "dropped", "failed"))
        await asyncio.sleep(0.05)
    parked = {"backlog": n, "in_flight": 0, "delivered": 0, "dropped": 0, "failed": 0}
    not_parked = [s for s in samples if s != parked]
    assert not not_parked, f"{len(not_parked)}/{len(samples)} samples not parked, e.g. {not_parked[:2]}"
    assert sink.bodies == []
    assert sub_b.stats()["received"] == 0


async def test_wrong_ca_publisher_backs_off(make_broker: MakeBroker, pki: dict[str, Any]) -> None:
    """With retry_max=0.2 s a peer whose certificate never verifies is tried a few times a second,
    not hammered with a fresh TLS handshake every few milliseconds."""
    sub_b, _pub_b, sink, _ = await _wrong_ca_setup(make_broker, pki, 10)
    await asyncio.sleep(0.5)  # past the first back-off ramp
    h0 = sub_b.stats()["tls_handshake_failures"]
    t0 = time.monotonic()
    await asyncio.sleep(2.0)
    h1 = sub_b.stats()["tls_handshake_failures"]
    rate = (h1 - h0) / (time.monotonic() - t0)
    # retry_max=0.2 s allows ~5 attempts per second; 15/s leaves room for probes and jitter
    assert rate <= 15, f"{rate:.0f} failed TLS handshakes per second against a peer that never verifies"
    assert sink.bodies == []


async def test_wrong_ca_backlog_drains_to_a_subscriber_with_the_right_ca(
    make_broker: MakeBroker, pki: dict[str, Any]
) -> None:
    n = 50
    sub_b, pub_b, sink, bodies = await _wrong_ca_setup(make_broker, pki, n)
    assert "UnknownIssuer" in pub_b.stats()["last_error"]

    # the bad subscriber goes away; nothing is lost: everything waits in the backlog
    await sub_b.disconnect(timeout=0)
    await until(lambda: pub_b.route_count(TOPIC) == 0, 5, "route gone")
    await until(lambda: pub_b.stats()["backlog"] == n, 5, f"backlog == {n}")
    st = pub_b.stats()
    assert_counters(st, delivered=0, dropped=0, failed=0, in_flight=0)

    # it comes back on a new broker with a certificate of the CA the publisher trusts
    ca_a: CA = pki["ca_a"]
    good: Leaf = pki["srv_a2"]
    fixed = await make_broker(tls=TLSConfig(cert_file=good.cert, key_file=good.key, ca_file=ca_a.cert, verify=True))
    sink2 = Sink()
    await fixed.subscribe(TOPIC, sink2)
    await until(lambda: len(sink2.bodies) >= n, 10, f"{n} backlogged messages handled")
    await pub_b.flush(timeout=5)
    assert sink2.bodies == bodies
    assert sink.bodies == []
    st = pub_b.stats()
    assert_counters(st, delivered=n, dropped=0, failed=0, backlog=0, in_flight=0)
    assert fixed.stats()["tls_handshake_failures"] == 0


# --- mutual TLS -------------------------------------------------------------------------------------


async def mtls_subscriber(make_broker: MakeBroker, pki: dict[str, Any]) -> tuple[Broker, Subscriber, Sink]:
    """A broker serving CA A's server certificate that requires client certificates of CA A,
    with one subscription of TOPIC recording into a Sink."""
    ca: CA = pki["ca_a"]
    srv: Leaf = pki["srv_a"]
    sub_b = await make_broker(
        tls=TLSConfig(cert_file=srv.cert, key_file=srv.key, ca_file=ca.cert, verify=True, client_auth=True)
    )
    sink = Sink()
    sub = await sub_b.subscribe(TOPIC, sink)
    return sub_b, sub, sink


async def test_mtls_requires_a_client_certificate_of_the_ca(make_broker: MakeBroker, pki: dict[str, Any]) -> None:
    ca: CA = pki["ca_a"]
    cli: Leaf = pki["cli_a"]
    cli_b: Leaf = pki["cli_b"]
    sub_b, sub, sink = await mtls_subscriber(make_broker, pki)
    url = f"https://{sub_b.address}/_sub?id={sub.id}"

    # curl without a client certificate: the handshake is refused
    rc, code, _, err = await curl(
        "--cacert", str(ca.cert), "-X", "POST", url, "-d", envelope(TOPIC, b"no-cert").decode()
    )
    assert rc != 0 and code == "000", (rc, code, err)
    # a certificate from another CA is refused too
    rc, code, _, err = await curl(
        "--cacert",
        str(ca.cert),
        "--cert",
        str(cli_b.cert),
        "--key",
        str(cli_b.key),
        "-X",
        "POST",
        url,
        "-d",
        envelope(TOPIC, b"other-ca").decode(),
    )
    assert rc != 0 and code == "000", (rc, code, err)
    assert sink.bodies == []
    await until(lambda: sub_b.stats()["tls_handshake_failures"] == 2, 3, "2 handshake failures")

    # with a certificate signed by the CA: 200 and the handler ran
    rc, code, body, err = await curl(
        "--cacert",
        str(ca.cert),
        "--cert",
        str(cli.cert),
        "--key",
        str(cli.key),
        "-X",
        "POST",
        url,
        "-H",
        "Content-Type: application/json",
        "-d",
        envelope(TOPIC, b"with-cert").decode(),
    )
    assert (rc, code) == (0, "200"), (body, err)
    assert sink.bodies == [b"with-cert"]
    assert sub_b.stats()["tls_handshake_failures"] == 2


async def test_mtls_publisher_without_certificate_cannot_deliver(make_broker: MakeBroker, pki: dict[str, Any]) -> None:
    sub_b, _, sink = await mtls_subscriber(make_broker, pki)
    pub_b = await make_broker(retry_max=0.2)  # no TLS configuration: no client certificate
    await pub_b.wait_for_route(TOPIC, 5)
    for i in range(5):
        await pub_b.publish(TOPIC, f"x-{i}".encode())
    await until(lambda: sub_b.stats()["tls_handshake_failures"] >= 3, 5, "refused handshakes")
    await asyncio.sleep(0.5)
    assert sink.bodies == []
    assert sub_b.stats()["received"] == 0
    st = pub_b.stats()
    assert_counters(st, delivered=0, dropped=0, failed=0)
    assert st["last_error"] is not None and sub_b.address in st["last_error"]
    # not lost: the 5 messages are queued for the node or parked in the backlog
    for _ in range(50):
        st = pub_b.stats()
        if st["in_flight"] + st["backlog"] == 5:
            break
        await asyncio.sleep(0.01)
    assert st["in_flight"] + st["backlog"] == 5, pick(st, "in_flight", "backlog")


async def test_mtls_publisher_with_ca_signed_certificate_delivers(make_broker: MakeBroker, pki: dict[str, Any]) -> None:
    ca: CA = pki["ca_a"]
    pub_leaf: Leaf = pki["pub_a"]
    sub_b, _, sink = await mtls_subscriber(make_broker, pki)
    pub_b = await make_broker(
        tls=TLSConfig(cert_file=pub_leaf.cert, key_file=pub_leaf.key, ca_file=ca.cert, verify=True)
    )
    await pub_b.wait_for_route(TOPIC, 5)
    bodies = await deliver_numbered(pub_b, TOPIC, sink, 500)
    assert sink.bodies == bodies
    st = pub_b.stats()
    assert_counters(st, delivered=500, dropped=0, failed=0, retried=0)
    assert st["last_error"] is None
    assert sub_b.stats()["tls_handshake_failures"] == 0


# --- bad configuration ------------------------------------------------------------------------------


def _bad_configs(pki: dict[str, Any]) -> list[tuple[str, Callable[[], Any], str]]:
    d: Path = pki["dir"]
    ca: CA = pki["ca_a"]
    srv: Leaf = pki["srv_a"]
    other: Leaf = pki["cli_a"]
    garbage = d / "garbage.pem"
    garbage.write_text("this is not PEM at all\n")
    corrupt = d / "corrupt.pem"
    corrupt.write_text("-----BEGIN CERTIFICATE-----\nnot*base64*!!\n-----END CERTIFICATE-----\n")
    empty = d / "empty.pem"
    empty.write_bytes(b"")
    missing = d / "does-not-exist.pem"
    return [
        (
            "missing cert file",
            lambda: TLSConfig(cert_file=missing, key_file=srv.key, ca_file=ca.cert),
            r"cannot read the certificate file '.*does-not-exist\.pem': No such file",
        ),
        (
            "missing key file",
            lambda: TLSConfig(cert_file=srv.cert, key_file=missing, ca_file=ca.cert),
            r"cannot read the private key file '.*does-not-exist\.pem': No such file",
        ),
        (
            "missing CA file",
            lambda: TLSConfig(cert_file=srv.cert, key_file=srv.key, ca_file=missing),
            r"cannot read the CA file '.*does-not-exist\.pem': No such file",
        ),
        (
            "missing CA file, verify only",
            lambda: TLSConfig(ca_file=missing, verify=True),
            r"cannot read the CA file '.*does-not-exist\.pem'",
        ),
        (
            "cert without key",
            lambda: TLSConfig(cert_file=srv.cert, ca_file=ca.cert),
            r"needs both cert_file and key_file",
        ),
        (
            "key without cert",
            lambda: TLSConfig(key_file=srv.key, ca_file=ca.cert),
            r"needs both cert_file and key_file",
        ),
        (
            "verify without ca_file",
            lambda: TLSConfig(cert_file=srv.cert, key_file=srv.key, verify=True),
            r"verify=True or client_auth=True needs ca_file",
        ),
        (
            "client_auth without ca_file",
            lambda: TLSConfig(cert_file=srv.cert, key_file=srv.key, verify=False, client_auth=True),
            r"needs ca_file",
        ),
        (
            "client_auth without cert",
            lambda: TLSConfig(ca_file=ca.cert, client_auth=True),
            r"client_auth=True needs cert_file and key_file",
        ),
        (
            "garbage cert PEM",
            lambda: TLSConfig(cert_file=garbage, key_file=srv.key, ca_file=ca.cert),
            r"TLS configuration: the certificate file holds no PEM certificate",
        ),
        (
            "empty cert file",
            lambda: TLSConfig(cert_file=empty, key_file=srv.key, ca_file=ca.cert),
            r"TLS configuration: the certificate file holds no PEM certificate",
        ),
        (
            "corrupt cert PEM",
            lambda: TLSConfig(cert_file=corrupt, key_file=srv.key, ca_file=ca.cert),
            r"TLS configuration: cannot read the certificate PEM",
        ),
        (
            "garbage key PEM",
            lambda: TLSConfig(cert_file=srv.cert, key_file=garbage, ca_file=ca.cert),
            r"TLS configuration: cannot read the private key PEM",
        ),
        (
            "cert as key",
            lambda: TLSConfig(cert_file=srv.cert, key_file=srv.cert, ca_file=ca.cert),
            r"TLS configuration: cannot read the private key PEM",
        ),
        (
            "garbage CA PEM",
            lambda: TLSConfig(cert_file=srv.cert, key_file=srv.key, ca_file=garbage),
            r"TLS configuration: the CA file holds no PEM certificate",
        ),
        (
            "corrupt CA PEM, verify only",
            lambda: TLSConfig(ca_file=corrupt, verify=True),
            r"TLS configuration: cannot read the CA PEM",
        ),
        (
            "key of another certificate",
            lambda: TLSConfig(cert_file=srv.cert, key_file=other.key, ca_file=ca.cert),
            r"TLS configuration: certificate and key do not fit together",
        ),
        ("not a TLSConfig", lambda: {"cert_file": str(srv.cert)}, r"tls must be a TLSConfig, got dict"),
    ]


_BAD_IDS = [
    "missing-cert",
    "missing-key",
    "missing-ca",
    "missing-ca-verify-only",
    "cert-no-key",
    "key-no-cert",
    "verify-no-ca",
    "client-auth-no-ca",
    "client-auth-no-cert",
    "garbage-cert",
    "empty-cert",
    "corrupt-cert",
    "garbage-key",
    "cert-as-key",
    "garbage-ca",
    "corrupt-ca-verify-only",
    "mismatched-key",
    "not-a-tlsconfig",
]


@pytest.mark.parametrize("index", range(len(_BAD_IDS)), ids=_BAD_IDS)
async def test_bad_tls_config_raises_clear_broker_error(
    index: int, pki: dict[str, Any], registry: MemoryRegistry
) -> None:
    what, make_tls, pattern = _bad_configs(pki)[index]
    b: Broker | None = None
    with pytest.raises(BrokerError, match=pattern):
        tls = make_tls()
        b = Broker(address="127.0.0.1:0", registry=registry, tls=tls, disconnect_timeout=0)
        await b.connect()
    if b is not None:
        assert not b.connected, what
        await b.disconnect(timeout=0)
