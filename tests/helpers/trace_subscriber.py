"""A subscriber process for tests/test_tracing.py: a traced broker in its own process.

Usage: ``python trace_subscriber.py TOPIC QUEUE|- COUNT``. Subscribes to TOPIC (in queue QUEUE
unless ``-``) with ``Broker(tracing=True)`` and the OpenTelemetry SDK exporting to memory;
prints one JSON line ``{"address": ..., "id": ...}`` once subscribed (the parent registers that
node in its own registry), then, once COUNT consumer spans have ended, one JSON line with every
finished span, and exits. A message whose body is ``fail`` makes the handler raise ValueError.
Exits after 30 s whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hyperbroker import Broker, Event, MemoryRegistry


def span_json(s: Any) -> dict[str, Any]:
    ctx = s.get_span_context()
    return {
        "name": s.name,
        "kind": s.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(s.parent.span_id, "016x") if s.parent is not None else None,
        "parent_remote": bool(s.parent.is_remote) if s.parent is not None else None,
        "attributes": dict(s.attributes or {}),
        "status": s.status.status_code.name,
    }


async def main(topic: str, queue: str | None, count: int) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    def handler(ev: Event) -> None:
        if ev.message.body == b"fail":
            raise ValueError("asked to fail")

    async with Broker(address="127.0.0.1:0", registry=MemoryRegistry(), tracing=True, disconnect_timeout=0) as b:
        sub = await b.subscribe(topic, handler, queue=queue)
        print(json.dumps({"address": b.advertised_address, "id": sub.id}), flush=True)
        while len(exporter.get_finished_spans()) < count:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # anything extra would be reported too
        print(json.dumps([span_json(s) for s in exporter.get_finished_spans()]), flush=True)


if __name__ == "__main__":
    t, q, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(asyncio.wait_for(main(t, None if q == "-" else q, n), 30))
