//! Progress signalling between the node workers and whoever waits on them (`flush`,
//! `wait_room`): workers call `notify` after every step that may change what a waiter looks at;
//! `wait_until` re-checks its condition on every wake-up, and on a regular tick so that a
//! change nobody signalled is still seen, until the condition holds or the deadline passes.

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub struct Progress {
    notify: Notify,
}

impl Progress {
    /// Wake every waiter to re-check its condition.
    pub fn notify(&self) {
        self.notify.notify_waiters();
    }

    /// Wait until `done()` holds (true) or `timeout` passes (then `done()` once more decides).
    /// `done` is checked at once, after every `notify`, and at least every `tick`.
    pub async fn wait_until(&self, tick: Duration, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            // registered before the check: a notify between the check and the select is kept
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done() {
                return true;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(tick) => {}
                _ = tokio::time::sleep_until(deadline) => return done(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn returns_at_once_when_the_condition_holds() {
        let p = Progress::default();
        assert!(rt().block_on(p.wait_until(Duration::from_secs(60), Duration::from_secs(60), || true)));
    }

    #[test]
    fn a_notify_wakes_the_waiter_before_the_tick() {
        let rt = rt();
        let p = Arc::new(Progress::default());
        let flag = Arc::new(AtomicBool::new(false));
        let checks = Arc::new(AtomicUsize::new(0));
        let (p2, f2, c2) = (p.clone(), flag.clone(), checks.clone());
        let started = std::time::Instant::now();
        let ok = rt.block_on(async move {
            let waiter = tokio::spawn(async move {
                p2.wait_until(Duration::from_secs(60), Duration::from_secs(60), || {
                    c2.fetch_add(1, Ordering::SeqCst);
                    f2.load(Ordering::SeqCst)
                })
                .await
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
            p.notify();
            waiter.await.unwrap()
        });
        assert!(ok);
        assert!(started.elapsed() < Duration::from_secs(10), "woken by notify, not by the 60 s tick");
        assert_eq!(checks.load(Ordering::SeqCst), 2, "checked once at start, once after the notify");
    }

    #[test]
    fn the_tick_sees_an_unsignalled_change() {
        let rt = rt();
        let p = Progress::default();
        let flag = Arc::new(AtomicBool::new(false));
        let f2 = flag.clone();
        let ok = rt.block_on(async {
            let setter = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                f2.store(true, Ordering::SeqCst);
            };
            let (ok, ()) =
                tokio::join!(p.wait_until(Duration::from_millis(10), Duration::from_secs(60), || flag.load(Ordering::SeqCst)), setter);
            ok
        });
        assert!(ok);
    }

    #[test]
    fn the_deadline_gives_false() {
        let p = Progress::default();
        let started = std::time::Instant::now();
        assert!(!rt().block_on(p.wait_until(Duration::from_millis(5), Duration::from_millis(30), || false)));
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
