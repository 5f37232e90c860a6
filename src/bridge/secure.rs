//! Media security and ICE of one legacy (SIP) leg: what a trunk's policy accepts in an SDP offer
//! or answer, what riptide writes in its own SDP, and what the media hub must apply.
//!
//! Sans-IO and deterministic apart from key and credential generation (ring's CSPRNG).
//!
//! | offer transport            | `a=crypto` | meaning                 | policies accepting it        |
//! |----------------------------|------------|-------------------------|------------------------------|
//! | `RTP/AVP`, `RTP/AVPF`      | no         | plain RTP               | rtp, best-effort             |
//! | `RTP/AVP`, `RTP/AVPF`      | yes        | best-effort SRTP        | sdes, any-secure, best-effort (rtp ignores the keys) |
//! | `RTP/SAVP`, `RTP/SAVPF`    | yes        | SDES-SRTP (RFC 4568)    | sdes, any-secure, best-effort|
//! | `UDP/TLS/RTP/SAVP(F)`      | —          | DTLS-SRTP (RFC 5763)    | dtls, any-secure, best-effort|
//!
//! What riptide offers: rtp → `RTP/AVP`; sdes and any-secure → `RTP/SAVP` with one `a=crypto`
//! per supported suite (each its own key); dtls → `UDP/TLS/RTP/SAVP` with `a=setup:actpass`;
//! best-effort → `RTP/AVP` with `a=crypto` lines, SRTP when the answer keys it.
//!
//! ICE (RFC 8445/8839): with `ice = "lite"` or `"full"` riptide puts its credentials and its one
//! host candidate in every SDP it sends (`a=ice-lite` at session level in lite mode) and runs ICE
//! when the peer's SDP carries credentials too. Roles: a lite agent is controlled; between two
//! full agents the offerer controls; a full agent facing a lite one controls.

use crate::config::{DtmfMode, IceMode, MediaSecurity};
use crate::media::srtp::{CryptoAttr, Suite};
use crate::sdp::SecurityDesc;
use std::net::{IpAddr, SocketAddr};

/// A leg's media policy, resolved from `[media]` and the trunk's overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaPolicy {
    pub security: MediaSecurity,
    pub ice: IceMode,
    pub latching: bool,
    pub dtmf: DtmfMode,
}

/// How the hub must protect a leg's packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegCrypto {
    Plain,
    /// SDES: our key encrypts what we send, the peer's decrypts what it sends.
    Sdes {
        local: CryptoAttr,
        remote: CryptoAttr,
    },
    /// DTLS-SRTP: the handshake on the media 5-tuple keys SRTP; the peer's certificate must match
    /// one of `fingerprints` (SDP `a=fingerprint` values).
    Dtls {
        client: bool,
        fingerprints: Vec<String>,
    },
}

impl LegCrypto {
    pub fn label(&self) -> &'static str {
        match self {
            LegCrypto::Plain => "rtp",
            LegCrypto::Sdes { .. } => "sdes",
            LegCrypto::Dtls { .. } => "dtls",
        }
    }
}

/// ICE parameters of a leg for the hub's agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegIce {
    /// We run ICE-lite (answer checks only).
    pub lite: bool,
    /// Full mode only: we send nominations.
    pub controlling: bool,
    pub local_ufrag: String,
    pub local_pwd: String,
    pub remote_ufrag: String,
    pub remote_pwd: String,
    pub remote_candidates: Vec<SocketAddr>,
}

/// The outcome of one offer/answer round for the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub crypto: LegCrypto,
    pub ice: Option<LegIce>,
}

/// Our side of a leg's security across offer/answer rounds.
#[derive(Debug, Clone)]
pub struct LegSecurity {
    pub policy: MediaPolicy,
    /// Our `a=fingerprint` value (the gateway's DTLS certificate).
    fingerprint: String,
    ip: IpAddr,
    port: u16,
    /// SDES keys in our outstanding or last offer, one per suite.
    offered: Vec<CryptoAttr>,
    /// The key we use, once a round settled SDES.
    local_crypto: Option<CryptoAttr>,
    /// The peer's key it was settled with (a changed one in a re-offer is a rekey).
    remote_crypto: Option<CryptoAttr>,
    /// DTLS role once settled; kept across re-offers with the same fingerprint.
    dtls_client: Option<bool>,
    ice_ufrag: String,
    ice_pwd: String,
    /// What we write in our SDP.
    pub proto: String,
    pub session_attrs: Vec<String>,
    pub media_attrs: Vec<String>,
}

fn is_plain(proto: &str) -> bool {
    proto == "RTP/AVP" || proto == "RTP/AVPF"
}

fn is_sdes(proto: &str) -> bool {
    proto == "RTP/SAVP" || proto == "RTP/SAVPF"
}

fn is_dtls(proto: &str) -> bool {
    proto == "UDP/TLS/RTP/SAVP" || proto == "UDP/TLS/RTP/SAVPF"
}

/// Whether riptide can carry `proto` at all (before any policy).
pub fn known_transport(proto: &str) -> bool {
    is_plain(proto) || is_sdes(proto) || is_dtls(proto)
}

/// The suites of our SDES offers, tag 1 first. AES_CM_128_HMAC_SHA1_80 leads because it is
/// the one every SDES endpoint has, and some (baresip 1.0 with ICE) answer as if only the first
/// line had been offered.
const OFFER_ORDER: [Suite; 4] = [
    Suite::AesCm128HmacSha1_80,
    Suite::AeadAes128Gcm,
    Suite::Aes256CmHmacSha1_80,
    Suite::AesCm128HmacSha1_32,
];

fn supported_suites() -> String {
    Suite::ALL.map(Suite::name).join(", ")
}

impl LegSecurity {
    /// `ip`/`port`: our media socket (the ICE host candidate); `fingerprint`: our DTLS one.
    pub fn new(policy: MediaPolicy, fingerprint: &str, ip: IpAddr, port: u16) -> LegSecurity {
        let creds = (policy.ice != IceMode::Off).then(crate::media::ice::IceCredentials::generate);
        let (ice_ufrag, ice_pwd) = creds.map(|c| (c.ufrag, c.pwd)).unwrap_or_default();
        LegSecurity {
            policy,
            fingerprint: fingerprint.to_string(),
            ip,
            port,
            offered: Vec::new(),
            local_crypto: None,
            remote_crypto: None,
            dtls_client: None,
            ice_ufrag,
            ice_pwd,
            proto: "RTP/AVP".into(),
            session_attrs: Vec::new(),
            media_attrs: Vec::new(),
        }
    }

    fn ice_attrs(&self) -> (Vec<String>, Vec<String>) {
        if self.policy.ice == IceMode::Off {
            return (vec![], vec![]);
        }
        let session = if self.policy.ice == IceMode::Lite {
            vec!["ice-lite".to_string()]
        } else {
            vec![]
        };
        // RFC 8445 §5.1.2.1: host type preference 126, local preference 65535, component 1.
        let priority: u32 = (126 << 24) | (65535 << 8) | 255;
        let media = vec![
            format!("ice-ufrag:{}", self.ice_ufrag),
            format!("ice-pwd:{}", self.ice_pwd),
            format!(
                "candidate:1 1 UDP {priority} {} {} typ host",
                self.ip, self.port
            ),
        ];
        (session, media)
    }

    /// Our initial offer's transport and attributes (stored in `proto`/`*_attrs` too).
    pub fn offer(&mut self) -> Result<(), String> {
        let (session, mut media) = self.ice_attrs();
        self.offered.clear();
        let proto = match self.policy.security {
            MediaSecurity::Rtp => "RTP/AVP",
            MediaSecurity::Dtls => {
                media.push("setup:actpass".into());
                media.push(format!("fingerprint:{}", self.fingerprint));
                "UDP/TLS/RTP/SAVP"
            }
            MediaSecurity::Sdes | MediaSecurity::AnySecure | MediaSecurity::BestEffort => {
                for (i, suite) in OFFER_ORDER.into_iter().enumerate() {
                    let tag = u32::try_from(i + 1).unwrap_or(1);
                    let key = CryptoAttr::random(tag, suite).map_err(|e| e.to_string())?;
                    media.push(format!("crypto:{}", key.to_attr_value()));
                    self.offered.push(key);
                }
                if self.policy.security == MediaSecurity::BestEffort {
                    "RTP/AVP"
                } else {
                    "RTP/SAVP"
                }
            }
        };
        self.proto = proto.to_string();
        self.session_attrs = session;
        self.media_attrs = media;
        Ok(())
    }

    fn ice_for(
        &self,
        remote: &SecurityDesc,
        fallback: Option<SocketAddr>,
        offerer: bool,
    ) -> Option<LegIce> {
        if self.policy.ice == IceMode::Off {
            return None;
        }
        let (ufrag, pwd) = (remote.ice_ufrag.as_ref()?, remote.ice_pwd.as_ref()?);
        let lite = self.policy.ice == IceMode::Lite;
        if lite && remote.ice_lite {
            // Two lite agents run no checks (RFC 8445 §6.1.1): plain addressing.
            return None;
        }
        let mut candidates = remote.candidates.clone();
        if candidates.is_empty() {
            candidates.extend(fallback);
        }
        Some(LegIce {
            lite,
            controlling: !lite && (remote.ice_lite || offerer),
            local_ufrag: self.ice_ufrag.clone(),
            local_pwd: self.ice_pwd.clone(),
            remote_ufrag: ufrag.clone(),
            remote_pwd: pwd.clone(),
            remote_candidates: candidates,
        })
    }

    /// Answers a peer's offer (initial or re-offer). `Err` is the reason for a 488 Warning.
    pub fn answer(
        &mut self,
        proto: &str,
        remote: &SecurityDesc,
        fallback: Option<SocketAddr>,
    ) -> Result<Negotiated, String> {
        let policy = self.policy.security;
        if !known_transport(proto) {
            return Err(format!(
                "unsupported media transport {proto} (RTP/AVP(F), RTP/SAVP(F) and UDP/TLS/RTP/SAVP(F) are)"
            ));
        }
        let refuse = |what: &str| {
            Err(format!(
                "media security policy {} does not accept {what}",
                policy.as_str()
            ))
        };
        let (session, mut media) = self.ice_attrs();
        let crypto = if is_dtls(proto) {
            if matches!(policy, MediaSecurity::Rtp | MediaSecurity::Sdes) {
                return refuse(&format!("DTLS-SRTP ({proto})"));
            }
            if remote.fingerprints.is_empty() {
                return Err(format!("{proto} offer without a=fingerprint"));
            }
            // RFC 5763 §5: the answerer to actpass is active; RFC 4145 §4: no setup = active.
            let client = match remote
                .setup
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("actpass") | Some("passive") => true,
                Some("active") | None => false,
                Some(other) => return Err(format!("a=setup:{other} cannot start DTLS")),
            };
            media.push(format!(
                "setup:{}",
                if client { "active" } else { "passive" }
            ));
            media.push(format!("fingerprint:{}", self.fingerprint));
            self.dtls_client = Some(client);
            self.local_crypto = None;
            self.remote_crypto = None;
            LegCrypto::Dtls {
                client,
                fingerprints: remote.fingerprints.clone(),
            }
        } else {
            let sdes_wanted = !matches!(policy, MediaSecurity::Rtp);
            let chosen = if sdes_wanted {
                pick_crypto(&remote.crypto)
            } else {
                None
            };
            match chosen {
                Some(remote_key) => {
                    if matches!(policy, MediaSecurity::Dtls) {
                        return refuse(&format!("SDES-SRTP ({proto} with a=crypto)"));
                    }
                    // Same key from the peer: keep ours (a new context would reset the ROC and
                    // the replay window). A new key or suite is a rekey on both sides.
                    let keep = self.remote_crypto.as_ref() == Some(&remote_key)
                        && self
                            .local_crypto
                            .as_ref()
                            .is_some_and(|l| l.suite == remote_key.suite);
                    let local = match (&self.local_crypto, keep) {
                        (Some(l), true) => l.clone(),
                        _ => CryptoAttr::random(remote_key.tag, remote_key.suite)
                            .map_err(|e| e.to_string())?,
                    };
                    media.push(format!("crypto:{}", local.to_attr_value()));
                    self.local_crypto = Some(local.clone());
                    self.remote_crypto = Some(remote_key.clone());
                    self.dtls_client = None;
                    LegCrypto::Sdes {
                        local,
                        remote: remote_key,
                    }
                }
                None if is_sdes(proto) => {
                    if policy == MediaSecurity::Rtp {
                        return refuse(&format!("SRTP ({proto})"));
                    }
                    let offered: Vec<&str> = remote
                        .crypto
                        .iter()
                        .filter_map(|c| c.split_ascii_whitespace().nth(1))
                        .collect();
                    return Err(format!(
                        "no supported SRTP crypto suite offered (offered {}; supported {})",
                        if offered.is_empty() {
                            "none".to_string()
                        } else {
                            offered.join(", ")
                        },
                        supported_suites()
                    ));
                }
                None => {
                    if matches!(
                        policy,
                        MediaSecurity::Sdes | MediaSecurity::Dtls | MediaSecurity::AnySecure
                    ) {
                        return Err(format!(
                            "media security policy {} requires SRTP; plain {proto} offered",
                            policy.as_str()
                        ));
                    }
                    self.local_crypto = None;
                    self.remote_crypto = None;
                    LegCrypto::Plain
                }
            }
        };
        let ice = self.ice_for(remote, fallback, false);
        self.proto = proto.to_string();
        // An answer carries ICE only when ICE runs (RFC 8839 §4.2.1: not to an offer without
        // it, and not between two lite agents).
        if ice.is_some() {
            self.session_attrs = session;
        } else {
            self.session_attrs.clear();
            media.retain(|a| !a.starts_with("ice-") && !a.starts_with("candidate:"));
        }
        self.media_attrs = media;
        Ok(Negotiated { crypto, ice })
    }

    /// Applies the peer's answer to our offer. `Err` fails the call (with BYE).
    pub fn on_answer(
        &mut self,
        proto: &str,
        remote: &SecurityDesc,
        fallback: Option<SocketAddr>,
    ) -> Result<Negotiated, String> {
        let ours = self.proto.clone();
        let crypto = if is_dtls(&ours) {
            if !is_dtls(proto) {
                return Err(format!("answer transport {proto} to a {ours} offer"));
            }
            if remote.fingerprints.is_empty() {
                return Err("DTLS-SRTP answer without a=fingerprint".into());
            }
            // Our offer said actpass: an active answerer is the DTLS client (RFC 5763 §5).
            let client = match remote
                .setup
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("active") | None => false,
                Some("passive") => true,
                Some(other) => return Err(format!("answer a=setup:{other} to our actpass")),
            };
            self.media_attrs.retain(|a| !a.starts_with("setup:"));
            self.media_attrs.push(format!(
                "setup:{}",
                if client { "active" } else { "passive" }
            ));
            self.dtls_client = Some(client);
            LegCrypto::Dtls {
                client,
                fingerprints: remote.fingerprints.clone(),
            }
        } else {
            let answered = remote
                .crypto
                .iter()
                .find_map(|c| CryptoAttr::parse(c).ok().map(|a| (c.clone(), a)));
            let secure_required = ours != "RTP/AVP";
            match answered {
                Some((_, remote_key))
                    if !self.offered.is_empty() || self.local_crypto.is_some() =>
                {
                    let local = self
                        .offered
                        .iter()
                        .find(|k| k.tag == remote_key.tag && k.suite == remote_key.suite)
                        .or(self
                            .local_crypto
                            .as_ref()
                            .filter(|k| k.tag == remote_key.tag && k.suite == remote_key.suite))
                        .cloned()
                        .ok_or_else(|| {
                            format!(
                                "answer a=crypto tag {} {} matches nothing we offered",
                                remote_key.tag,
                                remote_key.suite.name()
                            )
                        })?;
                    if !remote_key.session_params.is_empty() {
                        return Err(format!(
                            "answer a=crypto session parameters {} are not supported",
                            remote_key.session_params.join(" ")
                        ));
                    }
                    // From now on our SDP carries just the chosen key (RFC 4568 §7.1.4).
                    self.media_attrs.retain(|a| !a.starts_with("crypto:"));
                    self.media_attrs
                        .push(format!("crypto:{}", local.to_attr_value()));
                    self.offered = vec![local.clone()];
                    self.local_crypto = Some(local.clone());
                    self.remote_crypto = Some(remote_key.clone());
                    LegCrypto::Sdes {
                        local,
                        remote: remote_key,
                    }
                }
                _ if secure_required => {
                    return Err(format!(
                        "the {proto} answer carries no usable a=crypto for our {ours} offer"
                    ))
                }
                _ => {
                    self.media_attrs.retain(|a| !a.starts_with("crypto:"));
                    self.offered.clear();
                    LegCrypto::Plain
                }
            }
        };
        let ice = self.ice_for(remote, fallback, true);
        if ice.is_none() {
            self.session_attrs.clear();
            self.media_attrs
                .retain(|a| !a.starts_with("ice-") && !a.starts_with("candidate:"));
        }
        Ok(Negotiated { crypto, ice })
    }
}

/// The first offered `a=crypto` riptide can use: a supported suite, inline key, no session
/// parameters (UNENCRYPTED_SRTP and the like are not implemented).
fn pick_crypto(lines: &[String]) -> Option<CryptoAttr> {
    lines
        .iter()
        .filter_map(|l| CryptoAttr::parse(l).ok())
        .find(|a| a.session_params.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "sha-256 AA:BB";

    fn leg(security: MediaSecurity, ice: IceMode) -> LegSecurity {
        LegSecurity::new(
            MediaPolicy {
                security,
                ice,
                latching: true,
                dtmf: DtmfMode::Rfc4733,
            },
            FP,
            "192.0.2.1".parse().unwrap(),
            30000,
        )
    }

    fn key_line(tag: u32, suite: Suite) -> String {
        CryptoAttr::generate(tag, suite, |b| {
            b.fill(7);
            Ok(())
        })
        .unwrap()
        .to_attr_value()
    }

    fn sdes_offer(lines: Vec<String>) -> SecurityDesc {
        SecurityDesc {
            crypto: lines,
            ..Default::default()
        }
    }

    #[test]
    fn sdes_offer_answered_with_a_fresh_key_of_the_same_suite_and_tag() {
        let mut l = leg(MediaSecurity::Sdes, IceMode::Off);
        let offer = sdes_offer(vec![
            "1 F8_128_HMAC_SHA1_80 inline:AAAA".into(),
            key_line(2, Suite::AesCm128HmacSha1_32),
        ]);
        let n = l.answer("RTP/SAVP", &offer, None).unwrap();
        let LegCrypto::Sdes { local, remote } = n.crypto else {
            panic!("{:?}", n.crypto)
        };
        assert_eq!(remote.tag, 2);
        assert_eq!((local.tag, local.suite), (2, Suite::AesCm128HmacSha1_32));
        assert_ne!(local.key_salt, remote.key_salt);
        assert_eq!(l.proto, "RTP/SAVP");
        assert_eq!(
            l.media_attrs,
            vec![format!("crypto:{}", local.to_attr_value())]
        );
    }

    #[test]
    fn unsupported_suites_only_are_refused_with_the_reason() {
        let mut l = leg(MediaSecurity::BestEffort, IceMode::Off);
        let err = l
            .answer(
                "RTP/SAVP",
                &sdes_offer(vec!["1 F8_128_HMAC_SHA1_80 inline:AAAA".into()]),
                None,
            )
            .unwrap_err();
        assert!(err.contains("no supported SRTP crypto suite"), "{err}");
        assert!(err.contains("F8_128_HMAC_SHA1_80"), "{err}");
    }

    #[test]
    fn policy_table() {
        let plain = SecurityDesc::default();
        let sdes = sdes_offer(vec![key_line(1, Suite::AesCm128HmacSha1_80)]);
        let dtls = SecurityDesc {
            fingerprints: vec!["sha-256 01:02".into()],
            setup: Some("actpass".into()),
            ..Default::default()
        };
        use MediaSecurity::*;
        // (policy, proto, desc, accepted label)
        let cases: [(MediaSecurity, &str, &SecurityDesc, Option<&str>); 15] = [
            (Rtp, "RTP/AVP", &plain, Some("rtp")),
            (Rtp, "RTP/AVP", &sdes, Some("rtp")),
            (Rtp, "RTP/SAVP", &sdes, None),
            (Rtp, "UDP/TLS/RTP/SAVPF", &dtls, None),
            (Sdes, "RTP/AVP", &plain, None),
            (Sdes, "RTP/SAVP", &sdes, Some("sdes")),
            (Sdes, "UDP/TLS/RTP/SAVPF", &dtls, None),
            (Dtls, "RTP/SAVP", &sdes, None),
            (Dtls, "UDP/TLS/RTP/SAVPF", &dtls, Some("dtls")),
            (AnySecure, "RTP/AVP", &plain, None),
            (AnySecure, "RTP/SAVPF", &sdes, Some("sdes")),
            (AnySecure, "UDP/TLS/RTP/SAVP", &dtls, Some("dtls")),
            (BestEffort, "RTP/AVP", &plain, Some("rtp")),
            (BestEffort, "RTP/AVP", &sdes, Some("sdes")),
            (BestEffort, "UDP/TLS/RTP/SAVPF", &dtls, Some("dtls")),
        ];
        for (policy, proto, desc, want) in cases {
            let got = leg(policy, IceMode::Off).answer(proto, desc, None);
            match (want, got) {
                (Some(label), Ok(n)) => assert_eq!(n.crypto.label(), label, "{policy:?} {proto}"),
                (None, Err(why)) => assert!(!why.is_empty()),
                (w, g) => panic!("{policy:?} {proto}: want {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn dtls_roles_follow_rfc_5763() {
        for (setup, client, ours) in [
            (Some("actpass"), true, "setup:active"),
            (Some("passive"), true, "setup:active"),
            (Some("active"), false, "setup:passive"),
            (None, false, "setup:passive"),
        ] {
            let mut l = leg(MediaSecurity::Dtls, IceMode::Off);
            let offer = SecurityDesc {
                fingerprints: vec!["sha-256 01:02".into()],
                setup: setup.map(str::to_string),
                ..Default::default()
            };
            let n = l.answer("UDP/TLS/RTP/SAVPF", &offer, None).unwrap();
            assert_eq!(
                n.crypto,
                LegCrypto::Dtls {
                    client,
                    fingerprints: vec!["sha-256 01:02".into()]
                }
            );
            assert!(l.media_attrs.contains(&ours.to_string()));
            assert!(l.media_attrs.contains(&format!("fingerprint:{FP}")));
        }
        let mut l = leg(MediaSecurity::Dtls, IceMode::Off);
        let hold = SecurityDesc {
            fingerprints: vec!["sha-256 01:02".into()],
            setup: Some("holdconn".into()),
            ..Default::default()
        };
        assert!(l.answer("UDP/TLS/RTP/SAVP", &hold, None).is_err());
        let nofp = SecurityDesc::default();
        assert!(l.answer("UDP/TLS/RTP/SAVP", &nofp, None).is_err());
    }

    #[test]
    fn our_sdes_offer_settles_on_the_answered_tag() {
        let mut l = leg(MediaSecurity::Sdes, IceMode::Off);
        l.offer().unwrap();
        assert_eq!(l.proto, "RTP/SAVP");
        assert_eq!(l.offered.len(), Suite::ALL.len());
        assert_eq!(
            (l.offered[0].tag, l.offered[0].suite),
            (1, Suite::AesCm128HmacSha1_80),
            "the suite everyone has is tag 1"
        );
        let ours = l.offered[1].clone();
        let answer = sdes_offer(vec![key_line(ours.tag, ours.suite)]);
        let n = l.on_answer("RTP/SAVP", &answer, None).unwrap();
        let LegCrypto::Sdes { local, .. } = n.crypto else {
            panic!()
        };
        assert_eq!(local, ours);
        assert_eq!(
            l.media_attrs,
            vec![format!("crypto:{}", ours.to_attr_value())]
        );
        // An answer without keys to an SAVP offer fails the call.
        let mut l = leg(MediaSecurity::Sdes, IceMode::Off);
        l.offer().unwrap();
        assert!(l
            .on_answer("RTP/SAVP", &SecurityDesc::default(), None)
            .is_err());
        // Best effort: a plain answer is plain RTP.
        let mut l = leg(MediaSecurity::BestEffort, IceMode::Off);
        l.offer().unwrap();
        assert_eq!(l.proto, "RTP/AVP");
        let n = l
            .on_answer("RTP/AVP", &SecurityDesc::default(), None)
            .unwrap();
        assert_eq!(n.crypto, LegCrypto::Plain);
        assert!(l.media_attrs.is_empty());
    }

    #[test]
    fn a_reoffer_with_the_same_key_keeps_ours_and_a_new_key_rekeys() {
        let mut l = leg(MediaSecurity::Sdes, IceMode::Off);
        let first = sdes_offer(vec![key_line(1, Suite::AesCm128HmacSha1_80)]);
        let a = l.answer("RTP/SAVP", &first, None).unwrap();
        let b = l.answer("RTP/SAVP", &first, None).unwrap();
        assert_eq!(a, b);
        let rekey = sdes_offer(vec![CryptoAttr::generate(
            1,
            Suite::AesCm128HmacSha1_80,
            |b| {
                b.fill(9);
                Ok(())
            },
        )
        .unwrap()
        .to_attr_value()]);
        let c = l.answer("RTP/SAVP", &rekey, None).unwrap();
        let (LegCrypto::Sdes { local: la, .. }, LegCrypto::Sdes { local: lc, .. }) =
            (a.crypto, c.crypto)
        else {
            panic!()
        };
        assert_ne!(la.key_salt, lc.key_salt);
    }

    #[test]
    fn ice_roles_and_candidates() {
        let remote = SecurityDesc {
            ice_ufrag: Some("uf".into()),
            ice_pwd: Some("pw".into()),
            candidates: vec!["127.0.0.2:4000".parse().unwrap()],
            ..Default::default()
        };
        let mut lite = leg(MediaSecurity::Rtp, IceMode::Lite);
        let n = lite.answer("RTP/AVP", &remote, None).unwrap();
        let ice = n.ice.unwrap();
        assert!(ice.lite && !ice.controlling);
        assert_eq!(ice.remote_candidates, remote.candidates);
        assert_eq!(lite.session_attrs, vec!["ice-lite".to_string()]);
        assert!(lite
            .media_attrs
            .iter()
            .any(|a| a == "candidate:1 1 UDP 2130706431 192.0.2.1 30000 typ host"));
        // Full answerer to a full offerer is controlled; to a lite one, controlling.
        let mut full = leg(MediaSecurity::Rtp, IceMode::Full);
        let n = full.answer("RTP/AVP", &remote, None).unwrap();
        assert!(!n.ice.unwrap().controlling);
        let lite_remote = SecurityDesc {
            ice_lite: true,
            ..remote.clone()
        };
        let n = full.answer("RTP/AVP", &lite_remote, None).unwrap();
        assert!(n.ice.unwrap().controlling);
        // Two lite agents: no ICE, and our answer says nothing of it.
        let mut lite = leg(MediaSecurity::Rtp, IceMode::Lite);
        let n = lite.answer("RTP/AVP", &lite_remote, None).unwrap();
        assert!(n.ice.is_none());
        assert!(lite.session_attrs.is_empty() && lite.media_attrs.is_empty());
        // A peer without ICE: none, and no candidates toward it.
        let mut off = leg(MediaSecurity::Rtp, IceMode::Lite);
        let n = off
            .answer("RTP/AVP", &SecurityDesc::default(), None)
            .unwrap();
        assert!(n.ice.is_none());
        assert!(off.session_attrs.is_empty() && off.media_attrs.is_empty());
        // Full offerer is controlling.
        let mut full = leg(MediaSecurity::Rtp, IceMode::Full);
        full.offer().unwrap();
        let n = full.on_answer("RTP/AVP", &remote, None).unwrap();
        assert!(n.ice.unwrap().controlling);
    }

    #[test]
    fn ice_credentials_use_the_ice_character_set() {
        let l = leg(MediaSecurity::Rtp, IceMode::Lite);
        assert_eq!(l.ice_ufrag.len(), 8);
        assert_eq!(l.ice_pwd.len(), 24);
        assert!(l
            .ice_pwd
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'));
    }
}
