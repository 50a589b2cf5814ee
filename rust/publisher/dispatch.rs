//! Routing onto node queues, on the dispatcher: `route_accepted` takes what `publish` handed
//! over and routes each run of one topic (`route`: the backlog drained first, no usable route
//! parks); `send_to_route` puts a copy on every broadcast node's queue and deals a queue
//! group's run out over its members, one lock and one coalesced wake-up per node (`enqueue`).
//! What a node refuses because it left since the route was looked up is placed after the
//! dispatch (`place_refused`, `handover.rs`).
//!
//! Part of `Publisher` (a child module of `publisher.rs`, sharing its state); the route tables
//! and the picking of a member are `route.rs`'s.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::handover::owed_by;
use super::Publisher;
use crate::ingress::Entry;
use crate::msg::Msg;
use crate::node::NodeLink;
use crate::route::TopicRoute;
use crate::stats::{Drop, Stats};
use crate::topic_stats::TopicCounters;

/// What one dispatch along a route did (`send_to_route`).
#[derive(Default)]
pub(super) struct Dispatched {
    /// a healthy node is past the high-water mark
    pub(super) congested: bool,
    /// messages nodes refused that went nowhere else (`place_refused`): oldest first, once each
    pub(super) unplaced: Vec<Msg>,
}

impl Publisher {
    /// Route a batch of accepted messages, in order (the dispatcher's `Router`). Consecutive
    /// messages of one topic (a stream of `publish` calls) are routed as one run: one route
    /// lookup, one lock per node queue, one backlog notice.
    pub(crate) fn route_accepted(self: &Arc<Self>, batch: &mut Vec<Entry>) {
        let mut congested = false;
        let mut run: Vec<Msg> = Vec::new();
        for entry in batch.drain(..) {
            let same = match (run.first(), entry.topic()) {
                (Some(m), Some(t)) => Arc::ptr_eq(&m.topic, &t) || m.topic == t,
                _ => true,
            };
            if !same {
                congested |= self.route(std::mem::take(&mut run));
            }
            run.extend(entry);
        }
        if !run.is_empty() {
            congested |= self.route(run);
        }
        if self.congested.load(Ordering::Relaxed) != congested {
            // written only on a change: the publishing thread reads it on every call
            self.congested.store(congested, Ordering::Relaxed);
        }
    }

    /// Send accepted messages of one topic (in order) along its route, or park them in the
    /// backlog when it has none. True when a healthy node is past the high-water mark.
    pub(super) fn route(self: &Arc<Self>, msgs: Vec<Msg>) -> bool {
        let Some(topic) = msgs.first().map(|m| m.topic.clone()) else { return false };
        let n = msgs.len() as u64;
        let route = self.routes.get(&topic);
        // the topic's counters come with the route looked up anyway (any of its links)
        match route.as_deref().and_then(|r| r.groups().first()).and_then(|g| g.nodes().first()) {
            Some(l) => TopicCounters::add(&l.counters.published, n),
            None => TopicCounters::add(&self.topics.get(&topic).published, n),
        }
        match route {
            Some(r) if r.is_usable() => {
                if !self.backlog.is_empty() {
                    self.drain_backlog(&topic); // what waits there is older: it goes first
                }
                let sent = self.send_all_to_route(&r, msgs);
                if !sent.unplaced.is_empty() {
                    self.park_all(&topic, sent.unplaced);
                    // a route set since the lookup drained the backlog before these got there;
                    // while the route is the one looked up, its change is still to come and
                    // drains then, or the topic's next publish does (draining now would send
                    // the others their copies again)
                    if !self.routes.get(&topic).is_some_and(|now| Arc::ptr_eq(&now, &r)) {
                        self.drain_backlog(&topic);
                    }
                }
                sent.congested
            }
            _ => {
                self.park_all(&topic, msgs);
                // a route set since the lookup drained the backlog before these got there
                self.drain_backlog(&topic);
                false
            }
        }
    }

    /// `send_to_route` for a list: one message goes as an array (no list per node).
    pub(super) fn send_all_to_route(self: &Arc<Self>, route: &TopicRoute, msgs: Vec<Msg>) -> Dispatched {
        self.send_all_to(route, None, msgs)
    }

    /// `send_all_to_route`, to the queue group `queue` of `route` only (messages it is owed:
    /// `Msg::owed_to`).
    pub(super) fn send_all_to_group(self: &Arc<Self>, route: &TopicRoute, queue: &str, msgs: Vec<Msg>) -> Dispatched {
        self.send_all_to(route, Some(queue), msgs)
    }

    fn send_all_to(self: &Arc<Self>, route: &TopicRoute, only: Option<&str>, mut msgs: Vec<Msg>) -> Dispatched {
        if msgs.len() == 1 {
            return match msgs.pop() {
                Some(m) => self.send_to_route(route, only, [m]),
                None => Dispatched::default(),
            };
        }
        self.send_to_route(route, only, msgs)
    }

    /// Dispatch `msgs` (one topic, in order) along `route` (with `only`, to that queue group
    /// alone): a broadcast node takes all of them under one lock of its queue; a queue group
    /// picks a member per message, and each member takes its share under one lock. What nodes
    /// refused because they left since the route was looked up is placed once the dispatch is
    /// done (`place_refused`): what is left of it comes back in `unplaced`, for the caller to
    /// park.
    fn send_to_route<M>(self: &Arc<Self>, route: &TopicRoute, only: Option<&str>, mut msgs: M) -> Dispatched
    where
        M: AsRef<[Msg]> + AsMut<[Msg]> + IntoIterator<Item = Msg> + Clone,
    {
        // a fresh dispatch: its copies share a new record of who holds them
        for m in msgs.as_mut() {
            m.renew_share();
        }
        let mut congested = false;
        let mut refused = Vec::new();
        let groups = route.groups();
        let mut rest = Some(msgs);
        for (i, g) in groups.iter().enumerate() {
            let Some(msgs) = rest.as_ref() else { break };
            if only.is_some() && g.queue().as_deref() != only {
                continue;
            }
            match g.queue() {
                None => {
                    let Some((last, others)) = g.nodes().split_last() else { continue };
                    for l in others {
                        congested |= self.enqueue_or_refuse(l, &mut refused, msgs.clone());
                    }
                    if i + 1 == groups.len() {
                        // the last node of all takes the list itself, not a copy
                        if let Some(all) = rest.take() {
                            congested |= self.enqueue_or_refuse(last, &mut refused, all);
                        }
                    } else {
                        congested |= self.enqueue_or_refuse(last, &mut refused, msgs.clone());
                    }
                }
                Some(_) if msgs.as_ref().len() == 1 => {
                    // a lone `publish`: one pick, without `deal`'s list per member
                    if let Some(l) = g.pick(None) {
                        congested |= self.enqueue_or_refuse(l, &mut refused, msgs.clone());
                    }
                }
                Some(_) => {
                    for (l, share) in g.deal(msgs.as_ref()) {
                        congested |= self.enqueue_or_refuse(l, &mut refused, share);
                    }
                }
            }
        }
        let (moved_congested, unplaced) = self.place_refused(refused);
        Dispatched { congested: congested || moved_congested, unplaced }
    }

    /// Queue messages on one node under one lock of its queue (`[msg]` for one); returns true
    /// when that healthy node is past the high-water mark. What the node refuses (it left) is
    /// parked.
    pub(super) fn enqueue<M: AsRef<[Msg]> + IntoIterator<Item = Msg>>(&self, link: &Arc<NodeLink>, msgs: M) -> bool {
        let mut refused = Vec::new();
        let past_high_water = self.enqueue_or_refuse(link, &mut refused, msgs);
        for (l, gone) in refused {
            self.park_all(&link.topic, owed_by(&l, gone));
        }
        past_high_water
    }

    /// `enqueue`, but what the node refuses (it was removed or evicted since the route was
    /// looked up) goes into `refused` with the node, not to the backlog.
    pub(super) fn enqueue_or_refuse<M: AsRef<[Msg]> + IntoIterator<Item = Msg>>(
        &self,
        link: &Arc<NodeLink>,
        refused: &mut Vec<(Arc<NodeLink>, Vec<Msg>)>,
        msgs: M,
    ) -> bool {
        if !link.spec.frames {
            for m in msgs.as_ref() {
                let _ = m.payload.json(); // made here, once, not under the node's queue lock
            }
        }
        Stats::add(&self.stats.in_flight, msgs.as_ref().len() as u64);
        let pushed = link.push_all_quiet(msgs, self.cfg.node_queue);
        if pushed.dropped > 0 {
            // only a node that does not keep up and is not failing over gets here when the
            // producer ignores back-pressure; memory stays bounded, the drop counted
            Stats::sub(&self.stats.in_flight, pushed.dropped as u64);
            self.count_drop(&link.topic, Drop::NodeQueueOverflow, pushed.dropped as u64);
            link.counters.count_drop(Drop::NodeQueueOverflow, pushed.dropped as u64);
        }
        if !pushed.gone.is_empty() {
            Stats::sub(&self.stats.in_flight, pushed.gone.len() as u64);
            refused.push((link.clone(), pushed.gone));
            return false;
        }
        self.wakeups.wake(link);
        pushed.len >= self.high_water() && !link.is_failing()
    }
}
