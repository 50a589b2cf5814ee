"""Message and Event: what is published and what a handler receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import BrokerError

__all__ = ["Message", "Event", "to_wire"]


@dataclass(slots=True)
class Message:
    """A message: string headers and a bytes body (go-micro's ``broker.Message``)."""

    header: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        """The body decoded as JSON (orjson)."""
        return orjson.loads(self.body)

    def text(self, encoding: str = "utf-8") -> str:
        """The body decoded as text."""
        return self.body.decode(encoding)


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
        if not isinstance(body, bytes):
            body = bytes(body)
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


class Event:
    """What a handler receives: the topic, the message, ``ack()`` and ``error``.

    With ``auto_ack=True`` (the default) a handler that returns acknowledges the message; with
    ``auto_ack=False`` the handler must call ``ack()``, or the message is delivered again.
    """

    __slots__ = ("topic", "message", "error", "_acked")

    def __init__(self, topic: str, message: Message, error: BaseException | None = None) -> None:
        self.topic = topic
        self.message = message
        self.error = error
        self._acked = False

    def ack(self) -> None:
        """Acknowledge the message (needed only with ``auto_ack=False``)."""
        self._acked = True

    @property
    def acked(self) -> bool:
        return self._acked

    def __repr__(self) -> str:
        return f"Event(topic={self.topic!r}, header={self.message.header!r}, body={self.message.body[:64]!r})"


Handler = Callable[[Event], Any]
