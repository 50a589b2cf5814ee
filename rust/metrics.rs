//! Reading the counters at scrape time (`Exporter`): the per-topic rows of `topic_stats()`, the
//! Prometheus text exposition (format 0.0.4) served on `GET /metrics`, and the counts of
//! `GET /healthz`.
//!
//! Nothing here runs per message: a scrape reads the atomics of `Stats` and `TopicStats`, the
//! backlog's per-topic sizes and the routes' node counts. The exposition is encoded by the
//! `prometheus` crate's `TextEncoder` (escaping of help text and label values included) from
//! metric families built here; topics past `metrics_max_topics` appear as `topic="_other"`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::publisher::Publisher;
use crate::stats::Stats;
use crate::topic_stats::{HistogramSnapshot, TopicCounters, BUCKETS, OTHER};

/// The content type of `GET /metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Drop reasons, in the order of `TopicRow::drops` (named as in `stats()["dropped_by_reason"]`).
pub const DROP_REASONS: [&str; 4] = ["backlog_overflow", "node_queue_overflow", "left_while_others_have_it", "disconnect"];

/// One topic's counters and gauges at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicRow {
    pub topic: String,
    pub published: u64,
    pub delivered: u64,
    pub retried: u64,
    /// by reason, in the order of `DROP_REASONS`
    pub drops: [u64; 4],
    pub backlog: u64,
    pub backlog_bytes: u64,
    pub nodes: u64,
    pub received: u64,
    pub handler_errors: u64,
    pub delivery: HistogramSnapshot,
    pub handler: HistogramSnapshot,
}

impl TopicRow {
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    fn add_counters(&mut self, c: &TopicCounters) {
        self.published += c.published.load(Relaxed);
        self.delivered += c.delivered.load(Relaxed);
        self.retried += c.retried.load(Relaxed);
        self.drops[1] += c.drop_node_queue_overflow.load(Relaxed);
        self.drops[2] += c.drop_left_while_others_have_it.load(Relaxed);
        self.drops[3] += c.drop_disconnect.load(Relaxed);
        self.received += c.received.load(Relaxed);
        self.handler_errors += c.handler_errors.load(Relaxed);
        c.delivery.add_to(&mut self.delivery);
        c.handler.add_to(&mut self.handler);
    }

    fn is_zero(&self) -> bool {
        let counts = [self.published, self.delivered, self.retried, self.backlog, self.backlog_bytes, self.nodes, self.received];
        counts.iter().chain(&self.drops).all(|&n| n == 0) && self.handler_errors == 0 && self.delivery.count == 0 && self.handler.count == 0
    }
}

/// Reads one engine's counters for `topic_stats()`, `/metrics` and `/healthz`.
pub struct Exporter {
    stats: Arc<Stats>,
    publisher: Arc<Publisher>,
    /// serve `GET /metrics` (the `metrics` option)
    pub serve_metrics: bool,
}

impl Exporter {
    pub fn new(stats: Arc<Stats>, publisher: Arc<Publisher>, serve_metrics: bool) -> Self {
        Exporter { stats, publisher, serve_metrics }
    }

    /// Every topic with counters of its own, sorted, then `OTHER` when anything was counted
    /// under it.
    pub fn topics(&self) -> Vec<TopicRow> {
        self.publisher.settle();
        let (entries, other) = self.publisher.topic_stats().entries();
        let mut rows: BTreeMap<String, TopicRow> = BTreeMap::new();
        for (t, c) in &entries {
            let row = rows.entry(t.to_string()).or_insert_with(|| TopicRow { topic: t.to_string(), ..Default::default() });
            row.add_counters(c);
        }
        let mut rest = TopicRow { topic: OTHER.to_string(), ..Default::default() };
        rest.add_counters(&other);
        for (t, n) in self.publisher.routes().node_counts() {
            rows.get_mut(&t).unwrap_or(&mut rest).nodes += n as u64;
        }
        for (t, len, bytes, dropped) in self.publisher.backlog.per_topic() {
            let row = rows.get_mut(&t).unwrap_or(&mut rest);
            row.backlog += len as u64;
            row.backlog_bytes += bytes as u64;
            row.drops[0] += dropped;
        }
        let mut out: Vec<TopicRow> = rows.into_values().collect();
        for row in &mut out {
            fill_empty(&mut row.delivery);
            fill_empty(&mut row.handler);
        }
        fill_empty(&mut rest.delivery);
        fill_empty(&mut rest.handler);
        if !rest.is_zero() {
            out.push(rest);
        }
        out
    }

    /// Whether the latency histograms are observed (the `metrics` option).
    pub fn timing(&self) -> bool {
        self.publisher.topic_stats().timing()
    }

    /// (routed topics, messages in the backlog), for `/healthz`.
    pub fn health_counts(&self) -> (usize, usize) {
        self.publisher.settle();
        (self.publisher.routes().node_counts().len(), self.publisher.backlog.total_len())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let rows = self.topics();
        let s = &self.stats;
        let mut fams = vec![
            per_topic("hyperbroker_published_messages_total", "Messages accepted by publish.", MetricType::COUNTER, &rows, |r| r.published),
            per_topic(
                "hyperbroker_delivered_messages_total",
                "Node deliveries acknowledged (a broadcast to 3 nodes counts 3).",
                MetricType::COUNTER,
                &rows,
                |r| r.delivered,
            ),
            dropped_family(&rows),
            per_topic("hyperbroker_retried_messages_total", "Node deliveries sent again after a failure.", MetricType::COUNTER, &rows, |r| r.retried),
            single(
                "hyperbroker_dead_lettered_messages_total",
                "Messages given up after max_deliveries failed handler attempts.",
                MetricType::COUNTER,
                s.dead_lettered.load(Relaxed) as f64,
            ),
            per_topic("hyperbroker_backlog_messages", "Messages waiting in the backlog.", MetricType::GAUGE, &rows, |r| r.backlog),
            single("hyperbroker_backlog_bytes", "Bytes waiting in the backlog.", MetricType::GAUGE, self.publisher.backlog.total_bytes() as f64),
            per_topic("hyperbroker_route_nodes", "Subscriber nodes routed for the topic.", MetricType::GAUGE, &rows, |r| r.nodes),
            per_topic(
                "hyperbroker_received_messages_total",
                "Envelopes received by this broker's endpoint for a subscription of the topic.",
                MetricType::COUNTER,
                &rows,
                |r| r.received,
            ),
            per_topic(
                "hyperbroker_handler_errors_total",
                "Handler invocations of a subscription of the topic that failed.",
                MetricType::COUNTER,
                &rows,
                |r| r.handler_errors,
            ),
            single(
                "hyperbroker_evicted_nodes_total",
                "Nodes taken out of their route after repeated refused connections.",
                MetricType::COUNTER,
                s.evicted.load(Relaxed) as f64,
            ),
            single("hyperbroker_in_flight_messages", "Node deliveries queued or on the wire.", MetricType::GAUGE, s.in_flight.load(Relaxed) as f64),
            single("hyperbroker_rejected_requests_total", "Requests the endpoint refused with a 4xx.", MetricType::COUNTER, s.rejected.load(Relaxed) as f64),
            histogram_family(
                "hyperbroker_delivery_duration_seconds",
                "Publish to acknowledgement by a subscriber node (backlog time included).",
                &rows,
                |r| &r.delivery,
            ),
            histogram_family(
                "hyperbroker_handler_duration_seconds",
                "Event handed to the asyncio loop until its handler's outcome came back (handler time plus loop wake-up; a batched request: until its whole batch is done).",
                &rows,
                |r| &r.handler,
            ),
        ];
        fams.retain(|f| !f.get_metric().is_empty());
        let mut buf = Vec::new();
        // the encoder fails only for a family without metrics or without a name: none here
        let _ = TextEncoder::new().encode(&fams, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A histogram nobody observed still has its buckets (all zero).
fn fill_empty(h: &mut HistogramSnapshot) {
    if h.cumulative.is_empty() {
        h.cumulative = vec![0; BUCKETS.len()];
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn sample(labels: Vec<LabelPair>, kind: MetricType, v: f64) -> Metric {
    let mut m = Metric::from_label(labels);
    if kind == MetricType::GAUGE {
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    } else {
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
    }
    m
}

fn single(name: &str, help: &str, kind: MetricType, v: f64) -> MetricFamily {
    family(name, help, kind, vec![sample(Vec::new(), kind, v)])
}

fn per_topic(name: &str, help: &str, kind: MetricType, rows: &[TopicRow], value: impl Fn(&TopicRow) -> u64) -> MetricFamily {
    let metrics = rows.iter().map(|r| sample(vec![label("topic", &r.topic)], kind, value(r) as f64)).collect();
    family(name, help, kind, metrics)
}

fn dropped_family(rows: &[TopicRow]) -> MetricFamily {
    let mut metrics = Vec::new();
    for r in rows {
        for (i, reason) in DROP_REASONS.iter().enumerate() {
            metrics.push(sample(vec![label("topic", &r.topic), label("reason", reason)], MetricType::COUNTER, r.drops[i] as f64));
        }
    }
    family("hyperbroker_dropped_messages_total", "Messages dropped, by topic and reason.", MetricType::COUNTER, metrics)
}

fn histogram_family(name: &str, help: &str, rows: &[TopicRow], h: impl Fn(&TopicRow) -> &HistogramSnapshot) -> MetricFamily {
    let metrics = rows
        .iter()
        .map(|r| {
            let s = h(r);
            let mut hist = Histogram::default();
            hist.set_sample_count(s.count);
            hist.set_sample_sum(s.sum);
            hist.set_bucket(
                BUCKETS
                    .iter()
                    .zip(&s.cumulative)
                    .map(|(le, c)| {
                        let mut b = Bucket::default();
                        b.set_upper_bound(*le);
                        b.set_cumulative_count(*c);
                        b
                    })
                    .collect(),
            );
            let mut m = Metric::from_label(vec![label("topic", &r.topic)]);
            m.set_histogram(hist);
            m
        })
        .collect();
    family(name, help, MetricType::HISTOGRAM, metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(topic: &str) -> TopicRow {
        let mut r = TopicRow { topic: topic.into(), published: 3, ..Default::default() };
        fill_empty(&mut r.delivery);
        fill_empty(&mut r.handler);
        r
    }

    fn exporter(max_topics: usize) -> (tokio::runtime::Runtime, Arc<Publisher>, Exporter) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let cfg = crate::config::PubConfig {
            backlog: 2,
            backlog_bytes: 1 << 20,
            node_queue: 10,
            max_batch: 10,
            max_batch_bytes: 1 << 20,
            retry_min: std::time::Duration::from_millis(5),
            retry_max: std::time::Duration::from_millis(10),
            request_timeout: std::time::Duration::from_secs(1),
            evict_after: 2,
            node_inflight: 1,
            max_deliveries: None,
            pool_idle_timeout: crate::client::POOL_IDLE_TIMEOUT,
        };
        let stats = Arc::new(Stats::default());
        let topics = Arc::new(crate::topic_stats::TopicStats::new(max_topics, true));
        let p = Publisher::new(cfg, stats.clone(), rt.handle().clone(), topics).unwrap();
        let e = Exporter::new(stats, p.clone(), true);
        (rt, p, e)
    }

    #[test]
    fn rows_per_topic_with_the_rest_under_other() {
        let (_rt, p, e) = exporter(1);
        for (t, n) in [("a", 3), ("b", 1), ("c", 2)] {
            for _ in 0..n {
                p.publish(Arc::from(t), crate::payload::Payload::new(t, std::iter::empty(), b"xyz"));
            }
        }
        let rows = e.topics();
        assert_eq!(rows.iter().map(|r| r.topic.as_str()).collect::<Vec<_>>(), ["a", OTHER]);
        let (a, other) = (&rows[0], &rows[1]);
        // backlog=2 per topic: a keeps 2 of 3 (1 dropped), b 1, c 2
        let w = crate::payload::Payload::new("a", std::iter::empty(), b"xyz").frame_len() as u64;
        assert_eq!((a.published, a.backlog, a.backlog_bytes, a.drops[0]), (3, 2, 2 * w, 1));
        assert_eq!((other.published, other.backlog, other.drops[0]), (3, 3, 0));
        assert_eq!(a.dropped() + other.dropped(), p.stats().dropped.load(Relaxed));
        let text = e.render();
        assert!(text.contains("hyperbroker_published_messages_total{topic=\"_other\"} 3"), "{text}");
        assert!(text.contains("hyperbroker_dropped_messages_total{topic=\"a\",reason=\"backlog_overflow\"} 1"), "{text}");
        assert!(text.contains("# TYPE hyperbroker_delivery_duration_seconds histogram"), "{text}");
        p.close();
        let rows = e.topics();
        assert_eq!(rows[0].drops[3], 2, "closing drops what waited, counted per topic");
        assert_eq!(rows[1].drops[3], 3);
    }

    #[test]
    fn label_values_are_escaped() {
        let f = per_topic("x_total", "help", MetricType::COUNTER, &[row("a\"b\\c\nd")], |r| r.published);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&[f], &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(r#"x_total{topic="a\"b\\c\nd"} 3"#), "{text}");
        assert!(text.contains("# TYPE x_total counter"), "{text}");
    }

    #[test]
    fn histograms_have_every_bucket_and_inf() {
        let mut r = row("t");
        r.delivery = HistogramSnapshot { cumulative: vec![1; BUCKETS.len()], count: 2, sum: 40.5 };
        let f = histogram_family("d_seconds", "h", &[r], |r| &r.delivery);
        let mut buf = Vec::new();
        TextEncoder::new().encode(&[f], &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains(r#"d_seconds_bucket{topic="t",le="0.0005"} 1"#), "{text}");
        assert!(text.contains(r#"d_seconds_bucket{topic="t",le="+Inf"} 2"#), "{text}");
        assert!(text.contains(r#"d_seconds_sum{topic="t"} 40.5"#), "{text}");
        assert!(text.contains(r#"d_seconds_count{topic="t"} 2"#), "{text}");
    }

    #[test]
    fn an_all_zero_other_row_is_zero() {
        assert!(!row("_other").is_zero(), "published 3 is not zero");
        let mut z = TopicRow { topic: OTHER.into(), ..Default::default() };
        fill_empty(&mut z.delivery);
        assert!(z.is_zero());
    }
}
