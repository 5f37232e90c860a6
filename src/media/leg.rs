//! One call's legacy (SIP-side) media endpoint, sans-IO.
//!
//! Everything that arrives on the call's RTP socket is demultiplexed by its first byte (RFC 7983):
//! STUN to the ICE agent, DTLS records to the DTLS-SRTP association, RTP/RTCP to SRTP and on.
//! What riptide sends toward the legacy peer goes through [`LegacyLeg::on_send`], which decides
//! the destination and protects the packet:
//!
//! - **Destination.** With ICE, only the address the agent selected and whose consent is fresh
//!   (RFC 8445, RFC 7675): nothing before a check passed, nothing after consent lapsed. Without
//!   ICE, the SDP address, or with latching the source of the peer's first authenticated packet,
//!   moved to a new source once the latched one went quiet (ADR 0028).
//! - **Protection.** Plain, SDES-keyed SRTP (keys from the SDP), or DTLS-SRTP (keys exported from
//!   the handshake, once the peer's certificate matched its `a=fingerprint`). A secured leg never
//!   sends plain RTP: until its keys exist, media is dropped and counted.
//!
//! A leg starts unsecured and without a remote address, so nothing is sent or relayed until the
//! engine's `SetRemote`/`Secure` commands arrive.

use super::dtls::{DtlsEndpoint, DtlsIdentity, DtlsRole, DtlsState, Fingerprint};
use super::dtmf::{Digit, DigitDetector};
use super::ice::{IceAgent, IceCredentials, IceMode, IceState};
use super::rtcp::{LegRtcp, LegStats};
use super::rtp::{self, PacketKind, PayloadMap, PayloadTables, ToPeer};
use super::srtp::SrtpSession;
use super::{LegCrypto, LegIce};
use crate::metrics::DropReason;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// How long a latched source must have sent nothing, while RTP came from a new source, before
/// the latch follows the new one.
pub const RELATCH_QUIET: Duration = Duration::from_secs(1);
/// The new source must keep sending meanwhile: no gap longer than this between its packets ...
const RELATCH_GAP: Duration = Duration::from_millis(250);
/// ... and at least this many packets.
const RELATCH_PACKETS: u32 = 10;
/// Until the call is answered and for this long after, media from the exact address the
/// peer's SDP gave takes the latch from whatever source got there first (ADR 0032); later,
/// only the usual following of a moved peer applies.
pub const SDP_WINS_FOR: Duration = Duration::from_secs(2);

/// On a DTLS server leg without ICE, how long an unfinished handshake keeps the source it
/// latched against a ClientHello from another source (ADR 0032). A real peer's handshake
/// finishes within a few round trips; one that latched a stranger's single ClientHello (whose
/// HelloVerifyRequest rtc-dtls never retransmits, so it neither fails nor times out) gives way
/// to the peer's next retransmission.
pub const DTLS_HOLD: Duration = Duration::from_secs(2);

/// A DTLS leg whose handshake has not finished this long after the peer's SDP fails, with the
/// last failure of an association with another source as its reason when there was one.
pub const DTLS_DEADLINE: Duration = Duration::from_secs(30);

/// A source that may take a latched leg over (see [`LegacyLeg::may_move_to`]).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    src: SocketAddr,
    since: Instant,
    last: Instant,
    packets: u32,
    /// The latched source's signs of life ([`LegacyLeg::life_counts`]) when it started.
    counts: (u64, u64),
}

/// A packet on its way through the leg: the received or given bytes as they are (plain legs),
/// or the buffer SRTP produced (secured legs), without a second copy.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Borrowed(&'a [u8]),
    Owned(BytesMut),
}

impl std::ops::Deref for Packet<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Packet::Borrowed(b) => b,
            Packet::Owned(b) => b,
        }
    }
}

/// What became of a received datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv<'a> {
    /// An RTP packet (decrypted when the leg is secured) to relay.
    Rtp(Packet<'a>),
    /// An RTCP packet (decrypted), terminated on this leg.
    Rtcp(Packet<'a>),
    /// STUN or DTLS, consumed here; answers may be waiting in [`LegacyLeg::poll_transmit`].
    Consumed,
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, Default)]
struct Remote {
    /// Where media goes without ICE: the SDP address, or the latched source.
    rtp: Option<SocketAddr>,
    /// The address the remote SDP gave.
    sdp: Option<SocketAddr>,
    latching: bool,
    latched: bool,
}

enum Keys {
    Plain,
    /// Waiting for DTLS: media is dropped both ways.
    Pending,
    Srtp(Box<SrtpSession>),
}

/// The legacy side of one call.
///
/// `repr(C)`, fields in this order: what every RTP packet touches comes first, the RTCP
/// state's own hot part last among them ([`LegacyLeg::HOT_BYTES`]; the relay prefetches them,
/// ADR 0017).
#[repr(C)]
pub struct LegacyLeg {
    keys: Keys,
    remote: Remote,
    ice: Option<Box<IceAgent>>,
    // Boxed, like `applied` below: most legs have neither, and inline they would cost every call
    // their full size (about 1.3 KiB together).
    dtls: Option<Box<DtlsEndpoint>>,
    /// Payload types the peer's SDP numbers differently from the HTTP/3 side (rare: boxed, and
    /// `None` costs the packet one test).
    payload_types: Option<Box<PayloadTables>>,
    failed: bool,
    /// RTCP shares the RTP port (RFC 5761).
    mux: bool,
    /// Telephone-events toward the peer become SIP INFO (the engine sends them): asked for
    /// (`info_asked`), or the peer's SDP did not take telephone-event.
    dtmf_as_info: bool,
    /// RFC 4733 payload type: its packets repeat timestamps and would inflate jitter.
    dtmf_pt: Option<u8>,
    /// Keys seen, `true` when on their way to the peer.
    digits: Vec<(Digit, bool)>,
    /// RTCP is terminated here: our receive statistics and reports (RFC 3550, RFC 7667 §3.2.2).
    rtcp: LegRtcp,

    // Not touched per packet from here on.
    /// How long the peer may stay silent before the engine is told ([`LegacyLeg::watch_silence`]).
    silence_limit: Option<std::time::Duration>,
    /// When the peer was last seen alive: the timer pass that found its counts moved (RTP it
    /// sent, see `LegRtcp`, and `signs`), or the start of the watch. Sampled by the timers
    /// rather than written per packet, so the per-packet part of the leg stays as it was.
    heard: Instant,
    /// The counts at that pass.
    heard_counts: (u64, u64),
    /// Signs of life other than its RTP: its telephone-events, RTCP that came from the peer and
    /// made sense, and STUN the ICE agent accepted.
    signs: u64,
    /// The silence was found and not yet taken ([`LegacyLeg::take_silence`]); `silence_told`
    /// once it was.
    silence: Option<std::time::Duration>,
    silence_told: bool,
    /// When the unfinished DTLS association latched its source ([`DTLS_HOLD`]).
    dtls_latched: Option<Instant>,
    /// When the handshake must have finished ([`DTLS_DEADLINE`]), once the SDP is known ...
    dtls_deadline: Option<Instant>,
    /// ... and why an association with another source failed meanwhile.
    dtls_failure: Option<String>,
    /// The trunk's `dtmf = "info"`.
    info_asked: bool,
    /// When the call was answered (the first [`LegacyLeg::watch_silence`]): the SDP address's
    /// claim on the latch ends [`SDP_WINS_FOR`] later.
    answered: Option<Instant>,
    /// The security last applied, to tell a repeated command from a change.
    applied: Option<Box<(LegCrypto, Option<LegIce>)>>,
    /// A security failure not yet reported to the engine.
    failure: Option<String>,
    /// A latched leg's candidate new source ([`LegacyLeg::may_move_to`]).
    moving: Option<Candidate>,
    /// Where the remote SDP takes RTCP without rtcp-mux (`a=rtcp`, RFC 3605, or the RTP port
    /// + 1) ...
    rtcp_sdp: Option<SocketAddr>,
    /// ... and, on a latching leg, where the peer's last RTCP came from: reports go back there
    /// (symmetric RTCP, RFC 4961), which is where its NAT lets them in.
    rtcp_heard: Option<SocketAddr>,
    /// ICE state last seen, to log transitions once.
    ice_state: Option<IceState>,
    rtcp_ssrc: u32,
    clock_rate: u32,
    /// Reports (plaintext) waiting for [`LegacyLeg::poll_transmit`].
    reports: Vec<Vec<u8>>,
    /// The wall clock at one monotonic instant, for RTCP's NTP timestamps: the leg reads no
    /// clock of its own.
    wall_anchor: (Instant, SystemTime),
    /// Keys in the peer's telephone-events (for `dtmf` events) ...
    detect_in: DigitDetector,
    /// ... and in those toward it when they go as INFO.
    detect_out: DigitDetector,
    /// Our own telephone-event stream toward the HTTP/3 side (keys that came as SIP INFO): its
    /// own SSRC, so the relayed stream's numbering is untouched.
    dtmf_out: (u32, u16, u32),
}

/// A datagram the leg wants sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
    /// Send from the call's RTCP socket (port + 1): an RTCP report on a leg without rtcp-mux.
    pub from_rtcp_port: bool,
}

impl LegacyLeg {
    /// Bytes from the start that the per-packet paths touch.
    pub const HOT_BYTES: usize = std::mem::offset_of!(LegacyLeg, rtcp) + LegRtcp::HOT_BYTES;

    /// `now` and `wall` are the same moment on the monotonic and the wall clock.
    pub fn new(latching: bool, now: Instant, wall: SystemTime) -> LegacyLeg {
        let rtcp_ssrc = rand::random::<u32>();
        LegacyLeg {
            rtcp: LegRtcp::new(rtcp_ssrc, cname(rtcp_ssrc), 8000, now),
            rtcp_ssrc,
            clock_rate: 8000,
            dtmf_pt: None,
            mux: false,
            reports: Vec::new(),
            wall_anchor: (now, wall),
            dtmf_as_info: false,
            detect_in: DigitDetector::new(8000),
            detect_out: DigitDetector::new(8000),
            digits: Vec::new(),
            dtmf_out: (rand::random(), rand::random(), rand::random()),
            remote: Remote {
                latching,
                ..Remote::default()
            },
            applied: None,
            moving: None,
            rtcp_sdp: None,
            rtcp_heard: None,
            keys: Keys::Plain,
            dtls: None,
            payload_types: None,
            ice: None,
            failure: None,
            failed: false,
            ice_state: None,
            heard: now,
            heard_counts: (0, 0),
            signs: 0,
            silence_limit: None,
            silence: None,
            silence_told: false,
            dtls_latched: None,
            dtls_deadline: None,
            dtls_failure: None,
            info_asked: false,
            answered: None,
        }
    }

    /// Reports the peer's silence ([`LegacyLeg::take_silence`]) once nothing was heard from it
    /// for `limit` (`None`: never). The watch starts over from `now`.
    pub fn watch_silence(&mut self, now: Instant, limit: Option<std::time::Duration>) {
        self.answered.get_or_insert(now);
        self.silence_limit = limit;
        self.heard = now;
        self.heard_counts = self.life_counts();
        self.silence = None;
        self.silence_told = false;
    }

    /// What the peer has sent that shows it is there: RTP received, other signs.
    fn life_counts(&self) -> (u64, u64) {
        (self.rtcp.stats().packets_received, self.signs)
    }

    /// How long the peer had been silent when its silence passed the limit; once.
    pub fn take_silence(&mut self) -> Option<std::time::Duration> {
        self.silence.take()
    }

    /// When the peer's silence passes the limit, if it is watched (a limit beyond what an
    /// `Instant` can hold is never).
    fn silence_deadline(&self) -> Option<Instant> {
        self.silence_limit
            .filter(|_| !self.silence_told)
            .and_then(|l| self.heard.checked_add(l))
    }

    /// The remote SDP's addresses (RTP, and RTCP without rtcp-mux). A latched source survives
    /// a repeated one (re-INVITE with the same SDP); a new address starts latching over.
    pub fn set_remote(
        &mut self,
        rtp: SocketAddr,
        rtcp: Option<SocketAddr>,
        latching: bool,
        mux: bool,
    ) {
        self.mux = mux;
        let r = &mut self.remote;
        // The first SDP is a move too: nothing latched before it counts.
        let moved = r.sdp.is_none_or(|a| a != rtp);
        r.sdp = Some(rtp);
        if !(latching && r.latched && !moved) {
            r.rtp = Some(rtp);
            r.latched = false;
            self.rtcp_heard = None;
        }
        r.latching = latching;
        self.rtcp_sdp = rtcp;
    }

    /// The negotiated codec's RTP clock rate and the telephone-event payload type, for RTCP
    /// statistics (a new clock rate restarts them) and DTMF; whether keys toward the peer go as
    /// SIP INFO (they also do when its SDP did not take telephone-event, see
    /// [`LegacyLeg::map_payload_types`]).
    pub fn set_codec(
        &mut self,
        now: Instant,
        clock_rate: u32,
        dtmf_pt: Option<u8>,
        dtmf_as_info: bool,
    ) {
        self.dtmf_pt = dtmf_pt;
        self.info_asked = dtmf_as_info;
        self.choose_dtmf_path();
        if clock_rate != self.clock_rate && clock_rate != 0 {
            self.clock_rate = clock_rate;
            self.rtcp = LegRtcp::new(self.rtcp_ssrc, cname(self.rtcp_ssrc), clock_rate, now);
            self.detect_in = DigitDetector::new(clock_rate);
            self.detect_out = DigitDetector::new(clock_rate);
        }
    }

    /// The payload type numbers to rewrite from now on (see [`PayloadMap`]). The rest of the leg
    /// (telephone-event detection, statistics) sees the HTTP/3 side's numbers: packets from the
    /// peer are rewritten first, packets toward it last.
    pub fn map_payload_types(&mut self, map: &PayloadMap) {
        self.payload_types = PayloadTables::new(map);
        self.choose_dtmf_path();
    }

    /// Keys toward a peer whose SDP did not take telephone-event would be held back (RFC 3264
    /// §6.1) and lost: they go as SIP INFO instead, as a trunk with `dtmf = "info"` has them.
    fn choose_dtmf_path(&mut self) {
        let refused = match (self.dtmf_pt, &self.payload_types) {
            (Some(pt), Some(t)) => t.refuses(pt),
            _ => false,
        };
        self.dtmf_as_info = self.info_asked || refused;
    }

    /// DTMF keys seen since the last call, `true` for those on their way to the peer.
    pub fn take_digits(&mut self) -> Vec<(Digit, bool)> {
        std::mem::take(&mut self.digits)
    }

    /// The RFC 4733 packets (with send offsets) that play `d` toward the HTTP/3 side; `None`
    /// when no telephone-event payload type was negotiated.
    pub fn dtmf_packets(&mut self, d: Digit) -> Option<Vec<(std::time::Duration, Vec<u8>)>> {
        let pt = self.dtmf_pt?;
        let (ssrc, seq, ts) = self.dtmf_out;
        let mut sender =
            super::dtmf::DigitSender::new(d, pt, ssrc, seq, ts, self.clock_rate, 20).ok()?;
        let packets: Vec<_> = std::iter::from_fn(|| sender.next_packet()).collect();
        let elapsed = u64::from(d.duration_ms + 100) * u64::from(self.clock_rate) / 1000;
        self.dtmf_out = (
            ssrc,
            sender.next_seq(),
            ts.wrapping_add(u32::try_from(elapsed).unwrap_or(u32::MAX)),
        );
        Some(packets)
    }

    fn is_dtmf(&self, pkt: &[u8]) -> bool {
        self.dtmf_pt.is_some() && self.dtmf_pt == pkt.get(1).map(|b| b & 0x7f)
    }

    fn wall(&self, now: Instant) -> SystemTime {
        let (at, wall) = self.wall_anchor;
        match now.checked_duration_since(at) {
            Some(d) => wall + d,
            None => wall - at.duration_since(now).min(Duration::from_secs(1 << 30)),
        }
    }

    /// This leg's RTCP statistics so far.
    pub fn stats(&self) -> LegStats {
        self.rtcp.stats()
    }

    /// A final RTCP BYE for teardown, protected as the leg's media is, and where it goes.
    pub fn bye(&mut self, now: Instant) -> Option<Transmit> {
        let bye = self.rtcp.bye(now, self.wall(now));
        self.report_transmit(now, &bye)
    }

    fn report_transmit(&mut self, now: Instant, report: &[u8]) -> Option<Transmit> {
        let (to, bytes) = self.on_send_rtcp(now, report).ok()?;
        let mux = self.mux;
        let to = if mux { to } else { self.rtcp_dest(to) };
        Some(Transmit {
            to,
            bytes: bytes.to_vec(),
            from_rtcp_port: !mux,
        })
    }

    /// Where RTCP goes without rtcp-mux, media going to `rtp`: where the peer's RTCP comes
    /// from on a latching leg; the SDP's RTCP address while media goes where the SDP said;
    /// else (a latched NAT address, ICE) the port after media's.
    fn rtcp_dest(&self, rtp: SocketAddr) -> SocketAddr {
        let next = SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1));
        if self.ice.is_some() {
            return next;
        }
        match (self.rtcp_heard, self.rtcp_sdp) {
            (Some(heard), _) => heard,
            (None, Some(sdp)) if self.remote.sdp == Some(rtp) => sdp,
            _ => next,
        }
    }

    /// Applies an offer/answer round's security. The same values again change nothing; new SDES
    /// keys rekey; a new DTLS role or fingerprint starts a new association; new remote ICE
    /// credentials restart ICE.
    pub fn secure(
        &mut self,
        now: Instant,
        crypto: LegCrypto,
        ice: Option<LegIce>,
        identity: Option<&DtlsIdentity>,
    ) {
        if self
            .applied
            .as_deref()
            .is_some_and(|(c, i)| *c == crypto && *i == ice)
        {
            return;
        }
        let (old_crypto, old_ice) = match self.applied.take().map(|b| *b) {
            Some((c, i)) => (Some(c), i),
            None => (None, None),
        };
        if old_crypto.as_ref() != Some(&crypto) {
            self.dtls = None;
            (self.dtls_latched, self.dtls_deadline, self.dtls_failure) = (None, None, None);
            match &crypto {
                LegCrypto::Plain => self.keys = Keys::Plain,
                LegCrypto::Sdes { local, remote } => match SrtpSession::new(local, remote) {
                    Ok(s) => self.keys = Keys::Srtp(Box::new(s)),
                    Err(e) => {
                        self.keys = Keys::Pending;
                        self.fail(format!("SDES keys unusable: {e}"));
                    }
                },
                LegCrypto::Dtls {
                    client,
                    fingerprints,
                } => {
                    self.keys = Keys::Pending;
                    match start_dtls(identity, *client, fingerprints, now) {
                        Ok(d) => self.dtls = Some(Box::new(d)),
                        Err(e) => self.fail(e),
                    }
                }
            }
        }
        match (&ice, old_ice.as_ref()) {
            (None, _) => self.ice = None,
            (Some(new), Some(old)) if self.ice.is_some() && new.local_ufrag == old.local_ufrag => {
                if let Some(agent) = self.ice.as_mut() {
                    agent.set_remote(
                        now,
                        IceCredentials {
                            ufrag: new.remote_ufrag.clone(),
                            pwd: new.remote_pwd.clone(),
                        },
                        new.remote_candidates.clone(),
                    );
                }
            }
            (Some(new), _) => {
                let mode = if new.lite {
                    IceMode::Lite
                } else {
                    IceMode::Full {
                        controlling: new.controlling,
                    }
                };
                self.ice = Some(Box::new(IceAgent::new(
                    mode,
                    IceCredentials {
                        ufrag: new.local_ufrag.clone(),
                        pwd: new.local_pwd.clone(),
                    },
                    IceCredentials {
                        ufrag: new.remote_ufrag.clone(),
                        pwd: new.remote_pwd.clone(),
                    },
                    new.remote_candidates.clone(),
                    now,
                )));
                self.ice_state = None;
            }
        }
        self.applied = Some(Box::new((crypto, ice)));
    }

    fn fail(&mut self, why: String) {
        if !self.failed {
            self.failed = true;
            self.failure = Some(why);
        }
    }

    /// A security failure (DTLS fingerprint mismatch, handshake failure, unusable keys) to
    /// report once; the leg sends and relays nothing after it.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Where media may go now.
    fn dest(&self, now: Instant) -> Option<SocketAddr> {
        match &self.ice {
            Some(agent) => agent.send_addr(now),
            None => self.remote.rtp,
        }
    }

    /// Whether a packet from `src` may carry media for this leg (before authentication).
    fn source_ok(&self, src: SocketAddr) -> bool {
        match &self.ice {
            Some(agent) => agent.accepts_from(src),
            None => !self.remote.latched || self.remote.rtp == Some(src),
        }
    }

    /// RTCP is a sign of the peer's life when SRTCP authenticated it, or when it comes from
    /// the peer's address (any port: RTCP may come from the one after RTP's).
    fn rtcp_from_peer(&self, src: SocketAddr) -> bool {
        match (&self.keys, &self.ice) {
            (Keys::Srtp(_), _) => true,
            (_, Some(agent)) => agent.accepts_from(src),
            _ => [self.remote.rtp, self.remote.sdp]
                .into_iter()
                .flatten()
                .any(|a| a.ip() == src.ip()),
        }
    }

    fn latch(&mut self, src: SocketAddr) {
        let r = &mut self.remote;
        if self.ice.is_none() && r.latching && !r.latched {
            r.rtp = Some(src);
            r.latched = true;
        }
    }

    /// Whether media from `src` takes the latch because it comes from the address the peer's
    /// SDP gave, while the call rings or shortly after its answer (see [`SDP_WINS_FOR`]). A
    /// peer that is not behind a NAT sends from there, so a stranger who got there first cannot
    /// keep its media; a peer behind a NAT never does, and its SDP address (a private one)
    /// cannot take the call over once it is under way.
    fn sdp_wins(&self, now: Instant, src: SocketAddr) -> bool {
        let r = &self.remote;
        self.ice.is_none()
            && r.latching
            && r.latched
            && r.sdp == Some(src)
            && self
                .answered
                .is_none_or(|at| now.saturating_duration_since(at) < SDP_WINS_FOR)
    }

    /// RTP from `src` on a latched leg, not from its latched source: whether the latch may move
    /// there (once the packet is authenticated). A peer whose NAT binding changed, or that
    /// moved its media, sends from a new address and never again from the old one; the latch
    /// follows once the latched source has shown no sign of life (RTP, telephone-events, RTCP)
    /// for [`RELATCH_QUIET`] while `src` kept sending (no gap over [`RELATCH_GAP`], at least
    /// [`RELATCH_PACKETS`]). A candidate still sending is not displaced by another source. On a
    /// plain leg only a new port of the latched IP address is followed: any host could send
    /// plain RTP, but not from the peer's address. Only packets from other sources get here:
    /// the per-packet path is unchanged.
    fn may_move_to(&mut self, now: Instant, src: SocketAddr) -> bool {
        if self.ice.is_some() || !self.remote.latching || !self.remote.latched {
            return false;
        }
        if self.sdp_wins(now, src) {
            return true;
        }
        let plain = !matches!(self.keys, Keys::Srtp(_));
        if plain && self.remote.rtp.is_none_or(|a| a.ip() != src.ip()) {
            return false;
        }
        let counts = self.life_counts();
        match self.moving.as_mut() {
            Some(c)
                if c.src == src
                    && c.counts == counts
                    && now.saturating_duration_since(c.last) <= RELATCH_GAP =>
            {
                c.last = now;
                c.packets = c.packets.saturating_add(1);
                now.saturating_duration_since(c.since) >= RELATCH_QUIET
                    && c.packets >= RELATCH_PACKETS
            }
            // Another source that is still sending keeps its place.
            Some(c) if c.src != src && now.saturating_duration_since(c.last) <= RELATCH_GAP => {
                false
            }
            // A new candidate, or the latched source spoke, or the candidate paused: start over.
            _ => {
                self.moving = Some(Candidate {
                    src,
                    since: now,
                    last: now,
                    packets: 1,
                    counts,
                });
                false
            }
        }
    }

    /// Moves the latch to `src` (see [`LegacyLeg::may_move_to`]).
    fn move_latch(&mut self, src: SocketAddr) {
        tracing::info!(from = ?self.remote.rtp, to = %src, "the SIP peer's media moved: following it");
        self.remote.rtp = Some(src);
        self.moving = None;
    }

    /// Starts loading the SRTP state [`LegacyLeg::on_recv`] reads (see
    /// [`SrtpSession::prefetch_rx`]).
    pub fn prefetch_rx(&self, deep: bool) {
        if let Keys::Srtp(s) = &self.keys {
            s.prefetch_rx(deep);
        }
    }

    /// Starts loading the SRTP state [`LegacyLeg::on_send`] reads (see
    /// [`SrtpSession::prefetch_tx`]).
    pub fn prefetch_tx(&self, deep: bool) {
        if let Keys::Srtp(s) = &self.keys {
            s.prefetch_tx(deep);
        }
    }

    /// One datagram from the legacy side. SRTP is decrypted in place: the plain RTP packet
    /// [`Recv::Rtp`] returns is a prefix of `pkt`.
    pub fn on_recv<'a>(&mut self, now: Instant, src: SocketAddr, pkt: &'a mut [u8]) -> Recv<'a> {
        if super::ice::is_stun(pkt) {
            return match self.ice.as_mut() {
                Some(agent) => match agent.handle_stun(now, src, pkt) {
                    Ok(()) => {
                        // Consent checks are what a holding ICE peer sends.
                        self.signs += 1;
                        Recv::Consumed
                    }
                    Err(e) => {
                        tracing::debug!(%src, error = %e, "STUN refused");
                        Recv::Drop(DropReason::Stun)
                    }
                },
                None => Recv::Drop(DropReason::Stun),
            };
        }
        if self.failed {
            return Recv::Drop(DropReason::Srtp);
        }
        if super::dtls::is_dtls(pkt) {
            if self.remote.sdp.is_none() {
                return Recv::Drop(DropReason::BeforeSdp);
            }
            self.arm_dtls_deadline(now);
            if !self.source_ok(src) {
                if !self.dtls_takes_over(now, src, pkt) {
                    return Recv::Drop(DropReason::WrongSource);
                }
                self.after_dtls(now);
                return Recv::Consumed;
            }
            let Some(d) = self.dtls.as_mut() else {
                return Recv::Drop(DropReason::Malformed);
            };
            // A DTLS client sent its ClientHello to the peer's address: answers come from there
            // (the peer's NAT binding, if any, is the one that packet opened), and anything from
            // elsewhere is a stranger's, however well formed (a HelloVerifyRequest needs no
            // knowledge of the ClientHello). Only a server learns its peer's address.
            let server = d.role() == DtlsRole::Server;
            if !server && self.ice.is_none() && self.remote.rtp != Some(src) {
                return Recv::Drop(DropReason::WrongSource);
            }
            let before = (d.queued(), d.state().clone());
            match d.handle_packet(now, pkt) {
                // Only a record that moved the handshake on (an answer queued, a new state)
                // latches: junk from a stranger must not.
                Ok(()) if d.queued() == before.0 && *d.state() == before.1 => {}
                Ok(()) if server && !self.remote.latched => {
                    self.latch(src);
                    self.dtls_latched = self.remote.latched.then_some(now);
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(%src, error = %e, "DTLS record refused"),
            }
            self.after_dtls(now);
            return Recv::Consumed;
        }
        let kind = rtp::classify(pkt);
        if kind == PacketKind::Invalid {
            return Recv::Drop(DropReason::Malformed);
        }
        if self.remote.sdp.is_none() {
            // Before the peer's SDP nothing tells its media from a stranger's: latching the
            // first source would hand the call to whoever probed the port first (and keep it
            // past the SDP), and without keys SRTP would be relayed as noise.
            return Recv::Drop(DropReason::BeforeSdp);
        }
        // RTCP may come from the peer's RTCP port; SRTCP authenticates it where it matters.
        let mut moves = false;
        if kind == PacketKind::Rtp && !self.source_ok(src) {
            if !self.may_move_to(now, src) {
                return Recv::Drop(DropReason::WrongSource);
            }
            moves = true;
        }
        let plain: Packet<'a> = match &mut self.keys {
            Keys::Plain => {
                if let (Some(t), PacketKind::Rtp) = (&self.payload_types, kind) {
                    t.from_peer(pkt);
                }
                Packet::Borrowed(pkt)
            }
            Keys::Pending => return Recv::Drop(DropReason::NotSecured),
            Keys::Srtp(s) if kind == PacketKind::Rtcp => match s.unprotect_rtcp(pkt) {
                Ok(b) => Packet::Owned(b),
                Err(_) => return Recv::Drop(DropReason::Srtp),
            },
            Keys::Srtp(s) => match s.unprotect_rtp_in_place(pkt) {
                Ok(n) => {
                    if let Some(t) = &self.payload_types {
                        t.from_peer(&mut pkt[..n]);
                    }
                    Packet::Borrowed(&pkt[..n])
                }
                Err(_) => {
                    if moves && self.moving.is_some_and(|c| c.src == src) {
                        // A candidate whose packets do not authenticate is nobody's media.
                        self.moving = None;
                    }
                    return Recv::Drop(DropReason::Srtp);
                }
            },
        };
        if kind == PacketKind::Rtcp {
            match self.rtcp.on_rtcp_received(now, self.wall(now), &plain) {
                Ok(()) if self.rtcp_from_peer(src) => {
                    self.signs += 1;
                    if self.remote.latching && !self.mux && self.ice.is_none() {
                        self.rtcp_heard = Some(src);
                    }
                }
                Ok(()) => {}
                Err(e) => tracing::debug!(%src, error = %e, "RTCP from the legacy peer refused"),
            }
            return Recv::Rtcp(plain);
        }
        // Only an authenticated RTP packet moves the latch.
        if moves {
            self.move_latch(src);
        } else {
            self.latch(src);
        }
        if self.is_dtmf(&plain) {
            // A sign of life too (telephone-events are not counted as RTP received).
            self.signs += 1;
            if let Some(d) = self.detect_in.on_packet(&plain) {
                self.digits.push((d, false));
            }
        } else {
            self.rtcp.on_rtp_received(now, &plain);
        }
        Recv::Rtp(plain)
    }

    /// A DTLS record from another source than the one a server leg without ICE latched, while
    /// that association has been unfinished for [`DTLS_HOLD`]: whoever got there first (a
    /// stranger, even a spoofed one: the server answers a ClientHello from anywhere) must not
    /// keep the peer's own handshake out for good. A fresh association takes the record; when
    /// that moved it on (a well-formed ClientHello, not junk), it replaces the old one and the
    /// latch moves to `src`. A handshake that is progressing finishes well within the hold, so
    /// a ClientHello from elsewhere (a stranger, a spoofed SDP address) cannot break it; once
    /// one finished nothing restarts it: the peer's fingerprint proved who is there.
    fn dtls_takes_over(&mut self, now: Instant, src: SocketAddr, pkt: &[u8]) -> bool {
        let r = &self.remote;
        if self.ice.is_some() || !r.latching || !r.latched {
            return false;
        }
        let Some(d) = self.dtls.as_ref() else {
            return false;
        };
        if *d.state() != DtlsState::Handshaking || d.role() != DtlsRole::Server {
            return false;
        }
        if self
            .dtls_latched
            .is_none_or(|at| now.saturating_duration_since(at) < DTLS_HOLD)
        {
            return false;
        }
        let Ok(mut fresh) = d.restarted(now) else {
            return false;
        };
        if fresh.handle_packet(now, pkt).is_err() || fresh.queued() == 0 {
            return false;
        }
        tracing::info!(from = ?r.rtp, to = %src, "DTLS handshake unfinished after the hold: started again with a new source");
        self.dtls = Some(Box::new(fresh));
        self.remote.rtp = Some(src);
        self.dtls_latched = Some(now);
        true
    }

    /// Arms [`DTLS_DEADLINE`] once the peer's SDP is known on a leg still waiting for its
    /// handshake (from a record, or from the timer pass: RTCP's timer runs from the SDP on).
    fn arm_dtls_deadline(&mut self, now: Instant) {
        if self.dtls_deadline.is_none()
            && self.remote.sdp.is_some()
            && self.dtls.is_some()
            && matches!(self.keys, Keys::Pending)
        {
            self.dtls_deadline = Some(now + DTLS_DEADLINE);
        }
    }

    fn after_dtls(&mut self, now: Instant) {
        let Some(d) = self.dtls.as_mut() else {
            return;
        };
        match d.state().clone() {
            DtlsState::Connected => {
                (self.dtls_latched, self.dtls_deadline) = (None, None);
                if let Some(s) = d.take_srtp() {
                    tracing::info!(suite = ?d.srtp_suite(), role = ?d.role(), "DTLS-SRTP keys ready");
                    self.keys = Keys::Srtp(Box::new(s));
                }
            }
            DtlsState::Failed(why) => {
                let r = &self.remote;
                // A handshake that never finished with a source other than the SDP address
                // (see `dtls_takes_over`): a stranger that latched first and then sent a
                // certificate that does not match must not end the call. The association
                // starts again for whoever comes next; `DTLS_DEADLINE` reports a peer that
                // never gets through (a NATed peer whose certificate really does not match).
                let stranger = self.ice.is_none()
                    && matches!(self.keys, Keys::Pending)
                    && r.latching
                    && r.latched
                    && r.rtp != r.sdp;
                if stranger {
                    if let Ok(fresh) = d.restarted(now) {
                        tracing::warn!(source = ?r.rtp, reason = %why, "DTLS handshake with a source other than the SIP peer's SDP address failed: starting again");
                        self.dtls = Some(Box::new(fresh));
                        self.remote.latched = false;
                        self.remote.rtp = self.remote.sdp;
                        self.dtls_latched = None;
                        self.dtls_failure = Some(why);
                        return;
                    }
                }
                self.keys = Keys::Pending;
                self.dtls = None;
                self.fail(format!("DTLS-SRTP failed: {why}"));
            }
            DtlsState::Handshaking => {}
        }
    }

    /// An RTP packet (plaintext) to send toward the legacy peer: where to, and the bytes —
    /// `pkt` itself on a plain leg, else the SRTP packet (or the renumbered RTP packet) written
    /// into `out`.
    pub fn on_send<'a>(
        &mut self,
        now: Instant,
        pkt: &'a [u8],
        out: &'a mut Vec<u8>,
    ) -> Result<(SocketAddr, &'a [u8]), DropReason> {
        if self.dtmf_as_info && self.is_dtmf(pkt) {
            if let Some(d) = self.detect_out.on_packet(pkt) {
                self.digits.push((d, true));
            }
            return Err(DropReason::DtmfAsInfo);
        }
        let second = match self.payload_types.as_ref().map(|t| t.to_peer(pkt)) {
            None | Some(ToPeer::Keep) => None,
            Some(ToPeer::Renumber(b)) => Some(b),
            Some(ToPeer::Refused) => return Err(DropReason::NotNegotiated),
        };
        let to = self.send_to(now)?;
        self.rtcp.on_rtp_sent(now, pkt);
        match (&mut self.keys, second) {
            (Keys::Plain, None) => Ok((to, pkt)),
            (Keys::Plain, Some(b)) => {
                out.clear();
                out.extend_from_slice(pkt);
                out[1] = b;
                Ok((to, &out[..]))
            }
            (Keys::Pending, _) => Err(DropReason::NotSecured),
            (Keys::Srtp(s), second) => {
                s.protect_rtp_into(pkt, second, out)
                    .map_err(|_| DropReason::Malformed)?;
                Ok((to, &out[..]))
            }
        }
    }

    /// Where media goes now, or why nothing may be sent.
    fn send_to(&mut self, now: Instant) -> Result<SocketAddr, DropReason> {
        if self.failed {
            return Err(DropReason::NotSecured);
        }
        self.dest(now).ok_or(if self.ice.is_some() {
            DropReason::IceUnchecked
        } else {
            DropReason::NoRoute
        })
    }

    /// An RTCP packet of ours toward the legacy peer: where to, and the bytes (SRTCP on a
    /// secured leg).
    pub fn on_send_rtcp<'a>(
        &mut self,
        now: Instant,
        pkt: &'a [u8],
    ) -> Result<(SocketAddr, Packet<'a>), DropReason> {
        let to = self.send_to(now)?;
        let bytes = match &mut self.keys {
            Keys::Plain => Packet::Borrowed(pkt),
            Keys::Pending => return Err(DropReason::NotSecured),
            Keys::Srtp(s) => Packet::Owned(s.protect_rtcp(pkt).map_err(|_| DropReason::Malformed)?),
        };
        Ok((to, bytes))
    }

    /// STUN and DTLS datagrams to send, with their destination. DTLS only ever goes where
    /// media may go (so never to an unchecked address); when there is no such address yet its
    /// flight is dropped here and the handshake's own retransmission sends it later.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let plain = |(to, bytes)| Transmit {
            to,
            bytes,
            from_rtcp_port: false,
        };
        if let Some(t) = self.ice.as_mut().and_then(|a| a.poll_transmit()) {
            return Some(plain(t));
        }
        while let Some(r) = self.reports.pop() {
            if let Some(t) = self.report_transmit(now, &r) {
                return Some(t);
            }
        }
        let dest = self.dest(now);
        let d = self.dtls.as_mut()?;
        loop {
            let pkt = d.poll_transmit()?;
            if let Some(to) = dest {
                return Some(plain((to, pkt)));
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ice = self.ice.as_ref().and_then(|a| a.poll_timeout());
        let dtls = self.dtls.as_ref().and_then(|d| d.poll_timeout());
        // Reports only once there is somewhere to send them.
        let rtcp = self.remote.sdp.map(|_| self.rtcp.poll_timeout());
        [ice, dtls, rtcp, self.silence_deadline(), self.dtls_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(a) = self.ice.as_mut() {
            a.handle_timeout(now);
            let st = a.state(now);
            if self.ice_state != Some(st) {
                match st {
                    IceState::Connected => {
                        tracing::info!(selected = ?a.selected(), "ICE connected")
                    }
                    IceState::ConsentLost => {
                        tracing::warn!(selected = ?a.selected(), "ICE consent lost: media to the peer stopped")
                    }
                    IceState::Failed => {
                        tracing::warn!("ICE failed: no candidate pair passed a check")
                    }
                    IceState::Checking => {}
                }
                self.ice_state = Some(st);
            }
        }
        if let Some(d) = self.dtls.as_mut() {
            d.handle_timeout(now);
        }
        self.after_dtls(now);
        self.arm_dtls_deadline(now);
        if self.dtls_deadline.is_some_and(|at| now >= at) && matches!(self.keys, Keys::Pending) {
            self.dtls_deadline = None;
            let why = match self.dtls_failure.take() {
                Some(f) => format!(", the last with another source: {f}"),
                None => String::new(),
            };
            self.keys = Keys::Pending;
            self.dtls = None;
            self.fail(format!(
                "DTLS-SRTP handshake not finished {} s after the peer's SDP{why}",
                DTLS_DEADLINE.as_secs()
            ));
        }
        if self.silence_limit.is_some() && !self.silence_told {
            let counts = self.life_counts();
            if counts != self.heard_counts {
                self.heard = now;
                self.heard_counts = counts;
            } else if self.silence_deadline().is_some_and(|d| now >= d) {
                self.silence = Some(now.saturating_duration_since(self.heard));
                self.silence_told = true;
            }
        }
        if self.remote.sdp.is_some() && now >= self.rtcp.poll_timeout() {
            if let Some(r) = self.rtcp.poll_report(now, self.wall(now)) {
                self.reports.push(r);
            }
        }
    }

    /// The label of the security in force, for logs.
    pub fn security_label(&self) -> &'static str {
        self.applied.as_deref().map_or("rtp", |(c, _)| c.label())
    }
}

/// RFC 7022 §4.2: a per-call random CNAME, nothing that identifies a user or host.
fn cname(ssrc: u32) -> String {
    format!("{ssrc:08x}{:08x}@riptide", rand::random::<u32>())
}

fn start_dtls(
    identity: Option<&DtlsIdentity>,
    client: bool,
    fingerprints: &[String],
    now: Instant,
) -> Result<DtlsEndpoint, String> {
    let identity = identity.ok_or("no DTLS certificate on this gateway")?;
    let fps = fingerprints
        .iter()
        .map(|f| Fingerprint::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("peer a=fingerprint: {e}"))?;
    let role = if client {
        DtlsRole::Client
    } else {
        DtlsRole::Server
    };
    DtlsEndpoint::with_fingerprints(identity, role, fps, now).map_err(|e| format!("DTLS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::srtp::{CryptoAttr, Suite};
    use std::time::Duration;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 2], p))
    }

    fn rtp(seq: u16) -> Vec<u8> {
        crate::media::rtp::pcmu_packet(seq, 0xabcd_0001)
    }

    /// A latching leg keyed with SDES (our key `key(ours)`, the peer's `key(theirs)`), told the
    /// peer's SDP address `PEER` when `remote`; and the peer's own SRTP session.
    fn sdes_leg(now: Instant, ours: u8, theirs: u8, remote: bool) -> (LegacyLeg, SrtpSession) {
        let (ours, theirs) = (key(ours), key(theirs));
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        if remote {
            leg.set_remote(addr(PEER), None, true, true);
        }
        let sdes = LegCrypto::Sdes {
            local: ours.clone(),
            remote: theirs.clone(),
        };
        leg.secure(now, sdes, None, None);
        (leg, SrtpSession::new(&theirs, &ours).unwrap())
    }

    fn key(byte: u8) -> CryptoAttr {
        CryptoAttr::generate(1, Suite::AesCm128HmacSha1_80, |b| {
            b.fill(byte);
            Ok(())
        })
        .unwrap()
    }

    /// A lite leg and a full controlling peer, wired back to back with simulated time.
    struct IcePair {
        leg: LegacyLeg,
        peer: IceAgent,
        now: Instant,
        peer_silent: bool,
    }

    const LEG: u16 = 30000;
    const PEER: u16 = 40000;

    impl IcePair {
        fn new() -> IcePair {
            let now = Instant::now();
            let leg_creds = IceCredentials::generate();
            let peer_creds = IceCredentials::generate();
            let mut leg = LegacyLeg::new(true, now, SystemTime::now());
            leg.set_remote(addr(PEER), None, true, true);
            leg.secure(
                now,
                LegCrypto::Plain,
                Some(LegIce {
                    lite: true,
                    controlling: false,
                    local_ufrag: leg_creds.ufrag.clone(),
                    local_pwd: leg_creds.pwd.clone(),
                    remote_ufrag: peer_creds.ufrag.clone(),
                    remote_pwd: peer_creds.pwd.clone(),
                    remote_candidates: vec![addr(PEER)],
                }),
                None,
            );
            let peer = IceAgent::new(
                IceMode::Full { controlling: true },
                peer_creds,
                leg_creds,
                vec![addr(LEG)],
                now,
            );
            IcePair {
                leg,
                peer,
                now,
                peer_silent: false,
            }
        }

        /// Runs both sides for `d` in 10 ms steps, delivering every datagram.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += Duration::from_millis(10);
                self.peer.handle_timeout(self.now);
                self.leg.handle_timeout(self.now);
                while let Some((to, p)) = self.peer.poll_transmit() {
                    assert_eq!(to, addr(LEG));
                    if !self.peer_silent {
                        let _ = self.leg.on_recv(self.now, addr(PEER), &mut p.clone());
                    }
                }
                while let Some(t) = self.leg.poll_transmit(self.now) {
                    assert_eq!(t.to, addr(PEER), "nothing goes anywhere else");
                    if !self.peer_silent && is_stun_packet(&t.bytes) {
                        let _ = self.peer.handle_stun(self.now, addr(LEG), &t.bytes);
                    }
                }
            }
        }
    }

    fn is_stun_packet(p: &[u8]) -> bool {
        super::super::ice::is_stun(p)
    }

    #[test]
    fn ice_leg_sends_nothing_before_a_check_and_stops_within_30_s_of_lost_consent() {
        let mut p = IcePair::new();
        assert_eq!(
            p.leg.on_send(p.now, &rtp(1), &mut Vec::new()).unwrap_err(),
            DropReason::IceUnchecked,
            "no media before any check"
        );
        p.run(Duration::from_secs(3));
        let (to, _) = p
            .leg
            .on_send(p.now, &rtp(2), &mut Vec::new())
            .expect("checked and nominated");
        assert_eq!(to, addr(PEER));
        // A long call: consent keeps being refreshed.
        p.run(Duration::from_secs(120));
        assert!(p.leg.on_send(p.now, &rtp(3), &mut Vec::new()).is_ok());
        // The peer vanishes: nothing answers our consent requests any more.
        p.peer_silent = true;
        let lapsed = p.now;
        let mut stopped = None;
        while p.now < lapsed + Duration::from_secs(40) {
            p.run(Duration::from_millis(100));
            if p.leg.on_send(p.now, &rtp(4), &mut Vec::new()).is_err() {
                stopped = Some(p.now - lapsed);
                break;
            }
        }
        let stopped = stopped.expect("media stops");
        assert!(
            stopped <= Duration::from_secs(30),
            "stopped after {stopped:?}"
        );
        assert_eq!(
            p.leg.on_send(p.now, &rtp(5), &mut Vec::new()).unwrap_err(),
            DropReason::IceUnchecked
        );
    }

    #[test]
    fn the_latch_follows_a_peer_whose_port_changed_once_the_old_one_went_quiet() {
        let mut now = Instant::now();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.secure(now, LegCrypto::Plain, None, None);
        let (first, rebound) = (addr(41000), addr(42000));
        let to = |leg: &mut LegacyLeg, now| leg.on_send(now, &rtp(0), &mut Vec::new()).unwrap().0;
        assert!(matches!(leg.on_recv(now, first, &mut rtp(1)), Recv::Rtp(_)));
        assert_eq!(to(&mut leg, now), first, "latched");
        // Both send for a while (a stray stream, or a copy): the latch stays.
        for seq in 2..200u16 {
            now += Duration::from_millis(10);
            assert!(matches!(
                leg.on_recv(now, first, &mut rtp(seq)),
                Recv::Rtp(_)
            ));
            assert_eq!(
                leg.on_recv(now, rebound, &mut rtp(seq)),
                Recv::Drop(DropReason::WrongSource)
            );
        }
        assert_eq!(to(&mut leg, now), first);
        // The NAT binding changed: only the new port sends. Dropped for a second, then followed.
        let quiet = now;
        let mut moved = None;
        for seq in 200..400u16 {
            now += Duration::from_millis(20);
            if matches!(leg.on_recv(now, rebound, &mut rtp(seq)), Recv::Rtp(_)) {
                moved = Some(now - quiet);
                break;
            }
        }
        let moved = moved.expect("the latch moves");
        assert!(
            moved >= RELATCH_QUIET && moved <= RELATCH_QUIET + Duration::from_millis(40),
            "{moved:?}"
        );
        assert_eq!(to(&mut leg, now), rebound);
        // The old port is now the stranger.
        assert_eq!(
            leg.on_recv(now, first, &mut rtp(500)),
            Recv::Drop(DropReason::WrongSource)
        );
    }

    #[test]
    fn the_latch_stays_while_its_source_sends_only_events_or_rtcp_or_a_stray_pauses() {
        let mut now = Instant::now();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.set_codec(now, 8000, Some(101), false);
        leg.secure(now, LegCrypto::Plain, None, None);
        let (peer, stray) = (addr(41000), addr(42000));
        let to = |leg: &mut LegacyLeg, now| leg.on_send(now, &rtp(0), &mut Vec::new()).unwrap().0;
        assert!(matches!(leg.on_recv(now, peer, &mut rtp(1)), Recv::Rtp(_)));
        let event = |seq: u16| {
            let mut p = rtp(seq);
            p[1] = 101;
            p.truncate(12);
            p.extend_from_slice(&[5, 0x0a, 0x01, 0x40]);
            p
        };
        let rr = || vec![0x80, 201, 0, 1, 0, 0, 0x12, 0x34];
        // A long key press (events only), then RTCP only (a peer on hold): the peer is there
        // all along, so a stray sending from another port of its address gets nothing.
        for seq in 2..400u16 {
            now += Duration::from_millis(20);
            if seq < 200 {
                let _ = leg.on_recv(now, peer, &mut event(seq));
            } else if seq % 25 == 0 {
                let _ = leg.on_recv(now, peer, &mut rr());
            }
            assert_eq!(
                leg.on_recv(now, stray, &mut rtp(seq)),
                Recv::Drop(DropReason::WrongSource),
                "packet {seq}"
            );
        }
        assert_eq!(to(&mut leg, now), peer);
        // The peer goes quiet; the stray sends a packet now and then: never a stream.
        for seq in 400..420u16 {
            now += Duration::from_millis(600);
            assert_eq!(
                leg.on_recv(now, stray, &mut rtp(seq)),
                Recv::Drop(DropReason::WrongSource)
            );
        }
        assert_eq!(to(&mut leg, now), peer);
    }

    /// RTP bleed: a stranger spraying a port range must not get a call's media, neither by
    /// being there before the peer's SDP nor by being faster than the peer after it.
    #[test]
    fn nothing_is_taken_before_the_peers_sdp_and_its_address_wins_the_latch_back() {
        let now = Instant::now();
        let stranger = SocketAddr::from(([127, 0, 0, 9], 5000));
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.secure(now, LegCrypto::Plain, None, None);
        assert_eq!(
            leg.on_recv(now, stranger, &mut rtp(1)),
            Recv::Drop(DropReason::BeforeSdp)
        );
        assert_eq!(
            leg.on_send(now, &rtp(1), &mut Vec::new()).unwrap_err(),
            DropReason::NoRoute,
            "nothing latched, nowhere to send"
        );
        leg.set_remote(addr(PEER), None, true, true);
        // A stranger faster than the peer takes the latch (it may be the peer behind a NAT) ...
        assert!(matches!(
            leg.on_recv(now, stranger, &mut rtp(2)),
            Recv::Rtp(_)
        ));
        assert_eq!(
            leg.on_send(now, &rtp(2), &mut Vec::new()).unwrap().0,
            stranger
        );
        // ... until RTP comes from the address the SDP gave.
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut rtp(3)),
            Recv::Rtp(_)
        ));
        assert_eq!(
            leg.on_send(now, &rtp(3), &mut Vec::new()).unwrap().0,
            addr(PEER)
        );
        assert_eq!(
            leg.on_recv(now, stranger, &mut rtp(4)),
            Recv::Drop(DropReason::WrongSource)
        );

        // With SDES, only an authenticated packet from the SDP address takes the latch back.
        let (mut leg, mut peer) = sdes_leg(now, 1, 2, false);
        let mut early = peer.protect_rtp(&rtp(1)).unwrap().to_vec();
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut early),
            Recv::Drop(DropReason::BeforeSdp),
            "not even the peer's own, before its SDP"
        );
        leg.set_remote(addr(PEER), None, true, true);
        let mut stranger_srtp = SrtpSession::new(&key(2), &key(1)).unwrap();
        let mut first = stranger_srtp.protect_rtp(&rtp(1)).unwrap().to_vec();
        assert!(matches!(
            leg.on_recv(now, stranger, &mut first),
            Recv::Rtp(_)
        ));
        let mut forged = rtp(2);
        forged.extend_from_slice(&[0; 10]);
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut forged),
            Recv::Drop(DropReason::Srtp)
        );
        assert_eq!(
            leg.on_send(now, &rtp(2), &mut Vec::new()).unwrap().0,
            stranger,
            "a forged packet moves nothing"
        );
        let mut good = peer.protect_rtp(&rtp(3)).unwrap().to_vec();
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut good),
            Recv::Rtp(_)
        ));
        assert_eq!(
            leg.on_send(now, &rtp(3), &mut Vec::new()).unwrap().0,
            addr(PEER)
        );
    }

    /// The SDP address's claim lasts while the call rings and shortly after its answer: a
    /// stranger that latched at the start of a long ringing loses the call to the peer's first
    /// packet, but later a packet from that address (a host on our own network with a NATed
    /// peer's private address, say) moves nothing.
    #[test]
    fn the_sdp_address_wins_the_latch_until_shortly_after_the_answer() {
        let mut now = Instant::now();
        let stranger = SocketAddr::from(([127, 0, 0, 9], 5000));
        let fresh = |now| {
            let mut leg = LegacyLeg::new(true, now, SystemTime::now());
            leg.secure(now, LegCrypto::Plain, None, None);
            leg.set_remote(addr(PEER), None, true, true);
            leg
        };
        let mut leg = fresh(now);
        assert!(matches!(
            leg.on_recv(now, stranger, &mut rtp(1)),
            Recv::Rtp(_)
        ));
        now += Duration::from_secs(20); // ringing
        leg.watch_silence(now, None); // answered
        now += SDP_WINS_FOR / 2;
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut rtp(2)),
            Recv::Rtp(_)
        ));
        assert_eq!(leg.remote.rtp, Some(addr(PEER)));

        let mut leg = fresh(now);
        assert!(matches!(
            leg.on_recv(now, stranger, &mut rtp(1)),
            Recv::Rtp(_)
        ));
        leg.watch_silence(now, None);
        now += SDP_WINS_FOR;
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut rtp(2)),
            Recv::Drop(DropReason::WrongSource)
        );
        assert_eq!(leg.remote.rtp, Some(stranger));
    }

    /// DTLS: nothing before the SDP, and junk latches nothing. A stranger's well-formed
    /// ClientHello does (it may be the peer behind a NAT), for `DTLS_HOLD` at most while its
    /// handshake does not finish.
    #[test]
    fn dtls_records_latch_only_once_taken_and_after_the_sdp() {
        let now = Instant::now();
        let stranger = SocketAddr::from(([127, 0, 0, 9], 5000));
        let ours = DtlsIdentity::generate().unwrap();
        let theirs = DtlsIdentity::generate().unwrap();
        let mut peer = dtls_client(now, &theirs, &ours);
        let hello = peer.poll_transmit().expect("the ClientHello");
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        let dtls = LegCrypto::Dtls {
            client: false,
            fingerprints: vec![theirs.fingerprint()],
        };
        leg.secure(now, dtls, None, Some(&ours));
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut hello.clone()),
            Recv::Drop(DropReason::BeforeSdp)
        );
        leg.set_remote(addr(PEER), None, true, true);
        let mut junk = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3];
        assert_eq!(leg.on_recv(now, stranger, &mut junk), Recv::Consumed);
        assert!(!leg.remote.latched, "a refused record latches nothing");
        // A stranger's well-formed ClientHello latches (it may be the peer behind a NAT).
        let mut other = dtls_client(now, &DtlsIdentity::generate().unwrap(), &ours);
        let mut other_hello = other.poll_transmit().unwrap();
        assert_eq!(leg.on_recv(now, stranger, &mut other_hello), Recv::Consumed);
        assert_eq!(leg.remote.rtp, Some(stranger));
        // Within the hold, the peer's ClientHello does not take the handshake from it; nor,
        // after the hold, does junk.
        let mut now = now;
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut hello.clone()),
            Recv::Drop(DropReason::WrongSource)
        );
        now += DTLS_HOLD;
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut junk),
            Recv::Drop(DropReason::WrongSource)
        );
        assert_eq!(leg.remote.rtp, Some(stranger));
        // The stranger sent nothing more (its HelloVerifyRequest is never retransmitted, so its
        // association neither fails nor times out): the peer's next ClientHello takes over,
        // and its handshake completes.
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut hello.clone()),
            Recv::Consumed
        );
        assert_eq!(leg.remote.rtp, Some(addr(PEER)));
        handshake(now, &mut leg, &mut peer, addr(PEER));
        assert!(
            matches!(leg.keys, Keys::Srtp(_)),
            "keys from the peer's handshake"
        );
        assert_eq!(*peer.state(), DtlsState::Connected);
        // Once it finished, nothing starts it again, however long after.
        now += DTLS_HOLD * 10;
        let mut again = dtls_client(now, &DtlsIdentity::generate().unwrap(), &ours);
        let mut again_hello = again.poll_transmit().unwrap();
        assert_eq!(
            leg.on_recv(now, stranger, &mut again_hello),
            Recv::Drop(DropReason::WrongSource)
        );
        assert_eq!(leg.remote.rtp, Some(addr(PEER)));
        leg.handle_timeout(now + DTLS_DEADLINE);
        assert!(leg.take_failure().is_none());
    }

    /// Passes DTLS datagrams between `leg` and `peer` (at `from`) until neither sends more.
    fn handshake(now: Instant, leg: &mut LegacyLeg, peer: &mut DtlsEndpoint, from: SocketAddr) {
        for _ in 0..20 {
            let mut moved = false;
            while let Some(t) = leg.poll_transmit(now) {
                if t.to == from {
                    let _ = peer.handle_packet(now, &t.bytes);
                }
                moved = true;
            }
            while let Some(mut p) = peer.poll_transmit() {
                leg.on_recv(now, from, &mut p);
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the handshake did not settle");
    }

    /// A DTLS client with its own certificate, expecting `ours`.
    fn dtls_client(now: Instant, own: &DtlsIdentity, ours: &DtlsIdentity) -> DtlsEndpoint {
        let fp = Fingerprint::parse(&ours.fingerprint()).unwrap();
        DtlsEndpoint::new(own, DtlsRole::Client, fp, now).unwrap()
    }

    #[test]
    fn a_dtls_client_takes_answers_only_from_where_its_client_hello_went() {
        let now = Instant::now();
        let stranger = SocketAddr::from(([127, 0, 0, 9], 5000));
        let ours = DtlsIdentity::generate().unwrap();
        let theirs = DtlsIdentity::generate().unwrap();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        let dtls = LegCrypto::Dtls {
            client: true,
            fingerprints: vec![theirs.fingerprint()],
        };
        leg.secure(now, dtls, None, Some(&ours));
        leg.set_remote(addr(PEER), None, true, true);
        let hello = leg.poll_transmit(now).expect("our ClientHello");
        assert_eq!(hello.to, addr(PEER));
        let server = |own: &DtlsIdentity| {
            let fp = Fingerprint::parse(&ours.fingerprint()).unwrap();
            DtlsEndpoint::new(own, DtlsRole::Server, fp, now).unwrap()
        };
        // A stranger's answer (one that saw our ClientHello, or a blind HelloVerifyRequest) is
        // not taken ...
        let mut other = server(&DtlsIdentity::generate().unwrap());
        other.handle_packet(now, &hello.bytes).unwrap();
        let mut answer = other.poll_transmit().expect("the stranger's answer");
        assert_eq!(
            leg.on_recv(now, stranger, &mut answer),
            Recv::Drop(DropReason::WrongSource)
        );
        assert!(leg.poll_transmit(now).is_none(), "nothing answers it");
        // ... the peer's, from where the ClientHello went, is.
        let mut peer = server(&theirs);
        peer.handle_packet(now, &hello.bytes).unwrap();
        let mut answer = peer.poll_transmit().expect("the peer's answer");
        assert_eq!(leg.on_recv(now, addr(PEER), &mut answer), Recv::Consumed);
        assert_eq!(leg.remote.rtp, Some(addr(PEER)));
        handshake(now, &mut leg, &mut peer, addr(PEER));
        assert_eq!(*peer.state(), DtlsState::Connected);
        assert!(matches!(leg.keys, Keys::Srtp(_)));
        assert!(leg.take_failure().is_none());
    }

    /// A DTLS server leg toward `PEER`'s SDP address, expecting `theirs`.
    fn dtls_server_leg(now: Instant, ours: &DtlsIdentity, theirs: &DtlsIdentity) -> LegacyLeg {
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        let dtls = LegCrypto::Dtls {
            client: false,
            fingerprints: vec![theirs.fingerprint()],
        };
        leg.secure(now, dtls, None, Some(ours));
        leg.set_remote(addr(PEER), None, true, true);
        leg
    }

    #[test]
    fn a_strangers_failed_dtls_handshake_starts_it_again_for_a_peer_behind_a_nat() {
        let mut now = Instant::now();
        let nat = SocketAddr::from(([192, 0, 2, 7], 40000));
        let ours = DtlsIdentity::generate().unwrap();
        let theirs = DtlsIdentity::generate().unwrap();
        let mut leg = dtls_server_leg(now, &ours, &theirs);
        // Strangers get there first and complete handshakes with certificates that are not the
        // peer's: each time the leg starts over instead of failing the call ...
        for n in 1..=5u16 {
            let stranger = SocketAddr::from(([127, 0, 0, 9], 5000 + n));
            let mut other = dtls_client(now, &DtlsIdentity::generate().unwrap(), &ours);
            handshake(now, &mut leg, &mut other, stranger);
            assert!(leg.take_failure().is_none(), "stranger {n}");
            assert!(!leg.remote.latched, "stranger {n}");
            assert_eq!(leg.remote.rtp, Some(addr(PEER)), "stranger {n}");
            now += Duration::from_secs(1);
            leg.handle_timeout(now);
        }
        // ... and the peer, behind a NAT (never from its SDP address), then gets through; a
        // spoofed ClientHello from the SDP address changes nothing afterwards.
        let mut peer = dtls_client(now, &theirs, &ours);
        handshake(now, &mut leg, &mut peer, nat);
        assert_eq!(*peer.state(), DtlsState::Connected);
        assert!(matches!(leg.keys, Keys::Srtp(_)));
        assert_eq!(leg.remote.rtp, Some(nat));
        let mut spoof = dtls_client(now, &DtlsIdentity::generate().unwrap(), &ours);
        let mut spoof_hello = spoof.poll_transmit().unwrap();
        now += DTLS_HOLD;
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut spoof_hello),
            Recv::Drop(DropReason::WrongSource)
        );
        leg.handle_timeout(now + DTLS_DEADLINE);
        assert!(leg.take_failure().is_none());

        // A peer that never gets through (here: a NATed one whose certificate does not match)
        // fails the leg DTLS_DEADLINE after its SDP, with the reason.
        let mut now = Instant::now();
        let mut leg = dtls_server_leg(now, &ours, &theirs);
        leg.handle_timeout(now);
        let armed = now;
        for _ in 0..3 {
            let mut other = dtls_client(now, &DtlsIdentity::generate().unwrap(), &ours);
            handshake(now, &mut leg, &mut other, nat);
            now += Duration::from_secs(5);
            leg.handle_timeout(now);
        }
        leg.handle_timeout(armed + DTLS_DEADLINE - Duration::from_millis(1));
        assert!(leg.take_failure().is_none(), "not before the deadline");
        assert!(leg
            .poll_timeout()
            .is_some_and(|t| t <= armed + DTLS_DEADLINE));
        leg.handle_timeout(armed + DTLS_DEADLINE);
        let failure = leg.take_failure().expect("the leg failed");
        assert!(
            failure.contains("not finished") && failure.contains("fingerprint"),
            "{failure}"
        );
        // The same handshake from the SDP address itself is not a stranger's: it fails at once.
        let mut leg = dtls_server_leg(now, &ours, &theirs);
        let mut other = dtls_client(now, &DtlsIdentity::generate().unwrap(), &ours);
        handshake(now, &mut leg, &mut other, addr(PEER));
        assert!(leg.take_failure().is_some());
    }

    #[test]
    fn a_plain_leg_never_follows_another_host_and_an_srtp_leg_only_authenticated_media() {
        let mut now = Instant::now();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.secure(now, LegCrypto::Plain, None, None);
        let stranger = SocketAddr::from(([127, 0, 0, 9], 5000));
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut rtp(1)),
            Recv::Rtp(_)
        ));
        for seq in 2..300u16 {
            now += Duration::from_millis(20);
            assert_eq!(
                leg.on_recv(now, stranger, &mut rtp(seq)),
                Recv::Drop(DropReason::WrongSource),
                "plain RTP from another host"
            );
        }
        // With SDES keys, a new address is followed, but only for packets that authenticate.
        let (mut leg, mut peer) = sdes_leg(now, 1, 2, true);
        let mut good = |seq| peer.protect_rtp(&rtp(seq)).unwrap().to_vec();
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut good(1)),
            Recv::Rtp(_)
        ));
        let forged = |seq: u16| {
            let mut p = crate::media::rtp::pcmu_packet(seq, 0xabcd_0001);
            p.extend_from_slice(&[0; 10]);
            p
        };
        for seq in 2..100u16 {
            now += Duration::from_millis(20);
            assert_ne!(
                leg.on_send(now, &rtp(0), &mut Vec::new()).unwrap().0,
                stranger
            );
            let mut f = forged(seq);
            let r = leg.on_recv(now, stranger, &mut f);
            assert!(matches!(r, Recv::Drop(_)), "{r:?}");
        }
        assert_eq!(
            leg.on_send(now, &rtp(0), &mut Vec::new()).unwrap().0,
            addr(PEER)
        );
        // The peer really moved; junk from a third address now and then does not hold it up.
        let junk = SocketAddr::from(([127, 0, 0, 10], 6000));
        let mut moved = false;
        for seq in 100..200u16 {
            now += Duration::from_millis(20);
            if seq % 10 == 0 {
                let mut f = forged(seq);
                let _ = leg.on_recv(now, junk, &mut f);
            }
            if matches!(leg.on_recv(now, stranger, &mut good(seq)), Recv::Rtp(_)) {
                moved = true;
                break;
            }
        }
        assert!(
            moved,
            "authenticated media from the new address is followed"
        );
        assert_eq!(
            leg.on_send(now, &rtp(0), &mut Vec::new()).unwrap().0,
            stranger
        );
    }

    #[test]
    fn srtp_leg_drops_tampered_replayed_and_plain_packets() {
        let now = Instant::now();
        let (ours, theirs) = (key(1), key(2));
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.secure(
            now,
            LegCrypto::Sdes {
                local: ours.clone(),
                remote: theirs.clone(),
            },
            None,
            None,
        );
        let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
        let good = peer.protect_rtp(&rtp(1)).unwrap();
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut good.to_vec()),
            Recv::Rtp(Packet::Borrowed(&rtp(1)[..]))
        );
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut good.to_vec()),
            Recv::Drop(DropReason::Srtp),
            "replay"
        );
        let mut bad = peer.protect_rtp(&rtp(2)).unwrap().to_vec();
        bad[20] ^= 0x80;
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut bad),
            Recv::Drop(DropReason::Srtp)
        );
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut rtp(3)),
            Recv::Drop(DropReason::Srtp),
            "plain RTP on an SRTP leg"
        );
        // What we send is protected, and the peer decrypts it.
        let seven = rtp(7);
        let mut buf = Vec::new();
        let (to, out) = leg.on_send(now, &seven, &mut buf).unwrap();
        assert_eq!(to, addr(PEER));
        assert_eq!(out.len(), 182);
        assert_eq!(peer.unprotect_rtp(out).unwrap().as_ref(), &rtp(7)[..]);
        // The same keys again change nothing (no new context, so no replay-window reset).
        leg.secure(
            now,
            LegCrypto::Sdes {
                local: ours,
                remote: theirs,
            },
            None,
            None,
        );
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut good.to_vec()),
            Recv::Drop(DropReason::Srtp)
        );
    }

    #[test]
    fn a_dtls_leg_without_a_certificate_fails_once_and_sends_nothing() {
        let now = Instant::now();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.secure(
            now,
            LegCrypto::Dtls {
                client: true,
                fingerprints: vec!["sha-256 00".into()],
            },
            None,
            None,
        );
        assert!(leg.take_failure().is_some());
        assert!(leg.take_failure().is_none(), "reported once");
        assert!(leg.on_send(now, &rtp(1), &mut Vec::new()).is_err());
    }

    /// Runs the leg's timers for `d` (step 100 ms); the silences it reported.
    fn run_timers(leg: &mut LegacyLeg, now: &mut Instant, d: Duration) -> Vec<Duration> {
        let until = *now + d;
        let mut told = Vec::new();
        while *now < until {
            *now += Duration::from_millis(100);
            if leg.poll_timeout().is_some_and(|t| t <= *now) {
                leg.handle_timeout(*now);
            }
            while leg.poll_transmit(*now).is_some() {}
            told.extend(leg.take_silence());
        }
        told
    }

    #[test]
    fn a_peer_silent_past_the_limit_is_reported_once_and_packets_or_a_new_watch_start_over() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        // Not watched: never reported.
        assert!(run_timers(&mut leg, &mut now, Duration::from_secs(10)).is_empty());
        leg.watch_silence(now, Some(Duration::from_secs(3)));
        assert!(
            leg.poll_timeout()
                .is_some_and(|t| t <= now + Duration::from_secs(3)),
            "the deadline is among the leg's timers"
        );
        // RTP every second for 5 s keeps it quiet; then silence.
        for seq in 0..5u16 {
            assert!(run_timers(&mut leg, &mut now, Duration::from_secs(1)).is_empty());
            assert!(matches!(
                leg.on_recv(now, addr(PEER), &mut rtp(seq)),
                Recv::Rtp(_)
            ));
        }
        let told = run_timers(&mut leg, &mut now, Duration::from_secs(10));
        assert_eq!(told.len(), 1, "once: {told:?}");
        assert!(
            told[0] >= Duration::from_secs(3) && told[0] < Duration::from_millis(3200),
            "{told:?}"
        );
        // RTP from elsewhere (another host than the latched source) is not the peer.
        leg.watch_silence(now, Some(Duration::from_secs(3)));
        let mut told = Vec::new();
        let elsewhere = SocketAddr::from(([127, 0, 0, 3], PEER + 2));
        for _ in 0..5 {
            let _ = leg.on_recv(now, elsewhere, &mut rtp(9));
            told.extend(run_timers(&mut leg, &mut now, Duration::from_secs(1)));
        }
        assert_eq!(told.len(), 1, "a stranger's packets keep nothing alive");
        // Nor does RTCP from another address: a plain leg cannot tell it from the peer's.
        leg.watch_silence(now, Some(Duration::from_secs(3)));
        let stranger = SocketAddr::from(([127, 0, 0, 3], PEER));
        let mut told = Vec::new();
        for _ in 0..5 {
            let mut rr = vec![0x80, 201, 0, 1, 0, 0, 0x12, 0x34];
            assert!(matches!(leg.on_recv(now, stranger, &mut rr), Recv::Rtcp(_)));
            told.extend(run_timers(&mut leg, &mut now, Duration::from_secs(1)));
        }
        assert_eq!(told.len(), 1, "RTCP from another host is not the peer");
        // RTCP counts as the peer: a held peer that only reports stays.
        leg.watch_silence(now, Some(Duration::from_secs(3)));
        // An empty receiver report (RFC 3550 §6.4.2): V=2, RC=0, PT=201, length 1, SSRC.
        let mut report = vec![0x80, 201, 0, 1, 0, 0, 0x12, 0x34];
        for _ in 0..6 {
            run_timers(&mut leg, &mut now, Duration::from_secs(1));
            assert!(matches!(
                leg.on_recv(now, addr(PEER), &mut report),
                Recv::Rtcp(_)
            ));
        }
        assert!(run_timers(&mut leg, &mut now, Duration::from_secs(2)).is_empty());
        // No watch: nothing more.
        leg.watch_silence(now, None);
        assert!(run_timers(&mut leg, &mut now, Duration::from_secs(10)).is_empty());
    }

    /// Where the leg's next RTCP report goes (a receiver report once RTP came in).
    fn next_report(leg: &mut LegacyLeg, now: &mut Instant) -> Transmit {
        for _ in 0..200 {
            *now += Duration::from_millis(100);
            if leg.poll_timeout().is_some_and(|t| t <= *now) {
                leg.handle_timeout(*now);
            }
            if let Some(t) = leg.poll_transmit(*now) {
                return t;
            }
        }
        panic!("no RTCP report in 20 s");
    }

    #[test]
    fn without_rtcp_mux_reports_go_to_the_sdp_rtcp_address_then_back_where_the_peer_reports_from() {
        let mut now = Instant::now();
        let report = || vec![0x80, 201, 0, 1, 0, 0, 0x12, 0x34];
        for latching in [true, false] {
            let mut leg = LegacyLeg::new(true, now, SystemTime::now());
            // RFC 3605: `a=rtcp:40011`, not the port after RTP's.
            leg.set_remote(addr(PEER), Some(addr(PEER + 11)), latching, false);
            leg.set_codec(now, 8000, None, false);
            assert!(matches!(
                leg.on_recv(now, addr(PEER), &mut rtp(1)),
                Recv::Rtp(_)
            ));
            let t = next_report(&mut leg, &mut now);
            assert_eq!((t.to, t.from_rtcp_port), (addr(PEER + 11), true));
            // The peer's reports come from another port of its address (its NAT's mapping):
            // a latching leg answers there (RFC 4961); one told not to latch keeps to the SDP.
            assert!(matches!(
                leg.on_recv(now, addr(PEER + 500), &mut report()),
                Recv::Rtcp(_)
            ));
            let t = next_report(&mut leg, &mut now);
            let want = if latching { PEER + 500 } else { PEER + 11 };
            assert_eq!(t.to, addr(want), "latching: {latching}");
            // RTCP from another host is not the peer's.
            let stranger = SocketAddr::from(([127, 0, 0, 9], 7000));
            assert!(matches!(
                leg.on_recv(now, stranger, &mut report()),
                Recv::Rtcp(_)
            ));
            assert_eq!(next_report(&mut leg, &mut now).to, addr(want));
            // A new SDP address forgets what was heard from the old one.
            leg.set_remote(addr(PEER + 100), None, latching, false);
            assert_eq!(next_report(&mut leg, &mut now).to, addr(PEER + 101));
        }
        // Media latched to a NAT address the SDP did not give: its port + 1, not the SDP's
        // RTCP address (behind the NAT), until the peer's own RTCP shows where.
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), Some(addr(PEER + 11)), true, false);
        leg.set_codec(now, 8000, None, false);
        assert!(matches!(
            leg.on_recv(now, addr(PEER + 200), &mut rtp(1)),
            Recv::Rtp(_)
        ));
        assert_eq!(next_report(&mut leg, &mut now).to, addr(PEER + 201));
    }

    #[test]
    fn rtcp_reports_go_to_the_peer_protected_and_count_what_was_received() {
        let mut now = Instant::now();
        let (mut leg, mut peer) = sdes_leg(now, 3, 4, true);
        leg.set_codec(now, 8000, Some(101), false);
        let mut reports = 0;
        for seq in 0..500u16 {
            now += Duration::from_millis(20);
            if seq % 10 != 3 {
                let p = peer.protect_rtp(&rtp(seq)).unwrap();
                assert!(matches!(
                    leg.on_recv(now, addr(PEER), &mut p.to_vec()),
                    Recv::Rtp(_)
                ));
            }
            if leg.poll_timeout().is_some_and(|t| t <= now) {
                leg.handle_timeout(now);
            }
            while let Some(t) = leg.poll_transmit(now) {
                assert_eq!(t.to, addr(PEER), "rtcp-mux: same port");
                let plain = peer
                    .unprotect_rtcp(&t.bytes)
                    .expect("SRTCP the peer can read");
                assert!(matches!(plain[1], 200 | 201));
                reports += 1;
            }
        }
        assert!((1..=5).contains(&reports), "{reports} reports in 10 s");
        let st = leg.stats();
        assert_eq!(st.packets_lost, 50);
        assert!(st.packets_received >= 449);
    }

    #[test]
    fn telephone_events_are_detected_both_ways_and_diverted_to_info_when_asked() {
        let now = Instant::now();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.secure(now, LegCrypto::Plain, None, None);
        leg.set_codec(now, 8000, Some(101), false);
        let digit = Digit::new('9', 100).unwrap();
        let packets = leg.dtmf_packets(digit).expect("telephone-event negotiated");
        assert!(packets.len() >= 5);
        // From the peer: relayed, and the key is seen once.
        for (_, p) in &packets {
            assert!(matches!(
                leg.on_recv(now, addr(PEER), &mut p.clone()),
                Recv::Rtp(_)
            ));
        }
        assert_eq!(leg.take_digits(), vec![(digit, false)]);
        // Toward an rfc4733 peer: relayed in-band, nothing to announce.
        for (_, p) in &packets {
            assert!(leg.on_send(now, p, &mut Vec::new()).is_ok());
        }
        assert!(leg.take_digits().is_empty());
        // Toward an info peer: not relayed, the key goes to the engine once.
        leg.set_codec(now, 8000, Some(101), true);
        let more = leg.dtmf_packets(Digit::new('*', 100).unwrap()).unwrap();
        for (_, p) in &more {
            assert_eq!(
                leg.on_send(now, p, &mut Vec::new()).unwrap_err(),
                DropReason::DtmfAsInfo
            );
        }
        assert_eq!(
            leg.take_digits(),
            vec![(Digit::new('*', 100).unwrap(), true)]
        );
        // Voice is untouched.
        assert!(leg.on_send(now, &rtp(9), &mut Vec::new()).is_ok());
        // Toward a peer whose SDP did not take telephone-event: INFO too, whichever of the
        // codec and the map came first, and back in-band once a later SDP takes it.
        leg.set_codec(now, 8000, Some(101), false);
        let refused = PayloadMap {
            refused: vec![101],
            ..PayloadMap::default()
        };
        leg.map_payload_types(&refused);
        let key = |leg: &mut LegacyLeg, c| {
            let packets = leg.dtmf_packets(Digit::new(c, 100).unwrap()).unwrap();
            let sent = packets
                .iter()
                .map(|(_, p)| leg.on_send(now, p, &mut Vec::new()).map(|_| ()))
                .collect::<Vec<_>>();
            (sent, leg.take_digits())
        };
        let (sent, digits) = key(&mut leg, '5');
        assert!(sent.iter().all(|r| r == &Err(DropReason::DtmfAsInfo)));
        assert_eq!(digits, vec![(Digit::new('5', 100).unwrap(), true)]);
        leg.set_codec(now, 8000, Some(101), false);
        assert!(key(&mut leg, '6')
            .0
            .iter()
            .all(|r| r == &Err(DropReason::DtmfAsInfo)));
        leg.map_payload_types(&PayloadMap::default());
        let (sent, digits) = key(&mut leg, '7');
        assert!(sent.iter().all(|r| r.is_ok()));
        assert!(digits.is_empty());
        // Without a negotiated telephone-event there is nothing to play.
        leg.set_codec(now, 8000, None, false);
        assert!(leg.dtmf_packets(digit).is_none());
    }

    /// The peer's SDP numbers telephone-event 100 where the HTTP/3 side uses 101, and our SDP
    /// gave it 96 for the peer to send with (a re-offer's numbering, echoed in our answer).
    #[test]
    fn renumbered_payload_types_are_rewritten_both_ways_on_plain_and_srtp_legs() {
        let now = Instant::now();
        let map = PayloadMap {
            to_peer: vec![(101, 100)],
            from_peer: vec![(96, 101)],
            refused: vec![13],
        };
        let event = |pt: u8, marker: bool| {
            let mut p = rtp(5);
            p[1] = pt | if marker { 0x80 } else { 0 };
            p.truncate(16);
            p[12..16].copy_from_slice(&[1, 0x80 | 10, 0, 160]); // key 1, end, 160 samples
            p
        };
        // Plain: toward the peer the number changes (marker kept) in a copy; voice goes as it is.
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        leg.secure(now, LegCrypto::Plain, None, None);
        leg.set_codec(now, 8000, Some(101), false);
        leg.map_payload_types(&map);
        let mut buf = Vec::new();
        let (te, te_off) = (event(101, true), event(101, false));
        let (_, out) = leg.on_send(now, &te, &mut buf).unwrap();
        assert_eq!(out, &event(100, true)[..]);
        let voice = rtp(6);
        let (_, out) = leg.on_send(now, &voice, &mut buf).unwrap();
        assert!(
            std::ptr::eq(out, &voice[..]),
            "unmapped packets are not copied"
        );
        let mut cn = rtp(7);
        cn[1] = 13;
        assert_eq!(
            leg.on_send(now, &cn, &mut buf).unwrap_err(),
            DropReason::NotNegotiated,
            "comfort noise the peer's SDP did not take"
        );
        // From the peer: its 96 reaches the HTTP/3 side as 101, and is seen as a key.
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut event(96, false)),
            Recv::Rtp(Packet::Borrowed(&event(101, false)[..]))
        );
        assert_eq!(
            leg.take_digits().len(),
            1,
            "detected in the relay's numbering"
        );
        // An identity map stops the rewriting.
        leg.map_payload_types(&PayloadMap::default());
        let (_, out) = leg.on_send(now, &te_off, &mut buf).unwrap();
        assert_eq!(out, &te_off[..]);

        // SDES-SRTP: rewritten before protection and after unprotection, so it authenticates.
        let (mut leg, mut peer) = sdes_leg(now, 1, 2, true);
        leg.map_payload_types(&map);
        let (_, out) = leg.on_send(now, &te, &mut buf).unwrap();
        assert_eq!(
            peer.unprotect_rtp(out).unwrap().as_ref(),
            &event(100, true)[..]
        );
        let mut from_peer = peer.protect_rtp(&event(96, true)).unwrap().to_vec();
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut from_peer),
            Recv::Rtp(Packet::Borrowed(&event(101, true)[..]))
        );
    }

    #[test]
    fn new_sdes_keys_rekey_both_directions() {
        let now = Instant::now();
        let mut leg = LegacyLeg::new(true, now, SystemTime::now());
        leg.set_remote(addr(PEER), None, true, true);
        let sdes = |l: &CryptoAttr, r: &CryptoAttr| LegCrypto::Sdes {
            local: l.clone(),
            remote: r.clone(),
        };
        leg.secure(now, sdes(&key(1), &key(2)), None, None);
        let mut old_peer = SrtpSession::new(&key(2), &key(1)).unwrap();
        let p = old_peer.protect_rtp(&rtp(1)).unwrap();
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut p.to_vec()),
            Recv::Rtp(_)
        ));
        // A re-INVITE brought new keys on both sides.
        leg.secure(now, sdes(&key(3), &key(4)), None, None);
        let p = old_peer.protect_rtp(&rtp(2)).unwrap();
        assert_eq!(
            leg.on_recv(now, addr(PEER), &mut p.to_vec()),
            Recv::Drop(DropReason::Srtp)
        );
        let mut new_peer = SrtpSession::new(&key(4), &key(3)).unwrap();
        let p = new_peer.protect_rtp(&rtp(3)).unwrap();
        assert!(matches!(
            leg.on_recv(now, addr(PEER), &mut p.to_vec()),
            Recv::Rtp(_)
        ));
        let three = rtp(3);
        let mut buf = Vec::new();
        let (_, out) = leg.on_send(now, &three, &mut buf).unwrap();
        assert_eq!(new_peer.unprotect_rtp(out).unwrap().as_ref(), &three[..]);
    }
}
