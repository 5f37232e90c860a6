//! Bearer-token authentication for the HTTP/3 side.
//!
//! The seam for the later OAuth work is [`TokenVerifier`]: the HTTP/3 server only ever asks a
//! verifier whether a bearer token is good. [`LocalIssuer`] is the built-in issuer and verifier.

/// Who made a request, as established by its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub scopes: Vec<String>,
}

/// Why a bearer token was refused; rendered as RFC 6750 `401` with `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
}

pub trait TokenVerifier: Send + Sync + 'static {
    /// `bearer` is the token text after `Bearer `; `now_unix` is seconds since the epoch.
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError>;
}

use crate::tls::{create_private_dir, hex, write_private};
use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `iss` of every token the local issuer mints.
pub const LOCAL_ISSUER: &str = "riptide-local";
/// Clock skew tolerated on `exp` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 60;
/// Tokens longer than this are refused before any decoding, so a hostile header cannot make us
/// allocate much.
const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The gateway's built-in token issuer: an ES256 key in the data directory that mints access
/// tokens (`riptide token mint`) and verifies them on the HTTP/3 side.
pub struct LocalIssuer {
    key: EcdsaKeyPair,
    public_key: Vec<u8>,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for LocalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("LocalIssuer")
            .field("kid", &self.kid)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    #[serde(default)]
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
}

impl LocalIssuer {
    /// Loads `data_dir/issuer.pk8`, creating the directory (0700) and the key (0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<LocalIssuer> {
        let path = data_dir.join("issuer.pk8");
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = if path.exists() {
            std::fs::read(&path)
                .with_context(|| format!("{}: cannot read issuer key", path.display()))?
        } else {
            create_private_dir(data_dir)?;
            let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng)
                .map_err(|_| anyhow::anyhow!("generating the issuer key failed"))?;
            write_private(&path, doc.as_ref())?;
            doc.as_ref().to_vec()
        };
        let key = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &rng).map_err(|e| {
            anyhow::anyhow!(
                "{}: not a PKCS#8 ECDSA P-256 key ({e}); remove it to generate a new one \
                 (tokens minted with it stop working)",
                path.display()
            )
        })?;
        let public_key = key.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public_key);
        let kid = hex(&digest.as_ref()[..8]);
        Ok(LocalIssuer {
            key,
            public_key,
            kid,
            rng,
        })
    }

    /// Key id put in every token header: the first 16 hex digits of SHA-256 of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Mints a compact-JWS access token. Fails only if the system RNG fails.
    pub fn mint(
        &self,
        subject: &str,
        scopes: &[String],
        ttl_secs: u64,
        now_unix: u64,
    ) -> anyhow::Result<String> {
        let mut jti = [0u8; 16];
        self.rng
            .fill(&mut jti)
            .map_err(|_| anyhow::anyhow!("system random number generator failed"))?;
        let header = Header {
            alg: "ES256".into(),
            typ: Some("at+jwt".into()),
            kid: Some(self.kid.clone()),
        };
        let claims = Claims {
            iss: LOCAL_ISSUER.into(),
            sub: subject.into(),
            scope: scopes.join(" "),
            iat: now_unix,
            exp: now_unix.saturating_add(ttl_secs),
            jti: hex(&jti),
        };
        let signing_input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header)?),
            B64.encode(serde_json::to_vec(&claims)?)
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing the token failed"))?;
        Ok(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }
}

fn invalid(why: impl Into<String>) -> AuthError {
    AuthError::Invalid(why.into())
}

impl TokenVerifier for LocalIssuer {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        let bearer = bearer.trim();
        if bearer.is_empty() {
            return Err(AuthError::Missing);
        }
        if bearer.len() > MAX_TOKEN_LEN {
            return Err(invalid("token too long"));
        }
        let mut parts = bearer.split('.');
        let (Some(h64), Some(c64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(
                "not a compact JWS (expected three dot-separated parts)",
            ));
        };
        let header: Header = B64
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("malformed header"))?;
        // Only ES256: accepting the header's choice would allow `none` or algorithm confusion.
        if header.alg != "ES256" {
            return Err(invalid(format!("algorithm {} not accepted", header.alg)));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(invalid("unknown key id"));
        }
        if let Some(typ) = &header.typ {
            if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("jwt") {
                return Err(invalid(format!("token type {typ} not accepted")));
            }
        }
        let sig = B64
            .decode(s64)
            .map_err(|_| invalid("malformed signature"))?;
        let signing_input = &bearer[..h64.len() + 1 + c64.len()];
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.public_key)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| invalid("bad signature"))?;
        // Claims are only looked at once the signature shows they are ours.
        let claims: Claims = B64
            .decode(c64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("malformed claims"))?;
        if claims.iss != LOCAL_ISSUER {
            return Err(invalid("unknown issuer"));
        }
        if claims.iat > now_unix.saturating_add(LEEWAY_SECS) {
            return Err(invalid("issued in the future"));
        }
        if now_unix > claims.exp.saturating_add(LEEWAY_SECS) {
            return Err(AuthError::Expired);
        }
        if claims.sub.is_empty() {
            return Err(invalid("empty subject"));
        }
        Ok(Principal {
            subject: claims.sub,
            scopes: claims
                .scope
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }
}

/// The `WWW-Authenticate` value for a refused request (RFC 6750 §3).
pub fn www_authenticate(err: &AuthError) -> String {
    let description = match err {
        // RFC 6750 §3.1: a request without credentials gets no error code.
        AuthError::Missing => return r#"Bearer realm="riptide""#.to_string(),
        AuthError::Invalid(why) => why.as_str(),
        AuthError::Expired => "token expired",
    };
    // error_description is a quoted-string limited to printable ASCII without `"` and `\`.
    let clean: String = description
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || !(' '..='~').contains(&c) {
                '\''
            } else {
                c
            }
        })
        .collect();
    format!(r#"Bearer realm="riptide", error="invalid_token", error_description="{clean}""#)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn issuer(tag: &str) -> (LocalIssuer, std::path::PathBuf) {
        let d = std::env::temp_dir().join(format!(
            "riptide-auth-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        (LocalIssuer::load_or_create(&d).unwrap(), d)
    }

    fn scopes() -> Vec<String> {
        vec!["calls:write".into(), "tgs:read".into()]
    }

    #[test]
    fn round_trip_and_key_persists() {
        let (iss, dir) = issuer("rt");
        let tok = iss.mint("alice", &scopes(), 3600, NOW).unwrap();
        let p = iss.verify(&tok, NOW + 10).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.scopes, scopes());
        assert_eq!(iss.kid().len(), 16);
        let again = LocalIssuer::load_or_create(&dir).unwrap();
        assert_eq!(again.kid(), iss.kid());
        assert_eq!(again.verify(&tok, NOW).unwrap().subject, "alice");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("issuer.pk8"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let (iss, dir) = issuer("tamper");
        let tok = iss.mint("alice", &scopes(), 3600, NOW).unwrap();
        let parts: Vec<&str> = tok.split('.').collect();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        claims["sub"] = "mallory".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&claims).unwrap()),
            parts[2]
        );
        assert_eq!(
            iss.verify(&forged, NOW),
            Err(AuthError::Invalid("bad signature".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn token_of_another_key_is_rejected() {
        let (a, da) = issuer("ka");
        let (b, db) = issuer("kb");
        let tok = a.mint("alice", &scopes(), 3600, NOW).unwrap();
        assert_eq!(
            b.verify(&tok, NOW),
            Err(AuthError::Invalid("unknown key id".into()))
        );
        // Same kid but another key's signature: the signature check still catches it.
        let parts: Vec<&str> = tok.split('.').collect();
        let mut header: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
        header["kid"] = b.kid().into();
        let relabelled = format!(
            "{}.{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            parts[1],
            parts[2]
        );
        assert_eq!(
            b.verify(&relabelled, NOW),
            Err(AuthError::Invalid("bad signature".into()))
        );
        let _ = std::fs::remove_dir_all(da);
        let _ = std::fs::remove_dir_all(db);
    }

    #[test]
    fn expiry_honours_leeway() {
        let (iss, dir) = issuer("exp");
        let tok = iss.mint("alice", &scopes(), 100, NOW).unwrap();
        assert!(iss.verify(&tok, NOW + 100 + LEEWAY_SECS).is_ok());
        assert_eq!(
            iss.verify(&tok, NOW + 101 + LEEWAY_SECS),
            Err(AuthError::Expired)
        );
        assert_eq!(
            iss.verify(&tok, NOW - LEEWAY_SECS - 1),
            Err(AuthError::Invalid("issued in the future".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn alg_none_is_rejected() {
        let (iss, dir) = issuer("none");
        let tok = iss.mint("alice", &scopes(), 3600, NOW).unwrap();
        let parts: Vec<&str> = tok.split('.').collect();
        let header = format!(r#"{{"alg":"none","typ":"at+jwt","kid":"{}"}}"#, iss.kid());
        let unsigned = format!("{}.{}.", B64.encode(header), parts[1]);
        assert_eq!(
            iss.verify(&unsigned, NOW),
            Err(AuthError::Invalid("algorithm none not accepted".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let (iss, dir) = issuer("garbage");
        for g in [
            "x",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "....",
            "é.é.é",
            "e30.e30.e30",
        ] {
            assert!(
                matches!(iss.verify(g, NOW), Err(AuthError::Invalid(_))),
                "{g}"
            );
        }
        assert_eq!(iss.verify("  ", NOW), Err(AuthError::Missing));
        assert_eq!(
            iss.verify(&"a".repeat(MAX_TOKEN_LEN + 1), NOW),
            Err(AuthError::Invalid("token too long".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn corrupt_key_file_is_a_clear_error() {
        let d = std::env::temp_dir().join(format!(
            "riptide-auth-corrupt-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("issuer.pk8"), b"junk").unwrap();
        let err = LocalIssuer::load_or_create(&d).unwrap_err().to_string();
        assert!(
            err.contains("issuer.pk8") && err.contains("PKCS#8"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn www_authenticate_follows_rfc6750() {
        assert_eq!(
            www_authenticate(&AuthError::Missing),
            r#"Bearer realm="riptide""#
        );
        assert_eq!(
            www_authenticate(&AuthError::Expired),
            r#"Bearer realm="riptide", error="invalid_token", error_description="token expired""#
        );
        assert_eq!(
            www_authenticate(&AuthError::Invalid("bad \"x\"\n".into())),
            r#"Bearer realm="riptide", error="invalid_token", error_description="bad 'x''""#
        );
    }
}

/// Remembers tokens that verified, for `ttl_secs`, so that a peer that sends the same bearer
/// token on every request (four requests per call) costs one signature check, not four per
/// call. Failures are never cached, so junk tokens cannot fill it; it is cleared when full.
/// A token stays accepted for at most `ttl_secs` after it was last checked, which is inside
/// the issuer's clock leeway.
pub struct CachingVerifier<V> {
    inner: V,
    ttl_secs: u64,
    max: usize,
    cache: std::sync::Mutex<std::collections::HashMap<String, (Principal, u64)>>,
}

impl<V: TokenVerifier> CachingVerifier<V> {
    pub fn new(inner: V, ttl_secs: u64, max: usize) -> Self {
        CachingVerifier {
            inner,
            ttl_secs,
            max: max.max(1),
            cache: Default::default(),
        }
    }
}

impl<V: TokenVerifier> TokenVerifier for CachingVerifier<V> {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((p, at)) = cache.get(bearer) {
                if now_unix >= *at && now_unix < at.saturating_add(self.ttl_secs) {
                    return Ok(p.clone());
                }
            }
        }
        let p = self.inner.verify(bearer, now_unix)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.max {
            cache.clear();
        }
        cache.insert(bearer.to_string(), (p.clone(), now_unix));
        Ok(p)
    }
}

impl<V: TokenVerifier> TokenVerifier for std::sync::Arc<V> {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        (**self).verify(bearer, now_unix)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);
    impl TokenVerifier for Counting {
        fn verify(&self, bearer: &str, _now: u64) -> Result<Principal, AuthError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            if bearer == "good" {
                Ok(Principal {
                    subject: "peer".into(),
                    scopes: vec![],
                })
            } else {
                Err(AuthError::Invalid("bad".into()))
            }
        }
    }

    #[test]
    fn good_tokens_are_checked_once_per_ttl_and_failures_every_time() {
        let v = CachingVerifier::new(Counting(AtomicUsize::new(0)), 30, 16);
        for _ in 0..4 {
            assert!(v.verify("good", 1000).is_ok());
        }
        assert_eq!(v.inner.0.load(Ordering::Relaxed), 1);
        assert!(v.verify("good", 1030).is_ok(), "re-checked after the TTL");
        assert_eq!(v.inner.0.load(Ordering::Relaxed), 2);
        for _ in 0..3 {
            assert!(v.verify("bad", 1030).is_err());
        }
        assert_eq!(
            v.inner.0.load(Ordering::Relaxed),
            5,
            "failures are not cached"
        );
    }
}
