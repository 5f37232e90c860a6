//! TLS hardening that a test can see from outside: the SIP-TLS listener speaks TLS 1.2 and 1.3
//! only (checked with Debian's openssl as an independent client), trunks can require client
//! certificates (TLS-03), certificates are reloaded on SIGHUP without dropping connections,
//! and the whole dependency tree has one crypto provider (ring; ADR 0006).

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
    let gw = Gateway(
        Command::new(env!("CARGO_BIN_EXE_riptide"))
            .args(["serve", "--config", conf.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the riptide binary starts"),
    );
    wait_for_log(&log, "riptide ready", 1).await;

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
