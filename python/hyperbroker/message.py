"""Message and Event: what is published and what a handler receives.

Both are native classes (``hyperbroker._core``): the subscriber endpoint builds them for each
received message without running Python code.

``Message(header=None, body=b"")``: ``.header`` (dict[str, str]), ``.body`` (bytes), ``.json()``,
``.text(encoding="utf-8")``; equal when header and body are.
``Event(topic, message, error=None)``: ``.topic``, ``.message``, ``.error``, ``.ack()``, ``.acked``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from ._core import Event, Message
from .errors import BrokerError

__all__ = ["Message", "Event", "to_wire"]


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
    else:
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


Handler = Callable[[Event], Any]
