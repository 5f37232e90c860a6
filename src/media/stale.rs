//! What goes to quinn's datagram queue, so that media never waits long in front of a slow QUIC
//! path (ADR 0019).
//!
//! quinn sends datagrams as congestion control allows and queues the rest, up to its send
//! buffer (4 MiB here). When the path sends slower than media comes (the window cut after a
//! loss, a path that stalls), that queue fills with seconds of audio, which the far end then
//! plays late. Late audio is worse than lost audio: a jitter buffer conceals a gap, but a
//! delay stays for the rest of the call.
//!
//! [`StaleGate`] sits between the relay's batches and quinn. While quinn's queue is empty at a
//! flush, the path keeps up and every datagram goes at once, as before. Otherwise the gate asks
//! the path's rate (congestion window over round-trip time: what the congestion controller
//! lets through) and hands over a datagram only if what is queued ahead of it leaves within
//! [`MAX_QUEUE_DELAY`]; the rest is dropped at once. A datagram that would wait longer now
//! would also arrive too late later: while it waited, the queue ahead of it would drain at the
//! same pace as its time runs out. No clock is read here: the caller passes quinn's free space
//! and the rate.
//!
//! The rate is the controller's, not one measured from what quinn sent: a path limited by its
//! window sends in bursts, a window per round trip, and rates measured between flushes (a few
//! milliseconds apart) swing from nothing to many times the path's rate.

use bytes::Bytes;
use std::time::Duration;

/// How long a datagram may be expected to wait in quinn's queue (media-over-QUIC research,
/// target 6: at overload, drop rather than queue beyond 60 ms).
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(60);

/// What quinn counts against its queue for each datagram beyond the payload: its `Datagram`,
/// one `Bytes` (quinn-proto `DatagramBuffer::memory_used`).
pub(super) const QUINN_PER_DATAGRAM: usize = std::mem::size_of::<Bytes>();

/// One QUIC connection's gate; see the module documentation.
#[derive(Default)]
pub struct StaleGate {
    /// quinn's free space with its queue empty: the largest seen.
    empty_space: usize,
}

impl StaleGate {
    /// One flush, with quinn's free space `space` (`datagram_send_buffer_space`): takes
    /// `batch` (`(datagram, is relayed RTP)`, oldest first), calls `hand` for each datagram to
    /// give quinn now, in order, and `stale` for each dropped because it would wait too long.
    /// `rate` (bytes per second the path sends now) is asked only when quinn's queue is not
    /// empty.
    pub fn flush(
        &mut self,
        space: usize,
        batch: &mut Vec<(Bytes, bool)>,
        rate: impl FnOnce() -> f64,
        mut hand: impl FnMut(Bytes, bool),
        mut stale: impl FnMut(bool),
    ) {
        self.empty_space = self.empty_space.max(space);
        let mut ahead = self.empty_space - space;
        if ahead == 0 {
            // The path keeps up: everything goes at once, as it came.
            for (datagram, relayed) in batch.drain(..) {
                hand(datagram, relayed);
            }
            return;
        }
        let budget = rate() * MAX_QUEUE_DELAY.as_secs_f64();
        for (datagram, relayed) in batch.drain(..) {
            let need = ahead + datagram.len() + QUINN_PER_DATAGRAM;
            if need as f64 > budget {
                stale(relayed);
            } else {
                ahead = need;
                hand(datagram, relayed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Instant;

    const SIZE: usize = 1 << 20;

    /// quinn's datagram queue as the gate sees it: FIFO, sent at `rate` bytes per second.
    struct Path {
        queue: VecDeque<(usize, Instant)>,
        used: usize,
        rate: f64,
        credit: f64,
    }

    impl Path {
        fn new(rate: f64) -> Path {
            Path {
                queue: VecDeque::new(),
                used: 0,
                rate,
                credit: 0.0,
            }
        }

        fn space(&self) -> usize {
            SIZE - self.used
        }

        fn push(&mut self, len: usize, born: Instant) {
            self.used += len + QUINN_PER_DATAGRAM;
            self.queue.push_back((len + QUINN_PER_DATAGRAM, born));
        }

        /// Sends for `dt`; returns the birth times of what left.
        fn run(&mut self, dt: Duration) -> Vec<Instant> {
            self.credit += self.rate * dt.as_secs_f64();
            let mut out = Vec::new();
            while let Some(&(len, born)) = self.queue.front() {
                if (len as f64) > self.credit {
                    break;
                }
                self.credit -= len as f64;
                self.used -= len;
                self.queue.pop_front();
                out.push(born);
            }
            if self.queue.is_empty() {
                self.credit = 0.0;
            }
            out
        }
    }

    /// Media at `per_ms` datagrams of 200 bytes each millisecond into a path sending `rate`
    /// bytes per second, for `ms` milliseconds: the latest any datagram left after it was
    /// made, how many left, how many the gate dropped.
    fn run(per_ms: usize, rate: f64, ms: u64) -> (Duration, usize, usize) {
        let t0 = Instant::now();
        let mut gate = StaleGate::default();
        let mut path = Path::new(rate);
        let (mut worst, mut sent, mut dropped) = (Duration::ZERO, 0, 0);
        for step in 0..ms {
            let now = t0 + Duration::from_millis(step);
            for born in path.run(Duration::from_millis(1)) {
                worst = worst.max(now - born);
                sent += 1;
            }
            // Each datagram carries the step it was made in, as media carries its timestamp.
            let mut batch: Vec<(Bytes, bool)> = (0..per_ms)
                .map(|_| {
                    let mut d = vec![0u8; 200];
                    d[..8].copy_from_slice(&step.to_be_bytes());
                    (Bytes::from(d), true)
                })
                .collect();
            let mut handed = Vec::new();
            gate.flush(
                path.space(),
                &mut batch,
                || rate,
                |d, _| handed.push(d),
                |_| dropped += 1,
            );
            assert!(batch.is_empty(), "the gate takes the whole batch");
            for d in handed {
                let made = u64::from_be_bytes(d[..8].try_into().unwrap());
                path.push(d.len(), t0 + Duration::from_millis(made));
            }
        }
        (worst, sent, dropped)
    }

    /// A path that keeps up: nothing waits and nothing is dropped.
    #[test]
    fn a_path_that_keeps_up_gets_everything_at_once() {
        // 10 datagrams of 232 counted bytes per ms is 2.3 MB/s; the path sends 5 MB/s.
        let (worst, sent, dropped) = run(10, 5e6, 1000);
        assert_eq!(dropped, 0);
        assert!(sent >= 9990, "{sent}");
        assert!(worst <= Duration::from_millis(1), "{worst:?}");
    }

    /// A path at half the media's rate (a congestion window cut after loss): no datagram leaves
    /// more than the limit after it came, and the path is still used to about its capacity.
    /// The same path without the gate, as a control that the scenario is slow enough to
    /// matter, delays datagrams by more than half a second (quinn's queue only drops once its
    /// megabyte is full).
    #[test]
    fn a_slow_path_sends_no_datagram_later_than_the_limit() {
        let (worst, sent, dropped) = run(10, 1.16e6, 3000);
        // The model moves in 1 ms steps, and counts a datagram that leaves within a step at its end.
        assert!(
            worst <= MAX_QUEUE_DELAY + Duration::from_millis(2),
            "a datagram left {worst:?} after it came"
        );
        let capacity = (1.16e6 * 3.0 / 232.0) as usize;
        assert!(
            sent * 10 >= capacity * 9,
            "{sent} sent, the path carries {capacity}"
        );
        assert!(dropped > 0);

        let t0 = Instant::now();
        let mut path = Path::new(1.16e6);
        let mut worst = Duration::ZERO;
        for step in 0..3000 {
            let now = t0 + Duration::from_millis(step);
            for born in path.run(Duration::from_millis(1)) {
                worst = worst.max(now - born);
            }
            for _ in 0..10 {
                if path.space() >= 232 {
                    path.push(200, now);
                }
            }
        }
        assert!(
            worst > Duration::from_millis(500),
            "without the gate: {worst:?}"
        );
    }

    /// A path that stops while its controller still gives it 1 MB/s (no loss detected yet):
    /// quinn's queue takes no more than that rate sends in 60 ms, the rest is dropped, and when
    /// the path is back, media goes at once again.
    #[test]
    fn a_stalled_path_takes_at_most_the_limit_and_resumes_at_once() {
        const RATE: f64 = 1e6;
        let mut gate = StaleGate::default();
        let (mut handed, mut dropped) = (0, 0);
        // Ten 200-byte datagrams, flushed with quinn's free space `space`.
        let mut flush = |space: usize| {
            let mut batch = vec![(Bytes::from_static(&[0u8; 200]), true); 10];
            let (h, d) = (handed, dropped);
            gate.flush(
                space,
                &mut batch,
                || RATE,
                |_, _| handed += 1,
                |_| dropped += 1,
            );
            assert!(batch.is_empty(), "the gate takes the whole batch");
            (handed - h, dropped - d)
        };
        let one = 200 + QUINN_PER_DATAGRAM;
        assert_eq!(flush(SIZE), (10, 0), "an empty queue takes everything");
        // From now on the path sends nothing: quinn's queue only grows by what it is handed.
        let mut queued = 10 * one;
        let mut total = (10, 0);
        for _ in 0..200 {
            let (h, d) = flush(SIZE - queued);
            queued += h * one;
            total = (total.0 + h, total.1 + d);
        }
        assert!(
            queued as f64 <= RATE * MAX_QUEUE_DELAY.as_secs_f64(),
            "{queued} bytes queued in quinn"
        );
        assert!(queued as f64 > RATE * MAX_QUEUE_DELAY.as_secs_f64() - one as f64);
        assert_eq!(total.0 + total.1, 2010);
        // The path is back and has sent what quinn held.
        assert_eq!(flush(SIZE), (10, 0));
    }
}
