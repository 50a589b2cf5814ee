//! A link to one subscriber node: its own bounded FIFO queue, retry state and worker task.
//!
//! The worker sends one envelope per POST, or for nodes that accept batches everything queued
//! (capped by count and bytes) in one POST. One request at a time per node keeps the order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::backlog::Weighted;

/// What the copies of one dispatched message share: how many node queues still hold a copy,
/// and whether any node has it delivered. A node that leaves parks its copy in the backlog only
/// when no other node holds or delivered it (so nobody gets it twice from the backlog).
#[derive(Debug, Default)]
pub struct Share {
    pub holders: AtomicUsize,
    pub delivered: AtomicBool,
}

impl Share {
    /// This copy is done with (delivered, refused or left behind). Returns the holders left.
    pub fn release(&self, delivered: bool) -> usize {
        if delivered {
            self.delivered.store(true, Ordering::Release);
        }
        self.holders.fetch_sub(1, Ordering::AcqRel).saturating_sub(1)
    }

    pub fn reached_someone(&self) -> bool {
        self.delivered.load(Ordering::Acquire)
    }
}

/// One published message: its sequence number, topic and encoded go-micro envelope.
#[derive(Clone, Debug)]
pub struct Msg {
    pub seq: u64,
    pub topic: Arc<str>,
    pub envelope: Bytes,
    pub share: Arc<Share>,
}

impl Weighted for Msg {
    fn weight(&self) -> usize {
        self.envelope.len()
    }
}

/// Where a node is reached and what it accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub id: String,
    pub address: String,
    pub batch: bool,
    pub secure: bool,
    /// speaks HTTP/2 with prior knowledge over plain TCP (hyperbroker peers)
    pub h2: bool,
    /// the largest request body the node accepts, when it says so (registry metadata)
    pub max_body: Option<usize>,
}

#[derive(Default)]
pub struct LinkState {
    pub queue: VecDeque<Msg>,
    /// lowest sequence number of the request each worker has on the wire, if any
    pub inflight: Vec<Option<u64>>,
    /// set when the node left the route; `graceful` when the registry said so
    pub removed: bool,
    pub graceful: bool,
}

pub struct NodeLink {
    pub spec: NodeSpec,
    pub topic: Arc<str>,
    /// queue group name, None for a broadcast subscription
    pub queue_group: Option<String>,
    pub uri: hyper::Uri,
    pub state: Mutex<LinkState>,
    pub notify: Notify,
    pub failing: AtomicBool,
    /// out of the route after repeated refused connections; probed until it answers again
    pub evicted: AtomicBool,
    /// byte cap of one batch to this node; halved when the node answers 413 to a batch
    pub batch_cap: AtomicUsize,
    /// consecutive sends that got no answer, across this node's workers
    pub unreachable: AtomicU32,
    /// workers still running for this node
    pub live_workers: AtomicUsize,
}

pub enum Enqueued {
    /// queued; `dropped`: an older entry was displaced by the per-node cap; `len`: queue length
    Ok { dropped: bool, len: usize },
    /// the link is gone; the message is handed back
    Gone(Msg),
}

impl NodeLink {
    pub fn new(spec: NodeSpec, topic: Arc<str>, queue_group: Option<String>) -> Result<Self, String> {
        let scheme = if spec.secure { "https" } else { "http" };
        let id = percent_encode(&spec.id);
        let uri: hyper::Uri = format!("{scheme}://{}{}?id={id}", spec.address, crate::server::PATH)
            .parse()
            .map_err(|e| format!("node {:?} has an unusable address {:?}: {e}", spec.id, spec.address))?;
        Ok(NodeLink {
            spec,
            topic,
            queue_group,
            uri,
            state: Mutex::new(LinkState::default()),
            notify: Notify::new(),
            failing: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            batch_cap: AtomicUsize::new(usize::MAX),
            unreachable: AtomicU32::new(0),
            live_workers: AtomicUsize::new(0),
        })
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    pub fn is_removed(&self) -> bool {
        self.state.lock().removed
    }

    /// Take everything queued (for eviction).
    pub fn take_all(&self) -> Vec<Msg> {
        self.state.lock().queue.drain(..).collect()
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn push(&self, msg: Msg, cap: usize) -> Enqueued {
        let dropped = {
            let mut st = self.state.lock();
            // an evicted node takes nothing new: its queue was just handed to the backlog
            if st.removed || self.is_evicted() {
                return Enqueued::Gone(msg);
            }
            msg.share.holders.fetch_add(1, Ordering::AcqRel);
            let dropped = match if st.queue.len() >= cap { st.queue.pop_front() } else { None } {
                Some(old) => {
                    old.share.release(false);
                    true
                }
                None => false,
            };
            st.queue.push_back(msg);
            (dropped, st.queue.len())
        };
        self.notify.notify_one();
        Enqueued::Ok { dropped: dropped.0, len: dropped.1 }
    }

    /// Put messages back at the head of the queue unless the node was evicted meanwhile (then
    /// they are handed back). Checked under the queue lock, so an eviction, which sets the flag
    /// before taking the queue, either sees them or refuses them: none is stranded.
    pub fn requeue_front_unless_evicted(&self, msgs: Vec<Msg>) -> Result<(), Vec<Msg>> {
        let mut st = self.state.lock();
        if self.is_evicted() {
            return Err(msgs);
        }
        for m in msgs.into_iter().rev() {
            st.queue.push_front(m);
        }
        Ok(())
    }

    /// Put messages back at the head of the queue (in their order), after a failed send.
    pub fn requeue_front(&self, msgs: Vec<Msg>) {
        let mut st = self.state.lock();
        for m in msgs.into_iter().rev() {
            st.queue.push_front(m);
        }
    }

    pub fn mark_removed(&self, graceful: bool) {
        {
            let mut st = self.state.lock();
            if !st.removed {
                st.removed = true;
                st.graceful = graceful;
            }
        }
        self.notify.notify_one();
    }

    pub fn queue_len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Lowest sequence number this link still owes (queued or on the wire).
    pub fn min_pending(&self) -> Option<u64> {
        let st = self.state.lock();
        let q = st.queue.iter().map(|m| m.seq).min();
        match (q, st.inflight.iter().flatten().min().copied()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
