//! Bearer-token authentication for the HTTP/3 side.
//!
//! The HTTP/3 server only ever asks a [`TokenVerifier`] whether a bearer token is good, through
//! [`TokenVerifier::verify_async`], which is ready at once when no I/O is needed. `[oauth] mode`
//! picks the verifier ([`verifier_from_config`]):
//! - `local`: [`LocalIssuer`], the built-in ES256 issuer and verifier (no I/O);
//! - `jwks`: [`JwksVerifier`], RFC 9068 JWT access tokens of an external authorization server,
//!   checked with the keys of its JWK Set, fetched over HTTPS;
//! - `introspection`: [`IntrospectionVerifier`], RFC 7662 token introspection at the
//!   authorization server.
//!
//! Only the configured mode's tokens are accepted. Every URL is fetched through
//! [`crate::stir::fetch::GuardedClient`] (https only, SSRF guard, deadline, body cap, no
//! redirects).

mod introspection;
mod jwks;

pub use introspection::{IntrospectionSettings, IntrospectionVerifier};
pub use jwks::{JwksSettings, JwksVerifier};

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
    /// A good token without the scope this request needs: RFC 6750 §3.1 `403`.
    #[error("insufficient scope: {0} required")]
    InsufficientScope(String),
    /// The token could not be checked because the authorization server (its JWK Set or its
    /// introspection endpoint) is unreachable or answered nonsense. The request fails closed
    /// with `503` and `Retry-After`: the token is not known to be bad, so no `invalid_token`.
    /// `reason` is for logs; the message shown to clients does not name the issuer's address.
    #[error("the authorization server is unavailable, retry later")]
    Unavailable {
        reason: String,
        retry_after_secs: u64,
    },
}

impl AuthError {
    /// The HTTP status this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::InsufficientScope(_) => 403,
            AuthError::Unavailable { .. } => 503,
            _ => 401,
        }
    }

    /// Seconds for `Retry-After` when the refusal is temporary (`503`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            AuthError::Unavailable {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }

    fn unavailable(reason: impl Into<String>, retry_after_secs: u64) -> AuthError {
        AuthError::Unavailable {
            reason: reason.into(),
            retry_after_secs,
        }
    }
}

/// `Ok` when `p` holds `scope` (RFC 6749 §3.3 space-separated scopes, compared exactly).
pub fn require_scope(p: &Principal, scope: &str) -> Result<(), AuthError> {
    if p.scopes.iter().any(|s| s == scope) {
        Ok(())
    } else {
        Err(AuthError::InsufficientScope(scope.to_string()))
    }
}

pub trait TokenVerifier: Send + Sync + 'static {
    /// Checks `bearer` (the token text after `Bearer `) at `now_unix` (seconds since the epoch)
    /// with what the verifier already holds, without any I/O: an external verifier answers
    /// from its cached keys or introspection answers only.
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError>;

    /// The check the HTTP/3 server makes: like [`TokenVerifier::verify`], but it may fetch a
    /// JWK Set or ask an introspection endpoint. Ready at once (no allocation, no task) when
    /// no I/O is needed, which is always the case for the local issuer. Must be polled inside
    /// a tokio runtime.
    fn verify_async<'a>(&'a self, bearer: &'a str, now_unix: u64) -> Verification<'a> {
        Verification::ready(self.verify(bearer, now_unix))
    }
}

type BoxedCheck<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Principal, AuthError>> + Send + 'a>>;

/// The outcome of [`TokenVerifier::verify_async`]: a future that is either ready at once
/// (a cache hit, the local issuer) or a boxed check waiting for the network.
#[must_use = "a verification does nothing unless awaited"]
pub struct Verification<'a>(Step<'a>);

enum Step<'a> {
    Ready(Option<Result<Principal, AuthError>>),
    Pending(BoxedCheck<'a>),
}

impl<'a> Verification<'a> {
    pub fn ready(result: Result<Principal, AuthError>) -> Verification<'a> {
        Verification(Step::Ready(Some(result)))
    }

    pub fn pending(
        check: impl std::future::Future<Output = Result<Principal, AuthError>> + Send + 'a,
    ) -> Verification<'a> {
        Verification(Step::Pending(Box::pin(check)))
    }

    /// Whether the outcome is known without waiting.
    pub fn is_ready(&self) -> bool {
        matches!(self.0, Step::Ready(_))
    }

    /// Applies `f` to the outcome; a ready verification stays ready (nothing is allocated).
    pub fn map(
        self,
        f: impl FnOnce(Result<Principal, AuthError>) -> Result<Principal, AuthError> + Send + 'a,
    ) -> Verification<'a> {
        match self.0 {
            Step::Ready(Some(r)) => Verification::ready(f(r)),
            Step::Ready(None) => self,
            Step::Pending(check) => Verification::pending(async move { f(check.await) }),
        }
    }
}

impl std::future::Future for Verification<'_> {
    type Output = Result<Principal, AuthError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.0 {
            Step::Ready(r) => {
                std::task::Poll::Ready(r.take().expect("Verification polled after completion"))
            }
            Step::Pending(check) => check.as_mut().poll(cx),
        }
    }
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
/// `aud` of every token the local issuer mints and the audience its verifier requires
/// (RFC 9068 §4: a token for another resource server is refused).
pub const LOCAL_AUDIENCE: &str = "riptide";
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
    /// Where the keys live: after `riptide token rotate-key` the running gateway learns the
    /// new key and the retired ones from here.
    dir: std::path::PathBuf,
    /// Other verification keys by kid: the current key on disk when it is not ours any more,
    /// and retired keys with the time (unix) until which their tokens are accepted.
    others: std::sync::RwLock<OtherKeys>,
}

#[derive(Default)]
struct OtherKeys {
    keys: std::collections::HashMap<String, (Vec<u8>, Option<u64>)>,
    loaded: Option<std::time::Instant>,
}

/// A retired key in `issuer-retired.json`: its public point and until when it verifies.
#[derive(Serialize, Deserialize, Clone)]
struct RetiredKey {
    kid: String,
    /// base64url of the uncompressed P-256 point.
    public_key: String,
    until: u64,
}

const RETIRED_FILE: &str = "issuer-retired.json";
/// How often an unknown kid may make the issuer re-read its key files.
const KEY_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn kid_of(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex(&digest.as_ref()[..8])
}

fn read_retired(dir: &Path) -> anyhow::Result<Vec<RetiredKey>> {
    let path = dir.join(RETIRED_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}: not a list of retired keys", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
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
    /// RFC 9068 §2.2: required; a string or an array of strings.
    #[serde(default)]
    aud: Audience,
    sub: String,
    #[serde(default)]
    scope: String,
    iat: u64,
    exp: u64,
    jti: String,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::None => false,
            Audience::One(a) => a == aud,
            Audience::Many(v) => v.iter().any(|a| a == aud),
        }
    }
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
        let kid = kid_of(&public_key);
        let issuer = LocalIssuer {
            key,
            public_key,
            kid,
            rng,
            dir: data_dir.to_path_buf(),
            others: Default::default(),
        };
        issuer.reload_others()?;
        Ok(issuer)
    }

    /// Re-reads the current key's public half and the retired keys from disk.
    fn reload_others(&self) -> anyhow::Result<()> {
        let mut keys = std::collections::HashMap::new();
        for r in read_retired(&self.dir)? {
            if let Ok(pk) = B64.decode(&r.public_key) {
                keys.insert(r.kid, (pk, Some(r.until)));
            }
        }
        if let Ok(pkcs8) = std::fs::read(self.dir.join("issuer.pk8")) {
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            if let Ok(k) = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, &self.rng) {
                let pk = k.public_key().as_ref().to_vec();
                keys.insert(kid_of(&pk), (pk, None));
            }
        }
        // Our own key is "other" only once it is retired (then its overlap applies to us too).
        if keys
            .get(&self.kid)
            .is_some_and(|(_, until)| until.is_none())
        {
            keys.remove(&self.kid);
        }
        let mut o = self.others.write().unwrap_or_else(|p| p.into_inner());
        o.keys = keys;
        o.loaded = Some(std::time::Instant::now());
        Ok(())
    }

    /// The public key for `kid` that may verify a token at `now_unix`, re-reading the key files
    /// (at most once a second) when the kid is unknown.
    fn verification_key(&self, kid: &str, now_unix: u64) -> Option<Vec<u8>> {
        let lookup = |o: &OtherKeys| {
            o.keys.get(kid).and_then(|(pk, until)| {
                until
                    .is_none_or(|u| now_unix <= u.saturating_add(LEEWAY_SECS))
                    .then(|| pk.clone())
            })
        };
        {
            let o = self.others.read().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = lookup(&o) {
                return Some(k);
            }
            if kid == self.kid {
                // Ours, unless the files say it was retired and its overlap is over.
                return (!o.keys.contains_key(kid)).then(|| self.public_key.clone());
            }
            if o.loaded.is_some_and(|t| t.elapsed() < KEY_RELOAD_EVERY) {
                return None;
            }
        }
        if let Err(e) = self.reload_others() {
            tracing::error!(error = %e, "issuer keys unreadable");
        }
        lookup(&self.others.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Key rotation (`riptide token rotate-key`): a new current key; the old one keeps
    /// verifying the tokens it signed for `overlap_secs` (give it the longest token lifetime).
    /// Returns the new kid. A running gateway picks the change up by itself.
    pub fn rotate(data_dir: &Path, overlap_secs: u64, now_unix: u64) -> anyhow::Result<String> {
        let old = LocalIssuer::load_or_create(data_dir)?;
        let mut retired: Vec<RetiredKey> = read_retired(data_dir)?
            .into_iter()
            .filter(|r| r.until.saturating_add(LEEWAY_SECS) >= now_unix)
            .collect();
        retired.push(RetiredKey {
            kid: old.kid.clone(),
            public_key: B64.encode(&old.public_key),
            until: now_unix.saturating_add(overlap_secs),
        });
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating the issuer key failed"))?;
        // The retired list first: a reader never sees the new key without the old one.
        let tmp = data_dir.join(format!("{RETIRED_FILE}.tmp"));
        write_private(&tmp, &serde_json::to_vec_pretty(&retired)?)?;
        std::fs::rename(&tmp, data_dir.join(RETIRED_FILE))?;
        let tmp = data_dir.join("issuer.pk8.tmp");
        write_private(&tmp, doc.as_ref())?;
        std::fs::rename(&tmp, data_dir.join("issuer.pk8"))?;
        Ok(LocalIssuer::load_or_create(data_dir)?.kid)
    }

    /// Key id put in every token header: the first 16 hex digits of SHA-256 of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWK Set (RFC 7517) a resource server needs to verify our tokens at `now_unix`, for
    /// `/.well-known/jwks.json`: the current key and the retired keys still in their overlap.
    pub fn jwks_at(&self, now_unix: u64) -> serde_json::Value {
        let jwk = |kid: &str, pk: &[u8]| {
            // ring gives the uncompressed point: 0x04 || X (32) || Y (32).
            let (x, y) = match pk {
                [4, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                _ => (&[][..], &[][..]),
            };
            serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": B64.encode(x),
                "y": B64.encode(y),
                "kid": kid,
                "use": "sig",
                "alg": "ES256",
            })
        };
        if self
            .others
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .loaded
            .is_none_or(|t| t.elapsed() >= KEY_RELOAD_EVERY)
        {
            let _ = self.reload_others();
        }
        let o = self.others.read().unwrap_or_else(|p| p.into_inner());
        let mut keys = Vec::new();
        if !o.keys.contains_key(&self.kid) {
            keys.push(jwk(&self.kid, &self.public_key));
        }
        let mut others: Vec<_> = o.keys.iter().collect();
        others.sort_by(|a, b| a.0.cmp(b.0));
        for (kid, (pk, until)) in others {
            if until.is_none_or(|u| now_unix <= u) {
                keys.push(jwk(kid, pk));
            }
        }
        serde_json::json!({ "keys": keys })
    }

    /// [`LocalIssuer::jwks_at`] now.
    pub fn jwks(&self) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.jwks_at(now)
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
            aud: Audience::One(LOCAL_AUDIENCE.into()),
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

/// A bearer token split as a compact JWS (RFC 7515 §7.1), its protected header decoded and
/// its signature base64url-decoded; nothing verified yet.
struct CompactJws<'t> {
    header: Header,
    /// `BASE64URL(header) "." BASE64URL(claims)`, exactly as received.
    signing_input: &'t str,
    claims_b64: &'t str,
    sig: Vec<u8>,
}

/// Splits `bearer`: empty is [`AuthError::Missing`]; too long, not three parts, or a header or
/// signature that does not decode is `invalid_token`. The access-token `typ` is checked here
/// too (RFC 9068 §4), before any key is looked up.
fn split_compact_jws(bearer: &str) -> Result<CompactJws<'_>, AuthError> {
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
    check_access_token_type(header.typ.as_deref())?;
    let sig = B64
        .decode(s64)
        .map_err(|_| invalid("malformed signature"))?;
    Ok(CompactJws {
        header,
        signing_input: &bearer[..h64.len() + 1 + c64.len()],
        claims_b64: c64,
        sig,
    })
}

impl TokenVerifier for LocalIssuer {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        let CompactJws {
            header,
            signing_input,
            claims_b64,
            sig,
        } = split_compact_jws(bearer)?;
        // Only ES256: accepting the header's choice would allow `none` or algorithm confusion.
        if header.alg != "ES256" {
            return Err(invalid(format!("algorithm {} not accepted", header.alg)));
        }
        let Some(public_key) = header
            .kid
            .as_deref()
            .and_then(|kid| self.verification_key(kid, now_unix))
        else {
            return Err(invalid("unknown key id"));
        };
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &public_key)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| invalid("bad signature"))?;
        // Claims are only looked at once the signature shows they are ours.
        AccessClaims::decode(claims_b64)?.validate(LOCAL_ISSUER, LOCAL_AUDIENCE, now_unix, true)
    }
}

/// The claims riptide checks in an access token (RFC 9068 §2.2) or an introspection answer
/// (RFC 7662 §2.2), all optional here so that a missing one gets its own message.
#[derive(Deserialize, Default)]
struct AccessClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    exp: Option<u64>,
}

impl AccessClaims {
    /// The base64url JSON object of a compact JWS.
    fn decode(c64: &str) -> Result<AccessClaims, AuthError> {
        B64.decode(c64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| invalid("malformed claims"))
    }

    /// The principal, when the claims name `issuer` and `audience`, are inside their validity
    /// (`iat`, `nbf`, `exp` with [`LEEWAY_SECS`]) and name a subject. `jwt` requires `exp` and
    /// `iat` (RFC 9068 §2.2); an introspection answer may leave them out.
    fn validate(
        self,
        issuer: &str,
        audience: &str,
        now_unix: u64,
        jwt: bool,
    ) -> Result<Principal, AuthError> {
        if self.iss.as_deref() != Some(issuer) {
            return Err(invalid("unknown issuer"));
        }
        if !self.aud.contains(audience) {
            return Err(invalid(format!("audience is not {audience}")));
        }
        match self.iat {
            Some(iat) if iat > now_unix.saturating_add(LEEWAY_SECS) => {
                return Err(invalid("issued in the future"))
            }
            None if jwt => return Err(invalid("issued-at (iat) missing")),
            _ => {}
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now_unix.saturating_add(LEEWAY_SECS))
        {
            return Err(invalid("not valid yet (nbf)"));
        }
        match self.exp {
            Some(exp) if now_unix > exp.saturating_add(LEEWAY_SECS) => {
                return Err(AuthError::Expired)
            }
            None if jwt => return Err(invalid("expiry (exp) missing")),
            _ => {}
        }
        let subject = self.sub.unwrap_or_default();
        if subject.is_empty() {
            return Err(invalid("empty subject"));
        }
        Ok(Principal {
            subject,
            scopes: self
                .scope
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        })
    }
}

/// RFC 9068 §4: an access token says so in `typ`; an ID token, a PASSporT or an untyped JWT is
/// not one, whatever it carries.
fn check_access_token_type(typ: Option<&str>) -> Result<(), AuthError> {
    match typ {
        Some(t)
            if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") =>
        {
            Ok(())
        }
        Some(t) => Err(invalid(format!("token type {t} is not at+jwt"))),
        None => Err(invalid("token type missing (at+jwt required)")),
    }
}

/// The `WWW-Authenticate` value for a refused request (RFC 6750 §3).
pub fn www_authenticate(err: &AuthError) -> String {
    let description = match err {
        // RFC 6750 §3.1: a request without credentials gets no error code.
        AuthError::Missing => return r#"Bearer realm="riptide""#.to_string(),
        AuthError::InsufficientScope(scope) => {
            return format!(
                r#"Bearer realm="riptide", error="insufficient_scope", scope="{}""#,
                scope.replace(['"', '\\'], "")
            )
        }
        // A 503: the token was not judged, so no error code (the server sends Retry-After).
        AuthError::Unavailable { .. } => return r#"Bearer realm="riptide""#.to_string(),
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

    /// Re-signs `claims`/`header` edits with the issuer's own key, so only the edited field
    /// can be what the verifier refuses.
    fn resign(iss: &LocalIssuer, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(&claims).unwrap())
        );
        let sig = iss.key.sign(&iss.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn parts(tok: &str) -> (serde_json::Value, serde_json::Value) {
        let p: Vec<&str> = tok.split('.').collect();
        (
            serde_json::from_slice(&B64.decode(p[0]).unwrap()).unwrap(),
            serde_json::from_slice(&B64.decode(p[1]).unwrap()).unwrap(),
        )
    }

    #[test]
    fn only_access_tokens_for_this_audience_pass() {
        let (iss, dir) = issuer("aud");
        let tok = iss.mint("alice", &scopes(), 3600, NOW).unwrap();
        let (h, c) = parts(&tok);
        assert_eq!(c["aud"], "riptide");
        assert_eq!(h["typ"], "at+jwt");
        // Re-signed as is, it passes: the edits below are what is refused.
        assert!(iss.verify(&resign(&iss, h.clone(), c.clone()), NOW).is_ok());
        let cases: Vec<(serde_json::Value, serde_json::Value, &str)> = vec![
            (
                h.clone(),
                {
                    let mut c = c.clone();
                    c["aud"] = "other-api".into();
                    c
                },
                "audience",
            ),
            (
                h.clone(),
                {
                    let mut c = c.clone();
                    c.as_object_mut().unwrap().remove("aud");
                    c
                },
                "audience",
            ),
            (
                h.clone(),
                {
                    let mut c = c.clone();
                    c["iss"] = "https://evil.example".into();
                    c
                },
                "issuer",
            ),
            (
                {
                    let mut h = h.clone();
                    h["typ"] = "JWT".into();
                    h
                },
                c.clone(),
                "not at+jwt",
            ),
            (
                {
                    let mut h = h.clone();
                    h["typ"] = "passport".into();
                    h
                },
                c.clone(),
                "not at+jwt",
            ),
            (
                {
                    let mut h = h.clone();
                    h.as_object_mut().unwrap().remove("typ");
                    h
                },
                c.clone(),
                "type missing",
            ),
            (
                {
                    let mut h = h.clone();
                    h["alg"] = "HS256".into();
                    h
                },
                c.clone(),
                "HS256",
            ),
        ];
        for (h, c, why) in cases {
            match iss.verify(&resign(&iss, h.clone(), c.clone()), NOW) {
                Err(AuthError::Invalid(m)) => assert!(m.contains(why), "{why}: {m}"),
                other => panic!("{why}: {other:?} for {h} {c}"),
            }
        }
        // An audience list that names us passes.
        let mut many = c.clone();
        many["aud"] = serde_json::json!(["x", "riptide"]);
        assert!(iss.verify(&resign(&iss, h, many), NOW).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn scopes_are_required_per_request_with_a_403_challenge() {
        let p = Principal {
            subject: "a".into(),
            scopes: vec!["tgs:read".into()],
        };
        assert!(require_scope(&p, "tgs:read").is_ok());
        let e = require_scope(&p, "calls:write").unwrap_err();
        assert_eq!(e.status(), 403);
        assert_eq!(
            www_authenticate(&e),
            r#"Bearer realm="riptide", error="insufficient_scope", scope="calls:write""#
        );
        assert_eq!(AuthError::Missing.status(), 401);
        // Scopes compare exactly: a prefix is not the scope.
        let q = Principal {
            subject: "a".into(),
            scopes: vec!["calls:writer".into()],
        };
        assert!(require_scope(&q, "calls:write").is_err());
    }

    #[test]
    fn the_jwks_key_verifies_our_tokens() {
        let (iss, dir) = issuer("jwks");
        let jwks = iss.jwks();
        let k = &jwks["keys"][0];
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert_eq!(k["kid"], iss.kid());
        let mut point = vec![4u8];
        point.extend(B64.decode(k["x"].as_str().unwrap()).unwrap());
        point.extend(B64.decode(k["y"].as_str().unwrap()).unwrap());
        let tok = iss.mint("alice", &scopes(), 3600, NOW).unwrap();
        let (input, sig) = tok.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(input.as_bytes(), &B64.decode(sig).unwrap())
            .expect("a third party verifies with the published key");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_revoked_token_fails_within_the_reload_interval_and_after_a_restart() {
        let (iss, dir) = issuer("revoke");
        let tok = iss.mint("alice", &scopes(), 3600, NOW).unwrap();
        let other = iss.mint("bob", &scopes(), 3600, NOW).unwrap();
        let v = Revocable::new(CachingVerifier::new(iss, 60, 16), Revocations::open(&dir));
        assert!(v.verify(&tok, NOW).is_ok(), "cached as good");
        let (jti, exp) = token_id(&tok).unwrap();
        Revocations::revoke(&dir, &jti, exp, NOW).unwrap();
        std::thread::sleep(Revocations::RELOAD_EVERY + std::time::Duration::from_millis(50));
        assert_eq!(
            v.verify(&tok, NOW),
            Err(AuthError::Invalid("token revoked".into()))
        );
        assert!(v.verify(&other, NOW).is_ok(), "only that token");
        // A restarted gateway reads the same file.
        let again = Revocable::new(
            LocalIssuer::load_or_create(&dir).unwrap(),
            Revocations::open(&dir),
        );
        assert!(again.verify(&tok, NOW).is_err());
        assert!(again.verify(&other, NOW).is_ok());
        // Expired entries are pruned by the next revocation.
        Revocations::revoke(&dir, "later", NOW + 10_000, exp + LEEWAY_SECS + 1).unwrap();
        let file: std::collections::HashMap<String, u64> =
            serde_json::from_slice(&std::fs::read(dir.join("revoked.json")).unwrap()).unwrap();
        assert!(!file.contains_key(&jti) && file.contains_key("later"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_rotated_key_keeps_verifying_its_tokens_for_the_overlap_only() {
        let (running, dir) = issuer("rotate");
        let old_kid = running.kid().to_string();
        let old = running.mint("alice", &scopes(), 3600, NOW).unwrap();
        let new_kid = LocalIssuer::rotate(&dir, 3600, NOW).unwrap();
        assert_ne!(new_kid, old_kid);
        // The CLI mints with the new key; the running gateway still holds the old one in memory.
        let minter = LocalIssuer::load_or_create(&dir).unwrap();
        assert_eq!(minter.kid(), new_kid);
        let new = minter.mint("bob", &scopes(), 3600, NOW).unwrap();
        std::thread::sleep(KEY_RELOAD_EVERY);
        for v in [&running, &minter] {
            assert!(
                v.verify(&old, NOW + 10).is_ok(),
                "old token inside the overlap"
            );
            assert!(v.verify(&new, NOW + 10).is_ok(), "new token, new kid");
            // After the overlap (and the leeway) the old key verifies nothing.
            assert_eq!(
                v.verify(&old, NOW + 3600 + LEEWAY_SECS + 1),
                Err(AuthError::Invalid("unknown key id".into()))
            );
            assert!(v.verify(&new, NOW + 3600).is_ok());
            let kids = |now| -> Vec<String> {
                v.jwks_at(now)["keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k["kid"].as_str().unwrap().to_string())
                    .collect()
            };
            let during = kids(NOW + 10);
            assert!(
                during.contains(&old_kid) && during.contains(&new_kid),
                "{during:?}"
            );
            let after = kids(NOW + 3601);
            assert!(
                !after.contains(&old_kid) && after.contains(&new_kid),
                "{after:?}"
            );
        }
        // A second rotation keeps the first retired key only while it is in its overlap.
        LocalIssuer::rotate(&dir, 3600, NOW + 7200).unwrap();
        let retired: Vec<RetiredKey> = read_retired(&dir).unwrap();
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].kid, new_kid);
        let _ = std::fs::remove_dir_all(dir);
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
        let down = AuthError::unavailable("connect refused", 5);
        assert_eq!((down.status(), down.retry_after()), (503, Some(5)));
        assert_eq!(www_authenticate(&down), r#"Bearer realm="riptide""#);
        assert_eq!(AuthError::Expired.retry_after(), None);
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

impl<V> CachingVerifier<V> {
    fn cached(&self, bearer: &str, now_unix: u64) -> Option<Principal> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let (p, at) = cache.get(bearer)?;
        (now_unix >= *at && now_unix < at.saturating_add(self.ttl_secs)).then(|| p.clone())
    }

    fn remember(
        &self,
        bearer: &str,
        now_unix: u64,
        result: Result<Principal, AuthError>,
    ) -> Result<Principal, AuthError> {
        let p = result?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.max {
            cache.clear();
        }
        cache.insert(bearer.to_string(), (p.clone(), now_unix));
        Ok(p)
    }
}

impl<V: TokenVerifier> TokenVerifier for CachingVerifier<V> {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        if let Some(p) = self.cached(bearer, now_unix) {
            return Ok(p);
        }
        self.remember(bearer, now_unix, self.inner.verify(bearer, now_unix))
    }

    fn verify_async<'a>(&'a self, bearer: &'a str, now_unix: u64) -> Verification<'a> {
        if let Some(p) = self.cached(bearer, now_unix) {
            return Verification::ready(Ok(p));
        }
        self.inner
            .verify_async(bearer, now_unix)
            .map(move |r| self.remember(bearer, now_unix, r))
    }
}

impl<V: TokenVerifier> TokenVerifier for std::sync::Arc<V> {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        (**self).verify(bearer, now_unix)
    }

    fn verify_async<'a>(&'a self, bearer: &'a str, now_unix: u64) -> Verification<'a> {
        (**self).verify_async(bearer, now_unix)
    }
}

/// Revoked token ids (`jti`) of the local issuer, in `data_dir/revoked.json` (`{"jti": exp}`),
/// written by `riptide token revoke` and read by the running gateway: a revocation takes effect
/// within [`Revocations::RELOAD_EVERY`] and survives restarts. Entries are dropped once their
/// token has expired anyway.
pub struct Revocations {
    path: std::path::PathBuf,
    state: std::sync::Mutex<RevState>,
}

#[derive(Default)]
struct RevState {
    jtis: std::collections::HashMap<String, u64>,
    mtime: Option<std::time::SystemTime>,
    checked: Option<std::time::Instant>,
}

impl Revocations {
    /// How stale the in-memory list may get before the file is looked at again.
    pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
    const FILE: &'static str = "revoked.json";

    pub fn open(data_dir: &Path) -> Revocations {
        Revocations {
            path: data_dir.join(Self::FILE),
            state: Default::default(),
        }
    }

    fn read(path: &Path) -> anyhow::Result<std::collections::HashMap<String, u64>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{}: not a JSON object of jti -> exp", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }

    /// Adds `jti` (valid until `exp`) to the file, pruning entries expired before `now_unix`.
    /// The file is replaced atomically, so a running gateway never reads half of it.
    pub fn revoke(data_dir: &Path, jti: &str, exp: u64, now_unix: u64) -> anyhow::Result<()> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(Self::FILE);
        let mut all = Self::read(&path)?;
        all.retain(|_, e| e.saturating_add(LEEWAY_SECS) >= now_unix);
        all.insert(jti.to_string(), exp);
        let tmp = data_dir.join(format!("{}.tmp", Self::FILE));
        write_private(&tmp, &serde_json::to_vec_pretty(&all)?)?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("{}: cannot replace", path.display()))?;
        Ok(())
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if st
            .checked
            .is_none_or(|c| now.duration_since(c) >= Self::RELOAD_EVERY)
        {
            st.checked = Some(now);
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != st.mtime {
                match Self::read(&self.path) {
                    Ok(j) => {
                        st.jtis = j;
                        st.mtime = mtime;
                    }
                    // Keep what we had: a broken file must not un-revoke tokens.
                    Err(e) => tracing::error!(error = %e, "revocation list unreadable"),
                }
            }
        }
        st.jtis.contains_key(jti)
    }
}

/// The `jti` and `exp` claims of a compact JWS, without verifying it (for revocation after the
/// signature was checked, and for `riptide token revoke --token`).
pub fn token_id(bearer: &str) -> Option<(String, u64)> {
    let c64 = bearer.trim().split('.').nth(1)?;
    let v: serde_json::Value = serde_json::from_slice(&B64.decode(c64).ok()?).ok()?;
    Some((v.get("jti")?.as_str()?.to_string(), v.get("exp")?.as_u64()?))
}

/// A verifier that also refuses revoked tokens, whatever the inner verifier (or its cache)
/// says.
pub struct Revocable<V> {
    inner: V,
    revocations: Revocations,
}

impl<V: TokenVerifier> Revocable<V> {
    pub fn new(inner: V, revocations: Revocations) -> Self {
        Revocable { inner, revocations }
    }
}

impl<V> Revocable<V> {
    fn unless_revoked(
        &self,
        bearer: &str,
        result: Result<Principal, AuthError>,
    ) -> Result<Principal, AuthError> {
        let p = result?;
        match token_id(bearer) {
            Some((jti, _)) if self.revocations.is_revoked(&jti) => Err(invalid("token revoked")),
            _ => Ok(p),
        }
    }
}

impl<V: TokenVerifier> TokenVerifier for Revocable<V> {
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        self.unless_revoked(bearer, self.inner.verify(bearer, now_unix))
    }

    fn verify_async<'a>(&'a self, bearer: &'a str, now_unix: u64) -> Verification<'a> {
        self.inner
            .verify_async(bearer, now_unix)
            .map(move |r| self.unless_revoked(bearer, r))
    }
}

/// The verifier `[oauth]` asks for, as the HTTP/3 server uses it: revocations (`riptide token
/// revoke`) apply in every mode; good tokens are remembered for 60 s in `local` and `jwks` modes
/// (introspection has its own cache, bounded by the answer's `exp`). `data_dir` holds the
/// revocation list; paths in `cfg` resolve against the configuration file.
pub fn verifier_from_config(
    cfg: &crate::config::Config,
    issuer: std::sync::Arc<LocalIssuer>,
    data_dir: &Path,
) -> anyhow::Result<std::sync::Arc<dyn TokenVerifier>> {
    use crate::config::OAuthMode;
    use std::sync::Arc;
    let oa = &cfg.oauth;
    let revocations = Revocations::open(data_dir);
    if oa.mode == OAuthMode::Local {
        return Ok(Arc::new(Revocable::new(
            CachingVerifier::new(issuer, 60, 4096),
            revocations,
        )));
    }
    let required = |v: &Option<String>, k: &str| {
        v.clone().ok_or_else(|| {
            anyhow::anyhow!("oauth.{k} is required with mode = {:?}", oa.mode.as_str())
        })
    };
    let ca = oa.ca_file.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "oauth.ca_file is required with mode = {:?}",
            oa.mode.as_str()
        )
    })?;
    let mut http = crate::stir::fetch::GuardConfig::from_ca_file(&cfg.resolve_path(ca))
        .context("oauth.ca_file")?;
    http.allowed_hosts = oa.allow_hosts.clone();
    let issuer_name = required(&oa.issuer, "issuer")?;
    if oa.mode == OAuthMode::Jwks {
        let v = JwksVerifier::new(JwksSettings::new(
            required(&oa.jwks_uri, "jwks_uri")?,
            issuer_name,
            oa.audience.clone(),
            http,
        ))
        .context("oauth")?;
        return Ok(Arc::new(Revocable::new(
            CachingVerifier::new(v, 60, 4096),
            revocations,
        )));
    }
    let secret_file = oa.client_secret_file.as_ref().ok_or_else(|| {
        anyhow::anyhow!("oauth.client_secret_file is required with mode = \"introspection\"")
    })?;
    let secret_path = cfg.resolve_path(secret_file);
    let secret = std::fs::read_to_string(&secret_path).with_context(|| {
        format!(
            "oauth.client_secret_file {}: cannot read",
            secret_path.display()
        )
    })?;
    let secret = secret.trim();
    if secret.is_empty() {
        anyhow::bail!(
            "oauth.client_secret_file {}: the file is empty",
            secret_path.display()
        );
    }
    let v = IntrospectionVerifier::new(IntrospectionSettings::new(
        required(&oa.introspection_endpoint, "introspection_endpoint")?,
        required(&oa.client_id, "client_id")?,
        secret,
        issuer_name,
        oa.audience.clone(),
        http,
    ))
    .context("oauth")?;
    Ok(Arc::new(Revocable::new(v, revocations)))
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

    /// A verifier that can only answer after waiting (like an external issuer).
    struct Remote(AtomicUsize);
    impl TokenVerifier for Remote {
        fn verify(&self, _bearer: &str, _now: u64) -> Result<Principal, AuthError> {
            Err(AuthError::Invalid("needs the network".into()))
        }
        fn verify_async<'a>(&'a self, bearer: &'a str, now: u64) -> Verification<'a> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Verification::pending(async move {
                tokio::task::yield_now().await;
                Counting(AtomicUsize::new(0)).verify(bearer, now)
            })
        }
    }

    #[tokio::test]
    async fn answers_that_waited_are_cached_and_cache_hits_are_ready_at_once() {
        let v = CachingVerifier::new(Remote(AtomicUsize::new(0)), 30, 16);
        let first = v.verify_async("good", 1000);
        assert!(!first.is_ready());
        assert!(first.await.is_ok());
        let again = v.verify_async("good", 1010);
        assert!(again.is_ready(), "a cache hit needs no waiting");
        assert!(again.await.is_ok());
        assert_eq!(v.inner.0.load(Ordering::Relaxed), 1);
        for _ in 0..2 {
            assert!(v.verify_async("bad", 1010).await.is_err());
        }
        assert_eq!(
            v.inner.0.load(Ordering::Relaxed),
            3,
            "failures are not cached"
        );
        // A verifier without I/O stays ready through the cache and revocation wrappers.
        let dir =
            std::env::temp_dir().join(format!("riptide-auth-ready-{}", rand::random::<u64>()));
        let local = Revocable::new(
            CachingVerifier::new(Counting(AtomicUsize::new(0)), 30, 16),
            Revocations::open(&dir),
        );
        let check = local.verify_async("good", 1000);
        assert!(check.is_ready());
        assert!(check.await.is_ok());
    }

    #[tokio::test]
    async fn revocation_applies_to_answers_that_waited() {
        let dir = std::env::temp_dir().join(format!(
            "riptide-auth-revoke-async-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let iss = LocalIssuer::load_or_create(&dir).unwrap();
        let tok = iss.mint("alice", &[], 3600, 1000).unwrap();
        /// The local issuer's answer, delivered only after a wait.
        struct Later(LocalIssuer);
        impl TokenVerifier for Later {
            fn verify(&self, _bearer: &str, _now: u64) -> Result<Principal, AuthError> {
                Err(AuthError::Invalid("needs the network".into()))
            }
            fn verify_async<'a>(&'a self, bearer: &'a str, now: u64) -> Verification<'a> {
                Verification::pending(async move {
                    tokio::task::yield_now().await;
                    self.0.verify(bearer, now)
                })
            }
        }
        let v = Revocable::new(Later(iss), Revocations::open(&dir));
        assert!(v.verify_async(&tok, 1000).await.is_ok());
        let (jti, exp) = token_id(&tok).unwrap();
        Revocations::revoke(&dir, &jti, exp, 1000).unwrap();
        tokio::time::sleep(Revocations::RELOAD_EVERY + std::time::Duration::from_millis(50)).await;
        assert_eq!(
            v.verify_async(&tok, 1000).await,
            Err(AuthError::Invalid("token revoked".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
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
