//! One published message (`Msg`) and the record its copies share (`Share`).
//!
//! A dispatch puts one copy of a message on every node queue that should get it (every node of
//! a broadcast, one member per queue group). The copies share one `Share`: how many node queues
//! still hold a copy, and whether any node has it delivered. A node that leaves parks its copy in
//! the backlog only when no other node holds or delivered it (so nobody gets it twice from the
//! backlog). Queues take a hold when they accept a copy (`NodeLink::push`); whoever finishes
//! with a copy (delivered, refused, moved or left behind) releases it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::backlog::Weighted;
use crate::payload::Payload;

/// What the copies of one dispatched message share.
#[derive(Debug, Default)]
pub struct Share {
    holders: AtomicUsize,
    delivered: AtomicBool,
}

impl Share {
    /// A node queue took a copy.
    pub fn hold(&self) {
        self.holders.fetch_add(1, Ordering::AcqRel);
    }

    /// This copy is done with (delivered, refused or left behind). Returns the holders left.
    pub fn release(&self, delivered: bool) -> usize {
        if delivered {
            self.delivered.store(true, Ordering::Release);
        }
        self.holders.fetch_sub(1, Ordering::AcqRel).saturating_sub(1)
    }

    /// How many node queues hold a copy right now.
    pub fn holders(&self) -> usize {
        self.holders.load(Ordering::Acquire)
    }

    /// Some node has this message delivered.
    pub fn reached_someone(&self) -> bool {
        self.delivered.load(Ordering::Acquire)
    }
}

/// One published message: its sequence number, topic and bytes (both wire forms).
#[derive(Clone, Debug)]
pub struct Msg {
    pub seq: u64,
    pub topic: Arc<str>,
    pub payload: Arc<Payload>,
    pub share: Arc<Share>,
    /// failed handler attempts of this copy so far (500 answers), for `max_deliveries`
    pub attempts: u32,
    /// when it was published, for the delivery-latency histogram (None: not timed)
    pub published_at: Option<std::time::Instant>,
    /// the queue group this message is still owed to, and only that one: a member's share
    /// that waits in the backlog because its node left and the group had no other member
    /// (the topic's other subscriptions are not sent it again). None: every subscription.
    pub owed_to: Option<String>,
}

impl Msg {
    pub fn new(seq: u64, topic: Arc<str>, payload: Payload) -> Self {
        Msg { seq, topic, payload: Arc::new(payload), share: Arc::default(), attempts: 0, published_at: None, owed_to: None }
    }

    /// Start a fresh dispatch: unless this message's share record is unused, its copies get a
    /// new one (a message coming back from the backlog must not count its old copies).
    pub fn renew_share(&mut self) {
        if Arc::strong_count(&self.share) > 1 || self.share.holders() != 0 || self.share.reached_someone() {
            self.share = Arc::default();
        }
    }
}

/// A message given up after `max_deliveries` failed handler attempts on one subscription.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: Arc<str>,
    /// the message as it was published
    pub payload: Arc<Payload>,
    /// the node (subscription) id and address whose handler kept failing
    pub node: String,
    pub address: String,
    /// the last error the handler reported
    pub error: String,
    pub attempts: u32,
}

impl Weighted for Msg {
    fn weight(&self) -> usize {
        self.payload.held_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Msg {
        Msg::new(seq, Arc::from("t"), Payload::new("t", std::iter::empty(), b"{}"))
    }

    #[test]
    fn broadcast_copies_share_one_record() {
        let m = msg(1);
        let copies: Vec<Msg> = (0..3).map(|_| m.clone()).collect();
        for c in &copies {
            c.share.hold();
        }
        assert_eq!(m.share.holders(), 3);
        assert!(!m.share.reached_someone());
        // one node refuses its copy, one delivers it, the last one leaves
        assert_eq!(copies[0].share.release(false), 2);
        assert!(!m.share.reached_someone());
        assert_eq!(copies[1].share.release(true), 1);
        assert!(m.share.reached_someone());
        assert_eq!(copies[2].share.release(false), 0);
        assert_eq!(m.share.holders(), 0);
        // delivered stays set once any copy got through
        assert!(m.share.reached_someone());
    }

    #[test]
    fn release_never_wraps_below_zero_holders() {
        let m = msg(1);
        assert_eq!(m.share.release(false), 0);
    }

    #[test]
    fn renew_share_keeps_an_unused_record_and_replaces_a_used_one() {
        let mut m = msg(1);
        let before = Arc::as_ptr(&m.share);
        m.renew_share();
        assert_eq!(Arc::as_ptr(&m.share), before, "nobody else uses it: kept");

        m.share.hold();
        m.share.release(true);
        m.renew_share();
        assert_ne!(Arc::as_ptr(&m.share), before, "delivered before: a new record");
        assert!(!m.share.reached_someone());

        let other = m.clone();
        let shared = Arc::as_ptr(&m.share);
        m.renew_share();
        assert_ne!(Arc::as_ptr(&m.share), shared, "another copy holds the record: a new one");
        assert_eq!(Arc::as_ptr(&other.share), shared);
    }
}
