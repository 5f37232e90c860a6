//! The STIR/SHAKEN verification service (RFC 8224 §6.2, ATIS-1000074 §5.3.2) and the
//! authentication service's signing entry point.
//!
//! Verification runs in two halves so the caller can fetch certificates in between without
//! this module doing I/O:
//!
//! 1. [`Verifier::prepare`] parses every Identity header and does every local check (syntax,
//!    JOSE header, `info` = `x5u`, `x5u` policy, claim shapes, freshness, claims against the
//!    request, replay) so that a bad or replayed header never causes a fetch.
//! 2. [`Prepared::x5u_to_fetch`] lists the certificate URLs still needed.
//! 3. [`Verifier::finish`] takes the fetched chains (DER, leaf first), validates them to the
//!    STI-PA trust list, checks revocation and the leaf profile, then the signature, and
//!    decides.
//!
//! [`Verifier::verify`] does all three with a synchronous `chain_for` callback.
//!
//! When several Identity headers arrive (STIR-16), each is verified on its own and reported in
//! [`VerifyOutcome::headers`] (so failures can be carried in RFC 9410 `Reason: STIR` headers);
//! the `shaken` one decides `verstat` and the response code.

use super::cert::{
    check_revocation, pem_certificates, CertError, ChainError, ProfileIssue, RevocationError,
    RevocationPolicy, RevocationWarning, StiCertificate, StiCrl, TrustStore,
};
use super::identity::{IdentityError, IdentityHeader, PassportForm};
use super::passport::{
    canonical_tn, encode_shaken_passport, iat_of, Attestation, DecodedPassport, PassportError,
    ShakenClaims, SignError, SigningKey, PPT_SHAKEN,
};
use super::{StirCode, Verstat};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, RwLock};

/// ATIS-1000074 §5.3.1 freshness: a PASSporT older than this is stale (403).
pub const DEFAULT_MAX_AGE_SECS: u64 = 60;
/// How far in the future `iat` may be (clock skew between carriers).
pub const DEFAULT_MAX_FUTURE_SKEW_SECS: u64 = 10;
/// Replay window: twice the freshness window.
pub const DEFAULT_REPLAY_WINDOW_SECS: u64 = 120;
/// Default bound on remembered PASSporTs.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;
/// Identity headers beyond this many in one request are not looked at.
pub const MAX_IDENTITY_HEADERS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Policy and inputs

/// Rules for `x5u` URLs checked before any fetch (ATIS-1000074; Asterisk `check_x5u_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X5uPolicy {
    /// Accept `http://` (never in production; some test networks use it).
    pub allow_http: bool,
    /// Ports allowed when one is written; AT&T serves on 8443.
    pub allowed_ports: Vec<u16>,
    /// Accept a query string.
    pub allow_query: bool,
}

impl Default for X5uPolicy {
    fn default() -> Self {
        X5uPolicy {
            allow_http: false,
            allowed_ports: vec![443, 8443],
            allow_query: false,
        }
    }
}

/// Why an `x5u` URL is refused without fetching it (436).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X5uError {
    #[error("x5u scheme is not https")]
    NotHttps,
    #[error("x5u is not a well-formed URL")]
    Malformed,
    #[error("x5u carries user information")]
    UserInfo,
    #[error("x5u port {0} is not allowed")]
    Port(u16),
    #[error("x5u has a query string")]
    Query,
    #[error("x5u has a fragment")]
    Fragment,
}

/// Checks an `x5u` against `policy` (no DNS, no connection; the fetcher does SSRF checks).
pub fn check_x5u(url: &str, policy: &X5uPolicy) -> Result<(), X5uError> {
    if !url.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(X5uError::Malformed);
    }
    let (scheme, rest) = url.split_once("://").ok_or(X5uError::Malformed)?;
    let https = scheme.eq_ignore_ascii_case("https");
    if !(https || policy.allow_http && scheme.eq_ignore_ascii_case("http")) {
        return Err(X5uError::NotHttps);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return Err(X5uError::UserInfo);
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(X5uError::Malformed)?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or(X5uError::Malformed)?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(X5uError::Malformed);
    }
    if let Some(p) = port {
        let p: u16 = p.parse().map_err(|_| X5uError::Malformed)?;
        if !policy.allowed_ports.contains(&p) {
            return Err(X5uError::Port(p));
        }
    }
    if tail.contains('#') {
        return Err(X5uError::Fragment);
    }
    if tail.contains('?') && !policy.allow_query {
        return Err(X5uError::Query);
    }
    Ok(())
}

/// Verification policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// `now - iat` above this is 403 Stale Date.
    pub max_age_secs: u64,
    /// `iat - now` above this is 403 Stale Date.
    pub max_future_skew_secs: u64,
    /// No usable Identity header gives 428 rather than `No-TN-Validation`.
    pub require_identity: bool,
    /// What an STI-PA CRL outside its validity does.
    pub revocation: RevocationPolicy,
    pub x5u: X5uPolicy,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            max_future_skew_secs: DEFAULT_MAX_FUTURE_SKEW_SECS,
            require_identity: false,
            revocation: RevocationPolicy::Soft,
            x5u: X5uPolicy::default(),
        }
    }
}

/// What the request says, for matching against the claims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyContext {
    /// Seconds since the epoch.
    pub now_unix: u64,
    /// Canonical TN of P-Asserted-Identity (preferred) or From; `None` skips the `orig` check
    /// (e.g. no TN in the request).
    pub canonical_orig: Option<String>,
    /// Canonical TNs of To and/or the Request-URI; one of them must be in `dest.tn`. Empty
    /// skips the `dest` check.
    pub canonical_dest: Vec<String>,
    /// The request's Call-ID, for replay detection.
    pub call_id: String,
}

// ---------------------------------------------------------------------------------------------
// Results

/// Why one Identity header failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    Identity(IdentityError),
    #[error("{0}")]
    Passport(PassportError),
    #[error("compact-form PASSporT; ATIS-1000074 requires the full form")]
    CompactForm,
    #[error("Identity ppt={param} but the PASSporT header says ppt={jws}")]
    PptMismatch { param: String, jws: String },
    #[error("Identity alg={0}; only ES256 is accepted")]
    AlgParam(String),
    #[error("Identity info {info} differs from PASSporT x5u {x5u}")]
    InfoX5uMismatch { info: String, x5u: String },
    #[error("{0}")]
    X5u(X5uError),
    #[error("PASSporT iat is {age_secs} s old")]
    Stale { age_secs: u64 },
    #[error("PASSporT iat is {ahead_secs} s in the future")]
    Future { ahead_secs: u64 },
    #[error("orig.tn {claimed} does not match the caller {expected}")]
    OrigMismatch { claimed: String, expected: String },
    #[error("dest.tn {claimed:?} does not contain the called number {expected:?}")]
    DestMismatch {
        claimed: Vec<String>,
        expected: Vec<String>,
    },
    #[error("PASSporT already seen under another Call-ID (replay)")]
    Replay,
    #[error("the x5u certificate chain could not be obtained: {0}")]
    Fetch(String),
    #[error("the x5u returned no certificate")]
    EmptyChain,
    #[error("{0}")]
    Certificate(CertError),
    #[error("{0}")]
    Chain(ChainError),
    #[error("{0}")]
    Revocation(RevocationError),
    #[error("certificate profile: {}", .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "))]
    Profile(Vec<ProfileIssue>),
    #[error("PASSporT iat is outside the certificate's validity")]
    IatOutsideCertValidity,
    #[error("more than {MAX_IDENTITY_HEADERS} Identity headers; this one was not examined")]
    TooManyHeaders,
    #[error("the certificate chain for {0} was not supplied")]
    ChainNotSupplied(String),
}

impl Failure {
    /// The SIP response for this failure (RFC 8224 §6.2.2 mapping).
    pub fn code(&self) -> StirCode {
        match self {
            Failure::Identity(e) => e.code(),
            Failure::Passport(PassportError::MissingX5u) => StirCode::BadIdentityInfo,
            Failure::Passport(_)
            | Failure::CompactForm
            | Failure::PptMismatch { .. }
            | Failure::AlgParam(_)
            | Failure::OrigMismatch { .. }
            | Failure::DestMismatch { .. }
            | Failure::Replay
            | Failure::TooManyHeaders => StirCode::InvalidIdentityHeader,
            Failure::InfoX5uMismatch { .. }
            | Failure::X5u(_)
            | Failure::Fetch(_)
            | Failure::EmptyChain
            | Failure::ChainNotSupplied(_) => StirCode::BadIdentityInfo,
            Failure::Stale { .. } | Failure::Future { .. } => StirCode::StaleDate,
            Failure::Certificate(_)
            | Failure::Chain(_)
            | Failure::Revocation(_)
            | Failure::Profile(_)
            | Failure::IatOutsideCertValidity => StirCode::UnsupportedCredential,
        }
    }
}

/// A finding that does not fail verification, worth logging.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error("certificate profile: {0}")]
    Profile(ProfileIssue),
    #[error("{0}")]
    Revocation(RevocationWarning),
}

/// A PASSporT that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// `ppt` (`shaken`, `div`, `rcd`, ...).
    pub ppt: String,
    pub iat: u64,
    pub x5u: String,
    /// The SHAKEN claims, for `ppt=shaken`.
    pub shaken: Option<ShakenClaims>,
    /// The signer's SPC from TNAuthList (absent in signature-only verification).
    pub spc: Option<String>,
    pub warnings: Vec<Warning>,
}

impl Verified {
    pub fn attest(&self) -> Option<Attestation> {
        self.shaken.as_ref().map(|c| c.attest)
    }
}

/// The result for one Identity header, in request order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderReport {
    /// Position among the Identity headers given.
    pub index: usize,
    /// `ppt` from the header parameter or the PASSporT header; `None` when neither could be
    /// read.
    pub ppt: Option<String>,
    pub result: Result<Verified, Failure>,
}

impl HeaderReport {
    /// The RFC 9410 `Reason` header value for a failed header.
    pub fn reason_header(&self) -> Option<String> {
        self.result.as_ref().err().map(|f| f.code().reason_header())
    }

    fn is_shaken(&self) -> bool {
        self.ppt
            .as_deref()
            .is_some_and(|p| p.eq_ignore_ascii_case(PPT_SHAKEN))
    }
}

/// The decision for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOutcome {
    pub verstat: Verstat,
    /// The response to send when the trunk's failure policy is `reject`: `None` when
    /// verification passed, or when there was nothing to verify and none is required.
    pub code: Option<StirCode>,
    /// Index into `headers` of the header that decided.
    pub decisive: Option<usize>,
    pub headers: Vec<HeaderReport>,
}

impl VerifyOutcome {
    /// The verified SHAKEN PASSporT, when verification passed.
    pub fn verified(&self) -> Option<&Verified> {
        let r = &self.headers.get(self.decisive?)?.result;
        r.as_ref().ok()
    }

    pub fn attest(&self) -> Option<Attestation> {
        self.verified().and_then(Verified::attest)
    }

    /// The failure that decided, when verification failed.
    pub fn failure(&self) -> Option<&Failure> {
        let r = &self.headers.get(self.decisive?)?.result;
        r.as_ref().err()
    }

    /// RFC 9410 `Reason: STIR` values for every failed header, for `continue` with reasons.
    pub fn reason_headers(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter_map(HeaderReport::reason_header)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Replay

/// The same PASSporT was accepted within the window under another Call-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PASSporT replayed under another Call-ID")]
pub struct ReplayError;

/// Accepted PASSporTs, keyed by SHA-256 of their signature, with the Call-ID they came with.
/// Retransmissions and forks keep the Call-ID and pass; the same PASSporT under another
/// Call-ID within the window is a cut-and-paste replay (RFC 8224 §12). Time is passed in;
/// size is bounded, the oldest entries going first when full.
#[derive(Debug)]
pub struct ReplayCache {
    window_secs: u64,
    max_entries: usize,
    entries: HashMap<[u8; 32], (String, u64)>,
    order: VecDeque<([u8; 32], u64)>,
    evicted_early: u64,
}

impl Default for ReplayCache {
    fn default() -> Self {
        ReplayCache::new(DEFAULT_REPLAY_WINDOW_SECS, DEFAULT_REPLAY_CAPACITY)
    }
}

impl ReplayCache {
    pub fn new(window_secs: u64, max_entries: usize) -> ReplayCache {
        ReplayCache {
            window_secs,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
            evicted_early: 0,
        }
    }

    fn key(signature: &[u8]) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, signature);
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    fn live(&self, seen: u64, now: u64) -> bool {
        now < seen.saturating_add(self.window_secs)
    }

    /// Whether accepting `signature` under `call_id` now would be a replay; records nothing.
    pub fn check(&self, signature: &[u8], call_id: &str, now_unix: u64) -> Result<(), ReplayError> {
        match self.entries.get(&ReplayCache::key(signature)) {
            Some((cid, seen)) if self.live(*seen, now_unix) && cid != call_id => Err(ReplayError),
            _ => Ok(()),
        }
    }

    /// Checks and, when not a replay, remembers `signature` under `call_id`.
    pub fn check_and_record(
        &mut self,
        signature: &[u8],
        call_id: &str,
        now_unix: u64,
    ) -> Result<(), ReplayError> {
        self.purge(now_unix);
        let key = ReplayCache::key(signature);
        match self.entries.get(&key) {
            Some((cid, seen)) if self.live(*seen, now_unix) => {
                return if cid == call_id {
                    Ok(())
                } else {
                    Err(ReplayError)
                };
            }
            _ => {}
        }
        self.entries.insert(key, (call_id.to_string(), now_unix));
        self.order.push_back((key, now_unix));
        while self.entries.len() > self.max_entries {
            let Some((k, t)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&k).is_some_and(|(_, seen)| *seen == t) {
                self.entries.remove(&k);
                if self.live(t, now_unix) {
                    self.evicted_early += 1;
                }
            }
        }
        // Entries replaced after expiring leave stale positions behind; keep the queue bounded.
        if self.order.len() > self.max_entries.saturating_mul(2) {
            let entries = &self.entries;
            self.order
                .retain(|(k, t)| entries.get(k).is_some_and(|(_, seen)| seen == t));
        }
        Ok(())
    }

    /// Forgets entries older than the window.
    pub fn purge(&mut self, now_unix: u64) {
        while let Some(&(k, t)) = self.order.front() {
            if self.live(t, now_unix) {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&k).is_some_and(|(_, seen)| *seen == t) {
                self.entries.remove(&k);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries dropped for lack of room before their window ended (worth a metric: replay
    /// protection was weakened).
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

// ---------------------------------------------------------------------------------------------
// The verifier

/// Long-lived verification configuration: the STI-PA trust list, STI-PA CRLs, policy. The trust
/// list and CRLs can be replaced while calls are verified ([`Verifier::replace_material`]).
#[derive(Debug)]
pub struct Verifier {
    material: RwLock<Arc<TrustMaterial>>,
    policy: VerifyPolicy,
}

/// What a certificate chain is checked against; replaced whole, so that a verification never
/// sees a new trust list with old CRLs.
#[derive(Debug)]
pub struct TrustMaterial {
    pub trust: TrustStore,
    pub crls: Vec<StiCrl>,
}

/// A header that passed every local check and waits for its certificate chain.
#[derive(Debug, Clone)]
struct Pending {
    ppt: String,
    x5u: String,
    passport: DecodedPassport,
    shaken: Option<ShakenClaims>,
    iat: u64,
}

#[derive(Debug, Clone)]
enum Slot {
    Done(Box<HeaderReport>),
    Pending { index: usize, pending: Box<Pending> },
}

/// Headers after the local checks; see [`Verifier::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    slots: Vec<Slot>,
    ctx: VerifyContext,
}

impl Prepared {
    /// The distinct `x5u` URLs whose chains [`Verifier::finish`] needs, in header order.
    pub fn x5u_to_fetch(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.slots {
            if let Slot::Pending { pending, .. } = s {
                if !out.contains(&pending.x5u) {
                    out.push(pending.x5u.clone());
                }
            }
        }
        out
    }
}

impl Verifier {
    pub fn new(trust: TrustStore, crls: Vec<StiCrl>, policy: VerifyPolicy) -> Verifier {
        Verifier {
            material: RwLock::new(Arc::new(TrustMaterial { trust, crls })),
            policy,
        }
    }

    /// The trust list and CRLs in use now.
    pub fn material(&self) -> Arc<TrustMaterial> {
        self.material
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Verifications that start from now on use `trust` and `crls`; one already past its chain
    /// check keeps what it was checked against.
    pub fn replace_material(&self, trust: TrustStore, crls: Vec<StiCrl>) {
        *self.material.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(TrustMaterial { trust, crls });
    }

    pub fn policy(&self) -> &VerifyPolicy {
        &self.policy
    }

    /// Parses the Identity header values (without the header name) and runs every check that
    /// needs no certificate. `replay` is only read here.
    pub fn prepare(
        &self,
        identity_headers: &[&str],
        ctx: &VerifyContext,
        replay: &ReplayCache,
    ) -> Prepared {
        let slots = identity_headers
            .iter()
            .enumerate()
            .map(|(index, raw)| {
                if index >= MAX_IDENTITY_HEADERS {
                    return Slot::Done(Box::new(HeaderReport {
                        index,
                        ppt: None,
                        result: Err(Failure::TooManyHeaders),
                    }));
                }
                match local_checks(&self.policy, raw, ctx, Some(replay)) {
                    Ok(p) => Slot::Pending {
                        index,
                        pending: Box::new(p),
                    },
                    Err((ppt, f)) => Slot::Done(Box::new(HeaderReport {
                        index,
                        ppt,
                        result: Err(f),
                    })),
                }
            })
            .collect();
        Prepared {
            slots,
            ctx: ctx.clone(),
        }
    }

    /// Completes verification with the chains for [`Prepared::x5u_to_fetch`]. `chain_for` is
    /// called at most once per URL; it returns the DER certificates of the `x5u` body, leaf
    /// first (e.g. the fetcher's `Arc<[CertificateDer]>`), or why they could not be had (any
    /// error; it becomes 436 with its text). Successful SHAKEN PASSporTs are recorded in
    /// `replay`.
    pub fn finish<C, D, E>(
        &self,
        prepared: Prepared,
        replay: &mut ReplayCache,
        mut chain_for: impl FnMut(&str) -> Result<C, E>,
    ) -> VerifyOutcome
    where
        C: AsRef<[D]>,
        D: AsRef<[u8]>,
        E: fmt::Display,
    {
        let ctx = prepared.ctx;
        let mut fetched: HashMap<String, Result<C, E>> = HashMap::new();
        let mut headers = Vec::with_capacity(prepared.slots.len());
        for slot in prepared.slots {
            match slot {
                Slot::Done(r) => headers.push(*r),
                Slot::Pending { index, pending } => {
                    let chain = fetched
                        .entry(pending.x5u.clone())
                        .or_insert_with(|| chain_for(&pending.x5u));
                    let result = self.with_chain(&pending, chain, &ctx, replay);
                    headers.push(HeaderReport {
                        index,
                        ppt: (!pending.ppt.is_empty()).then(|| pending.ppt.clone()),
                        result,
                    });
                }
            }
        }
        self.decide(headers)
    }

    /// [`Verifier::prepare`] then [`Verifier::finish`] with a synchronous chain source.
    pub fn verify<C, D, E>(
        &self,
        identity_headers: &[&str],
        ctx: &VerifyContext,
        replay: &mut ReplayCache,
        chain_for: impl FnMut(&str) -> Result<C, E>,
    ) -> VerifyOutcome
    where
        C: AsRef<[D]>,
        D: AsRef<[u8]>,
        E: fmt::Display,
    {
        let prepared = self.prepare(identity_headers, ctx, replay);
        self.finish(prepared, replay, chain_for)
    }

    fn with_chain<C, D, E>(
        &self,
        p: &Pending,
        chain: &Result<C, E>,
        ctx: &VerifyContext,
        replay: &mut ReplayCache,
    ) -> Result<Verified, Failure>
    where
        C: AsRef<[D]>,
        D: AsRef<[u8]>,
        E: fmt::Display,
    {
        let chain = chain
            .as_ref()
            .map_err(|e| Failure::Fetch(e.to_string()))?
            .as_ref();
        let leaf_der = chain.first().ok_or(Failure::EmptyChain)?;
        let leaf = StiCertificate::from_der(leaf_der.as_ref()).map_err(Failure::Certificate)?;
        let material = self.material();
        let validated = material
            .trust
            .validate(chain, ctx.now_unix)
            .map_err(Failure::Chain)?;
        let mut warnings: Vec<Warning> = check_revocation(
            &validated,
            &material.crls,
            ctx.now_unix,
            self.policy.revocation,
        )
        .map_err(Failure::Revocation)?
        .into_iter()
        .map(Warning::Revocation)
        .collect();
        let profile = leaf.profile();
        if !profile.hard.is_empty() {
            return Err(Failure::Profile(profile.hard));
        }
        warnings.extend(profile.soft.into_iter().map(Warning::Profile));
        leaf.check_claim_constraints(&p.passport.claims_json)
            .map_err(|i| Failure::Profile(vec![i]))?;
        let iat = i64::try_from(p.iat).unwrap_or(i64::MAX);
        if iat < leaf.not_before || iat > leaf.not_after {
            return Err(Failure::IatOutsideCertValidity);
        }
        let point = leaf
            .public_point()
            .ok_or(Failure::Passport(PassportError::BadPublicKey))?;
        p.passport
            .verify_signature(point)
            .map_err(Failure::Passport)?;
        if p.shaken.is_some() {
            replay
                .check_and_record(&p.passport.signature, &ctx.call_id, ctx.now_unix)
                .map_err(|_| Failure::Replay)?;
        }
        Ok(Verified {
            ppt: p.ppt.clone(),
            iat: p.iat,
            x5u: p.x5u.clone(),
            shaken: p.shaken.clone(),
            spc: leaf.spc().map(str::to_string),
            warnings,
        })
    }

    fn decide(&self, headers: Vec<HeaderReport>) -> VerifyOutcome {
        let shaken: Vec<usize> = (0..headers.len())
            .filter(|&i| headers[i].is_shaken())
            .collect();
        let decisive = shaken
            .iter()
            .copied()
            .find(|&i| headers[i].result.is_ok())
            .or_else(|| shaken.first().copied())
            .or_else(|| {
                // No shaken header: an unreadable one (ppt unknown) may have been meant as one.
                (0..headers.len()).find(|&i| headers[i].ppt.is_none() && headers[i].result.is_err())
            });
        let (verstat, code) = match decisive.map(|i| &headers[i].result) {
            Some(Ok(_)) => (Verstat::TnValidationPassed, None),
            Some(Err(f)) => (Verstat::TnValidationFailed, Some(f.code())),
            None => (
                Verstat::NoTnValidation,
                self.policy
                    .require_identity
                    .then_some(StirCode::UseIdentityHeader),
            ),
        };
        VerifyOutcome {
            verstat,
            code,
            decisive,
            headers,
        }
    }
}

/// Every check of one header that needs no certificate. On failure, returns the `ppt` as far
/// as it could be determined, with the failure.
fn local_checks(
    policy: &VerifyPolicy,
    raw: &str,
    ctx: &VerifyContext,
    replay: Option<&ReplayCache>,
) -> Result<Pending, (Option<String>, Failure)> {
    let header = IdentityHeader::parse(raw).map_err(|e| (None, Failure::Identity(e)))?;
    let param_ppt = header.ppt().map(str::to_string);
    let fail = |f: Failure| (param_ppt.clone(), f);
    if header.form() == PassportForm::Compact {
        return Err(fail(Failure::CompactForm));
    }
    let passport = DecodedPassport::decode(header.jws()).map_err(|e| fail(Failure::Passport(e)))?;
    let ppt = match (&param_ppt, &passport.header.ppt) {
        (Some(p), Some(j)) if !p.eq_ignore_ascii_case(j) => {
            // The signed value classifies the header, so relabelling a shaken PASSporT's
            // parameter cannot make its failure count as some other ppt's.
            return Err((
                Some(j.clone()),
                Failure::PptMismatch {
                    param: p.clone(),
                    jws: j.clone(),
                },
            ));
        }
        (Some(p), _) => p.clone(),
        (None, Some(j)) => j.clone(),
        (None, None) => String::new(),
    };
    let ppt_known = (!ppt.is_empty()).then(|| ppt.clone());
    let fail = |f: Failure| (ppt_known.clone(), f);
    if let Some(alg) = header.alg() {
        if alg != "ES256" {
            return Err(fail(Failure::AlgParam(alg.to_string())));
        }
    }
    passport
        .header
        .check_alg_typ()
        .map_err(|e| fail(Failure::Passport(e)))?;
    let x5u = passport
        .header
        .x5u
        .clone()
        .ok_or_else(|| fail(Failure::Passport(PassportError::MissingX5u)))?;
    if x5u != header.info() {
        return Err(fail(Failure::InfoX5uMismatch {
            info: header.info().to_string(),
            x5u,
        }));
    }
    check_x5u(&x5u, &policy.x5u).map_err(|e| fail(Failure::X5u(e)))?;
    let is_shaken = ppt.eq_ignore_ascii_case(PPT_SHAKEN);
    let shaken = if is_shaken {
        Some(
            ShakenClaims::from_value(&passport.claims_json)
                .map_err(|e| fail(Failure::Passport(e)))?,
        )
    } else {
        None
    };
    let iat = iat_of(&passport.claims_json).map_err(|e| fail(Failure::Passport(e)))?;
    check_freshness(policy, iat, ctx.now_unix).map_err(fail)?;
    if let Some(claims) = &shaken {
        check_claims_against_request(claims, ctx).map_err(fail)?;
        if let Some(replay) = replay {
            replay
                .check(&passport.signature, &ctx.call_id, ctx.now_unix)
                .map_err(|_| fail(Failure::Replay))?;
        }
    }
    Ok(Pending {
        ppt,
        x5u,
        passport,
        shaken,
        iat,
    })
}

fn check_freshness(policy: &VerifyPolicy, iat: u64, now: u64) -> Result<(), Failure> {
    if now > iat && now - iat > policy.max_age_secs {
        return Err(Failure::Stale {
            age_secs: now - iat,
        });
    }
    if iat > now && iat - now > policy.max_future_skew_secs {
        return Err(Failure::Future {
            ahead_secs: iat - now,
        });
    }
    Ok(())
}

fn check_claims_against_request(claims: &ShakenClaims, ctx: &VerifyContext) -> Result<(), Failure> {
    if let Some(expected) = &ctx.canonical_orig {
        let expected_c = canonical_tn(expected).unwrap_or_else(|| expected.clone());
        let claimed = canonical_tn(&claims.orig_tn);
        if claimed.as_deref() != Some(expected_c.as_str()) {
            return Err(Failure::OrigMismatch {
                claimed: claims.orig_tn.clone(),
                expected: expected_c,
            });
        }
    }
    if !ctx.canonical_dest.is_empty() {
        let claimed: Vec<String> = claims
            .dest_tns
            .iter()
            .filter_map(|t| canonical_tn(t))
            .collect();
        let hit = ctx.canonical_dest.iter().any(|d| {
            let d = canonical_tn(d).unwrap_or_else(|| d.clone());
            claimed.contains(&d)
        });
        if !hit {
            return Err(Failure::DestMismatch {
                claimed: claims.dest_tns.clone(),
                expected: ctx.canonical_dest.clone(),
            });
        }
    }
    Ok(())
}

/// Checks one Identity header's PASSporT against a given leaf certificate only: syntax, JOSE
/// header, `info` = `x5u`, claim shapes, freshness at `now_unix` and the signature. No chain,
/// revocation, profile, request matching or replay check — for known-answer tests and
/// diagnostics (`riptide stir`), never for admitting calls.
pub fn verify_signature_only(
    identity: &str,
    leaf_der: &[u8],
    now_unix: u64,
    policy: &VerifyPolicy,
) -> Result<Verified, Failure> {
    let ctx = VerifyContext {
        now_unix,
        ..VerifyContext::default()
    };
    let p = local_checks(policy, identity, &ctx, None).map_err(|(_, f)| f)?;
    let leaf = StiCertificate::from_der(leaf_der).map_err(Failure::Certificate)?;
    let point = leaf
        .public_point()
        .ok_or(Failure::Passport(PassportError::BadPublicKey))?;
    p.passport
        .verify_signature(point)
        .map_err(Failure::Passport)?;
    Ok(Verified {
        ppt: p.ppt,
        iat: p.iat,
        x5u: p.x5u,
        shaken: p.shaken,
        spc: None,
        warnings: Vec::new(),
    })
}

/// Verifies one Identity header (value, or the whole `Identity:` line) completely but
/// offline: `chain_pem` stands in for whatever its `x5u` serves, `trust_pem` is the STI-CA
/// list, the request claims are not matched, no CRL is used. For `riptide stir verify`.
pub fn verify_identity_offline(
    header: &str,
    chain_pem: &[u8],
    trust_pem: &[u8],
    now_unix: u64,
) -> Result<VerifyOutcome, CertError> {
    let trust = TrustStore::from_pem(trust_pem)?;
    let chain = pem_certificates(chain_pem)?;
    let verifier = Verifier::new(trust, Vec::new(), VerifyPolicy::default());
    let ctx = VerifyContext {
        now_unix,
        ..VerifyContext::default()
    };
    let value = strip_header_name(header);
    let mut replay = ReplayCache::new(DEFAULT_REPLAY_WINDOW_SECS, 16);
    Ok(verifier.verify(&[value], &ctx, &mut replay, |_| {
        Ok::<_, std::convert::Infallible>(&chain)
    }))
}

/// `Identity: v` or `y: v` gives `v`; anything else is returned as is.
fn strip_header_name(line: &str) -> &str {
    if let Some((name, value)) = line.split_once(':') {
        let name = name.trim();
        if name.eq_ignore_ascii_case("identity") || name.eq_ignore_ascii_case("y") {
            return value.trim_start();
        }
    }
    line
}

/// Authentication service: signs `claims` with `key` and returns the Identity header value
/// `<jws>;info=<x5u>;alg=ES256;ppt=shaken`. The attestation is the caller's decision (STIR-17);
/// TNs must already be canonical ([`canonical_tn`]).
pub fn sign(claims: &ShakenClaims, key: &SigningKey, x5u: &str) -> Result<String, SignError> {
    let jws = encode_shaken_passport(claims, key, x5u)?;
    Ok(IdentityHeader::new(&jws, x5u, PPT_SHAKEN).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stir::cert::{JwtClaimConstraints, TnAuthListError, TnEntry};
    use crate::stir::passport::{canonical_json, shaken_header};
    use crate::stir::testpki::{create_test_pki_at, LeafKeyType, LeafSpec, TestPki};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    use serde_json::{json, Value};
    use std::convert::Infallible;

    const NOW: u64 = 1_750_000_000;
    const X5U: &str = "https://cert.example.net/sp.pem";
    const ORIG: &str = "12155551212";
    const DEST: &str = "12155551213";

    const README_IDENTITY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_readme_identity.txt"
    ));
    const README_PASSPORT: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_readme_passport.txt"
    ));
    const STRINGIFIED_IDENTITY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_stringified_claims_identity.txt"
    ));
    const SP_PEM: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_sp.pem"
    ));
    const CA_PEM: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/stir/libstirshaken_ca.pem"
    ));
    const README_IAT: u64 = 1_616_442_523;

    struct Fixture {
        pki: TestPki,
        verifier: Verifier,
        key: SigningKey,
    }

    fn fixture() -> Fixture {
        fixture_with(VerifyPolicy::default(), Vec::new())
    }

    fn fixture_with(policy: VerifyPolicy, crls: Vec<StiCrl>) -> Fixture {
        let pki = TestPki::generate("1234", NOW).unwrap();
        let trust = TrustStore::from_der_certs([&pki.root.der]).unwrap();
        let key = pki.signing_key().unwrap();
        Fixture {
            verifier: Verifier::new(trust, crls, policy),
            pki,
            key,
        }
    }

    fn claims(attest: Attestation, iat: u64) -> ShakenClaims {
        ShakenClaims {
            attest,
            dest_tns: vec![DEST.into()],
            iat,
            orig_tn: ORIG.into(),
            origid: "123e4567-e89b-12d3-a456-426655440000".into(),
        }
    }

    fn ctx(now: u64, call_id: &str) -> VerifyContext {
        VerifyContext {
            now_unix: now,
            canonical_orig: Some(ORIG.into()),
            canonical_dest: vec![DEST.into()],
            call_id: call_id.into(),
        }
    }

    /// A signed Identity value with arbitrary header and claims JSON.
    fn custom_identity(key: &SigningKey, header: &Value, claims: &Value, info: &str) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(canonical_json(header)),
            B64.encode(canonical_json(claims))
        );
        let sig = key.sign_raw(input.as_bytes()).unwrap();
        format!(
            "{input}.{};info=<{info}>;alg=ES256;ppt=shaken",
            B64.encode(sig)
        )
    }

    impl Fixture {
        fn sign(&self, attest: Attestation, iat: u64) -> String {
            sign(&claims(attest, iat), &self.key, X5U).unwrap()
        }

        fn run(&self, headers: &[&str], ctx: &VerifyContext) -> VerifyOutcome {
            let mut replay = ReplayCache::default();
            self.run_with(headers, ctx, &mut replay, self.pki.chain())
        }

        fn run_with(
            &self,
            headers: &[&str],
            ctx: &VerifyContext,
            replay: &mut ReplayCache,
            chain: Vec<Vec<u8>>,
        ) -> VerifyOutcome {
            self.verifier.verify(headers, ctx, replay, |url| {
                assert_eq!(url, X5U);
                Ok::<_, Infallible>(chain.clone())
            })
        }
    }

    fn failed(o: &VerifyOutcome) -> &Failure {
        o.failure()
            .unwrap_or_else(|| panic!("expected a failure: {o:?}"))
    }

    #[test]
    fn sign_then_verify_passes() {
        let f = fixture();
        let identity = f.sign(Attestation::A, NOW);
        assert!(identity.ends_with(&format!(";info=<{X5U}>;alg=ES256;ppt=shaken")));
        let o = f.run(&[&identity], &ctx(NOW, "call-1"));
        assert_eq!(o.verstat, Verstat::TnValidationPassed, "{o:?}");
        assert_eq!(o.code, None);
        assert_eq!(o.attest(), Some(Attestation::A));
        let v = o.verified().unwrap();
        assert_eq!(v.spc.as_deref(), Some("1234"));
        assert_eq!(v.shaken.as_ref().unwrap().orig_tn, ORIG);
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        assert!(o.reason_headers().is_empty());
    }

    /// STIR-17 support: the caller chooses A/B/C and it comes back out.
    #[test]
    fn attestation_levels_round_trip() {
        let f = fixture();
        for a in [Attestation::A, Attestation::B, Attestation::C] {
            let o = f.run(&[&f.sign(a, NOW)], &ctx(NOW, "c"));
            assert_eq!(o.attest(), Some(a));
        }
    }

    /// STIR-04: the libstirshaken README Identity header verifies with sp.pem (signature only,
    /// clock at iat + 5 s) and gives attest B.
    #[test]
    fn libstirshaken_readme_vector_verifies() {
        let leaf = crate::stir::cert::pem_certificates(SP_PEM)
            .unwrap()
            .remove(0);
        let v = verify_signature_only(
            README_IDENTITY.trim(),
            &leaf,
            README_IAT + 5,
            &VerifyPolicy::default(),
        )
        .unwrap();
        assert_eq!(v.attest(), Some(Attestation::B));
        assert_eq!(v.iat, README_IAT);
        assert_eq!(v.x5u, "https://shaken.signalwire.cloud/sp.pem");
        let c = v.shaken.unwrap();
        assert_eq!(c.orig_tn, "01256500600");
        assert_eq!(c.dest_tns, vec!["01256700800".to_string()]);
        assert_eq!(c.origid, "e32f4189-cb86-460f-bb92-bd3acb89f29c");

        // The README's other signature over the same PASSporT.
        let d = DecodedPassport::decode(README_PASSPORT.trim()).unwrap();
        let sti = StiCertificate::from_der(&leaf).unwrap();
        d.verify_signature(sti.public_point().unwrap()).unwrap();

        // The same vector under the full verifier: the chain is fine, the profile is not
        // (TNAuthList is an IA5String URL), so 437.
        let o = verify_identity_offline(
            &format!("Identity: {}", README_IDENTITY.trim()),
            SP_PEM,
            CA_PEM,
            README_IAT + 5,
        )
        .unwrap();
        assert_eq!(o.code, Some(StirCode::UnsupportedCredential), "{o:?}");
        assert!(matches!(
            failed(&o),
            Failure::Profile(issues) if matches!(
                issues.as_slice(),
                [ProfileIssue::TnAuthList(TnAuthListError::Ia5StringInsteadOfSequence(_))]
            )
        ));

        // Stale once the clock moves on.
        let stale = verify_signature_only(
            README_IDENTITY.trim(),
            &leaf,
            README_IAT + 61,
            &VerifyPolicy::default(),
        );
        assert_eq!(stale.unwrap_err().code(), StirCode::StaleDate);
    }

    /// libstirshaken passport.txt: a valid signature over stringified orig/dest objects is
    /// still an invalid SHAKEN PASSporT (438).
    #[test]
    fn libstirshaken_stringified_claims_are_refused() {
        let leaf = crate::stir::cert::pem_certificates(SP_PEM)
            .unwrap()
            .remove(0);
        let h = IdentityHeader::parse(STRINGIFIED_IDENTITY.trim()).unwrap();
        let d = DecodedPassport::decode(h.jws()).unwrap();
        let sti = StiCertificate::from_der(&leaf).unwrap();
        d.verify_signature(sti.public_point().unwrap()).unwrap();
        let policy = VerifyPolicy {
            x5u: X5uPolicy {
                allow_http: true,
                ..X5uPolicy::default()
            },
            ..VerifyPolicy::default()
        };
        let r = verify_signature_only(STRINGIFIED_IDENTITY.trim(), &leaf, 1_603_458_131, &policy);
        assert!(
            matches!(
                r,
                Err(Failure::Passport(PassportError::BadClaim(
                    "orig",
                    "not an object"
                )))
            ),
            "{r:?}"
        );
        // With the default policy its http:// x5u is refused first (436).
        let r = verify_signature_only(
            STRINGIFIED_IDENTITY.trim(),
            &leaf,
            1_603_458_131,
            &VerifyPolicy::default(),
        );
        assert_eq!(r.unwrap_err(), Failure::X5u(X5uError::NotHttps));
    }

    /// STIR-05: one change in the signature, the header or the claims gives 438 / Failed.
    #[test]
    fn tampering_gives_438() {
        let f = fixture();
        let good = f.sign(Attestation::A, NOW);
        let (jws, params) = good.split_once(';').unwrap();
        let parts: Vec<&str> = jws.split('.').collect();

        let mut sig = B64.decode(parts[2]).unwrap();
        sig[5] ^= 0x01;
        let bad_sig = format!("{}.{}.{};{params}", parts[0], parts[1], B64.encode(&sig));

        // Same header, different bytes (keys reordered): the signature no longer covers it.
        let header_reordered =
            format!(r#"{{"x5u":"{X5U}","typ":"passport","ppt":"shaken","alg":"ES256"}}"#);
        let bad_header = format!(
            "{}.{}.{};{params}",
            B64.encode(header_reordered),
            parts[1],
            parts[2]
        );

        let mut claims_json = B64.decode(parts[1]).unwrap();
        let pos = claims_json.len() - 3;
        claims_json[pos] ^= 0x01; // a bit in origid
        let bad_claims = format!(
            "{}.{}.{};{params}",
            parts[0],
            B64.encode(&claims_json),
            parts[2]
        );

        for tampered in [bad_sig, bad_header, bad_claims] {
            let o = f.run(&[&tampered], &ctx(NOW, "c"));
            assert_eq!(o.verstat, Verstat::TnValidationFailed);
            assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));
            assert_eq!(
                failed(&o),
                &Failure::Passport(PassportError::BadSignature),
                "{tampered}"
            );
        }

        // A DER-encoded ECDSA signature (some JOSE stacks) is refused as such.
        let der_sig = format!(
            "{}.{}.{};{params}",
            parts[0],
            parts[1],
            B64.encode([0x30u8; 70])
        );
        let o = f.run(&[&der_sig], &ctx(NOW, "c"));
        assert_eq!(
            failed(&o),
            &Failure::Passport(PassportError::SignatureLength(70))
        );
    }

    /// STIR-06: freshness with an injected clock.
    #[test]
    fn iat_freshness() {
        let f = fixture();
        let at = |iat: u64| f.run(&[&f.sign(Attestation::A, iat)], &ctx(NOW, "c"));
        assert_eq!(at(NOW - 60).verstat, Verstat::TnValidationPassed);
        let o = at(NOW - 61);
        assert_eq!(o.code, Some(StirCode::StaleDate));
        assert_eq!(failed(&o), &Failure::Stale { age_secs: 61 });
        assert_eq!(StirCode::StaleDate.to_string(), "403 Stale Date");
        assert_eq!(at(NOW + 10).verstat, Verstat::TnValidationPassed);
        let o = at(NOW + 11);
        assert_eq!(o.code, Some(StirCode::StaleDate));
        assert_eq!(failed(&o), &Failure::Future { ahead_secs: 11 });

        // iat as a string (RFC 8588's printed example).
        let mut c = claims(Attestation::A, NOW).to_value();
        c["iat"] = Value::String(NOW.to_string());
        let o = f.run(
            &[&custom_identity(&f.key, &shaken_header(X5U), &c, X5U)],
            &ctx(NOW, "c"),
        );
        assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));
        assert_eq!(failed(&o), &Failure::Passport(PassportError::IatNotNumber));
    }

    /// STIR-07: claims against the request.
    #[test]
    fn orig_and_dest_must_match_the_request() {
        let f = fixture();
        let id = f.sign(Attestation::A, NOW);
        let mut c = ctx(NOW, "c");
        c.canonical_orig = Some("12155550000".into());
        let o = f.run(&[&id], &c);
        assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));
        assert!(matches!(failed(&o), Failure::OrigMismatch { .. }));

        let mut c = ctx(NOW, "c");
        c.canonical_dest = vec!["12155550000".into()];
        let o = f.run(&[&id], &c);
        assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));
        assert!(matches!(failed(&o), Failure::DestMismatch { .. }));

        // Canonicalized forms of the request URIs match.
        let mut c = ctx(NOW, "c");
        c.canonical_orig = canonical_tn("sip:+1-215-555-1212@x;user=phone");
        c.canonical_dest = vec![
            "19998887777".into(),
            canonical_tn("tel:+1-215-555-1213").unwrap(),
        ];
        assert_eq!(f.run(&[&id], &c).verstat, Verstat::TnValidationPassed);

        // Checks off.
        let mut c = ctx(NOW, "c");
        c.canonical_orig = None;
        c.canonical_dest.clear();
        assert_eq!(f.run(&[&id], &c).verstat, Verstat::TnValidationPassed);
    }

    /// STIR-08 (policy part) and 436 mappings that need no network.
    #[test]
    fn bad_identity_info_gives_436() {
        let f = fixture();
        let c = ctx(NOW, "c");
        // info differs from x5u.
        let id = f.sign(Attestation::A, NOW).replace(
            &format!("info=<{X5U}>"),
            "info=<https://other.example/sp.pem>",
        );
        let o = f.run(&[&id], &c);
        assert_eq!(o.code, Some(StirCode::BadIdentityInfo));
        assert!(matches!(failed(&o), Failure::InfoX5uMismatch { .. }));

        // Missing info.
        let id = f
            .sign(Attestation::A, NOW)
            .replace(&format!(";info=<{X5U}>"), "");
        let o = f.run(&[&id], &c);
        assert_eq!(o.code, Some(StirCode::BadIdentityInfo));

        // x5u policy: http, port, userinfo, query, fragment.
        for (url, want) in [
            ("http://cert.example.net/sp.pem", X5uError::NotHttps),
            ("https://cert.example.net:8080/sp.pem", X5uError::Port(8080)),
            ("https://u:p@cert.example.net/sp.pem", X5uError::UserInfo),
            ("https://cert.example.net/sp.pem?a=1", X5uError::Query),
            ("https://cert.example.net/sp.pem#f", X5uError::Fragment),
            ("https:///sp.pem", X5uError::Malformed),
        ] {
            assert_eq!(check_x5u(url, &X5uPolicy::default()), Err(want), "{url}");
            let id = custom_identity(
                &f.key,
                &shaken_header(url),
                &claims(Attestation::A, NOW).to_value(),
                url,
            );
            let o = f.verifier.verify(
                &[&id],
                &c,
                &mut ReplayCache::default(),
                |_| -> Result<Vec<Vec<u8>>, Infallible> {
                    panic!("a refused x5u must not be fetched")
                },
            );
            assert_eq!(o.code, Some(StirCode::BadIdentityInfo), "{url}: {o:?}");
        }
        for ok in [
            "https://cert2.sticr.att.net:8443/a.pem",
            "https://cert.example.net:443/a.pem",
            "https://[2001:db8::1]:8443/a.pem",
            "HTTPS://cert.example.net/a.pem",
        ] {
            assert_eq!(check_x5u(ok, &X5uPolicy::default()), Ok(()), "{ok}");
        }

        // Fetch failure and empty body.
        let id = f.sign(Attestation::A, NOW);
        let o = f
            .verifier
            .verify(&[&id], &c, &mut ReplayCache::default(), |_| {
                Err::<Vec<Vec<u8>>, _>("HTTP 404")
            });
        assert_eq!(o.code, Some(StirCode::BadIdentityInfo));
        assert_eq!(failed(&o), &Failure::Fetch("HTTP 404".into()));
        let o = f.run_with(&[&id], &c, &mut ReplayCache::default(), vec![]);
        assert_eq!(failed(&o), &Failure::EmptyChain);
        assert_eq!(o.code, Some(StirCode::BadIdentityInfo));
    }

    /// STIR-09 and STIR-10: chain trust and time, 437.
    #[test]
    fn untrusted_or_expired_chain_gives_437() {
        let f = fixture();
        let c = ctx(NOW, "c");
        let id = f.sign(Attestation::A, NOW);
        let other = TestPki::generate("1234", NOW).unwrap();

        // Missing intermediate.
        let o = f.run_with(
            &[&id],
            &c,
            &mut ReplayCache::default(),
            vec![f.pki.leaf.der.clone()],
        );
        assert_eq!(o.code, Some(StirCode::UnsupportedCredential));
        assert_eq!(failed(&o), &Failure::Chain(ChainError::UnknownIssuer));

        // Unknown root: a whole other hierarchy signing.
        let other_key = other.signing_key().unwrap();
        let id_other = sign(&claims(Attestation::A, NOW), &other_key, X5U).unwrap();
        let o = f.run_with(&[&id_other], &c, &mut ReplayCache::default(), other.chain());
        assert_eq!(failed(&o), &Failure::Chain(ChainError::UnknownIssuer));
        assert_eq!(o.verstat, Verstat::TnValidationFailed);

        // Expired and not-yet-valid leaves.
        for (nb, na, want) in [
            (NOW - 40 * 86400, NOW - 86400, ChainError::Expired),
            (NOW + 86400, NOW + 40 * 86400, ChainError::NotYetValid),
        ] {
            let leaf = f
                .pki
                .issue_leaf(&LeafSpec {
                    not_before: nb,
                    not_after: na,
                    ..LeafSpec::shaken("1234", NOW)
                })
                .unwrap();
            let key = SigningKey::from_pkcs8_der(&leaf.key_pkcs8).unwrap();
            let id = sign(&claims(Attestation::A, NOW), &key, X5U).unwrap();
            let o = f.run_with(
                &[&id],
                &c,
                &mut ReplayCache::default(),
                f.pki.chain_for(&leaf),
            );
            assert_eq!(o.code, Some(StirCode::UnsupportedCredential));
            assert_eq!(failed(&o), &Failure::Chain(want));
        }
    }

    /// A reload replaces the trust list and CRLs of a verifier in use: the next verification
    /// sees a CRL that revokes the leaf, then a trust list without its root.
    #[test]
    fn replaced_material_applies_to_the_next_verification() {
        let f = fixture();
        let id = f.sign(Attestation::A, NOW);
        let c = ctx(NOW, "c");
        let run = || {
            f.verifier
                .verify(&[&id], &c, &mut ReplayCache::default(), |_| {
                    Ok::<_, Infallible>(f.pki.chain())
                })
        };
        assert_eq!(run().verstat, Verstat::TnValidationPassed);
        let root = || TrustStore::from_der_certs([&f.pki.root.der]).unwrap();

        let crl_der = f
            .pki
            .crl(&[&f.pki.leaf.serial], NOW - 60, NOW + 3600)
            .unwrap();
        let crl = StiCrl::from_der(&crl_der, &f.pki.crl_signer.der).unwrap();
        f.verifier.replace_material(root(), vec![crl]);
        let o = run();
        assert_eq!(o.code, Some(StirCode::UnsupportedCredential));
        assert!(matches!(
            failed(&o),
            Failure::Revocation(RevocationError::Revoked(_))
        ));

        let other = TestPki::generate("1234", NOW).unwrap();
        f.verifier.replace_material(
            TrustStore::from_der_certs([&other.root.der]).unwrap(),
            vec![],
        );
        assert!(matches!(failed(&run()), Failure::Chain(_)), "{:?}", run());

        f.verifier.replace_material(root(), vec![]);
        assert_eq!(run().verstat, Verstat::TnValidationPassed);
        assert_eq!(f.verifier.material().crls.len(), 0);
    }

    /// STIR-11: the STI-PA CRL, signed by a separate CRL signer.
    #[test]
    fn revocation() {
        let pki_probe = fixture();
        let make = |revoked: &[&[u8]], this: u64, next: u64, policy: RevocationPolicy| {
            let crl_der = pki_probe.pki.crl(revoked, this, next).unwrap();
            let crl = StiCrl::from_der(&crl_der, &pki_probe.pki.crl_signer.der).unwrap();
            let trust = TrustStore::from_der_certs([&pki_probe.pki.root.der]).unwrap();
            Verifier::new(
                trust,
                vec![crl],
                VerifyPolicy {
                    revocation: policy,
                    ..VerifyPolicy::default()
                },
            )
        };
        let id = pki_probe.sign(Attestation::A, NOW);
        let c = ctx(NOW, "c");
        let run = |v: &Verifier| {
            v.verify(&[&id], &c, &mut ReplayCache::default(), |_| {
                Ok::<_, Infallible>(pki_probe.pki.chain())
            })
        };
        let leaf_serial = pki_probe.pki.leaf.serial.clone();
        let inter_serial = pki_probe.pki.intermediate.serial.clone();

        let o = run(&make(
            &[&leaf_serial],
            NOW - 60,
            NOW + 3600,
            RevocationPolicy::Hard,
        ));
        assert_eq!(o.code, Some(StirCode::UnsupportedCredential));
        assert!(matches!(
            failed(&o),
            Failure::Revocation(RevocationError::Revoked(_))
        ));
        let o = run(&make(
            &[&inter_serial],
            NOW - 60,
            NOW + 3600,
            RevocationPolicy::Soft,
        ));
        assert!(matches!(
            failed(&o),
            Failure::Revocation(RevocationError::Revoked(_))
        ));

        let o = run(&make(&[], NOW - 60, NOW + 3600, RevocationPolicy::Hard));
        assert_eq!(o.verstat, Verstat::TnValidationPassed);

        // Expired CRL: soft warns, hard refuses.
        let o = run(&make(&[], NOW - 7200, NOW - 3600, RevocationPolicy::Soft));
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert!(o
            .verified()
            .unwrap()
            .warnings
            .contains(&Warning::Revocation(RevocationWarning::CrlNotCurrent(
                crate::stir::cert::CrlFreshness::Expired
            ))));
        let o = run(&make(&[], NOW - 7200, NOW - 3600, RevocationPolicy::Hard));
        assert_eq!(o.code, Some(StirCode::UnsupportedCredential));
        assert!(matches!(
            failed(&o),
            Failure::Revocation(RevocationError::CrlNotCurrent(_))
        ));
    }

    /// STIR-12 through the verifier: hard issues give 437, soft ones pass with warnings.
    #[test]
    fn leaf_profile_through_the_verifier() {
        let f = fixture();
        let c = ctx(NOW, "c");
        let base = LeafSpec::shaken("1234", NOW);
        let run = |spec: LeafSpec, attest: Attestation| {
            let leaf = f.pki.issue_leaf(&spec).unwrap();
            let id = match spec.key_type {
                LeafKeyType::P256 => {
                    let key = SigningKey::from_pkcs8_der(&leaf.key_pkcs8).unwrap();
                    sign(&claims(attest, NOW), &key, X5U).unwrap()
                }
                // A P-384 key cannot make ES256 signatures; any signature will do, the profile
                // refuses the certificate first.
                LeafKeyType::P384 => f.sign(attest, NOW),
            };
            f.run_with(
                &[&id],
                &c,
                &mut ReplayCache::default(),
                f.pki.chain_for(&leaf),
            )
        };
        let hard = |spec: LeafSpec| {
            let o = run(spec, Attestation::A);
            assert_eq!(o.code, Some(StirCode::UnsupportedCredential), "{o:?}");
            o
        };
        hard(LeafSpec {
            tn_auth_list: None,
            ..base.clone()
        });
        hard(LeafSpec {
            tn_auth_list: Some(crate::stir::der::tlv(0x16, b"http://x/1")),
            ..base.clone()
        });
        hard(LeafSpec {
            tn_auth_list: Some(crate::stir::der::tlv(
                0x30,
                &crate::stir::der::tlv(0x80, b"1234"),
            )),
            ..base.clone()
        });
        hard(LeafSpec {
            tn_auth_list: Some(crate::stir::cert::encode_tn_auth_list(&[
                TnEntry::Spc("1234".into()),
                TnEntry::Spc("9999".into()),
            ])),
            ..base.clone()
        });
        hard(LeafSpec {
            is_ca: true,
            ..base.clone()
        });
        let o = hard(LeafSpec {
            key_type: LeafKeyType::P384,
            ..base.clone()
        });
        assert_eq!(
            failed(&o),
            &Failure::Profile(vec![ProfileIssue::KeyNotP256("P-384".into())])
        );

        // JWTClaimConstraints permitting only B and C.
        let constrained = LeafSpec {
            jwt_claim_constraints: Some(JwtClaimConstraints {
                must_include: vec![],
                permitted_values: vec![("attest".into(), vec!["B".into(), "C".into()])],
            }),
            ..base.clone()
        };
        let o = hard(constrained.clone());
        assert!(
            matches!(failed(&o), Failure::Profile(i) if matches!(i.as_slice(), [ProfileIssue::ClaimConstraint(_)]))
        );
        let o = run(constrained, Attestation::B);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);

        // Soft: pass with warnings.
        for (spec, want) in [
            (
                LeafSpec {
                    cn: "SHAKEN".into(),
                    ..base.clone()
                },
                ProfileIssue::CnWithoutSpc,
            ),
            (
                LeafSpec {
                    policies: vec![],
                    ..base.clone()
                },
                ProfileIssue::NoCertificatePolicy,
            ),
            (
                LeafSpec {
                    serial: Some(vec![0x57, 0x93, 0x0c, 0xf8, 0x40, 0xa7, 0x9c, 0x3b]),
                    ..base.clone()
                },
                ProfileIssue::SerialTooShort(63),
            ),
        ] {
            let o = run(spec, Attestation::A);
            assert_eq!(o.verstat, Verstat::TnValidationPassed, "{o:?}");
            assert_eq!(o.verified().unwrap().warnings, vec![Warning::Profile(want)]);
        }
    }

    /// STIR-14: replay across Call-IDs within the window.
    #[test]
    fn replay_detection() {
        let f = fixture();
        let id = f.sign(Attestation::A, NOW);
        let mut replay = ReplayCache::default();
        let chain = f.pki.chain();
        let o = f.run_with(&[&id], &ctx(NOW, "call-1"), &mut replay, chain.clone());
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        // Retransmission / fork: same Call-ID.
        let o = f.run_with(&[&id], &ctx(NOW + 2, "call-1"), &mut replay, chain.clone());
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        // Another Call-ID: replay, caught before any fetch.
        let prepared = f.verifier.prepare(&[&id], &ctx(NOW + 3, "call-2"), &replay);
        assert!(prepared.x5u_to_fetch().is_empty());
        let o = f.verifier.finish(
            prepared,
            &mut replay,
            |_| -> Result<Vec<Vec<u8>>, Infallible> { panic!("no fetch") },
        );
        assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));
        assert_eq!(failed(&o), &Failure::Replay);
        // After the window (and with a relaxed freshness to get there) it is forgotten.
        assert_eq!(
            replay.check(
                &B64.decode(id.split(['.', ';']).nth(2).unwrap()).unwrap(),
                "call-3",
                NOW + 120
            ),
            Ok(())
        );
        assert_eq!(replay.len(), 1);
        replay.purge(NOW + 120);
        assert!(replay.is_empty());
    }

    #[test]
    fn replay_cache_is_bounded() {
        let mut r = ReplayCache::new(120, 3);
        for i in 0..10u8 {
            r.check_and_record(&[i], "c", NOW).unwrap();
        }
        assert_eq!(r.len(), 3);
        assert_eq!(r.evicted_early(), 7);
        // Newest kept, oldest gone.
        assert_eq!(r.check(&[9], "other", NOW), Err(ReplayError));
        assert_eq!(r.check(&[0], "other", NOW), Ok(()));
        // Re-recording an expired entry replaces it.
        r.check_and_record(&[9], "x", NOW + 200).unwrap();
        assert_eq!(r.check(&[9], "x", NOW + 201), Ok(()));
        assert_eq!(r.check(&[9], "y", NOW + 201), Err(ReplayError));
        assert_eq!(r.len(), 1);
    }

    /// STIR-15: no Identity header.
    #[test]
    fn missing_identity() {
        let f = fixture();
        let o = f.run(&[], &ctx(NOW, "c"));
        assert_eq!(o.verstat, Verstat::NoTnValidation);
        assert_eq!(o.code, None);
        assert_eq!(o.decisive, None);

        let strict = fixture_with(
            VerifyPolicy {
                require_identity: true,
                ..VerifyPolicy::default()
            },
            vec![],
        );
        let o = strict.run(&[], &ctx(NOW, "c"));
        assert_eq!(o.verstat, Verstat::NoTnValidation);
        assert_eq!(o.code, Some(StirCode::UseIdentityHeader));
        assert_eq!(o.code.unwrap().to_string(), "428 Use Identity Header");
    }

    /// STIR-16: several Identity headers; the shaken one decides, others are reported.
    #[test]
    fn several_identity_headers() {
        let f = fixture();
        let c = ctx(NOW, "c");
        let shaken = f.sign(Attestation::A, NOW);
        // An rcd PASSporT with a broken signature.
        let mut rcd_header = shaken_header(X5U);
        rcd_header["ppt"] = Value::String("rcd".into());
        let rcd_claims =
            json!({"dest":{"tn":[DEST]},"iat":NOW,"orig":{"tn":ORIG},"rcd":{"nam":"Alice"}});
        let rcd_ok =
            custom_identity(&f.key, &rcd_header, &rcd_claims, X5U).replace("ppt=shaken", "ppt=rcd");
        let (jws, params) = rcd_ok.split_once(';').unwrap();
        let rcd_bad = format!("{}AAAA;{params}", &jws[..jws.len() - 4]);

        let o = f.run(&[&rcd_bad, &shaken], &c);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert_eq!(o.code, None);
        assert_eq!(o.decisive, Some(1));
        assert_eq!(o.headers[0].ppt.as_deref(), Some("rcd"));
        assert_eq!(
            o.headers[0].reason_header().as_deref(),
            Some("STIR;cause=438;text=\"Invalid Identity Header\"")
        );
        assert_eq!(o.reason_headers().len(), 1);

        // A valid rcd is verified too (generic PASSporT checks).
        let o = f.run(&[&shaken, &rcd_ok], &c);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert!(o.headers.iter().all(|h| h.result.is_ok()), "{o:?}");
        assert_eq!(o.headers[1].result.as_ref().unwrap().attest(), None);

        // Garbage beside a valid shaken header.
        let o = f.run(&["garbage", &shaken], &c);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert_eq!(o.reason_headers().len(), 1);

        // Only rcd: no TN validation.
        let o = f.run(&[&rcd_ok], &c);
        assert_eq!(o.verstat, Verstat::NoTnValidation);
        // Only garbage: it may have been a shaken header, so 438.
        let o = f.run(&["garbage"], &c);
        assert_eq!(o.verstat, Verstat::TnValidationFailed);
        assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));
        // Failing shaken with a valid rcd: failed.
        let stale = f.sign(Attestation::A, NOW - 100);
        let o = f.run(&[&rcd_ok, &stale], &c);
        assert_eq!(o.verstat, Verstat::TnValidationFailed);
        assert_eq!(o.code, Some(StirCode::StaleDate));
        assert_eq!(o.decisive, Some(1));
        // Two shaken headers, first bad: the good one decides.
        let o = f.run(&[&stale, &shaken], &c);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert_eq!(o.decisive, Some(1));
    }

    #[test]
    fn two_phase_api_fetches_each_x5u_once() {
        let f = fixture();
        let c = ctx(NOW, "c");
        let a = f.sign(Attestation::A, NOW);
        let b = f.sign(Attestation::B, NOW);
        let prepared = f
            .verifier
            .prepare(&[&a, "junk", &b], &c, &ReplayCache::default());
        assert_eq!(prepared.x5u_to_fetch(), vec![X5U.to_string()]);
        let mut calls = 0;
        let o = f
            .verifier
            .finish(prepared, &mut ReplayCache::default(), |_| {
                calls += 1;
                Ok::<_, Infallible>(f.pki.chain())
            });
        assert_eq!(calls, 1);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert_eq!(o.attest(), Some(Attestation::A));
        assert_eq!(o.headers.len(), 3);

        // The fetcher's chain type (`Arc<[CertificateDer]>`) and error type plug in directly.
        use rustls::pki_types::CertificateDer;
        let chain: std::sync::Arc<[CertificateDer<'static>]> = f
            .pki
            .chain()
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let prepared = f.verifier.prepare(&[&a], &c, &ReplayCache::default());
        let o = f
            .verifier
            .finish(prepared, &mut ReplayCache::default(), |_| {
                Ok::<_, std::io::Error>(chain.clone())
            });
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
    }

    #[test]
    fn compact_form_and_header_mismatches() {
        let f = fixture();
        let c = ctx(NOW, "c");
        let full = f.sign(Attestation::A, NOW);
        let sig = full.split(['.', ';']).nth(2).unwrap();
        let compact = format!("..{sig};info=<{X5U}>;ppt=shaken");
        let o = f.run(&[&compact], &c);
        assert_eq!(failed(&o), &Failure::CompactForm);
        assert_eq!(o.code, Some(StirCode::InvalidIdentityHeader));

        let o = f.run(&[&full.replace("ppt=shaken", "ppt=div")], &c);
        assert!(matches!(failed(&o), Failure::PptMismatch { .. }));
        let o = f.run(&[&full.replace("alg=ES256", "alg=RS256")], &c);
        assert_eq!(failed(&o), &Failure::AlgParam("RS256".into()));
        // ppt param absent: the PASSporT header's ppt counts.
        let o = f.run(&[&full.replace(";ppt=shaken", "")], &c);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);

        let mut h = shaken_header(X5U);
        h["alg"] = Value::String("none".into());
        let o = f.run(
            &[&custom_identity(
                &f.key,
                &h,
                &claims(Attestation::A, NOW).to_value(),
                X5U,
            )],
            &c,
        );
        assert!(matches!(
            failed(&o),
            Failure::Passport(PassportError::UnsupportedAlg(_))
        ));
        let mut h = shaken_header(X5U);
        h.as_object_mut().unwrap().remove("x5u");
        let o = f.run(
            &[&custom_identity(
                &f.key,
                &h,
                &claims(Attestation::A, NOW).to_value(),
                X5U,
            )],
            &c,
        );
        assert_eq!(o.code, Some(StirCode::BadIdentityInfo));
    }

    #[test]
    fn offline_helper_and_test_pki_files() {
        let dir =
            std::env::temp_dir().join(format!("riptide-stir-test-{}-{}", std::process::id(), NOW));
        let _ = std::fs::remove_dir_all(&dir);
        let files = create_test_pki_at(&dir, "5678", NOW).unwrap();
        let key = SigningKey::from_pem(&std::fs::read(&files.leaf_key).unwrap()).unwrap();
        let id = sign(&claims(Attestation::B, NOW), &key, X5U).unwrap();
        let chain = std::fs::read(&files.chain).unwrap();
        let trust = std::fs::read(&files.root_cert).unwrap();
        let o =
            verify_identity_offline(&format!("Identity: {id}"), &chain, &trust, NOW + 1).unwrap();
        assert_eq!(o.verstat, Verstat::TnValidationPassed, "{o:?}");
        assert_eq!(o.attest(), Some(Attestation::B));
        assert_eq!(o.verified().unwrap().spc.as_deref(), Some("5678"));
        let o = verify_identity_offline(&id, &chain, &trust, NOW + 61).unwrap();
        assert_eq!(o.code, Some(StirCode::StaleDate));
        // The CRL file loads with its signer.
        let crl = StiCrl::from_pem(
            &std::fs::read(&files.crl).unwrap(),
            &std::fs::read(&files.crl_signer_cert).unwrap(),
        )
        .unwrap();
        assert!(crl.is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.leaf_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
        assert!(verify_identity_offline(&id, b"", &trust, NOW).is_err());
        assert!(create_test_pki_at(&dir, "bad spc", NOW).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Random bytes, truncations and mutated PASSporTs never panic the verifier.
    #[test]
    fn junk_never_panics() {
        let f = fixture();
        let c = ctx(NOW, "c");
        let good = f.sign(Attestation::A, NOW);
        let mut inputs: Vec<String> = (0..good.len()).map(|e| good[..e].to_string()).collect();
        let mut state = 0xdead_beef_cafe_f00du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut b = good.clone().into_bytes();
            let i = (next() % b.len() as u64) as usize;
            b[i] = (next() % 128) as u8;
            inputs.push(String::from_utf8_lossy(&b).into_owned());
            let len = (next() % 600) as usize;
            let junk: Vec<u8> = (0..len).map(|_| (next() & 0xff) as u8).collect();
            inputs.push(String::from_utf8_lossy(&junk).into_owned());
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        for chunk in refs.chunks(5) {
            let o = f
                .verifier
                .verify(chunk, &c, &mut ReplayCache::default(), |_| {
                    Ok::<_, Infallible>(f.pki.chain())
                });
            assert_eq!(o.headers.len(), chunk.len());
        }
        // Many headers: bounded work.
        let many = vec![good.as_str(); 20];
        let o = f.run(&many, &c);
        assert_eq!(o.verstat, Verstat::TnValidationPassed);
        assert_eq!(
            o.headers[MAX_IDENTITY_HEADERS].result,
            Err(Failure::TooManyHeaders)
        );
        // Junk chains.
        let o = f.run_with(
            &[&good],
            &c,
            &mut ReplayCache::default(),
            vec![vec![0x30, 0x03, 1, 2, 3]],
        );
        assert_eq!(o.code, Some(StirCode::UnsupportedCredential));
    }
}
