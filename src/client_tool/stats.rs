//! Receive statistics of one RTP stream: loss from sequence numbers and interarrival jitter
//! (RFC 3550 §6.4.1 and appendix A.1/A.8).

/// Counters for the packets of one SSRC (a new SSRC restarts them).
#[derive(Debug, Default, Clone)]
pub struct RecvStats {
    pub received: u64,
    ssrc: Option<u32>,
    base_seq: u32,
    /// Highest extended sequence number seen.
    max_ext: u32,
    /// Relative transit time of the previous packet, in timestamp units.
    last_transit: Option<i64>,
    /// Jitter estimate in timestamp units, scaled by 16 as in RFC 3550 A.8.
    jitter_x16: i64,
    clock_rate: u32,
}

impl RecvStats {
    pub fn new(clock_rate: u32) -> RecvStats {
        RecvStats {
            clock_rate,
            ..RecvStats::default()
        }
    }

    /// Accounts one RTP packet: `arrival_ms` on a monotonic clock.
    pub fn on_packet(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival_ms: f64) {
        if self.ssrc != Some(ssrc) {
            *self = RecvStats::new(self.clock_rate);
            self.ssrc = Some(ssrc);
            self.base_seq = u32::from(seq);
            self.max_ext = u32::from(seq);
        } else {
            // Extend the 16-bit sequence number to the one nearest the highest seen.
            let cycles = self.max_ext & !0xffff;
            let mut ext = cycles | u32::from(seq);
            let diff = ext as i64 - self.max_ext as i64;
            if diff < -0x8000 {
                ext = ext.wrapping_add(0x10000);
            } else if diff > 0x8000 && ext >= 0x10000 {
                ext -= 0x10000;
            }
            if ext > self.max_ext {
                self.max_ext = ext;
            }
        }
        self.received += 1;
        let arrival_units = (arrival_ms * f64::from(self.clock_rate) / 1000.0) as i64;
        let transit = arrival_units - i64::from(timestamp);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // J += (|D| - J) / 16, kept scaled by 16 (A.8).
            self.jitter_x16 += d - ((self.jitter_x16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Packets expected from the sequence numbers seen (first to highest).
    pub fn expected(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        u64::from(self.max_ext - self.base_seq) + 1
    }

    /// Packets lost: expected minus received, never negative (duplicates can exceed it).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        if self.clock_rate == 0 {
            return 0.0;
        }
        (self.jitter_x16 as f64 / 16.0) * 1000.0 / f64::from(self.clock_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_from_gaps_and_wraps() {
        let mut s = RecvStats::new(8000);
        let mut t = 0.0;
        for seq in (65530u32..65550).filter(|q| q % 7 != 0) {
            s.on_packet(1, seq as u16, seq * 160, t);
            t += 20.0;
        }
        assert_eq!(s.expected(), 20);
        assert_eq!(s.lost(), 3); // 65534, 65541, 65548
        assert_eq!(s.received, 17);
    }

    #[test]
    fn steady_stream_has_no_jitter_and_variable_delay_has_some() {
        let mut s = RecvStats::new(8000);
        for i in 0..100u32 {
            s.on_packet(7, i as u16, i * 160, 1000.0 + f64::from(i) * 20.0);
        }
        assert_eq!(s.jitter_ms(), 0.0);
        assert_eq!(s.lost(), 0);
        let mut s = RecvStats::new(8000);
        for i in 0..400u32 {
            // Alternating 0 and 4 ms extra delay: |D| = 4 ms each time, J converges to 4 ms.
            let extra = if i % 2 == 0 { 0.0 } else { 4.0 };
            s.on_packet(7, i as u16, i * 160, f64::from(i) * 20.0 + extra);
        }
        assert!((s.jitter_ms() - 4.0).abs() < 0.2, "{}", s.jitter_ms());
    }

    #[test]
    fn a_new_ssrc_restarts() {
        let mut s = RecvStats::new(8000);
        s.on_packet(1, 10, 0, 0.0);
        s.on_packet(1, 20, 1600, 200.0);
        assert_eq!(s.lost(), 9);
        s.on_packet(2, 500, 0, 220.0);
        assert_eq!((s.expected(), s.lost()), (1, 0));
    }
}
