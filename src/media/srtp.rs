//! SRTP for the legacy leg, keyed by SDES (RFC 4568), sans-IO.
//!
//! [`CryptoAttr`] is one `a=crypto` line; [`SrtpSession`] holds the two one-way contexts of a
//! call leg: ours (we encrypt what we send with our own key) and the peer's (we decrypt what it
//! sends with the key it offered or answered). Replay protection is on for both SRTP and SRTCP.
//!
//! rtc-srtp does not handle MKIs, so a peer's MKI (RFC 3711 §3.1: between the encrypted
//! portion and the authentication tag; after the AEAD ciphertext for RFC 7714 suites) is checked
//! against the value it declared and removed before decryption. riptide never declares an MKI
//! in what it sends.

use base64::Engine as _;
use bytes::BytesMut;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use std::fmt;

/// Replay window, in packets, for SRTP and SRTCP (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: usize = 128;

/// The SDES crypto suites riptide implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    Aes256CmHmacSha1_80,
    AeadAes128Gcm,
}

impl Suite {
    /// Suites in riptide's order of preference when it offers.
    pub const ALL: [Suite; 4] = [
        Suite::AeadAes128Gcm,
        Suite::AesCm128HmacSha1_80,
        Suite::Aes256CmHmacSha1_80,
        Suite::AesCm128HmacSha1_32,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::Aes256CmHmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    pub fn from_name(name: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|s| s.name() == name)
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
            Suite::Aes256CmHmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
            Suite::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Suite::Aes256CmHmacSha1_80 => 32,
            _ => 16,
        }
    }

    pub fn salt_len(self) -> usize {
        match self {
            Suite::AeadAes128Gcm => 12,
            _ => 14,
        }
    }

    /// Bytes after the MKI: the HMAC tag of SRTP (SRTCP always carries an 80-bit tag for the
    /// HMAC suites, RFC 3711 §3.4); none for AEAD, whose tag is part of the ciphertext.
    fn trailer_len(self, rtcp: bool) -> usize {
        match self {
            Suite::AeadAes128Gcm => 0,
            Suite::AesCm128HmacSha1_32 if !rtcp => 4,
            _ => 10,
        }
    }
}

/// Why an `a=crypto` line or an SRTP operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdesError {
    Syntax(String),
    UnknownSuite(String),
    BadKey(String),
    Srtp(String),
    /// The packet's MKI is not the one the peer declared.
    WrongMki,
}

impl fmt::Display for SdesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SdesError::Syntax(s) => write!(f, "a=crypto syntax: {s}"),
            SdesError::UnknownSuite(s) => write!(f, "unsupported crypto suite {s}"),
            SdesError::BadKey(s) => write!(f, "a=crypto key: {s}"),
            SdesError::Srtp(s) => write!(f, "SRTP: {s}"),
            SdesError::WrongMki => write!(f, "SRTP: packet MKI does not match the declared one"),
        }
    }
}

impl std::error::Error for SdesError {}

/// One `a=crypto` attribute value (RFC 4568 §9.1), with a single inline key.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoAttr {
    pub tag: u32,
    pub suite: Suite,
    /// Master key followed by master salt.
    pub key_salt: Vec<u8>,
    /// Key lifetime in packets (`|2^20|` or `|1048576|`).
    pub lifetime: Option<u64>,
    /// MKI value and its length in bytes (`|1:4|`).
    pub mki: Option<(u64, u8)>,
    /// Session parameters (e.g. `UNENCRYPTED_SRTCP`), kept as text.
    pub session_params: Vec<String>,
}

impl fmt::Debug for CryptoAttr {
    // Keys never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoAttr")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("lifetime", &self.lifetime)
            .field("mki", &self.mki)
            .field("session_params", &self.session_params)
            .finish_non_exhaustive()
    }
}

impl CryptoAttr {
    /// Parses `1 AES_CM_128_HMAC_SHA1_80 inline:<base64>|2^20|1:4 [session params]`.
    pub fn parse(value: &str) -> Result<CryptoAttr, SdesError> {
        let mut parts = value.split_ascii_whitespace();
        let tag = parts
            .next()
            .ok_or_else(|| SdesError::Syntax("empty".into()))?
            .parse::<u32>()
            .map_err(|_| SdesError::Syntax("tag is not a number".into()))?;
        let suite_name = parts
            .next()
            .ok_or_else(|| SdesError::Syntax("no crypto suite".into()))?;
        let suite = Suite::from_name(suite_name)
            .ok_or_else(|| SdesError::UnknownSuite(suite_name.to_string()))?;
        let key_params = parts
            .next()
            .ok_or_else(|| SdesError::Syntax("no key parameters".into()))?;
        // Several keys (`;`-separated) are allowed by RFC 4568 but only with MKIs telling them
        // apart; riptide takes the first and says so by ignoring the rest.
        let first = key_params.split(';').next().unwrap_or(key_params);
        let inline = first
            .strip_prefix("inline:")
            .ok_or_else(|| SdesError::Syntax("key method is not inline".into()))?;
        let mut fields = inline.split('|');
        let b64 = fields.next().unwrap_or("");
        let key_salt = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| SdesError::BadKey(format!("base64: {e}")))?;
        let want = suite.key_len() + suite.salt_len();
        if key_salt.len() != want {
            return Err(SdesError::BadKey(format!(
                "{} bytes of key and salt, {} expects {want}",
                key_salt.len(),
                suite.name()
            )));
        }
        let mut lifetime = None;
        let mut mki = None;
        for f in fields {
            if let Some((v, len)) = f.split_once(':') {
                let v: u64 = v
                    .parse()
                    .map_err(|_| SdesError::Syntax(format!("MKI value {v:?}")))?;
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| (1..=128).contains(l))
                    .ok_or_else(|| SdesError::Syntax(format!("MKI length {len:?}")))?;
                mki = Some((v, len));
            } else if let Some(exp) = f.strip_prefix("2^") {
                let exp: u32 = exp
                    .parse()
                    .ok()
                    .filter(|e| *e < 64)
                    .ok_or_else(|| SdesError::Syntax(format!("lifetime {f:?}")))?;
                lifetime = Some(1u64 << exp);
            } else {
                lifetime = Some(
                    f.parse()
                        .map_err(|_| SdesError::Syntax(format!("lifetime {f:?}")))?,
                );
            }
        }
        Ok(CryptoAttr {
            tag,
            suite,
            key_salt,
            lifetime,
            mki,
            session_params: parts.map(str::to_string).collect(),
        })
    }

    /// A fresh key for `suite` from `fill` (a CSPRNG), without MKI or lifetime.
    pub fn generate(
        tag: u32,
        suite: Suite,
        fill: impl FnOnce(&mut [u8]) -> Result<(), String>,
    ) -> Result<CryptoAttr, SdesError> {
        let mut key_salt = vec![0u8; suite.key_len() + suite.salt_len()];
        fill(&mut key_salt).map_err(SdesError::BadKey)?;
        Ok(CryptoAttr {
            tag,
            suite,
            key_salt,
            lifetime: None,
            mki: None,
            session_params: Vec::new(),
        })
    }

    /// A fresh key for `suite` from the system CSPRNG (ring), without MKI or lifetime.
    pub fn random(tag: u32, suite: Suite) -> Result<CryptoAttr, SdesError> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        CryptoAttr::generate(tag, suite, |b| {
            rng.fill(b)
                .map_err(|_| "the system random generator failed".to_string())
        })
    }

    /// The attribute value, as riptide writes it in SDP.
    pub fn to_attr_value(&self) -> String {
        let mut s = format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            base64::engine::general_purpose::STANDARD.encode(&self.key_salt)
        );
        if let Some(l) = self.lifetime {
            s.push_str(&format!("|{l}"));
        }
        if let Some((v, len)) = self.mki {
            s.push_str(&format!("|{v}:{len}"));
        }
        for p in &self.session_params {
            s.push(' ');
            s.push_str(p);
        }
        s
    }

    fn context(&self, replay: bool) -> Result<Context, SdesError> {
        let provider = rtc_srtp::crypto::default_provider()
            .map_err(|e| SdesError::Srtp(format!("crypto provider: {e}")))?;
        let (key, salt) = self.key_salt.split_at(self.suite.key_len());
        Context::new(
            key,
            salt,
            self.suite.profile(),
            replay.then(|| srtp_replay_protection(REPLAY_WINDOW)),
            replay.then(|| srtcp_replay_protection(REPLAY_WINDOW)),
            provider.crypto(),
        )
        .map_err(|e| SdesError::Srtp(e.to_string()))
    }
}

/// The two directions of one SDES-keyed leg.
pub struct SrtpSession {
    tx: Context,
    rx: Context,
    rx_suite: Suite,
    /// The MKI the peer puts in every packet, as bytes.
    rx_mki: Option<Vec<u8>>,
}

impl SrtpSession {
    /// `local` is what we declared (our key, used to encrypt); `remote` what the peer declared.
    pub fn new(local: &CryptoAttr, remote: &CryptoAttr) -> Result<SrtpSession, SdesError> {
        let rx_mki = remote.mki.map(|(v, len)| {
            let bytes = v.to_be_bytes();
            let len = usize::from(len);
            if len >= 8 {
                let mut out = vec![0u8; len - 8];
                out.extend_from_slice(&bytes);
                out
            } else {
                bytes[8 - len..].to_vec()
            }
        });
        Ok(SrtpSession {
            tx: local.context(false)?,
            rx: remote.context(true)?,
            rx_suite: remote.suite,
            rx_mki,
        })
    }

    pub fn protect_rtp(&mut self, rtp: &[u8]) -> Result<BytesMut, SdesError> {
        self.tx
            .encrypt_rtp(rtp)
            .map_err(|e| SdesError::Srtp(e.to_string()))
    }

    /// Authenticates, checks replay and decrypts; a tampered, replayed or wrong-MKI packet is
    /// an error (the caller drops and counts it).
    pub fn unprotect_rtp(&mut self, srtp: &[u8]) -> Result<BytesMut, SdesError> {
        let stripped = self.strip_mki(srtp, false)?;
        self.rx
            .decrypt_rtp(stripped.as_deref().unwrap_or(srtp))
            .map_err(|e| SdesError::Srtp(e.to_string()))
    }

    pub fn protect_rtcp(&mut self, rtcp: &[u8]) -> Result<BytesMut, SdesError> {
        self.tx
            .encrypt_rtcp(rtcp)
            .map_err(|e| SdesError::Srtp(e.to_string()))
    }

    pub fn unprotect_rtcp(&mut self, srtcp: &[u8]) -> Result<BytesMut, SdesError> {
        let stripped = self.strip_mki(srtcp, true)?;
        self.rx
            .decrypt_rtcp(stripped.as_deref().unwrap_or(srtcp))
            .map_err(|e| SdesError::Srtp(e.to_string()))
    }

    /// Removes the declared MKI from a packet, checking its value. `None`: no MKI in use.
    fn strip_mki(&self, packet: &[u8], rtcp: bool) -> Result<Option<Vec<u8>>, SdesError> {
        let Some(mki) = &self.rx_mki else {
            return Ok(None);
        };
        let trailer = self.rx_suite.trailer_len(rtcp);
        let min_len = if rtcp { 8 } else { 12 };
        if packet.len() < min_len + mki.len() + trailer {
            return Err(SdesError::Srtp(
                "packet shorter than its MKI and tag".into(),
            ));
        }
        let mki_at = packet.len() - trailer - mki.len();
        if &packet[mki_at..mki_at + mki.len()] != mki.as_slice() {
            return Err(SdesError::WrongMki);
        }
        let mut out = Vec::with_capacity(packet.len() - mki.len());
        out.extend_from_slice(&packet[..mki_at]);
        out.extend_from_slice(&packet[packet.len() - trailer..]);
        Ok(Some(out))
    }
}

/// Keying from raw master keys and salts, for DTLS-SRTP (RFC 5764 §4.2), where the keys come
/// out of the handshake instead of `a=crypto` lines.
impl SrtpSession {
    /// `local_*` protect what we send, `remote_*` unprotect what the peer sends. No MKI is in use
    /// (DTLS-SRTP negotiates none here); replay protection is on for the peer's SRTP and SRTCP,
    /// as with [`SrtpSession::new`].
    ///
    /// Each key must be `suite.key_len()` bytes and each salt `suite.salt_len()` bytes.
    pub fn from_keys(
        suite: Suite,
        local_key: &[u8],
        local_salt: &[u8],
        remote_key: &[u8],
        remote_salt: &[u8],
    ) -> Result<SrtpSession, SdesError> {
        let attr = |which: &str, key: &[u8], salt: &[u8]| {
            if key.len() != suite.key_len() || salt.len() != suite.salt_len() {
                return Err(SdesError::BadKey(format!(
                    "{which} key/salt of {}/{} bytes, {} expects {}/{}",
                    key.len(),
                    salt.len(),
                    suite.name(),
                    suite.key_len(),
                    suite.salt_len()
                )));
            }
            let mut key_salt = Vec::with_capacity(key.len() + salt.len());
            key_salt.extend_from_slice(key);
            key_salt.extend_from_slice(salt);
            Ok(CryptoAttr {
                tag: 0,
                suite,
                key_salt,
                lifetime: None,
                mki: None,
                session_params: Vec::new(),
            })
        };
        let local = attr("local", local_key, local_salt)?;
        let remote = attr("remote", remote_key, remote_salt)?;
        SrtpSession::new(&local, &remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        crate::media::rtp::pcmu_packet(seq, 0xcafe_f00d)
    }

    fn fixed(tag: u32, suite: Suite, byte: u8) -> CryptoAttr {
        CryptoAttr::generate(tag, suite, |b| {
            b.fill(byte);
            Ok(())
        })
        .unwrap()
    }

    #[test]
    fn parses_rfc4568_examples_with_lifetime_and_mki() {
        let a = CryptoAttr::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4",
        )
        .unwrap();
        assert_eq!(a.tag, 1);
        assert_eq!(a.suite, Suite::AesCm128HmacSha1_80);
        assert_eq!(a.key_salt.len(), 30);
        assert_eq!(a.lifetime, Some(1 << 20));
        assert_eq!(a.mki, Some((1, 4)));
        let b = CryptoAttr::parse(
            "2 AEAD_AES_128_GCM inline:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw== UNENCRYPTED_SRTCP",
        )
        .unwrap();
        assert_eq!(b.suite, Suite::AeadAes128Gcm);
        assert_eq!(b.session_params, vec!["UNENCRYPTED_SRTCP"]);
        let round = CryptoAttr::parse(&a.to_attr_value()).unwrap();
        assert_eq!(round, a);
    }

    #[test]
    fn refuses_bad_attributes_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("x AES_CM_128_HMAC_SHA1_80 inline:AAAA", "tag"),
            ("1 F8_128_HMAC_SHA1_80 inline:AAAA", "F8_128"),
            ("1 AES_CM_128_HMAC_SHA1_80 uri:https://x", "inline"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!", "base64"),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", "expects 30"),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|1:x",
                "MKI length",
            ),
        ];
        for (v, why) in cases {
            let e = CryptoAttr::parse(v).expect_err(v).to_string();
            assert!(e.contains(why), "{v:?}: {e}");
        }
    }

    #[test]
    fn round_trip_every_suite_both_ways_with_replay_and_tamper_rejected() {
        for suite in Suite::ALL {
            let ours = fixed(1, suite, 0x11);
            let theirs = fixed(1, suite, 0x22);
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            for seq in 0..20 {
                let srtp = peer.protect_rtp(&rtp(seq)).unwrap();
                assert_ne!(&srtp[12..], &rtp(seq)[12..], "{suite:?}: payload encrypted");
                assert_eq!(
                    &us.unprotect_rtp(&srtp).unwrap()[..],
                    &rtp(seq)[..],
                    "{suite:?}"
                );
                let back = us.protect_rtp(&rtp(seq)).unwrap();
                assert_eq!(&peer.unprotect_rtp(&back).unwrap()[..], &rtp(seq)[..]);
            }
            // Replay of an accepted packet.
            let srtp = peer.protect_rtp(&rtp(100)).unwrap();
            us.unprotect_rtp(&srtp).unwrap();
            assert!(
                us.unprotect_rtp(&srtp).is_err(),
                "{suite:?}: replay refused"
            );
            // Tampering with a fresh sequence number (a replay would be caught first).
            let mut bad = peer.protect_rtp(&rtp(101)).unwrap();
            let i = bad.len() - 1;
            bad[i] ^= 1;
            assert!(us.unprotect_rtp(&bad).is_err(), "{suite:?}: tamper refused");
            let mut bad = peer.protect_rtp(&rtp(102)).unwrap();
            bad[20] ^= 0x80;
            assert!(
                us.unprotect_rtp(&bad).is_err(),
                "{suite:?}: payload tamper refused"
            );
        }
    }

    #[test]
    fn srtcp_round_trip() {
        let ours = fixed(1, Suite::AesCm128HmacSha1_80, 3);
        let theirs = fixed(1, Suite::AesCm128HmacSha1_80, 4);
        let mut us = SrtpSession::new(&ours, &theirs).unwrap();
        let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
        // An empty receiver report: V=2, RC=0, PT=201, length 1, SSRC.
        let rr = [0x80, 201, 0, 1, 0xca, 0xfe, 0xf0, 0x0d];
        let s = peer.protect_rtcp(&rr).unwrap();
        assert_eq!(&us.unprotect_rtcp(&s).unwrap()[..], &rr[..]);
        assert!(us.unprotect_rtcp(&s).is_err(), "SRTCP replay refused");
    }

    /// Inserts an MKI where RFC 3711 puts it: before the trailing tag.
    fn with_mki(packet: &[u8], mki: &[u8], trailer: usize) -> Vec<u8> {
        let at = packet.len() - trailer;
        let mut v = packet[..at].to_vec();
        v.extend_from_slice(mki);
        v.extend_from_slice(&packet[at..]);
        v
    }

    #[test]
    fn a_peer_mki_is_checked_and_removed() {
        for suite in Suite::ALL {
            let ours = fixed(1, suite, 5);
            let mut theirs = fixed(1, suite, 6);
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            theirs.mki = Some((0x0102, 4));
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let trailer = suite.trailer_len(false);
            let p = peer.protect_rtp(&rtp(1)).unwrap();
            let good = with_mki(&p, &[0, 0, 1, 2], trailer);
            assert_eq!(
                &us.unprotect_rtp(&good).unwrap()[..],
                &rtp(1)[..],
                "{suite:?}"
            );
            let p = peer.protect_rtp(&rtp(2)).unwrap();
            let wrong = with_mki(&p, &[0, 0, 9, 9], trailer);
            assert_eq!(us.unprotect_rtp(&wrong).unwrap_err(), SdesError::WrongMki);
            assert!(
                us.unprotect_rtp(&p).is_err(),
                "{suite:?}: a packet without the MKI fails"
            );
        }
    }

    #[test]
    fn generated_keys_are_random_and_never_logged() {
        let provider = rtc_srtp::crypto::default_provider().unwrap();
        let gen = || {
            CryptoAttr::generate(1, Suite::AesCm128HmacSha1_80, |b| {
                provider.random().fill(b).map_err(|e| e.to_string())
            })
            .unwrap()
        };
        let (a, b) = (gen(), gen());
        assert_ne!(a.key_salt, b.key_salt);
        assert!(!format!("{a:?}")
            .contains(&base64::engine::general_purpose::STANDARD.encode(&a.key_salt)));
    }

    #[test]
    fn sessions_from_raw_keys_interoperate_crosswise() {
        for suite in Suite::ALL {
            let (k1, s1) = (vec![0x31; suite.key_len()], vec![0x32; suite.salt_len()]);
            let (k2, s2) = (vec![0x41; suite.key_len()], vec![0x42; suite.salt_len()]);
            let mut a = SrtpSession::from_keys(suite, &k1, &s1, &k2, &s2).unwrap();
            let mut b = SrtpSession::from_keys(suite, &k2, &s2, &k1, &s1).unwrap();
            for seq in 0..5 {
                let p = a.protect_rtp(&rtp(seq)).unwrap();
                assert_eq!(
                    &b.unprotect_rtp(&p).unwrap()[..],
                    &rtp(seq)[..],
                    "{suite:?}"
                );
                let p = b.protect_rtp(&rtp(seq)).unwrap();
                assert_eq!(
                    &a.unprotect_rtp(&p).unwrap()[..],
                    &rtp(seq)[..],
                    "{suite:?}"
                );
            }
            assert!(a.unprotect_rtp(&b.protect_rtp(&rtp(9)).unwrap()).is_ok());
            let replay = b.protect_rtp(&rtp(10)).unwrap();
            a.unprotect_rtp(&replay).unwrap();
            assert!(
                a.unprotect_rtp(&replay).is_err(),
                "{suite:?}: replay refused"
            );
            let rr = [0x80, 201, 0, 1, 0xca, 0xfe, 0xf0, 0x0d];
            let s = a.protect_rtcp(&rr).unwrap();
            assert_eq!(&b.unprotect_rtcp(&s).unwrap()[..], &rr[..], "{suite:?}");
            // Keys the same way round on both sides do not interoperate.
            let mut c = SrtpSession::from_keys(suite, &k1, &s1, &k2, &s2).unwrap();
            assert!(c.unprotect_rtp(&a.protect_rtp(&rtp(11)).unwrap()).is_err());
        }
    }

    #[test]
    fn raw_keys_of_the_wrong_length_are_refused() {
        let suite = Suite::AeadAes128Gcm;
        let (k, s) = (vec![1; 16], vec![2; 12]);
        for (lk, ls, rk, rs, which) in [
            (&k[..15], &s[..], &k[..], &s[..], "local"),
            (&k[..], &s[..], &k[..], &vec![2; 14][..], "remote"),
        ] {
            let e = SrtpSession::from_keys(suite, lk, ls, rk, rs)
                .err()
                .expect(which)
                .to_string();
            assert!(e.contains(which) && e.contains("AEAD_AES_128_GCM"), "{e}");
        }
    }
}
