//! Prometheus metrics: plain atomic counters, rendered as text by the admin listener.
//!
//! Hot-path counters (RTP relayed/dropped) are fixed fields, so counting a packet is one relaxed
//! atomic add with no lookup.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Reasons a media packet was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a parseable RTP/RTCP packet.
    Malformed,
    /// No call (or no QUIC binding) for the packet.
    NoRoute,
    /// The QUIC connection refused the datagram (too large, blocked, closed).
    QuicSend,
    /// The UDP send toward the legacy side failed.
    UdpSend,
    /// From an address that is not the latched/remote one (or, with ICE, not a checked one).
    WrongSource,
    /// SRTP/SRTCP authentication or replay check failed (tampered, replayed, wrong key).
    Srtp,
    /// The leg is secured but its keys are not ready (DTLS handshake running or failed).
    NotSecured,
    /// ICE: no checked address with fresh consent to send to.
    IceUnchecked,
    /// A STUN packet that failed validation, or STUN on a leg without ICE.
    Stun,
    /// A telephone-event toward a `dtmf = "info"` leg: it went as SIP INFO instead.
    DtmfAsInfo,
    /// RTP or RTCP on a leg whose peer's SDP has not come yet: early media racing its 183/200,
    /// media before the ACK of a delayed offer, or a stranger probing the port.
    BeforeSdp,
    /// A payload type the legacy peer's SDP did not take (telephone-event or CN left out of its
    /// answer): not sent to it.
    NotNegotiated,
    /// quinn discarded a received datagram because its receive queue was full (the reader fell
    /// behind): the oldest queued datagram goes first.
    QuicRecvQueue,
    /// quinn discarded a queued datagram to make room for a newer one (the send queue was full:
    /// congestion control or pacing held the datagrams back). Counted once per datagram that
    /// found the queue full; equal-sized RTP pushes out exactly one.
    QuicSendQueue,
    /// The QUIC path sends slower than media comes, and the datagram would have waited longer
    /// than `media::stale::MAX_QUEUE_DELAY` in quinn's queue at the congestion controller's
    /// rate: dropped at once rather than delivered late.
    QuicStale,
    /// A datagram for a media route that closed shortly before (`media::hub`'s memory of closed
    /// routes, 10 s): packets still in flight when the call ended. `NoRoute` is then left for
    /// datagrams no call ever had.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

impl DropReason {
    pub const ALL: [DropReason; 16] = [
        DropReason::Malformed,
        DropReason::NoRoute,
        DropReason::QuicSend,
        DropReason::UdpSend,
        DropReason::WrongSource,
        DropReason::Srtp,
        DropReason::NotSecured,
        DropReason::IceUnchecked,
        DropReason::Stun,
        DropReason::DtmfAsInfo,
        DropReason::BeforeSdp,
        DropReason::NotNegotiated,
        DropReason::QuicRecvQueue,
        DropReason::QuicSendQueue,
        DropReason::QuicStale,
        DropReason::Closed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoRoute => "no_route",
            DropReason::QuicSend => "quic_send",
            DropReason::UdpSend => "udp_send",
            DropReason::WrongSource => "wrong_source",
            DropReason::Srtp => "srtp_auth",
            DropReason::NotSecured => "not_secured",
            DropReason::IceUnchecked => "ice_unchecked",
            DropReason::Stun => "stun",
            DropReason::DtmfAsInfo => "dtmf_as_info",
            DropReason::BeforeSdp => "before_sdp",
            DropReason::NotNegotiated => "not_negotiated",
            DropReason::QuicRecvQueue => "quic_recv_queue",
            DropReason::QuicSendQueue => "quic_send_queue",
            DropReason::QuicStale => "quic_stale",
            DropReason::Closed => "closed",
        }
    }
}

/// How a call ended; a fixed set so the `outcome` label cannot grow without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// Answered and later hung up normally.
    Answered,
    /// The callee refused (4xx/6xx other than the cases below).
    Declined,
    /// An error on our side or the network (5xx, transport failure, timeout during setup).
    Failed,
    /// Rang until the no-answer timer fired.
    NoAnswer,
    /// The caller gave up before an answer.
    Cancelled,
    /// Refused by us before routing (no route, over capacity, auth).
    Rejected,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 6] = [
        CallOutcome::Answered,
        CallOutcome::Declined,
        CallOutcome::Failed,
        CallOutcome::NoAnswer,
        CallOutcome::Cancelled,
        CallOutcome::Rejected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CallOutcome::Answered => "answered",
            CallOutcome::Declined => "declined",
            CallOutcome::Failed => "failed",
            CallOutcome::NoAnswer => "noanswer",
            CallOutcome::Cancelled => "cancelled",
            CallOutcome::Rejected => "rejected",
        }
    }
}

impl Dir {
    fn label(self) -> &'static str {
        match self {
            Dir::In => "in",
            Dir::Out => "out",
        }
    }
}

/// Bounds the SIP message table: a peer sending random method names must not grow it forever.
const MAX_SIP_KINDS: usize = 256;

#[derive(Default)]
pub struct Metrics {
    pub rtp_sip_to_quic: AtomicU64,
    pub rtp_quic_to_sip: AtomicU64,
    pub rtcp_received: AtomicU64,
    /// Answered calls ended because nothing came from their SIP peer for `[media]
    /// timeout_secs` (or `hold_timeout_secs`).
    pub media_timeouts: AtomicU64,
    /// Answered calls ended because their SIP session was not refreshed in time (RFC 4028).
    pub session_expired: AtomicU64,
    /// Ended INVITEs and dialogs forgotten before 64*T1 because their table was full (ADR 0024).
    pub ended_dialogs_evicted: AtomicU64,
    pub media_dropped: [AtomicU64; DropReason::ALL.len()],
    pub calls_active: AtomicI64,
    /// Media port pairs (RTP + RTCP) of `[media]`'s range: the SIP legs it holds at once.
    pub media_port_pairs: AtomicU64,
    /// Of those, the ones calls hold now.
    pub media_port_pairs_held: AtomicU64,
    pub calls_total: [AtomicU64; 6],
    /// (direction, method or status code) → count.
    sip_messages: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Malformed SIP dropped without an answer, by transport.
    sip_malformed: Mutex<BTreeMap<&'static str, u64>>,
    /// Pinged trunks (`ping_secs`): their addresses, and how many of them answer.
    trunk_addresses: Mutex<BTreeMap<String, (u64, u64)>>,
    pub sip_bad_request: AtomicU64,
    /// HTTP responses by status code.
    http_responses: Mutex<BTreeMap<u16, u64>>,
    pub auth_failures: AtomicU64,
    /// Legacy-leg quality of ended calls (RTCP statistics, RFC 3550).
    legacy: Mutex<LegacyQuality>,
    pub rtcp_sent: AtomicU64,
    /// Batches of datagrams handed to quinn (`media::hub`'s QUIC sender); datagrams sent over
    /// batches is how many RTP packets share a flush.
    pub quic_flushes: AtomicU64,
    /// Of the QUIC connections that carry media, sampled by their flush tasks about once a
    /// second: packets declared lost, congestion events, and the last congestion window seen.
    pub quic_lost_packets: AtomicU64,
    pub quic_congestion_events: AtomicU64,
    pub quic_cwnd: AtomicU64,
    /// Free bytes in that connection's datagram send queue when sampled: near 0 means datagrams
    /// wait in quinn (and the oldest are dropped) rather than on the wire.
    pub quic_send_space: AtomicU64,
    /// That connection's smoothed RTT in microseconds (quinn's estimate; paces its sending).
    pub quic_rtt_us: AtomicU64,
    /// Answers from a peer gateway held until the call's media stream was bound, by outcome.
    pub answers_held: [AtomicU64; AnswerHold::ALL.len()],
    /// INVITEs that went on to a trunk's next address (or a redirect target's), by why.
    pub trunk_failovers: [AtomicU64; Failover::ALL.len()],
}

/// Why an INVITE went on to a trunk's next address (ADR 0020).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// No response at all before Timer B.
    Timeout,
    /// 503 Service Unavailable.
    Unavailable,
    /// The request could not be sent (a refused or timed-out connect, a failed TLS handshake).
    Transport,
}

impl Failover {
    pub const ALL: [Failover; 3] = [
        Failover::Timeout,
        Failover::Unavailable,
        Failover::Transport,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failover::Timeout => "timeout",
            Failover::Unavailable => "503",
            Failover::Transport => "transport",
        }
    }
}

/// How an answer held for the call's media stream (see `ript::client`) was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerHold {
    /// The media stream was bound meanwhile.
    Bound,
    /// The media stream could not be opened (refused or failed).
    Failed,
    /// Still unbound when the hold ran out.
    Timeout,
}

impl AnswerHold {
    pub const ALL: [AnswerHold; 3] = [AnswerHold::Bound, AnswerHold::Failed, AnswerHold::Timeout];

    pub fn label(self) -> &'static str {
        match self {
            AnswerHold::Bound => "bound",
            AnswerHold::Failed => "failed",
            AnswerHold::Timeout => "timeout",
        }
    }
}

/// Sums over ended calls' legacy legs: a Prometheus summary without quantiles per figure.
#[derive(Default, Clone, Copy)]
struct LegacyQuality {
    calls: u64,
    received: u64,
    lost: i64,
    jitter_ms_sum: f64,
    rtt_ms_sum: f64,
    rtt_count: u64,
}

impl Metrics {
    /// Adds one ended call's legacy-leg statistics.
    pub fn legacy_call_stats(&self, s: &crate::media::rtcp::LegStats) {
        let mut q = self.legacy.lock().unwrap_or_else(|e| e.into_inner());
        q.calls += 1;
        q.received += s.packets_received;
        q.lost += s.packets_lost;
        q.jitter_ms_sum += s.jitter_ms;
        if let Some(rtt) = s.rtt_ms {
            q.rtt_ms_sum += rtt;
            q.rtt_count += 1;
        }
    }

    /// A pinged trunk has `all` addresses, `up` of them answering its pings.
    pub fn trunk_addresses(&self, trunk: &str, all: u64, up: u64) {
        lock(&self.trunk_addresses).insert(trunk.to_string(), (all, up));
    }

    pub fn trunk_failover(&self, why: Failover) {
        self.trunk_failovers[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn answer_held(&self, outcome: AnswerHold) {
        self.answers_held[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn media_drop(&self, reason: DropReason) {
        self.media_drops(reason, 1);
    }

    pub fn media_drops(&self, reason: DropReason, n: u64) {
        self.media_dropped[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// One RTP packet relayed; the media hot path, so a single relaxed add.
    pub fn rtp_relayed(&self, sip_to_quic: bool) {
        let c = if sip_to_quic {
            &self.rtp_sip_to_quic
        } else {
            &self.rtp_quic_to_sip
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn call_started(&self) {
        self.calls_active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn call_ended(&self, outcome: CallOutcome) {
        self.calls_active.fetch_sub(1, Ordering::Relaxed);
        self.calls_total[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A SIP message sent or received; `kind` is the method (`INVITE`) or status code (`200`).
    pub fn sip_message(&self, dir: Dir, kind: &str) {
        let mut m = lock(&self.sip_messages);
        let key = (dir.label(), kind.to_string());
        if let Some(n) = m.get_mut(&key) {
            *n += 1;
        } else if m.len() < MAX_SIP_KINDS {
            m.insert(key, 1);
        } else {
            *m.entry((dir.label(), "other".to_string())).or_insert(0) += 1;
        }
    }

    /// A datagram or stream chunk that did not parse as SIP and was dropped unanswered.
    pub fn sip_malformed(&self, transport: &'static str) {
        *lock(&self.sip_malformed).entry(transport).or_insert(0) += 1;
    }

    /// A request that parsed far enough to be answered with 400.
    pub fn sip_bad_request(&self) {
        self.sip_bad_request.fetch_add(1, Ordering::Relaxed);
    }

    /// One HTTP response (HTTP/3 API or admin) with this status.
    pub fn http_requests(&self, status: u16) {
        *lock(&self.http_responses).entry(status).or_insert(0) += 1;
    }

    pub fn auth_failures(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        header(
            &mut out,
            "calls_active",
            "gauge",
            "Calls currently in progress.",
        );
        line(
            &mut out,
            "calls_active",
            "",
            self.calls_active.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "media_port_pairs",
            "gauge",
            "Media port pairs (RTP and RTCP) in [media]'s range: the SIP legs it holds at once.",
        );
        line(
            &mut out,
            "media_port_pairs",
            "",
            load(&self.media_port_pairs),
        );
        header(
            &mut out,
            "media_port_pairs_held",
            "gauge",
            "Media port pairs held by calls now; at media_port_pairs, new calls get 503.",
        );
        line(
            &mut out,
            "media_port_pairs_held",
            "",
            load(&self.media_port_pairs_held),
        );

        counters(
            &mut out,
            "calls_total",
            "Calls ended, by outcome.",
            "outcome",
            CallOutcome::ALL.map(|o| (o.label(), load(&self.calls_total[o as usize]))),
        );

        header(
            &mut out,
            "sip_messages_total",
            "counter",
            "SIP messages by direction and method or status code.",
        );
        for ((dir, kind), n) in lock(&self.sip_messages).iter() {
            let labels = format!("dir=\"{dir}\",kind=\"{}\"", escape_label(kind));
            line(&mut out, "sip_messages_total", &labels, *n);
        }

        header(
            &mut out,
            "sip_malformed_total",
            "counter",
            "Malformed SIP input dropped without an answer, by transport.",
        );
        for (t, n) in lock(&self.sip_malformed).iter() {
            line(
                &mut out,
                "sip_malformed_total",
                &format!("transport=\"{t}\""),
                *n,
            );
        }

        header(
            &mut out,
            "sip_bad_requests_total",
            "counter",
            "SIP requests answered with 400 Bad Request.",
        );
        line(
            &mut out,
            "sip_bad_requests_total",
            "",
            load(&self.sip_bad_request),
        );

        header(
            &mut out,
            "http_responses_total",
            "counter",
            "HTTP responses by status code.",
        );
        for (s, n) in lock(&self.http_responses).iter() {
            line(
                &mut out,
                "http_responses_total",
                &format!("status=\"{s}\""),
                *n,
            );
        }

        header(
            &mut out,
            "auth_failures_total",
            "counter",
            "Requests refused for a missing or bad bearer token.",
        );
        line(
            &mut out,
            "auth_failures_total",
            "",
            load(&self.auth_failures),
        );

        header(
            &mut out,
            "media_packets_relayed_total",
            "counter",
            "RTP packets relayed, by direction.",
        );
        line(
            &mut out,
            "media_packets_relayed_total",
            "dir=\"sip_to_quic\"",
            load(&self.rtp_sip_to_quic),
        );
        line(
            &mut out,
            "media_packets_relayed_total",
            "dir=\"quic_to_sip\"",
            load(&self.rtp_quic_to_sip),
        );

        let q = *self.legacy.lock().unwrap_or_else(|e| e.into_inner());
        header(
            &mut out,
            "legacy_rtp_received_total",
            "counter",
            "RTP packets received on legacy legs of ended calls (RTCP receive statistics).",
        );
        line(&mut out, "legacy_rtp_received_total", "", q.received);
        header(
            &mut out,
            "legacy_rtp_lost_total",
            "counter",
            "RTP packets lost on legacy legs of ended calls (RFC 3550 A.3).",
        );
        line(&mut out, "legacy_rtp_lost_total", "", q.lost);
        header(
            &mut out,
            "legacy_jitter_ms",
            "summary",
            "Interarrival jitter of each ended call's legacy leg at its end (RFC 3550 A.8).",
        );
        line(&mut out, "legacy_jitter_ms_sum", "", q.jitter_ms_sum);
        line(&mut out, "legacy_jitter_ms_count", "", q.calls);
        header(
            &mut out,
            "legacy_rtt_ms",
            "summary",
            "Round-trip time to the legacy peer from its RTCP reports, per ended call that had one.",
        );
        line(&mut out, "legacy_rtt_ms_sum", "", q.rtt_ms_sum);
        line(&mut out, "legacy_rtt_ms_count", "", q.rtt_count);
        header(
            &mut out,
            "rtcp_packets_sent_total",
            "counter",
            "RTCP reports riptide generated toward legacy peers.",
        );
        line(
            &mut out,
            "rtcp_packets_sent_total",
            "",
            load(&self.rtcp_sent),
        );

        header(
            &mut out,
            "media_quic_flushes_total",
            "counter",
            "Batches of media datagrams handed to QUIC together (datagrams per batch = relayed sip_to_quic / this).",
        );
        line(
            &mut out,
            "media_quic_flushes_total",
            "",
            load(&self.quic_flushes),
        );

        header(
            &mut out,
            "media_quic_lost_packets_total",
            "counter",
            "QUIC packets declared lost on connections that carry media (sampled about once a second).",
        );
        line(
            &mut out,
            "media_quic_lost_packets_total",
            "",
            load(&self.quic_lost_packets),
        );
        header(
            &mut out,
            "media_quic_congestion_events_total",
            "counter",
            "Congestion events on connections that carry media (sampled about once a second).",
        );
        line(
            &mut out,
            "media_quic_congestion_events_total",
            "",
            load(&self.quic_congestion_events),
        );
        header(
            &mut out,
            "media_quic_cwnd_bytes",
            "gauge",
            "Congestion window of the media connection sampled last.",
        );
        line(&mut out, "media_quic_cwnd_bytes", "", load(&self.quic_cwnd));
        header(
            &mut out,
            "media_quic_datagram_send_space_bytes",
            "gauge",
            "Free space in the datagram send queue of the media connection sampled last.",
        );
        line(
            &mut out,
            "media_quic_datagram_send_space_bytes",
            "",
            load(&self.quic_send_space),
        );
        header(
            &mut out,
            "media_quic_rtt_microseconds",
            "gauge",
            "Smoothed RTT of the media connection sampled last.",
        );
        line(
            &mut out,
            "media_quic_rtt_microseconds",
            "",
            load(&self.quic_rtt_us),
        );

        counters(
            &mut out,
            "answers_held_total",
            "Answers from a peer gateway held back until the call's media stream was bound, by how the wait ended.",
            "outcome",
            AnswerHold::ALL.map(|o| (o.label(), load(&self.answers_held[o as usize]))),
        );

        counters(
            &mut out,
            "sip_trunk_failovers_total",
            "INVITEs sent on to a trunk's (or a redirect target's) next address (ADR 0020), by why the one before failed.",
            "reason",
            Failover::ALL.map(|w| (w.label(), load(&self.trunk_failovers[w as usize]))),
        );

        let trunks = lock(&self.trunk_addresses);
        for (name, help, up) in [
            (
                "sip_trunk_addresses",
                "Addresses of each trunk with ping_secs set.",
                false,
            ),
            (
                "sip_trunk_addresses_up",
                "Of those, the ones whose last OPTIONS ping was answered (other than 408, 503 or 504); the others are tried last.",
                true,
            ),
        ] {
            if trunks.is_empty() {
                break;
            }
            header(&mut out, name, "gauge", help);
            for (trunk, (all, n_up)) in trunks.iter() {
                let labels = format!("trunk=\"{}\"", escape_label(trunk));
                line(&mut out, name, &labels, if up { *n_up } else { *all });
            }
        }
        drop(trunks);

        header(
            &mut out,
            "rtcp_packets_received_total",
            "counter",
            "RTCP packets received and terminated.",
        );
        line(
            &mut out,
            "rtcp_packets_received_total",
            "",
            load(&self.rtcp_received),
        );

        header(
            &mut out,
            "sip_ended_dialogs_evicted_total",
            "counter",
            "Ended INVITEs or dialogs forgotten before 64*T1 because their table (sip.max_calls x 32) was full: a late 2xx for one gets no ACK or BYE (ADR 0024).",
        );
        line(
            &mut out,
            "sip_ended_dialogs_evicted_total",
            "",
            load(&self.ended_dialogs_evicted),
        );

        header(
            &mut out,
            "media_timeouts_total",
            "counter",
            "Answered calls ended because nothing came from their SIP peer for [media] timeout_secs (hold_timeout_secs while held).",
        );
        line(
            &mut out,
            "media_timeouts_total",
            "",
            load(&self.media_timeouts),
        );

        header(
            &mut out,
            "sip_session_expired_total",
            "counter",
            "Answered calls ended because their SIP session was not refreshed within its Session-Expires interval (RFC 4028).",
        );
        line(
            &mut out,
            "sip_session_expired_total",
            "",
            load(&self.session_expired),
        );

        counters(
            &mut out,
            "media_packets_dropped_total",
            "Media packets not relayed, by reason.",
            "reason",
            DropReason::ALL.map(|r| (r.label(), load(&self.media_dropped[r as usize]))),
        );
        out
    }
}

/// A panic elsewhere while holding a metrics lock must not take metrics down with it: the maps
/// only hold counters, which stay meaningful.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP riptide_{name} {help}\n# TYPE riptide_{name} {kind}"
    );
}

/// A counter with one line per value of a fixed label set: `key="label" value`.
fn counters<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    key: &str,
    rows: [(&str, u64); N],
) {
    header(out, name, "counter", help);
    for (label, value) in rows {
        line(out, name, &format!("{key}=\"{label}\""), value);
    }
}

fn line(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    let _ = if labels.is_empty() {
        writeln!(out, "riptide_{name} {value}")
    } else {
        writeln!(out, "riptide_{name}{{{labels}}} {value}")
    };
}

/// SIP method names come from the network; escape them per the exposition format.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Parses exposition text into `name{labels}` → value, checking every sample has a TYPE.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut typed = std::collections::HashSet::new();
        let mut samples = HashMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap().to_string();
                let kind = it.next().unwrap();
                assert!(
                    kind == "counter" || kind == "gauge" || kind == "summary",
                    "{l}"
                );
                typed.insert(name);
                continue;
            }
            if l.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = l.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(name.starts_with("riptide_"), "{l}");
            // A summary's samples are NAME_sum and NAME_count.
            let base = name
                .strip_suffix("_sum")
                .or_else(|| name.strip_suffix("_count"))
                .filter(|b| typed.contains(*b))
                .unwrap_or(name);
            assert!(typed.contains(base), "sample before its TYPE: {l}");
            samples.insert(series.to_string(), value.parse::<f64>().unwrap());
        }
        samples
    }

    #[test]
    fn render_reports_what_was_counted() {
        let m = Metrics::default();
        m.call_started();
        m.call_started();
        m.call_ended(CallOutcome::Answered);
        m.sip_message(Dir::In, "INVITE");
        m.sip_message(Dir::In, "INVITE");
        m.sip_message(Dir::Out, "200");
        m.sip_message(Dir::In, "WE\"IRD");
        m.sip_malformed("udp");
        m.sip_bad_request();
        m.http_requests(401);
        m.auth_failures();
        m.rtp_relayed(true);
        m.rtp_relayed(true);
        m.rtp_relayed(false);
        m.media_drop(DropReason::WrongSource);
        m.media_port_pairs.store(10_000, Ordering::Relaxed);
        m.media_port_pairs_held.store(3, Ordering::Relaxed);
        m.legacy_call_stats(&crate::media::rtcp::LegStats {
            packets_received: 100,
            packets_lost: 3,
            jitter_ms: 2.5,
            rtt_ms: Some(40.0),
            ..Default::default()
        });

        let s = parse(&m.render());
        assert_eq!(s["riptide_media_port_pairs"], 10_000.0);
        assert_eq!(s["riptide_media_port_pairs_held"], 3.0);
        assert_eq!(s["riptide_legacy_rtp_received_total"], 100.0);
        assert_eq!(s["riptide_legacy_rtp_lost_total"], 3.0);
        assert_eq!(s["riptide_legacy_jitter_ms_sum"], 2.5);
        assert_eq!(s["riptide_legacy_rtt_ms_count"], 1.0);
        assert_eq!(s["riptide_calls_active"], 1.0);
        assert_eq!(s["riptide_calls_total{outcome=\"answered\"}"], 1.0);
        assert_eq!(s["riptide_calls_total{outcome=\"noanswer\"}"], 0.0);
        assert_eq!(
            s["riptide_sip_messages_total{dir=\"in\",kind=\"INVITE\"}"],
            2.0
        );
        assert_eq!(
            s["riptide_sip_messages_total{dir=\"out\",kind=\"200\"}"],
            1.0
        );
        assert_eq!(
            s["riptide_sip_messages_total{dir=\"in\",kind=\"WE\\\"IRD\"}"],
            1.0
        );
        assert_eq!(s["riptide_sip_malformed_total{transport=\"udp\"}"], 1.0);
        assert_eq!(s["riptide_sip_bad_requests_total"], 1.0);
        assert_eq!(s["riptide_http_responses_total{status=\"401\"}"], 1.0);
        assert_eq!(s["riptide_auth_failures_total"], 1.0);
        assert_eq!(
            s["riptide_media_packets_relayed_total{dir=\"sip_to_quic\"}"],
            2.0
        );
        assert_eq!(
            s["riptide_media_packets_relayed_total{dir=\"quic_to_sip\"}"],
            1.0
        );
        assert_eq!(
            s["riptide_media_packets_dropped_total{reason=\"wrong_source\"}"],
            1.0
        );
        assert_eq!(
            s["riptide_media_packets_dropped_total{reason=\"malformed\"}"],
            0.0
        );
    }

    #[test]
    fn sip_kinds_are_bounded() {
        let m = Metrics::default();
        for i in 0..(MAX_SIP_KINDS + 50) {
            m.sip_message(Dir::In, &format!("X{i}"));
        }
        let s = parse(&m.render());
        let kinds = s
            .keys()
            .filter(|k| k.starts_with("riptide_sip_messages_total"))
            .count();
        assert_eq!(kinds, MAX_SIP_KINDS + 1);
        assert_eq!(
            s["riptide_sip_messages_total{dir=\"in\",kind=\"other\"}"],
            50.0
        );
    }

    /// docs/architecture.md explains every drop reason an operator can see.
    #[test]
    fn every_drop_reason_is_explained_in_the_architecture_doc() {
        let doc = include_str!("../docs/architecture.md");
        for r in DropReason::ALL {
            assert!(
                doc.contains(&format!("| `{}` |", r.label())),
                "docs/architecture.md has no row for reason=\"{}\"",
                r.label()
            );
        }
    }
}
