//! OAuth 2.0 with an external issuer, end to end on loopback (OAUTH-04, OAUTH-05): a test
//! authorization server over HTTPS (an rcgen CA and a `localhost` certificate it signed) serves
//! a JWK Set and an introspection endpoint and counts the requests it gets; the gateway runs
//! in-process with `[oauth]` pointing at it, and HTTP/3 requests carry the tokens. The
//! verifiers are also driven directly with a settable clock for the time-based rules.

mod common;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use riptide::auth::{
    AuthError, IntrospectionSettings, IntrospectionVerifier, JwksSettings, JwksVerifier,
    LocalIssuer, TokenVerifier,
};
use riptide::config::{Config, OAuthConfig, OAuthMode};
use riptide::stir::fetch::GuardConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine as _;

/// Guard against a hang; never what decides a pass.
const HANG: Duration = Duration::from_secs(20);
const ISS: &str = "https://as.test";
const CALLS: &str = "/.well-known/ript/v1/providertgs/local/calls";
const TGS: &str = "/.well-known/ript/v1/providertgs";
const CALL_BODY: &str = r#"{"destination":"echo","advertisement":{"codecs":[{"mediaType":"audio/PCMU","clockRate":8000}]}}"#;
const CLIENT_ID: &str = "riptide-gw";
const CLIENT_SECRET: &str = "s3cret-for-tests";

fn real_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "riptide-oauth-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------------------------------------
// The issuer's signing keys and tokens.

struct EcSigner {
    key: EcdsaKeyPair,
    kid: String,
}

impl EcSigner {
    fn new(kid: &str) -> EcSigner {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        EcSigner {
            key: EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap(),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let pk = &self.key.public_key().as_ref()[1..];
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
            "alg": "ES256", "x": B64.encode(&pk[..32]), "y": B64.encode(&pk[32..])})
    }

    /// An ES256 access token with `claims`, its header naming `kid`.
    fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({"alg": "ES256", "typ": "at+jwt", "kid": kid});
        let input = signing_input(&header, claims);
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }

    fn token(&self, scope: &str) -> String {
        self.sign_as(&self.kid, &claims(scope))
    }
}

struct RsaSigner {
    key: RsaKeyPair,
    kid: String,
}

impl RsaSigner {
    fn new(kid: &str) -> RsaSigner {
        let pem = include_str!("../src/auth/testdata/rsa2048-test-key.pem");
        let der = rustls_pemfile::private_key(&mut pem.as_bytes())
            .unwrap()
            .unwrap();
        RsaSigner {
            key: RsaKeyPair::from_pkcs8(der.secret_der()).unwrap(),
            kid: kid.into(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(self.key.public());
        serde_json::json!({"kty": "RSA", "kid": self.kid, "use": "sig",
            "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
    }

    fn token(&self, scope: &str) -> String {
        let header = serde_json::json!({"alg": "RS256", "typ": "at+jwt", "kid": self.kid});
        let input = signing_input(&header, &claims(scope));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", B64.encode(sig))
    }
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        B64.encode(serde_json::to_vec(header).unwrap()),
        B64.encode(serde_json::to_vec(claims).unwrap())
    )
}

fn claims(scope: &str) -> serde_json::Value {
    let now = real_now();
    serde_json::json!({"iss": ISS, "aud": "riptide", "sub": "alice", "client_id": "app",
        "scope": scope, "iat": now, "exp": now + 3600, "jti": format!("{}", rand::random::<u64>())})
}

// ---------------------------------------------------------------------------------------------
// The test authorization server.

/// The server's HTTPS identity: a CA (what riptide is configured to trust) and a `localhost`
/// certificate it signed.
struct AsTls {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

fn as_tls() -> AsTls {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test AS CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(riptide::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca_cert.der().clone()],
            PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    AsTls {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().clone(),
        server: Arc::new(server),
    }
}

/// How `/introspect` misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Status500,
    Garbage,
    NoActive,
    /// Reads the request and never answers.
    Hang,
}

struct AsState {
    jwks: Mutex<serde_json::Value>,
    jwks_fail: AtomicBool,
    jwks_fetches: AtomicUsize,
    /// Introspection answers by token; unknown tokens are inactive.
    answers: Mutex<HashMap<String, serde_json::Value>>,
    introspections: AtomicUsize,
    fault: Mutex<Fault>,
    /// New connections are closed at once (the server is down).
    down: AtomicBool,
    /// The last introspection request's Authorization and body.
    last_request: Mutex<Option<(String, String)>>,
}

impl AsState {
    fn new(jwks: serde_json::Value) -> Arc<AsState> {
        Arc::new(AsState {
            jwks: Mutex::new(jwks),
            jwks_fail: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            answers: Mutex::default(),
            introspections: AtomicUsize::new(0),
            fault: Mutex::new(Fault::None),
            down: AtomicBool::new(false),
            last_request: Mutex::default(),
        })
    }

    fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.introspections.load(Ordering::SeqCst)
    }

    fn answer(&self, token: &str, answer: serde_json::Value) {
        self.answers.lock().unwrap().insert(token.into(), answer);
    }
}

fn reply(status: u16, body: impl Into<Bytes>) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()))
        .unwrap()
}

async fn serve(
    state: Arc<AsState>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            if state.jwks_fail.load(Ordering::SeqCst) {
                return reply(500, "{}");
            }
            let body = serde_json::to_vec(&*state.jwks.lock().unwrap()).unwrap();
            reply(200, body)
        }
        ("POST", "/introspect") => {
            state.introspections.fetch_add(1, Ordering::SeqCst);
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let form_type = req
                .headers()
                .get("content-type")
                .is_some_and(|v| v == "application/x-www-form-urlencoded");
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            *state.last_request.lock().unwrap() = Some((auth.clone(), body.clone()));
            let fault = *state.fault.lock().unwrap();
            match fault {
                Fault::Status500 => return reply(500, "{}"),
                Fault::Garbage => return reply(200, "<html>oops</html>"),
                Fault::NoActive => return reply(200, r#"{"scope":"calls:write"}"#),
                Fault::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return reply(500, "{}");
                }
                Fault::None => {}
            }
            let expected = format!(
                "Basic {}",
                STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
            );
            if auth != expected || !form_type {
                return reply(401, r#"{"error":"invalid_client"}"#);
            }
            let token = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("");
            let answer = state
                .answers
                .lock()
                .unwrap()
                .get(token)
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"active": false}));
            reply(200, serde_json::to_vec(&answer).unwrap())
        }
        _ => reply(404, "{}"),
    }
}

/// Starts the server on 127.0.0.1 (reached as `localhost`); returns its port.
async fn start_as(tls: &AsTls, state: Arc<AsState>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if state.down.load(Ordering::SeqCst) {
                drop(tcp);
                continue;
            }
            let (acceptor, state) = (acceptor.clone(), state.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(serve(state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

/// Client settings trusting the test CA, with `localhost` allow-listed (it is loopback).
fn guard(tls: &AsTls) -> GuardConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.ca_der.clone()).unwrap();
    let mut g = GuardConfig::new(roots);
    g.allowed_hosts = vec!["localhost".into()];
    g
}

// ---------------------------------------------------------------------------------------------
// The gateway and an HTTP/3 client for it.

fn gateway_config(tag: &str, media: u16, oauth: OAuthConfig) -> Config {
    let mut cfg = riptide::config::embedded_default();
    cfg.general.data_dir = temp_dir(tag);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    cfg.sip.udp = vec![any];
    cfg.sip.tcp = vec![];
    cfg.http3.listen = any;
    cfg.admin.listen = None;
    cfg.media.port_min = media;
    cfg.media.port_max = media + 49;
    // "self" would call our own server with a local-issuer token (refused in these modes).
    cfg.sip_routes.clear();
    cfg.oauth = oauth;
    cfg
}

fn external(tls: &AsTls, dir: &Path, mode: OAuthMode, port: u16) -> OAuthConfig {
    let ca = dir.join("as-ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();
    let mut o = OAuthConfig {
        mode,
        issuer: Some(ISS.into()),
        ca_file: Some(ca),
        allow_hosts: vec!["localhost".into()],
        ..OAuthConfig::default()
    };
    match mode {
        OAuthMode::Jwks => o.jwks_uri = Some(format!("https://localhost:{port}/jwks")),
        _ => {
            let secret = dir.join("client-secret");
            std::fs::write(&secret, format!("{CLIENT_SECRET}\n")).unwrap();
            o.introspection_endpoint = Some(format!("https://localhost:{port}/introspect"));
            o.client_id = Some(CLIENT_ID.into());
            o.client_secret_file = Some(secret);
        }
    }
    o
}

struct Response {
    status: u16,
    headers: http::HeaderMap,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One HTTP/3 connection to the gateway, trusting its certificate by pin.
struct H3 {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    port: u16,
    _ep: quinn::Endpoint,
}

impl H3 {
    async fn connect(addr: SocketAddr, data_dir: &Path) -> H3 {
        let client_cfg = common::pinned_client_config(addr, data_dir);
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(client_cfg, addr, "localhost")
            .unwrap()
            .await
            .expect("QUIC connects");
        let (mut driver, send) = h3::client::builder()
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        H3 {
            send,
            port: addr.port(),
            _ep: ep,
        }
    }

    async fn request(
        &mut self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Response {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{}{path}", self.port));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let fut = async {
            let mut s = self.send.send_request(req.body(()).unwrap()).await.unwrap();
            if let Some(b) = body {
                s.send_data(Bytes::from(b.to_owned())).await.unwrap();
            }
            s.finish().await.unwrap();
            let resp = s.recv_response().await.unwrap();
            let mut out = BytesMut::new();
            while let Some(mut chunk) = s.recv_data().await.unwrap() {
                out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            Response {
                status: resp.status().as_u16(),
                headers: resp.headers().clone(),
            }
        };
        tokio::time::timeout(HANG, fut).await.expect("request hung")
    }

    async fn post_call(&mut self, token: &str) -> Response {
        self.request(http::Method::POST, CALLS, Some(token), Some(CALL_BODY))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS mode through the gateway.

#[tokio::test]
async fn jwks_mode_accepts_the_issuers_tokens_by_scope_and_picks_up_a_rotated_key() {
    let tls = as_tls();
    let (ec1, ec2, rsa) = (
        EcSigner::new("ec1"),
        EcSigner::new("ec2"),
        RsaSigner::new("rsa1"),
    );
    let state = AsState::new(serde_json::json!({"keys": [ec1.jwk(), rsa.jwk()]}));
    let port = start_as(&tls, state.clone()).await;
    let mut cfg = gateway_config("jwks", 33600, OAuthConfig::default());
    let data_dir = cfg.general.data_dir.clone();
    cfg.oauth = external(&tls, &data_dir, OAuthMode::Jwks, port);
    let running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let mut h3 = H3::connect(running.http3_addr, &data_dir).await;

    // ES256 and RS256 tokens of the issuer pass POST {TG}/calls; one fetch serves both.
    let r = h3.post_call(&ec1.token("calls:write")).await;
    assert_eq!(r.status, 201, "ES256 token");
    let r = h3.post_call(&rsa.token("calls:write tgs:read")).await;
    assert_eq!(r.status, 201, "RS256 token");
    assert_eq!(state.fetches(), 1);

    // A good token without the route's scope: 403 naming the scope.
    let r = h3.post_call(&ec1.token("tgs:read")).await;
    assert_eq!(r.status, 403);
    let www = r.header("www-authenticate");
    assert!(
        www.contains(r#"error="insufficient_scope""#) && www.contains(r#"scope="calls:write""#),
        "{www}"
    );
    let r = h3
        .request(http::Method::GET, TGS, Some(&ec1.token("tgs:read")), None)
        .await;
    assert_eq!(r.status, 200, "the scope it has is enough for discovery");

    // Another audience, and the local issuer's tokens: refused in this mode.
    let mut c = claims("calls:write");
    c["aud"] = "another-api".into();
    let r = h3.post_call(&ec1.sign_as("ec1", &c)).await;
    assert_eq!(r.status, 401);
    assert!(
        r.header("www-authenticate").contains("audience"),
        "{}",
        r.header("www-authenticate")
    );
    assert_eq!(state.fetches(), 1);

    // The issuer rotates to a new key: its first token makes one refetch, then passes.
    *state.jwks.lock().unwrap() = serde_json::json!({"keys": [ec1.jwk(), ec2.jwk()]});
    let r = h3.post_call(&ec2.token("calls:write")).await;
    assert_eq!(r.status, 201, "token of the rotated-in key");
    assert_eq!(state.fetches(), 2);
    assert_eq!(h3.post_call(&ec2.token("calls:write")).await.status, 201);
    assert_eq!(h3.post_call(&ec1.token("calls:write")).await.status, 201);

    // The local issuer's tokens are not accepted in this mode, nor is its JWK Set served.
    let local = LocalIssuer::load_or_create(&data_dir)
        .unwrap()
        .mint("alice", &["calls:write".into()], 3600, real_now())
        .unwrap();
    let r = h3.post_call(&local).await;
    assert_eq!(
        r.status, 401,
        "riptide-local tokens are not accepted in jwks mode"
    );
    let r = h3
        .request(http::Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(r.status, 401, "the local issuer's JWK Set is not served");
    assert_eq!(state.fetches(), 2);
}

#[tokio::test]
async fn random_kids_cause_at_most_one_refetch_and_a_failed_one_keeps_the_keys() {
    let tls = as_tls();
    let ec1 = EcSigner::new("ec1");
    let state = AsState::new(serde_json::json!({"keys": [ec1.jwk()]}));
    let port = start_as(&tls, state.clone()).await;
    let mut cfg = gateway_config("kids", 33650, OAuthConfig::default());
    let data_dir = cfg.general.data_dir.clone();
    cfg.oauth = external(&tls, &data_dir, OAuthMode::Jwks, port);
    let running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let mut h3 = H3::connect(running.http3_addr, &data_dir).await;

    assert_eq!(h3.post_call(&ec1.token("calls:write")).await.status, 201);
    assert_eq!(state.fetches(), 1);
    // From now on the JWK Set endpoint fails.
    state.jwks_fail.store(true, Ordering::SeqCst);
    for i in 0..100 {
        let kid = format!("random-{i}-{}", rand::random::<u64>());
        let r = h3
            .post_call(&ec1.sign_as(&kid, &claims("calls:write")))
            .await;
        assert_eq!(r.status, 401, "kid {kid}");
        assert!(
            r.header("www-authenticate").contains("unknown key id"),
            "{}",
            r.header("www-authenticate")
        );
    }
    assert!(
        state.fetches() <= 2,
        "100 unknown kids made {} extra fetches",
        state.fetches() - 1
    );
    // The failed refetch kept the keys: the issuer's tokens still pass.
    assert_eq!(h3.post_call(&ec1.token("calls:write")).await.status, 201);
}

// ---------------------------------------------------------------------------------------------
// The JWKS verifier with a settable clock.

#[derive(Clone)]
struct TestClock(Arc<AtomicU64>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(AtomicU64::new(real_now())))
    }
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
    fn arc(&self) -> Arc<dyn riptide::stir::fetch::Clock> {
        let c = self.0.clone();
        Arc::new(move || c.load(Ordering::SeqCst))
    }
}

async fn check(v: &dyn TokenVerifier, token: &str) -> Result<riptide::auth::Principal, AuthError> {
    tokio::time::timeout(HANG, v.verify_async(token, real_now()))
        .await
        .expect("verification hung")
}

fn unknown_kid() -> Result<riptide::auth::Principal, AuthError> {
    Err(AuthError::Invalid("unknown key id".into()))
}

/// A JWKS verifier for the test issuer on `port`, reading time from `clock`.
fn jwks_on_clock(tls: &AsTls, port: u16, clock: &TestClock) -> JwksVerifier {
    let mut s = JwksSettings::new(
        format!("https://localhost:{port}/jwks"),
        ISS,
        "riptide",
        guard(tls),
    );
    s.clock = clock.arc();
    JwksVerifier::new(s).unwrap()
}

#[tokio::test]
async fn unknown_kids_refetch_once_per_interval_on_the_clock() {
    let tls = as_tls();
    let (ec1, ec2) = (EcSigner::new("ec1"), EcSigner::new("ec2"));
    let state = AsState::new(serde_json::json!({"keys": [ec1.jwk()]}));
    let port = start_as(&tls, state.clone()).await;
    let clock = TestClock::new();
    let v = jwks_on_clock(&tls, port, &clock);
    assert_eq!(v.fetches(), 0, "nothing is fetched before a token arrives");

    assert!(check(&v, &ec1.token("calls:write")).await.is_ok());
    assert_eq!((v.fetches(), state.fetches()), (1, 1));
    // The first unknown kid refetches; the next ones, and the rotated-in key, wait 30 s.
    assert_eq!(
        check(&v, &ec1.sign_as("nope", &claims(""))).await,
        unknown_kid()
    );
    assert_eq!(state.fetches(), 2);
    *state.jwks.lock().unwrap() = serde_json::json!({"keys": [ec2.jwk()]});
    for _ in 0..50 {
        let kid = format!("k{}", rand::random::<u64>());
        assert_eq!(
            check(&v, &ec1.sign_as(&kid, &claims(""))).await,
            unknown_kid()
        );
    }
    assert_eq!(check(&v, &ec2.token("")).await, unknown_kid());
    clock.advance(29);
    assert_eq!(check(&v, &ec2.token("")).await, unknown_kid());
    assert_eq!(state.fetches(), 2);
    clock.advance(1);
    assert!(
        check(&v, &ec2.token("")).await.is_ok(),
        "picked up after the interval"
    );
    assert_eq!(state.fetches(), 3);
    assert_eq!(v.kids(), vec!["ec2"]);
    // ec1 left the set: its tokens stop verifying.
    assert_eq!(check(&v, &ec1.token("")).await, unknown_kid());

    // A refetch that fails keeps the keys.
    state.jwks_fail.store(true, Ordering::SeqCst);
    clock.advance(30);
    assert_eq!(check(&v, &ec1.token("")).await, unknown_kid());
    assert_eq!(state.fetches(), 4);
    assert!(check(&v, &ec2.token("")).await.is_ok());
    assert_eq!(v.kids(), vec!["ec2"]);

    // A stale set is refreshed in the background while known kids keep verifying at once.
    state.jwks_fail.store(false, Ordering::SeqCst);
    *state.jwks.lock().unwrap() = serde_json::json!({"keys": [ec1.jwk(), ec2.jwk()]});
    clock.advance(3600);
    let tok = ec2.token("");
    let ready = v.verify_async(&tok, real_now());
    assert!(ready.is_ready(), "a known kid never waits for a refresh");
    assert!(ready.await.is_ok());
    tokio::time::timeout(HANG, async {
        while v.kids().len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("background refresh");
    assert_eq!(state.fetches(), 5);
    assert!(check(&v, &ec1.token("")).await.is_ok());
}

#[tokio::test]
async fn without_any_keys_tokens_fail_closed_and_fetches_wait_the_interval() {
    let tls = as_tls();
    let ec1 = EcSigner::new("ec1");
    let state = AsState::new(serde_json::json!({"keys": [ec1.jwk()]}));
    state.jwks_fail.store(true, Ordering::SeqCst);
    let port = start_as(&tls, state.clone()).await;
    let clock = TestClock::new();
    let v = jwks_on_clock(&tls, port, &clock);
    for _ in 0..5 {
        match check(&v, &ec1.token("")).await {
            Err(e @ AuthError::Unavailable { .. }) => {
                assert_eq!(e.status(), 503);
                assert!(
                    e.retry_after().is_some_and(|s| (1..=30).contains(&s)),
                    "{e:?}"
                );
            }
            other => panic!("expected 503, got {other:?}"),
        }
    }
    assert_eq!(state.fetches(), 1);
    state.jwks_fail.store(false, Ordering::SeqCst);
    clock.advance(30);
    assert!(check(&v, &ec1.token("")).await.is_ok());
    assert_eq!(state.fetches(), 2);

    // The JWK Set URL goes through the same guard as x5u: http:// and private addresses are
    // refused before anything is fetched.
    for bad in [
        "http://localhost/jwks",
        "https://10.0.0.1/jwks",
        "https://169.254.169.254/",
    ] {
        let s = JwksSettings::new(bad, ISS, "riptide", guard(&tls));
        let err = JwksVerifier::new(s).unwrap_err().to_string();
        assert!(err.contains("policy"), "{bad}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Introspection.

fn active(scope: &str, exp: u64) -> serde_json::Value {
    serde_json::json!({"active": true, "scope": scope, "sub": "bob", "aud": ["riptide"],
        "iss": ISS, "client_id": "app", "exp": exp, "iat": real_now()})
}

#[tokio::test]
async fn introspection_mode_caches_answers_checks_them_and_fails_closed() {
    let tls = as_tls();
    let state = AsState::new(serde_json::json!({"keys": []}));
    let port = start_as(&tls, state.clone()).await;
    let exp = real_now() + 3600;
    state.answer("opaque-good", active("calls:write", exp));
    state.answer("opaque-narrow", active("tgs:read", exp));
    state.answer("opaque-off", serde_json::json!({"active": false}));
    let mut other_aud = active("calls:write", exp);
    other_aud["aud"] = "another-api".into();
    state.answer("opaque-other-aud", other_aud);
    let mut other_iss = active("calls:write", exp);
    other_iss["iss"] = "https://evil.test".into();
    state.answer("opaque-other-iss", other_iss);
    let mut cfg = gateway_config("introspect", 33700, OAuthConfig::default());
    let data_dir = cfg.general.data_dir.clone();
    cfg.oauth = external(&tls, &data_dir, OAuthMode::Introspection, port);
    let running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let mut h3 = H3::connect(running.http3_addr, &data_dir).await;

    assert_eq!(h3.post_call("opaque-good").await.status, 201);
    assert_eq!(state.calls(), 1);
    let (auth, body) = state.last_request.lock().unwrap().clone().unwrap();
    assert_eq!(
        auth,
        format!(
            "Basic {}",
            STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
        )
    );
    assert_eq!(body, "token=opaque-good&token_type_hint=access_token");
    // The positive answer is cached: the second request asks nobody.
    assert_eq!(h3.post_call("opaque-good").await.status, 201);
    assert_eq!(state.calls(), 1);

    let r = h3.post_call("opaque-narrow").await;
    assert_eq!(r.status, 403);
    assert!(r
        .header("www-authenticate")
        .contains(r#"scope="calls:write""#));
    for (token, why) in [
        ("opaque-off", "token is not active"),
        ("opaque-unknown", "token is not active"),
        ("opaque-other-aud", "audience is not riptide"),
        ("opaque-other-iss", "unknown issuer"),
    ] {
        let r = h3.post_call(token).await;
        assert_eq!(r.status, 401, "{token}");
        let www = r.header("www-authenticate");
        assert!(
            www.contains(r#"error="invalid_token""#) && www.contains(why),
            "{token}: {www}"
        );
    }
    let calls = state.calls();
    assert_eq!(calls, 6);

    // The issuer goes down: tokens it has not vouched for get 503 with Retry-After, while the
    // cached positive answer keeps serving.
    state.down.store(true, Ordering::SeqCst);
    state.answer("opaque-new", active("calls:write", exp));
    let r = h3.post_call("opaque-new").await;
    assert_eq!(r.status, 503);
    assert!(
        r.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1),
        "{:?}",
        r.headers
    );
    assert!(r.header("www-authenticate").is_empty());
    assert_eq!(h3.post_call("opaque-good").await.status, 201);
}

fn introspection_verifier(
    tls: &AsTls,
    endpoint: String,
    clock: &TestClock,
    edit: impl FnOnce(&mut IntrospectionSettings),
) -> IntrospectionVerifier {
    let mut s = IntrospectionSettings::new(
        endpoint,
        CLIENT_ID,
        CLIENT_SECRET,
        ISS,
        "riptide",
        guard(tls),
    );
    s.clock = clock.arc();
    edit(&mut s);
    IntrospectionVerifier::new(s).unwrap()
}

#[tokio::test]
async fn introspection_answers_are_cached_within_their_limits() {
    let tls = as_tls();
    let state = AsState::new(serde_json::json!({"keys": []}));
    let port = start_as(&tls, state.clone()).await;
    let clock = TestClock::new();
    let t0 = clock.0.load(Ordering::SeqCst);
    state.answer("long", active("calls:write", t0 + 3600));
    state.answer("short", active("calls:write", t0 + 10));
    state.answer("off", serde_json::json!({"active": false}));
    let v = introspection_verifier(
        &tls,
        format!("https://localhost:{port}/introspect"),
        &clock,
        |s| s.positive_ttl_secs = 600,
    );
    let calls = |n| assert_eq!(state.calls(), n);

    // Positive: at most 60 s, even when configured longer.
    let p = check(&v, "long").await.unwrap();
    assert_eq!(
        (p.subject.as_str(), p.scopes.clone()),
        ("bob", vec!["calls:write".to_string()])
    );
    calls(1);
    clock.advance(59);
    assert!(check(&v, "long").await.is_ok());
    calls(1);
    clock.advance(1);
    assert!(check(&v, "long").await.is_ok());
    calls(2);
    // Never past the answer's exp.
    let t = clock.0.load(Ordering::SeqCst);
    state.answer("short", active("calls:write", t + 10));
    assert!(check(&v, "short").await.is_ok());
    calls(3);
    clock.advance(9);
    assert!(check(&v, "short").await.is_ok());
    calls(3);
    clock.advance(1);
    assert!(check(&v, "short").await.is_ok());
    calls(4);
    // Negative: 5 s.
    let off = Err(AuthError::Invalid("token is not active".into()));
    assert_eq!(check(&v, "off").await, off);
    calls(5);
    clock.advance(4);
    assert_eq!(check(&v, "off").await, off);
    calls(5);
    clock.advance(1);
    assert_eq!(check(&v, "off").await, off);
    calls(6);
}

#[tokio::test]
async fn every_kind_of_outage_fails_closed() {
    let tls = as_tls();
    let state = AsState::new(serde_json::json!({"keys": []}));
    let port = start_as(&tls, state.clone()).await;
    state.answer("tok", active("calls:write", real_now() + 3600));
    let clock = TestClock::new();
    let endpoint = format!("https://localhost:{port}/introspect");
    let v = introspection_verifier(&tls, endpoint.clone(), &clock, |s| {
        s.outage_backoff_secs = 0;
        s.http.timeout = Duration::from_millis(500);
    });
    let unavailable = |r: Result<riptide::auth::Principal, AuthError>, what: &str| match r {
        Err(e @ AuthError::Unavailable { .. }) => assert_eq!(e.status(), 503, "{what}"),
        other => panic!("{what}: expected 503, got {other:?}"),
    };
    for fault in [
        Fault::Status500,
        Fault::Garbage,
        Fault::NoActive,
        Fault::Hang,
    ] {
        *state.fault.lock().unwrap() = fault;
        unavailable(check(&v, "tok").await, &format!("{fault:?}"));
    }
    *state.fault.lock().unwrap() = Fault::None;
    state.down.store(true, Ordering::SeqCst);
    unavailable(check(&v, "tok").await, "connection closed");
    // Wrong client credentials: the issuer answers 401, which is no answer about the token.
    state.down.store(false, Ordering::SeqCst);
    let wrong = introspection_verifier(&tls, endpoint, &clock, |s| {
        s.client_secret = "wrong".into();
    });
    unavailable(check(&wrong, "tok").await, "401 from the issuer");
    // Nothing listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let refused = introspection_verifier(
        &tls,
        format!("https://localhost:{closed}/introspect"),
        &clock,
        |_| {},
    );
    unavailable(check(&refused, "tok").await, "connection refused");
    // After an outage, uncached tokens get 503 without asking until the back-off has passed.
    let before = refused.calls();
    unavailable(check(&refused, "tok").await, "inside the back-off");
    assert_eq!(refused.calls(), before, "no request inside the back-off");
    clock.advance(5);
    unavailable(check(&refused, "tok").await, "after the back-off");
    assert_eq!(refused.calls(), before + 1);
    // The same verifier recovers once the issuer answers.
    assert!(check(&v, "tok").await.is_ok());
}
