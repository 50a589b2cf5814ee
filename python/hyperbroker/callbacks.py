"""Operational events of one broker: the ``on_error`` / ``on_drop`` / ``on_route_change`` /
``on_evict`` callbacks and the rate-limited ``hyperbroker`` log of the same events.

The engine sums events in Rust (drops per topic and reason, evictions, re-admissions, route
changes, the latest delivery error) and hands them over with one wake-up (``Engine.take()``'s
fifth list): :meth:`Events.handle` then calls each callback once per (topic, reason), node or
topic per wake-up, never once per message. Delivery errors reach ``on_error`` at most once per
``ERROR_INTERVAL`` (the latest one, trailing). The log says what happened once per event kind
per ``LOG_INTERVAL`` with summed counts. Callbacks run on the event loop; an exception in one is
logged, never raised; an async callback runs as a task.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import BrokerError

if TYPE_CHECKING:
    from .options import BrokerOptions

__all__ = ["Events", "RateLimitedLog"]

log = logging.getLogger("hyperbroker")

#: seconds between two log records of one event kind (drops, evictions, re-adds, route changes)
LOG_INTERVAL = 10.0
#: seconds between two delivery errors passed to ``on_error``
ERROR_INTERVAL = 1.0
#: keys named in one log record; the rest are summed as "and N more"
_LOG_KEYS = 5

_LEVEL = {"drop": logging.WARNING, "evict": logging.WARNING, "readd": logging.INFO, "route": logging.INFO}
_TITLE = {
    "drop": "dropped {total} message(s)",
    "evict": "evicted {total} node(s) that stopped answering",
    "readd": "re-added {total} evicted node(s) that answer again",
    "route": "{total} route change(s)",
}


class RateLimitedLog:
    """One record per event kind per ``interval`` seconds: the first event of a quiet kind is
    logged at once; what follows within the interval is summed and logged when it ends."""

    def __init__(self, interval: float | None = None) -> None:
        self._interval = LOG_INTERVAL if interval is None else interval
        self._next: dict[str, float] = {}
        self._pending: dict[str, dict[str, int]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def add(self, kind: str, key: str, n: int = 1) -> None:
        counts = self._pending.setdefault(kind, {})
        counts[key] = counts.get(key, 0) + n
        if kind in self._timers:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = self._next.get(kind, 0.0)
        if now >= due:
            self._emit(kind, now)
        else:
            self._timers[kind] = loop.call_at(due, self._on_timer, kind)

    def _on_timer(self, kind: str) -> None:
        self._timers.pop(kind, None)
        self._emit(kind, asyncio.get_running_loop().time())

    def _emit(self, kind: str, now: float) -> None:
        counts = self._pending.pop(kind, None)
        if not counts:
            return
        self._next[kind] = now + self._interval
        items = sorted(counts.items(), key=lambda kv: -kv[1])
        total = sum(counts.values())
        named = ", ".join(f"{k}: {v}" if kind == "drop" or v > 1 else k for k, v in items[:_LOG_KEYS])
        more = f" and {len(items) - _LOG_KEYS} more" if len(items) > _LOG_KEYS else ""
        log.log(_LEVEL.get(kind, logging.INFO), "%s (%s%s)", _TITLE[kind].format(total=total), named, more)

    def flush(self) -> None:
        """Log what is pending now (at disconnect)."""
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        for kind in list(self._pending):
            self._emit(kind, 0.0)


class Events:
    """Turns the engine's notices into callback calls and log records (on the loop)."""

    def __init__(self, options: BrokerOptions, log_interval: float | None = None) -> None:
        self._o = options
        self._log = RateLimitedLog(log_interval)
        self._routes: dict[str, int] = {}
        self._error_due = 0.0
        self._error_later: asyncio.TimerHandle | None = None
        self._error_latest: BrokerError | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def handle(self, notices: list[tuple[Any, ...]]) -> None:
        """One wake-up's notices (``Engine.take()``)."""
        o = self._o
        for n in notices:
            kind = n[0]
            if kind == "drop":
                _, topic, reason, count = n
                self._log.add("drop", f"{topic!r} {reason}", count)
                if o.on_drop is not None:
                    self.call("on_drop", o.on_drop, topic, count, reason)
            elif kind == "evict":
                _, address, topic, reason = n
                self._log.add("evict", f"{address} ({topic!r}, {reason})")
                if o.on_evict is not None:
                    self.call("on_evict", o.on_evict, address, reason)
            elif kind == "readd":
                _, address, topic = n
                self._log.add("readd", f"{address} ({topic!r})")
            elif kind == "route":
                _, topic, nodes = n
                self.route(topic, nodes)
            elif kind == "error":
                _, text, count = n
                self.delivery_error(text, count)
            elif kind == "lost":
                log.warning("%d node event(s) were too many to report one by one", n[1])

    def route(self, topic: str, nodes: int) -> None:
        if self._routes.get(topic, 0) == nodes:
            return
        if nodes:
            self._routes[topic] = nodes
        else:
            self._routes.pop(topic, None)
        self._log.add("route", f"{topic!r} -> {nodes}")
        if self._o.on_route_change is not None:
            self.call("on_route_change", self._o.on_route_change, topic, nodes)

    def delivery_error(self, text: str, count: int = 1) -> None:
        """A delivery error (rate-limited: at most one ``on_error`` per ``ERROR_INTERVAL``)."""
        if self._o.on_error is None:
            return
        suffix = f" ({count} errors since the last report)" if count > 1 else ""
        self._error_latest = BrokerError(f"delivery: {text}{suffix}")
        if self._error_later is not None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._error_due:
            self._send_error()
        else:
            self._error_later = loop.call_at(self._error_due, self._send_error)

    def _send_error(self) -> None:
        self._error_later = None
        err, self._error_latest = self._error_latest, None
        if err is not None and self._o.on_error is not None:
            self._error_due = asyncio.get_running_loop().time() + ERROR_INTERVAL
            self.call("on_error", self._o.on_error, err)

    def error(self, err: BrokerError) -> None:
        """An error of background work (registry watch, heartbeat, dead-letter publish)."""
        if self._o.on_error is not None:
            self.call("on_error", self._o.on_error, err)

    def call(self, name: str, fn: Callable[..., object], *args: object) -> None:
        """Run a user callback on the loop; an exception in it is logged, never raised."""
        try:
            r = fn(*args)
        except Exception:
            log.exception("%s raised", name)
            return
        if inspect.isawaitable(r):

            async def run(aw: Any = r) -> None:
                try:
                    await aw
                except Exception:
                    log.exception("%s raised", name)

            t = asyncio.get_running_loop().create_task(run())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Log what is pending; forget the delivery error not yet reported."""
        self._log.flush()
        if self._error_later is not None:
            self._error_later.cancel()
            self._error_later = None
        self._routes.clear()
