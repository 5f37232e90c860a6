//! Media: per call, a legacy RTP endpoint (UDP) relayed to and from QUIC datagrams.
//!
//! Wire format on the QUIC side (docs/protocol.md, "Media"): each QUIC DATAGRAM frame carries an
//! RFC 9297 HTTP datagram whose Quarter Stream ID is the call's `{call}/media` CONNECT stream id / 4,
//! followed by a RoQ flow identifier (varint: 0 = RTP, 1 = RTCP) and the RTP/RTCP packet verbatim.

pub mod dtls;
pub mod dtmf;
pub mod hub;
pub mod ice;
pub mod leg;
#[doc(hidden)]
pub mod loopback;
#[doc(hidden)]
pub mod poller;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod stale;

pub use hub::MediaHub;

/// Asks the CPU to start loading the cache lines of the `bytes` bytes at `p`, so that a later
/// access does not wait for memory. Only a hint: it changes no result, and any address will do
/// (a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = (p as usize).wrapping_add(bytes);
        let mut line = (p as usize) & !63;
        while line < end {
            // SAFETY: SSE is part of the x86_64 baseline, and PREFETCHT0 reads no memory
            // architecturally: it cannot fault, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

pub use crate::bridge::secure::{LegCrypto, LegIce, Negotiated};
use crate::CallKey;
use std::net::SocketAddr;

/// Commands from the call engine to the media hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCmd {
    /// Bind the legacy RTP endpoint for a call at `port` (RTCP on `port + 1` unless muxed).
    OpenLegacy { call: CallKey, port: u16 },
    /// Where to send RTP toward the legacy side, from the remote SDP. With latching on, the
    /// address is replaced by the source of the first RTP packet received.
    SetRemote {
        call: CallKey,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
        rtcp_mux: bool,
        latching: bool,
    },
    /// How the legacy leg's packets are protected and where ICE lets them go, after an SDP
    /// offer/answer round. Repeating the same values changes nothing (no rekey).
    Secure {
        call: CallKey,
        negotiated: Box<Negotiated>,
    },
    /// The negotiated codec's RTP clock rate and the telephone-event payload type (RTCP
    /// statistics; DTMF).
    SetCodec {
        call: CallKey,
        clock_rate: u32,
        dtmf_pt: Option<u8>,
        /// Telephone-events from the HTTP/3 side go to the legacy peer as SIP INFO instead.
        dtmf_as_info: bool,
    },
    /// The payload type numbers to rewrite between the HTTP/3 side and the legacy peer, after
    /// an SDP offer/answer round (replaces the last map; an identity map rewrites nothing).
    MapPayloadTypes { call: CallKey, map: rtp::PayloadMap },
    /// Play one DTMF key toward the HTTP/3 side as RFC 4733 events (it arrived as SIP INFO).
    SendDtmf { call: CallKey, digit: dtmf::Digit },
    /// Report [`MediaEvent::Silent`] once nothing (RTP, RTCP) was heard from the legacy peer for
    /// `limit` (`None`: stop watching). Each command starts the watch over.
    WatchSilence {
        call: CallKey,
        limit: Option<std::time::Duration>,
    },
    /// Reflect every datagram received for this call back to its sender (the built-in echo service).
    Echo { call: CallKey },
    /// Tear the call's media down and release its port.
    Close { call: CallKey },
}

/// Events from the media hub to the call engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The port could not be bound; the engine fails the call.
    BindFailed {
        call: CallKey,
        port: u16,
        reason: String,
    },
    /// The leg's media security failed (DTLS fingerprint mismatch or handshake failure,
    /// unusable keys); the engine ends the call.
    SecurityFailed { call: CallKey, reason: String },
    /// Nothing was heard from the legacy peer for `silent_for`, at least the watched limit
    /// ([`MediaCmd::WatchSilence`]); reported once per watch.
    Silent {
        call: CallKey,
        silent_for: std::time::Duration,
    },
    /// A DTMF key seen in a telephone-event stream: from the legacy peer, or (legs with
    /// `dtmf = "info"`) on its way to it.
    Dtmf {
        call: CallKey,
        digit: dtmf::Digit,
        toward_legacy: bool,
    },
}
