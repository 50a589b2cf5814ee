//! Talking HTTP to subscriber nodes (`Transport`): the connection pools, the one `request` that
//! picks the pool for a node, the delivery POST (`send`), one attempt of a request/reply
//! exchange (`ask`, its `Answer`) and the liveness probe (`probe`), and what a node's answer
//! means (`classify`).
//!
//! Two pools: HTTPS-or-HTTP/1.1 (ALPN offers h2 under TLS), and h2c (HTTP/2 with prior
//! knowledge) for plain-text hyperbroker peers that advertise it. The TLS configuration and the
//! bearer token can be swapped at any time; requests already under way keep the old ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::RwLock;
use tokio::sync::Semaphore;

use crate::batch;
use crate::codec;
use crate::error::Error;
use crate::frames;
use crate::msg::Msg;
use crate::node::{NodeLink, NodeSpec};
use crate::receipt;
use crate::server::REPLY_CONTENT_TYPE;

/// The most of a response body read (a batch reply names each failed envelope).
const MAX_RESPONSE: usize = 4 << 20;
/// The most of a reply to a request read (a handler's return value).
const MAX_REPLY: usize = 64 << 20;
/// A probe that gets no answer in this time counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, batch::Chunks>;
type H2cClient = Client<HttpConnector, batch::Chunks>;

struct Pools {
    https_or_http: HttpsClient,
    h2c: H2cClient,
}

impl Pools {
    fn new(tls: &rustls::ClientConfig, idle: Duration) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.enforce_http(false);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(conn.clone());
        // `timer` drives HTTP/2 only; without `pool_timer` the pool never reaps idle
        // connections, and those to nodes that left (alive, so they never close) stayed open
        // for good: a file descriptor and ~56 KB (both ends on loopback) per departed node
        let https_or_http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(64)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .build(https);
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_adaptive_window(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle)
            .build(conn);
        Pools { https_or_http, h2c }
    }

    /// The one place that chooses the pool for a node.
    fn request(&self, spec: &NodeSpec, req: Request<batch::Chunks>) -> ResponseFuture {
        if spec.is_h2c() {
            self.h2c.request(req)
        } else {
            self.https_or_http.request(req)
        }
    }
}

/// How a delivery request went.
#[derive(Debug)]
pub enum SendResult {
    /// the node answered; `failed` lists (index, status, reason) of what it did not take
    Done { failed: Vec<(usize, u16, String)> },
    /// no answer: connection refused, reset, timed out
    Unreachable(String),
}

/// How a request (request/reply) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// the handler answered: the reply's header and body (both empty when the handler returned
    /// None, and from a go-micro peer, which answers 200 with no body)
    Reply { header: Vec<(String, String)>, body: Vec<u8> },
    /// the node answered `status` with `error` (500: the handler raised), or the exchange broke
    /// after the request went out (status 0). Never retried: the handler may have run.
    Failed { status: u16, error: String },
    /// no answer in the time given: no subscriber, none reachable, or too slow
    NoAnswer(String),
}

/// One attempt of a request at one node.
#[derive(Debug)]
pub enum Attempt {
    Done(Answer),
    /// the handler did not run (connection refused, 404 unknown subscriber, 503 closing or
    /// draining): another node, or this one later, may be asked; the text says why
    Again(String),
}

/// What a 2xx answer to a request carries: a reply envelope (`REPLY_CONTENT_TYPE`), nothing
/// (go-micro, or a handler that returned None), or some other body (taken as the reply body).
pub fn reply_of(body: &[u8], is_envelope: bool) -> Answer {
    if body.is_empty() {
        return Answer::Reply { header: Vec::new(), body: Vec::new() };
    }
    if !is_envelope {
        return Answer::Reply { header: Vec::new(), body: body.to_vec() };
    }
    match codec::decode(body) {
        Ok(env) => Answer::Reply { header: env.header, body: env.body.into() },
        Err(e) => Answer::Failed { status: 200, error: format!("undecodable reply: {e}") },
    }
}

/// What to do with an envelope, given the status a node answered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// the node took it
    Delivered,
    /// send it again later (5xx, 401/403 whose credentials may be fixed, 429, ...)
    Retry,
    /// the node does not know the subscription (404): its route goes
    Gone,
    /// the node refused it as bad (400, 413 alone, 414, 422): given up for good
    Reject,
    /// 413 to a batch of several: the batch, not the message, was too large; send smaller ones
    Split,
}

/// The verdict for `status` answered to a request carrying `batch_len` envelopes.
pub fn classify(status: u16, batch_len: usize) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        413 if batch_len > 1 => Verdict::Split,
        404 => Verdict::Gone,
        400 | 413 | 414 | 422 => Verdict::Reject,
        _ => Verdict::Retry,
    }
}

/// A client error with its chain of causes, for `last_error`.
pub fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// The HTTP side of the publisher.
pub struct Transport {
    pools: RwLock<Arc<Pools>>,
    auth: RwLock<Option<HeaderValue>>,
    request_timeout: Duration,
    /// deliveries in flight per node address over HTTP/1.1 (a connection each): `http1_slot`
    http1_slots: parking_lot::Mutex<HashMap<String, Arc<Semaphore>>>,
    http1_per_node: usize,
    /// how long an idle pooled connection is kept (`Pools::new`)
    pool_idle: Duration,
}

/// How long an idle pooled connection is kept by default (`PubConfig::pool_idle_timeout`); the
/// pool checks every this often, so one to a node that left is closed within twice this.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The most HTTP/1.1 deliveries in flight to one node address (unless `node_inflight` is
/// higher), hence the most connections the pool opens to it. Thousands of topics routed to one
/// node are a link and a worker each; without a cap each concurrent request opened a
/// connection of its own (measured, 10,000 topics over 10 nodes: 24k msg/s delivered and
/// `publish()` 1.7x its one-topic cost; with it 58k msg/s and flat). A delivery that waited a
/// whole request timeout for a slot goes without one (see `send`).
pub const MAX_HTTP1_PER_NODE: usize = 32;
/// Idle per-address slots are forgotten once there are more addresses than this.
const SLOTS_KEPT: usize = 256;

impl Transport {
    /// Call inside the tokio runtime. `node_inflight`: requests one node link may have in flight
    /// (the per-address HTTP/1.1 cap is never below it); `pool_idle`: how long an idle
    /// connection is kept.
    pub fn new(tls: &rustls::ClientConfig, request_timeout: Duration, node_inflight: usize, pool_idle: Duration) -> Self {
        Transport {
            pools: RwLock::new(Arc::new(Pools::new(tls, pool_idle))),
            auth: RwLock::new(None),
            request_timeout,
            http1_slots: Default::default(),
            http1_per_node: MAX_HTTP1_PER_NODE.max(node_inflight),
            pool_idle,
        }
    }

    /// The semaphore capping HTTP/1.1 deliveries in flight to `address`.
    fn http1_slot(&self, address: &str) -> Arc<Semaphore> {
        let mut slots = self.http1_slots.lock();
        if let Some(s) = slots.get(address) {
            return s.clone();
        }
        if slots.len() >= SLOTS_KEPT {
            slots.retain(|_, s| Arc::strong_count(s) > 1); // held only here: nobody sends there now
        }
        let s = Arc::new(Semaphore::new(self.http1_per_node));
        slots.insert(address.to_string(), s.clone());
        s
    }

    /// Use this TLS client configuration for https peers from now on (inside the runtime).
    pub fn set_tls(&self, tls: &rustls::ClientConfig) {
        *self.pools.write() = Arc::new(Pools::new(tls, self.pool_idle));
    }

    /// The bearer token sent with every delivery (None: none).
    pub fn set_auth_token(&self, token: Option<&str>) -> Result<(), Error> {
        let v = match token {
            None => None,
            Some(t) => {
                Some(HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| Error::config("auth token must be printable ASCII"))?)
            }
        };
        *self.auth.write() = v;
        Ok(())
    }

    fn request(&self, spec: &NodeSpec, req: Request<batch::Chunks>) -> ResponseFuture {
        let pools = self.pools.read().clone();
        pools.request(spec, req)
    }

    /// POST `batch` (not empty) to the node: frames to a node that takes them, else one JSON
    /// envelope, or a batch of them to a node that takes batches. With `on_receipt` the request
    /// asks for a receipt (`receipt.rs`): it runs when the node says the batch is queued for
    /// its handlers (never, if it does not say so), before the handlers' results arrive; those
    /// then get `PIPELINE` request timeouts (the batch may wait behind others).
    pub async fn send(&self, link: &NodeLink, batch: &[Msg], on_receipt: Option<impl FnOnce()>) -> SendResult {
        // anything that may be HTTP/2 (h2c, or ALPN under TLS) gets one contiguous DATA payload:
        // many small DATA frames from concurrent streams made hyper's h2 fail
        let flat = link.spec.h2 || link.spec.secure;
        let (body, ct) = if link.spec.frames {
            (batch::Chunks::frames(batch.iter().map(|m| &*m.payload), flat), frames::CONTENT_TYPE)
        } else if link.spec.batch {
            (batch::Chunks::batch(batch.iter().map(|m| m.payload.json()), flat), batch::CONTENT_TYPE)
        } else {
            (batch::Chunks::one(batch[0].payload.json().clone()), "application/json")
        };
        let mut req = match Request::post(link.uri.clone()).header(CONTENT_TYPE, ct).body(body) {
            Ok(r) => r,
            Err(e) => return SendResult::Unreachable(format!("could not build request: {e}")),
        };
        if let Some(a) = self.auth.read().clone() {
            req.headers_mut().insert(AUTHORIZATION, a);
        }
        if on_receipt.is_some() {
            req.headers_mut().insert(receipt::HEADER, HeaderValue::from_static("1"));
        }
        // h2c multiplexes one connection; anything else may be HTTP/1.1, a connection per
        // request. A slot not free within the request timeout (the node's other deliveries are
        // slow or hang) is not waited for longer: this one goes on a connection of its own, so
        // that slow handlers of other topics never starve it nor delay finding a dead node
        let _slot = match link.spec.is_h2c() {
            true => None,
            false => {
                let slot = self.http1_slot(&link.spec.address).acquire_owned();
                tokio::time::timeout(self.request_timeout, slot).await.ok().and_then(Result::ok)
            }
        };
        let resp = match tokio::time::timeout(self.request_timeout, self.request(&link.spec, req)).await {
            Err(_) => return SendResult::Unreachable("request timed out".into()),
            Ok(Err(e)) => return SendResult::Unreachable(describe_client_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let is_batch_reply =
            resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
        let receipted = status == StatusCode::OK && resp.headers().get(receipt::HEADER).is_some_and(|v| v.as_bytes() == b"1");
        let timeout = match on_receipt.filter(|_| receipted) {
            Some(received) => {
                received(); // the batch is queued for the node's handlers: the next may go
                self.request_timeout * receipt::PIPELINE as u32
            }
            None => self.request_timeout,
        };
        let body = match tokio::time::timeout(timeout, Limited::new(resp.into_body(), MAX_RESPONSE).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return SendResult::Unreachable(format!("could not read the response: {e}")),
            Err(_) => return SendResult::Unreachable("response timed out".into()),
        };
        if status == StatusCode::OK && link.spec.takes_batches() && is_batch_reply {
            return batch_result(&body, batch.len());
        }
        if classify(status.as_u16(), batch.len()) == Verdict::Delivered {
            return SendResult::Done { failed: Vec::new() };
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        SendResult::Done { failed: (0..batch.len()).map(|i| (i, status.as_u16(), text.clone())).collect() }
    }

    /// POST one envelope to the node as a request and read the handler's reply, all before
    /// `deadline`. Only an attempt that certainly did not reach the handler comes back `Again`.
    pub async fn ask(&self, link: &NodeLink, envelope: Bytes, deadline: tokio::time::Instant) -> Attempt {
        let addr = &link.spec.address;
        let req = Request::post(link.uri.clone()).header(CONTENT_TYPE, "application/json").body(batch::Chunks::one(envelope));
        let mut req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Answer::Failed { status: 0, error: format!("could not build request: {e}") }),
        };
        if let Some(a) = self.auth.read().clone() {
            req.headers_mut().insert(AUTHORIZATION, a);
        }
        let resp = match tokio::time::timeout_at(deadline, self.request(&link.spec, req)).await {
            Err(_) => return Attempt::Done(Answer::NoAnswer(format!("{addr} did not answer in time"))),
            Ok(Err(e)) if e.is_connect() => return Attempt::Again(format!("{addr}: {}", describe_client_error(&e))),
            Ok(Err(e)) => return Attempt::Done(Answer::Failed { status: 0, error: format!("{addr}: {}", describe_client_error(&e)) }),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let is_envelope = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with(REPLY_CONTENT_TYPE));
        let body = match tokio::time::timeout_at(deadline, Limited::new(resp.into_body(), MAX_REPLY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return Attempt::Done(Answer::Failed { status: 0, error: format!("{addr}: could not read the reply: {e}") }),
            Err(_) => return Attempt::Done(Answer::NoAnswer(format!("{addr}: the reply did not arrive in time"))),
        };
        match status {
            200..=299 => Attempt::Done(reply_of(&body, is_envelope)),
            404 | 503 => Attempt::Again(format!("{addr} answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]))),
            _ => Attempt::Done(Answer::Failed { status, error: String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned() }),
        }
    }

    /// Does the node answer an HTTP request at all (any status)? `Err(Some(reason))`: no, and
    /// why; `Err(None)`: no answer within the probe timeout.
    pub async fn probe(&self, link: &NodeLink) -> Result<(), Option<String>> {
        let req = Request::head(link.uri.clone()).body(batch::Chunks::batch(std::iter::empty(), false)).map_err(|_| None)?;
        match tokio::time::timeout(PROBE_TIMEOUT, self.request(&link.spec, req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Some(describe_client_error(&e))),
            Err(_) => Err(None),
        }
    }
}

/// A node's 200 batch reply to a request of `sent` envelopes.
fn batch_result(body: &[u8], sent: usize) -> SendResult {
    match batch::decode_response(body) {
        Ok(r) if r.received.is_some_and(|n| n != sent) => SendResult::Unreachable(format!(
            "the node read {} of the {} envelopes sent (truncated request)",
            r.received.unwrap_or_default(),
            sent
        )),
        Ok(r) => {
            SendResult::Done { failed: r.failed.into_iter().filter(|f| f.index < sent).map(|f| (f.index, f.status, f.error)).collect() }
        }
        Err(e) => SendResult::Unreachable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode_response, Failure};

    #[test]
    fn classify_every_status_class() {
        for (status, single, several) in [
            (200, Verdict::Delivered, Verdict::Delivered),
            (204, Verdict::Delivered, Verdict::Delivered),
            (400, Verdict::Reject, Verdict::Reject),
            (401, Verdict::Retry, Verdict::Retry),
            (403, Verdict::Retry, Verdict::Retry),
            (404, Verdict::Gone, Verdict::Gone),
            (413, Verdict::Reject, Verdict::Split),
            (414, Verdict::Reject, Verdict::Reject),
            (422, Verdict::Reject, Verdict::Reject),
            (429, Verdict::Retry, Verdict::Retry),
            (500, Verdict::Retry, Verdict::Retry),
            (503, Verdict::Retry, Verdict::Retry),
            (301, Verdict::Retry, Verdict::Retry),
        ] {
            assert_eq!(classify(status, 1), single, "status {status}, one envelope");
            assert_eq!(classify(status, 5), several, "status {status}, a batch");
        }
    }

    #[test]
    fn batch_reply_names_failures_within_the_batch() {
        let body = encode_response(
            3,
            vec![Failure { index: 1, status: 500, error: "boom".into() }, Failure { index: 9, status: 500, error: "not ours".into() }],
            &[],
        );
        match batch_result(&body, 3) {
            SendResult::Done { failed } => assert_eq!(failed, vec![(1, 500, "boom".to_string())]),
            SendResult::Unreachable(e) => panic!("{e}"),
        }
        assert!(
            matches!(batch_result(&encode_response(2, Vec::new(), &[]), 3), SendResult::Unreachable(e) if e.contains("read 2 of the 3"))
        );
        assert!(matches!(batch_result(b"not json", 3), SendResult::Unreachable(_)));
        // an older node that does not say how many it read
        assert!(matches!(batch_result(b"{\"failed\":[]}", 3), SendResult::Done { failed } if failed.is_empty()));
    }

    #[test]
    fn a_reply_is_an_envelope_nothing_or_a_raw_body() {
        let env = codec::encode("t", [("k", "v")].into_iter(), b"answer");
        assert_eq!(reply_of(&env, true), Answer::Reply { header: vec![("k".into(), "v".into())], body: b"answer".to_vec() });
        assert_eq!(reply_of(b"", true), Answer::Reply { header: Vec::new(), body: Vec::new() });
        assert_eq!(reply_of(b"", false), Answer::Reply { header: Vec::new(), body: Vec::new() });
        assert_eq!(reply_of(b"raw", false), Answer::Reply { header: Vec::new(), body: b"raw".to_vec() });
        assert!(matches!(reply_of(b"not json", true), Answer::Failed { status: 200, error } if error.starts_with("undecodable reply")));
    }

    #[test]
    fn auth_token_must_be_a_header_value() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _g = rt.enter();
        let tls = crate::tls::client_config(None, None).unwrap();
        let t = Transport::new(&tls, Duration::from_secs(1), 1, POOL_IDLE_TIMEOUT);
        assert!(t.set_auth_token(Some("abc")).is_ok());
        assert_eq!(t.auth.read().as_ref().map(|v| v.to_str().unwrap().to_string()), Some("Bearer abc".to_string()));
        assert!(matches!(t.set_auth_token(Some("bad\ntoken")), Err(Error::Config(_))));
        assert!(t.set_auth_token(None).is_ok());
        assert!(t.auth.read().is_none());
    }
}
