//! JWT access tokens of an external issuer (RFC 9068), checked with the keys of its JWK Set
//! (RFC 7517), fetched over HTTPS through the SSRF-guarded client.
//!
//! - Accepted algorithms: ES256, ES384, RS256/384/512 and PS256/384/512, each only with a key
//!   of its type (and of its `alg`, when the JWK names one); `none` and HMAC never.
//! - Tokens must carry a `kid` naming a key of the set; keys without `kid`, with `use` other
//!   than `sig`, of another type or too small (RSA < 2048 bits) are ignored.
//! - The set is cached. It is fetched on first use and refreshed in the background once it is
//!   stale (`Cache-Control: max-age` within [`JwksSettings::min_refetch_secs`] and 24 h,
//!   default [`JwksSettings::default_ttl_secs`]); an unknown `kid` makes the verifier fetch it
//!   again at most once per [`JwksSettings::min_refetch_secs`] (30 s), so tokens with random
//!   kids cannot make riptide hammer the issuer. Concurrent requests share one fetch, which
//!   runs in its own task.
//! - A fetch that fails (or returns a set without a usable key) keeps the keys we had; with
//!   no keys at all, tokens get `503` (fail closed) and the next attempt waits the same 30 s.

use super::{invalid, split_compact_jws, AccessClaims, AuthError, Principal};
use super::{TokenVerifier, Verification, B64};
use crate::stir::fetch::{Clock, GuardConfig, GuardedClient, SystemClock};
use base64::Engine as _;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest a fetched key set is used before it is refreshed, whatever its max-age says.
const MAX_TTL_SECS: u64 = 24 * 3600;

/// Settings of a [`JwksVerifier`]; [`JwksSettings::new`] gives the defaults.
#[derive(Clone)]
pub struct JwksSettings {
    /// https URL of the JWK Set.
    pub jwks_uri: String,
    /// `iss` every token must carry.
    pub issuer: String,
    /// `aud` every token must name.
    pub audience: String,
    /// The guarded HTTPS client's trust anchors, allow-list, deadline and body cap.
    pub http: GuardConfig,
    /// Time source for the cache and the refetch limit (not for the token's own claims,
    /// which are checked against the `now_unix` of each verification).
    pub clock: Arc<dyn Clock>,
    /// Least time between two fetches caused by unknown kids, and between attempts after a
    /// failed fetch (default 30 s).
    pub min_refetch_secs: u64,
    /// How long a key set stays fresh when its answer has no `max-age` (default 1 h).
    pub default_ttl_secs: u64,
}

impl JwksSettings {
    pub fn new(
        jwks_uri: impl Into<String>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        http: GuardConfig,
    ) -> JwksSettings {
        JwksSettings {
            jwks_uri: jwks_uri.into(),
            issuer: issuer.into(),
            audience: audience.into(),
            http,
            clock: Arc::new(SystemClock),
            min_refetch_secs: 30,
            default_ttl_secs: 3600,
        }
    }
}

/// A JWS algorithm riptide verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Es256,
    Es384,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        Some(match s {
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            _ => return None,
        })
    }

    fn rsa_params(self) -> Option<&'static signature::RsaParameters> {
        Some(match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
            Alg::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
            Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
            Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
            Alg::Es256 | Alg::Es384 => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyMaterial {
    /// Uncompressed point 0x04 || X || Y.
    P256(Vec<u8>),
    P384(Vec<u8>),
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// One verification key of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Jwk {
    key: KeyMaterial,
    /// The JWK's `alg`, when it names one: then only that algorithm verifies with it.
    alg: Option<Alg>,
}

impl Jwk {
    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> Result<(), AuthError> {
        if self.alg.is_some_and(|a| a != alg) {
            return Err(invalid("algorithm does not match the key"));
        }
        let ok = match (&self.key, alg) {
            (KeyMaterial::P256(point), Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (KeyMaterial::P384(point), Alg::Es384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (KeyMaterial::Rsa { n, e }, alg) => match alg.rsa_params() {
                Some(params) => signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok(),
                None => return Err(invalid("algorithm does not match the key")),
            },
            _ => return Err(invalid("algorithm does not match the key")),
        };
        if ok {
            Ok(())
        } else {
            Err(invalid("bad signature"))
        }
    }
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// The usable signing keys of a JWK Set document, by kid. Fails when the document is not a
/// JWK Set or holds no usable key.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Jwk>, String> {
    let raw: RawJwks =
        serde_json::from_slice(body).map_err(|e| format!("not a JWK Set document: {e}"))?;
    let mut keys = HashMap::new();
    for v in raw.keys {
        // One odd key (a type we do not know, a missing member) does not spoil the others.
        let Ok(k) = serde_json::from_value::<RawJwk>(v) else {
            continue;
        };
        if let Some((kid, jwk)) = usable(k) {
            keys.insert(kid, jwk);
        }
    }
    if keys.is_empty() {
        return Err("the JWK Set has no usable signing key".into());
    }
    Ok(keys)
}

fn usable(k: RawJwk) -> Option<(String, Jwk)> {
    let kid = k.kid.filter(|k| !k.is_empty())?;
    if k.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match k.alg.as_deref() {
        Some(a) => Some(Alg::parse(a)?),
        None => None,
    };
    let b64 = |s: Option<String>| s.and_then(|s| B64.decode(s).ok());
    let key = match k.kty.as_str() {
        "EC" => {
            let (x, y) = (b64(k.x)?, b64(k.y)?);
            let (len, wanted) = match k.crv.as_deref()? {
                "P-256" => (32, Alg::Es256),
                "P-384" => (48, Alg::Es384),
                _ => return None,
            };
            if x.len() != len || y.len() != len || alg.is_some_and(|a| a != wanted) {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            if len == 32 {
                KeyMaterial::P256(point)
            } else {
                KeyMaterial::P384(point)
            }
        }
        "RSA" => {
            let n = b64(k.n)?;
            let e = b64(k.e)?;
            let first = n.iter().position(|b| *b != 0)?;
            let n = n[first..].to_vec();
            let bits = n.len() * 8 - n[0].leading_zeros() as usize;
            if bits < 2048 || e.is_empty() || alg.is_some_and(|a| a.rsa_params().is_none()) {
                return None;
            }
            KeyMaterial::Rsa { n, e }
        }
        _ => return None,
    };
    Some((kid, Jwk { key, alg }))
}

/// A compact JWS split and its header checked; the signature is not verified yet.
struct Token<'t> {
    alg: Alg,
    kid: String,
    signing_input: &'t str,
    claims_b64: &'t str,
    sig: Vec<u8>,
}

fn parse_token(bearer: &str) -> Result<Token<'_>, AuthError> {
    let jws = split_compact_jws(bearer)?;
    // The header only picks among the algorithms we accept; the key decides the rest.
    let alg = Alg::parse(&jws.header.alg)
        .ok_or_else(|| invalid(format!("algorithm {} not accepted", jws.header.alg)))?;
    let kid = jws
        .header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or_else(|| invalid("no key id (kid) in the token"))?;
    Ok(Token {
        alg,
        kid,
        signing_input: jws.signing_input,
        claims_b64: jws.claims_b64,
        sig: jws.sig,
    })
}

type KeySet = Arc<HashMap<String, Jwk>>;
type Fetch = Shared<BoxFuture<'static, ()>>;

struct State {
    keys: KeySet,
    /// A fetch has succeeded at least once.
    loaded: bool,
    /// Clock time after which the set is refreshed (in the background).
    fresh_until: u64,
    /// No fetch for a stale or missing set before this (set after a failure).
    retry_at: u64,
    /// When an unknown kid last caused a fetch.
    kid_refetch_at: Option<u64>,
    in_flight: Option<Fetch>,
}

impl State {
    /// The fetch in flight, if one is still running.
    fn running(&self) -> Option<Fetch> {
        self.in_flight
            .as_ref()
            .filter(|f| f.peek().is_none())
            .cloned()
    }
}

struct Inner {
    s: JwksSettings,
    client: GuardedClient,
    state: Mutex<State>,
    fetches: AtomicU64,
}

/// What one verification does with the key set.
enum Plan {
    Verify(KeySet),
    Wait(Fetch),
    Refuse(AuthError),
}

/// Verifier of an external issuer's JWT access tokens; cheap to clone.
#[derive(Clone)]
pub struct JwksVerifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JwksVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksVerifier")
            .field("jwks_uri", &self.inner.s.jwks_uri)
            .field("issuer", &self.inner.s.issuer)
            .field("audience", &self.inner.s.audience)
            .finish()
    }
}

impl JwksVerifier {
    /// Checks the URL against the fetch policy now, so a bad one is a start-up error. Nothing
    /// is fetched until the first token arrives.
    pub fn new(s: JwksSettings) -> anyhow::Result<JwksVerifier> {
        let client = GuardedClient::new(
            s.http.clone(),
            concat!("riptide-oauth/", env!("CARGO_PKG_VERSION")),
        )?;
        client
            .check_url(&s.jwks_uri)
            .map_err(|e| anyhow::anyhow!("jwks_uri {}: {e}", s.jwks_uri))?;
        Ok(JwksVerifier {
            inner: Arc::new(Inner {
                s,
                client,
                state: Mutex::new(State {
                    keys: Arc::default(),
                    loaded: false,
                    fresh_until: 0,
                    retry_at: 0,
                    kid_refetch_at: None,
                    in_flight: None,
                }),
                fetches: AtomicU64::new(0),
            }),
        })
    }

    /// JWK Set fetches started so far.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// The kids of the keys held now, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut k: Vec<String> = self.inner.lock().keys.keys().cloned().collect();
        k.sort();
        k
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state holds no invariant a panic could break half-way.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plan(self: &Arc<Self>, kid: &str) -> Plan {
        let now = self.s.clock.now_unix();
        let mut st = self.lock();
        let running = st.running();
        if st.keys.contains_key(kid) {
            if running.is_none() && now >= st.fresh_until && now >= st.retry_at {
                // Stale: refresh in the background and use what we have meanwhile (the
                // spawned task runs whether or not anyone waits for it).
                let _background = self.start(&mut st);
            }
            return Plan::Verify(st.keys.clone());
        }
        if let Some(f) = running {
            return Plan::Wait(f);
        }
        let may_fetch = if st.loaded {
            st.kid_refetch_at
                .is_none_or(|at| now >= at.saturating_add(self.s.min_refetch_secs))
        } else {
            now >= st.retry_at
        };
        if may_fetch {
            if st.loaded {
                st.kid_refetch_at = Some(now);
            }
            return Plan::Wait(self.start(&mut st));
        }
        Plan::Refuse(self.unknown(&st, now))
    }

    /// Why a kid that is not in the set is refused.
    fn unknown(&self, st: &State, now: u64) -> AuthError {
        if st.loaded {
            invalid("unknown key id")
        } else {
            AuthError::unavailable(
                "the issuer's JWK Set could not be fetched",
                st.retry_at.saturating_sub(now),
            )
        }
    }

    /// Starts the one fetch (in its own task, so a caller giving up does not cancel it).
    fn start(self: &Arc<Self>, st: &mut State) -> Fetch {
        let inner = self.clone();
        let task = tokio::spawn(async move { inner.refresh().await });
        let fetch: BoxFuture<'static, ()> = Box::pin(async move {
            let _ = task.await;
        });
        let fetch = fetch.shared();
        st.in_flight = Some(fetch.clone());
        fetch
    }

    async fn refresh(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self
            .client
            .get(
                &self.s.jwks_uri,
                "application/jwk-set+json, application/json;q=0.9",
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|resp| parse_jwks(&resp.body).map(|keys| (keys, resp.max_age())));
        let now = self.s.clock.now_unix();
        let mut st = self.lock();
        st.in_flight = None;
        match result {
            Ok((keys, max_age)) => {
                let ttl = max_age.unwrap_or(self.s.default_ttl_secs).clamp(
                    self.s.min_refetch_secs,
                    MAX_TTL_SECS.max(self.s.min_refetch_secs),
                );
                tracing::debug!(uri = %self.s.jwks_uri, keys = keys.len(), ttl, "JWK Set fetched");
                st.keys = Arc::new(keys);
                st.loaded = true;
                st.fresh_until = now.saturating_add(ttl);
                st.retry_at = 0;
            }
            Err(e) => {
                tracing::warn!(uri = %self.s.jwks_uri, error = %e,
                    "JWK Set fetch failed; keeping the keys we have");
                st.retry_at = now.saturating_add(self.s.min_refetch_secs);
            }
        }
    }

    fn check(&self, tok: &Token<'_>, keys: &KeySet, now_unix: u64) -> Result<Principal, AuthError> {
        let Some(key) = keys.get(&tok.kid) else {
            let now = self.s.clock.now_unix();
            return Err(self.unknown(&self.lock(), now));
        };
        key.verify(tok.alg, tok.signing_input.as_bytes(), &tok.sig)?;
        // Claims are only looked at once the signature shows who wrote them.
        AccessClaims::decode(tok.claims_b64)?.validate(
            &self.s.issuer,
            &self.s.audience,
            now_unix,
            true,
        )
    }
}

impl TokenVerifier for JwksVerifier {
    /// With the keys held now; never fetches.
    fn verify(&self, bearer: &str, now_unix: u64) -> Result<Principal, AuthError> {
        let tok = parse_token(bearer)?;
        let keys = self.inner.lock().keys.clone();
        self.inner.check(&tok, &keys, now_unix)
    }

    fn verify_async<'a>(&'a self, bearer: &'a str, now_unix: u64) -> Verification<'a> {
        let tok = match parse_token(bearer) {
            Ok(t) => t,
            Err(e) => return Verification::ready(Err(e)),
        };
        match self.inner.plan(&tok.kid) {
            Plan::Verify(keys) => Verification::ready(self.inner.check(&tok, &keys, now_unix)),
            Plan::Refuse(e) => Verification::ready(Err(e)),
            Plan::Wait(fetch) => Verification::pending(async move {
                fetch.await;
                let keys = self.inner.lock().keys.clone();
                self.inner.check(&tok, &keys, now_unix)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair};

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://as.example";

    fn ec_key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap()
    }

    fn rsa_key() -> RsaKeyPair {
        let pem = include_str!("testdata/rsa2048-test-key.pem");
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        RsaKeyPair::from_pkcs8(der.secret_der()).unwrap()
    }

    fn ec_jwk(k: &EcdsaKeyPair, kid: &str) -> serde_json::Value {
        let pk = &k.public_key().as_ref()[1..];
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": B64.encode(&pk[..32]), "y": B64.encode(&pk[32..])})
    }

    fn rsa_jwk(k: &RsaKeyPair, kid: &str, alg: Option<&str>) -> serde_json::Value {
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
        let mut j = serde_json::json!({"kty": "RSA", "kid": kid, "n": B64.encode(&c.n),
            "e": B64.encode(&c.e)});
        if let Some(a) = alg {
            j["alg"] = a.into();
        }
        j
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss": ISS, "aud": "riptide", "sub": "alice",
            "scope": "calls:write tgs:read", "iat": NOW, "exp": NOW + 300, "jti": "j1"})
    }

    enum Signer<'a> {
        Ec(&'a EcdsaKeyPair),
        Rsa(&'a RsaKeyPair, &'static dyn signature::RsaEncoding),
    }

    fn sign(header: serde_json::Value, claims: &serde_json::Value, key: Signer<'_>) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(&header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        );
        let rng = SystemRandom::new();
        let sig = match key {
            Signer::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Rsa(k, enc) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(enc, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
        };
        format!("{input}.{}", B64.encode(sig))
    }

    fn header(alg: &str, kid: &str) -> serde_json::Value {
        serde_json::json!({"alg": alg, "typ": "at+jwt", "kid": kid})
    }

    /// A verifier holding `jwks` as if it had fetched it (nothing is fetched in these tests).
    fn verifier(jwks: serde_json::Value) -> JwksVerifier {
        let ck = rcgen::generate_simple_self_signed(vec!["as.example".to_string()]).unwrap();
        let roots = crate::stir::fetch::roots_from_der(&[ck.cert.der().clone()]).unwrap();
        let mut s = JwksSettings::new(
            "https://as.example/jwks.json",
            ISS,
            "riptide",
            GuardConfig::new(roots),
        );
        s.clock = Arc::new(|| NOW);
        let v = JwksVerifier::new(s).unwrap();
        {
            let mut st = v.inner.lock();
            st.keys = Arc::new(parse_jwks(&serde_json::to_vec(&jwks).unwrap()).unwrap());
            st.loaded = true;
            st.fresh_until = NOW + 3600;
        }
        v
    }

    fn refused(v: &JwksVerifier, tok: &str) -> String {
        match v.verify(tok, NOW) {
            Err(AuthError::Invalid(m)) => m,
            other => panic!("expected invalid_token, got {other:?}"),
        }
    }

    #[test]
    fn es256_rs256_and_ps256_tokens_of_the_set_verify() {
        let (ec, rsa) = (ec_key(), rsa_key());
        let v = verifier(serde_json::json!({"keys": [
            ec_jwk(&ec, "ec1"),
            rsa_jwk(&rsa, "rsa1", None),
        ]}));
        let toks = [
            sign(header("ES256", "ec1"), &claims(), Signer::Ec(&ec)),
            sign(
                header("RS256", "rsa1"),
                &claims(),
                Signer::Rsa(&rsa, &signature::RSA_PKCS1_SHA256),
            ),
            sign(
                header("PS256", "rsa1"),
                &claims(),
                Signer::Rsa(&rsa, &signature::RSA_PSS_SHA256),
            ),
        ];
        for t in &toks {
            let p = v.verify(t, NOW).unwrap();
            assert_eq!(p.subject, "alice");
            assert_eq!(p.scopes, vec!["calls:write", "tgs:read"]);
            // Known kid, fresh keys: the answer needs no I/O and is ready at once.
            let check = v.verify_async(t, NOW);
            assert!(check.is_ready());
        }
        assert_eq!(v.fetches(), 0);
        // A signature over other claims does not verify.
        let mut forged: Vec<&str> = toks[0].split('.').collect();
        let mut c = claims();
        c["sub"] = "mallory".into();
        let c64 = B64.encode(serde_json::to_vec(&c).unwrap());
        forged[1] = &c64;
        assert_eq!(refused(&v, &forged.join(".")), "bad signature");
    }

    #[test]
    fn the_algorithm_must_fit_the_key() {
        let (ec, rsa) = (ec_key(), rsa_key());
        let v = verifier(serde_json::json!({"keys": [
            ec_jwk(&ec, "ec1"),
            rsa_jwk(&rsa, "rsa-rs", Some("RS256")),
        ]}));
        let rs = |kid: &str, alg: &str, enc: &'static dyn signature::RsaEncoding| {
            sign(header(alg, kid), &claims(), Signer::Rsa(&rsa, enc))
        };
        // An RSA signature presented under the EC key's kid.
        assert_eq!(
            refused(&v, &rs("ec1", "RS256", &signature::RSA_PKCS1_SHA256)),
            "algorithm does not match the key"
        );
        // The JWK says RS256: the same key does not verify PS256.
        assert_eq!(
            refused(&v, &rs("rsa-rs", "PS256", &signature::RSA_PSS_SHA256)),
            "algorithm does not match the key"
        );
        // An EC token relabelled ES384.
        let t = sign(header("ES384", "ec1"), &claims(), Signer::Ec(&ec));
        assert_eq!(refused(&v, &t), "algorithm does not match the key");
        for alg in ["none", "HS256"] {
            let t = sign(header(alg, "ec1"), &claims(), Signer::Ec(&ec));
            assert_eq!(refused(&v, &t), format!("algorithm {alg} not accepted"));
        }
    }

    #[test]
    fn header_and_claims_are_checked() {
        let ec = ec_key();
        let v = verifier(serde_json::json!({"keys": [ec_jwk(&ec, "ec1")]}));
        let tok = |h: serde_json::Value, c: serde_json::Value| sign(h, &c, Signer::Ec(&ec));
        let edit = |k: &str, val: serde_json::Value| {
            let mut c = claims();
            if val.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = val;
            }
            c
        };
        let cases = [
            (edit("iss", "riptide-local".into()), "unknown issuer"),
            (edit("iss", serde_json::Value::Null), "unknown issuer"),
            (edit("aud", "other".into()), "audience is not riptide"),
            (
                edit("aud", serde_json::Value::Null),
                "audience is not riptide",
            ),
            (edit("iat", (NOW + 61).into()), "issued in the future"),
            (
                edit("iat", serde_json::Value::Null),
                "issued-at (iat) missing",
            ),
            (edit("nbf", (NOW + 61).into()), "not valid yet (nbf)"),
            (edit("exp", serde_json::Value::Null), "expiry (exp) missing"),
            (edit("sub", "".into()), "empty subject"),
        ];
        for (c, why) in cases {
            assert_eq!(
                refused(&v, &tok(header("ES256", "ec1"), c.clone())),
                why,
                "{c}"
            );
        }
        assert_eq!(
            v.verify(
                &tok(header("ES256", "ec1"), edit("exp", (NOW - 61).into())),
                NOW
            ),
            Err(AuthError::Expired)
        );
        // Inside the leeway, and with an audience list naming us, it passes.
        assert!(v
            .verify(
                &tok(header("ES256", "ec1"), edit("exp", (NOW - 60).into())),
                NOW
            )
            .is_ok());
        assert!(v
            .verify(
                &tok(
                    header("ES256", "ec1"),
                    edit("aud", serde_json::json!(["x", "riptide"]))
                ),
                NOW
            )
            .is_ok());
        let mut h = header("ES256", "ec1");
        h["typ"] = "JWT".into();
        assert_eq!(
            refused(&v, &tok(h, claims())),
            "token type JWT is not at+jwt"
        );
        let mut h = header("ES256", "ec1");
        h.as_object_mut().unwrap().remove("kid");
        assert_eq!(
            refused(&v, &tok(h, claims())),
            "no key id (kid) in the token"
        );
        assert_eq!(
            refused(&v, &tok(header("ES256", "other"), claims())),
            "unknown key id"
        );
        assert_eq!(v.verify(" ", NOW), Err(AuthError::Missing));
    }

    #[test]
    fn unusable_keys_are_skipped_and_a_set_without_any_is_refused() {
        let (ec, rsa) = (ec_key(), rsa_key());
        let mut enc = ec_jwk(&ec, "enc");
        enc["use"] = "enc".into();
        let mut no_kid = ec_jwk(&ec, "x");
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut short = ec_jwk(&ec, "short");
        short["x"] = B64.encode([1u8; 31]).into();
        let mut wrong_alg = ec_jwk(&ec, "ec-rs");
        wrong_alg["alg"] = "RS256".into();
        let mut small_rsa = rsa_jwk(&rsa, "rsa-1024", None);
        small_rsa["n"] = B64.encode([0xffu8; 128]).into();
        let oct = serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let junk = serde_json::json!({"kid": "no-kty"});
        let good = ec_jwk(&ec, "good");
        let set = serde_json::json!({"keys": [enc, no_kid, short, wrong_alg, small_rsa, oct, junk, good]});
        let keys = parse_jwks(&serde_json::to_vec(&set).unwrap()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);

        let only_bad = serde_json::json!({"keys": [oct_only()]});
        assert!(parse_jwks(&serde_json::to_vec(&only_bad).unwrap())
            .unwrap_err()
            .contains("no usable"));
        assert!(parse_jwks(b"<html>").unwrap_err().contains("not a JWK Set"));
        assert!(parse_jwks(b"{\"keys\": 1}").is_err());
    }

    fn oct_only() -> serde_json::Value {
        serde_json::json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})
    }
}
