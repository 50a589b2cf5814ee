"""hyperbroker: a peer-to-peer publish/subscribe broker speaking go-micro's HTTP broker protocol,
with its hot path in Rust (tokio + hyper).

    async with Broker(registry=MemoryRegistry()) as broker:
        await broker.subscribe("greetings", lambda ev: print(ev.message.body))
        await broker.publish("greetings", b"hi")
        await broker.flush()
"""

from __future__ import annotations

from ._core import __version__
from .backlog import Backlog
from .broker import Broker
from .codec import decode, encode
from .errors import (
    BrokerError,
    CodecError,
    FlushTimeoutError,
    NotConnectedError,
    RegistryError,
    RequestError,
    RequestTimeoutError,
)
from .iteration import IterSubscriber
from .message import Event, Message
from .options import BrokerOptions
from .registry import (
    BROADCAST_VERSION,
    EtcdRegistry,
    MdnsRegistry,
    MemoryRegistry,
    Node,
    Registry,
    Service,
    WatchEvent,
)
from .subscriber import SubscribeOptions, Subscriber
from .sync import SyncBroker, SyncSubscriber
from .tls import TLSConfig

__all__ = [
    "BROADCAST_VERSION",
    "Backlog",
    "Broker",
    "BrokerError",
    "BrokerOptions",
    "CodecError",
    "EtcdRegistry",
    "Event",
    "FlushTimeoutError",
    "IterSubscriber",
    "MdnsRegistry",
    "MemoryRegistry",
    "Message",
    "Node",
    "NotConnectedError",
    "Registry",
    "RegistryError",
    "RequestError",
    "RequestTimeoutError",
    "Service",
    "SubscribeOptions",
    "Subscriber",
    "SyncBroker",
    "SyncSubscriber",
    "TLSConfig",
    "WatchEvent",
    "__version__",
    "decode",
    "encode",
]
