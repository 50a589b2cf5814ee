//! Messages accepted by `publish` and not yet routed (`Ingress`): the publishing thread numbers
//! them and queues them here; the dispatcher (`wakeups.rs`) takes the lot and routes it on the
//! runtime (route lookup, node queues, backlog: `Publisher::route_accepted`).
//!
//! Why: routing touches the topic's own state (its route, node links, queues and counters).
//! Publishing round-robin over thousands of topics finds each of them cold in the CPU cache, and
//! the publishing thread paid for those misses on every call (`publish()` 0.78 → 1.86 µs from 1
//! to 10,000 topics). Here the publishing thread touches the same few cache lines whatever the
//! topic; the misses are paid on the runtime, which has the routing to do anyway.
//!
//! Order: sequence numbers are taken under the queue's lock, so the queue is in sequence order
//! and one dispatcher routes it front to back: a topic's messages reach their nodes in the order
//! they were published. `flush` sees what waits here through `min_pending` (what is queued, or
//! what the dispatcher took and is still routing). After `close` nothing is accepted: `push`
//! hands the messages back.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::msg::Msg;

/// Messages of one topic accepted by one call, in order.
pub enum Entry {
    One(Msg),
    Many(Vec<Msg>),
}

impl Entry {
    pub fn len(&self) -> usize {
        match self {
            Entry::One(_) => 1,
            Entry::Many(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The topic of its messages (None: no message).
    pub fn topic(&self) -> Option<Arc<str>> {
        match self {
            Entry::One(m) => Some(m.topic.clone()),
            Entry::Many(v) => v.first().map(|m| m.topic.clone()),
        }
    }

    fn first_seq(&self) -> Option<u64> {
        match self {
            Entry::One(m) => Some(m.seq),
            Entry::Many(v) => v.first().map(|m| m.seq),
        }
    }

    /// Number the messages `first`, `first + 1`, ...
    fn number_from(&mut self, first: u64) {
        match self {
            Entry::One(m) => m.seq = first,
            Entry::Many(v) => {
                for (m, seq) in v.iter_mut().zip(first..) {
                    m.seq = seq;
                }
            }
        }
    }
}

impl IntoIterator for Entry {
    type Item = Msg;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Msg>, std::vec::IntoIter<Msg>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Entry::One(m) => Some(m).into_iter().chain(Vec::new()),
            Entry::Many(v) => None.into_iter().chain(v),
        }
    }
}

#[derive(Default)]
struct State {
    queue: Vec<Entry>,
    /// first sequence number of what the dispatcher took and is routing (None: nothing)
    routing_from: Option<u64>,
    closed: bool,
}

#[derive(Default)]
pub struct Ingress {
    state: Mutex<State>,
    /// messages queued or being routed
    len: AtomicUsize,
}

impl Ingress {
    /// Number `entry`'s messages from `seq` (taken under the lock, so that the queue stays in
    /// sequence order) and queue it. Returns the messages now waiting, or the entry back
    /// (numbered) after `close`.
    pub fn push(&self, mut entry: Entry, seq: &AtomicU64) -> Result<usize, Entry> {
        let n = entry.len();
        let mut st = self.state.lock();
        entry.number_from(seq.fetch_add(n as u64, Ordering::AcqRel) + 1);
        if st.closed {
            return Err(entry);
        }
        st.queue.push(entry);
        Ok(self.len.fetch_add(n, Ordering::AcqRel) + n)
    }

    /// Move everything queued into `batch` (empty; its capacity is kept for the next round) and
    /// note that it is being routed. False when nothing was queued.
    pub fn take(&self, batch: &mut Vec<Entry>) -> bool {
        let mut st = self.state.lock();
        if st.queue.is_empty() {
            return false;
        }
        std::mem::swap(&mut st.queue, batch);
        st.routing_from = batch.iter().find_map(Entry::first_seq);
        true
    }

    /// The dispatcher has routed the `n` messages it took.
    pub fn routed(&self, n: usize) {
        self.state.lock().routing_from = None;
        self.len.fetch_sub(n, Ordering::AcqRel);
    }

    /// Messages queued or being routed.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lowest sequence number waiting here (queued or being routed).
    pub fn min_pending(&self) -> Option<u64> {
        let st = self.state.lock();
        st.routing_from.into_iter().chain(st.queue.iter().find_map(Entry::first_seq)).min()
    }

    /// Something is queued (not counting a batch being routed).
    pub fn has_queued(&self) -> bool {
        !self.state.lock().queue.is_empty()
    }

    /// Accept nothing more; returns what was queued and not yet taken (the caller makes sure no
    /// batch is being routed: `Wakeups::close_ingress`).
    pub fn close(&self) -> Vec<Entry> {
        let rest = {
            let mut st = self.state.lock();
            st.closed = true;
            std::mem::take(&mut st.queue)
        };
        self.len.fetch_sub(rest.iter().map(Entry::len).sum(), Ordering::AcqRel);
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::msg;

    #[test]
    fn sequence_numbers_follow_the_queue_order_and_min_pending_sees_taken_batches() {
        let ing = Ingress::default();
        let seq = AtomicU64::new(0);
        assert_eq!(ing.push(Entry::One(msg(0, 1)), &seq).ok(), Some(1));
        assert_eq!(ing.push(Entry::Many((0..3).map(|_| msg(0, 1)).collect()), &seq).ok(), Some(4));
        assert_eq!(ing.min_pending(), Some(1));
        let mut batch = Vec::new();
        assert!(ing.take(&mut batch));
        let seqs: Vec<u64> = batch
            .iter()
            .flat_map(|e| match e {
                Entry::One(m) => vec![m.seq],
                Entry::Many(v) => v.iter().map(|m| m.seq).collect(),
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        // taken but not routed yet: still pending for flush
        assert_eq!(ing.min_pending(), Some(1));
        assert_eq!(ing.push(Entry::One(msg(0, 1)), &seq).ok(), Some(5));
        ing.routed(4);
        assert_eq!(ing.min_pending(), Some(5));
        assert_eq!(ing.len(), 1);
        batch.clear();
        assert!(ing.take(&mut batch));
        ing.routed(1);
        assert_eq!(ing.min_pending(), None);
        assert!(ing.is_empty());
        assert!(!ing.take(&mut batch));
    }

    #[test]
    fn after_close_messages_come_back() {
        let ing = Ingress::default();
        let seq = AtomicU64::new(0);
        let _ = ing.push(Entry::One(msg(0, 1)), &seq);
        let rest = ing.close();
        assert_eq!(rest.len(), 1);
        assert!(ing.is_empty());
        assert!(ing.push(Entry::One(msg(0, 1)), &seq).is_err());
        assert_eq!(ing.min_pending(), None);
    }
}
