//! Hand-off from tokio to the asyncio loop, in batches, with one coalesced wake-up.
//!
//! Tokio tasks push items into a queue; only the empty->non-empty transition writes one byte to a
//! socketpair whose read end the asyncio loop watches (`loop.add_reader`). The loop then takes the
//! whole queue in one call. Rust never takes the GIL here. Handler outcomes come back through
//! `complete`, which resolves the waiting HTTP requests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::codec::Envelope;

/// What a handler did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// the handler raised; the text is the error
    Failed(String),
    /// the broker is closing; the publisher should retry later
    Unavailable,
}

pub enum Item {
    Event { token: u64, sub_id: String, env: Envelope },
    Flushed { token: u64, ok: bool },
}

struct Queue {
    items: Vec<Item>,
    scheduled: bool,
    closed: bool,
}

/// One HTTP request's worth of events: completed together, so the request task is woken once.
struct BatchSlot {
    state: Mutex<(usize, Vec<Outcome>, Option<oneshot::Sender<Vec<Outcome>>>)>,
}

impl BatchSlot {
    fn set(&self, index: usize, outcome: Outcome) {
        let mut st = self.state.lock();
        if let Some(slot) = st.1.get_mut(index) {
            *slot = outcome;
        }
        st.0 = st.0.saturating_sub(1);
        if st.0 == 0 {
            if let Some(tx) = st.2.take() {
                let results = std::mem::take(&mut st.1);
                let _ = tx.send(results);
            }
        }
    }
}

enum Waiter {
    One(oneshot::Sender<Outcome>),
    InBatch(std::sync::Arc<BatchSlot>, usize),
}

impl Waiter {
    fn resolve(self, outcome: Outcome) {
        match self {
            Waiter::One(tx) => {
                let _ = tx.send(outcome);
            }
            Waiter::InBatch(slot, i) => slot.set(i, outcome),
        }
    }
}

pub struct Bridge {
    queue: Mutex<Queue>,
    pending: Mutex<HashMap<u64, Waiter>>,
    next_token: AtomicU64,
    wake_r: UnixStream,
    wake_w: UnixStream,
}

impl Bridge {
    pub fn new() -> std::io::Result<Self> {
        let (r, w) = UnixStream::pair()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        Ok(Bridge {
            queue: Mutex::new(Queue { items: Vec::new(), scheduled: false, closed: false }),
            pending: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            wake_r: r,
            wake_w: w,
        })
    }

    pub fn fd(&self) -> i32 {
        self.wake_r.as_raw_fd()
    }

    fn push(&self, item: Item) -> bool {
        let wake = {
            let mut q = self.queue.lock();
            if q.closed {
                return false;
            }
            q.items.push(item);
            !std::mem::replace(&mut q.scheduled, true)
        };
        if wake {
            // A full socket buffer means a wake-up is pending already.
            let _ = (&self.wake_w).write(&[1u8]);
        }
        true
    }

    /// Queue an event for the loop; the receiver resolves when Python reports the outcome.
    pub fn submit(&self, sub_id: String, env: Envelope) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(token, Waiter::One(tx));
        if !self.push(Item::Event { token, sub_id, env }) {
            if let Some(w) = self.pending.lock().remove(&token) {
                w.resolve(Outcome::Unavailable);
            }
        }
        rx
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
        let slot = std::sync::Arc::new(BatchSlot { state: Mutex::new((n, vec![Outcome::Unavailable; n], Some(tx))) });
        let first = self.next_token.fetch_add(n as u64, Ordering::Relaxed);
        {
            let mut pending = self.pending.lock();
            for i in 0..n {
                pending.insert(first + i as u64, Waiter::InBatch(slot.clone(), i));
            }
        }
        let accepted = {
            let mut q = self.queue.lock();
            if q.closed {
                false
            } else {
                for (i, env) in envs.into_iter().enumerate() {
                    q.items.push(Item::Event { token: first + i as u64, sub_id: sub_id.to_string(), env });
                }
                !std::mem::replace(&mut q.scheduled, true)
            }
        };
        if accepted {
            let _ = (&self.wake_w).write(&[1u8]);
        } else if self.queue.lock().closed {
            let mut pending = self.pending.lock();
            for i in 0..n {
                if let Some(w) = pending.remove(&(first + i as u64)) {
                    w.resolve(Outcome::Unavailable);
                }
            }
        }
        rx
    }

    pub fn flushed(&self, token: u64, ok: bool) {
        self.push(Item::Flushed { token, ok });
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

    pub fn complete(&self, token: u64, outcome: Outcome) {
        let w = self.pending.lock().remove(&token);
        if let Some(w) = w {
            w.resolve(outcome);
        }
    }

    /// Complete many at once (one lock for the lookups).
    pub fn complete_many(&self, outcomes: Vec<(u64, Outcome)>) {
        let waiters: Vec<(Waiter, Outcome)> = {
            let mut pending = self.pending.lock();
            outcomes.into_iter().filter_map(|(t, o)| pending.remove(&t).map(|w| (w, o))).collect()
        };
        for (w, o) in waiters {
            w.resolve(o);
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
        let pending: Vec<_> = self.pending.lock().drain().collect();
        for (_, w) in pending {
            w.resolve(Outcome::Unavailable);
        }
    }

    pub fn reopen(&self) {
        self.queue.lock().closed = false;
    }
}
