//! End-to-end tests of what happens to messages when their node leaves, and of the backlog:
//! shares and copies a leaving node refused during a dispatch (`place_refused`), what a node
//! that left still had (`leftovers`), and what waits in the backlog until a route can take it,
//! a queue group's share for that group alone (`drain_backlog`). The scripted nodes and the
//! helpers are `publisher_tests.rs`'s.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::tests::{config, eventually, flushed, node, publish, publisher, publisher_with, refusing_port, run, TestNode};
use super::*;
use crate::msg::Msg;
use crate::payload::Payload;

fn remove_all_but(p: &Arc<Publisher>, keep: &[&str]) {
    let route = p.routes().get("t").expect("a route");
    for l in route.groups().iter().flat_map(|g| g.nodes()) {
        if !keep.contains(&l.spec.id.as_str()) {
            l.mark_removed();
        }
    }
}

#[test]
fn a_queue_group_that_left_during_the_dispatch_parks_its_shares_in_order() {
    run(async {
        let (a, b) = (node(&[]).await, node(&[]).await);
        let p = publisher();
        p.set_routes("t", vec![("q".into(), vec![a.spec("a"), b.spec("b")])]).unwrap();
        remove_all_but(&p, &[]);
        let msgs = (1..=6).map(|i| Msg::new(0, Arc::from("t"), Payload::new("t", std::iter::empty(), i.to_string().as_bytes())));
        let _ = p.publish_all(msgs.collect()); // one run, dealt a: 1 3 5, b: 2 4 6
        p.settle();
        let parked: Vec<u64> = p.backlog.drain("t", 100).iter().map(|m| m.seq).collect();
        assert_eq!(parked, [1, 2, 3, 4, 5, 6], "both shares refused: parked in publish order, once each");
        assert!(a.got().is_empty() && b.got().is_empty());
        p.close();
    });
}

#[test]
fn a_broadcast_node_that_left_during_the_dispatch_does_not_park_what_another_node_took() {
    run(async {
        let (x, y) = (node(&[]).await, node(&[]).await);
        let p = publisher();
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![x.spec("x"), y.spec("y")])]).unwrap();
        remove_all_but(&p, &["y"]);
        publish(&p, &["1", "2", "3"]);
        assert!(flushed(&p).await);
        // parked, x's copies would reach y a second time once the backlog drained to the route
        assert_eq!(y.got(), ["1", "2", "3"], "y got each message once");
        assert!(x.got().is_empty());
        assert_eq!(p.backlog.len("t"), 0, "nothing parked: y has every message");
        assert_eq!(p.stats().backlogged.load(Relaxed), 0);
        p.close();
    });
}

#[test]
fn a_broadcast_copy_is_not_parked_when_a_moved_queue_share_reached_another_member() {
    // one update removes the broadcast node x and the queue member a (say one broker with both
    // subscriptions left) while two messages are dispatched: a's share moves to b, so x's
    // copies are covered whatever the order of the route's groups (before, x's copies were
    // judged first, "1" was parked, and b got it a second time from the backlog)
    run(async {
        let (x, a, b) = (node(&[]).await, node(&[]).await, node(&[]).await);
        let p = publisher();
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![x.spec("x")]), ("q".into(), vec![a.spec("a"), b.spec("b")])]).unwrap();
        remove_all_but(&p, &["b"]);
        let msgs = ["1", "2"].map(|body| Msg::new(0, Arc::from("t"), Payload::new("t", std::iter::empty(), body.as_bytes())));
        let _ = p.publish_all(msgs.into()); // one run: dealt a "1", b "2"
        assert!(flushed(&p).await);
        p.set_routes("t", vec![("q".into(), vec![b.spec("b")])]).unwrap();
        assert!(flushed(&p).await);
        let mut got = b.got();
        got.sort();
        assert_eq!(got, ["1", "2"], "b got each message once");
        assert!(x.got().is_empty() && a.got().is_empty());
        assert_eq!(p.backlog.len("t"), 0);
        p.close();
    });
}

/// Topic "t" routed to the broadcast node y and the queue group q of one member, a; a leaves
/// (marked removed, still in the route) and "1" is published and flushed: y has it, and a's
/// share, refused, waits in the backlog for the group.
async fn only_member_left_while_publishing() -> (Arc<Publisher>, TestNode, TestNode) {
    let (y, a) = (node(&[]).await, node(&[]).await);
    let p = publisher();
    p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![y.spec("y")]), ("q".into(), vec![a.spec("a")])]).unwrap();
    remove_all_but(&p, &["y"]);
    publish(&p, &["1"]);
    assert!(flushed(&p).await);
    (p, y, a)
}

#[test]
fn a_refused_share_waits_in_the_backlog_without_resending_the_others_copies() {
    // the queue member a left during the dispatch and has no other member: its share waits in
    // the backlog for the group's next member, and nothing is sent again along the route that
    // still lists a (before, each drain pass sent y its copy again: four copies)
    run(async {
        let (p, y, _a) = only_member_left_while_publishing().await;
        assert_eq!(y.got(), ["1"], "y got its copy once");
        assert_eq!(p.backlog.len("t"), 1, "the queue group's share waits for its next member");
        assert_eq!(p.stats().backlogged.load(Relaxed), 1);
        p.close();
    });
}

#[test]
fn a_share_waiting_for_its_queue_group_is_not_sent_to_the_other_subscriptions_again() {
    // the group's only member a left during the dispatch: its share waits for the group's next
    // member, and the route changes without that group (before, the drain sent y "1" again and
    // the group never got it)
    run(async {
        let (p, y, a) = only_member_left_while_publishing().await;
        let b = node(&[]).await;
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![y.spec("y")])]).unwrap();
        publish(&p, &["2", "3"]); // published while the group has no member: not owed to it
        assert!(flushed(&p).await);
        assert_eq!(y.got(), ["1", "2", "3"], "y got each message once");
        assert_eq!(p.backlog.len("t"), 1, "the group's share still waits");
        assert!(p.backlog.held("t").is_some(), "held: publishing does not drain it again and again");
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![y.spec("y")]), ("q".into(), vec![b.spec("b")])]).unwrap();
        eventually("the group's next member has its share", || b.got() == ["1"]).await;
        assert!(flushed(&p).await);
        assert_eq!(y.got(), ["1", "2", "3"]);
        assert!(a.got().is_empty());
        assert_eq!(p.backlog.len("t"), 0);
        assert_eq!(p.stats().backlogged.load(Relaxed), 1, "parked once; waiting did not count again");
        p.close();
    });
}

#[test]
fn a_message_a_drain_puts_back_is_counted_as_backlogged_once() {
    // "1" waits for the group q; a drain sends it to q's member a, which has just left and
    // refuses it: it goes back, still counted once ("2", refused by a too, is parked anew)
    run(async {
        let (p, y, _a) = only_member_left_while_publishing().await;
        assert_eq!(p.stats().backlogged.load(Relaxed), 1);
        publish(&p, &["2"]); // the route still lists a: the drain before it sends "1" to a again
        assert!(flushed(&p).await);
        assert_eq!(y.got(), ["1", "2"]);
        assert_eq!(p.backlog.len("t"), 2);
        assert_eq!(p.stats().backlogged.load(Relaxed), 2, "each message counted once");
        p.close();
    });
}

#[test]
fn a_leaving_queue_member_without_another_leaves_its_messages_to_the_groups_next_member() {
    // a (the group's only member) never answers, so both messages stay on its queue; it leaves
    // the route while the broadcast node y has them: they wait for the group, not for y
    run(async {
        let (_socket, gone) = refusing_port();
        let (y, c) = (node(&[]).await, node(&[]).await);
        let mut cfg = config();
        cfg.evict_after = 1000; // keep the dead node in the route: it leaves, it is not evicted
        let p = publisher_with(cfg);
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![y.spec("y")]), ("q".into(), vec![gone])]).unwrap();
        publish(&p, &["1", "2"]);
        eventually("y has both", || y.got() == ["1", "2"]).await;
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![y.spec("y")])]).unwrap();
        eventually("the left member's messages are parked", || p.backlog.len("t") == 2).await;
        publish(&p, &["3"]);
        eventually("y has 3", || y.got().len() == 3).await;
        assert_eq!(y.got(), ["1", "2", "3"], "y got nothing twice");
        assert_eq!(p.backlog.len("t"), 2);
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![y.spec("y")]), ("q".into(), vec![c.spec("c")])]).unwrap();
        eventually("the group's next member has them, in order", || c.got() == ["1", "2"]).await;
        assert!(flushed(&p).await);
        assert_eq!(y.got(), ["1", "2", "3"]);
        assert_eq!(p.stats().dropped.load(Relaxed), 0);
        p.close();
    });
}

#[test]
fn no_route_parks_and_a_new_route_drains() {
    run(async {
        let a = node(&[]).await;
        let p = publisher();
        publish(&p, &["1", "2"]);
        p.settle();
        assert_eq!(p.backlog.len("t"), 2);
        assert_eq!(p.stats().backlogged.load(Relaxed), 2);
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![a.spec("a")])]).unwrap();
        assert!(flushed(&p).await);
        assert_eq!(a.got(), ["1", "2"]);
        assert_eq!(p.backlog.len("t"), 0);
        p.close();
    });
}

#[test]
fn a_leaving_node_parks_what_nobody_else_has_and_drops_what_others_have() {
    run(async {
        let (_socket, gone) = refusing_port();
        let b = node(&[]).await;
        let mut cfg = config();
        cfg.evict_after = 1000; // keep the dead node in the route: it is "leaving", not evicted
        let p = publisher_with(cfg);
        // alone: its messages wait for the next subscriber
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![gone.clone()])]).unwrap();
        publish(&p, &["1", "2"]);
        p.set_routes("t", vec![]).unwrap();
        eventually("parked", || p.backlog.len("t") == 2).await;
        assert_eq!(p.stats().dropped.load(Relaxed), 0);
        // with another subscription that has them: its copies are dropped, and counted why
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![gone, b.spec("b")])]).unwrap();
        publish(&p, &["3"]);
        eventually("b has everything", || b.got() == ["1", "2", "3"]).await;
        p.set_routes("t", vec![(BROADCAST_VERSION.into(), vec![b.spec("b")])]).unwrap();
        eventually("the left node's copies are dropped", || p.stats().drop_left_while_others_have_it.load(Relaxed) == 3).await;
        assert_eq!(p.stats().dropped.load(Relaxed), 3);
        assert_eq!(p.backlog.len("t"), 0);
        assert!(flushed(&p).await);
        p.close();
    });
}
