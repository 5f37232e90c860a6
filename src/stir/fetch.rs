//! Fetching `x5u` certificate chains for the STIR verification service (ATIS-1000074 step 7).
//!
//! [`X5uFetcher`] is the only code that dereferences an attacker-chosen URL, so it is
//! deliberately narrow (security research §1.7 step 7 and §6.6):
//! - `https://` only, checked before any cache lookup or connection (`http://` is refused by
//!   policy);
//! - the SSRF guard (IN-06): every address the host resolves to, and every literal IP in the URL,
//!   must be public ([`is_forbidden_addr`]) unless the host is on the configured allow-list; we
//!   then connect to exactly the addresses we checked, so a second DNS answer cannot slip in;
//! - one HTTP/1.1 `GET`, no redirects (any 3xx is a failure), 200 only, a body cap (64 KiB) and
//!   one total deadline (3 s) over resolve, connect, TLS, request and body;
//! - the body is a PEM bundle (leaf first, then intermediates) or a single DER certificate.
//!
//! Results are cached per URL (STIR-13): the whole chain, for max(24 h, `Cache-Control:
//! max-age`) but never past the leaf's notAfter; failures for 30 s. Concurrent requests for a
//! URL that is not cached share one fetch, which runs in its own task so that a caller giving up
//! (a dropped SIP transaction) neither cancels it nor causes a second one.
//!
//! Every failure maps to SIP 436 Bad Identity Info ([`FetchError::sip_status`]).
//!
//! The guarded request itself (policy, resolution, address check, TLS, one HTTP/1.1 exchange,
//! deadline, body cap, no redirects) is [`GuardedClient`], which the OAuth verifiers use too
//! for the authorization server's JWKS and introspection endpoints.

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use http::{header, HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;

/// Total deadline of one fetch: resolve, connect, TLS, request and body.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest accepted body; a SHAKEN chain is 2–4 KiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// ATIS-1000074: cache for 24 h when the response asks for less or says nothing.
pub const MIN_POSITIVE_TTL_SECS: u64 = 24 * 3600;
/// How long a failure is remembered before the URL is tried again.
pub const NEGATIVE_TTL_SECS: u64 = 30;
/// Cache bound; beyond it expired entries go first, then the least recently used.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// SIP 436 Bad Identity Info: what every fetch failure becomes at the verifier.
pub const SIP_BAD_IDENTITY_INFO: u16 = 436;

/// Longer URLs are refused before parsing; they are also cache keys.
const MAX_URL_LEN: usize = 2048;
/// Bound on the response head the server may send.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Longest `Location` value kept in a [`FetchError::Redirect`] (it ends up in logs).
const MAX_LOCATION_LEN: usize = 256;

/// A fetched chain: DER certificates, leaf first, then intermediates as the server sent them.
pub type CertChain = Arc<[CertificateDer<'static>]>;

/// Name resolution hook: `host` (a DNS name, never an IP literal) and port to addresses.
///
/// Tests map names to loopback or to private addresses; production leaves
/// [`GuardConfig::resolver`] (in [`FetchConfig::guard`]) at `None`, which uses
/// `tokio::net::lookup_host`.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

impl<F> Resolve for F
where
    F: Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
{
    fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        self(host, port)
    }
}

/// Wall-clock seconds since the Unix epoch, injected so tests can move time for cache TTLs.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> u64;
}

impl<F> Clock for F
where
    F: Fn() -> u64 + Send + Sync + 'static,
{
    fn now_unix(&self) -> u64 {
        self()
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Settings of an [`X5uFetcher`]; [`FetchConfig::new`] gives the production defaults.
#[derive(Clone)]
pub struct FetchConfig {
    /// How each fetch reaches a repository: deadline (default 3 s), body cap (64 KiB), SSRF
    /// allow-list (empty in production; tests put their loopback repository here), the
    /// repositories' trust anchors and the resolver.
    pub guard: GuardConfig,
    /// Source of time for cache expiry.
    pub clock: Arc<dyn Clock>,
    /// Floor of a positive entry's lifetime (default 24 h).
    pub min_ttl_secs: u64,
    /// Lifetime of a negative entry (default 30 s).
    pub negative_ttl_secs: u64,
    /// Cache bound (default 10 000 entries).
    pub max_entries: usize,
}

impl FetchConfig {
    /// Production defaults with `roots` as the HTTPS trust anchors.
    pub fn new(roots: impl Into<Arc<RootCertStore>>) -> FetchConfig {
        FetchConfig {
            guard: GuardConfig::new(roots),
            clock: Arc::new(SystemClock),
            min_ttl_secs: MIN_POSITIVE_TTL_SECS,
            negative_ttl_secs: NEGATIVE_TTL_SECS,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    /// Production defaults trusting the certificates of a PEM bundle (the configured CA file).
    pub fn from_ca_file(path: &Path) -> anyhow::Result<FetchConfig> {
        let certs = crate::tls::read_certs(path)?;
        Ok(FetchConfig::new(roots_from_der(&certs).map_err(|e| {
            anyhow::anyhow!("{}: unusable trust anchor: {e}", path.display())
        })?))
    }
}

/// A root store holding each of `certs` as a trust anchor.
pub fn roots_from_der(certs: &[CertificateDer<'_>]) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c.clone().into_owned())?;
    }
    Ok(roots)
}

impl std::fmt::Debug for FetchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchConfig")
            .field("guard", &self.guard)
            .field("min_ttl_secs", &self.min_ttl_secs)
            .field("negative_ttl_secs", &self.negative_ttl_secs)
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

/// Why an `x5u` chain could not be obtained. Each maps to SIP 436 ([`FetchError::sip_status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Refused without connecting: not https, malformed, or a non-public address.
    #[error("x5u refused by policy: {reason}")]
    PolicyRefused { reason: String },
    #[error("x5u host did not resolve: {0}")]
    Resolve(String),
    #[error("x5u connect failed: {0}")]
    Connect(String),
    #[error("x5u fetch timed out after {0:?}")]
    Timeout(Duration),
    #[error("x5u TLS handshake failed: {0}")]
    Tls(String),
    /// A final status other than 200 (and not a 3xx).
    #[error("x5u server answered HTTP {0}")]
    Status(u16),
    /// A 3xx; redirects are never followed.
    #[error("x5u server redirected (HTTP {status}) to {location:?}; redirects are not followed")]
    Redirect { status: u16, location: String },
    #[error("x5u body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("x5u body is not a certificate chain: {0}")]
    BadBody(String),
    /// The HTTP exchange broke after the TLS handshake (malformed response, reset).
    #[error("x5u HTTP exchange failed: {0}")]
    Http(String),
    /// The URL failed within the negative-cache window; holds the original failure.
    #[error("x5u failed recently and is not retried yet: {0}")]
    Negative(Box<FetchError>),
}

impl FetchError {
    /// SIP status the verification service answers with: always 436 Bad Identity Info.
    pub fn sip_status(&self) -> u16 {
        SIP_BAD_IDENTITY_INFO
    }

    /// The failure itself, looking through [`FetchError::Negative`].
    pub fn cause(&self) -> &FetchError {
        match self {
            FetchError::Negative(inner) => inner.cause(),
            other => other,
        }
    }
}

/// Why a [`GuardedClient`] request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpsError {
    /// Refused without connecting: not https, malformed, or a non-public address.
    #[error("refused by policy: {reason}")]
    PolicyRefused { reason: String },
    #[error("host did not resolve: {0}")]
    Resolve(String),
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// A final status other than 200 (and not a 3xx).
    #[error("server answered HTTP {0}")]
    Status(u16),
    /// A 3xx; redirects are never followed.
    #[error("server redirected (HTTP {status}) to {location:?}; redirects are not followed")]
    Redirect { status: u16, location: String },
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The HTTP exchange broke after the TLS handshake (malformed response, reset).
    #[error("HTTP exchange failed: {0}")]
    Http(String),
}

impl HttpsError {
    fn policy(reason: impl Into<String>) -> HttpsError {
        HttpsError::PolicyRefused {
            reason: reason.into(),
        }
    }
}

impl From<HttpsError> for FetchError {
    fn from(e: HttpsError) -> FetchError {
        match e {
            HttpsError::PolicyRefused { reason } => FetchError::PolicyRefused { reason },
            HttpsError::Resolve(m) => FetchError::Resolve(m),
            HttpsError::Connect(m) => FetchError::Connect(m),
            HttpsError::Timeout(d) => FetchError::Timeout(d),
            HttpsError::Tls(m) => FetchError::Tls(m),
            HttpsError::Status(s) => FetchError::Status(s),
            HttpsError::Redirect { status, location } => FetchError::Redirect { status, location },
            HttpsError::TooLarge { limit } => FetchError::TooLarge { limit },
            HttpsError::Http(m) => FetchError::Http(m),
        }
    }
}

/// Settings of a [`GuardedClient`]; [`GuardConfig::new`] gives the defaults (3 s, 64 KiB, no
/// allow-listed host, the system resolver).
#[derive(Clone)]
pub struct GuardConfig {
    /// Total deadline of one request: resolve, connect, TLS, request and body.
    pub timeout: Duration,
    /// Largest accepted body in bytes.
    pub max_body: usize,
    /// Hosts (DNS names or IP literals, compared case-insensitively) exempt from the SSRF
    /// address check.
    pub allowed_hosts: Vec<String>,
    /// Trust anchors for the servers' HTTPS certificates.
    pub roots: Arc<RootCertStore>,
    /// `None`: `tokio::net::lookup_host`.
    pub resolver: Option<Arc<dyn Resolve>>,
}

impl GuardConfig {
    pub fn new(roots: impl Into<Arc<RootCertStore>>) -> GuardConfig {
        GuardConfig {
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            allowed_hosts: Vec::new(),
            roots: roots.into(),
            resolver: None,
        }
    }

    /// Defaults trusting the certificates of a PEM bundle.
    pub fn from_ca_file(path: &Path) -> anyhow::Result<GuardConfig> {
        let certs = crate::tls::read_certs(path)?;
        Ok(GuardConfig::new(roots_from_der(&certs).map_err(|e| {
            anyhow::anyhow!("{}: unusable trust anchor: {e}", path.display())
        })?))
    }
}

impl std::fmt::Debug for GuardConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardConfig")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("roots", &self.roots.len())
            .field("custom_resolver", &self.resolver.is_some())
            .finish()
    }
}

/// A successful (200) answer of a [`GuardedClient`].
#[derive(Debug, Clone)]
pub struct GuardedResponse {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl GuardedResponse {
    /// `max-age` of the first `Cache-Control` value that has one.
    pub fn max_age(&self) -> Option<u64> {
        self.headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_max_age)
    }
}

/// The HTTPS/1.1 client for URLs the gateway does not fully control (x5u, an authorization
/// server's endpoints), behind the SSRF guard (IN-06):
/// - `https://` only, no user information or fragment, at most 2048 bytes;
/// - every address the host resolves to, and a literal IP, must be public
///   ([`is_forbidden_addr`]) unless the host is allow-listed; the connection goes to exactly
///   the addresses that were checked;
/// - one request per connection, no redirects (a 3xx is an error), 200 only, a body cap and
///   one total deadline.
///
/// Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct GuardedClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    cfg: GuardConfig,
    allowed: HashSet<String>,
    connector: tokio_rustls::TlsConnector,
    user_agent: &'static str,
}

impl std::fmt::Debug for GuardedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedClient")
            .field("cfg", &self.inner.cfg)
            .field("user_agent", &self.inner.user_agent)
            .finish()
    }
}

/// What a request carries besides its URL.
struct Outgoing<'a> {
    method: Method,
    accept: &'a str,
    authorization: Option<&'a str>,
    content_type: Option<&'a str>,
    body: Bytes,
}

impl GuardedClient {
    /// Builds the client and its TLS configuration (ring provider, TLS 1.2/1.3, ALPN
    /// `http/1.1`); `user_agent` is sent on every request.
    pub fn new(cfg: GuardConfig, user_agent: &'static str) -> anyhow::Result<GuardedClient> {
        if cfg.roots.is_empty() {
            anyhow::bail!("no trust anchors for HTTPS servers");
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS versions unsupported: {e}"))?
            .with_root_certificates(cfg.roots.clone())
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let allowed = cfg
            .allowed_hosts
            .iter()
            .map(|h| normalize_host(h))
            .collect();
        Ok(GuardedClient {
            inner: Arc::new(ClientInner {
                cfg,
                allowed,
                connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
                user_agent,
            }),
        })
    }

    pub fn config(&self) -> &GuardConfig {
        &self.inner.cfg
    }

    /// The static part of the policy (scheme, form, literal addresses), without any I/O.
    pub fn check_url(&self, url: &str) -> Result<(), HttpsError> {
        Target::parse(url, &self.inner.allowed).map(|_| ())
    }

    /// `GET url` with `Accept: accept`.
    pub async fn get(&self, url: &str, accept: &str) -> Result<GuardedResponse, HttpsError> {
        let t = Target::parse(url, &self.inner.allowed)?;
        self.send(
            &t,
            Outgoing {
                method: Method::GET,
                accept,
                authorization: None,
                content_type: None,
                body: Bytes::new(),
            },
        )
        .await
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body and, when given, an
    /// `Authorization` header.
    pub async fn post_form(
        &self,
        url: &str,
        accept: &str,
        authorization: Option<&str>,
        form: String,
    ) -> Result<GuardedResponse, HttpsError> {
        let t = Target::parse(url, &self.inner.allowed)?;
        self.send(
            &t,
            Outgoing {
                method: Method::POST,
                accept,
                authorization,
                content_type: Some("application/x-www-form-urlencoded"),
                body: Bytes::from(form),
            },
        )
        .await
    }

    /// One request under the deadline.
    async fn send(&self, t: &Target, out: Outgoing<'_>) -> Result<GuardedResponse, HttpsError> {
        let timeout = self.inner.cfg.timeout;
        match tokio::time::timeout(timeout, self.exchange(t, out)).await {
            Ok(r) => r,
            Err(_) => Err(HttpsError::Timeout(timeout)),
        }
    }

    async fn exchange(&self, t: &Target, out: Outgoing<'_>) -> Result<GuardedResponse, HttpsError> {
        let addrs = match t.ip {
            Some(ip) => vec![SocketAddr::new(ip, t.port)],
            None => self.resolve(&t.host, t.port).await?,
        };
        if addrs.is_empty() {
            return Err(HttpsError::Resolve(format!("{}: no addresses", t.host)));
        }
        if !t.allow_listed {
            // Any non-public answer refuses the whole name: a mixed answer is an attack or a
            // misconfiguration, and partial use would make the outcome depend on DNS order.
            if let Some(bad) = addrs.iter().find(|a| is_forbidden_addr(a.ip())) {
                return Err(HttpsError::policy(format!(
                    "{} resolves to {}, which is not a public address",
                    t.host,
                    bad.ip()
                )));
            }
        }
        let tcp = connect_any(&addrs).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(t.host.clone())
            .map_err(|e| HttpsError::policy(format!("{}: not a valid server name: {e}", t.host)))?;
        let tls = self
            .inner
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| HttpsError::Tls(e.to_string()))?;
        http_exchange(tls, t, out, self.inner.user_agent, self.inner.cfg.max_body).await
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, HttpsError> {
        let res = match &self.inner.cfg.resolver {
            Some(r) => r.resolve(host, port),
            None => tokio::net::lookup_host((host, port))
                .await
                .map(|it| it.collect()),
        };
        res.map_err(|e| HttpsError::Resolve(format!("{host}: {e}")))
    }
}

/// Counters for tests and, later, metrics. All only ever increase.
#[derive(Debug, Default)]
pub struct FetchStats {
    /// Fetches actually started (after the static URL checks and the cache).
    pub fetches_started: AtomicU64,
    /// Requests answered from a positive cache entry.
    pub cache_hits: AtomicU64,
    /// Requests answered from a negative cache entry.
    pub negative_hits: AtomicU64,
    /// Requests that joined a fetch already in flight for the same URL.
    pub coalesced: AtomicU64,
}

type Outcome = Result<CertChain, FetchError>;
type InFlight = Shared<BoxFuture<'static, Outcome>>;

enum Slot {
    InFlight(InFlight),
    Ready {
        outcome: Outcome,
        expires_at: u64,
        last_used: u64,
    },
}

#[derive(Default)]
struct Cache {
    map: HashMap<String, Slot>,
    /// Logical time of the last use, for LRU eviction.
    tick: u64,
}

enum Lookup {
    /// This call started the fetch.
    Started(InFlight),
    Hit(CertChain),
    Negative(FetchError),
    Wait(InFlight),
}

struct Inner {
    cfg: FetchConfig,
    client: GuardedClient,
    cache: Mutex<Cache>,
    stats: FetchStats,
}

/// The `x5u` fetcher with its cache; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct X5uFetcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for X5uFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X5uFetcher")
            .field("cfg", &self.inner.cfg)
            .field("cached", &self.cached_len())
            .finish()
    }
}

impl X5uFetcher {
    /// Builds the fetcher and its TLS client (ring provider, TLS 1.2/1.3, ALPN `http/1.1`).
    pub fn new(cfg: FetchConfig) -> anyhow::Result<X5uFetcher> {
        if cfg.guard.roots.is_empty() {
            anyhow::bail!("x5u fetcher: no trust anchors for HTTPS certificate repositories");
        }
        let client = GuardedClient::new(
            cfg.guard.clone(),
            concat!("riptide-x5u/", env!("CARGO_PKG_VERSION")),
        )
        .map_err(|e| anyhow::anyhow!("x5u fetcher: {e}"))?;
        Ok(X5uFetcher {
            inner: Arc::new(Inner {
                cfg,
                client,
                cache: Mutex::new(Cache::default()),
                stats: FetchStats::default(),
            }),
        })
    }

    pub fn config(&self) -> &FetchConfig {
        &self.inner.cfg
    }

    pub fn stats(&self) -> &FetchStats {
        &self.inner.stats
    }

    /// Number of cache entries (positive, negative and in flight).
    pub fn cached_len(&self) -> usize {
        self.inner.lock_cache().map.len()
    }

    /// Returns the certificate chain at `url`, from the cache when it is fresh.
    ///
    /// Must be called inside a tokio runtime (the fetch runs in a spawned task).
    pub async fn fetch(&self, url: &str) -> Result<CertChain, FetchError> {
        // Static policy first: a refused URL costs no cache slot and no connection.
        let target = Target::parse(url, &self.inner.client.inner.allowed)?;
        let now = self.inner.cfg.clock.now_unix();
        let lookup = {
            let mut cache = self.inner.lock_cache();
            match cache.lookup(url, now) {
                Some(l) => l,
                None => {
                    self.inner.evict_if_full(&mut cache, now);
                    let shared = self.inner.clone().start(url.to_string(), target);
                    cache
                        .map
                        .insert(url.to_string(), Slot::InFlight(shared.clone()));
                    Lookup::Started(shared)
                }
            }
        };
        match lookup {
            Lookup::Started(shared) => shared.await,
            Lookup::Hit(chain) => {
                self.inner.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                Ok(chain)
            }
            Lookup::Negative(err) => {
                self.inner
                    .stats
                    .negative_hits
                    .fetch_add(1, Ordering::Relaxed);
                Err(FetchError::Negative(Box::new(err)))
            }
            Lookup::Wait(shared) => {
                self.inner.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                shared.await
            }
        }
    }
}

impl Cache {
    /// `None` when `url` must be fetched.
    fn lookup(&mut self, url: &str, now: u64) -> Option<Lookup> {
        self.tick += 1;
        let tick = self.tick;
        match self.map.get_mut(url)? {
            Slot::InFlight(shared) => Some(Lookup::Wait(shared.clone())),
            Slot::Ready {
                outcome,
                expires_at,
                last_used,
            } => {
                if now >= *expires_at {
                    return None;
                }
                *last_used = tick;
                Some(match outcome {
                    Ok(chain) => Lookup::Hit(chain.clone()),
                    Err(e) => Lookup::Negative(e.clone()),
                })
            }
        }
    }
}

impl Inner {
    fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panic could break half-way.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for one more entry: expired entries first, then the least recently used
    /// tenth of the finished ones. Fetches in flight are never evicted.
    fn evict_if_full(&self, cache: &mut Cache, now: u64) {
        let max = self.cfg.max_entries.max(1);
        if cache.map.len() < max {
            return;
        }
        cache.map.retain(|_, slot| match slot {
            Slot::InFlight(_) => true,
            Slot::Ready { expires_at, .. } => now < *expires_at,
        });
        if cache.map.len() < max {
            return;
        }
        let mut ages: Vec<(u64, String)> = cache
            .map
            .iter()
            .filter_map(|(k, slot)| match slot {
                Slot::Ready { last_used, .. } => Some((*last_used, k.clone())),
                Slot::InFlight(_) => None,
            })
            .collect();
        let n = (max / 10).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable(n - 1);
        for (_, k) in ages.iter().take(n) {
            cache.map.remove(k);
        }
    }

    /// Spawns the one fetch of `key`; its result lands in the cache even if every caller has
    /// given up by then.
    fn start(self: Arc<Self>, key: String, target: Target) -> InFlight {
        let task = tokio::spawn(self.fetch_and_store(key, target));
        let fut: BoxFuture<'static, Outcome> = Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Http(format!("fetch task failed: {e}"))))
        });
        fut.shared()
    }

    async fn fetch_and_store(self: Arc<Self>, key: String, target: Target) -> Outcome {
        self.stats.fetches_started.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_once(&target).await;
        let now = self.cfg.clock.now_unix();
        let (outcome, expires_at) = match result {
            Ok(fetched) => {
                let expires_at = positive_expiry(
                    now,
                    fetched.max_age,
                    fetched.leaf_not_after,
                    self.cfg.min_ttl_secs,
                    self.cfg.negative_ttl_secs,
                );
                (Ok(CertChain::from(fetched.chain)), expires_at)
            }
            Err(e) => {
                tracing::debug!(url = %key, "x5u fetch failed: {e}");
                (Err(e), now.saturating_add(self.cfg.negative_ttl_secs))
            }
        };
        let mut cache = self.lock_cache();
        cache.tick += 1;
        let last_used = cache.tick;
        cache.map.insert(
            key,
            Slot::Ready {
                outcome: outcome.clone(),
                expires_at,
                last_used,
            },
        );
        outcome
    }

    async fn fetch_once(&self, t: &Target) -> Result<Fetched, FetchError> {
        let accept = "application/pem-certificate-chain, application/x-pem-file, \
                      application/pkix-cert, */*;q=0.1";
        let resp = self
            .client
            .send(
                t,
                Outgoing {
                    method: Method::GET,
                    accept,
                    authorization: None,
                    content_type: None,
                    body: Bytes::new(),
                },
            )
            .await?;
        let max_age = resp.max_age();
        let (chain, leaf_not_after) = parse_chain(&resp.body)?;
        Ok(Fetched {
            chain,
            max_age,
            leaf_not_after,
        })
    }
}

/// When a positive entry expires: max(`min_ttl`, max-age) from now, capped at the leaf's
/// notAfter, but at least `floor` from now so an expired certificate (which verification
/// rejects with 437) is not refetched on every call.
fn positive_expiry(
    now: u64,
    max_age: Option<u64>,
    not_after: i64,
    min_ttl: u64,
    floor: u64,
) -> u64 {
    let ttl = min_ttl.max(max_age.unwrap_or(0));
    let not_after = u64::try_from(not_after).unwrap_or(0);
    now.saturating_add(ttl)
        .min(not_after)
        .max(now.saturating_add(floor))
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, HttpsError> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(format!("{a}: {e}")),
        }
    }
    Err(HttpsError::Connect(
        last.unwrap_or_else(|| "no address".into()),
    ))
}

/// A successful response, parsed.
struct Fetched {
    chain: Vec<CertificateDer<'static>>,
    max_age: Option<u64>,
    leaf_not_after: i64,
}

async fn http_exchange<S>(
    io: S,
    t: &Target,
    out: Outgoing<'_>,
    user_agent: &str,
    max_body: usize,
) -> Result<GuardedResponse, HttpsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_header_size(MAX_HEADER_BYTES)
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| HttpsError::Http(e.to_string()))?;
    let mut req = Request::builder()
        .method(out.method)
        .uri(t.path.as_str())
        .header(header::HOST, t.authority.as_str())
        .header(header::ACCEPT, out.accept)
        .header(header::USER_AGENT, user_agent)
        .header(header::CONNECTION, "close");
    if let Some(a) = out.authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    if let Some(ct) = out.content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req
        .body(Full::new(out.body))
        .map_err(|e| HttpsError::policy(format!("cannot build a request for this URL: {e}")))?;

    // The connection is driven here rather than in a spawned task, so dropping this future (the
    // deadline) closes the socket instead of leaving a task behind.
    let exchange = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        read_response(resp, max_body).await
    };
    tokio::pin!(conn, exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut exchange => return r,
            // Once the connection ends, the exchange sees the end of the body or an error.
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}

async fn read_response(
    resp: http::Response<hyper::body::Incoming>,
    max_body: usize,
) -> Result<GuardedResponse, HttpsError> {
    let status = resp.status();
    if status.is_redirection() {
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| {
                let s = String::from_utf8_lossy(v.as_bytes());
                s.chars().take(MAX_LOCATION_LEN).collect()
            })
            .unwrap_or_default();
        return Err(HttpsError::Redirect {
            status: status.as_u16(),
            location,
        });
    }
    if status != StatusCode::OK {
        return Err(HttpsError::Status(status.as_u16()));
    }
    let declared = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(HttpsError::TooLarge { limit: max_body });
    }
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                HttpsError::TooLarge { limit: max_body }
            } else {
                HttpsError::Http(e.to_string())
            }
        })?
        .to_bytes();
    Ok(GuardedResponse {
        headers: parts.headers,
        body,
    })
}

/// `max-age=N` from one `Cache-Control` value (other directives are ignored: ATIS-1000074 caches
/// for 24 h whatever they say).
fn parse_max_age(value: &str) -> Option<u64> {
    value.split(',').find_map(|d| {
        let (name, arg) = d.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        let arg = arg.trim().trim_matches('"');
        // A number too large for u64 is "forever"; the notAfter cap applies anyway.
        if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_digit()) {
            Some(arg.parse::<u64>().unwrap_or(u64::MAX))
        } else {
            None
        }
    })
}

/// Parses a PEM bundle (every CERTIFICATE block, in order; other blocks are ignored) or one DER
/// certificate. Every certificate must parse as X.509; returns the chain and the leaf's
/// notAfter (Unix seconds).
pub fn parse_chain(body: &[u8]) -> Result<(Vec<CertificateDer<'static>>, i64), FetchError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or_else(|| FetchError::BadBody("empty body".into()))?;
    let chain: Vec<CertificateDer<'static>> = if body[start..].starts_with(b"-----BEGIN") {
        let certs = rustls_pemfile::certs(&mut &body[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| FetchError::BadBody(format!("malformed PEM: {e}")))?;
        if certs.is_empty() {
            return Err(FetchError::BadBody("no CERTIFICATE block in PEM".into()));
        }
        certs
    } else if body[0] == 0x30 {
        vec![CertificateDer::from(body.to_vec())]
    } else {
        return Err(FetchError::BadBody("neither PEM nor DER".into()));
    };
    let mut leaf_not_after = 0;
    for (i, der) in chain.iter().enumerate() {
        let (rest, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| FetchError::BadBody(format!("certificate {i}: {e}")))?;
        if !rest.is_empty() {
            return Err(FetchError::BadBody(format!(
                "certificate {i}: {} trailing bytes",
                rest.len()
            )));
        }
        if i == 0 {
            leaf_not_after = cert.validity().not_after.timestamp();
        }
    }
    Ok((chain, leaf_not_after))
}

/// What a URL names, after the static policy checks.
#[derive(Debug, Clone)]
struct Target {
    /// Lower case, without brackets or a trailing dot.
    host: String,
    /// Set when the host is an IP literal.
    ip: Option<IpAddr>,
    port: u16,
    /// `host[:port]` for the Host header.
    authority: String,
    /// Path and query, at least `/`.
    path: String,
    allow_listed: bool,
}

impl Target {
    fn parse(url: &str, allowed: &HashSet<String>) -> Result<Target, HttpsError> {
        if url.len() > MAX_URL_LEN {
            return Err(HttpsError::policy(format!(
                "URL longer than {MAX_URL_LEN} bytes"
            )));
        }
        if url.contains('#') {
            return Err(HttpsError::policy("URL has a fragment"));
        }
        let uri: Uri = url
            .parse()
            .map_err(|e| HttpsError::policy(format!("not a valid URL: {e}")))?;
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => {}
            Some(s) => {
                return Err(HttpsError::policy(format!(
                    "scheme {s} is not allowed (https only)"
                )))
            }
            None => return Err(HttpsError::policy("not an absolute URL")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| HttpsError::policy("URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(HttpsError::policy("URL has user information"));
        }
        let host = normalize_host(authority.host());
        if host.is_empty() {
            return Err(HttpsError::policy("URL has no host"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let ip = host.parse::<IpAddr>().ok();
        let allow_listed = allowed.contains(&host);
        if let Some(ip) = ip {
            if !allow_listed && is_forbidden_addr(ip) {
                return Err(HttpsError::policy(format!("{ip} is not a public address")));
            }
        }
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_string();
        Ok(Target {
            host,
            ip,
            port,
            authority: authority.as_str().to_string(),
            path,
            allow_listed,
        })
    }
}

/// Lower case, IPv6 brackets and one trailing dot removed.
fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.strip_suffix('.').unwrap_or(h).to_ascii_lowercase()
}

/// Whether an outbound fetch must not go to `ip` (the SSRF guard, IN-06): unspecified, loopback,
/// private (RFC 1918), shared (100.64/10), link-local, multicast, broadcast and reserved (240/4)
/// IPv4; unspecified, loopback, link-local, site-local, unique-local (fc00::/7) and multicast
/// IPv6; and IPv6 forms that embed an IPv4 address (mapped, compatible, NAT64 64:ff9b::/96,
/// 6to4 2002::/16) when the embedded address is forbidden.
pub fn is_forbidden_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 0 // "this network", includes 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10 (CGNAT)
        || (a == 169 && b == 254)
        || (a == 172 && (b & 0xf0) == 16)
        || (a == 192 && b == 168)
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return true;
    }
    if (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xfe00) == 0xfc00
    // unique local
    {
        return true;
    }
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated)
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    // 64:ff9b::a.b.c.d (NAT64 well-known prefix)
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    // 2002:aabb:ccdd::/48 (6to4)
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2]));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(hosts: &[&str]) -> HashSet<String> {
        hosts.iter().map(|h| normalize_host(h)).collect()
    }

    fn refused(url: &str, allow: &[&str]) -> String {
        match Target::parse(url, &allowed(allow)) {
            Err(HttpsError::PolicyRefused { reason }) => reason,
            other => panic!("{url}: expected a policy refusal, got {other:?}"),
        }
    }

    #[test]
    fn forbidden_addresses() {
        for a in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.0.0.2",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd00:ec2::254",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:0a00:0001::1",
        ] {
            assert!(is_forbidden_addr(a.parse().unwrap()), "{a} must be refused");
        }
        for a in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.0.1",
            "192.167.1.1",
            "223.255.255.255",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "fe7f::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert!(
                !is_forbidden_addr(a.parse().unwrap()),
                "{a} must be allowed"
            );
        }
    }

    #[test]
    fn static_url_policy() {
        assert!(refused("http://cert.example/a.pem", &[]).contains("https only"));
        assert!(refused("HTTP://cert.example/a.pem", &[]).contains("https only"));
        assert!(refused("ftp://cert.example/a.pem", &[]).contains("https only"));
        assert!(refused("/a.pem", &[]).contains("absolute"));
        assert!(refused("https://u:p@cert.example/a.pem", &[]).contains("user information"));
        assert!(refused("https://cert.example/a.pem#x", &[]).contains("fragment"));
        assert!(refused("https://127.0.0.2/a.pem", &[]).contains("127.0.0.2"));
        assert!(refused("https://[::1]:8443/a.pem", &[]).contains("::1"));
        assert!(refused("https://169.254.169.254/latest/meta-data", &[]).contains("public"));
        let long = format!("https://cert.example/{}", "a".repeat(MAX_URL_LEN));
        assert!(refused(&long, &[]).contains("longer"));
        assert!(refused("not a url", &[]).contains("valid URL"));
    }

    #[test]
    fn target_parts() {
        let t = Target::parse("https://Cert.Example.:8443/sp.pem?v=1", &allowed(&[])).unwrap();
        assert_eq!(t.host, "cert.example");
        assert_eq!(t.port, 8443);
        assert_eq!(t.authority, "Cert.Example.:8443");
        assert_eq!(t.path, "/sp.pem?v=1");
        assert!(t.ip.is_none() && !t.allow_listed);

        let t = Target::parse("https://cert.example", &allowed(&[])).unwrap();
        assert_eq!((t.port, t.path.as_str()), (443, "/"));

        // Allow-listing exempts a literal from the address check, case-insensitively.
        let t = Target::parse("https://127.0.0.2:1/x", &allowed(&["127.0.0.2"])).unwrap();
        assert!(t.allow_listed && t.ip.is_some());
        let t = Target::parse("https://[::1]:1/x", &allowed(&["[::1]"])).unwrap();
        assert_eq!(t.host, "::1");
        assert!(t.allow_listed);
        let t = Target::parse("https://REPO.test/x", &allowed(&["repo.TEST"])).unwrap();
        assert!(t.allow_listed);
    }

    #[test]
    fn max_age_parsing() {
        assert_eq!(parse_max_age("max-age=86400"), Some(86400));
        assert_eq!(
            parse_max_age("public, Max-Age = 60 , must-revalidate"),
            Some(60)
        );
        assert_eq!(parse_max_age("max-age=\"120\""), Some(120));
        assert_eq!(parse_max_age("s-maxage=10"), None);
        assert_eq!(parse_max_age("no-cache"), None);
        assert_eq!(parse_max_age("max-age=-1"), None);
        assert_eq!(
            parse_max_age("max-age=99999999999999999999999"),
            Some(u64::MAX)
        );
    }

    #[test]
    fn expiry_rules() {
        let now = 1_000_000;
        let day = MIN_POSITIVE_TTL_SECS;
        let far = (now + 365 * day) as i64;
        // No directive or a short one: 24 h.
        assert_eq!(positive_expiry(now, None, far, day, 30), now + day);
        assert_eq!(positive_expiry(now, Some(60), far, day, 30), now + day);
        // A longer max-age is honoured.
        assert_eq!(
            positive_expiry(now, Some(2 * day), far, day, 30),
            now + 2 * day
        );
        assert_eq!(
            positive_expiry(now, Some(u64::MAX), far, day, 30),
            far as u64
        );
        // notAfter caps it, with a 30 s floor for an already expired leaf.
        assert_eq!(
            positive_expiry(now, None, (now + 3600) as i64, day, 30),
            now + 3600
        );
        assert_eq!(
            positive_expiry(now, None, (now - 10) as i64, day, 30),
            now + 30
        );
        assert_eq!(positive_expiry(now, None, -5, day, 30), now + 30);
    }

    fn test_cert_der() -> Vec<u8> {
        rcgen::generate_simple_self_signed(vec!["leaf.test".to_string()])
            .unwrap()
            .cert
            .der()
            .to_vec()
    }

    #[test]
    fn body_parsing() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        let pem = format!("\n{}junk between\n{}", a.cert.pem(), b.cert.pem());
        let (chain, not_after) = parse_chain(pem.as_bytes()).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), a.cert.der().as_ref());
        assert_eq!(chain[1].as_ref(), b.cert.der().as_ref());
        assert!(not_after > 0);

        let der = test_cert_der();
        let (chain, _) = parse_chain(&der).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].as_ref(), der.as_slice());

        let mut trailing = der.clone();
        trailing.push(0);
        assert!(matches!(
            parse_chain(&trailing),
            Err(FetchError::BadBody(_))
        ));
        assert!(matches!(parse_chain(b""), Err(FetchError::BadBody(_))));
        assert!(matches!(parse_chain(b"  \n"), Err(FetchError::BadBody(_))));
        assert!(matches!(
            parse_chain(b"<html>"),
            Err(FetchError::BadBody(_))
        ));
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            parse_chain(key_only.as_bytes()),
            Err(FetchError::BadBody(_))
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_chain(garbage.as_bytes()),
            Err(FetchError::BadBody(_))
        ));
        assert!(matches!(
            parse_chain(&[0x30, 0x03, 1, 2, 3]),
            Err(FetchError::BadBody(_))
        ));
    }

    #[test]
    fn errors_map_to_436_and_display() {
        let e = FetchError::Negative(Box::new(FetchError::Status(404)));
        assert_eq!(e.sip_status(), 436);
        assert_eq!(e.cause(), &FetchError::Status(404));
        assert_eq!(
            e.to_string(),
            "x5u failed recently and is not retried yet: x5u server answered HTTP 404"
        );
        for e in [
            FetchError::PolicyRefused { reason: "x".into() },
            FetchError::Resolve("x".into()),
            FetchError::Connect("x".into()),
            FetchError::Timeout(DEFAULT_TIMEOUT),
            FetchError::Tls("x".into()),
            FetchError::Redirect {
                status: 302,
                location: "https://a/".into(),
            },
            FetchError::TooLarge { limit: 1 },
            FetchError::BadBody("x".into()),
            FetchError::Http("x".into()),
        ] {
            assert_eq!(e.sip_status(), 436, "{e}");
            assert!(e.to_string().starts_with("x5u "), "{e}");
        }
    }

    fn fetcher(cfg_edit: impl FnOnce(&mut FetchConfig)) -> X5uFetcher {
        let der = CertificateDer::from(test_cert_der());
        let mut cfg = FetchConfig::new(roots_from_der(&[der]).unwrap());
        cfg_edit(&mut cfg);
        X5uFetcher::new(cfg).unwrap()
    }

    #[test]
    fn defaults_and_empty_roots() {
        let f = fetcher(|_| {});
        let c = f.config();
        assert_eq!(c.guard.timeout, Duration::from_secs(3));
        assert_eq!(c.guard.max_body, 64 * 1024);
        assert_eq!(c.min_ttl_secs, 24 * 3600);
        assert_eq!(c.negative_ttl_secs, 30);
        assert_eq!(c.max_entries, 10_000);
        assert!(c.guard.allowed_hosts.is_empty() && c.guard.resolver.is_none());
        let err = X5uFetcher::new(FetchConfig::new(RootCertStore::empty())).unwrap_err();
        assert!(err.to_string().contains("trust anchors"), "{err}");
    }

    #[tokio::test]
    async fn resolver_hook_private_answer_is_refused_before_connecting() {
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let f = fetcher(move |cfg| {
            cfg.guard.resolver = Some(Arc::new(move |host: &str, port: u16| {
                c.fetch_add(1, Ordering::Relaxed);
                let ip: IpAddr = match host {
                    "meta.test" => "169.254.169.254".parse().unwrap(),
                    "mixed.test" => "10.0.0.1".parse().unwrap(),
                    _ => "fe80::1".parse().unwrap(),
                };
                let mut v = vec![SocketAddr::new(ip, port)];
                if host == "mixed.test" {
                    v.insert(0, SocketAddr::new("8.8.8.8".parse().unwrap(), port));
                }
                Ok(v)
            }));
        });
        for host in ["meta.test", "mixed.test", "ll.test"] {
            let err = f.fetch(&format!("https://{host}/x.pem")).await.unwrap_err();
            assert!(
                matches!(&err, FetchError::PolicyRefused { reason } if reason.contains(host)),
                "{host}: {err}"
            );
        }
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(f.stats().fetches_started.load(Ordering::Relaxed), 3);
        // Resolution-time refusals are negatively cached like any failure: no second lookup.
        let err = f.fetch("https://meta.test/x.pem").await.unwrap_err();
        assert!(
            matches!(err.cause(), FetchError::PolicyRefused { .. }),
            "{err}"
        );
        assert!(matches!(err, FetchError::Negative(_)), "{err}");
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        // Static refusals take no cache slot and start no fetch.
        f.fetch("http://meta.test/x.pem").await.unwrap_err();
        assert_eq!(f.stats().fetches_started.load(Ordering::Relaxed), 3);
        assert_eq!(f.cached_len(), 3);
    }

    #[tokio::test]
    async fn resolve_failure_is_reported() {
        let f = fetcher(|cfg| {
            cfg.guard.resolver = Some(Arc::new(|_: &str, _: u16| {
                Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"))
            }));
        });
        let err = f.fetch("https://nx.test/x.pem").await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Resolve(m) if m.contains("nx.test") && m.contains("NXDOMAIN")),
            "{err}"
        );
        let f = fetcher(|cfg| cfg.guard.resolver = Some(Arc::new(|_: &str, _: u16| Ok(vec![]))));
        let err = f.fetch("https://empty.test/x.pem").await.unwrap_err();
        assert!(matches!(err, FetchError::Resolve(_)), "{err}");
    }

    #[tokio::test]
    async fn cache_is_bounded_lru() {
        let now = Arc::new(AtomicU64::new(1_000));
        let n = now.clone();
        let f = fetcher(move |cfg| {
            cfg.max_entries = 20;
            cfg.clock = Arc::new(move || n.load(Ordering::Relaxed));
            cfg.guard.resolver = Some(Arc::new(|_: &str, _: u16| {
                Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"))
            }));
        });
        for i in 0..20 {
            f.fetch(&format!("https://h{i}.test/")).await.unwrap_err();
        }
        assert_eq!(f.cached_len(), 20);
        // Touch h0 so it is the most recently used; the next insert evicts 2 (a tenth) others.
        f.fetch("https://h0.test/").await.unwrap_err();
        f.fetch("https://new.test/").await.unwrap_err();
        assert_eq!(f.cached_len(), 19);
        let before = f.stats().negative_hits.load(Ordering::Relaxed);
        f.fetch("https://h0.test/").await.unwrap_err();
        assert_eq!(f.stats().negative_hits.load(Ordering::Relaxed), before + 1);
        let started = f.stats().fetches_started.load(Ordering::Relaxed);
        f.fetch("https://h1.test/").await.unwrap_err();
        assert_eq!(
            f.stats().fetches_started.load(Ordering::Relaxed),
            started + 1,
            "h1 was the least recently used and must have been evicted"
        );
        // Once everything has expired, a full cache is emptied of it first.
        now.fetch_add(NEGATIVE_TTL_SECS, Ordering::Relaxed);
        for i in 0..5 {
            f.fetch(&format!("https://later{i}.test/"))
                .await
                .unwrap_err();
        }
        assert_eq!(f.cached_len(), 5);
    }
}
