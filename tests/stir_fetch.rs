//! The `x5u` fetcher and the certificate repository end to end on loopback (STIR-08, STIR-13,
//! IN-06): a real [`CertRepo`] or a scripted TLS server for odd behaviours, an rcgen certificate
//! for `repo.test`, and a resolver hook mapping `repo.test` to 127.0.0.1 (allow-listed).
//!
//! Connections are counted by a TCP proxy in front of the server (the fetcher opens one
//! connection per fetch), or by a listener that only counts.

use riptide::stir::fetch::{FetchConfig, FetchError, X5uFetcher};
use riptide::stir::repo::CertRepo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DAY: u64 = 24 * 3600;
/// Guard against a hang; never what decides a pass.
const HANG: Duration = Duration::from_secs(10);

fn real_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The repository's HTTPS identity: a self-signed certificate for `repo.test`.
struct RepoTls {
    cert: rcgen::Certificate,
    server: Arc<rustls::ServerConfig>,
}

fn repo_tls() -> RepoTls {
    let ck = rcgen::generate_simple_self_signed(vec!["repo.test".to_string()]).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(riptide::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![ck.cert.der().clone()],
            PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        )
        .unwrap();
    RepoTls {
        cert: ck.cert,
        server: Arc::new(server),
    }
}

/// A STIR-like signing chain to publish: an intermediate CA and a leaf it signed; the leaf's
/// notAfter is `not_after` (Unix seconds) when given.
struct Chain {
    leaf: CertificateDer<'static>,
    intermediate: CertificateDer<'static>,
    pem: String,
}

fn signing_chain(not_after: Option<u64>) -> Chain {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test STI-CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "SHAKEN 1234");
    if let Some(t) = not_after {
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(t - 2 * DAY);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(t);
    }
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    Chain {
        pem: format!("{}{}", leaf.pem(), ca_cert.pem()),
        leaf: leaf.der().clone(),
        intermediate: ca_cert.der().clone(),
    }
}

/// A settable clock starting at the real time.
#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(AtomicU64::new(real_now())))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

/// Fetcher settings for tests: trusts `tls`, allow-lists `repo.test`, and resolves `repo.test`
/// to 127.0.0.1, `private.test` to 10.0.0.1 and `loop.test` to 127.0.0.1 (not allow-listed).
fn test_config(tls: &RepoTls, clock: &TestClock) -> FetchConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.cert.der().clone()).unwrap();
    let mut cfg = FetchConfig::new(roots);
    cfg.guard.allowed_hosts = vec!["repo.test".into()];
    cfg.guard.resolver = Some(Arc::new(|host: &str, port: u16| {
        let ip = match host {
            "repo.test" | "loop.test" => Ipv4Addr::LOCALHOST,
            "private.test" => Ipv4Addr::new(10, 0, 0, 1),
            _ => return Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN")),
        };
        Ok(vec![SocketAddr::new(IpAddr::V4(ip), port)])
    }));
    let c = clock.0.clone();
    cfg.clock = Arc::new(move || c.load(Ordering::SeqCst));
    cfg
}

fn fetcher(tls: &RepoTls, clock: &TestClock) -> X5uFetcher {
    X5uFetcher::new(test_config(tls, clock)).unwrap()
}

async fn fetch(f: &X5uFetcher, url: &str) -> Result<Arc<[CertificateDer<'static>]>, FetchError> {
    tokio::time::timeout(HANG, f.fetch(url))
        .await
        .expect("fetch hung")
}

/// Serves `files` with a real [`CertRepo`]; returns its address.
async fn start_repo(tls: &RepoTls, files: &[(&str, Vec<u8>)]) -> SocketAddr {
    let listener = CertRepo::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let files: HashMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, b)| (p.to_string(), b.clone()))
        .collect();
    CertRepo::serve(listener, tls.server.clone(), files);
    addr
}

/// A TCP proxy on `bind` (port 0 for any) to `target` that counts the connections it accepts.
async fn counting_proxy(bind: &str, target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

/// A listener that counts connections and holds them open without ever answering.
async fn silent_listener(bind: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, count)
}

/// What the scripted server does for one request.
struct Script {
    /// Wait this long after reading the request head.
    delay: Duration,
    /// Raw bytes written back (status line, headers, body), then the TLS stream is closed.
    response: Vec<u8>,
}

fn response(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

/// A TLS server on 127.0.0.1 that answers each request head with `script(head)`; counts
/// connections.
async fn scripted<F>(tls: &RepoTls, script: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&str) -> Script + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let script = script.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let sc = script(&String::from_utf8_lossy(&head));
                tokio::time::sleep(sc.delay).await;
                let _ = s.write_all(&sc.response).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

fn serve_pem(pem: String, cache_control: &'static str) -> impl Fn(&str) -> Script {
    move |_| Script {
        delay: Duration::ZERO,
        response: response(
            "200 OK",
            &[
                ("Content-Type", "application/pem-certificate-chain"),
                ("Cache-Control", cache_control),
            ],
            pem.as_bytes(),
        ),
    }
}

fn url(port: u16, path: &str) -> String {
    format!("https://repo.test:{port}{path}")
}

fn started(f: &X5uFetcher) -> u64 {
    f.stats().fetches_started.load(Ordering::SeqCst)
}

// ---- fetching and the happy path --------------------------------------------------------

#[tokio::test]
async fn fetches_whole_chain_from_cert_repo_and_second_fetch_makes_no_request() {
    let tls = repo_tls();
    let chain = signing_chain(None);
    let repo = start_repo(&tls, &[("certs/sp.pem", chain.pem.clone().into_bytes())]).await;
    let (proxy, count) = counting_proxy("127.0.0.1:0", repo).await;
    let f = fetcher(&tls, &TestClock::new());
    let u = url(proxy.port(), "/certs/sp.pem");

    let got = fetch(&f, &u).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], chain.leaf);
    assert_eq!(got[1], chain.intermediate);
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // STIR-13: the second verification is served from the cache, with the chain intact
    // (the Kamailio #3289 / libstirshaken #123 regression kept only the leaf).
    let again = fetch(&f, &u).await.unwrap();
    assert_eq!(&*again, &*got);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(started(&f), 1);
    assert_eq!(f.stats().cache_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn single_der_body_is_accepted() {
    let tls = repo_tls();
    let chain = signing_chain(None);
    let der = chain.leaf.to_vec();
    let (addr, _) = scripted(&tls, move |_| Script {
        delay: Duration::ZERO,
        response: response("200 OK", &[("Content-Type", "application/pkix-cert")], &der),
    })
    .await;
    let f = fetcher(&tls, &TestClock::new());
    let got = fetch(&f, &url(addr.port(), "/sp.cer")).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], chain.leaf);
}

#[tokio::test]
async fn request_is_a_plain_http11_get_with_host() {
    let tls = repo_tls();
    let chain = signing_chain(None);
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let s = seen.clone();
    let pem = chain.pem.clone();
    let (addr, _) = scripted(&tls, move |head| {
        *s.lock().unwrap() = head.to_string();
        serve_pem(pem.clone(), "max-age=86400")(head)
    })
    .await;
    let f = fetcher(&tls, &TestClock::new());
    fetch(&f, &url(addr.port(), "/a/sp.pem?v=2")).await.unwrap();
    let head = seen.lock().unwrap().to_lowercase();
    assert!(head.starts_with("get /a/sp.pem?v=2 http/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("\r\nhost: repo.test:{}\r\n", addr.port())),
        "{head}"
    );
}

// ---- STIR-08: unknown or unreachable x5u -------------------------------------------------

#[tokio::test]
async fn not_found_and_server_errors_are_436() {
    let tls = repo_tls();
    let repo = start_repo(&tls, &[("sp.pem", signing_chain(None).pem.into_bytes())]).await;
    let f = fetcher(&tls, &TestClock::new());
    let err = fetch(&f, &url(repo.port(), "/missing.pem"))
        .await
        .unwrap_err();
    assert_eq!(err, FetchError::Status(404));
    assert_eq!(err.sip_status(), 436);

    let (addr, _) = scripted(&tls, |_| Script {
        delay: Duration::ZERO,
        response: response("503 Service Unavailable", &[], b""),
    })
    .await;
    let err = fetch(&f, &url(addr.port(), "/sp.pem")).await.unwrap_err();
    assert_eq!(err, FetchError::Status(503));
    assert_eq!(err.sip_status(), 436);
}

#[tokio::test]
async fn refused_connection_is_436() {
    let tls = repo_tls();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    }; // dropped: nothing listens there now
    let f = fetcher(&tls, &TestClock::new());
    let err = fetch(&f, &url(port, "/sp.pem")).await.unwrap_err();
    assert!(matches!(err, FetchError::Connect(_)), "{err}");
    assert_eq!(err.sip_status(), 436);
}

#[tokio::test]
async fn timeout_when_the_server_never_answers() {
    let tls = repo_tls();
    let clock = TestClock::new();
    assert_eq!(
        test_config(&tls, &clock).guard.timeout,
        Duration::from_secs(3),
        "the production default is 3 s"
    );
    let mut cfg = test_config(&tls, &clock);
    cfg.guard.timeout = Duration::from_millis(300);
    let f = X5uFetcher::new(cfg).unwrap();

    // Accepts TCP, never speaks TLS.
    let (silent, count) = silent_listener("127.0.0.1:0").await;
    let t0 = Instant::now();
    let err = fetch(&f, &url(silent.port(), "/sp.pem")).await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(err, FetchError::Timeout(Duration::from_millis(300)));
    assert_eq!(err.sip_status(), 436);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Completes TLS and reads the request, then sends nothing.
    let (addr, _) = scripted(&tls, |_| Script {
        delay: Duration::from_secs(3600),
        response: vec![],
    })
    .await;
    let t0 = Instant::now();
    let err = fetch(&f, &url(addr.port(), "/sp.pem")).await.unwrap_err();
    assert_eq!(err, FetchError::Timeout(Duration::from_millis(300)));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn body_over_64_kib_is_refused() {
    let tls = repo_tls();
    let mut big = signing_chain(None).pem.into_bytes();
    big.resize(64 * 1024 + 1, b'\n');
    let repo = start_repo(&tls, &[("big.pem", big.clone())]).await;
    let f = fetcher(&tls, &TestClock::new());
    let err = fetch(&f, &url(repo.port(), "/big.pem")).await.unwrap_err();
    assert_eq!(err, FetchError::TooLarge { limit: 64 * 1024 });
    assert_eq!(err.sip_status(), 436);

    // Without a Content-Length (chunked), the cap applies while reading.
    let (addr, _) = scripted(&tls, move |_| {
        let mut r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in big.chunks(8192) {
            r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            r.extend_from_slice(chunk);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        Script {
            delay: Duration::ZERO,
            response: r,
        }
    })
    .await;
    let err = fetch(&f, &url(addr.port(), "/big.pem")).await.unwrap_err();
    assert_eq!(err, FetchError::TooLarge { limit: 64 * 1024 });

    // Exactly at the cap is fine.
    let mut at_cap = signing_chain(None).pem.into_bytes();
    at_cap.resize(64 * 1024, b'\n');
    let repo = start_repo(&tls, &[("ok.pem", at_cap)]).await;
    fetch(&f, &url(repo.port(), "/ok.pem")).await.unwrap();
}

#[tokio::test]
async fn non_certificate_body_is_436() {
    let tls = repo_tls();
    let repo = start_repo(&tls, &[("x.pem", b"<html>hello</html>".to_vec())]).await;
    let f = fetcher(&tls, &TestClock::new());
    let err = fetch(&f, &url(repo.port(), "/x.pem")).await.unwrap_err();
    assert!(matches!(err, FetchError::BadBody(_)), "{err}");
    assert_eq!(err.sip_status(), 436);
}

#[tokio::test]
async fn http_url_is_refused_without_connecting() {
    let tls = repo_tls();
    let (addr, count) = silent_listener("127.0.0.1:0").await;
    let f = fetcher(&tls, &TestClock::new());
    for u in [
        format!("http://repo.test:{}/sp.pem", addr.port()),
        format!("http://127.0.0.1:{}/sp.pem", addr.port()),
    ] {
        let err = fetch(&f, &u).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::PolicyRefused { reason } if reason.contains("https only")),
            "{err}"
        );
        assert_eq!(err.sip_status(), 436);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0, "no connection may be made");
    assert_eq!(started(&f), 0);
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let tls = repo_tls();
    // Where the redirect points: another host (127.0.0.2), which must never see a connection.
    let (other, other_count) = silent_listener("127.0.0.2:0").await;
    let location = format!("https://127.0.0.2:{}/sp.pem", other.port());
    let loc = location.clone();
    let (addr, count) = scripted(&tls, move |_| Script {
        delay: Duration::ZERO,
        response: response("302 Found", &[("Location", &loc)], b""),
    })
    .await;
    let f = fetcher(&tls, &TestClock::new());
    let err = fetch(&f, &url(addr.port(), "/sp.pem")).await.unwrap_err();
    assert_eq!(
        err,
        FetchError::Redirect {
            status: 302,
            location
        }
    );
    assert_eq!(err.sip_status(), 436);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(other_count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn host_resolving_to_private_address_is_refused_before_connecting() {
    let tls = repo_tls();
    let f = fetcher(&tls, &TestClock::new());
    // 10.0.0.1 is not reachable from the test host; a connect attempt would end in a timeout or
    // a connect error, not in a policy refusal.
    let t0 = Instant::now();
    let err = fetch(&f, "https://private.test/sp.pem").await.unwrap_err();
    assert!(
        matches!(&err, FetchError::PolicyRefused { reason } if reason.contains("10.0.0.1")),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(err.sip_status(), 436);

    // A name resolving to loopback that is not allow-listed: refused, and nothing connects.
    let (addr, count) = silent_listener("127.0.0.1:0").await;
    let err = fetch(&f, &format!("https://loop.test:{}/sp.pem", addr.port()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::PolicyRefused { reason } if reason.contains("127.0.0.1")),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn literal_ip_not_allow_listed_is_refused() {
    let tls = repo_tls();
    let (addr, count) = silent_listener("127.0.0.2:0").await;
    let f = fetcher(&tls, &TestClock::new());
    for u in [
        format!("https://127.0.0.2:{}/sp.pem", addr.port()),
        "https://169.254.169.254/latest/meta-data/".to_string(),
        "https://[::1]/sp.pem".to_string(),
    ] {
        let err = fetch(&f, &u).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::PolicyRefused { .. }),
            "{u}: {err}"
        );
        assert_eq!(err.sip_status(), 436);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(count.load(Ordering::SeqCst), 0);
    assert_eq!(started(&f), 0);
}

#[tokio::test]
async fn untrusted_repository_certificate_is_a_tls_failure() {
    let tls = repo_tls();
    let other = repo_tls();
    let repo = start_repo(&tls, &[("sp.pem", signing_chain(None).pem.into_bytes())]).await;
    let f = fetcher(&other, &TestClock::new());
    let err = fetch(&f, &url(repo.port(), "/sp.pem")).await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(_)), "{err}");
    assert_eq!(err.sip_status(), 436);
}

// ---- STIR-13: cache ----------------------------------------------------------------------

#[tokio::test]
async fn failures_are_negatively_cached_for_30_s_then_retried() {
    let tls = repo_tls();
    let repo = start_repo(&tls, &[]).await;
    let (proxy, count) = counting_proxy("127.0.0.1:0", repo).await;
    let clock = TestClock::new();
    let f = fetcher(&tls, &clock);
    let u = url(proxy.port(), "/sp.pem");

    assert_eq!(fetch(&f, &u).await.unwrap_err(), FetchError::Status(404));
    assert_eq!(count.load(Ordering::SeqCst), 1);

    clock.advance(29);
    let err = fetch(&f, &u).await.unwrap_err();
    assert_eq!(err, FetchError::Negative(Box::new(FetchError::Status(404))));
    assert_eq!(err.sip_status(), 436);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(f.stats().negative_hits.load(Ordering::SeqCst), 1);

    clock.advance(1);
    assert_eq!(fetch(&f, &u).await.unwrap_err(), FetchError::Status(404));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(started(&f), 2);
}

#[tokio::test]
async fn ttl_is_at_least_24_h() {
    let tls = repo_tls();
    let (addr, count) = scripted(&tls, serve_pem(signing_chain(None).pem, "max-age=60")).await;
    let clock = TestClock::new();
    let f = fetcher(&tls, &clock);
    let u = url(addr.port(), "/sp.pem");
    fetch(&f, &u).await.unwrap();
    clock.advance(DAY - 1);
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    clock.advance(1);
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn ttl_honours_a_longer_cache_control_max_age() {
    let tls = repo_tls();
    let (addr, count) = scripted(
        &tls,
        serve_pem(signing_chain(None).pem, "public, max-age=172800"),
    )
    .await;
    let clock = TestClock::new();
    let f = fetcher(&tls, &clock);
    let u = url(addr.port(), "/sp.pem");
    fetch(&f, &u).await.unwrap();
    clock.advance(2 * DAY - 1);
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    clock.advance(1);
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn ttl_is_capped_at_the_leaf_not_after() {
    let tls = repo_tls();
    let clock = TestClock::new();
    let not_after = clock.0.load(Ordering::SeqCst) + 2 * 3600;
    let (addr, count) = scripted(
        &tls,
        serve_pem(signing_chain(Some(not_after)).pem, "max-age=604800"),
    )
    .await;
    let f = fetcher(&tls, &clock);
    let u = url(addr.port(), "/sp.pem");
    fetch(&f, &u).await.unwrap();
    clock.advance(2 * 3600 - 1);
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    clock.advance(1);
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_cold_fetches_make_one_request() {
    let tls = repo_tls();
    let chain = signing_chain(None);
    let pem = chain.pem.clone();
    let (addr, count) = scripted(&tls, move |h| Script {
        // Slow enough that all 50 callers arrive while the one fetch is in flight.
        delay: Duration::from_millis(300),
        ..serve_pem(pem.clone(), "max-age=86400")(h)
    })
    .await;
    let f = fetcher(&tls, &TestClock::new());
    let u = url(addr.port(), "/sp.pem");
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (f, u, b) = (f.clone(), u.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                fetch(&f, &u).await
            })
        })
        .collect();
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert_eq!(got[0], chain.leaf);
        assert_eq!(got.len(), 2);
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(started(&f), 1);
    // The other 49 joined the fetch in flight (or, on a badly stalled host, hit the cache).
    let st = f.stats();
    assert_eq!(
        st.coalesced.load(Ordering::SeqCst) + st.cache_hits.load(Ordering::SeqCst),
        49
    );
}

#[tokio::test]
async fn a_caller_giving_up_does_not_cancel_the_fetch() {
    let tls = repo_tls();
    let pem = signing_chain(None).pem;
    let (addr, count) = scripted(&tls, move |h| Script {
        delay: Duration::from_millis(200),
        ..serve_pem(pem.clone(), "max-age=86400")(h)
    })
    .await;
    let f = fetcher(&tls, &TestClock::new());
    let u = url(addr.port(), "/sp.pem");
    // The first caller stops waiting before the answer; the fetch completes anyway.
    assert!(tokio::time::timeout(Duration::from_millis(50), f.fetch(&u))
        .await
        .is_err());
    fetch(&f, &u).await.unwrap();
    fetch(&f, &u).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(started(&f), 1);
}

// ---- the repository for ordinary HTTPS clients -------------------------------------------

#[tokio::test]
async fn curl_fetches_the_pem_from_cert_repo() {
    let curl = std::process::Command::new("curl").arg("--version").output();
    assert!(
        matches!(&curl, Ok(o) if o.status.success()),
        "this test needs curl (Debian: apt-get install curl); running it failed: {curl:?}"
    );
    let tls = repo_tls();
    let chain = signing_chain(None);
    let repo = start_repo(&tls, &[("certs/sp.pem", chain.pem.clone().into_bytes())]).await;
    let dir = std::env::temp_dir().join(format!(
        "riptide-stir-fetch-{}-{}",
        std::process::id(),
        real_now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("repo-ca.pem");
    std::fs::write(&ca, tls.cert.pem()).unwrap();
    let port = repo.port();
    let run = |extra: &[&str]| {
        let ca = ca.clone();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                std::process::Command::new("curl")
                    .args(["-sS", "--max-time", "10", "--cacert"])
                    .arg(&ca)
                    .arg(format!("https://repo.test:{port}/certs/sp.pem"))
                    .arg("--resolve")
                    .arg(format!("repo.test:{port}:127.0.0.1"))
                    .args(extra)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = run(&[]).await;
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), chain.pem);

    // Headers, and the protocol curl ended up with (it offers h2 and http/1.1 in ALPN).
    let out = run(&["-o", "/dev/null", "-D", "-", "-w", "proto=%{http_version}"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("content-type: application/pem-certificate-chain"),
        "{text}"
    );
    assert!(text.contains("cache-control: max-age=86400"), "{text}");
    assert!(text.ends_with("proto=1.1"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
