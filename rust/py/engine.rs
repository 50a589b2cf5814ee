//! `Engine`: one broker's native half — endpoint, publisher, bridge and counters.
//! The Python `Broker` owns one and drives it from the asyncio loop.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::codec::encode_py_into;
use super::message::{Event, Message};
use super::errors::BrokerError;
use crate::bridge::{Bridge, Item, Outcome};
use crate::node::NodeSpec;
use crate::publisher::{PubConfig, Publisher};
use crate::runtime;
use crate::server::{self, ServerConfig, ServerHandle, ServerState, Subscription};
use crate::stats::Stats;
use crate::tls;

fn rt() -> PyResult<&'static tokio::runtime::Runtime> {
    runtime::get().map_err(|e| BrokerError::new_err(e.to_string()))
}

fn secs(name: &str, v: f64) -> PyResult<Duration> {
    if !v.is_finite() || v <= 0.0 {
        return Err(PyValueError::new_err(format!("{name} must be a positive number of seconds, got {v}")));
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive(name: &str, v: i64) -> PyResult<usize> {
    if v < 1 {
        return Err(PyValueError::new_err(format!("{name} must be >= 1, got {v}")));
    }
    Ok(v as usize)
}

#[pyclass(module = "hyperbroker._core", frozen)]
pub struct Engine {
    publisher: Arc<Publisher>,
    server: Arc<ServerState>,
    bridge: Arc<Bridge>,
    stats: Arc<Stats>,
    handle: Mutex<Option<ServerHandle>>,
    /// tokens of the events handed out by the last `take()`, settled by `done()`
    taken: Mutex<Vec<u64>>,
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (*, backlog = 1024, backlog_bytes = 67108864, max_body = 4194304, node_queue = 65536,
        max_batch = 1024, max_batch_bytes = 1048576, retry_min = 0.01, retry_max = 2.0,
        request_timeout = 30.0, header_read_timeout = 10.0, body_read_timeout = 30.0, max_topic = 1024,
        max_message_headers = 256, max_message_header_bytes = 65536, max_connections_per_peer = 1024,
        evict_after = 3, node_inflight = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        backlog: i64,
        backlog_bytes: i64,
        max_body: i64,
        node_queue: i64,
        max_batch: i64,
        max_batch_bytes: i64,
        retry_min: f64,
        retry_max: f64,
        request_timeout: f64,
        header_read_timeout: f64,
        body_read_timeout: f64,
        max_topic: i64,
        max_message_headers: i64,
        max_message_header_bytes: i64,
        max_connections_per_peer: i64,
        evict_after: i64,
        node_inflight: i64,
    ) -> PyResult<Self> {
        let cfg = PubConfig {
            backlog: positive("backlog", backlog)?,
            backlog_bytes: positive("backlog_bytes", backlog_bytes)?,
            node_queue: positive("node_queue", node_queue)?,
            max_batch: positive("max_batch", max_batch)?,
            max_batch_bytes: positive("max_batch_bytes", max_batch_bytes)?,
            retry_min: secs("retry_min", retry_min)?,
            retry_max: secs("retry_max", retry_max)?,
            request_timeout: secs("request_timeout", request_timeout)?,
            evict_after: positive("evict_after", evict_after)?.min(u32::MAX as usize) as u32,
            node_inflight: positive("node_inflight", node_inflight)?.min(256),
        };
        let stats = Arc::new(Stats::default());
        let bridge = Arc::new(Bridge::new().map_err(|e| BrokerError::new_err(format!("could not create the wake-up socket: {e}")))?);
        let server = Arc::new(ServerState {
            subs: Default::default(),
            tokens: Default::default(),
            peers: Default::default(),
            tls: Default::default(),
            open_conns: Default::default(),
            conn_closed: Default::default(),
            bridge: bridge.clone(),
            stats: stats.clone(),
            config: ServerConfig {
                max_body: positive("max_body", max_body)?,
                header_read_timeout: secs("header_read_timeout", header_read_timeout)?,
                body_read_timeout: secs("body_read_timeout", body_read_timeout)?,
                max_topic: positive("max_topic", max_topic)?,
                max_message_headers: positive("max_message_headers", max_message_headers)?,
                max_message_header_bytes: positive("max_message_header_bytes", max_message_header_bytes)?,
                max_connections_per_peer: positive("max_connections_per_peer", max_connections_per_peer)?,
            },
        });
        let publisher = Arc::new(Publisher::new(cfg, stats.clone(), rt()?.handle().clone()).map_err(|e| BrokerError::new_err(e.to_string()))?);
        Ok(Engine { publisher, server, bridge, stats, handle: Mutex::new(None), taken: Mutex::new(Vec::new()) })
    }

    /// Bind the subscriber endpoint; returns the bound (host, port). Idempotent while listening.
    fn listen(&self, py: Python<'_>, host: &str, port: u16) -> PyResult<(String, u16)> {
        if let Some(h) = self.handle.lock().as_ref() {
            return Ok((h.local_addr.ip().to_string(), h.local_addr.port()));
        }
        let addr: SocketAddr = (host, port)
            .to_socket_addrs()
            .map_err(|e| BrokerError::new_err(format!("cannot resolve listen address {host}:{port}: {e}")))?
            .next()
            .ok_or_else(|| BrokerError::new_err(format!("no address for {host}:{port}")))?;
        let rt = rt()?;
        let state = self.server.clone();
        self.bridge.reopen();
        let h = py
            .detach(|| rt.block_on(server::serve(state, addr)))
            .map_err(|e| BrokerError::new_err(format!("cannot listen on {addr}: {e}")))?;
        let out = (h.local_addr.ip().to_string(), h.local_addr.port());
        *self.handle.lock() = Some(h);
        Ok(out)
    }

    /// Stop the endpoint and every delivery task; waiting requests are answered 503. When this
    /// returns the port refuses connections.
    fn close(&self, py: Python<'_>) {
        self.stop_listening(py);
        self.publisher.close();
    }

    /// Stop only the endpoint (the publisher keeps running).
    fn stop_listening(&self, py: Python<'_>) {
        self.bridge.close();
        let handle = self.handle.lock().take();
        if let (Some(h), Ok(rt)) = (handle, rt()) {
            let state = self.server.clone();
            py.detach(|| h.stop_blocking(rt, &state));
        }
    }

    /// The file descriptor the asyncio loop watches; readable when `take()` has something.
    #[getter]
    fn wake_fd(&self) -> i32 {
        self.bridge.fd()
    }

    /// Take every queued item: (subscriber ids, events, flushes); ids and events are parallel
    /// lists, each event an `Event` carrying its delivery token; a flush is (token, ok).
    #[allow(clippy::type_complexity)]
    fn take<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>)> {
        let items = self.bridge.take();
        let mut taken = self.taken.lock();
        let sub_ids = PyList::empty(py);
        let events = PyList::empty(py);
        let flushes = PyList::empty(py);
        // consecutive events mostly share subscriber and topic: reuse their Python strings
        let mut last_sub: Option<(String, Bound<'py, PyString>)> = None;
        let mut last_topic: Option<(String, Bound<'py, PyString>)> = None;
        for it in items {
            match it {
                Item::Event { token, sub_id, env } => {
                    let sub = match &last_sub {
                        Some((k, v)) if *k == sub_id => v.clone(),
                        _ => {
                            let v = PyString::new(py, &sub_id);
                            last_sub = Some((sub_id, v.clone()));
                            v
                        }
                    };
                    let topic = match &last_topic {
                        Some((k, v)) if *k == env.topic => v.clone(),
                        _ => {
                            let v = PyString::new(py, &env.topic);
                            last_topic = Some((env.topic.clone(), v.clone()));
                            v
                        }
                    };
                    let h = PyDict::new(py);
                    for (k, v) in &env.header {
                        h.set_item(k, v)?;
                    }
                    let msg = Py::new(py, Message::from_parts(h, PyBytes::new(py, &env.body)))?;
                    let ev = Bound::new(py, Event::new_received(topic, msg, token))?;
                    sub_ids.append(sub)?;
                    events.append(ev)?;
                    taken.push(token);
                }
                Item::Flushed { token, ok } => flushes.append((token, ok))?,
            }
        }
        Ok((sub_ids, events, flushes))
    }

    /// Settle every event of the last `take()`: those in `failures` (token, error text) failed,
    /// those in `deferred` are still running (reported later with `complete`), all others
    /// were handled. One call per batch instead of one tuple per message.
    fn done(&self, failures: &Bound<'_, PyList>, deferred: &Bound<'_, PyList>) -> PyResult<()> {
        let taken = std::mem::take(&mut *self.taken.lock());
        let mut failed: HashMap<u64, String> = HashMap::with_capacity(failures.len());
        for f in failures.iter() {
            let (token, err): (u64, String) = f.extract()?;
            failed.insert(token, err);
        }
        let mut later: HashSet<u64> = HashSet::with_capacity(deferred.len());
        for d in deferred.iter() {
            later.insert(d.extract()?);
        }
        Stats::add(&self.stats.handler_errors, failed.len() as u64);
        let outcomes = taken
            .into_iter()
            .filter(|t| !later.contains(t))
            .map(|t| match failed.remove(&t) {
                Some(e) => (t, Outcome::Failed(e)),
                None => (t, Outcome::Ok),
            })
            .collect();
        self.bridge.complete_many(outcomes);
        Ok(())
    }

    /// Report handler outcomes: (token, None) handled, (token, "error text") raised.
    fn complete(&self, results: &Bound<'_, PyList>) -> PyResult<()> {
        let mut outcomes = Vec::with_capacity(results.len());
        for r in results.iter() {
            let (token, err): (u64, Option<String>) = r.extract()?;
            let outcome = match err {
                None => Outcome::Ok,
                Some(e) => {
                    Stats::add(&self.stats.handler_errors, 1);
                    Outcome::Failed(e)
                }
            };
            outcomes.push((token, outcome));
        }
        self.bridge.complete_many(outcomes);
        Ok(())
    }

    #[pyo3(signature = (id, topic, queue = None))]
    fn add_subscriber(&self, id: String, topic: String, queue: Option<String>) {
        self.server.subs.write().insert(id, Subscription { topic, queue });
    }

    fn remove_subscriber(&self, id: &str) -> bool {
        self.server.subs.write().remove(id).is_some()
    }

    /// Replace the route of a topic:
    /// [(version, [(node id, "host:port", batch, secure, h2, max_body or None), ...]), ...].
    #[allow(clippy::type_complexity)]
    fn set_routes(
        &self,
        py: Python<'_>,
        topic: &str,
        groups: Vec<(String, Vec<(String, String, bool, bool, bool, Option<usize>)>)>,
    ) -> PyResult<()> {
        let groups = groups
            .into_iter()
            .map(|(v, nodes)| {
                let specs = nodes
                    .into_iter()
                    .map(|(id, address, batch, secure, h2, max_body)| NodeSpec { id, address, batch, secure, h2, max_body, max_deliveries: None })
                    .collect();
                (v, specs)
            })
            .collect();
        let p = self.publisher.clone();
        let rt = rt()?;
        let topic = topic.to_string();
        py.detach(move || {
            let _g = rt.enter();
            p.set_routes(&topic, groups)
        })
        .map_err(|e| BrokerError::new_err(e.to_string()))
    }

    /// Configure TLS before `listen`. With `cert_pem`/`key_pem` the endpoint serves that identity;
    /// without, `self_signed_hosts` makes a self-signed certificate for those hosts. `ca_pem` with
    /// `verify` makes publishing verify peers; with `client_auth` the endpoint requires client
    /// certificates signed by it (and this broker presents its own to peers).
    #[pyo3(signature = (*, cert_pem = None, key_pem = None, ca_pem = None, verify = false, client_auth = false, self_signed_hosts = None))]
    fn configure_tls(
        &self,
        cert_pem: Option<&[u8]>,
        key_pem: Option<&[u8]>,
        ca_pem: Option<&[u8]>,
        verify: bool,
        client_auth: bool,
        self_signed_hosts: Option<Vec<String>>,
    ) -> PyResult<()> {
        let err = |e: String| BrokerError::new_err(format!("TLS configuration: {e}"));
        let identity = match (cert_pem, key_pem, self_signed_hosts) {
            (Some(c), Some(k), _) => tls::identity_from_pem(c, k).map_err(err)?,
            (None, None, Some(hosts)) => tls::self_signed(&hosts).map_err(err)?,
            _ => return Err(err("give both a certificate and a key, or ask for a self-signed one".into())),
        };
        let roots = |what: &str| -> PyResult<_> {
            let ca = ca_pem.ok_or_else(|| err(format!("{what} needs a CA certificate (ca_file)")))?;
            tls::roots_from_pem(ca).map_err(err)
        };
        let client_ca = if client_auth { Some(roots("client_auth=True")?) } else { None };
        let server = tls::server_config(&identity, client_ca).map_err(err)?;
        let verify_roots = if verify { Some(roots("verify=True")?) } else { None };
        let client = tls::client_config(verify_roots, Some(&identity)).map_err(err)?;
        *self.server.tls.write() = Some(server);
        self.publisher.set_tls_client(client);
        Ok(())
    }

    /// Verify https peers against `ca_pem` (publishing only; the endpoint stays as it is).
    fn verify_peers(&self, ca_pem: &[u8]) -> PyResult<()> {
        let err = |e: String| BrokerError::new_err(format!("TLS configuration: {e}"));
        let client = tls::client_config(Some(tls::roots_from_pem(ca_pem).map_err(err)?), None).map_err(err)?;
        self.publisher.set_tls_client(client);
        Ok(())
    }

    /// Number of nodes currently routed for `topic`.
    fn route_count(&self, topic: &str) -> usize {
        self.publisher.route_count(topic)
    }

    /// Encode and queue one message. Returns at once (delivery runs in Rust) with True when a
    /// subscriber's queue is past its high-water mark: then await `wait_room` before more.
    #[pyo3(signature = (topic, header, body))]
    fn publish(&self, topic: &Bound<'_, PyString>, header: Option<&Bound<'_, PyDict>>, body: &[u8]) -> PyResult<bool> {
        let t = topic.to_str()?;
        self.check_topic(t)?;
        let mut out = Vec::new();
        encode_py_into(&mut out, t, header, body)?;
        Ok(self.publisher.publish(Arc::from(t), Bytes::from(out)))
    }

    /// Queue many messages of one topic: items are (header or None, body bytes). Returns the
    /// same congestion flag as `publish`.
    fn publish_many(&self, topic: &Bound<'_, PyString>, items: &Bound<'_, PyList>) -> PyResult<bool> {
        let t = topic.to_str()?;
        self.check_topic(t)?;
        let topic: Arc<str> = Arc::from(t);
        let mut encoded = Vec::with_capacity(items.len());
        for it in items.iter() {
            let (h, b): (Option<Bound<'_, PyDict>>, Bound<'_, PyBytes>) = it.extract()?;
            let mut out = Vec::new();
            encode_py_into(&mut out, t, h.as_ref(), b.as_bytes())?;
            encoded.push(Bytes::from(out));
        }
        let mut congested = false;
        for e in encoded {
            congested |= self.publisher.publish(topic.clone(), e);
        }
        Ok(congested)
    }

    /// Start waiting until no healthy subscriber is congested; `take()` later yields (token, ok).
    fn wait_room(&self, token: u64, timeout: f64) -> PyResult<()> {
        let timeout = secs("timeout", timeout)?;
        let p = self.publisher.clone();
        let b = self.bridge.clone();
        rt()?.spawn(async move {
            let ok = p.wait_room(timeout).await;
            b.flushed(token, ok);
        });
        Ok(())
    }

    /// Start waiting for everything published so far; `take()` later yields (token, ok).
    fn flush(&self, token: u64, timeout: f64) -> PyResult<()> {
        let timeout = secs("timeout", timeout)?;
        let target = self.publisher.last_seq();
        let p = self.publisher.clone();
        let b = self.bridge.clone();
        rt()?.spawn(async move {
            let ok = p.flush(target, timeout).await;
            b.flushed(token, ok);
        });
        Ok(())
    }

    /// The bearer token this broker sends to the nodes it publishes to (None: none).
    #[pyo3(signature = (token = None))]
    fn set_auth_token(&self, token: Option<&str>) -> PyResult<()> {
        self.publisher.set_auth_token(token).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The bearer tokens this broker's endpoint accepts (empty: no authentication).
    fn set_accepted_tokens(&self, tokens: Vec<String>) -> PyResult<()> {
        if tokens.iter().any(|t| t.is_empty()) {
            return Err(PyValueError::new_err("an auth token must not be empty"));
        }
        *self.server.tokens.write() = tokens.into_iter().map(String::into_bytes).collect();
        Ok(())
    }

    fn backlog_len(&self, topic: &str) -> usize {
        self.publisher.backlog.len(topic)
    }

    fn backlog_dropped(&self, topic: &str) -> u64 {
        self.publisher.backlog.dropped(topic)
    }

    /// Counters (exact) and gauges, plus `last_error` (str or None).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.stats.snapshot() {
            d.set_item(k, v)?;
        }
        d.set_item("backlog", self.publisher.backlog.total_len())?;
        d.set_item("backlog_bytes", self.publisher.backlog.total_bytes())?;
        d.set_item("last_error", self.stats.last_error.lock().clone())?;
        Ok(d)
    }
}

impl Engine {
    fn check_topic(&self, t: &str) -> PyResult<()> {
        if t.is_empty() {
            return Err(BrokerError::new_err("topic must not be empty"));
        }
        let max = self.server.config.max_topic;
        if t.len() > max {
            return Err(BrokerError::new_err(format!("topic of {} bytes is over max_topic={max}", t.len())));
        }
        Ok(())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()
}
