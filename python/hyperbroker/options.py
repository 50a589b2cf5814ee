"""Broker options (go-micro's ``broker.Options``): the one place their defaults and range checks
live. The Rust engine reads a validated :class:`BrokerOptions` as it is (``Engine(options)``,
``rust/py/conversion.rs``) and checks nothing again."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .errors import BrokerError
from .tls import TLSConfig

if TYPE_CHECKING:
    from .errors import BrokerError as _BrokerError
    from .message import Message
    from .registry.base import Registry

__all__ = ["DIALECTS", "BrokerOptions", "check_max_deliveries", "parse_address", "validate_tokens"]

#: inclusive upper bounds of the integer options (what their Rust fields can hold, or sensible)
_INT_MAX = {"evict_after": (1 << 32) - 1, "node_inflight": 256}
_INT_DEFAULT_MAX = (1 << 63) - 1
#: longest accepted duration, in seconds (about 31 years: any deadline stays representable)
_MAX_SECONDS = 1e9
#: The registry layouts a broker can register its subscriptions in (``BrokerOptions.dialect``).
DIALECTS = ("v1", "micro")


def validate_tokens(tokens: Sequence[str] | None) -> None:
    """Auth tokens are non-empty printable ASCII strings (they travel in an HTTP header)."""
    if tokens is None:
        return
    if isinstance(tokens, str) or not tokens:
        raise BrokerError("auth_token must be a string or a non-empty list of strings")
    for t in tokens:
        if not isinstance(t, str) or not t or not t.isascii() or not t.isprintable() or " " in t:
            raise BrokerError("an auth token must be a non-empty string of printable ASCII without spaces")


def check_max_deliveries(v: object) -> None:
    """``max_deliveries`` is None (forever) or an integer 1 .. 2**32-1."""
    if v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v < 1 << 32:
        raise BrokerError(f"max_deliveries must be None or an integer from 1 to 2**32-1, got {v!r}")


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port``, ``:port`` = every interface)."""
    if not isinstance(address, str):
        raise BrokerError(f"address must be a 'host:port' string, got {type(address).__name__}")
    host, sep, port_s = address.rpartition(":")
    if not sep:
        raise BrokerError(f"address {address!r} must be 'host:port' (port 0 picks a free port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "":
        host = "0.0.0.0"
    try:
        port = int(port_s)
    except ValueError:
        raise BrokerError(f"address {address!r} has a non-numeric port {port_s!r}") from None
    if not 0 <= port <= 65535:
        raise BrokerError(f"address {address!r}: port must be 0..65535")
    return host, port


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Everything a :class:`~hyperbroker.Broker` can be configured with.

    address: where the subscriber endpoint listens (``host:port``; port 0 picks one).
    registry: where subscriptions are announced: a registry object, or a URL such as
        ``"etcd://h1:2379,h2:2379"``, ``"mdns://"``, ``"memory://"`` (the broker owns and closes
        what it makes of a URL). Default: ``$HYPERBROKER_REGISTRY``, else :class:`MdnsRegistry`.
    advertise: ``host`` or ``host:port`` announced instead of the bound address (containers).
    backlog / backlog_bytes: per-topic count cap and total byte cap of the undeliverable backlog.
    max_body: largest request body the endpoint accepts (413 above).
    node_queue: messages queued per subscriber node before the oldest are dropped.
    max_batch / max_batch_bytes: caps of one batched POST to nodes that accept batches.
    batch: whether this broker's subscriptions accept batched POSTs.
    frames: whether this broker's subscriptions accept the raw frame format (registry metadata
        ``frames=1``): bodies travel as they are, without JSON and base64. Publishers use it
        towards nodes that announce it; go-micro peers never see it. A frames request carries
        several messages, so it is announced only together with ``batch``.
    retry_min / retry_max: back-off bounds (seconds) for a failing node.
    request_timeout: seconds one delivery may take, handler included (a batch the node received
        through the ordered pipeline, see node_inflight, gets three times this: it may wait
        behind two others).
    header_read_timeout: seconds a client has to send its request headers.
    register_interval / register_ttl: heartbeat period and registry TTL (go-micro: 30 s / 60 s).
    disconnect_timeout: how long ``disconnect()`` waits for queued deliveries.
    body_read_timeout: seconds a client has to send the request body (408 after).
    max_topic / max_message_headers / max_message_header_bytes: limits of one message.
    max_connections_per_peer: simultaneous connections accepted from one IP address.
    max_connections: simultaneous connections accepted from all peers together; over it a new
        connection is closed at once (counted in ``stats()["connections_refused"]``). 4096 by
        default: the kernel's default listen-queue cap, far above what a subscriber's
        publishers need (one connection per publisher and ``node_inflight``), and a bound on
        what a flood of idle connections can take (measured: 7 KB each silent, 20 KB with a
        request head pending, so ~80 MB at worst); the open-file limit (``ulimit -n``) must
        allow it.
    evict_after: consecutive refused connections after which a node leaves its route (its
        queued messages wait in the backlog) until a probe finds it answering again.
    node_inflight: requests in flight per subscriber node, 1..256 (1 keeps each subscriber's order;
        more overlap requests on HTTP/2 streams or extra connections, in any order). With 1, a
        node that gives receipts (hyperbroker) gets its next batch as soon as it queued the last
        one, up to three batches on their way, in order while deliveries succeed (README,
        "Receipts"). Over HTTP/1.1 the deliveries in flight to one node address (all its
        subscriptions together) are capped at max(32, node_inflight), so many connections;
        one that waited a whole request timeout for its turn goes on a connection of its own.
    secure: serve HTTPS with a self-signed certificate made at connect (go-micro's Secure);
        publishers accept such peers without verification.
    tls: a :class:`~hyperbroker.TLSConfig` for real certificates, verification and mTLS.
    h2: announce that this broker's endpoint speaks HTTP/2 with prior knowledge (h2c);
        hyperbroker publishers then use HTTP/2 towards it.
    auth_token: a bearer token (or a list: the first is sent, all are accepted, for rotation)
        that publishers send and this broker's endpoint requires (401 otherwise).
    max_deliveries: failed handler attempts (500 answers) after which a message this broker
        published is given up for one subscription (None: retried forever). A subscription's
        own ``subscribe(..., max_deliveries=)`` wins.
    on_undeliverable: ``f(topic, message, reason)`` (sync or async), called on the event loop
        for each message given up after ``max_deliveries``; an exception in it is logged.
    dead_letter_topic: publish each message given up after ``max_deliveries`` to this topic,
        with headers ``X-Hyperbroker-Original-Topic``, ``-Node``, ``-Error``, ``-Deliveries``.
    tracing: OpenTelemetry spans (``send <topic>`` around publishing, ``process <topic>`` around
        each handler call) with W3C ``traceparent`` carried in the message header; needs the
        ``hyperbroker[otel]`` extra. Off by default: then it costs nothing.
    on_error: ``f(error: BrokerError)``: errors of background work (registry watch and
        heartbeat failures, dead-letter publish failures, delivery errors at most once a second).
    on_drop: ``f(topic, count, reason)``: messages dropped, summed per topic and reason (reasons
        as in ``stats()["dropped_by_reason"]``), once per wake-up of the loop, never per message.
    on_route_change: ``f(topic, nodes)``: the number of nodes routed for ``topic`` changed.
    on_evict: ``f(node_address, reason)``: a node left its route (reason ``"unreachable"``: it
        refused ``evict_after`` connections in a row); it is probed and put back when it answers.
    Every callback runs on the event loop, may be ``async``, and an exception in it is logged.
    metrics: serve Prometheus text on ``GET /metrics`` of the endpoint (the bearer token is
        required there too when ``auth_token`` is set) and observe the latency histograms:
        ``hyperbroker_delivery_duration_seconds`` (publish to a node's acknowledgement, backlog
        time included) and ``hyperbroker_handler_duration_seconds`` (an event handed to the
        asyncio loop until its outcome came back: the handler plus the loop's wake-up latency;
        for a batched request, until the whole batch is done).
        Per-topic counters (:meth:`Broker.topic_stats`) and ``GET /healthz`` are always there.
    metrics_max_topics: topics with counters of their own; the others are summed under the
        topic ``"_other"`` (bounds the memory and the label cardinality).
    dialect: the go-micro registry layout this broker's subscriptions are REGISTERED in:
        ``"v1"`` (service ``topic:<topic>``, endpoint ``/_sub``; what go-micro v1 and every
        hyperbroker read) or ``"micro"`` (current go-micro: service ``micro.http.broker``, node
        id ``<topic>-<id>``, endpoint ``/``). Publishers always read both layouts and the
        endpoint serves both paths; only current go-micro publishers need ``"micro"``.
    """

    address: str = ":0"
    registry: Registry | str | None = None
    advertise: str | None = None
    backlog: int = 1024
    backlog_bytes: int = 64 << 20
    max_body: int = 4 << 20
    node_queue: int = 65536
    max_batch: int = 1024
    max_batch_bytes: int = 1 << 20
    batch: bool = True
    frames: bool = True
    retry_min: float = 0.01
    retry_max: float = 2.0
    request_timeout: float = 30.0
    header_read_timeout: float = 10.0
    register_interval: float = 30.0
    register_ttl: float = 60.0
    disconnect_timeout: float = 5.0
    body_read_timeout: float = 30.0
    max_topic: int = 1024
    max_message_headers: int = 256
    max_message_header_bytes: int = 65536
    max_connections_per_peer: int = 1024
    max_connections: int = 4096
    evict_after: int = 3
    node_inflight: int = 1
    secure: bool = False
    tls: TLSConfig | None = None
    h2: bool = False
    auth_token: str | Sequence[str] | None = None
    max_deliveries: int | None = 10
    on_undeliverable: Callable[[str, Message, str], object] | None = None
    dead_letter_topic: str | None = None
    tracing: bool = False
    on_error: Callable[[_BrokerError], object] | None = None
    on_drop: Callable[[str, int, str], object] | None = None
    on_route_change: Callable[[str, int], object] | None = None
    on_evict: Callable[[str, str], object] | None = None
    metrics: bool = False
    metrics_max_topics: int = 1000
    dialect: Literal["v1", "micro"] = "v1"

    @property
    def auth_tokens(self) -> list[str]:
        """Accepted tokens; the first one is sent."""
        t = self.auth_token
        if t is None:
            return []
        return [t] if isinstance(t, str) else list(t)

    def __post_init__(self) -> None:
        parse_address(self.address)
        check_max_deliveries(self.max_deliveries)
        for name in ("on_undeliverable", "on_error", "on_drop", "on_route_change", "on_evict"):
            fn = getattr(self, name)
            if fn is not None and not callable(fn):
                raise BrokerError(f"{name} must be callable, got {type(fn).__name__}")
        if not isinstance(self.tracing, bool):
            raise BrokerError(f"tracing must be True or False, got {self.tracing!r}")
        if self.dead_letter_topic is not None and (
            not isinstance(self.dead_letter_topic, str) or not self.dead_letter_topic
        ):
            raise BrokerError("dead_letter_topic must be a non-empty string or None")
        if self.dialect not in DIALECTS:
            raise BrokerError(f"dialect must be one of {', '.join(map(repr, DIALECTS))}, got {self.dialect!r}")
        if isinstance(self.registry, str):
            from .registry.url import parse_url

            parse_url(self.registry)  # a bad registry URL fails here, not at connect
        for name in (
            "backlog",
            "backlog_bytes",
            "max_body",
            "node_queue",
            "max_batch",
            "max_batch_bytes",
            "max_topic",
            "max_message_headers",
            "max_message_header_bytes",
            "max_connections_per_peer",
            "max_connections",
            "evict_after",
            "node_inflight",
            "metrics_max_topics",
        ):
            v = getattr(self, name)
            top = _INT_MAX.get(name, _INT_DEFAULT_MAX)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
                limit = "" if top == _INT_DEFAULT_MAX else f" (at most {top})"
                raise BrokerError(f"{name} must be a positive integer{limit}, got {v!r}")
        for name in (
            "retry_min",
            "retry_max",
            "request_timeout",
            "header_read_timeout",
            "body_read_timeout",
            "register_interval",
            "register_ttl",
        ):
            v = getattr(self, name)
            if not _is_number(v) or not 0 < v <= _MAX_SECONDS:
                raise BrokerError(f"{name} must be a positive number of seconds (at most {_MAX_SECONDS:g}), got {v!r}")
        v = self.disconnect_timeout
        if not _is_number(v) or not 0 <= v <= _MAX_SECONDS:
            raise BrokerError(f"disconnect_timeout must be a number of seconds >= 0, got {v!r}")
        if not isinstance(self.metrics, bool):
            raise BrokerError(f"metrics must be True or False, got {self.metrics!r}")
        if self.retry_max < self.retry_min:
            raise BrokerError("retry_max must be >= retry_min")
        validate_tokens(self.auth_tokens if self.auth_token is not None else None)
        if self.tls is not None and not isinstance(self.tls, TLSConfig):
            raise BrokerError(f"tls must be a TLSConfig, got {type(self.tls).__name__}")

    def replace(self, **changes: Any) -> BrokerOptions:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise BrokerError(f"unknown broker option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dataclasses.replace(self, **changes)
