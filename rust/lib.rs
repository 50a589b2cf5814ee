//! hyperbroker's native core (`hyperbroker._core`).
//!
//! The pure-Rust parts carry no Python types so that `cargo test` exercises them alone: the
//! codec, the backlog, routing and queue-group choice (`route`), node queues and batch taking
//! (`node`), the share record of broadcast copies (`msg`), response classification (`client`),
//! settling a send's result (`worker`), the wait loop (`progress`), the hand-off to asyncio
//! (`bridge`), the server, and the whole publishing path against loopback HTTP nodes
//! (`publisher`: broadcast, queue group, retry, 404, eviction and re-admission). `py/` is the
//! thin PyO3 layer on top.
//!
//! The publishing side, by concern: `ingress` (accepted, not yet routed) -> `wakeups` (the
//! dispatcher on the runtime) -> `publisher` (facade: routing, backlog, route updates, flush,
//! close) -> `route` (routing table) -> `node` (one node's queue and state) -> `worker` (its send
//! loop: retry, back-off, eviction, probing) -> `client` (HTTP pools, send, probe).

pub mod backlog;
pub mod batch;
pub mod bridge;
pub mod client;
pub mod codec;
pub mod config;
pub mod error;
pub mod frames;
pub mod ingress;
pub mod listener;
pub mod malloc;
pub mod metrics;
pub mod msg;
pub mod node;
pub mod notices;
pub mod payload;
pub mod progress;
pub mod publisher;
#[cfg(feature = "python")]
mod py;
pub mod receipt;
pub mod route;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod tls;
pub mod topic_stats;
pub mod wakeups;
pub mod worker;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}
