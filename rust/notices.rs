//! Operational notices for the event callbacks and the rate-limited log: drops by (topic,
//! reason), node evictions and re-admissions, route changes and delivery errors.
//!
//! Nothing here is per message for Python: the publisher and its workers note events into one
//! small pending table (summing drops per (topic, reason), keeping the latest delivery error
//! with a count), and only the empty -> non-empty transition calls `wake` (the engine pushes one
//! bridge item then). The loop takes the whole table in one call. The table is bounded: drops
//! and route changes by the number of topics, evictions and re-admissions by `MAX_NODE_EVENTS`
//! (the rest is counted in `lost`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::stats::Drop;

/// Evictions (and re-admissions) kept between two takes; more are only counted.
pub const MAX_NODE_EVENTS: usize = 1024;

/// The name of a drop reason, as in `stats()["dropped_by_reason"]`.
pub fn reason_name(d: Drop) -> &'static str {
    match d {
        Drop::BacklogOverflow => "backlog_overflow",
        Drop::NodeQueueOverflow => "node_queue_overflow",
        Drop::LeftWhileOthersHaveIt => "left_while_others_have_it",
        Drop::Disconnect => "disconnect",
    }
}

/// Everything noted since the last take.
#[derive(Default, Debug)]
pub struct Pending {
    /// dropped messages summed per (topic, reason), in first-seen order
    pub drops: Vec<(Arc<str>, Drop, u64)>,
    drop_index: HashMap<(Arc<str>, &'static str), usize>,
    /// (node address, topic, reason) of nodes taken out of their route
    pub evicted: Vec<(String, Arc<str>, &'static str)>,
    /// (node address, topic) of evicted nodes put back after answering a probe
    pub readded: Vec<(String, Arc<str>)>,
    /// topics whose route changed (set by the registry, an eviction, a re-admission, a 404)
    pub routes: Vec<Arc<str>>,
    route_set: HashSet<Arc<str>>,
    /// the latest delivery error and how many were noted
    pub error: Option<(String, u64)>,
    /// node events over `MAX_NODE_EVENTS` that were only counted
    pub lost: u64,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.drops.is_empty() && self.evicted.is_empty() && self.readded.is_empty() && self.routes.is_empty() && self.error.is_none()
    }
}

/// Called on the empty -> non-empty transition; false when the loop cannot be woken (closed):
/// the table is then cleared so that it never grows unseen.
pub type Wake = Box<dyn Fn() -> bool + Send + Sync>;

#[derive(Default)]
pub struct Notices {
    table: Mutex<(Pending, bool)>,
    wake: Mutex<Option<Arc<Wake>>>,
}

impl Notices {
    /// Where the empty -> non-empty transition is signalled (without one, notes only accumulate
    /// for `take`).
    pub fn set_wake(&self, wake: Wake) {
        *self.wake.lock() = Some(Arc::new(wake));
    }

    fn note(&self, f: impl FnOnce(&mut Pending)) {
        let first = {
            let mut t = self.table.lock();
            f(&mut t.0);
            !std::mem::replace(&mut t.1, true)
        };
        if !first {
            return;
        }
        let wake = self.wake.lock().clone();
        if let Some(w) = wake {
            if !w() {
                let mut t = self.table.lock();
                t.0 = Pending::default();
                t.1 = false;
            }
        }
    }

    /// `n` messages of `topic` dropped for `reason`.
    pub fn dropped(&self, topic: &Arc<str>, reason: Drop, n: u64) {
        if n == 0 {
            return;
        }
        self.note(|p| {
            let key = (topic.clone(), reason_name(reason));
            match p.drop_index.get(&key) {
                Some(&i) => p.drops[i].2 += n,
                None => {
                    p.drop_index.insert(key, p.drops.len());
                    p.drops.push((topic.clone(), reason, n));
                }
            }
        });
    }

    /// The node at `address` left the route of `topic` for `reason`.
    pub fn evicted(&self, address: &str, topic: &Arc<str>, reason: &'static str) {
        self.note(|p| {
            if p.evicted.len() < MAX_NODE_EVENTS {
                p.evicted.push((address.to_string(), topic.clone(), reason));
            } else {
                p.lost += 1;
            }
            route_changed(p, topic);
        });
    }

    /// The evicted node at `address` answered a probe and is back in the route of `topic`.
    pub fn readded(&self, address: &str, topic: &Arc<str>) {
        self.note(|p| {
            if p.readded.len() < MAX_NODE_EVENTS {
                p.readded.push((address.to_string(), topic.clone()));
            } else {
                p.lost += 1;
            }
            route_changed(p, topic);
        });
    }

    /// The route of `topic` may have changed.
    pub fn route(&self, topic: &Arc<str>) {
        self.note(|p| route_changed(p, topic));
    }

    /// A delivery error (what `stats()["last_error"]` shows).
    pub fn error(&self, text: &str) {
        self.note(|p| {
            let n = p.error.as_ref().map_or(0, |e| e.1);
            p.error = Some((text.to_string(), n + 1));
        });
    }

    /// Everything noted since the last take; the next note wakes again.
    pub fn take(&self) -> Pending {
        let mut t = self.table.lock();
        t.1 = false;
        std::mem::take(&mut t.0)
    }
}

fn route_changed(p: &mut Pending, topic: &Arc<str>) {
    if p.route_set.insert(topic.clone()) {
        p.routes.push(topic.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(n: &Arc<AtomicUsize>, ok: bool) -> Wake {
        let n = n.clone();
        Box::new(move || {
            n.fetch_add(1, Ordering::SeqCst);
            ok
        })
    }

    #[test]
    fn drops_sum_per_topic_and_reason_with_one_wake_up() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let n = Notices::default();
        n.set_wake(counting(&wakes, true));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        for _ in 0..100_000 {
            n.dropped(&a, Drop::BacklogOverflow, 1);
        }
        n.dropped(&b, Drop::BacklogOverflow, 5);
        n.dropped(&a, Drop::NodeQueueOverflow, 2);
        n.dropped(&a, Drop::NodeQueueOverflow, 0);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        let p = n.take();
        let drops: Vec<_> = p.drops.iter().map(|(t, r, c)| (t.to_string(), reason_name(*r), *c)).collect();
        assert_eq!(
            drops,
            [("a".into(), "backlog_overflow", 100_000), ("b".into(), "backlog_overflow", 5), ("a".into(), "node_queue_overflow", 2)]
        );
        assert!(n.take().is_empty());
        n.dropped(&a, Drop::BacklogOverflow, 1);
        assert_eq!(wakes.load(Ordering::SeqCst), 2, "the first note after a take wakes again");
    }

    #[test]
    fn node_events_route_changes_and_errors() {
        let n = Notices::default();
        let t: Arc<str> = Arc::from("t");
        n.evicted("h:1", &t, "unreachable");
        n.readded("h:1", &t);
        n.route(&t);
        n.error("one");
        n.error("two");
        let p = n.take();
        assert_eq!(p.evicted, [("h:1".to_string(), t.clone(), "unreachable")]);
        assert_eq!(p.readded, [("h:1".to_string(), t.clone())]);
        assert_eq!(p.routes, std::slice::from_ref(&t), "one entry per topic");
        assert_eq!(p.error, Some(("two".to_string(), 2)));
        for _ in 0..MAX_NODE_EVENTS + 3 {
            n.evicted("h:1", &t, "unreachable");
        }
        let p = n.take();
        assert_eq!((p.evicted.len(), p.lost), (MAX_NODE_EVENTS, 3));
    }

    #[test]
    fn a_wake_up_that_fails_clears_the_table() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let n = Notices::default();
        n.set_wake(counting(&wakes, false));
        n.error("x");
        n.error("y");
        assert_eq!(wakes.load(Ordering::SeqCst), 2, "each note finds the table empty again");
        assert!(n.take().is_empty());
    }
}
