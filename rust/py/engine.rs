//! `Engine`: one broker's native half — endpoint, publisher, bridge and counters.
//! The Python `Broker` owns one and drives it from the asyncio loop.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use super::bench;
use super::codec::{encode_py_into, encode_reply_py_into, payload_py};
use super::conversion::{self, seconds};
use super::errors::BrokerError;
use super::message::{Event, Message};
use crate::bridge::{Bridge, Item, Outcome};
use crate::client::Answer;
use crate::error::Error;
use crate::metrics::Exporter;
use crate::msg::Msg;
use crate::notices;
use crate::publisher::Publisher;
use crate::runtime;
use crate::server::{self, ServerHandle, ServerState, Subscription};
use crate::stats::Stats;
use crate::tls;
use crate::topic_stats::TopicStats;

/// What `take()` returns: six parallel-purpose lists (see `take`).
type Taken<'py> = (Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>);

#[pyclass(module = "hyperbroker._core", frozen)]
pub struct Engine {
    publisher: Arc<Publisher>,
    server: Arc<ServerState>,
    bridge: Arc<Bridge>,
    stats: Arc<Stats>,
    exporter: Arc<Exporter>,
    handle: Mutex<Option<ServerHandle>>,
    /// tokens of the events handed out by the last `take()`, settled by `done()`
    taken: Mutex<Vec<u64>>,
}

#[pymethods]
impl Engine {
    /// Engine(options): the native half of a broker configured by a `hyperbroker.BrokerOptions`
    /// (its defaults and range checks are the only ones; each option is read once, here).
    #[new]
    fn new(options: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (pub_config, server_config) = conversion::engine_config(options)?;
        let metrics = conversion::metrics_config(options)?;
        crate::malloc::tune();
        let stats = Arc::new(Stats::default());
        let bridge = Arc::new(Bridge::new().map_err(|e| Error::io(format!("could not create the wake-up socket: {e}")))?);
        let rt = runtime::get()?;
        let topics = Arc::new(TopicStats::new(metrics.max_topics, metrics.enabled));
        let publisher = Publisher::new(pub_config, stats.clone(), rt.handle().clone(), topics)?;
        let exporter = Arc::new(Exporter::new(stats.clone(), publisher.clone(), metrics.enabled));
        let server = Arc::new(ServerState {
            subs: Default::default(),
            tokens: Default::default(),
            peers: Default::default(),
            tls: Default::default(),
            open_conns: Default::default(),
            conn_closed: Default::default(),
            bridge: bridge.clone(),
            stats: stats.clone(),
            config: server_config,
            draining: Default::default(),
            closing: Default::default(),
            exporter: exporter.clone(),
        });
        let sink = bridge.clone();
        publisher.set_dead_letter_sink(Box::new(move |d| sink.dead_letter(d)));
        let ready = bridge.clone();
        publisher.notices.set_wake(Box::new(move || ready.notices_ready()));
        Ok(Engine { publisher, server, bridge, stats, exporter, handle: Mutex::new(None), taken: Mutex::new(Vec::new()) })
    }

    /// Bind the subscriber endpoint; returns the bound (host, port). Idempotent while listening.
    fn listen(&self, py: Python<'_>, host: &str, port: u16) -> PyResult<(String, u16)> {
        if let Some(h) = self.handle.lock().as_ref() {
            return Ok((h.local_addr.ip().to_string(), h.local_addr.port()));
        }
        let addr: SocketAddr = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("cannot resolve listen address {host}:{port}: {e}")))?
            .next()
            .ok_or_else(|| Error::io(format!("no address for {host}:{port}")))?;
        let rt = runtime::get()?;
        let state = self.server.clone();
        self.bridge.reopen();
        self.server.closing.store(false, std::sync::atomic::Ordering::Release);
        let h = py.detach(|| rt.block_on(server::serve(state, addr)))?;
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
        self.server.closing.store(true, std::sync::atomic::Ordering::Release);
        self.bridge.close();
        let handle = self.handle.lock().take();
        if let (Some(h), Ok(rt)) = (handle, runtime::get()) {
            let state = self.server.clone();
            py.detach(|| h.stop_blocking(rt, &state));
        }
    }

    /// Stop taking new deliveries (they are answered 503 and stay with their publisher) while
    /// those already handed to Python finish: the first step of `Broker.drain()`.
    fn set_draining(&self, on: bool) {
        self.server.draining.store(on, std::sync::atomic::Ordering::Release);
    }

    /// Deliveries handed to Python whose outcome is not known yet.
    fn pending_deliveries(&self) -> usize {
        self.bridge.pending_len()
    }

    /// The file descriptor the asyncio loop watches; readable when `take()` has something.
    #[getter]
    fn wake_fd(&self) -> i32 {
        self.bridge.fd()
    }

    /// Take every queued item: (subscriber ids, events, flushes, dead letters, notices,
    /// answers); ids and events are parallel lists, each event an `Event` carrying its delivery
    /// token; a flush is (token, ok); a dead letter is (topic, Message, node id, node address,
    /// error, attempts); a notice is one of ("drop", topic, reason, count), ("evict", address,
    /// topic, reason), ("readd", address, topic), ("route", topic, nodes now), ("error", text,
    /// count), ("lost", count) (drops summed per topic and reason since the last take); an
    /// answer to a request is (token, reply Message or None, status, error text): a Message
    /// with status 200, else status 0 for no answer in time, or the node's status (500: the
    /// handler raised; 1: the exchange broke after the request went out).
    #[allow(clippy::type_complexity)]
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Taken<'py>> {
        let items = self.bridge.take();
        let mut taken = self.taken.lock();
        let sub_ids = PyList::empty(py);
        let events = PyList::empty(py);
        let flushes = PyList::empty(py);
        let dead = PyList::empty(py);
        let notices = PyList::empty(py);
        let answers = PyList::empty(py);
        // consecutive events mostly share subscriber and topic: reuse their Python strings
        let mut last_sub: Option<(std::sync::Arc<str>, Bound<'py, PyString>)> = None;
        let mut last_topic: Option<(String, Bound<'py, PyString>)> = None;
        for it in items {
            match it {
                Item::Event { token, sub_id, env } => {
                    let sub = match &last_sub {
                        Some((k, v)) if std::sync::Arc::ptr_eq(k, &sub_id) || *k == sub_id => v.clone(),
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
                    let body = if env.rest.is_empty() {
                        PyBytes::new(py, &env.body)
                    } else {
                        // the body's one copy: from the receive buffers' pieces into Python
                        PyBytes::new_with(py, env.body_len(), |dst| {
                            env.copy_body_into(dst);
                            Ok(())
                        })?
                    };
                    let msg = Py::new(py, Message::received(env.header, body))?;
                    let ev = Bound::new(py, Event::new_received(topic, msg, token))?;
                    sub_ids.append(sub)?;
                    events.append(ev)?;
                    taken.push(token);
                }
                Item::Flushed { token, ok } => flushes.append((token, ok))?,
                Item::Notices => self.take_notices(&notices)?,
                Item::DeadLetter(d) => {
                    // it was encoded by this broker: it decodes (a failure would be a bug; the
                    // letter is then reported with the raw envelope as its body)
                    let (_, header) = d.payload.header();
                    let msg = Py::new(py, Message::received(header, PyBytes::new(py, d.payload.body())))?;
                    dead.append((&*d.topic, msg, d.node, d.address, d.error, d.attempts))?;
                }
                Item::Answered { token, answer } => match answer {
                    Answer::Reply { header, body } => {
                        let msg = Py::new(py, Message::received(header, PyBytes::new(py, &body)))?;
                        answers.append((token, Some(msg), 200u16, ""))?;
                    }
                    Answer::Failed { status, error } => {
                        // 0 means "no answer" to Python: a broken exchange is reported as 1
                        answers.append((token, None::<Py<Message>>, status.max(1), error))?;
                    }
                    Answer::NoAnswer(why) => answers.append((token, None::<Py<Message>>, 0u16, why))?,
                },
            }
        }
        Ok((sub_ids, events, flushes, dead, notices, answers))
    }

    /// Settle every event of the last `take()`: those in `failures` (token, error text) failed,
    /// those in `deferred` are still running (reported later with `complete`), all others
    /// were handled; those in `replies` (token, topic, header or None, body) answer with that
    /// reply (a failure of the same token wins). One call per batch instead of one tuple per
    /// message.
    #[pyo3(signature = (failures, deferred, replies = None))]
    fn done(&self, failures: &Bound<'_, PyList>, deferred: &Bound<'_, PyList>, replies: Option<&Bound<'_, PyList>>) -> PyResult<()> {
        let mut replied = encode_replies(replies)?;
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
                // no replies (the usual case): no lookup per message
                None if replied.is_empty() => (t, Outcome::Ok),
                None => (t, replied.remove(&t).unwrap_or(Outcome::Ok)),
            })
            .collect();
        self.bridge.complete_many(outcomes);
        Ok(())
    }

    /// Report handler outcomes: (token, None) handled, (token, "error text") raised; `replies`
    /// as for `done` (for handled tokens only).
    #[pyo3(signature = (results, replies = None))]
    fn complete(&self, results: &Bound<'_, PyList>, replies: Option<&Bound<'_, PyList>>) -> PyResult<()> {
        let mut replied = encode_replies(replies)?;
        let mut outcomes = Vec::with_capacity(results.len());
        for r in results.iter() {
            let (token, err): (u64, Option<String>) = r.extract()?;
            let outcome = match err {
                None if replied.is_empty() => Outcome::Ok,
                None => replied.remove(&token).unwrap_or(Outcome::Ok),
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

    /// Serve subscriber `id` (of `topic`) at this endpoint.
    fn add_subscriber(&self, id: String, topic: String) {
        let counters = self.publisher.topic_stats().get(&topic);
        self.server.subs.write().insert(id, Subscription { topic, counters });
    }

    fn remove_subscriber(&self, id: &str) -> bool {
        self.server.subs.write().remove(id).is_some()
    }

    /// Replace the route of a topic: `groups` are `hyperbroker._routes.RouteGroup`s (a registry
    /// version and its `RouteNode`s).
    fn set_routes(&self, py: Python<'_>, topic: &str, groups: &Bound<'_, PyAny>) -> PyResult<()> {
        let groups = conversion::route_groups(groups)?;
        let p = self.publisher.clone();
        let rt = runtime::get()?;
        let topic = topic.to_string();
        py.detach(move || {
            let _g = rt.enter();
            p.set_routes(&topic, groups)
        })?;
        Ok(())
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
        let identity = match (cert_pem, key_pem, self_signed_hosts) {
            (Some(c), Some(k), _) => tls::identity_from_pem(c, k)?,
            (None, None, Some(hosts)) => tls::self_signed(&hosts)?,
            _ => return Err(Error::tls("give both a certificate and a key, or ask for a self-signed one").into()),
        };
        let roots = |what: &str| -> Result<_, Error> {
            let ca = ca_pem.ok_or_else(|| Error::tls(format!("{what} needs a CA certificate (ca_file)")))?;
            tls::roots_from_pem(ca)
        };
        let client_ca = if client_auth { Some(roots("client_auth=True")?) } else { None };
        let server = tls::server_config(&identity, client_ca)?;
        let verify_roots = if verify { Some(roots("verify=True")?) } else { None };
        let client = tls::client_config(verify_roots, Some(&identity))?;
        *self.server.tls.write() = Some(server);
        self.publisher.set_tls_client(client);
        Ok(())
    }

    /// Verify https peers against `ca_pem` (publishing only; the endpoint stays as it is).
    fn verify_peers(&self, ca_pem: &[u8]) -> PyResult<()> {
        let client = tls::client_config(Some(tls::roots_from_pem(ca_pem)?), None)?;
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
    fn publish(&self, topic: &Bound<'_, PyString>, header: Option<&Bound<'_, PyDict>>, body: &Bound<'_, PyBytes>) -> PyResult<bool> {
        let t = topic.to_str()?;
        self.check_topic(t)?;
        let payload = payload_py(t, header, body)?;
        Ok(self.publisher.publish(Arc::from(t), payload))
    }

    /// Queue many messages of one topic. `messages` is any iterable: a `bytes` item is a body
    /// without header; any other item goes through `to_wire(item) -> (header or None, body)`.
    /// All are converted before any is queued (a conversion error queues nothing). Returns
    /// (the same congestion flag as `publish`, how many were queued).
    fn publish_many(
        &self,
        topic: &Bound<'_, PyString>,
        messages: &Bound<'_, PyAny>,
        to_wire: &Bound<'_, PyAny>,
    ) -> PyResult<(bool, usize)> {
        let t = topic.to_str()?;
        self.check_topic(t)?;
        let topic: Arc<str> = Arc::from(t);
        let mut msgs = Vec::with_capacity(messages.len().unwrap_or(0).min(1 << 16));
        for it in messages.try_iter()? {
            let it = it?;
            let payload = match it.cast_exact::<PyBytes>() {
                Ok(b) => payload_py(t, None, b)?,
                Err(_) => {
                    let (h, b): (Option<Bound<'_, PyDict>>, Bound<'_, PyBytes>) = to_wire.call1((it,))?.extract()?;
                    payload_py(t, h.as_ref(), &b)?
                }
            };
            msgs.push(Msg::new(0, topic.clone(), payload));
        }
        let n = msgs.len();
        Ok((self.publisher.publish_all(msgs), n))
    }

    /// Send one request: `topic`, `header`, `body` go to one subscriber node, whose handler's
    /// answer (or the failure, or no answer within `timeout` seconds, waiting for a subscriber
    /// included) `take()` later yields under `token`. Returns at once.
    #[pyo3(signature = (token, topic, header, body, timeout))]
    fn request(
        &self,
        token: u64,
        topic: &Bound<'_, PyString>,
        header: Option<&Bound<'_, PyDict>>,
        body: &Bound<'_, PyBytes>,
        #[pyo3(from_py_with = seconds)] timeout: Duration,
    ) -> PyResult<()> {
        let t = topic.to_str()?;
        self.check_topic(t)?;
        let mut out = Vec::new();
        encode_py_into(&mut out, t, header, body.as_bytes())?;
        let p = self.publisher.clone();
        let b = self.bridge.clone();
        let topic = t.to_string();
        runtime::get()?.spawn(async move {
            let answer = p.request(&topic, Bytes::from(out), timeout).await;
            b.answered(token, answer);
        });
        Ok(())
    }

    /// Start waiting until no healthy subscriber is congested; `take()` later yields (token, ok).
    fn wait_room(&self, token: u64, #[pyo3(from_py_with = seconds)] timeout: Duration) -> PyResult<()> {
        let p = self.publisher.clone();
        let b = self.bridge.clone();
        runtime::get()?.spawn(async move {
            let ok = p.wait_room(timeout).await;
            b.flushed(token, ok);
        });
        Ok(())
    }

    /// Start waiting for everything published so far; `take()` later yields (token, ok).
    fn flush(&self, token: u64, #[pyo3(from_py_with = seconds)] timeout: Duration) -> PyResult<()> {
        let target = self.publisher.last_seq();
        let p = self.publisher.clone();
        let b = self.bridge.clone();
        runtime::get()?.spawn(async move {
            let ok = p.flush(target, timeout).await;
            b.flushed(token, ok);
        });
        Ok(())
    }

    /// Bench only (issue 12's ceiling, `benches/test_bench_ceiling.py`): publish `body` (no
    /// header) to `topic` `n` times from a Rust loop, no Python call per message, honouring
    /// back-pressure, then wait until every delivery is acknowledged. Blocks the calling thread
    /// (the GIL released) for the whole run. False when `timeout` seconds passed while waiting
    /// for room or for the flush.
    fn _bench_publish(&self, py: Python<'_>, topic: &Bound<'_, PyString>, n: u64, body: &[u8], timeout: f64) -> PyResult<bool> {
        let t = topic.to_str()?;
        self.check_topic(t)?;
        if !(timeout > 0.0 && timeout.is_finite()) {
            return Err(BrokerError::new_err(format!("timeout must be > 0, got {timeout}")));
        }
        let rt = runtime::get()?;
        let p = self.publisher.clone();
        let t = t.to_string();
        let body = Bytes::copy_from_slice(body);
        Ok(py.detach(move || bench::publish_n(rt, &p, &t, n, body, Duration::from_secs_f64(timeout))))
    }

    /// Bench only (issue 12's ceiling): serve subscriber `id` of `topic` at this endpoint with a
    /// no-op handler in Rust. Its deliveries go through the same endpoint code (HTTP, envelope
    /// and batch decoding, per-envelope answer) and are answered as handled without reaching
    /// Python; `stats()["received"]` counts them.
    fn _bench_noop_subscription(&self, id: String, topic: String) {
        self.bridge.set_noop(&id);
        self.add_subscriber(id, topic);
    }

    /// The bearer token this broker sends to the nodes it publishes to (None: none).
    #[pyo3(signature = (token = None))]
    fn set_auth_token(&self, token: Option<&str>) -> PyResult<()> {
        self.publisher.set_auth_token(token)?;
        Ok(())
    }

    /// The bearer tokens this broker's endpoint accepts (empty: no authentication).
    fn set_accepted_tokens(&self, tokens: Vec<String>) -> PyResult<()> {
        if tokens.iter().any(|t| t.is_empty()) {
            return Err(Error::config("an auth token must not be empty").into());
        }
        *self.server.tokens.write() = tokens.into_iter().map(String::into_bytes).collect();
        Ok(())
    }

    fn backlog_len(&self, topic: &str) -> usize {
        self.publisher.settle();
        self.publisher.backlog.len(topic)
    }

    fn backlog_dropped(&self, topic: &str) -> u64 {
        self.publisher.settle();
        self.publisher.backlog.dropped(topic)
    }

    /// Per-topic counters and gauges: {topic: {published, delivered, dropped, retried, backlog,
    /// backlog_bytes, nodes, received, handler_errors}}; topics past `metrics_max_topics` are
    /// summed under "_other".
    fn topic_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for r in self.exporter.topics() {
            let d = PyDict::new(py);
            d.set_item("published", r.published)?;
            d.set_item("delivered", r.delivered)?;
            d.set_item("dropped", r.dropped())?;
            d.set_item("retried", r.retried)?;
            d.set_item("backlog", r.backlog)?;
            d.set_item("backlog_bytes", r.backlog_bytes)?;
            d.set_item("nodes", r.nodes)?;
            d.set_item("received", r.received)?;
            d.set_item("handler_errors", r.handler_errors)?;
            out.set_item(r.topic, d)?;
        }
        Ok(out)
    }

    /// The Prometheus text exposition (what `GET /metrics` serves), rendered now.
    fn metrics_text(&self) -> String {
        self.exporter.render()
    }

    /// Counters (exact) and gauges, plus `last_error` (str or None).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        self.publisher.settle(); // every message published so far is counted where it went
        for (k, v) in self.stats.snapshot() {
            d.set_item(k, v)?;
        }
        d.set_item("backlog", self.publisher.backlog.total_len())?;
        d.set_item("backlog_bytes", self.publisher.backlog.total_bytes())?;
        d.set_item("last_error", self.stats.last_error.lock().clone())?;
        let reasons = PyDict::new(py);
        for (k, v) in self.stats.drops_by_reason() {
            reasons.set_item(k, v)?;
        }
        d.set_item("dropped_by_reason", reasons)?;
        Ok(d)
    }
}

/// Replies handed over by Python, (token, topic, header or None, body), as the outcomes they
/// make: the encoded reply envelope, or a failure when the reply cannot be encoded (a header
/// that is not `dict[str, str]`): one bad reply never keeps the others from settling.
fn encode_replies(replies: Option<&Bound<'_, PyList>>) -> PyResult<HashMap<u64, Outcome>> {
    let Some(replies) = replies.filter(|r| !r.is_empty()) else { return Ok(HashMap::new()) };
    let mut out = HashMap::with_capacity(replies.len());
    for r in replies.iter() {
        let (token, topic, header, body): (u64, Bound<'_, PyString>, Option<Bound<'_, PyDict>>, Bound<'_, PyBytes>) = r.extract()?;
        let mut env = Vec::new();
        let outcome = match encode_reply_py_into(&mut env, topic.to_str()?, header.as_ref(), body.as_bytes()) {
            Ok(()) => Outcome::Replied(Bytes::from(env)),
            Err(e) => Outcome::Failed(format!("the handler's reply cannot be sent: {e}")),
        };
        out.insert(token, outcome);
    }
    Ok(out)
}

impl Engine {
    /// Append the publisher's pending notices to `out` (see `take`).
    fn take_notices(&self, out: &Bound<'_, PyList>) -> PyResult<()> {
        let p = self.publisher.notices.take();
        for (topic, reason, n) in &p.drops {
            out.append(("drop", &**topic, notices::reason_name(*reason), *n))?;
        }
        for (address, topic, reason) in &p.evicted {
            out.append(("evict", address, &**topic, *reason))?;
        }
        for (address, topic) in &p.readded {
            out.append(("readd", address, &**topic))?;
        }
        for topic in &p.routes {
            out.append(("route", &**topic, self.publisher.route_count(topic)))?;
        }
        if let Some((text, n)) = &p.error {
            out.append(("error", text, *n))?;
        }
        if p.lost > 0 {
            out.append(("lost", p.lost))?;
        }
        Ok(())
    }

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
