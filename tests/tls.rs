//! TLS hardening that a test can see from outside: the SIP-TLS listener speaks TLS 1.2 and 1.3
//! only (checked with Debian's openssl as an independent client), trunks can require client
//! certificates (TLS-03), calls toward trunks go over SIP-TLS only to a server whose
//! certificate identifies the trunk's domain (TLS-02, RFC 5922), certificates are reloaded on
//! SIGHUP without dropping connections, and the whole dependency tree has one crypto provider
//! (ring; ADR 0006).

use riptide::config;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// `openssl s_client` against `addr` with one protocol version forced; true when the handshake
/// completed. `@SECLEVEL=0` lets the client offer TLS 1.0/1.1 at all, so a refusal can only
/// come from the server.
fn openssl_handshake(addr: SocketAddr, version_flag: &str) -> bool {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            version_flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-brief",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("openssl (Debian package openssl) must be installed for this test");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("CONNECTION ESTABLISHED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_tls_accepts_tls_1_2_and_1_3_only() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = config::embedded_default();
    let dir = std::env::temp_dir().join(format!("riptide-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cfg.general.data_dir = dir.clone();
    cfg.sip.udp = vec!["127.0.0.1:15460".parse().unwrap()];
    cfg.sip.tcp = vec![];
    let tls: SocketAddr = "127.0.0.1:15461".parse().unwrap();
    cfg.sip.tls = vec![tls];
    cfg.http3.listen = "127.0.0.1:15462".parse().unwrap();
    cfg.admin.listen = None;
    cfg.media.port_min = 33000;
    cfg.media.port_max = 33099;
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let check =
        move |flag: &'static str| tokio::task::spawn_blocking(move || openssl_handshake(tls, flag));
    assert!(
        check("-tls1_2").await.unwrap(),
        "TLS 1.2 must work (else this test proves nothing)"
    );
    assert!(check("-tls1_3").await.unwrap(), "TLS 1.3 must work");
    assert!(!check("-tls1_1").await.unwrap(), "TLS 1.1 must be refused");
    assert!(!check("-tls1").await.unwrap(), "TLS 1.0 must be refused");
    let _ = std::fs::remove_dir_all(dir);
}

/// The package names in Cargo.lock with each name's versions.
fn locked_packages() -> std::collections::BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"))
        .expect("Cargo.lock");
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            out.entry(n)
                .or_default()
                .push(v.trim_matches('"').to_string());
        }
    }
    out
}

#[test]
fn one_crypto_provider_in_the_whole_tree() {
    let pkgs = locked_packages();
    for banned in [
        "aws-lc-rs",
        "aws-lc-sys",
        "aws-lc-fips-sys",
        "openssl-sys",
        "boring-sys",
    ] {
        assert!(
            !pkgs.contains_key(banned),
            "{banned} is in Cargo.lock: a second crypto provider (ADR 0006 allows ring only)"
        );
    }
    assert_eq!(
        pkgs.get("ring").map(Vec::len),
        Some(1),
        "exactly one ring: {:?}",
        pkgs.get("ring")
    );
    assert_eq!(
        pkgs.get("rustls").map(Vec::len),
        Some(1),
        "one rustls: {:?}",
        pkgs.get("rustls")
    );
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "riptide-tls-it-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// A certificate with its key, as rcgen made it.
struct Cert {
    der: CertificateDer<'static>,
    pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl Cert {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    fn sha256(&self) -> String {
        sha256_hex(self.der.as_ref())
    }

    /// Writes `{name}-cert.pem` and `{name}-key.pem` into `dir`.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}-cert.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, &self.pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

fn params(cn: &str, sans: &[&str]) -> rcgen::CertificateParams {
    let mut p =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name = dn;
    p
}

fn finish(cert: rcgen::Certificate, key: &rcgen::KeyPair) -> Cert {
    Cert {
        der: cert.der().clone(),
        pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}

/// A self-signed server certificate for localhost.
fn server_cert(cn: &str) -> Cert {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params(cn, &["localhost", "127.0.0.1"])
        .self_signed(&key)
        .unwrap();
    finish(cert, &key)
}

/// A CA that issues client certificates.
struct Ca {
    cert: Cert,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = params(cn, &[]);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = finish(p.self_signed(&key).unwrap(), &key);
        Ca {
            cert,
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn client(&self, cn: &str) -> Cert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = params(cn, &["carrier.example"]);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        finish(p.signed_by(&key, &self.issuer).unwrap(), &key)
    }
}

/// A TLS client trusting `roots`, presenting `client` when given.
fn tls_client(roots: &[&Cert], client: Option<&Cert>) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.der.clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store);
    let cfg = match client {
        Some(c) => b
            .with_client_auth_cert(vec![c.der.clone()], c.key())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type SipTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` from `local` (an address of the loopback range).
async fn sip_tls(
    addr: SocketAddr,
    local: &str,
    client: &tokio_rustls::TlsConnector,
) -> std::io::Result<SipTls> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(format!("{local}:0").parse().unwrap())?;
    let tcp = sock.connect(addr).await?;
    client
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The certificate the server presented on `s`.
fn served(s: &SipTls) -> String {
    sha256_hex(s.get_ref().1.peer_certificates().unwrap()[0].as_ref())
}

/// Sends an out-of-dialog request (`OPTIONS` or `INVITE`) on `s` and returns the status of
/// the first response, or the I/O error that ended the connection instead.
async fn request(s: &mut SipTls, method: &str, tag: &str) -> Result<u16, String> {
    let (ip, port) = {
        let a = s.get_ref().0.local_addr().unwrap();
        (a.ip(), a.port())
    };
    let text = format!(
        "{method} sip:riptide@127.0.0.1;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {ip}:{port};branch=z9hG4bK{tag}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{ip}>;tag={tag}\r\n\
         To: <sip:riptide@127.0.0.1>\r\n\
         Call-ID: {tag}@{ip}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sips:probe@{ip}:{port}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    s.write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = match timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err("no answer within 5 s".into()),
        };
        if n == 0 {
            return Err("connection closed".into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        // Skip provisional responses.
        for head in text.split("\r\n\r\n") {
            if let Some(code) = head
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
            {
                if code >= 200 {
                    return Ok(code);
                }
            }
        }
    }
}

/// TLS-03: a trunk with `tls_client_ca` and `tls_client_fingerprints`. A certificate from a
/// CA nobody configured fails the handshake; one from the trunk's CA that the trunk does not
/// list gets 403 to its requests; the listed one is served. Sources that are not the trunk's
/// still connect without a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_tls_client_certificates_per_trunk() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = temp_dir("mtls");
    let server = server_cert("riptide sip");
    let (server_c, server_k) = server.write(&dir, "server");
    let ca = Ca::new("carrier CA");
    std::fs::write(dir.join("carrier-ca.pem"), &ca.cert.pem).unwrap();
    let listed = ca.client("listed");
    let unlisted = ca.client("unlisted");
    let stranger = Ca::new("stranger CA").client("stranger");
    // Written the way openssl prints it, to check the colon form.
    let listed_fp = listed
        .sha256()
        .to_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let tls: SocketAddr = "127.0.0.1:15471".parse().unwrap();
    let text = format!(
        r#"
[general]
data_dir = "{data}"
[sip]
udp = ["127.0.0.1:15470"]
tcp = []
tls = ["{tls}"]
tls_cert = "{server_c}"
tls_key = "{server_k}"
[http3]
listen = "127.0.0.1:15472"
[media]
port_min = 33100
port_max = 33199
[[sip_trunk]]
name = "carrier"
target = "sip:127.0.0.1:15479"
match_sources = ["127.0.0.1"]
tls_client_ca = "{ca}"
tls_client_fingerprints = ["{listed_fp}"]
"#,
        data = dir.join("data").display(),
        server_c = server_c.display(),
        server_k = server_k.display(),
        ca = dir.join("carrier-ca.pem").display(),
    );
    let mut cfg = config::load_str(&text, "mtls.toml").expect("valid configuration");
    cfg.admin.listen = None;
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");

    // Unknown CA: the server refuses the certificate. In TLS 1.3 the client learns it at its
    // first read, as the server's alert.
    let client = tls_client(&[&server], Some(&stranger));
    let outcome = match sip_tls(tls, "127.0.0.1", &client).await {
        Err(e) => Err(e.to_string()),
        Ok(mut s) => request(&mut s, "OPTIONS", "stranger1").await,
    };
    let err = outcome.expect_err("a certificate from an unknown CA fails the handshake");
    assert!(
        err.to_lowercase().contains("alert") || err.to_lowercase().contains("unknown"),
        "{err}"
    );

    // The trunk's CA, but not a listed certificate: 403 to OPTIONS and INVITE.
    let client = tls_client(&[&server], Some(&unlisted));
    let mut s = sip_tls(tls, "127.0.0.1", &client).await.unwrap();
    assert_eq!(request(&mut s, "OPTIONS", "unlisted1").await, Ok(403));
    assert_eq!(request(&mut s, "INVITE", "unlisted2").await, Ok(403));

    // No certificate at all from the trunk's address: 403 as well.
    let client = tls_client(&[&server], None);
    let mut s = sip_tls(tls, "127.0.0.1", &client).await.unwrap();
    assert_eq!(request(&mut s, "OPTIONS", "anon1").await, Ok(403));

    // The listed certificate: served normally.
    let client = tls_client(&[&server], Some(&listed));
    let mut s = sip_tls(tls, "127.0.0.1", &client).await.unwrap();
    assert_eq!(request(&mut s, "OPTIONS", "listed1").await, Ok(200));

    // Over UDP from the trunk's address: a request outside a dialog would bypass the
    // certificate, so 403; one inside a dialog (calls placed toward the trunk run over UDP)
    // reaches the dialog layer, which knows no such call (481).
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_request = |method: &str, to_tag: &str, tag: &str| {
        let me = udp.local_addr().unwrap();
        format!(
            "{method} sip:riptide@127.0.0.1:15470 SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK{tag};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@127.0.0.1>;tag={tag}\r\n\
             To: <sip:riptide@127.0.0.1>{to_tag}\r\n\
             Call-ID: {tag}@udp\r\n\
             CSeq: 1 {method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
    };
    let mut buf = [0u8; 2048];
    for (method, to_tag, tag, want) in [
        ("OPTIONS", "", "udp1", "SIP/2.0 403"),
        ("BYE", ";tag=gone", "udp2", "SIP/2.0 481"),
    ] {
        udp.send_to(
            udp_request(method, to_tag, tag).as_bytes(),
            "127.0.0.1:15470",
        )
        .await
        .unwrap();
        let (n, _) = timeout(Duration::from_secs(5), udp.recv_from(&mut buf))
            .await
            .expect("an answer over UDP")
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with(want), "{method}: {answer}");
    }

    // Another source, not the trunk's: no certificate needed.
    let client = tls_client(&[&server], None);
    let mut s = sip_tls(tls, "127.0.0.2", &client).await.unwrap();
    assert_eq!(request(&mut s, "OPTIONS", "other1").await, Ok(200));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The riptide binary, stopped when dropped.
struct Gateway(std::process::Child);

impl Gateway {
    /// `riptide serve --config conf`, logging to `log`, once it says it is ready.
    async fn serve(conf: &Path, log: &Path) -> Gateway {
        let gw = Gateway(
            Command::new(env!("CARGO_BIN_EXE_riptide"))
                .args(["serve", "--config", conf.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .expect("the riptide binary starts"),
        );
        wait_for_log(log, "riptide ready", 1).await;
        gw
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Gateway {
    fn signal_hup(&self) {
        let st = Command::new("kill")
            .args(["-HUP", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

/// Waits up to 10 s for `log` to contain `needle` (at least `count` times).
async fn wait_for_log(log: &Path, needle: &str, count: usize) -> String {
    for _ in 0..200 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{needle:?} not logged {count} time(s):\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// An HTTP/3 (QUIC) handshake with the gateway; returns the connection and the SHA-256 of
/// the certificate it presented.
async fn quic_handshake(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    roots: &[&Cert],
) -> (quinn::Connection, String) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.der.clone()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let conn = ep
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr,
            "localhost",
        )
        .unwrap()
        .await
        .expect("HTTP/3 handshake");
    let certs = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    let fp = sha256_hex(certs[0].as_ref());
    (conn, fp)
}

async fn admin_post(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Certificate reload: the binary serves certificate A on SIP-TLS and HTTP/3; after the files
/// hold B and a SIGHUP, new handshakes get B while the connections opened before keep working;
/// a garbage file is logged and B stays; `POST /reload` on the admin listener does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = temp_dir("reload");
    let (a, b) = (server_cert("riptide A"), server_cert("riptide B"));
    let (cert, key) = a.write(&dir, "live");
    let sip: SocketAddr = "127.0.0.1:15481".parse().unwrap();
    let h3: SocketAddr = "127.0.0.1:15482".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:15483".parse().unwrap();
    let conf = dir.join("riptide.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[general]
data_dir = "data"
[sip]
udp = ["127.0.0.1:15480"]
tcp = []
tls = ["{sip}"]
tls_cert = "live-cert.pem"
tls_key = "live-key.pem"
[http3]
listen = "{h3}"
cert_file = "live-cert.pem"
key_file = "live-key.pem"
[admin]
listen = "{admin}"
[media]
port_min = 33200
port_max = 33299
"#
        ),
    )
    .unwrap();
    let log = dir.join("riptide.log");
    let gw = Gateway::serve(&conf, &log).await;

    // A new client configuration for each connection: one that resumed an earlier session
    // would see that session's certificate, not what the server presents now.
    let sip_client = || tls_client(&[&a, &b], None);
    let mut before = sip_tls(sip, "127.0.0.1", &sip_client()).await.unwrap();
    assert_eq!(served(&before), a.sha256());
    assert_eq!(request(&mut before, "OPTIONS", "before1").await, Ok(200));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let (h3_before, fp) = quic_handshake(&ep, h3, &[&a, &b]).await;
    assert_eq!(fp, a.sha256());

    // New files, then SIGHUP.
    std::fs::write(&key, &b.key_pem).unwrap();
    std::fs::write(&cert, &b.pem).unwrap();
    gw.signal_hup();
    wait_for_log(&log, "new handshakes use it", 2).await;
    let s = sip_tls(sip, "127.0.0.1", &sip_client()).await.unwrap();
    assert_eq!(served(&s), b.sha256(), "new SIP-TLS handshakes get B");
    let (_c, fp) = quic_handshake(&ep, h3, &[&a, &b]).await;
    assert_eq!(fp, b.sha256(), "new HTTP/3 handshakes get B");
    assert_eq!(
        request(&mut before, "OPTIONS", "before2").await,
        Ok(200),
        "the SIP-TLS connection made with A still works"
    );
    assert!(
        h3_before.close_reason().is_none(),
        "the QUIC connection made with A is open"
    );
    let mut stream = h3_before
        .open_uni()
        .await
        .expect("the old QUIC connection still opens streams");
    stream.write_all(b"x").await.unwrap();

    // A broken certificate file: logged with the file, and B stays.
    std::fs::write(&cert, "garbage").unwrap();
    gw.signal_hup();
    let text = wait_for_log(&log, "certificate reload failed", 1).await;
    assert!(
        text.contains("live-cert.pem") && text.contains("no certificate found"),
        "{text}"
    );
    let s = sip_tls(sip, "127.0.0.1", &sip_client()).await.unwrap();
    assert_eq!(
        served(&s),
        b.sha256(),
        "the old certificate is still served"
    );
    let (_c, fp) = quic_handshake(&ep, h3, &[&a, &b]).await;
    assert_eq!(fp, b.sha256());

    // The admin listener's POST /reload: fails while the file is broken, then picks up A.
    let r = admin_post(admin, "/reload").await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    std::fs::write(&key, &a.key_pem).unwrap();
    std::fs::write(&cert, &a.pem).unwrap();
    let r = admin_post(admin, "/reload").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let s = sip_tls(sip, "127.0.0.1", &sip_client()).await.unwrap();
    assert_eq!(served(&s), a.sha256());
    ep.close(0u32.into(), b"done");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}

impl Ca {
    /// A certificate this CA issues, with exactly `sans` as its subjectAltName.
    fn issue(&self, cn: &str, sans: Vec<rcgen::SanType>) -> Cert {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = params(cn, &[]);
        p.subject_alt_names = sans;
        finish(p.signed_by(&key, &self.issuer).unwrap(), &key)
    }
}

fn uri_san(u: &str) -> rcgen::SanType {
    rcgen::SanType::URI(u.try_into().unwrap())
}

/// Reads one SIP message from a stream (framed by Content-Length) into text; `buf` keeps
/// what arrived beyond it.
async fn read_sip<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<String, String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    let name = name.trim();
                    (name.eq_ignore_ascii_case("content-length") || name == "l")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return Ok(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        let mut chunk = [0u8; 4096];
        let n = match timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err("nothing within 10 s".into()),
        };
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The header lines of `msg` named `name` (as written, whole lines).
fn header_lines<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .collect()
}

/// What a test SIP-TLS trunk saw of riptide's call.
#[derive(Debug)]
struct TrunkSaw {
    invite: String,
    /// SHA-256 of the client certificate riptide presented, if it did.
    client_cert: Option<String>,
    ack: String,
    /// Status line riptide gave to an OPTIONS the trunk sent on riptide's connection.
    options_answer: String,
}

/// A SIP-TLS trunk on `listener`: takes one connection, answers its INVITE with 486, reads
/// the ACK, then sends an OPTIONS of its own on the same connection and reads the answer.
/// Err when the handshake fails or no INVITE comes.
async fn busy_tls_trunk(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> Result<TrunkSaw, String> {
    let (tcp, _) = timeout(Duration::from_secs(20), listener.accept())
        .await
        .map_err(|_| "no connection within 20 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut s = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let client_cert = s
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| sha256_hex(c[0].as_ref()));
    let mut buf = Vec::new();
    let invite = read_sip(&mut s, &mut buf).await?;
    if !invite.starts_with("INVITE ") {
        return Err(format!("expected an INVITE: {invite}"));
    }
    let mut busy = String::from("SIP/2.0 486 Busy Here\r\n");
    for name in ["Via", "From", "Call-ID", "CSeq"] {
        for l in header_lines(&invite, name) {
            busy.push_str(l);
            busy.push_str("\r\n");
        }
    }
    for l in header_lines(&invite, "To") {
        busy.push_str(&format!("{l};tag=busytrunk\r\n"));
    }
    busy.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(busy.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let ack = read_sip(&mut s, &mut buf).await?;
    let local = s.get_ref().0.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:riptide@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bKtrunkopt\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:trunk@localhost>;tag=t1\r\n\
         To: <sip:riptide@127.0.0.1>\r\n\
         Call-ID: trunk-options@localhost\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    s.write_all(options.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_sip(&mut s, &mut buf).await?;
    Ok(TrunkSaw {
        invite,
        client_cert,
        ack,
        options_answer: answer.lines().next().unwrap_or_default().to_string(),
    })
}

/// A TLS acceptor serving `cert`; with `client_ca`, it requires a client certificate that CA
/// issued.
fn trunk_acceptor(cert: &Cert, client_ca: Option<&Ca>) -> tokio_rustls::TlsAcceptor {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der.clone()).unwrap();
            b.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
        None => b.with_no_client_auth(),
    };
    let cfg = b
        .with_single_cert(vec![cert.der.clone()], cert.key())
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// Sends an INVITE for `user` to riptide over UDP and returns the final status it gets
/// (ACKing it).
async fn call_over_udp(gw: SocketAddr, user: &str) -> u16 {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        me.port() + 2
    );
    let head = |method: &str, to_tag: &str| {
        format!(
            "{method} sip:{user}@{gw} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK{user};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@{me}>;tag=c{user}\r\n\
             To: <sip:{user}@{gw}>{to_tag}\r\n\
             Call-ID: {user}@caller\r\n\
             CSeq: 1 {method}\r\n"
        )
    };
    let invite = format!(
        "{}Contact: <sip:caller@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        head("INVITE", ""),
        sdp.len()
    );
    sock.send_to(invite.as_bytes(), gw).await.unwrap();
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = timeout(Duration::from_secs(30), sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{user}: no final response within 30 s"))
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let Some(code) = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
        else {
            continue;
        };
        if code < 200 {
            continue;
        }
        if code >= 300 {
            let to_tag = header_lines(&text, "To")
                .first()
                .and_then(|l| l.split(";tag=").nth(1))
                .map(|t| format!(";tag={}", t.trim()))
                .unwrap_or_default();
            let ack = format!("{}Content-Length: 0\r\n\r\n", head("ACK", &to_tag));
            sock.send_to(ack.as_bytes(), gw).await.unwrap();
        }
        return code;
    }
}

/// Outgoing SIP-TLS toward trunks, with RFC 5922 server identity (TLS-02). The binary calls
/// itself over HTTP/3 and routes by destination to four trunks at `localhost`, each a test
/// SIP-TLS server: one whose certificate has the URI SAN `sip:localhost` and that requires
/// riptide's client certificate, one identified by a dNSName only, one whose certificate names
/// `sip:other.example`, and one from a CA the trunk does not trust. The first two get the
/// INVITE over TLS, their 486 reaches the caller, the ACK follows on the same connection and
/// an OPTIONS they send on it is answered there; the other two never see an INVITE (the
/// handshake fails, logged with the expected domain and the certificate's identities) and the
/// caller gets an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_sip_tls_checks_the_trunk_identity() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = temp_dir("out");
    let ca = Ca::new("trunk CA");
    std::fs::write(dir.join("trunk-ca.pem"), &ca.cert.pem).unwrap();
    let gw_cert = ca.client("riptide");
    gw_cert.write(&dir, "gw");
    let dns = |d: &str| rcgen::SanType::DnsName(d.try_into().unwrap());
    let by_uri = ca.issue("trunk", vec![uri_san("sip:localhost")]);
    let by_dns = ca.issue("trunk", vec![dns("localhost")]);
    let other = ca.issue("localhost", vec![uri_san("sip:other.example")]);
    let stranger = Ca::new("stranger CA").issue("trunk", vec![uri_san("sip:localhost")]);

    // The trunks are at `localhost`, which riptide resolves like this (first address).
    let ip = tokio::net::lookup_host(("localhost", 0))
        .await
        .unwrap()
        .next()
        .expect("localhost resolves")
        .ip();
    let mut trunks = Vec::new();
    for (cert, client_ca) in [
        (&by_uri, Some(&ca)),
        (&by_dns, None),
        (&other, None),
        (&stranger, None),
    ] {
        let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = l.local_addr().unwrap().port();
        trunks.push((port, l, trunk_acceptor(cert, client_ca)));
    }
    let sip: SocketAddr = "127.0.0.1:15490".parse().unwrap();
    let mut text = format!(
        r#"
[general]
data_dir = "data"
[sip]
udp = ["{sip}"]
tcp = []
t1_ms = 50
[http3]
listen = "127.0.0.1:15491"
[admin]
listen = "127.0.0.1:15492"
[media]
port_min = 33300
port_max = 33399
[[sip_route]]
prefix = ""
ript_peer = "self"
[[tg]]
name = "trunks"
"#
    );
    let names = ["uri", "dns", "othername", "otherca"];
    for n in names {
        text.push_str(&format!(
            "  [[tg.route]]\n  prefix = \"{n}\"\n  sip_trunk = \"{n}\"\n"
        ));
    }
    for (n, (port, _, _)) in names.iter().zip(&trunks) {
        text.push_str(&format!(
            "[[sip_trunk]]\nname = \"{n}\"\ntarget = \"sip:localhost:{port};transport=tls\"\n\
             tls_ca = \"trunk-ca.pem\"\n"
        ));
        if *n == "uri" {
            text.push_str("tls_client_cert = \"gw-cert.pem\"\ntls_client_key = \"gw-key.pem\"\n");
        }
    }
    let conf = dir.join("riptide.toml");
    std::fs::write(&conf, text).unwrap();
    let log = dir.join("riptide.log");
    let _gw = Gateway::serve(&conf, &log).await;

    let servers: Vec<_> = trunks
        .into_iter()
        .map(|(_, l, a)| tokio::spawn(busy_tls_trunk(l, a)))
        .collect();
    let (uri, dns_only, other_name, other_ca) = tokio::join!(
        call_over_udp(sip, "uri1"),
        call_over_udp(sip, "dns1"),
        call_over_udp(sip, "othername1"),
        call_over_udp(sip, "otherca1"),
    );
    let mut saw = Vec::new();
    for s in servers {
        saw.push(s.await.unwrap());
    }
    let logged = std::fs::read_to_string(&log).unwrap();

    for (name, code, seen) in [("uri", uri, &saw[0]), ("dns", dns_only, &saw[1])] {
        let seen = seen
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: the trunk got no INVITE: {e}\n{logged}"));
        assert!(
            seen.invite.contains("Via: SIP/2.0/TLS "),
            "{name}: sent over TLS: {}",
            seen.invite
        );
        assert!(seen.ack.starts_with("ACK "), "{name}: {}", seen.ack);
        assert_eq!(
            seen.options_answer, "SIP/2.0 200 OK",
            "{name}: a request on riptide's connection is answered on it"
        );
        assert_eq!(code, 486, "{name}: the trunk's 486 reaches the caller");
    }
    let uri_seen = saw[0].as_ref().unwrap();
    assert_eq!(
        uri_seen.client_cert.as_deref(),
        Some(gw_cert.sha256().as_str()),
        "riptide presents tls_client_cert"
    );
    for (name, code, seen) in [
        ("othername", other_name, &saw[2]),
        ("otherca", other_ca, &saw[3]),
    ] {
        let err = seen
            .as_ref()
            .expect_err(&format!("{name}: no INVITE may reach this trunk"));
        assert!(err.starts_with("handshake:"), "{name}: {err}");
        assert!((400..600).contains(&code), "{name}: caller got {code}");
    }
    assert!(
        logged.lines().any(|l| l.contains("does not identify the expected domain")
            && l.contains("localhost")
            && l.contains("URI:sip:other.example")),
        "the mismatch is logged with the expected domain and the certificate's identities:\n{logged}"
    );
    assert!(
        logged
            .lines()
            .any(|l| l.contains("SIP TLS handshake failed") && l.contains("UnknownIssuer")),
        "an unknown CA is logged:\n{logged}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// STIR trust material through the binary: `POST /reload` reports the trust list and CRL it
/// loaded; a CRL file that does not load is a 500 naming the file, and the CRL in use stays;
/// SIGHUP does the same and logs it.
#[tokio::test]
async fn reload_rereads_the_stir_trust_list_and_crls() {
    let dir = temp_dir("stir-reload");
    let pki = riptide::stir::create_test_pki(&dir, "1234").unwrap();
    let admin: SocketAddr = "127.0.0.1:15497".parse().unwrap();
    let conf = dir.join("riptide.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[general]
data_dir = "data"
[sip]
udp = ["127.0.0.1:15495"]
tcp = []
[http3]
listen = "127.0.0.1:15496"
[admin]
listen = "{admin}"
[media]
port_min = 33400
port_max = 33499
[stir]
verify = "continue"
trust_anchors = "{root}"
x5u_ca = "{root}"
crls = [{{ crl = "{crl}", signer = "{signer}" }}]
"#,
            root = pki.root_cert.display(),
            crl = pki.crl.display(),
            signer = pki.crl_signer_cert.display(),
        ),
    )
    .unwrap();
    let log = dir.join("riptide.log");
    let gw = Gateway::serve(&conf, &log).await;

    let r = admin_post(admin, "/reload").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let loaded = "1 trust anchor(s), CRL sti-pa.crl: 0 revoked, current";
    assert!(r.contains(&format!("\nstir: now {loaded}\n")), "{r}");

    std::fs::write(&pki.crl, "garbage").unwrap();
    let r = admin_post(admin, "/reload").await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(
        r.contains(&format!(
            "\nstir: reload failed, keeping {loaded}: stir.crls "
        )) && r.contains("sti-pa.crl (signer "),
        "{r}"
    );
    gw.signal_hup();
    let text = wait_for_log(&log, "STIR reload failed", 2).await;
    assert!(text.contains("sti-pa.crl"), "{text}");
    drop(gw);
    let _ = std::fs::remove_dir_all(&dir);
}
