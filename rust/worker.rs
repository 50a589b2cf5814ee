//! One node's send loop (`Worker`): take a batch from the node's link, send it, settle the
//! result, then retry with back-off, split on 413, drop the route on 404, or evict the node
//! after repeated sends without an answer and probe it until it answers again.
//!
//! `settle` is the pure part: it sorts one send's messages into buckets and counters and touches
//! nothing else. The worker applies that to the link, the counters and the publisher (which
//! owns routes, the backlog and what happens to messages a node gives up: `leftovers`).
//! `node_inflight` workers run per node, each with its own in-flight slot on the link; in the
//! ordered mode to a node that takes batches, `receipt::PIPELINE` of them, gated on receipts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::client::{classify, SendResult, Verdict};
use crate::msg::Msg;
use crate::node::{NodeLink, Take};
use crate::publisher::Publisher;
use crate::receipt;
use crate::stats::Stats;
use crate::topic_stats::TopicCounters;

/// One send's messages, sorted by what happens to them next.
#[derive(Debug, Default)]
pub struct Settled {
    /// the node took them
    pub delivered: Vec<Msg>,
    /// refused for good (400, 413 alone, 414, 422): counted as failed
    pub rejected: Vec<Msg>,
    /// to send again after a back-off; also holds the 404 ones (in batch order)
    pub retry: Vec<Msg>,
    /// the node's handler failed them (500): each is retried on its own (or on another member
    /// of a queue group) while the node keeps receiving what follows
    pub handler_failed: Vec<(Msg, String)>,
    /// to send again at once in smaller batches (413 to a batch)
    pub retry_now: Vec<Msg>,
    /// how many the node answered 404 for: it does not know the subscription, its route goes
    pub gone: usize,
    /// false when the request got no answer at all
    pub answered: bool,
    /// the node's new batch byte cap, when a 413 to a batch lowered it
    pub batch_cap: Option<usize>,
    /// what to report as the last error, if anything went wrong
    pub last_error: Option<String>,
}

/// Sort `batch`, sent to the node at `address` whose batch byte cap is `batch_cap`, by `result`.
/// Every 413 to a batch of several halves the cap (never below 1 byte).
pub fn settle(address: &str, batch: Vec<Msg>, result: SendResult, batch_cap: usize) -> Settled {
    let failed = match result {
        SendResult::Unreachable(err) => {
            return Settled { retry: batch, last_error: Some(format!("{address}: {err}")), ..Settled::default() };
        }
        SendResult::Done { failed } => failed,
    };
    let n = batch.len();
    let mut s = Settled { answered: true, ..Settled::default() };
    let mut cap = batch_cap;
    let mut idx = failed.into_iter().peekable();
    for (i, m) in batch.into_iter().enumerate() {
        let Some((_, status, err)) = idx.next_if(|f| f.0 == i) else {
            s.delivered.push(m);
            continue;
        };
        if status >= 300 {
            s.last_error = Some(format!("{address} answered {status}: {}", err.trim()));
        }
        match classify(status, n) {
            Verdict::Split => {
                cap = (cap / 2).max(1);
                s.batch_cap = Some(cap);
                s.retry_now.push(m);
            }
            // the subscriber's handler raised: this message alone is retried
            Verdict::Retry if status == 500 => s.handler_failed.push((m, err.trim().to_string())),
            // a failure entry naming a success status contradicts itself: sent again
            Verdict::Retry | Verdict::Delivered => s.retry.push(m),
            Verdict::Gone => {
                s.gone += 1;
                s.retry.push(m);
            }
            Verdict::Reject => {
                s.last_error = Some(format!("{address} refused a message: {status} {err}"));
                s.rejected.push(m);
            }
        }
    }
    s
}

/// The wait before a message's next try after `attempts` failed handler attempts: `min`,
/// doubling per attempt, at most `max`.
pub fn retry_delay(min: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 1u32.checked_shl(attempts.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
    min.saturating_mul(factor).min(max)
}

/// Sleep until `at`, or forever when there is nothing to wait for.
async fn sleep_until_opt(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Whether the loop goes on after a step.
enum Flow {
    Next,
    Stop,
}

pub(crate) struct Worker {
    publisher: Arc<Publisher>,
    link: Arc<NodeLink>,
    /// this worker's in-flight slot on the link
    slot: usize,
    shutdown: watch::Receiver<bool>,
    backoff: Duration,
    /// grows with every eviction, resets when a delivery succeeds: a node that accepts TCP but
    /// fails every request (e.g. TLS) is not re-added in a tight loop
    probe_backoff: Duration,
}

/// Start the workers of a new link on the publisher's runtime: `node_inflight` of them, or, in
/// the ordered mode (`node_inflight = 1`) to a broadcast node that takes batches, the ordered
/// pipeline (`receipt.rs`): `PIPELINE` workers, each taking a batch only once the node received
/// the last one sent. Queue group members are not pipelined: each member's idle time between
/// batches is the others' busy time already, and pipelining them showed no gain on 2 cores
/// (0.9–2.1M msg/s against 1.7–2.3M, measured one build after the other on a machine where both
/// swing between those two levels: `benches/README.md`, section 3).
pub(crate) fn spawn(publisher: &Arc<Publisher>, link: Arc<NodeLink>) {
    let inflight = publisher.config().node_inflight.max(1);
    let gated = inflight == 1 && link.spec.takes_batches() && link.queue_group.is_none();
    let n = if gated { receipt::PIPELINE } else { inflight };
    link.start_workers(n, gated);
    for slot in 0..n {
        let w = Worker {
            publisher: publisher.clone(),
            link: link.clone(),
            slot,
            shutdown: publisher.shutdown_signal(),
            backoff: publisher.config().retry_min,
            probe_backoff: publisher.config().retry_min,
        };
        publisher.runtime().spawn(w.run());
    }
}

/// A worker's batch on the wire: its in-flight slot (the lowest sequence number taken, which
/// `flush` waits for) is cleared when this is dropped, once whatever failed of the batch is put
/// back in a queue, deferred, handed to another node or parked; never before, or `flush` could
/// see those messages counted nowhere and return while they are not delivered.
struct OnTheWire<'a> {
    link: &'a NodeLink,
    slot: usize,
}

impl Drop for OnTheWire<'_> {
    fn drop(&mut self) {
        self.link.clear_inflight(self.slot);
    }
}

impl Worker {
    async fn run(mut self) {
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let batch = match self.link.take_batch(self.slot, self.publisher.config().max_batch) {
                Take::Batch(b) => b,
                Take::Gated => {
                    // another worker's batch is not received yet: its `open_gate` wakes us
                    tokio::select! {
                        _ = self.link.notified() => {}
                        _ = self.shutdown.changed() => {}
                    }
                    continue;
                }
                Take::Removed { left } => {
                    self.publisher.leftovers(&self.link, left);
                    break;
                }
            };
            if batch.is_empty() {
                if self.slot == 0 && self.link.is_failing() && self.link.unreachable_count() > 0 {
                    // a queue member whose messages went to the others gets no more to send:
                    // probe it, so it is put back when it answers or evicted when it does not
                    if let Flow::Stop = self.probe_failing().await {
                        break;
                    }
                    continue;
                }
                let retry_at = self.link.next_retry_at();
                tokio::select! {
                    _ = self.link.notified() => {}
                    _ = self.shutdown.changed() => {}
                    _ = sleep_until_opt(retry_at) => {}
                }
                continue;
            }
            let flow = self.deliver(batch).await;
            // a batch that got no receipt holds the gate through its back-off: the siblings
            // do not retry around it meanwhile
            self.link.open_gate(self.slot);
            if let Flow::Stop = flow {
                break;
            }
        }
        self.exit();
    }

    /// Send one batch and act on the result.
    async fn deliver(&mut self, batch: Vec<Msg>) -> Flow {
        let p = self.publisher.clone();
        let link = self.link.clone();
        let sent = batch.len();
        // a receipt is asked for when more waits behind this batch: at a trickle each message
        // goes as before, answered in one piece
        let receipt = (link.is_gated() && link.queue_len() > 0).then(|| {
            let (gate, slot) = (link.clone(), self.slot);
            move || gate.open_gate(slot)
        });
        let result = p.transport().send(&link, &batch, receipt).await;
        // the batch counts as on the wire (for `flush`) until what failed of it is put back
        let on_the_wire = OnTheWire { link: &link, slot: self.slot };
        let cap = link.batch_cap().min(p.config().max_batch_bytes);
        let s = settle(&link.spec.address, batch, result, cap);
        self.record(&s);
        let Settled { delivered, rejected, mut retry, mut retry_now, handler_failed, gone, .. } = s;
        for m in delivered {
            m.share.release(true);
        }
        for m in rejected {
            m.share.release(false);
        }
        // handler failures wait for their own retry; what could not be set aside is retried the
        // old way below (at the head of the queue, after a back-off)
        retry.extend(self.set_aside_failed(handler_failed));
        retry.sort_by_key(|m| m.seq);

        if !retry.is_empty() && link.is_evicted() {
            // another worker of this node evicted it while this batch was on the wire
            p.leftovers(&link, retry);
            drop(on_the_wire);
            p.progress().notify();
            return Flow::Next;
        }
        if !retry.is_empty() && gone == 0 && link.unreachable_count() >= p.config().evict_after && link.evict() {
            return self.evict_and_probe(retry).await;
        }
        if !retry_now.is_empty() {
            // resend at once in smaller batches (no back-off: nothing failed but the size)
            retry_now.append(&mut retry);
            retry_now.sort_by_key(|m| m.seq);
            self.requeue_or_hand_over(retry_now);
            if gone == 0 {
                return Flow::Next;
            }
        }
        if gone > 0 {
            // the node does not know this subscription any more (404): drop the route
            self.requeue_or_hand_over(retry);
            link.mark_removed();
            drop(on_the_wire);
            p.routes().remove_link(&link);
            p.notices.route(&link.topic);
            p.progress().notify();
            return Flow::Next;
        }
        if retry.is_empty() {
            drop(on_the_wire);
            self.backoff = p.config().retry_min;
            self.probe_backoff = p.config().retry_min;
            if link.mark_healthy() {
                p.drain_backlog(&link.topic);
            }
            p.progress().notify();
            return Flow::Next;
        }
        Stats::add(&p.stats().retried, retry.len() as u64);
        TopicCounters::add(&link.counters.retried, retry.len() as u64);
        if retry.len() == sent {
            // nothing got through; when only some handlers failed, the node answered: not down
            link.mark_failing();
        }
        let retry = p.failover(&link, retry);
        self.requeue_or_hand_over(retry);
        drop(on_the_wire); // put back: the back-off does not hold `flush`
        p.progress().notify();
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = self.shutdown.changed() => {}
        }
        self.backoff = (self.backoff * 2).min(p.config().retry_max);
        Flow::Next
    }

    /// Messages whose handler failed: each counts one more attempt; at the cap (the node's
    /// `max_deliveries`, else the publisher's) it is undeliverable; in a queue group another
    /// member takes it; otherwise it waits on this node for its own retry time (back-off by its
    /// attempts) while the node keeps receiving what follows. Returns what could not be set
    /// aside (the node's deferred list is full, or the node left meanwhile).
    fn set_aside_failed(&self, failed: Vec<(Msg, String)>) -> Vec<Msg> {
        if failed.is_empty() {
            return Vec::new();
        }
        let p = &self.publisher;
        let link = &self.link;
        let cfg = p.config();
        let cap = link.spec.max_deliveries.or(cfg.max_deliveries);
        let mut again = Vec::with_capacity(failed.len());
        for (mut m, error) in failed {
            m.attempts = m.attempts.saturating_add(1);
            if cap.is_some_and(|c| m.attempts >= c) {
                p.undeliverable(link, m, error);
            } else {
                again.push(m);
            }
        }
        Stats::add(&p.stats().retried, again.len() as u64);
        TopicCounters::add(&link.counters.retried, again.len() as u64);
        let mut left = Vec::new();
        for m in p.failover(link, again) {
            let at = std::time::Instant::now() + retry_delay(cfg.retry_min, cfg.retry_max, m.attempts);
            if let Err(m) = link.defer(m, at, cfg.node_queue) {
                left.push(m);
            }
        }
        p.progress().notify();
        left
    }

    /// Counters, the link's answer count and batch cap, the last error.
    fn record(&self, s: &Settled) {
        let stats = self.publisher.stats();
        if s.answered {
            // an answer came back (even one naming failures): the connection works
            self.link.note_answer();
        } else {
            self.link.note_unreachable();
        }
        if let Some(cap) = s.batch_cap {
            self.link.lower_batch_cap(cap);
        }
        if let Some(e) = &s.last_error {
            self.publisher.set_error(e.clone());
        }
        Stats::add(&stats.remote_handler_errors, s.handler_failed.len() as u64);
        Stats::add(&stats.failed, s.rejected.len() as u64);
        Stats::add(&stats.delivered, s.delivered.len() as u64);
        let topic = &self.link.counters;
        TopicCounters::add(&topic.delivered, s.delivered.len() as u64);
        if let Some(now) = s.delivered.first().and_then(|m| m.published_at).map(|_| std::time::Instant::now()) {
            for t in s.delivered.iter().filter_map(|m| m.published_at) {
                topic.delivery.observe(now.saturating_duration_since(t));
            }
        }
        Stats::sub(&stats.in_flight, (s.delivered.len() + s.rejected.len()) as u64);
    }

    /// The node does not answer: take it out of the route, let its messages wait in the backlog
    /// (or go to another member of its queue group), probe it until it answers.
    /// The node is failing, unreachable, and has nothing queued (its queue group took its
    /// messages): after the back-off, ask whether it answers. An answer makes it healthy again;
    /// `evict_after` unanswered probes in a row (the sends before them included) evict it like a
    /// node whose sends go unanswered. New work, removal or shutdown end the wait early.
    async fn probe_failing(&mut self) -> Flow {
        let p = self.publisher.clone();
        let link = self.link.clone();
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = self.shutdown.changed() => return Flow::Stop,
            _ = link.notified() => return Flow::Next,
        }
        if *self.shutdown.borrow() || link.is_removed() || link.is_evicted() {
            return Flow::Next;
        }
        self.backoff = (self.backoff * 2).min(p.config().retry_max);
        match p.transport().probe(&link).await {
            Ok(()) => {
                link.note_answer();
                if link.mark_healthy() {
                    p.drain_backlog(&link.topic);
                }
                p.progress().notify();
                Flow::Next
            }
            Err(e) => {
                if let Some(e) = e {
                    p.set_error(format!("{}: {e}", link.spec.address));
                }
                link.note_unreachable();
                if link.unreachable_count() >= p.config().evict_after && link.evict() {
                    return self.evict_and_probe(Vec::new()).await;
                }
                Flow::Next
            }
        }
    }

    async fn evict_and_probe(&mut self, retry: Vec<Msg>) -> Flow {
        let p = self.publisher.clone();
        let link = self.link.clone();
        link.requeue_front(retry);
        let left = link.take_all();
        link.mark_failing();
        p.routes().remove_link(&link);
        Stats::add(&p.stats().evicted, 1);
        p.notices.evicted(&link.spec.address, &link.topic, "unreachable");
        p.leftovers(&link, left);
        link.clear_inflight(self.slot); // the batch that failed is handed on: probing holds nothing
        p.progress().notify();
        if !self.probe_until_back().await {
            return Flow::Stop;
        }
        self.probe_backoff = (self.probe_backoff * 2).min(p.config().retry_max);
        link.note_answer();
        link.wake_all(); // the other workers of this node resume
        self.backoff = p.config().retry_min;
        Flow::Next
    }

    /// Probe the evicted node (through the same client, TLS included), backing off, until it
    /// answers; then put it back in its route. False when the node was removed or the publisher
    /// closed meanwhile.
    async fn probe_until_back(&mut self) -> bool {
        let p = self.publisher.clone();
        let link = self.link.clone();
        let mut backoff = self.probe_backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => return false,
                _ = link.notified() => {}
            }
            if *self.shutdown.borrow() || link.is_removed() {
                return false;
            }
            match p.transport().probe(&link).await {
                Ok(()) => {
                    link.readmit();
                    if !p.routes().readd_link(&link) {
                        return false; // removed while the probe was out: this worker stops
                    }
                    p.notices.readded(&link.spec.address, &link.topic);
                    p.drain_backlog(&link.topic);
                    return true;
                }
                Err(Some(e)) => p.set_error(format!("{}: {e}", link.spec.address)),
                Err(None) => {}
            }
            backoff = (backoff * 2).min(p.config().retry_max);
        }
    }

    /// Put a failed batch back; if another worker evicted the node meanwhile, it goes where an
    /// evicted node's messages go instead.
    fn requeue_or_hand_over(&self, msgs: Vec<Msg>) {
        if let Err(msgs) = self.link.requeue_front_unless_evicted(msgs) {
            self.publisher.leftovers(&self.link, msgs);
        }
    }

    fn exit(self) {
        let p = &self.publisher;
        if self.link.worker_exited() {
            // the last worker of this node: whatever a sibling put back meanwhile is handed on
            let left = self.link.take_all();
            if !left.is_empty() && !*self.shutdown.borrow() {
                p.leftovers(&self.link, left);
            }
            p.forget_link(&self.link);
        }
        p.progress().notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::msg;

    fn seqs(v: &[Msg]) -> Vec<u64> {
        v.iter().map(|m| m.seq).collect()
    }

    fn failed_seqs(s: &Settled) -> Vec<u64> {
        s.handler_failed.iter().map(|(m, _)| m.seq).collect()
    }

    #[test]
    fn retry_delay_doubles_per_attempt_up_to_the_max() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(100));
        let d: Vec<u128> = (0..7).map(|a| retry_delay(min, max, a).as_millis()).collect();
        assert_eq!(d, [10, 10, 20, 40, 80, 100, 100]);
        assert_eq!(retry_delay(min, max, u32::MAX), max);
    }

    fn batch(n: u64) -> Vec<Msg> {
        (1..=n).map(|s| msg(s, 10)).collect()
    }

    fn failed(entries: &[(usize, u16)]) -> SendResult {
        SendResult::Done { failed: entries.iter().map(|&(i, s)| (i, s, format!("status {s} "))).collect() }
    }

    #[test]
    fn everything_delivered() {
        let s = settle("n:1", batch(3), failed(&[]), 1000);
        assert_eq!(seqs(&s.delivered), [1, 2, 3]);
        assert!(s.answered && s.retry.is_empty() && s.rejected.is_empty() && s.retry_now.is_empty());
        assert!(s.handler_failed.is_empty());
        assert_eq!((s.gone, s.batch_cap, s.last_error), (0, None, None));
    }

    #[test]
    fn a_mixed_batch_lands_in_each_bucket() {
        let s = settle("n:1", batch(6), failed(&[(1, 500), (2, 400), (3, 503), (5, 422)]), 1000);
        assert_eq!(seqs(&s.delivered), [1, 5]);
        assert_eq!(seqs(&s.retry), [4], "the 503 is retried with the node");
        assert_eq!(failed_seqs(&s), [2], "only the 500 is a handler failure, retried on its own");
        assert_eq!(seqs(&s.rejected), [3, 6]);
        assert!(s.retry_now.is_empty());
        assert_eq!(s.gone, 0);
        assert_eq!(s.last_error.as_deref(), Some("n:1 refused a message: 422 status 422 "));
        assert!(s.answered);
    }

    #[test]
    fn retryable_statuses_count_as_retries() {
        let s = settle("n:1", batch(5), failed(&[(0, 500), (1, 500), (2, 401), (3, 429), (4, 503)]), 1000);
        assert_eq!(seqs(&s.retry), [3, 4, 5]);
        assert_eq!(failed_seqs(&s), [1, 2]);
        assert_eq!(s.handler_failed[0].1, "status 500", "the handler's error text travels with it");
        assert_eq!(s.last_error.as_deref(), Some("n:1 answered 503: status 503"));
    }

    #[test]
    fn a_413_to_a_batch_halves_the_cap_and_splits() {
        // the whole batch refused as too large: every envelope to be resent at once, the cap
        // halved once per envelope the node named (as the engine always did)
        let s = settle("n:1", batch(3), failed(&[(0, 413), (1, 413), (2, 413)]), 1000);
        assert_eq!(seqs(&s.retry_now), [1, 2, 3]);
        assert!(s.retry.is_empty() && s.rejected.is_empty() && s.delivered.is_empty());
        assert_eq!(s.batch_cap, Some(125));
        // one named envelope of a batch: halved once, and never below one byte
        let s = settle("n:1", batch(2), failed(&[(1, 413)]), 1);
        assert_eq!(seqs(&s.retry_now), [2]);
        assert_eq!(seqs(&s.delivered), [1]);
        assert_eq!(s.batch_cap, Some(1));
    }

    #[test]
    fn a_413_to_one_envelope_rejects_it() {
        let s = settle("n:1", batch(1), failed(&[(0, 413)]), 1000);
        assert_eq!(seqs(&s.rejected), [1]);
        assert!(s.retry_now.is_empty());
        assert_eq!(s.batch_cap, None);
    }

    #[test]
    fn a_404_marks_the_route_gone_and_keeps_the_messages() {
        let s = settle("n:1", batch(3), failed(&[(0, 404), (1, 503)]), 1000);
        assert_eq!(s.gone, 1);
        assert_eq!(seqs(&s.retry), [1, 2], "gone and retried messages stay together, in order");
        assert_eq!(seqs(&s.delivered), [3]);
    }

    #[test]
    fn no_answer_retries_everything() {
        let s = settle("n:1", batch(2), SendResult::Unreachable("connection refused".into()), 1000);
        assert!(!s.answered);
        assert_eq!(seqs(&s.retry), [1, 2]);
        assert!(s.delivered.is_empty());
        assert_eq!(s.last_error.as_deref(), Some("n:1: connection refused"));
    }

    #[test]
    fn a_failure_entry_naming_success_is_retried() {
        let s = settle("n:1", batch(2), failed(&[(0, 200)]), 1000);
        assert_eq!(seqs(&s.retry), [1]);
        assert_eq!(s.last_error, None);
    }

    #[test]
    fn settle_leaves_the_share_records_alone() {
        let b = batch(2);
        let shares: Vec<_> = b.iter().map(|m| m.share.clone()).collect();
        for sh in &shares {
            sh.hold();
        }
        let _ = settle("n:1", b, failed(&[(1, 400)]), 1000);
        assert!(shares.iter().all(|sh| sh.holders() == 1 && !sh.reached_someone()));
    }
}
