"""Every kind of Rust error reaches Python as its documented class (rust/py/errors.rs maps
``crate::error::Error`` in one place), with a message that says what is wrong; and
:class:`FlushTimeoutError` carries what flush saw. Loopback + MemoryRegistry."""

from __future__ import annotations

import asyncio
import pickle
import socket
from collections.abc import Iterator

import pytest
from brokers import MakeBroker

from hyperbroker import (
    BROADCAST_VERSION,
    BrokerError,
    BrokerOptions,
    CodecError,
    FlushTimeoutError,
    MemoryRegistry,
    Node,
    Service,
    _core,
    decode,
)
from hyperbroker._routes import RouteGroup, RouteNode

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def engine() -> Iterator[_core.Engine]:
    e = _core.Engine(BrokerOptions())
    yield e
    e.close()


# --- Error::Codec -> CodecError --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"Header":{":topic":"t","n":3}}', 'invalid envelope Header: value of header "n" is not a string'),
        (b'{"Header":[1]}', "invalid envelope Header: Header is not an object of strings"),
        (b'{"Header":{":topic":"t"},"Body":5}', "invalid envelope Body: Body is not a base64 string"),
        (b"{}", "envelope has no topic: neither a ':topic' nor a 'Micro-Topic' header is set"),
    ],
)
def test_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError) as ei:
        decode(data)
    assert str(ei.value) == message
    assert type(ei.value) is CodecError and isinstance(ei.value, BrokerError)


# --- Error::Tls -> BrokerError ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cert_pem": b"junk", "key_pem": b"junk"}, "the certificate file holds no PEM certificate"),
        ({}, "give both a certificate and a key, or ask for a self-signed one"),
        ({"self_signed_hosts": ["127.0.0.1"], "verify": True}, "verify=True needs a CA certificate (ca_file)"),
        ({"self_signed_hosts": ["127.0.0.1"], "client_auth": True, "ca_pem": b""}, "the CA file holds no PEM"),
    ],
)
def test_bad_tls_material_is_a_readable_broker_error(
    engine: _core.Engine, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(BrokerError) as ei:
        engine.configure_tls(**kwargs)  # type: ignore[arg-type]
    assert type(ei.value) is BrokerError
    assert str(ei.value).startswith("TLS configuration: " + message), str(ei.value)


@pytest.mark.parametrize(
    ("ca_pem", "message"),
    [
        (b"no PEM here\n", "the CA file holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nMIIB\n",
            "cannot read the CA PEM: a PEM section has no end line (-----END CERTIFICATE-----)",
        ),
        (
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            "cannot read the CA PEM: a PEM section is not valid base64",
        ),
    ],
)
def test_bad_ca_for_verification_is_a_readable_broker_error(engine: _core.Engine, ca_pem: bytes, message: str) -> None:
    with pytest.raises(BrokerError) as ei:
        engine.verify_peers(ca_pem)
    assert type(ei.value) is BrokerError
    assert str(ei.value).startswith("TLS configuration: " + message), str(ei.value)


# --- Error::Io -> BrokerError -------------------------------------------------------------------------


def test_port_in_use_is_a_broker_error(engine: _core.Engine) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=rf"^cannot listen on 127\.0\.0\.1:{port}: ") as ei:
            engine.listen("127.0.0.1", port)
    assert type(ei.value) is BrokerError


# --- Error::Node -> BrokerError -----------------------------------------------------------------------


def test_unusable_node_address_is_a_broker_error(engine: _core.Engine) -> None:
    with pytest.raises(BrokerError, match=r'^node "n1" has an unusable address "bad address"') as ei:
        engine.set_routes("t", [RouteGroup(BROADCAST_VERSION, (RouteNode("n1", "bad address"),))])
    assert type(ei.value) is BrokerError


# --- Error::Config -> ValueError ----------------------------------------------------------------------


def test_bad_token_values_are_value_errors(engine: _core.Engine) -> None:
    with pytest.raises(ValueError, match=r"^an auth token must not be empty$"):
        engine.set_accepted_tokens(["ok", ""])
    with pytest.raises(ValueError, match=r"^auth token must be printable ASCII$"):
        engine.set_auth_token("line\nbreak")


def test_unusable_timeout_is_a_value_error(engine: _core.Engine) -> None:
    for bad in (-1.0, float("nan"), 1e19):
        with pytest.raises(ValueError, match="is not a usable duration"):
            engine.flush(1, bad)


# --- Error::Peer (recorded) and FlushTimeoutError ---------------------------------------------------


async def test_unreadable_batch_response_is_recorded_and_flush_reports_it(
    make_broker: MakeBroker, registry: MemoryRegistry
) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="this is not a batch response", content_type="application/json")

    app = web.Application()
    app.router.add_post("/_sub", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        node = Node("hb-garbled", f"127.0.0.1:{port}", {"batch": "1"})
        await registry.register(Service("topic:garbled", BROADCAST_VERSION, (node,)))
        pub = await make_broker(retry_min=0.01, retry_max=0.05, evict_after=1 << 30)
        await pub.wait_for_route("garbled")
        await pub.publish_many("garbled", [b"a", b"b", b"c"])
        with pytest.raises(FlushTimeoutError) as ei:
            await pub.flush(timeout=0.5)
    finally:
        await runner.cleanup()
    e = ei.value
    assert e.pending == 3
    assert e.last_error is not None and e.last_error.startswith(f"127.0.0.1:{port}: bad batch response: ")
    assert "3 deliveries still pending" in str(e) and e.last_error in str(e)
    assert isinstance(e, BrokerError) and isinstance(e, TimeoutError)


async def test_flush_timeout_without_any_error(make_broker: MakeBroker) -> None:
    b = await make_broker()

    async def slow(ev: object) -> None:
        await asyncio.sleep(3)

    await b.subscribe("slow", slow)
    await b.wait_for_route("slow")
    await b.publish("slow", b"x")
    with pytest.raises(FlushTimeoutError) as ei:
        await b.flush(timeout=0.3)
    assert ei.value.pending == 1
    assert ei.value.last_error is None


def test_flush_timeout_error_attributes_survive_pickling() -> None:
    e = FlushTimeoutError("flush timed out", pending=7, last_error="10.0.0.1:80: connection refused")
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.pending, back.last_error) == (str(e), 7, "10.0.0.1:80: connection refused")
    plain = FlushTimeoutError("no details")
    assert (plain.pending, plain.last_error) == (0, None)
