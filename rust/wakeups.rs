//! Coalesced wake-ups of node workers for messages published from outside the runtime (the
//! Python thread): a `publish` marks its node link ready and wakes one dispatcher task, at most
//! once until that task ran; the dispatcher then wakes each ready link's workers from inside the
//! runtime. Publishing round-robin over thousands of topics (each its own link) thus costs one
//! cross-thread wake-up per burst instead of one per message.
//!
//! The dispatcher stays on duty (yielding between rounds) while it keeps finding ready links, so
//! a stream of publishes over many topics kicks it once, not once per round.
//!
//! No wake-up is lost: a link is put on the ready list before the dispatcher is scheduled; the
//! dispatcher goes off duty only after it found the list empty, cleared its scheduled flag, and
//! found the list still empty (a link marked in between saw the flag set and did not kick). A
//! link's own flag is cleared before its workers are woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::node::NodeLink;

#[derive(Default)]
pub struct Wakeups {
    ready: Mutex<Vec<Arc<NodeLink>>>,
    scheduled: AtomicBool,
    kick: Notify,
}

impl Wakeups {
    /// Start the dispatcher on `rt`; it ends when `shutdown` turns true.
    pub fn start(rt: &tokio::runtime::Handle, mut shutdown: watch::Receiver<bool>) -> Arc<Self> {
        let w = Arc::new(Wakeups::default());
        let d = w.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = d.kick.notified() => {}
                    r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
                }
                // stay on duty while publishes keep marking links: they need no kick meanwhile
                while d.dispatch() {
                    tokio::task::yield_now().await;
                }
            }
        });
        w
    }

    /// `link` has new work: wake its workers soon (on the dispatcher).
    pub fn wake(&self, link: &Arc<NodeLink>) {
        if !link.mark_wake_pending() {
            return; // on the ready list already
        }
        self.ready.lock().push(link.clone());
        if !self.scheduled.swap(true, Ordering::AcqRel) {
            self.kick.notify_one();
        }
    }

    /// Wake the ready links' workers. False, with the scheduled flag cleared, when none was
    /// ready: the next `wake` kicks the dispatcher again.
    fn dispatch(&self) -> bool {
        let ready = std::mem::take(&mut *self.ready.lock());
        if ready.is_empty() {
            self.scheduled.store(false, Ordering::Release);
            // a link marked between the take and the store saw the flag set and did not kick
            if self.ready.lock().is_empty() {
                return false;
            }
            self.scheduled.store(true, Ordering::Release);
            return true;
        }
        for l in ready {
            l.wake_one();
        }
        true
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
        let w = Wakeups::start(rt.handle(), rx);
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
}
