//! The dispatcher: the one task on the runtime that takes what the publishing thread (Python)
//! handed over and does the rest there. Two kinds of hand-over, one coalesced kick for both:
//!
//! - accepted messages (`accept`, queued in `ingress.rs`): the dispatcher routes them
//!   (`Router`: `Publisher::route_accepted`), so that `publish` costs the same whatever the topic;
//! - node links with new work (`wake`): the dispatcher wakes their workers. Publishing
//!   round-robin over thousands of topics (each its own link) costs one cross-thread wake-up per
//!   burst instead of one per message.
//!
//! The dispatcher stays on duty (yielding between rounds) while it keeps finding work, so a
//! stream of publishes kicks it once, not once per round.
//!
//! The kick is one byte into a socketpair whose read end the runtime polls (`kicked`), not a
//! `Notify`: a `Notify` from outside the runtime unparks a sleeping worker thread, which the
//! kernel puts back on the idle CPU it slept on, and on a VM that wake-up of a halted vCPU is
//! now and then served a millisecond or two late (the p99.9 outliers of `benches/`, section 4 of
//! its README). A socket write wakes the poller as a sync wake-up, which the kernel may run on
//! the publishing thread's CPU. Measured A/B (interleaved, 6 rounds each, 1k msg/s): p99.9
//! median 670 µs vs 955 µs, p99 148 vs 161 µs, throughput unchanged.
//!
//! No wake-up is lost: work (a message, a ready link) is queued before the dispatcher is
//! scheduled; the dispatcher goes off duty only after a round found nothing, it cleared its
//! scheduled flag, and found nothing queued still (work queued in between saw the flag set and
//! did not kick). A link's own flag is cleared before its workers are woken. Routing happens
//! under one lock (`routing`), so batches are routed one after another, in order, also when a
//! test routes synchronously (`route_accepted`) or `close_ingress` waits for the last batch.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::ingress::{Entry, Ingress};
use crate::node::NodeLink;

/// Routes accepted messages, emptying the batch (`Publisher::route_accepted`).
pub type Router = Box<dyn Fn(&mut Vec<Entry>) + Send + Sync>;

pub struct Wakeups {
    /// messages accepted by `publish`, waiting to be routed
    ingress: Ingress,
    router: Router,
    /// the batch being routed (its capacity kept between rounds); held while routing
    routing: Mutex<Vec<Entry>>,
    ready: Mutex<Vec<Arc<NodeLink>>>,
    scheduled: AtomicBool,
    /// the kick's write end: one byte wakes the runtime thread polling the read end through
    /// epoll, which the kernel may run on the publishing thread's CPU (a sync wake-up) instead
    /// of waking a parked worker on another one; None (no socketpair): `notify` instead
    kick_w: Option<UnixStream>,
    /// the read end, polled by the dispatcher and owned here, so that it lives as long as the
    /// write end: a kick after shutdown fills the buffer (and is ignored) instead of writing to
    /// a closed peer (EPIPE; SIGPIPE where the embedding program does not ignore it)
    kick_r: Option<tokio::net::UnixStream>,
    notify: Notify,
}

impl Wakeups {
    /// Start the dispatcher on `rt`, routing accepted messages with `router`; it ends when
    /// `shutdown` turns true.
    pub fn start(rt: &tokio::runtime::Handle, mut shutdown: watch::Receiver<bool>, router: Router) -> Arc<Self> {
        let _guard = rt.enter();
        let pair = UnixStream::pair().and_then(|(r, w)| {
            r.set_nonblocking(true)?;
            w.set_nonblocking(true)?;
            Ok((tokio::net::UnixStream::from_std(r)?, w))
        });
        let (kick_r, kick_w) = match pair {
            Ok((r, w)) => (Some(r), Some(w)),
            Err(_) => (None, None),
        };
        let w = Arc::new(Wakeups {
            ingress: Ingress::default(),
            router,
            routing: Mutex::default(),
            ready: Mutex::default(),
            scheduled: AtomicBool::new(false),
            kick_w,
            kick_r,
            notify: Notify::new(),
        });
        let d = w.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = kicked(d.kick_r.as_ref(), &d.notify) => {}
                    r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
                }
                // stay on duty while publishes keep coming: they need no kick meanwhile
                while d.round() {
                    tokio::task::yield_now().await;
                }
            }
        });
        w
    }

    /// Number and queue accepted messages (`Ingress::push`) and kick the dispatcher to route
    /// them.
    pub fn accept(&self, entry: Entry, seq: &AtomicU64) -> Result<usize, Entry> {
        let r = self.ingress.push(entry, seq);
        if r.is_ok() {
            self.kick();
        }
        r
    }

    /// Messages accepted and not yet routed.
    pub fn accepted_len(&self) -> usize {
        self.ingress.len()
    }

    /// Lowest sequence number accepted and not yet routed.
    pub fn accepted_min_pending(&self) -> Option<u64> {
        self.ingress.min_pending()
    }

    /// Accept nothing more (the publisher is closing); returns what was not routed yet, once the
    /// batch being routed, if any, is done.
    pub fn close_ingress(&self) -> Vec<Entry> {
        let _routing = self.routing.lock();
        self.ingress.close()
    }

    /// `link` has new work: wake its workers soon (on the dispatcher).
    pub fn wake(&self, link: &Arc<NodeLink>) {
        if !link.mark_wake_pending() {
            return; // on the ready list already
        }
        self.ready.lock().push(link.clone());
        self.kick();
    }

    /// Schedule the dispatcher: one kick until it has run.
    fn kick(&self) {
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            match &self.kick_w {
                // a full socket buffer means a kick is pending already
                Some(w) => {
                    let _ = (&*w).write(&[1u8]);
                }
                None => self.notify.notify_one(),
            }
        }
    }

    /// Route what was accepted so far, now, in order after any batch being routed. True when
    /// there was something.
    pub fn route_accepted(&self) -> bool {
        let mut batch = self.routing.lock();
        if !self.ingress.take(&mut batch) {
            return false;
        }
        // marked routed also if the router panics, so that `flush` and `wait_room` go on
        let _routed = Routed(&self.ingress, batch.iter().map(Entry::len).sum());
        (self.router)(&mut batch);
        batch.clear();
        true
    }

    /// One round of the dispatcher: route what was accepted, then wake the ready links'
    /// workers. False, with the scheduled flag cleared, when there was nothing to do: the next
    /// `accept` or `wake` kicks the dispatcher again.
    fn round(&self) -> bool {
        let routed = self.route_accepted();
        let ready = std::mem::take(&mut *self.ready.lock());
        if routed || !ready.is_empty() {
            for l in ready {
                l.wake_one();
            }
            return true;
        }
        self.scheduled.store(false, Ordering::SeqCst);
        // work queued between the take and the store saw the flag set and did not kick
        if self.ready.lock().is_empty() && !self.ingress.has_queued() {
            return false;
        }
        self.scheduled.store(true, Ordering::SeqCst);
        true
    }
}

/// Marks a taken batch routed when dropped.
struct Routed<'a>(&'a Ingress, usize);

impl Drop for Routed<'_> {
    fn drop(&mut self) {
        self.0.routed(self.1);
    }
}

/// Wait for a kick: the read end readable (then drained), or `notify` without a socketpair.
async fn kicked(kick_r: Option<&tokio::net::UnixStream>, notify: &Notify) {
    let Some(r) = kick_r else {
        return notify.notified().await;
    };
    loop {
        if r.readable().await.is_err() {
            return std::future::pending().await; // the reactor is gone: the runtime is closing
        }
        let mut buf = [0u8; 64];
        let mut got = false;
        while let Ok(n) = r.try_read(&mut buf) {
            if n == 0 {
                break;
            }
            got = true;
        }
        if got {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::tests::{link, msg};
    use std::time::Duration;

    #[test]
    fn every_marked_link_is_woken_once_per_round() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, rx) = watch::channel(false);
        let w = Wakeups::start(rt.handle(), rx, Box::new(|b| b.clear()));
        let links: Vec<Arc<NodeLink>> = (0..50).map(|i| Arc::new(link(&format!("n{i}"), true, 1 << 20))).collect();
        for round in 0..3 {
            let waiting: Vec<_> = links
                .iter()
                .map(|l| {
                    let l = l.clone();
                    rt.spawn(async move { tokio::time::timeout(Duration::from_secs(5), l.notified()).await.is_ok() })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20)); // the waiters are registered
            for l in &links {
                let _ = l.push_all_quiet([msg(round, 1)], 10);
                w.wake(l);
                w.wake(l); // a second mark before the dispatcher ran adds nothing
            }
            for h in waiting {
                assert!(rt.block_on(h).unwrap(), "round {round}: a link was not woken");
            }
            assert!(w.ready.lock().is_empty());
        }
        tx.send(true).unwrap();
    }

    #[test]
    fn a_router_that_panics_leaves_nothing_pending() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(); // not driven
        let (_tx, rx) = watch::channel(false);
        let w = Wakeups::start(rt.handle(), rx, Box::new(|_| panic!("a bug in routing")));
        let seq = AtomicU64::new(0);
        assert!(w.accept(Entry::One(msg(0, 1)), &seq).is_ok());
        assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.route_accepted())).is_err());
        // flush and wait_room would otherwise wait forever for a batch nobody routes
        assert_eq!((w.accepted_len(), w.accepted_min_pending()), (0, None));
    }

    #[test]
    fn a_kick_after_shutdown_never_meets_a_closed_peer() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, rx) = watch::channel(false);
        let w = Wakeups::start(rt.handle(), rx, Box::new(|b| b.clear()));
        tx.send(true).unwrap();
        std::thread::sleep(Duration::from_millis(50)); // the dispatcher has returned
        let l = Arc::new(link("n", true, 1 << 20));
        w.wake(&l); // a publish after close: no dispatcher reads the kick any more
        let kick = w.kick_w.as_ref().expect("a socketpair on Linux");
        for _ in 0..100_000 {
            // until the buffer is full: never a closed peer (EPIPE)
            match (&*kick).write(&[1u8; 64]) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("the kick's read end must outlive the dispatcher: {e}"),
            }
        }
        panic!("the socket buffer never filled");
    }
}
