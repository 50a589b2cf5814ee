//! Hand-off from tokio to the asyncio loop, in batches, with one coalesced wake-up.
//!
//! Tokio tasks push items into a queue; only the empty->non-empty transition writes one byte to a
//! socketpair whose read end the asyncio loop watches (`loop.add_reader`). The loop then takes the
//! whole queue in one call. Rust never takes the GIL here. Handler outcomes come back through
//! `complete_many`, which resolves the waiting HTTP requests. A handler's return value travels
//! back the same way (`Outcome::Replied`), and the answer to a request this broker sent reaches
//! the loop as an `Item::Answered`.
//!
//! Bench only: a subscriber id marked with `set_noop` is served by a no-op sink in Rust instead
//! (its events are answered as handled at once and never reach the loop), so a bench can
//! measure the endpoint's own ceiling with no Python per message (`py/bench.rs`).

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use bytes::Bytes;

use crate::client::Answer;
use crate::codec::Envelope;
use crate::msg::DeadLetter;

/// What a handler did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// handled, and the handler returned a value: the reply envelope (go-micro JSON, encoded
    /// by `codec`) that answers the HTTP request
    Replied(Bytes),
    /// the handler raised; the text is the error
    Failed(String),
    /// the broker is closing; the publisher should retry later
    Unavailable,
}

pub enum Item {
    Event {
        token: u64,
        /// shared by the events of one request
        sub_id: std::sync::Arc<str>,
        env: Envelope,
    },
    Flushed {
        token: u64,
        ok: bool,
    },
    /// a message this broker published was given up after `max_deliveries` handler failures
    DeadLetter(DeadLetter),
    /// the publisher's notice table went from empty to non-empty (`notices.rs`): take it
    Notices,
    /// the answer to the request this broker sent under `token`
    Answered {
        token: u64,
        answer: Answer,
    },
}

struct Queue {
    items: Vec<Item>,
    scheduled: bool,
    closed: bool,
}

/// The events of one request (one token, or a batch's consecutive tokens) waiting for their
/// outcomes: completed together, so the request task is woken once.
struct Waiting {
    outcomes: Vec<Option<Outcome>>,
    left: usize,
    reply: Reply,
}

enum Reply {
    One(oneshot::Sender<Outcome>),
    Batch(oneshot::Sender<Vec<Outcome>>),
}

impl Waiting {
    fn new(n: usize, reply: Reply) -> Self {
        Waiting { outcomes: (0..n).map(|_| None).collect(), left: n, reply }
    }

    /// Answer the request: outcomes never reported count as unavailable (the broker is closing).
    fn finish(self) {
        let mut all = self.outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Unavailable));
        match self.reply {
            Reply::One(tx) => {
                let _ = tx.send(all.next().unwrap_or(Outcome::Unavailable));
            }
            Reply::Batch(tx) => {
                let _ = tx.send(all.collect());
            }
        }
    }
}

/// What waits for outcomes, by first token: a token finds its request with one ordered lookup
/// among the requests in flight (a few), not one map entry per event.
#[derive(Default)]
struct Pending {
    by_first: BTreeMap<u64, Waiting>,
    /// events whose outcome is not reported yet
    unresolved: usize,
}

impl Pending {
    fn insert(&mut self, first: u64, w: Waiting) {
        self.unresolved += w.left;
        self.by_first.insert(first, w);
    }

    /// Record `token`'s outcome (a second report, or an unknown token, is ignored); returns the
    /// request when this was its last outcome.
    fn set(&mut self, token: u64, outcome: Outcome) -> Option<Waiting> {
        let (&first, w) = self.by_first.range_mut(..=token).next_back()?;
        let slot = w.outcomes.get_mut(usize::try_from(token - first).ok()?)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(outcome);
        w.left -= 1;
        self.unresolved -= 1;
        if w.left == 0 {
            self.by_first.remove(&first)
        } else {
            None
        }
    }
}

pub struct Bridge {
    queue: Mutex<Queue>,
    pending: Mutex<Pending>,
    next_token: AtomicU64,
    wake_r: UnixStream,
    wake_w: UnixStream,
    /// bench only: subscriber ids whose events the no-op sink answers (see the file comment)
    noop: parking_lot::RwLock<HashSet<String>>,
    /// set once any id is in `noop`: the usual path pays one relaxed load, no lock
    any_noop: AtomicBool,
}

impl Bridge {
    pub fn new() -> std::io::Result<Self> {
        let (r, w) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        Ok(Bridge {
            queue: Mutex::new(Queue { items: Vec::new(), scheduled: false, closed: false }),
            pending: Mutex::new(Pending::default()),
            next_token: AtomicU64::new(1),
            wake_r: r,
            wake_w: w,
            noop: Default::default(),
            any_noop: AtomicBool::new(false),
        })
    }

    /// Bench only: serve subscriber `sub_id` with the no-op sink from now on (its events are
    /// answered `Outcome::Ok` at once, in Rust; the loop never sees them).
    pub fn set_noop(&self, sub_id: &str) {
        self.noop.write().insert(sub_id.to_string());
        self.any_noop.store(true, Ordering::Release);
    }

    fn is_noop(&self, sub_id: &str) -> bool {
        self.any_noop.load(Ordering::Relaxed) && self.noop.read().contains(sub_id)
    }

    /// Events submitted whose outcome is not reported yet.
    pub fn pending_len(&self) -> usize {
        self.pending.lock().unresolved
    }

    pub fn fd(&self) -> i32 {
        self.wake_r.as_raw_fd()
    }

    fn push(&self, item: Item) -> bool {
        self.queue_items(|items| items.push(item))
    }

    /// Under the queue's lock: unless the bridge is closed, let `add` queue items and schedule
    /// the loop's one wake-up (only the empty -> non-empty transition writes to the socketpair).
    /// False, `add` not called, when closed.
    fn queue_items(&self, add: impl FnOnce(&mut Vec<Item>)) -> bool {
        let wake = {
            let mut q = self.queue.lock();
            if q.closed {
                return false;
            }
            add(&mut q.items);
            !std::mem::replace(&mut q.scheduled, true)
        };
        if wake {
            // A full socket buffer means a wake-up is pending already.
            let _ = (&self.wake_w).write(&[1u8]);
        }
        true
    }

    /// Whether events are still taken (false once the bridge closed).
    pub fn is_open(&self) -> bool {
        !self.queue.lock().closed
    }

    /// Queue an event for the loop; the receiver resolves when Python reports the outcome.
    pub fn submit(&self, sub_id: String, env: Envelope) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        if self.is_noop(&sub_id) {
            let _ = tx.send(Outcome::Ok);
            return rx;
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let event = Item::Event { token, sub_id: sub_id.into(), env };
        self.submit_events(token, Waiting::new(1, Reply::One(tx)), std::iter::once(event));
        rx
    }

    /// Register `waiting` under its first token and queue its events, both under the queue's
    /// lock, so that a `close` (which takes the queue's lock, then the pending one) cannot come
    /// between: either the events are queued and waited for, or, closed, nothing is queued and
    /// the request is answered unavailable at once.
    fn submit_events(&self, first: u64, waiting: Waiting, events: impl Iterator<Item = Item>) {
        let mut waiting = Some(waiting);
        self.queue_items(|items| {
            if let Some(w) = waiting.take() {
                self.pending.lock().insert(first, w);
            }
            items.extend(events);
        });
        if let Some(w) = waiting {
            w.finish(); // closed: answered unavailable at once
        }
    }

    /// Queue several events (one batched request) at once; the receiver yields every outcome,
    /// in order, once all are known.
    pub fn submit_batch(&self, sub_id: &str, envs: Vec<Envelope>) -> oneshot::Receiver<Vec<Outcome>> {
        let (tx, rx) = oneshot::channel();
        let n = envs.len();
        if n == 0 {
            let _ = tx.send(Vec::new());
            return rx;
        }
        if self.is_noop(sub_id) {
            let _ = tx.send(vec![Outcome::Ok; n]);
            return rx;
        }
        let first = self.next_token.fetch_add(n as u64, Ordering::Relaxed);
        let sub_id: std::sync::Arc<str> = sub_id.into();
        let events = envs.into_iter().enumerate().map(|(i, env)| Item::Event { token: first + i as u64, sub_id: sub_id.clone(), env });
        self.submit_events(first, Waiting::new(n, Reply::Batch(tx)), events);
        rx
    }

    pub fn flushed(&self, token: u64, ok: bool) {
        self.push(Item::Flushed { token, ok });
    }

    /// Hand the answer to a request to the loop (dropped once closed: the broker is going).
    pub fn answered(&self, token: u64, answer: Answer) {
        self.push(Item::Answered { token, answer });
    }

    /// Hand a dead letter to the loop (dropped, with the rest of the queue, once closed).
    pub fn dead_letter(&self, d: DeadLetter) {
        self.push(Item::DeadLetter(d));
    }

    /// Tell the loop that notices wait; false when the bridge is closed.
    pub fn notices_ready(&self) -> bool {
        self.push(Item::Notices)
    }

    /// Take everything queued (called on the loop thread). Clears the wake-up first so that an
    /// item pushed after the take schedules a new wake-up: none is ever lost.
    pub fn take(&self) -> Vec<Item> {
        let mut buf = [0u8; 256];
        while let Ok(n) = (&self.wake_r).read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let mut q = self.queue.lock();
        q.scheduled = false;
        std::mem::take(&mut q.items)
    }

    /// Complete many at once (one lock for the lookups).
    pub fn complete_many(&self, outcomes: Vec<(u64, Outcome)>) {
        let done: Vec<Waiting> = {
            let mut pending = self.pending.lock();
            outcomes.into_iter().filter_map(|(t, o)| pending.set(t, o)).collect()
        };
        for w in done {
            w.finish();
        }
    }

    /// Refuse new items and answer every waiting request as unavailable.
    pub fn close(&self) {
        let dropped_items = {
            let mut q = self.queue.lock();
            q.closed = true;
            std::mem::take(&mut q.items)
        };
        drop(dropped_items);
        let pending = std::mem::take(&mut *self.pending.lock());
        for w in pending.by_first.into_values() {
            w.finish();
        }
    }

    pub fn reopen(&self) {
        self.queue.lock().closed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: &str) -> Envelope {
        Envelope::new("t".into(), Vec::new(), body.as_bytes().to_vec().into())
    }

    /// Wake-up bytes waiting on the fd (reading them, as the loop would).
    fn wakes(b: &Bridge) -> usize {
        let mut buf = [0u8; 64];
        match (&b.wake_r).read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => panic!("{e}"),
        }
    }

    fn bodies(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Event { env, .. } => String::from_utf8_lossy(&env.body).into_owned(),
                Item::Flushed { token, ok } => format!("flushed {token} {ok}"),
                Item::DeadLetter(d) => format!("dead {}", d.topic),
                Item::Notices => "notices".to_string(),
                Item::Answered { token, .. } => format!("answered {token}"),
            })
            .collect()
    }

    fn token(i: &Item) -> u64 {
        match i {
            Item::Event { token, .. } | Item::Flushed { token, .. } | Item::Answered { token, .. } => *token,
            Item::DeadLetter(_) | Item::Notices => 0,
        }
    }

    #[test]
    fn the_fd_wakes_once_per_batch() {
        let b = Bridge::new().unwrap();
        assert_eq!(wakes(&b), 0);
        let _r1 = b.submit("s".into(), env("a"));
        let _r2 = b.submit("s".into(), env("b"));
        let _r3 = b.submit_batch("s", vec![env("c"), env("d")]);
        b.flushed(7, true);
        assert!(b.notices_ready());
        assert_eq!(wakes(&b), 1, "one wake-up for everything queued before the take");
        assert_eq!(bodies(&b.take()), ["a", "b", "c", "d", "flushed 7 true", "notices"]);
        assert_eq!(wakes(&b), 0);
        assert!(b.take().is_empty());
        // the next item after a take schedules a new wake-up
        let _r4 = b.submit("s".into(), env("e"));
        let _r5 = b.submit("s".into(), env("f"));
        assert_eq!(wakes(&b), 1);
        assert_eq!(bodies(&b.take()), ["e", "f"]);
    }

    #[test]
    fn a_noop_subscriber_is_answered_in_rust_and_never_reaches_the_loop() {
        let b = Bridge::new().unwrap();
        b.set_noop("bench");
        let mut one = b.submit("bench".into(), env("a"));
        let mut many = b.submit_batch("bench", vec![env("b"), env("c")]);
        assert_eq!(one.try_recv().unwrap(), Outcome::Ok);
        assert_eq!(many.try_recv().unwrap(), vec![Outcome::Ok, Outcome::Ok]);
        assert_eq!(wakes(&b), 0, "no wake-up for the loop");
        assert_eq!(b.pending_len(), 0);
        // other subscribers still go to the loop
        let _r = b.submit("s".into(), env("d"));
        assert_eq!(wakes(&b), 1);
        assert_eq!(bodies(&b.take()), ["d"]);
    }

    #[test]
    fn a_take_clears_a_wake_up_the_loop_has_not_read() {
        let b = Bridge::new().unwrap();
        let _r = b.submit("s".into(), env("a"));
        assert_eq!(bodies(&b.take()), ["a"]);
        assert_eq!(wakes(&b), 0, "take read the byte itself");
    }

    #[test]
    fn outcomes_resolve_single_and_batched_waiters() {
        let b = Bridge::new().unwrap();
        let mut one = b.submit("s".into(), env("a"));
        let mut many = b.submit_batch("s", vec![env("b"), env("c")]);
        let items = b.take();
        let tokens: Vec<u64> = items.iter().map(token).collect();
        assert_eq!((tokens.len(), b.pending_len()), (3, 3));
        b.complete_many(vec![(tokens[0], Outcome::Ok), (tokens[2], Outcome::Failed("boom".into()))]);
        assert_eq!(one.try_recv().unwrap(), Outcome::Ok);
        assert!(many.try_recv().is_err(), "a batch resolves once every outcome is known");
        b.complete_many(vec![(tokens[2], Outcome::Ok), (tokens[0], Outcome::Ok)]); // reported already
        assert!(many.try_recv().is_err(), "a second report neither counts nor replaces the first");
        assert_eq!(b.pending_len(), 1);
        b.complete_many(vec![(tokens[1], Outcome::Ok), (tokens[1], Outcome::Ok), (999, Outcome::Ok), (0, Outcome::Ok)]);
        assert_eq!(many.try_recv().unwrap(), vec![Outcome::Ok, Outcome::Failed("boom".into())]);
        assert_eq!(b.pending_len(), 0);
        let mut empty = b.submit_batch("s", Vec::new());
        assert_eq!(empty.try_recv().unwrap(), Vec::<Outcome>::new());
    }

    #[test]
    fn replies_and_answers_travel_like_outcomes_and_flushes() {
        let b = Bridge::new().unwrap();
        let mut one = b.submit("s".into(), env("a"));
        let mut many = b.submit_batch("s", vec![env("b"), env("c")]);
        let tokens: Vec<u64> = b.take().iter().map(token).collect();
        let reply = Bytes::from_static(b"{\"Header\":{\":topic\":\"t\"},\"Body\":\"\"}");
        b.complete_many(vec![
            (tokens[0], Outcome::Replied(reply.clone())),
            (tokens[1], Outcome::Ok),
            (tokens[2], Outcome::Replied(reply.clone())),
        ]);
        assert_eq!(one.try_recv().unwrap(), Outcome::Replied(reply.clone()));
        assert_eq!(many.try_recv().unwrap(), vec![Outcome::Ok, Outcome::Replied(reply)]);
        b.answered(42, Answer::NoAnswer("late".into()));
        assert_eq!(bodies(&b.take()), ["answered 42"]);
        b.close();
        b.answered(43, Answer::NoAnswer("closed".into()));
        assert!(b.take().is_empty(), "a closed bridge drops answers: the broker fails its requests itself");
    }

    #[test]
    fn close_answers_unavailable_and_reopen_takes_new_items() {
        let b = Bridge::new().unwrap();
        let mut waiting = b.submit("s".into(), env("before"));
        b.close();
        assert_eq!(waiting.try_recv().unwrap(), Outcome::Unavailable);
        assert!(b.take().is_empty(), "what was queued at close is gone");

        let mut refused = b.submit("s".into(), env("closed"));
        assert_eq!(refused.try_recv().unwrap(), Outcome::Unavailable);
        let mut refused_many = b.submit_batch("s", vec![env("x"), env("y")]);
        assert_eq!(refused_many.try_recv().unwrap(), vec![Outcome::Unavailable, Outcome::Unavailable]);
        b.flushed(1, true);
        assert!(!b.notices_ready(), "a closed bridge refuses notices");
        assert!(b.take().is_empty());

        b.reopen();
        let _w = wakes(&b);
        let mut after = b.submit("s".into(), env("after"));
        let mut after_many = b.submit_batch("s", vec![env("m")]);
        assert_eq!(wakes(&b), 1, "the first item after reopen wakes the loop");
        let items = b.take();
        assert_eq!(bodies(&items), ["after", "m"]);
        b.complete_many(items.iter().map(|i| (token(i), Outcome::Ok)).collect());
        assert_eq!(after.try_recv().unwrap(), Outcome::Ok);
        assert_eq!(after_many.try_recv().unwrap(), vec![Outcome::Ok]);
    }

    #[test]
    fn reopen_after_a_close_with_a_wake_up_pending_still_takes_new_items() {
        let b = Bridge::new().unwrap();
        let _r = b.submit("s".into(), env("before")); // wake-up written, never read
        b.close();
        b.reopen();
        let _r = b.submit("s".into(), env("after"));
        assert!(wakes(&b) >= 1, "the fd is readable: the loop will take");
        assert_eq!(bodies(&b.take()), ["after"]);
    }
}
