//! Where messages go when the node they were queued for cannot take them: a node that left
//! (`leftovers`), a queue-group member that failed (`failover`), the backlog (`park_all`,
//! `park_front`, and `drain_backlog` once a route is usable again), and the dead-letter sink
//! after `max_deliveries` failed handler attempts (`undeliverable`); and what a node refused
//! during a dispatch because it left since the route was looked up (`place_refused`).
//!
//! A queue member's share that goes to the backlog because its group has no other member is
//! owed to that group alone (`owed_by`, `Msg::owed_to`): the drain sends it to the group's next
//! member, not to the topic's other subscriptions, which had their copies.
//!
//! Every move from one node's queue to another's counts in `Publisher::moved` (`note_moved`)
//! after the messages reached their new queue and before the old one lets go of them, so that
//! `flush`, reading the links one after another, never sees them on neither.
//!
//! Part of `Publisher` (a child module of `publisher.rs`, sharing its state); the decisions of
//! when a node has failed or left are `worker.rs`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::DeadLetterSink;
use super::Publisher;
use crate::msg::{DeadLetter, Msg};
use crate::node::NodeLink;
use crate::stats::{Drop, Stats};

/// Tells a link, when dropped, that the lot it handed on (lowest sequence number `first`) is
/// placed elsewhere (`NodeLink::handed_on`).
struct HandedOn<'a> {
    link: &'a NodeLink,
    first: u64,
}

impl std::ops::Drop for HandedOn<'_> {
    fn drop(&mut self) {
        self.link.handed_on(self.first);
    }
}

/// `msgs` that `link` cannot take, marked for the backlog: a queue member's are owed to its
/// group alone (`Msg::owed_to`); a broadcast node's keep what they were owed.
pub(super) fn owed_by(link: &NodeLink, mut msgs: Vec<Msg>) -> Vec<Msg> {
    if link.queue_group.is_some() {
        for m in &mut msgs {
            m.owed_to = link.queue_group.clone();
        }
    }
    msgs
}

/// Consecutive runs of messages owed to the same subscriptions (`Msg::owed_to`), in order.
fn runs_by_owner(items: Vec<Msg>) -> Vec<Vec<Msg>> {
    let mut runs: Vec<Vec<Msg>> = Vec::new();
    for m in items {
        match runs.last_mut() {
            Some(run) if run[0].owed_to == m.owed_to => run.push(m),
            _ => runs.push(vec![m]),
        }
    }
    runs
}

impl Publisher {
    /// Park messages of `topic` (oldest first), counting their overflow drops as one notice.
    pub(super) fn park_all(&self, topic: &Arc<str>, msgs: Vec<Msg>) {
        Stats::add(&self.stats.backlogged, msgs.len() as u64);
        let dropped = msgs.into_iter().map(|m| self.backlog.push(topic, m).dropped).sum();
        self.count_drop(topic, Drop::BacklogOverflow, dropped);
    }

    pub(super) fn park_front(&self, topic: &Arc<str>, mut msgs: Vec<Msg>) {
        msgs.sort_by_key(|m| m.seq);
        Stats::add(&self.stats.backlogged, msgs.len() as u64);
        let out = self.backlog.push_front_all(topic, msgs);
        self.count_drop(topic, Drop::BacklogOverflow, out.dropped);
    }

    /// Send what waits in the backlog for `topic` to its route, oldest first, each message once:
    /// to every subscription, or to the one queue group it is owed to (`Msg::owed_to`). A
    /// message owed to a group the route lacks stays, in its place; when only such messages are
    /// left the topic's ring is held until the route's queue groups change or a message is
    /// parked (`Backlog::push_front_held`), so that publishing does not drain them again and
    /// again. What a node refuses because it just left goes back to the front, and the drain
    /// stops there: the route change under way drains again once the route no longer lists that
    /// node, or the topic's next publish does (sending again along the same route would hand
    /// the others their copies once more).
    pub fn drain_backlog(self: &Arc<Self>, topic: &str) {
        // `route` calls this whenever any topic has a backlog: a topic without one costs a lookup
        let mut left = self.backlog.len(topic);
        if left == 0 {
            return;
        }
        let Some(route) = self.routes.get(topic).filter(|r| r.is_usable()) else { return };
        let queues = route.queues_tag();
        if self.backlog.held(topic) == Some(queues) {
            return; // owed to queue groups this route still lacks, nothing else
        }
        let (mut waiting, mut refused) = (Vec::new(), Vec::new());
        while left > 0 && refused.is_empty() {
            let items = self.backlog.drain(topic, left.min(256));
            if items.is_empty() {
                break;
            }
            left -= items.len();
            for run in runs_by_owner(items) {
                let owner = run[0].owed_to.clone();
                let sent = match &owner {
                    None => self.send_all_to_route(&route, run),
                    Some(q) if route.group(&owner).is_some() => self.send_all_to_group(&route, q, run),
                    Some(_) => {
                        waiting.extend(run);
                        continue;
                    }
                };
                refused.extend(sent.unplaced);
            }
        }
        if waiting.is_empty() && refused.is_empty() {
            return;
        }
        // both came out of the backlog, counted in `backlogged` when first parked: not again
        let hold = refused.is_empty() && left == 0;
        let mut back = refused;
        back.append(&mut waiting);
        back.sort_by_key(|m| m.seq);
        let out = if hold { self.backlog.push_front_held(topic, back, queues) } else { self.backlog.push_front_all(topic, back) };
        if out.dropped > 0 {
            self.count_drop(&Arc::from(topic), Drop::BacklogOverflow, out.dropped);
        }
    }

    /// Place what nodes refused during one dispatch because they left since the route was
    /// looked up (`send_to_route`), by the rule of `leftovers`: a queue member's share goes to
    /// another member of its group (behind what that one has) or, with none, waits in the
    /// backlog; then a broadcast copy is dropped when another subscription of the topic took the
    /// message in this dispatch, a share moved just now included (parked, it would reach that
    /// one twice). Returns (a node the moved shares went to is past the high-water mark, what is
    /// left to park: oldest first, once each). Parked one share after another, a queue group's
    /// messages were out of order (1, 3, 5, 2, 4, 6), and a broadcast message refused by two
    /// nodes was parked twice.
    pub(super) fn place_refused(&self, refused: Vec<(Arc<NodeLink>, Vec<Msg>)>) -> (bool, Vec<Msg>) {
        let mut congested = false;
        let mut unplaced = Vec::new();
        let mut broadcast = Vec::new();
        for (link, msgs) in refused {
            if link.queue_group.is_none() {
                broadcast.extend(msgs);
                continue;
            }
            match self.other_member(&link) {
                Some(other) => {
                    let mut again = Vec::new();
                    congested |= self.enqueue_or_refuse(&other, &mut again, msgs);
                    unplaced.extend(again.into_iter().flat_map(|(l, gone)| owed_by(&l, gone)));
                }
                None => unplaced.extend(owed_by(&link, msgs)),
            }
        }
        unplaced.extend(broadcast.into_iter().filter(|m| m.share.holders() == 0 && !m.share.reached_someone()));
        // once each: a copy owed to every subscription covers one owed to a single group
        unplaced.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.owed_to.cmp(&b.owed_to)));
        unplaced.dedup_by(|later, kept| later.seq == kept.seq && (kept.owed_to.is_none() || kept.owed_to == later.owed_to));
        (congested, unplaced)
    }

    /// Messages of a node that left (unsubscribed, disconnected, answered 404, or evicted), one
    /// rule for all: a queue group hands them to another member (or, with none left, to the
    /// backlog); a broadcast copy is dropped only when another subscription of the topic has it
    /// or will get it (another node holds a copy, or one delivered it); otherwise it waits in the
    /// backlog, ahead of newer messages, for the next subscriber.
    pub(crate) fn leftovers(self: &Arc<Self>, link: &Arc<NodeLink>, msgs: Vec<Msg>) {
        let Some(first) = msgs.iter().map(|m| m.seq).min() else { return };
        // taken out of `link` (`take_all`): counted there for `flush` until placed here
        let _placed = HandedOn { link, first };
        Stats::sub(&self.stats.in_flight, msgs.len() as u64);
        if link.queue_group.is_some() {
            let route = self.routes.get(&link.topic);
            if let Some(g) = route.as_ref().and_then(|r| r.group(&link.queue_group)).filter(|g| g.has_other_than(link)) {
                for m in msgs {
                    m.share.release(false);
                    if let Some(l) = g.pick(Some(link)) {
                        let _ = self.enqueue(l, [m]);
                    }
                }
                self.note_moved();
                return;
            }
        }
        let mut park = Vec::with_capacity(msgs.len());
        let mut dropped = 0u64;
        for m in msgs {
            let others = m.share.release(false);
            let covered = others > 0 || m.share.reached_someone();
            if link.queue_group.is_none() && covered {
                dropped += 1;
            } else {
                park.push(m); // nobody else has it: wait for the next subscriber
            }
        }
        self.count_drop(&link.topic, Drop::LeftWhileOthersHaveIt, dropped);
        link.counters.count_drop(Drop::LeftWhileOthersHaveIt, dropped);
        if park.is_empty() {
            return;
        }
        // they are older than what was parked while the node was failing: they go first; a queue
        // member's share waits for the group's next member only (`owed_by`)
        self.park_front(&link.topic, owed_by(link, park));
        self.drain_backlog(&link.topic);
    }

    /// Another member of `link`'s queue group in the topic's route now (`Group::pick`: round-robin,
    /// healthy ones first, never `link`); None for a broadcast link or a group without another.
    fn other_member(&self, link: &Arc<NodeLink>) -> Option<Arc<NodeLink>> {
        link.queue_group.as_ref()?;
        let route = self.routes.get(&link.topic)?;
        route.group(&link.queue_group)?.pick(Some(link)).cloned()
    }

    /// For a queue group, hand failed messages to a healthy member; returns what stays here.
    pub(crate) fn failover(&self, link: &Arc<NodeLink>, msgs: Vec<Msg>) -> Vec<Msg> {
        let Some(other) = self.other_member(link).filter(|o| !o.is_failing()) else { return msgs };
        let shares: Vec<_> = msgs.iter().map(|m| m.share.clone()).collect();
        Stats::sub(&self.stats.in_flight, msgs.len() as u64); // `enqueue` counts them again
        let _ = self.enqueue(&other, msgs);
        self.note_moved();
        for share in shares {
            share.release(false); // the copy moved: this node no longer holds it
        }
        Vec::new()
    }

    /// Where undeliverable messages go from now on (without a sink they are only counted).
    pub fn set_dead_letter_sink(&self, sink: DeadLetterSink) {
        *self.dead_letters.write() = Some(sink);
    }

    /// `m` failed `max_deliveries` handler attempts on `link`: it leaves the delivery machinery
    /// (counted as dead-lettered, not dropped) and goes to the dead-letter sink.
    pub(crate) fn undeliverable(&self, link: &NodeLink, m: Msg, error: String) {
        m.share.release(false);
        Stats::sub(&self.stats.in_flight, 1);
        Stats::add(&self.stats.dead_lettered, 1);
        self.set_error(format!("{} failed {} times on {}: {error}", m.topic, m.attempts, link.spec.address));
        if let Some(sink) = self.dead_letters.read().as_ref() {
            sink(DeadLetter {
                topic: m.topic.clone(),
                payload: m.payload.clone(),
                node: link.spec.id.clone(),
                address: link.spec.address.clone(),
                error,
                attempts: m.attempts,
            });
        }
        self.progress.notify();
    }

    /// Messages just reached another node's queue (before their old node lets go of them).
    pub(super) fn note_moved(&self) {
        self.moved.fetch_add(1, Ordering::SeqCst);
    }
}
