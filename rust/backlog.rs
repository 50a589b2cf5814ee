//! Bounded per-topic backlog: a ring per topic that keeps the NEWEST entries.
//!
//! go-micro's inbox keeps the oldest 64 messages and silently discards new ones; here a full ring
//! drops its oldest entry and counts the drop. Besides the per-topic count cap there is a byte cap
//! across all topics: when it is exceeded the globally oldest entries are dropped (and counted
//! against their topic) until the total fits. Safe to share between threads. Pure Rust.
//!
//! A ring can be *held* (`push_front_held`): everything in it waits for something other than
//! the next drain (the caller's `tag` says what it waited on), so that the caller can skip
//! draining it again until the tag changes (`held`). Any new entry lifts the hold.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

/// Anything stored in the backlog reports its size in bytes for the byte cap.
pub trait Weighted {
    fn weight(&self) -> usize;
}

impl Weighted for bytes::Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weighted for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

struct Ring<T> {
    items: VecDeque<(u64, T)>,
    dropped: u64,
    /// every entry waits for something other than the next drain (`push_front_held`)
    held: Option<u64>,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Ring { items: VecDeque::new(), dropped: 0, held: None }
    }
}

struct Inner<T> {
    topics: HashMap<String, Ring<T>>,
    total_bytes: usize,
    total_len: usize,
    next_seq: u64,
    dropped_total: u64,
}

/// What a `push` did: how many entries it displaced (0 when the entry fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOutcome {
    pub dropped: u64,
}

pub struct Backlog<T> {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Inner<T>>,
}

impl<T: Weighted> Backlog<T> {
    /// `capacity` entries per topic (at least 1), `max_bytes` across all topics (at least 1).
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Backlog {
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            inner: Mutex::new(Inner { topics: HashMap::new(), total_bytes: 0, total_len: 0, next_seq: 0, dropped_total: 0 }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Append `item` to `topic`'s ring, dropping the oldest entries as the caps require.
    /// An item larger than the whole byte cap is itself dropped (and counted).
    pub fn push(&self, topic: &str, item: T) -> PushOutcome {
        let w = item.weight();
        let mut g = self.inner.lock();
        let inner = &mut *g;
        if w > self.max_bytes {
            inner.topics.entry(topic.to_string()).or_default().dropped += 1;
            inner.dropped_total += 1;
            return PushOutcome { dropped: 1 };
        }
        let mut dropped = 0u64;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        {
            let ring = match inner.topics.get_mut(topic) {
                Some(r) => r,
                None => inner.topics.entry(topic.to_string()).or_default(),
            };
            ring.held = None;
            if ring.items.len() >= self.capacity {
                if let Some((_, old)) = ring.items.pop_front() {
                    ring.dropped += 1;
                    dropped += 1;
                    inner.total_bytes -= old.weight();
                    inner.total_len -= 1;
                }
            }
            ring.items.push_back((seq, item));
        }
        inner.total_bytes += w;
        inner.total_len += 1;
        while inner.total_bytes > self.max_bytes {
            // Drop the globally oldest entry: the ring whose front has the smallest sequence.
            let oldest = inner.topics.iter().filter_map(|(k, r)| r.items.front().map(|(s, _)| (*s, k.clone()))).min_by_key(|(s, _)| *s);
            let Some((_, key)) = oldest else { break };
            if let Some(ring) = inner.topics.get_mut(&key) {
                if let Some((_, old)) = ring.items.pop_front() {
                    ring.dropped += 1;
                    dropped += 1;
                    inner.total_bytes -= old.weight();
                    inner.total_len -= 1;
                }
            }
        }
        inner.dropped_total += dropped;
        PushOutcome { dropped }
    }

    /// Put items back at the FRONT of the ring (oldest first in `items`), e.g. when a drained batch
    /// could not be sent. They keep their place before anything pushed meanwhile; caps still apply
    /// (the oldest are dropped first).
    pub fn push_front_all(&self, topic: &str, items: Vec<T>) -> PushOutcome {
        self.put_front(topic, items, None)
    }

    /// `push_front_all`, and when the ring then holds exactly `items` (nothing was pushed since
    /// they were drained) it is held under `tag` until an entry is pushed: `held` returns `tag`.
    pub fn push_front_held(&self, topic: &str, items: Vec<T>, tag: u64) -> PushOutcome {
        self.put_front(topic, items, Some(tag))
    }

    /// The tag of a held ring (`push_front_held`), None when not held.
    pub fn held(&self, topic: &str) -> Option<u64> {
        self.inner.lock().topics.get(topic).and_then(|r| r.held)
    }

    fn put_front(&self, topic: &str, items: Vec<T>, hold: Option<u64>) -> PushOutcome {
        let mut dropped = 0;
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let ring = inner.topics.entry(topic.to_string()).or_default();
        let alone = ring.items.is_empty();
        ring.held = None;
        // Older than anything present: sequence numbers below the current front.
        let mut front_seq = ring.items.front().map(|(s, _)| *s).unwrap_or(inner.next_seq);
        for item in items.into_iter().rev() {
            let w = item.weight();
            if ring.items.len() >= self.capacity || inner.total_bytes + w > self.max_bytes {
                ring.dropped += 1;
                dropped += 1;
                continue;
            }
            front_seq = front_seq.saturating_sub(1);
            inner.total_bytes += w;
            inner.total_len += 1;
            ring.items.push_front((front_seq, item));
        }
        if alone && !ring.items.is_empty() {
            ring.held = hold;
        }
        inner.dropped_total += dropped;
        PushOutcome { dropped }
    }

    /// Remove and return up to `max` entries of `topic`, oldest first.
    pub fn drain(&self, topic: &str, max: usize) -> Vec<T> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let Some(ring) = inner.topics.get_mut(topic) else { return Vec::new() };
        let n = max.min(ring.items.len());
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some((_, it)) = ring.items.pop_front() {
                inner.total_bytes -= it.weight();
                inner.total_len -= 1;
                out.push(it);
            }
        }
        if ring.items.is_empty() && ring.dropped == 0 {
            inner.topics.remove(topic);
        }
        out
    }

    /// Remove every entry of every topic (the broker is closing); returns how many there were.
    pub fn clear(&self) -> usize {
        let mut g = self.inner.lock();
        let n = g.total_len;
        for ring in g.topics.values_mut() {
            ring.items.clear();
        }
        g.total_len = 0;
        g.total_bytes = 0;
        n
    }

    pub fn len(&self, topic: &str) -> usize {
        self.inner.lock().topics.get(topic).map_or(0, |r| r.items.len())
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().total_len == 0
    }

    pub fn dropped(&self, topic: &str) -> u64 {
        self.inner.lock().topics.get(topic).map_or(0, |r| r.dropped)
    }

    pub fn total_len(&self) -> usize {
        self.inner.lock().total_len
    }

    pub fn total_bytes(&self) -> usize {
        self.inner.lock().total_bytes
    }

    pub fn dropped_total(&self) -> u64 {
        self.inner.lock().dropped_total
    }

    /// Every topic the backlog knows: (topic, entries, bytes, dropped so far), for metrics.
    pub fn per_topic(&self) -> Vec<(String, usize, usize, u64)> {
        let g = self.inner.lock();
        g.topics.iter().map(|(k, r)| (k.clone(), r.items.len(), r.items.iter().map(|(_, it)| it.weight()).sum(), r.dropped)).collect()
    }

    /// Topics that currently hold entries.
    pub fn topics(&self) -> Vec<String> {
        self.inner.lock().topics.iter().filter(|(_, r)| !r.items.is_empty()).map(|(k, _)| k.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn keeps_newest_and_counts_drops() {
        let bl = Backlog::new(3, 1 << 20);
        for i in 0..10 {
            bl.push("t", b(&i.to_string()));
        }
        assert_eq!(bl.len("t"), 3);
        assert_eq!(bl.dropped("t"), 7);
        assert_eq!(bl.drain("t", 10), vec![b("7"), b("8"), b("9")]);
        assert_eq!(bl.len("t"), 0);
        assert_eq!(bl.dropped("t"), 7);
    }

    #[test]
    fn wrap_around_many_times() {
        let bl = Backlog::new(5, 1 << 20);
        for round in 0..100u32 {
            for i in 0..7u32 {
                bl.push("t", (round * 7 + i).to_le_bytes().to_vec());
            }
            let got = bl.drain("t", 2);
            assert_eq!(got.len(), 2);
            let first = u32::from_le_bytes(got[0].clone().try_into().unwrap());
            // drained entries are the oldest still kept, in order
            let second = u32::from_le_bytes(got[1].clone().try_into().unwrap());
            assert_eq!(second, first + 1);
            assert!(bl.len("t") <= 5);
        }
    }

    #[test]
    fn drain_partial_keeps_order() {
        let bl = Backlog::new(10, 1 << 20);
        for i in 0..6 {
            bl.push("t", b(&i.to_string()));
        }
        assert_eq!(bl.drain("t", 2), vec![b("0"), b("1")]);
        assert_eq!(bl.drain("t", 100), vec![b("2"), b("3"), b("4"), b("5")]);
        assert!(bl.drain("missing", 3).is_empty());
    }

    #[test]
    fn byte_cap_drops_globally_oldest() {
        let bl = Backlog::new(100, 10);
        bl.push("a", b("aaaa")); // 4
        bl.push("b", b("bbbb")); // 8
        bl.push("a", b("cccc")); // 12 -> drop "aaaa"
        assert_eq!(bl.total_bytes(), 8);
        assert_eq!(bl.dropped("a"), 1);
        assert_eq!(bl.dropped("b"), 0);
        bl.push("c", b("dddddd")); // 14 -> drop "bbbb" (oldest) -> 10 ok
        assert_eq!(bl.dropped("b"), 1);
        assert_eq!(bl.total_bytes(), 10);
        assert_eq!(bl.dropped_total(), 2);
        // an item bigger than the whole cap is refused and counted
        assert_eq!(bl.push("z", b("xxxxxxxxxxxx")).dropped, 1);
        assert_eq!(bl.dropped("z"), 1);
        assert_eq!(bl.total_bytes(), 10);
    }

    #[test]
    fn push_front_restores_order() {
        let bl = Backlog::new(10, 1 << 20);
        bl.push("t", b("3"));
        bl.push_front_all("t", vec![b("1"), b("2")]);
        assert_eq!(bl.drain("t", 10), vec![b("1"), b("2"), b("3")]);
    }

    #[test]
    fn a_held_ring_stays_held_until_an_entry_is_pushed() {
        let bl = Backlog::new(10, 1 << 20);
        bl.push("t", b("1"));
        let items = bl.drain("t", 10);
        bl.push_front_held("t", items, 7);
        assert_eq!(bl.held("t"), Some(7));
        assert_eq!(bl.len("t"), 1);
        bl.push("t", b("2"));
        assert_eq!(bl.held("t"), None, "a new entry lifts the hold");
        // put back in front of an entry pushed since the drain: not held
        let first = bl.drain("t", 1);
        bl.push("t", b("3"));
        bl.push_front_held("t", first, 7);
        assert_eq!(bl.held("t"), None);
        assert_eq!(bl.drain("t", 10), vec![b("1"), b("2"), b("3")]);
        // an ordinary put-back lifts it too
        bl.push("t", b("4"));
        let items = bl.drain("t", 10);
        bl.push_front_held("t", items, 1);
        bl.push_front_all("t", vec![b("0")]);
        assert_eq!(bl.held("t"), None);
        assert_eq!(bl.held("missing"), None);
    }

    #[test]
    fn concurrent_pushes_and_drains() {
        let bl = Arc::new(Backlog::new(1000, 1 << 30));
        let mut hs = Vec::new();
        for t in 0..4 {
            let bl = bl.clone();
            hs.push(std::thread::spawn(move || {
                for i in 0..10_000u32 {
                    bl.push(&format!("t{}", t % 2), i.to_le_bytes().to_vec());
                }
            }));
        }
        let drainer = {
            let bl = bl.clone();
            std::thread::spawn(move || {
                let mut n = 0usize;
                for _ in 0..2000 {
                    n += bl.drain("t0", 50).len();
                }
                n
            })
        };
        for h in hs {
            h.join().unwrap();
        }
        let drained = drainer.join().unwrap();
        let left0 = bl.len("t0");
        let left1 = bl.len("t1");
        assert!(left0 <= 1000 && left1 <= 1000);
        // every push is accounted for: kept, drained or dropped
        let total = drained as u64 + left0 as u64 + left1 as u64 + bl.dropped("t0") + bl.dropped("t1");
        assert_eq!(total, 40_000);
        assert_eq!(bl.total_bytes(), (left0 + left1) * 4);
    }
}
