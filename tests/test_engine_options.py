"""The Python/Rust seam: ``_core.Engine(options)`` reads one validated :class:`BrokerOptions`
(rust/py/conversion.rs), its defaults and range checks living in options.py only, and routes
cross as ``RouteGroup``/``RouteNode`` objects (hyperbroker._routes). Loopback + MemoryRegistry."""

from __future__ import annotations

import asyncio
import dataclasses
import types
from typing import Any

import pytest
from brokers import MakeBroker, Sink, envelope, until

from hyperbroker import BROADCAST_VERSION, BrokerError, BrokerOptions, MemoryRegistry, Node, Service, _core
from hyperbroker._routes import RouteGroup, RouteNode, route_groups

pytestmark = pytest.mark.timeout(30)


def forced(**fields: Any) -> BrokerOptions:
    """A BrokerOptions whose fields were changed behind the validation's back (what a buggy
    caller could hand to the engine): the conversion alone must refuse wrong types."""
    o = BrokerOptions()
    for k, v in fields.items():
        object.__setattr__(o, k, v)
    return o


# --- Engine(options) --------------------------------------------------------------------------


def test_engine_takes_one_options_object_and_no_keyword_defaults() -> None:
    assert _core.Engine.__text_signature__ == "(options)"  # type: ignore[attr-defined]
    e = _core.Engine(BrokerOptions())
    e.close()
    with pytest.raises(TypeError):
        _core.Engine()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        _core.Engine(backlog=5)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "not_options",
    [
        pytest.param({"backlog": 5}, id="dict"),
        pytest.param(None, id="none"),
        # the right attributes are not enough: only a BrokerOptions has been validated
        pytest.param(types.SimpleNamespace(**dataclasses.asdict(BrokerOptions())), id="look-alike"),
    ],
)
def test_engine_refuses_what_is_not_broker_options(not_options: object) -> None:
    with pytest.raises(TypeError, match=r"^Engine needs a hyperbroker\.BrokerOptions, got "):
        _core.Engine(not_options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        pytest.param(
            {"max_body": "4MiB"},
            r"BrokerOptions\.max_body: 'str' object cannot be interpreted as an integer",
            id="str-for-int",
        ),
        pytest.param(
            {"backlog": 1.5},
            r"BrokerOptions\.backlog: 'float' object cannot be interpreted as an integer",
            id="float-for-int",
        ),
        pytest.param(
            {"node_queue": -1},
            r"BrokerOptions\.node_queue: can't convert negative int to unsigned",
            id="negative-for-unsigned",
        ),
        pytest.param(
            {"evict_after": 1 << 40},
            r"BrokerOptions\.evict_after: out of range integral type conversion",
            id="over-u32",
        ),
        pytest.param(
            {"retry_min": "fast"}, r"BrokerOptions\.retry_min: must be real number, not str", id="str-for-seconds"
        ),
        pytest.param(
            {"request_timeout": float("inf")},
            r"BrokerOptions\.request_timeout: inf seconds is not a usable",
            id="infinite-seconds",
        ),
        pytest.param(
            {"header_read_timeout": -2.0},
            r"BrokerOptions\.header_read_timeout: -2 seconds is not a usable duration",
            id="negative-seconds",
        ),
    ],
)
def test_engine_refuses_a_wrong_typed_option_naming_it(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(TypeError, match=match) as ei:
        _core.Engine(forced(**fields))
    assert str(ei.value).startswith("failed to extract field BrokerOptions.")
    assert ei.value.__cause__ is not None  # the original conversion error is kept


@pytest.mark.parametrize(
    "bad",
    [
        {"node_inflight": 257},
        {"evict_after": 1 << 32},
        {"max_body": 1 << 63},
        {"retry_max": float("inf")},
        {"request_timeout": float("nan")},
        {"body_read_timeout": 2e9},
        {"disconnect_timeout": "5"},
    ],
)
def test_range_checks_are_in_options(bad: dict[str, Any]) -> None:
    # what the Rust side could not hold is refused here, with the option's name, not at connect
    with pytest.raises(BrokerError, match=next(iter(bad))):
        BrokerOptions(**bad)


def test_options_have_no_catch_all_field() -> None:
    assert "extra" not in {f.name for f in dataclasses.fields(BrokerOptions)}
    with pytest.raises(BrokerError, match="extra"):
        BrokerOptions().replace(extra={})


# --- the values reach Rust ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class TinyTopics(BrokerOptions):
    """Other defaults, declared in Python only."""

    max_topic: int = 8


def test_defaults_come_from_the_python_class() -> None:
    # the engine enforces whatever the options object says, its class defaults included
    for options, limit in ((BrokerOptions(), 1024), (TinyTopics(), 8), (BrokerOptions(max_topic=3), 3)):
        e = _core.Engine(options)
        try:
            assert e.publish("t" * limit, None, b"x") is False  # no route yet: queued
            with pytest.raises(BrokerError, match=rf"^topic of {limit + 1} bytes is over max_topic={limit}$"):
                e.publish("t" * (limit + 1), None, b"x")
        finally:
            e.close()


async def test_max_body_is_the_endpoint_413_threshold(make_broker: MakeBroker) -> None:
    from aiohttp import ClientSession

    body = envelope("limits", b"x" * 300)
    for max_body, expect in ((len(body), 200), (len(body) - 1, 413)):
        b = await make_broker(max_body=max_body)
        sink = Sink()
        sub = await b.subscribe("limits", sink)
        async with ClientSession() as http, http.post(f"http://{b.address}/_sub?id={sub.id}", data=body) as r:
            text = await r.text()
            assert r.status == expect, (max_body, text)
        if expect == 413:
            assert str(max_body) in text
            assert not sink.ran
        else:
            assert sink.bodies == [b"x" * 300]


async def test_max_topic_reaches_the_endpoint(make_broker: MakeBroker) -> None:
    from aiohttp import ClientSession

    b = await make_broker(max_topic=12)
    sub = await b.subscribe("twelve.bytes", Sink())
    # the subscription's topic fits; a longer one in the envelope is refused before routing
    url = f"http://{b.address}/_sub?id={sub.id}"
    async with ClientSession() as http, http.post(url, data=envelope("thirteen.byte", b"")) as r:
        assert r.status == 400 and "over the limit of 12 bytes" in await r.text()


async def test_evict_after_reaches_the_publisher(make_broker: MakeBroker, registry: MemoryRegistry) -> None:
    # a node that is never listening: evicted after evict_after refused connections, not before
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = Node("hb-nobody", f"127.0.0.1:{port}", {"batch": "1"})
    await registry.register(Service("topic:evict", BROADCAST_VERSION, (node,)))
    never = await make_broker(evict_after=1 << 30, retry_min=0.01, retry_max=0.02)
    soon = await make_broker(evict_after=2, retry_min=0.01, retry_max=0.02)
    for b in (never, soon):
        await b.wait_for_route("evict")
        await b.publish("evict", b"x")
    await until(lambda: soon.stats()["evicted"] == 1, what="eviction after 2 refusals")
    await until(lambda: never.stats()["retried"] >= 5, what="retries")
    assert never.stats()["evicted"] == 0


# --- routes ---------------------------------------------------------------------------------------


def test_route_node_from_registry_metadata() -> None:
    n = RouteNode.from_registry(
        Node("id1", "10.0.0.1:80", {"batch": "1", "secure": "true", "h2": "1", "max_body": "99"})
    )
    assert n == RouteNode("id1", "10.0.0.1:80", batch=True, secure=True, h2=True, max_body=99)
    plain = RouteNode.from_registry(Node("id2", "10.0.0.2:80"))
    assert plain == RouteNode("id2", "10.0.0.2:80", batch=False, secure=False, h2=False, max_body=None)
    # a hostile or odd record does not break the route: the size is just unknown
    for odd in ("²", "-5", "1e3", str(1 << 64), ""):
        assert RouteNode.from_registry(Node("x", "h:1", {"max_body": odd})).max_body is None, odd


def test_route_groups_leave_out_empty_services() -> None:
    a = Node("a", "127.0.0.1:1")
    groups = route_groups([Service("topic:t", "q", (a,)), Service("topic:t", BROADCAST_VERSION, ())])
    assert groups == [RouteGroup("q", (RouteNode("a", "127.0.0.1:1"),))]


def test_set_routes_reads_route_objects() -> None:
    e = _core.Engine(BrokerOptions())
    try:
        e.set_routes("t", [RouteGroup("q", (RouteNode("a", "127.0.0.1:1"), RouteNode("b", "127.0.0.1:2")))])
        assert e.route_count("t") == 2
        e.set_routes("t", [])
        assert e.route_count("t") == 0
        with pytest.raises(TypeError, match=r"RouteGroup\.nodes: .*RouteNode\.batch: 'str' object"):
            e.set_routes("t", [RouteGroup("q", (RouteNode("a", "127.0.0.1:1", batch="yes"),))])  # type: ignore[arg-type]
        with pytest.raises((TypeError, AttributeError)):
            e.set_routes("t", [("q", [("a", "127.0.0.1:1", False, False, False, None)])])  # type: ignore[list-item]
        assert e.route_count("t") == 0  # a refused call changes nothing
    finally:
        e.close()


async def test_routes_built_from_the_registry_deliver(make_broker: MakeBroker) -> None:
    sub, pub = await make_broker(), await make_broker()
    sink = Sink()
    await sub.subscribe("seam.routes", sink, queue="workers")
    await pub.wait_for_route("seam.routes")
    await pub.publish("seam.routes", b"over the seam")
    await asyncio.wait_for(pub.flush(), 5)
    assert sink.bodies == [b"over the seam"]
