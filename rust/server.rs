//! The subscriber endpoint: `POST /_sub?id=<node id>` (go-micro v1) or `POST /?id=<node id>`
//! (current go-micro) with a go-micro envelope (or a batch).
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
//! Hostile connections: connections are capped per peer address and in total (over a cap a new
//! connection is closed right after accept and counted in `connections_refused`); a connection
//! that sends no request within `header_read_timeout` is closed; a refused request whose body
//! is still coming is answered first and its body read and discarded up to a bound
//! (`LINGER_BYTES` / `LINGER_TIME`), so clients that write the whole body before reading see
//! the 413/401/400; and the memory of closed connections is handed back to the OS.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, EXPECT};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::RwLock;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::batch;
use crate::bridge::{Bridge, Outcome};
use crate::codec;
use crate::error::{Error, Result};
use crate::metrics::Exporter;
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

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())));
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
    if state.draining.load(std::sync::atomic::Ordering::Acquire) {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "subscriber is draining".into()));
    }
    let subs = state.subs.read();
    match subs.get(id) {
        None => Err((StatusCode::NOT_FOUND, format!("no subscriber with id {id:?} here"))),
        Some(s) if s.topic != topic => {
            Err((StatusCode::NOT_FOUND, format!("subscriber {id:?} is subscribed to {:?}, not {topic:?}", s.topic)))
        }
        Some(s) => Ok(s.counters.clone()),
    }
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

async fn handle(state: Arc<ServerState>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
fn linger(parts: &Parts, body: Incoming, started: bool, r: &mut Response<Full<Bytes>>) {
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
fn unauthorized(state: &ServerState, req: &Parts) -> Option<Response<Full<Bytes>>> {
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
fn healthz(state: &ServerState) -> Response<Full<Bytes>> {
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
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    if status != "serving" {
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// `GET /metrics` (with the `metrics` option): the Prometheus text exposition.
fn metrics(state: &ServerState, req: &Parts) -> Response<Full<Bytes>> {
    if !state.exporter.serve_metrics {
        return text(StatusCode::NOT_FOUND, "metrics are off (Broker(metrics=True) serves them)");
    }
    if let Some(r) = unauthorized(state, req) {
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(state.exporter.render())));
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE));
    r
}

async fn handle_inner(state: &Arc<ServerState>, req: &Parts, pending: &mut PendingBody) -> Response<Full<Bytes>> {
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
    let is_batch = req.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with(batch::CONTENT_TYPE));
    let Some(incoming) = pending.body.as_mut() else {
        return text(StatusCode::BAD_REQUEST, "the request body was already read");
    };
    pending.started = true;
    let read = tokio::time::timeout(state.config.body_read_timeout, Limited::new(incoming, max).collect()).await;
    let Ok(read) = read else {
        pending.body = None; // a slow client is not waited for any longer
        return text(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time");
    };
    let body = match read {
        Ok(b) => {
            pending.body = None;
            b.to_bytes()
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
    if is_batch {
        return handle_batch(state, id, &body).await;
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
            let mut r = Response::new(Full::new(reply));
            r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(REPLY_CONTENT_TYPE));
            r
        }
        o => {
            let (status, msg) = outcome_status(o);
            text(status, msg)
        }
    }
}

async fn handle_batch(state: &Arc<ServerState>, id: String, body: &[u8]) -> Response<Full<Bytes>> {
    let mut failed = Vec::new();
    let mut envs = Vec::new();
    let mut indexes = Vec::new();
    let mut counters: Option<Arc<TopicCounters>> = None;
    let lines = batch::split(body);
    let received = lines.len();
    for (index, line) in lines.into_iter().enumerate() {
        match codec::decode_message(line).map_err(|e| e.to_string()).and_then(|env| limits_check(state, &env).map(|_| env)) {
            Err(e) => failed.push(batch::Failure { index, status: 400, error: e }),
            Ok(env) => match route_check(state, &id, &env.topic) {
                Err((s, m)) => failed.push(batch::Failure { index, status: s.as_u16(), error: m }),
                Ok(c) => {
                    counters.get_or_insert(c);
                    envs.push(env);
                    indexes.push(index);
                }
            },
        }
    }
    Stats::add(&state.stats.received, envs.len() as u64);
    let n = envs.len();
    if let Some(c) = &counters {
        TopicCounters::add(&c.received, n as u64);
    }
    let started = state.exporter.timing().then(std::time::Instant::now);
    let outcomes = state.bridge.submit_batch(&id, envs).await;
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
    let mut r = Response::new(Full::new(batch::encode_response(received, failed, &replies)));
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    r
}

/// The protocol sniffing of hyper-util's auto builder has no timeout of its own and hyper's
/// header timeout starts only after it: a client must send its first 24 bytes (the length of
/// the HTTP/2 preface) within `deadline`, or the connection is closed.
pub struct FirstBytesDeadline<S> {
    inner: S,
    seen: usize,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

const SNIFF_BYTES: usize = 24;

impl<S> FirstBytesDeadline<S> {
    pub fn new(inner: S, deadline: std::time::Duration) -> Self {
        FirstBytesDeadline { inner, seen: 0, sleep: Some(Box::pin(tokio::time::sleep(deadline))) }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytesDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        let me = &mut *self;
        if me.sleep.is_some() {
            me.seen += got;
            if me.seen >= SNIFF_BYTES || (got == 0 && r.is_ready()) {
                me.sleep = None;
            } else if r.is_pending() {
                if let Some(sl) = me.sleep.as_mut() {
                    if sl.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "client sent too little too slowly",
                        )));
                    }
                }
            }
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytesDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serve one connection (plain or TLS) until it closes or the endpoint stops.
async fn serve_io<I>(io: I, state: Arc<ServerState>, mut sd: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let timeout = state.config.header_read_timeout;
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |req| handle(svc_state.clone(), req));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(true).half_close(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256).keep_alive_interval(Some(timeout)).keep_alive_timeout(timeout);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = sd.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
        }
    }
}

/// Counts a connection against the per-peer and the total cap; released on drop.
struct PeerGuard {
    state: Arc<ServerState>,
    ip: std::net::IpAddr,
}

impl PeerGuard {
    /// None when the peer or the endpoint as a whole is at its cap.
    fn acquire(state: &Arc<ServerState>, ip: std::net::IpAddr) -> Option<PeerGuard> {
        let mut peers = state.peers.lock();
        if state.open_conns.load(std::sync::atomic::Ordering::Acquire) >= state.config.max_connections {
            return None;
        }
        let n = peers.entry(ip).or_insert(0);
        if *n >= state.config.max_connections_per_peer {
            return None;
        }
        *n += 1;
        state.open_conns.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        reclaim::opened();
        Some(PeerGuard { state: state.clone(), ip })
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        {
            let mut peers = self.state.peers.lock();
            if let Some(n) = peers.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&self.ip);
                    // a flood from many addresses must not leave a big table behind
                    let len = peers.len();
                    if peers.capacity() > 64 && len * 4 < peers.capacity() {
                        peers.shrink_to(len * 2);
                    }
                }
            }
        }
        self.state.open_conns.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.state.conn_closed.notify_waiters();
        reclaim::closed();
    }
}

/// Handing the memory of closed connections back to the OS.
///
/// Measured: 8,000 idle connections took ~50 MB; after they closed, all of it was free inside
/// glibc's malloc (`malloc_trim(0)` brought RSS back to within 1 MB of before) but not returned,
/// because it sits in the per-thread arenas of the tokio workers, below live chunks, where
/// glibc's automatic trimming (top of heap only) never reaches. So once many connections of
/// this process's endpoints have closed since the last peak, `malloc_trim(0)` runs once, a
/// moment later (so a whole wave is done), on a blocking thread. Steady traffic never triggers
/// it: only a drop of `TRIM_AFTER_CLOSED` open connections from their peak does. Elsewhere
/// than glibc this is a no-op.
mod reclaim {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// a drop of this many open connections from the peak triggers a trim
    const TRIM_AFTER_CLOSED: usize = 256;
    /// the trim waits this long after the trigger, so one trim covers a whole wave of closes
    const TRIM_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

    /// open endpoint connections of the whole process (malloc is process-wide), and their peak
    /// since the last trim
    static OPEN: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    static SCHEDULED: AtomicBool = AtomicBool::new(false);

    pub(super) fn opened() {
        let now = OPEN.fetch_add(1, Ordering::AcqRel) + 1;
        PEAK.fetch_max(now, Ordering::AcqRel);
    }

    pub(super) fn closed() {
        let now = OPEN.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if PEAK.load(Ordering::Acquire).saturating_sub(now) < TRIM_AFTER_CLOSED || SCHEDULED.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            SCHEDULED.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async {
            tokio::time::sleep(TRIM_DELAY).await;
            let _ = tokio::task::spawn_blocking(trim).await;
            PEAK.store(OPEN.load(Ordering::Acquire), Ordering::Release);
            SCHEDULED.store(false, Ordering::Release);
        });
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim() {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: malloc_trim only releases free memory of glibc's own heaps; thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }

    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    fn trim() {}
}

/// A running endpoint; dropping the handle does not stop it, `stop` does.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stop accepting and wait (bounded) until the listening socket and every accepted
    /// connection are closed, so that once this returns nothing of this endpoint answers any
    /// more (a keep-alive connection must not answer for a successor on the same port).
    /// Call from outside the runtime.
    pub fn stop_blocking(self, rt: &tokio::runtime::Runtime, state: &Arc<ServerState>) {
        let _ = self.shutdown.send(true);
        let accept = self.accept;
        let state = state.clone();
        rt.block_on(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), accept).await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
                loop {
                    let closed = state.conn_closed.notified();
                    tokio::pin!(closed);
                    closed.as_mut().enable();
                    if state.open_conns.load(std::sync::atomic::Ordering::Acquire) == 0 {
                        break;
                    }
                    closed.await;
                }
            })
            .await;
        });
    }
}

/// Length of the queue of connections the kernel completed but the endpoint did not accept yet
/// (the kernel caps it at `net.core.somaxconn`). The standard library's 128 overflowed under a
/// burst of connections: the kernel then drops SYNs and the client (a publisher too) waits a
/// whole second for the retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?; // as std's TcpListener::bind does on Unix
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bind and serve. HTTP/1.1 keep-alive and HTTP/2 (prior knowledge) on the same port.
pub async fn serve(state: Arc<ServerState>, addr: SocketAddr) -> Result<ServerHandle> {
    let cannot = |e: std::io::Error| Error::io(format!("cannot listen on {addr}: {e}"));
    let listener = bind(addr).map_err(cannot)?;
    let local_addr = listener.local_addr().map_err(cannot)?;
    let (tx, rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, state, rx));
    Ok(ServerHandle { local_addr, shutdown: tx, accept })
}

async fn accept_loop(listener: TcpListener, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, peer)) = r else {
                    // e.g. EMFILE: back off briefly instead of spinning
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let Some(guard) = PeerGuard::acquire(&state, peer.ip()) else {
                    drop(stream); // over a connection cap: closed at once, not held
                    Stats::add(&state.stats.connections_refused, 1);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let sd = shutdown.clone();
                let tls = state.tls.read().clone();
                tokio::spawn(async move {
                    let _guard = guard;
                        let deadline = state.config.header_read_timeout;
                    match tls {
                        None => serve_io(TokioIo::new(FirstBytesDeadline::new(stream, deadline)), state, sd).await,
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            let hs = tokio::time::timeout(state.config.header_read_timeout, acceptor.accept(stream)).await;
                            match hs {
                                Ok(Ok(tls_stream)) => {
                                    serve_io(TokioIo::new(FirstBytesDeadline::new(tls_stream, deadline)), state, sd).await
                                }
                                Ok(Err(_)) => Stats::add(&state.stats.tls_handshake_failures, 1),
                                Err(_) => Stats::add(&state.stats.tls_handshake_failures, 1),
                            }
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
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
