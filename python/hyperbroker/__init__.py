"""hyperbroker: a peer-to-peer publish/subscribe broker speaking go-micro's HTTP broker protocol,
with its hot path in Rust (tokio + hyper)."""

from __future__ import annotations

from ._core import __version__
from .backlog import Backlog
from .codec import decode, encode
from .errors import (
    BrokerError,
    CodecError,
    FlushTimeoutError,
    NotConnectedError,
    RegistryError,
)

__all__ = [
    "__version__",
    "Backlog",
    "BrokerError",
    "CodecError",
    "FlushTimeoutError",
    "NotConnectedError",
    "RegistryError",
    "decode",
    "encode",
]
