//! The publishing side: routing table (topic -> groups -> node links), fan-out, per-node retry,
//! the backlog for messages without a route, and `flush`.
//!
//! Broadcast: every node of the broadcast version gets the message, each on its own queue with
//! its own retry state. Queue group: one node per message, round-robin over healthy nodes, and a
//! failing node's messages fail over to another member. No route, or every node failing: the
//! message is parked in the backlog and sent as soon as a route appears or a node recovers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::{Mutex, RwLock};
use tokio::sync::{watch, Notify};

use crate::backlog::Backlog;
use crate::batch;
use crate::node::{Enqueued, Msg, NodeLink, NodeSpec};
use crate::stats::Stats;

pub use crate::config::PubConfig;

/// Registry version of a broadcast subscription (go-micro's).
pub const BROADCAST_VERSION: &str = "ff.http.broadcast";

pub struct Group {
    pub queue: Option<String>,
    pub nodes: Vec<Arc<NodeLink>>,
    rr: AtomicUsize,
}

impl Group {
    /// Round-robin over healthy nodes (any node when all fail), skipping `except`.
    fn pick(&self, except: Option<&NodeLink>) -> Option<&Arc<NodeLink>> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let eligible = |l: &&Arc<NodeLink>| except.is_none_or(|e| !std::ptr::eq(Arc::as_ptr(l), e));
        (0..n)
            .map(|i| &self.nodes[(start + i) % n])
            .filter(eligible)
            .find(|l| !l.is_failing())
            .or_else(|| (0..n).map(|i| &self.nodes[(start + i) % n]).find(eligible))
    }
}

#[derive(Default)]
pub struct TopicRoute {
    pub groups: Vec<Group>,
}

impl TopicRoute {
    fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.nodes.is_empty())
    }

    fn all_failing(&self) -> bool {
        self.groups.iter().flat_map(|g| g.nodes.iter()).all(|l| l.is_failing())
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, batch::Chunks>;
type H2cClient = Client<HttpConnector, batch::Chunks>;

/// The connection pools: HTTPS-or-HTTP/1.1 (ALPN offers h2 under TLS) and h2c (HTTP/2 with
/// prior knowledge) for plain-text hyperbroker peers that advertise it.
struct Clients {
    https_or_http: HttpsClient,
    h2c: H2cClient,
}

impl Clients {
    fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.enforce_http(false);
        conn.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(conn.clone());
        let https_or_http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .timer(hyper_util::rt::TokioTimer::new())
            .build(https);
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_adaptive_window(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(conn);
        Clients { https_or_http, h2c }
    }
}

pub struct Publisher {
    routes: RwLock<HashMap<String, Arc<TopicRoute>>>,
    links: Mutex<HashMap<(Arc<str>, String), Arc<NodeLink>>>,
    pub backlog: Backlog<Msg>,
    clients: RwLock<Arc<Clients>>,
    pub stats: Arc<Stats>,
    pub cfg: PubConfig,
    seq: AtomicU64,
    progress: Notify,
    shutdown: watch::Sender<bool>,
    auth: RwLock<Option<hyper::header::HeaderValue>>,
    rt: tokio::runtime::Handle,
}

fn link_key(topic: &Arc<str>, id: &str) -> (Arc<str>, String) {
    (topic.clone(), id.to_string())
}

impl Publisher {
    pub fn new(cfg: PubConfig, stats: Arc<Stats>, rt: tokio::runtime::Handle) -> crate::error::Result<Self> {
        let _guard = rt.enter();
        // go-micro's default: https peers are accepted without verification
        let tls = crate::tls::client_config(None, None)?;
        let clients = RwLock::new(Arc::new(Clients::new(tls)));
        let (shutdown, _) = watch::channel(false);
        Ok(Publisher {
            routes: RwLock::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            backlog: Backlog::new(cfg.backlog, cfg.backlog_bytes),
            clients,
            stats,
            cfg,
            seq: AtomicU64::new(0),
            progress: Notify::new(),
            shutdown,
            auth: RwLock::new(None),
            rt,
        })
    }

    /// Use this TLS client configuration for https peers from now on.
    pub fn set_tls_client(&self, tls: Arc<rustls::ClientConfig>) {
        let _guard = self.rt.enter();
        *self.clients.write() = Arc::new(Clients::new(tls));
    }

    pub fn set_auth_token(&self, token: Option<&str>) -> Result<(), String> {
        let v = match token {
            None => None,
            Some(t) => Some(
                hyper::header::HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| "auth token must be printable ASCII".to_string())?,
            ),
        };
        *self.auth.write() = v;
        Ok(())
    }

    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Accept one encoded envelope for `topic`. Returns true when a healthy node's queue is past
    /// the high-water mark (half of `node_queue`): the caller should wait for `wait_room` before
    /// publishing more, so that a slow consumer slows the producer instead of losing messages.
    pub fn publish(self: &Arc<Self>, topic: Arc<str>, envelope: Bytes) -> bool {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        Stats::add(&self.stats.published, 1);
        self.dispatch(Msg { seq, topic, envelope, share: Arc::default() })
    }

    fn high_water(&self) -> usize {
        (self.cfg.node_queue / 2).max(1)
    }

    /// True while some healthy node still has more than a quarter of `node_queue` queued.
    fn congested(&self) -> bool {
        let low = self.cfg.node_queue / 4;
        let links: Vec<Arc<NodeLink>> = self.links.lock().values().cloned().collect();
        links.iter().any(|l| !l.is_failing() && l.queue_len() > low)
    }

    /// Wait until no healthy node is congested (or `timeout` passes; returns false then).
    pub async fn wait_room(self: Arc<Self>, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.congested() {
                return true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = tokio::time::sleep_until(deadline) => return !self.congested(),
            }
        }
    }

    fn route(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        self.routes.read().get(topic).cloned()
    }

    fn dispatch(self: &Arc<Self>, msg: Msg) -> bool {
        match self.route(&msg.topic) {
            Some(r) if !r.is_empty() && !r.all_failing() => self.send_to_route(&r, msg),
            _ => {
                self.park(msg);
                false
            }
        }
    }

    fn send_to_route(self: &Arc<Self>, route: &TopicRoute, mut msg: Msg) -> bool {
        // a fresh dispatch: its copies share a new record of who holds them
        if Arc::strong_count(&msg.share) > 1 || msg.share.holders.load(Ordering::Acquire) != 0 || msg.share.reached_someone() {
            msg.share = Arc::default();
        }
        let mut congested = false;
        for g in &route.groups {
            match &g.queue {
                None => {
                    for l in &g.nodes {
                        congested |= self.enqueue(l, msg.clone());
                    }
                }
                Some(_) => {
                    if let Some(l) = g.pick(None) {
                        congested |= self.enqueue(l, msg.clone());
                    }
                }
            }
        }
        congested
    }

    /// Queue on one node; returns true when that healthy node is past the high-water mark.
    fn enqueue(self: &Arc<Self>, link: &Arc<NodeLink>, msg: Msg) -> bool {
        Stats::add(&self.stats.in_flight, 1);
        match link.push(msg, self.cfg.node_queue) {
            Enqueued::Ok { dropped, len } => {
                if dropped {
                    // only a node that does not keep up and is not failing over gets here when
                    // the producer ignores back-pressure; memory stays bounded, the drop counted
                    Stats::sub(&self.stats.in_flight, 1);
                    Stats::add(&self.stats.dropped, 1);
                }
                len >= self.high_water() && !link.is_failing()
            }
            Enqueued::Gone(m) => {
                Stats::sub(&self.stats.in_flight, 1);
                self.park(m);
                false
            }
        }
    }

    fn park(&self, msg: Msg) {
        Stats::add(&self.stats.backlogged, 1);
        let topic = msg.topic.clone();
        let out = self.backlog.push(&topic, msg);
        Stats::add(&self.stats.dropped, out.dropped);
    }

    fn park_front(&self, topic: &str, mut msgs: Vec<Msg>) {
        msgs.sort_by_key(|m| m.seq);
        Stats::add(&self.stats.backlogged, msgs.len() as u64);
        let out = self.backlog.push_front_all(topic, msgs);
        Stats::add(&self.stats.dropped, out.dropped);
    }

    /// Send what waits in the backlog for `topic` to its route, oldest first.
    pub fn drain_backlog(self: &Arc<Self>, topic: &str) {
        loop {
            let Some(route) = self.route(topic).filter(|r| !r.is_empty() && !r.all_failing()) else { return };
            let items = self.backlog.drain(topic, 256);
            if items.is_empty() {
                return;
            }
            for m in items {
                let _ = self.send_to_route(&route, m);
            }
        }
    }

    /// Replace the route of `topic`: `groups` are (registry version, nodes). Nodes that left are
    /// stopped (their queued messages handled by `leftovers`), new ones get a worker.
    pub fn set_routes(self: &Arc<Self>, topic: &str, groups: Vec<(String, Vec<NodeSpec>)>) -> Result<(), String> {
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut new_groups = Vec::with_capacity(groups.len());
        let mut spawn = Vec::new();
        {
            let mut links = self.links.lock();
            let mut keep: HashSet<String> = HashSet::new();
            for (version, specs) in groups {
                let queue = if version == BROADCAST_VERSION { None } else { Some(version) };
                let mut nodes = Vec::with_capacity(specs.len());
                for spec in specs {
                    if !keep.insert(spec.id.clone()) {
                        continue; // the same node listed twice: once is enough
                    }
                    let key = link_key(&topic_arc, &spec.id);
                    let reuse = links
                        .get(&key)
                        .filter(|l| l.spec == spec && l.queue_group == queue && !l.state.lock().removed)
                        .cloned();
                    let link = match reuse {
                        Some(l) if l.is_evicted() => continue, // its prober re-adds it
                        Some(l) => l,
                        None => {
                            let cap = spec.max_body.map_or(self.cfg.max_batch_bytes, |m| self.cfg.max_batch_bytes.min(m.saturating_sub(1024).max(1)));
                            let l = Arc::new(NodeLink::new(spec, topic_arc.clone(), queue.clone())?);
                            l.batch_cap.store(cap, Ordering::Relaxed);
                            if let Some(old) = links.insert(key, l.clone()) {
                                old.mark_removed(true);
                            }
                            spawn.push(l.clone());
                            l
                        }
                    };
                    nodes.push(link);
                }
                if !nodes.is_empty() {
                    new_groups.push(Group { queue, nodes, rr: AtomicUsize::new(0) });
                }
            }
            for (k, l) in links.iter() {
                if &*k.0 == topic && !keep.contains(&k.1) {
                    l.mark_removed(true);
                }
            }
            let mut routes = self.routes.write();
            if new_groups.is_empty() {
                routes.remove(topic);
            } else {
                routes.insert(topic.to_string(), Arc::new(TopicRoute { groups: new_groups }));
            }
        }
        for l in spawn {
            self.spawn_worker(l);
        }
        self.drain_backlog(topic);
        Ok(())
    }

    fn spawn_worker(self: &Arc<Self>, link: Arc<NodeLink>) {
        let n = self.cfg.node_inflight.max(1);
        link.state.lock().inflight = vec![None; n];
        link.live_workers.store(n, Ordering::Release);
        for w in 0..n {
            let me = self.clone();
            let link = link.clone();
            self.rt.spawn(async move { me.run_worker(link, w).await });
        }
    }

    /// Messages of a node that left. A queue group hands them to another member (or, with none
    /// left, to the backlog). A broadcast node's copy is parked in the backlog only when no other
    /// node holds or delivered it; a broadcast subscriber that unsubscribed while the topic still
    /// has others simply does not get them (counted as dropped).
    fn leftovers(self: &Arc<Self>, link: &Arc<NodeLink>, msgs: Vec<Msg>, graceful: bool) {
        if msgs.is_empty() {
            return;
        }
        Stats::sub(&self.stats.in_flight, msgs.len() as u64);
        let route = self.route(&link.topic).filter(|r| !r.is_empty());
        if let (Some(q), Some(r)) = (&link.queue_group, &route) {
            if let Some(g) = r.groups.iter().find(|g| g.queue.as_ref() == Some(q)) {
                if g.nodes.iter().any(|l| !std::ptr::eq(Arc::as_ptr(l), Arc::as_ptr(link))) {
                    for m in msgs {
                        m.share.release(false);
                        if let Some(l) = g.pick(Some(link)) {
                            let _ = self.enqueue(l, m);
                        }
                    }
                    return;
                }
            }
        }
        let mut park = Vec::with_capacity(msgs.len());
        let mut dropped = 0u64;
        for m in msgs {
            let others = m.share.release(false);
            let covered = others > 0 || m.share.reached_someone();
            if link.queue_group.is_some() {
                park.push(m); // the whole group is gone: wait for a member
            } else if covered || (graceful && route.is_some()) {
                dropped += 1;
            } else {
                park.push(m);
            }
        }
        Stats::add(&self.stats.dropped, dropped);
        if park.is_empty() {
            return;
        }
        // they are older than what was parked while the node was failing: they go first
        self.park_front(&link.topic, park);
        self.drain_backlog(&link.topic);
    }

    fn take_batch(&self, link: &NodeLink, w: usize) -> Result<Vec<Msg>, (Vec<Msg>, bool)> {
        let mut st = link.state.lock();
        if st.removed {
            let graceful = st.graceful;
            return Err((st.queue.drain(..).collect(), graceful));
        }
        let mut out = Vec::new();
        if link.is_evicted() {
            return Ok(out); // the worker that evicted it probes; the others wait
        }
        if link.spec.batch {
            let mut bytes = 0usize;
            while let Some(m) = st.queue.front() {
                if !out.is_empty() && (out.len() >= self.cfg.max_batch || bytes + m.envelope.len() > link.batch_cap.load(Ordering::Relaxed)) {
                    break;
                }
                bytes += m.envelope.len() + 1;
                if let Some(m) = st.queue.pop_front() {
                    out.push(m);
                }
            }
        } else if let Some(m) = st.queue.pop_front() {
            out.push(m);
        }
        if let Some(slot) = st.inflight.get_mut(w) {
            *slot = out.iter().map(|m| m.seq).min();
        }
        let more = !st.queue.is_empty();
        drop(st);
        if more && self.cfg.node_inflight > 1 {
            link.notify.notify_one(); // let another worker of this node take the next batch
        }
        Ok(out)
    }

    fn clear_inflight(link: &NodeLink, w: usize) {
        if let Some(slot) = link.state.lock().inflight.get_mut(w) {
            *slot = None;
        }
    }

    /// Put a failed batch back; if another worker evicted the node meanwhile, it goes where an
    /// evicted node's messages go instead.
    fn requeue_or_hand_over(self: &Arc<Self>, link: &Arc<NodeLink>, msgs: Vec<Msg>) {
        if let Err(msgs) = link.requeue_front_unless_evicted(msgs) {
            self.leftovers(link, msgs, false);
        }
    }

    async fn run_worker(self: Arc<Self>, link: Arc<NodeLink>, w: usize) {
        let mut shutdown = self.shutdown.subscribe();
        let mut backoff = self.cfg.retry_min;
        // grows with every eviction, resets when a delivery succeeds: a node that accepts TCP
        // but fails every request (e.g. TLS) is not re-added in a tight loop
        let mut probe_backoff = self.cfg.retry_min;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let batch = match self.take_batch(&link, w) {
                Ok(b) => b,
                Err((left, graceful)) => {
                    self.leftovers(&link, left, graceful);
                    break;
                }
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = link.notify.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let n = batch.len() as u64;
            let result = self.send(&link, &batch).await;
            let mut retry: Vec<Msg> = Vec::new();
            let mut retry_now: Vec<Msg> = Vec::new();
            let mut gone = false;
            match result {
                SendResult::Done { failed } => {
                    // an answer came back (even one naming failures): the connection works
                    link.unreachable.store(0, Ordering::Release);
                    let mut ok = n;
                    let mut idx = failed.into_iter().peekable();
                    for (i, m) in batch.into_iter().enumerate() {
                        match idx.next_if(|f| f.0 == i) {
                            None => {
                                m.share.release(true);
                            }
                            Some((_, status, err)) => {
                                ok -= 1;
                                if status >= 300 {
                                    self.stats.set_error(format!("{} answered {status}: {}", link.spec.address, err.trim()));
                                }
                                let verdict = if status == 413 && n > 1 {
                                    // the batch, not the message, was too large: send smaller ones
                                    let cap = link.batch_cap.load(Ordering::Relaxed).min(self.cfg.max_batch_bytes);
                                    link.batch_cap.store((cap / 2).max(1), Ordering::Relaxed);
                                    Verdict::Split
                                } else {
                                    classify(status)
                                };
                                match verdict {
                                    Verdict::Split => retry_now.push(m),
                                    Verdict::Retry => {
                                        if status == 500 {
                                            Stats::add(&self.stats.remote_handler_errors, 1);
                                        }
                                        retry.push(m)
                                    }
                                    Verdict::Gone => {
                                        gone = true;
                                        retry.push(m)
                                    }
                                    Verdict::Reject => {
                                        m.share.release(false);
                                        Stats::add(&self.stats.failed, 1);
                                        Stats::sub(&self.stats.in_flight, 1);
                                        self.stats.set_error(format!("{} refused a message: {status} {err}", link.spec.address));
                                    }
                                }
                            }
                        }
                    }
                    Stats::add(&self.stats.delivered, ok);
                    Stats::sub(&self.stats.in_flight, ok);
                }
                SendResult::Unreachable(err) => {
                    self.stats.set_error(format!("{}: {err}", link.spec.address));
                    retry = batch;
                    link.unreachable.fetch_add(1, Ordering::AcqRel);
                }
            }
            Self::clear_inflight(&link, w);
            if !retry.is_empty() && link.is_evicted() {
                // another worker of this node evicted it while this batch was on the wire
                self.leftovers(&link, retry, false);
                self.progress.notify_waiters();
                continue;
            }
            let evict = !retry.is_empty()
                && !gone
                && link.unreachable.load(Ordering::Acquire) >= self.cfg.evict_after
                && !link.evicted.swap(true, Ordering::AcqRel);
            if evict {
                // the node does not answer: take it out of the route, let its messages wait in
                // the backlog (or go to another member of its queue group), probe it
                link.requeue_front(retry);
                let left = link.take_all();
                link.failing.store(true, Ordering::Release);
                self.remove_link_from_route(&link);
                Stats::add(&self.stats.evicted, 1);
                self.leftovers(&link, left, false);
                self.progress.notify_waiters();
                if !self.probe_until_back(&link, &mut shutdown, probe_backoff).await {
                    break;
                }
                probe_backoff = (probe_backoff * 2).min(self.cfg.retry_max);
                link.unreachable.store(0, Ordering::Release);
                link.notify.notify_waiters(); // the other workers of this node resume
                backoff = self.cfg.retry_min;
                continue;
            }
            if !retry_now.is_empty() {
                // resend at once in smaller batches (no back-off: nothing failed but the size)
                retry_now.extend(retry);
                retry_now.sort_by_key(|m| m.seq);
                self.requeue_or_hand_over(&link, retry_now);
                if !gone {
                    continue;
                }
                retry = Vec::new();
            }
            if gone {
                // the node does not know this subscription any more (404): drop the route
                self.requeue_or_hand_over(&link, retry);
                link.mark_removed(false);
                self.remove_link_from_route(&link);
                self.progress.notify_waiters();
                continue;
            }
            if retry.is_empty() {
                backoff = self.cfg.retry_min;
                probe_backoff = self.cfg.retry_min;
                if link.failing.swap(false, Ordering::AcqRel) {
                    self.drain_backlog(&link.topic);
                }
                self.progress.notify_waiters();
                continue;
            }
            Stats::add(&self.stats.retried, retry.len() as u64);
            let was_failing = link.failing.swap(true, Ordering::AcqRel);
            let partial = (retry.len() as u64) < n;
            if partial && !was_failing {
                // the node answered; only some handlers failed: it is not down
                link.failing.store(false, Ordering::Release);
            }
            let retry = self.failover(&link, retry);
            self.requeue_or_hand_over(&link, retry);
            self.progress.notify_waiters();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {}
            }
            backoff = (backoff * 2).min(self.cfg.retry_max);
        }
        if link.live_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // the last worker of this node: whatever a sibling put back meanwhile is handed on
            let left = link.take_all();
            if !left.is_empty() && !*shutdown.borrow() {
                let graceful = link.state.lock().graceful;
                self.leftovers(&link, left, graceful);
            }
            self.links.lock().retain(|_, l| !Arc::ptr_eq(l, &link));
        } else {
            link.notify.notify_one(); // a sibling may be waiting for work that is now gone
        }
        self.progress.notify_waiters();
    }

    /// Probe an evicted node with an HTTP request through the same client (TLS included),
    /// backing off, until it answers; then put it back in its route. False when the node was
    /// removed or the publisher closed meanwhile.
    async fn probe_until_back(self: &Arc<Self>, link: &Arc<NodeLink>, shutdown: &mut watch::Receiver<bool>, first: Duration) -> bool {
        let mut backoff = first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return false,
                _ = link.notify.notified() => {}
            }
            if *shutdown.borrow() || link.is_removed() {
                return false;
            }
            if self.probe(link).await {
                link.evicted.store(false, Ordering::Release);
                link.failing.store(false, Ordering::Release);
                self.readd_link(link);
                self.drain_backlog(&link.topic);
                return true;
            }
            backoff = (backoff * 2).min(self.cfg.retry_max);
        }
    }

    /// Does the node answer an HTTP request at all (any status)?
    async fn probe(&self, link: &NodeLink) -> bool {
        let Ok(req) = Request::head(link.uri.clone()).body(batch::Chunks::batch(std::iter::empty())) else { return false };
        let clients = self.clients.read().clone();
        let fut = async {
            if link.spec.h2 && !link.spec.secure {
                clients.h2c.request(req).await
            } else {
                clients.https_or_http.request(req).await
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), fut).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                self.stats.set_error(format!("{}: {}", link.spec.address, describe_client_error(&e)));
                false
            }
            Err(_) => false,
        }
    }

    fn readd_link(&self, link: &Arc<NodeLink>) {
        let mut routes = self.routes.write();
        let mut groups: Vec<Group> = routes
            .get(&*link.topic)
            .map(|r| {
                r.groups
                    .iter()
                    .map(|g| Group { queue: g.queue.clone(), nodes: g.nodes.clone(), rr: AtomicUsize::new(g.rr.load(Ordering::Relaxed)) })
                    .collect()
            })
            .unwrap_or_default();
        match groups.iter_mut().find(|g| g.queue == link.queue_group) {
            Some(g) if g.nodes.iter().any(|l| Arc::ptr_eq(l, link)) => return,
            Some(g) => g.nodes.push(link.clone()),
            None => groups.push(Group { queue: link.queue_group.clone(), nodes: vec![link.clone()], rr: AtomicUsize::new(0) }),
        }
        routes.insert(link.topic.to_string(), Arc::new(TopicRoute { groups }));
    }

    /// For a queue group, hand failed messages to a healthy member; returns what stays here.
    fn failover(self: &Arc<Self>, link: &Arc<NodeLink>, msgs: Vec<Msg>) -> Vec<Msg> {
        if link.queue_group.is_none() {
            return msgs;
        }
        let Some(route) = self.route(&link.topic) else { return msgs };
        let Some(g) = route.groups.iter().find(|g| g.queue == link.queue_group) else { return msgs };
        let Some(other) = g.pick(Some(link)).filter(|o| !o.is_failing()).cloned() else { return msgs };
        for m in msgs {
            let share = m.share.clone();
            let pushed = other.push(m, self.cfg.node_queue);
            share.release(false); // the copy moved: this node no longer holds it
            match pushed {
                Enqueued::Ok { dropped, .. } => {
                    if dropped {
                        Stats::sub(&self.stats.in_flight, 1);
                        Stats::add(&self.stats.dropped, 1);
                    }
                }
                Enqueued::Gone(m) => {
                    Stats::sub(&self.stats.in_flight, 1);
                    self.park(m);
                }
            }
        }
        Vec::new()
    }

    fn remove_link_from_route(&self, link: &Arc<NodeLink>) {
        let mut routes = self.routes.write();
        let Some(r) = routes.get(&*link.topic) else { return };
        let groups: Vec<Group> = r
            .groups
            .iter()
            .map(|g| Group {
                queue: g.queue.clone(),
                nodes: g.nodes.iter().filter(|l| !Arc::ptr_eq(l, link)).cloned().collect(),
                rr: AtomicUsize::new(g.rr.load(Ordering::Relaxed)),
            })
            .filter(|g| !g.nodes.is_empty())
            .collect();
        if groups.is_empty() {
            routes.remove(&*link.topic);
        } else {
            routes.insert(link.topic.to_string(), Arc::new(TopicRoute { groups }));
        }
    }

    async fn send(&self, link: &NodeLink, batch: &[Msg]) -> SendResult {
        let (body, ct) = if link.spec.batch && (link.spec.h2 || link.spec.secure) {
            // anything that may be HTTP/2 (h2c, or ALPN under TLS) gets one contiguous DATA
            // payload: many small DATA frames from concurrent streams made hyper's h2 fail
            (batch::Chunks::flat(batch.iter().map(|m| &m.envelope)), batch::CONTENT_TYPE)
        } else if link.spec.batch {
            (batch::Chunks::batch(batch.iter().map(|m| &m.envelope)), batch::CONTENT_TYPE)
        } else {
            (batch::Chunks::one(batch[0].envelope.clone()), "application/json")
        };
        let mut req = match Request::post(link.uri.clone()).header(CONTENT_TYPE, ct).body(body) {
            Ok(r) => r,
            Err(e) => return SendResult::Unreachable(format!("could not build request: {e}")),
        };
        if let Some(a) = self.auth.read().clone() {
            req.headers_mut().insert(hyper::header::AUTHORIZATION, a);
        }
        let clients = self.clients.read().clone();
        let fut = async {
            if link.spec.h2 && !link.spec.secure {
                clients.h2c.request(req).await
            } else {
                clients.https_or_http.request(req).await
            }
        };
        let resp = match tokio::time::timeout(self.cfg.request_timeout, fut).await {
            Err(_) => return SendResult::Unreachable("request timed out".into()),
            Ok(Err(e)) => return SendResult::Unreachable(describe_client_error(&e)),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let is_batch_reply = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let body = match tokio::time::timeout(self.cfg.request_timeout, Limited::new(resp.into_body(), 4 << 20).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) => return SendResult::Unreachable(format!("could not read the response: {e}")),
            Err(_) => return SendResult::Unreachable("response timed out".into()),
        };
        if status == StatusCode::OK && link.spec.batch && is_batch_reply {
            return match batch::decode_response(&body) {
                Ok(r) if r.received.is_some_and(|n| n != batch.len()) => SendResult::Unreachable(format!(
                    "the node read {} of the {} envelopes sent (truncated request)",
                    r.received.unwrap_or_default(),
                    batch.len()
                )),
                Ok(r) => SendResult::Done {
                    failed: r.failed.into_iter().filter(|f| f.index < batch.len()).map(|f| (f.index, f.status, f.error)).collect(),
                },
                Err(e) => SendResult::Unreachable(e.to_string()),
            };
        }
        if status.is_success() {
            return SendResult::Done { failed: Vec::new() };
        }
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        SendResult::Done { failed: (0..batch.len()).map(|i| (i, status.as_u16(), text.clone())).collect() }
    }

    /// Lowest sequence number still owed by any node (queued or on the wire).
    fn min_pending(&self) -> Option<u64> {
        let links: Vec<Arc<NodeLink>> = self.links.lock().values().cloned().collect();
        links.iter().filter_map(|l| l.min_pending()).min()
    }

    /// Wait until every message published up to `target` is delivered, refused or parked.
    pub async fn flush(self: Arc<Self>, target: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.min_pending().is_none_or(|m| m > target) {
                return true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return self.min_pending().is_none_or(|m| m > target);
                }
            }
        }
    }

    /// Stop every worker; what is still queued is counted as dropped.
    pub fn close(&self) {
        let _ = self.shutdown.send(true);
        let links: Vec<Arc<NodeLink>> = self.links.lock().drain().map(|(_, l)| l).collect();
        for l in links {
            let n = {
                let mut st = l.state.lock();
                st.removed = true;
                let n = st.queue.len();
                st.queue.clear();
                n
            };
            Stats::sub(&self.stats.in_flight, n as u64);
            Stats::add(&self.stats.dropped, n as u64);
            l.notify.notify_one();
        }
        self.routes.write().clear();
    }

    pub fn route_count(&self, topic: &str) -> usize {
        self.route(topic).map_or(0, |r| r.groups.iter().map(|g| g.nodes.len()).sum())
    }
}

enum SendResult {
    /// the node answered; `failed` lists (index, status, reason) of what it did not take
    Done { failed: Vec<(usize, u16, String)> },
    /// no answer: connection refused, reset, timed out
    Unreachable(String),
}

enum Verdict {
    Retry,
    Gone,
    Reject,
    /// 413 to a batch: split it
    Split,
}

fn classify(status: u16) -> Verdict {
    match status {
        404 => Verdict::Gone,
        400 | 413 | 414 | 422 => Verdict::Reject,
        _ => Verdict::Retry, // 5xx, 401/403 (credentials may be fixed), 429, ...
    }
}

fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
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
