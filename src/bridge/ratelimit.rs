//! Per-source token buckets for out-of-dialog OPTIONS (security research IN-04): OPTIONS is
//! cheap to send and, carrying `Origin`, is the SIP CORS preflight, so one source must not be
//! able to keep the engine busy answering it. Sans-IO: time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Sources tracked at most; past it, buckets that have refilled are forgotten (a forgotten
/// source starts again with a full bucket, which is what a refilled bucket holds anyway).
const MAX_SOURCES: usize = 16_384;

#[derive(Debug)]
pub struct SourceLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl SourceLimiter {
    /// `rate_per_sec` requests a second per source on average, up to `burst` at once.
    pub fn new(rate_per_sec: u32, burst: u32) -> SourceLimiter {
        SourceLimiter {
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `ip`'s bucket; `false` when it is empty.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&ip) {
            self.forget_refilled(now);
        }
        let (rate, burst) = (self.rate_per_sec, self.burst);
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Seconds until `ip` may send again (for `Retry-After`), at least 1.
    pub fn retry_after_secs(&self, ip: IpAddr) -> u64 {
        let missing = self
            .buckets
            .get(&ip)
            .map_or(0.0, |b| (1.0 - b.tokens).max(0.0));
        ((missing / self.rate_per_sec).ceil() as u64).max(1)
    }

    fn forget_refilled(&mut self, now: Instant) {
        let (rate, burst) = (self.rate_per_sec, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
        });
        if self.buckets.len() >= MAX_SOURCES {
            // Every source is busy: start over rather than grow without bound.
            self.buckets.clear();
        }
    }

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_the_rate_per_source() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, 20);
        let a = ip("127.0.0.1");
        assert_eq!((0..25).filter(|_| l.allow(t0, a)).count(), 20);
        assert!(l.retry_after_secs(a) >= 1);
        // Another source has its own bucket.
        assert!(l.allow(t0, ip("127.0.0.2")));
        // One second later: ten more.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..25).filter(|_| l.allow(t1, a)).count(), 10);
        // Never more than the burst, however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| l.allow(t2, a)).count(), 20);
    }

    #[test]
    fn the_table_stays_bounded() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, 1);
        let n = MAX_SOURCES as u32;
        for i in 0..n + 10 {
            l.allow(t0, IpAddr::from(i.to_be_bytes()));
        }
        assert!(l.sources() <= MAX_SOURCES, "{}", l.sources());
        // Full again of busy sources; two seconds later every bucket has refilled, and the
        // next new source makes room by forgetting them.
        for i in 0..n {
            l.allow(t0, IpAddr::from((i + n).to_be_bytes()));
        }
        assert_eq!(l.sources(), MAX_SOURCES);
        let t1 = t0 + Duration::from_secs(2);
        l.allow(t1, ip("10.9.9.9"));
        assert_eq!(l.sources(), 1);
    }
}
