"""Typed errors. Every error hyperbroker raises is a :class:`BrokerError`."""

from __future__ import annotations

from ._core import BrokerError, CodecError

__all__ = [
    "BrokerError",
    "CodecError",
    "NotConnectedError",
    "FlushTimeoutError",
    "RegistryError",
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
