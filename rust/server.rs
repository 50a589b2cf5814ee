//! The subscriber endpoint: `POST /_sub?id=<node id>` (go-micro v1) or `POST /?id=<node id>`
//! (current go-micro) with a go-micro envelope, a batch of them (`batch.rs`), or raw frames
//! (`frames.rs`; a frames body that is truncated is refused whole with 400).
//!
//! It answers after the handler ran: 200 handled (with the reply envelope as the body, typed
//! `REPLY_CONTENT_TYPE`, when the handler returned a value; else empty, as go-micro answers);
//! 500 the handler raised (the publisher retries);
//! 405 not POST; 400 bad envelope or no topic; 404 unknown subscriber id; 413 body over the limit;
//! 503 the broker is closing. Each error carries a short plain-text reason.
//!
//! Also on this port: `GET /healthz` (200 `{"status":"serving",...}` with counts only, 503 while
//! draining or closing; no token needed) and, with the `metrics` option, `GET /metrics`
//! (Prometheus text, rendered at scrape time by `metrics.rs`; the bearer token when one is set).
//!
//! Connections (accepting, caps per peer and in total, the first-bytes deadline, TLS, stopping,
//! reclaiming memory) are `listener.rs`'s; this file answers the requests. A refused request
//! whose body is still coming is answered first and its body read and discarded up to a bound
//! (`LINGER_BYTES` / `LINGER_TIME`), so clients that write the whole body before reading see
//! the 413/401/400.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Buf;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use parking_lot::RwLock;

use crate::batch;
use crate::bridge::{Bridge, Outcome};
use crate::codec;
use crate::frames;
use crate::metrics::Exporter;
use crate::receipt::{self, AnswerBody};
use crate::stats::Stats;
use crate::topic_stats::TopicCounters;

/// go-micro v1's endpoint path (the `topic:<topic>` registry layout).
pub const PATH: &str = "/_sub";
/// Content type of a 200 answer carrying a handler's reply: a go-micro JSON envelope.
pub const REPLY_CONTENT_TYPE: &str = "application/vnd.hyperbroker.reply+json";
/// Current go-micro's endpoint path (the `micro.http.broker` registry layout).
pub const MICRO_PATH: &str = "/";

/// A subscription this endpoint serves (its queue group lives in the registry record only).
#[derive(Debug, Clone)]
pub struct Subscription {
    pub topic: String,
    /// the counters of the topic (received, handler errors, handler duration)
    pub counters: Arc<TopicCounters>,
}

pub use crate::config::ServerConfig;
pub use crate::listener::{serve, ServerHandle};

/// Constant-time check of a presented bearer token against every accepted one.
fn token_ok(accepted: &[Vec<u8>], presented: &[u8]) -> bool {
    let mut ok = 0u8;
    for t in accepted {
        let mut diff = (t.len() != presented.len()) as u8;
        for (i, b) in t.iter().enumerate() {
            diff |= b ^ presented.get(i).copied().unwrap_or(0);
        }
        ok |= (diff == 0) as u8;
    }
    ok == 1
}

pub struct ServerState {
    pub subs: RwLock<HashMap<String, Subscription>>,
    /// accepted bearer tokens; empty: no authentication
    pub tokens: RwLock<Vec<Vec<u8>>>,
    pub peers: parking_lot::Mutex<HashMap<std::net::IpAddr, usize>>,
    /// serve HTTPS with this configuration (set before listening)
    pub tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
    /// open connections, and a signal when one closes (stopping waits for all to be gone)
    pub open_conns: std::sync::atomic::AtomicUsize,
    pub conn_closed: tokio::sync::Notify,
    pub bridge: Arc<Bridge>,
    pub stats: Arc<Stats>,
    pub config: ServerConfig,
    /// set by `drain()`: new deliveries are answered 503 (the publisher keeps them and hands them
    /// to another subscriber or its backlog), while those already running finish
    pub draining: std::sync::atomic::AtomicBool,
    /// set while the endpoint is being stopped (`/healthz` answers 503 "closing")
    pub closing: std::sync::atomic::AtomicBool,
    /// reads the counters for `/metrics` and `/healthz`
    pub exporter: Arc<Exporter>,
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<AnswerBody> {
    let mut r = Response::new(AnswerBody::whole(msg.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn query_id(uri: &hyper::Uri) -> Option<String> {
    let q = uri.query()?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "id" {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Check that an envelope may go to subscriber `id`; returns its topic's counters, or the
/// status and reason.
fn route_check(state: &ServerState, id: &str, topic: &str) -> Result<Arc<TopicCounters>, (StatusCode, String)> {
    let (subscribed, counters) = subscription(state, id)?;
    topic_check(id, &subscribed, topic)?;
    Ok(counters)
}

/// Subscriber `id`'s topic and counters (one lookup for a whole batch), or why nothing may go
/// to it (404 unknown, 503 draining).
fn subscription(state: &ServerState, id: &str) -> Result<(String, Arc<TopicCounters>), (StatusCode, String)> {
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "subscriber is draining".into()));
    }
    match state.subs.read().get(id) {
        None => Err((StatusCode::NOT_FOUND, format!("no subscriber with id {id:?} here"))),
        Some(s) => Ok((s.topic.clone(), s.counters.clone())),
    }
}

/// An envelope of `topic` may go to subscriber `id`, subscribed to `subscribed`.
fn topic_check(id: &str, subscribed: &str, topic: &str) -> Result<(), (StatusCode, String)> {
    if subscribed != topic {
        return Err((StatusCode::NOT_FOUND, format!("subscriber {id:?} is subscribed to {subscribed:?}, not {topic:?}")));
    }
    Ok(())
}

/// Reject what is over the configured limits (the message itself, not the HTTP request).
fn limits_check(state: &ServerState, env: &codec::Envelope) -> Result<(), String> {
    let c = &state.config;
    if env.topic.len() > c.max_topic {
        return Err(format!("topic of {} bytes is over the limit of {} bytes", env.topic.len(), c.max_topic));
    }
    if env.header.len() > c.max_message_headers {
        return Err(format!("{} header entries are over the limit of {}", env.header.len(), c.max_message_headers));
    }
    let bytes: usize = env.header.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > c.max_message_header_bytes {
        return Err(format!("header of {bytes} bytes is over the limit of {} bytes", c.max_message_header_bytes));
    }
    Ok(())
}

/// A decoded message within the limits, or why not (the reason a batch response gives).
fn checked<E: std::fmt::Display>(state: &ServerState, decoded: Result<codec::Envelope, E>) -> Result<codec::Envelope, String> {
    let env = decoded.map_err(|e| e.to_string())?;
    limits_check(state, &env)?;
    Ok(env)
}

fn outcome_status(o: Result<Outcome, tokio::sync::oneshot::error::RecvError>) -> (StatusCode, String) {
    match o {
        Ok(Outcome::Ok) | Ok(Outcome::Replied(_)) => (StatusCode::OK, String::new()),
        Ok(Outcome::Failed(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("handler error: {e}")),
        Ok(Outcome::Unavailable) | Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "subscriber is closing".into()),
    }
}

/// A refused request's body is read and discarded for at most this long after the answer...
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(1);
/// ...and at most this many bytes (a body announced bigger than this is not waited for).
const LINGER_BYTES: u64 = 16 << 20;

/// The request body while the request is handled: taken once read to the end; left here when
/// the request is refused before (or while) reading it.
struct PendingBody {
    body: Option<Incoming>,
    /// reading began (so an `Expect: 100-continue` client has been told to send)
    started: bool,
}

pub(crate) async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Result<Response<AnswerBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let mut pending = PendingBody { body: Some(body), started: false };
    let mut r = handle_inner(&state, &parts, &mut pending).await;
    if r.status().is_client_error() {
        Stats::add(&state.stats.rejected, 1);
    }
    if let Some(body) = pending.body.take() {
        linger(&parts, body, pending.started, &mut r);
    }
    Ok(r)
}

/// The request was answered without reading all of its body. Over HTTP/1.1 a client that
/// writes the whole body before it reads (Python's http.client, urllib) would hit a reset
/// connection instead of the answer if the connection closed now, so the answer goes out with
/// `Connection: close` and the rest of the body is read and thrown away in the background,
/// bounded by `LINGER_BYTES` and `LINGER_TIME` (as nginx's lingering close and Go's net/http
/// do); hyper closes the connection once the body is gone. Not done when the body is empty,
/// over HTTP/2 (the stream is reset on its own), for an `Expect: 100-continue` client that was
/// never told to send, or when the announced rest is over the bound.
fn linger(parts: &Parts, body: Incoming, started: bool, r: &mut Response<AnswerBody>) {
    if body.is_end_stream() || parts.version >= Version::HTTP_2 {
        return;
    }
    r.headers_mut().insert(CONNECTION, hyper::header::HeaderValue::from_static("close"));
    let expects = parts.headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    // what is still to come, when announced (Content-Length minus what was read)
    let rest = body.size_hint().exact();
    if (expects && !started) || rest.is_some_and(|n| n > LINGER_BYTES) {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut discarded = 0u64;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                discarded += frame.data_ref().map_or(0, |d| d.len() as u64);
                if discarded > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// The bearer-token check: the 401 answer when a token is required and not (rightly) given.
fn unauthorized(state: &ServerState, req: &Parts) -> Option<Response<AnswerBody>> {
    let tokens = state.tokens.read();
    if tokens.is_empty() {
        return None;
    }
    let presented = req
        .headers
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer ")));
    if presented.is_some_and(|p| token_ok(&tokens, p)) {
        return None;
    }
    let mut r = text(StatusCode::UNAUTHORIZED, if presented.is_none() { "missing bearer token" } else { "wrong bearer token" });
    r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    Some(r)
}

/// `GET /healthz`: status and counts only (no topic names), so no token is asked for.
fn healthz(state: &ServerState) -> Response<AnswerBody> {
    use std::sync::atomic::Ordering::Acquire;
    let status = if state.closing.load(Acquire) {
        "closing"
    } else if state.draining.load(Acquire) {
        "draining"
    } else {
        "serving"
    };
    let (routes, backlog) = state.exporter.health_counts();
    let body = serde_json::json!({
        "status": status,
        "subscriptions": state.subs.read().len(),
        "routes": routes,
        "backlog": backlog,
    });
    let mut r = Response::new(AnswerBody::whole(body.to_string()));
    if status != "serving" {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// `GET /metrics` (with the `metrics` option): the Prometheus text exposition.
fn metrics(state: &ServerState, req: &Parts) -> Response<AnswerBody> {
    if !state.exporter.serve_metrics {
        return text(StatusCode::NOT_FOUND, "metrics are off (Broker(metrics=True) serves them)");
    }
    if let Some(r) = unauthorized(state, req) {
        return r;
    }
    let mut r = Response::new(AnswerBody::whole(state.exporter.render()));
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    r
}

async fn handle_inner(state: &Arc<ServerState>, req: &Parts, pending: &mut PendingBody) -> Response<AnswerBody> {
    if req.method == Method::GET || req.method == Method::HEAD {
        match req.uri.path() {
            "/healthz" => return healthz(state),
            "/metrics" => return metrics(state, req),
            _ => {}
        }
    }
    if req.uri.path() != PATH && req.uri.path() != MICRO_PATH {
        return text(StatusCode::NOT_FOUND, format!("unknown path {:?}; the endpoint is {PATH} or {MICRO_PATH}", req.uri.path()));
    }
    if req.method != Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use POST");
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("POST"));
        return r;
    }
    if let Some(r) = unauthorized(state, req) {
        return r;
    }
    let Some(id) = query_id(&req.uri) else {
        return text(StatusCode::BAD_REQUEST, "missing ?id=<subscriber id> query parameter");
    };
    let max = state.config.max_body;
    if let Some(len) = req.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()) {
        if len > max as u64 {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body of {len} bytes is over the limit of {max} bytes"));
        }
    }
    let content_type = req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let is_frames = content_type.starts_with(frames::CONTENT_TYPE);
    let is_batch = content_type.starts_with(batch::CONTENT_TYPE);
    let receipt = req.headers.get(receipt::HEADER).is_some_and(|v| v.as_bytes() == b"1");
    let Some(incoming) = pending.body.as_mut() else {
        return text(StatusCode::BAD_REQUEST, "the request body was already read");
    };
    pending.started = true;
    let read = tokio::time::timeout(state.config.body_read_timeout, Limited::new(incoming, max).collect()).await;
    let Ok(read) = read else {
        pending.body = None; // a slow client is not waited for any longer
        return text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time");
    };
    let collected = match read {
        Ok(b) => {
            pending.body = None;
            b
        }
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                // the rest is discarded by `linger`
                return text(StatusCode::PAYLOAD_TOO_LARGE, format!("body is over the limit of {max} bytes"));
            }
            pending.body = None;
            return text(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}"));
        }
    };
    if is_frames {
        // the receive buffers as they came: a body inside one of them is not copied
        let mut buf = collected.aggregate();
        let decoded = if buf.chunk().len() == buf.remaining() {
            // one receive buffer (the usual case): decode from it directly, not through the list
            let all = buf.copy_to_bytes(buf.remaining());
            frames::decode(all)
        } else {
            frames::decode(buf)
        };
        return match decoded {
            Ok(items) => {
                let items = items.into_iter().map(|f| checked(state, f)).collect();
                deliver_batch(state, id, items, receipt).await
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        };
    }
    let body = collected.to_bytes();
    if is_batch {
        let items = batch::split(&body).into_iter().map(|line| checked(state, codec::decode_message(line))).collect();
        return deliver_batch(state, id, items, receipt).await;
    }
    let env = match codec::decode_message(&body) {
        Ok(env) => env,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if let Err(m) = limits_check(state, &env) {
        return text(StatusCode::BAD_REQUEST, m);
    }
    let counters = match route_check(state, &id, &env.topic) {
        Ok(c) => c,
        Err((s, m)) => return text(s, m),
    };
    Stats::add(&state.stats.received, 1);
    TopicCounters::add(&counters.received, 1);
    let started = state.exporter.timing().then(std::time::Instant::now);
    let rx = state.bridge.submit(id, env);
    let outcome = rx.await;
    if let Some(t) = started {
        counters.handler.observe(t.elapsed());
    }
    if matches!(outcome, Ok(Outcome::Failed(_))) {
        TopicCounters::add(&counters.handler_errors, 1);
    }
    match outcome {
        Ok(Outcome::Replied(reply)) => {
            let mut r = Response::new(AnswerBody::whole(reply));
            r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(REPLY_CONTENT_TYPE));
            r
        }
        o => {
            let (status, msg) = outcome_status(o);
            text(status, msg)
        }
    }
}

/// Hand the decoded messages of one batch (or frames) request to the subscriber and answer with
/// the per-message batch response; `items` are in request order, undecodable ones as errors.
/// With `receipt` (the publisher asked, `receipt.rs`) the answer's head goes out as soon as the
/// messages are queued for the handlers (the receipt), the batch response after them.
async fn deliver_batch(
    state: &Arc<ServerState>,
    id: String,
    items: Vec<Result<codec::Envelope, String>>,
    receipt: bool,
) -> Response<AnswerBody> {
    let mut failed = Vec::new();
    let mut envs = Vec::new();
    let mut indexes = Vec::new();
    let sub = subscription(state, &id);
    let received = items.len();
    for (index, item) in items.into_iter().enumerate() {
        let checked = item.map_err(|e| (StatusCode::BAD_REQUEST, e)).and_then(|env| match &sub {
            Ok((subscribed, _)) => topic_check(&id, subscribed, &env.topic).map(|_| env),
            Err(e) => Err(e.clone()),
        });
        match checked {
            Err((s, error)) => failed.push(batch::Failure { index, status: s.as_u16(), error }),
            Ok(env) => {
                envs.push(env);
                indexes.push(index);
            }
        }
    }
    let counters = sub.ok().filter(|_| !envs.is_empty()).map(|(_, c)| c);
    Stats::add(&state.stats.received, envs.len() as u64);
    let n = envs.len();
    if let Some(c) = &counters {
        TopicCounters::add(&c.received, n as u64);
    }
    let started = state.exporter.timing().then(std::time::Instant::now);
    // a receipt says that messages were queued for the handlers: none when nothing was
    let receipt = receipt && n > 0 && state.bridge.is_open();
    let queued = state.bridge.submit_batch(&id, envs);
    let answer = async move {
        let outcomes = queued.await;
        if let (Some(c), Some(t)) = (&counters, started) {
            let d = t.elapsed();
            for _ in 0..n {
                c.handler.observe(d);
            }
        }
        if let (Some(c), Ok(o)) = (&counters, &outcomes) {
            TopicCounters::add(&c.handler_errors, o.iter().filter(|o| matches!(o, Outcome::Failed(_))).count() as u64);
        }
        let outcomes = match outcomes {
            Ok(o) => o,
            Err(_) => vec![Outcome::Unavailable; indexes.len()],
        };
        let mut replies = Vec::new();
        for (index, o) in indexes.into_iter().zip(outcomes) {
            if let Outcome::Replied(reply) = o {
                replies.push((index, reply));
                continue;
            }
            let (status, error) = outcome_status(Ok(o));
            if status != StatusCode::OK {
                failed.push(batch::Failure { index, status: status.as_u16(), error });
            }
        }
        failed.sort_by_key(|f| f.index);
        batch::encode_response(received, failed, &replies)
    };
    let mut r = if receipt {
        let mut r = Response::new(AnswerBody::later(Box::pin(answer)));
        r.headers_mut().insert(receipt::HEADER, hyper::header::HeaderValue::from_static("1"));
        r
    } else {
        Response::new(AnswerBody::whole(answer.await))
    };
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, token_ok};

    #[test]
    fn tokens_compare() {
        let acc = vec![b"old-secret".to_vec(), b"new-secret".to_vec()];
        assert!(token_ok(&acc, b"old-secret"));
        assert!(token_ok(&acc, b"new-secret"));
        assert!(!token_ok(&acc, b"new-secre"));
        assert!(!token_ok(&acc, b"new-secretX"));
        assert!(!token_ok(&acc, b""));
        assert!(!token_ok(&[], b"x"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("%zz%"), "%zz%");
        assert_eq!(percent_decode("abc%4"), "abc%4");
        assert_eq!(percent_decode("%E2%9C%93"), "✓");
    }
}
