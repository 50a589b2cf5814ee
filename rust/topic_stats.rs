//! Per-topic counters and latency histograms (`TopicCounters`), and the bounded table that hands
//! them out (`TopicStats`).
//!
//! Hot-path cost: a `TopicCounters` is an `Arc` of atomics. The publisher reaches it through the
//! route it looks up anyway (every `NodeLink` of a topic carries the topic's counters), the
//! endpoint through the `Subscription` it checks anyway; the table (a lock and a map lookup) is
//! consulted only when a route or subscription is made and for a message with no route (which
//! goes to the backlog). Bounded: at most `max_topics` topics get their own counters; the rest
//! share one entry reported as `OTHER`. Entries are never forgotten (the cap bounds the memory).
//!
//! Histograms are fixed-bucket (Prometheus style, in seconds), observed only when timing is on
//! (`metrics=True`): without it no clock is read per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::stats::Drop;

/// The label of the topics past the cap.
pub const OTHER: &str = "_other";

/// Upper bounds (seconds) of the histogram buckets; the implicit last one is +Inf.
pub const BUCKETS: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

const BUCKET_NANOS: [u64; 15] = {
    let mut out = [0u64; 15];
    let mut i = 0;
    while i < BUCKETS.len() {
        out[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// A fixed-bucket histogram of durations; lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// per bucket (not cumulative); the last slot is +Inf
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bucket of `BUCKETS`, the total count
/// (the +Inf bucket) and the sum in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let n = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS.partition_point(|&b| b < n);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut s = HistogramSnapshot::default();
        self.add_to(&mut s);
        s
    }

    /// Add this histogram's counts to `s` (for aggregating several topics).
    pub fn add_to(&self, s: &mut HistogramSnapshot) {
        if s.cumulative.is_empty() {
            s.cumulative = vec![0; BUCKETS.len()];
        }
        let mut acc = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c.load(Relaxed);
            if let Some(slot) = s.cumulative.get_mut(i) {
                *slot += acc;
            }
        }
        s.count += acc;
        s.sum += self.sum_nanos.load(Relaxed) as f64 / 1e9;
    }
}

/// The counters of one topic (or of every topic past the cap).
#[derive(Debug, Default)]
pub struct TopicCounters {
    /// messages accepted by `publish`
    pub published: AtomicU64,
    /// node deliveries acknowledged (a broadcast to 3 nodes counts 3)
    pub delivered: AtomicU64,
    /// node deliveries sent again after a failure
    pub retried: AtomicU64,
    /// drops counted here, by reason (backlog overflows are read from the backlog itself)
    pub drop_node_queue_overflow: AtomicU64,
    pub drop_left_while_others_have_it: AtomicU64,
    pub drop_disconnect: AtomicU64,
    /// envelopes received by this broker's endpoint for a subscription of the topic
    pub received: AtomicU64,
    /// handler invocations of a subscription of the topic that failed
    pub handler_errors: AtomicU64,
    /// publish to acknowledgement by a node (backlog time included)
    pub delivery: Histogram,
    /// endpoint side: event handed to the asyncio loop until its outcome came back (the handler
    /// plus the loop's wake-up latency; for a batched request, until the whole batch is done)
    pub handler: Histogram,
}

impl TopicCounters {
    pub fn add(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.fetch_add(n, Relaxed);
        }
    }

    /// Count `n` drops of this topic (backlog overflows are not counted here; see module doc).
    pub fn count_drop(&self, reason: Drop, n: u64) {
        let c = match reason {
            Drop::BacklogOverflow => return,
            Drop::NodeQueueOverflow => &self.drop_node_queue_overflow,
            Drop::LeftWhileOthersHaveIt => &self.drop_left_while_others_have_it,
            Drop::Disconnect => &self.drop_disconnect,
        };
        Self::add(c, n);
    }
}

/// A tracked topic and its counters.
pub type TopicEntry = (Arc<str>, Arc<TopicCounters>);

/// Every topic's counters, at most `max_topics` of them, the rest under `OTHER`.
pub struct TopicStats {
    map: RwLock<HashMap<Arc<str>, Arc<TopicCounters>>>,
    other: Arc<TopicCounters>,
    max_topics: usize,
    timing: bool,
}

impl Default for TopicStats {
    fn default() -> Self {
        TopicStats::new(1000, false)
    }
}

impl TopicStats {
    /// `timing`: observe the latency histograms (reads the clock per message).
    pub fn new(max_topics: usize, timing: bool) -> Self {
        TopicStats { map: RwLock::new(HashMap::new()), other: Arc::default(), max_topics, timing }
    }

    pub fn timing(&self) -> bool {
        self.timing
    }

    /// The counters of `topic` (made on first use; `OTHER`'s when the table is full).
    pub fn get(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self.map.read().get(topic) {
            return c.clone();
        }
        let mut map = self.map.write();
        if let Some(c) = map.get(topic) {
            return c.clone();
        }
        if map.len() >= self.max_topics {
            return self.other.clone();
        }
        let c: Arc<TopicCounters> = Arc::default();
        map.insert(Arc::from(topic), c.clone());
        c
    }

    /// Whether `topic` has counters of its own (otherwise it is reported under `OTHER`).
    pub fn is_tracked(&self, topic: &str) -> bool {
        self.map.read().contains_key(topic)
    }

    /// Every tracked topic and its counters, plus (`OTHER`, the shared counters).
    pub fn entries(&self) -> (Vec<TopicEntry>, Arc<TopicCounters>) {
        let map = self.map.read();
        (map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(), self.other.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_le() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500)); // exactly 0.0005: in the first bucket (le)
        h.observe(Duration::from_millis(3)); // 0.005 bucket
        h.observe(Duration::from_secs(60)); // +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[2], 1, "0.0025 holds only the first");
        assert_eq!(s.cumulative[3], 2);
        assert_eq!(*s.cumulative.last().unwrap(), 2, "60 s is over the last bound");
        assert!((s.sum - 60.0035).abs() < 1e-9);
    }

    #[test]
    fn topics_past_the_cap_share_other() {
        let t = TopicStats::new(2, false);
        let a = t.get("a");
        assert!(Arc::ptr_eq(&a, &t.get("a")));
        let _b = t.get("b");
        let c = t.get("c");
        let d = t.get("d");
        assert!(Arc::ptr_eq(&c, &d), "both past the cap: the shared entry");
        assert!(t.is_tracked("a") && t.is_tracked("b") && !t.is_tracked("c"));
        let (entries, other) = t.entries();
        assert_eq!(entries.len(), 2);
        assert!(Arc::ptr_eq(&other, &c));
    }

    #[test]
    fn backlog_overflow_is_not_counted_here() {
        let c = TopicCounters::default();
        c.count_drop(Drop::BacklogOverflow, 3);
        c.count_drop(Drop::NodeQueueOverflow, 2);
        c.count_drop(Drop::Disconnect, 1);
        assert_eq!(c.drop_node_queue_overflow.load(Relaxed), 2);
        assert_eq!(c.drop_disconnect.load(Relaxed), 1);
    }
}
