"""Message and Event: what is published and what a handler receives.

Both are native classes (``hyperbroker._core``): the subscriber endpoint builds them for each
received message without running Python code.

``Message(header=None, body=b"")``: ``.header`` (dict[str, str]), ``.body`` (bytes), ``.json()``,
``.text(encoding="utf-8")``, ``.decode(Model)``; equal when header and body are.
``Event(topic, message, error=None)``: ``.topic``, ``.message``, ``.error``, ``.ack()``, ``.acked``,
``.json()``, ``.decode(Model)`` (the message's).

This module owns how Python values become a body (:func:`to_wire`: bytes, str, pydantic models,
dataclasses, anything orjson serialises) and how a body becomes a typed value again
(:func:`decode_body`, which the native ``decode`` methods call). pydantic is optional: it is
never imported here; a model is recognised by its methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from ._core import Event, Message
from .errors import BrokerError

__all__ = ["Event", "Message", "decode_body", "to_wire"]

T = TypeVar("T")


_JSON_HEADER = {"Content-Type": "application/json"}


def to_wire(message: object, header: dict[str, str] | None = None) -> tuple[dict[str, str] | None, bytes]:
    """Normalise what ``publish`` accepts into (header, body).

    ``Message`` is sent as is; ``bytes``-like as the body; ``str`` as UTF-8; anything else is
    serialised with orjson and gets ``Content-Type: application/json``. ``header`` adds to (and
    overrides) the message's own header.
    """
    if isinstance(message, Message):
        h: dict[str, str] | None = message.header
        body = message.body
    elif isinstance(message, bytes):
        h, body = None, message
    elif isinstance(message, (bytearray, memoryview)):
        h, body = None, bytes(message)
    elif isinstance(message, str):
        h, body = None, message.encode()
    elif _is_pydantic_model(type(message)):
        body = message.model_dump_json().encode()  # type: ignore[attr-defined]
        h = _JSON_HEADER
    else:  # dataclasses included: orjson serialises them natively
        try:
            body = orjson.dumps(message)
        except TypeError as e:
            raise BrokerError(
                f"cannot publish {type(message).__name__}: pass a Message, bytes, str or a "
                f"JSON-serialisable object ({e})"
            ) from None
        h = _JSON_HEADER
    if header:
        h = {**h, **header} if h else dict(header)
    return h, body


def _is_pydantic_model(cls: type) -> bool:
    """A pydantic v2 model class (recognised without importing pydantic)."""
    return callable(getattr(cls, "model_validate_json", None)) and callable(getattr(cls, "model_dump_json", None))


def decode_body(model: type[T], body: bytes | Message | Event) -> T:
    """``body`` (bytes, or a Message's or an Event's body) validated into ``model``.

    A pydantic model: ``model.model_validate_json(body)`` (its ``ValidationError`` propagates).
    A dataclass: ``model(**orjson.loads(body))`` (the body must be a JSON object; a missing or
    unknown field raises ``TypeError``). Anything else: :class:`BrokerError`.
    ``event.decode(Model)`` and ``message.decode(Model)`` call this.
    """
    if isinstance(body, Event):
        body = body.message.body
    elif isinstance(body, Message):
        body = body.body
    if not isinstance(model, type):
        raise BrokerError(f"decode needs a pydantic model or dataclass type, got {model!r}")
    if _is_pydantic_model(model):
        return model.model_validate_json(body)  # type: ignore[attr-defined, no-any-return]
    if dataclasses.is_dataclass(model):
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise BrokerError(f"cannot decode a JSON {type(data).__name__} into dataclass {model.__name__}")
        return model(**data)
    raise BrokerError(f"decode needs a pydantic model or dataclass type, got {model.__name__}")


Handler = Callable[[Event], Any]
