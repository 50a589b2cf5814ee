"""Type stub of the native module ``hyperbroker._core`` (Rust, PyO3)."""

from typing import Any, TypeVar, final

__all__ = ["Backlog", "BrokerError", "CodecError", "Engine", "Event", "Message", "__version__", "decode", "encode"]

from collections.abc import Callable, Iterable, Sequence

from hyperbroker._routes import RouteGroup
from hyperbroker.options import BrokerOptions

__version__: str

_T = TypeVar("_T")

class BrokerError(Exception):
    """Base class of every error hyperbroker raises."""

class CodecError(BrokerError):
    """An envelope could not be encoded or decoded."""

def encode(topic: str, header: dict[str, str] | None, body: bytes) -> bytes:
    """Encode a go-micro envelope; CodecError for an empty topic or a non-str header entry."""

def decode(data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Decode a go-micro envelope; CodecError saying what is wrong with bad input."""

@final
class Backlog:
    def __new__(cls, capacity: int, max_bytes: int = 67108864) -> Backlog: ...
    def push(self, topic: str, item: bytes) -> int: ...
    def drain(self, topic: str, max: int = ...) -> list[bytes]: ...
    def len(self, topic: str) -> int: ...
    def dropped(self, topic: str) -> int: ...
    def topics(self) -> list[str]: ...
    @property
    def capacity(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def total_len(self) -> int: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def dropped_total(self) -> int: ...
    def __len__(self) -> int: ...

@final
class Message:
    """A message: string headers and a bytes body (go-micro's ``broker.Message``)."""

    def __new__(
        cls, header: dict[str, str] | None = None, body: bytes | bytearray | memoryview | None = None
    ) -> Message: ...
    @property
    def header(self) -> dict[str, str]: ...
    @header.setter
    def header(self, value: dict[str, str]) -> None: ...
    @property
    def body(self) -> bytes: ...
    @body.setter
    def body(self, value: bytes | bytearray | memoryview) -> None: ...
    def json(self) -> Any: ...
    def decode(self, model: type[_T]) -> _T:
        """The body validated into ``model`` (a pydantic model or a dataclass)."""
    def text(self, encoding: str = "utf-8") -> str: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class Event:
    """What a handler receives: the topic, the message, ``ack()`` and ``error``."""

    def __new__(cls, topic: str, message: Message, error: BaseException | None = None) -> Event: ...
    @property
    def topic(self) -> str: ...
    @property
    def message(self) -> Message: ...
    @property
    def error(self) -> BaseException | None: ...
    def json(self) -> Any:
        """The message body decoded as JSON (orjson)."""
    def decode(self, model: type[_T]) -> _T:
        """The message body validated into ``model`` (a pydantic model or a dataclass)."""
    def ack(self) -> None: ...
    @property
    def acked(self) -> bool: ...
    @property
    def _token(self) -> int: ...

@final
class Engine:
    """One broker's native half: endpoint, publisher, bridge and counters."""

    def __new__(cls, options: BrokerOptions) -> Engine:
        """Engine(options): the native half of a broker configured by a validated
        :class:`~hyperbroker.BrokerOptions` (read once; its defaults and checks are the only
        ones). Raises TypeError for anything else, or an option whose type does not convert."""
    def listen(self, host: str, port: int) -> tuple[str, int]:
        """Bind the subscriber endpoint; returns the bound (host, port). BrokerError when it cannot."""
    def close(self) -> None:
        """Stop the endpoint and every delivery task; the port refuses connections on return."""
    def stop_listening(self) -> None:
        """Stop only the endpoint (the publisher keeps running)."""
    @property
    def wake_fd(self) -> int:
        """The file descriptor that is readable when ``take()`` has something."""
    def take(
        self,
    ) -> tuple[
        list[str],
        list[Event],
        list[tuple[int, bool]],
        list[tuple[str, Message, str, str, str, int]],
        list[tuple[Any, ...]],
        list[tuple[int, Message | None, int, str]],
    ]:
        """Every queued item: (subscriber ids, events, finished waits as (token, ok), dead letters
        as (topic, message, node id, node address, last error, attempts), notices: ("drop",
        topic, reason, count), ("evict", address, topic, reason), ("readd", address, topic),
        ("route", topic, nodes), ("error", text, count), ("lost", count)), answers to requests as
        (token, reply or None, status, error text): status 200 with a reply; 0 no answer in time;
        500 the handler raised; 1 the exchange broke; another status the node's refusal)."""
    def set_draining(self, on: bool) -> None:
        """Answer new deliveries 503 (they stay with their publisher) while running ones finish."""
    def pending_deliveries(self) -> int:
        """Deliveries handed to Python whose outcome is not reported yet."""
    def done(
        self,
        failures: list[tuple[int, str]],
        deferred: list[int],
        replies: list[tuple[int, str, dict[str, str] | None, bytes]] | None = None,
    ) -> None:
        """Settle the events of the last ``take()``: failed (token, error), deferred, the rest
        handled; ``replies`` (token, topic, header, body) answer their deliveries' requests."""
    def complete(
        self,
        results: list[tuple[int, str | None]],
        replies: list[tuple[int, str, dict[str, str] | None, bytes]] | None = None,
    ) -> None:
        """Report deferred handler outcomes: (token, None) handled, (token, "error") raised;
        ``replies`` as for ``done``."""
    def add_subscriber(self, id: str, topic: str) -> None:
        """Serve subscriber ``id`` (of ``topic``) at this endpoint."""
    def remove_subscriber(self, id: str) -> bool:
        """Stop serving subscriber ``id``; False when it was unknown."""
    def set_routes(self, topic: str, groups: Sequence[RouteGroup]) -> None:
        """Replace the route of ``topic``. Raises TypeError naming a field that does not convert,
        BrokerError for a node whose address is unusable."""
    def configure_tls(
        self,
        *,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        ca_pem: bytes | None = None,
        verify: bool = False,
        client_auth: bool = False,
        self_signed_hosts: list[str] | None = None,
    ) -> None:
        """Configure TLS before ``listen``; BrokerError ("TLS configuration: ...") when a PEM or
        setting is unusable."""
    def verify_peers(self, ca_pem: bytes) -> None:
        """Verify https peers against ``ca_pem``; BrokerError when it holds no usable certificate."""
    def route_count(self, topic: str) -> int:
        """Number of nodes currently routed for ``topic``."""
    def publish(self, topic: str, header: dict[str, str] | None, body: bytes) -> bool:
        """Encode and queue one message; True when a subscriber is congested (await ``wait_room``)."""
    def publish_many(
        self,
        topic: str,
        messages: Iterable[object],
        to_wire: Callable[[object], tuple[dict[str, str] | None, bytes]],
    ) -> tuple[bool, int]:
        """Queue many messages of one topic: a ``bytes`` item is a body without header, any other
        goes through ``to_wire``; all are converted before any is queued. Returns (the same
        congestion flag as ``publish``, how many were queued)."""
    def request(self, token: int, topic: str, header: dict[str, str] | None, body: bytes, timeout: float) -> None:
        """Send one request to one subscriber node of ``topic``; ``take()`` yields its answer
        under ``token`` within ``timeout`` seconds."""
    def wait_room(self, token: int, timeout: float) -> None:
        """Start waiting (``timeout`` seconds at most) until no healthy subscriber is congested."""
    def flush(self, token: int, timeout: float) -> None:
        """Start waiting (``timeout`` seconds at most) for everything published so far."""
    def _bench_publish(self, topic: str, n: int, body: bytes, timeout: float) -> bool:
        """Bench only (``benches/test_bench_ceiling.py``): publish ``body`` to ``topic`` ``n`` times
        from a Rust loop (no Python call per message), honouring back-pressure, then wait for
        every acknowledgement. Blocks the calling thread (GIL released); False on ``timeout``."""
    def _bench_noop_subscription(self, id: str, topic: str) -> None:
        """Bench only: serve subscriber ``id`` of ``topic`` with a no-op handler in Rust (same
        endpoint code, never reaches Python; ``stats()["received"]`` counts its deliveries)."""
    def set_auth_token(self, token: str | None = None) -> None:
        """The bearer token sent to nodes (None: none); ValueError when it is not printable ASCII."""
    def set_accepted_tokens(self, tokens: list[str]) -> None:
        """The bearer tokens the endpoint accepts (empty: no authentication); ValueError for an empty one."""
    def backlog_len(self, topic: str) -> int:
        """Messages of ``topic`` waiting in the backlog."""
    def backlog_dropped(self, topic: str) -> int:
        """Messages of ``topic`` the backlog dropped."""
    def topic_stats(self) -> dict[str, dict[str, int]]:
        """Per-topic counters and gauges; topics past ``metrics_max_topics`` under ``"_other"``."""
    def metrics_text(self) -> str:
        """The Prometheus text exposition (format 0.0.4) that ``GET /metrics`` serves."""
    def stats(self) -> dict[str, int | str | dict[str, int] | None]:
        """Counters and gauges, plus ``last_error`` (str or None)."""
