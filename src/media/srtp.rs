//! SRTP for the legacy leg, keyed by SDES (RFC 4568), sans-IO.
//!
//! [`CryptoAttr`] is one `a=crypto` line; [`SrtpSession`] holds the two one-way contexts of a
//! call leg: ours (we encrypt what we send with our own key) and the peer's (we decrypt what it
//! sends with the key it offered or answered). Replay protection is on for both SRTP and SRTCP.
//!
//! SRTP (RTP) of the AES-CM + HMAC-SHA1 suites goes through `CmContext`, riptide's own
//! implementation of RFC 3711 (and RFC 6188 for AES-256): session keys derived and expanded once
//! per context, a small per-SSRC table, a `u128` replay bitmap, and in-place processing. SRTCP,
//! and SRTP of the AEAD suite, go through rtc-srtp.
//!
//! A peer's MKI (RFC 3711 §3.1: between the encrypted portion and the authentication tag; after
//! the AEAD ciphertext for RFC 7714 suites) is checked against the value it declared. The AES-CM
//! path then authenticates and decrypts what precedes it in place; for rtc-srtp, which does not
//! handle MKIs, it is removed before decryption. riptide never declares an MKI in what it sends.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128Enc, Aes256Enc, Block};
use base64::Engine as _;
use bytes::BytesMut;
use hmac::{Hmac, Mac};
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use sha1::Sha1;
use std::fmt;
use subtle::ConstantTimeEq;

/// Replay window, in packets, for SRTP and SRTCP (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: usize = 128;
// The AES-CM path keeps the window as a `u128` bitmap.
const _: () = assert!(REPLAY_WINDOW == u128::BITS as usize);

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
    /// SRTCP, and SRTP when `tx_cm` is `None`.
    tx: Context,
    /// SRTCP, and SRTP when `rx_cm` is `None`.
    rx: Context,
    rx_suite: Suite,
    /// The MKI the peer puts in every packet, as bytes.
    rx_mki: Option<Vec<u8>>,
    /// SRTP we send, for the AES-CM suites.
    tx_cm: Option<CmContext>,
    /// SRTP we receive, for the AES-CM suites.
    rx_cm: Option<CmContext>,
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
            tx_cm: CmContext::new(local)?,
            rx_cm: CmContext::new(remote)?,
        })
    }

    pub fn protect_rtp(&mut self, rtp: &[u8]) -> Result<BytesMut, SdesError> {
        let Some(cm) = &mut self.tx_cm else {
            return self
                .tx
                .encrypt_rtp(rtp)
                .map_err(|e| SdesError::Srtp(e.to_string()));
        };
        let mut out = BytesMut::with_capacity(rtp.len() + cm.tag_len);
        out.extend_from_slice(rtp);
        out.resize(rtp.len() + cm.tag_len, 0);
        cm.protect(&mut out)?;
        Ok(out)
    }

    /// Protects `rtp`, its second octet (marker and payload type) replaced by `second` when
    /// given, and appends the SRTP packet to `out` (which is cleared first); no allocation once
    /// `out` has capacity (the AEAD suites excepted). On error `out` is left empty.
    pub fn protect_rtp_into(
        &mut self,
        rtp: &[u8],
        second: Option<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), SdesError> {
        out.clear();
        let r = match &mut self.tx_cm {
            Some(cm) => {
                out.reserve(rtp.len() + cm.tag_len);
                out.extend_from_slice(rtp);
                if let (Some(b), Some(o)) = (second, out.get_mut(1)) {
                    *o = b;
                }
                out.resize(rtp.len() + cm.tag_len, 0);
                cm.protect(out)
            }
            None => {
                let renumbered;
                let rtp = match second {
                    Some(b) if rtp.len() > 1 => {
                        renumbered = [&rtp[..1], &[b][..], &rtp[2..]].concat();
                        &renumbered[..]
                    }
                    _ => rtp,
                };
                self.tx
                    .encrypt_rtp(rtp)
                    .map(|p| out.extend_from_slice(&p))
                    .map_err(|e| SdesError::Srtp(e.to_string()))
            }
        };
        if r.is_err() {
            out.clear();
        }
        r
    }

    /// Authenticates, checks replay and decrypts; a tampered, replayed or wrong-MKI packet is
    /// an error (the caller drops and counts it).
    pub fn unprotect_rtp(&mut self, srtp: &[u8]) -> Result<BytesMut, SdesError> {
        if self.rx_cm.is_none() {
            return self.unprotect_rtp_rtc(srtp);
        }
        let mut out = BytesMut::from(srtp);
        let n = self.unprotect_rtp_in_place(&mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Starts loading what [`SrtpSession::unprotect_rtp_in_place`] reads: `deep` false, this
    /// session's receiving half; `deep` true, what that half points to (call it once the half
    /// itself is likely cached).
    pub fn prefetch_rx(&self, deep: bool) {
        CmContext::prefetch(&self.rx_cm, deep);
        if !deep {
            super::prefetch(std::ptr::addr_of!(self.rx_mki).cast(), 1);
        }
    }

    /// As [`SrtpSession::prefetch_rx`], for the sending half ([`SrtpSession::protect_rtp_into`]).
    pub fn prefetch_tx(&self, deep: bool) {
        CmContext::prefetch(&self.tx_cm, deep);
    }

    /// Authenticates, checks replay and decrypts `pkt` in place; returns the length of the plain
    /// RTP packet (a prefix of `pkt`). Errors as [`SrtpSession::unprotect_rtp`].
    pub fn unprotect_rtp_in_place(&mut self, pkt: &mut [u8]) -> Result<usize, SdesError> {
        if let Some(cm) = &mut self.rx_cm {
            return cm.unprotect(pkt, self.rx_mki.as_deref());
        }
        let plain = self.unprotect_rtp_rtc(pkt)?;
        let n = plain.len();
        pkt.get_mut(..n)
            .ok_or_else(|| SdesError::Srtp("decrypted packet longer than the SRTP one".into()))?
            .copy_from_slice(&plain);
        Ok(n)
    }

    /// SRTP unprotection by rtc-srtp (the AEAD suite).
    fn unprotect_rtp_rtc(&mut self, srtp: &[u8]) -> Result<BytesMut, SdesError> {
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

/// SSRCs whose rollover counter (and, receiving, replay window) a [`CmContext`] keeps. Beyond
/// this a receiving context forgets the least recently used one; a sending context refuses the
/// new SSRC, since a forgotten rollover counter would reuse keystream.
const MAX_SSRCS: usize = 16;

/// Packet indices are 48 bits (RFC 3711 §3.2.1): 2^32 rollovers of the sequence number.
const INDEX_LIMIT: u64 = 1 << 48;

/// SRTP key derivation labels (RFC 3711 §4.3.2).
const LABEL_ENCRYPTION: u8 = 0x00;
const LABEL_AUTH: u8 = 0x01;
const LABEL_SALT: u8 = 0x02;

/// Bytes of the HMAC-SHA1 session authentication key (RFC 3711 §4.2.1).
const AUTH_KEY_LEN: usize = 20;
/// Bytes of the master and session salts of the AES-CM suites.
const CM_SALT_LEN: usize = 14;

/// An expanded AES key, for AES in counter mode (RFC 3711 §4.1.1; AES-256 per RFC 6188).
enum CmCipher {
    // Encryption-only key schedules (counter mode never decrypts a block), boxed.
    Aes128(Box<Aes128Enc>),
    Aes256(Box<Aes256Enc>),
}

impl CmCipher {
    fn new(key: &[u8]) -> Result<CmCipher, SdesError> {
        let bad = |_| SdesError::BadKey(format!("AES key of {} bytes", key.len()));
        match key.len() {
            16 => <Aes128Enc as KeyInit>::new_from_slice(key)
                .map(|c| CmCipher::Aes128(Box::new(c)))
                .map_err(bad),
            32 => <Aes256Enc as KeyInit>::new_from_slice(key)
                .map(|c| CmCipher::Aes256(Box::new(c)))
                .map_err(bad),
            n => Err(SdesError::BadKey(format!("AES key of {n} bytes"))),
        }
    }

    /// XORs into `data` the keystream of the counter blocks `iv`, `iv + 1`, ...
    fn apply_keystream(&self, iv: u128, data: &mut [u8]) {
        const PAR: usize = 8;
        let mut blocks = [Block::default(); PAR];
        let mut ctr = iv;
        for chunk in data.chunks_mut(16 * PAR) {
            let n = chunk.len().div_ceil(16);
            let ks = &mut blocks[..n];
            for b in ks.iter_mut() {
                b.copy_from_slice(&ctr.to_be_bytes());
                ctr = ctr.wrapping_add(1);
            }
            match self {
                CmCipher::Aes128(c) => c.encrypt_blocks(ks),
                CmCipher::Aes256(c) => c.encrypt_blocks(ks),
            }
            for (d, k) in chunk.chunks_mut(16).zip(ks.iter()) {
                for (x, y) in d.iter_mut().zip(k.iter()) {
                    *x ^= y;
                }
            }
        }
    }
}

/// A 14-byte salt as a number, for the IV arithmetic of RFC 3711 §4.1.1 and §4.3.3.
fn salt_number(salt: &[u8; CM_SALT_LEN]) -> u128 {
    let mut b = [0u8; 16];
    b[16 - CM_SALT_LEN..].copy_from_slice(salt);
    u128::from_be_bytes(b)
}

/// The AES-CM PRF of RFC 3711 §4.3.3 with key_derivation_rate 0: fills `out` with the keystream
/// under the master key from the IV `(master_salt XOR label · 2^48) · 2^16`.
fn derive_key(master: &CmCipher, master_salt: &[u8; CM_SALT_LEN], label: u8, out: &mut [u8]) {
    out.fill(0);
    let x = salt_number(master_salt) ^ (u128::from(label) << 48);
    master.apply_keystream(x << 16, out);
}

/// Length of the RTP header of `p` with its CSRCs and header extension (RFC 3550 §5.1,
/// §5.3.1); an error if `p` is shorter than that.
fn rtp_header_len(p: &[u8]) -> Result<usize, SdesError> {
    let short = || SdesError::Srtp("RTP packet shorter than its header".into());
    let b0 = *p.first().ok_or_else(short)?;
    let mut n = 12 + 4 * usize::from(b0 & 0x0f);
    if b0 & 0x10 != 0 {
        let ext = p.get(n + 2..n + 4).ok_or_else(short)?;
        n += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if n > p.len() {
        return Err(short());
    }
    Ok(n)
}

/// Sequence number and SSRC of an RTP packet whose header length was checked.
fn seq_ssrc(p: &[u8]) -> Option<(u16, u32)> {
    let seq = p.get(2..4)?;
    let ssrc = p.get(8..12)?;
    Some((
        u16::from_be_bytes([seq[0], seq[1]]),
        u32::from_be_bytes([ssrc[0], ssrc[1], ssrc[2], ssrc[3]]),
    ))
}

/// Rollover counter and highest sequence number of one SSRC (RFC 3711 §3.2.1), with the replay
/// window when receiving.
#[derive(Debug, Clone, Copy)]
struct SsrcState {
    ssrc: u32,
    /// Highest packet index so far: ROC · 2^16 + s_l.
    index: u64,
    /// Bit `i` set: the packet of index `index - i` was accepted.
    window: u128,
}

impl SsrcState {
    /// The state before the first packet, whose sequence number sets s_l with ROC 0.
    fn first(ssrc: u32, seq: u16) -> SsrcState {
        SsrcState {
            ssrc,
            index: u64::from(seq),
            window: 0,
        }
    }

    /// The index of a packet with sequence number `seq` (RFC 3711 §3.3.1, Appendix A). With
    /// ROC 0 there is no earlier rollover to guess. [`INDEX_LIMIT`] or beyond when the ROC
    /// would pass 2^32 - 1.
    fn estimate(&self, seq: u16) -> u64 {
        let roc = self.index >> 16;
        let s_l = i32::from(self.index as u16);
        let s = i32::from(seq);
        let v = if s_l < 0x8000 {
            if s - s_l > 0x8000 {
                roc.saturating_sub(1)
            } else {
                roc
            }
        } else if s_l - 0x8000 > s {
            roc + 1
        } else {
            roc
        };
        (v << 16) | u64::from(seq)
    }

    /// Whether `index` is ahead of the highest, or within the window and not yet accepted.
    fn fresh(&self, index: u64) -> bool {
        match self.index.checked_sub(index) {
            None => true,
            Some(d) => d < u128::BITS.into() && self.window & (1u128 << d) == 0,
        }
    }

    /// Records the authenticated packet of index `index` (which was [`SsrcState::fresh`]).
    fn accept(&mut self, index: u64) {
        if index > self.index {
            let shift = index - self.index;
            let kept = if shift < u128::BITS.into() {
                self.window << shift
            } else {
                0
            };
            self.window = kept | 1;
            self.index = index;
        } else {
            let d = self.index - index;
            if d < u128::BITS.into() {
                self.window |= 1u128 << d;
            }
        }
    }
}

/// One direction of SRTP (RTP only) for the AES-CM + HMAC-SHA1 suites (RFC 3711 §4.1.1, §4.2),
/// with session keys derived once from the master key and salt (key_derivation_rate 0).
struct CmContext {
    cipher: CmCipher,
    /// Session salt · 2^16: its place in the IV.
    salt: u128,
    /// HMAC-SHA1 keyed with the session authentication key; cloned for each packet.
    mac: Hmac<Sha1>,
    /// Bytes of the authentication tag: 10 or 4.
    tag_len: usize,
    /// Per-SSRC states, most recently used first, at most [`MAX_SSRCS`].
    ssrcs: Vec<SsrcState>,
}

impl CmContext {
    /// Starts loading one half of a session: `deep` false, the half itself (its address only:
    /// reading it here would wait for it); `deep` true, the key schedule and the most recent
    /// SSRC's state it points to.
    fn prefetch(half: &Option<CmContext>, deep: bool) {
        if !deep {
            super::prefetch(
                (half as *const Option<CmContext>).cast(),
                std::mem::size_of::<Option<CmContext>>(),
            );
        } else if let Some(cm) = half {
            cm.prefetch_state();
        }
    }

    fn prefetch_state(&self) {
        let schedule: *const u8 = match &self.cipher {
            CmCipher::Aes128(c) => (&**c as *const Aes128Enc).cast(),
            CmCipher::Aes256(c) => (&**c as *const Aes256Enc).cast(),
        };
        super::prefetch(schedule, 256);
        super::prefetch(self.ssrcs.as_ptr().cast(), std::mem::size_of::<SsrcState>());
    }

    /// The context of `attr`'s master key; `None` for a suite other than AES-CM.
    fn new(attr: &CryptoAttr) -> Result<Option<CmContext>, SdesError> {
        let suite = attr.suite;
        if suite == Suite::AeadAes128Gcm {
            return Ok(None);
        }
        let key_len = suite.key_len();
        let bad = || {
            SdesError::BadKey(format!(
                "{} bytes of key and salt, {} expects {}",
                attr.key_salt.len(),
                suite.name(),
                key_len + CM_SALT_LEN
            ))
        };
        let (key, salt) = attr.key_salt.split_at_checked(key_len).ok_or_else(bad)?;
        let master_salt: &[u8; CM_SALT_LEN] = salt.try_into().map_err(|_| bad())?;
        let master = CmCipher::new(key)?;
        let mut session_key = [0u8; 32];
        let mut auth_key = [0u8; AUTH_KEY_LEN];
        let mut session_salt = [0u8; CM_SALT_LEN];
        derive_key(
            &master,
            master_salt,
            LABEL_ENCRYPTION,
            &mut session_key[..key_len],
        );
        derive_key(&master, master_salt, LABEL_AUTH, &mut auth_key);
        derive_key(&master, master_salt, LABEL_SALT, &mut session_salt);
        let cipher = CmCipher::new(&session_key[..key_len]);
        let mac = <Hmac<Sha1> as Mac>::new_from_slice(&auth_key)
            .map_err(|_| SdesError::BadKey("HMAC-SHA1 key".into()));
        let salt = salt_number(&session_salt) << 16;
        session_key.fill(0);
        auth_key.fill(0);
        session_salt.fill(0);
        Ok(Some(CmContext {
            cipher: cipher?,
            salt,
            mac: mac?,
            tag_len: suite.trailer_len(false),
            ssrcs: Vec::new(),
        }))
    }

    /// IV = (k_s · 2^16) XOR (SSRC · 2^64) XOR (i · 2^16), RFC 3711 §4.1.1.
    fn iv(&self, ssrc: u32, index: u64) -> u128 {
        self.salt ^ (u128::from(ssrc) << 64) ^ (u128::from(index) << 16)
    }

    /// HMAC-SHA1 over the authenticated portion and the ROC (RFC 3711 §4.2), untruncated.
    fn full_tag(&self, authenticated: &[u8], roc: u32) -> [u8; 20] {
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The state of `ssrc`, with its position in `ssrcs`; a fresh one (not yet stored) for an
    /// SSRC not seen or forgotten.
    fn state(&self, ssrc: u32, seq: u16) -> (Option<usize>, SsrcState) {
        match self.ssrcs.iter().position(|s| s.ssrc == ssrc) {
            Some(i) => (Some(i), self.ssrcs[i]),
            None => (None, SsrcState::first(ssrc, seq)),
        }
    }

    /// Stores `st` (found at `at`) as the most recently used state.
    fn store(&mut self, at: Option<usize>, st: SsrcState) {
        match at.filter(|&i| i < self.ssrcs.len()) {
            Some(i) => {
                self.ssrcs[i] = st;
                self.ssrcs[..=i].rotate_right(1);
            }
            None => {
                if self.ssrcs.len() >= MAX_SSRCS {
                    self.ssrcs.pop();
                }
                self.ssrcs.insert(0, st);
            }
        }
    }

    /// Protects in place: `buf` is the RTP packet followed by `tag_len` bytes for the tag.
    fn protect(&mut self, buf: &mut [u8]) -> Result<(), SdesError> {
        let rtp_len = buf
            .len()
            .checked_sub(self.tag_len)
            .ok_or_else(|| SdesError::Srtp("RTP packet shorter than its header".into()))?;
        let (rtp, tag) = buf.split_at_mut(rtp_len);
        let header_len = rtp_header_len(rtp)?;
        let (seq, ssrc) = seq_ssrc(rtp)
            .ok_or_else(|| SdesError::Srtp("RTP packet shorter than its header".into()))?;
        let (at, mut st) = self.state(ssrc, seq);
        if at.is_none() && self.ssrcs.len() >= MAX_SSRCS {
            // Forgetting a sender's ROC would reuse keystream if that SSRC came back, so a
            // sending context refuses new SSRCs instead of evicting.
            return Err(SdesError::Srtp(format!(
                "more than {MAX_SSRCS} SSRCs sent under one key"
            )));
        }
        let index = st.estimate(seq);
        if index >= INDEX_LIMIT {
            // RFC 3711 §9.2: the master key must be replaced before 2^48 packets.
            return Err(SdesError::Srtp("2^48 packets sent under one key".into()));
        }
        self.cipher
            .apply_keystream(self.iv(ssrc, index), &mut rtp[header_len..]);
        let full = self.full_tag(rtp, (index >> 16) as u32);
        tag.copy_from_slice(&full[..self.tag_len]);
        st.index = st.index.max(index);
        self.store(at, st);
        Ok(())
    }

    /// Checks the MKI (when the peer declared one), replay and tag, then decrypts in place.
    /// Returns the length of the RTP packet at the front of `pkt`. The replay window, ROC and
    /// s_l move only for an authenticated packet (RFC 3711 §3.3.2).
    fn unprotect(&mut self, pkt: &mut [u8], mki: Option<&[u8]>) -> Result<usize, SdesError> {
        let mki_len = mki.map_or(0, <[u8]>::len);
        let len = pkt.len();
        if len < 12 + mki_len + self.tag_len {
            return Err(SdesError::Srtp(if mki.is_some() {
                "packet shorter than its MKI and tag".into()
            } else {
                "SRTP packet shorter than a header and tag".into()
            }));
        }
        let rtp_len = len - self.tag_len - mki_len;
        let (rtp, trailer) = pkt.split_at_mut(rtp_len);
        let (pkt_mki, tag) = trailer.split_at(mki_len);
        if mki.is_some_and(|m| m != pkt_mki) {
            return Err(SdesError::WrongMki);
        }
        let header_len = rtp_header_len(rtp)?;
        let (seq, ssrc) = seq_ssrc(rtp)
            .ok_or_else(|| SdesError::Srtp("RTP packet shorter than its header".into()))?;
        let (at, mut st) = self.state(ssrc, seq);
        let index = st.estimate(seq);
        if index >= INDEX_LIMIT || !st.fresh(index) {
            return Err(SdesError::Srtp(format!(
                "replayed or too old: SSRC {ssrc:08x} sequence number {seq}"
            )));
        }
        let full = self.full_tag(rtp, (index >> 16) as u32);
        if !bool::from(full[..self.tag_len].ct_eq(tag)) {
            return Err(SdesError::Srtp("authentication tag mismatch".into()));
        }
        self.cipher
            .apply_keystream(self.iv(ssrc, index), &mut rtp[header_len..]);
        st.accept(index);
        self.store(at, st);
        Ok(rtp_len)
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

    // --- The AES-CM path ---

    const CM_SUITES: [Suite; 3] = [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::Aes256CmHmacSha1_80,
    ];

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// An RTP packet with `csrcs` CSRCs, an optional header extension (profile, data of a
    /// multiple of 4 bytes), `padding` bytes of RTP padding (P bit) and `payload` bytes.
    fn packet(
        seq: u16,
        ssrc: u32,
        csrcs: u8,
        ext: Option<(u16, &[u8])>,
        padding: u8,
        payload: usize,
    ) -> Vec<u8> {
        let mut b0 = 0x80 | csrcs;
        if padding > 0 {
            b0 |= 0x20;
        }
        if ext.is_some() {
            b0 |= 0x10;
        }
        let mut p = vec![b0, 0x60 | 8];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&u32::from(seq).wrapping_mul(160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for c in 0..u32::from(csrcs) {
            p.extend_from_slice(&(0x0c5c_0000 + c).to_be_bytes());
        }
        if let Some((profile, data)) = ext {
            assert_eq!(data.len() % 4, 0);
            p.extend_from_slice(&profile.to_be_bytes());
            p.extend_from_slice(&((data.len() / 4) as u16).to_be_bytes());
            p.extend_from_slice(data);
        }
        p.extend((0..payload).map(|i| (i as u8).wrapping_mul(7) ^ seq as u8));
        if padding > 0 {
            p.extend(std::iter::repeat_n(0, usize::from(padding) - 1));
            p.push(padding);
        }
        p
    }

    /// A mix of shapes, chosen by `seq`: plain G.711, CSRCs, a header extension of either
    /// profile, the P bit, odd and empty payloads.
    fn varied(seq: u16, ssrc: u32) -> Vec<u8> {
        // RFC 8285 one-byte (id 1, 2 bytes, a padding byte) and two-byte (id 1, 2 bytes)
        // header extensions, and an RFC 3550 one of another profile.
        let one_byte: &[u8] = &[0x11, 0xaa, 0xbb, 0x00];
        let two_byte: &[u8] = &[0x01, 0x02, 0xcc, 0xdd];
        let generic: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
        match seq % 8 {
            0 => pcmu(seq, ssrc),
            1 => packet(seq, ssrc, 2, None, 0, 160),
            2 => packet(seq, ssrc, 0, Some((0xabac, generic)), 0, 33),
            3 => packet(seq, ssrc, 1, Some((0xbede, one_byte)), 4, 20),
            4 => packet(seq, ssrc, 3, Some((0x1000, two_byte)), 1, 1),
            5 => packet(seq, ssrc, 0, None, 0, 0),
            6 => packet(seq, ssrc, 15, Some((0xabac, generic)), 0, 160),
            _ => packet(seq, ssrc, 0, None, 7, 129),
        }
    }

    fn pcmu(seq: u16, ssrc: u32) -> Vec<u8> {
        crate::media::rtp::pcmu_packet(seq, ssrc)
    }

    fn rx_state(s: &SrtpSession) -> &[SsrcState] {
        &s.rx_cm.as_ref().unwrap().ssrcs
    }

    fn tx_state(s: &SrtpSession) -> &[SsrcState] {
        &s.tx_cm.as_ref().unwrap().ssrcs
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let cipher = CmCipher::new(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap();
        let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        let cm = CmContext {
            cipher,
            salt: salt_number(&salt) << 16,
            mac: <Hmac<Sha1> as Mac>::new_from_slice(&[0; 20]).unwrap(),
            tag_len: 10,
            ssrcs: Vec::new(),
        };
        // SSRC, ROC and sequence number zero: the IV is the salt, shifted.
        let iv = cm.iv(0, 0);
        assert_eq!(
            iv.to_be_bytes().to_vec(),
            hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
        );
        // The RFC's whole keystream segment: 65282 blocks.
        let mut ks = vec![0u8; 1_044_512];
        cm.cipher.apply_keystream(iv, &mut ks);
        assert_eq!(
            ks[..48],
            hex("E03EAD0935C95E80E166B16DD92B4EB4
                 D23513162B02D0F72A43A2FE4A5F97AB
                 41E95B3BB0A2E8DD477901E4FCA894C0")[..]
        );
        assert_eq!(
            ks[ks.len() - 48..],
            hex("EC8CDF7398607CB0F2D21675EA9EA1E4
                 362B7C3C6773516318A077D7FC5073AE
                 6A2CC3787889374FBEB4C81B17BA6C44")[..]
        );
        // Applied at an offset that is not a block boundary, the stream is the same.
        let mut part = vec![0u8; 40];
        cm.cipher.apply_keystream(iv, &mut part);
        assert_eq!(part[..], ks[..40]);
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let master = CmCipher::new(&hex("E1F97A0D3E018BE0D64FA32C06DE4139")).unwrap();
        let salt: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let mut key = [0u8; 16];
        derive_key(&master, &salt, LABEL_ENCRYPTION, &mut key);
        assert_eq!(key[..], hex("C61E7A93744F39EE10734AFE3FF7A087")[..]);
        let mut session_salt = [0u8; 14];
        derive_key(&master, &salt, LABEL_SALT, &mut session_salt);
        assert_eq!(session_salt[..], hex("30CBBC08863D8C85D49DB34A9AE1")[..]);
        let mut auth = [0xffu8; 20];
        derive_key(&master, &salt, LABEL_AUTH, &mut auth);
        assert_eq!(
            auth[..],
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")[..]
        );
        // A context keyed with that master key holds the derived salt.
        let mut key_salt = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        key_salt.extend_from_slice(&salt);
        let attr = CryptoAttr {
            key_salt,
            ..fixed(1, Suite::AesCm128HmacSha1_80, 0)
        };
        let cm = CmContext::new(&attr).unwrap().unwrap();
        assert_eq!(
            cm.salt,
            u128::from_be_bytes(hex("30CBBC08863D8C85D49DB34A9AE10000").try_into().unwrap())
        );
    }

    /// A renumbered payload type (ADR 0031) is written before protection, on our own CM path
    /// and on rtc-srtp's AEAD one: the peer authenticates and reads the new octet.
    #[test]
    fn a_replaced_second_octet_is_protected_with_the_packet() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm] {
            let (ours, theirs) = (fixed(1, suite, 0x51), fixed(1, suite, 0x52));
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            let mut plain = varied(7, 0x5eed_0001);
            plain[1] = 0x80 | 101;
            let mut out = Vec::new();
            us.protect_rtp_into(&plain, Some(0x80 | 100), &mut out)
                .unwrap();
            let got = peer.unprotect_rtp(&out).unwrap();
            plain[1] = 0x80 | 100;
            assert_eq!(got[..], plain[..], "{suite:?}");
        }
    }

    #[test]
    fn cm_suites_match_rtc_srtp_byte_for_byte_across_the_rollover() {
        let ssrc = 0x5eed_0001;
        for suite in CM_SUITES {
            let ours = fixed(1, suite, 0x51);
            let theirs = fixed(1, suite, 0x52);
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let mut ref_tx = ours.context(false).unwrap();
            let mut ref_rx = ours.context(true).unwrap();
            let mut peer_tx = theirs.context(false).unwrap();
            let mut out = Vec::new();
            for i in 0..70_000u32 {
                let seq = i as u16;
                let plain = varied(seq, ssrc);
                // Ours -> rtc-srtp, and the same bytes as rtc-srtp's own output.
                if i % 5 == 0 {
                    out = us.protect_rtp(&plain).unwrap().to_vec();
                } else {
                    us.protect_rtp_into(&plain, None, &mut out).unwrap();
                }
                let reference = ref_tx.encrypt_rtp(&plain).unwrap();
                assert_eq!(out[..], reference[..], "{suite:?} seq {i}");
                assert_eq!(
                    ref_rx.decrypt_rtp(&out).unwrap()[..],
                    plain[..],
                    "{suite:?} seq {i}"
                );
                // rtc-srtp -> ours.
                let mut p = peer_tx.encrypt_rtp(&plain).unwrap().to_vec();
                if i % 5 == 1 {
                    assert_eq!(us.unprotect_rtp(&p).unwrap()[..], plain[..], "{suite:?}");
                } else {
                    let n = us.unprotect_rtp_in_place(&mut p).unwrap();
                    assert_eq!(p[..n], plain[..], "{suite:?} seq {i}");
                }
            }
            // 70 000 packets from sequence number 0: ROC 1, s_l = 70 000 - 65 536 - 1.
            let last = (1u64 << 16) | u64::from(69_999u32 as u16);
            assert_eq!(tx_state(&us)[0].index, last, "{suite:?}");
            assert_eq!(rx_state(&us)[0].index, last, "{suite:?}");
        }
    }

    #[test]
    fn cm_suites_take_a_peer_mki_in_place() {
        for suite in CM_SUITES {
            for (mki, bytes) in [((0x0102, 4), vec![0, 0, 1, 2]), ((7, 1), vec![7])] {
                let ours = fixed(1, suite, 5);
                let mut theirs = fixed(1, suite, 6);
                let mut peer = theirs.context(false).unwrap();
                theirs.mki = Some(mki);
                let mut us = SrtpSession::new(&ours, &theirs).unwrap();
                let trailer = suite.trailer_len(false);
                for seq in 0..4u16 {
                    let plain = varied(seq, 0xabcd);
                    let p = peer.encrypt_rtp(&plain).unwrap();
                    let mut good = with_mki(&p, &bytes, trailer);
                    let n = us.unprotect_rtp_in_place(&mut good).unwrap();
                    assert_eq!(good[..n], plain[..], "{suite:?}");
                }
                let plain = pcmu(4, 0xabcd);
                let p = peer.encrypt_rtp(&plain).unwrap();
                let mut wrong = with_mki(&p, &vec![9; bytes.len()], trailer);
                assert_eq!(
                    us.unprotect_rtp_in_place(&mut wrong).unwrap_err(),
                    SdesError::WrongMki
                );
                // The refused packet did not use up its sequence number.
                let good = with_mki(&p, &bytes, trailer);
                assert_eq!(us.unprotect_rtp(&good).unwrap()[..], plain[..]);
                let mut short = good[..12 + bytes.len() + trailer - 1].to_vec();
                assert!(us.unprotect_rtp_in_place(&mut short).is_err());
            }
        }
    }

    #[test]
    fn replay_window_is_128_packets() {
        for suite in CM_SUITES {
            let ours = fixed(1, suite, 7);
            let theirs = fixed(1, suite, 8);
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let mut take = |seq: u16| {
                let mut p = peer.protect_rtp(&rtp(seq)).unwrap().to_vec();
                let r = us.unprotect_rtp_in_place(&mut p);
                if let Ok(n) = r {
                    assert_eq!(p[..n], rtp(seq)[..]);
                }
                r.is_ok()
            };
            assert!(take(500));
            assert!(!take(500), "{suite:?}: repeat");
            assert!(take(373), "{suite:?}: 127 behind, never seen");
            assert!(!take(373), "{suite:?}: repeat within the window");
            assert!(!take(372), "{suite:?}: 128 behind");
            assert!(take(505));
            for seq in [503, 501, 504] {
                assert!(take(seq), "{suite:?}: out of order {seq}");
            }
            assert!(!take(503), "{suite:?}: out of order, repeated");
            assert!(take(502));
            assert!(take(1000), "{suite:?}: a jump ahead");
            assert!(take(873) && !take(872) && !take(505), "{suite:?}");
            assert!(!take(1000));
        }
    }

    #[test]
    fn tampered_packets_are_refused_and_do_not_move_the_window() {
        let ssrc = 0xcafe_f00d;
        for suite in CM_SUITES {
            let ours = fixed(1, suite, 9);
            let theirs = fixed(1, suite, 10);
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let ten = peer.protect_rtp(&rtp(10)).unwrap();
            assert!(us.unprotect_rtp(&ten).is_ok());
            let far = peer.protect_rtp(&rtp(300)).unwrap().to_vec();
            let tag_at = far.len() - suite.trailer_len(false);
            // Timestamp, sequence number, SSRC, payload, first and last tag byte.
            for (at, bit) in [
                (5, 1),
                (3, 1),
                (11, 4),
                (20, 0x80),
                (tag_at, 1),
                (far.len() - 1, 1),
            ] {
                let mut bad = far.clone();
                bad[at] ^= bit;
                assert!(
                    us.unprotect_rtp_in_place(&mut bad).is_err(),
                    "{suite:?}: byte {at}"
                );
                assert!(us.unprotect_rtp(&bad).is_err(), "{suite:?}: byte {at}");
            }
            assert_eq!(
                rx_state(&us).len(),
                1,
                "{suite:?}: a forged SSRC gets no state"
            );
            assert_eq!(
                rx_state(&us)[0].index,
                10,
                "{suite:?}: the window did not move"
            );
            // Were the window at 300, 11 would be too old; a tampered 12 leaves 12 unused.
            let eleven = peer.protect_rtp(&rtp(11)).unwrap();
            assert_eq!(us.unprotect_rtp(&eleven).unwrap()[..], rtp(11)[..]);
            let twelve = peer.protect_rtp(&rtp(12)).unwrap().to_vec();
            let mut bad = twelve.clone();
            bad[30] ^= 2;
            assert!(us.unprotect_rtp_in_place(&mut bad).is_err());
            assert_eq!(us.unprotect_rtp(&twelve).unwrap()[..], rtp(12)[..]);
            assert_eq!(us.unprotect_rtp(&far).unwrap()[..], pcmu(300, ssrc)[..]);
        }
    }

    #[test]
    fn receiver_estimates_the_index_of_late_packets_around_the_rollover() {
        for suite in CM_SUITES {
            let ours = fixed(1, suite, 11);
            let theirs = fixed(1, suite, 12);
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let seqs: Vec<u16> = (65530..=65535).chain(0..=5).collect();
            let sent: Vec<(u16, Vec<u8>)> = seqs
                .iter()
                .map(|&s| (s, peer.protect_rtp(&rtp(s)).unwrap().to_vec()))
                .collect();
            assert_eq!(tx_state(&peer)[0].index, (1 << 16) | 5);
            let get = |s: u16| sent.iter().find(|(q, _)| *q == s).unwrap().1.clone();
            for s in [65530, 65531, 0, 65532, 1, 65535, 2, 65533, 3, 4, 65534, 5] {
                let mut p = get(s);
                let n = us
                    .unprotect_rtp_in_place(&mut p)
                    .expect("late or early, once");
                assert_eq!(p[..n], rtp(s)[..], "{suite:?} seq {s}");
            }
            for s in [65532, 0, 5] {
                assert!(
                    us.unprotect_rtp(&get(s)).is_err(),
                    "{suite:?}: replay of {s}"
                );
            }
            assert_eq!(rx_state(&us)[0].index, (1 << 16) | 5);
        }
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        for suite in Suite::ALL {
            let ours = fixed(1, suite, 13);
            let theirs = fixed(1, suite, 14);
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let mut out = vec![1, 2, 3];
            let cm = suite != Suite::AeadAes128Gcm;
            let mut both = |p: &[u8], what: &str, tag_room: bool| {
                assert!(
                    us.protect_rtp_into(p, None, &mut out).is_err(),
                    "{suite:?}: {what}"
                );
                assert!(out.is_empty(), "{suite:?}: {what}");
                assert!(us.protect_rtp(p).is_err(), "{suite:?}: {what}");
                // With room for a tag after it, the header still does not fit.
                let mut with_tag = p.to_vec();
                if tag_room {
                    with_tag.extend_from_slice(&[0; 16]);
                }
                for q in [p, &with_tag[..]] {
                    let e = us.unprotect_rtp(q).unwrap_err().to_string();
                    assert!(!cm || e.contains("shorter"), "{suite:?}: {what}: {e}");
                    let e = us.unprotect_rtp_in_place(&mut q.to_vec()).unwrap_err();
                    assert!(
                        !cm || e.to_string().contains("shorter"),
                        "{suite:?}: {what}"
                    );
                }
            };
            let good = rtp(1);
            for n in 0..12 {
                both(&good[..n], "shorter than a header", false);
            }
            let mut cc = rtp(2)[..40].to_vec();
            cc[0] |= 0x0f; // 15 CSRCs: 72 bytes of header in 40
            both(&cc, "CSRC count beyond the packet", true);
            let mut ext = rtp(3);
            ext[0] |= 0x10;
            ext[14] = 0xff; // extension length 0xffxx words
            both(&ext, "extension length beyond the packet", true);
            let mut no_ext_header = rtp(4)[..14].to_vec();
            no_ext_header[0] |= 0x10;
            if !cm {
                both(&no_ext_header, "no room for the extension header", true);
            } else {
                // (with a tag appended, the zeros would make an empty extension)
                assert!(us.protect_rtp(&no_ext_header).is_err());
                assert!(us.unprotect_rtp(&no_ext_header).is_err());
            }
            // A packet shorter than header plus tag.
            let mut p = us_peer_protect(suite, &ours, &theirs, 5);
            let keep = 12 + suite.trailer_len(false) - 1;
            assert!(us.unprotect_rtp_in_place(&mut p[..keep]).is_err());
        }
        // Noise of every short length, for every suite, with and without an MKI.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for suite in Suite::ALL {
            let ours = fixed(1, suite, 15);
            let mut theirs = fixed(1, suite, 16);
            for mki in [None, Some((3, 2))] {
                theirs.mki = mki;
                let mut us = SrtpSession::new(&ours, &theirs).unwrap();
                let mut out = Vec::new();
                for i in 0..4000 {
                    let len = (next() % 120) as usize;
                    let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if i % 2 == 0 && !p.is_empty() {
                        p[0] = (p[0] & 0x3f) | 0x80;
                    }
                    let _ = us.protect_rtp_into(&p, None, &mut out);
                    let _ = us.protect_rtp(&p);
                    let _ = us.unprotect_rtp(&p);
                    let _ = us.unprotect_rtp_in_place(&mut p);
                }
            }
        }
    }

    /// One packet from the peer of `SrtpSession::new(ours, theirs)`.
    fn us_peer_protect(suite: Suite, ours: &CryptoAttr, theirs: &CryptoAttr, seq: u16) -> Vec<u8> {
        let mut peer = SrtpSession::new(theirs, ours).unwrap();
        let p = peer.protect_rtp(&rtp(seq)).unwrap().to_vec();
        assert!(p.len() > 12 + suite.trailer_len(false));
        p
    }

    #[test]
    fn sender_stops_before_2_48_packets() {
        let a = fixed(1, Suite::AesCm128HmacSha1_80, 17);
        let mut us = SrtpSession::new(&a, &a).unwrap();
        us.protect_rtp(&rtp(0xfff0)).unwrap();
        us.tx_cm.as_mut().unwrap().ssrcs[0].index = (u64::from(u32::MAX) << 16) | 0xfff0;
        assert!(us.protect_rtp(&rtp(0xffff)).is_ok(), "the last index");
        let e = us.protect_rtp(&rtp(0)).unwrap_err();
        assert!(e.to_string().contains("2^48"), "{e}");
    }

    #[test]
    fn ssrc_table_is_bounded_and_keeps_the_busy_ssrc() {
        let ours = fixed(1, Suite::AesCm128HmacSha1_80, 18);
        let theirs = fixed(1, Suite::AesCm128HmacSha1_80, 19);
        let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
        let mut us = SrtpSession::new(&ours, &theirs).unwrap();
        let main = 0x1111_1111;
        for i in 0..40u32 {
            let seq = i as u16;
            let other = pcmu(seq, 0x2000_0000 + i);
            // A sender of its own per passing SSRC (one sending context refuses a 17th).
            let mut passer = SrtpSession::new(&theirs, &ours).unwrap();
            let p = passer.protect_rtp(&other).unwrap();
            assert_eq!(us.unprotect_rtp(&p).unwrap()[..], other[..]);
            let p = peer.protect_rtp(&pcmu(seq, main)).unwrap();
            assert_eq!(us.unprotect_rtp(&p).unwrap()[..], pcmu(seq, main)[..]);
            assert!(us.unprotect_rtp(&p).is_err(), "replay of SSRC {main:08x}");
        }
        assert_eq!(rx_state(&us).len(), MAX_SSRCS);
        assert_eq!(rx_state(&us)[0].ssrc, main);
        assert_eq!(rx_state(&us)[0].index, 39);
        // The sending side never forgets an SSRC's rollover counter: past the bound it refuses.
        for i in 1..MAX_SSRCS as u32 {
            assert!(peer.protect_rtp(&pcmu(0, main + i)).is_ok());
        }
        assert_eq!(tx_state(&peer).len(), MAX_SSRCS);
        assert!(peer.protect_rtp(&pcmu(0, 0x3000_0000)).is_err());
        assert!(peer.protect_rtp(&pcmu(40, main)).is_ok());
        assert_eq!(tx_state(&peer).len(), MAX_SSRCS);
    }

    #[test]
    fn in_place_api_round_trips_every_suite_with_and_without_mki() {
        for suite in Suite::ALL {
            let ours = fixed(1, suite, 20);
            let mut theirs = fixed(1, suite, 21);
            let mut peer = SrtpSession::new(&theirs, &ours).unwrap();
            theirs.mki = Some((0x0a0b, 2));
            let mut us = SrtpSession::new(&ours, &theirs).unwrap();
            let trailer = suite.trailer_len(false);
            let mut out = Vec::with_capacity(1500);
            for seq in 0..30u16 {
                let plain = varied(seq, 0x77);
                peer.protect_rtp_into(&plain, None, &mut out).unwrap();
                assert_eq!(out[..], peer_copy(&theirs, &ours, &plain)[..], "{suite:?}");
                let mut p = with_mki(&out, &[0x0a, 0x0b], trailer);
                let n = us.unprotect_rtp_in_place(&mut p).unwrap();
                assert_eq!(p[..n], plain[..], "{suite:?} seq {seq}");
                us.protect_rtp_into(&plain, None, &mut out).unwrap();
                let mut p = out.clone();
                let n = peer.unprotect_rtp_in_place(&mut p).unwrap();
                assert_eq!(p[..n], plain[..], "{suite:?} seq {seq}");
                assert!(peer.unprotect_rtp_in_place(&mut out).is_err(), "{suite:?}");
            }
        }
    }

    /// What a fresh sender keyed like `SrtpSession::new(local, remote)` makes of `plain`.
    fn peer_copy(local: &CryptoAttr, remote: &CryptoAttr, plain: &[u8]) -> Vec<u8> {
        let mut s = SrtpSession::new(local, remote).unwrap();
        s.protect_rtp(plain).unwrap().to_vec()
    }
}
