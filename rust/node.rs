//! A link to one subscriber node of one topic (`NodeLink`): where the node is reached, its
//! bounded FIFO queue, and its delivery state: failing, evicted, batch byte cap, consecutive
//! sends without an answer, running workers and the sequence number each has on the wire.
//!
//! The link owns that state; everything else reads and changes it through the methods here.
//! It hands out batches (`take_batch`: capped by count and by bytes) and takes back what failed
//! (`requeue_front*`). The workers that send those batches live in `worker.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::error::Error;
use crate::msg::Msg;
use crate::topic_stats::TopicCounters;

/// Where a node is reached and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: String,
    pub address: String,
    pub batch: bool,
    /// takes the raw frame format (`frames`; registry metadata `frames=1`), batches included
    pub frames: bool,
    pub secure: bool,
    /// speaks HTTP/2 with prior knowledge over plain TCP (hyperbroker peers)
    pub h2: bool,
    /// the largest request body the node accepts, when it says so (registry metadata)
    pub max_body: Option<usize>,
    /// failed handler attempts after which a message is undeliverable for this subscription
    /// (registry metadata `max_deliveries`; None: the publisher's own setting)
    pub max_deliveries: Option<u32>,
    /// the endpoint path the node serves: `/_sub` (go-micro v1 layout) or `/` (current go-micro)
    pub path: String,
}

impl NodeSpec {
    /// Takes several messages per request (a batch, or frames) and answers per message.
    pub fn takes_batches(&self) -> bool {
        self.batch || self.frames
    }

    /// Reached over HTTP/2 with prior knowledge (plain TCP): one multiplexed connection.
    pub fn is_h2c(&self) -> bool {
        self.h2 && !self.secure
    }
}

/// What `push_all_quiet` did.
#[derive(Debug)]
pub struct PushedAll {
    /// queued messages displaced (oldest first) to stay within the cap
    pub dropped: usize,
    /// the queue's length afterwards
    pub len: usize,
    /// the messages back, when the node takes nothing new
    pub gone: Vec<Msg>,
}

#[derive(Default)]
struct LinkState {
    queue: VecDeque<Msg>,
    /// messages whose handler failed, each waiting for its own retry time (not blocking `queue`)
    deferred: Vec<(Instant, Msg)>,
    /// lowest sequence number of the request each worker has on the wire, if any
    inflight: Vec<Option<u64>>,
    /// set when the node left the route (how it left does not matter: `Publisher::leftovers`
    /// treats every way alike)
    removed: bool,
    /// the worker whose batch the node has not yet received (gated links only)
    gate: Option<usize>,
    /// lowest sequence number of each lot taken out to be handed on (`take_everything`) and
    /// not yet placed elsewhere (`handed_on`): `flush` waits for them meanwhile
    handing_on: Vec<u64>,
}

/// One subscriber node of one topic. `spec`, `topic`, `queue_group` and `uri` never change.
pub struct NodeLink {
    pub spec: NodeSpec,
    pub topic: Arc<str>,
    /// queue group name, None for a broadcast subscription
    pub queue_group: Option<String>,
    pub uri: hyper::Uri,
    state: Mutex<LinkState>,
    /// wakes the node's workers: new work, removal, re-admission
    notify: Notify,
    /// on the publisher's ready list for a coalesced wake-up (`wakeups.rs`)
    wake_pending: AtomicBool,
    failing: AtomicBool,
    /// out of the route after repeated refused connections; probed until it answers again
    evicted: AtomicBool,
    /// byte cap of one batch to this node; lowered when the node answers 413 to a batch
    batch_cap: AtomicUsize,
    /// consecutive sends that got no answer, across this node's workers
    unreachable: AtomicU32,
    /// workers still running for this node
    live_workers: AtomicUsize,
    /// the ordered pipeline (`receipt.rs`): a worker takes a batch only while no other one has
    /// a batch the node has not yet received
    gated: AtomicBool,
    /// the counters of the link's topic (shared by every link of the topic)
    pub counters: Arc<TopicCounters>,
}

/// What `take_batch` hands a worker.
#[derive(Debug)]
pub enum Take {
    /// the next batch (empty: nothing to send now, wait for `notified`)
    Batch(Vec<Msg>),
    /// another worker's batch is not received yet (the ordered pipeline): wait for `notified`,
    /// which `open_gate` gives
    Gated,
    /// the node left its route: everything it still had queued, for `leftovers`
    Removed { left: Vec<Msg> },
}

impl NodeLink {
    /// A link whose batches carry at most `batch_cap` bytes.
    pub fn new(spec: NodeSpec, topic: Arc<str>, queue_group: Option<String>, batch_cap: usize) -> Result<Self, Error> {
        let scheme = if spec.secure { "https" } else { "http" };
        let id = percent_encode(&spec.id);
        let path = if spec.path.is_empty() { crate::server::PATH } else { spec.path.as_str() };
        let uri: hyper::Uri = format!("{scheme}://{}{path}?id={id}", spec.address)
            .parse()
            .map_err(|e| Error::node(format!("node {:?} has an unusable address {:?}: {e}", spec.id, spec.address)))?;
        Ok(NodeLink {
            spec,
            topic,
            queue_group,
            uri,
            state: Mutex::new(LinkState::default()),
            notify: Notify::new(),
            wake_pending: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            batch_cap: AtomicUsize::new(batch_cap),
            unreachable: AtomicU32::new(0),
            live_workers: AtomicUsize::new(0),
            gated: AtomicBool::new(false),
            counters: Arc::default(),
        })
    }

    /// The same link, counting into `counters` (its topic's).
    pub fn with_counters(mut self, counters: Arc<TopicCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// This link, still in service, is the one for `spec` in `queue_group` (a route update may
    /// keep it).
    pub fn serves(&self, spec: &NodeSpec, queue_group: &Option<String>) -> bool {
        self.spec == *spec && self.queue_group == *queue_group && !self.is_removed()
    }

    // --- health: failing, evicted, unreachable count ---

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn mark_failing(&self) {
        self.failing.store(true, Ordering::Release);
    }

    /// The node took a batch; returns true when it was failing until now.
    pub fn mark_healthy(&self) -> bool {
        self.failing.swap(false, Ordering::AcqRel)
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// Take the node out of service; true for the one caller that did it (others see false).
    pub fn evict(&self) -> bool {
        !self.evicted.swap(true, Ordering::AcqRel)
    }

    /// The evicted node answers again: back in service, not failing.
    pub fn readmit(&self) {
        self.evicted.store(false, Ordering::Release);
        self.failing.store(false, Ordering::Release);
    }

    /// The node answered a request (whatever it said).
    pub fn note_answer(&self) {
        self.unreachable.store(0, Ordering::Release);
    }

    /// A request got no answer.
    pub fn note_unreachable(&self) {
        self.unreachable.fetch_add(1, Ordering::AcqRel);
    }

    /// Consecutive requests without an answer, across this node's workers.
    pub fn unreachable_count(&self) -> u32 {
        self.unreachable.load(Ordering::Acquire)
    }

    // --- batch size ---

    pub fn batch_cap(&self) -> usize {
        self.batch_cap.load(Ordering::Relaxed)
    }

    /// The node refused a batch as too large: batches from now on carry at most `cap` bytes.
    pub fn lower_batch_cap(&self, cap: usize) {
        self.batch_cap.fetch_min(cap, Ordering::Relaxed);
    }

    // --- workers ---

    /// `n` workers are about to start: one in-flight slot each. `gated`: they form the ordered
    /// pipeline (`receipt.rs`): one takes a batch only once the node received the last one.
    pub fn start_workers(&self, n: usize, gated: bool) {
        self.gated.store(gated, Ordering::Release);
        self.state.lock().inflight = vec![None; n];
        self.live_workers.store(n, Ordering::Release);
    }

    /// The workers form the ordered pipeline: their sends ask for receipts.
    pub fn is_gated(&self) -> bool {
        self.gated.load(Ordering::Acquire)
    }

    /// The node received worker `slot`'s batch (its receipt), or the worker is done with it:
    /// another worker may take the next one. Nothing when `slot` does not hold the gate.
    pub fn open_gate(&self, slot: usize) {
        let mut st = self.state.lock();
        if st.gate != Some(slot) {
            return;
        }
        st.gate = None;
        let more = !st.queue.is_empty() || !st.deferred.is_empty();
        drop(st);
        if more {
            self.notify.notify_one();
        }
    }

    /// A worker stops. True for the last one (it hands on what is left); otherwise a sibling is
    /// woken, which may be waiting for work that is now gone.
    pub fn worker_exited(&self) -> bool {
        if self.live_workers.fetch_sub(1, Ordering::AcqRel) == 1 {
            return true;
        }
        self.notify.notify_one();
        false
    }

    /// Resolves when there may be something for a worker to do.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Wake every worker of this node (after a re-admission).
    pub fn wake_all(&self) {
        self.notify.notify_waiters();
    }

    // --- the queue ---

    /// Queue `msgs` in order under one lock, displacing the oldest entries past `cap` (counted
    /// in `dropped`); a node that takes nothing new (removed, or evicted: its queue was just
    /// handed to the backlog) hands them all back in `gone`. No worker is woken: the caller does
    /// (`Wakeups::wake`, coalescing the wake-ups of many links).
    pub fn push_all_quiet(&self, msgs: impl IntoIterator<Item = Msg>, cap: usize) -> PushedAll {
        let mut st = self.state.lock();
        if st.removed || self.is_evicted() {
            return PushedAll { dropped: 0, len: st.queue.len(), gone: msgs.into_iter().collect() };
        }
        let mut dropped = 0;
        for msg in msgs {
            msg.share.hold();
            if st.queue.len() >= cap {
                if let Some(old) = st.queue.pop_front() {
                    old.share.release(false);
                    dropped += 1;
                }
            }
            st.queue.push_back(msg);
        }
        PushedAll { dropped, len: st.queue.len(), gone: Vec::new() }
    }

    /// Mark this link as waiting for a coalesced wake-up; false when it was already.
    pub fn mark_wake_pending(&self) -> bool {
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// The coalesced wake-up: clear the mark, then wake a worker.
    pub fn wake_one(&self) {
        self.wake_pending.swap(false, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// The next batch for worker `slot`: for a node that takes batches, at most `max_count`
    /// envelopes and `batch_cap` bytes (one envelope always goes, however large); otherwise one
    /// envelope. The slot remembers the lowest sequence number taken until `clear_inflight`.
    pub fn take_batch(&self, slot: usize, max_count: usize) -> Take {
        let mut st = self.state.lock();
        if st.removed {
            return Take::Removed { left: st.take_everything() };
        }
        let mut out = Vec::new();
        if self.is_evicted() {
            return Take::Batch(out); // the worker that evicted it probes; the others wait
        }
        let gated = self.is_gated();
        if gated && st.gate.is_some() {
            return Take::Gated;
        }
        if !st.deferred.is_empty() {
            // retries that are due go first, oldest first, ahead of the queue
            let now = Instant::now();
            let mut due: Vec<Msg> = Vec::new();
            st.deferred.retain(|(at, m)| {
                if *at <= now {
                    due.push(m.clone());
                    false
                } else {
                    true
                }
            });
            due.sort_by_key(|m| m.seq);
            for m in due.into_iter().rev() {
                st.queue.push_front(m);
            }
        }
        if self.spec.takes_batches() {
            let mut bytes = 0usize;
            while let Some(m) = st.queue.front() {
                let len = m.payload.wire_len(self.spec.frames);
                if !out.is_empty() && (out.len() >= max_count || bytes + len > self.batch_cap()) {
                    break;
                }
                bytes += len + 1;
                if let Some(m) = st.queue.pop_front() {
                    out.push(m);
                }
            }
        } else if let Some(m) = st.queue.pop_front() {
            out.push(m);
        }
        if let Some(s) = st.inflight.get_mut(slot) {
            *s = out.iter().map(|m| m.seq).min();
        }
        if gated && !out.is_empty() {
            st.gate = Some(slot); // `open_gate` wakes the next worker
        }
        let more = !st.queue.is_empty();
        let several_workers = st.inflight.len() > 1 && !gated;
        drop(st);
        if more && several_workers {
            self.notify.notify_one(); // let another worker of this node take the next batch
        }
        Take::Batch(out)
    }

    /// Worker `slot` has nothing on the wire any more.
    pub fn clear_inflight(&self, slot: usize) {
        if let Some(s) = self.state.lock().inflight.get_mut(slot) {
            *s = None;
        }
    }

    /// Take everything queued or deferred (for eviction, or the last worker's exit), in order.
    pub fn take_all(&self) -> Vec<Msg> {
        self.state.lock().take_everything()
    }

    /// Hold `msg`, whose handler failed, until `at`, while the queue behind it moves on. Refused
    /// (handed back) when the node is evicted or removed, or when `cap` messages wait already:
    /// then the caller retries it the old way (at the head of the queue, after a back-off), so
    /// a subscriber that fails everything cannot make this grow without bound.
    pub fn defer(&self, msg: Msg, at: Instant, cap: usize) -> Result<(), Msg> {
        {
            let mut st = self.state.lock();
            if st.removed || self.is_evicted() || st.deferred.len() >= cap {
                return Err(msg);
            }
            st.deferred.push((at, msg));
        }
        self.notify.notify_one();
        Ok(())
    }

    /// When the earliest deferred retry is due, if any.
    pub fn next_retry_at(&self) -> Option<Instant> {
        self.state.lock().deferred.iter().map(|(at, _)| *at).min()
    }

    /// Put messages back at the head of the queue unless the node was evicted meanwhile (then
    /// they are handed back). Checked under the queue lock, so an eviction, which sets the flag
    /// before taking the queue, either sees them or refuses them: none is stranded.
    pub fn requeue_front_unless_evicted(&self, msgs: Vec<Msg>) -> Result<(), Vec<Msg>> {
        let mut st = self.state.lock();
        if self.is_evicted() {
            return Err(msgs);
        }
        st.put_back(msgs);
        Ok(())
    }

    /// Put messages back at the head of the queue (in their order), after a failed send.
    pub fn requeue_front(&self, msgs: Vec<Msg>) {
        self.state.lock().put_back(msgs);
    }

    pub fn queue_len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Messages waiting for their own retry after a handler failure.
    pub fn deferred_len(&self) -> usize {
        self.state.lock().deferred.len()
    }

    /// Lowest sequence number this link still owes (queued, on the wire, or being handed on).
    pub fn min_pending(&self) -> Option<u64> {
        let st = self.state.lock();
        let q = st.queue.iter().chain(st.deferred.iter().map(|(_, m)| m)).map(|m| m.seq);
        q.chain(st.inflight.iter().flatten().copied()).chain(st.handing_on.iter().copied()).min()
    }

    /// The lot taken out by `take_all` (or a removed link's `Take::Removed`) whose lowest
    /// sequence number is `first` is placed elsewhere now. Unknown numbers are ignored.
    pub fn handed_on(&self, first: u64) {
        let mut st = self.state.lock();
        if let Some(i) = st.handing_on.iter().position(|&s| s == first) {
            st.handing_on.swap_remove(i);
        }
    }

    // --- leaving ---

    /// The node left its route; its workers stop.
    pub fn mark_removed(&self) {
        self.state.lock().removed = true;
        self.notify.notify_one();
    }

    pub fn is_removed(&self) -> bool {
        self.state.lock().removed
    }

    /// The publisher closes: the link is removed and its queue emptied. Returns how many
    /// messages were still queued.
    pub fn close(&self) -> usize {
        let n = {
            let mut st = self.state.lock();
            st.removed = true;
            let n = st.queue.len() + st.deferred.len();
            st.queue.clear();
            st.deferred.clear();
            n
        };
        self.notify.notify_one();
        n
    }
}

impl LinkState {
    /// Put `msgs` (in sequence order) back into the queue where their sequence numbers belong:
    /// at the head, unless a sibling worker put back a newer batch first (the ordered pipeline
    /// has several on the wire), then merged.
    fn put_back(&mut self, msgs: Vec<Msg>) {
        let older_than_head = match (msgs.last(), self.queue.front()) {
            (Some(last), Some(front)) => last.seq < front.seq,
            _ => true,
        };
        if older_than_head {
            msgs.into_iter().rev().for_each(|m| self.queue.push_front(m));
            return;
        }
        let mut all: Vec<Msg> = msgs;
        all.extend(self.queue.drain(..));
        all.sort_by_key(|m| m.seq);
        self.queue = all.into();
    }

    /// Everything queued or deferred, oldest first; counted as being handed on until `handed_on`.
    fn take_everything(&mut self) -> Vec<Msg> {
        let mut all: Vec<Msg> = self.queue.drain(..).collect();
        if !self.deferred.is_empty() {
            all.extend(self.deferred.drain(..).map(|(_, m)| m));
            all.sort_by_key(|m| m.seq);
        }
        if let Some(first) = all.iter().map(|m| m.seq).min() {
            self.handing_on.push(first);
        }
        all
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[path = "node_tests.rs"]
pub(crate) mod tests;
