//! DTLS-SRTP for the legacy leg (RFC 5763, RFC 5764), sans-IO.
//!
//! The gateway has one [`DtlsIdentity`] (a self-signed ECDSA P-256 certificate) whose
//! [`fingerprint`](DtlsIdentity::fingerprint) goes into every `a=fingerprint` it sends. Per call
//! leg, a [`DtlsEndpoint`] runs the handshake over the leg's media 5-tuple: the caller feeds it
//! every datagram that [`is_dtls`] recognises (RFC 7983 demultiplexing), sends what
//! [`poll_transmit`](DtlsEndpoint::poll_transmit) yields, and drives retransmissions through
//! [`poll_timeout`](DtlsEndpoint::poll_timeout) / [`handle_timeout`](DtlsEndpoint::handle_timeout).
//! Once [`Connected`](DtlsState::Connected), [`take_srtp`](DtlsEndpoint::take_srtp) hands out the
//! [`SrtpSession`] keyed from the handshake.
//!
//! Authentication is the SDP fingerprint only (RFC 5763 §5): certificates are self-signed, no
//! chain is validated, and the peer's end-entity certificate must hash to the fingerprint the
//! peer signalled. Both roles demand a certificate from the other side.
//!
//! The DTLS state machine is rtc-dtls (webrtc.rs), driven the way its own peer connection drives
//! it: one `Endpoint` per leg holding a single association under a placeholder address (the
//! caller owns the real 5-tuple), the fingerprint checked in its `verify_peer_certificate`
//! callback, and the SRTP keys exported from the finished handshake's connection state.
//!
//! After the handshake, ChangeCipherSpec records are dropped before rtc-dtls sees them: it does
//! not authenticate them, and a malformed one would make it end the association. Application
//! data is ignored (the leg carries only SRTP); a close_notify ends the association.
//!
//! Clocks: every timer runs on the `now` the caller passes in. rtc-dtls itself reads the wall
//! clock (`SystemTime::now()`) once per handshake, for the `gmt_unix_time` field of its Hello
//! random; that value is sent, never used for timing. [`DtlsIdentity::generate`] reads the wall
//! clock for the certificate's validity.

use crate::media::srtp::{SrtpSession, Suite};
use rtc_dtls::config::{
    ClientAuthType, ConfigBuilder, ExtendedMasterSecretType, HandshakeConfig,
    VerifyPeerCertificateFn,
};
use rtc_dtls::crypto::{Certificate, CryptoPrivateKey};
use rtc_dtls::crypto_provider::providers::RingProvider;
use rtc_dtls::crypto_provider::RTCCryptoProvider;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rustls::pki_types::CertificateDer;
use std::collections::VecDeque;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// RFC 5764 §4.2: the exporter label for SRTP keying material.
const SRTP_EXPORTER_LABEL: &str = "EXTRACTOR-dtls_srtp";

/// The SRTP protection profiles riptide offers (as client) and accepts (as server), in order of
/// preference. rtc-dtls also knows `SRTP_AEAD_AES_256_GCM`, which [`Suite`] does not cover.
const SRTP_PROFILES: [SrtpProtectionProfile; 3] = [
    SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
];

/// rtc-dtls keys its associations by remote address; a [`DtlsEndpoint`] holds exactly one, and
/// the caller owns the real 5-tuple, so both ends of it are placeholders (the port must not be 0).
const PLACEHOLDER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9));

/// How long the gateway's certificate is valid before and after its generation. Peers
/// authenticate it by fingerprint only, but some check the dates anyway; a gateway process
/// lives for months, and one identity serves all its calls.
const CERT_BACKDATE: Duration = Duration::from_secs(24 * 3600);
const CERT_LIFETIME: Duration = Duration::from_secs(398 * 24 * 3600);

/// Sent as SNI by rtc-dtls clients; without it rtc-dtls falls back to "localhost" with a warning.
const SERVER_NAME: &str = "riptide";

/// Why a DTLS-SRTP step was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsError {
    /// Generating or loading the gateway's certificate.
    Certificate(String),
    /// An `a=fingerprint` value that cannot be used.
    Fingerprint(String),
    /// An `a=setup` combination that cannot start DTLS.
    Setup(String),
    /// rtc-dtls refused the configuration or could not start the handshake.
    Config(String),
    /// Not a DTLS record by RFC 7983 demultiplexing (first byte outside 20..=63).
    NotDtls,
    /// Record framing broken (lengths that do not add up); the datagram was dropped.
    Malformed(String),
    /// The association has failed (this packet made it fail, or it had failed before).
    Failed(String),
}

impl fmt::Display for DtlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DtlsError::Certificate(s) => write!(f, "DTLS certificate: {s}"),
            DtlsError::Fingerprint(s) => write!(f, "a=fingerprint: {s}"),
            DtlsError::Setup(s) => write!(f, "a=setup: {s}"),
            DtlsError::Config(s) => write!(f, "DTLS configuration: {s}"),
            DtlsError::NotDtls => write!(f, "not a DTLS record (RFC 7983 first byte)"),
            DtlsError::Malformed(s) => write!(f, "malformed DTLS datagram: {s}"),
            DtlsError::Failed(s) => write!(f, "DTLS association failed: {s}"),
        }
    }
}

impl std::error::Error for DtlsError {}

/// The hash functions of RFC 8122 §5 riptide verifies, weakest first (MD2 and MD5 are excluded
/// there; sha-224 is not offered by ring, the project's one crypto provider, and is unseen in
/// practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashFunction {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl HashFunction {
    const ALL: [HashFunction; 4] = [
        HashFunction::Sha1,
        HashFunction::Sha256,
        HashFunction::Sha384,
        HashFunction::Sha512,
    ];

    /// The name as written in `a=fingerprint` (the IANA "Hash Function Textual Names").
    pub fn name(self) -> &'static str {
        match self {
            HashFunction::Sha1 => "sha-1",
            HashFunction::Sha256 => "sha-256",
            HashFunction::Sha384 => "sha-384",
            HashFunction::Sha512 => "sha-512",
        }
    }

    /// Case-insensitive (RFC 8122 §5).
    pub fn from_name(name: &str) -> Option<HashFunction> {
        HashFunction::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashFunction::Sha1 => 20,
            HashFunction::Sha256 => 32,
            HashFunction::Sha384 => 48,
            HashFunction::Sha512 => 64,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use ring::digest;
        let alg = match self {
            HashFunction::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            HashFunction::Sha256 => &digest::SHA256,
            HashFunction::Sha384 => &digest::SHA384,
            HashFunction::Sha512 => &digest::SHA512,
        };
        digest::digest(alg, data).as_ref().to_vec()
    }
}

/// A certificate fingerprint: an `a=fingerprint` value (RFC 8122 §5), e.g.
/// `sha-256 AB:CD:...`. Its [`Display`](fmt::Display) form is canonical (lower-case hash name,
/// upper-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    hash: HashFunction,
    value: Vec<u8>,
}

impl Fingerprint {
    /// Parses `hash-func SP hex:hex:...`. The hash name and the hex digits are case-insensitive;
    /// every byte is exactly two hex digits and there must be as many as the hash gives.
    pub fn parse(value: &str) -> Result<Fingerprint, DtlsError> {
        let mut parts = value.split_ascii_whitespace();
        let name = parts
            .next()
            .ok_or_else(|| DtlsError::Fingerprint("empty".into()))?;
        let hex = parts
            .next()
            .ok_or_else(|| DtlsError::Fingerprint(format!("{name}: no fingerprint value")))?;
        if let Some(extra) = parts.next() {
            return Err(DtlsError::Fingerprint(format!(
                "unexpected {extra:?} after the fingerprint"
            )));
        }
        let hash = HashFunction::from_name(name).ok_or_else(|| {
            DtlsError::Fingerprint(format!(
                "unsupported hash function {name:?} (sha-1, sha-256, sha-384 or sha-512; ring, the one crypto provider, has no sha-224)"
            ))
        })?;
        let value = hex
            .split(':')
            .map(|byte| {
                if byte.len() == 2 && byte.bytes().all(|b| b.is_ascii_hexdigit()) {
                    u8::from_str_radix(byte, 16).ok()
                } else {
                    None
                }
                .ok_or_else(|| {
                    DtlsError::Fingerprint(format!(
                        "{byte:?} is not a byte of two hex digits (in {hex:?})"
                    ))
                })
            })
            .collect::<Result<Vec<u8>, DtlsError>>()?;
        if value.len() != hash.digest_len() {
            return Err(DtlsError::Fingerprint(format!(
                "{} bytes, {} gives {}",
                value.len(),
                hash.name(),
                hash.digest_len()
            )));
        }
        Ok(Fingerprint { hash, value })
    }

    /// The fingerprint of `cert_der` under `hash`.
    pub fn of(hash: HashFunction, cert_der: &[u8]) -> Fingerprint {
        Fingerprint {
            hash,
            value: hash.digest(cert_der),
        }
    }

    pub fn hash(&self) -> HashFunction {
        self.hash
    }

    /// Whether `cert_der` (a DER certificate) hashes to this fingerprint.
    pub fn matches(&self, cert_der: &[u8]) -> bool {
        self.hash.digest(cert_der) == self.value
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hash.name())?;
        for (i, b) in self.value.iter().enumerate() {
            let sep = if i == 0 { ' ' } else { ':' };
            write!(f, "{sep}{b:02X}")?;
        }
        Ok(())
    }
}

/// The `a=setup` attribute (RFC 4145 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Active,
    Passive,
    ActPass,
    HoldConn,
}

impl Setup {
    /// Case-insensitive; `None` for anything else.
    pub fn parse(s: &str) -> Option<Setup> {
        [
            Setup::Active,
            Setup::Passive,
            Setup::ActPass,
            Setup::HoldConn,
        ]
        .into_iter()
        .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::ActPass => "actpass",
            Setup::HoldConn => "holdconn",
        }
    }
}

/// Which side of the DTLS handshake riptide takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtlsRole {
    Client,
    Server,
}

/// RFC 5763 §5, riptide answering: given the offer's `a=setup`, the answer's `a=setup` and our
/// role. riptide answers `actpass` with `active` (it becomes the DTLS client), which is what
/// baresip and browsers expect; `passive` also makes it the client, `active` the server;
/// `holdconn` is refused.
pub fn answer_setup(offer: Setup) -> Result<(Setup, DtlsRole), DtlsError> {
    match offer {
        Setup::ActPass | Setup::Passive => Ok((Setup::Active, DtlsRole::Client)),
        Setup::Active => Ok((Setup::Passive, DtlsRole::Server)),
        Setup::HoldConn => Err(DtlsError::Setup(
            "the offer says holdconn: no DTLS connection to set up".into(),
        )),
    }
}

/// RFC 5763 §5, riptide offering: it offers `actpass`, and the answer decides. `active` makes
/// riptide the server, `passive` the client; anything else is refused.
pub fn role_from_answer(answer: Setup) -> Result<DtlsRole, DtlsError> {
    match answer {
        Setup::Active => Ok(DtlsRole::Server),
        Setup::Passive => Ok(DtlsRole::Client),
        Setup::ActPass | Setup::HoldConn => Err(DtlsError::Setup(format!(
            "answer a=setup:{} to our actpass (expected active or passive)",
            answer.as_str()
        ))),
    }
}

/// The gateway's DTLS certificate: ECDSA P-256, self-signed, generated once per gateway process.
#[derive(Clone)]
pub struct DtlsIdentity {
    certificate: Certificate,
    fingerprint: Fingerprint,
    not_after: SystemTime,
    provider: Arc<dyn RTCCryptoProvider>,
}

impl fmt::Debug for DtlsIdentity {
    // The private key never reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsIdentity")
            .field("fingerprint", &self.fingerprint.to_string())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl DtlsIdentity {
    /// A fresh key and certificate (CN "riptide"), valid from a day ago for 30 days. Reads the
    /// wall clock for those dates.
    pub fn generate() -> Result<DtlsIdentity, DtlsError> {
        let err = |what: &str, e: &dyn fmt::Display| DtlsError::Certificate(format!("{what}: {e}"));
        let provider: Arc<dyn RTCCryptoProvider> = Arc::new(RingProvider::new());
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| err("generating the key", &e))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| err("certificate parameters", &e))?;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "riptide");
        params.distinguished_name = dn;
        let now = SystemTime::now();
        let since_epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|e| err("system clock is before 1970", &e))?;
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + since_epoch.saturating_sub(CERT_BACKDATE);
        params.not_after = epoch + since_epoch + CERT_LIFETIME;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| err("self-signing", &e))?;
        let private_key = CryptoPrivateKey::from_key_pair(&key_pair, provider.crypto())
            .map_err(|e| err("importing the key", &e))?;
        let der = cert.der().clone();
        Ok(DtlsIdentity {
            fingerprint: Fingerprint::of(HashFunction::Sha256, der.as_ref()),
            certificate: Certificate {
                certificate: vec![der],
                private_key,
            },
            not_after: now + CERT_LIFETIME,
            provider,
        })
    }

    /// SDP a=fingerprint value, e.g. "sha-256 AB:CD:..." (upper-case hex, colon-separated, RFC 8122).
    pub fn fingerprint(&self) -> String {
        self.fingerprint.to_string()
    }

    /// The certificate, DER-encoded.
    pub fn certificate_der(&self) -> &[u8] {
        self.certificate
            .certificate
            .first()
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }

    /// When the certificate expires: a gateway running longer should generate a new identity
    /// for new calls.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// Where a [`DtlsEndpoint`]'s handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsState {
    Handshaking,
    /// Handshake done and the peer authenticated by its fingerprint; SRTP keys are ready.
    Connected,
    /// The association is over, with the reason; nothing more is processed.
    Failed(String),
}

/// One DTLS-SRTP association of a call leg.
pub struct DtlsEndpoint {
    endpoint: Endpoint,
    role: DtlsRole,
    remote: Vec<Fingerprint>,
    /// Set by the certificate callback when the peer's certificate does not match, so that the
    /// failure reads the same whichever way rtc-dtls reports it.
    rejected: Arc<Mutex<Option<String>>>,
    /// The handshake's configuration (the callback above included), kept for
    /// [`restarted`](DtlsEndpoint::restarted).
    config: Arc<HandshakeConfig>,
    state: DtlsState,
    transmits: VecDeque<Vec<u8>>,
    suite: Option<Suite>,
    srtp: Option<SrtpSession>,
}

impl fmt::Debug for DtlsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DtlsEndpoint")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("suite", &self.suite)
            .field("pending_transmits", &self.transmits.len())
            .finish_non_exhaustive()
    }
}

impl DtlsEndpoint {
    /// Starts an association: as [`Client`](DtlsRole::Client) the ClientHello is queued at
    /// once; as [`Server`](DtlsRole::Server) it waits for one. `remote` is the peer's
    /// `a=fingerprint`.
    pub fn new(
        identity: &DtlsIdentity,
        role: DtlsRole,
        remote: Fingerprint,
        now: Instant,
    ) -> Result<DtlsEndpoint, DtlsError> {
        DtlsEndpoint::with_fingerprints(identity, role, vec![remote], now)
    }

    /// As [`new`](DtlsEndpoint::new), for a peer that signalled several `a=fingerprint`
    /// attributes. RFC 8122 §5: the certificate is checked with the strongest hash function
    /// among them, and must match one of the fingerprints of that hash.
    pub fn with_fingerprints(
        identity: &DtlsIdentity,
        role: DtlsRole,
        remote: Vec<Fingerprint>,
        now: Instant,
    ) -> Result<DtlsEndpoint, DtlsError> {
        DtlsEndpoint::start(identity, role, remote, &SRTP_PROFILES, now)
    }

    fn start(
        identity: &DtlsIdentity,
        role: DtlsRole,
        remote: Vec<Fingerprint>,
        profiles: &[SrtpProtectionProfile],
        now: Instant,
    ) -> Result<DtlsEndpoint, DtlsError> {
        if remote.is_empty() {
            return Err(DtlsError::Fingerprint(
                "no fingerprint to verify the peer with".into(),
            ));
        }
        let rejected = Arc::new(Mutex::new(None));
        let verify: VerifyPeerCertificateFn = certificate_callback({
            let remote = remote.clone();
            let rejected = Arc::clone(&rejected);
            move |certs: &[Vec<u8>], _chains: &[CertificateDer<'static>]| {
                check_peer_certificate(&remote, certs).map_err(|reason| {
                    if let Ok(mut r) = rejected.lock() {
                        r.get_or_insert_with(|| reason.clone());
                    }
                    std::io::Error::other(reason).into()
                })
            }
        });
        let is_client = role == DtlsRole::Client;
        let config = ConfigBuilder::default()
            .with_crypto_provider(Arc::clone(&identity.provider))
            .with_certificates(vec![identity.certificate.clone()])
            .with_srtp_protection_profiles(profiles.to_vec())
            // The server demands the client's certificate: both sides are authenticated by
            // their SDP fingerprint (RFC 5763 §5).
            .with_client_auth(ClientAuthType::RequireAnyClientCert)
            // No CA chain: self-signed certificates, checked by fingerprint in `verify`.
            .with_insecure_skip_verify(true)
            .with_verify_peer_certificate(Some(verify))
            // RFC 7627 where the peer supports it; older SIP endpoints may not.
            .with_extended_master_secret(ExtendedMasterSecretType::Request)
            .with_server_name(SERVER_NAME.into())
            .build(is_client, None)
            .map_err(|e| DtlsError::Config(e.to_string()))?;
        DtlsEndpoint::begin(role, remote, rejected, Arc::new(config), now)
    }

    fn begin(
        role: DtlsRole,
        remote: Vec<Fingerprint>,
        rejected: Arc<Mutex<Option<String>>>,
        config: Arc<HandshakeConfig>,
        now: Instant,
    ) -> Result<DtlsEndpoint, DtlsError> {
        let mut endpoint = match role {
            DtlsRole::Client => Endpoint::new(PLACEHOLDER, Default::default(), None),
            DtlsRole::Server => {
                Endpoint::new(PLACEHOLDER, Default::default(), Some(Arc::clone(&config)))
            }
        };
        if role == DtlsRole::Client {
            endpoint
                .connect(now, PLACEHOLDER, Arc::clone(&config), None)
                .map_err(|e| DtlsError::Config(format!("starting the handshake: {e}")))?;
        }
        let mut this = DtlsEndpoint {
            endpoint,
            role,
            remote,
            rejected,
            config,
            state: DtlsState::Handshaking,
            transmits: VecDeque::new(),
            suite: None,
            srtp: None,
        };
        this.drain();
        Ok(this)
    }

    /// A new association with the same role, certificate and peer fingerprints, from its
    /// first flight: for a leg whose handshake went to a source that turned out not to be the
    /// peer. This endpoint's rejection note is cleared (the two share it), so this one should be
    /// dropped once the new one is kept.
    pub fn restarted(&self, now: Instant) -> Result<DtlsEndpoint, DtlsError> {
        if let Ok(mut r) = self.rejected.lock() {
            *r = None;
        }
        DtlsEndpoint::begin(
            self.role,
            self.remote.clone(),
            Arc::clone(&self.rejected),
            Arc::clone(&self.config),
            now,
        )
    }

    /// One received DTLS record datagram.
    ///
    /// `Err` when the datagram is not DTLS or its framing is broken (dropped, nothing changes),
    /// or when the association has failed — because of this datagram (the state says why) or
    /// before it. Application data after the handshake is ignored: this leg carries only SRTP.
    pub fn handle_packet(&mut self, now: Instant, pkt: &[u8]) -> Result<(), DtlsError> {
        if let DtlsState::Failed(reason) = &self.state {
            return Err(DtlsError::Failed(reason.clone()));
        }
        if !is_dtls(pkt) {
            return Err(DtlsError::NotDtls);
        }
        check_framing(pkt)?;
        let input = if self.state == DtlsState::Connected {
            // rtc-dtls skips decryption for ChangeCipherSpec records and answers a malformed
            // one in the current epoch with a fatal alert, so one spoofed datagram could end an
            // established association. None is legitimate after the handshake (a repeated last
            // flight carries its ChangeCipherSpec in the old epoch, which rtc-dtls ignores, and
            // renegotiation is not supported): drop them here.
            let kept = without_change_cipher_spec(pkt);
            if kept.is_empty() {
                return Ok(());
            }
            kept
        } else {
            bytes::BytesMut::from(pkt)
        };
        let result = self.endpoint.read(now, PLACEHOLDER, None, input);
        // Whatever happened, send what rtc-dtls queued (a flight, or an alert explaining a
        // failure to the peer).
        self.drain();
        match result {
            Ok(events) => {
                for event in events {
                    match event {
                        EndpointEvent::HandshakeComplete => self.connected(now),
                        EndpointEvent::ApplicationData(data) => {
                            tracing::debug!(len = data.len(), "DTLS application data ignored");
                        }
                        EndpointEvent::PeerClosed => self.fail("closed by peer".into()),
                        _ => {}
                    }
                }
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                // A warning alert other than close_notify (that one is `PeerClosed`) does not end
                // the association (RFC 5246 §7.2).
                if text.contains("LevelWarning") {
                    tracing::debug!(alert = %text, "DTLS warning alert ignored");
                    return Ok(());
                }
                let mismatch = self.rejected.lock().ok().and_then(|r| r.clone());
                let reason = match (mismatch, &self.state) {
                    (Some(mismatch), _) => mismatch,
                    (None, DtlsState::Handshaking) => match plaintext_fatal_alert(pkt) {
                        Some(alert) => format!("handshake failed: {alert}"),
                        None => format!("handshake failed: {text}"),
                    },
                    (None, _) => format!("after the handshake: {text}"),
                };
                self.fail(reason.clone());
                Err(DtlsError::Failed(reason))
            }
        }
    }

    /// Datagrams queued for the peer ([`poll_transmit`](DtlsEndpoint::poll_transmit)).
    pub fn queued(&self) -> usize {
        self.transmits.len()
    }

    /// The next datagram to send to the peer.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// When [`handle_timeout`](DtlsEndpoint::handle_timeout) is next due (a handshake
    /// retransmission); `None` when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            DtlsState::Failed(_) => None,
            _ => self.endpoint.poll_timeout(&PLACEHOLDER),
        }
    }

    /// Retransmits the current flight if its timer has expired by `now`; fails the handshake
    /// once rtc-dtls has given up (its fixed 1 s interval, 7 retransmissions).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|due| now < due) {
            return;
        }
        let result = self.endpoint.handle_timeout(PLACEHOLDER, now);
        self.drain();
        if let Err(e) = result {
            self.fail(format!("handshake timed out ({e})"));
        }
    }

    pub fn state(&self) -> &DtlsState {
        &self.state
    }

    pub fn role(&self) -> DtlsRole {
        self.role
    }

    /// The negotiated SRTP suite, once connected.
    pub fn srtp_suite(&self) -> Option<Suite> {
        self.suite
    }

    /// Once Connected: the SRTP session keyed from the handshake (RFC 5764 §4.2 key export,
    /// label "EXTRACTOR-dtls_srtp", client_key|server_key|client_salt|server_salt; our write key
    /// is the client key when we are the client). Returns None before Connected or after it was
    /// taken.
    pub fn take_srtp(&mut self) -> Option<SrtpSession> {
        match self.state {
            DtlsState::Connected => self.srtp.take(),
            _ => None,
        }
    }

    /// Ends the association with a close_notify (queued for
    /// [`poll_transmit`](DtlsEndpoint::poll_transmit)); the state becomes
    /// `Failed("closed locally")`.
    pub fn close(&mut self, now: Instant) {
        if matches!(self.state, DtlsState::Failed(_)) {
            return;
        }
        let _ = self.endpoint.stop(now, PLACEHOLDER);
        self.drain();
        self.fail("closed locally".into());
    }

    fn drain(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.transmits.push_back(Vec::from(t.message));
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::debug!(role = ?self.role, %reason, "DTLS association failed");
        self.state = DtlsState::Failed(reason);
        self.srtp = None;
    }

    /// The handshake finished: check the peer once more and derive the SRTP keys. A failure here
    /// closes the association, since rtc-dtls already considers it established.
    fn connected(&mut self, now: Instant) {
        match self.derive_srtp() {
            Ok((suite, session)) => {
                self.state = DtlsState::Connected;
                self.suite = Some(suite);
                self.srtp = Some(session);
            }
            Err(reason) => {
                let _ = self.endpoint.stop(now, PLACEHOLDER);
                self.drain();
                self.fail(reason);
            }
        }
    }

    fn derive_srtp(&self) -> Result<(Suite, SrtpSession), String> {
        let state = self
            .endpoint
            .get_connection_state(PLACEHOLDER)
            .ok_or("no connection state after the handshake")?;
        // The callback has already checked this; a handshake path that skipped it must still not
        // produce keys.
        check_peer_certificate(&self.remote, &state.peer_certificates)?;
        let profile = state.srtp_protection_profile();
        let suite = suite_for(profile)
            .ok_or_else(|| format!("no usable SRTP protection profile negotiated ({profile:?})"))?;
        let len = 2 * (suite.key_len() + suite.salt_len());
        let material = state
            .export_keying_material(SRTP_EXPORTER_LABEL, &[], len)
            .map_err(|e| format!("exporting SRTP keys: {e}"))?;
        let keys = split_keying_material(suite, material.as_ref(), self.role)?;
        let session = SrtpSession::from_keys(
            suite,
            keys.local_key,
            keys.local_salt,
            keys.remote_key,
            keys.remote_salt,
        )
        .map_err(|e| e.to_string())?;
        Ok((suite, session))
    }
}

/// RFC 7983 demux: a DTLS record when the first byte is 20..=63.
pub fn is_dtls(pkt: &[u8]) -> bool {
    matches!(pkt.first(), Some(20..=63))
}

/// rtc-dtls's certificate callback, generic over its error type (rtc-dtls's own, which it does
/// not re-export).
type CertificateCallback<E> =
    Arc<dyn Fn(&[Vec<u8>], &[CertificateDer<'static>]) -> Result<(), E> + Send + Sync>;

/// Gives a closure the exact signature of rtc-dtls's certificate callback, so that its error
/// type is inferred from [`VerifyPeerCertificateFn`].
fn certificate_callback<E, F>(f: F) -> CertificateCallback<E>
where
    F: Fn(&[Vec<u8>], &[CertificateDer<'static>]) -> Result<(), E> + Send + Sync + 'static,
{
    Arc::new(f)
}

/// RFC 8122 §5: the end-entity certificate (the first) must match one of the fingerprints with
/// the strongest hash function offered. The error is the failure reason.
fn check_peer_certificate(expected: &[Fingerprint], certs: &[Vec<u8>]) -> Result<(), String> {
    let cert = certs.first().ok_or("the peer sent no certificate")?;
    let Some(hash) = expected.iter().map(Fingerprint::hash).max() else {
        return Err("no fingerprint to verify the peer with".into());
    };
    let candidates: Vec<&Fingerprint> = expected.iter().filter(|f| f.hash == hash).collect();
    if candidates.iter().any(|f| f.matches(cert)) {
        return Ok(());
    }
    let wanted: Vec<String> = candidates.iter().map(|f| f.to_string()).collect();
    Err(format!(
        "fingerprint mismatch: expected {}, the peer's certificate has {}",
        wanted.join(" or "),
        Fingerprint::of(hash, cert)
    ))
}

/// The same framing check rtc-dtls makes before anything else (records of a 13-byte header
/// plus a non-empty body, lengths adding up to the datagram), so that its other errors can be
/// told apart from garbage.
fn check_framing(pkt: &[u8]) -> Result<(), DtlsError> {
    const HEADER: usize = 13;
    let mut rest = pkt;
    while !rest.is_empty() {
        if rest.len() <= HEADER {
            return Err(DtlsError::Malformed(format!(
                "{} bytes left, less than a record",
                rest.len()
            )));
        }
        let len = HEADER + usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some(next) = rest.get(len..) else {
            return Err(DtlsError::Malformed(format!(
                "record of {len} bytes in {} remaining",
                rest.len()
            )));
        };
        rest = next;
    }
    Ok(())
}

/// The records of a well-framed datagram (see [`check_framing`]) other than ChangeCipherSpec.
fn without_change_cipher_spec(pkt: &[u8]) -> bytes::BytesMut {
    const HEADER: usize = 13;
    const CHANGE_CIPHER_SPEC: u8 = 20;
    let mut kept = bytes::BytesMut::with_capacity(pkt.len());
    let mut rest = pkt;
    while rest.len() > HEADER {
        let len = HEADER + usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let Some((record, next)) = rest.split_at_checked(len) else {
            break;
        };
        if record[0] != CHANGE_CIPHER_SPEC {
            kept.extend_from_slice(record);
        }
        rest = next;
    }
    kept
}

/// The first fatal alert sent in the clear (epoch 0, so during the handshake) in a well-framed
/// datagram, described for a failure reason.
fn plaintext_fatal_alert(pkt: &[u8]) -> Option<String> {
    const HEADER: usize = 13;
    let mut rest = pkt;
    while rest.len() > HEADER {
        let len = HEADER + usize::from(u16::from_be_bytes([rest[11], rest[12]]));
        let (record, next) = rest.split_at_checked(len)?;
        if let [21, _, _, 0, 0, _, _, _, _, _, _, 0, 2, 2, code] = record {
            return Some(format!(
                "fatal alert {} ({code}) from the peer",
                alert_name(*code)
            ));
        }
        rest = next;
    }
    None
}

/// RFC 5246 §7.2 alert names.
fn alert_name(code: u8) -> &'static str {
    match code {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        30 => "decompression_failure",
        40 => "handshake_failure",
        42 => "bad_certificate",
        43 => "unsupported_certificate",
        44 => "certificate_revoked",
        45 => "certificate_expired",
        46 => "certificate_unknown",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        49 => "access_denied",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        90 => "user_canceled",
        100 => "no_renegotiation",
        110 => "unsupported_extension",
        _ => "unknown",
    }
}

fn suite_for(profile: SrtpProtectionProfile) -> Option<Suite> {
    match profile {
        SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Some(Suite::AeadAes128Gcm),
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Some(Suite::AesCm128HmacSha1_80),
        SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32 => Some(Suite::AesCm128HmacSha1_32),
        _ => None,
    }
}

/// Our and the peer's master keys and salts, as slices of the exported material.
#[derive(Debug, PartialEq, Eq)]
struct SplitKeys<'a> {
    local_key: &'a [u8],
    local_salt: &'a [u8],
    remote_key: &'a [u8],
    remote_salt: &'a [u8],
}

/// RFC 5764 §4.2: the material is client_write_key | server_write_key | client_write_salt |
/// server_write_salt; the client writes with the client key.
fn split_keying_material(
    suite: Suite,
    material: &[u8],
    role: DtlsRole,
) -> Result<SplitKeys<'_>, String> {
    let (k, s) = (suite.key_len(), suite.salt_len());
    if material.len() != 2 * (k + s) {
        return Err(format!(
            "{} bytes of keying material, {} needs {}",
            material.len(),
            suite.name(),
            2 * (k + s)
        ));
    }
    let (client_key, rest) = material.split_at(k);
    let (server_key, rest) = rest.split_at(k);
    let (client_salt, server_salt) = rest.split_at(s);
    Ok(match role {
        DtlsRole::Client => SplitKeys {
            local_key: client_key,
            local_salt: client_salt,
            remote_key: server_key,
            remote_salt: server_salt,
        },
        DtlsRole::Server => SplitKeys {
            local_key: server_key,
            local_salt: server_salt,
            remote_key: client_key,
            remote_salt: client_salt,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        crate::media::rtp::pcmu_packet(seq, 0x1234_5678)
    }

    fn fp(identity: &DtlsIdentity) -> Fingerprint {
        Fingerprint::parse(&identity.fingerprint()).unwrap()
    }

    /// Delivers everything each side has queued to the other until neither has anything left;
    /// returns how many datagrams moved. Errors from `handle_packet` are the receiver's business
    /// (its state says why), so they are only counted out.
    fn pump(a: &mut DtlsEndpoint, b: &mut DtlsEndpoint, now: Instant) -> usize {
        let mut moved = 0;
        for _ in 0..50 {
            let mut quiet = true;
            while let Some(p) = a.poll_transmit() {
                let _ = b.handle_packet(now, &p);
                moved += 1;
                quiet = false;
            }
            while let Some(p) = b.poll_transmit() {
                let _ = a.handle_packet(now, &p);
                moved += 1;
                quiet = false;
            }
            if quiet {
                break;
            }
        }
        moved
    }

    struct Pair {
        client: DtlsEndpoint,
        server: DtlsEndpoint,
    }

    fn pair_with(
        client_profiles: &[SrtpProtectionProfile],
        server_profiles: &[SrtpProtectionProfile],
        now: Instant,
    ) -> Pair {
        let client_id = DtlsIdentity::generate().unwrap();
        let server_id = DtlsIdentity::generate().unwrap();
        let client = DtlsEndpoint::start(
            &client_id,
            DtlsRole::Client,
            vec![fp(&server_id)],
            client_profiles,
            now,
        )
        .unwrap();
        let server = DtlsEndpoint::start(
            &server_id,
            DtlsRole::Server,
            vec![fp(&client_id)],
            server_profiles,
            now,
        )
        .unwrap();
        Pair { client, server }
    }

    fn connected_pair(now: Instant) -> Pair {
        let mut p = pair_with(&SRTP_PROFILES, &SRTP_PROFILES, now);
        pump(&mut p.client, &mut p.server, now);
        assert_eq!(p.client.state(), &DtlsState::Connected);
        assert_eq!(p.server.state(), &DtlsState::Connected);
        p
    }

    /// RTP protected by either session unprotects on the other.
    fn assert_srtp_flows(a: &mut SrtpSession, b: &mut SrtpSession, what: &str) {
        for seq in 1..4 {
            let s = a.protect_rtp(&rtp(seq)).unwrap();
            assert_ne!(&s[12..], &rtp(seq)[12..], "{what}: encrypted");
            assert_eq!(&b.unprotect_rtp(&s).unwrap()[..], &rtp(seq)[..], "{what}");
            let s = b.protect_rtp(&rtp(seq)).unwrap();
            assert_eq!(&a.unprotect_rtp(&s).unwrap()[..], &rtp(seq)[..], "{what}");
        }
    }

    #[test]
    fn handshake_connects_both_sides_and_srtp_flows_both_ways() {
        let now = Instant::now();
        let mut p = pair_with(&SRTP_PROFILES, &SRTP_PROFILES, now);
        assert_eq!(p.client.state(), &DtlsState::Handshaking);
        assert_eq!(p.server.state(), &DtlsState::Handshaking);
        assert!(p.client.take_srtp().is_none(), "no keys before Connected");
        assert!(
            p.server.poll_timeout().is_none(),
            "a server waits for the ClientHello"
        );
        assert!(
            p.client.poll_timeout().is_some(),
            "the ClientHello is on a timer"
        );
        assert!(pump(&mut p.client, &mut p.server, now) >= 4);
        assert_eq!(p.client.state(), &DtlsState::Connected);
        assert_eq!(p.server.state(), &DtlsState::Connected);
        assert_eq!(p.client.poll_timeout(), None);
        assert_eq!(p.server.poll_timeout(), None);
        // The client's preference wins, and riptide prefers GCM.
        assert_eq!(p.client.srtp_suite(), Some(Suite::AeadAes128Gcm));
        assert_eq!(p.server.srtp_suite(), Some(Suite::AeadAes128Gcm));
        let mut c = p.client.take_srtp().expect("client keys");
        let mut s = p.server.take_srtp().expect("server keys");
        assert!(p.client.take_srtp().is_none(), "taken once");
        assert!(p.server.take_srtp().is_none(), "taken once");
        assert_srtp_flows(&mut c, &mut s, "default profiles");
        let rr = [0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78];
        let srtcp = s.protect_rtcp(&rr).unwrap();
        assert_eq!(&c.unprotect_rtcp(&srtcp).unwrap()[..], &rr[..]);
    }

    #[test]
    fn every_supported_profile_negotiates_and_keys_match() {
        for (profile, suite) in [
            (
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                Suite::AeadAes128Gcm,
            ),
            (
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                Suite::AesCm128HmacSha1_80,
            ),
            (
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32,
                Suite::AesCm128HmacSha1_32,
            ),
        ] {
            let now = Instant::now();
            // The client offers only this one; the server accepts all of riptide's.
            let mut p = pair_with(&[profile], &SRTP_PROFILES, now);
            pump(&mut p.client, &mut p.server, now);
            assert_eq!(p.client.state(), &DtlsState::Connected, "{suite:?}");
            assert_eq!(p.server.state(), &DtlsState::Connected, "{suite:?}");
            assert_eq!(p.client.srtp_suite(), Some(suite));
            assert_eq!(p.server.srtp_suite(), Some(suite));
            let mut c = p.client.take_srtp().unwrap();
            let mut s = p.server.take_srtp().unwrap();
            assert_srtp_flows(&mut c, &mut s, suite.name());
        }
    }

    #[test]
    fn no_common_srtp_profile_fails_the_handshake() {
        let now = Instant::now();
        let mut p = pair_with(
            &[SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_32],
            &[SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm],
            now,
        );
        pump(&mut p.client, &mut p.server, now);
        assert!(
            matches!(p.server.state(), DtlsState::Failed(r) if r.contains("handshake failed")),
            "{:?}",
            p.server.state()
        );
        assert!(matches!(p.client.state(), DtlsState::Failed(_)));
        assert!(p.client.take_srtp().is_none() && p.server.take_srtp().is_none());
    }

    #[test]
    fn a_peer_without_use_srtp_gets_no_keys() {
        let now = Instant::now();
        // A client that offers no use_srtp extension: the handshake completes, but without SRTP
        // there is nothing to key, so riptide closes it.
        let mut p = pair_with(&[], &SRTP_PROFILES, now);
        pump(&mut p.client, &mut p.server, now);
        for e in [&p.client, &p.server] {
            assert!(
                matches!(e.state(), DtlsState::Failed(r) if r.contains("no usable SRTP protection profile")),
                "{:?}",
                e.state()
            );
        }
        assert!(p.server.take_srtp().is_none());
    }

    #[test]
    fn a_client_seeing_the_wrong_server_certificate_fails_with_both_fingerprints() {
        let now = Instant::now();
        let client_id = DtlsIdentity::generate().unwrap();
        let server_id = DtlsIdentity::generate().unwrap();
        let other = DtlsIdentity::generate().unwrap();
        let mut client = DtlsEndpoint::new(&client_id, DtlsRole::Client, fp(&other), now).unwrap();
        let mut server =
            DtlsEndpoint::new(&server_id, DtlsRole::Server, fp(&client_id), now).unwrap();
        pump(&mut client, &mut server, now);
        let DtlsState::Failed(reason) = client.state() else {
            panic!("client {:?}", client.state());
        };
        assert!(reason.contains("fingerprint mismatch"), "{reason}");
        assert!(
            reason.contains(&other.fingerprint()),
            "expected named: {reason}"
        );
        assert!(
            reason.contains(&server_id.fingerprint()),
            "actual named: {reason}"
        );
        assert!(client.take_srtp().is_none());
        // The client's bad_certificate alert ends the server's side too.
        assert_eq!(
            server.state(),
            &DtlsState::Failed(
                "handshake failed: fatal alert bad_certificate (42) from the peer".into()
            )
        );
        assert!(server.take_srtp().is_none());
        assert_eq!(client.poll_timeout(), None);
        let again = client.handle_packet(now, &[22, 0xfe, 0xfd]).unwrap_err();
        assert!(
            again.to_string().contains("fingerprint mismatch"),
            "{again}"
        );
    }

    #[test]
    fn a_server_seeing_the_wrong_client_certificate_fails_with_both_fingerprints() {
        let now = Instant::now();
        let client_id = DtlsIdentity::generate().unwrap();
        let server_id = DtlsIdentity::generate().unwrap();
        let other = DtlsIdentity::generate().unwrap();
        let mut client =
            DtlsEndpoint::new(&client_id, DtlsRole::Client, fp(&server_id), now).unwrap();
        let mut server = DtlsEndpoint::new(&server_id, DtlsRole::Server, fp(&other), now).unwrap();
        pump(&mut client, &mut server, now);
        let DtlsState::Failed(reason) = server.state() else {
            panic!("server {:?}", server.state());
        };
        assert!(reason.contains("fingerprint mismatch"), "{reason}");
        assert!(reason.contains(&other.fingerprint()), "{reason}");
        assert!(reason.contains(&client_id.fingerprint()), "{reason}");
        assert!(server.take_srtp().is_none());
        assert_ne!(client.state(), &DtlsState::Connected);
        assert!(client.take_srtp().is_none());
    }

    #[test]
    fn sha1_and_multiple_fingerprints_follow_rfc_8122() {
        let now = Instant::now();
        let client_id = DtlsIdentity::generate().unwrap();
        let server_id = DtlsIdentity::generate().unwrap();
        let other = DtlsIdentity::generate().unwrap();
        let der = server_id.certificate_der();
        let sha1 = Fingerprint::of(HashFunction::Sha1, der);
        let wrong_sha1 = Fingerprint::of(HashFunction::Sha1, other.certificate_der());
        let cases = [
            (vec![sha1.clone()], true),
            (vec![wrong_sha1, fp(&server_id)], true),
            // The strongest hash decides: a matching sha-1 does not rescue a wrong sha-256.
            (vec![sha1, fp(&other)], false),
            (
                vec![
                    Fingerprint::of(HashFunction::Sha512, other.certificate_der()),
                    Fingerprint::of(HashFunction::Sha512, der),
                ],
                true,
            ),
        ];
        for (fingerprints, ok) in cases {
            let mut client = DtlsEndpoint::with_fingerprints(
                &client_id,
                DtlsRole::Client,
                fingerprints.clone(),
                now,
            )
            .unwrap();
            let mut server =
                DtlsEndpoint::new(&server_id, DtlsRole::Server, fp(&client_id), now).unwrap();
            pump(&mut client, &mut server, now);
            assert_eq!(
                client.state() == &DtlsState::Connected,
                ok,
                "{fingerprints:?}: {:?}",
                client.state()
            );
        }
        assert!(
            DtlsEndpoint::with_fingerprints(&client_id, DtlsRole::Client, vec![], now).is_err()
        );
    }

    #[test]
    fn a_lost_first_flight_is_retransmitted_on_the_timer() {
        let t0 = Instant::now();
        let mut p = pair_with(&SRTP_PROFILES, &SRTP_PROFILES, t0);
        let hello = p.client.poll_transmit().expect("ClientHello");
        assert!(is_dtls(&hello));
        assert!(p.client.poll_transmit().is_none());
        // Lost. Nothing happens before the timer is due.
        let due = p.client.poll_timeout().expect("retransmission timer");
        assert!(due > t0);
        p.client.handle_timeout(due - Duration::from_millis(1));
        assert!(p.client.poll_transmit().is_none(), "not yet due");
        p.client.handle_timeout(due);
        let again = p.client.poll_transmit().expect("ClientHello retransmitted");
        assert_eq!(again[0], 22, "a handshake record");
        p.server.handle_packet(due, &again).unwrap();
        pump(&mut p.client, &mut p.server, due);
        assert_eq!(p.client.state(), &DtlsState::Connected);
        assert_eq!(p.server.state(), &DtlsState::Connected);
        let mut c = p.client.take_srtp().unwrap();
        let mut s = p.server.take_srtp().unwrap();
        assert_srtp_flows(&mut c, &mut s, "after a retransmission");
    }

    #[test]
    fn a_lost_last_flight_is_recovered_by_the_clients_retransmission() {
        let t0 = Instant::now();
        let mut p = pair_with(&SRTP_PROFILES, &SRTP_PROFILES, t0);
        // Run until the server is connected, and lose its final flight.
        for _ in 0..10 {
            while let Some(d) = p.client.poll_transmit() {
                p.server.handle_packet(t0, &d).unwrap();
            }
            if p.server.state() == &DtlsState::Connected {
                break;
            }
            while let Some(d) = p.server.poll_transmit() {
                p.client.handle_packet(t0, &d).unwrap();
            }
        }
        assert_eq!(p.server.state(), &DtlsState::Connected);
        while p.server.poll_transmit().is_some() {}
        assert_eq!(p.client.state(), &DtlsState::Handshaking);
        let due = p
            .client
            .poll_timeout()
            .expect("the client waits on a timer");
        p.client.handle_timeout(due);
        pump(&mut p.client, &mut p.server, due);
        assert_eq!(p.client.state(), &DtlsState::Connected);
        let mut c = p.client.take_srtp().unwrap();
        let mut s = p.server.take_srtp().unwrap();
        assert_srtp_flows(&mut c, &mut s, "after a lost last flight");
    }

    #[test]
    fn a_silent_peer_times_the_handshake_out() {
        let mut now = Instant::now();
        let id = DtlsIdentity::generate().unwrap();
        let mut client = DtlsEndpoint::new(&id, DtlsRole::Client, fp(&id), now).unwrap();
        let mut sent = 0;
        while let Some(due) = client.poll_timeout() {
            while client.poll_transmit().is_some() {
                sent += 1;
            }
            assert!(due >= now, "timers move forward");
            now = due;
            client.handle_timeout(now);
            assert!(sent < 20, "bounded retransmissions");
        }
        assert_eq!(sent, 8, "the first ClientHello and 7 retransmissions");
        assert!(
            matches!(client.state(), DtlsState::Failed(r) if r.contains("timed out")),
            "{:?}",
            client.state()
        );
    }

    #[test]
    fn application_data_is_ignored_and_close_notify_ends_the_association() {
        let now = Instant::now();
        let mut p = connected_pair(now);
        p.server
            .endpoint
            .write(now, PLACEHOLDER, b"not SRTP")
            .unwrap();
        p.server.drain();
        let record = p
            .server
            .poll_transmit()
            .expect("an application data record");
        assert_eq!(record[0], 23);
        p.client.handle_packet(now, &record).unwrap();
        assert_eq!(p.client.state(), &DtlsState::Connected);
        assert!(p.client.poll_transmit().is_none(), "nothing in reply");

        p.server.close(now);
        assert_eq!(
            p.server.state(),
            &DtlsState::Failed("closed locally".into())
        );
        let close_notify = p.server.poll_transmit().expect("close_notify");
        p.client.handle_packet(now, &close_notify).unwrap();
        assert_eq!(
            p.client.state(),
            &DtlsState::Failed("closed by peer".into())
        );
        assert!(p.client.take_srtp().is_none(), "no keys once closed");
        assert!(p.client.poll_timeout().is_none());
    }

    /// A deterministic byte stream for the garbage tests.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 56) as u8
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    /// Garbage that passes demux and framing: one record with a random header and body.
    fn framed_garbage(rng: &mut Lcg) -> Vec<u8> {
        let body_len = 1 + usize::from(rng.next() % 120);
        let mut p = rng.bytes(11);
        p[0] = 20 + rng.next() % 4; // a known content type, so it gets past the header
        p[1] = 0xfe;
        p[2] = 0xfd;
        p[3] = 0;
        p[4] = rng.next() % 2; // epoch 0 or 1
        p.extend_from_slice(&(body_len as u16).to_be_bytes());
        p.extend(rng.bytes(body_len));
        p
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        let now = Instant::now();
        let id = DtlsIdentity::generate().unwrap();
        let mut server = DtlsEndpoint::new(&id, DtlsRole::Server, fp(&id), now).unwrap();
        assert_eq!(server.handle_packet(now, &[]), Err(DtlsError::NotDtls));
        assert_eq!(server.handle_packet(now, &rtp(1)), Err(DtlsError::NotDtls));
        assert_eq!(
            server.handle_packet(now, &[0, 1, 0, 0]),
            Err(DtlsError::NotDtls)
        );
        for bad in [
            &[22u8][..],
            &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5][..],
            &[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2][..],
            &[23, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1][..],
        ] {
            assert!(
                matches!(server.handle_packet(now, bad), Err(DtlsError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            server.state(),
            &DtlsState::Handshaking,
            "framing errors change nothing"
        );

        let mut rng = Lcg(0x5eed);
        for i in 0..400 {
            // Fresh endpoints of both roles, fed random DTLS-looking datagrams.
            let role = if i % 2 == 0 {
                DtlsRole::Server
            } else {
                DtlsRole::Client
            };
            let mut e = DtlsEndpoint::new(&id, role, fp(&id), now).unwrap();
            for _ in 0..4 {
                let pkt = if rng.next().is_multiple_of(2) {
                    framed_garbage(&mut rng)
                } else {
                    let n = usize::from(rng.next());
                    let mut p = rng.bytes(n.max(1));
                    p[0] = 20 + p[0] % 44;
                    p
                };
                let _ = e.handle_packet(now, &pkt);
                while e.poll_transmit().is_some() {}
                e.handle_timeout(now + Duration::from_secs(2));
            }
            assert_ne!(e.state(), &DtlsState::Connected);
        }
    }

    #[test]
    fn garbage_cannot_break_an_established_association() {
        let now = Instant::now();
        let mut p = connected_pair(now);
        let mut rng = Lcg(42);
        for _ in 0..500 {
            let pkt = framed_garbage(&mut rng);
            let _ = p.client.handle_packet(now, &pkt);
            let _ = p.server.handle_packet(now, &pkt);
        }
        assert_eq!(p.client.state(), &DtlsState::Connected);
        assert_eq!(p.server.state(), &DtlsState::Connected);
        let mut c = p.client.take_srtp().unwrap();
        let mut s = p.server.take_srtp().unwrap();
        assert_srtp_flows(&mut c, &mut s, "after garbage");
    }

    #[test]
    fn keying_material_splits_as_rfc_5764_says_and_as_rtc_srtp_does() {
        use rtc_srtp::config::Config;
        use rtc_srtp::protection_profile::ProtectionProfile;
        for (suite, profile) in [
            (
                Suite::AesCm128HmacSha1_80,
                ProtectionProfile::Aes128CmHmacSha1_80,
            ),
            (Suite::AeadAes128Gcm, ProtectionProfile::AeadAes128Gcm),
        ] {
            let (k, s) = (suite.key_len(), suite.salt_len());
            let material: Vec<u8> = (0..2 * (k + s)).map(|i| i as u8).collect();
            let client = split_keying_material(suite, &material, DtlsRole::Client).unwrap();
            assert_eq!(client.local_key, &material[..k]);
            assert_eq!(client.remote_key, &material[k..2 * k]);
            assert_eq!(client.local_salt, &material[2 * k..2 * k + s]);
            assert_eq!(client.remote_salt, &material[2 * k + s..]);
            let server = split_keying_material(suite, &material, DtlsRole::Server).unwrap();
            assert_eq!(server.local_key, client.remote_key);
            assert_eq!(server.local_salt, client.remote_salt);
            assert_eq!(server.remote_key, client.local_key);
            assert_eq!(server.remote_salt, client.local_salt);
            for (role, ours) in [(DtlsRole::Client, &client), (DtlsRole::Server, &server)] {
                let mut c = Config {
                    profile,
                    ..Default::default()
                };
                c.set_session_keys_from_keying_material(&material, role == DtlsRole::Client)
                    .unwrap();
                assert_eq!(c.keys.local_master_key, ours.local_key);
                assert_eq!(c.keys.local_master_salt, ours.local_salt);
                assert_eq!(c.keys.remote_master_key, ours.remote_key);
                assert_eq!(c.keys.remote_master_salt, ours.remote_salt);
            }
            assert!(split_keying_material(suite, &material[1..], DtlsRole::Client).is_err());
        }
    }

    #[test]
    fn setup_negotiation_follows_rfc_5763() {
        for (offer, answer) in [
            (Setup::ActPass, Ok((Setup::Active, DtlsRole::Client))),
            (Setup::Passive, Ok((Setup::Active, DtlsRole::Client))),
            (Setup::Active, Ok((Setup::Passive, DtlsRole::Server))),
        ] {
            assert_eq!(answer_setup(offer), answer, "{offer:?}");
        }
        assert!(matches!(
            answer_setup(Setup::HoldConn),
            Err(DtlsError::Setup(_))
        ));
        assert_eq!(role_from_answer(Setup::Active), Ok(DtlsRole::Server));
        assert_eq!(role_from_answer(Setup::Passive), Ok(DtlsRole::Client));
        for bad in [Setup::ActPass, Setup::HoldConn] {
            let e = role_from_answer(bad).unwrap_err().to_string();
            assert!(e.contains(bad.as_str()), "{e}");
        }
        for s in [
            Setup::Active,
            Setup::Passive,
            Setup::ActPass,
            Setup::HoldConn,
        ] {
            assert_eq!(Setup::parse(s.as_str()), Some(s));
        }
        assert_eq!(Setup::parse("ACTPASS"), Some(Setup::ActPass));
        assert_eq!(Setup::parse("passive "), Some(Setup::Passive));
        assert_eq!(Setup::parse("both"), None);
        assert_eq!(Setup::parse(""), None);
    }

    #[test]
    fn fingerprints_parse_and_refuse_with_a_reason() {
        let hex = |n: usize| {
            (0..n)
                .map(|i| format!("{:02X}", i * 7 % 256))
                .collect::<Vec<_>>()
                .join(":")
        };
        for (name, hash) in [
            ("sha-1", HashFunction::Sha1),
            ("sha-256", HashFunction::Sha256),
            ("Sha-384", HashFunction::Sha384),
            ("sha-512", HashFunction::Sha512),
        ] {
            let v = format!("{name} {}", hex(hash.digest_len()));
            let f = Fingerprint::parse(&v).unwrap();
            assert_eq!(f.hash(), hash);
            assert_eq!(
                f.to_string(),
                format!("{} {}", hash.name(), hex(hash.digest_len()))
            );
            assert_eq!(Fingerprint::parse(&f.to_string()).unwrap(), f);
        }
        let lower = Fingerprint::parse(&format!("sha-256 {}", hex(32).to_lowercase())).unwrap();
        assert_eq!(
            lower,
            Fingerprint::parse(&format!("sha-256 {}", hex(32))).unwrap()
        );
        assert!(Fingerprint::parse(&format!("  sha-256\t{}  ", hex(32))).is_ok());

        let cases = [
            (String::new(), "empty"),
            ("sha-256".to_string(), "no fingerprint value"),
            (
                format!("md5 {}", hex(16)),
                "unsupported hash function \"md5\"",
            ),
            (format!("sha-3 {}", hex(32)), "unsupported hash function"),
            (format!("sha-256 {}:A", hex(31)), "\"A\""),
            (format!("sha-256 {}:ABC", hex(31)), "\"ABC\""),
            (format!("sha-256 {}:ZZ", hex(31)), "\"ZZ\""),
            (format!("sha-256 {}:", hex(32)), "\"\""),
            ("sha-256 0A1B2C".to_string(), "\"0A1B2C\""),
            (format!("sha-256 {}", hex(31)), "31 bytes, sha-256 gives 32"),
            (format!("sha-1 {}", hex(32)), "32 bytes, sha-1 gives 20"),
            (format!("sha-256 {} extra", hex(32)), "unexpected"),
        ];
        for (v, why) in cases {
            let e = Fingerprint::parse(&v).expect_err(&v);
            assert!(matches!(e, DtlsError::Fingerprint(_)), "{v:?}");
            assert!(e.to_string().contains(why), "{v:?}: {e}");
        }
    }

    #[test]
    fn the_identity_is_a_self_signed_p256_certificate_with_its_sha256_fingerprint() {
        let id = DtlsIdentity::generate().unwrap();
        let der = id.certificate_der();
        let f = id.fingerprint();
        assert!(f.starts_with("sha-256 "), "{f}");
        let hex = &f["sha-256 ".len()..];
        assert_eq!(hex.len(), 32 * 3 - 1);
        assert!(hex.split(':').all(|b| b.len() == 2
            && b.chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())));
        assert!(Fingerprint::parse(&f).unwrap().matches(der));
        assert_eq!(
            f.to_lowercase().replace(':', "").replace("sha-256 ", ""),
            crate::tls::sha256_hex(der)
        );
        let contains = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
        assert!(contains(b"riptide"), "CN riptide");
        // OID prime256v1 (1.2.840.10045.3.1.7) and ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
        assert!(contains(&[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07
        ]));
        assert!(contains(&[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02
        ]));
        let left = id
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((397 * 86400..=398 * 86400).contains(&left), "{left}");
        let other = DtlsIdentity::generate().unwrap();
        assert_ne!(other.fingerprint(), f, "a fresh key each time");
        assert!(!format!("{id:?}").contains("private"), "{id:?}");
    }

    #[test]
    fn demux_follows_rfc_7983() {
        assert!(!is_dtls(&[]));
        for b in 0..=255u8 {
            assert_eq!(is_dtls(&[b, 0, 0]), (20..=63).contains(&b), "{b}");
        }
    }

    #[test]
    fn endpoints_and_identities_can_move_between_tasks() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<DtlsEndpoint>();
        send_sync::<DtlsIdentity>();
        send_sync::<Fingerprint>();
    }
}
