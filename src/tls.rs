//! Certificates and TLS configurations for every TLS surface of the gateway: the HTTP/3 (QUIC)
//! server, the QUIC client toward RIPT peers, the SIP-TLS listener, and SIP-TLS connections
//! toward trunks (RFC 5922 server identity).
//!
//! There is deliberately no "insecure" switch: a peer is trusted through a CA file (which may
//! hold the peer's own self-signed certificate) and/or a SHA-256 pin of its leaf certificate.
//!
//! Servers take their certificate from a [`CertSlot`], asked on every handshake, so that a
//! reload (SIGHUP, `POST /reload` on the admin listener) changes what new connections see and
//! leaves established connections and their calls alone (ADR 0011).

use crate::config::{Config, RiptPeerConfig, SipTrunkConfig};
use anyhow::{anyhow, bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The one crypto provider of the process (ring; see the crate's crypto ADR).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain with its private key.
#[derive(Debug)]
pub struct Identity {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Lower-case hex SHA-256 of the leaf certificate's DER; what a peer puts in `pin_sha256`.
    pub fingerprint_sha256: String,
}

impl Identity {
    /// `PrivateKeyDer` is not `Clone` (to make copies of secrets explicit); every TLS config
    /// built from one identity needs its own copy.
    pub fn key_clone(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert_chain: self.cert_chain.clone(),
            key: self.key_clone(),
            fingerprint_sha256: self.fingerprint_sha256.clone(),
        }
    }
}

/// SHA-256 of `der`.
pub fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex SHA-256 of `der`.
pub fn sha256_hex(der: &[u8]) -> String {
    hex(&sha256(der))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A SHA-256 certificate fingerprint written as 64 hex digits, optionally in colon-separated
/// pairs (`AB:CD:...`, as `openssl x509 -fingerprint -sha256` prints it).
pub fn parse_sha256_fingerprint(s: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = s.trim().bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// How long the generated development certificate is valid. Browsers accept a self-signed
/// certificate by hash (WebTransport `serverCertificateHashes`) only when it is ECDSA and
/// valid for at most 14 days; 13 leaves a day for clocks that disagree.
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(13 * 86400);
/// The generated certificate is replaced when less than this remains of its validity.
pub const DEV_CERT_RENEW_BEFORE: Duration = Duration::from_secs(2 * 86400);
/// A generated certificate valid for longer than this (one written by an older riptide) is
/// replaced: browsers refuse it for `serverCertificateHashes`.
const HASH_PIN_MAX_VALIDITY: Duration = Duration::from_secs(14 * 86400);
/// File next to the generated certificate holding its SHA-256 (hex), for browser pages.
pub const DEV_CERT_HASH_FILE: &str = "cert.sha256";

/// Where a server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files the operator provides; read again on reload, never written.
    Files { cert: PathBuf, key: PathBuf },
    /// The development certificate `cert.pem`/`key.pem` in the data directory: self-signed
    /// ECDSA P-256, generated on first start and replaced when less than
    /// [`DEV_CERT_RENEW_BEFORE`] of its validity remains.
    Generated {
        data_dir: PathBuf,
        server_name: String,
    },
}

impl CertSource {
    /// Reads (and for a generated certificate, creates or renews) the identity.
    pub fn load(&self) -> anyhow::Result<Identity> {
        self.load_at(SystemTime::now())
    }

    /// [`load`](Self::load) with the clock given, so renewal can be tested.
    pub fn load_at(&self, now: SystemTime) -> anyhow::Result<Identity> {
        match self {
            CertSource::Files { cert, key } => load_pem_pair(cert, key),
            CertSource::Generated {
                data_dir,
                server_name,
            } => load_generated(data_dir, server_name, now),
        }
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> PathBuf {
        match self {
            CertSource::Files { cert, .. } => cert.clone(),
            CertSource::Generated { data_dir, .. } => data_dir.join("cert.pem"),
        }
    }
}

/// Loads the identity from `cert_file`/`key_file` when both are given; otherwise uses
/// `data_dir/cert.pem` and `data_dir/key.pem`, the development certificate (see
/// [`CertSource::Generated`]).
pub fn load_or_generate(
    data_dir: &Path,
    server_name: &str,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> anyhow::Result<Identity> {
    cert_source(data_dir, server_name, cert_file, key_file)?.load()
}

/// The source [`load_or_generate`] reads.
pub fn cert_source(
    data_dir: &Path,
    server_name: &str,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> anyhow::Result<CertSource> {
    match (cert_file, key_file) {
        (Some(c), Some(k)) => Ok(CertSource::Files {
            cert: c.to_path_buf(),
            key: k.to_path_buf(),
        }),
        (None, None) => Ok(CertSource::Generated {
            data_dir: data_dir.to_path_buf(),
            server_name: server_name.to_string(),
        }),
        (Some(c), None) => bail!("certificate {} is set but its key file is not", c.display()),
        (None, Some(k)) => bail!("key file {} is set but its certificate is not", k.display()),
    }
}

fn load_generated(data_dir: &Path, server_name: &str, now: SystemTime) -> anyhow::Result<Identity> {
    let cert_path = data_dir.join("cert.pem");
    let key_path = data_dir.join("key.pem");
    let id = match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let id = load_pem_pair(&cert_path, &key_path)?;
            let why = match certified_key(&id) {
                Err(e) => Some(format!("{e:#}")),
                Ok(_) => renewal_reason(&id.cert_chain[0], now)
                    .with_context(|| format!("{}: cannot parse", cert_path.display()))?,
            };
            match why {
                None => id,
                Some(why) => {
                    tracing::info!(
                        cert = %cert_path.display(),
                        "replacing the development certificate: {why}"
                    );
                    generate(data_dir, server_name, &cert_path, &key_path, now)?
                }
            }
        }
        (false, false) => generate(data_dir, server_name, &cert_path, &key_path, now)?,
        // Regenerating here would silently change the fingerprint that peers pin.
        _ => bail!(
            "{}: only one of cert.pem and key.pem exists; remove the other or restore it",
            data_dir.display()
        ),
    };
    let hash_path = data_dir.join(DEV_CERT_HASH_FILE);
    let line = format!("{}\n", id.fingerprint_sha256);
    if std::fs::read_to_string(&hash_path).ok().as_deref() != Some(line.as_str()) {
        std::fs::write(&hash_path, &line)
            .with_context(|| format!("{}: cannot write", hash_path.display()))?;
    }
    tracing::info!(
        cert = %cert_path.display(),
        sha256 = %id.fingerprint_sha256,
        hash_file = %hash_path.display(),
        "development certificate (self-signed ECDSA P-256, at most 13 days; browsers can trust it \
         through serverCertificateHashes with this SHA-256)"
    );
    Ok(id)
}

/// Why the generated certificate `der` must be replaced at `now`, if it must.
fn renewal_reason(der: &CertificateDer<'_>, now: SystemTime) -> anyhow::Result<Option<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    let (from, until) = (v.not_before.timestamp(), v.not_after.timestamp());
    let now = now
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs() as i64;
    let secs = |d: Duration| d.as_secs() as i64;
    if until - now < secs(DEV_CERT_RENEW_BEFORE) {
        return Ok(Some(format!(
            "{} s of validity left, less than {} s",
            until - now,
            secs(DEV_CERT_RENEW_BEFORE)
        )));
    }
    if until - from > secs(HASH_PIN_MAX_VALIDITY) {
        return Ok(Some(format!(
            "valid for {} days, longer than the 14 days browsers accept for serverCertificateHashes",
            (until - from) / 86400
        )));
    }
    Ok(None)
}

fn load_pem_pair(cert_path: &Path, key_path: &Path) -> anyhow::Result<Identity> {
    let cert_chain = read_certs(cert_path)?;
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("{}: cannot read private key", key_path.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{}: malformed PEM", key_path.display()))?
        .ok_or_else(|| anyhow!("{}: no private key found in PEM", key_path.display()))?;
    let fingerprint_sha256 = sha256_hex(cert_chain[0].as_ref());
    Ok(Identity {
        cert_chain,
        key,
        fingerprint_sha256,
    })
}

/// Reads every certificate of a PEM file; at least one must be present.
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("{}: cannot read certificate file", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: malformed PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate found in PEM", path.display());
    }
    Ok(certs)
}

/// Writes a new development certificate and key (replacing any old pair) valid from an hour
/// before `now` for [`DEV_CERT_VALIDITY`].
fn generate(
    data_dir: &Path,
    server_name: &str,
    cert_path: &Path,
    key_path: &Path,
    now: SystemTime,
) -> anyhow::Result<Identity> {
    create_private_dir(data_dir)?;
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the TLS key")?;
    let mut names = vec![server_name.to_string()];
    for n in ["localhost", "127.0.0.1", "::1"] {
        if n != server_name {
            names.push(n.to_string());
        }
    }
    let mut params = rcgen::CertificateParams::new(names)
        .with_context(|| format!("server name {server_name:?} is not a valid DNS name or IP"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, server_name);
    params.distinguished_name = dn;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    // Back-date by an hour so a peer whose clock is slightly behind still accepts it; the
    // whole validity (not_before to not_after) stays DEV_CERT_VALIDITY.
    let since_epoch = now
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let not_before = since_epoch.saturating_sub(Duration::from_secs(3600));
    params.not_before = epoch + not_before;
    params.not_after = epoch + not_before + DEV_CERT_VALIDITY;
    let cert = params
        .self_signed(&key_pair)
        .context("self-signing the TLS certificate")?;

    // New files are written aside and renamed over the old ones, so a reader never sees half
    // a file; the key keeps mode 0600 throughout.
    let key_tmp = key_path.with_extension("pem.new");
    let cert_tmp = cert_path.with_extension("pem.new");
    let _ = std::fs::remove_file(&key_tmp);
    write_private(&key_tmp, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert_tmp, cert.pem())
        .with_context(|| format!("{}: cannot write certificate", cert_tmp.display()))?;
    std::fs::rename(&key_tmp, key_path)
        .with_context(|| format!("{}: cannot replace", key_path.display()))?;
    std::fs::rename(&cert_tmp, cert_path)
        .with_context(|| format!("{}: cannot replace", cert_path.display()))?;
    tracing::info!(
        cert = %cert_path.display(),
        "generated a self-signed certificate for {server_name}"
    );
    let der = cert.der().clone();
    Ok(Identity {
        fingerprint_sha256: sha256_hex(der.as_ref()),
        cert_chain: vec![der],
        key: PrivateKeyDer::Pkcs8(key_pair.serialize_der().into()),
    })
}

/// Creates `dir` (and parents) with mode 0700 where it does not exist yet.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .with_context(|| format!("{}: cannot create data directory", dir.display()))
}

/// Writes a secret file readable by its owner only; it is created with that mode so the secret
/// is never briefly world-readable.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("{}: cannot create key file", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("{}: cannot write key file", path.display()))
}

/// Request streams a client may have open at once on a new connection to our server. quinn sets
/// up the state of every stream the limit allows when the connection starts (about 85 bytes each,
/// over 5 MB at 65 536), so the server starts here and raises the limit as a connection fills
/// (see `ript::server`), instead of paying for the most any peer could ever use.
pub const INITIAL_REQUEST_STREAMS: u32 = 1024;

/// Bidirectional streams a server may open toward our client: HTTP/3 servers open none (RFC 9114
/// §6.1), and riptide's client carries no WebTransport sessions.
const CLIENT_PEER_BIDI_STREAMS: u32 = 16;

/// Unidirectional streams a peer may open: HTTP/3 control and QPACK streams (3 each way), plus a
/// browser's WebTransport streams toward the server.
const SERVER_PEER_UNI_STREAMS: u32 = 1024;
const CLIENT_PEER_UNI_STREAMS: u32 = 64;

/// Bytes of QUIC datagrams queued each way, to send and received but not yet read. When a queue
/// is full quinn drops its oldest datagrams. 256 KiB (about 50 ms at 500 calls) lost 500–850
/// packets per 500-call run on the 2-core test machine, silently, while the call-setup burst
/// held up the reader; 4 MiB lost none (docs/performance.md, "Fourth round"). On the send side
/// the media hub keeps quinn's queue to about 60 ms at the path's rate (`media::stale`, ADR
/// 0019), so this size only bounds memory there.
pub const DATAGRAM_BUFFER: usize = 4 << 20;

fn transport_config(bidi: u32, uni: u32) -> anyhow::Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60))
                .context("idle timeout out of range")?,
        ))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(uni));
    Ok(Arc::new(t))
}

fn certified_key(id: &Identity) -> anyhow::Result<Arc<CertifiedKey>> {
    CertifiedKey::from_der(id.cert_chain.clone(), id.key_clone(), &provider())
        .map(Arc::new)
        .context("certificate and private key do not match or are unsupported")
}

/// The certificate a TLS server presents, replaceable while it runs. rustls asks the slot on
/// every handshake; connections already established keep the certificate they were made with.
pub struct CertSlot {
    /// `None`: a fixed identity that [`reload`](Self::reload) leaves as it is.
    source: Option<CertSource>,
    current: RwLock<Served>,
}

#[derive(Clone)]
struct Served {
    key: Arc<CertifiedKey>,
    identity: Identity,
}

/// What a [`CertSlot::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// New handshakes present the certificate with this fingerprint (hex SHA-256).
    Replaced { old: String, new: String },
    /// The source holds the certificate already in use.
    Unchanged(String),
}

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSlot")
            .field("source", &self.source)
            .field("sha256", &self.fingerprint_sha256())
            .finish()
    }
}

impl CertSlot {
    /// Loads `source` now; an error names the file.
    pub fn load(source: CertSource) -> anyhow::Result<Arc<Self>> {
        let identity = source.load()?;
        let key =
            certified_key(&identity).with_context(|| source.cert_path().display().to_string())?;
        Ok(Arc::new(CertSlot {
            source: Some(source),
            current: RwLock::new(Served { key, identity }),
        }))
    }

    /// A slot that always presents `id`.
    pub fn fixed(id: &Identity) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(CertSlot {
            source: None,
            current: RwLock::new(Served {
                key: certified_key(id)?,
                identity: id.clone(),
            }),
        }))
    }

    fn served(&self) -> Served {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The identity new handshakes present.
    pub fn identity(&self) -> Identity {
        self.served().identity
    }

    /// Hex SHA-256 of the leaf new handshakes present.
    pub fn fingerprint_sha256(&self) -> String {
        self.served().identity.fingerprint_sha256
    }

    pub fn source(&self) -> Option<&CertSource> {
        self.source.as_ref()
    }

    /// Reads the source again (renewing a generated certificate that is near its end). On
    /// success new handshakes present the result; on any error (unreadable or malformed file,
    /// key that does not match the certificate) the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<Reloaded> {
        let old = self.fingerprint_sha256();
        let Some(source) = &self.source else {
            return Ok(Reloaded::Unchanged(old));
        };
        let identity = source.load()?;
        let key =
            certified_key(&identity).with_context(|| source.cert_path().display().to_string())?;
        let new = identity.fingerprint_sha256.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Served { key, identity };
        Ok(if new == old {
            Reloaded::Unchanged(new)
        } else {
            Reloaded::Replaced { old, new }
        })
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served().key)
    }
}

/// Every certificate slot of a running gateway, for reloading them together.
#[derive(Debug, Default)]
pub struct CertReloader {
    slots: Vec<(String, Arc<CertSlot>)>,
}

impl CertReloader {
    /// Adds `slot` under `label` (a slot shared by two listeners is reloaded once).
    pub fn add(&mut self, label: &str, slot: &Arc<CertSlot>) {
        if !self.slots.iter().any(|(_, s)| Arc::ptr_eq(s, slot)) {
            self.slots.push((label.to_string(), slot.clone()));
        }
    }

    /// Reloads every slot and logs each outcome. `Ok` holds one line per slot; `Err` when
    /// any slot failed (that slot keeps its certificate; the others are reloaded anyway).
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        self.reload_where(|_| true)
    }

    /// Reloads the slots holding a generated certificate, which renews it when it is near
    /// its end; operator files are only read on an explicit [`reload`](Self::reload).
    pub fn renew_generated(&self) -> Result<Vec<String>, Vec<String>> {
        self.reload_where(|s| matches!(s.source(), Some(CertSource::Generated { .. })))
    }

    fn reload_where(&self, pick: impl Fn(&CertSlot) -> bool) -> Result<Vec<String>, Vec<String>> {
        let mut lines = Vec::new();
        let mut failed = false;
        for (label, slot) in self.slots.iter().filter(|(_, s)| pick(s)) {
            match slot.reload() {
                Ok(Reloaded::Replaced { old, new }) => {
                    tracing::info!(listener = %label, sha256 = %new, previous = %old, "certificate reloaded: new handshakes use it");
                    lines.push(format!("{label}: now {new} (was {old})"));
                }
                Ok(Reloaded::Unchanged(fp)) => {
                    tracing::info!(listener = %label, sha256 = %fp, "certificate reloaded: unchanged");
                    lines.push(format!("{label}: unchanged {fp}"));
                }
                Err(e) => {
                    failed = true;
                    let kept = slot.fingerprint_sha256();
                    tracing::error!(listener = %label, error = %format!("{e:#}"), kept = %kept, "certificate reload failed; the certificate in use stays");
                    lines.push(format!("{label}: reload failed, keeping {kept}: {e:#}"));
                }
            }
        }
        if failed {
            Err(lines)
        } else {
            Ok(lines)
        }
    }
}

/// QUIC server configuration for the HTTP/3 listener: TLS 1.3, ALPN `h3`, datagrams on, the
/// certificate taken from `certs` on every handshake.
pub fn quic_server_config(certs: Arc<CertSlot>) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not supported by the crypto provider")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // TLS-04: no 0-RTT. Early data can be replayed by anyone who captured it, and
    // `POST {TG}/calls` places a call (not idempotent). With 0 here the session tickets we
    // issue do not allow early data, so a resuming client cannot send any: every request waits
    // for the full handshake. (quinn accepts only 0 or u32::MAX; u32::MAX would enable it.)
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("building the QUIC server TLS configuration")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config(
        INITIAL_REQUEST_STREAMS,
        SERVER_PEER_UNI_STREAMS,
    )?);
    Ok(cfg)
}
/// The TLS name to verify for a peer: `server_name` if set, else the host of its URL.
pub fn peer_server_name(peer: &RiptPeerConfig) -> anyhow::Result<String> {
    if let Some(n) = &peer.server_name {
        return Ok(n.clone());
    }
    let rest = peer
        .url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("ript_peer {}: url must start with https://", peer.name))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() {
        bail!("ript_peer {}: url has no host", peer.name);
    }
    Ok(host.to_string())
}

/// QUIC client configuration for calling `peer`.
pub fn quic_client_config(
    peer: &RiptPeerConfig,
    cfg: &Config,
) -> anyhow::Result<quinn::ClientConfig> {
    let provider = provider();
    let webpki = match &peer.ca_file {
        Some(ca) => Some(webpki_verifier(&cfg.resolve_path(ca), &provider)?),
        None => None,
    };
    let pin = match &peer.pin_sha256 {
        Some(p) => Some(Pin::Fixed(normalize_pin(p).ok_or_else(|| {
            anyhow!("ript_peer {}: pin_sha256 is not 64 hex digits", peer.name)
        })?)),
        None => None,
    };
    if webpki.is_none() && pin.is_none() {
        bail!("ript_peer {}: set ca_file or pin_sha256", peer.name);
    }
    client_config(PeerVerifier {
        webpki,
        pin,
        provider,
    })
}

/// QUIC client configuration for calling this gateway's own HTTP/3 server: the server must
/// present exactly the certificate `certs` serves at the time, so the pin follows a reload or
/// the renewal of the development certificate.
pub fn self_client_config(certs: Arc<CertSlot>) -> anyhow::Result<quinn::ClientConfig> {
    client_config(PeerVerifier {
        webpki: None,
        pin: Some(Pin::Live(certs)),
        provider: provider(),
    })
}

fn client_config(verifier: PeerVerifier) -> anyhow::Result<quinn::ClientConfig> {
    let provider = verifier.provider.clone();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not supported by the crypto provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("building the QUIC client TLS configuration")?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    qc.transport_config(transport_config(
        CLIENT_PEER_BIDI_STREAMS,
        CLIENT_PEER_UNI_STREAMS,
    )?);
    Ok(qc)
}

fn webpki_verifier(
    ca_file: &Path,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    let roots = roots_from(ca_file)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .with_context(|| format!("{}: cannot build a verifier", ca_file.display()))
}

fn roots_from(ca_file: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    add_roots(&mut roots, ca_file)?;
    Ok(roots)
}

fn add_roots(roots: &mut RootCertStore, ca_file: &Path) -> anyhow::Result<()> {
    for cert in read_certs(ca_file)? {
        roots.add(cert).with_context(|| {
            format!(
                "{}: certificate is not a usable trust anchor",
                ca_file.display()
            )
        })?;
    }
    Ok(())
}

/// Accepts `ab:CD:...` or plain hex; returns lower-case hex of exactly 32 bytes.
fn normalize_pin(pin: &str) -> Option<String> {
    parse_sha256_fingerprint(pin).map(|b| hex(&b))
}

/// The leaf certificate a peer must present.
#[derive(Debug)]
enum Pin {
    /// Hex SHA-256 from the configuration.
    Fixed(String),
    /// Whatever this gateway's own server presents now.
    Live(Arc<CertSlot>),
}

/// The handshake-signature half of a certificate verifier, the same for all of ours: the
/// certificate check decides who the peer is; these prove it holds that certificate's key,
/// with the crypto provider's algorithms. Expands inside an `impl` of `ServerCertVerifier` or
/// `ClientCertVerifier` for a type whose `provider` field is the `CryptoProvider`.
macro_rules! handshake_signatures_with_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Verifies a peer by webpki (CA file), by leaf pin, or both when both are configured.
#[derive(Debug)]
struct PeerVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<Pin>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = match &self.pin {
            Some(Pin::Fixed(p)) => Some(p.clone()),
            Some(Pin::Live(slot)) => Some(slot.fingerprint_sha256()),
            None => None,
        };
        if let Some(pin) = expected {
            if sha256_hex(end_entity.as_ref()) != pin {
                return Err(rustls::Error::General(
                    "peer certificate does not match pin_sha256".into(),
                ));
            }
        }
        if let Some(w) = &self.webpki {
            w.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    // The pin only identifies the certificate; these prove the peer holds its key.
    handshake_signatures_with_provider!();
}

/// TLS acceptor for the SIP-TLS listener (TLS 1.2 and 1.3: SIP equipment often lacks 1.3),
/// presenting what `certs` serves at each handshake. With `clients`, a client certificate is
/// asked for (and checked by it); without, none is.
pub fn sip_tls_acceptor(
    certs: Arc<CertSlot>,
    clients: Option<Arc<TrunkClientVerifier>>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2/1.3 not supported by the crypto provider")?;
    let builder = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let tls = builder.with_cert_resolver(certs);
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// TLS-03: the client certificates SIP-TLS accepts, from every `[[sip_trunk]]`'s
/// `tls_client_ca` and `tls_client_fingerprints`; `None` when no trunk sets either (then no
/// certificate is asked for).
pub fn sip_client_verifier(cfg: &Config) -> anyhow::Result<Option<Arc<TrunkClientVerifier>>> {
    let mut roots = RootCertStore::empty();
    let mut listed = Vec::new();
    for t in &cfg.sip_trunks {
        if let Some(ca) = &t.tls_client_ca {
            add_roots(&mut roots, &cfg.resolve_path(ca))
                .with_context(|| format!("sip_trunk {}: tls_client_ca", t.name))?;
        }
        for fp in &t.tls_client_fingerprints {
            listed.push(parse_sha256_fingerprint(fp).ok_or_else(|| {
                anyhow!(
                    "sip_trunk {}: tls_client_fingerprints: {fp:?} is not a SHA-256 fingerprint",
                    t.name
                )
            })?);
        }
    }
    if roots.is_empty() && listed.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(TrunkClientVerifier::new(roots, listed)?)))
}

/// Checks SIP-TLS client certificates: one issued by a trusted CA (the union of the trunks'
/// `tls_client_ca`), or one that a trunk lists by fingerprint. A client without a certificate
/// is let through (trunks without mTLS keep working); which trunk a certificate may speak
/// for is checked per request by the engine.
#[derive(Debug)]
pub struct TrunkClientVerifier {
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    listed: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl TrunkClientVerifier {
    pub fn new(roots: RootCertStore, listed: Vec<[u8; 32]>) -> anyhow::Result<Self> {
        let provider = provider();
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .context("building the SIP-TLS client certificate verifier")?,
            )
        };
        Ok(TrunkClientVerifier {
            webpki,
            listed,
            provider,
        })
    }
}

impl ClientCertVerifier for TrunkClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // A listed self-signed certificate has no CA to hint at; an empty list asks clients
        // for whatever certificate they have.
        match &self.webpki {
            Some(w) if self.listed.is_empty() => w.root_hint_subjects(),
            _ => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let by_ca = match &self.webpki {
            Some(w) => w.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        match by_ca {
            Ok(v) => Ok(v),
            // Like `pin_sha256` for RIPT peers, a listed certificate is trusted as it is.
            Err(_) if self.listed.contains(&sha256(end_entity.as_ref())) => {
                Ok(ClientCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    // The certificate identifies the client; these prove it holds the certificate's key.
    handshake_signatures_with_provider!();
}

/// The HTTP/3 server's certificate source for `cfg`, with relative paths resolved:
/// `[http3] cert_file`/`key_file` when set, else the development certificate in data_dir.
pub fn http3_cert_source(cfg: &Config) -> anyhow::Result<CertSource> {
    let resolve = |p: &Option<PathBuf>| p.as_ref().map(|p| cfg.resolve_path(p));
    let cert = resolve(&cfg.http3.cert_file);
    let key = resolve(&cfg.http3.key_file);
    cert_source(
        &cfg.resolve_path(&cfg.general.data_dir),
        &cfg.http3.server_name,
        cert.as_deref(),
        key.as_deref(),
    )
}

/// The HTTP/3 identity for `cfg` (see [`http3_cert_source`]).
pub fn http3_identity(cfg: &Config) -> anyhow::Result<Identity> {
    http3_cert_source(cfg)?.load()
}

/// The SIP-TLS listener's certificate source: `[sip] tls_cert`/`tls_key` when set, else
/// `None` (the listener shares the HTTP/3 certificate).
pub fn sip_cert_source(cfg: &Config) -> Option<CertSource> {
    match (&cfg.sip.tls_cert, &cfg.sip.tls_key) {
        (Some(c), Some(k)) => Some(CertSource::Files {
            cert: cfg.resolve_path(c),
            key: cfg.resolve_path(k),
        }),
        _ => None,
    }
}

/// RFC 5922 §7: whether a SIP peer's certificate identifies `domain`. With a subjectAltName,
/// only its entries count: a URI `sip:domain` (no user part) or a dNSName equal to `domain`,
/// compared case-insensitively; wildcard names never match (§7.2). Without any
/// subjectAltName, the subject's CN is compared instead. A certificate that cannot be parsed
/// identifies nothing.
pub fn sip_identity_matches(cert_der: &[u8], domain: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let domain = domain.trim_end_matches('.');
    let eq = |name: &str| name.trim_end_matches('.').eq_ignore_ascii_case(domain);
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().any(|g| match g {
            GeneralName::DNSName(d) => !d.contains('*') && eq(d),
            GeneralName::URI(u) => {
                let Some(rest) = u.strip_prefix("sip:").or_else(|| u.strip_prefix("SIP:")) else {
                    return false;
                };
                // `sip:host` only: a user part or parameters name something else.
                !rest.contains(['@', ';', '?', ':']) && eq(rest)
            }
            _ => false,
        }),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .any(|cn| !cn.contains('*') && eq(cn)),
        Err(_) => false,
    }
}

/// What RFC 5922 §7.1 compares in a SIP peer's certificate, for messages: every URI and
/// dNSName of the subjectAltName (`URI:sip:peer.example`, `DNS:peer.example`), or the
/// subject's CN (`CN:peer.example`) when the certificate has no subjectAltName.
pub fn sip_identities(cert_der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return vec![];
    };
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                GeneralName::URI(u) => Some(format!("URI:{u}")),
                _ => None,
            })
            .collect(),
        Ok(None) => cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(|cn| format!("CN:{cn}"))
            .collect(),
        Err(_) => vec![],
    }
}

/// How riptide connects over SIP-TLS to one `[[sip_trunk]]`: the client configuration (TLS 1.2
/// and 1.3, the trunk's `tls_ca` roots with the RFC 5922 identity check, the optional client
/// certificate) and the trunk's SIP domain, sent as SNI when it is a DNS name and checked
/// against the certificate.
#[derive(Clone)]
pub struct SipTlsClient {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for SipTlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipTlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The SIP domain a trunk's TLS certificate must identify (RFC 5922 §7.1): `tls_server_name`
/// when set, else the host of the URI requests are sent to (`outbound_proxy`, else `target`).
pub fn sip_trunk_domain(t: &SipTrunkConfig) -> anyhow::Result<String> {
    if let Some(n) = &t.tls_server_name {
        return Ok(n.clone());
    }
    let uri = t.outbound_proxy.as_deref().unwrap_or(&t.target);
    let (host, _, _) = crate::sip::msg::uri_target(uri)
        .ok_or_else(|| anyhow!("sip_trunk {}: {uri} is not a SIP URI", t.name))?;
    Ok(host)
}

/// Outgoing SIP-TLS toward trunk `t`: needs `tls_ca`; presents `tls_client_cert` with
/// `tls_client_key` when both are set. Errors name the trunk, the key and the file.
pub fn sip_trunk_tls(cfg: &Config, t: &SipTrunkConfig) -> anyhow::Result<SipTlsClient> {
    let domain = sip_trunk_domain(t)?;
    let server_name = ServerName::try_from(domain.clone()).map_err(|_| {
        anyhow!(
            "sip_trunk {}: {domain:?} is not a DNS name or IP address",
            t.name
        )
    })?;
    let ca = t.tls_ca.as_ref().ok_or_else(|| {
        anyhow!(
            "sip_trunk {}: tls_ca is not set (the roots the trunk's certificate must chain to)",
            t.name
        )
    })?;
    let roots = roots_from(&cfg.resolve_path(ca))
        .with_context(|| format!("sip_trunk {}: tls_ca", t.name))?;
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2/1.3 not supported by the crypto provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SipServerVerifier {
            roots: Arc::new(roots),
            provider,
        }));
    let tls = match (&t.tls_client_cert, &t.tls_client_key) {
        (Some(c), Some(k)) => {
            let (c, k) = (cfg.resolve_path(c), cfg.resolve_path(k));
            let id = load_pem_pair(&c, &k)
                .with_context(|| format!("sip_trunk {}: tls_client_cert", t.name))?;
            builder
                .with_client_auth_cert(id.cert_chain, id.key)
                .with_context(|| {
                    format!(
                        "sip_trunk {}: tls_client_cert {} and tls_client_key {}: certificate \
                         and private key do not match or are unsupported",
                        t.name,
                        c.display(),
                        k.display()
                    )
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!(
            "sip_trunk {}: set tls_client_cert and tls_client_key together",
            t.name
        ),
    };
    Ok(SipTlsClient {
        connector: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        server_name,
    })
}

/// Checks a SIP-TLS server's certificate (RFC 5922 §7.1, §7.2): its chain must verify
/// against the trunk's roots for server authentication (webpki path validation, without
/// webpki's own name check, which knows only dNSName and iPAddress), and the certificate must
/// identify the SIP domain, the name the connection was opened for, by
/// [`sip_identity_matches`].
#[derive(Debug)]
struct SipServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SipServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let domain = server_name.to_str();
        if sip_identity_matches(end_entity.as_ref(), &domain) {
            return Ok(ServerCertVerified::assertion());
        }
        let presented = sip_identities(end_entity.as_ref());
        tracing::warn!(
            expected = %domain,
            certificate = %presented.join(", "),
            "SIP-TLS server certificate does not identify the expected domain (RFC 5922: a \
             URI sip:DOMAIN, else a dNSName, else the CN without subjectAltName; no wildcards)"
        );
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext {
                expected: server_name.to_owned(),
                presented,
            },
        ))
    }

    // The certificate identifies the server; these prove it holds the certificate's key.
    handshake_signatures_with_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "riptide-tls-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn peer(server_name: &str, ca: Option<PathBuf>, pin: Option<String>) -> RiptPeerConfig {
        RiptPeerConfig {
            name: "p".into(),
            url: "https://127.0.0.1:1".into(),
            server_name: Some(server_name.into()),
            tg: "t".into(),
            ca_file: ca,
            pin_sha256: pin,
            token: Some("x".into()),
            token_file: None,
            codecs: vec![],
        }
    }

    /// Runs one handshake against a fresh server with `id`; Ok on success.
    async fn handshake(
        id: &Identity,
        client: quinn::ClientConfig,
        name: &str,
    ) -> anyhow::Result<()> {
        let server_cfg = quic_server_config(CertSlot::fixed(id)?)?;
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse()?)?;
        let addr: SocketAddr = server.local_addr()?;
        let accept = tokio::spawn(async move {
            if let Some(inc) = server.accept().await {
                // The server side fails too when the client rejects; only the client's view counts.
                let _ = inc.await;
            }
            server
        });
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        ep.set_default_client_config(client);
        let res = ep.connect(addr, name)?.await;
        if let Ok(c) = &res {
            assert_eq!(
                c.handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol),
                Some(b"h3".to_vec())
            );
            c.close(0u32.into(), b"done");
        }
        ep.close(0u32.into(), b"done");
        let server = accept.await?;
        server.close(0u32.into(), b"done");
        res.map(|_| ()).map_err(|e| anyhow!("{e}"))
    }

    #[test]
    fn generates_once_then_reloads_same_identity() {
        let d = temp_dir("gen");
        let a = load_or_generate(&d, "gw.example", None, None).unwrap();
        let b = load_or_generate(&d, "gw.example", None, None).unwrap();
        assert_eq!(a.fingerprint_sha256, b.fingerprint_sha256);
        assert_eq!(a.fingerprint_sha256.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key_mode = std::fs::metadata(d.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(key_mode & 0o777, 0o600);
            let dir_mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(dir_mode & 0o777, 0o700);
        }
        std::fs::remove_file(d.join("key.pem")).unwrap();
        let err = load_or_generate(&d, "gw.example", None, None).unwrap_err();
        assert!(err.to_string().contains("only one of"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn explicit_files_errors_name_the_file() {
        let d = temp_dir("files");
        std::fs::create_dir_all(&d).unwrap();
        let bad = d.join("bad.pem");
        std::fs::write(&bad, "not pem at all").unwrap();
        let err = load_or_generate(&d, "x", Some(&bad), Some(&bad)).unwrap_err();
        assert!(format!("{err:#}").contains("bad.pem"), "{err:#}");
        let missing = d.join("missing.pem");
        let err = load_or_generate(&d, "x", Some(&missing), Some(&bad)).unwrap_err();
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn client_config_requires_trust() {
        let cfg = crate::config::embedded_default();
        let err = quic_client_config(&peer("localhost", None, None), &cfg).unwrap_err();
        assert_eq!(err.to_string(), "ript_peer p: set ca_file or pin_sha256");
        let err =
            quic_client_config(&peer("localhost", None, Some("abc".into())), &cfg).unwrap_err();
        assert!(err.to_string().contains("pin_sha256"), "{err}");
    }

    #[test]
    fn peer_server_name_defaults_to_url_host() {
        let mut p = peer("x", None, None);
        p.server_name = None;
        p.url = "https://gw.example:4433".into();
        assert_eq!(peer_server_name(&p).unwrap(), "gw.example");
        p.url = "https://[::1]:4433/".into();
        assert_eq!(peer_server_name(&p).unwrap(), "::1");
    }

    /// Media datagrams are real time: a reader that stalls (overloaded, descheduled) finds at most
    /// `DATAGRAM_BUFFER` of backlog when it resumes, and it is the newest media. Of four times
    /// that in numbered datagrams, sent while the other side reads none, only the newest
    /// `DATAGRAM_BUFFER` bytes' worth are delivered, in order.
    #[tokio::test]
    async fn a_stalled_reader_gets_only_the_newest_datagrams() {
        const SIZE: usize = 200;
        let d = temp_dir("dgram");
        let id = load_or_generate(&d, "localhost", None, None).unwrap();
        let slot = CertSlot::fixed(&id).unwrap();
        let server_cfg = quic_server_config(slot.clone()).unwrap();
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(self_client_config(slot).unwrap());
        let (client, reader) = tokio::join!(
            async { ep.connect(addr, "localhost").unwrap().await.unwrap() },
            async { server.accept().await.unwrap().await.unwrap() }
        );
        let n = 4 * DATAGRAM_BUFFER / SIZE;
        for i in 0..n {
            let mut b = vec![0u8; SIZE];
            b[..4].copy_from_slice(&(i as u32).to_be_bytes());
            client.send_datagram(b.into()).unwrap();
        }
        // The reader stalls while they arrive, then reads up to the newest one (or until none
        // comes for 2 s).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut got: Vec<usize> = Vec::new();
        while got.last().is_none_or(|&l| l + 1 < n) {
            match tokio::time::timeout(Duration::from_secs(2), reader.read_datagram()).await {
                Ok(Ok(d)) => got.push(u32::from_be_bytes(d[..4].try_into().unwrap()) as usize),
                _ => break,
            }
        }
        let kept = DATAGRAM_BUFFER / SIZE;
        assert!(!got.is_empty(), "nothing arrived");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
        assert!(
            got.len() <= kept,
            "{} datagrams held, room for {kept}",
            got.len()
        );
        let (first, last) = (got[0], got[got.len() - 1]);
        assert!(first + kept >= n, "datagram {first} of {n} was still held");
        assert!(
            first >= n / 2,
            "the reader was handed a backlog from datagram {first} of {n}"
        );
        // The newest are the ones kept (a loopback loss of the very last ones aside).
        assert!(last + 50 >= n, "newest delivered is {last} of {n}");
        client.close(0u32.into(), b"done");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn handshake_with_self_signed_cert_as_ca_file() {
        let d = temp_dir("ca");
        let id = load_or_generate(&d, "localhost", None, None).unwrap();
        let cfg = crate::config::embedded_default();
        let client =
            quic_client_config(&peer("localhost", Some(d.join("cert.pem")), None), &cfg).unwrap();
        handshake(&id, client, "localhost").await.unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn handshake_with_matching_pin_succeeds_and_wrong_pin_fails() {
        let d = temp_dir("pin");
        let id = load_or_generate(&d, "localhost", None, None).unwrap();
        let cfg = crate::config::embedded_default();
        let good = id.fingerprint_sha256.to_uppercase();
        let client = quic_client_config(&peer("localhost", None, Some(good)), &cfg).unwrap();
        handshake(&id, client, "localhost").await.unwrap();

        let wrong = "00".repeat(32);
        let client = quic_client_config(&peer("localhost", None, Some(wrong)), &cfg).unwrap();
        let err = handshake(&id, client, "localhost").await.unwrap_err();
        assert!(err.to_string().contains("pin"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn handshake_fails_for_a_certificate_of_another_name() {
        let d = temp_dir("name");
        let id = load_or_generate(&d, "a.example", None, None).unwrap();
        let cfg = crate::config::embedded_default();
        let client =
            quic_client_config(&peer("b.example", Some(d.join("cert.pem")), None), &cfg).unwrap();
        let err = handshake(&id, client, "b.example").await.unwrap_err();
        assert!(
            err.to_string()
                .to_lowercase()
                .contains("not valid for name"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn handshake_fails_with_an_unrelated_ca_file() {
        let server_dir = temp_dir("srv");
        let other_dir = temp_dir("other");
        let id = load_or_generate(&server_dir, "localhost", None, None).unwrap();
        load_or_generate(&other_dir, "localhost", None, None).unwrap();
        let cfg = crate::config::embedded_default();
        let client = quic_client_config(
            &peer("localhost", Some(other_dir.join("cert.pem")), None),
            &cfg,
        )
        .unwrap();
        assert!(handshake(&id, client, "localhost").await.is_err());
        let _ = std::fs::remove_dir_all(&server_dir);
        let _ = std::fs::remove_dir_all(&other_dir);
    }

    #[test]
    fn sip_acceptor_builds_from_generated_identity() {
        let d = temp_dir("sip");
        let id = load_or_generate(&d, "localhost", None, None).unwrap();
        assert!(sip_tls_acceptor(CertSlot::fixed(&id).unwrap(), None).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    fn cert_with(sans: Vec<rcgen::SanType>, cn: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn sip_identity_follows_rfc_5922() {
        use rcgen::SanType;
        let dns = |d: &str| SanType::DnsName(d.try_into().unwrap());
        let uri = |u: &str| SanType::URI(u.try_into().unwrap());
        let c = cert_with(vec![uri("sip:peer.example")], "other.example");
        assert!(sip_identity_matches(&c, "peer.example"));
        assert!(sip_identity_matches(&c, "PEER.example."));
        assert!(
            !sip_identity_matches(&c, "other.example"),
            "CN ignored when a SAN exists"
        );
        let c = cert_with(vec![dns("peer.example")], "x");
        assert!(sip_identity_matches(&c, "peer.example"), "dNSName only");
        let c = cert_with(vec![dns("*.example")], "a.example");
        assert!(!sip_identity_matches(&c, "a.example"), "no wildcards");
        let c = cert_with(vec![uri("sip:alice@peer.example")], "x");
        assert!(
            !sip_identity_matches(&c, "peer.example"),
            "a user's URI is not the domain"
        );
        let c = cert_with(vec![], "cn.example");
        assert!(
            sip_identity_matches(&c, "cn.example"),
            "CN when there is no SAN"
        );
        assert!(!sip_identity_matches(b"junk", "cn.example"));
    }

    fn days(d: f64) -> Duration {
        Duration::from_secs_f64(d * 86400.0)
    }

    fn generated(d: &Path) -> CertSource {
        CertSource::Generated {
            data_dir: d.to_path_buf(),
            server_name: "localhost".into(),
        }
    }

    /// (not_before, not_after) of a certificate, in seconds since 1970.
    fn validity(der: &[u8]) -> (i64, i64) {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let v = cert.validity();
        (v.not_before.timestamp(), v.not_after.timestamp())
    }

    fn unix(t: SystemTime) -> i64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
    }

    /// Writes a self-signed certificate for localhost valid over `from..until` as
    /// `dir/{name}-cert.pem` and `dir/{name}-key.pem`; returns both paths and its fingerprint.
    fn write_cert(
        dir: &Path,
        name: &str,
        from: SystemTime,
        until: SystemTime,
    ) -> (PathBuf, PathBuf, String) {
        std::fs::create_dir_all(dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + from.duration_since(UNIX_EPOCH).unwrap();
        params.not_after = epoch + until.duration_since(UNIX_EPOCH).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, sha256_hex(cert.der()))
    }

    #[test]
    fn development_certificate_is_p256_valid_13_days_with_its_hash_beside_it() {
        use x509_parser::oid_registry::{
            OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256,
        };
        let d = temp_dir("dev");
        let now = SystemTime::now();
        let id = generated(&d).load_at(now).unwrap();
        let der = id.cert_chain[0].as_ref();
        let (from, until) = validity(der);
        assert!(until - from <= 13 * 86400, "valid {} s", until - from);
        assert!(from <= unix(now) && unix(now) + 11 * 86400 < until);
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let spki = cert.public_key();
        assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        assert_eq!(curve, Some(OID_EC_P256), "P-256");
        assert_eq!(
            cert.signature_algorithm.algorithm,
            OID_SIG_ECDSA_WITH_SHA256
        );
        let hash = std::fs::read_to_string(d.join(DEV_CERT_HASH_FILE)).unwrap();
        assert_eq!(hash.trim(), sha256_hex(der));
        assert_eq!(hash.trim(), id.fingerprint_sha256);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn development_certificate_is_renewed_when_less_than_two_days_remain() {
        let d = temp_dir("renew");
        let src = generated(&d);
        let t0 = SystemTime::now();
        let a = src.load_at(t0).unwrap();
        // Valid from t0 - 1 h for 13 days: at t0 + 10.9 days more than 2 days remain.
        let kept = src.load_at(t0 + days(10.9)).unwrap();
        assert_eq!(kept.fingerprint_sha256, a.fingerprint_sha256);
        // At t0 + 11 days, 2 days less an hour remain.
        let t1 = t0 + days(11.0);
        let b = src.load_at(t1).unwrap();
        assert_ne!(b.fingerprint_sha256, a.fingerprint_sha256, "renewed");
        let (from, until) = validity(b.cert_chain[0].as_ref());
        assert!(from <= unix(t1) && until - from <= 13 * 86400);
        assert!(until > unix(t1) + 12 * 86400);
        let on_disk = read_certs(&d.join("cert.pem")).unwrap();
        assert_eq!(sha256_hex(on_disk[0].as_ref()), b.fingerprint_sha256);
        let hash = std::fs::read_to_string(d.join(DEV_CERT_HASH_FILE)).unwrap();
        assert_eq!(hash.trim(), b.fingerprint_sha256);
        assert_eq!(
            src.load_at(t1).unwrap().fingerprint_sha256,
            b.fingerprint_sha256,
            "the renewed pair is what the next start loads"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.join("key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_year_long_development_certificate_is_replaced() {
        let d = temp_dir("year");
        let now = SystemTime::now();
        let (c, k, old) = write_cert(&d, "old", now - days(1.0), now + days(364.0));
        std::fs::rename(c, d.join("cert.pem")).unwrap();
        std::fs::rename(k, d.join("key.pem")).unwrap();
        let id = generated(&d).load_at(now).unwrap();
        assert_ne!(id.fingerprint_sha256, old);
        let (from, until) = validity(id.cert_chain[0].as_ref());
        assert!(until - from <= 13 * 86400);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn configured_certificate_files_are_never_replaced() {
        let d = temp_dir("configured");
        let now = SystemTime::now();
        // An hour left and a year long: both would make a generated certificate be replaced.
        let (c, k, fp) = write_cert(&d, "prod", now - days(365.0), now + days(1.0 / 24.0));
        let (cert_before, key_before) = (std::fs::read(&c).unwrap(), std::fs::read(&k).unwrap());
        let src = cert_source(&d, "localhost", Some(&c), Some(&k)).unwrap();
        let id = src.load_at(now).unwrap();
        assert_eq!(id.fingerprint_sha256, fp);
        let id = load_or_generate(&d, "localhost", Some(&c), Some(&k)).unwrap();
        assert_eq!(id.fingerprint_sha256, fp);
        let slot = CertSlot::load(src).unwrap();
        assert_eq!(slot.reload().unwrap(), Reloaded::Unchanged(fp));
        assert_eq!(std::fs::read(&c).unwrap(), cert_before);
        assert_eq!(std::fs::read(&k).unwrap(), key_before);
        for generated in ["cert.pem", "key.pem", DEV_CERT_HASH_FILE] {
            assert!(!d.join(generated).exists(), "{generated} was written");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reload_switches_the_certificate_and_keeps_it_when_the_files_are_bad() {
        let d = temp_dir("reload");
        let now = SystemTime::now();
        let (c, k, fa) = write_cert(&d, "live", now - days(1.0), now + days(30.0));
        let slot = CertSlot::load(CertSource::Files {
            cert: c.clone(),
            key: k.clone(),
        })
        .unwrap();
        assert_eq!(slot.fingerprint_sha256(), fa);
        assert_eq!(slot.reload().unwrap(), Reloaded::Unchanged(fa.clone()));

        let (cb, kb, fb) = write_cert(&d, "next", now - days(1.0), now + days(30.0));
        std::fs::copy(&cb, &c).unwrap();
        std::fs::copy(&kb, &k).unwrap();
        assert_eq!(
            slot.reload().unwrap(),
            Reloaded::Replaced {
                old: fa.clone(),
                new: fb.clone()
            }
        );
        assert_eq!(slot.identity().fingerprint_sha256, fb);

        std::fs::write(&c, "garbage").unwrap();
        let err = format!("{:#}", slot.reload().unwrap_err());
        assert!(
            err.contains("live-cert.pem") && err.contains("no certificate"),
            "{err}"
        );
        assert_eq!(slot.fingerprint_sha256(), fb, "the old certificate stays");

        // A certificate whose key is not the key file's.
        let (ca, _, _) = write_cert(&d, "other", now - days(1.0), now + days(30.0));
        std::fs::copy(&ca, &c).unwrap();
        let err = format!("{:#}", slot.reload().unwrap_err());
        assert!(err.contains("do not match"), "{err}");
        assert_eq!(slot.fingerprint_sha256(), fb);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_sha256_fingerprint(&plain), Some([0xab; 32]));
        assert_eq!(parse_sha256_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(parse_sha256_fingerprint(&"ab".repeat(31)), None);
        assert_eq!(parse_sha256_fingerprint(&"zz".repeat(32)), None);
        assert_eq!(parse_sha256_fingerprint(&"é".repeat(32)), None);
    }

    /// Connects twice from one client endpoint (with early data enabled) to a server built
    /// from `server_cfg`; the second connection resumes the first's session and tries 0-RTT.
    /// Returns `None` when the client could not even offer early data, else whether the server
    /// accepted it.
    async fn zero_rtt_on_resumption(
        server_cfg: quinn::ServerConfig,
        id: &Identity,
    ) -> Option<bool> {
        let server = quinn::Endpoint::server(server_cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        let srv = server.clone();
        let accept = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Some(inc) = srv.accept().await {
                if let Ok(c) = inc.await {
                    conns.push(c);
                }
            }
        });
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                webpki: None,
                pin: Some(Pin::Fixed(id.fingerprint_sha256.clone())),
                provider: provider(),
            }))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        tls.enable_early_data = true;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let first = ep.connect(addr, "localhost").unwrap().await.unwrap();
        // The session tickets come after the handshake.
        tokio::time::sleep(Duration::from_millis(300)).await;
        first.close(0u32.into(), b"done");
        let out = match ep.connect(addr, "localhost").unwrap().into_0rtt() {
            Ok((conn, accepted)) => {
                let accepted = accepted.await;
                conn.close(0u32.into(), b"done");
                Some(accepted)
            }
            Err(connecting) => {
                connecting
                    .await
                    .expect("the resumed handshake itself succeeds");
                None
            }
        };
        ep.close(0u32.into(), b"done");
        server.close(0u32.into(), b"done");
        let _ = accept.await;
        out
    }

    /// TLS-04: a resuming client cannot get 0-RTT data (such as `POST {TG}/calls`) accepted
    /// by the HTTP/3 server. The control run, a server that allows early data, shows the
    /// client really attempts 0-RTT.
    #[tokio::test]
    async fn http3_server_refuses_0rtt_data_on_resumption() {
        let d = temp_dir("0rtt");
        let id = load_or_generate(&d, "localhost", None, None).unwrap();
        let mut permissive = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(CertSlot::fixed(&id).unwrap());
        permissive.alpn_protocols = vec![b"h3".to_vec()];
        permissive.max_early_data_size = u32::MAX;
        let permissive = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(permissive).unwrap(),
        ));
        assert_eq!(
            zero_rtt_on_resumption(permissive, &id).await,
            Some(true),
            "control: with early data allowed the client's 0-RTT is accepted"
        );
        let ours = quic_server_config(CertSlot::fixed(&id).unwrap()).unwrap();
        let got = zero_rtt_on_resumption(ours, &id).await;
        assert_ne!(got, Some(true), "0-RTT data was accepted");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A CA for SIP-TLS tests, issuing server and client certificates.
    struct TestCa {
        pem: String,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    /// A certificate chain (leaf only) with its key, and the leaf's PEM files once written.
    struct Leaf {
        der: CertificateDer<'static>,
        pem: String,
        key_pem: String,
        key: PrivateKeyDer<'static>,
    }

    impl TestCa {
        fn new(cn: &str) -> TestCa {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, cn);
            p.distinguished_name = dn;
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let pem = p.self_signed(&key).unwrap().pem();
            TestCa {
                pem,
                issuer: rcgen::Issuer::new(p, key),
            }
        }

        fn leaf(&self, sans: Vec<rcgen::SanType>, cn: &str) -> Leaf {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.subject_alt_names = sans;
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, cn);
            p.distinguished_name = dn;
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            Leaf {
                der: cert.der().clone(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
                key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            }
        }
    }

    fn uri_san(u: &str) -> rcgen::SanType {
        rcgen::SanType::URI(u.try_into().unwrap())
    }

    fn dns_san(d: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(d.try_into().unwrap())
    }

    /// A configuration with one trunk "t" at `target` whose `tls_ca` is `ca_pem`, plus `extra`
    /// trunk keys; files live in `dir`.
    fn tls_trunk_config(dir: &Path, target: &str, ca_pem: &str, extra: &str) -> Config {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        let text = format!(
            "[[sip_trunk]]\nname = \"t\"\ntarget = \"{target}\"\ntls_ca = \"ca.pem\"\n{extra}"
        );
        let mut cfg = crate::config::load_str(&text, "t.toml").unwrap();
        cfg.base_dir = dir.to_path_buf();
        cfg
    }

    /// What a test SIP-TLS server saw of one handshake.
    #[derive(Debug)]
    struct Seen {
        sni: Option<String>,
        client_cert: Option<CertificateDer<'static>>,
    }

    /// Serves one TLS handshake with `leaf` on 127.0.0.1 (only TLS 1.2 with `tls12_only`),
    /// asking for a client certificate from `client_ca` when given.
    async fn one_handshake_server(
        leaf: &Leaf,
        tls12_only: bool,
        client_ca: Option<&TestCa>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Result<Seen, String>>) {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap();
        let b = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in rustls_pemfile::certs(&mut ca.pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                b.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .unwrap(),
                )
            }
            None => b.with_no_client_auth(),
        };
        let cfg = b
            .with_single_cert(vec![leaf.der.clone()], leaf.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (tcp, _) = l.accept().await.map_err(|e| e.to_string())?;
            let mut s = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            // One byte each way, so the client's handshake is complete on both sides (TLS 1.3
            // clients learn of a refused certificate at their first read).
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            s.write_all(b"k").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let conn = s.get_ref().1;
            Ok(Seen {
                sni: conn.server_name().map(str::to_string),
                client_cert: conn.peer_certificates().map(|c| c[0].clone().into_owned()),
            })
        });
        (addr, task)
    }

    /// Connects with the trunk's client settings to `addr`; Ok once a byte went each way.
    async fn trunk_connect(client: &SipTlsClient, addr: SocketAddr) -> Result<(), String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut s = client
            .connector
            .connect(client.server_name.clone(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"p").await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Outgoing SIP-TLS (RFC 5922 §7.1): the certificate must chain to `tls_ca` and identify
    /// the trunk's domain by a `sip:` URI, else a dNSName; a `sip:` URI of another domain or a
    /// certificate of another CA fails the handshake. SNI carries the domain.
    #[tokio::test]
    async fn sip_trunk_tls_checks_chain_and_rfc_5922_identity() {
        let d = temp_dir("sip-client");
        let ca = TestCa::new("trunk CA");
        let cfg = tls_trunk_config(&d, "sip:peer.example:5061;transport=tls", &ca.pem, "");
        let client = sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap();
        assert_eq!(client.server_name.to_str(), "peer.example");

        let by_uri = ca.leaf(vec![uri_san("sip:peer.example")], "x");
        let (addr, srv) = one_handshake_server(&by_uri, false, None).await;
        trunk_connect(&client, addr).await.unwrap();
        let seen = srv.await.unwrap().unwrap();
        assert_eq!(
            seen.sni.as_deref(),
            Some("peer.example"),
            "SNI is the domain"
        );
        assert!(
            seen.client_cert.is_none(),
            "no client certificate configured"
        );

        // dNSName only (no URI SAN), over TLS 1.2 as much SIP equipment still speaks.
        let by_dns = ca.leaf(vec![dns_san("peer.example")], "x");
        let (addr, srv) = one_handshake_server(&by_dns, true, None).await;
        trunk_connect(&client, addr).await.unwrap();
        srv.await.unwrap().unwrap();

        // A URI SAN for another domain: refused, though the CN names the domain (the CN
        // counts only in a certificate without subjectAltName).
        let other = ca.leaf(vec![uri_san("sip:other.example")], "peer.example");
        let (addr, srv) = one_handshake_server(&other, false, None).await;
        let err = trunk_connect(&client, addr).await.unwrap_err();
        assert!(
            err.contains("peer.example") && err.contains("URI:sip:other.example"),
            "the error names the expected domain and the certificate's identities: {err}"
        );
        assert!(
            srv.await.unwrap().is_err(),
            "the server saw the handshake fail"
        );

        // webpki's own name check would accept this one (a dNSName wildcard covering the
        // domain); RFC 5922 §7.2 forbids wildcards.
        let wildcard = ca.leaf(vec![dns_san("*.example")], "x");
        let (addr, srv) = one_handshake_server(&wildcard, false, None).await;
        assert!(trunk_connect(&client, addr).await.is_err(), "no wildcards");
        let _ = srv.await;

        // The right identity from a CA that is not the trunk's.
        let stranger = TestCa::new("stranger CA").leaf(vec![uri_san("sip:peer.example")], "x");
        let (addr, srv) = one_handshake_server(&stranger, false, None).await;
        let err = trunk_connect(&client, addr).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
        let _ = srv.await;
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A trunk written with an IP address: without `tls_server_name` no SNI goes out and the
    /// certificate must name the address itself; with it, the certificate must identify that
    /// domain, which SNI carries.
    #[tokio::test]
    async fn tls_server_name_sets_the_domain_for_an_ip_target() {
        let d = temp_dir("sip-ip");
        let ca = TestCa::new("trunk CA");
        let leaf = ca.leaf(vec![uri_san("sip:carrier.example")], "x");

        let cfg = tls_trunk_config(&d, "sip:127.0.0.1:5061;transport=tls", &ca.pem, "");
        let client = sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap();
        let (addr, srv) = one_handshake_server(&leaf, false, None).await;
        let err = trunk_connect(&client, addr).await.unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
        let _ = srv.await;

        let cfg = tls_trunk_config(
            &d,
            "sip:127.0.0.1:5061;transport=tls",
            &ca.pem,
            "tls_server_name = \"carrier.example\"\n",
        );
        let client = sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap();
        let (addr, srv) = one_handshake_server(&leaf, false, None).await;
        trunk_connect(&client, addr).await.unwrap();
        let seen = srv.await.unwrap().unwrap();
        assert_eq!(seen.sni.as_deref(), Some("carrier.example"));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// `tls_client_cert`/`tls_client_key`: presented to a trunk that asks for a certificate;
    /// without them a trunk that requires one refuses the handshake.
    #[tokio::test]
    async fn sip_trunk_tls_presents_the_client_certificate() {
        let d = temp_dir("sip-mtls");
        let ca = TestCa::new("trunk CA");
        let server = ca.leaf(vec![uri_san("sip:peer.example")], "x");
        let ours = ca.leaf(vec![dns_san("gw.example")], "riptide");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("client.pem"), &ours.pem).unwrap();
        std::fs::write(d.join("client.key"), &ours.key_pem).unwrap();
        let target = "sips:peer.example";
        let cfg = tls_trunk_config(
            &d,
            target,
            &ca.pem,
            "tls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"\n",
        );
        let client = sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap();
        let (addr, srv) = one_handshake_server(&server, false, Some(&ca)).await;
        trunk_connect(&client, addr).await.unwrap();
        let seen = srv.await.unwrap().unwrap();
        assert_eq!(seen.client_cert.as_ref(), Some(&ours.der));

        let cfg = tls_trunk_config(&d, target, &ca.pem, "");
        let client = sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap();
        let (addr, srv) = one_handshake_server(&server, false, Some(&ca)).await;
        assert!(trunk_connect(&client, addr).await.is_err());
        assert!(srv.await.unwrap().is_err());

        // A key that is not the certificate's: refused at start, naming the files.
        let other = ca.leaf(vec![], "other");
        std::fs::write(d.join("client.key"), &other.key_pem).unwrap();
        let cfg = tls_trunk_config(
            &d,
            target,
            &ca.pem,
            "tls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"\n",
        );
        let err = format!("{:#}", sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap_err());
        assert!(
            err.contains("sip_trunk t")
                && err.contains("client.key")
                && err.contains("do not match"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sip_trunk_domain_is_the_host_requests_go_to() {
        let d = temp_dir("sip-domain");
        let cfg = tls_trunk_config(&d, "sip:pbx@peer.example:5061;transport=tls", "", "");
        assert_eq!(
            sip_trunk_domain(&cfg.sip_trunks[0]).unwrap(),
            "peer.example"
        );
        let cfg = tls_trunk_config(
            &d,
            "sip:peer.example",
            "",
            "outbound_proxy = \"sips:proxy.example\"\n",
        );
        assert_eq!(
            sip_trunk_domain(&cfg.sip_trunks[0]).unwrap(),
            "proxy.example"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sip_identities_lists_what_rfc_5922_compares() {
        let c = cert_with(vec![uri_san("sip:a.example"), dns_san("b.example")], "c");
        assert_eq!(
            sip_identities(&c),
            vec!["URI:sip:a.example", "DNS:b.example"]
        );
        let c = cert_with(vec![], "cn.example");
        assert_eq!(sip_identities(&c), vec!["CN:cn.example"]);
    }
}
