//! Certificates and TLS configurations for every TLS surface of the gateway: the HTTP/3 (QUIC)
//! server, the QUIC client toward RIPT peers, and the SIP-TLS listener.
//!
//! There is deliberately no "insecure" switch: a peer is trusted through a CA file (which may
//! hold the peer's own self-signed certificate) and/or a SHA-256 pin of its leaf certificate.

use crate::config::{Config, RiptPeerConfig};
use anyhow::{anyhow, bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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

/// Lower-case hex SHA-256 of `der`.
pub fn sha256_hex(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
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

/// Loads the identity from `cert_file`/`key_file` when both are given; otherwise uses
/// `data_dir/cert.pem` and `data_dir/key.pem`, generating a self-signed pair on first start.
pub fn load_or_generate(
    data_dir: &Path,
    server_name: &str,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
) -> anyhow::Result<Identity> {
    match (cert_file, key_file) {
        (Some(c), Some(k)) => return load_pem_pair(c, k),
        (None, None) => {}
        (Some(c), None) => bail!("certificate {} is set but its key file is not", c.display()),
        (None, Some(k)) => bail!("key file {} is set but its certificate is not", k.display()),
    }
    let cert_path = data_dir.join("cert.pem");
    let key_path = data_dir.join("key.pem");
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => load_pem_pair(&cert_path, &key_path),
        (false, false) => generate(data_dir, server_name, &cert_path, &key_path),
        // Regenerating here would silently change the fingerprint that peers pin.
        _ => bail!(
            "{}: only one of cert.pem and key.pem exists; remove the other or restore it",
            data_dir.display()
        ),
    }
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

fn generate(
    data_dir: &Path,
    server_name: &str,
    cert_path: &Path,
    key_path: &Path,
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
    // Back-date by an hour so a peer whose clock is slightly behind still accepts it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock is before 1970")?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + now.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + now + Duration::from_secs(365 * 24 * 3600);
    let cert = params
        .self_signed(&key_pair)
        .context("self-signing the TLS certificate")?;

    write_private(key_path, key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem())
        .with_context(|| format!("{}: cannot write certificate", cert_path.display()))?;
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

fn transport_config() -> anyhow::Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(4 << 20))
        .datagram_send_buffer_size(4 << 20)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60))
                .context("idle timeout out of range")?,
        ))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(65536))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(1024));
    Ok(Arc::new(t))
}

/// QUIC server configuration for the HTTP/3 listener: TLS 1.3, ALPN `h3`, datagrams on.
pub fn quic_server_config(id: &Identity) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not supported by the crypto provider")?
        .with_no_client_auth()
        .with_single_cert(id.cert_chain.clone(), id.key_clone())
        .context("certificate and private key do not match or are unsupported")?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    // quinn requires either 0 or u32::MAX; 0-RTT stays off because call setup is not idempotent.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("building the QUIC server TLS configuration")?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport_config()?);
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
    let pin =
        match &peer.pin_sha256 {
            Some(p) => Some(normalize_pin(p).ok_or_else(|| {
                anyhow!("ript_peer {}: pin_sha256 is not 64 hex digits", peer.name)
            })?),
            None => None,
        };
    if webpki.is_none() && pin.is_none() {
        bail!("ript_peer {}: set ca_file or pin_sha256", peer.name);
    }
    let verifier = Arc::new(PeerVerifier {
        webpki,
        pin,
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is not supported by the crypto provider")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("building the QUIC client TLS configuration")?;
    let mut qc = quinn::ClientConfig::new(Arc::new(crypto));
    qc.transport_config(transport_config()?);
    Ok(qc)
}

fn webpki_verifier(
    ca_file: &Path,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_file)? {
        roots.add(cert).with_context(|| {
            format!(
                "{}: certificate is not a usable trust anchor",
                ca_file.display()
            )
        })?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .with_context(|| format!("{}: cannot build a verifier", ca_file.display()))
}

/// Accepts `ab:CD:...` or plain hex; returns lower-case hex of exactly 32 bytes.
fn normalize_pin(pin: &str) -> Option<String> {
    let h: String = pin
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit())).then_some(h)
}

/// Verifies a peer by webpki (CA file), by leaf pin, or both when both are configured.
#[derive(Debug)]
struct PeerVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pin: Option<String>,
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
        if let Some(pin) = &self.pin {
            if sha256_hex(end_entity.as_ref()) != *pin {
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
}

/// TLS acceptor for the SIP-TLS listener (TLS 1.2 and 1.3: SIP equipment often lacks 1.3).
pub fn sip_tls_acceptor(id: &Identity) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS 1.2/1.3 not supported by the crypto provider")?
        .with_no_client_auth()
        .with_single_cert(id.cert_chain.clone(), id.key_clone())
        .context("certificate and private key do not match or are unsupported")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

/// Where the HTTP/3 identity lives for `cfg`, with relative paths resolved.
pub fn http3_identity(cfg: &Config) -> anyhow::Result<Identity> {
    let resolve = |p: &Option<PathBuf>| p.as_ref().map(|p| cfg.resolve_path(p));
    let cert = resolve(&cfg.http3.cert_file);
    let key = resolve(&cfg.http3.key_file);
    load_or_generate(
        &cfg.resolve_path(&cfg.general.data_dir),
        &cfg.http3.server_name,
        cert.as_deref(),
        key.as_deref(),
    )
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
        let server_cfg = quic_server_config(id)?;
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
        assert!(sip_tls_acceptor(&id).is_ok());
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
}
