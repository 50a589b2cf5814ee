//! Unit tests of `node.rs`: a node link's queue, batches, in-flight slots, the ordered
//! pipeline's gate, failing / evicted / removed states, and the hand-on count. `spec` is shared
//! with other modules' tests.

use super::*;

pub(crate) fn spec(id: &str, batch: bool) -> NodeSpec {
    NodeSpec {
        id: id.into(),
        address: "127.0.0.1:1".into(),
        batch,
        frames: false,
        secure: false,
        h2: false,
        max_body: None,
        max_deliveries: None,
        path: String::new(),
    }
}

pub(crate) fn link(id: &str, batch: bool, cap: usize) -> NodeLink {
    NodeLink::new(spec(id, batch), Arc::from("t"), None, cap).unwrap()
}

/// One message onto the link's queue.
pub(crate) fn push(l: &NodeLink, m: Msg, cap: usize) -> PushedAll {
    l.push_all_quiet([m], cap)
}

/// (displaced, queue length) when queued, None when handed back.
fn queued(p: PushedAll) -> Option<(usize, usize)> {
    p.gone.is_empty().then_some((p.dropped, p.len))
}

pub(crate) fn msg(seq: u64, size: usize) -> Msg {
    Msg::new(seq, Arc::from("t"), crate::payload::Payload::new("t", std::iter::empty(), &vec![b'x'; size]))
}

fn batch(t: Take) -> Vec<u64> {
    match t {
        Take::Batch(b) => b.iter().map(|m| m.seq).collect(),
        Take::Removed { .. } => panic!("removed"),
        Take::Gated => panic!("gated"),
    }
}

#[test]
fn uri_names_the_node_percent_encoded() {
    let l = NodeLink::new(spec("a b/ü", false), Arc::from("t"), None, 1).unwrap();
    assert_eq!(l.uri.to_string(), format!("http://127.0.0.1:1{}?id=a%20b%2F%C3%BC", crate::server::PATH));
    let micro = NodeSpec { path: crate::server::MICRO_PATH.into(), ..spec("t-1", false) };
    let l = NodeLink::new(micro, Arc::from("t"), None, 1).unwrap();
    assert_eq!(l.uri.to_string(), "http://127.0.0.1:1/?id=t-1");
    let bad = NodeSpec { address: "no spaces here".into(), ..spec("x", false) };
    assert!(matches!(NodeLink::new(bad, Arc::from("t"), None, 1), Err(Error::Node(_))));
}

#[test]
fn take_batch_stops_at_the_count_cap() {
    let l = link("n", true, usize::MAX);
    l.start_workers(1, false);
    for s in 1..=5 {
        let _ = push(&l, msg(s, 10), 100);
    }
    assert_eq!(batch(l.take_batch(0, 2)), vec![1, 2]);
    assert_eq!(batch(l.take_batch(0, 2)), vec![3, 4]);
    assert_eq!(batch(l.take_batch(0, 2)), vec![5]);
    assert_eq!(batch(l.take_batch(0, 2)), Vec::<u64>::new());
}

#[test]
fn take_batch_stops_at_the_byte_cap_counting_separators() {
    // each message counts its wire form (JSON, or the frame for a frames node) plus a
    // separator: with a cap of 2w + 1, two fit (w + 1 + w)
    for frames in [false, true] {
        let w = msg(0, 10).payload.wire_len(frames);
        let l = NodeLink::new(NodeSpec { frames, ..spec("n", !frames) }, Arc::from("t"), None, 2 * w + 1).unwrap();
        l.start_workers(1, false);
        for s in 1..=3 {
            let _ = push(&l, msg(s, 10), 100);
        }
        assert_eq!(batch(l.take_batch(0, 100)), vec![1, 2]);
        assert_eq!(batch(l.take_batch(0, 100)), vec![3]);
        l.lower_batch_cap(2 * w);
        for s in 4..=5 {
            let _ = push(&l, msg(s, 10), 100);
        }
        assert_eq!(batch(l.take_batch(0, 100)), vec![4]); // w + 1 + w > 2w
    }
}

#[test]
fn an_oversize_envelope_still_goes_alone() {
    let l = link("n", true, 8);
    l.start_workers(1, false);
    let _ = push(&l, msg(1, 100), 100);
    let _ = push(&l, msg(2, 100), 100);
    assert_eq!(batch(l.take_batch(0, 100)), vec![1]);
    assert_eq!(batch(l.take_batch(0, 100)), vec![2]);
}

#[test]
fn a_node_without_batches_gets_one_envelope_at_a_time() {
    let l = link("n", false, usize::MAX);
    l.start_workers(1, false);
    for s in 1..=3 {
        let _ = push(&l, msg(s, 1), 100);
    }
    assert_eq!(batch(l.take_batch(0, 100)), vec![1]);
}

#[test]
fn each_worker_slot_remembers_what_it_has_on_the_wire() {
    let l = link("n", true, usize::MAX);
    l.start_workers(2, false);
    for s in 1..=4 {
        let _ = push(&l, msg(s, 1), 100);
    }
    assert_eq!(batch(l.take_batch(0, 2)), vec![1, 2]);
    assert_eq!(batch(l.take_batch(1, 2)), vec![3, 4]);
    assert_eq!(l.queue_len(), 0);
    assert_eq!(l.min_pending(), Some(1), "slot 0 still owes 1");
    l.clear_inflight(0);
    assert_eq!(l.min_pending(), Some(3));
    l.requeue_front(vec![msg(2, 1)]);
    assert_eq!(l.min_pending(), Some(2), "queued counts too");
    l.clear_inflight(1);
    let _ = push(&l, msg(5, 1), 100);
    assert_eq!(l.take_all().iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 5]);
    assert_eq!(l.min_pending(), Some(2), "taken out to be handed on: still owed until placed");
    l.handed_on(99); // not a lot of this link: ignored
    assert_eq!(l.min_pending(), Some(2));
    l.handed_on(2);
    assert_eq!(l.min_pending(), None);
    assert!(l.take_all().is_empty());
    assert_eq!(l.min_pending(), None, "an empty lot is nothing to wait for");
    // an unknown slot is ignored, not a panic
    l.clear_inflight(7);
}

/// A batch-taking link with `workers` (gated or not) and messages `seqs` queued.
fn queued_link(workers: usize, gated: bool, seqs: std::ops::RangeInclusive<u64>) -> NodeLink {
    let l = link("n", true, usize::MAX);
    l.start_workers(workers, gated);
    for s in seqs {
        let _ = push(&l, msg(s, 1), 100);
    }
    l
}

#[test]
fn a_gated_link_hands_out_the_next_batch_only_once_the_last_was_received() {
    let l = queued_link(2, true, 1..=6);
    assert!(l.is_gated());
    assert_eq!(batch(l.take_batch(0, 2)), vec![1, 2]);
    assert!(matches!(l.take_batch(1, 2), Take::Gated), "slot 0's batch is not received yet");
    l.open_gate(1); // not the holder: nothing changes
    assert!(matches!(l.take_batch(1, 2), Take::Gated));
    l.open_gate(0); // slot 0's receipt
    assert_eq!(batch(l.take_batch(1, 2)), vec![3, 4], "the next batch, in order, while 1-2 are handled");
    assert!(matches!(l.take_batch(0, 2), Take::Gated), "slot 1 holds the gate now");
    assert_eq!(l.min_pending(), Some(1), "both batches are owed");
    l.clear_inflight(0);
    l.open_gate(1);
    assert_eq!(batch(l.take_batch(0, 2)), vec![5, 6]);
    // an ungated link with two workers hands out batches at once
    let u = queued_link(2, false, 1..=4);
    assert!(!u.is_gated());
    assert_eq!(batch(u.take_batch(0, 2)), vec![1, 2]);
    assert_eq!(batch(u.take_batch(1, 2)), vec![3, 4]);
}

#[test]
fn batches_put_back_in_any_order_return_to_sequence_order() {
    // three pipelined batches fail and come back newest first: the queue stays in order
    let l = queued_link(3, true, 7..=8);
    l.requeue_front(vec![msg(5, 1), msg(6, 1)]);
    l.requeue_front(vec![msg(3, 1), msg(4, 1)]);
    assert_eq!(l.requeue_front_unless_evicted(vec![msg(1, 1), msg(2, 1)]).map_err(|_| ()), Ok(()));
    assert_eq!(batch(l.take_batch(0, 100)), (1..=8).collect::<Vec<u64>>());
    l.open_gate(0);
    l.requeue_front(vec![msg(1, 1), msg(2, 1)]); // the usual case: older than the head
    let _ = push(&l, msg(9, 1), 100);
    l.requeue_front(vec![msg(4, 1), msg(5, 1)]);
    l.requeue_front(vec![msg(3, 1)]);
    assert_eq!(batch(l.take_batch(0, 100)), vec![1, 2, 3, 4, 5, 9]);
}

#[test]
fn push_displaces_the_oldest_at_the_cap_and_releases_its_copy() {
    let l = link("n", true, usize::MAX);
    let first = msg(1, 1);
    assert_eq!(queued(push(&l, first.clone(), 2)), Some((0, 1)));
    assert_eq!(first.share.holders(), 1);
    assert_eq!(queued(push(&l, msg(2, 1), 2)), Some((0, 2)));
    assert_eq!(queued(push(&l, msg(3, 1), 2)), Some((1, 2)));
    assert_eq!(first.share.holders(), 0);
    assert_eq!(l.min_pending(), Some(2));
}

#[test]
fn push_all_is_push_in_order_under_one_lock() {
    let l = link("n", true, usize::MAX);
    l.start_workers(1, false);
    let first = msg(1, 1);
    let pushed = l.push_all_quiet(vec![first.clone(), msg(2, 1), msg(3, 1)], 2);
    assert_eq!((pushed.dropped, pushed.len, pushed.gone.len()), (1, 2, 0));
    assert_eq!(first.share.holders(), 0, "the displaced copy is released");
    assert_eq!(batch(l.take_batch(0, 10)), vec![2, 3]);
    l.mark_removed();
    let pushed = l.push_all_quiet(vec![msg(4, 1), msg(5, 1)], 10);
    assert_eq!(pushed.gone.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5], "a removed link takes nothing");
    assert!(pushed.gone.iter().all(|m| m.share.holders() == 0));
}

#[test]
fn an_evicted_or_removed_link_hands_messages_back() {
    let l = link("n", true, usize::MAX);
    l.start_workers(1, false);
    let _ = push(&l, msg(1, 1), 10);
    assert!(l.evict());
    assert!(!l.evict(), "only the first caller evicts");
    assert_eq!(push(&l, msg(2, 1), 10).gone.len(), 1);
    assert_eq!(batch(l.take_batch(0, 10)), Vec::<u64>::new(), "an evicted link hands out nothing");
    assert!(l.requeue_front_unless_evicted(vec![msg(3, 1)]).is_err());
    l.readmit();
    assert!(!l.is_evicted() && !l.is_failing());
    assert!(l.requeue_front_unless_evicted(vec![msg(3, 1)]).is_ok());
    l.mark_removed();
    l.mark_removed(); // twice is once
    match l.take_batch(0, 10) {
        Take::Removed { left } => {
            // put back where its sequence number belongs
            assert_eq!(left.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 3]);
        }
        _ => panic!("should be removed"),
    }
    assert_eq!(push(&l, msg(4, 1), 10).gone.len(), 1);
}

#[test]
fn health_flags_and_counters() {
    let l = link("n", true, 100);
    assert!(!l.is_failing());
    l.mark_failing();
    assert!(l.is_failing());
    assert!(l.mark_healthy());
    assert!(!l.mark_healthy());
    l.note_unreachable();
    l.note_unreachable();
    assert_eq!(l.unreachable_count(), 2);
    l.note_answer();
    assert_eq!(l.unreachable_count(), 0);
    l.lower_batch_cap(50);
    l.lower_batch_cap(70); // never raised
    assert_eq!(l.batch_cap(), 50);
    l.start_workers(2, false);
    assert!(!l.worker_exited());
    assert!(l.worker_exited());
    let other = link("m", false, 1);
    assert!(l.serves(&spec("n", true), &None));
    assert!(!l.serves(&spec("n", true), &Some("q".into())));
    assert!(!other.serves(&spec("m", true), &None));
    let _ = push(&l, msg(1, 1), 10);
    assert_eq!(l.close(), 1);
    assert!(!l.serves(&spec("n", true), &None), "a removed link serves nobody");
}
