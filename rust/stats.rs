//! Exact counters of one broker. Publisher and endpoint bump them; `snapshot` reads them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

/// Why a message was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    BacklogOverflow,
    NodeQueueOverflow,
    LeftWhileOthersHaveIt,
    Disconnect,
}

#[derive(Default)]
pub struct Stats {
    /// messages accepted by `publish`
    pub published: AtomicU64,
    /// node deliveries acknowledged with 200 (a broadcast to 3 nodes counts 3)
    pub delivered: AtomicU64,
    /// node deliveries given up for good (the peer refused the message as bad: 400, 413, ...)
    pub failed: AtomicU64,
    /// node deliveries sent again after a failure
    pub retried: AtomicU64,
    /// messages parked in the backlog (no route, or every node failing)
    pub backlogged: AtomicU64,
    /// messages dropped, for any reason (the sum of the `drop_*` counters)
    pub dropped: AtomicU64,
    /// dropped: the backlog was full (its oldest entry made room)
    pub drop_backlog_overflow: AtomicU64,
    /// dropped: a node queue was full (its oldest entry made room)
    pub drop_node_queue_overflow: AtomicU64,
    /// dropped: a broadcast subscription left while another subscription of the topic has or
    /// will get the message
    pub drop_left_while_others_have_it: AtomicU64,
    /// dropped: still queued or in the backlog when the broker disconnected
    pub drop_disconnect: AtomicU64,
    /// messages handed to `on_undeliverable` / the dead-letter topic after `max_deliveries`
    pub dead_lettered: AtomicU64,
    /// envelopes received by this broker's endpoint for a known subscriber
    pub received: AtomicU64,
    /// handler invocations that raised
    pub handler_errors: AtomicU64,
    /// node deliveries queued or on the wire right now
    pub in_flight: AtomicU64,
    /// HTTP requests refused by the endpoint with a 4xx
    pub rejected: AtomicU64,
    /// deliveries a remote subscriber's handler failed (it answered 500); they are retried
    pub remote_handler_errors: AtomicU64,
    /// nodes taken out of their route after repeated refused connections
    pub evicted: AtomicU64,
    /// incoming TLS handshakes that failed (plain HTTP to an HTTPS endpoint, bad client cert)
    pub tls_handshake_failures: AtomicU64,
    /// connections the endpoint closed at once because a connection cap was reached
    pub connections_refused: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Stats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn sub(c: &AtomicU64, n: u64) {
        // saturating: never wraps even if a bug double-counts
        let _ = c.fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(n)));
    }

    /// Count `n` dropped messages, by reason.
    pub fn count_drop(&self, reason: Drop, n: u64) {
        if n == 0 {
            return;
        }
        let c = match reason {
            Drop::BacklogOverflow => &self.drop_backlog_overflow,
            Drop::NodeQueueOverflow => &self.drop_node_queue_overflow,
            Drop::LeftWhileOthersHaveIt => &self.drop_left_while_others_have_it,
            Drop::Disconnect => &self.drop_disconnect,
        };
        Self::add(c, n);
        Self::add(&self.dropped, n);
    }

    /// Drop counts by reason, named as in `stats()["dropped_by_reason"]`.
    pub fn drops_by_reason(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("backlog_overflow", self.drop_backlog_overflow.load(Relaxed)),
            ("node_queue_overflow", self.drop_node_queue_overflow.load(Relaxed)),
            ("left_while_others_have_it", self.drop_left_while_others_have_it.load(Relaxed)),
            ("disconnect", self.drop_disconnect.load(Relaxed)),
        ]
    }

    pub fn set_error(&self, e: String) {
        *self.last_error.lock() = Some(e);
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("published", self.published.load(Relaxed)),
            ("delivered", self.delivered.load(Relaxed)),
            ("failed", self.failed.load(Relaxed)),
            ("retried", self.retried.load(Relaxed)),
            ("backlogged", self.backlogged.load(Relaxed)),
            ("dropped", self.dropped.load(Relaxed)),
            ("received", self.received.load(Relaxed)),
            ("handler_errors", self.handler_errors.load(Relaxed)),
            ("in_flight", self.in_flight.load(Relaxed)),
            ("rejected", self.rejected.load(Relaxed)),
            ("remote_handler_errors", self.remote_handler_errors.load(Relaxed)),
            ("evicted", self.evicted.load(Relaxed)),
            ("tls_handshake_failures", self.tls_handshake_failures.load(Relaxed)),
            ("dead_lettered", self.dead_lettered.load(Relaxed)),
            ("connections_refused", self.connections_refused.load(Relaxed)),
        ]
    }
}
