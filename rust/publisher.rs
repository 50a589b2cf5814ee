//! The publishing side's facade (`Publisher`): accept messages (numbered and handed to the
//! dispatcher on the runtime: `ingress.rs`, `wakeups.rs`), route them (`route_accepted`, on the
//! dispatcher, in `publisher/dispatch.rs`) along their topic's route onto node queues, park
//! what has no route in the backlog, decide what becomes of a leaving node's messages
//! (`leftovers`, in `publisher/handover.rs`), apply route updates, and `flush` / `close`.
//!
//! Broadcast: every node of the broadcast version gets the message, each on its own queue with
//! its own retry state. Queue group: one node per message, round-robin over healthy nodes, and a
//! failing node's messages fail over to another member. No route, or every node failing: the
//! message is parked in the backlog and sent as soon as a route appears or a node recovers.
//!
//! Request/reply (`request`): one envelope to one node of the topic (round-robin over all of its
//! nodes, broadcast ones too), POSTed at once, past the node queues and never batched; without a
//! route it waits for one until the deadline. An attempt that did not reach a handler
//! (connection refused, 404, 503) is tried again on the next node; any other answer is final:
//! a request is never retried once a handler may have run.
//!
//! What it delegates: the routing table to `route.rs`, each node's queue and state to
//! `node.rs`, routing on the runtime and waking the node workers (one coalesced wake-up per
//! burst) to `wakeups.rs`, the
//! send loop, retries and eviction to `worker.rs`, HTTP to `client.rs`; a message's bytes in both
//! wire forms are `payload.rs`'s.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::backlog::Backlog;
use crate::client::{Answer, Attempt, Transport};
use crate::error::Error;
use crate::ingress::Entry;
use crate::msg::{DeadLetter, Msg};
use crate::node::{NodeLink, NodeSpec};
use crate::notices::Notices;
use crate::payload::Payload;
use crate::progress::Progress;
use crate::route::{Group, Routes};
use crate::stats::{Drop, Stats};
use crate::topic_stats::{TopicCounters, TopicStats};
use crate::wakeups::{Router, Wakeups};
use crate::worker;

pub use crate::config::PubConfig;
pub use crate::route::BROADCAST_VERSION;

/// How often `wait_room` and `flush` re-check without being woken.
const ROOM_TICK: Duration = Duration::from_millis(20);
const FLUSH_TICK: Duration = Duration::from_millis(50);
/// `publish_all` calls of this many messages or more are routed on the calling thread.
pub const ROUTE_INLINE: usize = 256;
/// Passes of `min_pending` over the links before it gives up on a moment without moves.
const MIN_PENDING_TRIES: usize = 8;
/// How often a request without a reachable subscriber looks again.
const REQUEST_TICK: Duration = Duration::from_millis(10);

pub struct Publisher {
    routes: Routes,
    /// every node link, by topic and node id, including evicted ones (their worker probes)
    links: Mutex<HashMap<Arc<str>, LinksOfTopic>>,
    /// links replaced by a new one of the same node id, until their last worker has handed on
    /// what they still held (`forget_link`): `flush` and `close` still see them
    retired: Mutex<Vec<Arc<NodeLink>>>,
    pub backlog: Backlog<Msg>,
    transport: Transport,
    stats: Arc<Stats>,
    cfg: PubConfig,
    seq: AtomicU64,
    /// how many times messages moved from one node's queue to another's (failover, a member
    /// that left): `min_pending` reads the links again when this changed while it read them
    moved: AtomicU64,
    progress: Progress,
    shutdown: watch::Sender<bool>,
    rt: tokio::runtime::Handle,
    /// where messages go after `max_deliveries` failed handler attempts
    dead_letters: RwLock<Option<DeadLetterSink>>,
    /// drops by topic, evictions, re-admissions, route changes, errors: for callbacks and logs
    pub notices: Notices,
    /// per-topic counters (each link carries its topic's)
    topics: Arc<TopicStats>,
    /// the dispatcher: routes accepted messages on the runtime, one coalesced wake-up of the
    /// node workers per burst of publishes
    wakeups: Arc<Wakeups>,
    /// the last batch the dispatcher routed put a healthy node past the high-water mark
    congested: AtomicBool,
}

/// A topic's node links by node id.
type LinksOfTopic = HashMap<String, Arc<NodeLink>>;

pub type DeadLetterSink = Box<dyn Fn(DeadLetter) + Send + Sync>;

impl Publisher {
    /// A publisher counting per topic into `topics`; its dispatcher runs on `rt`.
    pub fn new(cfg: PubConfig, stats: Arc<Stats>, rt: tokio::runtime::Handle, topics: Arc<TopicStats>) -> Result<Arc<Self>, Error> {
        let _guard = rt.enter();
        // go-micro's default: https peers are accepted without verification
        let tls = crate::tls::client_config(None, None)?;
        let (shutdown, _) = watch::channel(false);
        Ok(Arc::new_cyclic(|me: &Weak<Publisher>| {
            let me = me.clone();
            let router: Router = Box::new(move |batch| match me.upgrade() {
                Some(p) => p.route_accepted(batch),
                None => batch.clear(), // the publisher is gone, its messages with it
            });
            let wakeups = Wakeups::start(&rt, shutdown.subscribe(), router);
            Publisher {
                routes: Routes::default(),
                links: Mutex::new(HashMap::new()),
                retired: Mutex::new(Vec::new()),
                backlog: Backlog::new(cfg.backlog, cfg.backlog_bytes),
                transport: Transport::new(&tls, cfg.request_timeout, cfg.node_inflight, cfg.pool_idle_timeout),
                stats,
                cfg,
                seq: AtomicU64::new(0),
                moved: AtomicU64::new(0),
                progress: Progress::default(),
                shutdown,
                rt,
                dead_letters: RwLock::new(None),
                notices: Notices::default(),
                topics,
                wakeups,
                congested: AtomicBool::new(false),
            }
        }))
    }

    pub fn topic_stats(&self) -> &Arc<TopicStats> {
        &self.topics
    }

    /// Use this TLS client configuration for https peers from now on.
    pub fn set_tls_client(&self, tls: Arc<rustls::ClientConfig>) {
        let _guard = self.rt.enter();
        self.transport.set_tls(&tls);
    }

    /// The bearer token sent to the nodes published to (None: none).
    pub fn set_auth_token(&self, token: Option<&str>) -> Result<(), Error> {
        self.transport.set_auth_token(token)
    }

    pub fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn config(&self) -> &PubConfig {
        &self.cfg
    }

    /// Accept one message (`payload`) for `topic`. Returns true when a healthy node's queue is past
    /// the high-water mark (half of `node_queue`), as the dispatcher last saw, or as many
    /// messages wait to be routed: the caller should wait for `wait_room` before publishing
    /// more, so that a slow consumer slows the producer instead of losing messages.
    pub fn publish(self: &Arc<Self>, topic: Arc<str>, payload: Payload) -> bool {
        let mut m = Msg::new(0, topic, payload);
        m.published_at = self.topics.timing().then(std::time::Instant::now);
        self.accept(Entry::One(m))
    }

    /// Accept many messages of one topic (`publish_many`), in order; routed as one (one route
    /// lookup, one lock per broadcast node's queue). A call of `ROUTE_INLINE` messages or more
    /// is routed at once on this thread: copying it onto the node queues is then the bulk of
    /// the work, and this thread does it while the runtime's threads send (measured, fan-out of
    /// 1,000-message calls to 10 nodes, interleaved A/B: 3.5-3.7M deliveries/s routed here,
    /// 3.0-3.5M by the dispatcher). Smaller calls are handed over like `publish` (round-robin
    /// over 10,000 topics, 100 per call: 0.11 µs per message handed over, 0.36-0.63 routed
    /// here). The congestion flag of `publish`. `msgs` are made by `Msg::new` (any sequence
    /// number: they are numbered here), all of one topic; the caller builds them directly,
    /// without a list of payloads first (at 1,000 messages such a list is a 112 KB buffer, and
    /// freeing one that large makes glibc consolidate the arena's free chunks on every call).
    pub fn publish_all(self: &Arc<Self>, mut msgs: Vec<Msg>) -> bool {
        if msgs.is_empty() {
            return false;
        }
        let now = self.topics.timing().then(std::time::Instant::now);
        for m in &mut msgs {
            m.published_at = now;
        }
        let inline = msgs.len() >= ROUTE_INLINE;
        let congested = self.accept(Entry::Many(msgs));
        if !inline {
            return congested;
        }
        self.settle(); // with anything accepted before it: in order
        congested || self.congested.load(Ordering::Relaxed)
    }

    /// Number `entry` and hand it to the dispatcher, which routes it on the runtime. The
    /// publishing thread touches nothing of the topic's own (its route, links, counters), so
    /// this costs the same for one topic or ten thousand. Memory stays bounded without losing
    /// anything: past `node_queue` messages waiting (a producer that ignores back-pressure and
    /// outruns the dispatcher), the publishing thread routes them itself.
    fn accept(self: &Arc<Self>, entry: Entry) -> bool {
        Stats::add(&self.stats.published, entry.len() as u64);
        match self.wakeups.accept(entry, &self.seq) {
            Ok(waiting) => {
                if waiting > self.cfg.node_queue {
                    self.settle();
                }
                waiting >= self.high_water() || self.congested.load(Ordering::Relaxed)
            }
            Err(entry) => {
                self.route(entry.into_iter().collect()); // closed: parked, as without a route
                false
            }
        }
    }

    /// Route what has been accepted so far, now, on the caller's thread (in order after a batch
    /// the dispatcher is routing): a snapshot of counters or the backlog taken afterwards counts
    /// every message published before.
    pub fn settle(&self) {
        self.wakeups.route_accepted();
    }

    fn high_water(&self) -> usize {
        (self.cfg.node_queue / 2).max(1)
    }

    fn all_links(&self) -> Vec<Arc<NodeLink>> {
        let mut all: Vec<Arc<NodeLink>> = self.links.lock().values().flat_map(|by_id| by_id.values().cloned()).collect();
        all.extend(self.retired.lock().iter().cloned());
        all
    }

    /// True while some healthy node that messages go to still has more than a quarter of
    /// `node_queue` queued. A link that left (replaced or removed) does not count: its queue goes
    /// elsewhere once its worker looks, which can take a whole request timeout, and counts there.
    fn congested(&self) -> bool {
        let low = self.cfg.node_queue / 4;
        self.wakeups.accepted_len() > low
            || self
                .links
                .lock()
                .values()
                .flat_map(|by_id| by_id.values())
                .any(|l| !l.is_failing() && !l.is_removed() && l.queue_len() > low)
    }

    /// Wait until no healthy node is congested (or `timeout` passes; returns false then).
    pub async fn wait_room(self: Arc<Self>, timeout: Duration) -> bool {
        self.progress.wait_until(ROOM_TICK, timeout, || !self.congested()).await
    }

    /// Count `n` dropped messages of `topic` (the counters, and a notice for callbacks and logs).
    fn count_drop(&self, topic: &Arc<str>, reason: Drop, n: u64) {
        self.stats.count_drop(reason, n);
        self.notices.dropped(topic, reason, n);
    }

    /// Replace the route of `topic`: `groups` are (registry version, nodes). Nodes that left are
    /// stopped (their queued messages handled by `leftovers`), new ones get workers. A node with
    /// an unusable address is left out and the rest applied; the first such error is returned.
    pub fn set_routes(self: &Arc<Self>, topic: &str, groups: Vec<(String, Vec<NodeSpec>)>) -> Result<(), Error> {
        let topic_arc: Arc<str> = Arc::from(topic);
        let mut new_groups = Vec::with_capacity(groups.len());
        let mut spawn = Vec::new();
        let mut unusable = None;
        {
            let mut all = self.links.lock();
            let links = all.entry(topic_arc.clone()).or_default();
            let mut keep: HashSet<String> = HashSet::new();
            for (version, specs) in groups {
                let queue = Group::queue_of_version(version);
                let mut nodes = Vec::with_capacity(specs.len());
                for spec in specs {
                    if !keep.insert(spec.id.clone()) {
                        continue; // the same node listed twice: once is enough
                    }
                    let key = spec.id.clone();
                    let link = match links.get(&key).filter(|l| l.serves(&spec, &queue)).cloned() {
                        Some(l) if l.is_evicted() => continue, // its prober re-adds it
                        Some(l) => l,
                        None => {
                            let cap = spec
                                .max_body
                                .map_or(self.cfg.max_batch_bytes, |m| self.cfg.max_batch_bytes.min(m.saturating_sub(1024).max(1)));
                            let counters = self.topics.get(topic);
                            let l = match NodeLink::new(spec, topic_arc.clone(), queue.clone(), cap) {
                                Ok(l) => Arc::new(l.with_counters(counters)),
                                Err(e) => {
                                    // this node is left out (an old link of its id leaves too);
                                    // the others are routed, and their workers started, all the same
                                    keep.remove(&key);
                                    unusable.get_or_insert(e);
                                    continue;
                                }
                            };
                            if let Some(old) = links.insert(key, l.clone()) {
                                old.mark_removed();
                                self.retired.lock().push(old);
                            }
                            spawn.push(l.clone());
                            l
                        }
                    };
                    nodes.push(link);
                }
                if !nodes.is_empty() {
                    new_groups.push(Group::new(queue, nodes));
                }
            }
            for (id, l) in links.iter() {
                if !keep.contains(id) {
                    l.mark_removed();
                }
            }
            if links.is_empty() {
                all.remove(&topic_arc);
            }
            self.routes.replace(topic, new_groups);
        }
        self.notices.route(&topic_arc);
        for l in spawn {
            worker::spawn(self, l);
        }
        self.drain_backlog(topic);
        unusable.map_or(Ok(()), Err)
    }

    /// A delivery error: `stats()["last_error"]`, and a notice for `on_error`.
    pub(crate) fn set_error(&self, e: String) {
        self.notices.error(&e);
        self.stats.set_error(e);
    }

    /// The last worker of `link` stopped: the publisher forgets the link.
    pub(crate) fn forget_link(&self, link: &Arc<NodeLink>) {
        let mut all = self.links.lock();
        if let Some(by_id) = all.get_mut(&link.topic) {
            by_id.retain(|_, l| !Arc::ptr_eq(l, link));
            if by_id.is_empty() {
                all.remove(&link.topic);
            }
        }
        self.retired.lock().retain(|l| !Arc::ptr_eq(l, link));
    }

    pub(crate) fn routes(&self) -> &Routes {
        &self.routes
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    pub(crate) fn progress(&self) -> &Progress {
        &self.progress
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// Lowest sequence number still owed: not yet routed, or by any node (queued, on the wire or
    /// being handed on).
    fn min_pending(&self) -> Option<u64> {
        self.min_pending_reading(|| {})
    }

    /// `min_pending`, calling `between` after the first link was read (a test's hook). The links
    /// are read one after another, so a message moving from a link not yet read to one already
    /// read would be seen on neither: a move counts in `moved` after the message reached its new
    /// link and before the old one lets go of it, and a read that saw `moved` change is made
    /// again (a read that keeps being overtaken answers "0 still owed": wait and look again).
    fn min_pending_reading(&self, between: impl Fn()) -> Option<u64> {
        for _ in 0..MIN_PENDING_TRIES {
            let moved = self.moved.load(Ordering::SeqCst);
            // the hand-over first: once it shows a message routed, the links (read after) show
            // it queued; read the other way round, a message routed in between would be in neither
            let mut min = self.wakeups.accepted_min_pending();
            for (i, l) in self.all_links().iter().enumerate() {
                if i == 1 {
                    between();
                }
                min = min.into_iter().chain(l.min_pending()).min();
            }
            if self.moved.load(Ordering::SeqCst) == moved {
                return min;
            }
        }
        Some(0)
    }

    /// Wait until every message published up to `target` is delivered, refused or parked.
    pub async fn flush(self: Arc<Self>, target: u64, timeout: Duration) -> bool {
        self.progress.wait_until(FLUSH_TICK, timeout, || self.min_pending().is_none_or(|m| m > target)).await
    }

    /// Stop every worker; what is not routed yet, still queued for a node or waiting in the
    /// backlog is counted as dropped (reason: disconnect). Routing stops first, then the links
    /// are emptied before the workers are told to stop, so no message ends up counted nowhere.
    pub fn close(&self) {
        for entry in self.wakeups.close_ingress() {
            let (Some(topic), n) = (entry.topic(), entry.len() as u64) else { continue };
            let counters = self.topics.get(&topic);
            TopicCounters::add(&counters.published, n);
            counters.count_drop(Drop::Disconnect, n);
            self.stats.count_drop(Drop::Disconnect, n);
        }
        let mut links: Vec<Arc<NodeLink>> = self.links.lock().drain().flat_map(|(_, by_id)| by_id.into_values()).collect();
        links.append(&mut self.retired.lock());
        for l in links {
            let n = l.close() as u64;
            Stats::sub(&self.stats.in_flight, n);
            self.stats.count_drop(Drop::Disconnect, n);
            l.counters.count_drop(Drop::Disconnect, n);
        }
        let _ = self.shutdown.send(true);
        for (topic, len, _, _) in self.backlog.per_topic() {
            self.topics.get(&topic).count_drop(Drop::Disconnect, len as u64);
        }
        self.stats.count_drop(Drop::Disconnect, self.backlog.clear() as u64);
        self.routes.clear();
    }

    /// Send `envelope` (of `topic`) to one subscriber node and wait for its handler's answer,
    /// for at most `timeout` (waiting for a route included).
    pub async fn request(self: Arc<Self>, topic: &str, envelope: Bytes, timeout: Duration) -> Answer {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shutdown = self.shutdown.subscribe();
        let mut why = format!("no subscriber of {topic:?}");
        loop {
            if *shutdown.borrow() {
                return Answer::NoAnswer("the broker disconnected".into());
            }
            let link = self.routes.get(topic).and_then(|r| r.pick_any().cloned());
            if let Some(link) = link {
                match self.transport.ask(&link, envelope.clone(), deadline).await {
                    Attempt::Done(a) => return a,
                    Attempt::Again(w) => why = w,
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Answer::NoAnswer(format!("no answer within {timeout:?}: {why}"));
            }
            tokio::select! {
                _ = tokio::time::sleep(REQUEST_TICK.min(deadline - now)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Number of nodes currently routed for `topic`.
    pub fn route_count(&self, topic: &str) -> usize {
        self.routes.get(topic).map_or(0, |r| r.node_count())
    }
}

mod dispatch;
mod handover;

#[cfg(test)]
#[path = "handover_tests.rs"]
mod handover_tests;
#[cfg(test)]
#[path = "publisher_tests.rs"]
mod tests;
