//! DTMF codecs, sans-IO: SIP INFO bodies and RFC 4733 telephone-events.
//!
//! A digit crosses the gateway in one of three shapes: a SIP INFO request
//! (`application/dtmf-relay`, the de-facto Cisco format, or `application/dtmf`), RFC 4733
//! telephone-event RTP packets on either leg, or a call event on the RIPT side. This module
//! converts between the first two and a plain [`Digit`]:
//! - [`parse_info`] / [`info_body`] for SIP INFO,
//! - [`DigitSender`] to synthesise the RTP packets of one digit,
//! - [`DigitDetector`] to turn a received telephone-event stream back into digits, once each.
//!
//! Nothing here does I/O or reads a clock: the sender returns each packet with its send offset
//! and the caller schedules it.

use std::time::Duration;

use super::rtcp::rtp_payload_range;
use super::rtp::RTP_HEADER_LEN;

/// Duration assumed when an INFO body does not carry one (the common PBX default).
pub const DEFAULT_DURATION_MS: u32 = 250;
/// Longest digit accepted from INFO or sent as RTP.
pub const MAX_DURATION_MS: u32 = 10_000;
/// Volume of generated events: −10 dBm0, a typical DTMF power level (RFC 4733 §2.3.4 carries
/// it as a positive number of dB below 0 dBm0).
pub const DEFAULT_VOLUME: u8 = 10;
/// `Content-Type` of the Cisco-style INFO body (`Signal=`/`Duration=` lines).
pub const CONTENT_TYPE_DTMF_RELAY: &str = "application/dtmf-relay";
/// `Content-Type` of the INFO body that is just the digit or its event code.
pub const CONTENT_TYPE_DTMF: &str = "application/dtmf";

/// Longest event duration one RFC 4733 report can carry; longer events are split into
/// segments (RFC 4733 §2.5.1.3).
const SEGMENT_MAX: u16 = 0xFFFF;
/// Size of the RFC 4733 event payload.
pub const EVENT_PAYLOAD_LEN: usize = 4;
/// How many times the final packet of an event (or of a segment) is sent (RFC 4733 §2.5.1.4).
const FINAL_SENDS: u8 = 3;
/// Packet times accepted by [`DigitSender`]; RTP audio never uses more than 200 ms.
const MAX_PTIME_MS: u32 = 200;

/// One DTMF event: `digit` is one of `0-9 * # A-D` (RFC 4733 events 0-15), `duration_ms` in
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digit {
    pub digit: char,
    pub duration_ms: u32,
}

impl Digit {
    /// A checked digit: `digit` must be a DTMF symbol (`a-d` are folded to upper case) and
    /// `duration_ms` within `1..=10000`.
    pub fn new(digit: char, duration_ms: u32) -> Result<Digit, DtmfError> {
        let event = event_for_digit(digit).ok_or_else(|| DtmfError::BadSignal(digit.into()))?;
        check_duration(u64::from(duration_ms))?;
        Ok(Digit {
            digit: digit_for_event(event).unwrap_or(digit),
            duration_ms,
        })
    }

    /// The RFC 4733 event code of this digit.
    pub fn event(&self) -> Option<u8> {
        event_for_digit(self.digit)
    }
}

/// RFC 4733 §3.2 event code of a DTMF symbol (`a-d` accepted as `A-D`).
pub fn event_for_digit(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// The DTMF symbol of an RFC 4733 event code; `None` for codes above 15 (flash, tones...).
pub fn digit_for_event(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// What was wrong with a DTMF input. Strings quoted from the network are cut to a few dozen
/// characters so a hostile body cannot bloat logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error(
        "unsupported DTMF content type {0:?}: expected application/dtmf-relay or application/dtmf"
    )]
    UnsupportedContentType(String),
    #[error("DTMF INFO body is not UTF-8")]
    BodyNotUtf8,
    #[error("application/dtmf-relay body has no Signal line")]
    MissingSignal,
    #[error("bad DTMF signal {0:?}: expected one of 0-9 * # A-D or an event code 0-15")]
    BadSignal(String),
    #[error("bad DTMF duration {0:?}: expected a whole number of milliseconds")]
    BadDuration(String),
    #[error("DTMF duration {0} ms is outside 1..=10000 ms")]
    DurationOutOfRange(u64),
    #[error("RTP payload type {0} is outside 0..=127")]
    BadPayloadType(u8),
    #[error("telephone-event clock rate {0} Hz gives no whole timestamp unit per millisecond")]
    BadClockRate(u32),
    #[error("packet time {ptime_ms} ms is unusable at {clock_rate} Hz (1..=200 ms and under 16384 timestamp units)")]
    BadPtime { ptime_ms: u32, clock_rate: u32 },
}

/// Parses a SIP INFO body carrying one digit.
///
/// - `application/dtmf-relay`: `Signal=5\r\nDuration=160\r\n`. Keys are case-insensitive,
///   spaces around keys and values are ignored, lines may end in `\r\n` or `\n`, unknown lines
///   are skipped, and a missing `Duration` means [`DEFAULT_DURATION_MS`]. `Signal` may be the
///   symbol or its event code (`Signal=11` is `#`).
/// - `application/dtmf`: the body is just the symbol or its event code (`5`, `11`).
///
/// Parameters of the content type (`; charset=...`) and its case are ignored.
pub fn parse_info(content_type: &str, body: &[u8]) -> Result<Digit, DtmfError> {
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    let relay = if mime.eq_ignore_ascii_case(CONTENT_TYPE_DTMF_RELAY) {
        true
    } else if mime.eq_ignore_ascii_case(CONTENT_TYPE_DTMF) {
        false
    } else {
        return Err(DtmfError::UnsupportedContentType(snippet(content_type)));
    };
    let body = std::str::from_utf8(body).map_err(|_| DtmfError::BodyNotUtf8)?;
    if !relay {
        let event = parse_signal(body.trim())?;
        return Ok(digit_from_event(event, DEFAULT_DURATION_MS));
    }

    let mut signal = None;
    let mut duration = None;
    for line in body.split(['\r', '\n']) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.eq_ignore_ascii_case("signal") {
            signal.get_or_insert(value.trim());
        } else if key.eq_ignore_ascii_case("duration") {
            duration.get_or_insert(value.trim());
        }
    }
    let event = parse_signal(signal.ok_or(DtmfError::MissingSignal)?)?;
    let duration_ms = match duration {
        None => DEFAULT_DURATION_MS,
        Some(d) => {
            let ms: u64 = d.parse().map_err(|_| DtmfError::BadDuration(snippet(d)))?;
            check_duration(ms)?
        }
    };
    Ok(digit_from_event(event, duration_ms))
}

/// The SIP INFO body for `d`: `application/dtmf-relay`, the format most PBXs and carriers
/// accept (`application/dtmf` carries no duration).
pub fn info_body(d: Digit) -> (&'static str, String) {
    (
        CONTENT_TYPE_DTMF_RELAY,
        format!("Signal={}\r\nDuration={}\r\n", d.digit, d.duration_ms),
    )
}

/// A symbol (`5`, `#`, `a`) or an event code (`0`..`15`).
fn parse_signal(s: &str) -> Result<u8, DtmfError> {
    let mut chars = s.chars();
    if let (Some(c), None) = (chars.next(), chars.next()) {
        if let Some(event) = event_for_digit(c) {
            return Ok(event);
        }
    }
    match s.parse::<u8>() {
        Ok(event) if event <= 15 => Ok(event),
        _ => Err(DtmfError::BadSignal(snippet(s))),
    }
}

fn check_duration(ms: u64) -> Result<u32, DtmfError> {
    match u32::try_from(ms) {
        Ok(ms) if (1..=MAX_DURATION_MS).contains(&ms) => Ok(ms),
        _ => Err(DtmfError::DurationOutOfRange(ms)),
    }
}

/// `event` must be 0..=15 (callers have checked).
fn digit_from_event(event: u8, duration_ms: u32) -> Digit {
    Digit {
        digit: digit_for_event(event).unwrap_or('0'),
        duration_ms,
    }
}

fn snippet(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The RFC 4733 §2.3 event payload: event code, end bit, volume (6 bits, dB below 0 dBm0) and
/// duration in timestamp units since the event (or segment) began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

impl EventPayload {
    /// The first event of a telephone-event payload; `None` when shorter than 4 octets. The
    /// reserved bit is ignored, as §2.3 asks of receivers.
    pub fn parse(payload: &[u8]) -> Option<EventPayload> {
        let p = payload.get(..EVENT_PAYLOAD_LEN)?;
        Some(EventPayload {
            event: p[0],
            end: p[1] & 0x80 != 0,
            volume: p[1] & 0x3f,
            duration: u16::from_be_bytes([p[2], p[3]]),
        })
    }

    /// Writes the payload; the reserved bit is zero and `volume` is cut to its 6 bits.
    pub fn write(&self, out: &mut [u8; 4]) {
        out[0] = self.event;
        out[1] = (u8::from(self.end) << 7) | (self.volume & 0x3f);
        out[2..4].copy_from_slice(&self.duration.to_be_bytes());
    }
}

/// One planned packet of a [`DigitSender`].
#[derive(Debug, Clone, Copy)]
struct Planned {
    offset: Duration,
    /// Timestamp units from the event start to the start of this packet's segment.
    segment_start: u32,
    duration: u16,
    marker: bool,
    end: bool,
}

/// Generates the RTP packets of one digit (RFC 4733 §2.5.1):
/// - the first packet has the marker bit and reports one packet time of the event;
/// - an update follows every `ptime_ms`, with the same RTP timestamp (the event start) and the
///   duration so far;
/// - the final packet has the E bit and the full duration, and is sent three times, one packet
///   time apart (§2.5.1.4).
///
/// Every packet has its own sequence number. Events longer than 0xFFFF timestamp units (8.19 s
/// at 8 kHz) are split into segments (§2.5.1.3): the last report of a segment has duration
/// 0xFFFF and no E bit and is sent three times, and the next segment starts at the timestamp
/// where that one reached 0xFFFF, without the marker bit.
///
/// Packets come with their send offset from the first packet (which is at offset zero). After
/// the last packet, [`DigitSender::next_seq`] is where the caller's stream continues.
#[derive(Debug, Clone)]
pub struct DigitSender {
    plan: Vec<Planned>,
    next: usize,
    event: u8,
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

impl DigitSender {
    /// `pt`: the negotiated telephone-event payload type; `seq`/`ts`: sequence number of the
    /// first packet and RTP timestamp of the event start; `clock_rate`: the telephone-event
    /// clock (8000 unless negotiated otherwise); `ptime_ms`: update interval (typically 20 or
    /// 50 ms).
    pub fn new(
        d: Digit,
        pt: u8,
        ssrc: u32,
        seq: u16,
        ts: u32,
        clock_rate: u32,
        ptime_ms: u32,
    ) -> Result<DigitSender, DtmfError> {
        let event = event_for_digit(d.digit).ok_or_else(|| DtmfError::BadSignal(d.digit.into()))?;
        check_duration(u64::from(d.duration_ms))?;
        if pt > 127 {
            return Err(DtmfError::BadPayloadType(pt));
        }
        if clock_rate < 1000 {
            return Err(DtmfError::BadClockRate(clock_rate));
        }
        let step = u64::from(ptime_ms) * u64::from(clock_rate) / 1000;
        // A step under a quarter segment keeps segment boundaries at least four updates apart,
        // so the three sends of one segment's final report never overlap the next boundary.
        if ptime_ms == 0 || ptime_ms > MAX_PTIME_MS || step == 0 || step >= 0x4000 {
            return Err(DtmfError::BadPtime {
                ptime_ms,
                clock_rate,
            });
        }
        let total = u64::from(d.duration_ms) * u64::from(clock_rate) / 1000;
        let ptime = Duration::from_millis(u64::from(ptime_ms));
        Ok(DigitSender {
            plan: plan_packets(total, step, ptime),
            next: 0,
            event,
            pt,
            ssrc,
            seq,
            ts,
        })
    }

    /// The next packet (12-octet RTP header + 4-octet event payload) and when to send it,
    /// relative to the first; `None` once all are out.
    pub fn next_packet(&mut self) -> Option<(Duration, Vec<u8>)> {
        let p = *self.plan.get(self.next)?;
        self.next += 1;
        let mut pkt = vec![0u8; RTP_HEADER_LEN + EVENT_PAYLOAD_LEN];
        pkt[0] = 0x80;
        pkt[1] = (u8::from(p.marker) << 7) | self.pt;
        pkt[2..4].copy_from_slice(&self.seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&self.ts.wrapping_add(p.segment_start).to_be_bytes());
        pkt[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let mut payload = [0u8; EVENT_PAYLOAD_LEN];
        EventPayload {
            event: self.event,
            end: p.end,
            volume: DEFAULT_VOLUME,
            duration: p.duration,
        }
        .write(&mut payload);
        pkt[RTP_HEADER_LEN..].copy_from_slice(&payload);
        self.seq = self.seq.wrapping_add(1);
        Some((p.offset, pkt))
    }

    /// The sequence number of the next packet: after the last one, where the caller's RTP
    /// stream continues.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// How many packets remain.
    pub fn remaining(&self) -> usize {
        self.plan.len() - self.next
    }
}

impl Iterator for DigitSender {
    type Item = (Duration, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_packet()
    }
}

/// Lays out the packets of an event of `total` timestamp units, updated every `step` units
/// (`ptime` apart in time). `step` is below 0x4000 (checked by the caller).
fn plan_packets(total: u64, step: u64, ptime: Duration) -> Vec<Planned> {
    let total = total.max(1);
    let segment = u64::from(SEGMENT_MAX);
    let mut plan = Vec::with_capacity((total / step) as usize + 5);
    let mut segment_start = 0u64;
    // Segment start of a closed segment whose final report still has sends left, and how many.
    let mut closing: Option<(u64, u8)> = None;
    let mut i = 0u32;
    loop {
        let elapsed = ((u64::from(i) + 1) * step).min(total);
        let offset = ptime * i;
        if elapsed - segment_start > segment {
            // The current segment reached 0xFFFF during this step: report it complete, then
            // continue in a new segment.
            closing = Some((segment_start, FINAL_SENDS));
            push_closing(&mut plan, offset, &mut closing);
            segment_start += segment;
        } else {
            push_closing(&mut plan, offset, &mut closing);
        }
        let last = elapsed == total;
        let p = Planned {
            offset,
            segment_start: segment_start as u32,
            duration: (elapsed - segment_start) as u16,
            marker: i == 0,
            end: last,
        };
        plan.push(p);
        if last {
            for r in 1..u32::from(FINAL_SENDS) {
                let offset = ptime * (i + r);
                push_closing(&mut plan, offset, &mut closing);
                plan.push(Planned {
                    offset,
                    marker: false,
                    ..p
                });
            }
            return plan;
        }
        i += 1;
    }
}

/// Queues one more send of a closed segment's final report, if any are left.
fn push_closing(plan: &mut Vec<Planned>, offset: Duration, closing: &mut Option<(u64, u8)>) {
    if let Some((start, left)) = *closing {
        plan.push(Planned {
            offset,
            segment_start: start as u32,
            duration: SEGMENT_MAX,
            marker: false,
            end: false,
        });
        *closing = (left > 1).then_some((start, left - 1));
    }
}

/// State of the event being received.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// RTP timestamp of the current segment.
    ts: u32,
    event: u8,
    /// Timestamp units in the event's completed segments.
    earlier_segments: u64,
    /// Longest duration reported for the current segment.
    duration: u16,
    ended: bool,
    reported: bool,
}

impl Tracked {
    fn samples(&self) -> u64 {
        self.earlier_segments + u64::from(self.duration)
    }
}

/// Turns a received telephone-event stream (the RTP packets of the negotiated telephone-event
/// payload type) into digits, each reported exactly once:
/// - on the first packet with the E bit (its two retransmissions are ignored);
/// - or, when every end packet was lost, as soon as a packet of a newer event arrives (or on
///   [`DigitDetector::flush`]), with the longest duration seen.
///
/// A lost first packet does not matter: any packet with a new timestamp starts an event.
/// Packets older than the current event (by RTP timestamp) are stale and ignored, and
/// segments of a long event (RFC 4733 §2.5.2.3) are joined into one digit. Events above 15
/// (flash, tones) end the previous digit but are not reported.
#[derive(Debug, Clone)]
pub struct DigitDetector {
    clock_rate: u32,
    ssrc: Option<u32>,
    current: Option<Tracked>,
}

impl DigitDetector {
    /// `clock_rate` of the telephone-event payload type (0 is treated as 8000).
    pub fn new(clock_rate: u32) -> DigitDetector {
        DigitDetector {
            clock_rate: if clock_rate == 0 { 8000 } else { clock_rate },
            ssrc: None,
            current: None,
        }
    }

    /// Feeds one telephone-event RTP packet; returns a digit when one is complete. Packets
    /// without a valid RTP header or a 4-octet payload are ignored.
    pub fn on_packet(&mut self, pkt: &[u8]) -> Option<Digit> {
        let range = rtp_payload_range(pkt)?;
        let ev = EventPayload::parse(pkt.get(range)?)?;
        let marker = pkt[1] & 0x80 != 0;
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);

        let mut out = None;
        if self.ssrc != Some(ssrc) {
            // A new stream: its timestamps are unrelated to the old one's.
            out = self.flush();
            self.current = None;
            self.ssrc = Some(ssrc);
        }
        match &mut self.current {
            Some(c) if c.ts == ts => {
                if c.event != ev.event {
                    return out;
                }
                c.duration = c.duration.max(ev.duration);
                c.ended |= ev.end;
            }
            Some(c) if (ts.wrapping_sub(c.ts) as i32) < 0 => return out,
            Some(c)
                if c.event == ev.event
                    && !marker
                    && !c.ended
                    && ts.wrapping_sub(c.ts) == u32::from(SEGMENT_MAX) =>
            {
                // The next segment of a long event.
                c.earlier_segments += u64::from(SEGMENT_MAX);
                c.ts = ts;
                c.duration = ev.duration;
                c.ended = ev.end;
            }
            _ => {
                let previous = self.flush();
                out = out.or(previous);
                self.current = Some(Tracked {
                    ts,
                    event: ev.event,
                    earlier_segments: 0,
                    duration: ev.duration,
                    ended: ev.end,
                    reported: false,
                });
            }
        }
        // One digit per call: a just-ended event that cannot be reported now (because an
        // earlier digit is being returned) is reported by its retransmitted end packet, or by
        // the next event or flush.
        if out.is_none() {
            if let Some(c) = self.current.as_mut().filter(|c| c.ended && !c.reported) {
                c.reported = true;
                out = to_digit(self.clock_rate, c.event, c.samples());
            }
        }
        out
    }

    /// Reports the event in progress if it was never reported (its end packets were all lost).
    /// Call when the telephone-event stream stops, e.g. a few packet times after the last one.
    pub fn flush(&mut self) -> Option<Digit> {
        let c = self.current.as_mut().filter(|c| !c.reported)?;
        c.reported = true;
        to_digit(self.clock_rate, c.event, c.samples())
    }
}

/// The digit of `event` lasting `samples` timestamp units, rounded to the millisecond; `None`
/// for events that are not DTMF digits.
fn to_digit(clock_rate: u32, event: u8, samples: u64) -> Option<Digit> {
    let rate = u64::from(clock_rate);
    let ms = (samples * 1000 + rate / 2) / rate;
    Some(Digit {
        digit: digit_for_event(event)?,
        duration_ms: u32::try_from(ms).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_DIGITS: &str = "0123456789*#ABCD";
    const PT: u8 = 101;
    const SSRC: u32 = 0xfeed_f00d;

    fn digit(c: char, ms: u32) -> Digit {
        Digit {
            digit: c,
            duration_ms: ms,
        }
    }

    fn relay(body: &str) -> Result<Digit, DtmfError> {
        parse_info("application/dtmf-relay", body.as_bytes())
    }

    fn packets(d: Digit, clock_rate: u32, ptime_ms: u32) -> Vec<(Duration, Vec<u8>)> {
        DigitSender::new(d, PT, SSRC, 1000, 50_000, clock_rate, ptime_ms)
            .expect("valid digit")
            .collect()
    }

    fn payload(pkt: &[u8]) -> EventPayload {
        EventPayload::parse(&pkt[RTP_HEADER_LEN..]).expect("event payload")
    }

    fn ts(pkt: &[u8]) -> u32 {
        u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]])
    }

    fn detect(det: &mut DigitDetector, pkts: &[(Duration, Vec<u8>)]) -> Vec<Digit> {
        pkts.iter().filter_map(|(_, p)| det.on_packet(p)).collect()
    }

    #[test]
    fn dtmf_relay_bodies_parse_with_odd_formatting() {
        assert_eq!(relay("Signal=5\r\nDuration=160\r\n"), Ok(digit('5', 160)));
        assert_eq!(relay("signal = #\nDURATION= 100\n"), Ok(digit('#', 100)));
        assert_eq!(
            relay("  Signal=*  \r\n"),
            Ok(digit('*', DEFAULT_DURATION_MS))
        );
        assert_eq!(relay("Signal=a"), Ok(digit('A', DEFAULT_DURATION_MS)));
        assert_eq!(relay("Signal=11\r\nDuration=200"), Ok(digit('#', 200)));
        assert_eq!(relay("Signal=10\r\nDuration=1"), Ok(digit('*', 1)));
        assert_eq!(
            relay("Foo=bar\r\ngarbage line\r\nDuration=10000\r\nSignal=D\r\n\r\n"),
            Ok(digit('D', 10_000))
        );
        assert_eq!(
            parse_info(
                "Application/DTMF-Relay ; charset=utf-8",
                b"Signal=9\r\nDuration=120\r\n"
            ),
            Ok(digit('9', 120))
        );
    }

    #[test]
    fn dtmf_bodies_parse_digits_and_event_codes() {
        let p = |b: &str| parse_info("application/dtmf", b.as_bytes());
        assert_eq!(p("5"), Ok(digit('5', DEFAULT_DURATION_MS)));
        assert_eq!(p(" 11\r\n"), Ok(digit('#', DEFAULT_DURATION_MS)));
        assert_eq!(p("*"), Ok(digit('*', DEFAULT_DURATION_MS)));
        assert_eq!(p("15"), Ok(digit('D', DEFAULT_DURATION_MS)));
        assert_eq!(p("c\n"), Ok(digit('C', DEFAULT_DURATION_MS)));
        assert_eq!(
            parse_info("APPLICATION/DTMF", b"0"),
            Ok(digit('0', DEFAULT_DURATION_MS))
        );
    }

    #[test]
    fn info_errors_are_specific() {
        assert_eq!(
            parse_info("text/plain", b"Signal=5"),
            Err(DtmfError::UnsupportedContentType("text/plain".into()))
        );
        assert_eq!(
            parse_info("application/dtmf-relayx", b"Signal=5"),
            Err(DtmfError::UnsupportedContentType(
                "application/dtmf-relayx".into()
            ))
        );
        assert_eq!(
            parse_info("application/dtmf-relay", &[0xff, 0xfe]),
            Err(DtmfError::BodyNotUtf8)
        );
        assert_eq!(relay("Duration=100\r\n"), Err(DtmfError::MissingSignal));
        assert_eq!(relay(""), Err(DtmfError::MissingSignal));
        assert_eq!(relay("Signal=X"), Err(DtmfError::BadSignal("X".into())));
        assert_eq!(relay("Signal=16"), Err(DtmfError::BadSignal("16".into())));
        assert_eq!(relay("Signal="), Err(DtmfError::BadSignal(String::new())));
        assert_eq!(relay("Signal=55"), Err(DtmfError::BadSignal("55".into())));
        assert_eq!(
            relay("Signal=5\r\nDuration=abc"),
            Err(DtmfError::BadDuration("abc".into()))
        );
        assert_eq!(
            relay("Signal=5\r\nDuration=-5"),
            Err(DtmfError::BadDuration("-5".into()))
        );
        assert_eq!(
            relay("Signal=5\r\nDuration=0"),
            Err(DtmfError::DurationOutOfRange(0))
        );
        assert_eq!(
            relay("Signal=5\r\nDuration=10001"),
            Err(DtmfError::DurationOutOfRange(10_001))
        );
        assert_eq!(
            relay("Signal=5\r\nDuration=99999999999"),
            Err(DtmfError::DurationOutOfRange(99_999_999_999))
        );
        assert_eq!(
            parse_info("application/dtmf", b"55"),
            Err(DtmfError::BadSignal("55".into()))
        );
        // Quoted network input is bounded.
        let long = "Signal=".to_string() + &"x".repeat(10_000);
        match relay(&long) {
            Err(DtmfError::BadSignal(s)) => assert_eq!(s.len(), 40),
            other => panic!("{other:?}"),
        }
        for e in [DtmfError::MissingSignal, DtmfError::DurationOutOfRange(0)] {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn info_body_round_trips() {
        for c in ALL_DIGITS.chars() {
            let d = digit(c, 180);
            let (ct, body) = info_body(d);
            assert_eq!(ct, "application/dtmf-relay");
            assert_eq!(parse_info(ct, body.as_bytes()), Ok(d));
        }
        assert_eq!(info_body(digit('#', 160)).1, "Signal=#\r\nDuration=160\r\n");
    }

    #[test]
    fn digit_new_checks_and_normalises() {
        assert_eq!(Digit::new('b', 100), Ok(digit('B', 100)));
        assert_eq!(Digit::new('E', 100), Err(DtmfError::BadSignal("E".into())));
        assert_eq!(Digit::new('1', 0), Err(DtmfError::DurationOutOfRange(0)));
        for (i, c) in ALL_DIGITS.chars().enumerate() {
            assert_eq!(event_for_digit(c), Some(i as u8));
            assert_eq!(digit_for_event(i as u8), Some(c));
        }
        assert_eq!(digit_for_event(16), None);
    }

    #[test]
    fn event_payload_round_trips_and_rejects_short_input() {
        let e = EventPayload {
            event: 11,
            end: true,
            volume: 10,
            duration: 0x1234,
        };
        let mut buf = [0u8; 4];
        e.write(&mut buf);
        assert_eq!(buf, [11, 0x80 | 10, 0x12, 0x34]);
        assert_eq!(EventPayload::parse(&buf), Some(e));
        assert_eq!(EventPayload::parse(&[11, 0x8a, 0x12, 0x34, 0xff]), Some(e));
        assert_eq!(EventPayload::parse(&buf[..3]), None);
        assert_eq!(EventPayload::parse(&[]), None);
        // Reserved bit ignored on input, volume cut to 6 bits on output.
        assert_eq!(
            EventPayload::parse(&[3, 0x40 | 5, 0, 1]),
            Some(EventPayload {
                event: 3,
                end: false,
                volume: 5,
                duration: 1
            })
        );
        EventPayload { volume: 0xff, ..e }.write(&mut buf);
        assert_eq!(buf[1], 0x80 | 0x3f);
    }

    #[test]
    fn sender_follows_rfc4733_packet_pattern() {
        let pkts = packets(digit('5', 100), 8000, 20);
        let durations: Vec<u16> = pkts.iter().map(|(_, p)| payload(p).duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = pkts.iter().map(|(_, p)| payload(p).end).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        let offsets: Vec<u64> = pkts.iter().map(|(o, _)| o.as_millis() as u64).collect();
        assert_eq!(offsets, [0, 20, 40, 60, 80, 100, 120]);
        for (i, (_, p)) in pkts.iter().enumerate() {
            assert_eq!(p.len(), 16);
            assert_eq!(p[0], 0x80);
            assert_eq!(p[1] & 0x80 != 0, i == 0, "marker only on the first packet");
            assert_eq!(p[1] & 0x7f, PT);
            assert_eq!(u16::from_be_bytes([p[2], p[3]]), 1000 + i as u16);
            assert_eq!(ts(p), 50_000, "one timestamp: the event start");
            assert_eq!(&p[8..12], &SSRC.to_be_bytes());
            assert_eq!(payload(p).event, 5);
            assert_eq!(payload(p).volume, DEFAULT_VOLUME);
        }
        // A duration that is not a whole number of packet times, and a digit shorter than one.
        let pkts = packets(digit('#', 250), 8000, 20);
        assert_eq!(payload(&pkts[pkts.len() - 4].1).duration, 1920);
        assert_eq!(payload(&pkts[pkts.len() - 3].1).duration, 2000);
        let pkts = packets(digit('1', 10), 8000, 20);
        assert_eq!(pkts.len(), 3);
        assert!(payload(&pkts[0].1).end && pkts[0].1[1] & 0x80 != 0);
    }

    #[test]
    fn sender_reports_next_sequence_number_with_wrap() {
        let mut s = DigitSender::new(digit('0', 40), PT, SSRC, 65534, u32::MAX - 10, 8000, 20)
            .expect("valid");
        assert_eq!(s.remaining(), 4);
        let seqs: Vec<u16> = std::iter::from_fn(|| s.next_packet())
            .map(|(_, p)| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        assert_eq!(seqs, [65534, 65535, 0, 1]);
        assert_eq!(s.next_seq(), 2);
        assert_eq!(s.next_packet(), None);
    }

    #[test]
    fn sender_rejects_bad_parameters() {
        let d = digit('5', 100);
        let new = |d, pt, rate, ptime| DigitSender::new(d, pt, SSRC, 0, 0, rate, ptime).err();
        assert_eq!(
            new(digit('x', 100), PT, 8000, 20),
            Some(DtmfError::BadSignal("x".into()))
        );
        assert_eq!(
            new(digit('5', 0), PT, 8000, 20),
            Some(DtmfError::DurationOutOfRange(0))
        );
        assert_eq!(new(d, 128, 8000, 20), Some(DtmfError::BadPayloadType(128)));
        assert_eq!(new(d, PT, 0, 20), Some(DtmfError::BadClockRate(0)));
        assert_eq!(
            new(d, PT, 8000, 0),
            Some(DtmfError::BadPtime {
                ptime_ms: 0,
                clock_rate: 8000
            })
        );
        assert_eq!(
            new(d, PT, 8000, 500),
            Some(DtmfError::BadPtime {
                ptime_ms: 500,
                clock_rate: 8000
            })
        );
        assert_eq!(new(d, PT, 48_000, 20), None);
    }

    #[test]
    fn every_digit_round_trips_once_with_its_duration() {
        for (rate, ptime) in [(8000, 20), (8000, 50), (16_000, 30), (48_000, 20)] {
            for c in ALL_DIGITS.chars() {
                for ms in [40, 100, 250] {
                    let d = digit(c, ms);
                    let mut det = DigitDetector::new(rate);
                    let got = detect(&mut det, &packets(d, rate, ptime));
                    assert_eq!(got, [d], "{d:?} at {rate} Hz / {ptime} ms");
                    assert_eq!(det.flush(), None);
                }
            }
        }
    }

    #[test]
    fn long_digits_are_segmented_and_rejoined() {
        for rate in [8000, 48_000] {
            let d = digit('7', MAX_DURATION_MS);
            let pkts = packets(d, rate, 20);
            let total = u64::from(rate) * 10;
            let segments = total.div_ceil(0xFFFF);
            let starts: std::collections::BTreeSet<u32> = pkts.iter().map(|(_, p)| ts(p)).collect();
            assert_eq!(starts.len() as u64, segments, "{rate} Hz");
            for (k, start) in starts.iter().enumerate() {
                assert_eq!(start - 50_000, k as u32 * 0xFFFF);
            }
            // Each closed segment ends in three non-end reports of 0xFFFF.
            let closing = pkts
                .iter()
                .filter(|(_, p)| payload(p).duration == 0xFFFF && !payload(p).end)
                .count() as u64;
            assert!(closing >= 3 * (segments - 1), "{closing}");
            assert_eq!(pkts.iter().filter(|(_, p)| p[1] & 0x80 != 0).count(), 1);
            assert_eq!(pkts.iter().filter(|(_, p)| payload(p).end).count(), 3);
            // Offsets never go backwards.
            assert!(pkts.windows(2).all(|w| w[0].0 <= w[1].0));
            let mut det = DigitDetector::new(rate);
            assert_eq!(detect(&mut det, &pkts), [d], "{rate} Hz");
        }
    }

    #[test]
    fn three_end_packets_give_one_digit() {
        let pkts = packets(digit('9', 120), 8000, 20);
        let ends: Vec<_> = pkts
            .iter()
            .filter(|(_, p)| payload(p).end)
            .cloned()
            .collect();
        assert_eq!(ends.len(), 3);
        let mut det = DigitDetector::new(8000);
        assert_eq!(detect(&mut det, &ends), [digit('9', 120)]);
        // Late duplicates of the whole burst change nothing.
        assert_eq!(detect(&mut det, &pkts), []);
    }

    #[test]
    fn lost_first_packet_still_gives_one_digit() {
        let pkts = packets(digit('3', 100), 8000, 20);
        let mut det = DigitDetector::new(8000);
        assert_eq!(detect(&mut det, &pkts[1..]), [digit('3', 100)]);
    }

    #[test]
    fn lost_end_packets_report_the_digit_when_the_next_starts() {
        let first = packets(digit('1', 100), 8000, 20);
        let second = DigitSender::new(digit('2', 80), PT, SSRC, 1007, 52_000, 8000, 20)
            .expect("valid")
            .collect::<Vec<_>>();
        let mut det = DigitDetector::new(8000);
        let without_ends: Vec<_> = first
            .iter()
            .filter(|(_, p)| !payload(p).end)
            .cloned()
            .collect();
        assert_eq!(detect(&mut det, &without_ends), []);
        // The longest duration seen before the ends were lost: 4 updates of 20 ms.
        assert_eq!(det.on_packet(&second[0].1), Some(digit('1', 80)));
        assert_eq!(detect(&mut det, &second[1..]), [digit('2', 80)]);
        assert_eq!(det.flush(), None);
    }

    #[test]
    fn single_packet_event_after_an_unreported_one_is_not_lost() {
        // Digit '1' loses its ends; digit '2' is short enough for one packet + 2 resends.
        let first = packets(digit('1', 100), 8000, 20);
        let second = DigitSender::new(digit('2', 10), PT, SSRC, 1007, 52_000, 8000, 20)
            .expect("valid")
            .collect::<Vec<_>>();
        let mut det = DigitDetector::new(8000);
        detect(&mut det, &first[..4]);
        assert_eq!(det.on_packet(&second[0].1), Some(digit('1', 80)));
        assert_eq!(det.on_packet(&second[1].1), Some(digit('2', 10)));
        assert_eq!(det.on_packet(&second[2].1), None);

        // If its resends are lost too, flush still reports it once.
        let mut det = DigitDetector::new(8000);
        detect(&mut det, &first[..4]);
        assert_eq!(det.on_packet(&second[0].1), Some(digit('1', 80)));
        assert_eq!(det.flush(), Some(digit('2', 10)));
        assert_eq!(det.flush(), None);
    }

    #[test]
    fn stale_packets_of_an_earlier_event_are_ignored() {
        let first = packets(digit('4', 60), 8000, 20);
        let second = DigitSender::new(digit('6', 60), PT, SSRC, 1006, 51_000, 8000, 20)
            .expect("valid")
            .collect::<Vec<_>>();
        let mut det = DigitDetector::new(8000);
        assert_eq!(detect(&mut det, &first), [digit('4', 60)]);
        assert_eq!(det.on_packet(&second[0].1), None);
        // A late end packet of '4' arrives amid '6'.
        assert_eq!(det.on_packet(&first[4].1), None);
        assert_eq!(detect(&mut det, &second[1..]), [digit('6', 60)]);
    }

    #[test]
    fn ssrc_change_flushes_the_previous_stream() {
        let first = packets(digit('8', 100), 8000, 20);
        let other = DigitSender::new(digit('9', 40), PT, SSRC + 1, 7, 3, 8000, 20)
            .expect("valid")
            .collect::<Vec<_>>();
        let mut det = DigitDetector::new(8000);
        detect(&mut det, &first[..2]);
        // The new stream's timestamp (3) is "older" than the old one's; it must not be stale.
        assert_eq!(det.on_packet(&other[0].1), Some(digit('8', 40)));
        assert_eq!(detect(&mut det, &other[1..]), [digit('9', 40)]);
    }

    #[test]
    fn detector_ignores_junk_and_non_digit_events() {
        let mut det = DigitDetector::new(8000);
        assert_eq!(det.on_packet(&[]), None);
        assert_eq!(det.on_packet(&[0x80; 12]), None, "no payload");
        assert_eq!(det.on_packet(&[0x80; 15]), None, "short payload");
        let mut flash = packets(digit('1', 40), 8000, 20);
        for (_, p) in &mut flash {
            p[12] = 16; // hook flash: not a digit
        }
        assert_eq!(detect(&mut det, &flash), []);
        assert_eq!(det.flush(), None);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let buf: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = det.on_packet(&buf);
        }
    }
}
