//! SIP Digest authentication (RFC 3261 §22) with the algorithms of RFC 7616 and RFC 8760,
//! sans-IO.
//!
//! - Parsing and rendering of challenges (`WWW-Authenticate`, `Proxy-Authenticate`) and
//!   credentials (`Authorization`, `Proxy-Authorization`): quoted strings with escapes,
//!   case-insensitive parameter names, white space anywhere between items, several challenges
//!   in one header value, other schemes skipped.
//! - Responses for MD5, SHA-256 and SHA-512-256 with `qop=auth`, and without qop (RFC 2069)
//!   when a server offers none.
//! - Client: [`pick`] chooses the strongest challenge we can answer and [`answer`] computes
//!   the credentials for it.
//! - Server: [`Server`] mints stateless nonces (time, a counter, the client's address and the
//!   realm under an HMAC keyed with a per-process secret, so validating one needs no table),
//!   checks credentials against a [`UserDb`], keeps the highest `nc` per nonce in a bounded
//!   table so that a replayed `nc` fails, and locks a user out after [`MAX_FAILURES`] wrong
//!   responses.
//!
//! Time enters as whole seconds on a clock of the caller's that never goes back; nothing here
//! reads a clock. Nonces are only valid in the process that minted them, so any such clock
//! works, the wall clock included.

use ring::{digest, hmac};
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

/// A nonce older than this (seconds) is stale: the client is challenged again with
/// `stale=true` (IN-05).
pub const NONCE_LIFETIME: u64 = 300;
/// User names (known or not) whose failures are tracked at most; past it, unknown names are
/// not tracked until old records expire.
const MAX_FAILING_USERS: usize = 16_384;

/// Wrong responses for one user, within the lockout time of each other, that lock it (IN-04).
pub const MAX_FAILURES: u32 = 10;
/// Wrong responses from one source address, within the lockout time of each other, that lock
/// the address (IN-04), unless [`UserDb::with_source_failures`] says otherwise: a client that
/// tries many user names stays under each name's [`MAX_FAILURES`], not under this.
pub const MAX_SOURCE_FAILURES: u32 = 30;
/// Source addresses whose failures are tracked at most; past it, new addresses are not tracked
/// until old records expire.
const MAX_FAILING_SOURCES: usize = 16_384;
/// Nonces whose highest `nc` is remembered at most.
pub const NC_TABLE_SIZE: usize = 8192;

/// A digest algorithm riptide computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
    Sha512_256,
}

impl Algorithm {
    /// Strongest first: the order challenges are offered in (RFC 8760 §2.4) and answered by.
    pub const PREFERENCE: [Algorithm; 3] =
        [Algorithm::Sha512_256, Algorithm::Sha256, Algorithm::Md5];

    /// The `algorithm` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha512_256 => "SHA-512-256",
        }
    }

    /// The algorithm an `algorithm` parameter names; absent means MD5 (RFC 3261 §25.1).
    /// The `-sess` variants are not supported.
    pub fn from_param(p: Option<&str>) -> Option<Algorithm> {
        let Some(p) = p else {
            return Some(Algorithm::Md5);
        };
        Algorithm::PREFERENCE
            .into_iter()
            .find(|a| a.token().eq_ignore_ascii_case(p.trim()))
    }

    /// Length of a hash in hex.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 | Algorithm::Sha512_256 => 64,
        }
    }

    fn index(self) -> usize {
        match self {
            Algorithm::Sha512_256 => 0,
            Algorithm::Sha256 => 1,
            Algorithm::Md5 => 2,
        }
    }

    /// The lower-case hex hash of `data`.
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => {
                use md5::Digest as _;
                hex(&md5::Md5::digest(data))
            }
            Algorithm::Sha256 => hex(digest::digest(&digest::SHA256, data).as_ref()),
            Algorithm::Sha512_256 => hex(digest::digest(&digest::SHA512_256, data).as_ref()),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `H(username ":" realm ":" password)`.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    alg.hex(format!("{username}:{realm}:{password}").as_bytes())
}

/// The `response` value: with `qop=auth` (`Some((nc, cnonce))`, the nc as it is written in the
/// credentials) `H(HA1:nonce:nc:cnonce:auth:HA2)`, else `H(HA1:nonce:HA2)`; `HA2 =
/// H(method:uri)`.
pub fn response(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    auth: Option<(&str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = alg.hex(format!("{method}:{uri}").as_bytes());
    let kd = match auth {
        Some((nc, cnonce)) => format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
        None => format!("{ha1}:{nonce}:{ha2}"),
    };
    alg.hex(kd.as_bytes())
}

/// Equal lengths and bytes, in time independent of where they differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// ------------------------------------------------------------------ syntax

/// Why a header value is not a usable challenge or credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed {0}")]
    Syntax(&'static str),
    #[error("parameter {0:?} appears twice")]
    Duplicate(String),
    #[error("parameter {0} is missing")]
    Missing(&'static str),
    #[error("not a Digest credential")]
    NotDigest,
}

/// One `scheme param=value, ...` item of an authentication header, names lower-cased.
#[derive(Debug)]
struct AuthItem {
    scheme: String,
    params: Vec<(String, String)>,
}

impl AuthItem {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

impl Cursor<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    /// A quoted string (RFC 3261 §25.1, with quoted-pair escapes) after its opening quote.
    fn quoted(&mut self) -> Result<String, ParseError> {
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(ParseError::Syntax("quoted string (no closing quote)")),
                Some(b'"') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&c) = self.s.get(self.i + 1) else {
                        return Err(ParseError::Syntax("quoted string (trailing backslash)"));
                    };
                    out.push(c);
                    self.i += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| ParseError::Syntax("quoted string (not UTF-8)"))
    }
    /// An unquoted value: anything up to white space or a comma (lenient: peers write URIs
    /// unquoted).
    fn bare(&mut self) -> Option<String> {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|b| !matches!(b, b',' | b' ' | b'\t' | b'\r' | b'\n' | b'"'))
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
}

/// Splits a header value into its authentication items (several challenges may share one
/// value, RFC 7235 §4.1).
fn parse_items(value: &str) -> Result<Vec<AuthItem>, ParseError> {
    let mut c = Cursor {
        s: value.as_bytes(),
        i: 0,
    };
    let mut items: Vec<AuthItem> = Vec::new();
    loop {
        c.ws();
        while c.peek() == Some(b',') {
            c.i += 1;
            c.ws();
        }
        if c.peek().is_none() {
            break;
        }
        let scheme = c.token().ok_or(ParseError::Syntax("scheme"))?;
        let mut item = AuthItem {
            scheme,
            params: Vec::new(),
        };
        loop {
            c.ws();
            let before = c.i;
            let Some(name) = c.token() else {
                if c.peek().is_none() || c.peek() == Some(b',') {
                    break;
                }
                return Err(ParseError::Syntax("parameter name"));
            };
            c.ws();
            if c.peek() != Some(b'=') {
                // `name` is the next item's scheme.
                c.i = before;
                break;
            }
            c.i += 1;
            c.ws();
            let value = if c.peek() == Some(b'"') {
                c.i += 1;
                c.quoted()?
            } else {
                c.bare().ok_or(ParseError::Syntax("parameter value"))?
            };
            let name = name.to_ascii_lowercase();
            if item.params.iter().any(|(n, _)| *n == name) {
                return Err(ParseError::Duplicate(name));
            }
            item.params.push((name, value));
            c.ws();
            match c.peek() {
                None => break,
                Some(b',') => c.i += 1,
                Some(_) => return Err(ParseError::Syntax("separator (expected a comma)")),
            }
        }
        items.push(item);
    }
    Ok(items)
}

/// `"value"` with `"` and `\` escaped (RFC 3261 §25.1 quoted-pair); line breaks become
/// spaces so that no value can end the header.
fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for ch in v.chars() {
        match ch {
            '"' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Digest challenge (`WWW-Authenticate` / `Proxy-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    /// As written; absent means MD5.
    pub algorithm: Option<String>,
    /// The offered qop values, lower-cased; empty when the server offers none (RFC 2069).
    pub qop: Vec<String>,
    pub opaque: Option<String>,
    pub stale: bool,
}

impl Challenge {
    /// The algorithm, when riptide computes it.
    pub fn algorithm(&self) -> Option<Algorithm> {
        Algorithm::from_param(self.algorithm.as_deref())
    }

    /// `Digest realm="...", nonce="...", ...`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "Digest realm={}, nonce={}",
            quote(&self.realm),
            quote(&self.nonce)
        );
        if let Some(o) = &self.opaque {
            let _ = write!(s, ", opaque={}", quote(o));
        }
        if self.stale {
            s.push_str(", stale=true");
        }
        if let Some(a) = &self.algorithm {
            let _ = write!(s, ", algorithm={a}");
        }
        if !self.qop.is_empty() {
            let _ = write!(s, ", qop={}", quote(&self.qop.join(",")));
        }
        s
    }
}

/// The Digest challenges of one header value; other schemes (Basic, Bearer...) are skipped.
pub fn parse_challenges(value: &str) -> Result<Vec<Challenge>, ParseError> {
    let mut out = Vec::new();
    for item in parse_items(value)? {
        if !item.scheme.eq_ignore_ascii_case("Digest") {
            continue;
        }
        out.push(Challenge {
            realm: item
                .get("realm")
                .ok_or(ParseError::Missing("realm"))?
                .to_string(),
            nonce: item
                .get("nonce")
                .ok_or(ParseError::Missing("nonce"))?
                .to_string(),
            algorithm: item.get("algorithm").map(str::to_string),
            qop: item
                .get("qop")
                .map(|q| {
                    q.split(',')
                        .map(|v| v.trim().to_ascii_lowercase())
                        .filter(|v| !v.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            opaque: item.get("opaque").map(str::to_string),
            stale: item
                .get("stale")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        });
    }
    Ok(out)
}

/// The Digest challenges of several header values (one per header line), skipping values that
/// do not parse.
pub fn challenges_of<S: AsRef<str>>(values: &[S]) -> Vec<Challenge> {
    values
        .iter()
        .filter_map(|v| parse_challenges(v.as_ref()).ok())
        .flatten()
        .collect()
}

/// Digest credentials (`Authorization` / `Proxy-Authorization`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// As written; absent means MD5.
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    /// As written (8 hex digits).
    pub nc: Option<String>,
}

impl Credentials {
    pub fn algorithm(&self) -> Option<Algorithm> {
        Algorithm::from_param(self.algorithm.as_deref())
    }

    /// `Digest username="...", ...`; qop and nc unquoted as RFC 3261 §25.1 writes them.
    pub fn render(&self) -> String {
        let mut s = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response={}",
            quote(&self.username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(&self.uri),
            quote(&self.response)
        );
        if let Some(a) = &self.algorithm {
            let _ = write!(s, ", algorithm={a}");
        }
        if let Some(c) = &self.cnonce {
            let _ = write!(s, ", cnonce={}", quote(c));
        }
        if let Some(o) = &self.opaque {
            let _ = write!(s, ", opaque={}", quote(o));
        }
        if let Some(q) = &self.qop {
            let _ = write!(s, ", qop={q}");
        }
        if let Some(n) = &self.nc {
            let _ = write!(s, ", nc={n}");
        }
        s
    }
}

/// One Digest credential. `qop` brings `cnonce` and `nc` with it (RFC 3261 §22.4).
pub fn parse_credentials(value: &str) -> Result<Credentials, ParseError> {
    let mut items = parse_items(value)?.into_iter();
    let item = items.next().ok_or(ParseError::NotDigest)?;
    if !item.scheme.eq_ignore_ascii_case("Digest") || items.next().is_some() {
        return Err(ParseError::NotDigest);
    }
    let req = |n: &'static str| {
        item.get(n)
            .map(str::to_string)
            .ok_or(ParseError::Missing(n))
    };
    let opt = |n: &str| item.get(n).map(str::to_string);
    let c = Credentials {
        username: req("username")?,
        realm: req("realm")?,
        nonce: req("nonce")?,
        uri: req("uri")?,
        response: req("response")?,
        algorithm: opt("algorithm"),
        cnonce: opt("cnonce"),
        opaque: opt("opaque"),
        qop: opt("qop"),
        nc: opt("nc"),
    };
    if c.qop.is_some() {
        if c.cnonce.is_none() {
            return Err(ParseError::Missing("cnonce"));
        }
        if c.nc.is_none() {
            return Err(ParseError::Missing("nc"));
        }
    }
    Ok(c)
}

// ------------------------------------------------------------------ client

/// Our username and password toward a server that challenges us. Debug never shows the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    password: String,
}

impl Login {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Login {
        Login {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The challenge to answer: the strongest algorithm riptide computes, among challenges that
/// offer `qop=auth` or no qop at all (`auth-int` alone is not answered). Ties go to the first.
pub fn pick(challenges: &[Challenge]) -> Option<(&Challenge, Algorithm)> {
    let usable = |c: &Challenge| c.qop.is_empty() || c.qop.iter().any(|q| q == "auth");
    Algorithm::PREFERENCE.into_iter().find_map(|alg| {
        challenges
            .iter()
            .find(|c| usable(c) && c.algorithm() == Some(alg))
            .map(|c| (c, alg))
    })
}

/// Credentials answering `ch` (computed with `alg`) for a `method` request to `uri`; with
/// `qop=auth` when the challenge offers it, using `cnonce` and the nonce count `nc`.
pub fn answer(
    ch: &Challenge,
    alg: Algorithm,
    login: &Login,
    method: &str,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> Credentials {
    let ha1 = ha1(alg, &login.username, &ch.realm, &login.password);
    let qop = !ch.qop.is_empty();
    let nc = format!("{nc:08x}");
    let auth = qop.then_some((nc.as_str(), cnonce));
    Credentials {
        username: login.username.clone(),
        realm: ch.realm.clone(),
        nonce: ch.nonce.clone(),
        uri: uri.to_string(),
        response: response(alg, &ha1, &ch.nonce, auth, method, uri),
        algorithm: ch.algorithm.clone(),
        cnonce: qop.then(|| cnonce.to_string()),
        opaque: ch.opaque.clone(),
        qop: qop.then(|| "auth".to_string()),
        nc: qop.then_some(nc),
    }
}

// ------------------------------------------------------------------ server

/// How a configured user proves itself: a password, or precomputed HA1 values (hex) for
/// some algorithms (RFC 8760 §2.1: one HA1 per algorithm).
#[derive(Clone, PartialEq, Eq)]
pub enum UserSecret {
    Password(String),
    Ha1(Vec<(Algorithm, String)>),
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSecret::Password(_) => f.write_str("Password(..)"),
            UserSecret::Ha1(v) => {
                let algs: Vec<&str> = v.iter().map(|(a, _)| a.token()).collect();
                write!(f, "Ha1({algs:?})")
            }
        }
    }
}

struct User {
    name: String,
    /// HA1 per algorithm, indexed like [`Algorithm::PREFERENCE`].
    ha1: [Option<String>; 3],
}

/// The users of one realm. Passwords are turned into HA1 values at construction and not kept;
/// Debug shows names only.
pub struct UserDb {
    realm: String,
    users: Vec<User>,
    offered: Vec<Algorithm>,
    lockout_secs: u64,
    /// Wrong responses that lock a source address; 0: addresses are not locked.
    source_failures: u32,
}

impl fmt::Debug for UserDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        f.debug_struct("UserDb")
            .field("realm", &self.realm)
            .field("users", &names)
            .field("offered", &self.offered)
            .field("lockout_secs", &self.lockout_secs)
            .field("source_failures", &self.source_failures)
            .finish()
    }
}

impl UserDb {
    /// The algorithms offered are those every user can be checked with (a user given only an
    /// MD5 HA1 limits the realm to MD5), strongest first. `lockout_secs`: how long
    /// [`MAX_FAILURES`] wrong responses lock a user.
    pub fn new(
        realm: impl Into<String>,
        users: Vec<(String, UserSecret)>,
        lockout_secs: u64,
    ) -> Result<UserDb, String> {
        let realm = realm.into();
        if users.is_empty() {
            return Err("no users".into());
        }
        let mut out = Vec::with_capacity(users.len());
        for (name, secret) in users {
            if out.iter().any(|u: &User| u.name == name) {
                return Err(format!("user {name:?} is listed twice"));
            }
            let mut ha1s: [Option<String>; 3] = Default::default();
            match secret {
                UserSecret::Password(p) => {
                    for a in Algorithm::PREFERENCE {
                        ha1s[a.index()] = Some(ha1(a, &name, &realm, &p));
                    }
                }
                UserSecret::Ha1(v) => {
                    for (a, h) in v {
                        let h = h.trim().to_ascii_lowercase();
                        if h.len() != a.hex_len() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(format!(
                                "user {name:?}: the {a} HA1 must be {} hex digits",
                                a.hex_len()
                            ));
                        }
                        ha1s[a.index()] = Some(h);
                    }
                }
            }
            out.push(User { name, ha1: ha1s });
        }
        let offered: Vec<Algorithm> = Algorithm::PREFERENCE
            .into_iter()
            .filter(|a| out.iter().all(|u| u.ha1[a.index()].is_some()))
            .collect();
        if offered.is_empty() {
            return Err("the users' HA1 values share no algorithm".into());
        }
        Ok(UserDb {
            realm,
            users: out,
            offered,
            lockout_secs,
            source_failures: MAX_SOURCE_FAILURES,
        })
    }

    /// Wrong responses from one address that lock it out ([`MAX_SOURCE_FAILURES`] unless set
    /// here); 0 turns the lockout per address off.
    pub fn with_source_failures(mut self, n: u32) -> UserDb {
        self.source_failures = n;
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The algorithms challenged with, strongest first.
    pub fn offered(&self) -> &[Algorithm] {
        &self.offered
    }

    fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// What a server makes of a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Authenticated as this user.
    Ok { user: String },
    /// Challenge again (401). `stale`: the response was right but the nonce was not (expired,
    /// minted for another client or process, or its `nc` already used), so the client may
    /// retry without asking for the password again.
    Challenge { stale: bool, why: &'static str },
    /// The user is locked out (403); from the attempt that reached [`MAX_FAILURES`] on.
    Locked { user: String },
    /// The client's address is locked out (403), whatever user it names; from the attempt that
    /// reached [`MAX_SOURCE_FAILURES`] on.
    SourceLocked,
}

#[derive(Debug)]
struct Failures {
    count: u32,
    since: u64,
    locked_until: Option<u64>,
}

impl Failures {
    /// No failure yet; the window starts at `now`.
    fn start(now: u64) -> Failures {
        Failures {
            count: 0,
            since: now,
            locked_until: None,
        }
    }

    /// Counts one more failure at `now`, the count starting over once `lockout` has passed
    /// since its first; true when it reaches `max` (and locks for `lockout`).
    fn add(&mut self, now: u64, lockout: u64, max: u32) -> bool {
        if now.saturating_sub(self.since) > lockout {
            self.count = 0;
            self.since = now;
        }
        self.count += 1;
        if self.count >= max {
            self.locked_until = Some(now.saturating_add(lockout));
        }
        self.count >= max
    }

    /// Whether the record still matters at `now`: a lock in force, or failures that can still
    /// add up to one.
    fn live(&self, now: u64, lockout: u64) -> bool {
        match self.locked_until {
            Some(until) => now < until,
            None => now.saturating_sub(self.since) <= lockout,
        }
    }
}

/// The lock of `key` in `map` if one is in force at `now`; an expired lock is forgotten.
fn locked<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Failures>, key: &K, now: u64) -> bool {
    match map.get(key).and_then(|f| f.locked_until) {
        Some(until) if now < until => true,
        Some(_) => {
            map.remove(key);
            false
        }
        None => false,
    }
}

/// Server side: nonce minting and checking, nc tracking and lockouts. One per process.
pub struct Server {
    key: hmac::Key,
    counter: u64,
    /// Nonce → (minted at, highest nc accepted).
    nc: HashMap<String, (u64, u32)>,
    nc_capacity: usize,
    /// Nonces minted at or before this time may have been dropped from `nc`: without an entry
    /// they are treated as used.
    nc_floor: Option<u64>,
    /// (realm, user) → recent failures.
    failures: HashMap<(String, String), Failures>,
    /// Client address → recent failures, whatever user they named.
    source_failures: HashMap<IpAddr, Failures>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("nonces", &self.nc.len())
            .field("failing_users", &self.failures.len())
            .field("failing_sources", &self.source_failures.len())
            .finish_non_exhaustive()
    }
}

const NONCE_RAW: usize = 8 + 8 + 16;

impl Server {
    /// `secret` keys the nonce HMAC: random, per process, never shown.
    pub fn new(secret: &[u8]) -> Server {
        Server {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            counter: 0,
            nc: HashMap::new(),
            nc_capacity: NC_TABLE_SIZE,
            nc_floor: None,
            failures: HashMap::new(),
            source_failures: HashMap::new(),
        }
    }

    /// The same with a smaller nc table (tests of its bound).
    pub fn with_nc_capacity(mut self, n: usize) -> Server {
        self.nc_capacity = n.max(1);
        self
    }

    fn tag(&self, ts: u64, ctr: u64, realm: &str, client: IpAddr) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(b"riptide sip digest nonce\0");
        ctx.update(&ts.to_be_bytes());
        ctx.update(&ctr.to_be_bytes());
        ctx.update(realm.as_bytes());
        ctx.update(b"\0");
        match client {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.sign()
    }

    /// A new nonce for `client` in `realm`: base64url of time, counter and a truncated HMAC.
    pub fn nonce(&mut self, realm: &str, now: u64, client: IpAddr) -> String {
        use base64::Engine as _;
        self.counter += 1;
        let ctr = self.counter;
        let tag = self.tag(now, ctr, realm, client);
        let mut raw = Vec::with_capacity(NONCE_RAW);
        raw.extend_from_slice(&now.to_be_bytes());
        raw.extend_from_slice(&ctr.to_be_bytes());
        raw.extend_from_slice(&tag.as_ref()[..16]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// When a nonce was minted, if we minted it for this realm and client.
    fn nonce_time(&self, nonce: &str, realm: &str, client: IpAddr) -> Option<u64> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(nonce)
            .ok()?;
        if raw.len() != NONCE_RAW {
            return None;
        }
        let ts = u64::from_be_bytes(raw[..8].try_into().ok()?);
        let ctr = u64::from_be_bytes(raw[8..16].try_into().ok()?);
        let tag = self.tag(ts, ctr, realm, client);
        ct_eq(&tag.as_ref()[..16], &raw[16..]).then_some(ts)
    }

    /// The challenges of a 401: one per offered algorithm, strongest first, sharing one fresh
    /// nonce, each with `qop="auth"`.
    pub fn challenges(
        &mut self,
        db: &UserDb,
        now: u64,
        client: IpAddr,
        stale: bool,
    ) -> Vec<Challenge> {
        let nonce = self.nonce(&db.realm, now, client);
        db.offered
            .iter()
            .map(|a| Challenge {
                realm: db.realm.clone(),
                nonce: nonce.clone(),
                algorithm: Some(a.token().to_string()),
                qop: vec!["auth".into()],
                opaque: None,
                stale,
            })
            .collect()
    }

    /// Checks `creds` (already matched to `db`'s realm and to the Request-URI) of a `method`
    /// request from `client`.
    pub fn check(
        &mut self,
        db: &UserDb,
        creds: &Credentials,
        method: &str,
        now: u64,
        client: IpAddr,
    ) -> Check {
        let challenge = |why| Check::Challenge { stale: false, why };
        // A locked address is answered before its credentials are looked at: its attempts no
        // longer count against the users it names.
        if locked(&mut self.source_failures, &client, now) {
            return Check::SourceLocked;
        }
        // Unknown names fail and lock exactly like known ones, so the answers do not tell
        // which user names exist.
        let fkey = (db.realm.clone(), creds.username.clone());
        if locked(&mut self.failures, &fkey, now) {
            return Check::Locked {
                user: creds.username.clone(),
            };
        }
        let Some(user) = db.user(&creds.username) else {
            if self.failures.len() >= MAX_FAILING_USERS && !self.failures.contains_key(&fkey) {
                self.failures.retain(|_, f| f.live(now, db.lockout_secs));
            }
            if self.failures.len() >= MAX_FAILING_USERS && !self.failures.contains_key(&fkey) {
                // Not tracked by name: the address still counts it.
                if self.source_failed(db, client, now) {
                    return Check::SourceLocked;
                }
                return challenge("unknown user");
            }
            return self.failed(db, fkey, client, now);
        };
        let Some(alg) = creds.algorithm().filter(|a| db.offered.contains(a)) else {
            return challenge("algorithm not offered");
        };
        let (Some(qop), Some(nc_text), Some(cnonce)) = (&creds.qop, &creds.nc, &creds.cnonce)
        else {
            return challenge("qop=auth is required");
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return challenge("qop=auth is required");
        }
        let nc = match u32::from_str_radix(nc_text, 16) {
            Ok(n) if n > 0 && nc_text.len() == 8 => n,
            _ => return challenge("malformed nc"),
        };
        let Some(ha1) = user.ha1[alg.index()].as_deref() else {
            return challenge("algorithm not offered");
        };
        let expected = response(
            alg,
            ha1,
            &creds.nonce,
            Some((nc_text, cnonce)),
            method,
            &creds.uri,
        );
        let given = creds.response.to_ascii_lowercase();
        if !ct_eq(expected.as_bytes(), given.as_bytes()) {
            return self.failed(db, fkey, client, now);
        }
        // The response is right; the nonce must be ours, fresh and its nc new.
        let stale = |why| Check::Challenge { stale: true, why };
        let Some(ts) = self.nonce_time(&creds.nonce, &db.realm, client) else {
            return stale("nonce not minted here for this client");
        };
        if ts > now || now - ts > NONCE_LIFETIME {
            return stale("nonce expired");
        }
        match self.nc.get(&creds.nonce) {
            Some(&(_, highest)) if nc <= highest => return stale("nc replayed"),
            None if self.nc_floor.is_some_and(|f| ts <= f) => {
                return stale("nonce no longer tracked")
            }
            _ => {}
        }
        self.remember_nc(&creds.nonce, ts, nc, now);
        self.failures.remove(&fkey);
        Check::Ok {
            user: user.name.clone(),
        }
    }

    /// Whether `client`'s address is locked out at `now` (it gets 403 whatever it sends).
    pub fn source_locked(&mut self, client: IpAddr, now: u64) -> bool {
        locked(&mut self.source_failures, &client, now)
    }

    /// A wrong response for `fkey` from `client`: counted against both.
    fn failed(&mut self, db: &UserDb, fkey: (String, String), client: IpAddr, now: u64) -> Check {
        let lockout = db.lockout_secs;
        let source_locked = self.source_failed(db, client, now);
        let user = fkey.1.clone();
        let f = self
            .failures
            .entry(fkey)
            .or_insert_with(|| Failures::start(now));
        if f.add(now, lockout, MAX_FAILURES) {
            return Check::Locked { user };
        }
        if source_locked {
            return Check::SourceLocked;
        }
        Check::Challenge {
            stale: false,
            why: "wrong response",
        }
    }

    /// Counts a wrong response from `client`; true when it locks the address.
    fn source_failed(&mut self, db: &UserDb, client: IpAddr, now: u64) -> bool {
        if db.source_failures == 0 {
            return false;
        }
        let lockout = db.lockout_secs;
        let map = &mut self.source_failures;
        if map.len() >= MAX_FAILING_SOURCES && !map.contains_key(&client) {
            map.retain(|_, f| f.live(now, lockout));
            if map.len() >= MAX_FAILING_SOURCES {
                return false;
            }
        }
        map.entry(client)
            .or_insert_with(|| Failures::start(now))
            .add(now, lockout, db.source_failures)
    }

    fn remember_nc(&mut self, nonce: &str, ts: u64, nc: u32, now: u64) {
        if let Some(e) = self.nc.get_mut(nonce) {
            e.1 = nc;
            return;
        }
        if self.nc.len() >= self.nc_capacity {
            self.nc
                .retain(|_, (t, _)| now.saturating_sub(*t) <= NONCE_LIFETIME);
        }
        while self.nc.len() >= self.nc_capacity {
            // Still full of live nonces: forget the oldest, and from now on treat every nonce
            // that old or older without an entry as used.
            let Some((oldest, t)) = self
                .nc
                .iter()
                .min_by_key(|(_, (t, _))| *t)
                .map(|(n, (t, _))| (n.clone(), *t))
            else {
                break;
            };
            self.nc.remove(&oldest);
            self.nc_floor = Some(self.nc_floor.map_or(t, |f| f.max(t)));
        }
        self.nc.insert(nonce.to_string(), (ts, nc));
    }

    /// Nonces whose nc is remembered (for tests and metrics).
    pub fn tracked_nonces(&self) -> usize {
        self.nc.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "http-auth@example.org";
    const NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    const OPAQUE: &str = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS";

    /// RFC 7616 §3.9.1: the same request answered with SHA-256 and with MD5.
    #[test]
    fn rfc7616_example_responses() {
        for (alg, want) in [
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let h = ha1(alg, "Mufasa", REALM, "Circle of Life");
            let r = response(
                alg,
                &h,
                NONCE,
                Some(("00000001", CNONCE)),
                "GET",
                "/dir/index.html",
            );
            assert_eq!(r, want, "{alg}");
            // The same through the client API, from the example's challenge text.
            let ch = format!(
                "Digest\r\n realm=\"{REALM}\",\r\n qop=\"auth, auth-int\",\r\n algorithm={},\r\n \
                 nonce=\"{NONCE}\",\r\n opaque=\"{OPAQUE}\"",
                alg.token()
            );
            let ch = parse_challenges(&ch).unwrap();
            let login = Login::new("Mufasa", "Circle of Life");
            let c = answer(&ch[0], alg, &login, "GET", "/dir/index.html", CNONCE, 1);
            assert_eq!(c.response, want);
            assert_eq!(c.nc.as_deref(), Some("00000001"));
            assert_eq!(c.opaque.as_deref(), Some(OPAQUE));
            assert_eq!(parse_credentials(&c.render()).unwrap(), c);
        }
    }

    /// RFC 2617 §3.5 (qop=auth) and the same without qop (RFC 2069 form).
    #[test]
    fn rfc2617_example_and_legacy_no_qop() {
        let h = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        let nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093";
        assert_eq!(
            response(
                Algorithm::Md5,
                &h,
                nonce,
                Some(("00000001", "0a4f113b")),
                "GET",
                "/dir/index.html"
            ),
            "6629fae49393a05397450978507c4ef1"
        );
        let legacy = format!("Digest realm=\"testrealm@host.com\", nonce=\"{nonce}\"");
        let ch = parse_challenges(&legacy).unwrap();
        let (c, alg) = pick(&ch).expect("MD5 without qop is answered");
        assert_eq!(alg, Algorithm::Md5);
        let creds = answer(
            c,
            alg,
            &Login::new("Mufasa", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            "unused",
            1,
        );
        assert_eq!(creds.response, "670fd8c2df070c60b045671b8b24ff02");
        assert_eq!(
            (&creds.qop, &creds.nc, &creds.cnonce),
            (&None, &None, &None)
        );
        let text = creds.render();
        assert!(!text.contains("qop") && !text.contains("nc="), "{text}");
    }

    #[test]
    fn sha512_256_is_the_truncated_sha512_variant() {
        // FIPS 180-4 example "abc".
        assert_eq!(
            Algorithm::Sha512_256.hex(b"abc"),
            "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
        );
        assert_eq!(
            Algorithm::from_param(Some("sha-512-256")),
            Some(Algorithm::Sha512_256)
        );
        assert_eq!(Algorithm::from_param(None), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_param(Some("MD5-sess")), None);
    }

    #[test]
    fn challenge_syntax() {
        // Escapes, case-insensitive names, LWS around '=' and ',', two challenges in one value
        // and a foreign scheme between them.
        let v = "Digest REALM = \"a \\\"q\\\" \\\\ b\" ,Nonce=\"n1\",  Algorithm=SHA-256,qop=\"auth\", \
                 Basic realm=\"x\", digest realm=\"r2\", nonce=n2, stale=TRUE";
        let ch = parse_challenges(v).unwrap();
        assert_eq!(ch.len(), 2, "{ch:?}");
        assert_eq!(ch[0].realm, "a \"q\" \\ b");
        assert_eq!(ch[0].algorithm(), Some(Algorithm::Sha256));
        assert_eq!(ch[0].qop, vec!["auth"]);
        assert!(!ch[0].stale);
        assert_eq!((ch[1].realm.as_str(), ch[1].nonce.as_str()), ("r2", "n2"));
        assert!(ch[1].stale);
        assert_eq!(ch[1].algorithm(), Some(Algorithm::Md5));
        // Rendering quotes what needs it and parses back to the same.
        for c in &ch {
            assert_eq!(parse_challenges(&c.render()).unwrap(), vec![c.clone()]);
        }
        assert!(ch[0].render().contains("realm=\"a \\\"q\\\" \\\\ b\""));
        // Only other schemes: nothing to answer.
        assert!(parse_challenges("Bearer realm=\"x\"").unwrap().is_empty());
        for (bad, want) in [
            (
                "Digest realm=\"x",
                ParseError::Syntax("quoted string (no closing quote)"),
            ),
            (
                "Digest realm=\"x\", realm=\"y\", nonce=1",
                ParseError::Duplicate("realm".into()),
            ),
            ("Digest realm=\"x\"", ParseError::Missing("nonce")),
            (
                "Digest realm=\"x\" nonce=\"y\"",
                ParseError::Syntax("separator (expected a comma)"),
            ),
            ("Digest realm=", ParseError::Syntax("parameter value")),
            (
                "Digest realm=\"x\", \"y\"",
                ParseError::Syntax("parameter name"),
            ),
        ] {
            assert_eq!(parse_challenges(bad), Err(want), "{bad}");
        }
    }

    #[test]
    fn credentials_syntax() {
        let v = "Digest username=\"bob\",realm=\"r\",nonce=\"n\",uri=\"sip:a@b;transport=udp\",\
                 response=\"abc\",QOP=auth,NC=00000002,cnonce=\"c\",algorithm=MD5";
        let c = parse_credentials(v).unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.uri, "sip:a@b;transport=udp");
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.nc.as_deref(), Some("00000002"));
        assert_eq!(parse_credentials(&c.render()).unwrap(), c);
        // Lenient: an unquoted URI.
        let c = parse_credentials(
            "Digest username=\"bob\", realm=\"r\", nonce=\"n\", uri=sip:a@b, response=\"x\"",
        )
        .unwrap();
        assert_eq!(c.uri, "sip:a@b");
        assert_eq!(
            parse_credentials("Basic dXNlcjpwYXNz"),
            Err(ParseError::NotDigest)
        );
        assert_eq!(
            parse_credentials("Digest username=\"b\", realm=\"r\", nonce=\"n\", uri=\"u\""),
            Err(ParseError::Missing("response"))
        );
        assert_eq!(
            parse_credentials(
                "Digest username=\"b\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", qop=auth, cnonce=\"c\""
            ),
            Err(ParseError::Missing("nc"))
        );
    }

    #[test]
    fn the_strongest_usable_challenge_is_answered() {
        let mk = |alg: &str, qop: &str| {
            format!("Digest realm=\"r\", nonce=\"n-{alg}\", algorithm={alg}, qop=\"{qop}\"")
        };
        let all = challenges_of(&[
            mk("MD5", "auth"),
            mk("SHA-256", "auth"),
            mk("SHA-512-256", "auth"),
        ]);
        assert_eq!(pick(&all).unwrap().1, Algorithm::Sha512_256);
        // auth-int only cannot be answered; -sess and unknown algorithms are skipped.
        let some = challenges_of(&[
            mk("SHA-512-256", "auth-int"),
            mk("SHA-256-sess", "auth"),
            mk("SHA3", "auth"),
            mk("MD5", "auth-int,auth"),
        ]);
        let (c, alg) = pick(&some).unwrap();
        assert_eq!((alg, c.nonce.as_str()), (Algorithm::Md5, "n-MD5"));
        assert!(pick(&challenges_of(&[mk("SHA-256", "auth-int")])).is_none());
        // A header that does not parse is skipped, not fatal.
        assert_eq!(
            challenges_of(&["Digest realm=\"", &mk("SHA-256", "auth")]).len(),
            1
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let l = Login::new("trunk", "hunter2-secret");
        assert!(!format!("{l:?}").contains("hunter2"));
        let db = UserDb::new(
            "r",
            vec![("pbx".into(), UserSecret::Password("hunter2-secret".into()))],
            60,
        )
        .unwrap();
        let shown = format!("{db:?}");
        assert!(
            shown.contains("pbx") && !shown.contains("hunter2"),
            "{shown}"
        );
        let h = ha1(Algorithm::Md5, "pbx", "r", "hunter2-secret");
        assert!(!shown.contains(&h), "{shown}");
        let s = format!("{:?}", UserSecret::Password("hunter2-secret".into()));
        assert!(!s.contains("hunter2"));
    }

    // --- server

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
    const URI: &str = "sip:+15551230000@gw.example";

    fn db() -> UserDb {
        UserDb::new(
            "gw.example",
            vec![
                ("pbx".into(), UserSecret::Password("s3cret".into())),
                (
                    "old".into(),
                    UserSecret::Ha1(vec![
                        (
                            Algorithm::Md5,
                            ha1(Algorithm::Md5, "old", "gw.example", "pw"),
                        ),
                        (
                            Algorithm::Sha256,
                            ha1(Algorithm::Sha256, "old", "gw.example", "pw").to_uppercase(),
                        ),
                    ]),
                ),
            ],
            600,
        )
        .unwrap()
    }

    fn server() -> Server {
        Server::new(b"0123456789abcdef0123456789abcdef")
    }

    /// Answers the challenge for `alg` among `chs` as `user`/`pw`.
    fn creds(chs: &[Challenge], alg: Algorithm, user: &str, pw: &str, nc: u32) -> Credentials {
        let ch = chs.iter().find(|c| c.algorithm() == Some(alg)).unwrap();
        answer(ch, alg, &Login::new(user, pw), "INVITE", URI, "cn1", nc)
    }

    #[test]
    fn challenges_list_the_algorithms_every_user_has_strongest_first() {
        let mut s = server();
        let d = db();
        // "old" has no SHA-512-256 HA1: the realm offers SHA-256 and MD5.
        let chs = s.challenges(&d, 100, CLIENT, false);
        let algs: Vec<_> = chs.iter().map(|c| c.algorithm.clone().unwrap()).collect();
        assert_eq!(algs, vec!["SHA-256", "MD5"]);
        let only_pw =
            UserDb::new("r", vec![("a".into(), UserSecret::Password("p".into()))], 1).unwrap();
        let chs = s.challenges(&only_pw, 100, CLIENT, true);
        let rendered: Vec<String> = chs.iter().map(Challenge::render).collect();
        assert_eq!(rendered.len(), 3);
        for (r, a) in rendered.iter().zip(["SHA-512-256", "SHA-256", "MD5"]) {
            assert!(r.contains(&format!("algorithm={a}")), "{r}");
            assert!(
                r.contains("qop=\"auth\"") && r.contains("stale=true"),
                "{r}"
            );
        }
        assert!(chs.iter().all(|c| c.nonce == chs[0].nonce));
        // Each challenge gets its own nonce, even within one second.
        assert_ne!(s.nonce("r", 100, CLIENT), s.nonce("r", 100, CLIENT));
        assert!(UserDb::new(
            "r",
            vec![
                (
                    "a".into(),
                    UserSecret::Ha1(vec![(Algorithm::Md5, "0".repeat(32))])
                ),
                (
                    "b".into(),
                    UserSecret::Ha1(vec![(Algorithm::Sha256, "0".repeat(64))])
                ),
            ],
            1
        )
        .is_err());
        assert!(UserDb::new(
            "r",
            vec![(
                "a".into(),
                UserSecret::Ha1(vec![(Algorithm::Md5, "0".repeat(64))])
            )],
            1
        )
        .is_err());
    }

    #[test]
    fn right_response_passes_for_each_offered_algorithm_and_wrong_one_fails() {
        let mut s = server();
        let d = db();
        for (user, pw, alg) in [
            ("pbx", "s3cret", Algorithm::Sha256),
            ("pbx", "s3cret", Algorithm::Md5),
            ("old", "pw", Algorithm::Sha256),
            ("old", "pw", Algorithm::Md5),
        ] {
            let chs = s.challenges(&d, 1000, CLIENT, false);
            let c = creds(&chs, alg, user, pw, 1);
            assert_eq!(
                s.check(&d, &c, "INVITE", 1001, CLIENT),
                Check::Ok { user: user.into() },
                "{user} {alg}"
            );
        }
        let chs = s.challenges(&d, 1000, CLIENT, false);
        let c = creds(&chs, Algorithm::Sha256, "pbx", "wrong", 1);
        assert_eq!(
            s.check(&d, &c, "INVITE", 1001, CLIENT),
            Check::Challenge {
                stale: false,
                why: "wrong response"
            }
        );
        // Signed for another method or URI: wrong too.
        let c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &c, "BYE", 1001, CLIENT),
            Check::Challenge { stale: false, .. }
        ));
        // Unknown user, and an algorithm the realm does not offer.
        let c = creds(&chs, Algorithm::Sha256, "nobody", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &c, "INVITE", 1001, CLIENT),
            Check::Challenge {
                stale: false,
                why: "wrong response"
            }
        ));
        let mut c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        c.algorithm = Some("SHA-512-256".into());
        assert!(matches!(
            s.check(&d, &c, "INVITE", 1001, CLIENT),
            Check::Challenge {
                stale: false,
                why: "algorithm not offered"
            }
        ));
        let mut c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        c.qop = None;
        assert!(matches!(
            s.check(&d, &c, "INVITE", 1001, CLIENT),
            Check::Challenge {
                stale: false,
                why: "qop=auth is required"
            }
        ));
    }

    #[test]
    fn nc_must_grow_per_nonce() {
        let mut s = server();
        let d = db();
        let chs = s.challenges(&d, 50, CLIENT, false);
        let first = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &first, "INVITE", 51, CLIENT),
            Check::Ok { .. }
        ));
        assert_eq!(
            s.check(&d, &first, "INVITE", 52, CLIENT),
            Check::Challenge {
                stale: true,
                why: "nc replayed"
            }
        );
        let third = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 3);
        assert!(matches!(
            s.check(&d, &third, "INVITE", 53, CLIENT),
            Check::Ok { .. }
        ));
        let second = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 2);
        assert!(matches!(
            s.check(&d, &second, "INVITE", 54, CLIENT),
            Check::Challenge { stale: true, .. }
        ));
    }

    #[test]
    fn old_foreign_and_forged_nonces_are_stale() {
        let mut s = server();
        let d = db();
        let chs = s.challenges(&d, 1000, CLIENT, false);
        let c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert_eq!(
            s.check(&d, &c, "INVITE", 1000 + NONCE_LIFETIME + 1, CLIENT),
            Check::Challenge {
                stale: true,
                why: "nonce expired"
            }
        );
        assert!(matches!(
            s.check(&d, &c, "INVITE", 1000 + NONCE_LIFETIME, CLIENT),
            Check::Ok { .. }
        ));
        // Minted for another address, by another process, or made up.
        let chs = s.challenges(&d, 1000, CLIENT, false);
        let c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert!(matches!(
            s.check(&d, &c, "INVITE", 1001, other),
            Check::Challenge { stale: true, .. }
        ));
        assert!(matches!(
            Server::new(b"another secret").check(&d, &c, "INVITE", 1001, CLIENT),
            Check::Challenge { stale: true, .. }
        ));
        let forged = Challenge {
            nonce: "AAAAAAAAA".into(),
            ..chs[0].clone()
        };
        let c = creds(&[forged], Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &c, "INVITE", 1001, CLIENT),
            Check::Challenge { stale: true, .. }
        ));
    }

    /// An unknown user name gets the same answers as a known one with a wrong password, 403
    /// from the tenth on, so the answers do not reveal which names exist.
    #[test]
    fn unknown_users_fail_and_lock_like_known_ones() {
        let mut s = server();
        let d = db();
        let chs = s.challenges(&d, 0, CLIENT, false);
        let known = creds(&chs, Algorithm::Sha256, "pbx", "guess", 1);
        let unknown = creds(&chs, Algorithm::Sha256, "nobody", "guess", 1);
        for i in 1..=MAX_FAILURES {
            let a = s.check(&d, &known, "INVITE", i as u64, CLIENT);
            let b = s.check(&d, &unknown, "INVITE", i as u64, CLIENT);
            assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "attempt {i}: {a:?} / {b:?}"
            );
        }
        assert_eq!(
            s.check(&d, &unknown, "INVITE", 11, CLIENT),
            Check::Locked {
                user: "nobody".into()
            }
        );
    }

    #[test]
    fn thirty_failures_from_one_address_lock_it_whatever_user_it_names() {
        let mut s = server();
        let d = db();
        let chs = s.challenges(&d, 0, CLIENT, false);
        // A spray over five names, known and unknown: none reaches its own MAX_FAILURES.
        for i in 1..MAX_SOURCE_FAILURES {
            let name = ["pbx", "old", "admin", "root", "sip"][i as usize % 5];
            let wrong = creds(&chs, Algorithm::Sha256, name, "guess", 1);
            assert!(
                matches!(
                    s.check(&d, &wrong, "INVITE", 1, CLIENT),
                    Check::Challenge { stale: false, .. }
                ),
                "failure {i}"
            );
        }
        let wrong = creds(&chs, Algorithm::Sha256, "nobody", "guess", 1);
        assert_eq!(
            s.check(&d, &wrong, "INVITE", 2, CLIENT),
            Check::SourceLocked
        );
        // Locked: a real user's right password gets 403 from this address, and another
        // address is unaffected, for the same user.
        let right = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert_eq!(
            s.check(&d, &right, "INVITE", 3, CLIENT),
            Check::SourceLocked
        );
        assert!(s.source_locked(CLIENT, 3));
        let other = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 8));
        assert!(!s.source_locked(other, 3));
        let theirs = s.challenges(&d, 3, other, false);
        let right = creds(&theirs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &right, "INVITE", 3, other),
            Check::Ok { .. }
        ));
        // After the lockout time (600 s from the 30th failure) the address may call again.
        assert!(s.source_locked(CLIENT, 601));
        let chs = s.challenges(&d, 602, CLIENT, false);
        let right = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &right, "INVITE", 602, CLIENT),
            Check::Ok { .. }
        ));
    }

    #[test]
    fn attempts_for_a_locked_user_do_not_count_against_the_address() {
        let mut s = server();
        let d = db();
        let chs = s.challenges(&d, 0, CLIENT, false);
        let wrong = creds(&chs, Algorithm::Sha256, "pbx", "guess", 1);
        for _ in 1..MAX_FAILURES {
            s.check(&d, &wrong, "INVITE", 1, CLIENT);
        }
        // The 10th locks the user; a misconfigured account retrying on adds nothing more.
        for _ in 0..3 * MAX_SOURCE_FAILURES {
            assert_eq!(
                s.check(&d, &wrong, "INVITE", 2, CLIENT),
                Check::Locked { user: "pbx".into() }
            );
        }
        assert!(!s.source_locked(CLIENT, 2));
        let other = creds(&chs, Algorithm::Sha256, "old", "pw", 1);
        assert!(matches!(
            s.check(&d, &other, "INVITE", 3, CLIENT),
            Check::Ok { .. }
        ));
    }

    #[test]
    fn with_no_source_limit_only_users_lock() {
        let mut s = server();
        let d = db().with_source_failures(0);
        let chs = s.challenges(&d, 0, CLIENT, false);
        for i in 1..=3 * MAX_SOURCE_FAILURES {
            let wrong = creds(&chs, Algorithm::Sha256, &format!("u{i}"), "guess", 1);
            assert!(
                matches!(
                    s.check(&d, &wrong, "INVITE", 1, CLIENT),
                    Check::Challenge { stale: false, .. }
                ),
                "failure {i}"
            );
        }
        assert!(!s.source_locked(CLIENT, 1));
        let right = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &right, "INVITE", 2, CLIENT),
            Check::Ok { .. }
        ));
    }

    #[test]
    fn ten_failures_lock_the_user_for_the_lockout_time() {
        let mut s = server();
        let d = db();
        let chs = s.challenges(&d, 0, CLIENT, false);
        let wrong = creds(&chs, Algorithm::Sha256, "pbx", "guess", 1);
        for i in 1..MAX_FAILURES {
            assert!(
                matches!(
                    s.check(&d, &wrong, "INVITE", i as u64, CLIENT),
                    Check::Challenge { stale: false, .. }
                ),
                "failure {i}"
            );
        }
        assert_eq!(
            s.check(&d, &wrong, "INVITE", 10, CLIENT),
            Check::Locked { user: "pbx".into() }
        );
        // Locked: the right password does not help, another user is unaffected.
        let chs = s.challenges(&d, 20, CLIENT, false);
        let right = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert_eq!(
            s.check(&d, &right, "INVITE", 21, CLIENT),
            Check::Locked { user: "pbx".into() }
        );
        let other = creds(&chs, Algorithm::Sha256, "old", "pw", 1);
        assert!(matches!(
            s.check(&d, &other, "INVITE", 21, CLIENT),
            Check::Ok { .. }
        ));
        // After the lockout time (600 s from the 10th failure) the right password passes.
        let chs = s.challenges(&d, 611, CLIENT, false);
        let right = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &right, "INVITE", 609, CLIENT),
            Check::Locked { .. }
        ));
        assert!(matches!(
            s.check(&d, &right, "INVITE", 611, CLIENT),
            Check::Ok { .. }
        ));
    }

    #[test]
    fn failures_spread_wider_than_the_lockout_time_do_not_add_up() {
        let mut s = server();
        let d = db();
        for i in 0..(2 * MAX_FAILURES) as u64 {
            let now = i * 100;
            let chs = s.challenges(&d, now, CLIENT, false);
            let wrong = creds(&chs, Algorithm::Md5, "pbx", "guess", 1);
            // One every 100 s: at most seven fall within 600 s of the window's first.
            let r = s.check(&d, &wrong, "INVITE", now, CLIENT);
            assert!(matches!(r, Check::Challenge { .. }), "{i}: {r:?}");
        }
        // A success clears the count.
        let chs = s.challenges(&d, 5000, CLIENT, false);
        for _ in 0..MAX_FAILURES - 1 {
            let wrong = creds(&chs, Algorithm::Md5, "pbx", "guess", 1);
            assert!(matches!(
                s.check(&d, &wrong, "INVITE", 5000, CLIENT),
                Check::Challenge { .. }
            ));
        }
        let right = creds(&chs, Algorithm::Md5, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &right, "INVITE", 5000, CLIENT),
            Check::Ok { .. }
        ));
        let wrong = creds(&chs, Algorithm::Md5, "pbx", "guess", 2);
        assert!(matches!(
            s.check(&d, &wrong, "INVITE", 5000, CLIENT),
            Check::Challenge { .. }
        ));
    }

    #[test]
    fn the_nc_table_is_bounded_and_forgotten_nonces_count_as_used() {
        let mut s = server().with_nc_capacity(2);
        let d = db();
        let mut used = Vec::new();
        for t in 0..3u64 {
            let chs = s.challenges(&d, t, CLIENT, false);
            let c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
            assert!(matches!(
                s.check(&d, &c, "INVITE", t, CLIENT),
                Check::Ok { .. }
            ));
            used.push(chs);
        }
        assert_eq!(s.tracked_nonces(), 2);
        // The first nonce was forgotten: its next nc is not trusted.
        let c = creds(&used[0], Algorithm::Sha256, "pbx", "s3cret", 2);
        assert_eq!(
            s.check(&d, &c, "INVITE", 3, CLIENT),
            Check::Challenge {
                stale: true,
                why: "nonce no longer tracked"
            }
        );
        // A nonce still tracked goes on; expired entries make room before live ones go.
        let c = creds(&used[2], Algorithm::Sha256, "pbx", "s3cret", 2);
        assert!(matches!(
            s.check(&d, &c, "INVITE", 3, CLIENT),
            Check::Ok { .. }
        ));
        let later = 2 + NONCE_LIFETIME + 2;
        let chs = s.challenges(&d, later, CLIENT, false);
        let c = creds(&chs, Algorithm::Sha256, "pbx", "s3cret", 1);
        assert!(matches!(
            s.check(&d, &c, "INVITE", later, CLIENT),
            Check::Ok { .. }
        ));
        assert_eq!(s.tracked_nonces(), 1);
    }
}
