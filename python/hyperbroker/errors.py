"""Typed errors. Every error hyperbroker raises is a :class:`BrokerError`."""

from __future__ import annotations

from ._core import BrokerError, CodecError

__all__ = [
    "BrokerError",
    "CodecError",
    "FlushTimeoutError",
    "NotConnectedError",
    "RegistryError",
    "RequestError",
    "RequestTimeoutError",
]

BrokerError.__module__ = "hyperbroker"
CodecError.__module__ = "hyperbroker"


class NotConnectedError(BrokerError):
    """The operation needs a connected broker: call ``await broker.connect()`` first."""


class FlushTimeoutError(BrokerError, TimeoutError):
    """``flush()`` ran out of time before every published message was delivered or parked.

    ``pending``: node deliveries still queued or on the wire when it gave up; ``last_error``:
    the last delivery failure the broker saw (None: none), often why they are still pending.
    """

    pending: int
    last_error: str | None

    def __init__(self, message: str, *, pending: int = 0, last_error: str | None = None) -> None:
        super().__init__(message)
        self.pending = pending
        self.last_error = last_error


class RegistryError(BrokerError):
    """The registry refused an operation or could not be reached."""


class RequestTimeoutError(BrokerError, TimeoutError):
    """``request()`` got no answer in time (or no subscriber of the topic was there to answer)."""


class RequestError(BrokerError):
    """``request()`` got an answer that is not a reply: the subscriber's handler raised
    (``status`` 500, the text names the exception), or the node refused the request (its HTTP
    status), or the exchange broke after the request went out (``status`` 1). A request is
    never retried once it may have reached a handler."""

    status: int

    def __init__(self, message: str, *, status: int = 500) -> None:
        super().__init__(message)
        self.status = status
