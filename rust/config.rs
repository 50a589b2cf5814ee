//! The engine's settings, as plain data. Defaults live in Python (`hyperbroker.options`) only:
//! `py/conversion.rs` reads a `BrokerOptions` once and builds these; pure-Rust users and tests
//! build them field by field.

use std::time::Duration;

/// The publishing side: backlog, node queues, batching, retry and eviction.
#[derive(Clone, Debug)]
pub struct PubConfig {
    pub backlog: usize,
    pub backlog_bytes: usize,
    pub node_queue: usize,
    pub max_batch: usize,
    pub max_batch_bytes: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub request_timeout: Duration,
    /// consecutive refused/failed connections after which a node is evicted from its route
    pub evict_after: u32,
    /// requests in flight per node (1 keeps each subscriber's order; more use HTTP/2 streams or
    /// more HTTP/1.1 connections, and messages may then arrive out of order)
    pub node_inflight: usize,
    /// failed handler attempts after which a message is handed to the undeliverable sink (None:
    /// retried forever); a node's own registry metadata overrides it
    pub max_deliveries: Option<u32>,
    /// how long an idle connection to a node stays pooled (`client::POOL_IDLE_TIMEOUT` unless a
    /// test wants it shorter); one to a node that left closes within twice this
    pub pool_idle_timeout: Duration,
}

/// The subscriber endpoint: limits and timeouts.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub max_body: usize,
    pub header_read_timeout: Duration,
    /// time a client has to send the whole body once the headers arrived (408 after)
    pub body_read_timeout: Duration,
    /// longest accepted topic, in bytes
    pub max_topic: usize,
    /// most entries in one message header, and their total bytes
    pub max_message_headers: usize,
    pub max_message_header_bytes: usize,
    /// most simultaneous connections from one peer IP address
    pub max_connections_per_peer: usize,
    /// most simultaneous connections from all peers together; more are closed at once
    pub max_connections: usize,
}

/// Observability: per-topic counters are always kept; `enabled` (the `metrics` option) adds the
/// latency histograms and `GET /metrics`.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// topics with counters of their own; the rest are reported together as `_other`
    pub max_topics: usize,
}
