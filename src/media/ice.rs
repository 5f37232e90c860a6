//! ICE for the legacy (SIP) media leg, sans-IO: RFC 8445 connectivity checks, RFC 8489 STUN
//! and RFC 7675 consent freshness, for a call that has exactly one host candidate (the call's
//! UDP socket), one data stream and one component (rtcp-mux).
//!
//! [`IceAgent`] owns no socket and reads no clock. The driver feeds it every datagram that
//! [`is_stun`] recognises ([`IceAgent::handle_stun`]), fires its timer
//! ([`IceAgent::poll_timeout`] / [`IceAgent::handle_timeout`]), sends what
//! [`IceAgent::poll_transmit`] returns from the call's socket, and asks it before every media
//! packet where that packet may go ([`IceAgent::send_addr`]) and whether a received one may be
//! accepted ([`IceAgent::accepts_from`]).
//!
//! # The rule media depends on
//!
//! [`IceAgent::send_addr`] returns an address only when (a) it passed a connectivity check
//! (full mode: our own check got an authenticated success response from exactly that address;
//! lite mode: an authenticated Binding request came from it), (b) it was nominated (we nominated
//! it and the nominating check succeeded, or the controlling peer sent `USE-CANDIDATE` for it),
//! and (c) its consent is fresh: the last proof of consent is less than 30 s old (RFC 7675
//! §5.1). Once consent on the selected address has expired it stays expired: the agent reports
//! [`IceState::ConsentLost`] and only an ICE restart (new credentials) or a nomination of another
//! address brings media back. Consent timing is exact: `send_addr(now)` is `None` from the instant
//! `last proof + 30 s`, and [`IceAgent::poll_timeout`] includes that instant so a driver notices.
//!
//! # Full mode
//!
//! - One check list; each remote candidate from the SDP is a pair with our single host candidate,
//!   in the order given (the caller passes them in the peer's priority order). The SDP's candidate
//!   foundations are not passed in, so every pair is its own foundation and starts `Waiting`
//!   (RFC 8445 §6.1.2.6 then freezes nothing).
//! - Checks are paced at `Ta` = 50 ms (§14.2); triggered checks (§7.3.1.4) go first. Each check
//!   is an RFC 8489 transaction: RTO = max(500 ms, Ta × pairs waiting or in progress) (§14.3),
//!   Rc = 7 transmissions with doubling intervals, then Rm × RTO of waiting: a check to a silent
//!   address is sent at 0, 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s and fails at 39.5 s.
//! - Responses are matched by transaction id, authenticated with the peer's password, and must
//!   come from the address the request went to (§7.2.5.2.1) or the pair fails.
//! - Regular nomination (§8.1.1): the controlling agent re-checks the best succeeded pair with
//!   `USE-CANDIDATE`. It nominates as soon as every higher-priority pair has succeeded or failed,
//!   or [`NOMINATION_WAIT`] after the first success, so a dead candidate of the peer (39.5 s to
//!   fail) does not hold the call up.
//! - Role conflicts are resolved by tie-breaker both ways (§7.3.1.1 on requests, §7.2.5.1 on 487
//!   responses).
//! - Consent: a success response from the selected address (to a check or to a consent request)
//!   is the only proof (RFC 7675 §5.1). Consent requests go to the selected address every 4–6 s,
//!   each a new transaction that is not retransmitted; a response to any of those sent in the last
//!   30 s counts.
//! - The check list fails ([`IceState::Failed`]) when it had pairs and every one failed with no
//!   check outstanding. An authenticated request from the peer afterwards revives it (triggered
//!   check), as it would for a peer that came up late.
//!
//! # Lite mode and what counts as consent there
//!
//! A lite agent never sends connectivity checks and is always controlled (RFC 8445 §6.1.1). An
//! address becomes *valid* when an authenticated Binding request arrives from it: media from it
//! is accepted. It becomes *selected* only when such a request carries `USE-CANDIDATE`: RFC 8445
//! §7.3.2 adds a pair to a lite agent's valid list only with the nomination, and §12.1 lets a
//! lite agent send media only on a pair that is in the valid list. So riptide sends no media to a
//! peer that never nominates; every full peer must nominate (libre does it by regular nomination
//! when its check list completes, browsers at once). If a second address is nominated later
//! (aggressive nomination, or a network change), it replaces the selection when its request
//! carried a higher `PRIORITY` or when consent on the current one has expired.
//!
//! Consent in lite mode is refreshed by two things:
//!
//! 1. an authenticated Binding request from the selected address — the same proof that granted
//!    the initial permission to send under RFC 8445, and what browsers and RFC 7675 peers send
//!    every ~5 s anyway;
//! 2. an authenticated success response from the selected address to a consent request that
//!    riptide sends itself, every 4–6 s, as a full agent would.
//!
//! (2) is needed because not every full peer sends authenticated requests after ICE completes.
//! libre (baresip's stack; `src/ice/comp.c`, `icem_comp_keepalive`) sends only Binding
//! *indications* — no `MESSAGE-INTEGRITY`, no response — every `ICE_DEFAULT_Tr` = 15 s plus up
//! to 1 s of jitter once its check list completes, and sends no further requests. An indication
//! proves nothing (anyone can send one, RFC 7675 §4 rejects keepalives as consent for that
//! reason), so with (1) alone every call with baresip would lose consent 30 s after answer.
//! libre does answer Binding requests at any time (`src/ice/stunsrv.c`: it checks USERNAME
//! `<its ufrag>:<our ufrag>`, our `MESSAGE-INTEGRITY`, requires `PRIORITY`, and sees no role
//! conflict because it made itself controlling when it saw our `a=ice-lite`), so riptide asks for
//! consent the way RFC 7675 describes. RFC 7675 puts the duty on whoever sends media and exempts
//! no one; RFC 8445's "lite agents do not send checks" is about the check list, and a consent
//! request is not a check: it goes only to an address that is already valid and nominated, so it
//! never reaches an unchecked address. Binding indications are accepted and ignored.
//!
//! # What this agent does not do
//!
//! Gathering (there is one host candidate, the socket), several components or data streams,
//! trickle ICE, TCP candidates, and the aggressive-nomination sender side.
//!
//! # Crates
//!
//! STUN encoding and decoding, MESSAGE-INTEGRITY, FINGERPRINT, XOR-MAPPED-ADDRESS, USERNAME,
//! ERROR-CODE and UNKNOWN-ATTRIBUTES come from rtc-stun; PRIORITY, ICE-CONTROLLING/CONTROLLED and
//! USE-CANDIDATE from rtc-ice's attribute types. Framing checks rtc-stun leaves to the caller are
//! done here before its decoder runs (length field a multiple of 4 and equal to the datagram,
//! FINGERPRINT single, last and 4 bytes, MESSAGE-INTEGRITY 20 bytes), so no input reaches code
//! that could index out of bounds. rtc-ice's `Agent` is not used: its liveness model is pion's
//! (any packet from the remote resets a 5 s "disconnected" / 30 s "failed" clock, fixed 2 s
//! keepalives) rather than RFC 7675 consent on the selected address with randomised 4–6 s
//! requests, its lite mode sends no consent requests, its pacing and retransmissions are not
//! RFC 8445/8489's, and it has no query for "may media go to this address now".

use rand::Rng as _;
use rtc_ice::attributes::control::{AttrControlled, AttrControlling};
use rtc_ice::attributes::priority::PriorityAttr;
use rtc_ice::attributes::use_candidate::UseCandidateAttr;
use rtc_stun::attributes::{
    AttrType, RawAttribute, ATTR_ERROR_CODE, ATTR_FINGERPRINT, ATTR_ICE_CONTROLLED,
    ATTR_ICE_CONTROLLING, ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_PRIORITY,
    ATTR_USERNAME, ATTR_USE_CANDIDATE, ATTR_XORMAPPED_ADDRESS,
};
use rtc_stun::crypto::RTCCryptoProvider;
use rtc_stun::error_code::{ErrorCode, ErrorCodeAttribute};
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::integrity::MessageIntegrity;
use rtc_stun::message::{
    Message, Setter, TransactionId, BINDING_ERROR, BINDING_REQUEST, BINDING_SUCCESS,
    CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_BINDING,
};
use rtc_stun::textattrs::TextAttribute;
use rtc_stun::uattrs::UnknownAttributes;
use rtc_stun::xoraddr::XorMappedAddress;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pacing of new checks, RFC 8445 §14.2 default.
pub const TA: Duration = Duration::from_millis(50);
/// Lower bound of a check's retransmission timeout (RFC 8445 §14.3).
pub const RTO_MIN: Duration = Duration::from_millis(500);
/// Transmissions per check transaction (RFC 8489 §6.2.1 Rc).
pub const RC: u32 = 7;
/// Multiple of RTO waited after the last transmission (RFC 8489 §6.2.1 Rm).
pub const RM: u32 = 16;
/// Consent lasts this long after the last proof of it (RFC 7675 §5.1).
pub const CONSENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Consent requests go out every 5 s randomised to 0.8–1.2 × (RFC 7675 §5.1).
const CONSENT_INTERVAL_MS: std::ops::RangeInclusive<u64> = 4000..=6000;
/// The controlling agent nominates the best succeeded pair at the latest this long after the
/// first success, even if a higher-priority pair is still being checked.
pub const NOMINATION_WAIT: Duration = Duration::from_secs(2);
/// Remote addresses (from the SDP and peer-reflexive ones learned from requests) kept per call.
pub const MAX_REMOTE_CANDIDATES: usize = 16;
/// Datagrams waiting for [`IceAgent::poll_transmit`]; beyond this new ones are dropped (and
/// counted) — a peer retransmits its requests, and our own checks have their transactions.
pub const MAX_TRANSMIT_QUEUE: usize = 64;
/// Outstanding STUN transactions (checks and consent requests).
const MAX_TRANSACTIONS: usize = 64;
/// PRIORITY we put in our requests: a peer-reflexive candidate's priority (RFC 8445 §7.1.1) with
/// type preference 110, local preference 65535, component 1 (§5.1.2.1).
const PRFLX_PRIORITY: u32 = (110 << 24) | (65535 << 8) | (256 - 1);
/// Longest USERNAME text echoed into an error value.
const MAX_ECHOED_USERNAME: usize = 128;

/// The ice-char alphabet of RFC 8839 §5.4: ALPHA / DIGIT / "+" / "/". 64 symbols, so one random
/// byte masked to 6 bits picks one uniformly.
const ICE_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One side's `a=ice-ufrag` / `a=ice-pwd`.
#[derive(Clone, PartialEq, Eq)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl fmt::Debug for IceCredentials {
    // The password keys MESSAGE-INTEGRITY; it never reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceCredentials")
            .field("ufrag", &self.ufrag)
            .finish_non_exhaustive()
    }
}

impl IceCredentials {
    /// Fresh credentials from the thread CSPRNG: an 8-character ufrag (48 bits, RFC 8445 §5.3
    /// asks for at least 24) and a 24-character password (144 bits, at least 128 asked).
    pub fn generate() -> IceCredentials {
        let mut bytes = [0u8; 32];
        rand::rng().fill(&mut bytes);
        let pick = |b: &u8| char::from(ICE_CHARS[usize::from(b & 63)]);
        IceCredentials {
            ufrag: bytes[..8].iter().map(pick).collect(),
            pwd: bytes[8..].iter().map(pick).collect(),
        }
    }
}

/// Which ICE implementation riptide plays on this call (RFC 8445 §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceMode {
    /// Answers checks only; always controlled. The SDP carries `a=ice-lite`.
    Lite,
    /// Runs checks. `controlling` is the initial role (the offerer controls unless the peer is
    /// lite, RFC 8445 §6.1.1); a role conflict may change it.
    Full { controlling: bool },
}

/// What the call can do with media now, as of an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceState {
    /// No address is selected yet: no media may be sent.
    Checking,
    /// An address is selected and its consent is fresh: media goes to [`IceAgent::send_addr`].
    Connected,
    /// Consent on the selected address expired (30 s without proof); media must stop. Only an
    /// ICE restart or a new nomination recovers.
    ConsentLost,
    /// Full mode: every check failed.
    Failed,
}

/// Why a STUN packet was not accepted. When the packet was a request, the variant says which
/// error response (if any) was queued for [`IceAgent::poll_transmit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IceError {
    /// Not STUN by RFC 7983's demux rule (first byte 0..=3, magic cookie, 20-byte header).
    NotStun,
    /// STUN whose framing or attributes are invalid; dropped.
    Malformed(String),
    /// A STUN method other than Binding; dropped.
    UnsupportedMethod(u16),
    /// No FINGERPRINT, which ICE requires on every message (RFC 8445 §7.2.2); dropped.
    MissingFingerprint,
    /// FINGERPRINT does not match: not STUN after all (RFC 8489 §7.3); dropped silently.
    FingerprintMismatch,
    /// No MESSAGE-INTEGRITY: a request is answered 400 (RFC 8489 §9.1.3), a response dropped.
    MissingIntegrity,
    /// A request without USERNAME; answered 400.
    MissingUsername,
    /// USERNAME is not `<our ufrag>:<their ufrag>`; answered 401 (RFC 8489 §9.1.3).
    UnknownUsername(String),
    /// The HMAC does not verify: a request is answered 401, a response dropped.
    IntegrityMismatch,
    /// Comprehension-required attributes we do not know; answered 420 (RFC 8489 §6.3.1).
    UnknownAttributes(Vec<u16>),
    /// A Binding request without PRIORITY (RFC 8445 §7.1.1); answered 400.
    MissingPriority,
    /// Both peers claim the same role and we keep ours: answered 487 (RFC 8445 §7.3.1.1). A lite
    /// agent answers 487 to every request that says ICE-CONTROLLED, which makes the full peer
    /// take the controlling role it should have had.
    RoleConflict,
    /// A response to no transaction we have outstanding (late, duplicate, or forged); dropped.
    UnknownTransaction,
    /// A response from an address other than the one the request went to; the check fails
    /// (RFC 8445 §7.2.5.2.1).
    AsymmetricResponse {
        expected: SocketAddr,
        got: SocketAddr,
    },
    /// Building a message failed on our side (over-long credentials, crypto provider missing).
    Internal(String),
}

impl fmt::Display for IceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IceError::NotStun => write!(f, "STUN: not a STUN message"),
            IceError::Malformed(s) => write!(f, "STUN: malformed message: {s}"),
            IceError::UnsupportedMethod(m) => write!(f, "STUN: unsupported method 0x{m:03x}"),
            IceError::MissingFingerprint => write!(f, "STUN: no FINGERPRINT"),
            IceError::FingerprintMismatch => write!(f, "STUN: FINGERPRINT mismatch"),
            IceError::MissingIntegrity => write!(f, "STUN: no MESSAGE-INTEGRITY"),
            IceError::MissingUsername => write!(f, "STUN: request without USERNAME"),
            IceError::UnknownUsername(u) => write!(f, "STUN: unknown USERNAME {u:?}"),
            IceError::IntegrityMismatch => {
                write!(f, "STUN: MESSAGE-INTEGRITY mismatch (wrong password)")
            }
            IceError::UnknownAttributes(a) => {
                write!(f, "STUN: unknown comprehension-required attributes")?;
                for t in a {
                    write!(f, " 0x{t:04x}")?;
                }
                Ok(())
            }
            IceError::MissingPriority => write!(f, "ICE: Binding request without PRIORITY"),
            IceError::RoleConflict => write!(f, "ICE: role conflict, answered 487"),
            IceError::UnknownTransaction => {
                write!(f, "STUN: response to no outstanding transaction")
            }
            IceError::AsymmetricResponse { expected, got } => write!(
                f,
                "ICE: response from {got}, request went to {expected}; check failed"
            ),
            IceError::Internal(s) => write!(f, "ICE: {s}"),
        }
    }
}

impl std::error::Error for IceError {}

/// RFC 7983 demultiplexing: a datagram is STUN when its first byte is 0..=3; the magic cookie
/// (RFC 8489 §5) is checked as well so that a stray packet does not reach the STUN parser.
pub fn is_stun(pkt: &[u8]) -> bool {
    pkt.len() >= 20 && pkt[0] <= 3 && pkt[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PairState {
    Waiting,
    InProgress,
    Succeeded,
    Failed,
}

/// Our single host candidate with one remote address.
#[derive(Debug, Clone)]
struct Pair {
    addr: SocketAddr,
    /// Our check state (full mode only).
    state: PairState,
    /// An authenticated Binding request arrived from `addr`.
    peer_checked: bool,
    /// The controlling peer sent USE-CANDIDATE for this pair.
    nominated: bool,
    /// PRIORITY of the last authenticated request from `addr`; ranks nominations.
    peer_priority: u32,
    /// Our nominating check on this pair failed: do not nominate it again.
    nomination_failed: bool,
    consent_expires: Option<Instant>,
    /// Has been the selected pair: once its consent expires it stays expired (RFC 7675 §5.1).
    was_selected: bool,
}

impl Pair {
    fn new(addr: SocketAddr) -> Pair {
        Pair {
            addr,
            state: PairState::Waiting,
            peer_checked: false,
            nominated: false,
            peer_priority: 0,
            nomination_failed: false,
            consent_expires: None,
            was_selected: false,
        }
    }

    fn consent_fresh(&self, now: Instant) -> bool {
        self.consent_expires.is_some_and(|e| now < e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxKind {
    /// A connectivity check; `controlling` is the role the request claimed.
    Check {
        use_candidate: bool,
        controlling: bool,
        triggered: bool,
    },
    /// A consent request (RFC 7675): sent once, matched for 30 s.
    Consent,
}

/// One outstanding STUN request of ours.
#[derive(Debug, Clone)]
struct Transaction {
    id: [u8; 12],
    dest: SocketAddr,
    kind: TxKind,
    raw: Vec<u8>,
    sent: u32,
    rto: Duration,
    /// Next retransmission; `None` when no more (consent, last one sent, or cancelled per
    /// RFC 8445 §7.3.1.4 — a cancelled check still takes a response until `deadline`).
    next_send: Option<Instant>,
    deadline: Instant,
}

/// The ICE agent of one call's legacy media leg. See the module documentation.
pub struct IceAgent {
    mode: IceMode,
    controlling: bool,
    tie_breaker: u64,
    local: IceCredentials,
    remote: IceCredentials,
    provider: Option<Arc<dyn RTCCryptoProvider>>,
    /// In check order: the SDP's candidates first, then peer-reflexive ones as learned.
    pairs: Vec<Pair>,
    triggered: VecDeque<SocketAddr>,
    /// Controlling: the pair whose USE-CANDIDATE check is queued or in flight.
    nominating: Option<SocketAddr>,
    selected: Option<SocketAddr>,
    first_success: Option<Instant>,
    transactions: Vec<Transaction>,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    next_check_at: Instant,
    next_consent_at: Option<Instant>,
    failed: bool,
    /// Latest instant seen; keeps [`IceAgent::poll_timeout`] from repeating a passed deadline.
    last_now: Instant,
    transmit_drops: u64,
}

impl fmt::Debug for IceAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceAgent")
            .field("mode", &self.mode)
            .field("controlling", &self.controlling)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("pairs", &self.pairs)
            .field("selected", &self.selected)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl IceAgent {
    /// An agent for one call. `remote_candidates` are the peer's `a=candidate` addresses for
    /// component 1 (UDP), highest priority first; more than [`MAX_REMOTE_CANDIDATES`] are
    /// ignored. A full agent queues its first check at once.
    pub fn new(
        mode: IceMode,
        local: IceCredentials,
        remote: IceCredentials,
        remote_candidates: Vec<SocketAddr>,
        now: Instant,
    ) -> IceAgent {
        let mut agent = IceAgent {
            mode,
            controlling: matches!(mode, IceMode::Full { controlling: true }),
            tie_breaker: rand::rng().random(),
            local,
            remote,
            // With the `crypto-ring` feature rtc-stun builds with, this cannot fail; if a build
            // ever lacks a provider, every STUN operation reports `IceError::Internal` instead.
            provider: rtc_stun::crypto::default_provider().ok(),
            pairs: Vec::new(),
            triggered: VecDeque::new(),
            nominating: None,
            selected: None,
            first_success: None,
            transactions: Vec::new(),
            transmit: VecDeque::new(),
            next_check_at: now,
            next_consent_at: None,
            failed: false,
            last_now: now,
            transmit_drops: 0,
        };
        agent.add_candidates(remote_candidates);
        agent.drive(now);
        agent
    }

    /// New remote SDP (re-INVITE or UPDATE). A changed remote ufrag or password is an ICE
    /// restart (RFC 8445 §9): every pair, check, nomination and consent is dropped and checking
    /// starts over with `remote_candidates`. Otherwise candidates not seen before are added to
    /// the check list and nothing else changes.
    pub fn set_remote(
        &mut self,
        now: Instant,
        remote: IceCredentials,
        remote_candidates: Vec<SocketAddr>,
    ) {
        if remote != self.remote {
            self.remote = remote;
            self.reset(now);
        }
        self.add_candidates(remote_candidates);
        self.drive(now);
    }

    /// ICE restart with new local credentials too (RFC 8445 §9: both sides change them; the
    /// caller puts `local` in its offer or answer). Drops all validation and consent, and
    /// returns to the role `IceMode` gave.
    pub fn restart(
        &mut self,
        now: Instant,
        local: IceCredentials,
        remote: IceCredentials,
        remote_candidates: Vec<SocketAddr>,
    ) {
        self.local = local;
        self.remote = remote;
        self.reset(now);
        self.add_candidates(remote_candidates);
        self.drive(now);
    }

    /// Feed one received STUN datagram (one that [`is_stun`] accepted) from `src`. `Err` means
    /// the packet was not accepted: nothing was validated by it, and for a request the variant
    /// tells which error response, if any, was queued.
    pub fn handle_stun(
        &mut self,
        now: Instant,
        src: SocketAddr,
        pkt: &[u8],
    ) -> Result<(), IceError> {
        self.last_now = self.last_now.max(now);
        let result = self.process(now, src, pkt);
        self.drive(now);
        result
    }

    /// Next datagram to send from the call's socket: responses, checks, consent requests.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmit.pop_front()
    }

    /// When [`IceAgent::handle_timeout`] has something to do next: a paced check, a
    /// retransmission, a transaction timeout, a nomination, a consent request, or the expiry of
    /// consent on the selected address (a state change the driver should notice).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for tx in &self.transactions {
            if let Some(t) = tx.next_send {
                at(t);
            }
            at(tx.deadline);
        }
        if self.is_full() && self.selected.is_none() {
            if self.has_check_work() {
                at(self.next_check_at);
            }
            if self.controlling && self.nominating.is_none() && self.best_valid().is_some() {
                if let Some(t) = self.first_success.map(|t| t + NOMINATION_WAIT) {
                    if t > self.last_now {
                        at(t);
                    }
                }
            }
        }
        if let Some(sel) = self.selected.and_then(|a| self.pair(a)) {
            if let Some(t) = self.next_consent_at {
                at(t);
            }
            if let Some(e) = sel.consent_expires {
                if e > self.last_now {
                    at(e);
                }
            }
        }
        next
    }

    /// Run whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        self.drive(now);
    }

    /// Where media may go now: the selected address if its consent is fresh, else `None` (and
    /// the caller sends no media).
    pub fn send_addr(&self, now: Instant) -> Option<SocketAddr> {
        let sel = self.selected?;
        self.pair(sel)
            .filter(|p| p.consent_fresh(now))
            .map(|p| p.addr)
    }

    /// Whether media from `src` is accepted: `src` passed a check in either direction (our check
    /// to it succeeded, or an authenticated Binding request came from it) since the last ICE
    /// restart.
    pub fn accepts_from(&self, src: SocketAddr) -> bool {
        self.pair(src)
            .is_some_and(|p| p.peer_checked || p.state == PairState::Succeeded)
    }

    /// The agent's state as of `now`.
    pub fn state(&self, now: Instant) -> IceState {
        if let Some(sel) = self.selected {
            return if self.send_addr(now) == Some(sel) {
                IceState::Connected
            } else {
                IceState::ConsentLost
            };
        }
        if self.failed {
            IceState::Failed
        } else {
            IceState::Checking
        }
    }

    /// The selected (nominated) address, whatever its consent.
    pub fn selected(&self) -> Option<SocketAddr> {
        self.selected
    }

    /// When consent on the selected address expires (or expired), if one is selected.
    pub fn consent_expires(&self) -> Option<Instant> {
        self.selected
            .and_then(|a| self.pair(a))
            .and_then(|p| p.consent_expires)
    }

    /// The current role (a lite agent is always controlled).
    pub fn is_controlling(&self) -> bool {
        self.controlling
    }

    pub fn mode(&self) -> IceMode {
        self.mode
    }

    pub fn local_credentials(&self) -> &IceCredentials {
        &self.local
    }

    /// Datagrams dropped because [`MAX_TRANSMIT_QUEUE`] were already waiting.
    pub fn transmit_drops(&self) -> u64 {
        self.transmit_drops
    }

    // ---- internals -------------------------------------------------------------------------

    fn is_full(&self) -> bool {
        matches!(self.mode, IceMode::Full { .. })
    }

    fn pair(&self, addr: SocketAddr) -> Option<&Pair> {
        self.pairs.iter().find(|p| p.addr == addr)
    }

    fn pair_index(&self, addr: SocketAddr) -> Option<usize> {
        self.pairs.iter().position(|p| p.addr == addr)
    }

    /// The pair for `addr`, learning it (peer-reflexive, RFC 8445 §7.3.1.3) if there is room.
    fn learn(&mut self, addr: SocketAddr) -> Option<usize> {
        if let Some(i) = self.pair_index(addr) {
            return Some(i);
        }
        if self.pairs.len() >= MAX_REMOTE_CANDIDATES {
            return None;
        }
        self.pairs.push(Pair::new(addr));
        Some(self.pairs.len() - 1)
    }

    fn add_candidates(&mut self, candidates: Vec<SocketAddr>) {
        for addr in candidates {
            if self.pair_index(addr).is_none() && self.pairs.len() < MAX_REMOTE_CANDIDATES {
                self.pairs.push(Pair::new(addr));
            }
        }
    }

    fn reset(&mut self, now: Instant) {
        self.controlling = matches!(self.mode, IceMode::Full { controlling: true });
        self.pairs.clear();
        self.triggered.clear();
        self.nominating = None;
        self.selected = None;
        self.first_success = None;
        self.transactions.clear();
        // Checks and responses of the old generation must not go out after the restart.
        self.transmit.clear();
        self.next_check_at = now;
        self.next_consent_at = None;
        self.failed = false;
    }

    fn provider(&self) -> Result<Arc<dyn RTCCryptoProvider>, IceError> {
        self.provider
            .clone()
            .ok_or_else(|| IceError::Internal("no crypto provider".into()))
    }

    fn queue(&mut self, dest: SocketAddr, pkt: Vec<u8>) {
        if self.transmit.len() >= MAX_TRANSMIT_QUEUE {
            self.transmit_drops += 1;
        } else {
            self.transmit.push_back((dest, pkt));
        }
    }

    fn refresh_consent(&mut self, i: usize, now: Instant) {
        let p = &mut self.pairs[i];
        if p.was_selected && p.consent_expires.is_some_and(|e| e <= now) {
            return;
        }
        p.consent_expires = Some(now + CONSENT_TIMEOUT);
    }

    fn select(&mut self, i: usize, now: Instant) {
        let addr = self.pairs[i].addr;
        if self.selected == Some(addr) {
            return;
        }
        if !self.is_full() {
            // The nominating request is itself the proof of consent in lite mode.
            self.refresh_consent(i, now);
        }
        self.pairs[i].was_selected = true;
        self.selected = Some(addr);
        self.nominating = None;
        self.failed = false;
        self.next_consent_at = Some(now + consent_interval());
        // RFC 8445 §8.1.2: with a selected pair, checks on the others stop.
        self.triggered.clear();
        for tx in &mut self.transactions {
            if matches!(tx.kind, TxKind::Check { .. }) {
                tx.next_send = None;
            }
        }
    }

    /// Controlled side: `i` was nominated by the peer; select it if it is valid and better than
    /// the current selection.
    fn accept_nomination(&mut self, i: usize, now: Instant) {
        let p = &self.pairs[i];
        let valid = if self.is_full() {
            p.state == PairState::Succeeded
        } else {
            p.peer_checked
        };
        if !valid || !p.nominated || self.controlling {
            return;
        }
        let better = match self.selected.and_then(|a| self.pair(a)) {
            None => true,
            Some(cur) if cur.addr == p.addr => false,
            Some(cur) => p.peer_priority > cur.peer_priority || !cur.consent_fresh(now),
        };
        if better {
            self.select(i, now);
        }
    }

    fn switch_role(&mut self, controlling: bool) {
        if !self.is_full() {
            return;
        }
        self.controlling = controlling;
        if !controlling {
            self.nominating = None;
        }
    }

    fn process(&mut self, now: Instant, src: SocketAddr, pkt: &[u8]) -> Result<(), IceError> {
        let mut msg = decode(pkt)?;
        if msg.typ.method != METHOD_BINDING {
            return Err(IceError::UnsupportedMethod(method_of(pkt)));
        }
        match msg.typ.class {
            CLASS_REQUEST => self.on_request(now, src, &mut msg),
            CLASS_SUCCESS_RESPONSE => self.on_response(now, src, &mut msg, false),
            CLASS_ERROR_RESPONSE => self.on_response(now, src, &mut msg, true),
            CLASS_INDICATION => {
                // libre's keepalive. It proves nothing; only a bad FINGERPRINT is worth saying.
                if msg.contains(ATTR_FINGERPRINT) {
                    check_fingerprint(&msg)?;
                }
                Ok(())
            }
            _ => Err(IceError::Malformed("unknown message class".into())),
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &mut Message,
    ) -> Result<(), IceError> {
        // RFC 8489 §7.3: a FINGERPRINT failure means "not STUN": drop without answering.
        check_fingerprint(msg)?;

        // RFC 8489 §9.1.3, in its order: 400 without credentials, 401 for an unknown username
        // or a wrong HMAC; these error responses cannot carry MESSAGE-INTEGRITY.
        let mi = msg
            .attributes
            .0
            .iter()
            .position(|a| a.typ == ATTR_MESSAGE_INTEGRITY);
        let before_mi = &msg.attributes.0[..mi.unwrap_or(msg.attributes.0.len())];
        let username = find(before_mi, ATTR_USERNAME).map(|a| a.value.clone());
        let Some(mi) = mi else {
            self.respond_error(msg, src, 400, "Bad Request", false, &[])?;
            return Err(IceError::MissingIntegrity);
        };
        let Some(username) = username else {
            self.respond_error(msg, src, 400, "Bad Request", false, &[])?;
            return Err(IceError::MissingUsername);
        };
        if !self.username_ok(&username) {
            self.respond_error(msg, src, 401, "Unauthorized", false, &[])?;
            return Err(IceError::UnknownUsername(echo(&username)));
        }
        let key = self.local.pwd.clone();
        if let Err(e) = self.check_integrity(msg, &key) {
            if e == IceError::IntegrityMismatch {
                self.respond_error(msg, src, 401, "Unauthorized", false, &[])?;
            }
            return Err(e);
        }

        // Authenticated from here on; only attributes before MESSAGE-INTEGRITY count
        // (RFC 8489 §14.5).
        let attrs = msg.attributes.0[..mi].to_vec();
        let unknown: Vec<AttrType> = attrs
            .iter()
            .map(|a| a.typ)
            .filter(|t| t.required() && !KNOWN_REQUIRED.contains(t))
            .collect();
        if !unknown.is_empty() {
            self.respond_error(msg, src, 420, "Unknown Attribute", true, &unknown)?;
            return Err(IceError::UnknownAttributes(
                unknown.iter().map(|t| t.0).collect(),
            ));
        }
        let priority = match find(&attrs, ATTR_PRIORITY).map(|a| a.value.as_slice()) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            Some(_) => {
                self.respond_error(msg, src, 400, "Bad Request", true, &[])?;
                return Err(IceError::Malformed("PRIORITY is not 4 bytes".into()));
            }
            None => {
                self.respond_error(msg, src, 400, "Bad Request", true, &[])?;
                return Err(IceError::MissingPriority);
            }
        };
        let peer_role = match peer_role(&attrs) {
            Ok(r) => r,
            Err(e) => {
                self.respond_error(msg, src, 400, "Bad Request", true, &[])?;
                return Err(e);
            }
        };
        let use_candidate = find(&attrs, ATTR_USE_CANDIDATE).is_some();

        // RFC 8445 §7.3.1.1.
        match peer_role {
            Some((true, tb)) if self.controlling => {
                if self.tie_breaker >= tb {
                    self.respond_error(msg, src, 487, "Role Conflict", true, &[])?;
                    return Err(IceError::RoleConflict);
                }
                self.switch_role(false);
            }
            Some((false, tb)) if !self.controlling => {
                if !self.is_full() || self.tie_breaker < tb {
                    self.respond_error(msg, src, 487, "Role Conflict", true, &[])?;
                    return Err(IceError::RoleConflict);
                }
                self.switch_role(true);
            }
            _ => {}
        }

        self.respond_success(msg, src)?;

        let Some(i) = self.learn(src) else {
            // Answered, but no room to remember another address: it stays unvalidated.
            return Ok(());
        };
        let peer_controlling = peer_role.is_none_or(|(c, _)| c);
        let p = &mut self.pairs[i];
        p.peer_checked = true;
        p.peer_priority = priority;
        if use_candidate && peer_controlling && !self.controlling {
            p.nominated = true;
        }
        if !self.is_full() {
            self.refresh_consent(i, now);
            self.accept_nomination(i, now);
            return Ok(());
        }
        if self.selected.is_none() {
            self.trigger(i);
        }
        self.accept_nomination(i, now);
        Ok(())
    }

    /// RFC 8445 §7.3.1.4 triggered check for pair `i`.
    fn trigger(&mut self, i: usize) {
        let addr = self.pairs[i].addr;
        match self.pairs[i].state {
            PairState::Succeeded => return,
            PairState::InProgress => {
                // Cancel an ordinary check in flight (it still takes a response until its
                // timeout) and check again now. A triggered check in flight is left alone:
                // cancelling those on every request from a peer doing the same is how two
                // agents livelock (libre disabled this step for that reason).
                let mut cancelled = false;
                for tx in &mut self.transactions {
                    if tx.dest == addr {
                        if let TxKind::Check {
                            triggered: false, ..
                        } = tx.kind
                        {
                            tx.next_send = None;
                            cancelled = true;
                        }
                    }
                }
                if !cancelled {
                    return;
                }
            }
            PairState::Waiting | PairState::Failed => {}
        }
        self.pairs[i].state = PairState::Waiting;
        self.failed = false;
        if !self.triggered.contains(&addr) {
            self.triggered.push_back(addr);
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        msg: &mut Message,
        is_error: bool,
    ) -> Result<(), IceError> {
        check_fingerprint(msg)?;
        let Some(ti) = self
            .transactions
            .iter()
            .position(|t| t.id == msg.transaction_id.0)
        else {
            return Err(IceError::UnknownTransaction);
        };
        let authenticated = msg.contains(ATTR_MESSAGE_INTEGRITY);
        if authenticated {
            let key = self.remote.pwd.clone();
            self.check_integrity(msg, &key)?;
        } else if !is_error {
            return Err(IceError::MissingIntegrity);
        }
        let error_code = if is_error {
            Some(error_code(msg)?)
        } else {
            None
        };
        // A role flip needs an authenticated 487; an unauthenticated one is not believed.
        if error_code == Some(487) && !authenticated {
            return Err(IceError::MissingIntegrity);
        }

        let tx = self.transactions.remove(ti);
        let pair = self.pair_index(tx.dest);
        if src != tx.dest {
            if let (TxKind::Check { .. }, Some(i)) = (tx.kind, pair) {
                self.check_failed(i, &tx);
            }
            return Err(IceError::AsymmetricResponse {
                expected: tx.dest,
                got: src,
            });
        }
        let Some(i) = pair else {
            return Ok(());
        };
        match (tx.kind, error_code) {
            (TxKind::Consent, Some(_)) => {}
            (TxKind::Consent, None) => self.refresh_consent(i, now),
            (TxKind::Check { controlling, .. }, Some(487)) => {
                // RFC 8445 §7.2.5.1: take the other role (unless already done) and retry.
                if controlling == self.controlling {
                    self.switch_role(!controlling);
                }
                if self.selected.is_none() {
                    self.pairs[i].state = PairState::Waiting;
                    if !self.triggered.contains(&tx.dest) {
                        self.triggered.push_back(tx.dest);
                    }
                }
            }
            (TxKind::Check { .. }, Some(_)) => self.check_failed(i, &tx),
            (TxKind::Check { use_candidate, .. }, None) => {
                self.pairs[i].state = PairState::Succeeded;
                self.refresh_consent(i, now);
                self.first_success.get_or_insert(now);
                if use_candidate && self.controlling {
                    self.select(i, now);
                } else {
                    self.accept_nomination(i, now);
                }
            }
        }
        Ok(())
    }

    fn check_failed(&mut self, i: usize, tx: &Transaction) {
        let TxKind::Check { use_candidate, .. } = tx.kind else {
            return;
        };
        let addr = self.pairs[i].addr;
        if use_candidate {
            if self.nominating == Some(addr) {
                self.nominating = None;
            }
            self.pairs[i].nomination_failed = true;
            self.pairs[i].state = PairState::Failed;
            return;
        }
        let other_check = self
            .transactions
            .iter()
            .any(|t| t.dest == addr && matches!(t.kind, TxKind::Check { .. }));
        if !other_check && self.pairs[i].state == PairState::InProgress {
            self.pairs[i].state = PairState::Failed;
        }
    }

    fn username_ok(&self, username: &[u8]) -> bool {
        let Some(rest) = username
            .strip_prefix(self.local.ufrag.as_bytes())
            .and_then(|r| r.strip_prefix(b":"))
        else {
            return false;
        };
        // An unknown remote ufrag (empty) accepts any; a known one must match.
        self.remote.ufrag.is_empty() || rest == self.remote.ufrag.as_bytes()
    }

    fn check_integrity(&self, msg: &mut Message, key: &str) -> Result<(), IceError> {
        let mi = msg
            .attributes
            .0
            .iter()
            .find(|a| a.typ == ATTR_MESSAGE_INTEGRITY)
            .ok_or(IceError::MissingIntegrity)?;
        if mi.value.len() != 20 {
            return Err(IceError::Malformed(
                "MESSAGE-INTEGRITY is not 20 bytes".into(),
            ));
        }
        let provider = self.provider()?;
        // The only other failure is "attribute not found", ruled out above.
        MessageIntegrity::check(msg, key.as_bytes(), provider.crypto())
            .map_err(|_| IceError::IntegrityMismatch)
    }

    /// Builds a message from `setters`, then MESSAGE-INTEGRITY keyed with `pwd` (when given)
    /// and FINGERPRINT, which always come last (RFC 8489 §14.5, §14.7).
    fn seal(
        &self,
        setters: Vec<Box<dyn Setter + '_>>,
        pwd: Option<&str>,
        what: &str,
    ) -> Result<Vec<u8>, IceError> {
        let provider = self.provider()?;
        let fail = |e: &dyn std::fmt::Display| IceError::Internal(format!("building {what}: {e}"));
        let mut m = Message::new();
        m.build(&setters).map_err(|e| fail(&e))?;
        if let Some(pwd) = pwd {
            MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_string(),
                provider.crypto(),
            )
            .add_to(&mut m)
            .map_err(|e| fail(&e))?;
        }
        FINGERPRINT.add_to(&mut m).map_err(|e| fail(&e))?;
        Ok(m.raw)
    }

    fn respond_success(&mut self, req: &Message, src: SocketAddr) -> Result<(), IceError> {
        let raw = self.seal(
            vec![
                Box::new(BINDING_SUCCESS),
                Box::new(TransactionId(req.transaction_id.0)),
                Box::new(XorMappedAddress {
                    ip: src.ip(),
                    port: src.port(),
                }),
            ],
            Some(&self.local.pwd),
            "a Binding response",
        )?;
        self.queue(src, raw);
        Ok(())
    }

    fn respond_error(
        &mut self,
        req: &Message,
        src: SocketAddr,
        code: u16,
        reason: &str,
        authenticate: bool,
        unknown: &[AttrType],
    ) -> Result<(), IceError> {
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_ERROR),
            Box::new(TransactionId(req.transaction_id.0)),
            Box::new(ErrorCodeAttribute {
                code: ErrorCode(code),
                reason: reason.as_bytes().to_vec(),
            }),
        ];
        if !unknown.is_empty() {
            setters.push(Box::new(UnknownAttributes(unknown.to_vec())));
        }
        let pwd = authenticate.then(|| self.local.pwd.clone());
        let raw = self.seal(setters, pwd.as_deref(), &format!("a {code} response"))?;
        self.queue(src, raw);
        Ok(())
    }

    /// A Binding request from us: USERNAME `<their ufrag>:<our ufrag>`, PRIORITY, our role and
    /// tie-breaker, maybe USE-CANDIDATE, MESSAGE-INTEGRITY keyed with their password,
    /// FINGERPRINT (RFC 8445 §7.1).
    fn build_request(&self, id: [u8; 12], use_candidate: bool) -> Result<Vec<u8>, IceError> {
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId(id)),
            Box::new(TextAttribute::new(
                ATTR_USERNAME,
                format!("{}:{}", self.remote.ufrag, self.local.ufrag),
            )),
            Box::new(PriorityAttr(PRFLX_PRIORITY)),
        ];
        if self.controlling {
            setters.push(Box::new(AttrControlling(self.tie_breaker)));
        } else {
            setters.push(Box::new(AttrControlled(self.tie_breaker)));
        }
        if use_candidate {
            setters.push(Box::new(UseCandidateAttr::new()));
        }
        self.seal(setters, Some(&self.remote.pwd), "a Binding request")
    }

    fn start_transaction(
        &mut self,
        now: Instant,
        dest: SocketAddr,
        kind: TxKind,
    ) -> Result<(), IceError> {
        if self.transactions.len() >= MAX_TRANSACTIONS {
            return Err(IceError::Internal("too many STUN transactions".into()));
        }
        let mut id = [0u8; 12];
        rand::rng().fill(&mut id);
        let use_candidate = matches!(
            kind,
            TxKind::Check {
                use_candidate: true,
                ..
            }
        );
        let raw = self.build_request(id, use_candidate)?;
        let (rto, next_send, deadline) = match kind {
            TxKind::Consent => (CONSENT_TIMEOUT, None, now + CONSENT_TIMEOUT),
            TxKind::Check { .. } => {
                let busy = self
                    .pairs
                    .iter()
                    .filter(|p| matches!(p.state, PairState::Waiting | PairState::InProgress))
                    .count() as u32;
                let rto = RTO_MIN.max(TA * busy);
                // Transmissions at 0, 1, 3, 7, … × RTO; the last waits Rm × RTO.
                let total = rto * ((1u32 << (RC - 1)) - 1 + RM);
                (rto, Some(now + rto), now + total)
            }
        };
        self.queue(dest, raw.clone());
        self.transactions.push(Transaction {
            id,
            dest,
            kind,
            raw,
            sent: 1,
            rto,
            next_send,
            deadline,
        });
        Ok(())
    }

    fn has_check_work(&self) -> bool {
        !self.triggered.is_empty() || self.pairs.iter().any(|p| p.state == PairState::Waiting)
    }

    /// Controlling: the best pair we could nominate.
    fn best_valid(&self) -> Option<usize> {
        self.pairs
            .iter()
            .position(|p| p.state == PairState::Succeeded && !p.nomination_failed)
    }

    /// The next check to send: triggered first (RFC 8445 §6.1.4.2), then the highest-priority
    /// waiting pair. Returns the address and whether it came from the triggered queue.
    fn next_check(&mut self) -> Option<(SocketAddr, bool)> {
        while let Some(addr) = self.triggered.pop_front() {
            let nominating = self.controlling && self.nominating == Some(addr);
            match self.pair(addr).map(|p| p.state) {
                Some(PairState::Waiting) => return Some((addr, true)),
                Some(PairState::Succeeded) if nominating => return Some((addr, true)),
                _ => {}
            }
        }
        self.pairs
            .iter()
            .find(|p| p.state == PairState::Waiting)
            .map(|p| (p.addr, false))
    }

    fn drive(&mut self, now: Instant) {
        // Retransmissions and transaction timeouts.
        let mut i = 0;
        while i < self.transactions.len() {
            if now >= self.transactions[i].deadline {
                let tx = self.transactions.remove(i);
                if let Some(p) = self.pair_index(tx.dest) {
                    self.check_failed(p, &tx);
                }
                continue;
            }
            let tx = &mut self.transactions[i];
            if let Some(t) = tx.next_send.filter(|t| now >= *t) {
                tx.sent += 1;
                // Scheduled from the planned instant, not `now`, so a late driver does not
                // stretch the RFC 8489 schedule.
                tx.next_send = (tx.sent < RC).then(|| t + tx.rto * (1u32 << (tx.sent - 1)));
                let (dest, raw) = (tx.dest, tx.raw.clone());
                self.queue(dest, raw);
            }
            i += 1;
        }

        if self.is_full() && self.selected.is_none() {
            // Regular nomination (RFC 8445 §8.1.1).
            if self.controlling && self.nominating.is_none() {
                if let Some(b) = self.best_valid() {
                    let settled = self.pairs[..b]
                        .iter()
                        .all(|p| matches!(p.state, PairState::Succeeded | PairState::Failed));
                    let waited = self
                        .first_success
                        .is_some_and(|t| now >= t + NOMINATION_WAIT);
                    if settled || waited {
                        let addr = self.pairs[b].addr;
                        self.nominating = Some(addr);
                        self.triggered.retain(|a| *a != addr);
                        self.triggered.push_front(addr);
                    }
                }
            }
            // One paced check.
            if now >= self.next_check_at {
                if let Some((addr, triggered)) = self.next_check() {
                    self.next_check_at = now + TA;
                    let use_candidate = self.controlling && self.nominating == Some(addr);
                    let kind = TxKind::Check {
                        use_candidate,
                        controlling: self.controlling,
                        triggered,
                    };
                    let sent = self.start_transaction(now, addr, kind);
                    if let Some(p) = self.pair_index(addr) {
                        if sent.is_err() {
                            self.pairs[p].state = PairState::Failed;
                            if use_candidate {
                                self.pairs[p].nomination_failed = true;
                                self.nominating = None;
                            }
                        } else if self.pairs[p].state == PairState::Waiting {
                            self.pairs[p].state = PairState::InProgress;
                        }
                    }
                }
            }
        }

        // Consent requests on the selected address (RFC 7675 §5.1).
        if let (Some(sel), Some(t)) = (self.selected, self.next_consent_at) {
            if now >= t {
                if self.pair(sel).is_some_and(|p| p.consent_fresh(now)) {
                    // A failure here (transaction table full) just skips one request.
                    let _ = self.start_transaction(now, sel, TxKind::Consent);
                    self.next_consent_at = Some(now + consent_interval());
                } else {
                    self.next_consent_at = None;
                }
            }
        }

        self.failed = self.is_full()
            && self.selected.is_none()
            && self.nominating.is_none()
            && !self.pairs.is_empty()
            && self.triggered.is_empty()
            && self.pairs.iter().all(|p| p.state == PairState::Failed)
            && !self
                .transactions
                .iter()
                .any(|t| matches!(t.kind, TxKind::Check { .. }));
    }
}

/// Comprehension-required attributes a Binding request may carry that this agent understands
/// (MESSAGE-INTEGRITY-SHA256 is understood in the sense that it is ignored: the SHA-1 one is
/// what ICE's short-term credentials use).
const KNOWN_REQUIRED: [AttrType; 6] = [
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_PRIORITY,
    ATTR_USE_CANDIDATE,
    ATTR_XORMAPPED_ADDRESS,
];

fn consent_interval() -> Duration {
    Duration::from_millis(rand::rng().random_range(CONSENT_INTERVAL_MS))
}

fn find(attrs: &[RawAttribute], t: AttrType) -> Option<&RawAttribute> {
    attrs.iter().find(|a| a.typ == t)
}

fn echo(username: &[u8]) -> String {
    let s = String::from_utf8_lossy(username);
    s.chars().take(MAX_ECHOED_USERNAME).collect()
}

/// ICE-CONTROLLING (`true`) or ICE-CONTROLLED (`false`) with the tie-breaker, if present.
fn peer_role(attrs: &[RawAttribute]) -> Result<Option<(bool, u64)>, IceError> {
    let tie_breaker = |a: &RawAttribute| -> Result<u64, IceError> {
        <[u8; 8]>::try_from(a.value.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| IceError::Malformed(format!("{} is not 8 bytes", a.typ)))
    };
    match (
        find(attrs, ATTR_ICE_CONTROLLING),
        find(attrs, ATTR_ICE_CONTROLLED),
    ) {
        (Some(_), Some(_)) => Err(IceError::Malformed(
            "both ICE-CONTROLLING and ICE-CONTROLLED".into(),
        )),
        (Some(a), None) => Ok(Some((true, tie_breaker(a)?))),
        (None, Some(a)) => Ok(Some((false, tie_breaker(a)?))),
        (None, None) => Ok(None),
    }
}

/// Framing checks rtc-stun leaves to its caller, then its decoder.
fn decode(pkt: &[u8]) -> Result<Message, IceError> {
    if !is_stun(pkt) {
        return Err(IceError::NotStun);
    }
    let len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    if len % 4 != 0 {
        return Err(IceError::Malformed(format!(
            "length {len} is not a multiple of 4"
        )));
    }
    // One STUN message per datagram, nothing after it (FINGERPRINT is computed up to its end).
    if pkt.len() != 20 + len {
        return Err(IceError::Malformed(format!(
            "length field says {} bytes, datagram has {}",
            20 + len,
            pkt.len()
        )));
    }
    let mut m = Message::new();
    m.unmarshal_binary(pkt)
        .map_err(|e| IceError::Malformed(e.to_string()))?;
    Ok(m)
}

/// FINGERPRINT must be present, single, last and 4 bytes before rtc-stun checks its CRC (which
/// assumes it is last).
fn check_fingerprint(m: &Message) -> Result<(), IceError> {
    let attrs = &m.attributes.0;
    let count = attrs.iter().filter(|a| a.typ == ATTR_FINGERPRINT).count();
    match (count, attrs.last()) {
        (0, _) => return Err(IceError::MissingFingerprint),
        (1, Some(last)) if last.typ == ATTR_FINGERPRINT && last.value.len() == 4 => {}
        _ => {
            return Err(IceError::Malformed(
                "FINGERPRINT is not a single 4-byte last attribute".into(),
            ))
        }
    }
    FINGERPRINT
        .check(m)
        .map_err(|_| IceError::FingerprintMismatch)
}

/// The STUN method bits of a message type (RFC 8489 §5: M0-M3, M4-M6, M7-M11 around the class
/// bits), for the error value; rtc-stun keeps its `Method` value private.
fn method_of(pkt: &[u8]) -> u16 {
    let t = pkt.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
}

/// The ERROR-CODE of an error response.
fn error_code(m: &Message) -> Result<u16, IceError> {
    use rtc_stun::message::Getter as _;
    if !m.contains(ATTR_ERROR_CODE) {
        return Err(IceError::Malformed(
            "error response without ERROR-CODE".into(),
        ));
    }
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m)
        .map_err(|e| IceError::Malformed(format!("ERROR-CODE: {e}")))?;
    Ok(e.code.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_stun::message::{Getter as _, MessageType};

    const LITE: &str = "192.0.2.1:20000";
    const PEER: &str = "198.51.100.7:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn creds(ufrag: &str, pwd: &str) -> IceCredentials {
        IceCredentials {
            ufrag: ufrag.into(),
            pwd: pwd.into(),
        }
    }

    /// Riptide's side in the single-agent tests.
    fn ours() -> IceCredentials {
        creds("rtufrag1", "riptide-password-0123456")
    }

    /// The peer's side.
    fn theirs() -> IceCredentials {
        creds("pfrag", "peer-password-abcdefghij")
    }

    fn provider() -> Arc<dyn RTCCryptoProvider> {
        rtc_stun::crypto::default_provider().expect("ring provider")
    }

    /// A Binding request as a peer would build it, with every part optional.
    #[derive(Clone)]
    struct Req {
        tid: [u8; 12],
        username: Option<String>,
        priority: Option<u32>,
        role: Option<(bool, u64)>,
        use_candidate: bool,
        extra: Vec<(u16, Vec<u8>)>,
        pwd: Option<String>,
        fingerprint: bool,
    }

    impl Req {
        /// What a full controlling peer sends to riptide: correct in every respect.
        fn valid() -> Req {
            Req {
                tid: [7; 12],
                username: Some(format!("{}:{}", ours().ufrag, theirs().ufrag)),
                priority: Some(PRFLX_PRIORITY),
                role: Some((true, 42)),
                use_candidate: false,
                extra: Vec::new(),
                pwd: Some(ours().pwd),
                fingerprint: true,
            }
        }

        fn nominating(mut self) -> Req {
            self.use_candidate = true;
            self
        }

        fn build(&self) -> Vec<u8> {
            let p = provider();
            let mut m = Message::new();
            m.build(&[Box::new(BINDING_REQUEST), Box::new(TransactionId(self.tid))])
                .expect("header");
            if let Some(u) = &self.username {
                TextAttribute::new(ATTR_USERNAME, u.clone())
                    .add_to(&mut m)
                    .expect("username");
            }
            for (t, v) in &self.extra {
                m.add(AttrType(*t), v);
            }
            if let Some(pr) = self.priority {
                PriorityAttr(pr).add_to(&mut m).expect("priority");
            }
            match self.role {
                Some((true, tb)) => AttrControlling(tb).add_to(&mut m).expect("role"),
                Some((false, tb)) => AttrControlled(tb).add_to(&mut m).expect("role"),
                None => {}
            }
            if self.use_candidate {
                UseCandidateAttr::new()
                    .add_to(&mut m)
                    .expect("use-candidate");
            }
            if let Some(pwd) = &self.pwd {
                MessageIntegrity::new_short_term_integrity_with_provider(pwd.clone(), p.crypto())
                    .add_to(&mut m)
                    .expect("integrity");
            }
            if self.fingerprint {
                FINGERPRINT.add_to(&mut m).expect("fingerprint");
            }
            m.raw
        }
    }

    fn parse(pkt: &[u8]) -> Message {
        let mut m = Message::new();
        m.unmarshal_binary(pkt).expect("riptide sends valid STUN");
        m
    }

    fn integrity_ok(pkt: &[u8], pwd: &str) -> bool {
        let mut m = parse(pkt);
        MessageIntegrity::check(&mut m, pwd.as_bytes(), provider().crypto()).is_ok()
    }

    fn fingerprint_ok(pkt: &[u8]) -> bool {
        FINGERPRINT.check(&parse(pkt)).is_ok()
    }

    fn code_of(pkt: &[u8]) -> u16 {
        let mut e = ErrorCodeAttribute::default();
        e.get_from(&parse(pkt)).expect("ERROR-CODE");
        e.code.0
    }

    fn typ(pkt: &[u8]) -> MessageType {
        parse(pkt).typ
    }

    fn lite(now: Instant) -> IceAgent {
        IceAgent::new(IceMode::Lite, ours(), theirs(), vec![addr(PEER)], now)
    }

    #[test]
    fn credentials_are_random_ice_chars() {
        let a = IceCredentials::generate();
        let b = IceCredentials::generate();
        assert_eq!(a.ufrag.len(), 8);
        assert_eq!(a.pwd.len(), 24);
        let ice_char = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
        assert!(a.ufrag.chars().chain(a.pwd.chars()).all(ice_char));
        assert_ne!(a, b);
        assert!(
            !format!("{a:?}").contains(&a.pwd),
            "password never in Debug"
        );
    }

    #[test]
    fn demux_recognises_stun_only() {
        let req = Req::valid().build();
        assert!(is_stun(&req));
        assert!(!is_stun(&req[..19]));
        let mut rtp = req.clone();
        rtp[0] = 0x80;
        assert!(!is_stun(&rtp));
        let mut dtls = req.clone();
        dtls[0] = 22;
        assert!(!is_stun(&dtls));
        let mut no_cookie = req;
        no_cookie[5] ^= 1;
        assert!(!is_stun(&no_cookie));
    }

    #[test]
    fn lite_answers_a_valid_request_and_selects_on_use_candidate() {
        let t0 = Instant::now();
        let mut ice = lite(t0);
        let peer = addr(PEER);
        assert_eq!(ice.poll_transmit(), None, "a lite agent sends no checks");
        assert_eq!(ice.send_addr(t0), None);
        assert!(!ice.accepts_from(peer));

        let req = Req::valid();
        ice.handle_stun(t0, peer, &req.build())
            .expect("valid request");
        let (dest, resp) = ice.poll_transmit().expect("a response");
        assert_eq!(dest, peer);
        assert_eq!(typ(&resp), BINDING_SUCCESS);
        let m = parse(&resp);
        assert_eq!(m.transaction_id.0, req.tid);
        let mut xma = XorMappedAddress::default();
        xma.get_from(&m).expect("XOR-MAPPED-ADDRESS");
        assert_eq!(SocketAddr::new(xma.ip, xma.port), peer);
        assert!(integrity_ok(&resp, &ours().pwd), "keyed with our password");
        assert!(!integrity_ok(&resp, &theirs().pwd));
        assert!(fingerprint_ok(&resp));
        // FINGERPRINT last, MESSAGE-INTEGRITY just before it.
        let kinds: Vec<AttrType> = m.attributes.0.iter().map(|a| a.typ).collect();
        assert_eq!(
            kinds[kinds.len() - 2..],
            [ATTR_MESSAGE_INTEGRITY, ATTR_FINGERPRINT]
        );

        // Valid, but not nominated: media accepted from it, none sent to it (RFC 8445 §7.3.2).
        assert!(ice.accepts_from(peer));
        assert_eq!(ice.send_addr(t0), None);
        assert_eq!(ice.state(t0), IceState::Checking);

        let t1 = t0 + Duration::from_millis(100);
        let nom = Req {
            tid: [8; 12],
            ..Req::valid().nominating()
        };
        ice.handle_stun(t1, peer, &nom.build()).expect("nomination");
        assert!(ice.poll_transmit().is_some());
        assert_eq!(ice.send_addr(t1), Some(peer));
        assert_eq!(ice.state(t1), IceState::Connected);
        assert_eq!(ice.consent_expires(), Some(t1 + CONSENT_TIMEOUT));
    }

    /// Feeds `pkt` to a fresh lite agent; returns the error and the response, if any.
    fn refused(pkt: &[u8]) -> (IceError, Option<Vec<u8>>, IceAgent) {
        let t0 = Instant::now();
        let mut ice = lite(t0);
        let err = ice
            .handle_stun(t0, addr(PEER), pkt)
            .expect_err("must be refused");
        let resp = ice.poll_transmit().map(|(d, p)| {
            assert_eq!(d, addr(PEER));
            p
        });
        assert!(ice.poll_transmit().is_none());
        assert!(!ice.accepts_from(addr(PEER)), "{err}: nothing validated");
        assert_eq!(ice.send_addr(t0), None);
        assert_eq!(ice.state(t0), IceState::Checking);
        (err, resp, ice)
    }

    fn assert_unauthenticated_error(resp: &[u8], tid: [u8; 12], code: u16) {
        assert_eq!(typ(resp), BINDING_ERROR);
        assert_eq!(code_of(resp), code);
        let m = parse(resp);
        assert_eq!(m.transaction_id.0, tid);
        assert!(!m.contains(ATTR_MESSAGE_INTEGRITY), "RFC 8489 §9.1.3");
        assert!(fingerprint_ok(resp));
    }

    #[test]
    fn wrong_password_gets_401_without_integrity() {
        let req = Req {
            pwd: Some("not-the-password-at-all".into()),
            ..Req::valid().nominating()
        };
        let (err, resp, _) = refused(&req.build());
        assert_eq!(err, IceError::IntegrityMismatch);
        assert_unauthenticated_error(&resp.expect("401"), req.tid, 401);
    }

    #[test]
    fn wrong_username_gets_401() {
        for username in [
            format!("someone:{}", theirs().ufrag),
            format!("{}:someone-else", ours().ufrag),
            ours().ufrag,
            format!("{}x:{}", ours().ufrag, theirs().ufrag),
        ] {
            let req = Req {
                username: Some(username.clone()),
                ..Req::valid().nominating()
            };
            let (err, resp, _) = refused(&req.build());
            assert_eq!(err, IceError::UnknownUsername(username));
            assert_unauthenticated_error(&resp.expect("401"), req.tid, 401);
        }
    }

    #[test]
    fn missing_credentials_get_400() {
        let no_mi = Req {
            pwd: None,
            ..Req::valid()
        };
        let (err, resp, _) = refused(&no_mi.build());
        assert_eq!(err, IceError::MissingIntegrity);
        assert_unauthenticated_error(&resp.expect("400"), no_mi.tid, 400);

        let no_user = Req {
            username: None,
            ..Req::valid()
        };
        let (err, resp, _) = refused(&no_user.build());
        assert_eq!(err, IceError::MissingUsername);
        assert_unauthenticated_error(&resp.expect("400"), no_user.tid, 400);
    }

    #[test]
    fn missing_or_bad_fingerprint_is_dropped_silently() {
        let no_fp = Req {
            fingerprint: false,
            ..Req::valid().nominating()
        };
        let (err, resp, _) = refused(&no_fp.build());
        assert_eq!(err, IceError::MissingFingerprint);
        assert!(resp.is_none());

        let mut flipped = Req::valid().nominating().build();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        let (err, resp, _) = refused(&flipped);
        assert_eq!(err, IceError::FingerprintMismatch);
        assert!(resp.is_none());
    }

    #[test]
    fn authenticated_but_incomplete_requests_get_authenticated_errors() {
        let no_prio = Req {
            priority: None,
            ..Req::valid()
        };
        let (err, resp, _) = refused(&no_prio.build());
        assert_eq!(err, IceError::MissingPriority);
        let resp = resp.expect("400");
        assert_eq!(code_of(&resp), 400);
        assert!(integrity_ok(&resp, &ours().pwd));

        let unknown = Req {
            extra: vec![(0x0042, vec![1, 2, 3, 4])],
            ..Req::valid()
        };
        let (err, resp, _) = refused(&unknown.build());
        assert_eq!(err, IceError::UnknownAttributes(vec![0x0042]));
        let resp = resp.expect("420");
        assert_eq!(code_of(&resp), 420);
        let mut ua = UnknownAttributes(Vec::new());
        ua.get_from(&parse(&resp)).expect("UNKNOWN-ATTRIBUTES");
        assert_eq!(ua.0, vec![AttrType(0x0042)]);
        assert!(integrity_ok(&resp, &ours().pwd));
        assert!(fingerprint_ok(&resp));

        // Comprehension-optional attributes (here GOOG-NETWORK-INFO) are ignored.
        let t0 = Instant::now();
        let mut ice = lite(t0);
        let optional = Req {
            extra: vec![(0xC057, vec![0, 1, 0, 10])],
            ..Req::valid()
        };
        ice.handle_stun(t0, addr(PEER), &optional.build())
            .expect("optional attribute ignored");
    }

    #[test]
    fn lite_answers_487_to_a_peer_that_claims_controlled() {
        let req = Req {
            role: Some((false, u64::MAX)),
            ..Req::valid().nominating()
        };
        let (err, resp, ice) = refused(&req.build());
        assert_eq!(err, IceError::RoleConflict);
        let resp = resp.expect("487");
        assert_eq!(code_of(&resp), 487);
        assert!(integrity_ok(&resp, &ours().pwd));
        assert!(!ice.is_controlling());
    }

    #[test]
    fn truncated_flipped_and_random_packets_never_panic_or_validate() {
        let good = Req::valid().nominating().build();
        for len in 0..good.len() {
            let (_, resp, _) = refused(&good[..len]);
            assert!(resp.is_none(), "truncated to {len}: no answer");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut pkt = good.clone();
                pkt[i] ^= 1 << bit;
                let (_, resp, _) = refused(&pkt);
                assert!(resp.is_none(), "byte {i} bit {bit}: dropped silently");
            }
        }
        // Random bodies behind a STUN header, including random attribute lengths.
        let t0 = Instant::now();
        let mut ice = lite(t0);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let body_len = (next() % 64) as usize * 4;
            let mut pkt = vec![0u8; 20 + body_len];
            for b in pkt.iter_mut() {
                *b = next() as u8;
            }
            pkt[0] &= 0x01;
            pkt[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
            pkt[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            let _ = ice.handle_stun(t0, addr(PEER), &pkt);
        }
        assert!(!ice.accepts_from(addr(PEER)));
        assert_eq!(ice.send_addr(t0), None);
    }

    #[test]
    fn binding_indications_are_ignored() {
        let t0 = Instant::now();
        let mut ice = lite(t0);
        let mut m = Message::new();
        m.build(&[
            Box::new(MessageType::new(METHOD_BINDING, CLASS_INDICATION)),
            Box::new(TransactionId([3; 12])),
            Box::new(FINGERPRINT),
        ])
        .expect("indication");
        ice.handle_stun(t0, addr(PEER), &m.raw)
            .expect("keepalive accepted");
        assert!(ice.poll_transmit().is_none());
        assert!(!ice.accepts_from(addr(PEER)));
    }

    /// Two agents wired back to back; every datagram arrives at once, unless dropped.
    struct Sim {
        now: Instant,
        a: IceAgent,
        b: IceAgent,
        a_addr: SocketAddr,
        b_addr: SocketAddr,
        drop_from_a: bool,
        drop_from_b: bool,
        /// When A last received a success response from B (A's last proof of consent).
        last_success_to_a: Option<Instant>,
    }

    impl Sim {
        fn pair(a_mode: IceMode, b_mode: IceMode) -> Sim {
            let now = Instant::now();
            let (a_addr, b_addr) = (addr("10.0.0.1:5000"), addr("10.0.0.2:6000"));
            let (ac, bc) = (IceCredentials::generate(), IceCredentials::generate());
            Sim {
                now,
                a: IceAgent::new(a_mode, ac.clone(), bc.clone(), vec![b_addr], now),
                b: IceAgent::new(b_mode, bc, ac, vec![a_addr], now),
                a_addr,
                b_addr,
                drop_from_a: false,
                drop_from_b: false,
                last_success_to_a: None,
            }
        }

        fn pump(&mut self) {
            for _ in 0..1000 {
                let mut moved = false;
                while let Some((dst, pkt)) = self.a.poll_transmit() {
                    moved = true;
                    assert_eq!(dst, self.b_addr, "A sends only to B's checked address");
                    if !self.drop_from_a {
                        let _ = self.b.handle_stun(self.now, self.a_addr, &pkt);
                    }
                }
                while let Some((dst, pkt)) = self.b.poll_transmit() {
                    moved = true;
                    assert_eq!(dst, self.a_addr, "B sends only to A's checked address");
                    if !self.drop_from_b {
                        if typ(&pkt) == BINDING_SUCCESS {
                            self.last_success_to_a = Some(self.now);
                        }
                        let _ = self.a.handle_stun(self.now, self.b_addr, &pkt);
                    }
                }
                if !moved {
                    return;
                }
            }
            panic!("agents keep talking without time passing");
        }

        /// Runs to `until`, calling `check` after every event.
        fn run(&mut self, until: Instant, mut check: impl FnMut(&Sim)) {
            for _ in 0..1_000_000 {
                self.pump();
                check(self);
                let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) if t <= until => {
                        self.now = self.now.max(t);
                        self.a.handle_timeout(self.now);
                        self.b.handle_timeout(self.now);
                    }
                    _ => {
                        self.now = until;
                        self.a.handle_timeout(self.now);
                        self.b.handle_timeout(self.now);
                        self.pump();
                        check(self);
                        return;
                    }
                }
            }
            panic!("timers never settle");
        }

        /// Media never goes anywhere but to the peer, and only once that address is accepted.
        fn media_invariant(&self) {
            for (ice, peer) in [(&self.a, self.b_addr), (&self.b, self.a_addr)] {
                if let Some(to) = ice.send_addr(self.now) {
                    assert_eq!(to, peer);
                    assert!(ice.accepts_from(to));
                    assert_eq!(ice.state(self.now), IceState::Connected);
                }
            }
        }

        fn connect(&mut self) {
            let t0 = self.now;
            self.run(t0 + Duration::from_secs(2), |s| s.media_invariant());
            for (ice, peer) in [(&self.a, self.b_addr), (&self.b, self.a_addr)] {
                assert_eq!(ice.state(self.now), IceState::Connected, "{ice:?}");
                assert_eq!(ice.send_addr(self.now), Some(peer));
                assert!(ice.accepts_from(peer));
            }
        }
    }

    #[test]
    fn two_full_agents_connect_keep_consent_and_lose_it() {
        let mut sim = Sim::pair(
            IceMode::Full { controlling: true },
            IceMode::Full { controlling: false },
        );
        assert_eq!(sim.a.send_addr(sim.now), None);
        sim.connect();
        assert!(sim.a.is_controlling() && !sim.b.is_controlling());

        // Two minutes of consent requests every 4-6 s keep both connected throughout.
        let start = sim.now;
        let mut consent_seen = 0;
        let mut last_expiry = sim.a.consent_expires();
        sim.run(start + Duration::from_secs(120), |s| {
            s.media_invariant();
            assert_eq!(s.a.state(s.now), IceState::Connected);
            assert_eq!(s.b.state(s.now), IceState::Connected);
            if s.a.consent_expires() != last_expiry {
                consent_seen += 1;
                last_expiry = s.a.consent_expires();
            }
        });
        assert!(
            (20..=30).contains(&consent_seen),
            "A's consent refreshed {consent_seen} times in 120 s"
        );

        // B goes silent: A loses consent exactly 30 s after its last proof.
        sim.drop_from_b = true;
        let last = sim.last_success_to_a.expect("A got responses");
        let mut lost_at = None;
        sim.run(sim.now + Duration::from_secs(40), |s| {
            s.media_invariant();
            if lost_at.is_none() && s.a.send_addr(s.now).is_none() {
                lost_at = Some(s.now);
            }
        });
        let lost_at = lost_at.expect("consent lost");
        let after = lost_at - last;
        assert!(
            after >= Duration::from_secs(30) && after <= Duration::from_secs(31),
            "lost {after:?} after the last proof"
        );
        assert_eq!(after, CONSENT_TIMEOUT, "exact to the instant");
        assert!(sim
            .a
            .send_addr(lost_at - Duration::from_millis(1))
            .is_some());
        assert_eq!(sim.a.state(sim.now), IceState::ConsentLost);
        assert_eq!(sim.a.send_addr(sim.now), None);

        // Lost consent stays lost even when B is heard again (RFC 7675 §5.1).
        sim.drop_from_b = false;
        sim.run(sim.now + Duration::from_secs(20), |s| s.media_invariant());
        assert_eq!(sim.a.state(sim.now), IceState::ConsentLost);
        assert_eq!(sim.a.send_addr(sim.now), None);
    }

    #[test]
    fn lite_and_full_controlling_connect_and_stay_connected() {
        let mut sim = Sim::pair(IceMode::Lite, IceMode::Full { controlling: true });
        sim.connect();
        let start = sim.now;
        sim.run(start + Duration::from_secs(120), |s| {
            s.media_invariant();
            assert_eq!(s.a.state(s.now), IceState::Connected);
            assert_eq!(s.b.state(s.now), IceState::Connected);
        });
    }

    #[test]
    fn a_full_peer_that_thinks_it_is_controlled_is_turned_around_by_lite() {
        // The peer got the roles wrong; the lite agent's 487 makes it controlling.
        let mut sim = Sim::pair(IceMode::Lite, IceMode::Full { controlling: false });
        sim.connect();
        assert!(sim.b.is_controlling());
    }

    #[test]
    fn role_conflicts_resolve_by_tie_breaker() {
        for both in [true, false] {
            let mut sim = Sim::pair(
                IceMode::Full { controlling: both },
                IceMode::Full { controlling: both },
            );
            sim.connect();
            assert_ne!(
                sim.a.is_controlling(),
                sim.b.is_controlling(),
                "exactly one controls"
            );
            let winner = if sim.a.tie_breaker > sim.b.tie_breaker {
                &sim.a
            } else {
                &sim.b
            };
            assert!(winner.is_controlling(), "the larger tie-breaker controls");
        }
    }

    /// A baresip-like peer (libre): it answers Binding requests but after ICE completes sends only
    /// unauthenticated Binding indications every 15-16 s. The lite agent's own consent requests
    /// keep the call up; when the peer stops answering, consent goes 30 s after the last answer.
    #[test]
    fn lite_keeps_consent_with_a_peer_that_only_sends_indications() {
        let t0 = Instant::now();
        let peer = addr(PEER);
        let mut ice = lite(t0);
        ice.handle_stun(t0, peer, &Req::valid().nominating().build())
            .expect("nomination");
        let mut now = t0;
        let mut next_indication = t0 + Duration::from_secs(15);
        let mut answering = true;
        let mut last_answer = t0;
        let mut requests = 0;
        let end = t0 + Duration::from_secs(240);
        let stop_answering = t0 + Duration::from_secs(180);
        while now < end {
            while let Some((dest, pkt)) = ice.poll_transmit() {
                assert_eq!(dest, peer);
                if typ(&pkt) != BINDING_REQUEST {
                    continue;
                }
                requests += 1;
                let m = parse(&pkt);
                // What libre's stunsrv.c checks before answering.
                let u = TextAttribute::get_from_as(&m, ATTR_USERNAME).expect("USERNAME");
                assert_eq!(u.text, format!("{}:{}", theirs().ufrag, ours().ufrag));
                assert!(integrity_ok(&pkt, &theirs().pwd));
                assert!(fingerprint_ok(&pkt));
                assert!(m.contains(ATTR_PRIORITY) && m.contains(ATTR_ICE_CONTROLLED));
                if answering {
                    let mut r = Message::new();
                    r.build(&[
                        Box::new(BINDING_SUCCESS),
                        Box::new(TransactionId(m.transaction_id.0)),
                        Box::new(XorMappedAddress {
                            ip: addr(LITE).ip(),
                            port: addr(LITE).port(),
                        }),
                        Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                            theirs().pwd,
                            provider().crypto(),
                        )),
                        Box::new(FINGERPRINT),
                    ])
                    .expect("response");
                    ice.handle_stun(now, peer, &r.raw)
                        .expect("consent response");
                    last_answer = now;
                }
            }
            if now >= stop_answering {
                answering = false;
            }
            if now < stop_answering {
                assert_eq!(ice.state(now), IceState::Connected, "at {:?}", now - t0);
            }
            // After consent is lost the agent has nothing left to time.
            let next = ice.poll_timeout().unwrap_or(end).min(next_indication);
            now = next.min(end);
            if now >= next_indication {
                let mut ind = Message::new();
                ind.build(&[
                    Box::new(MessageType::new(METHOD_BINDING, CLASS_INDICATION)),
                    Box::new(TransactionId([9; 12])),
                    Box::new(FINGERPRINT),
                ])
                .expect("indication");
                ice.handle_stun(now, peer, &ind.raw).expect("indication");
                next_indication = now + Duration::from_secs(15);
            }
            ice.handle_timeout(now);
        }
        assert!(requests >= 30, "{requests} consent requests in 180 s");
        assert_eq!(ice.state(end), IceState::ConsentLost);
        assert_eq!(ice.consent_expires(), Some(last_answer + CONSENT_TIMEOUT));
    }

    #[test]
    fn ice_restart_via_set_remote_drops_validation_and_reconnects() {
        let mut sim = Sim::pair(
            IceMode::Full { controlling: true },
            IceMode::Full { controlling: false },
        );
        sim.connect();
        // A request of the old generation, kept for later.
        let old_b_creds = sim.b.local_credentials().clone();
        let stale = Req {
            username: Some(format!(
                "{}:{}",
                old_b_creds.ufrag,
                sim.a.local_credentials().ufrag
            )),
            pwd: Some(old_b_creds.pwd.clone()),
            ..Req::valid()
        }
        .build();

        // A offers a restart with new credentials of its own; B keeps its own (set_remote) and
        // A learns nothing new about B.
        let a_new = IceCredentials::generate();
        sim.a
            .restart(sim.now, a_new.clone(), old_b_creds, vec![sim.b_addr]);
        sim.b.set_remote(sim.now, a_new, vec![sim.a_addr]);
        for (ice, peer) in [(&sim.a, sim.b_addr), (&sim.b, sim.a_addr)] {
            assert_eq!(ice.send_addr(sim.now), None, "validation dropped");
            assert!(!ice.accepts_from(peer));
            assert_eq!(ice.state(sim.now), IceState::Checking);
            assert_eq!(ice.selected(), None);
        }
        // A request of the old generation (A's old ufrag) is refused at B.
        let err = sim.b.handle_stun(sim.now, sim.a_addr, &stale);
        assert!(matches!(err, Err(IceError::UnknownUsername(_))), "{err:?}");
        while sim.b.poll_transmit().is_some() {}

        sim.connect();

        // Same credentials again with an extra candidate is not a restart.
        let a_creds = sim.a.local_credentials().clone();
        sim.b
            .set_remote(sim.now, a_creds, vec![sim.a_addr, addr("10.9.9.9:9")]);
        assert_eq!(sim.b.send_addr(sim.now), Some(sim.a_addr));
    }

    #[test]
    fn lite_restart_drops_selection() {
        let t0 = Instant::now();
        let mut ice = lite(t0);
        let peer = addr(PEER);
        ice.handle_stun(t0, peer, &Req::valid().nominating().build())
            .expect("nomination");
        assert_eq!(ice.send_addr(t0), Some(peer));
        let new_remote = creds("newfrag", "new-peer-password-xyzxyz");
        ice.set_remote(t0, new_remote.clone(), vec![peer]);
        assert_eq!(ice.send_addr(t0), None);
        assert!(!ice.accepts_from(peer));
        // The old username is refused, the new one accepted.
        let err = ice.handle_stun(t0, peer, &Req::valid().nominating().build());
        assert!(matches!(err, Err(IceError::UnknownUsername(_))));
        let req = Req {
            username: Some(format!("{}:{}", ours().ufrag, new_remote.ufrag)),
            ..Req::valid().nominating()
        };
        ice.handle_stun(t0, peer, &req.build())
            .expect("new generation");
        assert_eq!(ice.send_addr(t0), Some(peer));
    }

    #[test]
    fn unanswered_check_follows_rfc8489_schedule_then_fails() {
        let t0 = Instant::now();
        let peer = addr(PEER);
        let mut ice = IceAgent::new(
            IceMode::Full { controlling: true },
            ours(),
            theirs(),
            vec![peer],
            t0,
        );
        let mut sends = Vec::new();
        let mut now = t0;
        let mut failed_at = None;
        for _ in 0..100 {
            while let Some((dest, pkt)) = ice.poll_transmit() {
                assert_eq!(dest, peer);
                assert_eq!(typ(&pkt), BINDING_REQUEST);
                assert!(
                    integrity_ok(&pkt, &theirs().pwd),
                    "keyed with their password"
                );
                assert!(fingerprint_ok(&pkt));
                sends.push((now - t0).as_millis());
                assert_eq!(ice.send_addr(now), None);
            }
            if ice.state(now) == IceState::Failed {
                failed_at = Some(now - t0);
                break;
            }
            assert_eq!(ice.state(now), IceState::Checking);
            let Some(t) = ice.poll_timeout() else { break };
            now = t;
            ice.handle_timeout(now);
        }
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(failed_at, Some(Duration::from_millis(39_500)));
        assert_eq!(ice.poll_timeout(), None, "nothing left to do");
        assert_eq!(ice.send_addr(now), None);
    }

    #[test]
    fn no_media_address_before_a_check_passes() {
        let t0 = Instant::now();
        let peer = addr(PEER);
        // Controlled full agent: the peer nominates before our own check has succeeded.
        let mut ice = IceAgent::new(
            IceMode::Full { controlling: false },
            ours(),
            theirs(),
            vec![peer],
            t0,
        );
        assert_eq!(ice.send_addr(t0), None);
        let (_, check) = ice.poll_transmit().expect("first check");
        let check = parse(&check);
        ice.handle_stun(t0, peer, &Req::valid().nominating().build())
            .expect("peer's nominating request");
        assert_eq!(ice.send_addr(t0), None, "our check has not succeeded yet");
        assert!(ice.accepts_from(peer), "but the peer proved it is there");

        let response = |pwd: &str, tid: [u8; 12]| {
            let mut r = Message::new();
            r.build(&[
                Box::new(BINDING_SUCCESS),
                Box::new(TransactionId(tid)),
                Box::new(XorMappedAddress {
                    ip: addr(LITE).ip(),
                    port: addr(LITE).port(),
                }),
                Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                    pwd.to_string(),
                    provider().crypto(),
                )),
                Box::new(FINGERPRINT),
            ])
            .expect("response");
            r.raw
        };
        let tid = check.transaction_id.0;
        // Forged: wrong key, unknown transaction, or from elsewhere.
        assert_eq!(
            ice.handle_stun(t0, peer, &response(&ours().pwd, tid)),
            Err(IceError::IntegrityMismatch)
        );
        assert_eq!(
            ice.handle_stun(t0, peer, &response(&theirs().pwd, [1; 12])),
            Err(IceError::UnknownTransaction)
        );
        assert_eq!(ice.send_addr(t0), None);
        let elsewhere = addr("203.0.113.5:1234");
        assert!(!ice.accepts_from(elsewhere));

        // The genuine response: checked and nominated, media may flow.
        ice.handle_stun(t0, peer, &response(&theirs().pwd, tid))
            .expect("genuine response");
        assert_eq!(ice.send_addr(t0), Some(peer));
        assert!(!ice.accepts_from(elsewhere));
    }

    #[test]
    fn asymmetric_response_fails_the_check() {
        let t0 = Instant::now();
        let peer = addr(PEER);
        let mut ice = IceAgent::new(
            IceMode::Full { controlling: true },
            ours(),
            theirs(),
            vec![peer],
            t0,
        );
        let (_, check) = ice.poll_transmit().expect("check");
        let tid = parse(&check).transaction_id.0;
        let mut r = Message::new();
        r.build(&[
            Box::new(BINDING_SUCCESS),
            Box::new(TransactionId(tid)),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                theirs().pwd,
                provider().crypto(),
            )),
            Box::new(FINGERPRINT),
        ])
        .expect("response");
        let other = addr("198.51.100.8:40000");
        assert_eq!(
            ice.handle_stun(t0, other, &r.raw),
            Err(IceError::AsymmetricResponse {
                expected: peer,
                got: other
            })
        );
        assert_eq!(ice.state(t0), IceState::Failed);
        assert!(!ice.accepts_from(other) && !ice.accepts_from(peer));
    }
}
