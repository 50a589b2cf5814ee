"""A broker's metrics for services that already serve Prometheus metrics with prometheus_client
(the optional extra ``hyperbroker[metrics]``), and the reading of a ``/metrics`` page.

``register(broker)`` adds a custom collector to a ``CollectorRegistry``: at every scrape it reads
the broker's counters once (the same text ``GET /metrics`` serves, rendered by the Rust engine,
so the two can never disagree) and yields them as Counter/Gauge/HistogramMetricFamily objects.
``Broker(metrics=True)`` is not needed for it; without it the latency histograms stay empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .broker import Broker

__all__ = ["BrokerCollector", "parse", "register"]

_MISSING = "prometheus_client is needed for this: pip install 'hyperbroker[metrics]'"


def _client() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.parser
    except ImportError as e:  # pragma: no cover - the test extra installs it
        from .errors import BrokerError

        raise BrokerError(_MISSING) from e
    return prometheus_client


def parse(text: str) -> Iterable[Any]:
    """The metric families of a Prometheus text page (prometheus_client's parser)."""
    return _client().parser.text_string_to_metric_families(text)  # type: ignore[no-any-return]


def _typed(family: Any) -> Any:
    """A parsed family as the Counter/Gauge/HistogramMetricFamily a collector yields."""
    core = _client().core
    samples = family.samples
    label_names = sorted({k for s in samples for k in s.labels if k != "le"})
    if family.type == "counter":
        out = core.CounterMetricFamily(family.name, family.documentation, labels=label_names)
        for s in samples:
            if s.name.endswith("_total"):
                out.add_metric([s.labels.get(k, "") for k in label_names], s.value)
        return out
    if family.type == "gauge":
        out = core.GaugeMetricFamily(family.name, family.documentation, labels=label_names)
        for s in samples:
            out.add_metric([s.labels.get(k, "") for k in label_names], s.value)
        return out
    if family.type == "histogram":
        out = core.HistogramMetricFamily(family.name, family.documentation, labels=label_names)
        series: dict[tuple[str, ...], dict[str, Any]] = {}
        for s in samples:
            key = tuple(s.labels.get(k, "") for k in label_names)
            d = series.setdefault(key, {"buckets": [], "sum": 0.0})
            if s.name.endswith("_bucket"):
                d["buckets"].append((s.labels["le"], s.value))
            elif s.name.endswith("_sum"):
                d["sum"] = s.value
        for key, d in series.items():
            out.add_metric(list(key), d["buckets"], d["sum"])
        return out
    return family  # pragma: no cover - the engine renders only the three types above


class BrokerCollector:
    """A prometheus_client collector reading one broker at scrape time."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Any]:
        text = self._broker.metrics_text()
        if not text:
            return  # not connected: nothing to report
        for family in parse(text):
            yield _typed(family)

    def describe(self) -> list[Any]:
        # no up-front description: registering does not scrape the broker
        return []


def register(broker: Broker, registry: Any = None) -> BrokerCollector:
    """Add ``broker``'s metrics to ``registry`` (default: prometheus_client's global
    ``REGISTRY``); returns the collector (``registry.unregister(collector)`` removes it)."""
    client = _client()
    collector = BrokerCollector(broker)
    (registry if registry is not None else client.REGISTRY).register(collector)
    return collector
