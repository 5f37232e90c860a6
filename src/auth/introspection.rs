//! OAuth 2.0 Token Introspection (RFC 7662): the issuer says whether a (possibly opaque) token
//! is active, and for whom.
//!
//! - `POST token=…&token_type_hint=access_token` to the endpoint with our client credentials
//!   in HTTP Basic (RFC 6749 §2.3.1), through the SSRF-guarded HTTPS client.
//! - `active: false`, or an active token whose `iss`, `aud`, `sub`, `exp`, `nbf` or `iat` does
//!   not pass the same checks as a JWT access token, is `401 invalid_token`.
//! - The issuer being unreachable, slow (the client's deadline), answering other than 200, or
//!   answering something that is not an introspection response fails closed: `503` with
//!   `Retry-After`, never a pass. After such an outage, tokens not in the cache get `503` at
//!   once for [`IntrospectionSettings::outage_backoff_secs`] instead of queueing on a dead
//!   issuer.
//! - Answers are cached by the SHA-256 of the token: positive ones for at most
//!   [`IntrospectionSettings::positive_ttl_secs`] (60 s) and never past the answer's `exp`,
//!   negative ones for [`IntrospectionSettings::negative_ttl_secs`] (5 s).

use super::MAX_TOKEN_LEN;
use super::{invalid, AccessClaims, AuthError, Principal, TokenVerifier, Verification};
use crate::stir::fetch::{Clock, GuardConfig, GuardedClient, SystemClock};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Settings of an [`IntrospectionVerifier`]; [`IntrospectionSettings::new`] gives the defaults.
#[derive(Clone)]
pub struct IntrospectionSettings {
    /// https URL of the introspection endpoint.
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    /// `iss` an answer must carry.
    pub issuer: String,
    /// `aud` an answer must name.
    pub audience: String,
    pub http: GuardConfig,
    /// Time source for the cache and the outage back-off (not for the answer's claims, which
    /// are checked against the `now_unix` of each verification).
    pub clock: Arc<dyn Clock>,
    /// Longest a positive answer is reused (default and upper bound 60 s).
    pub positive_ttl_secs: u64,
    /// How long a negative answer is reused (default 5 s).
    pub negative_ttl_secs: u64,
    /// After an outage, how long uncached tokens get `503` without asking (default 5 s); also
    /// the `Retry-After` of an outage.
    pub outage_backoff_secs: u64,
    /// Cache bound (default 4096 answers).
    pub max_entries: usize,
}

/// Upper bound of [`IntrospectionSettings::positive_ttl_secs`].
pub const MAX_POSITIVE_TTL_SECS: u64 = 60;

impl IntrospectionSettings {
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        http: GuardConfig,
    ) -> IntrospectionSettings {
        IntrospectionSettings {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            issuer: issuer.into(),
            audience: audience.into(),
            http,
            clock: Arc::new(SystemClock),
            positive_ttl_secs: MAX_POSITIVE_TTL_SECS,
            negative_ttl_secs: 5,
            outage_backoff_secs: 5,
            max_entries: 4096,
        }
    }
}

impl std::fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the client secret.
        f.debug_struct("IntrospectionSettings")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("positive_ttl_secs", &self.positive_ttl_secs)
            .field("negative_ttl_secs", &self.negative_ttl_secs)
            .finish()
    }
}

/// A remembered answer.
enum Entry {
    Active { principal: Principal, until: u64 },
    Refused { error: AuthError, until: u64 },
}

impl Entry {
    fn until(&self) -> u64 {
        match self {
            Entry::Active { until, .. } | Entry::Refused { until, .. } => *until,
        }
    }
}

/// The RFC 7662 §2.2 response: `active` is required; the rest is checked like JWT claims.
#[derive(Deserialize)]
struct Answer {
    active: bool,
    #[serde(flatten)]
    claims: AccessClaims,
}

/// Verifier that asks the issuer's introspection endpoint.
pub struct IntrospectionVerifier {
    s: IntrospectionSettings,
    client: GuardedClient,
    /// `Basic …` for our client credentials.
    authorization: String,
    cache: Mutex<HashMap<[u8; 32], Entry>>,
    /// Clock time before which uncached tokens are refused without asking (after an outage).
    down_until: AtomicU64,
    calls: AtomicU64,
}

impl std::fmt::Debug for IntrospectionVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionVerifier")
            .field("settings", &self.s)
            .finish()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value (also what RFC 6749 §2.3.1 asks
/// for the client id and secret before HTTP Basic).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn token_key(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(d.as_ref());
    k
}

impl IntrospectionVerifier {
    /// Checks the endpoint against the fetch policy now, so a bad one is a start-up error.
    pub fn new(s: IntrospectionSettings) -> anyhow::Result<IntrospectionVerifier> {
        let client = GuardedClient::new(
            s.http.clone(),
            concat!("riptide-oauth/", env!("CARGO_PKG_VERSION")),
        )?;
        client
            .check_url(&s.endpoint)
            .map_err(|e| anyhow::anyhow!("introspection_endpoint {}: {e}", s.endpoint))?;
        if s.client_id.is_empty() || s.client_secret.is_empty() {
            anyhow::bail!("introspection needs a client id and a non-empty client secret");
        }
        let authorization = format!(
            "Basic {}",
            STANDARD.encode(format!(
                "{}:{}",
                form_encode(&s.client_id),
                form_encode(&s.client_secret)
            ))
        );
        Ok(IntrospectionVerifier {
            s: IntrospectionSettings {
                positive_ttl_secs: s.positive_ttl_secs.min(MAX_POSITIVE_TTL_SECS),
                ..s
            },
            client,
            authorization,
            cache: Mutex::default(),
            down_until: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        })
    }

    /// Requests made to the introspection endpoint so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, key: &[u8; 32], now: u64) -> Option<Result<Principal, AuthError>> {
        match self.lock().get(key)? {
            Entry::Active { principal, until } if now < *until => Some(Ok(principal.clone())),
            Entry::Refused { error, until } if now < *until => Some(Err(error.clone())),
            _ => None,
        }
    }

    fn remember(&self, key: [u8; 32], entry: Entry, now: u64) {
        if entry.until() <= now {
            return;
        }
        let mut cache = self.lock();
        if cache.len() >= self.s.max_entries.max(1) {
            cache.retain(|_, e| e.until() > now);
            if cache.len() >= self.s.max_entries.max(1) {
                cache.clear();
            }
        }
        cache.insert(key, entry);
    }

    /// Trimmed token, or why it is refused before anything is asked.
    fn precheck(bearer: &str) -> Result<&str, AuthError> {
        let token = bearer.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("token too long"));
        }
        Ok(token)
    }

    fn outage(&self, why: String) -> AuthError {
        let now = self.s.clock.now_unix();
        let backoff = self.s.outage_backoff_secs;
        self.down_until
            .store(now.saturating_add(backoff), Ordering::Relaxed);
        tracing::warn!(endpoint = %self.s.endpoint, error = %why,
            "introspection failed; refusing uncached tokens with 503");
        AuthError::unavailable(format!("introspection failed: {why}"), backoff)
    }

    async fn introspect(
        &self,
        token: &str,
        key: [u8; 32],
        now_unix: u64,
    ) -> Result<Principal, AuthError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let resp = self
            .client
            .post_form(
                &self.s.endpoint,
                "application/json",
                Some(&self.authorization),
                form,
            )
            .await
            .map_err(|e| self.outage(e.to_string()))?;
        let answer: Answer = serde_json::from_slice(&resp.body)
            .map_err(|e| self.outage(format!("not an introspection response: {e}")))?;
        let now = self.s.clock.now_unix();
        let result = if answer.active {
            let exp = answer.claims.exp;
            answer
                .claims
                .validate(&self.s.issuer, &self.s.audience, now_unix, false)
                .map(|p| (p, exp))
        } else {
            Err(invalid("token is not active"))
        };
        match result {
            Ok((principal, exp)) => {
                let until = now
                    .saturating_add(self.s.positive_ttl_secs)
                    .min(exp.unwrap_or(u64::MAX));
                self.remember(
                    key,
                    Entry::Active {
                        principal: principal.clone(),
                        until,
                    },
                    now,
                );
                Ok(principal)
            }
            Err(error) => {
                let until = now.saturating_add(self.s.negative_ttl_secs);
                self.remember(
                    key,
                    Entry::Refused {
                        error: error.clone(),
                        until,
                    },
                    now,
                );
                Err(error)
            }
        }
    }
}

impl TokenVerifier for IntrospectionVerifier {
    /// From the cache only; a token not in it is refused with `503` (it could not be asked).
    fn verify(&self, bearer: &str, _now_unix: u64) -> Result<Principal, AuthError> {
        let token = Self::precheck(bearer)?;
        let now = self.s.clock.now_unix();
        self.cached(&token_key(token), now).unwrap_or_else(|| {
            Err(AuthError::unavailable(
                "token not introspected yet",
                self.s.outage_backoff_secs,
            ))
        })
    }

    fn verify_async<'a>(&'a self, bearer: &'a str, now_unix: u64) -> Verification<'a> {
        let token = match Self::precheck(bearer) {
            Ok(t) => t,
            Err(e) => return Verification::ready(Err(e)),
        };
        let key = token_key(token);
        let now = self.s.clock.now_unix();
        if let Some(r) = self.cached(&key, now) {
            return Verification::ready(r);
        }
        let down_until = self.down_until.load(Ordering::Relaxed);
        if now < down_until {
            return Verification::ready(Err(AuthError::unavailable(
                "the introspection endpoint failed recently",
                down_until - now,
            )));
        }
        Verification::pending(self.introspect(token, key, now_unix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_everything_but_unreserved() {
        assert_eq!(form_encode("abc-._*XYZ019"), "abc-._*XYZ019");
        assert_eq!(form_encode("a b+c&d=e/é"), "a+b%2Bc%26d%3De%2F%C3%A9");
    }
}
