//! RTCP termination for one legacy leg (RFC 3550), sans-IO.
//!
//! riptide is a back-to-back RTP translator in the sense of RFC 7667 §3.2.2 (Topo-Back-To-Back):
//! RTP is relayed verbatim, but RTCP is *terminated* on each leg. Reports the legacy peer sends
//! are consumed here and never forwarded; the reports the peer receives are generated here, from
//! what this leg actually saw. That keeps the peer's loss/jitter/RTT figures honest about the hop
//! it shares with us, instead of mixing in a QUIC path it knows nothing about.
//!
//! [`LegRtcp`] owns no socket and reads no clock: every input carries the monotonic time
//! (`Instant`, for intervals, jitter and DLSR) and, where an NTP timestamp is needed, the wall
//! clock (`SystemTime`). The driver calls
//! - [`LegRtcp::on_rtp_received`] for every RTP packet from the peer (after SRTP),
//! - [`LegRtcp::on_rtp_sent`] for every RTP packet toward the peer (before SRTP),
//! - [`LegRtcp::on_rtcp_received`] for every compound RTCP packet from the peer (after SRTCP),
//! - [`LegRtcp::poll_report`] when [`LegRtcp::poll_timeout`] passes, sending what it returns,
//! - [`LegRtcp::bye`] at teardown.
//!
//! The two per-packet RTP entry points are on the relay's hot path: they read a few header fields
//! and update counters, and never allocate. Parsing received RTCP is also allocation-free (it
//! walks the compound packet in place); building reports, once every few seconds, uses rtc-rtcp.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rtc_rtcp::goodbye::Goodbye;
use rtc_rtcp::packet::{marshal, Packet};
use rtc_rtcp::receiver_report::ReceiverReport;
use rtc_rtcp::reception_report::ReceptionReport;
use rtc_rtcp::sender_report::SenderReport;
use rtc_rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};

use super::rtp::RTP_HEADER_LEN;

/// RFC 3550 §6.2: the minimum interval between reports (Tmin).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// RFC 3550 A.1 constants.
const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const MIN_SEQUENTIAL: u8 = 2;

/// SDES item text is length-prefixed by one octet (RFC 3550 §6.5).
const SDES_MAX_TEXT: usize = 255;

/// RTCP packet types handled here (RFC 3550 §12.1).
const PT_SR: u8 = 200;
const PT_RR: u8 = 201;

/// Octets of a report block (RFC 3550 §6.4.1).
const REPORT_BLOCK_LEN: usize = 24;
/// Octets before the first report block: common header + sender SSRC (+ 20 of sender info in SR).
const RR_BLOCKS_OFFSET: usize = 8;
const SR_BLOCKS_OFFSET: usize = 28;

/// Why a received compound RTCP packet was rejected. The whole compound packet is discarded
/// (RFC 3550 A.2): nothing from it is applied, so a truncated tail cannot half-update state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("empty RTCP datagram")]
    Empty,
    #[error("RTCP packet at offset {offset} is truncated: {available} octets left, the common header needs 4")]
    TruncatedHeader { offset: usize, available: usize },
    #[error("RTCP packet at offset {offset} has version {version}, expected 2")]
    BadVersion { offset: usize, version: u8 },
    #[error("RTCP packet at offset {offset} declares {declared} octets but only {available} remain in the datagram")]
    LengthBeyondBuffer {
        offset: usize,
        declared: usize,
        available: usize,
    },
    #[error("RTCP packet type {packet_type} at offset {offset} claims {count} report blocks, needing {needed} octets, but carries {available}")]
    ReportBlocksBeyondPacket {
        offset: usize,
        packet_type: u8,
        count: u8,
        needed: usize,
        available: usize,
    },
    #[error("RTCP packet at offset {offset} has the padding bit set but is not the last packet of the compound packet")]
    PaddingNotLast { offset: usize },
    #[error("RTCP packet at offset {offset} has padding count {count}, invalid for its {len}-octet length")]
    BadPadding {
        offset: usize,
        count: u8,
        len: usize,
    },
}

/// Reception and transmission statistics of one leg, for metrics and call records.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LegStats {
    /// RTP packets received from the peer (every packet with a valid RTP header, duplicates and
    /// packets discarded by sequence validation included).
    pub packets_received: u64,
    /// Cumulative packets lost (RFC 3550 A.3: expected - received; negative with duplicates),
    /// summed over every SSRC the peer has used on this leg.
    pub packets_lost: i64,
    /// Fraction lost (0..=1) over the last reporting interval; before our first report that
    /// carried a report block, over the interval in progress.
    pub fraction_lost: f32,
    /// Interarrival jitter of the peer's stream (RFC 3550 A.8), in milliseconds.
    pub jitter_ms: f64,
    /// Round-trip time from the peer's last report block about us (RFC 3550 §6.4.1).
    pub rtt_ms: Option<f64>,
    /// RTP packets we sent toward the peer.
    pub packets_sent: u64,
    /// The peer's view of our stream, from its last report block about the SSRC we send.
    pub remote_fraction_lost: Option<f32>,
    pub remote_jitter_ms: Option<f64>,
    pub remote_packets_lost: Option<i64>,
}

/// RTCP state of one leg: reception statistics of the peer's stream, transmission counts of
/// ours, and the report timer.
///
/// `repr(C)`, fields in this order: what every RTP packet touches comes first, in as few cache
/// lines as possible ([`LegRtcp::HOT_BYTES`]; the relay prefetches them, ADR 0017).
#[derive(Debug)]
#[repr(C)]
pub struct LegRtcp {
    /// The peer's current media source; replaced when the peer changes SSRC.
    source: Option<Source>,
    /// Cumulative loss of the peer's earlier SSRCs on this leg.
    prior_sources_lost: i64,
    packets_received: u64,
    /// Origin of the arrival clock used for jitter (any fixed instant works, A.8 only uses
    /// differences).
    epoch: Instant,
    clock_rate: u32,

    sender: Option<SendState>,
    /// RFC 3550 §6.4: we send an SR if we sent RTP in the current or the previous interval.
    sent_this_interval: bool,
    packets_sent: u64,

    // Not touched per packet from here on.
    our_ssrc: u32,
    cname: Bytes,
    rng: SmallRng,
    next_report_at: Instant,
    /// Fraction lost of the last report interval, set when a report block is generated.
    last_fraction_lost: Option<f32>,
    /// The peer's last SR, for the LSR/DLSR of our report block about it.
    last_sr: Option<LastSr>,
    sent_prev_interval: bool,

    rtt_ms: Option<f64>,
    remote: Option<RemoteView>,
}

/// Sequence and jitter state of one received SSRC: the `source` structure of RFC 3550 A.1.
#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    max_seq: u16,
    /// Sequence number wraps, shifted left by 16 (so `cycles + max_seq` is the extended number).
    cycles: u32,
    base_seq: u32,
    /// The sequence number that confirms a restart after a large jump; `RTP_SEQ_MOD + 1` = none.
    bad_seq: u32,
    probation: u8,
    received: u32,
    expected_prior: i64,
    received_prior: i64,
    /// Relative transit time of the last valid packet, in timestamp units (A.8).
    last_transit: Option<u32>,
    /// Interarrival jitter in timestamp units, unscaled (A.8 keeps it ×16 in integers).
    jitter: f64,
    /// Whether a packet arrived since our last report (RFC 3550 §6.4: report blocks are for
    /// sources heard since the last report).
    heard: bool,
}

#[derive(Debug, Clone, Copy)]
struct LastSr {
    ssrc: u32,
    /// The middle 32 bits of the SR's NTP timestamp: our LSR.
    ntp_mid: u32,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct SendState {
    ssrc: u32,
    /// SR packet and octet counts wrap at 2^32 (RFC 3550 §6.4.1).
    packets: u32,
    octets: u32,
    last_ts: u32,
    last_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct RemoteView {
    fraction_lost: f32,
    packets_lost: i64,
    jitter_ms: f64,
}

impl LegRtcp {
    /// Bytes from the start that the per-packet paths touch.
    pub const HOT_BYTES: usize = std::mem::offset_of!(LegRtcp, our_ssrc);

    /// `our_ssrc`: SSRC used for our reports when we have not sent RTP; `cname`: SDES CNAME
    /// (truncated to 255 octets at a character boundary); `clock_rate` of the negotiated codec
    /// (8000 for G.711; 0 is treated as 8000 rather than dividing by zero).
    pub fn new(our_ssrc: u32, cname: String, clock_rate: u32, now: Instant) -> LegRtcp {
        let clock_rate = if clock_rate == 0 {
            tracing::warn!("RTCP: clock rate 0, assuming 8000 Hz");
            8000
        } else {
            clock_rate
        };
        let mut rtcp = LegRtcp {
            our_ssrc,
            cname: Bytes::from(truncate_utf8(cname, SDES_MAX_TEXT)),
            clock_rate,
            epoch: now,
            rng: SmallRng::from_rng(&mut rand::rng()),
            next_report_at: now,
            source: None,
            prior_sources_lost: 0,
            packets_received: 0,
            last_fraction_lost: None,
            last_sr: None,
            sender: None,
            sent_this_interval: false,
            sent_prev_interval: false,
            packets_sent: 0,
            rtt_ms: None,
            remote: None,
        };
        // RFC 3550 §6.2: "the delay before sending the initial compound RTCP packet MAY be set
        // to half the minimum interval".
        rtcp.next_report_at = now + rtcp.randomised_interval(MIN_REPORT_INTERVAL / 2);
        rtcp
    }

    /// Every RTP packet received from the legacy peer (already decrypted): updates RFC 3550 A.1
    /// sequence tracking (probation, wrap, restart on a big jump), the A.3 loss counters and the
    /// A.8 interarrival jitter (arrival time in timestamp units derived from `now`).
    ///
    /// A packet without a valid RTP header is ignored. A new SSRC replaces the tracked source
    /// (a two-party leg has one remote media source; PBXs change SSRC on transfer or hold
    /// music), and its loss so far is kept in the leg totals.
    pub fn on_rtp_received(&mut self, now: Instant, pkt: &[u8]) {
        let Some(h) = RtpHeader::parse(pkt) else {
            return;
        };
        self.packets_received += 1;
        let arrival = self.arrival_ts(now);
        let source = match &mut self.source {
            Some(s) if s.ssrc == h.ssrc => s,
            slot => {
                if let Some(old) = slot.as_ref() {
                    self.prior_sources_lost += old.cumulative_lost();
                }
                slot.insert(Source::new(h.ssrc, h.seq))
            }
        };
        if !source.update_seq(h.seq) {
            return;
        }
        source.heard = true;
        source.update_jitter(arrival, h.timestamp);
    }

    /// Every RTP packet we send toward the legacy peer (plaintext, before SRTP): packet and
    /// payload-octet counts and the last RTP timestamp for our SR. We report as the SSRC the
    /// relayed stream carries; if it changes, the SR counts restart (RFC 3550 §6.4.1).
    pub fn on_rtp_sent(&mut self, now: Instant, pkt: &[u8]) {
        let Some(h) = RtpHeader::parse(pkt) else {
            return;
        };
        self.packets_sent += 1;
        self.sent_this_interval = true;
        let octets = rtp_payload_range(pkt).map_or(0, |r| r.len()) as u32;
        match &mut self.sender {
            Some(s) if s.ssrc == h.ssrc => {
                s.packets = s.packets.wrapping_add(1);
                s.octets = s.octets.wrapping_add(octets);
                s.last_ts = h.timestamp;
                s.last_at = now;
            }
            slot => {
                *slot = Some(SendState {
                    ssrc: h.ssrc,
                    packets: 1,
                    octets,
                    last_ts: h.timestamp,
                    last_at: now,
                });
            }
        }
    }

    /// A compound RTCP packet from the legacy peer (plaintext). From an SR, remembers the NTP
    /// middle 32 bits and arrival time (our LSR/DLSR); from a report block about the SSRC we
    /// send, computes the RTT (`now_ntp - LSR - DLSR`, RFC 3550 §6.4.1) and keeps the peer's
    /// fraction lost, cumulative lost and jitter. Other packet types (SDES, BYE, APP, feedback,
    /// XR) are accepted and ignored. A packet that fails validation is rejected whole.
    ///
    /// The first packet is not required to be SR/RR (RFC 3550 A.2 would): equipment sending a
    /// bare BYE or reduced-size RTCP (RFC 5506) is tolerated rather than flagged.
    pub fn on_rtcp_received(
        &mut self,
        now: Instant,
        wall: SystemTime,
        pkt: &[u8],
    ) -> Result<(), RtcpError> {
        // Validate everything before applying anything.
        walk_compound(pkt, |_| {})?;
        let now_ntp_mid = ntp_mid(ntp_time(wall));
        let mut sr = None;
        let mut blocks_about_us = None;
        let reported = self.report_ssrc();
        walk_compound(pkt, |p| {
            if p.packet_type == PT_SR {
                sr = Some(LastSr {
                    ssrc: be32(p.body, 4),
                    ntp_mid: ntp_mid(be64(p.body, 8)),
                    at: now,
                });
            }
            for block in p.report_blocks() {
                if block.ssrc == reported {
                    blocks_about_us = Some(block);
                }
            }
        })?;
        if sr.is_some() {
            self.last_sr = sr;
        }
        if let Some(b) = blocks_about_us {
            self.remote = Some(RemoteView {
                fraction_lost: f32::from(b.fraction_lost) / 256.0,
                packets_lost: i64::from(b.cumulative_lost),
                jitter_ms: f64::from(b.jitter) * 1000.0 / f64::from(self.clock_rate),
            });
            if let Some(rtt) = rtt_from_block(now_ntp_mid, b.lsr, b.dlsr) {
                self.rtt_ms = Some(rtt);
            }
        }
        Ok(())
    }

    /// When the next report is due: RFC 3550 §6.2/§6.3 for a two-party voice session, where the
    /// bandwidth-derived interval is always below the 5 s minimum, so the interval is the
    /// minimum randomised over [0.5, 1.5] (the first one half of that). The e−3/2 compensation of
    /// §6.3.1 is not applied: it corrects timer reconsideration, which a fixed two-member
    /// session never triggers.
    pub fn poll_timeout(&self) -> Instant {
        self.next_report_at
    }

    /// If a report is due at `now`: a compound packet of an SR (if we sent RTP in this or the
    /// previous interval, RFC 3550 §6.4) or an RR, with one report block about the peer's SSRC
    /// when we heard from it since the last report, then SDES CNAME. Plaintext; the caller
    /// applies SRTCP. Schedules the next report.
    pub fn poll_report(&mut self, now: Instant, wall: SystemTime) -> Option<Vec<u8>> {
        if now < self.next_report_at {
            return None;
        }
        self.next_report_at = now + self.randomised_interval(MIN_REPORT_INTERVAL);
        let packets = self.report_packets(now, wall, false);
        marshal_compound(&packets)
    }

    /// A compound BYE (report + SDES + BYE, RFC 3550 §6.6) for call teardown, sent at once as
    /// §6.3.7 allows for sessions under 50 members. The report is an SR when we were sending,
    /// so the peer gets our final counts, and an RR otherwise.
    pub fn bye(&mut self, now: Instant, wall: SystemTime) -> Vec<u8> {
        let packets = self.report_packets(now, wall, true);
        marshal_compound(&packets).unwrap_or_else(|| bare_bye(self.report_ssrc()))
    }

    pub fn stats(&self) -> LegStats {
        let (current_lost, jitter_ms, in_progress_fraction) = match &self.source {
            Some(s) if s.is_valid() => (
                s.cumulative_lost(),
                s.jitter * 1000.0 / f64::from(self.clock_rate),
                s.interval_loss().1,
            ),
            _ => (0, 0.0, 0.0),
        };
        LegStats {
            packets_received: self.packets_received,
            packets_lost: self.prior_sources_lost + current_lost,
            fraction_lost: self.last_fraction_lost.unwrap_or(in_progress_fraction),
            jitter_ms,
            rtt_ms: self.rtt_ms,
            packets_sent: self.packets_sent,
            remote_fraction_lost: self.remote.map(|r| r.fraction_lost),
            remote_jitter_ms: self.remote.map(|r| r.jitter_ms),
            remote_packets_lost: self.remote.map(|r| r.packets_lost),
        }
    }

    /// The SSRC our RTCP speaks as: the relayed stream's once we have sent, else `our_ssrc`.
    fn report_ssrc(&self) -> u32 {
        self.sender.map_or(self.our_ssrc, |s| s.ssrc)
    }

    fn randomised_interval(&mut self, base: Duration) -> Duration {
        base.mul_f64(self.rng.random_range(0.5..1.5))
    }

    /// `now` on the arrival clock, in RTP timestamp units (wrapping, like RTP timestamps).
    fn arrival_ts(&self, now: Instant) -> u32 {
        let e = now.saturating_duration_since(self.epoch);
        let rate = u64::from(self.clock_rate);
        let units =
            e.as_secs().wrapping_mul(rate) + u64::from(e.subsec_nanos()) * rate / 1_000_000_000;
        units as u32
    }

    /// The packets of one report: SR or RR, SDES CNAME, and BYE when `bye`. Advances the A.3
    /// interval bookkeeping and the SR/RR decision.
    fn report_packets(
        &mut self,
        now: Instant,
        wall: SystemTime,
        bye: bool,
    ) -> Vec<Box<dyn Packet>> {
        let ssrc = self.report_ssrc();
        let block = self.report_block(now);
        let reports: Vec<ReceptionReport> = block.into_iter().collect();
        let we_sent = self.sent_this_interval || self.sent_prev_interval;
        self.sent_prev_interval = self.sent_this_interval;
        self.sent_this_interval = false;

        let mut packets: Vec<Box<dyn Packet>> = Vec::with_capacity(3);
        match self.sender {
            Some(s) if we_sent => {
                // The RTP timestamp that corresponds to the NTP time of the report (§6.4.1):
                // extrapolate from the last packet sent.
                let since = now.saturating_duration_since(s.last_at);
                let advance = since.as_secs_f64() * f64::from(self.clock_rate);
                packets.push(Box::new(SenderReport {
                    ssrc,
                    ntp_time: ntp_time(wall),
                    rtp_time: s.last_ts.wrapping_add(advance as u64 as u32),
                    packet_count: s.packets,
                    octet_count: s.octets,
                    reports,
                    profile_extensions: Bytes::new(),
                }));
            }
            _ => packets.push(Box::new(ReceiverReport {
                ssrc,
                reports,
                profile_extensions: Bytes::new(),
            })),
        }
        packets.push(Box::new(SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: ssrc,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: self.cname.clone(),
                }],
            }],
        }));
        if bye {
            packets.push(Box::new(Goodbye {
                sources: vec![ssrc],
                reason: Bytes::new(),
            }));
        }
        packets
    }

    /// The report block about the peer's source, if it is validated and was heard since the
    /// last report. Closes the A.3 reporting interval. LSR/DLSR refer to the peer's last SR
    /// only if that SR came from the same SSRC as the media (RFC 3550 §6.4.1: "from source
    /// SSRC_n"); otherwise they are zero and the peer computes no RTT.
    fn report_block(&mut self, now: Instant) -> Option<ReceptionReport> {
        let s = self.source.as_mut().filter(|s| s.is_valid() && s.heard)?;
        s.heard = false;
        let (fraction, fraction_f) = s.interval_loss();
        s.expected_prior = s.expected();
        s.received_prior = i64::from(s.received);
        self.last_fraction_lost = Some(fraction_f);

        let (lsr, dlsr) = match self.last_sr {
            Some(sr) if sr.ssrc == s.ssrc => {
                let d = now.saturating_duration_since(sr.at);
                (sr.ntp_mid, duration_to_q16(d))
            }
            _ => (0, 0),
        };
        Some(ReceptionReport {
            ssrc: s.ssrc,
            fraction_lost: fraction,
            total_lost: lost_to_24_bits(s.cumulative_lost()),
            last_sequence_number: s.extended_max(),
            jitter: s.jitter as u32,
            last_sender_report: lsr,
            delay: dlsr,
        })
    }
}

impl Source {
    /// A.1: a new source starts on probation, needing `MIN_SEQUENTIAL` in-order packets.
    fn new(ssrc: u32, seq: u16) -> Source {
        let mut s = Source {
            ssrc,
            max_seq: seq,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            last_transit: None,
            jitter: 0.0,
            heard: false,
        };
        s.init_seq(seq);
        s.max_seq = seq.wrapping_sub(1);
        s.probation = MIN_SEQUENTIAL;
        s
    }

    fn init_seq(&mut self, seq: u16) {
        // A restarted sender usually restarts its timestamps too: one transit difference across
        // the restart would be a jump, not jitter. (On leaving probation this is a no-op.)
        self.last_transit = None;
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// A.1 `update_seq`: whether the packet counts (false while on probation and for an
    /// unconfirmed large jump).
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return true;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return false;
        } else if udelta < MAX_DROPOUT {
            // In order, with a permissible gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: believe it only when the next packet follows it (the sender
            // restarted), otherwise drop it.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return false;
            }
        } else {
            // Duplicate or reordered: counted as received (A.3), so loss can go negative.
        }
        self.received = self.received.wrapping_add(1);
        true
    }

    fn is_valid(&self) -> bool {
        self.probation == 0
    }

    fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    fn expected(&self) -> i64 {
        i64::from(self.extended_max()) - i64::from(self.base_seq) + 1
    }

    fn cumulative_lost(&self) -> i64 {
        self.expected() - i64::from(self.received)
    }

    /// A.3 fraction lost over the interval since the last report: as the 8-bit fixed-point
    /// report field and as a float. Zero when nothing was expected or duplicates outnumber
    /// losses.
    fn interval_loss(&self) -> (u8, f32) {
        let expected_interval = self.expected() - self.expected_prior;
        let received_interval = i64::from(self.received) - self.received_prior;
        let lost_interval = expected_interval - received_interval;
        if expected_interval <= 0 || lost_interval <= 0 {
            return (0, 0.0);
        }
        let fixed = ((lost_interval << 8) / expected_interval).min(255) as u8;
        (fixed, lost_interval as f32 / expected_interval as f32)
    }

    /// A.8: J += (|D(i-1,i)| - J) / 16, with D the change in relative transit time.
    fn update_jitter(&mut self, arrival: u32, rtp_ts: u32) {
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = f64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }
}

/// The fields of an RTP fixed header this module needs.
#[derive(Debug, Clone, Copy)]
struct RtpHeader {
    seq: u16,
    timestamp: u32,
    ssrc: u32,
}

impl RtpHeader {
    fn parse(pkt: &[u8]) -> Option<RtpHeader> {
        let h = pkt.get(..RTP_HEADER_LEN)?;
        if h[0] >> 6 != 2 {
            return None;
        }
        Some(RtpHeader {
            seq: u16::from_be_bytes([h[2], h[3]]),
            timestamp: be32(h, 4),
            ssrc: be32(h, 8),
        })
    }
}

/// Where the payload of an RTP packet lies: after the CSRC list and header extension, before
/// any padding. `None` when the header or its declared extension/padding do not fit.
pub(crate) fn rtp_payload_range(pkt: &[u8]) -> Option<std::ops::Range<usize>> {
    let first = *pkt.first()?;
    if pkt.len() < RTP_HEADER_LEN || first >> 6 != 2 {
        return None;
    }
    let mut start = RTP_HEADER_LEN + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = pkt.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = pkt.len();
    if first & 0x20 != 0 {
        let pad = usize::from(*pkt.last()?);
        end = end.checked_sub(pad)?;
    }
    (start <= end).then_some(start..end)
}

/// One packet of a validated compound RTCP packet.
struct SubPacket<'a> {
    packet_type: u8,
    count: u8,
    /// The packet from its common header up to (not including) any padding.
    body: &'a [u8],
}

/// One report block, cumulative loss sign-extended.
#[derive(Debug, Clone, Copy)]
struct Block {
    ssrc: u32,
    fraction_lost: u8,
    cumulative_lost: i32,
    jitter: u32,
    lsr: u32,
    dlsr: u32,
}

impl SubPacket<'_> {
    /// Report blocks of an SR or RR (none for other types). Bounds were checked by
    /// [`walk_compound`].
    fn report_blocks(&self) -> impl Iterator<Item = Block> + '_ {
        let start = match self.packet_type {
            PT_SR => SR_BLOCKS_OFFSET,
            PT_RR => RR_BLOCKS_OFFSET,
            _ => self.body.len(),
        };
        let blocks = self.body.get(start..).unwrap_or_default();
        blocks
            .chunks_exact(REPORT_BLOCK_LEN)
            .take(usize::from(self.count))
            .map(|b| Block {
                ssrc: be32(b, 0),
                fraction_lost: b[4],
                // Sign-extend the 24-bit field.
                cumulative_lost: (i32::from_be_bytes([b[5], b[6], b[7], 0])) >> 8,
                jitter: be32(b, 12),
                lsr: be32(b, 16),
                dlsr: be32(b, 20),
            })
    }
}

/// Walks a compound RTCP packet, checking RFC 3550 A.2 structure (version 2 everywhere,
/// lengths that tile the datagram exactly, padding only on the last packet) and that SR/RR
/// report blocks fit, calling `visit` for each packet once it is checked.
fn walk_compound<'a>(buf: &'a [u8], mut visit: impl FnMut(SubPacket<'a>)) -> Result<(), RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::Empty);
    }
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let Some(h) = rest.get(..4) else {
            return Err(RtcpError::TruncatedHeader {
                offset,
                available: rest.len(),
            });
        };
        let version = h[0] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { offset, version });
        }
        let padded = h[0] & 0x20 != 0;
        let count = h[0] & 0x1f;
        let packet_type = h[1];
        let len = (usize::from(u16::from_be_bytes([h[2], h[3]])) + 1) * 4;
        let Some(pkt) = rest.get(..len) else {
            return Err(RtcpError::LengthBeyondBuffer {
                offset,
                declared: len,
                available: rest.len(),
            });
        };
        let mut body = pkt;
        if padded {
            if offset + len != buf.len() {
                return Err(RtcpError::PaddingNotLast { offset });
            }
            let pad = pkt[len - 1];
            if pad == 0 || usize::from(pad) > len - 4 {
                return Err(RtcpError::BadPadding {
                    offset,
                    count: pad,
                    len,
                });
            }
            body = &pkt[..len - usize::from(pad)];
        }
        let blocks_at = match packet_type {
            PT_SR => Some(SR_BLOCKS_OFFSET),
            PT_RR => Some(RR_BLOCKS_OFFSET),
            _ => None,
        };
        if let Some(at) = blocks_at {
            let needed = at + usize::from(count) * REPORT_BLOCK_LEN;
            if needed > body.len() {
                return Err(RtcpError::ReportBlocksBeyondPacket {
                    offset,
                    packet_type,
                    count,
                    needed,
                    available: body.len(),
                });
            }
        }
        visit(SubPacket {
            packet_type,
            count,
            body,
        });
        offset += len;
    }
    Ok(())
}

/// RFC 3550 §6.4.1: RTT = A - LSR - DLSR in 1/65536 s, where A is the arrival time of the
/// report. `None` when the peer has no SR of ours to refer to (LSR 0) or the result would be
/// negative (clock steps, or a bogus report).
fn rtt_from_block(now_ntp_mid: u32, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let since_sr = now_ntp_mid.wrapping_sub(lsr);
    // More than half the 16.16 range "since" our SR means the SR is in the future.
    if since_sr >= 1 << 31 || since_sr < dlsr {
        return None;
    }
    Some(f64::from(since_sr - dlsr) * 1000.0 / 65536.0)
}

/// 64-bit NTP timestamp (RFC 3550 §4) of a wall-clock time; times before 1970 map to the Unix
/// epoch.
fn ntp_time(wall: SystemTime) -> u64 {
    let d = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp (the LSR format).
fn ntp_mid(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in units of 1/65536 s (the DLSR format), saturating.
fn duration_to_q16(d: Duration) -> u32 {
    let units =
        d.as_secs().saturating_mul(65536) + (u64::from(d.subsec_nanos()) << 16) / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// Cumulative loss as the 24-bit two's-complement report field, clamped (RFC 3550 §6.4.1).
fn lost_to_24_bits(lost: i64) -> u32 {
    let clamped = lost.clamp(-0x80_0000, 0x7f_ffff) as i32;
    (clamped as u32) & 0x00ff_ffff
}

fn marshal_compound(packets: &[Box<dyn Packet>]) -> Option<Vec<u8>> {
    match marshal(packets) {
        Ok(b) => Some(b.to_vec()),
        Err(e) => {
            // Unreachable by construction (one report block, CNAME ≤ 255 octets, one BYE
            // source), but a report is not worth a panic.
            tracing::error!(error = %e, "RTCP: cannot marshal report");
            None
        }
    }
}

/// A lone BYE for `ssrc`: the fallback if the compound BYE cannot be built.
fn bare_bye(ssrc: u32) -> Vec<u8> {
    let mut b = vec![0x81, 203, 0, 1];
    b.extend_from_slice(&ssrc.to_be_bytes());
    b
}

fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Big-endian u32 at `at`; callers have checked the bounds.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtc_rtcp::packet::unmarshal;

    const PEER: u32 = 0x1111_1111;
    const RELAYED: u32 = 0x2222_2222;
    const OURS: u32 = 0x3333_3333;
    const PTIME: Duration = Duration::from_millis(20);

    fn wall0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn leg(t0: Instant) -> LegRtcp {
        LegRtcp::new(OURS, "riptide@test".into(), 8000, t0)
    }

    /// A 20 ms PCMU packet.
    fn rtp(seq: u16, ts: u32, ssrc: u32) -> [u8; 172] {
        let mut p = [0u8; 172];
        p[0] = 0x80;
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p
    }

    /// Feeds packets of the peer's stream with these sequence numbers, one every 20 ms of
    /// arrival time from `t0`, timestamps following the sequence numbers.
    fn receive(l: &mut LegRtcp, t0: Instant, seqs: impl IntoIterator<Item = u16>) {
        for (i, seq) in seqs.into_iter().enumerate() {
            let ts = u32::from(seq).wrapping_mul(160);
            l.on_rtp_received(t0 + PTIME * i as u32, &rtp(seq, ts, PEER));
        }
    }

    fn send(l: &mut LegRtcp, t0: Instant, n: u16) {
        for i in 0..n {
            l.on_rtp_sent(
                t0 + PTIME * u32::from(i),
                &rtp(i, u32::from(i) * 160, RELAYED),
            );
        }
    }

    fn wall_at(t0: Instant, t: Instant) -> SystemTime {
        wall0() + (t - t0)
    }

    /// Polls the first report (at its due time) and parses it with rtc-rtcp.
    fn first_report(l: &mut LegRtcp, t0: Instant) -> (Instant, Vec<Box<dyn Packet>>) {
        let due = l.poll_timeout();
        let raw = l.poll_report(due, wall_at(t0, due)).expect("report due");
        let packets = unmarshal(&mut Bytes::from(raw)).expect("parses with rtc-rtcp");
        (due, packets)
    }

    fn as_rr(p: &dyn Packet) -> &ReceiverReport {
        p.as_any().downcast_ref().expect("an RR")
    }

    fn as_sr(p: &dyn Packet) -> &SenderReport {
        p.as_any().downcast_ref().expect("an SR")
    }

    fn sign_extend_24(v: u32) -> i32 {
        ((v << 8) as i32) >> 8
    }

    #[test]
    fn no_loss_counts_nothing_lost() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, 0..100);
        let s = l.stats();
        assert_eq!(s.packets_received, 100);
        assert_eq!(s.packets_lost, 0);
        assert_eq!(s.fraction_lost, 0.0);
    }

    #[test]
    fn five_of_a_hundred_lost() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let dropped = [10u16, 30, 50, 70, 90];
        receive(&mut l, t0, (0..100).filter(|s| !dropped.contains(s)));
        let s = l.stats();
        assert_eq!(s.packets_received, 95);
        assert_eq!(s.packets_lost, 5);
        // Probation (A.1) consumes packet 0, so 99 are expected (1..=99).
        assert!(
            (s.fraction_lost - 5.0 / 99.0).abs() < 1e-6,
            "{}",
            s.fraction_lost
        );

        let (_, packets) = first_report(&mut l, t0);
        let rr = as_rr(&*packets[0]);
        assert_eq!(rr.ssrc, OURS);
        assert_eq!(rr.reports.len(), 1);
        let b = &rr.reports[0];
        assert_eq!(b.ssrc, PEER);
        assert_eq!(b.total_lost, 5);
        assert_eq!(b.fraction_lost, (5 * 256 / 99) as u8);
        assert_eq!(b.last_sequence_number, 99);
        assert!((l.stats().fraction_lost - 5.0 / 99.0).abs() < 1e-6);
    }

    #[test]
    fn reordered_packets_are_not_lost() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let mut seqs: Vec<u16> = (0..100).collect();
        for pair in seqs[10..90].chunks_mut(2) {
            pair.swap(0, 1);
        }
        receive(&mut l, t0, seqs);
        assert_eq!(l.stats().packets_lost, 0);
        let (_, packets) = first_report(&mut l, t0);
        let b = &as_rr(&*packets[0]).reports[0];
        assert_eq!(
            (b.total_lost, b.fraction_lost, b.last_sequence_number),
            (0, 0, 99)
        );
    }

    #[test]
    fn late_packet_after_a_report_is_not_lost() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, (0..50).filter(|&s| s != 20));
        let (due, packets) = first_report(&mut l, t0);
        assert_eq!(as_rr(&*packets[0]).reports[0].total_lost, 1);
        // Packet 20 turns up after the report: counted as received, cumulative loss falls
        // back to zero; this interval saw more received than expected, so fraction is 0.
        l.on_rtp_received(due, &rtp(20, 20 * 160, PEER));
        receive(&mut l, due, 50..60);
        assert_eq!(l.stats().packets_lost, 0);
        let due2 = l.poll_timeout();
        let raw = l
            .poll_report(due2, wall_at(t0, due2))
            .expect("second report");
        let packets = unmarshal(&mut Bytes::from(raw)).expect("parses");
        let b = &as_rr(&*packets[0]).reports[0];
        assert_eq!((b.total_lost, b.fraction_lost), (0, 0));
    }

    #[test]
    fn duplicates_make_cumulative_loss_negative() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let mut seqs: Vec<u16> = (0..100).collect();
        seqs.extend([40, 41, 42]);
        receive(&mut l, t0, seqs);
        let s = l.stats();
        assert_eq!(s.packets_lost, -3, "A.3: duplicates count as received");
        assert_eq!(s.fraction_lost, 0.0);
        let (_, packets) = first_report(&mut l, t0);
        let b = &as_rr(&*packets[0]).reports[0];
        assert_eq!(sign_extend_24(b.total_lost), -3);
        assert_eq!(b.fraction_lost, 0);
    }

    #[test]
    fn sequence_wrap_extends_the_highest_sequence_number() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, (0..100u16).map(|i| 65500u16.wrapping_add(i)));
        assert_eq!(l.stats().packets_lost, 0);
        let (_, packets) = first_report(&mut l, t0);
        let b = &as_rr(&*packets[0]).reports[0];
        assert_eq!(b.last_sequence_number, (1 << 16) + 63);
        assert_eq!(b.total_lost, 0);
    }

    #[test]
    fn lone_big_jump_is_dropped_and_a_confirmed_one_restarts() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, 0..50);
        // One stray packet far ahead: not believed.
        l.on_rtp_received(t0 + Duration::from_secs(1), &rtp(20_000, 0, PEER));
        receive(&mut l, t0 + Duration::from_secs(2), 50..60);
        assert_eq!(l.stats().packets_lost, 0);
        // The sender restarts at 30000: the second packet confirms it, counts start afresh.
        receive(&mut l, t0 + Duration::from_secs(3), 30_000..30_100);
        assert_eq!(l.stats().packets_lost, 0);
        let (_, packets) = first_report(&mut l, t0);
        assert_eq!(as_rr(&*packets[0]).reports[0].last_sequence_number, 30_099);
    }

    #[test]
    fn restart_with_a_new_timestamp_base_is_not_jitter() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        for i in 0..150u16 {
            let (seq, ts) = if i < 50 {
                (i, u32::from(i) * 160)
            } else {
                (30_000 + i, 9_000_000 + u32::from(i) * 160)
            };
            l.on_rtp_received(t0 + PTIME * u32::from(i), &rtp(seq, ts, PEER));
        }
        let s = l.stats();
        assert_eq!(s.packets_lost, 0);
        assert!(s.jitter_ms < 1e-9, "{}", s.jitter_ms);
    }

    #[test]
    fn jitter_of_a_constant_delay_stream_is_zero() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let delay = Duration::from_millis(37);
        for i in 0..200u16 {
            let arrival = t0 + delay + PTIME * u32::from(i);
            l.on_rtp_received(arrival, &rtp(i, 1000 + u32::from(i) * 160, PEER));
        }
        assert!(l.stats().jitter_ms.abs() < 1e-9, "{}", l.stats().jitter_ms);
    }

    #[test]
    fn jitter_of_alternating_offsets_follows_the_rfc_formula() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let n = 100u16;
        for i in 0..n {
            // ±10 ms around a 50 ms delay.
            let nominal = t0 + Duration::from_millis(50) + PTIME * u32::from(i);
            let arrival = if i % 2 == 0 {
                nominal + Duration::from_millis(10)
            } else {
                nominal - Duration::from_millis(10)
            };
            l.on_rtp_received(arrival, &rtp(i, u32::from(i) * 160, PEER));
        }
        // A.8: each transit differs from the previous by 20 ms = 160 units, so
        // J(i) = J(i-1) + (160 - J(i-1)) / 16. Packet 0 is consumed by probation (A.1) and
        // packet 1 seeds the transit, leaving n - 2 updates.
        let mut expected = 0.0f64;
        for _ in 0..n - 2 {
            expected += (160.0 - expected) / 16.0;
        }
        let expected_ms = expected / 8.0;
        let got = l.stats().jitter_ms;
        assert!((got - expected_ms).abs() < 1e-9, "{got} vs {expected_ms}");
        assert!((got - 20.0).abs() < 0.05, "converges to 20 ms: {got}");
        let (_, packets) = first_report(&mut l, t0);
        assert_eq!(as_rr(&*packets[0]).reports[0].jitter, expected as u32);
    }

    #[test]
    fn sender_report_carries_counts_lsr_and_dlsr() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        send(&mut l, t0, 50);
        receive(&mut l, t0, 0..50);
        // The peer's SR, 300 ms after start.
        let t_sr = t0 + Duration::from_millis(300);
        let peer_ntp = 0x0123_4567_89ab_cdefu64;
        let sr = SenderReport {
            ssrc: PEER,
            ntp_time: peer_ntp,
            rtp_time: 4242,
            packet_count: 15,
            octet_count: 2400,
            ..Default::default()
        };
        let raw = marshal(&[Box::new(sr) as Box<dyn Packet>]).expect("marshal");
        l.on_rtcp_received(t_sr, wall_at(t0, t_sr), &raw)
            .expect("valid SR");

        let (due, packets) = first_report(&mut l, t0);
        assert_eq!(packets.len(), 2, "SR + SDES");
        let sr = as_sr(&*packets[0]);
        assert_eq!(sr.ssrc, RELAYED, "reports as the relayed stream's SSRC");
        assert_eq!(sr.packet_count, 50);
        assert_eq!(sr.octet_count, 50 * 160);
        assert_eq!(
            sr.ntp_time >> 32,
            1_700_000_000 + NTP_UNIX_OFFSET_SECS + (due - t0).as_secs()
        );
        // RTP time extrapolated from the last packet sent (ts 49 * 160 at 980 ms).
        let last_at = t0 + PTIME * 49;
        let expect_rtp = 49 * 160 + ((due - last_at).as_secs_f64() * 8000.0) as u32;
        assert!(
            sr.rtp_time.abs_diff(expect_rtp) <= 1,
            "{} vs {expect_rtp}",
            sr.rtp_time
        );
        assert_eq!(sr.reports.len(), 1);
        let b = &sr.reports[0];
        assert_eq!(b.ssrc, PEER);
        assert_eq!(b.last_sender_report, (peer_ntp >> 16) as u32);
        let dlsr = (due - t_sr).as_secs_f64() * 65536.0;
        assert!(
            (f64::from(b.delay) - dlsr).abs() <= 1.0,
            "{} vs {dlsr}",
            b.delay
        );

        let sdes = packets[1]
            .as_any()
            .downcast_ref::<SourceDescription>()
            .expect("SDES");
        assert_eq!(sdes.chunks[0].source, RELAYED);
        assert_eq!(sdes.chunks[0].items[0].sdes_type, SdesType::SdesCname);
        assert_eq!(&sdes.chunks[0].items[0].text[..], b"riptide@test");
        assert_eq!(l.stats().packets_sent, 50);
    }

    #[test]
    fn sr_for_two_intervals_after_sending_then_rr() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let (_, p) = first_report(&mut l, t0);
        let rr = as_rr(&*p[0]);
        assert_eq!(
            (rr.ssrc, rr.reports.len()),
            (OURS, 0),
            "nothing sent or heard yet"
        );

        let t1 = l.poll_timeout() - Duration::from_secs(1);
        send(&mut l, t1, 10);
        let mut kinds = Vec::new();
        for _ in 0..3 {
            let due = l.poll_timeout();
            let raw = l.poll_report(due, wall_at(t0, due)).expect("due");
            let p = unmarshal(&mut Bytes::from(raw)).expect("parses");
            let sr = p[0].as_any().downcast_ref::<SenderReport>();
            let rr = p[0].as_any().downcast_ref::<ReceiverReport>();
            kinds.push(match (sr, rr) {
                (Some(sr), _) => ("SR", sr.ssrc),
                (_, Some(rr)) => ("RR", rr.ssrc),
                _ => panic!("report first"),
            });
        }
        // RFC 3550 §6.4: SR while we sent in this or the previous interval; the SSRC stays
        // the one we sent with.
        assert_eq!(kinds, [("SR", RELAYED), ("SR", RELAYED), ("RR", RELAYED)]);
    }

    #[test]
    fn no_report_block_for_a_silent_peer() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, 0..20);
        let (_, p) = first_report(&mut l, t0);
        assert_eq!(as_rr(&*p[0]).reports.len(), 1);
        // Nothing heard in the next interval (hold): RFC 3550 §6.4 reports only sources heard.
        let due = l.poll_timeout();
        let raw = l.poll_report(due, wall_at(t0, due)).expect("due");
        let p = unmarshal(&mut Bytes::from(raw)).expect("parses");
        assert_eq!(as_rr(&*p[0]).reports.len(), 0);
    }

    #[test]
    fn rtt_and_remote_view_from_a_peer_receiver_report() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        send(&mut l, t0, 100);
        let (due, p) = first_report(&mut l, t0);
        let our_ntp = as_sr(&*p[0]).ntp_time;
        let rr = ReceiverReport {
            ssrc: PEER,
            reports: vec![
                ReceptionReport {
                    ssrc: 0x9999_9999, // someone else: ignored
                    fraction_lost: 255,
                    ..Default::default()
                },
                ReceptionReport {
                    ssrc: RELAYED,
                    fraction_lost: 64,
                    total_lost: 7,
                    last_sequence_number: 99,
                    jitter: 80,
                    last_sender_report: (our_ntp >> 16) as u32,
                    delay: 32768, // 0.5 s held at the peer
                },
            ],
            profile_extensions: Bytes::new(),
        };
        let raw = marshal(&[Box::new(rr) as Box<dyn Packet>]).expect("marshal");
        let at = due + Duration::from_millis(600);
        l.on_rtcp_received(at, wall_at(t0, at), &raw)
            .expect("valid RR");
        let s = l.stats();
        let rtt = s.rtt_ms.expect("rtt");
        assert!((rtt - 100.0).abs() < 0.05, "{rtt}");
        assert_eq!(s.remote_fraction_lost, Some(0.25));
        assert_eq!(s.remote_jitter_ms, Some(10.0));
        assert_eq!(s.remote_packets_lost, Some(7));
    }

    #[test]
    fn rtt_is_not_computed_without_lsr_or_when_negative() {
        assert_eq!(rtt_from_block(1000, 0, 0), None);
        assert_eq!(rtt_from_block(1000, 900, 200), None, "DLSR beyond elapsed");
        assert_eq!(rtt_from_block(1000, 2000, 0), None, "LSR in the future");
        assert_eq!(rtt_from_block(65536 + 10, 10, 32768), Some(500.0));
        // Across the 16.16 wrap.
        assert_eq!(rtt_from_block(5, u32::MAX - 65530, 0), Some(1000.0));
    }

    #[test]
    fn negative_remote_cumulative_loss_is_sign_extended() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        send(&mut l, t0, 5);
        let rr = ReceiverReport {
            ssrc: PEER,
            reports: vec![ReceptionReport {
                ssrc: RELAYED,
                total_lost: 0x00ff_fffe,
                ..Default::default()
            }],
            profile_extensions: Bytes::new(),
        };
        let raw = marshal(&[Box::new(rr) as Box<dyn Packet>]).expect("marshal");
        l.on_rtcp_received(t0, wall0(), &raw).expect("valid");
        assert_eq!(l.stats().remote_packets_lost, Some(-2));
        assert_eq!(l.stats().rtt_ms, None, "LSR 0: no RTT");
    }

    #[test]
    fn report_intervals_are_randomised_around_five_seconds() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let first = l.poll_timeout() - t0;
        assert!(
            (1250..=3750).contains(&first.as_millis()),
            "first report after half the minimum, randomised: {first:?}"
        );
        let mut prev = l.poll_timeout();
        let mut seen = Vec::new();
        for _ in 0..200 {
            let due = l.poll_timeout();
            let early = due - Duration::from_millis(1);
            assert_eq!(
                l.poll_report(early, wall_at(t0, early)),
                None,
                "not due yet"
            );
            assert!(l.poll_report(due, wall_at(t0, due)).is_some());
            let next = l.poll_timeout();
            let gap = next - prev.max(due);
            assert!((2500..=7500).contains(&gap.as_millis()), "{gap:?}");
            seen.push(gap);
            prev = next;
        }
        let min = seen.iter().min().copied().unwrap_or_default();
        let max = seen.iter().max().copied().unwrap_or_default();
        assert!(
            max - min > Duration::from_secs(2),
            "randomised: {min:?}..{max:?}"
        );
    }

    #[test]
    fn malformed_rtcp_is_rejected_whole() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let rr_ok = [0x80, 201, 0, 1, 0, 0, 0, 1];
        let cases: Vec<(Vec<u8>, RtcpError)> = vec![
            (vec![], RtcpError::Empty),
            (
                vec![0x80, 201, 0],
                RtcpError::TruncatedHeader {
                    offset: 0,
                    available: 3,
                },
            ),
            (
                vec![0x40, 201, 0, 1, 0, 0, 0, 1],
                RtcpError::BadVersion {
                    offset: 0,
                    version: 1,
                },
            ),
            (
                vec![0x80, 201, 0, 7, 0, 0, 0, 1],
                RtcpError::LengthBeyondBuffer {
                    offset: 0,
                    declared: 32,
                    available: 8,
                },
            ),
            (
                vec![0x81, 201, 0, 1, 0, 0, 0, 1],
                RtcpError::ReportBlocksBeyondPacket {
                    offset: 0,
                    packet_type: 201,
                    count: 1,
                    needed: 32,
                    available: 8,
                },
            ),
            (
                [&rr_ok[..], &[0x80, 202, 0][..]].concat(),
                RtcpError::TruncatedHeader {
                    offset: 8,
                    available: 3,
                },
            ),
            (
                [&[0xa0, 201, 0, 1, 0, 0, 0, 4][..], &rr_ok[..]].concat(),
                RtcpError::PaddingNotLast { offset: 0 },
            ),
            (
                vec![0xa0, 201, 0, 1, 0, 0, 0, 0],
                RtcpError::BadPadding {
                    offset: 0,
                    count: 0,
                    len: 8,
                },
            ),
            (
                vec![0xa0, 201, 0, 1, 0, 0, 0, 9],
                RtcpError::BadPadding {
                    offset: 0,
                    count: 9,
                    len: 8,
                },
            ),
        ];
        for (pkt, want) in cases {
            let got = l.on_rtcp_received(t0, wall0(), &pkt);
            assert_eq!(got, Err(want), "{pkt:02x?}");
            assert!(!want.to_string().is_empty());
        }
        // Padding on the last packet is fine.
        let padded = [0xa0, 201, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4];
        assert_eq!(l.on_rtcp_received(t0, wall0(), &padded), Ok(()));

        // A valid SR followed by garbage: nothing of the SR is applied.
        receive(&mut l, t0, 0..20);
        let sr = SenderReport {
            ssrc: PEER,
            ntp_time: 0xdead_beef_0000_0000,
            ..Default::default()
        };
        let mut raw = marshal(&[Box::new(sr) as Box<dyn Packet>])
            .expect("marshal")
            .to_vec();
        raw.extend_from_slice(&[0x80, 202, 0, 9]);
        assert!(l.on_rtcp_received(t0, wall0(), &raw).is_err());
        let (_, p) = first_report(&mut l, t0);
        assert_eq!(as_rr(&*p[0]).reports[0].last_sender_report, 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u32 {
            let len = (next() % 80) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 && !buf.is_empty() {
                buf[0] = 0x80 | (buf[0] & 0x3f);
            }
            let t = t0 + Duration::from_millis(u64::from(i));
            let _ = l.on_rtcp_received(t, wall0(), &buf);
            l.on_rtp_received(t, &buf);
            l.on_rtp_sent(t, &buf);
        }
        let due = l.poll_timeout().max(t0 + Duration::from_secs(30));
        assert!(l.poll_report(due, wall0()).is_some());
    }

    #[test]
    fn bye_is_report_sdes_and_bye() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, 0..10);
        let raw = l.bye(t0 + Duration::from_secs(1), wall0());
        let p = unmarshal(&mut Bytes::from(raw)).expect("parses");
        assert_eq!(p.len(), 3);
        assert_eq!(as_rr(&*p[0]).ssrc, OURS);
        assert!(p[1].as_any().downcast_ref::<SourceDescription>().is_some());
        let bye = p[2].as_any().downcast_ref::<Goodbye>().expect("BYE");
        assert_eq!(bye.sources, vec![OURS]);

        // While sending, the BYE's report is an SR with the final counts.
        send(&mut l, t0, 3);
        let raw = l.bye(t0 + Duration::from_secs(2), wall0());
        let p = unmarshal(&mut Bytes::from(raw)).expect("parses");
        assert_eq!(as_sr(&*p[0]).packet_count, 3);
        let bye = p[2].as_any().downcast_ref::<Goodbye>().expect("BYE");
        assert_eq!(bye.sources, vec![RELAYED]);
    }

    #[test]
    fn peer_ssrc_change_keeps_leg_totals_and_reports_the_new_source() {
        let t0 = Instant::now();
        let mut l = leg(t0);
        receive(&mut l, t0, (0..50).filter(|&s| s != 25));
        let other = 0x4444_4444;
        for i in 0..50u16 {
            let seq = 7000 + i;
            if i == 30 || i == 31 {
                continue;
            }
            let t = t0 + Duration::from_secs(2) + PTIME * u32::from(i);
            l.on_rtp_received(t, &rtp(seq, u32::from(i) * 160, other));
        }
        let s = l.stats();
        assert_eq!(s.packets_lost, 3);
        assert_eq!(s.packets_received, 49 + 48);
        let (_, p) = first_report(&mut l, t0);
        let b = &as_rr(&*p[0]).reports[0];
        assert_eq!((b.ssrc, b.total_lost), (other, 2));
    }

    #[test]
    fn payload_range_skips_csrcs_extension_and_padding() {
        let mut p = vec![0xb1u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]; // P, X, CC=1
        p.extend_from_slice(&[0, 0, 0, 9]); // CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // one-word extension
        p.extend_from_slice(&[7; 10]); // payload
        p.extend_from_slice(&[0, 0, 3]); // padding
        assert_eq!(rtp_payload_range(&p), Some(24..34));
        assert_eq!(rtp_payload_range(&p[..14]), None);
        let mut bad_pad = p.clone();
        bad_pad.push(200);
        assert_eq!(rtp_payload_range(&bad_pad), None);
        assert_eq!(rtp_payload_range(&[0x80; 11]), None);
    }

    #[test]
    fn long_cname_is_truncated_to_255_octets() {
        let t0 = Instant::now();
        let mut l = LegRtcp::new(OURS, "é".repeat(200), 8000, t0);
        let (_, p) = first_report(&mut l, t0);
        let sdes = p[1]
            .as_any()
            .downcast_ref::<SourceDescription>()
            .expect("SDES");
        let text = &sdes.chunks[0].items[0].text;
        assert_eq!(text.len(), 254);
        assert!(std::str::from_utf8(text).is_ok());
    }
}
