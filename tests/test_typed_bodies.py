"""Typed bodies: publishing pydantic models and dataclasses, and ``json()`` / ``decode(Model)``
on Event and Message (native methods) and ``decode_body`` (the helper they call).

pydantic is optional for hyperbroker: it is in the ``test`` extra, and these tests import it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import orjson
import pydantic
import pytest
from brokers import MakeBroker, until

from hyperbroker import BrokerError, Event, Message
from hyperbroker.message import decode_body, to_wire
from hyperbroker.testing import TestBroker

pytestmark = pytest.mark.timeout(60)

JSON = {"Content-Type": "application/json"}


class Order(pydantic.BaseModel):
    id: int
    item: str
    at: datetime


@dataclasses.dataclass
class Point:
    x: int
    y: int
    label: str = ""


AT = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def test_to_wire_serialises_models_and_dataclasses_as_json() -> None:
    h, body = to_wire(Order(id=7, item="tea", at=AT))
    assert h == JSON
    assert orjson.loads(body) == {"id": 7, "item": "tea", "at": "2024-05-01T12:30:00Z"}
    h, body = to_wire(Point(1, 2), header={"X-Kind": "point"})
    assert h == {**JSON, "X-Kind": "point"}
    assert orjson.loads(body) == {"x": 1, "y": 2, "label": ""}


def test_json_on_event_and_message() -> None:
    msg = Message(JSON, b'{"a": [1, 2]}')
    ev = Event("t", msg)
    assert ev.json() == msg.json() == {"a": [1, 2]}
    with pytest.raises(orjson.JSONDecodeError):
        Event("t", Message({}, b"not json")).json()


def test_decode_into_a_pydantic_model() -> None:
    ev = Event("t", Message(JSON, b'{"id": 7, "item": "tea", "at": "2024-05-01T12:30:00Z"}'))
    order = ev.decode(Order)
    assert order == Order(id=7, item="tea", at=AT)
    assert ev.message.decode(Order) == order == decode_body(Order, ev) == decode_body(Order, ev.message.body)
    with pytest.raises(pydantic.ValidationError):
        Event("t", Message({}, b'{"id": "seven"}')).decode(Order)


def test_decode_into_a_dataclass() -> None:
    ev = Event("t", Message(JSON, b'{"x": 1, "y": 2}'))
    assert ev.decode(Point) == Point(1, 2)
    with pytest.raises(TypeError):
        Event("t", Message({}, b'{"x": 1, "z": 2}')).decode(Point)  # unknown field
    with pytest.raises(BrokerError, match="JSON list into dataclass Point"):
        Event("t", Message({}, b"[1, 2]")).decode(Point)


def test_decode_refuses_what_is_not_a_model() -> None:
    ev = Event("t", Message({}, b"{}"))
    with pytest.raises(BrokerError, match="pydantic model or dataclass"):
        ev.decode(dict)
    with pytest.raises(BrokerError, match="pydantic model or dataclass"):
        ev.decode(Point(1, 2))  # type: ignore[arg-type]  # an instance, not a type


async def test_publish_model_and_dataclass_end_to_end(make_broker: MakeBroker) -> None:
    pub = await make_broker()
    sub = await make_broker()
    events: list[Event] = []
    await sub.subscribe("typed", events.append)
    await until(lambda: pub.route_count("typed") == 1, 5, "a route")
    await pub.publish("typed", Order(id=1, item="tea", at=AT))
    await pub.publish("typed", Point(3, 4, "p"))
    await pub.flush(timeout=10)
    first, second = events
    assert first.message.header == JSON and second.message.header == JSON
    assert first.decode(Order) == Order(id=1, item="tea", at=AT)
    assert second.decode(Point) == Point(3, 4, "p")
    assert second.json() == {"x": 3, "y": 4, "label": "p"}


async def test_publish_model_and_dataclass_on_the_test_broker() -> None:
    async with TestBroker() as tb:
        got: list[object] = []
        await tb.subscribe("orders", lambda ev: got.append(ev.decode(Order)))
        await tb.publish("orders", Order(id=2, item="cake", at=AT))
        await tb.flush()
        assert got == [Order(id=2, item="cake", at=AT)]
        assert tb.published[0][1].header == JSON
