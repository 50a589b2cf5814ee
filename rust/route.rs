//! The routing table: for each topic, its groups of node links (`TopicRoute`), and the choice of
//! a queue group member.
//!
//! A group is either the broadcast group (every node gets every message) or a queue group (one
//! member per message, round-robin over healthy members). A request goes to one node of the
//! whole topic (`TopicRoute::pick_any`), round-robin over every group's nodes. Routes are copy-on-write: readers
//! clone an `Arc<TopicRoute>` and never block a writer; every change (replace, remove a link,
//! re-add a link) builds a new `TopicRoute` that keeps each group's round-robin position.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::msg::Msg;
use crate::node::NodeLink;

/// Registry version of a broadcast subscription (go-micro's).
pub const BROADCAST_VERSION: &str = "ff.http.broadcast";

/// The nodes of one subscription version of a topic.
pub struct Group {
    /// the queue group name; None for the broadcast group
    queue: Option<String>,
    nodes: Vec<Arc<NodeLink>>,
    rr: AtomicUsize,
}

impl Group {
    pub fn new(queue: Option<String>, nodes: Vec<Arc<NodeLink>>) -> Self {
        Group { queue, nodes, rr: AtomicUsize::new(0) }
    }

    /// The group of a registry version: `BROADCAST_VERSION` is the broadcast group, any other
    /// version names a queue group.
    pub fn queue_of_version(version: String) -> Option<String> {
        if version == BROADCAST_VERSION {
            None
        } else {
            Some(version)
        }
    }

    pub fn queue(&self) -> &Option<String> {
        &self.queue
    }

    pub fn nodes(&self) -> &[Arc<NodeLink>] {
        &self.nodes
    }

    /// Round-robin over healthy nodes (any node when all fail), skipping `except`.
    pub fn pick(&self, except: Option<&NodeLink>) -> Option<&Arc<NodeLink>> {
        self.pick_index(except).map(|i| &self.nodes[i])
    }

    /// `pick`, as the member's position in `nodes`.
    fn pick_index(&self, except: Option<&NodeLink>) -> Option<usize> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        let eligible = |&i: &usize| except.is_none_or(|e| !std::ptr::eq(Arc::as_ptr(&self.nodes[i]), e));
        (0..n)
            .map(|i| (start + i) % n)
            .filter(eligible)
            .find(|&i| !self.nodes[i].is_failing())
            .or_else(|| (0..n).map(|i| (start + i) % n).find(eligible))
    }

    /// Deal `msgs` out over the members as `pick` would one by one, each member's share in the
    /// order given: the members that got some, with their share. A run is then queued with one
    /// lock and one wake-up per member rather than per message.
    pub fn deal(&self, msgs: &[Msg]) -> Vec<(&Arc<NodeLink>, Vec<Msg>)> {
        let mut shares: Vec<Vec<Msg>> = vec![Vec::new(); self.nodes.len()];
        for m in msgs {
            if let Some(i) = self.pick_index(None) {
                shares[i].push(m.clone());
            }
        }
        self.nodes.iter().zip(shares).filter(|(_, s)| !s.is_empty()).collect()
    }

    /// Some member other than `link` is in this group.
    pub fn has_other_than(&self, link: &NodeLink) -> bool {
        self.nodes.iter().any(|l| !std::ptr::eq(Arc::as_ptr(l), link))
    }

    /// A copy with the same queue and round-robin position.
    fn copy(&self) -> Group {
        Group { queue: self.queue.clone(), nodes: self.nodes.clone(), rr: AtomicUsize::new(self.rr.load(Ordering::Relaxed)) }
    }
}

/// Where the messages of one topic go.
#[derive(Default)]
pub struct TopicRoute {
    groups: Vec<Group>,
    /// round-robin position of `pick_any` (kept across route changes)
    rr: AtomicUsize,
}

impl TopicRoute {
    fn new(groups: Vec<Group>, rr: usize) -> Self {
        TopicRoute { groups, rr: AtomicUsize::new(rr) }
    }

    /// One node of any group, for a request: round-robin over every node of the topic (the
    /// broadcast group's too), skipping failing ones (any node when all fail).
    pub fn pick_any(&self) -> Option<&Arc<NodeLink>> {
        let nodes: Vec<&Arc<NodeLink>> = self.groups.iter().flat_map(|g| g.nodes.iter()).collect();
        let n = nodes.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| nodes[(start + i) % n]).find(|l| !l.is_failing()).or_else(|| Some(nodes[start % n]))
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.nodes.is_empty())
    }

    pub fn all_failing(&self) -> bool {
        self.groups.iter().flat_map(|g| g.nodes.iter()).all(|l| l.is_failing())
    }

    /// Messages can be sent along this route now: some node, and not every node failing.
    pub fn is_usable(&self) -> bool {
        !self.is_empty() && !self.all_failing()
    }

    /// The group named `queue` (None: the broadcast group).
    pub fn group(&self, queue: &Option<String>) -> Option<&Group> {
        self.groups.iter().find(|g| g.queue == *queue)
    }

    /// Which queue groups this route has, as one number (a hash of their names, in any order):
    /// equal for two routes with the same groups. For the backlog's hold (`drain_backlog`).
    pub fn queues_tag(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut names: Vec<&str> = self.groups.iter().filter_map(|g| g.queue.as_deref()).collect();
        names.sort_unstable();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        names.hash(&mut h);
        h.finish()
    }

    pub fn node_count(&self) -> usize {
        self.groups.iter().map(|g| g.nodes.len()).sum()
    }
}

/// Every topic's route.
#[derive(Default)]
pub struct Routes {
    map: RwLock<HashMap<String, Arc<TopicRoute>>>,
}

impl Routes {
    pub fn get(&self, topic: &str) -> Option<Arc<TopicRoute>> {
        self.map.read().get(topic).cloned()
    }

    /// Replace the route of `topic` (no groups: the topic has no route any more).
    pub fn replace(&self, topic: &str, groups: Vec<Group>) {
        let mut map = self.map.write();
        if groups.is_empty() {
            map.remove(topic);
        } else {
            let rr = map.get(topic).map_or(0, |r| r.rr.load(Ordering::Relaxed));
            map.insert(topic.to_string(), Arc::new(TopicRoute::new(groups, rr)));
        }
    }

    /// Take `link` out of its topic's route (its group, or the route, goes when it was the last).
    pub fn remove_link(&self, link: &Arc<NodeLink>) {
        self.rebuild(&link.topic, |groups| {
            for g in groups.iter_mut() {
                g.nodes.retain(|l| !Arc::ptr_eq(l, link));
            }
            true
        });
    }

    /// Put `link` back into its topic's route, in its group (made anew if it went). False when
    /// the link was removed meanwhile (it stays out).
    pub fn readd_link(&self, link: &Arc<NodeLink>) -> bool {
        let mut routed = false;
        self.rebuild(&link.topic, |groups| {
            // checked under the routes' lock: `set_routes` marks a link removed before it
            // replaces the route, so a removed link is never put back behind its back
            if link.is_removed() {
                return false;
            }
            routed = true;
            match groups.iter_mut().find(|g| g.queue == link.queue_group) {
                Some(g) if g.nodes.iter().any(|l| Arc::ptr_eq(l, link)) => return false,
                Some(g) => g.nodes.push(link.clone()),
                None => groups.push(Group::new(link.queue_group.clone(), vec![link.clone()])),
            }
            true
        });
        routed
    }

    pub fn clear(&self) {
        self.map.write().clear();
    }

    /// Every routed topic and its number of nodes (for metrics).
    pub fn node_counts(&self) -> Vec<(String, usize)> {
        self.map.read().iter().map(|(t, r)| (t.clone(), r.node_count())).collect()
    }

    /// Copy-on-write change of one topic's route: `change` edits a copy of its groups (empty
    /// when it has no route) and returns whether it changed anything; empty groups are dropped.
    fn rebuild(&self, topic: &str, change: impl FnOnce(&mut Vec<Group>) -> bool) {
        let mut map = self.map.write();
        let mut groups: Vec<Group> = map.get(topic).map(|r| r.groups.iter().map(Group::copy).collect()).unwrap_or_default();
        let rr = map.get(topic).map_or(0, |r| r.rr.load(Ordering::Relaxed));
        if !change(&mut groups) {
            return;
        }
        groups.retain(|g| !g.nodes.is_empty());
        if groups.is_empty() {
            map.remove(topic);
        } else {
            map.insert(topic.to_string(), Arc::new(TopicRoute::new(groups, rr)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::spec;

    fn node(id: &str, queue: Option<&str>) -> Arc<NodeLink> {
        Arc::new(NodeLink::new(spec(id, false), Arc::from("t"), queue.map(String::from), usize::MAX).unwrap())
    }

    fn ids<'a>(picks: impl Iterator<Item = Option<&'a Arc<NodeLink>>>) -> Vec<String> {
        picks.map(|l| l.map_or("-".into(), |l| l.spec.id.clone())).collect()
    }

    #[test]
    fn pick_goes_round_robin() {
        let g = Group::new(Some("q".into()), vec![node("a", Some("q")), node("b", Some("q")), node("c", Some("q"))]);
        assert_eq!(ids((0..6).map(|_| g.pick(None))), ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn deal_shares_out_as_pick_would_each_share_in_order() {
        let g = Group::new(Some("q".into()), vec![node("a", Some("q")), node("b", Some("q")), node("c", Some("q"))]);
        g.nodes[1].mark_failing();
        let msgs: Vec<Msg> =
            (0..7).map(|seq| Msg::new(seq, Arc::from("t"), crate::payload::Payload::new("t", std::iter::empty(), b"x"))).collect();
        let dealt: Vec<(String, Vec<u64>)> =
            g.deal(&msgs).into_iter().map(|(l, share)| (l.spec.id.clone(), share.iter().map(|m| m.seq).collect())).collect();
        // positions 0..6: a, (b failing -> c), c, a, (b -> c), c, a
        assert_eq!(dealt, [("a".to_string(), vec![0, 3, 6]), ("c".to_string(), vec![1, 2, 4, 5])]);
        // the round-robin position moved on by one per message, as seven picks would
        assert_eq!(ids((0..1).map(|_| g.pick(None))), ["c"]);
        assert!(Group::new(Some("q".into()), Vec::new()).deal(&msgs).is_empty());
    }

    #[test]
    fn pick_skips_failing_members() {
        let g = Group::new(Some("q".into()), vec![node("a", Some("q")), node("b", Some("q")), node("c", Some("q"))]);
        g.nodes[1].mark_failing();
        // positions 0,1,2,3: a, (b failing -> c), c, a
        assert_eq!(ids((0..4).map(|_| g.pick(None))), ["a", "c", "c", "a"]);
    }

    #[test]
    fn pick_skips_except() {
        let g = Group::new(Some("q".into()), vec![node("a", Some("q")), node("b", Some("q"))]);
        let a = g.nodes[0].clone();
        assert_eq!(ids((0..3).map(|_| g.pick(Some(&a)))), ["b", "b", "b"]);
        let lone = Group::new(Some("q".into()), vec![a.clone()]);
        assert!(lone.pick(Some(&a)).is_none(), "nobody but except: nobody");
        assert!(lone.has_other_than(&g.nodes[1]));
        assert!(!lone.has_other_than(&a));
    }

    #[test]
    fn pick_with_every_member_failing_takes_any() {
        let g = Group::new(Some("q".into()), vec![node("a", Some("q")), node("b", Some("q"))]);
        for l in &g.nodes {
            l.mark_failing();
        }
        assert_eq!(ids((0..3).map(|_| g.pick(None))), ["a", "b", "a"]);
        let a = g.nodes[0].clone();
        assert_eq!(ids((0..2).map(|_| g.pick(Some(&a)))), ["b", "b"], "still never except");
        assert!(Group::new(None, Vec::new()).pick(None).is_none());
    }

    #[test]
    fn pick_any_goes_round_robin_over_every_group_and_keeps_its_place() {
        let routes = Routes::default();
        let (a, b, c) = (node("a", None), node("b", Some("q")), node("c", Some("q")));
        routes.replace("t", vec![Group::new(None, vec![a.clone()]), Group::new(Some("q".into()), vec![b.clone(), c.clone()])]);
        let r = routes.get("t").unwrap();
        assert_eq!(ids((0..4).map(|_| r.pick_any())), ["a", "b", "c", "a"]);
        b.mark_failing();
        assert_eq!(ids((0..3).map(|_| r.pick_any())), ["c", "c", "a"], "a failing node is skipped");
        a.mark_failing();
        c.mark_failing();
        assert_eq!(ids((0..2).map(|_| r.pick_any())), ["b", "c"], "all failing: any, in turn");
        // a new route of the topic goes on where the old one was
        routes.replace("t", vec![Group::new(None, vec![node("x", None), node("y", None)])]);
        let r = routes.get("t").unwrap();
        assert_eq!(ids((0..2).map(|_| r.pick_any())), ["y", "x"], "position 9 of [x, y]");
        assert!(TopicRoute::default().pick_any().is_none());
    }

    #[test]
    fn route_health() {
        let routes = Routes::default();
        let a = node("a", None);
        let b = node("b", Some("q"));
        routes.replace("t", vec![Group::new(None, vec![a.clone()]), Group::new(Some("q".into()), vec![b.clone()])]);
        let r = routes.get("t").unwrap();
        assert!(r.is_usable());
        assert_eq!(r.node_count(), 2);
        assert!(r.group(&None).is_some() && r.group(&Some("q".into())).is_some() && r.group(&Some("x".into())).is_none());
        a.mark_failing();
        assert!(r.is_usable());
        b.mark_failing();
        assert!(r.all_failing() && !r.is_usable());
        assert!(TopicRoute::default().is_empty());
        assert_eq!(Group::queue_of_version(BROADCAST_VERSION.into()), None);
        assert_eq!(Group::queue_of_version("q".into()), Some("q".into()));
    }

    #[test]
    fn remove_and_readd_keep_the_round_robin_position() {
        let routes = Routes::default();
        let (a, b, c) = (node("a", Some("q")), node("b", Some("q")), node("c", Some("q")));
        routes.replace("t", vec![Group::new(Some("q".into()), vec![a.clone(), b.clone(), c.clone()])]);
        let _ = routes.get("t").unwrap().groups()[0].pick(None); // rr = 1

        routes.remove_link(&b);
        let r = routes.get("t").unwrap();
        assert_eq!(ids(r.groups()[0].nodes().iter().map(Some)), ["a", "c"]);
        assert_eq!(ids(std::iter::once(r.groups()[0].pick(None))), ["c"], "position 1 of [a, c]");

        assert!(routes.readd_link(&b));
        assert!(routes.readd_link(&b), "already there: no change, still routed");
        let r = routes.get("t").unwrap();
        assert_eq!(ids(r.groups()[0].nodes().iter().map(Some)), ["a", "c", "b"]);
        assert_eq!(ids(std::iter::once(r.groups()[0].pick(None))), ["b"], "position 2 of [a, c, b]");
    }

    #[test]
    fn a_removed_link_is_never_put_back() {
        // an evicted node's prober gets an answer after the registry took the node away
        let routes = Routes::default();
        let (a, b) = (node("a", None), node("b", None));
        routes.replace("t", vec![Group::new(None, vec![a.clone()])]);
        b.mark_removed();
        assert!(!routes.readd_link(&b));
        assert_eq!(ids(routes.get("t").unwrap().groups()[0].nodes().iter().map(Some)), ["a"]);
    }

    #[test]
    fn the_last_link_out_takes_the_route_and_readd_makes_it_anew() {
        let routes = Routes::default();
        let a = node("a", None);
        routes.replace("t", vec![Group::new(None, vec![a.clone()])]);
        routes.remove_link(&a);
        assert!(routes.get("t").is_none());
        routes.readd_link(&a);
        let r = routes.get("t").unwrap();
        assert_eq!(r.groups().len(), 1);
        assert_eq!(r.groups()[0].queue(), &None);
        routes.replace("t", Vec::new());
        assert!(routes.get("t").is_none());
        routes.replace("t", vec![Group::new(None, vec![a])]);
        routes.clear();
        assert!(routes.get("t").is_none());
    }
}
