//! Python -> Rust at the seam, each value read once: a `hyperbroker.BrokerOptions` becomes
//! `PubConfig` + `ServerConfig`, and the `RouteGroup`/`RouteNode` objects of
//! `hyperbroker._routes` become `(version, Vec<NodeSpec>)`.
//!
//! Defaults and range checks live in `python/hyperbroker/options.py` only (`__post_init__`):
//! this file refuses what is not a `BrokerOptions`, and a value whose type cannot become its
//! Rust field (a `TypeError` naming the option), nothing else.

use std::time::Duration;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::config::{MetricsConfig, PubConfig, ServerConfig};
use crate::node::NodeSpec;

/// Longest duration accepted from Python: about 31 years, so that `now + duration` (a
/// deadline) can never overflow and panic in a task (options.py has the same bound).
const MAX_SECONDS: f64 = 1e9;

/// A number of seconds (int or float) as a `Duration`; refuses what is no usable duration
/// (negative, NaN, infinite, longer than `MAX_SECONDS`).
pub fn seconds(obj: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let v: f64 = obj.extract()?;
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(PyValueError::new_err(format!("{v} seconds is not a usable duration (0 to {MAX_SECONDS:e} seconds)")));
    }
    Ok(Duration::from_secs_f64(v))
}

/// The fields of `hyperbroker.BrokerOptions` the engine uses, read as attributes.
#[derive(FromPyObject)]
struct BrokerOptions {
    #[pyo3(attribute)]
    backlog: usize,
    #[pyo3(attribute)]
    backlog_bytes: usize,
    #[pyo3(attribute)]
    node_queue: usize,
    #[pyo3(attribute)]
    max_batch: usize,
    #[pyo3(attribute)]
    max_batch_bytes: usize,
    #[pyo3(attribute, from_py_with = seconds)]
    retry_min: Duration,
    #[pyo3(attribute, from_py_with = seconds)]
    retry_max: Duration,
    #[pyo3(attribute, from_py_with = seconds)]
    request_timeout: Duration,
    #[pyo3(attribute)]
    evict_after: u32,
    #[pyo3(attribute)]
    node_inflight: usize,
    #[pyo3(attribute)]
    max_deliveries: Option<u32>,
    #[pyo3(attribute)]
    max_body: usize,
    #[pyo3(attribute, from_py_with = seconds)]
    header_read_timeout: Duration,
    #[pyo3(attribute, from_py_with = seconds)]
    body_read_timeout: Duration,
    #[pyo3(attribute)]
    max_topic: usize,
    #[pyo3(attribute)]
    max_message_headers: usize,
    #[pyo3(attribute)]
    max_message_header_bytes: usize,
    #[pyo3(attribute)]
    max_connections_per_peer: usize,
    #[pyo3(attribute)]
    max_connections: usize,
}

/// pyo3 reports a failed field as "failed to extract field BrokerOptions.x" with the reason as
/// `__cause__` (nested structs: a chain of them); put the whole chain in the message, so that
/// `str(error)` says what is wrong.
fn with_reason(py: Python<'_>, e: PyErr) -> PyErr {
    let Some(cause) = e.cause(py) else { return e };
    let mut text = e.value(py).to_string();
    let mut next = Some(cause.clone_ref(py));
    while let Some(c) = next {
        text.push_str(": ");
        text.push_str(&c.value(py).to_string());
        next = c.cause(py);
    }
    let err = PyTypeError::new_err(text);
    err.set_cause(py, Some(cause));
    err
}

/// Read a `hyperbroker.BrokerOptions` once into the engine's settings.
pub fn engine_config(options: &Bound<'_, PyAny>) -> PyResult<(PubConfig, ServerConfig)> {
    let py = options.py();
    static OPTIONS: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let class = OPTIONS.import(py, "hyperbroker.options", "BrokerOptions")?;
    // only a BrokerOptions has been through the range checks of options.py
    if !options.is_instance(class)? {
        let got = options.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        return Err(PyTypeError::new_err(format!("Engine needs a hyperbroker.BrokerOptions, got {got}")));
    }
    let o: BrokerOptions = options.extract().map_err(|e| with_reason(py, e))?;
    let publisher = PubConfig {
        backlog: o.backlog,
        backlog_bytes: o.backlog_bytes,
        node_queue: o.node_queue,
        max_batch: o.max_batch,
        max_batch_bytes: o.max_batch_bytes,
        retry_min: o.retry_min,
        retry_max: o.retry_max,
        request_timeout: o.request_timeout,
        evict_after: o.evict_after,
        node_inflight: o.node_inflight,
        max_deliveries: o.max_deliveries,
        pool_idle_timeout: crate::client::POOL_IDLE_TIMEOUT,
    };
    let server = ServerConfig {
        max_body: o.max_body,
        header_read_timeout: o.header_read_timeout,
        body_read_timeout: o.body_read_timeout,
        max_topic: o.max_topic,
        max_message_headers: o.max_message_headers,
        max_message_header_bytes: o.max_message_header_bytes,
        max_connections_per_peer: o.max_connections_per_peer,
        max_connections: o.max_connections,
    };
    Ok((publisher, server))
}

/// The metrics options of a `hyperbroker.BrokerOptions` (checked by `engine_config` first).
pub fn metrics_config(options: &Bound<'_, PyAny>) -> PyResult<MetricsConfig> {
    let py = options.py();
    let enabled: bool = options.getattr("metrics")?.extract().map_err(|e| with_reason(py, e))?;
    let max_topics: usize = options.getattr("metrics_max_topics")?.extract().map_err(|e| with_reason(py, e))?;
    Ok(MetricsConfig { enabled, max_topics })
}

/// `hyperbroker._routes.RouteNode`: one subscriber node of a route.
#[derive(FromPyObject)]
struct RouteNode {
    #[pyo3(attribute)]
    id: String,
    #[pyo3(attribute)]
    address: String,
    #[pyo3(attribute)]
    batch: bool,
    #[pyo3(attribute)]
    frames: bool,
    #[pyo3(attribute)]
    secure: bool,
    #[pyo3(attribute)]
    h2: bool,
    #[pyo3(attribute)]
    max_body: Option<usize>,
    #[pyo3(attribute)]
    max_deliveries: Option<u32>,
    #[pyo3(attribute)]
    path: String,
}

/// `hyperbroker._routes.RouteGroup`: the nodes of one registry version (a queue group, or the
/// broadcast version).
#[derive(FromPyObject)]
pub struct RouteGroup {
    #[pyo3(attribute)]
    version: String,
    #[pyo3(attribute)]
    nodes: Vec<RouteNode>,
}

impl RouteGroup {
    /// The publisher's form of the group.
    pub fn into_specs(self) -> (String, Vec<NodeSpec>) {
        let specs = self
            .nodes
            .into_iter()
            .map(|n| NodeSpec {
                id: n.id,
                address: n.address,
                batch: n.batch,
                frames: n.frames,
                secure: n.secure,
                h2: n.h2,
                max_body: n.max_body,
                max_deliveries: n.max_deliveries,
                path: n.path,
            })
            .collect();
        (self.version, specs)
    }
}

/// Read the route groups of `set_routes`, naming the field that does not convert.
pub fn route_groups(groups: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Vec<NodeSpec>)>> {
    let py = groups.py();
    let groups: Vec<RouteGroup> = groups.extract().map_err(|e| with_reason(py, e))?;
    Ok(groups.into_iter().map(RouteGroup::into_specs).collect())
}
