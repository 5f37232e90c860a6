//! What happened a short while ago: keys remembered for a fixed time, at most so many of them.
//!
//! Used where something ended but its stragglers can still arrive: datagrams in flight for a
//! closed media route (`media::hub`), and 2xx answers to an INVITE whose call has ended
//! (`bridge::engine`, RFC 3261 §13.2.2.4). Time is passed in, never read, so the engine's
//! simulated clock drives it.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What [`Recent::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// The key was new.
    New,
    /// The key was new, and the oldest was forgotten before its time to make room.
    Evicting,
    /// The key was already held (its time and value are kept).
    Held,
}

/// Keys with a value each, remembered for `memory` after they were first inserted. When
/// `max` are held, the oldest is forgotten early to make room.
pub struct Recent<K, V = ()> {
    memory: Duration,
    max: usize,
    entries: HashMap<K, V>,
    /// When each key was inserted, oldest first.
    order: VecDeque<(Instant, K)>,
}

impl<K: Hash + Eq + Copy, V> Recent<K, V> {
    pub fn new(memory: Duration, max: usize) -> Self {
        Recent {
            memory,
            max: max.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Remembers `key` from `now`, with `value`. A key already held keeps its first time and
    /// value.
    pub fn insert(&mut self, now: Instant, key: K, value: V) -> Inserted {
        self.expire(now);
        if self.entries.contains_key(&key) {
            return Inserted::Held;
        }
        let mut evicted = false;
        if self.order.len() >= self.max {
            if let Some((_, old)) = self.order.pop_front() {
                self.entries.remove(&old);
                evicted = true;
            }
        }
        self.entries.insert(key, value);
        self.order.push_back((now, key));
        if evicted {
            Inserted::Evicting
        } else {
            Inserted::New
        }
    }

    /// The value of `key` if it was inserted less than `memory` before `now`.
    pub fn get(&mut self, now: Instant, key: &K) -> Option<&V> {
        self.expire(now);
        self.entries.get(key)
    }

    /// As [`Recent::get`], to change the value.
    pub fn get_mut(&mut self, now: Instant, key: &K) -> Option<&mut V> {
        self.expire(now);
        self.entries.get_mut(key)
    }

    pub fn contains(&mut self, now: Instant, key: &K) -> bool {
        self.get(now, key).is_some()
    }

    /// How many keys are held (expired ones included until the next insert or lookup).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            if now.saturating_duration_since(at) < self.memory {
                break;
            }
            self.order.pop_front();
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_held_for_their_memory_and_no_longer() {
        let t0 = Instant::now();
        let mut r: Recent<u32, &str> = Recent::new(Duration::from_secs(10), 100);
        assert_eq!(r.insert(t0, 1, "one"), Inserted::New);
        assert_eq!(
            r.insert(t0 + Duration::from_secs(5), 2, "two"),
            Inserted::New
        );
        assert_eq!(
            r.insert(t0 + Duration::from_secs(6), 1, "again"),
            Inserted::Held,
            "already held"
        );
        assert_eq!(r.get(t0 + Duration::from_secs(9), &1), Some(&"one"));
        *r.get_mut(t0 + Duration::from_secs(9), &1).unwrap() = "uno";
        assert_eq!(r.get(t0 + Duration::from_secs(9), &1), Some(&"uno"));
        assert!(!r.contains(t0 + Duration::from_secs(10), &1), "expired");
        assert!(r.contains(t0 + Duration::from_secs(14), &2));
        assert!(!r.contains(t0 + Duration::from_secs(15), &2));
        assert!(r.is_empty());
        assert_eq!(
            r.insert(t0 + Duration::from_secs(15), 1, "back"),
            Inserted::New,
            "new again"
        );
    }

    #[test]
    fn at_its_limit_the_oldest_key_makes_room() {
        let t0 = Instant::now();
        let mut r: Recent<u32> = Recent::new(Duration::from_secs(60), 3);
        let made_room: Vec<Inserted> = (0..5)
            .map(|k| r.insert(t0 + Duration::from_secs(k.into()), k, ()))
            .collect();
        use Inserted::{Evicting, New};
        assert_eq!(made_room, [New, New, New, Evicting, Evicting]);
        assert_eq!(r.len(), 3);
        let now = t0 + Duration::from_secs(5);
        assert!(!r.contains(now, &0) && !r.contains(now, &1));
        assert!((2..5).all(|k| r.contains(now, &k)));
    }
}
