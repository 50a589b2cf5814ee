"""Opt-in OpenTelemetry tracing (``Broker(tracing=True)``, extra ``hyperbroker[otel]``).

Owns the two span kinds and the W3C trace context carried in the message header:

- a PRODUCER span ``send <topic>`` around ``publish`` / ``publish_nowait`` (one span for a
  ``publish_many``, with ``messaging.batch.message_count``), whose context is injected into each
  message header (``traceparent``, ``tracestate``) through the configured OTel propagator;
- a CONSUMER span ``process <topic>`` around each handler call, a child of the context
  extracted from the received header (case-insensitively: Go peers send ``Traceparent``), with
  ``error.type`` when the handler raised.

Attributes follow the messaging semantic conventions: ``messaging.system`` = "hyperbroker",
``messaging.destination.name``, ``messaging.operation.type`` (send / process),
``messaging.consumer.group.name`` (queue subscriptions), ``messaging.message.body.size``,
``server.address`` / ``server.port`` (this broker's advertised endpoint: in a peer-to-peer broker
the local node is the broker). Spans go to the global tracer provider.

Nothing here runs when tracing is off: the broker wraps handlers at subscribe time and takes the
traced publish path only when ``options.tracing`` was set at connect.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

from .errors import BrokerError
from .message import Event, Handler, to_wire

if TYPE_CHECKING:
    from . import _core

__all__ = ["Tracing", "require"]

SYSTEM = "hyperbroker"


def require() -> None:
    """Raise :class:`BrokerError` when the OpenTelemetry API is not installed."""
    try:
        for name in ("opentelemetry.trace", "opentelemetry.propagate"):
            importlib.import_module(name)
    except ImportError:
        raise BrokerError("tracing=True needs the OpenTelemetry API: pip install 'hyperbroker[otel]'") from None


def _version() -> str:
    from . import _core

    return str(_core.__version__)


def _as_is(item: object) -> tuple[dict[str, str] | None, bytes]:
    """An item already in wire form (header, body), for ``Engine.publish_many``."""
    return cast("tuple[dict[str, str] | None, bytes]", item)


class _HeaderGetter:
    """An OTel ``Getter`` over a message header that ignores the case of the key."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        v = carrier.get(key)
        if v is not None:
            return [v]
        low = key.lower()
        for k, val in carrier.items():
            if k.lower() == low:
                return [val]
        return None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class Tracing:
    """Spans of one connected broker (``address`` is its advertised ``host:port``)."""

    def __init__(self, address: str | None) -> None:
        require()
        import opentelemetry.propagate as propagate
        import opentelemetry.trace as trace
        from opentelemetry.propagators.textmap import Getter

        self._trace = trace
        self._set_span = trace.set_span_in_context
        self._inject = propagate.inject
        self._extract = propagate.extract
        getter_cls = type("HeaderGetter", (_HeaderGetter, Getter), {})
        self._getter = getter_cls()
        self._tracer = trace.get_tracer("hyperbroker", _version())
        self._producer = trace.SpanKind.PRODUCER
        self._consumer = trace.SpanKind.CONSUMER
        self._status_error = trace.StatusCode.ERROR
        server: dict[str, Any] = {}
        if address:
            host, _, port = address.rpartition(":")
            server["server.address"] = host.strip("[]")
            if port.isdigit():
                server["server.port"] = int(port)
        self._server = server

    def _attributes(self, topic: str, operation: str) -> dict[str, Any]:
        return {
            "messaging.system": SYSTEM,
            "messaging.destination.name": topic,
            "messaging.operation.type": operation,
            "messaging.operation.name": operation,
            **self._server,
        }

    # --- producer -------------------------------------------------------------------------------

    def publish(self, engine: _core.Engine, topic: str, message: object, header: dict[str, str] | None) -> bool:
        """Publish one message inside a ``send <topic>`` span; returns the congestion flag."""
        span = self._tracer.start_span(f"send {topic}", kind=self._producer, attributes=self._attributes(topic, "send"))
        try:
            carrier: dict[str, str] = dict(header) if header else {}
            # the span is never made current (nothing runs inside it): its context goes straight
            # into the header, which saves attaching and detaching a context per message
            self._inject(carrier, context=self._set_span(span))
            h, body = to_wire(message, carrier)
            span.set_attribute("messaging.message.body.size", len(body))
            return engine.publish(topic, h, body)
        except Exception as e:
            self._failed(span, e)
            raise
        finally:
            span.end()

    def publish_many(self, engine: _core.Engine, topic: str, messages: Iterable[object]) -> tuple[bool, int]:
        """Publish a batch inside one ``send <topic>`` span; returns (congested, count)."""
        span = self._tracer.start_span(f"send {topic}", kind=self._producer, attributes=self._attributes(topic, "send"))
        try:
            carrier: dict[str, str] = {}
            self._inject(carrier, context=self._set_span(span))
            items = [to_wire(m, carrier) for m in messages]
            span.set_attribute("messaging.batch.message_count", len(items))
            return engine.publish_many(topic, items, _as_is)
        except Exception as e:
            self._failed(span, e)
            raise
        finally:
            span.end()

    # --- consumer -------------------------------------------------------------------------------

    def wrap(self, topic: str, queue: str | None, handler: Handler) -> Handler:
        """``handler`` inside a ``process <topic>`` span per call (async stays async)."""
        attrs = self._attributes(topic, "process")
        if queue is not None:
            attrs["messaging.consumer.group.name"] = queue
        name = f"process {topic}"
        is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004
        )

        if is_async:

            async def traced_async(ev: Event) -> Any:
                span = self._start(name, attrs, ev)
                with self._trace.use_span(
                    span, end_on_exit=True, record_exception=False, set_status_on_exception=False
                ):
                    try:
                        return await handler(ev)
                    except Exception as e:
                        self._failed(span, e)
                        raise

            return traced_async

        def traced(ev: Event) -> Any:
            span = self._start(name, attrs, ev)
            with self._trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                try:
                    r = handler(ev)
                except Exception as e:
                    self._failed(span, e)
                    span.end()
                    raise
            if r is not None and inspect.isawaitable(r):
                return self._finish_later(span, r)
            span.end()
            return r

        return traced

    def _start(self, name: str, attrs: dict[str, Any], ev: Event) -> Any:
        msg = ev.message
        parent = self._extract(msg.header, getter=self._getter)
        span = self._tracer.start_span(name, context=parent, kind=self._consumer, attributes=attrs)
        span.set_attribute("messaging.message.body.size", len(msg.body))
        return span

    def _failed(self, span: Any, e: BaseException) -> None:
        span.set_attribute("error.type", type(e).__qualname__)
        span.record_exception(e)
        span.set_status(self._status_error, str(e) or type(e).__name__)

    async def _finish_later(self, span: Any, awaitable: Awaitable[Any]) -> Any:
        with self._trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                return await awaitable
            except Exception as e:
                self._failed(span, e)
                raise
